//! The wire contract between nodes: API version, routes, limits, the types that travel,
//! and the binary batch format that carries file contents without base64.
//!
//! Everything a peer sends is decoded here; nothing here touches the filesystem.
//!
//! Split along the contract: `state` holds what a path is (`Entry`, `Content`,
//! `Digest256`); `operation` what a sender asks for one path and how it ended (`Op`,
//! `Outcome`, `OpResult`); `batch` the binary body of an apply request, encoded and
//! decoded; `messages` the JSON requests and answers of each route. This file holds the
//! API version, the routes, the limits and the timeouts, and re-exports every item of
//! its children, so `protocol::` paths stay as they were.

use std::time::Duration;

mod batch;
pub mod frames;
mod messages;
mod operation;
mod state;

pub use batch::{
    batch_header_length, decode_batch, encode_batch, encode_batch_header, write_batch_header,
    Batch, BatchHeader, BatchReader, ContentError,
};
pub use messages::{
    ActionReport, ApplyAnswer, ApplyAnswered, ApplyResponse, ContentRequest, ContentResponse,
    DirectoryDigest, DirectoryInfo, ErrorBody, FileText, HeldKind, HeldPath, Identity,
    ManifestRequest, ManifestResponse, OpAnswer, PeerLimits, PeerStatus, Role, StatusCounters,
    StatusResponse,
};
pub(crate) use operation::{change_of, content_needed};
pub use operation::{Action, ChangeKind, Found, Op, OpResult, Outcome};
pub use state::{same_or_absent, Content, Digest256, Entry, WireEntry};

/// Version of the HTTP API; every route lives under `/v1/`.
pub const API_VERSION: &str = "v1";
/// Returns the identity of the serving process.
pub const IDENTITY_ROUTE: &str = "/v1/identity";
/// Returns a daemon's counters.
pub const STATUS_ROUTE: &str = "/v1/status";
/// Asks a daemon to compare its tree with every peer's now, rather than at its next
/// `reconcile_interval` (`gosyncd resolve`, once the chosen version is everywhere).
pub const COMPARE_ROUTE: &str = "/v1/compare";
/// Returns the receiver's manifest (optionally limited to a scope).
pub const MANIFEST_ROUTE: &str = "/v1/manifest";
/// The route answering the text of some files, for `sync -dry --diff`.
pub const CONTENT_ROUTE: &str = "/v1/content";
/// Largest file whose text `/v1/content` returns (larger ones are only named).
pub const MAX_DIFF_FILE_BYTES: u64 = 1024 * 1024;
/// Most text one `/v1/content` answer holds; the files past it are answered as
/// deferred, to be asked for again.
pub const MAX_CONTENT_ANSWER_BYTES: u64 = 16 * 1024 * 1024;
/// Applies one batch of operations with their contents. The answer begins once the
/// batch has arrived whole and holds its turn to be applied (status 200; a refusal
/// before that is a 4xx); its body, the [`ApplyResponse`], follows once the batch is
/// done. A batch sent after that beginning is applied after this one.
pub const APPLY_ROUTE: &str = "/v1/apply";
/// Media type of an apply request body.
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.gosyncd.batch";
/// Request header of an apply request (with the value `brief`) whose sender takes an
/// answer of every operation applied as their count ([`ApplyResponse::applied`]) rather
/// than a result for each.
pub const ANSWER_HEADER: &str = "x-gosyncd-answer";

/// Magic bytes opening every batch body.
pub const BATCH_MAGIC: &[u8; 4] = b"GSB1";
/// The default `max_request_size`: the largest apply request body a receiver accepts,
/// and what a peer that announces no limits is assumed to accept.
pub const MAX_APPLY_BODY_BYTES: usize = 512 * 1024 * 1024;
/// The default `max_file_size`: the largest file a receiver accepts, and what a peer
/// that announces no limits is assumed to accept.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 256 * 1024 * 1024;
/// Largest JSON header inside a batch body.
pub const MAX_BATCH_HEADER_BYTES: usize = 64 * 1024 * 1024;
/// Largest manifest request body (a list of scope paths).
pub const MAX_MANIFEST_REQUEST_BYTES: usize = 1024 * 1024;
/// Most operations one batch may carry.
pub const MAX_OPS_PER_BATCH: usize = 1_000_000;
/// Apply requests a receiver takes at once unless configured otherwise
/// (`max_concurrent_applies`).
pub const DEFAULT_CONCURRENT_APPLIES: usize = 4;
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
