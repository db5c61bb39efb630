//! The executor: carries out each operation of a validated batch (checking the state it
//! expects, settling a conflict by its directory's `on_conflict`, taking backups,
//! keeping what a rollback needs) and defers the renames and flushes to the end of the
//! batch. It relies on validation for nothing the tree can change meanwhile: every path
//! is reached again through the `fs` primitives. What the outcomes mean for the caller
//! (commit or rejection) is not its business but `batch`'s.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::AtFlags;
use rustix::io::Errno;

use super::fs::{changed_underneath, current_state, Fingerprint, Step, Target};
use super::staging::Received;
use crate::config::{Config, Directory, OnConflict, Side};
use crate::manifest::{Placed, Stamp};
use crate::paths;
use crate::protocol::{Action, Content, Entry, Op, OpResult, Outcome};
use crate::rollback::{keep_previous, Journal, Kept, Previous, Undo};
use crate::tree::{open_dir, Parents};

/// A file put in place at the end of the batch, once its data is durable.
struct Pending {
    index: usize,
    path: String,
    checked: Option<Fingerprint>,
    how: Placing,
}

/// How a pending file takes its name.
enum Placing {
    /// Written under the temporary name `tmp`, renamed over the target; `inode`: the
    /// device and inode of the temporary file.
    Rename { tmp: String, inode: (u64, u64) },
    /// An anonymous file, linked at the name (which was free).
    Link(Received),
}

/// The work of one batch that is deferred to its end, so that durability costs one
/// flush per batch rather than two fsyncs per file. Order of events for a file: the
/// temporary file is written and given its metadata; its data is flushed (fsync, or
/// `syncfs` of its whole filesystem); the target is checked again and the temporary
/// file renamed over it, or, for a new file received into an anonymous one, that file
/// is linked at the name while it is still free; the directory is fsynced. A crash at
/// any point leaves the old file or the new one (or none, for a new one).
pub(super) struct Session {
    fsync_each: bool,
    pending: Vec<Pending>,
    /// Configured directories (local paths) holding pending files: one `syncfs` each.
    filesystems: BTreeSet<PathBuf>,
    /// The tops of configured directories (local paths) opened as the batch's contents
    /// began to arrive, which its `syncfs` goes through.
    received_in: BTreeMap<PathBuf, Arc<OwnedFd>>,
    /// Directories (logical paths) whose entries changed: one fsync each.
    dirty: BTreeSet<String>,
    /// Where the batch comes from, for backups.
    origin: String,
    /// Previous states kept for a rollback.
    pub(super) undo: Vec<Undo>,
    /// Operations that changed something.
    pub(super) changed: BTreeSet<usize>,
    /// Conflicts settled for the incoming version (`on_conflict = "newest"`).
    pub(super) resolved: Vec<Resolution>,
    /// Rollback journals, by configured directory.
    pub(super) journals: BTreeMap<String, Journal>,
    /// The opened tops of validated directories, by configured directory.
    tops: BTreeMap<String, Arc<OwnedFd>>,
    /// The directories opened for the last operation, reused by the next.
    parents: Parents,
    /// The sender's owners are not the files' (it does not run as root): none is
    /// applied, and a replaced file keeps its owner here.
    pub(super) foreign_owners: bool,
    /// Where each file put in place is noted, for this node's watcher (see [`Placed`]).
    pub(super) placed: Option<Arc<Placed>>,
    /// Directories (logical paths) this batch made: what is put in them is put without
    /// reading the state of its name first (see [`Session::apply_at`]).
    made: HashSet<String>,
}

impl Session {
    pub(super) fn new(fsync_each: bool, origin: &str) -> Session {
        Session {
            fsync_each,
            pending: Vec::new(),
            filesystems: BTreeSet::new(),
            received_in: BTreeMap::new(),
            dirty: BTreeSet::new(),
            origin: origin.to_string(),
            undo: Vec::new(),
            changed: BTreeSet::new(),
            resolved: Vec::new(),
            journals: BTreeMap::new(),
            tops: BTreeMap::new(),
            parents: Parents::default(),
            foreign_owners: false,
            placed: None,
            made: HashSet::new(),
        }
    }

