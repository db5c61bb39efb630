//! The binary body of an apply request: magic, header length, the JSON [`BatchHeader`],
//! then the raw contents of the files it puts, so that bytes travel without base64.
//! Reading checks the framing, the limits and every content's hash as the bytes go by
//! ([`BatchReader`], which a receiver streams through); it does not check paths, which
//! is the receiver's job.

use std::cell::Cell;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Action, Content, Digest256, Op, BATCH_MAGIC, MAX_BATCH_HEADER_BYTES, MAX_OPS_PER_BATCH,
};

/// The JSON header of a batch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchHeader {
    pub ops: Vec<Op>,
    /// The sender does not run as root: the owners in its entries are its own user,
    /// not the files' owners. The receiver applies none of them: a file it replaces
    /// keeps the owner it has there, and one it makes is its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub foreign_owners: bool,
}

impl BatchHeader {
    /// A header for `ops`, from a sender whose owners are the files' own.
    pub fn new(ops: Vec<Op>) -> BatchHeader {
        BatchHeader {
            ops,
            foreign_owners: false,
        }
    }
}

/// Encodes a batch: magic, header length (u32 big-endian), JSON header, then the
/// contents of the operations that need one, back to back, in order.
pub fn encode_batch(header: &BatchHeader, contents: &[&[u8]]) -> Vec<u8> {
    let mut out = encode_batch_header(header);
    for c in contents {
        out.extend_from_slice(c);
    }
    out
}

/// The start of a batch body: magic, header length and JSON header. The contents follow
/// (a sender may stream them from shared buffers instead of copying them in).
pub fn encode_batch_header(header: &BatchHeader) -> Vec<u8> {
    let length = batch_header_length(header);
    let mut out = Vec::with_capacity(length as usize);
    write_batch_header(header, length, &mut out).expect("a Vec takes every write");
    out
}

/// The length of the start of a batch body, as [`write_batch_header`] writes it.
/// `header` is a [`BatchHeader`], or what serialises as one.
pub fn batch_header_length(header: &impl Serialize) -> u64 {
    let mut counted = Counted(0);
    serde_json::to_writer(&mut counted, header).expect("batch header serialises");
    8 + counted.0
}

/// Writes the start of a batch body (magic, header length, JSON header) to `out` as it
/// is serialised: a header of many operations is megabytes, and a sender streaming it
/// never holds it whole. `length` is the header's [`batch_header_length`], learnt once
/// by a sender that sends the batch again (to another peer, or after a busy answer).
pub fn write_batch_header(
    header: &impl Serialize,
    length: u64,
    mut out: impl Write,
) -> io::Result<()> {
    let json_length = length - 8;
    let json_length = u32::try_from(json_length)
        .map_err(|_| io::Error::other(format!("batch header of {json_length} bytes")))?;
    out.write_all(BATCH_MAGIC)?;
    out.write_all(&json_length.to_be_bytes())?;
    serde_json::to_writer(&mut out, header).map_err(io::Error::other)
}

/// A writer that only counts the bytes written to it.
struct Counted(u64);

impl Write for Counted {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a batch's content could not be received.
#[derive(Debug)]
pub enum ContentError {
    /// The body is wrong (truncated, a hash that does not match, a broken or stalled
    /// stream): the sender's fault, and the whole batch is refused.
    Body(String),
    /// This node could not keep the bytes (a full disk, ...): the operation fails,
    /// the rest of the batch goes on; the body was read past the content anyway.
    Sink(io::Error),
}

/// Reads a batch body as it arrives: its header first, then each content in turn into
/// wherever the caller keeps it, checking its size and hash as it goes. Nothing is
/// held but the header and one buffer.
pub struct BatchReader<R> {
    body: R,
    pub header: BatchHeader,
}

/// Bytes read from the body at once.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A batch header up to this size is read whole before it is parsed (a sender's batch of
/// 2,048 operations is about 0.75 MB; of 2,000 directories nested to the longest path
/// allowed, 4.4 MB); a larger one is parsed as it arrives, at about half the speed.
const HEADER_READ_WHOLE_BYTES: usize = 8 * 1024 * 1024;

/// Reads at most `left` bytes from `inner`, counting them down where its owner still
/// sees the count once the reader is gone.
struct Limited<'a, R> {
    inner: R,
    left: &'a Cell<u64>,
}

impl<R: Read> Read for Limited<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        let most = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if most == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..most])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

