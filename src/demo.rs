//! `gosyncd demo`: a three-node group on 127.0.0.2-4 in a temporary directory, a
//! scripted edit-and-sync on node 1, then the group stays up for the user to play with.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::{print_peer, shutdown_signal};
use crate::group::{GroupSpec, LocalGroup, TlsStyle};
use crate::manifest::{self, HashCache};
use crate::sync::Options;

const DIRECTORY: &str = "/etc/demo-app";

/// Runs the demo; `wait` keeps the group up until Ctrl-C.
pub async fn run(wait: bool) -> anyhow::Result<ExitCode> {
    let spec = GroupSpec {
        nodes: 3,
        first_octet: 2,
        directories: vec![(
            DIRECTORY.into(),
            vec!["*.swp".into(), format!("{DIRECTORY}/local")],
        )],
        tls: TlsStyle::Authority,
        watch: true,
    };
    let group = LocalGroup::start(&spec).await?;
    let node = |i: usize| &group.nodes[i];
    let cmd =
        |i: usize, rest: &str| format!("gosyncd -config {} {rest}", node(i).config_path.display());

    section("A three-node group is running on this machine");
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

    // Node 1 holds the edited tree; node 2 has an old copy and a file that should go.
    let write = |i: usize, rel: &str, text: &str| -> anyhow::Result<()> {
        let path = node(i).path(&format!("{DIRECTORY}/{rel}"));
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write(0, "app.conf", "listen 8080\nworkers 4\n")?;
    write(0, "conf.d/site.conf", "server_name example.org\n")?;
    std::fs::create_dir_all(node(0).path(&format!("{DIRECTORY}/cache")))?;
    std::os::unix::fs::symlink(
        "conf.d/site.conf",
        node(0).path(&format!("{DIRECTORY}/current")),
    )?;
    write(0, "local/hostname", "node1\n")?;
    write(1, "app.conf", "listen 8080\nworkers 2\n")?;
    write(1, "stale.conf", "removed upstream\n")?;
    write(1, "local/hostname", "node2\n")?;
    section("Node 1 holds the edited tree");
    show_tree(&node(0).path(DIRECTORY));

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
    let reference = tree_of(&group, 0);
    let mut all_match = true;
    for i in 1..group.nodes.len() {
        let same = tree_of(&group, i) == reference;
        all_match &= same;
        println!(
            "  node{} {} node1 (local/ is excluded, so each node keeps its own)",
            i + 1,
            if same { "now matches" } else { "DIFFERS FROM" }
        );
    }
    let failed = dry.failed() || real.failed() || !all_match;

    section("An edit on node 1, synchronised by path");
    write(0, "app.conf", "listen 8080\nworkers 8\n")?;
    println!("$ {}", cmd(0, &format!("sync {DIRECTORY}/app.conf")));
    let edit = engine
        .run(
            &Options {
                scope: vec![format!("{DIRECTORY}/app.conf")],
                dry_run: false,
            },
            print_peer,
        )
        .await;
    let failed = failed || edit.failed();

    if wait {
        section("Try it yourself (Ctrl-C stops the group and deletes its files)");
        println!("  edit files under {}", node(0).path(DIRECTORY).display());
        println!("  then run: {}", cmd(0, "sync -dry"));
        println!("       and: {}", cmd(0, "sync"));
        shutdown_signal().await;
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
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
    let scan = manifest::scan(&group.nodes[i].config, &[], &HashCache::default());
    scan.entries
        .into_iter()
        .map(|(path, entry)| (path, entry.content, entry.mode))
        .collect()
}
