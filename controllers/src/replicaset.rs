//! The ReplicaSet controller: keeps exactly `spec.replicas` active pods matching the
//! selector, adopting matching orphans and releasing pods that stopped matching;
//! scales down the least useful pods first; reports replicas / fullyLabeled / ready /
//! available and observedGeneration in status.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::{labels, pods, Ctx, Error};

/// At most this many pods are created or deleted in one pass.
const BURST: usize = 500;

pub async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let meta = &rs.metadata;
    let (ns, name, uid) = (pods::namespace(meta), pods::name(meta), pods::uid(meta));
    if meta.deletion_timestamp.is_some() {
        ctx.expectations.forget(uid);
        return Ok(Action::await_change());
    }
    let spec = rs.spec.clone().unwrap_or_default();
    let selector = Some(&spec.selector);
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let owner = pods::controller_ref("apps/v1", "ReplicaSet", meta);

    // Claim: adopt matching orphans, release owned pods that no longer match.
    let mut owned: Vec<Arc<Pod>> = Vec::new();
    // Only our pods and the namespace's orphans are looked at (from the index): a
    // namespace with many ReplicaSets holds mostly pods that are not ours.
    let matches = |p: &Pod| labels::matches(selector, p.metadata.labels.as_ref());
    let ours = ctx.pods_by_controller.controlled_by(uid).into_iter().chain(ctx.pods_by_controller.orphans(ns));
    let candidates =
        ours.filter(|(n, _)| n == ns).filter_map(|(n, name)| ctx.pods.get(&ObjectRef::new(&name).within(&n)));
    for p in candidates {
        match pods::controller_of(&p.metadata) {
            Some(r) if r.uid == uid => {
                if matches(&p) {
                    owned.push(p);
                } else {
                    release(&pod_api, &p.metadata, uid).await?;
                }
            }
            None if pods::is_active(&p) && matches(&p) && adopt(&pod_api, &p.metadata, &owner).await? => owned.push(p),
            _ => {}
        }
    }
    let mut active: Vec<Arc<Pod>> = owned.iter().filter(|p| pods::is_active(p)).cloned().collect();

    // Manage: create or delete the difference, once earlier writes are in the cache.
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let met = ctx.expectations.met(
        uid,
        |n| ctx.pods.get(&ObjectRef::new(n).within(ns)).is_some(),
        |n| ctx.pods.get(&ObjectRef::new(n).within(ns)).is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
    );
    if met && active.len() < want {
        let template = spec.template.clone().unwrap_or_default();
        let n = (want - active.len()).min(BURST);
        // Each pod's event is written in the same turn as its create: written one by one
        // afterwards, 500 events held the ReplicaSet up for seconds under load.
        let creates = (0..n).map(|_| {
            let mut pod = pods::from_template(&template, ns, owner.clone());
            pod.metadata.generate_name = Some(format!("{name}-"));
            let (api, ctx, rs) = (pod_api.clone(), &ctx, &rs);
            async move {
                let p = api.create(&PostParams::default(), &pod).await?;
                let pname = pods::name(&p.metadata).to_string();
                ctx.expectations.created(uid, pname.clone());
                ctx.recorder.record(rs.as_ref(), "Normal", "SuccessfulCreate", format!("Created pod: {pname}")).await;
                Ok::<_, kube::Error>(())
            }
        });
        if let Some(e) = join_all(creates).await.into_iter().find_map(Result::err) {
            ctx.recorder.record(rs.as_ref(), "Warning", "FailedCreate", format!("Error creating: {e}")).await;
            return Err(e.into());
        }
    } else if met && active.len() > want {
        active.sort_by(|a, b| pods::deletion_order(a, b));
        let doomed: Vec<Arc<Pod>> = active.drain(..(active.len() - want).min(BURST)).collect();
        let deletes = doomed.iter().map(|p| {
            let pname = pods::name(&p.metadata).to_string();
            ctx.expectations.deleted(uid, pname.clone());
            let dp = DeleteParams {
                preconditions: Some(Preconditions { uid: p.metadata.uid.clone(), resource_version: None }),
                ..Default::default()
            };
            let (api, ctx, rs) = (&pod_api, &ctx, &rs);
            async move {
                match api.delete(&pname, &dp).await {
                    Ok(_) => {
                        let msg = format!("Deleted pod: {pname}");
                        ctx.recorder.record(rs.as_ref(), "Normal", "SuccessfulDelete", msg).await;
                        Ok(())
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            }
        });
        if let Some(e) = join_all(deletes).await.into_iter().find_map(Result::err) {
            return Err(e.into());
        }
    }

    // Status, written only when it changed.
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let counted: Vec<&Arc<Pod>> = owned.iter().filter(|p| pods::is_active(p)).collect();
    let template_labels = spec.template.as_ref().and_then(|t| t.metadata.as_ref()).and_then(|m| m.labels.clone());
    let fully = counted
        .iter()
        .filter(|p| {
            template_labels.iter().flatten().all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
        })
        .count();
    let status = ReplicaSetStatus {
        replicas: counted.len() as i32,
        fully_labeled_replicas: Some(fully as i32),
        ready_replicas: Some(counted.iter().filter(|p| pods::is_ready(p)).count() as i32),
        available_replicas: Some(counted.iter().filter(|p| pods::is_available(p, min_ready, now)).count() as i32),
        observed_generation: meta.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        ..Default::default()
    };
    if rs.status.as_ref() != Some(&status) {
        let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
        rs_api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status}))).await?;
    }
    // Wake up when a ready pod becomes available.
    let next = counted.iter().filter_map(|p| pods::available_in(p, min_ready, now)).min();
    Ok(match next {
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Adds `owner` as the controller of the object at its current resourceVersion;
/// false if the object changed or went meanwhile.
pub async fn adopt<K>(api: &Api<K>, meta: &ObjectMeta, owner: &OwnerReference) -> Result<bool, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut refs = meta.owner_references.clone().unwrap_or_default();
    refs.push(owner.clone());
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": meta.resource_version}});
    match api.patch(pods::name(meta), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Drops the owner reference to `uid`.
pub async fn release<K>(api: &Api<K>, meta: &ObjectMeta, uid: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let refs: Vec<_> = meta.owner_references.iter().flatten().filter(|r| r.uid != uid).cloned().collect();
    let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": meta.resource_version}});
    match api.patch(pods::name(meta), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
