//! Fixtures shared by the unit tests of several modules.

use std::path::Path;

use crate::config::Config;
use crate::protocol::{Action, Content, Digest256, Entry, Op};

/// A config whose one directory, `/etc/app`, lives under `root`, with the given
/// exclude entries (written as HCL list items, e.g. `"*.swp", "/etc/app/private"`).
pub fn config_at(root: &Path, exclude: &str) -> Config {
    parse(&config_text(root, exclude))
}

/// The text of [`config_at`], for tests that add to it.
pub fn config_text(root: &Path, exclude: &str) -> String {
    format!(
        r#"
bind_address = "127.0.0.1:1"
remotes = []
tls_ca_certificate = "ca.pem"
tls_certificate = "cert.pem"
tls_private_key = "key.pem"
root = "{}"
directory "/etc/app" {{
  exclude = [{exclude}]
}}
"#,
        root.display()
    )
}

/// Parses config text as if it came from `/x/config.hcl`.
pub fn parse(text: &str) -> Config {
    Config::from_str(text, Path::new("/x/config.hcl")).unwrap()
}

/// A regular file holding `bytes`, mode 0644, owned by root.
pub fn file_entry(bytes: &[u8]) -> Entry {
    Entry {
        content: Content::File {
            size: bytes.len() as u64,
            sha256: Digest256::of(bytes),
        },
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
    }
}

/// An operation that puts a file holding `bytes` at `path`, planned against nothing there.
pub fn put(path: &str, bytes: &[u8]) -> Op {
    Op {
        path: path.into(),
        action: Action::Put {
            entry: file_entry(bytes),
        },
        expect: None,
    }
}

/// How many cases a property runs: `default`, or `PROPTEST_CASES` from the environment
/// (for longer runs than `cargo test` needs).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Makes a FIFO at `path`: neither a file, a directory nor a link, and it blocks a
/// reader that opens it without `O_NONBLOCK`.
pub fn make_fifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
}
