//! What a sender asks a receiver to do to one path ([`Op`], its [`Action`] and the state
//! it was planned against), the change users see ([`ChangeKind`]), and how the receiver
//! says it ended ([`Outcome`], [`OpResult`]). It neither plans operations nor carries
//! them out.

use serde::{Deserialize, Serialize};

use super::{Content, Entry};
use crate::paths::LogicalPath;

/// What an operation does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Action {
    /// Make the path hold `entry`. File content follows in the batch body when
    /// [`Op::needs_content`] says so.
    Put { entry: Entry },
    /// Remove the path (a directory only when it is empty).
    Delete,
}

/// One operation, with the receiver's state it was planned against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub path: LogicalPath,
    #[serde(flatten)]
    pub action: Action,
    /// What the receiver held when the operation was planned (`None`: nothing).
    /// The receiver refuses the operation as a conflict when this no longer holds.
    /// Boxed: an operation is 96 bytes instead of 160, and the operations of a push to
    /// empty peers (none of which expects anything) 6 MB less at 100,000 paths.
    pub expect: Option<Box<Entry>>,
}

impl Op {
    /// Whether the batch body carries content for this operation: a file whose
    /// content differs from what the receiver is expected to hold.
    pub fn needs_content(&self) -> Option<u64> {
        content_needed(self.put(), self.expect.as_deref())
    }

    /// The change this operation makes, as shown to users.
    pub fn change(&self) -> ChangeKind {
        change_of(self.put().is_some(), self.expect.is_some())
    }

    /// The state it puts; `None`: a deletion.
    pub fn put(&self) -> Option<&Entry> {
        match &self.action {
            Action::Put { entry } => Some(entry),
            Action::Delete => None,
        }
    }
}

/// The size of the content a batch body carries for an operation that puts `put` where
/// the receiver is expected to hold `expect`: a file whose content differs from it.
pub(crate) fn content_needed(put: Option<&Entry>, expect: Option<&Entry>) -> Option<u64> {
    let Content::File { size, sha256 } = &put?.content else {
        return None;
    };
    match expect {
        Some(Entry {
            content: Content::File { sha256: old, .. },
            ..
        }) if old == sha256 => None,
        _ => Some(*size),
    }
}

/// The change an operation makes that puts something (or not) where the receiver is
/// expected to hold something (or not).
pub(crate) fn change_of(puts: bool, expected: bool) -> ChangeKind {
    match (puts, expected) {
        (false, _) => ChangeKind::Deleted,
        (true, false) => ChangeKind::Added,
        (true, true) => ChangeKind::Updated,
    }
}

/// The three kinds of change users see as `[+]`, `[M]` and `[-]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Updated,
    Deleted,
}

/// How one operation ended on the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum Outcome {
    Applied,
    /// The receiver's state differed from the operation's expectation; nothing written.
    Conflict(String),
    /// The operation could not be carried out now (disk full, an I/O error, no
    /// permission, a read-only filesystem, a directory still holding paths not deleted
    /// yet); the old state is intact. Worth retrying: senders do, with backoff.
    Failed(String),
    /// Refused for good by this node's rules (a link in the way, a path this node does
    /// not take); the old state is intact. Sending it again is useless until the path
    /// changes on the sender.
    Refused(String),
    /// A directory was not removed because it holds paths excluded on the receiver.
    Kept(String),
    /// Applied, then put back: the directory's `validate` command refused the result.
    Rejected(String),
}

impl Outcome {
    /// Whether the receiver changed the path as asked.
    pub fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpResult {
    pub path: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// For an operation not applied: what the receiver holds at the path once the batch
    /// is done (after any rollback), so that the sender knows what this peer holds
    /// instead of assuming. `None` when applied, or when the receiver could not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<Found>,
}

/// What a receiver holds at a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// `None`: nothing.
    pub entry: Option<Entry>,
}

#[cfg(test)]
mod tests {
    use crate::testing::{file_entry, put};

    #[test]
    fn an_operation_stays_small_as_a_push_holds_one_per_path() {
        // A path, an entry to put, a pointer to what is expected: 96 bytes. Unboxed,
        // the expectation made it 160, 6 MB more in a push of 100,000 paths.
        let size = std::mem::size_of::<super::Op>();
        assert!(size <= 96, "{size}");
    }

    #[test]
    fn metadata_only_update_carries_no_content() {
        let mut op = put("/etc/a", b"same");
        op.expect = Some(Box::new(file_entry(b"same")));
        assert_eq!(op.needs_content(), None);
        op.expect = Some(Box::new(file_entry(b"other")));
        assert_eq!(op.needs_content(), Some(4));
    }
}
