//! `gosyncd conflicts` and `gosyncd resolve`: the conflicts held anywhere in the group,
//! with every node's state of each path, and their resolution from any node.
//!
//! A conflict is a change a node's daemon could not deliver because the peer held
//! another version than expected (an edit made there): it is held, not retried, and
//! each daemon's status lists it. [`survey`] asks every node's daemon for them (as
//! `status --group` does) and every node for its state of those paths. [`resolve`]
//! makes the chosen version this node's (fetched from the node named, through the same
//! checks, backup and atomic write as a received batch), pushes it to every peer
//! through the engine with each peer's current state as the precondition, then asks
//! every daemon to compare at once so that what they held clears, and checks it did.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::group::{self, NodeView};
use crate::client::PeerError;
use crate::config::Config;
use crate::manifest::{self, HashCache};
use crate::protocol::{self, Content, Digest256, Entry, HeldKind, ManifestResponse};
use crate::sync::{self, Engine, Options, Report};

/// One daemon's refusal: `node` could not deliver its version to `peer`.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub node: String,
    pub peer: String,
    pub reason: String,
}

/// What one node holds at a path (`None`: nothing), or why it could not be asked.
#[derive(Debug, Clone)]
pub struct NodeState {
    pub node: String,
    pub state: Result<Option<Entry>, String>,
    /// Its daemon holds this path against a peer: the version here is its own edit.
    pub edited_here: bool,
}

/// A path held as a conflict somewhere, and how every node stands there.
#[derive(Debug, Clone)]
pub struct PathConflict {
    pub path: String,
    pub refusals: Vec<Refusal>,
    /// This node first, then the peers in the order of `remotes`.
    pub nodes: Vec<NodeState>,
}

impl PathConflict {
    /// Each distinct version held (see [`same_version`]) with the first node holding
    /// it, in the order of the nodes.
    pub fn versions(&self) -> Vec<(&Option<Entry>, &str)> {
        let mut firsts: Vec<(&Option<Entry>, &str)> = Vec::new();
        for node in &self.nodes {
            if let Ok(entry) = &node.state {
                if !firsts.iter().any(|(e, _)| same_version(e, entry)) {
                    firsts.push((entry, &node.node));
                }
            }
        }
        firsts
    }

    /// The node holding the most recent version (by mtime), and when it was written.
    pub fn newest(&self) -> Option<(&str, i64)> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.state {
                Ok(Some(entry)) => Some((n.node.as_str(), entry.mtime_ns)),
                _ => None,
            })
            .max_by_key(|(_, mtime)| *mtime)
    }
}

/// The conflicts of the group, and the nodes whose daemon could not be asked.
#[derive(Debug, Clone, Default)]
pub struct Survey {
    pub conflicts: Vec<PathConflict>,
    pub unasked: Vec<(String, String)>,
    /// How many nodes were asked (this one included).
    pub nodes: usize,
}

impl Survey {
    /// 0 when no conflict is held anywhere, 1 when one is, 2 when a node could not be
    /// asked (and none was found elsewhere).
    pub fn code(&self) -> u8 {
        match (self.conflicts.is_empty(), self.unasked.is_empty()) {
            (false, _) => 1,
            (true, true) => 0,
            (true, false) => 2,
        }
    }
}

