//! Scanning configured directories into a manifest: logical path -> kind, mode, owner,
//! content hash or link target. Symlinks are listed as links and never followed.
//!
//! A running daemon keeps the hash of each file it scanned with the file's [`Stamp`]
//! (inode, size, mtime and ctime), so that repeated scans of unchanged files do not read
//! them again; any write to a file moves its ctime, which invalidates the hash kept.

use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tracing::warn;

use crate::config::{Config, Directory};
use crate::paths::{ancestors, file_name, is_within, parent, LogicalPath, Region};
use crate::protocol::{Content, Digest256, Entry};
use crate::tree::{is_temp_name, Parents};

mod placed;
mod readers;

pub use placed::Placed;
use readers::Readers;

/// Logical path -> state, ordered so that parents come before their children.
pub type Manifest = BTreeMap<LogicalPath, Entry>;

/// A digest of the part of `entries` inside configured directory `dir` that `keep`
/// keeps: what two nodes compare to learn, without listing it, whether they hold the
/// same tree. It covers what a sync compares (content, the mode of all but links,
/// owners when `owners`), never times, so two trees a sync would leave alone have the
/// same digest.
///
/// It is made of the digests of the directory's levels (see [`level_digests`]), which
/// between them cover every path once: a daemon keeps those, and after a change makes
/// again only the levels of the directories that changed.
pub fn digest(
    entries: &Manifest,
    dir: &str,
    owners: bool,
    keep: impl Fn(&str) -> bool,
) -> Digest256 {
    let levels = level_digests(entries, dir, owners, keep);
    digest_of_levels(levels.iter().map(|(path, level)| (path.as_str(), level)))
}

/// The digest of a configured directory from the digests of its levels, given in the
/// order of their paths.
pub fn digest_of_levels<'a>(
    levels: impl IntoIterator<Item = (&'a str, &'a Digest256)>,
) -> Digest256 {
    let mut hash = Sha256::new();
    for (path, level) in levels {
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(level.0);
    }
    Digest256(hash.finalize().into())
}

/// The entries of `entries` that are `dir` or below it, in order.
fn within<'a>(
    entries: &'a Manifest,
    dir: &'a str,
) -> impl Iterator<Item = (&'a LogicalPath, &'a Entry)> {
    // `dir` sorts before every path below it.
    entries
        .get_key_value(dir)
        .into_iter()
        .chain(crate::paths::below(entries, dir))
}

/// The digest of each level of configured directory `dir` in `entries` (the part `keep`
/// keeps), by directory: a level is a directory's own entry and its children's, in the
/// order of their names. Two nodes whose [`digest`]s of a directory differ compare its
/// levels to find where, and list only the levels that differ: a change to a path
/// changes the level of its parent directory and no other (a directory's own entry is
/// in its parent's level and in its own, so that the configured directory's is in
/// one). Equal to what [`scan_digests`] hashes while walking.
pub fn level_digests(
    entries: &Manifest,
    dir: &str,
    owners: bool,
    keep: impl Fn(&str) -> bool,
) -> BTreeMap<String, Digest256> {
    let mut levels: std::collections::HashMap<&str, Sha256> = std::collections::HashMap::new();
    for (path, entry) in within(entries, dir).filter(|(path, _)| keep(path)) {
        if path != dir {
            // A child whose parent is not kept is not kept either.
            let Some(level) = levels.get_mut(parent(path)) else {
                continue;
            };
            digest_entry(level, path, entry, owners);
        }
        if entry.content.is_dir() {
            let mut level = Sha256::new();
            digest_entry(&mut level, path, entry, owners);
            levels.insert(path, level);
        }
    }
    levels
        .into_iter()
        .map(|(path, level)| (path.to_string(), Digest256(level.finalize().into())))
        .collect()
}

/// The digest of the level of directory `logical` (own entry `own`), whose children
/// (as [`children`] lists them) it sorts by name.
fn level_digest(
    logical: &str,
    own: &Entry,
    children: &mut [(String, LogicalPath, Entry)],
    owners: bool,
) -> Digest256 {
    children.sort_unstable_by(|(a, ..), (b, ..)| a.as_bytes().cmp(b.as_bytes()));
    let mut level = Sha256::new();
    digest_entry(&mut level, logical, own, owners);
    for (_, child, entry) in children.iter() {
        digest_entry(&mut level, child, entry, owners);
    }
    Digest256(level.finalize().into())
}

/// Adds one entry to a directory's digest (see [`digest`]).
fn digest_entry(hash: &mut Sha256, path: &str, entry: &Entry, owners: bool) {
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

/// What [`scan_digests`] found: the digest of each configured directory present, and
/// what a [`Scan`] of the whole tree would say is missing or unreadable.
#[derive(Debug, Default)]
pub struct DigestScan {
    pub digests: Vec<(String, Digest256)>,
    /// The digest of each level of those directories (see [`level_digests`]), hashed in
    /// the same walk, with how many children the level holds, by directory.
    pub levels: BTreeMap<String, (Digest256, u64)>,
    pub missing: Vec<String>,
    pub unreadable: Vec<(String, String)>,
}

/// The digest of every configured directory present, equal to [`digest`] of a full
/// [`scan`] (with `keep` keeping everything), computed while walking: each directory's
/// level is hashed as it is read, and no entry is kept, so a digest costs memory for
/// the levels, never for the tree.
pub fn scan_digests(config: &Config, cache: &HashCache, owners: bool) -> DigestScan {
    let mut out = DigestScan::default();
    let mut readers = Readers::new(cache);
    let mut parents = Parents::default();
    for dir in &config.directories {
        walk_top(config, dir, &mut parents, &mut readers, owners, &mut out);
    }
    out.digests = directory_digests(config, &out.levels);
    out
}

/// Walks configured directory `dir` whole into `out`.
fn walk_top(
    config: &Config,
    dir: &Directory,
    parents: &mut Parents,
    readers: &mut Readers,
    owners: bool,
    out: &mut DigestScan,
) {
    let Some((fd, top)) = open_top(config, dir, parents, &mut out.missing, &mut out.unreadable)
    else {
        return;
    };
    let top = (LogicalPath::from(&dir.path), top);
    walk_levels(config, dir, parents, top, Some(fd), readers, owners, out);
}

/// The digest of each configured directory whose top level is in `levels`, made from
/// its levels (see [`digest`]).
fn directory_digests(
    config: &Config,
    levels: &BTreeMap<String, (Digest256, u64)>,
) -> Vec<(String, Digest256)> {
    config
        .directories
        .iter()
        .filter(|dir| levels.contains_key(&dir.path))
        .map(|dir| {
            let within =
                levels_within(levels, &dir.path).map(|(path, (level, _))| (path.as_str(), level));
            (dir.path.clone(), digest_of_levels(within))
        })
        .collect()
}

/// The levels of `levels` that are directory `path` or below it, in order.
fn levels_within<'a>(
    levels: &'a BTreeMap<String, (Digest256, u64)>,
    path: &'a str,
) -> impl Iterator<Item = (&'a String, &'a (Digest256, u64))> {
    // Every path that starts with `path` comes in one stretch from it; not all of them
    // are below it (`/etc/app-x` for `/etc/app`).
    levels
        .range::<str, _>((std::ops::Bound::Included(path), std::ops::Bound::Unbounded))
        .take_while(move |(at, _)| at.starts_with(path))
        .filter(move |(at, _)| is_within(at, path))
}

