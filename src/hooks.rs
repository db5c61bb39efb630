//! Hooks: the commands a directory's configuration runs around a change, a `validate`
//! command that checks the new tree before it counts as accepted, and `on_change`
//! commands (a reload) once it is. (Its settings, with the backups', are the
//! configuration's `Hooks`.)
//!
//! This module runs the commands; the values a directory's configuration gives for them
//! (`Backup`, `Hooks`, `RunOn`, `Side`) are [`crate::config`]'s. [`crate::apply`] takes
//! the backups and rolls a rejected batch back, [`crate::server`] and [`crate::watcher`]
//! call the commands for received and local changes.
//!
//! Split along those parts: `command` runs one command under a timeout (`run`,
//! `CommandResult`); `ending` says how it ended, in words (`Ending`, `explaining_line`);
//! `runner` coalesces the `on_change` runs of a directory (`Runner`, `COALESCE`). This
//! file runs each directory's `validate` command, and re-exports every item of its
//! children, so `hooks::` paths name them all.

mod command;
mod ending;
mod runner;

pub use command::{run, CommandResult};
pub use ending::{explaining_line, Ending};
pub use runner::Runner;

use crate::config::Side;

/// A directory and its changed logical paths as they are on this host, for commands.
pub fn local_paths(
    config: &crate::config::Config,
    dir: &str,
    changed: &[String],
) -> (String, Vec<String>) {
    let local = |p: &str| config.local_path(p).to_string_lossy().into_owned();
    (local(dir), changed.iter().map(|p| local(p)).collect())
}

/// Runs the `validate` command of each directory in `changed` that validates changes
/// from `side`, with the directory and the changed paths as they are on this host.
/// Returns the directories whose command failed, each with why: the line of the
/// command's output that explains, or the command and how it ended.
pub async fn validate(
    config: &crate::config::Config,
    changed: &std::collections::BTreeMap<String, Vec<String>>,
    side: Side,
) -> Vec<(String, String)> {
    let mut refused = Vec::new();
    for (path, paths) in changed {
        let Some(dir) = config.directory_of(path) else {
            continue;
        };
        let Some(command) = dir.hooks.validator(side) else {
            continue;
        };
        let (local_dir, local_changed) = local_paths(config, &dir.path, paths);
        let result = run(command, &local_dir, &local_changed, dir.hooks.timeout).await;
        if !result.success() {
            refused.push((dir.path.clone(), result.why()));
        }
    }
    refused
}

/// Runs the `on_change` commands of configured directory `dir` for its changed logical
/// `paths`, when they run for changes from `side`, and returns how each ended.
pub async fn on_change(
    runner: &std::sync::Arc<Runner>,
    config: &crate::config::Config,
    dir: &str,
    paths: &[String],
    side: Side,
) -> Vec<CommandResult> {
    let Some(dir) = config.directory_of(dir) else {
        return Vec::new();
    };
    if !dir.hooks.run_on.covers(side) {
        return Vec::new();
    }
    let (local_dir, local_changed) = local_paths(config, &dir.path, paths);
    let splay = dir
        .hooks
        .splay_for(side, uuid::Uuid::new_v4().as_u64_pair().0);
    runner
        .on_change(&local_dir, &dir.hooks, local_changed, splay)
        .await
}

/// Whether any directory validates changes from `side`.
pub fn validates(config: &crate::config::Config, side: Side) -> bool {
    config
        .directories
        .iter()
        .any(|d| d.hooks.validator(side).is_some())
}
