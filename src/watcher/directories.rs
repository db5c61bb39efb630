//! The configured directories as watched: starting the recursive watch on each, and
//! telling which directory is at each path (its identity) so that one that appears, or
//! is deleted and re-created, is watched again.
//!
//! It only watches and reports the local paths to rescan; it does not scan, compare or
//! push.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tracing::{info, warn};

use super::queue::{describe, is_out_of_watches, Queue};
use crate::config::Config;

/// A running filesystem watch; dropping it stops watching.
///
/// notify's own watcher, without a debouncer: every event arrives as the kernel
/// reports it, closes and renames included, which is what tells a finished file from
/// one still being written.
pub type Watch = notify::RecommendedWatcher;

/// Watches every configured directory that exists, recursively, never following a
/// symbolic link out of it.
pub fn watch(config: &Config, queue: Queue) -> anyhow::Result<Watch> {
    let settings = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = notify::RecommendedWatcher::new(
        move |result: notify::Result<notify::Event>| queue.forward(result),
        settings,
    )
    .map_err(|e| anyhow::anyhow!("cannot start the filesystem watcher: {}", describe(&e)))?;
    for dir in &config.directories {
        let local = config.local_path(&dir.path);
        if !local.is_dir() {
            warn!(directory = %dir.path, "configured directory is missing: not watched");
            continue;
        }
        watch_tree(&mut watcher, &local)
            .map_err(|e| anyhow::anyhow!("cannot watch {}: {}", dir.path, describe(&e)))?;
    }
    Ok(watcher)
}

/// Watches `top` recursively. Where a directory below it cannot be watched (a daemon
/// not running as root, a subdirectory it may not read), the rest of the tree is still
/// watched, as `sync` still scans it: `top` alone and each of its subdirectories as a
/// tree of its own, down to the ones that cannot be, which are skipped with a warning.
/// Only running out of watches is an error.
pub(super) fn watch_tree(watcher: &mut Watch, top: &std::path::Path) -> notify::Result<()> {
    let denied = match watcher.watch(top, RecursiveMode::Recursive) {
        Ok(()) => return Ok(()),
        Err(e) if is_out_of_watches(&e) => return Err(e),
        Err(e) => e,
    };
    let _ = watcher.unwatch(top);
    if let Err(e) = watcher.watch(top, RecursiveMode::NonRecursive) {
        if is_out_of_watches(&e) {
            return Err(e);
        }
        warn!(directory = %top.display(), "cannot watch: {}: its changes are found by the next sync or comparison", describe(&e));
        return Ok(());
    }
    let children = match std::fs::read_dir(top) {
        Ok(children) => children,
        Err(e) => {
            warn!(directory = %top.display(), error = %e, "cannot list (watching it alone): {}", describe(&denied));
            return Ok(());
        }
    };
    for child in children.flatten() {
        // Never through a link: the file type of the entry itself.
        if child.file_type().is_ok_and(|t| t.is_dir()) {
            watch_tree(watcher, &child.path())?;
        }
    }
    Ok(())
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
        let _ = watch.unwatch(&local);
        match watch_tree(watch, &local) {
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
    use super::*;

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
}
