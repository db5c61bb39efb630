//! A plan as this node holds it while it pushes: its operations refer to the entries
//! they put where this node's state holds them, instead of copying them (at 100,000
//! paths, 6 MB less while a push plans), and the plan keeps that state for as long as
//! it lives. Plain data: no I/O.

use std::sync::Arc;

use serde::Serialize;
use yoke::erased::ErasedArcCart;
use yoke::{Yoke, Yokeable};

use crate::paths::LogicalPath;
use crate::protocol::{self, Action, ChangeKind, Entry, Op};

/// One operation of a [`Plan`]: what [`Op`] says, the entry it puts borrowed from the
/// state the plan was made from. Sent as an [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned<'a> {
    pub path: LogicalPath,
    /// The state to put; `None`: a deletion.
    pub put: Option<&'a Entry>,
    /// What the receiver held when the operation was planned (`None`: nothing); see
    /// [`Op::expect`]. Owned: the peer's listing it comes from goes once planned.
    pub expect: Option<Box<Entry>>,
}

impl Planned<'_> {
    /// See [`Op::needs_content`].
    pub fn needs_content(&self) -> Option<u64> {
        protocol::content_needed(self.put, self.expect.as_deref())
    }

    /// See [`Op::change`].
    pub fn change(&self) -> ChangeKind {
        protocol::change_of(self.put.is_some(), self.expect.is_some())
    }

    /// Whether it deletes a directory.
    pub fn deletes_directory(&self) -> bool {
        self.put.is_none() && self.expect.as_ref().is_some_and(|e| e.content.is_dir())
    }

    /// The operation as an [`Op`] of its own.
    pub fn to_op(&self) -> Op {
        Op {
            path: self.path.clone(),
            action: match self.put {
                Some(entry) => Action::Put {
                    entry: entry.clone(),
                },
                None => Action::Delete,
            },
            expect: self.expect.clone(),
        }
    }
}

/// Serialised as the [`Op`] it stands for, without copying it.
impl Serialize for Planned<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            path: &'a LogicalPath,
            #[serde(flatten)]
            action: WireAction<'a>,
            expect: Option<&'a Entry>,
        }
        #[derive(Serialize)]
        #[serde(tag = "action", rename_all = "lowercase")]
        enum WireAction<'a> {
            Put { entry: &'a Entry },
            Delete,
        }
        Wire {
            path: &self.path,
            action: match self.put {
                Some(entry) => WireAction::Put { entry },
                None => WireAction::Delete,
            },
            expect: self.expect.as_deref(),
        }
        .serialize(serializer)
    }
}

/// The operations of a [`Plan`], borrowing from what it keeps.
#[derive(Yokeable)]
struct Ops<'a>(Vec<Planned<'a>>);

/// A plan: its operations, in order, and the state they borrow from, kept as long as
/// the plan is. Peers planned alike share one (`Arc<Plan>`).
pub struct Plan(Yoke<Ops<'static>, ErasedArcCart>);

impl Plan {
    /// The plan `make` makes from `state`, which it keeps.
    pub fn new<S: Send + Sync + 'static>(
        state: Arc<S>,
        make: impl for<'s> FnOnce(&'s S) -> Vec<Planned<'s>>,
    ) -> Plan {
        Plan(Yoke::attach_to_cart(state, |state| Ops(make(state))).erase_arc_cart())
    }

    /// A plan of operations made elsewhere (the watcher's), which it takes.
    pub fn of_ops(ops: Vec<Op>) -> Plan {
        let mut entries = Vec::new();
        let mut rest = Vec::with_capacity(ops.len());
        for op in ops {
            let put = match op.action {
                Action::Put { entry } => {
                    entries.push(entry);
                    true
                }
                Action::Delete => false,
            };
            rest.push((op.path, put, op.expect));
        }
        Plan::new(Arc::new(entries), move |entries: &Vec<Entry>| {
            let mut puts = entries.iter();
            rest.into_iter()
                .map(|(path, put, expect)| Planned {
                    path,
                    put: if put { puts.next() } else { None },
                    expect,
                })
                .collect()
        })
    }

    pub fn ops(&self) -> &[Planned<'_>] {
        &self.0.get().0
    }

    pub fn len(&self) -> usize {
        self.ops().len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops().is_empty()
    }

    /// This plan without the operations `keep` refuses, sharing what this one keeps.
    pub fn retain(&self, keep: impl Fn(&Planned<'_>) -> bool) -> Plan {
        Plan(self.0.map_project_cloned(|ops, _| {
            Ops(ops.0.iter().filter(|op| keep(op)).cloned().collect())
        }))
    }
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ops()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Content;
    use crate::testing::{file_entry, put};

    #[test]
    fn an_operation_planned_here_is_sent_as_the_operation_it_stands_for() {
        let mut update = put("/etc/app/a", b"new");
        update.expect = Some(Box::new(file_entry(b"old")));
        let delete = Op {
            path: "/etc/app/d".into(),
            action: Action::Delete,
            expect: Some(Box::new(Entry {
                content: Content::Dir,
                ..file_entry(b"")
            })),
        };
        let ops = vec![put("/etc/app/new", b"x"), update, delete];
        let plan = Plan::of_ops(ops.clone());
        assert_eq!(plan.len(), 3);
        for (planned, op) in plan.ops().iter().zip(&ops) {
            assert_eq!(
                serde_json::to_value(planned).unwrap(),
                serde_json::to_value(op).unwrap()
            );
            assert_eq!(planned.to_op(), *op);
            assert_eq!(planned.needs_content(), op.needs_content());
            assert_eq!(planned.change(), op.change());
        }
        assert!(plan.ops()[2].deletes_directory() && !plan.ops()[1].deletes_directory());
        // What is kept of it borrows the same entries.
        let kept = plan.retain(|op| op.put.is_some());
        assert_eq!(kept.len(), 2);
        assert!(std::ptr::eq(
            kept.ops()[1].put.unwrap(),
            plan.ops()[1].put.unwrap()
        ));
    }

    #[test]
    fn a_planned_operation_is_a_third_of_an_operation_of_its_own() {
        // A path, a reference to the entry to put, a pointer to what is expected.
        let size = std::mem::size_of::<Planned<'_>>();
        assert!(size <= 32, "{size}");
    }
}