impl<R: Read> BatchReader<R> {
    /// Reads and checks the magic, the header length and the header.
    pub fn start(mut body: R) -> Result<BatchReader<R>, String> {
        let mut prefix = [0u8; 8];
        read_full(&mut body, &mut prefix).map_err(|e| match e {
            Short::Ended => "not a gosyncd batch (bad magic)".to_string(),
            Short::Broken(e) => format!("batch not received: {e}"),
        })?;
        if &prefix[..4] != BATCH_MAGIC {
            return Err("not a gosyncd batch (bad magic)".into());
        }
        let len = u32::from_be_bytes(prefix[4..8].try_into().expect("4 bytes")) as usize;
        if len > MAX_BATCH_HEADER_BYTES {
            return Err(format!(
                "batch header of {len} bytes exceeds the limit of {MAX_BATCH_HEADER_BYTES}"
            ));
        }
        let header = if len <= HEADER_READ_WHOLE_BYTES {
            // Read whole, then parsed: several times faster than parsing as it is read.
            let mut json = vec![0u8; len];
            read_full(&mut body, &mut json).map_err(|e| match e {
                Short::Ended => "batch body shorter than its header length".to_string(),
                Short::Broken(e) => format!("batch not received: {e}"),
            })?;
            serde_json::from_slice::<BatchHeader>(&json)
                .map_err(|e| format!("malformed batch header: {e}"))?
        } else {
            // Parsed as it is read: such a header is tens of megabytes of JSON, which a
            // receiver need not hold beside the operations it becomes.
            // The reader goes in by value: std reads a `BufReader` a byte at a time from
            // its buffer, but anything else (a `&mut BufReader`) by a call per byte.
            let left = Cell::new(len as u64);
            let json = io::BufReader::with_capacity(
                READ_BUFFER_BYTES,
                Limited {
                    inner: &mut body,
                    left: &left,
                },
            );
            let header = serde_json::from_reader::<_, BatchHeader>(json);
            let short = left.get() > 0;
            match header {
                Err(e) if e.is_io() => return Err(format!("batch not received: {e}")),
                // The JSON ends where the body does, before the length said.
                Err(e) if e.is_eof() && short => {
                    return Err("batch body shorter than its header length".into())
                }
                Err(e) => return Err(format!("malformed batch header: {e}")),
                Ok(_) if short => return Err("batch body shorter than its header length".into()),
                Ok(header) => header,
            }
        };
        if header.ops.len() > MAX_OPS_PER_BATCH {
            return Err(format!(
                "batch of {} operations exceeds the limit of {MAX_OPS_PER_BATCH}",
                header.ops.len()
            ));
        }
        Ok(BatchReader { body, header })
    }

    /// Copies the content of operation `index` (the next one that carries content) into
    /// `sink`, checking its size and its hash. After a failed write the rest of the
    /// content is still read and checked, so that the next one can follow.
    pub fn content_into(
        &mut self,
        index: usize,
        sink: &mut impl Write,
    ) -> Result<(), ContentError> {
        let op = &self.header.ops[index];
        let Some(size) = op.needs_content() else {
            return Ok(());
        };
        let Action::Put { entry } = &op.action else {
            unreachable!("only puts carry content")
        };
        let Content::File { sha256, .. } = &entry.content else {
            unreachable!("only files carry content")
        };
        let mut hasher = Sha256::new();
        let mut left = size;
        let mut buffer = vec![0u8; READ_BUFFER_BYTES.min(size as usize).max(1)];
        let mut failed: Option<io::Error> = None;
        while left > 0 {
            let want = buffer
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match self.body.read(&mut buffer[..want]) {
                Ok(0) => {
                    return Err(ContentError::Body(format!(
                        "{}: content truncated",
                        op.path
                    )))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ContentError::Body(format!(
                        "{}: content not received: {e}",
                        op.path
                    )))
                }
            };
            hasher.update(&buffer[..n]);
            if failed.is_none() {
                if let Err(e) = sink.write_all(&buffer[..n]) {
                    failed = Some(e);
                }
            }
            left -= n as u64;
        }
        let actual = Digest256(hasher.finalize().into());
        if actual != *sha256 {
            return Err(ContentError::Body(format!(
                "{}: content sha256 {actual} does not match the announced {sha256}",
                op.path
            )));
        }
        match failed {
            Some(e) => Err(ContentError::Sink(e)),
            None => Ok(()),
        }
    }

    /// Checks that nothing follows the last content.
    pub fn finish(mut self) -> Result<(), String> {
        let mut extra = [0u8; 1024];
        let mut trailing = 0usize;
        loop {
            match self.body.read(&mut extra) {
                Ok(0) => break,
                Ok(n) => trailing += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("batch not received: {e}")),
            }
            if trailing > extra.len() {
                break;
            }
        }
        if trailing > 0 {
            return Err(format!("{trailing} trailing bytes after the last content"));
        }
        Ok(())
    }
}

