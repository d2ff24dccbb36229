//! The Deployment controller: one ReplicaSet per pod template (named
//! `<deployment>-<pod-template-hash>`), numbered by the `deployment.kubernetes.io/revision`
//! annotation, so `kubectl rollout history|undo` work on what it leaves. A rolling
//! update scales the new ReplicaSet up within `maxSurge` and the old ones down while
//! at least `replicas - maxUnavailable` pods stay available; Recreate scales the old
//! ones to zero first. Old ReplicaSets beyond `revisionHistoryLimit` are deleted.
//! Status carries the Available and Progressing conditions `kubectl rollout status`
//! reads. Scaling in the middle of a rollout (or while paused with several ReplicaSets
//! up) is proportional: each active ReplicaSet grows or shrinks by its share, from the
//! `max-replicas` annotation it was last sized against, the rest going to the largest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use serde_json::json;

use crate::replicaset::adopt;
use crate::{labels, pods, Ctx, Error};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH: &str = "pod-template-hash";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations of the Deployment not copied to its ReplicaSets.
const NOT_COPIED: [&str; 3] =
    ["kubectl.kubernetes.io/last-applied-configuration", REVISION, "deployment.kubernetes.io/revision-history"];

/// `maxSurge` and `maxUnavailable` as pod counts (surge rounds up, unavailable down;
/// both zero would deadlock, so unavailable becomes 1).
pub fn fenceposts(spec: &DeploymentSpec, replicas: i32) -> (i32, i32) {
    let strategy = spec.strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() == Some("Recreate") {
        return (0, 0);
    }
    let ru = strategy.rolling_update.unwrap_or_default();
    let resolve = |v: Option<IntOrString>, up: bool| -> i32 {
        match v {
            Some(IntOrString::Int(i)) => i,
            Some(IntOrString::String(s)) => {
                let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
                let x = pct * replicas as i64;
                (if up { (x + 99) / 100 } else { x / 100 }) as i32
            }
            None => {
                let x = 25 * replicas as i64;
                (if up { (x + 99) / 100 } else { x / 100 }) as i32
            }
        }
    };
    let surge = resolve(ru.max_surge, true);
    let unavailable = resolve(ru.max_unavailable, false);
    if surge == 0 && unavailable == 0 {
        return (0, 1);
    }
    (surge, unavailable)
}

/// FNV-1a (32 bit) of the template, written with Kubernetes' safe alphabet.
pub fn template_hash(t: &PodTemplateSpec, collisions: i32) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let data = serde_json::to_vec(t).expect("templates serialize");
    for b in data.iter().chain(collisions.to_string().as_bytes()) {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string().bytes().map(|d| ALPHABET[d as usize % ALPHABET.len()] as char).collect()
}

fn without_hash(t: &PodTemplateSpec) -> serde_json::Value {
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(HASH);
        if l.is_empty() {
            t.metadata.as_mut().expect("has metadata").labels = None;
        }
    }
    let mut v = serde_json::to_value(t).expect("templates serialize");
    if v["metadata"].as_object().is_some_and(|m| m.is_empty()) {
        v.as_object_mut().expect("object").remove("metadata");
    }
    v
}

pub fn same_template(rs: &ReplicaSet, t: &PodTemplateSpec) -> bool {
    rs.spec.as_ref().and_then(|s| s.template.as_ref()).is_some_and(|rt| without_hash(rt) == without_hash(t))
}

pub fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map(|s| s.replicas).unwrap_or(0)
}

fn annotation_i32(rs: &ReplicaSet, key: &str) -> Option<i32> {
    rs.metadata.annotations.as_ref()?.get(key)?.parse().ok()
}

