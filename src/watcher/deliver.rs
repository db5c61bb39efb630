//! Delivery of one peer's outbox: the task that pushes what waits for the peer through
//! the engine, retrying with exponential backoff while the peer is unreachable or a path
//! failed for a passing reason, and learns from each answer what the peer holds (the
//! [`Outbox`] keeps it).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::baseline::Baseline;
use crate::manifest::Manifest;
use crate::node::{Known, Node, PeerRecord, Sent, Spool};
use crate::paths::{is_within, LogicalPath};
use crate::plan::plan;
use crate::protocol::Entry;
use crate::sync::{ChangeStatus, Engine, PeerReport};

/// First wait before retrying an unreachable peer.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// Paths delivered at most in one push, outside the directories the peer judges as a
/// whole (see [`Outbox::take_some`](crate::node::Outbox)): the push of a large change (a
/// tree deleted) goes in parts, each in one request, and the copies a push makes of its
/// paths (what the peer holds, this node's versions, the plan, the answers) are bounded
/// by a part. The same size as a large sync's batches.
const PATHS_PER_DELIVERY: usize = 4096;

/// Delivers one peer's outbox: the latest content of every waiting path, a part of at
/// most [`PATHS_PER_DELIVERY`] paths per push (the paths of a directory the peer judges
/// whole in one), the next part at once, retried with exponential backoff while the peer
/// is unreachable or a path failed for a passing reason.
///
/// Returns when `stopping` turns true while it is idle or waiting to retry; a push under
/// way is finished first.
pub async fn deliver(
    engine: Arc<Engine>,
    node: Arc<Node>,
    baseline: Arc<Baseline>,
    record: Arc<PeerRecord>,
    spool: Option<Arc<Spool>>,
    mut stopping: watch::Receiver<bool>,
) {
    let peer = record.label().to_string();
    let outbox = &record.outbox;
    let mut backoff: Option<Duration> = None;
    let mut unreachable = false;
    loop {
        if !next_turn(&record, backoff, &mut stopping, spool.is_some()).await {
            return;
        }
        // What the peer judges whole is known before anything is taken: until it is,
        // every path would have to go together.
        let whole = match record.link.judged_whole() {
            Some(whole) => Ok(whole),
            None => {
                let config = engine.config();
                let first = outbox.first_waiting(|path| config.directory_of(path).map(|d| &d.path));
                if first.is_empty() {
                    backoff = None;
                    continue;
                }
                engine
                    .judged_whole(&record.link, first.iter().map(String::as_str))
                    .await
            }
        };
        let whole = match whole {
            Ok(whole) => whole,
            Err(e) => {
                if !unreachable {
                    let (kept, pending) = (kept_where(spool.is_some()), outbox.len());
                    match e.is_refusal() {
                        true => {
                            error!(%peer, pending, "peer refused to say which directories it takes, changes {kept} and retried: {e}")
                        }
                        false => {
                            warn!(%peer, pending, "peer unreachable, changes {kept} and retried: {e}")
                        }
                    }
                }
                unreachable = true;
                record.set_unreachable(!e.is_refusal());
                backoff = Some(backoff.map_or(RETRY_FIRST, |b| (b * 2).min(RETRY_MAX)));
                continue;
            }
        };
        let taken = outbox.take_some(
            PATHS_PER_DELIVERY,
            |path| whole.iter().any(|dir| is_within(path, dir)),
            |path| !baseline.knows(path),
        );
        if taken.is_empty() {
            backoff = None;
            continue;
        }
        // Pushes a previous daemon left under way: ask the peer which version it holds.
        let pending = match resolve_sent(&record, &taken).await {
            Ok(pending) => pending,
            Err(e) => {
                if !unreachable {
                    let kept = kept_where(spool.is_some());
                    warn!(%peer, pending = outbox.len(), "peer unreachable, changes {kept} and retried: {e}");
                }
                unreachable = true;
                record.set_unreachable(!e.is_refusal());
                outbox.put_back(taken);
                backoff = Some(backoff.map_or(RETRY_FIRST, |b| (b * 2).min(RETRY_MAX)));
                continue;
            }
        };
        // Send the versions this node recorded, never a newer scan: every state a peer
        // receives is one the versions map knew, so the expectations of later bursts
        // (planned against that map) hold on the peer. A file written again since
        // its version was recorded is put back below and sent by the write's burst.
        let ours: Manifest = pending
            .keys()
            .filter_map(|p| baseline.get(p).map(|e| (p.clone(), e)))
            .collect();
        let theirs: Manifest = pending
            .iter()
            .filter_map(|(p, e)| e.clone().map(|e| (p.clone(), e)))
            .collect();
        let ops = plan(&ours, &theirs, node.owners);
        if ops.is_empty() {
            // The peer holds this node's version of every path: nothing to send.
            outbox.settle(pending, &PeerReport::default());
            backoff = None;
            save(&spool).await;
            continue;
        }
        let count = ops.len();
        outbox.sending(&ours);
        let report = engine.push_to(&record.link, ops).await;
        count_push(&node, &record, &report);
        // Every path waiting, this part (in flight) included.
        let waiting = outbox.len();
        let settled = outbox.settle(pending, &report);
        outbox.agreed(&report.peer_holds, |path| baseline.get(path), node.owners);
        save(&spool).await;
        record.set_unreachable(report.error.is_some() && !report.refused);
        let counts = (count, waiting);
        tell(&peer, &report, counts, spool.is_some(), &mut unreachable);
        let reached = report.error.is_none();
        drop((report, ours, theirs));
        if count >= crate::memory::LARGE_WORK {
            // A large push (a tree deleted or checked out) needed copies of every path
            // it carried: give them back once it is told.
            crate::memory::give_back_soon();
        }
        backoff = if settled.retry > 0 {
            Some(backoff.map_or(RETRY_FIRST, |b| (b * 2).min(RETRY_MAX)))
        } else {
            None
        };
        // The peer took this part: the next goes at once.
        if reached && outbox.len() > settled.retry {
            outbox.wake.notify_one();
        }
        debug!(%peer, ?settled, "delivery settled");
    }
}

