//! The baseline: what a running daemon last knew of each path, the version a local edit
//! is measured against. Built by a scan at start-up, updated by the local changes it
//! pushes and by the changes it receives. Nothing is stored on disk; this is the
//! daemon's memory.
//!
//! Two guarantees of automatic propagation rest on it:
//! - conflict safety: a local change is pushed as "apply this only if you still have
//!   version X", X being this node's version before the edit, so a peer that has
//!   something else refuses instead of losing its change;
//! - no echo: a file written because a peer pushed it is recorded here first, so the
//!   watcher finds nothing new when it sees the write, and pushes nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::config::Config;
use crate::manifest::{Hashes, Manifest, Scan, Stamp};
use crate::paths::{below, in_scope_of, is_within, LogicalPath};
use crate::plan::plan;
use crate::protocol::{Action, Content, Digest256, Entry, Op};

/// What this node last knew of each logical path: the version (entry) it last scanned,
/// pushed or received there.
///
/// It also keeps the hashes of the daemon's scans ([`Hashes`]): the file found at a path
/// holding the version known there is remembered by its stamp, so that the next scan
/// takes that version's hash instead of reading the file again. A daemon keeps one row
/// per path and no other per-file record.
pub struct Baseline {
    rows: Mutex<Rows>,
}

/// The rows, by path, kept packed.
///
/// A map filled one path at a time (the batches of an initial sync received, a tree
/// restored) leaves its nodes about half full, as a full node splits in two: a daemon
/// that had received 100,000 paths held 18 MB of nodes for them, against 9.7 MB for the
/// same rows built at once from a scan. Once paths added or removed since the map was
/// last packed come to a sixteenth of its size, it is packed again: rebuilt in order from
/// its own rows, which fills every node and frees the old nodes as it goes, so no second
/// copy is ever held. A pass over the map for every sixteenth of it changed: about
/// sixteen rows moved per path added or removed (at 100,000 paths, a pass takes a few
/// milliseconds).
struct Rows {
    map: BTreeMap<Box<str>, Row>,
    /// Paths added or removed since the map was last packed.
    loose: usize,
}

/// Below this many paths added or removed, the map is not packed however small it is.
const PACK_AFTER_AT_LEAST: usize = 64;

impl Rows {
    fn insert(&mut self, path: Box<str>, row: Row) {
        if self.map.insert(path, row).is_none() {
            self.loosened();
        }
    }

    fn remove(&mut self, path: &str) {
        if self.map.remove(path).is_some() {
            self.loosened();
        }
    }

    fn loosened(&mut self) {
        self.loose += 1;
        if self.loose >= PACK_AFTER_AT_LEAST.max(self.map.len() / 16) {
            self.pack();
        }
    }

    /// Rebuilds the map with full nodes. `append` merges two maps by pushing their rows,
    /// in order, into new nodes filled to capacity, freeing each old node once passed;
    /// it needs both sides non-empty to do so (into an empty map, it only swaps them).
    fn pack(&mut self) {
        self.loose = 0;
        let Some(first) = self.map.pop_first() else {
            return;
        };
        let mut packed = BTreeMap::from([first]);
        packed.append(&mut self.map);
        self.map = packed;
    }
}

/// What is known of one path.
struct Row {
    entry: Entry,
    /// The file last found holding `entry`, if a scan saw it settled.
    found: Found,
}

/// A file, by a fingerprint of its inode and ctime (its size and mtime are the entry's).
/// Eight bytes instead of sixteen, in a row kept for every path: at 100,000 paths,
/// 0.8 MB of an idle daemon.
///
/// The fingerprint is exact where a file changes in the ways files change: two stamps
/// with the same inode and different ctimes, or the same ctime and different inodes,
/// never share it, as each half goes through a bijection. Two stamps that differ in both
/// share it only by a 2^-64 chance, and a hash is taken from it only when the size and
/// mtime agree as well.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Found(u64);

impl Found {
    /// No file: the fingerprint of inode 0, which no file has, at ctime 0. A file whose
    /// stamp happens to share it is never taken as found: it is read again.
    const NONE: Found = Found(0);

    fn of(stamp: &Stamp) -> Found {
        Found(stamp.ino ^ mix(stamp.ctime_ns as u64))
    }
}

