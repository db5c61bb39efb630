//! The operator's commands besides `sync`: `status` (each peer's reachability, version,
//! drift, and what this node's daemon knows of it) and `backups list|restore`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context};
use serde::Serialize;

use crate::apply;
use crate::backup::{self, Kept};
use crate::config::{Config, Role};
use crate::manifest::{self, HashCache};
use crate::protocol::{self, Action, BatchHeader, Content, Entry, Op, Outcome};
use crate::sync::{self, ChangeStatus, Options};
use crate::tls::TlsMaterial;

/// One peer as `gosyncd status` sees it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerState {
    pub peer: String,
    pub reachable: bool,
    /// Round trip of its status request.
    pub latency_ms: Option<f64>,
    pub version: Option<String>,
    /// Paths that differ from this node (what `sync` would change); `None` when unknown.
    pub drift: Option<usize>,
    /// Changes this node's daemon holds for it (`None`: no daemon answered here).
    pub pending: Option<u64>,
    /// Operations it refused as conflicts, seen by this node's daemon.
    pub conflicts: Option<u64>,
    /// Paths whose change it did not take, held by this node's daemon until they are
    /// edited again (`None`: no daemon answered here).
    pub held: Option<Vec<protocol::HeldPath>>,
    /// When this node's daemon last pushed to it successfully (Unix time).
    pub last_success_unix: Option<u64>,
    pub error: Option<String>,
}

/// What `gosyncd status` says of this node itself.
#[derive(Debug, Clone)]
pub struct NodeState {
    /// The configuration file it was read from.
    pub file: std::path::PathBuf,
    /// The file's `role`.
    pub role: Role,
    /// How many edits made here its daemon did not push because it is receive-only
    /// (`None`: no daemon answered here).
    pub local_edits_not_pushed: Option<u64>,
    /// The first of them.
    pub local_edits: Vec<String>,
}

impl NodeState {
    /// The line `status` prints about this node: on a receive-only node only.
    pub fn line(&self) -> Option<String> {
        if self.role.sends() {
            return None;
        }
        let edits = match self.local_edits_not_pushed {
            None => "local edits not pushed: unknown (no daemon answered here)".to_string(),
            Some(0) => "local edits not pushed: none".to_string(),
            Some(n) => {
                let shown = self.local_edits.join(", ");
                let more = (n as usize).saturating_sub(self.local_edits.len());
                let more = match more {
                    0 => String::new(),
                    more => format!(" and {more} more"),
                };
                format!("local edits not pushed: {n} ({shown}{more})")
            }
        };
        Some(format!(
            "role: {} ({}): this node applies what its peers push and pushes nothing; {edits}",
            self.role,
            self.file.display()
        ))
    }
}

/// Local edits listed in `status`'s line before it says "and N more".
const LOCAL_EDITS_LISTED: usize = 10;

/// Asks every peer, and this node's daemon, how things stand.
pub async fn status(config: Arc<Config>) -> anyhow::Result<(NodeState, Vec<PeerState>)> {
    let tls = TlsMaterial::load(&config)?;
    let engine = sync::engine_for_cli(config.clone()).await?;
    // This node's own daemon, when one answers on the bind address.
    let local = match sync::Engine::own_daemon(&config, &tls) {
        Some(daemon) => daemon.status().await.ok(),
        None => None,
    };

    let mut asks = Vec::new();
    for peer in engine.peers().iter().map(|link| link.peer.clone()) {
        asks.push(tokio::spawn(async move {
            let started = Instant::now();
            let answer = peer.status().await;
            (peer.remote.label.clone(), started.elapsed(), answer)
        }));
    }
    let dry = Options {
        dry_run: true,
        ..Options::default()
    };
    let report = engine.run(&dry, |_| {}).await;

    let mut out = Vec::new();
    for ask in asks {
        let (label, took, answer) = ask.await.context("status task")?;
        let mine = local
            .as_ref()
            .and_then(|s| s.peers.iter().find(|p| p.peer == label));
        // Changes listed count even when a sync would be refused (by the mass-delete
        // guard, say); an error with nothing listed leaves the drift unknown.
        let drift = report.peers.iter().find(|p| p.peer == label).and_then(|p| {
            let differing = p
                .changes
                .iter()
                .filter(|c| !matches!(c.status, ChangeStatus::Kept(_)))
                .count();
            (differing > 0 || p.error.is_none()).then_some(differing)
        });
        let (reachable, version, error) = match answer {
            Ok(status) => (true, Some(status.identity.version), None),
            Err(e) => (false, None, Some(e.to_string())),
        };
        out.push(PeerState {
            latency_ms: reachable.then_some(took.as_secs_f64() * 1000.0),
            reachable,
            version,
            drift,
            pending: local.as_ref().map(|_| mine.map_or(0, |m| m.pending)),
            conflicts: mine.map(|m| m.conflicts),
            held: local
                .as_ref()
                .map(|_| mine.map_or_else(Vec::new, |m| m.held.clone())),
            last_success_unix: mine.and_then(|m| m.last_success_unix),
            error,
            peer: label,
        });
    }
    let node = NodeState {
        file: config.file.clone(),
        role: config.role,
        local_edits_not_pushed: local.as_ref().map(|s| s.local_edits_not_pushed),
        local_edits: local.as_ref().map_or_else(Vec::new, |s| {
            s.local_edits
                .iter()
                .take(LOCAL_EDITS_LISTED)
                .cloned()
                .collect()
        }),
    };
    Ok((node, out))
}

