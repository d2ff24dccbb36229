//! What controllers ask of pods and owner references.

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions};

/// Counts toward a controller's replicas: not terminated and not being deleted.
pub fn is_active(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none() && !is_terminated(p)
}

pub fn is_terminated(p: &Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

pub fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

/// When the pod last became Ready, if it is Ready.
pub fn ready_since(p: &Pod) -> Option<Timestamp> {
    let c = p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| c.last_transition_time.as_ref().map(|t| t.0).unwrap_or(Timestamp::UNIX_EPOCH))
}

pub fn is_ready(p: &Pod) -> bool {
    ready_since(p).is_some()
}

/// Ready for at least `min_ready` seconds at `now`.
pub fn is_available(p: &Pod, min_ready: i32, now: Timestamp) -> bool {
    match ready_since(p) {
        Some(t) => min_ready <= 0 || now.duration_since(t).as_secs() >= min_ready as i64,
        None => false,
    }
}

/// How long until a ready pod becomes available (None: it is, or is not ready).
pub fn available_in(p: &Pod, min_ready: i32, now: Timestamp) -> Option<std::time::Duration> {
    let t = ready_since(p)?;
    let left = min_ready as i64 - now.duration_since(t).as_secs();
    (left > 0).then(|| std::time::Duration::from_secs(left as u64))
}

/// The owner reference marked `controller: true`.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    controller_of(meta).is_some_and(|r| r.uid == uid)
}

/// A controller reference to `owner` (kind and apiVersion of the owner's type).
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod made from `template` in `namespace`, owned by `owner`.
pub fn from_template(template: &PodTemplateSpec, namespace: &str, owner: OwnerReference) -> Pod {
    let tm = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Kubernetes' ranking for scale-down: the pod to delete first sorts first
/// (unassigned, then pending, then not ready, then ready for the shortest time,
/// then most restarts, then newest).
pub fn deletion_order(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    type Newest = std::cmp::Reverse<Option<Timestamp>>;
    fn key(p: &Pod) -> (bool, u8, bool, Newest, std::cmp::Reverse<i32>, Newest) {
        let assigned = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| !n.is_empty());
        let phase = match phase(p) {
            "Pending" => 0,
            "Unknown" => 1,
            _ => 2,
        };
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
            .unwrap_or(0);
        (
            assigned,
            phase,
            is_ready(p),
            std::cmp::Reverse(ready_since(p)),
            std::cmp::Reverse(restarts),
            std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        )
    }
    key(a).cmp(&key(b))
}

/// The value of one annotation.
pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

pub fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

pub fn uid(meta: &ObjectMeta) -> &str {
    meta.uid.as_deref().unwrap_or_default()
}

/// Deletes this very pod (a uid precondition, so a namesake created meanwhile is safe);
/// a pod already gone or replaced is not an error.
pub async fn delete(api: &Api<Pod>, p: &Pod) -> kube::Result<()> {
    let dp = DeleteParams {
        preconditions: Some(Preconditions { uid: p.metadata.uid.clone(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(name(&p.metadata), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
