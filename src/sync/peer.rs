//! One peer's part of a run: the terms it takes (its directories, excludes and limits),
//! the views of both trees restricted to what both sides synchronise, the plan and the
//! mass-delete guard, then a report (dry run) or a push. Also the local scan every peer
//! of a run shares.
//!
//! It handles a single peer and never touches another peer's report; sending is left to
//! `push`.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use tracing::debug;

use super::push::push;
use super::report::Reason;
use super::{Change, ChangeStatus, Options, PeerReport};
use crate::client::{self, Peer};
use crate::config::{Config, Directory, Excludes};
use crate::manifest::Manifest;
use crate::manifest::Scan;
use crate::paths::{in_scope, is_within, overlaps, LogicalPath, Region};
use crate::plan::{deletes_any, outline, planned, plans_as, Outline, Plan, Planned};
use crate::protocol::{Digest256, DirectoryInfo, Entry, ManifestResponse, PeerLimits};

/// One peer as the engine reaches it: its client, and the terms it last announced
/// (remembered so that an automatic push costs one round trip). Shared by the engine and
/// the daemon's record of the peer; nothing here knows what the peer holds.
pub struct PeerLink {
    pub peer: Peer,
    terms: std::sync::Mutex<Option<PeerTerms>>,
}

impl PeerLink {
    pub fn new(peer: Peer) -> PeerLink {
        PeerLink {
            peer,
            terms: std::sync::Mutex::new(None),
        }
    }

    /// The peer as written in `remotes`.
    pub fn label(&self) -> &str {
        &self.peer.remote.label
    }

    /// The directories the peer judges as a whole (it runs `validate` or `on_change` for
    /// what it receives there: see [`DirectoryInfo::together`]), as it last announced
    /// them; `None` while its terms are unknown.
    pub fn judged_whole(&self) -> Option<Vec<String>> {
        self.terms().map(|terms| terms.judged_whole())
    }

    pub(super) fn terms(&self) -> Option<PeerTerms> {
        self.terms.lock().expect("peer terms lock").clone()
    }

    /// Remembers what the peer announced; `None` forgets it (it may have restarted with
    /// other directories or limits).
    pub(super) fn set_terms(&self, terms: Option<PeerTerms>) {
        *self.terms.lock().expect("peer terms lock") = terms;
    }
}

/// What a peer's last manifest said about what it takes: its directories with their
/// excludes, and its limits.
#[derive(Clone, Debug)]
pub(super) struct PeerTerms {
    pub(super) directories: Vec<DirectoryInfo>,
    pub(super) limits: PeerLimits,
}

impl PeerTerms {
    /// The directories where the peer runs `validate` or `on_change` for what it
    /// receives: it judges their changes as a whole.
    pub(super) fn judged_whole(&self) -> Vec<String> {
        self.directories
            .iter()
            .filter(|d| d.together)
            .map(|d| d.path.clone())
            .collect()
    }

    pub(super) fn of(manifest: &ManifestResponse) -> PeerTerms {
        PeerTerms {
            directories: manifest.directories.clone(),
            limits: manifest.limits,
        }
    }
}

/// This node's side as one peer plans from it: the state the peers of a run share, and
/// how many of the peer's entries lie outside what was listed, per configured directory,
/// where the state holds only what was listed (what the mass-delete guard counts there;
/// empty otherwise: this node's entries that lie outside are counted).
#[derive(Clone, Copy)]
struct Mine<'a> {
    state: &'a Arc<LocalState>,
    outside: &'a [(String, usize)],
}

/// The local scan, shared by all peers of a run, and the plans made for them.
pub(super) struct LocalState {
    scan: Scan,
    /// Each plan made so far: peers whose plans are the same (an initial sync to empty
    /// peers) share one, not a copy each. Held weakly: a plan goes once every push of
    /// it is done (and this state with the last one: the plans refer to its entries).
    plans: std::sync::Mutex<Vec<Weak<Plan>>>,
}

