//! The names a certificate is made valid for: a host as an operator gives it to
//! `gosyncd cert` (an IP address or a DNS name, nothing a TLS client could not match),
//! its text, and the subjectAltNames a list of hosts becomes. Pure: no key, no
//! certificate and no I/O here.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rustls::pki_types::{DnsName, ServerName};

/// A name a certificate is made valid for: an IP address (an IP subjectAltName) or a
/// DNS name (a DNS subjectAltName), as a peer dials it from its `remotes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    Dns(String),
}

impl FromStr for Host {
    type Err = String;

    /// Accepts `10.0.0.2`, `fd00::2`, `[fd00::2]` and host names; refuses `host:port`,
    /// wildcards and anything else a TLS client could not match, saying why.
    fn from_str(text: &str) -> Result<Host, String> {
        let bare = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if text.is_empty() {
            return Err("empty host".to_string());
        }
        if let Some((host, port)) = text.rsplit_once(':') {
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                return Err(format!(
                    "looks like host:port; give the host alone ({host}): the port plays no part in a certificate"
                ));
            }
        }
        if text.contains('*') {
            return Err("wildcards are not supported: list every host".to_string());
        }
        if !text.is_ascii() {
            return Err(
                "not a valid DNS name (give an internationalised name in its xn-- form)"
                    .to_string(),
            );
        }
        match DnsName::try_from(text) {
            Ok(_) => Ok(Host::Dns(text.to_ascii_lowercase())),
            Err(_) => Err("neither an IP address nor a valid DNS name".to_string()),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

impl Host {
    /// The name a TLS client checks the certificate against.
    pub(super) fn server_name(&self) -> ServerName<'static> {
        match self {
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            Host::Dns(name) => {
                ServerName::DnsName(DnsName::try_from(name.clone()).expect("validated when parsed"))
            }
        }
    }
}

/// The hosts as the SAN strings rcgen expects (it makes an IP SAN of what parses as an
/// address, a DNS SAN of the rest), each once, in order.
pub(crate) fn san_names(hosts: &[Host]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for host in hosts.iter().map(Host::to_string) {
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> Result<Host, String> {
        text.parse()
    }

    #[test]
    fn hosts_are_addresses_or_dns_names_and_anything_else_is_refused_saying_why() {
        assert_eq!(host("10.0.0.2"), Ok(Host::Ip("10.0.0.2".parse().unwrap())));
        assert_eq!(host("fd00::2"), Ok(Host::Ip("fd00::2".parse().unwrap())));
        assert_eq!(host("[fd00::2]"), Ok(Host::Ip("fd00::2".parse().unwrap())));
        assert_eq!(
            host("Node2.Example.com"),
            Ok(Host::Dns("node2.example.com".into()))
        );
        assert_eq!(host("node2"), Ok(Host::Dns("node2".into())));
        for (bad, why) in [
            ("10.0.0.2:8080", "give the host alone (10.0.0.2)"),
            ("[fd00::2]:8080", "give the host alone (fd00::2)"),
            ("node2:8080", "give the host alone (node2)"),
            ("*.example.com", "wildcards"),
            ("nœud.example", "xn--"),
            ("10.0.0.256", "neither an IP address nor a valid DNS name"),
            ("bad host", "neither an IP address nor a valid DNS name"),
            (
                "https://node2",
                "neither an IP address nor a valid DNS name",
            ),
            ("", "empty host"),
        ] {
            let err = host(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn each_host_is_named_once_in_order() {
        let hosts: Vec<Host> = ["10.0.0.2", "node2", "[10.0.0.2]", "NODE2", "fd00::2"]
            .iter()
            .map(|h| h.parse().unwrap())
            .collect();
        assert_eq!(san_names(&hosts), ["10.0.0.2", "node2", "fd00::2"]);
    }
}
