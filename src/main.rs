//! The `gosyncd` binary: parse the command line, set up logging, run, exit.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use gosyncd::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse_from(cli::normalize_args(std::env::args_os()));
    // The demo prints its own story on stdout; its daemons' logs would drown it.
    let default_level = match (&cli.command, cli.debug) {
        (_, true) => "debug",
        (Some(cli::Command::Demo(_)), false) => "warn",
        _ => "info",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("gosyncd={default_level},warn")));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(cli::run(cli))
}
