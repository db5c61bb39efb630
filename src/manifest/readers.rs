//! Reading the regular files a walk finds: on this thread while there is little to read,
//! on helper threads as well once there is enough to share. Hashing is most of what a
//! scan costs when no hash is kept (a command beside no daemon, a daemon starting): a
//! second core nearly halves it.
//!
//! The walker lists and `stat`s (where no hash is kept, a file the listing says is
//! regular is not `stat`ed: opening it tells); each file whose content must be read is
//! handed over with its directory's descriptor, so that it is opened below that
//! descriptor, never by path. The helpers live as long as the walk, and exit with it:
//! an idle daemon keeps no thread for this.

use std::any::Any;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{hash_below, HashCache};
use crate::paths::{file_name, LogicalPath};
use crate::protocol::Entry;
use tracing::debug;

/// A regular file to read: its logical path, whose last component is its name in
/// directory `dir`.
struct ToRead {
    dir: Arc<OwnedFd>,
    logical: LogicalPath,
}

/// A file read: its logical path, and its entry or why it could not be read.
pub(super) type Read = (LogicalPath, io::Result<Entry>);

/// What a helper sends back: a file read, or the panic that stopped it, to go on
/// unwinding in the walker's thread.
type Outcome = Result<Read, Box<dyn Any + Send>>;

/// Reads the files a walk hands over ([`Readers::read`]), and gives back what was read
/// ([`Readers::drain`]).
pub(super) struct Readers {
    cache: HashCache,
    way: Way,
    /// Files read on this thread and not given back yet.
    done: Vec<Read>,
}

/// How a walk's files are read.
enum Way {
    /// Held until there is enough to start helpers, with what reading them will cost
    /// (in bytes hashed); read here at the next drain otherwise.
    Gathering { held: Vec<ToRead>, work: u64 },
    /// Handed to helper threads.
    Shared(Helpers),
    /// Read here as they are handed over: no core to spare, or no thread to be had.
    Alone,
}

/// Helper threads, started once a walk has found enough to read.
struct Helpers {
    to_read: SyncSender<ToRead>,
    /// The helpers' end of `to_read`, shared; the walker takes from it too while it
    /// waits for them.
    queue: Arc<Mutex<Receiver<ToRead>>>,
    outcomes: Receiver<Outcome>,
    /// Files handed over and not given back yet.
    out: usize,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Readers for one walk, taking and keeping hashes in `cache`.
    pub(super) fn new(cache: &HashCache) -> Readers {
        Readers {
            cache: cache.clone(),
            way: Way::Gathering {
                held: Vec::new(),
                work: 0,
            },
            done: Vec::new(),
        }
    }

    /// Where the hashes of the files read are taken and kept.
    pub(super) fn cache(&self) -> &HashCache {
        &self.cache
    }

    /// Whether files handed over are still gathered to decide on helpers: their sizes
    /// count then, not later.
    pub(super) fn gathering(&self) -> bool {
        matches!(self.way, Way::Gathering { .. })
    }

    /// Hands over the regular file of directory `dir` at logical path `logical`, `size`
    /// bytes long, to be read.
    pub(super) fn read(&mut self, dir: &Arc<OwnedFd>, logical: LogicalPath, size: u64) {
        let file = ToRead {
            dir: dir.clone(),
            logical,
        };
        match &mut self.way {
            Way::Gathering { held, work } => {
                held.push(file);
                *work += size + PER_FILE_WORK;
                if *work < WORK_TO_SHARE && held.len() >= QUEUED_FILES_MAX {
                    // Many small files: read here, rather than hold their directories
                    // open, while the work counts on towards helpers.
                    for file in std::mem::take(held) {
                        self.done.push(read(&self.cache, file));
                    }
                } else if *work >= WORK_TO_SHARE {
                    let held = std::mem::take(held);
                    self.way = match Helpers::start(&self.cache) {
                        Some(helpers) => Way::Shared(helpers),
                        None => Way::Alone,
                    };
                    for file in held {
                        self.hand(file);
                    }
                }
            }
            _ => self.hand(file),
        }
    }

    /// Hands `file` to a helper, or reads it here when they are all behind or there
    /// are none.
    fn hand(&mut self, file: ToRead) {
        let file = match &mut self.way {
            Way::Shared(helpers) => match helpers.to_read.try_send(file) {
                Ok(()) => {
                    helpers.out += 1;
                    return;
                }
                Err(TrySendError::Full(file) | TrySendError::Disconnected(file)) => file,
            },
            _ => file,
        };
        self.done.push(read(&self.cache, file));
    }