/// A bijection of 64-bit integers that spreads every bit of its input over the output
/// (SplitMix64's finaliser).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Row {
    fn new(entry: Entry) -> Row {
        Row {
            entry,
            found: Found::NONE,
        }
    }

    /// The hash of the version known, if it is a file's of size and mtime `stamp`'s.
    fn file_digest(&self, stamp: &Stamp) -> Option<&Digest256> {
        match &self.entry.content {
            Content::File { size, sha256 }
                if *size == stamp.size && self.entry.mtime_ns == stamp.mtime_ns =>
            {
                Some(sha256)
            }
            _ => None,
        }
    }
}

impl Baseline {
    pub fn new(initial: Manifest) -> Baseline {
        Baseline {
            // Built in order: packed; a part at a time, as the scan's map goes.
            rows: Mutex::new(Rows {
                map: crate::manifest::sorted_into_map(
                    initial
                        .into_iter()
                        .map(|(path, entry)| (Box::from(path.as_str()), Row::new(entry))),
                ),
                loose: 0,
            }),
        }
    }

    /// The versions a full scan of `config` found (`scan`, begun at `began_ns`), each
    /// file's hash kept for the next scans where the file has not changed since.
    pub fn of_scan(config: &Config, scan: Manifest, began_ns: i64) -> Baseline {
        let baseline = Baseline::new(scan);
        baseline.keep_hashes(config, began_ns);
        baseline
    }

    /// Keeps the hash of each file known whose stamp shows no change since `began_ns`
    /// (less the settling time), when the version known was read: its hash is that
    /// version's. A file changed since (or being changed) is read again by the next scan.
    fn keep_hashes(&self, config: &Config, began_ns: i64) {
        let mut rows = self.rows.lock().expect("baseline lock");
        for (path, row) in rows.map.iter_mut() {
            if !matches!(row.entry.content, Content::File { .. }) {
                continue;
            }
            let Ok(st) = rustix::fs::lstat(config.local_path(path)) else {
                continue;
            };
            let stamp = Stamp::of_stat(&st);
            let is_file = rustix::fs::FileType::from_raw_mode(st.st_mode)
                == rustix::fs::FileType::RegularFile;
            if is_file && stamp.settled_before(began_ns) && row.file_digest(&stamp).is_some() {
                row.found = Found::of(&stamp);
            }
        }
    }

    /// Records what a peer's push left at `path` (`None`: deleted).
    pub fn record(&self, path: &str, state: Option<Entry>) {
        let mut rows = self.rows.lock().expect("baseline lock");
        match state {
            Some(entry) => rows.insert(path.into(), Row::new(entry)),
            None => rows.remove(path),
        }
    }

    /// Records the file a peer's push put at `path`, holding `entry`, found with `stamp`
    /// right after it was put: a scan that finds the same stamp there takes `entry`'s
    /// hash instead of reading the file. Only where the stamp is of `entry` (its size and
    /// mtime) and its mtime at least two seconds before `now_ns` (see
    /// [`Stamp::mtime_settled_before`]); otherwise the file will be read again, as any
    /// file changed recently is.
    pub fn record_put(&self, path: &str, entry: Entry, stamp: &Stamp, now_ns: i64) {
        let mut row = Row::new(entry);
        if row.file_digest(stamp).is_some() && stamp.mtime_settled_before(now_ns) {
            row.found = Found::of(stamp);
        }
        self.rows
            .lock()
            .expect("baseline lock")
            .insert(path.into(), row);
    }

    /// The state last known at `path`.
    pub fn get(&self, path: &str) -> Option<Entry> {
        self.rows
            .lock()
            .expect("baseline lock")
            .map
            .get(path)
            .map(|row| row.entry.clone())
    }

    /// Whether the version known at `path` is a file of `size` bytes last modified at
    /// `mtime_ns`: a file found so holds that version (what this node received or
    /// pushed there), not one being written.
    pub fn holds_file(&self, path: &str, size: u64, mtime_ns: i64) -> bool {
        self.rows
            .lock()
            .expect("baseline lock")
            .map
            .get(path)
            .is_some_and(|row| {
                matches!(row.entry.content, Content::File { size: known, .. } if known == size)
                    && row.entry.mtime_ns == mtime_ns
            })
    }

    /// Whether anything is known at `path`.
    pub fn knows(&self, path: &str) -> bool {
        self.rows
            .lock()
            .expect("baseline lock")
            .map
            .contains_key(path)
    }

    /// Every path known, and what is known there, below directory `dir`.
    pub fn below(&self, dir: &str) -> Vec<(LogicalPath, Option<Entry>)> {
        let rows = self.rows.lock().expect("baseline lock");
        below(&rows.map, dir)
            .map(|(path, row)| (LogicalPath::from(&**path), Some(row.entry.clone())))
            .collect()
    }

