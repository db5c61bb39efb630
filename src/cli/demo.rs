//! `gosyncd demo`: a three-node group on 127.0.0.2-4 in a temporary directory: daemons
//! that start on drifted trees and push nothing, a dry run and a sync from node 1, a file
//! replicated by the watchers alone, then the group stays up for the user to play with,
//! each automatic push shown as the daemons count it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::commands::print_peer;
use super::daemon::shutdown_signal;
use crate::group::{GroupSpec, LocalGroup, TlsStyle};
use crate::manifest::{self, HashCache};
use crate::protocol::PeerStatus;
use crate::sync::Options;

const DIRECTORY: &str = "/etc/demo-app";
/// How long the demo waits for the watcher to replicate a saved file.
const PROPAGATION_DEADLINE: Duration = Duration::from_secs(5);
/// How often the waiting demo reads the daemons' push counters.
const PUSH_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Runs the demo; `wait` keeps the group up until Ctrl-C.
pub async fn run(wait: bool) -> anyhow::Result<ExitCode> {
    let spec = GroupSpec {
        nodes: 3,
        first_octet: 2,
        subnet: 0,
        directories: vec![(
            DIRECTORY.into(),
            vec!["*.swp".into(), format!("{DIRECTORY}/local")],
        )],
        tls: TlsStyle::Authority,
        watch: true,
        debounce: None,
        reconcile_interval: None,
        settings: String::new(),
    };
    let mut group = LocalGroup::build(&spec).await?;
    let trees: Vec<PathBuf> = group.nodes.iter().map(|n| n.path(DIRECTORY)).collect();
    let configs: Vec<PathBuf> = group.nodes.iter().map(|n| n.config_path.clone()).collect();
    // The commands to try must name this very binary: after `cargo run`, `gosyncd` is on
    // no PATH.
    let binary = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "gosyncd".into());
    let cmd = |i: usize, rest: &str| format!("{binary} -config {} {rest}", configs[i].display());

    section("A three-node group on this machine");
    for (i, n) in group.nodes.iter().enumerate() {
        println!(
            "  node{}  {}  tree: {}",
            i + 1,
            n.addr,
            n.path(DIRECTORY).display()
        );
    }
    println!(
        "  certificates: a group CA and one certificate per node, in {}",
        group.path().display()
    );

    seed(&trees)?;
    section("Node 1 holds the edited tree");
    show_tree(&trees[0]);
    // The daemons start on trees that differ: they warn about the drift and push
    // nothing until told to (a node back from a week off must not overwrite the group).
    group.start_all().await?;

    let engine = group.engine(0).await?;
    section(&format!("$ {}", cmd(0, "sync -dry")));
    println!("synchronization dry run");
    let dry = engine
        .run(
            &Options {
                dry_run: true,
                ..Options::default()
            },
            print_peer,
        )
        .await;

    section(&format!("$ {}", cmd(0, "sync")));
    let real = engine.run(&Options::default(), print_peer).await;

    section("Result");
    let all_match = all_match_node1(&group);
    let failed = dry.failed() || real.failed() || !all_match;

    section("Automatic propagation: a file saved on node 1, no command typed");
    let replicated = saved_and_replicated(&trees).await?;
    let failed = failed || !replicated;

    if wait {
        section("Try it yourself (Ctrl-C stops the group and deletes its files)");
        println!(
            "  edit files under {}: the daemons push them",
            trees[0].display()
        );
        println!("  audit with: {}", cmd(0, "sync -dry"));
        println!("  force with: {}", cmd(0, "sync"));
        println!(
            "  or one subtree: {}",
            cmd(0, &format!("sync {DIRECTORY}/conf.d"))
        );
        println!("  automatic pushes, as the daemons count them:");
        show_pushes_until_stopped(&group).await;
    }
    // The daemons stop before their files go: deleted under running daemons, their
    // state directories would fail their last writes, with errors on the way out.
    for i in 0..group.nodes.len() {
        group.stop(i).await;
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes `text` at `rel` in `tree`, making its directories.
fn write_file(tree: &Path, rel: &str, text: &str) -> anyhow::Result<()> {
    let path = tree.join(rel);
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// The trees the demo starts from: node 1 holds the edited tree; node 2 has an old copy
/// and a file that should go; node 3 is empty.
fn seed(trees: &[PathBuf]) -> anyhow::Result<()> {
    write_file(&trees[0], "app.conf", "listen 8080\nworkers 4\n")?;
    write_file(&trees[0], "conf.d/site.conf", "server_name example.org\n")?;
    std::fs::create_dir_all(trees[0].join("cache"))?;
    std::os::unix::fs::symlink("conf.d/site.conf", trees[0].join("current"))?;
    write_file(&trees[0], "local/hostname", "node1\n")?;
    write_file(&trees[1], "app.conf", "listen 8080\nworkers 2\n")?;
    write_file(&trees[1], "stale.conf", "removed upstream\n")?;
    write_file(&trees[1], "local/hostname", "node2\n")
}

/// Prints, for each other node, whether its tree now matches node 1's; whether all do.
fn all_match_node1(group: &LocalGroup) -> bool {
    let reference = tree_of(group, 0);
    let mut all_match = true;
    for i in 1..group.nodes.len() {
        let same = tree_of(group, i) == reference;
        all_match &= same;
        println!(
            "  node{} {} node1 (local/ is excluded, so each node keeps its own)",
            i + 1,
            if same { "now matches" } else { "DIFFERS FROM" }
        );
    }
    all_match
}

/// Saves a file on node 1 and waits for the watcher to bring it to every other node;
/// prints how long it took, and whether it arrived within [`PROPAGATION_DEADLINE`].
async fn saved_and_replicated(trees: &[PathBuf]) -> anyhow::Result<bool> {
    let saved = Instant::now();
    let text = "written on node 1, pushed by its watcher\n";
    write_file(&trees[0], "conf.d/auto.conf", text)?;
    let arrived = |tree: &PathBuf| {
        std::fs::read_to_string(tree.join("conf.d/auto.conf")).is_ok_and(|t| t == text)
    };
    while saved.elapsed() < PROPAGATION_DEADLINE {
        if trees[1..].iter().all(arrived) {
            println!(
                "  conf.d/auto.conf reached node2 and node3 {} ms after it was saved",
                saved.elapsed().as_millis()
            );
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("  conf.d/auto.conf did NOT reach every node within {PROPAGATION_DEADLINE:?}");
    Ok(false)
}

/// Prints a line for each automatic push the daemons make, naming the node it came
/// from and the one it went to, until Ctrl-C.
async fn show_pushes_until_stopped(group: &LocalGroup) {
    let names: BTreeMap<String, String> = group
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.addr.to_string(), format!("node{}", i + 1)))
        .collect();
    let mut seen = push_counters(group);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut poll = tokio::time::interval(PUSH_POLL_INTERVAL);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = poll.tick() => {}
        }
        let now = push_counters(group);
        for line in new_pushes(&seen, &now, &names) {
            println!("  {} {line}", chrono::Local::now().format("%H:%M:%S"));
        }
        seen = now;
    }
}

