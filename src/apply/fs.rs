//! The filesystem primitives of the receiver: opening the directory that holds a path
//! without following any link below its configured directory, reading a name's state
//! with the fingerprint of its inode, changing one name only while it still holds what
//! was checked, and removing the temporary files a crash left behind. Mechanisms only:
//! what to change and when is the session's to decide; nothing here knows about
//! expectations, backups or rollbacks.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::config::{Config, Directory};
use crate::manifest::{is_temp_name, TEMP_PREFIX, TEMP_SUFFIX};
use crate::paths::{self, components_below};
use crate::protocol::{Content, Digest256, Entry, Outcome};

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
/// directory, and returns it with the final component's name.
pub(crate) fn open_parent(
    config: &Config,
    dir: &Directory,
    path: &str,
) -> Result<(OwnedFd, String), ParentError> {
    if path == dir.path {
        // The configured directory itself: its parent is the administrator's, trusted.
        let parent = config.local_path(paths::parent(&dir.path));
        let fd = open_dir(&parent)
            .map_err(|e| ParentError::other(format!("cannot open {}: {e}", parent.display())))?;
        return Ok((fd, paths::file_name(path).to_string()));
    }
    let base = config.local_path(&dir.path);
    let mut fd = open_dir(&base).map_err(|e| {
        ParentError::other(format!(
            "configured directory {} cannot be opened: {e}",
            dir.path
        ))
    })?;
    let mut components: Vec<&str> = components_below(path, &dir.path).collect();
    let name = components
        .pop()
        .expect("path below its directory")
        .to_string();
    let mut logical = dir.path.clone();
    for component in components {
        logical.push('/');
        logical.push_str(component);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        fd = match rustix::fs::openat(&fd, component, flags, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) => {
                return Err(ParentError {
                    missing: true,
                    link: false,
                    message: format!("parent directory {logical} does not exist"),
                })
            }
            Err(e) => {
                let is_link = rustix::fs::statat(&fd, component, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| {
                        rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Symlink
                    })
                    .unwrap_or(false);
                return Err(if is_link {
                    ParentError {
                        missing: false,
                        link: true,
                        message: format!(
                            "refused, {logical} is a symlink on this node (links are never followed)"
                        ),
                    }
                } else {
                    ParentError::other(format!("{logical} cannot be opened as a directory: {e}"))
                });
            }
        };
    }
    Ok((fd, name))
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

    pub(super) fn put(
        &self,
        entry: &Entry,
        content: Option<&[u8]>,
        owners: bool,
        fsync: bool,
    ) -> io::Result<Step> {
        match &entry.content {
            Content::File { sha256, .. } => match content {
                Some(bytes) => self.write_file(bytes, entry, owners, fsync),
                None => {
                    // Same content, other metadata. The file is rewritten from the very
                    // inode that was checked rather than chmod-ed in place: whatever sits
                    // at the name (a swapped-in or hard-linked file) is never touched.
                    let fd = open_regular(self.parent, self.name)?;
                    if Some(Fingerprint::of(&rustix::fs::fstat(&fd)?)) != self.checked {
                        return Ok(Step::Done(changed_underneath()));
                    }
                    let mut bytes = Vec::new();
                    File::from(fd).read_to_end(&mut bytes)?;
                    if Digest256::of(&bytes) != *sha256 {
                        return Ok(Step::Done(changed_underneath()));
                    }
                    self.write_file(&bytes, entry, owners, fsync)
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

    /// Writes the content under a temporary name, with its metadata (and fsynced when
    /// `fsync` is set; otherwise the batch flushes it); the caller renames it.
    fn write_file(
        &self,
        bytes: &[u8],
        entry: &Entry,
        owners: bool,
        fsync: bool,
    ) -> io::Result<Step> {
        let tmp = temp_name();
        let fd = rustix::fs::openat(
            self.parent,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let written = (|| {
            let mut file = File::from(fd);
            file.write_all(bytes)?;
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

/// Owner first: changing the owner clears set-id bits, which the mode then restores.
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
        let Step::Rename(tmp) = target.put(&entry, Some(b"pushed"), false, true).unwrap() else {
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
