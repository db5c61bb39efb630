//! This node's daemon, as a run asks it for this node's digests, its levels and the
//! entries of the levels that differ from a peer's: a command beside the daemon asks it
//! over the API (from the daemon's hash cache, instead of hashing the tree again); the
//! daemon's own runs (its comparisons with its peers) ask its node, which answers as
//! its routes would, without the network. Either way a run whose digests differ from a
//! peer's reads this node's tree only where the levels differ.

use std::sync::Arc;

use super::{missing_directories, serving_this_node};
use crate::client::Peer;
use crate::config::Config;
use crate::manifest::{self, HashCache, Scan};
use crate::paths::Region;
use crate::protocol::ManifestResponse;

/// What a daemon keeps of its own tree, as its manifest route answers it.
pub trait KeptTree: Send + Sync {
    /// The digest of each configured directory.
    fn digests(&self) -> ManifestResponse;

    /// The digest of each level of the configured directories `dirs`, with the number
    /// of entries each holds.
    fn levels(&self, dirs: &[String]) -> ManifestResponse;
}

/// This node's daemon.
#[derive(Clone)]
pub enum Own {
    /// Beside a command: its client for the daemon, which answered as identity `id`.
    Daemon { peer: Peer, id: String },
    /// The daemon itself.
    Here(Arc<dyn KeptTree>),
}

impl Own {
    /// A command's client for the daemon, if this is one.
    pub fn client(&self) -> Option<&Peer> {
        match self {
            Own::Daemon { peer, .. } => Some(peer),
            Own::Here(_) => None,
        }
    }

    /// This node's digests; `None` when the daemon cannot give them as this node's
    /// terms would (see [`serving_this_node`]).
    pub(super) async fn digests(&self, config: &Config) -> Option<ManifestResponse> {
        match self {
            Own::Daemon { peer, id } => serving_this_node(config, id, peer.digests().await),
            Own::Here(kept) => {
                let kept = kept.clone();
                let walked = tokio::task::spawn_blocking(move || kept.digests());
                Some(walked.await.expect("digests task"))
            }
        }
    }

    /// The levels of this node's configured directories `dirs`.
    pub(super) async fn levels(
        &self,
        config: &Config,
        dirs: &[String],
    ) -> Option<ManifestResponse> {
        match self {
            Own::Daemon { peer, id } => serving_this_node(config, id, peer.levels(dirs).await),
            Own::Here(kept) => {
                let (kept, dirs) = (kept.clone(), dirs.to_vec());
                let walked = tokio::task::spawn_blocking(move || kept.levels(&dirs));
                Some(walked.await.expect("levels task"))
            }
        }
    }

    /// This node's entries in `region`: as the daemon lists them beside a command, read
    /// here (with `cache`, the daemon's) in the daemon itself.
    pub(super) async fn listed(
        &self,
        config: &Arc<Config>,
        cache: &Arc<HashCache>,
        region: Region<'_>,
    ) -> Option<Scan> {
        match self {
            Own::Daemon { peer, id } => {
                let mut ours = serving_this_node(config, id, peer.listing(region).await)?;
                Some(Scan {
                    missing: missing_directories(&ours),
                    entries: ours.take_entries(),
                    unreadable: Vec::new(),
                })
            }
            Own::Here(_) => {
                let (config, cache) = (config.clone(), cache.clone());
                let (scope, shallow) = (region.scope.to_vec(), region.shallow.to_vec());
                let read = tokio::task::spawn_blocking(move || {
                    let region = Region {
                        scope: &scope,
                        shallow: &shallow,
                    };
                    manifest::scan_region(&config, region, &cache)
                });
                Some(read.await.expect("scan task"))
            }
        }
    }
}
