//! Planning: a PURE function of (local manifest, remote manifest) -> operations that make
//! the remote hold what the local side holds. No I/O, no clocks.
//!
//! Order matters and is part of the contract with the receiver: every deletion comes
//! first, children before their parents; then every put, parents before their children.
//! Each operation carries the remote state it was planned against, so the receiver can
//! refuse it when that state changed in between.

use std::borrow::Borrow;
use std::collections::BTreeMap;

use crate::paths::{LogicalPath, PathKey};
use crate::protocol::{Action, Entry, Op};

mod shared;

pub use shared::{Plan, Planned};

/// Plans the operations that turn `remote` into `local`.
///
/// `owners` says whether the receiver applies owners; when it does not, differing owners
/// alone cause no operation. Either side may be a [`Manifest`](crate::manifest::Manifest)
/// or a view that borrows one (paths and entries by reference).
pub fn plan<'l, 'e, LK, LE, RK, RE>(
    local: &'l BTreeMap<LK, LE>,
    remote: &BTreeMap<RK, RE>,
    owners: bool,
) -> Vec<Op>
where
    LK: PathKey,
    LE: Borrow<Entry>,
    &'l LE: Held<'e>,
    RK: PathKey,
    RE: Borrow<Entry>,
{
    collect(local, remote, owners, |op| op.to_op())
}

/// The operations of [`plan`], referring to the entries they put where `local` holds
/// them (see [`Plan`]).
pub fn planned<'l, 'e, LK, LE, RK, RE>(
    local: &'l BTreeMap<LK, LE>,
    remote: &BTreeMap<RK, RE>,
    owners: bool,
) -> Vec<Planned<'e>>
where
    LK: PathKey,
    LE: Borrow<Entry>,
    &'l LE: Held<'e>,
    RK: PathKey,
    RE: Borrow<Entry>,
{
    collect(local, remote, owners, |op| Planned {
        path: op.logical_path(),
        put: op.put,
        expect: op.expect.cloned().map(Box::new),
    })
}

/// The operations of [`plan`] in outline, borrowing their paths from `local` and
/// `remote`: what the mass-delete guard and the directories kept for a peer's excludes
/// are judged from before a plan is made (see [`Outline`]).
pub fn outline<'p, 'l: 'p, 'e, 'r: 'p, LK, LE, RK, RE>(
    local: &'l BTreeMap<LK, LE>,
    remote: &'r BTreeMap<RK, RE>,
    owners: bool,
) -> Vec<Outline<'p>>
where
    LK: PathKey,
    LE: Borrow<Entry>,
    &'l LE: Held<'e>,
    RK: PathKey,
    RE: Borrow<Entry>,
{
    collect(local, remote, owners, |op| Outline {
        path: op.path,
        shared: op.shared,
        put: op.put.is_some(),
        deletes_directory: op.put.is_none() && op.expect.is_some_and(|e| e.content.is_dir()),
    })
}

/// An operation of a plan in outline: its path (borrowed), whether it puts or deletes,
/// and whether it deletes a directory. A plan of 100,000 deletions is 17 MB made (each
/// operation with the peer's entry it expects, and its own path); its outline, 3 MB.
#[derive(Clone, Copy, Debug)]
pub struct Outline<'p> {
    pub path: &'p str,
    /// `path`, where the manifest it comes from holds it once.
    shared: Option<&'p LogicalPath>,
    pub put: bool,
    pub deletes_directory: bool,
}

impl Outline<'_> {
    /// Its path, shared where the manifest it comes from holds one.
    pub fn logical_path(&self) -> LogicalPath {
        match self.shared {
            Some(path) => path.clone(),
            None => self.path.into(),
        }
    }
}

impl<'p> From<&'p Planned<'_>> for Outline<'p> {
    fn from(op: &'p Planned<'_>) -> Outline<'p> {
        Outline {
            path: op.path.as_str(),
            shared: Some(&op.path),
            put: op.put.is_some(),
            deletes_directory: op.deletes_directory(),
        }
    }
}

