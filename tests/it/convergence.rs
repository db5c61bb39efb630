//! Convergence without a command: once whatever kept a change from a peer is gone, the
//! group becomes identical again by itself, within 10 s, with no `gosyncd sync` and no
//! engine run. Each test pins one way that failed: a fix saved after the peers' `validate`
//! command rejected the previous save; edits waiting for a stopped peer while the sending
//! daemon restarts; a receiver that could not write a file (RLIMIT_FSIZE) and then can; a
//! large recursive delete that left empty directories on a peer (with the receiver's
//! answer to deleting a directory that still holds a file, which blamed excludes); and
//! `gosyncd sync` against a receiver busy with another apply, which must wait for it
//! rather than fail on its 503.
//!
//! Every wait polls a condition with a deadline, or waits for an event (a marker file a
//! command creates, a line in a daemon's log); nothing sleeps to synchronise.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use gosyncd::config::Config;
use gosyncd::group::{GroupNode, GroupSpec, LocalGroup};
use gosyncd::protocol::{encode_batch, Action, BatchHeader, HeldKind, Op, Outcome};

/// How long the group has to converge by itself once the cause of a failure is gone.
const CONVERGE: Duration = Duration::from_secs(10);

/// What a node's file holds, for failure messages.
fn content(node: &GroupNode, logical: &str) -> String {
    match std::fs::read(node.path(logical)) {
        Ok(bytes) if bytes.len() > 200 => format!("{} bytes", bytes.len()),
        Ok(bytes) => format!("{:?}", String::from_utf8_lossy(&bytes)),
        Err(e) => format!("unreadable ({e})"),
    }
}

/// `len` bytes of `label` repeated.
fn pattern(label: &str, len: usize) -> Vec<u8> {
    label.bytes().cycle().take(len).collect()
}

/// The last lines of a daemon's log, for failure messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// A change the peers' validation rejected, then fixed on the sending node.

