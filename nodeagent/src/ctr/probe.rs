//! Container probes as the kubelet runs them: a startup probe first (liveness and
//! readiness wait for it), then readiness (drives the container's `ready`) and liveness
//! (after `failureThreshold` consecutive failures the container is killed and restarted
//! as its pod's restartPolicy says). Handlers: `exec` (a process in the container through
//! containerd, success on exit 0), `httpGet` (success for 200–399, from the node to the
//! pod address) and `tcpSocket` (a connection opens). gRPC probes are not supported and
//! count as succeeding, so they never kill a container.

use std::time::Duration;

use containerd_client::services::v1::{
    DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest, StartRequest, WaitRequest,
};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::Conn;

/// What the probes report to the container's supervisor.
#[derive(Debug, PartialEq)]
pub enum Event {
    Ready(bool),
    /// Liveness (or startup) failed: restart the container.
    Kill(String),
}

fn seconds(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(0) as u64)
}

fn port_of(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .as_ref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Runs one probe once: Ok(()) on success, Err(why) on failure.
async fn run_once(conn: &Conn, cid: &str, c: &Container, p: &Probe, ip: &str) -> Result<(), String> {
    let timeout = seconds(p.timeout_seconds, 1).max(Duration::from_secs(1));
    if let Some(h) = &p.http_get {
        let port = port_of(c, &h.port).ok_or("unknown port")?;
        let host = h.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| ip.to_string());
        if h.scheme.as_deref() == Some("HTTPS") {
            // No TLS client here: an HTTPS probe checks that the port accepts connections.
            let connect = tokio::net::TcpStream::connect((host.as_str(), port));
            return match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(_)) => Ok(()),
                _ => Err(format!("dial tcp {host}:{port} failed")),
            };
        }
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        let get = async {
            let mut s = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
            let mut req = format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\n");
            for hd in h.http_headers.clone().unwrap_or_default() {
                req += &format!("{}: {}\r\n", hd.name, hd.value);
            }
            req += "\r\n";
            s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut head = vec![0u8; 64];
            let n = s.read(&mut head).await.map_err(|e| e.to_string())?;
            let line = String::from_utf8_lossy(&head[..n]).to_string();
            let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("not HTTP")?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        };
        return tokio::time::timeout(timeout, get).await.unwrap_or_else(|_| Err("timeout".into()));
    }
    if let Some(t) = &p.tcp_socket {
        let port = port_of(c, &t.port).ok_or("unknown port")?;
        let host = t.host.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| ip.to_string());
        let connect = tokio::net::TcpStream::connect((host.as_str(), port));
        return match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(e) = &p.exec {
        let args = e.command.clone().unwrap_or_default();
        return match exec(conn, cid, &args, timeout).await {
            Ok(0) => Ok(()),
            Ok(code) => Err(format!("command {args:?} exited with {code}")),
            Err(e) => Err(e),
        };
    }
    Ok(())
}

/// Runs a lifecycle hook (exec or httpGet) to completion.
pub async fn hook(
    conn: &Conn,
    cid: &str,
    c: &Container,
    h: &k8s_openapi::api::core::v1::LifecycleHandler,
    ip: &str,
) -> Result<(), String> {
    let probe = Probe {
        exec: h.exec.clone(),
        http_get: h.http_get.clone(),
        tcp_socket: h.tcp_socket.clone(),
        timeout_seconds: Some(i32::MAX / 2),
        ..Default::default()
    };
    if let Some(s) = &h.sleep {
        tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        return Ok(());
    }
    run_once(conn, cid, c, &probe, ip).await
}

