//! Convergence under random faults: while one node (the editor) is edited at random
//! (new files, rewrites in place and editor-style, deletes, renames, mkdir), each of 20
//! rounds injects one fault drawn at random: the editor's daemon or a receiving one
//! killed with SIGKILL and started again, a receiver stopped and started, a receiver that
//! cannot write (RLIMIT_FSIZE lowered, then raised), a receiver's `validate` that fails
//! while a marker file exists (then one more save, the fix: a rejected change is held
//! until its directory is edited again), and a recursive delete of a tree of 300 files. Once the
//! fault's cause is gone, every node's tree must become identical to the editor's by
//! itself, with no `gosyncd sync` and no engine run: within 20 s of each round, and at
//! the end. It prints the seed, the faults by kind, the edits made, the edits lost (the
//! goal is 0) and how long each kind of fault took to heal (p50 and max). The first fault
//! that does not heal ends the run: the failure names the seed, the round and the fault,
//! what differs on which node, what the editor did to those paths, what the editor's
//! daemon holds for each peer and the relevant lines of the daemons' logs, and keeps the
//! nodes' files, logs and the journal of edits for inspection.
//!
//! `GOSYNCD_FAULTS_SEED=N` replays a run's choices (the timing of the daemons is not
//! replayed); `GOSYNCD_FAULTS_ROUNDS=N` runs N rounds (never fewer than 20), and
//! `GOSYNCD_FAULTS_ONLY=kill-editor,stop-peer` draws only those kinds (to hunt one failure;
//! the others are kill-receiver, cannot-write, validate-fails and recursive-delete).
//!
//! The four nodes are two groups of two joined under one CA (so that each pair keeps its
//! own files): node 0 (the editor, the real binary so that it can be SIGKILLed), node 1
//! (in-process, stopped and started), node 2 (in-process, stopped and started, with the
//! `validate` command) and node 3 (the real binary: SIGKILL and RLIMIT_FSIZE). Every wait polls a condition with a deadline or waits for an event
//! (a daemon's counter, a line in its log); the only pauses are part of a scenario (the
//! time an edit has before a kill lands, the time a peer stays down).

/// The least time between an edit and a SIGKILL of the editor's daemon: the time its
/// file-system events take to reach it (notify's 50 ms window), with a margin.
const NOTICED_MS: usize = 100;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use gosyncd::config::Config;
use gosyncd::group::{GroupNode, GroupSpec, LocalGroup};

/// Rounds unless `GOSYNCD_FAULTS_ROUNDS` asks for more.
const ROUNDS: usize = 20;
/// How long the group has to become identical to the editor's tree once a fault's cause
/// is gone (and at the end).
const HEAL: Duration = Duration::from_secs(20);
/// Longest a step that is not the healing under test may take.
const WAIT: Duration = Duration::from_secs(10);
/// How often a condition is polled.
const POLL: Duration = Duration::from_millis(25);
/// How long a stopped or killed receiver stays down while edits are made.
const HOLD: Duration = Duration::from_millis(300);
/// RLIMIT_FSIZE of the receiver that cannot write, while it cannot.
const FSIZE_LIMIT: usize = 256 * 1024;
/// The recursive delete: this many files in this many directories.
const BULK_FILES: usize = 300;
const BULK_DIRS: usize = 12;

const APP: &str = "/etc/app";
/// The tree of the recursive delete (random edits leave it alone).
const BULK: &str = "bulk";
/// The file the receiver under RLIMIT_FSIZE cannot write.
const LARGE: &str = "large.bin";

/// Node indexes.
const EDITOR: usize = 0;
const VALIDATING: usize = 2;
const WRITER: usize = 3;
/// The in-process receivers, which can be stopped and started.
const STOPPABLE: [usize; 2] = [1, 2];

// ---------------------------------------------------------------------------------------
// Choices: a seeded xorshift.

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// From `lo` to `hi`, both included.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

fn seed() -> u64 {
    match std::env::var("GOSYNCD_FAULTS_SEED") {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("GOSYNCD_FAULTS_SEED={text:?} is not a number"))
        }
        Err(_) => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            nanos ^ (u64::from(std::process::id()) << 32)
        }
    }
}

fn rounds() -> usize {
    match std::env::var("GOSYNCD_FAULTS_ROUNDS") {
        Ok(text) => text
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("GOSYNCD_FAULTS_ROUNDS={text:?} is not a number"))
            .max(ROUNDS),
        Err(_) => ROUNDS,
    }
}

/// A pause that is part of a scenario (how long an edit has before a kill lands, how
/// long a peer stays down), never a wait for something to happen.
async fn pause(rng: &mut Rng, lo_ms: usize, hi_ms: usize) {
    tokio::time::sleep(Duration::from_millis(rng.range(lo_ms, hi_ms) as u64)).await;
}

