//! Sending planned operations to one peer: leaving out what the peer would refuse as too
//! large, splitting the rest into batches that fit the peer's limits, streaming each
//! batch with its contents read from disk as they go (and sending it again without a
//! file that changed since the scan) while the peer applies the one before, and turning
//! the peer's answers into changes and action lines.
//!
//! It does not plan or choose what to send: the caller hands it the operations.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::debug;

use super::contents::Sharer;
use super::peer::PeerTerms;
use super::{ActionLine, Change, ChangeStatus, PeerReport, Progress, ProgressEvent};
use crate::client::{Begun, Peer, PeerError};
use crate::config::Config;
use crate::paths::is_within;
use crate::plan::{Plan, Planned};
use crate::protocol::frames::{self, Frames, FRAME_BYTES};
use crate::protocol::{self, ApplyAnswer, Content, Outcome, PeerLimits};
use crate::tree::Parents;

/// Operations per batch when splitting large pushes, which keeps the JSON header well
/// under the receiver's header limit.
const OPS_PER_BATCH: usize = 100_000;
/// Operations per batch where the receiver runs no command for the batch as a whole
/// (see [`DirectoryInfo::together`](crate::protocol::DirectoryInfo)): both ends hold a
/// batch's operations while it is under way, a few hundred bytes each, so a large push
/// (an initial sync) goes in batches of this many, and its memory does not grow with the
/// tree. Each batch costs one request and one flush on the receiver. Its answer, a
/// result of about 60 bytes per operation, comes at once: the sender's connection
/// grows its read buffer to hold it (4096 operations made that 400 KiB per peer).
const OPS_PER_SPLIT_BATCH: usize = 2048;
/// Room counted for one operation's entry in a batch header, besides its path: the
/// JSON of an entry with both states (two digests, modes, owners, times) is under 400
/// bytes.
const HEADER_BYTES_PER_OP: usize = 1024;
/// Room counted for a batch's framing.
const BATCH_FRAMING_BYTES: usize = 1024;

/// Leaves out the files the peer would refuse as too large, reporting each as refused
/// (a dry run reports them as the real run does). The plan stays shared with other
/// peers unless there is one.
pub(super) fn without_oversized(
    ops: Arc<Plan>,
    limits: &PeerLimits,
    report: &mut PeerReport,
) -> Arc<Plan> {
    let size = |op: &Planned<'_>| match op.put.map(|entry| &entry.content) {
        Some(Content::File { size, .. }) => *size,
        _ => 0,
    };
    let too_large = |op: &Planned<'_>| size(op) > limits.max_file_size;
    if !ops.ops().iter().any(too_large) {
        return ops;
    }
    for op in ops.ops().iter().filter(|op| too_large(op)) {
        report.changes.push(Change {
            path: op.path.clone(),
            status: ChangeStatus::Refused(
                format!(
                    "{} bytes, over the peer's max_file_size ({} bytes)",
                    size(op),
                    limits.max_file_size
                )
                .into(),
            ),
        });
    }
    Arc::new(ops.retain(|op| !too_large(op)))
}

