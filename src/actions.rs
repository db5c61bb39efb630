//! What a directory's configuration asks to be done around a change: keep backups of the
//! versions a sync replaces, check the new tree with a `validate` command before it
//! counts as accepted, and run `on_change` commands (a reload) once it is.
//!
//! This module holds the settings and runs the commands; [`crate::apply`] takes the
//! backups and rolls a rejected batch back, [`crate::server`] and [`crate::watcher`] call
//! the commands for received and local changes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use hcl::{Block, Expression, Structure};
use tokio::io::AsyncReadExt;

/// Where and how many previous versions of each file are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub directory: PathBuf,
    /// Versions kept per path; the oldest beyond this are pruned.
    pub keep: usize,
}

/// The default number of versions kept per path.
pub const DEFAULT_KEEP: usize = 5;

/// A `backup { ... }` block as written: each key optional, so that a directory's block
/// can override only what it names.
#[derive(Debug, Clone, Default)]
pub struct BackupBlock {
    pub directory: Option<PathBuf>,
    pub keep: Option<usize>,
}

impl BackupBlock {
    /// Reads `backup { directory = "..." keep = 5 }`.
    pub fn from_block(block: Block) -> Result<BackupBlock, String> {
        let mut out = BackupBlock::default();
        for structure in block.body.into_iter() {
            let Structure::Attribute(attr) = structure else {
                return Err("backup: blocks are not allowed inside".into());
            };
            match (attr.key.as_str(), &attr.expr) {
                ("directory", Expression::String(path)) => {
                    let path = PathBuf::from(path);
                    if !path.is_absolute() {
                        return Err(format!(
                            "backup: directory {:?} is not an absolute path",
                            path.display()
                        ));
                    }
                    out.directory = Some(path);
                }
                ("keep", Expression::Number(n)) => {
                    out.keep = Some(n.as_u64().ok_or_else(|| {
                        format!("backup: keep: {n} is not a whole number (0 turns backups off)")
                    })? as usize);
                }
                ("directory", _) => return Err("backup: directory: expected a string".into()),
                ("keep", _) => return Err("backup: keep: expected a whole number".into()),
                (other, _) => {
                    return Err(format!(
                        "backup: unknown key {other:?} (known keys: directory, keep)"
                    ))
                }
            }
        }
        Ok(out)
    }

    /// The backup in force for a directory: its own block over the global one. `None`
    /// when no directory is named, or `keep` is 0.
    pub fn resolve(
        global: Option<&BackupBlock>,
        own: Option<&BackupBlock>,
    ) -> Result<Option<Backup>, String> {
        let directory = own
            .and_then(|b| b.directory.clone())
            .or_else(|| global.and_then(|b| b.directory.clone()));
        let keep = own
            .and_then(|b| b.keep)
            .or_else(|| global.and_then(|b| b.keep))
            .unwrap_or(DEFAULT_KEEP);
        match directory {
            _ if keep == 0 => Ok(None),
            Some(directory) => Ok(Some(Backup { directory, keep })),
            None if own.is_some() || global.is_some() => Err(
                "backup: no directory named (backup { directory = \"/var/lib/gosyncd/backups\" })"
                    .into(),
            ),
            None => Ok(None),
        }
    }
}

/// When a directory's actions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOn {
    /// For changes received from peers only.
    Receive,
    /// For changes made on this node only (the watcher's).
    Local,
    /// For both.
    Both,
}

impl RunOn {
    pub fn parse(text: &str) -> Result<RunOn, String> {
        match text {
            "receive" => Ok(RunOn::Receive),
            "local" => Ok(RunOn::Local),
            "both" => Ok(RunOn::Both),
            other => Err(format!(
                "run_on: {other:?} is not one of \"receive\", \"local\", \"both\""
            )),
        }
    }

    pub fn on_receive(self) -> bool {
        matches!(self, RunOn::Receive | RunOn::Both)
    }

    pub fn on_local(self) -> bool {
        matches!(self, RunOn::Local | RunOn::Both)
    }
}

/// A directory's commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actions {
    /// Checks the directory after a change; non-zero rejects (and rolls back) the change.
    pub validate: Option<String>,
    /// Run once per accepted change that touched the directory.
    pub on_change: Vec<String>,
    pub run_on: RunOn,
    /// Longest a command may run before it is killed (and counts as failed).
    pub timeout: Duration,
}

/// The default `action_timeout`.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for Actions {
    fn default() -> Self {
        Actions {
            validate: None,
            on_change: Vec::new(),
            run_on: RunOn::Both,
            timeout: DEFAULT_ACTION_TIMEOUT,
        }
    }
}

