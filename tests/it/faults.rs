//! Faults injected while files are on their way, and what each must leave: a receiving
//! daemon killed with SIGKILL at many points of a large batch, a receiver whose writes
//! fail with EFBIG, a connection cut mid-transfer, a peer that accepts connections and
//! never answers, and two pushes planned against the same state sent at once. In every
//! case a file holds one whole version or another, never a mix; no temporary file
//! survives; what failed is reported by name; and nothing is lost for good.
//!
//! The kill test runs 20 rounds; `GOSYNCD_KILL_ROUNDS=N cargo test --test faults` runs N
//! (never fewer than 20), for a longer hunt for a kill point that breaks something.
//!
//! Every wait polls a condition with a deadline; the kill points are events (bytes
//! through a forwarder, files appearing in the receiver's tree), not delays.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use gosyncd::config::Config;
use gosyncd::group::{GroupNode, LocalGroup};
use gosyncd::manifest::Manifest;
use gosyncd::plan::plan;
use gosyncd::protocol::{encode_batch, BatchHeader, Outcome, CONNECT_TIMEOUT};
use gosyncd::sync::{Options, Report};
use gosyncd::tree::is_temp_name;
use notify::event::{ModifyKind, RenameMode};
use notify::{Event, EventKind, Watcher};
use tokio::task::JoinHandle;

/// Sends `signal` to the process `pid`.
fn send_signal(pid: u32, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, signal)
        .unwrap_or_else(|e| panic!("cannot signal process {pid:?}: {e}"));
}

/// `len` bytes of `label` repeated: two labels give two contents of the same size that
/// differ all along, so a file made of parts of both is caught by comparing bytes.
fn pattern(label: &str, len: usize) -> Vec<u8> {
    label.bytes().cycle().take(len).collect()
}

/// Whether a file's name is one of gosyncd's temporary names.
fn is_temp_path(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_temp_name)
}

/// A node's root directory (where its `/etc/app` lives).
fn root_of(node: &GroupNode) -> std::path::PathBuf {
    node.path("/etc/app")
}

// ---------------------------------------------------------------------------------------
// SIGKILL in the middle of a batch.

/// Rounds of the kill test unless `GOSYNCD_KILL_ROUNDS` asks for more.
const KILL_ROUNDS: usize = 20;
/// Files pushed in each round; every one changes.
const KILL_FILES: usize = 50;
/// Longest a receiver may take to die once its push has ended (the kill may come from
/// an event seen after the push's answer).
const KILL_WAIT: Duration = Duration::from_secs(10);

fn kill_rounds() -> usize {
    match std::env::var("GOSYNCD_KILL_ROUNDS") {
        Ok(text) => text
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("GOSYNCD_KILL_ROUNDS={text:?} is not a number"))
            .max(KILL_ROUNDS),
        Err(_) => KILL_ROUNDS,
    }
}

/// Logical path of file `j` of the kill test: two directories, a few large files.
fn kill_path(j: usize) -> String {
    let dir = if j % 10 == 0 { "large" } else { "conf.d" };
    format!("/etc/app/{dir}/f{j:02}.conf")
}

/// Version `round` of file `j`: one file in ten is 300 KiB (the batch then takes a
/// while to receive and to write), the others 2-3 KiB. Sizes do not change between
/// versions, contents do, all along.
fn kill_content(round: usize, j: usize) -> Vec<u8> {
    let len = if j % 10 == 0 {
        300 * 1024 + j
    } else {
        2 * 1024 + 17 * j
    };
    pattern(&format!("round {round}, file {j}\n"), len)
}

/// Where a round's SIGKILL lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KillPoint {
    /// Once this many bytes of the connection have reached the forwarder, before they
    /// are passed on: the receiver is reading the body.
    Received(usize),
    /// When the receiver creates its n-th temporary file: contents are being written.
    TempFile(usize),
    /// When the receiver renames its n-th file into place: the batch is being
    /// committed, file by file.
    Renamed(usize),
}

