//! The HCL configuration file, turned once into a validated [`Config`]. Nothing else in
//! gosyncd sees the raw file.
//!
//! Parsing is split into [`Config::from_str`] (pure, tested on fixtures) and
//! [`Config::from_file`] (reads the file and checks that the files it names can be read).
//!
//! This module owns [`Config`], its [`Directory`] entries, [`ConfigError`] and the
//! validation that gives values their meaning. The children do one step each and never
//! build a `Config`: `raw` reads the HCL text as written (literal values, `directory`
//! blocks, line numbers), `addresses` parses the bind address, the remotes and the
//! `allow_from` entries, and `excludes` builds and matches exclude rules. Their public
//! items are re-exported from here, so callers name them as `config::Item`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hcl::{Body, Expression, Structure};

use crate::paths::{self, is_within};

mod actions;
mod addresses;
mod duration;
mod excludes;
pub mod limits;
mod raw;
#[cfg(test)]
mod tests;

pub use actions::{Actions, Backup, BackupBlock, RunOn, Side, DEFAULT_ACTION_TIMEOUT};
pub use addresses::{
    parse_allow_entry, parse_bind_address, parse_remote, AllowEntry, BindAddress, Remote,
};
pub use excludes::{Excludes, EDITOR_EXCLUDES};
pub use limits::Limits;
use raw::{
    directory_block, hcl_error, string_list, string_value, type_name, unknown_key_message, Lines,
    Raw, RawDirectory, KNOWN_KEYS,
};

/// Where the daemon and the CLI look for the configuration when `-config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gosyncd/config.hcl";

/// The watcher's settle window: how long a burst of edits must have been quiet, every
/// file it wrote closed, before it is pushed.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);

/// How long a file may stay open for writing before the watcher stops waiting for its
/// close and pushes it as it is, when `open_write_timeout` is not given.
pub const DEFAULT_OPEN_WRITE_TIMEOUT: Duration = Duration::from_secs(600);

/// Where a daemon keeps its spool of undelivered changes when `state_directory` is not
/// given.
pub const DEFAULT_STATE_DIRECTORY: &str = "/var/lib/gosyncd";

/// How often a daemon compares its trees with each peer's when `reconcile_interval` is
/// not given.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(300);

/// The default `max_delete_share`: half of a directory.
pub const DEFAULT_MAX_DELETE_SHARE: f64 = 0.5;

/// A configuration error: names the file, the key and, when known, the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// One configured directory.
#[derive(Debug, Clone)]
pub struct Directory {
    /// The logical path, absolute and normalised (`/etc/haproxy`).
    pub path: String,
    pub excludes: Excludes,
    /// Where previous versions replaced by a sync are kept, if anywhere.
    pub backup: Option<Backup>,
    /// `validate` and `on_change`.
    pub actions: Actions,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this came from.
    pub file: PathBuf,
    pub bind_address: BindAddress,
    pub remotes: Vec<Remote>,
    pub tls_ca_certificate: PathBuf,
    pub tls_certificate: PathBuf,
    pub tls_private_key: PathBuf,
    /// The local prefix under which the configured directories live (`/` by default).
    pub root: PathBuf,
    pub directories: Vec<Directory>,
    /// The watcher's settle window: a burst is pushed once every file it wrote is closed
    /// and this long has passed without an event.
    pub debounce: Duration,
    /// How long the watcher waits for a file open for writing to be closed before it
    /// pushes it anyway, with a warning.
    pub open_write_timeout: Duration,
    /// Client addresses allowed to read and write this node's trees (`allow_from`);
    /// `None`: the addresses the `remotes` hosts resolve to.
    pub allow_from: Option<Vec<AllowEntry>>,
    /// The `limits { ... }` block over the defaults.
    pub limits: Limits,
    /// Where the daemon serves Prometheus metrics (plain HTTP), if anywhere.
    pub metrics_address: Option<SocketAddr>,
    /// The share of a configured directory's entries on a peer above which a `sync`
    /// that deletes them is refused without `--force`.
    pub max_delete_share: f64,
    /// Where the daemon keeps its spool of changes not yet delivered, and its lock.
    pub state_directory: PathBuf,
    /// How often the daemon compares its trees with each peer's, to find drift.
    pub reconcile_interval: Duration,
    /// Whether a peer may give a received file the setuid or setgid bit.
    pub allow_setid: bool,
    /// Whether a peer may make a configured directory itself group- or world-writable.
    pub allow_writable_directories: bool,
}

