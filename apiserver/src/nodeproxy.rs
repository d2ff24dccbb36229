//! Subresources the node agent serves: `pods/log` is looked up here (pod, container,
//! node address and agent port from the Node's daemonEndpoints) and then streamed from
//! the agent's `/containerLogs/...` endpoint, as kube-apiserver proxies to the kubelet.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::http::Body;
use crate::registry;
use crate::status::{ApiError, ApiResult};
use crate::storage::{self, Store};

async fn get(store: &Store, plural: &str, ns: Option<&str>, name: &str) -> ApiResult<Value> {
    let r = registry::find("", "v1", plural).expect("a core resource");
    let s = store.get(&storage::key(r, ns, name)).await?;
    s.map(|s| s.obj).ok_or_else(|| ApiError::not_found(plural, "", name))
}

/// The container a log request means: the named one, or the only one.
fn pick_container(pod: &Value, name: &str, asked: Option<&str>) -> ApiResult<String> {
    let names: Vec<String> = ["initContainers", "containers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if names.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!("container {c} is not valid for pod {name}"))),
        None => {
            let regular: Vec<&str> = pod["spec"]["containers"]
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
                .unwrap_or_default();
            match regular.as_slice() {
                [only] => Ok(only.to_string()),
                _ => Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names.join(" ")
                ))),
            }
        }
    }
}

/// The agent's address for the node a pod runs on.
async fn agent_address(store: &Store, pod: &Value, name: &str) -> ApiResult<String> {
    let node = pod["spec"]["nodeName"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?;
    let n = get(store, "nodes", None, node).await?;
    let ip = n["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::internal(format!("node {node} has no InternalIP")))?;
    let port = n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().unwrap_or(10250);
    if port == 0 {
        return Err(ApiError::bad_request(format!(
            "node {node} has no agent endpoint (a simulated node): logs, exec, attach and port-forward are not available"
        )));
    }
    Ok(if ip.contains(':') { format!("[{ip}]:{port}") } else { format!("{ip}:{port}") })
}

/// `GET pods/<name>/log`: streams the container's log from its node's agent.
pub async fn pod_log(
    store: &Store,
    ns: &str,
    name: &str,
    container: Option<&str>,
    params: &[(String, String)],
) -> ApiResult<Response<Body>> {
    let pod = get(store, "pods", Some(ns), name).await?;
    let container = pick_container(&pod, name, container)?;
    let addr = agent_address(store, &pod, name).await?;
    let mut query: Vec<String> = Vec::new();
    // Only parsed values are passed on: nothing from the client reaches the request line raw.
    for k in ["follow", "previous"] {
        if let Some((_, v)) = params.iter().find(|(key, _)| key == k) {
            query.push(format!("{k}={}", v == "true" || v == "1"));
        }
    }
    for k in ["tailLines", "limitBytes"] {
        if let Some((_, v)) = params.iter().find(|(key, _)| key == k) {
            let n: u64 = v.parse().map_err(|_| ApiError::bad_request(format!("invalid {k}: {v:?}")))?;
            query.push(format!("{k}={n}"));
        }
    }
    let path = format!("/containerLogs/{ns}/{name}/{container}?{}", query.join("&"));
    let unreachable = |e: std::io::Error| ApiError::internal(format!("the node agent at {addr} did not answer: {e}"));
    let mut conn = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&addr))
        .await
        .map_err(|_| ApiError::internal(format!("the node agent at {addr} did not answer in 5 s")))?
        .map_err(unreachable)?;
    // HTTP/1.0: the agent answers with a plain body ended by closing the connection.
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.map_err(unreachable)?;
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status).await.map_err(unreachable)?;
    let code: u16 = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(502);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.map_err(unreachable)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    if code != 200 {
        let mut body = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut body).await;
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        return Err(if code == 404 { ApiError::new(404, "NotFound", msg) } else { ApiError::bad_request(msg) });
    }
    let stream = tokio_util_stream(reader).map(|chunk| Ok::<_, std::convert::Infallible>(Frame::data(chunk)));
    Ok(Response::builder()
        .status(200)
        .header("Content-Type", "text/plain")
        .header("Cache-Control", "no-cache, private")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("a valid response"))
}

/// The rest of a connection as a stream of chunks.
fn tokio_util_stream<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: R,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    futures::stream::unfold(reader, |mut r| async move {
        let mut buf = vec![0u8; 16 << 10];
        match tokio::io::AsyncReadExt::read(&mut r, &mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Bytes::from(buf), r))
            }
        }
    })
}

