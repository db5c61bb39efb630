//! The JSON requests and answers of each route besides the batch body: identity, status,
//! manifest (with the limits a receiver announces), content for diffs, the answer to an
//! apply request, and the error body. Data only; the server and the client give them
//! their meaning.

use serde::{Deserialize, Serialize};

use super::operation::ResultFields;
use super::{Found, OpResult, Outcome, WireEntry};
use crate::paths::LogicalPath;

/// Asks a receiver for its manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRequest {
    /// Logical paths limiting the listing (with their ancestors); empty means everything.
    #[serde(default)]
    pub scope: Vec<String>,
    /// Answer each configured directory's digest instead of its entries.
    #[serde(default)]
    pub digests_only: bool,
    /// Answer the digest of each level of these configured directories (a directory's
    /// own entry and its children's, see
    /// [`manifest::level_digests`](crate::manifest::level_digests)) instead of entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<String>,
    /// Directories listed one level deep (their own entries and their children's, with
    /// their ancestors), besides `scope`; with `scope` empty, these only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shallow: Vec<String>,
}

/// A configured directory's digest (see [`manifest::digest`](crate::manifest::digest)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryDigest {
    pub path: String,
    pub sha256: super::Digest256,
    /// In an answer of levels: how many entries the level holds besides the
    /// directory's own (its children). Their sum over a configured directory's levels
    /// is how many entries it holds, which a sender comparing levels counts for the
    /// mass-delete guard without listing them. Absent elsewhere, and from older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
}

/// A configured directory as the receiver sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryInfo {
    pub path: String,
    /// The receiver's own exclude entries for this directory, so that senders do not
    /// plan writes the receiver would refuse.
    pub exclude: Vec<String>,
    /// Whether the directory exists on the receiver.
    pub present: bool,
    /// The receiver runs `validate` or `on_change` commands for each batch it receives
    /// there: a push's operations for the directory come in one request (others may be
    /// split, so that neither end holds a large push's operations at once).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub together: bool,
}

/// The identity a node announces, used to detect this node behind an alias.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Random per process.
    pub node_id: String,
    /// The gosyncd version serving.
    pub version: String,
}

/// A daemon's counters since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounters {
    pub apply_requests: u64,
    /// Apply requests answered busy (503), `max_concurrent_applies` being under way.
    #[serde(default)]
    pub applies_busy: u64,
    pub applied: u64,
    pub conflicts_refused: u64,
    /// Operations received that conflicted with this node's own edit and were applied
    /// anyway, being newer (`on_conflict = "newest"`); the replaced version is in the
    /// backups.
    #[serde(default)]
    pub conflicts_resolved_newest: u64,
    pub pushes: u64,
    pub conflicts_reported: u64,
    /// Operations received, applied, then rolled back because validation failed.
    #[serde(default)]
    pub rejected: u64,
}

/// The answer of the status route.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusResponse {
    #[serde(flatten)]
    pub identity: Identity,
    pub counters: StatusCounters,
    /// What this daemon's watcher knows of each of its peers.
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// The node's `role` (a daemon from before roles sends and receives).
    #[serde(default)]
    pub role: Role,
    /// How many paths were edited on this node and not pushed because it is
    /// receive-only, and still differ from the group as far as it knows.
    #[serde(default)]
    pub local_edits_not_pushed: u64,
    /// The first of them.
    #[serde(default)]
    pub local_edits: Vec<String>,
}

/// What a node does with changes: the `role` key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Pushes its own edits and applies its peers' (the default).
    #[default]
    SendReceive,
    /// Applies its peers' pushes and pushes nothing: its own edits are reported as
    /// drift.
    ReceiveOnly,
}

impl Role {
    /// Every role, in the order they are listed in messages.
    pub const ALL: [Role; 2] = [Role::SendReceive, Role::ReceiveOnly];

