//! A directory's conflict policy between real daemons that watch their trees: with
//! `on_conflict = "newest"` the edit modified later wins a conflict everywhere and the
//! one it replaced is kept in the backups of the nodes that held it; with the default
//! the same conflict stays refused on both sides; a deletion never wins one.
//!
//! Conflicts are made with stopped daemons, so that they are certain rather than a
//! race: one node's edit waits for a stopped peer, which is edited meanwhile; each
//! edit is saved with the modification time it should have (written beside the tree,
//! its time set, then renamed into place, so that the watcher sees it whole). Every wait
//! polls a condition with a deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::common::*;
use gosyncd::config::Config;
use gosyncd::group::{GroupNode, GroupSpec, LocalGroup};
use gosyncd::protocol::HeldKind;

/// Longest a restarted node and its peers may take to exchange what waited for them.
const RECOVERY: Duration = Duration::from_secs(15);

const FILE: &str = "/etc/app/shared.conf";
const BASE: &str = "base\n";
const OLDER: &str = "edited on node 0, earlier\n";
const NEWER: &str = "edited on node 1, later\n";

/// Where a node keeps its backups: beside its root, outside the synchronised tree.
fn backups_of(node: &GroupNode) -> PathBuf {
    PathBuf::from(format!("{}-backups", node.config.root.display()))
}

/// Starts `nodes` watching daemons whose `/etc/app` block has `lines` added, each with
/// backups of its own and metrics on an address of its own.
async fn watching_with(nodes: usize, lines: &str) -> LocalGroup {
    let spec = GroupSpec {
        watch: true,
        ..spec(nodes)
    };
    let mut group = LocalGroup::build(&spec)
        .await
        .unwrap_or_else(|e| panic!("group {spec:?} is not built: {e:#}"));
    for node in &mut group.nodes {
        let text = std::fs::read_to_string(&node.config_path).unwrap();
        assert!(text.contains("  exclude = []"), "{text}");
        let text = format!(
            "metrics_address = \"{}:19105\"\nbackup {{\n  directory = \"{}\"\n}}\n{}",
            address(),
            backups_of(node).display(),
            text.replace("  exclude = []", &format!("  exclude = []\n{lines}"))
        );
        std::fs::write(&node.config_path, text).unwrap();
        node.config =
            Arc::new(Config::from_file(&node.config_path).unwrap_or_else(|e| panic!("{e}")));
    }
    group.start_all().await.unwrap();
    group
}

/// Saves `bytes` at `logical` on `node` as an editor that writes a new file and
/// renames it into place would, the file modified at `mtime`.
fn save_at(node: &GroupNode, logical: &str, bytes: &str, mtime: SystemTime) {
    let staged = node.config.root.join("staged");
    std::fs::write(&staged, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .and_then(|f| f.set_modified(mtime))
        .unwrap();
    std::fs::rename(&staged, node.path(logical)).unwrap();
}

/// `seconds` before now.
fn ago(seconds: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(seconds)
}

/// The names in a node's `/etc/app`.
fn names_in(node: &GroupNode) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(node.path("/etc/app"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The versions of `logical` a node keeps in its backups: (content, why).
fn kept(node: &GroupNode, logical: &str) -> Vec<(String, String)> {
    let backup = node.config.directories[0].backup.clone().expect("a backup");
    assert_eq!(backup.directory, backups_of(node));
    gosyncd::backup::list(&backup, logical)
        .unwrap()
        .into_iter()
        .map(|v| {
            let content = gosyncd::backup::content(&backup, &v).unwrap();
            (String::from_utf8_lossy(&content).into_owned(), v.reason)
        })
        .collect()
}

/// What each node holds at `logical` and what it counted, for failure messages.
fn state(group: &LocalGroup, logical: &str) -> String {
    let files: Vec<String> = group
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match std::fs::read(n.path(logical)) {
            Ok(bytes) => format!("node {i}: {:?}", String::from_utf8_lossy(&bytes)),
            Err(e) => format!("node {i}: unreadable ({e})"),
        })
        .collect();
    let peers: Vec<String> = group
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, n)| {
            n.peer_status()
                .unwrap_or_default()
                .into_iter()
                .map(move |p| format!("node {i} for {}: {p:?}", p.peer))
        })
        .collect();
    format!(
        "{}\n{}\n{}",
        files.join(", "),
        describe(group),
        peers.join("\n")
    )
}

/// Whether no running node has anything waiting for a peer or held back from it.
fn nothing_waits_or_is_held(group: &LocalGroup) -> Result<(), String> {
    for (i, node) in group.nodes.iter().enumerate() {
        for peer in node.peer_status().unwrap_or_default() {
            if peer.pending > 0 || !peer.held.is_empty() {
                return Err(format!(
                    "node {i} for {}: pending {}, held {:?}",
                    peer.peer, peer.pending, peer.held
                ));
            }
        }
    }
    Ok(())
}

