//! The queue from the kernel watch's thread to the propagation loop: the [`Change`]s it
//! read, filtered of a receiver's own writes, and the flag that turns lost events into
//! a rescan.
//!
//! It must never block the reading thread and never lose a request to rescan; it does
//! not watch anything itself nor read the tree. The thread appends to a buffer under a
//! mutex held for a push, and wakes the loop, which takes the whole buffer at once: a
//! `git checkout` of thousands of files is a few wake-ups, not one per event.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::warn;

use super::toucher::TouchHandle;
use crate::manifest::{Generation, Placed, Stamp};

/// Events the queue holds before it gives up on them and asks for a rescan instead.
pub const WATCH_QUEUE_EVENTS: usize = 65_536;

/// One filesystem event, as the burst logic needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The local path the event is about.
    pub path: PathBuf,
    pub kind: ChangeKind,
}

/// What happened at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Data was written to a file open for writing (`IN_MODIFY`): it is being written.
    Written,
    /// A name was created (`IN_CREATE`): a file opened to be written, a link, a node.
    Created,
    /// A directory was created or moved in whole.
    CreatedDirectory,
    /// A file open for writing was closed (`IN_CLOSE_WRITE`): its content is complete.
    Closed,
    /// Renamed away (`IN_MOVED_FROM`); the number pairs it with its [`ChangeKind::MovedTo`].
    MovedFrom(u32),
    /// Renamed into place (`IN_MOVED_TO`): complete, as an editor's save is.
    MovedTo(u32),
    /// Deleted.
    Removed,
    /// Mode, owner, times or extended attributes changed.
    Attributes,
}

/// Whether the path's name is a gosyncd temporary name.
fn temporary(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(crate::tree::is_temp_name)
}

/// Whether the name of `local` is one the kernel gives an anonymous file: `#` and
/// digits (a file may be named so too).
fn pseudo_name(local: &std::path::Path) -> bool {
    local
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix('#'))
        .is_some_and(|ino| !ino.is_empty() && ino.bytes().all(|b| b.is_ascii_digit()))
}

/// What the loop takes from the queue at once.
#[derive(Debug, Default)]
pub struct Taken {
    pub changes: Vec<Change>,
    /// Events were lost (the kernel's queue or this one overflowed, the backend
    /// failed): compare everything.
    pub rescan: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Taken>,
    ready: Notify,
}

/// The watcher's side of the queue to the propagation loop.
///
/// The reading thread never blocks on the loop: it appends and wakes it. Beyond
/// [`WATCH_QUEUE_EVENTS`] waiting events it drops them and raises the rescan flag,
/// which the loop sees with the next events it takes, so a full queue can never drop the
/// request to rescan.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    capacity: usize,
    /// Counts every event that may change the tree, as it arrives: answers computed from
    /// the tree before it are no longer current.
    generation: Arc<Generation>,
    /// Where each event's path goes at once, to be spooled before its burst ends.
    touch: Option<TouchHandle>,
    /// The last path named as an anonymous file is (see [`Queue::anonymous`]), and
    /// whether nothing was at it.
    last_pseudo: Arc<Mutex<Option<(PathBuf, bool)>>>,
    /// The files this node's receiver put in place (see [`Queue::placed`]).
    placed: Option<Arc<Placed>>,
}

impl Queue {
    /// Whether `change` is about an anonymous file (`O_TMPFILE`, which a receiver
    /// writes each content it receives into): the kernel names it `#` and its inode
    /// number, a name nothing is at ([`pseudo_name`]). Only the events
    /// an anonymous file makes count (writes, attributes, the close): the removal or
    /// renaming away of a file really named so leaves nothing at its name, and is a
    /// change. A file received makes several such events: the name is looked up for
    /// the first of them only. The answer holds until a name is created or moved in at
    /// that path or above it (a directory moved in brings what it holds); such an event
    /// is looked up again.
    fn anonymous(&self, change: &Change) -> bool {
        let mut last = self.last_pseudo.lock().expect("pseudo name lock");
        let appears = matches!(
            change.kind,
            ChangeKind::Created | ChangeKind::CreatedDirectory | ChangeKind::MovedTo(_)
        );
        if appears
            && last
                .as_ref()
                .is_some_and(|(path, _)| path.starts_with(&change.path))
        {
            *last = None;
        }
        let written = matches!(
            change.kind,
            ChangeKind::Written | ChangeKind::Attributes | ChangeKind::Closed
        );
        if !written || !pseudo_name(&change.path) {
            return false;
        }
        if let Some((path, unnamed)) = last.as_ref() {
            if *path == change.path {
                return *unnamed;
            }
        }
        let unnamed = std::fs::symlink_metadata(&change.path).is_err();
        *last = Some((change.path.clone(), unnamed));
        unnamed
    }

