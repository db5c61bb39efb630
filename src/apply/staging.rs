//! Receiving a batch's contents as they arrive: each file's bytes go straight from the
//! request body into a file on the filesystem of its configured directory, hashed on the
//! way, so that a receiver never holds a batch in memory. Only once the whole body has
//! arrived and every hash matched is the batch carried out; the session then moves each
//! received file next to its target. A body that fails half-way (a bad hash, a truncated
//! or stalled stream) leaves nothing behind.
//!
//! Contents are received into anonymous files (`O_TMPFILE`: no name, so nothing in the
//! directory changes until one is linked next to its target, and nothing survives a
//! crash) as long as this process holds fewer than its [`Budget`] allows; the rest, or
//! all of them where the filesystem has no anonymous files, into temporary files at the
//! top of the configured directory, removed when the batch does not take them.
//!
//! It decides nothing about the operations: a content this node cannot keep (a full
//! disk, a missing directory) becomes that operation's failure, told to the session.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::writeback::Early;
use crate::config::Config;
use crate::protocol::{Action, BatchHeader, BatchReader, ContentError};
use crate::tree::{open_dir, temp_name};

/// Contents held in anonymous files at least, whatever the descriptor limit.
const ANONYMOUS_MIN: usize = 64;

/// How many contents may be held in open anonymous files at once, by all the batches
/// being received: each holds a descriptor until its batch is carried out. Past it,
/// contents are received into named temporary files, which hold none.
pub(crate) struct Budget {
    held: AtomicUsize,
    most: usize,
}

impl Budget {
    pub(crate) const fn new(most: usize) -> Budget {
        Budget {
            held: AtomicUsize::new(0),
            most,
        }
    }

