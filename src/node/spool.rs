//! The spool: what a daemon still has to deliver to each peer, kept on disk under
//! `state_directory` so that a restart does not lose it. Per peer, the paths that differ
//! and the version that peer is known or expected to hold there (never file contents:
//! a spooled path is delivered with the local tree's content when the daemon starts).
//!
//! This is a queue of undelivered work, not a state database: in steady state it is
//! empty and the file does not exist. A new change is on disk (file and directory
//! flushed) before it counts as queued; what a delivery removes is written without
//! flushing the directory (delivering a change twice after a power loss is harmless:
//! the peer finds it already holds it).
//!
//! The state directory is locked: two daemons must never share one. A daemon reloading
//! its configuration in the same process shares its predecessor's spool.
//!
//! A spool file read at start-up is checked as strictly as a peer's batch: a torn or
//! hostile file (a path not normalised, an entry out of range) is refused whole, with a
//! message, and moved aside; a path this node does not synchronise (any more) is
//! dropped, named.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::outbox::{self, Known, Outbox};
use crate::config::Config;
use crate::paths::LogicalPath;

/// The spool's file in the state directory.
pub const SPOOL_FILE: &str = "outbox.json";
/// Where a refused spool file is moved.
pub const REFUSED_SPOOL_FILE: &str = "outbox.json.refused";
/// Where a receive-only node moves a spool file left by an earlier send-receive run,
/// which it does not replay.
pub const SET_ASIDE_SPOOL_FILE: &str = "outbox.json.receive-only";
/// The lock file in the state directory; it holds the pid of the daemon holding it.
pub const LOCK_FILE: &str = "lock";
/// The largest spool file read at start-up: far above what a tree of a million paths
/// needs, far below what would hurt.
pub const MAX_SPOOL_BYTES: u64 = 512 * 1024 * 1024;
/// The longest reason kept for a held path.
const MAX_REASON_BYTES: usize = 64 * 1024;
/// Files in the state directory are never opened through a symlink.
const NOFOLLOW: i32 = rustix::fs::OFlags::NOFOLLOW.bits() as i32;
/// What the file says it is.
const FORMAT: &str = "gosyncd-spool";
const VERSION: u32 = 1;

/// The spool file as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpoolFile {
    format: String,
    version: u32,
    peers: Vec<SpooledPeer>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpooledPeer {
    /// The peer as written in `remotes`.
    peer: String,
    paths: BTreeMap<LogicalPath, Known>,
}

/// A [`SpooledPeer`] as it is written: its paths encoded from its outboxes as they are,
/// none copied (see [`outbox::each_spooled`]).
#[derive(Serialize)]
struct SpoolingPeer<'a> {
    peer: &'a str,
    paths: Spooling<'a>,
}

/// The paths of one peer's outboxes, as a map.
struct Spooling<'a>(&'a [Arc<Outbox>]);

impl Serialize for Spooling<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        let mut failed = None;
        outbox::each_spooled(self.0, |path, known| {
            if failed.is_none() {
                failed = map.serialize_entry(path, known).err();
            }
        });
        match failed {
            Some(e) => Err(e),
            None => map.end(),
        }
    }
}

/// What a spool file held, per peer label.
pub type Spooled = BTreeMap<String, BTreeMap<LogicalPath, Known>>;

/// A daemon's spool, shared by the daemons of one process that use the same state
/// directory (a reload's successor and its predecessor).
pub struct Spool {
    dir: PathBuf,
    /// Held while the spool lives: the state directory's lock.
    _lock: OwnedFd,
    /// The outboxes whose differences the file holds, by peer label. A reload registers
    /// its successor's before its predecessor's are handed over and forgotten, so the
    /// file never misses a difference in between.
    outboxes: Mutex<Vec<(String, Arc<Outbox>)>>,
    /// One writer at a time.
    writing: Mutex<()>,
    /// The last write failed (logged once until one succeeds).
    failing: AtomicBool,
}

/// The spools open in this process, by state directory.
static OPEN: Mutex<Vec<(PathBuf, Weak<Spool>)>> = Mutex::new(Vec::new());

