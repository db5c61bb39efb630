//! A client for one peer's API: typed calls over reqwest with our TLS identity, each
//! with a timeout, and errors that say in plain words what went wrong.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::config::Remote;
use crate::paths::Region;
use crate::protocol::{
    self, ApplyResponse, ContentRequest, ContentResponse, ErrorBody, Identity, ManifestRequest,
    ManifestResponse, StatusResponse,
};
use crate::tls;

/// Why a call to a peer failed, worded for the operator.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The peer could not be reached, or did not answer properly: worth retrying.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered and refused the request: sending it again is useless.
    #[error("{0}")]
    Refused(String),
    /// The peer is there but could not take the request this moment: it answered 503
    /// (too many applies under way), or the connection was reset during the call.
    /// Worth sending again in a moment.
    #[error("{0}")]
    Busy(String),
}

impl PeerError {
    pub fn is_refusal(&self) -> bool {
        matches!(self, PeerError::Refused(_))
    }

    /// Whether the same call is worth making again within seconds.
    pub fn is_momentary(&self) -> bool {
        matches!(self, PeerError::Busy(_))
    }
}

/// The HTTP client shared by every peer (connection pool and our identity), with the TLS
/// configuration it was built from, kept for diagnosing refusals.
#[derive(Clone)]
pub struct Transport {
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    local: Option<IpAddr>,
    /// Largest answer accepted (`max_manifest_size`).
    max_response: u64,
}

impl Transport {
    /// Accepts answers up to `bytes` (default: the default `max_manifest_size`).
    pub fn with_max_response(mut self, bytes: u64) -> Transport {
        self.max_response = bytes;
        self
    }
}

/// Silence on a connection before TCP asks the peer whether it is still there.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between two such probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Probes unanswered before the connection counts as lost: with the two above, a silent
/// link is given up after 25 s.
const KEEPALIVE_PROBES: u32 = 3;

/// Builds the transport shared by every peer. With `local`, connections are made from
/// that address (the one `bind_address` names), so that peers see the address they
/// expect.
pub fn http_client(tls: rustls::ClientConfig, local: Option<IpAddr>) -> anyhow::Result<Transport> {
    let http = reqwest::Client::builder()
        .local_address(local)
        // A peer whose link is cut mid-request would otherwise hold a request for as
        // long as TCP retransmits (many minutes): unacknowledged data, or silence on an
        // idle connection, fails it within LINK_LOSS_TIMEOUT instead.
        .tcp_keepalive(KEEPALIVE_IDLE)
        .tcp_keepalive_interval(KEEPALIVE_INTERVAL)
        .tcp_keepalive_retries(KEEPALIVE_PROBES)
        .tcp_user_timeout(protocol::LINK_LOSS_TIMEOUT)
        .use_preconfigured_tls(tls.clone())
        .connect_timeout(protocol::CONNECT_TIMEOUT)
        .no_proxy()
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    Ok(Transport {
        http,
        tls: Arc::new(tls),
        local,
        max_response: crate::config::Limits::default().max_manifest_size,
    })
}

/// The bytes `paths` take in a JSON request, at most (every character that may be
/// escaped counted as its longest escape).
fn json_length(paths: &[String]) -> usize {
    paths
        .iter()
        .map(|p| {
            let escaped: usize = p
                .chars()
                .map(|c| match c {
                    '"' | '\\' => 2,
                    c if (c as u32) < 0x20 => 6,
                    c => c.len_utf8(),
                })
                .sum();
            escaped + 3
        })
        .sum()
}

/// `paths` in consecutive parts of at most `budget` JSON bytes each (a path longer than
/// that alone in its part).
fn parts(paths: &[String], budget: usize) -> impl Iterator<Item = &[String]> {
    let mut rest = paths;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut used = 0;
        let mut end = 0;
        while end < rest.len() {
            let length = json_length(&rest[end..=end]);
            if end > 0 && used + length > budget {
                break;
            }
            used += length;
            end += 1;
        }
        let (part, after) = rest.split_at(end);
        rest = after;
        Some(part)
    })
}

/// A peer: the remote as configured and the shared transport.
#[derive(Clone)]
pub struct Peer {
    pub remote: Remote,
    transport: Transport,
}

impl Peer {
    pub fn new(remote: Remote, transport: Transport) -> Peer {
        Peer { remote, transport }
    }

    /// The peer's counters and what its watcher knows of its own peers.
    pub async fn status(&self) -> Result<StatusResponse, PeerError> {
        let request = self
            .transport
            .http
            .get(format!("{}{}", self.remote.url(), protocol::STATUS_ROUTE))
            .timeout(protocol::IDENTITY_TIMEOUT);
        self.call(request, protocol::IDENTITY_TIMEOUT).await
    }

