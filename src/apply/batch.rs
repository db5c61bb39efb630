//! One batch from start to end: runs its operations in order through a `Session`,
//! flushes the rollback journals, and holds the results as [`Applied`] until the caller
//! commits them or rejects them (per directory, after a `validate` command). It decides
//! nothing about a single operation, which is the session's, and changes no file itself
//! except through the session and the rollback records.

use std::collections::{BTreeMap, BTreeSet};

use super::session::{Resolution, Session};
use super::staging::{receive, Staged};
use crate::config::Config;
use crate::protocol::{BatchHeader, BatchReader, OpResult, Outcome};
use crate::rollback::{Journal, Undo};

/// Batches with at most this many file contents fsync each file; larger ones flush
/// their filesystems once with `syncfs`, which is far cheaper than one fsync per file.
const FSYNC_EACH_MAX_FILES: usize = 16;

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
) -> Applied {
    let mut session = Session::new(staged.files() <= FSYNC_EACH_MAX_FILES, origin);
    session.foreign_owners = header.foreign_owners;
    let mut results: Vec<OpResult> = header
        .ops
        .iter()
        .enumerate()
        .map(|(index, op)| OpResult {
            path: op.path.to_string(),
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
    session.finish(config, &mut results);
    Applied {
        results,
        undo,
        changed,
        resolved,
        journals,
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
    let applied = apply_batch(config, owners, &header, staged, origin);
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
