//! One burst of local edits: the paths it touched, and which of its files are still
//! being written.
//!
//! A burst is complete when every file it touched is closed or renamed into place and
//! the settle window (`debounce`) has passed with no new event. The kernel says when a
//! write is finished (`IN_CLOSE_WRITE`, `IN_MOVED_TO`); a quiet time alone cannot tell
//! "the writer paused" from "the writer finished". A file still open for writing after
//! `open_write_timeout` stops holding its burst back: it is pushed as it is, with a
//! warning, and later writes to it wait for the settle window only, until it is closed.
//!
//! Two kinds of burst wait longer after their last event:
//! - A burst of many files: a bulk writer (a `git checkout`, `tar -x`, `rsync`) stalls
//!   between two files now and then (reading a pack, being scheduled out) with nothing
//!   open, and must still be one push. Each path the burst touched adds
//!   [`SETTLE_PER_PATH`] to the window, up to [`SETTLE_EXTRA_MAX`]; an editor's save
//!   touches one or two synchronised names and waits `debounce` alone.
//! - A burst in which a known path vanished (deleted or renamed away) and has not come
//!   back: emacs renames the old file to its backup name before it writes the new one,
//!   git deletes a file before writing it again. It waits at least [`VANISHED_GRACE`], so
//!   that the peers never lose, even for an instant, a file that is back a moment later.
//!
//! Pure apart from the `lstat`s of [`Burst::recheck`]: it neither scans nor pushes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::queue::{ChangeKind, Taken};
use super::writers::FileId;
use crate::config::Config;

/// What each path a burst touched adds to its settle window.
pub const SETTLE_PER_PATH: Duration = Duration::from_millis(1);

/// The most a burst's size adds to its settle window.
pub const SETTLE_EXTRA_MAX: Duration = Duration::from_millis(200);

/// How often, at most, [`Burst::recheck`] asks which files processes hold open.
pub const WRITERS_INTERVAL: Duration = Duration::from_secs(1);

/// The least a burst waits after its last event while a path it knew is missing.
pub const VANISHED_GRACE: Duration = Duration::from_millis(150);

/// The paths one burst touched, and its files not yet complete.
#[derive(Debug)]
pub struct Burst {
    /// The logical paths touched, all synchronised (never excluded nor temporary).
    pub paths: BTreeSet<String>,
    /// Events were lost: compare everything.
    pub rescan: bool,
    /// Files open for writing, by local path, with when they were first seen written
    /// (or created).
    open: BTreeMap<PathBuf, Instant>,
    /// No file of `open` was first seen before this (`None` while none is open): when
    /// the first of them can become overdue, without a walk over all of them at every
    /// event (a burst of an initial sync received holds every file it creates for a
    /// moment). Exact again after [`Burst::overdue`] looks at them all.
    open_since: Option<Instant>,
    /// Files renamed away while open for writing, until the rename's other half.
    renamed: HashMap<u32, Vec<(PathBuf, Instant)>>,
    /// Logical paths deleted or renamed away, and not back (yet).
    vanished: BTreeSet<String>,
    /// When the last event arrived.
    last_event: Instant,
    /// When the processes' open files were last looked at.
    writers_asked: Option<Instant>,
}

/// Files that were pushed while still open, past `open_write_timeout`: their writes no
/// longer hold a burst back until they are closed. Kept from burst to burst.
pub type Overdue = BTreeSet<PathBuf>;

impl Burst {
    pub fn new(now: Instant) -> Burst {
        Burst {
            paths: BTreeSet::new(),
            rescan: false,
            open: BTreeMap::new(),
            open_since: None,
            renamed: HashMap::new(),
            vanished: BTreeSet::new(),
            last_event: now,
            writers_asked: None,
        }
    }

