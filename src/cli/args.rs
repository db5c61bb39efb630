//! The clap definitions of the command line (every command, its arguments and the help
//! text) and the Go-style `-flag` normalisation that lets the original tool's
//! `gosyncd -config F sync -dry` keep working.
//!
//! Declarations only, plus a pure rewrite of the argument list: nothing here reads the
//! configuration or runs a command.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

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
    /// List the conflicts held anywhere in the group, with every node's state of each
    /// path (exit 0 none, 1 some, 2 a node could not be asked)
    Conflicts(ConflictsArgs),
    /// Make one node's version of PATH every node's and clear the conflict everywhere:
    /// fetched from NODE (or this node's with `--take local`), pushed to every peer
    /// against the state it holds, each replaced version kept where backups are on
    Resolve(ResolveArgs),
    /// Take the group's version back wherever this node's differs (a local edit on a
    /// receive-only node, drift): the version most peers hold, fetched from one of them;
    /// nothing is pushed
    Revert(RevertArgs),
    /// List or restore the versions kept by the backup setting
    #[command(subcommand)]
    Backups(BackupsCommand),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell
    Completions(CompletionsArgs),
    /// Print the man page gosyncd(1), or write every page into a directory with --out
    Man(ManArgs),
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

    /// Ask every node's daemon for its view of every other and print the matrix; exit 0
    /// only when the whole group is converged (1: not converged, 2: a node could not be
    /// asked)
    #[arg(long)]
    pub group: bool,
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

    /// Only this peer: a remote as written in `remotes`, or its address alone
    /// (repeatable; the other peers are left alone)
    #[arg(long = "peer", value_name = "ADDR")]
    pub peers: Vec<String>,

    /// Staged rollout: push to the first N peers (in the order of `remotes`) and wait for
    /// their validate and on_change results; go on with the rest only if all succeeded,
    /// otherwise stop, say what failed where, and exit 2
    #[arg(long, value_name = "N", conflicts_with = "dry_run",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub canary: Option<u32>,

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
pub struct ConflictsArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Show a unified diff of each path from NODE_A's version to NODE_B's (a node as
    /// `remotes` writes it, its address alone, or `local`); without nodes, from the
    /// first node's version to each other version
    #[arg(long, num_args = 0..=2, value_names = ["NODE_A", "NODE_B"])]
    pub diff: Option<Vec<String>>,

    /// Only the conflicts at these files or below these directories
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ResolveArgs {
    /// Whose version wins: `local` (this node's) or a node as `remotes` writes it, or its
    /// address alone
    #[arg(long, value_name = "local|NODE")]
    pub take: String,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// The paths in conflict (absolute, inside configured directories)
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RevertArgs {
    /// Print what would be taken back; change nothing
    #[arg(long = "dry-run", visible_alias = "dry")]
    pub dry_run: bool,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// Only these files or subtrees (absolute paths inside configured directories)
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

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write gosyncd.1, one page per command (gosyncd-sync.1, gosyncd-cert-ca.1, ...) and
    /// the configuration file's gosyncd.hcl.5 into DIR, created if missing, instead of
    /// printing gosyncd.1
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}