/// Proportional scaling: the active ReplicaSets' `(size, max-replicas annotation)`,
/// oldest first, and the total now allowed (replicas + maxSurge); returns their new
/// sizes. Each moves by round(size * allowed / its max) - size, bounded by what is
/// left to add or remove; the remainder goes to the largest (newest on ties when
/// growing, oldest when shrinking).
pub fn proportional(active: &[(i32, i32)], allowed: i32) -> Vec<i32> {
    let total: i32 = active.iter().map(|a| a.0).sum();
    let to_add = allowed - total;
    let mut out: Vec<i32> = active.iter().map(|a| a.0).collect();
    if to_add == 0 || active.is_empty() {
        return out;
    }
    let mut order: Vec<usize> = (0..active.len()).collect();
    if to_add > 0 {
        order.sort_by_key(|i| (std::cmp::Reverse(active[*i].0), std::cmp::Reverse(*i)));
    } else {
        order.sort_by_key(|i| (std::cmp::Reverse(active[*i].0), *i));
    }
    let mut added = 0;
    for &i in &order {
        let (size, max) = active[i];
        let share = if max > 0 { ((size as f64 * allowed as f64) / max as f64).round() as i32 - size } else { 0 };
        let left = to_add - added;
        let step = if to_add > 0 { share.clamp(0, left) } else { share.clamp(left, 0) };
        out[i] += step;
        added += step;
    }
    out[order[0]] += to_add - added;
    for v in &mut out {
        *v = (*v).max(0);
    }
    out
}

/// How big the new ReplicaSet may be now, given all ReplicaSets' sizes.
pub fn new_rs_target(replicas: i32, surge: i32, new_current: i32, all_current: i32) -> i32 {
    if new_current > replicas {
        return replicas;
    }
    let max_total = replicas + surge;
    if all_current >= max_total {
        return new_current;
    }
    replicas.min(new_current + (max_total - all_current))
}

/// How many old pods may go now: old ReplicaSets' `(spec, available)` oldest first;
/// returns their new sizes. Unhealthy (unavailable) old pods go first, then
/// available ones as long as `min_available` pods stay available.
pub fn old_rs_targets(
    olds: &[(i32, i32)],
    min_available: i32,
    all_current: i32,
    new_unavailable: i32,
    total_available: i32,
) -> Vec<i32> {
    let mut sizes: Vec<i32> = olds.iter().map(|(s, _)| *s).collect();
    let mut budget = all_current - min_available - new_unavailable;
    if budget <= 0 {
        return sizes;
    }
    for (i, (s, a)) in olds.iter().enumerate() {
        let unhealthy = (s - a).max(0);
        let down = unhealthy.min(budget);
        sizes[i] -= down;
        budget -= down;
    }
    let mut can = (total_available - min_available).min(budget);
    for size in sizes.iter_mut() {
        if can <= 0 {
            break;
        }
        let down = (*size).min(can);
        *size -= down;
        can -= down;
    }
    sizes
}

