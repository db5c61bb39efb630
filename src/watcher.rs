//! Automatic propagation: filesystem events -> bursts -> the engine.
//!
//! The notify callback only converts events and `try_send`s them on a bounded channel; it
//! never blocks. When the channel is full it asks for a rescan instead. The propagation
//! loop coalesces events per path until the configured quiet period (`debounce`) passes,
//! scans the paths touched, compares them with this node's [`Versions`], and hands the
//! difference to each peer's [`Outbox`], which a task per peer delivers through the one
//! engine, retrying with backoff while that peer is unreachable.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, error, info, warn};

use crate::actions;
use crate::config::Config;
use crate::manifest::{self, Manifest};
use crate::paths::is_within;
use crate::plan::plan;
use crate::protocol::{Entry, Op};
use crate::server::Node;
use crate::sync::{ChangeStatus, Engine, PeerReport};
use crate::versions::Versions;

/// Signals the channel from the watcher to the propagation loop can hold.
pub const WATCH_QUEUE_SIGNALS: usize = 4096;
/// The notify debouncer's own window: it pairs renames and drops duplicate events.
const NOTIFY_WINDOW: Duration = Duration::from_millis(50);
/// Beyond this many changed paths in one burst, everything is rescanned instead: as
/// cheap with the hash cache, and it keeps the scope test linear.
const MAX_SCOPED_PATHS: usize = 512;

/// What the watcher tells the propagation loop.
#[derive(Debug)]
pub enum Signal {
    /// These local paths changed.
    Changed(Vec<PathBuf>),
    /// Events were lost: compare everything.
    Rescan,
}

/// A running filesystem watch; dropping it stops watching.
pub type Watch = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// The watcher's side of the queue to the propagation loop.
///
/// The callback never blocks: it `try_send`s. When the queue is full, events are lost,
/// so it raises `lost` instead, which the loop turns into a rescan the next time it
/// looks (after every signal it receives and at every directory check), so a full queue
/// can never drop the request to rescan.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Signal>,
    lost: Arc<AtomicBool>,
}

impl Queue {
    /// A queue of `capacity` signals, and the receiving end for [`propagate`].
    pub fn new(capacity: usize) -> (Queue, QueueReceiver) {
        let (tx, rx) = mpsc::channel(capacity);
        let lost = Arc::new(AtomicBool::new(false));
        (
            Queue {
                tx,
                lost: lost.clone(),
            },
            QueueReceiver { rx, lost },
        )
    }

    /// Hands one debounced batch of notify's results on, without blocking.
    fn forward(&self, result: DebounceEventResult) {
        let signal = match result {
            Ok(events) => {
                let mut paths = Vec::new();
                let mut rescan = false;
                for event in events {
                    // The kernel's queue overflowed, or the backend asks for a rescan.
                    rescan |= event.need_rescan();
                    // Opening or reading a file changes nothing, and the daemon reads
                    // files itself (scanning, sending): only writes count.
                    if is_read_only(&event.event.kind) {
                        continue;
                    }
                    paths.extend(event.event.paths);
                }
                if rescan {
                    Signal::Rescan
                } else if paths.is_empty() {
                    return;
                } else {
                    Signal::Changed(paths)
                }
            }
            Err(errors) => {
                for e in errors {
                    warn!("watcher: {}", describe(&e));
                }
                Signal::Rescan
            }
        };
        if self.tx.try_send(signal).is_err() {
            self.lost.store(true, Ordering::SeqCst);
        }
    }
}

/// The propagation loop's side of the queue.
pub struct QueueReceiver {
    rx: mpsc::Receiver<Signal>,
    lost: Arc<AtomicBool>,
}

impl QueueReceiver {
    /// Whether signals were dropped since the last call (the queue was full).
    fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::SeqCst)
    }
}

