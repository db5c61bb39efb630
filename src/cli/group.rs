//! `status --group`: every node's view of every other, asked of each node's daemon, as
//! a matrix whose rows are the nodes asked and whose columns are the peers they see.
//! The group is converged when every node answered and sees every peer converged
//! ([`PeerStatus::converged`]).

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::protocol::PeerStatus;
use crate::sync;
use crate::tls::TlsMaterial;

/// One node's answer: how it sees each of its peers, or why it could not be asked.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The node, as `remotes` names it.
    pub node: String,
    pub peers: Result<Vec<PeerStatus>, String>,
}

/// Asks this node's daemon and every peer's for its view of its peers; this node first,
/// then the peers in the order of `remotes`.
pub async fn views(config: Arc<Config>) -> anyhow::Result<Vec<NodeView>> {
    let engine = sync::engine_for_cli(config).await?;
    views_of(&engine).await
}

/// [`views`], with the peers of `engine`.
pub async fn views_of(engine: &sync::Engine) -> anyhow::Result<Vec<NodeView>> {
    let config = engine.config();
    let tls = TlsMaterial::load(config)?;
    let own = sync::Engine::own_daemon(config, &tls);
    let own_label = own.as_ref().map(|p| p.remote.label.clone());
    let own = tokio::spawn(async move {
        match own {
            Some(daemon) => Some(daemon.status().await),
            None => None,
        }
    });
    let asks: Vec<_> = engine
        .peers()
        .iter()
        .map(|link| {
            let peer = link.peer.clone();
            tokio::spawn(async move { (peer.remote.label.clone(), peer.status().await) })
        })
        .collect();
    let own = own.await.context("status task")?;
    let own_id = own
        .as_ref()
        .and_then(|a| a.as_ref().ok())
        .map(|s| s.identity.node_id.clone());
    let mut views = Vec::new();
    let mut own_name = None;
    for ask in asks {
        let (label, answer) = ask.await.context("status task")?;
        match answer {
            // A remote that is this node: its row is this node's own.
            Ok(status) if Some(&status.identity.node_id) == own_id.as_ref() => {
                own_name = Some(label);
            }
            Ok(status) => views.push(NodeView {
                node: label,
                peers: Ok(status.peers),
            }),
            Err(e) => views.push(NodeView {
                node: label,
                peers: Err(e.to_string()),
            }),
        }
    }
    let node = own_name.or(own_label).unwrap_or_else(|| "this node".into());
    let mine = match own {
        Some(Ok(status)) => Ok(status.peers),
        Some(Err(e)) => Err(format!("this node's daemon does not answer: {e}")),
        None => Err("no daemon runs on this node's bind_address".into()),
    };
    views.insert(0, NodeView { node, peers: mine });
    Ok(views)
}

/// The exit code: 0 when every node answered and sees every peer converged, 2 when a
/// node could not be asked, 1 otherwise.
pub fn code(views: &[NodeView]) -> u8 {
    if views.iter().any(|v| v.peers.is_err()) {
        2
    } else if views
        .iter()
        .flat_map(|v| v.peers.iter().flatten())
        .all(PeerStatus::converged)
    {
        0
    } else {
        1
    }
}

/// The matrix, then a line per node that could not be asked, then the verdict.
pub fn table(views: &[NodeView]) -> String {
    // Columns: every node asked, then any other peer a node sees.
    let mut columns: Vec<&str> = views.iter().map(|v| v.node.as_str()).collect();
    for peer in views.iter().flat_map(|v| v.peers.iter().flatten()) {
        if !columns.contains(&peer.peer.as_str()) {
            columns.push(&peer.peer);
        }
    }
    let mut rows = vec![std::iter::once("FROM \\ TO")
        .chain(columns.iter().copied())
        .map(String::from)
        .collect::<Vec<_>>()];
    for view in views {
        let mut row = vec![view.node.clone()];
        for column in &columns {
            row.push(match &view.peers {
                Err(_) => "?".into(),
                Ok(peers) => match peers.iter().find(|p| p.peer == *column) {
                    Some(peer) => peer.summary(),
                    None => "-".into(),
                },
            });
        }
        rows.push(row);
    }
    let mut out = super::ops::aligned(&rows);
    for view in views {
        if let Err(e) = &view.peers {
            out.push_str(&format!("{}: {e}\n", view.node));
        }
    }
    let cells: Vec<&PeerStatus> = views
        .iter()
        .flat_map(|v| v.peers.iter().flatten())
        .collect();
    let off = cells.iter().filter(|p| !p.converged()).count();
    out.push_str(&match code(views) {
        0 => format!("group converged ({} views)\n", cells.len()),
        1 => format!(
            "group NOT converged: {off} of {} views differ; `gosyncd status` on a node names the paths\n",
            cells.len()
        ),
        _ => "group state unknown: a node could not be asked (above)\n".to_string(),
    });
    out
}
