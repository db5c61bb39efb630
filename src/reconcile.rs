//! Anti-entropy: at start-up, every `reconcile_interval`, and once after a peer comes
//! back, the daemon compares its trees with each peer's and sorts every difference:
//! a path waiting in that peer's outbox is delivered now, a held one stays held (and is
//! shown as such), and the rest is drift, reported (a warning naming the paths, once per
//! change of the drift set; the `drift_paths` gauge; `status`), never pushed. Nothing is
//! pushed that nobody edited: start-up never overwrites the group with a stale tree.
//!
//! It compares through the engine's dry run (the same planner as `sync -dry`); it
//! neither plans nor sends anything itself.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::{info, warn};

use crate::server::Node;
use crate::sync::{ChangeStatus, Engine, Options, PeerReport};
use crate::watcher::Outbox;

/// Paths named in a drift warning before it says "and N more".
const DRIFT_PATHS_SHOWN: usize = 10;

/// Compares with every peer now, then every `reconcile_interval` or when a peer comes
/// back, until the task is aborted.
pub async fn reconcile(engine: Arc<Engine>, node: Arc<Node>, outboxes: Vec<Arc<Outbox>>) {
    let interval = engine.config().reconcile_interval;
    let mut first = true;
    loop {
        pass(&engine, &node, &outboxes, first).await;
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = node.reconcile_now.notified() => {}
        }
    }
}

/// One comparison with every peer.
async fn pass(engine: &Engine, node: &Node, outboxes: &[Arc<Outbox>], first: bool) {
    let options = Options {
        dry_run: true,
        ..Options::default()
    };
    let report = engine.run(&options, |_| {}).await;
    let tracks = node.peers.get().map(Vec::as_slice).unwrap_or_default();
    for (index, (peer, outbox)) in report.peers.iter().zip(outboxes).enumerate() {
        let track = tracks.get(index);
        if peer.skipped.is_some() {
            continue;
        }
        let guarded = peer.refused && !peer.changes.is_empty();
        match (&peer.error, guarded) {
            (Some(e), false) => {
                if let Some(track) = track {
                    if !peer.refused {
                        track.set_unreachable(true);
                    }
                }
                if first {
                    warn!(peer = %peer.peer, "cannot compare with peer: {e}");
                }
                continue;
            }
            (Some(e), true) => {
                // The mass-delete guard: this node's tree looks emptied next to the peer's.
                if first {
                    warn!(peer = %peer.peer, "drift, and {e}");
                }
            }
            (None, _) => {}
        }
        let drift = sort(peer, outbox);
        let Some(track) = track else { continue };
        if !track.set_drift(&drift) {
            continue;
        }
        if drift.is_empty() {
            info!(peer = %peer.peer, "no drift with this peer any more");
            continue;
        }
        let list: Vec<&str> = drift.iter().map(String::as_str).collect();
        let shown = list[..list.len().min(DRIFT_PATHS_SHOWN)].join(", ");
        let more = list.len().saturating_sub(DRIFT_PATHS_SHOWN);
        warn!(
            peer = %peer.peer,
            paths = list.len(),
            "drift: {shown}{} differ from this node; nothing was pushed. \
             Run `gosyncd sync` on the node whose files are authoritative",
            if more > 0 { format!(" and {more} more") } else { String::new() }
        );
    }
}

/// Sorts one peer's differences: paths waiting in its outbox are delivered now (woken),
/// held ones stay held; returns the rest, the drift.
fn sort(peer: &PeerReport, outbox: &Outbox) -> BTreeSet<String> {
    let known = outbox.snapshot();
    let mut waiting = false;
    let drift = peer
        .changes
        .iter()
        // What a sync would change, or would refuse to (the mass-delete guard, a
        // directory the peer lacks); a directory kept for the peer's excludes is not
        // a difference.
        .filter(|c| !matches!(c.status, ChangeStatus::Kept(_)))
        .filter(|c| match known.get(&c.path) {
            Some(k) => {
                waiting |= k.held.is_none();
                false
            }
            None => true,
        })
        .map(|c| c.path.clone())
        .collect();
    if waiting {
        outbox.contact();
    }
    drift
}
