//! The configured directories as watched: starting the recursive watch on each, and
//! telling which directory is at each path (its identity) so that one that appears, or
//! is deleted and re-created, is watched again.
//!
//! It only watches and reports the local paths to rescan; it does not scan, compare or
//! push.

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn};

use super::kernel;
use super::queue::{describe, Queue};
use crate::config::Config;

/// A running filesystem watch; dropping it stops watching.
pub type Watch = kernel::Watch;

/// Watches every configured directory that exists, recursively, never following a
/// symbolic link out of it. Where a directory below one cannot be watched (a daemon not
/// running as root, a subdirectory it may not read), the rest of the tree is still
/// watched, as `sync` still scans it, and that one is skipped with a warning. Only
/// running out of watches, or a configured directory that cannot be watched at all, is
/// an error.
pub fn watch(config: &Config, queue: Queue) -> anyhow::Result<Watch> {
    let watch = Watch::start(queue)
        .map_err(|e| anyhow::anyhow!("cannot start the filesystem watcher: {}", describe(&e)))?;
    for dir in &config.directories {
        let local = config.local_path(&dir.path);
        if !local.is_dir() {
            warn!(directory = %dir.path, "configured directory is missing: not watched");
            continue;
        }
        watch
            .watch_tree(&local)
            .map_err(|e| anyhow::anyhow!("cannot watch {}: {}", dir.path, describe(&e)))?;
    }
    Ok(watch)
}

/// How often the configured directories themselves are checked.
pub const DIRECTORY_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Which directory is at a path: device, inode and birth time (where the filesystem
/// records one, since a re-created directory often gets the freed inode number back);
/// `None` when it is missing.
pub(super) type DirectoryIdentity = (u64, u64, Option<std::time::SystemTime>);

pub(super) fn directory_identity(path: &std::path::Path) -> Option<DirectoryIdentity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_dir())
        .map(|m| (m.dev(), m.ino(), m.created().ok()))
}

/// Watches configured directories that appeared or were replaced since the last check;
/// returns their local paths, to be rescanned.
pub(super) fn rewatch(
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
        watch.unwatch(&local);
        match watch.watch_tree(&local) {
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
