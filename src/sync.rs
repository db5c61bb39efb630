//! The diff-and-push engine: scan the local tree, fetch each peer's manifest, plan, then
//! print (dry run) or push. `sync`, `sync -dry`, the demo and the daemon all call
//! [`Engine::run`].
//!
//! Peers are handled concurrently and independently: one slow or dead peer neither
//! delays nor stops the others. Each peer gets one manifest request and, when something
//! changes, one apply request carrying every change with its content (split only when
//! the changes exceed the receiver's body limit).
//!
//! This file holds the [`Engine`]: building it, a run over every peer, and the watcher's
//! pushes. The rest is in child modules: `report` (a run's options and what it reports),
//! `progress` (what a run tells as it goes), `peer` (one peer's part of a run), `beside`
//! (where a peer differs, from the levels of this node's daemon), `own` (that daemon, as
//! a run asks it: over the API beside a command, directly in the daemon), `push`
//! (sending operations in batches) and `self_detect` (a remote that resolves to this
//! node).

mod beside;
mod changes;
mod contents;
mod own;
mod peer;
mod progress;
mod push;
mod report;
mod self_detect;
mod staged;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinSet;
use tracing::{debug, info, info_span, warn, Instrument};

pub use self::changes::Changes;
use self::contents::{RunContents, Sharer};
pub use self::own::{KeptTree, Own};
pub use self::peer::PeerLink;
pub(crate) use self::peer::{
    differing_by_digests, digests_agree, directories_differing, same_tree,
};
use self::peer::{
    directories_deleted, kept_directories, kept_for_excludes, levels_can_tell, levels_differing,
    peer_rules, sync_peer, LocalState, PeerTerms,
};
pub use self::progress::{PeerTally, Progress, ProgressEvent};
use self::push::push;
pub use self::report::{ActionLine, Change, ChangeStatus, Options, PeerReport, Report};
pub(crate) use self::self_detect::resolves_to_self;
pub use self::staged::{Halt, Staged};
use crate::client::{self, Peer};
use crate::config::{Config, Remote};
use crate::hooks;
use crate::manifest::{self, HashCache, Scan};
use crate::paths::{self, is_within, Region};
use crate::plan::Plan;
use crate::protocol::{ManifestResponse, Op};
use crate::tls::TlsMaterial;

/// The engine: this node's config, its peers and its hash cache.
pub struct Engine {
    config: Arc<Config>,
    peers: Vec<Arc<PeerLink>>,
    cache: Arc<HashCache>,
    /// The identity of the daemon of this node, when known: a remote announcing it is
    /// this node under another name.
    self_id: Option<String>,
    /// This node's daemon: for a command, a client for it, whose manifest (from its
    /// hash cache) saves hashing the tree again; in the daemon, what it keeps of its tree.
    own: Option<Own>,
}

impl Engine {
    /// Builds the engine of a daemon, which holds this node's listening address:
    /// remotes that resolve to it are this node, dropped here (logged at debug).
    pub async fn new(
        config: Arc<Config>,
        tls: &TlsMaterial,
        cache: Arc<HashCache>,
        self_id: Option<String>,
    ) -> anyhow::Result<Engine> {
        Engine::build(config, tls, cache, self_id, true).await
    }

    /// [`Engine::new`]; `holds_bind` says whether this process listens on this node's
    /// address (a daemon) or not (a command, which cannot tell this node from another
    /// one sharing the machine by address alone when it listens on every address).
    async fn build(
        config: Arc<Config>,
        tls: &TlsMaterial,
        cache: Arc<HashCache>,
        self_id: Option<String>,
        holds_bind: bool,
    ) -> anyhow::Result<Engine> {
        let http = client::http_client(tls.client_config()?, config.bind_address.source_ip())?
            .with_max_response(config.limits.max_manifest_size);
        let mut itself = Vec::new();
        for remote in &config.remotes {
            itself.push(resolves_to_self(remote, &config.bind_address).await);
        }
        // A command on a node listening on every address cannot tell by address which of
        // several remotes that resolve to this host with its port is this node: others
        // may share the machine (their daemons on addresses of their own). Their identity
        // decides then (a remote that announces this node's identity is skipped). A
        // daemon can tell: holding every address, it is each of them.
        let ambiguous = !holds_bind
            && config.bind_address.ip.is_none_or(|ip| ip.is_unspecified())
            && itself.iter().filter(|&&is| is).count() > 1;
        let mut peers = Vec::new();
        for (remote, is_self) in config.remotes.iter().zip(itself) {
            if is_self && !ambiguous {
                debug!(peer = %remote.label, "skipping remote: it is this node");
                continue;
            }
            peers.push(Arc::new(PeerLink::new(Peer::new(
                remote.clone(),
                http.clone(),
            ))));
        }
        Ok(Engine {
            config,
            peers,
            cache,
            self_id,
            own: None,
        })
    }

