//! What a node's daemon shares between its parts (the API's routes, the watcher, the
//! periodic comparison, the metrics): its configuration and identity, the locks and
//! budgets that bound what requests may claim, the counters of its status route, and a
//! record per peer with its [`Outbox`] (child module `outbox`: what the peer is known to
//! hold where it differs), and, on a receive-only node, the local edits it did not push
//! (child module `local_edits`).
//!
//! It holds state and answers questions about it; it must not decode requests, touch a
//! socket (the server's work) or watch the tree (the watcher's). Those layers import it,
//! never the reverse.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore};

use crate::access::Allowlist;
use crate::baseline::Baseline;
use crate::config::Config;
use crate::hooks;
use crate::manifest::{self, now_ns, Generation, HashCache, Placed, Stamp};
use crate::paths::LogicalPath;
use crate::protocol::{
    DirectoryDigest, DirectoryInfo, Entry, HeldPath, Identity, ManifestResponse, PeerStatus,
    StatusCounters, StatusResponse,
};
use crate::sync::PeerLink;

mod local_edits;
mod outbox;
mod spool;

pub use local_edits::LocalEdits;
pub use outbox::{Held, Known, Outbox, Sent};
pub use spool::{Spool, Spooled};

/// What a serving node knows and shares between requests.
pub struct Node {
    pub config: Arc<Config>,
    pub identity: Identity,
    /// Whether owners are applied (the daemon runs as root).
    pub owners: bool,
    pub cache: Arc<HashCache>,
    /// Batches are applied one at a time, so that two pushes never interleave.
    pub(crate) apply_lock: Arc<Mutex<()>>,
    /// Received batches being written now (the watcher's scan holds `apply_lock` too,
    /// and is not one).
    writing: Arc<std::sync::atomic::AtomicUsize>,
    /// Received batches written so far.
    written: Arc<std::sync::atomic::AtomicU64>,
    /// Apply requests being received or applied (`max_concurrent_applies`).
    pub(crate) applies: Arc<Semaphore>,
    /// When the last apply request began or ended: a comparison waits while pushes
    /// arrive (see [`Node::until_quiet`]).
    last_received: std::sync::Mutex<Option<std::time::Instant>>,
    /// A daemon's memory of each path's version; what a push applies is recorded there
    /// before the watcher can see the write.
    pub baseline: Option<Arc<Baseline>>,
    pub stats: Stats,
    /// The client addresses allowed to read and write.
    pub allow: Allowlist,
    /// Runs the directories' `on_change` commands, coalesced.
    pub runner: Arc<hooks::Runner>,
    /// One record per peer (a daemon's; empty for a bare server).
    pub peers: std::sync::OnceLock<Vec<Arc<PeerRecord>>>,
    /// Where the differences waiting for peers are kept across restarts (a daemon's).
    pub spool: Option<Arc<Spool>>,
    /// Asks the anti-entropy pass to compare with the peers now (one came back).
    pub reconcile_now: tokio::sync::Notify,
    /// Counts the changes seen in the tree (a daemon's watcher and applied batches).
    pub generation: Arc<Generation>,
    /// The files a peer's batch put in place here, noted for this node's watcher.
    pub placed: Arc<Placed>,
    /// The last answer to a request for the whole tree's digests, while it is current.
    pub(crate) digests: std::sync::Mutex<Option<KeptDigests>>,
    /// Held while the whole tree's digests are walked: requests that come meanwhile
    /// (each peer of the group compares with this node after a push) wait for that
    /// walk's answer, rather than walk the tree each.
    digests_walking: std::sync::Mutex<()>,
    /// The edits made here and not pushed (a receive-only node's; empty on a sending
    /// node, which pushes them).
    pub local_edits: LocalEdits,
}

/// An apply request under way (see [`Node::receiving`]).
pub struct Receiving {
    node: Arc<Node>,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.node.received_now();
    }
}

/// How long an answer to a digests request is kept while the watcher sees no change: a
/// change it cannot see (a subdirectory beyond the kernel's watch limit, say) is found
/// by the next audit after that.
const DIGESTS_KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// An answer to a request for digests, and the levels hashed in the same walk, kept for
/// the next request while nothing changed, and walked again where something did.
pub(crate) struct KeptDigests {
    /// The tree's generation when the scan it comes from began.
    pub(crate) generation: u64,
    /// When the tree was last walked whole.
    pub(crate) at: std::time::Instant,
    pub(crate) answer: ManifestResponse,
    pub(crate) walked: manifest::DigestScan,
}

