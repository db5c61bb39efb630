//! How a command ended, in words: its exit status or the signal that killed it
//! ([`Ending`]), and the one line of its output that explains a failure
//! ([`explaining_line`]). Pure: nothing here runs a command.

use std::fmt;
use std::time::Duration;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this status (0 is success).
    Exited(i32),
    /// A signal killed it (not gosyncd's timeout).
    Signalled(i32),
    /// It ran past its `action_timeout` and was killed, with everything it started.
    TimedOut(Duration),
    /// It could not be started or waited for, and why.
    NotRun(String),
}

impl Ending {
    /// How a finished process ended, from its wait status.
    pub fn of(status: std::process::ExitStatus) -> Ending {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Ending::Exited(code),
            (None, Some(signal)) => Ending::Signalled(signal),
            (None, None) => Ending::NotRun(format!("ended with wait status {status}")),
        }
    }

    /// Its exit status, when it exited.
    pub fn code(&self) -> Option<i32> {
        match self {
            Ending::Exited(code) => Some(*code),
            _ => None,
        }
    }

    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Exited(code) => write!(f, "exited with status {code}"),
            Ending::Signalled(signal) => match signal_name(*signal) {
                Some(name) => write!(f, "killed by signal {signal} ({name})"),
                None => write!(f, "killed by signal {signal}"),
            },
            Ending::TimedOut(after) => write!(
                f,
                "killed after {} (action_timeout)",
                humantime::format_duration(*after)
            ),
            Ending::NotRun(why) => f.write_str(why),
        }
    }
}

/// The name of a signal a command may die of, as `kill -l` gives it.
fn signal_name(signal: i32) -> Option<&'static str> {
    use rustix::process::Signal;
    let signal = Signal::from_named_raw(signal)?;
    let names = [
        (Signal::HUP, "SIGHUP"),
        (Signal::INT, "SIGINT"),
        (Signal::QUIT, "SIGQUIT"),
        (Signal::ILL, "SIGILL"),
        (Signal::TRAP, "SIGTRAP"),
        (Signal::ABORT, "SIGABRT"),
        (Signal::BUS, "SIGBUS"),
        (Signal::FPE, "SIGFPE"),
        (Signal::KILL, "SIGKILL"),
        (Signal::USR1, "SIGUSR1"),
        (Signal::SEGV, "SIGSEGV"),
        (Signal::USR2, "SIGUSR2"),
        (Signal::PIPE, "SIGPIPE"),
        (Signal::ALARM, "SIGALRM"),
        (Signal::TERM, "SIGTERM"),
        (Signal::XCPU, "SIGXCPU"),
        (Signal::XFSZ, "SIGXFSZ"),
        (Signal::SYS, "SIGSYS"),
    ];
    names
        .into_iter()
        .find(|(known, _)| *known == signal)
        .map(|(_, name)| name)
}

/// Characters of a line kept in a message.
const LINE_KEPT: usize = 300;

/// Words that mark a line as the error, not a banner or a notice: haproxy's `[ALERT]`,
/// nginx's `[emerg]`, and the `error`/`fatal` of most others. Matched ignoring case.
const ERROR_MARKS: [&str; 4] = ["error", "alert", "emerg", "fatal"];

/// The line of a command's output that explains how it ended: the first line, of its
/// standard error then of its output, that looks like an error (it names one of
/// [`ERROR_MARKS`]); else the last non-empty line of its standard error, or of its
/// output when that is empty. Trimmed, and cut to [`LINE_KEPT`] characters; empty when
/// the command wrote nothing.
///
/// `haproxy -c` starts with a `[NOTICE] ... haproxy version is ...` banner and ends with
/// a summary, so neither its first nor its last line would do.
pub fn explaining_line(stderr: &[u8], stdout: &[u8]) -> String {
    let lines = |bytes: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (err, out) = (lines(stderr), lines(stdout));
    let looks_like_error = |line: &&String| {
        let lower = line.to_lowercase();
        ERROR_MARKS.iter().any(|mark| lower.contains(mark))
    };
    let line = err
        .iter()
        .find(looks_like_error)
        .or_else(|| out.iter().find(looks_like_error))
        .or_else(|| err.last())
        .or_else(|| out.last());
    line.map(|l| l.chars().take(LINE_KEPT).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_s_alert_is_the_line_not_its_banner() {
        let stderr = b"[NOTICE]   (4711) : haproxy version is 2.6.12-1+deb12u1\n\
[NOTICE]   (4711) : path to executable is /usr/sbin/haproxy\n\
[ALERT]    (4711) : config : parsing [/etc/haproxy/haproxy.cfg:12] : unknown keyword 'bogus' in 'global' section\n\
[ALERT]    (4711) : config : Error(s) found in configuration file : /etc/haproxy/haproxy.cfg\n\
[ALERT]    (4711) : config : Fatal errors found in configuration.\n";
        assert_eq!(
            explaining_line(stderr, b""),
            "[ALERT]    (4711) : config : parsing [/etc/haproxy/haproxy.cfg:12] : unknown keyword 'bogus' in 'global' section"
        );
        assert_eq!(
            explaining_line(b"", b"nginx: [emerg] unknown directive \"bogus\"\nnginx: configuration file /etc/nginx/nginx.conf test failed\n"),
            "nginx: [emerg] unknown directive \"bogus\""
        );
    }

    #[test]
    fn without_an_error_line_the_last_line_explains() {
        assert_eq!(
            explaining_line(b"  checking...\n  line 3: unknown keyword  \n\n", b"out\n"),
            "line 3: unknown keyword"
        );
        assert_eq!(explaining_line(b"", b"one\ntwo\n"), "two");
        assert_eq!(explaining_line(b"\n \n", b""), "");
        assert_eq!(explaining_line(&[b'x'; 1000], b"").len(), LINE_KEPT);
    }

    #[test]
    fn endings_read_as_words() {
        assert_eq!(Ending::Exited(1).to_string(), "exited with status 1");
        assert_eq!(
            Ending::Signalled(9).to_string(),
            "killed by signal 9 (SIGKILL)"
        );
        assert_eq!(
            Ending::Signalled(15).to_string(),
            "killed by signal 15 (SIGTERM)"
        );
        assert_eq!(
            Ending::TimedOut(Duration::from_secs(60)).to_string(),
            "killed after 1m (action_timeout)"
        );
        assert!(Ending::Exited(0).success() && !Ending::Signalled(9).success());
    }
}