/// Runs `args` in the container (its env, cwd and user); the exit code.
pub async fn exec(conn: &Conn, cid: &str, args: &[String], timeout: Duration) -> Result<u32, String> {
    let record = conn
        .containers()
        .get(conn.req(GetContainerRequest { id: cid.into() }))
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner()
        .container
        .ok_or("no container")?;
    let spec: serde_json::Value =
        serde_json::from_slice(&record.spec.map(|s| s.value).unwrap_or_default()).map_err(|e| e.to_string())?;
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(false);
    let exec_id = format!("probe-{}", std::process::id() as u64 * 1_000_000 + rand_suffix());
    let req = ExecProcessRequest {
        container_id: cid.into(),
        exec_id: exec_id.clone(),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process).map_err(|e| e.to_string())?,
        }),
        ..Default::default()
    };
    conn.tasks().exec(conn.req(req)).await.map_err(|e| e.message().to_string())?;
    let result = async {
        let wait = {
            let (conn, cid, exec_id) = (conn.clone(), cid.to_string(), exec_id.clone());
            tokio::spawn(async move { conn.tasks().wait(conn.req(WaitRequest { container_id: cid, exec_id })).await })
        };
        conn.tasks()
            .start(conn.req(StartRequest { container_id: cid.into(), exec_id: exec_id.clone() }))
            .await
            .map_err(|e| e.message().to_string())?;
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(Ok(r))) => Ok(r.into_inner().exit_status),
            Ok(_) => Err("waiting for the command failed".to_string()),
            Err(_) => {
                let kill = KillRequest { container_id: cid.into(), exec_id: exec_id.clone(), signal: 9, all: false };
                let _ = conn.tasks().kill(conn.req(kill)).await;
                Err(format!("command {args:?} timed out"))
            }
        }
    }
    .await;
    let del = DeleteProcessRequest { container_id: cid.into(), exec_id };
    let _ = conn.tasks().delete_process(conn.req(del)).await;
    result
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) % 1_000_000
}

/// Runs the container's probes for one run of it, reporting on `events`, until `stop`
/// flips or the channel closes.
pub async fn run(
    conn: Conn,
    cid: String,
    c: Container,
    ip: String,
    events: mpsc::Sender<Event>,
    stop: watch::Receiver<bool>,
) {
    let period = |p: &Probe| seconds(p.period_seconds, 10).max(Duration::from_millis(100));
    let threshold = |v: Option<i32>| v.unwrap_or(3).max(1) as u32;
    let stopped = || *stop.borrow();
    if let Some(p) = &c.startup_probe {
        tokio::time::sleep(seconds(p.initial_delay_seconds, 0)).await;
        let mut failures = 0;
        loop {
            if stopped() {
                return;
            }
            match run_once(&conn, &cid, &c, p, &ip).await {
                Ok(()) => break,
                Err(why) => {
                    failures += 1;
                    if failures >= threshold(p.failure_threshold) {
                        let _ = events.send(Event::Kill(format!("Startup probe failed: {why}"))).await;
                        return;
                    }
                }
            }
            tokio::time::sleep(period(p)).await;
        }
    }
    let readiness = c.readiness_probe.clone().map(|p| {
        let (conn, cid, c, ip, events, stop) =
            (conn.clone(), cid.clone(), c.clone(), ip.clone(), events.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::time::sleep(seconds(p.initial_delay_seconds, 0)).await;
            let (mut ok, mut bad, mut ready) = (0u32, 0u32, false);
            while !*stop.borrow() {
                match run_once(&conn, &cid, &c, &p, &ip).await {
                    Ok(()) => {
                        ok += 1;
                        bad = 0;
                        if !ready && ok >= p.success_threshold.unwrap_or(1).max(1) as u32 {
                            ready = true;
                            let _ = events.send(Event::Ready(true)).await;
                        }
                    }
                    Err(_) => {
                        bad += 1;
                        ok = 0;
                        if ready && bad >= p.failure_threshold.unwrap_or(3).max(1) as u32 {
                            ready = false;
                            let _ = events.send(Event::Ready(false)).await;
                        }
                    }
                }
                tokio::time::sleep(seconds(p.period_seconds, 10).max(Duration::from_millis(100))).await;
            }
        })
    });
    if readiness.is_none() {
        let _ = events.send(Event::Ready(true)).await;
    }
    if let Some(p) = &c.liveness_probe {
        tokio::time::sleep(seconds(p.initial_delay_seconds, 0)).await;
        let mut failures = 0;
        while !stopped() {
            match run_once(&conn, &cid, &c, p, &ip).await {
                Ok(()) => failures = 0,
                Err(why) => {
                    failures += 1;
                    if failures >= threshold(p.failure_threshold) {
                        let _ = events.send(Event::Kill(format!("Liveness probe failed: {why}"))).await;
                        break;
                    }
                }
            }
            tokio::time::sleep(period(p)).await;
        }
    }
    if let Some(r) = readiness {
        let _ = r.await;
    }
}
