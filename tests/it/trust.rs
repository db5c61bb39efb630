//! Who may write: a certificate signed by the group's CA is necessary but not sufficient,
//! the client's address must be one of the group's too (`remotes`, or `allow_from` when
//! it is set). Refusals are 403s that name the address and the key, and write nothing.

use std::sync::Arc;

use crate::common::*;
use gosyncd::client::{Peer, PeerError};
use gosyncd::config::Config;
use gosyncd::protocol::{encode_batch, Action, BatchHeader, Op};

/// A batch creating `path` with `bytes`.
fn creating(path: &str, bytes: &[u8]) -> Vec<u8> {
    let header = BatchHeader::new(vec![Op {
        path: path.into(),
        action: Action::Put {
            entry: file_entry(bytes, 0o644),
        },
        expect: None,
    }]);
    encode_batch(&header, &[bytes])
}

/// Checks that `err` is a 403 refusal whose message names each of `words`.
fn assert_forbidden(err: &PeerError, words: &[&str]) {
    let message = err.to_string();
    assert!(
        err.is_refusal() && message.contains("(403)"),
        "expected a 403 refusal, got: {message}"
    );
    for word in words {
        assert!(message.contains(word), "{word:?} not named in: {message}");
    }
}

async fn apply(peer: &Peer, path: &str, bytes: &[u8]) -> Result<(), PeerError> {
    peer.apply(creating(path, bytes)).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_certificate_from_an_address_not_in_remotes_is_refused_and_writes_nothing() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let before = snapshot(group.path());

    // Node 0's own certificate, from 127.0.0.1, which no remote names.
    let stranger = peer(&tls_of(n0), n1.addr);
    let err = apply(&stranger, "/etc/app/planted.conf", b"planted\n")
        .await
        .expect_err("a write from an unlisted address was accepted");
    assert_forbidden(&err, &["127.0.0.1", "remotes", "CN="]);
    let err = stranger
        .manifest(&[])
        .await
        .expect_err("the tree was listed to an unlisted address");
    assert_forbidden(&err, &["127.0.0.1"]);
    assert_eq!(snapshot(group.path()), before, "a refused client wrote");
    // Saying who a node is stays open: a node's own command line asks it.
    stranger.identity().await.unwrap();

    // The same request from node 0's address is accepted.
    apply(&peer_as(n0, n1.addr), "/etc/app/planted.conf", b"pushed\n")
        .await
        .unwrap();
    assert_eq!(read(n1, "/etc/app/planted.conf"), b"pushed\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_from_widens_and_narrows_who_may_write() {
    let mut group = start(3).await;
    // Node 1 lets in 127.0.0.1 (a NAT gateway, say) and node 0, and no longer node 2.
    let node0 = group.nodes[0].addr.ip();
    let variant = config_variant(&group, 1, "node2-allow.hcl", |text| {
        text + &format!("\nallow_from = [\"127.0.0.1\", \"{node0}/32\"]\n")
    });
    group.nodes[1].config = Arc::new(Config::from_file(&variant).unwrap());
    group.restart(1).await.unwrap();
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);

    apply(
        &peer(&tls_of(n0), n1.addr),
        "/etc/app/via-nat.conf",
        b"nat\n",
    )
    .await
    .unwrap();
    apply(&peer_as(n0, n1.addr), "/etc/app/from-node0.conf", b"0\n")
        .await
        .unwrap();
    let err = apply(&peer_as(n2, n1.addr), "/etc/app/from-node2.conf", b"2\n")
        .await
        .expect_err("a write from an address allow_from leaves out was accepted");
    assert_forbidden(&err, &[&n2.addr.ip().to_string(), "allow_from"]);
    assert!(!exists(n1, "/etc/app/from-node2.conf"));

    // A sync from node 2 reaches node 0 and reports node 1's refusal.
    write(n2, "/etc/app/synced.conf", "from node 2\n");
    let report = sync(&group, 2).await;
    let refused = peer_report(&report, n1);
    let error = refused.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("403") && error.contains("allow_from"),
        "{error}"
    );
    assert!(!exists(n1, "/etc/app/synced.conf"));
    assert!(peer_report(&report, n0).error.is_none());
    assert_eq!(read(n0, "/etc/app/synced.conf"), b"from node 2\n");
}