/// Refuses a tree whose app.cfg holds the word BAD.
const REJECTS_BAD: &str = r#"  validate = "if grep -q BAD \"$GOSYNCD_DIRECTORY/app.cfg\" 2>/dev/null; then echo 'app.cfg: BAD is not a directive' >&2; exit 1; fi""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_saved_after_a_peer_rejected_the_change_reaches_every_peer() {
    // Nodes 2 and 3 validate what they receive; node 1, where the edits are made, does
    // not, so its broken save is pushed and refused by the peers.
    let mut group = watching(3).await;
    for i in [1, 2] {
        with_directory_lines(&mut group, i, REJECTS_BAD).await;
    }
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let file = "/etc/app/app.cfg";
    let state = || {
        let held: Vec<String> = group
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("node {} holds {}", i + 1, content(n, file)))
            .collect();
        format!("{}\n{}", held.join("\n"), describe(&group))
    };

    write(n0, file, "listen 80\n");
    eventually_showing(
        "the first version on both peers",
        WAIT,
        || peers.iter().all(|n| holds(n, file, "listen 80\n")),
        state,
    )
    .await;

    write(n0, file, "listen 80\nBAD\n");
    eventually_showing(
        "both peers reject the broken save",
        WAIT,
        || peers.iter().all(|n| counters(n).rejected >= 1),
        state,
    )
    .await;
    for peer in peers {
        assert!(
            holds(peer, file, "listen 80\n"),
            "{} did not put its previous version back\n{}",
            peer.addr,
            state()
        );
    }
    // Node 1 knows it: the path is held for each peer as rejected, with the reason, and
    // not retried until it is edited again.
    let held_as_rejected = |group: &LocalGroup| {
        group.nodes[0].peer_status().is_some_and(|peers| {
            peers.len() == 2
                && peers.iter().all(|p| {
                    p.held.iter().any(|h| {
                        h.path == file
                            && h.outcome == HeldKind::Rejected
                            && h.reason.contains("validation failed")
                    })
                })
        })
    };
    eventually_showing(
        "node 1 shows the path held as rejected for both peers",
        WAIT,
        || held_as_rejected(&group),
        state,
    )
    .await;

    // The fix, saved on node 1 alone: the peers never held the broken version, and
    // must take the fixed one all the same.
    write(n0, file, "listen 8080\n");
    eventually_showing(
        "the fix saved on node 1 on every peer, with no command",
        CONVERGE,
        || peers.iter().all(|n| holds(n, file, "listen 8080\n")),
        state,
    )
    .await;
    eventually_showing(
        "nothing held any more once the fix landed",
        WAIT,
        || {
            group.nodes[0]
                .peer_status()
                .is_some_and(|peers| peers.iter().all(|p| p.held.is_empty() && p.pending == 0))
        },
        state,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// Drift nobody is delivering: reported, never pushed.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_nobody_delivers_is_reported_with_its_paths_and_never_pushed() {
    let mut group = start_with(GroupSpec {
        watch: true,
        reconcile_interval: Some(Duration::from_secs(1)),
        ..spec(2)
    })
    .await;
    // A file written on node 2 while its daemon is stopped: nobody edited it as far as
    // any daemon knows, so nobody pushes it; the comparisons report it.
    group.stop(1).await;
    write(&group.nodes[1], "/etc/app/only-here.cfg", "drifted\n");
    group.restart(1).await.unwrap();
    let drift_of = |group: &LocalGroup, i: usize| {
        group.nodes[i]
            .peer_status()
            .and_then(|peers| peers.first().cloned())
            .map(|p| (p.drift_paths, p.drift))
    };
    let state = |group: &LocalGroup| {
        format!(
            "node 1 sees {:?}\nnode 2 sees {:?}\n{}",
            drift_of(group, 0),
            drift_of(group, 1),
            describe(group)
        )
    };
    let reported = |group: &LocalGroup, i: usize| {
        drift_of(group, i) == Some((Some(1), vec!["/etc/app/only-here.cfg".to_string()]))
    };
    eventually_showing(
        "both nodes report the one drifted path",
        WAIT,
        || reported(&group, 0) && reported(&group, 1),
        || state(&group),
    )
    .await;
    assert!(
        !exists(&group.nodes[0], "/etc/app/only-here.cfg"),
        "the drifted file was pushed\n{}",
        state(&group)
    );
    assert_eq!(
        counters(&group.nodes[0]).apply_requests,
        0,
        "{}",
        state(&group)
    );
    assert_eq!(
        counters(&group.nodes[1]).apply_requests,
        0,
        "{}",
        state(&group)
    );

    // Resolved by hand (the file removed on node 2, which its watcher pushes as a
    // deletion node 1 finds already done): the next comparison clears the report.
    remove(&group.nodes[1], "/etc/app/only-here.cfg");
    let cleared = |group: &LocalGroup, i: usize| drift_of(group, i) == Some((Some(0), vec![]));
    eventually_showing(
        "the drift report cleared on both nodes",
        WAIT,
        || cleared(&group, 0) && cleared(&group, 1),
        || state(&group),
    )
    .await;
}

/// Node `i`'s drift with each of its peers, by peer: how many paths, and the first.
fn drift_by_peer(node: &GroupNode) -> BTreeMap<String, (Option<u64>, Vec<String>)> {
    node.peer_status()
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.peer, (p.drift_paths, p.drift)))
        .collect()
}

