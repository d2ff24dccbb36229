//! Limits that keep one user from starving the others: watches open at once, and
//! requests per second. Members of `system:masters` (the components) are exempt; the
//! caller decides who is limited. And one limit for everyone: requests being served at
//! once (`Inflight`), which keeps the heartbeats that hold the cluster together ahead
//! of a flood of ordinary work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::status::{ApiError, ApiResult};

/// At most `max` watches open at once per user (0: no limit), so one client cannot hold
/// the server's memory and the store's watch streams for everyone.
#[derive(Default)]
pub struct WatchLimits {
    pub max: usize,
    open: Mutex<std::collections::HashMap<String, usize>>,
}

/// One open watch, counted until its response body is dropped.
pub struct WatchPermit {
    limits: Arc<WatchLimits>,
    user: String,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl WatchLimits {
    pub fn new(max: usize) -> WatchLimits {
        WatchLimits { max, open: Mutex::default() }
    }

    pub fn acquire(self: &Arc<Self>, user: &str) -> ApiResult<Option<WatchPermit>> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(user.to_string()).or_default();
        if *n >= self.max {
            return Err(ApiError::new(
                429,
                "TooManyRequests",
                format!("too many watches open for user \"{user}\" (at most {} at once)", self.max),
            ));
        }
        *n += 1;
        Ok(Some(WatchPermit { limits: self.clone(), user: user.to_string() }))
    }
}

/// A token bucket per user: `per_second` requests sustained, `burst` at once (0: no
/// limit). A request that finds the bucket empty gets 429 with `Retry-After`, which
/// client-go (kubectl) and the Python client wait out and retry.
pub struct RequestRates {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Above this many users, buckets that have refilled are forgotten.
const KEEP_BUCKETS: usize = 10_000;

impl RequestRates {
    pub fn new(per_second: u32, burst: u32) -> RequestRates {
        let burst = burst.max(per_second.min(1));
        RequestRates { per_second: per_second as f64, burst: burst as f64, buckets: Mutex::default() }
    }

    pub fn take(&self, user: &str) -> ApiResult<()> {
        self.take_at(user, Instant::now())
    }