// ---------------------------------------------------------------------------------------
// The faults.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// The editor's daemon is SIGKILLed at a random moment after edits, then started.
    KillEditor,
    /// The real-binary receiver is SIGKILLed while edits flow, held down, then started.
    KillReceiver,
    /// An in-process receiver is stopped while edits are made, then started.
    StopPeer,
    /// The real-binary receiver runs under RLIMIT_FSIZE while a larger file is saved;
    /// once its write has failed, the limit is raised.
    CannotWrite,
    /// A receiver's `validate` fails (a marker file exists) while edits are made; once it
    /// has rejected a batch, the marker is removed.
    ValidateFails,
    /// A tree of 300 files, once on every node, is removed with `remove_dir_all`.
    RecursiveDelete,
}

const FAULTS: [Fault; 6] = [
    Fault::KillEditor,
    Fault::KillReceiver,
    Fault::StopPeer,
    Fault::CannotWrite,
    Fault::ValidateFails,
    Fault::RecursiveDelete,
];

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillEditor => "kill -9 of the editor",
            Fault::KillReceiver => "kill -9 of a receiver",
            Fault::StopPeer => "a peer stopped and started",
            Fault::CannotWrite => "a receiver that cannot write",
            Fault::ValidateFails => "a validate that fails then passes",
            Fault::RecursiveDelete => "a recursive delete",
        })
    }
}

impl Fault {
    /// Its name in `GOSYNCD_FAULTS_ONLY`.
    fn key(self) -> &'static str {
        match self {
            Fault::KillEditor => "kill-editor",
            Fault::KillReceiver => "kill-receiver",
            Fault::StopPeer => "stop-peer",
            Fault::CannotWrite => "cannot-write",
            Fault::ValidateFails => "validate-fails",
            Fault::RecursiveDelete => "recursive-delete",
        }
    }
}

/// The kinds drawn: every one, or those `GOSYNCD_FAULTS_ONLY` names (comma-separated
/// keys), to hunt one failure.
fn kinds() -> Vec<Fault> {
    let Ok(only) = std::env::var("GOSYNCD_FAULTS_ONLY") else {
        return FAULTS.to_vec();
    };
    only.split(',')
        .map(|key| {
            let key = key.trim();
            *FAULTS.iter().find(|f| f.key() == key).unwrap_or_else(|| {
                let keys: Vec<&str> = FAULTS.iter().map(|f| f.key()).collect();
                panic!("GOSYNCD_FAULTS_ONLY: no fault {key:?} (one of {keys:?})")
            })
        })
        .collect()
}

/// One fault per round, drawn at random from a deck holding every kind equally often, so
/// that each appears at least three times in 20 rounds.
fn deck(rng: &mut Rng, rounds: usize) -> Vec<Fault> {
    let mut deck: Vec<Fault> = kinds().into_iter().cycle().take(rounds).collect();
    rng.shuffle(&mut deck);
    deck
}

// ---------------------------------------------------------------------------------------
// The nodes.

struct Cluster {
    /// Node 0's daemon (the real binary) and its incarnations so far.
    editor: DaemonProcess,
    editor_logs: Vec<PathBuf>,
    /// Node 3's daemon (the real binary) and its incarnations so far.
    writer: DaemonProcess,
    writer_logs: Vec<PathBuf>,
    /// Nodes 0 and 1, whose CA signs every node's certificate.
    a: LocalGroup,
    /// Nodes 2 and 3.
    b: LocalGroup,
    /// While it exists, node 2's `validate` fails.
    marker: PathBuf,
}

impl Cluster {
    fn node(&self, i: usize) -> &GroupNode {
        match i {
            0 | 1 => &self.a.nodes[i],
            _ => &self.b.nodes[i - 2],
        }
    }

    /// Stops an in-process receiver.
    async fn stop(&mut self, i: usize) {
        match i {
            1 => self.a.stop(1).await,
            2 => self.b.stop(0).await,
            _ => unreachable!("node {i} does not run in this process"),
        }
    }

    /// Starts an in-process receiver again.
    async fn start(&mut self, i: usize) {
        let started = match i {
            1 => self.a.restart(1).await,
            2 => self.b.restart(0).await,
            _ => unreachable!("node {i} does not run in this process"),
        };
        started.unwrap_or_else(|e| panic!("node {i} does not start again: {e:#}"));
    }

    async fn start_editor(&mut self) {
        let log = self
            .a
            .path()
            .join(format!("editor-{}.log", self.editor_logs.len() + 1));
        self.editor = spawn_ready(self.node(EDITOR), log.clone()).await;
        self.editor_logs.push(log);
    }

    async fn start_writer(&mut self) {
        let log = self
            .b
            .path()
            .join(format!("writer-{}.log", self.writer_logs.len() + 1));
        self.writer = spawn_ready(self.node(WRITER), log.clone()).await;
        self.writer_logs.push(log);
    }

    /// The editor's local `/etc/app`.
    fn editor_root(&self) -> PathBuf {
        self.node(EDITOR).path(APP)
    }
}