    /// Whether `change` is the name a file received from a peer got here, as this
    /// node's receiver noted it (see [`Placed`]): the receiver recorded its version, so
    /// there is nothing to gather, spool or scan for it. Dropped here, a batch received
    /// leaves no event waiting (the batch counts in the tree's generation itself).
    fn placed(&self, change: &Change) -> bool {
        matches!(change.kind, ChangeKind::Created | ChangeKind::MovedTo(_))
            && self.placed.as_ref().is_some_and(|p| p.take(&change.path))
    }

    /// A queue of `capacity` events, and the receiving end for [`propagate`](super::propagate);
    /// `generation` counts the events that may change the tree; `touch`, if any, is
    /// handed every event's path as it arrives.
    pub fn new(
        capacity: usize,
        generation: Arc<Generation>,
        touch: Option<TouchHandle>,
        placed: Option<Arc<Placed>>,
    ) -> (Queue, QueueReceiver) {
        let shared = Arc::new(Shared::default());
        (
            Queue {
                shared: shared.clone(),
                capacity,
                generation,
                touch,
                last_pseudo: Arc::default(),
                placed,
            },
            QueueReceiver { shared },
        )
    }

    /// Whether the directory at `local` is one this node's receiver made, found as made
    /// (`stamp`) once watched, holding only directories (see [`Placed`]); `None`: holding
    /// other things. A tree of such directories holds nothing made unseen, and their
    /// versions are recorded: there is nothing to gather or scan. The receiver's note is
    /// taken either way.
    pub(super) fn made_here(&self, local: &std::path::Path, stamp: Option<&Stamp>) -> bool {
        let Some(placed) = &self.placed else {
            return false;
        };
        if stamp.is_none() {
            // Listed as it began to be watched: what was put in it made no event.
            placed.forget_below(local);
        }
        placed.take_made(local, stamp)
    }

    /// The same queue, without the receiver's notes: for the receiver itself (see
    /// [`Queue::look_at`]).
    pub fn detached(&self) -> Queue {
        Queue {
            placed: None,
            ..self.clone()
        }
    }

    /// Queues a name created at `local` that no event will tell of.
    pub fn look_at(&self, local: PathBuf) {
        let kind = ChangeKind::Created;
        self.queue(vec![Change { path: local, kind }], false);
    }

    /// Forgets every note of the receiver's: their events may never come.
    pub(super) fn forget_placings(&self) {
        if let Some(placed) = &self.placed {
            placed.forget_all();
        }
    }

    /// Hands changes read from the kernel on, without waiting for the loop.
    pub(super) fn forward(&self, mut changes: Vec<Change>) {
        // A receiver's own temporary names (a file linked next to its target, then
        // renamed over it): never in a manifest, and dropped by every consumer. Dropped
        // here, a batch received leaves a third of the events waiting, not all of
        // them. So are the writes to the anonymous file it receives a content into,
        // before it has a name, and the names it gave the files it received.
        changes.retain(|c| !temporary(&c.path) && !self.anonymous(c) && !self.placed(c));
        self.queue(changes, false);
    }

    /// Events were lost (the kernel's queue overflowed, the watch failed): `why` is
    /// warned, and everything is compared again.
    pub(super) fn lost(&self, why: &str) {
        warn!("watcher: {why}");
        self.queue(Vec::new(), true);
    }

    fn queue(&self, changes: Vec<Change>, rescan: bool) {
        if changes.is_empty() && !rescan {
            return;
        }
        match rescan {
            true => self.generation.bump(),
            false => self
                .generation
                .bump_at(changes.iter().map(|c| c.path.as_path())),
        }
        if let Some(touch) = &self.touch {
            touch.add(changes.iter().map(|c| c.path.clone()));
        }
        {
            let mut pending = self.shared.pending.lock().expect("watch queue lock");
            if rescan || pending.changes.len() + changes.len() > self.capacity {
                pending.rescan = true;
            } else {
                pending.changes.extend(changes);
            }
        }
        self.shared.ready.notify_one();
    }
}

