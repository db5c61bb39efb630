//! The receiver's side: confine every path a peer sends, check the whole batch before
//! writing anything, then carry the operations out atomically.
//!
//! Confinement rules: a path must be absolute, normalised, inside one of THIS node's
//! configured directories and not excluded by THIS node's config. Below a configured
//! directory nothing is followed: every component is opened with `O_NOFOLLOW` relative
//! to its parent's descriptor, so a symlink planted anywhere on the way cannot lead a
//! write outside. Files land through a temporary file in the same directory that is
//! fsynced, given its mode, owner and mtime, renamed over the target, and followed by an
//! fsync of the directory: a crash leaves the old file or the new one, never a mix.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::config::{Config, Directory};
use crate::manifest::{is_temp_name, TEMP_PREFIX, TEMP_SUFFIX};
use crate::paths::{self, components_below};
use crate::protocol::{
    Action, Batch, BatchHeader, Content, Digest256, Entry, Op, OpResult, Outcome,
    MAX_LINK_TARGET_BYTES,
};
use crate::rollback::{keep_previous, Journal, Kept, Previous, Undo};

/// Checks that a path from a peer is one this node may write: well-formed, inside a
/// configured directory, not excluded, not one of gosyncd's temporary names.
pub fn confine<'c>(config: &'c Config, path: &str) -> Result<&'c Directory, String> {
    paths::check_normalized(path)?;
    let dir = config
        .directory_of(path)
        .ok_or_else(|| format!("{path}: outside the configured directories of this node"))?;
    if dir.excludes.excludes_any_component(&dir.path, path) {
        return Err(format!("{path}: excluded on this node"));
    }
    // Any component, not only the last: scans skip such names with everything below
    // them, so a directory named like one would hide its tree from every manifest.
    if path[dir.path.len()..].split('/').any(is_temp_name) {
        return Err(format!("{path}: a gosyncd temporary file name"));
    }
    Ok(dir)
}

/// Checks a whole batch before anything is written. Returns the first reason to refuse.
pub fn validate_batch(config: &Config, header: &BatchHeader) -> Result<(), String> {
    let limits = &config.limits;
    if header.ops.len() > limits.max_batch_entries {
        return Err(format!(
            "batch of {} operations exceeds this node's max_batch_entries ({})",
            header.ops.len(),
            limits.max_batch_entries
        ));
    }
    let deleted: std::collections::HashSet<&str> = header
        .ops
        .iter()
        .filter(|op| op.action == Action::Delete)
        .map(|op| op.path.as_str())
        .collect();
    for op in &header.ops {
        let dir = confine(config, &op.path)?;
        if let Action::Put { entry } = &op.action {
            check_entry(&op.path, entry)?;
            if let Content::File { size, .. } = &entry.content {
                if *size > limits.max_file_size {
                    return Err(format!(
                        "{}: a file of {size} bytes exceeds this node's max_file_size ({})",
                        op.path, limits.max_file_size
                    ));
                }
            }
            if op.path == dir.path && !entry.content.is_dir() {
                return Err(format!(
                    "{}: a configured directory must stay a directory",
                    op.path
                ));
            }
        } else if op.path == dir.path {
            return Err(format!(
                "{}: a configured directory is never deleted",
                op.path
            ));
        }
        if let Some(expect) = &op.expect {
            check_entry(&op.path, expect)?;
        }
        check_no_symlink_on_the_way(config, dir, &op.path, &deleted)?;
    }
    Ok(())
}

fn check_entry(path: &str, entry: &Entry) -> Result<(), String> {
    if entry.mode > 0o7777 {
        return Err(format!(
            "{path}: mode {:o} is not a permission mode",
            entry.mode
        ));
    }
    if let Content::Symlink { target } = &entry.content {
        if target.is_empty() || target.contains('\0') || target.len() > MAX_LINK_TARGET_BYTES {
            return Err(format!("{path}: invalid symlink target"));
        }
    }
    Ok(())
}

