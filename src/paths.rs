//! Pure rules about logical paths (the absolute paths that travel on the wire, such as
//! `/etc/haproxy/haproxy.cfg`): what a well-formed one is and what lies inside what.
//!
//! No I/O here; the receiver's confinement builds on these rules.

use crate::protocol::MAX_PATH_BYTES;

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

/// Whether `path` is inside one of `scope`, or is an ancestor of one of them (so that
/// the directories leading to a scoped path are created too). An empty scope is everything.
pub fn in_scope(path: &str, scope: &[String]) -> bool {
    scope.is_empty()
        || scope
            .iter()
            .any(|s| is_within(path, s) || is_within(s, path))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn parent_and_name_split_a_path() {
        assert_eq!(parent("/etc/haproxy/x"), "/etc/haproxy");
        assert_eq!(parent("/etc"), "/");
        assert_eq!(file_name("/etc/haproxy/x"), "x");
        let below: Vec<_> = components_below("/etc/haproxy/a/b", "/etc/haproxy").collect();
        assert_eq!(below, ["a", "b"]);
    }
}
