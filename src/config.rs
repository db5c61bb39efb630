//! The HCL configuration file, turned once into a validated [`Config`]. Nothing else in
//! gosyncd sees the raw file.
//!
//! Parsing is split into [`Config::from_str`] (pure, tested on fixtures) and
//! [`Config::from_file`] (reads the file and checks that the files it names can be read).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use hcl::{Block, Body, Expression, Structure};

use crate::actions::{Actions, Backup, BackupBlock, RunOn, DEFAULT_ACTION_TIMEOUT};
use crate::limits::Limits;
use crate::paths::{self, is_within};

/// Where the daemon and the CLI look for the configuration when `-config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gosyncd/config.hcl";

/// How long the watcher waits for a burst of edits to end before pushing it.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(150);

/// Editors' temporary and backup files, excluded everywhere unless
/// `editor_excludes = false`: vim's swap files and its write test `4913`, backups `*~`,
/// emacs lock and auto-save files.
pub const EDITOR_EXCLUDES: &[&str] = &[".*.swp", ".*.swx", "*~", "4913", ".#*", "#*#"];

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

/// The address the daemon listens on. `ip == None` means every address (`":8080"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress {
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl BindAddress {
    /// The address outgoing connections are made from: the one named, if any
    /// (`":8080"` and `"0.0.0.0:8080"` name none).
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.ip.filter(|ip| !ip.is_unspecified())
    }
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            None => write!(f, ":{}", self.port),
            Some(ip) => write!(f, "{}", SocketAddr::new(ip, self.port)),
        }
    }
}

/// A peer as listed in `remotes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Host name or IP address (without brackets).
    pub host: String,
    pub port: u16,
    /// The entry as written in the config; this is how the peer is named in output.
    pub label: String,
}

impl Remote {
    /// The base URL of the peer's API.
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }
}

/// The exclude rules of one directory.
#[derive(Debug, Clone)]
pub struct Excludes {
    /// The entries as written, sent to peers so they can honour them.
    pub entries: Vec<String>,
    /// Absolute entries: the path and everything below it.
    paths: Vec<String>,
    /// Entries without a leading `/`: globs matched against file names.
    names: GlobSet,
}

impl Excludes {
    /// Builds the rules of directory `dir` from its entries.
    pub fn new(dir: &str, entries: &[String]) -> Result<Excludes, String> {
        Excludes::with_editor_defaults(dir, entries, false)
    }

    /// Builds the rules of directory `dir` from its entries, plus [`EDITOR_EXCLUDES`]
    /// when `editor` is set.
    pub fn with_editor_defaults(
        dir: &str,
        entries: &[String],
        editor: bool,
    ) -> Result<Excludes, String> {
        let defaults = EDITOR_EXCLUDES.iter().map(|e| e.to_string());
        let entries: Vec<String> = if editor {
            entries.iter().cloned().chain(defaults).collect()
        } else {
            entries.to_vec()
        };
        let entries = entries.as_slice();
        let mut paths = Vec::new();
        let mut names = GlobSetBuilder::new();
        for entry in entries {
            if entry.starts_with('/') {
                paths::check_normalized(entry).map_err(|e| format!("exclude {entry:?}: {e}"))?;
                if !is_within(entry, dir) || entry == dir {
                    return Err(format!(
                        "exclude {entry:?} is not inside its directory {dir:?}"
                    ));
                }
                paths.push(entry.clone());
            } else {
                if entry.is_empty() || entry.contains('/') {
                    return Err(format!(
                        "exclude {entry:?}: a pattern without a leading '/' matches file names and cannot contain '/'"
                    ));
                }
                let glob = GlobBuilder::new(entry)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| format!("exclude {entry:?}: {e}"))?;
                names.add(glob);
            }
        }
        let names = names
            .build()
            .map_err(|e| format!("exclude patterns: {e}"))?;
        Ok(Excludes {
            entries: entries.to_vec(),
            paths,
            names,
        })
    }

    /// Whether a logical path is excluded, either by an absolute entry or because its
    /// own name matches a pattern. Callers that walk trees prune excluded directories,
    /// so a name pattern excludes everything below a matching directory too; the
    /// receiver checks every component for the same effect.
    pub fn is_excluded(&self, path: &str) -> bool {
        self.paths.iter().any(|p| is_within(path, p)) || self.names.is_match(paths::file_name(path))
    }

    /// Whether `path` or any of its ancestors below `dir` is excluded.
    pub fn excludes_any_component(&self, dir: &str, path: &str) -> bool {
        let mut current = dir.to_string();
        for component in paths::components_below(path, dir) {
            current.push('/');
            current.push_str(component);
            if self.is_excluded(&current) {
                return true;
            }
        }
        false
    }
}

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
    /// The watcher's quiet period before it pushes a burst of edits.
    pub debounce: Duration,
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
}

