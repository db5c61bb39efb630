//! The filesystem primitives of the receiver: opening the directory that holds a path
//! without following any link below its configured directory, reading a name's state
//! with the fingerprint of its inode, changing one name only while it still holds what
//! was checked, and removing the temporary files a crash left behind. Mechanisms only:
//! what to change and when is the session's to decide; nothing here knows about
//! expectations, backups or rollbacks.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::staging::Received;
use crate::config::{Config, Directory};
use crate::manifest::{is_temp_name, TEMP_PREFIX, TEMP_SUFFIX};
use crate::paths::{self, components_below};
use crate::protocol::{Content, Entry, Outcome};

/// What a put did: finished, or left a temporary file to rename at the end of the batch.
pub(super) enum Step {
    Done(Outcome),
    Rename(String),
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
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    rustix::fs::openat(fd, component, flags, Mode::empty()).map_err(|error| {
        let kind = (error != Errno::NOENT)
            .then(|| rustix::fs::statat(fd, component, AtFlags::SYMLINK_NOFOLLOW).ok())
            .flatten()
            .map(|st| rustix::fs::FileType::from_raw_mode(st.st_mode));
        (error, kind)
    })
}

fn blocked_at(at: String, (error, kind): (Errno, Option<rustix::fs::FileType>)) -> Blocked {
    Blocked::At { at, error, kind }
}

/// What this node holds at `path` now, read without following a link below its
/// configured directory (`Some(None)`: nothing); `None` when it cannot be read.
pub(crate) fn state_of(config: &Config, path: &str) -> Option<Option<Entry>> {
    let dir = config.directory_of(path)?;
    match open_parent(config, dir, path) {
        Ok((parent, name)) => current_state(&parent, &name)
            .ok()
            .map(|found| found.map(|(entry, _)| entry)),
        Err(e) if e.missing => Some(None),
        Err(_) => None,
    }
}

/// What identifies one inode in one state: a write or a metadata change moves `ctime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fingerprint {
    pub(super) dev: u64,
    pub(super) ino: u64,
    size: i64,
    ctime: (i64, i64),
}

impl Fingerprint {
    fn of(st: &rustix::fs::Stat) -> Fingerprint {
        Fingerprint {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        }
    }
}

/// The state of `name` in `parent`, without following it, with the fingerprint of the
/// inode that state was read from. A file's state is read from one open descriptor, so
/// its content, mode and owner belong to the same inode.
pub(super) fn current_state(
    parent: &OwnedFd,
    name: &str,
) -> io::Result<Option<(Entry, Fingerprint)>> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let (content, st) = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::Directory => (Content::Dir, st),
        rustix::fs::FileType::Symlink => {
            let target = rustix::fs::readlinkat(parent, name, Vec::new())?;
            let target = target.to_string_lossy().into_owned();
            (Content::Symlink { target }, st)
        }
        rustix::fs::FileType::RegularFile => {
            let fd = open_regular(parent, name)?;
            let st = rustix::fs::fstat(&fd)?;
            let sha256 = crate::manifest::hash_reader(File::from(fd))?;
            let size = st.st_size as u64;
            (Content::File { size, sha256 }, st)
        }
        other => {
            return Err(io::Error::other(format!(
                "{other:?} is not a file, directory or symlink"
            )))
        }
    };
    let entry = Entry {
        content,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: crate::manifest::nanos(st.st_mtime, st.st_mtime_nsec as i64),
    };
    Ok(Some((entry, Fingerprint::of(&st))))
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
    Ok(fd)
}

pub(crate) fn temp_name() -> String {
    format!(
        "{TEMP_PREFIX}{}{TEMP_SUFFIX}",
        uuid::Uuid::new_v4().simple()
    )
}

pub(super) fn changed_underneath() -> Outcome {
    Outcome::Conflict("changed on the peer while the operation was being applied".into())
}

/// One name in one opened directory, with the fingerprint of what was checked there.
pub(super) struct Target<'a> {
    pub(super) parent: &'a OwnedFd,
    pub(super) name: &'a str,
    pub(super) checked: Option<Fingerprint>,
}

