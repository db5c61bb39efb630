//! The diff-and-push engine: scan the local tree, fetch each peer's manifest, plan, then
//! print (dry run) or push. `sync`, `sync -dry`, the demo and the daemon all call
//! [`Engine::run`].
//!
//! Peers are handled concurrently and independently: one slow or dead peer neither
//! delays nor stops the others. Each peer gets one manifest request and, when something
//! changes, one apply request carrying every change with its content (split only when
//! the changes exceed the receiver's body limit).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bytes::Bytes;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, Instrument};

use crate::actions;
use crate::apply;
use crate::client::{self, Peer};
use crate::config::{BindAddress, Config, Directory, Excludes, Remote};
use crate::manifest::{self, HashCache, Manifest, Scan};
use crate::paths::{self, is_within};
use crate::plan::plan;
use crate::protocol::{
    self, Action, ActionReport, BatchHeader, ChangeKind, Content, Digest256, DirectoryInfo, Entry,
    ManifestResponse, Op, Outcome, PeerLimits,
};
use crate::tls::TlsMaterial;

/// File contents of a batch, one slot per operation (`None`: no content travels).
type Contents = Vec<Option<Bytes>>;

/// Operations per batch when splitting large pushes, which keeps the JSON header well
/// under the receiver's header limit.
const OPS_PER_BATCH: usize = 100_000;
/// Room left in a batch body for its header when splitting large pushes.
/// Room counted for one operation's entry in a batch header, besides its path: the
/// JSON of an entry with both states (two digests, modes, owners, times) is under 400
/// bytes.
const HEADER_BYTES_PER_OP: usize = 1024;
/// Room counted for a batch's framing.
const BATCH_FRAMING_BYTES: usize = 1024;

/// What one run does.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Logical paths limiting the run to those files or subtrees; empty: everything.
    pub scope: Vec<String>,
    /// Plan and report, change nothing.
    pub dry_run: bool,
    /// Push even what the mass-delete guard refuses.
    pub force: bool,
    /// With `dry_run`: compute a unified diff of each changed text file.
    pub diff: bool,
}

/// What happened (or would happen) to one path on one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeStatus {
    Done(ChangeKind),
    /// Refused or failed on the peer, or conflicting; the peer's file is intact.
    Skipped(String),
    /// A directory left in place on purpose (it holds paths the peer excludes).
    Kept(String),
    /// Applied, then put back by the peer: its `validate` command refused the result.
    Rejected(String),
}

/// One line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub peer: String,
    pub path: String,
    pub status: ChangeStatus,
}

impl fmt::Display for Change {
    /// The original tool's line, without its timestamp: `[M] 10.0.0.2:8080 /etc/x updated`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (peer, path) = (&self.peer, &self.path);
        match &self.status {
            ChangeStatus::Done(ChangeKind::Added) => write!(f, "[+] {peer} {path} added"),
            ChangeStatus::Done(ChangeKind::Updated) => write!(f, "[M] {peer} {path} updated"),
            ChangeStatus::Done(ChangeKind::Deleted) => write!(f, "[-] {peer} {path} deleted"),
            ChangeStatus::Skipped(reason) | ChangeStatus::Kept(reason) => {
                write!(f, "[!] {peer} {path} skipped: {reason}")
            }
            ChangeStatus::Rejected(reason) => write!(f, "[!] {peer} {path} rejected: {reason}"),
        }
    }
}

/// A command a peer ran for a push: `[*] 10.0.0.2:8080 /etc/haproxy on_change
/// "systemctl reload haproxy" ok`, or `[!] ... failed (exit 1): <first line>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionLine {
    pub peer: String,
    pub report: ActionReport,
}

impl fmt::Display for ActionLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        if r.success {
            write!(
                f,
                "[*] {} {} on_change {:?} ok",
                self.peer, r.directory, r.command
            )
        } else {
            let code = r
                .code
                .map_or_else(|| "killed".to_string(), |c| format!("exit {c}"));
            write!(
                f,
                "[!] {} {} on_change {:?} failed ({code}): {}",
                self.peer, r.directory, r.command, r.first_line
            )
        }
    }
}

