//! A TCP forwarder: another address for a node, or a man in the middle that can act at a
//! precise moment of a transfer.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// Runs until dropped.
pub struct Forwarder {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Hook = Box<dyn FnOnce() + Send>;

/// Forwards every connection made to `bind:<ephemeral>` to `target`.
pub async fn forwarder(bind: IpAddr, target: SocketAddr) -> Forwarder {
    forwarder_with_hook(bind, target, usize::MAX, None).await
}

/// Like [`forwarder`]; in addition, once a connection has carried `threshold` bytes from
/// the client, `hook` runs (once) BEFORE those bytes are passed on: the server cannot
/// have received the whole request yet.
pub async fn forwarder_with_hook(
    bind: IpAddr,
    target: SocketAddr,
    threshold: usize,
    hook: Option<Hook>,
) -> Forwarder {
    let hook = Mutex::new(hook);
    forward_with(
        bind,
        target,
        Arc::new(move |sent, n| {
            if sent < threshold && sent + n >= threshold {
                if let Some(hook) = hook.lock().unwrap().take() {
                    hook();
                }
            }
            Step::Pass
        }),
    )
    .await
}

/// A connection to `target` from address `from` (the client's own, as a NAT-less network
/// would carry it).
async fn connect_from(from: IpAddr, target: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(target).await
}

/// What a forwarder does with the next bytes from a client.
pub(super) enum Step {
    Pass,
    /// Pass this many of them, then reset the connection both ways.
    Cut(usize),
}

/// Decides, from the bytes a connection already carried and the size of the next chunk,
/// what becomes of that chunk.
pub(super) type OnChunk = Arc<dyn Fn(usize, usize) -> Step + Send + Sync>;

/// The forwarders' common loop: every connection to `bind:<ephemeral>` goes to `target`,
/// from the client's own address (as a NAT-less network would carry it), chunk by chunk
/// through `on_chunk`.
pub(super) async fn forward_with(bind: IpAddr, target: SocketAddr, on_chunk: OnChunk) -> Forwarder {
    let listener = TcpListener::bind(SocketAddr::new(bind, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((mut client, client_addr)) = listener.accept().await {
            let on_chunk = on_chunk.clone();
            connections.spawn(async move {
                let Ok(mut server) = connect_from(client_addr.ip(), target).await else {
                    return;
                };
                let cut_here = {
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let down = async {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    // Whether this connection is the one cut.
                    let up = async {
                        let mut sent = 0usize;
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if let Step::Cut(passed) = on_chunk(sent, n) {
                                let _ = server_write.write_all(&buf[..passed]).await;
                                return true;
                            }
                            sent += n;
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                        false
                    };
                    tokio::pin!(up, down);
                    let mut down_done = false;
                    loop {
                        tokio::select! {
                            cut_here = &mut up => {
                                if !cut_here && !down_done {
                                    (&mut down).await;
                                }
                                break cut_here;
                            }
                            () = &mut down, if !down_done => down_done = true,
                        }
                    }
                };
                if cut_here {
                    // Closing with a zero linger sends a reset: both ends see the
                    // connection die, as when a cable is pulled or a middlebox drops it.
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                }
            });
        }
    });
    Forwarder { addr, task }
}

/// Forwards every connection made to `bind:<ephemeral>` to `target`, except one answer:
/// once a connection has carried more than `threshold` bytes from the client and
/// `applied` says the server has done the work, the next bytes the server sends (its
/// answer) are dropped and the connection is reset both ways. The request reached the
/// server whole; the client never learns what became of it. The flag says whether an
/// answer was lost.
pub async fn forwarder_losing_answer(
    bind: IpAddr,
    target: SocketAddr,
    threshold: usize,
    applied: Arc<dyn Fn() -> bool + Send + Sync>,
) -> (Forwarder, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let listener = TcpListener::bind(SocketAddr::new(bind, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let lost = Arc::new(AtomicBool::new(false));
    let flag = lost.clone();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((mut client, client_addr)) = listener.accept().await {
            let (lost, applied) = (lost.clone(), applied.clone());
            connections.spawn(async move {
                let Ok(mut server) = connect_from(client_addr.ip(), target).await else {
                    return;
                };
                let sent = AtomicUsize::new(0);
                let reset = {
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            sent.fetch_add(n, Ordering::SeqCst);
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = server_write.shutdown().await;
                        // The client is done; the answer still comes down.
                        std::future::pending::<()>().await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match server_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if sent.load(Ordering::SeqCst) > threshold
                                && applied()
                                && !lost.swap(true, Ordering::SeqCst)
                            {
                                return true;
                            }
                            if client_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = client_write.shutdown().await;
                        false
                    };
                    tokio::select! {
                        () = up => false,
                        reset = down => reset,
                    }
                };
                if reset {
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                }
            });
        }
    });
    (Forwarder { addr, task }, flag)
}
