//! The API's routes and their handlers: who may call them, what each decodes and checks,
//! and how each failure becomes an HTTP status ([`ApiError`]).
//!
//! Handlers only decode, check and hand over: scanning lives in [`crate::manifest`],
//! writing in [`crate::apply`]. They must not know about sockets or TLS: what they learn
//! of the client comes from the listener's request extensions, so that the router can be
//! driven with `oneshot`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use tracing::{debug, info, warn};

use super::body::{self, BodyError};
use super::{ClientAddr, ClientSubject};
use crate::apply;
use crate::manifest;
use crate::node::{Answer, Node};
use crate::paths;
use crate::protocol::{
    self, ApplyResponse, ErrorBody, Identity, ManifestRequest, OpResult, Outcome, StatusResponse,
    MAX_MANIFEST_REQUEST_BYTES,
};

/// Errors a handler answers with; each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

/// The API routes. Requests without a [`ClientAddr`] extension are served too (tests).
///
/// Every route but the identity one (which says no more than who this node is, and
/// which a node's own command line asks to recognise it) is for the group's addresses
/// only: see [`Allowlist`](crate::access::Allowlist).
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(protocol::STATUS_ROUTE, get(status))
        .route(
            protocol::MANIFEST_ROUTE,
            post(manifest).layer(DefaultBodyLimit::max(MAX_MANIFEST_REQUEST_BYTES)),
        )
        .route(protocol::APPLY_ROUTE, post(apply))
        .route(protocol::COMPARE_ROUTE, post(compare))
        .route(
            protocol::CONTENT_ROUTE,
            post(content).layer(DefaultBodyLimit::max(MAX_MANIFEST_REQUEST_BYTES)),
        )
        .route_layer(middleware::from_fn_with_state(node.clone(), authorize))
        .route(protocol::IDENTITY_ROUTE, get(identity))
        .with_state(node)
}

/// Refuses (403) a client whose address is not allowed, before its request is read.
async fn authorize(
    State(node): State<Arc<Node>>,
    addr: Option<Extension<ClientAddr>>,
    subject: Option<Extension<ClientSubject>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(Extension(ClientAddr(client))) = addr {
        // This host's own command line may read the counters (`gosyncd status`).
        let own_status =
            request.uri().path() == protocol::STATUS_ROUTE && client.ip().is_loopback();
        if !own_status && !node.allow.allows(client.ip()).await {
            let subject = subject.map_or_else(|| "unknown".into(), |Extension(s)| s.0);
            let route = request.uri().path().to_string();
            warn!(
                %client,
                certificate = %subject,
                %route,
                "request refused: client address not allowed (not in {})",
                node.allow.source()
            );
            return ApiError::Forbidden(format!(
                "client address {} is not allowed to use {route} on this node: it is not one \
                 of the addresses in its {} (certificate: {subject})",
                client.ip(),
                node.allow.source()
            ))
            .into_response();
        }
        // A peer that calls may be back from an outage: what waits for it goes now.
        node.heard_from(client.ip());
    }
    next.run(request).await
}

async fn identity(State(node): State<Arc<Node>>) -> Json<Identity> {
    Json(node.identity.clone())
}

async fn status(State(node): State<Arc<Node>>) -> Json<StatusResponse> {
    Json(node.status())
}

/// Wakes the periodic comparison, which then runs at once (a comparison already running
/// runs again once it ends). Answers before it runs.
async fn compare(State(node): State<Arc<Node>>) -> (StatusCode, Json<serde_json::Value>) {
    node.reconcile_now.notify_one();
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "comparing": true })),
    )
}

fn client_of(addr: &Option<Extension<ClientAddr>>) -> String {
    addr.as_ref().map_or_else(
        || "unknown".to_string(),
        |Extension(ClientAddr(a))| a.to_string(),
    )
}