/// Everything a daemon knows of one peer, in one place: how to reach it (the client and
/// the terms it announced, shared with the engine), what it is known to hold where it
/// differs from this node (its outbox), where it calls from, and its counters.
pub struct PeerRecord {
    pub link: Arc<PeerLink>,
    pub outbox: Arc<Outbox>,
    /// The addresses the peer's host resolved to when the daemon started: a request
    /// from one of them says the peer is up.
    pub addresses: Vec<std::net::IpAddr>,
    /// The last push or comparison could not reach it.
    unreachable: AtomicBool,
    state: std::sync::Mutex<PeerStatus>,
}

/// Drift paths a peer's status lists (the count covers them all).
pub const DRIFT_PATHS_LISTED: usize = 100;

impl PeerRecord {
    pub fn new(link: Arc<PeerLink>, addresses: Vec<std::net::IpAddr>) -> PeerRecord {
        PeerRecord {
            state: std::sync::Mutex::new(PeerStatus {
                peer: link.label().to_string(),
                ..PeerStatus::default()
            }),
            link,
            outbox: Arc::default(),
            addresses,
            unreachable: AtomicBool::new(false),
        }
    }

    /// The peer as written in `remotes`.
    pub fn label(&self) -> &str {
        self.link.label()
    }

    /// Records whether the peer could be reached; returns whether it was unreachable
    /// before.
    pub fn set_unreachable(&self, unreachable: bool) -> bool {
        self.unreachable.swap(unreachable, Ordering::Relaxed)
    }

    /// Takes delivered paths off the drift a comparison found (it may have run while
    /// they were on their way).
    pub fn delivered(&self, paths: &[String]) {
        let mut state = self.state.lock().expect("peer record lock");
        let before = state.drift.len();
        state.drift.retain(|p| !paths.contains(p));
        let gone = (before - state.drift.len()) as u64;
        if let Some(count) = state.drift_paths.as_mut() {
            *count = count.saturating_sub(gone);
        }
    }

    /// Records the paths found to differ from this node that nobody is delivering:
    /// `count` in all, `first` the first of them in path order (those beyond
    /// [`DRIFT_PATHS_LISTED`] are not kept); returns whether what is shown changed.
    pub fn set_drift(&self, count: usize, first: &[LogicalPath]) -> bool {
        let mut state = self.state.lock().expect("peer record lock");
        let listed: Vec<String> = first
            .iter()
            .take(DRIFT_PATHS_LISTED)
            .map(LogicalPath::to_string)
            .collect();
        let changed = state.drift_paths != Some(count as u64) || state.drift != listed;
        state.drift_paths = Some(count as u64);
        state.drift = listed;
        changed
    }

    /// Adds paths to the drift shown for the peer until the next comparison says
    /// what differs: local edits a receive-only node does not push. (Past the paths
    /// listed, one already counted may be counted again until then.)
    pub fn add_drift(&self, paths: &[String]) {
        let mut state = self.state.lock().expect("peer record lock");
        let mut count = state.drift_paths.unwrap_or(0);
        for path in paths {
            if state.drift.contains(path) {
                continue;
            }
            count += 1;
            if state.drift.len() < DRIFT_PATHS_LISTED {
                let at = state.drift.partition_point(|p| p < path);
                state.drift.insert(at, path.clone());
            }
        }
        state.drift_paths = Some(count);
    }

    /// Records whether the last exchange with the peer (a push or a comparison)
    /// succeeded.
    pub fn set_up(&self, up: bool) {
        self.state.lock().expect("peer record lock").up = Some(up);
    }

