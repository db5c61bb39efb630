//! The one-shot commands: `sync` and `state`, `status`, `backups` and `check-config`,
//! each of which loads the configuration, does its work and returns an exit code; and
//! how their results are printed, as lines in the original tool's form or as JSON lines
//! (on a terminal, with the progress `progress` draws on stderr and a summary line).
//!
//! It only calls into the engine and the operations in [`super::ops`] and prints what
//! they return; it neither parses arguments nor decides anything about a peer itself.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use tracing::error;

use super::progress::SyncProgress;
use super::records;
use super::{BackupsCommand, Format};
use crate::config::Config;
use crate::sync::{self, Options, Report};
use crate::tls::TlsMaterial;

fn load(config: &std::path::Path) -> anyhow::Result<(Arc<Config>, TlsMaterial)> {
    let config = Config::from_file(config)?;
    // Named like a configuration error: the file first.
    let tls = TlsMaterial::load(&config)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", config.file.display()))?;
    Ok((Arc::new(config), tls))
}

/// Checks the file, then whether the setup it describes can work on this host (see
/// [`super::preflight`]): every issue on stderr, naming the file; exit 2 when any is an
/// error, 0 when there are only warnings.
pub(super) async fn check_config(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (config, tls) = load(path)?;
    tls.server_config()?;
    tls.client_config()?;
    let issues = super::preflight::check(&config, &tls).await;
    for issue in &issues {
        eprintln!("{}: {issue}", path.display());
    }
    let count = |severity| issues.iter().filter(|i| i.severity == severity).count();
    let (errors, warnings) = (
        count(super::preflight::Severity::Error),
        count(super::preflight::Severity::Warning),
    );
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    if errors > 0 {
        println!(
            "{}: not valid: {}, {}",
            path.display(),
            plural(errors, "error"),
            plural(warnings, "warning")
        );
        return Ok(ExitCode::from(2));
    }
    let noted = if warnings > 0 {
        format!(", {}", plural(warnings, "warning"))
    } else {
        String::new()
    };
    let role = match config.role.sends() {
        true => String::new(),
        false => format!(", {}", config.role),
    };
    println!(
        "{}: valid ({} directories, {} remotes{role}{noted})",
        path.display(),
        config.directories.len(),
        config.remotes.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// How a sync runs and prints.
#[derive(Clone, Debug)]
pub(super) struct SyncMode {
    pub(super) dry_run: bool,
    pub(super) exit_code: bool,
    pub(super) force: bool,
    pub(super) diff: bool,
    pub(super) format: Format,
    /// `--peer`: only these peers (empty: every one).
    pub(super) peers: Vec<String>,
    /// `--canary N`: these many peers first, the rest only if they all succeeded.
    pub(super) canary: Option<usize>,
}

pub(super) async fn sync_command(
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
        peers,
        canary,
    } = mode;
    let config = Arc::new(Config::from_file(path)?);
    if !dry_run && !config.role.sends() {
        return Err(push_refused(&config));
    }
    let engine = sync::engine_for_cli(config).await?;
    let peers = engine.select(&peers).map_err(anyhow::Error::msg)?;
    let peer_count = match peers.is_empty() {
        true => engine.peers().len(),
        false => peers.len(),
    };
    let options = Options {
        scope: trimmed(paths),
        dry_run,
        force,
        diff,
        progress: sync::Progress::default(),
        peers,
        ..Options::default()
    };
    if format == Format::Json {
        let staged = run_sync(&engine, &options, canary, |peer| {
            records::print_peer(peer, dry_run)
        })
        .await;
        records::print_sync_end(&staged.report, staged.halted.as_ref(), dry_run);
        return Ok(exit_code_of(&staged.report, dry_run && exit_code));
    }
    if dry_run {
        println!("synchronization dry run");
    }
    // On a terminal: progress on stderr while it runs, a summary line at the end. Piped
    // or redirected, the lines alone, as they always were.
    if std::io::stdout().is_terminal() {
        let progress = SyncProgress::start(peer_count);
        let options = Options {
            progress: progress.sink(),
            ..options
        };
        let staged = run_sync(&engine, &options, canary, |peer| progress.print_peer(peer)).await;
        progress.finish(&staged.report, dry_run);
        explain_halt(staged.halted.as_ref());
        return Ok(exit_code_of(&staged.report, dry_run && exit_code));
    }
    let staged = run_sync(&engine, &options, canary, print_peer).await;
    explain_halt(staged.halted.as_ref());
    Ok(exit_code_of(&staged.report, dry_run && exit_code))
}

/// Why a push (`sync`, with `--peer` or `--canary` too) is refused on a receive-only
/// node, and what to do instead.
fn push_refused(config: &Config) -> anyhow::Error {
    let file = config.file.display();
    anyhow::anyhow!(
        "{file}: role = \"{}\": this node applies what its peers push and pushes nothing, \
         so `gosyncd sync` is refused and nothing was sent. Run it on a sending node, or set \
         role = \"send-receive\" in {file} (and reload the daemon) to make this node push; \
         `gosyncd sync -dry` shows what differs",
        config.role
    )
}

/// One run of the engine, or a staged one with `canary` peers first.
async fn run_sync(
    engine: &sync::Engine,
    options: &Options,
    canary: Option<usize>,
    on_peer: impl FnMut(&sync::PeerReport),
) -> sync::Staged {
    match canary {
        Some(canaries) => engine.run_staged(options, canaries, on_peer).await,
        None => sync::Staged {
            report: engine.run(options, on_peer).await,
            halted: None,
        },
    }
}

/// Tells, on stderr, why a staged rollout stopped and which peers it left alone.
fn explain_halt(halted: Option<&sync::Halt>) {
    let Some(halt) = halted else {
        return;
    };
    let failed = match halt.failed.is_empty() {
        true => "this node's own errors (above)".to_string(),
        false => halt.failed.join(", "),
    };
    let untouched = match halt.untouched.is_empty() {
        true => "no other peer".to_string(),
        false => halt.untouched.join(", "),
    };
    eprintln!(
        "rollout stopped after the canaries: failed on {failed}; not pushed to {untouched}. \
         Fix what failed there (the lines above say what) and run the sync again"
    );
}

pub(super) async fn status_command(
    path: &std::path::Path,
    format: Format,
    group: bool,
) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::from_file(path)?);
    if group {
        let views = super::group::views(config).await?;
        let code = super::group::code(&views);
        match format {
            Format::Json => records::print_group(&views, code),
            Format::Text => print!("{}", super::group::table(&views)),
        }
        return Ok(ExitCode::from(code));
    }
    let (node, peers) = super::ops::status(config).await?;
    let code = super::ops::status_code(&peers);
    match format {
        Format::Json => records::print_status(&node, &peers, code),
        Format::Text => {
            if let Some(line) = node.line() {
                println!("{line}");
            }
            print!("{}", super::ops::status_table(&peers));
        }
    }
    Ok(ExitCode::from(code))
}

