//! What a sender asks a receiver to do to one path ([`Op`], its [`Action`] and the state
//! it was planned against), the change users see ([`ChangeKind`]), and how the receiver
//! says it ended ([`Outcome`], [`OpResult`]). It neither plans operations nor carries
//! them out.

use serde::{Deserialize, Serialize};

use super::{Content, Entry};
use crate::paths::LogicalPath;

/// What an operation does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[serde(try_from = "OpFields")]
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

/// An operation's fields as they travel, side by side: read through this plain struct
/// rather than serde's `flatten`, which buffers the whole map first (see
/// [`Entry`]'s fields).
#[derive(Deserialize)]
struct OpFields {
    path: LogicalPath,
    action: ActionName,
    entry: Option<Entry>,
    expect: Option<Box<Entry>>,
}

/// The `action` of an operation.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ActionName {
    Put,
    Delete,
}

impl TryFrom<OpFields> for Op {
    type Error = &'static str;

    fn try_from(fields: OpFields) -> Result<Op, &'static str> {
        let action = match fields.action {
            ActionName::Put => Action::Put {
                entry: fields.entry.ok_or("missing field `entry` of a put")?,
            },
            ActionName::Delete => Action::Delete,
        };
        Ok(Op {
            path: fields.path,
            action,
            expect: fields.expect,
        })
    }
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
#[serde(try_from = "ResultFields<Option<String>, Option<Found>>")]
pub struct OpResult {
    pub path: LogicalPath,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// For an operation not applied: what the receiver holds at the path once the batch
    /// is done (after any rollback), so that the sender knows what this peer holds
    /// instead of assuming. `None` when applied, or when the receiver could not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<Found>,
}

/// A result's fields as they travel, side by side (see [`OpFields`]): its path (`P`),
/// its outcome's `status` and `reason`, and what was found (`F`).
#[derive(Deserialize)]
pub(crate) struct ResultFields<P: Default, F: Default> {
    #[serde(default)]
    path: P,
    status: Status,
    reason: Option<String>,
    #[serde(default)]
    found: F,
}

/// The `status` of an outcome.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Applied,
    Conflict,
    Failed,
    Refused,
    Kept,
    Rejected,
}

impl<P: Default, F: Default> ResultFields<P, F> {
    /// The outcome, the path and what was found.
    pub(crate) fn into_parts(self) -> Result<(Outcome, P, F), &'static str> {
        let reason = || self.reason.ok_or("missing field `reason` of an outcome");
        let outcome = match self.status {
            Status::Applied => Outcome::Applied,
            Status::Conflict => Outcome::Conflict(reason()?),
            Status::Failed => Outcome::Failed(reason()?),
            Status::Refused => Outcome::Refused(reason()?),
            Status::Kept => Outcome::Kept(reason()?),
            Status::Rejected => Outcome::Rejected(reason()?),
        };
        Ok((outcome, self.path, self.found))
    }
}

impl TryFrom<ResultFields<Option<String>, Option<Found>>> for OpResult {
    type Error = &'static str;

