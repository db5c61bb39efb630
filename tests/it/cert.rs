//! `gosyncd cert`: certificates made by the real binary run a real group, with the config
//! lines it prints; a certificate for another address is refused by TLS; nothing is
//! overwritten without --force; bad arguments are refused with their names; the local
//! group's private keys are written 0600 as well.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use gosyncd::config::Config;
use gosyncd::group::{GroupSpec, LocalGroup, TlsStyle};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// `gosyncd ARGS`.
async fn cert(args: &[&str]) -> BinaryRun {
    gosyncd(args).await
}

/// Like [`cert`], failing the test unless it succeeds.
async fn cert_ok(args: &[&str]) -> BinaryRun {
    let run = cert(args).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    run
}

/// The group's files, not started, without the certificates it made for itself: its
/// nodes can only run on the ones `gosyncd cert` makes.
async fn group_without_certificates(nodes: usize) -> LocalGroup {
    let group = LocalGroup::build(&spec(nodes))
        .await
        .unwrap_or_else(|e| panic!("group of {nodes} not built: {e:#}"));
    for entry in std::fs::read_dir(group.path()).unwrap() {
        let path = entry.unwrap().path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("pem" | "key" | "crt")
        ) {
            std::fs::remove_file(path).unwrap();
        }
    }
    group
}

/// The `tls_*` lines a run printed, in order.
fn tls_lines(run: &BinaryRun) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|l| l.starts_with("tls_"))
        .map(str::to_string)
        .collect()
}

/// Node `i` of `group` uses exactly the `tls_*` lines `run` printed.
fn use_printed_lines(group: &mut LocalGroup, i: usize, run: &BinaryRun) {
    let lines = tls_lines(run);
    assert_eq!(lines.len(), 3, "{run:#?}");
    let path = group.nodes[i].config_path.clone();
    let mut text = std::fs::read_to_string(&path).unwrap();
    for line in &lines {
        let key = line.split(' ').next().unwrap();
        text = with_line(&text, key, line);
    }
    std::fs::write(&path, text).unwrap();
    group.nodes[i].config = Arc::new(Config::from_file(&path).unwrap());
}

/// A path as an argument (the temporary directories' paths are UTF-8).
fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The subject and names of the first certificate in `path`.
fn names_in(path: &Path) -> String {
    let cert = CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    gosyncd::tls::describe_certificate(&cert)
}