    /// Asks the peer's daemon to compare with its peers now.
    pub async fn compare(&self) -> Result<(), PeerError> {
        let request = self
            .transport
            .http
            .post(format!("{}{}", self.remote.url(), protocol::COMPARE_ROUTE))
            .timeout(protocol::IDENTITY_TIMEOUT);
        self.call::<serde_json::Value>(request, protocol::IDENTITY_TIMEOUT)
            .await
            .map(drop)
    }

    /// The peer's identity.
    pub async fn identity(&self) -> Result<Identity, PeerError> {
        let request = self
            .transport
            .http
            .get(format!("{}{}", self.remote.url(), protocol::IDENTITY_ROUTE))
            .timeout(protocol::IDENTITY_TIMEOUT);
        self.call(request, protocol::IDENTITY_TIMEOUT).await
    }

    /// The peer's manifest, limited to `scope` (empty: everything).
    pub async fn manifest(&self, scope: &[String]) -> Result<ManifestResponse, PeerError> {
        self.listing(Region::scope(scope)).await
    }

    /// The peer's manifest, limited to `region`. A region naming more paths than one
    /// request may carry ([`protocol::MAX_MANIFEST_REQUEST_BYTES`]: a watcher's burst of
    /// 100,000 deletions) is asked for in parts, and their answers merged.
    pub async fn listing(&self, region: Region<'_>) -> Result<ManifestResponse, PeerError> {
        let budget = protocol::MAX_MANIFEST_REQUEST_BYTES / 2;
        if json_length(region.scope) + json_length(region.shallow) <= budget {
            return self
                .ask_manifest(ManifestRequest {
                    scope: region.scope.to_vec(),
                    shallow: region.shallow.to_vec(),
                    ..ManifestRequest::default()
                })
                .await;
        }
        let scoped = parts(region.scope, budget).map(|part| ManifestRequest {
            scope: part.to_vec(),
            ..ManifestRequest::default()
        });
        let shallow = parts(region.shallow, budget).map(|part| ManifestRequest {
            shallow: part.to_vec(),
            ..ManifestRequest::default()
        });
        let mut merged: Option<ManifestResponse> = None;
        for asked in scoped.chain(shallow) {
            let answer = self.ask_manifest(asked).await?;
            merged = Some(match merged {
                None => answer,
                Some(so_far) => so_far.merged(answer),
            });
        }
        let mut merged = merged.expect("a region over the budget has a part");
        merged.dedup();
        Ok(merged)
    }

    /// The digest of each of the peer's configured directories (its manifest without
    /// its entries): a comparison that costs a few bytes while the trees agree.
    pub async fn digests(&self) -> Result<ManifestResponse, PeerError> {
        self.ask_manifest(ManifestRequest {
            digests_only: true,
            ..ManifestRequest::default()
        })
        .await
    }

    /// The digest of each level of the peer's configured directories `dirs` (see
    /// [`manifest::level_digests`](crate::manifest::level_digests)), to find where they
    /// differ without listing them.
    pub async fn levels(&self, dirs: &[String]) -> Result<ManifestResponse, PeerError> {
        self.ask_manifest(ManifestRequest {
            levels: dirs.to_vec(),
            ..ManifestRequest::default()
        })
        .await
    }

    async fn ask_manifest(&self, asked: ManifestRequest) -> Result<ManifestResponse, PeerError> {
        let request = self
            .transport
            .http
            .post(format!("{}{}", self.remote.url(), protocol::MANIFEST_ROUTE))
            .timeout(protocol::MANIFEST_TIMEOUT)
            .json(&asked);
        self.call(request, protocol::MANIFEST_TIMEOUT).await
    }

    /// The text of some of the peer's files, for a diff: asked again for what an answer
    /// deferred (one answer holds at most [`protocol::MAX_CONTENT_ANSWER_BYTES`]).
    pub async fn contents(&self, paths: &[String]) -> Result<ContentResponse, PeerError> {
        let mut files = Vec::new();
        let mut asked: Vec<String> = paths.to_vec();
        while !asked.is_empty() {
            let answer = self.contents_once(&asked).await?;
            let (deferred, answered): (Vec<_>, Vec<_>) =
                answer.files.into_iter().partition(|f| f.deferred);
            // A peer that answers nothing but deferrals would be asked forever.
            if answered.is_empty() {
                files.extend(deferred);
                break;
            }
            files.extend(answered);
            asked = deferred.into_iter().map(|f| f.path).collect();
        }
        Ok(ContentResponse { files })
    }

