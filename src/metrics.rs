//! Prometheus metrics: a plain-HTTP `GET /metrics` on `metrics_address` (off by
//! default), in the OpenMetrics format to a client that asks for it and in the classic
//! text format otherwise, rendered with prometheus-client from the daemon's counters
//! and its watcher's view of each peer at the time of the scrape.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::node::Node;
use crate::protocol::HeldKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabel {
    peer: String,
    /// `conflict`, `rejected`, `refused` or `kept`.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// The metrics of `node` now, in the text format.
pub fn render(node: &Node) -> String {
    let mut registry = Registry::with_prefix("gosyncd");
    register_received(&mut registry, node);
    register_peers(&mut registry, node);
    register_local_edits(&mut registry, node);
    register_build_info(&mut registry, node);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// What this node received from its peers: requests, bytes and outcomes.
fn register_received(registry: &mut Registry, node: &Node) {
    let counter = |registry: &mut Registry, name: &str, help: &str, value: u64| {
        let metric = Counter::<u64>::default();
        metric.inc_by(value);
        registry.register(name, help, metric);
    };
    let stats = &node.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    counter(
        registry,
        "apply_requests",
        "Apply requests received from peers",
        get(&stats.apply_requests),
    );
    counter(
        registry,
        "apply_requests_busy",
        "Apply requests answered busy (503): max_concurrent_applies were under way",
        get(&stats.applies_busy),
    );
    counter(
        registry,
        "received_bytes",
        "Bytes of apply requests received from peers",
        get(&stats.bytes_received),
    );
    counter(
        registry,
        "applied_operations",
        "Operations received and applied",
        get(&stats.applied),
    );
    counter(
        registry,
        "conflicts_refused",
        "Operations received and refused as conflicts",
        get(&stats.conflicts_refused),
    );
    counter(
        registry,
        "conflicts_resolved_newest",
        "Operations received that conflicted with this node's own edit and were applied, being newer (on_conflict newest)",
        get(&stats.conflicts_resolved_newest),
    );
    counter(
        registry,
        "validation_rejections",
        "Operations received, applied, then put back because validation failed",
        get(&stats.rejected),
    );
}

/// Per peer: pushes, failures, conflicts, bytes sent, what waits or is held, drift,
/// and whether it answers.
fn register_peers(registry: &mut Registry, node: &Node) {
    let pushes = Family::<PeerLabel, Counter>::default();
    let failures = Family::<PeerLabel, Counter>::default();
    let conflicts = Family::<PeerLabel, Counter>::default();
    let sent = Family::<PeerLabel, Counter>::default();
    let pending = Family::<PeerLabel, Gauge>::default();
    let last_success = Family::<PeerLabel, Gauge>::default();
    let held = Family::<HeldLabel, Gauge>::default();
    let drift = Family::<PeerLabel, Gauge>::default();
    let up = Family::<PeerLabel, Gauge>::default();
    let oldest = Family::<PeerLabel, Gauge>::default();
    let statuses = node.peer_status();
    let group_converged = Gauge::<i64>::default();
    group_converged.set(i64::from(statuses.iter().all(|p| p.converged())));
    for peer in statuses {
        let label = PeerLabel {
            peer: peer.peer.clone(),
        };
        for kind in HeldKind::ALL {
            let count = peer.held.iter().filter(|h| h.outcome == kind).count();
            held.get_or_create(&HeldLabel {
                peer: peer.peer.clone(),
                outcome: kind.name().to_string(),
            })
            .set(count as i64);
        }
        if let Some(paths) = peer.drift_paths {
            drift.get_or_create(&label).set(paths as i64);
        }
        pushes.get_or_create(&label).inc_by(peer.pushes);
        failures.get_or_create(&label).inc_by(peer.failures);
        conflicts.get_or_create(&label).inc_by(peer.conflicts);
        sent.get_or_create(&label).inc_by(peer.bytes_sent);
        pending.get_or_create(&label).set(peer.pending as i64);
        oldest
            .get_or_create(&label)
            .set(peer.oldest_pending_seconds.unwrap_or(0) as i64);
        if let Some(answered) = peer.up {
            up.get_or_create(&label).set(i64::from(answered));
        }
        if let Some(at) = peer.last_success_unix {
            last_success.get_or_create(&label).set(at as i64);
        }
    }
    registry.register("pushes", "Automatic pushes to a peer", pushes);
    registry.register(
        "push_failures",
        "Automatic pushes to a peer that failed (unreachable, refused)",
        failures,
    );
    registry.register(
        "conflicts_reported",
        "Operations a peer refused as conflicts",
        conflicts,
    );
    registry.register("sent_bytes", "Bytes of apply requests sent to a peer", sent);
    registry.register(
        "pending_changes",
        "Changed paths waiting to be pushed to a peer",
        pending,
    );
    registry.register(
        "oldest_pending_seconds",
        "How long the oldest change waiting to be pushed to a peer has waited (0: none waits)",
        oldest,
    );
    registry.register(
        "peer_up",
        "1 if the last exchange with a peer (a push, or the comparison every reconcile_interval) succeeded, else 0",
        up,
    );
    registry.register(
        "held_paths",
        "Paths whose change a peer did not take, held until they are edited again, by outcome",
        held,
    );
    registry.register(
        "drift_paths",
        "Paths that differ from a peer and that nobody is delivering, at the last comparison",
        drift,
    );
    registry.register(
        "last_success_timestamp_seconds",
        "When a push to a peer last succeeded (Unix time)",
        last_success,
    );
    registry.register(
        "group_converged",
        "1 if, as this node sees them, every peer is up, nothing waits for it or is held back from it, and the last comparison found no drift; else 0",
        group_converged,
    );
}

/// The edits made on this node that it did not push because it is receive-only, and
/// that may still differ from the group (always 0 on a sending node, which pushes them).
fn register_local_edits(registry: &mut Registry, node: &Node) {
    let gauge = Gauge::<i64>::default();
    gauge.set(node.local_edits.len() as i64);
    registry.register(
        "local_edits_not_pushed",
        "Paths edited on this node and not pushed because its role is receive-only, that still differ from the group as far as it knows (0 on a sending node)",
        gauge,
    );
}

/// The running version, as a gauge of 1 labelled with it.
fn register_build_info(registry: &mut Registry, node: &Node) {
    let info = Family::<VersionLabel, Gauge>::default();
    info.get_or_create(&VersionLabel {
        version: node.identity.version.clone(),
    })
    .set(1);
    registry.register("build_info", "The running version", info);
}

/// Binds `address` for the metrics endpoint; the error names the key.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("metrics_address {address}: cannot listen: {e}"))
}

/// Serves `GET /metrics` until the task is aborted.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(node);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!("metrics endpoint stopped: {e}");
    }
}

/// The OpenMetrics format to a client that asks for it (Prometheus does), the classic
/// text format (version 0.0.4) to every other, `promtool check metrics` included.
async fn metrics(State(node): State<Arc<Node>>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    let text = render(&node);
    if openmetrics {
        (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
    } else {
        (
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            classic(&text),
        )
    }
}

/// The classic text format of an OpenMetrics text: a counter's help and type are named
/// as its samples are (`_total`), and the `# EOF` and `# UNIT` lines go.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].into_iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match described {
            Some(renamed) => out.push_str(&renamed),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}
