//! The web dashboard at `/dashboard/`: three static files compiled into the binary
//! (`apiserver/dashboard/`), which read and change the cluster through the ordinary API
//! with the caller's own credentials, plus two read-only JSON documents the API has no
//! resource for:
//!
//! * `/dashboard/api/store`: each store member's status (leader, revision, db size),
//!   asked of the member itself, as `etcdctl endpoint status --cluster` does;
//! * `/dashboard/api/usage`: an hour of CPU and memory usage per node and per pod,
//!   sampled from the resource metrics (`metrics.k8s.io`) every 15 s by [`spawn_sampler`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::status::{ApiError, ApiResult};
use crate::storage::Store;

const INDEX: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/style.css");

/// Time between two usage samples.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(15);
/// Samples kept per series: one hour.
const KEEP: usize = 240;
/// Pods whose usage is recorded; beyond this, new pods get no history (nodes always do).
/// A pod's series goes with the pod.
const MAX_POD_SERIES: usize = 2000;

/// A static file of the dashboard: (content type, body), or None for an unknown name.
pub fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "" | "index.html" => Some(("text/html; charset=utf-8", INDEX)),
        "app.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        "style.css" => Some(("text/css; charset=utf-8", STYLE)),
        _ => None,
    }
}

/// Headers every dashboard response carries: scripts and styles only from the server
/// itself (object names shown on the page can never run as code), and no framing (the
/// buttons cannot be clicked through another site's page).
pub const SECURITY_HEADERS: [(&str, &str); 3] = [
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
];

/// One usage sample: unix seconds, CPU in millicores, memory in bytes.
type Sample = (i64, i64, i64);

/// An hour of usage per node and per pod (`namespace/name`).
#[derive(Default)]
pub struct UsageHistory {
    inner: Mutex<Series>,
}

#[derive(Default)]
struct Series {
    nodes: BTreeMap<String, VecDeque<Sample>>,
    pods: BTreeMap<String, VecDeque<Sample>>,
}

fn push(map: &mut BTreeMap<String, VecDeque<Sample>>, key: String, s: Sample, cap: Option<usize>) {
    if let Some(cap) = cap {
        if map.len() >= cap && !map.contains_key(&key) {
            return;
        }
    }
    let q = map.entry(key).or_default();
    if q.len() == KEEP {
        q.pop_front();
    }
    q.push_back(s);
}

/// Drops series with no sample newer than `oldest`.
fn expire(map: &mut BTreeMap<String, VecDeque<Sample>>, oldest: i64) {
    map.retain(|_, q| {
        while q.front().is_some_and(|s| s.0 < oldest) {
            q.pop_front();
        }
        !q.is_empty()
    });
}

impl UsageHistory {
    /// Records one round of samples taken at unix time `now`: the Ready nodes' and every
    /// pod's that has metrics. Pods missing from the round are gone, and so is their series;
    /// a node's stays for the hour (it may come back).
    fn record(&self, now: i64, nodes: Vec<(String, i64, i64)>, pods: Vec<(String, i64, i64)>) {
        let mut s = self.inner.lock().expect("not poisoned");
        let present: std::collections::HashSet<&str> = pods.iter().map(|p| p.0.as_str()).collect();
        s.pods.retain(|k, _| present.contains(k.as_str()));
        for (name, cpu, mem) in nodes {
            push(&mut s.nodes, name, (now, cpu, mem), None);
        }
        for (name, cpu, mem) in pods {
            push(&mut s.pods, name, (now, cpu, mem), Some(MAX_POD_SERIES));
        }
        let oldest = now - (KEEP as i64) * SAMPLE_EVERY.as_secs() as i64;
        expire(&mut s.nodes, oldest);
        expire(&mut s.pods, oldest);
    }

