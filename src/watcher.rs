//! Automatic propagation: filesystem events -> bursts -> the engine.
//!
//! The kernel watch's thread only converts events and appends them to a queue; it never
//! waits for the loop. The propagation loop gathers a burst until it is complete: every file it
//! touched closed or renamed into place, and the settle window (`debounce`) passed with
//! no new event (see [`Burst`]). It then scans the paths touched, compares them with
//! this node's [`Baseline`], and hands the difference to each peer's [`Outbox`], which
//! a task per peer delivers through the one engine, retrying with backoff while that
//! peer is unreachable. A receive-only node (`role`) hands them to no outbox and spools
//! nothing: its own edits are drift, reported as such ([`not_pushed`]).
//!
//! This file holds that loop: [`propagate`] gathers a burst and hands its changes to the
//! outboxes. The rest is in child modules: `kernel` (the kernel's watch and the
//! thread reading it), `queue` (that thread's side of the queue, and [`Change`]), `burst` (when a burst is complete), `writers` (which files processes
//! hold open for writing), `directories` (starting the watch,
//! directory identity and re-watching) and `deliver` ([`deliver`]: a task per peer that
//! empties its [`Outbox`](crate::node::Outbox), with retry and backoff).

mod burst;
mod deliver;
mod directories;
mod kernel;
mod queue;
mod toucher;
mod writers;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, error, warn};

use self::burst::{Burst, Overdue};
pub use self::deliver::deliver;
use self::directories::rewatch;
pub use self::directories::{watch, Watch, DIRECTORY_CHECK_INTERVAL};
pub use self::queue::{Change, ChangeKind, Queue, QueueReceiver, Taken, WATCH_QUEUE_EVENTS};
pub use self::toucher::{TouchHandle, Toucher};
use crate::baseline::Baseline;
use crate::hooks;
use crate::manifest::{self, Generation};
use crate::node::Node;
use crate::paths::is_within;
use crate::sync::Engine;

/// Beyond this many changed paths in one burst, the directories holding them are
/// scanned instead (see [`burst_scope`]): it keeps the scope test linear.
const MAX_SCOPED_PATHS: usize = 512;

/// Paths named in a receive-only node's warning about its local edits before it says
/// "and N more".
const LOCAL_EDITS_SHOWN: usize = 10;

