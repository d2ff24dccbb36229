//! Persistent volumes: the binder (kube-controller-manager's PV controller) and what
//! the scheduler checks for a pod's claims.
//!
//! Binder: a claim is bound to a volume pre-bound to it (`claimRef`, as provisioners
//! create them) or to the smallest Available volume of its class that has its access
//! modes and capacity (and, once a node was chosen, may be used there). A claim whose
//! class binds `WaitForFirstConsumer` waits for the scheduler to pick a node
//! (`volume.kubernetes.io/selected-node`); when nothing fits and the class has a
//! provisioner, the claim is handed to it (`volume.kubernetes.io/storage-provisioner`).
//! A volume whose claim is gone is Released, and deleted when its reclaim policy says
//! Delete and no provisioner owns it (a provisioner deletes its own).
//!
//! Scheduler: a pod's claims must exist; bound ones restrict it to their volume's
//! node affinity; unbound ones of a `WaitForFirstConsumer` class are provisioned on
//! the node chosen, and the pod is bound once they are; an unbound claim of an
//! `Immediate` class makes the pod wait.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio::sync::Notify;

use crate::pods::annotation;
use crate::scheduler::{node_selector_matches, NodeInfo};
use crate::{pods, quantity, Ctx};

pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
pub const STORAGE_PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
pub const BETA_STORAGE_PROVISIONER: &str = "volume.beta.kubernetes.io/storage-provisioner";
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
pub const BOUND_BY_CONTROLLER: &str = "pv.kubernetes.io/bound-by-controller";
/// The finalizer that keeps a claim while a pod uses it (added by the API server).
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The provisioner of Skiff's default StorageClass (the node agents).
pub const LOCAL_PATH: &str = "skiff.io/local-path";

pub fn claim_phase(c: &PersistentVolumeClaim) -> &str {
    c.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

pub fn volume_phase(v: &PersistentVolume) -> &str {
    v.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn claim_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref().map(|c| c.claim_name.clone()))
        .collect()
}

fn requested(c: &PersistentVolumeClaim) -> i64 {
    c.spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(quantity::units)
        .unwrap_or(0)
}

/// The caches the binder and the scheduler read.
#[derive(Clone)]
pub struct Volumes {
    pub claims: Store<PersistentVolumeClaim>,
    pub volumes: Store<PersistentVolume>,
    pub classes: Store<StorageClass>,
}

/// What a pod's claims ask of the node it goes to.
#[derive(Default)]
pub struct PodVolumes {
    /// Node affinities of the volumes its claims are bound to.
    affinities: Vec<k8s_openapi::api::core::v1::NodeSelector>,
    /// Claims to provision on the chosen node.
    pub to_provision: Vec<String>,
    /// A node already chosen for one of those claims (by an earlier pod): only it fits.
    selected: Option<String>,
}

impl PodVolumes {
    pub fn fits(&self, n: &NodeInfo) -> Result<(), String> {
        if self.selected.as_deref().is_some_and(|s| s != n.name) {
            return Err("node(s) did not match the node selected for its volumes".into());
        }
        match self.affinities.iter().all(|a| node_selector_matches(a, n)) {
            true => Ok(()),
            false => Err("node(s) had volume node affinity conflict".into()),
        }
    }
}

impl Volumes {
    pub fn watch(client: &kube::Client, changed: Arc<Notify>) -> Volumes {
        use crate::informer::notifying_cache;
        Volumes {
            claims: notifying_cache(Api::all(client.clone()), changed.clone()),
            volumes: notifying_cache(Api::all(client.clone()), changed.clone()),
            classes: notifying_cache(Api::all(client.clone()), changed),
        }
    }

    pub async fn wait_until_ready(&self) {
        let _ = self.claims.wait_until_ready().await;
        let _ = self.volumes.wait_until_ready().await;
        let _ = self.classes.wait_until_ready().await;
    }

    fn claim(&self, ns: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        self.claims.get(&ObjectRef::new(name).within(ns))
    }

    fn volume(&self, name: &str) -> Option<Arc<PersistentVolume>> {
        self.volumes.get(&ObjectRef::new(name))
    }

    fn class(&self, name: &str) -> Option<Arc<StorageClass>> {
        self.classes.get(&ObjectRef::new(name))
    }

