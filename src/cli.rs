//! The command line: clap definitions, Go-style `-flag` normalisation (the original tool's
//! `gosyncd -config F sync -dry` keeps working), and the dispatch of each command.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, CommandFactory, Parser, Subcommand};
use tracing::{error, info};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::daemon::Daemon;
use crate::server;
use crate::sync::{self, Options, Report};
use crate::tls::TlsMaterial;

const ABOUT: &str = "Keeps configuration directories identical on every server of a group";

const LONG_ABOUT: &str = "\
Keeps configuration directories (/etc/haproxy, /etc/nginx, ...) identical on every server
of a group. Every node runs the daemon, an HTTPS API with mutual TLS; on the node where
files were edited, `gosyncd sync` pushes the local tree to every peer as authoritative.

Without a command, gosyncd runs the daemon, as the original tool did.";

const EXAMPLES: &str = "\
Examples:
  gosyncd -config /etc/gosyncd/config.hcl                 run the daemon
  gosyncd -config /etc/gosyncd/config.hcl sync -dry       show what would change on each peer
  gosyncd -config /etc/gosyncd/config.hcl sync            push this node's tree to every peer
  gosyncd sync /etc/haproxy/conf.d                        push one subtree only
  gosyncd sync -dry --format json                         the same as JSON lines, for audits
  gosyncd status                                          how every peer stands (a monitoring check)
  gosyncd backups restore /etc/haproxy/haproxy.cfg        put the last kept version back
  gosyncd cert self-signed --out /etc/gosyncd 10.0.0.2 10.0.0.3
                                                          make the group's certificate
  gosyncd demo                                            try a three-node group on this machine

Exit codes: 0 success; 1 with `sync -dry --exit-code` when changes are pending;
2 when anything failed (a peer unreachable, an operation refused, an invalid config).";

#[derive(Parser, Debug)]
#[command(name = "gosyncd", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Configuration file (HCL)
    #[arg(long, global = true, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Log at debug level (RUST_LOG overrides)
    #[arg(short = 'd', long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: serve this node's directories to its peers (the default)
    Daemon,
    /// Push this node's directories to every peer; this node is authoritative
    Sync(SyncArgs),
    /// Show what `sync` would change on each peer (the same as `sync -dry`)
    State(StateArgs),
    /// Check the configuration and certificates, then exit (0 valid, 2 invalid)
    CheckConfig,
    /// Start a throw-away three-node group on 127.0.0.2-4 and show a sync
    Demo(DemoArgs),
    /// Make the group's certificates: a CA and node certificates, or one self-signed
    #[command(long_about = crate::certgen::CERT_LONG_ABOUT)]
    Cert(crate::certgen::CertArgs),
    /// Ask every peer how it stands: reachable, latency, version, drift, pending changes,
    /// conflicts, last push (exit 0 all well, 1 drift, 2 a peer unreachable)
    Status(StatusArgs),
    /// List or restore the versions kept by the backup setting
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell
    Completions(crate::docs::CompletionsArgs),
    /// Print the man page gosyncd(1), or write every page into a directory with --out
    Man(crate::docs::ManArgs),
}

/// How results are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Lines for people, in the original tool's form
    #[default]
    Text,
    /// One JSON object per line, for scripts and audits
    Json,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Subcommand, Debug)]
