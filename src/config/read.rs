//! Reading a configuration's text into a [`Config`]: the HCL body into its keys and
//! blocks as written ([`Raw`]), then each concern in turn (the addresses, the root, the
//! directories, the state directory, the timings), each by a reader of its own whose
//! errors point at the line of the key or block at fault.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hcl::{Block, Body, Expression, Structure};

use super::duration::{self, Bounds};
use super::raw::{
    directory_block, hcl_error, string_list, string_value, type_name, unknown_key_message, Lines,
    Raw, RawDirectory, KNOWN_KEYS,
};
use super::{
    parse_allow_entry, parse_bind_address, parse_remote, AllowEntry, BackupBlock, BindAddress,
    Config, ConfigError, Directory, Excludes, Hooks, Limits, OnConflict, Remote, Role, RunOn,
    DEFAULT_ACTION_TIMEOUT, DEFAULT_DEBOUNCE, DEFAULT_MAX_DELETE_SHARE, DEFAULT_OPEN_WRITE_TIMEOUT,
    DEFAULT_RECONCILE_INTERVAL, DEFAULT_STATE_DIRECTORY,
};
use crate::paths::{self, overlaps};

/// A duration key: its name, its default and what it accepts.
struct DurationKey {
    key: &'static str,
    default: Duration,
    bounds: Bounds,
}

const ACTION_TIMEOUT: DurationKey = DurationKey {
    key: "action_timeout",
    default: DEFAULT_ACTION_TIMEOUT,
    bounds: Bounds {
        least: Duration::from_secs(1),
        most: Duration::from_secs(3600),
        range: "1s and 1h",
        example: "60s",
    },
};

const ON_CHANGE_SPLAY: DurationKey = DurationKey {
    key: "on_change_splay",
    default: Duration::ZERO,
    bounds: Bounds {
        least: Duration::ZERO,
        most: Duration::from_secs(3600),
        range: "0s and 1h",
        example: "5s",
    },
};

const DEBOUNCE: DurationKey = DurationKey {
    key: "debounce",
    default: DEFAULT_DEBOUNCE,
    bounds: Bounds {
        least: Duration::from_millis(1),
        most: Duration::from_secs(60),
        range: "1ms and 60s",
        example: "20ms",
    },
};

const OPEN_WRITE_TIMEOUT: DurationKey = DurationKey {
    key: "open_write_timeout",
    default: DEFAULT_OPEN_WRITE_TIMEOUT,
    bounds: Bounds {
        least: Duration::from_secs(1),
        most: Duration::from_secs(86_400),
        range: "1s and 24h",
        example: "10m",
    },
};

const RECONCILE_INTERVAL: DurationKey = DurationKey {
    key: "reconcile_interval",
    default: DEFAULT_RECONCILE_INTERVAL,
    bounds: Bounds {
        least: Duration::from_secs(1),
        most: Duration::from_secs(86_400),
        range: "1s and 24h",
        example: "5m",
    },
};

/// Parses and validates configuration text (see [`Config::from_str`]).
pub(super) fn config(text: &str, file: &Path) -> Result<Config, ConfigError> {
    let body: Body = hcl::parse(text).map_err(|e| hcl_error(file, &e.to_string()))?;
    let source = Source {
        file,
        lines: Lines::of(text),
    };
    let raw = source.raw(body)?;
    let keys = Keys {
        raw: &raw,
        source: &source,
    };
    // Each concern in the order its errors are reported.
    let bind_address = keys.bind_address()?;
    let remotes = keys.remotes()?;
    let root = keys.root()?;
    let metrics_address = keys.metrics_address()?;
    // What every directory's commands share: their time limit and the splay.
    let timing = Hooks {
        timeout: keys.duration(&ACTION_TIMEOUT)?,
        splay: keys.duration(&ON_CHANGE_SPLAY)?,
        ..Hooks::default()
    };
    let directories = keys.directories(&root, &timing)?;
    let allow_from = keys.allow_from()?;
    let debounce = keys.duration(&DEBOUNCE)?;
    let open_write_timeout = keys.duration(&OPEN_WRITE_TIMEOUT)?;
    let state_directory = keys.state_directory(&root, &directories)?;
    let reconcile_interval = keys.duration(&RECONCILE_INTERVAL)?;
    let role = keys.role()?;
    Ok(Config {
        file: file.to_path_buf(),
        state_directory,
        reconcile_interval,
        bind_address,
        remotes,
        tls_ca_certificate: keys.file_path("tls_ca_certificate")?,
        tls_certificate: keys.file_path("tls_certificate")?,
        tls_private_key: keys.file_path("tls_private_key")?,
        root,
        directories,
        debounce,
        open_write_timeout,
        allow_from,
        limits: raw.limits.clone().unwrap_or_default(),
        max_delete_share: raw.max_delete_share.unwrap_or(DEFAULT_MAX_DELETE_SHARE),
        allow_setid: keys.flag("allow_setid"),
        allow_writable_directories: keys.flag("allow_writable_directories"),
        metrics_address,
        role,
    })
}