    /// Records the end of a push of `bytes`: `Ok(conflicts)` or the error.
    pub fn pushed(&self, result: Result<u64, String>, bytes: u64) {
        let mut state = self.state.lock().expect("peer record lock");
        state.pushes += 1;
        state.bytes_sent += bytes;
        state.up = Some(result.is_ok());
        match result {
            Ok(conflicts) => {
                state.conflicts += conflicts;
                state.last_error = None;
                state.last_success_unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_secs());
            }
            Err(e) => {
                state.failures += 1;
                state.last_error = Some(e);
            }
        }
    }

    pub fn status(&self) -> PeerStatus {
        let mut status = self.state.lock().expect("peer record lock").clone();
        status.pending = self.outbox.len() as u64;
        status.oldest_pending_seconds = self.outbox.oldest_waiting().map(|age| age.as_secs());
        status.held = self
            .outbox
            .held()
            .into_iter()
            .map(|(path, held)| HeldPath {
                path,
                outcome: held.kind(),
                reason: held.reason().to_string(),
            })
            .collect();
        status
    }
}

/// Counters a daemon exposes on its status route.
#[derive(Debug, Default)]
pub struct Stats {
    /// Apply requests received from peers.
    pub apply_requests: AtomicU64,
    /// Apply requests answered busy (503): `max_concurrent_applies` were under way.
    pub applies_busy: AtomicU64,
    /// Operations received and applied.
    pub applied: AtomicU64,
    /// Operations received and refused as conflicts.
    pub conflicts_refused: AtomicU64,
    /// Operations received that conflicted with this node's own edit and were applied
    /// anyway, being newer (`on_conflict = "newest"`).
    pub conflicts_resolved_newest: AtomicU64,
    /// Automatic pushes this node sent (one per peer per burst of edits).
    pub pushes: AtomicU64,
    /// Operations of those pushes that peers refused as conflicts.
    pub conflicts_reported: AtomicU64,
    /// Operations received and rolled back because validation failed.
    pub rejected: AtomicU64,
    /// Bytes of apply request bodies received.
    pub bytes_received: AtomicU64,
}

impl Stats {
    /// The counters' current values.
    pub fn snapshot(&self) -> StatusCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatusCounters {
            apply_requests: get(&self.apply_requests),
            applies_busy: get(&self.applies_busy),
            applied: get(&self.applied),
            conflicts_refused: get(&self.conflicts_refused),
            conflicts_resolved_newest: get(&self.conflicts_resolved_newest),
            pushes: get(&self.pushes),
            conflicts_reported: get(&self.conflicts_reported),
            rejected: get(&self.rejected),
        }
    }
}

impl Node {
    /// Waits until no received batch is being written, and keeps the next one out until
    /// the guard is dropped. The watcher scans under it: a batch half-written (its
    /// versions are recorded when it is done) would otherwise look like local edits and
    /// be pushed back.
    pub async fn hold_applies(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.apply_lock.clone().lock_owned().await
    }

