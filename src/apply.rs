//! The receiver's side: confine every path a peer sends, check the whole batch before
//! writing anything, then carry the operations out atomically.
//!
//! Confinement rules: a path must be absolute, normalised, inside one of THIS node's
//! configured directories and not excluded by THIS node's config. Below a configured
//! directory nothing is followed: every component is opened with `O_NOFOLLOW` relative
//! to its parent's descriptor, so a symlink planted anywhere on the way cannot lead a
//! write outside. Files land through a temporary file that is given its mode, owner and
//! mtime, flushed, and renamed over the target (or, for a new file, an anonymous one
//! linked at the free name), followed by an fsync of the directory: a crash leaves the
//! old file or the new one, never a mix.
//!
//! The path rules and the no-follow opening of directories are [`crate::tree`]'s, shared
//! with the sender and the scans. Split by stage: `confine` checks a whole batch before
//! anything is written; `staging` receives the batch's contents into temporary files;
//! `batch` runs it and holds the results until they are committed or rejected;
//! `session` carries out each operation, deferring renames, links and flushes to the end of
//! the batch; `fs` holds the primitives that read and change one name only while it
//! holds what was checked. This file re-exports what the rest of the crate calls and
//! holds the property test of the receiver as a whole.

mod batch;
mod confine;
mod fs;
mod receiver;
mod session;
mod staging;
mod writeback;

pub use batch::{apply_batch, apply_body, Applied};
pub use confine::validate_batch;
pub(crate) use confine::{check_entry, check_mode};
pub use fs::remove_stale_temp_files;
pub(crate) use fs::state_of;
pub use receiver::{Received, Receiver};
pub use session::Resolution;
pub use staging::{receive, Staged};

/// The configuration of this module's unit tests: `/etc/app` below `root`, with
/// `/etc/app/private` and `*.swp` excluded.
#[cfg(test)]
fn test_config(root: &std::path::Path) -> crate::config::Config {
    crate::testing::config_at(root, r#""/etc/app/private", "*.swp""#)
}

/// Hostile batches against a real tree: whatever paths, links and deletions a peer
/// sends, nothing outside the configured directory (nor in its excluded part) changes,
/// and every accepted path is a normalised one inside it.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::protocol::{decode_batch, encode_batch, Action, BatchHeader, Content, Entry, Op};
    use crate::testing::file_entry;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    /// Mostly ordinary names (so that many batches are accepted and applied), with every
    /// kind of hostile component mixed in.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => "[a-c]{1,2}",
            3 => Just("private".to_string()),
            3 => Just("link".to_string()),
            2 => Just("sub".to_string()),
            1 => Just("..".to_string()),
            1 => Just(".".to_string()),
            1 => Just(String::new()),
            1 => Just("etc".to_string()),
            1 => Just("app".to_string()),
            1 => Just("other".to_string()),
            1 => Just("x.swp".to_string()),
            1 => Just(".gosyncd-1.tmp".to_string()),
            1 => Just("a\0b".to_string()),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        (
            prop::bool::weighted(0.95),
            prop::collection::vec(segment(), 0..5),
            prop::bool::weighted(0.8),
        )
            .prop_map(|(absolute, segments, under_app)| {
                let mut parts = Vec::new();
                if under_app {
                    parts.extend(["etc".to_string(), "app".to_string()]);
                }
                parts.extend(segments);
                let joined = parts.join("/");
                if absolute {
                    format!("/{joined}")
                } else {
                    joined
                }
            })
    }

    fn op() -> impl Strategy<Value = (Op, Option<Vec<u8>>)> {
        let target = prop_oneof![
            Just("../../outside".to_string()),
            Just("/etc/other".to_string()),
            Just("..".to_string()),
            path(),
        ];
        (
            path(),
            0..4u8,
            prop::collection::vec(any::<u8>(), 0..16),
            target,
        )
            .prop_map(|(path, kind, bytes, target)| {
                let entry = |content| Entry {
                    content,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime_ns: 0,
                };
                let (action, content) = match kind {
                    0 => (
                        Action::Put {
                            entry: file_entry(&bytes),
                        },
                        Some(bytes),
                    ),
                    1 => (
                        Action::Put {
                            entry: entry(Content::Dir),
                        },
                        None,
                    ),
                    2 => (
                        Action::Put {
                            entry: entry(Content::Symlink { target }),
                        },
                        None,
                    ),
                    _ => (Action::Delete, None),
                };
                (
                    Op {
                        path: path.into(),
                        action,
                        expect: None,
                    },
                    content,
                )
            })
    }

    /// Everything under `root` except the configured directory's non-excluded part:
    /// path -> what it is (file content, link target, or a directory).
    fn untouchable(root: &Path) -> BTreeMap<PathBuf, String> {
        let app = root.join("etc/app");
        let private = app.join("private");
        walkdir::WalkDir::new(root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| !e.path().starts_with(&app) || e.path().starts_with(&private))
            .map(|e| {
                let what = if e.path_is_symlink() {
                    format!("link {:?}", std::fs::read_link(e.path()).unwrap())
                } else if e.file_type().is_dir() {
                    "dir".to_string()
                } else {
                    format!("file {:?}", std::fs::read(e.path()).unwrap())
                };
                (e.path().to_path_buf(), what)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::testing::cases(500)))]

        #[test]
        fn no_batch_changes_anything_outside_the_configured_directory(
            ops in prop::collection::vec(op(), 1..4)
        ) {
            // In memory where possible: the property is about paths, not about flushing.
            let tmp = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
            let root = tmp.path();
            for dir in ["etc/app/sub", "etc/app/private", "etc/other", "outside"] {
                std::fs::create_dir_all(root.join(dir)).unwrap();
            }
            std::fs::write(root.join("etc/app/a"), "a").unwrap();
            std::fs::write(root.join("etc/app/private/key"), "key").unwrap();
            std::fs::write(root.join("etc/other/file"), "other").unwrap();
            std::fs::write(root.join("outside/secret"), "secret").unwrap();
            // A link planted inside the directory, pointing out of it.
            std::os::unix::fs::symlink("../../outside", root.join("etc/app/link")).unwrap();
            let config = test_config(root);
            let before = untouchable(root);

            let (ops, contents): (Vec<Op>, Vec<Option<Vec<u8>>>) = ops.into_iter().unzip();
            let header = BatchHeader::new(ops);
            let contents: Vec<&[u8]> = contents.iter().flatten().map(Vec::as_slice).collect();
            let body = encode_batch(&header, &contents);
            let Ok(batch) = decode_batch(&body) else {
                return Ok(());
            };
            if validate_batch(&config, &batch.header).is_ok() {
                for op in &batch.header.ops {
                    prop_assert!(crate::paths::check_normalized(&op.path).is_ok(), "{}", op.path);
                    prop_assert!(crate::paths::is_within(&op.path, "/etc/app"), "{}", op.path);
                    prop_assert!(!crate::paths::is_within(&op.path, "/etc/app/private"), "{}", op.path);
                }
                let (_, applied) = apply_body(&config, false, body.as_slice(), "a test")
                    .map_err(TestCaseError::fail)?;
                applied.commit();
            }
            prop_assert_eq!(untouchable(root), before);
        }
    }
}
