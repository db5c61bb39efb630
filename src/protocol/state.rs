//! The state of one path as it travels: what it is ([`Content`], with a [`Digest256`] of a
//! file's bytes) and its metadata ([`Entry`]), and how a manifest lists it
//! ([`WireEntry`]). Plain values and their comparison; nothing here reads a file or
//! decides what to change.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::paths::LogicalPath;
use sha2::{Digest, Sha256};

/// A SHA-256 digest, hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest256(pub [u8; 32]);

impl Digest256 {
    /// Hashes a byte slice.
    pub fn of(bytes: &[u8]) -> Self {
        Digest256(Sha256::digest(bytes).into())
    }

    /// Its 64 hex digits, written into `out` (a header names one for each file it puts,
    /// for each peer: no string is made for it).
    fn hex<'a>(&self, out: &'a mut [u8; 64]) -> &'a str {
        hex::encode_to_slice(self.0, out).expect("64 bytes hold 32 in hex");
        std::str::from_utf8(out).expect("hex digits")
    }
}

impl fmt::Display for Digest256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.hex(&mut [0; 64]))
    }
}

impl fmt::Debug for Digest256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.hex(&mut [0; 64]))
    }
}

impl<'de> Deserialize<'de> for Digest256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = Digest256;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 hex digits")
            }

            // Read from the text where it lies: no string is made for it.
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Digest256, E> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(text, &mut out)
                    .map_err(|_| E::custom("sha256 must be 64 hex digits"))?;
                Ok(Digest256(out))
            }
        }
        d.deserialize_str(Hex)
    }
}

/// What a path is, with what identifies its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Content {
    File { size: u64, sha256: Digest256 },
    Dir,
    Symlink { target: String },
}

impl Content {
    /// A short name for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Content::File { .. } => "file",
            Content::Dir => "directory",
            Content::Symlink { .. } => "symlink",
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Content::Dir)
    }
}

/// The state of one path: content plus metadata.
///
/// `mtime` travels so that receivers can keep it, but it never takes part in a
/// comparison of states: whether two nodes hold the same, and what a sync plans, never
/// depend on clocks. Its one use is a receiver settling a conflict by the newer version,
/// where its directory says `on_conflict = "newest"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EntryFields")]
pub struct Entry {
    #[serde(flatten)]
    pub content: Content,
    /// Permission bits, `0o7777` at most.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time in nanoseconds since the Unix epoch.
    #[serde(default)]
    pub mtime_ns: i64,
}

/// Whether two paths hold the same state: both nothing, or entries that describe the
/// same state (see [`Entry::same_state`]).
pub fn same_or_absent(a: Option<&Entry>, b: Option<&Entry>, owners: bool) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_state(b, owners),
        _ => false,
    }
}

impl Entry {
    /// Whether two entries describe the same state; owners only count when `owners` is set.
    pub fn same_state(&self, other: &Entry, owners: bool) -> bool {
        self.content == other.content
            && (self.content_is_link() || self.mode == other.mode)
            && (!owners || (self.uid == other.uid && self.gid == other.gid))
    }

    fn content_is_link(&self) -> bool {
        // Permission bits of a symlink are meaningless on Linux and cannot be set.
        matches!(self.content, Content::Symlink { .. })
    }

    /// A one-line description for conflict messages.
    pub fn describe(&self) -> String {
        match &self.content {
            Content::File { sha256, .. } => format!("file sha256 {sha256} mode {:o}", self.mode),
            Content::Dir => format!("directory mode {:o}", self.mode),
            Content::Symlink { target } => format!("symlink to {target:?}"),
        }
    }
}

/// One path with its state, as listed in a manifest response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EntryFields<Option<LogicalPath>>")]
pub struct WireEntry {
    pub path: LogicalPath,
    #[serde(flatten)]
    pub entry: Entry,
}

/// An entry's fields as they travel, side by side: its content's `kind` and fields, and
/// its metadata (and, listed in a manifest, its `path`). Entries are read through this
/// plain struct rather than serde's `flatten`, which gathers every field of the map in
/// a buffer of its own first: several times slower, and a receiver reads 100,000
/// entries in an initial sync, an audit as many.
#[derive(Deserialize)]
struct EntryFields<P: Default = serde::de::IgnoredAny> {
    #[serde(default)]
    path: P,
    kind: Kind,
    size: Option<u64>,
    sha256: Option<Digest256>,
    target: Option<String>,
    mode: u32,
    uid: u32,
    gid: u32,
    #[serde(default)]
    mtime_ns: i64,
}

/// The `kind` of an entry's content.
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    File,
    Dir,
    Symlink,
}

impl<P: Default> TryFrom<EntryFields<P>> for Entry {
    type Error = String;

    fn try_from(fields: EntryFields<P>) -> Result<Entry, String> {
        let missing = |field: &str, kind: &str| format!("missing field `{field}` of a {kind}");
        let content = match fields.kind {
            Kind::File => Content::File {
                size: fields.size.ok_or_else(|| missing("size", "file"))?,
                sha256: fields.sha256.ok_or_else(|| missing("sha256", "file"))?,
            },
            Kind::Dir => Content::Dir,
            Kind::Symlink => Content::Symlink {
                target: fields.target.ok_or_else(|| missing("target", "symlink"))?,
            },
        };
        Ok(Entry {
            content,
            mode: fields.mode,
            uid: fields.uid,
            gid: fields.gid,
            mtime_ns: fields.mtime_ns,
        })
    }
}

impl TryFrom<EntryFields<Option<LogicalPath>>> for WireEntry {
    type Error = String;

    fn try_from(mut fields: EntryFields<Option<LogicalPath>>) -> Result<WireEntry, String> {
        let path = fields.path.take().ok_or("missing field `path`")?;
        Ok(WireEntry {
            path,
            entry: Entry::try_from(fields)?,
        })
    }
}