    /// Whether a received batch is being written now.
    pub fn applying(&self) -> bool {
        self.writing.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// How many received batches were written so far.
    pub fn batches_written(&self) -> u64 {
        self.written.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Says that a received batch is being written until the guard is dropped (see
    /// [`Node::applying`]); taken under `apply_lock`.
    pub(crate) fn writing_batch(&self) -> impl Drop + Send + 'static {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        struct Writing(Arc<AtomicUsize>, Arc<AtomicU64>);
        impl Drop for Writing {
            fn drop(&mut self) {
                self.1.fetch_add(1, Ordering::SeqCst);
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.writing.fetch_add(1, Ordering::SeqCst);
        Writing(self.writing.clone(), self.written.clone())
    }

    /// This node, applying received batches one at a time with `previous` (and scanning
    /// for local edits only while neither applies one): a reload runs both for a moment.
    pub fn applying_after(mut self, previous: &Node) -> Node {
        self.apply_lock = previous.apply_lock.clone();
        self.writing = previous.writing.clone();
        self.written = previous.written.clone();
        self
    }

    /// A node that serves `config`; `versions` when it runs the watcher.
    pub fn new(
        config: Arc<Config>,
        cache: Arc<HashCache>,
        baseline: Option<Arc<Baseline>>,
    ) -> Node {
        let limits = config.limits.clone();
        Node {
            allow: Allowlist::new(&config),
            config,
            identity: Identity {
                node_id: uuid::Uuid::new_v4().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            owners: crate::tree::applies_owners(),
            cache,
            apply_lock: Arc::new(Mutex::new(())),
            writing: Arc::default(),
            written: Arc::default(),
            applies: Arc::new(Semaphore::new(limits.max_concurrent_applies)),
            last_received: std::sync::Mutex::new(None),
            baseline,
            stats: Stats::default(),
            runner: Arc::default(),
            peers: std::sync::OnceLock::new(),
            spool: None,
            reconcile_now: tokio::sync::Notify::new(),
            generation: Arc::default(),
            placed: Arc::default(),
            digests: std::sync::Mutex::new(None),
            digests_walking: std::sync::Mutex::new(()),
            local_edits: LocalEdits::default(),
        }
    }

    /// A request came from `ip`: the peers there are up, so what waits for them is
    /// delivered now rather than at the end of a backoff.
    pub fn heard_from(&self, ip: std::net::IpAddr) {
        // A dual-stack listener sees IPv4 peers as IPv4-mapped IPv6 addresses.
        let ip = ip.to_canonical();
        for record in self.records() {
            if record.addresses.contains(&ip) {
                record.outbox.contact();
                if record.set_unreachable(false) {
                    // Back from an outage: compare with it once now.
                    self.reconcile_now.notify_one();
                }
            }
        }
    }

    /// Notes an apply request arriving; the guard notes its end when dropped.
    pub fn receiving(self: &Arc<Self>) -> Receiving {
        self.received_now();
        Receiving { node: self.clone() }
    }

    fn received_now(&self) {
        *self.last_received.lock().expect("received lock") = Some(std::time::Instant::now());
    }

    /// How long until `quiet` has passed since the last apply request ended (`None`:
    /// it has, and none is under way). A push of many batches (an initial sync) keeps
    /// this node's tree in motion until its last batch: a comparison before then would
    /// report what has not arrived yet as drift, and its scans would slow the push.
    pub fn until_quiet(&self, quiet: std::time::Duration) -> Option<std::time::Duration> {
        if self.applies.available_permits() < self.config.limits.max_concurrent_applies {
            return Some(quiet);
        }
        let last = (*self.last_received.lock().expect("received lock"))?;
        quiet
            .checked_sub(last.elapsed())
            .filter(|wait| !wait.is_zero())
    }

    /// This node's receiving side, through which the API applies a peer's batch.
    pub fn receiver(&self) -> crate::apply::Receiver {
        crate::apply::Receiver {
            config: self.config.clone(),
            owners: self.owners,
            // Noted only for a watcher, which takes the notes.
            placed: self
                .generation
                .current()
                .is_some()
                .then(|| self.placed.clone()),
        }
    }

    /// A peer's push left `state` at `path` here (`None`: deleted). A daemon records it
    /// as the path's version, so that its watcher finds nothing new in the write and
    /// pushes nothing back, and what was held against its previous version no longer
    /// holds. `stamp`: the file put there, as found right after it was put (see
    /// [`Baseline::record_put`]).
    pub fn record_received(&self, path: &str, state: Option<Entry>, stamp: Option<Stamp>) {
        if let Some(baseline) = &self.baseline {
            match (state, stamp) {
                (Some(entry), Some(stamp)) => baseline.record_put(path, entry, &stamp, now_ns()),
                (state, _) => baseline.record(path, state),
            }
            for record in self.records() {
                record.outbox.received(path);
            }
            self.local_edits.received(path);
        }
    }

    /// The digest of each configured directory, as the manifest route answers a request
    /// for the whole tree's digests: kept from the last answer while the tree's
    /// generation has not moved since its scan began (and for at most
    /// [`DIGESTS_KEPT_FOR`]), computed from a scan otherwise. A no-change audit of a
    /// watched tree then costs no walk at all.
    pub fn whole_tree_digests(&self) -> ManifestResponse {
        self.digests_walked(|kept| kept.answer.clone())
    }

    /// The digest of each level of configured directories `dirs` (see
    /// [`manifest::level_digests`]): hashed in the walk that answers the digests, and
    /// kept with them, so that a peer that asks for the digests and then for the levels
    /// costs one walk of the tree, or none while it does not change.
    pub fn levels(&self, dirs: &[String]) -> ManifestResponse {
        self.digests_walked(|kept| {
            let within = |path: &str| dirs.iter().any(|dir| crate::paths::is_within(path, dir));
            ManifestResponse {
                digests: kept
                    .walked
                    .levels
                    .iter()
                    .filter(|(path, _)| within(path))
                    .map(|(path, &(sha256, children))| DirectoryDigest {
                        path: path.clone(),
                        sha256,
                        entries: Some(children),
                    })
                    .collect(),
                ..kept.answer.clone()
            }
        })
    }

    /// `answer` of the kept digests and levels, or of a walk made now (and kept, when
    /// the watcher tells the tree's generation).
    fn digests_walked<T>(&self, answer: impl Fn(&KeptDigests) -> T) -> T {
        let kept = |now: Option<u64>| {
            let kept = self.digests.lock().expect("digests lock");
            kept.as_ref()
                .filter(|kept| Some(kept.generation) == now && kept.at.elapsed() < DIGESTS_KEPT_FOR)
                .map(&answer)
        };
        let now = self.generation.current();
        if let Some(answered) = kept(now) {
            return answered;
        }
        // One walk at a time, when its answer can be kept (the tree is watched): one that
        // ended while this request waited answers it too.
        let _walking = now.map(|_| self.digests_walking.lock().expect("digests walking lock"));
        let before = self.generation.current();
        if let Some(answered) = kept(before) {
            return answered;
        }
        // Where the tree changed since the kept walk: every change counted by `before`.
        let touched = before.and_then(|_| self.generation.take_touched());
        let previous = self.digests.lock().expect("digests lock").take();
        // Hashed while walking: the tree's manifest is never built for this. Walked again
        // only where it changed, for as long as an unchanged answer is kept: a change
        // the watcher cannot see is found by the next walk of the whole tree.
        let (walked, at) = match (previous, touched) {
            (Some(mut kept), Some(touched)) if kept.at.elapsed() < DIGESTS_KEPT_FOR => {
                let walked = &mut kept.walked;
                manifest::rescan_digests(&self.config, &self.cache, self.owners, walked, &touched);
                tracing::debug!(
                    paths = touched.len(),
                    "digests: walked again where the tree changed"
                );
                (kept.walked, kept.at)
            }
            _ => {
                let walked = manifest::scan_digests(&self.config, &self.cache, self.owners);
                tracing::debug!("digests: walked the whole tree");
                (walked, std::time::Instant::now())
            }
        };
        let digests = walked.digests.iter().map(|(path, sha256)| DirectoryDigest {
            path: path.clone(),
            sha256: *sha256,
            entries: None,
        });
        let fresh = KeptDigests {
            generation: before.unwrap_or_default(),
            at,
            answer: self.response(
                &walked.missing,
                walked.unreadable.clone(),
                digests.collect(),
            ),
            walked,
        };
        let answered = answer(&fresh);
        if before.is_some() {
            *self.digests.lock().expect("digests lock") = Some(fresh);
        }
        answered
    }

    /// This node's answer from a scan, for a request of digests only: one digest per
    /// configured directory present, and no entries.
    pub fn digests_answer(&self, scan: manifest::Scan) -> ManifestResponse {
        let digests = self
            .config
            .directories
            .iter()
            .filter(|d| !scan.missing.contains(&d.path))
            .map(|d| DirectoryDigest {
                path: d.path.clone(),
                sha256: manifest::digest(&scan.entries, &d.path, self.owners, |_| true),
                entries: None,
            })
            .collect();
        self.response(&scan.missing, scan.unreadable, digests)
    }

    /// A manifest answer of this node: its identity, rights, configured directories
    /// (`missing` ones marked absent) and limits, with what was read.
    fn response(
        &self,
        missing: &[String],
        unreadable: Vec<(String, String)>,
        digests: Vec<DirectoryDigest>,
    ) -> ManifestResponse {
        ManifestResponse {
            identity: self.identity.clone(),
            owners: self.owners,
            directories: self
                .config
                .directories
                .iter()
                .map(|d| DirectoryInfo {
                    path: d.path.clone(),
                    exclude: d.excludes.entries.clone(),
                    present: !missing.contains(&d.path),
                    together: d.hooks.run_for_received(),
                })
                .collect(),
            entries: Vec::new(),
            unreadable: unreadable.into_iter().map(|(p, _)| p).collect(),
            limits: self.config.limits.announced(),
            digests,
            receiving: false,
        }
    }

    /// The status route's answer: identity, counters, role, the local edits not pushed
    /// and each peer's status.
    pub fn status(&self) -> StatusResponse {
        StatusResponse {
            identity: self.identity.clone(),
            counters: self.stats.snapshot(),
            peers: self.peer_status(),
            role: self.config.role,
            local_edits_not_pushed: self.local_edits.len() as u64,
            local_edits: self.local_edits.first(DRIFT_PATHS_LISTED),
        }
    }

    /// The record of each peer (none for a bare server).
    pub fn records(&self) -> &[Arc<PeerRecord>] {
        self.peers.get().map(Vec::as_slice).unwrap_or_default()
    }

    /// What the watcher knows of each peer (nothing when this node does not watch).
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.records().iter().map(|p| p.status()).collect()
    }
}

/// A manifest answer of this node, as it is sent.
pub enum Answer {
    Whole(ManifestResponse),
    /// A listing of what `region` (scope, shallow) lists of this node's tree, walked as
    /// it is sent: each entry is written as the walk finds it, and the fields that
    /// depend on the walk (which configured directories are present, what could not be
    /// read) follow the entries. The daemon never holds the tree for a listing: at
    /// 100,000 paths it held about 40 MB for each listing under way.
    Listing {
        node: Arc<Node>,
        scope: Vec<String>,
        shallow: Vec<String>,
    },
}

impl serde::Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (node, scope, shallow) = match self {
            Answer::Whole(whole) => return whole.serialize(serializer),
            Answer::Listing {
                node,
                scope,
                shallow,
            } => (node, scope, shallow),
        };
        let walked = std::cell::RefCell::new(None);
        // The fields of a `ManifestResponse`, in the order they can be written.
        #[derive(serde::Serialize)]
        struct Shape<'a> {
            #[serde(flatten)]
            identity: &'a crate::protocol::Identity,
            owners: bool,
            limits: crate::protocol::PeerLimits,
            entries: Walking<'a>,
            directories: After<'a, Vec<DirectoryInfo>>,
            unreadable: After<'a, Vec<String>>,
        }
        Shape {
            identity: &node.identity,
            owners: node.owners,
            limits: node.config.limits.announced(),
            entries: Walking {
                node,
                region: crate::paths::Region { scope, shallow },
                walked: &walked,
            },
            directories: After(&walked, |head| &head.directories),
            unreadable: After(&walked, |head| &head.unreadable),
        }
        .serialize(serializer)
    }
}

/// The entries of a listing, written as the walk finds them; what the walk found
/// besides goes into `walked`, as the head of the answer.
struct Walking<'a> {
    node: &'a Node,
    region: crate::paths::Region<'a>,
    walked: &'a std::cell::RefCell<Option<ManifestResponse>>,
}

