//! The files a receiver has just put in place, noted so that its own watcher can tell
//! the event of each (a name created or moved in) from a change made here: a batch of
//! 100,000 files otherwise makes as many events that the watcher takes through a burst
//! (spooled, gathered, looked at again and scanned), only to find each file holding the
//! version just recorded for it.
//!
//! A note holds the file's stamp as found right after it got its name; an event is
//! taken for that placing only while the file at its path still has that very stamp
//! (same inode, same ctime: any write, change of metadata, link or rename here since
//! moves the ctime), and once. Anything else is an event like any other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::Stamp;

/// Notes kept at most; past it they are all dropped (events then go through bursts, as
/// they would without notes). Notes whose event was taken before them are never asked
/// for, and stay until then or until the path is noted again.
const PLACED_NOTES_MAX: usize = 64 * 1024;

/// The files this process put in place and whose events were not taken yet.
#[derive(Default)]
pub struct Placed {
    notes: Mutex<HashMap<PathBuf, Stamp>>,
}

impl Placed {
    /// Notes that this process put the file `stamp` describes at `path` (local).
    pub fn note(&self, path: PathBuf, stamp: Stamp) {
        let mut notes = self.notes.lock().expect("placed lock");
        if notes.len() >= PLACED_NOTES_MAX {
            notes.clear();
        }
        notes.insert(path, stamp);
    }

    /// Whether a name created or moved in at `path` (local) is the placing of a file
    /// noted there, which is still there unchanged. The note is taken either way.
    pub fn take(&self, path: &Path) -> bool {
        let Some(noted) = self.notes.lock().expect("placed lock").remove(path) else {
            return false;
        };
        rustix::fs::lstat(path).is_ok_and(|st| Stamp::of_stat(&st) == noted)
    }

    pub fn len(&self) -> usize {
        self.notes.lock().expect("placed lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(path: &Path) -> Stamp {
        Stamp::of_stat(&rustix::fs::lstat(path).unwrap())
    }

    #[test]
    fn a_placing_is_taken_once_and_only_while_the_file_is_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let placed = Placed::default();
        let (a, b, c) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("c"),
        );
        for path in [&a, &b, &c] {
            std::fs::write(path, "received").unwrap();
            placed.note(path.clone(), stamp(path));
        }
        assert_eq!(placed.len(), 3);
        assert!(placed.take(&a), "the file put there, unchanged");
        assert!(!placed.take(&a), "taken once: a second event is a change");
        // Changed here since it was noted (its ctime moved), or replaced by another file.
        let noted = stamp(&b);
        placed.note(
            b.clone(),
            Stamp {
                ctime_ns: noted.ctime_ns - 1,
                ..noted
            },
        );
        std::fs::write(tmp.path().join("other"), "made here").unwrap();
        std::fs::rename(tmp.path().join("other"), &c).unwrap();
        assert!(!placed.take(&b), "changed since");
        assert!(!placed.take(&c), "another file");
        assert!(placed.is_empty(), "each note taken");
        assert!(!placed.take(&tmp.path().join("never")), "never noted");
    }
}
