//! The command line. This file holds [`run`], the dispatch of each command, and
//! re-exports what the binary and the rest of the crate use; it does no work of its own
//! beyond choosing who does. The rest is in child modules: `args` (the clap definitions
//! and the Go-style `-flag` normalisation), `daemon` (the daemon command with its signal
//! handling, reload and readiness notification), `commands` (the one-shot commands and
//! how their results are printed), `ops` (the `status` and `backups` commands' work),
//! `preflight` (what `check-config` checks on this host), `records` (their JSON
//! records), `progress` (what a sync shows on a terminal while it runs), `demo` (a local
//! group of three daemons to try) and `docs` (the man pages and completion scripts, from
//! the clap definitions).

mod args;
mod commands;
mod conflicts;
mod daemon;
mod demo;
mod docs;
mod group;
mod ops;
mod preflight;
mod progress;
mod records;
mod revert;

use std::process::ExitCode;

use tracing::error;

pub use self::args::{
    normalize_args, BackupsCommand, Cli, Command, ConflictsArgs, DemoArgs, Format, ResolveArgs,
    RevertArgs, StateArgs, StatusArgs, SyncArgs,
};
use self::commands::{
    backups_command, check_config, conflicts_command, resolve_command, revert_command,
    status_command, sync_command, SyncMode,
};
pub use self::commands::{print_peer, timestamp};
use self::daemon::daemon;
pub use self::daemon::shutdown_signal;

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
                peers: args.peers,
                canary: args.canary.map(|n| n as usize),
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
                peers: Vec::new(),
                canary: None,
            };
            sync_command(&cli.config, args.paths, mode).await
        }
        Some(Command::Status(args)) => status_command(&cli.config, args.format, args.group).await,
        Some(Command::Conflicts(args)) => conflicts_command(&cli.config, args).await,
        Some(Command::Resolve(args)) => resolve_command(&cli.config, args).await,
        Some(Command::Revert(args)) => revert_command(&cli.config, args).await,
        Some(Command::Backups(command)) => backups_command(&cli.config, command),
        Some(Command::CheckConfig) => check_config(&cli.config).await,
        Some(Command::Demo(args)) => demo::run(!args.no_wait).await,
        Some(Command::Cert(args)) => crate::certgen::command(args),
        Some(Command::Completions(args)) => docs::completions(args),
        Some(Command::Man(args)) => docs::man(args),
    };
    result.unwrap_or_else(|e| {
        error!("{e:#}");
        ExitCode::from(2)
    })
}
