//! Spooling what is being written before its burst ends: a daemon killed in the
//! middle of a burst delivers the paths it touched when it starts again.
//!
//! The kernel watch's thread hands every event's path to [`Toucher`] as it arrives, and a
//! thread of its own notes each in every peer's outbox (see [`Outbox::touch`]) and
//! writes the spool, without waiting for the propagation loop, which may be busy with
//! the previous burst (scanning, validating) while the next one is being written. It
//! takes every path added meanwhile at once: a checkout of a thousand files is a few
//! spool writes, not one per event, and a path already noted is not written again.
//!
//! [`Outbox::touch`]: crate::node::Outbox::touch

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use crate::baseline::Baseline;
use crate::config::Config;
use crate::node::Node;
use crate::paths::LogicalPath;
use crate::protocol::Entry;

/// The paths handed over and not yet noted, and how far the thread got.
#[derive(Default)]
struct State {
    pending: Vec<PathBuf>,
    /// Handed over so far, in batches of events.
    added: u64,
    /// Of those, noted (or found to need nothing).
    noted: u64,
    /// The owner is gone: the thread ends.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Something was added, or the thread noted a batch, or the owner left.
    changed: Condvar,
}

/// The thread that notes touched paths; dropped, it ends.
pub struct Toucher {
    shared: Arc<Shared>,
}

/// The side the watch's reading thread holds: never blocks beyond a short lock.
#[derive(Clone)]
pub struct TouchHandle {
    shared: Arc<Shared>,
}

impl TouchHandle {
    /// Notes the local paths `paths`, soon.
    pub(super) fn add(&self, paths: impl IntoIterator<Item = PathBuf>) {
        let mut state = self.shared.state.lock().expect("touch lock");
        let before = state.pending.len();
        state.pending.extend(paths);
        if state.pending.len() > before {
            state.added += 1;
            self.shared.changed.notify_all();
        }
    }
}

impl Toucher {
    /// Starts the thread, which notes paths for `node`'s peers with the versions
    /// `baseline` records.
    pub fn start(node: Arc<Node>, baseline: Arc<Baseline>) -> std::io::Result<Toucher> {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("gosyncd-touch".into())
            .spawn(move || run(&theirs, &node, &baseline))?;
        Ok(Toucher { shared })
    }

    /// What the watch's reading thread hands paths to.
    pub fn handle(&self) -> TouchHandle {
        TouchHandle {
            shared: self.shared.clone(),
        }
    }

    /// Waits until every path handed over so far is noted.
    pub(super) async fn done(&self) {
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let state = shared.state.lock().expect("touch lock");
            let target = state.added;
            let _done = shared
                .changed
                .wait_while(state, |s| s.noted < target && !s.closed)
                .expect("touch lock");
        })
        .await;
    }
}

impl Drop for Toucher {
    fn drop(&mut self) {
        self.shared.state.lock().expect("touch lock").closed = true;
        self.shared.changed.notify_all();
    }
}

/// The thread: waits for paths, notes them all at once, says so.
fn run(shared: &Shared, node: &Node, baseline: &Baseline) {
    loop {
        let (paths, upto) = {
            let state = shared.state.lock().expect("touch lock");
            let mut state = shared
                .changed
                .wait_while(state, |s| s.pending.is_empty() && !s.closed)
                .expect("touch lock");
            if state.closed {
                return;
            }
            (std::mem::take(&mut state.pending), state.added)
        };
        let logical: BTreeSet<String> = paths
            .iter()
            // Only what this node synchronises: excluded and temporary names never
            // travel (an anonymous file's writes were dropped by the queue).
            .filter_map(|local| node.config.logical_path(local))
            .filter(|p| crate::tree::confine(&node.config, p).is_ok())
            .collect();
        let logical: Vec<String> = logical.into_iter().collect();
        touch_now(node, baseline, &logical);
        shared.state.lock().expect("touch lock").noted = upto;
        shared.changed.notify_all();
    }
}

fn touch_now(node: &Node, baseline: &Baseline, paths: &[String]) {
    let (Some(spool), Some(records)) = (&node.spool, node.peers.get()) else {
        return;
    };
    // Writes of a received batch are not this node's edits: touched now, they would be
    // spooled against versions not recorded yet, and pushed back. (Once the batch is
    // done its versions are recorded, and a touch finds nothing to deliver.)
    if paths.is_empty() || records.is_empty() || node.applying() {
        return;
    }
    let touched = touched(&node.config, baseline, paths);
    if touched.is_empty() {
        return;
    }
    // Written only when something new was noted: the writes of one file are many
    // events, and the first one noted it.
    let mut noted = false;
    for record in records {
        noted |= record.outbox.touch(&touched);
    }
    if noted {
        spool.save(false);
    }
}