/// Starts the real binary on `node`'s config and waits until it answers.
async fn spawn_ready(node: &GroupNode, log: PathBuf) -> DaemonProcess {
    let mut daemon = DaemonProcess::spawn(&node.config_path, log);
    daemon.wait_ready(&peer(&tls_of(node), node.addr)).await;
    daemon
}

fn use_config(node: &mut GroupNode, path: PathBuf) {
    node.config = Arc::new(Config::from_file(&path).unwrap_or_else(|e| panic!("{e}")));
    node.config_path = path;
}

/// Builds the four nodes, every one listing all four as `remotes`, and starts them:
/// the receivers first, the editor last.
async fn cluster() -> Cluster {
    let pair = || GroupSpec {
        watch: true,
        ..spec(2)
    };
    let mut a = start_built(&pair()).await;
    let mut b = start_built(&pair()).await;
    let remotes: Vec<String> = a
        .nodes
        .iter()
        .chain(&b.nodes)
        .map(|n| n.addr.to_string())
        .collect();
    let marker = a.path().join("validation-fails");
    for i in 0..2 {
        let variant = config_variant(&a, i, &format!("node{}-faults.hcl", i + 1), |text| {
            with_remotes(&text, &remotes)
        });
        use_config(&mut a.nodes[i], variant);
    }
    // Group b's nodes get certificates from group a's CA, and trust it alone.
    let ca = a.ca.as_ref().expect("group a has a CA");
    let ca_file = a.path().join("ca.pem");
    for i in 0..2 {
        let pem = ca
            .issue(&[b.nodes[i].addr.ip().to_string()])
            .expect("a certificate");
        let cert = b.path().join(format!("joined{}.pem", i + 3));
        let key = b.path().join(format!("joined{}.key", i + 3));
        std::fs::write(&cert, pem.cert).unwrap();
        std::fs::write(&key, pem.key).unwrap();
        let validate = (i + 2 == VALIDATING).then(|| {
            format!(
                "  exclude = []\n  validate = \"if [ -e {} ]; then echo 'the marker says fail' >&2; exit 1; fi\"",
                marker.display()
            )
        });
        let variant = config_variant(&b, i, &format!("node{}-faults.hcl", i + 3), |text| {
            let mut text = with_remotes(&text, &remotes);
            for (key_name, file) in [
                ("tls_ca_certificate", &ca_file),
                ("tls_certificate", &cert),
                ("tls_private_key", &key),
            ] {
                let line = format!("{key_name} = \"{}\"", file.display());
                text = with_line(&text, key_name, &line);
            }
            if let Some(lines) = &validate {
                assert!(text.contains("  exclude = []"), "{text}");
                text = text.replace("  exclude = []", lines);
            }
            text
        });
        use_config(&mut b.nodes[i], variant);
    }

    a.restart(1).await.unwrap();
    b.restart(0).await.unwrap();
    b.release(1);
    a.release(0);
    let writer_log = b.path().join("writer-1.log");
    let writer = spawn_ready(&b.nodes[1], writer_log.clone()).await;
    let editor_log = a.path().join("editor-1.log");
    let editor = spawn_ready(&a.nodes[0], editor_log.clone()).await;
    Cluster {
        editor,
        editor_logs: vec![editor_log],
        writer,
        writer_logs: vec![writer_log],
        a,
        b,
        marker,
    }
}

async fn start_built(spec: &GroupSpec) -> LocalGroup {
    LocalGroup::build(spec)
        .await
        .unwrap_or_else(|e| panic!("group {spec:?} not built: {e:#}"))
}

