//! Loopback addresses handed out to the tests, so that no test picks one by hand and no
//! two tests share one: not two tests of this run, which run side by side on threads, and
//! not a test of another run on the same machine.
//!
//! This process claims a whole network 127.0.S.0/24 at a time, by listening on
//! 127.0.S.1:[`CLAIM_PORT`] for as long as it lives (a port below the kernel's ephemeral
//! range, so that no node listening on port 0 can take it); a network another process
//! holds is skipped. Addresses within a claimed network are then handed out in order.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::Mutex;

use gosyncd::group::GroupSpec;

/// The port whose listener on 127.0.S.1 marks network S as taken.
const CLAIM_PORT: u16 = 29_871;

/// The networks tests may claim: 127.0.0.0/24 and 127.0.1.0/24 are left to whatever else
/// runs on the machine (127.0.0.1 above all).
const NETWORKS: std::ops::RangeInclusive<u8> = 16..=254;

/// The first and last host octet handed out in a network (.1 carries the claim, but may
/// still be used: the claim's port is its own).
const HOSTS: std::ops::RangeInclusive<u8> = 2..=254;

struct Claimed {
    /// The listeners that hold this process's networks.
    held: Vec<TcpListener>,
    /// The network addresses are being handed out from, and its next host octet.
    current: Option<(u8, u8)>,
    /// The next network to try.
    next_network: u8,
}

static CLAIMED: Mutex<Claimed> = Mutex::new(Claimed {
    held: Vec::new(),
    current: None,
    next_network: *NETWORKS.start(),
});

/// `count` consecutive addresses 127.0.S.N, 127.0.S.N+1, ... that no other test uses.
pub fn addresses(count: usize) -> Vec<IpAddr> {
    let (network, first) = claim(count);
    (0..count)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, network, first + i as u8)))
        .collect()
}

/// One address that no other test uses.
pub fn address() -> IpAddr {
    addresses(1)[0]
}

/// A group of `nodes` nodes (the defaults otherwise) on addresses no other test uses.
pub fn spec(nodes: usize) -> GroupSpec {
    let (subnet, first_octet) = claim(nodes);
    GroupSpec {
        nodes,
        subnet,
        first_octet,
        ..GroupSpec::default()
    }
}

/// The network and first host octet of `count` consecutive free addresses.
fn claim(count: usize) -> (u8, u8) {
    let hosts = usize::from(*HOSTS.end() - *HOSTS.start()) + 1;
    assert!(
        count >= 1 && count <= hosts,
        "cannot hand out {count} consecutive addresses"
    );
    let mut claimed = CLAIMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((network, next)) = claimed.current {
        if usize::from(next) + count - 1 <= usize::from(*HOSTS.end()) {
            claimed.current = Some((network, next + count as u8));
            return (network, next);
        }
    }
    loop {
        let network = claimed.next_network;
        assert!(
            NETWORKS.contains(&network),
            "every loopback network 127.0.{}-{}.0/24 is taken by other test runs",
            NETWORKS.start(),
            NETWORKS.end()
        );
        claimed.next_network = network.wrapping_add(1);
        let mark = (Ipv4Addr::new(127, 0, network, 1), CLAIM_PORT);
        if let Ok(listener) = TcpListener::bind(mark) {
            claimed.held.push(listener);
            let first = *HOSTS.start();
            claimed.current = Some((network, first + count as u8));
            return (network, first);
        }
    }
}

#[test]
fn claims_never_overlap_and_their_networks_stay_held() {
    let (a, b) = (addresses(3), addresses(3));
    let mut all = a.clone();
    all.extend(&b);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 6, "{a:?} and {b:?} share an address");
    for block in [&a, &b] {
        let IpAddr::V4(first) = block[0] else {
            panic!("{block:?} is not IPv4")
        };
        let [_, _, network, host] = first.octets();
        for (i, ip) in block.iter().enumerate() {
            assert_eq!(
                *ip,
                IpAddr::V4(Ipv4Addr::new(127, 0, network, host + i as u8))
            );
        }
        // Another process (here: another listener) cannot claim the network.
        let mark = (Ipv4Addr::new(127, 0, network, 1), CLAIM_PORT);
        assert!(
            TcpListener::bind(mark).is_err(),
            "127.0.{network}.0/24 is not held while its addresses are in use"
        );
    }
}
