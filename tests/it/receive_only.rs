//! Receive-only nodes (`role = "receive-only"`), with real daemons: such a node applies
//! what its peers push, never pushes its own edits (it reports them as drift: a warning,
//! its status, a metric), replays no spool an earlier sending run left, and refuses
//! `gosyncd sync` while `sync -dry` works. A role other than the two is refused.
//!
//! Where a test shows that something is NOT pushed, it first waits for the receive-only
//! daemon to report the edit (which it does once the watcher's burst was handled), then
//! checks the peers, and watches them for a quiet period.

use std::net::SocketAddr;
use std::path::PathBuf;

use gosyncd::group::{GroupSpec, LocalGroup};
use gosyncd::protocol::{Role, StatusResponse};

use crate::common::*;

/// The sentence a receive-only node logs for a local edit it does not push.
const NOT_PUSHED_LOG: &str = "this node is receive-only: local edits are not pushed; run \
     `gosyncd revert PATH` to take the group's version back, or make the change on a \
     sending node";

/// A copy of node `i`'s configuration with `lines` on top.
fn with_lines_on_top(group: &LocalGroup, i: usize, name: &str, lines: &str) -> PathBuf {
    config_variant(group, i, name, |text| format!("{lines}\n{text}"))
}

/// The value of an unlabelled sample, or of a labelled one given whole (`name{...}`).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

