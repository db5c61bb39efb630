//! Batch validation, before anything is written: the path rules
//! ([`crate::tree::confine`]) applied to every operation, this node's limits, and the refusal of
//! impossible modes, invalid link targets and paths below a symlink. It only reads
//! metadata and never writes. It is not the last line of defence either: the tree can
//! change before execution, where every path is reached again without following a link.

use crate::config::{Config, Directory};
use crate::paths;
use crate::protocol::{Action, BatchHeader, Content, Entry, Op, MAX_LINK_TARGET_BYTES};
use crate::tree::{confine_below, Blocked, Parents};

/// Checks a whole batch before anything is written. Returns the first reason to refuse.
pub fn validate_batch(config: &Config, header: &BatchHeader) -> Result<(), String> {
    let limits = &config.limits;
    if header.ops.len() > limits.max_batch_entries {
        return Err(format!(
            "batch of {} operations exceeds this node's max_batch_entries ({})",
            header.ops.len(),
            limits.max_batch_entries
        ));
    }
    let deleted: std::collections::HashSet<&str> = header
        .ops
        .iter()
        .filter(|op| op.action == Action::Delete)
        .map(|op| op.path.as_str())
        .collect();
    // A path below a symlink the same batch creates would be written through it: the
    // executor would refuse that one operation, but a batch with one bad path is
    // refused whole.
    let linked: std::collections::HashSet<&str> = header
        .ops
        .iter()
        .filter(|op| {
            matches!(&op.action, Action::Put { entry } if matches!(entry.content, Content::Symlink { .. }))
        })
        .map(|op| op.path.as_str())
        .collect();
    let mut confined = Vec::with_capacity(header.ops.len());
    // Paths of the batch that passed `confine`, and those with no link of the batch above
    // them: a path whose parent is known is checked for its own name only.
    let mut passed = std::collections::HashSet::with_capacity(header.ops.len());
    let mut unlinked = std::collections::HashSet::new();
    for op in &header.ops {
        let parent = paths::parent(&op.path);
        let dir = confine_below(config, &op.path, passed.contains(parent))?;
        passed.insert(op.path.as_str());
        confined.push((op.path.as_str(), dir));
        // (Deletions below it are the old tree it replaces, deleted before it is made.)
        if !linked.is_empty() && op.action != Action::Delete {
            let mut above = parent;
            while above != "/" && !unlinked.contains(above) {
                if linked.contains(above) {
                    return Err(format!(
                        "{}: below {above}, which the same batch makes a symlink",
                        op.path
                    ));
                }
                above = paths::parent(above);
            }
            if !linked.contains(op.path.as_str()) {
                unlinked.insert(op.path.as_str());
            }
        }
        if let Action::Put { entry } = &op.action {
            check_entry(&op.path, entry)?;
            if let Content::File { size, .. } = &entry.content {
                if *size > limits.max_file_size {
                    return Err(format!(
                        "{}: a file of {size} bytes exceeds this node's max_file_size ({})",
                        op.path, limits.max_file_size
                    ));
                }
            }
            if op.path == dir.path && !entry.content.is_dir() {
                return Err(format!(
                    "{}: a configured directory must stay a directory",
                    op.path
                ));
            }
        } else if op.path == dir.path {
            return Err(format!(
                "{}: a configured directory is never deleted",
                op.path
            ));
        }
        if let Some(expect) = &op.expect {
            check_entry(&op.path, expect)?;
        }
    }
    // Then every path's parents, walked once for the whole batch, in sorted order.
    confined.sort_unstable_by_key(|(path, _)| *path);
    confined.dedup_by_key(|(path, _)| *path);
    let mut parents = Parents::default();
    // The last directory found missing: the paths below it (next in sorted order) have
    // nothing to follow either, and are not looked up again one by one (an initial sync
    // would look each file's parent up in vain).
    let mut missing: Option<String> = None;
    for (path, dir) in confined {
        if missing
            .as_deref()
            .is_some_and(|gone| paths::is_within(paths::parent(path), gone))
        {
            continue;
        }
        missing = check_parents(config, &mut parents, dir, path, &deleted)?;
    }
    Ok(())
}