/// What each node's daemon knows of each of its peers, keyed by node (`node1`, ...) and
/// the peer as written in `remotes`.
fn push_counters(group: &LocalGroup) -> BTreeMap<(String, String), PeerStatus> {
    let mut counters = BTreeMap::new();
    for (i, node) in group.nodes.iter().enumerate() {
        for peer in node.peer_status().unwrap_or_default() {
            counters.insert((format!("node{}", i + 1), peer.peer.clone()), peer);
        }
    }
    counters
}

/// One line per node and peer whose push counters moved between `before` and `now`:
/// pushes delivered (with their bytes and any conflicts) and pushes that failed (with
/// the last error). `names` turns a peer's address into its node's name.
fn new_pushes(
    before: &BTreeMap<(String, String), PeerStatus>,
    now: &BTreeMap<(String, String), PeerStatus>,
    names: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for ((from, peer), status) in now {
        let old = before
            .get(&(from.clone(), peer.clone()))
            .cloned()
            .unwrap_or_default();
        let to = names.get(peer).unwrap_or(peer);
        let failures = status.failures.saturating_sub(old.failures);
        let delivered = status
            .pushes
            .saturating_sub(old.pushes)
            .saturating_sub(failures);
        if delivered > 0 {
            let conflicts = status.conflicts.saturating_sub(old.conflicts);
            lines.push(format!(
                "{from} -> {to}: {delivered} push{} delivered, {} bytes{}",
                if delivered == 1 { "" } else { "es" },
                status.bytes_sent.saturating_sub(old.bytes_sent),
                if conflicts > 0 {
                    format!(", {conflicts} refused as conflicts")
                } else {
                    String::new()
                }
            ));
        }
        if failures > 0 {
            lines.push(format!(
                "{from} -> {to}: push failed: {}",
                status.last_error.as_deref().unwrap_or("no reason given")
            ));
        }
    }
    lines
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn show_tree(root: &Path) {
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let Ok(entry) = entry else { continue };
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let kind = if entry.path_is_symlink() {
            " (symlink)"
        } else if entry.file_type().is_dir() {
            "/"
        } else {
            ""
        };
        println!("  {}{kind}", rel.display());
    }
}

/// A node's synchronised tree, without mtimes and the excluded `local/`.
fn tree_of(group: &LocalGroup, i: usize) -> Vec<(String, crate::protocol::Content, u32)> {
    let scan = manifest::scan(&group.nodes[i].config, &[], &HashCache::forgetful());
    scan.entries
        .into_iter()
        .map(|(path, entry)| (path.into(), entry.content, entry.mode))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(pushes: u64, failures: u64, bytes_sent: u64) -> PeerStatus {
        PeerStatus {
            peer: "127.0.0.3:40000".into(),
            pushes,
            failures,
            bytes_sent,
            ..PeerStatus::default()
        }
    }

    fn counters(of: &[(&str, PeerStatus)]) -> BTreeMap<(String, String), PeerStatus> {
        of.iter()
            .map(|(from, s)| ((from.to_string(), s.peer.clone()), s.clone()))
            .collect()
    }

    #[test]
    fn each_new_push_is_a_line_naming_the_node_it_came_from() {
        let names = BTreeMap::from([("127.0.0.3:40000".to_string(), "node2".to_string())]);
        let before = counters(&[("node1", status(1, 0, 500)), ("node3", status(2, 0, 90))]);
        let mut failed = status(3, 1, 90);
        failed.last_error = Some("connection refused".into());
        let now = counters(&[("node1", status(2, 0, 800)), ("node3", failed)]);
        assert_eq!(
            new_pushes(&before, &now, &names),
            vec![
                "node1 -> node2: 1 push delivered, 300 bytes".to_string(),
                "node3 -> node2: push failed: connection refused".to_string(),
            ]
        );
        assert!(
            new_pushes(&now, &now, &names).is_empty(),
            "counters that did not move print nothing"
        );
    }
}