    fn waits_for_consumer(&self, c: &PersistentVolumeClaim) -> bool {
        let class = c.spec.as_ref().and_then(|s| s.storage_class_name.as_deref()).unwrap_or("");
        self.class(class).is_some_and(|k| k.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"))
    }

    /// The scheduler's view of a pod's claims; Err with the reason it cannot go anywhere.
    pub fn for_pod(&self, pod: &Pod) -> Result<PodVolumes, String> {
        let ns = pods::namespace(&pod.metadata);
        let mut out = PodVolumes::default();
        for name in claim_names(pod) {
            let Some(c) = self.claim(ns, &name) else {
                return Err(format!("persistentvolumeclaim \"{name}\" not found"));
            };
            if c.metadata.deletion_timestamp.is_some() {
                return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
            }
            let bound_to = c.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty());
            match bound_to {
                Some(v) if claim_phase(&c) == "Bound" => {
                    let Some(pv) = self.volume(&v) else {
                        return Err(format!("persistentvolume \"{v}\" not found"));
                    };
                    if let Some(req) =
                        pv.spec.as_ref().and_then(|s| s.node_affinity.as_ref()).and_then(|a| a.required.clone())
                    {
                        out.affinities.push(req);
                    }
                }
                _ if self.waits_for_consumer(&c) => {
                    if let Some(n) = annotation(&c.metadata, SELECTED_NODE) {
                        if out.selected.as_deref().is_some_and(|s| s != n) {
                            return Err("its volumes were selected for different nodes".into());
                        }
                        out.selected = Some(n.to_string());
                    }
                    out.to_provision.push(name)
                }
                _ => return Err("pod has unbound immediate PersistentVolumeClaims".into()),
            }
        }
        Ok(out)
    }

    /// Are all the pod's claims bound?
    pub fn all_bound(&self, pod: &Pod) -> bool {
        let ns = pods::namespace(&pod.metadata);
        claim_names(pod).iter().all(|n| self.claim(ns, n).is_some_and(|c| claim_phase(&c) == "Bound"))
    }
}

