//! Running one command: `sh -c` with the changed paths and the directory in its
//! environment, in a process group of its own, both output streams drained so that it
//! never blocks on a full pipe, its whole group killed after its timeout (or when its
//! caller gives up on it), and how it ended summed up in a [`CommandResult`]. It knows
//! nothing of directories or of when commands run: its callers decide that.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::ending::{explaining_line, Ending};

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandResult {
    pub command: String,
    pub ending: Ending,
    /// The line of its output that explains how it ended (see [`explaining_line`]), or,
    /// when it was killed by its timeout or did not run, how it ended.
    pub first_line: String,
}

impl CommandResult {
    fn new(command: &str, ending: Ending, first_line: String) -> CommandResult {
        CommandResult {
            command: command.to_string(),
            ending,
            first_line,
        }
    }

    pub fn success(&self) -> bool {
        self.ending.success()
    }

    /// Its exit status; `None` when it was killed (timeout or signal) or did not run.
    pub fn code(&self) -> Option<i32> {
        self.ending.code()
    }

    /// Why it failed, in one line: the line of its output that explains, or, when there
    /// is none or it never finished, the command and how it ended (`` `haproxy -q -c -f
    /// /etc/haproxy/haproxy.cfg` exited with status 1 ``).
    pub fn why(&self) -> String {
        match &self.ending {
            Ending::Exited(_) | Ending::Signalled(_) if !self.first_line.is_empty() => {
                self.first_line.clone()
            }
            ending => format!("`{}` {ending}", self.command),
        }
    }
}

/// Bytes of a command's output kept, per stream.
const OUTPUT_KEPT: usize = 64 * 1024;

