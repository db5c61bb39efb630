//! The daemon command: it binds the listening socket once, starts the [`Daemon`], and
//! tells systemd when it is ready. On SIGHUP it reloads the configuration and
//! certificates, starting the next daemon on the same socket before stopping the
//! previous one; on SIGTERM or SIGINT it stops. SIGXFSZ is drained so that an oversized
//! write fails one file instead of killing the process.
//!
//! It only runs and replaces daemons: serving, watching and applying are left to
//! [`crate::daemon`] and the modules it starts.

use std::process::ExitCode;
use std::sync::Arc;

use tracing::{error, info};

use crate::config::Config;
use crate::daemon::Daemon;
use crate::server;

pub(super) async fn daemon(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::from_file(path)?);
    // A write over the file-size resource limit must fail that one file (EFBIG, reported
    // to the sender) rather than kill the daemon, as SIGXFSZ does by default. A handler
    // of our own replaces the default action; the signals are only drained.
    let mut file_size_exceeded =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25))
            .map_err(|e| anyhow::anyhow!("cannot handle SIGXFSZ: {e}"))?;
    tokio::spawn(async move { while file_size_exceeded.recv().await.is_some() {} });
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot handle SIGHUP: {e}"))?;

    // The listening socket outlives each daemon: a reload starts the next one on it
    // before the previous one stops, so no connection is refused.
    let socket = server::bind(&config.bind_address)
        .await
        .map_err(|e| anyhow::anyhow!("bind_address {}: cannot listen: {e}", config.bind_address))?
        .into_std()?;
    let address = socket.local_addr()?;
    let listener = || -> anyhow::Result<tokio::net::TcpListener> {
        Ok(tokio::net::TcpListener::from_std(socket.try_clone()?)?)
    };
    let mut daemon = Daemon::start(config.clone(), listener()?, true).await?;
    log_started(&daemon, address);
    notify(&[sd_notify::NotifyState::Ready]);

    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = hangup.recv() => {}
        }
        notify(&[sd_notify::NotifyState::Reloading]);
        match reload(path, &daemon.node.config, address).await {
            Err(e) => error!("reload refused, the running configuration stays: {e:#}"),
            Ok(next_config) => {
                match Daemon::start_with(next_config, listener()?, true, Some(&daemon.node)).await {
                    Err(e) => error!("reload refused, the running configuration stays: {e:#}"),
                    Ok(next) => {
                        let previous = std::mem::replace(&mut daemon, next);
                        let node = previous.node.clone();
                        previous.stop().await;
                        daemon.take_waiting_from(&node);
                        log_started(&daemon, address);
                        info!(file = %path.display(), "configuration and certificates reloaded");
                    }
                }
            }
        }
        notify(&[sd_notify::NotifyState::Ready]);
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    daemon.stop().await;
    info!("gosyncd daemon stopped");
    Ok(ExitCode::SUCCESS)
}

/// Reads and checks the configuration file again for a reload: the file, and that it
/// listens where the running daemon does (its certificates are loaded by the new daemon).
async fn reload(
    path: &std::path::Path,
    running: &Config,
    address: std::net::SocketAddr,
) -> anyhow::Result<Arc<Config>> {
    let next = Config::from_file(path)?;
    if next.bind_address != running.bind_address {
        anyhow::bail!(
            "{}: bind_address changed from {} to {}: that needs a restart (the daemon listens on {address})",
            path.display(),
            running.bind_address,
            next.bind_address
        );
    }
    Ok(Arc::new(next))
}

fn log_started(daemon: &Daemon, address: std::net::SocketAddr) {
    let config = &daemon.node.config;
    info!(
        %address,
        node_id = %daemon.node.identity.node_id,
        directories = config.directories.len(),
        debounce_ms = config.debounce.as_millis() as u64,
        "gosyncd daemon listening and watching"
    );
}

/// Tells systemd (`Type=notify`) how the daemon stands; nothing when not under systemd.
fn notify(states: &[sd_notify::NotifyState]) {
    let _ = sd_notify::notify(false, states);
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