/// One `allow_from` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// An address or a network, such as `10.0.0.7` or `10.0.0.0/24`.
    Net(ipnet::IpNet),
    /// A host name, resolved when the daemon starts and again when an unknown address
    /// calls.
    Host(String),
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowEntry::Net(net) => write!(f, "{net}"),
            AllowEntry::Host(host) => write!(f, "{host}"),
        }
    }
}

/// Parses an `allow_from` entry: an IP address, a network in CIDR form, or a host name.
pub fn parse_allow_entry(text: &str) -> Result<AllowEntry, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(AllowEntry::Net(net.trunc()));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(AllowEntry::Net(ipnet::IpNet::from(ip)));
    }
    let is_name = !text.is_empty()
        && !text.starts_with(['-', '.'])
        // Top-level domains are never numeric: "10.0.0.300" is a mistyped address.
        && !text.rsplit('.').next().is_some_and(|label| label.chars().all(|c| c.is_ascii_digit()))
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if is_name {
        Ok(AllowEntry::Host(text.to_string()))
    } else {
        Err(format!(
            "{text:?} is not an IP address, a network (such as \"10.0.0.0/24\") or a host name"
        ))
    }
}

/// The default `max_delete_share`: half of a directory.
pub const DEFAULT_MAX_DELETE_SHARE: f64 = 0.5;

