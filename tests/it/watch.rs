//! Automatic propagation between real daemons that watch their trees: what reaches the
//! peers after each kind of local edit, how many requests one save costs, that a received
//! write is not pushed back, and what never leaves a node. Conflicts and stopped or
//! drifted peers are in `watch_peers.rs`; the watcher under strain, and regressions found
//! while writing these tests, in `watch_robustness.rs`.
//!
//! Every wait polls for a condition with a deadline. Where a test shows that something does NOT happen, it
//! first waits for an event that must come before it, then watches for a quiet period
//! derived from the debounce, failing as soon as the thing happens.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use gosyncd::config::Config;
use gosyncd::group::{GroupNode, GroupSpec};

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

// ---------------------------------------------------------------------------------------
// Each kind of edit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_modified_and_deleted_files_reach_every_peer() {
    let group = watching(3).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let path = "/etc/app/sub/app.conf";

    write(n0, path, "first\n");
    eventually_in(&group, WAIT, "the new file on both peers", || {
        peers.iter().all(|n| holds(n, path, "first\n"))
    })
    .await;

    let longer: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    write(n0, path, &longer);
    eventually_in(
        &group,
        WAIT,
        "the longer binary version on both peers",
        || peers.iter().all(|n| holds(n, path, &longer)),
    )
    .await;

    write(n0, path, "short\n");
    eventually_in(&group, WAIT, "the shorter version on both peers", || {
        peers.iter().all(|n| holds(n, path, "short\n"))
    })
    .await;

    remove(n0, path);
    eventually_in(&group, WAIT, "the file deleted on both peers", || {
        peers.iter().all(|n| !exists(n, path))
    })
    .await;
    assert!(
        peers.iter().all(|n| is_dir(n, "/etc/app/sub")),
        "deleting a file must leave its directory"
    );
}

/// The kernel names the writes to an anonymous file `#` and its inode number; a file
/// really named so is synchronised like any other, down to its removal and its renaming
/// away, after which nothing is at its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_named_like_an_anonymous_file_is_created_renamed_and_deleted_everywhere() {
    let group = watching(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let (first, second) = ("/etc/app/#123", "/etc/app/#456");

    write(n0, first, "named so\n");
    write(n0, second, "also named so\n");
    eventually_in(&group, WAIT, "both files on the peer", || {
        holds(n1, first, "named so\n") && holds(n1, second, "also named so\n")
    })
    .await;

    remove(n0, first);
    eventually_in(&group, WAIT, "the removal on the peer", || {
        !exists(n1, first)
    })
    .await;

    rename(n0, second, "/etc/app/renamed.conf");
    eventually_in(&group, WAIT, "the renaming on the peer", || {
        !exists(n1, second) && holds(n1, "/etc/app/renamed.conf", "also named so\n")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_files_and_directories_are_renamed_on_every_peer() {
    let group = watching(3).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    write(n0, "/etc/app/old.conf", "renamed file\n");
    write(n0, "/etc/app/olddir/a.conf", "a\n");
    write(n0, "/etc/app/olddir/sub/b.conf", "b\n");
    eventually_in(&group, WAIT, "the initial files on both peers", || {
        peers.iter().all(|n| {
            holds(n, "/etc/app/old.conf", "renamed file\n")
                && holds(n, "/etc/app/olddir/a.conf", "a\n")
                && holds(n, "/etc/app/olddir/sub/b.conf", "b\n")
        })
    })
    .await;

    rename(n0, "/etc/app/old.conf", "/etc/app/new.conf");
    eventually_in(&group, WAIT, "the file renamed on both peers", || {
        peers.iter().all(|n| {
            !exists(n, "/etc/app/old.conf") && holds(n, "/etc/app/new.conf", "renamed file\n")
        })
    })
    .await;

    rename(n0, "/etc/app/olddir", "/etc/app/newdir");
    eventually_in(&group, WAIT, "the directory renamed on both peers", || {
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
    eventually_in(&group, WAIT, "an edit inside the renamed directory", || {
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
    let group = watching(3).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);

    mkdir(n0, "/etc/app/empty");
    eventually_in(&group, WAIT, "the empty directory on both peers", || {
        peers.iter().all(|n| is_dir(n, "/etc/app/empty"))
    })
    .await;
    std::fs::remove_dir(n0.path("/etc/app/empty")).unwrap();
    eventually_in(
        &group,
        WAIT,
        "the empty directory removed on both peers",
        || peers.iter().all(|n| !exists(n, "/etc/app/empty")),
    )
    .await;

    write(n0, "/etc/app/mode.conf", "mode\n");
    chmod(n0, "/etc/app/mode.conf", 0o600);
    eventually_in(
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
    eventually_in(&group, WAIT, "mode 0640 on both peers", || {
        peers
            .iter()
            .all(|n| mode_of(n, "/etc/app/mode.conf") == Some(0o640))
    })
    .await;

    symlink(n0, "mode.conf", "/etc/app/link");
    eventually_in(
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
    let group = watching(3).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let (file, backup, swap) = ("/etc/app/x.cfg", "/etc/app/x.cfg~", "/etc/app/.x.cfg.swp");
    write(n0, file, "version 1\n");
    eventually_in(&group, WAIT, "version 1 on both peers", || {
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

    eventually_in(&group, WAIT, "version 2 on both peers", || {
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
    let group = watching(3).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let file = "/etc/app/burst.conf";
    let version = |i: usize| format!("write {i}: {}\n", "x".repeat(i));
    for i in 0..50 {
        write(n0, file, version(i));
    }

    let last = version(49);
    eventually_in(&group, WAIT, "the last write on both peers", || {
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
    let mut group = watching(3).await;
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
    eventually_in(&group, WAIT, "the last edit on both peers", || {
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
        watch: true,
        ..spec(2)
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
    eventually_in(&group, WAIT, "the file on the peer", || {
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
    eventually_in(
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
    let group = watching(3).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    write(n0, "/etc/app/echo.conf", "saved once\n");
    eventually_in(&group, WAIT, "the save on both peers", || {
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
// What never leaves a node.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_paths_and_editor_files_never_leave_the_node() {
    let group = start_with(GroupSpec {
        watch: true,
        directories: vec![("/etc/app".into(), vec!["/etc/app/private".into()])],
        ..spec(3)
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

    eventually_in(&group, WAIT, "the sentinel on both peers", || {
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