    /// Adds what was taken from the queue.
    pub fn add(&mut self, config: &Config, taken: Taken, now: Instant, overdue: &mut Overdue) {
        if taken.rescan {
            self.rescan = true;
            // Which files are open is unknown now: the rescan takes what is there.
            self.open.clear();
            self.open_since = None;
            self.renamed.clear();
        }
        for change in taken.changes {
            // Only what this node synchronises: excluded and temporary names never
            // travel, and a swap file an editor keeps open must not hold a save back.
            let Some(logical) = config
                .logical_path(&change.path)
                .filter(|p| crate::tree::confine(config, p).is_ok())
            else {
                continue;
            };
            self.last_event = now;
            let path = change.path;
            match change.kind {
                ChangeKind::MovedFrom(_) | ChangeKind::Removed => {
                    self.vanished.insert(logical.clone());
                }
                ChangeKind::Created
                | ChangeKind::CreatedDirectory
                | ChangeKind::MovedTo(_)
                | ChangeKind::Written => {
                    self.vanished.remove(&logical);
                }
                ChangeKind::Closed | ChangeKind::Attributes => {}
            }
            match change.kind {
                ChangeKind::Written if overdue.contains(&path) => {}
                ChangeKind::Written | ChangeKind::Created => {
                    let since = *self.open.entry(path).or_insert(now);
                    self.opened(since);
                }
                ChangeKind::Closed => {
                    overdue.remove(&path);
                    self.open.remove(&path);
                }
                ChangeKind::MovedFrom(cookie) => {
                    let moving = self.take_below(&path);
                    if !moving.is_empty() {
                        self.renamed.entry(cookie).or_default().extend(moving);
                    }
                }
                ChangeKind::MovedTo(cookie) => {
                    // A file renamed into place is complete; one still open keeps its
                    // writer, under its new name.
                    if let Some(moved) = self.renamed.remove(&cookie) {
                        for (relative, since) in moved {
                            self.open.insert(path.join(relative), since);
                            self.opened(since);
                        }
                    }
                }
                ChangeKind::Removed => {
                    self.take_below(&path);
                }
                ChangeKind::CreatedDirectory | ChangeKind::Attributes => {}
            }
            self.paths.insert(logical);
        }
    }

    /// Notes that a file first seen at `since` is open.
    fn opened(&mut self, since: Instant) {
        self.open_since = match self.open_since {
            Some(first) if self.open.len() > 1 => Some(first.min(since)),
            _ => Some(since),
        };
    }

