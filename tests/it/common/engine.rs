//! Running the engine through the library, and reading its reports.

use std::path::Path;
use std::sync::Arc;

use gosyncd::config::Config;
use gosyncd::group::{GroupNode, LocalGroup};
use gosyncd::manifest::HashCache;
use gosyncd::protocol::ChangeKind;
use gosyncd::sync::{ChangeStatus, Engine, Options, PeerReport, Report};
use gosyncd::tls::TlsMaterial;

use super::CALL_TIMEOUT;

pub async fn run(engine: &Engine, scope: &[&str], dry_run: bool) -> Report {
    let options = Options {
        scope: scope.iter().map(|s| s.to_string()).collect(),
        dry_run,
        ..Options::default()
    };
    tokio::time::timeout(CALL_TIMEOUT, engine.run(&options, |_| {}))
        .await
        .expect("the sync finishes in time")
}

/// `gosyncd sync` on node `from`, through the library.
pub async fn sync(group: &LocalGroup, from: usize) -> Report {
    run(&engine(group, from).await, &[], false).await
}

/// `gosyncd sync -dry` on node `from`, through the library.
pub async fn dry_run(group: &LocalGroup, from: usize) -> Report {
    run(&engine(group, from).await, &[], true).await
}

pub async fn engine(group: &LocalGroup, i: usize) -> Engine {
    group.engine(i).await.expect("engine")
}

/// An engine acting with the config file at `path` (a variant of a node's config).
pub async fn engine_for(path: &Path, self_id: Option<String>) -> Engine {
    let config = Config::from_file(path).unwrap_or_else(|e| panic!("{e}"));
    let tls = TlsMaterial::load(&config).unwrap();
    Engine::new(
        Arc::new(config),
        &tls,
        Arc::new(HashCache::default()),
        self_id,
    )
    .await
    .unwrap()
}

/// Panics with the whole report when anything failed.
pub fn assert_clean(report: &Report) {
    assert!(!report.failed(), "the sync failed: {report:#?}");
}

/// The report of the peer `node`.
pub fn peer_report<'r>(report: &'r Report, node: &GroupNode) -> &'r PeerReport {
    let label = node.addr.to_string();
    report
        .peers
        .iter()
        .find(|p| p.peer == label)
        .unwrap_or_else(|| panic!("no report for {label}: {report:#?}"))
}

/// The output lines of one peer, in order.
pub fn lines(report: &Report, node: &GroupNode) -> Vec<String> {
    peer_report(report, node)
        .lines()
        .map(|line| line.to_string())
        .collect()
}

/// `"+ /etc/app/x"`-style summary of one peer's changes, sorted.
pub fn summary(report: &Report, node: &GroupNode) -> Vec<String> {
    let mut out: Vec<String> = peer_report(report, node)
        .changes
        .iter()
        .map(|c| {
            let sign = match &c.status {
                ChangeStatus::Done(ChangeKind::Added) => "+",
                ChangeStatus::Done(ChangeKind::Updated) => "M",
                ChangeStatus::Done(ChangeKind::Deleted) => "-",
                ChangeStatus::Rejected(_) => "x",
                _ => "!",
            };
            format!("{sign} {}", c.path)
        })
        .collect();
    out.sort();
    out
}

/// Sorted owned strings, for comparing with [`summary`].
pub fn sorted(items: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}
