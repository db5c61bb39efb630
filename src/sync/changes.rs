//! The changes a run made (or would make) on one peer, kept compactly.
//!
//! A push keeps a change per path and peer until its report is told: at 100,000 paths
//! pushed to three peers, 300,000 of them. Nearly all are operations of the plan done
//! as planned, and the plan is kept anyway (the peers planned alike share it): those
//! are kept as runs of consecutive indices in it (a batch's operations are done in
//! order, so a whole push is a few runs), and made into changes as they are read.
//! Changes in a row with one status (a plan the mass-delete guard refused: a change per
//! path it would have made) are kept as their paths, the status once. Anything else is
//! kept as its change.
//!
//! Plain data: no I/O.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use super::{Change, ChangeStatus};
use crate::paths::LogicalPath;
use crate::plan::{Plan, Planned};

/// What a run did (or would do) to each path on one peer, in order: each a [`Change`],
/// made as it is read ([`Changes::iter`]).
#[derive(Clone, Default)]
pub struct Changes {
    items: Vec<Item>,
    len: usize,
}

#[derive(Clone)]
enum Item {
    One(Change),
    /// Changes in a row with the same status, two or more: their paths.
    Alike {
        status: ChangeStatus,
        paths: Vec<LogicalPath>,
    },
    /// The operations of `plan` in `runs` of consecutive indices, in this order, done
    /// (or to be done) as planned.
    Done {
        plan: Arc<Plan>,
        runs: Vec<Range<u32>>,
    },
}

impl Changes {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, change: Change) {
        self.len += 1;
        match self.items.last_mut() {
            Some(Item::Alike { status, paths }) if *status == change.status => {
                paths.push(change.path);
            }
            Some(Item::One(before)) if before.status == change.status => {
                let paths = vec![before.path.clone(), change.path];
                let last = self.items.last_mut().expect("the change before");
                *last = Item::Alike {
                    status: change.status,
                    paths,
                };
            }
            _ => self.items.push(Item::One(change)),
        }
    }

    /// Operation `index` of `plan`, done (or to be done) as planned.
    pub fn push_done(&mut self, plan: &Arc<Plan>, index: usize) {
        let index = u32::try_from(index).expect("a plan holds fewer than 2^32 operations");
        self.push_run(plan, index..index + 1);
    }

    /// Every operation of `plan`, done (or to be done) as planned.
    pub fn push_plan(&mut self, plan: &Arc<Plan>) {
        let len = u32::try_from(plan.len()).expect("a plan holds fewer than 2^32 operations");
        self.push_run(plan, 0..len);
    }

    /// The operations of `plan` in `run`, done (or to be done) as planned.
    fn push_run(&mut self, plan: &Arc<Plan>, run: Range<u32>) {
        if run.is_empty() {
            return;
        }
        self.len += run.len();
        if let Some(Item::Done { plan: last, runs }) = self.items.last_mut() {
            if Arc::ptr_eq(last, plan) {
                match runs.last_mut() {
                    Some(before) if before.end == run.start => before.end = run.end,
                    _ => runs.push(run),
                }
                return;
            }
        }
        self.items.push(Item::Done {
            plan: plan.clone(),
            runs: vec![run],
        });
    }

    /// The changes, in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            items: self.items.iter(),
            run: None,
            alike: None,
        }
    }

    /// Gives every change of `path` the status `status`, in its place.
    pub fn restate(&mut self, path: &str, status: &ChangeStatus) {
        let mut items = Vec::with_capacity(self.items.len());
        for item in std::mem::take(&mut self.items) {
            match item {
                Item::One(mut change) => {
                    if change.path.as_str() == path {
                        change.status = status.clone();
                    }
                    items.push(Item::One(change));
                }
                Item::Alike { status: was, paths } => {
                    if !paths.iter().any(|p| p.as_str() == path) {
                        items.push(Item::Alike { status: was, paths });
                        continue;
                    }
                    let mut kept = Changes::default();
                    for p in paths {
                        let status = match p.as_str() == path {
                            true => status.clone(),
                            false => was.clone(),
                        };
                        kept.push(Change { path: p, status });
                    }
                    items.append(&mut kept.items);
                }
                Item::Done { plan, runs } => {
                    let path_of = |i: u32| &plan.ops()[i as usize].path;
                    if !runs
                        .iter()
                        .flat_map(Range::clone)
                        .any(|i| path_of(i).as_str() == path)
                    {
                        items.push(Item::Done { plan, runs });
                        continue;
                    }
                    // Split around the changes restated.
                    let mut kept = Changes::default();
                    for i in runs.into_iter().flatten() {
                        if path_of(i).as_str() != path {
                            kept.push_run(&plan, i..i + 1);
                            continue;
                        }
                        items.append(&mut std::mem::take(&mut kept).items);
                        items.push(Item::One(Change {
                            path: path_of(i).clone(),
                            status: status.clone(),
                        }));
                    }
                    items.append(&mut kept.items);
                }
            }
        }
        self.items = items;
    }
}

