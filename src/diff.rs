//! `sync -dry --diff`: what a sync would change in each text file, as unified diffs of
//! the peer's copy (read through `/v1/content`) against this node's; and the reading of
//! a file's text that both ends use.

use std::fs::File;
use std::io;

use crate::client::Peer;
use crate::config::Config;
use crate::plan::Planned;
use crate::protocol::{self, Content, Entry, FileText};

/// The text of a file (confined as a write would be, links never followed), for a
/// diff; or a note saying why there is none.
pub fn read_text(config: &Config, path: &str, limit: u64) -> FileText {
    use std::io::Read;
    let note = |n: &str| FileText {
        path: path.to_string(),
        text: None,
        note: Some(n.to_string()),
        deferred: false,
    };
    let Ok(dir) = crate::tree::confine(config, path) else {
        return note("outside the configured directories");
    };
    let (parent, name) = match crate::tree::open_parent(config, dir, path) {
        Ok(found) => found,
        Err(e) if e.missing => return note("missing"),
        Err(e) => return note(&e.to_string()),
    };
    let fd = match crate::tree::open_regular(&parent, &name) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return note("missing"),
        Err(_) => return note("not a regular file"),
    };
    let mut bytes = Vec::new();
    if let Err(e) = File::from(fd).take(limit + 1).read_to_end(&mut bytes) {
        return note(&format!("unreadable: {e}"));
    }
    if bytes.len() as u64 > limit {
        return note("too large to show");
    }
    match String::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => FileText {
            path: path.to_string(),
            text: Some(text),
            note: None,
            deferred: false,
        },
        _ => note("binary"),
    }
}

/// The unified diffs (peer's version -> this node's) of the files `ops` change in
/// content, in their order; a note for a file that is binary, too large or unreadable.
pub async fn diffs(config: &Config, peer: &Peer, ops: &[Planned<'_>]) -> Vec<(String, String)> {
    let file = |e: Option<&Entry>| match e {
        Some(Entry {
            content: Content::File { sha256, .. },
            ..
        }) => Some(*sha256),
        _ => None,
    };
    let mut wanted = Vec::new();
    for op in ops {
        let (before, after) = (file(op.expect.as_deref()), file(op.put));
        if (before.is_some() || after.is_some()) && before != after {
            wanted.push((op.path.clone(), before.is_some(), after.is_some()));
        }
    }
    if wanted.is_empty() {
        return Vec::new();
    }
    let remote_paths: Vec<String> = wanted
        .iter()
        .filter(|(_, before, _)| *before)
        .map(|(p, _, _)| p.to_string())
        .collect();
    let theirs = if remote_paths.is_empty() {
        Vec::new()
    } else {
        match peer.contents(&remote_paths).await {
            Ok(answer) => answer.files,
            Err(e) => {
                return vec![(
                    String::new(),
                    format!("no diff: the peer's files could not be read: {e}"),
                )]
            }
        }
    };
    let label = &peer.remote.label;
    let mut out = Vec::new();
    for (path, before, after) in wanted {
        let old = if before {
            theirs.iter().find(|f| f.path == path).cloned()
        } else {
            Some(FileText {
                path: path.to_string(),
                text: Some(String::new()),
                note: None,
                deferred: false,
            })
        };
        let new = if after {
            read_text(config, &path, protocol::MAX_DIFF_FILE_BYTES)
        } else {
            FileText {
                path: path.to_string(),
                text: Some(String::new()),
                note: None,
                deferred: false,
            }
        };
        let text = match (
            old.as_ref().and_then(|f| f.text.as_deref()),
            new.text.as_deref(),
        ) {
            (Some(old_text), Some(new_text)) => similar::TextDiff::from_lines(old_text, new_text)
                .unified_diff()
                .context_radius(3)
                .header(
                    &if before {
                        format!("{label}:{path}")
                    } else {
                        "/dev/null".into()
                    },
                    &if after {
                        format!("this node:{path}")
                    } else {
                        "/dev/null".into()
                    },
                )
                .to_string(),
            _ => {
                let why = old
                    .as_ref()
                    .and_then(|f| f.note.clone())
                    .or(new.note.clone())
                    .unwrap_or_else(|| "unreadable".into());
                format!("{path}: no diff shown ({why})\n")
            }
        };
        out.push((path.to_string(), text));
    }
    out
}
