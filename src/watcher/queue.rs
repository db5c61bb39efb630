//! The queue from the notify callback to the propagation loop: converting notify's
//! debounced results into [`Signal`]s, and the `lost` flag that turns a full queue into a
//! rescan.
//!
//! It must never block the callback and never lose a request to rescan; it does not
//! watch anything itself nor read the tree.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::EventKind;
use notify_debouncer_full::DebounceEventResult;
use tokio::sync::mpsc;
use tracing::warn;

use super::directories::describe;

/// Signals the channel from the watcher to the propagation loop can hold.
pub const WATCH_QUEUE_SIGNALS: usize = 4096;

/// What the watcher tells the propagation loop.
#[derive(Debug)]
pub enum Signal {
    /// These local paths changed.
    Changed(Vec<PathBuf>),
    /// Events were lost: compare everything.
    Rescan,
}

/// The watcher's side of the queue to the propagation loop.
///
/// The callback never blocks: it `try_send`s. When the queue is full, events are lost,
/// so it raises `lost` instead, which the loop turns into a rescan the next time it
/// looks (after every signal it receives and at every directory check), so a full queue
/// can never drop the request to rescan.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Signal>,
    lost: Arc<AtomicBool>,
}

impl Queue {
    /// A queue of `capacity` signals, and the receiving end for [`propagate`](super::propagate).
    pub fn new(capacity: usize) -> (Queue, QueueReceiver) {
        let (tx, rx) = mpsc::channel(capacity);
        let lost = Arc::new(AtomicBool::new(false));
        (
            Queue {
                tx,
                lost: lost.clone(),
            },
            QueueReceiver { rx, lost },
        )
    }

    /// Hands one debounced batch of notify's results on, without blocking.
    pub(super) fn forward(&self, result: DebounceEventResult) {
        let signal = match result {
            Ok(events) => {
                let mut paths = Vec::new();
                let mut rescan = false;
                for event in events {
                    // The kernel's queue overflowed, or the backend asks for a rescan.
                    rescan |= event.need_rescan();
                    // Opening or reading a file changes nothing, and the daemon reads
                    // files itself (scanning, sending): only writes count.
                    if is_read_only(&event.event.kind) {
                        continue;
                    }
                    paths.extend(event.event.paths);
                }
                if rescan {
                    Signal::Rescan
                } else if paths.is_empty() {
                    return;
                } else {
                    Signal::Changed(paths)
                }
            }
            Err(errors) => {
                for e in errors {
                    warn!("watcher: {}", describe(&e));
                }
                Signal::Rescan
            }
        };
        if self.tx.try_send(signal).is_err() {
            self.lost.store(true, Ordering::SeqCst);
        }
    }
}

/// The propagation loop's side of the queue.
pub struct QueueReceiver {
    pub(super) rx: mpsc::Receiver<Signal>,
    lost: Arc<AtomicBool>,
}

impl QueueReceiver {
    /// Whether signals were dropped since the last call (the queue was full).
    pub(super) fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::SeqCst)
    }
}

/// Whether an event only says that a file was opened, read or closed unmodified.
fn is_read_only(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, path: &str) -> notify_debouncer_full::DebouncedEvent {
        notify_debouncer_full::DebouncedEvent::new(
            notify::Event::new(kind).add_path(PathBuf::from(path)),
            std::time::Instant::now(),
        )
    }

    fn modified(path: &str) -> notify_debouncer_full::DebouncedEvent {
        event(EventKind::Modify(notify::event::ModifyKind::Any), path)
    }

    fn received(queue: &mut QueueReceiver) -> Vec<Signal> {
        std::iter::from_fn(|| queue.rx.try_recv().ok()).collect()
    }

    #[test]
    fn a_full_queue_turns_into_a_rescan_instead_of_blocking_or_losing_it() {
        let (queue, mut receiver) = Queue::new(1);
        queue.forward(Ok(vec![modified("/r/etc/app/a")]));
        // The queue is full: this batch (even a rescan request) cannot be queued.
        queue.forward(Ok(vec![modified("/r/etc/app/b")]));
        queue.forward(Err(vec![notify::Error::generic("boom")]));
        let signals = received(&mut receiver);
        assert!(
            matches!(&signals[..], [Signal::Changed(p)] if p == &[PathBuf::from("/r/etc/app/a")]),
            "{signals:?}"
        );
        assert!(receiver.take_lost(), "the dropped batches ask for a rescan");
        assert!(!receiver.take_lost(), "once");
    }

    #[test]
    fn an_overflow_notice_or_a_watch_error_asks_for_a_rescan() {
        let (queue, mut receiver) = Queue::new(8);
        let mut overflow = event(EventKind::Other, "/r/etc/app");
        overflow.event = overflow.event.set_flag(notify::event::Flag::Rescan);
        queue.forward(Ok(vec![modified("/r/etc/app/a"), overflow]));
        queue.forward(Err(vec![notify::Error::generic("backend failed")]));
        let signals = received(&mut receiver);
        assert!(
            matches!(&signals[..], [Signal::Rescan, Signal::Rescan]),
            "{signals:?}"
        );
        assert!(!receiver.take_lost());
    }

    #[test]
    fn reads_alone_send_nothing() {
        let (queue, mut receiver) = Queue::new(8);
        queue.forward(Ok(vec![
            event(EventKind::Access(AccessKind::Open(AccessMode::Any)), "/r/a"),
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/r/a",
            ),
        ]));
        assert!(received(&mut receiver).is_empty());
        queue.forward(Ok(vec![event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/r/a",
        )]));
        assert_eq!(
            received(&mut receiver).len(),
            1,
            "closing after a write counts"
        );
    }
}
