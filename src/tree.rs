//! Reaching a configured path on this node without following a link: the admission of
//! a logical path ([`confine`]: well-formed, inside a configured directory, not
//! excluded, not a temporary name), the descriptors of the directories on the way
//! ([`open_parent`] for one path, [`Parents`] for many, each component opened with
//! `O_NOFOLLOW` relative to its parent), files opened for reading ([`open_regular`]),
//! and gosyncd's temporary names.
//!
//! The bottom of the house, beside `paths` and `manifest`: the receiver, the sender,
//! the scans, diffs, backups and rollbacks all reach the tree through it. It reads and
//! opens; it never writes.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::config::{Config, Directory};
use crate::paths::{self, components_below};

/// Prefix of the temporary files gosyncd writes next to their targets; never synced.
pub const TEMP_PREFIX: &str = ".gosyncd-";
/// Suffix of those temporary files.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Whether a file name is one of gosyncd's own temporary files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

/// Whether this process can apply owners.
pub fn applies_owners() -> bool {
    rustix::process::geteuid().is_root()
}

/// Checks that a path from a peer is one this node may write: well-formed, inside a
/// configured directory, not excluded, not one of gosyncd's temporary names.
pub fn confine<'c>(config: &'c Config, path: &str) -> Result<&'c Directory, String> {
    confine_below(config, path, false)
}

/// [`confine`], told whether the parent of `path` passed it already: then only the last
/// component is left to check, and a batch is checked in time linear in its size,
/// whatever the depth of its paths.
pub(crate) fn confine_below<'c>(
    config: &'c Config,
    path: &str,
    parent_confined: bool,
) -> Result<&'c Directory, String> {
    paths::check_normalized(path)?;
    let dir = config
        .directory_of(path)
        .ok_or_else(|| format!("{path}: outside the configured directories of this node"))?;
    // (A configured directory's parent is the administrator's, in no configured directory.)
    let parent_confined = parent_confined && path != dir.path;
    let excluded = if parent_confined {
        dir.excludes.is_excluded(path)
    } else {
        dir.excludes.excludes_any_component(&dir.path, path)
    };
    if excluded {
        return Err(format!("{path}: excluded on this node"));
    }
    // Any component, not only the last: scans skip such names with everything below
    // them, so a directory named like one would hide its tree from every manifest.
    let temp = if parent_confined {
        is_temp_name(paths::file_name(path))
    } else {
        components_below(path, &dir.path).any(is_temp_name)
    };
    if temp {
        return Err(format!("{path}: a gosyncd temporary file name"));
    }
    Ok(dir)
}

/// Why the directory holding a path could not be opened.
#[derive(Debug)]
pub(crate) struct ParentError {
    /// A directory on the way does not exist (so neither does the path).
    pub missing: bool,
    /// A component on the way is a symlink on this node: refused for good (links are
    /// never followed), not a passing failure.
    pub link: bool,
    message: String,
}

impl ParentError {
    fn other(message: String) -> ParentError {
        ParentError {
            missing: false,
            link: false,
            message,
        }
    }
}

impl std::fmt::Display for ParentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Opens the directory holding `path` without following any link below the configured
/// directory, and returns it with the final component's name. For one path; a batch
/// reaches its paths through one [`Parents`].
pub(crate) fn open_parent(
    config: &Config,
    dir: &Directory,
    path: &str,
) -> Result<(OwnedFd, String), ParentError> {
    let mut parents = Parents::default();
    let (fd, name) = parents.parent(config, dir, path)?;
    drop(parents);
    let fd = Arc::try_unwrap(fd)
        .or_else(|shared| shared.try_clone())
        .map_err(|e| ParentError::other(format!("cannot open the directory of {path}: {e}")))?;
    Ok((fd, name))
}

/// How many of the deepest opened directories [`Parents`] keeps open, and every how many
/// levels above them it keeps one: some hundred descriptors at most however deep the
/// tree (a logical path has at most 2,048 levels), and at most this many levels opened
/// again when the next path turns back up the tree.
const PARENTS_KEPT: usize = 32;