/// Walks again, in a tree whose last walk for digests is `walked`, where it changed at
/// or below the local paths `touched`: the directory holding each (its level lists it),
/// and each that is a directory whole; then makes every configured directory's digest
/// again from the levels. The same as a new [`scan_digests`] when every change in the
/// tree since `walked` was made is at or below one of `touched`.
pub fn rescan_digests(
    config: &Config,
    cache: &HashCache,
    owners: bool,
    walked: &mut DigestScan,
    touched: &std::collections::BTreeSet<std::path::PathBuf>,
) {
    use std::collections::BTreeSet;
    let mut whole: BTreeSet<String> = BTreeSet::new();
    let mut relist: BTreeSet<String> = BTreeSet::new();
    for logical in touched
        .iter()
        .filter_map(|local| config.logical_path(local))
    {
        if !config.directories.iter().any(|d| d.path == logical) {
            relist.insert(parent(&logical).to_string());
        }
        whole.insert(logical);
    }
    // A configured directory that appeared or went, whatever the events said: walked
    // whole (as `open_top` finds it).
    for dir in &config.directories {
        let is_dir = std::fs::metadata(config.local_path(&dir.path)).is_ok_and(|m| m.is_dir());
        if is_dir != walked.levels.contains_key(&dir.path) {
            whole.insert(dir.path.clone());
        }
    }
    let mut readers = Readers::new(cache);
    let mut parents = Parents::default();
    let roots: Vec<&String> = whole
        .iter()
        .filter(|path| !ancestors(path).any(|at| whole.contains(at)))
        .collect();
    for path in &roots {
        walk_whole(config, owners, path, walked, &mut readers, &mut parents);
    }
    let mut relist: Vec<String> = relist
        .into_iter()
        .filter(|d| !roots.iter().any(|root| is_within(d, root)))
        .collect();
    while let Some(path) = relist.pop() {
        if !walked.levels.contains_key(&path) {
            // Not walked before (new, or unreadable then): whole, and its directory
            // lists it.
            walk_whole(config, owners, &path, walked, &mut readers, &mut parents);
            if config.directory_of(&path).is_some_and(|d| d.path != path) {
                relist.push(parent(&path).to_string());
            }
            continue;
        }
        let dir = config
            .directory_of(&path)
            .expect("a level is in a configured directory");
        walked
            .unreadable
            .retain(|(at, _)| at != &path && parent(at) != path);
        let listed = parents.dir(config, dir, &path).ok().and_then(|fd| {
            let own = entry_of(&rustix::fs::fstat(&*fd).ok()?, Content::Dir);
            list_level(&fd, &path, &own, dir, &mut readers, owners, walked)
        });
        let Some(children) = listed else {
            // Gone or unreadable now: its directory tells.
            walk_whole(config, owners, &path, walked, &mut readers, &mut parents);
            if dir.path != path {
                relist.push(parent(&path).to_string());
            }
            continue;
        };
        // Directories that went: forgotten; that came: walked whole.
        let now: BTreeSet<&str> = children
            .iter()
            .filter(|(_, _, entry)| entry.content.is_dir())
            .map(|(_, child, _)| child.as_str())
            .collect();
        let gone: Vec<String> = levels_within(&walked.levels, &path)
            .map(|(at, _)| at)
            .filter(|at| at.as_str() != path && parent(at) == path && !now.contains(at.as_str()))
            .cloned()
            .collect();
        for at in gone {
            forget_below(walked, &at);
        }
        for child in now {
            if !walked.levels.contains_key(child) {
                walk_whole(config, owners, child, walked, &mut readers, &mut parents);
            }
        }
    }
    // In the order of the configured directories, as a walk of the whole tree finds them.
    walked
        .missing
        .sort_by_key(|m| config.directories.iter().position(|d| &d.path == m));
    walked.digests = directory_digests(config, &walked.levels);
}

/// Walks `path` again whole, if it is a directory shown in its configured directory,
/// after forgetting what was walked at or below it.
fn walk_whole(
    config: &Config,
    owners: bool,
    path: &str,
    walked: &mut DigestScan,
    readers: &mut Readers,
    parents: &mut Parents,
) {
    forget_below(walked, path);
    let Some(dir) = config.directory_of(path) else {
        return;
    };
    if dir.path == path {
        walked.missing.retain(|m| m != path);
        return walk_top(config, dir, parents, readers, owners, walked);
    }
    let shown = ancestors(path)
        .take_while(|at| is_within(at, &dir.path) && *at != dir.path)
        .chain([path])
        .all(|at| !dir.excludes.is_excluded(at) && !is_temp_name(file_name(at)));
    if !shown {
        return;
    }
    let Ok(fd) = parents.dir(config, dir, parent(path)) else {
        // Its directory tells, when it is listed.
        return;
    };
    if let Ok(Found::Entry(own)) = stat_below(&fd, file_name(path), path, readers.cache()) {
        if own.content.is_dir() {
            let start = (LogicalPath::from(path), own);
            walk_levels(config, dir, parents, start, None, readers, owners, walked);
        }
    }
}

/// Forgets the levels and the unreadable paths at or below `path`.
fn forget_below(walked: &mut DigestScan, path: &str) {
    let below: Vec<String> = levels_within(&walked.levels, path)
        .map(|(at, _)| at.clone())
        .collect();
    for at in below {
        walked.levels.remove(&at);
    }
    walked.unreadable.retain(|(at, _)| !is_within(at, path));
}

/// Adds to `out.levels` the level of directory `start` of configured directory `dir`
/// (its logical path and own entry; open as `fd`, if it is) and of every directory
/// below it, its files read by `readers`.
#[allow(clippy::too_many_arguments)]
fn walk_levels(
    config: &Config,
    dir: &Directory,
    parents: &mut Parents,
    start: (LogicalPath, Entry),
    fd: Option<Arc<OwnedFd>>,
    readers: &mut Readers,
    owners: bool,
    out: &mut DigestScan,
) {
    let mut opened = fd;
    let mut walking = vec![start];
    while let Some((logical, own)) = walking.pop() {
        let (logical, fd) = match opened.take() {
            Some(fd) => (logical, fd),
            None => match open_walked(config, dir, parents, logical, &mut out.unreadable) {
                Some(opened) => opened,
                None => continue,
            },
        };
        let Some(children) = list_level(&fd, &logical, &own, dir, readers, owners, out) else {
            continue;
        };
        // In reverse, so that the first is walked next.
        for (_, child, entry) in children.into_iter().rev() {
            if entry.content.is_dir() {
                walking.push((child, entry));
            }
        }
    }
}