    /// Compares a scan of `scope` (empty: everything) with the versions known there,
    /// records the scan as the new versions, and returns the operations that carry the
    /// difference to peers, each expecting the version this node had before.
    ///
    /// Paths the scan could not read, and configured directories that are missing, are
    /// left out: an unreadable or vanished tree is never pushed as a deletion.
    pub fn take_changes(&self, scan: &Scan, scope: &[String], owners: bool) -> Vec<Op> {
        self.changes(scan, scope, owners, true)
    }

    /// The paths [`Baseline::take_changes`] would return operations for, recording
    /// nothing.
    pub fn peek_changes(&self, scan: &Scan, scope: &[String], owners: bool) -> Vec<String> {
        self.changes(scan, scope, owners, false)
            .into_iter()
            .map(|op| op.path.into())
            .collect()
    }

    fn changes(&self, scan: &Scan, scope: &[String], owners: bool, record: bool) -> Vec<Op> {
        let unknown: Vec<&str> = scan
            .unreadable
            .iter()
            .map(|(p, _)| p.as_str())
            .chain(scan.missing.iter().map(String::as_str))
            .collect();
        let known = |path: &str| !unknown.iter().any(|u| is_within(path, u));
        // What the scan found in scope, its paths shared by the operations. Both sides
        // are looked up by the scope's paths and ranges, not filtered whole; and both
        // borrow their paths and entries: at 100,000 paths, copies of both were the
        // largest thing a daemon ever held.
        let now: BTreeMap<&LogicalPath, &Entry> = in_scope_of(&scan.entries, scope)
            .into_iter()
            .filter(|(path, _)| known(path))
            .collect();

        let mut rows = self.rows.lock().expect("baseline lock");
        let map = &rows.map;
        let ops = {
            let mut before: BTreeMap<&str, &Entry> = in_scope_of(map, scope)
                .into_iter()
                .filter(|(path, _)| known(path))
                .map(|(p, row)| (&**p, &row.entry))
                .collect();
            // A directory found gone takes everything below it: a scope naming one file
            // of a tree being deleted (`rm -rf` still under way when the burst ended)
            // covers the directory as an ancestor, and its deletion must carry the rest of
            // its contents, or the peers would be asked to delete a directory that still
            // holds them.
            let gone: Vec<&str> = before
                .iter()
                .filter(|(path, entry)| entry.content.is_dir() && !now.contains_key(**path))
                .map(|(path, _)| *path)
                .collect();
            for dir in gone {
                before.extend(below(map, dir).map(|(p, row)| (&**p, &row.entry)));
            }
            plan(&now, &before, owners)
        };
        if !record {
            return ops;
        }
        // What was known there and is gone has a deletion among the operations; what is
        // there now is recorded whole (its mtime too, which makes no operation).
        for op in ops.iter().filter(|op| op.action == Action::Delete) {
            rows.remove(op.path.as_str());
        }
        for (path, entry) in now {
            match rows.map.get_mut(path.as_str()) {
                // The same version, where the same file was found: its hash stays kept.
                Some(known) if known.entry == *entry => {}
                Some(known) => *known = Row::new(entry.clone()),
                None => rows.insert(path.as_str().into(), Row::new(entry.clone())),
            }
        }
        ops
    }
}

impl Hashes for Baseline {
    fn hash_of(&self, logical: &str, stamp: &Stamp) -> Option<Digest256> {
        let rows = self.rows.lock().expect("baseline lock");
        let row = rows.map.get(logical)?;
        if row.found == Found::NONE || row.found != Found::of(stamp) {
            return None;
        }
        row.file_digest(stamp).copied()
    }

    fn hashed(&self, logical: &str, stamp: &Stamp, digest: Digest256) {
        let mut rows = self.rows.lock().expect("baseline lock");
        // Kept only where the file holds the version known: a hash is never a version.
        if let Some(row) = rows.map.get_mut(logical) {
            if row.file_digest(stamp) == Some(&digest) {
                row.found = Found::of(stamp);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Action, ChangeKind};
    use crate::testing::file_entry;

    fn scan_of(entries: &[(&str, &[u8])]) -> Scan {
        Scan {
            entries: entries
                .iter()
                .map(|(p, b)| ((*p).into(), file_entry(b)))
                .collect(),
            ..Scan::default()
        }
    }

    #[test]
    fn a_local_edit_is_pushed_expecting_the_previous_version() {
        let baseline = Baseline::new(scan_of(&[("/d/a", b"v1")]).entries);
        let ops = baseline.take_changes(&scan_of(&[("/d/a", b"v2")]), &[], true);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].expect.as_deref(), Some(&file_entry(b"v1")));
        assert_eq!(
            ops[0].action,
            Action::Put {
                entry: file_entry(b"v2")
            }
        );
        assert_eq!(baseline.get("/d/a"), Some(file_entry(b"v2")));
    }

