//! Reading the HCL text as written, for [`Config::from_str`](super::Config::from_str):
//! the top-level keys it may hold, the record of what was found ([`Raw`]), `directory`
//! blocks, literal values, and the line each key and block is on ([`Lines`]). It checks
//! only what one value or block shows alone (its type, its keys, an empty command);
//! checks across the file and the defaults belong to the parent.

use std::path::Path;

use hcl::{Block, Expression, Structure};

use super::ConfigError;
use super::{BackupBlock, Limits, OnConflict, RunOn};

pub(super) const KNOWN_KEYS: &[&str] = &[
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
    "on_change_splay",
    "metrics_address",
    "state_directory",
    "reconcile_interval",
    "open_write_timeout",
    "allow_setid",
    "allow_writable_directories",
    "role",
];

/// The blocks of the file's top level.
pub(super) const KNOWN_BLOCKS: &[&str] = &["directory", "limits", "backup"];

#[derive(Default)]
pub(super) struct Raw {
    pub(super) strings: Vec<(String, String)>,
    pub(super) remotes: Option<Vec<String>>,
    pub(super) allow_from: Option<Vec<String>>,
    pub(super) limits: Option<Limits>,
    pub(super) max_delete_share: Option<f64>,
    pub(super) editor_excludes: Option<bool>,
    /// `allow_setid`, `allow_writable_directories`.
    pub(super) flags: Vec<(String, bool)>,
    pub(super) directories: Vec<RawDirectory>,
    pub(super) backup: Option<BackupBlock>,
}

/// Condenses the parser's multi-line report into one line that keeps the line number.
pub(super) fn hcl_error(file: &Path, report: &str) -> ConfigError {
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

pub(super) fn unknown_key_message(key: &str) -> String {
    format!(
        "unknown key {key:?} (known keys: {})",
        [KNOWN_KEYS, KNOWN_BLOCKS].concat().join(", ")
    )
}

pub(super) fn string_value(key: &str, value: &Expression) -> Result<String, String> {
    match value {
        Expression::String(s) => Ok(s.clone()),
        other => Err(format!(
            "{key}: expected a string, found {}",
            type_name(other)
        )),
    }
}

pub(super) fn string_list(key: &str, value: &Expression) -> Result<Vec<String>, String> {
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

pub(super) fn type_name(value: &Expression) -> &'static str {
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
pub(super) struct RawDirectory {
    pub(super) path: String,
    /// Where the block starts, and where its `exclude` and `backup` are (for `exclude`,
    /// the block's line when absent; for `backup`, the top-level `backup` block's).
    pub(super) line: Option<usize>,
    pub(super) exclude_line: Option<usize>,
    pub(super) backup_line: Option<usize>,
    /// Where `on_conflict` is (the block's line when absent).
    pub(super) on_conflict_line: Option<usize>,
    pub(super) exclude: Vec<String>,
    pub(super) backup: Option<BackupBlock>,
    pub(super) validate: Option<String>,
    pub(super) on_change: Vec<String>,
    pub(super) run_on: Option<RunOn>,
    pub(super) on_conflict: Option<OnConflict>,
}

pub(super) fn directory_block(block: Block) -> Result<RawDirectory, String> {
    let [label] = block.labels.as_slice() else {
        return Err(format!(
            "directory: expected one label, the directory path (directory \"/etc/haproxy\" {{ ... }}), found {}",
            block.labels.len()
        ));
    };
    let path = label.as_str().to_string();
    let mut out = RawDirectory {
        path: path.clone(),
        line: None,
        exclude_line: None,
        backup_line: None,
        on_conflict_line: None,
        exclude: Vec::new(),
        backup: None,
        validate: None,
        on_change: Vec::new(),
        run_on: None,
        on_conflict: None,
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
                    "on_conflict" => {
                        let text = string_value(key, &attr.expr).map_err(within)?;
                        out.on_conflict = Some(OnConflict::parse(&text).map_err(within)?);
                    }
                    other => {
                        return Err(within(format!(
                            "unknown key {other:?} (known keys: exclude, validate, on_change, run_on, on_conflict, and a backup block)"
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

/// Where each structure of the file is, for messages: the 1-based line of each
/// top-level attribute or block, in file order (the order in which `hcl::parse` gives
/// them), with the lines of the attributes and blocks of a block's body. `hcl` values
/// carry no spans; `hcl-edit`, which `hcl` parses with, does.
#[derive(Default)]
pub(super) struct Lines {
    top: Vec<Place>,
}

struct Place {
    /// The attribute's key or the block's identifier.
    name: String,
    line: Option<usize>,
    /// A block's attributes and blocks, by key or identifier.
    inner: Vec<(String, Option<usize>)>,
}

impl Lines {
    /// The places of `text`'s structures; none when it does not parse (its parse error
    /// carries its own line).
    pub(super) fn of(text: &str) -> Lines {
        use hcl_edit::structure::Structure as S;
        use hcl_edit::Span;
        let Ok(body) = hcl_edit::parser::parse_body(text) else {
            return Lines::default();
        };
        let line = |structure: &S| {
            structure.span().map(|span| {
                let start = span.start.min(text.len());
                text.as_bytes()[..start]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count()
                    + 1
            })
        };
        let name = |structure: &S| match structure {
            S::Attribute(attr) => attr.key.as_str().to_string(),
            S::Block(block) => block.ident.as_str().to_string(),
        };
        let top = body
            .iter()
            .map(|structure| Place {
                name: name(structure),
                line: line(structure),
                inner: match structure {
                    S::Block(block) => block.body.iter().map(|s| (name(s), line(s))).collect(),
                    S::Attribute(_) => Vec::new(),
                },
            })
            .collect();
        Lines { top }
    }

    /// The line of the file's `index`th top-level structure.
    pub(super) fn at(&self, index: usize) -> Option<usize> {
        self.top.get(index).and_then(|p| p.line)
    }

    /// The line of `key` inside the `index`th top-level block, if it is there.
    pub(super) fn inside(&self, index: usize, key: &str) -> Option<usize> {
        let place = self.top.get(index)?;
        place
            .inner
            .iter()
            .find(|(name, _)| name == key)
            .and_then(|(_, line)| *line)
    }

    /// The line of `key` inside the `index`th top-level block, else of the block.
    pub(super) fn within(&self, index: usize, key: &str) -> Option<usize> {
        self.inside(index, key).or_else(|| self.at(index))
    }

    /// The line of the top-level attribute or block `key` (its first, for a block).
    pub(super) fn of_key(&self, key: &str) -> Option<usize> {
        self.top.iter().find(|p| p.name == key).and_then(|p| p.line)
    }
}
