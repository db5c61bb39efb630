//! Anti-entropy: at start-up, every `reconcile_interval`, and once after a peer comes
//! back, the daemon compares its trees with each peer's and sorts every difference:
//! a path waiting in that peer's outbox is delivered now, a held one stays held (and is
//! shown as such), and the rest is drift, reported (a warning naming the paths, once per
//! change of the drift set; the `drift_paths` gauge; `status`), never pushed. Nothing is
//! pushed that nobody edited: start-up never overwrites the group with a stale tree.
//!
//! On a receive-only node every difference is drift (its outboxes stay empty), its own
//! edits included: the warning says how to take the group's version back, and each pass
//! forgets the local edits not pushed that no longer differ from any peer it judged.
//!
//! Each pass asks every peer for a digest of each configured directory (a few bytes
//! while the trees agree) and compares the directories whose digests differ through
//! the engine's dry run (the same planner as `sync -dry`); it neither plans nor sends
//! anything itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::config::{Config, Role};
use crate::manifest;
use crate::paths::{is_within, LogicalPath};
use crate::protocol::ManifestResponse;

use crate::node::{LocalEdits, Node, Outbox, PeerRecord, DRIFT_PATHS_LISTED};
use crate::sync::{
    differing_by_digests, digests_agree, directories_differing, missing_directories, same_tree,
    ChangeStatus, Engine, Options, PeerReport, Report,
};

/// Paths named in a drift warning before it says "and N more".
const DRIFT_PATHS_SHOWN: usize = 10;

/// How long a comparison waits after the last batch this node received; a node says it
/// is receiving (in its digests) for as long after a batch.
pub(crate) const QUIET_AFTER_RECEIVING: Duration = Duration::from_secs(2);
/// Passes in a row that leave a peer unjudged because it or this node was receiving a
/// push, each followed by another after [`QUIET_AFTER_RECEIVING`]; the last one judges
/// whatever it finds.
const DEFERRED_PASSES_MOST: u32 = 3;

/// Compares with every peer now, then every `reconcile_interval` or when a peer comes
/// back, until the task is aborted.
pub async fn reconcile(engine: Arc<Engine>, node: Arc<Node>) {
    let interval = engine.config().reconcile_interval;
    let mut first = true;
    // Passes in a row that left a peer to judge once a push ends.
    let mut deferred = 0;
    loop {
        after_pushes(&node, interval).await;
        let waiting = pass(&engine, &node, first, deferred < DEFERRED_PASSES_MOST).await;
        first = false;
        if waiting {
            deferred += 1;
            tokio::select! {
                _ = tokio::time::sleep(QUIET_AFTER_RECEIVING) => {}
                _ = node.reconcile_now.notified() => {}
            }
            continue;
        }
        deferred = 0;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = node.reconcile_now.notified() => {}
        }
    }
}

/// Waits while peers push to this node (see [`Node::until_quiet`]), for at most
/// `longest`: pushes that never pause still leave room for a comparison.
async fn after_pushes(node: &Node, longest: Duration) {
    let deadline = tokio::time::Instant::now() + longest;
    while let Some(wait) = node.until_quiet(QUIET_AFTER_RECEIVING) {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return;
        }
        debug!(
            wait_ms = wait.as_millis() as u64,
            "receiving a push: comparing after it"
        );
        tokio::time::sleep(wait.min(deadline - now)).await;
    }
}