/// Each operation of the plan from `remote` to `local`, as `make` makes it.
fn collect<'p, 'l: 'p, 'e, 'r: 'p, LK, LE, RK, RE, T>(
    local: &'l BTreeMap<LK, LE>,
    remote: &'r BTreeMap<RK, RE>,
    owners: bool,
    mut make: impl FnMut(Each<'p, 'e, 'r>) -> T,
) -> Vec<T>
where
    LK: PathKey,
    LE: Borrow<Entry>,
    &'l LE: Held<'e>,
    RK: PathKey,
    RE: Borrow<Entry>,
{
    let mut count = 0;
    plan_each(local, remote, owners, |_| count += 1);
    // Held until the operations are sent, to every peer of a run at once: made at their
    // exact number.
    let mut ops = Vec::with_capacity(count);
    plan_each(local, remote, owners, |op| ops.push(make(op)));
    ops
}

/// Whether [`plan`] of `local` and `remote` would be `planned`, told without making it.
pub fn plans_as<'l, 'e, LK, LE, RK, RE>(
    local: &'l BTreeMap<LK, LE>,
    remote: &BTreeMap<RK, RE>,
    owners: bool,
    planned: &[Planned<'_>],
) -> bool
where
    LK: PathKey,
    LE: Borrow<Entry>,
    &'l LE: Held<'e>,
    RK: PathKey,
    RE: Borrow<Entry>,
{
    let (mut index, mut same) = (0, true);
    plan_each(local, remote, owners, |op| {
        same = same && planned.get(index).is_some_and(|o| op.is(o));
        index += 1;
    });
    same && index == planned.len()
}

/// Whether [`plan`] of `local` and `remote` deletes anything, told without planning.
pub fn deletes_any<LK, LE, RK, RE>(local: &BTreeMap<LK, LE>, remote: &BTreeMap<RK, RE>) -> bool
where
    LK: PathKey,
    LE: Borrow<Entry>,
    RK: PathKey,
    RE: Borrow<Entry>,
{
    remote
        .iter()
        .any(|(key, theirs)| deleted(local, key.borrow(), theirs.borrow()))
}

/// Whether the plan deletes `path`, which the peer holds as `theirs`: this node lacks
/// it, or holds another kind there (a directory cannot be renamed over a file, or the
/// reverse: it is deleted first).
fn deleted<LK: PathKey, LE: Borrow<Entry>>(
    local: &BTreeMap<LK, LE>,
    path: &str,
    theirs: &Entry,
) -> bool {
    match local.get(path) {
        None => true,
        Some(ours) => ours.borrow().content.is_dir() != theirs.content.is_dir(),
    }
}

/// An entry of a map a plan is made from, borrowed for `'e`: a manifest's entry, for as
/// long as the manifest is borrowed; a view's, for as long as the manifest the view
/// borrows it from (so that a plan can outlive a view made to plan it).
pub trait Held<'e> {
    fn entry(self) -> &'e Entry;
}

impl<'e> Held<'e> for &'e Entry {
    fn entry(self) -> &'e Entry {
        self
    }
}

impl<'e> Held<'e> for &&'e Entry {
    fn entry(self) -> &'e Entry {
        self
    }
}

/// One operation of a plan, borrowing from the maps it is made from: this node's
/// entries (`'l`) and the peer's (`'r`).
struct Each<'p, 'l, 'r> {
    path: &'p str,
    /// `path`, where the manifest it comes from holds it once: the operation shares it.
    shared: Option<&'p LogicalPath>,
    /// The state to put; `None`: a deletion.
    put: Option<&'l Entry>,
    expect: Option<&'r Entry>,
}

impl Each<'_, '_, '_> {
    fn logical_path(&self) -> LogicalPath {
        match self.shared {
            Some(path) => path.clone(),
            None => self.path.into(),
        }
    }

    fn to_op(&self) -> Op {
        Op {
            path: self.logical_path(),
            action: match self.put {
                Some(entry) => Action::Put {
                    entry: entry.clone(),
                },
                None => Action::Delete,
            },
            expect: self.expect.cloned().map(Box::new),
        }
    }

    /// Whether it is `op`.
    fn is(&self, op: &Planned<'_>) -> bool {
        op.put == self.put && op.path == self.path && op.expect.as_deref() == self.expect
    }
}

