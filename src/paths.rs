//! Pure rules about logical paths (the absolute paths that travel on the wire, such as
//! `/etc/haproxy/haproxy.cfg`): what a well-formed one is and what lies inside what.
//!
//! No I/O here; the receiver's confinement builds on these rules.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::protocol::MAX_PATH_BYTES;

/// A logical path held once and shared: cloning it copies a pointer, not the path. An
/// operation's path is one, so that the change records of every peer a plan goes to
/// share the plan's paths (a push of 100,000 files to three peers otherwise held four
/// copies of each path). Travels as a plain string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogicalPath(Arc<str>);

impl LogicalPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for LogicalPath {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for LogicalPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for LogicalPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A map of `&LogicalPath` is looked up by `&str`, as one of `LogicalPath` is.
impl Borrow<str> for &LogicalPath {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// The key of a map of paths, from which an operation's path is made: shared where the
/// key is a [`LogicalPath`], copied otherwise.
pub trait PathKey: Borrow<str> + Ord {
    /// The path held once, if the key is one.
    fn shared(&self) -> Option<&LogicalPath> {
        None
    }
}

impl PathKey for String {}

impl PathKey for &str {}

impl PathKey for LogicalPath {
    fn shared(&self) -> Option<&LogicalPath> {
        Some(self)
    }
}

impl PathKey for &LogicalPath {
    fn shared(&self) -> Option<&LogicalPath> {
        Some(self)
    }
}

impl fmt::Display for LogicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl fmt::Debug for LogicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for LogicalPath {
    fn from(path: &str) -> LogicalPath {
        LogicalPath(path.into())
    }
}

impl From<String> for LogicalPath {
    fn from(path: String) -> LogicalPath {
        LogicalPath(path.into())
    }
}

impl From<&String> for LogicalPath {
    fn from(path: &String) -> LogicalPath {
        LogicalPath(path.as_str().into())
    }
}

impl From<LogicalPath> for String {
    fn from(path: LogicalPath) -> String {
        path.0.to_string()
    }
}

impl PartialEq<str> for LogicalPath {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for LogicalPath {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for LogicalPath {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<LogicalPath> for str {
    fn eq(&self, other: &LogicalPath) -> bool {
        *self == *other.0
    }
}

impl PartialEq<LogicalPath> for &str {
    fn eq(&self, other: &LogicalPath) -> bool {
        **self == *other.0
    }
}

impl PartialEq<LogicalPath> for String {
    fn eq(&self, other: &LogicalPath) -> bool {
        **self == *other.0
    }
}

impl Serialize for LogicalPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for LogicalPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LogicalPath, D::Error> {
        deserializer.deserialize_str(PathVisitor)
    }
}

/// Builds the shared path straight from the text read, without a `String` between.
struct PathVisitor;

impl serde::de::Visitor<'_> for PathVisitor {
    type Value = LogicalPath;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a path")
    }

    fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<LogicalPath, E> {
        Ok(path.into())
    }
}

/// Checks that `path` is absolute and normalised: no empty, `.` or `..` component, no
/// trailing slash, no NUL, not longer than [`MAX_PATH_BYTES`].
pub fn check_normalized(path: &str) -> Result<(), String> {
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "path longer than {MAX_PATH_BYTES} bytes ({} bytes)",
            path.len()
        ));
    }
    if path.contains('\0') {
        return Err(format!("path {path:?} contains a NUL byte"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path {path:?} is not absolute"));
    };
    if rest.is_empty() {
        return Err("path \"/\" is the filesystem root".into());
    }
    for component in rest.split('/') {
        match component {
            "" => return Err(format!("path {path:?} has an empty component")),
            "." | ".." => return Err(format!("path {path:?} has a {component:?} component")),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `path` is `dir` or lies below it, on component boundaries
/// (`/etc/haproxy/err` does not contain `/etc/haproxy/errors.bak`).
pub fn is_within(path: &str, dir: &str) -> bool {
    match path.strip_prefix(dir) {
        Some("") => true,
        Some(rest) => rest.starts_with('/') || dir.ends_with('/'),
        None => false,
    }
}

/// Whether one of `a` and `b` lies within the other (or they are the same path).
pub fn overlaps(a: &str, b: &str) -> bool {
    is_within(a, b) || is_within(b, a)
}

/// The components of `path` below `dir`; empty when `path == dir`.
/// The caller has checked [`is_within`].
pub fn components_below<'a>(path: &'a str, dir: &str) -> impl Iterator<Item = &'a str> {
    path[dir.len()..].split('/').filter(|c| !c.is_empty())
}

/// The last component of a normalised path.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The parent of a normalised path (`/` for a top-level path).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The ancestors of a normalised path, nearest first, up to `/` itself.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(path), |at| (*at != "/").then(|| parent(at))).skip(1)
}

/// Whether `path` is inside one of `scope`, or is an ancestor of one of them (so that
/// the directories leading to a scoped path are created too). An empty scope is everything.
pub fn in_scope(path: &str, scope: &[String]) -> bool {
    scope.is_empty() || scope.iter().any(|s| overlaps(path, s))
}

/// The entries of `map` whose keys are [`in_scope`] of `scope`: each scope path, its
/// ancestors and the range below it are looked up, instead of every key being tested
/// (a burst's scope against a daemon's 100,000 versions).
pub fn in_scope_of<'m, K: Borrow<str> + Ord, V>(
    map: &'m std::collections::BTreeMap<K, V>,
    scope: &[String],
) -> std::collections::BTreeMap<&'m K, &'m V> {
    if scope.is_empty() {
        return map.iter().collect();
    }
    let mut taken = std::collections::BTreeMap::new();
    for s in scope {
        for at in std::iter::once(s.as_str()).chain(ancestors(s)) {
            if let Some((k, v)) = map.get_key_value(at) {
                taken.insert(k, v);
            }
        }
        taken.extend(below(map, s));
    }
    taken
}

