//! `kubectl port-forward`: the `portforward.k8s.io` protocol over SPDY/3.1, as the
//! kubelet serves it. For each forwarded connection the client opens two streams with
//! the same `requestID` and `port` headers: `streamType: error` and `streamType: data`.
//! The agent connects to that port on the pod's own localhost (inside its network
//! namespace, so ports bound to 127.0.0.1 in the pod work too) and copies bytes between
//! the data stream and the connection; a failure to connect is written to the error
//! stream, which kubectl prints.

use std::collections::HashMap;
use std::os::fd::AsRawFd;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::spdy::{Frame, Reader, Writer, CANCEL, PROTOCOL_ERROR};

pub const PROTOCOL: &str = "portforward.k8s.io";

/// Streams waiting for their partner (error or data) that one session may hold.
const MAX_PENDING: usize = 256;

/// Connects to `port` on localhost inside the network namespace at `netns`, from a
/// thread of its own (setns changes only the calling thread, which then ends).
pub async fn dial_in_netns(netns: String, port: u16) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| {
            let ns = std::fs::File::open(&netns)?;
            // SAFETY: setns on a valid namespace fd affects only this thread, which ends
            // right after connecting.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let s = std::net::TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                std::time::Duration::from_secs(5),
            )?;
            s.set_nonblocking(true)?;
            Ok(s)
        })();
        let _ = tx.send(result);
    });
    let std_stream = rx.await.map_err(|_| std::io::Error::other("the connecting thread died"))??;
    TcpStream::from_std(std_stream)
}

/// Streams of one forwarded connection, paired by request id.
#[derive(Default)]
struct Pair {
    port: Option<u16>,
    error: Option<u32>,
    data: Option<u32>,
}

/// Serves one port-forward session until the client goes away. `dial` opens the
/// connection to a port of the pod; `pod` names it in error messages.
pub async fn serve<IO, D, F>(io: IO, pod: String, dial: D) -> std::io::Result<()>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    D: Fn(u16) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = std::io::Result<TcpStream>> + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    // One writer: frames from every stream go through this channel, in order.
    let (out, mut frames) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = frames.recv().await {
            if wr.write_all(&f).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut reader = Reader::new(rd);
    let mut replies = Writer::new();
    let dial = std::sync::Arc::new(dial);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Bytes from the client for each data stream, to its connection's task.
    let mut inbound: HashMap<u32, mpsc::Sender<Option<Vec<u8>>>> = HashMap::new();
    // The connections' tasks end with the session.
    let mut conns = tokio::task::JoinSet::new();
    let result = loop {
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match frame {
            Frame::SynStream { id, headers, .. } => {
                let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let port = get("port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
                let Some(port) = port else {
                    let _ = out.send(Writer::rst_stream(id, PROTOCOL_ERROR)).await;
                    continue;
                };
                let _ = out.send(replies.syn_reply(id)).await;
                // Clients before requestID pair streams by port.
                let key = get("requestid").unwrap_or_else(|| format!("port-{port}"));
                if pairs.len() >= MAX_PENDING && !pairs.contains_key(&key) {
                    break Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "too many unpaired streams"));
                }
                let pair = pairs.entry(key.clone()).or_default();
                pair.port = Some(port);
                match get("streamtype").as_deref() {
                    Some("error") => pair.error = Some(id),
                    Some("data") => pair.data = Some(id),
                    _ => {
                        let _ = out.send(Writer::rst_stream(id, PROTOCOL_ERROR)).await;
                        continue;
                    }
                }
                if let (Some(error), Some(data), Some(port)) = (pair.error, pair.data, pair.port) {
                    pairs.remove(&key);
                    // Bounded: a client faster than the pod waits (and so does this session).
                    let (tx, rx) = mpsc::channel(16);
                    inbound.insert(data, tx);
                    let conn = dial(port);
                    conns.spawn(forward(conn, rx, out.clone(), error, data, port, pod.clone()));
                }
            }
            Frame::Data { id, fin, data } => {
                if let Some(tx) = inbound.get(&id) {
                    if !data.is_empty() {
                        let _ = tx.send(Some(data)).await;
                    }
                    if fin {
                        let _ = tx.send(None).await;
                        inbound.remove(&id);
                    }
                }
            }
            Frame::RstStream { id, .. } => {
                inbound.remove(&id);
            }
            Frame::Ping(id) => {
                let _ = out.send(Writer::ping(id)).await;
            }
            Frame::GoAway => break Ok(()),
            Frame::Ignored => {}
        }
    };
    drop(inbound);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    drop(out);
    let _ = writer.await;
    result
}

/// One forwarded connection: bytes both ways until either side ends.
async fn forward(
    conn: impl std::future::Future<Output = std::io::Result<TcpStream>>,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
    out: mpsc::Sender<Vec<u8>>,
    error: u32,
    data: u32,
    port: u16,
    pod: String,
) {
    let conn = match conn.await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod}: failed to connect to localhost:{port}: {e}");
            let _ = out.send(Writer::data(error, true, msg.as_bytes())).await;
            let _ = out.send(Writer::data(data, true, &[])).await;
            return;
        }
    };
    let (mut rd, mut wr) = conn.into_split();
    let to_pod = async {
        while let Some(Some(bytes)) = from_client.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = wr.shutdown().await;
    };
    let out2 = out.clone();
    let to_client = async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => {
                    let _ = out2.send(Writer::data(data, true, &[])).await;
                    return;
                }
                Ok(n) => {
                    if out2.send(Writer::data(data, false, &buf[..n])).await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    let _ = out2.send(Writer::rst_stream(data, CANCEL)).await;
                    return;
                }
            }
        }
    };
    tokio::join!(to_pod, to_client);
    let _ = out.send(Writer::data(error, true, &[])).await;
}
