//! The controller-manager's and scheduler's Prometheus metrics (`--metrics-bind-address`),
//! under controller-runtime's names: `controller_runtime_reconcile_total{controller,result}`
//! and the `controller_runtime_reconcile_time_seconds{controller}` histogram; and
//! kube-scheduler's `scheduler_schedule_attempts_total{result}` and
//! `scheduler_pod_scheduling_sli_duration_seconds` (first seen pending → bound) and
//! `scheduler_pending_pods`; and client-go's work-queue series for each queue-driven
//! controller (`workqueue_depth`, `workqueue_adds_total`,
//! `workqueue_queue_duration_seconds`, fed by [`crate::queue`]).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::runtime::controller::Action;

use crate::Error;

const BUCKETS: [f64; 13] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A Prometheus histogram: cumulative counts per upper bound, sum and count (shared
/// with the node agent's metrics).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    pub fn observe(&mut self, v: f64) {
        for (b, n) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *n += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// The `<name>_bucket`, `_sum` and `_count` lines; `labels` is `k="v",...` or empty.
    pub fn write(&self, out: &mut String, name: &str, labels: &str) {
        let with = |extra: &str| match (labels.is_empty(), extra.is_empty()) {
            (true, true) => String::new(),
            (true, false) => format!("{{{extra}}}"),
            (false, true) => format!("{{{labels}}}"),
            (false, false) => format!("{{{labels},{extra}}}"),
        };
        for (b, n) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{} {n}", with(&format!("le=\"{b}\"")));
        }
        let _ = writeln!(out, "{name}_bucket{} {}", with("le=\"+Inf\""), self.count);
        let _ = writeln!(out, "{name}_sum{} {}", with(""), self.sum);
        let _ = writeln!(out, "{name}_count{} {}", with(""), self.count);
    }
}

#[derive(Default)]
struct State {
    results: BTreeMap<(&'static str, &'static str), u64>,
    times: BTreeMap<&'static str, Histogram>,
    attempts: BTreeMap<&'static str, u64>,
    scheduling: Option<Histogram>,
    pending_pods: Option<usize>,
    queues: BTreeMap<&'static str, QueueStats>,
}

/// One work queue: what waits in it (object key -> when it was added), how many
/// adds it took, and how long items waited.
struct QueueStats {
    waiting: HashMap<String, Instant>,
    adds: u64,
    waited: Histogram,
}

/// client-go's buckets for `workqueue_queue_duration_seconds` (10 ns to 10 s).
const QUEUE_BUCKETS: [f64; 10] = [1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

fn with_state<T>(f: impl FnOnce(&mut State) -> T) -> T {
    let mut guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(State::default))
}

/// A work queue named `name` exists (so its depth shows as 0 before anything arrives).
pub fn queue_created(name: &'static str) {
    with_state(|s| {
        s.queues.entry(name).or_insert_with(|| QueueStats {
            waiting: HashMap::new(),
            adds: 0,
            waited: Histogram::new(&QUEUE_BUCKETS),
        });
    });
}

/// A trigger named the object `key` for queue `name`; one already waiting stays one item.
pub fn queue_add(name: &'static str, key: String) {
    with_state(|s| {
        if let Some(q) = s.queues.get_mut(name) {
            if let std::collections::hash_map::Entry::Vacant(e) = q.waiting.entry(key) {
                e.insert(Instant::now());
                q.adds += 1;
            }
        }
    });
}

/// The object `key` left queue `name`: its reconcile started, or it no longer exists.
pub fn queue_take(name: &'static str, key: String) {
    with_state(|s| {
        if let Some(q) = s.queues.get_mut(name) {
            if let Some(since) = q.waiting.remove(&key) {
                q.waited.observe(since.elapsed().as_secs_f64());
            }
        }
    });
}

/// How many pods are waiting for the scheduler at the start of its pass.
pub fn pending_pods(n: usize) {
    with_state(|s| s.pending_pods = Some(n));
}

/// kube-scheduler's buckets for `scheduler_pod_scheduling_sli_duration_seconds`.
const SCHEDULING_BUCKETS: [f64; 20] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84, 327.68, 655.36,
    1310.72, 2621.44, 5242.88,
];

/// A pod bound `took` after the scheduler first saw it pending.
pub fn pod_scheduled(took: Duration) {
    with_state(|s| s.scheduling.get_or_insert_with(|| Histogram::new(&SCHEDULING_BUCKETS)).observe(took.as_secs_f64()));
}

/// One controller-manager per process, so one set of metrics.
static STATE: Mutex<Option<State>> = Mutex::new(None);

fn record(controller: &'static str, ok: bool, took: Duration) {
    with_state(|s| {
        *s.results.entry((controller, if ok { "success" } else { "error" })).or_default() += 1;
        s.times.entry(controller).or_insert_with(|| Histogram::new(&BUCKETS)).observe(took.as_secs_f64());
    });
}

