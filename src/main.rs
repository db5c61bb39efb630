//! The `gosyncd` binary: parse the command line, set up logging, run, exit.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use gosyncd::cli::{self, Cli};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::{format, FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    gosyncd::memory::set_up_allocator();
    let cli = Cli::parse_from(cli::normalize_args(std::env::args_os()));
    // The demo prints its own story on stdout; its daemons' logs, even the warnings it
    // sets out to cause (the drift at start-up), would break into it: errors only.
    let default_filter = match (&cli.command, cli.debug) {
        (_, true) => "gosyncd=debug,warn",
        (Some(cli::Command::Demo(_)), false) => "error",
        _ => "gosyncd=info,warn",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    if stderr_is_journal() {
        // journald stamps each line itself, and reads its priority from the prefix.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .event_format(JournalLine(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_level(false)
                    .with_target(false)
                    .with_ansi(false),
            ))
            .init();
    } else {
        let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(colour)
            .init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(cli::run(cli))
}

/// Whether stderr is connected to the journal: systemd names the stream's device and
/// inode in `JOURNAL_STREAM` (a command whose stderr was redirected inherits the
/// variable, but not the stream).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var("JOURNAL_STREAM").ok() else {
        return false;
    };
    let Some((device, inode)) = stream.split_once(':') else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    device.parse() == Ok(stat.st_dev) && inode.parse() == Ok(stat.st_ino)
}

/// A log line for the journal: its syslog priority as a `<N>` prefix (what systemd's
/// `SyslogLevelPrefix=` reads, so that `journalctl -p warning` finds warnings), then the
/// line without a time stamp of its own.
struct JournalLine<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalLine<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