impl LocalState {
    pub(super) fn new(scan: Scan) -> LocalState {
        LocalState {
            scan,
            plans: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub(super) fn scan(&self) -> &Scan {
        &self.scan
    }

    /// The plan from `ours` (what the peer takes of this state) to `theirs`
    /// ([`planned`]), shared with any peer of this run for which it is the same plan. It
    /// keeps this state: its operations refer to the entries they put.
    fn plan(
        self: &Arc<Self>,
        ours: impl for<'s> Fn(&'s LocalState) -> Ours<'s>,
        theirs: &View,
        owners: bool,
    ) -> Arc<Plan> {
        // Held while planning: a peer planned alike waits, then shares.
        let mut plans = self.plans.lock().expect("plans lock");
        plans.retain(|plan| plan.strong_count() > 0);
        let made: Vec<Arc<Plan>> = plans.iter().filter_map(Weak::upgrade).collect();
        let mut same = None;
        let plan = Plan::new(self.clone(), |local| {
            let ours = ours(local);
            match made
                .iter()
                .find(|plan| ours.plans_as(theirs, owners, plan.ops()))
            {
                Some(plan) => {
                    same = Some(plan.clone());
                    Vec::new()
                }
                None => ours.plan(theirs, owners),
            }
        });
        if let Some(plan) = same {
            return plan;
        }
        let plan = Arc::new(plan);
        plans.push(Arc::downgrade(&plan));
        plan
    }
}

pub(super) async fn sync_peer(
    config: &Arc<Config>,
    peer: &Peer,
    manifest: Result<ManifestResponse, client::PeerError>,
    local: super::ToPlan,
    self_id: Option<String>,
    options: &Options,
    listed: Region<'_>,
) -> PeerReport {
    let label = peer.remote.label.clone();
    let mut report = PeerReport {
        peer: label.clone(),
        ..PeerReport::default()
    };
    let remote = match manifest {
        Ok(remote) => remote,
        Err(e) => {
            report.fail(&e);
            return report;
        }
    };
    if self_id.as_deref() == Some(remote.identity.node_id.as_str()) {
        debug!("skipping remote: it announces this node's identity");
        report.skipped = Some("it is this node (same identity)".into());
        return report;
    }

    let mine = Mine {
        state: &local.state,
        outside: &local.outside,
    };
    let Some(ops) = plan_for(config, mine, &remote, options, listed, &mut report) else {
        return report;
    };
    // Planned: the peer's listing is not needed any more, nor this node's but for the
    // entries the plan refers to (it keeps this node's state while it lives).
    let terms = PeerTerms::of(&remote);
    let ops = super::push::without_oversized(ops, &terms.limits, &mut report);
    // The pushes given this very plan read each file once between them.
    let contents = Arc::new(local.claim.contents.join(&ops));
    drop((remote, local));
    if options.dry_run && options.diff && !ops.is_empty() {
        report.diffs = crate::diff::diffs(config, peer, ops.ops()).await;
    }
    if options.dry_run || ops.is_empty() {
        report.changes.push_plan(&ops);
        return report;
    }
    push(
        config,
        peer,
        ops,
        &terms,
        &options.progress,
        &contents,
        &mut report,
    )
    .await;
    report
}

/// The plan that makes the peer's tree (`remote`, as far as `listed`) this node's
/// (`local`), less the directories kept for the peer's excludes; each path left alone
/// is reported. `None` when the mass-delete guard refuses it (reported too).
fn plan_for(
    config: &Config,
    local: Mine<'_>,
    remote: &ManifestResponse,
    options: &Options,
    listed: Region<'_>,
    report: &mut PeerReport,
) -> Option<Arc<Plan>> {
    let views = views(config, local, remote, &options.scope, listed);
    for dir in &views.refused {
        report.changes.push(Change {
            path: dir.0.as_str().into(),
            status: ChangeStatus::Refused(dir.1.as_str().into()),
        });
    }
    // Owners count where the peer applies them and this node can read them as they are:
    // a sender not running as root holds its own copies, owned by itself.
    let owners = remote.owners && crate::tree::applies_owners();
    // Where the plan deletes, what the peer keeps and the mass-delete guard are judged
    // from the plan in outline first, so that a plan the guard refuses is never made
    // (an emptied tree beside a peer's 100,000 paths: 17 MB). A plan that deletes
    // nothing has nothing to keep and nothing to guard.
    let mut keeps = Vec::new();
    let ours = (!views.theirs.is_empty()).then(|| views.ours(local.state));
    if let Some(ours) = ours.filter(|ours| ours.deletes_any(&views.theirs)) {
        let mut outline = ours.outline(&views.theirs, owners);
        // A directory on the peer holding paths this node excludes stays: deleting it
        // could only fail, and those paths are not this node's to delete.
        let deleted = outline.iter().filter(|op| op.deletes_directory);
        keeps = kept_directories(config, remote, deleted.map(|op| op.path));
        outline.retain(|op| !keeps.iter().any(|(dir, _)| dir == op.path));
        for (dir, excluded) in &keeps {
            report.changes.push(Change {
                path: dir.as_str().into(),
                status: kept_for_excludes(excluded),
            });
        }
        if !options.force {
            let (theirs, unlisted) = (&views.theirs, &views.unlisted);
            if let Some(refusal) = mass_delete(config, &options.scope, theirs, unlisted, &outline) {
                report.error = Some(refusal);
                report.refused = true;
                let refused: Reason = "not sent: mass-delete guard".into();
                report.changes.extend(outline.iter().map(|op| Change {
                    path: op.logical_path(),
                    status: ChangeStatus::Refused(refused.clone()),
                }));
                return None;
            }
        }
    }
    let mut ops = local
        .state
        .plan(|local| views.ours(local), &views.theirs, owners);
    if !keeps.is_empty() {
        ops = Arc::new(ops.retain(|op| !keeps.iter().any(|(dir, _)| *dir == op.path)));
    }
    Some(ops)
}

/// The directories the operations `ops` delete.
pub(super) fn directories_deleted<'a>(ops: &'a [Planned<'_>]) -> impl Iterator<Item = &'a str> {
    ops.iter()
        .filter(|op| op.deletes_directory())
        .map(|op| op.path.as_str())
}

/// Of the directories `deleted` on the peer, those that hold paths this node excludes,
/// with the first such path of each.
pub(super) fn kept_directories<'a>(
    config: &Config,
    remote: &ManifestResponse,
    deleted: impl Iterator<Item = &'a str>,
) -> Vec<(String, String)> {
    deleted
        .filter_map(|path| {
            let dir = config.directory_of(path)?;
            remote
                .entries
                .iter()
                .find(|w| {
                    w.path != path
                        && is_within(&w.path, path)
                        && dir.excludes.excludes_any_component(&dir.path, &w.path)
                })
                .map(|w| (path.to_string(), w.path.to_string()))
        })
        .collect()
}

/// The status of a directory kept on the peer because it holds `excluded`, a path
/// excluded on this node (see [`kept_directories`]).
pub(super) fn kept_for_excludes(excluded: &str) -> ChangeStatus {
    ChangeStatus::Kept(
        format!("directory kept: it holds paths excluded on this node: {excluded}").into(),
    )
}

/// Deletions below this count never trip the share rule of the mass-delete guard.
pub const MASS_DELETE_MIN: usize = 10;

/// The mass-delete guard: a push that would leave a configured directory empty on the
/// peer (every entry deleted, nothing put), or delete more than `max_delete_share` of its
/// entries (and at least [`MASS_DELETE_MIN`]), most likely comes from an unmounted or
/// emptied directory on this node. A path deleted and put again (a type change) does not
/// count. Only directories the run covers whole are judged; what the peer holds there
/// is what it listed (`theirs`) and, where it listed only the parts that differ, the
/// entries of the parts left unlisted (`unlisted`, which hold this node's). Returns the
/// refusal, naming the directory and the counts.
fn mass_delete(
    config: &Config,
    scope: &[String],
    theirs: &View,
    unlisted: &[(&str, usize)],
    ops: &[Outline<'_>],
) -> Option<String> {
    // A sync scoped below a directory sees only part of it: no share can be judged.
    let whole = |dir: &str| scope.is_empty() || scope.iter().any(|s| is_within(dir, s));
    for dir in config.directories.iter().filter(|d| whole(&d.path)) {
        let held = theirs
            .keys()
            .filter(|p| p.as_str() != dir.path && is_within(p, &dir.path))
            .count()
            + unlisted
                .iter()
                .filter(|(d, _)| *d == dir.path)
                .map(|(_, n)| n)
                .sum::<usize>();
        let in_dir = || ops.iter().filter(|op| is_within(op.path, &dir.path));
        // A plan deletes a path at most once and puts it at most once. Counted, not
        // collected: an initial sync is all puts, an emptied tree all deletions (at
        // 100,000 paths, a set of them took 3 MB).
        let (puts, deletions) = in_dir().fold((0, 0), |(puts, deletions), op| match op.put {
            true => (puts + 1, deletions),
            false => (puts, deletions + 1),
        });
        if held == 0 || deletions == 0 {
            continue;
        }
        // A path deleted and put again changes type; it is not lost. Those are found
        // from the fewer of the two kinds.
        let retyped = match puts {
            0 => 0,
            _ => {
                // The puts when they are fewer, else the deletions.
                let puts_fewer = puts < deletions;
                let paths: std::collections::HashSet<&str> = in_dir()
                    .filter(|op| op.put == puts_fewer)
                    .map(|op| op.path)
                    .collect();
                in_dir()
                    .filter(|op| op.put != puts_fewer && paths.contains(op.path))
                    .count()
            }
        };
        let (deleted, puts) = (deletions - retyped, puts > 0);
        if deleted == 0 {
            continue;
        }
        let share = deleted as f64 / held as f64;
        let emptied = deleted == held && !puts;
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

/// A manifest restricted to part of its paths, borrowing them from it: each peer of a run
/// has its views of the one local scan. Its paths are shared with what is planned from
/// it: a path deleted on the peer is the one read in its listing, not a copy.
type View<'a> = BTreeMap<&'a LogicalPath, &'a Entry>;

/// This node's side: its paths are the scan's, which the operations planned share.
enum Ours<'a> {
    /// All of this node's tree: the scan itself, not a copy of its map (at 100,000
    /// paths, 4 MB less at the peak of a push).
    Whole(&'a Manifest),
    /// The part of it this peer takes.
    Part(View<'a>),
}

impl<'a> Ours<'a> {
    fn plan(&self, theirs: &View, owners: bool) -> Vec<Planned<'a>> {
        match self {
            Ours::Whole(ours) => planned(*ours, theirs, owners),
            Ours::Part(ours) => planned(ours, theirs, owners),
        }
    }

    /// Whether the plan to `theirs` deletes anything: a path of theirs this node lacks,
    /// or holds as another kind (a directory against anything else).
    fn deletes_any(&self, theirs: &View) -> bool {
        match self {
            Ours::Whole(ours) => deletes_any(*ours, theirs),
            Ours::Part(ours) => deletes_any(ours, theirs),
        }
    }

    fn outline<'p>(&'p self, theirs: &'p View, owners: bool) -> Vec<Outline<'p>> {
        match self {
            Ours::Whole(ours) => outline(*ours, theirs, owners),
            Ours::Part(ours) => outline(ours, theirs, owners),
        }
    }

    fn plans_as(&self, theirs: &View, owners: bool, planned: &[Planned<'_>]) -> bool {
        match self {
            Ours::Whole(ours) => plans_as(ours, theirs, owners, planned),
            Ours::Part(ours) => plans_as(ours, theirs, owners, planned),
        }
    }
}

/// The local and remote manifests restricted to what this peer and this node both
/// synchronise, within what the run lists.
struct Views<'a> {
    /// Whether the peer takes every path of this node's state.
    whole: bool,
    theirs: View<'a>,
    /// The configured directories the peer cannot take, with the reason.
    refused: Vec<(String, String)>,
    /// Per configured directory, how many of this node's entries (below it, as the peer
    /// would take them) lie outside what the peer listed.
    unlisted: Vec<(&'a str, usize)>,
    /// The configured directories both sides have, with the peer's excludes.
    shared: Vec<(&'a Directory, Excludes)>,
    /// Paths unreadable on either side: nothing below them is planned.
    unknown: Vec<&'a str>,
    scope: &'a [String],
    listed: Region<'a>,
}

impl<'a> Views<'a> {
    /// Whether `path` lies outside what either side could not read.
    fn known(&self, path: &str) -> bool {
        !self.unknown.iter().any(|u| is_within(path, u))
    }

    /// Whether this peer takes `path`, and if not, the configured directory it is in
    /// when that is why (the peer did not list the part of the tree it is in).
    fn takes(&self, path: &str) -> Result<(), Option<&'a str>> {
        if !self.known(path) || !in_scope(path, self.scope) {
            return Err(None);
        }
        // Each side left out what it excludes: the peer's excludes count only where they
        // are others.
        let Some(&(dir, _)) = self.shared.iter().find(|(dir, theirs)| {
            is_within(path, &dir.path)
                && (dir.excludes.same_as(theirs) || !theirs.excludes_any_component(&dir.path, path))
        }) else {
            return Err(None);
        };
        match self.listed.holds(path) {
            true => Ok(()),
            false => Err(Some(&dir.path)),
        }
    }

    /// This node's side: what the peer takes of `local` (the state these views were
    /// made of).
    fn ours<'s>(&self, local: &'s LocalState) -> Ours<'s> {
        match self.whole {
            true => Ours::Whole(&local.scan.entries),
            // Collected from the sorted entries, so that the map is built at once, its
            // nodes full, rather than grown by inserts.
            false => Ours::Part(
                local
                    .scan
                    .entries
                    .iter()
                    .filter(|(path, _)| self.takes(path).is_ok())
                    .collect(),
            ),
        }
    }
}

/// The [`Views`] of a run over `scope` for which the peer listed `listed` (its answer,
/// `remote`).
fn views<'a>(
    config: &'a Config,
    local: Mine<'a>,
    remote: &'a ManifestResponse,
    scope: &'a [String],
    listed: Region<'a>,
) -> Views<'a> {
    let (shared, refused) = peer_rules(config, &remote.directories, |dir| {
        // Missing here or out of scope: not part of this run.
        local.state.scan.entries.contains_key(dir.path.as_str()) && in_scope(&dir.path, scope)
    });
    let unknown: Vec<&str> = local
        .state
        .scan
        .unreadable
        .iter()
        .map(|(p, _)| p.as_str())
        .chain(remote.unreadable.iter().map(String::as_str))
        .collect();
    let mut views = Views {
        whole: false,
        theirs: View::new(),
        refused,
        unlisted: Vec::new(),
        shared,
        unknown,
        scope,
        listed,
    };
    let mut unlisted: Vec<(&str, usize)> = Vec::new();
    let mut taken = 0;
    for path in local.state.scan.entries.keys() {
        match views.takes(path) {
            Ok(()) => taken += 1,
            Err(Some(dir)) if path != dir => match unlisted.iter_mut().find(|(d, _)| *d == dir) {
                Some((_, n)) => *n += 1,
                None => unlisted.push((dir, 1)),
            },
            Err(_) => {}
        }
    }
    for (dir, n) in local.outside {
        match unlisted.iter_mut().find(|(d, _)| d == dir) {
            Some((_, held)) => *held += n,
            None => unlisted.push((dir, *n)),
        }
    }
    views.whole = taken == local.state.scan.entries.len();
    views.theirs = remote
        .entries
        .iter()
        .filter(|w| {
            views.known(&w.path)
                && views.shared.iter().any(|(dir, _)| {
                    is_within(&w.path, &dir.path)
                        && !dir.excludes.excludes_any_component(&dir.path, &w.path)
                })
        })
        .map(|w| (&w.path, &w.entry))
        .collect();
    views.unlisted = unlisted;
    views
}

/// A peer's rules for the configured directories `wanted` selects: for each directory
/// the peer also has, the peer's excludes; for each it lacks, the reason it is refused.
type PeerRules<'c> = (Vec<(&'c Directory, Excludes)>, Vec<(String, String)>);

