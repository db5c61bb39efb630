//! Who may read and write this node's trees.
//!
//! A certificate signed by the group's CA is necessary but not sufficient: the client's
//! address must also be one of the group's. By default that is every address the hosts
//! in `remotes` resolve to; `allow_from` replaces that list with addresses, networks and
//! host names of its own (for NAT or multi-homed hosts). Host names are resolved when the
//! daemon starts and again, at most every [`RESOLVE_INTERVAL`], when an address that is
//! not on the list calls, so a peer whose address changed in DNS is let in without a
//! restart.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tracing::{debug, warn};

use crate::config::{AllowEntry, Config};

/// Shortest time between two resolutions of the allowed host names.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(10);

/// The addresses allowed to call the routes that read or write trees.
pub struct Allowlist {
    nets: Vec<IpNet>,
    hosts: Vec<String>,
    resolved: Mutex<Resolved>,
    /// What the list was made from, for refusal messages.
    source: &'static str,
}

#[derive(Default)]
struct Resolved {
    at: Option<Instant>,
    addresses: Vec<IpAddr>,
}

impl Allowlist {
    /// The list `config` describes; host names are not resolved yet (see
    /// [`Allowlist::refresh`]).
    pub fn new(config: &Config) -> Allowlist {
        let (entries, source): (Vec<AllowEntry>, _) = match &config.allow_from {
            Some(entries) => (entries.clone(), "allow_from"),
            None => (
                config
                    .remotes
                    .iter()
                    .map(|r| match r.host.parse::<IpAddr>() {
                        Ok(ip) => AllowEntry::Net(IpNet::from(ip)),
                        Err(_) => AllowEntry::Host(r.host.clone()),
                    })
                    .collect(),
                "remotes",
            ),
        };
        let mut nets = Vec::new();
        let mut hosts = Vec::new();
        for entry in entries {
            match entry {
                AllowEntry::Net(net) => nets.push(net),
                AllowEntry::Host(host) => hosts.push(host),
            }
        }
        Allowlist {
            nets,
            hosts,
            resolved: Mutex::new(Resolved::default()),
            source,
        }
    }

    /// The config key the list comes from: `remotes` or `allow_from`.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Whether `ip` may call; resolves the host names again when `ip` is not known and
    /// the last resolution is older than [`RESOLVE_INTERVAL`].
    pub async fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if self.known(ip) {
            return true;
        }
        let stale = {
            let resolved = self.resolved.lock().expect("allowlist lock");
            resolved
                .at
                .is_none_or(|at| at.elapsed() >= RESOLVE_INTERVAL)
        };
        if stale && !self.hosts.is_empty() {
            self.refresh().await;
            return self.known(ip);
        }
        false
    }

    /// Whether `ip` is one of the group's, as far as the last resolution knows, without
    /// resolving anything (for the accept loop, which must not wait).
    pub fn knows(&self, ip: IpAddr) -> bool {
        self.known(ip.to_canonical())
    }

    fn known(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
            || self
                .resolved
                .lock()
                .expect("allowlist lock")
                .addresses
                .contains(&ip)
    }

    /// Resolves the host names now. A name that does not resolve is logged and
    /// tried again later.
    pub async fn refresh(&self) {
        let mut addresses = Vec::new();
        for host in &self.hosts {
            match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(found) => {
                    let before = addresses.len();
                    addresses.extend(found.map(|a| a.ip().to_canonical()));
                    debug!(%host, addresses = ?&addresses[before..], "allowed host resolved");
                }
                Err(e) => warn!(
                    %host,
                    key = self.source,
                    "cannot resolve an allowed host name (its requests are refused until it resolves): {e}"
                ),
            }
        }
        *self.resolved.lock().expect("allowlist lock") = Resolved {
            at: Some(Instant::now()),
            addresses,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::config_text;

    fn allowlist(extra: &str) -> Allowlist {
        let text = config_text(std::path::Path::new("/r"), "").replace(
            "remotes = [",
            &format!("{extra}\nremotes = [\"localhost:8080\", \"10.1.2.3:8080\", "),
        );
        Allowlist::new(&crate::testing::parse(&text))
    }

    #[tokio::test]
    async fn by_default_only_the_remotes_addresses_are_allowed() {
        let list = allowlist("");
        assert_eq!(list.source(), "remotes");
        assert!(list.allows("10.1.2.3".parse().unwrap()).await);
        assert!(
            list.allows("::ffff:10.1.2.3".parse().unwrap()).await,
            "an IPv4 client on a dual-stack socket"
        );
        assert!(
            list.allows("127.0.0.1".parse().unwrap()).await,
            "localhost resolves"
        );
        assert!(!list.allows("10.1.2.4".parse().unwrap()).await);
        assert!(!list.allows("192.0.2.1".parse().unwrap()).await);
    }

    #[tokio::test]
    async fn allow_from_replaces_the_remotes() {
        let list = allowlist("allow_from = [\"192.0.2.0/24\", \"2001:db8::7\"]");
        assert_eq!(list.source(), "allow_from");
        assert!(list.allows("192.0.2.200".parse().unwrap()).await);
        assert!(list.allows("2001:db8::7".parse().unwrap()).await);
        assert!(!list.allows("2001:db8::8".parse().unwrap()).await);
        assert!(
            !list.allows("10.1.2.3".parse().unwrap()).await,
            "a remote not in allow_from"
        );
    }
}