/// The outcome of a run for one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerReport {
    pub peer: String,
    pub changes: Vec<Change>,
    /// The peer could not be synchronised (unreachable, refused the request, ...).
    pub error: Option<String>,
    /// The error was the peer refusing the request (sending it again is useless), not
    /// the peer being unreachable.
    pub refused: bool,
    /// Files not sent because they were written again since the scan (they are also
    /// reported as skipped changes).
    pub changed_locally: Vec<String>,
    /// Why the remote was left alone: it turned out to be this node.
    pub skipped: Option<String>,
    /// The `on_change` commands the peer ran for this push.
    pub actions: Vec<ActionLine>,
    /// Bytes of apply requests sent to the peer.
    pub bytes_sent: u64,
    /// With `Options::diff`: per changed file, its unified diff (peer -> this node), or
    /// a one-line note for a file that cannot be shown.
    pub diffs: Vec<(String, String)>,
}

impl PeerReport {
    pub fn failed(&self) -> bool {
        self.error.is_some()
            || self.changes.iter().any(|c| {
                matches!(
                    c.status,
                    ChangeStatus::Skipped(_) | ChangeStatus::Rejected(_)
                )
            })
            || self.actions.iter().any(|a| !a.report.success)
    }
}

/// The outcome of a whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Problems on this node (a missing configured directory, a bad scope path).
    pub local_errors: Vec<String>,
    /// One per peer, in the order of `remotes`.
    pub peers: Vec<PeerReport>,
}

impl Report {
    /// Whether anything failed: decides exit code 2.
    pub fn failed(&self) -> bool {
        !self.local_errors.is_empty() || self.peers.iter().any(PeerReport::failed)
    }

    /// Whether any change was (or would be) made.
    pub fn has_changes(&self) -> bool {
        self.peers.iter().any(|p| {
            p.changes
                .iter()
                .any(|c| matches!(c.status, ChangeStatus::Done(_)))
        })
    }
}

/// The engine: this node's config, its peers and its hash cache.
pub struct Engine {
    config: Arc<Config>,
    peers: Vec<Peer>,
    cache: Arc<HashCache>,
    /// The identity of the daemon of this node, when known: a remote announcing it is
    /// this node under another name.
    self_id: Option<String>,
    /// Each peer's configured directories and excludes, from its last manifest.
    peer_dirs: Arc<Mutex<Vec<Option<PeerTerms>>>>,
}

impl Engine {
    /// Builds the engine; remotes that resolve to this node's own listening address are
    /// dropped here (logged at debug).
    pub async fn new(
        config: Arc<Config>,
        tls: &TlsMaterial,
        cache: Arc<HashCache>,
        self_id: Option<String>,
    ) -> anyhow::Result<Engine> {
        let http = client::http_client(tls.client_config()?, config.bind_address.source_ip())?
            .with_max_response(config.limits.max_manifest_size);
        let mut peers = Vec::new();
        for remote in &config.remotes {
            if resolves_to_self(remote, &config.bind_address).await {
                debug!(peer = %remote.label, "skipping remote: it is this node");
                continue;
            }
            peers.push(Peer::new(remote.clone(), http.clone()));
        }
        let peer_dirs = Arc::new(Mutex::new(vec![None; peers.len()]));
        Ok(Engine {
            config,
            peers,
            cache,
            self_id,
            peer_dirs,
        })
    }

    /// Asks the daemon listening on this node's bind address for its identity, so that a
    /// CLI run recognises this node behind any alias in `remotes`. `None` when no daemon
    /// answers (detection by address still applies).
    pub async fn discover_self_id(config: &Config, tls: &TlsMaterial) -> Option<String> {
        match Engine::own_daemon(config, tls)?.identity().await {
            Ok(identity) => Some(identity.node_id),
            Err(e) => {
                debug!(error = %e, "no local daemon identity");
                None
            }
        }
    }