/// Turns bursts of events into pushes, as long as the daemon watches.
///
/// It owns the watch (`None` when the daemon does not watch, and then it returns at
/// once): every [`DIRECTORY_CHECK_INTERVAL`] it checks that each configured directory
/// is still the one watched, so that a directory missing at start-up is watched once it
/// appears and one deleted and re-created is watched again, and rescanned either way.
/// `toucher` (none on a receive-only node) is waited for before a burst is scanned, so
/// that every path it touched is spooled first.
pub async fn propagate(
    engine: Arc<Engine>,
    node: Arc<Node>,
    baseline: Arc<Baseline>,
    queue: QueueReceiver,
    watch: Option<Watch>,
    toucher: Option<Toucher>,
) {
    let Some(mut watch) = watch else { return };
    let config = engine.config().clone();
    let mut check = tokio::time::interval(DIRECTORY_CHECK_INTERVAL);
    // Directories whose last changes failed their validation.
    let mut held_back: BTreeSet<String> = BTreeSet::new();
    let mut overdue = Overdue::new();
    loop {
        let first = tokio::select! {
            _ = queue.ready() => queue.take(),
            _ = check.tick() => {
                appeared(rewatch(&config, &mut watch), &node.generation)
            }
        };
        let mut burst = Burst::new(Instant::now());
        burst.add(&config, first, Instant::now(), &mut overdue);
        if burst.paths.is_empty() && !burst.rescan {
            continue;
        }
        // Gather until every file is complete and the settle window has passed.
        let mut batches_before = node.batches_written();
        let placed_before = node.placed.taken();
        loop {
            let now = Instant::now();
            let known = |path: &str| baseline.knows(path);
            if burst.complete(now, config.debounce, known) {
                break;
            }
            let version_known = |path: &std::path::Path, meta: &std::fs::Metadata| {
                use std::os::unix::fs::MetadataExt;
                let mtime_ns = crate::manifest::nanos(meta.mtime(), meta.mtime_nsec());
                config
                    .logical_path(path)
                    .is_some_and(|p| baseline.holds_file(&p, meta.size(), mtime_ns))
            };
            // A large burst while peers' batches are written here is taken between two
            // batches, once its files are complete, rather than when the pushes pause:
            // received back to back, the batches of an initial sync would otherwise
            // make one burst of the whole tree, held and scanned at once. The files the
            // batches put in place count, though their events were taken as no change:
            // the directories they made are in the burst, to be scanned.
            let placed = node.placed.taken().saturating_sub(placed_before);
            let between_batches = burst.paths.len() + placed >= crate::memory::LARGE_WORK
                && node.batches_written() != batches_before;
            if between_batches && !node.applying() {
                burst.recheck(
                    now,
                    |path| stat_in_tree(&config, path),
                    version_known,
                    writers::open_for_writing,
                );
                if burst.open() == 0 {
                    break;
                }
                // A file still being written here: this burst waits for it as any burst
                // does, looked at again at the end of the next batch.
                batches_before = node.batches_written();
            }
            let timing = (config.debounce, config.open_write_timeout);
            let mut wait = burst.wait(now, timing, known);
            if between_batches {
                wait = wait.min(BETWEEN_BATCHES_POLL);
            }
            if tokio::time::timeout(wait, queue.ready()).await.is_ok() {
                burst.add(&config, queue.take(), Instant::now(), &mut overdue);
                continue;
            }
            // While a received batch is being written, the files it links into place are
            // not recorded yet: looked at once it is done.
            if burst.open() > 0 && !node.applying() {
                burst.recheck(
                    Instant::now(),
                    |path| stat_in_tree(&config, path),
                    version_known,
                    writers::open_for_writing,
                );
                let late = burst.overdue(Instant::now(), config.open_write_timeout, &mut overdue);
                for local in late {
                    let path = config.logical_path(&local).unwrap_or_default();
                    warn!(
                        path = %path,
                        "open for writing for longer than open_write_timeout ({:?}): pushed as \
                         it is now, and written again without waiting for it to be closed; a \
                         file written this long is a log rather than a configuration: exclude it",
                        config.open_write_timeout
                    );
                }
            }
        }
        // A configured directory itself was touched (removed, replaced): check now rather
        // than at the next tick, which could miss a quick delete-and-recreate.
        if config
            .directories
            .iter()
            .any(|d| burst.paths.contains(&d.path))
        {
            let again = appeared(rewatch(&config, &mut watch), &node.generation);
            burst.add(&config, again, Instant::now(), &mut overdue);
        }
        if let Some(toucher) = &toucher {
            toucher.done().await;
        }
        if burst.rescan {
            warn!("watcher: events were lost (kernel queue overflow or watch error): rescanning every configured directory");
        }
        let scope: Vec<String> = if burst.rescan {
            Vec::new()
        } else {
            // A directory held back by a failed validation is compared whole again, so
            // that the fix brings every change that waited.
            let mut paths = burst.paths;
            for dir in &held_back {
                if paths.iter().any(|p| is_within(p, dir)) {
                    paths.insert(dir.clone());
                }
            }
            burst_scope(&config, paths)
        };
        let refused = push_burst(&engine, &node, &baseline, scope.clone()).await;
        held_back.retain(|dir| !(scope.is_empty() || scope.contains(dir)));
        held_back.extend(refused);
    }
}

