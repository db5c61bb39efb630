//! The `on_change` runner: a directory's commands run once for all the changes that
//! arrive together, and each caller gets the results of the run that included its
//! paths. Which commands run, and for which side's changes, is its callers' decision.

use std::time::Duration;

use super::{run, CommandResult};
use crate::config::Hooks;

/// How long a directory's `on_change` commands wait for more changes before they run,
/// so that changes arriving together (from several peers, or a burst) cause one reload.
pub const COALESCE: Duration = Duration::from_millis(250);

/// Runs each directory's `on_change` commands, once for all the changes submitted
/// within [`COALESCE`] of each other; every submitter gets the results of the run that
/// included its paths.
#[derive(Default)]
pub struct Runner {
    directories: std::sync::Mutex<std::collections::HashMap<String, Pending>>,
}

#[derive(Default)]
struct Pending {
    paths: std::collections::BTreeSet<String>,
    waiters: Vec<tokio::sync::oneshot::Sender<Vec<CommandResult>>>,
    /// The wait (`on_change_splay`) asked for by the first change since the last run.
    splay: Option<Duration>,
    running: bool,
}

impl Runner {
    /// Asks for `hooks.on_change` to run for `paths` of `directory`, and waits for the
    /// results. Nothing runs (and nothing is returned) when there are no commands. A
    /// run for which this is the first call since the last run waits `splay` first
    /// (what arrives meanwhile joins it).
    pub async fn on_change(
        self: &std::sync::Arc<Self>,
        directory: &str,
        hooks: &Hooks,
        paths: Vec<String>,
        splay: Duration,
    ) -> Vec<CommandResult> {
        if hooks.on_change.is_empty() {
            return Vec::new();
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let mut all = self.directories.lock().expect("runner lock");
            let pending = all.entry(directory.to_string()).or_default();
            pending.paths.extend(paths);
            pending.waiters.push(tx);
            pending.splay.get_or_insert(splay);
            !std::mem::replace(&mut pending.running, true)
        };
        if start {
            let runner = self.clone();
            let directory = directory.to_string();
            let hooks = hooks.clone();
            tokio::spawn(async move { runner.drive(&directory, &hooks).await });
        }
        rx.await.unwrap_or_default()
    }

