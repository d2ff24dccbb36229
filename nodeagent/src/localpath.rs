//! The local-path provisioner of Skiff's default StorageClass (`skiff.io/local-path`):
//! for a claim handed to it (`volume.kubernetes.io/storage-provisioner`) whose first
//! consumer was scheduled to one of this agent's nodes
//! (`volume.kubernetes.io/selected-node`), it creates a directory
//! `<root>/<node>/<pv>_<namespace>_<claim>` and a PersistentVolume pre-bound to the
//! claim, of `hostPath` type, with node affinity to that node. A Released volume it
//! made, with reclaim policy Delete, is removed with its directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::reflector::Store;
use serde_json::json;
use skiff_controllers::events::Recorder;
use skiff_controllers::pods::{self, annotation};
use skiff_controllers::volumes::{
    claim_phase, volume_phase, LOCAL_PATH, PROVISIONED_BY, SELECTED_NODE, STORAGE_PROVISIONER,
};

pub struct LocalPath {
    client: kube::Client,
    root: PathBuf,
    nodes: HashSet<String>,
    recorder: Recorder,
}

/// The node a volume is pinned to (its `kubernetes.io/hostname In [node]` affinity).
fn pinned_node(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    terms.iter().flat_map(|t| t.match_expressions.iter().flatten()).find_map(|e| {
        (e.key == "kubernetes.io/hostname" && e.operator == "In").then(|| e.values.as_ref()?.first().cloned()).flatten()
    })
}

impl LocalPath {
    pub fn new(client: kube::Client, root: PathBuf, nodes: HashSet<String>) -> LocalPath {
        let recorder = Recorder::new(client.clone(), "skiff.io/local-path");
        // hostPath volumes need absolute paths.
        let root = std::path::absolute(&root).unwrap_or(root);
        LocalPath { client, root, nodes, recorder }
    }

    /// One pass over claims and volumes.
    pub async fn sync(&self, claims: &Store<PersistentVolumeClaim>, volumes: &Store<PersistentVolume>) {
        let existing: HashSet<String> = volumes.state().iter().map(|v| pods::name(&v.metadata).to_string()).collect();
        for c in claims.state() {
            let node = annotation(&c.metadata, SELECTED_NODE).unwrap_or("");
            let wanted = annotation(&c.metadata, STORAGE_PROVISIONER) == Some(LOCAL_PATH)
                && self.nodes.contains(node)
                && c.metadata.deletion_timestamp.is_none()
                && claim_phase(&c) == "Pending"
                && c.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or("").is_empty();
            if wanted && !existing.contains(&format!("pvc-{}", pods::uid(&c.metadata))) {
                if let Err(e) = self.provision(&c, node).await {
                    tracing::warn!("provisioning a volume for claim {}: {e:#}", pods::name(&c.metadata));
                    let msg = format!("failed to provision volume with StorageClass: {e:#}");
                    self.recorder.record(c.as_ref(), "Warning", "ProvisioningFailed", msg).await;
                }
            }
        }
        for pv in volumes.state() {
            let mine = annotation(&pv.metadata, PROVISIONED_BY) == Some(LOCAL_PATH)
                && pinned_node(&pv).is_some_and(|n| self.nodes.contains(&n));
            let reclaim = pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref());
            if mine
                && volume_phase(&pv) == "Released"
                && reclaim == Some("Delete")
                && pv.metadata.deletion_timestamp.is_none()
            {
                if let Err(e) = self.delete(&pv).await {
                    tracing::warn!("deleting volume {}: {e:#}", pods::name(&pv.metadata));
                }
            }
        }
    }

    async fn provision(&self, c: &PersistentVolumeClaim, node: &str) -> anyhow::Result<()> {
        let ns = pods::namespace(&c.metadata);
        let name = pods::name(&c.metadata);
        let pv_name = format!("pvc-{}", pods::uid(&c.metadata));
        let spec = c.spec.clone().unwrap_or_default();
        let class_name = spec.storage_class_name.clone().unwrap_or_default();
        let class = Api::<StorageClass>::all(self.client.clone()).get_opt(&class_name).await?;
        let reclaim = class.and_then(|k| k.reclaim_policy).unwrap_or_else(|| "Delete".into());
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .ok_or_else(|| anyhow::anyhow!("the claim requests no storage"))?;
        let dir = self.root.join(node).join(format!("{pv_name}_{ns}_{name}"));
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: LOCAL_PATH}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.access_modes,
                "persistentVolumeReclaimPolicy": reclaim,
                "storageClassName": class_name,
                "volumeMode": "Filesystem",
                "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": ns, "name": name, "uid": c.metadata.uid},
                "hostPath": {"path": dir, "type": "DirectoryOrCreate"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                ]}]}},
            },
        }))?;
        match Api::<PersistentVolume>::all(self.client.clone()).create(&PostParams::default(), &pv).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let msg = format!("Successfully provisioned volume {pv_name}");
        self.recorder.record(c, "Normal", "ProvisioningSucceeded", msg).await;
        Ok(())
    }

    async fn delete(&self, pv: &PersistentVolume) -> anyhow::Result<()> {
        let path = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()).map(|h| PathBuf::from(&h.path));
        // Only ever remove a directory this provisioner made, under its root.
        if let Some(dir) = path.filter(|p| self.owns(p)) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => anyhow::bail!("cannot remove {}: {e}", dir.display()),
            }
        }
        match Api::<PersistentVolume>::all(self.client.clone())
            .delete(pods::name(&pv.metadata), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Is `p` a volume directory of this provisioner: `<root>/<one of our nodes>/pvc-...`?
    fn owns(&self, p: &Path) -> bool {
        let plain =
            p.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::RootDir));
        let node = p.parent().filter(|n| n.parent() == Some(self.root.as_path())).and_then(|n| n.file_name());
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        plain && node.is_some_and(|n| self.nodes.contains(n.to_string_lossy().as_ref())) && name.starts_with("pvc-")
    }
}