impl Spool {
    /// The spool of `dir`, made if missing, locked for this process: the one already
    /// open in this process if there is one.
    pub fn open(dir: &Path) -> anyhow::Result<Arc<Spool>> {
        let mut open = OPEN.lock().expect("spools lock");
        open.retain(|(_, spool)| spool.strong_count() > 0);
        if let Some(spool) = open
            .iter()
            .find(|(path, _)| path == dir)
            .and_then(|(_, spool)| spool.upgrade())
        {
            return Ok(spool);
        }
        let lock = lock(dir)?;
        let spool = Arc::new(Spool {
            dir: dir.to_path_buf(),
            _lock: lock,
            outboxes: Mutex::new(Vec::new()),
            writing: Mutex::new(()),
            failing: AtomicBool::new(false),
        });
        open.push((dir.to_path_buf(), Arc::downgrade(&spool)));
        Ok(spool)
    }

    /// The spool file's path.
    pub fn file(&self) -> PathBuf {
        self.dir.join(SPOOL_FILE)
    }

    /// Forgets every registered outbox: a daemon starting afresh (not a reload) reads
    /// the file instead.
    pub fn clear(&self) {
        self.outboxes.lock().expect("spool lock").clear();
    }

    /// Keeps `outbox`'s differences for `peer` in the file from now on.
    pub fn register(&self, peer: &str, outbox: Arc<Outbox>) {
        self.outboxes
            .lock()
            .expect("spool lock")
            .push((peer.to_string(), outbox));
    }

    /// Stops keeping `outbox` (its differences were handed over to a successor).
    pub fn forget(&self, outbox: &Arc<Outbox>) {
        self.outboxes
            .lock()
            .expect("spool lock")
            .retain(|(_, o)| !Arc::ptr_eq(o, outbox));
    }

    /// Reads the spool file left by the previous daemon. A file that cannot be trusted
    /// is refused whole: logged with why, moved to [`REFUSED_SPOOL_FILE`], and nothing
    /// of it is replayed.
    pub fn load(&self, config: &Config) -> Spooled {
        let file = self.file();
        let text = match std::fs::File::open(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Spooled::new(),
            Err(e) => {
                error!(file = %file.display(), "cannot read the spool of undelivered changes: {e}; they are not replayed");
                return Spooled::new();
            }
            Ok(f) => {
                let mut text = Vec::new();
                use std::io::Read;
                match f.take(MAX_SPOOL_BYTES + 1).read_to_end(&mut text) {
                    Ok(_) => text,
                    Err(e) => {
                        error!(file = %file.display(), "cannot read the spool of undelivered changes: {e}; they are not replayed");
                        return Spooled::new();
                    }
                }
            }
        };
        match parse(&text, config) {
            Ok(spooled) => spooled,
            Err(why) => {
                let aside = self.dir.join(REFUSED_SPOOL_FILE);
                let moved = std::fs::rename(&file, &aside);
                error!(
                    file = %file.display(),
                    "spool of undelivered changes refused: {why}; nothing of it is replayed ({}). \
                     Compare the group with `gosyncd sync -dry` and run `gosyncd sync` on the node whose files should win",
                    match moved {
                        Ok(()) => format!("moved to {}", aside.display()),
                        Err(e) => format!("cannot move it aside: {e}"),
                    }
                );
                Spooled::new()
            }
        }
    }

    /// Moves the spool file, if there is one, to [`SET_ASIDE_SPOOL_FILE`] (over an
    /// older one there): a receive-only node replays none. Returns where it went.
    pub fn set_aside(&self) -> std::io::Result<Option<PathBuf>> {
        let aside = self.dir.join(SET_ASIDE_SPOOL_FILE);
        match std::fs::rename(self.file(), &aside) {
            Ok(()) => Ok(Some(aside)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes every registered outbox's differences to the file (always flushed before
    /// it is renamed into place; with `durable`, a new change, the directory too, before
    /// it returns); removes the file when there is none.
    /// A failure is logged (once until a write succeeds): the changes stay queued in
    /// memory.
    pub fn save(&self, durable: bool) {
        let _one = self.writing.lock().expect("spool writing lock");
        // The outboxes of each peer holding something, in the order registered: a
        // reload's predecessor and successor may both hold some for one peer.
        let mut peers: Vec<(String, Vec<Arc<Outbox>>)> = Vec::new();
        for (label, outbox) in self.outboxes.lock().expect("spool lock").iter() {
            if outbox.holds_nothing() {
                continue;
            }
            match peers.iter_mut().find(|(peer, _)| peer == label) {
                // Each once: they are all locked at once as they are written.
                Some((_, outboxes)) if outboxes.iter().any(|o| Arc::ptr_eq(o, outbox)) => {}
                Some((_, outboxes)) => outboxes.push(outbox.clone()),
                None => peers.push((label.clone(), vec![outbox.clone()])),
            }
        }
        match write(&self.dir, &peers, durable) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    warn!(file = %self.file().display(), "spool of undelivered changes written again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    error!(
                        file = %self.file().display(),
                        "cannot write the spool of undelivered changes: {e}; they are kept in memory only, and lost if the daemon stops before they are delivered"
                    );
                }
            }
        }
    }
}