    /// The files read since the last call, without waiting for the others: a walk
    /// takes them as it goes, so that they are not all held twice at its end.
    pub(super) fn ready(&mut self) -> Vec<Read> {
        let mut done = std::mem::take(&mut self.done);
        if let Way::Shared(helpers) = &mut self.way {
            while let Ok(outcome) = helpers.outcomes.try_recv() {
                done.push(helpers.took(outcome));
            }
        }
        done
    }

    /// Every file handed over and not given back yet, read, in no particular order.
    pub(super) fn drain(&mut self) -> Vec<Read> {
        if let Way::Gathering { held, work } = &mut self.way {
            *work = 0;
            for file in std::mem::take(held) {
                self.done.push(read(&self.cache, file));
            }
        }
        let mut done = std::mem::take(&mut self.done);
        let Way::Shared(helpers) = &mut self.way else {
            return done;
        };
        // Take a share of what waits until the helpers hold the rest. The queue's lock is
        // tried, never waited for: a helper waiting for the next file holds it. While
        // it is busy, what comes back is taken, and the queue tried again.
        while helpers.out > 0 {
            let next = helpers.queue.try_lock().map(|queue| queue.try_recv()).ok();
            match next {
                Some(Ok(file)) => {
                    helpers.out -= 1;
                    done.push(read(&self.cache, file));
                }
                Some(Err(_)) => break,
                None => {
                    if let Ok(outcome) = helpers.outcomes.recv_timeout(QUEUE_RETRY) {
                        done.push(helpers.took(outcome));
                    }
                }
            }
        }
        while helpers.out > 0 {
            let outcome = helpers
                .outcomes
                .recv()
                .expect("a helper stays while files are out");
            done.push(helpers.took(outcome));
        }
        done
    }
}

impl Helpers {
    /// Starts one helper per core beyond this one ([`helper_count`]), as long as the
    /// process runs fewer than [`MAX_RUNNING`]; `None` with no core to spare, none left
    /// to this walk, or when the system gives no thread.
    fn start(cache: &HashCache) -> Option<Helpers> {
        let (to_read, queue) = mpsc::sync_channel(QUEUED_FILES_MAX);
        let queue = Arc::new(Mutex::new(queue));
        let (outcomes_to, outcomes) = mpsc::channel();
        let threads: Vec<_> = (0..helper_count())
            .map_while(|_| {
                if RUNNING.fetch_add(1, Ordering::SeqCst) >= MAX_RUNNING {
                    RUNNING.fetch_sub(1, Ordering::SeqCst);
                    return None;
                }
                let (queue, outcomes_to) = (queue.clone(), outcomes_to.clone());
                let cache = cache.clone();
                let started = std::thread::Builder::new()
                    .name("gosyncd-read".into())
                    .spawn(move || help(&queue, &outcomes_to, &cache));
                started
                    .inspect_err(|e| {
                        RUNNING.fetch_sub(1, Ordering::SeqCst);
                        debug!(error = %e, "cannot start a thread to read files")
                    })
                    .ok()
            })
            .collect();
        (!threads.is_empty()).then_some(Helpers {
            to_read,
            queue,
            outcomes,
            out: 0,
            threads,
        })
    }

    /// The file a helper gave back, no longer out; a helper's panic goes on unwinding
    /// here.
    fn took(&mut self, outcome: Outcome) -> Read {
        self.out -= 1;
        outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        let Way::Shared(helpers) = std::mem::replace(&mut self.way, Way::Alone) else {
            return;
        };
        // Closing the queue ends each helper once it is empty, and closing the way back
        // at its next file (after a panic here, what is still queued is not read).
        drop(helpers.to_read);
        drop(helpers.queue);
        drop(helpers.outcomes);
        for thread in helpers.threads {
            let _ = thread.join();
            RUNNING.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A helper's life: read what the queue holds until it is closed.
fn help(queue: &Mutex<Receiver<ToRead>>, outcomes: &mpsc::Sender<Outcome>, cache: &HashCache) {
    loop {
        let next = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(file) = next else {
            return;
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(cache, file)));
        if outcomes.send(outcome).is_err() {
            return;
        }
    }
}

fn read(cache: &HashCache, file: ToRead) -> Read {
    let entry = hash_below(&file.dir, file_name(&file.logical), &file.logical, cache);
    (file.logical, entry)
}

/// Helper threads a walk may start: one per core beyond the walker's, at most
/// [`MAX_HELPERS`].
fn helper_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |cores| cores.get())
            .saturating_sub(1)
            .min(MAX_HELPERS)
    })
}

/// More helpers than this would wait on the disk rather than hash.
const MAX_HELPERS: usize = 3;

