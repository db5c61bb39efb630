//! Automatic propagation between real daemons that watch their trees, when the nodes
//! disagree or a peer is away: concurrent edits are refused rather than lost until an
//! explicit sync, a stopped peer holds back no other and catches up after its restart, and
//! a node restarted with drifted files pushes nothing.
//!
//! Every wait polls for a condition with a deadline. Where a test shows that something does NOT happen, it
//! first waits for an event that must come before it, then watches for a quiet period
//! derived from the debounce, failing as soon as the thing happens.

use std::time::{Duration, Instant};

use crate::common::*;
use gosyncd::group::GroupNode;

/// Longest a restarted peer may take to catch up on what it missed, with no command.
const RECOVERY: Duration = Duration::from_secs(15);

/// What a node's file holds, for failure messages.
fn content(node: &GroupNode, logical: &str) -> String {
    match std::fs::read(node.path(logical)) {
        Ok(bytes) => format!("{:?}", String::from_utf8_lossy(&bytes)),
        Err(e) => format!("unreadable ({e})"),
    }
}

// ---------------------------------------------------------------------------------------
// Conflicts, dead peers, drift.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_are_refused_not_lost_until_an_explicit_sync() {
    let group = watching(3).await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    let file = "/etc/app/shared.conf";
    let (v0, v1) = ("edited on node 0\n", "edited on node 1, at the same time\n");
    write(n0, file, "base\n");
    eventually_in(&group, WAIT, "the base version on both peers", || {
        holds(n1, file, "base\n") && holds(n2, file, "base\n")
    })
    .await;
    let pushes_before = (counters(n0).pushes, counters(n1).pushes);

    write(n0, file, v0);
    write(n1, file, v1);

    // Each editing node sends its edit to both of its peers (a refused operation counts).
    eventually_in(&group, WAIT, "both edits pushed to both peers", || {
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
    let mut group = watching(3).await;
    {
        let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
        write(n0, "/etc/app/modified.conf", "before\n");
        write(n0, "/etc/app/deleted.conf", "doomed\n");
        eventually_in(&group, WAIT, "the initial files on both peers", || {
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
    eventually_in(&group, PROMPT, "node 1 gets the edits promptly", || {
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
    eventually_in(&group, PROMPT, "node 1 gets a second edit promptly", || {
        holds(n1, "/etc/app/modified.conf", "modified again\n")
    })
    .await;

    group.restart(2).await.unwrap();
    let n2 = &group.nodes[2];
    eventually_in(
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
    let mut group = watching(3).await;
    {
        let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
        write(n0, "/etc/app/kept.conf", "same everywhere\n");
        write(n0, "/etc/app/changed.conf", "original\n");
        write(n0, "/etc/app/removed.conf", "original\n");
        eventually_in(&group, WAIT, "the initial files on both peers", || {
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
    eventually_in(&group, WAIT, "the sentinel on both peers", || {
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
