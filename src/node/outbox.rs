//! The per-peer outbox: what one peer is known to hold where it differs from this node,
//! and what waits to be delivered to it. The watcher's delivery task
//! (`watcher::deliver`) empties it, retrying with exponential backoff.
//!
//! What a peer holds is learnt from its answers, never assumed: a change it did not apply
//! (rejected by its `validate`, refused, conflicting, failed) leaves the state the peer
//! reported. A change that failed for a passing reason (disk full, busy, unreachable) is
//! retried until it is delivered or the file changes again; one rejected or refused is
//! held, not retried, until the next local edit of that path.
//!
//! It does not scan or decide what changed: the propagation loop merges the changes in,
//! and a delivery sends only versions this node recorded. It knows nothing of HTTP: the
//! engine's push answers with typed outcomes.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::manifest::Manifest;
use crate::paths::{is_within, LogicalPath};
use crate::protocol::{Entry, HeldKind, Op};
use crate::sync::{ChangeStatus, PeerReport};

/// What one peer is known to hold at a path where it differs from this node, and
/// whether that difference waits to be delivered or is held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Known {
    /// What the peer holds there (`None`: nothing): as it answered, or as this node
    /// expects from its last delivery. For a conflict, the version the peer was expected
    /// to hold, so that the next push is refused again rather than overwrite the peer's
    /// own edit.
    pub holds: Option<Entry>,
    /// Why the difference is not being delivered; `None`: it waits for delivery. Boxed,
    /// as `sent` is: both are rare, and a record is kept per path and peer (an `rm -rf`
    /// of 100,000 files under a daemon with three peers makes 300,000).
    pub held: Option<Box<Held>>,
    /// It was being pushed when the spool was written, with this version: the peer holds
    /// `holds` or this, and is asked which before the next push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Box<Sent>>,
    /// Touched by a burst that has not ended: not delivered until the burst says it
    /// changed (and dropped if it did not); replayed from the spool after a crash.
    #[serde(skip)]
    pub provisional: bool,
}

/// A version sent to a peer (`None`: a deletion).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sent {
    pub entry: Option<Entry>,
}

/// Why a difference is held rather than retried: until this node's next edit of the
/// path (or an operator's `gosyncd sync`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "reason", rename_all = "lowercase")]
pub enum Held {
    /// The peer holds another version (an edit made there).
    Conflict(String),
    /// The peer's `validate` refused the change and put its version back.
    Rejected(String),
    /// Refused for good by the peer's rules or this node's.
    Refused(String),
    /// A directory the peer keeps: it holds paths the peer excludes.
    Kept(String),
}

impl Held {
    /// The kind, for status and metrics.
    pub fn kind(&self) -> HeldKind {
        match self {
            Held::Conflict(_) => HeldKind::Conflict,
            Held::Rejected(_) => HeldKind::Rejected,
            Held::Refused(_) => HeldKind::Refused,
            Held::Kept(_) => HeldKind::Kept,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Held::Conflict(r) | Held::Rejected(r) | Held::Refused(r) | Held::Kept(r) => r,
        }
    }
}

/// What one peer is known to hold where it differs from this node's versions: the
/// changes waiting for delivery and the ones held. Empty when the peer is known to hold
/// what this node holds, so that memory grows with the differences, not with the tree.
///
/// Bounded by the tree, not by an outage: one small entry per path (a digest and
/// metadata, never content, which is read when the push is made), however often the
/// path changes while the peer is away.
#[derive(Default)]
pub struct Outbox {
    paths: Mutex<Paths>,
    /// New changes to deliver.
    pub(crate) wake: Notify,
    /// The peer was heard from (it may be back): retry now rather than at the end of
    /// the backoff.
    pub(crate) contact: Notify,
}

/// The differences of one peer, and those being pushed to it.
#[derive(Default)]
struct Paths {
    known: BTreeMap<LogicalPath, Known>,
    /// Sent and not answered yet: what the peer was expected to hold. Kept apart from
    /// `known` (where a newer edit may wait meanwhile) and spooled with it, so that a
    /// push under way is never missing from the spool nor taken twice.
    in_flight: BTreeMap<LogicalPath, InFlight>,
    /// Since when changes have been waiting without a moment with none: the age of the
    /// oldest change waiting. Set when a change is added to none, cleared when none is
    /// left after a delivery. (Dropping a held or provisional path never ends a wait:
    /// neither counts as waiting.)
    waiting_since: Option<std::time::SystemTime>,
    /// Counts the holds learnt (see [`Outbox::mark`]).
    holds_learnt: u64,
    /// When each path held was learnt to be held, by `holds_learnt`: a comparison
    /// forgets only the holds older than its view of the trees. (Paths no longer held
    /// linger until the next forgetting.)
    held_at: std::collections::HashMap<LogicalPath, u64>,
}

impl Paths {
    /// Notes that `path` was learnt to be held now.
    fn stamp_held(&mut self, path: &LogicalPath) {
        self.holds_learnt += 1;
        self.held_at.insert(path.clone(), self.holds_learnt);
    }

    /// Adds records for paths it has none of, the first of each path: the many of a
    /// large burst (an `rm -rf`, a checkout) as a map built whole and merged in, whose
    /// nodes are full, rather than one at a time, which leaves them half full (at
    /// 300,000 records, a record per path and peer, 27 MiB more).
    fn add_new(&mut self, mut new: Vec<(LogicalPath, Known)>) {
        if new.len() < PACKED_AT_LEAST.max(self.known.len() / 8) {
            for (path, known) in new {
                self.known.entry(path).or_insert(known);
            }
            return;
        }
        // Stable: the first of each path stays first, and is the one kept.
        new.sort_by(|a, b| a.0.cmp(&b.0));
        new.dedup_by(|later, first| later.0 == first.0);
        let mut new: BTreeMap<LogicalPath, Known> = new.into_iter().collect();
        self.known.append(&mut new);
    }

    /// Whether the difference `known` at `path` waits for delivery: neither held, nor
    /// touched by a burst not ended yet, nor being pushed.
    fn is_waiting(&self, path: &str, known: &Known) -> bool {
        known.held.is_none() && !known.provisional && !self.in_flight.contains_key(path)
    }

    /// How many paths wait for delivery or are being pushed.
    fn waiting(&self) -> usize {
        let waiting = self
            .known
            .iter()
            .filter(|(path, known)| self.is_waiting(path, known))
            .count();
        waiting + self.in_flight.len()
    }

    /// Starts the clock of the oldest change waiting, unless it runs.
    fn started_waiting(&mut self, at: std::time::SystemTime) {
        if self.waiting_since.is_none_or(|since| at < since) {
            self.waiting_since = Some(at);
        }
    }

