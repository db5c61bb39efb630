//! End-to-end synchronisation between real nodes on 127.0.0.x: what a sync changes,
//! what a dry run shows, scopes, excludes, missing directories and the progress a run tells.

use std::sync::Arc;

use crate::common::*;
use gosyncd::config::Config;
use gosyncd::group::{GroupSpec, TlsStyle};
use gosyncd::sync::{ChangeStatus, Options, PeerTally, Progress, ProgressEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_makes_every_peer_identical_to_the_sender() {
    // Every mode travels, set-id bits included where the receivers allow them.
    let group = start_with(GroupSpec {
        settings: "allow_setid = true\n".into(),
        ..spec(3)
    })
    .await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    let outside = group.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "not to be copied").unwrap();

    // State A on node 0, pushed to every peer.
    write(n0, "/etc/app/keep.conf", "unchanged\n");
    write(n0, "/etc/app/update.conf", "v1\n");
    write(n0, "/etc/app/delete.conf", "doomed\n");
    write(n0, "/etc/app/mode.conf", "same content\n");
    chmod(n0, "/etc/app/mode.conf", 0o644);
    mkdir(n0, "/etc/app/dirmode");
    chmod(n0, "/etc/app/dirmode", 0o700);
    write(n0, "/etc/app/dir_to_file/a", "a");
    write(n0, "/etc/app/dir_to_file/sub/b", "b");
    write(n0, "/etc/app/file_to_dir", "was a file");
    write(n0, "/etc/app/file_to_link", "was a file");
    symlink(n0, "keep.conf", "/etc/app/link_to_file");
    symlink(n0, "a", "/etc/app/link_retarget");
    mkdir(n0, "/etc/app/old_empty");
    write(n0, "/etc/app/owner.conf", "owned by root, then not");
    symlink(n0, &outside, "/etc/app/link_to_dir");
    write(n0, "/etc/app/dir_to_link/x", "x");
    let first = sync(&group, 0).await;
    assert_clean(&first);
    assert!(first.has_changes());
    assert_same_tree(n0, n1);
    assert_same_tree(n0, n2);

    // Node 2 has things node 0 never had.
    write(n2, "/etc/app/stray.conf", "stray");
    write(n2, "/etc/app/straydir/x", "x");

    // State B: every kind of change.
    write(n0, "/etc/app/update.conf", "v2, longer than v1\n");
    remove(n0, "/etc/app/delete.conf");
    chmod(n0, "/etc/app/mode.conf", 0o640);
    chmod(n0, "/etc/app/dirmode", 0o755);
    remove(n0, "/etc/app/dir_to_file");
    write(n0, "/etc/app/dir_to_file", "now a file");
    remove(n0, "/etc/app/file_to_dir");
    write(n0, "/etc/app/file_to_dir/c", "c");
    remove(n0, "/etc/app/file_to_link");
    symlink(n0, "keep.conf", "/etc/app/file_to_link");
    remove(n0, "/etc/app/link_to_file");
    write(n0, "/etc/app/link_to_file", "now a file");
    remove(n0, "/etc/app/link_retarget");
    symlink(n0, "b", "/etc/app/link_retarget");
    remove(n0, "/etc/app/old_empty");
    mkdir(n0, "/etc/app/empty");
    remove(n0, "/etc/app/link_to_dir");
    write(
        n0,
        "/etc/app/link_to_dir/inner.conf",
        "inside a real directory now",
    );
    remove(n0, "/etc/app/dir_to_link");
    symlink(n0, "deep", "/etc/app/dir_to_link");
    symlink(n0, outside.join("secret"), "/etc/app/link_abs");
    symlink(n0, "../../nowhere/at/all", "/etc/app/link_dangling");
    write(n0, "/etc/app/deep/a/b/c.conf", "deep");
    symlink(n0, "deep", "/etc/app/link_dir");
    write(n0, "/etc/app/exec.sh", "#!/bin/sh\nexit 0\n");
    chmod(n0, "/etc/app/exec.sh", 0o755);
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    write(n0, "/etc/app/binary.bin", &binary);
    write(n0, "/etc/app/empty.conf", "");
    write(n0, "/etc/app/with space, é and 'quotes'.conf", "odd name");
    write(n0, "/etc/app/setuid", "#!/bin/sh\n");
    chmod(n0, "/etc/app/setuid", 0o4750);
    // Owners travel when the receiver runs as root (as these nodes then do).
    let owners = rustix::process::geteuid().is_root();
    if owners {
        use std::os::unix::fs::{chown, lchown};
        chown(n0.path("/etc/app/owner.conf"), Some(4321), Some(4322)).unwrap();
        chown(n0.path("/etc/app/deep/a"), Some(4321), Some(0)).unwrap();
        lchown(n0.path("/etc/app/link_dir"), Some(0), Some(4322)).unwrap();
    }

    let outside_before = snapshot(&outside);
    let second = sync(&group, 0).await;
    assert_clean(&second);
    let expected = [
        "- /etc/app/delete.conf",
        "- /etc/app/dir_to_file/a",
        "- /etc/app/dir_to_file/sub/b",
        "- /etc/app/dir_to_file/sub",
        "- /etc/app/dir_to_file",
        "- /etc/app/file_to_dir",
        "- /etc/app/old_empty",
        "- /etc/app/link_to_dir",
        "- /etc/app/dir_to_link/x",
        "- /etc/app/dir_to_link",
        "+ /etc/app/link_to_dir",
        "+ /etc/app/link_to_dir/inner.conf",
        "+ /etc/app/dir_to_link",
        "+ /etc/app/dir_to_file",
        "+ /etc/app/file_to_dir",
        "+ /etc/app/file_to_dir/c",
        "+ /etc/app/empty",
        "+ /etc/app/link_abs",
        "+ /etc/app/link_dangling",
        "+ /etc/app/link_dir",
        "+ /etc/app/deep",
        "+ /etc/app/deep/a",
        "+ /etc/app/deep/a/b",
        "+ /etc/app/deep/a/b/c.conf",
        "+ /etc/app/exec.sh",
        "+ /etc/app/binary.bin",
        "+ /etc/app/empty.conf",
        "+ /etc/app/with space, é and 'quotes'.conf",
        "+ /etc/app/setuid",
        "M /etc/app/update.conf",
        "M /etc/app/mode.conf",
        "M /etc/app/dirmode",
        "M /etc/app/file_to_link",
        "M /etc/app/link_to_file",
        "M /etc/app/link_retarget",
    ];
    let mut expected = expected.to_vec();
    if owners {
        expected.push("M /etc/app/owner.conf");
    }
    assert_eq!(summary(&second, n1), sorted(&expected));
    let mut expected_n2 = expected.clone();
    expected_n2.extend([
        "- /etc/app/stray.conf",
        "- /etc/app/straydir/x",
        "- /etc/app/straydir",
    ]);
    assert_eq!(summary(&second, n2), sorted(&expected_n2));

    for peer in [n1, n2] {
        assert_same_tree(n0, peer);
        // Links travel as links with their text, never as the file they point at.
        assert_eq!(
            link_target(peer, "/etc/app/link_abs"),
            outside.join("secret")
        );
        assert_eq!(
            link_target(peer, "/etc/app/link_dangling").to_str(),
            Some("../../nowhere/at/all")
        );
        assert_eq!(
            link_target(peer, "/etc/app/link_dir").to_str(),
            Some("deep")
        );
        assert_eq!(
            link_target(peer, "/etc/app/file_to_link").to_str(),
            Some("keep.conf")
        );
        assert_eq!(read(peer, "/etc/app/binary.bin"), binary);
        assert_eq!(read(peer, "/etc/app/link_to_file"), b"now a file");
        let mode = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(peer.path(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("/etc/app/mode.conf"), 0o640);
        assert_eq!(mode("/etc/app/dirmode"), 0o755);
        assert_eq!(mode("/etc/app/exec.sh"), 0o755);
        assert_eq!(mode("/etc/app/setuid"), 0o4750);
        if owners {
            use std::os::unix::fs::MetadataExt;
            let owner = |p: &str| {
                let meta = std::fs::symlink_metadata(peer.path(p)).unwrap();
                (meta.uid(), meta.gid())
            };
            assert_eq!(owner("/etc/app/owner.conf"), (4321, 4322));
            assert_eq!(owner("/etc/app/deep/a"), (4321, 0));
            assert_eq!(owner("/etc/app/link_dir"), (0, 4322));
        }
    }

    assert_eq!(snapshot(&outside), outside_before, "written through a link");

    let third = sync(&group, 0).await;
    assert_clean(&third);
    assert!(
        third.peers.iter().all(|p| p.changes.is_empty()),
        "a second sync changed something: {third:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_on_any_peer() {
    let group = start(3).await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    write(n0, "/etc/app/a.conf", "new a");
    write(n0, "/etc/app/sub/b.conf", "b");
    chmod(n0, "/etc/app/sub/b.conf", 0o600);
    symlink(n0, "a.conf", "/etc/app/link");
    mkdir(n0, "/etc/app/empty");
    write(n2, "/etc/app/a.conf", "old a");
    write(n2, "/etc/app/stale.conf", "stale");
    write(n2, "/etc/app/sub", "a file where node 0 has a directory");
    symlink(n2, "elsewhere", "/etc/app/link");

    // The whole group directory: every node's tree, configs and certificates.
    let before = snapshot(group.path());
    let binary = gosyncd(config_args(&n0.config_path, &["sync", "-dry"])).await;
    assert_eq!(binary.code, Some(0), "{binary:#?}");
    assert!(binary.stdout.contains("dry run"), "{binary:#?}");
    let dry = dry_run(&group, 0).await;
    assert_clean(&dry);
    assert!(dry.has_changes());
    assert_eq!(snapshot(group.path()), before, "a dry run wrote something");

    // The binary prints exactly the library's lines.
    let mut dry_lines: Vec<String> = dry
        .peers
        .iter()
        .flat_map(|p| p.lines().map(|l| l.to_string()))
        .collect();
    dry_lines.sort();
    assert_eq!(binary.change_lines(), dry_lines);

    let real = sync(&group, 0).await;
    assert_clean(&real);
    for peer in [n1, n2] {
        assert!(!lines(&dry, peer).is_empty());
        assert_eq!(
            peer_report(&real, peer).changes,
            peer_report(&dry, peer).changes,
            "the dry run announced other changes than the sync made on {}",
            peer.addr
        );
        assert_same_tree(n0, peer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_style_self_signed_certificate_syncs_the_whole_group() {
    let group = start_with(GroupSpec {
        tls: TlsStyle::SelfSigned,
        ..spec(3)
    })
    .await;
    let n0 = &group.nodes[0];
    write(n0, "/etc/app/haproxy.cfg", "frontend fe\n");
    write(n0, "/etc/app/conf.d/site.cfg", "backend be\n");
    symlink(n0, "conf.d/site.cfg", "/etc/app/current");
    let report = sync(&group, 0).await;
    assert_clean(&report);
    for peer in &group.nodes[1..] {
        assert_eq!(summary(&report, peer).len(), 4, "{report:#?}");
        assert_same_tree(n0, peer);
    }
    // The binary with the seed-style config agrees that nothing is left to do.
    let run = gosyncd(config_args(
        &n0.config_path,
        &["sync", "-dry", "--exit-code"],
    ))
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_configured_directory_is_an_error_and_deletes_nothing() {
    let group = start_with(GroupSpec {
        directories: vec![
            ("/etc/app".into(), Vec::new()),
            ("/etc/other".into(), Vec::new()),
        ],
        ..spec(3)
    })
    .await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    write(n0, "/etc/app/a.conf", "v1");
    write(n0, "/etc/other/precious.conf", "keep me");
    write(n0, "/etc/other/sub/deeper.conf", "keep me too");
    assert_clean(&sync(&group, 0).await);

    remove(n0, "/etc/other");
    write(n0, "/etc/app/a.conf", "v2");
    let peers_other = [
        snapshot(&n1.path("/etc/other")),
        snapshot(&n2.path("/etc/other")),
    ];

    let report = sync(&group, 0).await;
    assert!(
        report.local_errors.iter().any(|e| e.contains("/etc/other")),
        "{report:#?}"
    );
    assert!(report.failed());
    // The other directory still goes out.
    for peer in [n1, n2] {
        assert_eq!(summary(&report, peer), ["M /etc/app/a.conf"]);
        assert_eq!(read(peer, "/etc/app/a.conf"), b"v2");
    }

    let run = gosyncd(config_args(&n0.config_path, &["sync"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("/etc/other"), "{run:#?}");
    assert_eq!(
        [
            snapshot(&n1.path("/etc/other")),
            snapshot(&n2.path("/etc/other")),
        ],
        peers_other,
        "a directory missing on the sender was changed on a peer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_sync_touches_only_that_subtree() {
    let group = start(3).await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    write(n0, "/etc/app/sub/keep.conf", "keep");
    write(n0, "/etc/app/sub/update.conf", "v1");
    write(n0, "/etc/app/sub/delete.conf", "x");
    write(n0, "/etc/app/gone.conf", "x");
    write(n0, "/etc/app/top.conf", "v1");
    assert_clean(&sync(&group, 0).await);

    write(n0, "/etc/app/sub/update.conf", "v2");
    remove(n0, "/etc/app/sub/delete.conf");
    write(n0, "/etc/app/sub/new/added.conf", "added");
    write(n0, "/etc/app/outside.conf", "not in scope");
    write(n0, "/etc/app/top.conf", "v2");
    remove(n0, "/etc/app/gone.conf");

    // A trailing slash is accepted, as a shell completion leaves it.
    let run = gosyncd(config_args(&n0.config_path, &["sync", "/etc/app/sub/"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let mut expected = Vec::new();
    for peer in [n1, n2] {
        for line in [
            format!("[-] {} /etc/app/sub/delete.conf deleted", peer.addr),
            format!("[+] {} /etc/app/sub/new added", peer.addr),
            format!("[+] {} /etc/app/sub/new/added.conf added", peer.addr),
            format!("[M] {} /etc/app/sub/update.conf updated", peer.addr),
        ] {
            expected.push(line);
        }
    }
    expected.sort();
    assert_eq!(run.change_lines(), expected);

    for peer in [n1, n2] {
        assert_eq!(read(peer, "/etc/app/sub/update.conf"), b"v2");
        assert!(!exists(peer, "/etc/app/sub/delete.conf"));
        assert_eq!(read(peer, "/etc/app/sub/new/added.conf"), b"added");
        assert_eq!(read(peer, "/etc/app/top.conf"), b"v1");
        assert!(exists(peer, "/etc/app/gone.conf"));
        assert!(!exists(peer, "/etc/app/outside.conf"));
    }
    // A scope outside the configured directories, or not normalised, is an error.
    for scope in ["/etc/nowhere", "/etc/app/../app"] {
        let run = gosyncd(config_args(&n0.config_path, &["sync", scope])).await;
        assert_eq!(run.code, Some(2), "{run:#?}");
        assert!(run.stderr.contains(scope), "{run:#?}");
        assert!(run.change_lines().is_empty(), "{run:#?}");
    }

    // What lies outside the scope is still pending, and nothing else.
    let pending = dry_run(&group, 0).await;
    assert_clean(&pending);
    for peer in [n1, n2] {
        assert_eq!(
            summary(&pending, peer),
            sorted(&[
                "+ /etc/app/outside.conf",
                "- /etc/app/gone.conf",
                "M /etc/app/top.conf"
            ])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_sync_of_a_subtree_deleted_on_the_sender_deletes_it_on_peers() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/sub/a.conf", "a");
    write(n0, "/etc/app/sub/inner/b.conf", "b");
    write(n0, "/etc/app/other.conf", "other");
    assert_clean(&sync(&group, 0).await);
    remove(n0, "/etc/app/sub");
    remove(n0, "/etc/app/other.conf");

    let report = run(&engine(&group, 0).await, &["/etc/app/sub"], false).await;
    assert_clean(&report);
    assert_eq!(
        summary(&report, n1),
        sorted(&[
            "- /etc/app/sub/a.conf",
            "- /etc/app/sub/inner/b.conf",
            "- /etc/app/sub/inner",
            "- /etc/app/sub",
        ])
    );
    assert!(!exists(n1, "/etc/app/sub"));
    assert_eq!(read(n1, "/etc/app/other.conf"), b"other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_excluded_on_the_sender_is_neither_pushed_nor_deleted() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let variant = config_variant(&group, 0, "node1-excludes.hcl", |text| {
        with_line(
            &text,
            "exclude = [",
            r#"  exclude = ["/etc/app/private", "*.local"]"#,
        )
    });
    write(n0, "/etc/app/a.conf", "a");
    write(n0, "/etc/app/private/key", "node 0 only");
    write(n0, "/etc/app/x.local", "node 0 only");
    write(n0, "/etc/app/sub/y.local", "node 0 only");
    write(n1, "/etc/app/private/theirs", "node 1 only");
    write(n1, "/etc/app/z.local", "node 1 only");
    write(n1, "/etc/app/sub2/w.local", "node 1 only");

    let report = run(&engine_for(&variant, n0.node_id()).await, &[], false).await;
    assert_clean(&report);
    // sub2 itself is not excluded, so its deletion is attempted; the receiver keeps it
    // because of the file inside that the sender excludes.
    assert_eq!(
        summary(&report, n1),
        sorted(&["+ /etc/app/a.conf", "+ /etc/app/sub", "! /etc/app/sub2"]),
        "{report:#?}"
    );
    assert!(
        peer_report(&report, n1)
            .changes
            .iter()
            .all(|c| !c.path.contains("private") && !c.path.ends_with(".local")),
        "{report:#?}"
    );
    assert_eq!(read(n1, "/etc/app/a.conf"), b"a");
    assert!(!exists(n1, "/etc/app/private/key"));
    assert!(!exists(n1, "/etc/app/x.local"));
    assert!(!exists(n1, "/etc/app/sub/y.local"));
    assert_eq!(read(n1, "/etc/app/private/theirs"), b"node 1 only");
    assert_eq!(read(n1, "/etc/app/z.local"), b"node 1 only");
    assert_eq!(read(n1, "/etc/app/sub2/w.local"), b"node 1 only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_excluded_only_on_the_receiver_is_not_pushed_to_it_and_raises_no_error() {
    let mut group = start(3).await;
    let variant = config_variant(&group, 1, "node2-excludes.hcl", |text| {
        with_line(
            &text,
            "exclude = [",
            r#"  exclude = ["/etc/app/private", "*.swp"]"#,
        )
    });
    group.nodes[1].config = Arc::new(Config::from_file(&variant).unwrap());
    group.restart(1).await.unwrap();
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    write(n0, "/etc/app/a.conf", "a");
    write(n0, "/etc/app/private/key", "from node 0");
    write(n0, "/etc/app/a.swp", "from node 0");
    write(n0, "/etc/app/dir/b.swp", "from node 0");
    write(n1, "/etc/app/private/mine", "node 1's own");
    write(n1, "/etc/app/c.swp", "node 1's own");

    let report = sync(&group, 0).await;
    assert_clean(&report);
    assert_eq!(
        summary(&report, n1),
        sorted(&["+ /etc/app/a.conf", "+ /etc/app/dir"]),
        "{report:#?}"
    );
    assert!(!exists(n1, "/etc/app/private/key"));
    assert!(!exists(n1, "/etc/app/a.swp"));
    assert!(!exists(n1, "/etc/app/dir/b.swp"));
    assert_eq!(read(n1, "/etc/app/private/mine"), b"node 1's own");
    assert_eq!(read(n1, "/etc/app/c.swp"), b"node 1's own");
    // The peer without the exclude gets everything.
    assert_same_tree(n0, n2);

    // A directory holding a path the receiver excludes is kept there, without error.
    write(n1, "/etc/app/dir/local.swp", "node 1's own");
    remove(n0, "/etc/app/dir");
    let report = sync(&group, 0).await;
    assert!(!report.failed(), "{report:#?}");
    let kept = &peer_report(&report, n1).changes;
    assert!(
        kept.iter()
            .any(|c| c.path == "/etc/app/dir" && matches!(c.status, ChangeStatus::Kept(_))),
        "{report:#?}"
    );
    assert_eq!(read(n1, "/etc/app/dir/local.swp"), b"node 1's own");
    assert!(!exists(n2, "/etc/app/dir"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_missing_a_configured_directory_gets_it_created() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/a.conf", "a");
    write(n0, "/etc/app/sub/b.conf", "b");
    chmod(n0, "/etc/app", 0o750);
    remove(n1, "/etc/app");

    let report = sync(&group, 0).await;
    assert_clean(&report);
    assert_eq!(
        summary(&report, n1),
        sorted(&[
            "+ /etc/app",
            "+ /etc/app/a.conf",
            "+ /etc/app/sub",
            "+ /etc/app/sub/b.conf"
        ])
    );
    assert_same_tree(n0, n1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_tells_each_peers_plan_and_every_batch_sent_and_a_dry_run_tells_nothing() {
    // Batches of two operations at most, so that a push of five files takes three.
    let group = start_with(GroupSpec {
        settings: "limits {\n  max_batch_entries = 2\n}\n".into(),
        ..spec(3)
    })
    .await;
    let n0 = &group.nodes[0];
    for (i, text) in ["a", "bb", "ccc", "dddd", "eeeee"].iter().enumerate() {
        write(n0, &format!("/etc/app/f{i}.conf"), text);
    }
    let events = Arc::new(std::sync::Mutex::new(Vec::<ProgressEvent>::new()));
    let into = events.clone();
    let dry = Options {
        dry_run: true,
        progress: Progress::to(move |e| into.lock().unwrap().push(e.clone())),
        ..Options::default()
    };
    let engine = engine(&group, 0).await;
    let report = engine.run(&dry, |_| {}).await;
    assert!(report.has_changes());
    assert_eq!(
        *events.lock().unwrap(),
        Vec::new(),
        "a dry run sends nothing"
    );

    let real = Options {
        dry_run: false,
        ..dry
    };
    let report = engine.run(&real, |_| {}).await;
    assert_clean(&report);
    let events = events.lock().unwrap().clone();
    for node in &group.nodes[1..] {
        let peer = peer_report(&report, node);
        let told: Vec<&ProgressEvent> = events.iter().filter(|e| e.peer() == peer.peer).collect();
        assert_eq!(peer.changes.len(), 5, "{peer:#?}");
        assert_eq!(
            told.first(),
            Some(&&ProgressEvent::Planned {
                peer: peer.peer.clone(),
                operations: 5,
                bytes: 15,
            }),
            "the plan comes first: {told:#?}"
        );
        let batches: Vec<usize> = told
            .iter()
            .filter_map(|e| match e {
                ProgressEvent::Sent { operations, .. } => Some(*operations),
                ProgressEvent::Planned { .. } => None,
            })
            .collect();
        assert_eq!(batches, vec![2, 2, 1], "one event per batch: {told:#?}");
        let mut tally = PeerTally::default();
        told.iter().for_each(|e| tally.count(e));
        assert_eq!(
            tally,
            PeerTally {
                planned_operations: 5,
                planned_bytes: 15,
                sent_operations: 5,
                sent_bytes: 15,
            }
        );
        assert_same_tree(n0, node);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_over_the_whole_tree_lists_only_the_directories_whose_digests_differ() {
    // Two directories; after a first sync, one file changes in one of them and the other
    // is left alone: the run compares digests, lists the changed directory only, and
    // must not take the other one's entries (not listed by the peer) for additions.
    let group = start_with(GroupSpec {
        directories: vec![("/etc/app".into(), vec![]), ("/etc/web".into(), vec![])],
        ..spec(2)
    })
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/a.conf", "a\n");
    write(n0, "/etc/web/w.conf", "w\n");
    write(n0, "/etc/web/x.conf", "x\n");
    assert_clean(&sync(&group, 0).await);
    assert_eq!(lines(&dry_run(&group, 0).await, n1), Vec::<String>::new());

    write(n0, "/etc/web/w.conf", "changed\n");
    let report = dry_run(&group, 0).await;
    assert_eq!(
        lines(&report, n1),
        [format!("[M] {} /etc/web/w.conf updated", n1.addr)]
    );
    // And with both directories differing, both are listed.
    remove(n1, "/etc/app/a.conf");
    let report = dry_run(&group, 0).await;
    assert_eq!(
        sorted(
            &lines(&report, n1)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        ),
        sorted(&[
            &format!("[+] {} /etc/app/a.conf added", n1.addr),
            &format!("[M] {} /etc/web/w.conf updated", n1.addr),
        ]),
    );
    let report = sync(&group, 0).await;
    assert_clean(&report);
    assert_same_tree(n0, n1);
    assert_eq!(lines(&dry_run(&group, 0).await, n1), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_on_the_peer_where_the_sender_has_a_directory_tree_is_replaced_by_it() {
    // Regression: the receiver refused the whole batch ("cannot inspect /etc/app/c: Not a
    // directory") for the paths two levels below a file the same batch deletes, so the
    // group stayed divergent for good.
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/c/conf.d/0.conf", "a\n");
    write(n0, "/etc/app/c/1.conf", "b\n");
    write(n1, "/etc/app/c", "a file\n");
    assert_clean(&sync(&group, 0).await);
    assert_same_tree(n0, n1);
}