    /// One `/v1/content` request.
    async fn contents_once(&self, paths: &[String]) -> Result<ContentResponse, PeerError> {
        let request = self
            .transport
            .http
            .post(format!("{}{}", self.remote.url(), protocol::CONTENT_ROUTE))
            .timeout(protocol::MANIFEST_TIMEOUT)
            .json(&ContentRequest {
                paths: paths.to_vec(),
            });
        self.call(request, protocol::MANIFEST_TIMEOUT).await
    }

    /// Sends one batch body (see [`protocol::encode_batch`]).
    pub async fn apply(&self, body: Vec<u8>) -> Result<ApplyResponse, PeerError> {
        let length = body.len() as u64;
        self.apply_stream(reqwest::Body::from(body), length).await
    }

    /// Sends one batch body of `length` bytes, streamed as it is produced. The answer is
    /// read as `T`: [`ApplyResponse`] whole, or the sender's compact [`protocol::ApplyAnswer`].
    pub async fn apply_stream<T: protocol::ApplyAnswered>(
        &self,
        body: reqwest::Body,
        length: u64,
    ) -> Result<T, PeerError> {
        let begun = self.apply_request(body, length, false).await?;
        self.apply_answer(begun).await
    }

    /// Sends one batch body of `length` bytes, streamed as it is produced, until the
    /// answer begins: the peer has received the whole batch and holds its turn to apply
    /// it, before any batch sent from now on ([`protocol::APPLY_ROUTE`]). The answer is
    /// asked for brief: where every operation was applied, their count
    /// ([`ApplyResponse::applied`]) rather than a result each.
    pub async fn apply_begin(&self, body: reqwest::Body, length: u64) -> Result<Begun, PeerError> {
        self.apply_request(body, length, true).await
    }

    async fn apply_request(
        &self,
        body: reqwest::Body,
        length: u64,
        brief: bool,
    ) -> Result<Begun, PeerError> {
        let mut request = self
            .transport
            .http
            .post(format!("{}{}", self.remote.url(), protocol::APPLY_ROUTE))
            .timeout(protocol::APPLY_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, protocol::BATCH_CONTENT_TYPE)
            .header(reqwest::header::CONTENT_LENGTH, length);
        if brief {
            request = request.header(protocol::ANSWER_HEADER, "brief");
        }
        let (response, limit) = self
            .begin(request.body(body), protocol::APPLY_TIMEOUT)
            .await?;
        Ok(Begun { response, limit })
    }

    /// The rest of an answer [`Peer::apply_begin`] began, read as `T`, once the batch is
    /// done: a batch the peer refused after it arrived is an error.
    pub async fn apply_answer<T: protocol::ApplyAnswered>(
        &self,
        begun: Begun,
    ) -> Result<T, PeerError> {
        let mut answer: T = self.answer(begun.response, &begun.limit).await?;
        match answer.refused() {
            Some(reason) => Err(PeerError::Refused(format!(
                "refused the batch once it had arrived: {reason}"
            ))),
            None => Ok(answer),
        }
    }

    async fn call<T: DeserializeOwned + Send + 'static>(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, PeerError> {
        let (response, limit) = self.begin(request, timeout).await?;
        self.answer(response, &limit).await
    }

    /// Makes a call up to the beginning of a successful answer; an answer of another
    /// status is the error it says.
    async fn begin(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<(reqwest::Response, Limit), PeerError> {
        let started = std::time::Instant::now();
        let limit = Limit { timeout, started };
        let sent = request.send();
        tokio::pin!(sent);
        let answer = tokio::select! {
            answer = &mut sent => answer,
            reason = self.refused_meanwhile() => return Err(PeerError::Unreachable(reason)),
        };
        let response = match answer {
            Ok(response) => response,
            Err(e) if !e.is_timeout() && tls::explain(&e, tls::End::Client).is_none() => {
                // A TLS 1.3 server refuses a client certificate after the handshake, and
                // the HTTP stack then reports only a cancelled request: ask TLS directly.
                return Err(match self.diagnose_tls().await {
                    Some(reason) => PeerError::Unreachable(reason),
                    None => explain(&e, &limit),
                });
            }
            Err(e) => return Err(explain(&e, &limit)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok((response, limit));
        }
        let detail = match response.json::<ErrorBody>().await {
            Ok(body) => body.error,
            Err(_) => status.canonical_reason().unwrap_or("").to_string(),
        };
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("refused the request as too large (413) {detail}")
            }
            _ => format!("refused the request ({}): {detail}", status.as_u16()),
        };
        Err(if status.is_client_error() {
            PeerError::Refused(message)
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            PeerError::Busy(message)
        } else {
            PeerError::Unreachable(message)
        })
    }
}

