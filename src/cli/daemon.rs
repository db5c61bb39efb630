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
    // What the configuration alone decides is checked first: an error there ends the
    // daemon with status 2, which the unit does not restart (a restart cannot fix it).
    let config = Arc::new(Config::from_file(path)?);
    crate::tls::TlsMaterial::load(&config)?;
    check_writable(&config).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // A write over the file-size resource limit must fail that one file (EFBIG, reported
    // to the sender) rather than kill the daemon, as SIGXFSZ does by default. A handler
    // of our own replaces the default action; the signals are only drained.
    let mut file_size_exceeded = tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw()),
    )
    .map_err(|e| anyhow::anyhow!("cannot handle SIGXFSZ: {e}"))?;
    tokio::spawn(async move { while file_size_exceeded.recv().await.is_some() {} });
    raise_descriptor_limit();
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot handle SIGHUP: {e}"))?;

    // The listening socket outlives each daemon: a reload starts the next one on it
    // before the previous one stops, so no connection is refused. It may fail for a
    // while (an address not up yet, a previous daemon still stopping): status 1, which
    // the unit restarts.
    let socket = match server::bind(&config.bind_address).await {
        Ok(socket) => socket.into_std()?,
        Err(e) => {
            error!("bind_address {}: cannot listen: {e}", config.bind_address);
            notify(&[sd_notify::NotifyState::Status(&format!(
                "cannot listen on {}: {e}",
                config.bind_address
            ))]);
            return Ok(ExitCode::FAILURE);
        }
    };
    let address = socket.local_addr()?;
    let listener = || -> anyhow::Result<tokio::net::TcpListener> {
        Ok(tokio::net::TcpListener::from_std(socket.try_clone()?)?)
    };
    let mut daemon = match Daemon::start(config.clone(), listener()?, true).await {
        Ok(daemon) => daemon,
        Err(e) => {
            error!("{e:#}");
            notify(&[sd_notify::NotifyState::Status(&format!("{e:#}"))]);
            return Ok(ExitCode::FAILURE);
        }
    };
    log_started(&daemon, address);
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&serving_status(&daemon, address, "started")),
    ]);

    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = hangup.recv() => {}
        }
        notify(&[sd_notify::NotifyState::Reloading]);
        let reloaded = match reload(path, &daemon.node.config, address).await {
            Err(e) => Err(e),
            Ok(next_config) => {
                Daemon::start_with(next_config, listener()?, true, Some(&daemon)).await
            }
        };
        let status = match reloaded {
            Err(e) => {
                error!("reload refused, the running configuration stays: {e:#}");
                format!("reload refused, the running configuration stays: {e:#}")
            }
            Ok(next) => {
                let previous = std::mem::replace(&mut daemon, next);
                let node = previous.node.clone();
                previous.stop().await;
                daemon.take_waiting_from(&node);
                log_started(&daemon, address);
                info!(file = %path.display(), "configuration and certificates reloaded");
                serving_status(&daemon, address, "reloaded")
            }
        };
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    daemon.stop().await;
    info!("gosyncd daemon stopped");
    Ok(ExitCode::SUCCESS)
}

/// Reads and checks the configuration file again for a reload: the file, that it
/// listens where the running daemon does, and that it can write where it must (its
/// certificates are loaded by the new daemon).
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
    check_writable(&next).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Arc::new(next))
}

/// The unit's status line (`systemctl status`) while the daemon serves.
fn serving_status(daemon: &Daemon, address: std::net::SocketAddr, how: &str) -> String {
    let when = chrono::Local::now().format("%Y-%m-%d %H:%M:%S %z");
    format!(
        "{how} at {when}: listening on {address}, watching {} directories",
        daemon.node.config.directories.len()
    )
}

/// Raises the soft limit on open descriptors to the hard one, as a server that holds
/// many may: a received batch keeps its contents in open anonymous files until it is
/// carried out, as many as half the soft limit allows.
fn raise_descriptor_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!(error = %e, "cannot raise the limit on open descriptors");
        }
    }
}

/// Checks that this process can write every place the configuration names: each
/// configured directory that exists (a missing one is only warned about, and watched
/// once it appears), each backup directory and the state directory (or, for one not
/// made yet, the directory it will be made in). Under systemd, a place the unit's
/// sandbox keeps read-only is named with the line to add.
pub(crate) fn check_writable(config: &Config) -> Result<(), String> {
    let mut places: Vec<(String, std::path::PathBuf)> = config
        .directories
        .iter()
        .filter(|dir| config.local_path(&dir.path).exists())
        .map(|dir| {
            let local = config.local_path(&dir.path);
            let what = if local.as_os_str() == dir.path.as_str() {
                format!("configured directory {}", dir.path)
            } else {
                format!("configured directory {} (at {})", dir.path, local.display())
            };
            (what, local)
        })
        .collect();
    for backup in config.directories.iter().filter_map(|d| d.backup.as_ref()) {
        let what = format!("backup directory {}", backup.directory.display());
        places.push((what, backup.directory.clone()));
    }
    let what = format!("state_directory {}", config.state_directory.display());
    places.push((what, config.state_directory.clone()));
    let mut seen = std::collections::HashSet::new();
    places.retain(|(_, path)| seen.insert(path.clone()));
    let systemd = std::env::var_os("INVOCATION_ID").is_some();
    for (what, path) in places {
        // The nearest existing directory: the one a missing place is made in.
        let existing = path.ancestors().find(|p| p.exists()).unwrap_or(&path);
        let checked =
            rustix::fs::access(existing, rustix::fs::Access::WRITE_OK).map_err(|e| (e, existing));
        let Err((error, at)) = checked else { continue };
        let here = if at == path {
            String::new()
        } else {
            format!(
                " (it does not exist yet, and {} cannot be written)",
                at.display()
            )
        };
        let fix = match error {
            rustix::io::Errno::ROFS if systemd => format!(
                "the service's sandbox keeps it read-only: run `systemctl edit gosyncd`, add \
                 the two lines `[Service]` and `ReadWritePaths={}`, then `systemctl restart \
                 gosyncd`",
                at.display()
            ),
            rustix::io::Errno::ROFS => "it is on a read-only file system: mount it \
                 read-write or configure another place"
                .to_string(),
            _ => format!(
                "run the daemon as a user that can write there (it runs as uid {})",
                rustix::process::geteuid().as_raw()
            ),
        };
        return Err(format!(
            "{what} is not writable by this daemon{here}: {error}; {fix}"
        ));
    }
    Ok(())
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
