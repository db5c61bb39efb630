//! Helpers shared by the integration tests: groups of real nodes, file helpers, tree
//! snapshots, a TCP forwarder that gives a node a second address, and a runner for the
//! real binary that cannot hang.
//!
//! Nothing here sleeps to synchronise: every wait is on an event (a task, a channel, a
//! child process) with a deadline that fails the test.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gosyncd::client::{self, Peer};
use gosyncd::config::{Config, Remote};
use gosyncd::group::{GroupNode, GroupSpec, LocalGroup};
use gosyncd::manifest::{self, HashCache, Manifest};
use gosyncd::protocol::{ChangeKind, Content, Digest256, Entry, StatusCounters};
use gosyncd::sync::{ChangeStatus, Engine, Options, PeerReport, Report};
use gosyncd::tls::TlsMaterial;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Longest a run of the binary may take before the test fails and the child is killed.
pub const BINARY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest an engine run or a single request may take in a test.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `127.0.0.octet`.
pub fn ip(octet: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet))
}

/// Starts `nodes` nodes on 127.0.0.first_octet and up, one directory `/etc/app`.
pub async fn start(nodes: usize, first_octet: u8) -> LocalGroup {
    start_with(GroupSpec {
        nodes,
        first_octet,
        ..GroupSpec::default()
    })
    .await
}

pub async fn start_with(spec: GroupSpec) -> LocalGroup {
    LocalGroup::start(&spec)
        .await
        .unwrap_or_else(|e| panic!("group {spec:?} does not start: {e:#}"))
}

// ---------------------------------------------------------------------------------------
// Files on a node, by logical path.

/// Writes a file, creating its parents.
pub fn write(node: &GroupNode, logical: &str, bytes: impl AsRef<[u8]>) {
    let path = node.path(logical);
    std::fs::create_dir_all(path.parent().expect("has a parent")).unwrap();
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

pub fn mkdir(node: &GroupNode, logical: &str) {
    std::fs::create_dir_all(node.path(logical)).unwrap();
}

/// Creates a symlink at `logical` whose target text is `target`.
pub fn symlink(node: &GroupNode, target: impl AsRef<Path>, logical: &str) {
    let path = node.path(logical);
    std::fs::create_dir_all(path.parent().expect("has a parent")).unwrap();
    std::os::unix::fs::symlink(target, &path)
        .unwrap_or_else(|e| panic!("cannot link {}: {e}", path.display()));
}

pub fn chmod(node: &GroupNode, logical: &str, mode: u32) {
    std::fs::set_permissions(node.path(logical), std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Removes a file, link or whole directory (never following a link).
pub fn remove(node: &GroupNode, logical: &str) {
    let path = node.path(logical);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    if meta.is_dir() {
        std::fs::remove_dir_all(&path).unwrap();
    } else {
        std::fs::remove_file(&path).unwrap();
    }
}

pub fn read(node: &GroupNode, logical: &str) -> Vec<u8> {
    let path = node.path(logical);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn exists(node: &GroupNode, logical: &str) -> bool {
    std::fs::symlink_metadata(node.path(logical)).is_ok()
}

/// The target text of a symlink, panicking when the path is not a symlink.
pub fn link_target(node: &GroupNode, logical: &str) -> PathBuf {
    let path = node.path(logical);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(
        meta.file_type().is_symlink(),
        "{} is not a symlink",
        path.display()
    );
    std::fs::read_link(&path).unwrap()
}

// ---------------------------------------------------------------------------------------
// Snapshots: everything below a directory, byte for byte.

/// One path of a snapshot. Times are kept so that "nothing was written" also catches a
/// temporary file created and removed again (it moves its directory's mtime).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    File {
        mode: u32,
        owner: (u32, u32),
        bytes: Vec<u8>,
        mtime_ns: i64,
    },
    Dir {
        mode: u32,
        owner: (u32, u32),
        mtime_ns: i64,
    },
    Symlink {
        target: PathBuf,
        owner: (u32, u32),
        mtime_ns: i64,
    },
    Other,
}

/// Relative path (`""` for the root itself) -> item.
pub type Tree = BTreeMap<PathBuf, Item>;

/// Everything below `root`, links not followed.
pub fn snapshot(root: &Path) -> Tree {
    let mut tree = Tree::new();
    walk(root, Path::new(""), &mut tree);
    tree
}

fn walk(root: &Path, rel: &Path, tree: &mut Tree) {
    let path = root.join(rel);
    let meta = std::fs::symlink_metadata(&path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()));
    let owner = (meta.uid(), meta.gid());
    let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
    let mode = meta.mode() & 0o7777;
    let file_type = meta.file_type();
    let item = if file_type.is_symlink() {
        Item::Symlink {
            target: std::fs::read_link(&path).unwrap(),
            owner,
            mtime_ns,
        }
    } else if file_type.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            walk(root, &rel.join(name), tree);
        }
        Item::Dir {
            mode,
            owner,
            mtime_ns,
        }
    } else if file_type.is_file() {
        Item::File {
            mode,
            owner,
            bytes: std::fs::read(&path).unwrap(),
            mtime_ns,
        }
    } else {
        Item::Other
    };
    tree.insert(rel.to_path_buf(), item);
}