/// Annotates the claims with the node chosen for their first consumer.
pub async fn select_node(client: &kube::Client, ns: &str, claims: &[String], node: &str) -> kube::Result<()> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let patch = json!({"metadata": {"annotations": {SELECTED_NODE: node}}});
    for c in claims {
        api.patch(c, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    Ok(())
}

/// The binder: runs until the process stops.
pub async fn run(ctx: Arc<Ctx>, v: Volumes, changed: Arc<Notify>) {
    v.wait_until_ready().await;
    let b = Binder { ctx, v, said: Mutex::default() };
    loop {
        for c in b.v.claims.state() {
            if let Err(e) = b.sync_claim(&c).await {
                tracing::warn!("binding claim {}: {e}", pods::name(&c.metadata));
            }
        }
        for pv in b.v.volumes.state() {
            if let Err(e) = b.sync_volume(&pv).await {
                tracing::warn!("volume {}: {e}", pods::name(&pv.metadata));
            }
        }
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

struct Binder {
    ctx: Arc<Ctx>,
    v: Volumes,
    /// Events already recorded (claim uid, reason), so a waiting claim says it once.
    said: Mutex<HashSet<(String, String)>>,
}

fn node_of(ctx: &Ctx, name: &str) -> Option<NodeInfo> {
    ctx.nodes.state().iter().find(|n| pods::name(&n.metadata) == name).map(|n: &Arc<Node>| NodeInfo::from_node(n))
}

impl Binder {
    async fn say(&self, c: &PersistentVolumeClaim, type_: &str, reason: &str, message: String) {
        let key = (pods::uid(&c.metadata).to_string(), reason.to_string());
        if self.said.lock().expect("not poisoned").insert(key) {
            self.ctx.recorder.record(c, type_, reason, message).await;
        }
    }

    fn claims(&self, ns: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.ctx.client.clone(), ns)
    }

    fn volumes(&self) -> Api<PersistentVolume> {
        Api::all(self.ctx.client.clone())
    }

    /// Is `pv` reserved for claim `c` (its claimRef names it)?
    fn reserved_for(pv: &PersistentVolume, c: &PersistentVolumeClaim) -> bool {
        pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| {
            r.namespace.as_deref() == c.metadata.namespace.as_deref()
                && r.name.as_deref() == c.metadata.name.as_deref()
                && r.uid.as_deref().is_none_or(|u| u.is_empty() || Some(u) == c.metadata.uid.as_deref())
        })
    }

    fn matches(pv: &PersistentVolume, c: &PersistentVolumeClaim, class: &str, node: Option<&NodeInfo>) -> bool {
        let (Some(ps), Some(cs)) = (pv.spec.as_ref(), c.spec.as_ref()) else { return false };
        let capacity = ps.capacity.as_ref().and_then(|m| m.get("storage")).map(quantity::units).unwrap_or(0);
        let modes: HashSet<&String> = ps.access_modes.iter().flatten().collect();
        volume_phase(pv) == "Available"
            && ps.claim_ref.is_none()
            && ps.storage_class_name.as_deref().unwrap_or("") == class
            && cs.access_modes.iter().flatten().all(|m| modes.contains(m))
            && capacity >= requested(c)
            && node.is_none_or(|n| {
                ps.node_affinity.as_ref().and_then(|a| a.required.as_ref()).is_none_or(|r| node_selector_matches(r, n))
            })
    }

    async fn sync_claim(&self, c: &PersistentVolumeClaim) -> kube::Result<()> {
        if c.metadata.deletion_timestamp.is_some() {
            return self.release_protection(c).await;
        }
        let name = pods::name(&c.metadata);
        let spec = c.spec.clone().unwrap_or_default();
        let class = spec.storage_class_name.clone().unwrap_or_default();
        if let Some(v) = spec.volume_name.clone().filter(|v| !v.is_empty()) {
            let Some(pv) = self.v.volume(&v) else {
                if claim_phase(c) == "Bound" {
                    self.set_claim_phase(c, "Lost").await?;
                    self.say(
                        c,
                        "Warning",
                        "ClaimLost",
                        "Bound claim has lost its PersistentVolume. Data on the volume is lost!".into(),
                    )
                    .await;
                }
                return Ok(());
            };
            let taken = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref()).is_some_and(|r| {
                r.uid.as_deref().is_some_and(|u| !u.is_empty() && Some(u) != c.metadata.uid.as_deref())
            });
            if taken {
                let msg = format!("volume \"{v}\" already bound to a different claim.");
                self.say(c, "Warning", "FailedBinding", msg).await;
                return Ok(());
            }
            if claim_phase(c) != "Bound" || volume_phase(&pv) != "Bound" {
                return self.bind(&pv, c).await;
            }
            return Ok(());
        }
        let all = self.v.volumes.state();
        if let Some(pv) = all.iter().find(|pv| Self::reserved_for(pv, c)) {
            return self.bind(pv, c).await;
        }
        let selected = annotation(&c.metadata, SELECTED_NODE).map(String::from);
        if self.v.waits_for_consumer(c) && selected.is_none() {
            self.say(
                c,
                "Normal",
                "WaitForFirstConsumer",
                "waiting for first consumer to be created before binding".into(),
            )
            .await;
            return Ok(());
        }
        let node = selected.as_deref().and_then(|n| node_of(&self.ctx, n));
        let best = all.iter().filter(|pv| Self::matches(pv, c, &class, node.as_ref())).min_by_key(|pv| {
            pv.spec.as_ref().and_then(|s| s.capacity.as_ref()).and_then(|m| m.get("storage")).map(quantity::units)
        });
        if let Some(pv) = best {
            return self.bind(pv, c).await;
        }
        let provisioner =
            self.v.class(&class).map(|k| k.provisioner.clone()).filter(|p| p != "kubernetes.io/no-provisioner");
        match provisioner {
            Some(p) => {
                if annotation(&c.metadata, STORAGE_PROVISIONER) != Some(p.as_str()) {
                    let patch =
                        json!({"metadata": {"annotations": {STORAGE_PROVISIONER: p, BETA_STORAGE_PROVISIONER: p}}});
                    self.claims(pods::namespace(&c.metadata))
                        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                }
                let msg = format!("Waiting for a volume to be created either by the external provisioner '{p}' or manually by the system administrator. If volume creation is delayed, please verify that the provisioner is running and correctly registered.");
                self.say(c, "Normal", "ExternalProvisioning", msg).await;
            }
            None => {
                let msg = match class.is_empty() {
                    true => "no persistent volumes available for this claim and no storage class is set".to_string(),
                    false => format!("storageclass.storage.k8s.io \"{class}\" not found"),
                };
                self.say(c, "Normal", "FailedBinding", msg).await;
            }
        }
        Ok(())
    }

    /// pvc-protection: a claim being deleted goes once no pod uses it.
    async fn release_protection(&self, c: &PersistentVolumeClaim) -> kube::Result<()> {
        let fins = c.metadata.finalizers.clone().unwrap_or_default();
        if !fins.iter().any(|f| f == PVC_PROTECTION) {
            return Ok(());
        }
        let ns = pods::namespace(&c.metadata);
        let name = pods::name(&c.metadata);
        let used = crate::informer::in_namespace(&self.ctx.pods, ns)
            .iter()
            .any(|p| !pods::is_terminated(p) && claim_names(p).iter().any(|n| n == name));
        if used {
            return Ok(());
        }
        let rest: Vec<&String> = fins.iter().filter(|f| *f != PVC_PROTECTION).collect();
        let patch = json!({"metadata": {"finalizers": rest, "resourceVersion": c.metadata.resource_version}});
        match self.claims(ns).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn set_claim_phase(&self, c: &PersistentVolumeClaim, phase: &str) -> kube::Result<()> {
        let patch = json!({"status": {"phase": phase}});
        self.claims(pods::namespace(&c.metadata))
            .patch_status(pods::name(&c.metadata), &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Binds `pv` and `c` to each other: the volume's claimRef first (guarded by its
    /// resourceVersion, so two claims cannot both take it), then the claim.
    async fn bind(&self, pv: &PersistentVolume, c: &PersistentVolumeClaim) -> kube::Result<()> {
        let pv_name = pods::name(&pv.metadata);
        let ns = pods::namespace(&c.metadata);
        let cname = pods::name(&c.metadata);
        let ps = pv.spec.clone().unwrap_or_default();
        let claim_ref_ok = ps.claim_ref.as_ref().is_some_and(|r| r.uid.as_deref() == c.metadata.uid.as_deref());
        if !claim_ref_ok {
            let patch = json!({
                "metadata": {"resourceVersion": pv.metadata.resource_version, "annotations": {BOUND_BY_CONTROLLER: "yes"}},
                "spec": {"claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": cname, "uid": c.metadata.uid, "resourceVersion": c.metadata.resource_version}},
            });
            self.volumes().patch(pv_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        if volume_phase(pv) != "Bound" {
            let patch = json!({"status": {"phase": "Bound"}});
            self.volumes().patch_status(pv_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        let cs = c.spec.clone().unwrap_or_default();
        if cs.volume_name.as_deref() != Some(pv_name) || annotation(&c.metadata, BIND_COMPLETED).is_none() {
            let mut ann = BTreeMap::from([(BIND_COMPLETED, "yes")]);
            if cs.volume_name.as_deref().unwrap_or("").is_empty() {
                ann.insert(BOUND_BY_CONTROLLER, "yes");
            }
            let patch = json!({"metadata": {"annotations": ann}, "spec": {"volumeName": pv_name}});
            self.claims(ns).patch(cname, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        if claim_phase(c) != "Bound" {
            let patch = json!({"status": {"phase": "Bound", "accessModes": ps.access_modes, "capacity": ps.capacity}});
            self.claims(ns).patch_status(cname, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        Ok(())
    }

    async fn sync_volume(&self, pv: &PersistentVolume) -> kube::Result<()> {
        if pv.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let name = pods::name(&pv.metadata);
        let spec = pv.spec.clone().unwrap_or_default();
        let phase = volume_phase(pv);
        let set_phase = |phase: &'static str| async move {
            let patch = json!({"status": {"phase": phase}});
            self.volumes().patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
        };
        let Some(r) = spec.claim_ref.as_ref() else {
            return match phase {
                "Available" => Ok(()),
                _ => set_phase("Available").await,
            };
        };
        let claim = self.v.claim(r.namespace.as_deref().unwrap_or(""), r.name.as_deref().unwrap_or(""));
        let uid_matches = |c: &PersistentVolumeClaim| {
            r.uid.as_deref().is_none_or(|u| u.is_empty() || Some(u) == c.metadata.uid.as_deref())
        };
        match claim {
            Some(c) if uid_matches(&c) => {
                // Pre-bound or being bound: the claim's sync completes it.
                Ok(())
            }
            _ if r.uid.is_none() => Ok(()), // reserved for a claim that does not exist yet
            _ => {
                if phase != "Released" && phase != "Failed" {
                    set_phase("Released").await?;
                }
                let reclaim = spec.persistent_volume_reclaim_policy.as_deref().unwrap_or("Retain");
                if reclaim == "Delete" && annotation(&pv.metadata, PROVISIONED_BY).is_none() {
                    self.volumes().delete(name, &Default::default()).await?;
                }
                Ok(())
            }
        }
    }
}