    /// Stops the clock when nothing waits any more.
    fn maybe_done_waiting(&mut self) {
        if self.waiting_since.is_some() && self.waiting() == 0 {
            self.waiting_since = None;
        }
    }
}

/// Below this many new records at once, [`Paths::add_new`] inserts them one at a time:
/// merging rewrites the whole map.
const PACKED_AT_LEAST: usize = 256;

/// A push under way: what the peer was expected to hold, and, once planned, what was
/// sent.
struct InFlight {
    holds: Option<Entry>,
    sent: Option<Box<Sent>>,
}

impl InFlight {
    /// The path's record as it stands while the push is under way: what the peer was
    /// expected to hold, and what was sent (as the spool and comparisons see it).
    fn as_known(&self) -> Known {
        Known {
            holds: self.holds.clone(),
            held: None,
            sent: self.sent.clone(),
            provisional: false,
        }
    }
}

/// How a delivery ended, for the delivering loop.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Settled {
    /// Paths now known to hold this node's version.
    pub(crate) delivered: usize,
    /// Paths put back to be retried (a passing failure).
    pub(crate) retry: usize,
    /// Paths held until their next edit.
    pub(crate) held: usize,
}

impl Outbox {
    /// Adds changes, without waking the delivery (see [`Outbox::wake`]). A path already
    /// waiting keeps its older expectation: that is what the peer still holds. A path
    /// held is released: the new edit is delivered against what the peer holds. A
    /// rejection is released for every path of the directory `directory_of` names:
    /// the peer's `validate` judged them together, and may pass them with this edit.
    pub fn merge(&self, ops: &[Op], directory_of: impl Fn(&str) -> Option<String>) {
        let dirs: std::collections::BTreeSet<String> =
            ops.iter().filter_map(|op| directory_of(&op.path)).collect();
        let mut paths = self.paths.lock().expect("outbox lock");
        if !dirs.is_empty() {
            for (path, known) in paths.known.iter_mut() {
                if matches!(known.held.as_deref(), Some(Held::Rejected(_)))
                    && dirs.iter().any(|dir| is_within(path, dir))
                {
                    known.held = None;
                }
            }
        }
        if !ops.is_empty() {
            paths.started_waiting(std::time::SystemTime::now());
        }
        let mut new = Vec::new();
        for op in ops {
            match paths.known.get_mut(op.path.as_str()) {
                Some(known) => {
                    // A touch may have read this node's version after the burst
                    // recorded it: what the peer holds is what the change expects.
                    if known.provisional {
                        known.holds = op.expect.as_deref().cloned();
                    }
                    known.held = None;
                    known.provisional = false;
                }
                None => new.push((
                    op.path.clone(),
                    Known {
                        holds: op.expect.as_deref().cloned(),
                        held: None,
                        sent: None,
                        provisional: false,
                    },
                )),
            }
        }
        paths.add_new(new);
    }

    /// Notes paths being written here, before their burst ends and their change is
    /// known: each with the version the peer is expected to hold (this node's last),
    /// unless it waits already. Spooled, they survive a crash before the burst's end;
    /// a path found unchanged is dropped by the next delivery.
    ///
    /// A path being pushed is noted too, with the version this node recorded (the one
    /// the push carries): once the push lands, nothing else would remember that the
    /// path was written again, and a crash before the burst's end would lose the edit.
    ///
    /// Returns whether a path was noted (the spool must be written again).
    pub fn touch(&self, touched: &[(LogicalPath, Option<Entry>)]) -> bool {
        let mut paths = self.paths.lock().expect("outbox lock");
        let new: Vec<_> = touched
            .iter()
            .filter(|(path, _)| !paths.known.contains_key(path.as_str()))
            .map(|(path, holds)| {
                let known = Known {
                    holds: holds.clone(),
                    held: None,
                    sent: None,
                    provisional: true,
                };
                (path.clone(), known)
            })
            .collect();
        let noted = !new.is_empty();
        paths.add_new(new);
        noted
    }

    /// Drops what a burst touched and did not change (see [`Outbox::touch`]): the
    /// paths within `scope`, the burst's (empty: the whole tree). What the next burst
    /// touched meanwhile stays noted.
    pub fn drop_provisional(&self, scope: &[String]) {
        self.paths
            .lock()
            .expect("outbox lock")
            .known
            .retain(|path, known| {
                !known.provisional
                    || !(scope.is_empty() || scope.iter().any(|s| is_within(path, s)))
            });
    }

    /// Wakes the delivery: changes were merged.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Tells the delivery that the peer was heard from: a delivery waiting out its
    /// backoff tries again now.
    pub fn contact(&self) {
        self.contact.notify_one();
    }

    /// Takes every difference waiting for delivery (the held ones stay), and keeps them
    /// as in flight until [`Outbox::settle`].
    #[cfg(test)]
    pub(crate) fn take(&self) -> BTreeMap<LogicalPath, Known> {
        self.take_some(usize::MAX, |_| true, |_| false)
    }

    /// Takes at most `limit` of the differences waiting, in path order, and every one
    /// where `whole` (a directory the peer judges as a whole: its paths go together,
    /// whatever their number); keeps them as in flight until [`Outbox::settle`]. A
    /// large delivery (a tree deleted) then goes in parts, and what it holds is bounded
    /// by a part.
    ///
    /// A path `deleted` (this node has nothing there) with waiting paths below it that
    /// this part leaves out stays for a later part: the peer deletes a directory only
    /// once it is empty. Parts go in path order, so a directory put comes before what it
    /// holds.
    pub(crate) fn take_some(
        &self,
        limit: usize,
        whole: impl Fn(&str) -> bool,
        deleted: impl Fn(&str) -> bool,
    ) -> BTreeMap<LogicalPath, Known> {
        let mut paths = self.paths.lock().expect("outbox lock");
        let waiting: Vec<LogicalPath> = {
            let all: Vec<&str> = paths
                .known
                .iter()
                .filter(|(path, known)| paths.is_waiting(path, known))
                .map(|(path, _)| path.as_str())
                .collect();
            let (mut counted, mut chosen) = (0, Vec::new());
            // Paths past the limit, in order: those this part leaves out.
            let mut left: Vec<&str> = Vec::new();
            for path in all {
                if whole(path) {
                    chosen.push(path);
                } else if counted < limit {
                    counted += 1;
                    chosen.push(path);
                } else {
                    left.push(path);
                }
            }
            let below_left = |dir: &str| {
                let prefix = format!("{dir}/");
                let first = left.partition_point(|p| *p < prefix.as_str());
                left.get(first).is_some_and(|p| p.starts_with(&prefix))
            };
            chosen
                .into_iter()
                .filter(|path| left.is_empty() || !below_left(path) || !deleted(path))
                .map(|path| paths.known.get_key_value(path).expect("listed").0.clone())
                .collect()
        };
        let mut taken = BTreeMap::new();
        for path in waiting {
            let known = paths.known.remove(path.as_str()).expect("listed");
            paths.in_flight.insert(
                path.clone(),
                InFlight {
                    holds: known.holds.clone(),
                    sent: known.sent.clone(),
                },
            );
            taken.insert(path, known);
        }
        taken
    }