/// The indices of an item's runs, in order.
type Indices<'a> = std::iter::Flatten<std::iter::Cloned<std::slice::Iter<'a, Range<u32>>>>;

/// The changes of a [`Changes`], in order.
pub struct Iter<'a> {
    items: std::slice::Iter<'a, Item>,
    run: Option<(&'a [Planned<'a>], Indices<'a>)>,
    alike: Option<(&'a ChangeStatus, std::slice::Iter<'a, LogicalPath>)>,
}

impl Iterator for Iter<'_> {
    type Item = Change;

    fn next(&mut self) -> Option<Change> {
        loop {
            if let Some((plan, indices)) = &mut self.run {
                if let Some(i) = indices.next() {
                    let op = &plan[i as usize];
                    return Some(Change {
                        path: op.path.clone(),
                        status: ChangeStatus::Done(op.change()),
                    });
                }
                self.run = None;
            }
            if let Some((status, paths)) = &mut self.alike {
                if let Some(path) = paths.next() {
                    return Some(Change {
                        path: path.clone(),
                        status: (*status).clone(),
                    });
                }
                self.alike = None;
            }
            match self.items.next()? {
                Item::One(change) => return Some(change.clone()),
                Item::Alike { status, paths } => self.alike = Some((status, paths.iter())),
                Item::Done { plan, runs } => {
                    self.run = Some((plan.ops(), runs.iter().cloned().flatten()));
                }
            }
        }
    }
}

impl<'a> IntoIterator for &'a Changes {
    type Item = Change;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl Extend<Change> for Changes {
    fn extend<T: IntoIterator<Item = Change>>(&mut self, changes: T) {
        for change in changes {
            self.push(change);
        }
    }
}

impl FromIterator<Change> for Changes {
    fn from_iter<T: IntoIterator<Item = Change>>(changes: T) -> Changes {
        let mut all = Changes::default();
        all.extend(changes);
        all
    }
}

impl From<Vec<Change>> for Changes {
    fn from(changes: Vec<Change>) -> Changes {
        changes.into_iter().collect()
    }
}

/// Equal when they tell the same changes in the same order, however they are kept.
impl PartialEq for Changes {
    fn eq(&self, other: &Changes) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Changes {}

impl fmt::Debug for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChangeKind;
    use crate::testing::put;

    fn plan_of(paths: &[&str]) -> Arc<Plan> {
        Arc::new(Plan::of_ops(
            paths
                .iter()
                .map(|path| put(path, path.as_bytes()))
                .collect(),
        ))
    }

    fn told(changes: &Changes) -> Vec<String> {
        changes.iter().map(|c| c.line("peer").to_string()).collect()
    }

