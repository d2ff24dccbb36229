//! `kubectl exec` on the node: `GET /exec/<ns>/<pod>/<container>?command=..&stdin=..`
//! upgraded to a WebSocket speaking Kubernetes' channel protocol (`v5.channel.k8s.io`,
//! or `v4`): every binary message starts with a channel byte — 0 stdin, 1 stdout,
//! 2 stderr, 3 the final status (a metav1.Status as JSON), 4 terminal resize; with v5 the
//! client closes stdin with `[255, 0]`. The API server proxies the upgraded connection
//! here unchanged. The process runs through containerd's Exec with FIFOs for its stdio.

use std::convert::Infallible;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, ResizePtyRequest,
    StartRequest, WaitRequest,
};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::server::text;
use super::{Conn, Containerd};

type Body = BoxBody<Bytes, Infallible>;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What the client asked for.
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecRequest {
    pub fn parse(q: &[(String, String)]) -> ExecRequest {
        let flag = |k: &str| q.iter().any(|(key, v)| key == k && (v == "true" || v == "1"));
        ExecRequest {
            command: q.iter().filter(|(k, _)| k == "command").map(|(_, v)| v.clone()).collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }
}

/// The WebSocket handshake of the channel protocol: (Sec-WebSocket-Accept, protocol),
/// or the error response.
fn handshake(req: &Request<hyper::body::Incoming>, what: &str) -> Result<(String, &'static str), (u16, String)> {
    let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if !header("upgrade").eq_ignore_ascii_case("websocket") {
        return Err((400, format!("{what} needs a WebSocket upgrade (v5.channel.k8s.io or v4.channel.k8s.io)")));
    }
    let offered = header("sec-websocket-protocol");
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    let Some(proto) = ["v5.channel.k8s.io", "v4.channel.k8s.io"].into_iter().find(|p| offered.contains(p)) else {
        return Err((400, format!("none of the offered protocols {offered:?} is supported; use v5.channel.k8s.io")));
    };
    let key = header("sec-websocket-key");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, format!("{key}{GUID}").as_bytes());
    Ok((base64::engine::general_purpose::STANDARD.encode(digest.as_ref()), proto))
}

fn switching(accept: String, proto: &str) -> Response<Body> {
    Response::builder()
        .status(101)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", accept)
        .header("Sec-WebSocket-Protocol", proto)
        .body(Full::new(Bytes::new()).boxed())
        .expect("a valid response")
}

/// Answers the upgrade request and runs the session on the upgraded connection.
pub fn upgrade(
    rt: &Containerd,
    req: Request<hyper::body::Incoming>,
    uid: &str,
    cid: String,
    ex: ExecRequest,
) -> Response<Body> {
    let (accept, proto) = match handshake(&req, "exec") {
        Ok(h) => h,
        Err((code, msg)) => return text(code, msg),
    };
    if ex.command.is_empty() {
        return text(400, "you must specify at least 1 command");
    }
    let v5 = proto.starts_with("v5");
    let conn = rt.inner.conn.clone();
    let dir = rt.pod_dir(uid).join("exec");
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let io = hyper_util::rt::TokioIo::new(up);
                if let Err(e) = session(io, &conn, &cid, ex, v5, &dir).await {
                    tracing::warn!("exec in {cid}: {e:#}");
                }
            }
            Err(e) => tracing::warn!("exec upgrade: {e}"),
        }
    });
    switching(accept, proto)
}

/// `kubectl attach`: what the container's main process writes from now on (stdout and
/// stderr, which share one log file), until it exits or the client leaves. Containers
/// run without a stdin, so the client's input is ignored.
pub fn attach(
    rt: &Containerd,
    req: Request<hyper::body::Incoming>,
    uid: String,
    container: String,
    log: PathBuf,
) -> Response<Body> {
    let (accept, proto) = match handshake(&req, "attach") {
        Ok(h) => h,
        Err((code, msg)) => return text(code, msg),
    };
    let rt = rt.clone();
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let io = hyper_util::rt::TokioIo::new(up);
                if let Err(e) = attach_session(io, &rt, &uid, &container, &log).await {
                    tracing::debug!("attach to {container}: {e}");
                }
            }
            Err(e) => tracing::warn!("attach upgrade: {e}"),
        }
    });
    switching(accept, proto)
}

async fn attach_session<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    rt: &Containerd,
    uid: &str,
    container: &str,
    log: &Path,
) -> std::io::Result<()> {
    let (rd, mut wr) = tokio::io::split(io);
    let mut offset = tokio::fs::metadata(log).await.map(|m| m.len()).unwrap_or(0);
    let (reader, mut from_client) = client_frames(rd);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let ended = rt.log_file(uid, container, false).as_deref() != Some(log) || !rt.is_running(uid, container);
                let mut f = tokio::fs::File::open(log).await?;
                tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(offset)).await?;
                let mut more = Vec::new();
                f.read_to_end(&mut more).await?;
                offset += more.len() as u64;
                for chunk in more.chunks(32 << 10) {
                    send(&mut wr, 1, chunk).await?;
                }
                if ended {
                    break;
                }
            }
            f = from_client.recv() => match f {
                Some(Frame::Ping(p)) => write_frame(&mut wr, 0xA, &p).await?,
                Some(Frame::Close) | None => {
                    reader.abort();
                    return Ok(());
                }
                Some(Frame::Binary(_)) => {}
            },
        }
    }
    let mut msg = vec![3u8];
    msg.extend_from_slice(&serde_json::to_vec(&exit_status(0))?);
    let _ = write_frame(&mut wr, 2, &msg).await;
    let _ = write_frame(&mut wr, 8, &1000u16.to_be_bytes()).await;
    reader.abort();
    Ok(())
}