/// The conflicts held by any node's daemon at `within` (or below; empty: anywhere),
/// with every node's state of each path.
pub async fn survey(engine: &Engine, within: &[String]) -> anyhow::Result<Survey> {
    let views = group::views_of(engine).await?;
    let mut refusals: BTreeMap<String, Vec<Refusal>> = BTreeMap::new();
    let mut unasked = Vec::new();
    for view in &views {
        match &view.peers {
            Err(e) => unasked.push((view.node.clone(), e.clone())),
            Ok(peers) => {
                for peer in peers {
                    for held in peer.held.iter().filter(|h| h.outcome == HeldKind::Conflict) {
                        let wanted = within.is_empty()
                            || within
                                .iter()
                                .any(|w| crate::paths::is_within(&held.path, w));
                        if wanted {
                            refusals
                                .entry(held.path.clone())
                                .or_default()
                                .push(Refusal {
                                    node: view.node.clone(),
                                    peer: peer.peer.clone(),
                                    reason: held.reason.clone(),
                                });
                        }
                    }
                }
            }
        }
    }
    let paths: Vec<String> = refusals.keys().cloned().collect();
    let states = states_of(engine, &views, &paths).await;
    let conflicts = refusals
        .into_iter()
        .map(|(path, refusals)| {
            let nodes = states
                .iter()
                .map(|(node, states)| NodeState {
                    node: node.clone(),
                    state: states
                        .as_ref()
                        .map(|s| s.get(&path).cloned())
                        .map_err(Clone::clone),
                    edited_here: refusals.iter().any(|r| &r.node == node),
                })
                .collect();
            PathConflict {
                path,
                refusals,
                nodes,
            }
        })
        .collect();
    Ok(Survey {
        conflicts,
        unasked,
        nodes: views.len(),
    })
}

/// Every node's entries at `paths`: this node's scanned here, the peers' asked of them.
async fn states_of(
    engine: &Engine,
    views: &[NodeView],
    paths: &[String],
) -> Vec<(String, Result<BTreeMap<String, Entry>, String>)> {
    let this_node = views
        .first()
        .map_or_else(|| "this node".to_string(), |v| v.node.clone());
    if paths.is_empty() {
        return Vec::new();
    }
    let config = engine.config().clone();
    let scope = paths.to_vec();
    let local = tokio::task::spawn_blocking(move || {
        let entries = manifest::scan(&config, &scope, &HashCache::forgetful()).entries;
        entries.into_iter().map(|(p, e)| (p.into(), e)).collect()
    })
    .await
    .map_err(|e| format!("cannot scan this node's tree: {e}"));
    let mut out = vec![(this_node, local)];
    for (label, answer) in ask_every_peer(engine, paths).await {
        out.push((
            label,
            answer
                .map(|mut m| m.take_entries())
                .map_err(|e| e.to_string()),
        ));
    }
    out
}

/// Every peer's manifest of `scope`, asked at once; in the order of `remotes`, each with
/// its label.
pub async fn ask_every_peer(
    engine: &Engine,
    scope: &[String],
) -> Vec<(String, Result<ManifestResponse, PeerError>)> {
    futures_util::future::join_all(
        engine
            .peers()
            .iter()
            .map(|link| async move { (link.label().to_string(), link.peer.manifest(scope).await) }),
    )
    .await
}

/// The text of `path` on `node` (`this_node` is read here), for a diff; `Err` says why
/// there is none.
async fn text_on(
    engine: &Engine,
    this_node: &str,
    node: &str,
    path: &str,
) -> Result<String, String> {
    let file = if node == this_node {
        crate::diff::read_text(engine.config(), path, protocol::MAX_DIFF_FILE_BYTES)
    } else {
        let link = peer_named(engine, node)?;
        let answer = link
            .peer
            .contents(&[path.to_string()])
            .await
            .map_err(|e| format!("cannot read it on {node}: {e}"))?;
        answer
            .files
            .into_iter()
            .find(|f| f.path == path)
            .ok_or_else(|| format!("{node} did not answer for it"))?
    };
    match (file.text, file.note) {
        (Some(text), _) => Ok(text),
        (None, Some(note)) if note == "missing" => Ok(String::new()),
        (None, note) => Err(format!(
            "no diff on {node}: {}",
            note.unwrap_or_else(|| "no text".into())
        )),
    }
}

/// The peer of `engine` whose label is `node`.
fn peer_named<'e>(engine: &'e Engine, node: &str) -> Result<&'e sync::PeerLink, String> {
    engine
        .peers()
        .iter()
        .find(|l| l.label() == node)
        .map(|l| &**l)
        .ok_or_else(|| format!("{node} is not a peer of this node"))
}

