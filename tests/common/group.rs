//! Groups of real nodes on loopback addresses, started in the test's own process.

use std::net::{IpAddr, Ipv4Addr};

use gosyncd::group::{GroupSpec, LocalGroup};

/// `127.0.0.octet`.
pub fn ip(octet: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, octet))
}

/// Starts `nodes` nodes on 127.0.0.first_octet and up, one directory `/etc/app`.
pub async fn start(nodes: usize, first_octet: u8) -> LocalGroup {
    start_with(GroupSpec {
        nodes,
        first_octet,
        ..GroupSpec::default()
    })
    .await
}

/// Starts `nodes` daemons on 127.0.0.first_octet and up that watch `/etc/app` and push
/// their edits.
pub async fn watching(nodes: usize, first_octet: u8) -> LocalGroup {
    start_with(GroupSpec {
        nodes,
        first_octet,
        watch: true,
        ..GroupSpec::default()
    })
    .await
}

pub async fn start_with(spec: GroupSpec) -> LocalGroup {
    LocalGroup::start(&spec)
        .await
        .unwrap_or_else(|e| panic!("group {spec:?} does not start: {e:#}"))
}