/// Why [`Parents::dir`] could not open a directory.
#[derive(Debug)]
pub(crate) enum Blocked {
    /// The configured directory itself cannot be opened.
    Top(Errno),
    /// The directory `at` (a logical path) cannot be opened: missing (`NOENT`), or
    /// something else, of file type `kind` (a symlink, a file...).
    At {
        at: String,
        error: Errno,
        kind: Option<rustix::fs::FileType>,
    },
}

impl Blocked {
    /// The error that stopped the opening, wherever it was.
    pub(crate) fn error(&self) -> Errno {
        match self {
            Blocked::Top(error) | Blocked::At { error, .. } => *error,
        }
    }
}

/// Directories opened from a configured directory down, one component at a time and
/// never following a link, kept for the next path. A batch's paths, taken in order, cost
/// one `openat` per directory they add to the last path's, whatever the depth of the
/// tree, and a path is never looked up whole, so the local prefix's length does not
/// matter and no path is ever too long. Held for one batch, under the apply lock.
///
/// What the batch changes never leaves a stale descriptor here: the directories kept are
/// the last path's parent and those above it, and an operation changes only its own
/// path, so a directory is dropped before any operation on it (the walk to its parent
/// goes back up past it). A directory a local process moves while the batch runs is
/// followed where it went, as an open working directory is: moving a directory takes
/// write permission on it and on both of its parents, which the process then has anyway.
#[derive(Default)]
pub(crate) struct Parents {
    /// The logical path of the deepest directory opened.
    path: String,
    /// One entry per level from the configured directory down: the length of its logical
    /// path (a prefix of `path`), and its descriptor unless closed to spare descriptors.
    open: Vec<(usize, Option<Arc<OwnedFd>>)>,
    /// Directories opened below a configured directory so far.
    opened: usize,
}

impl Parents {
    /// Opens the directory holding `path` and returns it with the final component's name.
    pub(crate) fn parent(
        &mut self,
        config: &Config,
        dir: &Directory,
        path: &str,
    ) -> Result<(Arc<OwnedFd>, String), ParentError> {
        let name = paths::file_name(path).to_string();
        if path == dir.path {
            // The configured directory itself: its parent is the administrator's, trusted.
            let parent = config.local_path(paths::parent(&dir.path));
            let fd = open_dir(&parent).map_err(|e| {
                ParentError::other(format!("cannot open {}: {e}", parent.display()))
            })?;
            return Ok((Arc::new(fd), name));
        }
        match self.dir(config, dir, paths::parent(path)) {
            Ok(fd) => Ok((fd, name)),
            Err(Blocked::Top(e)) => Err(ParentError::other(format!(
                "configured directory {} cannot be opened: {e}",
                dir.path
            ))),
            Err(Blocked::At { at, error, .. }) if error == Errno::NOENT => Err(ParentError {
                missing: true,
                link: false,
                message: format!("parent directory {at} does not exist"),
            }),
            Err(Blocked::At {
                at,
                kind: Some(rustix::fs::FileType::Symlink),
                ..
            }) => Err(ParentError {
                missing: false,
                link: true,
                message: format!(
                    "refused, {at} is a symlink on this node (links are never followed)"
                ),
            }),
            Err(Blocked::At { at, error, .. }) => Err(ParentError::other(format!(
                "{at} cannot be opened as a directory: {error}"
            ))),
        }
    }

    /// Opens directory `logical`, which is `dir`'s path or below it, reusing the opened
    /// directories it shares with the last one.
    pub(crate) fn dir(
        &mut self,
        config: &Config,
        dir: &Directory,
        logical: &str,
    ) -> Result<Arc<OwnedFd>, Blocked> {
        if !self.path.starts_with(dir.path.as_str())
            || self
                .open
                .first()
                .is_some_and(|(len, _)| *len != dir.path.len())
        {
            self.truncate(0);
        }
        // Keep the opened directories that are `logical` or above it.
        while self
            .open
            .last()
            .is_some_and(|(len, _)| !paths::is_within(logical, &self.path[..*len]))
        {
            let level = self.open.len() - 1;
            self.truncate(level);
        }
        if self.open.is_empty() {
            let fd = open_dir(config.local_path(&dir.path)).map_err(Blocked::Top)?;
            self.path = dir.path.clone();
            self.open.push((dir.path.len(), Some(Arc::new(fd))));
        }
        self.reopen_last()?;
        let below: Vec<&str> = components_below(logical, &self.path).collect();
        for component in below {
            let fd = self.open.last().and_then(|(_, fd)| fd.clone());
            let fd = fd.expect("the deepest opened directory is open");
            self.path.push('/');
            self.path.push_str(component);
            self.opened += 1;
            match open_below(&fd, component) {
                Ok(next) => self.push(next),
                Err(blocked) => {
                    let at = self.path.clone();
                    self.truncate(self.open.len());
                    return Err(blocked_at(at, blocked));
                }
            }
        }
        Ok(self
            .open
            .last()
            .and_then(|(_, fd)| fd.clone())
            .expect("opened"))
    }