/// One comparison with every peer: digests first, and a full comparison (the engine's
/// dry run) only of the directories whose digests differ, with the peers they differ
/// on. A peer whose digests differ while it or this node is receiving a push is judged
/// by a later pass, if `may_wait`: a push under way makes differences that last until
/// it ends (one node has a batch, another not yet), and comparing them costs a listing
/// of the whole directory. Returns whether a peer was left for a later pass.
async fn pass(engine: &Engine, node: &Arc<Node>, first: bool, may_wait: bool) -> bool {
    let config = engine.config().clone();
    // Local edits noted from here on are newer than what this pass sees.
    let mark = node.local_edits.mark();
    // The local edits found to differ from a peer judged by this pass, all peers
    // together, and whether any peer was judged.
    let mut differs: BTreeSet<LogicalPath> = BTreeSet::new();
    let mut judged = false;
    let records = node.records();
    // Holds learnt from here on are newer than what this pass sees: never forgotten by it.
    let marks: Vec<u64> = records.iter().map(|r| r.outbox.mark()).collect();
    let asks: Vec<_> = engine
        .peers()
        .iter()
        .map(|link| {
            let peer = link.peer.clone();
            tokio::spawn(async move { (peer.remote.label.clone(), peer.digests().await) })
        })
        .collect();
    // This node's digests as its peers get them (kept while its tree does not change):
    // they settle every peer that agrees. The tree is scanned only for a peer they
    // cannot settle, once.
    let serving = node.clone();
    let ours = tokio::task::spawn_blocking(move || serving.whole_tree_digests())
        .await
        .expect("digests task");
    let mut scan: Option<manifest::Scan> = None;
    let record_of = |label: &str| {
        let i = records.iter().position(|r| r.label() == label)?;
        Some((&records[i], marks[i]))
    };
    let mut differing: BTreeSet<String> = BTreeSet::new();
    // The peers whose digests differ, to compare path by path: peers whose digests show
    // the same tree once between them.
    let mut compare: Vec<Alike> = Vec::new();
    let mut waiting = false;
    for ask in asks {
        let (label, answer) = ask.await.expect("digest task");
        let (record, mark) = record_of(&label).unzip();
        if let Some(record) = record {
            record.set_up(answer.is_ok());
        }
        match answer {
            Err(e) => {
                if let (Some(record), false) = (record, e.is_refusal()) {
                    record.set_unreachable(true);
                }
                if first {
                    warn!(peer = %label, "cannot compare with peer: {e}");
                }
            }
            // A remote that is this node under another name.
            Ok(theirs) if theirs.identity.node_id == node.identity.node_id => {}
            // Judged later, before anything is scanned or listed for it.
            Ok(theirs)
                if may_wait
                    && (theirs.receiving || node.until_quiet(QUIET_AFTER_RECEIVING).is_some())
                    && !digests_agree(&config, &ours, &theirs) =>
            {
                debug!(peer = %label, "digests differ while a push is under way: comparing after it");
                waiting = true;
            }
            Ok(theirs) => {
                let (dirs, present, none_missing) =
                    compare_with(&config, node, &ours, &theirs, &mut scan).await;
                // Nothing is held against the peer where it holds this node's tree.
                let equal: Vec<String> = present
                    .into_iter()
                    .filter(|d| !dirs.iter().any(|x| x == d))
                    .collect();
                if let (Some(record), Some(mark)) = (record, mark) {
                    record.outbox.forget_held_before(mark, |path| {
                        equal.iter().any(|dir| is_within(path, dir))
                    });
                }
                if dirs.is_empty() {
                    // A directory missing here cannot be judged: no verdict rather than a
                    // false "no drift".
                    if let (Some(record), true) = (record, none_missing) {
                        report_drift(record, &Drift::default(), config.role);
                        judged = true;
                    }
                } else {
                    debug!(peer = %label, directories = ?dirs, "digests differ: comparing");
                    differing.extend(dirs);
                    match compare.iter_mut().find(|a| same_tree(&a.digests, &theirs)) {
                        Some(alike) => alike.others.push(label),
                        None => compare.push(Alike {
                            label,
                            digests: theirs,
                            others: Vec::new(),
                        }),
                    }
                }
            }
        }
    }
    // The comparison path by path reads the tree again, as far as the peers differ: the
    // whole scan is not held beside it (at 100,000 paths, 15 MB).
    drop(scan);
    if !differing.is_empty() {
        for drift in compare_paths(engine, node, &compare, differing, first).await {
            differs.extend(drift.edited_here);
            judged = true;
        }
    }
    if judged {
        node.local_edits.settle(mark, |path| differs.contains(path));
    }
    // The peers' answers are freed now.
    crate::memory::give_back_soon();
    waiting
}

/// Peers whose digests differ from this node's and show the same tree between them
/// (see [`same_tree`]): compared path by path once, with the first of them, and judged
/// alike. A group where one node drifted is the common case: that node lists one peer's
/// tree, not each one's (at 100,000 paths, 8 MB and a second's work each).
struct Alike {
    label: String,
    digests: ManifestResponse,
    others: Vec<String>,
}

impl Alike {
    fn labels(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.label.as_str()).chain(self.others.iter().map(String::as_str))
    }
}