/// The file being read, and where each of its structures is: what an error points at.
struct Source<'f> {
    file: &'f Path,
    lines: Lines,
}

impl Source<'_> {
    /// An error on a line.
    fn at(&self, line: Option<usize>, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            message,
        }
    }

    /// An error on a top-level key: on the line it is set on, if it is.
    fn err(&self, key: Option<&str>, message: String) -> ConfigError {
        self.at(key.and_then(|k| self.lines.of_key(k)), message)
    }

    /// The keys and blocks of the top level, each checked for its type.
    fn raw(&self, body: Body) -> Result<Raw, ConfigError> {
        let mut raw = Raw::default();
        for (index, structure) in body.into_iter().enumerate() {
            match structure {
                Structure::Attribute(attr) => {
                    self.attribute(&mut raw, attr.key.as_str(), attr.expr, index)?
                }
                Structure::Block(block) => self.block(&mut raw, block, index)?,
            }
        }
        Ok(raw)
    }

    /// One top-level key (a key set twice is refused by the HCL parser itself).
    fn attribute(
        &self,
        raw: &mut Raw,
        key: &str,
        value: Expression,
        index: usize,
    ) -> Result<(), ConfigError> {
        if !KNOWN_KEYS.contains(&key) {
            return Err(self.at(self.lines.at(index), unknown_key_message(key)));
        }
        let err = |message: String| self.err(Some(key), message);
        match key {
            "max_delete_share" => {
                let share = match &value {
                    Expression::Number(n) => n.as_f64(),
                    _ => None,
                }
                .filter(|v| (0.0..=1.0).contains(v))
                .ok_or_else(|| {
                    err(format!(
                        "{key}: expected a number from 0 to 1 (such as 0.5 for half), found {}",
                        type_name(&value)
                    ))
                })?;
                raw.max_delete_share = Some(share);
            }
            "editor_excludes" | "allow_setid" | "allow_writable_directories" => match value {
                Expression::Bool(b) if key == "editor_excludes" => raw.editor_excludes = Some(b),
                Expression::Bool(b) => raw.flags.push((key.to_string(), b)),
                other => {
                    return Err(err(format!(
                        "{key}: expected true or false, found {}",
                        type_name(&other)
                    )))
                }
            },
            "remotes" => raw.remotes = Some(string_list(key, &value).map_err(err)?),
            "allow_from" => raw.allow_from = Some(string_list(key, &value).map_err(err)?),
            _ => {
                let text = string_value(key, &value).map_err(err)?;
                raw.strings.push((key.to_string(), text));
            }
        }
        Ok(())
    }

    /// One top-level block: `limits`, `backup` (once each) or a `directory`.
    fn block(&self, raw: &mut Raw, block: Block, index: usize) -> Result<(), ConfigError> {
        let here = self.lines.at(index);
        match block.identifier.as_str() {
            "limits" => {
                if raw.limits.is_some() {
                    return Err(self.at(here, "limits: set more than once".into()));
                }
                let limits: Limits = Limits::from_block(block)
                    .map_err(|(key, m)| self.at(self.lines.within(index, &key), m))?;
                raw.limits = Some(limits);
            }
            "backup" => {
                if raw.backup.is_some() {
                    return Err(self.at(here, "backup: set more than once".into()));
                }
                raw.backup = Some(BackupBlock::from_block(block).map_err(|m| self.at(here, m))?);
            }
            "directory" => {
                let mut directory = directory_block(block).map_err(|m| self.at(here, m))?;
                directory.line = here;
                directory.exclude_line = self.lines.within(index, "exclude");
                directory.backup_line = self
                    .lines
                    .inside(index, "backup")
                    .or_else(|| self.lines.of_key("backup"))
                    .or(here);
                directory.on_conflict_line = self.lines.within(index, "on_conflict");
                raw.directories.push(directory);
            }
            name => return Err(self.at(here, unknown_key_message(name))),
        }
        Ok(())
    }
}