/// `conflicts`: every conflict held in the group, with every node's state of it, and
/// the diffs asked for.
pub(super) async fn conflicts_command(
    path: &std::path::Path,
    args: super::ConflictsArgs,
) -> anyhow::Result<ExitCode> {
    use super::conflicts;
    if args.diff.as_ref().is_some_and(|nodes| nodes.len() == 1) {
        anyhow::bail!("--diff takes two nodes (NODE_A NODE_B), or none");
    }
    let engine = engine_from(path).await?;
    let scope = trimmed(args.paths);
    let survey = conflicts::survey(&engine, &scope).await?;
    let mut diffs = Vec::new();
    if let Some(wanted) = &args.diff {
        for conflict in &survey.conflicts {
            let names: Vec<String> = conflict.nodes.iter().map(|n| n.node.clone()).collect();
            let this_node = names.first().cloned().unwrap_or_default();
            let pairs: Vec<(String, String)> = match wanted.as_slice() {
                [a, b] => {
                    let a = conflicts::node_named(&names, a).map_err(anyhow::Error::msg)?;
                    let b = conflicts::node_named(&names, b).map_err(anyhow::Error::msg)?;
                    vec![(a.to_string(), b.to_string())]
                }
                _ => conflicts::distinct_pairs(conflict),
            };
            for (a, b) in pairs {
                let text = conflicts::diff(&engine, &this_node, &conflict.path, &a, &b).await;
                diffs.push((conflict.path.clone(), a, b, text));
            }
        }
    }
    let code = survey.code();
    match args.format {
        Format::Json => records::print_conflicts(&survey, &diffs, code),
        Format::Text => {
            print!("{}", conflicts::table(&survey));
            for (_, _, _, text) in &diffs {
                print!("{text}");
            }
        }
    }
    Ok(ExitCode::from(code))
}