impl serde::Serialize for Walking<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            path: &'a str,
            #[serde(flatten)]
            entry: &'a crate::protocol::Entry,
        }
        let node = self.node;
        let mut seq = serializer.serialize_seq(None)?;
        let mut failed = None;
        let scan = manifest::walk_region(
            &node.config,
            self.region,
            &node.cache,
            &mut |path, entry| {
                let wire = Wire {
                    path: path.as_str(),
                    entry: &entry,
                };
                match seq.serialize_element(&wire) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            },
        );
        if let Some(e) = failed {
            return Err(e);
        }
        let head = node.response(&scan.missing, scan.unreadable, Vec::new());
        *self.walked.borrow_mut() = Some(head);
        seq.end()
    }
}

/// A field of a listing's head, known once its entries are written.
struct After<'a, T>(
    &'a std::cell::RefCell<Option<ManifestResponse>>,
    fn(&ManifestResponse) -> &T,
);

impl<T: serde::Serialize> serde::Serialize for After<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &*self.0.borrow() {
            Some(head) => (self.1)(head).serialize(serializer),
            None => Err(serde::ser::Error::custom(
                "a listing's head before its entries",
            )),
        }
    }
}

/// The daemon's own runs take this node's digests and levels as its routes answer them.
impl crate::sync::KeptTree for Node {
    fn digests(&self) -> ManifestResponse {
        self.whole_tree_digests()
    }