impl Config {
    /// Reads and validates the file, including that the TLS files it names can be read.
    pub fn from_file(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: None,
            message: format!("cannot read the configuration: {e}"),
        })?;
        let config = Config::from_str(&text, file)?;
        for (key, path) in [
            ("tls_ca_certificate", &config.tls_ca_certificate),
            ("tls_certificate", &config.tls_certificate),
            ("tls_private_key", &config.tls_private_key),
        ] {
            if let Err(e) = std::fs::File::open(path) {
                return Err(config.error_at(
                    &text,
                    key,
                    format!("{key}: cannot read {}: {e}", path.display()),
                ));
            }
        }
        if !config.root.is_dir() {
            return Err(config.error_at(
                &text,
                "root",
                format!("root: {} is not a directory", config.root.display()),
            ));
        }
        Ok(config)
    }

    /// Parses and validates configuration text. `file` names the source in messages and
    /// anchors relative TLS file paths (they are relative to the file's directory).
    pub fn from_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let body: Body = hcl::parse(text).map_err(|e| hcl_error(file, &e.to_string()))?;
        let lines = Lines::of(text);
        // An error on a line, and one on a top-level key (the line it is set on).
        let at = |line: Option<usize>, message: String| ConfigError {
            file: file.to_path_buf(),
            line,
            message,
        };
        let err =
            |key: Option<&str>, message: String| at(key.and_then(|k| lines.of_key(k)), message);

        let mut raw = Raw::default();
        for (index, structure) in body.into_iter().enumerate() {
            let here = lines.at(index);
            match structure {
                Structure::Attribute(attr) => {
                    let key = attr.key.as_str().to_string();
                    // A key set twice is refused by the HCL parser itself.
                    if !KNOWN_KEYS.contains(&key.as_str()) {
                        return Err(at(here, unknown_key_message(&key)));
                    }
                    let value = attr.expr;
                    match key.as_str() {
                        "max_delete_share" => {
                            let share = match &value {
                                Expression::Number(n) => n.as_f64(),
                                _ => None,
                            }
                            .filter(|v| (0.0..=1.0).contains(v))
                            .ok_or_else(|| {
                                err(
                                    Some(&key),
                                    format!(
                                        "{key}: expected a number from 0 to 1 (such as 0.5 for half), found {}",
                                        type_name(&value)
                                    ),
                                )
                            })?;
                            raw.max_delete_share = Some(share);
                        }
                        "editor_excludes" | "allow_setid" | "allow_writable_directories" => {
                            match value {
                                Expression::Bool(b) if key == "editor_excludes" => {
                                    raw.editor_excludes = Some(b)
                                }
                                Expression::Bool(b) => raw.flags.push((key.clone(), b)),
                                other => {
                                    return Err(err(
                                        Some(&key),
                                        format!(
                                            "{key}: expected true or false, found {}",
                                            type_name(&other)
                                        ),
                                    ))
                                }
                            }
                        }
                        "remotes" => {
                            raw.remotes =
                                Some(string_list(&key, &value).map_err(|m| err(Some(&key), m))?)
                        }
                        "allow_from" => {
                            raw.allow_from =
                                Some(string_list(&key, &value).map_err(|m| err(Some(&key), m))?)
                        }
                        _ => {
                            let s = string_value(&key, &value).map_err(|m| err(Some(&key), m))?;
                            raw.strings.push((key, s));
                        }
                    }
                }
                Structure::Block(block) => {
                    let name = block.identifier.as_str().to_string();
                    if name == "limits" {
                        if raw.limits.is_some() {
                            return Err(at(here, "limits: set more than once".into()));
                        }
                        raw.limits = Some(
                            Limits::from_block(block)
                                .map_err(|(key, m)| at(lines.within(index, &key), m))?,
                        );
                        continue;
                    }
                    if name == "backup" {
                        if raw.backup.is_some() {
                            return Err(at(here, "backup: set more than once".into()));
                        }
                        raw.backup = Some(BackupBlock::from_block(block).map_err(|m| at(here, m))?);
                        continue;
                    }
                    if name != "directory" {
                        return Err(at(here, unknown_key_message(&name)));
                    }
                    let mut directory = directory_block(block).map_err(|m| at(here, m))?;
                    directory.line = here;
                    directory.exclude_line = lines.within(index, "exclude");
                    directory.backup_line = lines
                        .inside(index, "backup")
                        .or_else(|| lines.of_key("backup"))
                        .or(here);
                    raw.directories.push(directory);
                }
            }
        }

        let get = |key: &str| {
            raw.strings
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        // A duration key within bounds, or its default when absent.
        let duration = |key: &str,
                        default: Duration,
                        (least, most): (Duration, Duration),
                        range: &'static str,
                        example: &'static str| {
            let bounds = duration::Bounds {
                least,
                most,
                range,
                example,
            };
            match get(key) {
                None => Ok(default),
                Some(text) => duration::bounded(&text, &bounds)
                    .map_err(|why| err(Some(key), format!("{key}: {why}"))),
            }
        };
        let required = |key: &str| {
            get(key).ok_or_else(|| err(None, format!("{key}: required key is missing")))
        };
        let relative_to_file = |p: String| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                file.parent().unwrap_or(Path::new(".")).join(p)
            }
        };

        let bind_text = required("bind_address")?;
        let bind_address = parse_bind_address(&bind_text)
            .map_err(|m| err(Some("bind_address"), format!("bind_address: {m}")))?;

        let remotes_text = raw
            .remotes
            .ok_or_else(|| err(None, "remotes: required key is missing".into()))?;
        let mut remotes: Vec<Remote> = Vec::new();
        for entry in remotes_text {
            let remote =
                parse_remote(&entry).map_err(|m| err(Some("remotes"), format!("remotes: {m}")))?;
            if remotes
                .iter()
                .any(|r| r.host == remote.host && r.port == remote.port)
            {
                return Err(err(
                    Some("remotes"),
                    format!("remotes: {entry:?} is listed twice"),
                ));
            }
            remotes.push(remote);
        }

        let root = PathBuf::from(get("root").unwrap_or_else(|| "/".into()));
        if !root.is_absolute() {
            return Err(err(
                Some("root"),
                format!(
                    "root: {:?} is not an absolute path",
                    root.display().to_string()
                ),
            ));
        }

        let mut directories: Vec<Directory> = Vec::new();
        let metrics_address = match get("metrics_address") {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                err(
                    Some("metrics_address"),
                    format!("metrics_address: {text:?} is not an address and port (such as \"127.0.0.1:9105\")"),
                )
            })?),
        };
        let action_timeout = duration(
            "action_timeout",
            DEFAULT_ACTION_TIMEOUT,
            (Duration::from_secs(1), Duration::from_secs(3600)),
            "1s and 1h",
            "60s",
        )?;
        let raw_paths: Vec<String> = raw.directories.iter().map(|d| d.path.clone()).collect();
        for raw_dir in raw.directories {
            let RawDirectory {
                path,
                line,
                exclude_line,
                backup_line,
                exclude: excludes,
                backup,
                validate,
                on_change,
                run_on,
            } = raw_dir;
            let backup = BackupBlock::resolve(raw.backup.as_ref(), backup.as_ref())
                .map_err(|m| at(backup_line, format!("directory {path:?}: {m}")))?;
            if let Some(b) = &backup {
                let local = |logical: &str| root.join(logical.trim_start_matches('/'));
                let inside = raw_paths.iter().any(|p| b.directory.starts_with(local(p)));
                if inside {
                    return Err(at(
                        backup_line,
                        format!(
                            "directory {path:?}: backups must not be kept inside a synchronised directory ({})",
                            b.directory.display()
                        ),
                    ));
                }
            }
            let actions = Actions {
                validate,
                on_change,
                run_on: run_on.unwrap_or(RunOn::Both),
                timeout: action_timeout,
            };
            paths::check_normalized(&path)
                .map_err(|m| at(line, format!("directory {path:?}: {m}")))?;
            if let Some(other) = directories
                .iter()
                .find(|d| is_within(&path, &d.path) || is_within(&d.path, &path))
            {
                return Err(at(
                    line,
                    format!("directory {path:?} overlaps directory {:?}", other.path),
                ));
            }
            let editor = raw.editor_excludes.unwrap_or(true);
            let excludes = Excludes::with_editor_defaults(&path, &excludes, editor)
                .map_err(|m| at(exclude_line, format!("directory {path:?}: {m}")))?;
            directories.push(Directory {
                path,
                excludes,
                backup,
                actions,
            });
        }
        if directories.is_empty() {
            return Err(err(
                None,
                "no directory block: nothing to synchronise".into(),
            ));
        }

        let allow_from = match raw.allow_from {
            None => None,
            Some(entries) => Some(
                entries
                    .iter()
                    .map(|e| parse_allow_entry(e))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| err(Some("allow_from"), format!("allow_from: {m}")))?,
            ),
        };

        let debounce = duration(
            "debounce",
            DEFAULT_DEBOUNCE,
            (Duration::from_millis(1), Duration::from_secs(60)),
            "1ms and 60s",
            "20ms",
        )?;
        let open_write_timeout = duration(
            "open_write_timeout",
            DEFAULT_OPEN_WRITE_TIMEOUT,
            (Duration::from_secs(1), Duration::from_secs(86_400)),
            "1s and 24h",
            "10m",
        )?;

        let state_directory =
            PathBuf::from(get("state_directory").unwrap_or_else(|| DEFAULT_STATE_DIRECTORY.into()));
        if !state_directory.is_absolute() {
            return Err(err(
                Some("state_directory"),
                format!(
                    "state_directory: {:?} is not an absolute path",
                    state_directory.display().to_string()
                ),
            ));
        }
        // Its spool and lock must not be synchronised: a peer could replace them.
        if let Some(dir) = directories
            .iter()
            .find(|d| state_directory.starts_with(root.join(d.path.trim_start_matches('/'))))
        {
            return Err(err(
                Some("state_directory"),
                format!(
                    "state_directory {:?} is inside the synchronised directory {:?}: give it a place of its own",
                    state_directory.display().to_string(),
                    dir.path
                ),
            ));
        }
        let reconcile_interval = duration(
            "reconcile_interval",
            DEFAULT_RECONCILE_INTERVAL,
            (Duration::from_secs(1), Duration::from_secs(86_400)),
            "1s and 24h",
            "5m",
        )?;
        let flag = |key: &str| {
            raw.flags
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .is_some_and(|(_, on)| *on)
        };

        Ok(Config {
            file: file.to_path_buf(),
            state_directory,
            reconcile_interval,
            bind_address,
            remotes,
            tls_ca_certificate: relative_to_file(required("tls_ca_certificate")?),
            tls_certificate: relative_to_file(required("tls_certificate")?),
            tls_private_key: relative_to_file(required("tls_private_key")?),
            root,
            directories,
            debounce,
            open_write_timeout,
            allow_from,
            limits: raw.limits.unwrap_or_default(),
            max_delete_share: raw.max_delete_share.unwrap_or(DEFAULT_MAX_DELETE_SHARE),
            allow_setid: flag("allow_setid"),
            allow_writable_directories: flag("allow_writable_directories"),
            metrics_address,
        })
    }

    fn error_at(&self, text: &str, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: Lines::of(text).of_key(key),
            message,
        }
    }

    /// Where a logical path lives on this host.
    pub fn local_path(&self, logical: &str) -> PathBuf {
        self.root.join(logical.trim_start_matches('/'))
    }

    /// The logical path of a local path under `root`, when it lies in a configured
    /// directory.
    pub fn logical_path(&self, local: &Path) -> Option<String> {
        let rel = local.strip_prefix(&self.root).ok()?.to_str()?;
        let logical = format!("/{}", rel.trim_end_matches('/'));
        self.directory_of(&logical).map(|_| logical)
    }

    /// The configured directory containing a logical path.
    pub fn directory_of(&self, logical: &str) -> Option<&Directory> {
        self.directories
            .iter()
            .find(|d| is_within(logical, &d.path))
    }

    /// Logical paths grouped by the configured directory holding them (paths outside
    /// every directory are left out).
    pub fn by_directory(
        &self,
        paths: impl IntoIterator<Item = String>,
    ) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for path in paths {
            if let Some(dir) = self.directory_of(&path) {
                out.entry(dir.path.clone()).or_default().push(path);
            }
        }
        out
    }
}
