//! Starting the writeback of a large batch while it is still arriving.
//!
//! A batch of many files is made durable by one `syncfs` at its end (see `session`):
//! until then its contents wait in the page cache, and the flush that ends the batch
//! writes all of them while the receiver and its sender wait. Every [`EARLY_BYTES`]
//! received, a thread of its own flushes the filesystem the contents go to, so that
//! most of a batch is on disk by the time it ends and the final flush has little left to
//! write. One such flush runs at a time in the process; the receiving thread never waits
//! for it.
//!
//! An early flush goes through a directory it opens itself, and what it returns is left:
//! it only starts work early. The kernel tells each open directory of a writeback error
//! once, and the batch's own flush goes through the top opened as the batch began to
//! arrive, which is told of any error since, whoever was told first (see `session`): no
//! file is put in place on the strength of a flush that failed.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

/// Bytes of contents a batch receives between two early flushes.
pub(super) const EARLY_BYTES: u64 = 8 << 20;

/// Whether an early flush is running.
static FLUSHING: AtomicBool = AtomicBool::new(false);
/// How many early flushes were started.
static STARTED: AtomicU64 = AtomicU64::new(0);

/// Counts the contents a batch receives, and starts an early flush of their filesystem
/// every [`EARLY_BYTES`].
#[derive(Default)]
pub(super) struct Early {
    since: u64,
}

impl Early {
    /// Notes `bytes` more received on the filesystem of `top`.
    pub(super) fn received(&mut self, bytes: u64, top: &Arc<OwnedFd>) {
        self.since += bytes;
        if self.since >= EARLY_BYTES {
            self.since = 0;
            start(top);
        }
    }
}

/// Flushes the filesystem of `top` in a thread of its own, unless a flush is running.
fn start(top: &Arc<OwnedFd>) {
    if FLUSHING.swap(true, Ordering::SeqCst) {
        return;
    }
    let top = top.clone();
    let spawned = std::thread::Builder::new()
        .name("gosyncd-flush".into())
        .spawn(move || {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            if let Ok(own) = rustix::fs::openat(&*top, ".", flags, Mode::empty()) {
                let _ = rustix::fs::syncfs(&own);
            }
            FLUSHING.store(false, Ordering::SeqCst);
        });
    match spawned {
        Ok(_) => {
            STARTED.fetch_add(1, Ordering::SeqCst);
        }
        // No thread: the batch's own flush writes everything, as it would anyway.
        Err(_) => FLUSHING.store(false, Ordering::SeqCst),
    }
}

/// How many early flushes were started so far.
#[cfg(test)]
pub(super) fn started() -> u64 {
    STARTED.load(Ordering::SeqCst)
}
