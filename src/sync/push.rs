//! Sending planned operations to one peer: reading their contents, leaving out what the
//! peer would refuse as too large and what changed since the scan, splitting the rest into
//! batches that fit the peer's limits, and turning its answers into changes and action
//! lines.
//!
//! It does not plan or choose what to send: the caller hands it the operations.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::debug;

use super::peer::{LocalState, Unsendable};
use super::{ActionLine, Change, ChangeStatus, PeerReport, Progress, ProgressEvent};
use crate::client::{Peer, PeerError};
use crate::config::Config;
use crate::protocol::{self, Action, ApplyResponse, BatchHeader, Content, Entry, Op, PeerLimits};

/// File contents of a batch, one slot per operation (`None`: no content travels).
type Contents = Vec<Option<Bytes>>;

/// Operations per batch when splitting large pushes, which keeps the JSON header well
/// under the receiver's header limit.
const OPS_PER_BATCH: usize = 100_000;
/// Room counted for one operation's entry in a batch header, besides its path: the
/// JSON of an entry with both states (two digests, modes, owners, times) is under 400
/// bytes.
const HEADER_BYTES_PER_OP: usize = 1024;
/// Room counted for a batch's framing.
const BATCH_FRAMING_BYTES: usize = 1024;

/// Leaves out the files the peer would refuse as too large, reporting each as refused
/// (a dry run reports them as the real run does).
pub(super) fn without_oversized(
    ops: Vec<Op>,
    label: &str,
    limits: &PeerLimits,
    report: &mut PeerReport,
) -> Vec<Op> {
    let (ops, oversized): (Vec<Op>, Vec<Op>) = ops.into_iter().partition(|op| {
        !matches!(&op.action, Action::Put { entry: Entry { content: Content::File { size, .. }, .. } } if *size > limits.max_file_size)
    });
    for op in oversized {
        if let Action::Put {
            entry:
                Entry {
                    content: Content::File { size, .. },
                    ..
                },
        } = &op.action
        {
            report.changes.push(Change {
                peer: label.to_string(),
                path: op.path.clone(),
                status: ChangeStatus::Refused(format!(
                    "{size} bytes, over the peer's max_file_size ({} bytes)",
                    limits.max_file_size
                )),
            });
        }
    }
    ops
}

/// Sends the operations with their contents and records the outcome of each, telling
/// `progress` what is planned and each batch the peer answered.
pub(super) async fn push(
    config: &Config,
    peer: &Peer,
    ops: Vec<Op>,
    local: &LocalState,
    limits: &PeerLimits,
    progress: &Progress,
    report: &mut PeerReport,
) {
    let label = peer.remote.label.clone();
    let mut ops = ops;
    let mut contents: Contents = Vec::with_capacity(ops.len());
    // Not sent this time; worth trying again (the read may succeed later).
    let mut unreadable: Vec<(usize, String)> = Vec::new();
    let mut sizes: Vec<(usize, u64)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let scanned = match &op.action {
            Action::Put {
                entry:
                    Entry {
                        content: Content::File { sha256, .. },
                        ..
                    },
            } if op.needs_content().is_some() => sha256,
            _ => {
                contents.push(None);
                continue;
            }
        };
        match local.content(config, &op.path, scanned) {
            Ok(bytes) => {
                // The bytes hash to the planned digest; the size that frames them on
                // the wire is theirs by construction.
                sizes.push((i, bytes.len() as u64));
                contents.push(Some(bytes));
            }
            Err(Unsendable::Changed) => {
                report.changed_locally.push(op.path.clone());
                let reason = "changed on this node during the sync; run the sync again";
                unreadable.push((i, reason.to_string()));
                contents.push(None);
            }
            Err(Unsendable::Unreadable(reason)) => {
                unreadable.push((i, reason));
                contents.push(None);
            }
        }
    }
    for (i, size) in sizes {
        if let Action::Put { entry } = &mut ops[i].action {
            if let Content::File { size: framed, .. } = &mut entry.content {
                *framed = size;
            }
        }
    }
    // Drop operations whose content could not be read (and report them).
    let mut batch_ops = Vec::new();
    let mut batch_contents = Vec::new();
    for (i, (op, content)) in ops.into_iter().zip(contents).enumerate() {
        if let Some((_, reason)) = unreadable.iter().find(|(j, _)| *j == i) {
            report.changes.push(Change {
                peer: label.clone(),
                path: op.path,
                status: ChangeStatus::Failed(reason.clone()),
            });
            continue;
        }
        batch_ops.push(op);
        batch_contents.push(content);
    }
    progress.tell(ProgressEvent::Planned {
        peer: label.clone(),
        operations: batch_ops.len(),
        bytes: content_bytes(&batch_contents),
    });

    for (ops, contents) in split_batches(batch_ops, batch_contents, limits) {
        let sent = ProgressEvent::Sent {
            peer: label.clone(),
            operations: ops.len(),
            bytes: content_bytes(&contents),
        };
        let header = BatchHeader {
            ops,
            foreign_owners: !crate::apply::applies_owners(),
        };
        let mut body = vec![Bytes::from(protocol::encode_batch_header(&header))];
        body.extend(contents.into_iter().flatten());
        let bytes: usize = body.iter().map(Bytes::len).sum();
        match send(peer, body).await {
            Ok(response) if response.results.len() != header.ops.len() => {
                // Every operation is answered, or none is trusted: a path left out would
                // otherwise count as delivered.
                report.error = Some(format!(
                    "the peer answered {} results for {} operations",
                    response.results.len(),
                    header.ops.len()
                ));
                return;
            }
            Ok(response) => {
                debug!(operations = header.ops.len(), bytes, "batch sent");
                report.bytes_sent += bytes as u64;
                progress.tell(sent);
                report
                    .actions
                    .extend(response.actions.into_iter().map(|action| ActionLine {
                        peer: label.clone(),
                        report: action,
                    }));
                for (op, result) in header.ops.iter().zip(response.results) {
                    if let Some(found) = result.found {
                        report.peer_holds.push((op.path.clone(), found.entry));
                    }
                    report.changes.push(Change {
                        peer: label.clone(),
                        path: op.path.clone(),
                        status: ChangeStatus::of(result.outcome, op.change()),
                    });
                }
            }
            Err(e) => {
                report.refused = e.is_refusal();
                report.error = Some(e.to_string());
                return;
            }
        }
    }
}

