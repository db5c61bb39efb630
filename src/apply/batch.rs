//! One batch from start to end: runs its operations in order through a `Session`,
//! flushes the rollback journals, and holds the results as [`Applied`] until the caller
//! commits them or rejects them (per directory, after a `validate` command). It decides
//! nothing about a single operation, which is the session's, and changes no file itself
//! except through the session and the rollback records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::session::{Resolution, Session};
use super::staging::{receive, Staged};
use crate::config::Config;
use crate::manifest::{Placed, Stamp};
use crate::protocol::{BatchHeader, BatchReader, OpResult, Outcome};
use crate::rollback::{Journal, Undo};

/// Batches with at most this many file contents fsync each file; larger ones flush
/// their filesystems once with `syncfs`, which is far cheaper than one fsync per file.
pub(super) const FSYNC_EACH_MAX_FILES: usize = 16;

/// Whether a batch with `contents` file contents flushes them together with `syncfs`
/// (rather than an fsync each: see [`FSYNC_EACH_MAX_FILES`]).
pub(super) fn flushed_together(contents: usize) -> bool {
    contents > FSYNC_EACH_MAX_FILES
}

/// Carries out a validated batch whose contents are `staged`, in order, and reports each
/// operation's outcome. `owners` says whether owners are applied (this process runs as
/// root); `origin` says where the batch comes from, for the backups it takes.
///
/// In directories with a `validate` command run on received changes, every changed path
/// keeps its previous state until [`Applied::commit`]: [`Applied::reject`] puts it back.
pub fn apply_batch(
    config: &Config,
    owners: bool,
    header: &BatchHeader,
    mut staged: Staged,
    origin: &str,
    placed: Option<Arc<Placed>>,
) -> Applied {
    let mut session = Session::new(!flushed_together(staged.files()), origin);
    session.foreign_owners = header.foreign_owners;
    session.placed = placed;
    let mut results: Vec<OpResult> = header
        .ops
        .iter()
        .enumerate()
        .map(|(index, op)| OpResult {
            path: op.path.clone(),
            outcome: session.apply(config, owners, index, op, staged.take(index)),
            found: None,
        })
        .collect();
    let undo = std::mem::take(&mut session.undo);
    let changed = std::mem::take(&mut session.changed);
    let resolved = std::mem::take(&mut session.resolved);
    let mut journals = std::mem::take(&mut session.journals);
    for journal in journals.values_mut() {
        if let Err(e) = journal.sync() {
            tracing::warn!(error = %e, "cannot flush a rollback journal to disk");
        }
    }
    let stamps = session.finish(config, &mut results);
    Applied {
        results,
        undo,
        changed,
        resolved,
        journals,
        stamps,
    }
}

/// Reads a whole batch body (held in memory, or streamed from anywhere), checks it,
/// receives its contents and carries it out: [`validate_batch`](super::validate_batch),
/// [`receive`] and [`apply_batch`] in a row. Returns the operations with their outcomes.
pub fn apply_body(
    config: &Config,
    owners: bool,
    body: impl std::io::Read,
    origin: &str,
) -> Result<(BatchHeader, Applied), String> {
    let reader = BatchReader::start(body)?;
    super::validate_batch(config, &reader.header)?;
    let (header, staged) = receive(config, reader)?;
    let applied = apply_batch(config, owners, &header, staged, origin, None);
    Ok((header, applied))
}

/// A batch carried out, whose changes in validated directories can still be undone.
pub struct Applied {
    pub results: Vec<OpResult>,
    undo: Vec<Undo>,
    /// Operations that changed something (not those that found the state wanted).
    changed: BTreeSet<usize>,
    /// Conflicts settled for the incoming version (`on_conflict = "newest"`).
    resolved: Vec<Resolution>,
    /// The rollback journal of each validated directory the batch changed.
    journals: BTreeMap<String, Journal>,
    /// The stamp of each file put in place, by operation, as it was found right after
    /// its rename.
    stamps: Vec<(usize, Stamp)>,
}

impl Applied {
    /// The configured directories this batch changed, with the paths it changed in each.
    pub fn touched(&self, config: &Config) -> BTreeMap<String, Vec<String>> {
        config.by_directory(
            self.results
                .iter()
                .enumerate()
                .filter(|(index, r)| r.outcome == Outcome::Applied && self.changed.contains(index))
                .map(|(_, r)| r.path.to_string()),
        )
    }

