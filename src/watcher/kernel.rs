//! The kernel's watch on the configured directories: inotify, read by a thread of its
//! own, which turns each event into a [`Change`] and hands them to the [`Queue`].
//!
//! A general watching library was used before; three things a receiving daemon needs
//! are out of its reach:
//! - which events are asked for: not opens (the daemon opens every file it scans or
//!   sends), and `IN_EXCL_UNLINK`, so that the anonymous file a receiver writes each
//!   content into makes no event for its writes and its close (a file received makes
//!   two events instead of five);
//! - when a directory created in a watched one is watched: here before the next event
//!   is read, so that what it holds once watched is all that happened in it unseen;
//! - a directory this node's receiver made, holding nothing but directories it made
//!   once watched, is no change at all: nothing to gather, scan or compare (see
//!   [`Queue::made_here`]).
//!
//! It watches directories only, recursively, each opened from its parent's descriptor
//! and watched through it, never through a symbolic link; it does not read files, scan
//! or compare.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fd::OwnedFd;
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;
use tracing::warn;

use super::queue::{Change, ChangeKind, Queue};
use crate::manifest::Stamp;
use crate::tree::open_subdir;

/// What every directory is watched for: names created, deleted, moved in or out,
/// files written, closed after writing, and metadata; the watched directory's own
/// deletion or move (which matters for a configured directory only). Nothing about a
/// file once it has no name (`IN_EXCL_UNLINK`). A directory is watched through the
/// descriptor it was opened by (`/proc/self/fd/N`, which the kernel follows to it), so
/// not `IN_DONT_FOLLOW`: it was opened without following a link.
fn mask() -> WatchFlags {
    WatchFlags::CREATE
        | WatchFlags::DELETE
        | WatchFlags::MODIFY
        | WatchFlags::ATTRIB
        | WatchFlags::CLOSE_WRITE
        | WatchFlags::MOVED_FROM
        | WatchFlags::MOVED_TO
        | WatchFlags::DELETE_SELF
        | WatchFlags::MOVE_SELF
        | WatchFlags::ONLYDIR
        | WatchFlags::EXCL_UNLINK
}

/// Bytes read from the kernel at once: about 2,000 events of short names.
const READ_BUFFER: usize = 64 * 1024;

/// A running watch; dropping it stops the thread and every watch.
pub struct Watch {
    shared: Arc<Shared>,
    /// Written to stop the reading thread.
    wake: Arc<OwnedFd>,
    reader: Option<JoinHandle<()>>,
}

struct Shared {
    fd: OwnedFd,
    dirs: Mutex<Dirs>,
}

/// The watched directories, by watch descriptor and by path.
#[derive(Default)]
struct Dirs {
    by_wd: HashMap<i32, PathBuf>,
    /// Sorted: a directory's subdirectories follow it.
    by_path: BTreeMap<PathBuf, i32>,
    /// The trees watched as such (configured directories): their own deletion, move
    /// or change of metadata is reported, nobody else's being.
    tops: Vec<PathBuf>,
}

