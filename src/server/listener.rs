//! The mutual-TLS listener in front of the router: binding the configured address,
//! accepting connections, and the limits on handshakes and connections that keep
//! clients which never finish from holding a node.
//!
//! It tells the router who the client is (its address and certificate, as request
//! extensions) and must not look at requests itself: what a request may do is the
//! routes' decision.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::Extension;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{router, ClientAddr, ClientSubject};
use crate::config::BindAddress;
use crate::node::Node;
use crate::tls;

/// Binds the configured address. `":port"` listens on every address, IPv6 dual-stack
/// when the host has IPv6, IPv4 otherwise.
pub async fn bind(addr: &BindAddress) -> io::Result<TcpListener> {
    match addr.ip {
        Some(ip) => TcpListener::bind(SocketAddr::new(ip, addr.port)).await,
        None => match TcpListener::bind((Ipv6Addr::UNSPECIFIED, addr.port)).await {
            Ok(listener) => Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(e),
            Err(_) => TcpListener::bind(("0.0.0.0", addr.port)).await,
        },
    }
}

/// Serves the API with mutual TLS on `listener` until `shutdown` completes.
///
/// Admission is decided by address before the handshake. A connection from one of the
/// group's addresses (`remotes` or `allow_from`) takes a place among the group's
/// handshakes (`max_handshakes`, of which one address may hold
/// `max_handshakes_per_address`); any other takes one among the strangers'
/// (`max_stranger_handshakes`, of which one network, /24 or /64, may hold
/// `max_handshakes_per_address`). There is no waiting for one: a connection that finds
/// none is closed at once, so clients that never finish their handshake cannot keep the
/// group's nodes out, from however many addresses they come. Once authenticated it
/// takes one of `max_connections`, and waits for it.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    node: Arc<Node>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = node.config.limits.clone();
    let acceptor = TlsAcceptor::from(tls);
    let app = router(node.clone());
    let group = Pool::new(limits.max_handshakes, limits.max_handshakes_per_address);
    let strangers = Pool::new(
        limits.max_stranger_handshakes,
        limits.max_handshakes_per_address,
    );
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let turned_away = Arc::new(TurnedAway::default());
    // Connections are tracked so that stopping the server also ends kept-alive ones.
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, client) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // An IPv4 client of a dual-stack socket is named as IPv4.
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
        // Answers go out as they are written: a response's last segment must not wait
        // for the client's delayed acknowledgement (40 ms on Linux) of the one before.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(%client, error = %e, "cannot disable Nagle's algorithm");
        }
        let place = if node.allow.knows(client.ip()) {
            group.admit(
                client.ip(),
                ("max_handshakes", "max_handshakes_per_address"),
            )
        } else {
            strangers.admit(
                network_of(client.ip()),
                (
                    "max_stranger_handshakes",
                    "max_handshakes_per_address (per network)",
                ),
            )
        };
        let (handshaking, from_address) = match place {
            Ok(place) => place,
            Err(limit) => {
                turned_away.note(client, limit);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone().layer(Extension(ClientAddr(client)));
        let slots = slots.clone();
        let limits = limits.clone();
        connections.spawn(async move {
            let handshake =
                tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await;
            drop((handshaking, from_address));
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    let reason = tls::explain(&e, tls::End::Server).unwrap_or_else(|| e.to_string());
                    warn!(%client, %reason, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    warn!(%client, timeout = ?limits.handshake_timeout, "TLS handshake timed out (handshake_timeout)");
                    return;
                }
            };
            let _slot = slots.acquire_owned().await.expect("semaphore never closed");
            let subject = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map_or_else(|| "none".to_string(), tls::describe_certificate);
            let app = app.layer(Extension(ClientSubject(subject.into())));
            // HTTP/1.1 only: one request at a time per connection keeps the memory a
            // client can claim bounded by the connection limit.
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size(READ_BUFFER);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .await
            {
                debug!(%client, error = %e, "connection ended with an error");
            }
            // A connection ends once its client has been quiet for a while, and the code
            // it ran (the handshake, the request, closing) is idle again.
            crate::memory::give_back_soon();
        });
    }
    connections.shutdown().await;
}

/// The most a connection reads from its client at once. A request body's frames are
/// slices of the buffer they were read into, and each keeps all of it until the batch
/// has read it: at hyper's default (about 400 KiB), the frames waiting for the receiver
/// held up to 4 MiB per request.
const READ_BUFFER: usize = 64 * 1024;

/// A pool of handshake places, and its share per address (or network).
struct Pool {
    places: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
}

impl Pool {
    fn new(places: usize, per_address: usize) -> Pool {
        Pool {
            places: Arc::new(Semaphore::new(places)),
            per_address: Arc::new(PerAddress::new(per_address)),
        }
    }

    /// A place for a connection from `key`, or the limit that refuses it.
    fn admit(
        &self,
        key: IpAddr,
        (all, one): (&'static str, &'static str),
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, AddressPermit), &'static str> {
        let place = self.places.clone().try_acquire_owned().map_err(|_| all)?;
        let from = PerAddress::admit(&self.per_address, key).ok_or(one)?;
        Ok((place, from))
    }
}

/// The network a stranger's address is counted in: its /24 (IPv4) or /64 (IPv6), where
/// one party easily holds many addresses.
fn network_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::from(segments)
        }
    }
}

/// Handshakes under way per client address.
struct PerAddress {
    limit: usize,
    counts: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One handshake counted against its address until dropped.
struct AddressPermit {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    fn new(limit: usize) -> PerAddress {
        PerAddress {
            limit,
            counts: Default::default(),
        }
    }

    fn admit(this: &Arc<PerAddress>, ip: IpAddr) -> Option<AddressPermit> {
        let ip = ip.to_canonical();
        let mut counts = this.counts.lock().expect("per-address lock");
        let count = counts.entry(ip).or_default();
        if *count >= this.limit {
            return None;
        }
        *count += 1;
        Some(AddressPermit {
            owner: this.clone(),
            ip,
        })
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().expect("per-address lock");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Connections closed for want of a handshake place, logged at most every 10 s.
#[derive(Default)]
struct TurnedAway {
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl TurnedAway {
    fn note(&self, client: SocketAddr, limit: &str) {
        let mut state = self.state.lock().expect("turned-away lock");
        state.1 += 1;
        if state
            .0
            .is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(10))
        {
            warn!(
                %client,
                closed = state.1,
                "connections closed before their TLS handshake: {limit} reached \
                 (a client opening connections without completing them?)"
            );
            *state = (Some(std::time::Instant::now()), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strangers_are_counted_per_network() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(network_of(ip("192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(network_of(ip("::ffff:192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(network_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        let pool = Pool::new(3, 2);
        let names = ("all", "one");
        let a = pool.admit(network_of(ip("192.0.2.1")), names).unwrap();
        let _b = pool.admit(network_of(ip("192.0.2.2")), names).unwrap();
        assert_eq!(
            pool.admit(network_of(ip("192.0.2.3")), names).err(),
            Some("one"),
            "a third address of the same /24"
        );
        let _c = pool.admit(network_of(ip("198.51.100.1")), names).unwrap();
        assert_eq!(pool.admit(ip("203.0.113.1"), names).err(), Some("all"));
        drop(a);
        assert!(
            pool.admit(ip("203.0.113.1"), names).is_ok(),
            "a place freed"
        );
    }
}
