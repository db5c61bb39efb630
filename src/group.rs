//! A throw-away group of real nodes on this machine: each on its own loopback address
//! (127.0.0.2, .3, ...), with generated certificates, its own `root` and `state_directory`
//! under a temporary directory and a config file the CLI can use. `gosyncd demo` and the integration tests
//! run on it; nothing here is mocked: real sockets, real TLS, real files.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::certs;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::manifest::HashCache;
use crate::sync::Engine;
use crate::tls::TlsMaterial;

/// How the group's certificates are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsStyle {
    /// A group CA signs one certificate per node.
    Authority,
    /// One self-signed certificate for every node, named by all three `tls_*` keys.
    SelfSigned,
}

/// What group to build.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    pub nodes: usize,
    /// Last octet of the first node's address (127.0.S.N).
    pub first_octet: u8,
    /// Third octet of the nodes' addresses (127.0.S.N): 0 by default; another keeps a
    /// test's group apart from the groups of older tests.
    pub subnet: u8,
    /// Configured directories with their exclude entries.
    pub directories: Vec<(String, Vec<String>)>,
    pub tls: TlsStyle,
    /// Whether the daemons watch their trees and push changes automatically.
    pub watch: bool,
    /// The `debounce` key; `None` leaves the default.
    pub debounce: Option<std::time::Duration>,
    /// The `reconcile_interval` key; `None` leaves the default.
    pub reconcile_interval: Option<std::time::Duration>,
    /// Further top-level settings, written into every node's file as they are (for
    /// example `open_write_timeout = "2s"`).
    pub settings: String,
}

impl Default for GroupSpec {
    fn default() -> Self {
        GroupSpec {
            nodes: 3,
            first_octet: 2,
            subnet: 0,
            directories: vec![("/etc/app".into(), Vec::new())],
            tls: TlsStyle::Authority,
            watch: false,
            debounce: None,
            reconcile_interval: None,
            settings: String::new(),
        }
    }
}

/// One node of the group.
pub struct GroupNode {
    pub addr: SocketAddr,
    /// The config file, usable as `gosyncd -config PATH ...`.
    pub config_path: PathBuf,
    pub config: Arc<Config>,
    watch: bool,
    /// The bound address, until the daemon starts.
    listener: Option<TcpListener>,
    running: Option<Running>,
}

type Running = Daemon;

impl GroupNode {
    /// Where a logical path lives on this node.
    pub fn path(&self, logical: &str) -> PathBuf {
        self.config.local_path(logical)
    }

    /// The running daemon's counters, if it runs.
    pub fn stats(&self) -> Option<crate::protocol::StatusCounters> {
        self.running.as_ref().map(|r| r.node.stats.snapshot())
    }

    /// What the running daemon's watcher knows of each peer, if it runs.
    pub fn peer_status(&self) -> Option<Vec<crate::protocol::PeerStatus>> {
        self.running.as_ref().map(|r| r.node.peer_status())
    }

    /// The running daemon's identity, if it runs.
    pub fn node_id(&self) -> Option<String> {
        self.running
            .as_ref()
            .map(|r| r.node.identity.node_id.clone())
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }
}

/// A running group; dropping it stops the daemons and deletes the files.
pub struct LocalGroup {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<GroupNode>,
    /// The group's CA, when its certificates have one (to issue more).
    pub ca: Option<certs::Authority>,
}

impl LocalGroup {
    /// Builds the files of the group and starts every node.
    pub async fn start(spec: &GroupSpec) -> anyhow::Result<LocalGroup> {
        let mut group = LocalGroup::build(spec).await?;
        group.start_all().await?;
        Ok(group)
    }