    /// A client for the daemon listening on this node's bind address (the address it
    /// names, or loopback), verifying its chain but not its name: the answers are only
    /// ever used to recognise this node and to read its own counters.
    pub fn own_daemon(config: &Config, tls: &TlsMaterial) -> Option<Peer> {
        let ip = config
            .bind_address
            .source_ip()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let remote = Remote {
            label: SocketAddr::new(ip, config.bind_address.port).to_string(),
            host: ip.to_string(),
            port: config.bind_address.port,
        };
        let http = client::http_client(tls.identity_probe_config().ok()?, None).ok()?;
        Some(Peer::new(remote, http))
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The peers this engine synchronises (the remotes minus this node).
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Runs one sync (or dry run). `on_peer` is called as each peer finishes, in
    /// completion order, so that output flows while slow peers are still working.
    pub async fn run(&self, options: &Options, mut on_peer: impl FnMut(&PeerReport)) -> Report {
        let span = info_span!("sync", dry_run = options.dry_run);
        async {
            let mut report = Report::default();
            for path in &options.scope {
                if let Err(e) = paths::check_normalized(path) {
                    report.local_errors.push(e);
                } else if self.config.directory_of(path).is_none() {
                    report
                        .local_errors
                        .push(format!("{path}: not inside a configured directory"));
                }
            }
            if !report.local_errors.is_empty() {
                return report;
            }

            let started = std::time::Instant::now();
            let scope = options.scope.clone();
            let manifests: Vec<_> = self
                .peers
                .iter()
                .map(|peer| {
                    let peer = peer.clone();
                    let scope = scope.clone();
                    tokio::spawn(async move { peer.manifest(&scope).await })
                })
                .collect();
            let (config, cache) = (self.config.clone(), self.cache.clone());
            let scan = tokio::task::spawn_blocking(move || manifest::scan(&config, &scope, &cache))
                .await
                .expect("scan task");
            for dir in &scan.missing {
                report.local_errors.push(format!(
                    "directory {dir} is missing on this node: nothing is synchronised for it"
                ));
            }
            // A tree that fails its own validation is not pushed: its directory is left
            // alone on the peers, as an unreadable one is.
            let mut scan = scan;
            let to_validate: BTreeMap<String, Vec<String>> = self
                .config
                .directories
                .iter()
                .filter(|d| scan.entries.contains_key(&d.path))
                .map(|d| (d.path.clone(), Vec::new()))
                .collect();
            for (dir, why) in
                actions::validate(&self.config, &to_validate, actions::Side::Local).await
            {
                let reason = format!("validation failed on this node: {why}");
                report
                    .local_errors
                    .push(format!("refusing to push {dir}: {reason}"));
                scan.unreadable.push((dir, reason));
            }
            let local = Arc::new(LocalState::new(scan));

            let mut tasks = JoinSet::new();
            for (index, (peer, manifest)) in self.peers.iter().cloned().zip(manifests).enumerate() {
                let local = local.clone();
                let config = self.config.clone();
                let self_id = self.self_id.clone();
                let options = options.clone();
                let peer_dirs = self.peer_dirs.clone();
                let span = info_span!("peer", peer = %peer.remote.label);
                tasks.spawn(
                    async move {
                        let manifest = manifest.await.expect("manifest task");
                        if let Ok(m) = &manifest {
                            peer_dirs.lock().expect("peer dirs lock")[index] =
                                Some(PeerTerms::of(m));
                        }
                        let report =
                            sync_peer(&config, &peer, manifest, &local, self_id, &options).await;
                        (index, report)
                    }
                    .instrument(span),
                );
            }
            let mut reports: Vec<(usize, PeerReport)> = Vec::new();
            while let Some(done) = tasks.join_next().await {
                let (index, report) = done.expect("peer task");
                on_peer(&report);
                reports.push((index, report));
            }
            reports.sort_by_key(|(i, _)| *i);
            report.peers = reports.into_iter().map(|(_, r)| r).collect();
            let changes: usize = report.peers.iter().map(|p| p.changes.len()).sum();
            info!(
                peers = report.peers.len(),
                changes,
                failed = report.failed(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sync finished"
            );
            report
        }
        .instrument(span)
        .await
    }
}

impl Engine {
    /// Pushes operations planned elsewhere (the watcher's, which expect the versions this
    /// peer is known to hold) to peer `index` of [`Engine::peers`], in one request. A
    /// file whose content no longer matches its operation is not sent, and is listed in
    /// [`PeerReport::changed_locally`]. No manifest is fetched once the peer's
    /// directories are known: from save to replicated is one round trip.
    pub async fn push_to(&self, index: usize, ops: Vec<Op>) -> PeerReport {
        let peer = &self.peers[index];
        let span = info_span!("peer", peer = %peer.remote.label);
        let mut report = PeerReport {
            peer: peer.remote.label.clone(),
            ..PeerReport::default()
        };
        // The peer's own directories and excludes: remembered from its last manifest,
        // or asked for now (scoped to these paths, so cheap).
        let known = self.peer_dirs.lock().expect("peer dirs lock")[index].clone();
        let terms = match known {
            Some(terms) => terms,
            None => {
                let scope: Vec<String> = ops.iter().map(|op| op.path.clone()).collect();
                match peer.manifest(&scope).instrument(span.clone()).await {
                    Ok(manifest) => {
                        let terms = PeerTerms::of(&manifest);
                        self.peer_dirs.lock().expect("peer dirs lock")[index] = Some(terms.clone());
                        terms
                    }
                    Err(e) => {
                        report.refused = e.is_refusal();
                        report.error = Some(e.to_string());
                        return report;
                    }
                }
            }
        };
        let (shared, refused) = peer_rules(&self.config, &terms.directories, |dir| {
            ops.iter().any(|op| is_within(&op.path, &dir.path))
        });
        for (path, reason) in refused {
            report.changes.push(Change {
                peer: report.peer.clone(),
                path,
                status: ChangeStatus::Skipped(reason),
            });
        }
        let ops: Vec<Op> = ops
            .into_iter()
            .filter(|op| {
                shared.iter().any(|(dir, excludes)| {
                    is_within(&op.path, &dir.path)
                        && !excludes.excludes_any_component(&dir.path, &op.path)
                })
            })
            .collect();
        if ops.is_empty() {
            return report;
        }
        let local = LocalState::new(Scan::default());
        push(&self.config, peer, ops, &local, &terms.limits, &mut report)
            .instrument(span)
            .await;
        if report.error.is_some() {
            // The peer may have restarted with other directories or limits: ask again
            // before the next push.
            self.peer_dirs.lock().expect("peer dirs lock")[index] = None;
        }
        report
    }
}

/// What a peer's last manifest said about what it takes: its directories with their
/// excludes, and its limits.
#[derive(Clone, Debug)]
struct PeerTerms {
    directories: Vec<DirectoryInfo>,
    limits: PeerLimits,
}

impl PeerTerms {
    fn of(manifest: &ManifestResponse) -> PeerTerms {
        PeerTerms {
            directories: manifest.directories.clone(),
            limits: manifest.limits,
        }
    }
}

/// The local scan plus the file contents read so far, shared by all peers of a run so
/// that each file is read once however many peers need it.
struct LocalState {
    scan: Scan,
    contents: Mutex<HashMap<String, Bytes>>,
}

impl LocalState {
    fn new(scan: Scan) -> LocalState {
        LocalState {
            scan,
            contents: Mutex::new(HashMap::new()),
        }
    }

    /// The content of a scanned file, read without following any link below its
    /// configured directory, and only if it still has the scanned digest.
    fn content(
        &self,
        config: &Config,
        path: &str,
        scanned: &Digest256,
    ) -> Result<Bytes, Unsendable> {
        if let Some(bytes) = self.contents.lock().expect("contents lock").get(path) {
            return Ok(bytes.clone());
        }
        let dir = config
            .directory_of(path)
            .ok_or_else(|| Unsendable::Unreadable("outside the configured directories".into()))?;
        let (parent, name) = apply::open_parent(config, dir, path)
            .map_err(|e| Unsendable::Unreadable(e.to_string()))?;
        let mut bytes = Vec::new();
        apply::open_regular(&parent, &name)
            .and_then(|fd| std::fs::File::from(fd).read_to_end(&mut bytes))
            .map_err(|e| Unsendable::Unreadable(format!("cannot read the local file: {e}")))?;
        if Digest256::of(&bytes) != *scanned {
            return Err(Unsendable::Changed);
        }
        let bytes = Bytes::from(bytes);
        self.contents
            .lock()
            .expect("contents lock")
            .insert(path.to_string(), bytes.clone());
        Ok(bytes)
    }
}

/// Why a planned file could not be sent.
enum Unsendable {
    /// It was written again since the scan; a later scan will pick the new version up.
    Changed,
    Unreadable(String),
}

async fn sync_peer(
    config: &Config,
    peer: &Peer,
    manifest: Result<ManifestResponse, client::PeerError>,
    local: &LocalState,
    self_id: Option<String>,
    options: &Options,
) -> PeerReport {
    let label = peer.remote.label.clone();
    let mut report = PeerReport {
        peer: label.clone(),
        ..PeerReport::default()
    };
    let remote = match manifest {
        Ok(remote) => remote,
        Err(e) => {
            report.refused = e.is_refusal();
            report.error = Some(e.to_string());
            return report;
        }
    };
    if self_id.as_deref() == Some(remote.identity.node_id.as_str()) {
        debug!("skipping remote: it announces this node's identity");
        report.skipped = Some("it is this node (same identity)".into());
        return report;
    }

    let (ours, theirs, refused_dirs) = views(config, local, &remote);
    for dir in refused_dirs {
        report.changes.push(Change {
            peer: label.clone(),
            path: dir.0,
            status: ChangeStatus::Skipped(dir.1),
        });
    }
    let ops = plan(&ours, &theirs, remote.owners);
    if !options.force {
        if let Some(refusal) = mass_delete(config, &options.scope, &theirs, &ops) {
            report.error = Some(refusal);
            report.refused = true;
            report.changes.extend(ops.iter().map(|op| Change {
                peer: label.clone(),
                path: op.path.clone(),
                status: ChangeStatus::Skipped("not sent: mass-delete guard".into()),
            }));
            return report;
        }
    }
    if options.dry_run && options.diff && !ops.is_empty() {
        report.diffs = crate::diff::diffs(config, peer, &ops).await;
    }
    if options.dry_run || ops.is_empty() {
        report.changes.extend(ops.iter().map(|op| Change {
            peer: label.clone(),
            path: op.path.clone(),
            status: ChangeStatus::Done(op.change()),
        }));
        return report;
    }
    push(config, peer, ops, local, &remote.limits, &mut report).await;
    report
}

/// Deletions below this count never trip the share rule of the mass-delete guard.
pub const MASS_DELETE_MIN: usize = 10;

/// The mass-delete guard: a push that would leave a configured directory empty on the
/// peer (every entry deleted, nothing put), or delete more than `max_delete_share` of its
/// entries (and at least [`MASS_DELETE_MIN`]), most likely comes from an unmounted or
/// emptied directory on this node. A path deleted and put again (a type change) does not
/// count. Only directories the run covers whole are judged. Returns the refusal, naming
/// the directory and the counts.
fn mass_delete(config: &Config, scope: &[String], theirs: &Manifest, ops: &[Op]) -> Option<String> {
    // A sync scoped below a directory sees only part of it: no share can be judged.
    let whole = |dir: &str| scope.is_empty() || scope.iter().any(|s| is_within(dir, s));
    for dir in config.directories.iter().filter(|d| whole(&d.path)) {
        let held = theirs
            .keys()
            .filter(|p| *p != &dir.path && is_within(p, &dir.path))
            .count();
        let in_dir: Vec<&Op> = ops
            .iter()
            .filter(|op| is_within(&op.path, &dir.path))
            .collect();
        let put: std::collections::HashSet<&str> = in_dir
            .iter()
            .filter(|op| op.action != Action::Delete)
            .map(|op| op.path.as_str())
            .collect();
        // A path deleted and put again changes type; it is not lost.
        let deleted = in_dir
            .iter()
            .filter(|op| op.action == Action::Delete && !put.contains(op.path.as_str()))
            .count();
        if held == 0 || deleted == 0 {
            continue;
        }
        let share = deleted as f64 / held as f64;
        let emptied = deleted == held && put.is_empty();
        if emptied || (deleted >= MASS_DELETE_MIN && share > config.max_delete_share) {
            return Some(format!(
                "refusing to delete {deleted} of the {held} entries of {} on this peer \
                 (max_delete_share is {:.0}%): is {} on this node unmounted or emptied? \
                 Run the sync again with --force if this is intended",
                dir.path,
                config.max_delete_share * 100.0,
                dir.path
            ));
        }
    }
    None
}

/// The local and remote manifests restricted to what this peer and this node both
/// synchronise, plus the configured directories the peer cannot take (with the reason).
fn views(
    config: &Config,
    local: &LocalState,
    remote: &ManifestResponse,
) -> (Manifest, Manifest, Vec<(String, String)>) {
    let (shared, refused) = peer_rules(config, &remote.directories, |dir| {
        // Missing here or out of scope: not part of this run.
        local.scan.entries.contains_key(&dir.path)
    });
    let unknown: Vec<&str> = local
        .scan
        .unreadable
        .iter()
        .map(|(p, _)| p.as_str())
        .chain(remote.unreadable.iter().map(String::as_str))
        .collect();
    let known = |path: &str| !unknown.iter().any(|u| is_within(path, u));

    let ours: Manifest = local
        .scan
        .entries
        .iter()
        .filter(|(path, _)| {
            known(path)
                && shared.iter().any(|(dir, theirs)| {
                    is_within(path, &dir.path) && !theirs.excludes_any_component(&dir.path, path)
                })
        })
        .map(|(p, e)| (p.clone(), e.clone()))
        .collect();
    let theirs: Manifest = remote
        .entries
        .iter()
        .filter(|w| {
            known(&w.path)
                && shared.iter().any(|(dir, _)| {
                    is_within(&w.path, &dir.path)
                        && !dir.excludes.excludes_any_component(&dir.path, &w.path)
                })
        })
        .map(|w| (w.path.clone(), w.entry.clone()))
        .collect::<BTreeMap<_, _>>();
    (ours, theirs, refused)
}

/// A peer's rules for the configured directories `wanted` selects: for each directory
/// the peer also has, the peer's excludes; for each it lacks, the reason it is refused.
type PeerRules<'c> = (Vec<(&'c Directory, Excludes)>, Vec<(String, String)>);