/// The entries of `map` strictly below directory `dir` (every key within it but its
/// own), in order: one range of the map, not a test of every key.
pub fn below<'m, K: Borrow<str> + Ord, V>(
    map: &'m std::collections::BTreeMap<K, V>,
    dir: &str,
) -> impl Iterator<Item = (&'m K, &'m V)> {
    let prefix = match dir.ends_with('/') {
        true => dir.to_string(),
        false => format!("{dir}/"),
    };
    map.range::<str, _>((
        std::ops::Bound::Included(prefix.as_str()),
        std::ops::Bound::Unbounded,
    ))
    .take_while(move |(k, _)| (*k).borrow().starts_with(prefix.as_str()))
}

/// A part of the tree to list: every path of `scope` with all below it, and every
/// directory of `shallow` one level deep (its own entry and its children's), each with
/// its ancestors. Both empty: the whole tree.
#[derive(Clone, Copy, Debug, Default)]
pub struct Region<'a> {
    pub scope: &'a [String],
    pub shallow: &'a [String],
}

impl<'a> Region<'a> {
    /// The paths of `scope` with all below them (empty: everything), as [`in_scope`].
    pub fn scope(scope: &'a [String]) -> Region<'a> {
        Region {
            scope,
            shallow: &[],
        }
    }

    /// Whether this is the whole tree.
    pub fn is_everything(&self) -> bool {
        self.scope.is_empty() && self.shallow.is_empty()
    }

    /// Whether `path` is listed.
    pub fn holds(&self, path: &str) -> bool {
        self.is_everything()
            || self.scope.iter().any(|s| overlaps(path, s))
            || self
                .shallow
                .iter()
                .any(|d| is_within(d, path) || (path != "/" && parent(path) == d))
    }

    /// Whether anything strictly below directory `dir` may be listed: whether a walk
    /// must open it.
    pub fn reaches_below(&self, dir: &str) -> bool {
        self.is_everything()
            || self.scope.iter().any(|s| overlaps(dir, s))
            || self.shallow.iter().any(|d| is_within(d, dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_scope_of_takes_what_in_scope_takes() {
        let keys = [
            "/",
            "/etc",
            "/etc/a",
            "/etc/a-b",
            "/etc/a-b/x",
            "/etc/a.conf",
            "/etc/a/b",
            "/etc/a/b/c",
            "/etc/a/bc",
            "/etc/ab",
            "/etc/b",
            "/etc/b/a",
            "/var/a",
        ];
        let map: std::collections::BTreeMap<Box<str>, usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| ((*k).into(), i))
            .collect();
        let scopes: [&[&str]; 8] = [
            &[],
            &["/etc/a"],
            &["/etc/a/b"],
            &["/etc/a/b/c/d"],
            &["/etc/a", "/etc/a/b", "/var"],
            &["/"],
            &["/etc/a-b", "/etc/b/a"],
            &["/nothing/here"],
        ];
        for scope in scopes {
            let scope: Vec<String> = scope.iter().map(|s| s.to_string()).collect();
            let expected: Vec<&str> = keys
                .iter()
                .copied()
                .filter(|k| in_scope(k, &scope))
                .collect();
            let taken: Vec<&str> = in_scope_of(&map, &scope)
                .into_keys()
                .map(|k| &**k)
                .collect();
            assert_eq!(taken, expected, "scope {scope:?}");
        }
    }

    #[test]
    fn a_paths_ancestors_run_from_its_parent_up_to_the_root() {
        assert_eq!(
            ancestors("/etc/app/d/x").collect::<Vec<_>>(),
            ["/etc/app/d", "/etc/app", "/etc", "/"]
        );
        assert_eq!(ancestors("/etc").collect::<Vec<_>>(), ["/"]);
        assert_eq!(ancestors("/").count(), 0);
    }

    #[test]
    fn a_logical_path_is_shared_when_cloned_and_travels_as_a_string() {
        let path = LogicalPath::from("/etc/app/a \"b\".cfg");
        let copy = path.clone();
        assert_eq!(copy.as_ptr(), path.as_ptr(), "a clone copies the path");
        let json = serde_json::to_string(&path).unwrap();
        assert_eq!(json, r#""/etc/app/a \"b\".cfg""#);
        let back: LogicalPath = serde_json::from_str(&json).unwrap();
        assert_eq!(back, path);
        assert_eq!(back, "/etc/app/a \"b\".cfg");
        assert_eq!("/etc/app/a \"b\".cfg".to_string(), back);
        let escaped: LogicalPath = serde_json::from_str(r#""/etc/\u00e9t\u00e9""#).unwrap();
        assert_eq!(escaped, "/etc/\u{e9}t\u{e9}");
        let err = serde_json::from_str::<LogicalPath>("42").unwrap_err();
        assert!(err.to_string().contains("expected a path"), "{err}");
        let mut sorted = [LogicalPath::from("/a/b"), LogicalPath::from("/a")];
        sorted.sort();
        assert_eq!(sorted, ["/a", "/a/b"].map(LogicalPath::from));
    }

    #[test]
    fn normalized_paths_are_accepted() {
        for p in [
            "/etc",
            "/etc/haproxy/haproxy.cfg",
            "/a b/c\\d",
            "/é/..x",
            "/.hidden",
        ] {
            assert_eq!(check_normalized(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn malformed_paths_are_refused_with_a_reason() {
        let cases = [
            ("etc/x", "not absolute"),
            ("", "not absolute"),
            ("/", "root"),
            ("/etc//x", "empty component"),
            ("/etc/x/", "empty component"),
            ("/etc/../x", "\"..\""),
            ("/etc/./x", "\".\""),
            ("/etc/x\0", "NUL"),
        ];
        for (p, why) in cases {
            let err = check_normalized(p).unwrap_err();
            assert!(err.contains(why), "{p:?}: {err}");
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        assert!(check_normalized(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn containment_is_on_component_boundaries() {
        assert!(is_within("/etc/haproxy", "/etc/haproxy"));
        assert!(is_within("/etc/haproxy/err/x", "/etc/haproxy/err"));
        assert!(!is_within("/etc/haproxy/errors.bak", "/etc/haproxy/err"));
        assert!(!is_within("/etc/haproxy2", "/etc/haproxy"));
        assert!(!is_within("/etc", "/etc/haproxy"));
    }

    #[test]
    fn scope_keeps_ancestors_and_descendants_only() {
        let scope = vec!["/etc/haproxy/conf.d".to_string()];
        assert!(in_scope("/etc/haproxy", &scope));
        assert!(in_scope("/etc/haproxy/conf.d/a.cfg", &scope));
        assert!(!in_scope("/etc/haproxy/haproxy.cfg", &scope));
        assert!(!in_scope("/etc/haproxy/conf.dx", &scope));
        assert!(in_scope("/anything", &[]));
    }

    #[test]
    fn a_region_lists_shallow_directories_one_level_deep_with_their_ancestors() {
        let scope = vec!["/etc/app/full".to_string()];
        let shallow = vec!["/etc/app/conf.d".to_string()];
        let region = Region {
            scope: &scope,
            shallow: &shallow,
        };
        for held in [
            "/etc",
            "/etc/app",
            "/etc/app/conf.d",
            "/etc/app/conf.d/a.cfg",
            "/etc/app/conf.d/sub",
            "/etc/app/full",
            "/etc/app/full/x/y",
        ] {
            assert!(region.holds(held), "{held}");
        }
        for not in [
            "/etc/app/conf.d/sub/b.cfg",
            "/etc/app/conf.dx",
            "/etc/app/top.cfg",
            "/etc/app/fullx",
        ] {
            assert!(!region.holds(not), "{not}");
        }
        assert!(region.reaches_below("/etc/app"));
        assert!(region.reaches_below("/etc/app/conf.d"));
        assert!(region.reaches_below("/etc/app/full/x"));
        assert!(!region.reaches_below("/etc/app/conf.d/sub"));
        assert!(!region.reaches_below("/etc/app/other"));
        let everything = Region::default();
        assert!(everything.holds("/anything/below") && everything.reaches_below("/x"));
        let scoped = Region::scope(&scope);
        assert!(scoped.holds("/etc/app") && !scoped.holds("/etc/app/conf.d/a.cfg"));
    }

    #[test]
    fn parent_and_name_split_a_path() {
        assert_eq!(parent("/etc/haproxy/x"), "/etc/haproxy");
        assert_eq!(parent("/etc"), "/");
        assert_eq!(file_name("/etc/haproxy/x"), "x");
        let below: Vec<_> = components_below("/etc/haproxy/a/b", "/etc/haproxy").collect();
        assert_eq!(below, ["a", "b"]);
    }
}