/// The propagation loop's side of the queue.
pub struct QueueReceiver {
    shared: Arc<Shared>,
}

impl QueueReceiver {
    /// Waits until there is something to take (at once if there is already).
    pub(super) async fn ready(&self) {
        self.shared.ready.notified().await
    }

    /// Takes everything waiting.
    pub(super) fn take(&self) -> Taken {
        std::mem::take(&mut *self.shared.pending.lock().expect("watch queue lock"))
    }
}

/// Words for a watch error; running out of inotify watches names the sysctl to raise.
pub(super) fn describe(err: &std::io::Error) -> String {
    if err.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
        return "out of inotify watches: raise fs.inotify.max_user_watches (for example \
                `sysctl fs.inotify.max_user_watches=524288`)"
            .to_string();
    }
    err.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: ChangeKind, path: &str) -> Vec<Change> {
        vec![Change {
            path: PathBuf::from(path),
            kind,
        }]
    }

    #[test]
    fn an_event_waiting_in_the_queue_stays_small() {
        // Up to WATCH_QUEUE_EVENTS of them wait while the loop is busy (a receiver's
        // watcher sees four or five per file an initial sync writes).
        let size = std::mem::size_of::<Change>();
        assert!(size <= 32, "{size}");
    }

    fn modified(path: &str) -> Vec<Change> {
        event(ChangeKind::Written, path)
    }

    #[tokio::test]
    async fn a_full_queue_turns_into_a_rescan_instead_of_blocking_or_losing_it() {
        let (queue, receiver) = Queue::new(1, Arc::default(), None, None);
        queue.forward(modified("/r/etc/app/a"));
        // The queue is full: this event cannot be queued, and neither its path.
        queue.forward(modified("/r/etc/app/b"));
        receiver.ready().await;
        let taken = receiver.take();
        assert_eq!(
            taken.changes,
            [Change {
                path: PathBuf::from("/r/etc/app/a"),
                kind: ChangeKind::Written
            }]
        );
        assert!(taken.rescan, "the dropped event asks for a rescan");
        let again = receiver.take();
        assert!(again.changes.is_empty() && !again.rescan, "once");
        queue.forward(modified("/r/etc/app/c"));
        assert_eq!(receiver.take().changes.len(), 1, "room again once taken");
    }

    #[test]
    fn the_name_a_received_file_got_here_is_no_change_but_any_other_is() {
        let placed = Arc::new(Placed::default());
        let generation = Arc::new(Generation::default());
        let (queue, receiver) = Queue::new(64, generation.clone(), None, Some(placed.clone()));
        let missed = queue.detached();
        placed.on_missed(move |path| missed.look_at(path));
        let created = |path: &std::path::Path| event(ChangeKind::Created, path.to_str().unwrap());
        let at = |name: &str| PathBuf::from("/r/etc/app").join(name);
        let (received, taken_over, made) = (at("received"), at("taken-over"), at("made"));
        placed.placing(received.clone());
        placed.placing(taken_over.clone());
        generation.watched();
        let before = generation.current();
        queue.forward(created(&received));
        assert_eq!(
            generation.current(),
            before,
            "nothing changed but what the batch counts itself"
        );
        // Another process created the second name before the receiver could: its event
        // took the note, and the placing failed. Told, the queue holds it all the same.
        queue.forward(created(&taken_over));
        assert!(receiver.take().changes.is_empty());
        placed.unplace(&taken_over);
        queue.forward(created(&made));
        // The received file's name again, or a write to it: changes made here.
        queue.forward(created(&received));
        queue.forward(modified(received.to_str().unwrap()));
        let paths: Vec<(PathBuf, ChangeKind)> = receiver
            .take()
            .changes
            .into_iter()
            .map(|c| (c.path, c.kind))
            .collect();
        assert_eq!(
            paths,
            [
                (taken_over, ChangeKind::Created),
                (made, ChangeKind::Created),
                (received.clone(), ChangeKind::Created),
                (received, ChangeKind::Written),
            ]
        );
        assert!(placed.is_empty());
    }

    #[test]
    fn lost_events_ask_for_a_rescan() {
        let (queue, receiver) = Queue::new(8, Arc::default(), None, None);
        queue.lost("the kernel's event queue overflowed");
        assert!(receiver.take().rescan);
        queue.forward(modified("/r/a"));
        let taken = receiver.take();
        assert!(!taken.rescan && taken.changes.len() == 1);
    }

    #[test]
    fn a_receivers_temporary_names_are_neither_queued_nor_counted() {
        let generation = Arc::new(Generation::default());
        generation.watched();
        let (queue, receiver) = Queue::new(8, generation.clone(), None, None);
        let start = generation.current();
        // A content linked next to its target under a temporary name, then renamed.
        let temporary = format!("/r/etc/app/{}", crate::tree::temp_name());
        queue.forward(event(ChangeKind::Created, &temporary));
        queue.forward(event(ChangeKind::MovedFrom(3), &temporary));
        assert!(receiver.take().changes.is_empty());
        assert_eq!(generation.current(), start);

        queue.forward(event(ChangeKind::MovedTo(3), "/r/etc/app/x.cfg"));
        let taken = receiver.take();
        assert_eq!(taken.changes.len(), 1);
        assert_eq!(taken.changes[0].path, PathBuf::from("/r/etc/app/x.cfg"));
        assert!(generation.current() > start);
        // Only gosyncd's own names: an editor's temporary file is an event like any.
        queue.forward(event(ChangeKind::Created, "/r/etc/app/.x.cfg.swp"));
        assert_eq!(receiver.take().changes.len(), 1);
    }

    #[test]
    fn the_name_of_an_anonymous_file_is_a_hash_and_digits() {
        let dir = std::path::Path::new("/r/etc");
        assert!(pseudo_name(&dir.join("#10043449")));
        assert!(!pseudo_name(&dir.join("#notes#")));
        assert!(!pseudo_name(&dir.join("#12a")));
        assert!(!pseudo_name(&dir.join("#")));
        assert!(!pseudo_name(&dir.join("12345")));
    }

    #[test]
    fn writes_to_an_anonymous_file_are_dropped_and_a_file_named_so_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let generation = Arc::new(Generation::default());
        generation.watched();
        let (queue, receiver) = Queue::new(64, generation.clone(), None, None);
        let start = generation.current();
        let at = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
        let attributes = ChangeKind::Attributes;
        // A content received: written into an anonymous file, then linked and renamed.
        for _ in 0..3 {
            queue.forward(modified(&at("#4242")));
        }
        queue.forward(event(attributes, &at("#4242")));
        assert!(receiver.take().changes.is_empty());
        assert_eq!(generation.current(), start, "not a change of the tree");

        // A file that is named so: created, then written. Its events are changes.
        std::fs::write(tmp.path().join("#4242"), "real").unwrap();
        queue.forward(event(ChangeKind::Created, &at("#4242")));
        queue.forward(modified(&at("#4242")));
        let taken = receiver.take();
        assert_eq!(taken.changes.len(), 2, "{taken:?}");
        assert!(generation.current() > start);

        // Looked up once: the answer holds until a name appears at that path or above.
        queue.forward(modified(&at("#7")));
        assert!(receiver.take().changes.is_empty());
        std::fs::write(tmp.path().join("#7"), "made without its event").unwrap();
        queue.forward(modified(&at("#7")));
        queue.forward(event(ChangeKind::Created, &at("sibling")));
        queue.forward(modified(&at("#7")));
        assert_eq!(receiver.take().changes.len(), 1, "the sibling only");
        // The directory moved in (with what it holds): looked up again.
        let moved_in = ChangeKind::MovedTo(5);
        queue.forward(event(moved_in, tmp.path().to_str().unwrap()));
        queue.forward(modified(&at("#7")));
        assert_eq!(receiver.take().changes.len(), 2);

        // A file really named so, removed or renamed away: nothing is at its name
        // afterwards, and yet it is a change, however its writes were answered.
        std::fs::remove_file(tmp.path().join("#7")).unwrap();
        std::fs::remove_file(tmp.path().join("#4242")).unwrap();
        queue.forward(event(ChangeKind::MovedFrom(0), &at("#4242")));
        queue.forward(event(ChangeKind::Removed, &at("#7")));
        let kinds: Vec<_> = receiver.take().changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ChangeKind::MovedFrom(0), ChangeKind::Removed]);
        // The close of an anonymous file is dropped like its writes.
        queue.forward(event(ChangeKind::Closed, &at("#99")));
        assert!(receiver.take().changes.is_empty());
    }
}
