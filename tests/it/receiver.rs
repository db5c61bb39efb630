//! The receiving side under attack or in a race: crafted apply requests from a group
//! member are refused whole, with a reason, and write nothing anywhere; links on the
//! receiver are never followed; a file changed behind the sender's back is a conflict.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::*;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use gosyncd::group::{GroupSpec, LocalGroup};
use gosyncd::manifest::{self, HashCache, Manifest};
use gosyncd::node::Node;
use gosyncd::plan::plan;
use gosyncd::protocol::{
    encode_batch, Action, ApplyResponse, BatchHeader, Content, Entry, Op, Outcome, APPLY_ROUTE,
    BATCH_CONTENT_TYPE, MAX_APPLY_BODY_BYTES,
};
use gosyncd::server::router;
use tower::ServiceExt;

/// A group of two whose directory `/etc/app` excludes `/etc/app/private` and `*.swp`,
/// with a directory `outside` next to the nodes' roots.
async fn group() -> LocalGroup {
    let group = start_with(GroupSpec {
        directories: vec![(
            "/etc/app".into(),
            vec!["/etc/app/private".into(), "*.swp".into()],
        )],
        ..spec(2)
    })
    .await;
    std::fs::create_dir(group.path().join("outside")).unwrap();
    std::fs::write(group.path().join("outside/victim"), "outside, untouched").unwrap();
    group
}

fn put(path: &str, bytes: &[u8]) -> Op {
    Op {
        path: path.into(),
        action: Action::Put {
            entry: file_entry(bytes, 0o644),
        },
        expect: None,
    }
}

/// A batch putting each `(path, bytes)`, in order.
fn batch(puts: &[(&str, &[u8])]) -> Vec<u8> {
    let header = BatchHeader::new(puts.iter().map(|(p, b)| put(p, b)).collect());
    let contents: Vec<&[u8]> = puts.iter().map(|(_, b)| *b).collect();
    encode_batch(&header, &contents)
}

