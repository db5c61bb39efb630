//! Fault injection: a forwarder that cuts a transfer, the binary under a wrapper command,
//! and what an interrupted write may leave behind.

use std::ffi::OsStr;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::binary::{config_args, DaemonProcess};
use super::forwarder::{forward_with, Forwarder, Step};

/// Like [`forwarder`], except that the first connection to carry more than `threshold`
/// bytes from the client is cut there: the first `threshold` bytes are passed on, the
/// rest never is, and both directions are closed at once with a reset. Later
/// connections are forwarded whole. The flag says whether the cut happened.
pub async fn forwarder_cutting(
    bind: IpAddr,
    target: SocketAddr,
    threshold: usize,
) -> (Forwarder, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};

    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    let forwarder = forward_with(
        bind,
        target,
        Arc::new(move |sent, n| {
            if sent + n > threshold && !cut.swap(true, Ordering::SeqCst) {
                Step::Cut(threshold - sent)
            } else {
                Step::Pass
            }
        }),
    )
    .await;
    (forwarder, flag)
}

impl DaemonProcess {
    /// Like [`DaemonProcess::spawn`], with the binary started through a wrapper that
    /// execs it, as `PROGRAM ARGS... gosyncd -config CONFIG` (`prlimit --fsize=N --`,
    /// say): the child's pid is then the daemon's own.
    pub fn spawn_with<S: AsRef<OsStr>>(
        program: impl AsRef<OsStr>,
        args: &[S],
        config: &Path,
        log_path: PathBuf,
    ) -> DaemonProcess {
        let mut command = Command::new(program);
        command
            .args(args)
            .arg(env!("CARGO_BIN_EXE_gosyncd"))
            .args(config_args(config, &[]));
        DaemonProcess::start(command, log_path)
    }
}

/// gosyncd's temporary files anywhere below `root` (links not followed).
pub fn temp_files_below(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(gosyncd::tree::is_temp_name)
        })
        .map(|e| e.into_path())
        .collect()
}