fn send_kill(daemon: &DaemonProcess) {
    let pid = rustix::process::Pid::from_raw(daemon.child.id() as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .unwrap_or_else(|e| panic!("cannot kill {pid:?}: {e}"));
}

/// SIGKILLs a daemon and reaps it.
async fn kill(daemon: &mut DaemonProcess, what: &str) {
    send_kill(daemon);
    let status = daemon.wait_exit(WAIT).await;
    assert_eq!(
        status.signal(),
        Some(9),
        "{what} exited with {status} before it was killed:\n{}",
        tail(&daemon.log(), 40)
    );
}

/// Sets the soft RLIMIT_FSIZE of a running daemon (`None`: unlimited); the hard limit
/// stays unlimited.
fn set_fsize(daemon: &DaemonProcess, limit: Option<usize>) {
    let pid = rustix::process::Pid::from_raw(daemon.child.id() as i32).expect("a pid");
    rustix::process::prlimit(
        Some(pid),
        rustix::process::Resource::Fsize,
        rustix::process::Rlimit {
            current: limit.map(|l| l as u64),
            maximum: None,
        },
    )
    .unwrap_or_else(|e| panic!("cannot set the RLIMIT_FSIZE of {pid:?}: {e}"));
}

// ---------------------------------------------------------------------------------------
// The editor: random edits of node 0's tree, and nothing else.

struct Editor {
    /// Node 0's local `/etc/app`.
    root: PathBuf,
    /// Where editor-style saves are written before they are renamed into place.
    staging: PathBuf,
    /// Names are never reused.
    next: usize,
    made: BTreeMap<&'static str, usize>,
    /// Every edit and fault, with the time since the start, for failure reports.
    journal: Vec<String>,
    clock: Instant,
}

impl Editor {
    fn new(root: PathBuf, staging: PathBuf) -> Editor {
        std::fs::create_dir_all(&staging).unwrap();
        Editor {
            root,
            staging,
            next: 0,
            made: BTreeMap::new(),
            journal: Vec::new(),
            clock: Instant::now(),
        }
    }

    /// Notes an edit or a fault in the journal.
    fn note(&mut self, what: String) {
        let at = self.clock.elapsed().as_secs_f64();
        self.journal.push(format!("{at:8.3} s  {what}"));
    }

    fn total(&self) -> usize {
        self.made.values().sum()
    }

    /// The files and directories of the tree (relative; "" is the tree itself), without
    /// the recursive delete's tree and the large file (only their faults touch them).
    fn listing(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        for entry in walkdir::WalkDir::new(&self.root).sort_by_file_name() {
            let entry = entry.unwrap();
            let rel = entry.path().strip_prefix(&self.root).unwrap().to_path_buf();
            if rel.starts_with(BULK) || rel == Path::new(LARGE) {
                continue;
            }
            if entry.file_type().is_dir() {
                dirs.push(rel);
            } else {
                files.push(rel);
            }
        }
        (files, dirs)
    }

    fn name(&mut self, prefix: &str, suffix: &str) -> String {
        self.next += 1;
        format!("{prefix}{:04}{suffix}", self.next)
    }

    fn content(&mut self, rng: &mut Rng, round: usize) -> Vec<u8> {
        let len = if rng.below(10) == 0 {
            rng.range(8 * 1024, 40 * 1024)
        } else {
            rng.range(16, 3000)
        };
        self.next += 1;
        pattern(&format!("round {round}, edit {}\n", self.next), len)
    }

    /// Writes `bytes` at `rel`: in place, or editor-style (a file written elsewhere and
    /// renamed over it). Says which.
    fn save(&mut self, rng: &mut Rng, rel: &Path, bytes: &[u8]) -> &'static str {
        let target = self.root.join(rel);
        if rng.below(2) == 0 {
            std::fs::write(&target, bytes).unwrap();
            "in place"
        } else {
            let name = self.name("save", ".tmp");
            let staged = self.staging.join(name);
            std::fs::write(&staged, bytes).unwrap();
            std::fs::rename(&staged, &target).unwrap();
            "renamed into place"
        }
    }

    /// One random edit.
    fn edit(&mut self, rng: &mut Rng, round: usize) {
        let (files, dirs) = self.listing();
        let shallow: Vec<PathBuf> = dirs
            .iter()
            .filter(|d| d.components().count() < 3)
            .cloned()
            .collect();
        let roll = rng.below(100);
        let kind = match roll {
            _ if files.is_empty() => "new file",
            0..=29 => "new file",
            30..=54 => "rewrite",
            55..=69 => "delete",
            70..=84 => "rename",
            _ => "mkdir",
        };
        let what = match kind {
            "new file" | "rewrite" => {
                let rel = if kind == "new file" {
                    rng.pick(&dirs).join(self.name("f", ".conf"))
                } else {
                    rng.pick(&files).clone()
                };
                let bytes = self.content(rng, round);
                let how = self.save(rng, &rel, &bytes);
                format!("{}, {} bytes, {how}", logical(&rel), bytes.len())
            }
            "delete" => {
                // A file, or now and then a whole directory (never the tree itself).
                let subdirs = &dirs[1..];
                if !subdirs.is_empty() && rng.below(4) == 0 {
                    let rel = rng.pick(subdirs).clone();
                    std::fs::remove_dir_all(self.root.join(&rel)).unwrap();
                    format!("{} and everything below it", logical(&rel))
                } else {
                    let rel = rng.pick(&files).clone();
                    std::fs::remove_file(self.root.join(&rel)).unwrap();
                    logical(&rel)
                }
            }
            "rename" => {
                let subdirs = &dirs[1..];
                let (from, to) = if !subdirs.is_empty() && rng.below(4) == 0 {
                    // A directory, within its parent.
                    let from = rng.pick(subdirs).clone();
                    let to = from.with_file_name(self.name("moved", ""));
                    (from, to)
                } else {
                    let from = rng.pick(&files).clone();
                    let to = rng.pick(&dirs).join(self.name("r", ".conf"));
                    (from, to)
                };
                std::fs::rename(self.root.join(&from), self.root.join(&to)).unwrap();
                format!("{} to {}", logical(&from), logical(&to))
            }
            _ => {
                let rel = rng.pick(&shallow).join(self.name("d", ""));
                std::fs::create_dir(self.root.join(&rel)).unwrap();
                logical(&rel)
            }
        };
        self.note(format!("round {round}: {kind} {what}"));
        *self.made.entry(kind).or_default() += 1;
    }

    /// `n` random edits, a few milliseconds apart (some land in one watcher burst, some
    /// in separate ones).
    async fn edits(&mut self, rng: &mut Rng, round: usize, n: usize) {
        for _ in 0..n {
            self.edit(rng, round);
            pause(rng, 0, 60).await;
        }
    }

    /// Writes a new file in place, in the tree itself.
    fn new_file(&mut self, rng: &mut Rng, round: usize) {
        let rel = PathBuf::from(self.name("f", ".conf"));
        let bytes = self.content(rng, round);
        std::fs::write(self.root.join(&rel), &bytes).unwrap();
        self.note(format!(
            "round {round}: new file {}, {} bytes, in place",
            logical(&rel),
            bytes.len()
        ));
        *self.made.entry("new file").or_default() += 1;
    }

    /// Saves the large file, larger than [`FSIZE_LIMIT`].
    fn save_large(&mut self, rng: &mut Rng, round: usize) {
        let len = rng.range(FSIZE_LIMIT * 3 / 2, FSIZE_LIMIT * 2);
        self.next += 1;
        let bytes = pattern(&format!("round {round}, large {}\n", self.next), len);
        let how = self.save(rng, Path::new(LARGE), &bytes);
        self.note(format!(
            "round {round}: large file {APP}/{LARGE}, {len} bytes, {how}"
        ));
        *self.made.entry("large file").or_default() += 1;
    }

    /// Writes the recursive delete's tree.
    fn write_bulk(&mut self, round: usize) {
        for i in 0..BULK_FILES {
            let dir = self.root.join(BULK).join(format!("d{:02}", i % BULK_DIRS));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join(format!("f{i:03}.conf")),
                format!("round {round}, bulk file {i}\n"),
            )
            .unwrap();
        }
        self.note(format!(
            "round {round}: {BULK_FILES} files written below {APP}/{BULK}"
        ));
    }
}