pub(super) fn peer_rules<'c>(
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

/// The configured directories (present here) whose digest differs on the peer, or that
/// cannot be judged by digest (the peer lacks it, a subtree unreadable on either side,
/// excludes that do not parse).
pub(crate) fn directories_differing(
    config: &Config,
    scan: &Scan,
    theirs: &ManifestResponse,
) -> Vec<String> {
    config
        .directories
        .iter()
        .filter(|dir| scan.entries.contains_key(dir.path.as_str()))
        .filter(|dir| judge(scan, theirs, dir) != Judged::Same)
        .map(|dir| dir.path.clone())
        .collect()
}

/// Whether configured directory `dir`, whose digest differs on the peer (`theirs`, its
/// digests), can be compared level by level: its digests differ, and nothing kept them
/// from telling (see [`judge`]).
pub(crate) fn levels_can_tell(
    config: &Config,
    scan: &Scan,
    theirs: &ManifestResponse,
    dir: &str,
) -> bool {
    let Some(dir) = config.directories.iter().find(|d| d.path == dir) else {
        return false;
    };
    judge(scan, theirs, dir) == Judged::Differs
}

/// What the digests of configured directory `dir` tell, this node's tree being `scan`
/// and the peer's digests `theirs`.
#[derive(Debug, PartialEq, Eq)]
enum Judged {
    Same,
    Differs,
    /// The peer lacks it, its excludes do not parse, or a part of it is unreadable on
    /// either side.
    CannotTell,
}

