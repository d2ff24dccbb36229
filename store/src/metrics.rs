//! A member's Prometheus metrics, served with its health on `--listen-metrics-urls`
//! (`GET /metrics`, `GET /health`), under etcd's metric names where etcd has one, so
//! dashboards and alerts written for etcd work unchanged.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};

use crate::member::Member;

/// A Prometheus histogram that many threads observe into without locking.
pub struct Histogram {
    /// Upper bounds in seconds, ascending.
    bounds: Vec<f64>,
    /// Observations at or below each bound (not cumulative; summed when rendered).
    counts: Vec<AtomicU64>,
    /// Observations above the last bound.
    over: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Buckets `start * 2^k` for k in 0..n, as etcd's exponential buckets.
    pub fn exponential(start: f64, n: usize) -> Histogram {
        let bounds: Vec<f64> = (0..n).map(|k| start * f64::from(1u32 << k)).collect();
        Histogram {
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            bounds,
            over: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        match self.bounds.iter().position(|b| secs <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_nanos.fetch_add(d.as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
    }

    /// The sample lines of this histogram under `name`, with `labels` (`key="value",...`).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut total = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            total += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {total}");
        }
        total += self.over.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}\n{name}_count{braces} {total}");
    }
}

/// How long a member's disk writes, applies and peer round trips take.
pub struct Latencies {
    /// The group-committed raft log fsync (`flush_wal(sync)`).
    pub wal_fsync: Histogram,
    /// Writing one applied entry's changes to the database.
    pub backend_commit: Histogram,
    /// Applying one raft entry: executing its requests and writing them.
    pub apply: Histogram,
    /// Heartbeats (AppendEntries without entries) to each peer, by member id.
    pub peer_rtt: Mutex<BTreeMap<u64, Histogram>>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            wal_fsync: Histogram::exponential(0.001, 14),
            backend_commit: Histogram::exponential(0.001, 14),
            apply: Histogram::exponential(0.0001, 16),
            peer_rtt: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Latencies {
    pub fn peer_round_trip(&self, to: u64, d: Duration) {
        let mut m = self.peer_rtt.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(to).or_insert_with(|| Histogram::exponential(0.0001, 16)).observe(d);
    }

    fn render(&self, out: &mut String) {
        let mut one = |name: &str, help: &str, h: &Histogram| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(out, name, "");
        };
        one(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            &self.wal_fsync,
        );
        one(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            &self.backend_commit,
        );
        one(
            "skiff_server_apply_duration_seconds",
            "The latency distributions of applying one raft entry.",
            &self.apply,
        );
        let name = "etcd_network_peer_round_trip_time_seconds";
        let _ = writeln!(out, "# HELP {name} Round-Trip-Time histogram between peers\n# TYPE {name} histogram");
        for (to, h) in self.peer_rtt.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            h.render(out, name, &format!("To=\"{to:x}\""));
        }
    }
}

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
    m.shared.latencies.render(&mut out);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::exponential(0.001, 3); // 1, 2, 4 ms
        for ms in [0.5, 1.5, 1.9, 3.0, 100.0] {
            h.observe(Duration::from_secs_f64(ms / 1000.0));
        }
        let mut out = String::new();
        h.render(&mut out, "x", "To=\"a\"");
        assert!(out.contains("x_bucket{To=\"a\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{To=\"a\",le=\"0.002\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{To=\"a\",le=\"0.004\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{To=\"a\",le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count{To=\"a\"} 5\n"), "{out}");
        let sum: f64 = out.lines().find_map(|l| l.strip_prefix("x_sum{To=\"a\"} ")).unwrap().parse().unwrap();
        assert!((sum - 0.1069).abs() < 1e-6, "{sum}");
    }
}