    #[test]
    fn a_file_holds_the_version_known_by_its_size_and_mtime_only() {
        let v1 = file_entry(b"v1");
        let baseline = Baseline::new(scan_of(&[("/d/a", b"v1")]).entries);
        baseline.record(
            "/d/dir",
            Some(Entry {
                content: Content::Dir,
                ..v1.clone()
            }),
        );
        assert!(baseline.holds_file("/d/a", 2, v1.mtime_ns));
        assert!(!baseline.holds_file("/d/a", 3, v1.mtime_ns), "another size");
        assert!(
            !baseline.holds_file("/d/a", 2, v1.mtime_ns + 1),
            "another mtime"
        );
        assert!(
            !baseline.holds_file("/d/b", 2, v1.mtime_ns),
            "nothing known there"
        );
        assert!(!baseline.holds_file("/d/dir", 2, v1.mtime_ns), "not a file");
        baseline.record("/d/a", None);
        assert!(!baseline.holds_file("/d/a", 2, v1.mtime_ns), "deleted");
    }

    #[test]
    fn a_hash_is_kept_only_with_the_version_known_and_while_it_stays() {
        let stamp = Stamp {
            dev: 1,
            ino: 7,
            size: 2,
            mtime_ns: 0,
            ctime_ns: 5,
        };
        let baseline = Baseline::new(scan_of(&[("/d/a", b"v1")]).entries);
        // The file holds something else than the version known: nothing is kept.
        baseline.hashed("/d/a", &stamp, Digest256::of(b"v2"));
        assert_eq!(baseline.hash_of("/d/a", &stamp), None);
        baseline.hashed("/d/b", &stamp, Digest256::of(b"v1"));
        assert_eq!(baseline.hash_of("/d/b", &stamp), None);
        baseline.hashed("/d/a", &stamp, Digest256::of(b"v1"));
        assert_eq!(baseline.hash_of("/d/a", &stamp), Some(Digest256::of(b"v1")));
        for other in [
            Stamp { ino: 8, ..stamp },
            Stamp {
                ctime_ns: 6,
                ..stamp
            },
            Stamp {
                mtime_ns: 1,
                ..stamp
            },
            Stamp { size: 3, ..stamp },
        ] {
            assert_eq!(baseline.hash_of("/d/a", &other), None, "{other:?}");
        }
        // The same version scanned again keeps it; any other version forgets it.
        assert!(baseline
            .take_changes(&scan_of(&[("/d/a", b"v1")]), &[], true)
            .is_empty());
        assert_eq!(baseline.hash_of("/d/a", &stamp), Some(Digest256::of(b"v1")));
        baseline.record("/d/a", Some(file_entry(b"v1")));
        assert_eq!(baseline.hash_of("/d/a", &stamp), None);
        baseline.hashed("/d/a", &stamp, Digest256::of(b"v1"));
        baseline.take_changes(&scan_of(&[("/d/a", b"v3")]), &[], true);
        assert_eq!(baseline.hash_of("/d/a", &stamp), None);
    }

    #[test]
    fn a_file_changed_in_place_or_replaced_never_shares_the_fingerprint_it_had() {
        let stamp = |ino: u64, ctime_ns: i64| Stamp {
            dev: 1,
            ino,
            size: 2,
            mtime_ns: 0,
            ctime_ns,
        };
        // Inodes and ctimes as they come: neighbours, and ctimes a clock tick apart.
        let inodes: Vec<u64> = (1..200).chain([1 << 32, (1 << 32) + 1, u64::MAX]).collect();
        let ctimes: Vec<i64> = (0..200)
            .map(|i| 1_700_000_000_000_000_000 + i * 4_000_000)
            .chain([0, 1, -1, i64::MAX])
            .collect();
        // No two of them share a fingerprint, even those that differ in both halves
        // (which a plain `ino ^ ctime` would not give: 1 at 2 and 2 at 1).
        let seen: std::collections::HashSet<u64> = inodes
            .iter()
            .flat_map(|&ino| ctimes.iter().map(move |&c| Found::of(&stamp(ino, c)).0))
            .collect();
        assert_eq!(seen.len(), inodes.len() * ctimes.len());
        // A stamp whose fingerprint is that of no file is never taken as found.
        let unlucky = stamp(mix(5), 5);
        assert!(Found::of(&unlucky) == Found::NONE);
        let baseline = Baseline::new(scan_of(&[("/d/a", b"v1")]).entries);
        baseline.hashed("/d/a", &unlucky, Digest256::of(b"v1"));
        assert_eq!(baseline.hash_of("/d/a", &unlucky), None);
    }

