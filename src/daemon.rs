//! A running daemon: the API server, the filesystem watcher, and the propagation loop
//! that feeds the watcher's changes to the engine. `gosyncd daemon`, the demo and the
//! tests all start daemons through [`Daemon::start`].
//!
//! A receive-only node (`role`) serves, watches and compares like any other, but runs no
//! delivery: it replays no spool (an earlier run's is moved aside) and hands over no
//! waiting change at a reload; what it edits itself is drift.

use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;
use tokio::net::TcpListener;

use tokio::sync::{oneshot, watch::channel as watch_channel};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::apply;
use crate::baseline::Baseline;
use crate::config::Config;
use crate::manifest::{self, HashCache};
use crate::node::{Known, Node, PeerRecord, Sent, Spool, Spooled};
use crate::paths::LogicalPath;
use crate::server;
use crate::sync::Engine;
use crate::tls::TlsMaterial;
use crate::watcher::{self, Queue, WATCH_QUEUE_EVENTS};

/// How long a stopping daemon lets pushes under way finish.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// A daemon running in this process.
pub struct Daemon {
    pub node: Arc<Node>,
    /// The metrics endpoint's socket (a duplicate of the one served), handed to the
    /// daemon a reload starts when the address stays: it is never closed, so a reload
    /// never fails to bind it and a scrape is never refused.
    metrics: Option<(std::net::SocketAddr, std::net::TcpListener)>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Daemon {
    /// Starts serving on `listener` and, when `watch` is set (always, for
    /// `gosyncd daemon`), watching the configured directories and pushing their changes.
    pub async fn start(
        config: Arc<Config>,
        listener: TcpListener,
        watch: bool,
    ) -> anyhow::Result<Daemon> {
        Daemon::start_with(config, listener, watch, None).await
    }

    /// [`Daemon::start`], or a reload's new daemon when `previous` is the daemon it
    /// replaces. A first start puts back batches that were never validated and
    /// removes temporary files left by an interrupted sync; a reload must not (the
    /// previous daemon may be writing some), and it applies received batches one at a
    /// time with the previous daemon while both run.
    pub async fn start_with(
        config: Arc<Config>,
        listener: TcpListener,
        watch: bool,
        previous: Option<&Daemon>,
    ) -> anyhow::Result<Daemon> {
        let clean = previous.is_none();
        let tls = TlsMaterial::load(&config)?;
        let server_tls = tls.server_config()?;
        // The state directory is this daemon's before anything is recovered or cleaned:
        // a second daemon on it must stop before it touches the first one's files.
        let spool = Spool::open(&config.state_directory)?;
        let (cache, baseline) = recover_and_scan(&config, clean).await?;
        // The spool of undelivered changes (opened above): shared with the daemon this
        // one replaces (same process, same state directory), read from disk on a first
        // start.
        let mut spooled = if clean {
            spool.clear();
            spool.load(&config)
        } else {
            Default::default()
        };
        // A reload's predecessor still uses the file: what it held is taken at the
        // hand-over (see `take_waiting_from`).
        let not_replayed = if clean && !config.role.sends() {
            set_spool_aside(&config, &spool, std::mem::take(&mut spooled))
        } else {
            Vec::new()
        };
        let mut node = Node::new(config.clone(), cache.clone(), Some(baseline.clone()));
        node.local_edits.note(not_replayed);
        node.spool = Some(spool.clone());
        if let Some(previous) = previous {
            node = node.applying_after(&previous.node);
        }
        let node = Arc::new(node);
        node.allow.refresh().await;
        let engine = Arc::new(
            Engine::new(
                config.clone(),
                &tls,
                cache,
                Some(node.identity.node_id.clone()),
            )
            .await?
            .answering_from(node.clone()),
        );
        if let Some(reason) = engine.no_peer_left() {
            warn!("{reason}");
        }
        // Every event's path is spooled as it arrives, before its burst ends; not on a
        // node that does not watch, nor on a receive-only one, which delivers nothing.
        let toucher = match watch && config.role.sends() {
            true => Some(
                watcher::Toucher::start(node.clone(), baseline.clone()).map_err(|e| {
                    anyhow::anyhow!("cannot start the watcher's spooling thread: {e}")
                })?,
            ),
            false => None,
        };
        let (queue, received) = Queue::new(
            WATCH_QUEUE_EVENTS,
            node.generation.clone(),
            toucher.as_ref().map(watcher::Toucher::handle),
            Some(node.placed.clone()),
        );
        // A name another process created where this node's receiver was placing a file
        // (which then failed) is looked at like any change.
        let missed = queue.detached();
        node.placed.on_missed(move |path| missed.look_at(path));
        let watch = if watch {
            let watch = watcher::watch(&config, queue)?;
            // From now on every change is counted: answers from the tree may be kept.
            node.generation.watched();
            Some(watch)
        } else {
            None
        };

        let (metrics_listener, metrics) = metrics_socket(&config, previous).await?;
        let (stop, stopped) = oneshot::channel();
        let (stopping, stop_requested) = watch_channel(false);
        let serving = node.clone();
        // One record and one delivering task per peer: a peer that is down never holds
        // the others back. They exist before `start` returns, so that a reload can hand
        // the previous daemon's waiting changes over to them at once.
        let records = peer_records(&engine, &spool, &spooled, &baseline).await;
        let _ = node.peers.set(records.clone());
        let task = tokio::spawn(run(Running {
            engine,
            node: serving,
            baseline,
            records,
            spool,
            received,
            watch,
            toucher,
            listener,
            server_tls,
            metrics: metrics_listener,
            stopped,
            stopping,
            stop_requested,
        }));
        Ok(Daemon {
            node,
            metrics,
            stop,
            task,
        })
    }

    /// Takes over the changes a stopped daemon still held for its peers (a reload), for
    /// the peers both know by their `remotes` entry. A receive-only node takes none: it
    /// delivers nothing, and they are its local edits not pushed (with those the stopped
    /// daemon kept, if it was receive-only too).
    pub fn take_waiting_from(&self, previous: &Node) {
        let (Some(mine), Some(theirs)) = (self.node.peers.get(), previous.peers.get()) else {
            return;
        };
        if self.node.config.role.sends() {
            for record in theirs {
                match mine.iter().find(|r| r.label() == record.label()) {
                    Some(successor) => record.outbox.hand_over(&successor.outbox),
                    None if !record.outbox.is_empty() => warn!(
                        peer = %record.label(),
                        pending = record.outbox.len(),
                        "peer no longer in remotes: its pending changes are dropped"
                    ),
                    None => {}
                }
            }
        } else {
            self.keep_as_local_edits(previous, theirs);
        }
        if let Some(spool) = &self.node.spool {
            for record in theirs {
                spool.forget(&record.outbox);
            }
            spool.save(true);
        }
    }

    /// A receive-only node's part of a reload: what the stopped daemon still had to
    /// deliver, and the local edits it kept if it was receive-only too, are this node's
    /// local edits not pushed.
    fn keep_as_local_edits(&self, previous: &Node, theirs: &[Arc<PeerRecord>]) {
        let edits = &self.node.local_edits;
        edits.note(previous.local_edits.first(usize::MAX));
        for record in theirs.iter().filter(|r| !r.outbox.is_empty()) {
            let paths: Vec<String> = record
                .outbox
                .snapshot()
                .into_keys()
                .map(|p| p.to_string())
                .collect();
            warn!(
                peer = %record.label(),
                pending = paths.len(),
                config = %self.node.config.file.display(),
                "this node is receive-only now: the changes waiting for this peer are not \
                 pushed, and show as drift if they still differ; run `gosyncd revert PATH` to \
                 take the group's version back, or make the change on a sending node"
            );
            edits.note(paths);
        }
    }

    /// Stops serving and watching.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The addresses `host` resolves to (none when it does not resolve within seconds).
async fn addresses_of(host: &str, port: u16) -> Vec<std::net::IpAddr> {
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(Duration::from_secs(2), lookup).await {
        Ok(Ok(found)) => found.map(|a| a.ip().to_canonical()).collect(),
        _ => Vec::new(),
    }
}

/// Logs the batches put back at start-up because they were never validated.
fn report_recovered(recovered: Vec<crate::rollback::Recovered>) {
    for done in recovered {
        if !done.paths.is_empty() {
            warn!(
                directory = %done.dir,
                paths = %done.paths.join(", "),
                "a received batch was not validated before this daemon stopped; its changes were put back"
            );
        }
        for (path, error) in done.failures {
            error!(directory = %done.dir, %path, %error, "cannot put back a change of a batch that was not validated");
        }
    }
}

/// Puts back what an interrupted validation left and removes stale temporary files (a
/// first start only: `clean`), then scans the trees: the hash cache and the versions
/// this daemon starts from.
async fn recover_and_scan(
    config: &Arc<Config>,
    clean: bool,
) -> anyhow::Result<(Arc<HashCache>, Arc<Baseline>)> {
    let config = config.clone();
    let scanned = tokio::task::spawn_blocking(move || {
        let stale = if clean {
            report_recovered(crate::rollback::recover(&config));
            apply::remove_stale_temp_files(&config)
        } else {
            0
        };
        if stale > 0 {
            info!(
                removed = stale,
                "removed temporary files left by an interrupted sync"
            );
        }
        let began = manifest::now_ns();
        let scan = manifest::scan(&config, &[], &HashCache::forgetful());
        let baseline = Arc::new(Baseline::of_scan(&config, scan.entries, began));
        crate::memory::give_back_soon();
        // The daemon's scans keep their hashes with the versions it knows.
        (Arc::new(HashCache::kept_by(baseline.clone())), baseline)
    })
    .await?;
    Ok(scanned)
}

/// The metrics endpoint's socket, if one is configured: the previous daemon's when a
/// reload keeps the address, else a new one. Returns the listener to serve and the
/// socket to keep for the next reload.
async fn metrics_socket(
    config: &Config,
    previous: Option<&Daemon>,
) -> anyhow::Result<(
    Option<TcpListener>,
    Option<(std::net::SocketAddr, std::net::TcpListener)>,
)> {
    let Some(address) = config.metrics_address else {
        return Ok((None, None));
    };
    let kept = previous
        .and_then(|p| p.metrics.as_ref())
        .filter(|(at, _)| *at == address)
        .map(|(_, socket)| socket.try_clone())
        .transpose()?;
    let socket = match kept {
        Some(socket) => socket,
        None => crate::metrics::bind(address).await?.into_std()?,
    };
    let serving = TcpListener::from_std(socket.try_clone()?)?;
    Ok((Some(serving), Some((address, socket))))
}

/// A receive-only node replays no spool: what an earlier send-receive run left
/// undelivered are this node's own edits, which it does not push now. The file is moved
/// aside (kept for the operator, never replayed) and that is said; returns its paths,
/// local edits not pushed until the first comparison finds which still differ.
fn set_spool_aside(config: &Config, spool: &Spool, spooled: Spooled) -> Vec<String> {
    let paths: std::collections::BTreeSet<String> = spooled
        .into_values()
        .flat_map(BTreeMap::into_keys)
        .map(|p| p.to_string())
        .collect();
    match spool.set_aside() {
        Ok(None) => {}
        Ok(Some(aside)) => warn!(
            file = %aside.display(),
            paths = paths.len(),
            config = %config.file.display(),
            "this node is receive-only: the spool of changes an earlier send-receive run left \
             undelivered is not replayed, and was moved aside to {}; those that still differ \
             from the peers show as drift: run `gosyncd revert PATH` to take the group's \
             version back, or make the change on a sending node",
            aside.display()
        ),
        Err(e) => error!(
            file = %spool.file().display(),
            "this node is receive-only: the spool an earlier send-receive run left is not \
             replayed, but cannot be moved aside: {e}; remove it by hand"
        ),
    }
    paths.into_iter().collect()
}

/// What the spool held for a peer, each waiting path marked as possibly delivered with
/// this node's version (`baseline`): the previous daemon may have pushed it and been
/// stopped before it could write the spool again. The first delivery then asks the peer
/// which version it holds, instead of expecting the older one and calling this node's
/// own version a conflict. Held paths stay as they are.
fn maybe_delivered(
    spooled: &BTreeMap<LogicalPath, Known>,
    baseline: &Baseline,
) -> BTreeMap<LogicalPath, Known> {
    spooled
        .iter()
        .map(|(path, known)| {
            let mut known = known.clone();
            if known.sent.is_none() && known.held.is_none() {
                known.sent = Some(Box::new(Sent {
                    entry: baseline.get(path),
                }));
            }
            (path.clone(), known)
        })
        .collect()
}

/// One record per peer, registered with the spool, with what the spool still held for
/// it put back in its outbox (and its delivery woken).
async fn peer_records(
    engine: &Engine,
    spool: &Arc<Spool>,
    spooled: &Spooled,
    baseline: &Baseline,
) -> Vec<Arc<PeerRecord>> {
    // Resolved together: a slow name must not hold up the start once per peer.
    let addresses = futures_util::future::join_all(
        engine
            .peers()
            .iter()
            .map(|link| addresses_of(&link.peer.remote.host, link.peer.remote.port)),
    )
    .await;
    let mut records = Vec::new();
    let mut replayed = 0;
    for (link, addresses) in engine.peers().iter().zip(addresses) {
        let record = Arc::new(PeerRecord::new(link.clone(), addresses));
        spool.register(record.label(), record.outbox.clone());
        if let Some(known) = spooled.get(record.label()) {
            // Delivered with the local tree's current content: the delivery plans from
            // the versions scanned at the start against what the peer holds.
            replayed += known.len();
            record.outbox.restore(maybe_delivered(known, baseline));
            record.outbox.wake();
        }
        records.push(record);
    }
    if replayed > 0 {
        info!(
            paths = replayed,
            file = %spool.file().display(),
            "changes not delivered before the last stop are delivered now"
        );
    }
    records
}

/// What a started daemon runs with until it is stopped.
struct Running {
    engine: Arc<Engine>,
    node: Arc<Node>,
    baseline: Arc<Baseline>,
    records: Vec<Arc<PeerRecord>>,
    spool: Arc<Spool>,
    received: watcher::QueueReceiver,
    watch: Option<watcher::Watch>,
    toucher: Option<watcher::Toucher>,
    listener: TcpListener,
    server_tls: std::sync::Arc<rustls::ServerConfig>,
    metrics: Option<TcpListener>,
    stopped: oneshot::Receiver<()>,
    stopping: tokio::sync::watch::Sender<bool>,
    stop_requested: tokio::sync::watch::Receiver<bool>,
}

/// A daemon's life: a delivering task per peer, the propagation loop, the periodic
/// comparison and the metrics beside the API server; once the server stops, the watch
/// ends and pushes under way are let finish, within [`SHUTDOWN_DEADLINE`].
async fn run(running: Running) {
    let serving = running.node;
    // A receive-only node delivers nothing: no delivering task at all.
    let sends = serving.config.role.sends();
    let mut workers: Vec<_> = running
        .records
        .into_iter()
        .filter(|_| sends)
        .map(|record| {
            tokio::spawn(watcher::deliver(
                running.engine.clone(),
                serving.clone(),
                running.baseline.clone(),
                record,
                Some(running.spool.clone()),
                running.stop_requested.clone(),
            ))
        })
        .collect();
    let propagation = tokio::spawn(watcher::propagate(
        running.engine.clone(),
        serving.clone(),
        running.baseline,
        running.received,
        running.watch,
        running.toucher,
    ));
    let drift = tokio::spawn(crate::reconcile::reconcile(running.engine, serving.clone()));
    let metrics = running
        .metrics
        .map(|listener| tokio::spawn(crate::metrics::serve(listener, serving.clone())));
    let stopped = running.stopped;
    server::serve(running.listener, running.server_tls, serving, async {
        let _ = stopped.await;
    })
    .await;
    // Stop watching, let pushes under way finish (within a deadline), then go.
    propagation.abort();
    drift.abort();
    if let Some(metrics) = &metrics {
        metrics.abort();
    }
    // An aborted task is dropped at its next turn, not at once: awaited, the watcher (and
    // the paths it notes), the comparison and the metrics listener are gone before this
    // daemon is, so that one started again at once on the same state and addresses
    // neither meets their late events nor finds the metrics address taken.
    let _ = propagation.await;
    let _ = drift.await;
    if let Some(metrics) = metrics {
        let _ = metrics.await;
    }
    let _ = running.stopping.send(true);
    let finishing = async {
        for worker in workers.iter_mut() {
            let _ = worker.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_DEADLINE, finishing)
        .await
        .is_err()
    {
        warn!("pushes still under way after {SHUTDOWN_DEADLINE:?}: stopping anyway");
        for worker in workers {
            worker.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Held;
    use crate::testing::file_entry;

    #[test]
    fn spooled_paths_are_asked_about_before_they_are_pushed_again_held_ones_stay() {
        let baseline = Baseline::new(
            [
                ("/d/new".into(), file_entry(b"ours")),
                ("/d/held".into(), file_entry(b"ours too")),
            ]
            .into_iter()
            .collect(),
        );
        let waiting = Known {
            holds: None,
            held: None,
            sent: None,
            provisional: false,
        };
        let held = Known {
            held: Some(Box::new(Held::Conflict("edited there".into()))),
            ..waiting.clone()
        };
        let under_way = Known {
            sent: Some(Box::new(Sent {
                entry: Some(file_entry(b"an older one")),
            })),
            ..waiting.clone()
        };
        let spooled: BTreeMap<LogicalPath, Known> = [
            ("/d/new".into(), waiting.clone()),
            ("/d/held".into(), held.clone()),
            ("/d/gone".into(), waiting.clone()),
            ("/d/sent".into(), under_way.clone()),
        ]
        .into_iter()
        .collect();
        let replayed = maybe_delivered(&spooled, &baseline);
        assert_eq!(
            replayed["/d/new"].sent.as_deref(),
            Some(&Sent {
                entry: Some(file_entry(b"ours"))
            })
        );
        // Deleted here since: what may have been delivered is the deletion.
        assert_eq!(
            replayed["/d/gone"].sent.as_deref(),
            Some(&Sent { entry: None })
        );
        assert_eq!(replayed["/d/held"], held);
        assert_eq!(replayed["/d/sent"], under_way);
        assert_eq!(replayed["/d/new"].holds, None, "what the peer held is kept");
    }
}
