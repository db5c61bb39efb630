//! The binary against a live group: exit codes, a peer that is down, this node listed
//! among its own remotes (by its address or behind an alias), and `check-config`.

use crate::common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_that_is_down_fails_alone_and_the_others_are_synchronised() {
    let mut group = start(3).await;
    write(&group.nodes[0], "/etc/app/a.conf", "a");
    write(&group.nodes[0], "/etc/app/sub/b.conf", "b");
    group.stop(2).await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    let down_before = snapshot(&n2.path("/etc/app"));

    let report = sync(&group, 0).await;
    assert!(report.failed());
    let live = peer_report(&report, n1);
    assert!(live.error.is_none(), "{report:#?}");
    assert_eq!(live.changes.len(), 3, "{report:#?}");
    assert_same_tree(n0, n1);
    let down = peer_report(&report, n2);
    let error = down.error.as_deref().expect("the stopped peer failed");
    assert!(error.contains("unreachable"), "{error}");

    // The binary: the live peer gets the next change, the exit code says a peer failed.
    write(n0, "/etc/app/c.conf", "c");
    let run = gosyncd(config_args(&n0.config_path, &["sync"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert_eq!(
        run.change_lines(),
        [format!("[+] {} /etc/app/c.conf added", n1.addr)]
    );
    assert!(run.stderr.contains(&n2.addr.to_string()), "{run:#?}");
    assert_eq!(read(n1, "/etc/app/c.conf"), b"c");
    assert_eq!(snapshot(&n2.path("/etc/app")), down_before);

    // Once it is back, a run brings it up to date.
    group.restart(2).await.unwrap();
    let run = gosyncd(config_args(&group.nodes[0].config_path, &["sync"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_same_tree(&group.nodes[0], &group.nodes[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_exit_code_is_1_when_changes_are_pending_and_0_when_not() {
    let mut group = start(3).await;
    let config = group.nodes[0].config_path.clone();
    write(&group.nodes[0], "/etc/app/a.conf", "a");

    let pending = gosyncd(config_args(&config, &["sync", "-dry", "--exit-code"])).await;
    assert_eq!(pending.code, Some(1), "{pending:#?}");
    assert_eq!(pending.change_lines().len(), 2, "{pending:#?}");
    assert!(!exists(&group.nodes[1], "/etc/app/a.conf"));
    // `state` is the same dry run.
    let state = gosyncd(config_args(&config, &["state", "--exit-code"])).await;
    assert_eq!(state.code, Some(1), "{state:#?}");
    // Without --exit-code, pending changes are not an error.
    let plain = gosyncd(config_args(&config, &["sync", "-dry"])).await;
    assert_eq!(plain.code, Some(0), "{plain:#?}");

    let sync = gosyncd(config_args(&config, &["sync"])).await;
    assert_eq!(sync.code, Some(0), "{sync:#?}");
    let clean = gosyncd(config_args(&config, &["sync", "-dry", "--exit-code"])).await;
    assert_eq!(clean.code, Some(0), "{clean:#?}");
    assert!(clean.change_lines().is_empty(), "{clean:#?}");

    // A failure wins over "pending": an unreachable peer makes it 2.
    write(&group.nodes[0], "/etc/app/b.conf", "b");
    group.stop(2).await;
    let failed = gosyncd(config_args(&config, &["sync", "-dry", "--exit-code"])).await;
    assert_eq!(failed.code, Some(2), "{failed:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_never_treats_this_node_as_a_peer() {
    let group = start(3).await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    assert!(
        n0.config
            .remotes
            .iter()
            .any(|r| r.label == n0.addr.to_string()),
        "the config is expected to list this node itself"
    );
    write(n0, "/etc/app/a.conf", "a");

    let engine = engine(&group, 0).await;
    let peers: Vec<String> = engine
        .peers()
        .iter()
        .map(|p| p.label().to_string())
        .collect();
    assert_eq!(peers, [n1.addr.to_string(), n2.addr.to_string()]);
    let report = run(&engine, &[], false).await;
    assert_clean(&report);
    let reported: Vec<&str> = report.peers.iter().map(|p| p.peer.as_str()).collect();
    assert_eq!(reported, [n1.addr.to_string(), n2.addr.to_string()]);

    write(n0, "/etc/app/b.conf", "b");
    let run = gosyncd(config_args(&n0.config_path, &["sync"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let own = n0.addr.to_string();
    assert!(
        !run.stdout.contains(&own) && !run.stderr.contains(&own),
        "{run:#?}"
    );
    assert_eq!(run.change_lines().len(), 2, "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_node_behind_an_alias_is_recognised_by_its_identity() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    // Another port on node 0's address leading to node 0: an alias the address check
    // cannot see through (as a NAT or a port forward would be).
    let alias = forwarder(n0.addr.ip(), n0.addr).await;
    let variant = config_variant(&group, 0, "with-alias.hcl", |text| {
        with_remotes(
            &text,
            &[
                n0.addr.to_string(),
                alias.addr.to_string(),
                n1.addr.to_string(),
            ],
        )
    });
    write(n0, "/etc/app/a.conf", "a");

    let report = run(&engine_for(&variant, n0.node_id()).await, &[], false).await;
    assert_clean(&report);
    let labels: Vec<&str> = report.peers.iter().map(|p| p.peer.as_str()).collect();
    assert_eq!(labels, [alias.addr.to_string(), n1.addr.to_string()]);
    let aliased = &report.peers[0];
    assert!(aliased.skipped.is_some(), "{report:#?}");
    assert!(aliased.changes.is_empty() && aliased.error.is_none());
    assert_eq!(summary(&report, n1), ["+ /etc/app/a.conf"]);

    // The binary learns this node's identity from the daemon on its bind address.
    write(n0, "/etc/app/b.conf", "b");
    let run = gosyncd(config_args(&variant, &["sync"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(
        run.change_lines(),
        [format!("[+] {} /etc/app/b.conf added", n1.addr)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_a_valid_config_and_names_file_and_key_of_a_broken_one() {
    let group = start(1).await;
    let config = &group.nodes[0].config_path;
    let ok = gosyncd(config_args(config, &["check-config"])).await;
    assert_eq!(ok.code, Some(0), "{ok:#?}");
    assert!(ok.stdout.contains("valid"), "{ok:#?}");

    let no_port = config_variant(&group, 0, "no-port.hcl", |text| {
        with_remotes(&text, &[address().to_string()])
    });
    let run = gosyncd(config_args(&no_port, &["check-config"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    let file = no_port.display().to_string();
    assert!(
        run.stderr.contains(&file)
            && run.stderr.contains("remotes")
            && run.stderr.contains("missing port"),
        "{run:#?}"
    );

    let no_key = config_variant(&group, 0, "no-key.hcl", |text| {
        with_line(&text, "tls_private_key", "tls_private_key = \"absent.key\"")
    });
    let run = gosyncd(config_args(&no_key, &["check-config"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains(&no_key.display().to_string())
            && run.stderr.contains("tls_private_key")
            && run.stderr.contains("absent.key"),
        "{run:#?}"
    );

    let typo = config_variant(&group, 0, "typo.hcl", |text| {
        text.replace("bind_address", "bind_adress")
    });
    let run = gosyncd(config_args(&typo, &["check-config"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains(&typo.display().to_string()) && run.stderr.contains("bind_adress"),
        "{run:#?}"
    );
}

/// Runs `check-config` on `config`: its exit code and everything it printed.
async fn check_config(config: &std::path::Path) -> (Option<i32>, String) {
    let run = gosyncd(config_args(config, &["check-config"])).await;
    (run.code, format!("{}{}", run.stdout, run.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_refuses_setups_that_cannot_work_and_warns_of_those_that_may_not() {
    // Regression: each of these was "valid", exit 0.
    let group = gosyncd::group::LocalGroup::build(&spec(2)).await.unwrap();
    let node = &group.nodes[0];
    let me = node.addr.ip().to_string();
    let ca = group.ca.as_ref().expect("the group has a CA");
    let (code, out) = check_config(&node.config_path).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("valid (1 directories, 2 remotes)"), "{out}");

    // Each case: the config, and what its message must say.
    let another_ca = gosyncd::certs::Authority::new("another CA").unwrap();
    let separately = gosyncd::certs::self_signed(std::slice::from_ref(&me)).unwrap();
    let cases = [
        (
            with_certificate(
                &group,
                0,
                "other-ca",
                another_ca.issue(std::slice::from_ref(&me)).unwrap(),
            ),
            "other-ca.pem is not signed by the CA in tls_ca_certificate".to_string(),
        ),
        (
            with_certificate(&group, 0, "separately", separately),
            "separately.pem is a self-signed (CA) certificate that tls_ca_certificate".to_string(),
        ),
        (
            with_certificate(
                &group,
                0,
                "elsewhere",
                ca.issue(&[address().to_string()]).unwrap(),
            ),
            format!("elsewhere.pem is not valid for {me} (bind_address, this node)"),
        ),
        (
            with_certificate(
                &group,
                0,
                "expired",
                ca.issue_with(std::slice::from_ref(&me), |params| {
                    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
                })
                .unwrap(),
            ),
            "expired.pem expired on 2021-01-01T00:00:00Z".to_string(),
        ),
        (
            config_variant(&group, 0, "swapped.hcl", |text| {
                with_line(&text, "tls_private_key", "tls_private_key = \"node2.key\"")
            }),
            "node2.key is not the key of tls_certificate".to_string(),
        ),
        (
            config_variant(&group, 0, "missing.hcl", |text| {
                text.replace("directory \"/etc/app\"", "directory \"/etc/missing\"")
            }),
            format!(
                "directory \"/etc/missing\": {} does not exist: create it",
                node.path("/etc/missing").display()
            ),
        ),
    ];
    for (config, wanted) in &cases {
        let (code, out) = check_config(config).await;
        assert_eq!(code, Some(2), "{}: {out}", config.display());
        assert!(out.contains(wanted), "{wanted:?} not in:\n{out}");
        assert!(
            out.contains(&config.display().to_string()),
            "the config file is not named:\n{out}"
        );
    }

    // A remote whose name does not resolve now may later: a warning, exit 0.
    let unresolved = config_variant(&group, 0, "unresolved.hcl", |text| {
        let remotes: Vec<String> = group
            .nodes
            .iter()
            .map(|n| n.addr.to_string())
            .chain(["no-such-node.invalid:8080".to_string()])
            .collect();
        with_remotes(&text, &remotes)
    });
    let (code, out) = check_config(&unresolved).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning: remotes entry \"no-such-node.invalid:8080\" does not resolve now")
            && out.contains("valid (1 directories, 3 remotes, 1 warning)"),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------
// The mass-delete guard.

/// `count` files under `/etc/app` on every node of the group, the same everywhere.
fn same_files_everywhere(group: &gosyncd::group::LocalGroup, count: usize) {
    for node in &group.nodes {
        for i in 0..count {
            write(node, &format!("/etc/app/d{}/f{i:02}.conf", i % 3), "kept\n");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_that_would_empty_a_directory_on_the_peers_is_refused_without_force() {
    let group = start(3).await;
    same_files_everywhere(&group, 20);
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    let before = snapshot(&n1.path("/etc/app"));
    // Node 0's directory is emptied (an unmounted volume looks the same).
    for entry in std::fs::read_dir(n0.path("/etc/app")).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }

    for args in [&["sync"][..], &["sync", "-dry"]] {
        let run = gosyncd(config_args(&n0.config_path, args)).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        for peer in [n1, n2] {
            let said = format!("{}{}", run.stdout, run.stderr);
            assert!(
                said.contains(&peer.addr.to_string())
                    && said.contains("refusing to delete 23 of the 23 entries of /etc/app")
                    && said.contains("--force"),
                "{args:?}: {run:#?}"
            );
        }
        assert_eq!(snapshot(&n1.path("/etc/app")), before, "{args:?} deleted");
    }

    let run = gosyncd(config_args(&n0.config_path, &["sync", "--force"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_same_tree(n0, n1);
    assert_same_tree(n0, n2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_more_than_max_delete_share_needs_force_or_a_higher_share() {
    let group = start(2).await;
    same_files_everywhere(&group, 30);
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    // 20 of the peer's 33 entries (30 files, 3 directories) go: more than half.
    for i in 10..30 {
        remove(n0, &format!("/etc/app/d{}/f{i:02}.conf", i % 3));
    }
    let run = gosyncd(config_args(&n0.config_path, &["sync"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr
            .contains("refusing to delete 20 of the 33 entries")
            && run.stderr.contains("max_delete_share is 50%"),
        "{run:#?}"
    );
    assert!(exists(n1, "/etc/app/d1/f10.conf"));

    // An operator who expects such pushes raises the share.
    let variant = config_variant(&group, 0, "node1-share.hcl", |text| {
        format!("max_delete_share = 0.7\n{text}")
    });
    let run = gosyncd(config_args(&variant, &["sync"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_same_tree(n0, n1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_sync_output_is_the_lines_alone_without_progress_or_summary() {
    // Progress and the summary line are for a terminal: a script reading stdout gets
    // exactly the timestamped lines, as before they existed.
    let group = start_with(spec(2)).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/a.conf", "a");
    let line = |stdout: &str| -> Vec<String> {
        stdout
            .lines()
            .map(|l| match l.split_once(": ") {
                // `2026/11/23 12:14:27 +0000: [+] ...`: the date has the form of a date.
                Some((date, rest)) if date.len() == 25 && date.as_bytes()[4] == b'/' => {
                    format!("DATE: {rest}")
                }
                _ => l.to_string(),
            })
            .collect()
    };
    let added = format!("DATE: [+] {} /etc/app/a.conf added", n1.addr);
    let dry = gosyncd(config_args(&n0.config_path, &["sync", "-dry"])).await;
    assert_eq!(dry.code, Some(0), "{dry:#?}");
    assert_eq!(
        line(&dry.stdout),
        ["synchronization dry run".to_string(), added.clone()]
    );
    let run = gosyncd(config_args(&n0.config_path, &["sync"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(line(&run.stdout), [added]);
    for out in [&dry.stderr, &run.stderr] {
        assert!(!out.contains('\r') && !out.contains('\x1b'), "{out:?}");
    }
}

/// Runs `gosyncd ARGS` with debug logging; its exit code, stdout and stderr.
async fn gosyncd_debug(args: Vec<std::ffi::OsString>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_gosyncd"))
            .args(&args)
            .env("RUST_LOG", "gosyncd=debug")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("gosyncd runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_takes_this_nodes_tree_from_its_daemon_when_it_serves_the_same_directories() {
    let mut group = start_with(spec(2)).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/a.conf", "a\n");
    write(n0, "/etc/app/notes.txt", "n\n");
    let changes = |stdout: &str| -> Vec<String> {
        let mut lines: Vec<String> = stdout
            .lines()
            .filter_map(|l| l.split_once(": ").map(|(_, rest)| rest.to_string()))
            .collect();
        lines.sort();
        lines
    };
    let added = |path: &str| format!("[+] {} {path} added", n1.addr);

    // Node 0's daemon serves the directory the command syncs: its levels, and its
    // listing of the levels that differ from the peer's, are used.
    let (code, stdout, stderr) =
        gosyncd_debug(config_args(&n0.config_path, &["sync", "-dry"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("this node's levels that differ, as its daemon knows them"),
        "{stderr}"
    );
    assert_eq!(
        changes(&stdout),
        [added("/etc/app/a.conf"), added("/etc/app/notes.txt")]
    );

    // A command whose config excludes more than the daemon's: it scans on its own, and
    // what it excludes is not synced.
    let variant = config_variant(&group, 0, "node1-excluding.hcl", |text| {
        text.replace("exclude = []", "exclude = [\"*.txt\"]")
    });
    let (code, stdout, stderr) = gosyncd_debug(config_args(&variant, &["sync"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("serves other terms: scanning here"),
        "{stderr}"
    );
    assert_eq!(changes(&stdout), [added("/etc/app/a.conf")]);
    assert!(!exists(n1, "/etc/app/notes.txt"));

    // A peer excluding other names than node 0's daemon: their levels cannot be
    // compared as they are, and node 0's whole tree is taken from its daemon. The
    // peer's excludes still hold: notes.txt is not sent, so nothing is to be done.
    let excluding = config_variant(&group, 1, "node2-excluding.hcl", |text| {
        text.replace("exclude = []", "exclude = [\"*.txt\"]")
    });
    group.nodes[1].config =
        std::sync::Arc::new(gosyncd::config::Config::from_file(&excluding).unwrap());
    group.restart(1).await.unwrap();
    let n0 = &group.nodes[0];
    let (code, stdout, stderr) =
        gosyncd_debug(config_args(&n0.config_path, &["sync", "-dry"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("this node's tree as its daemon knows it"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("this node's levels that differ"),
        "{stderr}"
    );
    assert_eq!(changes(&stdout), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_change_audit_beside_watching_daemons_takes_their_kept_digests_and_still_sees_a_change(
) {
    let group = start_with(gosyncd::group::GroupSpec {
        watch: true,
        ..spec(2)
    })
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/a.conf", "a\n");
    eventually_in(&group, Duration::from_secs(10), "a.conf replicated", || {
        holds(n1, "/etc/app/a.conf", "a\n")
    })
    .await;

    // Converged: the audit is settled by digests alone, this node's from its daemon,
    // without listing either tree.
    let stderr = audit_finds_nothing(&n0.config_path).await;
    assert!(
        stderr.contains("this node's digests as its daemon keeps them"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("this node's tree as its daemon knows it"),
        "{stderr}"
    );

    // A peer's kept answer stays while nothing changes, and a change its watcher sees
    // ends it at once (it would otherwise be kept for half a minute).
    // So do the levels hashed in the same walk.
    let asking = peer_as(n0, n1.addr);
    let app = ["/etc/app".to_string()];
    let before = asking.digests().await.unwrap().digests;
    let levels_before = asking.levels(&app).await.unwrap().digests;
    assert_eq!(asking.digests().await.unwrap().digests, before);
    assert_eq!(asking.levels(&app).await.unwrap().digests, levels_before);
    write(n1, "/etc/app/b.conf", "b\n");
    eventually_async(
        "the peer answers new digests once b.conf is written",
        Duration::from_secs(10),
        || async { asking.digests().await.unwrap().digests != before },
    )
    .await;
    assert_ne!(asking.levels(&app).await.unwrap().digests, levels_before);
    // And the audit still agrees once the edit has reached node 0.
    eventually_in(&group, Duration::from_secs(10), "b.conf replicated", || {
        holds(n0, "/etc/app/b.conf", "b\n")
    })
    .await;
    audit_finds_nothing(&n0.config_path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_of_a_deep_tree_with_one_file_changed_lists_only_its_level() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    for dir in ["a", "a/b", "a/b/c", "d"] {
        for i in 0..3 {
            write(
                n0,
                &format!("/etc/app/{dir}/{i}.conf"),
                format!("{dir} {i}\n"),
            );
        }
    }
    assert_clean(&sync(&group, 0).await);
    write(n0, "/etc/app/a/b/c/1.conf", "changed\n");
    let (code, stdout, stderr) =
        gosyncd_debug(config_args(&n0.config_path, &["sync", "-dry"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once(": [").map(|(_, rest)| rest))
        .collect();
    assert_eq!(
        lines,
        [format!("M] {} /etc/app/a/b/c/1.conf updated", n1.addr)]
    );
    assert!(
        stderr.contains("digests differ: listing where whole=[] levels=1"),
        "{stderr}"
    );
    // Node 0's daemon answered its levels too, and listed the one level that differs:
    // not its whole tree.
    assert!(
        stderr.contains("this node's levels that differ, as its daemon knows them"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("this node's tree as its daemon knows it"),
        "{stderr}"
    );

    // The real sync pushes that one file, and the group agrees again.
    let (code, stdout, stderr) = gosyncd_debug(config_args(&n0.config_path, &["sync"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("[M] {} /etc/app/a/b/c/1.conf updated", n1.addr)),
        "{stdout}"
    );
    assert!(holds(n1, "/etc/app/a/b/c/1.conf", "changed\n"));
    audit_finds_nothing(&n0.config_path).await;
}

/// Runs `sync -dry` at debug level with `config`, checks that it succeeds and finds
/// nothing to change, and returns its log.
async fn audit_finds_nothing(config: &std::path::Path) -> String {
    let (code, stdout, stderr) = gosyncd_debug(config_args(config, &["sync", "-dry"])).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stdout.contains("[+]") && !stdout.contains("[M]") && !stdout.contains("[-]"),
        "{stdout}"
    );
    stderr
}