    /// Its name, as in the configuration and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Role::SendReceive => "send-receive",
            Role::ReceiveOnly => "receive-only",
        }
    }

    /// Whether this node pushes its own changes to its peers.
    pub fn sends(self) -> bool {
        self == Role::SendReceive
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A daemon's automatic pushes to one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer as written in `remotes`.
    pub peer: String,
    /// Changed paths waiting to be pushed to it (it is unreachable, or a push is under
    /// way).
    pub pending: u64,
    /// How long the oldest of them has waited, in seconds (`None`: none waits).
    #[serde(default)]
    pub oldest_pending_seconds: Option<u64>,
    /// Whether the last exchange with it (a push, or the periodic comparison every
    /// `reconcile_interval`) succeeded (`None`: none yet).
    #[serde(default)]
    pub up: Option<bool>,
    pub pushes: u64,
    /// Pushes that failed (unreachable, refused).
    pub failures: u64,
    /// Operations it refused as conflicts.
    pub conflicts: u64,
    /// Bytes of apply requests sent to it.
    #[serde(default)]
    pub bytes_sent: u64,
    /// When a push last succeeded, in seconds since the Unix epoch.
    pub last_success_unix: Option<u64>,
    /// Why the last push failed, when it did.
    pub last_error: Option<String>,
    /// Paths whose change the peer did not take and that are not retried until they
    /// are edited here again (or an operator runs `gosyncd sync`).
    #[serde(default)]
    pub held: Vec<HeldPath>,
    /// Paths that differ from this node and that nobody is delivering, found by the
    /// last comparison (`None`: not compared yet).
    #[serde(default)]
    pub drift_paths: Option<u64>,
    /// The first of them.
    #[serde(default)]
    pub drift: Vec<String>,
}

impl PeerStatus {
    /// Whether the daemon sees this peer converged with it: not down, nothing waiting
    /// for it or held back from it, and no drift found by the last comparison (which
    /// must have run).
    pub fn converged(&self) -> bool {
        self.up != Some(false)
            && self.pending == 0
            && self.held.is_empty()
            && self.drift_paths == Some(0)
    }

    /// What keeps it from being converged, in a few words (`ok` when nothing does).
    pub fn summary(&self) -> String {
        if self.up == Some(false) {
            return "down".into();
        }
        let mut parts = Vec::new();
        match self.drift_paths {
            None => parts.push("not compared yet".to_string()),
            Some(0) => {}
            Some(n) => parts.push(format!("drift {n}")),
        }
        if self.pending > 0 {
            parts.push(format!("pending {}", self.pending));
        }
        if !self.held.is_empty() {
            parts.push(format!("held {}", self.held.len()));
        }
        match parts.is_empty() {
            true => "ok".into(),
            false => parts.join(", "),
        }
    }
}

/// A path whose change a peer did not take, held until the next edit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPath {
    pub path: String,
    pub outcome: HeldKind,
    pub reason: String,
}

/// Why a change is held rather than retried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeldKind {
    /// The peer holds another version (an edit made there).
    #[default]
    Conflict,
    /// The peer's `validate` refused it and put its own version back.
    Rejected,
    /// Refused for good by the peer's rules or this node's.
    Refused,
    /// A directory the peer keeps: it holds paths the peer excludes.
    Kept,
}

impl HeldKind {
    /// Every kind, in the order they are shown.
    pub const ALL: [HeldKind; 4] = [
        HeldKind::Conflict,
        HeldKind::Rejected,
        HeldKind::Refused,
        HeldKind::Kept,
    ];

    /// Its name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            HeldKind::Conflict => "conflict",
            HeldKind::Rejected => "rejected",
            HeldKind::Refused => "refused",
            HeldKind::Kept => "kept",
        }
    }
}

/// The files whose text a sender asks for, to show a diff.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContentRequest {
    pub paths: Vec<String>,
}

