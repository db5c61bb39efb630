//! The daemon's named limits: what one request, one file, one client may cost it, and
//! how long a client may take. Every one has a default that suits a configuration
//! directory, and the `limits { ... }` block of the config file can change it.
//!
//! Fixed limits that are not worth a key live in [`crate::protocol`]: paths of 4096 bytes
//! (Linux's `PATH_MAX`), link targets of 4096 bytes, a batch header of 64 MiB, and the
//! client's own timeouts (connect 5 s, manifest 120 s, apply 600 s).

use std::time::Duration;

use hcl::{Block, Expression, Structure};

use crate::protocol::PeerLimits;

/// The limits in force; see [`Limits::default`] for the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest apply request body a node accepts (413 beyond). Senders split their
    /// pushes to fit the receiver's.
    pub max_request_size: u64,
    /// Largest file a node accepts; a sender skips (and reports) a larger file.
    pub max_file_size: u64,
    /// Most operations in one apply request. Senders split their pushes to fit.
    pub max_batch_entries: usize,
    /// Largest response a node accepts from a peer (a manifest, most of all).
    pub max_manifest_size: u64,
    /// Longest a client may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest a client may take to send a request's headers, including the wait for the
    /// next request on a kept-alive connection.
    pub header_timeout: Duration,
    /// Longest a request body may make no progress.
    pub idle_timeout: Duration,
    /// Authenticated connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Connections still in their TLS handshake at once; more are closed at once.
    pub max_handshakes: usize,
    /// Connections from one address still in their TLS handshake at once; for addresses
    /// outside the group, from one network (/24 for IPv4, /64 for IPv6).
    pub max_handshakes_per_address: usize,
    /// Connections from addresses outside the group (not in `remotes` or `allow_from`)
    /// still in their TLS handshake at once: a pool of their own, so that strangers can
    /// never take the group's places.
    pub max_stranger_handshakes: usize,
    /// Apply requests received at once (their batches are written one at a time); more
    /// are answered 503 and retried by their sender.
    pub max_concurrent_applies: usize,
}

const MIB: u64 = 1024 * 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_size: crate::protocol::MAX_APPLY_BODY_BYTES as u64,
            max_file_size: crate::protocol::DEFAULT_MAX_FILE_SIZE,
            max_batch_entries: crate::protocol::MAX_OPS_PER_BATCH,
            max_manifest_size: 256 * MIB,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_handshakes: 64,
            max_handshakes_per_address: 8,
            max_stranger_handshakes: 16,
            max_concurrent_applies: crate::protocol::DEFAULT_CONCURRENT_APPLIES,
        }
    }
}

/// The keys of the block, for messages.
pub const KEYS: &[&str] = &[
    "max_request_size",
    "max_file_size",
    "max_batch_entries",
    "max_manifest_size",
    "handshake_timeout",
    "header_timeout",
    "idle_timeout",
    "max_connections",
    "max_handshakes",
    "max_handshakes_per_address",
    "max_stranger_handshakes",
    "max_concurrent_applies",
];

/// Room left in a request for the batch header, beyond the largest file.
const HEADER_ROOM: u64 = MIB;

impl Limits {
    /// Reads a `limits { ... }` block over the defaults. Errors name the key.
    pub fn from_block(block: Block) -> Result<Limits, (String, String)> {
        if !block.labels.is_empty() {
            return Err(("limits".into(), "limits: the block takes no label".into()));
        }
        let mut limits = Limits::default();
        for structure in block.body.into_iter() {
            let attr = match structure {
                Structure::Attribute(attr) => attr,
                Structure::Block(inner) => {
                    let name = inner.identifier.as_str().to_string();
                    return Err((name.clone(), format!("limits: unknown block {name:?}")));
                }
            };
            let key = attr.key.as_str().to_string();
            let fail = |m: String| (key.clone(), format!("limits: {key}: {m}"));
            let value = &attr.expr;
            match key.as_str() {
                "max_request_size" => limits.max_request_size = size(value).map_err(fail)?,
                "max_file_size" => limits.max_file_size = size(value).map_err(fail)?,
                "max_manifest_size" => limits.max_manifest_size = size(value).map_err(fail)?,
                "max_batch_entries" => limits.max_batch_entries = count(value).map_err(fail)?,
                "max_connections" => limits.max_connections = count(value).map_err(fail)?,
                "max_handshakes" => limits.max_handshakes = count(value).map_err(fail)?,
                "max_handshakes_per_address" => {
                    limits.max_handshakes_per_address = count(value).map_err(fail)?
                }
                "max_stranger_handshakes" => {
                    limits.max_stranger_handshakes = count(value).map_err(fail)?
                }
                "max_concurrent_applies" => {
                    limits.max_concurrent_applies = count(value).map_err(fail)?
                }
                "handshake_timeout" => limits.handshake_timeout = duration(value).map_err(fail)?,
                "header_timeout" => limits.header_timeout = duration(value).map_err(fail)?,
                "idle_timeout" => limits.idle_timeout = duration(value).map_err(fail)?,
                _ => {
                    return Err((
                        key.clone(),
                        format!(
                            "limits: unknown key {key:?} (known keys: {})",
                            KEYS.join(", ")
                        ),
                    ))
                }
            }
        }
        if limits.max_file_size + HEADER_ROOM > limits.max_request_size {
            return Err((
                "max_file_size".into(),
                format!(
                    "limits: max_file_size ({}) must leave 1 MiB of max_request_size ({}) for \
                     the batch header",
                    bytesize::ByteSize(limits.max_file_size),
                    bytesize::ByteSize(limits.max_request_size)
                ),
            ));
        }
        Ok(limits)
    }
}