/// Watches every configured directory that exists, recursively.
pub fn watch(config: &Config, queue: Queue) -> anyhow::Result<Watch> {
    let mut debouncer = new_debouncer(NOTIFY_WINDOW, None, move |result: DebounceEventResult| {
        queue.forward(result)
    })
    .map_err(|e| anyhow::anyhow!("cannot start the filesystem watcher: {}", describe(&e)))?;
    for dir in &config.directories {
        let local = config.local_path(&dir.path);
        if !local.is_dir() {
            warn!(directory = %dir.path, "configured directory is missing: not watched");
            continue;
        }
        debouncer
            .watch(&local, RecursiveMode::Recursive)
            .map_err(|e| anyhow::anyhow!("cannot watch {}: {}", dir.path, describe(&e)))?;
    }
    Ok(debouncer)
}

/// Whether an event only says that a file was opened, read or closed unmodified.
fn is_read_only(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => true,
        _ => false,
    }
}

/// Words for watch errors; running out of inotify watches names the sysctl to raise.
fn describe(err: &notify::Error) -> String {
    match &err.kind {
        notify::ErrorKind::MaxFilesWatch => {
            "out of inotify watches: raise fs.inotify.max_user_watches (for example \
             `sysctl fs.inotify.max_user_watches=524288`)"
                .to_string()
        }
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(28) => {
            "out of inotify watches (ENOSPC): raise fs.inotify.max_user_watches (for example \
             `sysctl fs.inotify.max_user_watches=524288`)"
                .to_string()
        }
        _ => err.to_string(),
    }
}

/// Turns bursts of signals into pushes, until the channel closes.
///
/// It owns the watch (`None` when the daemon does not watch): every
/// [`DIRECTORY_CHECK_INTERVAL`] it checks that each configured directory is still the
/// one watched, so that a directory missing at start-up is watched once it appears and
/// one deleted and re-created is watched again, and rescanned either way.
pub async fn propagate(
    engine: Arc<Engine>,
    node: Arc<Node>,
    versions: Arc<Versions>,
    outboxes: Vec<Arc<Outbox>>,
    mut queue: QueueReceiver,
    mut watch: Option<Watch>,
) {
    let config = engine.config().clone();
    let mut watched: Vec<Option<DirectoryIdentity>> = config
        .directories
        .iter()
        .map(|d| directory_identity(&config.local_path(&d.path)))
        .collect();
    let mut check = tokio::time::interval(DIRECTORY_CHECK_INTERVAL);
    // Directories whose last changes failed their validation.
    let mut held_back: BTreeSet<String> = BTreeSet::new();
    loop {
        let first = tokio::select! {
            signal = queue.rx.recv() => match signal {
                Some(signal) => signal,
                None => return,
            },
            _ = check.tick() => {
                if queue.take_lost() {
                    Signal::Rescan
                } else {
                let Some(watch) = watch.as_mut() else { continue };
                let appeared = rewatch(&config, watch, &mut watched);
                if appeared.is_empty() {
                    continue;
                }
                Signal::Changed(appeared)
                }
            }
        };
        let mut burst = Burst::default();
        burst.add(&config, first);
        // Coalesce per path until the group has been quiet for the debounce window.
        loop {
            match tokio::time::timeout(config.debounce, queue.rx.recv()).await {
                Ok(Some(signal)) => burst.add(&config, signal),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        // Signals dropped on a full queue: their paths are unknown, so compare everything.
        burst.rescan |= queue.take_lost();
        // A configured directory itself was touched (removed, replaced): check now rather
        // than at the next tick, which could miss a quick delete-and-recreate.
        if let Some(watch) = watch.as_mut() {
            if config
                .directories
                .iter()
                .any(|d| burst.paths.contains(&d.path))
            {
                let appeared = rewatch(&config, watch, &mut watched);
                burst.add(&config, Signal::Changed(appeared));
            }
        }
        if burst.rescan {
            warn!("watcher: events were lost (kernel queue overflow or watch error): rescanning every configured directory");
        }
        let scope: Vec<String> = if burst.rescan || burst.paths.len() > MAX_SCOPED_PATHS {
            Vec::new()
        } else if burst.paths.is_empty() {
            continue;
        } else {
            // A directory held back by a failed validation is compared whole again, so
            // that the fix brings every change that waited.
            let mut paths = burst.paths;
            for dir in &held_back {
                if paths.iter().any(|p| is_within(p, dir)) {
                    paths.insert(dir.clone());
                }
            }
            paths.into_iter().collect()
        };
        let refused = push_burst(&engine, &node, &versions, &outboxes, scope.clone()).await;
        held_back.retain(|dir| !(scope.is_empty() || scope.contains(dir)));
        held_back.extend(refused);
    }
}

/// How often the configured directories themselves are checked.
pub const DIRECTORY_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Which directory is at a path: device, inode and birth time (where the filesystem
/// records one, since a re-created directory often gets the freed inode number back);
/// `None` when it is missing.
type DirectoryIdentity = (u64, u64, Option<std::time::SystemTime>);

fn directory_identity(path: &std::path::Path) -> Option<DirectoryIdentity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino(), m.created().ok()))
}

