//! Progress of a run as it goes: what a push to each peer plans and what has gone out so
//! far, told as [`ProgressEvent`]s to an optional [`Progress`] sink, and [`PeerTally`],
//! the counters they add up to. The CLI renders them on a terminal; the daemon and the
//! watcher pass none.
//!
//! It only reports: no event changes what is sent, and a sink cannot fail a run.

use std::fmt;
use std::sync::Arc;

/// One step of a push to one peer. A dry run sends nothing and tells none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressEvent {
    /// The operations to send to `peer` are ready (their contents read): `operations`
    /// in all, carrying `bytes` of file content.
    Planned {
        peer: String,
        operations: usize,
        bytes: u64,
    },
    /// The peer answered a batch: `operations` more were sent and answered, carrying
    /// `bytes` of file content.
    Sent {
        peer: String,
        operations: usize,
        bytes: u64,
    },
}

impl ProgressEvent {
    /// The peer the event is about, as written in `remotes`.
    pub fn peer(&self) -> &str {
        match self {
            ProgressEvent::Planned { peer, .. } | ProgressEvent::Sent { peer, .. } => peer,
        }
    }
}

/// Where a run tells its progress: nowhere by default. Called from the peers' tasks, on
/// any thread, so the function must be quick and must not block.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<Tell>>);

/// What a [`Progress`] sink calls with each event.
type Tell = dyn Fn(&ProgressEvent) + Send + Sync;

impl Progress {
    /// A sink calling `tell` with every event.
    pub fn to(tell: impl Fn(&ProgressEvent) + Send + Sync + 'static) -> Progress {
        Progress(Some(Arc::new(tell)))
    }

    pub(super) fn tell(&self, event: ProgressEvent) {
        if let Some(tell) = &self.0 {
            tell(&event);
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(sink)"
        } else {
            "Progress(none)"
        })
    }
}

/// What the events about one peer add up to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTally {
    pub planned_operations: usize,
    pub planned_bytes: u64,
    pub sent_operations: usize,
    pub sent_bytes: u64,
}

impl PeerTally {
    /// Counts one event about this peer.
    pub fn count(&mut self, event: &ProgressEvent) {
        match *event {
            ProgressEvent::Planned {
                operations, bytes, ..
            } => {
                self.planned_operations += operations;
                self.planned_bytes += bytes;
            }
            ProgressEvent::Sent {
                operations, bytes, ..
            } => {
                self.sent_operations += operations;
                self.sent_bytes += bytes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn sent(operations: usize, bytes: u64) -> ProgressEvent {
        ProgressEvent::Sent {
            peer: "10.0.0.2:7700".into(),
            operations,
            bytes,
        }
    }

    #[test]
    fn a_tally_adds_up_the_plan_and_each_batch_sent() {
        let mut tally = PeerTally::default();
        tally.count(&ProgressEvent::Planned {
            peer: "10.0.0.2:7700".into(),
            operations: 5,
            bytes: 300,
        });
        tally.count(&sent(3, 100));
        assert_eq!(tally.sent_operations, 3);
        tally.count(&sent(2, 200));
        assert_eq!(
            tally,
            PeerTally {
                planned_operations: 5,
                planned_bytes: 300,
                sent_operations: 5,
                sent_bytes: 300,
            }
        );
    }

    #[test]
    fn a_sink_receives_every_event_and_none_is_told_nothing() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let progress = Progress::to(move |e| into.lock().expect("lock").push(e.clone()));
        progress.tell(sent(1, 10));
        progress.tell(sent(2, 20));
        Progress::default().tell(sent(4, 40));
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![sent(1, 10), sent(2, 20)],
            "the default sink drops events; the given one gets them in order"
        );
        assert_eq!(sent(1, 10).peer(), "10.0.0.2:7700");
    }
}
