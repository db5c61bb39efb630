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
//! `allow_from` entries, `excludes` builds and matches exclude rules, and `conflict`
//! reads a directory's `on_conflict`. Their public items are re-exported from here, so
//! callers name them as `config::Item`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::paths::is_within;

mod addresses;
mod conflict;
mod duration;
mod excludes;
mod hooks;
pub mod limits;
mod raw;
mod read;
#[cfg(test)]
mod tests;

pub use addresses::{
    parse_allow_entry, parse_bind_address, parse_remote, AllowEntry, BindAddress, Remote,
};
pub use conflict::OnConflict;
pub use excludes::{Excludes, EDITOR_EXCLUDES};
pub use hooks::{Backup, BackupBlock, Hooks, RunOn, Side, DEFAULT_ACTION_TIMEOUT};
pub use limits::Limits;
use raw::Lines;

/// The `role` key's values: defined with the status route's types, which announce it.
pub use crate::protocol::Role;

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
    pub hooks: Hooks,
    /// What a received change that conflicts with this node's own edit comes to
    /// (`on_conflict`). `Newest` only with a `backup`: the losing version is kept there.
    pub on_conflict: OnConflict,
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
    /// Whether this node pushes its own edits (`send-receive`, the default) or only
    /// applies what its peers push (`receive-only`).
    pub role: Role,
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
        read::config(text, file)
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