    fn levels(&self, dirs: &[String]) -> ManifestResponse {
        Node::levels(self, dirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::WireEntry;
    use std::time::Duration;

    /// A listing as a peer reads it, its entries in path order.
    fn listed(answer: Answer) -> ManifestResponse {
        let mut read: ManifestResponse =
            serde_json::from_slice(&serde_json::to_vec(&answer).unwrap()).unwrap();
        read.entries.sort_by(|a, b| a.path.cmp(&b.path));
        read
    }

    #[test]
    fn a_listing_walked_as_it_is_sent_is_the_answer_a_scan_would_make() {
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("etc/app");
        std::fs::create_dir_all(app.join("sub/deeper")).unwrap();
        std::fs::write(app.join("a b.conf"), "a").unwrap();
        std::fs::write(app.join("\u{e9}t\u{e9}"), "\"quoted\"").unwrap();
        std::fs::write(app.join("sub/deeper/x"), "x").unwrap();
        std::os::unix::fs::symlink("../a b.conf", app.join("sub/link")).unwrap();
        let text = crate::testing::config_text(root.path(), "") + "directory \"/etc/gone\" {}\n";
        let node = Arc::new(Node::new(
            Arc::new(crate::testing::parse(&text)),
            Arc::default(),
            None,
        ));
        for (scope, shallow) in [
            (vec![], vec![]),
            (vec!["/etc/app/sub".to_string()], vec![]),
            (vec![], vec!["/etc/app".to_string()]),
        ] {
            let region = crate::paths::Region {
                scope: &scope,
                shallow: &shallow,
            };
            let scan = manifest::scan_region(&node.config, region, &node.cache);
            let whole = ManifestResponse {
                entries: scan
                    .entries
                    .iter()
                    .map(|(path, entry)| WireEntry {
                        path: path.clone(),
                        entry: entry.clone(),
                    })
                    .collect(),
                ..node.response(&scan.missing, scan.unreadable.clone(), Vec::new())
            };
            let sent = listed(Answer::Listing {
                node: node.clone(),
                scope: scope.clone(),
                shallow: shallow.clone(),
            });
            assert!(!sent.entries.is_empty(), "{scope:?} {shallow:?}");
            assert_eq!(
                serde_json::to_value(&sent).unwrap(),
                serde_json::to_value(&whole).unwrap(),
                "{scope:?} {shallow:?}"
            );
        }
        let all = listed(Answer::Listing {
            node: node.clone(),
            scope: Vec::new(),
            shallow: Vec::new(),
        });
        let paths: Vec<&str> = all.entries.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/etc/app",
                "/etc/app/a b.conf",
                "/etc/app/sub",
                "/etc/app/sub/deeper",
                "/etc/app/sub/deeper/x",
                "/etc/app/sub/link",
                "/etc/app/\u{e9}t\u{e9}",
            ]
        );
        let gone = all
            .directories
            .iter()
            .find(|d| d.path == "/etc/gone")
            .unwrap();
        assert!(
            !gone.present,
            "a missing configured directory is told after the walk"
        );
    }

