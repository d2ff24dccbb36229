//! The garbage collector: deletes objects whose owners are all gone (what makes a
//! Background deletion cascade), and carries out the `orphan` and
//! `foregroundDeletion` finalizers the API server puts on owners deleted with those
//! propagation policies — orphaning drops the owner reference from every dependent,
//! foreground deletes the dependents (in foreground too) and lets the owner go once
//! none is left. It watches every kind that can own or be owned (the `KINDS` table)
//! and sweeps its caches when a change can have left garbage (and every 5 s); an owner missing from the cache is
//! looked up before anything is deleted, so a slow watch cannot cause a deletion.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::Notify;

/// (group, version, kind, plural, namespaced) of every resource the API server serves
/// that may carry or be the target of owner references, and that namespace deletion empties.
pub const KINDS: &[(&str, &str, &str, &str, bool)] = &[
    ("", "v1", "Pod", "pods", true),
    ("", "v1", "Service", "services", true),
    ("", "v1", "Endpoints", "endpoints", true),
    ("", "v1", "Secret", "secrets", true),
    ("", "v1", "ConfigMap", "configmaps", true),
    ("", "v1", "LimitRange", "limitranges", true),
    ("", "v1", "ResourceQuota", "resourcequotas", true),
    ("", "v1", "ServiceAccount", "serviceaccounts", true),
    ("", "v1", "Event", "events", true),
    ("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
    ("", "v1", "PersistentVolume", "persistentvolumes", false),
    ("", "v1", "Node", "nodes", false),
    ("apps", "v1", "Deployment", "deployments", true),
    ("apps", "v1", "ReplicaSet", "replicasets", true),
    ("apps", "v1", "StatefulSet", "statefulsets", true),
    ("apps", "v1", "DaemonSet", "daemonsets", true),
    ("apps", "v1", "ControllerRevision", "controllerrevisions", true),
    ("batch", "v1", "Job", "jobs", true),
    ("batch", "v1", "CronJob", "cronjobs", true),
    ("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", true),
    ("coordination.k8s.io", "v1", "Lease", "leases", true),
    ("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true),
    ("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
    ("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true),
    ("metrics.k8s.io", "v1beta1", "PodMetrics", "pods", true),
];

/// Every object of `all`, with its kind.
fn each<'a>(
    all: &'a [(&'a Kind, Vec<Arc<DynamicObject>>)],
) -> impl Iterator<Item = (&'a Kind, &'a Arc<DynamicObject>)> + 'a {
    all.iter().flat_map(|(k, objs)| objs.iter().map(move |o| (*k, o)))
}

pub fn api_resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    let api_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    ApiResource { group: group.into(), version: version.into(), api_version, kind: kind.into(), plural: plural.into() }
}

struct Kind {
    ar: ApiResource,
    namespaced: bool,
    store: Store<DynamicObject>,
}

pub struct Gc {
    client: kube::Client,
    kinds: Vec<Kind>,
    changed: Arc<Notify>,
}