fn judge(scan: &Scan, theirs: &ManifestResponse, ours: &Directory) -> Judged {
    let dir = ours.path.as_str();
    let info = theirs.directories.iter().find(|d| d.path == dir);
    let digest = theirs.digests.iter().find(|d| d.path == dir);
    let (Some(info), Some(digest)) = (info, digest) else {
        return Judged::CannotTell;
    };
    let Ok(excludes) = Excludes::new(dir, &info.exclude) else {
        return Judged::CannotTell;
    };
    let unreadable = scan.unreadable.iter().any(|(p, _)| overlaps(p, dir))
        || theirs.unreadable.iter().any(|p| overlaps(p, dir));
    if unreadable {
        return Judged::CannotTell;
    }
    // The scan left out what this node excludes: the peer's excludes count only where
    // they are others.
    let same = ours.excludes.same_as(&excludes);
    let ours = crate::manifest::digest(&scan.entries, dir, theirs.owners, |path| {
        same || !excludes.excludes_any_component(dir, path)
    });
    match ours == digest.sha256 {
        true => Judged::Same,
        false => Judged::Differs,
    }
}

/// The directories of configured directory `dir` whose levels (see
/// [`manifest::level_digests`](crate::manifest::level_digests)) differ between this
/// node's tree (`scan`) and the peer's answer `levels`, in order: listed one level deep,
/// they hold every path where the trees differ. `None` when the answer cannot tell (the
/// directory missing or partly unreadable there, or its excludes invalid): the
/// directory is then listed whole.
pub(crate) fn levels_differing(
    config: &Config,
    scan: &Scan,
    levels: &ManifestResponse,
    dir: &str,
) -> Option<Apart> {
    let ours_dir = config.directories.iter().find(|d| d.path == dir)?;
    let info = levels
        .directories
        .iter()
        .find(|d| d.path == dir && d.present)?;
    let excludes = Excludes::new(dir, &info.exclude).ok()?;
    if levels.unreadable.iter().any(|p| overlaps(p, dir)) {
        return None;
    }
    // Each side left out what it excludes: the other's excludes count only where they
    // are others.
    let same = ours_dir.excludes.same_as(&excludes);
    let ours = crate::manifest::level_digests(&scan.entries, dir, levels.owners, |path| {
        same || !excludes.excludes_any_component(dir, path)
    });
    let theirs: BTreeMap<&str, Digest256> = levels
        .digests
        .iter()
        .filter(|d| {
            is_within(&d.path, dir)
                && (same || !ours_dir.excludes.excludes_any_component(dir, &d.path))
        })
        .map(|d| (d.path.as_str(), d.sha256))
        .collect();
    if !theirs.contains_key(dir) {
        return None;
    }
    Some(levels_apart(&ours, &theirs))
}