    /// Every node's series, and the pods' (none when `pods` is false; only those of
    /// `namespace` when one is given), as `{"intervalSeconds", "nodes", "pods"}` with
    /// each series a list of `[unix seconds, millicores, bytes]`.
    pub fn to_json(&self, pods: bool, namespace: Option<&str>) -> String {
        fn series(out: &mut String, map: &BTreeMap<String, VecDeque<Sample>>, keep: impl Fn(&str) -> bool) {
            out.push('{');
            let mut first = true;
            for (k, q) in map.iter().filter(|(k, _)| keep(k)) {
                if !std::mem::take(&mut first) {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(":[");
                for (i, (t, c, m)) in q.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    let _ = write!(out, "{sep}[{t},{c},{m}]");
                }
                out.push(']');
            }
            out.push('}');
        }
        let s = self.inner.lock().expect("not poisoned");
        let mut out = format!("{{\"intervalSeconds\":{},\"nodes\":", SAMPLE_EVERY.as_secs());
        series(&mut out, &s.nodes, |_| true);
        out.push_str(",\"pods\":");
        series(&mut out, &s.pods, |k| {
            pods && namespace.is_none_or(|ns| k.split_once('/').is_some_and(|(n, _)| n == ns))
        });
        out.push('}');
        out
    }
}

/// A Kubernetes quantity as a number ("250m" → 0.25, "64Mi" → 67108864), or None.
pub(crate) fn quantity(s: &str) -> Option<f64> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match suffix {
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "P" => 1e15,
        "E" => 1e18,
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        // Decimal exponents: "129e6", "1E3".
        s if s.len() > 1 && (s.starts_with('e') || s.starts_with('E')) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * scale)
}

/// (millicores, bytes) of a `usage` object; what is missing, negative or not a
/// quantity counts as 0, and huge values stop at i64::MAX.
fn usage(u: &Value) -> (i64, i64) {
    let q = |k: &str| u.get(k).and_then(Value::as_str).and_then(quantity).unwrap_or(0.0).max(0.0);
    ((q("cpu") * 1000.0).round() as i64, q("memory").round() as i64)
}

/// Whether a Node object's Ready condition is True.
fn ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Samples NodeMetrics and PodMetrics from the store into `history` every
/// [`SAMPLE_EVERY`], for as long as the server runs.
pub fn spawn_sampler(store: Store, history: Arc<UsageHistory>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default();
            let (Ok(nodes), Ok(usage_nodes), Ok(pods)) = (
                store.list("/registry/nodes/", None, 0, 0).await,
                store.list("/registry/nodemetrics/", None, 0, 0).await,
                store.list("/registry/podmetrics/", None, 0, 0).await,
            ) else {
                continue;
            };
            // A node that stopped reporting keeps its last NodeMetrics: only Ready nodes'
            // usage is current.
            let ready: std::collections::HashSet<&str> = nodes
                .items
                .iter()
                .filter(|s| ready(&s.obj))
                .filter_map(|s| s.obj["metadata"]["name"].as_str())
                .collect();
            let nodes = usage_nodes
                .items
                .iter()
                .filter_map(|s| {
                    let name = s.obj["metadata"]["name"].as_str().filter(|n| ready.contains(n))?;
                    let (c, m) = usage(&s.obj["usage"]);
                    Some((name.to_string(), c, m))
                })
                .collect();
            let pods = pods
                .items
                .iter()
                .filter_map(|s| {
                    let md = &s.obj["metadata"];
                    let key = format!("{}/{}", md["namespace"].as_str()?, md["name"].as_str()?);
                    let (mut c, mut m) = (0i64, 0i64);
                    for ct in s.obj["containers"].as_array().into_iter().flatten() {
                        let (cc, cm) = usage(&ct["usage"]);
                        c = c.saturating_add(cc);
                        m = m.saturating_add(cm);
                    }
                    Some((key, c, m))
                })
                .collect();
            history.record(now, nodes, pods);
        }
    });
}