/// The unified diff of `path` from node `a`'s version to node `b`'s.
pub async fn diff(engine: &Engine, this_node: &str, path: &str, a: &str, b: &str) -> String {
    let (old, new) = tokio::join!(
        text_on(engine, this_node, a, path),
        text_on(engine, this_node, b, path)
    );
    match (old, new) {
        (Ok(old), Ok(new)) if old == new => format!("{a} and {b} hold the same text\n"),
        (Ok(old), Ok(new)) => similar::TextDiff::from_lines(&old, &new)
            .unified_diff()
            .context_radius(3)
            .header(&format!("{a}:{path}"), &format!("{b}:{path}"))
            .to_string(),
        (Err(why), _) | (_, Err(why)) => format!("{why}\n"),
    }
}

/// The pairs `conflicts --diff` shows without nodes named: from the first node's version
/// to each other version (the first node holding it).
pub fn distinct_pairs(conflict: &PathConflict) -> Vec<(String, String)> {
    let firsts = conflict.versions();
    let Some(((_, first), rest)) = firsts.split_first() else {
        return Vec::new();
    };
    rest.iter()
        .map(|(_, other)| (first.to_string(), other.to_string()))
        .collect()
}

/// The node `name` stands for among the nodes of `conflict` (`local` is this node,
/// the first): its label as `remotes` writes it, or its address alone.
pub fn node_named<'a>(nodes: &'a [String], name: &str) -> Result<&'a str, String> {
    if name == "local" {
        return nodes
            .first()
            .map(String::as_str)
            .ok_or_else(|| "no node".into());
    }
    // By its address alone: the host of the label, as `sync --peer` takes it.
    let host = |label: &str| crate::config::parse_remote(label).map(|r| r.host);
    nodes
        .iter()
        .find(|n| n.as_str() == name)
        .or_else(|| nodes.iter().find(|n| host(n).is_ok_and(|h| h == name)))
        .map(String::as_str)
        .ok_or_else(|| {
            format!(
                "{name} is none of the group's nodes ({}); name one as `remotes` writes it, \
                 by its address alone, or `local`",
                nodes.join(", ")
            )
        })
}

/// A version's short name: the kind and the first 12 hex digits of a file's digest.
pub fn short(entry: &Option<Entry>) -> String {
    match entry {
        None => "absent".into(),
        Some(e) => match &e.content {
            Content::File { sha256, .. } => {
                format!("file {}", &sha256.to_string()[..12])
            }
            Content::Dir => "directory".into(),
            Content::Symlink { target } => format!("symlink -> {target}"),
        },
    }
}

