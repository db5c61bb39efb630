//! The named limits, tried by clients that break them: connections that never complete
//! their handshake, requests that stall, more applies than allowed at once, files and
//! requests larger than a receiver takes, and a manifest larger than a sender takes.
//! Each limit is lowered in the node's config so that the tests run in seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use gosyncd::config::Config;
use gosyncd::group::{GroupNode, GroupSpec, LocalGroup};
use gosyncd::protocol::{encode_batch, Action, BatchHeader, Op, StatusResponse};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Restarts node `i` with `limits { BODY }` added to its config.
async fn with_limits(group: &mut LocalGroup, i: usize, body: &str) {
    let variant = config_variant(group, i, &format!("node{}-limits.hcl", i + 1), |text| {
        format!("{text}\nlimits {{\n{body}\n}}\n")
    });
    group.nodes[i].config = Arc::new(Config::from_file(&variant).unwrap());
    group.restart(i).await.unwrap();
}

/// A TCP connection to `to` from `from`'s address.
async fn tcp_from(from: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// A mutual-TLS connection to `to` made as node `from` would make it.
async fn tls_from(from: &GroupNode, to: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = tcp_from(from.addr.ip(), to).await;
    let config = Arc::new(tls_of(from).client_config().unwrap());
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(to.ip().into()), tcp)
        .await
        .unwrap()
}

/// Reads until the server closes the connection, failing the test if that takes longer
/// than `within`; returns what it sent.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {within:?}; it sent {:?}",
        String::from_utf8_lossy(&received)
    );
    String::from_utf8_lossy(&received).into_owned()
}

/// The start of an apply request announcing `length` body bytes.
fn apply_head(to: SocketAddr, length: usize) -> String {
    format!(
        "POST /v1/apply HTTP/1.1\r\nhost: {to}\r\ncontent-type: application/vnd.gosyncd.batch\r\n\
         content-length: {length}\r\n\r\n"
    )
}

/// An apply request from `from` to `to` whose body never comes: `to` is receiving it
/// until the connection is dropped (or its `idle_timeout`).
async fn applying(from: &GroupNode, to: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut request = tls_from(from, to).await;
    request
        .write_all(apply_head(to, 100_000).as_bytes())
        .await
        .unwrap();
    request.flush().await.unwrap();
    request
}

/// A batch creating each `(path, bytes)`.
fn creating(files: &[(&str, &[u8])]) -> Vec<u8> {
    let header = BatchHeader::new(
        files
            .iter()
            .map(|(path, bytes)| Op {
                path: (*path).into(),
                action: Action::Put {
                    entry: file_entry(bytes, 0o644),
                },
                expect: None,
            })
            .collect(),
    );
    let contents: Vec<&[u8]> = files.iter().map(|(_, b)| *b).collect();
    encode_batch(&header, &contents)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_handshake_cannot_keep_the_group_out() {
    let mut group = start(2).await;
    with_limits(
        &mut group,
        1,
        "handshake_timeout = \"1s\"\nmax_handshakes = 16\nmax_handshakes_per_address = 4",
    )
    .await;
    let target = group.nodes[1].addr;
    // More idle connections from one address than the server has handshake places.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tcp_from("127.0.0.1".parse().unwrap(), target).await);
    }
    let opened = Instant::now();

    write(&group.nodes[0], "/etc/app/a.conf", "still served\n");
    let report = sync(&group, 0).await;
    assert_clean(&report);
    assert_eq!(read(&group.nodes[1], "/etc/app/a.conf"), b"still served\n");

    // Every one of them is closed: beyond the per-address places at once, the others
    // when the handshake timeout strikes.
    for stream in &mut idle {
        closed_within(stream, Duration::from_secs(5)).await;
    }
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "closing the idle connections took {:?}",
        opened.elapsed()
    );
}

