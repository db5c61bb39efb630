//! The watcher pushes complete files only: what the peers hold while node 0's file is
//! written slowly, saved through a temporary name, truncated and rewritten in place,
//! replaced by a package manager, or changed by a `git checkout` or a recursive delete
//! of hundreds of files; how many requests each of those costs; and what becomes of a
//! file held open for writing past `open_write_timeout`.
//!
//! Real daemons, real TLS, real files. While an edit is under way, a thread of the test
//! reads the peers' copies every few milliseconds and records every state they go
//! through: a peer may hold the old version or the whole new one, never anything in
//! between. Every wait polls for a condition with a deadline; the only sleeps are the
//! pauses of the simulated writers, which are what is being tested.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::*;
use gosyncd::group::{GroupNode, GroupSpec, LocalGroup};

/// Longest a change may take to reach a peer once it is complete.
const WAIT: Duration = Duration::from_secs(15);
/// How often the sampler reads the peers' copies.
const SAMPLE_EVERY: Duration = Duration::from_millis(3);
/// The slow writers' pause between two writes: ten settle windows at the default
/// `debounce` (20 ms).
const PAUSE: Duration = Duration::from_millis(200);

/// Two daemons that watch `/etc/app` and
/// push their edits, with `settings` added to their config files.
fn pair(settings: &str) -> GroupSpec {
    GroupSpec {
        watch: true,
        settings: settings.to_string(),
        ..spec(2)
    }
}

/// Builds the pair, lets `prepare` write the same trees on every node, then starts the
/// daemons: they start in agreement, with no request made yet.
async fn started_with(spec: GroupSpec, prepare: impl Fn(&GroupNode)) -> LocalGroup {
    let mut group = LocalGroup::build(&spec)
        .await
        .unwrap_or_else(|e| panic!("group {spec:?} is not built: {e:#}"));
    for node in &group.nodes {
        prepare(node);
    }
    group.start_all().await.unwrap();
    group
}

fn apply_requests(nodes: &[GroupNode]) -> Vec<u64> {
    nodes.iter().map(|n| counters(n).apply_requests).collect()
}

/// Checks, through the quiet period, that each of `peers` received exactly one apply
/// request more than `before`.
async fn one_more_apply_request_each(group: &LocalGroup, peers: &[GroupNode], before: &[u64]) {
    holds_for_quiet_period(group, "exactly one apply request per peer", || {
        apply_requests(peers)
            .iter()
            .zip(before)
            .all(|(now, before)| *now == before + 1)
    })
    .await;
}

/// `len` bytes that differ from those of another `seed` almost everywhere, so that a
/// mix of two versions is recognised as one.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + i / 251 + seed * 101) % 256) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Sampling what the peers hold.

