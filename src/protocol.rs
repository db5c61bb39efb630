//! The wire contract between nodes: API version, routes, limits, the types that travel,
//! and the binary batch format that carries file contents without base64.
//!
//! Everything a peer sends is decoded here; nothing here touches the filesystem.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the HTTP API; every route lives under `/v1/`.
pub const API_VERSION: &str = "v1";
/// Returns the identity of the serving process.
pub const IDENTITY_ROUTE: &str = "/v1/identity";
/// Returns a daemon's counters.
pub const STATUS_ROUTE: &str = "/v1/status";
/// Returns the receiver's manifest (optionally limited to a scope).
pub const MANIFEST_ROUTE: &str = "/v1/manifest";
/// The route answering the text of some files, for `sync -dry --diff`.
pub const CONTENT_ROUTE: &str = "/v1/content";
/// Largest file whose text `/v1/content` returns (larger ones are only named).
pub const MAX_DIFF_FILE_BYTES: u64 = 1024 * 1024;
/// Applies one batch of operations with their contents.
pub const APPLY_ROUTE: &str = "/v1/apply";
/// Media type of an apply request body.
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.gosyncd.batch";

/// Magic bytes opening every batch body.
pub const BATCH_MAGIC: &[u8; 4] = b"GSB1";
/// The default `max_request_size`: the largest apply request body a receiver accepts,
/// and what a peer that announces no limits is assumed to accept.
pub const MAX_APPLY_BODY_BYTES: usize = 512 * 1024 * 1024;
/// Request body bytes a receiver buffers at once, across all concurrent pushes; must
/// be at least [`MAX_APPLY_BODY_BYTES`].
pub const MAX_BUFFERED_BODY_BYTES: usize = 1024 * 1024 * 1024;
/// Largest JSON header inside a batch body.
pub const MAX_BATCH_HEADER_BYTES: usize = 64 * 1024 * 1024;
/// Largest manifest request body (a list of scope paths).
pub const MAX_MANIFEST_REQUEST_BYTES: usize = 1024 * 1024;
/// Most operations one batch may carry.
pub const MAX_OPS_PER_BATCH: usize = 1_000_000;
/// Longest path accepted on the wire, in bytes (Linux's PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest symlink target accepted on the wire, in bytes.
pub const MAX_LINK_TARGET_BYTES: usize = 4096;

/// Time allowed to open a TCP connection to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for a manifest request, scanning included.
pub const MANIFEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for an apply request, upload and fsyncs included.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(600);
/// Time allowed for the identity request that detects this node behind an alias.
pub const IDENTITY_TIMEOUT: Duration = Duration::from_secs(3);
/// Time after which a connection to a peer that stopped acknowledging (its link was
/// cut, it was powered off) fails, even in the middle of a request.
pub const LINK_LOSS_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A SHA-256 digest, hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest256(pub [u8; 32]);

impl Digest256 {
    /// Hashes a byte slice.
    pub fn of(bytes: &[u8]) -> Self {
        Digest256(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Digest256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for Digest256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&text, &mut out)
            .map_err(|_| serde::de::Error::custom("sha256 must be 64 hex digits"))?;
        Ok(Digest256(out))
    }
}

/// What a path is, with what identifies its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Content {
    File { size: u64, sha256: Digest256 },
    Dir,
    Symlink { target: String },
}

impl Content {
    /// A short name for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Content::File { .. } => "file",
            Content::Dir => "directory",
            Content::Symlink { .. } => "symlink",
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Content::Dir)
    }
}

/// The state of one path: content plus metadata.
///
/// `mtime` travels so that receivers can keep it, but it never takes part in a
/// comparison: no decision depends on clocks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(flatten)]
    pub content: Content,
    /// Permission bits, `0o7777` at most.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time in nanoseconds since the Unix epoch.
    #[serde(default)]
    pub mtime_ns: i64,
}

impl Entry {
    /// Whether two entries describe the same state; owners only count when `owners` is set.
    pub fn same_state(&self, other: &Entry, owners: bool) -> bool {
        self.content == other.content
            && (self.content_is_link() || self.mode == other.mode)
            && (!owners || (self.uid == other.uid && self.gid == other.gid))
    }