/// The listing for people: per path, who refused whom, then a row per node.
pub fn table(survey: &Survey) -> String {
    let mut out = String::new();
    for conflict in &survey.conflicts {
        out.push_str(&format!("{}: conflict\n", conflict.path));
        for r in &conflict.refusals {
            out.push_str(&format!(
                "  {} could not deliver its version to {}: {}\n",
                r.node, r.peer, r.reason
            ));
        }
        let mut rows = vec![
            ["NODE", "VERSION", "SIZE", "MODE", "OWNER", "MTIME", "NOTE"]
                .map(String::from)
                .to_vec(),
        ];
        // The first node holding each version: the others say "same as".
        let firsts = conflict.versions();
        for node in &conflict.nodes {
            let row = match &node.state {
                Err(e) => vec![
                    node.node.clone(),
                    "?".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("not asked: {e}"),
                ],
                Ok(entry) => {
                    let same = firsts
                        .iter()
                        .find(|(e, n)| same_version(e, entry) && *n != node.node)
                        .map(|(_, n)| *n);
                    let mut note = Vec::new();
                    if conflict.nodes.first().is_some_and(|n| n.node == node.node) {
                        note.push("this node".to_string());
                    }
                    if node.edited_here {
                        note.push("edited here".to_string());
                    }
                    if let Some(other) = same {
                        note.push(format!("same as {other}"));
                    }
                    let (size, mode, owner, mtime) = match entry {
                        None => Default::default(),
                        Some(e) => (
                            match &e.content {
                                Content::File { size, .. } => size.to_string(),
                                _ => String::new(),
                            },
                            format!("{:04o}", e.mode),
                            format!("{}:{}", e.uid, e.gid),
                            rfc3339(e.mtime_ns),
                        ),
                    };
                    vec![
                        node.node.clone(),
                        short(entry),
                        size,
                        mode,
                        owner,
                        mtime,
                        note.join(", "),
                    ]
                }
            };
            rows.push(row);
        }
        for line in super::ops::aligned(&rows).lines() {
            out.push_str(&format!("  {}\n", line.trim_end()));
        }
        if let Some((node, mtime)) = conflict.newest() {
            out.push_str(&format!(
                "  newest: {node} ({}); keep one with `gosyncd resolve {} --take NODE`\n",
                rfc3339(mtime),
                conflict.path
            ));
        }
    }
    for (node, why) in &survey.unasked {
        out.push_str(&format!("{node}: not asked: {why}\n"));
    }
    out.push_str(&match survey.code() {
        0 => format!("no conflict held on any of {} nodes\n", survey.nodes),
        1 => format!(
            "{} path(s) in conflict; `gosyncd conflicts --diff A B` shows what differs\n",
            survey.conflicts.len()
        ),
        _ => "no conflict found, but a node could not be asked (above)\n".into(),
    });
    out
}

/// Whether two nodes hold the same version (content and mode; owners and mtime aside).
fn same_version(a: &Option<Entry>, b: &Option<Entry>) -> bool {
    protocol::same_or_absent(a.as_ref(), b.as_ref(), false)
}

pub fn rfc3339(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How long `resolve` waits for every daemon to clear what it held.
const CLEARED_WITHIN: Duration = Duration::from_secs(15);

/// What `resolve` did with one path.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub path: String,
    /// The node whose version was taken.
    pub taken_from: String,
    /// The daemons still holding it against a peer once the wait was over
    /// (`node -> peer`); empty: cleared everywhere.
    pub still_held: Vec<String>,
}

