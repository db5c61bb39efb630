//! `gosyncd conflicts` and `gosyncd resolve` with the real binary against real watching
//! daemons: two nodes edit one file at the same time, the third lists the conflict with
//! every node's state and a diff, and resolves it with `--take` of either side; after
//! that every node holds the chosen version and no daemon holds the conflict.

use crate::common::*;
use gosyncd::group::LocalGroup;

/// Two nodes write `file` at once (after a common base): a conflict the third node's
/// `conflicts` lists. Returns its JSON records.
async fn make_conflict(
    group: &LocalGroup,
    file: &str,
    v0: &str,
    v1: &str,
) -> Vec<serde_json::Value> {
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    write(n0, file, "base\n");
    eventually_in(group, WAIT, "the base version everywhere", || {
        holds(n1, file, "base\n") && holds(n2, file, "base\n")
    })
    .await;
    write(n0, file, v0);
    write(n1, file, v1);
    let config = n2.config_path.clone();
    let run = eventually_async("the conflict to be listed", WAIT, || async {
        // Until the third node holds one of the edits (the other one refused there), a
        // listing may find it still at the base version: three versions, not two.
        if !(holds(n2, file, v0) || holds(n2, file, v1)) {
            return None;
        }
        let run = gosyncd(config_args(
            &config,
            &["conflicts", "--format", "json", file],
        ))
        .await;
        (run.code == Some(1)).then_some(run)
    })
    .await;
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_conflict_is_listed_and_resolved_from_the_third_node_with_either_side() {
    let mut group = watching(3).await;
    let labels: Vec<String> = group.nodes.iter().map(|n| n.addr.to_string()).collect();
    let third = group.nodes[2].config_path.clone();
    for (round, take) in [(0usize, 0usize), (1, 1)] {
        let file = format!("/etc/app/shared-{round}.conf");
        let (v0, v1) = (
            format!("edited on node 0, round {round}\n"),
            format!("edited on node 1, round {round}\n"),
        );
        let records = make_conflict(&group, &file, &v0, &v1).await;
        let conflict = records
            .iter()
            .find(|r| r["type"] == "conflict" && r["path"] == file.as_str())
            .unwrap_or_else(|| panic!("no conflict record for {file}: {records:#?}"));
        let nodes = conflict["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3, "every node's state: {conflict:#}");
        let names: Vec<&str> = nodes.iter().map(|n| n["node"].as_str().unwrap()).collect();
        assert_eq!(names[0], labels[2], "this node first: {conflict:#}");
        for label in &labels {
            assert!(
                names.contains(&label.as_str()),
                "{label} missing: {conflict:#}"
            );
        }
        for node in nodes {
            assert_eq!(node["present"], true, "{conflict:#}");
            assert_eq!(node["kind"], "file", "{conflict:#}");
            assert!(
                node["sha256"].as_str().is_some_and(|h| h.len() == 64),
                "{conflict:#}"
            );
            assert!(node["mtime"].as_str().is_some(), "{conflict:#}");
        }
        let refused = conflict["refused"].as_array().unwrap();
        assert!(!refused.is_empty(), "{conflict:#}");
        // The daemon that could not deliver holds its own edit.
        for r in refused {
            let by = r["node"].as_str().unwrap();
            let row = nodes.iter().find(|n| n["node"] == by).unwrap();
            assert_eq!(row["edited_here"], true, "{conflict:#}");
        }
        let hashes: std::collections::BTreeSet<&str> = nodes
            .iter()
            .map(|n| n["sha256"].as_str().unwrap())
            .collect();
        assert_eq!(hashes.len(), 2, "two versions in the group: {conflict:#}");

        // The text listing and a diff between the two editors.
        let run = gosyncd(config_args(
            &third,
            &["conflicts", &file, "--diff", &labels[0], &labels[1]],
        ))
        .await;
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert!(
            run.stdout.contains(&format!("{file}: conflict")),
            "{}",
            run.stdout
        );
        assert!(run.stdout.contains("edited here"), "{}", run.stdout);
        assert!(
            run.stdout.contains(&format!("-{}", v0.trim_end()))
                && run.stdout.contains(&format!("+{}", v1.trim_end())),
            "the diff from node 0's version to node 1's: {}",
            run.stdout
        );

        // The conflict survives a restart of the daemons that hold it.
        if round == 0 {
            for i in 0..2 {
                group.restart(i).await.unwrap();
            }
            let run = gosyncd(config_args(&third, &["conflicts", &file])).await;
            assert_eq!(run.code, Some(1), "forgotten by a restart: {run:#?}");
            assert!(run.stdout.contains("edited here"), "{}", run.stdout);
        }

        // Resolved from the third node, taking one editor's version by its address.
        let host = group.nodes[take].addr.ip().to_string();
        let run = gosyncd(config_args(&third, &["resolve", &file, "--take", &host])).await;
        assert_eq!(run.code, Some(0), "{run:#?}");
        assert!(
            run.stdout.contains("conflict cleared on every node"),
            "{}",
            run.stdout
        );
        let chosen = if take == 0 { &v0 } else { &v1 };
        for node in &group.nodes {
            assert!(
                holds(node, &file, chosen.as_bytes()),
                "{} does not hold the chosen version: {:?}",
                node.addr,
                String::from_utf8_lossy(&read(node, &file))
            );
        }
        let run = gosyncd(config_args(&third, &["conflicts", &file])).await;
        assert_eq!(run.code, Some(0), "{run:#?}");
        assert!(run.stdout.contains("no conflict held"), "{}", run.stdout);
        // And it stays so: no daemon pushes an older version back.
        holds_for_quiet_period(&group, "every node keeps the chosen version", || {
            group
                .nodes
                .iter()
                .all(|n| holds(n, &file, chosen.as_bytes()))
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_refuses_an_unknown_node_and_a_path_outside_the_directories_writing_nothing() {
    let group = watching(2).await;
    let config = group.nodes[0].config_path.clone();
    write(&group.nodes[0], "/etc/app/a.conf", "mine\n");
    eventually_in(&group, WAIT, "a.conf on node 1", || {
        holds(&group.nodes[1], "/etc/app/a.conf", "mine\n")
    })
    .await;
    let run = gosyncd(config_args(
        &config,
        &["resolve", "/etc/app/a.conf", "--take", "192.0.2.9"],
    ))
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(
        run.stderr
            .contains("192.0.2.9 is none of the group's nodes")
            && run.stderr.contains(&group.nodes[1].addr.to_string()),
        "{}",
        run.stderr
    );
    let run = gosyncd(config_args(
        &config,
        &["resolve", "/etc/other/x.conf", "--take", "local"],
    ))
    .await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("/etc/other/x.conf"), "{}", run.stderr);
    let run = gosyncd(config_args(&config, &["resolve", "/etc/app/a.conf"])).await;
    assert_eq!(run.code, Some(2), "--take is required: {run:#?}");
    assert!(run.stderr.contains("--take"), "{}", run.stderr);
    for node in &group.nodes {
        assert!(holds(node, "/etc/app/a.conf", "mine\n"));
        assert!(!exists(node, "/etc/other/x.conf"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_takes_the_group_version_back_where_this_node_drifted() {
    // Not watching: the edits made here stay here until the revert.
    let group = start(3).await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    for node in &group.nodes {
        write(node, "/etc/app/kept.conf", "the group's\n");
        write(node, "/etc/app/gone-here.conf", "the group's too\n");
        mkdir(node, "/etc/app/sub");
        write(node, "/etc/app/sub/deep.conf", "deep\n");
    }
    // Node 0 drifts: an edit, a delete, a file of its own, a subtree removed.
    write(n0, "/etc/app/kept.conf", "edited by hand\n");
    remove(n0, "/etc/app/gone-here.conf");
    write(n0, "/etc/app/stray.conf", "only here\n");
    remove(n0, "/etc/app/sub/deep.conf");
    remove(n0, "/etc/app/sub");
    let config = n0.config_path.clone();
    let dry = gosyncd(config_args(&config, &["revert", "--dry-run"])).await;
    assert_eq!(dry.code, Some(0), "{dry:#?}");
    for line in [
        "[M] /etc/app/kept.conf would be taken back from",
        "[+] /etc/app/gone-here.conf would be restored from",
        "[-] /etc/app/stray.conf would be deleted",
        "[+] /etc/app/sub would be restored from",
        "[+] /etc/app/sub/deep.conf would be restored from",
    ] {
        assert!(
            dry.stdout.contains(line),
            "{line:?} missing: {}",
            dry.stdout
        );
    }
    assert!(
        holds(n0, "/etc/app/kept.conf", "edited by hand\n"),
        "a dry run wrote"
    );
    assert!(exists(n0, "/etc/app/stray.conf"), "a dry run deleted");

    let run = gosyncd(config_args(&config, &["revert"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(holds(n0, "/etc/app/kept.conf", "the group's\n"));
    assert!(holds(n0, "/etc/app/gone-here.conf", "the group's too\n"));
    assert!(holds(n0, "/etc/app/sub/deep.conf", "deep\n"));
    assert!(!exists(n0, "/etc/app/stray.conf"));
    // Nothing pushed: the peers are as they were.
    for node in [n1, n2] {
        assert!(holds(node, "/etc/app/kept.conf", "the group's\n"));
        assert!(!exists(node, "/etc/app/stray.conf"));
    }
    let again = gosyncd(config_args(&config, &["revert"])).await;
    assert!(
        again.stdout.contains("nothing to take back"),
        "{}",
        again.stdout
    );

    // Two peers that disagree: a tie, won by the first of them in `remotes` (node 1);
    // scoped to one path, the rest is left alone.
    write(n1, "/etc/app/kept.conf", "node 1 alone\n");
    write(n0, "/etc/app/kept.conf", "node 0 again\n");
    write(n0, "/etc/app/gone-here.conf", "left alone\n");
    let run = gosyncd(config_args(&config, &["revert", "/etc/app/kept.conf"])).await;
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        holds(n0, "/etc/app/kept.conf", "node 1 alone\n"),
        "{run:#?}"
    );
    assert!(holds(n0, "/etc/app/gone-here.conf", "left alone\n"));
    let run = gosyncd(config_args(&config, &["revert", "/etc/elsewhere"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    assert!(run.stderr.contains("/etc/elsewhere"), "{}", run.stderr);
}