pub async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let meta = &d.metadata;
    let (ns, name, uid) = (pods::namespace(meta), pods::name(meta), pods::uid(meta));
    if meta.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), ns);
    let owner = pods::controller_ref("apps/v1", "Deployment", meta);

    let mut rss: Vec<ReplicaSet> = Vec::new();
    for rs in crate::informer::in_namespace(&ctx.replicasets, ns) {
        if rs.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match pods::controller_of(&rs.metadata) {
            Some(r) if r.uid == uid => rss.push((*rs).clone()),
            None if labels::matches(Some(&spec.selector), rs.metadata.labels.as_ref())
                && adopt(&rs_api, &rs.metadata, &owner).await? =>
            {
                rss.push((*rs).clone())
            }
            _ => {}
        }
    }
    rss.sort_by_key(|rs| (rs.metadata.creation_timestamp.as_ref().map(|t| t.0), pods::name(&rs.metadata).to_string()));
    let template = spec.template.clone();
    let max_rev = rss.iter().map(revision).max().unwrap_or(0);
    let (surge, unavailable) = fenceposts(&spec, replicas);
    let paused = spec.paused == Some(true);

    let mut created = false;
    let new_idx = match rss.iter().position(|rs| same_template(rs, &template)) {
        Some(i) => {
            // A rollback to an old template makes its ReplicaSet the newest revision.
            if revision(&rss[i]) < max_rev || revision(&rss[i]) == 0 {
                let rev = (max_rev + 1).max(1).to_string();
                let mut ann = copied_annotations(meta);
                ann.insert(REVISION.into(), rev);
                let p = json!({"metadata": {"annotations": ann}});
                rss[i] = rs_api.patch(pods::name(&rss[i].metadata), &PatchParams::default(), &Patch::Merge(&p)).await?;
            }
            Some(i)
        }
        None if paused => None,
        None => {
            let olds_busy = rss.iter().any(|rs| spec_replicas(rs) > 0 || status_replicas(rs) > 0);
            let all: i32 = rss.iter().map(spec_replicas).sum();
            let initial = match spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) {
                Some("Recreate") if olds_busy => 0,
                Some("Recreate") => replicas,
                _ => new_rs_target(replicas, surge, 0, all),
            };
            let collisions = d.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0);
            let rs = new_replica_set(&d, &spec, &template, collisions, max_rev + 1, initial, surge, owner.clone());
            let rs_name = pods::name(&rs.metadata).to_string();
            match rs_api.create(&PostParams::default(), &rs).await {
                Ok(rs) => {
                    ctx.recorder
                        .record(
                            d.as_ref(),
                            "Normal",
                            "ScalingReplicaSet",
                            format!("Scaled up replica set {rs_name} from 0 to {initial}"),
                        )
                        .await;
                    rss.push(rs);
                    created = true;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // Ours but not yet in the cache, or a hash collision.
                    let existing = rs_api.get(&rs_name).await?;
                    if !(same_template(&existing, &template) && pods::controlled_by(&existing.metadata, uid)) {
                        let p = json!({"status": {"collisionCount": collisions + 1}});
                        Api::<Deployment>::namespaced(ctx.client.clone(), ns)
                            .patch_status(name, &PatchParams::default(), &Patch::Merge(&p))
                            .await?;
                    }
                    return Ok(Action::requeue(Duration::from_millis(200)));
                }
                Err(e) => return Err(e.into()),
            }
            Some(rss.len() - 1)
        }
    };

    // A change of replicas while several ReplicaSets are up: proportional scaling first.
    let active: Vec<usize> = (0..rss.len()).filter(|i| spec_replicas(&rss[*i]) > 0).collect();
    let rolling_update = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("Recreate");
    let resized = active.iter().any(|i| annotation_i32(&rss[*i], DESIRED) != Some(replicas));
    if active.len() > 1 && rolling_update && resized {
        let sizes: Vec<(i32, i32)> =
            active.iter().map(|i| (spec_replicas(&rss[*i]), annotation_i32(&rss[*i], MAX).unwrap_or(0))).collect();
        let allowed = if paused { replicas } else { replicas + surge };
        let targets = proportional(&sizes, allowed);
        for (i, to) in active.into_iter().zip(targets) {
            scale(&ctx, &d, &rs_api, &mut rss[i], to, allowed).await?;
            if spec_replicas(&rss[i]) == to && annotation_i32(&rss[i], DESIRED) != Some(replicas) {
                // Same size, new desired count: only the annotations change.
                let p = json!({"metadata": {"annotations": {DESIRED: replicas.to_string(), MAX: allowed.to_string()}}});
                rss[i] = rs_api.patch(pods::name(&rss[i].metadata), &PatchParams::default(), &Patch::Merge(&p)).await?;
            }
        }
    }

    if let Some(n) = new_idx {
        if paused {
            // Scaling while paused resizes the current ReplicaSet.
            if spec_replicas(&rss[n]) != replicas
                && rss.iter().enumerate().all(|(i, rs)| i == n || spec_replicas(rs) == 0)
            {
                scale(&ctx, &d, &rs_api, &mut rss[n], replicas, replicas + surge).await?;
            }
        } else if spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate") {
            recreate(&ctx, &d, &rs_api, &mut rss, n, replicas).await?;
        } else {
            rolling(&ctx, &d, &rs_api, &mut rss, n, replicas, surge, unavailable).await?;
        }
        cleanup(&rs_api, &rss, n, spec.revision_history_limit.unwrap_or(10)).await?;
        // The Deployment shows the revision it runs.
        let rev = revision(&rss[n]).to_string();
        if meta.annotations.as_ref().and_then(|a| a.get(REVISION)) != Some(&rev) {
            let p = json!({"metadata": {"annotations": {REVISION: rev}}});
            Api::<Deployment>::namespaced(ctx.client.clone(), ns)
                .patch(name, &PatchParams::default(), &Patch::Merge(&p))
                .await?;
        }
    }

    let (status, recheck) = status(&d, &rss, new_idx, replicas, unavailable, paused, created);
    if d.status.as_ref() != Some(&status) {
        Api::<Deployment>::namespaced(ctx.client.clone(), ns)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await?;
    }
    Ok(Action::requeue(recheck.unwrap_or(Duration::from_secs(300))))
}

