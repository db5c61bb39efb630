//! The local edits a receive-only node kept to itself: paths its watcher saw edited here
//! that were not pushed (the node's `role` forbids it), as long as they may still differ
//! from the group. The watcher notes them; a write received from a peer there, or a
//! comparison that finds the path no longer differing from any peer it could judge,
//! forgets them. What the status route and the `gosyncd_local_edits_not_pushed` gauge
//! show.
//!
//! It only keeps the set: it neither scans, compares nor logs.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The paths edited here and not pushed, each with the sequence number of the last edit
/// noted there.
#[derive(Default)]
pub struct LocalEdits {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    paths: BTreeMap<String, u64>,
    /// The sequence number the next note takes.
    next: u64,
}

impl LocalEdits {
    /// Notes paths edited on this node and not pushed.
    pub fn note(&self, paths: impl IntoIterator<Item = String>) {
        let mut inner = self.inner.lock().expect("local edits lock");
        let seq = inner.next;
        inner.next += 1;
        for path in paths {
            inner.paths.insert(path, seq);
        }
    }

    /// A peer's write landed at `path`: it holds the group's version again.
    pub fn received(&self, path: &str) {
        self.inner
            .lock()
            .expect("local edits lock")
            .paths
            .remove(path);
    }

    /// Whether `path` is kept as edited here.
    pub fn contains(&self, path: &str) -> bool {
        self.inner
            .lock()
            .expect("local edits lock")
            .paths
            .contains_key(path)
    }

    /// A mark for a comparison that starts now: edits noted after it are newer than
    /// what the comparison sees.
    pub fn mark(&self) -> u64 {
        self.inner.lock().expect("local edits lock").next
    }

    /// After a comparison that began at `mark`: forgets the edits noted before it that
    /// `still_differs` says no longer differ from the group. Edits noted since are kept
    /// whatever it found: it may have looked before they were made.
    pub fn settle(&self, mark: u64, still_differs: impl Fn(&str) -> bool) {
        self.inner
            .lock()
            .expect("local edits lock")
            .paths
            .retain(|path, seq| *seq >= mark || still_differs(path));
    }

    /// How many paths are kept.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("local edits lock").paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `count` paths, in order.
    pub fn first(&self, count: usize) -> Vec<String> {
        self.inner
            .lock()
            .expect("local edits lock")
            .paths
            .keys()
            .take(count)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits(paths: &[&str]) -> LocalEdits {
        let edits = LocalEdits::default();
        edits.note(paths.iter().map(|p| p.to_string()));
        edits
    }

    #[test]
    fn a_received_write_forgets_the_local_edit_of_its_path_only() {
        let edits = edits(&["/d/a", "/d/b"]);
        edits.received("/d/a");
        assert_eq!(edits.first(10), ["/d/b"]);
        assert_eq!(edits.len(), 1);
    }

    #[test]
    fn a_comparison_forgets_only_edits_made_before_it_began_that_no_longer_differ() {
        let edits = edits(&["/d/undone", "/d/kept"]);
        let mark = edits.mark();
        // Made while the comparison ran: it may not have seen it.
        edits.note(["/d/during".to_string()]);
        edits.settle(mark, |path| path == "/d/kept");
        assert_eq!(edits.first(10), ["/d/during", "/d/kept"]);
        // The next comparison sees it, and finds it undone.
        let mark = edits.mark();
        edits.settle(mark, |path| path == "/d/kept");
        assert_eq!(edits.first(10), ["/d/kept"]);
    }

    #[test]
    fn an_edit_noted_again_after_a_comparison_began_survives_it() {
        let edits = edits(&["/d/a"]);
        let mark = edits.mark();
        edits.note(["/d/a".to_string()]);
        edits.settle(mark, |_| false);
        assert_eq!(edits.first(10), ["/d/a"]);
    }
}