/// Lists directory `logical` of configured directory `dir` (open as `fd`, its own entry
/// `own`), its files read by `readers`, and puts its level into `out.levels`; returns
/// its children, or `None` when it cannot be listed (recorded in `out.unreadable`).
fn list_level(
    fd: &Arc<OwnedFd>,
    logical: &str,
    own: &Entry,
    dir: &Directory,
    readers: &mut Readers,
    owners: bool,
    out: &mut DigestScan,
) -> Option<Vec<(String, LogicalPath, Entry)>> {
    let everything = Region::default();
    let mut children = children(fd, logical, dir, everything, readers, &mut out.unreadable)?;
    let read = settle(readers.drain(), &mut out.unreadable);
    children.extend(read.map(|(child, entry)| (file_name(&child).to_string(), child, entry)));
    let level = level_digest(logical, own, &mut children, owners);
    out.levels
        .insert(logical.to_string(), (level, children.len() as u64));
    Some(children)
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

/// What `stat` says of a file, enough to tell that it was not written since: any write,
/// truncation, rename or change of metadata moves its ctime, which nobody can set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    pub fn of_stat(st: &rustix::fs::Stat) -> Stamp {
        Stamp {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: nanos(st.st_mtime, st.st_mtime_nsec as i64),
            ctime_ns: nanos(st.st_ctime, st.st_ctime_nsec as i64),
        }
    }

    /// Whether the file last changed at least [`CACHE_SETTLE_NS`] before `ns` (ns since
    /// the epoch): timestamps move in coarse ticks, so a file rewritten twice within one
    /// tick, at the same size, keeps its stamp, and only an older one identifies its
    /// content.
    pub fn settled_before(&self, ns: i64) -> bool {
        ns.saturating_sub(self.ctime_ns.max(self.mtime_ns)) > CACHE_SETTLE_NS
    }

    /// Whether the file's mtime is at least [`CACHE_SETTLE_NS`] before `ns`: for a file
    /// this process has just put in place, with the mtime it was given, whose ctime is
    /// therefore recent. Any write to it afterwards sets its mtime to the time of that
    /// write, which an mtime this old cannot equal; only the ctime can stay in its tick.
    pub fn mtime_settled_before(&self, ns: i64) -> bool {
        ns.saturating_sub(self.mtime_ns) > CACHE_SETTLE_NS
    }
}

/// How many changes a watcher has seen in the tree: an answer computed from a scan is
/// still the tree's while this has not moved since the scan began. Only a daemon whose
/// watch runs keeps it ([`Generation::watched`]); otherwise there is no current value
/// and every answer is computed afresh.
///
/// The watcher counts every event that may change something (writes, creations,
/// removals, renames, attributes, lost events), and each applied batch counts once
/// more when it is done, before its answer is sent. Each count notes where the change
/// was, when that is known, before it counts ([`Generation::take_touched`]).
#[derive(Default)]
pub struct Generation {
    count: AtomicU64,
    watched: AtomicBool,
    touched: std::sync::Mutex<Touched>,
}

/// Where the tree changed since the last [`Generation::take_touched`]: at or below each
/// of these local paths, or anywhere (`None`).
pub type Touched = Option<std::collections::BTreeSet<std::path::PathBuf>>;

/// Paths noted as touched at most: past that, the whole tree is.
const TOUCHED_MOST: usize = 4096;

impl Generation {
    /// A change may have happened anywhere.
    pub fn bump(&self) {
        *self.touched.lock().expect("touched lock") = None;
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// A change may have happened at or below each of the local paths `paths`.
    pub fn bump_at<'a>(&self, paths: impl IntoIterator<Item = &'a Path>) {
        {
            let mut touched = self.touched.lock().expect("touched lock");
            if let Some(set) = touched.as_mut() {
                set.extend(paths.into_iter().map(Path::to_path_buf));
                if set.len() > TOUCHED_MOST {
                    *touched = None;
                }
            }
        }
        // After the note: a walk that reads the count after this took the note too.
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// Where the tree changed since the last call (anywhere, the first time). Taken
    /// after [`current`](Self::current): every change counted by then is in it.
    pub fn take_touched(&self) -> Touched {
        self.touched
            .lock()
            .expect("touched lock")
            .replace(Default::default())
    }

    /// The watch runs from now on: changes are counted.
    pub fn watched(&self) {
        self.bump();
        self.watched.store(true, Ordering::SeqCst);
    }

    /// The count now; `None` when no watcher counts changes.
    pub fn current(&self) -> Option<u64> {
        self.watched
            .load(Ordering::SeqCst)
            .then(|| self.count.load(Ordering::SeqCst))
    }
}

/// Where a long-running process keeps the hashes of the files it scanned, so that
/// repeated scans of unchanged files do not read them again (a daemon keeps them with
/// the versions it knows: see `Baseline`).
pub trait Hashes: Send + Sync {
    /// The hash of the file at logical path `logical`, if it was hashed when its stamp
    /// was `stamp`.
    fn hash_of(&self, logical: &str, stamp: &Stamp) -> Option<Digest256>;
    /// The file at `logical`, with stamp `stamp` (settled), holds `digest`.
    fn hashed(&self, logical: &str, stamp: &Stamp, digest: Digest256);
}

/// The hashes a scan may reuse: none for a process that scans once (a command, where a
/// hash stored would never be asked for again), or those a daemon keeps.
#[derive(Clone, Default)]
pub struct HashCache {
    kept: Option<Arc<dyn Hashes>>,
}

impl HashCache {
    /// Remembers nothing.
    pub fn forgetful() -> HashCache {
        HashCache::default()
    }

    /// Reuses and keeps the hashes `hashes` holds.
    pub fn kept_by(hashes: Arc<dyn Hashes>) -> HashCache {
        HashCache { kept: Some(hashes) }
    }

    /// Whether it keeps hashes at all: a scan for a cache that keeps none reads every
    /// regular file whatever its `stat` says.
    fn remembers(&self) -> bool {
        self.kept.is_some()
    }

    fn get(&self, logical: &str, stamp: &Stamp) -> Option<Digest256> {
        self.kept.as_ref()?.hash_of(logical, stamp)
    }

