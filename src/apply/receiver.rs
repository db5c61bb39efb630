//! The receiver's engine, the counterpart of the sender's [`crate::sync::Engine`]: a
//! checked batch whose contents were received is applied, each directory it changed is
//! checked by its `validate` command (what one refuses is put back), the rest is
//! committed, and the directories' `on_change` commands run. The API's handler keeps
//! admission, the body's limits and how outcomes become statuses; `backups restore`
//! calls the same steps ([`super::apply_body`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::warn;

use super::Resolution;
use crate::config::{Config, Side};
use crate::hooks::{self, Runner};
use crate::manifest::{Placed, Stamp};
use crate::protocol::{Action, ActionReport, BatchHeader, Entry, Found, OpResult, Outcome};

/// A node's receiving side: its configuration, and whether it applies owners.
pub struct Receiver {
    pub config: Arc<Config>,
    pub owners: bool,
    /// Where each file put in place is noted, for this node's watcher.
    pub placed: Option<Arc<Placed>>,
}

/// What a received batch came to.
pub struct Received {
    /// Each operation's result, in order.
    pub results: Vec<OpResult>,
    /// The paths it changed, per configured directory.
    pub changed: BTreeMap<String, Vec<String>>,
    /// The conflicts it settled for the incoming version (`on_conflict = "newest"`).
    pub resolved: Vec<Resolution>,
}

impl Receiver {
    /// Applies a checked batch whose contents are received, runs the `validate` command
    /// of every directory it changed, puts back what a failed validation refuses, and
    /// returns the results with the paths changed per directory and the conflicts
    /// settled for the incoming version. `record` is told the state each applied
    /// operation left (`None`: deleted), in order, once the batch is committed, with
    /// the stamp of a file put in place as it was found right after its rename.
    pub async fn apply_and_validate(
        &self,
        header: BatchHeader,
        staged: super::Staged,
        origin: String,
        mut record: impl FnMut(&str, Option<Entry>, Option<Stamp>),
    ) -> Result<Received, String> {
        let config = self.config.clone();
        let (owners, placed) = (self.owners, self.placed.clone());
        let (ops, mut applied) = tokio::task::spawn_blocking(move || {
            let applied = super::apply_batch(&config, owners, &header, staged, &origin, placed);
            (header.ops, applied)
        })
        .await
        .map_err(|e| format!("apply failed: {e}"))?;

        let touched = applied.touched(&self.config);
        for (dir_path, why) in hooks::validate(&self.config, &touched, Side::Received).await {
            let reason = format!("validation failed: {why}");
            let changed = touched.get(&dir_path).map_or(0, Vec::len);
            warn!(directory = %dir_path, changed, "{reason}: rolling the batch's changes back");
            let config = self.config.clone();
            let (back, failures) = tokio::task::spawn_blocking(move || {
                let failures = applied.reject(&config, &dir_path, &reason);
                (applied, failures)
            })
            .await
            .map_err(|e| format!("rollback failed: {e}"))?;
            applied = back;
            for (path, e) in failures {
                tracing::error!(%path, "cannot put the previous version back: {e}");
            }
        }

        let changed = applied.touched(&self.config);
        // What the sender did not get is answered with what this node holds there now,
        // so that it knows instead of assuming.
        let config = self.config.clone();
        let (results, resolved, stamps) = tokio::task::spawn_blocking(move || {
            let resolved = applied.resolved();
            let stamps = applied.take_stamps();
            let mut results = applied.commit();
            for result in results.iter_mut().filter(|r| !r.outcome.is_applied()) {
                result.found = super::state_of(&config, &result.path).map(|entry| Found { entry });
            }
            (results, resolved, stamps)
        })
        .await
        .map_err(|e| format!("commit failed: {e}"))?;
        let mut stamps = stamps.into_iter().peekable();
        for (index, (op, result)) in ops.iter().zip(&results).enumerate() {
            let stamp = stamps.next_if(|(at, _)| *at == index).map(|(_, s)| s);
            if result.outcome == Outcome::Applied {
                let state = match &op.action {
                    Action::Put { entry } => Some(entry.clone()),
                    Action::Delete => None,
                };
                record(&op.path, state, stamp);
            }
        }
        Ok(Received {
            results,
            changed,
            resolved,
        })
    }

    /// Runs the `on_change` commands of the directories a received batch changed, and
    /// says how each ended.
    pub async fn run_on_change(
        &self,
        runner: &Arc<Runner>,
        changed: BTreeMap<String, Vec<String>>,
    ) -> Vec<ActionReport> {
        let mut reports = Vec::new();
        for (dir, paths) in changed {
            let results =
                hooks::on_change(runner, &self.config, &dir, &paths, Side::Received).await;
            for result in results {
                reports.push(ActionReport {
                    directory: dir.clone(),
                    success: result.success(),
                    code: result.code(),
                    ended: result.ending.to_string(),
                    command: result.command,
                    first_line: result.first_line,
                });
            }
        }
        reports
    }
}