    /// Runs the directory's commands while changes keep coming, each run after the wait
    /// its first change asked for (a change that comes just after a run, while more are
    /// awaited, waits its own: with `on_change_splay`, back-to-back pushes are spread
    /// over the window each time, not only the first).
    async fn drive(&self, directory: &str, hooks: &Hooks) {
        let splay_of = |all: &mut std::collections::HashMap<String, Pending>| {
            all.entry(directory.to_string()).or_default().splay
        };
        loop {
            let waited = splay_of(&mut self.directories.lock().expect("runner lock"));
            if let Some(splay) = waited.filter(|s| !s.is_zero()) {
                tracing::debug!(%directory, ?splay, "on_change waits (on_change_splay)");
                tokio::time::sleep(splay).await;
            }
            tokio::time::sleep(COALESCE).await;
            let taken = {
                let mut all = self.directories.lock().expect("runner lock");
                let pending = all.entry(directory.to_string()).or_default();
                if pending.waiters.is_empty() {
                    pending.running = false;
                    pending.splay = None;
                    return;
                }
                // A first change that came after this round began: its wait first.
                let unwaited = waited.is_none() && pending.splay.is_some_and(|s| !s.is_zero());
                (!unwaited).then(|| {
                    pending.splay = None;
                    (
                        std::mem::take(&mut pending.paths),
                        std::mem::take(&mut pending.waiters),
                    )
                })
            };
            let Some((paths, waiters)) = taken else {
                continue;
            };
            let paths: Vec<String> = paths.into_iter().collect();
            let mut results = Vec::new();
            for command in &hooks.on_change {
                let result = run(command, directory, &paths, hooks.timeout).await;
                if result.success() {
                    tracing::info!(%directory, %command, changed = paths.len(), "on_change ran");
                } else {
                    tracing::warn!(%directory, %command, ended = %result.ending, "on_change failed: {}", result.why());
                }
                results.push(result);
            }
            for waiter in waiters {
                let _ = waiter.send(results.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changes_submitted_together_cause_one_run_with_all_their_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("runs");
        let hooks = Hooks {
            on_change: vec![format!(
                "echo \"$GOSYNCD_CHANGED\" | tr '\\n' ' ' >> {}; echo >> {}",
                log.display(),
                log.display()
            )],
            ..Hooks::default()
        };
        let runner = std::sync::Arc::new(Runner::default());
        let (a, b) = tokio::join!(
            runner.on_change("/d", &hooks, vec!["/d/a".into()], Duration::ZERO),
            runner.on_change("/d", &hooks, vec!["/d/b".into()], Duration::ZERO),
        );
        assert!(a[0].success() && b[0].success(), "{a:?} {b:?}");
        let runs = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            runs.lines().collect::<Vec<_>>(),
            ["/d/a /d/b "],
            "one run for both"
        );
        // A later change runs again.
        runner
            .on_change("/d", &hooks, vec!["/d/c".into()], Duration::ZERO)
            .await;
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
    }

    #[tokio::test]
    async fn a_run_started_with_a_splay_waits_it_and_takes_what_arrives_meanwhile() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("runs");
        let hooks = Hooks {
            on_change: vec![format!(
                "echo \"$GOSYNCD_CHANGED\" | tr '\\n' ' ' >> {0}; echo >> {0}",
                log.display()
            )],
            ..Hooks::default()
        };
        let runner = std::sync::Arc::new(Runner::default());
        let splay = Duration::from_millis(600);
        let started = std::time::Instant::now();
        let late = async {
            // Well after the coalescing window, but within the splay.
            tokio::time::sleep(COALESCE * 2).await;
            runner
                .on_change("/d", &hooks, vec!["/d/late".into()], Duration::ZERO)
                .await
        };
        let (first, late) = tokio::join!(
            runner.on_change("/d", &hooks, vec!["/d/first".into()], splay),
            late
        );
        assert!(
            first[0].success() && late[0].success(),
            "{first:?} {late:?}"
        );
        assert!(
            started.elapsed() >= splay + COALESCE,
            "{:?}",
            started.elapsed()
        );
        let runs = std::fs::read_to_string(&log).unwrap();
        assert_eq!(runs.lines().collect::<Vec<_>>(), ["/d/first /d/late "]);
    }

    /// Regression: a push that came just after a run, while the runner still awaited
    /// more changes, joined the next round without a splay of its own, so back-to-back
    /// pushes reloaded every node together after the first.
    #[tokio::test]
    async fn a_change_just_after_a_run_waits_its_own_splay() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("runs");
        let hooks = Hooks {
            on_change: vec![format!("echo \"$GOSYNCD_CHANGED\" >> {}", log.display())],
            ..Hooks::default()
        };
        let runner = std::sync::Arc::new(Runner::default());
        runner
            .on_change("/d", &hooks, vec!["/d/a".into()], Duration::ZERO)
            .await;
        // At once: the runner is still awaiting more changes after its run.
        let splay = Duration::from_millis(600);
        let started = std::time::Instant::now();
        let results = runner
            .on_change("/d", &hooks, vec!["/d/b".into()], splay)
            .await;
        assert!(results[0].success(), "{results:?}");
        assert!(
            started.elapsed() >= splay + COALESCE,
            "ran {:?} after it came",
            started.elapsed()
        );
        let runs = std::fs::read_to_string(&log).unwrap();
        assert_eq!(runs.lines().collect::<Vec<_>>(), ["/d/a", "/d/b"]);
        // A run with no splay still comes after the coalescing window alone.
        let started = std::time::Instant::now();
        runner
            .on_change("/d", &hooks, vec!["/d/c".into()], Duration::ZERO)
            .await;
        assert!(started.elapsed() < splay, "{:?}", started.elapsed());
    }
}
