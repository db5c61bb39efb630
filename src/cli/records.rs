//! The JSON lines the commands print with `--format json`: one typed record per line,
//! each with a `type` field naming it, times in RFC 3339 in UTC (`+00:00`), modes as
//! octal strings (`"0644"`) as in the text output, and latencies rounded to 0.1 ms. The
//! README's "JSON output" section lists every record and field; a change here is a
//! change there.
//!
//! It only shapes what the engine and the operations return; it decides nothing.

use std::io::Write;

use serde::Serialize;

use super::ops::{NodeState, PeerState};
use crate::backup::Kept;
use crate::protocol::{Content, Entry, HeldPath, Role};
use crate::sync::{self, Halt, Report};

/// One line of JSON output.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// `sync`: one change to one peer (made, or why not).
    Change {
        time: String,
        peer: &'a str,
        path: &'a str,
        /// `added`, `updated`, `deleted`, `conflict`, `failed`, `refused`, `kept` or
        /// `rejected`.
        change: &'static str,
        reason: Option<&'a str>,
        dry_run: bool,
    },
    /// `sync`: an `on_change` command a peer ran after applying.
    Action {
        time: String,
        peer: &'a str,
        directory: &'a str,
        command: &'a str,
        ok: bool,
        /// Its exit code (`null`: killed by a signal or never run).
        code: Option<i32>,
        /// How it ended, in words: `exited with status 1`, `killed by signal 9 (SIGKILL)`.
        ended: &'a str,
        /// The line of its output that explains the result.
        first_line: &'a str,
    },
    /// `sync -dry --diff`: the differences of one text file on one peer.
    Diff {
        time: String,
        peer: &'a str,
        path: &'a str,
        diff: &'a str,
    },
    /// `sync`: a peer not synchronised (unreachable, refused, guard tripped).
    PeerError {
        time: String,
        peer: &'a str,
        error: &'a str,
        /// Refused by the peer or a guard (not worth retrying as is).
        refused: bool,
    },
    /// `sync`: this node's own tree could not be read somewhere.
    LocalError { time: String, error: &'a str },
    /// `sync --canary`: the rollout stopped after the canaries; `untouched` were not
    /// pushed to.
    Halted {
        time: String,
        failed: &'a [String],
        untouched: &'a [String],
    },
    /// `sync`: the last line.
    Summary {
        time: String,
        dry_run: bool,
        peers: usize,
        changes: usize,
        failed: bool,
    },
    /// `status`: one peer as this node sees it.
    Peer {
        time: String,
        peer: &'a str,
        reachable: bool,
        latency_ms: Option<f64>,
        version: Option<&'a str>,
        /// Paths `sync` would change on it (`null`: unknown).
        drift: Option<usize>,
        /// Changes this node's daemon holds for it (`null`: no daemon answered).
        pending: Option<u64>,
        conflicts: Option<u64>,
        held: Option<&'a [HeldPath]>,
        /// When this node's daemon last pushed to it successfully.
        last_push: Option<String>,
        error: Option<&'a str>,
    },
    /// `status --group`: how one node sees one peer (`peer` absent: the node could not
    /// be asked, and `error` says why).
    GroupView {
        time: String,
        node: &'a str,
        peer: Option<&'a str>,
        converged: bool,
        /// What keeps it from converging, in words (`ok` when nothing does).
        state: Option<String>,
        up: Option<bool>,
        pending: Option<u64>,
        drift: Option<u64>,
        held: Option<usize>,
        error: Option<&'a str>,
    },
    /// `status --group`: the last line.
    GroupSummary {
        time: String,
        nodes: usize,
        answered: usize,
        converged: bool,
        code: u8,
    },
    /// `status`: the last line.
    StatusSummary {
        time: String,
        peers: usize,
        reachable: usize,
        /// Every peer reachable and holding this node's tree.
        converged: bool,
        /// The exit code: 0 converged, 1 drift, 2 a peer unreachable.
        code: u8,
        /// This node's `role`: `send-receive` or `receive-only`.
        role: Role,
        /// Edits made here and not pushed because the node is receive-only (`null`: no
        /// daemon answered here).
        local_edits_not_pushed: Option<u64>,
        /// The first of them.
        local_edits: &'a [String],
    },
    /// `conflicts`: one path held as a conflict somewhere.
    Conflict {
        time: String,
        path: &'a str,
        /// Each daemon that could not deliver its version, to which peer, and why.
        refused: Vec<ConflictRefusal<'a>>,
        /// Every node's state of the path, this node first.
        nodes: Vec<ConflictNode<'a>>,
        /// The node holding the most recent version (by mtime).
        newest: Option<&'a str>,
    },
    /// `conflicts --diff`: a path's diff from one node's version to another's.
    ConflictDiff {
        time: String,
        path: &'a str,
        from: &'a str,
        to: &'a str,
        diff: &'a str,
    },
    /// `conflicts`: the last line.
    ConflictsSummary {
        time: String,
        conflicts: usize,
        nodes: usize,
        /// Nodes whose daemon could not be asked, with why.
        unasked: Vec<ConflictRefusal<'a>>,
        code: u8,
    },
    /// `resolve`: what became of one path.
    Resolved {
        time: String,
        path: &'a str,
        taken_from: &'a str,
        /// Cleared on every node.
        cleared: bool,
        /// The daemons still holding it, `node -> peer`.
        still_held: &'a [String],
        code: u8,
    },
    /// `revert`: one path taken back (or to be, with `dry_run`).
    Reverted {
        time: String,
        path: &'a str,
        /// The peer it is taken from.
        from: &'a str,
        /// What this node held (`null`: nothing).
        was: Option<State<'a>>,
        /// The group's version (`null`: nothing: the path is deleted here).
        now: Option<State<'a>>,
        dry_run: bool,
    },
    /// `backups list`: one kept version.
    Backup {
        path: &'a str,
        /// Its name, the time it was taken: `20261124T031500.123456789Z`.
        version: &'a str,
        reason: &'a str,
        #[serde(flatten)]
        state: State<'a>,
    },
}

