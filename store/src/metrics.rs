//! A member's Prometheus metrics, served with its health on `--listen-metrics-urls`
//! (`GET /metrics`, `GET /health`), under etcd's metric names where etcd has one, so
//! dashboards and alerts written for etcd work unchanged.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

use crate::member::Member;

/// Counts the leader changes this member sees, as etcd does (the first election counts).
pub async fn count_leader_changes(m: Arc<Member>) {
    let mut rx = m.raft.metrics();
    let mut last = None;
    loop {
        let now = rx.borrow_and_update().current_leader;
        if now.is_some() && now != last {
            m.shared.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
        last = now;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The metrics in Prometheus' text format (version 0.0.4).
pub fn render(m: &Member) -> String {
    let r = m.raft.metrics().borrow().clone();
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    let flag = |b: bool| if b { "1".to_string() } else { "0".to_string() };
    put(
        "etcd_server_has_leader",
        "gauge",
        "Whether or not a leader exists. 1 is existence, 0 is not.",
        flag(r.current_leader.is_some()),
    );
    put(
        "etcd_server_is_leader",
        "gauge",
        "Whether or not this member is a leader. 1 if is, 0 otherwise.",
        flag(r.current_leader == Some(m.id)),
    );
    put(
        "etcd_server_is_learner",
        "gauge",
        "Whether or not this member is a learner. 1 if is, 0 otherwise.",
        flag(r.state == openraft::ServerState::Learner),
    );
    put(
        "etcd_server_leader_changes_seen_total",
        "counter",
        "The number of leader changes seen.",
        m.shared.leader_changes.load(Ordering::Relaxed).to_string(),
    );
    put(
        "etcd_server_proposals_applied_total",
        "gauge",
        "The total number of consensus proposals applied.",
        r.last_applied.map_or(0, |l| l.index).to_string(),
    );
    put(
        "skiff_server_raft_log_index",
        "gauge",
        "The index of the last entry in this member's raft log.",
        r.last_log_index.unwrap_or(0).to_string(),
    );
    put("skiff_server_raft_term", "gauge", "The raft term this member is in.", r.current_term.to_string());
    put(
        "etcd_mvcc_db_total_size_in_bytes",
        "gauge",
        "Total size of the underlying database physically allocated in bytes.",
        m.db_size().to_string(),
    );
    put("etcd_debugging_mvcc_current_revision", "gauge", "The current revision of store.", m.current_rev().to_string());
    put(
        "etcd_debugging_mvcc_watcher_total",
        "gauge",
        "Total number of watchers.",
        m.shared.watchers.load(Ordering::Relaxed).to_string(),
    );
    out
}

fn reply(code: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("Content-Type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// Serves `/metrics` and `/health` on `addr` until the process ends.
pub async fn serve(m: Arc<Member>, addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let m = m.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let m = m.clone();
                    async move {
                        Ok::<_, Infallible>(match req.uri().path() {
                            "/metrics" => reply(200, "text/plain; version=0.0.4; charset=utf-8", render(&m)),
                            "/health" => {
                                let ok = m.raft.metrics().borrow().current_leader.is_some();
                                let body = format!(
                                    "{{\"health\":\"{ok}\",\"reason\":\"{}\"}}",
                                    if ok { "" } else { "RAFT NO LEADER" }
                                );
                                reply(if ok { 200 } else { 503 }, "application/json", body)
                            }
                            p => reply(404, "text/plain", format!("404 page not found: {p}\n")),
                        })
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
            });
        }
    });
    Ok(())
}
