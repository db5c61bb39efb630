//! What a run is asked to do ([`Options`]) and what it reports: one [`Change`] or
//! [`ActionLine`] per output line, gathered in a [`PeerReport`] per peer and a [`Report`]
//! per run. Their `Display` is the line the CLI prints, so its text is user-facing output.
//!
//! Plain data: no I/O, and no knowledge of how the engine produces it.

use std::fmt;

use super::{Changes, Progress};
use crate::paths::LogicalPath;
use crate::protocol::{ActionReport, ChangeKind, Entry, Outcome};

/// What one run does.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Logical paths limiting the run to those files or subtrees; empty: everything.
    pub scope: Vec<String>,
    /// Plan and report, change nothing.
    pub dry_run: bool,
    /// Push even what the mass-delete guard refuses.
    pub force: bool,
    /// With `dry_run`: compute a unified diff of each changed text file.
    pub diff: bool,
    /// Where the pushes tell their progress (nowhere by default).
    pub progress: Progress,
    /// The peers to run for, by their label (the remote as written in `remotes`); empty:
    /// every peer. [`super::Engine::select`] turns what an operator typed into these.
    pub peers: Vec<String>,
    /// List each directory whose digests differ whole, rather than only its levels that
    /// differ. Slower; both answer the same, and the tests check that they do.
    pub list_whole: bool,
}

/// What happened (or would happen) to one path on one peer. Every variant but `Done`
/// leaves the peer's path as it was; what a sender does next depends on the variant
/// alone, never on the reason's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeStatus {
    Done(ChangeKind),
    /// The peer holds another version than the one the change was planned against (an
    /// edit made there): nothing was overwritten.
    Conflict(Reason),
    /// Could not be done this time (the peer's disk is full, an I/O error, no
    /// permission, a read-only filesystem, the file changed here while it was sent):
    /// worth retrying, and the watcher does.
    Failed(Reason),
    /// Refused for good by the peer's rules or this node's (a link in the way, a
    /// directory the peer does not have, a file over its size limit, the mass-delete
    /// guard): sending it again is useless until the path changes here.
    Refused(Reason),
    /// A directory left in place on purpose (it holds paths the peer excludes).
    Kept(Reason),
    /// Applied, then put back by the peer: its `validate` command refused the result.
    Rejected(Reason),
}

impl ChangeStatus {
    /// The status of a receiver's outcome for a change of `kind`.
    pub fn of(outcome: Outcome, kind: ChangeKind) -> ChangeStatus {
        match outcome {
            Outcome::Applied => ChangeStatus::Done(kind),
            Outcome::Conflict(reason) => ChangeStatus::Conflict(reason.into()),
            Outcome::Failed(reason) => ChangeStatus::Failed(reason.into()),
            Outcome::Refused(reason) => ChangeStatus::Refused(reason.into()),
            Outcome::Kept(reason) => ChangeStatus::Kept(reason.into()),
            Outcome::Rejected(reason) => ChangeStatus::Rejected(reason.into()),
        }
    }

    /// The name of the outcome in JSON output.
    pub fn name(&self) -> &'static str {
        match self {
            ChangeStatus::Done(ChangeKind::Added) => "added",
            ChangeStatus::Done(ChangeKind::Updated) => "updated",
            ChangeStatus::Done(ChangeKind::Deleted) => "deleted",
            ChangeStatus::Conflict(_) => "conflict",
            ChangeStatus::Failed(_) => "failed",
            ChangeStatus::Refused(_) => "refused",
            ChangeStatus::Kept(_) => "kept",
            ChangeStatus::Rejected(_) => "rejected",
        }
    }

    /// Why the change was not made, when it was not.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ChangeStatus::Done(_) => None,
            ChangeStatus::Conflict(r)
            | ChangeStatus::Failed(r)
            | ChangeStatus::Refused(r)
            | ChangeStatus::Kept(r)
            | ChangeStatus::Rejected(r) => Some(r),
        }
    }
}

/// Why a change was not made: one pointer, so that a [`Change`] is 32 bytes rather than
/// 48 (a watcher's burst, or a push refused whole, keeps one per path), and shared by
/// the changes refused for one reason (clones share it).
#[derive(Clone, PartialEq, Eq)]
#[allow(clippy::rc_buffer)]
pub struct Reason(std::sync::Arc<String>);

impl From<String> for Reason {
    fn from(reason: String) -> Reason {
        Reason(std::sync::Arc::new(reason))
    }
}

impl From<&str> for Reason {
    fn from(reason: &str) -> Reason {
        Reason(std::sync::Arc::new(reason.to_string()))
    }
}

impl std::ops::Deref for Reason {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

/// What happened to one path on the peer of the [`PeerReport`] holding it: one line of
/// output ([`Change::line`]). The peer is the report's, not repeated per change. A
/// report keeps the changes done as planned more compactly (see [`Changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Shared with the operation it reports, and with the other peers' records of it.
    pub path: LogicalPath,
    pub status: ChangeStatus,
}

impl Change {
    /// The line telling this change on `peer`.
    pub fn line<'a>(&self, peer: &'a str) -> Line<'a> {
        self.clone().into_line(peer)
    }

    /// The line telling this change on `peer`.
    pub fn into_line(self, peer: &str) -> Line<'_> {
        Line { peer, change: self }
    }
}

/// A change with its peer, displayed as the original tool's line.
pub struct Line<'a> {
    peer: &'a str,
    change: Change,
}

