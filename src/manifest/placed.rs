//! The files a receiver has just put in place, noted so that its own watcher can tell
//! the event of each (a name created or moved in) from a change made here: a batch of
//! 100,000 files otherwise makes as many events that the watcher takes through a burst
//! (spooled, gathered, looked at again and scanned), only to find each file holding the
//! version just recorded for it.
//!
//! A file is noted right before it is given its name: the first name created or moved
//! in at its path after that is its own, whose event cannot come before the note. A
//! placing that fails takes its note back; if an event took it already, it was another
//! process's, and the watcher is told to look at the path (see [`Placed::on_missed`]).
//! A note whose event never comes (the file was put in a directory not watched yet)
//! goes when the watcher lists that directory ([`Placed::forget_below`]) or loses
//! events ([`Placed::forget_all`]), with its batch's turn, and is never taken after
//! [`NOTE_LIFETIME`].
//!
//! A directory is noted once made, with its stamp (see [`Placed::making`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::Stamp;

/// The files and directories this process put in place and whose events were not taken
/// yet: those of the batch being placed, and of the one before (its last events may
/// still be on their way). A note left goes with its batch's turn, two batches later,
/// and is not taken after [`NOTE_LIFETIME`].
#[derive(Default)]
pub struct Placed {
    /// A file being placed (`None`), or a directory made, as it was made.
    notes: Mutex<[HashMap<PathBuf, Note>; 2]>,
    /// Tells the watcher of a path whose creation by another process was taken for a
    /// placing of this one.
    missed: std::sync::OnceLock<Box<dyn Fn(PathBuf) + Send + Sync>>,
    /// Events taken as placings so far.
    taken: AtomicUsize,
    /// Directories being made, and the parents they are made in (see
    /// [`Placed::making`]); `making_done` wakes whoever waits for one.
    making: Mutex<HashSet<PathBuf>>,
    making_done: Condvar,
}

/// What is noted of a path: a file being placed (`None`), or a directory made, as it was
/// made; and when.
#[derive(Clone, Copy, PartialEq, Debug)]
struct Note {
    made: Option<Stamp>,
    at: Instant,
}

impl Note {
    fn new(made: Option<Stamp>) -> Note {
        Note {
            made,
            at: Instant::now(),
        }
    }

    /// Whether it may still be taken: a note whose event did not come within
    /// [`NOTE_LIFETIME`] may stand for an event that never comes, and is not.
    fn current(&self) -> bool {
        self.at.elapsed() < NOTE_LIFETIME
    }
}

/// How long a note may wait for its event: far longer than a watcher takes to read an
/// event, even behind an initial sync's, and short enough that a note left (its event
/// lost) cannot take another process's event at that path a while later.
const NOTE_LIFETIME: Duration = Duration::from_secs(10);

/// How long the watcher waits for a directory being made to be noted: the few system
/// calls between its creation and its note, unless the receiving thread is held off the
/// processor; past it, the directory is looked at as any other.
const MAKING_WAIT: Duration = Duration::from_millis(50);

/// A directory being made by this process (see [`Placed::making`]).
pub struct Making<'a> {
    placed: &'a Placed,
    dir: PathBuf,
    parent: PathBuf,
}

impl Making<'_> {
    /// The directory was made, as `made` describes, and its parent is now `parent`.
    pub fn made(self, made: Stamp, parent: Stamp) {
        self.placed.refresh(&self.parent, parent);
        self.placed.note(self.dir.clone(), made);
    }
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        let mut making = self.placed.making.lock().expect("making lock");
        making.remove(&self.dir);
        making.remove(&self.parent);
        self.placed.making_done.notify_all();
    }
}

impl Placed {
    /// A batch begins to put its files in place: the notes of the one before the last go.
    pub fn batch_begins(&self) {
        let mut notes = self.notes.lock().expect("placed lock");
        let [older, last] = &mut *notes;
        *older = std::mem::take(last);
    }

    /// Sets how the watcher is told of a path to look at (see [`Placed::unplace`]).
    pub fn on_missed(&self, tell: impl Fn(PathBuf) + Send + Sync + 'static) {
        let _ = self.missed.set(Box::new(tell));
    }

    /// This process is about to give a file the name `path` (local).
    pub fn placing(&self, path: PathBuf) {
        self.notes.lock().expect("placed lock")[1].insert(path, Note::new(None));
    }

    /// The file noted at `path` did not get its name. If an event took the note
    /// meanwhile, the name created there was another process's: the watcher is told.
    pub fn unplace(&self, path: &Path) {
        if self.remove(path).is_none() {
            if let Some(tell) = self.missed.get() {
                tell(path.to_path_buf());
            }
        }
    }

    /// Notes that this process made the directory `stamp` describes at `path` (local).
    fn note(&self, path: PathBuf, stamp: Stamp) {
        self.notes.lock().expect("placed lock")[1].insert(path, Note::new(Some(stamp)));
    }