    fn content_is_link(&self) -> bool {
        // Permission bits of a symlink are meaningless on Linux and cannot be set.
        matches!(self.content, Content::Symlink { .. })
    }

    /// A one-line description for conflict messages.
    pub fn describe(&self) -> String {
        match &self.content {
            Content::File { sha256, .. } => format!("file sha256 {sha256} mode {:o}", self.mode),
            Content::Dir => format!("directory mode {:o}", self.mode),
            Content::Symlink { target } => format!("symlink to {target:?}"),
        }
    }
}

/// One path with its state, as listed in a manifest response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    pub path: String,
    #[serde(flatten)]
    pub entry: Entry,
}

/// Asks a receiver for its manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRequest {
    /// Logical paths limiting the listing (with their ancestors); empty means everything.
    #[serde(default)]
    pub scope: Vec<String>,
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
    pub applied: u64,
    pub conflicts_refused: u64,
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
}

/// A daemon's automatic pushes to one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer as written in `remotes`.
    pub peer: String,
    /// Changed paths waiting to be pushed to it (it is unreachable, or a push is under
    /// way).
    pub pending: u64,
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
    /// Its text, when it is a UTF-8 regular file no larger than [`MAX_DIFF_FILE_BYTES`].
    pub text: Option<String>,
    /// Why there is no text: `missing`, `binary`, `too large`, `not a regular file`, ...
    pub note: Option<String>,
}

/// The answer of `/v1/content`, in the order asked.
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
    pub entries: Vec<WireEntry>,
    /// Subtrees the receiver could not read; senders leave them alone.
    #[serde(default)]
    pub unreadable: Vec<String>,
    /// What the receiver accepts in one apply request; senders fit their pushes to it.
    #[serde(default)]
    pub limits: PeerLimits,
}

/// The limits a receiver announces in its manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLimits {
    pub max_request_size: u64,
    pub max_file_size: u64,
    pub max_batch_entries: usize,
}

impl From<&crate::limits::Limits> for PeerLimits {
    fn from(limits: &crate::limits::Limits) -> Self {
        PeerLimits {
            max_request_size: limits.max_request_size,
            max_file_size: limits.max_file_size,
            max_batch_entries: limits.max_batch_entries,
        }
    }
}

impl Default for PeerLimits {
    /// What a peer that announces nothing is assumed to accept: the defaults.
    fn default() -> Self {
        PeerLimits::from(&crate::limits::Limits::default())
    }
}

/// What an operation does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    /// Make the path hold `entry`. File content follows in the batch body when
    /// [`Op::needs_content`] says so.
    Put { entry: Entry },
    /// Remove the path (a directory only when it is empty).
    Delete,
}

/// One operation, with the receiver's state it was planned against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub path: String,
    #[serde(flatten)]
    pub action: Action,
    /// What the receiver held when the operation was planned (`None`: nothing).
    /// The receiver refuses the operation as a conflict when this no longer holds.
    pub expect: Option<Entry>,
}

impl Op {
    /// Whether the batch body carries content for this operation: a file whose
    /// content differs from what the receiver is expected to hold.
    pub fn needs_content(&self) -> Option<u64> {
        let Action::Put { entry } = &self.action else {
            return None;
        };
        let Content::File { size, sha256 } = &entry.content else {
            return None;
        };
        match &self.expect {
            Some(Entry {
                content: Content::File { sha256: old, .. },
                ..
            }) if old == sha256 => None,
            _ => Some(*size),
        }
    }

    /// The change this operation makes, as shown to users.
    pub fn change(&self) -> ChangeKind {
        match (&self.action, &self.expect) {
            (Action::Delete, _) => ChangeKind::Deleted,
            (Action::Put { .. }, None) => ChangeKind::Added,
            (Action::Put { .. }, Some(_)) => ChangeKind::Updated,
        }
    }
}

/// The three kinds of change users see as `[+]`, `[M]` and `[-]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Updated,
    Deleted,
}

/// The JSON header of a batch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    pub ops: Vec<Op>,
}