    /// Keeps the first `levels` levels.
    fn truncate(&mut self, levels: usize) {
        self.open.truncate(levels);
        let len = self.open.last().map_or(0, |(len, _)| *len);
        self.path.truncate(len);
    }

    /// Adds the directory at `self.path` as the deepest level, and closes the one that is
    /// now too far above it, unless it is one of the levels kept every `PARENTS_KEPT`.
    fn push(&mut self, fd: OwnedFd) {
        self.open.push((self.path.len(), Some(Arc::new(fd))));
        let level = self.open.len() - 1;
        if level >= PARENTS_KEPT && (level - PARENTS_KEPT) % PARENTS_KEPT != 0 {
            self.open[level - PARENTS_KEPT].1 = None;
        }
    }

    /// Opens again the deepest level when it was closed, from the nearest level above it
    /// that is still open (at most `PARENTS_KEPT` levels up).
    fn reopen_last(&mut self) -> Result<(), Blocked> {
        let Some(open) = self.open.iter().rposition(|(_, fd)| fd.is_some()) else {
            return Ok(()); // nothing opened: the caller starts from the top
        };
        for level in open + 1..self.open.len() {
            let fd = self.open[level - 1].1.clone().expect("opened just before");
            let start = self.open[level - 1].0;
            let end = self.open[level].0;
            let component = &self.path[start + 1..end];
            self.opened += 1;
            match open_below(&fd, component) {
                Ok(next) => self.open[level].1 = Some(Arc::new(next)),
                Err(blocked) => {
                    let at = self.path[..end].to_string();
                    self.truncate(level);
                    return Err(blocked_at(at, blocked));
                }
            }
        }
        Ok(())
    }
}

/// Opens directory `component` of `fd` without following a link; on failure, the error
/// and (unless missing) the file type found there.
fn open_below(
    fd: &OwnedFd,
    component: &str,
) -> Result<OwnedFd, (Errno, Option<rustix::fs::FileType>)> {
    open_subdir(fd, component).map_err(|error| {
        let kind = (error != Errno::NOENT)
            .then(|| rustix::fs::statat(fd, component, AtFlags::SYMLINK_NOFOLLOW).ok())
            .flatten()
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode));
        (error, kind)
    })
}

/// Opens directory `name` of `parent` to act in it through its descriptor, never
/// through a link.
pub(crate) fn open_subdir<P: rustix::path::Arg>(
    parent: impl std::os::fd::AsFd,
    name: P,
) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    rustix::fs::openat(parent, name, flags, Mode::empty())
}

fn blocked_at(at: String, (error, kind): (Errno, Option<rustix::fs::FileType>)) -> Blocked {
    Blocked::At { at, error, kind }
}

/// Opens a directory the administrator configured (or a local path of one) to act in
/// it through its descriptor: to sync, flush or link there.
pub(crate) fn open_dir(path: impl AsRef<std::path::Path>) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        path.as_ref(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens an existing regular file for reading: never through a symlink, never blocking
/// on a FIFO that replaced it, and refusing anything that is not a regular file.
pub(crate) fn open_regular(parent: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    open_regular_with_stat(parent, name).map(|(fd, _)| fd)
}

/// [`open_regular`], with what `fstat` said of the file opened.
pub(crate) fn open_regular_with_stat(
    parent: &OwnedFd,
    name: &str,
) -> io::Result<(OwnedFd, rustix::fs::Stat)> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::other(format!(
            "{name} is no longer a regular file"
        )));
    }
    Ok((fd, st))
}

