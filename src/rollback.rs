//! Putting a batch back: what each path held before a batch changed it, in a directory
//! whose `validate` command checks what it receives. A previous file or link is kept as
//! a hard link under a temporary name until the batch is accepted.
//!
//! What a batch changes there is also written, change by change and before each change
//! is made, to a journal at the top of the configured directory. A batch is accepted
//! when its validation passes; the journal is removed then, before the kept links. A
//! daemon that stops before that (a crash, a kill) finds the journal at its next start
//! and puts the batch back with [`recover`]: a change that was never validated never
//! counts as accepted. The journal is the `journal` child module.

mod journal;

pub(crate) use journal::Journal;
pub use journal::{recover, Recovered};

use std::io;
use std::sync::Arc;

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode};
use rustix::io::Errno;

use crate::config::Config;
use crate::tree::Parents;

/// What a path held before a batch changed it, kept so that the change can be undone.
pub(crate) struct Undo {
    pub index: usize,
    /// The configured directory.
    pub dir: String,
    /// The logical path; its directory is opened again to undo (it may have been
    /// deleted and re-created since).
    pub path: String,
    pub previous: Previous,
}

pub(crate) enum Previous {
    /// Nothing was there.
    Absent,
    /// A file or symlink, still linked under a temporary name.
    Linked(Kept),
    /// A directory, with its mode.
    Dir(u32),
}

impl Undo {
    /// Restores the previous state, reaching the path through `parents`, shared by the
    /// changes put back together.
    pub(crate) fn put_back(&mut self, config: &Config, parents: &mut Parents) -> io::Result<()> {
        let dir = config
            .directory_of(&self.path)
            .ok_or_else(|| io::Error::other("outside the configured directories"))?;
        let (parent, name) = parents.parent(config, dir, &self.path).map_err(|e| {
            if e.missing {
                io::Error::new(io::ErrorKind::NotFound, e.to_string())
            } else {
                io::Error::other(e.to_string())
            }
        })?;
        let now = rustix::fs::statat(&parent, name.as_str(), AtFlags::SYMLINK_NOFOLLOW);
        let is_dir = now.as_ref().is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
        });
        let exists = now.is_ok();
        match &self.previous {
            Previous::Absent => {
                if exists {
                    let flags = if is_dir {
                        AtFlags::REMOVEDIR
                    } else {
                        AtFlags::empty()
                    };
                    rustix::fs::unlinkat(&parent, name.as_str(), flags)?;
                }
            }
            Previous::Linked(kept) => {
                if is_dir {
                    rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::REMOVEDIR)?;
                }
                rustix::fs::renameat(&*kept.holder, kept.tmp.as_str(), &parent, name.as_str())?;
                self.previous = Previous::Absent;
                return Ok(());
            }
            Previous::Dir(mode) => {
                if exists && !is_dir {
                    rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::empty())?;
                }
                if !is_dir {
                    rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(*mode))?;
                }
                let fd = crate::tree::open_subdir(&parent, name.as_str())?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(*mode))?;
            }
        }
        let _ = rustix::fs::fsync(&parent);
        Ok(())
    }

    /// Removes the temporary link that kept the previous version, if any.
    pub fn forget(&self) {
        if let Previous::Linked(kept) = &self.previous {
            kept.forget();
        }
    }
}

/// A previous file or symlink kept under a temporary name in `holder`.
#[derive(Clone)]
pub(crate) struct Kept {
    pub holder: Arc<OwnedFd>,
    pub tmp: String,
    /// Whether `holder` is the file's own directory (another filesystem than the top of
    /// the configured directory) rather than the top.
    pub beside: bool,
}

impl Kept {
    pub fn forget(&self) {
        let _ = rustix::fs::unlinkat(&*self.holder, self.tmp.as_str(), AtFlags::empty());
    }
}

/// Links the file or symlink `name` of `parent` under a temporary name in `top`, the
/// opened top of its configured directory (next to it when that is another filesystem).
/// `None` when there is nothing to link: no entry, or a directory.
pub(crate) fn keep_previous(
    top: &Arc<OwnedFd>,
    parent: &OwnedFd,
    name: &str,
) -> io::Result<Option<Kept>> {
    let tmp = crate::tree::temp_name();
    let (holder, beside) =
        match rustix::fs::linkat(parent, name, &**top, tmp.as_str(), AtFlags::empty()) {
            Ok(()) => (top.clone(), false),
            Err(Errno::XDEV) => {
                rustix::fs::linkat(parent, name, parent, tmp.as_str(), AtFlags::empty())?;
                (Arc::new(parent.try_clone()?), true)
            }
            Err(Errno::NOENT) | Err(Errno::PERM) | Err(Errno::ISDIR) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
    Ok(Some(Kept {
        holder,
        tmp,
        beside,
    }))
}