/// `len` bytes of `label` repeated.
fn pattern(label: &str, len: usize) -> Vec<u8> {
    label.bytes().cycle().take(len).collect()
}

// ---------------------------------------------------------------------------------------
// Comparing the trees.

/// Everything below `root` (links not followed, times left out), or `None` when a path
/// vanished while it was read (a daemon renaming a temporary file into place).
fn tree_of(root: &Path) -> Option<Tree> {
    let mut tree = Tree::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.ok()?;
        let rel = entry.path().strip_prefix(root).ok()?.to_path_buf();
        let meta = std::fs::symlink_metadata(entry.path()).ok()?;
        let (mode, owner) = (meta.mode() & 0o7777, (meta.uid(), meta.gid()));
        let kind = meta.file_type();
        let item = if kind.is_symlink() {
            Item::Symlink {
                target: std::fs::read_link(entry.path()).ok()?,
                owner,
                mtime_ns: 0,
            }
        } else if kind.is_dir() {
            Item::Dir {
                mode,
                owner,
                mtime_ns: 0,
            }
        } else if kind.is_file() {
            Item::File {
                mode,
                owner,
                bytes: std::fs::read(entry.path()).ok()?,
                mtime_ns: 0,
            }
        } else {
            Item::Other
        };
        tree.insert(rel, item);
    }
    Some(tree)
}

fn describe_item(item: &Item) -> String {
    match item {
        Item::File { mode, bytes, .. } => format!("a file of {} bytes, mode {mode:o}", bytes.len()),
        Item::Dir { mode, .. } => format!("a directory, mode {mode:o}"),
        Item::Symlink { target, .. } => format!("a link to {}", target.display()),
        Item::Other => "neither file, directory nor link".into(),
    }
}

/// One path where a node differs from the editor.
#[derive(Clone, Debug)]
struct Difference {
    node: usize,
    path: String,
    what: String,
}

fn logical(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        APP.to_string()
    } else {
        format!("{APP}/{}", rel.display())
    }
}

/// Every path where a node's tree differs from the editor's.
fn differences(cluster: &Cluster) -> Vec<Difference> {
    let Some(editor) = tree_of(&cluster.editor_root()) else {
        return vec![Difference {
            node: EDITOR,
            path: APP.into(),
            what: "the editor's tree changed while it was read".into(),
        }];
    };
    let mut out = Vec::new();
    for node in 1..4 {
        let Some(theirs) = tree_of(&cluster.node(node).path(APP)) else {
            out.push(Difference {
                node,
                path: APP.into(),
                what: "its tree changed while it was read".into(),
            });
            continue;
        };
        let paths: BTreeSet<&PathBuf> = editor.keys().chain(theirs.keys()).collect();
        for rel in paths {
            let what = match (editor.get(rel), theirs.get(rel)) {
                (Some(ours), Some(held)) if ours == held => continue,
                (Some(ours), Some(held)) => match (ours, held) {
                    (Item::File { bytes: a, .. }, Item::File { bytes: b, .. }) if a != b => {
                        format!(
                            "holds another content ({} bytes, starting {:?}) than the editor's ({} bytes, starting {:?})",
                            b.len(),
                            start_of(b),
                            a.len(),
                            start_of(a)
                        )
                    }
                    _ => format!(
                        "holds {} where the editor holds {}",
                        describe_item(held),
                        describe_item(ours)
                    ),
                },
                (Some(ours), None) => format!("missing ({} on the editor)", describe_item(ours)),
                (None, Some(held)) => format!(
                    "holds {}, which the editor does not have",
                    describe_item(held)
                ),
                (None, None) => unreachable!("listed by one of them"),
            };
            out.push(Difference {
                node,
                path: logical(rel),
                what,
            });
        }
    }
    out
}