/// A new temporary file name: this process's random half, drawn once, and a count. A
/// name is made for every file received: drawing 128 random bits each time cost a
/// system call per file. A name already taken (planted) makes the creation fail, as
/// before: every temporary file is made with `O_EXCL`.
pub(crate) fn temp_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PROCESS: OnceLock<u64> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let count = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{process:016x}{count:016x}{TEMP_SUFFIX}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config(root: &std::path::Path) -> Config {
        crate::testing::config_at(root, r#""/etc/app/private", "*.swp""#)
    }

    /// A tree of `depth` levels `/etc/app/d/d/...` under `root`, made through
    /// descriptors (the local path may be longer than PATH_MAX); its logical paths.
    fn deep_tree(root: &std::path::Path, depth: usize) -> Vec<String> {
        let mut fd = open_dir(root.join("etc/app")).unwrap();
        let mut path = "/etc/app".to_string();
        let mut levels = Vec::new();
        for _ in 0..depth {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(&fd, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
                .unwrap();
            path.push_str("/d");
            levels.push(path.clone());
        }
        levels
    }

    /// The inode of directory `logical`, reached one component at a time.
    fn inode_of(root: &std::path::Path, logical: &str) -> u64 {
        let mut fd = open_dir(root.join("etc/app")).unwrap();
        for component in components_below(logical, "/etc/app") {
            fd = rustix::fs::openat(
                &fd,
                component,
                OFlags::RDONLY | OFlags::DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
        }
        rustix::fs::fstat(&fd).unwrap().st_ino
    }

    #[test]
    fn a_batch_opens_each_directory_once_and_keeps_few_descriptors_open() {
        const DEPTH: usize = 300;
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        std::fs::create_dir_all(tmp.path().join("etc/app")).unwrap();
        let levels = deep_tree(tmp.path(), DEPTH);
        let dir = c.directory_of("/etc/app").unwrap();
        let mut parents = Parents::default();
        let open_now = |p: &Parents| p.open.iter().filter(|(_, fd)| fd.is_some()).count();
        let bound = 2 * PARENTS_KEPT + DEPTH / PARENTS_KEPT + 1;
        // Down the tree, as a batch that makes it; then up, as one that deletes it.
        let order: Vec<&String> = levels.iter().chain(levels.iter().rev()).collect();
        for path in &order {
            let (fd, name) = parents.parent(&c, dir, path).unwrap();
            assert_eq!(name, "d");
            let st = rustix::fs::fstat(&*fd).unwrap();
            assert_eq!(
                st.st_ino,
                inode_of(tmp.path(), paths::parent(path)),
                "{path}"
            );
            assert!(open_now(&parents) <= bound, "{} open", open_now(&parents));
        }
        // Each level opened once going down; going back up opens again at most the
        // levels closed between two kept ones.
        assert!(
            parents.opened <= 2 * DEPTH,
            "{} directories opened for {} paths",
            parents.opened,
            order.len()
        );
        // Jumping about: each answer is still the right directory.
        for i in [299, 3, 150, 40, 41, 290, 0, 200] {
            let fd = parents.dir(&c, dir, &levels[i]).unwrap();
            let st = rustix::fs::fstat(&*fd).unwrap();
            assert_eq!(st.st_ino, inode_of(tmp.path(), &levels[i]), "level {i}");
            assert!(open_now(&parents) <= bound);
        }
    }

    #[test]
    fn a_closed_level_replaced_by_a_symlink_is_refused_when_opened_again() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        let levels = deep_tree(tmp.path(), 100);
        let dir = c.directory_of("/etc/app").unwrap();
        let mut parents = Parents::default();
        parents.parent(&c, dir, &levels[99]).unwrap();
        // Level 50 (closed: neither one of the deepest nor a kept one) becomes a symlink
        // to a directory outside holding the same names below.
        let level50 = tmp.path().join(levels[49].trim_start_matches('/'));
        std::fs::rename(&level50, tmp.path().join("outside/moved")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside/moved"), &level50).unwrap();
        assert!(parents.open[50].1.is_none(), "level 50 was closed");
        let err = parents.parent(&c, dir, &levels[60]).unwrap_err();
        assert!(err.link, "{err}");
        assert!(err.to_string().contains(&levels[49]), "{err}");
        // And from a fresh start too.
        let err = Parents::default().parent(&c, dir, &levels[60]).unwrap_err();
        assert!(err.link, "{err}");
    }
}