/// Checks that a state read from outside (a batch, the spool) is one a path can hold.
pub(crate) fn check_entry(path: &str, entry: &Entry) -> Result<(), String> {
    if entry.mode > 0o7777 {
        return Err(format!(
            "{path}: mode {:o} is not a permission mode",
            entry.mode
        ));
    }
    // (uid_t)-1 tells chown "leave it": the file would keep this node's owner, differ
    // from what the sender recorded, and be pushed back as a local change.
    if entry.uid == u32::MAX || entry.gid == u32::MAX {
        return Err(format!(
            "{path}: owner {}:{} is not a user and group (4294967295 means \"unchanged\" to chown)",
            entry.uid, entry.gid
        ));
    }
    if let Content::Symlink { target } = &entry.content {
        if target.is_empty() || target.contains('\0') || target.len() > MAX_LINK_TARGET_BYTES {
            return Err(format!("{path}: invalid symlink target"));
        }
    }
    Ok(())
}

/// What a peer may not set, whatever its own tree holds, answered per operation as
/// refused (so that the sender reports it and holds the path, rather than retry): the
/// setuid and setgid bits on a file, unless `allow_setid` (a configuration directory
/// never needs set-id programs), and a configured directory itself made group- or
/// world-writable, unless `allow_writable_directories`.
pub(crate) fn check_mode(config: &Config, dir: &Directory, op: &Op) -> Result<(), String> {
    let Action::Put { entry } = &op.action else {
        return Ok(());
    };
    let mode = entry.mode;
    match &entry.content {
        Content::File { .. } if mode & 0o6000 != 0 && !config.allow_setid => {
            let bits = match mode & 0o6000 {
                0o4000 => "setuid bit",
                0o2000 => "setgid bit",
                _ => "setuid and setgid bits",
            };
            Err(format!(
                "{}: mode {mode:04o} has the {bits}, which this node does not accept from a \
                 peer (allow_setid = true in its configuration would)",
                op.path
            ))
        }
        Content::Dir
            if op.path == dir.path && mode & 0o022 != 0 && !config.allow_writable_directories =>
        {
            Err(format!(
                "{}: mode {mode:04o} would make the configured directory itself writable by its \
                 group or by everyone, which this node does not accept from a peer \
                 (allow_writable_directories = true in its configuration would)",
                op.path
            ))
        }
        _ => Ok(()),
    }
}