/// How often a large burst looks for the end of the received batch being written (see
/// `propagate`).
const BETWEEN_BATCHES_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// What to scan for a burst that touched `paths`: the paths themselves, or, beyond
/// [`MAX_SCOPED_PATHS`], the directories holding them (their parents, then theirs, up to
/// the configured directories), so that a batch of thousands of files received from a
/// peer is scanned where it landed rather than with the whole tree. Empty (everything)
/// when the configured directories touched are still too many.
fn burst_scope(config: &crate::config::Config, mut paths: BTreeSet<String>) -> Vec<String> {
    while paths.len() > MAX_SCOPED_PATHS {
        // A directory with paths of the burst below it covers them as it is: going up
        // from it would scan its siblings for nothing (a batch received in one
        // directory touches the directory too, for its mtime).
        let holds_others = |path: &str| {
            let below = format!("{path}/");
            paths
                .range(below.clone()..)
                .next()
                .is_some_and(|next| next.starts_with(&below))
        };
        let up: BTreeSet<String> = paths
            .iter()
            .map(|path| {
                let parent = crate::paths::parent(path);
                match config.directory_of(parent) {
                    Some(_) if !holds_others(path) => parent.to_string(),
                    _ => path.clone(),
                }
            })
            .collect();
        if up == paths {
            return Vec::new();
        }
        paths = up;
    }
    // A path within another one of the scope adds nothing to it.
    let within_another = |path: &str| crate::paths::ancestors(path).any(|at| paths.contains(at));
    paths
        .iter()
        .filter(|path| !within_another(path))
        .cloned()
        .collect()
}

/// Configured directories that (re)appeared, as changes to rescan them. They were seen
/// by the check rather than by an event, but the tree changed all the same: counted in
/// `generation`.
fn appeared(directories: Vec<std::path::PathBuf>, generation: &Generation) -> Taken {
    if !directories.is_empty() {
        generation.bump_at(directories.iter().map(|d| d.as_path()));
    }
    Taken {
        changes: directories
            .into_iter()
            .map(|path| Change {
                path,
                kind: ChangeKind::CreatedDirectory,
            })
            .collect(),
        rescan: false,
    }
}