/// The snapshot with every time zeroed: what "identical trees" compares.
pub fn without_times(tree: &Tree) -> Tree {
    tree.iter()
        .map(|(path, item)| {
            let item = match item.clone() {
                Item::File {
                    mode, owner, bytes, ..
                } => Item::File {
                    mode,
                    owner,
                    bytes,
                    mtime_ns: 0,
                },
                Item::Dir { mode, owner, .. } => Item::Dir {
                    mode,
                    owner,
                    mtime_ns: 0,
                },
                Item::Symlink { target, owner, .. } => Item::Symlink {
                    target,
                    owner,
                    mtime_ns: 0,
                },
                Item::Other => Item::Other,
            };
            (path.clone(), item)
        })
        .collect()
}

/// A node's manifest as gosyncd sees it, without modification times.
pub fn manifest_of(node: &GroupNode) -> Manifest {
    let scan = manifest::scan(&node.config, &[], &HashCache::default());
    assert!(
        scan.unreadable.is_empty() && scan.missing.is_empty(),
        "scan of {}: {scan:?}",
        node.addr
    );
    scan.entries
        .into_iter()
        .map(|(path, mut entry)| {
            entry.mtime_ns = 0;
            (path, entry)
        })
        .collect()
}

/// Asserts that `a` and `b` hold the same trees in every directory `a` is configured
/// with: same manifest (mtime aside) and the same bytes, modes, owners and link texts.
pub fn assert_same_tree(a: &GroupNode, b: &GroupNode) {
    let (ma, mb) = (manifest_of(a), manifest_of(b));
    if ma != mb {
        let only_a: Vec<_> = ma.iter().filter(|(p, e)| mb.get(*p) != Some(e)).collect();
        let only_b: Vec<_> = mb.iter().filter(|(p, e)| ma.get(*p) != Some(e)).collect();
        panic!(
            "manifests of {} and {} differ\nonly on {}: {only_a:#?}\nonly on {}: {only_b:#?}",
            a.addr, b.addr, a.addr, b.addr
        );
    }
    for dir in &a.config.directories {
        let ta = without_times(&snapshot(&a.path(&dir.path)));
        let tb = without_times(&snapshot(&b.path(&dir.path)));
        assert_eq!(
            ta, tb,
            "{} differs between {} and {}",
            dir.path, a.addr, b.addr
        );
    }
}

// ---------------------------------------------------------------------------------------
// Running the engine.

pub async fn run(engine: &Engine, scope: &[&str], dry_run: bool) -> Report {
    let options = Options {
        scope: scope.iter().map(|s| s.to_string()).collect(),
        dry_run,
        ..Options::default()
    };
    tokio::time::timeout(CALL_TIMEOUT, engine.run(&options, |_| {}))
        .await
        .expect("the sync finishes in time")
}

/// `gosyncd sync` on node `from`, through the library.
pub async fn sync(group: &LocalGroup, from: usize) -> Report {
    run(&engine(group, from).await, &[], false).await
}