/// Refuses `path` when one of its parents below `dir` is a symlink on this node, unless
/// the same batch deletes that symlink first (a link replaced by a directory). The
/// parents are reached through `parents`, shared by the whole batch. Says which parent
/// is missing, if one is (the batch makes it).
fn check_parents(
    config: &Config,
    parents: &mut Parents,
    dir: &Directory,
    path: &str,
    deleted: &std::collections::HashSet<&str>,
) -> Result<Option<String>, String> {
    use rustix::fs::FileType;
    use rustix::io::Errno;
    let parent = paths::parent(path);
    if !paths::is_within(parent, &dir.path) {
        return Ok(None); // the configured directory itself: its parent is trusted
    }
    match parents.dir(config, dir, parent) {
        Ok(_) => Ok(None),
        // Missing: the batch makes it, or fails on it; nothing to follow.
        Err(Blocked::Top(_)) => Ok(None),
        Err(Blocked::At { at, error, kind }) => match kind {
            // The rest is made by the batch: said, so that what is below is not looked
            // up again.
            _ if error == Errno::NOENT => Ok(Some(at)),
            Some(FileType::Symlink) if deleted.contains(at.as_str()) => Ok(None),
            Some(FileType::Symlink) => Err(format!(
                "{path}: refused, {at} is a symlink on this node (links are never followed)"
            )),
            // Not a directory, and the last parent: the executor decides. Further up, a
            // file the batch deletes first (a file replaced by a directory tree).
            Some(_) if at == parent || deleted.contains(at.as_str()) => Ok(None),
            _ => Err(format!("{path}: cannot inspect {at}: {error}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::test_config;
    use crate::protocol::Op;
    use crate::testing::put;

    fn refusal(config: &Config, ops: Vec<Op>) -> String {
        validate_batch(config, &BatchHeader::new(ops)).unwrap_err()
    }

    #[test]
    fn paths_outside_or_excluded_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let cases = [
            ("/etc/app/../passwd", "\"..\""),
            ("/etc/passwd", "outside the configured directories"),
            ("/etc/application/x", "outside the configured directories"),
            ("etc/app/x", "not absolute"),
            ("/etc/app/private/key", "excluded on this node"),
            ("/etc/app/dir.swp/inner", "excluded on this node"),
            ("/etc/app/.gosyncd-1.tmp", "temporary file name"),
            ("/etc/app/.gosyncd-1.tmp/inner", "temporary file name"),
        ];
        for (path, why) in cases {
            let err = refusal(&c, vec![put(path, b"x")]);
            assert!(err.contains(why), "{path}: {err}");
        }
    }

    #[test]
    fn configured_directories_are_never_deleted_or_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let delete = Op {
            path: "/etc/app".into(),
            action: Action::Delete,
            expect: None,
        };
        assert!(refusal(&c, vec![delete]).contains("never deleted"));
        assert!(refusal(&c, vec![put("/etc/app", b"x")]).contains("stay a directory"));
    }

    #[test]
    fn impossible_modes_and_link_targets_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let mut op = put("/etc/app/x", b"x");
        if let Action::Put { entry } = &mut op.action {
            entry.mode = 0o170_000;
        }
        assert!(refusal(&c, vec![op]).contains("not a permission mode"));
        let mut link = put("/etc/app/l", b"");
        if let Action::Put { entry } = &mut link.action {
            entry.content = Content::Symlink {
                target: String::new(),
            };
        }
        assert!(refusal(&c, vec![link]).contains("invalid symlink target"));
    }

    #[test]
    fn a_file_the_batch_replaces_by_a_directory_tree_does_not_refuse_the_paths_below_it() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("c"), "a file").unwrap();
        let deep = |first: Vec<Op>| {
            let mut ops = first;
            ops.push(Op {
                path: "/etc/app/c".into(),
                expect: None,
                action: Action::Put {
                    entry: Entry {
                        content: Content::Dir,
                        mode: 0o755,
                        ..crate::testing::file_entry(b"")
                    },
                },
            });
            ops.push(put("/etc/app/c/d/e.conf", b"1"));
            validate_batch(&c, &BatchHeader::new(ops))
        };
        let delete = Op {
            path: "/etc/app/c".into(),
            expect: Some(Box::new(crate::testing::file_entry(b"a file"))),
            action: Action::Delete,
        };
        assert!(deep(vec![delete]).is_ok());
        // Not deleted by the batch: still refused.
        let err = deep(Vec::new()).unwrap_err();
        assert!(err.contains("cannot inspect /etc/app/c"), "{err}");
    }

    #[test]
    fn a_symlink_planted_in_a_parent_refuses_the_whole_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), app.join("sub")).unwrap();
        let ops = vec![put("/etc/app/fine", b"1"), put("/etc/app/sub/evil", b"2")];
        let err = refusal(&c, ops);
        assert!(err.contains("/etc/app/sub is a symlink"), "{err}");
        assert!(
            !app.join("fine").exists(),
            "nothing is written when a batch is refused"
        );
        assert_eq!(
            std::fs::read_dir(tmp.path().join("outside"))
                .unwrap()
                .count(),
            0
        );
    }

    /// What is below a missing directory is not looked up again, and that never spares
    /// a path that is not below it: a symlink whose name sorts right after the paths below
    /// the missing directory still refuses the batch.
    #[test]
    fn a_symlink_beside_a_missing_directory_still_refuses_the_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        // "/etc/app/a0/..." sorts right after "/etc/app/a/...".
        std::os::unix::fs::symlink(tmp.path().join("outside"), app.join("a0")).unwrap();
        let mut ops: Vec<Op> = (0..5)
            .map(|i| put(&format!("/etc/app/a/d/f{i}"), b"new"))
            .collect();
        assert!(validate_batch(&c, &BatchHeader::new(ops.clone())).is_ok());
        ops.push(put("/etc/app/a0/evil", b"2"));
        ops.push(put("/etc/app/a/d/g", b"new"));
        let err = refusal(&c, ops);
        assert!(err.contains("/etc/app/a0 is a symlink"), "{err}");
    }
}