/// Named versions of a file, for [`state_of`].
type Versions = Arc<Vec<(&'static str, Vec<u8>)>>;

/// What the file at `path` holds: `absent`, the name of the version it is, or a
/// description of what else it is.
fn state_of(path: &Path, versions: &[(&'static str, Vec<u8>)]) -> String {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return "absent".into(),
        Err(e) => return format!("unreadable ({e})"),
    };
    if let Some((name, _)) = versions.iter().find(|(_, v)| *v == bytes) {
        return name.to_string();
    }
    if bytes.is_empty() {
        return "empty".into();
    }
    // Something else: how much of it is a prefix of a known version.
    let best = versions
        .iter()
        .map(|(name, v)| {
            (
                v.iter().zip(&bytes).take_while(|(a, b)| a == b).count(),
                name,
            )
        })
        .max();
    match best {
        Some((same, name)) if same > 0 => format!(
            "{} bytes, the first {same} of them those of {name}",
            bytes.len()
        ),
        _ => format!(
            "{} bytes, none a known version: {:?}",
            bytes.len(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
        ),
    }
}

/// The states one sampled thing went through, each with when it was first seen.
struct History {
    label: String,
    states: Vec<(Duration, String)>,
    samples: usize,
}

/// Reads what the peers hold in a thread of its own, every [`SAMPLE_EVERY`], and
/// records each state they go through, until it is finished.
struct Sampler {
    started: Instant,
    stop: Arc<AtomicBool>,
    /// Taken by [`Sampler::finish`].
    thread: Option<JoinHandle<Vec<History>>>,
}

/// A test that fails before it finishes its sampler stops it all the same.
impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Sampler {
    /// Samples with `probe`, which returns one state per label.
    fn start(labels: Vec<String>, mut probe: impl FnMut() -> Vec<String> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut histories: Vec<History> = labels
                .into_iter()
                .map(|label| History {
                    label,
                    states: Vec::new(),
                    samples: 0,
                })
                .collect();
            loop {
                // One last sample after being asked to stop: what the peers hold then.
                let last = stopping.load(Ordering::SeqCst);
                let at = started.elapsed();
                let states = probe();
                assert_eq!(states.len(), histories.len(), "one state per label");
                for (history, state) in histories.iter_mut().zip(states) {
                    history.samples += 1;
                    if history.states.last().map(|(_, s)| s) != Some(&state) {
                        history.states.push((at, state));
                    }
                }
                if last {
                    return histories;
                }
                // Paces the sampling; nothing is waited for.
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Sampler {
            started,
            stop,
            thread: Some(thread),
        }
    }

    /// Samples the file at `logical` on each of `peers`, named after `versions`.
    fn file(peers: &[GroupNode], logical: &str, versions: Versions) -> Self {
        Sampler::files(peers, &[logical], versions)
    }

    /// Samples each of the files at `logicals` on each of `peers`.
    fn files(peers: &[GroupNode], logicals: &[&str], versions: Versions) -> Self {
        let mut labels = Vec::new();
        let mut paths: Vec<PathBuf> = Vec::new();
        for peer in peers {
            for logical in logicals {
                labels.push(format!("{logical} on {}", peer.addr));
                paths.push(peer.path(logical));
            }
        }
        Sampler::start(labels, move || {
            paths.iter().map(|p| state_of(p, &versions)).collect()
        })
    }

    /// Stops the sampling, after one last sample, and returns what it saw.
    fn finish(mut self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("finished once");
        Samples {
            histories: thread.join().expect("the sampler panicked"),
            started: self.started,
        }
    }
}

/// What a [`Sampler`] saw.
struct Samples {
    histories: Vec<History>,
    /// When the sampling started; each state's time is counted from it.
    started: Instant,
}

impl std::fmt::Display for Samples {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for history in &self.histories {
            let states: Vec<String> = history
                .states
                .iter()
                .map(|(at, state)| format!("{state} (from {} ms)", at.as_millis()))
                .collect();
            writeln!(
                f,
                "  {} ({} samples): {}",
                history.label,
                history.samples,
                states.join(" -> ")
            )?;
        }
        Ok(())
    }
}

impl Samples {
    /// Asserts that every sampled thing only ever was in one of the `allowed` states, and
    /// that the sampler ran often enough for that to mean something.
    fn assert_only(&self, allowed: &[&str], what: &str) {
        self.assert_each(|_| allowed, what);
    }

    /// Like [`Samples::assert_only`], with the states allowed for each sampled thing
    /// given by its label.
    fn assert_each<'a>(&self, allowed: impl Fn(&str) -> &'a [&'a str], what: &str) {
        for history in &self.histories {
            assert!(
                history.samples >= 20,
                "{what}: only {} samples of {}: the sampler hardly ran\n{self}",
                history.samples,
                history.label
            );
            let allowed = allowed(&history.label);
            for (at, state) in &history.states {
                assert!(
                    allowed.contains(&state.as_str()),
                    "{what}: {} held {state:?} {} ms into the sampling; only {allowed:?} \
                     may be seen. Every state seen:\n{self}",
                    history.label,
                    at.as_millis()
                );
            }
        }
    }

    /// When the `index`-th sampled thing was first seen in `state`.
    fn first_seen(&self, index: usize, state: &str) -> Option<Instant> {
        self.histories[index]
            .states
            .iter()
            .find(|(_, s)| s == state)
            .map(|(at, _)| self.started + *at)
    }
}

// ---------------------------------------------------------------------------------------
// Slow writers.

/// Writes `bytes` through the open `file` in `chunks` writes, each after a [`PAUSE`],
/// then closes it: a writer much slower than the settle window, which keeps the file
/// open all along. The first pause shows the file as opening left it (emptied, or just
/// created).
fn slow_writer(mut file: File, bytes: Vec<u8>, chunks: usize) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for chunk in bytes.chunks(bytes.len().div_ceil(chunks)) {
            std::thread::sleep(PAUSE);
            file.write_all(chunk).expect("the slow writer writes");
        }
        drop(file);
    })
}