/// `gosyncd sync -dry` on node `from`, through the library.
pub async fn dry_run(group: &LocalGroup, from: usize) -> Report {
    run(&engine(group, from).await, &[], true).await
}

pub async fn engine(group: &LocalGroup, i: usize) -> Engine {
    group.engine(i).await.expect("engine")
}

/// An engine acting with the config file at `path` (a variant of a node's config).
pub async fn engine_for(path: &Path, self_id: Option<String>) -> Engine {
    let config = Config::from_file(path).unwrap_or_else(|e| panic!("{e}"));
    let tls = TlsMaterial::load(&config).unwrap();
    Engine::new(
        Arc::new(config),
        &tls,
        Arc::new(HashCache::default()),
        self_id,
    )
    .await
    .unwrap()
}

/// Panics with the whole report when anything failed.
pub fn assert_clean(report: &Report) {
    assert!(!report.failed(), "the sync failed: {report:#?}");
}

/// The report of the peer `node`.
pub fn peer_report<'r>(report: &'r Report, node: &GroupNode) -> &'r PeerReport {
    let label = node.addr.to_string();
    report
        .peers
        .iter()
        .find(|p| p.peer == label)
        .unwrap_or_else(|| panic!("no report for {label}: {report:#?}"))
}

/// The output lines of one peer, in order.
pub fn lines(report: &Report, node: &GroupNode) -> Vec<String> {
    peer_report(report, node)
        .changes
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// `"+ /etc/app/x"`-style summary of one peer's changes, sorted.
pub fn summary(report: &Report, node: &GroupNode) -> Vec<String> {
    let mut out: Vec<String> = peer_report(report, node)
        .changes
        .iter()
        .map(|c| {
            let sign = match &c.status {
                ChangeStatus::Done(ChangeKind::Added) => "+",
                ChangeStatus::Done(ChangeKind::Updated) => "M",
                ChangeStatus::Done(ChangeKind::Deleted) => "-",
                ChangeStatus::Rejected(_) => "x",
                _ => "!",
            };
            format!("{sign} {}", c.path)
        })
        .collect();
    out.sort();
    out
}

/// Sorted owned strings, for comparing with [`summary`].
pub fn sorted(items: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// Config variants and raw peers.

/// Writes a modified copy of node `i`'s config next to it (so relative TLS paths still
/// resolve) and returns its path.
pub fn config_variant(
    group: &LocalGroup,
    i: usize,
    name: &str,
    edit: impl FnOnce(String) -> String,
) -> PathBuf {
    let text = std::fs::read_to_string(&group.nodes[i].config_path).unwrap();
    let path = group.path().join(name);
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// A variant of node `i`'s config whose tls_certificate and tls_private_key are `pem`.
pub fn with_certificate(
    group: &LocalGroup,
    i: usize,
    name: &str,
    pem: gosyncd::certs::Pem,
) -> std::path::PathBuf {
    std::fs::write(group.path().join(format!("{name}.pem")), pem.cert).unwrap();
    std::fs::write(group.path().join(format!("{name}.key")), pem.key).unwrap();
    config_variant(group, i, &format!("{name}.hcl"), |text| {
        let text = with_line(
            &text,
            "tls_certificate",
            &format!("tls_certificate = \"{name}.pem\""),
        );
        with_line(
            &text,
            "tls_private_key",
            &format!("tls_private_key = \"{name}.key\""),
        )
    })
}

/// `GET /metrics` over plain HTTP: the body.
pub async fn scrape(address: SocketAddr) -> String {
    scrape_accepting(address, None).await.1
}

/// `GET /metrics` with an `Accept` header, if any: the content type and the body.
pub async fn scrape_accepting(address: SocketAddr, accept: Option<&str>) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|e| panic!("metrics at {address}: {e}"));
    let accept = accept.map_or_else(String::new, |a| format!("accept: {a}\r\n"));
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nhost: x\r\n{accept}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (content_type, body.to_string())
}

/// Replaces the whole `remotes = [...]` list.
pub fn with_remotes(text: &str, remotes: &[String]) -> String {
    let start = text.find("remotes = [").expect("remotes in config");
    let end = start + text[start..].find(']').expect("end of remotes") + 1;
    let list: Vec<String> = remotes.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "{}remotes = [{}]{}",
        &text[..start],
        list.join(", "),
        &text[end..]
    )
}

