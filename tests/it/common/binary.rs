//! The real binary: one-off runs that cannot hang, and daemons logging to a file.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gosyncd::client::Peer;

use super::wait::{eventually, eventually_async, eventually_showing, BINARY_TIMEOUT, CALL_TIMEOUT};

/// How a run of the binary ended.
#[derive(Debug)]
pub struct BinaryRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl BinaryRun {
    /// The `[+]`/`[M]`/`[-]`/`[!]` lines without their timestamps, sorted.
    pub fn change_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .stdout
            .lines()
            .filter_map(|line| line.find(": [").map(|i| line[i + 2..].to_string()))
            .collect();
        out.sort();
        out
    }
}

/// Runs `gosyncd ARGS` to completion (killing it after [`BINARY_TIMEOUT`]) without
/// blocking the runtime that serves the group's nodes.
pub async fn gosyncd<I, S>(args: I) -> BinaryRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    tokio::task::spawn_blocking(move || run_binary(args))
        .await
        .expect("binary runner")
}

fn run_binary(args: Vec<OsString>) -> BinaryRun {
    let child = Command::new(env!("CARGO_BIN_EXE_gosyncd"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gosyncd starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(BINARY_TIMEOUT) {
        Ok(output) => {
            let output = output.expect("wait for gosyncd");
            BinaryRun {
                code: output.status.code(),
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            }
        }
        Err(_) => {
            // Not reaped yet (the waiting thread still waits), so the pid is still ours.
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            panic!("gosyncd {args:?} did not finish within {BINARY_TIMEOUT:?}");
        }
    }
}

/// Whether the `prlimit` command (util-linux) is there; says the test is skipped if not.
pub fn has_prlimit() -> bool {
    let found = Command::new("prlimit").arg("--version").output().is_ok();
    if !found {
        eprintln!("skipped: prlimit (util-linux) is not installed");
    }
    found
}

/// `-config PATH` followed by `rest`.
pub fn config_args(config: &Path, rest: &[&str]) -> Vec<OsString> {
    let mut args = vec![OsString::from("-config"), config.as_os_str().to_os_string()];
    args.extend(rest.iter().map(OsString::from));
    args
}

/// The real binary running as a daemon, its output in a log file; killed when dropped.
pub struct DaemonProcess {
    pub child: std::process::Child,
    pub log_path: PathBuf,
}

impl DaemonProcess {
    /// Starts `gosyncd -config CONFIG` with info logging into `log_path`.
    pub fn spawn(config: &Path, log_path: PathBuf) -> DaemonProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gosyncd"));
        command.args(config_args(config, &[]));
        DaemonProcess::start(command, log_path)
    }

    /// Starts `command` (the daemon, or a wrapper that execs it) with info logging
    /// into `log_path`.
    pub fn start(mut command: Command, log_path: PathBuf) -> DaemonProcess {
        let log = std::fs::File::create(&log_path).unwrap();
        let child = command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{:?} does not start: {e}", command.get_program()));
        DaemonProcess { child, log_path }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        log_at(&self.log_path)
    }

    /// Waits until `probe` gets its identity (it watches before it serves).
    pub async fn wait_ready(&mut self, probe: &Peer) {
        let (child, log_path) = (&mut self.child, &self.log_path);
        eventually_async("the daemon answers", CALL_TIMEOUT, || {
            let exited = child.try_wait().unwrap();
            async move {
                if let Some(status) = exited {
                    panic!("the daemon exited with {status}:\n{}", log_at(log_path));
                }
                probe
                    .identity()
                    .await
                    .map_err(|e| format!("{e}\n{}", log_at(log_path)))
            }
        })
        .await;
    }

    /// Waits for it to exit, failing the test after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let (child, log_path) = (&mut self.child, &self.log_path);
        eventually_showing(
            "the daemon exits",
            within,
            || child.try_wait().unwrap(),
            || log_at(log_path),
        )
        .await
    }

    /// Waits until its log holds `text`, failing the test after [`CALL_TIMEOUT`].
    pub async fn wait_for_log(&self, text: &str) {
        eventually(&format!("{text:?} logged"), CALL_TIMEOUT, || {
            let log = self.log();
            log.contains(text).then_some(()).ok_or(log)
        })
        .await;
    }
}

/// What a daemon logged so far into the file at `path`.
fn log_at(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