async fn manifest(
    State(node): State<Arc<Node>>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ManifestRequest = serde_json::from_slice(&body)
        .map_err(|e| refuse(&addr, format!("malformed manifest request: {e}")))?;
    for (field, paths) in [
        ("scope", &request.scope),
        ("shallow", &request.shallow),
        ("levels", &request.levels),
    ] {
        for path in paths {
            paths::check_normalized(path).map_err(|e| refuse(&addr, format!("{field}: {e}")))?;
        }
    }
    if let Some(path) = request
        .levels
        .iter()
        .find(|p| !node.config.directories.iter().any(|d| &d.path == *p))
    {
        return Err(refuse(
            &addr,
            format!("levels: {path} is not a configured directory on this node"),
        ));
    }
    let listing = request.levels.is_empty() && !request.digests_only;
    if listing {
        // Walked as it is sent (see `Answer::Listing`).
        return Ok(streamed_json(Answer::Listing {
            node,
            scope: request.scope,
            shallow: request.shallow,
        }));
    }
    let response = tokio::task::spawn_blocking(move || {
        if !request.levels.is_empty() {
            return Answer::Whole(node.levels(&request.levels));
        }
        let region = paths::Region {
            scope: &request.scope,
            shallow: &request.shallow,
        };
        let mut answer = if region.is_everything() {
            node.whole_tree_digests()
        } else {
            let scan = manifest::scan_region(&node.config, region, &node.cache);
            node.digests_answer(scan)
        };
        answer.receiving = node
            .until_quiet(crate::reconcile::QUIET_AFTER_RECEIVING)
            .is_some();
        Answer::Whole(answer)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("scan failed: {e}")))?;
    Ok(streamed_json(response))
}