const KNOWN_KEYS: &[&str] = &[
    "bind_address",
    "remotes",
    "tls_ca_certificate",
    "tls_certificate",
    "tls_private_key",
    "root",
    "debounce",
    "editor_excludes",
    "allow_from",
    "max_delete_share",
    "action_timeout",
    "metrics_address",
    "directory",
    "limits",
    "backup",
];

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
        let err = |key: Option<&str>, message: String| ConfigError {
            file: file.to_path_buf(),
            line: key.and_then(|k| line_of(text, k)),
            message,
        };
        let body: Body = hcl::parse(text).map_err(|e| hcl_error(file, &e.to_string()))?;

        let mut raw = Raw::default();
        for structure in body.into_iter() {
            match structure {
                Structure::Attribute(attr) => {
                    let key = attr.key.as_str().to_string();
                    if !KNOWN_KEYS.contains(&key.as_str()) || key == "directory" || key == "limits"
                    {
                        return Err(err(Some(&key), unknown_key_message(&key)));
                    }
                    if raw.seen.contains(&key) {
                        return Err(err(Some(&key), format!("{key}: set more than once")));
                    }
                    raw.seen.push(key.clone());
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
                        "editor_excludes" => match value {
                            Expression::Bool(b) => raw.editor_excludes = Some(b),
                            other => {
                                return Err(err(
                                    Some(&key),
                                    format!(
                                        "{key}: expected true or false, found {}",
                                        type_name(&other)
                                    ),
                                ))
                            }
                        },
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
                            return Err(err(Some("limits"), "limits: set more than once".into()));
                        }
                        raw.limits =
                            Some(Limits::from_block(block).map_err(|(key, m)| err(Some(&key), m))?);
                        continue;
                    }
                    if name == "backup" {
                        if raw.backup.is_some() {
                            return Err(err(Some("backup"), "backup: set more than once".into()));
                        }
                        raw.backup = Some(
                            BackupBlock::from_block(block).map_err(|m| err(Some("backup"), m))?,
                        );
                        continue;
                    }
                    if name != "directory" {
                        return Err(err(Some(&name), unknown_key_message(&name)));
                    }
                    raw.directories
                        .push(directory_block(block).map_err(|m| err(Some("directory"), m))?);
                }
            }
        }

        let get = |key: &str| {
            raw.strings
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
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
        let action_timeout = match get("action_timeout") {
            None => DEFAULT_ACTION_TIMEOUT,
            Some(text) => humantime::parse_duration(&text)
                .ok()
                .filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(3600))
                .ok_or_else(|| {
                    err(
                        Some("action_timeout"),
                        format!("action_timeout: {text:?} is not a duration between 1s and 1h (such as \"60s\")"),
                    )
                })?,
        };
        let raw_paths: Vec<String> = raw.directories.iter().map(|d| d.path.clone()).collect();
        for raw_dir in raw.directories {
            let RawDirectory {
                path,
                exclude: excludes,
                backup,
                validate,
                on_change,
                run_on,
            } = raw_dir;
            let backup = BackupBlock::resolve(raw.backup.as_ref(), backup.as_ref())
                .map_err(|m| err(Some("backup"), format!("directory {path:?}: {m}")))?;
            if let Some(b) = &backup {
                let local = |logical: &str| root.join(logical.trim_start_matches('/'));
                let inside = raw_paths.iter().any(|p| b.directory.starts_with(local(p)));
                if inside {
                    return Err(err(
                        Some("backup"),
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
                .map_err(|m| err(Some("directory"), format!("directory {path:?}: {m}")))?;
            if let Some(other) = directories
                .iter()
                .find(|d| is_within(&path, &d.path) || is_within(&d.path, &path))
            {
                return Err(err(
                    Some("directory"),
                    format!("directory {path:?} overlaps directory {:?}", other.path),
                ));
            }
            let editor = raw.editor_excludes.unwrap_or(true);
            let excludes = Excludes::with_editor_defaults(&path, &excludes, editor)
                .map_err(|m| err(Some("exclude"), format!("directory {path:?}: {m}")))?;
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

        let debounce = match get("debounce") {
            None => DEFAULT_DEBOUNCE,
            Some(text) => humantime::parse_duration(&text)
                .ok()
                .filter(|d| *d >= Duration::from_millis(10) && *d <= Duration::from_secs(60))
                .ok_or_else(|| {
                    err(
                        Some("debounce"),
                        format!("debounce: {text:?} is not a duration between 10ms and 60s (such as \"150ms\")"),
                    )
                })?,
        };

        Ok(Config {
            file: file.to_path_buf(),
            bind_address,
            remotes,
            tls_ca_certificate: relative_to_file(required("tls_ca_certificate")?),
            tls_certificate: relative_to_file(required("tls_certificate")?),
            tls_private_key: relative_to_file(required("tls_private_key")?),
            root,
            directories,
            debounce,
            allow_from,
            limits: raw.limits.unwrap_or_default(),
            max_delete_share: raw.max_delete_share.unwrap_or(DEFAULT_MAX_DELETE_SHARE),
            metrics_address,
        })
    }

    fn error_at(&self, text: &str, key: &str, message: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: line_of(text, key),
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

#[derive(Default)]
struct Raw {
    seen: Vec<String>,
    strings: Vec<(String, String)>,
    remotes: Option<Vec<String>>,
    allow_from: Option<Vec<String>>,
    limits: Option<Limits>,
    max_delete_share: Option<f64>,
    editor_excludes: Option<bool>,
    directories: Vec<RawDirectory>,
    backup: Option<BackupBlock>,
}

/// Condenses the parser's multi-line report into one line that keeps the line number.
fn hcl_error(file: &Path, report: &str) -> ConfigError {
    let line = report
        .split("line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    let reason = report
        .rsplit("= ")
        .next()
        .unwrap_or(report)
        .lines()
        .next()
        .unwrap_or_default()
        .trim();
    ConfigError {
        file: file.to_path_buf(),
        line,
        message: format!("invalid HCL: {reason}"),
    }
}

fn unknown_key_message(key: &str) -> String {
    format!(
        "unknown key {key:?} (known keys: {})",
        KNOWN_KEYS.join(", ")
    )
}

fn string_value(key: &str, value: &Expression) -> Result<String, String> {
    match value {
        Expression::String(s) => Ok(s.clone()),
        other => Err(format!(
            "{key}: expected a string, found {}",
            type_name(other)
        )),
    }
}

fn string_list(key: &str, value: &Expression) -> Result<Vec<String>, String> {
    match value {
        Expression::Array(items) => items
            .iter()
            .map(|item| match item {
                Expression::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "{key}: expected a list of strings, found an element that is {}",
                    type_name(other)
                )),
            })
            .collect(),
        other => Err(format!(
            "{key}: expected a list of strings, found {}",
            type_name(other)
        )),
    }
}

fn type_name(value: &Expression) -> &'static str {
    match value {
        Expression::Null => "null",
        Expression::Bool(_) => "a boolean",
        Expression::Number(_) => "a number",
        Expression::String(_) => "a string",
        Expression::Array(_) => "a list",
        Expression::Object(_) => "an object",
        Expression::TemplateExpr(_) => "a template (interpolation is not supported)",
        _ => "an expression (only literal values are supported)",
    }
}

/// A `directory` block as written.
struct RawDirectory {
    path: String,
    exclude: Vec<String>,
    backup: Option<BackupBlock>,
    validate: Option<String>,
    on_change: Vec<String>,
    run_on: Option<RunOn>,
}

fn directory_block(block: Block) -> Result<RawDirectory, String> {
    let [label] = block.labels.as_slice() else {
        return Err(format!(
            "directory: expected one label, the directory path (directory \"/etc/haproxy\" {{ ... }}), found {}",
            block.labels.len()
        ));
    };
    let path = label.as_str().to_string();
    let mut out = RawDirectory {
        path: path.clone(),
        exclude: Vec::new(),
        backup: None,
        validate: None,
        on_change: Vec::new(),
        run_on: None,
    };
    let within = |m: String| format!("directory {path:?}: {m}");
    for structure in block.body.into_iter() {
        match structure {
            Structure::Attribute(attr) => {
                let key = attr.key.as_str();
                match key {
                    "exclude" => out.exclude = string_list(key, &attr.expr).map_err(within)?,
                    "validate" => {
                        let command = string_value(key, &attr.expr).map_err(within)?;
                        if command.trim().is_empty() {
                            return Err(within("validate: the command is empty".into()));
                        }
                        out.validate = Some(command);
                    }
                    "on_change" => {
                        out.on_change = match &attr.expr {
                            Expression::String(s) => vec![s.clone()],
                            _ => string_list(key, &attr.expr).map_err(within)?,
                        };
                        if out.on_change.iter().any(|c| c.trim().is_empty()) {
                            return Err(within("on_change: a command is empty".into()));
                        }
                    }
                    "run_on" => {
                        let text = string_value(key, &attr.expr).map_err(within)?;
                        out.run_on = Some(RunOn::parse(&text).map_err(within)?);
                    }
                    other => {
                        return Err(within(format!(
                            "unknown key {other:?} (known keys: exclude, validate, on_change, run_on, and a backup block)"
                        )))
                    }
                }
            }
            Structure::Block(inner) if inner.identifier.as_str() == "backup" => {
                out.backup = Some(BackupBlock::from_block(inner).map_err(within)?);
            }
            Structure::Block(inner) => {
                return Err(within(format!(
                    "unknown block {:?}",
                    inner.identifier.as_str()
                )))
            }
        }
    }
    Ok(out)
}

/// Parses `":8080"`, `"ip:port"` or `"[v6]:port"`.
pub fn parse_bind_address(text: &str) -> Result<BindAddress, String> {
    if let Some(port) = text.strip_prefix(':') {
        return Ok(BindAddress {
            ip: None,
            port: parse_port(port, text)?,
        });
    }
    let (host, port) = split_host_port(text)?;
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("{text:?}: {host:?} is not an IP address (use \":{port}\" for every address)")
    })?;
    Ok(BindAddress {
        ip: Some(ip),
        port: parse_port(port, text)?,
    })
}

/// Parses `"host:port"` or `"[v6]:port"`; the port is required.
pub fn parse_remote(text: &str) -> Result<Remote, String> {
    let (host, port) = split_host_port(text)?;
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if host.contains(':') && host.parse::<IpAddr>().is_err() {
        return Err(format!("{text:?}: {host:?} is not an IPv6 address"));
    }
    if !host.contains(':')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(format!("{text:?}: {host:?} is not a valid host name"));
    }
    Ok(Remote {
        host: host.to_string(),
        port: parse_port(port, text)?,
        label: text.to_string(),
    })
}