impl Watch {
    /// Starts the reading thread, watching nothing yet; its changes go to `queue`.
    pub fn start(queue: Queue) -> io::Result<Watch> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?;
        let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let shared = Arc::new(Shared {
            fd,
            dirs: Mutex::default(),
        });
        let reader = {
            let (shared, wake) = (shared.clone(), wake.clone());
            std::thread::Builder::new()
                .name("gosyncd-watch".into())
                .spawn(move || read_events(&shared, &wake, &queue))?
        };
        Ok(Watch {
            shared,
            wake,
            reader: Some(reader),
        })
    }

    /// Watches `top` and every directory below it. A subdirectory that cannot be
    /// watched (not readable by this user) is skipped with a warning, the rest is
    /// watched; only running out of watches, or `top` itself failing, is an error.
    pub fn watch_tree(&self, top: &Path) -> io::Result<()> {
        let mut dirs = self.shared.dirs.lock().expect("watch lock");
        if !dirs.tops.iter().any(|t| t == top) {
            dirs.tops.push(top.to_path_buf());
        }
        match dirs.add_tree(&self.shared.fd, top, &mut |_, _| false) {
            Ok(Some(_)) => Ok(()),
            failed => {
                dirs.tops.retain(|t| t != top);
                failed?;
                Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} cannot be watched", top.display()),
                ))
            }
        }
    }

    /// Stops watching `top` and everything below it.
    pub fn unwatch(&self, top: &Path) {
        let mut dirs = self.shared.dirs.lock().expect("watch lock");
        dirs.remove_below(&self.shared.fd, top);
        dirs.tops.retain(|t| t != top);
    }

    /// How many directories are watched.
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.shared.dirs.lock().expect("watch lock").by_wd.len()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Dirs {
    /// Watches `dir`, then each directory found below it, never through a link: a
    /// directory listed after its watch began holds everything made in it unseen.
    /// Whether the tree was made by this node's receiver, untouched since, once watched
    /// (each directory holding only directories, and `made` by it as found: see
    /// [`Queue::made_here`], asked of every directory); `None` when `dir` could not be
    /// watched (gone, replaced by a file or a link, not readable: warned). Only running
    /// out of watches is an error.
    fn add_tree(
        &mut self,
        fd: &OwnedFd,
        dir: &Path,
        made: &mut dyn FnMut(&Path, Option<&Stamp>) -> bool,
    ) -> io::Result<Option<bool>> {
        let first = match self.open_confined(dir) {
            Ok(first) => first,
            Err(e) => {
                warn_denied(dir, e);
                return Ok(None);
            }
        };
        let mut clean = true;
        // Each directory is opened from its parent's descriptor, never through a link,
        // watched and listed through that descriptor: a link planted anywhere on its
        // path is never followed, however the tree changes meanwhile.
        let mut stack = vec![Walked::Opened(first, dir.to_path_buf())];
        while let Some(next) = stack.pop() {
            let (opened, path) = match next {
                Walked::Opened(opened, path) => (opened, path),
                Walked::Below(parent, name, path) => match open_subdir(&*parent, &name) {
                    Ok(opened) => (opened, path),
                    Err(e) => {
                        warn_denied(&path, e);
                        clean = false;
                        continue;
                    }
                },
            };
            match self.add(fd, &opened, &path) {
                Ok(()) => {}
                Err(e) if e == Errno::NOSPC => return Err(e.into()),
                Err(e) => {
                    warn_denied(&path, e);
                    clean = false;
                    continue;
                }
            }
            let opened = Arc::new(opened);
            let as_made = match list_dirs(&opened, &path, &mut stack) {
                Ok((stamp, true)) => made(&path, Some(&stamp)),
                Ok((_, false)) | Err(_) => made(&path, None),
            };
            clean &= as_made;
        }
        Ok(Some(clean))
    }

    /// Opens directory `path`, below one of the configured directories watched, from
    /// that directory's descriptor, never through a link.
    fn open_confined(&self, path: &Path) -> Result<OwnedFd, Errno> {
        let top = self
            .tops
            .iter()
            .filter(|top| path.starts_with(top))
            .max_by_key(|top| top.as_os_str().len())
            .ok_or(Errno::NOENT)?;
        let mut opened = crate::tree::open_dir(top)?;
        let below = path.strip_prefix(top).map_err(|_| Errno::NOENT)?;
        for component in below.components() {
            opened = open_subdir(&opened, component.as_os_str())?;
        }
        Ok(opened)
    }

    /// Watches the directory `opened` (at `path`) through its descriptor.
    fn add(&mut self, fd: &OwnedFd, opened: &OwnedFd, path: &Path) -> Result<(), Errno> {
        use std::os::fd::AsRawFd;
        let by_descriptor = format!("/proc/self/fd/{}", opened.as_raw_fd());
        let wd = inotify::add_watch(fd, by_descriptor.as_str(), mask())?;
        // The same directory known under another path (moved, renamed over): the new
        // path is the one, and events already waiting for it are told under it.
        if let Some(old) = self.by_wd.insert(wd, path.to_path_buf()) {
            if old != path && self.by_path.get(&old) == Some(&wd) {
                self.by_path.remove(&old);
            }
        }
        self.by_path.insert(path.to_path_buf(), wd);
        Ok(())
    }

    /// Stops watching `path` and every directory below it.
    fn remove_below(&mut self, fd: &OwnedFd, path: &Path) {
        let below: Vec<(PathBuf, i32)> = self
            .by_path
            .range(path.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(path))
            .map(|(p, wd)| (p.clone(), *wd))
            .collect();
        for (p, wd) in below {
            self.by_path.remove(&p);
            self.by_wd.remove(&wd);
            let _ = inotify::remove_watch(fd, wd);
        }
    }

    /// The kernel dropped watch `wd` (its directory was deleted, or it was removed).
    fn forget(&mut self, wd: i32) {
        if let Some(path) = self.by_wd.remove(&wd) {
            if self.by_path.get(&path) == Some(&wd) {
                self.by_path.remove(&path);
            }
        }
    }
}

