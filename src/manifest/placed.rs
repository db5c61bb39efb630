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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::Stamp;

/// The files this process put in place and whose events were not taken yet: those of
/// the batch being placed, and of the one before (its last events may still be on their
/// way). A note whose event was read before it was made is never asked for: it goes
/// with its batch's turn, two batches later.
#[derive(Default)]
pub struct Placed {
    notes: Mutex<[HashMap<PathBuf, Stamp>; 2]>,
    /// Events taken as placings so far.
    taken: AtomicUsize,
}

impl Placed {
    /// A batch begins to put its files in place: the notes of the one before the last go.
    pub fn batch_begins(&self) {
        let mut notes = self.notes.lock().expect("placed lock");
        let [older, last] = &mut *notes;
        *older = std::mem::take(last);
    }

    /// Notes that this process put the file `stamp` describes at `path` (local).
    pub fn note(&self, path: PathBuf, stamp: Stamp) {
        self.notes.lock().expect("placed lock")[1].insert(path, stamp);
    }

    /// Whether a name created or moved in at `path` (local) is the placing of a file
    /// noted there, which is still there unchanged. The note is taken either way.
    pub fn take(&self, path: &Path) -> bool {
        let noted = {
            let mut notes = self.notes.lock().expect("placed lock");
            let [older, last] = &mut *notes;
            match last.remove(path) {
                Some(noted) => noted,
                None => match older.remove(path) {
                    Some(noted) => noted,
                    None => return false,
                },
            }
        };
        let placing = rustix::fs::lstat(path).is_ok_and(|st| Stamp::of_stat(&st) == noted);
        if placing {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        placing
    }

    /// How many events were taken as placings so far: how much a receiver wrote that
    /// the watcher did not have to look at.
    pub fn taken(&self) -> usize {
        self.taken.load(Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        let notes = self.notes.lock().expect("placed lock");
        notes[0].len() + notes[1].len()
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
        assert_eq!(placed.taken(), 1);
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

        // A note left (its event came first) lasts the next batch, not the one after.
        placed.note(a.clone(), stamp(&a));
        placed.batch_begins();
        placed.note(b.clone(), stamp(&b));
        assert_eq!(placed.len(), 2);
        placed.batch_begins();
        assert_eq!(placed.len(), 1, "the note of two batches ago went");
        assert!(placed.take(&b), "the last batch's note is still taken");
    }
}