/// Waits for something to deliver to the record's peer: an edit or contact (at once), or
/// the end of the `backoff` after a failure. False when the daemon stops instead (what
/// waits is then said, `spooled` or lost).
async fn next_turn(
    record: &PeerRecord,
    backoff: Option<Duration>,
    stopping: &mut watch::Receiver<bool>,
    spooled: bool,
) -> bool {
    let outbox = &record.outbox;
    let wait = async {
        match backoff {
            None => tokio::select! {
                _ = outbox.wake.notified() => {}
                _ = outbox.contact.notified() => {}
            },
            // A new edit goes at once too: one path that keeps failing must not hold
            // back every later edit for this peer.
            Some(wait) => tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = outbox.contact.notified() => {}
                _ = outbox.wake.notified() => {}
            },
        }
    };
    tokio::select! {
        _ = wait => true,
        _ = stopping.wait_for(|stop| *stop) => {
            if !outbox.is_empty() {
                let kept = if spooled { "kept in the spool, delivered after the next start" } else { "lost" };
                warn!(peer = %record.label(), pending = outbox.len(), "stopping with changes not delivered to this peer: {kept}");
            }
            false
        }
    }
}

/// Counts a push in the node's and the peer's figures, logs what it changed, and
/// records the paths it delivered.
fn count_push(node: &Node, record: &PeerRecord, report: &PeerReport) {
    node.stats.pushes.fetch_add(1, Ordering::Relaxed);
    let conflicts = report
        .changes
        .iter()
        .filter(|c| matches!(&c.status, ChangeStatus::Conflict(_)))
        .count() as u64;
    record.pushed(
        report.error.clone().map_or(Ok(conflicts), Err),
        report.bytes_sent,
    );
    if report.error.is_none() {
        log_changes(node, report);
    }
    let done: Vec<String> = report
        .changes
        .iter()
        .filter(|c| matches!(c.status, ChangeStatus::Done(_)))
        .map(|c| c.path.to_string())
        .collect();
    record.delivered(&done);
}