/// Scans a burst's paths, takes the difference from this node's versions, and hands
/// it to every peer's outbox. Returns the directories held back by their own failed
/// validation.
async fn push_burst(
    engine: &Engine,
    node: &Node,
    baseline: &Baseline,
    scope: Vec<String>,
) -> Vec<String> {
    let config = engine.config().clone();
    let cache = node.cache.clone();
    let scan_scope = scope.clone();
    // Not while a received batch is being written: see `Node::hold_applies`.
    let quiet = node.hold_applies().await;
    let scanning =
        tokio::task::spawn_blocking(move || manifest::scan(&config, &scan_scope, &cache));
    let Ok(mut scan) = scanning.await else {
        // The daemon is stopping (the scan's thread was cancelled): nothing is pushed,
        // and what the burst touched is in the spool for the next start.
        return Vec::new();
    };
    // A directory whose changes fail its own validation is not pushed: its paths are
    // left out (their versions stay what the peers hold), until an edit fixes it. A
    // receive-only node pushes nothing: there is nothing to hold back.
    let config = engine.config();
    let sends = config.role.sends();
    let mut refused = Vec::new();
    if sends && hooks::validates(config, crate::config::Side::Local) {
        let touched = config.by_directory(baseline.peek_changes(&scan, &scope, node.owners));
        for (dir, why) in hooks::validate(config, &touched, crate::config::Side::Local).await {
            let reason = format!("validation failed on this node: {why}");
            error!("not pushing the changes of {dir}: {reason}; fix it here and save again");
            scan.unreadable.push((dir.clone(), reason));
            refused.push(dir);
        }
    }
    let ops = baseline.take_changes(&scan, &scope, node.owners);
    drop(quiet);
    if scope.len().max(ops.len()) >= crate::memory::LARGE_WORK {
        crate::memory::give_back_soon();
    }
    // The directories' own on_change commands, for local changes.
    for (dir, paths) in config.by_directory(ops.iter().map(|op| op.path.to_string())) {
        let runner = node.runner.clone();
        let config = node.config.clone();
        tokio::spawn(async move {
            hooks::on_change(&runner, &config, &dir, &paths, crate::config::Side::Local).await
        });
    }
    if !sends {
        not_pushed(node, &ops);
        return refused;
    }
    if ops.is_empty() {
        debug!(
            paths = scope.len(),
            first = scope.first().map(String::as_str).unwrap_or("(everything)"),
            "no change to push (a write received from a peer, or undone)"
        );
        // What the burst touched and did not change is not delivered.
        for record in node.records() {
            record.outbox.drop_provisional(&scope);
        }
        if let Some(spool) = node.spool.clone() {
            let _ = tokio::task::spawn_blocking(move || spool.save(false)).await;
        }
        return refused;
    }
    let records = node.records();
    for record in records {
        record.outbox.merge(&ops, |path| {
            config.directory_of(path).map(|dir| dir.path.clone())
        });
        record.outbox.drop_provisional(&scope);
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

/// What a receive-only node does with its own edits instead of pushing them: nothing is
/// delivered or spooled; they are drift. Logged (a warning naming the paths and what to
/// do), noted as local edits not pushed, shown as drift with every peer at once, and
/// the comparison with the peers is asked for now, which says exactly what differs.
fn not_pushed(node: &Node, ops: &[crate::protocol::Op]) {
    if ops.is_empty() {
        debug!("no local edit (a write received from a peer, or undone)");
        return;
    }
    let paths: Vec<String> = ops.iter().map(|op| op.path.to_string()).collect();
    let shown = paths[..paths.len().min(LOCAL_EDITS_SHOWN)].join(", ");
    let more = match paths.len().saturating_sub(LOCAL_EDITS_SHOWN) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    warn!(
        paths = paths.len(),
        config = %node.config.file.display(),
        "not pushed: {shown}{more}; this node is receive-only: local edits are not pushed; \
         run `gosyncd revert PATH` to take the group's version back, or make the change on a \
         sending node"
    );
    node.local_edits.note(paths.iter().cloned());
    for record in node.records() {
        record.add_drift(&paths);
    }
    node.reconcile_now.notify_one();
}

/// What is at local path `path` in a configured directory, not following a link there
/// or on the way: each directory opened from its parent's descriptor, so that a path
/// longer than `PATH_MAX` (4,096 bytes, the `root` prefix included) is found too.
/// `None` when it is missing, outside the configured directories or behind a link.
fn stat_in_tree(
    config: &crate::config::Config,
    path: &std::path::Path,
) -> Option<std::fs::Metadata> {
    let logical = config.logical_path(path)?;
    let dir = config.directory_of(&logical)?;
    let (fd, name) = crate::tree::open_parent(config, dir, &logical).ok()?;
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let opened = rustix::fs::openat(&fd, name.as_str(), flags, Mode::empty()).ok()?;
    std::fs::File::from(opened).metadata().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::config_at;

    #[test]
    fn a_file_is_found_below_a_path_longer_than_path_max_and_never_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config_at(tmp.path(), "");
        // 20 directories of 250 bytes: a local path of over 5,000 bytes, which a call
        // taking the whole path refuses. Made from each one's descriptor.
        use rustix::fs::{Mode, OFlags};
        let mut logical = "/etc/app".to_string();
        std::fs::create_dir_all(config.local_path(&logical)).unwrap();
        let mut at: std::os::fd::OwnedFd = std::fs::File::open(config.local_path(&logical))
            .unwrap()
            .into();
        for i in 0..20 {
            let name = format!("{i:02}{}", "d".repeat(248));
            rustix::fs::mkdirat(&at, name.as_str(), Mode::from(0o755)).unwrap();
            at = rustix::fs::openat(&at, name.as_str(), OFlags::DIRECTORY, Mode::empty()).unwrap();
            logical = format!("{logical}/{name}");
        }
        let flags = OFlags::CREATE | OFlags::WRONLY;
        let file = rustix::fs::openat(&at, "f.conf", flags, Mode::from(0o644)).unwrap();
        rustix::io::write(&file, b"half").unwrap();
        let local = config.local_path(&format!("{logical}/f.conf"));
        assert!(local.as_os_str().len() > 5_000);
        assert!(
            std::fs::symlink_metadata(&local).is_err(),
            "too long for a path call"
        );
        let found = stat_in_tree(&config, &local).expect("found through descriptors");
        assert!(found.is_file());
        assert_eq!(found.len(), 4);
        // A link planted on the way, or as the file itself, is not followed.
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("f.conf"), "outside").unwrap();
        let planted = config.local_path("/etc/app/planted");
        std::os::unix::fs::symlink(&outside, &planted).unwrap();
        assert!(stat_in_tree(&config, &planted.join("f.conf")).is_none());
        let link = stat_in_tree(&config, &planted).expect("the link itself");
        assert!(link.file_type().is_symlink());
        assert!(
            stat_in_tree(&config, &outside.join("f.conf")).is_none(),
            "outside"
        );
        assert!(stat_in_tree(&config, &config.local_path("/etc/app/none")).is_none());
    }

    fn scope_of(paths: impl IntoIterator<Item = String>) -> Vec<String> {
        let config = config_at(std::path::Path::new("/srv/node"), "");
        burst_scope(&config, paths.into_iter().collect())
    }

    #[test]
    fn a_large_burst_is_scanned_in_the_directories_holding_it_not_the_whole_tree() {
        // Few paths: themselves.
        let few = scope_of(["/etc/app/a".into(), "/etc/app/d/b".into()]);
        assert_eq!(few, ["/etc/app/a", "/etc/app/d/b"]);
        // A batch of 3,000 files in 3 directories: those directories.
        let batch = (0..3_000).map(|i| format!("/etc/app/conf{}.d/f{i:05}", i % 3));
        assert_eq!(
            scope_of(batch),
            ["/etc/app/conf0.d", "/etc/app/conf1.d", "/etc/app/conf2.d"]
        );
        // Spread over 1,000 directories in 2: up one more level.
        let spread = (0..3_000).map(|i| format!("/etc/app/{}/{}/f{i}", i % 2, i % 1_000));
        assert_eq!(scope_of(spread), ["/etc/app/0", "/etc/app/1"]);
        // A directory and others within it: the directory alone covers them.
        let nested = (0..600)
            .map(|i| format!("/etc/app/d/f{i}"))
            .chain(["/etc/app/d/sub/x".to_string(), "/etc/app/e/y".to_string()]);
        assert_eq!(scope_of(nested), ["/etc/app/d", "/etc/app/e"]);
        // Never above the configured directory.
        let top = (0..600).map(|i| format!("/etc/app/f{i}"));
        assert_eq!(scope_of(top), ["/etc/app"]);
        // A batch received in new directories touches them too: they are scanned, not
        // the configured directory holding them.
        let new = (0..3_000)
            .map(|i| format!("/etc/app/new/conf{}.d/f{i:05}", i % 3))
            .chain(["/etc/app/new".into(), "/etc/app/new/conf0.d".into()]);
        assert_eq!(scope_of(new), ["/etc/app/new"]);
        let touched = (0..3_000)
            .map(|i| format!("/etc/app/a/conf{}.d/f{i:05}", i % 3))
            .chain(["/etc/app/a/conf0.d".into(), "/etc/app/a/conf1.d".into()]);
        assert_eq!(
            scope_of(touched),
            [
                "/etc/app/a/conf0.d",
                "/etc/app/a/conf1.d",
                "/etc/app/a/conf2.d"
            ]
        );
    }
}
