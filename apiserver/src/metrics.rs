//! The API server's Prometheus metrics at `/metrics`, under Kubernetes' names:
//! `apiserver_request_total{verb,resource,subresource,code}`,
//! `apiserver_request_duration_seconds{verb,resource,subresource}` (a histogram with
//! kube-apiserver's buckets; WATCH is not timed, it is long-running) and
//! `apiserver_longrunning_requests{verb="WATCH",resource}` (watches open now).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::http::Body;

/// kube-apiserver's buckets for request durations, in seconds.
const BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0,
    45.0, 60.0,
];

/// How Kubernetes labels a request: verb (GET, LIST, WATCH, POST, PUT, PATCH, DELETE,
/// DELETECOLLECTION, or the HTTP method for paths that are not resources), resource
/// and subresource (empty for non-resource paths).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels {
    pub verb: String,
    pub resource: String,
    pub subresource: String,
}

impl Labels {
    pub fn of(method: &str, path: &str, query: Option<&str>) -> Labels {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let rest: &[&str] = match segs.as_slice() {
            ["api", _v, rest @ ..] => rest,
            ["apis", _g, _v, rest @ ..] => rest,
            _ => &[],
        };
        // namespaces/<ns>/<resource>/... is a namespaced resource; namespaces/<name> is one.
        let rest = match rest {
            ["namespaces", _ns, more @ ..] if !more.is_empty() => more,
            r => r,
        };
        let (resource, name, sub) = (rest.first(), rest.get(1), rest.get(2));
        let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        let method = match method {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
            _ => "OTHER",
        };
        let verb = match (method, resource, name) {
            (_, None, _) => method.to_string(),
            ("GET", _, _) if watch => "WATCH".into(),
            ("GET", _, None) => "LIST".into(),
            ("DELETE", _, None) => "DELETECOLLECTION".into(),
            (m, _, _) => m.to_string(),
        };
        Labels {
            verb,
            resource: resource.map(|r| r.to_string()).unwrap_or_default(),
            subresource: sub.map(|s| s.to_string()).unwrap_or_default(),
        }
    }
}

/// Whether `plural` is a resource this server serves (in any group).
pub fn is_resource(plural: &str) -> bool {
    crate::registry::RESOURCES.iter().any(|r| r.plural == plural)
}

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct State {
    requests: BTreeMap<(Labels, u16), u64>,
    durations: BTreeMap<Labels, Histogram>,
    watches: BTreeMap<String, i64>,
}

#[derive(Clone, Default)]
pub struct Metrics(Arc<Mutex<State>>);

impl Metrics {
    /// Records a finished request (for WATCH: one that was answered).
    pub fn observe(&self, l: &Labels, code: u16, seconds: f64) {
        let mut s = self.0.lock().expect("not poisoned");
        *s.requests.entry((l.clone(), code)).or_default() += 1;
        if l.verb != "WATCH" {
            let h = s.durations.entry(l.clone()).or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    h.counts[i] += 1;
                }
            }
            h.sum += seconds;
            h.count += 1;
        }
    }

    /// Counts a watch as open until its response body is dropped.
    pub fn track_watch(&self, resource: &str, body: Body) -> Body {
        *self.0.lock().expect("not poisoned").watches.entry(resource.to_string()).or_default() += 1;
        http_body_util::BodyExt::boxed(Tracked { inner: body, metrics: self.clone(), resource: resource.to_string() })
    }

    pub fn render(&self) -> String {
        let s = self.0.lock().expect("not poisoned");
        let mut out = String::new();
        let labels =
            |l: &Labels| format!("resource=\"{}\",subresource=\"{}\",verb=\"{}\"", l.resource, l.subresource, l.verb);
        out.push_str("# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for ((l, code), n) in &s.requests {
            let _ = writeln!(out, "apiserver_request_total{{code=\"{code}\",{}}} {n}", labels(l));
        }
        out.push_str("# HELP apiserver_request_duration_seconds Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.\n");
        out.push_str("# TYPE apiserver_request_duration_seconds histogram\n");
        for (l, h) in &s.durations {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "apiserver_request_duration_seconds_bucket{{{},le=\"{b}\"}} {}",
                    labels(l),
                    h.counts[i]
                );
            }
            let _ = writeln!(out, "apiserver_request_duration_seconds_bucket{{{},le=\"+Inf\"}} {}", labels(l), h.count);
            let _ = writeln!(out, "apiserver_request_duration_seconds_sum{{{}}} {}", labels(l), h.sum);
            let _ = writeln!(out, "apiserver_request_duration_seconds_count{{{}}} {}", labels(l), h.count);
        }
        out.push_str("# HELP apiserver_longrunning_requests Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component.\n");
        out.push_str("# TYPE apiserver_longrunning_requests gauge\n");
        for (r, n) in &s.watches {
            let _ = writeln!(out, "apiserver_longrunning_requests{{resource=\"{r}\",verb=\"WATCH\"}} {n}");
        }
        out
    }
}

/// A watch's response body, counted in `watches` while it lives.
struct Tracked {
    inner: Body,
    metrics: Metrics,
    resource: String,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(n) = self.metrics.0.lock().expect("not poisoned").watches.get_mut(&self.resource) {
            *n -= 1;
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_labelled_as_kubernetes_does() {
        let l = |m, p, q| {
            let l = Labels::of(m, p, q);
            (l.verb, l.resource, l.subresource)
        };
        let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(l("GET", "/api/v1/namespaces/default/pods", None), s("LIST", "pods", ""));
        assert_eq!(l("GET", "/api/v1/namespaces/default/pods", Some("watch=true&rv=1")), s("WATCH", "pods", ""));
        assert_eq!(l("GET", "/api/v1/namespaces/default/pods/web/log", None), s("GET", "pods", "log"));
        assert_eq!(l("GET", "/api/v1/namespaces/default", None), s("GET", "namespaces", ""));
        assert_eq!(
            l("DELETE", "/apis/apps/v1/namespaces/x/deployments", None),
            s("DELETECOLLECTION", "deployments", "")
        );
        assert_eq!(
            l("PATCH", "/apis/apps/v1/namespaces/x/deployments/d/scale", None),
            s("PATCH", "deployments", "scale")
        );
        assert_eq!(l("GET", "/version", None), s("GET", "", ""));
    }

    #[test]
    fn the_text_format_has_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        let l = Labels::of("GET", "/api/v1/nodes", None);
        m.observe(&l, 200, 0.03);
        m.observe(&l, 200, 0.3);
        let text = m.render();
        assert!(
            text.contains("apiserver_request_total{code=\"200\",resource=\"nodes\",subresource=\"\",verb=\"LIST\"} 2")
        );
        assert!(text.contains("le=\"0.025\"} 0\n"), "{text}");
        assert!(text.contains("le=\"0.05\"} 1\n"), "{text}");
        assert!(text.contains("le=\"0.4\"} 2\n"), "{text}");
        assert!(text
            .contains("apiserver_request_duration_seconds_count{resource=\"nodes\",subresource=\"\",verb=\"LIST\"} 2"));
    }
}