    /// This process's budget: half the descriptors it may open (the daemon raises its
    /// soft limit to the hard one as it starts), at least [`ANONYMOUS_MIN`].
    fn of_process() -> &'static Budget {
        static BUDGET: OnceLock<Budget> = OnceLock::new();
        BUDGET.get_or_init(|| {
            let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(u64::MAX);
            let half = usize::try_from(soft / 2).unwrap_or(usize::MAX);
            Budget::new(half.max(ANONYMOUS_MIN))
        })
    }

    /// A place for one more anonymous file, if the budget has one.
    fn take(&'static self) -> Option<Slot> {
        if self.held.fetch_add(1, Ordering::Relaxed) < self.most {
            Some(Slot(self))
        } else {
            self.held.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

/// One anonymous file's place in its [`Budget`], given back when it is dropped.
struct Slot(&'static Budget);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A file's content received on the filesystem of its configured directory. Dropped
/// without being taken, it is gone.
pub(crate) struct Received {
    top: Arc<OwnedFd>,
    held: Held,
}

/// Where a received content is.
enum Held {
    /// An anonymous file, open, with its place in the budget.
    Anonymous { file: File, _slot: Slot },
    /// A temporary file at the top of the configured directory (empty once moved), with
    /// its inode, so that the one moved into place is known to be it.
    Named { tmp: String, inode: (u64, u64) },
}

/// The contents of one batch, by operation: `None` where no content travels, the
/// reason where one could not be kept here.
#[derive(Default)]
pub struct Staged {
    files: Vec<Option<Result<Received, String>>>,
}

impl Staged {
    /// Takes the content of operation `index`, to be moved into place.
    pub(super) fn take(&mut self, index: usize) -> Option<Result<Received, String>> {
        self.files.get_mut(index).and_then(Option::take)
    }

    /// How many operations carry content.
    pub(super) fn files(&self) -> usize {
        self.files.iter().filter(|f| f.is_some()).count()
    }
}

/// Reads the contents of a batch whose header is validated, each into a temporary file
/// at the top of its configured directory, then checks that the body ends there, and
/// hands back the header with the contents. A body that fails is refused whole:
/// whatever was received is removed.
pub fn receive<R: Read>(
    config: &Config,
    reader: BatchReader<R>,
) -> Result<(BatchHeader, Staged), String> {
    receive_within(config, reader, Budget::of_process())
}

/// [`receive`], holding as many anonymous files as `budget` has room for.
fn receive_within<R: Read>(
    config: &Config,
    mut reader: BatchReader<R>,
    budget: &'static Budget,
) -> Result<(BatchHeader, Staged), String> {
    // Per configured directory: where its anonymous files are made, and its top.
    type Opened = Result<(Arc<OwnedFd>, Arc<OwnedFd>), String>;
    let mut tops: BTreeMap<String, Opened> = BTreeMap::new();
    let mut staged = Staged::default();
    // A batch flushed with one `syncfs` at its end starts writing back early.
    let contents = reader
        .header
        .ops
        .iter()
        .filter(|op| op.needs_content().is_some())
        .count();
    let mut early = super::batch::flushed_together(contents).then(Early::default);
    for index in 0..reader.header.ops.len() {
        let op = &reader.header.ops[index];
        let Some(size) = op.needs_content() else {
            staged.files.push(None);
            continue;
        };
        // An anonymous file is made with the permissions it is to have (the umask
        // allowing), so that it rarely needs a change of mode: nobody can open it
        // before it has a name.
        let mode = match &op.action {
            Action::Put { entry } => entry.mode & 0o777,
            _ => 0o600,
        };
        let dir = config
            .directory_of(&op.path)
            .ok_or_else(|| format!("{}: outside the configured directories", op.path))?;
        // Looked up before it is made: the directory's path is copied once, not per file.
        let top = match tops.get(&dir.path) {
            Some(top) => top.clone(),
            None => {
                let top = open_dir(config.local_path(&dir.path))
                    .map(Arc::new)
                    .map(|top| (anonymous_files_in(config, &top), top))
                    .map_err(|e| format!("cannot open the configured directory {}: {e}", dir.path));
                tops.insert(dir.path.clone(), top.clone());
                top
            }
        };
        let file = match top {
            Ok((unwatched, top)) => {
                if let Some(early) = &mut early {
                    early.received(size, &top);
                }
                let anonymous_in = budget.take().map(|slot| (&*unwatched, slot));
                receive_one(&mut reader, index, top, anonymous_in, mode)?
            }
            Err(reason) => {
                into_nothing(&mut reader, index)?;
                Err(reason)
            }
        };
        staged.files.push(Some(file));
    }
    let header = std::mem::take(&mut reader.header);
    reader.finish()?;
    Ok((header, staged))
}

/// Where the anonymous files for the configured directory opened as `top` are made: the
/// state directory, where that is on the same mount (so that a file made there can be
/// linked into `top`), else `top` itself. The kernel tells the watcher of every write to
/// an anonymous file made in a watched directory (under a name it makes up, `#` and the
/// inode number), several events per file received, which the watcher wakes up for and
/// drops; made in the state directory, nothing in the watched tree changes until the
/// file is linked next to its target.
///
/// A new file takes some of its attributes from the directory it is made in, and those
/// must be the configured directory's: where files get a security label (SELinux,
/// Smack), where `top` hands its group down (set-group-ID) or has a default ACL, the
/// anonymous files are made in `top` as before.
fn anonymous_files_in(config: &Config, top: &Arc<OwnedFd>) -> Arc<OwnedFd> {
    let labelled = ["/sys/fs/selinux/enforce", "/sys/fs/smackfs/load2"]
        .iter()
        .any(|marker| std::path::Path::new(marker).exists());
    if labelled {
        return top.clone();
    }
    use rustix::fs::{statx, StatxFlags};
    let elsewhere = || -> io::Result<Option<OwnedFd>> {
        let mount_of = |fd: &OwnedFd| -> io::Result<Option<u64>> {
            let st = statx(
                fd,
                "",
                AtFlags::EMPTY_PATH,
                StatxFlags::MODE | StatxFlags::MNT_ID,
            )?;
            let inherits = u32::from(st.stx_mode) & Mode::SGID.bits() != 0;
            let known = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID);
            Ok((known && !inherits).then_some(st.stx_mnt_id))
        };
        // A default ACL: the size of the attribute, asked with an empty buffer.
        let acl = rustix::fs::fgetxattr(&**top, "system.posix_acl_default", &mut [0u8; 0][..]);
        let Some(mount) = mount_of(top)?.filter(|_| acl.is_err()) else {
            return Ok(None);
        };
        let state = open_dir(&config.state_directory)?;
        Ok((mount_of(&state)? == Some(mount)).then_some(state))
    };
    match elsewhere() {
        Ok(Some(state)) => Arc::new(state),
        _ => top.clone(),
    }
}

/// Receives one content into a new file on the filesystem of `top`, anonymous when
/// `anonymous_in` says where, with its place in the budget (and the filesystem has
/// them): the file, or why it could not be kept (the body was read past it all the
/// same). `Err` outside: the body fails.
fn receive_one<R: Read>(
    reader: &mut BatchReader<R>,
    index: usize,
    top: Arc<OwnedFd>,
    anonymous_in: Option<(&OwnedFd, Slot)>,
    mode: u32,
) -> Result<Result<Received, String>, String> {
    let created = match anonymous_in.map(|(dir, slot)| (create_anonymous(dir, mode), slot)) {
        Some((Ok(fd), slot)) => {
            let file = File::from(fd);
            Ok((Held::Anonymous { file, _slot: slot }, None))
        }
        Some((Err(_), _)) | None => create_named(&top).map(|(held, file)| (held, Some(file))),
    };
    let (held, named) = match created {
        Ok(created) => created,
        Err(e) => {
            into_nothing(reader, index)?;
            return Ok(Err(format!("cannot receive the content: {e}")));
        }
    };
    let received = Received { top, held };
    let mut sink: &File = match (&received.held, &named) {
        (Held::Anonymous { file, .. }, _) => file,
        (Held::Named { .. }, Some(file)) => file,
        (Held::Named { .. }, None) => unreachable!("a named file is created open"),
    };
    match reader.content_into(index, &mut sink) {
        // Its writeback is left to the batch's flush, which writes the contents of many
        // files together. Started here for each file (`fadvise`), it cost a request to
        // the disk per file from this thread: the initial sync of 10,000 files on disk
        // took 10-15% longer.
        Ok(()) => Ok(Ok(received)),
        Err(ContentError::Body(why)) => Err(why),
        Err(ContentError::Sink(e)) => Ok(Err(format!("cannot receive the content: {e}"))),
    }
}

/// An anonymous file on the filesystem of `top`, with permissions `mode`.
fn create_anonymous(top: &OwnedFd, mode: u32) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        top,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?)
}