    #[test]
    fn a_listing_whose_reader_goes_away_stops_its_walk() {
        struct Closing(usize);
        impl std::io::Write for Closing {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let root = tempfile::tempdir().unwrap();
        let app = root.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        for i in 0..50 {
            std::fs::write(app.join(format!("f{i}")), "x").unwrap();
        }
        let node = Arc::new(Node::new(
            Arc::new(crate::testing::config_at(root.path(), "")),
            Arc::default(),
            None,
        ));
        let answer = Answer::Listing {
            node,
            scope: Vec::new(),
            shallow: Vec::new(),
        };
        let failed = serde_json::to_writer(Closing(1000), &answer).unwrap_err();
        assert!(failed.is_io(), "{failed}");
    }

    #[test]
    fn a_comparison_waits_while_a_push_arrives_and_a_moment_after() {
        let config = Arc::new(crate::testing::config_at(
            std::path::Path::new("/srv/node"),
            "",
        ));
        let node = Arc::new(Node::new(config, Arc::default(), None));
        let quiet = Duration::from_secs(60);
        assert_eq!(node.until_quiet(quiet), None, "nothing was ever received");
        let arriving = node.receiving();
        let _permit = node.applies.clone().try_acquire_owned().unwrap();
        // However long ago it began, a request under way keeps the node in motion.
        assert_eq!(node.until_quiet(Duration::ZERO), Some(Duration::ZERO));
        drop(_permit);
        drop(arriving);
        let wait = node.until_quiet(quiet).expect("it just ended");
        assert!(wait > Duration::from_secs(59) && wait <= quiet, "{wait:?}");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(node.until_quiet(Duration::from_millis(10)), None);
    }
}
