//! Automatic propagation: filesystem events -> bursts -> the engine.
//!
//! The notify callback only converts events and `try_send`s them on a bounded channel; it
//! never blocks. When the channel is full it asks for a rescan instead. The propagation
//! loop coalesces events per path until the configured quiet period (`debounce`) passes,
//! scans the paths touched, compares them with this node's [`Versions`], and hands the
//! difference to each peer's [`Outbox`], which a task per peer delivers through the one
//! engine, retrying with backoff while that peer is unreachable.
//!
//! This file holds that loop: [`propagate`] gathers a burst and hands its changes to the
//! outboxes. The rest is in child modules: `queue` (the notify callback's side, [`Signal`]
//! and the lost flag), `directories` (starting the watch, directory identity and
//! re-watching) and `outbox` (the per-peer [`Outbox`] and [`deliver`], with retry and
//! backoff).

mod directories;
mod outbox;
mod queue;

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::{debug, error, warn};

use self::directories::{directory_identity, rewatch, DirectoryIdentity};
pub use self::directories::{watch, Watch, DIRECTORY_CHECK_INTERVAL};
pub use self::outbox::{deliver, Held, Known, Outbox};
pub use self::queue::{Queue, QueueReceiver, Signal, WATCH_QUEUE_SIGNALS};
use crate::actions;
use crate::config::Config;
use crate::manifest;
use crate::paths::is_within;
use crate::server::Node;
use crate::sync::Engine;
use crate::versions::Versions;

/// Beyond this many changed paths in one burst, everything is rescanned instead: as
/// cheap with the hash cache, and it keeps the scope test linear.
const MAX_SCOPED_PATHS: usize = 512;

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
        let refused = push_burst(&engine, &node, &versions, scope.clone()).await;
        held_back.retain(|dir| !(scope.is_empty() || scope.contains(dir)));
        held_back.extend(refused);
    }
}
/// Scans a burst's paths, takes the difference from this node's versions, and hands
/// it to every peer's outbox.
async fn push_burst(
    engine: &Engine,
    node: &Node,
    versions: &Versions,
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
    for (dir, paths) in config.by_directory(ops.iter().map(|op| op.path.clone())) {
        let runner = node.runner.clone();
        let config = node.config.clone();
        tokio::spawn(async move {
            actions::on_change(&runner, &config, &dir, &paths, actions::Side::Local).await
        });
    }
    if ops.is_empty() {
        debug!(
            paths = scope.len(),
            "no change to push (a write received from a peer, or undone)"
        );
        return refused;
    }
    let records = node.peers.get().map(Vec::as_slice).unwrap_or_default();
    for record in records {
        record.outbox.merge(&ops);
    }
    // On disk before it counts as queued: a restart from here on delivers it.
    if let Some(spool) = &node.spool {
        let spool = spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.save(true)).await;
    }
    for record in records {
        record.outbox.wake();
    }
    refused
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
    use std::path::PathBuf;

    use super::*;

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