    /// Notes what is being sent for paths in flight (`None` in `ours`: a deletion).
    pub(crate) fn sending(&self, ours: &Manifest) {
        let mut paths = self.paths.lock().expect("outbox lock");
        for (path, flight) in paths.in_flight.iter_mut() {
            flight.sent = Some(Box::new(Sent {
                entry: ours.get(path.as_str()).cloned(),
            }));
        }
    }

    /// Puts taken differences back as they were (their push was not even tried).
    pub(crate) fn put_back(&self, taken: BTreeMap<LogicalPath, Known>) {
        let mut paths = self.paths.lock().expect("outbox lock");
        for (path, known) in taken {
            paths.in_flight.remove(&path);
            match paths.known.entry(path) {
                std::collections::btree_map::Entry::Occupied(mut newer) => {
                    newer.get_mut().holds = known.holds;
                    newer.get_mut().sent = known.sent;
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(known);
                }
            }
        }
    }

    /// Puts back what a delivery learnt of `path`: the peer holds `holds`. A newer edit
    /// merged while the push was under way stays waiting, now against that state;
    /// otherwise the path waits (`held` is `None`) or is held.
    pub(crate) fn learn(&self, path: LogicalPath, holds: Option<Entry>, held: Option<Held>) {
        self.put(path, holds, held, false);
    }

    /// [`Outbox::learn`] after a push whose answer never came: the peer may hold the
    /// version sent, and is asked before the next push.
    pub(crate) fn unanswered(&self, path: LogicalPath, holds: Option<Entry>) {
        self.put(path, holds, None, true);
    }

