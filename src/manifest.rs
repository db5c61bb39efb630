//! Scanning configured directories into a manifest: logical path -> kind, mode, owner,
//! content hash or link target. Symlinks are listed as links and never followed.
//!
//! A running daemon keeps a [`HashCache`] so that repeated scans of unchanged files do
//! not read them again; the cache is keyed by inode, size, mtime and ctime, so any write
//! to a file (which moves its ctime) invalidates its entry.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tracing::warn;
use walkdir::WalkDir;

use crate::config::{Config, Directory};
use crate::paths::in_scope;
use crate::protocol::{Content, Digest256, Entry};

/// Logical path -> state, ordered so that parents come before their children.
pub type Manifest = BTreeMap<String, Entry>;

/// Prefix of the temporary files gosyncd writes next to their targets; never synced.
pub const TEMP_PREFIX: &str = ".gosyncd-";
/// Suffix of those temporary files.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Whether a file name is one of gosyncd's own temporary files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

/// A digest of the part of `entries` inside configured directory `dir` that `keep`
/// keeps: what two nodes compare to learn, without listing it, whether they hold the
/// same tree. It covers what a sync compares (content, the mode of all but links,
/// owners when `owners`), never times, so two trees a sync would leave alone have the
/// same digest.
pub fn digest(
    entries: &Manifest,
    dir: &str,
    owners: bool,
    keep: impl Fn(&str) -> bool,
) -> Digest256 {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let below = entries
        .range::<str, _>((std::ops::Bound::Included(dir), std::ops::Bound::Unbounded))
        // Every path starting with `dir`'s text is together in the order; some of them
        // (`dir-x`) are not within it.
        .take_while(|(path, _)| path.starts_with(dir));
    for (path, entry) in below.filter(|(path, _)| crate::paths::is_within(path, dir)) {
        if !keep(path) {
            continue;
        }
        hash.update(path.as_bytes());
        hash.update([0]);
        match &entry.content {
            Content::File { sha256, .. } => {
                hash.update(b"f");
                hash.update(sha256.0);
            }
            Content::Dir => hash.update(b"d"),
            Content::Symlink { target } => {
                hash.update(b"l");
                hash.update(target.as_bytes());
            }
        }
        hash.update([0]);
        if !matches!(entry.content, Content::Symlink { .. }) {
            hash.update(entry.mode.to_be_bytes());
        }
        if owners {
            hash.update(entry.uid.to_be_bytes());
            hash.update(entry.gid.to_be_bytes());
        }
        hash.update(b"\n");
    }
    Digest256(hash.finalize().into())
}