/// Each phase in turn, at a point that moves from round to round.
fn kill_point(round: usize) -> KillPoint {
    let n = round / 3;
    match round % 3 {
        0 => KillPoint::Received(16 * 1024 + (n * 211 * 1024) % (1400 * 1024)),
        1 => KillPoint::TempFile(1 + (n * 17) % KILL_FILES),
        _ => KillPoint::Renamed(1 + (n * 13) % KILL_FILES),
    }
}

/// What a tripwire is set to do.
#[derive(Default)]
struct Armed {
    /// The process to kill; `None` once done, or when not armed.
    pid: Option<u32>,
    point: Option<KillPoint>,
    seen: usize,
}

/// Kills a process when the files below a directory reach a [`KillPoint`], as an
/// inotify watcher of the test's own sees them: the kill lands while the receiver is
/// writing, a few system calls after the event.
struct Tripwire {
    armed: Arc<Mutex<Armed>>,
    _watcher: notify::RecommendedWatcher,
}

impl Tripwire {
    fn watch(dir: &std::path::Path) -> Tripwire {
        let armed = Arc::new(Mutex::new(Armed::default()));
        let state = armed.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
            let Ok(event) = event else { return };
            let mut armed = state.lock().unwrap();
            let Some(pid) = armed.pid else { return };
            let (counts, n) = match (armed.point, &event.kind) {
                (Some(KillPoint::TempFile(n)), EventKind::Create(_)) => {
                    (event.paths.iter().any(|p| is_temp_path(p)), n)
                }
                (
                    Some(KillPoint::Renamed(n)),
                    EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                ) => (event.paths.iter().any(|p| !is_temp_path(p)), n),
                _ => return,
            };
            if counts {
                armed.seen += 1;
                if armed.seen == n {
                    send_signal(pid, rustix::process::Signal::KILL);
                    armed.pid = None;
                }
            }
        })
        .unwrap();
        watcher
            .watch(dir, notify::RecursiveMode::Recursive)
            .unwrap_or_else(|e| panic!("cannot watch {}: {e}", dir.display()));
        Tripwire {
            armed,
            _watcher: watcher,
        }
    }

    fn arm(&self, pid: u32, point: KillPoint) {
        *self.armed.lock().unwrap() = Armed {
            pid: Some(pid),
            point: Some(point),
            seen: 0,
        };
    }

    fn disarm(&self) {
        *self.armed.lock().unwrap() = Armed::default();
    }
}

