//! The agent's own HTTP endpoint (the kubelet's port, 10250 by default), which the API
//! server proxies to: `GET /containerLogs/<namespace>/<pod>/<container>` with the query
//! parameters of `kubectl logs` (`follow`, `tailLines`, `limitBytes`, `previous`),
//! `/exec/...` and `/attach/...` (WebSocket channel protocol, `exec`), and
//! `/portForward/<namespace>/<pod>` (SPDY, `portforward`). Plain HTTP without
//! authentication: whoever reaches it can read logs, exec into containers and reach
//! pods' ports, so it must listen where only the API server reaches it (`skiff up` keeps
//! it on 127.0.0.1) until the agent authenticates its callers (issue 9).

use std::convert::Infallible;
use std::io::SeekFrom;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::Containerd;

type Body = BoxBody<Bytes, Infallible>;

pub(super) fn text(code: u16, msg: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("Content-Type", "text/plain")
        .body(Full::new(Bytes::from(msg.into())).boxed())
        .expect("a valid response")
}

/// Query parameters, percent-decoded.
fn query(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves until the process ends.
pub async fn serve(rt: Containerd, addr: SocketAddr) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listening on {addr}: {e}"))?;
    tracing::info!("serving container logs on {addr}");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                continue;
            }
        };
        let rt = rt.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let rt = rt.clone();
                async move { Ok::<_, Infallible>(handle(&rt, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).with_upgrades().await;
        });
    }
}

async fn handle(rt: &Containerd, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let q = query(req.uri().query());
    let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    match parts.as_slice() {
        ["containerLogs", ns, pod, container] => {
            let flag = |k: &str| matches!(get(k), Some("true" | "1"));
            let number = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
            logs(rt, ns, pod, container, flag("previous"), flag("follow"), number("tailLines"), number("limitBytes"))
                .await
        }
        ["exec", ns, pod, container] => {
            let Some(uid) = rt.pod_uid(&format!("{ns}/{pod}")) else {
                return text(404, format!("pod \"{pod}\" is not running on this node"));
            };
            let Some(cid) = rt.running_container(&uid, container) else {
                return text(400, format!("container {container} is not valid for pod {pod} or not running"));
            };
            let ex = super::exec::ExecRequest::parse(&q);
            super::exec::upgrade(rt, req, &uid, cid, ex)
        }
        ["attach", ns, pod, container] => {
            let Some(uid) = rt.pod_uid(&format!("{ns}/{pod}")) else {
                return text(404, format!("pod \"{pod}\" is not running on this node"));
            };
            let log = rt.log_file(&uid, container, false).filter(|_| rt.is_running(&uid, container));
            let Some(log) = log else {
                return text(400, format!("container {container} is not valid for pod {pod} or not running"));
            };
            super::exec::attach(rt, req, uid, container.to_string(), log)
        }
        ["portForward", ns, pod] => {
            let Some(uid) = rt.pod_uid(&format!("{ns}/{pod}")) else {
                return text(404, format!("pod \"{pod}\" is not running on this node"));
            };
            port_forward(req, format!("{ns}/{pod}"), super::cni::netns_path(&uid))
        }
        ["healthz"] => text(200, "ok"),
        ["metrics"] => Response::builder()
            .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(rt.prometheus())).boxed())
            .expect("a valid response"),
        _ => text(404, format!("no such endpoint: {path}")),
    }
}

/// Accepts a SPDY/3.1 upgrade for `portforward.k8s.io` and serves the session on it.
fn port_forward(req: Request<hyper::body::Incoming>, pod: String, netns: String) -> Response<Body> {
    let header = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if !header("upgrade").eq_ignore_ascii_case("SPDY/3.1") {
        return text(400, "port forwarding needs an upgrade to SPDY/3.1");
    }
    let offered = header("x-stream-protocol-version");
    if !offered.split(',').any(|p| p.trim() == super::portforward::PROTOCOL) {
        return text(403, format!("protocol {offered:?} is not supported; only {}", super::portforward::PROTOCOL));
    }
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let io = hyper_util::rt::TokioIo::new(up);
                let dial = move |port| super::portforward::dial_in_netns(netns.clone(), port);
                if let Err(e) = super::portforward::serve(io, pod.clone(), dial).await {
                    tracing::debug!("port-forward to {pod} ended: {e}");
                }
            }
            Err(e) => tracing::warn!("port-forward upgrade: {e}"),
        }
    });
    Response::builder()
        .status(101)
        .header("Connection", "Upgrade")
        .header("Upgrade", "SPDY/3.1")
        .header("X-Stream-Protocol-Version", super::portforward::PROTOCOL)
        .body(Full::new(Bytes::new()).boxed())
        .expect("a valid response")
}