/// Replaces the first line starting (after indentation) with `key` by `line`.
pub fn with_line(text: &str, key: &str, line: &str) -> String {
    let mut replaced = false;
    let out: Vec<&str> = text
        .lines()
        .map(|l| {
            if !replaced && l.trim_start().starts_with(key) {
                replaced = true;
                line
            } else {
                l
            }
        })
        .collect();
    assert!(replaced, "no line starting with {key:?} in:\n{text}");
    out.join("\n") + "\n"
}

pub fn tls_of(node: &GroupNode) -> TlsMaterial {
    TlsMaterial::load(&node.config).unwrap()
}

/// A peer client for `addr` using `tls` as our identity.
pub fn peer(tls: &TlsMaterial, addr: SocketAddr) -> Peer {
    peer_with(tls.client_config().unwrap(), addr)
}

/// A peer client for `addr` acting as `node`: its certificate, and connections made from
/// its address, as the node's own pushes are.
pub fn peer_as(node: &GroupNode, addr: SocketAddr) -> Peer {
    let remote = Remote {
        host: addr.ip().to_string(),
        port: addr.port(),
        label: addr.to_string(),
    };
    let tls = tls_of(node).client_config().unwrap();
    Peer::new(
        remote,
        client::http_client(tls, Some(node.addr.ip())).unwrap(),
    )
}

pub fn peer_with(tls: rustls::ClientConfig, addr: SocketAddr) -> Peer {
    let remote = Remote {
        host: addr.ip().to_string(),
        port: addr.port(),
        label: addr.to_string(),
    };
    Peer::new(remote, client::http_client(tls, None).unwrap())
}

/// A put of a regular file holding `bytes`.
pub fn file_entry(bytes: &[u8], mode: u32) -> Entry {
    Entry {
        content: Content::File {
            size: bytes.len() as u64,
            sha256: Digest256::of(bytes),
        },
        mode,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
    }
}

// ---------------------------------------------------------------------------------------
// A TCP forwarder: another address for a node, or a man in the middle that can act at a
// precise moment of a transfer.

/// Runs until dropped.
pub struct Forwarder {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Hook = Box<dyn FnOnce() + Send>;

/// Forwards every connection made to `bind:<ephemeral>` to `target`.
pub async fn forwarder(bind: IpAddr, target: SocketAddr) -> Forwarder {
    forwarder_with_hook(bind, target, usize::MAX, None).await
}

/// Like [`forwarder`]; in addition, once a connection has carried `threshold` bytes from
/// the client, `hook` runs (once) BEFORE those bytes are passed on: the server cannot
/// have received the whole request yet.
pub async fn forwarder_with_hook(
    bind: IpAddr,
    target: SocketAddr,
    threshold: usize,
    hook: Option<Hook>,
) -> Forwarder {
    let hook = Mutex::new(hook);
    forward_with(
        bind,
        target,
        Arc::new(move |sent, n| {
            if sent < threshold && sent + n >= threshold {
                if let Some(hook) = hook.lock().unwrap().take() {
                    hook();
                }
            }
            Step::Pass
        }),
    )
    .await
}

/// What a forwarder does with the next bytes from a client.
enum Step {
    Pass,
    /// Pass this many of them, then reset the connection both ways.
    Cut(usize),
}

/// Decides, from the bytes a connection already carried and the size of the next chunk,
/// what becomes of that chunk.
type OnChunk = Arc<dyn Fn(usize, usize) -> Step + Send + Sync>;

/// The forwarders' common loop: every connection to `bind:<ephemeral>` goes to `target`,
/// from the client's own address (as a NAT-less network would carry it), chunk by chunk
/// through `on_chunk`.
async fn forward_with(bind: IpAddr, target: SocketAddr, on_chunk: OnChunk) -> Forwarder {
    let listener = TcpListener::bind(SocketAddr::new(bind, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((mut client, client_addr)) = listener.accept().await {
            let on_chunk = on_chunk.clone();
            connections.spawn(async move {
                let connect = async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::new(client_addr.ip(), 0))?;
                    socket.connect(target).await
                };
                let Ok(mut server) = connect.await else {
                    return;
                };
                let cut_here = {
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let down = async {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    // Whether this connection is the one cut.
                    let up = async {
                        let mut sent = 0usize;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if let Step::Cut(passed) = on_chunk(sent, n) {
                                let _ = server_write.write_all(&buf[..passed]).await;
                                return true;
                            }
                            sent += n;
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                        false
                    };
                    tokio::pin!(up, down);
                    let mut down_done = false;
                    loop {
                        tokio::select! {
                            cut_here = &mut up => {
                                if !cut_here && !down_done {
                                    (&mut down).await;
                                }
                                break cut_here;
                            }
                            () = &mut down, if !down_done => down_done = true,
                        }
                    }
                };
                if cut_here {
                    // Closing with a zero linger sends a reset: both ends see the
                    // connection die, as when a cable is pulled or a middlebox drops it.
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                }
            });
        }
    });
    Forwarder { addr, task }
}