    /// The conflicts this batch settled for the incoming version whose operations stand
    /// applied: not put back by a failed validation, nor failed at their rename.
    pub fn resolved(&self) -> Vec<Resolution> {
        self.resolved
            .iter()
            .filter(|r| self.results[r.index].outcome == Outcome::Applied)
            .cloned()
            .collect()
    }

    /// Puts back the previous state of every path this batch changed in directory
    /// `dir` (newest change first) and marks those operations rejected with `reason`.
    /// Returns the paths that could not be put back (with why), which should be none.
    pub fn reject(&mut self, config: &Config, dir: &str, reason: &str) -> Vec<(String, String)> {
        let mut failures = Vec::new();
        let mut parents = crate::tree::Parents::default();
        for undo in self.undo.iter_mut().rev() {
            if undo.dir != dir || self.results[undo.index].outcome != Outcome::Applied {
                continue;
            }
            if let Err(e) = undo.put_back(config, &mut parents) {
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
    pub fn commit(mut self) -> Vec<OpResult> {
        std::mem::take(&mut self.results)
    }

    /// The stamp of each file this batch put in place, by operation index, as it was
    /// found right after its rename (see [`Applied::commit`] for which stand applied).
    pub fn take_stamps(&mut self) -> Vec<(usize, Stamp)> {
        let mut stamps = std::mem::take(&mut self.stamps);
        stamps.sort_unstable_by_key(|(index, _)| *index);
        stamps
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::test_config;
    use crate::protocol::{Action, BatchHeader, Content, Entry, Op};
    use crate::testing::put;
    use std::path::Path;
    use std::sync::Arc;

    #[test]
    fn deleting_below_a_directory_already_deleted_is_done_not_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(app.join("gone")).unwrap();
        std::fs::write(app.join("gone/x"), "x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let delete = |path: &str, expect: Option<Entry>| Op {
            path: path.into(),
            action: Action::Delete,
            expect: expect.map(Box::new),
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
        let header = BatchHeader::new(vec![
            delete("/etc/app/gone/x", Some(file.clone())),
            delete("/etc/app/gone", Some(dir)),
            delete("/etc/app/gone/y", Some(file)),
            delete("/etc/app/never/z", None),
        ]);
        let body = crate::protocol::encode_batch(&header, &[]);
        let (_, applied) = apply_body(&c, false, body.as_slice(), "a test").unwrap();
        let results = applied.commit();
        for result in &results {
            assert_eq!(result.outcome, Outcome::Applied, "{}", result.path);
        }
        assert!(!app.join("gone").exists());
    }

    /// With a watcher to tell, each file put in place is noted there, as it is found
    /// right after it got its name; a path not put is not.
    #[test]
    fn each_file_put_is_noted_for_the_watcher_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        std::fs::create_dir_all(tmp.path().join("etc/app")).unwrap();
        std::fs::write(tmp.path().join("etc/app/held"), "here").unwrap();
        let mut updated = put("/etc/app/updated", b"new");
        std::fs::write(tmp.path().join("etc/app/updated"), "old").unwrap();
        updated.expect = Some(Box::new(crate::testing::file_entry(b"old")));
        let header = BatchHeader::new(vec![
            put("/etc/app/new", b"new"),
            updated,
            // Expects nothing where a file is: a conflict, nothing put.
            put("/etc/app/held", b"new"),
        ]);
        let body = crate::protocol::encode_batch(&header, &[b"new", b"new", b"new"]);
        let reader = BatchReader::start(body.as_slice()).unwrap();
        crate::apply::validate_batch(&c, &reader.header).unwrap();
        let (header, staged) = receive(&c, reader).unwrap();
        let placed = Arc::new(Placed::default());
        let applied = apply_batch(&c, false, &header, staged, "a test", Some(placed.clone()));
        let results = applied.commit();
        let outcomes: Vec<bool> = results.iter().map(|r| r.outcome.is_applied()).collect();
        assert_eq!(outcomes, [true, true, false]);
        assert_eq!(placed.len(), 2);
        for (path, noted) in [("new", true), ("updated", true), ("held", false)] {
            let local = tmp.path().join("etc/app").join(path);
            assert_eq!(placed.take(&local), noted, "{path}");
        }
    }

    /// A file received gets its mode whatever the umask cut from it when it was made, or
    /// whatever bits cannot be given at creation (sticky), down to none at all.
    #[test]
    fn each_file_received_has_its_mode_whatever_it_was_made_with() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        std::fs::create_dir_all(tmp.path().join("etc/app")).unwrap();
        let modes = [0o644, 0o600, 0o666, 0o1755, 0o000];
        let ops: Vec<Op> = modes
            .iter()
            .map(|mode| {
                let mut op = put(&format!("/etc/app/f{mode:o}"), b"x");
                if let Action::Put { entry } = &mut op.action {
                    entry.mode = *mode;
                    entry.uid = rustix::process::geteuid().as_raw();
                    entry.gid = rustix::process::getegid().as_raw();
                }
                op
            })
            .collect();
        let header = BatchHeader::new(ops);
        let body = crate::protocol::encode_batch(&header, &[b"x".as_slice(); 5]);
        let reader = BatchReader::start(body.as_slice()).unwrap();
        crate::apply::validate_batch(&c, &reader.header).unwrap();
        let (header, staged) = receive(&c, reader).unwrap();
        let applied = apply_batch(&c, true, &header, staged, "a test", None);
        let results = applied.commit();
        assert!(
            results.iter().all(|r| r.outcome.is_applied()),
            "{results:?}"
        );
        for mode in modes {
            let st = rustix::fs::lstat(tmp.path().join(format!("etc/app/f{mode:o}"))).unwrap();
            assert_eq!(st.st_mode & 0o7777, mode, "{mode:o}");
        }
    }

    /// A directory made as it is to be (mode, owner) is noted with what it is once it
    /// holds what the batch made in it, so that this node's watcher needs to look at
    /// nothing in it; one that had to be changed after it was made (a mode the umask
    /// cut, a sticky bit) is not, as its own change of metadata is an event.
    #[test]
    fn each_directory_made_as_it_is_to_be_is_noted_for_the_watcher() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        std::fs::create_dir_all(tmp.path().join("etc/app")).unwrap();
        let dir = |path: &str, mode: u32| Op {
            path: path.into(),
            action: Action::Put {
                entry: Entry {
                    content: Content::Dir,
                    mode,
                    uid: rustix::process::geteuid().as_raw(),
                    gid: rustix::process::getegid().as_raw(),
                    mtime_ns: 0,
                },
            },
            expect: None,
        };
        let header = BatchHeader::new(vec![
            dir("/etc/app/d", 0o755),
            dir("/etc/app/d/sub", 0o700),
            dir("/etc/app/sticky", 0o1777),
        ]);
        let body = crate::protocol::encode_batch(&header, &[]);
        let reader = BatchReader::start(body.as_slice()).unwrap();
        crate::apply::validate_batch(&c, &reader.header).unwrap();
        let (header, staged) = receive(&c, reader).unwrap();
        let placed = Arc::new(Placed::default());
        let applied = apply_batch(&c, false, &header, staged, "a test", Some(placed.clone()));
        assert!(applied.commit().iter().all(|r| r.outcome.is_applied()));
        let local = |path: &str| tmp.path().join("etc/app").join(path);
        let found = |path: &str| Stamp::of_stat(&rustix::fs::lstat(local(path)).unwrap());
        let mode = |path: &str| rustix::fs::lstat(local(path)).unwrap().st_mode & 0o7777;
        assert_eq!(
            (mode("d"), mode("d/sub"), mode("sticky")),
            (0o755, 0o700, 0o1777)
        );
        assert_eq!(placed.len(), 2);
        for path in ["d", "d/sub"] {
            assert!(placed.take_made(&local(path), Some(&found(path))), "{path}");
        }
        assert!(!placed.take_made(&local("sticky"), Some(&found("sticky"))));
    }

    /// Each file put in place is told with the stamp a scan finds there afterwards, and
    /// a daemon's baseline that records it takes the hash it received instead of reading
    /// the file, while nothing changes the file and only for an mtime two seconds old.
    #[test]
    fn a_file_put_is_known_by_its_stamp_and_its_hash_is_not_read_again() {
        use crate::baseline::Baseline;
        use crate::manifest::{now_ns, scan, HashCache};
        use crate::protocol::Digest256;
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let names: Vec<String> = (0..20).map(|i| format!("/etc/app/f{i:02}")).collect();
        let header = BatchHeader::new(
            names
                .iter()
                .map(|path| put(path, path.as_bytes()))
                // Expects a file where there is none: a conflict, nothing put.
                .chain([Op {
                    expect: Some(Box::new(crate::testing::file_entry(b"other"))),
                    ..put("/etc/app/conflict", b"/etc/app/conflict")
                }])
                .collect(),
        );
        let contents: Vec<&[u8]> = header.ops.iter().map(|op| op.path.as_bytes()).collect();
        let body = crate::protocol::encode_batch(&header, &contents);
        let (header, mut applied) = apply_body(&c, false, body.as_slice(), "a test").unwrap();
        let stamps = applied.take_stamps();
        let results = applied.commit();
        let indices: Vec<usize> = stamps.iter().map(|(index, _)| *index).collect();
        assert_eq!(
            indices,
            (0..20).collect::<Vec<_>>(),
            "every file put, in order"
        );
        assert_ne!(results[20].outcome, Outcome::Applied);
        for (index, stamp) in &stamps {
            let st = rustix::fs::stat(c.local_path(&names[*index])).unwrap();
            assert_eq!(*stamp, Stamp::of_stat(&st), "{}", names[*index]);
        }

        // Recorded with another hash than the content's (as no daemon would), so that
        // where the scan takes the recorded hash rather than reading the file, it shows.
        let baseline = Arc::new(Baseline::new(Default::default()));
        let recorded = Digest256::of(b"recorded, not read");
        for (index, stamp) in &stamps {
            let Action::Put { entry } = &header.ops[*index].action else {
                unreachable!()
            };
            let mut entry = entry.clone();
            entry.content = Content::File {
                size: stamp.size,
                sha256: recorded,
            };
            baseline.record_put(&names[*index], entry, stamp, now_ns());
        }
        let cache = HashCache::kept_by(baseline.clone());
        let digest_of = |path: &str| match &scan(&c, &[], &cache).entries[path].content {
            Content::File { sha256, .. } => *sha256,
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(
            digest_of("/etc/app/f00"),
            recorded,
            "the hash taken, not read"
        );
        assert_eq!(digest_of("/etc/app/f01"), recorded);

        // Written again (the same size): read.
        std::fs::write(app.join("f00"), "/etc/app/fXX").unwrap();
        assert_eq!(digest_of("/etc/app/f00"), Digest256::of(b"/etc/app/fXX"));
        // Recorded with an mtime of less than two seconds ago: read.
        let (index, stamp) = stamps[1];
        let st = rustix::fs::stat(c.local_path(&names[index])).unwrap();
        let Action::Put { entry } = &header.ops[index].action else {
            unreachable!()
        };
        let recent = Entry {
            content: Content::File {
                size: stamp.size,
                sha256: recorded,
            },
            ..entry.clone()
        };
        let now = stamp.mtime_ns + 1_000_000_000;
        assert_eq!(Stamp::of_stat(&st), stamp);
        baseline.record_put(&names[index], recent, &stamp, now);
        assert_eq!(
            digest_of(&names[index]),
            Digest256::of(names[index].as_bytes())
        );
    }

    #[test]
    fn a_large_batch_is_flushed_once_and_renamed_into_place() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
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
        let body = crate::protocol::encode_batch(&BatchHeader::new(ops), &slices);
        let (_, applied) = apply_body(&c, false, body.as_slice(), "a test").unwrap();
        let results = applied.commit();
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
}

#[cfg(test)]
mod rollback_tests {
    use super::*;
    use crate::protocol::{encode_batch, BatchHeader, Op};
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
            expect: Some(Box::new(crate::testing::file_entry(b"old"))),
            ..put("/etc/app/old.cfg", b"replaced")
        };
        let header = BatchHeader::new(vec![put("/etc/app/new.cfg", b"new"), old]);
        let body = encode_batch(&header, &[b"new", b"replaced"]);
        let (_, mut applied) = apply_body(&config, false, body.as_slice(), "a test").unwrap();
        assert!(app.join("new.cfg").exists());
        assert_eq!(applied.results[1].outcome, Outcome::Applied);
        assert_eq!(std::fs::read(app.join("old.cfg")).unwrap(), b"replaced");
        let failures = applied.reject(&config, "/etc/app", "no");
        assert_eq!(failures, Vec::<(String, String)>::new());
        assert!(!app.join("new.cfg").exists());
        assert_eq!(std::fs::read(app.join("old.cfg")).unwrap(), b"old");
    }
}
