//! Automatic propagation between real daemons that watch their trees: what reaches the
//! peers after each kind of local edit, how many requests one save costs, that a received
//! write is not pushed back, that concurrent edits are refused rather than lost, what
//! happens around a stopped or drifted peer, and what never leaves a node; then
//! regressions found while writing them.
//!
//! Every wait polls for a condition with a deadline, or waits for a filesystem event seen
//! by a watcher of the test's own. Where a test shows that something does NOT happen, it
//! first waits for an event that must come before it, then watches for a quiet period
//! derived from the debounce, failing as soon as the thing happens.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gosyncd::config::Config;
use gosyncd::group::{GroupNode, GroupSpec, LocalGroup};
use gosyncd::protocol::StatusCounters;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, Watcher};
use tokio::sync::mpsc;

/// Longest a change may take to reach a peer.
const WAIT: Duration = Duration::from_secs(10);
/// Longest a change may take to reach a live peer while another peer is down: a dead
/// peer must not hold the others back.
const PROMPT: Duration = Duration::from_secs(3);
/// Longest a restarted peer may take to catch up on what it missed, with no command.
const RECOVERY: Duration = Duration::from_secs(15);

/// A group of three daemons that watch `/etc/app` and push their edits.
async fn watching(first_octet: u8) -> LocalGroup {
    start_with(GroupSpec {
        nodes: 3,
        first_octet,
        watch: true,
        ..GroupSpec::default()
    })
    .await
}

/// The sum of one counter over the running nodes.
fn total(group: &LocalGroup, counter: impl Fn(&StatusCounters) -> u64) -> u64 {
    group
        .nodes
        .iter()
        .filter_map(GroupNode::stats)
        .map(|c| counter(&c))
        .sum()
}

fn is_dir(node: &GroupNode, logical: &str) -> bool {
    std::fs::symlink_metadata(node.path(logical)).is_ok_and(|m| m.is_dir())
}

fn mode_of(node: &GroupNode, logical: &str) -> Option<u32> {
    std::fs::symlink_metadata(node.path(logical))
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Whether `logical` is a symlink whose target text is `target`.
fn is_link_to(node: &GroupNode, logical: &str, target: &str) -> bool {
    let path = node.path(logical);
    std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink())
        && std::fs::read_link(&path).is_ok_and(|t| t.as_os_str() == target)
}

fn rename(node: &GroupNode, from: &str, to: &str) {
    std::fs::rename(node.path(from), node.path(to)).unwrap();
}

/// What a node's file holds, for failure messages.
fn content(node: &GroupNode, logical: &str) -> String {
    match std::fs::read(node.path(logical)) {
        Ok(bytes) => format!("{:?}", String::from_utf8_lossy(&bytes)),
        Err(e) => format!("unreadable ({e})"),
    }
}

/// Every filesystem event under some directories, seen by a watcher of the test's own:
/// how a test observes the daemons reading and writing their trees.
struct Events {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    fn watch(dirs: &[PathBuf]) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            if let Ok(event) = event {
                let _ = tx.send(event);
            }
        })
        .unwrap();
        for dir in dirs {
            watcher
                .watch(dir, notify::RecursiveMode::Recursive)
                .unwrap_or_else(|e| panic!("cannot watch {}: {e}", dir.display()));
        }
        Events {
            _watcher: watcher,
            rx,
        }
    }

    /// Waits for the next event `wanted` accepts, failing the test after [`WAIT`].
    async fn next(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(event)) if wanted(&event) => return,
                Ok(Some(_)) => {}
                Ok(None) => unreachable!("the watcher lives as long as its channel"),
                Err(_) => panic!("{what}: not seen within {WAIT:?}"),
            }
        }
    }

    /// Waits until `period` passes without any event, failing the test when that has not
    /// happened within [`WAIT`].
    async fn until_quiet(&mut self, group: &LocalGroup, period: Duration) {
        let started = Instant::now();
        let mut last = Instant::now();
        let mut seen: Vec<Event> = Vec::new();
        loop {
            match tokio::time::timeout(period.saturating_sub(last.elapsed()), self.rx.recv()).await
            {
                Err(_) => return,
                Ok(None) => unreachable!("the watcher lives as long as its channel"),
                Ok(Some(event)) => {
                    last = Instant::now();
                    seen.push(event);
                    assert!(
                        started.elapsed() < WAIT,
                        "the trees never stay untouched for {period:?}: {} events in {WAIT:?}, \
                         the last ones: {:#?}\n{}",
                        seen.len(),
                        &seen[seen.len().saturating_sub(3)..],
                        describe(group)
                    );
                }
            }
        }
    }
}

