//! `status --group` with the real binary against real daemons: every node's view of
//! every other as a matrix, its exit code (0 converged, 1 not, 2 a node not asked), and
//! the `gosyncd_group_converged` gauge of one node's own view.

use std::net::SocketAddr;
use std::time::Duration;

use gosyncd::group::GroupSpec;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_group_shows_a_converged_group_then_its_drift_then_a_node_down() {
    let mut group = start_with(GroupSpec {
        reconcile_interval: Some(Duration::from_secs(1)),
        ..spec(3)
    })
    .await;
    let metrics = SocketAddr::new(address(), 19111);
    with_line_on_top(&mut group, 0, &format!("metrics_address = \"{metrics}\"")).await;
    let config = group.nodes[0].config_path.clone();
    let labels: Vec<String> = group.nodes.iter().map(|n| n.addr.to_string()).collect();
    let status = || gosyncd(config_args(&config, &["status", "--group"]));

    // Converged, once every daemon has compared with its peers.
    let run = eventually_async("status --group to exit 0", WAIT, || async {
        let run = status().await;
        (run.code == Some(0)).then_some(run)
    })
    .await;
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("FROM \\ TO"), "{}", run.stdout);
    for (i, label) in labels.iter().enumerate() {
        let row = lines
            .iter()
            .find(|l| l.starts_with(label.as_str()))
            .unwrap_or_else(|| panic!("no row for {label}: {}", run.stdout));
        let cells: Vec<&str> = row.split_whitespace().skip(1).collect();
        assert_eq!(cells.len(), 3, "{row}");
        assert_eq!(cells[i], "-", "a node's view of itself: {row}");
        assert_eq!(cells.iter().filter(|c| **c == "ok").count(), 2, "{row}");
    }
    assert!(
        run.stdout.contains("group converged (6 views)"),
        "{}",
        run.stdout
    );
    let gauge = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("gosyncd_group_converged "))
            .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
    };
    assert_eq!(gauge(&scrape(metrics).await).as_deref(), Some("1"));

    // A file made by hand on node 2: every other node's next comparison sees drift.
    write(&group.nodes[1], "/etc/app/by-hand.conf", "made on node 2\n");
    let run = eventually_async("status --group to see the drift", WAIT, || async {
        let run = status().await;
        (run.code == Some(1) && run.stdout.matches("drift 1").count() >= 2).then_some(run)
    })
    .await;
    assert!(run.stdout.contains("group NOT converged"), "{}", run.stdout);
    eventually_async("the gauge to say so", WAIT, || async {
        gauge(&scrape(metrics).await).filter(|v| v == "0")
    })
    .await;
    let json = gosyncd(config_args(
        &config,
        &["status", "--group", "--format", "json"],
    ))
    .await;
    assert_eq!(json.code, Some(1), "{json:#?}");
    let records: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let views: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "group_view")
        .collect();
    assert_eq!(views.len(), 6, "{}", json.stdout);
    let drifted = views
        .iter()
        .filter(|v| v["drift"] == 1 && v["converged"] == false)
        .count();
    assert!(drifted >= 2, "{}", json.stdout);
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "group_summary", "{}", json.stdout);
    assert_eq!(summary["code"], 1);

    // Node 3's daemon stopped: it cannot be asked, and the others see it down.
    group.stop(2).await;
    let run = eventually_async("status --group to exit 2", WAIT, || async {
        let run = status().await;
        (run.code == Some(2)).then_some(run)
    })
    .await;
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with(&format!("{}: ", labels[2]))),
        "the node not asked is not named: {}",
        run.stdout
    );
    assert!(run.stdout.contains("group state unknown"), "{}", run.stdout);
}
