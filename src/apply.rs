//! The receiver's side: confine every path a peer sends, check the whole batch before
//! writing anything, then carry the operations out atomically.
//!
//! Confinement rules: a path must be absolute, normalised, inside one of THIS node's
//! configured directories and not excluded by THIS node's config. Below a configured
//! directory nothing is followed: every component is opened with `O_NOFOLLOW` relative
//! to its parent's descriptor, so a symlink planted anywhere on the way cannot lead a
//! write outside. Files land through a temporary file in the same directory that is
//! fsynced, given its mode, owner and mtime, renamed over the target, and followed by an
//! fsync of the directory: a crash leaves the old file or the new one, never a mix.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::config::{Config, Directory};
use crate::manifest::{is_temp_name, TEMP_PREFIX, TEMP_SUFFIX};
use crate::paths::{self, components_below};
use crate::protocol::{
    Action, Batch, BatchHeader, Content, Entry, Op, OpResult, Outcome, MAX_LINK_TARGET_BYTES,
};

/// Checks that a path from a peer is one this node may write: well-formed, inside a
/// configured directory, not excluded, not one of gosyncd's temporary names.
pub fn confine<'c>(config: &'c Config, path: &str) -> Result<&'c Directory, String> {
    paths::check_normalized(path)?;
    let dir = config
        .directory_of(path)
        .ok_or_else(|| format!("{path}: outside the configured directories of this node"))?;
    if dir.excludes.excludes_any_component(&dir.path, path) {
        return Err(format!("{path}: excluded on this node"));
    }
    if is_temp_name(paths::file_name(path)) {
        return Err(format!("{path}: a gosyncd temporary file name"));
    }
    Ok(dir)
}

