//! Small files read for the push to one peer, kept a moment for the pushes of the same
//! plan to the other peers, which then neither open nor read them again: an initial
//! sync to three peers reads each file once instead of three times.
//!
//! What is kept is bounded ([`KEPT_BYTES`]). A push that needs room waits for the
//! others to take what they still want, for as long as the oldest content is younger
//! than [`KEPT_FOR`]: the pushes of one plan go at the pace of the slowest, which ends
//! the run anyway, instead of drifting apart; past that, the oldest goes, and a push
//! that comes too late reads the file itself. A content is kept under its path and the
//! digest it was planned with and handed only to a push of that version; it was read
//! as any file is sent (its size and mtime as planned, nothing written while it was
//! read), and every receiver checks its hash.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::plan::Plan;
use crate::protocol::Digest256;

/// Bytes kept at most, all contents of a plan together.
const KEPT_BYTES: usize = 512 * 1024;
/// Largest file kept: larger ones are few, and read by each push.
const KEPT_FILE_BYTES: u64 = 64 * 1024;
/// Longest a push waits for the others to take a content before it lets it go: a push
/// held up longer (a busy peer, a lost connection) no longer sets the pace.
const KEPT_FOR: Duration = Duration::from_millis(500);
/// Pushes that share one plan's contents at most (one bit each).
const SHARERS_MOST: usize = u64::BITS as usize;

/// The contents read by the pushes of one plan, by the place of their operation in it.
#[derive(Debug, Default)]
pub(crate) struct SharedContents {
    kept: Mutex<Kept>,
    /// Told when a content is taken or a push leaves.
    taken: Condvar,
}

#[derive(Debug, Default)]
struct Kept {
    /// One bit per push that has joined and not left.
    members: u64,
    /// The place in the plan each push has reached (of the last content it sent), by
    /// its bit's position: a content before it is no longer wanted by it.
    reached: Vec<Option<usize>>,
    by_index: BTreeMap<usize, Content>,
    bytes: usize,
    /// The pushes that held the one ahead up for [`KEPT_FOR`]: nothing is kept for them
    /// (they read their files themselves) until they catch up with the slowest of the
    /// others, so that one slow or stalled peer does not hold the others to the pace of
    /// a content kept per half second.
    behind: u64,
}

#[derive(Debug)]
struct Content {
    sha256: Digest256,
    bytes: Bytes,
    /// The pushes that may still take it.
    wanted: u64,
    at: Instant,
}

/// One push's part in the contents of its plan; it leaves when dropped.
#[derive(Debug)]
pub(crate) struct Sharer {
    shared: Arc<SharedContents>,
    /// Its bit's position; `None`: it takes and keeps nothing.
    slot: Option<usize>,
}

/// The pushes whose bits `bits` sets, by slot: the bits set only (a few pushes), not
/// every possible one, since this runs for each content kept whenever the room is full.
fn slots(mut bits: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let slot = (bits != 0).then(|| bits.trailing_zeros() as usize)?;
        bits &= bits - 1;
        Some(slot)
    })
}

impl Kept {
    /// Of `wanted`, the pushes that have not gone past `index` yet.
    fn still(&self, wanted: u64, index: usize) -> u64 {
        slots(wanted)
            .filter(|&slot| self.reached[slot].is_none_or(|at| at < index))
            .fold(0, |still, slot| still | (1 << slot))
    }

    /// Whether push `slot`, left behind and now at `index`, has caught up with the
    /// slowest of the others that are not: contents are kept for it again.
    fn caught_up(&self, slot: usize, index: usize) -> bool {
        slots(self.members & !self.behind & !(1 << slot))
            .map(|other| self.reached[other].unwrap_or(0))
            .min()
            .is_none_or(|slowest| index >= slowest)
    }

    /// Lets go of every content no push will take.
    fn forget_unwanted(&mut self) {
        let mut freed = 0;
        let mut contents = std::mem::take(&mut self.by_index);
        contents.retain(|index, content| {
            let keep = self.still(content.wanted, *index) != 0;
            if !keep {
                freed += content.bytes.len();
            }
            keep
        });
        self.by_index = contents;
        self.bytes -= freed;
    }
}