/// The status of every store member, each asked directly (an unreachable member is
/// listed with its error).
pub async fn store_members(store: &Store) -> ApiResult<Value> {
    let mut client = store.client();
    let list = client
        .member_list()
        .await
        .map_err(|e| ApiError::new(503, "ServiceUnavailable", format!("store member list: {e}")))?;
    let rows = list.members().iter().map(|m| async move {
        let url = m.client_urls().first().cloned().unwrap_or_default();
        let mut row = json!({
            "name": m.name(),
            "id": format!("{:x}", m.id()),
            "endpoint": url,
            "isLearner": m.is_learner(),
        });
        let status = async {
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2));
            let mut c = etcd_client::Client::connect([url.as_str()], Some(opts)).await?;
            c.status().await
        };
        match tokio::time::timeout(Duration::from_secs(3), status).await {
            Ok(Ok(s)) => {
                let h = s.header();
                row["isLeader"] = json!(s.leader() == m.id());
                row["revision"] = json!(h.map_or(0, |h| h.revision()));
                row["raftTerm"] = json!(s.raft_term());
                row["raftIndex"] = json!(s.raft_index());
                row["dbSize"] = json!(s.db_size());
                row["version"] = json!(s.version());
            }
            Ok(Err(e)) => row["error"] = json!(e.to_string()),
            Err(_) => row["error"] = json!("no answer within 3 s"),
        }
        row
    });
    Ok(json!({"members": futures::future::join_all(rows).await}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_the_metrics_api_writes_them() {
        assert_eq!(quantity("250m"), Some(0.25));
        assert_eq!(quantity("1500000n"), Some(0.0015));
        assert_eq!(quantity("2"), Some(2.0));
        assert_eq!(quantity("64Mi"), Some(67108864.0));
        assert_eq!(quantity("12Ki"), Some(12288.0));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("129e6"), Some(129e6));
        assert_eq!(quantity("2Pi"), Some(2.0 * 1024f64.powi(5)));
        assert_eq!(quantity("lots"), None);
        assert_eq!(usage(&json!({"cpu": "250m", "memory": "1Mi"})), (250, 1048576));
        assert_eq!(usage(&json!({"cpu": "-5", "memory": 7})), (0, 0));
        assert_eq!(usage(&json!({"cpu": "1e400", "memory": "99999999999999999999Ti"})).1, i64::MAX);
    }

    #[test]
    fn history_keeps_an_hour_and_caps_pods() {
        let h = UsageHistory::default();
        for i in 0..(KEEP as i64 + 10) {
            h.record(i * 15, vec![("n1".into(), i, 1)], vec![("ns/p".into(), i, 2)]);
        }
        let json = |pods: bool, ns: Option<&str>| -> Value { serde_json::from_str(&h.to_json(pods, ns)).unwrap() };
        let j = json(true, None);
        let n1 = j["nodes"]["n1"].as_array().unwrap();
        assert_eq!(n1.len(), KEEP);
        assert_eq!(n1[0][1], 10, "the oldest samples are dropped first");
        assert_eq!(n1[0], json!([150, 10, 1]));
        assert_eq!(json(true, Some("other"))["pods"], json!({}));
        assert_eq!(json(false, None)["pods"], json!({}));
        assert_eq!(json(true, Some("ns"))["pods"]["ns/p"].as_array().unwrap().len(), KEEP);
        // A node that stops reporting disappears once its last sample is an hour old.
        let later = (KEEP as i64 + 10) * 15 + 3600;
        h.record(later, vec![("n2".into(), 1, 1)], vec![]);
        let j = json(true, None);
        assert!(j["nodes"].get("n1").is_none() && j["nodes"].get("n2").is_some(), "{j}");
        assert_eq!(j["pods"], json!({}), "a pod missing from a round is gone");
        // New pods beyond the cap get no series; existing ones keep theirs.
        let pods: Vec<_> = (0..MAX_POD_SERIES + 5).map(|i| (format!("ns/p{i}"), 1, 1)).collect();
        h.record(later + 15, vec![], pods);
        assert_eq!(json(true, None)["pods"].as_object().unwrap().len(), MAX_POD_SERIES);
    }
}