pub enum BackupsCommand {
    /// List the kept versions (of PATH and below, or of every directory)
    List {
        /// A file or directory inside a configured directory
        #[arg(value_name = "PATH")]
        path: Option<String>,
        /// Output format
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Put a kept version of PATH back (the newest, or VERSION); the daemon then pushes
    /// it like any other edit, and the version it replaces is kept in turn
    Restore {
        /// The file to restore
        #[arg(value_name = "PATH")]
        path: String,
        /// The version, as `backups list` shows it
        #[arg(value_name = "VERSION")]
        version: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Print what would change on each peer; change nothing
    #[arg(long = "dry-run", visible_alias = "dry")]
    pub dry_run: bool,

    /// With --dry-run: exit 1 when changes are pending (and nothing failed)
    #[arg(long)]
    pub exit_code: bool,

    /// Push even when it deletes every entry of a configured directory on a peer, or
    /// more than max_delete_share of them (refused by default: an unmounted or emptied
    /// directory on this node looks just like that)
    #[arg(long)]
    pub force: bool,

    /// With --dry-run: show a unified diff of each changed text file, per peer
    #[arg(long, requires = "dry_run")]
    pub diff: bool,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Limit the sync to these files or subtrees (absolute paths inside configured directories)
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StateArgs {
    /// Exit 1 when changes are pending (and nothing failed)
    #[arg(long)]
    pub exit_code: bool,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Limit the report to these files or subtrees
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Run the scenario and exit instead of waiting for Ctrl-C
    #[arg(long)]
    pub no_wait: bool,
}

/// Rewrites Go-style single-dash long flags (`-config`, `-dry`, `-config=F`) into their
/// `--` form. Only names clap knows as long flags or aliases are rewritten; everything
/// after `--` is left alone.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut longs = Vec::new();
    collect_long_names(&Cli::command(), &mut longs);
    let mut out = Vec::new();
    let mut rest_is_positional = false;
    for arg in args {
        let rewritten = match arg.to_str() {
            Some("--") => {
                rest_is_positional = true;
                None
            }
            Some(text)
                if !rest_is_positional && text.starts_with('-') && !text.starts_with("--") =>
            {
                let name = text[1..].split('=').next().unwrap_or_default();
                (name.len() > 1 && longs.iter().any(|l| l == name))
                    .then(|| OsString::from(format!("-{text}")))
            }
            _ => None,
        };
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

fn collect_long_names(command: &clap::Command, out: &mut Vec<String>) {
    for arg in command.get_arguments() {
        out.extend(arg.get_long().map(str::to_string));
        out.extend(
            arg.get_all_aliases()
                .into_iter()
                .flatten()
                .map(str::to_string),
        );
    }
    out.extend(["help".to_string(), "version".to_string()]);
    for sub in command.get_subcommands() {
        collect_long_names(sub, out);
    }
}

/// Runs the parsed command and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        None | Some(Command::Daemon) => daemon(&cli.config).await,
        Some(Command::Sync(args)) => {
            let mode = SyncMode {
                dry_run: args.dry_run,
                exit_code: args.exit_code,
                force: args.force,
                diff: args.diff,
                format: args.format,
            };
            sync_command(&cli.config, args.paths, mode).await
        }
        Some(Command::State(args)) => {
            let mode = SyncMode {
                dry_run: true,
                exit_code: args.exit_code,
                force: false,
                diff: false,
                format: args.format,
            };
            sync_command(&cli.config, args.paths, mode).await
        }
        Some(Command::Status(args)) => status_command(&cli.config, args.format).await,
        Some(Command::Backups(command)) => backups_command(&cli.config, command),
        Some(Command::CheckConfig) => check_config(&cli.config),
        Some(Command::Demo(args)) => crate::demo::run(!args.no_wait).await,
        Some(Command::Cert(args)) => crate::certgen::command(args),
        Some(Command::Completions(args)) => crate::docs::completions(args),
        Some(Command::Man(args)) => crate::docs::man(args),
    };
    result.unwrap_or_else(|e| {
        error!("{e:#}");
        ExitCode::from(2)
    })
}

fn load(config: &std::path::Path) -> anyhow::Result<(Arc<Config>, TlsMaterial)> {
    let config = Config::from_file(config)?;
    let tls = TlsMaterial::load(&config)?;
    Ok((Arc::new(config), tls))
}

fn check_config(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (config, tls) = load(path)?;
    tls.server_config()?;
    tls.client_config()?;
    println!(
        "{}: valid ({} directories, {} remotes)",
        path.display(),
        config.directories.len(),
        config.remotes.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn daemon(path: &std::path::Path) -> anyhow::Result<ExitCode> {
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
    log_started(&daemon, &config, address);
    notify(&[sd_notify::NotifyState::Ready]);

    let mut config = config;
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = hangup.recv() => {}
        }
        notify(&[sd_notify::NotifyState::Reloading]);
        match reload(path, &config, address).await {
            Err(e) => error!("reload refused, the running configuration stays: {e:#}"),
            Ok(next_config) => {
                match Daemon::start_with(next_config.clone(), listener()?, true, false).await {
                    Err(e) => error!("reload refused, the running configuration stays: {e:#}"),
                    Ok(next) => {
                        let previous = std::mem::replace(&mut daemon, next);
                        let node = previous.node.clone();
                        previous.stop().await;
                        daemon.take_waiting_from(&node);
                        config = next_config;
                        log_started(&daemon, &config, address);
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

/// Reads and checks the configuration file again for a reload: the file, its
/// certificates, and that it listens where the running daemon does.
async fn reload(
    path: &std::path::Path,
    running: &Config,
    address: std::net::SocketAddr,
) -> anyhow::Result<Arc<Config>> {
    let next = Config::from_file(path)?;
    TlsMaterial::load(&next)?.server_config()?;
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

fn log_started(daemon: &Daemon, config: &Config, address: std::net::SocketAddr) {
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

/// How a sync runs and prints.
#[derive(Clone, Copy, Debug)]
struct SyncMode {
    dry_run: bool,
    exit_code: bool,
    force: bool,
    diff: bool,
    format: Format,
}

async fn sync_command(
    path: &std::path::Path,
    paths: Vec<String>,
    mode: SyncMode,
) -> anyhow::Result<ExitCode> {
    let SyncMode {
        dry_run,
        exit_code,
        force,
        diff,
        format,
    } = mode;
    let config = Arc::new(Config::from_file(path)?);
    let engine = sync::engine_for_cli(config).await?;
    let options = Options {
        scope: paths
            .into_iter()
            .map(|p| match p.trim_end_matches('/') {
                "" => "/".to_string(),
                trimmed => trimmed.to_string(),
            })
            .collect(),
        dry_run,
        force,
        diff,
    };
    if format == Format::Json {
        let report = engine
            .run(&options, |peer| print_peer_json(peer, dry_run))
            .await;
        for e in &report.local_errors {
            json_line(&serde_json::json!({ "time": now_rfc3339(), "error": e }));
        }
        let changes: usize = report.peers.iter().map(|p| p.changes.len()).sum();
        json_line(&serde_json::json!({
            "time": now_rfc3339(),
            "summary": {
                "dry_run": dry_run,
                "peers": report.peers.len(),
                "changes": changes,
                "failed": report.failed(),
            }
        }));
        return Ok(exit_code_of(&report, dry_run && exit_code));
    }
    if dry_run {
        println!("synchronization dry run");
    }
    let report = engine.run(&options, print_peer).await;
    Ok(exit_code_of(&report, dry_run && exit_code))
}

fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

fn json_line(value: &serde_json::Value) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// A peer's results as JSON lines: one per change, per command the peer ran, and for
/// an error.
fn print_peer_json(report: &sync::PeerReport, dry_run: bool) {
    use crate::protocol::ChangeKind;
    for change in &report.changes {
        let (kind, reason) = match &change.status {
            sync::ChangeStatus::Done(ChangeKind::Added) => ("added", None),
            sync::ChangeStatus::Done(ChangeKind::Updated) => ("updated", None),
            sync::ChangeStatus::Done(ChangeKind::Deleted) => ("deleted", None),
            sync::ChangeStatus::Skipped(r) => ("skipped", Some(r)),
            sync::ChangeStatus::Kept(r) => ("kept", Some(r)),
            sync::ChangeStatus::Rejected(r) => ("rejected", Some(r)),
        };
        json_line(&serde_json::json!({
            "time": now_rfc3339(),
            "peer": change.peer,
            "path": change.path,
            "change": kind,
            "reason": reason,
            "dry_run": dry_run,
        }));
    }
    for action in &report.actions {
        let a = &action.report;
        json_line(&serde_json::json!({
            "time": now_rfc3339(),
            "peer": action.peer,
            "directory": a.directory,
            "on_change": a.command,
            "ok": a.success,
            "code": a.code,
            "first_line": a.first_line,
        }));
    }
    for (path, diff) in &report.diffs {
        json_line(&serde_json::json!({
            "time": now_rfc3339(),
            "peer": report.peer,
            "path": path,
            "diff": diff,
        }));
    }
    if let Some(e) = &report.error {
        json_line(&serde_json::json!({
            "time": now_rfc3339(),
            "peer": report.peer,
            "error": e,
            "refused": report.refused,
        }));
    }
}

async fn status_command(path: &std::path::Path, format: Format) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::from_file(path)?);
    let peers = crate::ops::status(config).await?;
    match format {
        Format::Json => {
            for peer in &peers {
                json_line(&serde_json::to_value(peer)?);
            }
        }
        Format::Text => print!("{}", crate::ops::status_table(&peers)),
    }
    Ok(ExitCode::from(crate::ops::status_code(&peers)))
}

fn backups_command(path: &std::path::Path, command: BackupsCommand) -> anyhow::Result<ExitCode> {
    let config = Config::from_file(path)?;
    match command {
        BackupsCommand::List { path, format } => {
            let versions = crate::ops::backups_list(&config, path.as_deref())?;
            for v in &versions {
                match format {
                    Format::Json => json_line(&serde_json::to_value(v)?),
                    Format::Text => println!(
                        "{}  {}  {}  {}",
                        v.version,
                        v.path,
                        v.entry.describe(),
                        v.reason
                    ),
                }
            }
            if versions.is_empty() && format == Format::Text {
                eprintln!("no kept versions");
            }
        }
        BackupsCommand::Restore { path, version } => {
            let restored = crate::ops::backups_restore(&config, &path, version.as_deref())?;
            println!(
                "{}: restored {} ({})",
                timestamp(),
                restored.path,
                restored.version
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a peer's lines in the original tool's form, with the date.
pub fn print_peer(report: &sync::PeerReport) {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for change in &report.changes {
        let _ = writeln!(out, "{}: {change}", timestamp());
    }
    for action in &report.actions {
        let _ = writeln!(out, "{}: {action}", timestamp());
    }
    for (_, diff) in &report.diffs {
        let _ = write!(out, "{diff}");
    }
    let _ = out.flush();
    if let Some(e) = &report.error {
        error!(peer = %report.peer, "peer not synchronised: {e}");
    }
}

/// `2026/11/23 12:14:27 +0000`: year, month, day, local time and offset.
pub fn timestamp() -> String {
    chrono::Local::now()
        .format("%Y/%m/%d %H:%M:%S %z")
        .to_string()
}

fn exit_code_of(report: &Report, pending_is_one: bool) -> ExitCode {
    for e in &report.local_errors {
        error!("{e}");
    }
    if report.failed() {
        ExitCode::from(2)
    } else if pending_is_one && report.has_changes() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(normalize_args(args.iter().map(OsString::from))).unwrap()
    }

    #[test]
    fn go_style_flags_keep_working() {
        let cli = parse(&["gosyncd", "-config", "/x.hcl", "sync", "-dry"]);
        assert_eq!(cli.config, PathBuf::from("/x.hcl"));
        assert!(matches!(
            cli.command,
            Some(Command::Sync(SyncArgs { dry_run: true, .. }))
        ));
        let cli = parse(&[
            "gosyncd",
            "--config",
            "/x.hcl",
            "sync",
            "--dry-run",
            "--exit-code",
        ]);
        assert!(matches!(
            cli.command,
            Some(Command::Sync(SyncArgs {
                dry_run: true,
                exit_code: true,
                ..
            }))
        ));
        let cli = parse(&["gosyncd", "-config=/y.hcl", "-debug"]);
        assert_eq!(cli.config, PathBuf::from("/y.hcl"));
        assert!(cli.debug && cli.command.is_none());
        assert!(parse(&["gosyncd", "-d", "state"]).debug);
    }

    #[test]
    fn sync_takes_paths_and_state_is_a_dry_run() {
        let cli = parse(&["gosyncd", "sync", "/etc/haproxy/conf.d", "/etc/nginx"]);
        let Some(Command::Sync(args)) = cli.command else {
            panic!("not sync")
        };
        assert_eq!(args.paths, ["/etc/haproxy/conf.d", "/etc/nginx"]);
        assert!(!args.dry_run);
        assert!(matches!(
            parse(&["gosyncd", "state"]).command,
            Some(Command::State(_))
        ));
    }

    #[test]
    fn unknown_single_dash_words_are_not_rewritten() {
        let args = normalize_args(["gosyncd", "-nosuch", "--", "-config"].map(OsString::from));
        assert_eq!(
            args,
            ["gosyncd", "-nosuch", "--", "-config"].map(OsString::from)
        );
    }

    #[test]
    fn help_explains_the_commands() {
        let help = Cli::command().render_long_help().to_string();
        for word in [
            "sync",
            "state",
            "check-config",
            "demo",
            "daemon",
            "Exit codes",
        ] {
            assert!(help.contains(word), "help lacks {word}");
        }
    }
}