/// The exit code of `status`: 2 when a peer is unreachable, 1 when one has drifted.
pub fn status_code(peers: &[PeerState]) -> u8 {
    if peers.iter().any(|p| !p.reachable) {
        2
    } else if peers.iter().any(|p| p.drift != Some(0)) {
        1
    } else {
        0
    }
}

/// `rows` as columns aligned to their widest cell, two spaces apart.
pub fn aligned<R: AsRef<[String]>>(rows: &[R]) -> String {
    let columns = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.as_ref().get(i))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `status` as a table.
pub fn status_table(peers: &[PeerState]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dash = || "-".to_string();
    let mut rows = vec![[
        "PEER".to_string(),
        "REACHABLE".into(),
        "LATENCY".into(),
        "VERSION".into(),
        "DRIFT".into(),
        "PENDING".into(),
        "CONFLICTS".into(),
        "HELD".into(),
        "LAST PUSH".into(),
    ]];
    for p in peers {
        rows.push([
            p.peer.clone(),
            if p.reachable { "yes" } else { "no" }.into(),
            p.latency_ms.map_or_else(dash, |ms| format!("{ms:.1} ms")),
            p.version.clone().unwrap_or_else(dash),
            p.drift.map_or_else(dash, |d| d.to_string()),
            p.pending.map_or_else(dash, |n| n.to_string()),
            p.conflicts.map_or_else(dash, |n| n.to_string()),
            p.held.as_ref().map_or_else(dash, |h| h.len().to_string()),
            p.last_success_unix.map_or_else(
                || "never".to_string(),
                |at| {
                    let time = chrono::DateTime::from_timestamp(at as i64, 0)
                        .map(|t| {
                            t.with_timezone(&chrono::Local)
                                .format("%Y/%m/%d %H:%M:%S")
                                .to_string()
                        })
                        .unwrap_or_default();
                    format!("{time} ({} s ago)", now.saturating_sub(at))
                },
            ),
        ]);
    }
    let mut out = aligned(&rows);
    for p in peers.iter().filter(|p| p.error.is_some()) {
        out.push_str(&format!(
            "{}: {}\n",
            p.peer,
            p.error.as_deref().unwrap_or_default()
        ));
    }
    for p in peers {
        for held in p.held.iter().flatten() {
            out.push_str(&format!(
                "{}: {} held ({}): {}\n",
                p.peer,
                held.path,
                held.outcome.name(),
                held.reason
            ));
        }
    }
    out
}

/// The directory's backup settings for `path`, or why there are none.
fn backup_of(config: &Config, path: &str) -> anyhow::Result<(String, crate::config::Backup)> {
    let dir = config
        .directory_of(path)
        .ok_or_else(|| anyhow!("{path}: not inside a configured directory"))?;
    let backup = dir.backup.clone().ok_or_else(|| {
        anyhow!(
            "{path}: no backups are kept for {} (see the backup setting)",
            dir.path
        )
    })?;
    Ok((dir.path.clone(), backup))
}

/// Every kept version at or below `path` (everything, when `None`).
pub fn backups_list(config: &Config, path: Option<&str>) -> anyhow::Result<Vec<Kept>> {
    let mut out = Vec::new();
    match path {
        Some(path) => {
            crate::paths::check_normalized(path).map_err(|e| anyhow!(e))?;
            let (_, backup) = backup_of(config, path)?;
            out.extend(backup::list(&backup, path)?);
        }
        None => {
            for dir in &config.directories {
                if let Some(backup) = &dir.backup {
                    out.extend(backup::list(backup, &dir.path)?);
                }
            }
        }
    }
    Ok(out)
}