    fn take_at(&self, user: &str, now: Instant) -> ApiResult<()> {
        if self.per_second == 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > KEEP_BUCKETS {
            let (rate, burst) = (self.per_second, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(user.to_string()).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.per_second).min(self.burst);
        b.at = now;
        if b.tokens < 1.0 {
            let wait = ((1.0 - b.tokens) / self.per_second).ceil().max(1.0) as u64;
            return Err(too_many_requests(wait));
        }
        b.tokens -= 1.0;
        Ok(())
    }
}

/// kube-apiserver's 429 for a request it will not serve now, with when to try again
/// (which client-go and kubectl wait out).
fn too_many_requests(retry_after_seconds: u64) -> ApiError {
    let mut e = ApiError::new(429, "TooManyRequests", "Too many requests, please try again later.");
    e.details = Some(serde_json::json!({"retryAfterSeconds": retry_after_seconds}));
    e
}

/// Requests served at once, as kube-apiserver's `--max-requests-inflight` and
/// `--max-mutating-requests-inflight`: a request over the limit waits its turn (first
/// come, first served) for up to `QUEUE_WAIT`, then gets 429. A burst of thousands of
/// writes (a ReplicaSet creating 500 pods, twenty at once) then queues here rather than
/// in the store, where it would hold up everything.
///
/// Not limited, as Kubernetes' exempt, node-high and leader-election priority levels
/// are served ahead of the workload: Leases and Nodes (node heartbeats, node status,
/// leader election), watches and other long-running requests (exec, attach,
/// port-forward, logs, proxy), and health probes.
pub struct Inflight {
    reading: Option<Arc<tokio::sync::Semaphore>>,
    mutating: Option<Arc<tokio::sync::Semaphore>>,
}

/// How long a request waits for a turn before it gets 429.
pub const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Which limit a request counts against.
#[derive(Debug, PartialEq)]
pub enum Class {
    Exempt,
    Reading,
    Mutating,
}

/// The class of a request: `path` is the URL path, `watch` whether it is a watch.
pub fn classify(method: &hyper::Method, path: &str, watch: bool) -> Class {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The resource and subresource of /api/v1/[namespaces/<ns>/]<resource>[/<name>[/<sub>]]
    // and /apis/<group>/<version>/...
    let rest: &[&str] = match segs.as_slice() {
        ["api", _, rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        [first, ..] if matches!(*first, "healthz" | "livez" | "readyz") => return Class::Exempt,
        _ => &[],
    };
    let rest = match rest {
        ["namespaces", _, r @ ..] if !r.is_empty() => r,
        r => r,
    };
    let (resource, sub) = (rest.first().copied(), rest.get(2).copied());
    let long_running = matches!(sub, Some("exec" | "attach" | "portforward" | "log" | "proxy"))
        || matches!(rest.get(1).copied(), Some("proxy"));
    if watch || long_running || matches!(resource, Some("leases" | "nodes")) {
        return Class::Exempt;
    }
    match *method {
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS => Class::Reading,
        _ => Class::Mutating,
    }
}

/// A turn being served; the next waiting request goes when it is dropped.
pub type Turn = Option<tokio::sync::OwnedSemaphorePermit>;

impl Inflight {
    /// `reading` and `mutating` requests at once (0: no limit).
    pub fn new(reading: usize, mutating: usize) -> Inflight {
        let pool = |n: usize| (n > 0).then(|| Arc::new(tokio::sync::Semaphore::new(n)));
        Inflight { reading: pool(reading), mutating: pool(mutating) }
    }

    /// Waits for a turn for a request of class `class`.
    pub async fn enter(&self, class: Class) -> ApiResult<Turn> {
        let pool = match class {
            Class::Exempt => None,
            Class::Reading => self.reading.as_ref(),
            Class::Mutating => self.mutating.as_ref(),
        };
        let Some(pool) = pool else { return Ok(None) };
        match tokio::time::timeout(QUEUE_WAIT, pool.clone().acquire_owned()).await {
            Ok(Ok(turn)) => Ok(Some(turn)),
            _ => Err(too_many_requests(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_user_gets_the_burst_then_the_rate_and_others_are_not_affected() {
        let r = RequestRates::new(10, 20);
        let t0 = Instant::now();
        for _ in 0..20 {
            r.take_at("alice", t0).unwrap();
        }
        let e = r.take_at("alice", t0).unwrap_err();
        assert_eq!((e.code, e.details.unwrap()["retryAfterSeconds"].as_u64()), (429, Some(1)));
        r.take_at("bob", t0).unwrap();
        // 10 per second: after 300 ms three more.
        let t1 = t0 + Duration::from_millis(300);
        for _ in 0..3 {
            r.take_at("alice", t1).unwrap();
        }
        assert!(r.take_at("alice", t1).is_err());
        // An idle bucket refills only up to the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..20 {
            r.take_at("alice", t2).unwrap();
        }
        assert!(r.take_at("alice", t2).is_err());
    }

    #[test]
    fn heartbeats_watches_and_long_running_requests_are_not_held_up() {
        use hyper::Method;
        let c = |m: &Method, p: &str, w: bool| classify(m, p, w);
        assert_eq!(
            c(&Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1", false),
            Class::Exempt
        );
        assert_eq!(c(&Method::PATCH, "/api/v1/nodes/n1/status", false), Class::Exempt);
        assert_eq!(c(&Method::GET, "/api/v1/pods", true), Class::Exempt);
        assert_eq!(c(&Method::GET, "/api/v1/namespaces/d/pods/p/log", false), Class::Exempt);
        assert_eq!(c(&Method::POST, "/api/v1/namespaces/d/pods/p/exec", false), Class::Exempt);
        assert_eq!(c(&Method::GET, "/api/v1/namespaces/d/services/s/proxy/x", false), Class::Exempt);
        assert_eq!(c(&Method::GET, "/readyz", false), Class::Exempt);
        assert_eq!(c(&Method::POST, "/api/v1/namespaces/d/pods", false), Class::Mutating);
        assert_eq!(c(&Method::POST, "/api/v1/namespaces/d/pods/p/binding", false), Class::Mutating);
        assert_eq!(c(&Method::DELETE, "/apis/apps/v1/namespaces/d/deployments/x", false), Class::Mutating);
        assert_eq!(c(&Method::GET, "/api/v1/pods", false), Class::Reading);
        assert_eq!(c(&Method::GET, "/api/v1/namespaces", false), Class::Reading);
        assert_eq!(c(&Method::GET, "/version", false), Class::Reading);
    }

    #[tokio::test]
    async fn requests_over_the_limit_wait_for_a_turn() {
        let f = Inflight::new(1, 2);
        let a = f.enter(Class::Mutating).await.unwrap();
        let _b = f.enter(Class::Mutating).await.unwrap();
        let _r = f.enter(Class::Reading).await.unwrap();
        assert!(f.enter(Class::Exempt).await.unwrap().is_none(), "exempt requests hold no turn");
        let third = f.enter(Class::Mutating);
        tokio::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending(), "a third write waits");
        drop(a);
        assert!(third.await.unwrap().is_some(), "and goes when one finishes");
        assert!(Inflight::new(0, 0).enter(Class::Mutating).await.unwrap().is_none(), "0: no limit");
    }

    #[test]
    fn zero_means_no_limit() {
        let r = RequestRates::new(0, 0);
        for _ in 0..10_000 {
            r.take("alice").unwrap();
        }
    }
}