fn split_host_port(text: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: missing ']'"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{text:?}: missing port (write \"[{host}]:8080\")"))?;
        return Ok((host, port));
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err(format!(
            "{text:?}: an IPv6 address must be in brackets, as \"[{host}]:port\""
        )),
        Some((host, port)) => Ok((host, port)),
        None => Err(format!("{text:?}: missing port (write \"{text}:8080\")")),
    }
}

fn parse_port(port: &str, text: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{text:?}: {port:?} is not a port number (1-65535)")),
    }
}

/// The 1-based line where `key` is first set, for messages (HCL values carry no spans).
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.starts_with([' ', '\t', '=', '"', '{']) || rest.is_empty())
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
bind_address = ":8080"

# List all the nodes in the group, self IP address will be blacklisted
remotes = [
  "172.17.0.2:8080",
  "172.17.0.3:8080"
]

tls_ca_certificate = "/etc/gosyncd/gosyncd.crt"
tls_certificate = "/etc/gosyncd/gosyncd.crt"
tls_private_key = "/etc/gosyncd/gosyncd.key"

directory "/etc/haproxy" {
  exclude = [
    "/etc/haproxy/errors"
  ]
}

directory "/foo/bar" {
}
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(text, Path::new("/etc/gosyncd/config.hcl"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn seed_example_parses() {
        let c = parse(SEED).unwrap();
        assert_eq!(
            c.bind_address,
            BindAddress {
                ip: None,
                port: 8080
            }
        );
        assert_eq!(c.remotes.len(), 2);
        assert_eq!(c.remotes[1].label, "172.17.0.3:8080");
        assert_eq!(c.tls_certificate, PathBuf::from("/etc/gosyncd/gosyncd.crt"));
        assert_eq!(c.root, PathBuf::from("/"));
        assert_eq!(c.directories.len(), 2);
        assert_eq!(c.directories[1].path, "/foo/bar");
        assert!(c.directories[0]
            .excludes
            .is_excluded("/etc/haproxy/errors/503.http"));
    }

    #[test]
    fn bind_addresses_parse_in_every_form() {
        assert_eq!(parse_bind_address(":8080").unwrap().ip, None);
        let v4 = parse_bind_address("127.0.0.2:9000").unwrap();
        assert_eq!(v4.ip, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(v4.port, 9000);
        let v6 = parse_bind_address("[::1]:8080").unwrap();
        assert_eq!(v6.ip, Some("::1".parse().unwrap()));
        assert!(parse_bind_address("8080")
            .unwrap_err()
            .contains("missing port"));
        assert!(parse_bind_address("host:8080")
            .unwrap_err()
            .contains("not an IP address"));
        assert!(parse_bind_address(":0").unwrap_err().contains("not a port"));
    }

    #[test]
    fn remotes_need_a_port_and_accept_host_names() {
        let r = parse_remote("node-1.example.com:8080").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("node-1.example.com", 8080));
        assert_eq!(r.url(), "https://node-1.example.com:8080");
        let r = parse_remote("[fd00::2]:8080").unwrap();
        assert_eq!(r.url(), "https://[fd00::2]:8080");
        assert!(parse_remote("172.17.0.2")
            .unwrap_err()
            .contains("missing port"));
        assert!(parse_remote("fd00::2:8080")
            .unwrap_err()
            .contains("brackets"));
        assert!(parse_remote("a/b:80").unwrap_err().contains("host name"));
    }

    #[test]
    fn invalid_configs_are_refused_with_file_key_and_line() {
        let cases: &[(&str, &str)] = &[
            (
                "bind_adress = \":8080\"\n",
                "/etc/gosyncd/config.hcl:1: unknown key \"bind_adress\"",
            ),
            (
                &SEED.replace("bind_address = \":8080\"", "bind_address = 8080"),
                "config.hcl:2: bind_address: expected a string, found a number",
            ),
            (
                &SEED.replace("\"172.17.0.3:8080\"", "\"172.17.0.3\""),
                "config.hcl:5: remotes: \"172.17.0.3\": missing port",
            ),
            (
                &SEED.replace("\"/foo/bar\"", "\"foo/bar\""),
                "directory \"foo/bar\": path \"foo/bar\" is not absolute",
            ),
            (
                &SEED.replace("\"/foo/bar\"", "\"/etc/haproxy/conf.d\""),
                "directory \"/etc/haproxy/conf.d\" overlaps directory \"/etc/haproxy\"",
            ),
            (
                &SEED.replace("\"/etc/haproxy/errors\"", "\"/etc/nginx/errors\""),
                "exclude \"/etc/nginx/errors\" is not inside its directory \"/etc/haproxy\"",
            ),
            (
                &SEED.replace("tls_private_key = \"/etc/gosyncd/gosyncd.key\"", ""),
                "tls_private_key: required key is missing",
            ),
            (
                &SEED.replace("exclude = [", "exclud = ["),
                "directory \"/etc/haproxy\": unknown key \"exclud\"",
            ),
            (
                "bind_address = \n",
                "config.hcl:1: invalid HCL: invalid expression",
            ),
            (
                &format!("{SEED}\nremotes = []\n"),
                "config.hcl:23: invalid HCL: invalid attribute; expected unique attribute key",
            ),
        ];
        for (text, expected) in cases {
            let message = error(text);
            assert!(
                message.contains(expected),
                "expected {expected:?} in {message:?}"
            );
        }
    }

    #[test]
    fn exclude_paths_match_on_component_boundaries() {
        let ex = Excludes::new("/etc/haproxy", &["/etc/haproxy/err".into()]).unwrap();
        assert!(ex.is_excluded("/etc/haproxy/err"));
        assert!(ex.is_excluded("/etc/haproxy/err/500.http"));
        assert!(!ex.is_excluded("/etc/haproxy/errors.bak"));
        assert!(!ex.is_excluded("/etc/haproxy"));
    }

    #[test]
    fn exclude_globs_match_file_names_only() {
        let ex = Excludes::new("/etc/x", &["*.swp".into(), "*~".into(), ".#*".into()]).unwrap();
        assert!(ex.is_excluded("/etc/x/.a.cfg.swp"));
        assert!(ex.is_excluded("/etc/x/sub/a.cfg~"));
        assert!(ex.is_excluded("/etc/x/.#lock"));
        assert!(!ex.is_excluded("/etc/x/a.cfg"));
        assert!(!ex.is_excluded("/etc/x/swp"));
        assert!(ex.excludes_any_component("/etc/x", "/etc/x/dir~/inner.cfg"));
        assert!(!ex.excludes_any_component("/etc/x", "/etc/x/dir/inner.cfg"));
        assert!(Excludes::new("/etc/x", &["a/b".into()]).is_err());
    }

    #[test]
    fn example_config_in_contrib_parses() {
        let text = include_str!("../contrib/gosyncd.example.hcl");
        let c = parse(text).unwrap();
        assert_eq!(c.remotes.len(), 3);
        assert_eq!(c.directories[0].path, "/etc/haproxy");
        assert!(c.directories[0]
            .excludes
            .is_excluded("/etc/haproxy/.haproxy.cfg.swp"));
        assert!(c.directories[0]
            .excludes
            .is_excluded("/etc/haproxy/errors/503.http"));
        // The commented-out optional keys are valid, and the limits shown are the
        // defaults.
        let uncommented: String = text
            .lines()
            .map(|l| l.replacen("  # validate", "  validate", 1))
            .map(|l| l.replacen("  # on_change", "  on_change", 1))
            .collect::<Vec<_>>()
            .join("\n");
        let uncommented: String = uncommented
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with("allow_from")
                        || rest.starts_with("max_delete_share")
                        || rest.starts_with("backup")
                        || rest.starts_with("validate")
                        || rest.starts_with("on_change")
                        || rest.starts_with("root")
                        || rest.starts_with("limits")
                        || rest.starts_with("  ")
                        || rest == "}" =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = parse(&uncommented).unwrap();
        assert!(c.allow_from.is_some());
        let haproxy = &c.directories[0];
        assert_eq!(haproxy.backup.as_ref().unwrap().keep, 5);
        assert!(haproxy.actions.validate.is_some());
        assert_eq!(haproxy.actions.on_change.len(), 1);
        assert_eq!(c.limits, crate::limits::Limits::default());
    }

    #[test]
    fn debounce_and_editor_excludes_have_defaults_and_can_be_set() {
        let c = parse(SEED).unwrap();
        assert_eq!(c.debounce, DEFAULT_DEBOUNCE);
        let ex = &c.directories[0].excludes;
        for name in [
            ".haproxy.cfg.swp",
            ".x.swx",
            "haproxy.cfg~",
            "4913",
            ".#haproxy.cfg",
            "#haproxy.cfg#",
        ] {
            assert!(ex.is_excluded(&format!("/etc/haproxy/{name}")), "{name}");
        }
        assert!(!ex.is_excluded("/etc/haproxy/haproxy.cfg"));
        let text = format!("debounce = \"1s\"\neditor_excludes = false\n{SEED}");
        let c = parse(&text).unwrap();
        assert_eq!(c.debounce, Duration::from_secs(1));
        assert!(!c.directories[0].excludes.is_excluded("/etc/haproxy/x~"));
        assert!(error(&format!("debounce = \"soon\"\n{SEED}")).contains("config.hcl:1: debounce"));
        assert!(
            error(&format!("editor_excludes = \"no\"\n{SEED}")).contains("expected true or false")
        );
    }

    #[test]
    fn allow_from_takes_addresses_networks_and_host_names() {
        assert_eq!(parse(SEED).unwrap().allow_from, None);
        let text = format!(
            "allow_from = [\"10.0.0.7\", \"10.1.0.9/16\", \"2001:db8::/32\", \"lb-1.example\"]\n{SEED}"
        );
        let entries: Vec<String> = parse(&text)
            .unwrap()
            .allow_from
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            entries,
            [
                "10.0.0.7/32",
                "10.1.0.0/16",
                "2001:db8::/32",
                "lb-1.example"
            ]
        );
        for bad in ["10.0.0.0/33", "10.0.0.300", "-host", "a b", ""] {
            let message = error(&format!("\n\nallow_from = [\"{bad}\"]\n{SEED}"));
            assert!(
                message.contains("config.hcl:3: allow_from:")
                    && message.contains(&format!("{bad:?}")),
                "{bad:?}: {message}"
            );
        }
    }

    #[test]
    fn bad_actions_and_backups_are_refused_naming_the_key() {
        let with = |inner: &str, outer: &str| {
            SEED.replace(
                "directory \"/foo/bar\" {\n}",
                &format!("directory \"/foo/bar\" {{\n{inner}\n}}\n{outer}"),
            )
        };
        for (inner, outer, words) in [
            ("validate = \"  \"", "", "validate: the command is empty"),
            (
                "run_on = \"sometimes\"",
                "",
                "run_on: \"sometimes\" is not one of",
            ),
            ("on_change = [\"\"]", "", "on_change: a command is empty"),
            ("reload = \"x\"", "", "unknown key \"reload\""),
            ("backup {\n keep = 3\n}", "", "backup: no directory named"),
            (
                "",
                "backup {\n directory = \"var/b\"\n}",
                "is not an absolute path",
            ),
            (
                "",
                "backup {\n directory = \"/foo/bar/old\"\n}",
                "must not be kept inside",
            ),
        ] {
            let message = error(&with(inner, outer));
            assert!(message.contains(words), "{inner:?} {outer:?}: {message}");
            assert!(message.contains("config.hcl:"), "{message}");
        }
        let c = parse(&with("validate = \"true\"\nrun_on = \"local\"", "")).unwrap();
        let actions = &c.directories[1].actions;
        assert_eq!(actions.validate.as_deref(), Some("true"));
        assert_eq!(actions.run_on, crate::actions::RunOn::Local);
    }

    #[test]
    fn max_delete_share_is_a_fraction() {
        assert_eq!(
            parse(SEED).unwrap().max_delete_share,
            DEFAULT_MAX_DELETE_SHARE
        );
        let c = parse(&format!("max_delete_share = 0.9\n{SEED}")).unwrap();
        assert_eq!(c.max_delete_share, 0.9);
        for bad in ["1.5", "-0.1", "\"half\""] {
            let message = error(&format!("max_delete_share = {bad}\n{SEED}"));
            assert!(
                message.contains("config.hcl:1: max_delete_share: expected a number from 0 to 1"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn tls_paths_are_relative_to_the_config_file() {
        let text = SEED.replace("/etc/gosyncd/gosyncd.key", "node.key");
        let c = Config::from_str(&text, Path::new("/srv/node1/config.hcl")).unwrap();
        assert_eq!(c.tls_private_key, PathBuf::from("/srv/node1/node.key"));
        assert_eq!(
            c.local_path("/etc/haproxy/x"),
            PathBuf::from("/etc/haproxy/x")
        );
    }
}
