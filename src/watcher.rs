//! Automatic propagation: filesystem events -> bursts -> the engine.
//!
//! The notify callback only converts events and `try_send`s them on a bounded channel; it
//! never blocks. When the channel is full it asks for a rescan instead. The propagation
//! loop coalesces events per path until the configured quiet period (`debounce`) passes,
//! scans the paths touched, compares them with this node's [`Versions`], and pushes the
//! difference to every peer through the one engine.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::manifest;
use crate::server::Node;
use crate::sync::{ChangeStatus, Engine};
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

/// Watches every configured directory that exists, recursively.
pub fn watch(config: &Config, tx: mpsc::Sender<Signal>) -> anyhow::Result<Watch> {
    let mut debouncer = new_debouncer(NOTIFY_WINDOW, None, move |result: DebounceEventResult| {
        match result {
            Ok(events) => {
                let mut paths = Vec::new();
                let mut rescan = false;
                for event in events {
                    rescan |= event.need_rescan();
                    paths.extend(event.event.paths);
                }
                let signal = if rescan {
                    Signal::Rescan
                } else {
                    Signal::Changed(paths)
                };
                // Never block the watcher: a full queue becomes a rescan.
                if tx.try_send(signal).is_err() {
                    let _ = tx.try_send(Signal::Rescan);
                }
            }
            Err(errors) => {
                for e in errors {
                    warn!("watcher: {}", describe(&e));
                }
                let _ = tx.try_send(Signal::Rescan);
            }
        }
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
pub async fn propagate(
    engine: Arc<Engine>,
    node: Arc<Node>,
    versions: Arc<Versions>,
    mut rx: mpsc::Receiver<Signal>,
) {
    let config = engine.config().clone();
    while let Some(first) = rx.recv().await {
        let mut burst = Burst::default();
        burst.add(&config, first);
        // Coalesce per path until the group has been quiet for the debounce window.
        loop {
            match tokio::time::timeout(config.debounce, rx.recv()).await {
                Ok(Some(signal)) => burst.add(&config, signal),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let scope: Vec<String> = if burst.rescan || burst.paths.len() > MAX_SCOPED_PATHS {
            Vec::new()
        } else if burst.paths.is_empty() {
            continue;
        } else {
            burst.paths.into_iter().collect()
        };
        push_burst(&engine, &node, &versions, scope).await;
    }
}

async fn push_burst(engine: &Engine, node: &Node, versions: &Versions, scope: Vec<String>) {
    let config = engine.config().clone();
    let cache = node.cache.clone();
    let scan_scope = scope.clone();
    let scan = tokio::task::spawn_blocking(move || manifest::scan(&config, &scan_scope, &cache))
        .await
        .expect("scan task");
    let ops = versions.take_changes(&scan, &scope, node.owners);
    if ops.is_empty() {
        debug!(
            paths = scope.len(),
            "no change to push (a write received from a peer, or undone)"
        );
        return;
    }
    let report = engine.push_ops(ops, scan).await;
    for peer in &report.peers {
        if !peer.changes.is_empty() {
            node.stats.pushes.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(e) = &peer.error {
            error!(peer = %peer.peer, "push failed: {e}");
        }
        for change in &peer.changes {
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