impl Actions {
    pub fn is_empty(&self) -> bool {
        self.validate.is_none() && self.on_change.is_empty()
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    pub command: String,
    /// The exit code; `None` when it was killed (timeout or signal) or could not start.
    pub code: Option<i32>,
    pub success: bool,
    /// The first line of its standard error (or, when that is empty, of its output), or
    /// why it did not finish.
    pub first_line: String,
}

/// Bytes of a command's output kept, per stream.
const OUTPUT_KEPT: usize = 64 * 1024;

/// Reads a stream to its end (so that the command never blocks on a full pipe), keeping
/// its first [`OUTPUT_KEPT`] bytes.
async fn drain(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_KEPT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Runs `command` with `sh -c`, with `changed` (the changed paths as they are on this
/// host, one per line) in `GOSYNCD_CHANGED` and the configured directory (likewise) in
/// `GOSYNCD_DIRECTORY`, killing it after `timeout`.
pub async fn run(
    command: &str,
    directory: &str,
    changed: &[String],
    timeout: Duration,
) -> CommandResult {
    let started = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("GOSYNCD_CHANGED", changed.join("\n"))
        .env("GOSYNCD_DIRECTORY", directory)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match started {
        Ok(child) => child,
        Err(e) => {
            return CommandResult {
                command: command.to_string(),
                code: None,
                success: false,
                first_line: format!("cannot start /bin/sh: {e}"),
            }
        }
    };
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let finished = tokio::time::timeout(timeout, async {
        let (out, err, status) = tokio::join!(drain(&mut stdout), drain(&mut stderr), child.wait());
        (status, out, err)
    })
    .await;
    match finished {
        Err(_) => {
            let _ = child.kill().await;
            CommandResult {
                command: command.to_string(),
                code: None,
                success: false,
                first_line: format!("killed after {}s (action_timeout)", timeout.as_secs()),
            }
        }
        Ok((status, out, err)) => {
            let first = |bytes: &[u8]| {
                String::from_utf8_lossy(bytes)
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect::<String>()
            };
            let first_line = match first(&err) {
                line if line.is_empty() => first(&out),
                line => line,
            };
            match status {
                Ok(status) => CommandResult {
                    command: command.to_string(),
                    code: status.code(),
                    success: status.success(),
                    first_line,
                },
                Err(e) => CommandResult {
                    command: command.to_string(),
                    code: None,
                    success: false,
                    first_line: format!("cannot wait for it: {e}"),
                },
            }
        }
    }
}

/// A directory and its changed logical paths as they are on this host, for commands.
pub fn local_paths(
    config: &crate::config::Config,
    dir: &str,
    changed: &[String],
) -> (String, Vec<String>) {
    let local = |p: &str| config.local_path(p).to_string_lossy().into_owned();
    (local(dir), changed.iter().map(|p| local(p)).collect())
}

/// Which changes a command is run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Received from a peer.
    Received,
    /// Made on this node.
    Local,
}

impl RunOn {
    /// Whether commands run for changes from `side`.
    pub fn covers(self, side: Side) -> bool {
        match side {
            Side::Received => self.on_receive(),
            Side::Local => self.on_local(),
        }
    }
}

/// Runs the `validate` command of each directory in `changed` that validates changes
/// from `side`, with the directory and the changed paths as they are on this host.
/// Returns the directories whose command failed, each with why: the command's first
/// line of output, or its exit status.
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
        let (Some(command), true) = (&dir.actions.validate, dir.actions.run_on.covers(side)) else {
            continue;
        };
        let (local_dir, local_changed) = local_paths(config, &dir.path, paths);
        let result = run(command, &local_dir, &local_changed, dir.actions.timeout).await;
        if !result.success {
            let why = if result.first_line.is_empty() {
                format!("`{command}` exited with {:?}", result.code)
            } else {
                result.first_line
            };
            refused.push((dir.path.clone(), why));
        }
    }
    refused
}

/// Whether any directory validates changes from `side`.
pub fn validates(config: &crate::config::Config, side: Side) -> bool {
    config
        .directories
        .iter()
        .any(|d| d.actions.validate.is_some() && d.actions.run_on.covers(side))
}

/// How long a directory's `on_change` commands wait for more changes before they run,
/// so that changes arriving together (from several peers, or a burst) cause one reload.
pub const COALESCE: Duration = Duration::from_millis(250);

/// Runs each directory's `on_change` commands, once for all the changes submitted
/// within [`COALESCE`] of each other; every submitter gets the results of the run that
/// included its paths.
#[derive(Default)]
pub struct Runner {
    directories: std::sync::Mutex<std::collections::HashMap<String, Pending>>,
}

#[derive(Default)]
struct Pending {
    paths: std::collections::BTreeSet<String>,
    waiters: Vec<tokio::sync::oneshot::Sender<Vec<CommandResult>>>,
    running: bool,
}