/// `pods/<name>/exec`: the client's WebSocket upgrade is passed to the agent of the pod's
/// node, and once the agent accepts it, bytes are copied both ways until either side
/// closes (the agent speaks the channel protocol; see nodeagent's `ctr::exec`).
/// `pods/<name>/attach` goes the same way to the agent's `/attach/...`.
pub async fn pod_exec(
    store: &Store,
    ns: &str,
    name: &str,
    container: Option<&str>,
    attach: bool,
    req: hyper::Request<hyper::body::Incoming>,
) -> ApiResult<Response<Body>> {
    let what = if attach { "attach" } else { "exec" };
    if !upgrade_header(&req).eq_ignore_ascii_case("websocket") {
        return Err(ApiError::bad_request(format!(
            "{what} needs a WebSocket upgrade (v5.channel.k8s.io); SPDY is not supported"
        )));
    }
    let pod = get(store, "pods", Some(ns), name).await?;
    let container = pick_container(&pod, name, container)?;
    let addr = agent_address(store, &pod, name).await?;
    // The query as sent (percent-encoded); a URI holds no spaces or line breaks.
    let query = req.uri().query().unwrap_or_default().to_string();
    upgrade_to_agent(&addr, "GET", &format!("/{what}/{ns}/{name}/{container}?{query}"), req).await
}

/// `pods/<name>/portforward`: kubectl's SPDY/3.1 upgrade (`portforward.k8s.io`) is passed
/// to the pod's agent. kubectl first tries SPDY tunnelled in a WebSocket; that is refused
/// with 400, which makes it fall back to plain SPDY.
pub async fn pod_port_forward(
    store: &Store,
    ns: &str,
    name: &str,
    req: hyper::Request<hyper::body::Incoming>,
) -> ApiResult<Response<Body>> {
    if !upgrade_header(&req).eq_ignore_ascii_case("SPDY/3.1") {
        return Err(ApiError::bad_request(
            "port-forward needs an upgrade to SPDY/3.1 (portforward.k8s.io); WebSocket tunnelling is not supported"
                .to_string(),
        ));
    }
    let pod = get(store, "pods", Some(ns), name).await?;
    if pod["status"]["phase"] != "Running" {
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        return Err(ApiError::bad_request(format!("pod {name} is not running (phase {phase})")));
    }
    let addr = agent_address(store, &pod, name).await?;
    upgrade_to_agent(&addr, "POST", &format!("/portForward/{ns}/{name}"), req).await
}

fn upgrade_header(req: &hyper::Request<hyper::body::Incoming>) -> String {
    req.headers().get("upgrade").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Headers of an upgrade that go to the agent, and back from it.
const UPGRADE_REQUEST_HEADERS: [&str; 5] =
    ["upgrade", "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol", "x-stream-protocol-version"];
const UPGRADE_RESPONSE_HEADERS: [&str; 5] =
    ["upgrade", "connection", "sec-websocket-accept", "sec-websocket-protocol", "x-stream-protocol-version"];

/// Sends the client's upgrade request to the agent at `addr`; once the agent switches
/// protocols, so does the client, and bytes are copied both ways until either side closes.
async fn upgrade_to_agent(
    addr: &str,
    method: &str,
    path: &str,
    req: hyper::Request<hyper::body::Incoming>,
) -> ApiResult<Response<Body>> {
    let unreachable = |e: std::io::Error| ApiError::internal(format!("the node agent at {addr} did not answer: {e}"));
    let mut conn = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ApiError::internal(format!("the node agent at {addr} did not answer in 5 s")))?
        .map_err(unreachable)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n");
    for h in UPGRADE_REQUEST_HEADERS {
        // hyper has checked header values: no line breaks can reach the agent.
        for v in req.headers().get_all(h).iter().filter_map(|v| v.to_str().ok()) {
            head.push_str(&format!("{h}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await.map_err(unreachable)?;
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status).await.map_err(unreachable)?;
    let code: u16 = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(502);
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.map_err(unreachable)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((k, v)) = line.trim_end().split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    if code != 101 {
        let mut body = vec![0u8; length.min(64 << 10)];
        let _ = tokio::io::AsyncReadExt::read_exact(&mut reader, &mut body).await;
        let msg = String::from_utf8_lossy(&body).trim().to_string();
        return Err(if code == 404 { ApiError::new(404, "NotFound", msg) } else { ApiError::bad_request(msg) });
    }
    let mut resp = Response::builder().status(101);
    for (k, v) in &headers {
        if UPGRADE_RESPONSE_HEADERS.contains(&k.to_lowercase().as_str()) {
            resp = resp.header(k.as_str(), v.as_str());
        }
    }
    let leftover = reader.buffer().to_vec();
    let mut agent = reader.into_inner();
    let path = path.to_string();
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let mut client = hyper_util::rt::TokioIo::new(up);
                if !leftover.is_empty() && client.write_all(&leftover).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut agent).await;
            }
            Err(e) => tracing::warn!("upgrading {path}: {e}"),
        }
    });
    Ok(resp.body(http_body_util::Empty::new().map_err(|never| match never {}).boxed()).expect("a valid response"))
}
