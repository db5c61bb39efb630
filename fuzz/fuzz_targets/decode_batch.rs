//! The wire decoder on arbitrary bytes: it must answer without panicking, and what it
//! accepts must carry exactly the contents it announces, each hashing to its digest.
#![no_main]

use gosyncd::protocol::{decode_batch, Action, Content, Digest256};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = decode_batch(data) else {
        return;
    };
    assert_eq!(batch.contents.len(), batch.header.ops.len());
    for (op, content) in batch.header.ops.iter().zip(&batch.contents) {
        assert_eq!(op.needs_content().is_some(), content.is_some());
        if let (Action::Put { entry }, Some(bytes)) = (&op.action, content) {
            if let Content::File { size, sha256 } = &entry.content {
                assert_eq!(*size, bytes.len() as u64);
                assert_eq!(*sha256, Digest256::of(bytes));
            }
        }
    }
});