    fn put(&self, logical: &str, stamp: &Stamp, digest: Digest256) {
        if let Some(kept) = &self.kept {
            kept.hashed(logical, stamp, digest);
        }
    }
}

/// How long after its last change a file's hash may be cached (see
/// [`Stamp::settled_before`]).
const CACHE_SETTLE_NS: i64 = 2_000_000_000;

/// The time now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
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
pub fn hash_reader(reader: impl Read) -> io::Result<Digest256> {
    hash_copy(reader, &mut io::sink())
}

/// Copies a reader's whole content into `sink`, and says the SHA-256 of what was copied.
pub fn hash_copy(mut reader: impl Read, sink: &mut impl io::Write) -> io::Result<Digest256> {
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
            sink.write_all(&buf[..n])?;
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
    scan_region(config, Region::scope(scope), cache)
}

/// Scans what `region` lists of every configured directory.
pub fn scan_region(config: &Config, region: Region, cache: &HashCache) -> Scan {
    let mut found = Vec::new();
    let mut out = walk_region(config, region, cache, &mut |path, entry| {
        found.push((path, entry));
        true
    });
    out.entries = into_map(found);
    out
}

/// Walks what `region` lists of every configured directory, handing each entry to
/// `found` as it is found (in no particular order), until `found` says `false`. The
/// scan returned holds what was missing or unreadable, and no entries: a listing sent
/// as it is walked never holds the tree.
pub fn walk_region(
    config: &Config,
    region: Region,
    cache: &HashCache,
    found: &mut dyn FnMut(LogicalPath, Entry) -> bool,
) -> Scan {
    let mut out = Scan::default();
    let mut readers = Readers::new(cache);
    let mut going = true;
    for dir in &config.directories {
        if going && region.holds(&dir.path) {
            going = scan_directory(config, dir, region, &mut readers, found, &mut out);
        }
    }
    for (path, entry) in settle(readers.drain(), &mut out.unreadable) {
        going = going && found(path, entry);
    }
    out
}

/// A list of more entries than this is made into a map in [`MAP_PARTS`] parts.
const MAP_WHOLE_MAX: usize = 16 * 1024;
/// Parts a long list is made into a map in (see [`into_map`]).
const MAP_PARTS: usize = 4;

/// The map of the list `found` (each key once): a scan's, or a listing's. Built from the
/// sorted list, its nodes are full: at 100,000 paths, a quarter less memory than
/// inserting the paths one by one. A long list is made into a map a part at a time,
/// from its end, each part leaving the list as it joins the map, so that the whole list
/// is never held beside the whole map (8.8 MB less at the peak of a scan of 100,000
/// paths). Each part joins the map by rebuilding it: at four parts, every entry is moved
/// about twice more.
pub fn into_map<K: Ord, V>(mut found: Vec<(K, V)>) -> BTreeMap<K, V> {
    if found.len() <= MAP_WHOLE_MAX {
        return found.into_iter().collect();
    }
    found.shrink_to_fit();
    found.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    let part = found.len().div_ceil(MAP_PARTS);
    let mut map = BTreeMap::new();
    while !found.is_empty() {
        let mut below: BTreeMap<K, V> = found.drain(found.len().saturating_sub(part)..).collect();
        found.shrink_to_fit();
        below.append(&mut map);
        map = below;
    }
    map
}

/// The map of `items`, taken in order of their keys (each key once, as a map's own
/// entries are), as [`into_map`] makes it: a long sequence a part at a time, so that it
/// is never held whole beside the whole map (when it drains another map, that map gives
/// back its memory as it goes).
pub fn sorted_into_map<K: Ord, V>(items: impl ExactSizeIterator<Item = (K, V)>) -> BTreeMap<K, V> {
    if items.len() <= MAP_WHOLE_MAX {
        return items.collect();
    }
    let part = items.len().div_ceil(MAP_PARTS);
    let mut items = items.fuse();
    let mut map = BTreeMap::new();
    loop {
        let mut above: BTreeMap<K, V> = items.by_ref().take(part).collect();
        if above.is_empty() {
            return map;
        }
        map.append(&mut above);
    }
}

/// Scans what `region` lists of configured directory `dir`, handing each entry to
/// `found`; `false` when `found` stopped it. Regular files whose hash is not kept are
/// handed to `readers`; those read so far are taken after each directory, the rest by
/// the caller.
fn scan_directory(
    config: &Config,
    dir: &Directory,
    region: Region,
    readers: &mut Readers,
    found: &mut dyn FnMut(LogicalPath, Entry) -> bool,
    out: &mut Scan,
) -> bool {
    // The configured directory itself may be a symlink placed by the administrator;
    // below it, nothing is followed: each directory is opened from its parent's
    // descriptor, and each name is read relative to its directory's.
    let mut parents = Parents::default();
    let Some((top, entry)) = open_top(
        config,
        dir,
        &mut parents,
        &mut out.missing,
        &mut out.unreadable,
    ) else {
        return true;
    };
    if !found(dir.path.as_str().into(), entry) {
        return false;
    }
    let mut next = Some((LogicalPath::from(&dir.path), top));
    let mut pending = Vec::new();
    loop {
        if let Some((logical, fd)) = next.take() {
            let listed = children(&fd, &logical, dir, region, readers, &mut out.unreadable);
            for (_, child, state) in listed.into_iter().flatten() {
                if state.content.is_dir() && region.reaches_below(&child) {
                    pending.push(child.clone());
                }
                if !found(child, state) {
                    return false;
                }
            }
            for (child, state) in settle(readers.ready(), &mut out.unreadable) {
                if !found(child, state) {
                    return false;
                }
            }
        }
        let Some(logical) = pending.pop() else {
            return true;
        };
        next = open_walked(config, dir, &mut parents, logical, &mut out.unreadable);
    }
}

/// Opens directory `logical` of `dir` through `parents`, for a walk to list it; `None`
/// when it cannot be (logged, and recorded in `unreadable`).
fn open_walked(
    config: &Config,
    dir: &Directory,
    parents: &mut Parents,
    logical: LogicalPath,
    unreadable: &mut Vec<(String, String)>,
) -> Option<(LogicalPath, Arc<OwnedFd>)> {
    match parents.dir(config, dir, &logical) {
        Ok(fd) => Some((logical, fd)),
        Err(blocked) => {
            let error = blocked.error();
            warn!(path = %logical, %error, "cannot read");
            unreadable.push((logical.into(), error.to_string()));
            None
        }
    }
}

/// Opens configured directory `dir` (which may itself be a symlink the administrator
/// placed) through `parents`, with its own entry; `None` when it is missing (recorded
/// in `missing`) or cannot be read (recorded in `unreadable`).
fn open_top(
    config: &Config,
    dir: &Directory,
    parents: &mut Parents,
    missing: &mut Vec<String>,
    unreadable: &mut Vec<(String, String)>,
) -> Option<(Arc<OwnedFd>, Entry)> {
    let unreadable_top = |reason: String| (dir.path.clone(), reason);
    match std::fs::metadata(config.local_path(&dir.path)) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            unreadable.push(unreadable_top("not a directory".into()));
            return None;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            missing.push(dir.path.clone());
            return None;
        }
        Err(e) => {
            unreadable.push(unreadable_top(e.to_string()));
            return None;
        }
    }
    let fd = match parents.dir(config, dir, &dir.path) {
        Ok(fd) => fd,
        Err(blocked) => {
            let error = blocked.error();
            warn!(path = %dir.path, %error, "cannot read");
            unreadable.push(unreadable_top(error.to_string()));
            return None;
        }
    };
    match rustix::fs::fstat(&*fd) {
        Ok(st) => Some((fd, entry_of(&st, Content::Dir))),
        Err(error) => {
            unreadable.push(unreadable_top(error.to_string()));
            None
        }
    }
}

/// The entries a scan of `dir` within `region` takes from directory `fd` (logical path
/// `logical`), as (name, logical path, entry): not gosyncd's temporary files, nor
/// excluded names, nor names that are not UTF-8 or not a regular file, directory or
/// symlink (logged). Regular files whose hash is not kept (in the cache `readers` keep
/// hashes in) are handed to `readers` instead, to be read. What cannot be read is
/// recorded in `unreadable`; `None` when the directory itself cannot be listed.
fn children(
    fd: &Arc<OwnedFd>,
    logical: &str,
    dir: &Directory,
    region: Region,
    readers: &mut Readers,
    unreadable: &mut Vec<(String, String)>,
) -> Option<Vec<(String, LogicalPath, Entry)>> {
    let names = match list(fd) {
        Ok(names) => names,
        Err(error) => {
            warn!(path = %logical, %error, "cannot read");
            unreadable.push((logical.to_string(), error.to_string()));
            return None;
        }
    };
    let mut out = Vec::with_capacity(names.len());
    // Where every regular file is read anyway, one the listing says is regular is not
    // `stat`ed first: opening it says what it is (a file that is no longer regular then
    // is recorded as unreadable, and nothing below it is planned). Its size counts only
    // until helpers start.
    let unstatted = !readers.cache().remembers();
    for (name, kind) in names {
        let Ok(name) = name.into_string() else {
            warn!(directory = %logical, "skipping a name that is not UTF-8");
            continue;
        };
        if is_temp_name(&name) {
            continue;
        }
        let child = child_path(logical, &name);
        if dir.excludes.is_excluded(&child) || !region.holds(&child) {
            continue;
        }
        if unstatted && kind == rustix::fs::FileType::RegularFile && !readers.gathering() {
            readers.read(fd, child, 0);
            continue;
        }
        match stat_below(fd, &name, &child, readers.cache()) {
            Ok(Found::Entry(state)) => out.push((name, child, state)),
            Ok(Found::ToHash { size }) => readers.read(fd, child, size),
            Ok(Found::Other) => {
                warn!(path = %child, "skipping a file that is not a regular file, directory or symlink")
            }
            Err(e) => {
                warn!(path = %child, error = %e, "cannot read");
                unreadable.push((child.into(), e.to_string()));
            }
        }
    }
    Some(out)
}

