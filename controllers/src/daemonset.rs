//! The DaemonSet controller: one pod on every node its template fits (nodeSelector,
//! required node affinity, taints it tolerates), pinned there through node affinity
//! on `metadata.name` so the scheduler binds it; pods on nodes that stop fitting go.
//! Daemon pods tolerate the node-condition taints, as Kubernetes gives them. A
//! RollingUpdate replaces pods of an older template (`controller-revision-hash`) one
//! node at a time within `maxUnavailable`; OnDelete waits for the user.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, Toleration,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::deployment::template_hash;
use crate::nodelifecycle::tolerates;
use crate::scheduler::{node_affinity_ok, NodeInfo};
use crate::statefulset::REVISION_LABEL;
use crate::{history, pods, Ctx, Error};

/// The tolerations every daemon pod gets.
fn daemon_tolerations() -> Vec<Toleration> {
    let t = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        t("node.kubernetes.io/not-ready", "NoExecute"),
        t("node.kubernetes.io/unreachable", "NoExecute"),
        t("node.kubernetes.io/disk-pressure", "NoSchedule"),
        t("node.kubernetes.io/memory-pressure", "NoSchedule"),
        t("node.kubernetes.io/pid-pressure", "NoSchedule"),
        t("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// A pod of the set's template with the daemon tolerations, on no node yet.
fn template_pod(ds: &DaemonSet, hash: &str) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let mut pod = pods::from_template(
        &spec.template,
        pods::namespace(&ds.metadata),
        pods::controller_ref("apps/v1", "DaemonSet", &ds.metadata),
    );
    pod.metadata.generate_name = Some(format!("{}-", pods::name(&ds.metadata)));
    pod.metadata.labels.get_or_insert_with(BTreeMap::new).insert(REVISION_LABEL.into(), hash.into());
    let tols = pod.spec.get_or_insert_with(Default::default).tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations() {
        if !tols.iter().any(|x| x.key == t.key && x.effect == t.effect) {
            tols.push(t);
        }
    }
    pod
}

/// The daemon pod for `node`: the template pod pinned there (the pin is added to each
/// of the template's required node-affinity terms, as Kubernetes does).
fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let mut pod = template_pod(ds, hash);
    let pin =
        NodeSelectorRequirement { key: "metadata.name".into(), operator: "In".into(), values: Some(vec![node.into()]) };
    let ps = pod.spec.get_or_insert_with(Default::default);
    let na = ps.affinity.get_or_insert_with(Affinity::default).node_affinity.get_or_insert_with(NodeAffinity::default);
    match na.required_during_scheduling_ignored_during_execution.as_mut() {
        Some(sel) if !sel.node_selector_terms.is_empty() => {
            for t in sel.node_selector_terms.iter_mut() {
                t.match_fields = Some(vec![pin.clone()]);
            }
        }
        _ => {
            let term = NodeSelectorTerm { match_fields: Some(vec![pin]), match_expressions: None };
            na.required_during_scheduling_ignored_during_execution =
                Some(NodeSelector { node_selector_terms: vec![term] });
        }
    }
    pod
}

