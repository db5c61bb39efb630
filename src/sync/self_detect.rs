//! Recognising by its address a remote that is this node: it resolves to the address
//! this node listens on. Recognising one by the identity it announces is left to the
//! engine and the per-peer work.
//!
//! It only resolves names and binds a throwaway socket; it never connects to a remote.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use crate::config::{BindAddress, Remote};
use crate::protocol;

/// Whether a remote resolves to the address this node listens on.
pub(crate) async fn resolves_to_self(remote: &Remote, bind: &BindAddress) -> bool {
    let lookup = tokio::net::lookup_host((remote.host.as_str(), remote.port));
    let Ok(Ok(addrs)) = tokio::time::timeout(protocol::CONNECT_TIMEOUT, lookup).await else {
        return false;
    };
    let mut addrs = addrs;
    addrs.any(|addr| {
        addr.port() == bind.port
            && match bind.ip {
                Some(ip) if !ip.is_unspecified() => addr.ip() == ip,
                _ => is_local_address(addr.ip()),
            }
    })
}

/// Whether an address belongs to this host: binding to it succeeds only then.
fn is_local_address(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}