/// A new temporary file at `top`, with the descriptor to write it through.
fn create_named(top: &OwnedFd) -> io::Result<(Held, File)> {
    let tmp = temp_name();
    let fd = rustix::fs::openat(
        top,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    match rustix::fs::fstat(&fd) {
        Ok(st) => Ok((
            Held::Named {
                tmp,
                inode: (st.st_dev, st.st_ino),
            },
            File::from(fd),
        )),
        Err(e) => {
            let _ = rustix::fs::unlinkat(top, tmp.as_str(), AtFlags::empty());
            Err(e.into())
        }
    }
}

/// Reads one content through, checking it, for an operation that cannot be carried out.
fn into_nothing<R: Read>(reader: &mut BatchReader<R>, index: usize) -> Result<(), String> {
    match reader.content_into(index, &mut io::sink()) {
        Ok(()) | Err(ContentError::Sink(_)) => Ok(()),
        Err(ContentError::Body(why)) => Err(why),
    }
}

impl Received {
    /// The top of the configured directory it was received for, opened before the batch
    /// wrote anything there.
    pub(super) fn top(&self) -> &Arc<OwnedFd> {
        &self.top
    }

    /// The anonymous file holding the content, if it is one: it can be given its
    /// metadata before it has a name, and then be linked at its target's.
    pub(super) fn anonymous(&self) -> Option<&File> {
        match &self.held {
            Held::Anonymous { file, .. } => Some(file),
            Held::Named { .. } => None,
        }
    }

    /// Links the anonymous file at `name` in `parent` (failing with `EXIST` where the
    /// name is taken), and says what it is once named. Not for a named file.
    pub(super) fn link_at(
        &self,
        parent: &OwnedFd,
        name: &str,
    ) -> rustix::io::Result<rustix::fs::Stat> {
        let Some(file) = self.anonymous() else {
            return Err(Errno::INVAL);
        };
        link_anonymous(file.as_fd(), parent, name)?;
        rustix::fs::fstat(file)
    }

    /// Puts the received file in `parent` under a new temporary name, and opens it to be
    /// given its metadata. Across filesystems (a mount below the configured directory),
    /// its bytes are copied instead.
    pub(super) fn move_to(mut self, parent: &OwnedFd) -> io::Result<(String, File)> {
        let tmp = temp_name();
        match &mut self.held {
            Held::Anonymous { file, .. } => match link_anonymous(file.as_fd(), parent, &tmp) {
                Ok(()) => {
                    let Held::Anonymous { file, .. } = std::mem::replace(
                        &mut self.held,
                        Held::Named {
                            tmp: String::new(),
                            inode: (0, 0),
                        },
                    ) else {
                        unreachable!("matched as anonymous")
                    };
                    Ok((tmp, file))
                }
                Err(Errno::XDEV) => {
                    rustix::fs::seek(&*file, rustix::fs::SeekFrom::Start(0))?;
                    copy_into(file, parent, tmp)
                }
                Err(e) => Err(e.into()),
            },
            Held::Named { tmp: name, inode } => {
                let inode = *inode;
                match rustix::fs::renameat(&self.top, name.as_str(), parent, tmp.as_str()) {
                    Ok(()) => {
                        name.clear();
                        let opened = rustix::fs::openat(
                            parent,
                            tmp.as_str(),
                            OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )
                        .and_then(|fd| Ok((rustix::fs::fstat(&fd)?, fd)));
                        match opened {
                            Ok((st, fd)) if (st.st_dev, st.st_ino) == inode => {
                                Ok((tmp, File::from(fd)))
                            }
                            other => {
                                let _ =
                                    rustix::fs::unlinkat(parent, tmp.as_str(), AtFlags::empty());
                                Err(match other {
                                    Err(e) => e.into(),
                                    Ok(_) => replaced(),
                                })
                            }
                        }
                    }
                    Err(Errno::XDEV) => {
                        let source = rustix::fs::openat(
                            &self.top,
                            name.as_str(),
                            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                            Mode::empty(),
                        )?;
                        let st = rustix::fs::fstat(&source)?;
                        if (st.st_dev, st.st_ino) != inode {
                            return Err(replaced());
                        }
                        copy_into(&File::from(source), parent, tmp)
                    }
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

fn replaced() -> io::Error {
    io::Error::other("the received content was replaced before it was put in place")
}

/// Gives the anonymous file `fd` the name `tmp` in `parent`: by descriptor (which takes
/// `CAP_DAC_READ_SEARCH`, as a daemon running as root has), or else through its `/proc`
/// link.
fn link_anonymous(
    fd: std::os::fd::BorrowedFd<'_>,
    parent: &OwnedFd,
    tmp: &str,
) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    match rustix::fs::linkat(fd, "", parent, tmp, AtFlags::EMPTY_PATH) {
        Err(Errno::PERM | Errno::NOENT | Errno::INVAL) => {
            let proc_link = format!("/proc/self/fd/{}", fd.as_raw_fd());
            rustix::fs::linkat(
                rustix::fs::CWD,
                proc_link.as_str(),
                parent,
                tmp,
                AtFlags::SYMLINK_FOLLOW,
            )
        }
        linked => linked,
    }
}

/// Copies `source` into a new temporary file `tmp` in `parent`.
fn copy_into(mut source: &File, parent: &OwnedFd, tmp: String) -> io::Result<(String, File)> {
    let fd = rustix::fs::openat(
        parent,
        tmp.as_str(),
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut file = File::from(fd);
    match io::copy(&mut source, &mut file) {
        Ok(_) => Ok((tmp, file)),
        Err(e) => {
            let _ = rustix::fs::unlinkat(parent, tmp.as_str(), AtFlags::empty());
            Err(e)
        }
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        if let Held::Named { tmp, .. } = &self.held {
            if !tmp.is_empty() {
                let _ = rustix::fs::unlinkat(self.top.as_fd(), tmp.as_str(), AtFlags::empty());
            }
        }
    }
}

/// The content `bytes` for a put of `path`, received as a batch of its own would be.
#[cfg(test)]
pub(super) fn received(config: &Config, path: &str, bytes: &[u8]) -> Received {
    received_within(config, path, bytes, Budget::of_process())
}

/// [`received`], into a named temporary file (as past the budget).
#[cfg(test)]
pub(super) fn received_named(config: &Config, path: &str, bytes: &[u8]) -> Received {
    static NONE: Budget = Budget::new(0);
    received_within(config, path, bytes, &NONE)
}

#[cfg(test)]
fn received_within(config: &Config, path: &str, bytes: &[u8], budget: &'static Budget) -> Received {
    let header = crate::protocol::BatchHeader::new(vec![crate::testing::put(path, bytes)]);
    let body = crate::protocol::encode_batch(&header, &[bytes]);
    let reader = BatchReader::start(body.as_slice()).expect("a well-formed batch");
    let (_, mut staged) = receive_within(config, reader, budget).expect("received");
    staged.take(0).expect("a content").expect("kept")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::test_config;
    use crate::protocol::encode_batch;
    use crate::testing::put;

    /// Names in `dir` other than the ones the test made.
    fn temp_names(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| crate::tree::is_temp_name(n))
            .collect()
    }

    /// A batch of `n` puts in `/etc/app`, the last content replaced by `last`.
    fn batch_of(n: usize, last: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let contents: Vec<Vec<u8>> = (0..n).map(|i| format!("file {i}\n").into_bytes()).collect();
        let ops = (0..n)
            .map(|i| put(&format!("/etc/app/f{i}"), &contents[i]))
            .collect();
        let mut sent: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
        sent[n - 1] = last;
        let body = encode_batch(&crate::protocol::BatchHeader::new(ops), &sent);
        (body, contents)
    }

    #[test]
    fn a_large_batch_starts_flushing_while_it_arrives_and_a_batch_flushed_file_by_file_does_not() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        std::fs::create_dir_all(tmp.path().join("etc/app")).unwrap();
        let megabyte = |i: usize| vec![i as u8; 1 << 20];
        let receive = |files: usize| {
            let contents: Vec<Vec<u8>> = (0..files).map(megabyte).collect();
            let ops = (0..files)
                .map(|i| put(&format!("/etc/app/big{i}"), &contents[i]))
                .collect();
            let sent: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
            let body = encode_batch(&crate::protocol::BatchHeader::new(ops), &sent);
            let before = super::super::writeback::started();
            let reader = BatchReader::start(body.as_slice()).unwrap();
            let (_, staged) = receive(&c, reader).unwrap();
            assert_eq!(staged.files(), files);
            assert!(staged.files.iter().all(|f| matches!(f, Some(Ok(_)))));
            super::super::writeback::started() - before
        };
        // 16 files of 1 MiB: each is fsynced on its own, nothing starts early.
        assert_eq!(receive(FSYNC_EACH), 0);
        // 20 MiB in 20 files, flushed together at the end: a flush starts once 8 MiB
        // arrived (and again at 16 unless the first still runs).
        let started = receive(FSYNC_EACH + 4);
        assert!((1..=2).contains(&started), "{started} early flushes");
    }

    /// The most contents a batch fsyncs one by one.
    const FSYNC_EACH: usize = crate::apply::batch::FSYNC_EACH_MAX_FILES;

    #[test]
    fn contents_past_the_anonymous_budget_are_named_and_all_go_when_the_body_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        // A budget of 64 anonymous contents: the rest are named.
        let budget: &'static Budget = Box::leak(Box::new(Budget::new(ANONYMOUS_MIN)));
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let n = ANONYMOUS_MIN + 36;

        let (body, _) = batch_of(n, b"file 99 but not as announced");
        let reader = BatchReader::start(body.as_slice()).unwrap();
        let err = receive_within(&c, reader, budget)
            .err()
            .expect("a bad hash refuses the batch");
        assert!(
            err.contains("/etc/app/f99") && err.contains("does not match"),
            "{err}"
        );
        assert_eq!(
            temp_names(&app),
            Vec::<String>::new(),
            "nothing is left behind"
        );

        let (body, contents) = batch_of(n, format!("file {}\n", n - 1).as_bytes());
        let reader = BatchReader::start(body.as_slice()).unwrap();
        let (_, mut staged) = receive_within(&c, reader, budget).unwrap();
        let named = (0..n)
            .filter(|&i| {
                matches!(
                    staged.files[i],
                    Some(Ok(Received {
                        held: Held::Named { .. },
                        ..
                    }))
                )
            })
            .count();
        assert_eq!(named, 36, "past the budget, contents are named");
        assert_eq!(temp_names(&app).len(), 36);
        // The budget is the process's, not the batch's: while these are held, another
        // batch's contents are all named.
        let (body, _) = batch_of(3, b"file 2\n");
        let reader = BatchReader::start(body.as_slice()).unwrap();
        let (_, other) = receive_within(&c, reader, budget).unwrap();
        assert!(
            other.files.iter().all(|f| matches!(
                f,
                Some(Ok(Received {
                    held: Held::Named { .. },
                    ..
                }))
            )),
            "the budget is spent"
        );
        drop(other);
        // Each one, taken and moved next to its target, holds its bytes.
        for (i, content) in contents.iter().enumerate().step_by(9) {
            let received = staged.take(i).unwrap().unwrap();
            let parent = open_dir(&app).unwrap();
            let (tmp, _) = received.move_to(&parent).unwrap();
            assert_eq!(
                &std::fs::read(app.join(&tmp)).unwrap(),
                content,
                "content {i}"
            );
            std::fs::remove_file(app.join(&tmp)).unwrap();
        }
        drop(staged);
        assert_eq!(
            temp_names(&app),
            Vec::<String>::new(),
            "the rest are removed"
        );
        assert_eq!(
            budget.held.load(Ordering::Relaxed),
            0,
            "every anonymous file gave its place back"
        );
    }

    /// Where each content of a batch is held: the directory its anonymous file was made
    /// in, as the kernel names it (`/proc/self/fd`).
    fn made_in(staged: &Staged) -> Vec<std::path::PathBuf> {
        use std::os::fd::AsRawFd;
        staged
            .files
            .iter()
            .map(|file| match file {
                Some(Ok(Received {
                    held: Held::Anonymous { file, .. },
                    ..
                })) => {
                    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
                    let target = std::fs::read_link(link).unwrap();
                    target.parent().unwrap().to_path_buf()
                }
                _ => panic!("an anonymous file"),
            })
            .collect()
    }

    #[test]
    fn anonymous_files_are_made_in_the_state_directory_unless_the_top_hands_attributes_down() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let mut c = test_config(tmp.path());
        c.state_directory = tmp.path().join("state");
        std::fs::create_dir(&c.state_directory).unwrap();
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let receive_three = || {
            let (body, contents) = batch_of(3, b"file 2\n");
            let reader = BatchReader::start(body.as_slice()).unwrap();
            let (_, staged) = receive(&c, reader).unwrap();
            (staged, contents)
        };

        let (mut staged, contents) = receive_three();
        assert_eq!(made_in(&staged), vec![c.state_directory.clone(); 3]);
        assert!(temp_names(&app).is_empty(), "nothing is named in the top");
        // Moved next to its target, it holds its bytes.
        let received = staged.take(1).unwrap().unwrap();
        let (tmp_name, _) = received.move_to(&open_dir(&app).unwrap()).unwrap();
        assert_eq!(std::fs::read(app.join(&tmp_name)).unwrap(), contents[1]);
        std::fs::remove_file(app.join(&tmp_name)).unwrap();
        drop(staged);

        // A top that hands its group down: made there, as a file made in it would be.
        let mode = std::fs::metadata(&app).unwrap().permissions().mode();
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(mode | 0o2000)).unwrap();
        let (staged, _) = receive_three();
        assert_eq!(made_in(&staged), vec![app.clone(); 3]);
        drop(staged);
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(mode)).unwrap();

        // No state directory: in the top.
        std::fs::remove_dir(&c.state_directory).unwrap();
        let (staged, _) = receive_three();
        assert_eq!(made_in(&staged), vec![app.clone(); 3]);
    }

    #[test]
    fn a_truncated_body_refuses_the_batch_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let c = test_config(tmp.path());
        let app = tmp.path().join("etc/app");
        std::fs::create_dir_all(&app).unwrap();
        let (body, _) = batch_of(5, b"file 4\n");
        let cut = &body[..body.len() - 3];
        let reader = BatchReader::start(cut).unwrap();
        let err = receive(&c, reader)
            .err()
            .expect("a truncated body is refused");
        assert!(
            err.contains("/etc/app/f4") && err.contains("truncated"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&app).unwrap().count(), 0);
    }
}