    /// Builds the files of the group and binds its addresses, without starting any
    /// daemon (so that trees can be prepared first); [`LocalGroup::start_all`] starts them.
    pub async fn build(spec: &GroupSpec) -> anyhow::Result<LocalGroup> {
        let dir = tempfile::Builder::new()
            .prefix("gosyncd-group-")
            .tempdir()?;
        let ips: Vec<IpAddr> = (0..spec.nodes)
            .map(|i| {
                IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    spec.subnet,
                    spec.first_octet + i as u8,
                ))
            })
            .collect();
        let mut listeners = Vec::new();
        for ip in &ips {
            let listener = TcpListener::bind(SocketAddr::new(*ip, 0))
                .await
                .with_context(|| {
                    format!("cannot listen on {ip} (loopback addresses 127.0.x.y are needed)")
                })?;
            listeners.push(listener);
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<_, _>>()?;
        let names: Vec<String> = ips.iter().map(IpAddr::to_string).collect();

        // Certificates: per node signed by a CA, or one shared self-signed one.
        let mut tls_files = Vec::new();
        let mut authority = None;
        match spec.tls {
            TlsStyle::Authority => {
                let ca = certs::Authority::new("gosyncd group CA")?;
                std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem)?;
                for (i, name) in names.iter().enumerate() {
                    let pem = ca.issue(std::slice::from_ref(name))?;
                    let (cert, key) = (format!("node{}.pem", i + 1), format!("node{}.key", i + 1));
                    std::fs::write(dir.path().join(&cert), pem.cert)?;
                    write_key(&dir.path().join(&key), &pem.key)?;
                    tls_files.push(("ca.pem".to_string(), cert, key));
                }
                authority = Some(ca);
            }
            TlsStyle::SelfSigned => {
                let pem = certs::self_signed(&names)?;
                std::fs::write(dir.path().join("gosyncd.crt"), pem.cert)?;
                write_key(&dir.path().join("gosyncd.key"), &pem.key)?;
                for _ in &names {
                    tls_files.push((
                        "gosyncd.crt".into(),
                        "gosyncd.crt".into(),
                        "gosyncd.key".into(),
                    ));
                }
            }
        }

        let remotes: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let root = dir.path().join(format!("node{}", i + 1));
            for (logical, _) in &spec.directories {
                std::fs::create_dir_all(root.join(logical.trim_start_matches('/')))?;
            }
            let (ca, cert, key) = &tls_files[i];
            let config_path = dir.path().join(format!("node{}.hcl", i + 1));
            std::fs::write(
                &config_path,
                config_text(
                    addrs[i],
                    &remotes,
                    (ca, cert, key),
                    &root,
                    &spec.directories,
                    (spec.debounce, spec.reconcile_interval),
                    &spec.settings,
                ),
            )?;
            let config = Arc::new(Config::from_file(&config_path)?);
            let mut node = GroupNode {
                addr: addrs[i],
                config_path,
                config,
                watch: spec.watch,
                listener: None,
                running: None,
            };
            node.listener = Some(listener);
            nodes.push(node);
        }
        Ok(LocalGroup {
            dir,
            nodes,
            ca: authority,
        })
    }

    /// Starts every node that does not run yet.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                self.restart(i).await?;
            }
        }
        Ok(())
    }

    /// Stops node `i` (its files stay).
    pub async fn stop(&mut self, i: usize) {
        if let Some(running) = self.nodes[i].running.take() {
            running.stop().await;
        }
    }

    /// Gives up node `i`'s address, which the group holds until the node starts, so that
    /// another process (the real binary) can listen on it.
    pub fn release(&mut self, i: usize) {
        self.nodes[i].listener = None;
    }

    /// Starts node `i` again on the same address.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.stop(i).await;
        let node = &mut self.nodes[i];
        let listener = match node.listener.take() {
            Some(listener) => listener,
            None => bind_again(node.addr).await?,
        };
        node.running = Some(Daemon::start(node.config.clone(), listener, node.watch).await?);
        Ok(())
    }

    /// An engine acting for node `i`, as `gosyncd sync` on that node would.
    pub async fn engine(&self, i: usize) -> anyhow::Result<Engine> {
        let node = &self.nodes[i];
        let tls = TlsMaterial::load(&node.config)?;
        Engine::new(
            node.config.clone(),
            &tls,
            Arc::new(HashCache::forgetful()),
            node.node_id(),
        )
        .await
    }

    /// An engine acting as node `i`'s daemon does for its comparisons with its peers:
    /// this node's digests and levels taken from the running daemon, its tree read only
    /// where they differ from a peer's. An error when the node does not run.
    pub async fn daemon_engine(&self, i: usize) -> anyhow::Result<Engine> {
        let node = &self.nodes[i];
        let running = node.running.as_ref().context("the node does not run")?;
        let tls = TlsMaterial::load(&node.config)?;
        let engine = Engine::new(
            node.config.clone(),
            &tls,
            running.node.cache.clone(),
            node.node_id(),
        )
        .await?;
        Ok(engine.answering_from(running.node.clone()))
    }

    /// The temporary directory holding everything.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Writes a private key readable by its owner alone, as `gosyncd cert` does: created
/// with that mode, never world-readable for a moment.
fn write_key(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(crate::certgen::KEY_MODE)
        .open(path)
        .and_then(|mut file| file.write_all(pem.as_bytes()))
        .with_context(|| format!("cannot write the private key {}", path.display()))
}

/// Binds a stopped node's address again. Its own outgoing connections (made from the
/// same address) may hold the port number for a moment after it stopped: retried for
/// up to 3 s.
async fn bind_again(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let started = std::time::Instant::now();
    loop {
        match TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < std::time::Duration::from_secs(3) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}

fn config_text(
    addr: SocketAddr,
    remotes: &[String],
    (ca, cert, key): (&str, &str, &str),
    root: &Path,
    directories: &[(String, Vec<String>)],
    (debounce, reconcile_interval): (Option<std::time::Duration>, Option<std::time::Duration>),
    settings: &str,
) -> String {
    let mut text = format!(
        "bind_address = \"{addr}\"\n\n# every node of the group; this node's own entry is skipped\nremotes = [\n  {}\n]\n\n\
         tls_ca_certificate = \"{ca}\"\ntls_certificate = \"{cert}\"\ntls_private_key = \"{key}\"\n\n\
         # where this node's directories live on this machine\nroot = \"{}\"\n\
         # this node's own spool of undelivered changes\nstate_directory = \"{}-state\"\n",
        remotes.join(",\n  "),
        root.display(),
        root.display()
    );
    if let Some(debounce) = debounce {
        text.push_str(&format!("debounce = \"{}ms\"\n", debounce.as_millis()));
    }
    if let Some(interval) = reconcile_interval {
        text.push_str(&format!(
            "reconcile_interval = \"{}s\"\n",
            interval.as_secs()
        ));
    }
    if !settings.is_empty() {
        text.push_str(settings.trim_end());
        text.push('\n');
    }
    for (path, exclude) in directories {
        let exclude: Vec<String> = exclude.iter().map(|e| format!("\"{e}\"")).collect();
        text.push_str(&format!(
            "\ndirectory \"{path}\" {{\n  exclude = [{}]\n}}\n",
            exclude.join(", ")
        ));
    }
    text
}
