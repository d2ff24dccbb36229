//! core/v1 Events, the ones `kubectl describe` shows. A repeated event (same object,
//! reason and message) bumps the count of the first instead of adding another.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Resource;
use serde_json::json;

type EventKey = (String, String, String);

pub struct Recorder {
    client: kube::Client,
    component: String,
    /// (object uid, reason, message) -> (event name, count).
    seen: Mutex<HashMap<EventKey, (String, i32)>>,
}

impl Recorder {
    pub fn new(client: kube::Client, component: &str) -> Recorder {
        Recorder { client, component: component.into(), seen: Mutex::new(HashMap::new()) }
    }

    /// Records a Normal or Warning event about `obj`; failures are logged, not returned.
    pub async fn record<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: &str, reason: &str, message: String) {
        let r = obj.object_ref(&());
        self.record_ref(r, type_, reason, message).await
    }

    pub async fn record_ref(&self, r: ObjectReference, type_: &str, reason: &str, message: String) {
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