/// How one operation ended on the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum Outcome {
    Applied,
    /// The receiver's state differed from the operation's expectation; nothing written.
    Conflict(String),
    /// The operation could not be carried out; the old state is intact.
    Failed(String),
    /// A directory was not removed because it holds paths excluded on the receiver.
    Kept(String),
    /// Applied, then put back: the directory's `validate` command refused the result.
    Rejected(String),
}

/// The receiver's answer to a batch, one result per operation in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub results: Vec<OpResult>,
    /// The `on_change` commands the batch made the receiver run.
    #[serde(default)]
    pub actions: Vec<ActionReport>,
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
    /// The first line of its error output (or output).
    pub first_line: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpResult {
    pub path: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The error body of every 4xx/5xx answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Encodes a batch: magic, header length (u32 big-endian), JSON header, then the
/// contents of the operations that need one, back to back, in order.
pub fn encode_batch(header: &BatchHeader, contents: &[&[u8]]) -> Vec<u8> {
    let mut out = encode_batch_header(header);
    for c in contents {
        out.extend_from_slice(c);
    }
    out
}

/// The start of a batch body: magic, header length and JSON header. The contents follow
/// (a sender may stream them from shared buffers instead of copying them in).
pub fn encode_batch_header(header: &BatchHeader) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("batch header serialises");
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(BATCH_MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// A decoded batch: the header and, for each operation, its content range in the body.
#[derive(Debug)]
pub struct Batch<'a> {
    pub header: BatchHeader,
    /// `contents[i]` is the content of `header.ops[i]`, when it needs one.
    pub contents: Vec<Option<&'a [u8]>>,
}

/// Decodes and checks the framing of a batch body. Paths are checked by the receiver.
pub fn decode_batch(body: &[u8]) -> Result<Batch<'_>, String> {
    if body.len() < 8 || &body[..4] != BATCH_MAGIC {
        return Err("not a gosyncd batch (bad magic)".into());
    }
    let len = u32::from_be_bytes(body[4..8].try_into().expect("4 bytes")) as usize;
    if len > MAX_BATCH_HEADER_BYTES {
        return Err(format!(
            "batch header of {len} bytes exceeds the limit of {MAX_BATCH_HEADER_BYTES}"
        ));
    }
    let rest = &body[8..];
    if rest.len() < len {
        return Err("batch body shorter than its header length".into());
    }
    let header: BatchHeader =
        serde_json::from_slice(&rest[..len]).map_err(|e| format!("malformed batch header: {e}"))?;
    if header.ops.len() > MAX_OPS_PER_BATCH {
        return Err(format!(
            "batch of {} operations exceeds the limit of {MAX_OPS_PER_BATCH}",
            header.ops.len()
        ));
    }
    let mut data = &rest[len..];
    let mut contents = Vec::with_capacity(header.ops.len());
    for op in &header.ops {
        match op.needs_content() {
            None => contents.push(None),
            Some(size) => {
                let size = usize::try_from(size).map_err(|_| "file size too large")?;
                if data.len() < size {
                    return Err(format!("{}: content truncated", op.path));
                }
                let (content, tail) = data.split_at(size);
                let Action::Put { entry } = &op.action else {
                    unreachable!("only puts carry content")
                };
                if let Content::File { sha256, .. } = &entry.content {
                    let actual = Digest256::of(content);
                    if actual != *sha256 {
                        return Err(format!(
                            "{}: content sha256 {actual} does not match the announced {sha256}",
                            op.path
                        ));
                    }
                }
                contents.push(Some(content));
                data = tail;
            }
        }
    }
    if !data.is_empty() {
        return Err(format!(
            "{} trailing bytes after the last content",
            data.len()
        ));
    }
    Ok(Batch { header, contents })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{file_entry, put};

    #[test]
    fn batch_round_trips_binary_content() {
        let a: &[u8] = b"\x00\xffbinary\n";
        let b: &[u8] = b"";
        let header = BatchHeader {
            ops: vec![put("/etc/a", a), put("/etc/b", b)],
        };
        let body = encode_batch(&header, &[a, b]);
        let batch = decode_batch(&body).unwrap();
        assert_eq!(batch.contents, vec![Some(a), Some(b)]);
        assert_eq!(batch.header.ops, header.ops);
    }

    #[test]
    fn batch_with_wrong_hash_is_refused() {
        let header = BatchHeader {
            ops: vec![put("/etc/a", b"announced")],
        };
        let body = encode_batch(&header, &[b"different"]);
        let err = decode_batch(&body).unwrap_err();
        assert!(
            err.contains("/etc/a") && err.contains("does not match"),
            "{err}"
        );
    }

    #[test]
    fn batch_with_trailing_or_missing_bytes_is_refused() {
        let header = BatchHeader {
            ops: vec![put("/etc/a", b"abc")],
        };
        let mut body = encode_batch(&header, &[b"abc"]);
        body.push(0);
        assert!(decode_batch(&body).unwrap_err().contains("trailing"));
        let body = encode_batch(&header, &[b"ab"]);
        assert!(decode_batch(&body).unwrap_err().contains("truncated"));
        assert!(decode_batch(b"garbage!").unwrap_err().contains("magic"));
    }

    #[test]
    fn metadata_only_update_carries_no_content() {
        let mut op = put("/etc/a", b"same");
        op.expect = Some(file_entry(b"same"));
        assert_eq!(op.needs_content(), None);
        op.expect = Some(file_entry(b"other"));
        assert_eq!(op.needs_content(), Some(4));
    }
}