/// How the receiver's files stood after one kill.
#[derive(Debug, Default)]
struct Tally {
    /// Rounds that left temporary files (removed when the daemon started again).
    temp_files: usize,
    /// Rounds that left some files old and some new.
    mixed: usize,
    all_old: usize,
    all_new: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_receiver_mid_batch_leaves_each_file_old_or_new_and_the_next_sync_heals() {
    // Node 1 is the real binary. Node 0 (no daemon: only its tree and config) pushes to
    // it through a forwarder listening on node 1's own address, so the certificate name
    // check passes; the kill comes from the forwarder (while the body is received) or
    // from a watcher on node 1's tree (while it is written and committed).
    let mut group = LocalGroup::build(&spec(2)).await.unwrap();
    group.release(0);
    group.release(1);
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let direct = config_variant(&group, 0, "node1-direct.hcl", |text| {
        with_remotes(&text, &[n1.addr.to_string()])
    });
    let probe = peer(&tls_of(n1), n1.addr);
    let log = |round: usize| group.path().join(format!("node2-{round}.log"));
    let mut daemon = DaemonProcess::spawn(&n1.config_path, log(0));
    daemon.wait_ready(&probe).await;

    // Round 0: the first version everywhere.
    for j in 0..KILL_FILES {
        write(n0, &kill_path(j), kill_content(0, j));
    }
    assert_clean(&run(&engine_for(&direct, None).await, &[], false).await);
    assert_same_tree(n0, n1);

    let tripwire = Tripwire::watch(&root_of(n1));
    let mut tally = Tally::default();
    let rounds = kill_rounds();
    for round in 1..=rounds {
        let point = kill_point(round - 1);
        for j in 0..KILL_FILES {
            write(n0, &kill_path(j), kill_content(round, j));
        }
        let pid = daemon.child.id();
        let forwarder = match point {
            KillPoint::Received(bytes) => {
                let hook = Box::new(move || send_signal(pid, rustix::process::Signal::KILL));
                forwarder_with_hook(n1.addr.ip(), n1.addr, bytes, Some(hook)).await
            }
            KillPoint::TempFile(_) | KillPoint::Renamed(_) => {
                tripwire.arm(pid, point);
                forwarder(n1.addr.ip(), n1.addr).await
            }
        };
        let via = config_variant(&group, 0, &format!("node1-round{round}.hcl"), |text| {
            with_remotes(&text, &[forwarder.addr.to_string()])
        });
        let report = run(&engine_for(&via, None).await, &[], false).await;
        let context = format!("round {round}, kill {point:?}");
        let status = eventually_showing(
            &format!("{context}: the receiver killed"),
            KILL_WAIT,
            || daemon.child.try_wait().unwrap(),
            || {
                let log = std::fs::read_to_string(&daemon.log_path).unwrap_or_default();
                format!("the kill point was never reached; the push: {report:#?}\n{log}")
            },
        )
        .await;
        tripwire.disarm();
        drop(forwarder);
        assert_eq!(
            status.signal(),
            Some(9),
            "{context}: the receiver exited with {status}, not killed; the push: \
             {report:#?}\n{}",
            daemon.log()
        );

        // Each file is whole: the version before the round or the round's own.
        let (mut old, mut new) = (0, 0);
        for j in 0..KILL_FILES {
            let path = kill_path(j);
            let bytes = read(n1, &path);
            if bytes == kill_content(round - 1, j) {
                old += 1;
            } else if bytes == kill_content(round, j) {
                new += 1;
            } else {
                panic!(
                    "{context}: {path} holds neither its old nor its new content \
                     ({} bytes, starting {:?})",
                    bytes.len(),
                    String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
                );
            }
        }
        // Nothing else appeared but temporary files.
        let mut expected: Vec<String> = (0..KILL_FILES).map(kill_path).collect();
        expected.extend(["/etc/app/conf.d".into(), "/etc/app/large".into()]);
        expected.sort();
        let left = temp_files_below(&root_of(n1));
        let mut found: Vec<String> = manifest_of(n1)
            .into_keys()
            .map(String::from)
            .filter(|p| p != "/etc/app")
            .collect();
        found.sort();
        assert_eq!(
            found, expected,
            "{context}: unexpected paths on the receiver"
        );
        match (old, new) {
            (_, 0) => tally.all_old += 1,
            (0, _) => tally.all_new += 1,
            _ => tally.mixed += 1,
        }
        if !left.is_empty() {
            tally.temp_files += 1;
        }

        // Started again on the same config and address: no temporary file survives.
        daemon = DaemonProcess::spawn(&n1.config_path, log(round));
        daemon.wait_ready(&probe).await;
        assert_eq!(
            temp_files_below(&root_of(n1)),
            Vec::<std::path::PathBuf>::new(),
            "{context}: temporary files survived the restart (before it: {left:?})\n{}",
            daemon.log()
        );
        if !left.is_empty() {
            daemon
                .wait_for_log("removed temporary files left by an interrupted sync")
                .await;
        }

        // The next sync completes and the trees are identical.
        let report = run(&engine_for(&direct, None).await, &[], false).await;
        assert!(
            !report.failed(),
            "{context}: the sync after the restart failed: {report:#?}\n{}",
            daemon.log()
        );
        assert_eq!(
            lines(&report, n1).len(),
            old,
            "{context}: the sync after the restart did not update exactly the files the \
             killed push left old: {report:#?}"
        );
        assert_same_tree(n0, n1);
    }
    eprintln!("{rounds} kills: {tally:?}");
    // The kill points did land inside the writing: otherwise this test would show
    // nothing about temporary files or a batch committed in part.
    assert!(
        tally.temp_files > 0 && tally.mixed > 0,
        "no kill left a temporary file, or none landed while the batch was committed: \
         {tally:?}"
    );
}

// ---------------------------------------------------------------------------------------
// A write that fails.

/// The file-size limit the receiver runs under, in bytes.
const FSIZE_LIMIT: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_write_fails_keeps_the_old_file_applies_the_rest_and_says_why() {
    if !has_prlimit() {
        return;
    }
    let mut group = LocalGroup::build(&spec(2)).await.unwrap();
    group.release(0);
    group.release(1);
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let old = pattern("the old large file\n", 2 * FSIZE_LIMIT);
    let new = pattern(
        "the new large file, larger than the limit\n",
        3 * FSIZE_LIMIT,
    );
    write(n0, "/etc/app/large.bin", &new);
    write(n1, "/etc/app/large.bin", &old);
    let small = ["/etc/app/a.conf", "/etc/app/sub/b.conf", "/etc/app/z.conf"];
    for path in small {
        write(n0, path, format!("{path}, small and new\n"));
    }

    // Node 1 under RLIMIT_FSIZE: a write past the limit fails (EFBIG, with SIGXFSZ,
    // which the daemon must survive).
    let mut daemon = DaemonProcess::spawn_with(
        "prlimit",
        &[format!("--fsize={FSIZE_LIMIT}"), "--".into()],
        &n1.config_path,
        group.path().join("node2.log"),
    );
    let probe = peer(&tls_of(n1), n1.addr);
    daemon.wait_ready(&probe).await;

    let report = sync(&group, 0).await;
    let log = daemon.log();
    if let Some(status) = daemon.child.try_wait().unwrap() {
        panic!("the receiver died ({status}) instead of failing the write:\n{log}");
    }
    let pushed = peer_report(&report, n1);
    assert_eq!(
        pushed.error, None,
        "the batch itself failed: {report:#?}\n{log}"
    );
    let failure = format!("[!] {} /etc/app/large.bin skipped: ", n1.addr);
    let lines = lines(&report, n1);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&failure) && l.contains("File too large")),
        "the failed path is not reported with the receiver's reason: {lines:#?}\n{log}"
    );
    assert!(report.failed(), "a failed file must fail the sync");
    for path in small {
        assert_eq!(
            read(n1, path),
            format!("{path}, small and new\n").as_bytes(),
            "{path} was not applied: {lines:#?}"
        );
    }
    assert!(
        read(n1, "/etc/app/large.bin") == old,
        "the old large file was not left intact: {lines:#?}"
    );
    assert_eq!(
        temp_files_below(&root_of(n1)),
        Vec::<std::path::PathBuf>::new(),
        "a temporary file was left behind"
    );

    // Still serving: it takes the next push.
    write(n0, "/etc/app/after.conf", "after the failure\n");
    let report = run(&engine(&group, 0).await, &["/etc/app/after.conf"], false).await;
    assert_clean(&report);
    assert_eq!(read(n1, "/etc/app/after.conf"), b"after the failure\n");
}

