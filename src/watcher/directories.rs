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

/// A running filesystem watch, with which directory it found at each configured path
/// when it last looked; dropping it stops watching.
pub struct Watch {
    kernel: kernel::Watch,
    /// One per configured directory, in the configuration's order.
    seen: Vec<Option<DirectoryIdentity>>,
}

/// Watches every configured directory that exists, recursively, never following a
/// symbolic link out of it. Where a directory below one cannot be watched (a daemon not
/// running as root, a subdirectory it may not read), the rest of the tree is still
/// watched, as `sync` still scans it, and that one is skipped with a warning. Only
/// running out of watches, or a configured directory that cannot be watched at all, is
/// an error.
///
/// Each directory's identity is taken before it is watched, and kept: a directory that
/// appears (or is replaced) after that, even before the daemon's first check, is one
/// the check sees as new, and watches.
pub fn watch(config: &Config, queue: Queue) -> anyhow::Result<Watch> {
    let kernel = kernel::Watch::start(queue)
        .map_err(|e| anyhow::anyhow!("cannot start the filesystem watcher: {}", describe(&e)))?;
    let mut seen = Vec::with_capacity(config.directories.len());
    for dir in &config.directories {
        let local = config.local_path(&dir.path);
        let identity = directory_identity(&local);
        seen.push(identity);
        if identity.is_none() {
            warn!(directory = %dir.path, "configured directory is missing: not watched");
            continue;
        }
        kernel
            .watch_tree(&local)
            .map_err(|e| anyhow::anyhow!("cannot watch {}: {}", dir.path, describe(&e)))?;
    }
    Ok(Watch { kernel, seen })
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
pub(super) fn rewatch(config: &Config, watch: &mut Watch) -> Vec<PathBuf> {
    let mut appeared = Vec::new();
    let Watch { kernel, seen } = watch;
    for (dir, known) in config.directories.iter().zip(seen.iter_mut()) {
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
        kernel.unwatch(&local);
        match kernel.watch_tree(&local) {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_directory_made_between_start_up_and_the_first_check_is_watched() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::testing::config_at(tmp.path(), "");
        let local = config.local_path("/etc/app");
        let (queue, _receiver) = Queue::new(8, Arc::default(), None, None);
        let mut watch = watch(&config, queue).unwrap();
        // The daemon is up, its first check not yet made: the directory appears.
        std::fs::create_dir_all(&local).unwrap();
        assert_eq!(rewatch(&config, &mut watch), vec![local.clone()]);
        assert_eq!(rewatch(&config, &mut watch), Vec::<PathBuf>::new());
        // Replaced by another directory at the same path: watched again.
        std::fs::remove_dir(&local).unwrap();
        assert_eq!(rewatch(&config, &mut watch), Vec::<PathBuf>::new());
        std::fs::create_dir(&local).unwrap();
        assert_eq!(rewatch(&config, &mut watch), vec![local]);
    }

    #[test]
    fn a_directory_there_at_start_up_is_not_reported_as_new() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::testing::config_at(tmp.path(), "");
        std::fs::create_dir_all(config.local_path("/etc/app")).unwrap();
        let (queue, _receiver) = Queue::new(8, Arc::default(), None, None);
        let mut watch = watch(&config, queue).unwrap();
        assert_eq!(rewatch(&config, &mut watch), Vec::<PathBuf>::new());
    }
}