/// Sends the operations with their contents and records the outcome of each, telling
/// `progress` what is planned and each batch the peer answered.
///
/// Contents are read from disk as they are sent, never held. A file whose content no
/// longer is the planned one (another size; or another mtime, and then another hash),
/// that is written while it is sent, or that cannot be read, ends that request; the
/// batch is sent again without it, and it is reported. The receiver checks every hash,
/// so a change that keeps the size and the mtime makes it refuse the batch whole rather
/// than take the wrong bytes.
///
/// Each batch is sent once the answer to the one before has begun (the peer holds that
/// one's turn to be applied, see [`protocol::APPLY_ROUTE`]), so that the peer receives a
/// batch while it applies the one before, and applies them in order; the answers are
/// read in order. The batch that makes a configured directory is answered before the
/// next is sent, since the contents that follow may be received in that directory; so
/// is every batch to a peer that takes one apply request at a time.
///
/// `ops` is the plan, which peers planned alike share: each batch is the indices of its
/// operations in it.
pub(super) async fn push(
    config: &Arc<Config>,
    peer: &Peer,
    plan: Arc<Plan>,
    terms: &PeerTerms,
    progress: &Progress,
    contents: &Arc<Sharer>,
    report: &mut PeerReport,
) {
    let label = peer.remote.label.clone();
    let ops = plan.ops();
    progress.tell(ProgressEvent::Planned {
        peer: label.clone(),
        operations: ops.len(),
        bytes: content_bytes(ops.iter()),
    });
    // The batch sent before, whose answer has begun and not ended: it holds its turn to
    // be applied before the one being sent, which is received meanwhile.
    let mut answering: Option<Answering> = None;
    for mut indices in split_batches(config, ops, terms) {
        // Whether a try of this batch may have been applied without its answer arriving.
        let mut maybe_applied = false;
        let begun = loop {
            if indices.is_empty() {
                break None;
            }
            let batch = Arc::new(Outgoing::new(plan.clone(), indices));
            let sent = begin(peer, config, &batch, contents, &mut maybe_applied).await;
            let fault = batch.fault.lock().expect("fault lock").take();
            match (sent, fault) {
                // A file of this batch could not be sent as planned: the peer was told the
                // request failed, so it applied nothing. Again without it.
                (Err(_), Some(fault)) => {
                    let mut rest = batch.indices.clone();
                    let op = &ops[rest.remove(fault.index)];
                    let reason = match fault.why {
                        Unsendable::Changed => {
                            report.changed_locally.push(op.path.to_string());
                            "changed on this node during the sync; run the sync again".to_string()
                        }
                        Unsendable::Unreadable(reason) => reason,
                    };
                    if maybe_applied {
                        report.maybe_applied.push(op.path.to_string());
                    }
                    report.changes.push(Change {
                        path: op.path.clone(),
                        status: ChangeStatus::Failed(reason.into()),
                    });
                    indices = rest;
                }
                (Err(e), None) => {
                    if let Some(before) = answering.take() {
                        settle(before, peer, config, contents, progress, report).await;
                    }
                    report.fail(&e);
                    return;
                }
                (Ok(begun), _) => break Some(Answering { batch, begun }),
            }
        };
        if let Some(before) = answering.take() {
            if !settle(before, peer, config, contents, progress, report).await {
                return;
            }
        }
        let Some(begun) = begun else {
            continue;
        };
        // What follows may be received in the directory this batch makes; a peer that
        // takes one request at a time would answer the next one busy.
        let first = begun
            .batch
            .ops()
            .any(|op| makes_configured_directory(config, op));
        if first || terms.limits.max_concurrent_applies < 2 {
            if !settle(begun, peer, config, contents, progress, report).await {
                return;
            }
        } else {
            answering = Some(begun);
        }
    }
    if let Some(last) = answering {
        settle(last, peer, config, contents, progress, report).await;
    }
}

/// A batch the peer has received whole, whose answer is under way.
struct Answering {
    batch: Arc<Outgoing>,
    begun: Begun,
}