    /// The engine of the daemon whose node keeps `kept`: its runs (its comparisons with
    /// its peers) take this node's digests and levels from it, and read this node's tree
    /// only where the levels differ from a peer's.
    pub fn answering_from(mut self, kept: Arc<dyn KeptTree>) -> Engine {
        self.own = Some(Own::Here(kept));
        self
    }

    /// Why this node has no peer to sync with, when every remote is this node itself.
    pub fn no_peer_left(&self) -> Option<String> {
        if !self.peers.is_empty() {
            return None;
        }
        let config = &self.config;
        let remotes: Vec<&str> = config.remotes.iter().map(|r| r.label.as_str()).collect();
        Some(format!(
            "{}: no peer to sync with: every entry of remotes ({}) is this node, which \
             listens on bind_address {}. List the other nodes in remotes; when several \
             nodes share a machine, give each a bind_address with its own IP address",
            config.file.display(),
            remotes.join(", "),
            config.bind_address
        ))
    }

    /// Asks the daemon listening on this node's bind address (through `own`, a client
    /// from [`Engine::own_daemon`]) for its identity, so that a CLI run recognises this
    /// node behind any alias in `remotes`. `None` when no daemon answers (detection by
    /// address still applies).
    async fn discover_self_id(own: &Peer) -> Option<String> {
        match own.identity().await {
            Ok(identity) => Some(identity.node_id),
            Err(e) => {
                debug!(error = %e, "no local daemon identity");
                None
            }
        }
    }

    /// A client for the daemon listening on this node's bind address (the address it
    /// names, or loopback), verifying its chain but not its name (it answers on this
    /// node's own address): to recognise this node, to read its own counters, and to
    /// take this node's manifest from it.
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
        // From the node's own address where it names one: an address of the group,
        // allowed to ask for the manifest.
        let http = client::http_client(
            tls.identity_probe_config().ok()?,
            config.bind_address.source_ip(),
        )
        .ok()?
        .with_max_response(config.limits.max_manifest_size);
        Some(Peer::new(remote, http))
    }

    /// A client for this node's own daemon, when one answered as this node.
    pub fn own_daemon_client(&self) -> Option<Peer> {
        self.own.as_ref().and_then(Own::client).cloned()
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The peers this engine synchronises (the remotes minus this node).
    pub fn peers(&self) -> &[Arc<PeerLink>] {
        &self.peers
    }

    /// Runs one sync (or dry run). `on_peer` is called as each peer finishes, in
    /// completion order, so that output flows while slow peers are still working.
    pub async fn run(&self, options: &Options, mut on_peer: impl FnMut(&PeerReport)) -> Report {
        let span = info_span!("sync", dry_run = options.dry_run);
        async {
            let mut report = Report {
                local_errors: self.scope_errors(&options.scope),
                ..Report::default()
            };
            if !report.local_errors.is_empty() {
                return report;
            }

            let started = std::time::Instant::now();
            let scope = options.scope.clone();
            // A run over whole configured directories (all of them, or those named)
            // asks each peer for its directories' digests first, then for the levels
            // of those that differ, and lists only the levels that differ; a run
            // scoped below a directory asks for the entries in scope at once.
            let whole = scope
                .iter()
                .all(|s| self.config.directories.iter().any(|d| d.path == *s));
            let links: Vec<&Arc<PeerLink>> = self
                .peers
                .iter()
                .filter(|l| {
                    options.peers.is_empty() || options.peers.iter().any(|p| p == l.label())
                })
                .collect();
            let manifests: Vec<_> = links
                .iter()
                .map(|link| {
                    let peer = link.peer.clone();
                    let scope = scope.clone();
                    tokio::spawn(async move {
                        match whole {
                            true => peer.digests().await,
                            false => peer.manifest(&scope).await,
                        }
                    })
                })
                .collect();
            let local = self
                .local_side(whole, &scope, &mut report.local_errors)
                .await;

            let mut tasks = JoinSet::new();
            for (index, (link, manifest)) in links.into_iter().cloned().zip(manifests).enumerate() {
                // Each peer's own hold on this node's side, let go once it has planned:
                // the run keeps none, so the local tree goes once every peer has planned
                // and no plan refers to its entries.
                let local = local.clone();
                let config = self.config.clone();
                let self_id = self.self_id.clone();
                let options = options.clone();
                let span = info_span!("peer", peer = %link.label());
                tasks.spawn(
                    async move {
                        let manifest = manifest.await.expect("manifest task");
                        let report =
                            one_peer(&config, &link, manifest, local, self_id, whole, options)
                                .await;
                        (index, report)
                    }
                    .instrument(span),
                );
            }
            drop(local);
            let mut reports: Vec<(usize, PeerReport)> = Vec::new();
            while let Some(done) = tasks.join_next().await {
                let (index, report) = done.expect("peer task");
                on_peer(&report);
                reports.push((index, report));
            }
            reports.sort_by_key(|(i, _)| *i);
            report.peers = reports.into_iter().map(|(_, r)| r).collect();
            let changes: usize = report.peers.iter().map(|p| p.changes.len()).sum();
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let peers = report.peers.len();
            if report.failed() {
                warn!(peers, changes, elapsed_ms, "sync finished with failures");
            } else {
                info!(peers, changes, elapsed_ms, "sync finished");
            }
            report
        }
        .instrument(span)
        .await
    }
}