/// How long a lock this process holds is waited for: the time for a stopped daemon's
/// spool to be dropped.
const OWN_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Makes the state directory if missing and takes its lock, or says which process
/// holds it.
fn lock(dir: &Path) -> anyhow::Result<OwnedFd> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "state_directory {}: cannot create it; set state_directory to a directory this user may write",
                dir.display()
            )
        })?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(NOFOLLOW)
        .open(&path)
        .with_context(|| format!("state_directory {}: cannot open {LOCK_FILE}", dir.display()))?;
    let fd = OwnedFd::from(file);
    let began = std::time::Instant::now();
    loop {
        match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Err(rustix::io::Errno::WOULDBLOCK) => {}
            Err(e) => bail!(
                "state_directory {}: cannot lock {LOCK_FILE}: {e}",
                dir.display()
            ),
            Ok(()) => break,
        }
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = holder.trim();
        // Held by this process: by the spool of a daemon that has stopped (started again
        // in the same process, as the tests do), being dropped on another thread between
        // the last reference going and the lock being closed. It is released in a
        // moment. (A reload never meets this: it shares the running daemon's spool.)
        if holder == std::process::id().to_string() && began.elapsed() < OWN_RELEASE_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(5));
            continue;
        }
        bail!(
            "state_directory {} is in use by another gosyncd daemon (pid {}): two daemons must not share one; give each its own state_directory",
            dir.display(),
            if holder.is_empty() { "unknown" } else { holder }
        );
    }
    let mut file = std::fs::File::from(fd);
    file.set_len(0)?;
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    Ok(OwnedFd::from(file))
}