impl fmt::Display for Line<'_> {
    /// The original tool's line, without its timestamp: `[M] 10.0.0.2:8080 /etc/x updated`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (peer, path) = (self.peer, &self.change.path);
        match &self.change.status {
            ChangeStatus::Done(ChangeKind::Added) => write!(f, "[+] {peer} {path} added"),
            ChangeStatus::Done(ChangeKind::Updated) => write!(f, "[M] {peer} {path} updated"),
            ChangeStatus::Done(ChangeKind::Deleted) => write!(f, "[-] {peer} {path} deleted"),
            ChangeStatus::Conflict(reason) => {
                write!(f, "[!] {peer} {path} skipped: conflict: {reason}")
            }
            ChangeStatus::Failed(reason)
            | ChangeStatus::Refused(reason)
            | ChangeStatus::Kept(reason) => write!(f, "[!] {peer} {path} skipped: {reason}"),
            ChangeStatus::Rejected(reason) => write!(f, "[!] {peer} {path} rejected: {reason}"),
        }
    }
}

/// A command a peer ran for a push: `[*] 10.0.0.2:8080 /etc/haproxy on_change
/// "systemctl reload haproxy" ok`, or `[!] ... failed (exited with status 1): <the line
/// of its output that explains>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionLine {
    pub peer: String,
    pub report: ActionReport,
}

impl fmt::Display for ActionLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        if r.success {
            write!(
                f,
                "[*] {} {} on_change {:?} ok",
                self.peer, r.directory, r.command
            )
        } else {
            let ended = match (&r.ended, r.code) {
                (ended, _) if !ended.is_empty() => ended.clone(),
                // A peer of an earlier version says only this much.
                (_, Some(code)) => format!("exited with status {code}"),
                (_, None) => "killed".to_string(),
            };
            write!(
                f,
                "[!] {} {} on_change {:?} failed ({ended})",
                self.peer, r.directory, r.command
            )?;
            if r.first_line.is_empty() || r.first_line == r.ended {
                Ok(())
            } else {
                write!(f, ": {}", r.first_line)
            }
        }
    }
}

/// The outcome of a run for one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerReport {
    pub peer: String,
    /// One per path the run changed or would change (or failed to) on this peer.
    pub changes: Changes,
    /// The peer could not be synchronised (unreachable, refused the request, ...).
    pub error: Option<String>,
    /// The error was the peer refusing the request (sending it again is useless), not
    /// the peer being unreachable.
    pub refused: bool,
    /// Files not sent because they were written again since the scan (they are also
    /// reported as skipped changes).
    pub changed_locally: Vec<String>,
    /// Paths whose change failed on a later try of a batch that an earlier try may have
    /// applied (its connection was reset before the answer): the peer holds either what
    /// it was expected to hold or the version sent, and must be asked which.
    pub maybe_applied: Vec<String>,
    /// Why the remote was left alone: it turned out to be this node.
    pub skipped: Option<String>,
    /// The `on_change` commands the peer ran for this push.
    pub actions: Vec<ActionLine>,
    /// Bytes of apply requests sent to the peer.
    pub bytes_sent: u64,
    /// With `Options::diff`: per changed file, its unified diff (peer -> this node), or
    /// a one-line note for a file that cannot be shown.
    pub diffs: Vec<(String, String)>,
    /// What the peer answered it holds at paths it did not change (`None`: nothing).
    pub peer_holds: Vec<(String, Option<Entry>)>,
}

impl PeerReport {
    /// Records that the exchange with the peer failed with `e`, and whether the peer
    /// refused it.
    pub(crate) fn fail(&mut self, e: &crate::client::PeerError) {
        self.refused = e.is_refusal();
        self.error = Some(e.to_string());
    }

    /// The lines telling each change, in order.
    pub fn lines(&self) -> impl Iterator<Item = Line<'_>> {
        self.changes
            .iter()
            .map(|change| change.into_line(&self.peer))
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
            || self.changes.iter().any(|c| {
                matches!(
                    c.status,
                    ChangeStatus::Conflict(_)
                        | ChangeStatus::Failed(_)
                        | ChangeStatus::Refused(_)
                        | ChangeStatus::Rejected(_)
                )
            })
            || self.actions.iter().any(|a| !a.report.success)
    }
}

/// The outcome of a whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Problems on this node (a missing configured directory, a bad scope path).
    pub local_errors: Vec<String>,
    /// One per peer, in the order of `remotes`.
    pub peers: Vec<PeerReport>,
}

impl Report {
    /// Whether anything failed: decides exit code 2.
    pub fn failed(&self) -> bool {
        !self.local_errors.is_empty() || self.peers.iter().any(PeerReport::failed)
    }

    /// Whether any change was (or would be) made.
    pub fn has_changes(&self) -> bool {
        self.peers.iter().any(|p| {
            p.changes
                .iter()
                .any(|c| matches!(c.status, ChangeStatus::Done(_)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_stays_small_and_tells_its_line() {
        assert!(std::mem::size_of::<Change>() <= 32);
        let refused = ChangeStatus::Refused("a link in the way".into());
        assert_eq!(refused.reason(), Some("a link in the way"));
        let change = Change {
            path: "/etc/app/x".into(),
            status: refused,
        };
        assert_eq!(
            change.line("10.0.0.2:8080").to_string(),
            "[!] 10.0.0.2:8080 /etc/app/x skipped: a link in the way"
        );
    }
}
