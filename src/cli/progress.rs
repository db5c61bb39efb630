//! What `gosyncd sync` shows on a terminal while it runs: a spinner while the trees are
//! compared, one bar per peer being pushed to (operations and bytes sent of those
//! planned), drawn on stderr and cleared before any line is printed, then a summary
//! line once every peer has answered.
//!
//! It only renders the engine's [`ProgressEvent`]s and reports; it is used only when
//! stdout is a terminal, so the lines scripts read are the same with or without it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::sync::{PeerReport, PeerTally, Progress, ProgressEvent, Report};

/// How often the spinners move and the elapsed time is redrawn.
const TICK_INTERVAL: Duration = Duration::from_millis(120);

/// The bars of one run.
pub(super) struct SyncProgress {
    multi: MultiProgress,
    /// Shown until every peer has answered: how many are still awaited.
    waiting: ProgressBar,
    /// One bar per peer being pushed to, with what its events add up to.
    bars: Mutex<HashMap<String, (ProgressBar, PeerTally)>>,
    /// Peers not answered yet.
    awaited: Mutex<usize>,
    started: Instant,
}

impl SyncProgress {
    /// Starts the spinner for a run over `peers` peers, drawn on stderr (nothing is
    /// drawn when stderr is not a terminal).
    pub(super) fn start(peers: usize) -> Arc<SyncProgress> {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let waiting = multi.add(ProgressBar::new_spinner());
        waiting.set_style(style("{spinner} {elapsed:>3} {msg}"));
        waiting.set_message(awaiting(peers));
        waiting.enable_steady_tick(TICK_INTERVAL);
        Arc::new(SyncProgress {
            multi,
            waiting,
            bars: Mutex::new(HashMap::new()),
            awaited: Mutex::new(peers),
            started: Instant::now(),
        })
    }

    /// The sink to pass to the engine in [`crate::sync::Options::progress`].
    pub(super) fn sink(self: &Arc<Self>) -> Progress {
        let this = self.clone();
        Progress::to(move |event| this.show(event))
    }

    fn show(&self, event: &ProgressEvent) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        let (bar, tally) = bars.entry(event.peer().to_string()).or_insert_with(|| {
            let bar = self.multi.insert_before(&self.waiting, ProgressBar::new(0));
            bar.set_style(style(
                "{spinner} {prefix} [{bar:24}] {pos}/{len} operations {msg}",
            ));
            bar.set_prefix(event.peer().to_string());
            bar.enable_steady_tick(TICK_INTERVAL);
            (bar, PeerTally::default())
        });
        tally.count(event);
        bar.set_length(tally.planned_operations as u64);
        bar.set_position(tally.sent_operations as u64);
        bar.set_message(format!(
            "{}/{}",
            ByteSize(tally.sent_bytes),
            ByteSize(tally.planned_bytes)
        ));
    }

    /// Prints a peer's lines with the bars out of the way, and drops its bar. Once every
    /// peer has answered, nothing is drawn any more (the run's closing log lines follow).
    pub(super) fn print_peer(&self, report: &PeerReport) {
        if let Ok(mut bars) = self.bars.lock() {
            if let Some((bar, _)) = bars.remove(&report.peer) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
        }
        self.multi.suspend(|| super::print_peer(report));
        let left = match self.awaited.lock() {
            Ok(mut awaited) => {
                *awaited = awaited.saturating_sub(1);
                *awaited
            }
            Err(_) => 0,
        };
        if left == 0 {
            self.clear();
        } else {
            self.waiting.set_message(awaiting(left));
        }
    }

    /// Clears whatever is still drawn and prints the summary line on stdout.
    pub(super) fn finish(&self, report: &Report, dry_run: bool) {
        self.clear();
        println!("{}", summary(report, dry_run, self.started.elapsed()));
    }

    fn clear(&self) {
        self.waiting.finish_and_clear();
        if let Ok(mut bars) = self.bars.lock() {
            for (_, (bar, _)) in bars.drain() {
                bar.finish_and_clear();
            }
        }
        let _ = self.multi.clear();
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ")
}

fn awaiting(peers: usize) -> String {
    format!(
        "comparing and pushing: waiting for {peers} peer{}",
        plural(peers)
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The closing line: `3 peers synchronised in 6.2 s: 4000 changes, 12.0 MiB sent`, with
/// the peers that failed or were skipped; for a dry run, the changes pending.
fn summary(report: &Report, dry_run: bool, elapsed: Duration) -> String {
    let peers = report.peers.len();
    let failed = report.peers.iter().filter(|p| p.failed()).count();
    let skipped = report.peers.iter().filter(|p| p.skipped.is_some()).count();
    let done = report
        .peers
        .iter()
        .flat_map(|p| &p.changes)
        .filter(|c| matches!(c.status, crate::sync::ChangeStatus::Done(_)))
        .count();
    let compared = peers.saturating_sub(failed + skipped);
    let took = format!("{:.1} s", elapsed.as_secs_f64());
    let mut line = if dry_run {
        format!(
            "dry run: {compared} of {peers} peer{} compared in {took}: {done} change{} pending",
            plural(peers),
            plural(done)
        )
    } else {
        let bytes: u64 = report.peers.iter().map(|p| p.bytes_sent).sum();
        format!(
            "{compared} of {peers} peer{} synchronised in {took}: {done} change{}, {} sent",
            plural(peers),
            plural(done),
            ByteSize(bytes)
        )
    };
    if failed > 0 {
        line.push_str(&format!(", {failed} failed"));
    }
    if skipped > 0 {
        line.push_str(&format!(", {skipped} skipped (this node)"));
    }
    if !report.local_errors.is_empty() {
        line.push_str(&format!(
            ", {} error{} on this node",
            report.local_errors.len(),
            plural(report.local_errors.len())
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ChangeKind;
    use crate::sync::{Change, ChangeStatus};

    fn peer(label: &str, done: usize, bytes: u64) -> PeerReport {
        PeerReport {
            peer: label.into(),
            changes: (0..done)
                .map(|i| Change {
                    path: format!("/etc/app/{i}").into(),
                    status: ChangeStatus::Done(ChangeKind::Added),
                })
                .collect(),
            bytes_sent: bytes,
            ..PeerReport::default()
        }
    }

    #[test]
    fn the_summary_counts_changes_bytes_and_failed_peers() {
        let mut unreachable = peer("10.0.0.4:7700", 0, 0);
        unreachable.error = Some("connection refused".into());
        let report = Report {
            local_errors: Vec::new(),
            peers: vec![
                peer("10.0.0.2:7700", 3, 2048),
                peer("10.0.0.3:7700", 1, 1024),
                unreachable,
            ],
        };
        assert_eq!(
            summary(&report, false, Duration::from_millis(6240)),
            "2 of 3 peers synchronised in 6.2 s: 4 changes, 3.0 KiB sent, 1 failed"
        );
    }

    #[test]
    fn the_dry_run_summary_counts_pending_changes() {
        let report = Report {
            local_errors: Vec::new(),
            peers: vec![peer("10.0.0.2:7700", 1, 0)],
        };
        assert_eq!(
            summary(&report, true, Duration::from_millis(400)),
            "dry run: 1 of 1 peer compared in 0.4 s: 1 change pending"
        );
    }
}