/// Reads the answer to a batch and turns it into changes, sending the batch again if the
/// answer was cut off by a busy or reset connection (the receiver treats what is
/// already in place as done). Returns whether the push goes on; if not, the peer's
/// error is in `report`.
async fn settle(
    answering: Answering,
    peer: &Peer,
    config: &Arc<Config>,
    contents: &Arc<Sharer>,
    progress: &Progress,
    report: &mut PeerReport,
) -> bool {
    let Answering { batch, begun } = answering;
    let answer = match peer.apply_answer::<ApplyAnswer>(begun).await {
        Err(e) if e.is_momentary() => {
            debug!(error = %e, "answer cut off: sending the batch again");
            let mut maybe_applied = true;
            match begin(peer, config, &batch, contents, &mut maybe_applied).await {
                Ok(begun) => peer.apply_answer::<ApplyAnswer>(begun).await,
                Err(e) => Err(e),
            }
        }
        answer => answer,
    };
    let response = match answer {
        Ok(response) => response,
        Err(e) => {
            report.fail(&e);
            return false;
        }
    };
    let plan = &batch.plan;
    let ops = plan.ops();
    let answered = response.applied.unwrap_or(response.results.len());
    if answered != batch.indices.len()
        || (response.applied.is_some() && !response.results.is_empty())
    {
        // Every operation is answered, or none is trusted: a path left out would
        // otherwise count as delivered.
        report.error = Some(format!(
            "the peer answered {answered} results for {} operations",
            batch.indices.len()
        ));
        return false;
    }
    let bytes = content_bytes(batch.ops());
    debug!(operations = batch.indices.len(), bytes, "batch sent");
    report.bytes_sent += batch.body_length();
    let label = &peer.remote.label;
    progress.tell(ProgressEvent::Sent {
        peer: label.clone(),
        operations: batch.indices.len(),
        bytes,
    });
    report
        .actions
        .extend(response.actions.into_iter().map(|action| ActionLine {
            peer: label.clone(),
            report: action,
        }));
    // What was done as planned is kept as its place in the plan, which the report
    // then holds (see `Changes`). A brief answer (`applied`): every operation applied.
    let mut results = response.results.into_iter();
    for &index in &batch.indices {
        let op = &ops[index];
        let (outcome, found) = match response.applied {
            Some(_) => (Outcome::Applied, None),
            None => {
                let result = results.next().expect("as many results as operations");
                (result.outcome, result.found)
            }
        };
        if let Some(found) = found {
            report.peer_holds.push((op.path.to_string(), found.entry));
        }
        match ChangeStatus::of(outcome, op.change()) {
            ChangeStatus::Done(_) => report.changes.push_done(plan, index),
            status => report.changes.push(Change {
                path: op.path.clone(),
                status,
            }),
        }
    }
    true
}

/// Bytes of file content the operations carry.
fn content_bytes<'a, 'e: 'a>(ops: impl Iterator<Item = &'a Planned<'e>>) -> u64 {
    ops.filter_map(Planned::needs_content).sum()
}

/// Why a planned file could not be sent.
enum Unsendable {
    /// It was written again since the scan; a later scan will pick the new version up.
    Changed,
    Unreadable(String),
}

/// A batch being sent: the operations at `indices` of the plan `plan`, and what went
/// wrong on this side while its contents were read, if anything.
struct Outgoing {
    plan: Arc<Plan>,
    indices: Vec<usize>,
    /// The length of the encoded header, as it opens the body. The header itself is
    /// serialised into the body's frames as they go: it is megabytes for a large batch.
    head_length: u64,
    fault: Mutex<Option<Fault>>,
}

/// The header of an [`Outgoing`] batch, serialised as a [`BatchHeader`] of its
/// operations without copying them.
#[derive(serde::Serialize)]
struct SentHeader<'a> {
    ops: Picked<'a>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    foreign_owners: bool,
}

/// The operations at `indices` of `plan`, serialised as a sequence.
struct Picked<'a> {
    plan: &'a [Planned<'a>],
    indices: &'a [usize],
}

impl serde::Serialize for Picked<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.indices.iter().map(|&i| &self.plan[i]))
    }
}

/// A file that could not be sent as planned: the index of its operation, and why.
struct Fault {
    index: usize,
    why: Unsendable,
}

impl Outgoing {
    fn new(plan: Arc<Plan>, indices: Vec<usize>) -> Outgoing {
        let mut batch = Outgoing {
            plan,
            indices,
            head_length: 0,
            fault: Mutex::new(None),
        };
        batch.head_length = protocol::batch_header_length(&batch.header());
        batch
    }

