//! The commonest TLS mistakes, as an operator meets them: certificates made separately
//! on each node, a peer's port that speaks plain HTTP, a private key that is not the
//! certificate's. Each is told in words, once, with what to do, at both ends: in the
//! client's `sync` output and in the server's log line. No rustls variant name reaches
//! either.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::common::*;
use gosyncd::group::{GroupSpec, LocalGroup, TlsStyle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Library text an operator should never have to read.
const RAW: [&str; 5] = [
    "CaUsedAsEndEntity",
    "InvalidContentType",
    "KeyMismatch",
    "Other(",
    "keys may not be consistent",
];

fn assert_in_words(text: &str) {
    for raw in RAW {
        assert!(!text.contains(raw), "library text {raw:?} in:\n{text}");
    }
}

/// Everything a run of the binary printed.
fn printed(run: &BinaryRun) -> String {
    format!("{}{}", run.stdout, run.stderr)
}

/// A variant of node `i`'s config that pushes to `to` alone, with a self-signed
/// certificate made for it alone, as `gosyncd cert self-signed` run on that node would
/// make: its tls_certificate and tls_private_key name it, and tls_ca_certificate too
/// unless `trusted` names another file.
fn made_on_its_own(
    group: &LocalGroup,
    i: usize,
    name: &str,
    trusted: Option<&str>,
    to: SocketAddr,
) -> PathBuf {
    let pem = gosyncd::certs::self_signed(&[group.nodes[i].addr.ip().to_string()]).unwrap();
    let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
    std::fs::write(group.path().join(&cert), pem.cert).unwrap();
    std::fs::write(group.path().join(&key), pem.key).unwrap();
    config_variant(group, i, &format!("{name}.hcl"), |text| {
        let text = with_remotes(&text, &[to.to_string()]);
        let text = with_line(
            &text,
            "tls_certificate",
            &format!("tls_certificate = \"{cert}\""),
        );
        let text = with_line(
            &text,
            "tls_private_key",
            &format!("tls_private_key = \"{key}\""),
        );
        let ca = trusted.unwrap_or(&cert);
        with_line(
            &text,
            "tls_ca_certificate",
            &format!("tls_ca_certificate = \"{ca}\""),
        )
    })
}

/// A group of two whose node 1 is the real binary, so that what it logs can be read.
async fn with_a_real_server(tls: TlsStyle) -> (LocalGroup, DaemonProcess) {
    let mut group = LocalGroup::build(&GroupSpec { tls, ..spec(2) })
        .await
        .unwrap();
    group.release(1);
    let mut server =
        DaemonProcess::spawn(&group.nodes[1].config_path, group.path().join("node2.log"));
    server
        .wait_ready(&peer(&tls_of(&group.nodes[0]), group.nodes[1].addr))
        .await;
    (group, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_made_separately_on_each_node_are_told_in_words_at_both_ends() {
    // Regression: rustls's `CaUsedAsEndEntity`, twice, on both ends.
    let (group, server) = with_a_real_server(TlsStyle::SelfSigned).await;
    let target = group.nodes[1].addr;

    // Node 1 made its own self-signed certificate and trusts only that one: it refuses
    // the server's, and the server hears that its own was refused.
    let own = made_on_its_own(&group, 0, "own", None, target);
    let run = gosyncd(config_args(&own, &["sync"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    let out = printed(&run);
    assert_in_words(&out);
    assert!(
        out.contains("the peer's certificate is a self-signed (CA) certificate that our tls_ca_certificate does not hold, as when the certificates are made separately on each node")
            && out.contains("gosyncd cert self-signed"),
        "{out}"
    );
    assert_eq!(
        out.matches("made separately").count(),
        1,
        "told once: {out}"
    );
    server
        .wait_for_log(
            "the client refused our certificate: it does not trust what signed our tls_certificate, as when the certificates are made separately",
        )
        .await;

    // Node 1 trusts the group's certificate but shows one made on its own: the server
    // refuses it, says why, and the client hears that it was refused.
    let half = made_on_its_own(&group, 0, "half", Some("gosyncd.crt"), target);
    let run = gosyncd(config_args(&half, &["sync"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    let out = printed(&run);
    assert_in_words(&out);
    assert!(
        out.contains("the peer refused our certificate") && out.contains("made separately"),
        "{out}"
    );
    server
        .wait_for_log("the client's certificate is a self-signed (CA) certificate that our tls_ca_certificate does not hold, as when the certificates are made separately on each node")
        .await;
    let log = server.log();
    assert_in_words(&log);
    let line = log
        .lines()
        .find(|l| l.contains("the client's certificate is a self-signed"))
        .unwrap_or_default();
    assert_eq!(
        line.matches("made separately").count(),
        1,
        "told once: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_speaks_plain_http_is_told_in_words_at_both_ends() {
    let (group, server) = with_a_real_server(TlsStyle::Authority).await;

    // The client's end: a remote whose port is some plain HTTP service.
    let http = tokio::net::TcpListener::bind((group.nodes[0].addr.ip(), 0))
        .await
        .unwrap();
    let http_addr = http.local_addr().unwrap();
    let answering = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = http.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let to_http = config_variant(&group, 0, "to-http.hcl", |text| {
        with_remotes(&text, &[http_addr.to_string()])
    });
    let run = gosyncd(config_args(&to_http, &["sync"])).await;
    answering.abort();
    assert_eq!(run.code, Some(2), "{run:#?}");
    let out = printed(&run);
    assert_in_words(&out);
    assert!(
        out.contains("the peer's port does not speak TLS (plain HTTP?): the port in remotes must be the peer's bind_address port"),
        "{out}"
    );

    // The server's end: a client speaking plain HTTP to the daemon's port.
    let mut plain = tokio::net::TcpStream::connect(group.nodes[1].addr)
        .await
        .unwrap();
    plain
        .write_all(b"GET /v1/identity HTTP/1.1\r\nHost: node2\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(CALL_TIMEOUT, plain.read_to_end(&mut rest)).await;
    server
        .wait_for_log("the client does not speak TLS (plain HTTP?): this port serves only HTTPS")
        .await;
    assert_in_words(&server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_the_certificate_s_names_both_files_and_what_to_do() {
    // Regression: `keys may not be consistent: KeyMismatch`, naming neither file.
    let group = LocalGroup::build(&spec(2)).await.unwrap();
    let swapped = config_variant(&group, 0, "swapped.hcl", |text| {
        with_line(&text, "tls_private_key", "tls_private_key = \"node2.key\"")
    });
    let (cert, key) = (
        group.path().join("node1.pem"),
        group.path().join("node2.key"),
    );
    let wanted = format!(
        "tls_private_key {} is not the key of tls_certificate {}: name the key file made together with that certificate",
        key.display(),
        cert.display()
    );
    for command in ["check-config", "sync"] {
        let run = gosyncd(config_args(&swapped, &[command])).await;
        assert_eq!(run.code, Some(2), "{command}: {run:#?}");
        let out = printed(&run);
        assert_in_words(&out);
        assert_eq!(out.matches(&wanted).count(), 1, "{command}: {out}");
    }
}