/// The top-level keys as written, read one concern at a time.
struct Keys<'a> {
    raw: &'a Raw,
    source: &'a Source<'a>,
}

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.raw
            .strings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn required(&self, key: &str) -> Result<String, ConfigError> {
        self.get(key).ok_or_else(|| {
            self.source
                .err(None, format!("{key}: required key is missing"))
        })
    }

    /// A duration key within its bounds, or its default when absent.
    fn duration(&self, which: &DurationKey) -> Result<Duration, ConfigError> {
        let key = which.key;
        match self.get(key) {
            None => Ok(which.default),
            Some(text) => duration::bounded(&text, &which.bounds)
                .map_err(|why| self.source.err(Some(key), format!("{key}: {why}"))),
        }
    }

    /// A flag (`allow_setid`, ...): the last value set, false when absent.
    fn flag(&self, key: &str) -> bool {
        self.raw
            .flags
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .is_some_and(|(_, on)| *on)
    }

    /// A required path, relative to the configuration file's directory unless absolute.
    fn file_path(&self, key: &str) -> Result<PathBuf, ConfigError> {
        let path = PathBuf::from(self.required(key)?);
        Ok(if path.is_absolute() {
            path
        } else {
            let file = self.source.file;
            file.parent().unwrap_or(Path::new(".")).join(path)
        })
    }

    fn bind_address(&self) -> Result<BindAddress, ConfigError> {
        let text = self.required("bind_address")?;
        parse_bind_address(&text).map_err(|m| {
            self.source
                .err(Some("bind_address"), format!("bind_address: {m}"))
        })
    }

    /// `remotes`, each parsed, none listed twice.
    fn remotes(&self) -> Result<Vec<Remote>, ConfigError> {
        let err = |message: String| self.source.err(Some("remotes"), message);
        let entries = self.raw.remotes.as_ref().ok_or_else(|| {
            self.source
                .err(None, "remotes: required key is missing".into())
        })?;
        let mut remotes: Vec<Remote> = Vec::new();
        for entry in entries {
            let remote = parse_remote(entry).map_err(|m| err(format!("remotes: {m}")))?;
            if remotes
                .iter()
                .any(|r| r.host == remote.host && r.port == remote.port)
            {
                return Err(err(format!("remotes: {entry:?} is listed twice")));
            }
            remotes.push(remote);
        }
        Ok(remotes)
    }

    fn root(&self) -> Result<PathBuf, ConfigError> {
        let root = PathBuf::from(self.get("root").unwrap_or_else(|| "/".into()));
        if !root.is_absolute() {
            return Err(self.source.err(
                Some("root"),
                format!(
                    "root: {:?} is not an absolute path",
                    root.display().to_string()
                ),
            ));
        }
        Ok(root)
    }

    /// `role`: one of [`Role::ALL`], `send-receive` when absent.
    fn role(&self) -> Result<Role, ConfigError> {
        let Some(text) = self.get("role") else {
            return Ok(Role::default());
        };
        Role::ALL
            .into_iter()
            .find(|role| role.name() == text)
            .ok_or_else(|| {
                let allowed: Vec<String> =
                    Role::ALL.iter().map(|r| format!("{:?}", r.name())).collect();
                self.source.err(
                    Some("role"),
                    format!(
                        "role: {text:?} is not one of {} (\"send-receive\", the default, pushes \
                         this node's edits; \"receive-only\" applies its peers' and pushes nothing)",
                        allowed.join(", ")
                    ),
                )
            })
    }

    fn metrics_address(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let Some(text) = self.get("metrics_address") else {
            return Ok(None);
        };
        let address = text.parse::<SocketAddr>().map_err(|_| {
            self.source.err(
                Some("metrics_address"),
                format!("metrics_address: {text:?} is not an address and port (such as \"127.0.0.1:9105\")"),
            )
        })?;
        Ok(Some(address))
    }

    fn allow_from(&self) -> Result<Option<Vec<AllowEntry>>, ConfigError> {
        let Some(entries) = &self.raw.allow_from else {
            return Ok(None);
        };
        let entries = entries
            .iter()
            .map(|e| parse_allow_entry(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| {
                self.source
                    .err(Some("allow_from"), format!("allow_from: {m}"))
            })?;
        Ok(Some(entries))
    }

    /// The `directory` blocks: at least one, none inside another.
    fn directories(&self, root: &Path, timing: &Hooks) -> Result<Vec<Directory>, ConfigError> {
        let mut directories: Vec<Directory> = Vec::new();
        for raw_dir in &self.raw.directories {
            let directory = self.directory(raw_dir, root, timing, &directories)?;
            directories.push(directory);
        }
        if directories.is_empty() {
            return Err(self
                .source
                .err(None, "no directory block: nothing to synchronise".into()));
        }
        Ok(directories)
    }

    /// One `directory` block: its backup (its own block over the global one, never
    /// inside a synchronised directory), its conflict policy (`newest` only with a
    /// backup), its commands, its path (overlapping none of the `earlier` ones) and its
    /// excludes.
    fn directory(
        &self,
        raw_dir: &RawDirectory,
        root: &Path,
        timing: &Hooks,
        earlier: &[Directory],
    ) -> Result<Directory, ConfigError> {
        let RawDirectory {
            path,
            line,
            exclude_line,
            backup_line,
            on_conflict_line,
            exclude: excludes,
            backup,
            validate,
            on_change,
            run_on,
            on_conflict,
        } = raw_dir;
        let at = |line: &Option<usize>, m: String| {
            self.source.at(*line, format!("directory {path:?}: {m}"))
        };
        let backup = BackupBlock::resolve(self.raw.backup.as_ref(), backup.as_ref())
            .map_err(|m| at(backup_line, m))?;
        if let Some(b) = &backup {
            let local = |logical: &str| root.join(logical.trim_start_matches('/'));
            let inside = self
                .raw
                .directories
                .iter()
                .any(|d| b.directory.starts_with(local(&d.path)));
            if inside {
                return Err(at(
                    backup_line,
                    format!(
                        "backups must not be kept inside a synchronised directory ({})",
                        b.directory.display()
                    ),
                ));
            }
        }
        let on_conflict = on_conflict.unwrap_or_default();
        if on_conflict == OnConflict::Newest && backup.is_none() {
            return Err(at(
                on_conflict_line,
                "on_conflict = \"newest\" needs a backup: the losing version of a conflict is \
                 kept in the backups, never beside the file in the directory; configure \
                 backup { directory = \"/var/lib/gosyncd/backups\" } at the top level or in \
                 this directory block (with keep above 0)"
                    .into(),
            ));
        }
        let hooks = Hooks {
            validate: validate.clone(),
            on_change: on_change.clone(),
            run_on: run_on.unwrap_or(RunOn::Both),
            ..timing.clone()
        };
        paths::check_normalized(path).map_err(|m| at(line, m))?;
        if let Some(other) = earlier.iter().find(|d| overlaps(path, &d.path)) {
            return Err(self.source.at(
                *line,
                format!("directory {path:?} overlaps directory {:?}", other.path),
            ));
        }
        let editor = self.raw.editor_excludes.unwrap_or(true);
        let excludes = Excludes::with_editor_defaults(path, excludes, editor)
            .map_err(|m| at(exclude_line, m))?;
        Ok(Directory {
            path: path.clone(),
            excludes,
            backup,
            hooks,
            on_conflict,
        })
    }

    /// `state_directory`: absolute, and outside every synchronised directory (its spool
    /// and lock must not be synchronised: a peer could replace them).
    fn state_directory(
        &self,
        root: &Path,
        directories: &[Directory],
    ) -> Result<PathBuf, ConfigError> {
        let err = |message: String| self.source.err(Some("state_directory"), message);
        let state_directory = PathBuf::from(
            self.get("state_directory")
                .unwrap_or_else(|| DEFAULT_STATE_DIRECTORY.into()),
        );
        if !state_directory.is_absolute() {
            return Err(err(format!(
                "state_directory: {:?} is not an absolute path",
                state_directory.display().to_string()
            )));
        }
        if let Some(dir) = directories
            .iter()
            .find(|d| state_directory.starts_with(root.join(d.path.trim_start_matches('/'))))
        {
            return Err(err(format!(
                "state_directory {:?} is inside the synchronised directory {:?}: give it a place of its own",
                state_directory.display().to_string(),
                dir.path
            )));
        }
        Ok(state_directory)
    }
}
