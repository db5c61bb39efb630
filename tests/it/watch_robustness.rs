//! The watching daemons under strain: regressions found while writing the watch tests (a
//! daemon woken by its own reads, an edit made while the previous one is pushed), a
//! thousand files changed at once, a configured directory deleted and re-created or
//! missing at start-up, and SIGTERM in the middle of a push.
//!
//! Every wait polls for a condition with a deadline, or waits for a filesystem event seen
//! by a watcher of the test's own. Where a test shows that something does NOT happen, it
//! first waits for an event that must come before it, then watches for a quiet period
//! derived from the debounce, failing as soon as the thing happens.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use gosyncd::group::{GroupSpec, LocalGroup};
use gosyncd::protocol::StatusCounters;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, Watcher};
use tokio::sync::mpsc;

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
// Regressions.

/// Regression: the watcher took the daemon's own reads (inotify open and close-without-
/// write events) for changes, so each scan caused the next one: every node rescanned its
/// whole tree once per debounce period, forever, with nothing changing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_is_not_woken_by_its_own_reads() {
    let group = watching(3).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    write(n0, "/etc/app/one.conf", "one\n");
    eventually_in(&group, WAIT, "the file on both peers", || {
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
    let group = watching(3).await;
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

    eventually_in(&group, WAIT, "the final version on both peers", || {
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
        watch: true,
        debounce: Some(Duration::from_secs(1)),
        ..spec(3)
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
    eventually_in(&group, WAIT, "the 1000 changes on both peers", || {
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
    let group = watching(3).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    write(n0, "/etc/app/old.conf", "before\n");
    eventually_in(&group, WAIT, "the first file on both peers", || {
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
    eventually_in(
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
    eventually_in(&group, PROMPT, "a later edit in it", || {
        peers
            .iter()
            .all(|n| holds(n, "/etc/app/new.conf", "edited later\n"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_directory_missing_at_start_up_is_watched_once_it_appears() {
    let mut group = built_watching(3).await;
    std::fs::remove_dir(group.nodes[0].path("/etc/app")).unwrap();
    group.start_all().await.unwrap();
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);

    std::fs::create_dir(n0.path("/etc/app")).unwrap();
    write(n0, "/etc/app/late.conf", "the directory came late\n");
    eventually_in(&group, WAIT, "a file of the late directory", || {
        peers
            .iter()
            .all(|n| holds(n, "/etc/app/late.conf", "the directory came late\n"))
    })
    .await;
    write(n0, "/etc/app/late.conf", "edited later\n");
    eventually_in(&group, PROMPT, "a later edit in it", || {
        peers
            .iter()
            .all(|n| holds(n, "/etc/app/late.conf", "edited later\n"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_push_under_way_and_leaves_no_temp_file() {
    // Node 0 is the real binary. It reaches node 1 through a forwarder that sends it
    // SIGTERM once 256 KiB of a 16 MiB push have gone through: a push is then under
    // way. One self-signed certificate names all three addresses, so the forwarder can
    // listen on the third node's (never started) and still pass the name check.
    let mut group = LocalGroup::build(&GroupSpec {
        tls: gosyncd::group::TlsStyle::SelfSigned,
        watch: true,
        ..spec(3)
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
    let forwarder = forwarder_with_hook(
        group.nodes[2].addr.ip(),
        group.nodes[1].addr,
        256 * 1024,
        Some(hook),
    )
    .await;
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
        assert_eq!(temp_files_below(&root), Vec::<PathBuf>::new(), "{log}");
    }
}