    pub(crate) fn put(
        &self,
        path: LogicalPath,
        holds: Option<Entry>,
        held: Option<Held>,
        maybe_sent: bool,
    ) {
        let mut paths = self.paths.lock().expect("outbox lock");
        let flight = paths.in_flight.remove(path.as_str());
        let sent = if maybe_sent {
            flight.and_then(|f| f.sent)
        } else {
            None
        };
        if held.is_some() {
            paths.stamp_held(&path);
        }
        let held = held.map(Box::new);
        match paths.known.entry(path) {
            // Touched by a burst that has not ended: what the push learnt stands (a
            // retry, a hold) whether or not the burst finds a change; a change releases
            // it as any new edit does.
            std::collections::btree_map::Entry::Occupied(mut touched)
                if touched.get().provisional =>
            {
                *touched.get_mut() = Known {
                    holds,
                    held,
                    sent,
                    provisional: false,
                };
            }
            std::collections::btree_map::Entry::Occupied(mut newer) => {
                newer.get_mut().holds = holds;
                newer.get_mut().sent = sent;
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Known {
                    holds,
                    held,
                    sent,
                    provisional: false,
                });
            }
        }
    }

    /// The push of `path` landed: the peer holds this node's version.
    pub(crate) fn delivered(&self, path: &str) {
        self.paths
            .lock()
            .expect("outbox lock")
            .in_flight
            .remove(path);
    }

    /// Records how the push of `sent` (path -> what the peer was expected to hold)
    /// ended, from the peer's answers.
    pub(crate) fn settle(
        &self,
        sent: BTreeMap<LogicalPath, Option<Entry>>,
        report: &PeerReport,
    ) -> Settled {
        let mut settled = Settled::default();
        if let Some(e) = &report.error {
            for (path, holds) in sent {
                if report.refused {
                    settled.held += 1;
                    self.learn(path, holds, Some(Held::Refused(e.clone())));
                } else {
                    // Unreachable, busy, or the connection lost before the answer: the
                    // batch may have been applied.
                    settled.retry += 1;
                    self.unanswered(path, holds);
                }
            }
            return settled;
        }
        // By path, once: a catch-up push can carry many thousands.
        let changed_locally: std::collections::HashSet<&str> =
            report.changed_locally.iter().map(String::as_str).collect();
        let mut not_done: std::collections::HashMap<LogicalPath, ChangeStatus> = Default::default();
        for change in &report.changes {
            if !matches!(change.status, ChangeStatus::Done(_)) {
                // A type change is two operations on one path: the first not done decides.
                not_done.entry(change.path).or_insert(change.status);
            }
        }
        let maybe_applied: std::collections::HashSet<&str> =
            report.maybe_applied.iter().map(String::as_str).collect();
        let found: std::collections::HashMap<&str, &Option<Entry>> = report
            .peer_holds
            .iter()
            .map(|(path, entry)| (path.as_str(), entry))
            .collect();
        for (path, expected) in sent {
            // Written again here while it was being pushed: not sent, and the write's own
            // burst brings the new content.
            if changed_locally.contains(path.as_str()) {
                self.learn(path, expected, None);
                continue;
            }
            let Some(status) = not_done.get(path.as_str()) else {
                settled.delivered += 1;
                self.delivered(&path);
                continue;
            };
            // The peer says what it holds there. Where that is not what it was expected
            // to hold, it is the peer's own edit: held as a conflict (the next push is
            // refused against it, never overwrites it), not retried nor taken as known.
            let edited_there = found.get(path.as_str()).is_some_and(|now| {
                !crate::protocol::same_or_absent(now.as_ref(), expected.as_ref(), false)
            });
            let held = match status {
                ChangeStatus::Done(_) => unreachable!("filtered above"),
                ChangeStatus::Conflict(r) => Some(Held::Conflict(bounded(r))),
                _ if edited_there => Some(Held::Conflict(
                    "the peer holds another version than expected (an edit made there)".into(),
                )),
                ChangeStatus::Failed(_) => None,
                ChangeStatus::Rejected(r) => Some(Held::Rejected(bounded(r))),
                ChangeStatus::Refused(r) => Some(Held::Refused(bounded(r))),
                ChangeStatus::Kept(r) => Some(Held::Kept(bounded(r))),
            };
            match held {
                None => settled.retry += 1,
                Some(_) => settled.held += 1,
            }
            // An earlier try may have applied it: the peer is asked before the next push.
            if held.is_none() && maybe_applied.contains(path.as_str()) {
                self.unanswered(path, expected);
                continue;
            }
            self.learn(path, expected, held);
        }
        self.paths.lock().expect("outbox lock").maybe_done_waiting();
        settled
    }

    /// Forgets what is held at `path`: this node received it from a peer, so its own
    /// version changed and what was held against the previous one no longer holds.
    pub fn received(&self, path: &str) {
        let mut paths = self.paths.lock().expect("outbox lock");
        if paths
            .known
            .get(path)
            .is_some_and(|known| known.held.is_some())
        {
            paths.known.remove(path);
        }
    }

    /// Forgets what is held where a push's answer says the peer holds what this node
    /// holds now (`ours`; owners compared where `owners`): the difference it was held for
    /// is gone. A conflict the peer refused while its own, newer version won here
    /// (`on_conflict = "newest"`) is answered after that version was received, and
    /// [`Outbox::received`] came too early to forget it.
    pub(crate) fn agreed(
        &self,
        peer_holds: &[(String, Option<Entry>)],
        ours: impl Fn(&str) -> Option<Entry>,
        owners: bool,
    ) {
        let same: std::collections::HashSet<&str> = peer_holds
            .iter()
            .filter(|(path, theirs)| {
                crate::protocol::same_or_absent(ours(path).as_ref(), theirs.as_ref(), owners)
            })
            .map(|(path, _)| path.as_str())
            .collect();
        if !same.is_empty() {
            self.forget_held(|path| same.contains(path));
        }
    }

    /// Forgets the held paths `which` selects: the peer was found to hold this node's
    /// version there (an operator's `sync`, an edit on the peer).
    pub fn forget_held(&self, which: impl Fn(&str) -> bool) {
        self.forget_held_before(u64::MAX, which);
    }

    /// Where the holds learnt so far end: a comparison takes it before it looks at the
    /// trees, and forgets with [`Outbox::forget_held_before`] only what it could have
    /// seen.
    pub fn mark(&self) -> u64 {
        self.paths.lock().expect("outbox lock").holds_learnt
    }

    /// [`Outbox::forget_held`] of the holds learnt up to `mark` only. A hold learnt
    /// after it (a peer rejecting a change while the comparison ran) is newer than the
    /// comparison's view, which showed the trees before the change: forgetting it would
    /// plan the next edit against a version the peer never kept.
    pub fn forget_held_before(&self, mark: u64, which: impl Fn(&str) -> bool) {
        let mut paths = self.paths.lock().expect("outbox lock");
        let Paths { known, held_at, .. } = &mut *paths;
        known.retain(|path, known| {
            known.held.is_none()
                || !which(path)
                || held_at.get(path.as_str()).is_some_and(|&at| at > mark)
        });
        held_at.retain(|path, _| known.get(path.as_str()).is_some_and(|k| k.held.is_some()));
    }

    /// Hands every difference over to `other` (a daemon reloading its config passes
    /// them to its successor), keeping the older expectation where both have a path,
    /// and wakes it.
    pub fn hand_over(&self, other: &Outbox) {
        let (taken, since) = {
            let mut paths = self.paths.lock().expect("outbox lock");
            let all = snapshot_of(&paths);
            let since = paths.waiting_since;
            *paths = Paths::default();
            (all, since)
        };
        if taken.is_empty() {
            return;
        }
        other.restore(taken);
        if let Some(since) = since {
            let mut theirs = other.paths.lock().expect("outbox lock");
            theirs.started_waiting(since);
            theirs.maybe_done_waiting();
        }
        other.wake();
    }

    /// Adds differences known from elsewhere (a predecessor, the spool): their
    /// expectation is the older one and wins; a newer edit waiting here keeps its path
    /// released; nothing restored is provisional (its burst is over).
    pub fn restore(&self, known: BTreeMap<LogicalPath, Known>) {
        let mut paths = self.paths.lock().expect("outbox lock");
        for (path, mut older) in known {
            older.provisional = false;
            if older.held.is_some() {
                // Learnt before, elsewhere; stamped now, so that a comparison running
                // meanwhile keeps it (the next one judges it).
                paths.stamp_held(&path);
            }
            match paths.known.entry(path) {
                std::collections::btree_map::Entry::Occupied(mut newer) => {
                    let newer = newer.get_mut();
                    newer.holds = older.holds;
                    newer.sent = older.sent;
                    if !newer.provisional && newer.held.is_none() {
                        older.held = None;
                    }
                    newer.held = older.held;
                    newer.provisional = false;
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(older);
                }
            }
        }
        paths.started_waiting(std::time::SystemTime::now());
        paths.maybe_done_waiting();
    }

    /// Every difference, those in flight included (with what the peer was expected to
    /// hold when they were sent), for the spool and comparisons.
    pub fn snapshot(&self) -> BTreeMap<LogicalPath, Known> {
        snapshot_of(&self.paths.lock().expect("outbox lock"))
    }

    /// The differences held, with why.
    pub fn held(&self) -> Vec<(String, Held)> {
        self.paths
            .lock()
            .expect("outbox lock")
            .known
            .iter()
            .filter_map(|(path, known)| {
                known
                    .held
                    .as_deref()
                    .map(|held| (path.to_string(), held.clone()))
            })
            .collect()
    }

    /// The first path waiting for delivery in each group `group` puts paths in (their
    /// configured directories): enough to ask the peer its terms for all of them.
    pub fn first_waiting<K: PartialEq>(&self, group: impl Fn(&str) -> Option<K>) -> Vec<String> {
        let paths = self.paths.lock().expect("outbox lock");
        let mut seen: Vec<K> = Vec::new();
        let mut first = Vec::new();
        for (path, known) in &paths.known {
            if !paths.is_waiting(path, known) {
                continue;
            }
            if let Some(key) = group(path) {
                if !seen.contains(&key) {
                    seen.push(key);
                    first.push(path.to_string());
                }
            }
        }
        first
    }

    /// How many paths wait for delivery or are being pushed.
    pub fn len(&self) -> usize {
        self.paths.lock().expect("outbox lock").waiting()
    }

    /// How long the oldest change still waiting has waited (`None`: none waits).
    pub fn oldest_waiting(&self) -> Option<std::time::Duration> {
        let paths = self.paths.lock().expect("outbox lock");
        let since = paths.waiting_since?;
        (paths.waiting() > 0).then(|| since.elapsed().unwrap_or_default())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether nothing is known of the peer where it differs: nothing waits, is being
    /// pushed, or is held (what a spool would keep of it).
    pub fn holds_nothing(&self) -> bool {
        let paths = self.paths.lock().expect("outbox lock");
        paths.known.is_empty() && paths.in_flight.is_empty()
    }
}