/// A size: a whole number of bytes, or a string such as `"512MiB"`, `"10 MB"`.
fn size(value: &Expression) -> Result<u64, String> {
    let bytes = match value {
        Expression::Number(n) => n.as_u64().ok_or_else(|| format!("{n} is not a size"))?,
        Expression::String(s) => s
            .parse::<bytesize::ByteSize>()
            .map_err(|_| format!("{s:?} is not a size (such as \"512MiB\")"))?
            .as_u64(),
        _ => return Err("expected a size such as \"512MiB\"".into()),
    };
    if bytes == 0 {
        return Err("must be more than 0".into());
    }
    Ok(bytes)
}

/// A positive whole number.
fn count(value: &Expression) -> Result<usize, String> {
    match value {
        Expression::Number(n) => n
            .as_u64()
            .filter(|n| *n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| format!("{n} is not a whole number above 0")),
        _ => Err("expected a whole number above 0".into()),
    }
}

/// A duration such as `"10s"`, between 100 ms and a day.
fn duration(value: &Expression) -> Result<Duration, String> {
    let Expression::String(text) = value else {
        return Err("expected a duration such as \"10s\"".into());
    };
    super::duration::bounded(
        text,
        &super::duration::Bounds {
            least: Duration::from_millis(100),
            most: Duration::from_secs(86_400),
            range: "100ms and 24h",
            example: "10s",
        },
    )
}

impl Limits {
    /// What a node announces of its limits to its peers.
    pub fn announced(&self) -> PeerLimits {
        PeerLimits {
            max_request_size: self.max_request_size,
            max_file_size: self.max_file_size,
            max_batch_entries: self.max_batch_entries,
            max_concurrent_applies: self.max_concurrent_applies,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Limits, (String, String)> {
        let body: hcl::Body = hcl::parse(&format!("limits {{\n{body}\n}}\n")).unwrap();
        match body.into_iter().next().unwrap() {
            Structure::Block(block) => Limits::from_block(block),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_key_can_be_set_and_the_rest_keep_their_defaults() {
        let limits = parse(
            "max_request_size = \"64MiB\"\nmax_file_size = 1048576\n\
             handshake_timeout = \"2s\"\nmax_handshakes_per_address = 2",
        )
        .unwrap();
        assert_eq!(limits.max_request_size, 64 * MIB);
        assert_eq!(limits.max_file_size, MIB);
        assert_eq!(limits.handshake_timeout, Duration::from_secs(2));
        assert_eq!(limits.max_handshakes_per_address, 2);
        assert_eq!(limits.max_connections, Limits::default().max_connections);
        assert_eq!(parse("").unwrap(), Limits::default());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (body, key, words) in [
            (
                "max_request_size = \"lots\"",
                "max_request_size",
                "not a size",
            ),
            ("max_connections = 0", "max_connections", "above 0"),
            (
                "idle_timeout = \"1ms\"",
                "idle_timeout",
                "between 100ms and 24h",
            ),
            ("max_speed = 3", "max_speed", "unknown key"),
            (
                "max_request_size = \"2MiB\"\nmax_file_size = \"2MiB\"",
                "max_file_size",
                "must leave 1 MiB",
            ),
        ] {
            let (named, message) = parse(body).unwrap_err();
            assert_eq!(named, key, "{body}");
            assert!(
                message.contains(key) && message.contains(words),
                "{body}: {message}"
            );
        }
    }
}
