//! Which files some process holds open for writing, asked of `/proc` the way `fuser`
//! does: every open descriptor of every process, matched by device and inode, and its
//! access mode read from `fdinfo`.
//!
//! The events say when a file opened for writing is closed; this covers what they
//! cannot: a write event with no open file behind it (an mtime set through the path,
//! `truncate(2)`), or a hard link made, which are never followed by a close. It costs a
//! `stat` per open descriptor on the machine, so the watcher asks at most once a second,
//! and only while a file of its burst looks open. Read-only; it changes nothing.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A file's identity: device and inode.
pub type FileId = (u64, u64);

/// Of the files `wanted`, those some process holds open for writing; `None` when that
/// cannot be told (`/proc` unreadable, or another user's processes hidden from a daemon
/// that does not run as root).
pub fn open_for_writing(wanted: &HashSet<FileId>) -> Option<HashSet<FileId>> {
    if wanted.is_empty() {
        return Some(HashSet::new());
    }
    let mut found = HashSet::new();
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = process.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let descriptors = match std::fs::read_dir(process.path().join("fd")) {
            Ok(descriptors) => descriptors,
            // Hidden from this user: a writer could be there.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return None,
            // Gone meanwhile.
            Err(_) => continue,
        };
        for descriptor in descriptors.flatten() {
            // Follows the descriptor's link to the open file itself.
            let Ok(meta) = std::fs::metadata(descriptor.path()) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            if !wanted.contains(&id) || found.contains(&id) {
                continue;
            }
            let info = process.path().join("fdinfo").join(descriptor.file_name());
            if writes(&info) {
                found.insert(id);
            }
        }
    }
    Some(found)
}

/// Whether the descriptor `fdinfo` describes was opened for writing (its `flags:` line,
/// octal, has an access mode other than `O_RDONLY`). Unreadable: taken as writing.
fn writes(fdinfo: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(fdinfo) else {
        return true;
    };
    text.lines()
        .find_map(|line| line.strip_prefix("flags:"))
        .and_then(|flags| u32::from_str_radix(flags.trim(), 8).ok())
        .is_none_or(|flags| flags & 0o3 != 0)
}

#[cfg(test)]
/// The identity of the file at `path`, not following a final symlink.
pub fn file_id(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_open_for_writing_is_found_and_one_open_for_reading_or_closed_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let (written, read, closed) = (
            tmp.path().join("written"),
            tmp.path().join("read"),
            tmp.path().join("closed"),
        );
        let _writer = std::fs::File::create(&written).unwrap();
        std::fs::write(&read, "x").unwrap();
        let _reader = std::fs::File::open(&read).unwrap();
        std::fs::write(&closed, "x").unwrap();
        let ids: HashSet<FileId> = [&written, &read, &closed]
            .iter()
            .map(|p| file_id(p).unwrap())
            .collect();
        let Some(found) = open_for_writing(&ids) else {
            // Other processes' descriptors are hidden from this user (or container).
            eprintln!("skipped: /proc does not show every process's open files here");
            return;
        };
        assert_eq!(found, HashSet::from([file_id(&written).unwrap()]));
        drop(_writer);
        assert!(open_for_writing(&ids).unwrap().is_empty());
    }
}