impl SharedContents {
    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.kept.lock().expect("shared contents lock")
    }

    /// A push's part in these contents.
    fn join(self: &Arc<Self>) -> Sharer {
        let mut kept = self.lock();
        let slot = (kept.reached.len() < SHARERS_MOST).then_some(kept.reached.len());
        if let Some(slot) = slot {
            kept.reached.push(None);
            kept.members |= 1 << slot;
        }
        Sharer {
            shared: self.clone(),
            slot,
        }
    }
}

impl Sharer {
    /// A push that shares nothing.
    pub(crate) fn alone() -> Sharer {
        Sharer {
            shared: Arc::default(),
            slot: None,
        }
    }

    /// Whether a file of `size` bytes is looked for among the contents, and kept there
    /// for the others once read.
    pub(crate) fn shares(&self, size: u64) -> bool {
        self.slot.is_some() && size <= KEPT_FILE_BYTES
    }

    /// The content of operation `index` of the plan, at version `sha256`, if another
    /// push read it for this one. This push has reached `index`, either way.
    pub(crate) fn take(&self, index: usize, sha256: &Digest256) -> Option<Bytes> {
        let slot = self.slot?;
        let bit = 1 << slot;
        let mut kept = self.shared.lock();
        kept.reached[slot] = Some(index);
        if kept.behind & bit != 0 && kept.caught_up(slot, index) {
            kept.behind &= !bit;
        }
        let content = kept.by_index.get_mut(&index)?;
        if content.sha256 != *sha256 || content.wanted & bit == 0 {
            return None;
        }
        content.wanted &= !bit;
        let (bytes, done) = (content.bytes.clone(), content.wanted == 0);
        if done {
            kept.by_index.remove(&index);
            kept.bytes -= bytes.len();
        }
        drop(kept);
        self.shared.taken.notify_all();
        Some(bytes)
    }

    /// Keeps `bytes`, the content of operation `index` at version `sha256` just read and
    /// sent by this push, for the others of its plan that have not reached it yet, once
    /// there is room.
    pub(crate) fn keep(&self, index: usize, sha256: Digest256, bytes: Vec<u8>) {
        let Some(slot) = self.slot else {
            return;
        };
        let bit = 1 << slot;
        let mut kept = self.shared.lock();
        kept.reached[slot] = Some(index);
        if let Some(other) = kept.by_index.get_mut(&index) {
            // Read by another push too, meanwhile: this one is past it.
            other.wanted &= !bit;
            return;
        }
        let wanted = kept.still(kept.members & !bit & !kept.behind, index);
        if wanted == 0 || bytes.len() > KEPT_BYTES {
            return;
        }
        // What the others no longer want is let go of first, and again after each wait
        // (they went on meanwhile), but not after the oldest went for its age: a push
        // held up long makes each content kept let go of one or two, not walk them all.
        let mut forget = true;
        while kept.bytes + bytes.len() > KEPT_BYTES {
            if std::mem::take(&mut forget) {
                kept.forget_unwanted();
                continue;
            }
            let Some((&oldest, content)) = kept.by_index.first_key_value() else {
                break;
            };
            // Only the push ahead of all others waits: one behind another is what the
            // others wait for, and keeps nothing rather than hold them up.
            let ahead = (0..kept.reached.len())
                .filter(|&other| other != slot && kept.members & (1 << other) != 0)
                .all(|other| kept.reached[other].is_none_or(|at| at < index));
            match KEPT_FOR.checked_sub(content.at.elapsed()) {
                Some(_) if !ahead => return,
                Some(left) if !left.is_zero() => {
                    kept = self
                        .shared
                        .taken
                        .wait_timeout(kept, left)
                        .expect("shared contents lock")
                        .0;
                    forget = true;
                }
                _ => {
                    // Those that have not taken it in that time are left behind: what
                    // is kept only for them goes.
                    let late = content.wanted;
                    kept.behind |= late;
                    for content in kept.by_index.values_mut() {
                        content.wanted &= !late;
                    }
                    if let Some(gone) = kept.by_index.remove(&oldest) {
                        kept.bytes -= gone.bytes.len();
                    }
                    forget = true;
                }
            }
        }
        // Those it was kept for may have been left behind meanwhile, and what was kept
        // for them alone not let go of yet.
        if wanted & kept.behind != 0 {
            kept.forget_unwanted();
        }
        let wanted = wanted & !kept.behind;
        if wanted == 0 {
            return;
        }
        kept.bytes += bytes.len();
        let content = Content {
            sha256,
            bytes: Bytes::from(bytes),
            wanted,
            at: Instant::now(),
        };
        kept.by_index.insert(index, content);
    }
}

