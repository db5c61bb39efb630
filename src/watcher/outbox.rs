//! The per-peer outbox: changes waiting for one peer, and the task that delivers them
//! through the engine, retrying with exponential backoff while the peer is unreachable.
//!
//! It does not scan or decide what changed: the propagation loop merges the changes in,
//! and a delivery sends only versions this node recorded.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{debug, error, info, warn};

use crate::manifest::Manifest;
use crate::plan::plan;
use crate::protocol::{Entry, Op};
use crate::server::Node;
use crate::sync::{ChangeStatus, Engine, PeerReport};
use crate::versions::Versions;

/// First wait before retrying an unreachable peer.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Changes waiting for one peer: path -> the version that peer is expected to hold
/// there (`None`: nothing). Kept in memory while the peer is unreachable, merged as
/// more changes come.
///
/// It is bounded by the tree, not by the outage: one small entry per path (a digest and
/// metadata, never content, which is read when the push is made), however often the
/// path changes while the peer is away.
#[derive(Default)]
pub struct Outbox {
    pending: Mutex<BTreeMap<String, Option<Entry>>>,
    wake: Notify,
}

impl Outbox {
    /// Adds changes. A path already waiting keeps its older expectation: that is what
    /// the peer still holds.
    pub(super) fn merge(&self, ops: &[Op]) {
        let mut pending = self.pending.lock().expect("outbox lock");
        for op in ops {
            pending
                .entry(op.path.clone())
                .or_insert_with(|| op.expect.clone());
        }
        drop(pending);
        self.wake.notify_one();
    }

    fn take(&self) -> BTreeMap<String, Option<Entry>> {
        std::mem::take(&mut *self.pending.lock().expect("outbox lock"))
    }

    /// Puts back changes whose push failed; their expectations win over newer ones,
    /// since the peer never received the versions those assume.
    fn restore(&self, taken: BTreeMap<String, Option<Entry>>) {
        self.pending.lock().expect("outbox lock").extend(taken);
    }

    /// Hands every waiting change over to `other` (a daemon reloading its config passes
    /// them to its successor), keeping the older expectation where both have a path,
    /// and wakes it.
    pub fn hand_over(&self, other: &Outbox) {
        let taken = self.take();
        if taken.is_empty() {
            return;
        }
        other.restore(taken);
        other.wake.notify_one();
    }

    /// How many paths wait.
    pub fn len(&self) -> usize {
        self.pending.lock().expect("outbox lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Delivers one peer's outbox: the latest content of every waiting path, in one
/// request, retried with exponential backoff while the peer is unreachable.
///
/// Returns when `stopping` turns true while it is idle or waiting to retry; a push under
/// way is finished first.
pub async fn deliver(
    engine: Arc<Engine>,
    node: Arc<Node>,
    versions: Arc<Versions>,
    index: usize,
    outbox: Arc<Outbox>,
    mut stopping: watch::Receiver<bool>,
) {
    let peer = engine.peers()[index].remote.label.clone();
    let mut backoff: Option<Duration> = None;
    loop {
        let wait = async {
            match backoff {
                None => outbox.wake.notified().await,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = stopping.wait_for(|stop| *stop) => {
                if !outbox.is_empty() {
                    warn!(%peer, pending = outbox.len(), "stopping with changes not delivered to this peer");
                }
                return;
            }
        }
        let pending = outbox.take();
        if pending.is_empty() {
            continue;
        }
        // Send the versions this node recorded, never a newer scan: every state a peer
        // receives is one the versions map knew, so the expectations of later bursts
        // (planned against that map) hold on the peer. A file written again since
        // its version was recorded is put back below and sent by the write's burst.
        let ours: Manifest = pending
            .keys()
            .filter_map(|p| versions.get(p).map(|e| (p.clone(), e)))
            .collect();
        let theirs: Manifest = pending
            .iter()
            .filter_map(|(p, e)| e.clone().map(|e| (p.clone(), e)))
            .collect();
        let ops = plan(&ours, &theirs, node.owners);
        if ops.is_empty() {
            backoff = None;
            continue;
        }
        let count = ops.len();
        let report = engine.push_to(index, ops).await;
        node.stats.pushes.fetch_add(1, Ordering::Relaxed);
        if let Some(track) = node.peers.get().and_then(|peers| peers.get(index)) {
            let conflicts = report
                .changes
                .iter()
                .filter(
                    |c| matches!(&c.status, ChangeStatus::Skipped(r) if r.starts_with("conflict")),
                )
                .count() as u64;
            track.pushed(
                report.error.clone().map_or(Ok(conflicts), Err),
                report.bytes_sent,
            );
        }
        if let (Some(e), true) = (&report.error, report.refused) {
            // Sending the same batch again would be refused again: report and drop it.
            error!(%peer, changes = count, "peer refused the push, not retried: {e}");
            backoff = None;
            continue;
        }
        if let Some(e) = &report.error {
            if backoff.is_none() {
                warn!(%peer, pending = pending.len(), "peer unreachable, changes kept in memory and retried: {e}");
            }
            outbox.restore(pending);
            backoff = Some(backoff.map_or(RETRY_FIRST, |b| (b * 2).min(RETRY_MAX)));
            continue;
        }
        if backoff.take().is_some() {
            info!(%peer, changes = count, "peer reachable again, pending changes delivered");
        }
        // Files written again while this push was prepared were not sent: the peer
        // still holds what it held, and the write's own burst brings the new content.
        let unsent: BTreeMap<String, Option<Entry>> = pending
            .into_iter()
            .filter(|(path, _)| report.changed_locally.contains(path))
            .collect();
        if !unsent.is_empty() {
            // No wake-up here: the write's own burst wakes this outbox when it merges
            // (or already left a permit, if it merged while this push was under way).
            debug!(%peer, paths = unsent.len(), "files changed while being pushed: kept for the next push");
            outbox.restore(unsent);
        }

        log_changes(&node, &report);
    }
}

fn log_changes(node: &Node, report: &PeerReport) {
    for change in &report.changes {
        if report.changed_locally.contains(&change.path) {
            continue;
        }
        match &change.status {
            ChangeStatus::Skipped(reason) if reason.starts_with("conflict") => {
                node.stats
                    .conflicts_reported
                    .fetch_add(1, Ordering::Relaxed);
                error!(
                    "{change}; nothing was overwritten: run `gosyncd sync` on the node whose version should win"
                );
            }
            ChangeStatus::Skipped(_) => warn!("{change}"),
            _ => info!("{change}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{file_entry, put};

    fn update(path: &str, from: &[u8], to: &[u8]) -> Op {
        Op {
            expect: Some(file_entry(from)),
            ..put(path, to)
        }
    }

    #[test]
    fn a_waiting_path_keeps_the_version_the_peer_still_holds() {
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"v1", b"v2")]);
        outbox.merge(&[update("/d/a", b"v2", b"v3"), put("/d/b", b"new")]);
        let pending = outbox.take();
        assert_eq!(pending["/d/a"], Some(file_entry(b"v1")));
        assert_eq!(pending["/d/b"], None);
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_failed_delivery_restores_the_older_expectations() {
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"v1", b"v2")]);
        let in_flight = outbox.take();
        // An edit made while the push was under way assumes the peer got v2.
        outbox.merge(&[update("/d/a", b"v2", b"v3")]);
        // The push failed: the peer still holds v1.
        outbox.restore(in_flight);
        assert_eq!(outbox.take()["/d/a"], Some(file_entry(b"v1")));
    }
}