// ---------------------------------------------------------------------------------------
// A connection cut mid-transfer.

/// Bytes of the transfer that pass before the connection is cut.
const CUT_AFTER_BYTES: usize = 1024 * 1024;
/// Longest the watcher may take to deliver the file after the cut: the first retry
/// comes after 1 s.
const RETRY_WAIT: Duration = Duration::from_secs(15);

/// Restarts node 0 of a two-node group with node 1 reached at `address` (a forwarder)
/// instead, its config written as `name`.
async fn reach_node_1_through(group: &mut LocalGroup, address: SocketAddr, name: &str) {
    let variant = config_variant(group, 0, name, |text| {
        with_remotes(
            &text,
            &[group.nodes[0].addr.to_string(), address.to_string()],
        )
    });
    group.nodes[0].config = Arc::new(Config::from_file(&variant).unwrap());
    group.restart(0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_mid_transfer_writes_nothing_partial_and_the_watcher_retries() {
    // Node 0 reaches node 1 only through a forwarder (on node 1's own address, so the
    // certificate name check passes) that cuts the first connection carrying more
    // than 1 MiB from node 0.
    let mut group = built_watching(2).await;
    group.restart(1).await.unwrap();
    let target = group.nodes[1].addr;
    let (forwarder, cut) = forwarder_cutting(target.ip(), target, CUT_AFTER_BYTES).await;
    reach_node_1_through(&mut group, forwarder.addr, "node1-cut.hcl").await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);

    // 4 MiB, appearing at once (renamed in) so the watcher never sees half of it.
    let big = pattern("a large file cut on its way\n", 4 * CUT_AFTER_BYTES);
    let staged = group.path().join("staged.bin");
    std::fs::write(&staged, &big).unwrap();
    std::fs::rename(&staged, n0.path("/etc/app/big.bin")).unwrap();

    // Until it arrives whole, the file on node 1 is absent or complete, never partial.
    eventually_showing(
        "node 1 holds the file",
        RETRY_WAIT,
        || match std::fs::read(n1.path("/etc/app/big.bin")) {
            Ok(bytes) => {
                assert!(
                    bytes == big,
                    "node 1 holds a partial file: {} of {} bytes",
                    bytes.len(),
                    big.len()
                );
                true
            }
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
                false
            }
        },
        || {
            format!(
                "cut: {}; node 0: {:?}",
                cut.load(Ordering::SeqCst),
                n0.stats()
            )
        },
    )
    .await;
    assert!(
        cut.load(Ordering::SeqCst),
        "the file arrived without its connection being cut: the test proved nothing"
    );
    assert_eq!(
        temp_files_below(&root_of(n1)),
        Vec::<std::path::PathBuf>::new(),
        "a temporary file was left behind on node 1"
    );
    // The retry made one successful apply: the cut one never reached the writer.
    assert_eq!(n1.stats().unwrap().apply_requests, 1, "{:?}", n1.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_applied_whose_answer_is_lost_then_a_deletion_here_leaves_the_peer_without_it() {
    // Node 0 reaches node 1 through a forwarder that drops node 1's answer to the push of
    // a large file once node 1 holds it: applied there, unknown here. The file is then
    // deleted on node 0 before the retry.
    let mut group = built_watching(2).await;
    group.restart(1).await.unwrap();
    let target = group.nodes[1].addr;
    let on_1 = group.nodes[1].path("/etc/app/big.bin");
    let big = pattern("a large file whose answer is lost\n", 2 * CUT_AFTER_BYTES);
    let expected = big.clone();
    let applied = Arc::new(move || std::fs::read(&on_1).is_ok_and(|bytes| bytes == expected));
    let (forwarder, lost) =
        forwarder_losing_answer(target.ip(), target, CUT_AFTER_BYTES, applied).await;
    reach_node_1_through(&mut group, forwarder.addr, "node1-lost.hcl").await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);

    let staged = group.path().join("staged.bin");
    std::fs::write(&staged, &big).unwrap();
    std::fs::rename(&staged, n0.path("/etc/app/big.bin")).unwrap();
    eventually_showing(
        "node 1 applied the push and its answer was lost",
        RETRY_WAIT,
        || lost.load(Ordering::SeqCst),
        || format!("node 0: {:?}; node 1: {:?}", n0.stats(), n1.stats()),
    )
    .await;
    assert!(n1.path("/etc/app/big.bin").exists());
    std::fs::remove_file(n0.path("/etc/app/big.bin")).unwrap();

    eventually_showing(
        "node 1 no longer holds the file deleted on node 0",
        RETRY_WAIT,
        || !n1.path("/etc/app/big.bin").exists(),
        || format!("node 0: {:?}; node 1: {:?}", n0.peer_status(), n1.stats()),
    )
    .await;
    // And nothing stays held or waiting: the group converged.
    eventually_showing(
        "node 0 has nothing waiting or held for node 1",
        RETRY_WAIT,
        || {
            n0.peer_status()
                .unwrap()
                .iter()
                .all(|p| p.pending == 0 && p.held.is_empty())
        },
        || format!("node 0's peers: {:?}", n0.peer_status()),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// A peer that accepts and never answers.

/// Longest a sync may take when one peer accepts connections and never answers: the
/// connect timeout (which covers the TLS handshake) and some slack.
const SILENT_PEER_BOUND: Duration = Duration::from_secs(9);

/// A listener on `bind` that accepts every connection and holds it open, reading
/// nothing and answering nothing; the flag says whether anything connected.
async fn silent_peer(bind: std::net::IpAddr) -> (SocketAddr, Arc<AtomicBool>, JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind((bind, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicBool::new(false));
    let flag = accepted.clone();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            accepted.store(true, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (addr, flag, holder)
}

/// A sync from node 0 of `group` with `silent` added to its remotes, failing the test
/// when it takes longer than [`SILENT_PEER_BOUND`]; with the time it took and when each
/// peer finished.
async fn sync_with_a_silent_peer(
    group: &LocalGroup,
    silent: SocketAddr,
) -> (Report, Duration, BTreeMap<String, Duration>) {
    let n0 = &group.nodes[0];
    let variant = config_variant(group, 0, "node1-silent.hcl", |text| {
        // First: a sync that took its peers one after another would wait for it.
        let mut remotes = vec![silent.to_string()];
        remotes.extend(group.nodes.iter().map(|n| n.addr.to_string()));
        with_remotes(&text, &remotes)
    });
    let engine = engine_for(&variant, n0.node_id()).await;
    let started = Instant::now();
    let finished = Mutex::new(BTreeMap::new());
    let report = tokio::time::timeout(
        SILENT_PEER_BOUND,
        engine.run(&Options::default(), |p| {
            finished
                .lock()
                .unwrap()
                .insert(p.peer.clone(), started.elapsed());
        }),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the sync did not finish within {SILENT_PEER_BOUND:?} (connect timeout \
             {CONNECT_TIMEOUT:?}): the silent peer holds it"
        )
    });
    (report, started.elapsed(), finished.into_inner().unwrap())
}

/// The error reported for `peer`, failing the test when there is none.
fn error_of(report: &Report, peer: SocketAddr) -> String {
    let label = peer.to_string();
    let found = report
        .peers
        .iter()
        .find(|p| p.peer == label)
        .unwrap_or_else(|| panic!("no report for {label}: {report:#?}"));
    assert!(!found.refused, "a silence is not a refusal: {found:#?}");
    found
        .error
        .clone()
        .unwrap_or_else(|| panic!("{label} is not reported failed: {report:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_accepts_and_never_answers_fails_alone_within_the_connect_timeout() {
    let group = start(3).await;
    let (n0, n1, n2) = (&group.nodes[0], &group.nodes[1], &group.nodes[2]);
    let (silent, accepted, holder) = silent_peer(address()).await;
    write(n0, "/etc/app/a.conf", "for the peers that answer\n");

    let (report, elapsed, finished) = sync_with_a_silent_peer(&group, silent).await;
    holder.abort();
    assert!(
        accepted.load(Ordering::SeqCst),
        "nothing connected to {silent}"
    );
    let error = error_of(&report, silent);
    eprintln!("silent peer: the sync took {elapsed:?}, peers finished at {finished:?}: {error}");
    assert!(error.contains("timed out"), "{error}");
    for node in [n1, n2] {
        assert_eq!(peer_report(&report, node).error, None, "{report:#?}");
        assert_eq!(lines(&report, node).len(), 1, "{report:#?}");
        assert_eq!(
            read(node, "/etc/app/a.conf"),
            b"for the peers that answer\n"
        );
        // Not held back by the silent peer.
        let at = finished[&node.addr.to_string()];
        assert!(
            at < CONNECT_TIMEOUT,
            "{} finished only after {at:?}, held back by the silent peer",
            node.addr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_is_reported_with_the_timeout_that_struck() {
    let group = start(1).await;
    let (silent, _, holder) = silent_peer(group.nodes[0].addr.ip()).await;
    let (report, elapsed, _) = sync_with_a_silent_peer(&group, silent).await;
    holder.abort();
    let error = error_of(&report, silent);
    let connect_limit = format!("{}s", CONNECT_TIMEOUT.as_secs());
    assert!(
        error.contains(&connect_limit) && !error.contains("120s"),
        "a peer that failed the connect timeout of {CONNECT_TIMEOUT:?} (after {elapsed:?}) is \
         reported as: {error}"
    );
}

// ---------------------------------------------------------------------------------------
// Two pushes at once.

/// Files in each of the two concurrent batches: most replace a file the receiver holds,
/// the last ones add a new one.
const RACE_FILES: usize = 120;
const RACE_EXISTING: usize = 100;

fn race_path(j: usize) -> String {
    format!("/etc/app/race/f{j:03}.conf")
}

fn race_content(side: &str, j: usize) -> Vec<u8> {
    pattern(&format!("{side}, file {j}\n"), 4096 + j)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pushes_planned_against_the_same_state_apply_one_and_refuse_the_other_as_conflicts() {
    let group = start(2).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    for j in 0..RACE_EXISTING {
        write(n1, &race_path(j), race_content("base", j));
    }
    // One look at the receiver; two senders plan against it.
    let (first, second) = (peer_as(n0, n1.addr), peer_as(n0, n1.addr));
    let remote = first.manifest(&[]).await.unwrap();
    let theirs: Manifest = remote
        .entries
        .iter()
        .map(|w| (w.path.as_str().into(), w.entry.clone()))
        .collect();
    let batch = |side: &str| {
        let mut ours = theirs.clone();
        let mut contents = BTreeMap::new();
        for j in 0..RACE_FILES {
            let bytes = race_content(side, j);
            ours.insert(race_path(j).into(), file_entry(&bytes, 0o644));
            contents.insert(race_path(j), bytes);
        }
        let ops = plan(&ours, &theirs, remote.owners);
        assert_eq!(ops.len(), RACE_FILES, "{ops:#?}");
        let bodies: Vec<&[u8]> = ops
            .iter()
            .map(|op| &contents[op.path.as_str()][..])
            .collect();
        let paths: Vec<String> = ops.iter().map(|op| op.path.to_string()).collect();
        (encode_batch(&BatchHeader::new(ops), &bodies), paths)
    };
    let ((body_a, paths), (body_b, paths_b)) = (batch("A"), batch("B"));
    assert_eq!(paths, paths_b);

    let (a, b) = tokio::join!(first.apply(body_a), second.apply(body_b));
    let (a, b) = (a.expect("push A"), b.expect("push B"));
    let index: BTreeMap<String, usize> = (0..RACE_FILES).map(|j| (race_path(j), j)).collect();
    let mut applied = BTreeMap::from([("A", 0), ("B", 0)]);
    for (i, path) in paths.iter().enumerate() {
        let j = index[path];
        let outcomes = (&a.results[i].outcome, &b.results[i].outcome);
        let winner = match outcomes {
            (Outcome::Applied, Outcome::Conflict(reason)) => ("A", reason),
            (Outcome::Conflict(reason), Outcome::Applied) => ("B", reason),
            _ => panic!("{path}: not applied by one push and refused by the other: {outcomes:?}"),
        };
        assert!(
            winner.1.contains("changed on the peer"),
            "{path}: the refusal does not say why: {}",
            winner.1
        );
        *applied.get_mut(winner.0).unwrap() += 1;
        assert!(
            read(n1, path) == race_content(winner.0, j),
            "{path} does not hold the version of push {}, which applied it: {:?}",
            winner.0,
            String::from_utf8_lossy(&read(n1, path)[..20])
        );
    }
    // Batches are written one at a time: the first applied whole, the second refused
    // whole.
    assert!(
        applied.values().any(|n| *n == RACE_FILES),
        "the two pushes were interleaved: {applied:?}"
    );
    let counters = n1.stats().unwrap();
    assert_eq!(
        counters.conflicts_refused, RACE_FILES as u64,
        "{counters:?}"
    );
    assert_eq!(counters.applied, RACE_FILES as u64, "{counters:?}");
    assert!(temp_files_below(&root_of(n1)).is_empty());
}