/// A directory to watch in a walk: opened, or to open from its parent.
enum Walked {
    Opened(OwnedFd, PathBuf),
    Below(Arc<OwnedFd>, std::ffi::OsString, PathBuf),
}

/// Warns of a directory that cannot be watched for want of permission; one that is gone
/// or no longer a directory says so by its own events.
fn warn_denied(path: &Path, e: Errno) {
    if e == Errno::ACCESS || e == Errno::PERM {
        warn!(directory = %path.display(), "cannot watch: {e}: its changes are found by the next sync or comparison");
    }
}

/// Lists directory `opened` (at `path`), pushing its subdirectories (never a link) onto
/// `stack`; returns its stamp, and whether it holds nothing but directories.
fn list_dirs(
    opened: &Arc<OwnedFd>,
    path: &Path,
    stack: &mut Vec<Walked>,
) -> io::Result<(Stamp, bool)> {
    let stat = rustix::fs::fstat(&**opened)?;
    let mut only_dirs = true;
    for entry in rustix::fs::Dir::read_from(&**opened)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            FileType::Directory => true,
            FileType::Unknown => {
                rustix::fs::statat(&**opened, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            }
            _ => false,
        };
        only_dirs &= is_dir;
        if is_dir {
            let name = OsStr::from_bytes(name);
            stack.push(Walked::Below(
                opened.clone(),
                name.to_os_string(),
                path.join(name),
            ));
        }
    }
    Ok((Stamp::of_stat(&stat), only_dirs))
}

