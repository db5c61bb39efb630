//! The filesystem primitives of the receiver: reading a name's state with the
//! fingerprint of its inode, changing one name only while it still holds what was
//! checked, and removing the temporary files a crash left behind (the directories on
//! the way are opened by [`crate::tree`]). Mechanisms only:
//! what to change and when is the session's to decide; nothing here knows about
//! expectations, backups or rollbacks.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use super::staging::Received;
use crate::config::Config;
use crate::manifest::Stamp;
use crate::protocol::{Content, Entry, Outcome};
use crate::tree::{is_temp_name, open_parent, open_regular, open_subdir, temp_name};

/// What a put did: finished, or left a temporary file to rename at the end of the batch,
/// with its device and inode (so that the file found at the name afterwards is known to
/// be it).
pub(super) enum Step {
    Done(Outcome),
    Rename(String, (u64, u64)),
    /// An anonymous file, complete with its content and metadata, to be given the name
    /// (free when checked) at the end of the batch: one link, and no temporary name.
    Link(Received),
    /// A directory made at the name (it was free): applied. With what it is once given
    /// its metadata, and what its parent is once it holds it.
    Made {
        made: Stamp,
        parent: Stamp,
    },
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
                    if let (None, Some(file)) = (self.checked, received.anonymous()) {
                        give_meta(file, &rustix::fs::fstat(file)?, entry, owners)?;
                        set_mtime(file, entry)?;
                        if fsync {
                            file.sync_all()?;
                        }
                        return Ok(Step::Link(received));
                    }
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
                // Made with its mode at once where this process already is the owner it
                // is to have (nobody else may enter it meanwhile then): a directory
                // received then makes no event but its creation, for this node's watcher
                // to look at. Otherwise private until it is given its owner.
                // (A parent with the set-group-ID bit gives it its own group instead.)
                let setgid = || {
                    rustix::fs::fstat(self.parent)
                        .map_or(true, |st| st.st_mode & Mode::SGID.bits() != 0)
                };
                let owned = !owners || ((entry.uid, entry.gid) == process_owner() && !setgid());
                let first = if owned { entry.mode & 0o777 } else { 0o700 };
                let made =
                    match rustix::fs::mkdirat(self.parent, self.name, Mode::from_raw_mode(first)) {
                        Ok(()) => true,
                        Err(Errno::EXIST) if self.checked.is_some() => false,
                        Err(Errno::EXIST) => return Ok(Step::Done(changed_underneath())),
                        Err(e) => return Err(e.into()),
                    };
                let fd = open_subdir(self.parent, self.name)?;
                let st = rustix::fs::fstat(&fd)?;
                let opened = Fingerprint::of(&st);
                if self
                    .checked
                    .is_some_and(|c| (c.dev, c.ino) != (opened.dev, opened.ino))
                {
                    return Ok(Step::Done(changed_underneath()));
                }
                match give_meta(&fd, &st, entry, owners)? {
                    false if made => Ok(Step::Made {
                        made: Stamp::of_stat(&st),
                        parent: Stamp::of_stat(&rustix::fs::fstat(self.parent)?),
                    }),
                    _ => Ok(Step::Done(Outcome::Applied)),
                }
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
            let st = rustix::fs::fstat(&file)?;
            Ok((st.st_dev, st.st_ino))
        })();
        match written {
            Ok(inode) => Ok(Step::Rename(tmp, inode)),
            Err(e) => {
                let _ = rustix::fs::unlinkat(self.parent, tmp.as_str(), AtFlags::empty());
                Err(e)
            }
        }
    }

    /// Renames a prepared temporary entry over the name, unless preparing it failed or
    /// the name changed since it was checked; the temporary entry never survives. A name
    /// that was free is taken only if it still is, in one step (where the filesystem
    /// can: otherwise checked, then renamed, as a name that was taken is).
    pub(super) fn rename_into_place(
        &self,
        tmp: &str,
        prepared: io::Result<()>,
    ) -> io::Result<Outcome> {
        let outcome = prepared.and_then(|()| {
            if self.checked.is_none() {
                let free = rustix::fs::RenameFlags::NOREPLACE;
                match rustix::fs::renameat_with(self.parent, tmp, self.parent, self.name, free) {
                    Ok(()) => return Ok(Outcome::Applied),
                    Err(Errno::EXIST) => return Ok(changed_underneath()),
                    Err(Errno::INVAL | Errno::NOSYS) => {}
                    Err(e) => return Err(e.into()),
                }
            }
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

    /// Gives a prepared anonymous file the name, which was free when checked and is
    /// taken only if it still is, in one step, unless preparing the batch failed. Where
    /// the file is on another mount than the name, its bytes are copied into a temporary
    /// file next to it, which is given the owner, mode and mtime the anonymous file was
    /// given, flushed, and renamed instead. The outcome, with what the file is once
    /// named (for a link).
    pub(super) fn link_into_place(
        &self,
        received: Received,
        prepared: io::Result<()>,
    ) -> io::Result<(Outcome, Option<rustix::fs::Stat>)> {
        prepared?;
        match received.link_at(self.parent, self.name) {
            Ok(st) => Ok((Outcome::Applied, Some(st))),
            Err(Errno::EXIST) => Ok((changed_underneath(), None)),
            Err(Errno::XDEV) => {
                let given = received.anonymous().map(rustix::fs::fstat).transpose()?;
                let (tmp, file) = received.move_to(self.parent)?;
                let copied = given
                    .map_or(Ok(()), |st| {
                        let owner = (st.st_uid, st.st_gid);
                        let own = rustix::fs::fstat(&file)?;
                        let chown = ((own.st_uid, own.st_gid) != owner).then_some(owner);
                        set_owner_and_mode(&file, chown, st.st_mode & 0o7777)?;
                        set_mtime_ns(
                            &file,
                            crate::manifest::nanos(st.st_mtime, st.st_mtime_nsec as i64),
                        )
                    })
                    .and_then(|()| file.sync_all());
                drop(file);
                Ok((self.rename_into_place(&tmp, copied)?, None))
            }
            Err(e) => Err(e.into()),
        }
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
        let fd = open_subdir(self.parent, self.name)?;
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
    set_owner_and_mode(fd, owners.then_some((entry.uid, entry.gid)), entry.mode)
}

/// The user and group this process creates files as.
fn process_owner() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// Gives `fd`, found as `st`, the owner (when `owners`) and mode of `entry`, each only
/// where it differs: each change of metadata is an event for every watcher of its
/// directory. Whether it changed anything.
fn give_meta(
    fd: impl AsFd,
    st: &rustix::fs::Stat,
    entry: &Entry,
    owners: bool,
) -> io::Result<bool> {
    let owner = (owners && (st.st_uid, st.st_gid) != (entry.uid, entry.gid))
        .then_some((entry.uid, entry.gid));
    // A change of owner clears the set-user and set-group bits: the mode goes after it.
    if owner.is_none() && st.st_mode & 0o7777 == entry.mode & 0o7777 {
        return Ok(false);
    }
    set_owner_and_mode(fd, owner, entry.mode)?;
    Ok(true)
}

/// Gives `fd` the owner `owner` (user and group), if one is given, and mode `mode`.
fn set_owner_and_mode(fd: impl AsFd, owner: Option<(u32, u32)>, mode: u32) -> io::Result<()> {
    if let Some((uid, gid)) = owner {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(())
}

fn set_mtime(fd: impl AsFd, entry: &Entry) -> io::Result<()> {
    set_mtime_ns(fd, entry.mtime_ns)
}

fn set_mtime_ns(fd: impl AsFd, mtime_ns: i64) -> io::Result<()> {
    let mtime = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
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

    /// The names in directory `dir`, in no particular order.
    fn names_in(dir: &std::path::Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    }

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
        let Step::Rename(tmp, _) = target
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
        assert_eq!(names_in(&app), ["x"], "the temporary file is removed");
        assert!(matches!(target.delete(None).unwrap(), Outcome::Conflict(_)));
        assert!(app.join("x").exists());
    }

    /// A new file is linked into place (received into an anonymous file) or renamed
    /// there (received into a named one) only while its name is free: a file made there
    /// on the peer after the check is kept, as a conflict, and nothing is left behind.
    #[test]
    fn a_name_taken_between_check_and_placing_of_a_new_file_is_a_conflict() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let dir = c.directory_of("/etc/app/new").unwrap();
        let (parent, name) = open_parent(&c, dir, "/etc/app/new").unwrap();
        assert!(current_state(&parent, &name).unwrap().is_none());
        let target = Target {
            parent: &parent,
            name: &name,
            checked: None,
        };
        let entry = match put("/etc/app/new", b"pushed").action {
            Action::Put { entry } => entry,
            Action::Delete => unreachable!(),
        };
        type Receive = fn(&Config, &str, &[u8]) -> Received;
        for (kind, receive, linked) in [
            ("anonymous", received as Receive, true),
            (
                "named",
                super::super::staging::received_named as Receive,
                false,
            ),
        ] {
            // Prepared, then placed: the outcome.
            let place = |made_meanwhile: bool| {
                let step = target
                    .put(
                        &entry,
                        Some(Ok(receive(&c, "/etc/app/new", b"pushed"))),
                        false,
                        true,
                    )
                    .unwrap();
                if made_meanwhile {
                    std::fs::write(app.join("new"), b"made meanwhile").unwrap();
                }
                match step {
                    Step::Link(received) => {
                        assert!(linked, "{kind}: linked");
                        target.link_into_place(received, Ok(())).unwrap().0
                    }
                    Step::Rename(tmp, _) => {
                        assert!(!linked, "{kind}: renamed");
                        target.rename_into_place(&tmp, Ok(())).unwrap()
                    }
                    Step::Done(outcome) => panic!("{kind}: done at once: {outcome:?}"),
                    Step::Made { .. } => panic!("{kind}: a directory made"),
                }
            };
            let outcome = place(true);
            assert!(
                matches!(outcome, Outcome::Conflict(_)),
                "{kind}: {outcome:?}"
            );
            assert_eq!(std::fs::read(app.join("new")).unwrap(), b"made meanwhile");
            assert_eq!(names_in(&app), ["new"], "{kind}: nothing else is left");

            // Still free: taken.
            std::fs::remove_file(app.join("new")).unwrap();
            assert_eq!(place(false), Outcome::Applied, "{kind}");
            assert_eq!(std::fs::read(app.join("new")).unwrap(), b"pushed");
            std::fs::remove_file(app.join("new")).unwrap();
        }
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