/// Puts a kept version of `path` back (the newest when `version` is `None`), through
/// the same checks and atomic write as a received sync. The version replaced is backed
/// up in turn. Returns the version restored.
pub fn backups_restore(config: &Config, path: &str, version: Option<&str>) -> anyhow::Result<Kept> {
    crate::paths::check_normalized(path).map_err(|e| anyhow!(e))?;
    let (_, backup) = backup_of(config, path)?;
    let versions: Vec<Kept> = backup::list(&backup, path)?
        .into_iter()
        .filter(|v| v.path == path)
        .collect();
    let chosen = match version {
        Some(name) => versions
            .into_iter()
            .find(|v| v.version == name)
            .ok_or_else(|| {
                anyhow!("{path}: no kept version {name} (see `gosyncd backups list {path}`)")
            })?,
        None => versions
            .into_iter()
            .last()
            .ok_or_else(|| anyhow!("{path}: no kept version"))?,
    };
    let content = match chosen.entry.content {
        Content::File { .. } => Some(backup::content(&backup, &chosen)?),
        _ => None,
    };
    let origin = format!("a restore of backup {}", chosen.version);
    put_local(
        config,
        path,
        Some(chosen.entry.clone()),
        content.as_deref(),
        &origin,
    )
    .map_err(|why| anyhow!("{path}: not restored: {why}"))?;
    Ok(chosen)
}

/// Puts `target` at `path` on this node (`None`: deletes it), `content` being a file's
/// bytes, through the same checks, backup and atomic write as a received batch, against
/// what the path holds now. `origin` names the cause in the logs and backups. The error
/// is why it was not done.
pub fn put_local(
    config: &Config,
    path: &str,
    target: Option<Entry>,
    content: Option<&[u8]>,
    origin: &str,
) -> Result<(), String> {
    let current = manifest::scan(config, &[path.to_string()], &HashCache::forgetful())
        .entries
        .remove(path);
    // Holding it already: nothing to write (nor content to send through).
    let owners = crate::tree::applies_owners();
    if protocol::same_or_absent(current.as_ref(), target.as_ref(), owners) {
        return Ok(());
    }
    let op = Op {
        path: path.into(),
        action: match target {
            Some(entry) => Action::Put { entry },
            None => Action::Delete,
        },
        expect: current.map(Box::new),
    };
    // The same path as a received batch: checked, its content received next to the
    // target, then carried out.
    let header = protocol::encode_batch_header(&BatchHeader::new(vec![op]));
    let body = std::io::Read::chain(header.as_slice(), content.unwrap_or_default());
    let (_, applied) = apply::apply_body(config, owners, body, origin)?;
    let results = applied.commit();
    match &results[0].outcome {
        Outcome::Applied => Ok(()),
        Outcome::Conflict(why)
        | Outcome::Failed(why)
        | Outcome::Refused(why)
        | Outcome::Kept(why)
        | Outcome::Rejected(why) => Err(why.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(role: Role, local_edits_not_pushed: Option<u64>, local_edits: &[&str]) -> NodeState {
        NodeState {
            file: "/etc/gosyncd/config.hcl".into(),
            role,
            local_edits_not_pushed,
            local_edits: local_edits.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn status_names_the_role_of_a_receive_only_node_only_with_its_local_edits() {
        assert_eq!(node(Role::SendReceive, Some(0), &[]).line(), None);
        let line = |n: NodeState| n.line().expect("a line for a receive-only node");
        let head = "role: receive-only (/etc/gosyncd/config.hcl): this node applies what its \
                    peers push and pushes nothing; ";
        assert_eq!(
            line(node(Role::ReceiveOnly, None, &[])),
            format!("{head}local edits not pushed: unknown (no daemon answered here)")
        );
        assert_eq!(
            line(node(Role::ReceiveOnly, Some(0), &[])),
            format!("{head}local edits not pushed: none")
        );
        assert_eq!(
            line(node(Role::ReceiveOnly, Some(12), &["/etc/a", "/etc/b"])),
            format!("{head}local edits not pushed: 12 (/etc/a, /etc/b and 10 more)")
        );
    }
}