/// Counts one scheduling attempt: `scheduled`, `unschedulable` or `error`.
pub fn schedule_attempt(result: &'static str) {
    with_state(|s| *s.attempts.entry(result).or_default() += 1);
}

/// `reconcile`, timed and counted as `controller`.
pub fn timed<K, C, F, Fut>(
    controller: &'static str,
    reconcile: F,
) -> impl Fn(Arc<K>, Arc<C>) -> BoxFuture<'static, Result<Action, Error>> + Send + Sync
where
    F: Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        let fut = reconcile(obj, ctx);
        Box::pin(async move {
            let t = Instant::now();
            let r = fut.await;
            record(controller, r.is_ok(), t.elapsed());
            r
        })
    }
}

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    let guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let empty = State::default();
    let s = guard.as_ref().unwrap_or(&empty);
    let mut out = String::from(
        "# HELP controller_runtime_reconcile_total Total number of reconciliations per controller\n\
         # TYPE controller_runtime_reconcile_total counter\n",
    );
    for ((c, result), n) in &s.results {
        let _ = writeln!(out, "controller_runtime_reconcile_total{{controller=\"{c}\",result=\"{result}\"}} {n}");
    }
    out.push_str(
        "# HELP controller_runtime_reconcile_time_seconds Length of time per reconciliation per controller\n\
         # TYPE controller_runtime_reconcile_time_seconds histogram\n",
    );
    for (c, h) in &s.times {
        h.write(&mut out, "controller_runtime_reconcile_time_seconds", &format!("controller=\"{c}\""));
    }
    out.push_str(
        "# HELP scheduler_schedule_attempts_total Number of attempts to schedule pods, by the result.\n\
         # TYPE scheduler_schedule_attempts_total counter\n",
    );
    for (result, n) in &s.attempts {
        let _ =
            writeln!(out, "scheduler_schedule_attempts_total{{profile=\"default-scheduler\",result=\"{result}\"}} {n}");
    }
    if let Some(h) = &s.scheduling {
        out.push_str(
            "# HELP scheduler_pod_scheduling_sli_duration_seconds E2e latency for a pod being scheduled, from the time the pod enters the scheduling queue until it is bound.\n\
             # TYPE scheduler_pod_scheduling_sli_duration_seconds histogram\n",
        );
        h.write(&mut out, "scheduler_pod_scheduling_sli_duration_seconds", "");
    }
    if let Some(n) = s.pending_pods {
        let _ = write!(
            out,
            "# HELP scheduler_pending_pods Number of pending pods, by the queue type.\n\
             # TYPE scheduler_pending_pods gauge\n\
             scheduler_pending_pods{{queue=\"active\"}} {n}\n"
        );
    }
    if !s.queues.is_empty() {
        out.push_str("# HELP workqueue_depth Current depth of workqueue\n# TYPE workqueue_depth gauge\n");
        for (name, q) in &s.queues {
            let _ = writeln!(out, "workqueue_depth{{name=\"{name}\"}} {}", q.waiting.len());
        }
        out.push_str(
            "# HELP workqueue_adds_total Total number of adds handled by workqueue\n\
             # TYPE workqueue_adds_total counter\n",
        );
        for (name, q) in &s.queues {
            let _ = writeln!(out, "workqueue_adds_total{{name=\"{name}\"}} {}", q.adds);
        }
        out.push_str(
            "# HELP workqueue_queue_duration_seconds How long in seconds an item stays in workqueue before being requested.\n\
             # TYPE workqueue_queue_duration_seconds histogram\n",
        );
        for (name, q) in &s.queues {
            q.waited.write(&mut out, "workqueue_queue_duration_seconds", &format!("name=\"{name}\""));
        }
    }
    out
}

/// Serves `/metrics` (and `/healthz`) over plain HTTP until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    use http_body_util::Full;
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let (code, body) = match req.uri().path() {
                    "/metrics" => (200, render()),
                    "/healthz" => (200, "ok".to_string()),
                    p => (404, format!("404 page not found: {p}\n")),
                };
                let resp = hyper::Response::builder()
                    .status(code)
                    .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    .body(Full::new(bytes::Bytes::from(body)))
                    .expect("a valid response");
                Ok::<_, Infallible>(resp)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_or_without_labels() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        let mut out = String::new();
        h.write(&mut out, "x", "");
        assert_eq!(
            out,
            "x_bucket{le=\"0.1\"} 1\nx_bucket{le=\"1\"} 2\nx_bucket{le=\"+Inf\"} 2\nx_sum 0.55\nx_count 2\n"
        );
        let mut out = String::new();
        h.write(&mut out, "x", "c=\"a\"");
        assert!(out.starts_with("x_bucket{c=\"a\",le=\"0.1\"} 1\n") && out.ends_with("x_count{c=\"a\"} 2\n"), "{out}");
    }
}