    /// Takes the open files at or below `path` (a file or a directory renamed or
    /// deleted), with their paths relative to it.
    fn take_below(&mut self, path: &Path) -> Vec<(PathBuf, Instant)> {
        let below: Vec<PathBuf> = self
            .open
            .range(path.to_path_buf()..)
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(path))
            .cloned()
            .collect();
        below
            .into_iter()
            .filter_map(|p| {
                let since = self.open.remove(&p)?;
                let relative = p.strip_prefix(path).ok()?.to_path_buf();
                Some((relative, since))
            })
            .collect()
    }

    /// The settle window of this burst: `debounce`, plus a little per path touched, and
    /// at least [`VANISHED_GRACE`] more while a path `known` before the burst is missing.
    pub fn settle(&self, debounce: Duration, known: impl Fn(&str) -> bool) -> Duration {
        let paths = u32::try_from(self.paths.len()).unwrap_or(u32::MAX);
        let settle = debounce + SETTLE_PER_PATH.saturating_mul(paths).min(SETTLE_EXTRA_MAX);
        if self.vanished.iter().any(|p| known(p)) {
            settle.max(debounce + VANISHED_GRACE)
        } else {
            settle
        }
    }

    /// Whether every file is complete and the settle window has passed since the last
    /// event.
    pub fn complete(&self, now: Instant, debounce: Duration, known: impl Fn(&str) -> bool) -> bool {
        self.open.is_empty() && now >= self.last_event + self.settle(debounce, known)
    }

    /// How long to wait for the next event before looking again.
    pub fn wait(
        &self,
        now: Instant,
        (debounce, bound): (Duration, Duration),
        known: impl Fn(&str) -> bool,
    ) -> Duration {
        let settle = self.settle(debounce, known);
        let quiet = (self.last_event + settle).saturating_duration_since(now);
        if self.open.is_empty() {
            return quiet;
        }
        let first_due = self
            .open_since
            .map(|since| (since + bound).saturating_duration_since(now))
            .unwrap_or_default();
        // Looked at again now and then: a close the kernel could not report (a file
        // deleted or renamed out of sight by another way) must not hold the burst.
        quiet
            .max(settle)
            .min(first_due)
            .max(Duration::from_millis(1))
    }

    /// Drops the files that nobody is writing any more: gone, not a regular file,
    /// holding the version this node knows there (`known`: a file a peer's push linked
    /// into place whole, which no close follows), or held open for writing by no process
    /// (`writers`, asked at most once per [`WRITERS_INTERVAL`]; `None` when it cannot
    /// tell). That covers what the events cannot: a write with no open file behind it
    /// (an mtime set through the path, `truncate(2)`) and a hard link made, neither of
    /// which is ever closed. A write to a file dropped here makes it open again.
    pub fn recheck(
        &mut self,
        now: Instant,
        stat: impl Fn(&Path) -> Option<std::fs::Metadata>,
        known: impl Fn(&Path, &std::fs::Metadata) -> bool,
        writers: impl FnOnce(&HashSet<FileId>) -> Option<HashSet<FileId>>,
    ) {
        use std::os::unix::fs::MetadataExt;
        let mut ids = HashMap::new();
        self.open.retain(|path, _| match stat(path) {
            Some(meta) if meta.file_type().is_file() && !known(path, &meta) => {
                ids.insert(path.clone(), (meta.dev(), meta.ino()));
                true
            }
            _ => false,
        });
        if self.open.is_empty()
            || self
                .writers_asked
                .is_some_and(|at| now < at + WRITERS_INTERVAL)
        {
            return;
        }
        self.writers_asked = Some(now);
        let wanted: HashSet<FileId> = ids.values().copied().collect();
        if let Some(writing) = writers(&wanted) {
            self.open
                .retain(|path, _| ids.get(path).is_some_and(|id| writing.contains(id)));
        }
    }

    /// The files open for writing for `bound` or longer: they stop holding the burst
    /// back, and become overdue.
    pub fn overdue(
        &mut self,
        now: Instant,
        bound: Duration,
        overdue: &mut Overdue,
    ) -> Vec<PathBuf> {
        if self.open_since.is_none_or(|since| now < since + bound) {
            return Vec::new();
        }
        let late: Vec<PathBuf> = self
            .open
            .iter()
            .filter(|(_, since)| now >= **since + bound)
            .map(|(p, _)| p.clone())
            .collect();
        for path in &late {
            self.open.remove(path);
            overdue.insert(path.clone());
        }
        self.open_since = self.open.values().min().copied();
        late
    }

    /// The files still open for writing.
    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::watcher::queue::Change;

    const SETTLE: Duration = Duration::from_millis(20);
    const BOUND: Duration = Duration::from_secs(600);

    /// Nothing was known before the burst.
    fn none(_: &str) -> bool {
        false
    }

    fn taken(root: &Path, changes: &[(&str, ChangeKind)]) -> Taken {
        Taken {
            changes: changes
                .iter()
                .map(|(p, kind)| Change {
                    path: root.join(p.trim_start_matches('/')),
                    kind: *kind,
                })
                .collect(),
            rescan: false,
        }
    }

    fn setup() -> (tempfile::TempDir, Config) {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::testing::config_at(tmp.path(), "");
        (tmp, config)
    }

    #[test]
    fn a_file_written_and_not_closed_holds_the_burst_however_long_the_pause() {
        let (tmp, config) = setup();
        let t0 = Instant::now();
        let mut overdue = Overdue::new();
        let mut burst = Burst::new(t0);
        burst.add(
            &config,
            taken(
                tmp.path(),
                &[
                    ("/etc/app/big.map", ChangeKind::Created),
                    ("/etc/app/big.map", ChangeKind::Written),
                ],
            ),
            t0,
            &mut overdue,
        );
        assert_eq!(burst.paths.iter().collect::<Vec<_>>(), ["/etc/app/big.map"]);
        let later = t0 + Duration::from_secs(5);
        assert!(
            !burst.complete(later, SETTLE, none),
            "the writer only paused"
        );
        burst.add(
            &config,
            taken(tmp.path(), &[("/etc/app/big.map", ChangeKind::Closed)]),
            later,
            &mut overdue,
        );
        assert!(
            !burst.complete(later, SETTLE, none),
            "the settle window runs from the close"
        );
        assert!(burst.complete(later + burst.settle(SETTLE, none), SETTLE, none));
    }

    #[test]
    fn an_editor_save_is_complete_at_the_rename_and_excluded_files_are_left_out() {
        let (tmp, config) = setup();
        let t0 = Instant::now();
        let mut overdue = Overdue::new();
        let mut burst = Burst::new(t0);
        burst.add(
            &config,
            taken(
                tmp.path(),
                &[
                    // A swap file vim keeps open for the whole session.
                    ("/etc/app/.x.cfg.swp", ChangeKind::Written),
                    ("/etc/app/x.cfg.tmp", ChangeKind::Created),
                    ("/etc/app/x.cfg.tmp", ChangeKind::Written),
                    ("/etc/app/x.cfg.tmp", ChangeKind::Closed),
                    ("/etc/app/x.cfg.tmp", ChangeKind::MovedFrom(3)),
                    ("/etc/app/x.cfg", ChangeKind::MovedTo(3)),
                    ("/etc/other/y", ChangeKind::Written),
                ],
            ),
            t0,
            &mut overdue,
        );
        assert_eq!(
            burst.paths.iter().collect::<Vec<_>>(),
            ["/etc/app/x.cfg", "/etc/app/x.cfg.tmp"]
        );
        assert!(burst.complete(t0 + burst.settle(SETTLE, none), SETTLE, none));
    }

    #[test]
    fn a_file_renamed_while_open_is_still_open_under_its_new_name() {
        let (tmp, config) = setup();
        let t0 = Instant::now();
        let mut overdue = Overdue::new();
        let mut burst = Burst::new(t0);
        let changes = [
            ("/etc/app/d/a", ChangeKind::Written),
            ("/etc/app/d", ChangeKind::MovedFrom(9)),
            ("/etc/app/e", ChangeKind::MovedTo(9)),
        ];
        burst.add(&config, taken(tmp.path(), &changes), t0, &mut overdue);
        assert_eq!(burst.open(), 1);
        burst.add(
            &config,
            taken(tmp.path(), &[("/etc/app/e/a", ChangeKind::Closed)]),
            t0,
            &mut overdue,
        );
        assert!(burst.complete(t0 + burst.settle(SETTLE, none), SETTLE, none));
        // Deleted while open: nothing to wait for.
        burst.add(
            &config,
            taken(
                tmp.path(),
                &[
                    ("/etc/app/f/g", ChangeKind::Written),
                    ("/etc/app/f", ChangeKind::Removed),
                ],
            ),
            t0,
            &mut overdue,
        );
        assert_eq!(burst.open(), 0);
    }

    #[test]
    fn recheck_lets_go_of_files_gone_not_regular_known_or_written_by_nobody() {
        let (tmp, config) = setup();
        let dir = tmp.path().join("etc/app");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("source"), "x").unwrap();
        std::fs::hard_link(dir.join("source"), dir.join("link")).unwrap();
        std::os::unix::fs::symlink("source", dir.join("sym")).unwrap();
        std::fs::write(dir.join("writing"), "half").unwrap();
        std::fs::write(dir.join("touched"), "").unwrap();
        std::fs::write(dir.join("received"), "whole").unwrap();
        let t0 = Instant::now();
        let mut overdue = Overdue::new();
        let mut burst = Burst::new(t0);
        let changes = [
            ("/etc/app/link", ChangeKind::Created),
            ("/etc/app/sym", ChangeKind::Created),
            ("/etc/app/gone", ChangeKind::Written),
            ("/etc/app/writing", ChangeKind::Written),
            ("/etc/app/touched", ChangeKind::Written),
            // Linked into place whole by a peer's push: its version is the one known.
            ("/etc/app/received", ChangeKind::Created),
        ];
        burst.add(&config, taken(tmp.path(), &changes), t0, &mut overdue);
        assert_eq!(burst.open(), 6);
        let stat = |p: &Path| std::fs::symlink_metadata(p).ok();
        let id = |name: &str| super::super::writers::file_id(&dir.join(name)).unwrap();
        // Only "writing" has a writer (the link shares the source's inode, which has none).
        let writing = id("writing");
        let known = |p: &Path, meta: &std::fs::Metadata| p.ends_with("received") && meta.len() == 5;
        let mut asked = Vec::new();
        burst.recheck(t0, stat, known, |wanted| {
            asked.push(wanted.len());
            Some(HashSet::from([writing]))
        });
        assert_eq!(asked, [3], "asked once, about the regular files left");
        assert_eq!(
            burst.open.keys().collect::<Vec<_>>(),
            [&dir.join("writing")]
        );
        // Not asked again within the interval; asked after it; can't tell: kept.
        burst.recheck(t0 + WRITERS_INTERVAL / 2, stat, known, |_| {
            panic!("asked too soon")
        });
        burst.recheck(t0 + WRITERS_INTERVAL, stat, known, |_| None);
        assert_eq!(burst.open(), 1, "kept when nobody can tell");
        burst.recheck(t0 + WRITERS_INTERVAL * 2, stat, known, |_| {
            Some(HashSet::new())
        });
        assert_eq!(burst.open(), 0, "closed meanwhile");
        // Written after it was let go: open again.
        let written = [("/etc/app/received", ChangeKind::Written)];
        burst.add(&config, taken(tmp.path(), &written), t0, &mut overdue);
        assert_eq!(burst.open(), 1);
    }

    #[test]
    fn a_file_open_past_the_bound_stops_holding_bursts_until_it_is_closed() {
        let (tmp, config) = setup();
        let t0 = Instant::now();
        let mut overdue = Overdue::new();
        let mut burst = Burst::new(t0);
        let log = [("/etc/app/app.log", ChangeKind::Written)];
        burst.add(&config, taken(tmp.path(), &log), t0, &mut overdue);
        assert_eq!(
            burst.wait(t0, (SETTLE, BOUND), none),
            burst.settle(SETTLE, none)
        );
        assert!(burst
            .overdue(t0 + BOUND / 2, BOUND, &mut overdue)
            .is_empty());
        // Written again meanwhile: still open since its first write.
        burst.add(
            &config,
            taken(tmp.path(), &log),
            t0 + BOUND / 2,
            &mut overdue,
        );
        let late = burst.overdue(t0 + BOUND, BOUND, &mut overdue);
        assert_eq!(late, [tmp.path().join("etc/app/app.log")]);
        assert!(burst.complete(t0 + BOUND, SETTLE, none));
        // Written again: the settle window alone, while it stays open.
        let mut next = Burst::new(t0 + BOUND);
        next.add(&config, taken(tmp.path(), &log), t0 + BOUND, &mut overdue);
        assert!(next.complete(t0 + BOUND + next.settle(SETTLE, none), SETTLE, none));
        // Closed, then written again: complete files only, as for any file.
        let closed = [
            ("/etc/app/app.log", ChangeKind::Closed),
            ("/etc/app/app.log", ChangeKind::Written),
        ];
        next.add(
            &config,
            taken(tmp.path(), &closed),
            t0 + BOUND,
            &mut overdue,
        );
        assert!(!next.complete(t0 + BOUND + next.settle(SETTLE, none), SETTLE, none));
    }

    #[test]
    fn a_burst_of_many_files_waits_a_little_longer_after_its_last_event() {
        let (tmp, config) = setup();
        let t0 = Instant::now();
        let mut overdue = Overdue::new();
        let mut burst = Burst::new(t0);
        let save = [("/etc/app/x.cfg", ChangeKind::MovedTo(1))];
        burst.add(&config, taken(tmp.path(), &save), t0, &mut overdue);
        assert_eq!(burst.settle(SETTLE, none), SETTLE + SETTLE_PER_PATH);
        let names: Vec<String> = (0..100).map(|i| format!("/etc/app/d/f{i}")).collect();
        let closed: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), ChangeKind::Closed))
            .collect();
        burst.add(&config, taken(tmp.path(), &closed), t0, &mut overdue);
        assert_eq!(burst.settle(SETTLE, none), SETTLE + SETTLE_PER_PATH * 101);
        assert!(
            !burst.complete(t0 + SETTLE * 2, SETTLE, none),
            "a stall between two files"
        );
        assert!(burst.complete(t0 + burst.settle(SETTLE, none), SETTLE, none));
        let more: Vec<String> = (0..1000).map(|i| format!("/etc/app/e/f{i}")).collect();
        let closed: Vec<_> = more
            .iter()
            .map(|n| (n.as_str(), ChangeKind::Closed))
            .collect();
        burst.add(&config, taken(tmp.path(), &closed), t0, &mut overdue);
        assert_eq!(
            burst.settle(SETTLE, none),
            SETTLE + SETTLE_EXTRA_MAX,
            "bounded"
        );
    }

    #[test]
    fn a_known_file_renamed_away_waits_for_its_replacement() {
        let (tmp, config) = setup();
        let t0 = Instant::now();
        let mut overdue = Overdue::new();
        let known = |p: &str| p == "/etc/app/x.cfg";
        // emacs: the old file becomes the backup (excluded), then the new one is written.
        let mut burst = Burst::new(t0);
        let backup = [
            ("/etc/app/x.cfg", ChangeKind::MovedFrom(4)),
            ("/etc/app/x.cfg~", ChangeKind::MovedTo(4)),
        ];
        burst.add(&config, taken(tmp.path(), &backup), t0, &mut overdue);
        assert!(burst.settle(SETTLE, known) >= SETTLE + VANISHED_GRACE);
        assert!(!burst.complete(t0 + SETTLE * 2, SETTLE, known));
        let written = [
            ("/etc/app/x.cfg", ChangeKind::Created),
            ("/etc/app/x.cfg", ChangeKind::Written),
            ("/etc/app/x.cfg", ChangeKind::Closed),
        ];
        burst.add(&config, taken(tmp.path(), &written), t0, &mut overdue);
        assert_eq!(burst.settle(SETTLE, known), burst.settle(SETTLE, none));
        assert!(burst.complete(t0 + burst.settle(SETTLE, known), SETTLE, known));
        // A temporary file renamed over the target vanishes too, but was never known.
        let mut save = Burst::new(t0);
        let renamed = [
            ("/etc/app/x.cfg.tmp", ChangeKind::Closed),
            ("/etc/app/x.cfg.tmp", ChangeKind::MovedFrom(5)),
            ("/etc/app/x.cfg", ChangeKind::MovedTo(5)),
        ];
        save.add(&config, taken(tmp.path(), &renamed), t0, &mut overdue);
        assert!(
            save.settle(SETTLE, known) < SETTLE * 2,
            "an editor's save waits the window alone"
        );
    }

    #[test]
    fn a_rescan_forgets_which_files_are_open() {
        let (tmp, config) = setup();
        let t0 = Instant::now();
        let mut overdue = Overdue::new();
        let mut burst = Burst::new(t0);
        let writing = [("/etc/app/a", ChangeKind::Written)];
        burst.add(&config, taken(tmp.path(), &writing), t0, &mut overdue);
        burst.add(
            &config,
            Taken {
                changes: Vec::new(),
                rescan: true,
            },
            t0,
            &mut overdue,
        );
        assert!(burst.rescan && burst.complete(t0 + burst.settle(SETTLE, none), SETTLE, none));
    }
}