/// The node a daemon pod is for: where it runs, or where its affinity pins it.
fn node_of(p: &Pod) -> Option<String> {
    let spec = p.spec.as_ref()?;
    if let Some(n) = spec.node_name.clone().filter(|n| !n.is_empty()) {
        return Some(n);
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

pub async fn reconcile(ds: Arc<DaemonSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let meta = &ds.metadata;
    let (ns, name, uid) = (pods::namespace(meta), pods::name(meta), pods::uid(meta));
    if meta.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = ds.spec.clone().unwrap_or_default();
    let hash = template_hash(&spec.template, ds.status.as_ref().and_then(|s| s.collision_count).unwrap_or(0));
    // The template's ControllerRevision (`kubectl rollout history|undo ds`).
    let mut rev_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    rev_labels.insert(REVISION_LABEL.into(), hash.clone());
    let rev_name = format!("{name}-{hash}");
    let revs = history::ensure(&ctx, meta, "DaemonSet", &rev_name, rev_labels, &spec.template).await?;
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    // What a pod of this set would look like, to test nodes against.
    let probe = template_pod(&ds, &hash);
    let fits = |n: &NodeInfo| {
        let tols = probe.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
        node_affinity_ok(&probe, n)
            && n.taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| tols.iter().any(|tol| tolerates(tol, t)))
    };
    let nodes: BTreeMap<String, bool> = ctx
        .nodes
        .state()
        .iter()
        .map(|n| (pods::name(&n.metadata).to_string(), fits(&NodeInfo::from_node(n))))
        .collect();
    let mut by_node: BTreeMap<String, Vec<Arc<Pod>>> = BTreeMap::new();
    let mut owned = Vec::new();
    for p in crate::informer::in_namespace(&ctx.pods, ns).into_iter().filter(|p| pods::controlled_by(&p.metadata, uid))
    {
        owned.push(p.clone());
        if pods::is_active(&p) {
            by_node.entry(node_of(&p).unwrap_or_default()).or_default().push(p);
        }
    }
    let met = ctx.expectations.met(
        uid,
        |n| ctx.pods.get(&ObjectRef::new(n).within(ns)).is_some(),
        |n| ctx.pods.get(&ObjectRef::new(n).within(ns)).is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
    );
    let mut changed = false;
    if met {
        for (node, fit) in &nodes {
            let here = by_node.get(node).cloned().unwrap_or_default();
            if *fit && here.is_empty() {
                let p = pod_api.create(&PostParams::default(), &pod_for(&ds, node, &hash)).await?;
                ctx.expectations.created(uid, pods::name(&p.metadata).to_string());
                ctx.recorder
                    .record(
                        ds.as_ref(),
                        "Normal",
                        "SuccessfulCreate",
                        format!("Created pod: {}", pods::name(&p.metadata)),
                    )
                    .await;
                changed = true;
            }
            let keep = usize::from(*fit);
            for p in here.iter().skip(keep) {
                ctx.expectations.deleted(uid, pods::name(&p.metadata).to_string());
                pods::delete(&pod_api, p).await?;
                changed = true;
            }
        }
        // Pods for nodes that are gone.
        for (node, here) in &by_node {
            if !nodes.contains_key(node) {
                for p in here {
                    pods::delete(&pod_api, p).await?;
                    changed = true;
                }
            }
        }
    }
    // Rolling update: replace old pods while at most maxUnavailable are unavailable.
    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let desired = nodes.values().filter(|f| **f).count() as i32;
    let scheduled: Vec<&Arc<Pod>> =
        nodes.iter().filter(|(_, f)| **f).filter_map(|(n, _)| by_node.get(n).and_then(|v| v.first())).collect();
    let available = scheduled.iter().filter(|p| pods::is_available(p, min_ready, now)).count() as i32;
    let updated = scheduled
        .iter()
        .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)) == Some(&hash))
        .count() as i32;
    if met && !changed && strategy.type_.as_deref() != Some("OnDelete") {
        let max_unavailable = match strategy.rolling_update.and_then(|r| r.max_unavailable) {
            Some(IntOrString::Int(i)) => i.max(1),
            Some(IntOrString::String(s)) => {
                ((s.trim_end_matches('%').parse::<i64>().unwrap_or(0) * desired as i64) / 100).max(1) as i32
            }
            None => 1,
        };
        let mut budget = max_unavailable - (desired - available);
        for p in
            scheduled.iter().filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)) != Some(&hash))
        {
            if budget <= 0 {
                break;
            }
            ctx.expectations.deleted(uid, pods::name(&p.metadata).to_string());
            pods::delete(&pod_api, p).await?;
            budget -= 1;
        }
    }
    let misscheduled = by_node
        .iter()
        .filter(|(n, _)| !nodes.get(*n).copied().unwrap_or(false))
        .map(|(_, v)| v.len() as i32)
        .sum::<i32>();
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: scheduled.len() as i32,
        number_misscheduled: misscheduled,
        number_ready: scheduled.iter().filter(|p| pods::is_ready(p)).count() as i32,
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        updated_number_scheduled: Some(updated),
        observed_generation: meta.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    // Old revisions beyond the history limit that no pod runs.
    let mut in_use: Vec<String> = by_node
        .values()
        .flatten()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_LABEL).map(|h| format!("{name}-{h}")))
        .collect();
    in_use.push(rev_name);
    history::trim(&ctx, ns, &revs, &in_use, spec.revision_history_limit.unwrap_or(10)).await;
    if ds.status.as_ref() != Some(&status) {
        Api::<DaemonSet>::namespaced(ctx.client.clone(), ns)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await?;
    }
    let next = scheduled.iter().filter_map(|p| pods::available_in(p, min_ready, now)).min();
    Ok(Action::requeue(next.map(|d| d + Duration::from_millis(100)).unwrap_or(Duration::from_secs(300))))
}