fn start_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(24)]).into_owned()
}

/// Polls until every node's tree equals the editor's: how long it took, or what still
/// differs after `within`.
async fn converge(cluster: &Cluster, within: Duration) -> Result<Duration, Vec<Difference>> {
    let started = Instant::now();
    loop {
        let left = differences(cluster);
        if left.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= within {
            return Err(left);
        }
        tokio::time::sleep(POLL).await;
    }
}

// ---------------------------------------------------------------------------------------
// Figures and failure reports.

#[derive(Default)]
struct Figures {
    rounds: usize,
    injected: BTreeMap<Fault, usize>,
    /// How long each fault took to heal once its cause was gone.
    healed: Vec<(Fault, Duration)>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn heal_line(label: &str, times: &[Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return format!("  {label}: none healed");
    }
    format!(
        "  {label}: {} healed, p50 {:.0} ms, max {:.0} ms",
        sorted.len(),
        percentile(&sorted, 0.5).as_secs_f64() * 1000.0,
        sorted[sorted.len() - 1].as_secs_f64() * 1000.0
    )
}

fn print_figures(seed: u64, figures: &Figures, editor: &Editor, lost: usize, took: Duration) {
    let injected: Vec<String> = figures
        .injected
        .iter()
        .map(|(fault, n)| format!("{fault}: {n}"))
        .collect();
    let made: Vec<String> = editor
        .made
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    let mut lines = vec![
        format!(
            "faults_convergence: seed {seed}, {} rounds in {:.1} s",
            figures.rounds,
            took.as_secs_f64()
        ),
        format!("faults injected: {}", injected.join(", ")),
        format!(
            "edits made: {} ({}), plus {} files of recursive-delete trees",
            editor.total(),
            made.join(", "),
            figures.injected.get(&Fault::RecursiveDelete).unwrap_or(&0) * BULK_FILES
        ),
        format!("edits lost: {lost}"),
        "heal time once the cause was gone:".to_string(),
    ];
    let all: Vec<Duration> = figures.healed.iter().map(|(_, d)| *d).collect();
    lines.push(heal_line("every fault", &all));
    for fault in FAULTS {
        let times: Vec<Duration> = figures
            .healed
            .iter()
            .filter(|(f, _)| *f == fault)
            .map(|(_, d)| *d)
            .collect();
        lines.push(heal_line(&fault.to_string(), &times));
    }
    eprintln!("{}", lines.join("\n"));
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The lines of a daemon's logs that matter for `paths`: the ones naming them, and
/// every warning and error.
fn relevant_lines(logs: &[PathBuf], paths: &BTreeSet<String>) -> String {
    let mut out = Vec::new();
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let name = log.file_name().unwrap().to_string_lossy().into_owned();
        for line in text.lines() {
            if line.contains("WARN")
                || line.contains("ERROR")
                || paths.iter().any(|p| line.contains(p.as_str()))
            {
                out.push(format!("{name}: {line}"));
            }
        }
    }
    tail(&out.join("\n"), 60)
}

/// What the editor's daemon says of each peer: waiting, held and drifted paths.
async fn editor_status(cluster: &Cluster) -> String {
    let editor = cluster.node(EDITOR);
    match peer_as(cluster.node(1), editor.addr).status().await {
        Ok(status) => status
            .peers
            .iter()
            .map(|p| {
                let held: Vec<String> = p
                    .held
                    .iter()
                    .map(|h| format!("{} ({:?}: {})", h.path, h.outcome, h.reason))
                    .collect();
                format!(
                    "  to {}: pending {}, held {held:?}, drift {:?} {:?}, last error {:?}",
                    p.peer, p.pending, p.drift_paths, p.drift, p.last_error
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => format!("  the editor's status cannot be read: {e}"),
    }
}

/// Keeps the nodes' files, logs and configs after the test (a failure ends it), and
/// says where they are.
fn keep_files(cluster: &mut Cluster) -> String {
    cluster.a.dir.disable_cleanup(true);
    cluster.b.dir.disable_cleanup(true);
    format!(
        "kept for inspection: {} (nodes 0-1, the editor's logs editor-N.log) and {} (nodes 2-3, node 3's logs writer-N.log)",
        cluster.a.path().display(),
        cluster.b.path().display()
    )
}

/// What the editor did to `paths` (or to a directory above one of them), and its last
/// edits and faults; the whole journal goes to `edits.log` beside the editor's logs.
fn journal_lines(cluster: &Cluster, editor: &Editor, paths: &BTreeSet<String>) -> String {
    let journal = cluster.a.path().join("edits.log");
    let _ = std::fs::write(&journal, editor.journal.join("\n") + "\n");
    let names = |line: &str| {
        paths.iter().any(|path| {
            Path::new(path)
                .ancestors()
                .filter(|a| a.as_os_str().len() > APP.len())
                .any(|a| {
                    let a = a.to_string_lossy();
                    line.contains(&format!("{a} "))
                        || line.contains(&format!("{a},"))
                        || line.ends_with(&*a)
                })
        })
    };
    let about: Vec<&str> = editor
        .journal
        .iter()
        .map(String::as_str)
        .filter(|line| names(line))
        .collect();
    let last = &editor.journal[editor.journal.len().saturating_sub(12)..];
    format!(
        "  about these paths:\n{}\n  the last edits and faults:\n{}\n  (all in {})",
        tail(&about.join("\n"), 30),
        last.join("\n"),
        journal.display()
    )
}

async fn failure_report(
    cluster: &mut Cluster,
    editor: &Editor,
    seed: u64,
    context: &str,
    left: &[Difference],
) -> String {
    let kept = keep_files(cluster);
    let cluster = &*cluster;
    let addrs: Vec<String> = (0..4)
        .map(|i| format!("node {i} = {}", cluster.node(i).addr))
        .collect();
    let shown: Vec<String> = left
        .iter()
        .take(40)
        .map(|d| {
            format!(
                "  node {} ({}): {} {}",
                d.node,
                cluster.node(d.node).addr,
                d.path,
                d.what
            )
        })
        .collect();
    let paths: BTreeSet<String> = left.iter().map(|d| d.path.clone()).collect();
    format!(
        "seed {seed} (GOSYNCD_FAULTS_SEED={seed}): {context}\n\
         {} difference(s) on {} path(s) ({}; node 0 is the editor):\n{}\n\
         what the test did (seconds since the start):\n{}\n\
         the editor's daemon, per peer:\n{}\n\
         the editor's log (warnings, errors, the paths above):\n{}\n\
         node 3's log (the same):\n{}\n{kept}",
        left.len(),
        paths.len(),
        addrs.join(", "),
        shown.join("\n"),
        journal_lines(cluster, editor, &paths),
        editor_status(cluster).await,
        relevant_lines(&cluster.editor_logs, &paths),
        relevant_lines(&cluster.writer_logs, &paths)
    )
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_converges_by_itself_after_each_random_fault_while_one_node_is_edited() {
    let seed = seed();
    eprintln!(
        "faults_convergence: seed {seed} (replay its choices with GOSYNCD_FAULTS_SEED={seed})"
    );
    let mut rng = Rng::new(seed);
    let deck = deck(&mut rng, rounds());
    let mut cluster = cluster().await;
    let mut editor = Editor::new(cluster.editor_root(), cluster.a.path().join("staging"));
    let mut figures = Figures::default();
    let clock = Instant::now();

    // What the editor's tree holds to begin with.
    editor.edits(&mut rng, 0, 12).await;
    if let Err(left) = converge(&cluster, WAIT).await {
        let report = failure_report(
            &mut cluster,
            &editor,
            seed,
            "the first edits, with no fault",
            &left,
        )
        .await;
        panic!("{report}");
    }

    let mut unhealed = None;
    for (round, fault) in deck.into_iter().enumerate().map(|(i, f)| (i + 1, f)) {
        figures.rounds = round;
        *figures.injected.entry(fault).or_default() += 1;
        let n = rng.range(1, 4);
        editor.edits(&mut rng, round, n).await;
        let mut context = format!("round {round}, {fault}");
        match fault {
            Fault::KillEditor => {
                // The kill lands at a random moment after the last edit: in the
                // watcher's quiet period, during the push, or once all is delivered. Not
                // before the daemon can have seen the edit (its events come through
                // notify's 50 ms window): an edit a killed daemon never saw cannot be
                // told from drift after its restart, and is reported as drift instead.
                let after = rng.range(NOTICED_MS, 400);
                context = format!("{context} (SIGKILL {after} ms after the last edit)");
                tokio::time::sleep(Duration::from_millis(after as u64)).await;
                editor.note(format!("round {round}: SIGKILL of the editor's daemon"));
                kill(&mut cluster.editor, "the editor").await;
                cluster.start_editor().await;
                editor.note(format!("round {round}: the editor's daemon started again"));
            }
            Fault::KillReceiver => {
                let n = rng.range(1, 3);
                editor.edits(&mut rng, round, n).await;
                let after = rng.range(0, 200);
                context = format!("{context} (node 3, SIGKILL {after} ms after an edit)");
                tokio::time::sleep(Duration::from_millis(after as u64)).await;
                editor.note(format!("round {round}: SIGKILL of node 3"));
                kill(&mut cluster.writer, "node 3").await;
                let n = rng.range(1, 3);
                editor.edits(&mut rng, round, n).await;
                tokio::time::sleep(HOLD).await;
                cluster.start_writer().await;
                editor.note(format!("round {round}: node 3 started again"));
            }
            Fault::StopPeer => {
                let which = *rng.pick(&STOPPABLE);
                context = format!("{context} (node {which})");
                editor.note(format!("round {round}: node {which} stopped"));
                cluster.stop(which).await;
                let n = rng.range(1, 4);
                editor.edits(&mut rng, round, n).await;
                tokio::time::sleep(HOLD).await;
                cluster.start(which).await;
                editor.note(format!("round {round}: node {which} started again"));
            }
            Fault::CannotWrite => {
                // Node 3 cannot write the large file until its write has failed.
                set_fsize(&cluster.writer, Some(FSIZE_LIMIT));
                editor.note(format!("round {round}: node 3's RLIMIT_FSIZE lowered"));
                let failed = format!("[!] {} {APP}/{LARGE} skipped", cluster.node(WRITER).addr);
                let log = cluster.editor.log_path.clone();
                let before = std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .matches(&failed)
                    .count();
                editor.save_large(&mut rng, round);
                let n = rng.range(0, 2);
                editor.edits(&mut rng, round, n).await;
                eventually_showing(
                    &format!("{context}: the editor logged {failed:?}"),
                    WAIT,
                    || {
                        std::fs::read_to_string(&log)
                            .unwrap_or_default()
                            .matches(&failed)
                            .count()
                            > before
                    },
                    || {
                        format!(
                            "{}\nnode 3:\n{}",
                            tail(&cluster.editor.log(), 40),
                            tail(&cluster.writer.log(), 40)
                        )
                    },
                )
                .await;
                set_fsize(&cluster.writer, None);
                editor.note(format!("round {round}: node 3's RLIMIT_FSIZE raised"));
            }
            Fault::ValidateFails => {
                // Node 2 rejects what it receives until the marker is gone.
                let rejected = || cluster.node(VALIDATING).stats().map_or(0, |c| c.rejected);
                let before = rejected();
                std::fs::write(&cluster.marker, "").unwrap();
                editor.note(format!("round {round}: node 2's validate fails from now"));
                let n = rng.range(0, 2);
                editor.edits(&mut rng, round, n).await;
                // Random edits can cancel out (a file created and deleted at once): a new
                // file is always pushed, and rejected.
                editor.new_file(&mut rng, round);
                eventually(
                    &format!("{context}: node 2 rejected a batch while its validate failed"),
                    WAIT,
                    || rejected() > before,
                )
                .await;
                std::fs::remove_file(&cluster.marker).unwrap();
                editor.note(format!("round {round}: node 2's validate passes again"));
                // A rejected change is held until its directory is edited again, as an
                // operator does once the cause is fixed: one save brings every change
                // the rejection held back.
                editor.new_file(&mut rng, round);
            }
            Fault::RecursiveDelete => {
                editor.write_bulk(round);
                if let Err(left) = converge(&cluster, WAIT).await {
                    let report = failure_report(
                        &mut cluster,
                        &editor,
                        seed,
                        &format!("{context}: the tree to delete never reached every node"),
                        &left,
                    )
                    .await;
                    panic!("{report}");
                }
                std::fs::remove_dir_all(cluster.editor_root().join(BULK)).unwrap();
                editor.note(format!(
                    "round {round}: {APP}/{BULK} removed with remove_dir_all"
                ));
                let n = rng.range(0, 2);
                editor.edits(&mut rng, round, n).await;
            }
        }
        // The cause is gone: the group must heal by itself.
        match converge(&cluster, HEAL).await {
            Ok(took) => {
                editor.note(format!("round {round}: healed in {} ms", took.as_millis()));
                figures.healed.push((fault, took));
            }
            Err(left) => {
                unhealed = Some((context, left));
                break;
            }
        }
    }

    // Every node ends with the editor's tree (at once, unless a round did not heal, whose
    // wait was this one).
    let left = match &unhealed {
        Some((_, left)) => left.clone(),
        None => converge(&cluster, HEAL).await.err().unwrap_or_default(),
    };
    let lost: BTreeSet<&str> = left.iter().map(|d| d.path.as_str()).collect();
    print_figures(seed, &figures, &editor, lost.len(), clock.elapsed());
    if let Some((context, left)) = &unhealed {
        let report = failure_report(
            &mut cluster,
            &editor,
            seed,
            &format!(
                "{context}: the nodes still differ from the editor {HEAL:?} after the fault's cause was gone"
            ),
            left,
        )
        .await;
        panic!("{report}");
    }
    if !left.is_empty() {
        let report = failure_report(
            &mut cluster,
            &editor,
            seed,
            &format!(
                "after {} rounds, the nodes still differ from the editor after {HEAL:?}",
                figures.rounds
            ),
            &left,
        )
        .await;
        panic!("{report}");
    }
}