/// Waits for a writer thread, failing the test if it panicked.
fn joined(writer: JoinHandle<()>) {
    writer.join().expect("the writer thread panicked");
}

// ---------------------------------------------------------------------------------------
// Files written while the peers watch.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_written_slowly_reaches_the_peers_whole_in_one_request() {
    const CHUNKS: usize = 8;
    const SIZE: usize = CHUNKS * 320 * 1024;
    let (file, fresh) = ("/etc/app/big.map", "/etc/app/fresh.map");
    let old = pattern(SIZE - 12_345, 1);
    let new = pattern(SIZE, 2);
    let group = started_with(pair(""), |node| write(node, file, &old)).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);

    // An existing file, truncated and rewritten by a writer that pauses ten settle
    // windows between its writes.
    let before = apply_requests(peers);
    let versions: Versions = Arc::new(vec![("old", old.clone()), ("new", new.clone())]);
    let sampler = Sampler::file(peers, file, versions);
    let writer = slow_writer(File::create(n0.path(file)).unwrap(), new.clone(), CHUNKS);
    eventually_in(
        &group,
        WAIT + PAUSE * CHUNKS as u32,
        "the whole new version on the peer",
        || writer.is_finished() && peers.iter().all(|n| holds(n, file, &new)),
    )
    .await;
    joined(writer);
    sampler.finish().assert_only(
        &["old", "new"],
        "a file rewritten slowly, sampled on the peer",
    );
    one_more_apply_request_each(&group, peers, &before).await;

    // A new file, written the same way.
    let before = apply_requests(peers);
    let versions: Versions = Arc::new(vec![("new", new.clone())]);
    let sampler = Sampler::file(peers, fresh, versions);
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(n0.path(fresh))
        .unwrap();
    let writer = slow_writer(created, new.clone(), CHUNKS);
    eventually_in(
        &group,
        WAIT + PAUSE * CHUNKS as u32,
        "the whole new file on the peer",
        || writer.is_finished() && peers.iter().all(|n| holds(n, fresh, &new)),
    )
    .await;
    joined(writer);
    sampler.finish().assert_only(
        &["absent", "new"],
        "a new file written slowly, sampled on the peer",
    );
    one_more_apply_request_each(&group, peers, &before).await;
    for peer in peers {
        assert_same_tree(n0, peer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_editor_save_through_a_temporary_name_is_one_request_and_the_temporary_stays_home() {
    // Not one of the excluded editor names: only the watcher can keep it from travelling.
    let (file, temp) = ("/etc/app/x.cfg", "/etc/app/.x.cfg.tmp4f2a");
    let old = b"version 1\n".to_vec();
    let new: Vec<u8> = (0..3)
        .flat_map(|i| format!("section {i}\n{}\n", "key = value\n".repeat(200)).into_bytes())
        .collect();
    let group = started_with(pair(""), |node| write(node, file, &old)).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let before = apply_requests(peers);

    let versions: Versions = Arc::new(vec![("old", old), ("new", new.clone())]);
    let sampler = Sampler::files(peers, &[file, temp], versions);
    // Write the temporary file, pausing between writes as a slow disk would, fsync it,
    // close it and rename it over the file at once, as editors and `install` do.
    let (local_temp, local_file) = (n0.path(temp), n0.path(file));
    let writer = {
        let new = new.clone();
        std::thread::spawn(move || {
            let mut out = File::create(&local_temp).expect("the temporary file is created");
            for (i, part) in new.chunks(new.len().div_ceil(3)).enumerate() {
                if i > 0 {
                    std::thread::sleep(PAUSE);
                }
                out.write_all(part).expect("the temporary file is written");
            }
            out.sync_all().expect("the temporary file is flushed");
            drop(out);
            std::fs::rename(&local_temp, &local_file).expect("renamed over the file");
        })
    };
    eventually_in(&group, WAIT, "the saved version on the peer", || {
        writer.is_finished() && peers.iter().all(|n| holds(n, file, &new))
    })
    .await;
    joined(writer);
    sampler.finish().assert_each(
        |label| {
            if label.starts_with(temp) {
                &["absent"]
            } else {
                &["old", "new"]
            }
        },
        "an editor's save, sampled on the peer",
    );
    one_more_apply_request_each(&group, peers, &before).await;
    for peer in peers {
        assert!(
            !exists(peer, temp),
            "the temporary name reached {}",
            peer.addr
        );
        assert_same_tree(n0, peer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_truncated_and_rewritten_in_place_never_reaches_a_peer_empty_or_half_written() {
    let file = "/etc/app/in-place.cfg";
    let old = b"the old settings, which the peers keep until the new ones are whole\n".to_vec();
    let new: Vec<u8> = (0..4)
        .flat_map(|i| format!("part {i}: {}\n", "y".repeat(5000)).into_bytes())
        .collect();
    let group = started_with(pair(""), |node| write(node, file, &old)).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let before = apply_requests(peers);

    let versions: Versions = Arc::new(vec![("old", old), ("new", new.clone())]);
    let sampler = Sampler::file(peers, file, versions);
    // O_TRUNC empties the file at once; the writes follow with pauses between them.
    let truncated = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(n0.path(file))
        .unwrap();
    let writer = slow_writer(truncated, new.clone(), 4);
    eventually_in(&group, WAIT, "the rewritten file on the peer", || {
        writer.is_finished() && peers.iter().all(|n| holds(n, file, &new))
    })
    .await;
    joined(writer);
    sampler
        .finish()
        .assert_only(&["old", "new"], "a file rewritten in place");
    one_more_apply_request_each(&group, peers, &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_managers_new_conffile_stays_home_until_renamed_into_place() {
    let (file, staged) = ("/etc/app/x.cfg", "/etc/app/x.cfg.dpkg-new");
    let old = b"# the administrator's version\nport = 80\n".to_vec();
    let new = b"# the package's new version\nport = 8080\nworkers = 4\n".to_vec();
    let group = started_with(pair(""), |node| write(node, file, &old)).await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let before = apply_requests(peers);

    let versions: Versions = Arc::new(vec![("old", old), ("new", new.clone())]);
    let sampler = Sampler::files(peers, &[file, staged], versions);
    // dpkg unpacks the new conffile beside the live one, and leaves it there while it
    // asks the administrator what to do: far longer than the settle window.
    write(n0, staged, &new);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        apply_requests(peers),
        before,
        "a request was made for the staged conffile alone\n{}",
        describe(&group)
    );
    std::fs::rename(n0.path(staged), n0.path(file)).unwrap();
    eventually_in(&group, WAIT, "the new conffile on the peer", || {
        peers.iter().all(|n| holds(n, file, &new))
    })
    .await;
    sampler.finish().assert_each(
        |label| {
            if label.starts_with(staged) {
                &["absent"]
            } else {
                &["old", "new"]
            }
        },
        "a conffile upgrade, sampled on the peer",
    );
    one_more_apply_request_each(&group, peers, &before).await;
    for peer in peers {
        assert_same_tree(n0, peer);
    }
}

// ---------------------------------------------------------------------------------------
// Hundreds of files at once.

/// Runs git on the repository `git_dir` with its work tree at `work_tree`, neither the
/// user's nor the system's git configuration applying.
fn git(git_dir: &Path, work_tree: &Path, args: &[&str]) {
    let output = Command::new("git")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .arg(format!("--git-dir={}", git_dir.display()))
        .arg(format!("--work-tree={}", work_tree.display()))
        .args(["-c", "user.name=gosyncd tests"])
        .args(["-c", "user.email=tests@gosyncd.invalid"])
        .args(["-c", "commit.gpgsign=false", "-c", "core.autocrlf=false"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} in {} failed: {}",
        work_tree.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every path below `root` with the content of its files (`None` for a directory or a
/// link), or `None` when the tree changed while it was read.
fn contents_below(root: &Path) -> Option<BTreeMap<PathBuf, Option<Vec<u8>>>> {
    let mut tree = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).min_depth(1) {
        let entry = entry.ok()?;
        let bytes = if entry.file_type().is_file() {
            Some(std::fs::read(entry.path()).ok()?)
        } else {
            None
        };
        let relative = entry.path().strip_prefix(root).ok()?.to_path_buf();
        tree.insert(relative, bytes);
    }
    Some(tree)
}

/// The number of regular files below `root`.
fn files_below(root: &Path) -> usize {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_git_checkout_of_hundreds_of_files_is_one_request_per_peer() {
    if Command::new("git").arg("--version").output().is_err() {
        eprintln!("skipped: git is not installed");
        return;
    }
    const FILES: usize = 360;
    let mut group = LocalGroup::build(&pair("")).await.unwrap();
    // The repository and a scratch work tree, outside every synchronised directory.
    let repo = group.path().join("repo.git");
    let scratch = group.path().join("scratch");
    let init = Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(&repo)
        .output()
        .expect("git runs");
    assert!(init.status.success(), "{init:?}");
    let path = |i: usize| format!("d{}/s{}/f{i}.conf", i % 6, i % 4);
    for i in 0..FILES {
        let local = scratch.join(path(i));
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        std::fs::write(local, format!("a {i}\n")).unwrap();
    }
    git(&repo, &scratch, &["checkout", "-q", "-b", "a"]);
    git(&repo, &scratch, &["add", "-A"]);
    git(&repo, &scratch, &["commit", "-q", "-m", "a"]);
    // Branch b: a whole directory tree gone (d5), some files changed, others deleted,
    // new ones in new subdirectories.
    git(&repo, &scratch, &["checkout", "-q", "-b", "b"]);
    std::fs::remove_dir_all(scratch.join("d5")).unwrap();
    for i in (0..FILES).filter(|i| i % 6 != 5) {
        let local = scratch.join(path(i));
        if i < 150 {
            std::fs::write(local, format!("b {i}\n")).unwrap();
        } else if i >= 290 {
            std::fs::remove_file(local).unwrap();
        }
    }
    for j in 0..100 {
        let local = scratch.join(format!("new{}/deep{}/g{j}.conf", j % 3, j % 2));
        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
        std::fs::write(local, format!("added {j}\n")).unwrap();
    }
    git(&repo, &scratch, &["add", "-A"]);
    git(&repo, &scratch, &["commit", "-q", "-m", "b"]);

    // Every node starts on branch a; node 0 last, so that the index describes its tree.
    for node in group.nodes.iter().rev() {
        git(
            &repo,
            &node.path("/etc/app"),
            &["checkout", "-q", "-f", "a"],
        );
    }
    assert_eq!(files_below(&group.nodes[0].path("/etc/app")), FILES);
    assert_same_tree(&group.nodes[0], &group.nodes[1]);
    group.start_all().await.unwrap();
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let before = apply_requests(peers);
    let tree_before = contents_below(&n0.path("/etc/app")).expect("node 0 is quiet");

    let work_tree = n0.path("/etc/app");
    let checkout = {
        let repo = repo.clone();
        tokio::task::spawn_blocking(move || {
            git(&repo, &work_tree, &["checkout", "-q", "-f", "b"]);
        })
    };
    checkout.await.expect("git checkout");
    let tree_after = contents_below(&n0.path("/etc/app")).expect("node 0 is quiet");
    let changed = tree_after
        .iter()
        .filter(|(p, item)| tree_before.get(*p) != Some(item))
        .count()
        + tree_before
            .keys()
            .filter(|p| !tree_after.contains_key(*p))
            .count();
    assert!(
        changed > 300,
        "the checkout changed only {changed} paths on node 0"
    );
    eventually_in(&group, WAIT, "branch b's tree on the peer", || {
        peers
            .iter()
            .all(|n| contents_below(&n.path("/etc/app")).as_ref() == Some(&tree_after))
    })
    .await;
    one_more_apply_request_each(&group, peers, &before).await;
    for peer in peers {
        assert_same_tree(n0, peer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursive_delete_of_hundreds_of_files_is_one_request_per_peer() {
    const FILES: usize = 240;
    let path = |i: usize| format!("/etc/app/gone/a{}/b{}/f{i}.conf", i % 4, i % 3);
    let group = started_with(pair(""), |node| {
        write(node, "/etc/app/kept.conf", "kept\n");
        for i in 0..FILES {
            write(node, &path(i), format!("file {i}\n"));
        }
    })
    .await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let before = apply_requests(peers);

    std::fs::remove_dir_all(n0.path("/etc/app/gone")).unwrap();
    eventually_in(&group, WAIT, "the directory gone from the peer", || {
        peers.iter().all(|n| !exists(n, "/etc/app/gone"))
    })
    .await;
    one_more_apply_request_each(&group, peers, &before).await;
    for peer in peers {
        assert!(holds(peer, "/etc/app/kept.conf", "kept\n"));
        assert_same_tree(n0, peer);
    }
}

// ---------------------------------------------------------------------------------------
// A file nobody closes.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_held_open_past_open_write_timeout_is_pushed_as_it_is_with_a_warning() {
    const BOUND: Duration = Duration::from_secs(2);
    const WARNING: &str = "open for writing for longer than open_write_timeout";
    let file = "/etc/app/app.log";
    // Node 0 is the real binary, so that its log can be read; node 1 runs in this process.
    let mut group = LocalGroup::build(&pair("open_write_timeout = \"2s\"\n"))
        .await
        .unwrap();
    assert_eq!(group.nodes[0].config.open_write_timeout, BOUND);
    group.restart(1).await.unwrap();
    group.release(0);
    let mut daemon =
        DaemonProcess::spawn(&group.nodes[0].config_path, group.path().join("node1.log"));
    daemon
        .wait_ready(&peer_as(&group.nodes[1], group.nodes[0].addr))
        .await;
    let (n0, peers) = (&group.nodes[0], &group.nodes[1..]);
    let before = apply_requests(peers);

    let partial = b"started\nworking\n".to_vec();
    let versions: Versions = Arc::new(vec![("partial", partial.clone())]);
    let sampler = Sampler::file(peers, file, versions);
    let opened = Instant::now();
    let mut log = File::create(n0.path(file)).unwrap();
    log.write_all(&partial).unwrap();
    eventually_in(
        &group,
        BOUND + WAIT,
        "the content written so far on the peer",
        || peers.iter().all(|n| holds(n, file, &partial)),
    )
    .await;
    let samples = sampler.finish();
    samples.assert_only(&["absent", "partial"], "a file held open");
    // Sampled from before the file was opened, and a state is seen at most a sampling
    // period after it appears: this is when the peer got the file, or a little later.
    let first = samples.first_seen(0, "partial").expect("seen on the peer");
    let after = first.saturating_duration_since(opened);
    assert!(
        after >= BOUND * 3 / 4,
        "the file still open was pushed {} ms after it was opened, before \
         open_write_timeout ({BOUND:?}):\n{samples}",
        after.as_millis()
    );
    daemon.wait_for_log(WARNING).await;
    let text = daemon.log();
    let warnings: Vec<&str> = text.lines().filter(|l| l.contains(WARNING)).collect();
    assert_eq!(warnings.len(), 1, "one warning:\n{text}");
    assert!(
        warnings[0].contains("path=/etc/app/app.log"),
        "the warning names the file: {}",
        warnings[0]
    );
    // One request for the file left open, and no more while it stays so.
    one_more_apply_request_each(&group, peers, &before).await;

    // Closed at last: its whole content follows.
    log.write_all(b"done\n").unwrap();
    drop(log);
    eventually_in(&group, WAIT, "the closed file on the peer", || {
        peers
            .iter()
            .all(|n| holds(n, file, b"started\nworking\ndone\n"))
    })
    .await;
}
