//! Staged rollouts with the real binary against real daemons: `sync --peer ADDR` changes
//! only the peers named, `sync --canary N` pushes to N peers first and goes on only when
//! their `validate` and `on_change` succeeded; otherwise it stops, says what failed
//! where, exits 2, and leaves the other peers as they were.

use gosyncd::group::{GroupSpec, LocalGroup};

use crate::common::*;

/// Four nodes holding the same `app.cfg`; node 1 (the first canary: node 0, the sender,
/// comes first in `remotes` and does not count) gets `lines` in its directory block.
async fn group_whose_first_canary_has(lines: &str) -> LocalGroup {
    let mut group = start(4).await;
    for node in &group.nodes {
        write(node, "/etc/app/app.cfg", "listen 80\n");
    }
    if !lines.is_empty() {
        with_directory_lines(&mut group, 1, lines).await;
    }
    group
}

fn labels(group: &LocalGroup, nodes: &[usize]) -> Vec<String> {
    nodes
        .iter()
        .map(|&i| group.nodes[i].addr.to_string())
        .collect()
}

async fn sync(group: &LocalGroup, args: &[&str]) -> BinaryRun {
    let mut rest = vec!["sync"];
    rest.extend(args);
    gosyncd(config_args(&group.nodes[0].config_path, &rest)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_validate_fails_stops_the_rollout_and_the_others_are_untouched() {
    let group = group_whose_first_canary_has(
        r#"  validate = "if grep -q BROKEN \"$GOSYNCD_DIRECTORY/app.cfg\"; then echo 'app.cfg: unknown directive BROKEN' >&2; exit 1; fi""#,
    )
    .await;
    let before: Vec<_> = group.nodes[1..]
        .iter()
        .map(|n| snapshot(&n.path("/etc/app")))
        .collect();
    write(&group.nodes[0], "/etc/app/app.cfg", "listen 80\nBROKEN\n");

    let run = sync(&group, &["--canary", "1"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    let [canary, second, third] = &labels(&group, &[1, 2, 3])[..] else {
        unreachable!()
    };
    assert!(
        run.stdout.contains(canary) && run.stdout.contains("BROKEN"),
        "{run:#?}"
    );
    let said = run.stderr.lines().find(|l| l.contains("rollout stopped"));
    let said = said.unwrap_or_else(|| panic!("no word of the stop: {run:#?}"));
    assert!(said.contains(&format!("failed on {canary}")), "{said}");
    assert!(
        said.contains(&format!("not pushed to {second}, {third}")),
        "{said}"
    );
    assert!(
        !run.stdout.contains(second.as_str()) && !run.stdout.contains(third.as_str()),
        "a peer after the canary was pushed to: {run:#?}"
    );
    // The canary put its files back (its directory's mtime aside); the others were
    // never written to.
    let canary_now = without_times(&snapshot(&group.nodes[1].path("/etc/app")));
    assert_eq!(canary_now, without_times(&before[0]));
    for (node, before) in group.nodes[2..].iter().zip(&before[1..]) {
        assert_eq!(&snapshot(&node.path("/etc/app")), before, "{}", node.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_on_change_fails_stops_the_rollout() {
    let group =
        group_whose_first_canary_has(r#"  on_change = "echo reload failed >&2; exit 3""#).await;
    write(&group.nodes[0], "/etc/app/app.cfg", "listen 81\n");

    let run = sync(&group, &["--canary", "1", "--format", "json"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    let halted = run
        .stdout
        .lines()
        .find(|l| l.contains(r#""type":"halted""#))
        .unwrap_or_else(|| panic!("no halted record: {run:#?}"));
    let record: serde_json::Value = serde_json::from_str(halted).unwrap();
    assert_eq!(
        record["failed"],
        serde_json::json!(labels(&group, &[1])),
        "{halted}"
    );
    assert_eq!(
        record["untouched"],
        serde_json::json!(labels(&group, &[2, 3])),
        "{halted}"
    );
    // The canary took the change (its on_change ran after it); the others did not.
    assert_eq!(read(&group.nodes[1], "/etc/app/app.cfg"), b"listen 81\n");
    for node in &group.nodes[2..] {
        assert_eq!(
            read(node, "/etc/app/app.cfg"),
            b"listen 80\n",
            "{}",
            node.addr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_succeeds_lets_the_rollout_reach_every_peer() {
    let group = group_whose_first_canary_has(
        r#"  validate = "! grep -q BROKEN \"$GOSYNCD_DIRECTORY/app.cfg\""
  on_change = "true""#,
    )
    .await;
    write(&group.nodes[0], "/etc/app/app.cfg", "listen 82\n");

    let run = sync(&group, &["--canary", "2"]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(!run.stderr.contains("rollout stopped"), "{run:#?}");
    for node in &group.nodes[1..] {
        assert_eq!(
            read(node, "/etc/app/app.cfg"),
            b"listen 82\n",
            "{}",
            node.addr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_peer_changes_only_the_peers_named() {
    let group = group_whose_first_canary_has("").await;
    write(&group.nodes[0], "/etc/app/app.cfg", "listen 83\n");
    let by_address = group.nodes[3].addr.ip().to_string();
    let by_label = group.nodes[2].addr.to_string();

    let run = sync(&group, &["--peer", &by_label, "--peer", &by_address]).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(read(&group.nodes[1], "/etc/app/app.cfg"), b"listen 80\n");
    assert_eq!(read(&group.nodes[2], "/etc/app/app.cfg"), b"listen 83\n");
    assert_eq!(read(&group.nodes[3], "/etc/app/app.cfg"), b"listen 83\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_peer_naming_no_remote_is_refused_before_anything_is_pushed() {
    let group = group_whose_first_canary_has("").await;
    write(&group.nodes[0], "/etc/app/app.cfg", "listen 84\n");
    let stranger = format!("{}:8080", address());

    let run = sync(
        &group,
        &[
            "--peer",
            &group.nodes[1].addr.to_string(),
            "--peer",
            &stranger,
        ],
    )
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr
            .contains(&format!("--peer {stranger} is none of")),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains(&group.nodes[2].addr.to_string()),
        "remotes not listed: {run:#?}"
    );
    for node in &group.nodes[1..] {
        assert_eq!(
            read(node, "/etc/app/app.cfg"),
            b"listen 80\n",
            "{}",
            node.addr
        );
    }
    // A canary sync cannot be a dry run: it would wait for results that never come.
    let run = sync(&group, &["-dry", "--canary", "1"]).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("--canary"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splayed_on_change_runs_are_spread_over_the_window() {
    const SPLAY_MS: u128 = 1500;
    const PUSHES: usize = 4;
    let mut group = start_with(GroupSpec {
        settings: format!("on_change_splay = \"{SPLAY_MS}ms\"\n"),
        ..spec(4)
    })
    .await;
    let log = group.path().join("reloads.log");
    for i in 1..4 {
        write(&group.nodes[i], "/etc/app/app.cfg", "listen 80\n");
        let line = format!(r#"  on_change = "date +%s%N >> {}""#, log.display());
        with_directory_lines(&mut group, i, &line).await;
    }
    let now_ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    };
    // Per push, how long after it began each node reloaded (ms).
    let mut pushes: Vec<Vec<u128>> = Vec::new();
    for round in 0..PUSHES {
        std::fs::write(&log, "").unwrap();
        write(
            &group.nodes[0],
            "/etc/app/app.cfg",
            format!("listen {round}\n"),
        );
        let pushed = now_ns();
        let run = sync(&group, &[]).await;
        assert_eq!(run.code, Some(0), "{run:#?}");
        let mut after: Vec<u128> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| (l.trim().parse::<u128>().unwrap() - pushed) / 1_000_000)
            .collect();
        after.sort();
        assert_eq!(after.len(), 3, "one reload per receiving node: {after:?}");
        // Within the window, give or take the 250 ms coalescing and the push itself.
        assert!(
            after.iter().all(|&ms| ms <= SPLAY_MS + 1500),
            "a reload came after the window: {after:?} ms"
        );
        pushes.push(after);
    }
    // Not all at the same instant. Without a splay the three reloads of a push land
    // within about 100 ms of each other; with it, the chance that no push spreads its
    // reloads over more than 300 ms (a fifth of the window) is about one in 10,000.
    let spread = |after: &Vec<u128>| after[2] - after[0];
    assert!(
        pushes.iter().any(|after| spread(after) > 300),
        "every push reloaded its nodes together: {pushes:?} ms after each push"
    );
}