/// Compares the directories `differing` path by path with the peers `compare` (the
/// engine's dry run, with the first peer of each set alike), and records each one's
/// drift; returns the drift of each peer it could judge.
async fn compare_paths(
    engine: &Engine,
    node: &Node,
    compare: &[Alike],
    differing: BTreeSet<String>,
    first: bool,
) -> Vec<Drift> {
    // Only the peers whose digests differ, one of each set alike: the others would list
    // the same directories for nothing.
    for alike in compare.iter().filter(|a| !a.others.is_empty()) {
        debug!(
            peer = %alike.label,
            alike = ?alike.others,
            "comparing once for the peers whose digests show the same tree"
        );
    }
    let options = Options {
        dry_run: true,
        scope: differing.into_iter().collect(),
        peers: compare.iter().map(|a| a.label.clone()).collect(),
        ..Options::default()
    };
    // What waits for each peer now: delivered while the comparison runs, it would look
    // like drift when the comparison ends.
    // And the holds learnt so far: one learnt while it runs is newer than what it shows.
    let records = node.records();
    let before: BTreeMap<String, Before> = records
        .iter()
        .map(|r| {
            let before = Before {
                waiting: r
                    .outbox
                    .snapshot()
                    .into_keys()
                    .map(|p| p.to_string())
                    .collect(),
                mark: r.outbox.mark(),
            };
            (r.label().to_string(), before)
        })
        .collect();
    let report = engine.run(&options, |_| {}).await;
    settle(
        &report,
        node,
        compare,
        &before,
        &options.scope,
        engine.config().role,
        first,
    )
}

/// What a comparison found to differ from a peer that nobody is delivering: how many
/// paths, the first of them in path order (what is logged and shown), and those of
/// them this node keeps as its own edits. Not the whole set of paths: three sets of
/// 100,000 (three peers lacking a tree) took 9 MB at the height of a comparison.
#[derive(Default)]
struct Drift {
    count: usize,
    /// Paths shared with the comparison's plan.
    first: Vec<LogicalPath>,
    edited_here: Vec<LogicalPath>,
}