/// One WebSocket message from the client.
enum Frame {
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut message = Vec::new();
    loop {
        let mut h = [0u8; 2];
        r.read_exact(&mut h).await?;
        let (fin, opcode, masked) = (h[0] & 0x80 != 0, h[0] & 0x0f, h[1] & 0x80 != 0);
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                r.read_exact(&mut b).await?;
                u16::from_be_bytes(b) as u64
            }
            127 => {
                let mut b = [0u8; 8];
                r.read_exact(&mut b).await?;
                u64::from_be_bytes(b)
            }
            n => n as u64,
        };
        if len > 16 << 20 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "WebSocket frame over 16 MiB"));
        }
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match opcode {
            0x8 => return Ok(Frame::Close),
            0x9 => return Ok(Frame::Ping(payload)),
            0xA => continue,
            _ => {
                message.extend_from_slice(&payload);
                if fin {
                    return Ok(Frame::Binary(message));
                }
            }
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut head = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= 0xffff => {
            head.push(126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opened read-write, so opening never blocks and the shim may open its end any time.
fn open_fifo(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(path)
}

fn exit_status(code: u32) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {}, "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command, exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

async fn session<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: IO,
    conn: &Conn,
    cid: &str,
    ex: ExecRequest,
    v5: bool,
    dir: &Path,
) -> anyhow::Result<()> {
    let (rd, mut wr) = tokio::io::split(io);
    let exec_id =
        format!("exec-{}", &super::image::sha256(format!("{cid}{:?}", std::time::SystemTime::now()).as_bytes())[7..23]);
    let fifo_dir: PathBuf = dir.join(&exec_id);
    std::fs::create_dir_all(&fifo_dir)?;
    let cleanup = |d: &Path| {
        let _ = std::fs::remove_dir_all(d);
    };
    let path = |n: &str| fifo_dir.join(n);
    let (want_err, want_in) = (ex.stderr && !ex.tty, ex.stdin);
    for (n, on) in [("stdin", want_in), ("stdout", ex.stdout), ("stderr", want_err)] {
        if on {
            mkfifo(&path(n))?;
        }
    }
    let mut stdin = if want_in { Some(pipe::Sender::from_file(open_fifo(&path("stdin"))?)?) } else { None };
    let mut stdout = if ex.stdout { Some(pipe::Receiver::from_file(open_fifo(&path("stdout"))?)?) } else { None };
    let mut stderr = if want_err { Some(pipe::Receiver::from_file(open_fifo(&path("stderr"))?)?) } else { None };

    let record = conn.containers().get(conn.req(GetContainerRequest { id: cid.into() })).await?.into_inner().container;
    let spec: serde_json::Value =
        serde_json::from_slice(&record.and_then(|c| c.spec).map(|s| s.value).unwrap_or_default())?;
    let mut process = spec["process"].clone();
    process["args"] = json!(ex.command);
    process["terminal"] = json!(ex.tty);
    let show = |n: &str, on: bool| if on { path(n).display().to_string() } else { String::new() };
    let req = ExecProcessRequest {
        container_id: cid.into(),
        exec_id: exec_id.clone(),
        stdin: show("stdin", want_in),
        stdout: show("stdout", ex.stdout),
        stderr: show("stderr", want_err),
        terminal: ex.tty,
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process)?,
        }),
    };
    if let Err(e) = conn.tasks().exec(conn.req(req)).await {
        let status = json!({"metadata": {}, "status": "Failure", "message": e.message(), "reason": "InternalError"});
        let mut msg = vec![3u8];
        msg.extend_from_slice(&serde_json::to_vec(&status)?);
        write_frame(&mut wr, 2, &msg).await?;
        write_frame(&mut wr, 8, &[]).await?;
        cleanup(&fifo_dir);
        return Ok(());
    }
    let mut waiter = {
        let (conn, cid, exec_id) = (conn.clone(), cid.to_string(), exec_id.clone());
        tokio::spawn(async move { conn.tasks().wait(conn.req(WaitRequest { container_id: cid, exec_id })).await })
    };
    conn.tasks().start(conn.req(StartRequest { container_id: cid.into(), exec_id: exec_id.clone() })).await?;

    let (reader, mut from_client) = client_frames(rd);
    let (mut out_buf, mut err_buf) = (vec![0u8; 32 << 10], vec![0u8; 32 << 10]);
    let mut client_gone = false;
    let code = loop {
        tokio::select! {
            r = &mut waiter => break r.ok().and_then(|r| r.ok()).map(|r| r.into_inner().exit_status).unwrap_or(255),
            n = read_some(&mut stdout, &mut out_buf) => {
                if let Some(n) = n { send(&mut wr, 1, &out_buf[..n]).await?; }
            }
            n = read_some(&mut stderr, &mut err_buf) => {
                if let Some(n) = n { send(&mut wr, 2, &err_buf[..n]).await?; }
            }
            f = from_client.recv(), if !client_gone => match f {
                Some(Frame::Binary(m)) if !m.is_empty() => match m[0] {
                    0 => if let Some(s) = stdin.as_mut() { let _ = s.write_all(&m[1..]).await; },
                    255 if v5 && m.get(1) == Some(&0) => {
                        // The client's stdin ended: the shim closes the process's stdin.
                        stdin = None;
                        let req = CloseIoRequest { container_id: cid.into(), exec_id: exec_id.clone(), stdin: true };
                        let _ = conn.tasks().close_io(conn.req(req)).await;
                    }
                    4 => {
                        let size: serde_json::Value = serde_json::from_slice(&m[1..]).unwrap_or_default();
                        let req = ResizePtyRequest {
                            container_id: cid.into(),
                            exec_id: exec_id.clone(),
                            width: size["Width"].as_u64().unwrap_or(80) as u32,
                            height: size["Height"].as_u64().unwrap_or(24) as u32,
                        };
                        let _ = conn.tasks().resize_pty(conn.req(req)).await;
                    }
                    _ => {}
                },
                Some(Frame::Binary(_)) => {}
                Some(Frame::Ping(p)) => write_frame(&mut wr, 0xA, &p).await?,
                Some(Frame::Close) | None => {
                    client_gone = true;
                    let kill = KillRequest { container_id: cid.into(), exec_id: exec_id.clone(), signal: 9, all: false };
                    let _ = conn.tasks().kill(conn.req(kill)).await;
                }
            },
        }
    };
    // The shim may still be copying the last output: drain until quiet.
    loop {
        let got = tokio::time::timeout(Duration::from_millis(100), async {
            tokio::select! {
                n = read_some(&mut stdout, &mut out_buf) => n.map(|n| (1u8, n)),
                n = read_some(&mut stderr, &mut err_buf) => n.map(|n| (2u8, n)),
            }
        })
        .await;
        match got {
            Ok(Some((1, n))) => send(&mut wr, 1, &out_buf[..n]).await?,
            Ok(Some((_, n))) => send(&mut wr, 2, &err_buf[..n]).await?,
            _ => break,
        }
    }
    let mut msg = vec![3u8];
    msg.extend_from_slice(&serde_json::to_vec(&exit_status(code))?);
    let _ = write_frame(&mut wr, 2, &msg).await;
    let _ = write_frame(&mut wr, 8, &1000u16.to_be_bytes()).await;
    reader.abort();
    let _ = conn.tasks().delete_process(conn.req(DeleteProcessRequest { container_id: cid.into(), exec_id })).await;
    cleanup(&fifo_dir);
    Ok(())
}