/// The entries of the files `readers` read; those that could not be read are recorded
/// in `unreadable` (logged), in path order within `read`.
fn settle(
    read: Vec<readers::Read>,
    unreadable: &mut Vec<(String, String)>,
) -> impl Iterator<Item = (LogicalPath, Entry)> {
    let (entries, mut failed): (Vec<_>, Vec<_>) =
        read.into_iter().partition(|(_, entry)| entry.is_ok());
    failed.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    for (path, error) in failed {
        if let Err(e) = error {
            warn!(path = %path, error = %e, "cannot read");
            unreadable.push((path.into(), e.to_string()));
        }
    }
    entries
        .into_iter()
        .filter_map(|(path, entry)| Some((path, entry.ok()?)))
}

/// The logical path of `name` in directory `logical`, held once: the plan made from a
/// scan shares it, instead of a copy of its own per operation.
fn child_path(logical: &str, name: &str) -> LogicalPath {
    let mut child = String::with_capacity(logical.len() + 1 + name.len());
    child.push_str(logical);
    child.push('/');
    child.push_str(name);
    LogicalPath::from(child.as_str())
}

/// The names in an opened directory, but `.` and `..`, each with the type the listing
/// gives (`Unknown` where the file system gives none).
fn list(fd: &OwnedFd) -> io::Result<Vec<(std::ffi::OsString, rustix::fs::FileType)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            let name = std::ffi::OsStr::from_bytes(name).to_os_string();
            names.push((name, entry.file_type()));
        }
    }
    Ok(names)
}

/// Reads the state of name `name` in directory `fd`, never following a link; `logical`
/// is its logical path, for messages. `Ok(None)` for a device, socket or fifo.
fn read_below(
    fd: &OwnedFd,
    name: &str,
    logical: &str,
    cache: &HashCache,
) -> io::Result<Option<Entry>> {
    match stat_below(fd, name, logical, cache)? {
        Found::Entry(entry) => Ok(Some(entry)),
        Found::ToHash { .. } => hash_below(fd, name, logical, cache).map(Some),
        Found::Other => Ok(None),
    }
}

/// What the `stat` of a name found.
enum Found {
    /// A directory, a symlink, or a regular file whose hash was kept.
    Entry(Entry),
    /// A regular file of `size` bytes, whose content must be read ([`hash_below`]).
    ToHash { size: u64 },
    /// A device, socket or fifo.
    Other,
}

/// What name `name` in directory `fd` is, never following a link (see [`read_below`]).
fn stat_below(fd: &OwnedFd, name: &str, logical: &str, cache: &HashCache) -> io::Result<Found> {
    use rustix::fs::{AtFlags, FileType};
    let st = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
    let content = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => Content::Dir,
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(fd, name, Vec::new())?;
            let target = target.into_string().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "symlink target is not UTF-8")
            })?;
            Content::Symlink { target }
        }
        FileType::RegularFile => {
            let size = st.st_size as u64;
            let Some(sha256) = cache.get(logical, &Stamp::of_stat(&st)) else {
                return Ok(Found::ToHash { size });
            };
            Content::File { size, sha256 }
        }
        _ => return Ok(Found::Other),
    };
    Ok(Found::Entry(entry_of(&st, content)))
}

/// Reads regular file `name` of directory `fd` (logical path `logical`) and says its
/// entry. Size, metadata and hash all come from the one opened file, and only if it did
/// not change while it was read: a file being written is reported as such, never as one
/// version's size with another's hash.
fn hash_below(fd: &OwnedFd, name: &str, logical: &str, cache: &HashCache) -> io::Result<Entry> {
    let (opened, before) = crate::tree::open_regular_with_stat(fd, name)?;
    let mut file = File::from(opened);
    // Read to the size it had, not to the end (one system call less for a small file):
    // grown or shrunk meanwhile, it has another size after.
    let sha256 = hash_reader((&mut file).take(before.st_size as u64))?;
    let after = rustix::fs::fstat(&file)?;
    if Stamp::of_stat(&before) != Stamp::of_stat(&after) {
        return Err(io::Error::other("changed while it was read"));
    }
    let stamp = Stamp::of_stat(&after);
    if stamp.settled_before(now_ns()) {
        cache.put(logical, &stamp, sha256);
    }
    let size = after.st_size as u64;
    Ok(entry_of(&after, Content::File { size, sha256 }))
}

/// The entry of a path whose state is `st`, holding `content`.
fn entry_of(st: &rustix::fs::Stat, content: Content) -> Entry {
    Entry {
        content,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: nanos(st.st_mtime, st.st_mtime_nsec as i64),
    }
}

