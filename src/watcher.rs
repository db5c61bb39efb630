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
pub use self::outbox::{deliver, Held, Known, Outbox, Sent};
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
        touch(&node, &versions, burst.add(&config, first));
        // Coalesce per path until the group has been quiet for the debounce window.
        loop {
            match tokio::time::timeout(config.debounce, queue.rx.recv()).await {
                Ok(Some(signal)) => touch(&node, &versions, burst.add(&config, signal)),
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
        // A path gone that was never known: a name that came and went unseen.
        let fleeting = scope.iter().any(|p| {
            versions.get(p).is_none() && std::fs::symlink_metadata(config.local_path(p)).is_err()
        });
        let (mut refused, changed) = push_burst(&engine, &node, &versions, scope.clone()).await;
        if !scope.is_empty() && (changed || fleeting) {
            // The debouncer can lose events (a file renamed then deleted at once, a
            // file moved in and deleted within its window: nothing is reported). Once
            // a burst of local edits is handed to the deliveries, every path known is
            // looked for (one lstat each, nothing read, no batch held up), and those
            // gone are pushed as deletions. Not after a burst that was only the writes
            // of received batches. Only deletions: a file found changed may be half
            // written, and its own events bring it.
            let (config, known) = (config.clone(), versions.clone());
            let gone = tokio::task::spawn_blocking(move || {
                known
                    .paths()
                    .into_iter()
                    .filter(|p| std::fs::symlink_metadata(config.local_path(p)).is_err())
                    .collect::<Vec<String>>()
            })
            .await
            .expect("sweep task");
            if !gone.is_empty() {
                debug!(paths = gone.len(), "deletions the events missed");
                refused.extend(push_burst(&engine, &node, &versions, gone).await.0);
            }
        }
        held_back.retain(|dir| !(scope.is_empty() || scope.contains(dir)));
        held_back.extend(refused);
    }
}
/// Scans a burst's paths, takes the difference from this node's versions, and hands
/// it to every peer's outbox. Returns the directories held back by their own failed
/// validation, and whether anything changed.
async fn push_burst(
    engine: &Engine,
    node: &Node,
    versions: &Versions,
    scope: Vec<String>,
) -> (Vec<String>, bool) {
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
        // What the burst touched and did not change is not delivered.
        for record in node.peers.get().into_iter().flatten() {
            record.outbox.drop_provisional();
        }
        if let Some(spool) = node.spool.clone() {
            let _ = tokio::task::spawn_blocking(move || spool.save(false)).await;
        }
        return (refused, false);
    }
    let records = node.peers.get().map(Vec::as_slice).unwrap_or_default();
    for record in records {
        record.outbox.merge(&ops, |path| {
            config.directory_of(path).map(|dir| dir.path.clone())
        });
        record.outbox.drop_provisional();
    }
    // On disk before it counts as queued: a restart from here on delivers it.
    if let Some(spool) = &node.spool {
        let spool = spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.save(true)).await;
    }
    for record in records {
        record.outbox.wake();
    }
    (refused, true)
}

/// Spools the paths a burst touches as soon as they are seen, each with the version
/// the peers are expected to hold (see [`Outbox::touch`]): a daemon killed before the
/// burst ends delivers them when it starts again. A directory gone from disk takes
/// everything known below it (its deletion may be reported for the directory alone).
fn touch(node: &Arc<Node>, versions: &Arc<Versions>, paths: Vec<String>) {
    if paths.is_empty() || node.spool.is_none() || node.applying() {
        return;
    }
    // Not awaited: the quiet-period timer must not wait for a file to be flushed.
    let (node, versions) = (node.clone(), versions.clone());
    tokio::task::spawn_blocking(move || touch_now(&node, &versions, &paths));
}

/// [`touch`], on a thread that may block.
fn touch_now(node: &Node, versions: &Versions, paths: &[String]) {
    let (Some(spool), Some(records)) = (&node.spool, node.peers.get()) else {
        return;
    };
    // Writes of a received batch are not this node's edits: touched now, they would be
    // spooled against versions not recorded yet, and pushed back. (Once the batch is
    // done its versions are recorded, and a touch finds nothing to deliver.)
    if paths.is_empty() || records.is_empty() || node.applying() {
        return;
    }
    // Only what this node synchronises: excluded and temporary names never travel.
    let mut touched: Vec<_> = Vec::new();
    for path in paths {
        if crate::apply::confine(&node.config, path).is_err() {
            continue;
        }
        let known = versions.get(path);
        let local = node.config.local_path(path);
        match std::fs::symlink_metadata(&local) {
            // A directory gone: everything known below it goes with it.
            Err(_) if known.as_ref().is_some_and(|e| e.content.is_dir()) => {
                touched.extend(versions.below(path));
            }
            // A directory made or moved in: what it holds comes with it.
            Ok(meta) if meta.is_dir() => {
                let below = walkdir::WalkDir::new(&local)
                    .min_depth(1)
                    .follow_links(false)
                    .into_iter()
                    .filter_map(Result::ok)
                    .filter_map(|e| node.config.logical_path(e.path()))
                    .filter(|p| crate::apply::confine(&node.config, p).is_ok())
                    .map(|p| {
                        let known = versions.get(&p);
                        (p, known)
                    });
                touched.extend(below);
            }
            _ => {}
        }
        touched.push((path.clone(), known));
    }
    if touched.is_empty() {
        return;
    }
    for record in records {
        record.outbox.touch(&touched);
    }
    spool.save(false);
}

/// The logical paths a burst touched, or a request to rescan.
#[derive(Default)]
struct Burst {
    paths: BTreeSet<String>,
    rescan: bool,
}

impl Burst {
    /// Adds a signal; returns the paths it adds.
    fn add(&mut self, config: &Config, signal: Signal) -> Vec<String> {
        let mut added = Vec::new();
        match signal {
            Signal::Rescan => self.rescan = true,
            Signal::Changed(paths) => {
                for local in paths {
                    if let Some(logical) = config.logical_path(&local) {
                        if self.paths.insert(logical.clone()) {
                            added.push(logical);
                        }
                    }
                }
            }
        }
        added
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
