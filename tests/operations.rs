//! Seeing a running group: the Prometheus endpoint, and what a daemon's status route
//! says of each of its peers.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gosyncd::config::Config;
use gosyncd::group::{GroupSpec, LocalGroup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Restarts node `i` with `line` added at the top of its config.
async fn with_line_on_top(group: &mut LocalGroup, i: usize, line: &str) {
    let variant = config_variant(group, i, &format!("node{}-ops.hcl", i + 1), |text| {
        format!("{line}\n{text}")
    });
    group.nodes[i].config = Arc::new(Config::from_file(&variant).unwrap());
    group.nodes[i].config_path = variant;
    group.restart(i).await.unwrap();
}

/// `GET /metrics` over plain HTTP: the body.
async fn scrape(address: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    answer.split_once("\r\n\r\n").unwrap().1.to_string()
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
        nodes: 2,
        first_octet: 246,
        watch: true,
        ..GroupSpec::default()
    })
    .await;
    let (m0, m1): (SocketAddr, SocketAddr) = (
        "127.0.0.246:19105".parse().unwrap(),
        "127.0.0.247:19105".parse().unwrap(),
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
        before.contains("# TYPE gosyncd_applied_operations counter"),
        "{before}"
    );
    assert!(before.contains("gosyncd_build_info{version=\""), "{before}");

    write(n0, "/etc/app/a.cfg", "metered\n");
    let started = Instant::now();
    while !(exists(n1, "/etc/app/a.cfg")
        && sample(
            &scrape(m0).await,
            &format!("gosyncd_pushes_total{{peer=\"{peer}\"}}"),
        ) == Some(1.0))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            scrape(m0).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