    pub(super) fn apply(
        &mut self,
        config: &Config,
        owners: bool,
        index: usize,
        op: &Op,
        content: Option<Result<Received, String>>,
    ) -> Outcome {
        let Some(dir) = config.directory_of(&op.path) else {
            return Outcome::Failed("outside the configured directories".into());
        };
        if let Some(Ok(received)) = &content {
            self.received_in
                .entry(config.local_path(&dir.path))
                .or_insert_with(|| received.top().clone());
        }
        if let Err(why) = super::check_mode(config, dir, op) {
            return Outcome::Refused(why);
        }
        let (parent, name) = match self.parents.parent(config, dir, &op.path) {
            Ok(found) => found,
            // A deletion whose directory is already gone (deleted earlier in the batch,
            // or by another sync) is done: the path is absent, as wanted.
            Err(e) if e.missing && op.action == Action::Delete => return Outcome::Applied,
            Err(e) if e.link => return Outcome::Refused(e.to_string()),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        // Where the directory validates what it receives, the file or link at the name
        // is first linked under a temporary name, so that a rejected change can be put
        // back. Linking moves the inode's ctime: it comes before the state is read. The
        // link lives at the top of the configured directory, where it cannot keep a
        // directory the batch deletes from being empty (on another filesystem: next to
        // the file).
        let kept = if dir.hooks.validator(Side::Received).is_some() {
            match self
                .top(config, dir)
                .and_then(|top| keep_previous(&top, &parent, &name))
            {
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
        let at = At {
            config,
            dir,
            op,
            index,
            parent,
            name,
            kept: kept.clone(),
        };
        let outcome = self.apply_at(&at, owners, content);
        if let (Some(kept), true) = (&kept, self.undo.len() == undo_before) {
            // Not changed after all: the kept link is not needed.
            kept.forget();
        }
        outcome
    }

    /// [`Session::apply`] once the parent directory is open (and, in a validated
    /// directory, the previous file linked as `kept`): the current state is read and
    /// checked against the operation's expectation, the previous version kept, and the
    /// change made.
    fn apply_at(
        &mut self,
        at: &At<'_>,
        owners: bool,
        content: Option<Result<Received, String>>,
    ) -> Outcome {
        // A name in a directory this batch made holds nothing but what another process
        // may have put there since: a put there reads no state (an initial sync's every
        // file), and takes the name only if it is still free, as a put of a new path
        // does (a link, a rename or a `mkdir` that fails on a taken name, then a
        // conflict). Nothing there is replaced unseen.
        let fresh = at.kept.is_none()
            && matches!(at.op.action, Action::Put { .. })
            && self.made.contains(paths::parent(&at.op.path));
        let checked = match fresh {
            true => None,
            false => match at.current_state() {
                Ok(checked) => checked,
                Err(outcome) => return outcome,
            },
        };
        let current = checked.as_ref().map(|(entry, _)| entry);
        // Owners the sender could not know: compared nowhere, and a replaced file keeps
        // the one it has (a new one is this process's).
        let (owners, kept_owner) = match (self.foreign_owners, &at.op.action, current) {
            (false, _, _) => (owners, None),
            (true, Action::Put { entry }, Some(have)) if owners => {
                let mut kept = entry.clone();
                (kept.uid, kept.gid) = (have.uid, have.gid);
                (false, Some(kept))
            }
            (true, _, _) => (false, None),
        };
        // A conflict the directory settles for a newer incoming version is applied as if
        // the expectation had held; only where the version it replaces can be kept.
        let resolving = match settled_or_conflicting(at.op, current, owners) {
            None => false,
            Some(Outcome::Conflict(_))
                if at.dir.backup.is_some() && newer_wins(at.dir.on_conflict, at.op, current) =>
            {
                true
            }
            Some(outcome) => return outcome,
        };
        let backed_up = match self.keep_previous_version(at, current, resolving) {
            Ok(backed_up) => backed_up,
            Err(outcome) => return outcome,
        };

        let target = Target {
            parent: &at.parent,
            name: &at.name,
            checked: checked.as_ref().map(|(_, fp)| *fp),
        };
        let step = match &at.op.action {
            Action::Delete => match target.delete(current) {
                Err(e) if e.raw_os_error() == Some(Errno::NOTEMPTY.raw_os_error()) => {
                    Ok(Step::Done(not_empty(at.dir, &at.op.path, &target)))
                }
                other => other.map(Step::Done),
            },
            Action::Put { entry } => {
                // A directory made: told to the watcher, which then has nothing to look
                // at in it if it is still as made once watched (and nor in its parent,
                // if made here too, as it is now).
                let making = match (&self.placed, &entry.content, target.checked) {
                    (Some(placed), Content::Dir, None) => {
                        Some(placed.making(at.config.local_path(&at.op.path)))
                    }
                    _ => None,
                };
                let step = match &kept_owner {
                    Some(kept) => target.put(kept, content, true, self.fsync_each),
                    None => target.put(entry, content, owners, self.fsync_each),
                };
                if let (Some(making), Ok(Step::Made { made, parent })) = (making, &step) {
                    making.made(*made, *parent);
                }
                step
            }
        };
        let outcome = match step {
            Ok(Step::Done(outcome)) => {
                if outcome == Outcome::Applied {
                    self.changed.insert(at.index);
                    self.dirty.insert(paths::parent(&at.op.path).to_string());
                }
                outcome
            }
            Ok(Step::Rename(tmp, inode)) => {
                self.defer(at, target.checked, Placing::Rename { tmp, inode });
                Outcome::Applied
            }
            Ok(Step::Link(received)) => {
                self.defer(at, target.checked, Placing::Link(received));
                Outcome::Applied
            }
            Ok(Step::Made { .. }) => {
                self.made.insert(at.op.path.to_string());
                self.changed.insert(at.index);
                self.dirty.insert(paths::parent(&at.op.path).to_string());
                Outcome::Applied
            }
            Err(e) => Outcome::Failed(e.to_string()),
        };
        if let (true, Action::Put { entry }, Some(have)) = (resolving, &at.op.action, current) {
            if outcome == Outcome::Applied {
                self.resolved.push(Resolution {
                    index: at.index,
                    path: at.op.path.to_string(),
                    incoming_mtime_ns: entry.mtime_ns,
                    replaced_mtime_ns: have.mtime_ns,
                    backup: backed_up,
                });
            }
        }
        outcome
    }

    /// Leaves a file to be put in place at the end of the batch.
    fn defer(&mut self, at: &At<'_>, checked: Option<Fingerprint>, how: Placing) {
        self.changed.insert(at.index);
        self.filesystems.insert(at.config.local_path(&at.dir.path));
        self.pending.push(Pending {
            index: at.index,
            path: at.op.path.to_string(),
            checked,
            how,
        });
    }

    /// The previous version at the operation's path: into the backups, and kept for a
    /// rollback where the directory validates what it receives (its journal line written
    /// first for a change made at once). Without either, nothing is done. `resolving`:
    /// the operation wins a conflict against it (`on_conflict = "newest"`), which its
    /// backup says. Returns where the backup was written, if one was.
    fn keep_previous_version(
        &mut self,
        at: &At<'_>,
        current: Option<&Entry>,
        resolving: bool,
    ) -> Result<Option<PathBuf>, Outcome> {
        let (dir, op) = (at.dir, at.op);
        let mut backed_up = None;
        if let (Some(backup), Some(have)) = (&dir.backup, current) {
            if !have.content.is_dir() {
                let verb = match op.action {
                    Action::Delete => "deleted",
                    Action::Put { .. } => "replaced",
                };
                let mut reason = format!("{verb} by {}", self.origin);
                if resolving {
                    reason.push_str(", newer, in a conflict (on_conflict = \"newest\")");
                }
                let kept =
                    crate::backup::save(backup, &op.path, &at.parent, &at.name, have, &reason)
                        .map_err(|e| {
                            Outcome::Failed(format!(
                                "cannot back up the previous version to {}: {e}",
                                backup.directory.display()
                            ))
                        })?;
                backed_up = Some(crate::backup::location(backup, &kept));
            }
        }
        if dir.hooks.validator(Side::Received).is_none() {
            return Ok(backed_up);
        }
        let previous = match (current, &at.kept) {
            (None, _) => Previous::Absent,
            (Some(have), _) if have.content.is_dir() => Previous::Dir(have.mode),
            (Some(_), Some(kept)) => Previous::Linked(kept.clone()),
            (Some(_), None) => return Err(changed_underneath()),
        };
        let undo = Undo {
            index: at.index,
            dir: dir.path.clone(),
            path: op.path.to_string(),
            previous,
        };
        // A change made now, not renamed into place at the end of the batch (anything
        // but a file, which `Target::put` always writes under a temporary name), waits
        // until its journal line is on disk.
        let immediate = !matches!(
            &op.action,
            Action::Put { entry } if matches!(entry.content, Content::File { .. })
        );
        self.record(at.config, dir, &undo, immediate).map_err(|e| {
            Outcome::Failed(format!("cannot record the change for a rollback: {e}"))
        })?;
        self.undo.push(undo);
        Ok(backed_up)
    }

    /// Writes `undo` to the journal of its directory (created with the first change), and
    /// flushes it when the change is `immediate`.
    fn record(
        &mut self,
        config: &Config,
        dir: &Directory,
        undo: &Undo,
        immediate: bool,
    ) -> io::Result<()> {
        let top = self.top(config, dir)?;
        let journal = match self.journals.entry(dir.path.clone()) {
            std::collections::btree_map::Entry::Occupied(found) => found.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => slot.insert(Journal::create(top)?),
        };
        journal.record(undo)?;
        if immediate {
            journal.sync()?;
        }
        Ok(())
    }

    /// The top of configured directory `dir`, opened once per batch: the kept versions
    /// and the journal of a validated directory live there.
    fn top(&mut self, config: &Config, dir: &Directory) -> io::Result<Arc<OwnedFd>> {
        if let Some(top) = self.tops.get(&dir.path) {
            return Ok(top.clone());
        }
        let top = Arc::new(open_dir(config.local_path(&dir.path))?);
        self.tops.insert(dir.path.clone(), top.clone());
        Ok(top)
    }

    /// Flushes, puts the pending files in place and fsyncs the changed directories.
    /// Returns the stamp of each file put in place, by operation: read once the file has
    /// its name (the rename or link moved its ctime), it is what a scan of this node finds there
    /// while nothing changes the file, so that a daemon can take the hash it received
    /// instead of reading the file again.
    pub(super) fn finish(
        mut self,
        config: &Config,
        results: &mut [OpResult],
    ) -> Vec<(usize, Stamp)> {
        let mut stamps = Vec::new();
        let mut flush_failed = None;
        if !self.fsync_each {
            // The kernel tells each open directory of a writeback error once: one opened
            // before the error, or after it while nobody was told of it yet. The top
            // opened as the batch began to arrive is told of every error since, even one
            // an early flush (see `writeback`) or another process's flush was told of
            // first.
            for local in &self.filesystems {
                let flushed = match self.received_in.get(local) {
                    Some(top) => rustix::fs::syncfs(&**top),
                    None => open_dir(local).and_then(rustix::fs::syncfs),
                };
                if let Err(e) = flushed {
                    flush_failed = Some(format!("cannot flush the data to disk: {e}"));
                }
            }
        }
        if let Some(placed) = &self.placed {
            placed.batch_begins();
        }
        for pending in std::mem::take(&mut self.pending) {
            let dir = config.directory_of(&pending.path).expect("validated path");
            let outcome = match self.parents.parent(config, dir, &pending.path) {
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
                    // Noted before it is named, so that its event cannot come first.
                    let noted = match (&self.placed, &prepared) {
                        (Some(placed), Ok(())) => {
                            let local = config.local_path(&pending.path);
                            placed.placing(local.clone());
                            Some((placed, local))
                        }
                        _ => None,
                    };
                    let placed = match pending.how {
                        Placing::Rename { tmp, inode } => {
                            target.rename_into_place(&tmp, prepared).map(|outcome| {
                                let flags = AtFlags::SYMLINK_NOFOLLOW;
                                let st = (outcome == Outcome::Applied)
                                    .then(|| rustix::fs::statat(&*parent, name.as_str(), flags))
                                    .and_then(Result::ok)
                                    .filter(|st| (st.st_dev, st.st_ino) == inode);
                                (outcome, st)
                            })
                        }
                        Placing::Link(received) => target.link_into_place(received, prepared),
                    };
                    let (outcome, st) =
                        placed.unwrap_or_else(|e| (Outcome::Failed(e.to_string()), None));
                    if let (Some((placed, local)), false) = (noted, outcome == Outcome::Applied) {
                        placed.unplace(&local);
                    }
                    if let (Outcome::Applied, Some(st)) = (&outcome, st) {
                        stamps.push((pending.index, Stamp::of_stat(&st)));
                    }
                    outcome
                }
            };
            if outcome == Outcome::Applied {
                self.dirty.insert(paths::parent(&pending.path).to_string());
            }
            results[pending.index].outcome = outcome;
        }
        for logical in std::mem::take(&mut self.dirty) {
            let opened = match config.directory_of(&logical) {
                Some(dir) => self
                    .parents
                    .dir(config, dir, &logical)
                    .map_err(|blocked| blocked.error()),
                // The parent of a configured directory: the administrator's, trusted.
                None => open_dir(config.local_path(&logical)).map(Arc::new),
            };
            match opened.and_then(|fd| rustix::fs::fsync(&*fd)) {
                // Changed, then deleted later in the same batch: nothing left to flush.
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => {
                    tracing::warn!(directory = %logical, error = %e, "cannot fsync a directory")
                }
            }
        }
        stamps
    }
}

/// Names shown in the message about a directory that could not be deleted.
const REMAINING_SHOWN: usize = 5;

/// The outcome of deleting a directory that is not empty, from what it still holds: kept
/// for good when everything left is excluded on this node (or an interrupted sync's
/// temporary file), a failure worth retrying when it still holds paths the sender has
/// not deleted yet (they come in a later batch).
fn not_empty(dir: &Directory, path: &str, target: &Target<'_>) -> Outcome {
    let names = match target.remaining_names() {
        Ok(names) => names,
        Err(e) => return Outcome::Failed(format!("directory not deleted, not empty: {e}")),
    };
    let (excluded, others): (Vec<String>, Vec<String>) = names
        .into_iter()
        .map(|name| format!("{path}/{name}"))
        .partition(|child| {
            crate::tree::is_temp_name(paths::file_name(child))
                || dir.excludes.excludes_any_component(&dir.path, child)
        });
    let shown = |list: &[String]| {
        let mut text = list[..list.len().min(REMAINING_SHOWN)].join(", ");
        if list.len() > REMAINING_SHOWN {
            text.push_str(&format!(" and {} more", list.len() - REMAINING_SHOWN));
        }
        text
    };
    if others.is_empty() {
        Outcome::Kept(format!(
            "directory kept: it holds paths excluded on this node: {}",
            shown(&excluded)
        ))
    } else {
        Outcome::Failed(format!(
            "directory not deleted yet: it still holds {}, not deleted by this batch",
            shown(&others)
        ))
    }
}

/// One operation at its place: its configured directory, the open directory holding
/// its path and the name there, and the previous file kept for a rollback, if any.
struct At<'a> {
    config: &'a Config,
    dir: &'a Directory,
    op: &'a Op,
    index: usize,
    parent: Arc<OwnedFd>,
    name: String,
    kept: Option<Kept>,
}

impl At<'_> {
    /// What the name holds now, with the fingerprint of its inode; where a previous file
    /// was kept, the link must hold that very inode.
    fn current_state(&self) -> Result<Option<(Entry, Fingerprint)>, Outcome> {
        let checked = current_state(&self.parent, &self.name)
            .map_err(|e| Outcome::Failed(format!("cannot read the current state: {e}")))?;
        if let Some(kept) = &self.kept {
            let same =
                rustix::fs::statat(&*kept.holder, kept.tmp.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .ok()
                    .zip(checked.as_ref())
                    .is_some_and(|(st, (_, fp))| st.st_ino == fp.ino && st.st_dev == fp.dev);
            if !same {
                return Err(changed_underneath());
            }
        }
        Ok(checked)
    }
}

/// A conflict settled for the incoming version under `on_conflict = "newest"`: the
/// operation was applied over this node's own edit, which was kept in the backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The operation's place in its batch.
    pub index: usize,
    pub path: String,
    /// The modification time of the version that won (the sender's), in nanoseconds
    /// since the Unix epoch.
    pub incoming_mtime_ns: i64,
    /// The modification time of the version it replaced (this node's).
    pub replaced_mtime_ns: i64,
    /// Where the replaced version was kept (`None`: a directory, which has no content
    /// to keep).
    pub backup: Option<PathBuf>,
}