/// `resolve PATH... --take NODE`: the version NODE holds (this node's for `local`)
/// becomes every node's. Returns the push's report and what became of each path.
pub async fn resolve(
    engine: &Engine,
    paths: &[String],
    take: &str,
    on_peer: impl FnMut(&sync::PeerReport),
) -> anyhow::Result<(Report, Vec<Resolved>)> {
    check_paths(engine.config(), paths)?;
    let views = group::views_of(engine).await?;
    let names: Vec<String> = views.iter().map(|v| v.node.clone()).collect();
    let source = node_named(&names, take)
        .map_err(anyhow::Error::msg)?
        .to_string();
    let this_node = names.first().cloned().unwrap_or_default();
    if source != this_node {
        take_from(engine, &source, paths).await?;
    }
    let options = Options {
        scope: paths.to_vec(),
        ..Options::default()
    };
    let report = engine.run(&options, on_peer).await;
    // Every daemon compares now: what it held against a peer that holds its version
    // is forgotten.
    let mut asks = vec![];
    for link in engine.peers() {
        let peer = link.peer.clone();
        asks.push(tokio::spawn(async move { peer.compare().await }));
    }
    if let Some(own) = engine.own_daemon_client() {
        asks.push(tokio::spawn(async move { own.compare().await }));
    }
    for ask in asks {
        let _ = ask.await;
    }
    let started = Instant::now();
    let still = loop {
        let survey = survey(engine, paths).await?;
        if survey.conflicts.is_empty() || started.elapsed() > CLEARED_WITHIN {
            break survey;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let resolved = paths
        .iter()
        .map(|path| Resolved {
            path: path.clone(),
            taken_from: source.clone(),
            still_held: still
                .conflicts
                .iter()
                .filter(|c| crate::paths::is_within(&c.path, path))
                .flat_map(|c| {
                    c.refusals
                        .iter()
                        .map(|r| format!("{} -> {}", r.node, r.peer))
                })
                .collect(),
        })
        .collect();
    Ok((report, resolved))
}

/// Refuses, before anything is asked or written, a path that is not normalised or not
/// one this node synchronises (outside the directories, excluded).
pub fn check_paths(config: &Config, paths: &[String]) -> anyhow::Result<()> {
    for path in paths {
        crate::paths::check_normalized(path).map_err(|e| anyhow!("{path}: {e}"))?;
        crate::tree::confine(config, path).map_err(|e| anyhow!("{path}: {e}"))?;
    }
    Ok(())
}

/// Makes what `node` holds at each of `paths` this node's (see [`fetch_from`]).
async fn take_from(engine: &Engine, node: &str, paths: &[String]) -> anyhow::Result<()> {
    let puts = fetch_from(engine, node, paths).await?;
    put_all(engine, puts, format!("a resolve taking {node}'s version")).await
}

/// A version fetched from a node: its path, its entry (`None`: the node has nothing
/// there) and a file's bytes.
pub type Fetched = (String, Option<Entry>, Option<Vec<u8>>);

/// What `node` holds at each of `paths`: a file's bytes fetched from it (text of at most
/// [`protocol::MAX_DIFF_FILE_BYTES`]: what `/v1/content` serves), checked against the
/// digest it announced. Every version is fetched and checked before anything is
/// written.
pub async fn fetch_from(
    engine: &Engine,
    node: &str,
    paths: &[String],
) -> anyhow::Result<Vec<Fetched>> {
    let link = peer_named(engine, node).map_err(anyhow::Error::msg)?;
    let theirs = link
        .peer
        .manifest(paths)
        .await
        .map_err(|e| anyhow!("cannot ask {node} for its version: {e}"))?
        .take_entries::<String>();
    let files: Vec<String> = paths
        .iter()
        .filter(|p| matches!(theirs.get(*p), Some(e) if matches!(e.content, Content::File { .. })))
        .cloned()
        .collect();
    let texts = if files.is_empty() {
        Vec::new()
    } else {
        link.peer
            .contents(&files)
            .await
            .map_err(|e| anyhow!("cannot read {node}'s version: {e}"))?
            .files
    };
    let mut fetched = Vec::new();
    for path in paths {
        let entry = theirs.get(path).cloned();
        let content = match &entry {
            Some(Entry {
                content: Content::File { sha256, .. },
                ..
            }) => {
                let answer = texts.iter().find(|f| &f.path == path);
                let text = answer.and_then(|f| f.text.clone()).ok_or_else(|| {
                    let note = answer
                        .and_then(|f| f.note.clone())
                        .unwrap_or_else(|| "not answered".into());
                    anyhow!(
                        "{path}: {node}'s version cannot be fetched ({note}: only text files \
                         of at most {} bytes can); run `gosyncd sync {path}` on {node} instead",
                        protocol::MAX_DIFF_FILE_BYTES
                    )
                })?;
                if Digest256::of(text.as_bytes()) != *sha256 {
                    return Err(anyhow!(
                        "{path}: changed on {node} while it was being fetched; run again"
                    ));
                }
                Some(text.into_bytes())
            }
            _ => None,
        };
        fetched.push((path.clone(), entry, content));
    }
    Ok(fetched)
}

/// Puts each fetched version here, in order, through the receiving path (see
/// [`super::ops::put_local`]); `origin` names the cause in the logs and backups.
pub async fn put_all(engine: &Engine, puts: Vec<Fetched>, origin: String) -> anyhow::Result<()> {
    let config: Arc<Config> = engine.config().clone();
    let what = origin.clone();
    tokio::task::spawn_blocking(move || {
        for (path, entry, content) in puts {
            super::ops::put_local(&config, &path, entry, content.as_deref(), &origin)
                .map_err(|why| anyhow!("{path}: not written here ({origin}): {why}"))?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .map_err(|e| anyhow!("{what}: {e}"))?
}