/// `conflicts`: who could not deliver to whom, and why (`peer` absent for a node that
/// could not be asked).
#[derive(Debug, Serialize)]
pub struct ConflictRefusal<'a> {
    node: &'a str,
    peer: Option<&'a str>,
    reason: &'a str,
}

/// `conflicts`: one node's state of a path.
#[derive(Debug, Serialize)]
pub struct ConflictNode<'a> {
    node: &'a str,
    /// The path exists there (with `state`); `false` with no `error`: it does not.
    present: bool,
    #[serde(flatten)]
    state: Option<State<'a>>,
    /// Its daemon holds the path against a peer: this version is its own edit.
    edited_here: bool,
    /// Why the node could not be asked.
    error: Option<&'a str>,
}

/// A path's state, as the text output shows it.
#[derive(Debug, Serialize)]
pub struct State<'a> {
    /// `file`, `directory` or `symlink`.
    kind: &'static str,
    size: Option<u64>,
    sha256: Option<String>,
    target: Option<&'a str>,
    /// Octal, as `ls` and the text output show it: `"0644"`.
    mode: String,
    uid: u32,
    gid: u32,
    mtime: String,
}

impl<'a> State<'a> {
    pub fn of(entry: &'a Entry) -> State<'a> {
        let (size, sha256, target) = match &entry.content {
            Content::File { size, sha256 } => (Some(*size), Some(sha256.to_string()), None),
            Content::Dir => (None, None, None),
            Content::Symlink { target } => (None, None, Some(target.as_str())),
        };
        State {
            kind: entry.content.kind_name(),
            size,
            sha256,
            target,
            mode: format!("{:04o}", entry.mode),
            uid: entry.uid,
            gid: entry.gid,
            mtime: rfc3339_nanos(entry.mtime_ns),
        }
    }
}

/// Now, in RFC 3339 in UTC.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// Unix seconds in RFC 3339 in UTC.
fn rfc3339_secs(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false))
        .unwrap_or_default()
}

