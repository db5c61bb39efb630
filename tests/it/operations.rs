//! Seeing a running group: the Prometheus endpoint, and what a daemon's status route
//! says of each of its peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use gosyncd::config::Config;
use gosyncd::group::GroupSpec;

/// Checks the classic text format as `promtool check metrics` does for what it reports
/// first: every sample belongs to a family with a help text and a type of its name.
fn assert_classic_format(text: &str) {
    let described = |kind: &str, name: &str| {
        text.lines()
            .any(|l| l.starts_with(&format!("# {kind} {name} ")))
    };
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(described("HELP", name), "no help text for {name}:\n{text}");
        assert!(described("TYPE", name), "no type for {name}:\n{text}");
    }
    assert!(!text.contains("# EOF"), "{text}");
}

/// The value of the sample named exactly `name` (with its labels), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_serves_the_text_format_and_its_counters_move() {
    let mut group = start_with(GroupSpec {
        watch: true,
        ..spec(2)
    })
    .await;
    let (m0, m1): (SocketAddr, SocketAddr) = (
        SocketAddr::new(address(), 19105),
        SocketAddr::new(address(), 19105),
    );
    with_line_on_top(&mut group, 0, &format!("metrics_address = \"{m0}\"")).await;
    with_line_on_top(&mut group, 1, &format!("metrics_address = \"{m1}\"")).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let peer = n1.addr.to_string();

    let before = scrape(m1).await;
    assert_eq!(
        sample(&before, "gosyncd_apply_requests_total"),
        Some(0.0),
        "{before}"
    );
    assert!(
        before.contains("# TYPE gosyncd_applied_operations_total counter"),
        "{before}"
    );
    assert!(before.contains("gosyncd_build_info{version=\""), "{before}");

    write(n0, "/etc/app/a.cfg", "metered\n");
    let pushes = format!("gosyncd_pushes_total{{peer=\"{peer}\"}}");
    eventually_async(
        "a.cfg on node 1, and one push counted",
        Duration::from_secs(10),
        || async {
            let text = scrape(m0).await;
            (exists(n1, "/etc/app/a.cfg") && sample(&text, &pushes) == Some(1.0))
                .then_some(())
                .ok_or(text)
        },
    )
    .await;
    let sender = scrape(m0).await;
    let receiver = scrape(m1).await;
    let at = |text: &str, name: &str| {
        sample(text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert!(
        at(
            &sender,
            &format!("gosyncd_sent_bytes_total{{peer=\"{peer}\"}}")
        ) > 8.0
    );
    assert_eq!(
        at(
            &sender,
            &format!("gosyncd_pending_changes{{peer=\"{peer}\"}}")
        ),
        0.0
    );
    assert_eq!(
        at(
            &sender,
            &format!("gosyncd_push_failures_total{{peer=\"{peer}\"}}")
        ),
        0.0
    );
    let last = at(
        &sender,
        &format!("gosyncd_last_success_timestamp_seconds{{peer=\"{peer}\"}}"),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 60.0, "{last} vs {now}");
    assert_eq!(at(&receiver, "gosyncd_apply_requests_total"), 1.0);
    assert_eq!(at(&receiver, "gosyncd_apply_requests_busy_total"), 0.0);
    assert_eq!(at(&receiver, "gosyncd_applied_operations_total"), 1.0);
    assert!(at(&receiver, "gosyncd_received_bytes_total") > 8.0);

    // The status route says the same of the peer.
    let of_node_1 = peer_as(n0, n1.addr).status().await.unwrap();
    let toward_0 = of_node_1
        .peers
        .iter()
        .find(|p| p.peer == n0.addr.to_string())
        .unwrap();
    assert_eq!(toward_0.pushes, 0, "node 1 pushed nothing back");
    let of_node_0 = peer_as(n1, n0.addr).status().await.unwrap();
    let toward_1 = of_node_0.peers.iter().find(|p| p.peer == peer).unwrap();
    assert_eq!(
        (toward_1.pushes, toward_1.failures, toward_1.pending),
        (1, 0, 0)
    );
    assert!(toward_1.last_success_unix.is_some() && toward_1.last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_stopped_peer_and_a_drifted_one_and_its_exit_code_says_so() {
    let mut group = start_with(GroupSpec {
        watch: true,
        ..spec(3)
    })
    .await;
    let config = group.nodes[0].config_path.clone();
    let (a1, a2) = (
        group.nodes[1].addr.to_string(),
        group.nodes[2].addr.to_string(),
    );

    let run = gosyncd(config_args(&config, &["status"])).await;
    assert_eq!(run.code, Some(0), "all in sync: {run:#?}");
    assert!(run.stdout.starts_with("PEER"), "{run:#?}");

    // Node 2 drifts (changed while its watcher was stopped), then node 1 stops.
    group.stop(2).await;
    write(&group.nodes[2], "/etc/app/only-on-2.cfg", "drift\n");
    group.restart(2).await.unwrap();
    let run = gosyncd(config_args(&config, &["status", "--format", "json"])).await;
    assert_eq!(run.code, Some(1), "a drifted peer: {run:#?}");
    let peers: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let summary = peers.last().unwrap();
    assert_eq!(summary["type"], "status_summary", "{peers:?}");
    assert_eq!(
        (&summary["peers"], &summary["converged"], &summary["code"]),
        (
            &serde_json::json!(2),
            &serde_json::json!(false),
            &serde_json::json!(1)
        ),
        "{peers:?}"
    );
    let of = |addr: &str| {
        peers
            .iter()
            .find(|p| p["type"] == "peer" && p["peer"] == addr)
            .unwrap_or_else(|| panic!("{addr} not in {peers:?}"))
            .clone()
    };
    assert_eq!(of(&a2)["drift"], 1, "{peers:?}");
    assert_eq!(of(&a2)["reachable"], true);
    assert_eq!(of(&a1)["drift"], 0);
    assert!(of(&a1)["latency_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert_eq!(
        of(&a1)["pending"],
        0,
        "this node's daemon answered: {peers:?}"
    );

    group.stop(1).await;
    let run = gosyncd(config_args(&config, &["status"])).await;
    assert_eq!(run.code, Some(2), "a stopped peer: {run:#?}");
    let row = run
        .stdout
        .lines()
        .find(|l| l.starts_with(&a1))
        .unwrap_or_else(|| panic!("{run:#?}"));
    assert!(row.contains(" no "), "{row}");
    assert!(
        run.stdout.contains(&format!("{a1}: unreachable")),
        "{run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_and_dry_run_print_one_json_object_per_line() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/a.cfg", "a\n");
    write(n1, "/etc/app/stale.cfg", "stale\n");
    for (args, dry) in [
        (&["sync", "-dry", "--format", "json"][..], true),
        (&["sync", "--format", "json"], false),
    ] {
        let run = gosyncd(config_args(&n0.config_path, args)).await;
        assert_eq!(run.code, Some(0), "{run:#?}");
        let lines: Vec<serde_json::Value> = run
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect();
        let mut changes: Vec<(String, String)> = lines
            .iter()
            .filter(|l| l.get("change").is_some())
            .map(|l| {
                assert_eq!(l["peer"], n1.addr.to_string());
                assert_eq!(l["dry_run"], dry);
                (
                    l["path"].as_str().unwrap().to_string(),
                    l["change"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        changes.sort();
        assert_eq!(
            changes,
            [
                ("/etc/app/a.cfg".to_string(), "added".to_string()),
                ("/etc/app/stale.cfg".to_string(), "deleted".to_string())
            ],
            "{run:#?}"
        );
        for line in &lines {
            let kind = line["type"]
                .as_str()
                .unwrap_or_else(|| panic!("no type: {line}"));
            assert!(["change", "summary"].contains(&kind), "{line}");
            assert!(
                line["time"].as_str().is_some_and(|t| t.ends_with("+00:00")),
                "{line}"
            );
        }
        let summary = lines.last().unwrap();
        assert_eq!(summary["type"], "summary");
        assert_eq!(summary["changes"], 2);
        assert_eq!(summary["failed"], false);
    }
    assert_same_tree(n0, n1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_is_put_back_and_pushed_like_any_edit() {
    let mut group = start_with(GroupSpec {
        watch: true,
        ..spec(2)
    })
    .await;
    let store = group.path().join("backups");
    for i in 0..2 {
        let name = format!("node{}-backups.hcl", i + 1);
        let variant = config_variant(&group, i, &name, |text| {
            format!(
                "backup {{\n  directory = \"{}/{i}\"\n  keep = 3\n}}\n{text}",
                store.display()
            )
        });
        group.nodes[i].config = Arc::new(Config::from_file(&variant).unwrap());
        group.nodes[i].config_path = variant;
        group.restart(i).await.unwrap();
    }
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let wait = |node: &gosyncd::group::GroupNode, bytes: &'static [u8]| {
        let path = node.path("/etc/app/app.cfg");
        async move {
            eventually(
                &format!(
                    "{} holds {:?}",
                    path.display(),
                    String::from_utf8_lossy(bytes)
                ),
                Duration::from_secs(10),
                || std::fs::read(&path).ok().as_deref() == Some(bytes),
            )
            .await;
        }
    };
    write(n0, "/etc/app/app.cfg", "good\n");
    wait(n1, b"good\n").await;
    write(n0, "/etc/app/app.cfg", "bad\n");
    wait(n1, b"bad\n").await;

    // Node 1 kept the good version when the bad one arrived.
    let run = gosyncd(config_args(
        &n1.config_path,
        &["backups", "list", "/etc/app"],
    ))
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.stdout.lines().count(), 1, "{run:#?}");
    assert!(
        run.stdout.contains("/etc/app/app.cfg") && run.stdout.contains("replaced by a sync from"),
        "{run:#?}"
    );
    let json = gosyncd(config_args(
        &n1.config_path,
        &["backups", "list", "--format", "json"],
    ))
    .await;
    let version: serde_json::Value =
        serde_json::from_str(json.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(version["type"], "backup", "{version}");
    assert!(
        version["mode"]
            .as_str()
            .is_some_and(|m| m.len() == 4 && m.starts_with('0')),
        "an octal string: {version}"
    );
    let name = version["version"].as_str().unwrap().to_string();

    // Restored on node 1, it reaches node 0 through node 1's watcher.
    let run = gosyncd(config_args(
        &n1.config_path,
        &["backups", "restore", "/etc/app/app.cfg", &name],
    ))
    .await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.stdout
            .contains(&format!("restored /etc/app/app.cfg ({name})")),
        "{run:#?}"
    );
    assert_eq!(read(n1, "/etc/app/app.cfg"), b"good\n");
    wait(n0, b"good\n").await;

    // What the restore replaced was kept in turn; a missing version is refused by name.
    let run = gosyncd(config_args(
        &n1.config_path,
        &["backups", "list", "/etc/app/app.cfg"],
    ))
    .await;
    assert!(run.stdout.contains("a restore of backup"), "{run:#?}");
    let run = gosyncd(config_args(
        &n1.config_path,
        &[
            "backups",
            "restore",
            "/etc/app/app.cfg",
            "19700101T000000.000000000Z",
        ],
    ))
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr
            .contains("no kept version 19700101T000000.000000000Z"),
        "{run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_with_diff_shows_each_changed_text_file_per_peer_and_changes_nothing() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(
        n0,
        "/etc/app/app.cfg",
        "listen 80\nmaxconn 20\ntimeout 5s\n",
    );
    write(
        n1,
        "/etc/app/app.cfg",
        "listen 80\nmaxconn 10\ntimeout 5s\n",
    );
    write(n0, "/etc/app/new.cfg", "brand new\n");
    write(n1, "/etc/app/gone.cfg", "going away\n");
    write(n0, "/etc/app/blob.bin", [0u8, 159, 146, 150]);
    write(n1, "/etc/app/blob.bin", [1u8, 2, 3]);
    let before = snapshot(&n1.path("/etc/app"));

    let run = gosyncd(config_args(&n0.config_path, &["sync", "-dry", "--diff"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let out = &run.stdout;
    let peer = n1.addr.to_string();
    for expected in [
        format!("--- {peer}:/etc/app/app.cfg"),
        "+++ this node:/etc/app/app.cfg".to_string(),
        "-maxconn 10".to_string(),
        "+maxconn 20".to_string(),
        " listen 80".to_string(),
        "--- /dev/null".to_string(),
        "+brand new".to_string(),
        format!("--- {peer}:/etc/app/gone.cfg"),
        "-going away".to_string(),
        "/etc/app/blob.bin: no diff shown (binary)".to_string(),
    ] {
        assert!(out.contains(&expected), "{expected:?} missing from:\n{out}");
    }
    assert_eq!(
        snapshot(&n1.path("/etc/app")),
        before,
        "a dry run changed the peer"
    );

    let run = gosyncd(config_args(&n0.config_path, &["sync", "--diff"])).await;
    assert_eq!(
        run.code,
        Some(2),
        "--diff without a dry run is refused: {run:#?}"
    );

    // The route behind it answers the group only, inside the configured directories,
    // and never follows a link.
    symlink(n1, "/etc/passwd", "/etc/app/link");
    let stranger = crate::common::peer(&tls_of(n0), n1.addr);
    let err = stranger
        .contents(&["/etc/app/app.cfg".into()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("(403)"), "{err}");
    let member = peer_as(n0, n1.addr);
    let err = member.contents(&["/etc/passwd".into()]).await.unwrap_err();
    assert!(
        err.to_string().contains("(400)") && err.to_string().contains("outside"),
        "{err}"
    );
    let answer = member.contents(&["/etc/app/link".into()]).await.unwrap();
    assert_eq!(answer.files[0].text, None);
    assert_eq!(answer.files[0].note.as_deref(), Some("not a regular file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_speak_the_classic_format_unless_openmetrics_is_asked_for() {
    let mut group = start_with(spec(2)).await;
    let metrics = SocketAddr::new(address(), 19109);
    with_line_on_top(&mut group, 0, &format!("metrics_address = \"{metrics}\"")).await;

    let (kind, classic) = scrape_accepting(metrics, None).await;
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    assert_classic_format(&classic);
    assert!(
        classic.contains("# HELP gosyncd_apply_requests_total ")
            && classic.contains("# TYPE gosyncd_apply_requests_total counter"),
        "{classic}"
    );
    // promtool itself, where it is installed.
    match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Err(_) => eprintln!("promtool is not installed: its check is skipped"),
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(classic.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    // Prometheus asks for OpenMetrics, and gets it.
    let (kind, open) = scrape_accepting(
        metrics,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    assert!(open.trim_end().ends_with("# EOF"), "{open}");
    assert!(
        open.contains("# TYPE gosyncd_apply_requests counter"),
        "{open}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_down_shows_in_the_metrics_with_the_age_of_what_waits_for_it() {
    let mut group = start_with(GroupSpec {
        watch: true,
        reconcile_interval: Some(Duration::from_secs(1)),
        ..spec(2)
    })
    .await;
    let metrics = SocketAddr::new(address(), 19110);
    with_line_on_top(&mut group, 0, &format!("metrics_address = \"{metrics}\"")).await;
    let peer = group.nodes[1].addr.to_string();
    let up = format!("gosyncd_peer_up{{peer=\"{peer}\"}}");
    let oldest = format!("gosyncd_oldest_pending_seconds{{peer=\"{peer}\"}}");
    let until = |wanted: &'static str, check: Box<dyn Fn(&str) -> bool + Send>| async move {
        eventually_async(wanted, Duration::from_secs(10), || async {
            let text = scrape(metrics).await;
            if check(&text) {
                Ok(text)
            } else {
                Err(text)
            }
        })
        .await
    };
    // Up once compared, with nothing waiting.
    let (u, o) = (up.clone(), oldest.clone());
    let text = until("up", Box::new(move |t| sample(t, &u) == Some(1.0))).await;
    assert_eq!(sample(&text, &o), Some(0.0), "{text}");

    // Down: found by the next comparison, with no edit to push.
    group.stop(1).await;
    let u = up.clone();
    until("down", Box::new(move |t| sample(t, &u) == Some(0.0))).await;
    // An edit waits for it, and its age grows.
    write(&group.nodes[0], "/etc/app/waiting.cfg", "for node 1\n");
    let o = oldest.clone();
    let text = until(
        "waiting a second",
        Box::new(move |t| sample(t, &o).is_some_and(|s| s >= 1.0)),
    )
    .await;
    assert_eq!(
        sample(
            &text,
            &format!("gosyncd_pending_changes{{peer=\"{peer}\"}}")
        ),
        Some(1.0),
        "{text}"
    );

    // Back: delivered, up, nothing waits.
    group.restart(1).await.unwrap();
    let (u, o) = (up.clone(), oldest.clone());
    until(
        "delivered",
        Box::new(move |t| sample(t, &u) == Some(1.0) && sample(t, &o) == Some(0.0)),
    )
    .await;
    assert_eq!(
        read(&group.nodes[1], "/etc/app/waiting.cfg"),
        b"for node 1\n"
    );
}
