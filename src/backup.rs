//! Backups of the versions a sync replaces or deletes.
//!
//! Layout, under a directory's `backup.directory`: one directory per logical path
//! (`/etc/haproxy/haproxy.cfg` -> `etc/haproxy/haproxy.cfg/`), holding one pair of
//! files per kept version, named by the time it was taken:
//! `20261124T031500.123456789Z` (the content, mode 0600; absent for a symlink) and
//! `20261124T031500.123456789Z.json` (the path, its metadata, and why it was replaced).
//! The `.json` file is written last, so a version is listed only once it is complete.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fd::OwnedFd;
use serde::{Deserialize, Serialize};

use crate::config::Backup;
use crate::protocol::{Content, Entry};

/// A kept version: what its `.json` file holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Kept {
    /// The logical path.
    pub path: String,
    /// Its name: when it was taken, `20261124T031500.123456789Z`.
    pub version: String,
    /// Why: `replaced by a sync from 10.0.0.2:51234`, `deleted by ...`, `restored ...`.
    pub reason: String,
    pub entry: Entry,
}

/// The directory holding `logical`'s versions.
fn versions_dir(backup: &Backup, logical: &str) -> PathBuf {
    backup.directory.join(logical.trim_start_matches('/'))
}

/// A version name for now; sorts in time order.
fn version_now() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%S.%9fZ").to_string()
}

/// Keeps the current version of `name` in `parent` (the state `entry` describes, as
/// checked by the caller), then prunes the oldest beyond `backup.keep`. A regular file's
/// content is copied from an `O_NOFOLLOW` descriptor; a symlink keeps its target in the
/// metadata.
pub fn save(
    backup: &Backup,
    logical: &str,
    parent: &OwnedFd,
    name: &str,
    entry: &Entry,
    reason: &str,
) -> io::Result<Kept> {
    let dir = versions_dir(backup, logical);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    let mut version = version_now();
    while dir.join(format!("{version}.json")).exists() {
        version = version_now();
    }
    if let Content::File { .. } = entry.content {
        let source = crate::tree::open_regular(parent, name)?;
        let mut source = File::from(source);
        let partial = dir.join(format!(".{version}.partial"));
        let mut copy = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)?;
        io::copy(&mut source, &mut copy)?;
        copy.sync_all()?;
        fs::rename(&partial, dir.join(&version))?;
    }
    let kept = Kept {
        path: logical.to_string(),
        version: version.clone(),
        reason: reason.to_string(),
        entry: entry.clone(),
    };
    let json = dir.join(format!("{version}.json"));
    let partial = dir.join(format!(".{version}.json.partial"));
    let mut meta = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)?;
    meta.write_all(&serde_json::to_vec_pretty(&kept).map_err(io::Error::other)?)?;
    meta.sync_all()?;
    fs::rename(&partial, &json)?;
    prune(backup, logical)?;
    Ok(kept)
}

/// Where a kept version is: its content, or for a version without content (a symlink)
/// its metadata file.
pub fn location(backup: &Backup, kept: &Kept) -> PathBuf {
    let dir = versions_dir(backup, &kept.path);
    match kept.entry.content {
        Content::File { .. } => dir.join(&kept.version),
        _ => dir.join(format!("{}.json", kept.version)),
    }
}

/// Removes the oldest versions of `logical` beyond `backup.keep`.
fn prune(backup: &Backup, logical: &str) -> io::Result<()> {
    let dir = versions_dir(backup, logical);
    let mut names = version_names(&dir)?;
    while names.len() > backup.keep {
        let oldest = names.remove(0);
        let _ = fs::remove_file(dir.join(&oldest));
        fs::remove_file(dir.join(format!("{oldest}.json")))?;
    }
    Ok(())
}

/// Whether `name` is a version's name, as [`version_now`] makes them:
/// `20261124T031500.123456789Z`.
fn is_version_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 26
        && b[8] == b'T'
        && b[15] == b'.'
        && b[25] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 8 | 15 | 25) || c.is_ascii_digit())
}

/// The complete versions in `dir`, oldest first.
fn version_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            // A synced path named like a version has a directory of its own here (its
            // versions): only regular files named as versions are versions.
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .filter(|n| is_version_name(n))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    names.sort();
    Ok(names)
}

/// Every kept version of the paths at or below `logical`, oldest first per path.
pub fn list(backup: &Backup, logical: &str) -> io::Result<Vec<Kept>> {
    let root = versions_dir(backup, logical);
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
        let entry = entry.map_err(io::Error::other)?;
        let name = entry.file_name().to_string_lossy();
        if !entry.file_type().is_file() || name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let text = fs::read(entry.path())?;
        match serde_json::from_slice::<Kept>(&text) {
            Ok(version) => out.push(version),
            Err(e) => {
                tracing::warn!(file = %entry.path().display(), "unreadable backup metadata: {e}")
            }
        }
    }
    Ok(out)
}

/// The content of a kept file version.
pub fn content(backup: &Backup, version: &Kept) -> io::Result<Vec<u8>> {
    fs::read(versions_dir(backup, &version.path).join(&version.version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::file_entry;

    #[test]
    fn a_synced_name_shaped_like_a_version_is_not_taken_for_one() {
        assert!(is_version_name(&version_now()));
        for name in [
            "20261124T031500.123456789",
            "x0261124T031500.123456789Z",
            ".2026",
        ] {
            assert!(!is_version_name(name), "{name}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("etc/app/dir");
        // The versions of /etc/app/dir/20000101T000000.000000000Z.json live in a
        // directory of that name, beside /etc/app/dir's own versions.
        fs::create_dir_all(dir.join("20000101T000000.000000000Z.json")).unwrap();
        fs::write(dir.join("20261124T031500.123456789Z.json"), "{}").unwrap();
        fs::write(dir.join("notes.json"), "{}").unwrap();
        assert_eq!(version_names(&dir).unwrap(), ["20261124T031500.123456789Z"]);
    }

    #[test]
    fn versions_are_kept_with_their_content_listed_and_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let live = tmp.path().join("live");
        fs::create_dir(&live).unwrap();
        let backup = Backup {
            directory: tmp.path().join("backups"),
            keep: 2,
        };
        let parent = crate::tree::open_dir(&live).unwrap();
        for content in ["one", "two", "three"] {
            fs::write(live.join("app.cfg"), content).unwrap();
            save(
                &backup,
                "/etc/app/app.cfg",
                &parent,
                "app.cfg",
                &file_entry(content.as_bytes()),
                &format!("replaced ({content})"),
            )
            .unwrap();
        }
        let kept = list(&backup, "/etc/app").unwrap();
        let contents: Vec<Vec<u8>> = kept.iter().map(|v| content(&backup, v).unwrap()).collect();
        assert_eq!(
            contents,
            [b"two".to_vec(), b"three".to_vec()],
            "the oldest is pruned"
        );
        assert_eq!(kept[1].reason, "replaced (three)");
        assert_eq!(kept[1].path, "/etc/app/app.cfg");
        assert!(kept[0].version < kept[1].version);
        assert_eq!(
            fs::read(location(&backup, &kept[1])).unwrap(),
            b"three",
            "a file's location is its content"
        );
        assert_eq!(list(&backup, "/etc/other").unwrap(), []);
    }
}