fn peer_rules<'c>(
    config: &'c Config,
    theirs: &[DirectoryInfo],
    wanted: impl Fn(&Directory) -> bool,
) -> PeerRules<'c> {
    let mut shared = Vec::new();
    let mut refused = Vec::new();
    for dir in config.directories.iter().filter(|d| wanted(d)) {
        match theirs.iter().find(|d| d.path == dir.path) {
            None => refused.push((
                dir.path.clone(),
                "not a configured directory on the peer".into(),
            )),
            Some(info) => match Excludes::new(&dir.path, &info.exclude) {
                Ok(excludes) => shared.push((dir, excludes)),
                Err(e) => refused.push((
                    dir.path.clone(),
                    format!("the peer's excludes are invalid: {e}"),
                )),
            },
        }
    }
    (shared, refused)
}

/// Sends the operations with their contents and records the outcome of each.
async fn push(
    config: &Config,
    peer: &Peer,
    ops: Vec<Op>,
    local: &LocalState,
    limits: &PeerLimits,
    report: &mut PeerReport,
) {
    let label = peer.remote.label.clone();
    // Files the peer would refuse as too large are reported, not sent.
    let (mut ops, oversized): (Vec<Op>, Vec<Op>) = ops.into_iter().partition(|op| {
        !matches!(&op.action, Action::Put { entry: Entry { content: Content::File { size, .. }, .. } } if *size > limits.max_file_size)
    });
    for op in oversized {
        if let Action::Put {
            entry:
                Entry {
                    content: Content::File { size, .. },
                    ..
                },
        } = &op.action
        {
            report.changes.push(Change {
                peer: label.clone(),
                path: op.path.clone(),
                status: ChangeStatus::Skipped(format!(
                    "{size} bytes, over the peer's max_file_size ({} bytes)",
                    limits.max_file_size
                )),
            });
        }
    }
    let mut contents: Contents = Vec::with_capacity(ops.len());
    let mut unreadable: Vec<(usize, String)> = Vec::new();
    let mut sizes: Vec<(usize, u64)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let scanned = match &op.action {
            Action::Put {
                entry:
                    Entry {
                        content: Content::File { sha256, .. },
                        ..
                    },
            } if op.needs_content().is_some() => sha256,
            _ => {
                contents.push(None);
                continue;
            }
        };
        match local.content(config, &op.path, scanned) {
            Ok(bytes) => {
                // The bytes hash to the planned digest; the size that frames them on
                // the wire is theirs by construction.
                sizes.push((i, bytes.len() as u64));
                contents.push(Some(bytes));
            }
            Err(Unsendable::Changed) => {
                report.changed_locally.push(op.path.clone());
                let reason = "changed on this node during the sync; run the sync again";
                unreadable.push((i, reason.to_string()));
                contents.push(None);
            }
            Err(Unsendable::Unreadable(reason)) => {
                unreadable.push((i, reason));
                contents.push(None);
            }
        }
    }
    for (i, size) in sizes {
        if let Action::Put { entry } = &mut ops[i].action {
            if let Content::File { size: framed, .. } = &mut entry.content {
                *framed = size;
            }
        }
    }
    // Drop operations whose content could not be read (and report them).
    let mut batch_ops = Vec::new();
    let mut batch_contents = Vec::new();
    for (i, (op, content)) in ops.into_iter().zip(contents).enumerate() {
        if let Some((_, reason)) = unreadable.iter().find(|(j, _)| *j == i) {
            report.changes.push(Change {
                peer: label.clone(),
                path: op.path,
                status: ChangeStatus::Skipped(reason.clone()),
            });
            continue;
        }
        batch_ops.push(op);
        batch_contents.push(content);
    }

    for (ops, contents) in split_batches(batch_ops, batch_contents, limits) {
        let header = BatchHeader { ops };
        let mut body = vec![Bytes::from(protocol::encode_batch_header(&header))];
        body.extend(contents.into_iter().flatten());
        let bytes: usize = body.iter().map(Bytes::len).sum();
        match peer.apply_chunks(body).await {
            Ok(response) => {
                debug!(operations = header.ops.len(), bytes, "batch sent");
                report.bytes_sent += bytes as u64;
                report
                    .actions
                    .extend(response.actions.into_iter().map(|action| ActionLine {
                        peer: label.clone(),
                        report: action,
                    }));
                for (op, result) in header.ops.iter().zip(response.results) {
                    let status = match result.outcome {
                        Outcome::Applied => ChangeStatus::Done(op.change()),
                        Outcome::Conflict(reason) => {
                            ChangeStatus::Skipped(format!("conflict: {reason}"))
                        }
                        Outcome::Failed(reason) => ChangeStatus::Skipped(reason),
                        Outcome::Kept(reason) => ChangeStatus::Kept(reason),
                        Outcome::Rejected(reason) => ChangeStatus::Rejected(reason),
                    };
                    report.changes.push(Change {
                        peer: label.clone(),
                        path: op.path.clone(),
                        status,
                    });
                }
            }
            Err(e) => {
                report.refused = e.is_refusal();
                report.error = Some(e.to_string());
                return;
            }
        }
    }
}