/// Helper threads running in the process, all walks together (a daemon answering
/// several peers at once): at most [`MAX_RUNNING`]. A walk that finds none left reads
/// its files itself.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
const MAX_RUNNING: usize = 8;

/// Files handed over and not yet taken by a helper, at most, and files held before
/// helpers start: each holds its directory open, and a walker that finds the queue full
/// reads the file itself.
const QUEUED_FILES_MAX: usize = 16;

/// How long the walker waits for a file to come back before it tries the queue again.
const QUEUE_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

/// What opening, reading and closing a file costs beside its bytes, counted as bytes
/// hashed (a few microseconds of system calls).
const PER_FILE_WORK: u64 = 8 * 1024;

/// Work to read, in bytes hashed, that is worth starting helpers for (each costs tens
/// of microseconds to start).
const WORK_TO_SHARE: u64 = 256 * 1024;

#[cfg(test)]
impl Readers {
    /// Whether helper threads read the files handed over.
    fn shared(&self) -> bool {
        matches!(self.way, Way::Shared(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Content, Digest256};
    use sha2::{Digest, Sha256};

    /// Files `/etc/app/f000` ... of `count` distinct contents of `size` bytes each, in
    /// `app`, as (logical path, content).
    fn files(app: &std::path::Path, count: usize, size: usize) -> Vec<(String, Vec<u8>)> {
        std::fs::create_dir_all(app).unwrap();
        (0..count)
            .map(|i| {
                let name = format!("f{i:03}");
                let content: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
                std::fs::write(app.join(&name), &content).unwrap();
                (format!("/etc/app/{name}"), content)
            })
            .collect()
    }

    fn read_back(read: Vec<Read>) -> std::collections::BTreeMap<LogicalPath, io::Result<Entry>> {
        let count = read.len();
        let back: std::collections::BTreeMap<_, _> = read.into_iter().collect();
        assert_eq!(back.len(), count, "a file came back twice");
        back
    }

    #[test]
    fn files_handed_over_are_read_by_helpers_once_there_is_enough_each_coming_back_once() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        let written = files(&app, 120, 8 * 1024);
        let dir = Arc::new(crate::tree::open_dir(&app).unwrap());
        let mut readers = Readers::new(&HashCache::default());
        // A little is read here: no thread is started for it.
        readers.read(&dir, written[0].0.as_str().into(), 8 * 1024);
        assert!(!readers.shared());
        let first = read_back(readers.drain());
        assert_eq!(first.keys().collect::<Vec<_>>(), [&written[0].0]);
        for (logical, _) in &written[1..] {
            readers.read(&dir, logical.as_str().into(), 8 * 1024);
        }
        // 119 files of 8 KiB are worth sharing wherever there is a core to spare.
        assert_eq!(readers.shared(), helper_count() > 0);
        let mut read = readers.ready();
        read.extend(readers.drain());
        let back = read_back(read);
        assert_eq!(back.len(), written.len() - 1);
        for (logical, content) in &written[1..] {
            let entry = back[logical.as_str()].as_ref().unwrap();
            let expected = Content::File {
                size: content.len() as u64,
                sha256: Digest256(Sha256::digest(content).into()),
            };
            assert_eq!(entry.content, expected, "{logical}");
        }
        assert!(readers.drain().is_empty());
    }

    #[test]
    fn a_file_that_cannot_be_read_comes_back_as_an_error_naming_it_and_the_others_are_read() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        let written = files(&app, 60, 16 * 1024);
        // A FIFO where a regular file was seen, and a name that is gone.
        crate::testing::make_fifo(&app.join("fifo"));
        let dir = Arc::new(crate::tree::open_dir(&app).unwrap());
        let mut readers = Readers::new(&HashCache::default());
        for (logical, _) in &written[..30] {
            readers.read(&dir, logical.as_str().into(), 16 * 1024);
        }
        readers.read(&dir, "/etc/app/fifo".into(), 16 * 1024);
        readers.read(&dir, "/etc/app/gone".into(), 16 * 1024);
        for (logical, _) in &written[30..] {
            readers.read(&dir, logical.as_str().into(), 16 * 1024);
        }
        assert_eq!(readers.shared(), helper_count() > 0);
        let back = read_back(readers.drain());
        assert_eq!(back.len(), written.len() + 2);
        let fifo = back["/etc/app/fifo"].as_ref().unwrap_err().to_string();
        assert!(fifo.contains("fifo is no longer a regular file"), "{fifo}");
        let gone = back["/etc/app/gone"].as_ref().unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        for (logical, _) in &written {
            assert!(back[logical.as_str()].is_ok(), "{logical}");
        }
    }
}