    fn try_from(
        fields: ResultFields<Option<String>, Option<Found>>,
    ) -> Result<OpResult, &'static str> {
        let (outcome, path, found) = fields.into_parts()?;
        Ok(OpResult {
            path: path.ok_or("missing field `path`")?.into(),
            outcome,
            found,
        })
    }
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

    /// The wire as it was written when operations, entries and results were read
    /// through serde's `flatten`: each reads as it did, and writes back the same.
    #[test]
    fn operations_entries_and_results_read_field_by_field_as_they_travel() {
        use super::{Action, Op, OpResult, Outcome};
        use crate::protocol::{ApplyAnswer, Content, Entry, WireEntry};
        let sha = "ab".repeat(32);
        let ops = [
            format!(
                r#"{{"path":"/etc/a","action":"put","entry":{{"kind":"file","size":4,"sha256":"{sha}","mode":420,"uid":0,"gid":0,"mtime_ns":7}},"expect":null}}"#
            ),
            format!(
                r#"{{"path":"/etc/a","action":"delete","expect":{{"kind":"file","size":4,"sha256":"{sha}","mode":420,"uid":1,"gid":2,"mtime_ns":-7}}}}"#
            ),
            r#"{"path":"/etc/d","action":"put","entry":{"kind":"dir","mode":493,"uid":0,"gid":0,"mtime_ns":0},"expect":{"kind":"symlink","target":"x","mode":511,"uid":0,"gid":0,"mtime_ns":0}}"#.to_string(),
        ];
        for json in &ops {
            let op: Op = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(&serde_json::to_string(&op).unwrap(), json);
        }
        let op: Op = serde_json::from_str(&ops[0]).unwrap();
        let Action::Put { entry } = &op.action else {
            panic!("{op:?}")
        };
        assert_eq!(
            entry.content,
            Content::File {
                size: 4,
                sha256: crate::protocol::Digest256([0xab; 32])
            }
        );
        assert_eq!((entry.mode, entry.mtime_ns), (0o644, 7));
        let delete: Op = serde_json::from_str(&ops[1]).unwrap();
        assert_eq!(delete.action, Action::Delete);
        assert_eq!(delete.expect.as_ref().map(|e| (e.uid, e.gid)), Some((1, 2)));
        // Fields of another version are passed over; a missing one is named.
        let newer = r#"{"path":"/etc/d","action":"delete","expect":null,"since":3}"#;
        assert_eq!(
            serde_json::from_str::<Op>(newer).unwrap().path.as_str(),
            "/etc/d"
        );
        for (json, named) in [
            (
                r#"{"path":"/etc/d","action":"put","expect":null}"#,
                "`entry`",
            ),
            (r#"{"path":"/etc/d","action":"move","expect":null}"#, "move"),
            (r#"{"action":"delete","expect":null}"#, "`path`"),
            (
                r#"{"path":"/etc/d","action":"put","entry":{"kind":"file","mode":1,"uid":0,"gid":0},"expect":null}"#,
                "`size`",
            ),
            (
                r#"{"path":"/etc/d","action":"put","entry":{"kind":"symlink","mode":1,"uid":0,"gid":0},"expect":null}"#,
                "`target`",
            ),
            (
                r#"{"path":"/etc/d","action":"put","entry":{"kind":"file","size":1,"sha256":"zz","mode":1,"uid":0,"gid":0},"expect":null}"#,
                "64 hex digits",
            ),
        ] {
            let e = serde_json::from_str::<Op>(json).unwrap_err().to_string();
            assert!(e.contains(named), "{json}: {e}");
        }
        // A manifest's entry, with its path.
        let listed = r#"{"path":"/etc/l","kind":"symlink","target":"../x","mode":511,"uid":0,"gid":0,"mtime_ns":5}"#;
        let wire: WireEntry = serde_json::from_str(listed).unwrap();
        assert_eq!(wire.path, "/etc/l");
        assert_eq!(
            wire.entry.content,
            Content::Symlink {
                target: "../x".into()
            }
        );
        assert_eq!(serde_json::to_string(&wire).unwrap(), listed);
        let unlisted = r#"{"kind":"dir","mode":511,"uid":0,"gid":0}"#;
        assert!(serde_json::from_str::<WireEntry>(unlisted)
            .unwrap_err()
            .to_string()
            .contains("`path`"));
        assert!(serde_json::from_str::<Entry>(unlisted).is_ok());
        // Results, every status, and an answer read without the paths.
        let results = [
            r#"{"path":"/etc/a","status":"applied"}"#.to_string(),
            r#"{"path":"/etc/b","status":"conflict","reason":"changed","found":{"entry":null}}"#
                .to_string(),
            r#"{"path":"/etc/c","status":"failed","reason":"disk full"}"#.to_string(),
            r#"{"path":"/etc/d","status":"refused","reason":"a link"}"#.to_string(),
            r#"{"path":"/etc/e","status":"kept","reason":"excluded"}"#.to_string(),
            format!(
                r#"{{"path":"/etc/f","status":"rejected","reason":"validate","found":{{"entry":{{"kind":"file","size":4,"sha256":"{sha}","mode":420,"uid":0,"gid":0,"mtime_ns":0}}}}}}"#
            ),
        ];
        let outcomes = [
            Outcome::Applied,
            Outcome::Conflict("changed".into()),
            Outcome::Failed("disk full".into()),
            Outcome::Refused("a link".into()),
            Outcome::Kept("excluded".into()),
            Outcome::Rejected("validate".into()),
        ];
        for (json, outcome) in results.iter().zip(&outcomes) {
            let result: OpResult =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(&result.outcome, outcome);
            assert_eq!(&serde_json::to_string(&result).unwrap(), json);
        }
        let answer: ApplyAnswer =
            serde_json::from_str(&format!(r#"{{"results":[{}]}}"#, results.join(","))).unwrap();
        let read: Vec<&Outcome> = answer.results.iter().map(|r| &r.outcome).collect();
        assert_eq!(read, outcomes.iter().collect::<Vec<_>>());
        assert_eq!(
            answer.results[1]
                .found
                .as_deref()
                .map(|f| f.entry.is_none()),
            Some(true)
        );
        assert!(answer.results[5]
            .found
            .as_ref()
            .is_some_and(|f| f.entry.as_ref().is_some_and(|e| !e.content.is_dir())));
        let unexplained = r#"{"path":"/etc/b","status":"conflict"}"#;
        let e = serde_json::from_str::<OpResult>(unexplained)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`reason`"), "{e}");
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