    #[test]
    fn operations_done_as_planned_are_told_in_order_among_the_others_and_kept_small() {
        let plan = plan_of(&["/etc/app/a", "/etc/app/b", "/etc/app/c"]);
        let mut changes = Changes::default();
        changes.push(Change {
            path: "/etc/app/x".into(),
            status: ChangeStatus::Refused("too large".into()),
        });
        changes.push_done(&plan, 0);
        changes.push_done(&plan, 2);
        changes.push(Change {
            path: "/etc/app/b".into(),
            status: ChangeStatus::Failed("disk full".into()),
        });
        changes.push_plan(&plan);
        assert_eq!(changes.len(), 7);
        assert_eq!(
            told(&changes),
            [
                "[!] peer /etc/app/x skipped: too large",
                "[+] peer /etc/app/a added",
                "[+] peer /etc/app/c added",
                "[!] peer /etc/app/b skipped: disk full",
                "[+] peer /etc/app/a added",
                "[+] peer /etc/app/b added",
                "[+] peer /etc/app/c added",
            ]
        );
        // The same changes, kept one by one, are equal.
        let one_by_one: Changes = changes.iter().collect();
        assert_eq!(one_by_one, changes);
        assert_eq!(changes.iter().next().unwrap().status.name(), "refused");
        // Operations of the same plan told one after the other are one item, and
        // consecutive ones one run.
        assert_eq!(changes.items.len(), 4);
        let Item::Done { runs, .. } = &changes.items[1] else {
            panic!("kept one by one");
        };
        assert_eq!(runs, &[0..1, 2..3]);

        let mut big = Changes::default();
        let many = plan_of(&vec!["/etc/app/f"; 10_000]);
        for index in 0..many.len() {
            big.push_done(&many, index);
        }
        big.push_plan(&many);
        assert_eq!(big.len(), 20_000);
        assert_eq!(big.items.len(), 1);
        let Item::Done { runs, .. } = &big.items[0] else {
            panic!("kept one by one");
        };
        assert_eq!(runs, &[0..10_000, 0..10_000]);
        assert!(big
            .iter()
            .all(|c| c.status == ChangeStatus::Done(ChangeKind::Added)));
    }

    #[test]
    fn changes_in_a_row_with_one_status_are_kept_as_their_paths_and_told_in_order() {
        let guard = ChangeStatus::Refused("not sent: mass-delete guard".into());
        let full = ChangeStatus::Failed("disk full".into());
        let change = |path: &str, status: &ChangeStatus| Change {
            path: path.into(),
            status: status.clone(),
        };
        let paths: Vec<String> = (0..1000).map(|i| format!("/etc/app/f{i:04}")).collect();
        let mut expected = vec![change("/etc/app/first", &full)];
        expected.extend(paths.iter().map(|p| change(p, &guard)));
        expected.push(change("/etc/app/last", &full));
        let mut changes: Changes = expected.clone().into();
        assert_eq!(changes.len(), 1002);
        assert_eq!(changes.items.len(), 3, "kept one by one");
        assert_eq!(changes.iter().collect::<Vec<_>>(), expected);

        // Restated, one change in the middle splits them around it.
        changes.restate("/etc/app/f0500", &full);
        expected[501].status = full.clone();
        assert_eq!(changes.len(), 1002);
        assert_eq!(changes.iter().collect::<Vec<_>>(), expected);
        assert_eq!(changes.items.len(), 5);
    }

    #[test]
    fn a_change_restated_keeps_its_place_and_the_others_theirs() {
        let plan = plan_of(&["/etc/app/a", "/etc/app/d", "/etc/app/c"]);
        let mut changes = Changes::default();
        changes.push_plan(&plan);
        changes.push(Change {
            path: "/etc/app/d".into(),
            status: ChangeStatus::Failed("again".into()),
        });
        let kept = ChangeStatus::Kept("directory kept".into());
        changes.restate("/etc/app/d", &kept);
        assert_eq!(
            told(&changes),
            [
                "[+] peer /etc/app/a added",
                "[!] peer /etc/app/d skipped: directory kept",
                "[+] peer /etc/app/c added",
                "[!] peer /etc/app/d skipped: directory kept",
            ]
        );
        assert_eq!(changes.len(), 4);
        // A path it does not hold changes nothing.
        let before = changes.clone();
        changes.restate("/etc/app/none", &kept);
        assert_eq!(changes, before);
    }
}