/// How reading an exact number of bytes fell short.
enum Short {
    Ended,
    Broken(io::Error),
}

fn read_full(body: &mut impl Read, into: &mut [u8]) -> Result<(), Short> {
    body.read_exact(into).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Short::Ended,
        _ => Short::Broken(e),
    })
}

/// A decoded batch held in memory: the header and, for each operation, its content.
#[derive(Debug)]
pub struct Batch<'a> {
    pub header: BatchHeader,
    /// `contents[i]` is the content of `header.ops[i]`, when it needs one.
    pub contents: Vec<Option<&'a [u8]>>,
}

/// Decodes and checks a whole batch body held in memory, with the same reader a
/// receiver streams through. Paths are checked by the receiver.
pub fn decode_batch(body: &[u8]) -> Result<Batch<'_>, String> {
    let mut reader = BatchReader::start(body)?;
    let mut contents = Vec::with_capacity(reader.header.ops.len());
    for index in 0..reader.header.ops.len() {
        let Some(size) = reader.header.ops[index].needs_content() else {
            contents.push(None);
            continue;
        };
        let at = body.len() - reader.body.len();
        reader
            .content_into(index, &mut io::sink())
            .map_err(|e| match e {
                ContentError::Body(why) => why,
                ContentError::Sink(e) => e.to_string(),
            })?;
        contents.push(Some(&body[at..at + size as usize]));
    }
    let header = std::mem::take(&mut reader.header);
    reader.finish()?;
    Ok(Batch { header, contents })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::put;

    #[test]
    fn batch_round_trips_binary_content() {
        let a: &[u8] = b"\x00\xffbinary\n";
        let b: &[u8] = b"";
        let header = BatchHeader::new(vec![put("/etc/a", a), put("/etc/b", b)]);
        let body = encode_batch(&header, &[a, b]);
        let batch = decode_batch(&body).unwrap();
        assert_eq!(batch.contents, vec![Some(a), Some(b)]);
        assert_eq!(batch.header.ops, header.ops);
    }

    #[test]
    fn batch_with_wrong_hash_is_refused() {
        let header = BatchHeader::new(vec![put("/etc/a", b"announced")]);
        let body = encode_batch(&header, &[b"different"]);
        let err = decode_batch(&body).unwrap_err();
        assert!(
            err.contains("/etc/a") && err.contains("does not match"),
            "{err}"
        );
    }

    #[test]
    fn batch_with_trailing_or_missing_bytes_is_refused() {
        let header = BatchHeader::new(vec![put("/etc/a", b"abc")]);
        let mut body = encode_batch(&header, &[b"abc"]);
        body.push(0);
        assert!(decode_batch(&body).unwrap_err().contains("trailing"));
        let body = encode_batch(&header, &[b"ab"]);
        assert!(decode_batch(&body).unwrap_err().contains("truncated"));
        assert!(decode_batch(b"garbage!").unwrap_err().contains("magic"));
    }

    #[test]
    fn a_header_shorter_or_longer_than_its_length_is_refused() {
        let header = BatchHeader::new(vec![put("/etc/a", b"")]);
        let whole = encode_batch(&header, &[]);
        // The body ends inside the header, after the JSON or within it.
        for cut in [whole.len() - 1, whole.len() - 10] {
            let err = decode_batch(&whole[..cut]).unwrap_err();
            assert!(err.contains("shorter than its header length"), "{err}");
        }
        // A length past the JSON takes the bytes after it as part of the header.
        let mut longer = whole.clone();
        let length = u32::from_be_bytes(longer[4..8].try_into().unwrap()) + 2;
        longer[4..8].copy_from_slice(&length.to_be_bytes());
        longer.extend_from_slice(b"{}");
        let err = decode_batch(&longer).unwrap_err();
        assert!(err.contains("malformed batch header"), "{err}");
        // Trailing blanks within the length are JSON's business, and harmless.
        longer.truncate(whole.len());
        longer.extend_from_slice(b"  ");
        assert_eq!(decode_batch(&longer).unwrap().header.ops, header.ops);
    }

    /// A header larger than [`HEADER_READ_WHOLE_BYTES`] is parsed as it arrives, and
    /// reads as one read whole does: the same operations, the same refusals.
    #[test]
    fn a_header_past_the_whole_read_size_reads_as_a_small_one() {
        let long_name = "n".repeat(200);
        let ops: Vec<Op> = (0..40_000)
            .map(|i| put(&format!("/etc/app/{long_name}{i}"), b""))
            .collect();
        let header = BatchHeader::new(ops);
        let whole = encode_batch(&header, &[]);
        assert!(whole.len() > HEADER_READ_WHOLE_BYTES + 8, "{}", whole.len());
        assert_eq!(decode_batch(&whole).unwrap().header.ops, header.ops);
        let err = decode_batch(&whole[..whole.len() - 10]).unwrap_err();
        assert!(err.contains("shorter than its header length"), "{err}");
        let mut broken = whole.clone();
        let at = broken.len() / 2;
        broken[at] = b'\x01';
        let err = decode_batch(&broken).unwrap_err();
        assert!(err.contains("malformed batch header"), "{err}");
    }
}