/// The result of scanning.
#[derive(Debug, Default)]
pub struct Scan {
    pub entries: Manifest,
    /// Configured directories that do not exist here.
    pub missing: Vec<String>,
    /// Paths that could not be read, with the reason. Nothing below them is known, so
    /// nothing below them may be deleted elsewhere because of this scan.
    pub unreadable: Vec<(String, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: mtime_ns(meta),
            ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// File hashes remembered between scans by a long-running process.
#[derive(Default)]
pub struct HashCache {
    map: Mutex<HashMap<PathBuf, (Stamp, Digest256)>>,
}

impl HashCache {
    fn get(&self, path: &Path, stamp: Stamp) -> Option<Digest256> {
        let map = self.map.lock().expect("hash cache lock");
        map.get(path).filter(|(s, _)| *s == stamp).map(|(_, d)| *d)
    }

    fn put(&self, path: PathBuf, stamp: Stamp, digest: Digest256) {
        self.map
            .lock()
            .expect("hash cache lock")
            .insert(path, (stamp, digest));
    }

    /// Forgets the files a full scan did not find (deleted, renamed, excluded since), so
    /// that the cache holds at most one entry per file of the trees.
    fn keep_only(&self, config: &Config, scan: &Scan) {
        self.map
            .lock()
            .expect("hash cache lock")
            .retain(|local, _| {
                config
                    .logical_path(local)
                    .is_some_and(|logical| scan.entries.contains_key(&logical))
            });
    }

    /// How many files it remembers.
    pub fn len(&self) -> usize {
        self.map.lock().expect("hash cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long after its last change a file's hash may be cached. Timestamps move in
/// coarse ticks, so a file rewritten twice within one tick, at the same size, keeps its
/// stamp: hashing such a recent file again is the only safe answer.
const CACHE_SETTLE_NS: i64 = 2_000_000_000;

/// Whether a file last changed long enough ago for its stamp to identify its content.
fn settled(meta: &Metadata) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let changed = nanos(meta.ctime(), meta.ctime_nsec()).max(mtime_ns(meta));
    now.saturating_sub(changed) > CACHE_SETTLE_NS
}

/// Modification time of a file in nanoseconds since the epoch.
pub fn mtime_ns(meta: &Metadata) -> i64 {
    nanos(meta.mtime(), meta.mtime_nsec())
}

/// Seconds and nanoseconds as nanoseconds, saturating: a peer can set any mtime, and a
/// far-off one must not overflow.
pub fn nanos(secs: i64, nsecs: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsecs)
}

/// Hashes a reader's whole content.
pub fn hash_reader(mut reader: impl Read) -> io::Result<Digest256> {
    thread_local! {
        /// One read buffer per thread, reused: a new one for each of many small files
        /// cost more in zeroing it than in hashing them.
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with_borrow_mut(|buf| {
        if buf.is_empty() {
            buf.resize(HASH_BUFFER_BYTES, 0);
        }
        let mut hasher = Sha256::new();
        loop {
            let n = match reader.read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(Digest256(hasher.finalize().into()));
            }
            hasher.update(&buf[..n]);
        }
    })
}

/// Bytes read at once while hashing a file.
const HASH_BUFFER_BYTES: usize = 256 * 1024;

/// Opens a regular file for reading without following a symlink in its last component
/// and without blocking if a FIFO took its place.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is no longer a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// Scans every configured directory in `scope` (empty: all of them).
pub fn scan(config: &Config, scope: &[String], cache: &HashCache) -> Scan {
    let mut out = Scan::default();
    for dir in &config.directories {
        if in_scope(&dir.path, scope) {
            scan_directory(config, dir, scope, cache, &mut out);
        }
    }
    if scope.is_empty() {
        cache.keep_only(config, &out);
    }
    out
}

fn scan_directory(
    config: &Config,
    dir: &Directory,
    scope: &[String],
    cache: &HashCache,
    out: &mut Scan,
) {
    let local_root = config.local_path(&dir.path);
    match std::fs::metadata(&local_root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            out.unreadable
                .push((dir.path.clone(), "not a directory".into()));
            return;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            out.missing.push(dir.path.clone());
            return;
        }
        Err(e) => {
            out.unreadable.push((dir.path.clone(), e.to_string()));
            return;
        }
    }

    let logical_of = |local: &Path| -> Option<String> {
        let rel = local.strip_prefix(&local_root).ok()?;
        let rel = rel.to_str()?;
        Some(if rel.is_empty() {
            dir.path.clone()
        } else {
            format!("{}/{rel}", dir.path)
        })
    };

    // The configured directory itself may be a symlink placed by the administrator;
    // below it, nothing is followed.
    let walker = WalkDir::new(&local_root)
        .follow_links(false)
        .follow_root_links(true)
        .into_iter()
        .filter_entry(|e| {
            if e.depth() == 0 {
                return true;
            }
            let Some(name) = e.file_name().to_str() else {
                warn!(path = %e.path().display(), "skipping a name that is not UTF-8");
                return false;
            };
            if is_temp_name(name) {
                return false;
            }
            match logical_of(e.path()) {
                Some(logical) => !dir.excludes.is_excluded(&logical) && in_scope(&logical, scope),
                None => false,
            }
        });

    for item in walker {
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => {
                let at = e
                    .path()
                    .and_then(&logical_of)
                    .unwrap_or_else(|| dir.path.clone());
                warn!(path = %at, error = %e, "cannot read");
                out.unreadable.push((at, e.to_string()));
                continue;
            }
        };
        let Some(logical) = logical_of(entry.path()) else {
            continue;
        };
        match read_entry(entry.path(), entry.depth() == 0, cache) {
            Ok(Some(state)) => {
                out.entries.insert(logical, state);
            }
            Ok(None) => {
                warn!(path = %logical, "skipping a file that is not a regular file, directory or symlink")
            }
            Err(e) => {
                warn!(path = %logical, error = %e, "cannot read");
                out.unreadable.push((logical, e.to_string()));
            }
        }
    }
}

/// Reads the state of one local path without following a final symlink (unless
/// `follow` is set, for a configured directory itself). `Ok(None)` for a device,
/// socket or fifo.
pub fn read_entry(path: &Path, follow: bool, cache: &HashCache) -> io::Result<Option<Entry>> {
    let mut meta = if follow {
        std::fs::metadata(path)?
    } else {
        std::fs::symlink_metadata(path)?
    };
    let file_type = meta.file_type();
    let content = if file_type.is_dir() {
        Content::Dir
    } else if file_type.is_symlink() {
        let target = std::fs::read_link(path)?;
        let target = target.into_os_string().into_string().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "symlink target is not UTF-8")
        })?;
        Content::Symlink { target }
    } else if file_type.is_file() {
        let sha256 = match cache.get(path, Stamp::of(&meta)) {
            Some(digest) => digest,
            None => {
                // Size, metadata and hash all come from the one opened file, and only
                // if it did not change while it was read: a file being written is
                // reported as such, never as one version's size with another's hash.
                let mut file = open_nofollow(path)?;
                let before = file.metadata()?;
                let digest = hash_reader(&mut file)?;
                let after = file.metadata()?;
                if Stamp::of(&before) != Stamp::of(&after) {
                    return Err(io::Error::other("changed while it was read"));
                }
                if settled(&after) {
                    cache.put(path.to_path_buf(), Stamp::of(&after), digest);
                }
                meta = after;
                digest
            }
        };
        Content::File {
            size: meta.size(),
            sha256,
        }
    } else {
        return Ok(None);
    };
    Ok(Some(Entry {
        content,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: mtime_ns(&meta),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config_at, config_text};
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn a_digest_covers_what_a_sync_compares_and_only_the_directory() {
        let file = |bytes: &[u8], mode: u32, uid: u32, mtime_ns: i64| Entry {
            mode,
            uid,
            mtime_ns,
            ..crate::testing::file_entry(bytes)
        };
        let tree = |entries: &[(&str, Entry)]| -> Manifest {
            entries
                .iter()
                .map(|(p, e)| (p.to_string(), e.clone()))
                .collect()
        };
        let base = tree(&[
            ("/d/a", file(b"a", 0o644, 0, 1)),
            ("/d-x/b", file(b"b", 0o644, 0, 1)),
        ]);
        let of = |m: &Manifest, owners: bool| digest(m, "/d", owners, |_| true);
        let same = |m: &Manifest| of(m, true) == of(&base, true);
        assert!(
            same(&tree(&[
                ("/d/a", file(b"a", 0o644, 0, 99)),
                ("/d-x/b", file(b"other", 0o600, 0, 1)),
            ])),
            "times and other directories do not count"
        );
        assert!(
            !same(&tree(&[("/d/a", file(b"A", 0o644, 0, 1))])),
            "content"
        );
        assert!(!same(&tree(&[("/d/a", file(b"a", 0o600, 0, 1))])), "mode");
        assert!(!same(&tree(&[("/d/a", file(b"a", 0o644, 7, 1))])), "owner");
        let other_owner = tree(&[("/d/a", file(b"a", 0o644, 7, 1))]);
        assert_eq!(
            of(&other_owner, false),
            of(&base, false),
            "owners only when applied"
        );
        let extra = tree(&[
            ("/d/a", file(b"a", 0o644, 0, 1)),
            ("/d/skip.swp", file(b"x", 0o644, 0, 1)),
        ]);
        assert_ne!(of(&extra, true), of(&base, true));
        assert_eq!(
            digest(&extra, "/d", true, |p| !p.ends_with(".swp")),
            of(&base, true),
            "what `keep` leaves out does not count"
        );
    }

    #[test]
    fn scan_lists_files_dirs_and_links_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(app.join("empty")).unwrap();
        std::fs::write(app.join("a.cfg"), b"hello").unwrap();
        std::fs::set_permissions(app.join("a.cfg"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        std::fs::write(tmp.path().join("outside/secret"), b"s").unwrap();
        symlink("../../outside", app.join("link")).unwrap();
        std::fs::write(app.join(".gosyncd-1234.tmp"), b"partial").unwrap();
        std::fs::write(app.join("skip.swp"), b"x").unwrap();

        let text = config_text(tmp.path(), r#""*.swp""#) + "directory \"/etc/missing\" {\n}\n";
        let config = crate::testing::parse(&text);
        let scan = scan(&config, &[], &HashCache::default());
        let paths: Vec<_> = scan.entries.keys().cloned().collect();
        assert_eq!(
            paths,
            [
                "/etc/app",
                "/etc/app/a.cfg",
                "/etc/app/empty",
                "/etc/app/link"
            ]
        );
        assert_eq!(scan.missing, ["/etc/missing"]);
        let a = &scan.entries["/etc/app/a.cfg"];
        assert_eq!(a.mode, 0o640);
        assert_eq!(
            a.content,
            Content::File {
                size: 5,
                sha256: Digest256::of(b"hello")
            }
        );
        assert_eq!(
            scan.entries["/etc/app/link"].content,
            Content::Symlink {
                target: "../../outside".into()
            }
        );
    }

    #[test]
    fn a_full_scan_forgets_the_hashes_of_files_that_are_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(app.join(name), name).unwrap();
        }
        // Only files that settled (no change for 2 s) are cached.
        std::thread::sleep(std::time::Duration::from_millis(
            CACHE_SETTLE_NS as u64 / 1_000_000 + 100,
        ));
        let config = config_at(tmp.path(), "");
        let cache = HashCache::default();
        scan(&config, &[], &cache);
        assert_eq!(cache.len(), 3);
        std::fs::remove_file(app.join("a")).unwrap();
        std::fs::rename(app.join("b"), app.join("b2")).unwrap();
        // A scoped scan sees too little to judge.
        scan(&config, &["/etc/app/c".to_string()], &cache);
        assert_eq!(cache.len(), 3);
        scan(&config, &[], &cache);
        // Only "c" remains: "a" is gone, and "b2" is new to the cache (a rename moves
        // the ctime, so it is cached again only once it settles).
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn cache_is_invalidated_by_a_write() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("a"), b"one").unwrap();
        let config = config_at(tmp.path(), "");
        let cache = HashCache::default();
        let first = scan(&config, &[], &cache);
        std::fs::write(app.join("a"), b"two").unwrap();
        let second = scan(&config, &[], &cache);
        assert_ne!(first.entries["/etc/app/a"], second.entries["/etc/app/a"]);
        let Content::File { sha256, .. } = &second.entries["/etc/app/a"].content else {
            panic!("not a file")
        };
        assert_eq!(*sha256, Digest256::of(b"two"));
    }

    #[test]
    fn scope_limits_the_scan() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(app.join("sub")).unwrap();
        std::fs::write(app.join("sub/in"), b"1").unwrap();
        std::fs::write(app.join("out"), b"2").unwrap();
        let config = config_at(tmp.path(), "");
        let scan = scan(&config, &["/etc/app/sub".into()], &HashCache::default());
        let paths: Vec<_> = scan.entries.keys().cloned().collect();
        assert_eq!(paths, ["/etc/app", "/etc/app/sub", "/etc/app/sub/in"]);
        assert!(
            scan.missing.is_empty(),
            "out-of-scope directories are not scanned"
        );
    }
}
