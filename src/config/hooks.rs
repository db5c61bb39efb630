//! A directory's settings for what is done around a change, as the configuration gives
//! them: where backups go and how many are kept, the `validate` and `on_change`
//! commands, which side's changes they run for (`run_on`) and how long they may take.
//! Plain values with no I/O: nothing here runs a command or touches a file.

use std::path::PathBuf;
use std::time::Duration;

use hcl::{Block, Expression, Structure};

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
pub struct Hooks {
    /// Checks the directory after a change; non-zero rejects (and rolls back) the change.
    pub validate: Option<String>,
    /// Run once per accepted change that touched the directory.
    pub on_change: Vec<String>,
    pub run_on: RunOn,
    /// Longest a command may run before it is killed (and counts as failed).
    pub timeout: Duration,
    /// `on_change_splay`: a receiving node waits a random time up to this long before
    /// its `on_change` commands run, so that a push does not reload every node at the
    /// same instant. Zero: no wait.
    pub splay: Duration,
}

/// The default `action_timeout`.
pub const DEFAULT_ACTION_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            validate: None,
            on_change: Vec::new(),
            run_on: RunOn::Both,
            timeout: DEFAULT_ACTION_TIMEOUT,
            splay: Duration::ZERO,
        }
    }
}

impl Hooks {
    /// How long to wait before the `on_change` commands run for changes from `side`: a
    /// random time up to `splay` for received changes, none for local ones.
    pub fn splay_for(&self, side: Side, random: u64) -> Duration {
        if side != Side::Received || self.splay.is_zero() {
            return Duration::ZERO;
        }
        self.splay.mul_f64(random as f64 / u64::MAX as f64)
    }

    /// Whether commands judge or follow each received batch as a whole here (a
    /// `validate`, or `on_change` commands, run for received changes): the operations of
    /// one push for the directory are sent in one request.
    pub fn run_for_received(&self) -> bool {
        self.validator(Side::Received).is_some()
            || (!self.on_change.is_empty() && self.run_on.covers(Side::Received))
    }

    /// The `validate` command, when there is one and it runs for changes from `side`.
    pub fn validator(&self, side: Side) -> Option<&str> {
        self.validate
            .as_deref()
            .filter(|_| self.run_on.covers(side))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_judged_as_a_whole_when_a_command_runs_for_received_batches() {
        let hooks = |validate: Option<&str>, on_change: &[&str], run_on| Hooks {
            validate: validate.map(str::to_string),
            on_change: on_change.iter().map(|c| c.to_string()).collect(),
            run_on,
            ..Hooks::default()
        };
        assert!(!Hooks::default().run_for_received());
        assert!(hooks(Some("true"), &[], RunOn::Both).run_for_received());
        assert!(hooks(Some("true"), &[], RunOn::Receive).run_for_received());
        assert!(hooks(None, &["reload"], RunOn::Receive).run_for_received());
        // Commands for local edits only: a received batch is not judged.
        assert!(!hooks(Some("true"), &["reload"], RunOn::Local).run_for_received());
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

    #[test]
    fn only_received_changes_wait_and_never_beyond_the_splay() {
        let hooks = Hooks {
            splay: Duration::from_secs(4),
            ..Hooks::default()
        };
        assert_eq!(hooks.splay_for(Side::Received, 0), Duration::ZERO);
        assert_eq!(
            hooks.splay_for(Side::Received, u64::MAX),
            Duration::from_secs(4)
        );
        let half = hooks.splay_for(Side::Received, u64::MAX / 2);
        assert!(
            half > Duration::from_millis(1990) && half < Duration::from_millis(2010),
            "{half:?}"
        );
        assert_eq!(hooks.splay_for(Side::Local, u64::MAX), Duration::ZERO);
        assert_eq!(
            Hooks::default().splay_for(Side::Received, u64::MAX),
            Duration::ZERO
        );
    }
}