/// Reads a stream to its end (so that the command never blocks on a full pipe), keeping
/// its first [`OUTPUT_KEPT`] bytes.
async fn drain(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_KEPT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Whether an environment variable was given by systemd to the daemon itself, and must
/// not reach its commands: `NOTIFY_SOCKET` (and any `NOTIFY_*`), with which a command
/// could tell systemd that the daemon is ready or stopping; the socket-activation
/// `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`; the watchdog's `WATCHDOG_USEC`,
/// `WATCHDOG_PID`.
fn for_the_daemon_only(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(b"NOTIFY_")
        || matches!(
            name,
            b"LISTEN_FDS" | b"LISTEN_PID" | b"LISTEN_FDNAMES" | b"WATCHDOG_USEC" | b"WATCHDOG_PID"
        )
}

/// Kills a command's process group when dropped, unless disarmed: so that neither a
/// timeout nor a caller that stops waiting leaves the command's children running.
struct GroupGuard {
    /// The group's id: the pid of the `sh` that leads it.
    group: Option<rustix::process::Pid>,
}

impl GroupGuard {
    /// Sends SIGKILL to every process of the group (once).
    fn kill(&mut self) {
        if let Some(group) = self.group.take() {
            // ESRCH: the group is already empty.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Longest list of changed paths given in `GOSYNCD_CHANGED`. Linux refuses to start a
/// program with one environment string over 128 KiB (`E2BIG`): the paths of a batch of
/// a few thousand files would keep its commands from running at all, and a `validate`
/// that cannot run rejects the batch.
const CHANGED_IN_ENVIRONMENT_MAX: usize = 64 * 1024;

/// Runs `command` with `sh -c`, with `changed` (the changed paths as they are on this
/// host, one per line) in `GOSYNCD_CHANGED` and the configured directory (likewise) in
/// `GOSYNCD_DIRECTORY`, killing it and everything it started after `timeout`. It
/// inherits the daemon's environment, except the variables systemd meant for the daemon
/// alone (see [`for_the_daemon_only`]).
///
/// The list is also in a temporary file, one path per line, named by
/// `GOSYNCD_CHANGED_FILE` and removed when the command ends: whole, whatever its
/// length. Past [`CHANGED_IN_ENVIRONMENT_MAX`], `GOSYNCD_CHANGED` is empty, as when
/// `sync` validates the whole tree.
///
/// The command leads a process group of its own, and the timeout kills the whole group:
/// a `sh -c 'a & b'` leaves no orphan behind. A process it leaves running after it ended,
/// with its output streams closed (a daemon it started), is left alone.
pub async fn run(
    command: &str,
    directory: &str,
    changed: &[String],
    timeout: Duration,
) -> CommandResult {
    let mut sh = tokio::process::Command::new("/bin/sh");
    for (name, _) in std::env::vars_os() {
        if for_the_daemon_only(&name) {
            sh.env_remove(name);
        }
    }
    let listed = changed.join("\n");
    // Kept until the command ends, then removed. Without it (no temporary directory
    // to write in) the command still runs, told of the paths that fit.
    let list = changed_file(&listed);
    let file = match &list {
        Ok(file) => file.path().as_os_str(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the list of changed paths for a command: GOSYNCD_CHANGED_FILE is empty");
            std::ffi::OsStr::new("")
        }
    };
    let in_environment = match listed.len() > CHANGED_IN_ENVIRONMENT_MAX {
        true => "",
        false => listed.as_str(),
    };
    let started = sh
        .arg("-c")
        .arg(command)
        .env("GOSYNCD_CHANGED", in_environment)
        .env("GOSYNCD_CHANGED_FILE", file)
        .env("GOSYNCD_DIRECTORY", directory)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match started {
        Ok(child) => child,
        Err(e) => {
            let ending = Ending::NotRun(format!("could not start /bin/sh: {e}"));
            return CommandResult::new(command, ending.clone(), ending.to_string());
        }
    };
    // The group's id is the pid of `sh`, not reaped yet; once it is, the id stays the
    // group's as long as any process of the group is left.
    let mut group = GroupGuard {
        group: child
            .id()
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32)),
    };
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let finished = tokio::time::timeout(timeout, async {
        let (out, err, status) = tokio::join!(drain(&mut stdout), drain(&mut stderr), child.wait());
        (status, out, err)
    })
    .await;
    match finished {
        Err(_) => {
            group.kill();
            let _ = child.kill().await;
            let ending = Ending::TimedOut(timeout);
            CommandResult::new(command, ending.clone(), ending.to_string())
        }
        Ok((status, out, err)) => {
            // Done: its streams are closed, so what is left of the group was detached
            // on purpose.
            group.group = None;
            match status {
                Ok(status) => {
                    CommandResult::new(command, Ending::of(status), explaining_line(&err, &out))
                }
                Err(e) => {
                    let ending = Ending::NotRun(format!("could not wait for it: {e}"));
                    CommandResult::new(command, ending.clone(), ending.to_string())
                }
            }
        }
    }
}

/// A temporary file holding `listed`, ending with a newline unless it is empty.
fn changed_file(listed: &str) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .prefix("gosyncd-changed-")
        .tempfile()?;
    if !listed.is_empty() {
        file.write_all(listed.as_bytes())?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_list_of_changed_paths_too_long_for_the_environment_is_given_in_a_file() {
        let changed: Vec<String> = (0..5_000)
            .map(|i| format!("/etc/app/conf.d/a-rather-long-name-for-a-file-{i:05}.cfg"))
            .collect();
        assert!(changed.join("\n").len() > 128 * 1024);
        let counted = run(
            "f=\"$GOSYNCD_CHANGED_FILE\"; test -z \"$GOSYNCD_CHANGED\" && echo \"$(wc -l < \"$f\") $(tail -n 1 \"$f\") $f\"",
            "/etc/app",
            &changed,
            Duration::from_secs(5),
        )
        .await;
        assert!(counted.success(), "{counted:?}");
        let said: Vec<&str> = counted.first_line.split(' ').collect();
        assert_eq!(said[..2], ["5000", changed[4_999].as_str()], "{counted:?}");
        assert!(
            !std::path::Path::new(said[2]).exists(),
            "the list's file is removed once the command ended"
        );
    }

    #[tokio::test]
    async fn a_command_gets_the_changed_paths_and_reports_the_line_that_explains() {
        let changed = vec!["/etc/app/a".to_string(), "/etc/app/b c".to_string()];
        let ok = run(
            "test \"$GOSYNCD_CHANGED\" = \"$(printf '/etc/app/a\\n/etc/app/b c')\" && test \"$GOSYNCD_DIRECTORY\" = /etc/app && echo fine",
            "/etc/app",
            &changed,
            Duration::from_secs(5),
        )
        .await;
        assert!(ok.success(), "{ok:?}");
        assert_eq!(ok.first_line, "fine");
        let listed = run(
            "cat \"$GOSYNCD_CHANGED_FILE\"",
            "/etc/app",
            &changed,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(listed.first_line, "/etc/app/b c", "{listed:?}");
        let bad = run(
            "echo some output; echo '[NOTICE] checker 2.6.12' >&2; echo '  [ALERT] line 3: unknown keyword' >&2; echo 'Fatal errors found' >&2; exit 3",
            "/etc/app",
            &changed,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!((bad.success(), bad.code()), (false, Some(3)));
        assert_eq!(bad.first_line, "[ALERT] line 3: unknown keyword");
        assert_eq!(bad.why(), "[ALERT] line 3: unknown keyword");
    }

    #[tokio::test]
    async fn a_silent_failure_or_a_signal_is_told_in_words() {
        let quiet = run("exit 1", "/d", &[], Duration::from_secs(5)).await;
        assert_eq!(quiet.why(), "`exit 1` exited with status 1");
        let killed = run("kill -9 $$", "/d", &[], Duration::from_secs(5)).await;
        assert_eq!(killed.ending, Ending::Signalled(9));
        assert_eq!(killed.why(), "`kill -9 $$` killed by signal 9 (SIGKILL)");
    }

    #[tokio::test]
    async fn a_command_over_its_timeout_is_killed_and_fails() {
        let started = std::time::Instant::now();
        let slow = run("sleep 30", "/d", &[], Duration::from_millis(300)).await;
        assert_eq!(
            slow.why(),
            "`sleep 30` killed after 300ms (action_timeout)",
            "{slow:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn systemd_variables_for_the_daemon_are_not_passed_on() {
        for name in [
            "NOTIFY_SOCKET",
            "NOTIFY_FOO",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
        ] {
            assert!(for_the_daemon_only(name.as_ref()), "{name}");
        }
        for name in [
            "PATH",
            "HOME",
            "LANG",
            "INVOCATION_ID",
            "NOTIFY",
            "LISTEN_FDS_X",
        ] {
            assert!(!for_the_daemon_only(name.as_ref()), "{name}");
        }
    }

    /// Whether process `pid` is gone (or a zombie: dead, waiting for its parent).
    fn gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // "PID (COMM) STATE ...": the state follows the last ')'.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        }
    }

    #[tokio::test]
    async fn a_timeout_kills_what_the_command_started_too() {
        // Regression: only `sh` was killed, and an orphaned `sleep` ran on.
        let tmp = tempfile::tempdir().unwrap();
        let pids = tmp.path().join("pids");
        let command = format!(
            "sleep 60 & echo $! >> {p}; sh -c 'echo $$ >> {p}; exec sleep 60'",
            p = pids.display()
        );
        let slow = run(&command, "/d", &[], Duration::from_millis(500)).await;
        assert!(!slow.success(), "{slow:?}");
        let pids: Vec<i32> = std::fs::read_to_string(&pids)
            .unwrap()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(pids.len(), 2, "both sleeps started: {pids:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !pids.iter().all(|&pid| gone(pid)) {
            assert!(
                std::time::Instant::now() < deadline,
                "still running after the timeout: {:?}",
                pids.iter().filter(|&&pid| !gone(pid)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_command_given_up_on_leaves_nothing_running() {
        let tmp = tempfile::tempdir().unwrap();
        let pids = tmp.path().join("pids");
        let command = format!("sleep 60 & echo $! >> {p}; sleep 60", p = pids.display());
        let run = run(&command, "/d", &[], Duration::from_secs(60));
        let started = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::pin!(run);
            loop {
                tokio::select! {
                    _ = &mut run => panic!("the command ended by itself"),
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {
                        if std::fs::read_to_string(&pids).is_ok_and(|t| t.ends_with('\n')) {
                            return; // dropped here, mid-run
                        }
                    }
                }
            }
        })
        .await;
        assert!(started.is_ok(), "the command never started its sleep");
        let pid: i32 = std::fs::read_to_string(&pids)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !gone(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "sleep {pid} still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