impl Peer {
    /// The JSON answer of a call, read as `T`. A short answer is read whole first; a
    /// long one (a listing of 100,000 paths is about 30 MB) is read as it arrives, on a
    /// blocking thread, so that the bytes are never held whole beside what they decode
    /// into. Either way an answer over `max_manifest_size` is refused.
    async fn answer<T: DeserializeOwned + Send + 'static>(
        &self,
        mut response: reqwest::Response,
        limit: &Limit,
    ) -> Result<T, PeerError> {
        let most = self.transport.max_response;
        let too_large = || {
            PeerError::Refused(format!(
                "answer larger than this node's max_manifest_size of {most} bytes"
            ))
        };
        let unreadable =
            |e: serde_json::Error| PeerError::Refused(format!("unreadable answer: {e}"));
        // Every part of the answer counts towards `most`, read whole or not.
        let mut read = 0u64;
        let mut count = |chunk: &bytes::Bytes| {
            read += chunk.len() as u64;
            match read > most {
                true => Err(too_large()),
                false => Ok(()),
            }
        };
        let mut body = Vec::new();
        while body.len() <= READ_WHOLE_MAX {
            let Some(chunk) = response.chunk().await.map_err(|e| explain(&e, limit))? else {
                return serde_json::from_slice(&body).map_err(unreadable);
            };
            count(&chunk)?;
            body.extend_from_slice(&chunk);
        }
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
        let first = bytes::Bytes::from(body);
        let decoding = tokio::task::spawn_blocking(move || {
            let reader = std::io::BufReader::with_capacity(64 * 1024, Chunks { at: first, rx });
            serde_json::from_reader::<_, T>(reader)
        });
        let fed = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = count(&chunk) {
                        break Err(e);
                    }
                    // The decoder stopped early: it has its error.
                    if tx.send(chunk).await.is_err() {
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(explain(&e, limit)),
            }
        };
        drop(tx);
        let decoded = decoding.await.expect("answer decoder");
        // An answer cut short fails to decode: what cut it short is the error.
        fed?;
        decoded.map_err(unreadable)
    }
}

/// An answer up to this long is read whole, then decoded; a longer one is decoded as it
/// arrives (see [`Peer::answer`]).
const READ_WHOLE_MAX: usize = 1 << 20;
/// Parts of a long answer received and not decoded yet, at most.
const CHUNKS_AHEAD: usize = 16;

/// A long answer's bytes as they arrive, for a decoder on a blocking thread: the part
/// being read, then each part the call hands over, to the end of the answer.
struct Chunks {
    at: bytes::Bytes,
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
}

impl std::io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at.is_empty() {
            match self.rx.blocking_recv() {
                Some(next) => self.at = next,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.at.len());
        buf[..n].copy_from_slice(&self.at.split_to(n));
        Ok(n)
    }
}

