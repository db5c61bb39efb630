//! Files on a node, by logical path.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gosyncd::group::GroupNode;

/// Writes a file, creating its parents.
pub fn write(node: &GroupNode, logical: &str, bytes: impl AsRef<[u8]>) {
    let path = node.path(logical);
    std::fs::create_dir_all(path.parent().expect("has a parent")).unwrap();
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

pub fn mkdir(node: &GroupNode, logical: &str) {
    std::fs::create_dir_all(node.path(logical)).unwrap();
}

/// Creates a symlink at `logical` whose target text is `target`.
pub fn symlink(node: &GroupNode, target: impl AsRef<Path>, logical: &str) {
    let path = node.path(logical);
    std::fs::create_dir_all(path.parent().expect("has a parent")).unwrap();
    std::os::unix::fs::symlink(target, &path)
        .unwrap_or_else(|e| panic!("cannot link {}: {e}", path.display()));
}

pub fn chmod(node: &GroupNode, logical: &str, mode: u32) {
    std::fs::set_permissions(node.path(logical), std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Removes a file, link or whole directory (never following a link).
pub fn remove(node: &GroupNode, logical: &str) {
    let path = node.path(logical);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    if meta.is_dir() {
        std::fs::remove_dir_all(&path).unwrap();
    } else {
        std::fs::remove_file(&path).unwrap();
    }
}

pub fn read(node: &GroupNode, logical: &str) -> Vec<u8> {
    let path = node.path(logical);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn exists(node: &GroupNode, logical: &str) -> bool {
    std::fs::symlink_metadata(node.path(logical)).is_ok()
}

/// The target text of a symlink, panicking when the path is not a symlink.
pub fn link_target(node: &GroupNode, logical: &str) -> PathBuf {
    let path = node.path(logical);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(
        meta.file_type().is_symlink(),
        "{} is not a symlink",
        path.display()
    );
    std::fs::read_link(&path).unwrap()
}