/// An answer serialised as it is sent, a frame at a time, by a blocking task: a listing
/// of 100,000 paths is about 30 MB of JSON, which a buffer made whole would hold (and
/// up to twice that as it grows) beside the listing itself.
fn streamed_json(answer: impl serde::Serialize + Send + 'static) -> Response {
    let (tx, stream) = protocol::frames::channel();
    tokio::task::spawn_blocking(move || {
        let mut frames = protocol::frames::Frames::new(&tx);
        match serde_json::to_writer(&mut frames, &answer) {
            Ok(()) => {
                let _ = frames.finish();
            }
            // The answer is cut off as failed, never ended as if whole (when the client
            // is gone, there is no one to tell).
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(format!(
                    "cannot encode the answer: {e}"
                ))));
            }
        }
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn content(
    State(node): State<Arc<Node>>,
    addr: Option<Extension<ClientAddr>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: protocol::ContentRequest = serde_json::from_slice(&body)
        .map_err(|e| refuse(&addr, format!("malformed content request: {e}")))?;
    // Each path once: a path asked for many times is read and sent once.
    let mut seen = std::collections::HashSet::new();
    let paths: Vec<String> = request
        .paths
        .into_iter()
        .filter(|p| seen.insert(p.clone()))
        .collect();
    for path in &paths {
        crate::tree::confine(&node.config, path).map_err(|e| refuse(&addr, e))?;
    }
    // Streamed as it is read, one file at a time, and capped: once the answer would pass
    // MAX_CONTENT_ANSWER_BYTES, the files left are answered as deferred, unread.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let config = node.config.clone();
    tokio::task::spawn_blocking(move || {
        let send = |chunk: Vec<u8>| tx.blocking_send(Ok(Bytes::from(chunk))).is_ok();
        if !send(b"{\"files\":[".to_vec()) {
            return;
        }
        // What the answer holds so far, as sent (JSON escapes included).
        let mut total = 0u64;
        let mut full = false;
        for (i, path) in paths.iter().enumerate() {
            let deferred = || protocol::FileText {
                path: path.clone(),
                text: None,
                note: Some("deferred: this answer is full, ask again".into()),
                deferred: true,
            };
            let file = if full {
                deferred()
            } else {
                crate::diff::read_text(&config, path, protocol::MAX_DIFF_FILE_BYTES)
            };
            let Ok(mut json) = serde_json::to_vec(&file) else {
                return;
            };
            // The first file always goes: every answer makes progress.
            if i > 0 && !full && total + json.len() as u64 > protocol::MAX_CONTENT_ANSWER_BYTES {
                full = true;
                let Ok(short) = serde_json::to_vec(&deferred()) else {
                    return;
                };
                json = short;
            }
            total += json.len() as u64;
            let mut chunk = if i > 0 { b",".to_vec() } else { Vec::new() };
            chunk.extend(json);
            if !send(chunk) {
                return;
            }
        }
        send(b"]}".to_vec());
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::Internal(format!("content answer: {e}")))
}

async fn apply(
    State(node): State<Arc<Node>>,
    addr: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limits = &node.config.limits;
    let limit = limits.max_request_size as usize;
    let _arriving = node.receiving();
    let Ok(receiving) = node.applies.clone().try_acquire_owned() else {
        node.stats.applies_busy.fetch_add(1, Ordering::Relaxed);
        warn!(client = %client_of(&addr), limit = limits.max_concurrent_applies, "apply refused: too many under way");
        return Err(ApiError::Busy(format!(
            "{} apply requests are under way already (max_concurrent_applies); try again later",
            limits.max_concurrent_applies
        )));
    };
    let brief = headers
        .get(protocol::ANSWER_HEADER)
        .is_some_and(|v| v.as_bytes() == b"brief");
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(too_large(&addr, limit));
    }
    // The body is streamed: its contents go to temporary files as they arrive, hashed on
    // the way; nothing of it is held in memory but a few frames.
    let (frames, reader) = body::channel();
    let config = node.config.clone();
    let received = tokio::task::spawn_blocking(move || {
        let reader = protocol::BatchReader::start(reader)?;
        apply::validate_batch(&config, &reader.header)?;
        apply::receive(&config, reader)
    });
    let pumped = tokio::time::timeout(
        protocol::APPLY_TIMEOUT,
        body::pump(body, limit, limits.idle_timeout, frames),
    )
    .await;
    let received = received
        .await
        .map_err(|e| ApiError::Internal(format!("receiving the batch failed: {e}")))?;
    let bytes = match pumped {
        Err(_) => return Err(refuse(&addr, "request body not received in time".into())),
        Ok(Err(BodyError::TooLarge)) => return Err(too_large(&addr, limit)),
        Ok(Err(BodyError::Stalled)) => {
            return Err(refuse(
                &addr,
                format!(
                    "request body stalled: nothing received for {:?} (idle_timeout)",
                    limits.idle_timeout
                ),
            ))
        }
        Ok(Err(BodyError::Broken(e))) => {
            return Err(refuse(&addr, format!("request body not received: {e}")))
        }
        Ok(Ok(bytes)) => bytes,
    };
    let (header, staged) = received.map_err(|reason| refuse(&addr, reason))?;
    node.stats
        .bytes_received
        .fetch_add(bytes as u64, Ordering::Relaxed);
    // One batch at a time. The batch is applied, validated and committed by a task of its
    // own, which holds the lock: a client that disconnects cannot release it, nor stop
    // a batch half-way between being written and being validated.
    let one_at_a_time = node.apply_lock.clone().lock_owned().await;
    let writing = node.writing_batch();
    let client = client_of(&addr);
    node.stats.apply_requests.fetch_add(1, Ordering::Relaxed);
    let worker = node.clone();
    let origin = format!("a sync from {client}");
    let large = header.ops.len() >= crate::memory::LARGE_WORK;
    // Where the batch may change the tree: its paths (a rollback restores those too).
    let touched: Vec<std::path::PathBuf> = match large {
        true => Vec::new(),
        false => header
            .ops
            .iter()
            .map(|op| node.config.local_path(&op.path))
            .collect(),
    };
    let task = tokio::spawn(async move {
        let held = (one_at_a_time, receiving, writing);
        let receiver = worker.receiver();
        let record = |path: &str, state, stamp| worker.record_received(path, state, stamp);
        let results = receiver
            .apply_and_validate(header, staged, origin, record)
            .await;
        // Whatever it left, the tree may have changed: answers computed before are not
        // current any more, even before the watcher sees the writes.
        match large {
            true => worker.generation.bump(),
            false => worker
                .generation
                .bump_at(touched.iter().map(|p| p.as_path())),
        }
        drop(held);
        if large {
            crate::memory::give_back_soon();
        }
        let received = match results {
            Ok(received) => received,
            Err(reason) => {
                warn!(%client, %reason, "batch refused once it had arrived");
                return ApplyResponse::refusal(reason);
            }
        };
        let actions = receiver
            .run_on_change(&worker.runner, received.changed)
            .await;
        // Counted and logged here, where a client that disconnects stops nothing.
        count_and_log(&worker, &client, &received.results);
        count_and_log_resolved(&worker, &client, &received.resolved);
        let every = received
            .results
            .iter()
            .all(|r| r.outcome == Outcome::Applied && r.found.is_none());
        let mut results = received.results;
        // A brief answer: their count instead of the results.
        let applied = (brief && every).then(|| std::mem::take(&mut results).len());
        ApplyResponse {
            results,
            actions,
            refused: None,
            applied,
        }
    });
    // The answer begins now: the batch has arrived whole and holds the turn to be
    // applied, so that a sender may send its next batch meanwhile, knowing that this one
    // is applied first. What became of each operation follows once it is done.
    let answer = async move {
        let answer = task
            .await
            .unwrap_or_else(|e| ApplyResponse::refusal(format!("apply failed: {e}")));
        let json = serde_json::to_vec(&answer).expect("an apply answer serialises");
        Ok::<_, std::convert::Infallible>(Bytes::from(json))
    };
    Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures_util::stream::once(answer)))
        .map_err(|e| ApiError::Internal(format!("apply answer: {e}")))
}

