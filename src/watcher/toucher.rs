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
use std::path::PathBuf;
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
        // A path too long for a whole-path call is looked at through the directories'
        // descriptors, as the watcher's check of open files does.
        let meta = match std::fs::symlink_metadata(&local) {
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {
                super::stat_in_tree(config, &local).ok_or(e)
            }
            found => found,
        };
        // A file holding the very version known (size, mode and mtime: a received file
        // has its sender's) is not an edit: the events a received batch made, taken
        // after the batch ended. Spooled, it would be delivered at the next start
        // whatever the file held by then.
        if holds_known(meta.as_ref().ok().map(Seen::of), known.as_ref()) {
            continue;
        }
        match meta {
            // A directory gone: everything known below it goes with it.
            Err(_) if known.as_ref().is_some_and(|e| e.content.is_dir()) => {
                touched.extend(baseline.below(path));
                gone.insert(path);
            }
            // A directory made or moved in: what it holds comes with it.
            Ok(meta) if meta.is_dir() => touched.extend(changed_below(config, baseline, path)),
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
/// and temporary names never travel. Walked through descriptors, from the configured
/// directory down and never through a link, so that a tree deeper than `PATH_MAX` is
/// noted at once, as any other (a whole path that long cannot be looked up).
fn changed_below(
    config: &Config,
    baseline: &Baseline,
    logical: &str,
) -> Vec<(LogicalPath, Option<Entry>)> {
    let Some(dir) = config.directory_of(logical) else {
        return Vec::new();
    };
    let mut parents = crate::tree::Parents::default();
    let mut below = vec![logical.to_string()];
    let mut changed = Vec::new();
    while let Some(at) = below.pop() {
        let Ok(fd) = parents.dir(config, dir, &at) else {
            continue;
        };
        let Ok(listing) = rustix::fs::Dir::read_from(&*fd) else {
            continue;
        };
        for entry in listing.flatten() {
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{at}/{name}");
            // Excluded names take what is below them out too.
            if crate::tree::confine(config, &path).is_err() {
                continue;
            }
            let seen = rustix::fs::statat(&*fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .ok()
                .map(|st| Seen::of_stat(&st));
            if seen.is_some_and(|s| s.dir) {
                below.push(path.clone());
            }
            let known = baseline.get(&path);
            if !holds_known(seen, known.as_ref()) {
                changed.push((path.into(), known));
            }
        }
    }
    changed
}

/// What a path's status says that tells whether it holds a version known.
#[derive(Clone, Copy)]
struct Seen {
    file: bool,
    dir: bool,
    size: u64,
    mode: u32,
    mtime_ns: i64,
}

impl Seen {
    fn of(meta: &std::fs::Metadata) -> Seen {
        use std::os::unix::fs::MetadataExt;
        Seen {
            file: meta.is_file(),
            dir: meta.is_dir(),
            size: meta.len(),
            mode: meta.mode() & 0o7777,
            mtime_ns: crate::manifest::mtime_ns(meta),
        }
    }

    fn of_stat(st: &rustix::fs::Stat) -> Seen {
        let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
        Seen {
            file: kind == rustix::fs::FileType::RegularFile,
            dir: kind == rustix::fs::FileType::Directory,
            size: st.st_size as u64,
            mode: st.st_mode & 0o7777,
            mtime_ns: crate::manifest::nanos(st.st_mtime, st.st_mtime_nsec as i64),
        }
    }
}

/// Whether a path `seen` so (none: gone or unreadable) is a regular file holding the
/// version `known` there: same size, mode and mtime.
fn holds_known(seen: Option<Seen>, known: Option<&Entry>) -> bool {
    let (Some(seen), Some(known)) = (seen, known) else {
        return false;
    };
    matches!(known.content, crate::protocol::Content::File { size, .. } if size == seen.size)
        && seen.file
        && known.mode == seen.mode
        && known.mtime_ns == seen.mtime_ns
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

        let mut noted = changed_below(&config, &baseline, "/etc/app/d");
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

    #[test]
    fn a_tree_moved_in_deeper_than_path_max_is_noted_whole_and_no_link_is_followed() {
        let tmp = tempfile::tempdir().unwrap();
        // A long root, so that local paths pass PATH_MAX where logical ones do not.
        let root = ["r", "s", "t"]
            .iter()
            .fold(tmp.path().to_path_buf(), |at, c| at.join(c.repeat(200)));
        std::fs::create_dir_all(&root).unwrap();
        let config = config_at(&root, "");
        std::fs::create_dir_all(config.local_path("/etc/app")).unwrap();
        let baseline = Baseline::new(scan(&config, &[], &HashCache::forgetful()).entries);
        // 15 directories of 250 bytes, each made from its parent's descriptor: the
        // deepest local paths pass 4,096 bytes, which no call taking a whole path
        // accepts, while their logical paths stay under that.
        use rustix::fs::{Mode, OFlags};
        let top: std::os::fd::OwnedFd = std::fs::File::open(config.local_path("/etc/app"))
            .unwrap()
            .into();
        let mut at = top;
        let mut logical = "/etc/app".to_string();
        let mut expected = Vec::new();
        for i in 0..15 {
            let name = format!("{i:02}{}", "d".repeat(248));
            rustix::fs::mkdirat(&at, name.as_str(), Mode::from(0o755)).unwrap();
            at = rustix::fs::openat(&at, name.as_str(), OFlags::DIRECTORY, Mode::empty()).unwrap();
            logical = format!("{logical}/{name}");
            expected.push(logical.clone());
        }
        let flags = OFlags::CREATE | OFlags::WRONLY;
        rustix::fs::openat(&at, "f.conf", flags, Mode::from(0o644)).unwrap();
        expected.push(format!("{logical}/f.conf"));
        assert!(config.local_path(&logical).as_os_str().len() > 4_096);
        assert!(std::fs::symlink_metadata(config.local_path(&logical)).is_err());
        // A link to a directory outside, planted in the tree: noted, never followed.
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.conf"), "outside").unwrap();
        let first = expected[0].clone();
        std::os::unix::fs::symlink(&outside, config.local_path(&first).join("link")).unwrap();
        expected.push(format!("{first}/link"));
        expected.remove(0);

        let mut noted: Vec<String> = changed_below(&config, &baseline, &first)
            .into_iter()
            .map(|(path, known)| {
                assert_eq!(known, None, "{path}");
                path.to_string()
            })
            .collect();
        noted.sort();
        expected.sort();
        // An event naming a directory whose own local path passes PATH_MAX: it is found
        // a directory, and brings what it holds.
        let deep = expected
            .iter()
            .find(|p| config.local_path(p).as_os_str().len() > 4_096)
            .unwrap()
            .clone();
        let mut from_event: Vec<String> = touched(&config, &baseline, std::slice::from_ref(&deep))
            .into_iter()
            .map(|(path, _)| path.to_string())
            .collect();
        from_event.sort();
        let within: Vec<String> = expected
            .iter()
            .filter(|p| crate::paths::is_within(p, &deep))
            .cloned()
            .collect();
        assert!(within.len() >= 2, "a directory and what it holds");
        assert!(
            from_event == within,
            "{} of {} noted",
            from_event.len(),
            within.len()
        );
        // Told by depth and last name: the paths themselves are 4,000 bytes long.
        let short = |paths: &[String]| -> Vec<String> {
            let name = |p: &String| p.rsplit('/').next().unwrap_or_default()[..2].to_string();
            paths
                .iter()
                .map(|p| format!("{}:{}", p.matches('/').count(), name(p)))
                .collect()
        };
        assert!(
            noted == expected,
            "{:?}\nnot {:?}",
            short(&noted),
            short(&expected)
        );
    }
}