/// Waits until node `i` shows the drift `expected` with its peers (see [`drift_by_peer`]).
async fn shows_drift(
    group: &LocalGroup,
    i: usize,
    what: &str,
    expected: &BTreeMap<String, (Option<u64>, Vec<String>)>,
) {
    let node = &group.nodes[i];
    eventually_showing(
        what,
        WAIT,
        || drift_by_peer(node) == *expected,
        || format!("{:?}\n{}", drift_by_peer(node), describe(group)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_node_judges_each_peer_whether_their_trees_are_alike_or_not() {
    let mut group = start_with(GroupSpec {
        watch: true,
        reconcile_interval: Some(Duration::from_secs(1)),
        ..spec(3)
    })
    .await;
    let (one, two) = (
        group.nodes[0].addr.to_string(),
        group.nodes[1].addr.to_string(),
    );
    let expect = |pairs: [(&String, &[&str]); 2]| {
        pairs
            .iter()
            .map(|(peer, paths)| {
                let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
                ((*peer).clone(), (Some(paths.len() as u64), paths))
            })
            .collect::<BTreeMap<_, _>>()
    };
    // Node 3 drifts while its daemon is stopped; nodes 1 and 2 hold the same tree, so
    // node 3 may compare once for both: each is still told the drift.
    group.stop(2).await;
    write(&group.nodes[2], "/etc/app/only-here.cfg", "drifted\n");
    group.restart(2).await.unwrap();
    let alike = expect([
        (&one, &["/etc/app/only-here.cfg"]),
        (&two, &["/etc/app/only-here.cfg"]),
    ]);
    shows_drift(
        &group,
        2,
        "node 3 reports its drift with both peers",
        &alike,
    )
    .await;

    // Node 1 drifts too, another way: its tree is no longer node 2's, and node 3's
    // drift with each peer is that peer's own.
    group.stop(0).await;
    write(&group.nodes[0], "/etc/app/extra.cfg", "node 1 only\n");
    group.restart(0).await.unwrap();
    let unlike = expect([
        (&one, &["/etc/app/extra.cfg", "/etc/app/only-here.cfg"]),
        (&two, &["/etc/app/only-here.cfg"]),
    ]);
    let what = "node 3 reports a drift of its own with each peer";
    shows_drift(&group, 2, what, &unlike).await;
    for node in &group.nodes[..2] {
        assert!(
            !exists(node, "/etc/app/only-here.cfg"),
            "the drifted file was pushed\n{}",
            describe(&group)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Edits waiting for a stopped peer, across a restart of the daemon that holds them.

/// Files that exist everywhere before node 3 stops, rewritten while it is down.
const REWRITTEN: usize = 5;
/// Files created while node 3 is down (the first few written twice).
const CREATED: usize = 15;
const WRITTEN_TWICE: usize = 5;

fn rewritten_path(i: usize) -> String {
    format!("/etc/app/kept/e{i}.conf")
}

fn created_path(i: usize) -> String {
    format!("/etc/app/new/n{i:02}.conf")
}

/// The 20 edited paths with the content each must end with.
fn final_edits() -> Vec<(String, String)> {
    let mut edits: Vec<(String, String)> = (0..REWRITTEN)
        .map(|i| {
            (
                rewritten_path(i),
                format!("e{i}, rewritten while node 3 was down\n"),
            )
        })
        .collect();
    edits.extend((0..CREATED).map(|i| {
        let version = if i < WRITTEN_TWICE { "second" } else { "first" };
        (
            created_path(i),
            format!("n{i}, {version} version, created while node 3 was down\n"),
        )
    }));
    edits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_waiting_for_a_stopped_peer_survive_a_restart_of_the_sender() {
    let mut group = watching(3).await;
    {
        let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
        for i in 0..REWRITTEN {
            write(n0, &rewritten_path(i), format!("e{i}, original\n"));
        }
        eventually_in(&group, WAIT, "the original files on both peers", || {
            peers.iter().all(|n| {
                (0..REWRITTEN).all(|i| holds(n, &rewritten_path(i), format!("e{i}, original\n")))
            })
        })
        .await;
    }

    group.stop(2).await;
    let edits = final_edits();
    assert_eq!(edits.len(), 20);
    {
        let n0 = &group.nodes[0];
        for i in 0..CREATED {
            write(
                n0,
                &created_path(i),
                format!("n{i}, first version, created while node 3 was down\n"),
            );
        }
        for i in 0..REWRITTEN {
            write(
                n0,
                &rewritten_path(i),
                format!("e{i}, rewritten while node 3 was down\n"),
            );
        }
        for i in 0..WRITTEN_TWICE {
            write(
                n0,
                &created_path(i),
                format!("n{i}, second version, created while node 3 was down\n"),
            );
        }
        // Node 2 holding them all means that node 1 saw every edit and handed it to the
        // outboxes of both peers: what waits for node 3 is all of it.
        let n1 = &group.nodes[1];
        eventually_in(&group, WAIT, "node 2 holds the 20 edits", || {
            edits.iter().all(|(path, text)| holds(n1, path, text))
        })
        .await;
    }

    // Node 1's daemon restarts while node 3 is still down, then node 3 comes back.
    group.restart(0).await.unwrap();
    group.restart(2).await.unwrap();
    let n2 = &group.nodes[2];
    eventually_showing(
        "node 3, back, holds the 20 edits made while it was down, with no command",
        CONVERGE,
        || edits.iter().all(|(path, text)| holds(n2, path, text)),
        || {
            let missing: Vec<&str> = edits
                .iter()
                .filter(|(path, text)| !holds(n2, path, text))
                .map(|(path, _)| path.as_str())
                .collect();
            format!(
                "node 3 holds {} of the {} edits; missing or stale: {missing:?}\n{}",
                edits.len() - missing.len(),
                edits.len(),
                describe(&group)
            )
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// A receiver that could not write a file, and then can.

/// The file-size limit the receiver runs under while it cannot write, in bytes.
const FSIZE_LIMIT: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_could_not_write_catches_up_once_it_can() {
    if !has_prlimit() {
        return;
    }
    // Node 2 is the real binary under a soft RLIMIT_FSIZE (the hard limit stays
    // unlimited, so that the limit can be raised again without privileges): writing a
    // file larger than the limit fails with EFBIG. Node 1 is a watching daemon.
    let mut group = built_watching(2).await;
    group.release(1);
    let mut receiver = {
        let n1 = &group.nodes[1];
        let mut receiver = DaemonProcess::spawn_with(
            "prlimit",
            &[format!("--fsize={FSIZE_LIMIT}:unlimited"), "--".into()],
            &n1.config_path,
            group.path().join("node2.log"),
        );
        receiver.wait_ready(&peer(&tls_of(n1), n1.addr)).await;
        receiver
    };
    group.restart(0).await.unwrap();
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);

    // The file appears whole (renamed in), so that one push carries it.
    let big = pattern(
        "larger than the receiver may write for now\n",
        3 * FSIZE_LIMIT,
    );
    let staged = group.path().join("staged.bin");
    std::fs::write(&staged, &big).unwrap();
    std::fs::rename(&staged, n0.path("/etc/app/big.bin")).unwrap();

    receiver.wait_for_log("operation failed").await;
    let log = receiver.log();
    assert!(
        log.contains("/etc/app/big.bin"),
        "the failed operation is not the large file:\n{}",
        tail(&log)
    );
    if let Some(status) = receiver.child.try_wait().unwrap() {
        panic!("the receiver died ({status}) instead of failing the write:\n{log}");
    }
    assert!(
        !exists(n1, "/etc/app/big.bin"),
        "the receiver wrote the file despite its limit: the test proves nothing"
    );

    // The cause goes away: the receiver may write files of any size again. Nothing is
    // edited anywhere from here on.
    let pid = rustix::process::Pid::from_raw(receiver.child.id() as i32).expect("a pid");
    rustix::process::prlimit(
        Some(pid),
        rustix::process::Resource::Fsize,
        rustix::process::Rlimit {
            current: None,
            maximum: None,
        },
    )
    .unwrap_or_else(|e| panic!("cannot raise the receiver's RLIMIT_FSIZE: {e}"));

    eventually_showing(
        "the receiver holds the file once it can write it, with no new edit and no command",
        CONVERGE,
        || holds(n1, "/etc/app/big.bin", &big),
        || {
            format!(
                "the receiver holds {}\nsender: {:?}\nreceiver's log:\n{}",
                content(n1, "/etc/app/big.bin"),
                n0.stats(),
                tail(&receiver.log())
            )
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// A large recursive delete.

const TREE_DIRS: usize = 40;
const TREE_FILES: usize = 2000;
/// Delete-and-recreate rounds: the failure was intermittent (2 runs in 10).
const DELETE_ROUNDS: usize = 5;
const TREE_TOP: &str = "/etc/app/top";

fn tree_path(i: usize) -> String {
    format!("{TREE_TOP}/d{:02}/f{i:04}.conf", i % TREE_DIRS)
}

/// What is left of `root` on a node (links not followed), for failure messages.
fn left_below(node: &GroupNode, root: &str) -> String {
    let local = node.path(root);
    let left: Vec<PathBuf> = walkdir::WalkDir::new(&local)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.into_path())
        .collect();
    let dirs = left.iter().filter(|p| p.is_dir()).count();
    let shown: Vec<String> = left
        .iter()
        .take(12)
        .map(|p| p.strip_prefix(&local).unwrap_or(p).display().to_string())
        .collect();
    format!(
        "{} paths left below {root} on {} ({dirs} directories), such as {shown:?}",
        left.len(),
        node.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_recursive_delete_leaves_no_directory_behind_on_any_peer() {
    let group = watching(2).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    for round in 1..=DELETE_ROUNDS {
        let text = |i: usize| format!("round {round}, file {i}\n");
        for i in 0..TREE_FILES {
            write(n0, &tree_path(i), text(i));
        }
        eventually_in(
            &group,
            WAIT,
            &format!("round {round}: the {TREE_FILES} files on every peer"),
            || {
                peers
                    .iter()
                    .all(|n| (0..TREE_FILES).all(|i| holds(n, &tree_path(i), text(i))))
            },
        )
        .await;

        std::fs::remove_dir_all(n0.path(TREE_TOP)).unwrap();
        eventually_showing(
            &format!("round {round}: nothing of {TREE_TOP} left on any peer after rm -rf"),
            CONVERGE,
            || peers.iter().all(|n| !exists(n, TREE_TOP)),
            || {
                let left: Vec<String> = peers.iter().map(|n| left_below(n, TREE_TOP)).collect();
                format!("{}\n{}", left.join("\n"), describe(&group))
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_directory_that_still_holds_a_file_names_the_file_not_an_exclusion() {
    // The receiver excludes /etc/app/held/private. Node 1 sends node 2 one batch that
    // deletes two directories, each planned against what node 2 holds: /etc/app/dir,
    // which still holds a file that nothing excludes (its deletion is not in the batch),
    // and /etc/app/held, which holds only an excluded path.
    let group = start_with(GroupSpec {
        directories: vec![("/etc/app".into(), vec!["/etc/app/held/private".into()])],
        ..spec(2)
    })
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let inside = "/etc/app/dir/still-here.conf";
    write(n1, inside, "not deleted by this batch\n");
    write(
        n1,
        "/etc/app/held/private/key",
        "excluded on the receiver\n",
    );
    let theirs = manifest_of(n1);
    let delete = |path: &str| Op {
        path: path.into(),
        action: Action::Delete,
        expect: Some(Box::new(theirs[path].clone())),
    };
    let body = encode_batch(
        &BatchHeader::new(vec![delete("/etc/app/dir"), delete("/etc/app/held")]),
        &[],
    );
    let answer = peer_as(n0, n1.addr)
        .apply(body)
        .await
        .expect("the batch is taken");
    let outcomes: Vec<(&str, &Outcome)> = answer
        .results
        .iter()
        .map(|r| (r.path.as_str(), &r.outcome))
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert!(
        holds(n1, inside, "not deleted by this batch\n"),
        "the file was deleted with its directory: {outcomes:?}"
    );
    assert!(
        holds(
            n1,
            "/etc/app/held/private/key",
            "excluded on the receiver\n"
        ),
        "the excluded file was deleted: {outcomes:?}"
    );

    // The directory holding only an excluded path is kept, and says so.
    assert!(
        matches!(outcomes[1], ("/etc/app/held", Outcome::Kept(reason)) if reason.contains("exclu")),
        "deleting a directory that holds only an excluded path: {outcomes:?}"
    );
    // The other is not deleted either, and the answer names the file still inside it
    // instead of blaming excludes that do not exist.
    let reason = match outcomes[0] {
        ("/etc/app/dir", Outcome::Applied) => {
            panic!("/etc/app/dir reported deleted while it still holds {inside}: {outcomes:?}")
        }
        (
            "/etc/app/dir",
            Outcome::Conflict(reason)
            | Outcome::Failed(reason)
            | Outcome::Kept(reason)
            | Outcome::Rejected(reason),
        ) => reason,
        other => panic!("the first result is not /etc/app/dir's: {other:?}"),
    };
    assert!(
        !reason.contains("excluded") && reason.contains("still-here.conf"),
        "deleting /etc/app/dir, which still holds {inside} (excluded nowhere), was answered \
         {:?}: the answer must name the path still inside, not excludes",
        outcomes[0].1
    );
}

// ---------------------------------------------------------------------------------------
// `gosyncd sync` against a receiver busy with another apply.

/// Longest `gosyncd sync` may take when its receiver is busy for a while.
const BUSY_BOUND: Duration = Duration::from_secs(30);
/// What a receiver logs when it answers 503 to an apply request.
const BUSY_LOG: &str = "apply refused: too many under way";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gosyncd_sync_waits_for_a_busy_receiver_instead_of_failing() {
    // Node 2 is the real binary, taking one apply request at a time; its `validate`
    // command holds the validation of a batch that changes first.cfg until the test
    // releases it (or 30 s pass), which keeps that apply, and the only place, busy.
    let mut group = LocalGroup::build(&spec(2)).await.unwrap();
    group.restart(0).await.unwrap();
    group.release(1);
    let started = group.path().join("validation-started");
    let release = group.path().join("release-validation");
    let busy = config_variant(&group, 1, "node2-busy.hcl", |text| {
        let lines = format!(
            "  exclude = []\n  run_on = \"receive\"\n  validate = \"case \\\"$GOSYNCD_CHANGED\\\" in *first.cfg*) \
             touch {}; i=0; while [ ! -e {} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done;; esac\"",
            started.display(),
            release.display()
        );
        assert!(text.contains("  exclude = []"), "{text}");
        format!(
            "{}\nlimits {{\n  max_concurrent_applies = 1\n}}\n",
            text.replace("  exclude = []", &lines)
        )
    });
    let mut receiver = {
        let n1 = &group.nodes[1];
        let mut receiver = DaemonProcess::spawn(&busy, group.path().join("node2.log"));
        receiver.wait_ready(&peer(&tls_of(n1), n1.addr)).await;
        receiver
    };
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);

    // A first push, of first.cfg alone, is being validated: the receiver is busy.
    write(n0, "/etc/app/first.cfg", "pushed first, validated slowly\n");
    let first_engine = engine(&group, 0).await;
    let first =
        tokio::spawn(async move { run(&first_engine, &["/etc/app/first.cfg"], false).await });
    eventually_showing(
        "the first push's validation started",
        WAIT,
        || started.exists(),
        || tail(&receiver.log()),
    )
    .await;

    // Meanwhile, an operator runs `gosyncd sync` on node 1.
    write(n0, "/etc/app/second.cfg", "pushed by gosyncd sync\n");
    let clock = Instant::now();
    let sync = tokio::spawn(gosyncd(config_args(&n0.config_path, &["sync"])));
    // Once the receiver has turned it away as busy (or it gave up), the first push's
    // validation ends, and the receiver takes applies again.
    eventually_showing(
        "the sync met the busy receiver or finished",
        WAIT,
        || receiver.log().contains(BUSY_LOG) || sync.is_finished(),
        || tail(&receiver.log()),
    )
    .await;
    std::fs::write(&release, "").unwrap();
    let outcome = sync.await.expect("the binary's runner");
    let elapsed = clock.elapsed();
    let log = receiver.log();
    assert_clean(&first.await.expect("the first push"));
    if let Some(status) = receiver.child.try_wait().unwrap() {
        panic!("the receiver exited ({status}):\n{}", tail(&log));
    }

    assert_eq!(
        outcome.code,
        Some(0),
        "gosyncd sync failed after {elapsed:?} against a receiver busy with another apply, \
         instead of waiting for it:\n{outcome:#?}"
    );
    assert!(
        elapsed < BUSY_BOUND,
        "gosyncd sync took {elapsed:?} (more than {BUSY_BOUND:?}):\n{outcome:#?}"
    );
    assert!(
        log.contains(BUSY_LOG),
        "the receiver never answered the sync as busy: the test proves nothing\n{}",
        tail(&log)
    );
    let added = format!("[+] {} /etc/app/second.cfg added", n1.addr);
    assert!(
        outcome.change_lines().contains(&added),
        "no {added:?} line:\n{outcome:#?}"
    );
    assert!(holds(n1, "/etc/app/second.cfg", "pushed by gosyncd sync\n"));
    assert!(holds(
        n1,
        "/etc/app/first.cfg",
        "pushed first, validated slowly\n"
    ));
}

// ---------------------------------------------------------------------------------------
// The state directory is one daemon's.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_directory_refuses_to_start_and_names_the_holder() {
    let mut group = LocalGroup::build(&spec(2)).await.unwrap();
    group.release(0);
    let node1 = group.nodes[0].config_path.clone();
    let mut first = DaemonProcess::spawn(&node1, group.path().join("node1.log"));
    first
        .wait_ready(&peer_as(&group.nodes[1], group.nodes[0].addr))
        .await;
    // The same node's config on another port: it binds, then finds the state directory
    // taken.
    let ip = group.nodes[0].addr.ip();
    let port = std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = group.nodes[0].addr.to_string();
    let twin = config_variant(&group, 0, "node1-twin.hcl", |text| {
        assert!(text.contains(&address), "{text}");
        text.replacen(
            &format!("bind_address = \"{address}\""),
            &format!("bind_address = \"{ip}:{port}\""),
            1,
        )
    });
    let run = gosyncd(config_args(&twin, &[])).await;
    assert_ne!(run.code, Some(0), "{run:#?}");
    let holder = format!(
        "is in use by another gosyncd daemon (pid {})",
        first.child.id()
    );
    assert!(run.stderr.contains(&holder), "{run:#?}");
    assert!(run.stderr.contains("state_directory"), "{run:#?}");
    // The first one is untouched.
    assert!(first.child.try_wait().unwrap().is_none(), "{}", first.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_directory_holding_paths_the_sender_excludes_is_kept_not_retried_forever() {
    let mut group = watching(2).await;
    // Node 1 excludes *.local; node 2 does not, and has a file of its own in sub/.
    let variant = config_variant(&group, 0, "node1-local.hcl", |text| {
        assert!(text.contains("  exclude = []"), "{text}");
        text.replace("  exclude = []", "  exclude = [\"*.local\"]")
    });
    group.nodes[0].config = Arc::new(Config::from_file(&variant).unwrap());
    group.nodes[0].config_path = variant;
    group.restart(0).await.unwrap();
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n1, "/etc/app/sub/w.local", "node 2's own\n");
    write(n0, "/etc/app/sub/a.cfg", "a\n");
    let state = || format!("{}\nnode 1 knows {:#?}", describe(&group), n0.peer_status());
    // Node 2's own burst (its file is excluded on node 1; the directory goes to node 1
    // unless node 1's push made it first) is over once node 2 counts its push: then
    // nothing else is under way.
    eventually_showing(
        "sub/a.cfg on node 2, and node 2's own burst pushed",
        WAIT,
        || holds(n1, "/etc/app/sub/a.cfg", "a\n") && counters(n1).pushes >= 1,
        state,
    )
    .await;

    std::fs::remove_dir_all(n0.path("/etc/app/sub")).unwrap();
    eventually_showing(
        "node 1 holds sub as kept for node 2, for the path it excludes",
        CONVERGE,
        || {
            n0.peer_status().is_some_and(|peers| {
                peers[0].held.iter().any(|h| {
                    h.path == "/etc/app/sub"
                        && h.outcome == HeldKind::Kept
                        && h.reason.contains("/etc/app/sub/w.local")
                })
            })
        },
        state,
    )
    .await;
    assert!(!exists(n1, "/etc/app/sub/a.cfg"), "{}", state());
    assert_eq!(
        std::fs::read(n1.path("/etc/app/sub/w.local")).unwrap(),
        b"node 2's own\n"
    );
    assert_eq!(
        n0.peer_status().unwrap()[0].pending,
        0,
        "held, not waiting to be retried\n{}",
        state()
    );
}