impl Drop for Sharer {
    fn drop(&mut self) {
        let Some(slot) = self.slot else {
            return;
        };
        let mut kept = self.shared.lock();
        kept.members &= !(1 << slot);
        // Past everything: nothing is wanted by it any more.
        kept.reached[slot] = Some(usize::MAX);
        kept.forget_unwanted();
        drop(kept);
        self.shared.taken.notify_all();
    }
}

/// The contents of each plan of a run, which the pushes of that plan share.
#[derive(Debug, Default)]
pub(crate) struct RunContents {
    plans: Mutex<Vec<(Weak<Plan>, Weak<SharedContents>)>>,
}

impl RunContents {
    /// A part in the contents of `plan`, shared with the other pushes of the run that
    /// were given the very same plan.
    pub(crate) fn join(&self, plan: &Arc<Plan>) -> Sharer {
        let mut plans = self.plans.lock().expect("run contents lock");
        plans.retain(|(plan, shared)| plan.strong_count() > 0 && shared.strong_count() > 0);
        let found = plans
            .iter()
            .find(|(p, _)| std::ptr::eq(p.as_ptr(), Arc::as_ptr(plan)))
            .and_then(|(_, shared)| shared.upgrade());
        let shared = found.unwrap_or_else(|| {
            let shared = Arc::new(SharedContents::default());
            plans.push((Arc::downgrade(plan), Arc::downgrade(&shared)));
            shared
        });
        shared.join()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sharers(n: usize) -> Vec<Sharer> {
        let shared = Arc::new(SharedContents::default());
        (0..n).map(|_| shared.join()).collect()
    }

    fn bytes_kept(sharer: &Sharer) -> usize {
        sharer.shared.lock().bytes
    }

    /// A content that fills half the room, and its digest: two of them fill it.
    fn half_the_room() -> (Vec<u8>, Digest256) {
        let block = vec![7u8; KEPT_BYTES / 2];
        let digest = Digest256::of(&block);
        (block, digest)
    }

    #[test]
    fn a_content_is_taken_by_each_other_push_once_at_its_version_only() {
        let s = sharers(3);
        let (v1, v2) = (Digest256::of(b"one"), Digest256::of(b"two"));
        s[0].keep(5, v1, b"one".to_vec());
        assert_eq!(s[1].take(5, &v2), None, "another version");
        assert_eq!(s[1].take(4, &v1), None, "another operation");
        assert_eq!(s[0].take(5, &v1), None, "its reader");
        assert_eq!(s[1].take(5, &v1).as_deref(), Some(&b"one"[..]));
        assert_eq!(s[1].take(5, &v1), None, "once");
        assert_eq!(s[2].take(5, &v1).as_deref(), Some(&b"one"[..]));
        assert_eq!(bytes_kept(&s[0]), 0, "both others took it: gone");
    }

    #[test]
    fn nothing_is_kept_for_a_push_past_it_nor_alone_nor_too_large() {
        let alone = Sharer::alone();
        assert!(!alone.shares(1));
        let digest = Digest256::of(b"x");
        let s = sharers(3);
        assert!(s[0].shares(KEPT_FILE_BYTES) && !s[0].shares(KEPT_FILE_BYTES + 1));
        // The second push read operation 3 itself: it reached it.
        assert_eq!(s[1].take(3, &digest), None);
        s[1].keep(3, digest, b"x".to_vec());
        s[0].keep(2, digest, b"x".to_vec());
        assert_eq!(s[1].take(2, &digest), None, "past it");
        assert!(s[2].take(2, &digest).is_some());
        assert_eq!(bytes_kept(&s[0]), 1, "operation 3, for the third push only");
        // Read by the first push too: it does not want it either.
        s[0].keep(3, digest, b"x".to_vec());
        assert!(s[2].take(3, &digest).is_some());
        assert_eq!(bytes_kept(&s[0]), 0);
    }

    #[test]
    fn a_push_leaving_lets_go_of_what_was_kept_for_it() {
        let mut s = sharers(2);
        let digest = Digest256::of(b"x");
        s[0].keep(1, digest, b"x".to_vec());
        assert_eq!(bytes_kept(&s[0]), 1);
        s.pop();
        assert_eq!(bytes_kept(&s[0]), 0);
        s[0].keep(2, digest, b"x".to_vec());
        assert_eq!(bytes_kept(&s[0]), 0, "no other push");
    }

    #[test]
    fn a_push_waits_for_room_until_the_oldest_is_taken_or_too_old() {
        let s = sharers(2);
        let (block, digest) = half_the_room();
        s[0].keep(0, digest, block.clone());
        s[0].keep(1, digest, block.clone());
        std::thread::scope(|scope| {
            let started = Instant::now();
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                assert!(s[1].take(0, &digest).is_some());
            });
            // Full: waits for the other push to take operation 0.
            s[0].keep(2, digest, block.clone());
            let waited = started.elapsed();
            assert!(waited >= Duration::from_millis(90), "{waited:?}");
            assert!(waited < KEPT_FOR, "{waited:?}");
        });
        // The other push is held up: once the oldest has waited its time, it goes, and
        // with it everything kept for that push alone.
        let started = Instant::now();
        s[0].keep(3, digest, block.clone());
        let waited = started.elapsed();
        assert!(waited < KEPT_FOR + Duration::from_millis(200), "{waited:?}");
        assert_eq!(bytes_kept(&s[0]), 0);
        assert_eq!(s[1].take(1, &digest), None, "the oldest went");
        assert_eq!(s[1].take(2, &digest), None, "kept for it alone");
        assert_eq!(s[1].take(3, &digest), None, "not kept: no push wants it");
    }

    #[test]
    fn a_push_that_held_the_others_up_is_kept_nothing_until_it_catches_up() {
        let s = sharers(3);
        let (block, digest) = half_the_room();
        // The third push takes its share; the second is stalled.
        s[0].keep(0, digest, block.clone());
        s[0].keep(1, digest, block.clone());
        assert!(s[2].take(0, &digest).is_some());
        assert!(s[2].take(1, &digest).is_some());
        let started = Instant::now();
        s[0].keep(2, digest, block.clone());
        assert!(
            started.elapsed() >= KEPT_FOR,
            "waited once for the stalled push"
        );
        // Left behind: what was kept for it alone went, and no later content waits
        // for it.
        assert_eq!(s[1].take(0, &digest), None);
        let started = Instant::now();
        for index in 3..10 {
            s[0].keep(index, digest, block.clone());
            assert!(s[2].take(index, &digest).is_some(), "still shared");
        }
        assert!(started.elapsed() < KEPT_FOR, "{:?}", started.elapsed());
        assert_eq!(s[1].take(9, &digest), None, "kept for the others only");
        // Caught up with the slowest of the others, it shares again.
        assert_eq!(s[2].take(10, &digest), None);
        assert_eq!(s[1].take(10, &digest), None, "read by itself");
        s[0].keep(11, digest, block.clone());
        assert!(s[1].take(11, &digest).is_some(), "kept for it again");
    }

    #[test]
    fn a_push_behind_another_never_waits_for_room() {
        let s = sharers(3);
        let (block, digest) = half_the_room();
        // The first push is ahead, and filled the room for the two others.
        s[0].keep(10, digest, block.clone());
        s[0].keep(11, digest, block.clone());
        // The second reads operation 5 itself, past nothing the third wants yet: it
        // keeps nothing rather than wait for the third, which waits for nobody.
        assert_eq!(s[1].take(5, &digest), None);
        let started = Instant::now();
        s[1].keep(5, digest, block.clone());
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(s[2].take(5, &digest), None, "not kept");
        assert!(s[2].take(10, &digest).is_some());
    }

    #[test]
    fn only_the_pushes_of_one_plan_share_its_contents() {
        let run = RunContents::default();
        let (one, other) = (
            Arc::new(Plan::of_ops(Vec::new())),
            Arc::new(Plan::of_ops(Vec::new())),
        );
        let (a, b, c) = (run.join(&one), run.join(&one), run.join(&other));
        let digest = Digest256::of(b"x");
        a.keep(0, digest, b"x".to_vec());
        assert_eq!(c.take(0, &digest), None, "another plan");
        assert!(b.take(0, &digest).is_some());
        c.keep(1, digest, b"x".to_vec());
        assert_eq!(bytes_kept(&c), 0, "alone in its plan");
    }
}
