//! The StatefulSet controller: pods named `<set>-<ordinal>` with stable identities
//! (hostname, the governing Service as subdomain, `statefulset.kubernetes.io/pod-name`)
//! and one PersistentVolumeClaim per volumeClaimTemplate and ordinal
//! (`<template>-<set>-<ordinal>`), kept after the pods and the set go (the default
//! Retain policy). OrderedReady creates pods one at a time in order, each once the
//! previous ones are Running and Ready, and removes them highest ordinal first;
//! Parallel does both at once. Every template is a ControllerRevision; pods carry
//! `controller-revision-hash`, and RollingUpdate replaces pods at or above `partition`
//! from the highest ordinal down, one at a time, while OnDelete waits for the user.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetSpec, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::deployment::template_hash;
use crate::{history, labels, pods, Ctx, Error};

pub const REVISION_LABEL: &str = "controller-revision-hash";
const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// `web-3` -> 3 for a set named `web`.
pub fn ordinal(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok().filter(|o: &i32| *o >= 0 && pod == format!("{set}-{o}"))
}

fn running_and_ready(p: &Pod) -> bool {
    pods::phase(p) == "Running" && pods::is_ready(p) && p.metadata.deletion_timestamp.is_none()
}

fn revision_of(p: &Pod) -> Option<&str> {
    p.metadata.labels.as_ref()?.get(REVISION_LABEL).map(String::as_str)
}

/// The pod for `ordinal` at revision `rev`.
fn new_pod(set: &StatefulSet, spec: &StatefulSetSpec, ordinal: i32, rev: &str) -> Pod {
    let name = format!("{}-{ordinal}", pods::name(&set.metadata));
    let owner = pods::controller_ref("apps/v1", "StatefulSet", &set.metadata);
    let mut pod = pods::from_template(&spec.template, pods::namespace(&set.metadata), owner);
    pod.metadata.name = Some(name.clone());
    let l = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    l.insert(POD_NAME_LABEL.into(), name.clone());
    l.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    l.insert(REVISION_LABEL.into(), rev.into());
    let ps = pod.spec.get_or_insert_with(Default::default);
    ps.hostname = Some(name.clone());
    if let Some(svc) = spec.service_name.clone().filter(|s| !s.is_empty()) {
        ps.subdomain = Some(svc);
    }
    let volumes = ps.volumes.get_or_insert_with(Vec::new);
    for t in spec.volume_claim_templates.iter().flatten() {
        let vname = t.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != vname);
        volumes.push(Volume {
            name: vname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: format!("{vname}-{name}"),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    pod
}

/// Creates the claims of `ordinal` that do not exist yet.
async fn ensure_claims(ctx: &Ctx, set: &StatefulSet, spec: &StatefulSetSpec, ordinal: i32) -> Result<(), Error> {
    let ns = pods::namespace(&set.metadata);
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    for t in spec.volume_claim_templates.iter().flatten() {
        let name =
            format!("{}-{}-{ordinal}", t.metadata.name.as_deref().unwrap_or_default(), pods::name(&set.metadata));
        if api.get_opt(&name).await?.is_some() {
            continue;
        }
        let mut labels = spec.selector.match_labels.clone().unwrap_or_default();
        labels.extend(t.metadata.labels.clone().unwrap_or_default());
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.into()),
                labels: Some(labels),
                annotations: t.metadata.annotations.clone(),
                ..Default::default()
            },
            spec: t.spec.clone(),
            status: None,
        };
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => {
                let msg = format!(
                    "create Claim {name} Pod {}-{ordinal} in StatefulSet {} success",
                    pods::name(&set.metadata),
                    pods::name(&set.metadata)
                );
                ctx.recorder.record(set, "Normal", "SuccessfulCreate", msg).await;
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The ControllerRevision for the current template (created if missing) and all of the set's.
async fn revisions(
    ctx: &Ctx,
    set: &StatefulSet,
    spec: &StatefulSetSpec,
) -> Result<(String, Vec<ControllerRevision>), Error> {
    let collisions = set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
    let name = format!("{}-{}", pods::name(&set.metadata), template_hash(&spec.template, collisions));
    let mut labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), name.clone());
    let revs = history::ensure(ctx, &set.metadata, "StatefulSet", &name, labels, &spec.template).await?;
    Ok((name, revs))
}