impl Runner {
    /// Asks for `actions.on_change` to run for `paths` of `directory`, and waits for the
    /// results. Nothing runs (and nothing is returned) when there are no commands.
    pub async fn on_change(
        self: &std::sync::Arc<Self>,
        directory: &str,
        actions: &Actions,
        paths: Vec<String>,
    ) -> Vec<CommandResult> {
        if actions.on_change.is_empty() {
            return Vec::new();
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut all = self.directories.lock().expect("runner lock");
            let pending = all.entry(directory.to_string()).or_default();
            pending.paths.extend(paths);
            pending.waiters.push(tx);
            !std::mem::replace(&mut pending.running, true)
        };
        if start {
            let runner = self.clone();
            let directory = directory.to_string();
            let actions = actions.clone();
            tokio::spawn(async move { runner.drive(&directory, &actions).await });
        }
        rx.await.unwrap_or_default()
    }

    /// Runs the directory's commands while changes keep coming.
    async fn drive(&self, directory: &str, actions: &Actions) {
        loop {
            tokio::time::sleep(COALESCE).await;
            let (paths, waiters) = {
                let mut all = self.directories.lock().expect("runner lock");
                let pending = all.entry(directory.to_string()).or_default();
                if pending.waiters.is_empty() {
                    pending.running = false;
                    return;
                }
                (
                    std::mem::take(&mut pending.paths),
                    std::mem::take(&mut pending.waiters),
                )
            };
            let paths: Vec<String> = paths.into_iter().collect();
            let mut results = Vec::new();
            for command in &actions.on_change {
                let result = run(command, directory, &paths, actions.timeout).await;
                if result.success {
                    tracing::info!(%directory, %command, changed = paths.len(), "on_change ran");
                } else {
                    tracing::warn!(%directory, %command, code = ?result.code, "on_change failed: {}", result.first_line);
                }
                results.push(result);
            }
            for waiter in waiters {
                let _ = waiter.send(results.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_gets_the_changed_paths_and_reports_its_first_error_line() {
        let changed = vec!["/etc/app/a".to_string(), "/etc/app/b c".to_string()];
        let ok = run(
            "test \"$GOSYNCD_CHANGED\" = \"$(printf '/etc/app/a\\n/etc/app/b c')\" && test \"$GOSYNCD_DIRECTORY\" = /etc/app && echo fine",
            "/etc/app",
            &changed,
            Duration::from_secs(5),
        )
        .await;
        assert!(ok.success, "{ok:?}");
        assert_eq!(ok.first_line, "fine");
        let bad = run(
            "echo some output; echo '  line 3: unknown keyword' >&2; echo more >&2; exit 3",
            "/etc/app",
            &changed,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!((bad.success, bad.code), (false, Some(3)));
        assert_eq!(bad.first_line, "line 3: unknown keyword");
    }

    #[tokio::test]
    async fn a_command_over_its_timeout_is_killed_and_fails() {
        let started = std::time::Instant::now();
        let slow = run("sleep 30", "/d", &[], Duration::from_millis(300)).await;
        assert!(
            !slow.success && slow.first_line.contains("action_timeout"),
            "{slow:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn changes_submitted_together_cause_one_run_with_all_their_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("runs");
        let actions = Actions {
            on_change: vec![format!(
                "echo \"$GOSYNCD_CHANGED\" | tr '\\n' ' ' >> {}; echo >> {}",
                log.display(),
                log.display()
            )],
            ..Actions::default()
        };
        let runner = std::sync::Arc::new(Runner::default());
        let (a, b) = tokio::join!(
            runner.on_change("/d", &actions, vec!["/d/a".into()]),
            runner.on_change("/d", &actions, vec!["/d/b".into()]),
        );
        assert!(a[0].success && b[0].success, "{a:?} {b:?}");
        let runs = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            runs.lines().collect::<Vec<_>>(),
            ["/d/a /d/b "],
            "one run for both"
        );
        // A later change runs again.
        runner.on_change("/d", &actions, vec!["/d/c".into()]).await;
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_directory_backup_overrides_the_global_one() {
        let global = BackupBlock {
            directory: Some("/var/b".into()),
            keep: Some(3),
        };
        let own = BackupBlock {
            directory: None,
            keep: Some(10),
        };
        assert_eq!(
            BackupBlock::resolve(Some(&global), Some(&own)).unwrap(),
            Some(Backup {
                directory: "/var/b".into(),
                keep: 10
            })
        );
        let off = BackupBlock {
            directory: None,
            keep: Some(0),
        };
        assert_eq!(
            BackupBlock::resolve(Some(&global), Some(&off)).unwrap(),
            None
        );
        assert_eq!(BackupBlock::resolve(None, None).unwrap(), None);
        assert!(BackupBlock::resolve(None, Some(&own))
            .unwrap_err()
            .contains("no directory"));
    }
}
