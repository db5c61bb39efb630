//! What a directory's configuration asks for around a change, on real daemons: a batch
//! its `validate` command refuses is put back byte for byte and reported as rejected;
//! `on_change` runs once per batch with the batch's paths, on every receiving node, and
//! the sender hears how it ended; backups keep the versions a sync replaced.

use std::path::Path;

use crate::common::*;
use gosyncd::group::LocalGroup;
use gosyncd::sync::ChangeStatus;

/// The same files on every node.
fn same_everywhere(group: &LocalGroup, files: &[(&str, &str)]) {
    for node in &group.nodes {
        for (path, content) in files {
            write(node, path, content);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_fails_validation_is_put_back_on_that_node_and_reported_as_rejected() {
    let mut group = start(3).await;
    same_everywhere(
        &group,
        &[
            ("/etc/app/app.cfg", "listen 80\n"),
            ("/etc/app/other.cfg", "kept\n"),
            ("/etc/app/sub/deep.cfg", "deep\n"),
        ],
    );
    // Node 1 validates what it receives: no BROKEN line in app.cfg. Node 2 does not.
    with_directory_lines(
        &mut group,
        1,
        r#"  validate = "if grep -q BROKEN \"$GOSYNCD_DIRECTORY/app.cfg\"; then echo 'app.cfg: unknown directive BROKEN' >&2; exit 1; fi""#,
    )
    .await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    let before = without_times(&snapshot(&n1.path("/etc/app")));

    write(n0, "/etc/app/app.cfg", "listen 80\nBROKEN\n");
    write(n0, "/etc/app/new.cfg", "new\n");
    write(n0, "/etc/app/newdir/inner.cfg", "inner\n");
    remove(n0, "/etc/app/other.cfg");
    remove(n0, "/etc/app/sub");
    let report = sync(&group, 0).await;

    // Node 1: every change put back, byte for byte, and each reported as rejected.
    assert_eq!(
        without_times(&snapshot(&n1.path("/etc/app"))),
        before,
        "node 1 does not hold exactly what it held before the push"
    );
    let rejected = peer_report(&report, n1);
    assert!(!rejected.changes.is_empty());
    for change in &rejected.changes {
        match &change.status {
            ChangeStatus::Rejected(reason) => assert_eq!(
                &**reason,
                "validation failed: app.cfg: unknown directive BROKEN",
                "{}",
                change.line(&rejected.peer)
            ),
            other => panic!("{}: {other:?}", change.path),
        }
    }
    assert!(lines(&report, n1).iter().any(|l| l.ends_with(
        "/etc/app/app.cfg rejected: validation failed: app.cfg: unknown directive BROKEN"
    )));
    assert!(report.failed());
    assert_eq!(n1.stats().unwrap().rejected, rejected.changes.len() as u64);
    assert_eq!(
        temp_files_below(&n1.path("/etc/app")),
        Vec::<std::path::PathBuf>::new()
    );

    // Node 2, which does not validate, took the push.
    assert_same_tree(n0, n2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_change_runs_once_per_batch_with_its_paths_on_every_receiving_node() {
    let mut group = start(3).await;
    let logs: Vec<std::path::PathBuf> = (0..3)
        .map(|i| group.path().join(format!("node{}-runs.log", i + 1)))
        .collect();
    let marker = group.path().join("reload-fails");
    for (i, log) in logs.iter().enumerate().skip(1) {
        let log = log.display();
        let fail = marker.display();
        with_directory_lines(
            &mut group,
            i,
            &format!(
                r#"  on_change = [
    "{{ echo RUN; printf '%s\n' \"$GOSYNCD_CHANGED\"; }} >> {log}",
    "if [ -e {fail} ]; then echo 'reload failed: bad config' >&2; exit 3; fi"
  ]"#
            ),
        )
        .await;
    }
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    for name in ["a.cfg", "b.cfg", "c/d.cfg"] {
        write(n0, &format!("/etc/app/{name}"), name);
    }
    let report = sync(&group, 0).await;
    assert!(!report.failed(), "{report:#?}");
    for (node, log) in [(n1, &logs[1]), (n2, &logs[2])] {
        let runs = std::fs::read_to_string(log).unwrap();
        let mut lines: Vec<&str> = runs.lines().collect();
        assert_eq!(lines.remove(0), "RUN");
        lines.sort();
        let mut expected: Vec<String> = [
            "/etc/app/a.cfg",
            "/etc/app/b.cfg",
            "/etc/app/c",
            "/etc/app/c/d.cfg",
        ]
        .iter()
        .map(|p| node.path(p).display().to_string())
        .collect();
        expected.sort();
        assert_eq!(
            lines, expected,
            "one run, with the batch's paths, on {}",
            node.addr
        );
        let told = &peer_report(&report, node).actions;
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(told
            .iter()
            .all(|a| a.report.success && a.to_string().starts_with("[*] ")));
    }
    assert!(!logs[0].exists(), "the sender ran nothing");

    // A failing command is reported to the sender with its exit status, in words, and
    // the line that explains.
    std::fs::write(&marker, "").unwrap();
    write(n0, "/etc/app/a.cfg", "a, again");
    let report = sync(&group, 0).await;
    assert!(report.failed());
    for node in [n1, n2] {
        let failed: Vec<String> = peer_report(&report, node)
            .actions
            .iter()
            .filter(|a| !a.report.success)
            .map(|a| a.to_string())
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(
            failed[0].contains("failed (exited with status 3): reload failed: bad config"),
            "{failed:?}"
        );
        // The change itself stays: on_change runs after it was accepted.
        assert_eq!(read(node, "/etc/app/a.cfg"), b"a, again");
        assert_eq!(
            std::fs::read_to_string(&logs[if node.addr == n1.addr { 1 } else { 2 }])
                .unwrap()
                .matches("RUN")
                .count(),
            2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_keep_the_versions_a_sync_replaced_or_deleted_and_prune_the_oldest() {
    let mut group = start(2).await;
    let store = group.path().join("backups");
    with_directory_lines(
        &mut group,
        1,
        &format!(
            "  backup {{\n    directory = \"{}\"\n    keep = 2\n  }}",
            store.display()
        ),
    )
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let backup = n1.config.directories[0]
        .backup
        .clone()
        .expect("node 1 keeps backups");
    for version in ["v1\n", "v2\n", "v3\n", "v4\n"] {
        write(n0, "/etc/app/app.cfg", version);
        assert_clean(&sync(&group, 0).await);
    }
    let kept = gosyncd::backup::list(&backup, "/etc/app").unwrap();
    let contents: Vec<Vec<u8>> = kept
        .iter()
        .map(|v| gosyncd::backup::content(&backup, v).unwrap())
        .collect();
    assert_eq!(
        contents,
        [b"v2\n".to_vec(), b"v3\n".to_vec()],
        "v1 pruned, v4 live"
    );
    assert!(
        kept[1].reason.starts_with("replaced by a sync from "),
        "{:?}",
        kept[1]
    );

    remove(n0, "/etc/app/app.cfg");
    write(
        n0,
        "/etc/app/keep.cfg",
        "so that the directory is not emptied",
    );
    assert_clean(&sync(&group, 0).await);
    let kept = gosyncd::backup::list(&backup, "/etc/app/app.cfg").unwrap();
    assert_eq!(kept.len(), 2);
    assert_eq!(
        gosyncd::backup::content(&backup, &kept[1]).unwrap(),
        b"v4\n"
    );
    assert!(
        kept[1].reason.starts_with("deleted by a sync from "),
        "{:?}",
        kept[1]
    );
    // Backups are private to the node.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(
        Path::new(&store)
            .join("etc/app/app.cfg")
            .join(&kept[1].version),
    )
    .unwrap()
    .permissions()
    .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_the_line_that_explains_and_how_the_command_ended_in_words() {
    // Regression: `haproxy -c` was reported by its banner, its first line of stderr, and
    // `haproxy -q -c` as "exited with Some(1)"; a signal as "killed".
    let mut group = start(2).await;
    same_everywhere(&group, &[("/etc/app/app.cfg", "listen 80\n")]);
    let quiet = group.path().join("quiet");
    let quiet = quiet.display();
    with_directory_lines(
        &mut group,
        1,
        &format!(
            r#"  validate = "if [ -e {quiet} ]; then exit 1; fi; grep -q BROKEN \"$GOSYNCD_DIRECTORY/app.cfg\" || exit 0; echo '[NOTICE]   (4711) : haproxy version is 2.6.12-1' >&2; echo '[ALERT]    (4711) : config : parsing [haproxy.cfg:2] : unknown keyword BROKEN' >&2; echo '[ALERT]    (4711) : config : Fatal errors found in configuration.' >&2; exit 1"
  on_change = "kill -9 $$""#
        ),
    )
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let reasons = |report: &gosyncd::sync::Report| -> Vec<String> {
        peer_report(report, n1)
            .changes
            .iter()
            .map(|c| match &c.status {
                ChangeStatus::Rejected(reason) => reason.to_string(),
                other => panic!("{}: {other:?}", c.path),
            })
            .collect()
    };

    write(n0, "/etc/app/app.cfg", "listen 80\nBROKEN\n");
    let report = sync(&group, 0).await;
    assert_eq!(
        reasons(&report),
        ["validation failed: [ALERT]    (4711) : config : parsing [haproxy.cfg:2] : unknown keyword BROKEN"]
    );

    std::fs::write(group.path().join("quiet"), "").unwrap();
    write(n0, "/etc/app/app.cfg", "listen 80\nquiet\n");
    let report = sync(&group, 0).await;
    let command = format!("if [ -e {quiet} ]; then exit 1; fi;");
    let reason = &reasons(&report)[0];
    assert!(
        reason.starts_with(&format!("validation failed: `{command}"))
            && reason.ends_with("` exited with status 1"),
        "{reason}"
    );

    std::fs::remove_file(group.path().join("quiet")).unwrap();
    write(n0, "/etc/app/app.cfg", "listen 8080\n");
    let report = sync(&group, 0).await;
    let told: Vec<String> = peer_report(&report, n1)
        .actions
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        told,
        [format!(
            "[!] {} /etc/app on_change \"kill -9 $$\" failed (killed by signal 9 (SIGKILL))",
            n1.addr
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_own_tree_fails_validation_pushes_nothing_of_it() {
    let mut group = start(2).await;
    same_everywhere(&group, &[("/etc/app/app.cfg", "listen 80\n")]);
    with_directory_lines(
        &mut group,
        0,
        r#"  validate = "! grep -q BROKEN \"$GOSYNCD_DIRECTORY/app.cfg\" || { echo 'app.cfg: BROKEN is not a directive' >&2; exit 1; }""#,
    )
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let before = snapshot(&n1.path("/etc/app"));
    write(n0, "/etc/app/app.cfg", "BROKEN\n");
    write(n0, "/etc/app/new.cfg", "new\n");

    let run = gosyncd(config_args(&n0.config_path, &["sync"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr.contains(
            "refusing to push /etc/app: validation failed on this node: app.cfg: BROKEN is not a directive"
        ),
        "{run:#?}"
    );
    assert!(run.change_lines().is_empty(), "{run:#?}");
    assert_eq!(
        snapshot(&n1.path("/etc/app")),
        before,
        "the peer was changed"
    );

    // Fixed, it goes.
    write(n0, "/etc/app/app.cfg", "listen 8080\n");
    let run = gosyncd(config_args(&n0.config_path, &["sync"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_same_tree(n0, n1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_edits_are_validated_before_the_watcher_pushes_them_and_run_on_change() {
    let mut group = start_with(gosyncd::group::GroupSpec {
        watch: true,
        ..spec(2)
    })
    .await;
    let log = group.path().join("local-runs.log");
    with_directory_lines(
        &mut group,
        0,
        &format!(
            r#"  validate = "! grep -q BROKEN \"$GOSYNCD_DIRECTORY/app.cfg\" 2>/dev/null"
  on_change = "printf '%s\n' \"$GOSYNCD_CHANGED\" >> {}""#,
            log.display()
        ),
    )
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let wait = std::time::Duration::from_secs(10);

    write(n0, "/etc/app/app.cfg", "listen 80\n");
    eventually("the first version on node 1", wait, || {
        exists(n1, "/etc/app/app.cfg") && read(n1, "/etc/app/app.cfg") == b"listen 80\n"
    })
    .await;
    let app = n0.path("/etc/app/app.cfg").display().to_string();
    eventually("on_change run for the local edit", wait, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().any(|x| x == app))
    })
    .await;

    // A broken save is not pushed: node 1 keeps the good version.
    write(n0, "/etc/app/app.cfg", "listen 80\nBROKEN\n");
    write(n0, "/etc/app/sentinel.cfg", "after the broken save\n");
    let quiet = n0.config.debounce * 4 + std::time::Duration::from_millis(500);
    holds_for(
        "a change that fails validation is not pushed",
        quiet,
        || read(n1, "/etc/app/app.cfg") == b"listen 80\n",
    )
    .await;
    assert!(
        !exists(n1, "/etc/app/sentinel.cfg"),
        "the directory's other changes wait too"
    );

    // Fixed: the next save goes, with everything that waited.
    write(n0, "/etc/app/app.cfg", "listen 8080\n");
    eventually("the fixed tree on node 1", wait, || {
        read(n1, "/etc/app/app.cfg") == b"listen 8080\n" && exists(n1, "/etc/app/sentinel.cfg")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_validation_never_ended_is_put_back_when_the_daemon_starts_again() {
    // Node 1 is the real binary, killed with SIGKILL while its `validate` command runs:
    // the batch is written, not yet accepted. Node 0 (no daemon) pushes to it.
    let mut group = LocalGroup::build(&spec(2)).await.unwrap();
    group.release(0);
    group.release(1);
    let hold = group.path().join("hold-validation");
    let started = group.path().join("validation-started");
    // The command holds only the validation of the pushed batch (conf.d/new.cfg exists
    // only once it is written), not the one of the daemon's start-up comparison, which
    // may run late on a busy machine.
    let validated = config_variant(&group, 1, "node2-validated.hcl", |text| {
        text.replace(
            "  exclude = []",
            &format!(
                "  exclude = []\n  validate = \"if [ -e {} ] && [ -e \\\"$GOSYNCD_DIRECTORY/conf.d/new.cfg\\\" ]; then touch {}; sleep 20; fi\"",
                hold.display(),
                started.display()
            ),
        )
    });
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let direct = config_variant(&group, 0, "node1-direct.hcl", |text| {
        with_remotes(&text, &[n1.addr.to_string()])
    });
    for node in [n0, n1] {
        write(node, "/etc/app/app.cfg", "listen 80\n");
        write(node, "/etc/app/other.cfg", "kept\n");
    }
    let before = without_times(&snapshot(&n1.path("/etc/app")));
    let probe = peer(&tls_of(n1), n1.addr);
    let log = |run: usize| group.path().join(format!("node2-validated-{run}.log"));
    let mut daemon = DaemonProcess::spawn(&validated, log(0));
    daemon.wait_ready(&probe).await;

    write(n0, "/etc/app/app.cfg", "listen 8080\n");
    write(n0, "/etc/app/conf.d/new.cfg", "new\n");
    remove(n0, "/etc/app/other.cfg");
    std::fs::write(&hold, "").unwrap();
    let engine = engine_for(&direct, None).await;
    let push = tokio::spawn(async move { run(&engine, &[], false).await });
    eventually_showing(
        "validation started",
        std::time::Duration::from_secs(15),
        || started.exists(),
        || daemon.log(),
    )
    .await;
    // Written and waiting for its validation: then killed.
    assert_eq!(
        read(n1, "/etc/app/app.cfg"),
        b"listen 8080\n",
        "validation started before the batch was written:\n{}",
        daemon.log()
    );
    daemon.child.kill().unwrap();
    daemon.wait_exit(std::time::Duration::from_secs(10)).await;
    let report = push.await.unwrap();
    assert!(report.failed(), "{report:#?}");

    // Started again: the batch is put back, byte for byte, and nothing temporary is left.
    std::fs::remove_file(&hold).unwrap();
    let mut daemon = DaemonProcess::spawn(&validated, log(1));
    daemon.wait_ready(&probe).await;
    assert_eq!(
        without_times(&snapshot(&n1.path("/etc/app"))),
        before,
        "node 2 does not hold what it held before the push:\n{}",
        daemon.log()
    );
    assert_eq!(
        temp_files_below(&n1.path("/etc/app")),
        Vec::<std::path::PathBuf>::new()
    );
    daemon.wait_for_log("its changes were put back").await;
    assert!(
        daemon.log().contains("/etc/app/app.cfg"),
        "{}",
        daemon.log()
    );

    // The next push is validated and accepted.
    let report = run(&engine_for(&direct, None).await, &[], false).await;
    assert_clean(&report);
    assert_same_tree(n0, n1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_do_not_inherit_the_variables_systemd_gives_the_daemon() {
    // Regression: `validate` and `on_change` commands inherited NOTIFY_SOCKET, with which
    // they could tell systemd that the daemon was ready or stopping. Node 1 is the real
    // binary, started as systemd starts a `Type=notify` service; node 0 pushes to it.
    let mut group = LocalGroup::build(&spec(2)).await.unwrap();
    group.release(0);
    group.release(1);
    let seen_by = |command: &str| group.path().join(format!("env-of-{command}"));
    let (validate_env, on_change_env) = (seen_by("validate"), seen_by("on_change"));
    let config = config_variant(&group, 1, "node2-env.hcl", |text| {
        text.replace(
            "  exclude = []",
            &format!(
                "  exclude = []\n  validate = \"env > {}\"\n  on_change = \"env > {}\"",
                validate_env.display(),
                on_change_env.display()
            ),
        )
    });
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let direct = config_variant(&group, 0, "node1-direct.hcl", |text| {
        with_remotes(&text, &[n1.addr.to_string()])
    });
    let socket_path = group.path().join("notify.sock");
    let _notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let systemd = [
        format!("NOTIFY_SOCKET={}", socket_path.display()),
        "LISTEN_FDS=1".to_string(),
        "LISTEN_PID=1".to_string(),
        "LISTEN_FDNAMES=gosyncd".to_string(),
        "WATCHDOG_USEC=60000000".to_string(),
        "WATCHDOG_PID=1".to_string(),
    ];
    let mut daemon =
        DaemonProcess::spawn_with("env", &systemd, &config, group.path().join("n2.log"));
    daemon.wait_ready(&peer(&tls_of(n1), n1.addr)).await;

    write(n0, "/etc/app/app.cfg", "listen 80\n");
    let report = run(&engine_for(&direct, None).await, &[], false).await;
    assert_clean(&report);
    assert_eq!(read(n1, "/etc/app/app.cfg"), b"listen 80\n");
    for seen in [&validate_env, &on_change_env] {
        let env = std::fs::read_to_string(seen)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", seen.display(), daemon.log()));
        assert!(
            env.lines().any(|l| l.starts_with("GOSYNCD_DIRECTORY=")) && env.contains("PATH="),
            "the command's own variables and the daemon's others are there:\n{env}"
        );
        let leaked: Vec<&str> = env
            .lines()
            .filter(|l| {
                ["NOTIFY_", "LISTEN_", "WATCHDOG_"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect();
        assert!(leaked.is_empty(), "{}: {leaked:?}", seen.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_of_a_batch_of_thousands_of_paths_run_and_are_given_every_path() {
    // 4,040 paths as they are on node 1 are about 200 KiB, more than GOSYNCD_CHANGED may
    // hold: Linux refuses to start a program with an environment string over 128 KiB,
    // and the receiver's commands did not run at all (its `validate` rejected the batch).
    let mut group = start(2).await;
    let runs = group.path().join("on-change-runs");
    with_directory_lines(
        &mut group,
        1,
        &format!(
            "  validate = \"test -s \\\"$GOSYNCD_CHANGED_FILE\\\"\"\n  on_change = \"echo \\\"[$GOSYNCD_CHANGED]\\\" $(wc -l < \\\"$GOSYNCD_CHANGED_FILE\\\") >> {}\"",
            runs.display()
        ),
    )
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    for i in 0..4_000 {
        write(
            n0,
            &format!("/etc/app/d{:02}/f{i:04}.cfg", i / 100),
            format!("{i}\n"),
        );
    }

    let run = gosyncd(config_args(&n0.config_path, &["sync"])).await;
    let tail: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.ends_with(" added"))
        .collect();
    assert_eq!(run.code, Some(0), "{}\n{tail:#?}", run.stderr);
    assert_same_tree(n0, n1);
    let lines = std::fs::read_to_string(&runs).unwrap();
    assert_eq!(
        lines, "[] 4040\n",
        "node 1's on_change runs once, given every path in its file"
    );
}