impl Target<'_> {
    /// Whether the name still holds the inode (or the absence) that was checked. Asked
    /// right before a rename or unlink, so a change made on the peer meanwhile is
    /// refused instead of silently replaced.
    fn unchanged(&self) -> io::Result<bool> {
        match rustix::fs::statat(self.parent, self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(self.checked == Some(Fingerprint::of(&st))),
            Err(Errno::NOENT) => Ok(self.checked.is_none()),
            Err(e) => Err(e.into()),
        }
    }

    /// Puts `entry` at the name. A file's new content is `content`, received ahead
    /// (or why it could not be); without one, the file keeps its bytes and takes the
    /// entry's metadata.
    pub(super) fn put(
        &self,
        entry: &Entry,
        content: Option<Result<Received, String>>,
        owners: bool,
        fsync: bool,
    ) -> io::Result<Step> {
        match &entry.content {
            Content::File { sha256, .. } => match content {
                Some(Ok(received)) => {
                    let (tmp, file) = received.move_to(self.parent)?;
                    self.finish_file(tmp, file, entry, owners, fsync)
                }
                Some(Err(reason)) => Err(io::Error::other(reason)),
                None => {
                    // Same content, other metadata. The file is rewritten from the very
                    // inode that was checked rather than chmod-ed in place: whatever sits
                    // at the name (a swapped-in or hard-linked file) is never touched.
                    let fd = open_regular(self.parent, self.name)?;
                    if Some(Fingerprint::of(&rustix::fs::fstat(&fd)?)) != self.checked {
                        return Ok(Step::Done(changed_underneath()));
                    }
                    let (tmp, mut file) = self.create_temp()?;
                    match crate::manifest::hash_copy(File::from(fd), &mut file) {
                        Ok(copied) if copied == *sha256 => {
                            self.finish_file(tmp, file, entry, owners, fsync)
                        }
                        copied => {
                            let _ =
                                rustix::fs::unlinkat(self.parent, tmp.as_str(), AtFlags::empty());
                            copied.map(|_| Step::Done(changed_underneath()))
                        }
                    }
                }
            },
            Content::Dir => {
                match rustix::fs::mkdirat(self.parent, self.name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) if self.checked.is_some() => {}
                    Err(Errno::EXIST) => return Ok(Step::Done(changed_underneath())),
                    Err(e) => return Err(e.into()),
                }
                let fd = rustix::fs::openat(
                    self.parent,
                    self.name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                let opened = Fingerprint::of(&rustix::fs::fstat(&fd)?);
                if self
                    .checked
                    .is_some_and(|c| (c.dev, c.ino) != (opened.dev, opened.ino))
                {
                    return Ok(Step::Done(changed_underneath()));
                }
                set_meta(&fd, entry, owners)?;
                Ok(Step::Done(Outcome::Applied))
            }
            Content::Symlink { target } => {
                let tmp = temp_name();
                rustix::fs::symlinkat(target.as_str(), self.parent, tmp.as_str())?;
                let owned = if owners {
                    rustix::fs::chownat(
                        self.parent,
                        tmp.as_str(),
                        Some(rustix::fs::Uid::from_raw(entry.uid)),
                        Some(rustix::fs::Gid::from_raw(entry.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(io::Error::from)
                } else {
                    Ok(())
                };
                self.rename_into_place(&tmp, owned).map(Step::Done)
            }
        }
    }

    /// A new, empty temporary file next to the name.
    fn create_temp(&self) -> io::Result<(String, File)> {
        let tmp = temp_name();
        let fd = rustix::fs::openat(
            self.parent,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok((tmp, File::from(fd)))
    }

    /// Gives the temporary file `tmp`, next to the name and holding the new content, its
    /// metadata (and fsyncs it when `fsync` is set; otherwise the batch flushes it); the
    /// caller renames it. It is removed if any of that fails.
    fn finish_file(
        &self,
        tmp: String,
        file: File,
        entry: &Entry,
        owners: bool,
        fsync: bool,
    ) -> io::Result<Step> {
        let written = (|| {
            set_meta(&file, entry, owners)?;
            set_mtime(&file, entry)?;
            if fsync {
                file.sync_all()?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => Ok(Step::Rename(tmp)),
            Err(e) => {
                let _ = rustix::fs::unlinkat(self.parent, tmp.as_str(), AtFlags::empty());
                Err(e)
            }
        }
    }

    /// Renames a prepared temporary entry over the name, unless preparing it failed or
    /// the name changed since it was checked; the temporary entry never survives.
    pub(super) fn rename_into_place(
        &self,
        tmp: &str,
        prepared: io::Result<()>,
    ) -> io::Result<Outcome> {
        let outcome = prepared.and_then(|()| {
            if !self.unchanged()? {
                return Ok(changed_underneath());
            }
            rustix::fs::renameat(self.parent, tmp, self.parent, self.name)?;
            Ok(Outcome::Applied)
        });
        if !matches!(outcome, Ok(Outcome::Applied)) {
            let _ = rustix::fs::unlinkat(self.parent, tmp, AtFlags::empty());
        }
        outcome
    }

    pub(super) fn delete(&self, current: Option<&Entry>) -> io::Result<Outcome> {
        if !self.unchanged()? {
            return Ok(changed_underneath());
        }
        let is_dir = current.is_some_and(|e| e.content.is_dir());
        let flags = if is_dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(self.parent, self.name, flags) {
            Ok(()) => Ok(Outcome::Applied),
            // What the directory still holds decides what this means: the caller asks
            // `remaining_names`.
            Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => Err(Errno::NOTEMPTY.into()),
            Err(e) => Err(e.into()),
        }
    }

    /// The names a directory at the name still holds (it could not be deleted), without
    /// following a link to it.
    pub(super) fn remaining_names(&self) -> io::Result<Vec<String>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let fd = rustix::fs::openat(self.parent, self.name, flags, Mode::empty())?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

fn set_meta(fd: impl AsFd, entry: &Entry, owners: bool) -> io::Result<()> {
    if owners {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(entry.uid)),
            Some(rustix::fs::Gid::from_raw(entry.gid)),
        )?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(entry.mode))?;
    Ok(())
}

fn set_mtime(fd: impl AsFd, entry: &Entry) -> io::Result<()> {
    let mtime = Timespec {
        tv_sec: entry.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: entry.mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: mtime,
    };
    rustix::fs::futimens(&fd, &times)?;
    Ok(())
}

/// Removes the temporary files a crash may have left in the configured directories
/// (the targets themselves are intact: a rename is the last step). Returns how many.
pub fn remove_stale_temp_files(config: &Config) -> usize {
    let mut removed = 0;
    for dir in &config.directories {
        let walker = walkdir::WalkDir::new(config.local_path(&dir.path))
            .follow_links(false)
            .into_iter()
            .filter_map(Result::ok);
        for entry in walker {
            let stale = entry.depth() > 0
                && !entry.file_type().is_dir()
                && entry.file_name().to_str().is_some_and(is_temp_name);
            if !stale {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale temporary file")
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::staging::received;
    use crate::apply::test_config;
    use crate::protocol::Action;
    use crate::testing::put;

    #[test]
    fn a_change_between_check_and_rename_is_a_conflict() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("x"), b"checked").unwrap();
        let dir = c.directory_of("/etc/app/x").unwrap();
        let (parent, name) = open_parent(&c, dir, "/etc/app/x").unwrap();
        let (_, fingerprint) = current_state(&parent, &name).unwrap().unwrap();
        let target = Target {
            parent: &parent,
            name: &name,
            checked: Some(fingerprint),
        };
        let entry = match put("/etc/app/x", b"pushed").action {
            Action::Put { entry } => entry,
            Action::Delete => unreachable!(),
        };
        let Step::Rename(tmp) = target
            .put(
                &entry,
                Some(Ok(received(&c, "/etc/app/x", b"pushed"))),
                false,
                true,
            )
            .unwrap()
        else {
            panic!("a file put leaves a temporary file to rename")
        };
        // Edited on the peer after the check, before the rename.
        std::fs::write(app.join("x"), b"edited meanwhile").unwrap();
        let outcome = target.rename_into_place(&tmp, Ok(())).unwrap();
        assert!(matches!(outcome, Outcome::Conflict(_)), "{outcome:?}");
        assert_eq!(std::fs::read(app.join("x")).unwrap(), b"edited meanwhile");
        let names: Vec<_> = std::fs::read_dir(&app)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x"], "the temporary file is removed");
        assert!(matches!(target.delete(None).unwrap(), Outcome::Conflict(_)));
        assert!(app.join("x").exists());
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

    #[test]
    fn stale_temporary_files_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(app.join("sub")).unwrap();
        std::fs::write(app.join(".gosyncd-0123.tmp"), b"partial").unwrap();
        std::fs::write(app.join("sub/.gosyncd-4567.tmp"), b"partial").unwrap();
        std::fs::write(app.join("sub/.gosyncd-notes.txt"), b"kept").unwrap();
        std::fs::write(app.join("keep.cfg"), b"kept").unwrap();
        assert_eq!(remove_stale_temp_files(&c), 2);
        assert!(!app.join(".gosyncd-0123.tmp").exists());
        assert!(!app.join("sub/.gosyncd-4567.tmp").exists());
        assert!(app.join("sub/.gosyncd-notes.txt").exists());
        assert!(app.join("keep.cfg").exists());
    }
}