/// Waits until node `from` knows node `to` holds its versions: nothing waits for `to`
/// nor is held back from it. A node stopped as soon as a file lands, before its answer,
/// would leave the sender unsure of what it holds.
async fn delivered(group: &LocalGroup, from: usize, to: usize) {
    let peer = group.nodes[to].addr.to_string();
    eventually_showing(
        &format!("node {from} done delivering to node {to}"),
        WAIT,
        || {
            group.nodes[from]
                .peer_status()
                .unwrap_or_default()
                .iter()
                .any(|p| p.peer == peer && p.pushes > 0 && p.pending == 0 && p.held.is_empty())
        },
        || state(group, FILE),
    )
    .await;
}

/// Whether node `from` holds its version of [`FILE`] back from node `to` as a conflict.
fn holds_conflict(group: &LocalGroup, from: usize, to: usize) -> bool {
    let peer = group.nodes[to].addr.to_string();
    group.nodes[from]
        .peer_status()
        .unwrap_or_default()
        .iter()
        .filter(|p| p.peer == peer)
        .flat_map(|p| &p.held)
        .any(|h| h.path == FILE && h.outcome == HeldKind::Conflict)
}

/// The same conflict, made for any policy: `base` everywhere, then node 0 saves an
/// older edit while node 1 is stopped (it reaches node 2 and waits for node 1), node 0
/// stops, and node 1, started again, saves a newer edit (it reaches node 2 and waits
/// for node 0). Node 0 is then started again: each of nodes 0 and 1 pushes its edit to
/// the other, planned against `base`.
async fn conflict_between_nodes_0_and_1(group: &mut LocalGroup) {
    write(&group.nodes[0], FILE, BASE);
    eventually_in(group, WAIT, "the base version on every node", || {
        group.nodes.iter().all(|n| holds(n, FILE, BASE))
    })
    .await;
    delivered(group, 0, 1).await;
    delivered(group, 0, 2).await;

    group.stop(1).await;
    save_at(&group.nodes[0], FILE, OLDER, ago(120));
    eventually_in(group, WAIT, "node 0's edit on node 2", || {
        holds(&group.nodes[2], FILE, OLDER)
    })
    .await;
    delivered(group, 0, 2).await;
    group.stop(0).await;

    group.restart(1).await.unwrap();
    save_at(&group.nodes[1], FILE, NEWER, ago(60));
    // Node 2 answers node 1's push: taken under "newest", refused by default.
    let peer = group.nodes[2].addr.to_string();
    eventually_showing(
        "node 1's edit pushed to node 2 and answered",
        WAIT,
        || {
            group.nodes[1]
                .peer_status()
                .unwrap_or_default()
                .iter()
                .any(|p| p.peer == peer && p.pushes > 0 && p.pending == 0)
        },
        || state(group, FILE),
    )
    .await;

    group.restart(0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_newest_the_later_edit_wins_a_conflict_everywhere_and_the_earlier_is_kept_in_backups()
{
    let mut group = watching_with(3, "  on_conflict = \"newest\"").await;
    conflict_between_nodes_0_and_1(&mut group).await;

    // Node 1's later edit everywhere: nodes 0 and 2, which held the earlier one, each
    // replaced it once (counted once its batch is done).
    let resolved = || -> Vec<u64> {
        group
            .nodes
            .iter()
            .map(|n| counters(n).conflicts_resolved_newest)
            .collect()
    };
    eventually_showing(
        "node 1's later edit on every node, settled on nodes 0 and 2",
        RECOVERY,
        || group.nodes.iter().all(|n| holds(n, FILE, NEWER)) && resolved() == [1, 0, 1],
        || state(&group, FILE),
    )
    .await;
    // Node 0's own push to node 1 may come first, and node 1 refuses it as the
    // earlier edit; or node 1's may reach node 0 first, and node 0 then pushes the
    // version it took, which node 1 already holds. Either way node 1 replaced nothing
    // (its count above is 0, and it keeps no backup below).
    for i in [0, 2] {
        let metrics = scrape(group.nodes[i].config.metrics_address.unwrap()).await;
        assert!(
            metrics
                .lines()
                .any(|l| l == "gosyncd_conflicts_resolved_newest_total 1"),
            "node {i}:\n{metrics}"
        );
    }

    // The earlier edit is in the backups of the nodes that held it, and said to have
    // lost a conflict; node 1 replaced nothing.
    for i in [0, 2] {
        let versions = kept(&group.nodes[i], FILE);
        assert!(
            versions
                .iter()
                .any(|(content, why)| content == OLDER && why.contains("in a conflict")),
            "node {i} keeps {versions:?}"
        );
    }
    assert_eq!(kept(&group.nodes[1], FILE), []);
    // No conflict copy inside the configured directory, anywhere.
    for (i, node) in group.nodes.iter().enumerate() {
        assert_eq!(names_in(node), ["shared.conf"], "node {i}");
    }

    // The group ends converged: nothing waits, nothing is held (node 0's refused push
    // included), with no reconcile_interval to wait for.
    eventually_showing(
        "nothing pending or held on any node",
        WAIT,
        || nothing_waits_or_is_held(&group),
        || state(&group, FILE),
    )
    .await;
    holds_for_quiet_period(&group, "node 1's edit stays everywhere", || {
        group.nodes.iter().all(|n| holds(n, FILE, NEWER))
    })
    .await;
    assert_eq!(resolved(), [1, 0, 1], "{}", state(&group, FILE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_the_same_conflict_stays_refused_on_both_sides() {
    // A backup is configured, as for "newest": only the policy differs.
    let mut group = watching_with(3, "").await;
    assert!(group
        .nodes
        .iter()
        .all(|n| n.config.directories[0].on_conflict == gosyncd::config::OnConflict::Refuse));
    conflict_between_nodes_0_and_1(&mut group).await;

    // Each of nodes 0 and 1 refuses the other's edit, and node 2 refuses node 1's.
    eventually_showing(
        "each conflicting push refused",
        RECOVERY,
        || {
            let refused: Vec<u64> = group
                .nodes
                .iter()
                .map(|n| counters(n).conflicts_refused)
                .collect();
            refused.iter().all(|n| *n >= 1)
        },
        || state(&group, FILE),
    )
    .await;
    holds_for_quiet_period(&group, "each node keeps the version it had", || {
        holds(&group.nodes[0], FILE, OLDER)
            && holds(&group.nodes[1], FILE, NEWER)
            && holds(&group.nodes[2], FILE, OLDER)
    })
    .await;
    let state = state(&group, FILE);
    for node in &group.nodes {
        assert_eq!(counters(node).conflicts_resolved_newest, 0, "{state}");
        assert!(
            kept(node, FILE)
                .iter()
                .all(|(_, why)| !why.contains("conflict")),
            "{state}"
        );
    }
    // Both edits are held as conflicts by the nodes that made them.
    for (from, to) in [(0, 1), (1, 0)] {
        assert!(
            holds_conflict(&group, from, to),
            "node {from} does not hold its edit back from node {to}\n{state}"
        );
    }

    // An operator resolves it from node 2, taking node 1's version: every node holds
    // it, the two that held node 0's keep that one in their backups, nothing else
    // appears in the tree, and no daemon holds the conflict any more.
    let resolver = group.nodes[2].config_path.clone();
    let take = group.nodes[1].addr.to_string();
    let run = gosyncd(config_args(&resolver, &["resolve", FILE, "--take", &take])).await;
    let after = self::state(&group, FILE);
    assert_eq!(run.code, Some(0), "{run:#?}\n{after}");
    for (i, node) in group.nodes.iter().enumerate() {
        assert!(holds(node, FILE, NEWER), "node {i}\n{after}");
        assert_eq!(
            names_in(node),
            [FILE.rsplit('/').next().unwrap()],
            "node {i}"
        );
    }
    for i in [0, 2] {
        let versions = kept(&group.nodes[i], FILE);
        assert!(
            versions.iter().any(|(content, _)| content == OLDER),
            "node {i} does not keep the version the resolve replaced: {versions:?}"
        );
    }
    for (from, to) in [(0, 1), (1, 0)] {
        assert!(
            !holds_conflict(&group, from, to),
            "node {from} still holds the conflict with node {to}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_newest_a_deletion_against_a_peers_edit_stays_refused() {
    let mut group = watching_with(2, "  on_conflict = \"newest\"").await;
    write(&group.nodes[0], FILE, BASE);
    eventually_in(&group, WAIT, "the base version on node 1", || {
        holds(&group.nodes[1], FILE, BASE)
    })
    .await;
    delivered(&group, 0, 1).await;

    // Node 0 deletes the file while node 1 is stopped; node 1 is edited meanwhile, its
    // edit modified well after the deletion.
    group.stop(1).await;
    remove(&group.nodes[0], FILE);
    let edited = SystemTime::now() + Duration::from_secs(3600);
    save_at(&group.nodes[1], FILE, NEWER, edited);
    group.restart(1).await.unwrap();

    // Node 0 delivers its deletion once node 1 is back: refused, whatever the times,
    // and held as a conflict by node 0.
    eventually_showing(
        "node 0's deletion refused by node 1 and held",
        RECOVERY,
        || counters(&group.nodes[1]).conflicts_refused >= 1 && holds_conflict(&group, 0, 1),
        || state(&group, FILE),
    )
    .await;
    let state = state(&group, FILE);
    assert!(holds(&group.nodes[1], FILE, NEWER), "{state}");
    assert_eq!(
        counters(&group.nodes[1]).conflicts_resolved_newest,
        0,
        "{state}"
    );
    assert_eq!(kept(&group.nodes[1], FILE), [], "{state}");
}