/// `resolve PATH... --take NODE`: exit 0 once the version is everywhere and no daemon
/// holds the conflict any more, 1 when one still does, 2 when the push failed.
pub(super) async fn resolve_command(
    path: &std::path::Path,
    args: super::ResolveArgs,
) -> anyhow::Result<ExitCode> {
    use super::conflicts;
    let engine = engine_from(path).await?;
    let paths = trimmed(args.paths);
    let json = args.format == Format::Json;
    let (report, resolved) = conflicts::resolve(&engine, &paths, &args.take, |peer| match json {
        true => records::print_peer(peer, false),
        false => print_peer(peer),
    })
    .await?;
    for e in &report.local_errors {
        error!("{e}");
    }
    let held = resolved.iter().any(|r| !r.still_held.is_empty());
    let code = if report.failed() {
        2
    } else if held {
        1
    } else {
        0
    };
    for r in &resolved {
        match json {
            true => records::print_resolved(r, code),
            false if r.still_held.is_empty() => println!(
                "{}: {}: took {}'s version; conflict cleared on every node",
                timestamp(),
                r.path,
                r.taken_from
            ),
            false => println!(
                "{}: {}: took {}'s version; still held by {} (it clears at that daemon's                  next comparison, reconcile_interval)",
                timestamp(),
                r.path,
                r.taken_from,
                r.still_held.join(", ")
            ),
        }
    }
    Ok(ExitCode::from(code))
}

/// `revert [PATH...]`: a line (or record) per path taken back; exit 0, or 2 when it
/// could not be done.
pub(super) async fn revert_command(
    path: &std::path::Path,
    args: super::RevertArgs,
) -> anyhow::Result<ExitCode> {
    let engine = engine_from(path).await?;
    let scope = trimmed(args.paths);
    let outcome = super::revert::revert(&engine, &scope, args.dry_run).await?;
    // This node's daemon compares at once: what it counted as drift is gone.
    if let (false, Some(own)) = (outcome.reverted.is_empty(), engine.own_daemon_client()) {
        let _ = own.compare().await;
    }
    for (peer, why) in &outcome.unasked {
        eprintln!("{peer}: not asked, it has no say in the group's version: {why}");
    }
    for r in &outcome.reverted {
        match args.format {
            Format::Json => records::print_reverted(r, args.dry_run),
            Format::Text => {
                let (sign, what) = match (&r.was, &r.now) {
                    (None, Some(_)) => ("[+]", format!("restored from {}", r.from)),
                    (Some(_), None) => ("[-]", "deleted (no peer of the group has it)".into()),
                    _ => ("[M]", format!("taken back from {}", r.from)),
                };
                let would = if args.dry_run { "would be " } else { "" };
                println!("{}: {sign} {} {would}{what}", timestamp(), r.path);
            }
        }
    }
    if outcome.reverted.is_empty() && args.format == Format::Text {
        println!("this node holds the group's version everywhere: nothing to take back");
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine for a command run with the configuration file at `path`.
async fn engine_from(path: &std::path::Path) -> anyhow::Result<sync::Engine> {
    sync::engine_for_cli(Arc::new(Config::from_file(path)?)).await
}

/// Paths as typed, without a trailing slash (`/` stays).
fn trimmed(paths: Vec<String>) -> Vec<String> {
    paths
        .into_iter()
        .map(|p| match p.trim_end_matches('/') {
            "" => "/".to_string(),
            trimmed => trimmed.to_string(),
        })
        .collect()
}

pub(super) fn backups_command(
    path: &std::path::Path,
    command: BackupsCommand,
) -> anyhow::Result<ExitCode> {
    let config = Config::from_file(path)?;
    match command {
        BackupsCommand::List { path, format } => {
            let versions = super::ops::backups_list(&config, path.as_deref())?;
            for v in &versions {
                match format {
                    Format::Json => records::print_backup(v),
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
            let restored = super::ops::backups_restore(&config, &path, version.as_deref())?;
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
    // Buffered: standard output writes each line as it ends, one system call per line.
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    for change in &report.changes {
        let _ = writeln!(out, "{}: {}", timestamp(), change.line(&report.peer));
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

/// `2026/11/23 12:14:27 +0000`: year, month, day, local time and offset. Made once per
/// second per thread: formatting a date cost more than the rest of a line, and an
/// initial sync prints one line per path and peer.
pub fn timestamp() -> String {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static MADE: RefCell<Option<(u64, String)>> = const { RefCell::new(None) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    MADE.with(|made| {
        let mut made = made.borrow_mut();
        match &*made {
            Some((at, text)) if *at == second => text.clone(),
            _ => {
                let text = chrono::DateTime::<chrono::Local>::from(now)
                    .format("%Y/%m/%d %H:%M:%S %z")
                    .to_string();
                *made = Some((second, text.clone()));
                text
            }
        }
    })
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
    use super::timestamp;

    /// Made once per second, a timestamp is still the local time of the second it is
    /// asked in, across seconds.
    #[test]
    fn a_timestamp_is_the_local_time_of_the_second_it_is_asked_in() {
        let format =
            |t: chrono::DateTime<chrono::Local>| t.format("%Y/%m/%d %H:%M:%S %z").to_string();
        for _ in 0..8 {
            let before = format(chrono::Local::now());
            let made = timestamp();
            let after = format(chrono::Local::now());
            assert!(
                made == before || made == after,
                "{made} between {before} and {after}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
}