fn copied_annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations
        .iter()
        .flatten()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn new_replica_set(
    d: &Deployment,
    spec: &DeploymentSpec,
    template: &PodTemplateSpec,
    collisions: i32,
    revision: i64,
    replicas: i32,
    surge: i32,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> ReplicaSet {
    let hash = template_hash(template, collisions);
    let mut t = template.clone();
    let tm = t.metadata.get_or_insert_with(Default::default);
    tm.labels.get_or_insert_with(Default::default).insert(HASH.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector.match_labels.get_or_insert_with(Default::default).insert(HASH.into(), hash.clone());
    let mut ann = copied_annotations(&d.metadata);
    ann.insert(REVISION.into(), revision.to_string());
    ann.insert(DESIRED.into(), spec.replicas.unwrap_or(1).to_string());
    ann.insert(MAX.into(), (spec.replicas.unwrap_or(1) + surge).to_string());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", pods::name(&d.metadata))),
            namespace: d.metadata.namespace.clone(),
            labels: tm.labels.clone(),
            annotations: Some(ann),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(t),
        }),
        status: None,
    }
}

async fn scale(
    ctx: &Ctx,
    d: &Deployment,
    api: &Api<ReplicaSet>,
    rs: &mut ReplicaSet,
    to: i32,
    max: i32,
) -> Result<(), Error> {
    let from = spec_replicas(rs);
    if from == to {
        return Ok(());
    }
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let p = json!({"metadata": {"annotations": {DESIRED: replicas.to_string(), MAX: max.to_string()}}, "spec": {"replicas": to}});
    *rs = api.patch(pods::name(&rs.metadata), &PatchParams::default(), &Patch::Merge(&p)).await?;
    let dir = if to > from { "up" } else { "down" };
    let msg = format!("Scaled {dir} replica set {} from {from} to {to}", pods::name(&rs.metadata));
    ctx.recorder.record(d, "Normal", "ScalingReplicaSet", msg).await;
    Ok(())
}