/// What `/v1/content` says of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileText {
    pub path: String,
    /// Its text, when it is a UTF-8 regular file no larger than
    /// [`MAX_DIFF_FILE_BYTES`](super::MAX_DIFF_FILE_BYTES).
    pub text: Option<String>,
    /// Why there is no text: `missing`, `binary`, `too large`, `not a regular file`, ...
    pub note: Option<String>,
    /// Not read: the answer was full ([`MAX_CONTENT_ANSWER_BYTES`](super::MAX_CONTENT_ANSWER_BYTES)).
    /// Ask for it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
}

/// The answer of `/v1/content`, in the order asked, each path once.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContentResponse {
    pub files: Vec<FileText>,
}

/// A receiver's manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestResponse {
    #[serde(flatten)]
    pub identity: Identity,
    /// Whether the receiver applies owners (it runs as root).
    pub owners: bool,
    pub directories: Vec<DirectoryInfo>,
    /// In no particular order: a listing is sent as the receiver walks its tree.
    pub entries: Vec<WireEntry>,
    /// Subtrees the receiver could not read; senders leave them alone.
    #[serde(default)]
    pub unreadable: Vec<String>,
    /// What the receiver accepts in one apply request; senders fit their pushes to it.
    #[serde(default)]
    pub limits: PeerLimits,
    /// When asked for digests only: one per configured directory present here; when
    /// asked for levels: one per directory of those configured directories (and
    /// `entries` is empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digests: Vec<DirectoryDigest>,
    /// In an answer of digests: the receiver is being pushed to, or was moments ago
    /// (see [`Node::until_quiet`](crate::node::Node::until_quiet)), so that its tree may
    /// still change as the push goes on: a daemon comparing with it waits before it
    /// judges a difference. Absent from older nodes' answers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receiving: bool,
}

impl ManifestResponse {
    /// This answer with `other`'s, to the same request made in parts: the entries and
    /// unreadable subtrees of both, and a directory present only where both say so (a
    /// part that did not look into a directory says it is present).
    pub fn merged(mut self, other: ManifestResponse) -> ManifestResponse {
        self.entries.extend(other.entries);
        self.unreadable.extend(other.unreadable);
        self.digests.extend(other.digests);
        for dir in &mut self.directories {
            if let Some(theirs) = other.directories.iter().find(|d| d.path == dir.path) {
                dir.present &= theirs.present;
            }
        }
        self
    }

    /// Each entry and unreadable subtree once, in path order (parts of one request
    /// overlap: each lists the ancestors of its paths).
    pub fn dedup(&mut self) {
        self.entries.sort_by(|a, b| a.path.cmp(&b.path));
        self.entries.dedup_by(|a, b| a.path == b.path);
        self.unreadable.sort();
        self.unreadable.dedup();
    }

    /// Takes its entries out, by path (a `String`, or the [`LogicalPath`] as read), into a
    /// map made as a scan's is (see
    /// [`manifest::into_map`](crate::manifest::into_map)): the entries, in their own
    /// memory, leave it a part at a time as they join the map.
    pub fn take_entries<K: From<LogicalPath> + Ord>(
        &mut self,
    ) -> std::collections::BTreeMap<K, super::Entry> {
        let pairs: Vec<(K, super::Entry)> = std::mem::take(&mut self.entries)
            .into_iter()
            .map(|w| (K::from(w.path), w.entry))
            .collect();
        crate::manifest::into_map(pairs)
    }
}

/// The limits a receiver announces in its manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLimits {
    pub max_request_size: u64,
    pub max_file_size: u64,
    pub max_batch_entries: usize,
    /// Apply requests it receives at once: a sender sends a batch while the one before
    /// is applied only where this is two or more. Absent from older receivers' answers.
    #[serde(default = "default_concurrent_applies")]
    pub max_concurrent_applies: usize,
}

fn default_concurrent_applies() -> usize {
    super::DEFAULT_CONCURRENT_APPLIES
}

impl Default for PeerLimits {
    /// What a peer that announces nothing is assumed to accept: the defaults of the
    /// `limits` block.
    fn default() -> Self {
        PeerLimits {
            max_request_size: super::MAX_APPLY_BODY_BYTES as u64,
            max_file_size: super::DEFAULT_MAX_FILE_SIZE,
            max_batch_entries: super::MAX_OPS_PER_BATCH,
            max_concurrent_applies: super::DEFAULT_CONCURRENT_APPLIES,
        }
    }
}