    /// Its operations, in order.
    fn ops(&self) -> impl Iterator<Item = &Planned<'_>> {
        let ops = self.plan.ops();
        self.indices.iter().map(|&i| &ops[i])
    }

    fn header(&self) -> SentHeader<'_> {
        SentHeader {
            ops: Picked {
                plan: self.plan.ops(),
                indices: &self.indices,
            },
            foreign_owners: !crate::tree::applies_owners(),
        }
    }

    /// The length of the body: the header's framing and every content.
    fn body_length(&self) -> u64 {
        self.head_length + content_bytes(self.ops())
    }
}

/// The body of a batch as a stream: the header, then each content read from disk as
/// the request goes, by a blocking task of its own. A file that no longer matches its
/// operation is recorded as the batch's fault and ends the stream with an error.
fn body_of(
    config: &Arc<Config>,
    batch: &Arc<Outgoing>,
    contents: &Arc<Sharer>,
) -> (reqwest::Body, u64) {
    let length = batch.body_length();
    let (tx, stream) = frames::channel();
    let (config, batch, contents) = (config.clone(), batch.clone(), contents.clone());
    tokio::task::spawn_blocking(move || {
        let mut frames = Frames::new(&tx);
        if protocol::write_batch_header(&batch.header(), batch.head_length, &mut frames).is_err() {
            // The request is gone: serialising a header cannot fail otherwise.
            return;
        }
        let mut parents = Parents::default();
        for (index, op) in batch.ops().enumerate() {
            if op.needs_content().is_none() {
                continue;
            }
            let planned = (batch.indices[index], op);
            if let Err(why) = send_file(&config, &mut parents, planned, &contents, &mut frames) {
                let Some(why) = why else { return };
                *batch.fault.lock().expect("fault lock") = Some(Fault { index, why });
                let _ = tx.blocking_send(Err(io::Error::other("a file changed while it was sent")));
                return;
            }
        }
        let _ = frames.finish();
    });
    (reqwest::Body::wrap_stream(stream), length)
}