/// Node 0 pushes a new file with the binary; every other node gets it.
async fn binary_sync_reaches_every_peer(group: &LocalGroup) {
    let n0 = &group.nodes[0];
    write(n0, "/etc/app/a.conf", "a");
    let run = gosyncd(config_args(&n0.config_path, &["sync"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    let expected: Vec<String> = group.nodes[1..]
        .iter()
        .map(|n| format!("[+] {} /etc/app/a.conf added", n.addr))
        .collect();
    assert_eq!(run.change_lines(), expected, "{run:#?}");
    for node in &group.nodes[1..] {
        assert_same_tree(n0, node);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_and_node_certificates_from_the_binary_run_a_group() {
    let mut group = group_without_certificates(3).await;
    let pki = group.path().join("pki");

    let run = cert_ok(&["cert", "ca", "--out", s(&pki)]).await;
    assert_eq!(
        tls_lines(&run),
        [format!("tls_ca_certificate = {:?}", pki.join("ca.pem"))],
        "{run:#?}"
    );
    assert_eq!(mode(&pki.join("ca.key")), 0o600);
    assert_eq!(mode(&pki.join("ca.pem")), 0o644);

    for i in 0..3 {
        let ip = group.nodes[i].addr.ip().to_string();
        let name = format!("node{}.gosyncd.test", i + 1);
        let out = pki.join(&name);
        let run = cert_ok(&[
            "cert",
            "node",
            "--ca",
            s(&pki),
            "--out",
            s(&out),
            &ip,
            &name,
        ])
        .await;
        assert!(
            run.stdout
                .contains(&format!("certificate for {ip}, {name}")),
            "{run:#?}"
        );
        assert_eq!(mode(&out.join("node.key")), 0o600);
        assert_eq!(
            names_in(&out.join("node.pem")),
            format!("CN={ip} (SAN {ip}, {name})")
        );
        use_printed_lines(&mut group, i, &run);
    }
    group.start_all().await.unwrap();
    binary_sync_reaches_every_peer(&group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_certificate_from_the_binary_runs_a_group() {
    let mut group = group_without_certificates(2).await;
    let pki = group.path().join("pki");
    let (ip0, ip1) = (
        group.nodes[0].addr.ip().to_string(),
        group.nodes[1].addr.ip().to_string(),
    );

    let run = cert_ok(&["cert", "self-signed", "--out", s(&pki), &ip0, &ip1]).await;
    let (crt, key) = (pki.join("gosyncd.crt"), pki.join("gosyncd.key"));
    assert_eq!(
        tls_lines(&run),
        [
            format!("tls_ca_certificate = {crt:?}"),
            format!("tls_certificate = {crt:?}"),
            format!("tls_private_key = {key:?}"),
        ],
        "{run:#?}"
    );
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        names_in(&crt),
        format!("CN=gosyncd group (SAN {ip0}, {ip1})")
    );
    for i in 0..2 {
        use_printed_lines(&mut group, i, &run);
    }
    group.start_all().await.unwrap();
    binary_sync_reaches_every_peer(&group).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_for_another_address_is_refused_by_name_checking() {
    let mut group = group_without_certificates(1).await;
    let pki = group.path().join("pki");
    let out = pki.join("node");
    cert_ok(&["cert", "ca", "--out", s(&pki)]).await;
    // The operator typed the neighbour's address.
    let wrong = address().to_string();
    let run = cert_ok(&["cert", "node", "--ca", s(&pki), "--out", s(&out), &wrong]).await;
    use_printed_lines(&mut group, 0, &run);
    group.start_all().await.unwrap();
    let node = &group.nodes[0];

    let err = peer(&tls_of(node), node.addr)
        .identity()
        .await
        .expect_err("a certificate for another address was accepted");
    let message = err.to_string();
    assert!(
        message.contains("TLS") && message.contains("subjectAltName"),
        "{message}"
    );

    // The same node with a certificate for its own address is accepted.
    let right = node.addr.ip().to_string();
    let run = cert_ok(&[
        "cert",
        "node",
        "--ca",
        s(&pki),
        "--out",
        s(&out),
        "--force",
        &right,
    ])
    .await;
    assert_eq!(tls_lines(&run).len(), 3, "{run:#?}");
    group.restart(0).await.unwrap();
    let node = &group.nodes[0];
    peer(&tls_of(node), node.addr)
        .identity()
        .await
        .expect("a certificate for the dialled address is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_files_are_kept_unless_force_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let node = dir.path().join("node");
    let shared = dir.path().join("shared");
    let cases: [(&[&str], &Path, [&str; 2]); 3] = [
        (
            &["cert", "ca", "--out", s(&pki)],
            &pki,
            ["ca.pem", "ca.key"],
        ),
        (
            &[
                "cert",
                "node",
                "--ca",
                s(&pki),
                "--out",
                s(&node),
                "10.0.0.2",
            ],
            &node,
            ["node.pem", "node.key"],
        ),
        (
            &["cert", "self-signed", "--out", s(&shared), "10.0.0.2"],
            &shared,
            ["gosyncd.crt", "gosyncd.key"],
        ),
    ];
    // In order: the CA is made before the node certificate it signs.
    for (args, out, [cert_file, key_file]) in cases {
        cert_ok(args).await;
        let before = snapshot(out);
        let run = cert(args).await;
        assert_eq!(run.code, Some(2), "{run:#?}");
        let first = out.join(cert_file).display().to_string();
        assert!(
            run.stderr.contains(&first) && run.stderr.contains("--force"),
            "{run:#?}"
        );
        assert!(run.stdout.is_empty(), "{run:#?}");
        assert_eq!(snapshot(out), before, "{args:?} changed files");

        // With --force both are replaced, and a key left readable is private again.
        std::fs::set_permissions(out.join(key_file), PermissionsExt::from_mode(0o644)).unwrap();
        let mut forced: Vec<&str> = args.to_vec();
        forced.push("--force");
        cert_ok(&forced).await;
        for file in [cert_file, key_file] {
            let old = match &before[Path::new(file)] {
                Item::File { bytes, .. } => bytes.clone(),
                other => panic!("{file}: {other:?}"),
            };
            assert_ne!(std::fs::read(out.join(file)).unwrap(), old, "{file} kept");
        }
        assert_eq!(mode(&out.join(key_file)), 0o600);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_host_is_refused_with_its_value_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    cert_ok(&["cert", "ca", "--out", s(&pki)]).await;
    let out = dir.path().join("out");
    for (host, why) in [
        ("10.0.0.2:8080", "give the host alone (10.0.0.2)"),
        ("[fd00::2]:8080", "give the host alone (fd00::2)"),
        ("bad_host!", "neither an IP address nor a valid DNS name"),
        ("*.example.com", "wildcards"),
        ("10.0.0.256", "neither an IP address nor a valid DNS name"),
        ("", "empty host"),
    ] {
        for args in [
            &[
                "cert",
                "node",
                "--ca",
                s(&pki),
                "--out",
                s(&out),
                "10.0.0.1",
                host,
            ][..],
            &["cert", "self-signed", "--out", s(&out), host, "10.0.0.1"],
        ] {
            let run = cert(args).await;
            assert_eq!(run.code, Some(2), "{run:#?}");
            assert!(
                run.stderr.contains(&format!("'{host}'"))
                    && run.stderr.contains("<HOST>")
                    && run.stderr.contains(why),
                "{host:?}: {run:#?}"
            );
            assert!(!out.exists(), "{host:?}: something was written");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_ca_directory_is_refused_naming_the_argument_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, other) = (dir.path().join("pki"), dir.path().join("other"));
    cert_ok(&["cert", "ca", "--out", s(&pki)]).await;
    cert_ok(&["cert", "ca", "--out", s(&other)]).await;
    let node = dir.path().join("node");
    cert_ok(&[
        "cert",
        "node",
        "--ca",
        s(&pki),
        "--out",
        s(&node),
        "10.0.0.2",
    ])
    .await;
    // A CA whose key is another CA's; a "CA" that is a node certificate.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    std::fs::copy(pki.join("ca.pem"), mixed.join("ca.pem")).unwrap();
    std::fs::copy(other.join("ca.key"), mixed.join("ca.key")).unwrap();
    let leaf = dir.path().join("leaf");
    std::fs::create_dir(&leaf).unwrap();
    std::fs::copy(node.join("node.pem"), leaf.join("ca.pem")).unwrap();
    std::fs::copy(node.join("node.key"), leaf.join("ca.key")).unwrap();
    let missing = dir.path().join("missing");

    let out = dir.path().join("out");
    let path = |p: &Path| p.display().to_string();
    for (ca, said) in [
        (missing.clone(), vec![path(&missing), "cert ca".to_string()]),
        (pki.join("ca.pem"), vec!["not a directory".to_string()]),
        (
            mixed.clone(),
            vec![
                path(&mixed.join("ca.key")),
                "does not belong to".to_string(),
            ],
        ),
        (
            leaf.clone(),
            vec![
                path(&leaf.join("ca.pem")),
                "not a CA certificate".to_string(),
            ],
        ),
    ] {
        let run = cert(&["cert", "node", "--ca", s(&ca), "--out", s(&out), "10.0.0.2"]).await;
        assert_eq!(run.code, Some(2), "{run:#?}");
        let mut expected = said.clone();
        expected.push(format!("--ca {}", ca.display()));
        for text in expected {
            assert!(run.stderr.contains(&text), "{text:?} not in {run:#?}");
        }
        assert!(!out.exists(), "{ca:?}: something was written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_groups_private_keys_are_for_their_owner_only() {
    // The group `gosyncd demo` and the tests run on writes its keys as `gosyncd cert`
    // does.
    for (tls, keys) in [
        (TlsStyle::Authority, vec!["node1.key", "node2.key"]),
        (TlsStyle::SelfSigned, vec!["gosyncd.key"]),
    ] {
        let group = LocalGroup::build(&GroupSpec { tls, ..spec(2) })
            .await
            .unwrap();
        for key in keys {
            let mode = format!("{:o}", mode(&group.path().join(key)));
            assert_eq!(mode, "600", "{key} ({tls:?})");
        }
    }
}