/// Refuses a path one of whose parents below the configured directory is a symlink,
/// unless the same batch deletes that symlink first (a link replaced by a directory).
fn check_no_symlink_on_the_way(
    config: &Config,
    dir: &Directory,
    path: &str,
    deleted: &std::collections::HashSet<&str>,
) -> Result<(), String> {
    let mut logical = dir.path.clone();
    let mut components: Vec<&str> = components_below(path, &dir.path).collect();
    components.pop();
    for component in components {
        logical.push('/');
        logical.push_str(component);
        match std::fs::symlink_metadata(config.local_path(&logical)) {
            Ok(meta) if meta.file_type().is_symlink() && !deleted.contains(logical.as_str()) => {
                return Err(format!(
                    "{path}: refused, {logical} is a symlink on this node (links are never followed)"
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{path}: cannot inspect {logical}: {e}")),
        }
    }
    Ok(())
}

/// Batches with at most this many file contents fsync each file; larger ones flush
/// their filesystems once with `syncfs`, which is far cheaper than one fsync per file.
const FSYNC_EACH_MAX_FILES: usize = 16;

/// Carries out a validated batch, in order, and reports each operation's outcome.
/// `owners` says whether owners are applied (this process runs as root); `origin` says
/// where the batch comes from, for the backups it takes.
///
/// In directories with a `validate` command run on received changes, every changed path
/// keeps its previous state until [`Applied::commit`]: [`Applied::reject`] puts it back.
pub fn apply_batch(config: &Config, owners: bool, batch: &Batch<'_>, origin: &str) -> Applied {
    let files = batch.contents.iter().filter(|c| c.is_some()).count();
    let mut session = Session::new(files <= FSYNC_EACH_MAX_FILES, origin);
    let mut results: Vec<OpResult> = batch
        .header
        .ops
        .iter()
        .zip(&batch.contents)
        .enumerate()
        .map(|(index, (op, content))| OpResult {
            path: op.path.clone(),
            outcome: session.apply(config, owners, index, op, *content),
        })
        .collect();
    let undo = std::mem::take(&mut session.undo);
    let changed = std::mem::take(&mut session.changed);
    let journals = std::mem::take(&mut session.journals);
    for journal in journals.values() {
        if let Err(e) = journal.sync() {
            tracing::warn!(error = %e, "cannot flush a rollback journal to disk");
        }
    }
    session.finish(config, &mut results);
    Applied {
        results,
        undo,
        changed,
        journals,
    }
}

/// A batch carried out, whose changes in validated directories can still be undone.
pub struct Applied {
    pub results: Vec<OpResult>,
    undo: Vec<Undo>,
    /// Operations that changed something (not those that found the state wanted).
    changed: BTreeSet<usize>,
    /// The rollback journal of each validated directory the batch changed.
    journals: BTreeMap<String, Journal>,
}

impl Applied {
    /// The configured directories this batch changed, with the paths it changed in each.
    pub fn touched(&self, config: &Config) -> BTreeMap<String, Vec<String>> {
        config.by_directory(
            self.results
                .iter()
                .enumerate()
                .filter(|(index, r)| r.outcome == Outcome::Applied && self.changed.contains(index))
                .map(|(_, r)| r.path.clone()),
        )
    }

    /// Puts back the previous state of every path this batch changed in directory
    /// `dir` (newest change first) and marks those operations rejected with `reason`.
    /// Returns the paths that could not be put back (with why), which should be none.
    pub fn reject(&mut self, config: &Config, dir: &str, reason: &str) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        for undo in self.undo.iter_mut().rev() {
            if undo.dir != dir || self.results[undo.index].outcome != Outcome::Applied {
                continue;
            }
            if let Err(e) = undo.put_back(config) {
                failures.push((undo.path.clone(), e.to_string()));
            }
            self.results[undo.index].outcome = Outcome::Rejected(reason.to_string());
        }
        if let Some(journal) = self.journals.remove(dir) {
            journal.remove();
        }
        failures
    }

    /// Keeps the batch as applied: drops what was kept for undoing it.
    pub fn commit(self) -> Vec<OpResult> {
        self.results.clone()
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        // The journals first: a journal without its kept versions would put back
        // what is already accepted.
        for journal in self.journals.values() {
            journal.remove();
        }
        for undo in &self.undo {
            undo.forget();
        }
    }
}

/// A file written under a temporary name, renamed over its target at the end of the
/// batch once its data is durable.
struct Pending {
    index: usize,
    path: String,
    tmp: String,
    checked: Option<Fingerprint>,
}

/// The work of one batch that is deferred to its end, so that durability costs one
/// flush per batch rather than two fsyncs per file. Order of events for a file: the
/// temporary file is written; its data is flushed (fsync, or `syncfs` of its whole
/// filesystem); the target is checked again and the temporary file renamed over it;
/// the directory is fsynced. A crash at any point leaves the old file or the new one.
struct Session {
    fsync_each: bool,
    pending: Vec<Pending>,
    /// Configured directories (local paths) holding pending files: one `syncfs` each.
    filesystems: BTreeSet<PathBuf>,
    /// Directories (local paths) whose entries changed: one fsync each.
    dirty: BTreeSet<PathBuf>,
    /// Where the batch comes from, for backups.
    origin: String,
    /// Previous states kept for a rollback.
    undo: Vec<Undo>,
    /// Operations that changed something.
    changed: BTreeSet<usize>,
    /// Rollback journals, by configured directory.
    journals: BTreeMap<String, Journal>,
}

impl Session {
    fn new(fsync_each: bool, origin: &str) -> Session {
        Session {
            fsync_each,
            pending: Vec::new(),
            filesystems: BTreeSet::new(),
            dirty: BTreeSet::new(),
            origin: origin.to_string(),
            undo: Vec::new(),
            changed: BTreeSet::new(),
            journals: BTreeMap::new(),
        }
    }

    fn apply(
        &mut self,
        config: &Config,
        owners: bool,
        index: usize,
        op: &Op,
        content: Option<&[u8]>,
    ) -> Outcome {
        let Some(dir) = config.directory_of(&op.path) else {
            return Outcome::Failed("outside the configured directories".into());
        };
        let (parent, name) = match open_parent(config, dir, &op.path) {
            Ok(found) => found,
            // A deletion whose directory is already gone (deleted earlier in the batch,
            // or by another sync) is done: the path is absent, as wanted.
            Err(e) if e.missing && op.action == Action::Delete => return Outcome::Applied,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        // Where the directory validates what it receives, the file or link at the name
        // is first linked under a temporary name, so that a rejected change can be put
        // back. Linking moves the inode's ctime: it comes before the state is read. The
        // link lives at the top of the configured directory, where it cannot keep a
        // directory the batch deletes from being empty (on another filesystem: next to
        // the file).
        let kept = if dir.actions.validate.is_some() && dir.actions.run_on.on_receive() {
            match keep_previous(config, dir, &parent, &name) {
                Ok(kept) => kept,
                Err(e) => {
                    return Outcome::Failed(format!(
                        "cannot keep the previous version for a rollback: {e}"
                    ))
                }
            }
        } else {
            None
        };
        let undo_before = self.undo.len();
        let outcome = self.apply_at(
            config,
            owners,
            index,
            op,
            content,
            dir,
            parent,
            name,
            kept.clone(),
        );
        if let (Some(kept), true) = (&kept, self.undo.len() == undo_before) {
            // Not changed after all: the kept link is not needed.
            kept.forget();
        }
        outcome
    }

    /// [`Session::apply`] once the parent directory is open (and, in a validated
    /// directory, the previous file linked as `kept`).
    #[allow(clippy::too_many_arguments)]
    fn apply_at(
        &mut self,
        config: &Config,
        owners: bool,
        index: usize,
        op: &Op,
        content: Option<&[u8]>,
        dir: &Directory,
        parent: OwnedFd,
        name: String,
        kept: Option<Kept>,
    ) -> Outcome {
        let checked = match current_state(&parent, &name) {
            Ok(checked) => checked,
            Err(e) => return Outcome::Failed(format!("cannot read the current state: {e}")),
        };
        if let Some(kept) = &kept {
            // The link must hold the inode whose state was just read.
            let same =
                rustix::fs::statat(&*kept.holder, kept.tmp.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .ok()
                    .zip(checked.as_ref())
                    .is_some_and(|(st, (_, fp))| st.st_ino == fp.ino && st.st_dev == fp.dev);
            if !same {
                return Outcome::Conflict(
                    "changed on the peer while the operation was being applied".into(),
                );
            }
        }
        let current = checked.as_ref().map(|(entry, _)| entry);

        // Already in the wanted state (another sync got there first): nothing to do.
        let wanted = match &op.action {
            Action::Put { entry } => Some(entry),
            Action::Delete => None,
        };
        let already = match (current, wanted) {
            (None, None) => true,
            (Some(have), Some(want)) => have.same_state(want, owners),
            _ => false,
        };
        if already {
            return Outcome::Applied;
        }
        // Owners count only where they are applied: the expectation of an automatic
        // push is the sender's own version, owners included.
        let as_expected = match (current, &op.expect) {
            (None, None) => true,
            (Some(have), Some(expect)) => have.same_state(expect, owners),
            _ => false,
        };
        if !as_expected {
            let describe =
                |e: Option<&Entry>| e.map_or_else(|| "nothing".to_string(), Entry::describe);
            return Outcome::Conflict(format!(
                "changed on the peer since the sync was planned (expected {}, found {})",
                describe(op.expect.as_ref()),
                describe(current)
            ));
        }

        // The previous version: into the backups, and kept for a rollback where the
        // directory validates what it receives. Without either, nothing is changed.
        if let (Some(backup), Some(have)) = (&dir.backup, current) {
            if !have.content.is_dir() {
                let verb = match op.action {
                    Action::Delete => "deleted",
                    Action::Put { .. } => "replaced",
                };
                let reason = format!("{verb} by {}", self.origin);
                if let Err(e) = crate::backup::save(backup, &op.path, &parent, &name, have, &reason)
                {
                    return Outcome::Failed(format!(
                        "cannot back up the previous version to {}: {e}",
                        backup.directory.display()
                    ));
                }
            }
        }
        if dir.actions.validate.is_some() && dir.actions.run_on.on_receive() {
            let previous = match (current, &kept) {
                (None, _) => Previous::Absent,
                (Some(have), _) if have.content.is_dir() => Previous::Dir(have.mode),
                (Some(_), Some(kept)) => Previous::Linked(kept.clone()),
                (Some(_), None) => {
                    return Outcome::Conflict(
                        "changed on the peer while the operation was being applied".into(),
                    )
                }
            };
            let undo = Undo {
                index,
                dir: dir.path.clone(),
                path: op.path.clone(),
                previous,
            };
            if let Err(e) = self.record(config, dir, &undo) {
                return Outcome::Failed(format!("cannot record the change for a rollback: {e}"));
            }
            self.undo.push(undo);
        }

        let target = Target {
            parent: &parent,
            name: &name,
            checked: checked.as_ref().map(|(_, fp)| *fp),
        };
        let step = match &op.action {
            Action::Delete => target.delete(current).map(Step::Done),
            Action::Put { entry } => target.put(entry, content, owners, self.fsync_each),
        };
        let parent_dir = config.local_path(paths::parent(&op.path));
        match step {
            Ok(Step::Done(outcome)) => {
                if outcome == Outcome::Applied {
                    self.changed.insert(index);
                    self.dirty.insert(parent_dir);
                }
                outcome
            }
            Ok(Step::Rename(tmp)) => {
                self.changed.insert(index);
                self.filesystems.insert(config.local_path(&dir.path));
                self.pending.push(Pending {
                    index,
                    path: op.path.clone(),
                    tmp,
                    checked: target.checked,
                });
                Outcome::Applied
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// Writes `undo` to the journal of its directory (created with the first change).
    fn record(&mut self, config: &Config, dir: &Directory, undo: &Undo) -> io::Result<()> {
        let journal = match self.journals.entry(dir.path.clone()) {
            std::collections::btree_map::Entry::Occupied(found) => found.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Journal::create(config, dir)?)
            }
        };
        journal.record(undo)
    }

    /// Flushes, renames the pending files into place and fsyncs the changed directories.
    fn finish(mut self, config: &Config, results: &mut [OpResult]) {
        let mut flush_failed = None;
        if !self.fsync_each {
            for local in &self.filesystems {
                let flushed = rustix::fs::open(
                    local,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .and_then(rustix::fs::syncfs);
                if let Err(e) = flushed {
                    flush_failed = Some(format!("cannot flush the data to disk: {e}"));
                }
            }
        }
        for pending in std::mem::take(&mut self.pending) {
            let dir = config.directory_of(&pending.path).expect("validated path");
            let outcome = match open_parent(config, dir, &pending.path) {
                Err(reason) => Outcome::Failed(reason.to_string()),
                Ok((parent, name)) => {
                    let target = Target {
                        parent: &parent,
                        name: &name,
                        checked: pending.checked,
                    };
                    let prepared = match &flush_failed {
                        Some(reason) => Err(io::Error::other(reason.clone())),
                        None => Ok(()),
                    };
                    target
                        .rename_into_place(&pending.tmp, prepared)
                        .unwrap_or_else(|e| Outcome::Failed(e.to_string()))
                }
            };
            if outcome == Outcome::Applied {
                self.dirty
                    .insert(config.local_path(paths::parent(&pending.path)));
            }
            results[pending.index].outcome = outcome;
        }
        for local in &self.dirty {
            let synced = rustix::fs::open(
                local,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .and_then(rustix::fs::fsync);
            match synced {
                // Changed, then deleted later in the same batch: nothing left to flush.
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => {
                    tracing::warn!(directory = %local.display(), error = %e, "cannot fsync a directory")
                }
            }
        }
    }
}

/// What a put did: finished, or left a temporary file to rename at the end of the batch.
enum Step {
    Done(Outcome),
    Rename(String),
}

/// Why the directory holding a path could not be opened.
#[derive(Debug)]
pub(crate) struct ParentError {
    /// A directory on the way does not exist (so neither does the path).
    pub missing: bool,
    message: String,
}

impl ParentError {
    fn other(message: String) -> ParentError {
        ParentError {
            missing: false,
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
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if path == dir.path {
        // The configured directory itself: its parent is the administrator's, trusted.
        let parent = config.local_path(paths::parent(&dir.path));
        let fd = rustix::fs::open(&parent, dir_flags, Mode::empty())
            .map_err(|e| ParentError::other(format!("cannot open {}: {e}", parent.display())))?;
        return Ok((fd, paths::file_name(path).to_string()));
    }
    let base = config.local_path(&dir.path);
    let mut fd = rustix::fs::open(&base, dir_flags, Mode::empty()).map_err(|e| {
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
        fd = match rustix::fs::openat(&fd, component, dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) => {
                return Err(ParentError {
                    missing: true,
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
                return Err(ParentError::other(if is_link {
                    format!(
                        "refused, {logical} is a symlink on this node (links are never followed)"
                    )
                } else {
                    format!("{logical} cannot be opened as a directory: {e}")
                }));
            }
        };
    }
    Ok((fd, name))
}

/// What identifies one inode in one state: a write or a metadata change moves `ctime`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
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
fn current_state(parent: &OwnedFd, name: &str) -> io::Result<Option<(Entry, Fingerprint)>> {
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

fn changed_underneath() -> Outcome {
    Outcome::Conflict("changed on the peer while the operation was being applied".into())
}

/// One name in one opened directory, with the fingerprint of what was checked there.
struct Target<'a> {
    parent: &'a OwnedFd,
    name: &'a str,
    checked: Option<Fingerprint>,
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

    fn put(
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
    fn rename_into_place(&self, tmp: &str, prepared: io::Result<()>) -> io::Result<Outcome> {
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

    fn delete(&self, current: Option<&Entry>) -> io::Result<Outcome> {
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
            Ok(()) => {}
            Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {
                return Ok(Outcome::Kept(
                    "directory kept: it holds paths excluded on this node".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Outcome::Applied)
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

/// Whether this process can apply owners.
pub fn applies_owners() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config_at, put};
    use std::path::Path;

    /// Applies one operation as a batch of its own.
    fn apply_op(config: &Config, owners: bool, op: &Op, content: Option<&[u8]>) -> Outcome {
        let mut session = Session::new(true, "a test");
        let outcome = session.apply(config, owners, 0, op, content);
        let mut results = vec![OpResult {
            path: op.path.clone(),
            outcome,
        }];
        session.finish(config, &mut results);
        results.remove(0).outcome
    }

    fn config(root: &Path) -> Config {
        config_at(root, r#""/etc/app/private", "*.swp""#)
    }

    fn refusal(config: &Config, ops: Vec<Op>) -> String {
        validate_batch(config, &BatchHeader { ops }).unwrap_err()
    }

    #[test]
    fn deleting_below_a_directory_already_deleted_is_done_not_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(app.join("gone")).unwrap();
        std::fs::write(app.join("gone/x"), "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let delete = |path: &str, expect: Option<Entry>| Op {
            path: path.into(),
            action: Action::Delete,
            expect,
        };
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let file = Entry {
            mode: mode(&app.join("gone/x")),
            ..crate::testing::file_entry(b"x")
        };
        let dir = Entry {
            content: Content::Dir,
            mode: mode(&app.join("gone")),
            ..file.clone()
        };
        // The directory goes; deletions below it (an echo, or another sync's) then find
        // no parent: the path is absent, as wanted, whatever was expected there.
        let header = BatchHeader {
            ops: vec![
                delete("/etc/app/gone/x", Some(file.clone())),
                delete("/etc/app/gone", Some(dir)),
                delete("/etc/app/gone/y", Some(file)),
                delete("/etc/app/never/z", None),
            ],
        };
        let body = crate::protocol::encode_batch(&header, &[]);
        let batch = crate::protocol::decode_batch(&body).unwrap();
        let results = apply_batch(&c, false, &batch, "a test").commit();
        for result in &results {
            assert_eq!(result.outcome, Outcome::Applied, "{}", result.path);
        }
        assert!(!app.join("gone").exists());
    }

    #[test]
    fn paths_outside_or_excluded_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let cases = [
            ("/etc/app/../passwd", "\"..\""),
            ("/etc/passwd", "outside the configured directories"),
            ("/etc/application/x", "outside the configured directories"),
            ("etc/app/x", "not absolute"),
            ("/etc/app/private/key", "excluded on this node"),
            ("/etc/app/dir.swp/inner", "excluded on this node"),
            ("/etc/app/.gosyncd-1.tmp", "temporary file name"),
            ("/etc/app/.gosyncd-1.tmp/inner", "temporary file name"),
        ];
        for (path, why) in cases {
            let err = refusal(&c, vec![put(path, b"x")]);
            assert!(err.contains(why), "{path}: {err}");
        }
    }

    #[test]
    fn configured_directories_are_never_deleted_or_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let delete = Op {
            path: "/etc/app".into(),
            action: Action::Delete,
            expect: None,
        };
        assert!(refusal(&c, vec![delete]).contains("never deleted"));
        assert!(refusal(&c, vec![put("/etc/app", b"x")]).contains("stay a directory"));
    }

    #[test]
    fn impossible_modes_and_link_targets_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let mut op = put("/etc/app/x", b"x");
        if let Action::Put { entry } = &mut op.action {
            entry.mode = 0o170_000;
        }
        assert!(refusal(&c, vec![op]).contains("not a permission mode"));
        let mut link = put("/etc/app/l", b"");
        if let Action::Put { entry } = &mut link.action {
            entry.content = Content::Symlink {
                target: String::new(),
            };
        }
        assert!(refusal(&c, vec![link]).contains("invalid symlink target"));
    }

    #[test]
    fn a_symlink_planted_in_a_parent_refuses_the_whole_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), app.join("sub")).unwrap();
        let ops = vec![put("/etc/app/fine", b"1"), put("/etc/app/sub/evil", b"2")];
        let err = refusal(&c, ops);
        assert!(err.contains("/etc/app/sub is a symlink"), "{err}");
        assert!(
            !app.join("fine").exists(),
            "nothing is written when a batch is refused"
        );
        assert_eq!(
            std::fs::read_dir(tmp.path().join("outside"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn the_executor_refuses_a_symlink_that_appears_after_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        let op = put("/etc/app/sub/evil", b"2");
        validate_batch(
            &c,
            &BatchHeader {
                ops: vec![op.clone()],
            },
        )
        .unwrap();
        // The link is planted between validation and execution.
        std::os::unix::fs::symlink(tmp.path().join("outside"), app.join("sub")).unwrap();
        let outcome = apply_op(&c, false, &op, Some(b"2"));
        assert!(
            matches!(&outcome, Outcome::Failed(r) if r.contains("symlink")),
            "{outcome:?}"
        );
        assert_eq!(
            std::fs::read_dir(tmp.path().join("outside"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_put_lands_atomically_with_its_mode_and_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("x"), b"old").unwrap();
        let mut op = put("/etc/app/x", b"new content");
        let old = crate::manifest::read_entry(&app.join("x"), false, &Default::default())
            .unwrap()
            .unwrap();
        op.expect = Some(old);
        if let Action::Put { entry } = &mut op.action {
            entry.mode = 0o600;
        }
        assert_eq!(
            apply_op(&c, false, &op, Some(b"new content")),
            Outcome::Applied
        );
        assert_eq!(std::fs::read(app.join("x")).unwrap(), b"new content");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(app.join("x"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&app)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x"]);
    }

    #[test]
    fn a_stale_expectation_is_a_conflict_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("x"), b"edited on the peer").unwrap();
        let op = put("/etc/app/x", b"pushed"); // planned against "nothing there"
        let outcome = apply_op(&c, false, &op, Some(b"pushed"));
        assert!(
            matches!(&outcome, Outcome::Conflict(r) if r.contains("expected nothing")),
            "{outcome:?}"
        );
        assert_eq!(std::fs::read(app.join("x")).unwrap(), b"edited on the peer");
    }

    #[test]
    fn a_fifo_in_place_of_a_file_does_not_block() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            app.join("fifo").as_path(),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let outcome = apply_op(&c, false, &put("/etc/app/fifo", b"x"), Some(b"x"));
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    }

    #[test]
    fn a_mode_change_never_touches_another_name_of_a_hard_linked_file() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let outside = tmp.path().join("outside-secret");
        std::fs::write(&outside, b"same").unwrap();
        std::fs::hard_link(&outside, app.join("x")).unwrap();
        let mut op = put("/etc/app/x", b"same");
        op.expect =
            crate::manifest::read_entry(&app.join("x"), false, &Default::default()).unwrap();
        if let Action::Put { entry } = &mut op.action {
            entry.mode = 0o4777;
        }
        assert_eq!(op.needs_content(), None, "a metadata-only update");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let outside_mode = mode(&outside);
        assert_eq!(apply_op(&c, false, &op, None), Outcome::Applied);
        assert_eq!(mode(&app.join("x")), 0o4777);
        assert_eq!(mode(&outside), outside_mode, "the other name is untouched");
        assert_eq!(std::fs::read(app.join("x")).unwrap(), b"same");
    }

    #[test]
    fn a_change_between_check_and_rename_is_a_conflict() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
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
    fn a_large_batch_is_flushed_once_and_renamed_into_place() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("f07"), b"edited on the peer").unwrap();
        let contents: Vec<Vec<u8>> = (0..40)
            .map(|i| format!("content {i}").into_bytes())
            .collect();
        let ops: Vec<Op> = (0..40)
            .map(|i| put(&format!("/etc/app/f{i:02}"), &contents[i]))
            .collect();
        assert!(ops.len() > FSYNC_EACH_MAX_FILES);
        let slices: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
        let body = crate::protocol::encode_batch(&BatchHeader { ops }, &slices);
        let batch = crate::protocol::decode_batch(&body).unwrap();
        validate_batch(&c, &batch.header).unwrap();
        let results = apply_batch(&c, false, &batch, "a test").commit();
        for (i, result) in results.iter().enumerate() {
            if i == 7 {
                assert!(matches!(result.outcome, Outcome::Conflict(_)), "{result:?}");
                assert_eq!(
                    std::fs::read(app.join("f07")).unwrap(),
                    b"edited on the peer"
                );
            } else {
                assert_eq!(result.outcome, Outcome::Applied, "{}", result.path);
                assert_eq!(
                    std::fs::read(app.join(format!("f{i:02}"))).unwrap(),
                    contents[i]
                );
            }
        }
        assert_eq!(
            std::fs::read_dir(&app).unwrap().count(),
            40,
            "no temporary file is left"
        );
    }

    #[test]
    fn stale_temporary_files_are_removed_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
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

/// Hostile batches against a real tree: whatever paths, links and deletions a peer
/// sends, nothing outside the configured directory (nor in its excluded part) changes,
/// and every accepted path is a normalised one inside it.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::protocol::{decode_batch, encode_batch};
    use crate::testing::{config_at, file_entry};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// Mostly ordinary names (so that many batches are accepted and applied), with every
    /// kind of hostile component mixed in.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => "[a-c]{1,2}",
            3 => Just("private".to_string()),
            3 => Just("link".to_string()),
            2 => Just("sub".to_string()),
            1 => Just("..".to_string()),
            1 => Just(".".to_string()),
            1 => Just(String::new()),
            1 => Just("etc".to_string()),
            1 => Just("app".to_string()),
            1 => Just("other".to_string()),
            1 => Just("x.swp".to_string()),
            1 => Just(".gosyncd-1.tmp".to_string()),
            1 => Just("a\0b".to_string()),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        (
            prop::bool::weighted(0.95),
            prop::collection::vec(segment(), 0..5),
            prop::bool::weighted(0.8),
        )
            .prop_map(|(absolute, segments, under_app)| {
                let mut parts = Vec::new();
                if under_app {
                    parts.extend(["etc".to_string(), "app".to_string()]);
                }
                parts.extend(segments);
                let joined = parts.join("/");
                if absolute {
                    format!("/{joined}")
                } else {
                    joined
                }
            })
    }

    fn op() -> impl Strategy<Value = (Op, Option<Vec<u8>>)> {
        let target = prop_oneof![
            Just("../../outside".to_string()),
            Just("/etc/other".to_string()),
            Just("..".to_string()),
            path(),
        ];
        (
            path(),
            0..4u8,
            prop::collection::vec(any::<u8>(), 0..16),
            target,
        )
            .prop_map(|(path, kind, bytes, target)| {
                let entry = |content| Entry {
                    content,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime_ns: 0,
                };
                let (action, content) = match kind {
                    0 => (
                        Action::Put {
                            entry: file_entry(&bytes),
                        },
                        Some(bytes),
                    ),
                    1 => (
                        Action::Put {
                            entry: entry(Content::Dir),
                        },
                        None,
                    ),
                    2 => (
                        Action::Put {
                            entry: entry(Content::Symlink { target }),
                        },
                        None,
                    ),
                    _ => (Action::Delete, None),
                };
                (
                    Op {
                        path,
                        action,
                        expect: None,
                    },
                    content,
                )
            })
    }

    /// Everything under `root` except the configured directory's non-excluded part:
    /// path -> what it is (file content, link target, or a directory).
    fn untouchable(root: &Path) -> BTreeMap<PathBuf, String> {
        let app = root.join("etc/app");
        let private = app.join("private");
        walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| !e.path().starts_with(&app) || e.path().starts_with(&private))
            .map(|e| {
                let what = if e.path_is_symlink() {
                    format!("link {:?}", std::fs::read_link(e.path()).unwrap())
                } else if e.file_type().is_dir() {
                    "dir".to_string()
                } else {
                    format!("file {:?}", std::fs::read(e.path()).unwrap())
                };
                (e.path().to_path_buf(), what)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::testing::cases(500)))]

        #[test]
        fn no_batch_changes_anything_outside_the_configured_directory(
            ops in prop::collection::vec(op(), 1..4)
        ) {
            // In memory where possible: the property is about paths, not about flushing.
            let tmp = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
            let root = tmp.path();
            for dir in ["etc/app/sub", "etc/app/private", "etc/other", "outside"] {
                std::fs::create_dir_all(root.join(dir)).unwrap();
            }
            std::fs::write(root.join("etc/app/a"), "a").unwrap();
            std::fs::write(root.join("etc/app/private/key"), "key").unwrap();
            std::fs::write(root.join("etc/other/file"), "other").unwrap();
            std::fs::write(root.join("outside/secret"), "secret").unwrap();
            // A link planted inside the directory, pointing out of it.
            std::os::unix::fs::symlink("../../outside", root.join("etc/app/link")).unwrap();
            let config = config_at(root, r#""/etc/app/private", "*.swp""#);
            let before = untouchable(root);

            let (ops, contents): (Vec<Op>, Vec<Option<Vec<u8>>>) = ops.into_iter().unzip();
            let header = BatchHeader { ops };
            let contents: Vec<&[u8]> = contents.iter().flatten().map(Vec::as_slice).collect();
            let body = encode_batch(&header, &contents);
            let Ok(batch) = decode_batch(&body) else {
                return Ok(());
            };
            if validate_batch(&config, &batch.header).is_ok() {
                for op in &batch.header.ops {
                    prop_assert!(crate::paths::check_normalized(&op.path).is_ok(), "{}", op.path);
                    prop_assert!(crate::paths::is_within(&op.path, "/etc/app"), "{}", op.path);
                    prop_assert!(!crate::paths::is_within(&op.path, "/etc/app/private"), "{}", op.path);
                }
                apply_batch(&config, false, &batch, "a test").commit();
            }
            prop_assert_eq!(untouchable(root), before);
        }
    }
}

#[cfg(test)]
mod rollback_tests {
    use super::*;
    use crate::protocol::{decode_batch, encode_batch};
    use crate::testing::{config_text, parse, put};

    #[test]
    fn a_rejected_batch_puts_every_path_back() {
        let tmp = tempfile::tempdir().unwrap();
        let text = config_text(tmp.path(), "")
            .replace("  exclude = []", "  exclude = []\n  validate = \"false\"");
        let config = parse(&text);
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("old.cfg"), "old").unwrap();
        let old = Op {
            expect: Some(crate::testing::file_entry(b"old")),
            ..put("/etc/app/old.cfg", b"replaced")
        };
        let header = BatchHeader {
            ops: vec![put("/etc/app/new.cfg", b"new"), old],
        };
        let body = encode_batch(&header, &[b"new", b"replaced"]);
        let batch = decode_batch(&body).unwrap();
        let mut applied = apply_batch(&config, false, &batch, "a test");
        assert!(app.join("new.cfg").exists());
        assert_eq!(applied.results[1].outcome, Outcome::Applied);
        assert_eq!(std::fs::read(app.join("old.cfg")).unwrap(), b"replaced");
        let failures = applied.reject(&config, "/etc/app", "no");
        assert_eq!(failures, Vec::<(String, String)>::new());
        assert!(!app.join("new.cfg").exists());
        assert_eq!(std::fs::read(app.join("old.cfg")).unwrap(), b"old");
    }
}
