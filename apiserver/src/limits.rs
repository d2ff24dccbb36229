//! Limits that keep one user from starving the others: watches open at once, and
//! requests per second. Members of `system:masters` (the components) are exempt; the
//! caller decides who is limited.

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
            let mut e = ApiError::new(429, "TooManyRequests", "Too many requests, please try again later.");
            e.details = Some(serde_json::json!({"retryAfterSeconds": wait}));
            return Err(e);
        }
        b.tokens -= 1.0;
        Ok(())
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
    fn zero_means_no_limit() {
        let r = RequestRates::new(0, 0);
        for _ in 0..10_000 {
            r.take("alice").unwrap();
        }
    }
}