/// Whether an operation refused as a conflict is applied anyway under the directory's
/// `policy`: under `newest`, a put whose version was modified strictly later than the
/// one the path holds. A deletion has no time to compare, nor has a path that holds
/// nothing (deleted here), and an equal time decides nothing: those stay conflicts.
/// The times are the editors' clocks, trusted as they are.
fn newer_wins(policy: OnConflict, op: &Op, current: Option<&Entry>) -> bool {
    let (OnConflict::Newest, Action::Put { entry }, Some(have)) = (policy, &op.action, current)
    else {
        return false;
    };
    // A file whose content the batch does not carry (the sender took this node to hold
    // it already: a change of mode alone) cannot be written over other content.
    let writable = !matches!(entry.content, Content::File { .. })
        || op.needs_content().is_some()
        || have.content == entry.content;
    writable && entry.mtime_ns > have.mtime_ns
}

/// The outcome of an operation decided by what its path holds now, if it is: done
/// already (another sync got there first), or a conflict (the path is not what the
/// sender planned against). Owners count only where they are applied: the expectation
/// of an automatic push is the sender's own version, owners included.
fn settled_or_conflicting(op: &Op, current: Option<&Entry>, owners: bool) -> Option<Outcome> {
    let wanted = match &op.action {
        Action::Put { entry } => Some(entry),
        Action::Delete => None,
    };
    let already = crate::protocol::same_or_absent(current, wanted, owners);
    if already {
        return Some(Outcome::Applied);
    }
    let as_expected = crate::protocol::same_or_absent(current, op.expect.as_deref(), owners);
    if as_expected {
        return None;
    }
    let describe = |e: Option<&Entry>| e.map_or_else(|| "nothing".to_string(), Entry::describe);
    Some(Outcome::Conflict(format!(
        "changed on the peer since the sync was planned (expected {}, found {})",
        describe(op.expect.as_deref()),
        describe(current)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{test_config, validate_batch};
    use crate::protocol::BatchHeader;
    use crate::testing::put;
    use std::path::Path;

    /// Applies one operation as a batch of its own.
    fn apply_op(config: &Config, owners: bool, op: &Op, content: Option<&[u8]>) -> Outcome {
        let header = BatchHeader::new(vec![op.clone()]);
        let body = crate::protocol::encode_batch(&header, content.as_slice());
        let reader = crate::protocol::BatchReader::start(body.as_slice()).unwrap();
        let (_, mut staged) = crate::apply::staging::receive(config, reader).unwrap();
        let mut session = Session::new(true, "a test");
        let outcome = session.apply(config, owners, 0, op, staged.take(0));
        let mut results = vec![OpResult {
            path: op.path.clone(),
            outcome,
            found: None,
        }];
        session.finish(config, &mut results);
        results.remove(0).outcome
    }

    #[test]
    fn the_executor_refuses_a_symlink_that_appears_after_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        let op = put("/etc/app/sub/evil", b"2");
        validate_batch(&c, &BatchHeader::new(vec![op.clone()])).unwrap();
        // The link is planted between validation and execution.
        std::os::unix::fs::symlink(tmp.path().join("outside"), app.join("sub")).unwrap();
        let outcome = apply_op(&c, false, &op, Some(b"2"));
        assert!(
            matches!(&outcome, Outcome::Refused(r) if r.contains("symlink")),
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
    fn a_directory_the_batch_replaced_is_reached_anew_by_its_later_operations() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(app.join("sub")).unwrap();
        let dir_entry = Entry {
            content: Content::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
        };
        let op = |path: &str, action: Action, expect: Option<Entry>| Op {
            path: path.into(),
            action,
            expect: expect.map(Box::new),
        };
        let sub = crate::manifest::read_entry(&app.join("sub")).unwrap();
        let make_dir = Action::Put {
            entry: dir_entry.clone(),
        };
        let ops = [
            // Opens /etc/app/sub for the next operation...
            op("/etc/app/sub/absent", Action::Delete, None),
            // ...which deletes it, and makes a new directory there.
            op("/etc/app/sub", Action::Delete, sub),
            op("/etc/app/sub", make_dir.clone(), None),
            op("/etc/app/sub/new", make_dir, None),
        ];
        let mut session = Session::new(true, "a test");
        let mut results: Vec<OpResult> = ops
            .iter()
            .enumerate()
            .map(|(index, op)| OpResult {
                path: op.path.clone(),
                outcome: session.apply(&c, false, index, op, None),
                found: None,
            })
            .collect();
        session.finish(&c, &mut results);
        for r in &results {
            assert_eq!(r.outcome, Outcome::Applied, "{}", r.path);
        }
        assert!(app.join("sub/new").is_dir());
    }

    #[test]
    fn what_another_process_puts_in_a_directory_the_batch_made_is_never_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let dir = Op {
            path: "/etc/app/new".into(),
            action: Action::Put {
                entry: Entry {
                    content: Content::Dir,
                    mode: 0o755,
                    uid: rustix::process::geteuid().as_raw(),
                    gid: rustix::process::getegid().as_raw(),
                    mtime_ns: 0,
                },
            },
            expect: None,
        };
        let (file, other) = (
            put("/etc/app/new/f", b"pushed"),
            put("/etc/app/new/g", b"g"),
        );
        let link = put("/etc/app/new/l", b"");
        let link = Op {
            action: Action::Put {
                entry: Entry {
                    content: Content::Symlink { target: "f".into() },
                    ..crate::testing::file_entry(b"")
                },
            },
            ..link
        };
        let ops = [dir, file, other, link];
        let contents: Vec<&[u8]> = vec![b"pushed", b"g"];
        let body = crate::protocol::encode_batch(&BatchHeader::new(ops.to_vec()), &contents);
        let reader = crate::protocol::BatchReader::start(body.as_slice()).unwrap();
        let (_, mut staged) = crate::apply::staging::receive(&c, reader).unwrap();
        let mut session = Session::new(true, "a test");
        let mut results = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            let outcome = session.apply(&c, true, index, op, staged.take(index));
            results.push(OpResult {
                path: op.path.clone(),
                outcome,
                found: None,
            });
            if index == 0 {
                // Another process, between the batch's mkdir and its puts.
                std::fs::write(app.join("new/f"), b"theirs").unwrap();
                std::fs::create_dir(app.join("new/l")).unwrap();
            }
        }
        session.finish(&c, &mut results);
        let outcomes: Vec<&Outcome> = results.iter().map(|r| &r.outcome).collect();
        assert_eq!(outcomes[0], &Outcome::Applied);
        assert!(matches!(outcomes[1], Outcome::Conflict(_)), "{outcomes:?}");
        assert_eq!(outcomes[2], &Outcome::Applied);
        assert!(matches!(outcomes[3], Outcome::Conflict(_)), "{outcomes:?}");
        assert_eq!(std::fs::read(app.join("new/f")).unwrap(), b"theirs");
        assert_eq!(std::fs::read(app.join("new/g")).unwrap(), b"g");
        assert!(app.join("new/l").is_dir());
        let left: Vec<String> = std::fs::read_dir(app.join("new"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 3, "no temporary file left: {left:?}");
    }

    #[test]
    fn a_put_lands_atomically_with_its_mode_and_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("x"), b"old").unwrap();
        let mut op = put("/etc/app/x", b"new content");
        let old = crate::manifest::read_entry(&app.join("x"))
            .unwrap()
            .unwrap();
        op.expect = Some(Box::new(old));
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
        let c = test_config(tmp.path());
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
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        crate::testing::make_fifo(&app.join("fifo"));
        let outcome = apply_op(&c, false, &put("/etc/app/fifo", b"x"), Some(b"x"));
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    }

    #[test]
    fn a_mode_change_never_touches_another_name_of_a_hard_linked_file() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let outside = tmp.path().join("outside-secret");
        std::fs::write(&outside, b"same").unwrap();
        std::fs::hard_link(&outside, app.join("x")).unwrap();
        let mut op = put("/etc/app/x", b"same");
        op.expect = crate::manifest::read_entry(&app.join("x"))
            .unwrap()
            .map(Box::new);
        if let Action::Put { entry } = &mut op.action {
            entry.mode = 0o1777;
        }
        assert_eq!(op.needs_content(), None, "a metadata-only update");
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let outside_mode = mode(&outside);
        assert_eq!(apply_op(&c, false, &op, None), Outcome::Applied);
        assert_eq!(mode(&app.join("x")), 0o1777);
        assert_eq!(mode(&outside), outside_mode, "the other name is untouched");
        assert_eq!(std::fs::read(app.join("x")).unwrap(), b"same");
    }

    /// An entry of a file holding `bytes`, modified at `mtime_ns`.
    fn at_time(bytes: &[u8], mtime_ns: i64) -> Entry {
        Entry {
            mtime_ns,
            ..crate::testing::file_entry(bytes)
        }
    }

    /// A put of `bytes` modified at `mtime_ns`, planned against `expect`.
    fn put_at(bytes: &[u8], mtime_ns: i64, expect: &[u8]) -> Op {
        Op {
            path: "/etc/app/x".into(),
            action: Action::Put {
                entry: at_time(bytes, mtime_ns),
            },
            expect: Some(Box::new(at_time(expect, 0))),
        }
    }

    #[test]
    fn under_newest_only_a_put_strictly_newer_than_what_is_held_wins_a_conflict() {
        let held = at_time(b"edited here", 2_000);
        let newest = OnConflict::Newest;
        assert!(newer_wins(
            newest,
            &put_at(b"pushed", 2_001, b"base"),
            Some(&held)
        ));
        assert!(
            !newer_wins(newest, &put_at(b"pushed", 1_999, b"base"), Some(&held)),
            "older"
        );
        assert!(
            !newer_wins(newest, &put_at(b"pushed", 2_000, b"base"), Some(&held)),
            "equal"
        );
        let delete = Op {
            path: "/etc/app/x".into(),
            action: Action::Delete,
            expect: Some(Box::new(at_time(b"base", 0))),
        };
        assert!(!newer_wins(newest, &delete, Some(&held)), "a deletion");
        assert!(
            !newer_wins(newest, &put_at(b"pushed", 2_001, b"base"), None),
            "deleted here: no time to compare"
        );
        assert!(
            !newer_wins(
                OnConflict::Refuse,
                &put_at(b"pushed", 2_001, b"base"),
                Some(&held)
            ),
            "the default refuses"
        );
        // A change of mode alone carries no content: it cannot replace other content.
        let mut chmod = put_at(b"base", 2_001, b"base");
        if let Action::Put { entry } = &mut chmod.action {
            entry.mode = 0o600;
        }
        assert_eq!(chmod.needs_content(), None);
        assert!(!newer_wins(newest, &chmod, Some(&held)));
        // A directory or a link newer than the file held wins too.
        let link = Op {
            path: "/etc/app/x".into(),
            action: Action::Put {
                entry: Entry {
                    content: Content::Symlink { target: "y".into() },
                    ..at_time(b"", 2_001)
                },
            },
            expect: None,
        };
        assert!(newer_wins(newest, &link, Some(&held)));
    }

    /// `/etc/app` with `on_conflict = "newest"` and backups under `root/backups`, and a
    /// `validate` command when given.
    fn newest_config(root: &Path, validate: Option<&str>) -> Config {
        let validate = validate.map_or_else(String::new, |v| format!("  validate = {v:?}\n"));
        let text = crate::testing::config_text(root, "").replace(
            "  exclude = []\n",
            &format!("  exclude = []\n  on_conflict = \"newest\"\n{validate}"),
        );
        crate::testing::parse(&format!(
            "backup {{\n  directory = \"{}\"\n}}\n{text}",
            root.join("backups").display()
        ))
    }

    /// Writes `bytes` at `path`, modified at `mtime_ns`.
    fn write_at(path: &Path, bytes: &[u8], mtime_ns: i64) {
        std::fs::write(path, bytes).unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    /// Applies `op` carrying `content` as a batch: its results and the conflicts it
    /// settled for the incoming version.
    fn apply_batch_of(config: &Config, op: &Op, content: &[u8]) -> (Outcome, Vec<Resolution>) {
        let body = crate::protocol::encode_batch(&BatchHeader::new(vec![op.clone()]), &[content]);
        let (_, applied) =
            crate::apply::apply_body(config, false, body.as_slice(), "a test").unwrap();
        let resolved = applied.resolved();
        (applied.commit().remove(0).outcome, resolved)
    }

    #[test]
    fn a_newer_conflicting_put_replaces_the_edit_here_and_keeps_it_in_the_backups() {
        let tmp = tempfile::tempdir().unwrap();
        let c = newest_config(tmp.path(), None);
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let here = 1_700_000_000_000_000_000;
        write_at(&app.join("x"), b"edited here", here);

        // Older, then equal: refused as today, nothing kept.
        for mtime in [here - 1_000_000_000, here] {
            let (outcome, resolved) =
                apply_batch_of(&c, &put_at(b"pushed", mtime, b"base"), b"pushed");
            assert!(matches!(outcome, Outcome::Conflict(_)), "{outcome:?}");
            assert_eq!(resolved, []);
            assert_eq!(std::fs::read(app.join("x")).unwrap(), b"edited here");
        }
        let backups = c.directories[0].backup.clone().unwrap();
        assert_eq!(crate::backup::list(&backups, "/etc/app").unwrap(), []);

        let newer = here + 1_000_000_000;
        let (outcome, resolved) = apply_batch_of(&c, &put_at(b"pushed", newer, b"base"), b"pushed");
        assert_eq!(outcome, Outcome::Applied);
        assert_eq!(std::fs::read(app.join("x")).unwrap(), b"pushed");
        let kept = crate::backup::list(&backups, "/etc/app/x").unwrap();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(
            kept[0].reason.contains("in a conflict"),
            "{}",
            kept[0].reason
        );
        let location = crate::backup::location(&backups, &kept[0]);
        assert_eq!(std::fs::read(&location).unwrap(), b"edited here");
        assert_eq!(
            resolved,
            [Resolution {
                index: 0,
                path: "/etc/app/x".into(),
                incoming_mtime_ns: newer,
                replaced_mtime_ns: here,
                backup: Some(location),
            }]
        );
        let names: Vec<_> = std::fs::read_dir(&app)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x"], "no conflict copy beside the file");
    }

    #[test]
    fn a_settled_conflict_put_back_by_validation_is_not_counted_as_settled() {
        let tmp = tempfile::tempdir().unwrap();
        let c = newest_config(tmp.path(), Some("false"));
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let here = 1_700_000_000_000_000_000;
        write_at(&app.join("x"), b"edited here", here);
        let op = put_at(b"pushed", here + 1, b"base");
        let body = crate::protocol::encode_batch(&BatchHeader::new(vec![op]), &[b"pushed"]);
        let (_, mut applied) =
            crate::apply::apply_body(&c, false, body.as_slice(), "a test").unwrap();
        assert_eq!(applied.resolved().len(), 1);
        assert_eq!(applied.reject(&c, "/etc/app", "validation failed"), []);
        assert_eq!(applied.resolved(), []);
        drop(applied);
        assert_eq!(std::fs::read(app.join("x")).unwrap(), b"edited here");
    }
}