/// The state directory of node `i` (as the group writes its configs).
fn state_directory(group: &LocalGroup, i: usize) -> PathBuf {
    group.nodes[i].config.state_directory.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_only_node_applies_pushes_and_reports_its_own_edits_as_drift_without_pushing_them(
) {
    let mut group = built_watching(3).await;
    // Nodes 1 and 2 send and receive, in this process; node 3 is the real binary,
    // receive-only, with its metrics.
    group.restart(0).await.unwrap();
    group.restart(1).await.unwrap();
    group.release(2);
    let metrics = SocketAddr::new(address(), 19_121);
    let config = with_lines_on_top(
        &group,
        2,
        "node3-receive-only.hcl",
        &format!("role = \"receive-only\"\nmetrics_address = \"{metrics}\""),
    );
    let mut receiver = DaemonProcess::spawn(&config, group.path().join("node3.log"));
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    let asks_n2 = peer_as(n0, n2.addr);
    receiver.wait_ready(&asks_n2).await;
    let status_of_n2 = || async {
        asks_n2
            .status()
            .await
            .map_err(|e| format!("{e}\n{}", receiver.log()))
    };

    // A sending node's edits reach every peer, the receive-only one included.
    let (shared, pushed, only_here) = (
        "/etc/app/shared.conf",
        "/etc/app/pushed.conf",
        "/etc/app/only-here.conf",
    );
    write(n0, shared, "the group's version\n");
    write(n0, pushed, "pushed by node 1\n");
    eventually_in(&group, WAIT, "node 1's edits on both peers", || {
        [n1, n2].iter().all(|n| {
            holds(n, shared, "the group's version\n") && holds(n, pushed, "pushed by node 1\n")
        })
    })
    .await;
    let received_by_n1 = counters(n1).apply_requests;

    // Edits made on the receive-only node: one file changed, one made.
    write(n2, shared, "edited by hand on the receive-only node\n");
    write(n2, only_here, "made by hand on the receive-only node\n");
    let edited = vec![only_here.to_string(), shared.to_string()];
    let reported = |status: &StatusResponse| {
        status.local_edits == edited
            && status.peers.len() == 2
            && status.peers.iter().all(|p| {
                p.drift_paths >= Some(2) && edited.iter().all(|path| p.drift.contains(path))
            })
    };
    let status: StatusResponse = eventually_async(
        "the receive-only node reports both edits as drift with each peer",
        WAIT,
        || async {
            let status = status_of_n2().await?;
            match reported(&status) {
                true => Ok(status),
                false => Err(format!("{status:#?}")),
            }
        },
    )
    .await;
    assert_eq!(status.role, Role::ReceiveOnly, "{status:#?}");
    assert_eq!(status.local_edits_not_pushed, 2, "{status:#?}");
    assert_eq!(status.counters.pushes, 0, "{status:#?}");
    assert!(
        status.peers.iter().all(|p| p.pending == 0 && p.pushes == 0),
        "something waits to be pushed: {status:#?}"
    );

    // The burst was handled, and nothing went to the peers: they keep their version.
    let untouched = || {
        [n0, n1]
            .iter()
            .all(|n| holds(n, shared, "the group's version\n") && !exists(n, only_here))
            && counters(n0).apply_requests == 0
            && counters(n1).apply_requests == received_by_n1
    };
    assert!(untouched(), "a local edit was pushed\n{}", describe(&group));
    holds_for_quiet_period(&group, "the peers keep their version", untouched).await;
    assert!(
        !state_directory(&group, 2).join("outbox.json").exists(),
        "the receive-only node spooled its edits for delivery"
    );

    // Said in its log, with the paths, in its metrics, and by `gosyncd status`.
    receiver.wait_for_log(NOT_PUSHED_LOG).await;
    let log = receiver.log();
    let line = log
        .lines()
        .find(|l| l.contains(NOT_PUSHED_LOG))
        .unwrap_or_default();
    assert!(line.contains("WARN"), "{line}");
    assert!(
        log.lines()
            .filter(|l| l.contains(NOT_PUSHED_LOG))
            .any(|l| l.contains(shared)),
        "no warning names {shared}:\n{log}"
    );
    let scraped = scrape(metrics).await;
    assert_eq!(
        sample(&scraped, "gosyncd_local_edits_not_pushed"),
        Some(2.0),
        "{scraped}"
    );
    for peer in [n0, n1] {
        let drift = format!("gosyncd_drift_paths{{peer=\"{}\"}}", peer.addr);
        assert!(
            sample(&scraped, &drift).is_some_and(|n| n >= 2.0),
            "{drift}:\n{scraped}"
        );
    }
    let text = gosyncd(config_args(&config, &["status"])).await;
    assert_eq!(text.code, Some(1), "drift is exit code 1: {text:#?}");
    let first = text.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("role: receive-only (")
            && first.contains(&config.display().to_string())
            && first.contains(&format!(
                "local edits not pushed: 2 ({only_here}, {shared})"
            )),
        "{text:#?}"
    );
    let json = gosyncd(config_args(&config, &["status", "--format", "json"])).await;
    let summary: serde_json::Value = json
        .stdout
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap_or_default();
    assert_eq!(summary["type"], "status_summary", "{json:#?}");
    assert_eq!(summary["role"], "receive-only", "{json:#?}");
    assert_eq!(summary["local_edits_not_pushed"], 2, "{json:#?}");
    assert_eq!(
        summary["local_edits"],
        serde_json::json!([only_here, shared]),
        "{json:#?}"
    );
    // A sending node's status says nothing of its role.
    let sender = gosyncd(config_args(&n0.config_path, &["status"])).await;
    assert!(
        sender.stdout.starts_with("PEER"),
        "a sending node's status starts with a role line: {sender:#?}"
    );

    // `gosyncd revert` takes the group's version back: the edited file restored, the file
    // made there deleted, nothing pushed, and the node no longer counts local edits.
    let run = gosyncd(config_args(&config, &["revert"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(holds(n2, shared, "the group's version\n"), "{run:#?}");
    assert!(!exists(n2, only_here), "{run:#?}");
    assert!(untouched(), "the revert pushed\n{}", describe(&group));
    eventually_async("the local edits to clear", WAIT, || async {
        let status = status_of_n2().await?;
        match status.local_edits_not_pushed == 0
            && status.peers.iter().all(|p| p.drift_paths == Some(0))
        {
            true => Ok(()),
            false => Err(format!("{status:#?}")),
        }
    })
    .await;
    assert!(
        untouched(),
        "a reverted file was pushed\n{}",
        describe(&group)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_on_a_receive_only_node_is_refused_naming_the_role_and_sends_nothing_while_dry_run_works(
) {
    let mut group = start(2).await;
    with_line_on_top(&mut group, 1, "role = \"receive-only\"").await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let config = n1.config_path.clone();
    let file = "/etc/app/only-on-node-2.conf";
    write(n1, file, "made on the receive-only node\n");

    let peer = n0.addr.to_string();
    for args in [
        vec!["sync"],
        vec!["sync", "--force", file],
        vec!["sync", "--peer", &peer],
        vec!["sync", "--canary", "1"],
        vec!["sync", "--format", "json"],
    ] {
        let run = gosyncd(config_args(&config, &args)).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(
            run.stderr.contains(&format!(
                "{}: role = \"receive-only\": this node applies what its peers push and \
                 pushes nothing, so `gosyncd sync` is refused",
                config.display()
            )) && run
                .stderr
                .contains("Run it on a sending node, or set role = \"send-receive\"")
                && run
                    .stderr
                    .contains("`gosyncd sync -dry` shows what differs"),
            "{args:?}: {run:#?}"
        );
        assert!(
            run.change_lines().is_empty(),
            "{args:?} printed changes: {run:#?}"
        );
    }
    assert!(!exists(n0, file), "the refused sync wrote on the peer");
    assert_eq!(counters(n0).apply_requests, 0, "{}", describe(&group));

    // What a sync would change is still shown, and changes nothing either.
    let added = format!("[+] {} {file} added", n0.addr);
    for args in [vec!["sync", "-dry"], vec!["state"]] {
        let run = gosyncd(config_args(&config, &args)).await;
        assert_eq!(run.code, Some(0), "{args:?}: {run:#?}");
        assert!(
            run.stdout.starts_with("synchronization dry run"),
            "{args:?}: {run:#?}"
        );
        assert_eq!(
            run.change_lines(),
            std::slice::from_ref(&added),
            "{args:?}: {run:#?}"
        );
    }
    let pending = gosyncd(config_args(&config, &["sync", "-dry", "--exit-code"])).await;
    assert_eq!(pending.code, Some(1), "{pending:#?}");
    assert!(!exists(n0, file), "a dry run wrote on the peer");
    assert_eq!(counters(n0).apply_requests, 0, "{}", describe(&group));

    // The sending node's sync still reaches the receive-only one.
    write(n0, "/etc/app/from-node-1.conf", "pushed\n");
    let run = gosyncd(config_args(&n0.config_path, &["sync", "--force"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(holds(n1, "/etc/app/from-node-1.conf", "pushed\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_other_than_send_receive_or_receive_only_is_refused_naming_the_key() {
    let group = LocalGroup::build(&spec(1)).await.unwrap();
    let bogus = with_lines_on_top(&group, 0, "bogus-role.hcl", "role = \"bogus\"");
    let expected = format!(
        "{}:1: role: \"bogus\" is not one of \"send-receive\", \"receive-only\"",
        bogus.display()
    );
    for args in [
        vec!["check-config"],
        vec![],
        vec!["status"],
        vec!["sync", "-dry"],
    ] {
        let run = gosyncd(config_args(&bogus, &args)).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:#?}");
        assert!(run.stderr.contains(&expected), "{args:?}: {run:#?}");
    }
    let good = with_lines_on_top(&group, 0, "receive-only.hcl", "role = \"receive-only\"");
    let run = gosyncd(config_args(&good, &["check-config"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stdout.contains("remotes, receive-only)"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_made_receive_only_replays_no_spool_its_sending_run_left_and_moves_it_aside() {
    let mut group = start_with(GroupSpec {
        watch: true,
        reconcile_interval: Some(std::time::Duration::from_secs(1)),
        ..spec(2)
    })
    .await;
    let file = "/etc/app/spooled.conf";
    // Node 1 edits while node 2 is away: the edit waits in node 1's spool.
    group.stop(1).await;
    write(&group.nodes[0], file, "edited while the peer was away\n");
    let spool = state_directory(&group, 0).join("outbox.json");
    eventually_in(&group, WAIT, "the edit spooled for the peer", || {
        spool.exists()
            && group.nodes[0]
                .peer_status()
                .is_some_and(|peers| peers.iter().all(|p| p.pending == 1))
    })
    .await;
    group.stop(0).await;
    assert!(spool.exists(), "the spool went with the daemon");

    // Node 1 comes back receive-only, then node 2.
    with_line_on_top(&mut group, 0, "role = \"receive-only\"").await;
    group.restart(1).await.unwrap();
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let aside = state_directory(&group, 0).join("outbox.json.receive-only");
    assert!(
        aside.exists() && !spool.exists(),
        "the spool was not moved aside"
    );
    // The spooled edit is a local edit not pushed, and the comparison keeps it as such.
    let asks_n0 = peer_as(n1, n0.addr);
    status_when(
        &asks_n0,
        "the spooled edit reported as drift and as a local edit not pushed",
        |status| {
            let drift = status
                .peers
                .iter()
                .all(|p| p.drift_paths == Some(1) && p.drift == [file]);
            drift && status.local_edits == [file]
        },
    )
    .await;
    holds_for_quiet_period(&group, "the spooled edit is not pushed", || {
        !exists(n1, file) && counters(n1).apply_requests == 0
    })
    .await;
    let status = asks_n0.status().await.unwrap();
    assert_eq!(status.local_edits, [file], "{status:#?}");
    assert_eq!(status.counters.pushes, 0, "{status:#?}");
}