fn is_open(event: &Event) -> bool {
    matches!(event.kind, EventKind::Access(AccessKind::Open(_)))
}

fn is_closed_after_writing(event: &Event) -> bool {
    matches!(
        event.kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

// ---------------------------------------------------------------------------------------
// Each kind of edit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_modified_and_deleted_files_reach_every_peer() {
    let group = watching(140).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let path = "/etc/app/sub/app.conf";

    write(n0, path, "first\n");
    eventually(&group, WAIT, "the new file on both peers", || {
        peers.iter().all(|n| holds(n, path, "first\n"))
    })
    .await;

    let longer: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    write(n0, path, &longer);
    eventually(
        &group,
        WAIT,
        "the longer binary version on both peers",
        || peers.iter().all(|n| holds(n, path, &longer)),
    )
    .await;

    write(n0, path, "short\n");
    eventually(&group, WAIT, "the shorter version on both peers", || {
        peers.iter().all(|n| holds(n, path, "short\n"))
    })
    .await;

    remove(n0, path);
    eventually(&group, WAIT, "the file deleted on both peers", || {
        peers.iter().all(|n| !exists(n, path))
    })
    .await;
    assert!(
        peers.iter().all(|n| is_dir(n, "/etc/app/sub")),
        "deleting a file must leave its directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_files_and_directories_are_renamed_on_every_peer() {
    let group = watching(144).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    write(n0, "/etc/app/old.conf", "renamed file\n");
    write(n0, "/etc/app/olddir/a.conf", "a\n");
    write(n0, "/etc/app/olddir/sub/b.conf", "b\n");
    eventually(&group, WAIT, "the initial files on both peers", || {
        peers.iter().all(|n| {
            holds(n, "/etc/app/old.conf", "renamed file\n")
                && holds(n, "/etc/app/olddir/a.conf", "a\n")
                && holds(n, "/etc/app/olddir/sub/b.conf", "b\n")
        })
    })
    .await;

    rename(n0, "/etc/app/old.conf", "/etc/app/new.conf");
    eventually(&group, WAIT, "the file renamed on both peers", || {
        peers.iter().all(|n| {
            !exists(n, "/etc/app/old.conf") && holds(n, "/etc/app/new.conf", "renamed file\n")
        })
    })
    .await;

    rename(n0, "/etc/app/olddir", "/etc/app/newdir");
    eventually(&group, WAIT, "the directory renamed on both peers", || {
        peers.iter().all(|n| {
            !exists(n, "/etc/app/olddir")
                && holds(n, "/etc/app/newdir/a.conf", "a\n")
                && holds(n, "/etc/app/newdir/sub/b.conf", "b\n")
        })
    })
    .await;

    // The watch follows the renamed directory: an edit inside it still propagates, under
    // its new name.
    write(
        n0,
        "/etc/app/newdir/sub/b.conf",
        "b, edited after the rename\n",
    );
    eventually(&group, WAIT, "an edit inside the renamed directory", || {
        peers.iter().all(|n| {
            holds(
                n,
                "/etc/app/newdir/sub/b.conf",
                "b, edited after the rename\n",
            )
        })
    })
    .await;
    assert!(
        peers.iter().all(|n| !exists(n, "/etc/app/olddir")),
        "the old directory name came back"
    );
    for peer in peers {
        assert_same_tree(n0, peer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_directories_modes_and_symlinks_reach_every_peer() {
    let group = watching(148).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);

    mkdir(n0, "/etc/app/empty");
    eventually(&group, WAIT, "the empty directory on both peers", || {
        peers.iter().all(|n| is_dir(n, "/etc/app/empty"))
    })
    .await;
    std::fs::remove_dir(n0.path("/etc/app/empty")).unwrap();
    eventually(
        &group,
        WAIT,
        "the empty directory removed on both peers",
        || peers.iter().all(|n| !exists(n, "/etc/app/empty")),
    )
    .await;

    write(n0, "/etc/app/mode.conf", "mode\n");
    chmod(n0, "/etc/app/mode.conf", 0o600);
    eventually(
        &group,
        WAIT,
        "the file with mode 0600 on both peers",
        || {
            peers.iter().all(|n| {
                holds(n, "/etc/app/mode.conf", "mode\n")
                    && mode_of(n, "/etc/app/mode.conf") == Some(0o600)
            })
        },
    )
    .await;
    chmod(n0, "/etc/app/mode.conf", 0o640);
    eventually(&group, WAIT, "mode 0640 on both peers", || {
        peers
            .iter()
            .all(|n| mode_of(n, "/etc/app/mode.conf") == Some(0o640))
    })
    .await;

    symlink(n0, "mode.conf", "/etc/app/link");
    eventually(
        &group,
        WAIT,
        "the symlink, as a link, on both peers",
        || {
            peers
                .iter()
                .all(|n| is_link_to(n, "/etc/app/link", "mode.conf"))
        },
    )
    .await;
    for peer in peers {
        assert_same_tree(n0, peer);
    }
}

// ---------------------------------------------------------------------------------------
// What one save costs.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vim_save_is_one_apply_request_per_peer_and_no_editor_file_travels() {
    let group = watching(152).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let (file, backup, swap) = ("/etc/app/x.cfg", "/etc/app/x.cfg~", "/etc/app/.x.cfg.swp");
    write(n0, file, "version 1\n");
    eventually(&group, WAIT, "version 1 on both peers", || {
        peers.iter().all(|n| holds(n, file, "version 1\n"))
    })
    .await;

    // The save as vim does it with 'writebackup' and no 'backupcopy': swap file, backup
    // by renaming the original, new file, then the backup and swap file go away.
    write(n0, swap, "b0VIM 9.0 swap");
    rename(n0, file, backup);
    write(n0, file, "version 2, saved by vim\n");
    remove(n0, backup);
    remove(n0, swap);

    eventually(&group, WAIT, "version 2 on both peers", || {
        peers
            .iter()
            .all(|n| holds(n, file, "version 2, saved by vim\n"))
    })
    .await;
    holds_for_quiet_period(
        &group,
        "one apply request per peer for the creation and one for the save, and no editor file",
        || {
            peers
                .iter()
                .all(|n| counters(n).apply_requests == 2 && !exists(n, backup) && !exists(n, swap))
        },
    )
    .await;
    for peer in peers {
        assert_eq!(
            counters(peer).applied,
            2,
            "only x.cfg, created then updated, is applied on {}",
            peer.addr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_fifty_writes_is_one_apply_request_per_peer() {
    let group = watching(156).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let file = "/etc/app/burst.conf";
    let version = |i: usize| format!("write {i}: {}\n", "x".repeat(i));
    for i in 0..50 {
        write(n0, file, version(i));
    }

    let last = version(49);
    eventually(&group, WAIT, "the last write on both peers", || {
        peers.iter().all(|n| holds(n, file, &last))
    })
    .await;
    holds_for_quiet_period(&group, "one apply request per peer", || {
        peers.iter().all(|n| counters(n).apply_requests == 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_paced_within_the_debounce_are_one_apply_request_per_peer() {
    // A tight loop of writes is coalesced by notify's own 50 ms window already; edits
    // paused for longer than that, but for less than the debounce, are one push only
    // thanks to gosyncd's debounce. Node 0 restarts with a debounce far longer than the
    // pauses, so that a slow machine cannot stretch a pause past it.
    const DEBOUNCE: Duration = Duration::from_millis(600);
    const PAUSE: Duration = Duration::from_millis(100);
    let mut group = watching(180).await;
    let variant = config_variant(&group, 0, "node1-slow.hcl", |text| {
        format!("debounce = \"{}ms\"\n{text}", DEBOUNCE.as_millis())
    });
    group.stop(0).await;
    group.nodes[0].config = Arc::new(Config::from_file(&variant).unwrap());
    group.restart(0).await.unwrap();
    assert_eq!(group.nodes[0].config.debounce, DEBOUNCE);

    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let file = "/etc/app/paced.conf";
    for i in 0..8 {
        write(n0, file, format!("edit {i}\n"));
        // Paces the edits like a person saving repeatedly; nothing is waited for.
        tokio::time::sleep(PAUSE).await;
    }
    eventually(&group, WAIT, "the last edit on both peers", || {
        peers.iter().all(|n| holds(n, file, "edit 7\n"))
    })
    .await;
    holds_for_quiet_period(&group, "one apply request per peer", || {
        peers.iter().all(|n| counters(n).apply_requests == 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtimes_travel_with_content_but_a_change_of_mtime_alone_is_not_pushed() {
    let group = start_with(GroupSpec {
        nodes: 2,
        first_octet: 56,
        watch: true,
        ..GroupSpec::default()
    })
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let path = "/etc/app/times.cfg";
    // Made outside the tree with an old mtime, then moved in: one event, one version.
    let old = std::time::UNIX_EPOCH + Duration::from_secs(978_307_200); // 2001-01-01
    let outside = group.path().join("times.cfg");
    std::fs::write(&outside, "content\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&outside)
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::fs::rename(&outside, n0.path(path)).unwrap();
    let mtime = |node: &GroupNode| {
        std::fs::metadata(node.path(path))
            .and_then(|m| m.modified())
            .ok()
    };
    eventually(&group, WAIT, "the file on the peer", || {
        holds(n1, path, "content\n")
    })
    .await;
    assert_eq!(mtime(n1), Some(old), "the mtime travels with the content");

    // `touch -c -m`: only the time changes (set through the path: an IN_MODIFY with no
    // open file behind it, and no close). Not a difference: nothing is pushed, and it
    // holds back no other edit.
    let touched = std::process::Command::new("touch")
        .args(["-c", "-m", "-d", "2002-02-02 02:02:02"])
        .arg(n0.path(path))
        .status()
        .unwrap();
    assert!(touched.success());
    write(n0, "/etc/app/other.cfg", "saved just after the touch\n");
    assert_ne!(mtime(n0), Some(old));
    eventually(
        &group,
        Duration::from_secs(5),
        "the other edit, not held back",
        || holds(n1, "/etc/app/other.cfg", "saved just after the touch\n"),
    )
    .await;
    holds_for_quiet_period(&group, "a touch is not pushed", || {
        counters(n1).apply_requests == 2 && mtime(n1) == Some(old)
    })
    .await;
    let report = dry_run(&group, 0).await;
    assert_clean(&report);
    assert!(
        lines(&report, n1).is_empty(),
        "sync -dry finds nothing to do either: {:?}",
        lines(&report, n1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_write_is_not_pushed_back() {
    let group = watching(160).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    write(n0, "/etc/app/echo.conf", "saved once\n");
    eventually(&group, WAIT, "the save on both peers", || {
        peers
            .iter()
            .all(|n| holds(n, "/etc/app/echo.conf", "saved once\n"))
    })
    .await;

    holds_for_quiet_period(
        &group,
        "two apply requests in the whole group, no push from the receivers",
        || {
            total(&group, |c| c.apply_requests) == 2
                && peers.iter().all(|n| counters(n).pushes == 0)
        },
    )
    .await;
    assert_eq!(
        counters(n0).pushes,
        2,
        "the sender pushes once to each peer\n{}",
        describe(&group)
    );
}

// ---------------------------------------------------------------------------------------
// Conflicts, dead peers, drift.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_are_refused_not_lost_until_an_explicit_sync() {
    let group = watching(164).await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    let file = "/etc/app/shared.conf";
    let (v0, v1) = ("edited on node 0\n", "edited on node 1, at the same time\n");
    write(n0, file, "base\n");
    eventually(&group, WAIT, "the base version on both peers", || {
        holds(n1, file, "base\n") && holds(n2, file, "base\n")
    })
    .await;
    let pushes_before = (counters(n0).pushes, counters(n1).pushes);

    write(n0, file, v0);
    write(n1, file, v1);

    // Each editing node sends its edit to both of its peers (a refused operation counts).
    eventually(&group, WAIT, "both edits pushed to both peers", || {
        counters(n0).pushes >= pushes_before.0 + 2 && counters(n1).pushes >= pushes_before.1 + 2
    })
    .await;
    // A sender counts a conflict once it has read the answer, just after the push: the
    // counters are settled once they stop moving.
    let mut settled = group.nodes.iter().map(counters).collect::<Vec<_>>();
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = group.nodes.iter().map(counters).collect::<Vec<_>>();
        if now == settled {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the counters never settle\n{}",
            describe(&group)
        );
        settled = now;
    }
    holds_for_quiet_period(&group, "the counters stay settled", || {
        group.nodes.iter().map(counters).collect::<Vec<_>>() == settled
    })
    .await;

    let conflicts = total(&group, |c| c.conflicts_refused + c.conflicts_reported);
    let state = format!(
        "node 0: {}, node 1: {}, node 2: {}\n{}",
        content(n0, file),
        content(n1, file),
        content(n2, file),
        describe(&group)
    );
    assert!(conflicts > 0, "the conflict is not reported\n{state}");
    for (node, own, other) in [(n0, v0, v1), (n1, v1, v0)] {
        assert!(
            holds(node, file, own) || holds(node, file, other),
            "{} holds neither edit\n{state}",
            node.addr
        );
    }
    assert!(
        !(holds(n0, file, v1) && holds(n1, file, v0)),
        "both edits were overwritten by each other\n{state}"
    );
    assert!(
        holds(n2, file, v0) || holds(n2, file, v1),
        "node 2 holds neither edit\n{state}"
    );

    // The operator decides: a sync from node 0 makes its version the group's.
    let report = sync(&group, 0).await;
    assert_clean(&report);
    for node in &group.nodes {
        assert!(
            holds(node, file, v0),
            "{} does not hold node 0's version after the sync: {}",
            node.addr,
            content(node, file)
        );
    }
    holds_for_quiet_period(&group, "node 0's version stays everywhere", || {
        group.nodes.iter().all(|n| holds(n, file, v0))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_peer_does_not_hold_back_the_others_and_catches_up_after_restart() {
    let mut group = watching(168).await;
    {
        let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
        write(n0, "/etc/app/modified.conf", "before\n");
        write(n0, "/etc/app/deleted.conf", "doomed\n");
        eventually(&group, WAIT, "the initial files on both peers", || {
            peers.iter().all(|n| {
                holds(n, "/etc/app/modified.conf", "before\n")
                    && holds(n, "/etc/app/deleted.conf", "doomed\n")
            })
        })
        .await;
    }

    group.stop(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(
        n0,
        "/etc/app/created.conf",
        "created while node 2 was down\n",
    );
    write(
        n0,
        "/etc/app/modified.conf",
        "modified while node 2 was down\n",
    );
    remove(n0, "/etc/app/deleted.conf");
    eventually(&group, PROMPT, "node 1 gets the edits promptly", || {
        holds(
            n1,
            "/etc/app/created.conf",
            "created while node 2 was down\n",
        ) && holds(
            n1,
            "/etc/app/modified.conf",
            "modified while node 2 was down\n",
        ) && !exists(n1, "/etc/app/deleted.conf")
    })
    .await;
    // A later burst is not held back either (by retries of the first one, say).
    write(n0, "/etc/app/modified.conf", "modified again\n");
    eventually(&group, PROMPT, "node 1 gets a second edit promptly", || {
        holds(n1, "/etc/app/modified.conf", "modified again\n")
    })
    .await;

    group.restart(2).await.unwrap();
    let n2 = &group.nodes[2];
    eventually(
        &group,
        RECOVERY,
        "node 2 catches up after its restart, with no command",
        || {
            holds(
                n2,
                "/etc/app/created.conf",
                "created while node 2 was down\n",
            ) && holds(n2, "/etc/app/modified.conf", "modified again\n")
                && !exists(n2, "/etc/app/deleted.conf")
        },
    )
    .await;
    assert_same_tree(&group.nodes[0], n2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_with_drifted_files_pushes_nothing() {
    let mut group = watching(172).await;
    {
        let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
        write(n0, "/etc/app/kept.conf", "same everywhere\n");
        write(n0, "/etc/app/changed.conf", "original\n");
        write(n0, "/etc/app/removed.conf", "original\n");
        eventually(&group, WAIT, "the initial files on both peers", || {
            peers.iter().all(|n| {
                holds(n, "/etc/app/kept.conf", "same everywhere\n")
                    && holds(n, "/etc/app/changed.conf", "original\n")
                    && holds(n, "/etc/app/removed.conf", "original\n")
            })
        })
        .await;
    }

    group.stop(2).await;
    let n2 = &group.nodes[2];
    write(n2, "/etc/app/changed.conf", "drifted on node 2\n");
    remove(n2, "/etc/app/removed.conf");
    write(n2, "/etc/app/added.conf", "only on node 2\n");
    let trees_before: Vec<Tree> = group.nodes[..2]
        .iter()
        .map(|n| without_times(&snapshot(&n.path("/etc/app"))))
        .collect();
    let n0_requests = counters(&group.nodes[0]).apply_requests;

    group.restart(2).await.unwrap();
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    // A later edit on node 0 reaches the restarted node: it serves and compares by now.
    let sentinel = "/etc/app/after-restart.conf";
    write(n0, sentinel, "written after the restart\n");
    eventually(&group, WAIT, "the sentinel on both peers", || {
        holds(n1, sentinel, "written after the restart\n")
            && holds(n2, sentinel, "written after the restart\n")
    })
    .await;
    holds_for_quiet_period(&group, "the restarted node pushes nothing", || {
        counters(n2).pushes == 0 && counters(n0).apply_requests == n0_requests
    })
    .await;
    for (node, before) in group.nodes[..2].iter().zip(&trees_before) {
        let mut after = without_times(&snapshot(&node.path("/etc/app")));
        assert!(after
            .remove(std::path::Path::new("after-restart.conf"))
            .is_some());
        assert_eq!(
            &after, before,
            "{} changed by the drifted node's start",
            node.addr
        );
    }
}

// ---------------------------------------------------------------------------------------
// What never leaves a node.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_paths_and_editor_files_never_leave_the_node() {
    let group = start_with(GroupSpec {
        nodes: 3,
        first_octet: 176,
        watch: true,
        directories: vec![("/etc/app".into(), vec!["/etc/app/private".into()])],
        ..GroupSpec::default()
    })
    .await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let never = [
        "/etc/app/private/secret.key",
        "/etc/app/private/nested/deeper.conf",
        "/etc/app/.x.swp",
        "/etc/app/x~",
        "/etc/app/4913",
        "/etc/app/.#x",
        "/etc/app/#x#",
    ];
    for path in never {
        write(n0, path, "must stay on node 0\n");
    }
    write(n0, "/etc/app/sentinel.conf", "written after the others\n");

    eventually(&group, WAIT, "the sentinel on both peers", || {
        peers
            .iter()
            .all(|n| holds(n, "/etc/app/sentinel.conf", "written after the others\n"))
    })
    .await;
    holds_for_quiet_period(&group, "no excluded or editor file on the peers", || {
        peers
            .iter()
            .all(|n| !exists(n, "/etc/app/private") && never.iter().all(|p| !exists(n, p)))
    })
    .await;
    for peer in peers {
        assert_eq!(
            counters(peer).applied,
            1,
            "only the sentinel is applied on {}",
            peer.addr
        );
    }
    assert!(
        never.iter().all(|p| holds(n0, p, "must stay on node 0\n")),
        "node 0 keeps its own files"
    );
}

// ---------------------------------------------------------------------------------------
// Regressions.

/// Regression: the watcher took the daemon's own reads (inotify open and close-without-
/// write events) for changes, so each scan caused the next one: every node rescanned its
/// whole tree once per debounce period, forever, with nothing changing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_is_not_woken_by_its_own_reads() {
    let group = watching(184).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    write(n0, "/etc/app/one.conf", "one\n");
    eventually(&group, WAIT, "the file on both peers", || {
        peers.iter().all(|n| holds(n, "/etc/app/one.conf", "one\n"))
    })
    .await;

    // From here on only the daemons touch the trees, and they have nothing left to do:
    // once the peers have checked the write they received, every tree stays untouched.
    let trees: Vec<PathBuf> = group.nodes.iter().map(|n| n.path("/etc/app")).collect();
    let mut events = Events::watch(&trees);
    events.until_quiet(&group, quiet_period(&group)).await;
}

/// Regression: a file written again while the daemon was pushing its previous version
/// made that push skip it ("changed on this node during the sync") and drop it, while
/// the daemon's versions had moved on: every later push of the file expected a version
/// the peers never received and was refused as a conflict, so the peers never caught up
/// with a single writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_made_while_the_previous_one_is_pushed_still_reaches_the_peers() {
    const ROUNDS: usize = 5;
    let group = watching(188).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let file = "/etc/app/busy.conf";
    let mut events = Events::watch(&[n0.path("/etc/app")]);
    let local = n0.path(file);
    for i in 0..ROUNDS {
        write(n0, file, format!("edit {i}\n"));
        events
            .next("the test's own write", |e| {
                is_closed_after_writing(e) && e.paths.contains(&local)
            })
            .await;
        // The daemon opens the file to scan or send this version: write the next one
        // right then, as a busy writer would.
        events
            .next("node 0 reading the file it must push", |e| {
                is_open(e) && e.paths.contains(&local)
            })
            .await;
    }
    write(n0, file, "final\n");

    eventually(&group, WAIT, "the final version on both peers", || {
        peers.iter().all(|n| holds(n, file, "final\n"))
    })
    .await;
    assert_eq!(
        total(&group, |c| c.conflicts_refused + c.conflicts_reported),
        0,
        "one writer alone caused conflicts\n{}",
        describe(&group)
    );
}

// ---------------------------------------------------------------------------------------
// Large bursts, the configured directories themselves, and stopping.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_files_changed_at_once_are_one_push_per_peer_carrying_only_the_changes() {
    // Like a `git checkout` touching 1000 files in a 1500-file tree. That is more paths
    // than a burst names one by one, so the daemon rescans the whole tree against its
    // versions: the push must still carry the 1000 changes and nothing else. The
    // debounce is raised to 1 s so that a loaded test machine pausing the writing loop
    // cannot split the burst; the benchmark measures the same at the default.
    let mut group = LocalGroup::build(&GroupSpec {
        nodes: 3,
        first_octet: 192,
        watch: true,
        debounce: Some(Duration::from_secs(1)),
        ..GroupSpec::default()
    })
    .await
    .unwrap();
    let path = |i: usize| format!("/etc/app/d{}/f{i}.conf", i % 10);
    for node in &group.nodes {
        for i in 0..1500 {
            write(node, &path(i), format!("old {i}\n"));
        }
    }
    group.start_all().await.unwrap();
    let before: Vec<StatusCounters> = group.nodes.iter().map(counters).collect();

    for i in 0..1000 {
        write(&group.nodes[0], &path(i), format!("new {i}\n"));
    }
    let peers = &group.nodes[1..];
    eventually(&group, WAIT, "the 1000 changes on both peers", || {
        peers
            .iter()
            .all(|n| (0..1000).all(|i| holds(n, &path(i), format!("new {i}\n"))))
    })
    .await;
    holds_for_quiet_period(&group, "one apply request per peer", || {
        total(&group, |c| c.apply_requests) - before.iter().map(|c| c.apply_requests).sum::<u64>()
            == 2
    })
    .await;
    for (node, before) in peers.iter().zip(&before[1..]) {
        assert_eq!(
            counters(node).applied - before.applied,
            1000,
            "{} applied exactly the changed files\n{}",
            node.addr,
            describe(&group)
        );
        assert_same_tree(&group.nodes[0], node);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_directory_deleted_and_recreated_is_watched_again() {
    let group = watching(196).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    write(n0, "/etc/app/old.conf", "before\n");
    eventually(&group, WAIT, "the first file on both peers", || {
        peers
            .iter()
            .all(|n| holds(n, "/etc/app/old.conf", "before\n"))
    })
    .await;

    // A vanished configured directory (unmounted, say) is never pushed as a deletion.
    std::fs::remove_dir_all(n0.path("/etc/app")).unwrap();
    holds_for_quiet_period(&group, "the peers keep their files", || {
        peers
            .iter()
            .all(|n| holds(n, "/etc/app/old.conf", "before\n"))
    })
    .await;
    // Once it is back, what it holds is this node's tree again, and it is watched.
    std::fs::create_dir(n0.path("/etc/app")).unwrap();
    write(n0, "/etc/app/new.conf", "after re-creation\n");
    eventually(
        &group,
        WAIT,
        "the re-created directory's tree on both peers",
        || {
            peers.iter().all(|n| {
                holds(n, "/etc/app/new.conf", "after re-creation\n")
                    && !exists(n, "/etc/app/old.conf")
            })
        },
    )
    .await;
    // The new directory is watched, not merely rescanned once: a later edit travels.
    write(n0, "/etc/app/new.conf", "edited later\n");
    eventually(&group, PROMPT, "a later edit in it", || {
        peers
            .iter()
            .all(|n| holds(n, "/etc/app/new.conf", "edited later\n"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_directory_missing_at_start_up_is_watched_once_it_appears() {
    let mut group = LocalGroup::build(&GroupSpec {
        nodes: 3,
        first_octet: 204,
        watch: true,
        ..GroupSpec::default()
    })
    .await
    .unwrap();
    std::fs::remove_dir(group.nodes[0].path("/etc/app")).unwrap();
    group.start_all().await.unwrap();
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);

    std::fs::create_dir(n0.path("/etc/app")).unwrap();
    write(n0, "/etc/app/late.conf", "the directory came late\n");
    eventually(&group, WAIT, "a file of the late directory", || {
        peers
            .iter()
            .all(|n| holds(n, "/etc/app/late.conf", "the directory came late\n"))
    })
    .await;
    write(n0, "/etc/app/late.conf", "edited later\n");
    eventually(&group, PROMPT, "a later edit in it", || {
        peers
            .iter()
            .all(|n| holds(n, "/etc/app/late.conf", "edited later\n"))
    })
    .await;
}

/// Every temporary file of the daemons' writes under `root`.
fn temp_files(root: &std::path::Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(gosyncd::tree::is_temp_name)
        })
        .map(|e| e.into_path())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_push_under_way_and_leaves_no_temp_file() {
    // Node 0 is the real binary. It reaches node 1 through a forwarder that sends it
    // SIGTERM once 256 KiB of a 16 MiB push have gone through: a push is then under
    // way. One self-signed certificate names all three addresses, so the forwarder can
    // listen on the third node's (never started) and still pass the name check.
    let mut group = LocalGroup::build(&GroupSpec {
        nodes: 3,
        first_octet: 208,
        tls: gosyncd::group::TlsStyle::SelfSigned,
        watch: true,
        ..GroupSpec::default()
    })
    .await
    .unwrap();
    group.restart(1).await.unwrap();
    group.release(0);
    group.release(2);
    let pid = Arc::new(std::sync::OnceLock::<u32>::new());
    let signalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hook = {
        let (pid, signalled) = (pid.clone(), signalled.clone());
        Box::new(move || {
            let pid = pid.get().copied().expect("node 0 runs");
            let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
            signalled.store(true, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let forwarder = forwarder_with_hook(ip(210), group.nodes[1].addr, 256 * 1024, Some(hook)).await;
    let config = config_variant(&group, 0, "node1-forwarded.hcl", |text| {
        with_remotes(
            &text,
            &[group.nodes[0].addr.to_string(), forwarder.addr.to_string()],
        )
    });
    let mut daemon = DaemonProcess::spawn(&config, group.path().join("node1.log"));
    pid.set(daemon.child.id()).unwrap();
    daemon
        .wait_ready(&peer(&tls_of(&group.nodes[0]), group.nodes[0].addr))
        .await;

    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    write(&group.nodes[0], "/etc/app/big.bin", &big);
    let status = daemon.wait_exit(Duration::from_secs(30)).await;
    let log = daemon.log();
    assert!(
        signalled.load(std::sync::atomic::Ordering::SeqCst),
        "the push never started:\n{log}"
    );
    assert!(status.success(), "node 0 exited with {status}:\n{log}");
    assert!(
        holds(&group.nodes[1], "/etc/app/big.bin", &big),
        "the push under way was not finished before exiting:\n{log}"
    );
    assert!(!log.contains("stopping anyway"), "{log}");
    for root in [group.path().join("node1"), group.path().join("node2")] {
        assert_eq!(temp_files(&root), Vec::<PathBuf>::new(), "{log}");
    }
}
