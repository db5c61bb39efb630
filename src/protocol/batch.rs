//! The binary body of an apply request: magic, header length, the JSON [`BatchHeader`],
//! then the raw contents of the files it puts, so that bytes travel without base64.
//! Decoding checks the framing, the limits and every content's hash; it does not check
//! paths, which is the receiver's job.

use serde::{Deserialize, Serialize};

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
    let json = serde_json::to_vec(header).expect("batch header serialises");
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(BATCH_MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// A decoded batch: the header and, for each operation, its content range in the body.
#[derive(Debug)]
pub struct Batch<'a> {
    pub header: BatchHeader,
    /// `contents[i]` is the content of `header.ops[i]`, when it needs one.
    pub contents: Vec<Option<&'a [u8]>>,
}

/// Decodes and checks the framing of a batch body. Paths are checked by the receiver.
pub fn decode_batch(body: &[u8]) -> Result<Batch<'_>, String> {
    if body.len() < 8 || &body[..4] != BATCH_MAGIC {
        return Err("not a gosyncd batch (bad magic)".into());
    }
    let len = u32::from_be_bytes(body[4..8].try_into().expect("4 bytes")) as usize;
    if len > MAX_BATCH_HEADER_BYTES {
        return Err(format!(
            "batch header of {len} bytes exceeds the limit of {MAX_BATCH_HEADER_BYTES}"
        ));
    }
    let rest = &body[8..];
    if rest.len() < len {
        return Err("batch body shorter than its header length".into());
    }
    let header: BatchHeader =
        serde_json::from_slice(&rest[..len]).map_err(|e| format!("malformed batch header: {e}"))?;
    if header.ops.len() > MAX_OPS_PER_BATCH {
        return Err(format!(
            "batch of {} operations exceeds the limit of {MAX_OPS_PER_BATCH}",
            header.ops.len()
        ));
    }
    let mut data = &rest[len..];
    let mut contents = Vec::with_capacity(header.ops.len());
    for op in &header.ops {
        match op.needs_content() {
            None => contents.push(None),
            Some(size) => {
                let size = usize::try_from(size).map_err(|_| "file size too large")?;
                if data.len() < size {
                    return Err(format!("{}: content truncated", op.path));
                }
                let (content, tail) = data.split_at(size);
                let Action::Put { entry } = &op.action else {
                    unreachable!("only puts carry content")
                };
                if let Content::File { sha256, .. } = &entry.content {
                    let actual = Digest256::of(content);
                    if actual != *sha256 {
                        return Err(format!(
                            "{}: content sha256 {actual} does not match the announced {sha256}",
                            op.path
                        ));
                    }
                }
                contents.push(Some(content));
                data = tail;
            }
        }
    }
    if !data.is_empty() {
        return Err(format!(
            "{} trailing bytes after the last content",
            data.len()
        ));
    }
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