/// Splits operations into batches that fit the receiver's limits: the body size (the
/// contents plus a generous allowance for each operation's line in the header) and the
/// number of operations. Almost every sync is one batch.
fn split_batches(
    ops: Vec<Op>,
    contents: Contents,
    limits: &PeerLimits,
) -> Vec<(Vec<Op>, Contents)> {
    let budget = limits.max_request_size as usize;
    let most = limits.max_batch_entries.min(OPS_PER_BATCH);
    let mut batches = vec![(Vec::new(), Vec::new())];
    let mut used = BATCH_FRAMING_BYTES;
    for (op, content) in ops.into_iter().zip(contents) {
        let size = content.as_ref().map_or(0, |c| c.len()) + op.path.len() + HEADER_BYTES_PER_OP;
        let current = batches.last_mut().expect("one batch");
        if (used + size > budget || current.0.len() >= most) && !current.0.is_empty() {
            batches.push((Vec::new(), Vec::new()));
            used = BATCH_FRAMING_BYTES;
        }
        used += size;
        let current = batches.last_mut().expect("one batch");
        current.0.push(op);
        current.1.push(content);
    }
    batches
}

/// Whether a remote resolves to the address this node listens on.
async fn resolves_to_self(remote: &Remote, bind: &BindAddress) -> bool {
    let lookup = tokio::net::lookup_host((remote.host.as_str(), remote.port));
    let Ok(Ok(addrs)) = tokio::time::timeout(protocol::CONNECT_TIMEOUT, lookup).await else {
        return false;
    };
    let mut addrs = addrs;
    addrs.any(|addr| {
        addr.port() == bind.port
            && match bind.ip {
                Some(ip) if !ip.is_unspecified() => addr.ip() == ip,
                _ => is_local_address(addr.ip()),
            }
    })
}

/// Whether an address belongs to this host: binding to it succeeds only then.
fn is_local_address(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Loads TLS material and builds an engine for a CLI run (not inside a daemon).
pub async fn engine_for_cli(config: Arc<Config>) -> anyhow::Result<Engine> {
    let tls = TlsMaterial::load(&config)?;
    let self_id = Engine::discover_self_id(&config, &tls).await;
    Engine::new(config, &tls, Arc::new(HashCache::default()), self_id)
        .await
        .context("cannot set up the peers")
}