/// Writes the spool file (a temporary file renamed over it) from the outboxes of each
/// peer, or removes it when there is nothing to keep. Each peer's differences are written
/// as they are encoded, from its outboxes, with none copied (its outboxes wait
/// meanwhile): after a large `rm -rf`, the spool holds every path for each peer away,
/// and a copy of one peer's (100,000 paths: 37 MiB) was the largest thing a daemon held.
fn write(dir: &Path, peers: &[(String, Vec<Arc<Outbox>>)], durable: bool) -> std::io::Result<()> {
    let file = dir.join(SPOOL_FILE);
    if peers.is_empty() {
        return match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let tmp = dir.join(format!("{SPOOL_FILE}.tmp"));
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(NOFOLLOW)
        .open(&tmp)?;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    // The form of `SpoolFile`, its peers written one by one.
    let head = serde_json::to_string(FORMAT).map_err(std::io::Error::other)?;
    write!(out, "{{\"format\":{head},\"version\":{VERSION},\"peers\":[")?;
    for (i, (label, outboxes)) in peers.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        // The first registered (older) expectation wins, as in a hand-over.
        let peer = SpoolingPeer {
            peer: label,
            paths: Spooling(outboxes),
        };
        serde_json::to_writer(&mut out, &peer).map_err(std::io::Error::other)?;
    }
    out.write_all(b"]}")?;
    let out = out.into_inner().map_err(|e| e.into_error())?;
    // Always on disk before the rename: renamed unflushed, the file could be found
    // empty after a power loss, and refused whole.
    out.sync_data()?;
    drop(out);
    std::fs::rename(&tmp, &file)?;
    if durable {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Checks a spool file's text as strictly as a peer's batch: its form, and every path
/// one this node would accept from a peer. Peers no longer in `remotes` are dropped with
/// a warning.
fn parse(text: &[u8], config: &Config) -> Result<Spooled, String> {
    if text.len() as u64 > MAX_SPOOL_BYTES {
        return Err(format!("larger than {MAX_SPOOL_BYTES} bytes"));
    }
    let file: SpoolFile =
        serde_json::from_slice(text).map_err(|e| format!("not a spool file: {e}"))?;
    if file.format != FORMAT || file.version != VERSION {
        return Err(format!(
            "format {:?} version {} is not this daemon's ({FORMAT:?} version {VERSION})",
            file.format, file.version
        ));
    }
    let mut spooled = Spooled::new();
    for peer in file.peers {
        if spooled.contains_key(&peer.peer) {
            return Err(format!("peer {} is listed twice", peer.peer));
        }
        let mut paths = peer.paths;
        for (path, known) in &paths {
            crate::paths::check_normalized(path).map_err(|e| format!("{path:?}: {e}"))?;
            let sent = known.sent.as_ref().and_then(|s| s.entry.as_ref());
            for entry in known.holds.iter().chain(sent) {
                crate::apply::check_entry(path, entry)?;
            }
            if known
                .held
                .as_ref()
                .is_some_and(|h| h.reason().len() > MAX_REASON_BYTES)
            {
                return Err(format!(
                    "{path}: reason longer than {MAX_REASON_BYTES} bytes"
                ));
            }
        }
        // Paths this node does not synchronise (any more: the configuration changed) are
        // dropped, named; nothing outside the configured directories is ever replayed.
        paths.retain(|path, _| match crate::tree::confine(config, path) {
            Ok(_) => true,
            Err(why) => {
                warn!(peer = %peer.peer, "spooled change dropped: {why}");
                false
            }
        });
        if !config.remotes.iter().any(|r| r.label == peer.peer) {
            warn!(
                peer = %peer.peer,
                paths = paths.len(),
                "spooled changes for a peer no longer in remotes are dropped"
            );
            continue;
        }
        spooled.insert(peer.peer, paths);
    }
    Ok(spooled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Held;
    use crate::testing::{config_at, file_entry};

    fn spooled_text(path: &str) -> String {
        let entry = serde_json::to_string(&file_entry(b"v1")).unwrap();
        format!(
            r#"{{"format":"gosyncd-spool","version":1,"peers":[{{"peer":"127.0.0.3:8080","paths":{{"{path}":{{"holds":{entry},"held":null}}}}}}]}}"#
        )
    }

    fn config_with_remote(root: &Path) -> Config {
        let mut config = config_at(root, r#""/etc/app/private""#);
        config.remotes = vec![crate::config::Remote {
            label: "127.0.0.3:8080".into(),
            host: "127.0.0.3".into(),
            port: 8080,
        }];
        config
    }

    #[test]
    fn a_spool_written_is_read_back_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config_with_remote(tmp.path());
        let state = tmp.path().join("state");
        let spool = Spool::open(&state).unwrap();
        let outbox = Arc::new(Outbox::default());
        outbox.restore(BTreeMap::from([
            (
                "/etc/app/a".into(),
                Known {
                    holds: Some(file_entry(b"v1")),
                    held: None,
                    sent: None,
                    provisional: false,
                },
            ),
            (
                "/etc/app/b".into(),
                Known {
                    holds: None,
                    held: Some(Box::new(Held::Rejected("validation failed".into()))),
                    sent: Some(Box::new(crate::node::Sent {
                        entry: Some(file_entry(b"v2")),
                    })),
                    provisional: false,
                },
            ),
        ]));
        spool.register("127.0.0.3:8080", outbox.clone());
        spool.save(true);
        let loaded = spool.load(&config);
        assert_eq!(loaded["127.0.0.3:8080"], outbox.snapshot());
        // Delivered: the file goes.
        spool.forget(&outbox);
        spool.save(false);
        assert!(!spool.file().exists());
    }

    #[test]
    fn a_spool_keeps_each_peer_and_the_older_expectation_across_a_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = config_with_remote(tmp.path());
        config.remotes.push(crate::config::Remote {
            label: "127.0.0.4:8080".into(),
            host: "127.0.0.4".into(),
            port: 8080,
        });
        let spool = Spool::open(&tmp.path().join("state")).unwrap();
        let known = |holds: &[u8]| Known {
            holds: Some(file_entry(holds)),
            held: None,
            sent: None,
            provisional: false,
        };
        let outbox = |paths: &[(&str, &[u8])]| {
            let outbox = Arc::new(Outbox::default());
            outbox.restore(paths.iter().map(|(p, h)| ((*p).into(), known(h))).collect());
            outbox
        };
        // A reload's predecessor and successor hold some for one peer; another peer
        // holds its own; a peer holding nothing is left out. One registered twice is
        // written once (its lock is taken once).
        let older = outbox(&[("/etc/app/a", b"old"), ("/etc/app/b", b"b")]);
        spool.register("127.0.0.3:8080", older.clone());
        spool.register("127.0.0.3:8080", older);
        spool.register("127.0.0.4:8080", outbox(&[("/etc/app/c", b"c")]));
        spool.register(
            "127.0.0.3:8080",
            outbox(&[("/etc/app/a", b"new"), ("/etc/app/d", b"d")]),
        );
        spool.register("127.0.0.3:8080", Arc::new(Outbox::default()));
        spool.save(false);
        let loaded = spool.load(&config);
        assert_eq!(loaded.len(), 2);
        let first = &loaded["127.0.0.3:8080"];
        let holds: Vec<(&str, &Option<crate::protocol::Entry>)> =
            first.iter().map(|(p, k)| (p.as_str(), &k.holds)).collect();
        assert_eq!(
            holds,
            [
                ("/etc/app/a", &Some(file_entry(b"old"))),
                ("/etc/app/b", &Some(file_entry(b"b"))),
                ("/etc/app/d", &Some(file_entry(b"d"))),
            ]
        );
        assert_eq!(loaded["127.0.0.4:8080"]["/etc/app/c"], known(b"c"));
    }

    #[test]
    fn a_second_daemon_cannot_take_a_locked_state_directory_and_is_told_who_holds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let _held = lock(&state).unwrap();
        let err = lock(&state).unwrap_err().to_string();
        assert!(err.contains("in use by another gosyncd daemon"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_lock_this_process_is_letting_go_of_is_waited_for() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let held = lock(&state).unwrap();
        let releasing = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            drop(held);
        });
        let began = std::time::Instant::now();
        let taken = lock(&state);
        releasing.join().unwrap();
        assert!(taken.is_ok(), "{:?}", taken.err());
        assert!(began.elapsed() >= std::time::Duration::from_millis(20));
    }

    #[test]
    fn a_torn_or_hostile_spool_is_refused_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config_with_remote(tmp.path());
        assert!(parse(spooled_text("/etc/app/a").as_bytes(), &config).is_ok());
        let whole = spooled_text("/etc/app/a");
        let cases = [
            whole[..whole.len() / 2].to_string(),
            spooled_text("/etc/app/../../etc/shadow"),
            spooled_text("etc/app/a"),
            spooled_text("/etc/app//a"),
            whole.replace("\"version\":1", "\"version\":9"),
            whole.replace("\"held\":null", "\"held\":null,\"extra\":1"),
            whole.replace("\"mode\":420", "\"mode\":99999"),
        ];
        for text in cases {
            assert!(parse(text.as_bytes(), &config).is_err(), "accepted: {text}");
        }
    }

    #[test]
    fn spooled_paths_this_node_does_not_synchronise_are_dropped_not_replayed() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config_with_remote(tmp.path());
        for path in [
            "/etc/other/x",
            "/etc/app/private/key",
            "/etc/app/.gosyncd-1.tmp",
        ] {
            let loaded = parse(spooled_text(path).as_bytes(), &config).unwrap();
            assert!(loaded["127.0.0.3:8080"].is_empty(), "{path} replayed");
        }
    }

    #[test]
    fn a_refused_spool_is_moved_aside_and_nothing_is_replayed() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config_with_remote(tmp.path());
        let state = tmp.path().join("state2");
        let spool = Spool::open(&state).unwrap();
        std::fs::write(spool.file(), spooled_text("/etc/app/../../x")).unwrap();
        assert!(spool.load(&config).is_empty());
        assert!(!spool.file().exists());
        assert!(state.join(REFUSED_SPOOL_FILE).exists());
    }

    #[test]
    fn spooled_changes_for_a_peer_no_longer_listed_are_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = config_with_remote(tmp.path());
        config.remotes.clear();
        let loaded = parse(spooled_text("/etc/app/a").as_bytes(), &config).unwrap();
        assert!(loaded.is_empty());
    }
}