/// Sends `body` from node 0 to node 1 and checks that it is refused with a 400 naming
/// `reason`, and that nothing changed anywhere in the group's directory (both nodes'
/// roots, the certificates, and `outside`).
async fn assert_refused(group: &LocalGroup, body: Vec<u8>, reason: &str) {
    let before = snapshot(group.path());
    let err = peer_as(&group.nodes[0], group.nodes[1].addr)
        .apply(body)
        .await
        .expect_err("the batch was accepted");
    let message = err.to_string();
    assert!(
        message.contains("(400)") && message.contains(reason),
        "expected a 400 naming {reason:?}, got: {message}"
    );
    assert_eq!(
        snapshot(group.path()),
        before,
        "a refused batch wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_a_path_with_dotdot() {
    let group = group().await;
    let body = batch(&[
        ("/etc/app/ok.conf", b"fine"),
        ("/etc/app/../../../outside/evil", b"escaped"),
    ]);
    assert_refused(&group, body, "\"..\" component").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_a_path_outside_the_configured_directories() {
    let group = group().await;
    let body = batch(&[
        ("/etc/app/ok.conf", b"fine"),
        ("/etc/other/evil", b"elsewhere"),
    ]);
    assert_refused(&group, body, "outside the configured directories").await;
    let body = batch(&[("/etc/application/evil", b"a sibling with a common prefix")]);
    assert_refused(&group, body, "outside the configured directories").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_an_excluded_path() {
    let group = group().await;
    let body = batch(&[
        ("/etc/app/ok.conf", b"fine"),
        ("/etc/app/private/key", b"excluded"),
    ]);
    assert_refused(&group, body, "excluded on this node").await;
    let body = batch(&[("/etc/app/sub/.x.swp", b"excluded by name")]);
    assert_refused(&group, body, "excluded on this node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_a_path_through_a_symlink_planted_on_the_receiver() {
    let group = group().await;
    let outside = group.path().join("outside");
    symlink(&group.nodes[1], &outside, "/etc/app/sub");
    let body = batch(&[
        ("/etc/app/ok.conf", b"fine"),
        ("/etc/app/sub/evil", b"through the link"),
    ]);
    assert_refused(&group, body, "is a symlink on this node").await;
    // Through a link to a directory inside the tree too: links are never followed.
    mkdir(&group.nodes[1], "/etc/app/real");
    symlink(&group.nodes[1], "real", "/etc/app/alias");
    let body = batch(&[("/etc/app/alias/x.conf", b"through an inner link")]);
    assert_refused(&group, body, "is a symlink on this node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_garbage() {
    let group = group().await;
    assert_refused(&group, b"this is not a batch at all".to_vec(), "bad magic").await;
    let mut truncated = batch(&[("/etc/app/a.conf", b"some content")]);
    truncated.truncate(truncated.len() - 3);
    assert_refused(&group, truncated, "truncated").await;
    let mut bad_header = b"GSB1".to_vec();
    bad_header.extend_from_slice(&5u32.to_be_bytes());
    bad_header.extend_from_slice(b"{nope");
    assert_refused(&group, bad_header, "malformed batch header").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_a_batch_whose_content_hash_does_not_match() {
    let group = group().await;
    let header = BatchHeader::new(vec![
        put("/etc/app/ok.conf", b"fine"),
        put("/etc/app/a.conf", b"announced content"),
    ]);
    let body = encode_batch(&header, &[b"fine", b"announced CONTENT"]);
    assert_refused(&group, body, "does not match").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_a_body_over_the_limit_with_413() {
    let group = group().await;
    let node = Arc::new(Node::new(
        group.nodes[1].config.clone(),
        Arc::new(HashCache::default()),
        None,
    ));
    let app = router(node);
    let before = snapshot(group.path());
    // vec![0; n] is calloc'd: the pages are never touched, so this costs no memory.
    let request = |len: usize| {
        Request::post(APPLY_ROUTE)
            .header("content-type", BATCH_CONTENT_TYPE)
            .body(Body::from(vec![0u8; len]))
            .unwrap()
    };
    let over = app
        .clone()
        .oneshot(request(MAX_APPLY_BODY_BYTES + 1))
        .await
        .unwrap();
    assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // At the limit the body is read, and refused for what it is.
    let at = app.oneshot(request(MAX_APPLY_BODY_BYTES)).await.unwrap();
    assert_eq!(at.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        snapshot(group.path()),
        before,
        "a refused body wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_cannot_write_through_a_link_it_creates() {
    let group = group().await;
    let outside = group.path().join("outside");
    let before_outside = snapshot(&outside);
    let link = Op {
        path: "/etc/app/sub".into(),
        action: Action::Put {
            entry: gosyncd::protocol::Entry {
                content: Content::Symlink {
                    target: outside.display().to_string(),
                },
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime_ns: 0,
            },
        },
        expect: None,
    };
    let header = BatchHeader::new(vec![
        link,
        put("/etc/app/sub/evil", b"through the new link"),
    ]);
    let body = encode_batch(&header, &[b"through the new link"]);
    // Refused whole, as any batch with one bad path: not even the link is made.
    assert_refused(&group, body, "which the same batch makes a symlink").await;
    assert_eq!(snapshot(&outside), before_outside, "written through a link");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replaces_and_deletes_links_on_the_peer_without_following_them() {
    let group = group().await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let outside = group.path().join("outside");
    symlink(n1, outside.join("victim"), "/etc/app/target");
    symlink(n1, &outside, "/etc/app/linkdir");
    write(n0, "/etc/app/target", "a file from node 0");
    let before_outside = snapshot(&outside);

    let report = sync(&group, 0).await;
    assert_clean(&report);
    assert_eq!(
        summary(&report, n1),
        ["- /etc/app/linkdir", "M /etc/app/target"]
    );
    let meta = std::fs::symlink_metadata(n1.path("/etc/app/target")).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(read(n1, "/etc/app/target"), b"a file from node 0");
    assert!(!exists(n1, "/etc/app/linkdir"));
    assert_eq!(snapshot(&outside), before_outside, "written through a link");
}

/// The receiver's manifest as the sender plans against it.
fn manifest_from(response: &gosyncd::protocol::ManifestResponse) -> Manifest {
    response
        .entries
        .iter()
        .map(|w| (w.path.as_str().into(), w.entry.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_an_operation_planned_against_a_state_that_changed() {
    let group = group().await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/conf", "from the sender");
    write(n1, "/etc/app/conf", "old");
    let peer = peer_as(n0, n1.addr);
    let remote = peer.manifest(&[]).await.unwrap();
    let local = manifest::scan(&n0.config, &[], &HashCache::default()).entries;
    let ops = plan(&local, &manifest_from(&remote), remote.owners);
    assert_eq!(ops.len(), 1, "{ops:?}");

    // Someone edits the file on the receiver between planning and pushing.
    write(n1, "/etc/app/conf", "edited on the peer");
    let body = encode_batch(&BatchHeader::new(ops), &[b"from the sender"]);
    let response = peer.apply(body).await.unwrap();
    assert!(
        matches!(&response.results[0].outcome, Outcome::Conflict(reason) if reason.contains("changed on the peer")),
        "{response:?}"
    );
    assert_eq!(read(n1, "/etc/app/conf"), b"edited on the peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_reports_a_conflict_and_leaves_the_peers_file_intact() {
    let group = group().await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let big = vec![7u8; 2 * 1024 * 1024];
    write(n0, "/etc/app/big.bin", &big);
    write(n0, "/etc/app/conf", "from the sender");
    write(n1, "/etc/app/conf", "old");

    // Node 1 seen through a forwarder that edits node 1's file once 1 MiB of the push
    // went through: after the plan, before the receiver has the whole batch.
    let edited = Arc::new(AtomicBool::new(false));
    let hook = {
        let (path, edited) = (n1.path("/etc/app/conf"), edited.clone());
        Box::new(move || {
            std::fs::write(&path, "edited on the peer").unwrap();
            edited.store(true, Ordering::SeqCst);
        })
    };
    let alias = forwarder_with_hook(n1.addr.ip(), n1.addr, 1024 * 1024, Some(hook)).await;
    let variant = config_variant(&group, 0, "via-forwarder.hcl", |text| {
        with_remotes(&text, &[alias.addr.to_string()])
    });
    let report = run(&engine_for(&variant, n0.node_id()).await, &[], false).await;
    assert!(edited.load(Ordering::SeqCst), "the edit did not happen");

    assert!(report.failed(), "{report:#?}");
    let lines: Vec<String> = report.peers[0].lines().map(|l| l.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert_eq!(
        lines[0],
        format!("[+] {} /etc/app/big.bin added", alias.addr)
    );
    assert!(
        lines[1].starts_with(&format!(
            "[!] {} /etc/app/conf skipped: conflict: ",
            alias.addr
        )),
        "{lines:#?}"
    );
    assert_eq!(read(n1, "/etc/app/conf"), b"edited on the peer");
    assert_eq!(read(n1, "/etc/app/big.bin"), big);
}

// ---------------------------------------------------------------------------------------
// What a peer may not set.

/// A batch of `(path, entry, content)`, created where nothing is.
fn batch_of(items: &[(&str, gosyncd::protocol::Entry, &[u8])]) -> Vec<u8> {
    let header = BatchHeader::new(
        items
            .iter()
            .map(|(path, entry, _)| Op {
                path: (*path).into(),
                action: Action::Put {
                    entry: entry.clone(),
                },
                expect: None,
            })
            .collect(),
    );
    let contents: Vec<&[u8]> = items
        .iter()
        .filter(|(_, e, _)| matches!(e.content, Content::File { .. }))
        .map(|(_, _, c)| *c)
        .collect();
    encode_batch(&header, &contents)
}

fn dir_entry(mode: u32) -> gosyncd::protocol::Entry {
    gosyncd::protocol::Entry {
        content: Content::Dir,
        mode,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
    }
}

fn mode_at(node: &gosyncd::group::GroupNode, logical: &str) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(node.path(logical))
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_create_set_id_files_nor_open_up_a_configured_directory() {
    let group = group().await;
    let n1 = &group.nodes[1];
    let directory_mode = mode_at(n1, "/etc/app");
    let script: &[u8] = b"#!/bin/sh\nid\n";
    let body = batch_of(&[
        ("/etc/app/suid", file_entry(script, 0o4755), script),
        ("/etc/app/sgid", file_entry(script, 0o2755), script),
        ("/etc/app/both", file_entry(script, 0o6755), script),
        ("/etc/app", dir_entry(0o777), b""),
        ("/etc/app/plain", file_entry(script, 0o755), script),
        ("/etc/app/shared", dir_entry(0o1777), b""),
    ]);
    let response = peer_as(&group.nodes[0], n1.addr)
        .apply(body)
        .await
        .expect("the batch is well-formed: refused operation by operation");
    let outcome = |path: &str| {
        response
            .results
            .iter()
            .find(|r| r.path == path)
            .map(|r| r.outcome.clone())
            .unwrap_or_else(|| panic!("no answer for {path}: {:?}", response.results))
    };
    for (path, bit) in [
        ("/etc/app/suid", "setuid bit"),
        ("/etc/app/sgid", "setgid bit"),
        ("/etc/app/both", "setuid and setgid bits"),
    ] {
        assert!(
            matches!(&outcome(path), Outcome::Refused(why) if why.contains(bit) && why.contains("allow_setid") && why.contains(path)),
            "{path}: {:?}",
            outcome(path)
        );
        assert!(!n1.path(path).exists(), "{path} was created");
    }
    assert!(
        matches!(&outcome("/etc/app"), Outcome::Refused(why) if why.contains("allow_writable_directories")),
        "{:?}",
        outcome("/etc/app")
    );
    assert_eq!(
        mode_at(n1, "/etc/app"),
        directory_mode,
        "the directory's mode changed"
    );
    // The rest of the batch is applied: a plain program, a sticky shared directory below.
    assert_eq!(outcome("/etc/app/plain"), Outcome::Applied);
    assert_eq!(mode_at(n1, "/etc/app/plain"), Some(0o755));
    assert_eq!(outcome("/etc/app/shared"), Outcome::Applied);
    assert_eq!(mode_at(n1, "/etc/app/shared"), Some(0o1777));

    // A sync of a set-id file: the sender's report names the refusal and its reason.
    let n0 = &group.nodes[0];
    write(n0, "/etc/app/tool", "#!/bin/sh\n");
    chmod(n0, "/etc/app/tool", 0o4755);
    let report = sync(&group, 0).await;
    let peer = peer_report(&report, n1);
    let line = peer
        .changes
        .iter()
        .find(|c| c.path == "/etc/app/tool")
        .map(|c| c.line(&peer.peer).to_string())
        .expect("the set-id file is in the report");
    assert!(
        line.contains("setuid bit") && line.contains("allow_setid"),
        "the sender's report line: {line}"
    );
    assert!(!n1.path("/etc/app/tool").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_id_files_are_accepted_where_the_receiver_allows_them() {
    let group = start_with(GroupSpec {
        settings: "allow_setid = true\n".into(),
        ..spec(2)
    })
    .await;
    let n1 = &group.nodes[1];
    assert!(n1.config.allow_setid && !n1.config.allow_writable_directories);
    let script: &[u8] = b"#!/bin/sh\nid\n";
    let body = batch_of(&[("/etc/app/suid", file_entry(script, 0o4755), script)]);
    let response = peer_as(&group.nodes[0], n1.addr).apply(body).await.unwrap();
    assert_eq!(response.results[0].outcome, Outcome::Applied);
    assert_eq!(mode_at(n1, "/etc/app/suid"), Some(0o4755));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_refuses_an_owner_of_minus_one() {
    let group = group().await;
    for (uid, gid) in [(u32::MAX, 0), (0, u32::MAX)] {
        let mut entry = file_entry(b"x", 0o644);
        (entry.uid, entry.gid) = (uid, gid);
        let body = batch_of(&[("/etc/app/owned", entry, b"x")]);
        assert_refused(&group, body, "4294967295").await;
    }
}

// ---------------------------------------------------------------------------------------
// What one content request can cost.

/// `count` files of 1 MiB of text on `node`, and `/etc/app/one.txt`; their paths.
fn big_texts(node: &gosyncd::group::GroupNode, count: usize) -> Vec<String> {
    let mib = |i: usize| format!("{i:07}\n").repeat(1024 * 1024 / 8);
    write(node, "/etc/app/one.txt", mib(0));
    (0..count)
        .map(|i| {
            let path = format!("/etc/app/big/{i}.txt");
            write(node, &path, mib(i + 1));
            path
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_answer_holds_each_path_once_and_stops_at_its_cap() {
    let group = group().await;
    let bigs = big_texts(&group.nodes[1], 20);
    let node = Arc::new(Node::new(
        group.nodes[1].config.clone(),
        Arc::new(HashCache::default()),
        None,
    ));
    let mut paths = vec!["/etc/app/one.txt".to_string(); 300];
    paths.extend(bigs.iter().cloned());
    let body = serde_json::to_vec(&gosyncd::protocol::ContentRequest { paths }).unwrap();
    let response = router(node)
        .oneshot(
            Request::post(gosyncd::protocol::CONTENT_ROUTE)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let answer: gosyncd::protocol::ContentResponse = serde_json::from_slice(&bytes).unwrap();
    let answered: Vec<&str> = answer.files.iter().map(|f| f.path.as_str()).collect();
    let mut expected = vec!["/etc/app/one.txt"];
    expected.extend(bigs.iter().map(String::as_str));
    assert_eq!(answered, expected, "each path once, in the order asked");
    let text: u64 = answer
        .files
        .iter()
        .filter_map(|f| f.text.as_ref())
        .map(|t| t.len() as u64)
        .sum();
    assert!(
        text <= gosyncd::protocol::MAX_CONTENT_ANSWER_BYTES,
        "{text} bytes of text in one answer"
    );
    let deferred = answer.files.iter().filter(|f| f.deferred).count();
    assert!(deferred > 0, "21 MiB asked, more than one answer holds");
    for file in &answer.files {
        assert_eq!(
            file.text.is_some(),
            !file.deferred,
            "{}: a file is either read whole or deferred",
            file.path
        );
    }
    assert!(
        bytes.len() as u64 <= gosyncd::protocol::MAX_CONTENT_ANSWER_BYTES + 64 * 1024,
        "the answer is {} bytes",
        bytes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_large_files_asked_at_once_arrive_whole_and_the_node_stays_small() {
    const PEAK_BOUND_KIB: u64 = 64 * 1024;
    let mut group = LocalGroup::build(&spec(2)).await.unwrap();
    group.restart(0).await.unwrap();
    let bigs = big_texts(&group.nodes[1], 40);
    group.release(1);
    let mut daemon =
        DaemonProcess::spawn(&group.nodes[1].config_path, group.path().join("node2.log"));
    let peer = peer_as(&group.nodes[0], group.nodes[1].addr);
    daemon.wait_ready(&peer).await;
    let mut paths = vec!["/etc/app/one.txt".to_string(); 300];
    paths.extend(bigs.iter().cloned());
    let answer = peer.contents(&paths).await.unwrap();
    assert_eq!(answer.files.len(), 41, "each path once");
    for file in &answer.files {
        assert!(!file.deferred, "{} still deferred", file.path);
        assert_eq!(
            file.text.as_ref().map(String::len),
            Some(1024 * 1024),
            "{}: {:?}",
            file.path,
            file.note
        );
    }
    let peak_kib = memory_kib(daemon.child.id(), "VmHWM:");
    eprintln!("daemon peak RSS after answering 41 MiB of text: {peak_kib} KiB");
    assert!(
        peak_kib < PEAK_BOUND_KIB,
        "the node's peak RSS was {peak_kib} KiB answering 41 MiB of text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_2000_levels_deep_is_applied_and_sent_again_in_linear_time() {
    // 2,000 levels: a logical path of 4,089 bytes, under the 4,096 allowed, whose local
    // path (the root's prefix added) is longer than the system's PATH_MAX. Half as deep
    // first: the time must grow with the batch's size (every path repeats its parents',
    // so twice as deep is about four times the bytes), not with its square.
    let group = group().await;
    let n1 = &group.nodes[1];
    let peer = peer_as(&group.nodes[0], n1.addr);
    let mut trees = Vec::new();
    for (name, depth) in [("h", 1000), ("f", 2000)] {
        // A top name of 80 bytes takes the logical path close to the limit.
        let top = format!("/etc/app/{}", name.repeat(80));
        let mut dirs = vec![top.clone()];
        let mut path = top;
        for _ in 1..depth {
            path.push_str("/d");
            dirs.push(path.clone());
        }
        let file = format!("{path}/f");
        if depth == 2000 {
            assert!(file.len() < 4096 && n1.path(&file).as_os_str().len() > 4096);
        }
        let mut items: Vec<(&str, gosyncd::protocol::Entry, &[u8])> = dirs
            .iter()
            .map(|d| (d.as_str(), dir_entry(0o755), b"".as_slice()))
            .collect();
        items.push((file.as_str(), file_entry(b"deep\n", 0o644), b"deep\n"));
        trees.push((depth, batch_of(&items), Vec::new()));
    }
    // Each tree is sent three times (the first makes the directories), the two trees in
    // turn, so that work of other tests beside this one slows both alike.
    for send in ["first", "again", "a third time"] {
        for (depth, body, took) in &mut trees {
            let started = std::time::Instant::now();
            let answer = peer
                .apply(body.clone())
                .await
                .unwrap_or_else(|e| panic!("{depth} levels, {send}: refused: {e}"));
            took.push(started.elapsed());
            assert_eq!(answer.results.len(), *depth + 1);
            assert!(
                answer.results.iter().all(|r| r.outcome == Outcome::Applied),
                "{depth} levels, {send}: {:?}",
                answer
                    .results
                    .iter()
                    .find(|r| r.outcome != Outcome::Applied)
            );
        }
    }
    for (depth, body, took) in &trees {
        eprintln!(
            "a {depth}-level tree, a batch of {} bytes: applied in {took:?} (first, again, a \
             third time)",
            body.len()
        );
    }
    // Quadratic in the size would be 14 times as long; allow twice linear for noise. Each
    // send is compared with its like, and the quickest ratio is judged: other work only
    // slows a send down.
    let ((_, half_body, half), (_, full_body, full)) = (&trees[0], &trees[1]);
    let size_ratio = full_body.len() as f64 / half_body.len() as f64;
    let time_ratio = half
        .iter()
        .zip(full)
        .map(|(half, full)| full.as_secs_f64() / half.as_secs_f64().max(0.05))
        .fold(f64::INFINITY, f64::min);
    assert!(
        time_ratio < 2.0 * size_ratio,
        "1,000 levels: {half:?}, 2,000 levels: {full:?}, for {size_ratio:.1} times the bytes"
    );
    assert!(
        full.iter()
            .all(|took| *took < std::time::Duration::from_secs(20)),
        "{full:?}"
    );
    // The receiving node's own scan reaches the deepest file (its local path is longer
    // than PATH_MAX), so the tree travels on from there.
    let scan = manifest::scan(&n1.config, &[], &HashCache::default());
    assert_eq!(scan.unreadable, Vec::<(String, String)>::new());
    let deepest = scan
        .entries
        .keys()
        .filter(|p| p.starts_with(&format!("/etc/app/{}", "f".repeat(80))))
        .max_by_key(|p| p.len())
        .expect("the 2,000-level tree is scanned");
    assert!(deepest.ends_with("/d/f") && n1.path(deepest).as_os_str().len() > 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_name_shaped_like_a_backup_version_does_not_break_backups() {
    let mut group = start_with(spec(2)).await;
    let store = group.path().join("backups");
    let variant = config_variant(&group, 1, "node2-backups.hcl", |text| {
        format!(
            "backup {{\n  directory = \"{}\"\n  keep = 1\n}}\n{text}",
            store.display()
        )
    });
    group.nodes[1].config = Arc::new(gosyncd::config::Config::from_file(&variant).unwrap());
    group.nodes[1].config_path = variant;
    group.restart(1).await.unwrap();
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    // /etc/app/x is a directory holding a file named like a version, replaced once: its
    // versions live in a directory of that name, beside where x's own will be.
    let odd = "/etc/app/x/20000101T000000.000000000Z.json";
    write(n0, odd, "v1\n");
    assert_clean(&sync(&group, 0).await);
    write(n0, odd, "v2\n");
    assert_clean(&sync(&group, 0).await);
    assert!(store
        .join("etc/app/x/20000101T000000.000000000Z.json")
        .is_dir());
    // Then x becomes a file, updated more times than `keep`: each update prunes x's
    // versions, beside that directory.
    remove(n0, "/etc/app/x");
    write(n0, "/etc/app/x", "file 1\n");
    assert_clean(&sync(&group, 0).await);
    for round in 2..=4 {
        write(n0, "/etc/app/x", format!("file {round}\n"));
        let report = sync(&group, 0).await;
        assert_clean(&report);
        assert_eq!(
            read(n1, "/etc/app/x"),
            format!("file {round}\n").as_bytes(),
            "round {round}: {report:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_begins_once_its_batch_has_arrived_and_a_batch_sent_then_is_applied_after_it() {
    let mut group = start(2).await;
    // Node 2 takes a second and a half to judge each batch, and says when it is done.
    let judged = group.path().join("judged");
    with_directory_lines(
        &mut group,
        1,
        &format!(
            r#"  validate = "sleep 1.5; echo done: $GOSYNCD_CHANGED >> {}""#,
            judged.display()
        ),
    )
    .await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let dir = Entry {
        content: Content::Dir,
        mode: 0o755,
        ..file_entry(b"", 0o755)
    };
    let made = Op {
        path: "/etc/app/made".into(),
        action: Action::Put { entry: dir },
        expect: None,
    };
    let first = encode_batch(
        &BatchHeader::new(vec![made, put("/etc/app/made/a.conf", b"first")]),
        &[b"first"],
    );
    // Only in the directory the first batch makes; and a file planned against a state
    // node 2 does not hold, refused as a conflict.
    let elsewhere = Op {
        expect: Some(Box::new(file_entry(b"not what it holds", 0o644))),
        ..put("/etc/app/held.conf", b"replaced")
    };
    // On both nodes, once node 2 has compared with node 1 at its start: a difference
    // seen by a comparison would have node 2 run its `validate` on its own tree.
    eventually("node 2 compared with node 1 at start-up", WAIT, || {
        n1.peer_status()
            .and_then(|peers| peers.first().cloned())
            .and_then(|p| p.drift_paths)
            .filter(|drift| *drift == 0)
    })
    .await;
    write(n0, "/etc/app/held.conf", "held\n");
    write(n1, "/etc/app/held.conf", "held\n");
    let second = encode_batch(
        &BatchHeader::new(vec![put("/etc/app/made/b.conf", b"second"), elsewhere]),
        &[b"second", b"replaced"],
    );
    let peer = peer_as(n0, n1.addr);
    let length = |body: &Vec<u8>| body.len() as u64;

    let begun = peer
        .apply_begin(first.clone().into(), length(&first))
        .await
        .expect("the first batch received");
    assert!(
        !judged.exists(),
        "the answer began only once the first batch was applied and judged"
    );
    let next = peer
        .apply_begin(second.clone().into(), length(&second))
        .await
        .expect("the second batch received");
    let judged_now = std::fs::read_to_string(&judged).unwrap_or_default();
    assert_eq!(
        judged_now.lines().count(),
        1,
        "the second batch held its turn before the first was done, or after it was \
         done itself: {judged_now}"
    );
    // Answered briefly where all was applied, in full otherwise.
    let first: ApplyResponse = peer.apply_answer(begun).await.unwrap();
    assert_eq!((first.applied, first.results.len()), (Some(2), 0));
    let second: ApplyResponse = peer.apply_answer(next).await.unwrap();
    assert_eq!(second.applied, None);
    let outcomes: Vec<_> = second.results.iter().map(|r| &r.outcome).collect();
    assert!(
        matches!(outcomes[..], [Outcome::Applied, Outcome::Conflict(_)]),
        "{outcomes:?}"
    );
    assert_eq!(read(n1, "/etc/app/made/a.conf"), b"first");
    assert_eq!(read(n1, "/etc/app/made/b.conf"), b"second");
    assert_eq!(read(n1, "/etc/app/held.conf"), b"held\n");
    assert_eq!(std::fs::read_to_string(&judged).unwrap().lines().count(), 2);
}
