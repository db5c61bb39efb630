//! A directory's exclude rules: absolute paths and file-name globs built from its
//! `exclude` entries (plus, when asked, the editors' temporary files), matched
//! against logical paths. Pure: it neither walks trees nor touches the file system.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::paths::{self, is_within};

/// Editors' and package managers' temporary and backup files, excluded everywhere
/// unless `editor_excludes = false`: vim's swap files and its write test `4913`, backups
/// `*~`, emacs lock and auto-save files; dpkg's and ucf's conffile copies (a
/// `.dpkg-new` waits beside the live file while dpkg asks about a conffile) and rpm's.
pub const EDITOR_EXCLUDES: &[&str] = &[
    ".*.swp",
    ".*.swx",
    "*~",
    "4913",
    ".#*",
    "#*#",
    "*.dpkg-new",
    "*.dpkg-tmp",
    "*.dpkg-old",
    "*.dpkg-dist",
    "*.dpkg-bak",
    "*.ucf-new",
    "*.ucf-old",
    "*.ucf-dist",
    "*.rpmnew",
    "*.rpmsave",
    "*.rpmorig",
];

/// The exclude rules of one directory.
#[derive(Debug, Clone)]
pub struct Excludes {
    /// The entries as written, sent to peers so they can honour them.
    pub entries: Vec<String>,
    /// Absolute entries: the path and everything below it.
    paths: Vec<String>,
    /// Entries without a leading `/`: globs matched against file names.
    names: GlobSet,
}

impl Excludes {
    /// Builds the rules of directory `dir` from its entries.
    pub fn new(dir: &str, entries: &[String]) -> Result<Excludes, String> {
        Excludes::with_editor_defaults(dir, entries, false)
    }

    /// Builds the rules of directory `dir` from its entries, plus [`EDITOR_EXCLUDES`]
    /// when `editor` is set.
    pub fn with_editor_defaults(
        dir: &str,
        entries: &[String],
        editor: bool,
    ) -> Result<Excludes, String> {
        let defaults = EDITOR_EXCLUDES.iter().map(|e| e.to_string());
        let entries: Vec<String> = if editor {
            entries.iter().cloned().chain(defaults).collect()
        } else {
            entries.to_vec()
        };
        let entries = entries.as_slice();
        let mut paths = Vec::new();
        let mut names = GlobSetBuilder::new();
        for entry in entries {
            if entry.starts_with('/') {
                paths::check_normalized(entry).map_err(|e| format!("exclude {entry:?}: {e}"))?;
                if !is_within(entry, dir) || entry == dir {
                    return Err(format!(
                        "exclude {entry:?} is not inside its directory {dir:?}"
                    ));
                }
                paths.push(entry.clone());
            } else {
                if entry.is_empty() || entry.contains('/') {
                    return Err(format!(
                        "exclude {entry:?}: a pattern without a leading '/' matches file names and cannot contain '/'"
                    ));
                }
                let glob = GlobBuilder::new(entry)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| format!("exclude {entry:?}: {e}"))?;
                names.add(glob);
            }
        }
        let names = names
            .build()
            .map_err(|e| format!("exclude patterns: {e}"))?;
        Ok(Excludes {
            entries: entries.to_vec(),
            paths,
            names,
        })
    }

    /// Whether a logical path is excluded, either by an absolute entry or because its
    /// own name matches a pattern. Callers that walk trees prune excluded directories,
    /// so a name pattern excludes everything below a matching directory too; the
    /// receiver checks every component for the same effect.
    pub fn is_excluded(&self, path: &str) -> bool {
        self.paths.iter().any(|p| is_within(path, p)) || self.names.is_match(paths::file_name(path))
    }

    /// Whether these are the very entries of `other`: what one leaves out of a tree, the
    /// other does too (for the same directory).
    pub fn same_as(&self, other: &Excludes) -> bool {
        self.entries == other.entries
    }

    /// Whether `path` or any of its ancestors below `dir` is excluded.
    /// The caller has checked [`is_within`] (`path` and `dir` normalised).
    pub fn excludes_any_component(&self, dir: &str, path: &str) -> bool {
        // Each ancestor below `dir`, and `path` itself, is a prefix of `path`: checked
        // in place, without building it (this runs for every path of both trees).
        let start = dir.len();
        path[start..]
            .match_indices('/')
            .map(|(i, _)| start + i)
            .chain(std::iter::once(path.len()))
            .filter(|&end| end > start)
            .any(|end| self.is_excluded(&path[..end]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_are_the_same_only_with_the_same_entries() {
        let entries = |e: &[&str]| e.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = Excludes::new("/etc/x", &entries(&["*.swp", "/etc/x/private"])).unwrap();
        let b = Excludes::new("/etc/x", &entries(&["*.swp", "/etc/x/private"])).unwrap();
        let c = Excludes::new("/etc/x", &entries(&["*.swp"])).unwrap();
        assert!(a.same_as(&b));
        assert!(!a.same_as(&c) && !c.same_as(&a));
    }

    #[test]
    fn exclude_paths_match_on_component_boundaries() {
        let ex = Excludes::new("/etc/haproxy", &["/etc/haproxy/err".into()]).unwrap();
        assert!(ex.is_excluded("/etc/haproxy/err"));
        assert!(ex.is_excluded("/etc/haproxy/err/500.http"));
        assert!(!ex.is_excluded("/etc/haproxy/errors.bak"));
        assert!(!ex.is_excluded("/etc/haproxy"));
    }

    #[test]
    fn exclude_globs_match_file_names_only() {
        let ex = Excludes::new("/etc/x", &["*.swp".into(), "*~".into(), ".#*".into()]).unwrap();
        assert!(ex.is_excluded("/etc/x/.a.cfg.swp"));
        assert!(ex.is_excluded("/etc/x/sub/a.cfg~"));
        assert!(ex.is_excluded("/etc/x/.#lock"));
        assert!(!ex.is_excluded("/etc/x/a.cfg"));
        assert!(!ex.is_excluded("/etc/x/swp"));
        assert!(ex.excludes_any_component("/etc/x", "/etc/x/dir~/inner.cfg"));
        assert!(!ex.excludes_any_component("/etc/x", "/etc/x/dir/inner.cfg"));
        assert!(ex.excludes_any_component("/etc/x", "/etc/x/a/b/.#c/d/e.cfg"));
        assert!(ex.excludes_any_component("/etc/x", "/etc/x/a/b/c.swp"));
        assert!(!ex.excludes_any_component("/etc/x", "/etc/x"));
        // An absolute entry excludes what is below it, and only that.
        let ex = Excludes::new("/etc/x", &["/etc/x/a/private".into()]).unwrap();
        assert!(ex.excludes_any_component("/etc/x", "/etc/x/a/private/key"));
        assert!(ex.excludes_any_component("/etc/x", "/etc/x/a/private"));
        assert!(!ex.excludes_any_component("/etc/x", "/etc/x/a/private2/key"));
        assert!(!ex.excludes_any_component("/etc/x", "/etc/x/a"));
        assert!(Excludes::new("/etc/x", &["a/b".into()]).is_err());
    }
}