async fn recreate(
    ctx: &Ctx,
    d: &Deployment,
    api: &Api<ReplicaSet>,
    rss: &mut [ReplicaSet],
    n: usize,
    replicas: i32,
) -> Result<(), Error> {
    let mut busy = false;
    for (i, rs) in rss.iter_mut().enumerate() {
        if i != n && spec_replicas(rs) > 0 {
            scale(ctx, d, api, rs, 0, replicas).await?;
            busy = true;
        }
        busy |= i != n && status_replicas(rs) > 0;
    }
    if !busy {
        scale(ctx, d, api, &mut rss[n], replicas, replicas).await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn rolling(
    ctx: &Ctx,
    d: &Deployment,
    api: &Api<ReplicaSet>,
    rss: &mut [ReplicaSet],
    n: usize,
    replicas: i32,
    surge: i32,
    unavailable: i32,
) -> Result<(), Error> {
    let all: i32 = rss.iter().map(spec_replicas).sum();
    let target = new_rs_target(replicas, surge, spec_replicas(&rss[n]), all);
    scale(ctx, d, api, &mut rss[n], target, replicas + surge).await?;

    let olds: Vec<usize> = (0..rss.len()).filter(|i| *i != n && spec_replicas(&rss[*i]) > 0).collect();
    if olds.is_empty() {
        return Ok(());
    }
    let all: i32 = rss.iter().map(spec_replicas).sum();
    let new_unavailable = (spec_replicas(&rss[n]) - available(&rss[n])).max(0);
    let total_available: i32 = rss.iter().map(available).sum();
    let sizes: Vec<(i32, i32)> = olds.iter().map(|i| (spec_replicas(&rss[*i]), available(&rss[*i]))).collect();
    let targets = old_rs_targets(&sizes, replicas - unavailable, all, new_unavailable, total_available);
    for (i, to) in olds.into_iter().zip(targets) {
        scale(ctx, d, api, &mut rss[i], to, replicas + surge).await?;
    }
    Ok(())
}

/// Deletes empty old ReplicaSets beyond the history limit, oldest revision first.
async fn cleanup(api: &Api<ReplicaSet>, rss: &[ReplicaSet], n: usize, limit: i32) -> Result<(), Error> {
    let mut empty: Vec<&ReplicaSet> = rss
        .iter()
        .enumerate()
        .filter(|(i, rs)| *i != n && spec_replicas(rs) == 0 && status_replicas(rs) == 0)
        .map(|(_, rs)| rs)
        .collect();
    empty.sort_by_key(|rs| revision(rs));
    let extra = empty.len().saturating_sub(limit.max(0) as usize);
    for rs in &empty[..extra] {
        match api.delete(pods::name(&rs.metadata), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn condition(
    old: Option<&DeploymentCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    progressed: bool,
) -> DeploymentCondition {
    let now = Time(Timestamp::now());
    let same = old.is_some_and(|o| o.status == status && o.reason.as_deref() == Some(reason));
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: if same && !progressed {
            old.and_then(|o| o.last_update_time.clone())
        } else {
            Some(now.clone())
        },
        last_transition_time: if old.is_some_and(|o| o.status == status) {
            old.and_then(|o| o.last_transition_time.clone())
        } else {
            Some(now)
        },
    }
}

/// The status to report, and when to look again (for the progress deadline).
fn status(
    d: &Deployment,
    rss: &[ReplicaSet],
    new_idx: Option<usize>,
    replicas: i32,
    max_unavailable: i32,
    paused: bool,
    created: bool,
) -> (DeploymentStatus, Option<Duration>) {
    let old = d.status.clone().unwrap_or_default();
    let sum = |f: fn(&ReplicaSet) -> i32| rss.iter().map(f).sum::<i32>();
    let total = sum(status_replicas);
    let ready = sum(|rs| rs.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0));
    let avail = sum(available);
    let updated = new_idx.map(|n| status_replicas(&rss[n])).unwrap_or(0);
    let new_name = new_idx.map(|n| pods::name(&rss[n].metadata).to_string()).unwrap_or_default();
    let progressed = old.replicas != Some(total)
        || old.updated_replicas != Some(updated)
        || old.available_replicas != Some(avail)
        || old.ready_replicas != Some(ready);
    let find = |t: &str| old.conditions.iter().flatten().find(|c| c.type_ == t);

    let available_cond = if avail >= replicas - max_unavailable {
        condition(
            find("Available"),
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            false,
        )
    } else {
        condition(
            find("Available"),
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            false,
        )
    };
    let complete = updated == replicas && avail == replicas && total == replicas;
    let deadline = d.spec.as_ref().and_then(|s| s.progress_deadline_seconds).unwrap_or(600) as i64;
    let prev = find("Progressing");
    let mut recheck = None;
    let progressing = if paused {
        condition(prev, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused".into(), false)
    } else if complete {
        condition(
            prev,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            false,
        )
    } else if created {
        condition(
            prev,
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{new_name}\""),
            true,
        )
    } else {
        let since =
            prev.and_then(|c| c.last_update_time.as_ref()).map(|t| Timestamp::now().duration_since(t.0).as_secs());
        let stalled = !progressed
            && prev.is_some_and(|c| {
                c.reason.as_deref() != Some("NewReplicaSetAvailable") && c.reason.as_deref() != Some("DeploymentPaused")
            })
            && since.is_some_and(|s| s > deadline);
        if stalled || prev.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")) && !progressed {
            condition(
                prev,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                false,
            )
        } else {
            let left = deadline - if progressed { 0 } else { since.unwrap_or(0) };
            recheck = Some(Duration::from_secs(left.max(0) as u64 + 1));
            condition(
                prev,
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{new_name}\" is progressing."),
                progressed,
            )
        }
    };
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(avail),
        unavailable_replicas: Some((replicas - avail).max(0)),
        collision_count: old.collision_count,
        conditions: Some(vec![available_cond, progressing]),
        ..Default::default()
    };
    (status, recheck)
}