/// Logs how a push of `count` changes (of `waiting`) ended: refused, the peer
/// unreachable (once, until it answers again: `unreachable`), or back after that.
fn tell(
    peer: &str,
    report: &PeerReport,
    (count, waiting): (usize, usize),
    spooled: bool,
    unreachable: &mut bool,
) {
    match (&report.error, report.refused) {
        (Some(e), true) => {
            error!(%peer, changes = count, "peer refused the push, held until these paths are edited again: {e}");
        }
        (Some(e), false) => {
            if !*unreachable {
                let kept = kept_where(spooled);
                warn!(%peer, pending = waiting, "peer unreachable, changes {kept} and retried: {e}");
            }
            *unreachable = true;
        }
        (None, _) => {
            if std::mem::take(unreachable) {
                info!(%peer, changes = count, "peer reachable again, pending changes delivered");
            }
        }
    }
}

/// Where the changes for an unreachable peer are kept meanwhile.
fn kept_where(spooled: bool) -> &'static str {
    match spooled {
        true => "kept in the spool",
        false => "kept in memory",
    }
}

/// What the peer holds at each taken path, for planning: what it was expected to hold,
/// except where a push was under way when a previous daemon stopped (`sent`): the peer
/// is asked, and where it holds the version sent, that is what it holds. Where it holds
/// neither, the expectation stays, and the push is refused as a conflict (reported)
/// rather than overwrite it.
async fn resolve_sent(
    record: &PeerRecord,
    taken: &BTreeMap<LogicalPath, Known>,
) -> Result<BTreeMap<LogicalPath, Option<Entry>>, crate::client::PeerError> {
    let mut pending: BTreeMap<LogicalPath, Option<Entry>> = taken
        .iter()
        .map(|(path, known)| (path.clone(), known.holds.clone()))
        .collect();
    let uncertain: Vec<(&LogicalPath, &Sent)> = taken
        .iter()
        .filter_map(|(path, known)| known.sent.as_deref().map(|sent| (path, sent)))
        .collect();
    if uncertain.is_empty() {
        return Ok(pending);
    }
    let scope: Vec<String> = uncertain.iter().map(|(path, _)| path.to_string()).collect();
    let listing = record.link.peer.manifest(&scope).await?;
    // A path the peer could not read, or whose directory it lacks, is not in its
    // listing and yet may hold anything: what it holds stays unknown, and the push goes
    // with the older expectation (the peer checks it).
    let unknown = |path: &str| {
        listing.unreadable.iter().any(|u| is_within(path, u))
            || listing
                .directories
                .iter()
                .any(|d| !d.present && is_within(path, &d.path))
    };
    let holds: std::collections::HashMap<&str, &Entry> = listing
        .entries
        .iter()
        .map(|w| (w.path.as_str(), &w.entry))
        .collect();
    for (path, sent) in uncertain {
        if unknown(path) {
            continue;
        }
        let now = holds.get(LogicalPath::as_str(path)).copied();
        let delivered = crate::protocol::same_or_absent(now, sent.entry.as_ref(), listing.owners);
        if delivered {
            pending.insert(path.clone(), sent.entry.clone());
        }
    }
    Ok(pending)
}

/// Writes the spool after a delivery, on a thread that may block; its directory is not
/// flushed (a change delivered twice after a power loss is harmless: the peer finds it
/// already holds it).
async fn save(spool: &Option<Arc<Spool>>) {
    if let Some(spool) = spool.clone() {
        let _ = tokio::task::spawn_blocking(move || spool.save(false)).await;
    }
}

fn log_changes(node: &Node, report: &PeerReport) {
    for change in &report.changes {
        if report.changed_locally.iter().any(|p| *p == change.path) {
            continue;
        }
        let line = change.line(&report.peer);
        match &change.status {
            ChangeStatus::Conflict(_) => {
                node.stats
                    .conflicts_reported
                    .fetch_add(1, Ordering::Relaxed);
                error!(
                    "{line}; nothing was overwritten: `gosyncd conflicts {}` shows every node's \
                     version, and `gosyncd resolve {} --take NODE` (from any node) keeps one",
                    change.path, change.path
                );
            }
            ChangeStatus::Failed(_) => warn!("{line}; retried"),
            ChangeStatus::Refused(_) | ChangeStatus::Rejected(_) => {
                warn!("{line}; held until the path is edited here again")
            }
            ChangeStatus::Done(_) | ChangeStatus::Kept(_) => info!("{line}"),
        }
    }
}