/// Watches configured directories that appeared or were replaced since the last check;
/// returns their local paths, to be rescanned.
fn rewatch(
    config: &Config,
    watch: &mut Watch,
    watched: &mut [Option<DirectoryIdentity>],
) -> Vec<PathBuf> {
    let mut appeared = Vec::new();
    for (dir, known) in config.directories.iter().zip(watched.iter_mut()) {
        let local = config.local_path(&dir.path);
        let now = directory_identity(&local);
        if now == *known {
            continue;
        }
        *known = now;
        if now.is_none() {
            warn!(directory = %dir.path, "configured directory disappeared: watched again when it reappears");
            continue;
        }
        let _ = watch.unwatch(&local);
        match watch.watch(&local, RecursiveMode::Recursive) {
            Ok(()) => {
                info!(directory = %dir.path, "configured directory (re)appeared: watching it");
                appeared.push(local);
            }
            Err(e) => {
                *known = None;
                warn!(directory = %dir.path, "cannot watch: {}", describe(&e));
            }
        }
    }
    appeared
}

/// Scans a burst's paths, takes the difference from this node's versions, and hands
/// it to every peer's outbox.
async fn push_burst(
    engine: &Engine,
    node: &Node,
    versions: &Versions,
    outboxes: &[Arc<Outbox>],
    scope: Vec<String>,
) -> Vec<String> {
    let config = engine.config().clone();
    let cache = node.cache.clone();
    let scan_scope = scope.clone();
    // Not while a received batch is being written: see `Node::hold_applies`.
    let quiet = node.hold_applies().await;
    let mut scan =
        tokio::task::spawn_blocking(move || manifest::scan(&config, &scan_scope, &cache))
            .await
            .expect("scan task");
    // A directory whose changes fail its own validation is not pushed: its paths are
    // left out (their versions stay what the peers hold), until an edit fixes it.
    let config = engine.config();
    let mut refused = Vec::new();
    if actions::validates(config, actions::Side::Local) {
        let touched = config.by_directory(versions.peek_changes(&scan, &scope, node.owners));
        for (dir, why) in actions::validate(config, &touched, actions::Side::Local).await {
            let reason = format!("validation failed on this node: {why}");
            error!("not pushing the changes of {dir}: {reason}; fix it here and save again");
            scan.unreadable.push((dir.clone(), reason));
            refused.push(dir);
        }
    }
    let ops = versions.take_changes(&scan, &scope, node.owners);
    drop(quiet);
    // The directories' own on_change commands, for local changes.
    for (dir_path, paths) in config.by_directory(ops.iter().map(|op| op.path.clone())) {
        let Some(dir) = config.directory_of(&dir_path) else {
            continue;
        };
        if dir.actions.on_change.is_empty() || !dir.actions.run_on.on_local() {
            continue;
        }
        let runner = node.runner.clone();
        let actions = dir.actions.clone();
        let (local_dir, local_paths) = actions::local_paths(config, &dir_path, &paths);
        tokio::spawn(async move { runner.on_change(&local_dir, &actions, local_paths).await });
    }
    if ops.is_empty() {
        debug!(
            paths = scope.len(),
            "no change to push (a write received from a peer, or undone)"
        );
        return refused;
    }
    for outbox in outboxes {
        outbox.merge(&ops);
    }
    refused
}

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
    fn merge(&self, ops: &[Op]) {
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
        let mut pending = other.pending.lock().expect("outbox lock");
        for (path, expect) in taken {
            pending.insert(path, expect);
        }
        drop(pending);
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

/// The logical paths a burst touched, or a request to rescan.
#[derive(Default)]
struct Burst {
    paths: BTreeSet<String>,
    rescan: bool,
}

impl Burst {
    fn add(&mut self, config: &Config, signal: Signal) {
        match signal {
            Signal::Rescan => self.rescan = true,
            Signal::Changed(paths) => {
                for local in paths {
                    if let Some(logical) = config.logical_path(&local) {
                        self.paths.insert(logical);
                    }
                }
            }
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

    fn event(kind: EventKind, path: &str) -> notify_debouncer_full::DebouncedEvent {
        notify_debouncer_full::DebouncedEvent::new(
            notify::Event::new(kind).add_path(PathBuf::from(path)),
            std::time::Instant::now(),
        )
    }

    fn modified(path: &str) -> notify_debouncer_full::DebouncedEvent {
        event(EventKind::Modify(notify::event::ModifyKind::Any), path)
    }

    fn received(queue: &mut QueueReceiver) -> Vec<Signal> {
        std::iter::from_fn(|| queue.rx.try_recv().ok()).collect()
    }

    #[test]
    fn a_full_queue_turns_into_a_rescan_instead_of_blocking_or_losing_it() {
        let (queue, mut receiver) = Queue::new(1);
        queue.forward(Ok(vec![modified("/r/etc/app/a")]));
        // The queue is full: this batch (even a rescan request) cannot be queued.
        queue.forward(Ok(vec![modified("/r/etc/app/b")]));
        queue.forward(Err(vec![notify::Error::generic("boom")]));
        let signals = received(&mut receiver);
        assert!(
            matches!(&signals[..], [Signal::Changed(p)] if p == &[PathBuf::from("/r/etc/app/a")]),
            "{signals:?}"
        );
        assert!(receiver.take_lost(), "the dropped batches ask for a rescan");
        assert!(!receiver.take_lost(), "once");
    }

    #[test]
    fn an_overflow_notice_or_a_watch_error_asks_for_a_rescan() {
        let (queue, mut receiver) = Queue::new(8);
        let mut overflow = event(EventKind::Other, "/r/etc/app");
        overflow.event = overflow.event.set_flag(notify::event::Flag::Rescan);
        queue.forward(Ok(vec![modified("/r/etc/app/a"), overflow]));
        queue.forward(Err(vec![notify::Error::generic("backend failed")]));
        let signals = received(&mut receiver);
        assert!(
            matches!(&signals[..], [Signal::Rescan, Signal::Rescan]),
            "{signals:?}"
        );
        assert!(!receiver.take_lost());
    }

    #[test]
    fn reads_alone_send_nothing() {
        let (queue, mut receiver) = Queue::new(8);
        queue.forward(Ok(vec![
            event(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/r/a"),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/r/a",
            ),
        ]));
        assert!(received(&mut receiver).is_empty());
        queue.forward(Ok(vec![event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/r/a",
        )]));
        assert_eq!(
            received(&mut receiver).len(),
            1,
            "closing after a write counts"
        );
    }

    #[test]
    fn running_out_of_inotify_watches_names_the_sysctl_to_raise() {
        for err in [
            notify::Error::new(notify::ErrorKind::MaxFilesWatch),
            notify::Error::io(std::io::Error::from_raw_os_error(28)),
        ] {
            let text = describe(&err);
            assert!(
                text.contains("fs.inotify.max_user_watches") && text.contains("524288"),
                "{text}"
            );
        }
        assert!(!describe(&notify::Error::generic("other")).contains("inotify"));
    }

    #[test]
    fn local_paths_outside_the_configured_directories_are_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::testing::config_at(tmp.path(), "");
        let mut burst = Burst::default();
        burst.add(
            &config,
            Signal::Changed(vec![
                tmp.path().join("etc/app/x.cfg"),
                tmp.path().join("etc/other/y"),
                PathBuf::from("/elsewhere/z"),
            ]),
        );
        assert_eq!(
            burst.paths.into_iter().collect::<Vec<_>>(),
            ["/etc/app/x.cfg"]
        );
        assert!(!burst.rescan);
    }
}