/// Where two sides' levels (by directory) differ: what to list so that every path where
/// their trees differ is listed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Apart {
    /// Directories only one side has, to list with all below them: every path there
    /// differs, and the side that lacks the directory lists nothing (a subtree added or
    /// removed would otherwise be as many levels as it has directories).
    pub whole: Vec<String>,
    /// Directories both sides have whose level differs, to list one level deep.
    pub shallow: Vec<String>,
}

impl Apart {
    /// Adds what to list of configured directory `dir` to `whole` and `shallow`: these
    /// places, or past [`LEVELS_LISTED_MAX`] of them, `dir` whole.
    pub(crate) fn list(self, dir: &str, whole: &mut Vec<String>, shallow: &mut Vec<String>) {
        if self.whole.len() + self.shallow.len() > LEVELS_LISTED_MAX {
            whole.push(dir.to_string());
            return;
        }
        whole.extend(self.whole);
        shallow.extend(self.shallow);
    }
}

/// Past this many places to list in a configured directory (differing levels and
/// directories only one side has: an initial sync, a tree rewritten), it is listed
/// whole: each path of both trees is checked against every place listed, which would
/// then cost more than the listing saves.
const LEVELS_LISTED_MAX: usize = 64;

/// Where two sides' levels differ (see [`Apart`]), in order.
pub(super) fn levels_apart<A, B>(
    ours: &BTreeMap<A, Digest256>,
    theirs: &BTreeMap<B, Digest256>,
) -> Apart
where
    A: std::borrow::Borrow<str> + Ord,
    B: std::borrow::Borrow<str> + Ord,
{
    let mut differ: Vec<(&str, bool)> = ours
        .iter()
        .filter_map(|(path, digest)| match theirs.get(path.borrow()) {
            None => Some((path.borrow(), true)),
            Some(other) => (other != digest).then_some((path.borrow(), false)),
        })
        .chain(
            theirs
                .keys()
                .filter(|path| !ours.contains_key((*path).borrow()))
                .map(|path| (path.borrow(), true)),
        )
        .collect();
    // In order, a directory comes before all below it.
    differ.sort_unstable();
    let mut apart = Apart::default();
    for (path, one_sided) in differ {
        if apart.whole.last().is_some_and(|w| is_within(path, w)) {
            continue;
        }
        match one_sided {
            true => apart.whole.push(path.to_string()),
            false => apart.shallow.push(path.to_string()),
        }
    }
    apart
}

/// The digest configured directory `dir` has in answer `m`, if any.
pub(super) fn digest_of(m: &ManifestResponse, dir: &str) -> Option<Digest256> {
    m.digests.iter().find(|d| d.path == dir).map(|d| d.sha256)
}