/// Keeps up to `per_address` idle connections from `from` to `to`, opening a new one
/// whenever the server closes one, until `until`; returns how many it opened.
async fn hold_idle(
    from: std::net::IpAddr,
    to: SocketAddr,
    per_address: usize,
    until: Instant,
) -> usize {
    let mut opened = 0;
    let mut held: Vec<TcpStream> = Vec::new();
    while Instant::now() < until {
        while held.len() < per_address {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(from, 0)).unwrap();
            match socket.connect(to).await {
                Ok(stream) => {
                    opened += 1;
                    held.push(stream);
                }
                Err(_) => break,
            }
        }
        // Half of them start a handshake and never finish it: a TLS record header.
        for stream in held.iter_mut().step_by(2) {
            let _ = stream.try_write(&[0x16, 0x03, 0x01, 0x02, 0x00]);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Those the server closed are replaced.
        held.retain(|stream| {
            let mut probe = [0u8; 64];
            match stream.try_read(&mut probe) {
                Ok(0) => false,
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            }
        });
    }
    opened
}

/// Writes version `i` of a file on node 0 and syncs it; how long the sync took.
async fn timed_sync(group: &LocalGroup, i: u32) -> (Duration, gosyncd::sync::Report) {
    write(
        &group.nodes[0],
        "/etc/app/flood.conf",
        format!("version {i}\n"),
    );
    let started = Instant::now();
    let report = sync(group, 0).await;
    (started.elapsed(), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_from_many_addresses_never_keeps_a_listed_peer_out() {
    const STRANGERS: u8 = 48;
    let mut group = start(2).await;
    with_limits(&mut group, 1, "handshake_timeout = \"1s\"").await;
    let target = group.nodes[1].addr;
    // The quiet figure: the slowest of three syncs of one file.
    let mut quiet = Duration::ZERO;
    for i in 0..3 {
        let (took, report) = timed_sync(&group, i).await;
        assert_clean(&report);
        quiet = quiet.max(took);
    }

    // Strangers from 48 networks (127.0.K.9), each holding 8 connections (the
    // per-address allowance), idle or in a handshake they never finish, renewed as the
    // 1 s handshake timeout closes them, for 4 s.
    let until = Instant::now() + Duration::from_secs(4);
    let flood: Vec<_> = (0..STRANGERS)
        .map(|k| {
            let from = std::net::IpAddr::from([127, 0, 150 + k, 9]);
            tokio::spawn(hold_idle(from, target, 8, until))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut attempts = Vec::new();
    let mut i = 3;
    while Instant::now() + Duration::from_millis(300) < until {
        let (took, report) = timed_sync(&group, i).await;
        assert_clean(&report);
        assert_eq!(
            read(&group.nodes[1], "/etc/app/flood.conf"),
            format!("version {i}\n").as_bytes()
        );
        attempts.push(took);
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut opened = 0;
    for task in flood {
        opened += task.await.unwrap();
    }
    eprintln!(
        "flood: {opened} connections from {STRANGERS} addresses; {} syncs, all succeeded, \
         taking {attempts:?} (quiet: {quiet:?})",
        attempts.len()
    );
    assert!(opened >= 384, "the flood opened only {opened} connections");
    assert!(
        attempts.len() >= 3,
        "only {} syncs ran during the flood",
        attempts.len()
    );
    // A peer kept out would wait for a handshake slot, a second (handshake_timeout) at
    // least; the slack is for two cores busy serving the flood.
    let slowest = attempts.iter().max().copied().unwrap_or_default();
    assert!(
        slowest <= quiet * 2 + Duration::from_millis(250),
        "a sync took {slowest:?} under the flood, against {quiet:?} quiet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_stall_are_dropped_after_their_timeouts() {
    let mut group = start(2).await;
    with_limits(
        &mut group,
        1,
        "header_timeout = \"1s\"\nidle_timeout = \"1s\"",
    )
    .await;
    let (n0, target) = (&group.nodes[0], group.nodes[1].addr);
    let before = snapshot(group.path());

    // A body that stops after a few bytes: refused as stalled.
    let mut stalled_body = tls_from(n0, target).await;
    let head = apply_head(target, 100_000);
    stalled_body.write_all(head.as_bytes()).await.unwrap();
    stalled_body.write_all(b"GSB1").await.unwrap();
    let answer = closed_within(&mut stalled_body, Duration::from_secs(5)).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("stalled"),
        "{answer}"
    );

    // Headers that never end: the connection is closed.
    let mut stalled_head = tls_from(n0, target).await;
    stalled_head
        .write_all(b"POST /v1/apply HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    closed_within(&mut stalled_head, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A kept-alive connection left idle after a request: closed too.
    let mut kept = tls_from(n0, target).await;
    kept.write_all(b"GET /v1/identity HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut kept, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    assert_eq!(snapshot(group.path()), before, "a stalled request wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_larger_than_a_connection_reads_at_once_is_refused() {
    // A connection reads at most 64 KiB at once (a body's frames keep the buffer they
    // were read into), and a head that does not fit its buffer is refused: one of
    // 300 KiB, which hyper's default buffer (about 400 KiB) took. Nothing is written.
    let group = start(2).await;
    let (n0, target) = (&group.nodes[0], group.nodes[1].addr);
    let before = snapshot(group.path());

    let mut large = tls_from(n0, target).await;
    let head = format!(
        "POST /v1/apply HTTP/1.1\r\nhost: {target}\r\nx-padding: {}\r\n\
         content-type: application/vnd.gosyncd.batch\r\ncontent-length: 0\r\n\r\n",
        "x".repeat(300 * 1024)
    );
    // The server may close before all of it is written.
    let _ = large.write_all(head.as_bytes()).await;
    let answer = closed_within(&mut large, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // The node still serves.
    let mut next = tls_from(n0, target).await;
    next.write_all(b"GET /v1/identity HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut next, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(snapshot(group.path()), before, "a refused request wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_beyond_max_concurrent_applies_are_answered_503_and_retryable() {
    let mut group = start(2).await;
    with_limits(
        &mut group,
        1,
        "max_concurrent_applies = 1\nidle_timeout = \"20s\"",
    )
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    // One apply that is being received (its body never comes) holds the only place.
    let holder = applying(n0, n1.addr).await;

    let peer = peer_as(n0, n1.addr);
    let body = creating(&[("/etc/app/second.conf", b"second\n")]);
    // Generous: under a loaded machine the holder's request has once taken more than 5 s
    // to reach the handler (seen in 1 of about 14 full runs).
    let err = eventually_async("refused as busy", Duration::from_secs(15), || async {
        // The holder's request may not have reached the handler yet.
        match peer.apply(body.clone()).await {
            Err(e) if e.to_string().contains("503") => Ok(e),
            other => {
                std::fs::remove_file(n1.path("/etc/app/second.conf")).ok();
                Err(format!("{other:?}"))
            }
        }
    })
    .await;
    assert!(
        !err.is_refusal() && err.to_string().contains("max_concurrent_applies"),
        "a busy peer is to be retried, and says why: {err}"
    );
    assert!(counters(n1).applies_busy >= 1, "{:?}", counters(n1));

    // Once the holder goes, the same request goes through.
    drop(holder);
    eventually_async(
        "accepted once the holder left",
        Duration::from_secs(5),
        || peer.apply(body.clone()),
    )
    .await;
    assert_eq!(read(n1, "/etc/app/second.conf"), b"second\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_fit_the_receivers_request_file_and_entry_limits() {
    let mut group = start(2).await;
    with_limits(
        &mut group,
        1,
        "max_request_size = \"2MiB\"\nmax_file_size = \"1MiB\"\nmax_batch_entries = 10",
    )
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let small: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    for i in 0..30 {
        write(n0, &format!("/etc/app/f{i:02}.bin"), &small);
    }
    let big = vec![7u8; 1536 * 1024];
    write(n0, "/etc/app/big.bin", &big);

    // The dry run says of the large file exactly what the real run does.
    let dry = dry_run(&group, 0).await;
    let said_of_big = |report: &gosyncd::sync::Report| -> Vec<String> {
        lines(report, n1)
            .into_iter()
            .filter(|l| l.contains("/etc/app/big.bin"))
            .collect()
    };
    let report = sync(&group, 0).await;
    assert_eq!(said_of_big(&dry), said_of_big(&report));
    assert_eq!(dry.failed(), report.failed());
    let peer = peer_report(&report, n1);
    assert!(peer.error.is_none(), "{:?}", peer.error);
    for i in 0..30 {
        assert_eq!(read(n1, &format!("/etc/app/f{i:02}.bin")), small);
    }
    assert!(!exists(n1, "/etc/app/big.bin"));
    let lines = lines(&report, n1);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/etc/app/big.bin") && l.contains("max_file_size")),
        "{lines:#?}"
    );
    let requests = n1.stats().unwrap().apply_requests;
    assert!(
        requests >= 3,
        "30 files in batches of at most 10 need at least 3 requests, not {requests}"
    );

    // A client that ignores the announced limits is refused, naming them.
    let client = peer_as(n0, n1.addr);
    let err = client
        .apply(creating(&[("/etc/app/big.bin", &big)]))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("(400)") && err.to_string().contains("max_file_size"),
        "{err}"
    );
    // (Over max_request_size the answer is a 413, sent before the body is read: asked
    // through the router, since a client still sending the body may not see it.)
    let app = gosyncd::server::router(Arc::new(gosyncd::node::Node::new(
        n1.config.clone(),
        Arc::new(gosyncd::manifest::HashCache::default()),
        None,
    )));
    let over = axum::http::Request::post(gosyncd::protocol::APPLY_ROUTE)
        .body(axum::body::Body::from(vec![0u8; 2 * 1024 * 1024 + 1]))
        .unwrap();
    let answer = tower::ServiceExt::oneshot(app, over).await.unwrap();
    assert_eq!(answer.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
    let text = axum::body::to_bytes(answer.into_body(), 4096)
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text).contains("max_request_size"),
        "{text:?}"
    );
    let many: Vec<(String, Vec<u8>)> = (0..11)
        .map(|i| (format!("/etc/app/m{i}.conf"), b"x".to_vec()))
        .collect();
    let files: Vec<(&str, &[u8])> = many
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    let err = client.apply(creating(&files)).await.unwrap_err();
    assert!(err.to_string().contains("max_batch_entries"), "{err}");
    assert!(!exists(n1, "/etc/app/m0.conf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_larger_than_max_manifest_size_is_refused_by_the_sender() {
    let mut group = start(2).await;
    let variant = config_variant(&group, 0, "node1-small-manifest.hcl", |text| {
        format!("{text}\nlimits {{\n  max_manifest_size = \"4KiB\"\n}}\n")
    });
    group.nodes[0].config = Arc::new(Config::from_file(&variant).unwrap());
    let n1 = &group.nodes[1];
    for i in 0..200 {
        write(n1, &format!("/etc/app/peer-file-{i:03}.conf"), "x\n");
    }
    let report = sync(&group, 0).await;
    let error = peer_report(&report, n1).error.clone().unwrap_or_default();
    assert!(error.contains("max_manifest_size"), "{error}");
    assert_eq!(
        std::fs::read_dir(n1.path("/etc/app")).unwrap().count(),
        200,
        "nothing was deleted on the peer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_is_read_as_it_arrives_within_max_manifest_size_and_refused_past_it() {
    let mut group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    // One directory of 8,000 files, each different on the two nodes: the peer's listing
    // of it is about 1.6 MB, in many frames.
    const FILES: usize = 8_000;
    for i in 0..FILES {
        write(n0, &format!("/etc/app/many/f{i:05}.conf"), "ours\n");
        write(n1, &format!("/etc/app/many/f{i:05}.conf"), "theirs\n");
    }
    let report = dry_run(&group, 0).await;
    assert_eq!(peer_report(&report, n1).error, None);
    let mut updated: Vec<String> = summary(&report, n1)
        .into_iter()
        .filter(|line| line.starts_with("M "))
        .collect();
    updated.dedup();
    assert_eq!(updated.len(), FILES, "every file of the answer was read");
    assert_eq!(
        updated[FILES - 1],
        format!("M /etc/app/many/f{:05}.conf", FILES - 1)
    );

    // Past max_manifest_size (here below the answer's size but above its first
    // frames), the answer is refused as too large while it arrives, and nothing is
    // written.
    let variant = config_variant(&group, 0, "node1-mid-manifest.hcl", |text| {
        format!("{text}\nlimits {{\n  max_manifest_size = \"1200KiB\"\n}}\n")
    });
    group.nodes[0].config = Arc::new(Config::from_file(&variant).unwrap());
    let n1 = &group.nodes[1];
    let report = sync(&group, 0).await;
    let error = peer_report(&report, n1).error.clone().unwrap_or_default();
    assert!(
        error.contains("max_manifest_size of 1228800 bytes"),
        "{error}"
    );
    assert_eq!(read(n1, "/etc/app/many/f00000.conf"), b"theirs\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_holds_back_a_file_over_the_peers_size_limit_and_delivers_the_rest() {
    let mut group = start_with(GroupSpec {
        watch: true,
        ..spec(2)
    })
    .await;
    with_limits(&mut group, 1, "max_file_size = \"1MiB\"").await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/big.bin", vec![7u8; 1536 * 1024]);
    write(n0, "/etc/app/small.cfg", "small\n");
    eventually_in(
        &group,
        Duration::from_secs(10),
        "the small file arrives",
        || {
            std::fs::read(n1.path("/etc/app/small.cfg")).ok().as_deref()
                == Some(b"small\n".as_slice())
        },
    )
    .await;
    // The large one is held as refused, named with the limit, and never sent. The
    // sender records it from the peer's answer, which ends after the small file is in
    // place there: the status route is asked until it tells.
    let held = |status: &StatusResponse| {
        status.peers.iter().any(|p| {
            p.peer == n1.addr.to_string()
                && p.held
                    .iter()
                    .any(|h| h.path == "/etc/app/big.bin" && h.reason.contains("max_file_size"))
        })
    };
    let asks_n0 = peer_as(n1, n0.addr);
    status_when(
        &asks_n0,
        "node 1 holds big.bin back as over node 2's max_file_size",
        held,
    )
    .await;
    assert!(!exists(n1, "/etc/app/big.bin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_sends_its_next_batch_while_one_is_applied_only_to_a_peer_that_takes_two() {
    // More operations than two batches hold (2,048 each).
    const FILES: usize = 5_000;
    let mut group = start(3).await;
    // Node 2 takes one apply request at a time; node 3, the default four.
    with_limits(&mut group, 1, "max_concurrent_applies = 1").await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    for i in 0..FILES {
        write(n0, &format!("/etc/app/f{i:05}.conf"), format!("{i}\n"));
    }
    let before = [counters(n1), counters(n2)];
    let report = sync(&group, 0).await;
    assert_clean(&report);
    assert_same_tree(n0, n1);
    assert_same_tree(n0, n2);
    for (node, before) in [n1, n2].into_iter().zip(before) {
        let after = counters(node);
        assert_eq!(after.apply_requests - before.apply_requests, 3, "{after:?}");
        // None sent while the peer had no place for it.
        assert_eq!(after.applies_busy, before.applies_busy, "{after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comparison_judges_a_peer_that_is_being_pushed_to_once_the_push_ends() {
    // Only the comparisons this test wakes (and those at start-up).
    let group = start_with(GroupSpec {
        reconcile_interval: Some(Duration::from_secs(600)),
        ..spec(2)
    })
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let drift_seen = || {
        n0.peer_status()
            .and_then(|peers| peers.first().cloned())
            .map(|p| (p.drift_paths, p.drift))
    };
    eventually("node 1 compared with node 2 at start-up", WAIT, || {
        (drift_seen() == Some((Some(0), Vec::new()))).then_some(())
    })
    .await;
    let to_node_2 = peer_as(n0, n1.addr);
    let receiving = || async { to_node_2.digests().await.map(|answer| answer.receiving) };
    assert!(!receiving().await.unwrap(), "node 2 receives nothing yet");

    // Node 2 is being pushed to: an apply request whose body is still coming.
    let holder = applying(n0, n1.addr).await;
    eventually_async("node 2 says it is receiving", WAIT, || async {
        receiving().await.ok().filter(|r| *r)
    })
    .await;
    // A difference nobody pushes (node 2 runs no watcher), found by the comparison
    // node 1 makes now.
    write(n1, "/etc/app/drifted.cfg", "drifted\n");
    peer_as(n1, n0.addr).compare().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        drift_seen(),
        Some((Some(0), Vec::new())),
        "node 1 judged node 2 while a push to it was under way"
    );

    // The push ends (its sender gone): node 1 compares again by itself, and judges.
    drop(holder);
    eventually("node 1 reports the drift once the push ended", WAIT, || {
        (drift_seen() == Some((Some(1), vec!["/etc/app/drifted.cfg".to_string()]))).then_some(())
    })
    .await;
    assert!(!receiving().await.unwrap(), "node 2 still says it receives");
}