    /// Whether a name created or moved in at `path` (local) is the placing of a file
    /// noted there. The note is taken either way.
    pub fn take(&self, path: &Path) -> bool {
        let noted = self.remove(path);
        let placing = noted.is_some_and(|note| note.made.is_none() && note.current());
        if placing {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        placing
    }

    /// Forgets every note (the watcher lost events: everything is compared again).
    pub fn forget_all(&self) {
        let mut notes = self.notes.lock().expect("placed lock");
        for map in notes.iter_mut() {
            map.clear();
        }
    }

    /// The watcher listed directory `dir` (local) as it began to watch it: the names put
    /// in it before made no event, and never will.
    pub fn forget_below(&self, dir: &Path) {
        let mut notes = self.notes.lock().expect("placed lock");
        for map in notes.iter_mut() {
            if !map.is_empty() {
                map.retain(|path, _| !path.starts_with(dir) || path == dir);
            }
        }
    }

    /// This process is about to make directory `dir` (local): until the returned guard
    /// is told it was [`made`](Making::made) or dropped, the watcher asking whether `dir`
    /// or its parent was made here waits for the answer (its creation is an event the
    /// watcher may read before the directory is noted).
    pub fn making(&self, dir: PathBuf) -> Making<'_> {
        let parent = dir.parent().unwrap_or(&dir).to_path_buf();
        let mut making = self.making.lock().expect("making lock");
        making.insert(dir.clone());
        making.insert(parent.clone());
        Making {
            placed: self,
            dir,
            parent,
        }
    }

    /// Waits, for at most [`MAKING_WAIT`], while directory `path` is being made.
    fn wait_made(&self, path: &Path) {
        let deadline = Instant::now() + MAKING_WAIT;
        let mut making = self.making.lock().expect("making lock");
        while making.contains(path) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            making = self
                .making_done
                .wait_timeout(making, left)
                .expect("making lock")
                .0;
        }
    }

    /// Notes that the directory noted at `path` (local), if it still is, is now what
    /// `stamp` describes: this process made a directory in it.
    pub fn refresh(&self, path: &Path, stamp: Stamp) {
        let mut notes = self.notes.lock().expect("placed lock");
        if let Some(note) = notes.iter_mut().rev().find_map(|n| n.get_mut(path)) {
            if note.made.is_some() {
                note.made = Some(stamp);
            }
        }
    }

    /// Whether a directory found at `path` (local) with `stamp` once watched, holding
    /// only directories (`None`: holding other things, or not listed), is one noted
    /// there by this process, unchanged since (same inode, same times). The note is
    /// taken either way.
    pub fn take_made(&self, path: &Path, stamp: Option<&Stamp>) -> bool {
        self.wait_made(path);
        let noted = self
            .remove(path)
            .filter(Note::current)
            .and_then(|note| note.made);
        let made = noted.is_some() && stamp == noted.as_ref();
        if made {
            self.taken.fetch_add(1, Ordering::Relaxed);
        }
        made
    }

    /// Takes the note at `path`, the last batch's or the one before's.
    fn remove(&self, path: &Path) -> Option<Note> {
        let mut notes = self.notes.lock().expect("placed lock");
        let [older, last] = &mut *notes;
        last.remove(path).or_else(|| older.remove(path))
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
    fn a_placing_is_taken_once_and_one_that_failed_after_another_took_it_is_told() {
        let placed = Placed::default();
        let told = std::sync::Arc::new(Mutex::new(Vec::new()));
        {
            let told = told.clone();
            placed.on_missed(move |path| told.lock().unwrap().push(path));
        }
        let (a, b, c) = (Path::new("/r/a"), Path::new("/r/b"), Path::new("/r/c"));
        for path in [a, b, c] {
            placed.placing(path.to_path_buf());
        }
        assert_eq!(placed.len(), 3);
        assert!(placed.take(a), "the first name created there");
        assert!(!placed.take(a), "taken once: a second event is a change");
        assert_eq!(placed.taken(), 1);
        // Failed with nobody's event read: nothing to tell.
        placed.unplace(b);
        assert!(!placed.take(b));
        // Another process created the name first (the placing then failed): the event
        // taken was not this process's, and the watcher is told to look at the path.
        assert!(placed.take(c));
        placed.unplace(c);
        assert_eq!(*told.lock().unwrap(), [c.to_path_buf()]);
        assert!(placed.is_empty(), "each note taken");
        assert!(!placed.take(Path::new("/r/never")), "never noted");

        // Put where no event is made (a directory listed as it began to be watched).
        placed.placing(PathBuf::from("/r/d/x"));
        placed.placing(PathBuf::from("/r/d-other/x"));
        placed.forget_below(Path::new("/r/d"));
        assert!(!placed.take(Path::new("/r/d/x")));
        assert!(placed.take(Path::new("/r/d-other/x")));

        // A note left lasts the next batch, not the one after.
        placed.placing(a.to_path_buf());
        placed.batch_begins();
        placed.placing(b.to_path_buf());
        assert_eq!(placed.len(), 2);
        placed.batch_begins();
        assert_eq!(placed.len(), 1, "the note of two batches ago went");
        assert!(placed.take(b), "the last batch's note is still taken");
    }

    #[test]
    fn the_watcher_waits_for_a_directory_being_made_to_be_noted() {
        let tmp = tempfile::tempdir().unwrap();
        let placed = std::sync::Arc::new(Placed::default());
        let dir = tmp.path().join("d");
        let making = placed.making(dir.clone());
        std::fs::create_dir(&dir).unwrap();
        let asked = {
            let (placed, dir) = (placed.clone(), dir.clone());
            std::thread::spawn(move || {
                let found = stamp(&dir);
                placed.take_made(&dir, Some(&found))
            })
        };
        // Noted after the watcher asked: it waited for the note.
        std::thread::sleep(Duration::from_millis(2));
        making.made(stamp(&dir), stamp(tmp.path()));
        assert!(asked.join().unwrap());

        // Given up on: not made here, and not waited for long.
        let other = tmp.path().join("other");
        let making = placed.making(other.clone());
        std::fs::create_dir(&other).unwrap();
        drop(making);
        let started = Instant::now();
        assert!(!placed.take_made(&other, Some(&stamp(&other))));
        assert!(started.elapsed() < MAKING_WAIT);
    }
}