/// What `paths` (sorted logical paths whose events were taken) make waiting for
/// delivery, each with the version known there: a path whose file does not hold the
/// version known; with a directory gone, everything known below it; with a directory
/// made or moved in, what it holds.
fn touched(
    config: &Config,
    baseline: &Baseline,
    paths: &[String],
) -> Vec<(LogicalPath, Option<Entry>)> {
    let mut touched: Vec<_> = Vec::new();
    // The directories found gone: everything known below each is noted with it, and the
    // paths below it that follow it (`paths` is sorted, parents first) are not noted
    // again. In an `rm -rf`, each path would otherwise be copied once per directory
    // above it.
    let mut gone: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let below_gone = |gone: &std::collections::HashSet<&str>, path: &str| {
        crate::paths::ancestors(path).any(|at| gone.contains(at))
    };
    for path in paths {
        // Only what the baseline knows came with the directory: a path it does not
        // know (made again since, say) is looked at as any other.
        if !gone.is_empty() && below_gone(&gone, path) && baseline.knows(path) {
            continue;
        }
        let known = baseline.get(path);
        let local = config.local_path(path);
        let meta = std::fs::symlink_metadata(&local);
        // A file holding the very version known (size, mode and mtime: a received file
        // has its sender's) is not an edit: the events a received batch made, taken
        // after the batch ended. Spooled, it would be delivered at the next start
        // whatever the file held by then.
        if holds_known(meta.as_ref().ok(), known.as_ref()) {
            continue;
        }
        match meta {
            // A directory gone: everything known below it goes with it.
            Err(_) if known.as_ref().is_some_and(|e| e.content.is_dir()) => {
                touched.extend(baseline.below(path));
                gone.insert(path);
            }
            // A directory made or moved in: what it holds comes with it.
            Ok(meta) if meta.is_dir() => touched.extend(changed_below(config, baseline, &local)),
            _ => {}
        }
        touched.push((path.as_str().into(), known));
    }
    touched
}

/// What a directory made or moved in holds, each path with the version known there,
/// but for the files holding that very version: those of a received batch, whose
/// directory's event is taken after the batch ended (a large batch's would otherwise
/// all be noted, and spooled, once more). Only what this node synchronises: excluded
/// and temporary names never travel.
fn changed_below(
    config: &Config,
    baseline: &Baseline,
    local: &Path,
) -> Vec<(LogicalPath, Option<Entry>)> {
    walkdir::WalkDir::new(local)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let path = config.logical_path(e.path())?;
            crate::tree::confine(config, &path).ok()?;
            let known = baseline.get(&path);
            let holds = holds_known(e.metadata().ok().as_ref(), known.as_ref());
            (!holds).then_some((path.into(), known))
        })
        .collect()
}

/// Whether a path found with `meta` (none: gone or unreadable) is a regular file holding
/// the version `known` there: same size, mode and mtime.
fn holds_known(meta: Option<&std::fs::Metadata>, known: Option<&Entry>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Some(meta), Some(known)) = (meta, known) else {
        return false;
    };
    matches!(known.content, crate::protocol::Content::File { size, .. } if size == meta.len())
        && meta.is_file()
        && known.mode == meta.mode() & 0o7777
        && known.mtime_ns == crate::manifest::mtime_ns(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{scan, HashCache};
    use crate::testing::config_at;

    #[test]
    fn a_tree_deleted_is_noted_once_each_path_with_the_version_known() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config_at(tmp.path(), "");
        let app = tmp.path().join("etc/app");
        for dir in ["d/sub/deeper", "d.d"] {
            std::fs::create_dir_all(app.join(dir)).unwrap();
        }
        for file in ["d/a", "d/sub/b", "d/sub/deeper/c", "d.d/e", "kept"] {
            std::fs::write(app.join(file), file).unwrap();
        }
        let baseline = Baseline::new(scan(&config, &[], &HashCache::forgetful()).entries);
        std::fs::remove_dir_all(app.join("d")).unwrap();
        std::fs::remove_dir_all(app.join("d.d")).unwrap();
        // The events of an `rm -rf` of both, sorted as the toucher takes them.
        let paths: Vec<String> = [
            "d",
            "d.d",
            "d.d/e",
            "d/a",
            "d/sub",
            "d/sub/b",
            "d/sub/deeper",
            "d/sub/deeper/c",
        ]
        .iter()
        .map(|p| format!("/etc/app/{p}"))
        .collect();
        let noted = touched(&config, &baseline, &paths);
        let mut seen: Vec<&str> = noted.iter().map(|(p, _)| p.as_str()).collect();
        seen.sort_unstable();
        let mut expected: Vec<&str> = paths.iter().map(String::as_str).collect();
        expected.sort_unstable();
        // Every path gone, none twice: `d` and what it held, `d.d` and `e`, not `kept`.
        assert_eq!(seen, expected);
        for (path, known) in &noted {
            assert_eq!(known, &baseline.get(path), "{path}");
            assert!(known.is_some(), "{path}");
        }
    }

    #[test]
    fn a_directory_noted_brings_what_it_holds_but_the_files_holding_the_version_known() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config_at(tmp.path(), r#""*.swp""#);
        let dir = tmp.path().join("etc/app/d");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in ["received", "edited", "sub/received"] {
            std::fs::write(dir.join(name), b"v1").unwrap();
        }
        let known = scan(&config, &[], &HashCache::forgetful());
        let baseline = Baseline::new(known.entries);
        std::fs::write(dir.join("edited"), b"v2, longer").unwrap();
        std::fs::write(dir.join("new"), b"v1").unwrap();
        std::fs::write(dir.join("edited.swp"), b"x").unwrap();

        let mut noted = changed_below(&config, &baseline, &dir);
        noted.sort_by(|a, b| a.0.cmp(&b.0));
        let paths: Vec<&str> = noted.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["/etc/app/d/edited", "/etc/app/d/new", "/etc/app/d/sub"]
        );
        // Each with the version known, which a delivery expects the peer to hold.
        assert!(noted[0].1.is_some());
        assert_eq!(noted[1].1, None);
    }
}
