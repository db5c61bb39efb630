//! Config variants and raw peers: edited copies of a node's config, metrics scrapes,
//! and clients that speak to a node directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use gosyncd::client::{self, Peer};
use gosyncd::config::{Config, Remote};
use gosyncd::group::{GroupNode, LocalGroup};
use gosyncd::protocol::{Content, Digest256, Entry, StatusResponse};
use gosyncd::tls::TlsMaterial;

/// Writes a modified copy of node `i`'s config next to it (so relative TLS paths still
/// resolve) and returns its path.
pub fn config_variant(
    group: &LocalGroup,
    i: usize,
    name: &str,
    edit: impl FnOnce(String) -> String,
) -> PathBuf {
    let text = std::fs::read_to_string(&group.nodes[i].config_path).unwrap();
    let path = group.path().join(name);
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// A variant of node `i`'s config whose tls_certificate and tls_private_key are `pem`.
pub fn with_certificate(
    group: &LocalGroup,
    i: usize,
    name: &str,
    pem: gosyncd::certs::Pem,
) -> std::path::PathBuf {
    std::fs::write(group.path().join(format!("{name}.pem")), pem.cert).unwrap();
    std::fs::write(group.path().join(format!("{name}.key")), pem.key).unwrap();
    config_variant(group, i, &format!("{name}.hcl"), |text| {
        let text = with_line(
            &text,
            "tls_certificate",
            &format!("tls_certificate = \"{name}.pem\""),
        );
        with_line(
            &text,
            "tls_private_key",
            &format!("tls_private_key = \"{name}.key\""),
        )
    })
}

/// `GET /metrics` over plain HTTP: the body.
pub async fn scrape(address: SocketAddr) -> String {
    scrape_accepting(address, None).await.1
}

/// `GET /metrics` with an `Accept` header, if any: the content type and the body.
pub async fn scrape_accepting(address: SocketAddr, accept: Option<&str>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("metrics at {address}: {e}"));
    let accept = accept.map_or_else(String::new, |a| format!("accept: {a}\r\n"));
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nhost: x\r\n{accept}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// Replaces the whole `remotes = [...]` list.
pub fn with_remotes(text: &str, remotes: &[String]) -> String {
    let start = text.find("remotes = [").expect("remotes in config");
    let end = start + text[start..].find(']').expect("end of remotes") + 1;
    let list: Vec<String> = remotes.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "{}remotes = [{}]{}",
        &text[..start],
        list.join(", "),
        &text[end..]
    )
}

/// Replaces the first line starting (after indentation) with `key` by `line`.
pub fn with_line(text: &str, key: &str, line: &str) -> String {
    let mut replaced = false;
    let out: Vec<&str> = text
        .lines()
        .map(|l| {
            if !replaced && l.trim_start().starts_with(key) {
                replaced = true;
                line
            } else {
                l
            }
        })
        .collect();
    assert!(replaced, "no line starting with {key:?} in:\n{text}");
    out.join("\n") + "\n"
}

pub fn tls_of(node: &GroupNode) -> TlsMaterial {
    TlsMaterial::load(&node.config).unwrap()
}

/// A peer client for `addr` using `tls` as our identity.
pub fn peer(tls: &TlsMaterial, addr: SocketAddr) -> Peer {
    peer_with(tls.client_config().unwrap(), addr)
}

/// A peer client for `addr` acting as `node`: its certificate, and connections made from
/// its address, as the node's own pushes are.
pub fn peer_as(node: &GroupNode, addr: SocketAddr) -> Peer {
    let remote = Remote {
        host: addr.ip().to_string(),
        port: addr.port(),
        label: addr.to_string(),
    };
    let tls = tls_of(node).client_config().unwrap();
    Peer::new(
        remote,
        client::http_client(tls, Some(node.addr.ip())).unwrap(),
    )
}

/// Asks `peer`'s status route until `ready` holds of its answer, and returns that
/// answer; fails the test with the last one after [`WAIT`].
pub async fn status_when(
    peer: &Peer,
    what: &str,
    ready: impl Fn(&StatusResponse) -> bool,
) -> StatusResponse {
    super::eventually_async(what, super::WAIT, || async {
        let status = peer.status().await.map_err(|e| e.to_string())?;
        match ready(&status) {
            true => Ok(status),
            false => Err(format!("{status:#?}")),
        }
    })
    .await
}

pub fn peer_with(tls: rustls::ClientConfig, addr: SocketAddr) -> Peer {
    let remote = Remote {
        host: addr.ip().to_string(),
        port: addr.port(),
        label: addr.to_string(),
    };
    Peer::new(remote, client::http_client(tls, None).unwrap())
}

/// A put of a regular file holding `bytes`.
pub fn file_entry(bytes: &[u8], mode: u32) -> Entry {
    Entry {
        content: Content::File {
            size: bytes.len() as u64,
            sha256: Digest256::of(bytes),
        },
        mode,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
    }
}

/// Restarts node `i` with `lines` added to its `directory "/etc/app"` block.
pub async fn with_directory_lines(group: &mut LocalGroup, i: usize, lines: &str) {
    let name = format!("node{}-directory.hcl", i + 1);
    let variant = config_variant(group, i, &name, |text| {
        assert!(text.contains("  exclude = []"), "{text}");
        text.replace("  exclude = []", &format!("  exclude = []\n{lines}"))
    });
    group.nodes[i].config = Arc::new(Config::from_file(&variant).unwrap_or_else(|e| panic!("{e}")));
    group.nodes[i].config_path = variant;
    group.restart(i).await.unwrap();
}

/// Restarts node `i` with `line` added at the top of its config.
pub async fn with_line_on_top(group: &mut LocalGroup, i: usize, line: &str) {
    let variant = config_variant(group, i, &format!("node{}-ops.hcl", i + 1), |text| {
        format!("{line}\n{text}")
    });
    group.nodes[i].config = Arc::new(Config::from_file(&variant).unwrap());
    group.nodes[i].config_path = variant;
    group.restart(i).await.unwrap();
}