impl Peer {
    /// For a call still unanswered after [`TLS_RECHECK_AFTER`]: the peer's TLS refusal
    /// of this node's certificate, checked on a connection of its own; never completes
    /// otherwise. A TLS 1.3 server refuses a client certificate after the client's
    /// handshake is over, and the HTTP client can miss that refusal when it lands just
    /// as the request is handed to the connection: the call would then wait out its
    /// whole time limit.
    async fn refused_meanwhile(&self) -> String {
        tokio::time::sleep(TLS_RECHECK_AFTER).await;
        match self.diagnose_tls().await {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Connects with TLS alone and sends one request, to surface the peer's TLS alert
    /// when a call failed without saying why. `None` when TLS is not the problem.
    async fn diagnose_tls(&self) -> Option<String> {
        let local = self.transport.local;
        let connect = async {
            let target = tokio::net::lookup_host((self.remote.host.as_str(), self.remote.port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))?;
            let socket = if target.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = local {
                socket.bind(std::net::SocketAddr::new(ip, 0))?;
            }
            socket.connect(target).await
        };
        let tcp = tokio::time::timeout(protocol::CONNECT_TIMEOUT, connect)
            .await
            .ok()?
            .ok()?;
        let name = ServerName::try_from(self.remote.host.clone()).ok()?;
        let connector = tokio_rustls::TlsConnector::from(self.transport.tls.clone());
        let handshake = connector.connect(name, tcp);
        let mut stream = match tokio::time::timeout(protocol::TLS_HANDSHAKE_TIMEOUT, handshake)
            .await
            .ok()?
        {
            Ok(stream) => stream,
            Err(e) => return tls::explain(&e, tls::End::Client),
        };
        let probe = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            protocol::IDENTITY_ROUTE,
            self.remote.host
        );
        if let Err(e) = stream.write_all(probe.as_bytes()).await {
            return tls::explain(&e, tls::End::Client);
        }
        let mut first = [0u8; 1];
        match tokio::time::timeout(protocol::IDENTITY_TIMEOUT, stream.read(&mut first)).await {
            Ok(Err(e)) => tls::explain(&e, tls::End::Client),
            _ => None,
        }
    }
}

/// How long a call waits for its answer before checking, on a connection of its own,
/// whether the peer refuses this node's certificate.
const TLS_RECHECK_AFTER: Duration = Duration::from_secs(2);

/// The time limit of a call, and when it started: a timeout well before the limit is the
/// link's (TCP gave up), not the call's.
struct Limit {
    timeout: Duration,
    started: std::time::Instant,
}

/// A batch a peer has received whole and holds its turn to apply, whose answer is still
/// to come ([`Peer::apply_answer`]).
pub struct Begun {
    response: reqwest::Response,
    limit: Limit,
}

fn explain(err: &reqwest::Error, limit: &Limit) -> PeerError {
    let timeout = limit.timeout;
    if let Some(tls) = tls::explain(err, tls::End::Client) {
        return PeerError::Unreachable(tls);
    }
    if err.is_timeout() && err.is_connect() {
        // The connect timeout covers the TCP and TLS handshakes.
        return PeerError::Unreachable(format!(
            "timed out connecting (TCP and TLS handshake, limit {}s)",
            protocol::CONNECT_TIMEOUT.as_secs()
        ));
    }
    let elapsed = limit.started.elapsed();
    if err.is_timeout() && elapsed + Duration::from_secs(1) < timeout {
        return PeerError::Unreachable(format!(
            "no answer from the peer for {}s: the connection was given up (is its link down?)",
            protocol::LINK_LOSS_TIMEOUT.as_secs()
        ));
    }
    if err.is_timeout() {
        return PeerError::Unreachable(format!("timed out (limit {}s)", timeout.as_secs()));
    }
    if matches!(
        io_kind(err),
        Some(std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable)
    ) {
        // The kernel's answer, on a new connection or a kept-alive one whose neighbour
        // stopped answering.
        return PeerError::Unreachable(format!("{}: is its link down?", root_cause(err)));
    }
    if err.is_connect() {
        return PeerError::Unreachable(format!("unreachable: {}", root_cause(err)));
    }
    if matches!(
        io_kind(err),
        Some(
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        )
    ) {
        // The peer answered the connection, then dropped it: a restart, or a listener
        // shedding load. Not a refusal of the request.
        return PeerError::Busy(format!("connection reset: {}", chain(err)));
    }
    PeerError::Unreachable(chain(err))
}

/// The kind of the I/O error at the bottom of `err`'s chain, if there is one.
fn io_kind(err: &(dyn StdError + 'static)) -> Option<std::io::ErrorKind> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_of_paths_is_asked_for_in_parts_within_the_budget() {
        assert_eq!(json_length(&["/a".to_string()]), "\"/a\",".len());
        assert_eq!(json_length(&["/a\"\n".to_string()]), 13);
        let paths: Vec<String> = (0..1000).map(|i| format!("/etc/app/f{i:04}")).collect();
        let each = json_length(&paths[..1]);
        let split: Vec<&[String]> = parts(&paths, 100 * each).collect();
        assert_eq!(split.len(), 10);
        assert!(split.iter().all(|part| json_length(part) <= 100 * each));
        assert_eq!(split.concat(), paths, "every path once, in order");
        // A path longer than the budget goes alone; nothing is left out or stuck.
        let long = vec![
            "/a".to_string(),
            format!("/{}", "x".repeat(50)),
            "/b".into(),
        ];
        let split: Vec<&[String]> = parts(&long, 10).collect();
        assert_eq!(split, [&long[..1], &long[1..2], &long[2..]]);
        assert_eq!(parts(&[], 10).count(), 0);
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connection error")
        }
    }

    impl StdError for Wrapped {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn io_kind_is_found_below_wrappers() {
        let err = Wrapped(std::io::Error::from(std::io::ErrorKind::HostUnreachable));
        assert_eq!(io_kind(&err), Some(std::io::ErrorKind::HostUnreachable));
        let plain = std::fmt::Error;
        assert_eq!(io_kind(&plain), None);
    }
}