/// Whether a peer's digests show that it holds exactly this node's tree, from the
/// digests of this node's daemon (`ours`, which serves this node's terms): every
/// directory present here has the same digest there, the peer reads it with the same
/// excludes and the same rights, and both sides could read all of it. `false` when that
/// cannot be told this way: the full comparison ([`directories_differing`]) decides
/// then.
pub(crate) fn digests_agree(
    config: &Config,
    ours: &ManifestResponse,
    theirs: &ManifestResponse,
) -> bool {
    differing_by_digests(config, ours, theirs).is_some_and(|differing| differing.is_empty())
}

/// Whether two peers' digests show that they hold the same tree, read the same way: a
/// comparison with one then finds what a comparison with the other would. They must
/// have the same configured directories present, with the same excludes, a digest for
/// each (the same), the same rights and limits, and nothing unreadable. `false` when
/// that cannot be told this way.
pub(crate) fn same_tree(a: &ManifestResponse, b: &ManifestResponse) -> bool {
    let read_alike = |x: &DirectoryInfo, y: &DirectoryInfo| {
        (&x.path, &x.exclude, x.present) == (&y.path, &y.exclude, y.present)
    };
    let digested = |m: &ManifestResponse| {
        m.directories
            .iter()
            .filter(|d| d.present)
            .all(|d| digest_of(m, &d.path).is_some())
    };
    a.owners == b.owners
        && a.limits == b.limits
        && a.unreadable.is_empty()
        && b.unreadable.is_empty()
        && a.directories.len() == b.directories.len()
        && a.directories
            .iter()
            .zip(&b.directories)
            .all(|(x, y)| read_alike(x, y))
        && digested(a)
        && a.digests == b.digests
}