/// Reads the state of one local path without following a final symlink. `Ok(None)` for
/// a device, socket or fifo.
pub fn read_entry(path: &Path) -> io::Result<Option<Entry>> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other(format!(
            "{} has no parent",
            path.display()
        )));
    };
    let name = name
        .to_str()
        .ok_or_else(|| io::Error::other(format!("{} is not UTF-8", path.display())))?;
    let parent = rustix::fs::open(
        parent,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    read_below(
        &parent,
        name,
        &path.to_string_lossy(),
        &HashCache::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{config_at, config_text};
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn a_long_list_made_into_a_map_in_parts_is_the_map_of_the_list() {
        for count in [
            0,
            1,
            MAP_WHOLE_MAX,
            MAP_WHOLE_MAX + 1,
            3 * MAP_WHOLE_MAX + 7,
        ] {
            // In a walk's order, not sorted: a fixed permutation of the paths.
            let found: Vec<(LogicalPath, Entry)> = (0..count)
                .map(|i| (i * 7919) % count.max(1))
                .map(|n| {
                    let path = format!("/etc/app/d{:02}/f{n:06}", n % 37);
                    (
                        LogicalPath::from(path.as_str()),
                        crate::testing::file_entry(path.as_bytes()),
                    )
                })
                .collect();
            let whole: Manifest = found.iter().cloned().collect();
            assert_eq!(whole.len(), count, "each path once");
            let map = into_map(found);
            assert_eq!(map, whole, "{count} paths");
            assert!(map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b));
            let again = sorted_into_map(map.clone().into_iter());
            assert_eq!(again, whole, "{count} paths, from a map");
        }
    }

    #[test]
    fn a_walk_stops_when_what_it_finds_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::testing::config_at(tmp.path(), "");
        let app = config.local_path("/etc/app");
        std::fs::create_dir_all(app.join("sub")).unwrap();
        for i in 0..40 {
            std::fs::write(app.join(format!("f{i}")), "x").unwrap();
            std::fs::write(app.join(format!("sub/g{i}")), "y").unwrap();
        }
        let cache = HashCache::forgetful();
        let mut all = Vec::new();
        walk_region(&config, Region::default(), &cache, &mut |path, _| {
            all.push(path);
            true
        });
        assert_eq!(all.len(), 82, "the top, sub and 80 files");
        let mut taken = 0;
        walk_region(&config, Region::default(), &cache, &mut |_, _| {
            taken += 1;
            taken < 3
        });
        assert_eq!(taken, 3);
    }

    #[test]
    fn digests_hashed_while_walking_are_those_of_the_scanned_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        // Names whose order as whole paths differs from a walk's: `a/` sorts after
        // `a.c` and `a-b` and before `a0`; an empty directory; a link; an excluded
        // file; one of gosyncd's temporary files.
        for dir in ["a/x", "a/x.d", "a.d", "empty", "b/c/d"] {
            std::fs::create_dir_all(app.join(dir)).unwrap();
        }
        for file in [
            "a/x/1", "a/x.d/2", "a/y", "a.c", "a-b", "a0", "a.d/z", "b/c/d/e", "top", "skip.swp",
        ] {
            std::fs::write(app.join(file), file).unwrap();
        }
        std::fs::write(
            app.join(format!(
                "{}x{}",
                crate::tree::TEMP_PREFIX,
                crate::tree::TEMP_SUFFIX
            )),
            "t",
        )
        .unwrap();
        symlink("a/y", app.join("a.link")).unwrap();
        std::fs::set_permissions(app.join("a0"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut text = config_text(tmp.path(), "\"*.swp\"");
        text.push_str("directory \"/etc/gone\" {\n}\n");
        let config = crate::testing::parse(&text);
        for owners in [false, true] {
            let (_, cache) = kept(&config);
            let scanned = scan(&config, &[], &cache);
            let walked = scan_digests(&config, &cache, owners);
            assert_eq!(
                walked.digests,
                [(
                    "/etc/app".to_string(),
                    digest(&scanned.entries, "/etc/app", owners, |_| true)
                )]
            );
            assert_eq!(walked.missing, ["/etc/gone"]);
            assert_eq!(walked.missing, scanned.missing);
            assert!(walked.unreadable.is_empty(), "{:?}", walked.unreadable);
        }
        // And a change anywhere changes it.
        let cache = HashCache::default();
        let before = scan_digests(&config, &cache, true).digests;
        std::fs::write(app.join("a/x.d/2"), "changed").unwrap();
        assert_ne!(scan_digests(&config, &cache, true).digests, before);
    }

    #[test]
    fn a_tree_large_enough_to_be_read_on_several_threads_is_scanned_and_digested_whole() {
        let tmp = tempfile::tempdir().unwrap();
        // 400 files over 8 directories, of sizes from empty to 300 KiB: several
        // directories are each worth sharing, and their files are read as the walk goes.
        let mut written = BTreeMap::new();
        for i in 0..400usize {
            let logical = format!("/etc/app/d{}/f{i:03}", i % 8);
            let size = if i % 50 == 0 {
                300 * 1024
            } else {
                (i * 37) % 9000
            };
            let content: Vec<u8> = (0..size).map(|b| (b ^ i) as u8).collect();
            let local = tmp.path().join(&logical[1..]);
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            std::fs::write(local, &content).unwrap();
            written.insert(logical, content);
        }
        let config = config_at(tmp.path(), "");
        for cache in [HashCache::default(), kept(&config).1] {
            let scanned = scan(&config, &[], &cache);
            assert!(scanned.unreadable.is_empty(), "{:?}", scanned.unreadable);
            // The tree, its 8 directories and each file, with its own size and hash.
            assert_eq!(scanned.entries.len(), 1 + 8 + written.len());
            for (logical, content) in &written {
                let expected = Content::File {
                    size: content.len() as u64,
                    sha256: Digest256(Sha256::digest(content).into()),
                };
                assert_eq!(
                    scanned.entries[logical.as_str()].content,
                    expected,
                    "{logical}"
                );
            }
            let walked = scan_digests(&config, &cache, false);
            let whole = digest(&scanned.entries, "/etc/app", false, |_| true);
            assert_eq!(walked.digests, [("/etc/app".to_string(), whole)]);
            let levels = level_digests(&scanned.entries, "/etc/app", false, |_| true);
            assert_eq!(walked.levels.len(), levels.len());
            for (level, (digest, children)) in &walked.levels {
                assert_eq!(levels.get(level.as_str()), Some(digest), "{level}");
                let scanned_children = scanned
                    .entries
                    .keys()
                    .filter(|p| p.as_str() != "/etc/app" && crate::paths::parent(p) == level)
                    .count();
                assert_eq!(*children, scanned_children as u64, "{level}");
            }
        }
    }

    #[test]
    fn levels_hashed_while_walking_are_those_of_the_scanned_manifest_and_a_change_moves_one() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        for dir in ["a/x", "a/x.d", "a.d", "empty", "b/c/d", "skipped.swp"] {
            std::fs::create_dir_all(app.join(dir)).unwrap();
        }
        for file in [
            "a/x/1", "a/x.d/2", "a/y", "a.c", "a0", "a.d/z", "b/c/d/e", "top", "skip.swp",
        ] {
            std::fs::write(app.join(file), file).unwrap();
        }
        symlink("a/y", app.join("a.link")).unwrap();
        let config = crate::testing::parse(&config_text(tmp.path(), "\"*.swp\""));
        let levels = |owners: bool| {
            let walked = scan_digests(&config, &HashCache::default(), owners);
            assert!(walked.unreadable.is_empty(), "{:?}", walked.unreadable);
            let walked: BTreeMap<String, Digest256> = walked
                .levels
                .into_iter()
                .map(|(path, (digest, _))| (path, digest))
                .collect();
            let scanned = scan(&config, &[], &HashCache::default());
            assert_eq!(
                walked,
                level_digests(&scanned.entries, "/etc/app", owners, |_| true)
            );
            walked
        };
        let before = levels(true);
        assert_eq!(
            before.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "/etc/app",
                "/etc/app/a",
                "/etc/app/a.d",
                "/etc/app/a/x",
                "/etc/app/a/x.d",
                "/etc/app/b",
                "/etc/app/b/c",
                "/etc/app/b/c/d",
                "/etc/app/empty"
            ]
        );
        assert_ne!(levels(false), before);
        let moved = |after: &BTreeMap<String, Digest256>| -> Vec<String> {
            let mut all: Vec<String> = before.keys().chain(after.keys()).cloned().collect();
            all.sort();
            all.dedup();
            all.retain(|p| before.get(p) != after.get(p));
            all
        };
        // A file's content: its directory's level only.
        std::fs::write(app.join("b/c/d/e"), "changed").unwrap();
        assert_eq!(moved(&levels(true)), ["/etc/app/b/c/d"]);
        std::fs::write(app.join("b/c/d/e"), "b/c/d/e").unwrap();
        assert!(moved(&levels(true)).is_empty());
        // A directory's mode: its own level and its parent's.
        std::fs::set_permissions(app.join("a/x"), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(moved(&levels(true)), ["/etc/app/a", "/etc/app/a/x"]);
        // A new directory: its parent's level, and its own, which only one side has.
        std::fs::create_dir(app.join("b/new")).unwrap();
        assert_eq!(
            moved(&levels(true)),
            ["/etc/app/a", "/etc/app/a/x", "/etc/app/b", "/etc/app/b/new"]
        );
    }

    #[test]
    fn a_digest_covers_what_a_sync_compares_and_only_the_directory() {
        let file = |bytes: &[u8], mode: u32, uid: u32, mtime_ns: i64| Entry {
            mode,
            uid,
            mtime_ns,
            ..crate::testing::file_entry(bytes)
        };
        // Each tree holds the directories too: a level is a directory's.
        let tree = |entries: &[(&str, Entry)]| -> Manifest {
            let dir = Entry {
                content: Content::Dir,
                mode: 0o755,
                ..crate::testing::file_entry(b"")
            };
            entries
                .iter()
                .map(|(p, e)| ((*p).into(), e.clone()))
                .chain(["/d", "/d-x"].map(|d| (d.into(), dir.clone())))
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

    /// A daemon's cache: the versions a first scan found, keeping their hashes.
    fn kept(config: &Config) -> (Arc<crate::baseline::Baseline>, HashCache) {
        let began = now_ns();
        let first = scan(config, &[], &HashCache::forgetful());
        let baseline = Arc::new(crate::baseline::Baseline::of_scan(
            config,
            first.entries,
            began,
        ));
        (baseline.clone(), HashCache::kept_by(baseline))
    }

    #[test]
    fn a_settled_file_is_not_read_again_a_written_one_is() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("a"), b"one").unwrap();
        std::fs::write(app.join("b"), b"bee").unwrap();
        // Only files that settled (no change for 2 s) keep their hashes.
        std::thread::sleep(std::time::Duration::from_millis(
            CACHE_SETTLE_NS as u64 / 1_000_000 + 100,
        ));
        let config = config_at(tmp.path(), "");
        let (baseline, cache) = kept(&config);
        let stamp = |name: &str| Stamp::of_stat(&rustix::fs::stat(app.join(name)).unwrap());
        assert_eq!(
            baseline.hash_of("/etc/app/a", &stamp("a")),
            Some(Digest256::of(b"one"))
        );
        // A stamp that is not the file's finds nothing.
        let other = Stamp {
            ctime_ns: stamp("a").ctime_ns + 1,
            ..stamp("a")
        };
        assert_eq!(baseline.hash_of("/etc/app/a", &other), None);
        assert_eq!(baseline.hash_of("/etc/app/b", &stamp("a")), None);
        // Rewritten at the same size: read again, whatever its mtime.
        let mtime = std::fs::metadata(app.join("a"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::write(app.join("a"), b"two").unwrap();
        std::fs::File::options()
            .write(true)
            .open(app.join("a"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let second = scan(&config, &[], &cache);
        let Content::File { sha256, .. } = &second.entries["/etc/app/a"].content else {
            panic!("not a file")
        };
        assert_eq!(*sha256, Digest256::of(b"two"));
        assert_eq!(baseline.hash_of("/etc/app/a", &stamp("a")), None);
    }

    /// Kept hashes that say one digest for any file.
    struct Always(Digest256);

    impl Hashes for Always {
        fn hash_of(&self, _: &str, _: &Stamp) -> Option<Digest256> {
            Some(self.0)
        }
        fn hashed(&self, _: &str, _: &Stamp, _: Digest256) {}
    }

    #[test]
    fn a_scan_takes_the_hash_kept_for_a_file_instead_of_reading_it() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("a"), b"one").unwrap();
        let config = config_at(tmp.path(), "");
        let kept = HashCache::kept_by(Arc::new(Always(Digest256::of(b"kept"))));
        let Content::File { sha256, .. } = scan(&config, &[], &kept).entries["/etc/app/a"].content
        else {
            panic!("not a file")
        };
        assert_eq!(sha256, Digest256::of(b"kept"));
        let walked = scan_digests(&config, &kept, true).digests;
        assert_ne!(
            walked,
            scan_digests(&config, &HashCache::forgetful(), true).digests
        );
    }

    /// Kept hashes that never hold one: every file is `stat`ed first, then read.
    struct Never;

    impl Hashes for Never {
        fn hash_of(&self, _: &str, _: &Stamp) -> Option<Digest256> {
            None
        }
        fn hashed(&self, _: &str, _: &Stamp, _: Digest256) {}
    }

    #[test]
    fn a_scan_that_opens_listed_files_without_stat_finds_what_one_that_stats_them_finds() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(app.join("sub/deeper")).unwrap();
        // Enough files for helpers to start: past that, a listed regular file is
        // opened without a `stat` where no hash is kept.
        for i in 0..200 {
            let dir = if i % 3 == 0 {
                app.join("sub")
            } else {
                app.clone()
            };
            std::fs::write(dir.join(format!("f{i:03}.conf")), format!("{i}\n")).unwrap();
        }
        std::fs::write(app.join("sub/deeper/last"), b"last").unwrap();
        std::fs::write(app.join("zz.swp"), b"excluded").unwrap();
        std::os::unix::fs::symlink("f001.conf", app.join("zz-link")).unwrap();
        std::os::unix::fs::symlink("sub", app.join("zz-dir-link")).unwrap();
        std::fs::create_dir(app.join("zz-empty")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            app.join("zz-fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let config = config_at(tmp.path(), r#""*.swp""#);
        let unstatted = scan(&config, &[], &HashCache::forgetful());
        let statted = scan(&config, &[], &HashCache::kept_by(Arc::new(Never)));
        assert_eq!(unstatted.entries, statted.entries);
        assert_eq!(unstatted.unreadable, statted.unreadable);
        assert!(unstatted.unreadable.is_empty());
        assert_eq!(unstatted.entries.len(), 1 + 2 + 200 + 1 + 3);
        assert!(!unstatted.entries.contains_key("/etc/app/zz.swp"));
        assert!(!unstatted.entries.contains_key("/etc/app/zz-fifo"));
        assert_eq!(
            unstatted.entries["/etc/app/sub/f000.conf"].content,
            Content::File {
                size: 2,
                sha256: Digest256::of(b"0\n")
            }
        );
    }

    #[test]
    fn a_file_just_written_keeps_no_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("a"), b"one").unwrap();
        let config = config_at(tmp.path(), "");
        let (baseline, cache) = kept(&config);
        let stamp = Stamp::of_stat(&rustix::fs::stat(app.join("a")).unwrap());
        assert_eq!(baseline.hash_of("/etc/app/a", &stamp), None);
        scan(&config, &[], &cache);
        assert_eq!(baseline.hash_of("/etc/app/a", &stamp), None);
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

    #[test]
    fn configured_directories_that_come_and_go_are_missing_as_a_whole_walk_finds_them() {
        let tmp = tempfile::tempdir().unwrap();
        let mut text = config_text(tmp.path(), "");
        text.push_str("directory \"/etc/one\" {\n}\ndirectory \"/etc/two\" {\n}\n");
        let config = crate::testing::parse(&text);
        let cache = HashCache::default();
        let mut walked = scan_digests(&config, &cache, false);
        assert_eq!(walked.missing, ["/etc/app", "/etc/one", "/etc/two"]);
        let local = |logical: &str| config.local_path(logical);
        // Each appears, then goes, told by an event naming it, or by none.
        for (dir, told) in [("/etc/one", true), ("/etc/app", false), ("/etc/two", true)] {
            std::fs::create_dir_all(local(dir).join("sub")).unwrap();
            std::fs::write(local(dir).join("sub/f"), dir).unwrap();
            let touched = if told {
                [local(dir)].into()
            } else {
                Default::default()
            };
            rescan_digests(&config, &cache, false, &mut walked, &touched);
            let whole = scan_digests(&config, &cache, false);
            assert_eq!(walked.missing, whole.missing, "{dir} came");
            assert_eq!(walked.levels, whole.levels, "{dir} came");
            assert_eq!(walked.digests, whole.digests, "{dir} came");
        }
        for dir in ["/etc/two", "/etc/app"] {
            std::fs::remove_dir_all(local(dir)).unwrap();
            rescan_digests(&config, &cache, false, &mut walked, &Default::default());
            let whole = scan_digests(&config, &cache, false);
            assert_eq!(walked.missing, whole.missing, "{dir} went");
            assert_eq!(walked.levels, whole.levels, "{dir} went");
            assert_eq!(walked.digests, whole.digests, "{dir} went");
        }
        assert_eq!(walked.missing, ["/etc/app", "/etc/two"]);
    }

    /// A change to the tree of the test below, at one of [`TREE_PATHS`].
    #[derive(Clone, Debug)]
    enum TreeChange {
        Write(usize, u8),
        Remove(usize),
        MakeDirs(usize),
        Rename(usize, usize),
        Chmod(usize),
        /// Made, or removed, with the event naming the directory that holds it only.
        ToldToParent(Box<TreeChange>),
        /// Made, or removed, with an event naming another name in the directory that
        /// holds it only: whatever a listing of that directory shows is found.
        ToldBeside(Box<TreeChange>),
    }

    /// Paths below `/etc/app` (the first is the configured directory itself), some
    /// excluded (`*.swp`), some a gosyncd temporary name.
    const TREE_PATHS: [&str; 12] = [
        "",
        "a",
        "a/b",
        "a/b/c",
        "a/x",
        "d",
        "d/e",
        "f",
        "a/b/f2",
        "d/e/g",
        "a/k.swp",
        "a/.gosyncd-tmp-x",
    ];

    /// Makes `change` in the tree under `app`; returns the paths an event would name:
    /// the path changed, or the first directory made on the way to it (whose contents
    /// no event may tell of), or both ends of a rename.
    fn make_change(app: &Path, change: &TreeChange) -> Vec<std::path::PathBuf> {
        let at = |i: usize| match TREE_PATHS[i] {
            "" => app.to_path_buf(),
            rel => app.join(rel),
        };
        // The first of `path`'s directories that does not exist, or `path`.
        let first_missing = |path: &Path| {
            path.ancestors()
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .find(|p| std::fs::symlink_metadata(p).is_err())
                .map_or_else(|| path.to_path_buf(), Path::to_path_buf)
        };
        match change {
            TreeChange::Write(i, byte) => {
                let path = at(*i);
                let touched = first_missing(&path);
                let parent = path.parent().unwrap();
                if std::fs::create_dir_all(parent).is_err() || path.is_dir() {
                    return vec![touched];
                }
                let _ = std::fs::write(&path, [*byte]);
                vec![touched]
            }
            TreeChange::Remove(i) => {
                let path = at(*i);
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path).unwrap(),
                    Ok(_) => std::fs::remove_file(&path).unwrap(),
                    Err(_) => {}
                }
                vec![path]
            }
            TreeChange::MakeDirs(i) => {
                let path = at(*i);
                let touched = first_missing(&path);
                let _ = std::fs::create_dir_all(&path);
                vec![touched]
            }
            TreeChange::Rename(i, j) => {
                let (from, to) = (at(*i), at(*j));
                let free = std::fs::symlink_metadata(&to).is_err()
                    && to.parent().is_some_and(Path::is_dir)
                    && !to.starts_with(&from);
                if free && std::fs::symlink_metadata(&from).is_ok() {
                    std::fs::rename(&from, &to).unwrap();
                }
                vec![from, to]
            }
            TreeChange::ToldToParent(change) => make_change(app, change)
                .into_iter()
                .map(|path| match path.parent() {
                    Some(parent) if path != app => parent.to_path_buf(),
                    _ => path,
                })
                .collect(),
            // Beside the configured directory: outside every one.
            TreeChange::ToldBeside(change) => make_change(app, change)
                .into_iter()
                .map(|path| path.parent().unwrap().join("beside"))
                .collect(),
            TreeChange::Chmod(i) => {
                let path = at(*i);
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    let mode = if m.permissions().mode() & 0o7777 == 0o700 {
                        0o755
                    } else {
                        0o700
                    };
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
                }
                vec![path]
            }
        }
    }

    fn tree_change() -> impl proptest::strategy::Strategy<Value = TreeChange> {
        use proptest::prelude::*;
        let path = 0..TREE_PATHS.len();
        prop_oneof![
            (path.clone(), any::<u8>()).prop_map(|(i, b)| TreeChange::Write(i, b)),
            path.clone().prop_map(TreeChange::Remove),
            path.clone().prop_map(TreeChange::MakeDirs),
            (path.clone(), path.clone()).prop_map(|(i, j)| TreeChange::Rename(i, j)),
            path.clone().prop_map(TreeChange::Chmod),
            path.clone()
                .prop_map(|i| TreeChange::ToldToParent(Box::new(TreeChange::Remove(i)))),
            path.clone()
                .prop_map(|i| TreeChange::ToldToParent(Box::new(TreeChange::MakeDirs(i)))),
            path.clone()
                .prop_map(|i| TreeChange::ToldBeside(Box::new(TreeChange::Remove(i)))),
            path.prop_map(|i| TreeChange::ToldBeside(Box::new(TreeChange::MakeDirs(i)))),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::testing::cases(64)))]

        /// What a daemon keeps of its walk, walked again only where events said the
        /// tree changed, is what a walk of the whole tree finds, after every change.
        #[test]
        fn digests_walked_again_where_the_tree_changed_are_those_of_a_whole_walk(
            changes in proptest::collection::vec(tree_change(), 1..12),
            owners in proptest::prelude::any::<bool>(),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let app = tmp.path().join("etc/app");
            std::fs::create_dir_all(app.join("a/b")).unwrap();
            std::fs::write(app.join("a/b/c"), "c").unwrap();
            std::fs::write(app.join("f"), "f").unwrap();
            let config = config_at(tmp.path(), "\"*.swp\"");
            let cache = HashCache::kept_by(Arc::new(crate::baseline::Baseline::of_scan(
                &config,
                Manifest::new(),
                now_ns(),
            )));
            let mut walked = scan_digests(&config, &cache, owners);
            for change in &changes {
                let touched = make_change(&app, change).into_iter().collect();
                rescan_digests(&config, &cache, owners, &mut walked, &touched);
                let whole = scan_digests(&config, &cache, owners);
                proptest::prop_assert_eq!(&walked.levels, &whole.levels, "after {:?}", change);
                proptest::prop_assert_eq!(&walked.digests, &whole.digests);
                proptest::prop_assert_eq!(&walked.missing, &whole.missing);
                let sorted = |u: &[(String, String)]| {
                    let mut u = u.to_vec();
                    u.sort();
                    u
                };
                proptest::prop_assert_eq!(sorted(&walked.unreadable), sorted(&whole.unreadable));
            }
        }
    }
}
