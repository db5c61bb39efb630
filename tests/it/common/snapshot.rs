//! Snapshots: everything below a directory, byte for byte, and comparisons of two
//! nodes' trees.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gosyncd::group::GroupNode;
use gosyncd::manifest::{self, HashCache, Manifest};

/// One path of a snapshot. Times are kept so that "nothing was written" also catches a
/// temporary file created and removed again (it moves its directory's mtime).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    File {
        mode: u32,
        owner: (u32, u32),
        bytes: Vec<u8>,
        mtime_ns: i64,
    },
    Dir {
        mode: u32,
        owner: (u32, u32),
        mtime_ns: i64,
    },
    Symlink {
        target: PathBuf,
        owner: (u32, u32),
        mtime_ns: i64,
    },
    Other,
}

/// Relative path (`""` for the root itself) -> item.
pub type Tree = BTreeMap<PathBuf, Item>;

/// Everything below `root`, links not followed.
pub fn snapshot(root: &Path) -> Tree {
    let mut tree = Tree::new();
    walk(root, Path::new(""), &mut tree);
    tree
}

fn walk(root: &Path, rel: &Path, tree: &mut Tree) {
    let path = root.join(rel);
    let meta = std::fs::symlink_metadata(&path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
    let owner = (meta.uid(), meta.gid());
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    let mode = meta.mode() & 0o7777;
    let file_type = meta.file_type();
    let item = if file_type.is_symlink() {
        Item::Symlink {
            target: std::fs::read_link(&path).unwrap(),
            owner,
            mtime_ns,
        }
    } else if file_type.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            walk(root, &rel.join(name), tree);
        }
        Item::Dir {
            mode,
            owner,
            mtime_ns,
        }
    } else if file_type.is_file() {
        Item::File {
            mode,
            owner,
            bytes: std::fs::read(&path).unwrap(),
            mtime_ns,
        }
    } else {
        Item::Other
    };
    tree.insert(rel.to_path_buf(), item);
}

/// The snapshot with every time zeroed: what "identical trees" compares.
pub fn without_times(tree: &Tree) -> Tree {
    tree.iter()
        .map(|(path, item)| {
            let item = match item.clone() {
                Item::File {
                    mode, owner, bytes, ..
                } => Item::File {
                    mode,
                    owner,
                    bytes,
                    mtime_ns: 0,
                },
                Item::Dir { mode, owner, .. } => Item::Dir {
                    mode,
                    owner,
                    mtime_ns: 0,
                },
                Item::Symlink { target, owner, .. } => Item::Symlink {
                    target,
                    owner,
                    mtime_ns: 0,
                },
                Item::Other => Item::Other,
            };
            (path.clone(), item)
        })
        .collect()
}

/// A node's manifest as gosyncd sees it, without modification times.
pub fn manifest_of(node: &GroupNode) -> Manifest {
    let scan = manifest::scan(&node.config, &[], &HashCache::default());
    assert!(
        scan.unreadable.is_empty() && scan.missing.is_empty(),
        "scan of {}: {scan:?}",
        node.addr
    );
    scan.entries
        .into_iter()
        .map(|(path, mut entry)| {
            entry.mtime_ns = 0;
            (path, entry)
        })
        .collect()
}

/// Asserts that `a` and `b` hold the same trees in every directory `a` is configured
/// with: same manifest (mtime aside) and the same bytes, modes, owners and link texts.
pub fn assert_same_tree(a: &GroupNode, b: &GroupNode) {
    let (ma, mb) = (manifest_of(a), manifest_of(b));
    if ma != mb {
        let only_a: Vec<_> = ma.iter().filter(|(p, e)| mb.get(*p) != Some(e)).collect();
        let only_b: Vec<_> = mb.iter().filter(|(p, e)| ma.get(*p) != Some(e)).collect();
        panic!(
            "manifests of {} and {} differ\nonly on {}: {only_a:#?}\nonly on {}: {only_b:#?}",
            a.addr, b.addr, a.addr, b.addr
        );
    }
    for dir in &a.config.directories {
        let ta = without_times(&snapshot(&a.path(&dir.path)));
        let tb = without_times(&snapshot(&b.path(&dir.path)));
        assert_eq!(
            ta, tb,
            "{} differs between {} and {}",
            dir.path, a.addr, b.addr
        );
    }
}
