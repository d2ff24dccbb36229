//! `skiff dashboard`: serves the API server's web dashboard on a local plain-HTTP port,
//! passing every request on to the API server with a kubeconfig's credentials, as
//! `kubectl proxy` does. The browser then needs no client certificate and no trust in the
//! cluster's CA, and the dashboard acts with exactly the rights of that kubeconfig's user.
//!
//! Anyone who can reach the local port acts as that user, so it listens on loopback only,
//! and it refuses what a web page elsewhere could make a browser send it: requests whose
//! Host is not a loopback name (DNS rebinding), and changes whose Origin (or
//! Sec-Fetch-Site) says another site sent them. Credentials from the browser (cookies,
//! Authorization, Impersonate-*) are not passed on: the requests are the kubeconfig user's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kube::client::Body;

#[derive(Args)]
pub struct DashboardArgs {
    /// Kubeconfig whose user the dashboard acts as (default: the first file of
    /// $KUBECONFIG, else ~/.kube/config; `skiff up` prints the one it wrote).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Local address to serve on; must be a loopback address, since whoever reaches it acts
    /// as the kubeconfig's user. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8001")]
    address: SocketAddr,
    /// Also open the dashboard in the desktop's browser (runs `xdg-open`).
    #[arg(long)]
    open: bool,
}

/// Largest request body passed on (the API server's own limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;

pub(crate) fn kubeconfig_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty() && p.exists()))
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME").context("no --kubeconfig, no $KUBECONFIG and no $HOME")?;
    let p = PathBuf::from(home).join(".kube/config");
    anyhow::ensure!(p.exists(), "no kubeconfig: give --kubeconfig, set $KUBECONFIG or create {}", p.display());
    Ok(p)
}

pub async fn run(a: DashboardArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.address.ip().is_loopback(),
        "--address must be a loopback address, not {}: whoever reaches it acts as the kubeconfig's user",
        a.address.ip()
    );
    let path = kubeconfig_path(a.kubeconfig)?;
    let client = skiff_controllers::client::from_kubeconfig(&path).await?;
    client.apiserver_version().await.with_context(|| format!("cannot reach the API server of {}", path.display()))?;
    let listener =
        tokio::net::TcpListener::bind(a.address).await.with_context(|| format!("cannot listen on {}", a.address))?;
    let local = listener.local_addr()?;
    let url = format!("http://{local}/dashboard/");
    println!("{url}");
    eprintln!("Serving the dashboard at {url} as the user of {}; Ctrl-C stops it.", path.display());
    if a.open {
        if let Err(e) = std::process::Command::new("xdg-open").arg(&url).spawn() {
            eprintln!("cannot open a browser (xdg-open: {e}); open {url} yourself");
        }
    }
    let client = Arc::new(client);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let client = client.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| forward(client.clone(), local, req));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn plain(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("{}\n", msg.into()).into_bytes()));
    *r.status_mut() = code;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Whether a Host header names this proxy by a loopback name.
fn loopback_host(host: &str, port: u16) -> bool {
    let Some((name, p)) = host.rsplit_once(':') else { return false };
    p.parse() == Ok(port) && matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

/// Credentials a browser may attach on its own; the kubeconfig's are used instead.
const BROWSER_CREDENTIALS: [&str; 2] = ["cookie", "authorization"];

/// Hop-by-hop headers, and the ones the API client sets itself.
const DROPPED: [&str; 9] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

async fn forward(
    client: Arc<kube::Client>,
    local: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let host = req.headers().get("host").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !loopback_host(host, local.port()) {
        return Ok(plain(StatusCode::FORBIDDEN, format!("host {host:?} is not this dashboard's loopback address")));
    }
    let safe = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS);
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if !safe {
        if let Some(origin) = header("origin").filter(|o| *o != format!("http://{host}")) {
            return Ok(plain(StatusCode::FORBIDDEN, format!("changes from origin {origin:?} are refused")));
        }
        if let Some(site) = header("sec-fetch-site").filter(|s| !matches!(*s, "same-origin" | "none")) {
            return Ok(plain(StatusCode::FORBIDDEN, format!("changes from a {site} page are refused")));
        }
    }
    if req.headers().contains_key("upgrade") {
        return Ok(plain(StatusCode::BAD_REQUEST, "upgrades (exec, attach, port-forward) are not passed on"));
    }
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::PAYLOAD_TOO_LARGE, format!("cannot read the request body: {e}"))),
    };
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut out = Request::builder().method(parts.method.clone()).uri(path);
    for (k, v) in &parts.headers {
        let k_str = k.as_str();
        if !DROPPED.contains(&k_str) && !BROWSER_CREDENTIALS.contains(&k_str) && !k_str.starts_with("impersonate-") {
            out = out.header(k, v);
        }
    }
    let out = match out.body(Body::from(body)) {
        Ok(r) => r,
        Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, format!("bad request: {e}"))),
    };
    Ok(match client.send(out).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for h in DROPPED.iter().chain(&["set-cookie"]) {
                parts.headers.remove(*h);
            }
            Response::from_parts(parts, body)
        }
        Err(e) => plain(StatusCode::BAD_GATEWAY, format!("the API server did not answer: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_hosts_on_our_port() {
        assert!(loopback_host("127.0.0.1:8001", 8001));
        assert!(loopback_host("localhost:8001", 8001));
        assert!(loopback_host("[::1]:8001", 8001));
        assert!(!loopback_host("127.0.0.1:8002", 8001));
        assert!(!loopback_host("evil.example:8001", 8001));
        assert!(!loopback_host("127.0.0.1", 8001));
        assert!(!loopback_host("127.0.0.1.evil.example:8001", 8001));
    }
}