/// Bytes of file content among `contents`.
fn content_bytes(contents: &Contents) -> u64 {
    contents.iter().flatten().map(|c| c.len() as u64).sum()
}

/// Longest a push keeps sending a batch again to a peer that is busy (503, too many
/// applies under way) or reset the connection, before it reports the failure.
const BUSY_RETRY_BOUND: Duration = Duration::from_secs(30);
/// First wait before sending a batch again to a busy peer; doubled each time.
const BUSY_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two tries on a busy peer.
const BUSY_RETRY_MAX: Duration = Duration::from_secs(2);

/// Sends one batch, again and again while the peer is busy or resets the connection,
/// within [`BUSY_RETRY_BOUND`]. Sending a batch twice is safe: the receiver treats an
/// operation whose path already holds the wanted state as done.
async fn send(peer: &Peer, body: Vec<Bytes>) -> Result<ApplyResponse, PeerError> {
    let deadline = Instant::now() + BUSY_RETRY_BOUND;
    let mut wait = BUSY_RETRY_FIRST;
    loop {
        match peer.apply_chunks(body.clone()).await {
            Err(e) if e.is_momentary() && Instant::now() + wait < deadline => {
                debug!(error = %e, wait_ms = wait.as_millis() as u64, "peer busy: sending again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(BUSY_RETRY_MAX);
            }
            answer => return answer,
        }
    }
}

/// Splits operations into batches that fit the receiver's limits: the body size (the
/// contents plus a generous allowance for each operation's line in the header) and the
/// number of operations. Almost every sync is one batch.
fn split_batches(
    ops: Vec<Op>,
    contents: Contents,
    limits: &PeerLimits,
) -> Vec<(Vec<Op>, Contents)> {
    let budget = limits.max_request_size as usize;
    let most = limits.max_batch_entries.min(OPS_PER_BATCH);
    let mut batches = vec![(Vec::new(), Vec::new())];
    let mut used = BATCH_FRAMING_BYTES;
    for (op, content) in ops.into_iter().zip(contents) {
        let size = content.as_ref().map_or(0, |c| c.len()) + op.path.len() + HEADER_BYTES_PER_OP;
        let current = batches.last_mut().expect("one batch");
        if (used + size > budget || current.0.len() >= most) && !current.0.is_empty() {
            batches.push((Vec::new(), Vec::new()));
            used = BATCH_FRAMING_BYTES;
        }
        used += size;
        let current = batches.last_mut().expect("one batch");
        current.0.push(op);
        current.1.push(content);
    }
    batches
}