/// Calls `each` with every operation of the plan from `remote` to `local`, in order
/// (see [`plan`]).
fn plan_each<'p, 'l: 'p, 'e, 'r: 'p, LK, LE, RK, RE>(
    local: &'l BTreeMap<LK, LE>,
    remote: &'r BTreeMap<RK, RE>,
    owners: bool,
    mut each: impl FnMut(Each<'p, 'e, 'r>),
) where
    LK: PathKey,
    LE: Borrow<Entry>,
    &'l LE: Held<'e>,
    RK: PathKey,
    RE: Borrow<Entry>,
{
    for (key, theirs) in remote.iter().rev() {
        let (path, theirs) = (key.borrow(), theirs.borrow());
        if deleted(local, path, theirs) {
            each(Each {
                path,
                shared: key.shared(),
                put: None,
                expect: Some(theirs),
            });
        }
    }
    for (key, ours) in local {
        let (path, ours) = (key.borrow(), ours.entry());
        let expect = match remote.get(path).map(Borrow::borrow) {
            Some(theirs) if deleted(local, path, theirs) => None,
            Some(theirs) if ours.same_state(theirs, owners) => continue,
            Some(theirs) => Some(theirs),
            None => None,
        };
        each(Each {
            path,
            shared: key.shared(),
            put: Some(ours),
            expect,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::protocol::{ChangeKind, Content};
    use crate::testing::file_entry;
    use proptest::prelude::*;

    fn file(text: &str, mode: u32) -> Entry {
        Entry {
            mode,
            ..file_entry(text.as_bytes())
        }
    }

    fn dir() -> Entry {
        Entry {
            content: Content::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
        }
    }

    fn link(target: &str) -> Entry {
        Entry {
            content: Content::Symlink {
                target: target.into(),
            },
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
        }
    }

    fn manifest(entries: &[(&str, Entry)]) -> Manifest {
        entries
            .iter()
            .map(|(p, e)| ((*p).into(), e.clone()))
            .collect()
    }

    fn summary(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|op| {
                let sign = match op.change() {
                    ChangeKind::Added => "+",
                    ChangeKind::Updated => "M",
                    ChangeKind::Deleted => "-",
                };
                format!("{sign} {}", op.path)
            })
            .collect()
    }

    #[test]
    fn plan_table() {
        let cases: Vec<(&str, Manifest, Manifest, Vec<&str>)> = vec![
            (
                "add into a new directory, parent first",
                manifest(&[
                    ("/d", dir()),
                    ("/d/sub", dir()),
                    ("/d/sub/a", file("a", 0o644)),
                ]),
                manifest(&[("/d", dir())]),
                vec!["+ /d/sub", "+ /d/sub/a"],
            ),
            (
                "content change is an update",
                manifest(&[("/d", dir()), ("/d/a", file("new", 0o644))]),
                manifest(&[("/d", dir()), ("/d/a", file("old", 0o644))]),
                vec!["M /d/a"],
            ),
            (
                "mode change is an update",
                manifest(&[("/d", dir()), ("/d/a", file("x", 0o600))]),
                manifest(&[("/d", dir()), ("/d/a", file("x", 0o644))]),
                vec!["M /d/a"],
            ),
            (
                "deletes go children first, before any put",
                manifest(&[("/d", dir()), ("/d/z", file("z", 0o644))]),
                manifest(&[
                    ("/d", dir()),
                    ("/d/old", dir()),
                    ("/d/old/x", file("x", 0o644)),
                    ("/d/z", file("z", 0o644)),
                ]),
                vec!["- /d/old/x", "- /d/old"],
            ),
            (
                "directory replaced by a file: delete then add",
                manifest(&[("/d", dir()), ("/d/x", file("now a file", 0o644))]),
                manifest(&[
                    ("/d", dir()),
                    ("/d/x", dir()),
                    ("/d/x/in", file("i", 0o644)),
                ]),
                vec!["- /d/x/in", "- /d/x", "+ /d/x"],
            ),
            (
                "file replaced by a symlink is one update",
                manifest(&[("/d", dir()), ("/d/x", link("target"))]),
                manifest(&[("/d", dir()), ("/d/x", file("f", 0o644))]),
                vec!["M /d/x"],
            ),
            (
                "missing configured directory is created",
                manifest(&[("/d", dir())]),
                manifest(&[]),
                vec!["+ /d"],
            ),
        ];
        for (name, local, remote, expected) in cases {
            assert_eq!(summary(&plan(&local, &remote, true)), expected, "{name}");
        }
    }

    #[test]
    fn owners_count_only_when_the_receiver_applies_them() {
        let mut theirs = file("x", 0o644);
        theirs.uid = 1000;
        let local = manifest(&[("/d/a", file("x", 0o644))]);
        let remote = manifest(&[("/d/a", theirs)]);
        assert_eq!(summary(&plan(&local, &remote, true)), ["M /d/a"]);
        assert!(plan(&local, &remote, false).is_empty());
    }

    #[test]
    fn clocks_take_no_part() {
        let mut newer = file("x", 0o644);
        newer.mtime_ns = 42;
        let local = manifest(&[("/d/a", newer)]);
        let remote = manifest(&[("/d/a", file("x", 0o644))]);
        assert!(plan(&local, &remote, true).is_empty());
    }

    #[test]
    fn operations_carry_the_remote_state_they_were_planned_against() {
        let local = manifest(&[("/d/a", file("new", 0o644))]);
        let remote = manifest(&[("/d/a", file("old", 0o644)), ("/d/b", file("b", 0o644))]);
        let ops = plan(&local, &remote, true);
        assert_eq!(ops[0].path, "/d/b");
        assert_eq!(ops[0].expect.as_deref(), Some(&file("b", 0o644)));
        assert_eq!(ops[1].expect.as_deref(), Some(&file("old", 0o644)));
    }

    /// Applies operations to a model of the receiver, checking each expectation and that
    /// parents exist before children and directories are empty when deleted.
    fn apply_model(remote: &Manifest, ops: &[Op]) -> Manifest {
        let mut state = remote.clone();
        for op in ops {
            assert_eq!(
                state.get(op.path.as_str()),
                op.expect.as_deref(),
                "expectation of {}",
                op.path
            );
            match &op.action {
                Action::Delete => {
                    let prefix = format!("{}/", op.path);
                    assert!(
                        !state.keys().any(|k| k.starts_with(&prefix)),
                        "{} deleted while it has children",
                        op.path
                    );
                    state.remove(op.path.as_str());
                }
                Action::Put { entry } => {
                    let parent = crate::paths::parent(&op.path);
                    if parent != "/d" && op.path != "/d" {
                        assert!(
                            state.get(parent).is_some_and(|p| p.content.is_dir()),
                            "{} put before its parent",
                            op.path
                        );
                    }
                    state.insert(op.path.clone(), entry.clone());
                }
            }
        }
        state
    }

    fn entry_strategy() -> impl Strategy<Value = Entry> {
        prop_oneof![
            (0u8..3, prop_oneof![Just(0o644u32), Just(0o600)])
                .prop_map(|(c, m)| file(&c.to_string(), m)),
            Just(dir()),
            (0u8..2).prop_map(|t| link(&t.to_string())),
        ]
    }

    /// A consistent tree under `/d`: every path's parent is present and is a directory.
    fn tree_strategy() -> impl Strategy<Value = Manifest> {
        let names = prop::sample::select(vec!["a", "b", "c"]);
        prop::collection::vec(
            (prop::collection::vec(names, 1..4), entry_strategy()),
            0..12,
        )
        .prop_map(|items| {
            let mut m = Manifest::new();
            m.insert("/d".into(), dir());
            for (components, entry) in items {
                let mut path = "/d".to_string();
                let last = components.len() - 1;
                for (i, c) in components.iter().enumerate() {
                    path.push('/');
                    path.push_str(c);
                    let parent_ok = m
                        .get(crate::paths::parent(&path))
                        .is_some_and(|e| e.content.is_dir());
                    if !parent_ok {
                        break;
                    }
                    if i == last {
                        if !m.contains_key(path.as_str()) {
                            m.insert(path.as_str().into(), entry.clone());
                        }
                    } else {
                        m.entry(path.as_str().into()).or_insert_with(dir);
                    }
                }
            }
            m
        })
    }

    fn without_mtimes(m: &Manifest) -> Manifest {
        m.iter()
            .map(|(p, e)| {
                (
                    p.clone(),
                    Entry {
                        mtime_ns: 0,
                        ..e.clone()
                    },
                )
            })
            .collect()
    }

    proptest! {
        #[test]
        fn plan_of_identical_manifests_is_empty(tree in tree_strategy()) {
            prop_assert!(plan(&tree, &tree, true).is_empty());
        }

        #[test]
        fn applying_the_plan_yields_the_local_manifest(local in tree_strategy(), remote in tree_strategy()) {
            let ops = plan(&local, &remote, true);
            let result = apply_model(&remote, &ops);
            prop_assert_eq!(without_mtimes(&result), without_mtimes(&local));
            prop_assert!(plan(&local, &result, true).is_empty());
        }

        #[test]
        fn the_outline_tells_the_plans_operations_in_order(local in tree_strategy(), remote in tree_strategy()) {
            let made = planned(&local, &remote, true);
            let told = |op: &Outline| (op.logical_path(), op.put, op.deletes_directory);
            let outlined: Vec<_> = outline(&local, &remote, true).iter().map(told).collect();
            let from_plan: Vec<_> = made.iter().map(|op| told(&Outline::from(op))).collect();
            prop_assert_eq!(outlined, from_plan);
            let deletes = made.iter().any(|op| op.put.is_none());
            prop_assert_eq!(deletes_any(&local, &remote), deletes);
        }
    }
}