/// Hostile input for the wire decoder: whatever the bytes, it answers, and what it
/// accepts is consistent with what it read.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Bodies built from pieces a decoder must handle: the magic or not, any length
    /// word, JSON that is nearly a header, and noise.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let header_json = prop_oneof![
            Just(r#"{"ops":[]}"#.to_string()),
            "[a-z\\\"{}\\[\\]:,0-9 ]{0,80}",
            (any::<u64>(), "[/a-z.]{0,20}").prop_map(|(n, p)| format!(
                r#"{{"ops":[{{"path":"{p}","action":"put","entry":{{"type":"file","sha256":"{}","size":{n},"mode":420,"uid":0,"gid":0}}}}]}}"#,
                "ab".repeat(32)
            )),
        ];
        (
            prop_oneof![
                Just(BATCH_MAGIC.to_vec()),
                prop::collection::vec(any::<u8>(), 0..6)
            ],
            prop_oneof![any::<u32>(), 0u32..200],
            header_json,
            prop::collection::vec(any::<u8>(), 0..64),
            any::<bool>(),
        )
            .prop_map(|(magic, len, json, tail, honest_len)| {
                let mut out = magic;
                let len = if honest_len { json.len() as u32 } else { len };
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(json.as_bytes());
                out.extend_from_slice(&tail);
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::testing::cases(2000)))]

        #[test]
        fn the_decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&bytes);
        }

        #[test]
        fn a_batch_with_flipped_bytes_is_refused_or_still_hashes_right(
            files in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..4),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let ops: Vec<Op> = files
                .iter()
                .enumerate()
                .map(|(i, bytes)| crate::testing::put(&format!("/etc/app/f{i}"), bytes))
                .collect();
            let contents: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
            let mut body = encode_batch(&BatchHeader { ops }, &contents);
            for (at, mask) in flips {
                let i = at.index(body.len());
                body[i] ^= mask;
            }
            if let Ok(batch) = decode_batch(&body) {
                for (op, content) in batch.header.ops.iter().zip(&batch.contents) {
                    if let (Action::Put { entry }, Some(bytes)) = (&op.action, content) {
                        if let Content::File { sha256, size } = &entry.content {
                            prop_assert_eq!(*sha256, Digest256::of(bytes));
                            prop_assert_eq!(*size, bytes.len() as u64);
                        }
                    }
                }
            }
        }

        #[test]
        fn what_the_decoder_accepts_has_every_content_it_announces(body in body()) {
            if let Ok(batch) = decode_batch(&body) {
                prop_assert_eq!(batch.contents.len(), batch.header.ops.len());
                for (op, content) in batch.header.ops.iter().zip(&batch.contents) {
                    match (op.needs_content(), content) {
                        (Some(size), Some(bytes)) => {
                            prop_assert_eq!(size, bytes.len() as u64);
                        }
                        (None, None) => {}
                        (needed, got) => prop_assert!(false, "content {:?} for {:?}", got.map(|b| b.len()), needed),
                    }
                }
            }
        }
    }
}