/// The receiver's answer to a batch, one result per operation in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub results: Vec<OpResult>,
    /// The `on_change` commands the batch made the receiver run.
    #[serde(default)]
    pub actions: Vec<ActionReport>,
    /// Why the receiver could not carry the batch out once it had arrived whole (the
    /// answer had begun by then, see [`APPLY_ROUTE`](super::APPLY_ROUTE)): no result
    /// follows, and none of its operations counts as applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// To a sender that asked for a brief answer ([`ANSWER_HEADER`](super::ANSWER_HEADER)),
    /// where every operation was applied: how many, and `results` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<usize>,
}

impl ApplyResponse {
    /// The answer to a batch the receiver could not carry out once it had arrived whole
    /// (see [`ApplyResponse::refused`]).
    pub fn refusal(reason: String) -> ApplyResponse {
        ApplyResponse {
            results: Vec::new(),
            actions: Vec::new(),
            refused: Some(reason),
            applied: None,
        }
    }
}

/// The receiver's answer to a batch as a sender reads it: one outcome per operation, in
/// the batch's order, without the path each result repeats (the sender has it in its
/// own operation). A sender of a large batch keeps a fraction of the whole answer.
#[derive(Debug, Deserialize)]
pub struct ApplyAnswer {
    pub results: Vec<OpAnswer>,
    #[serde(default)]
    pub actions: Vec<ActionReport>,
    #[serde(default)]
    pub refused: Option<String>,
    #[serde(default)]
    pub applied: Option<usize>,
}

/// An answer to a batch, as either end reads it.
pub trait ApplyAnswered: serde::de::DeserializeOwned + Send + 'static {
    /// Why the peer refused the batch after it had arrived whole, if it did.
    fn refused(&mut self) -> Option<String>;
}

impl ApplyAnswered for ApplyResponse {
    fn refused(&mut self) -> Option<String> {
        self.refused.take()
    }
}

impl ApplyAnswered for ApplyAnswer {
    fn refused(&mut self) -> Option<String> {
        self.refused.take()
    }
}

/// One operation's [`OpResult`], without its path.
#[derive(Debug, Deserialize)]
#[serde(try_from = "ResultFields<serde::de::IgnoredAny, Option<Box<Found>>>")]
pub struct OpAnswer {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Boxed: most operations are applied, and hold none.
    #[serde(default)]
    pub found: Option<Box<Found>>,
}

impl TryFrom<ResultFields<serde::de::IgnoredAny, Option<Box<Found>>>> for OpAnswer {
    type Error = &'static str;

    fn try_from(
        fields: ResultFields<serde::de::IgnoredAny, Option<Box<Found>>>,
    ) -> Result<OpAnswer, &'static str> {
        let (outcome, _, found) = fields.into_parts()?;
        Ok(OpAnswer { outcome, found })
    }
}

/// How one of a receiver's commands ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionReport {
    /// The configured directory it belongs to.
    pub directory: String,
    pub command: String,
    pub success: bool,
    /// Its exit code; `None` when it was killed or could not start.
    pub code: Option<i32>,
    /// How it ended, in words: `exited with status 1`, `killed by signal 9 (SIGKILL)`,
    /// `killed after 1m (action_timeout)`. Empty from a peer of an earlier version.
    #[serde(default)]
    pub ended: String,
    /// The line of its output that explains how it ended (the first that looks like an
    /// error, else the last); the name is older than that rule.
    pub first_line: String,
}

