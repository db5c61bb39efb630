//! Comparing by levels: a run over the whole tree whose digests differ lists only the
//! levels (a directory's own entry and its children's) that differ, and answers exactly
//! what a run listing the whole directory answers, line for line, mass-delete guard
//! included. Also the listing one level deep a peer gives.

use proptest::prelude::RngExt;
use proptest::test_runner::{RngAlgorithm, TestRng};

use crate::common::*;
use gosyncd::group::{GroupNode, GroupSpec};
use gosyncd::paths::Region;
use gosyncd::sync::{Options, Report};

/// What a run tells about peer `node`: its lines, and its error (the mass-delete
/// guard's refusal among them).
fn told(report: &Report, node: &GroupNode) -> (Vec<String>, Option<String>) {
    let mut lines = lines(report, node);
    lines.sort();
    (lines, peer_report(report, node).error.clone())
}

/// The files and directories below `/etc/app` on `node` (logical paths, the top
/// excluded), in order.
fn tree(node: &GroupNode) -> (Vec<String>, Vec<String>) {
    fn walk(node: &GroupNode, logical: &str, files: &mut Vec<String>, dirs: &mut Vec<String>) {
        let mut names: Vec<_> = std::fs::read_dir(node.path(logical))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for name in names {
            let child = format!("{logical}/{name}");
            let meta = std::fs::symlink_metadata(node.path(&child)).unwrap();
            if name.ends_with(".swp") {
                // Excluded: never picked for a change.
            } else if meta.is_dir() {
                dirs.push(child.clone());
                walk(node, &child, files, dirs);
            } else {
                files.push(child);
            }
        }
    }
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    walk(node, "/etc/app", &mut files, &mut dirs);
    (files, dirs)
}

/// Removes every excluded name below `dir`.
fn remove_swaps(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_name().to_string_lossy().ends_with(".swp") {
            std::fs::remove_file(&path).unwrap();
        } else if entry.file_type().unwrap().is_dir() {
            remove_swaps(&path);
        }
    }
}

fn below(rng: &mut TestRng, n: usize) -> usize {
    rng.random_range(0..n)
}

fn pick<'a>(rng: &mut TestRng, items: &'a [String]) -> Option<&'a String> {
    (!items.is_empty()).then(|| &items[below(rng, items.len())])
}

/// One random change of `node`'s tree, of any kind a sync compares.
fn change(rng: &mut TestRng, node: &GroupNode, round: usize) {
    // `round` names what this change creates: one change per number.
    let (files, dirs) = tree(node);
    let mut places = dirs.clone();
    places.push("/etc/app".into());
    let place = pick(rng, &places).unwrap().clone();
    match below(rng, 9) {
        0 | 1 => match pick(rng, &files) {
            Some(file)
                if !std::fs::symlink_metadata(node.path(file))
                    .unwrap()
                    .is_symlink() =>
            {
                write(node, file, format!("round {round}\n"))
            }
            _ => write(node, &format!("{place}/new{round}.conf"), "new\n"),
        },
        2 => write(
            node,
            &format!("{place}/f{round}.conf"),
            format!("{round}\n"),
        ),
        3 => {
            if let Some(file) = pick(rng, &files) {
                if !std::fs::symlink_metadata(node.path(file))
                    .unwrap()
                    .is_symlink()
                {
                    chmod(node, file, 0o600);
                }
            }
        }
        4 => {
            if let Some(dir) = pick(rng, &dirs) {
                chmod(node, dir, 0o750);
            }
        }
        5 => {
            let kind = if below(rng, 2) == 0 { &files } else { &dirs };
            if let Some(path) = pick(rng, kind) {
                remove(node, path);
            }
        }
        6 => write(node, &format!("{place}/d{round}/e{round}/x.conf"), "deep\n"),
        7 => match pick(rng, &files) {
            // A file becomes a directory, or a directory a file.
            Some(file) if below(rng, 2) == 0 => {
                remove(node, file);
                write(node, &format!("{file}/inside.conf"), "was a file\n");
            }
            _ => {
                if let Some(dir) = pick(rng, &dirs) {
                    remove(node, dir);
                    write(node, dir, "was a directory\n");
                }
            }
        },
        _ => {
            let link = format!("{place}/link{}", below(rng, 3));
            if exists(node, &link) {
                remove(node, &link);
            }
            symlink(node, format!("target{round}"), &link);
        }
    }
    // Excluded names change too, and must not count anywhere.
    if node.path(&place).is_dir() {
        write(node, &format!("{place}/edit{round}.swp"), "swap\n");
    }
}