impl Drift {
    fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A peer's outbox as a comparison began.
#[derive(Default)]
struct Before {
    /// The paths waiting for it.
    waiting: BTreeSet<String>,
    /// Where the holds learnt ended ([`Outbox::mark`]).
    mark: u64,
}

/// The configured directories where a peer's digests `theirs` differ from this node's
/// tree, those present here, and whether none is missing here, from this node's digests
/// `ours` where they tell; otherwise the tree is scanned (once a pass: kept in `scan`)
/// and compared directory by directory.
async fn compare_with(
    config: &Arc<Config>,
    node: &Node,
    ours: &ManifestResponse,
    theirs: &ManifestResponse,
    scan: &mut Option<manifest::Scan>,
) -> (Vec<String>, Vec<String>, bool) {
    // Where the digests tell, the tree is not read (at 100,000 paths, 14 MB and a
    // second of a scan before the dry run scans it again).
    if let Some(dirs) = differing_by_digests(config, ours, theirs) {
        let present = ours
            .directories
            .iter()
            .filter(|d| d.present)
            .map(|d| d.path.clone())
            .collect();
        return (dirs, present, missing_directories(ours).is_empty());
    }
    let scan = match scan {
        Some(scan) => scan,
        None => {
            let (config, cache) = (config.clone(), node.cache.clone());
            let scanned = tokio::task::spawn_blocking(move || manifest::scan(&config, &[], &cache))
                .await
                .expect("scan task");
            scan.insert(scanned)
        }
    };
    let dirs = directories_differing(config, scan, theirs);
    let present = config
        .directories
        .iter()
        .map(|d| d.path.clone())
        .filter(|d| scan.entries.contains_key(d.as_str()))
        .collect();
    (dirs, present, scan.missing.is_empty())
}

/// Takes the dry run's verdict for each peer `compared` by path, and for the peers
/// alike with it: what waits in each one's outbox is delivered, and the rest is its
/// drift (`before`: what waited for each peer before the comparison began, which is not
/// drift if it was delivered meanwhile, and where its holds learnt ended). Returns the
/// drift of each peer judged.
fn settle(
    report: &Report,
    node: &Node,
    compared: &[Alike],
    before: &BTreeMap<String, Before>,
    scope: &[String],
    role: Role,
    first: bool,
) -> Vec<Drift> {
    let mut verdicts = Vec::new();
    let records = node.records();
    let record_of = |label: &str| records.iter().find(|r| r.label() == label);
    let none = Before::default();
    for peer in &report.peers {
        let Some(alike) = compared.iter().find(|a| a.label == peer.peer) else {
            continue;
        };
        if peer.skipped.is_some() {
            continue;
        }
        let guarded = peer.refused && !peer.changes.is_empty();
        match (&peer.error, guarded) {
            (Some(e), false) => {
                // The peers alike are judged by the next pass.
                warn!(peer = %peer.peer, alike = ?alike.others, "cannot compare with peer: {e}");
                continue;
            }
            (Some(e), true) => {
                // The mass-delete guard: this node's tree looks emptied next to the peer's.
                if first {
                    for label in alike.labels() {
                        warn!(peer = %label, "drift, and {e}");
                    }
                }
            }
            (None, _) => {}
        }
        for label in alike.labels() {
            let Some(record) = record_of(label) else {
                continue;
            };
            let before = before.get(label).unwrap_or(&none);
            let drift = sort(peer, &record.outbox, scope, before, &node.local_edits);
            report_drift(record, &drift, role);
            verdicts.push(drift);
        }
    }
    verdicts
}

/// Records a peer's drift, and logs it when it changed, with what to do: on a
/// receive-only node, which never pushes, the group's version is taken back here.
fn report_drift(record: &PeerRecord, drift: &Drift, role: Role) {
    let peer = record.label();
    record.set_unreachable(false);
    if !record.set_drift(drift.count, &drift.first) {
        return;
    }
    if drift.is_empty() {
        info!(%peer, "no drift with this peer");
        return;
    }
    let shown: Vec<&str> = drift
        .first
        .iter()
        .take(DRIFT_PATHS_SHOWN)
        .map(LogicalPath::as_str)
        .collect();
    let shown = shown.join(", ");
    let more = drift.count.saturating_sub(DRIFT_PATHS_SHOWN);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    if role.sends() {
        warn!(
            %peer,
            paths = drift.count,
            "drift: {shown}{more} differ from this node; nothing was pushed. \
             Run `gosyncd sync` on the node whose files are authoritative",
        );
    } else {
        warn!(
            %peer,
            paths = drift.count,
            "drift: {shown}{more} differ from this node; nothing was pushed: this node is \
             receive-only. Run `gosyncd revert PATH` here to take the group's version back, \
             or `gosyncd sync` on the node whose files are authoritative",
        );
    }
}

/// Sorts one peer's differences in the directories `compared`: paths waiting in its
/// outbox are delivered now (woken), held ones stay held (those no longer differing are
/// forgotten: the peer holds this node's version now, unless the hold is newer than the
/// comparison); returns the rest, the drift.
fn sort(
    peer: &PeerReport,
    outbox: &Outbox,
    compared: &[String],
    before: &Before,
    local_edits: &LocalEdits,
) -> Drift {
    // The held paths that still differ: the others in the directories compared are
    // forgotten. Held paths are few; the differences can be 100,000 (a peer lacking a
    // tree), so no second set of them is made for this.
    let held = outbox.held();
    let still: BTreeSet<&str> = match held.is_empty() {
        true => BTreeSet::new(),
        false => {
            let held: BTreeSet<&str> = held.iter().map(|(path, _)| path.as_str()).collect();
            peer.changes
                .iter()
                .filter_map(|c| held.get(c.path.as_str()).copied())
                .collect()
        }
    };
    outbox.forget_held_before(before.mark, |path| {
        compared.iter().any(|dir| is_within(path, dir)) && !still.contains(path)
    });
    drop(still);
    let known = outbox.snapshot();
    let mut waiting = false;
    let mut drift = Vec::with_capacity(peer.changes.len());
    drift.extend(
        peer.changes
            .iter()
            // What a sync would change, or would refuse to (the mass-delete guard, a
            // directory the peer lacks); a directory kept for the peer's excludes is not
            // a difference.
            .filter(|c| !matches!(c.status, ChangeStatus::Kept(_)))
            .filter(|c| match known.get(c.path.as_str()) {
                Some(k) => {
                    waiting |= k.held.is_none();
                    false
                }
                None => !before.waiting.contains(c.path.as_str()),
            })
            .map(|c| c.path),
    );
    if waiting {
        outbox.contact();
    }
    drift.sort_unstable();
    drift.dedup();
    // Only a receive-only node keeps edits of its own.
    let edited_here = match local_edits.is_empty() {
        true => Vec::new(),
        false => drift
            .iter()
            .filter(|p| local_edits.contains(p))
            .cloned()
            .collect(),
    };
    Drift {
        count: drift.len(),
        // Copied out: collected from `drift` itself, the first paths would keep its
        // buffer (at 100,000 paths, 1.6 MB per peer until the pass ends).
        first: drift.iter().take(DRIFT_PATHS_LISTED).cloned().collect(),
        edited_here,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Held;
    use crate::protocol::Op;
    use crate::sync::{Change, PeerReport};
    use crate::testing::{file_entry, put};

    /// An outbox holding `path` as rejected by its peer, which kept v1.
    fn rejected(outbox: &Outbox, path: &str) {
        let op = Op {
            expect: Some(Box::new(file_entry(b"v1"))),
            ..put(path, b"v2")
        };
        outbox.merge(&[op], |_| None);
        let sent: BTreeMap<LogicalPath, Option<crate::protocol::Entry>> = outbox
            .take()
            .into_iter()
            .map(|(path, known)| (path, known.holds))
            .collect();
        let report = PeerReport {
            changes: vec![Change {
                path: path.into(),
                status: ChangeStatus::Rejected("validation failed".into()),
            }]
            .into(),
            peer_holds: vec![(path.into(), Some(file_entry(b"v1")))],
            ..PeerReport::default()
        };
        outbox.settle(sent, &report);
    }

    #[test]
    fn a_comparison_that_settles_after_a_rejection_leaves_the_path_held() {
        let outbox = Outbox::default();
        let before = Before {
            waiting: BTreeSet::new(),
            mark: outbox.mark(),
        };
        // The comparison's dry run saw the trees equal (before the broken save); the
        // peer rejected the save while it ran.
        rejected(&outbox, "/etc/app/app.cfg");
        let equal = PeerReport {
            peer: "p".into(),
            ..PeerReport::default()
        };
        let edits = LocalEdits::default();
        let drift = sort(&equal, &outbox, &["/etc/app".into()], &before, &edits);
        assert!(drift.is_empty());
        let held = outbox.held();
        assert_eq!(held.len(), 1, "the rejection was forgotten: {held:?}");
        assert!(matches!(held[0].1, Held::Rejected(_)));
        // The next edit is planned against the version the peer kept.
        assert_eq!(
            outbox.snapshot()["/etc/app/app.cfg"].holds,
            Some(file_entry(b"v1"))
        );

        // A comparison begun after the rejection that finds the trees equal forgets it:
        // the peer holds this node's version now.
        let after = Before {
            waiting: BTreeSet::new(),
            mark: outbox.mark(),
        };
        sort(&equal, &outbox, &["/etc/app".into()], &after, &edits);
        assert!(outbox.held().is_empty());
    }

    #[test]
    fn a_comparison_forgets_the_holds_that_no_longer_differ_and_keeps_the_others() {
        let outbox = Outbox::default();
        for path in ["/etc/app/a.cfg", "/etc/app/b.cfg", "/etc/other/c.cfg"] {
            rejected(&outbox, path);
        }
        let after = Before {
            waiting: BTreeSet::new(),
            mark: outbox.mark(),
        };
        // Of the held paths, only b.cfg still differs, beside a path never held; c.cfg
        // lies outside what was compared.
        let changes = ["/etc/app/b.cfg", "/etc/app/new.cfg"].map(|path| Change {
            path: path.into(),
            status: ChangeStatus::Done(crate::protocol::ChangeKind::Added),
        });
        let report = PeerReport {
            peer: "p".into(),
            changes: changes.to_vec().into(),
            ..PeerReport::default()
        };
        let drift = sort(
            &report,
            &outbox,
            &["/etc/app".into()],
            &after,
            &LocalEdits::default(),
        );
        let held: Vec<String> = outbox.held().into_iter().map(|(path, _)| path).collect();
        assert_eq!(held, ["/etc/app/b.cfg", "/etc/other/c.cfg"]);
        // A held path is not drift: it is shown as held.
        assert_eq!(drift.count, 1);
        assert_eq!(drift.first, [LogicalPath::from("/etc/app/new.cfg")]);
    }

    #[test]
    fn a_large_drift_keeps_its_first_paths_not_the_buffer_of_every_path() {
        let changes: Vec<Change> = (0..5000)
            .map(|i| Change {
                path: format!("/etc/app/f{i:05}").into(),
                status: ChangeStatus::Done(crate::protocol::ChangeKind::Added),
            })
            .collect();
        let report = PeerReport {
            peer: "p".into(),
            changes: changes.into(),
            ..PeerReport::default()
        };
        let drift = sort(
            &report,
            &Outbox::default(),
            &["/etc/app".into()],
            &Before::default(),
            &LocalEdits::default(),
        );
        assert_eq!(drift.count, 5000);
        assert_eq!(drift.first.len(), DRIFT_PATHS_LISTED);
        assert_eq!(drift.first[0], LogicalPath::from("/etc/app/f00000"));
        assert!(
            drift.first.capacity() <= DRIFT_PATHS_LISTED,
            "the first paths hold room for {}",
            drift.first.capacity()
        );
    }
}
