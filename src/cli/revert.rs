//! `gosyncd revert [PATH...]`: this node takes the group's version back wherever its
//! own differs (a local edit on a receive-only node, drift anywhere). The group's version
//! of a path is the one most peers hold (on a tie, the first of them in the order of
//! `remotes`); a peer that cannot be asked, or that lacks the configured directory,
//! has no say. Each version is fetched from a peer that holds it and put here through
//! the receiving path (backup of what it replaces, atomic write); nothing is pushed.

use std::collections::BTreeMap;

use anyhow::anyhow;

use super::conflicts::{ask_every_peer, check_paths, fetch_from, put_all, Fetched};
use crate::manifest::{self, HashCache};
use crate::protocol::Entry;
use crate::sync::Engine;

/// One path taken back, or to be.
#[derive(Debug, Clone)]
pub struct Reverted {
    pub path: String,
    /// What this node held (`None`: nothing).
    pub was: Option<Entry>,
    /// The group's version (`None`: the group has nothing there).
    pub now: Option<Entry>,
    /// The peer it is taken from (the first holding it).
    pub from: String,
}

/// What a revert did (or, dry, would do), and the peers that had no say.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub reverted: Vec<Reverted>,
    /// Peers not asked, with why.
    pub unasked: Vec<(String, String)>,
}

/// Takes the group's version back at `scope` (empty: every configured directory);
/// `dry_run` only says what would change.
pub async fn revert(engine: &Engine, scope: &[String], dry_run: bool) -> anyhow::Result<Outcome> {
    let config = engine.config().clone();
    check_paths(&config, scope)?;
    let scan_scope = scope.to_vec();
    let scan_config = config.clone();
    let local = tokio::task::spawn_blocking(move || {
        manifest::scan(&scan_config, &scan_scope, &HashCache::forgetful())
    })
    .await
    .map_err(|e| anyhow!("cannot scan this node's tree: {e}"))?;
    if let Some((path, why)) = local.unreadable.first() {
        return Err(anyhow!(
            "{path}: cannot be read on this node ({why}); fix its permissions and run again"
        ));
    }
    // Every peer's entries, in the order of `remotes`; `None` for a directory it lacks.
    let mut peers = Vec::new();
    let mut outcome = Outcome::default();
    for (label, answer) in ask_every_peer(engine, scope).await {
        match answer {
            Err(e) => outcome.unasked.push((label, e.to_string())),
            Ok(mut m) => {
                let lacking: Vec<String> = crate::sync::missing_directories(&m);
                let entries = m.take_entries();
                peers.push((label, entries, lacking, m.unreadable));
            }
        }
    }
    if peers.is_empty() {
        return Err(anyhow!(
            "no peer could be asked for the group's version: {}",
            outcome
                .unasked
                .iter()
                .map(|(p, why)| format!("{p}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    let mut paths: std::collections::BTreeSet<&str> =
        local.entries.keys().map(|p| p.as_str()).collect();
    for (_, entries, _, _) in &peers {
        paths.extend(entries.keys().map(String::as_str));
    }
    let owners = crate::tree::applies_owners();
    let same = |a: &Option<Entry>, b: &Option<Entry>| {
        crate::protocol::same_or_absent(a.as_ref(), b.as_ref(), owners)
    };
    let mut plan: Vec<Reverted> = Vec::new();
    for path in paths {
        // Only what this node synchronises.
        if crate::tree::confine(&config, path).is_err() {
            continue;
        }
        // (version, how many peers hold it, the first of them)
        let mut votes: Vec<(Option<Entry>, usize, &str)> = Vec::new();
        for (label, entries, lacking, unreadable) in &peers {
            let no_say = lacking
                .iter()
                .chain(unreadable.iter())
                .any(|d| crate::paths::is_within(path, d));
            if no_say {
                continue;
            }
            let theirs = entries.get(path).cloned();
            match votes.iter_mut().find(|(v, _, _)| same(v, &theirs)) {
                Some(vote) => vote.1 += 1,
                None => votes.push((theirs, 1, label)),
            }
        }
        // The most held; on a tie, the first seen (the order of `remotes`).
        let Some((group, _, from)) = votes
            .iter()
            .enumerate()
            .max_by_key(|(i, (_, n, _))| (*n, std::cmp::Reverse(*i)))
            .map(|(_, v)| v.clone())
        else {
            continue;
        };
        let ours = local.entries.get(path).cloned();
        if !same(&ours, &group) {
            plan.push(Reverted {
                path: path.to_string(),
                was: ours,
                now: group,
                from: from.to_string(),
            });
        }
    }
    // Deletions deepest first, then the rest parents first: each write finds its
    // directory.
    let (mut deletions, mut puts): (Vec<_>, Vec<_>) =
        plan.into_iter().partition(|r| r.now.is_none());
    deletions.sort_by(|a, b| b.path.cmp(&a.path));
    puts.sort_by(|a, b| a.path.cmp(&b.path));
    outcome.reverted = deletions.into_iter().chain(puts).collect();
    if dry_run || outcome.reverted.is_empty() {
        return Ok(outcome);
    }
    let mut by_peer: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in outcome.reverted.iter().filter(|r| r.now.is_some()) {
        by_peer.entry(&r.from).or_default().push(r.path.clone());
    }
    let mut fetched: BTreeMap<String, Fetched> = BTreeMap::new();
    for (peer, paths) in by_peer {
        for f in fetch_from(engine, peer, &paths).await? {
            fetched.insert(f.0.clone(), f);
        }
    }
    let puts: Vec<Fetched> = outcome
        .reverted
        .iter()
        .map(|r| {
            fetched
                .remove(&r.path)
                .unwrap_or_else(|| (r.path.clone(), None, None))
        })
        .collect();
    put_all(engine, puts, "a revert to the group's version".into()).await?;
    Ok(outcome)
}