/// Calls `each` with every difference the outboxes of one peer hold (a reload's
/// predecessor's and successor's, in the order registered), in path order, as
/// [`Outbox::snapshot`] of each has them, the first outbox's where two hold a path:
/// without copying them, so that a spool of 100,000 paths is written with none copied.
/// Every outbox is locked meanwhile: each must be given once.
pub(crate) fn each_spooled(outboxes: &[Arc<Outbox>], mut each: impl FnMut(&str, &Known)) {
    let guards: Vec<_> = outboxes
        .iter()
        .map(|outbox| outbox.paths.lock().expect("outbox lock"))
        .collect();
    type Source<'a> = std::iter::Peekable<Box<dyn Iterator<Item = (&'a str, Cow<'a, Known>)> + 'a>>;
    // In the order they win where they hold the same path: an outbox's paths in flight
    // stand for its record of them, and an earlier outbox's for a later one's.
    let mut sources: Vec<Source<'_>> = Vec::new();
    for paths in &guards {
        let in_flight = paths
            .in_flight
            .iter()
            .map(|(path, flight)| (path.as_str(), Cow::Owned(flight.as_known())));
        let known = paths
            .known
            .iter()
            .map(|(path, known)| (path.as_str(), Cow::Borrowed(known)));
        sources.push((Box::new(in_flight) as Box<dyn Iterator<Item = _>>).peekable());
        sources.push((Box::new(known) as Box<dyn Iterator<Item = _>>).peekable());
    }
    loop {
        let Some(first) = sources
            .iter_mut()
            .filter_map(|s| s.peek().map(|(p, _)| *p))
            .min()
        else {
            return;
        };
        let mut told = false;
        for source in &mut sources {
            if source.peek().is_some_and(|(path, _)| *path == first) {
                let (path, known) = source.next().expect("peeked");
                if !std::mem::replace(&mut told, true) {
                    each(path, &known);
                }
            }
        }
    }
}

fn snapshot_of(paths: &Paths) -> BTreeMap<LogicalPath, Known> {
    let mut all = paths.known.clone();
    for (path, flight) in &paths.in_flight {
        all.insert(path.clone(), flight.as_known());
    }
    all
}

/// The longest reason kept for a held path: a peer's answer is not trusted to be small.
const HELD_REASON_BYTES: usize = 4096;

