//! Fault-injecting TCP proxies on the peer links.
//!
//! Each member advertises a peer URL on which a proxy of this process listens; the
//! proxy forwards to the member's real peer listener. Members bind their outgoing
//! peer connections to their own 127.0.0.x address, so the proxy knows which member
//! a connection comes from. A blocked direction `from -> to` stops the bytes that
//! `from` sends to `to` on every connection between them — like a firewall dropping
//! those packets, with TCP keeping them until the link heals, so a short partition
//! delays messages and a long one times requests out, as on a real network.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Blocked directions, as (from, to) member indexes.
pub type Blocked = BTreeSet<(usize, usize)>;

#[derive(Clone)]
pub struct Links {
    tx: Arc<watch::Sender<Blocked>>,
}

impl Default for Links {
    fn default() -> Self {
        Links { tx: Arc::new(watch::channel(Blocked::new()).0) }
    }
}

impl Links {
    pub fn set(&self, blocked: Blocked) {
        self.tx.send_replace(blocked);
    }

    pub fn heal(&self) {
        self.set(Blocked::new());
    }

    pub fn blocked(&self) -> Blocked {
        self.tx.borrow().clone()
    }
}

/// Starts the proxy for member `to`: listens on `listen`, forwards to `target`.
/// `member_of` maps a source address to a member index.
pub async fn start(
    listen: SocketAddr,
    target: SocketAddr,
    to: usize,
    member_of: Arc<dyn Fn(IpAddr) -> Option<usize> + Send + Sync>,
    links: Links,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener =
        TcpListener::bind(listen).await.map_err(|e| anyhow::anyhow!("proxy cannot listen on {listen}: {e}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((inbound, peer)) = listener.accept().await else { continue };
            let from = member_of(peer.ip());
            let links = links.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else { return };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                let up = pump(ri, wo, from.map(|f| (f, to)), links.tx.subscribe());
                let down = pump(ro, wi, from.map(|f| (to, f)), links.tx.subscribe());
                // Either side closing ends the connection.
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    }))
}

/// Copies one direction, holding the bytes while `dir` is blocked.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    dir: Option<(usize, usize)>,
    mut blocked: watch::Receiver<Blocked>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(dir) = dir {
            if blocked.wait_for(|b| !b.contains(&dir)).await.is_err() {
                return;
            }
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