#[cfg(test)]
mod tests {
    #[test]
    fn proportional_scaling_shares_by_size() {
        // Kubernetes' documented example: 10 replicas (surge 3) mid-rollout, 8 old and
        // 5 new, scaled to 15 (allowed 18): +5 split 3 to the old, 2 to the new.
        assert_eq!(super::proportional(&[(8, 13), (5, 13)], 18), vec![11, 7]);
        // Scaled down to 5 (allowed 6).
        assert_eq!(super::proportional(&[(8, 13), (5, 13)], 6), vec![4, 2]);
        // Without annotations everything goes to the largest.
        assert_eq!(super::proportional(&[(2, 0), (3, 0)], 10), vec![2, 8]);
        assert_eq!(super::proportional(&[(4, 6), (2, 6)], 6), vec![4, 2], "nothing to change");
    }

    use super::*;

    #[test]
    fn fenceposts_round_like_kubernetes() {
        let mut spec = DeploymentSpec::default();
        assert_eq!(fenceposts(&spec, 10), (3, 2), "25% surge rounds up, 25% unavailable down");
        assert_eq!(fenceposts(&spec, 1), (1, 0));
        spec.strategy = Some(k8s_openapi::api::apps::v1::DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(0)),
                max_unavailable: Some(IntOrString::String("0%".into())),
            }),
        });
        assert_eq!(fenceposts(&spec, 10), (0, 1), "never both zero");
    }

    #[test]
    fn rolling_update_arithmetic_keeps_availability() {
        // 3 replicas, surge 1, unavailable 0: the new one grows by one at a time.
        assert_eq!(new_rs_target(3, 1, 0, 3), 1);
        assert_eq!(new_rs_target(3, 1, 1, 4), 1, "at the surge limit");
        assert_eq!(new_rs_target(3, 1, 5, 5), 3, "too big: back to replicas");
        // Old RS of 3 all available, new of 1 not yet available: nothing may go.
        assert_eq!(old_rs_targets(&[(3, 3)], 3, 4, 1, 3), vec![3]);
        // New one available: one old may go.
        assert_eq!(old_rs_targets(&[(3, 3)], 3, 4, 0, 4), vec![2]);
        // Unavailable old pods go first, without touching availability.
        assert_eq!(old_rs_targets(&[(3, 1)], 2, 4, 1, 1), vec![2]);
    }

    #[test]
    fn hashes_are_stable_and_ignore_the_hash_label() {
        let t: PodTemplateSpec = serde_json::from_value(
            json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        )
        .unwrap();
        assert_eq!(template_hash(&t, 0), template_hash(&t.clone(), 0));
        assert_ne!(template_hash(&t, 0), template_hash(&t, 1));
        assert!(template_hash(&t, 0).chars().all(|c| c.is_ascii_alphanumeric()));
        let mut labelled = t.clone();
        labelled.metadata.as_mut().unwrap().labels.as_mut().unwrap().insert(HASH.into(), "x".into());
        let rs = ReplicaSet {
            spec: Some(ReplicaSetSpec { template: Some(labelled), ..Default::default() }),
            ..Default::default()
        };
        assert!(same_template(&rs, &t));
    }
}