impl Engine {
    /// What is wrong with the paths a run is scoped to: each must be normalised and
    /// inside a configured directory.
    fn scope_errors(&self, scope: &[String]) -> Vec<String> {
        let mut errors = Vec::new();
        for path in scope {
            if let Err(e) = paths::check_normalized(path) {
                errors.push(e);
            } else if self.config.directory_of(path).is_none() {
                errors.push(format!("{path}: not inside a configured directory"));
            }
        }
        errors
    }

    /// This node's side of a run: the digests its daemon keeps, when it runs and serves
    /// these very terms, which settle every peer whose digests agree; a full scan (or
    /// its daemon's manifest) for the others, made once when the first of them needs
    /// it. A directory missing here, or whose own `validate` fails, is reported in
    /// `errors` and left alone on the peers.
    async fn local_side(
        &self,
        whole: bool,
        scope: &[String],
        errors: &mut Vec<String>,
    ) -> Arc<LazyLocal> {
        let own_digests = match whole {
            true => self.own_digests().await,
            false => None,
        };
        let (missing, scanned) = match &own_digests {
            Some(ours) => {
                let mut missing = missing_directories(ours);
                missing.retain(|dir| paths::in_scope(dir, scope));
                (missing, None)
            }
            None => {
                let scan = self.local_source().scan(scope).await;
                (scan.missing.clone(), Some(scan))
            }
        };
        for dir in &missing {
            errors.push(format!(
                "directory {dir} is missing on this node: nothing is synchronised for it"
            ));
        }
        // A tree that fails its own validation is not pushed: its directory is left
        // alone on the peers, as an unreadable one is.
        let to_validate: BTreeMap<String, Vec<String>> = self
            .config
            .directories
            .iter()
            .filter(|d| match &scanned {
                Some(scan) => scan.entries.contains_key(d.path.as_str()),
                None => !missing.contains(&d.path) && paths::in_scope(&d.path, scope),
            })
            .map(|d| (d.path.clone(), Vec::new()))
            .collect();
        let mut refused = Vec::new();
        for (dir, why) in
            hooks::validate(&self.config, &to_validate, crate::config::Side::Local).await
        {
            let reason = format!("validation failed on this node: {why}");
            errors.push(format!("refusing to push {dir}: {reason}"));
            refused.push((dir, reason));
        }
        // A refused directory must be left out of every peer's comparison: the digests
        // cannot say so, the scan can.
        let own_digests = own_digests.filter(|_| refused.is_empty());
        let local = Arc::new(LazyLocal {
            digests: own_digests,
            state: tokio::sync::OnceCell::new(),
            source: self.local_source(),
            scope: scope.to_vec(),
            refused,
            listings: std::sync::Mutex::default(),
            contents: RunContents::default(),
        });
        if let Some(scan) = scanned {
            let _ = local.state.set(local.finish(scan));
        }
        local
    }