// ---------------------------------------------------------------------------------------
// The real binary.

/// How a run of the binary ended.
#[derive(Debug)]
pub struct BinaryRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl BinaryRun {
    /// The `[+]`/`[M]`/`[-]`/`[!]` lines without their timestamps, sorted.
    pub fn change_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .stdout
            .lines()
            .filter_map(|line| line.find(": [").map(|i| line[i + 2..].to_string()))
            .collect();
        out.sort();
        out
    }
}

/// Runs `gosyncd ARGS` to completion (killing it after [`BINARY_TIMEOUT`]) without
/// blocking the runtime that serves the group's nodes.
pub async fn gosyncd<I, S>(args: I) -> BinaryRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    tokio::task::spawn_blocking(move || run_binary(args))
        .await
        .expect("binary runner")
}

fn run_binary(args: Vec<OsString>) -> BinaryRun {
    let child = Command::new(env!("CARGO_BIN_EXE_gosyncd"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gosyncd starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BINARY_TIMEOUT) {
        Ok(output) => {
            let output = output.expect("wait for gosyncd");
            BinaryRun {
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            // Not reaped yet (the waiting thread still waits), so the pid is still ours.
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            panic!("gosyncd {args:?} did not finish within {BINARY_TIMEOUT:?}");
        }
    }
}

/// Whether the `prlimit` command (util-linux) is there; says the test is skipped if not.
pub fn has_prlimit() -> bool {
    let found = Command::new("prlimit").arg("--version").output().is_ok();
    if !found {
        eprintln!("skipped: prlimit (util-linux) is not installed");
    }
    found
}

/// `-config PATH` followed by `rest`.
pub fn config_args(config: &Path, rest: &[&str]) -> Vec<OsString> {
    let mut args = vec![OsString::from("-config"), config.as_os_str().to_os_string()];
    args.extend(rest.iter().map(OsString::from));
    args
}

/// The real binary running as a daemon, its output in a log file; killed when dropped.
pub struct DaemonProcess {
    pub child: std::process::Child,
    pub log_path: PathBuf,
}

impl DaemonProcess {
    /// Starts `gosyncd -config CONFIG` with info logging into `log_path`.
    pub fn spawn(config: &Path, log_path: PathBuf) -> DaemonProcess {
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_gosyncd"))
            .args(config_args(config, &[]))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("gosyncd starts");
        DaemonProcess { child, log_path }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until `probe` gets its identity (it watches before it serves).
    pub async fn wait_ready(&mut self, probe: &Peer) {
        let started = std::time::Instant::now();
        while probe.identity().await.is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the daemon exited with {status}:\n{}", self.log());
            }
            assert!(
                started.elapsed() < CALL_TIMEOUT,
                "the daemon did not answer within {CALL_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    /// Waits for it to exit, failing the test after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < within,
                "the daemon did not exit within {within:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }

    /// Waits until its log holds `text`, failing the test after [`CALL_TIMEOUT`].
    pub async fn wait_for_log(&self, text: &str) {
        let started = std::time::Instant::now();
        while !self.log().contains(text) {
            assert!(
                started.elapsed() < CALL_TIMEOUT,
                "{text:?} not logged within {CALL_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Fault injection: a forwarder that cuts a transfer, the binary under a wrapper command,
// and what an interrupted write may leave behind.

/// Like [`forwarder`], except that the first connection to carry more than `threshold`
/// bytes from the client is cut there: the first `threshold` bytes are passed on, the
/// rest never is, and both directions are closed at once with a reset. Later
/// connections are forwarded whole. The flag says whether the cut happened.
pub async fn forwarder_cutting(
    bind: IpAddr,
    target: SocketAddr,
    threshold: usize,
) -> (Forwarder, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};

    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    let forwarder = forward_with(
        bind,
        target,
        Arc::new(move |sent, n| {
            if sent + n > threshold && !cut.swap(true, Ordering::SeqCst) {
                Step::Cut(threshold - sent)
            } else {
                Step::Pass
            }
        }),
    )
    .await;
    (forwarder, flag)
}

impl DaemonProcess {
    /// Like [`DaemonProcess::spawn`], with the binary started through a wrapper that
    /// execs it, as `PROGRAM ARGS... gosyncd -config CONFIG` (`prlimit --fsize=N --`,
    /// say): the child's pid is then the daemon's own.
    pub fn spawn_with<S: AsRef<OsStr>>(
        program: impl AsRef<OsStr>,
        args: &[S],
        config: &Path,
        log_path: PathBuf,
    ) -> DaemonProcess {
        let program = program.as_ref().to_os_string();
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(&program)
            .args(args)
            .arg(env!("CARGO_BIN_EXE_gosyncd"))
            .args(config_args(config, &[]))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{program:?} does not start: {e}"));
        DaemonProcess { child, log_path }
    }
}

/// gosyncd's temporary files anywhere below `root` (links not followed).
pub fn temp_files_below(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(gosyncd::tree::is_temp_name)
        })
        .map(|e| e.into_path())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Watching a running group: its counters, polling for a condition, and checking that
// nothing happens for as long as a write would take to be pushed.

/// How often a condition on a running group is polled.
pub const GROUP_POLL: Duration = Duration::from_millis(15);

/// The counters of a running node.
pub fn counters(node: &GroupNode) -> StatusCounters {
    node.stats()
        .unwrap_or_else(|| panic!("node {} is not running", node.addr))
}

/// Every node's counters, for failure messages.
pub fn describe(group: &LocalGroup) -> String {
    group
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match n.stats() {
            Some(c) => format!("node {i} ({}): {c:?}", n.addr),
            None => format!("node {i} ({}): not running in this process", n.addr),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `condition` holds, failing the test after `within`.
pub async fn eventually(
    group: &LocalGroup,
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < within,
            "{what}: still not the case after {within:?}\n{}",
            describe(group)
        );
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// Long enough for a write to be seen, settled and pushed had it been going to be: what
/// "nothing happened" is observed over. The longest a burst waits after its last event
/// is the settle window plus what a big burst or a vanished path adds to it (at most
/// 200 ms).
pub fn quiet_period(group: &LocalGroup) -> Duration {
    (group.nodes[0].config.debounce + Duration::from_millis(200)) * 2 + Duration::from_millis(300)
}

/// Checks `condition` all through the quiet period, failing as soon as it stops holding.
pub async fn holds_for_quiet_period(
    group: &LocalGroup,
    what: &str,
    mut condition: impl FnMut() -> bool,
) {
    let period = quiet_period(group);
    let started = std::time::Instant::now();
    loop {
        assert!(
            condition(),
            "{what}: no longer the case {:?} into the quiet period\n{}",
            started.elapsed(),
            describe(group)
        );
        if started.elapsed() >= period {
            return;
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

/// Whether the file at `logical` holds exactly `bytes`.
pub fn holds(node: &GroupNode, logical: &str, bytes: impl AsRef<[u8]>) -> bool {
    std::fs::read(node.path(logical)).is_ok_and(|b| b == bytes.as_ref())
}

/// A resident-memory figure of a process, in KiB (`VmRSS`, `VmHWM`).
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