    #[test]
    fn a_touched_file_is_recorded_with_its_new_time_and_pushes_nothing() {
        let baseline = Baseline::new(scan_of(&[("/d/a", b"v1"), ("/d/b", b"v1")]).entries);
        let mut scan = scan_of(&[("/d/a", b"v1"), ("/d/b", b"v1")]);
        scan.entries.get_mut("/d/a").unwrap().mtime_ns = 42;
        assert!(baseline.take_changes(&scan, &[], true).is_empty());
        assert_eq!(baseline.get("/d/a").unwrap().mtime_ns, 42);
        assert_eq!(baseline.get("/d/b"), Some(file_entry(b"v1")));
    }

    #[test]
    fn a_received_write_is_not_pushed_back() {
        let baseline = Baseline::new(scan_of(&[("/d/a", b"v1")]).entries);
        baseline.record("/d/a", Some(file_entry(b"from a peer")));
        let ops = baseline.take_changes(&scan_of(&[("/d/a", b"from a peer")]), &[], true);
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn scope_limits_what_counts_as_deleted() {
        let baseline = Baseline::new(scan_of(&[("/d/a", b"1"), ("/d/b", b"2")]).entries);
        let ops = baseline.take_changes(&scan_of(&[]), &["/d/a".to_string()], true);
        assert_eq!(ops.len(), 1);
        assert_eq!(
            (ops[0].path.as_str(), ops[0].change()),
            ("/d/a", ChangeKind::Deleted)
        );
        assert_eq!(
            baseline.get("/d/b"),
            Some(file_entry(b"2")),
            "outside the scope, kept"
        );
    }

    #[test]
    fn a_directory_found_gone_is_deleted_with_everything_below_it() {
        let dir = Entry {
            content: crate::protocol::Content::Dir,
            ..file_entry(b"")
        };
        let mut baseline = scan_of(&[
            ("/d/top/f1", b"1"),
            ("/d/top/f2", b"2"),
            ("/d/top-x", b"x"),
            ("/d/topper", b"x"),
        ])
        .entries;
        baseline.insert("/d/top".into(), dir.clone());
        baseline.insert("/d/top/sub".into(), dir);
        baseline.insert("/d/top/sub/f3".into(), file_entry(b"3"));
        let baseline = Baseline::new(baseline);
        // The burst named one file; the whole tree is gone by the time of the scan.
        let ops = baseline.take_changes(
            &scan_of(&[("/d/top-x", b"x"), ("/d/topper", b"x")]),
            &["/d/top/f1".to_string()],
            true,
        );
        let mut deleted: Vec<&str> = ops.iter().map(|op| op.path.as_str()).collect();
        assert_eq!(deleted.last(), Some(&"/d/top"), "the directory goes last");
        deleted.sort();
        assert_eq!(
            deleted,
            [
                "/d/top",
                "/d/top/f1",
                "/d/top/f2",
                "/d/top/sub",
                "/d/top/sub/f3"
            ],
            "{ops:?}"
        );
        assert!(ops.iter().all(|op| op.action == Action::Delete));
        assert_eq!(baseline.get("/d/top/f2"), None);
        assert_eq!(baseline.get("/d/topper"), Some(file_entry(b"x")));
    }

    #[test]
    fn a_missing_or_unreadable_tree_is_never_pushed_as_deleted() {
        let baseline = Baseline::new(scan_of(&[("/d/a", b"1"), ("/e/b", b"2")]).entries);
        let mut scan = scan_of(&[]);
        scan.missing.push("/d".into());
        scan.unreadable
            .push(("/e".into(), "permission denied".into()));
        assert!(baseline.take_changes(&scan, &[], true).is_empty());
        assert_eq!(baseline.get("/d/a"), Some(file_entry(b"1")));
    }
}