/// Checks a whole batch before anything is written. Returns the first reason to refuse.
pub fn validate_batch(config: &Config, header: &BatchHeader) -> Result<(), String> {
    let deleted: std::collections::HashSet<&str> = header
        .ops
        .iter()
        .filter(|op| op.action == Action::Delete)
        .map(|op| op.path.as_str())
        .collect();
    for op in &header.ops {
        let dir = confine(config, &op.path)?;
        if let Action::Put { entry } = &op.action {
            check_entry(&op.path, entry)?;
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
        check_no_symlink_on_the_way(config, dir, &op.path, &deleted)?;
    }
    Ok(())
}

fn check_entry(path: &str, entry: &Entry) -> Result<(), String> {
    if entry.mode > 0o7777 {
        return Err(format!(
            "{path}: mode {:o} is not a permission mode",
            entry.mode
        ));
    }
    if let Content::Symlink { target } = &entry.content {
        if target.is_empty() || target.contains('\0') || target.len() > MAX_LINK_TARGET_BYTES {
            return Err(format!("{path}: invalid symlink target"));
        }
    }
    Ok(())
}

/// Refuses a path one of whose parents below the configured directory is a symlink,
/// unless the same batch deletes that symlink first (a link replaced by a directory).
fn check_no_symlink_on_the_way(
    config: &Config,
    dir: &Directory,
    path: &str,
    deleted: &std::collections::HashSet<&str>,
) -> Result<(), String> {
    let mut logical = dir.path.clone();
    let mut components: Vec<&str> = components_below(path, &dir.path).collect();
    components.pop();
    for component in components {
        logical.push('/');
        logical.push_str(component);
        match std::fs::symlink_metadata(config.local_path(&logical)) {
            Ok(meta) if meta.file_type().is_symlink() && !deleted.contains(logical.as_str()) => {
                return Err(format!(
                    "{path}: refused, {logical} is a symlink on this node (links are never followed)"
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{path}: cannot inspect {logical}: {e}")),
        }
    }
    Ok(())
}

/// Carries out a validated batch, in order, and reports each operation's outcome.
/// `owners` says whether owners are applied (this process runs as root).
pub fn apply_batch(config: &Config, owners: bool, batch: &Batch<'_>) -> Vec<OpResult> {
    batch
        .header
        .ops
        .iter()
        .zip(&batch.contents)
        .map(|(op, content)| OpResult {
            path: op.path.clone(),
            outcome: apply_op(config, owners, op, *content),
        })
        .collect()
}

fn apply_op(config: &Config, owners: bool, op: &Op, content: Option<&[u8]>) -> Outcome {
    let Some(dir) = config.directory_of(&op.path) else {
        return Outcome::Failed("outside the configured directories".into());
    };
    let (parent, name) = match open_parent(config, dir, &op.path) {
        Ok(found) => found,
        Err(reason) => return Outcome::Failed(reason),
    };
    let current = match current_state(&parent, &name) {
        Ok(current) => current,
        Err(e) => return Outcome::Failed(format!("cannot read the current state: {e}")),
    };

    // Already in the wanted state (another sync got there first): nothing to do.
    let wanted = match &op.action {
        Action::Put { entry } => Some(entry),
        Action::Delete => None,
    };
    let already = match (&current, wanted) {
        (None, None) => true,
        (Some(have), Some(want)) => have.same_state(want, owners),
        _ => false,
    };
    if already {
        return Outcome::Applied;
    }
    let as_expected = match (&current, &op.expect) {
        (None, None) => true,
        (Some(have), Some(expect)) => have.same_state(expect, true),
        _ => false,
    };
    if !as_expected {
        let describe = |e: Option<&Entry>| e.map_or_else(|| "nothing".to_string(), Entry::describe);
        return Outcome::Conflict(format!(
            "changed on the peer since the sync was planned (expected {}, found {})",
            describe(op.expect.as_ref()),
            describe(current.as_ref())
        ));
    }

    let result = match &op.action {
        Action::Delete => delete(&parent, &name, current.as_ref()),
        Action::Put { entry } => put(&parent, &name, entry, content, owners),
    };
    match result {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// Opens the directory holding `path` without following any link below the configured
/// directory, and returns it with the final component's name.
fn open_parent(config: &Config, dir: &Directory, path: &str) -> Result<(OwnedFd, String), String> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if path == dir.path {
        // The configured directory itself: its parent is the administrator's, trusted.
        let parent = config.local_path(paths::parent(&dir.path));
        let fd = rustix::fs::open(&parent, dir_flags, Mode::empty())
            .map_err(|e| format!("cannot open {}: {e}", parent.display()))?;
        return Ok((fd, paths::file_name(path).to_string()));
    }
    let base = config.local_path(&dir.path);
    let mut fd = rustix::fs::open(&base, dir_flags, Mode::empty())
        .map_err(|e| format!("configured directory {} cannot be opened: {e}", dir.path))?;
    let mut components: Vec<&str> = components_below(path, &dir.path).collect();
    let name = components
        .pop()
        .expect("path below its directory")
        .to_string();
    let mut logical = dir.path.clone();
    for component in components {
        logical.push('/');
        logical.push_str(component);
        fd = match rustix::fs::openat(&fd, component, dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) => return Err(format!("parent directory {logical} does not exist")),
            Err(e) => {
                let is_link = rustix::fs::statat(&fd, component, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| {
                        rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Symlink
                    })
                    .unwrap_or(false);
                return Err(if is_link {
                    format!(
                        "refused, {logical} is a symlink on this node (links are never followed)"
                    )
                } else {
                    format!("{logical} cannot be opened as a directory: {e}")
                });
            }
        };
    }
    Ok((fd, name))
}

/// The state of `name` in `parent`, without following it.
fn current_state(parent: &OwnedFd, name: &str) -> io::Result<Option<Entry>> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let content = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::Directory => Content::Dir,
        rustix::fs::FileType::Symlink => {
            let target = rustix::fs::readlinkat(parent, name, Vec::new())?;
            Content::Symlink {
                target: target.to_string_lossy().into_owned(),
            }
        }
        rustix::fs::FileType::RegularFile => {
            let fd = open_regular(parent, name)?;
            Content::File {
                size: st.st_size as u64,
                sha256: crate::manifest::hash_reader(File::from(fd))?,
            }
        }
        other => {
            return Err(io::Error::other(format!(
                "{other:?} is not a file, directory or symlink"
            )))
        }
    };
    Ok(Some(Entry {
        content,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
    }))
}

/// Opens an existing regular file for reading: never through a symlink, never blocking
/// on a FIFO that replaced it, and refusing anything that is not a regular file.
fn open_regular(parent: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(io::Error::other(format!(
            "{name} is no longer a regular file"
        )));
    }
    Ok(fd)
}

fn temp_name() -> String {
    format!(
        "{TEMP_PREFIX}{}{TEMP_SUFFIX}",
        uuid::Uuid::new_v4().simple()
    )
}

fn put(
    parent: &OwnedFd,
    name: &str,
    entry: &Entry,
    content: Option<&[u8]>,
    owners: bool,
) -> io::Result<Outcome> {
    match &entry.content {
        Content::File { .. } => match content {
            Some(bytes) => write_file(parent, name, bytes, entry, owners)?,
            None => {
                let fd = open_regular(parent, name)?;
                set_meta(&fd, entry, owners)?;
                set_mtime(&fd, entry)?;
            }
        },
        Content::Dir => {
            match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let fd = rustix::fs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            set_meta(&fd, entry, owners)?;
            rustix::fs::fsync(parent)?;
        }
        Content::Symlink { target } => {
            let tmp = temp_name();
            rustix::fs::symlinkat(target.as_str(), parent, tmp.as_str())?;
            let placed = (|| {
                if owners {
                    rustix::fs::chownat(
                        parent,
                        tmp.as_str(),
                        Some(rustix::fs::Uid::from_raw(entry.uid)),
                        Some(rustix::fs::Gid::from_raw(entry.gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )?;
                }
                rustix::fs::renameat(parent, tmp.as_str(), parent, name)
            })();
            if let Err(e) = placed {
                let _ = rustix::fs::unlinkat(parent, tmp.as_str(), AtFlags::empty());
                return Err(e.into());
            }
            rustix::fs::fsync(parent)?;
        }
    }
    Ok(Outcome::Applied)
}

fn write_file(
    parent: &OwnedFd,
    name: &str,
    bytes: &[u8],
    entry: &Entry,
    owners: bool,
) -> io::Result<()> {
    let tmp = temp_name();
    let fd = rustix::fs::openat(
        parent,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let written = (|| {
        let mut file = File::from(fd);
        file.write_all(bytes)?;
        set_meta(&file, entry, owners)?;
        set_mtime(&file, entry)?;
        file.sync_all()?;
        rustix::fs::renameat(parent, tmp.as_str(), parent, name)?;
        Ok::<_, io::Error>(())
    })();
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(parent, tmp.as_str(), AtFlags::empty());
        return Err(e);
    }
    rustix::fs::fsync(parent)?;
    Ok(())
}

/// Owner first: changing the owner clears set-id bits, which the mode then restores.
fn set_meta(fd: impl AsFd, entry: &Entry, owners: bool) -> io::Result<()> {
    if owners {
        rustix::fs::fchown(
            &fd,
            Some(rustix::fs::Uid::from_raw(entry.uid)),
            Some(rustix::fs::Gid::from_raw(entry.gid)),
        )?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(entry.mode))?;
    Ok(())
}

fn set_mtime(fd: impl AsFd, entry: &Entry) -> io::Result<()> {
    let mtime = Timespec {
        tv_sec: entry.mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: entry.mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: mtime,
    };
    rustix::fs::futimens(&fd, &times)?;
    Ok(())
}

fn delete(parent: &OwnedFd, name: &str, current: Option<&Entry>) -> io::Result<Outcome> {
    let is_dir = current.is_some_and(|e| e.content.is_dir());
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    match rustix::fs::unlinkat(parent, name, flags) {
        Ok(()) => {}
        Err(Errno::NOTEMPTY) | Err(Errno::EXIST) => {
            return Ok(Outcome::Kept(
                "directory kept: it holds paths excluded on this node".into(),
            ))
        }
        Err(e) => return Err(e.into()),
    }
    rustix::fs::fsync(parent)?;
    Ok(Outcome::Applied)
}

/// Whether this process can apply owners.
pub fn applies_owners() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Digest256;
    use std::path::Path;

    fn config(root: &Path) -> Config {
        let text = format!(
            r#"
bind_address = "127.0.0.1:1"
remotes = []
tls_ca_certificate = "ca.pem"
tls_certificate = "cert.pem"
tls_private_key = "key.pem"
root = "{}"
directory "/etc/app" {{
  exclude = ["/etc/app/private", "*.swp"]
}}
"#,
            root.display()
        );
        Config::from_str(&text, Path::new("/x/config.hcl")).unwrap()
    }

    fn put(path: &str, bytes: &[u8]) -> Op {
        Op {
            path: path.into(),
            action: Action::Put {
                entry: Entry {
                    content: Content::File {
                        size: bytes.len() as u64,
                        sha256: Digest256::of(bytes),
                    },
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime_ns: 0,
                },
            },
            expect: None,
        }
    }

    fn refusal(config: &Config, ops: Vec<Op>) -> String {
        validate_batch(config, &BatchHeader { ops }).unwrap_err()
    }

    #[test]
    fn paths_outside_or_excluded_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let cases = [
            ("/etc/app/../passwd", "\"..\""),
            ("/etc/passwd", "outside the configured directories"),
            ("/etc/application/x", "outside the configured directories"),
            ("etc/app/x", "not absolute"),
            ("/etc/app/private/key", "excluded on this node"),
            ("/etc/app/dir.swp/inner", "excluded on this node"),
            ("/etc/app/.gosyncd-1.tmp", "temporary file name"),
        ];
        for (path, why) in cases {
            let err = refusal(&c, vec![put(path, b"x")]);
            assert!(err.contains(why), "{path}: {err}");
        }
    }

    #[test]
    fn configured_directories_are_never_deleted_or_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
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
        let c = config(tmp.path());
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
    fn a_symlink_planted_in_a_parent_refuses_the_whole_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
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

    #[test]
    fn the_executor_refuses_a_symlink_that_appears_after_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        let op = put("/etc/app/sub/evil", b"2");
        validate_batch(
            &c,
            &BatchHeader {
                ops: vec![op.clone()],
            },
        )
        .unwrap();
        // The link is planted between validation and execution.
        std::os::unix::fs::symlink(tmp.path().join("outside"), app.join("sub")).unwrap();
        let outcome = apply_op(&c, false, &op, Some(b"2"));
        assert!(
            matches!(&outcome, Outcome::Failed(r) if r.contains("symlink")),
            "{outcome:?}"
        );
        assert_eq!(
            std::fs::read_dir(tmp.path().join("outside"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_put_lands_atomically_with_its_mode_and_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("x"), b"old").unwrap();
        let mut op = put("/etc/app/x", b"new content");
        let old = crate::manifest::read_entry(&app.join("x"), false, &Default::default())
            .unwrap()
            .unwrap();
        op.expect = Some(old);
        if let Action::Put { entry } = &mut op.action {
            entry.mode = 0o600;
        }
        assert_eq!(
            apply_op(&c, false, &op, Some(b"new content")),
            Outcome::Applied
        );
        assert_eq!(std::fs::read(app.join("x")).unwrap(), b"new content");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(app.join("x"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&app)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x"]);
    }

    #[test]
    fn a_stale_expectation_is_a_conflict_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("x"), b"edited on the peer").unwrap();
        let op = put("/etc/app/x", b"pushed"); // planned against "nothing there"
        let outcome = apply_op(&c, false, &op, Some(b"pushed"));
        assert!(
            matches!(&outcome, Outcome::Conflict(r) if r.contains("expected nothing")),
            "{outcome:?}"
        );
        assert_eq!(std::fs::read(app.join("x")).unwrap(), b"edited on the peer");
    }

    #[test]
    fn a_fifo_in_place_of_a_file_does_not_block() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            app.join("fifo").as_path(),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let outcome = apply_op(&c, false, &put("/etc/app/fifo", b"x"), Some(b"x"));
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    }
}