/// The client's messages, read by a task of their own (so reading never blocks writing).
fn client_frames<R: AsyncRead + Unpin + Send + 'static>(
    mut rd: R,
) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<Frame>) {
    let (tx, rx) = mpsc::channel::<Frame>(16);
    let reader = tokio::spawn(async move {
        while let Ok(f) = read_frame(&mut rd).await {
            let close = matches!(f, Frame::Close);
            if tx.send(f).await.is_err() || close {
                break;
            }
        }
    });
    (reader, rx)
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, channel: u8, data: &[u8]) -> std::io::Result<()> {
    let mut m = Vec::with_capacity(data.len() + 1);
    m.push(channel);
    m.extend_from_slice(data);
    write_frame(w, 2, &m).await
}

/// Some bytes from an output FIFO; never ready when there is none.
async fn read_some(p: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> Option<usize> {
    match p {
        Some(r) => match r.read(buf).await {
            Ok(n) if n > 0 => Some(n),
            _ => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_masks_are_removed() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_frame(&mut a, 2, &[1, 2, 3]).await.unwrap();
        match read_frame(&mut b).await.unwrap() {
            Frame::Binary(m) => assert_eq!(m, [1, 2, 3]),
            _ => panic!("not binary"),
        }
        // A masked client frame of 300 bytes (16-bit length).
        let payload: Vec<u8> = (0..300).map(|i| i as u8).collect();
        let mask = [9u8, 8, 7, 6];
        let mut f = vec![0x82, 0x80 | 126, 1, 44];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        a.write_all(&f).await.unwrap();
        match read_frame(&mut b).await.unwrap() {
            Frame::Binary(m) => assert_eq!(m, payload),
            _ => panic!("not binary"),
        }
        assert_eq!(exit_status(0)["status"], "Success");
        assert_eq!(exit_status(3)["details"]["causes"][0]["message"], "3");
    }
}
