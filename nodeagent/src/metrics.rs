//! Reports what pods and nodes use to the resource metrics API (`metrics.k8s.io`
//! PodMetrics and NodeMetrics, which metrics-server serves in Kubernetes and the API
//! server stores here). `kubectl top` and the HPA controller read them. A pod's or
//! node's metrics are written when its usage changes, and a pod's are removed with it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::json;

use crate::runtime::Usage;

fn resource(kind: &str, plural: &str) -> ApiResource {
    skiff_controllers::gc::api_resource("metrics.k8s.io", "v1beta1", kind, plural)
}

fn cpu(milli: i64) -> String {
    format!("{milli}m")
}

fn memory(bytes: i64) -> String {
    format!("{}Ki", bytes / 1024)
}

pub struct Reporter {
    client: kube::Client,
    /// Last usage written, per pod (namespace, name) and per node.
    pods: Mutex<HashMap<(String, String), Vec<Usage>>>,
    nodes: Mutex<HashMap<String, (i64, i64)>>,
}

impl Reporter {
    pub fn new(client: kube::Client) -> Reporter {
        Reporter { client, pods: Default::default(), nodes: Default::default() }
    }

    fn apply() -> PatchParams {
        PatchParams::apply("skiff-agent").force()
    }

    /// Writes a pod's usage if it changed.
    pub async fn pod(&self, pod: &Pod, usage: Vec<Usage>) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = (ns.clone(), name.clone());
        if self.pods.lock().expect("not poisoned").get(&key) == Some(&usage) {
            return;
        }
        let containers: Vec<_> = usage
            .iter()
            .map(|u| json!({"name": u.container, "usage": {"cpu": cpu(u.cpu_milli), "memory": memory(u.memory_bytes)}}))
            .collect();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let obj = json!({
            "apiVersion": "metrics.k8s.io/v1beta1",
            "kind": "PodMetrics",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "timestamp": Timestamp::now().to_string(),
            "window": "10s",
            "containers": containers,
        });
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &resource("PodMetrics", "pods"));
        match api.patch(&name, &Self::apply(), &Patch::Apply(&obj)).await {
            Ok(_) => {
                self.pods.lock().expect("not poisoned").insert(key, usage);
            }
            Err(e) => tracing::warn!("reporting the usage of pod {name}: {e}"),
        }
    }

    /// Removes the metrics of pods reported before that are no longer in `live`.
    pub async fn prune(&self, live: &HashSet<(String, String)>) {
        let gone: Vec<(String, String)> = {
            let mut pods = self.pods.lock().expect("not poisoned");
            let gone = pods.keys().filter(|k| !live.contains(*k)).cloned().collect::<Vec<_>>();
            for k in &gone {
                pods.remove(k);
            }
            gone
        };
        for (ns, name) in gone {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &ns, &resource("PodMetrics", "pods"));
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
    }

    /// Writes each node's total usage (cpu millicores, memory bytes) if it changed.
    pub async fn nodes(&self, totals: BTreeMap<String, (i64, i64)>) {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource("NodeMetrics", "nodes"));
        for (node, total) in totals {
            if self.nodes.lock().expect("not poisoned").get(&node) == Some(&total) {
                continue;
            }
            let obj = json!({
                "apiVersion": "metrics.k8s.io/v1beta1",
                "kind": "NodeMetrics",
                "metadata": {"name": node},
                "timestamp": Timestamp::now().to_string(),
                "window": "10s",
                "usage": {"cpu": cpu(total.0), "memory": memory(total.1)},
            });
            match api.patch(&node, &Self::apply(), &Patch::Apply(&obj)).await {
                Ok(_) => {
                    self.nodes.lock().expect("not poisoned").insert(node, total);
                }
                Err(e) => tracing::warn!("reporting the usage of node {node}: {e}"),
            }
        }
    }
}