/// Unix nanoseconds in RFC 3339 in UTC, to the nanosecond.
fn rfc3339_nanos(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, false)
}

/// Rounds to 0.1: printed as `12.3`, never `12.299999999999999`.
fn tenths(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Prints one record as a line, flushed (a reader may follow a long run).
pub fn print(record: &Record<'_>) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Ok(line) = serde_json::to_string(record) {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// A peer's results of a `sync`: one record per change, per command it ran, per diff,
/// and for its error.
pub fn print_peer(report: &sync::PeerReport, dry_run: bool) {
    for change in &report.changes {
        print(&Record::Change {
            time: now(),
            peer: &report.peer,
            path: &change.path,
            change: change.status.name(),
            reason: change.status.reason(),
            dry_run,
        });
    }
    for action in &report.actions {
        let a = &action.report;
        print(&Record::Action {
            time: now(),
            peer: &action.peer,
            directory: &a.directory,
            command: &a.command,
            ok: a.success,
            code: a.code,
            ended: &a.ended,
            first_line: &a.first_line,
        });
    }
    for (path, diff) in &report.diffs {
        print(&Record::Diff {
            time: now(),
            peer: &report.peer,
            path,
            diff,
        });
    }
    if let Some(e) = &report.error {
        print(&Record::PeerError {
            time: now(),
            peer: &report.peer,
            error: e,
            refused: report.refused,
        });
    }
}

/// The end of a `sync`: this node's own errors, then the summary.
pub fn print_sync_end(report: &Report, halted: Option<&Halt>, dry_run: bool) {
    for e in &report.local_errors {
        print(&Record::LocalError {
            time: now(),
            error: e,
        });
    }
    if let Some(halt) = halted {
        print(&Record::Halted {
            time: now(),
            failed: &halt.failed,
            untouched: &halt.untouched,
        });
    }
    print(&Record::Summary {
        time: now(),
        dry_run,
        peers: report.peers.len(),
        changes: report.peers.iter().map(|p| p.changes.len()).sum(),
        failed: report.failed(),
    });
}

/// `status --group`: a record per node and peer it sees (or per node that could not be
/// asked), then the summary.
pub fn print_group(views: &[super::group::NodeView], code: u8) {
    for view in views {
        let peers = match &view.peers {
            Ok(peers) => peers,
            Err(e) => {
                print(&Record::GroupView {
                    time: now(),
                    node: &view.node,
                    peer: None,
                    converged: false,
                    state: None,
                    up: None,
                    pending: None,
                    drift: None,
                    held: None,
                    error: Some(e),
                });
                continue;
            }
        };
        for p in peers {
            print(&Record::GroupView {
                time: now(),
                node: &view.node,
                peer: Some(&p.peer),
                converged: p.converged(),
                state: Some(p.summary()),
                up: p.up,
                pending: Some(p.pending),
                drift: p.drift_paths,
                held: Some(p.held.len()),
                error: None,
            });
        }
    }
    print(&Record::GroupSummary {
        time: now(),
        nodes: views.len(),
        answered: views.iter().filter(|v| v.peers.is_ok()).count(),
        converged: code == 0,
        code,
    });
}

/// `conflicts`: a record per path, the diffs asked for, then the summary.
pub fn print_conflicts(
    survey: &super::conflicts::Survey,
    diffs: &[(String, String, String, String)],
    code: u8,
) {
    for c in &survey.conflicts {
        print(&Record::Conflict {
            time: now(),
            path: &c.path,
            refused: c
                .refusals
                .iter()
                .map(|r| ConflictRefusal {
                    node: &r.node,
                    peer: Some(&r.peer),
                    reason: &r.reason,
                })
                .collect(),
            nodes: c
                .nodes
                .iter()
                .map(|n| ConflictNode {
                    node: &n.node,
                    present: matches!(n.state, Ok(Some(_))),
                    state: n
                        .state
                        .as_ref()
                        .ok()
                        .and_then(|e| e.as_ref())
                        .map(State::of),
                    edited_here: n.edited_here,
                    error: n.state.as_ref().err().map(String::as_str),
                })
                .collect(),
            newest: c.newest().map(|(node, _)| node),
        });
    }
    for (path, from, to, diff) in diffs {
        print(&Record::ConflictDiff {
            time: now(),
            path,
            from,
            to,
            diff,
        });
    }
    print(&Record::ConflictsSummary {
        time: now(),
        conflicts: survey.conflicts.len(),
        nodes: survey.nodes,
        unasked: survey
            .unasked
            .iter()
            .map(|(node, why)| ConflictRefusal {
                node,
                peer: None,
                reason: why,
            })
            .collect(),
        code,
    });
}

/// `resolve`: one record per path.
pub fn print_resolved(resolved: &super::conflicts::Resolved, code: u8) {
    print(&Record::Resolved {
        time: now(),
        path: &resolved.path,
        taken_from: &resolved.taken_from,
        cleared: resolved.still_held.is_empty(),
        still_held: &resolved.still_held,
        code,
    });
}

/// `revert`: one record per path.
pub fn print_reverted(r: &super::revert::Reverted, dry_run: bool) {
    print(&Record::Reverted {
        time: now(),
        path: &r.path,
        from: &r.from,
        was: r.was.as_ref().map(State::of),
        now: r.now.as_ref().map(State::of),
        dry_run,
    });
}

/// `status`: a record per peer, then the summary.
pub fn print_status(node: &NodeState, peers: &[PeerState], code: u8) {
    for p in peers {
        print(&Record::Peer {
            time: now(),
            peer: &p.peer,
            reachable: p.reachable,
            latency_ms: p.latency_ms.map(tenths),
            version: p.version.as_deref(),
            drift: p.drift,
            pending: p.pending,
            conflicts: p.conflicts,
            held: p.held.as_deref(),
            last_push: p.last_success_unix.map(rfc3339_secs),
            error: p.error.as_deref(),
        });
    }
    print(&Record::StatusSummary {
        time: now(),
        peers: peers.len(),
        reachable: peers.iter().filter(|p| p.reachable).count(),
        converged: code == 0,
        code,
        role: node.role,
        local_edits_not_pushed: node.local_edits_not_pushed,
        local_edits: &node.local_edits,
    });
}

/// `backups list`: a record per kept version.
pub fn print_backup(version: &Kept) {
    print(&Record::Backup {
        path: &version.path,
        version: &version.version,
        reason: &version.reason,
        state: State::of(&version.entry),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::file_entry;

    #[test]
    fn records_are_typed_with_octal_modes_utc_times_and_no_float_noise() {
        let mut entry = file_entry(b"x");
        entry.mode = 0o640;
        entry.mtime_ns = 1_700_000_000_123_456_789;
        let version = Kept {
            path: "/etc/app/x".into(),
            version: "20231114T221320.123456789Z".into(),
            reason: "replaced by a sync from 10.0.0.2:1234".into(),
            entry,
        };
        let line = serde_json::to_value(Record::Backup {
            path: &version.path,
            version: &version.version,
            reason: &version.reason,
            state: State::of(&version.entry),
        })
        .unwrap();
        assert_eq!(line["type"], "backup");
        assert_eq!(line["mode"], "0640");
        assert_eq!(line["kind"], "file");
        assert_eq!(line["size"], 1);
        assert_eq!(line["mtime"], "2023-11-14T22:13:20.123456789+00:00");

        let status = serde_json::to_string(&Record::Peer {
            time: now(),
            peer: "10.0.0.2:8080",
            reachable: true,
            latency_ms: Some(tenths(0.1 + 0.2)),
            version: None,
            drift: Some(0),
            pending: None,
            conflicts: None,
            held: None,
            last_push: Some(rfc3339_secs(1_700_000_000)),
            error: None,
        })
        .unwrap();
        assert!(status.contains("\"type\":\"peer\""), "{status}");
        assert!(status.contains("\"latency_ms\":0.3,"), "{status}");
        assert!(
            status.contains("\"last_push\":\"2023-11-14T22:13:20+00:00\""),
            "{status}"
        );
        assert!(now().ends_with("+00:00"), "{}", now());
    }
}