async fn sync_forced(group: &gosyncd::group::LocalGroup) -> Report {
    let options = Options {
        force: true,
        ..Options::default()
    };
    engine(group, 0).await.run(&options, |_| {}).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_comparing_levels_answers_what_a_run_listing_the_whole_directory_answers() {
    let group = start_with(GroupSpec {
        directories: vec![("/etc/app".into(), vec!["*.swp".into()])],
        ..spec(3)
    })
    .await;
    // Node 2 changes only by what node 0 sends it: it differs from node 0 where node 1
    // does, or in fewer places, so that the peers of a run share listings or not.
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    let told = |report: &Report| (told(report, n1), told(report, n2));
    for top in ["a", "b", "c"] {
        for sub in ["", "/conf.d", "/conf.d/deep", "/maps"] {
            for i in 0..4 {
                write(
                    n0,
                    &format!("/etc/app/{top}{sub}/{i}.conf"),
                    format!("{top}{i}\n"),
                );
            }
        }
    }
    write(n0, "/etc/app/top.cfg", "top\n");
    assert_clean(&sync(&group, 0).await);

    let seed = std::env::var("GOSYNCD_LEVELS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("seed {seed} (GOSYNCD_LEVELS_SEED reruns it)");
    let mut rng = TestRng::from_seed(RngAlgorithm::XorShift, &[seed.to_le_bytes(); 2].concat());
    let mut differing_runs = 0;
    let mut changes = 0;
    for round in 0..30 {
        for _ in 0..1 + below(&mut rng, 3) {
            let node = if below(&mut rng, 2) == 0 { n0 } else { n1 };
            changes += 1;
            change(&mut rng, node, changes);
        }
        if round % 10 == 9 {
            // Most of one directory gone from the sender: the guard must refuse, with
            // the same counts, whichever way the peer was listed.
            let (files, _) = tree(n0);
            for file in files.iter().filter(|f| f.starts_with("/etc/app/b/")) {
                remove(n0, file);
            }
        }
        let by_levels = told(&dry_run(&group, 0).await);
        let options = Options {
            dry_run: true,
            list_whole: true,
            ..Options::default()
        };
        let whole = told(&engine(&group, 0).await.run(&options, |_| {}).await);
        assert_eq!(by_levels, whole, "seed {seed}, round {round}");
        // Naming the configured directory compares its levels too.
        let named = told(&run(&engine(&group, 0).await, &["/etc/app"], true).await);
        assert_eq!(named, whole, "seed {seed}, round {round}, named");
        // A command beside node 0's daemon compares the daemon's levels with the
        // peer's, and lists only those that differ, on both sides.
        let beside = gosyncd::sync::engine_for_cli(n0.config.clone())
            .await
            .expect("engine beside the daemon");
        let beside = told(&run(&beside, &[], true).await);
        assert_eq!(
            beside, whole,
            "seed {seed}, round {round}, beside the daemon"
        );
        // Node 0's daemon compares with its peers from its own digests and levels, and
        // reads its tree where they differ.
        let dry = Options {
            dry_run: true,
            ..Options::default()
        };
        let in_daemon = group.daemon_engine(0).await.expect("node 0 runs");
        let in_daemon = told(&in_daemon.run(&dry, |_| {}).await);
        assert_eq!(
            in_daemon, whole,
            "seed {seed}, round {round}, in the daemon"
        );
        if !by_levels.0 .0.is_empty() {
            differing_runs += 1;
        }
        if below(&mut rng, 2) == 0 {
            // Excluded names never travel, and one on the peer keeps its directory
            // from being deleted (compared above): out of the trees synchronised.
            for node in [n0, n1, n2] {
                remove_swaps(&node.path("/etc/app"));
            }
            assert_clean(&sync_forced(&group).await);
            assert_same_tree(n0, n1);
            assert_same_tree(n0, n2);
            let clean = (Vec::new(), None);
            assert_eq!(told(&dry_run(&group, 0).await), (clean.clone(), clean));
        }
    }
    assert!(
        differing_runs >= 20,
        "only {differing_runs} rounds differed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_lists_a_directory_one_level_deep_and_refuses_levels_of_what_it_does_not_sync() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n1, "/etc/app/top.cfg", "top\n");
    write(n1, "/etc/app/conf.d/a.cfg", "a\n");
    write(n1, "/etc/app/conf.d/sub/b.cfg", "b\n");
    write(n1, "/etc/app/other/c.cfg", "c\n");
    let peer = peer_as(n0, n1.addr);
    let shallow = vec!["/etc/app/conf.d".to_string()];
    let listed = peer
        .listing(Region {
            scope: &[],
            shallow: &shallow,
        })
        .await
        .unwrap();
    let mut paths: Vec<&str> = listed.entries.iter().map(|w| w.path.as_str()).collect();
    // A listing is sent as it is walked: in no particular order.
    paths.sort();
    assert_eq!(
        paths,
        [
            "/etc/app",
            "/etc/app/conf.d",
            "/etc/app/conf.d/a.cfg",
            "/etc/app/conf.d/sub"
        ]
    );
    let levels = peer.levels(&["/etc/app".to_string()]).await.unwrap();
    let mut dirs: Vec<&str> = levels.digests.iter().map(|d| d.path.as_str()).collect();
    dirs.sort();
    assert_eq!(
        dirs,
        [
            "/etc/app",
            "/etc/app/conf.d",
            "/etc/app/conf.d/sub",
            "/etc/app/other"
        ]
    );
    assert!(levels.entries.is_empty());
    // Levels of a path that is not a configured directory, or not normalised: refused.
    for bad in ["/etc/app/conf.d", "/etc", "/etc/app/../app"] {
        let err = peer.levels(&[bad.to_string()]).await.unwrap_err();
        assert!(err.is_refusal(), "{bad}: {err}");
        assert!(err.to_string().contains("levels"), "{bad}: {err}");
    }
    let err = peer
        .listing(Region {
            scope: &[],
            shallow: &["/etc/app/./x".to_string()],
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("shallow"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_more_paths_than_one_request_may_carry_is_asked_for_in_parts() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let held = ["/etc/app/a.cfg", "/etc/app/conf.d/b.cfg", "/etc/app/z.cfg"];
    for path in held {
        write(n1, path, "held\n");
    }
    // A watcher's burst after a large `rm -rf`: more paths than the 1 MiB a manifest
    // request may carry, most of them gone.
    let mut scope: Vec<String> = (0..40_000)
        .map(|i| format!("/etc/app/gone/{i:05}/file.cfg"))
        .collect();
    scope.insert(20_000, held[1].to_string());
    scope.insert(0, held[0].to_string());
    scope.push(held[2].to_string());
    let bytes: usize = scope.iter().map(|p| p.len() + 3).sum();
    assert!(
        bytes > gosyncd::protocol::MAX_MANIFEST_REQUEST_BYTES,
        "{bytes}"
    );
    let listed = peer_as(n0, n1.addr).manifest(&scope).await.unwrap();
    let paths: Vec<&str> = listed.entries.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/etc/app", held[0], "/etc/app/conf.d", held[1], held[2]]
    );
    assert!(listed.directories.iter().all(|d| d.present));
}