    fn local_source(&self) -> LocalSource {
        LocalSource {
            config: self.config.clone(),
            cache: self.cache.clone(),
            own: self.own.clone(),
        }
    }

    /// The digests of this node's directories as its daemon keeps them, in the daemon
    /// or when a command runs beside a daemon that serves these very terms; `None`
    /// otherwise.
    async fn own_digests(&self) -> Option<ManifestResponse> {
        let ours = self.own.as_ref()?.digests(&self.config).await?;
        debug!("this node's digests as its daemon keeps them");
        Some(ours)
    }

    /// The directories the peer judges as a whole ([`PeerLink::judged_whole`]), its
    /// terms asked for first if they are unknown, as [`Engine::push_to`] would for a push
    /// of `paths`.
    pub async fn judged_whole<'a>(
        &self,
        link: &PeerLink,
        paths: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<String>, client::PeerError> {
        self.terms(link, paths)
            .await
            .map(|terms| terms.judged_whole())
    }

    /// The peer's terms: as it last announced them, or asked for now, scoped to one of
    /// `paths` in each configured directory they touch (cheap, however many they are).
    async fn terms<'a>(
        &self,
        link: &PeerLink,
        paths: impl Iterator<Item = &'a str>,
    ) -> Result<PeerTerms, client::PeerError> {
        if let Some(terms) = link.terms() {
            return Ok(terms);
        }
        let mut scope: Vec<String> = Vec::new();
        let mut touched: Vec<&str> = Vec::new();
        for path in paths {
            match self.config.directory_of(path) {
                Some(dir) if !touched.contains(&dir.path.as_str()) => {
                    touched.push(&dir.path);
                    scope.push(path.to_string());
                }
                _ => {}
            }
        }
        // An empty scope would list the whole tree: its digests say as much of the terms.
        let manifest = match scope.is_empty() {
            true => link.peer.digests().await?,
            false => link.peer.manifest(&scope).await?,
        };
        let terms = PeerTerms::of(&manifest);
        link.set_terms(Some(terms.clone()));
        Ok(terms)
    }

    /// Pushes operations planned elsewhere (the watcher's, which expect the versions this
    /// peer is known to hold) to one peer, in one request. A file whose content no longer
    /// matches its operation is not sent, and is listed in
    /// [`PeerReport::changed_locally`]. No manifest is fetched once the peer's
    /// directories are known: from save to replicated is one round trip.
    pub async fn push_to(&self, link: &PeerLink, ops: Vec<Op>) -> PeerReport {
        let peer = &link.peer;
        let span = info_span!("peer", peer = %peer.remote.label);
        let mut report = PeerReport {
            peer: peer.remote.label.clone(),
            ..PeerReport::default()
        };
        // The peer's own directories and excludes: remembered from its last manifest,
        // or asked for now.
        let terms = match self
            .terms(link, ops.iter().map(|op| op.path.as_str()))
            .instrument(span.clone())
            .await
        {
            Ok(terms) => terms,
            Err(e) => {
                report.fail(&e);
                return report;
            }
        };
        let (shared, refused) = peer_rules(&self.config, &terms.directories, |dir| {
            ops.iter().any(|op| is_within(&op.path, &dir.path))
        });
        for (path, reason) in refused {
            report.changes.push(Change {
                path: path.into(),
                status: ChangeStatus::Refused(reason.into()),
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
        let ops = Arc::new(Plan::of_ops(ops));
        let dir_deletes: Vec<String> = directories_deleted(ops.ops()).map(str::to_string).collect();
        let ops = push::without_oversized(ops, &terms.limits, &mut report);
        let progress = Progress::default();
        // Each peer's push reads its own files: nothing is kept for the others.
        let contents = Arc::new(Sharer::alone());
        push(
            &self.config,
            peer,
            ops,
            &terms,
            &progress,
            &contents,
            &mut report,
        )
        .instrument(span.clone())
        .await;
        if report.error.is_some() {
            // The peer may have restarted with other directories or limits: ask again
            // before the next push.
            link.set_terms(None);
            return report;
        }
        self.explain_kept_directories(peer, dir_deletes, &mut report)
            .instrument(span)
            .await;
        report
    }

    /// A directory deletion the peer could not carry out because the directory still
    /// holds paths is retried, unless what it holds is excluded on this node: those
    /// paths are not this node's to delete, so the directory is kept for good. The peer
    /// cannot tell (it knows its own excludes, not this node's): its listing of the
    /// directory is asked for here.
    async fn explain_kept_directories(
        &self,
        peer: &Peer,
        deletes: Vec<String>,
        report: &mut PeerReport,
    ) {
        let failed: Vec<String> = deletes
            .into_iter()
            .filter(|path| {
                report
                    .changes
                    .iter()
                    .any(|c| c.path == path.as_str() && matches!(c.status, ChangeStatus::Failed(_)))
            })
            .collect();
        if failed.is_empty() {
            return;
        }
        let Ok(listing) = peer.manifest(&failed).await else {
            return;
        };
        let deleted = failed.iter().map(String::as_str);
        for (dir, excluded) in kept_directories(&self.config, &listing, deleted) {
            report.changes.restate(&dir, &kept_for_excludes(&excluded));
        }
    }
}

/// Where this node's tree is read from: its daemon, or a scan here.
#[derive(Clone)]
struct LocalSource {
    config: Arc<Config>,
    cache: Arc<HashCache>,
    own: Option<Own>,
}

impl LocalSource {
    /// This node's tree within `scope`: from this node's daemon when a command runs
    /// beside one that serves the same directories (its hashes are cached), else
    /// scanned here.
    async fn scan(&self, scope: &[String]) -> Scan {
        if let Some(Own::Daemon { peer, id }) = &self.own {
            if let Some(mut theirs) =
                serving_this_node(&self.config, id, peer.manifest(scope).await)
            {
                debug!("this node's tree as its daemon knows it");
                return Scan {
                    missing: missing_directories(&theirs),
                    entries: theirs.take_entries(),
                    unreadable: Vec::new(),
                };
            }
        }
        let (config, cache, scope) = (self.config.clone(), self.cache.clone(), scope.to_vec());
        tokio::task::spawn_blocking(move || manifest::scan(&config, &scope, &cache))
            .await
            .expect("scan task")
    }
}

/// One peer's part of a run, given its answer to the first request (digests for a run
/// over the whole tree, entries in scope otherwise): a peer whose digests agree with
/// this node's is done at once; otherwise only its differing directories are listed,
/// and compared with this node's tree, read when first needed.
async fn one_peer(
    config: &Arc<Config>,
    link: &PeerLink,
    manifest: Result<ManifestResponse, crate::client::PeerError>,
    claim: Arc<LazyLocal>,
    self_id: Option<String>,
    whole: bool,
    options: Options,
) -> PeerReport {
    let local = &claim;
    if let Ok(m) = &manifest {
        link.set_terms(Some(PeerTerms::of(m)));
    }
    let empty = || PeerReport {
        peer: link.label().to_string(),
        ..PeerReport::default()
    };
    if let (true, Ok(digests)) = (whole, &manifest) {
        if self_id.as_deref() != Some(digests.identity.node_id.as_str()) {
            if let Some(ours) = local.digests.as_ref() {
                if digests_agree(config, ours, digests) {
                    return empty();
                }
                if let Some(narrowed) = local.narrow(config, &link.peer, digests, &options).await {
                    return beside_daemon(config, link, claim, narrowed, self_id, &options).await;
                }
            }
            let local = local.get().await;
            let mut differing = directories_differing(config, local.scan(), digests);
            differing.retain(|dir| paths::in_scope(dir, &options.scope));
            if differing.is_empty() {
                return empty();
            }
            let (whole, shallow) = match options.list_whole {
                true => (differing, Vec::new()),
                false => narrow(config, &link.peer, local.scan(), digests, differing).await,
            };
            let Some(listed) = where_to_list(&whole, &shallow) else {
                return empty();
            };
            let manifest = link.peer.listing(listed).await;
            let local = ToPlan {
                state: local,
                outside: Vec::new(),
                claim,
            };
            return sync_peer(
                config, &link.peer, manifest, local, self_id, &options, listed,
            )
            .await;
        }
    }
    let state = match &manifest {
        Ok(m) if self_id.as_deref() != Some(m.identity.node_id.as_str()) => local.get().await,
        // A peer that failed, or this node itself: reported without reading this node's
        // tree.
        _ => Arc::new(LocalState::new(Scan::default())),
    };
    let listed = Region::scope(&options.scope);
    let local = ToPlan {
        state,
        outside: Vec::new(),
        claim,
    };
    sync_peer(
        config, &link.peer, manifest, local, self_id, &options, listed,
    )
    .await
}

/// What to list where digests differ: the configured directories `whole`, and the
/// directories `shallow` one level deep (logged); `None` when no level differs.
fn where_to_list<'a>(whole: &'a [String], shallow: &'a [String]) -> Option<Region<'a>> {
    if whole.is_empty() && shallow.is_empty() {
        return None;
    }
    debug!(
        ?whole,
        levels = shallow.len(),
        "digests differ: listing where"
    );
    Some(Region {
        scope: whole,
        shallow,
    })
}

/// One peer's part of a run beside this node's daemon, the levels where the trees
/// differ being `narrowed`: those levels are listed by both, and compared. Should this
/// node's daemon not answer, its whole tree is read instead.
async fn beside_daemon(
    config: &Arc<Config>,
    link: &PeerLink,
    claim: Arc<LazyLocal>,
    narrowed: beside::Narrowed,
    self_id: Option<String>,
    options: &Options,
) -> PeerReport {
    let beside::Narrowed {
        whole,
        shallow,
        held,
    } = narrowed;
    let Some(listed) = where_to_list(&whole, &shallow) else {
        return PeerReport {
            peer: link.label().to_string(),
            ..PeerReport::default()
        };
    };
    let (manifest, ours) = tokio::join!(link.peer.listing(listed), claim.listed(listed));
    let (state, outside) = match (ours, &manifest) {
        // Reported without this node's tree.
        (_, Err(_)) => (Arc::new(LocalState::new(Scan::default())), Vec::new()),
        (Some(ours), Ok(theirs)) => {
            // What the peer holds outside what was listed, for the mass-delete guard.
            let outside: Vec<(String, usize)> = held
                .into_iter()
                .map(|(dir, n)| {
                    let listed = theirs
                        .entries
                        .iter()
                        .filter(|w| w.path != dir && is_within(&w.path, &dir))
                        .count();
                    (dir, (n as usize).saturating_sub(listed))
                })
                .collect();
            (ours, outside)
        }
        (None, Ok(_)) => (claim.get().await, Vec::new()),
    };
    let local = ToPlan {
        state,
        outside,
        claim,
    };
    sync_peer(
        config, &link.peer, manifest, local, self_id, options, listed,
    )
    .await
}

/// Where the peer's tree differs from this node's (`scan`) in the configured
/// directories `differing`, whose digests differ: the directories to list whole, and
/// the directories to list one level deep. A directory is listed whole when its levels
/// cannot tell (part of it unreadable on either side, a peer that could not answer
/// them); otherwise only the levels that differ are listed, and a directory only one
/// side has with all below it.
async fn narrow(
    config: &Config,
    peer: &crate::client::Peer,
    scan: &Scan,
    digests: &ManifestResponse,
    differing: Vec<String>,
) -> (Vec<String>, Vec<String>) {
    let (judged, mut whole): (Vec<String>, Vec<String>) = differing
        .into_iter()
        .partition(|dir| levels_can_tell(config, scan, digests, dir));
    if judged.is_empty() {
        return (whole, Vec::new());
    }
    let levels = match peer.levels(&judged).await {
        Ok(levels) => levels,
        Err(e) => {
            debug!(error = %e, "no levels from the peer: listing the directories whole");
            whole.extend(judged);
            return (whole, Vec::new());
        }
    };
    let mut shallow = Vec::new();
    for dir in judged {
        match levels_differing(config, scan, &levels, &dir) {
            Some(apart) => apart.list(&dir, &mut whole, &mut shallow),
            None => whole.push(dir),
        }
    }
    (whole, shallow)
}

/// This node's side of one run: the digests its daemon keeps (when usable), and the
/// full local state, made once, when the first peer whose digests differ needs it.
struct LazyLocal {
    digests: Option<ManifestResponse>,
    /// Made once, when first needed. It goes with this side, which the peers of a run
    /// hold until they have planned (see [`ToPlan`]), and with the last plan that refers
    /// to its entries (see [`Plan`](crate::plan::Plan)).
    state: tokio::sync::OnceCell<Arc<LocalState>>,
    source: LocalSource,
    scope: Vec<String>,
    /// Directories whose own validation failed: left alone, as unreadable ones are.
    refused: Vec<(String, String)>,
    /// What this node's daemon listed, per region listed: peers whose trees differ from
    /// this node's in the same places (an initial sync to empty peers) share one
    /// listing, and plan from one state, rather than a copy each.
    listings: std::sync::Mutex<Vec<(Listed, Arc<OnceListing>)>>,
    /// Contents read by the push to one peer, for the pushes of the same plan to others.
    contents: RunContents,
}

/// A region listed, as [`Region`] but owned: the directories listed whole, and those
/// listed one level deep.
type Listed = (Vec<String>, Vec<String>);

/// This node's entries in a region as its daemon listed them, once; `None` when the
/// daemon could not serve them (the tree is read here then).
type OnceListing = tokio::sync::OnceCell<Option<Arc<LocalState>>>;

impl LazyLocal {
    fn finish(&self, mut scan: Scan) -> Arc<LocalState> {
        scan.unreadable.extend(self.refused.iter().cloned());
        Arc::new(LocalState::new(scan))
    }

    /// Where the peer's tree differs from this node's, by levels, when this node's
    /// daemon keeps its digests (`self.digests`, which differ from the peer's,
    /// `theirs`) and both can answer levels that tell (see [`beside::narrow`]).
    async fn narrow(
        &self,
        config: &Config,
        peer: &Peer,
        theirs: &ManifestResponse,
        options: &Options,
    ) -> Option<beside::Narrowed> {
        let (ours, own) = (self.digests.as_ref()?, self.source.own.as_ref()?);
        // A directory this node's own validation refused is left alone: the whole tree
        // knows which.
        if options.list_whole || !self.refused.is_empty() {
            return None;
        }
        beside::narrow(config, peer, own, ours, theirs, &options.scope).await
    }

    /// This node's entries in `region` as its daemon lists them (or, in the daemon, as
    /// read now), once for all the peers of the run that list that region; `None` when
    /// there is no daemon to ask, or it cannot serve them.
    async fn listed(&self, region: Region<'_>) -> Option<Arc<LocalState>> {
        let own = self.source.own.as_ref()?;
        let once = {
            let mut listings = self.listings.lock().expect("listings lock");
            let found = listings
                .iter()
                .find(|((scope, shallow), _)| scope == region.scope && shallow == region.shallow);
            match found {
                Some((_, once)) => once.clone(),
                None => {
                    let once = Arc::new(OnceListing::new());
                    let key = (region.scope.to_vec(), region.shallow.to_vec());
                    listings.push((key, once.clone()));
                    once
                }
            }
        };
        once.get_or_init(|| async {
            let (config, cache) = (&self.source.config, &self.source.cache);
            let scan = own.listed(config, cache, region).await?;
            debug!("this node's levels that differ, as its daemon knows them");
            Some(Arc::new(LocalState::new(scan)))
        })
        .await
        .clone()
    }

    async fn get(&self) -> Arc<LocalState> {
        self.state
            .get_or_init(|| async { self.finish(self.source.scan(&self.scope).await) })
            .await
            .clone()
    }
}

impl Drop for LazyLocal {
    /// Once every peer has planned, the work of reading and planning this node's tree is
    /// done (and the tree goes, unless plans refer to it): the memory and the code it
    /// took are given back soon after, while the pushes go on (an initial sync of 100,000
    /// files keeps going for seconds).
    fn drop(&mut self) {
        if self.state.initialized() {
            crate::memory::give_back_soon();
        }
    }
}

/// What a peer plans from: this node's state, and the peer's claim on this node's side
/// of the run, which keeps it for the peers still planning. Dropped whole once the peer
/// has planned: the last claim dropped lets the local state go.
struct ToPlan {
    state: Arc<LocalState>,
    /// Where `state` holds only what was listed: how many of the peer's entries lie
    /// outside that, per configured directory (see [`peer::Mine`]).
    outside: Vec<(String, usize)>,
    claim: Arc<LazyLocal>,
}

/// An answer of this node's daemon (identity `id`), when it is usable here: that daemon
/// is still this node's, and serves these very terms ([`same_terms`]). `None`, logged,
/// when the command must read the tree itself.
fn serving_this_node(
    config: &Config,
    id: &str,
    answer: Result<ManifestResponse, client::PeerError>,
) -> Option<ManifestResponse> {
    match answer {
        Ok(ours) if ours.identity.node_id == id && same_terms(config, &ours) => Some(ours),
        Ok(_) => {
            debug!("this node's daemon serves other terms: scanning here");
            None
        }
        Err(e) => {
            debug!(error = %e, "this node's daemon did not answer: scanning here");
            None
        }
    }
}

/// Whether a manifest of this node's daemon is what a scan here would give: the same
/// directories with the same excludes, read with the same rights (owners applied,
/// so root, on both sides), and nothing it could not read (whose reasons it does
/// not tell).
fn same_terms(config: &Config, theirs: &ManifestResponse) -> bool {
    theirs.owners == crate::tree::applies_owners()
        && theirs.unreadable.is_empty()
        && theirs.directories.len() == config.directories.len()
        && config.directories.iter().all(|dir| {
            theirs
                .directories
                .iter()
                .any(|d| d.path == dir.path && d.exclude == dir.excludes.entries)
        })
}

/// The configured directories a manifest says are missing.
pub(crate) fn missing_directories(manifest: &ManifestResponse) -> Vec<String> {
    manifest
        .directories
        .iter()
        .filter(|d| !d.present)
        .map(|d| d.path.clone())
        .collect()
}

/// Loads TLS material and builds an engine for a CLI run (not inside a daemon); a group
/// with no peer left is an error, with the reason.
pub async fn engine_for_cli(config: Arc<Config>) -> anyhow::Result<Engine> {
    let tls = TlsMaterial::load(&config)?;
    // One client (one connection) to this node's daemon, for its identity and then its
    // digests or manifest.
    let own = Engine::own_daemon(&config, &tls);
    let self_id = match &own {
        Some(own) => Engine::discover_self_id(own).await,
        None => None,
    };
    let own = own
        .zip(self_id.clone())
        .map(|(peer, id)| Own::Daemon { peer, id });
    let mut engine = Engine::build(
        config,
        &tls,
        Arc::new(HashCache::forgetful()),
        self_id,
        false,
    )
    .await
    .context("cannot set up the peers")?;
    engine.own = own;
    if let Some(reason) = engine.no_peer_left() {
        anyhow::bail!("{reason}");
    }
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn this_nodes_tree_is_let_go_once_every_peer_of_the_run_has_planned() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Arc::new(crate::testing::config_at(tmp.path(), ""));
        std::fs::create_dir_all(config.local_path("/etc/app")).unwrap();
        std::fs::write(config.local_path("/etc/app/a.conf"), "a").unwrap();
        let local = Arc::new(LazyLocal {
            digests: None,
            state: tokio::sync::OnceCell::new(),
            source: LocalSource {
                config,
                cache: Arc::new(HashCache::forgetful()),
                own: None,
            },
            scope: Vec::new(),
            refused: Vec::new(),
            listings: std::sync::Mutex::default(),
            contents: RunContents::default(),
        });
        // Two peers' claims; the run keeps none.
        let (first, second) = (local.clone(), local);
        let state = first.get().await;
        assert!(state.scan().entries.contains_key("/etc/app/a.conf"));
        assert!(Arc::ptr_eq(&state, &second.get().await), "scanned twice");
        // The peers' own references go as they plan.
        let weak = Arc::downgrade(&state);
        drop(state);
        drop(first);
        assert!(weak.upgrade().is_some(), "let go while a peer still plans");
        drop(second);
        assert!(weak.upgrade().is_none(), "kept after every peer planned");
    }
}