/// The reading thread: waits for events (or to be stopped), reads every event
/// waiting, and hands the queue their changes once per read.
fn read_events(shared: &Shared, wake: &OwnedFd, queue: &Queue) {
    let mut buffer = vec![MaybeUninit::<u8>::uninit(); READ_BUFFER];
    let mut reading = Reading {
        shared,
        queue,
        changes: Vec::new(),
        lost: None,
        moved_away: None,
        overflowed: false,
    };
    loop {
        let mut fds = [
            PollFd::new(&shared.fd, PollFlags::IN),
            PollFd::new(wake, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => {
                queue.lost(&format!("cannot wait for filesystem events: {e}"));
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        let mut reader = inotify::Reader::new(&shared.fd, &mut buffer);
        let mut read = 0;
        loop {
            match reader.next() {
                Ok(event) => {
                    read += 1;
                    reading.event(&event)
                }
                Err(Errno::AGAIN) => break,
                Err(Errno::INTR) => continue,
                Err(e) => {
                    reading.lost = Some(format!("cannot read filesystem events: {e}"));
                    break;
                }
            }
            if reader.is_buffer_empty() {
                reading.hand_over();
            }
        }
        // Both halves of a rename are queued by the rename itself: a directory whose
        // other half is not there moved out of the watched trees.
        reading.moved_out();
        reading.walk_again();
        reading.hand_over();
        // Events coming in a stream (a peer's batch placing thousands of files): let more
        // of them gather before the next read, rather than wake for a few at a time. A
        // save's few events are read at once.
        if read >= STREAM_EVENTS {
            std::thread::sleep(STREAM_GATHER);
        }
    }
}

/// Events read at once from which more are taken to be coming in a stream.
const STREAM_EVENTS: usize = 64;
/// How long the reading thread lets a stream's events gather between two reads: a
/// batch places a few hundred files a millisecond, far below what the kernel's queue
/// holds (`fs.inotify.max_queued_events`, 16,384 by default).
const STREAM_GATHER: std::time::Duration = std::time::Duration::from_millis(2);

/// What the reading thread holds between events.
struct Reading<'a> {
    shared: &'a Shared,
    queue: &'a Queue,
    changes: Vec<Change>,
    /// Why events were lost since the last hand-over, if they were.
    lost: Option<String>,
    /// A watched directory renamed away (the rename's cookie, its path), until the
    /// other half tells where to.
    moved_away: Option<(u32, PathBuf)>,
    /// The kernel dropped events since the trees were last walked again.
    overflowed: bool,
}

impl Reading<'_> {
    fn event(&mut self, event: &inotify::Event<'_>) {
        let mask = event.events();
        if mask.contains(ReadFlags::QUEUE_OVERFLOW) {
            self.lost = Some("the kernel's event queue overflowed".into());
            self.overflowed = true;
            return;
        }
        let fd = &self.shared.fd;
        let mut dirs = self.shared.dirs.lock().expect("watch lock");
        if mask.contains(ReadFlags::IGNORED) {
            dirs.forget(event.wd());
            return;
        }
        let Some(dir) = dirs.by_wd.get(&event.wd()) else {
            return;
        };
        let Some(name) = event.file_name() else {
            // The watched directory itself: reported by its parent's watch, but for a
            // configured directory, whose parent is not watched.
            if dirs.tops.iter().any(|t| t == dir) {
                if let Some(kind) = own_kind(mask) {
                    let path = dir.clone();
                    self.changes.push(Change { path, kind });
                }
            }
            return;
        };
        let path = dir.join(OsStr::from_bytes(name.to_bytes()));
        let Some(kind) = kind_of(mask, event.cookie()) else {
            return;
        };
        // The other half of a directory renamed away, or it moved out.
        let is_dir = mask.contains(ReadFlags::ISDIR);
        match self.moved_away.take() {
            Some((cookie, _)) if is_dir && kind == ChangeKind::MovedTo(cookie) => {}
            Some((_, from)) => dirs.remove_below(fd, &from),
            None => {}
        }
        match kind {
            ChangeKind::MovedFrom(cookie) if is_dir => {
                self.moved_away = Some((cookie, path.clone()));
            }
            // A directory made or moved in (from elsewhere in the trees or outside them):
            // walked from where it is now. A directory already watched keeps its watch,
            // under this path, with the events already waiting for it; those made in it
            // before it was watched are watched now.
            ChangeKind::MovedTo(_) | ChangeKind::CreatedDirectory if is_dir => {
                let queue = self.queue;
                let created = kind == ChangeKind::CreatedDirectory;
                // Made here: the receiver's own directories, each as it made it.
                let mut made =
                    |dir: &Path, stamp: Option<&Stamp>| queue.made_here(dir, stamp) && created;
                match dirs.add_tree(fd, &path, &mut made) {
                    Ok(Some(true)) if created => return,
                    Ok(_) => {}
                    Err(e) => self.lost = Some(super::queue::describe(&e)),
                }
            }
            _ => {}
        }
        drop(dirs);
        self.changes.push(Change { path, kind });
    }

    /// A directory renamed away whose other half did not follow: no longer watched.
    fn moved_out(&mut self) {
        if let Some((_, from)) = self.moved_away.take() {
            let mut dirs = self.shared.dirs.lock().expect("watch lock");
            dirs.remove_below(&self.shared.fd, &from);
        }
    }

    /// After the kernel dropped events: every configured directory walked again (the
    /// directories made or moved in meanwhile are watched), and the receiver's notes
    /// forgotten (their events may be among those dropped).
    /// Everything is compared again (the loss is handed over as such).
    fn walk_again(&mut self) {
        if !std::mem::take(&mut self.overflowed) {
            return;
        }
        self.queue.forget_placings();
        let mut dirs = self.shared.dirs.lock().expect("watch lock");
        for top in dirs.tops.clone() {
            if let Err(e) = dirs.add_tree(&self.shared.fd, &top, &mut |_, _| false) {
                self.lost = Some(super::queue::describe(&e));
            }
        }
    }

    /// Hands the changes read so far to the queue.
    fn hand_over(&mut self) {
        if !self.changes.is_empty() {
            self.queue.forward(std::mem::take(&mut self.changes));
        }
        if let Some(why) = self.lost.take() {
            self.queue.lost(&why);
        }
    }
}

/// The change one event of a name in a watched directory stands for.
fn kind_of(mask: ReadFlags, cookie: u32) -> Option<ChangeKind> {
    let dir = mask.contains(ReadFlags::ISDIR);
    Some(if mask.contains(ReadFlags::MOVED_FROM) {
        ChangeKind::MovedFrom(cookie)
    } else if mask.contains(ReadFlags::MOVED_TO) {
        ChangeKind::MovedTo(cookie)
    } else if mask.contains(ReadFlags::CREATE) {
        match dir {
            true => ChangeKind::CreatedDirectory,
            false => ChangeKind::Created,
        }
    } else if mask.contains(ReadFlags::DELETE) {
        ChangeKind::Removed
    } else if mask.contains(ReadFlags::MODIFY) {
        ChangeKind::Written
    } else if mask.contains(ReadFlags::CLOSE_WRITE) {
        ChangeKind::Closed
    } else if mask.contains(ReadFlags::ATTRIB) {
        ChangeKind::Attributes
    } else {
        return None;
    })
}

/// The change an event of a configured directory's own watch stands for.
fn own_kind(mask: ReadFlags) -> Option<ChangeKind> {
    if mask.contains(ReadFlags::DELETE_SELF) {
        Some(ChangeKind::Removed)
    } else if mask.contains(ReadFlags::MOVE_SELF) {
        Some(ChangeKind::MovedFrom(0))
    } else if mask.contains(ReadFlags::ATTRIB) {
        Some(ChangeKind::Attributes)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::manifest::{Generation, Placed};
    use crate::watcher::queue::QueueReceiver;

    fn started(placed: Option<Arc<Placed>>) -> (Watch, QueueReceiver, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let (queue, receiver) = Queue::new(1024, Arc::new(Generation::default()), None, placed);
        let watch = Watch::start(queue).unwrap();
        watch.watch_tree(tmp.path()).unwrap();
        (watch, receiver, tmp)
    }

    /// The changes queued until `last` is among them (or five seconds passed).
    fn until(receiver: &QueueReceiver, last: &Path) -> Vec<(PathBuf, ChangeKind)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let taken = receiver.take();
            assert!(!taken.rescan, "no event lost");
            seen.extend(taken.changes.into_iter().map(|c| (c.path, c.kind)));
            if seen.iter().any(|(p, _)| p == last) {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("no change of {} in five seconds: {seen:?}", last.display());
    }

    fn created(path: &Path) -> (PathBuf, ChangeKind) {
        (path.to_path_buf(), ChangeKind::Created)
    }

    #[test]
    fn reading_makes_no_change_and_writing_does() {
        let (_watch, receiver, tmp) = started(None);
        let file = tmp.path().join("a.conf");
        std::fs::write(&file, "1").unwrap();
        let first = until(&receiver, &file);
        assert_eq!(first[0], created(&file), "{first:?}");
        std::fs::read(&file).unwrap();
        let marker = tmp.path().join("marker");
        std::fs::write(&marker, "").unwrap();
        let seen = until(&receiver, &marker);
        assert!(seen.iter().all(|(p, _)| p == &marker), "{seen:?}");
    }

    #[test]
    fn a_file_written_after_its_name_is_gone_makes_no_event_but_its_removal() {
        let (_watch, receiver, tmp) = started(None);
        let file = tmp.path().join("unlinked");
        let mut open = std::fs::File::create(&file).unwrap();
        until(&receiver, &file);
        std::fs::remove_file(&file).unwrap();
        use std::io::Write;
        // Written and closed: no event (a change of its metadata still makes one, which
        // the kernel reports whatever the watch asks).
        open.write_all(b"written to no name").unwrap();
        drop(open);
        let marker = tmp.path().join("marker");
        std::fs::write(&marker, "").unwrap();
        let seen = until(&receiver, &marker);
        let about_file: Vec<_> = seen.iter().filter(|(p, _)| p == &file).collect();
        assert_eq!(
            about_file,
            [&(file.clone(), ChangeKind::Removed)],
            "{seen:?}"
        );
    }

    #[test]
    fn a_tree_made_at_once_is_watched_to_its_deepest_directory() {
        let (watch, receiver, tmp) = started(None);
        let deep = tmp.path().join("d/e/f");
        std::fs::create_dir_all(&deep).unwrap();
        until(&receiver, &tmp.path().join("d"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while watch.watched() < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let file = deep.join("g");
        std::fs::write(&file, "").unwrap();
        let seen = until(&receiver, &file);
        assert!(seen.contains(&created(&file)), "{seen:?}");
        assert_eq!(watch.watched(), 4);
        // The file's later events (its writing and closing) are taken before the move,
        // which is then the only thing said of the old path: one queue, in order.
        let marker = tmp.path().join("marker");
        std::fs::write(&marker, "").unwrap();
        until(&receiver, &marker);

        // Moved: watched under its new path, and no longer under the old one.
        let moved = tmp.path().join("moved");
        std::fs::rename(tmp.path().join("d"), &moved).unwrap();
        let file = moved.join("e/f/h");
        std::fs::write(&file, "").unwrap();
        let seen = until(&receiver, &file);
        assert!(seen.contains(&created(&file)), "{seen:?}");
        let old = tmp.path().join("d");
        assert!(
            !seen.iter().any(|(p, _)| p != &old && p.starts_with(&old)),
            "{seen:?}"
        );
        // Deleted: every watch below it is forgotten.
        std::fs::remove_dir_all(&moved).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while watch.watched() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(watch.watched(), 1);
    }

    #[test]
    fn a_directory_this_receiver_made_is_no_change_while_it_holds_nothing_unseen() {
        let placed = Arc::new(Placed::default());
        let (watch, receiver, tmp) = started(Some(placed.clone()));
        // The reader waits for the watch table while each directory is made and noted,
        // as a receiver notes it right after making it.
        let stamp = |dir: &Path| Stamp::of_stat(&rustix::fs::lstat(dir).unwrap());
        // `sub`: a directory made in it, by the receiver (`Some(true)`) or not; `file`:
        // a file made in it by another process, before it was watched.
        let make = |name: &str, note: bool, sub: Option<bool>, file: bool| {
            let dir = tmp.path().join(name);
            let table = watch.shared.dirs.lock().unwrap();
            let making = note.then(|| placed.making(dir.clone()));
            std::fs::create_dir(&dir).unwrap();
            if let Some(making) = making {
                making.made(stamp(&dir), stamp(tmp.path()));
            }
            if let Some(by_receiver) = sub {
                let sub = dir.join("sub");
                let making = by_receiver.then(|| placed.making(sub.clone()));
                std::fs::create_dir(&sub).unwrap();
                if let Some(making) = making {
                    making.made(stamp(&sub), stamp(&dir));
                }
            }
            if file {
                std::fs::write(dir.join("unseen"), "").unwrap();
            }
            drop(table);
            dir
        };
        let received = make("received", true, None, false);
        let nested = make("nested", true, Some(true), false);
        let other = make("other", false, None, false);
        let filled = make("filled", true, None, true);
        let mixed = make("mixed", true, Some(false), false);
        let marker = tmp.path().join("marker");
        std::fs::write(&marker, "").unwrap();
        let seen = until(&receiver, &marker);
        for dir in [&received, &nested] {
            let dir_or_below = |p: &PathBuf| p.starts_with(dir);
            assert!(!seen.iter().any(|(p, _)| dir_or_below(p)), "{seen:?}");
        }
        for dir in [&other, &filled, &mixed] {
            assert!(
                seen.contains(&(dir.clone(), ChangeKind::CreatedDirectory)),
                "{}: {seen:?}",
                dir.display()
            );
        }
        assert!(placed.is_empty(), "every note taken");
        // Watched all the same: what is made in them afterwards is seen.
        let file = nested.join("sub/later");
        std::fs::write(&file, "").unwrap();
        assert!(until(&receiver, &file).contains(&created(&file)));
    }

    #[test]
    fn a_link_to_a_directory_outside_is_never_watched_through() {
        let (watch, receiver, tmp) = started(None);
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("sub")).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let seen = until(&receiver, &link);
        assert!(seen.contains(&created(&link)), "{seen:?}");
        // Planted where a directory was being walked: a link is not a directory.
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("d/inner")).unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        std::fs::write(outside.path().join("sub/secret"), "x").unwrap();
        let marker = tmp.path().join("marker");
        std::fs::write(&marker, "").unwrap();
        let seen = until(&receiver, &marker);
        assert!(!seen.iter().any(|(p, _)| p.ends_with("secret")), "{seen:?}");
        // The tree and the directory made in it, nothing through either link.
        assert_eq!(watch.watched(), 2);
    }

    /// Directories made, renamed within the tree, swapped or replaced by a link while
    /// the reader is behind (it waits for the watch table meanwhile): each is watched
    /// where it is, under its path, and nothing through the link.
    #[test]
    fn directories_renamed_swapped_or_replaced_while_the_reader_is_behind_are_watched_where_they_are(
    ) {
        let (watch, receiver, tmp) = started(None);
        let at = |path: &str| tmp.path().join(path);
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("sub")).unwrap();
        for dir in ["x/in-x", "y/in-y"] {
            std::fs::create_dir_all(at(dir)).unwrap();
        }
        until(&receiver, &at("y"));
        {
            let _behind = watch.shared.dirs.lock().unwrap();
            // Made, then renamed before it was watched; made in a directory then moved.
            std::fs::create_dir(at("a")).unwrap();
            std::fs::rename(at("a"), at("b")).unwrap();
            std::fs::create_dir(at("x/new")).unwrap();
            std::fs::rename(at("x"), at("c")).unwrap();
            // Swapped in one step.
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                at("c"),
                rustix::fs::CWD,
                at("y"),
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .unwrap();
            // Made with a subdirectory, moved away, and a link to a directory outside
            // planted at its name.
            std::fs::create_dir_all(at("d/sub")).unwrap();
            std::fs::rename(at("d"), at("d.old")).unwrap();
            std::os::unix::fs::symlink(outside.path(), at("d")).unwrap();
        }
        let marker = at("marker");
        std::fs::write(&marker, "").unwrap();
        until(&receiver, &marker);
        std::fs::write(outside.path().join("sub/secret"), "").unwrap();
        // "y" holds what "x" held (and "new"), "c" what "y" held.
        let files = ["b/f", "y/new/f", "y/in-x/f", "c/in-y/f", "d.old/sub/f"];
        for file in files {
            std::fs::write(at(file), "").unwrap();
        }
        let seen = until(&receiver, &at("d.old/sub/f"));
        for file in files {
            assert!(seen.contains(&created(&at(file))), "{file}: {seen:?}");
        }
        assert!(!seen.iter().any(|(p, _)| p.ends_with("secret")), "{seen:?}");
    }

    #[test]
    fn events_the_kernel_dropped_ask_for_a_rescan_and_every_directory_is_watched_again() {
        let (watch, receiver, tmp) = started(None);
        let late = tmp.path().join("late");
        {
            let _behind = watch.shared.dirs.lock().unwrap();
            std::fs::create_dir(&late).unwrap();
            // Past the kernel's queue (16,384 events by default).
            let max = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
                .ok()
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(16_384);
            let many = tmp.path().join("many");
            std::fs::write(&many, "").unwrap();
            for i in 0..max + 16 {
                std::fs::rename(&many, tmp.path().join(format!("m{i}"))).unwrap();
                std::fs::rename(tmp.path().join(format!("m{i}")), &many).unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut rescan = false;
        while !rescan && Instant::now() < deadline {
            rescan = receiver.take().rescan;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(rescan, "the loss is told");
        let file = late.join("g");
        std::fs::write(&file, "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        while !seen.contains(&created(&file)) && Instant::now() < deadline {
            seen.extend(
                receiver
                    .take()
                    .changes
                    .into_iter()
                    .map(|c| (c.path, c.kind)),
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(seen.contains(&created(&file)), "{seen:?}");
    }

    #[test]
    fn a_configured_directory_deleted_is_reported_as_its_own_removal() {
        let (_watch, receiver, tmp) = started(None);
        let top = tmp.path().to_path_buf();
        std::fs::remove_dir(&top).unwrap();
        let seen = until(&receiver, &top);
        assert!(seen.contains(&(top, ChangeKind::Removed)), "{seen:?}");
    }

    #[test]
    fn a_missing_directory_cannot_be_watched_and_says_which() {
        let tmp = tempfile::tempdir().unwrap();
        let (queue, _receiver) = Queue::new(8, Arc::default(), None, None);
        let watch = Watch::start(queue).unwrap();
        let missing = tmp.path().join("missing");
        let err = watch.watch_tree(&missing).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(watch.watched(), 0);
    }

    #[test]
    fn running_out_of_inotify_watches_names_the_sysctl_to_raise() {
        let text = super::super::queue::describe(&Errno::NOSPC.into());
        assert!(
            text.contains("fs.inotify.max_user_watches") && text.contains("524288"),
            "{text}"
        );
        assert!(!super::super::queue::describe(&Errno::ACCESS.into()).contains("inotify"));
    }
}