/// Adds one file's content, as planned by `op` (operation `index` of the plan), to the
/// frames: as another push of the run read it, if it left it in `contents`, or read
/// from disk now (and left there for the others). `Err(None)`: the request is gone
/// (nothing more to send); `Err(Some(why))`: the file cannot be sent as planned.
fn send_file(
    config: &Config,
    parents: &mut Parents,
    (index, op): (usize, &Planned<'_>),
    contents: &Sharer,
    frames: &mut Frames<'_>,
) -> Result<(), Option<Unsendable>> {
    let Some(entry) = op.put else {
        return Ok(());
    };
    let Content::File { size, sha256 } = &entry.content else {
        return Ok(());
    };
    let size = *size;
    let shares = contents.shares(size);
    if shares {
        if let Some(bytes) = contents.take(index, sha256) {
            return frames.write_all(&bytes).map_err(|_| None);
        }
    }
    let unreadable = |e: &dyn std::fmt::Display| {
        Some(Unsendable::Unreadable(format!(
            "cannot read the local file: {e}"
        )))
    };
    let dir = config.directory_of(&op.path).ok_or_else(|| {
        Some(Unsendable::Unreadable(
            "outside the configured directories".into(),
        ))
    })?;
    let (parent, name) = parents
        .parent(config, dir, &op.path)
        .map_err(|e| Some(Unsendable::Unreadable(e.to_string())))?;
    let (fd, before) =
        crate::tree::open_regular_with_stat(&parent, &name).map_err(|e| unreadable(&e))?;
    if before.st_size as u64 != size {
        return Err(Some(Unsendable::Changed));
    }
    let mtime =
        |st: &rustix::fs::Stat| crate::manifest::nanos(st.st_mtime, st.st_mtime_nsec as i64);
    if mtime(&before) != entry.mtime_ns {
        // Touched since it was planned, or planned from a record of its version: its
        // content decides.
        let mut file = std::fs::File::from(fd.try_clone().map_err(|e| unreadable(&e))?);
        let hashed = crate::manifest::hash_reader(&mut file).map_err(|e| unreadable(&e))?;
        if hashed != *sha256 {
            return Err(Some(Unsendable::Changed));
        }
        rustix::fs::seek(&fd, rustix::fs::SeekFrom::Start(0)).map_err(|e| unreadable(&e))?;
    }
    let mut file = std::fs::File::from(fd);
    let mut kept = shares.then(|| Vec::with_capacity(size as usize));
    let mut left = size;
    while left > 0 {
        let frame = &mut frames.frame;
        let start = frame.len();
        let want = (FRAME_BYTES - start).min(usize::try_from(left).unwrap_or(usize::MAX));
        frame.resize(start + want, 0);
        let read = file.read(&mut frame[start..]);
        frame.truncate(start + *read.as_ref().unwrap_or(&0));
        let n = match read {
            Ok(0) => return Err(Some(Unsendable::Changed)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unreadable(&e)),
        };
        left -= n as u64;
        if let Some(kept) = &mut kept {
            kept.extend_from_slice(&frames.frame[start..start + n]);
        }
        if frames.frame.len() >= FRAME_BYTES {
            frames.send().map_err(|_| None)?;
        }
    }
    // Written meanwhile: what was sent may be a mix of two versions.
    let after = rustix::fs::fstat(&file).map_err(|e| unreadable(&e))?;
    let stamp = |st: &rustix::fs::Stat| (st.st_size, mtime(st), st.st_ctime, st.st_ctime_nsec);
    if stamp(&after) != stamp(&before) {
        return Err(Some(Unsendable::Changed));
    }
    if let Some(kept) = kept {
        contents.keep(index, *sha256, kept);
    }
    Ok(())
}
/// Longest a push keeps sending a batch again to a peer that is busy (503, too many
/// applies under way) or reset the connection, before it reports the failure.
const BUSY_RETRY_BOUND: Duration = Duration::from_secs(30);
/// First wait before sending a batch again to a busy peer; doubled each time.
const BUSY_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two tries on a busy peer.
const BUSY_RETRY_MAX: Duration = Duration::from_secs(2);

/// Sends one batch until its answer begins, again and again while the peer is busy
/// (503, too many applies under way) or resets the connection, within
/// [`BUSY_RETRY_BOUND`]. Sending a batch twice is safe: the receiver treats an operation
/// whose path already holds the wanted state as done. A try whose body failed on this
/// side is not repeated: the caller drops the file at fault first.
///
/// `maybe_applied` is set once a try ends that way: a connection reset after the request
/// went out may have left the batch applied, whatever the later tries say.
async fn begin(
    peer: &Peer,
    config: &Arc<Config>,
    batch: &Arc<Outgoing>,
    contents: &Arc<Sharer>,
    maybe_applied: &mut bool,
) -> Result<Begun, PeerError> {
    let deadline = Instant::now() + BUSY_RETRY_BOUND;
    let mut wait = BUSY_RETRY_FIRST;
    loop {
        let (body, length) = body_of(config, batch, contents);
        match peer.apply_begin(body, length).await {
            Err(e)
                if e.is_momentary()
                    && batch.fault.lock().expect("fault lock").is_none()
                    && Instant::now() + wait < deadline =>
            {
                debug!(error = %e, wait_ms = wait.as_millis() as u64, "peer busy: sending again");
                *maybe_applied = true;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(BUSY_RETRY_MAX);
            }
            begun => return begun,
        }
    }
}

/// Whether `op` makes a configured directory, which the contents of later batches are
/// received in.
fn makes_configured_directory(config: &Config, op: &Planned<'_>) -> bool {
    op.put.is_some_and(|entry| entry.content.is_dir())
        && config.directories.iter().any(|d| d.path == op.path)
}

/// Splits operations into batches that fit the receiver's limits: the body size (the
/// contents plus a generous allowance for each operation's line in the header) and the
/// number of operations. A configured directory the peer lacks is made by a batch of its
/// own first, so that the contents that follow have a place to be received in.
///
/// A batch that holds an operation of a directory the peer judges as a whole (`validate`,
/// `on_change`: see `terms`) grows to those limits only, so that the peer sees all of
/// the push's changes there at once (almost every sync is one batch). Any other batch
/// ends at [`OPS_PER_SPLIT_BATCH`] operations.
fn split_batches<'a>(
    config: &'a Config,
    ops: &'a [Planned<'a>],
    terms: &'a PeerTerms,
) -> impl Iterator<Item = Vec<usize>> + 'a {
    let budget = terms.limits.max_request_size as usize;
    let most = terms.limits.max_batch_entries.min(OPS_PER_BATCH);
    let top = move |op: &Planned<'_>| makes_configured_directory(config, op);
    let together = |op: &Planned<'_>| {
        terms
            .directories
            .iter()
            .any(|d| d.together && is_within(&op.path, &d.path))
    };
    let tops: Vec<usize> = (0..ops.len()).filter(|&i| top(&ops[i])).collect();
    // Made as the push goes: the batches of a plan of 100,000 operations are not held.
    let mut rest = ops
        .iter()
        .enumerate()
        .filter(move |(_, op)| !top(op))
        .peekable();
    let others = std::iter::from_fn(move || {
        // Whether `batch` holds an operation of a directory judged as a whole.
        let (mut batch, mut used, mut whole) = (Vec::new(), BATCH_FRAMING_BYTES, false);
        while let Some(&(index, op)) = rest.peek() {
            let size =
                op.needs_content().unwrap_or(0) as usize + op.path.len() + HEADER_BYTES_PER_OP;
            let full = used + size > budget
                || batch.len() >= most
                || (!whole && batch.len() >= OPS_PER_SPLIT_BATCH);
            if full && !batch.is_empty() {
                break;
            }
            used += size;
            whole |= together(op);
            batch.push(index);
            rest.next();
        }
        (!batch.is_empty()).then_some(batch)
    });
    (!tops.is_empty()).then_some(tops).into_iter().chain(others)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Action, BatchHeader, Entry, Op};
    use crate::testing::{config_at, put};

    /// The batches of `ops` for a peer of `terms`, as indices.
    fn batches_of(config: &Config, ops: &[Op], terms: &PeerTerms) -> Vec<Vec<usize>> {
        let plan = Plan::of_ops(ops.to_vec());
        split_batches(config, plan.ops(), terms).collect()
    }

    #[test]
    fn batches_keep_the_order_and_the_limits_with_the_configured_directory_first() {
        let config = config_at(std::path::Path::new("/srv/node"), "");
        let mut top = put("/etc/app", b"");
        top.action = Action::Put {
            entry: Entry {
                content: Content::Dir,
                ..crate::testing::file_entry(b"")
            },
        };
        let files: Vec<Op> = (0..10)
            .map(|i| put(&format!("/etc/app/{i}"), &[b'x'; 600]))
            .collect();
        let mut ops = files.clone();
        ops.insert(3, top.clone());
        let limits = PeerLimits {
            // Room for three of these operations per request.
            max_request_size: (BATCH_FRAMING_BYTES + 3 * (600 + 10 + HEADER_BYTES_PER_OP)) as u64,
            max_file_size: 1 << 20,
            max_batch_entries: 100,
            max_concurrent_applies: 1,
        };
        let picked = |batches: &[Vec<usize>], ops: &[Op]| -> Vec<Vec<Op>> {
            batches
                .iter()
                .map(|b| b.iter().map(|&i| ops[i].clone()).collect())
                .collect()
        };
        let terms = |limits: PeerLimits| PeerTerms {
            directories: Vec::new(),
            limits,
        };
        let batches = picked(&batches_of(&config, &ops, &terms(limits)), &ops);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 3, 3, 3, 1]);
        assert_eq!(batches[0], [top]);
        assert_eq!(batches[1..].concat(), files);

        let limits = PeerLimits {
            max_batch_entries: 4,
            max_request_size: 1 << 30,
            ..limits
        };
        let batches = picked(&batches_of(&config, &files, &terms(limits)), &files);
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert_eq!(batches.concat(), files);
    }

    #[test]
    fn a_large_push_goes_in_bounded_batches_but_a_directory_judged_as_a_whole_in_one() {
        let config = config_at(std::path::Path::new("/srv/node"), "");
        let n = OPS_PER_SPLIT_BATCH;
        let ops = |dir: &str, count: usize| -> Vec<Op> {
            (0..count)
                .map(|i| put(&format!("{dir}/{i:06}"), b"x"))
                .collect()
        };
        let directory = |path: &str, together: bool| crate::protocol::DirectoryInfo {
            path: path.into(),
            exclude: Vec::new(),
            present: true,
            together,
        };
        let sizes = |ops: &[Op], directories: Vec<crate::protocol::DirectoryInfo>| {
            let terms = PeerTerms {
                directories,
                limits: PeerLimits::default(),
            };
            let batches = batches_of(&config, ops, &terms);
            assert_eq!(
                batches.concat(),
                (0..ops.len()).collect::<Vec<_>>(),
                "every operation once, in order"
            );
            batches.iter().map(Vec::len).collect::<Vec<_>>()
        };
        // No commands on the peer: bounded batches.
        let plain = ops("/etc/app", 2 * n + 10);
        let free = vec![directory("/etc/app", false), directory("/etc/web", true)];
        assert_eq!(sizes(&plain, free.clone()), [n, n, 10]);
        // The peer validates /etc/web: its operations stay together, with those that
        // follow them in the batch, up to the peer's own limits.
        let mut mixed = ops("/etc/app", n + 5);
        mixed.extend(ops("/etc/web", 2 * n));
        mixed.extend(ops("/etc/zzz", 3));
        let web = |ops: &[Op], batch: &[usize]| {
            batch
                .iter()
                .filter(|&&i| ops[i].path.starts_with("/etc/web/"))
                .count()
        };
        let terms = PeerTerms {
            directories: free,
            limits: PeerLimits::default(),
        };
        let batches = batches_of(&config, &mixed, &terms);
        let lengths: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(lengths, [n, 5 + 2 * n + 3]);
        assert_eq!(
            web(&mixed, &batches[1]),
            2 * n,
            "all of /etc/web in one batch"
        );
        // A peer that judges nothing gets the same push in bounded batches.
        let none = vec![directory("/etc/web", false)];
        assert_eq!(sizes(&mixed, none), [n, n, n, 5 + 3]);
    }

    #[test]
    fn a_header_streamed_through_frames_is_the_encoded_header() {
        // Long enough to span several frames.
        let ops = (0..5_000)
            .map(|i| put(&format!("/etc/app/{i:05}.conf"), i.to_string().as_bytes()))
            .collect();
        let header = BatchHeader::new(ops);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let mut frames = Frames::new(&tx);
        let length = protocol::batch_header_length(&header);
        protocol::write_batch_header(&header, length, &mut frames).unwrap();
        frames.send().unwrap();
        drop(tx);
        let mut body = Vec::new();
        let mut count = 0;
        while let Some(frame) = rx.blocking_recv() {
            let frame = frame.unwrap();
            assert!(frame.len() <= FRAME_BYTES);
            body.extend_from_slice(&frame);
            count += 1;
        }
        assert!(count > 2, "{count} frames");
        assert_eq!(body, protocol::encode_batch_header(&header));
        assert_eq!(body.len() as u64, length);
        let read = protocol::BatchReader::start(&body[..]).unwrap();
        assert_eq!(read.header.ops, header.ops);
    }
}
