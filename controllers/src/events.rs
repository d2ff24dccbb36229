//! core/v1 Events, the ones `kubectl describe` shows. A repeated event (same object,
//! reason and message) bumps the count of the first instead of adding another. As
//! client-go's event recorder does, each object may have 25 events written about it by
//! one component at once and then one per 5 minutes; the others are dropped (a
//! ReplicaSet creating 500 pods records 25 SuccessfulCreate events, not 500).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Resource;
use serde_json::json;

type EventKey = (String, String, String);

/// Events one component may write about one object at once (client-go's
/// `defaultSpamBurst`), and how long it takes to earn one more (`defaultSpamQPS`, 1/300).
const SPAM_BURST: f64 = 25.0;
const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Objects whose allowance is remembered (client-go's LRU cache size).
const SPAM_OBJECTS: usize = 4096;

/// A token bucket per object: client-go's `EventSourceObjectSpamFilter`.
#[derive(Default)]
struct SpamFilter {
    /// Object key -> (tokens left, when they were counted).
    buckets: HashMap<String, (f64, Instant)>,
}

impl SpamFilter {
    fn tokens_at(&(tokens, at): &(f64, Instant), now: Instant) -> f64 {
        let earned = now.saturating_duration_since(at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        (tokens + earned).min(SPAM_BURST)
    }

    /// Whether an event about `object` may be written at `now` (and, if so, counts it).
    fn allow(&mut self, object: &str, now: Instant) -> bool {
        if self.buckets.len() >= SPAM_OBJECTS && !self.buckets.contains_key(object) {
            // Objects back at a full allowance are as good as unseen; drop them first.
            // If none is, start afresh (client-go evicts the least recently used; a
            // reset can only let more events through, never fewer).
            self.buckets.retain(|_, b| Self::tokens_at(b, now) < SPAM_BURST);
            if self.buckets.len() >= SPAM_OBJECTS {
                self.buckets.clear();
            }
        }
        let b = self.buckets.entry(object.to_string()).or_insert((SPAM_BURST, now));
        let tokens = Self::tokens_at(b, now);
        if tokens < 1.0 {
            *b = (tokens, now);
            return false;
        }
        *b = (tokens - 1.0, now);
        true
    }
}

pub struct Recorder {
    client: kube::Client,
    component: String,
    /// (object uid, reason, message) -> (event name, count).
    seen: Mutex<HashMap<EventKey, (String, i32)>>,
    spam: Mutex<SpamFilter>,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &str) -> Recorder {
        Recorder {
            client,
            component: component.into(),
            seen: Mutex::new(HashMap::new()),
            spam: Mutex::new(SpamFilter::default()),
        }
    }

    /// Records a Normal or Warning event about `obj`; failures are logged, not returned.
    pub async fn record<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: &str, reason: &str, message: String) {
        let r = obj.object_ref(&());
        self.record_ref(r, type_, reason, message).await
    }

    pub async fn record_ref(&self, r: ObjectReference, type_: &str, reason: &str, message: String) {
        let object = format!(
            "{}/{}/{}/{}/{}",
            r.api_version.as_deref().unwrap_or_default(),
            r.kind.as_deref().unwrap_or_default(),
            r.namespace.as_deref().unwrap_or_default(),
            r.name.as_deref().unwrap_or_default(),
            r.uid.as_deref().unwrap_or_default()
        );
        if !self.spam.lock().expect("not poisoned").allow(&object, Instant::now()) {
            tracing::debug!("event {reason} about {object} dropped: over its allowance");
            return;
        }
        let ns = r.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let key = (r.uid.clone().unwrap_or_default(), reason.to_string(), message.clone());
        let now = Time(Timestamp::now());
        let previous = self.seen.lock().expect("not poisoned").get(&key).cloned();
        if let Some((name, count)) = previous {
            let p = json!({"count": count + 1, "lastTimestamp": now});
            if api.patch(&name, &PatchParams::default(), &Patch::Merge(&p)).await.is_ok() {
                self.seen.lock().expect("not poisoned").insert(key, (name, count + 1));
                return;
            }
        }
        let name = format!("{}.{:x}", r.name.as_deref().unwrap_or("object"), Timestamp::now().as_nanosecond() as u64);
        let ev = Event {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(ns), ..Default::default() },
            involved_object: r,
            type_: Some(type_.into()),
            reason: Some(reason.into()),
            message: Some(message),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            event_time: Some(MicroTime(Timestamp::now())),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            action: Some(reason.into()),
            source: Some(EventSource { component: Some(self.component.clone()), host: None }),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ev).await {
            Ok(_) => {
                let mut seen = self.seen.lock().expect("not poisoned");
                if seen.len() > 10_000 {
                    seen.clear();
                }
                seen.insert(key, (name, 1));
            }
            Err(e) => tracing::debug!("event {reason}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_gets_25_events_at_once_then_one_per_five_minutes() {
        let mut f = SpamFilter::default();
        let t0 = Instant::now();
        let allowed = (0..40).filter(|_| f.allow("apps/v1/ReplicaSet/default/web/u1", t0)).count();
        assert_eq!(allowed, 25);
        assert!(f.allow("apps/v1/ReplicaSet/default/other/u2", t0), "another object has its own allowance");
        assert!(!f.allow("apps/v1/ReplicaSet/default/web/u1", t0 + Duration::from_secs(299)));
        assert!(f.allow("apps/v1/ReplicaSet/default/web/u1", t0 + Duration::from_secs(301)));
        assert!(!f.allow("apps/v1/ReplicaSet/default/web/u1", t0 + Duration::from_secs(302)));
        // After long enough the whole allowance is back, and no more.
        let later = t0 + SPAM_REFILL * 100;
        assert_eq!((0..40).filter(|_| f.allow("apps/v1/ReplicaSet/default/web/u1", later)).count(), 25);
    }

    #[test]
    fn forgotten_objects_start_with_a_full_allowance() {
        let mut f = SpamFilter::default();
        let t0 = Instant::now();
        for i in 0..SPAM_OBJECTS {
            assert!(f.allow(&format!("o{i}"), t0));
        }
        // The table is full of objects that each used one event; a new one still gets in.
        assert!(f.allow("new", t0));
        assert!(f.buckets.len() <= SPAM_OBJECTS);
        assert_eq!((0..30).filter(|_| f.allow("new", t0)).count(), 24);
    }
}
