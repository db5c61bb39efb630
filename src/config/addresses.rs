//! The network addresses a configuration names: the daemon's `bind_address`, the peers
//! in `remotes` and the `allow_from` entries, each with the parser that turns the text as
//! written into a checked value. Pure: no name is resolved and nothing is read here, and
//! messages name the entry but not the key (the caller adds it).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The address the daemon listens on. `ip == None` means every address (`":8080"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress {
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl BindAddress {
    /// The address outgoing connections are made from: the one named, if any
    /// (`":8080"` and `"0.0.0.0:8080"` name none).
    pub fn source_ip(&self) -> Option<IpAddr> {
        self.ip.filter(|ip| !ip.is_unspecified())
    }
}

impl fmt::Display for BindAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            None => write!(f, ":{}", self.port),
            Some(ip) => write!(f, "{}", SocketAddr::new(ip, self.port)),
        }
    }
}

/// A peer as listed in `remotes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Host name or IP address (without brackets).
    pub host: String,
    pub port: u16,
    /// The entry as written in the config; this is how the peer is named in output.
    pub label: String,
}

impl Remote {
    /// The base URL of the peer's API.
    pub fn url(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }
}

/// Parses `":8080"`, `"ip:port"` or `"[v6]:port"`.
pub fn parse_bind_address(text: &str) -> Result<BindAddress, String> {
    if let Some(port) = text.strip_prefix(':') {
        return Ok(BindAddress {
            ip: None,
            port: parse_port(port, text)?,
        });
    }
    let (host, port) = split_host_port(text)?;
    let ip: IpAddr = host.parse().map_err(|_| {
        format!("{text:?}: {host:?} is not an IP address (use \":{port}\" for every address)")
    })?;
    Ok(BindAddress {
        ip: Some(ip),
        port: parse_port(port, text)?,
    })
}

/// Parses `"host:port"` or `"[v6]:port"`; the port is required.
pub fn parse_remote(text: &str) -> Result<Remote, String> {
    let (host, port) = split_host_port(text)?;
    if host.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if host.contains(':') && host.parse::<IpAddr>().is_err() {
        return Err(format!("{text:?}: {host:?} is not an IPv6 address"));
    }
    if !host.contains(':')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(format!("{text:?}: {host:?} is not a valid host name"));
    }
    Ok(Remote {
        host: host.to_string(),
        port: parse_port(port, text)?,
        label: text.to_string(),
    })
}

fn split_host_port(text: &str) -> Result<(&str, &str), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: missing ']'"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("{text:?}: missing port (write \"[{host}]:8080\")"))?;
        return Ok((host, port));
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Err(format!(
            "{text:?}: an IPv6 address must be in brackets, as \"[{host}]:port\""
        )),
        Some((host, port)) => Ok((host, port)),
        None => Err(format!("{text:?}: missing port (write \"{text}:8080\")")),
    }
}

fn parse_port(port: &str, text: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{text:?}: {port:?} is not a port number (1-65535)")),
    }
}

/// One `allow_from` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// An address or a network, such as `10.0.0.7` or `10.0.0.0/24`.
    Net(ipnet::IpNet),
    /// A host name, resolved when the daemon starts and again when an unknown address
    /// calls.
    Host(String),
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowEntry::Net(net) => write!(f, "{net}"),
            AllowEntry::Host(host) => write!(f, "{host}"),
        }
    }
}

/// Parses an `allow_from` entry: an IP address, a network in CIDR form, or a host name.
pub fn parse_allow_entry(text: &str) -> Result<AllowEntry, String> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(AllowEntry::Net(net.trunc()));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(AllowEntry::Net(ipnet::IpNet::from(ip)));
    }
    let is_name = !text.is_empty()
        && !text.starts_with(['-', '.'])
        // Top-level domains are never numeric: "10.0.0.300" is a mistyped address.
        && !text.rsplit('.').next().is_some_and(|label| label.chars().all(|c| c.is_ascii_digit()))
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if is_name {
        Ok(AllowEntry::Host(text.to_string()))
    } else {
        Err(format!(
            "{text:?} is not an IP address, a network (such as \"10.0.0.0/24\") or a host name"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_parse_in_every_form() {
        assert_eq!(parse_bind_address(":8080").unwrap().ip, None);
        let v4 = parse_bind_address("127.0.0.2:9000").unwrap();
        assert_eq!(v4.ip, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(v4.port, 9000);
        let v6 = parse_bind_address("[::1]:8080").unwrap();
        assert_eq!(v6.ip, Some("::1".parse().unwrap()));
        assert!(parse_bind_address("8080")
            .unwrap_err()
            .contains("missing port"));
        assert!(parse_bind_address("host:8080")
            .unwrap_err()
            .contains("not an IP address"));
        assert!(parse_bind_address(":0").unwrap_err().contains("not a port"));
    }

    #[test]
    fn remotes_need_a_port_and_accept_host_names() {
        let r = parse_remote("node-1.example.com:8080").unwrap();
        assert_eq!((r.host.as_str(), r.port), ("node-1.example.com", 8080));
        assert_eq!(r.url(), "https://node-1.example.com:8080");
        let r = parse_remote("[fd00::2]:8080").unwrap();
        assert_eq!(r.url(), "https://[fd00::2]:8080");
        assert!(parse_remote("172.17.0.2")
            .unwrap_err()
            .contains("missing port"));
        assert!(parse_remote("fd00::2:8080")
            .unwrap_err()
            .contains("brackets"));
        assert!(parse_remote("a/b:80").unwrap_err().contains("host name"));
    }
}