impl Gc {
    /// Starts the watches.
    pub fn start(client: kube::Client) -> Gc {
        let changed = Arc::new(Notify::new());
        let mut kinds = Vec::new();
        for (g, v, k, p, namespaced) in KINDS {
            if *k == "Event" {
                continue; // events own nothing and nobody owns them
            }
            let ar = api_resource(g, v, k, p);
            let writer: Writer<DynamicObject> = Writer::new(ar.clone());
            let store = writer.as_reader();
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let notify = changed.clone();
            let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
            tokio::spawn(async move {
                stream
                    .for_each(|e| {
                        match e {
                            // Only a change that can leave garbage wakes the collector:
                            // an object gone (its dependents may be orphans), one being
                            // deleted (a policy to carry out), or a relist. Pods changing
                            // status, most of the changes in a busy cluster, cannot; a
                            // dependent created after its owner went is found by the sweep
                            // every 5 s.
                            Ok(watcher::Event::Delete(_) | watcher::Event::InitDone) => notify.notify_one(),
                            Ok(watcher::Event::Apply(o)) if o.metadata.deletion_timestamp.is_some() => {
                                notify.notify_one()
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!("gc watch: {e}"),
                        }
                        futures::future::ready(())
                    })
                    .await
            });
            kinds.push(Kind { ar, namespaced: *namespaced, store });
        }
        Gc { client, kinds, changed }
    }

    pub async fn run(self) {
        for k in &self.kinds {
            let _ = k.store.wait_until_ready().await;
        }
        loop {
            let scan = self.sweep().await.unwrap_or_else(|e| {
                tracing::warn!("garbage collection: {e}");
                Duration::ZERO
            });
            // With many objects the scan of the caches takes a while: rest at least
            // twice as long, so the collector keeps to a third of a core however many
            // objects there are (the requests it makes do not count).
            let rest = Duration::from_millis(50).max(scan * 2);
            tokio::select! {
                _ = self.changed.notified() => tokio::time::sleep(rest).await,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    fn api(&self, k: &Kind, ns: Option<&str>) -> Api<DynamicObject> {
        match ns {
            Some(ns) if k.namespaced => Api::namespaced_with(self.client.clone(), ns, &k.ar),
            _ => Api::all_with(self.client.clone(), &k.ar),
        }
    }

    fn kind_of(&self, api_version: &str, kind: &str) -> Option<&Kind> {
        let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
        self.kinds.iter().find(|k| k.ar.kind == kind && k.ar.group == group)
    }

    /// Is the owner `r` of an object in `ns` really there (same uid)?
    async fn owner_exists(
        &self,
        r: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
        ns: Option<&str>,
    ) -> kube::Result<bool> {
        let Some(k) = self.kind_of(&r.api_version, &r.kind) else { return Ok(true) };
        Ok(self.api(k, ns).get_opt(&r.name).await?.is_some_and(|o| o.metadata.uid.as_deref() == Some(r.uid.as_str())))
    }

    /// One pass over every cached object. Cheap when nothing needs doing: one set of
    /// uids, and a scan of owner references against it; dependents are gathered only
    /// for owners being deleted with the orphan or foreground policy, which are rare.
    /// Returns how long the scan of the caches took.
    async fn sweep(&self) -> kube::Result<Duration> {
        let started = std::time::Instant::now();
        let all: Vec<(&Kind, Vec<Arc<DynamicObject>>)> = self.kinds.iter().map(|k| (k, k.store.state())).collect();
        let uids: HashSet<&str> = each(&all).filter_map(|(_, o)| o.metadata.uid.as_deref()).collect();

        // Owners deleted with the orphan or foreground policy.
        let finalizing: HashMap<&str, (&Kind, &Arc<DynamicObject>)> = each(&all)
            .filter(|(_, o)| {
                o.metadata.deletion_timestamp.is_some()
                    && o.metadata.finalizers.iter().flatten().any(|f| f == "orphan" || f == "foregroundDeletion")
            })
            .filter_map(|(k, o)| Some((o.metadata.uid.as_deref()?, (k, o))))
            .collect();
        // Objects with an owner the caches do not hold.
        let suspects: Vec<(&Kind, &Arc<DynamicObject>)> = each(&all)
            .filter(|(_, o)| {
                o.metadata.deletion_timestamp.is_none()
                    && !o.metadata.owner_references.iter().flatten().all(|r| uids.contains(r.uid.as_str()))
            })
            .collect();
        let scan = started.elapsed();
        if !finalizing.is_empty() {
            let mut dependents: HashMap<&str, Vec<(&Kind, &Arc<DynamicObject>)>> = HashMap::new();
            for (k, o) in each(&all) {
                for r in o.metadata.owner_references.iter().flatten() {
                    if let Some((uid, _)) = finalizing.get_key_value(r.uid.as_str()) {
                        dependents.entry(uid).or_default().push((k, o));
                    }
                }
            }
            for (uid, (k, o)) in &finalizing {
                let deps = dependents.get(uid).map(Vec::as_slice).unwrap_or_default();
                if o.metadata.finalizers.iter().flatten().any(|f| f == "orphan") {
                    for (dk, d) in deps {
                        let refs: Vec<_> =
                            d.metadata.owner_references.iter().flatten().filter(|r| r.uid != *uid).cloned().collect();
                        let p = json!({"metadata": {"ownerReferences": refs, "resourceVersion": d.metadata.resource_version}});
                        let _ = self
                            .api(dk, d.metadata.namespace.as_deref())
                            .patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(&p))
                            .await;
                    }
                    if deps.is_empty() {
                        // One object the collector may not change must not stop the sweep.
                        if let Err(e) = self.drop_finalizer(k, o, "orphan").await {
                            tracing::warn!("garbage collector: {}: {e}", o.name_any());
                        }
                    }
                } else {
                    for (dk, d) in deps {
                        if d.metadata.deletion_timestamp.is_none() {
                            if let Err(e) = self.delete(dk, d, PropagationPolicy::Foreground).await {
                                tracing::warn!("garbage collector: {}: {e}", d.name_any());
                            }
                        }
                    }
                    if deps.is_empty() {
                        if let Err(e) = self.drop_finalizer(k, o, "foregroundDeletion").await {
                            tracing::warn!("garbage collector: {}: {e}", o.name_any());
                        }
                    }
                }
            }
        }

        // Dependents whose owners are gone: deleted 20 at a time (Kubernetes'
        // --concurrent-gc-syncs), since a cascade can take thousands.
        let mut doomed = Vec::new();
        for (k, o) in suspects {
            let refs = o.metadata.owner_references.as_deref().unwrap_or_default();
            let mut missing = Vec::new();
            for r in refs {
                if !uids.contains(r.uid.as_str()) && !self.owner_exists(r, o.metadata.namespace.as_deref()).await? {
                    missing.push(r.uid.clone());
                }
            }
            if missing.is_empty() {
                continue;
            }
            if missing.len() == refs.len() {
                doomed.push((k, o));
            } else {
                let keep: Vec<_> = refs.iter().filter(|r| !missing.contains(&r.uid)).cloned().collect();
                let p = json!({"metadata": {"ownerReferences": keep, "resourceVersion": o.metadata.resource_version}});
                let _ = self
                    .api(k, o.metadata.namespace.as_deref())
                    .patch(&o.name_any(), &PatchParams::default(), &Patch::Merge(&p))
                    .await;
            }
        }
        let mut deletes = Vec::new();
        for (k, o) in doomed {
            deletes.push(self.delete(k, o, PropagationPolicy::Background));
        }
        let results: Vec<kube::Result<()>> = futures::stream::iter(deletes).buffer_unordered(20).collect().await;
        results.into_iter().collect::<kube::Result<()>>()?;
        Ok(scan)
    }

    async fn delete(&self, k: &Kind, o: &DynamicObject, policy: PropagationPolicy) -> kube::Result<()> {
        let dp = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(Preconditions { uid: o.metadata.uid.clone(), resource_version: None }),
            ..Default::default()
        };
        match self.api(k, o.metadata.namespace.as_deref()).delete(&o.name_any(), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn drop_finalizer(&self, k: &Kind, o: &DynamicObject, f: &str) -> kube::Result<()> {
        let fins: Vec<_> = o.metadata.finalizers.iter().flatten().filter(|x| *x != f).cloned().collect();
        let p = json!({"metadata": {"finalizers": fins, "resourceVersion": o.metadata.resource_version}});
        match self
            .api(k, o.metadata.namespace.as_deref())
            .patch(&o.name_any(), &PatchParams::default(), &Patch::Merge(&p))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}
