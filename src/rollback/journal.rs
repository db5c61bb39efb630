//! The journal of a batch in a validated directory: one line per change, written
//! before the change is made, and its replay at start-up for a daemon that stopped
//! before the batch was accepted. It never decides whether a batch is accepted; the
//! receiver removes the journal when it is.

use std::fs::File;
use std::io::{self, BufRead, Write};
use std::sync::Arc;

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::{Kept, Previous, Undo};
use crate::config::{Config, Directory};

/// Names of journals: temporary names, so never synced, refused from peers and left out
/// by the watcher.
const JOURNAL_PREFIX: &str = ".gosyncd-undo-";

/// One line of a journal: a path and what it held before the batch changed it.
#[derive(Serialize, Deserialize)]
struct Record {
    path: String,
    previous: Saved,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Saved {
    Absent,
    Linked { tmp: String, beside: bool },
    Dir { mode: u32 },
}

/// The journal of one batch in one configured directory.
pub(crate) struct Journal {
    top: Arc<OwnedFd>,
    name: String,
    file: File,
    /// Lines written since the last flush.
    unsynced: bool,
    /// Whether the journal's name is on disk (its directory was flushed).
    named: bool,
}

impl Journal {
    /// Creates an empty journal in `top`, the opened top of a configured directory.
    pub fn create(top: Arc<OwnedFd>) -> io::Result<Journal> {
        let name = format!(
            "{JOURNAL_PREFIX}{}{}",
            uuid::Uuid::new_v4().simple(),
            crate::tree::TEMP_SUFFIX
        );
        let fd = rustix::fs::openat(
            &*top,
            name.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok(Journal {
            top,
            name,
            file: File::from(fd),
            unsynced: false,
            named: false,
        })
    }

    /// Records what `undo`'s path holds, before it is changed: one line, one write, so
    /// that a process killed at any point leaves whole lines (and at most one torn last
    /// line, of a change not yet made).
    pub fn record(&mut self, undo: &Undo) -> io::Result<()> {
        let previous = match &undo.previous {
            Previous::Absent => Saved::Absent,
            Previous::Linked(kept) => Saved::Linked {
                tmp: kept.tmp.clone(),
                beside: kept.beside,
            },
            Previous::Dir(mode) => Saved::Dir { mode: *mode },
        };
        let mut line = serde_json::to_vec(&Record {
            path: undo.path.clone(),
            previous,
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        self.unsynced = true;
        self.file.write_all(&line)
    }

    /// Makes the journal durable, its name included: before a change that is made at
    /// once (a deletion, a directory, a link, a mode), and once per batch before its files
    /// are renamed into place. Does nothing when nothing was written since.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        if !self.named {
            rustix::fs::fsync(&*self.top)?;
            self.named = true;
        }
        Ok(())
    }

    /// Removes the journal: the batch is accepted, or put back.
    pub fn remove(&self) {
        let _ = rustix::fs::unlinkat(&*self.top, self.name.as_str(), AtFlags::empty());
    }
}

/// What [`recover`] put back in one configured directory.
#[derive(Debug, Default)]
pub struct Recovered {
    pub dir: String,
    pub paths: Vec<String>,
    /// Paths that could not be put back, with why.
    pub failures: Vec<(String, String)>,
}

/// Puts back every batch whose journal a stopped daemon left in a configured
/// directory: it was never validated. Runs at start-up, before the temporary files are
/// cleaned (the kept versions are among them) and before anything is scanned.
pub fn recover(config: &Config) -> Vec<Recovered> {
    let mut all = Vec::new();
    for dir in &config.directories {
        let top = config.local_path(&dir.path);
        let Ok(listing) = std::fs::read_dir(&top) else {
            continue;
        };
        for entry in listing.filter_map(Result::ok) {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with(JOURNAL_PREFIX) && crate::tree::is_temp_name(name)) {
                continue;
            }
            let mut done = Recovered {
                dir: dir.path.clone(),
                ..Recovered::default()
            };
            match std::fs::File::open(entry.path()) {
                Ok(file) => replay(config, dir, file, &mut done),
                Err(e) => done
                    .failures
                    .push((entry.path().display().to_string(), e.to_string())),
            }
            if let Err(e) = std::fs::remove_file(entry.path()) {
                done.failures
                    .push((entry.path().display().to_string(), e.to_string()));
            }
            all.push(done);
        }
    }
    all
}

/// Puts back the changes of one journal, newest first.
fn replay(config: &Config, dir: &Directory, file: File, done: &mut Recovered) {
    let records: Vec<Record> = io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        // A torn last line is a change that was not made.
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect();
    let mut parents = crate::tree::Parents::default();
    for record in records.into_iter().rev() {
        // The journal lives in the configured directory, which only its owner can
        // write; its paths are still held to the same rules as a peer's.
        let confined =
            crate::tree::confine(config, &record.path).is_ok_and(|found| found.path == dir.path);
        let previous = match record.previous {
            Saved::Absent => Ok(Previous::Absent),
            Saved::Dir { mode } => Ok(Previous::Dir(mode)),
            Saved::Linked { tmp, beside } => {
                kept_at(config, dir, &record.path, tmp, beside, &mut parents)
            }
        };
        let previous = match (confined, previous) {
            (true, Ok(previous)) => previous,
            (false, _) => {
                done.failures
                    .push((record.path, "not a path this node may write".into()));
                continue;
            }
            (true, Err(e)) => {
                done.failures.push((record.path, e.to_string()));
                continue;
            }
        };
        let mut undo = Undo {
            index: 0,
            dir: dir.path.clone(),
            path: record.path,
            previous,
        };
        match undo.put_back(config, &mut parents) {
            Ok(()) => done.paths.push(undo.path),
            // The kept version is gone: this change was already put back.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => done.failures.push((undo.path, e.to_string())),
        }
    }
    done.paths.sort();
    done.paths.dedup();
}

/// The kept version a journal line names, opened where [`keep_previous`](super::keep_previous) linked it.
fn kept_at(
    config: &Config,
    dir: &Directory,
    path: &str,
    tmp: String,
    beside: bool,
    parents: &mut crate::tree::Parents,
) -> io::Result<Previous> {
    if !crate::tree::is_temp_name(&tmp) || tmp.contains('/') {
        return Err(io::Error::other(format!("{tmp:?} is not a kept version")));
    }
    let holder = if beside {
        parents
            .parent(config, dir, path)
            .map_err(|e| io::Error::other(e.to_string()))?
            .0
    } else {
        Arc::new(crate::tree::open_dir(config.local_path(&dir.path))?)
    };
    Ok(Previous::Linked(Kept {
        holder,
        tmp,
        beside,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::*;
    use crate::apply::apply_body;
    use crate::protocol::{encode_batch, Action, BatchHeader, Content, Entry, Op};
    use crate::testing::{config_text, file_entry, parse, put};

    fn validated(root: &Path) -> Config {
        parse(
            &config_text(root, "")
                .replace("  exclude = []", "  exclude = []\n  validate = \"false\""),
        )
    }

    /// Every name below `dir`, with a file's content or a directory's marker.
    fn listing(dir: &Path) -> BTreeMap<String, String> {
        walkdir::WalkDir::new(dir)
            .min_depth(1)
            .into_iter()
            .map(Result::unwrap)
            .map(|e| {
                let name = e.path().strip_prefix(dir).unwrap().display().to_string();
                let what = if e.file_type().is_dir() {
                    "<dir>".to_string()
                } else {
                    std::fs::read_to_string(e.path()).unwrap()
                };
                (name, what)
            })
            .collect()
    }

    /// A batch that adds a file, a directory and a file in it, replaces one file and
    /// deletes another, applied to a tree holding `old.cfg` and `gone.cfg`.
    fn apply_mixed(config: &Config, app: &Path) -> crate::apply::Applied {
        std::fs::create_dir_all(app).unwrap();
        std::fs::write(app.join("old.cfg"), "old").unwrap();
        std::fs::write(app.join("gone.cfg"), "gone").unwrap();
        let dir = Entry {
            content: Content::Dir,
            mode: 0o755,
            ..file_entry(b"")
        };
        let header = BatchHeader::new(vec![
            put("/etc/app/new.cfg", b"new"),
            Op {
                path: "/etc/app/conf.d".into(),
                action: Action::Put { entry: dir },
                expect: None,
            },
            put("/etc/app/conf.d/a.cfg", b"a"),
            Op {
                expect: Some(Box::new(file_entry(b"old"))),
                ..put("/etc/app/old.cfg", b"replaced")
            },
            Op {
                path: "/etc/app/gone.cfg".into(),
                action: Action::Delete,
                expect: Some(Box::new(file_entry(b"gone"))),
            },
        ]);
        let body = encode_batch(&header, &[b"new", b"a", b"replaced"]);
        let (_, applied) = apply_body(config, false, body.as_slice(), "a test").unwrap();
        for result in &applied.results {
            assert_eq!(
                result.outcome,
                crate::protocol::Outcome::Applied,
                "{result:?}"
            );
        }
        applied
    }

    #[test]
    fn a_batch_never_validated_is_put_back_at_the_next_start() {
        let tmp = tempfile::tempdir().unwrap();
        let config = validated(tmp.path());
        let app = tmp.path().join("etc/app");
        let applied = apply_mixed(&config, &app);
        let before: BTreeMap<String, String> = [("old.cfg", "old"), ("gone.cfg", "gone")]
            .into_iter()
            .map(|(n, c)| (n.to_string(), c.to_string()))
            .collect();
        assert_ne!(listing(&app), before);
        // The daemon stops between writing and validating: nothing is dropped.
        std::mem::forget(applied);

        let recovered = recover(&config);
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].dir, "/etc/app");
        assert!(
            recovered[0].failures.is_empty(),
            "{:?}",
            recovered[0].failures
        );
        assert_eq!(
            recovered[0].paths,
            [
                "/etc/app/conf.d",
                "/etc/app/conf.d/a.cfg",
                "/etc/app/gone.cfg",
                "/etc/app/new.cfg",
                "/etc/app/old.cfg"
            ]
        );
        // Exactly as before, and neither the journal nor a kept version is left.
        assert_eq!(listing(&app), before);
        assert!(recover(&config).is_empty());
    }

    #[test]
    fn an_accepted_or_rejected_batch_leaves_no_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let config = validated(tmp.path());
        let app = tmp.path().join("etc/app");
        apply_mixed(&config, &app).commit();
        let accepted = listing(&app);
        assert_eq!(accepted["old.cfg"], "replaced");
        assert_eq!(accepted.len(), 4, "{accepted:?}");
        assert!(recover(&config).is_empty());
        assert_eq!(listing(&app), accepted);

        let again = tmp.path().join("again");
        let config = validated(&again);
        let mut applied = apply_mixed(&config, &again.join("etc/app"));
        assert!(applied.reject(&config, "/etc/app", "no").is_empty());
        drop(applied);
        assert!(recover(&config).is_empty());
    }

    #[test]
    fn a_journal_cannot_lead_outside_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let config = validated(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let outside = tmp.path().join("etc/outside.cfg");
        std::fs::write(&outside, "keep").unwrap();
        std::fs::write(app.join("kept.cfg"), "keep").unwrap();
        let lines = [
            r#"{"path":"/etc/outside.cfg","previous":{"kind":"absent"}}"#,
            r#"{"path":"/etc/app/../outside.cfg","previous":{"kind":"absent"}}"#,
            r#"{"path":"/etc/app/kept.cfg","previous":{"kind":"linked","tmp":"../outside.cfg","beside":false}}"#,
            r#"{"path":"/etc/app/kept.cfg","previous":{"kind":"absent""#,
        ];
        std::fs::write(app.join(".gosyncd-undo-test.tmp"), lines.join("\n")).unwrap();
        let recovered = recover(&config);
        assert_eq!(recovered.len(), 1);
        // The torn last line is a change never made: ignored. The three others refused.
        assert_eq!(
            recovered[0].failures.len(),
            3,
            "{:?}",
            recovered[0].failures
        );
        assert!(recovered[0].paths.is_empty());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(
            std::fs::read_to_string(app.join("kept.cfg")).unwrap(),
            "keep"
        );
        assert!(!app.join(".gosyncd-undo-test.tmp").exists());
    }
}
