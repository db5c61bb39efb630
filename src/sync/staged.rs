//! Staged rollouts: a sync to a few peers first (the canaries), and to the rest only
//! once every canary took the change, its `validate` passed and its `on_change`
//! commands succeeded. Each stage is an ordinary run of the one engine.

use super::{Engine, Options, PeerReport, Report};

/// A staged run's outcome.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    /// What every stage that ran did, canaries first.
    pub report: Report,
    /// Why the rollout stopped after the canaries, when it did.
    pub halted: Option<Halt>,
}

/// A rollout stopped after its canaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Halt {
    /// The canaries that failed (empty when this node's own errors stopped it).
    pub failed: Vec<String>,
    /// The peers left untouched, in the order of `remotes`.
    pub untouched: Vec<String>,
}

impl Engine {
    /// The labels of the peers `wanted` names, in the order of `remotes`. A name is a
    /// remote as written in `remotes` or its host alone; one that names no remote is an
    /// error that lists them.
    pub fn select(&self, wanted: &[String]) -> Result<Vec<String>, String> {
        let names = |name: &str, link: &super::PeerLink| {
            name == link.label() || name == link.peer.remote.host
        };
        if let Some(unknown) = wanted
            .iter()
            .find(|w| !self.peers.iter().any(|link| names(w, link)))
        {
            let remotes: Vec<&str> = self.peers.iter().map(|l| l.label()).collect();
            return Err(format!(
                "--peer {unknown} is none of this node's remotes ({}); name one as it is \
                 written in `remotes`, or by its address alone",
                remotes.join(", ")
            ));
        }
        Ok(self
            .peers
            .iter()
            .filter(|link| wanted.iter().any(|w| names(w, link)))
            .map(|link| link.label().to_string())
            .collect())
    }

    /// Runs `options` (its peers, or every peer) in two stages: first `canaries` of them
    /// in the order of `remotes` (a remote that turns out to be this node does not
    /// count), then the rest, only if no canary failed. A canary fails as a run fails:
    /// unreachable, a change refused, rejected by `validate` or in conflict, or an
    /// `on_change` command that failed.
    pub async fn run_staged(
        &self,
        options: &Options,
        canaries: usize,
        mut on_peer: impl FnMut(&PeerReport),
    ) -> Staged {
        let mut rest: Vec<String> = match options.peers.is_empty() {
            true => self.peers.iter().map(|l| l.label().to_string()).collect(),
            false => options.peers.clone(),
        };
        let mut staged = Staged::default();
        let mut counted = 0;
        while counted < canaries && !rest.is_empty() {
            let stage: Vec<String> = rest.drain(..(canaries - counted).min(rest.len())).collect();
            let report = self
                .run(
                    &Options {
                        peers: stage,
                        ..options.clone()
                    },
                    &mut on_peer,
                )
                .await;
            counted += report.peers.iter().filter(|p| p.skipped.is_none()).count();
            let failed: Vec<String> = report
                .peers
                .iter()
                .filter(|p| p.failed())
                .map(|p| p.peer.clone())
                .collect();
            let stop = report.failed();
            merge(&mut staged.report, report);
            if stop {
                staged.halted = Some(Halt {
                    failed,
                    untouched: rest,
                });
                return staged;
            }
        }
        if !rest.is_empty() {
            let report = self
                .run(
                    &Options {
                        peers: rest,
                        ..options.clone()
                    },
                    &mut on_peer,
                )
                .await;
            merge(&mut staged.report, report);
        }
        staged
    }
}

/// Adds a stage's report to the whole run's.
fn merge(whole: &mut Report, stage: Report) {
    for error in stage.local_errors {
        if !whole.local_errors.contains(&error) {
            whole.local_errors.push(error);
        }
    }
    whole.peers.extend(stage.peers);
}