/// Counts and logs the conflicts a batch from `client` settled for its versions, newer
/// than this node's (`on_conflict = "newest"`).
fn count_and_log_resolved(node: &Node, client: &str, resolved: &[apply::Resolution]) {
    let time = |ns: i64| chrono::DateTime::from_timestamp_nanos(ns);
    for r in resolved {
        node.stats
            .conflicts_resolved_newest
            .fetch_add(1, Ordering::Relaxed);
        let backup = r.backup.as_ref().map_or_else(
            || "none (a directory has no content to keep)".to_string(),
            |kept| kept.display().to_string(),
        );
        warn!(
            %client,
            path = %r.path,
            incoming_mtime = %time(r.incoming_mtime_ns),
            replaced_mtime = %time(r.replaced_mtime_ns),
            %backup,
            "conflict settled for the newer version (on_conflict = \"newest\"): this node's own, older edit was replaced; `backup` says where it was kept"
        );
    }
}

/// Counts and logs how each operation of a batch from `client` ended.
fn count_and_log(node: &Node, client: &str, results: &[OpResult]) {
    let mut applied = 0;
    for result in results {
        match &result.outcome {
            Outcome::Applied => {
                applied += 1;
                node.stats.applied.fetch_add(1, Ordering::Relaxed);
                debug!(%client, path = %result.path, "applied");
            }
            Outcome::Kept(reason) => debug!(%client, path = %result.path, %reason, "kept"),
            Outcome::Conflict(reason) => {
                node.stats.conflicts_refused.fetch_add(1, Ordering::Relaxed);
                warn!(%client, path = %result.path, %reason, "conflict: operation refused")
            }
            Outcome::Failed(reason) => {
                warn!(%client, path = %result.path, %reason, "operation failed, the sender retries")
            }
            Outcome::Refused(reason) => {
                warn!(%client, path = %result.path, %reason, "operation refused")
            }
            Outcome::Rejected(reason) => {
                node.stats.rejected.fetch_add(1, Ordering::Relaxed);
                warn!(%client, path = %result.path, %reason, "rejected and rolled back")
            }
        }
    }
    info!(%client, operations = results.len(), applied, "batch applied");
}

fn too_large(addr: &Option<Extension<ClientAddr>>, limit: usize) -> ApiError {
    warn!(client = %client_of(addr), limit, "request body too large");
    ApiError::TooLarge(format!(
        "request body exceeds this node's max_request_size of {limit} bytes"
    ))
}

fn refuse(addr: &Option<Extension<ClientAddr>>, reason: String) -> ApiError {
    warn!(client = %client_of(addr), %reason, "request refused");
    ApiError::BadRequest(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ManifestResponse;
    use crate::protocol::{DirectoryInfo, PeerLimits, WireEntry};
    use crate::testing::file_entry;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_listing_streamed_frame_by_frame_is_the_listing_encoded_whole() {
        // About 1.5 MB of JSON: many frames.
        let answer = ManifestResponse {
            identity: Identity {
                node_id: "node".into(),
                version: "test".into(),
            },
            owners: true,
            directories: vec![DirectoryInfo {
                path: "/etc/app".into(),
                exclude: Vec::new(),
                present: true,
                together: false,
            }],
            entries: (0..10_000)
                .map(|i| WireEntry {
                    path: format!("/etc/app/conf.d/{i:05}.conf").into(),
                    entry: file_entry(i.to_string().as_bytes()),
                })
                .collect(),
            unreadable: vec!["/etc/app/secret".into()],
            limits: PeerLimits::default(),
            digests: Vec::new(),
            receiving: false,
        };
        let whole = serde_json::to_vec(&answer).unwrap();
        assert!(whole.len() > 4 * protocol::frames::FRAME_BYTES);
        let response = streamed_json(answer.clone());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[axum::http::header::CONTENT_TYPE],
            "application/json"
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(body.len(), whole.len());
        assert!(body == whole, "the streamed answer differs");
        let back: ManifestResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(back.entries, answer.entries);
    }
}