/// What [`directories_differing`] answers, told from the digests of this node's daemon
/// (`ours`) without reading this node's tree: the configured directories present here
/// whose digest differs on the peer, or that it lacks, or that either side could not
/// read whole. `None` when the digests cannot tell for one of them (the peer reads it
/// with other excludes or other rights, or this node has no digest of it): its tree is
/// compared with the peer's digests then.
pub(crate) fn differing_by_digests(
    config: &Config,
    ours: &ManifestResponse,
    theirs: &ManifestResponse,
) -> Option<Vec<String>> {
    if ours.owners != theirs.owners {
        return None;
    }
    let present = |m: &ManifestResponse, dir: &str| {
        m.directories
            .iter()
            .find(|d| d.path == dir && d.present)
            .map(|d| d.exclude.clone())
    };
    let readable = |m: &ManifestResponse, dir: &str| !m.unreadable.iter().any(|p| overlaps(p, dir));
    let mut differing = Vec::new();
    for dir in config.directories.iter() {
        if present(ours, &dir.path).is_none() {
            continue;
        }
        let digest = digest_of(ours, &dir.path)?;
        let Some(exclude) = present(theirs, &dir.path) else {
            differing.push(dir.path.clone());
            continue;
        };
        if exclude != dir.excludes.entries {
            return None;
        }
        let readable = readable(ours, &dir.path) && readable(theirs, &dir.path);
        if !readable || digest_of(theirs, &dir.path) != Some(digest) {
            differing.push(dir.path.clone());
        }
    }
    Some(differing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Action, Content, Digest256, DirectoryDigest, Identity, Op};
    use crate::testing::file_entry;

    /// A digests answer for `/etc/app` (present, with `exclude`), holding `digest`.
    fn answer(exclude: &[String], digest: Option<&[u8]>, owners: bool) -> ManifestResponse {
        ManifestResponse {
            identity: Identity {
                node_id: "node".into(),
                version: "test".into(),
            },
            owners,
            directories: vec![DirectoryInfo {
                path: "/etc/app".into(),
                exclude: exclude.to_vec(),
                present: true,
                together: false,
            }],
            entries: Vec::new(),
            unreadable: Vec::new(),
            limits: PeerLimits::default(),
            digests: digest
                .map(|bytes| DirectoryDigest {
                    path: "/etc/app".into(),
                    sha256: Digest256::of(bytes),
                    entries: None,
                })
                .into_iter()
                .collect(),
            receiving: false,
        }
    }

    #[test]
    fn the_mass_delete_guard_counts_deletions_but_not_type_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::testing::config_at(tmp.path(), "");
        let held: Vec<(LogicalPath, Entry)> = (0..20)
            .map(|i| (format!("/etc/app/f{i:02}").into(), file_entry(b"x")))
            .collect();
        let theirs: View = held.iter().map(|(p, e)| (p, e)).collect();
        let delete = |path: &str| Op {
            path: path.into(),
            action: Action::Delete,
            expect: Some(Box::new(file_entry(b"x"))),
        };
        let put = |path: &str| Op {
            path: path.into(),
            action: Action::Put {
                entry: Entry {
                    content: Content::Dir,
                    ..file_entry(b"")
                },
            },
            expect: None,
        };
        let guard = |ops: &[Op]| {
            let plan = Plan::of_ops(ops.to_vec());
            let outline: Vec<Outline> = plan.ops().iter().map(Outline::from).collect();
            mass_delete(&config, &[], &theirs, &[], &outline)
        };
        // Every entry deleted, nothing put: the directory would be emptied.
        let all: Vec<Op> = held.iter().map(|(p, _)| delete(p)).collect();
        let refused = guard(&all).expect("emptied");
        assert!(refused.contains("refusing to delete 20 of the 20 entries of /etc/app"));
        // The same deletions, each path put again as a directory: nothing is lost.
        let retyped: Vec<Op> = all
            .iter()
            .cloned()
            .chain(held.iter().map(|(p, _)| put(p)))
            .collect();
        assert_eq!(guard(&retyped), None);
        // Eleven of twenty deleted (more than half), nine of them put again: two count.
        let some: Vec<Op> = all[..11]
            .iter()
            .cloned()
            .chain(held[..9].iter().map(|(p, _)| put(p)))
            .collect();
        assert_eq!(guard(&some), None);
        // Eleven deleted for good, with other paths put: over the share.
        let over: Vec<Op> = all[..11]
            .iter()
            .cloned()
            .chain([put("/etc/app/new")])
            .collect();
        let refused = guard(&over).expect("over the share");
        assert!(
            refused.contains("refusing to delete 11 of the 20 entries"),
            "{refused}"
        );
        // The same with more paths put than deleted: counted from the other side.
        let new: Vec<Op> = (0..15).map(|i| put(&format!("/etc/app/new{i}"))).collect();
        let over_with_more_puts: Vec<Op> = all[..11].iter().cloned().chain(new.clone()).collect();
        let refused = guard(&over_with_more_puts).expect("over the share");
        assert!(
            refused.contains("refusing to delete 11 of the 20 entries"),
            "{refused}"
        );
        let retyped_with_more_puts: Vec<Op> = some.iter().cloned().chain(new).collect();
        assert_eq!(guard(&retyped_with_more_puts), None);
    }

    #[test]
    fn levels_list_a_subtree_one_side_lacks_whole_and_the_levels_both_have_one_deep() {
        let levels = |pairs: &[(&str, &[u8])]| -> BTreeMap<String, Digest256> {
            pairs
                .iter()
                .map(|(path, bytes)| (path.to_string(), Digest256::of(bytes)))
                .collect()
        };
        // /d/a and all below it only here, /d/c and all below it only there; /d and /d/b
        // differ; /d/same does not.
        let ours = levels(&[
            ("/d", b"1"),
            ("/d/a", b"a"),
            ("/d/a/x", b"ax"),
            ("/d/a/x/y", b"axy"),
            ("/d/b", b"b1"),
            ("/d/same", b"s"),
        ]);
        let theirs = levels(&[
            ("/d", b"2"),
            ("/d/b", b"b2"),
            ("/d/b/new", b"bn"),
            ("/d/c", b"c"),
            ("/d/c/z", b"cz"),
            ("/d/same", b"s"),
        ]);
        let apart = levels_apart(&ours, &theirs);
        assert_eq!(apart.whole, ["/d/a", "/d/b/new", "/d/c"]);
        assert_eq!(apart.shallow, ["/d", "/d/b"]);
        // The same, seen from the other side.
        assert_eq!(levels_apart(&theirs, &ours), apart);
        // Every path where the trees differ is listed.
        let listed = Region {
            scope: &apart.whole,
            shallow: &apart.shallow,
        };
        for path in [
            "/d/a/x/y/f",
            "/d/a/x/g",
            "/d/c/z/h",
            "/d/b/new/i",
            "/d/b/j",
            "/d/k",
        ] {
            assert!(listed.holds(path), "{path} listed");
        }
        assert!(
            !listed.holds("/d/same/l"),
            "a level both hold alike is not listed"
        );
        // Nothing differs: nothing to list.
        assert_eq!(levels_apart(&ours, &ours), Apart::default());
    }

    #[test]
    fn peers_with_the_same_plan_share_it_while_it_is_held() {
        let dir = |mtime_ns: i64| Entry {
            content: Content::Dir,
            mode: 0o755,
            mtime_ns,
            ..crate::testing::file_entry(b"")
        };
        let (top, a, b) = (dir(0), file_entry(b"a"), file_entry(b"b"));
        let scan = Scan {
            entries: [("/etc/app", &top), ("/etc/app/x", &a), ("/etc/app/y", &b)]
                .into_iter()
                .map(|(path, entry)| (LogicalPath::from(path), entry.clone()))
                .collect(),
            ..Scan::default()
        };
        let local = Arc::new(LocalState::new(scan));
        fn whole(local: &LocalState) -> Ours<'_> {
            Ours::Whole(&local.scan.entries)
        }
        // Two empty peers whose configured directories were made at other times: the
        // same plan.
        let (top1, top2) = (dir(1), dir(2));
        let [app, x, y, gone] =
            ["/etc/app", "/etc/app/x", "/etc/app/y", "/etc/app/gone"].map(LogicalPath::from);
        let empty1: View = [(&app, &top1)].into_iter().collect();
        let empty2: View = [(&app, &top2)].into_iter().collect();
        let first = local.plan(whole, &empty1, true);
        assert_eq!(first.len(), 2);
        // Its operations refer to this node's paths and entries, not copies of them.
        for (op, (path, entry)) in first.ops().iter().zip(local.scan.entries.iter().skip(1)) {
            assert_eq!(op.path, *path);
            assert!(
                std::ptr::eq(op.path.as_ptr(), path.as_ptr()),
                "{path} copied"
            );
            assert!(
                std::ptr::eq(op.put.unwrap(), entry),
                "{path}'s entry copied"
            );
        }
        assert!(Arc::ptr_eq(&first, &local.plan(whole, &empty2, true)));
        // A peer holding part of it, or planned against another version: its own.
        let part: View = [(&app, &top1), (&x, &a)].into_iter().collect();
        let other = local.plan(whole, &part, true);
        assert_eq!(other.len(), 1);
        let older = Entry {
            mode: 0o600,
            ..b.clone()
        };
        let holding: View = [(&app, &top1), (&y, &older)].into_iter().collect();
        let against = local.plan(whole, &holding, true);
        assert_eq!(against.len(), 2);
        assert!(!Arc::ptr_eq(&first, &against));
        assert_eq!(against.ops()[1].expect.as_deref(), Some(&older));
        // A path deleted on the peer is the one its listing holds, not a copy.
        let more: View = [(&app, &top1), (&gone, &older)].into_iter().collect();
        let deleting = local.plan(whole, &more, true);
        let deleted = deleting.ops().iter().find(|op| op.put.is_none()).unwrap();
        assert_eq!(deleted.path, gone);
        assert!(std::ptr::eq(deleted.path.as_ptr(), gone.as_ptr()), "copied");
        // Once no push holds it, it is gone; the state goes with the last plan.
        let weak = Arc::downgrade(&first);
        drop(first);
        assert!(weak.upgrade().is_none());
        assert!(Arc::ptr_eq(&other, &local.plan(whole, &part, true)));
        let state = Arc::downgrade(&local);
        drop((local, other, against, deleting));
        assert!(state.upgrade().is_none(), "a plan gone keeps no state");
    }

    #[test]
    fn digests_settle_a_peer_only_when_they_can_tell_it_holds_this_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::testing::config_at(tmp.path(), "");
        let ours_excludes = config.directories[0].excludes.entries.clone();
        let ours = answer(&ours_excludes, Some(b"tree"), true);
        assert!(digests_agree(
            &config,
            &ours,
            &answer(&ours_excludes, Some(b"tree"), true)
        ));

        // Another tree there.
        let other = answer(&ours_excludes, Some(b"other"), true);
        assert!(!digests_agree(&config, &ours, &other));
        // The same digest, computed with other excludes or other rights: it cannot tell.
        let mut excluding = ours_excludes.clone();
        excluding.push("*.txt".into());
        assert!(!digests_agree(
            &config,
            &ours,
            &answer(&excluding, Some(b"tree"), true)
        ));
        assert!(!digests_agree(
            &config,
            &ours,
            &answer(&ours_excludes, Some(b"tree"), false)
        ));
        // Part of it unreadable there, or the directory missing there.
        let mut unreadable = answer(&ours_excludes, Some(b"tree"), true);
        unreadable.unreadable.push("/etc/app/secret".into());
        assert!(!digests_agree(&config, &ours, &unreadable));
        assert!(
            !digests_agree(&config, &unreadable, &ours),
            "unreadable here"
        );
        let mut missing = answer(&ours_excludes, None, true);
        missing.directories[0].present = false;
        assert!(!digests_agree(&config, &ours, &missing));

        // What differs, told without the tree where the digests can tell.
        let differing = |theirs: &ManifestResponse| differing_by_digests(&config, &ours, theirs);
        assert_eq!(differing(&ours), Some(Vec::new()));
        assert_eq!(differing(&other), Some(vec!["/etc/app".to_string()]));
        assert_eq!(differing(&missing), Some(vec!["/etc/app".to_string()]));
        assert_eq!(differing(&unreadable), Some(vec!["/etc/app".to_string()]));
        assert_eq!(
            differing(&answer(&excluding, Some(b"tree"), true)),
            None,
            "read with other excludes: the tree must be compared"
        );
        assert_eq!(
            differing(&answer(&ours_excludes, Some(b"tree"), false)),
            None
        );
        let no_digest_here = answer(&ours_excludes, None, true);
        assert_eq!(differing_by_digests(&config, &no_digest_here, &ours), None);

        // A directory missing here is not compared (the run reports it as missing).
        let mut gone_here = answer(&ours_excludes, None, true);
        gone_here.directories[0].present = false;
        assert!(digests_agree(&config, &gone_here, &other));
        assert_eq!(
            differing_by_digests(&config, &gone_here, &other),
            Some(Vec::new())
        );
    }

    #[test]
    fn peers_hold_the_same_tree_only_when_their_digests_tell_it_alike() {
        let tree = answer(&[], Some(b"tree"), true);
        assert!(same_tree(&tree, &answer(&[], Some(b"tree"), true)));

        let mut unlike = vec![
            ("another tree", answer(&[], Some(b"other"), true)),
            (
                "other excludes",
                answer(&["*.txt".into()], Some(b"tree"), true),
            ),
            ("other rights", answer(&[], Some(b"tree"), false)),
            ("no digest", answer(&[], None, true)),
        ];
        let mut unreadable = answer(&[], Some(b"tree"), true);
        unreadable.unreadable.push("/etc/app/secret".into());
        unlike.push(("part unreadable", unreadable));
        let mut missing = answer(&[], Some(b"tree"), true);
        missing.directories[0].present = false;
        unlike.push(("the directory missing", missing));
        let mut limited = answer(&[], Some(b"tree"), true);
        limited.limits.max_file_size /= 2;
        unlike.push(("other limits", limited));
        let mut more = answer(&[], Some(b"tree"), true);
        more.directories.push(DirectoryInfo {
            path: "/etc/more".into(),
            exclude: Vec::new(),
            present: false,
            together: false,
        });
        unlike.push(("another directory configured", more));
        for (why, other) in &unlike {
            assert!(!same_tree(&tree, other), "{why}");
            assert!(!same_tree(other, &tree), "{why}, the other way");
        }
        // Two peers lacking the directory alike hold the same (nothing).
        let mut gone = answer(&[], None, true);
        gone.directories[0].present = false;
        let mut gone_too = answer(&[], None, true);
        gone_too.directories[0].present = false;
        assert!(same_tree(&gone, &gone_too));
    }
}
