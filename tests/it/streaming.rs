//! Contents are streamed at both ends: a daemon pushing a large file reads it as it sends
//! it, the daemon receiving it writes it as it arrives, and neither grows by the file's
//! size. A file that changes between the scan and the send is left out of the push, and
//! the rest of the batch still goes.

use std::time::Duration;

use crate::common::*;
use gosyncd::protocol::{Action, Op};

/// Bytes that do not compress or repeat: a simple xorshift stream.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_goes_through_both_daemons_without_either_holding_it() {
    const FILE_MIB: usize = 96;
    // What either daemon may grow by, from its resident size once ready to its peak,
    // while it hashes, sends or receives a file of FILE_MIB. Holding the file would
    // take it past FILE_MIB.
    const GROWTH_BOUND_KIB: u64 = 32 * 1024;
    let mut group = built_watching(2).await;
    group.release(0);
    group.release(1);
    let mut daemons = Vec::new();
    for (i, node) in group.nodes.iter().enumerate() {
        let log = group.path().join(format!("node{i}.log"));
        daemons.push(DaemonProcess::spawn(&node.config_path, log));
    }
    for (daemon, node) in daemons.iter_mut().zip(&group.nodes) {
        daemon.wait_ready(&peer_as(node, node.addr)).await;
    }
    // Start-up is over (the first scan is done) when both are quiet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready: Vec<u64> = daemons
        .iter()
        .map(|d| memory_kib(d.child.id(), "VmRSS:"))
        .collect();

    let big = noise(FILE_MIB * 1024 * 1024, 7);
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/big.bin", &big);
    eventually_showing(
        "the file arrived",
        Duration::from_secs(60),
        || {
            std::fs::metadata(n1.path("/etc/app/big.bin"))
                .is_ok_and(|m| m.len() == big.len() as u64)
        },
        || {
            format!(
                "sender:\n{}\nreceiver:\n{}",
                daemons[0].log(),
                daemons[1].log()
            )
        },
    )
    .await;
    assert!(
        read(n1, "/etc/app/big.bin") == big,
        "the file arrived whole"
    );

    for (i, daemon) in daemons.iter().enumerate() {
        let peak = memory_kib(daemon.child.id(), "VmHWM:");
        let growth = peak.saturating_sub(ready[i]);
        eprintln!(
            "node {i}: resident {} KiB once ready, peak {peak} KiB after a {FILE_MIB} MiB file",
            ready[i]
        );
        assert!(
            growth < GROWTH_BOUND_KIB,
            "node {i} grew by {growth} KiB (from {} to {peak} KiB) for a {FILE_MIB} MiB file",
            ready[i]
        );
    }
    assert!(
        temp_files_below(group.path()).is_empty(),
        "temporary files left: {:?}",
        temp_files_below(group.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_since_it_was_planned_is_left_out_and_the_rest_goes() {
    let group = start_with(spec(2)).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/steady.conf", "steady\n");
    write(n0, "/etc/app/moving.conf", "first\n");
    let planned =
        gosyncd::manifest::scan(&n0.config, &[], &gosyncd::manifest::HashCache::default()).entries;
    // Written again after it was scanned: same size, another time.
    std::thread::sleep(Duration::from_millis(20));
    write(n0, "/etc/app/moving.conf", "other\n");

    let engine = engine(&group, 0).await;
    let ops: Vec<Op> = ["/etc/app/steady.conf", "/etc/app/moving.conf"]
        .iter()
        .map(|path| Op {
            path: (*path).into(),
            action: Action::Put {
                entry: planned[*path].clone(),
            },
            expect: None,
        })
        .collect();
    let report = engine.push_to(&engine.peers()[0], ops).await;
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!(report.changed_locally, vec!["/etc/app/moving.conf"]);
    assert_eq!(read(n1, "/etc/app/steady.conf"), b"steady\n");
    assert!(
        !exists(n1, "/etc/app/moving.conf"),
        "a version that no longer exists here was sent"
    );
    assert!(temp_files_below(group.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_push_goes_in_bounded_batches_except_where_the_peer_validates_the_whole() {
    // More operations than two batches hold where the receiver runs no command (2,048
    // each).
    const FILES: usize = 5_000;
    let mut group = start(3).await;
    // Node 2 validates what it receives, and notes how many files each run saw.
    with_directory_lines(
        &mut group,
        1,
        r#"  validate = "ls \"$GOSYNCD_DIRECTORY\" | wc -l >> \"$GOSYNCD_DIRECTORY/../../validated\"""#,
    )
    .await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    for i in 0..FILES {
        write(n0, &format!("/etc/app/f{i:05}.conf"), format!("{i}\n"));
    }
    // What it validated before (at start-up) is not this push.
    let _ = std::fs::remove_file(n1.path("/validated"));
    let before = [counters(n1).apply_requests, counters(n2).apply_requests];
    let report = sync(&group, 0).await;
    assert_clean(&report);
    assert_same_tree(n0, n1);
    assert_same_tree(n0, n2);
    let requests = [
        counters(n1).apply_requests - before[0],
        counters(n2).apply_requests - before[1],
    ];
    assert_eq!(
        requests[0], 1,
        "the validating peer got the push in one request"
    );
    assert_eq!(requests[1], 3, "the other peer got it in bounded batches");
    let validated = std::fs::read_to_string(n1.path("/validated")).unwrap();
    assert_eq!(
        validated.split_whitespace().collect::<Vec<_>>(),
        [FILES.to_string()],
        "validate ran once, on every file of the push"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_tree_saved_then_deleted_is_delivered_by_the_watcher_in_parts() {
    // More paths than one delivery takes where the peer runs no command (4,096).
    const FILES: usize = 5_000;
    let group = watching(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let requests = || counters(n1).apply_requests;
    let before = requests();
    for i in 0..FILES {
        write(
            n0,
            &format!("/etc/app/tree/d{}/f{i:05}.conf", i % 10),
            format!("{i}\n"),
        );
    }
    // The directories go before what they hold, part after part.
    // Counted while the peer writes: its temporary files come and go.
    fn files(dir: &std::path::Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .flatten()
            .map(|entry| match entry.file_type() {
                Ok(t) if t.is_dir() => files(&entry.path()),
                Ok(t) => usize::from(
                    t.is_file() && entry.file_name().to_string_lossy().ends_with(".conf"),
                ),
                Err(_) => 0,
            })
            .sum()
    }
    eventually_in(&group, 4 * WAIT, "the tree on the peer", || {
        files(&n1.path("/etc/app/tree")) == FILES
    })
    .await;
    assert_same_tree(n0, n1);
    let puts = requests() - before;
    assert!(puts >= 2, "{puts} requests for {FILES} files");

    let (before, pushes_before) = (requests(), counters(n0).pushes);
    std::fs::remove_dir_all(n0.path("/etc/app/tree")).unwrap();
    // Each directory goes once what it holds is gone, in the same part or an earlier one.
    eventually_in(&group, 4 * WAIT, "the tree gone from the peer", || {
        !n1.path("/etc/app/tree").exists()
    })
    .await;
    assert_same_tree(n0, n1);
    let deletions = requests() - before;
    assert!(deletions >= 2, "{deletions} requests for {FILES} deletions");
    // Each part is a push of its own (a push of everything would be one, in batches),
    // counted once its answer is read.
    eventually_in(&group, WAIT, "a push per part", || {
        counters(n0).pushes - pushes_before >= 2
    })
    .await;
    assert_eq!(counters(n0).conflicts_reported, 0);
    assert_eq!(counters(n1).conflicts_refused, 0);
}