/// Byte offset where the last `n` lines of `data` start.
fn tail_start(data: &[u8], n: u64) -> usize {
    if n == 0 {
        return data.len();
    }
    let mut seen = 0;
    // A final newline ends the last line; it does not start another.
    let end = if data.ends_with(b"\n") { data.len() - 1 } else { data.len() };
    for i in (0..end).rev() {
        if data[i] == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    0
}

#[allow(clippy::too_many_arguments)]
async fn logs(
    rt: &Containerd,
    ns: &str,
    pod: &str,
    container: &str,
    previous: bool,
    follow: bool,
    tail: Option<u64>,
    limit: Option<u64>,
) -> Response<Body> {
    let Some(uid) = rt.pod_uid(&format!("{ns}/{pod}")) else {
        return text(404, format!("pod \"{pod}\" is not running on this node"));
    };
    let Some(file) = rt.log_file(&uid, container, previous) else {
        let msg = if previous {
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found")
        } else {
            match rt.waiting_reason(&uid, container) {
                Some(reason) => format!("container \"{container}\" in pod \"{pod}\" is waiting to start: {reason}"),
                None => format!("container \"{container}\" in pod \"{pod}\" not found"),
            }
        };
        return text(400, msg);
    };
    let data = match tokio::fs::read(&file).await {
        Ok(d) => d,
        Err(e) => return text(500, format!("reading {}: {e}", file.display())),
    };
    let start = tail.map_or(0, |n| tail_start(&data, n));
    let mut first = data[start..].to_vec();
    if let Some(l) = limit {
        first.truncate(l as usize);
    }
    if !follow {
        return Response::builder()
            .header("Content-Type", "text/plain")
            .body(Full::new(Bytes::from(first)).boxed())
            .expect("a valid response");
    }
    // Follow: send what is there, then what is appended, until this run of the container ends.
    let offset = data.len() as u64;
    let rt = rt.clone();
    let (uid, container) = (uid.clone(), container.to_string());
    let stream = futures::stream::unfold(
        (Some(first), offset, file, false),
        move |(pending, offset, file, done): (Option<Vec<u8>>, u64, PathBuf, bool)| {
            let rt = rt.clone();
            let (uid, container) = (uid.clone(), container.clone());
            async move {
                if let Some(p) = pending {
                    return Some((Ok(Frame::data(Bytes::from(p))), (None, offset, file, false)));
                }
                if done {
                    return None;
                }
                loop {
                    let current = rt.log_file(&uid, &container, false);
                    let ended = current.as_ref() != Some(&file) || !rt.is_running(&uid, &container);
                    let mut f = tokio::fs::File::open(&file).await.ok()?;
                    f.seek(SeekFrom::Start(offset)).await.ok()?;
                    let mut more = Vec::new();
                    f.read_to_end(&mut more).await.ok()?;
                    if !more.is_empty() {
                        let next = offset + more.len() as u64;
                        return Some((Ok(Frame::data(Bytes::from(more))), (None, next, file, ended)));
                    }
                    if ended {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        },
    );
    Response::builder()
        .header("Content-Type", "text/plain")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::tail_start;

    #[test]
    fn tail_counts_lines_from_the_end() {
        let d = b"a\nb\nc\n";
        assert_eq!(&d[tail_start(d, 2)..], b"b\nc\n");
        assert_eq!(&d[tail_start(d, 10)..], b"a\nb\nc\n");
        assert_eq!(&d[tail_start(d, 0)..], b"");
        let d = b"a\nb\nno newline";
        assert_eq!(&d[tail_start(d, 1)..], b"no newline");
        assert_eq!(super::percent_decode("echo%20hi+there%2"), "echo hi there%2");
    }
}