pub async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let meta = &set.metadata;
    let (ns, name, uid) = (pods::namespace(meta), pods::name(meta), pods::uid(meta));
    if meta.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = set.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = strategy.rolling_update.as_ref().and_then(|r| r.partition).unwrap_or(0).max(0);
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let (update_rev, revs) = revisions(&ctx, &set, &spec).await?;

    // The set's pods by ordinal (adopting matching orphans with a name of ours).
    let owner = pods::controller_ref("apps/v1", "StatefulSet", meta);
    let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    for p in crate::informer::in_namespace(&ctx.pods, ns) {
        let Some(o) = ordinal(name, pods::name(&p.metadata)) else { continue };
        match pods::controller_of(&p.metadata) {
            Some(r) if r.uid == uid => {}
            None if labels::matches(Some(&spec.selector), p.metadata.labels.as_ref())
                && crate::replicaset::adopt(&pod_api, &p.metadata, &owner).await? => {}
            _ => continue,
        }
        by_ordinal.insert(o, p);
    }

    // Failed pods are replaced.
    for p in by_ordinal.values().filter(|p| pods::phase(p) == "Failed" && p.metadata.deletion_timestamp.is_none()) {
        pods::delete(&pod_api, p).await?;
    }
    // Create missing pods below `replicas`: in order (waiting for each) or all at once.
    let current_rev =
        set.status.as_ref().and_then(|s| s.current_revision.clone()).unwrap_or_else(|| update_rev.clone());
    for o in 0..replicas {
        let blocked = match by_ordinal.get(&o) {
            Some(p) => !running_and_ready(p),
            None => {
                // New pods of a partitioned rollout below the partition keep the current revision.
                let rev = if !on_delete && o < partition { current_rev.clone() } else { update_rev.clone() };
                let template_spec = if rev == update_rev { spec.clone() } else { spec_at(&spec, &revs, &rev) };
                ensure_claims(&ctx, &set, &spec, o).await?;
                let pod = new_pod(&set, &template_spec, o, &rev);
                match pod_api.create(&PostParams::default(), &pod).await {
                    Ok(_) => {
                        let msg = format!("create Pod {name}-{o} in StatefulSet {name} successful");
                        ctx.recorder.record(set.as_ref(), "Normal", "SuccessfulCreate", msg).await;
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
                true
            }
        };
        if blocked && !parallel {
            break;
        }
    }
    // Scale down: the highest ordinals first, one at a time unless Parallel.
    let extra: Vec<Arc<Pod>> = by_ordinal.range(replicas..).rev().map(|(_, p)| p.clone()).collect();
    let all_healthy =
        by_ordinal.range(..replicas).all(|(_, p)| running_and_ready(p)) && by_ordinal.len() as i32 >= replicas;
    for p in &extra {
        if p.metadata.deletion_timestamp.is_some() {
            if parallel {
                continue;
            }
            break;
        }
        if !parallel && !all_healthy {
            break;
        }
        pods::delete(&pod_api, p).await?;
        let msg = format!("delete Pod {} in StatefulSet {name} successful", pods::name(&p.metadata));
        ctx.recorder.record(set.as_ref(), "Normal", "SuccessfulDelete", msg).await;
        if !parallel {
            break;
        }
    }
    // Rolling update: replace the highest out-of-date pod at or above the partition,
    // once everything else is healthy.
    if !on_delete && extra.is_empty() && all_healthy {
        let stale =
            by_ordinal.range(partition..replicas).rev().find(|(_, p)| revision_of(p) != Some(update_rev.as_str()));
        if let Some((_, p)) = stale {
            pods::delete(&pod_api, p).await?;
        }
    }

    // Status.
    let live: Vec<&Arc<Pod>> =
        by_ordinal.values().filter(|p| p.metadata.deletion_timestamp.is_none() && !pods::is_terminated(p)).collect();
    let count = |rev: &str| live.iter().filter(|p| revision_of(p) == Some(rev)).count() as i32;
    let updated = count(&update_rev);
    let current_rev =
        if updated >= replicas && live.len() as i32 == replicas { update_rev.clone() } else { current_rev };
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let status = StatefulSetStatus {
        observed_generation: meta.generation,
        replicas: live.len() as i32,
        ready_replicas: Some(live.iter().filter(|p| pods::is_ready(p)).count() as i32),
        available_replicas: Some(live.iter().filter(|p| pods::is_available(p, min_ready, now)).count() as i32),
        current_replicas: Some(count(&current_rev)),
        updated_replicas: Some(updated),
        current_revision: Some(current_rev),
        update_revision: Some(update_rev),
        collision_count: Some(set.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0)),
        conditions: set.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    if set.status.as_ref() != Some(&status) {
        Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await?;
    }
    // Old revisions beyond the history limit, not used by any pod.
    let limit = spec.revision_history_limit.unwrap_or(10);
    let mut in_use: Vec<String> = live.iter().filter_map(|p| revision_of(p).map(String::from)).collect();
    in_use.extend(status.update_revision.clone());
    in_use.extend(status.current_revision.clone());
    history::trim(&ctx, ns, &revs, &in_use, limit).await;
    let mut next = live.iter().filter_map(|p| pods::available_in(p, min_ready, now)).min();
    // Waiting for a pod to finish terminating: look again even if no event comes.
    if by_ordinal.values().any(|p| p.metadata.deletion_timestamp.is_some()) {
        next = Some(next.map_or(Duration::from_secs(1), |d| d.min(Duration::from_secs(1))));
    }
    Ok(Action::requeue(next.map(|d| d + Duration::from_millis(100)).unwrap_or(Duration::from_secs(300))))
}

/// The set's spec with the template of revision `name` (the current one if unknown).
fn spec_at(spec: &StatefulSetSpec, revs: &[ControllerRevision], name: &str) -> StatefulSetSpec {
    let template = revs.iter().find(|r| pods::name(&r.metadata) == name).and_then(history::template_of);
    StatefulSetSpec { template: template.unwrap_or_else(|| spec.template.clone()), ..spec.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_parse_only_our_names() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-01"), None);
        assert_eq!(ordinal("web", "webx-1"), None);
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "web-1-2"), None);
    }
}