fn bounded(reason: &str) -> String {
    let mut end = reason.len().min(HELD_REASON_BYTES);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{file_entry, put};

    /// What the peer is expected to hold at each path taken for delivery.
    fn take(outbox: &Outbox) -> BTreeMap<LogicalPath, Option<Entry>> {
        outbox
            .take()
            .into_iter()
            .map(|(path, known)| (path, known.holds))
            .collect()
    }

    #[test]
    fn a_large_touch_or_merge_notes_each_new_path_once_the_first_of_it_winning() {
        let outbox = Outbox::default();
        // Waiting already: a touch leaves it as it is.
        outbox.merge(&[update("/d/0000", b"before", b"now")], no_dir);
        let mut touched: Vec<(LogicalPath, Option<Entry>)> = (0..1000)
            .map(|i| (format!("/d/{i:04}").into(), Some(file_entry(b"first"))))
            .collect();
        touched.push(("/d/0007".into(), Some(file_entry(b"second"))));
        touched.reverse();
        touched.swap(0, 1000);
        assert!(outbox.touch(&touched));
        let all = outbox.snapshot();
        assert_eq!(all.len(), 1000);
        assert_eq!(all["/d/0000"].holds, Some(file_entry(b"before")));
        assert!(!all["/d/0000"].provisional);
        assert_eq!(all["/d/0007"].holds, Some(file_entry(b"first")));
        assert!(all["/d/0999"].provisional);
        assert!(!outbox.touch(&touched), "nothing new");

        // A merge of many new paths, one of them twice (a type change): the first
        // operation's expectation stands, as one at a time.
        let mut ops: Vec<Op> = (0..1000)
            .map(|i| update(&format!("/e/{i:04}"), b"old", b"new"))
            .collect();
        ops.push(update("/e/0500", b"other", b"newer"));
        outbox.merge(&ops, no_dir);
        let all = outbox.snapshot();
        assert_eq!(all.len(), 2000);
        assert_eq!(all["/e/0500"].holds, Some(file_entry(b"old")));
        assert!(all.values().filter(|k| k.provisional).count() == 999);
    }

    #[test]
    fn the_spooled_walk_is_each_outboxs_snapshot_the_first_one_winning() {
        let known = |holds: &[u8]| Known {
            holds: Some(file_entry(holds)),
            held: None,
            sent: None,
            provisional: false,
        };
        let first = Arc::new(Outbox::default());
        first.restore(BTreeMap::from([
            ("/d/a".into(), known(b"a1")),
            ("/d/b".into(), known(b"b1")),
        ]));
        // In flight, with what was sent; then a newer edit of one of them waits beside.
        first.take();
        first.sending(&BTreeMap::from([("/d/a".into(), file_entry(b"a2"))]));
        first.merge(&[update("/d/a", b"a2", b"a3")], no_dir);
        first.touch(&[("/d/e".into(), None)]);
        first.learn("/d/f".into(), None, Some(Held::Refused("too large".into())));
        let second = Arc::new(Outbox::default());
        second.restore(BTreeMap::from([
            ("/d/a".into(), known(b"other")),
            ("/d/c".into(), known(b"c")),
        ]));
        second.take();
        second.restore(BTreeMap::from([("/d/0".into(), known(b"0"))]));

        let mut expected = first.snapshot();
        for (path, known) in second.snapshot() {
            expected.entry(path).or_insert(known);
        }
        let mut walked: Vec<(LogicalPath, Known)> = Vec::new();
        each_spooled(&[first.clone(), second.clone()], |path, known| {
            walked.push((path.into(), known.clone()));
        });
        assert_eq!(walked, expected.into_iter().collect::<Vec<_>>());
        assert_eq!(walked.len(), 6, "{walked:?}");
        // The path in flight stands for the newer edit waiting beside it, as spooled.
        let a = &walked.iter().find(|(p, _)| p == "/d/a").unwrap().1;
        assert_eq!(a.holds, Some(file_entry(b"a1")));
        assert_eq!(
            a.sent.as_deref(),
            Some(&Sent {
                entry: Some(file_entry(b"a2"))
            })
        );
    }

    /// Paths in no configured directory: a rejection is released path by path.
    fn no_dir(_: &str) -> Option<String> {
        None
    }

    fn update(path: &str, from: &[u8], to: &[u8]) -> Op {
        Op {
            expect: Some(Box::new(file_entry(from))),
            ..put(path, to)
        }
    }

    #[test]
    fn a_large_delivery_goes_in_parts_a_directory_deleted_after_what_it_held() {
        let outbox = Outbox::default();
        let gone = |path: &str| Op {
            path: path.into(),
            action: crate::protocol::Action::Delete,
            expect: Some(Box::new(file_entry(b"x"))),
        };
        // A tree deleted here (/d/old and the 5 files in it), a tree put (/d/new and 5
        // files), and 3 files in a directory the peer judges whole (/w).
        let mut ops = vec![gone("/d/old"), put("/d/new", b"")];
        for i in 0..5 {
            ops.push(gone(&format!("/d/old/f{i}")));
            ops.push(put(&format!("/d/new/f{i}"), b"n"));
            if i < 3 {
                ops.push(put(&format!("/w/f{i}"), b"w"));
            }
        }
        outbox.merge(&ops, no_dir);
        let deleted = |path: &str| path.starts_with("/d/old");
        let whole = |path: &str| is_within(path, "/w");
        let take_some = |limit| -> Vec<String> {
            let taken: Vec<LogicalPath> = outbox
                .take_some(limit, whole, deleted)
                .into_keys()
                .collect();
            let done = PeerReport {
                changes: taken
                    .iter()
                    .map(|path| crate::sync::Change {
                        path: path.clone(),
                        status: ChangeStatus::Done(crate::protocol::ChangeKind::Added),
                    })
                    .collect(),
                ..PeerReport::default()
            };
            let pending = taken.iter().map(|p| (p.clone(), None)).collect();
            outbox.settle(pending, &done);
            taken.iter().map(|p| p.to_string()).collect()
        };
        // The directory put goes first with what follows it; the paths of /w all go.
        assert_eq!(
            take_some(4),
            [
                "/d/new",
                "/d/new/f0",
                "/d/new/f1",
                "/d/new/f2",
                "/w/f0",
                "/w/f1",
                "/w/f2"
            ]
        );
        // /d/old still holds paths left for later: it waits.
        assert_eq!(take_some(4), ["/d/new/f3", "/d/new/f4", "/d/old/f0"]);
        assert_eq!(take_some(4), ["/d/old/f1", "/d/old/f2", "/d/old/f3"]);
        // What it held fits in this part: it goes with it.
        assert_eq!(take_some(4), ["/d/old", "/d/old/f4"]);
        assert!(take_some(4).is_empty());
        assert_eq!(outbox.len(), 0);
    }

    #[test]
    fn the_first_path_waiting_in_each_directory_is_enough_to_ask_a_peer_its_terms() {
        let outbox = Outbox::default();
        let top = |path: &str| path.split('/').nth(1).map(str::to_string);
        assert!(outbox.first_waiting(top).is_empty());
        // A held path is not waiting.
        outbox.restore(BTreeMap::from([(
            "/c/1".into(),
            Known {
                holds: None,
                held: Some(Box::new(Held::Refused("too large".into()))),
                sent: None,
                provisional: false,
            },
        )]));
        outbox.merge(
            &[put("/a/2", b"x"), put("/a/1", b"x"), put("/b/9", b"x")],
            no_dir,
        );
        assert_eq!(outbox.first_waiting(top), ["/a/1", "/b/9"]);
    }

    #[test]
    fn a_waiting_path_keeps_the_version_the_peer_still_holds() {
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"v1", b"v2")], no_dir);
        outbox.merge(&[update("/d/a", b"v2", b"v3"), put("/d/b", b"new")], no_dir);
        let pending = take(&outbox);
        assert_eq!(pending["/d/a"], Some(file_entry(b"v1")));
        assert_eq!(pending["/d/b"], None);
        assert_eq!(outbox.len(), 2, "in flight until settled");
        assert!(take(&outbox).is_empty(), "never taken twice");
        // In flight, they are still spooled, with what the peer was expected to hold.
        assert_eq!(outbox.snapshot()["/d/a"].holds, Some(file_entry(b"v1")));
    }

    fn answered(path: &str, status: ChangeStatus, holds: Option<Entry>) -> PeerReport {
        PeerReport {
            changes: vec![crate::sync::Change {
                path: path.into(),
                status,
            }]
            .into(),
            peer_holds: vec![(path.into(), holds)],
            ..PeerReport::default()
        }
    }

    #[test]
    fn a_failed_delivery_restores_the_older_expectations() {
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"v1", b"v2")], no_dir);
        let in_flight = take(&outbox);
        // An edit made while the push was under way assumes the peer got v2.
        outbox.merge(&[update("/d/a", b"v2", b"v3")], no_dir);
        // The push failed: the peer still holds v1.
        let unreachable = PeerReport {
            error: Some("connection refused".into()),
            ..PeerReport::default()
        };
        let settled = outbox.settle(in_flight, &unreachable);
        assert_eq!(settled.retry, 1);
        assert_eq!(take(&outbox)["/d/a"], Some(file_entry(b"v1")));
    }

    #[test]
    fn a_change_failing_after_a_try_that_may_have_applied_it_asks_the_peer_first() {
        // A push of v1 whose one change failed, as `report` says.
        let pushed = |report: &PeerReport| {
            let outbox = Outbox::default();
            outbox.merge(&[put("/d/a", b"v1")], no_dir);
            let sent = outbox.take();
            let ours = [("/d/a".into(), file_entry(b"v1"))];
            outbox.sending(&ours.into_iter().collect());
            let sent = sent.into_iter().map(|(p, k)| (p, k.holds)).collect();
            assert_eq!(outbox.settle(sent, report).retry, 1);
            outbox.snapshot()
        };
        // The first try's connection was reset after the request went out; the second
        // could not read the file (deleted here meanwhile).
        let mut report = answered("/d/a", ChangeStatus::Failed("cannot read".into()), None);
        report.peer_holds.clear();
        report.maybe_applied.push("/d/a".into());
        let waiting = pushed(&report);
        assert_eq!(waiting["/d/a"].holds, None);
        assert_eq!(
            waiting["/d/a"].sent.as_deref(),
            Some(&Sent {
                entry: Some(file_entry(b"v1"))
            }),
            "the peer may hold the version sent: it is asked before the next push"
        );
        // Without that doubt, what failed is simply retried against the older state.
        report.maybe_applied.clear();
        assert_eq!(pushed(&report)["/d/a"].sent, None);
    }

    #[test]
    fn a_rejected_change_is_held_and_the_next_edit_expects_what_the_peer_kept() {
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"good", b"bad")], no_dir);
        let sent = take(&outbox);
        let report = answered(
            "/d/a",
            ChangeStatus::Rejected("validation failed".into()),
            Some(file_entry(b"good")),
        );
        let settled = outbox.settle(sent, &report);
        assert_eq!((settled.held, settled.retry), (1, 0));
        assert!(take(&outbox).is_empty(), "held, not retried");
        assert_eq!(outbox.held()[0].1.kind(), HeldKind::Rejected);
        // The fix is planned against this node's previous version (bad), but the peer
        // holds good: that is what the delivery must expect.
        outbox.merge(&[update("/d/a", b"bad", b"fixed")], no_dir);
        assert_eq!(take(&outbox)["/d/a"], Some(file_entry(b"good")));
        assert!(outbox.held().is_empty());
    }

    #[test]
    fn an_edit_in_a_directory_releases_every_change_its_validation_rejected_with_it() {
        let outbox = Outbox::default();
        let app = |path: &str| path.starts_with("/d/").then(|| "/d".into());
        outbox.merge(
            &[
                update("/d/a", b"1", b"bad"),
                update("/d/b", b"1", b"2"),
                update("/e/c", b"1", b"2"),
            ],
            app,
        );
        let sent = take(&outbox);
        let mut report = PeerReport::default();
        for path in ["/d/a", "/d/b", "/e/c"] {
            report.changes.push(crate::sync::Change {
                path: path.into(),
                status: ChangeStatus::Rejected("validation failed".into()),
            });
        }
        outbox.settle(sent, &report);
        // The fix of /d/a: /d/b, rejected with it, goes again; /e/c waits for its own.
        outbox.merge(&[update("/d/a", b"bad", b"fixed")], app);
        let again: Vec<LogicalPath> = take(&outbox).into_keys().collect();
        assert_eq!(again, ["/d/a", "/d/b"]);
        assert_eq!(outbox.held().len(), 1);
    }

    #[test]
    fn touched_paths_are_spooled_before_their_burst_ends_without_overriding_what_waits() {
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"v1", b"v2")], no_dir);
        outbox.touch(&[
            ("/d/a".into(), Some(file_entry(b"v2"))),
            ("/d/b".into(), Some(file_entry(b"b1"))),
        ]);
        let spooled = outbox.snapshot();
        assert_eq!(
            spooled["/d/a"].holds,
            Some(file_entry(b"v1")),
            "the older expectation"
        );
        assert_eq!(spooled["/d/b"].holds, Some(file_entry(b"b1")));
        // Not delivered before its burst ends: a delivery woken meanwhile must not find
        // it unchanged and drop it.
        assert_eq!(take(&outbox).into_keys().collect::<Vec<_>>(), ["/d/a"]);
        assert_eq!(outbox.len(), 1, "what is touched is not pending");
        // Its burst ends: /d/b changed after all, and goes; a path touched and not
        // changed is dropped.
        outbox.touch(&[("/d/c".into(), None)]);
        outbox.merge(&[update("/d/b", b"b1", b"b2")], no_dir);
        outbox.touch(&[("/e/next".into(), None)]);
        outbox.drop_provisional(&["/d".into()]);
        assert!(!outbox.snapshot().contains_key("/d/c"));
        assert!(
            outbox.snapshot()["/e/next"].provisional,
            "touched by the next burst: kept"
        );
        outbox.drop_provisional(&[]);
        assert!(!outbox.snapshot().contains_key("/e/next"));
        assert_eq!(take(&outbox).into_keys().collect::<Vec<_>>(), ["/d/b"]);
    }

    #[test]
    fn a_path_touched_while_it_is_pushed_stays_spooled_once_the_push_lands() {
        // A directory made, pushed, and renamed away while the push is under way: once
        // the push lands, the spool must still say that the path was written again.
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"v1", b"v2")], no_dir);
        let sent: BTreeMap<_, _> = take(&outbox);
        outbox.touch(&[("/d/a".into(), Some(file_entry(b"v2")))]);
        assert_eq!(
            outbox.snapshot()["/d/a"].holds,
            Some(file_entry(b"v1")),
            "while in flight, the spool holds the flight's expectation"
        );
        assert!(
            take(&outbox).is_empty(),
            "neither taken twice nor before its burst ends"
        );
        let settled = outbox.settle(sent, &PeerReport::default());
        assert_eq!(settled.delivered, 1);
        let spooled = outbox.snapshot();
        assert_eq!(
            spooled["/d/a"].holds,
            Some(file_entry(b"v2")),
            "the version landed"
        );
        // The burst ends with the change: it goes against v2.
        outbox.merge(&[update("/d/a", b"v2", b"v3")], no_dir);
        assert_eq!(take(&outbox)["/d/a"], Some(file_entry(b"v2")));
    }

    #[test]
    fn a_touch_that_read_the_new_version_still_delivers_the_change() {
        // The touch's thread read the baseline after the burst recorded v2.
        let outbox = Outbox::default();
        outbox.touch(&[("/d/a".into(), Some(file_entry(b"v2")))]);
        outbox.merge(&[update("/d/a", b"v1", b"v2")], no_dir);
        assert_eq!(take(&outbox)["/d/a"], Some(file_entry(b"v1")));
    }

    #[test]
    fn a_push_refused_while_its_path_is_touched_stays_held_if_the_burst_finds_no_change() {
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"v1", b"v2")], no_dir);
        let sent = take(&outbox);
        outbox.touch(&[("/d/a".into(), Some(file_entry(b"v2")))]);
        let report = answered(
            "/d/a",
            ChangeStatus::Rejected("validate failed".into()),
            None,
        );
        let settled = outbox.settle(sent, &report);
        assert_eq!(settled.held, 1);
        outbox.drop_provisional(&[]);
        assert_eq!(outbox.held().len(), 1, "the rejection is not forgotten");
        assert_eq!(outbox.snapshot()["/d/a"].holds, Some(file_entry(b"v1")));
    }

    #[test]
    fn a_failure_on_a_peer_that_holds_its_own_edit_is_held_as_a_conflict_not_retried_over_it() {
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"v1", b"v2")], no_dir);
        let sent = outbox.take();
        let sent = sent.into_iter().map(|(p, k)| (p, k.holds)).collect();
        let report = answered(
            "/d/a",
            ChangeStatus::Failed("Permission denied".into()),
            Some(file_entry(b"saved on the peer")),
        );
        let settled = outbox.settle(sent, &report);
        assert_eq!((settled.retry, settled.held), (0, 1));
        assert_eq!(outbox.held()[0].1.kind(), HeldKind::Conflict);
        // The next edit is still planned against v1: refused by the peer, never
        // overwriting its edit.
        outbox.merge(&[update("/d/a", b"v2", b"v3")], no_dir);
        assert_eq!(take(&outbox)["/d/a"], Some(file_entry(b"v1")));
    }

    #[test]
    fn a_restored_difference_keeps_the_older_expectation_and_is_never_provisional() {
        let outbox = Outbox::default();
        // A newer edit waits here; the predecessor knew the peer held v1 and held a
        // rejection there.
        outbox.merge(&[update("/d/a", b"v2", b"v3")], no_dir);
        outbox.touch(&[("/d/b".into(), None)]);
        let older = |holds: &[u8], held: Option<Held>| Known {
            holds: Some(file_entry(holds)),
            held: held.map(Box::new),
            sent: None,
            provisional: true,
        };
        outbox.restore(BTreeMap::from([
            (
                "/d/a".into(),
                older(b"v1", Some(Held::Rejected("no".into()))),
            ),
            ("/d/b".into(), older(b"b1", None)),
        ]));
        assert!(outbox.held().is_empty(), "the newer edit released /d/a");
        let taken = take(&outbox);
        assert_eq!(taken["/d/a"], Some(file_entry(b"v1")));
        assert_eq!(
            taken["/d/b"],
            Some(file_entry(b"b1")),
            "not provisional any more"
        );
    }

    #[test]
    fn a_conflict_keeps_expecting_the_old_version_so_the_peers_edit_is_never_overwritten() {
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"v1", b"v2")], no_dir);
        let sent = take(&outbox);
        let report = answered(
            "/d/a",
            ChangeStatus::Conflict("changed on the peer".into()),
            Some(file_entry(b"edited on the peer")),
        );
        outbox.settle(sent, &report);
        outbox.merge(&[update("/d/a", b"v2", b"v3")], no_dir);
        assert_eq!(take(&outbox)["/d/a"], Some(file_entry(b"v1")));
    }

    #[test]
    fn a_passing_failure_is_retried_against_what_the_peer_holds() {
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"v1", b"v2"), put("/d/b", b"new")], no_dir);
        let sent = take(&outbox);
        let mut report = answered(
            "/d/a",
            ChangeStatus::Failed("No space left on device".into()),
            Some(file_entry(b"v1")),
        );
        report.changes.push(crate::sync::Change {
            path: "/d/b".into(),
            status: ChangeStatus::Done(crate::protocol::ChangeKind::Added),
        });
        let settled = outbox.settle(sent, &report);
        assert_eq!((settled.delivered, settled.retry, settled.held), (1, 1, 0));
        let again = take(&outbox);
        assert_eq!(again.len(), 1, "only the failed path waits: {again:?}");
        assert_eq!(again["/d/a"], Some(file_entry(b"v1")));
    }

    #[test]
    fn a_comparison_forgets_only_the_held_paths_it_found_settled() {
        let outbox = Outbox::default();
        outbox.merge(
            &[update("/d/a", b"v1", b"v2"), update("/e/b", b"v1", b"v2")],
            no_dir,
        );
        let sent = take(&outbox);
        let mut report = answered(
            "/d/a",
            ChangeStatus::Rejected("no".into()),
            Some(file_entry(b"v1")),
        );
        report.changes.push(crate::sync::Change {
            path: "/e/b".into(),
            status: ChangeStatus::Rejected("no".into()),
        });
        outbox.settle(sent, &report);
        outbox.merge(&[update("/d/c", b"v1", b"v2")], no_dir);
        outbox.forget_held(|path| path.starts_with("/d/"));
        let held: Vec<String> = outbox.held().into_iter().map(|(p, _)| p).collect();
        assert_eq!(held, ["/e/b"]);
        assert_eq!(outbox.len(), 1, "what waits is not forgotten");
    }

    #[test]
    fn a_comparison_forgets_only_the_holds_learnt_before_it_began() {
        let outbox = Outbox::default();
        let reject = |outbox: &Outbox, path: &str| {
            outbox.merge(&[update(path, b"v1", b"v2")], no_dir);
            let sent = take(outbox);
            let report = answered(
                path,
                ChangeStatus::Rejected("no".into()),
                Some(file_entry(b"v1")),
            );
            outbox.settle(sent, &report);
        };
        reject(&outbox, "/d/old");
        let mark = outbox.mark();
        // Rejected while the comparison ran: its view shows the trees before the change.
        reject(&outbox, "/d/new");
        outbox.forget_held_before(mark, |_| true);
        let held: Vec<String> = outbox.held().into_iter().map(|(p, _)| p).collect();
        assert_eq!(held, ["/d/new"], "the hold learnt after the mark is kept");
        assert_eq!(outbox.snapshot()["/d/new"].holds, Some(file_entry(b"v1")));
        // The next comparison began after it: it may forget it.
        let mark = outbox.mark();
        outbox.forget_held_before(mark, |_| true);
        assert!(outbox.held().is_empty());
        // Held again after being forgotten: stamped anew.
        reject(&outbox, "/d/old");
        outbox.forget_held_before(mark, |_| true);
        assert_eq!(outbox.held().len(), 1);
    }

    #[test]
    fn a_hold_handed_over_is_newer_than_a_comparison_running_in_the_successor() {
        let (old, new) = (Outbox::default(), Outbox::default());
        old.merge(&[update("/d/a", b"v1", b"v2")], no_dir);
        let sent = take(&old);
        old.settle(
            sent,
            &answered(
                "/d/a",
                ChangeStatus::Rejected("no".into()),
                Some(file_entry(b"v1")),
            ),
        );
        let mark = new.mark();
        old.hand_over(&new);
        new.forget_held_before(mark, |_| true);
        assert_eq!(new.held().len(), 1);
        new.forget_held(|_| true);
        assert!(new.held().is_empty());
    }

    #[test]
    fn receiving_a_path_forgets_what_was_held_there_but_not_what_waits() {
        let outbox = Outbox::default();
        outbox.merge(
            &[update("/d/a", b"v1", b"v2"), update("/d/b", b"v1", b"v2")],
            no_dir,
        );
        let sent = take(&outbox);
        let mut report = answered(
            "/d/a",
            ChangeStatus::Refused("a link in the way".into()),
            Some(file_entry(b"v1")),
        );
        report.error = None;
        outbox.settle(
            sent.into_iter().filter(|(p, _)| p == "/d/a").collect(),
            &report,
        );
        outbox.merge(&[update("/d/b", b"v1", b"v2")], no_dir);
        outbox.received("/d/a");
        outbox.received("/d/b");
        assert!(outbox.held().is_empty());
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn a_conflict_answered_after_the_peers_version_was_received_is_not_held() {
        // This node pushed "mine" planned against "base"; before the answer came it
        // received the peer's newer "theirs", which won here (on_conflict = "newest").
        let outbox = Outbox::default();
        outbox.merge(&[update("/d/a", b"base", b"mine")], no_dir);
        let sent = take(&outbox);
        outbox.received("/d/a");
        let report = answered(
            "/d/a",
            ChangeStatus::Conflict("changed on the peer".into()),
            Some(file_entry(b"theirs")),
        );
        outbox.settle(sent, &report);
        assert_eq!(outbox.held().len(), 1, "the refusal is held first");
        // Another version here: still a conflict.
        outbox.agreed(&report.peer_holds, |_| Some(file_entry(b"mine")), false);
        assert_eq!(outbox.held().len(), 1);
        // This node holds the peer's version now: nothing differs.
        outbox.agreed(&report.peer_holds, |_| Some(file_entry(b"theirs")), false);
        assert!(outbox.held().is_empty());
        assert!(outbox.is_empty());
    }
}