/// The error body of every 4xx/5xx answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::file_entry;

    #[test]
    fn the_answers_to_the_parts_of_a_listing_merge_into_one() {
        let answer = |paths: &[&str], unreadable: &[&str], present: bool| ManifestResponse {
            identity: Identity {
                node_id: "n".into(),
                version: "v".into(),
            },
            owners: true,
            directories: vec![
                DirectoryInfo {
                    path: "/etc/app".into(),
                    exclude: Vec::new(),
                    present: true,
                    together: false,
                },
                DirectoryInfo {
                    path: "/etc/web".into(),
                    exclude: Vec::new(),
                    present,
                    together: false,
                },
            ],
            entries: paths
                .iter()
                .map(|p| WireEntry {
                    path: (*p).into(),
                    entry: file_entry(p.as_bytes()),
                })
                .collect(),
            unreadable: unreadable.iter().map(|p| p.to_string()).collect(),
            limits: PeerLimits::default(),
            digests: Vec::new(),
            receiving: false,
        };
        let first = answer(&["/etc/app", "/etc/app/b"], &["/etc/app/x"], true);
        let second = answer(&["/etc/app", "/etc/app/a"], &["/etc/app/x"], false);
        let mut merged = first.merged(second);
        merged.dedup();
        let paths: Vec<&str> = merged.entries.iter().map(|w| w.path.as_str()).collect();
        assert_eq!(paths, ["/etc/app", "/etc/app/a", "/etc/app/b"]);
        assert_eq!(merged.unreadable, ["/etc/app/x"]);
        let present: Vec<bool> = merged.directories.iter().map(|d| d.present).collect();
        assert_eq!(
            present,
            [true, false],
            "missing where any part found it missing"
        );
    }

    #[test]
    fn a_sender_reads_each_outcome_of_a_full_answer_in_order() {
        let response = ApplyResponse {
            results: vec![
                OpResult {
                    path: "/etc/a".into(),
                    outcome: Outcome::Applied,
                    found: None,
                },
                OpResult {
                    path: "/etc/b".into(),
                    outcome: Outcome::Conflict("changed meanwhile".into()),
                    found: Some(Found {
                        entry: Some(file_entry(b"theirs")),
                    }),
                },
                OpResult {
                    path: "/etc/c".into(),
                    outcome: Outcome::Failed("no space".into()),
                    found: Some(Found { entry: None }),
                },
            ],
            actions: Vec::new(),
            refused: None,
            applied: None,
        };
        let json = serde_json::to_vec(&response).unwrap();
        let answer: ApplyAnswer = serde_json::from_slice(&json).unwrap();
        let outcomes: Vec<_> = answer.results.iter().map(|r| r.outcome.clone()).collect();
        let sent: Vec<_> = response.results.iter().map(|r| r.outcome.clone()).collect();
        assert_eq!(outcomes, sent);
        let found: Vec<_> = answer
            .results
            .into_iter()
            .map(|r| r.found.map(|f| *f))
            .collect();
        let held: Vec<_> = response.results.into_iter().map(|r| r.found).collect();
        assert_eq!(found, held);
    }

    #[test]
    fn a_peer_is_converged_only_when_compared_without_drift_and_nothing_waits() {
        let ok = PeerStatus {
            peer: "10.0.0.2:8080".into(),
            up: Some(true),
            drift_paths: Some(0),
            ..PeerStatus::default()
        };
        assert!(ok.converged());
        assert_eq!(ok.summary(), "ok");
        let cases = [
            (
                PeerStatus {
                    up: Some(false),
                    ..ok.clone()
                },
                "down",
            ),
            (
                PeerStatus {
                    drift_paths: None,
                    ..ok.clone()
                },
                "not compared yet",
            ),
            (
                PeerStatus {
                    drift_paths: Some(2),
                    pending: 3,
                    ..ok.clone()
                },
                "drift 2, pending 3",
            ),
            (
                PeerStatus {
                    held: vec![HeldPath::default()],
                    ..ok.clone()
                },
                "held 1",
            ),
        ];
        for (status, said) in cases {
            assert!(!status.converged(), "{status:?}");
            assert_eq!(status.summary(), said);
        }
        // Not reached yet (no exchange) but compared and clean: converged.
        assert!(PeerStatus { up: None, ..ok }.converged());
    }
}