/// Hostile input for the wire decoder: whatever the bytes, it answers, and what it
/// accepts is consistent with what it read.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Bodies built from pieces a decoder must handle: the magic or not, any length
    /// word, JSON that is nearly a header, and noise.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let header_json = prop_oneof![
            Just(r#"{"ops":[]}"#.to_string()),
            "[a-z\\\"{}\\[\\]:,0-9 ]{0,80}",
            (any::<u64>(), "[/a-z.]{0,20}").prop_map(|(n, p)| format!(
                r#"{{"ops":[{{"path":"{p}","action":"put","entry":{{"type":"file","sha256":"{}","size":{n},"mode":420,"uid":0,"gid":0}}}}]}}"#,
                "ab".repeat(32)
            )),
        ];
        (
            prop_oneof![
                Just(BATCH_MAGIC.to_vec()),
                prop::collection::vec(any::<u8>(), 0..6)
            ],
            prop_oneof![any::<u32>(), 0u32..200],
            header_json,
            prop::collection::vec(any::<u8>(), 0..64),
            any::<bool>(),
        )
            .prop_map(|(magic, len, json, tail, honest_len)| {
                let mut out = magic;
                let len = if honest_len { json.len() as u32 } else { len };
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(json.as_bytes());
                out.extend_from_slice(&tail);
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(crate::testing::cases(2000)))]

        #[test]
        fn the_decoder_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&bytes);
        }

        #[test]
        fn a_batch_with_flipped_bytes_is_refused_or_still_hashes_right(
            files in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..4),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let ops: Vec<Op> = files
                .iter()
                .enumerate()
                .map(|(i, bytes)| crate::testing::put(&format!("/etc/app/f{i}"), bytes))
                .collect();
            let contents: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
            let mut body = encode_batch(&BatchHeader::new(ops), &contents);
            for (at, mask) in flips {
                let i = at.index(body.len());
                body[i] ^= mask;
            }
            if let Ok(batch) = decode_batch(&body) {
                for (op, content) in batch.header.ops.iter().zip(&batch.contents) {
                    if let (Action::Put { entry }, Some(bytes)) = (&op.action, content) {
                        if let Content::File { sha256, size } = &entry.content {
                            prop_assert_eq!(*sha256, Digest256::of(bytes));
                            prop_assert_eq!(*size, bytes.len() as u64);
                        }
                    }
                }
            }
        }

        #[test]
        fn what_the_decoder_accepts_has_every_content_it_announces(body in body()) {
            if let Ok(batch) = decode_batch(&body) {
                prop_assert_eq!(batch.contents.len(), batch.header.ops.len());
                for (op, content) in batch.header.ops.iter().zip(&batch.contents) {
                    match (op.needs_content(), content) {
                        (Some(size), Some(bytes)) => {
                            prop_assert_eq!(size, bytes.len() as u64);
                        }
                        (None, None) => {}
                        (needed, got) => prop_assert!(false, "content {:?} for {:?}", got.map(|b| b.len()), needed),
                    }
                }
            }
        }
    }
}
