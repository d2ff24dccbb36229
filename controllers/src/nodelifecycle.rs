//! Node lifecycle: a node whose Lease (in kube-node-lease) has not been renewed for
//! the grace period gets Ready=Unknown and the `node.kubernetes.io/unreachable`
//! NoSchedule and NoExecute taints (`not-ready` ones when the agent itself reports
//! Ready=False); the taints go when it is Ready again. Pods on a node with a NoExecute
//! taint they do not tolerate are deleted, at once or after their tolerationSeconds
//! (the API server gives every pod 300 s for these two taints by default); their
//! controllers replace them elsewhere. Pods bound to nodes that no longer exist are
//! removed (pod GC).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::{pods, Ctx};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

#[derive(Clone, Debug)]
pub struct Settings {
    /// How long a node may go without renewing its Lease (`--node-monitor-grace-period`).
    pub grace: Duration,
    /// How often nodes are checked (`--node-monitor-period`).
    pub period: Duration,
}

fn ready_condition(n: &Node) -> Option<&NodeCondition> {
    n.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// Does `tol` tolerate `taint`?
pub fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    if tol.effect.as_deref().is_some_and(|e| !e.is_empty() && e != taint.effect) {
        return false;
    }
    match tol.operator.as_deref() {
        Some("Exists") => tol.key.as_deref().is_none_or(|k| k.is_empty() || k == taint.key),
        _ => {
            tol.key.as_deref() == Some(taint.key.as_str())
                && tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// When a pod must leave a node with these NoExecute taints: None to stay, Some(0) now,
/// Some(t) at unix second t.
pub fn eviction_time(pod: &Pod, taints: &[Taint]) -> Option<i64> {
    let tols = pod.spec.as_ref().and_then(|s| s.tolerations.clone()).unwrap_or_default();
    let mut when: Option<i64> = None;
    for t in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = t.time_added.as_ref().map(|x| x.0.as_second()).unwrap_or(0);
        let at = match tols
            .iter()
            .filter(|tol| tolerates(tol, t))
            .map(|tol| tol.toleration_seconds)
            .min_by_key(|s| s.unwrap_or(i64::MAX))
        {
            None => 0,
            Some(None) => continue,
            Some(Some(secs)) => added + secs.max(0),
        };
        when = Some(when.map_or(at, |w| w.min(at)));
    }
    when
}

pub async fn run(ctx: Arc<Ctx>, nodes: Store<Node>, leases: Store<Lease>, settings: Settings) {
    let _ = nodes.wait_until_ready().await;
    let _ = leases.wait_until_ready().await;
    let mut health = HashMap::new();
    loop {
        if let Err(e) = pass(&ctx, &nodes, &leases, &settings, &mut health).await {
            tracing::warn!("node lifecycle: {e}");
        }
        tokio::time::sleep(settings.period).await;
    }
}

/// What the controller last saw of a node's heartbeats (its Lease's renewTime and its
/// Ready condition's lastHeartbeatTime) and, by its own clock, when it last saw either
/// move forward. A node is overdue when that was longer ago than the grace period, as
/// in Kubernetes' node lifecycle controller: a watch running late delays every
/// renewal alike and so cannot make a live node look dead, and the agents' clocks do
/// not matter. A node gets the grace period from when the controller first sees it.
#[derive(Debug)]
struct Health {
    renewed: Option<Timestamp>,
    heartbeat: Option<Timestamp>,
    probed: Timestamp,
}

impl Health {
    /// Takes in the node's latest heartbeats; true when the node is overdue at `now`.
    fn observe(
        &mut self,
        renewed: Option<Timestamp>,
        heartbeat: Option<Timestamp>,
        now: Timestamp,
        grace: Duration,
    ) -> bool {
        if renewed > self.renewed || heartbeat > self.heartbeat {
            self.renewed = self.renewed.max(renewed);
            self.heartbeat = self.heartbeat.max(heartbeat);
            self.probed = now;
        }
        now.duration_since(self.probed).as_secs_f64() > grace.as_secs_f64()
    }
}

async fn pass(
    ctx: &Ctx,
    nodes: &Store<Node>,
    leases: &Store<Lease>,
    s: &Settings,
    health: &mut HashMap<String, Health>,
) -> kube::Result<()> {
    let node_api: Api<Node> = Api::all(ctx.client.clone());
    let now = Timestamp::now();
    let renewals: HashMap<String, Timestamp> = leases
        .state()
        .iter()
        .filter(|l| l.metadata.namespace.as_deref() == Some("kube-node-lease"))
        .filter_map(|l| Some((l.metadata.name.clone()?, l.spec.as_ref()?.renew_time.as_ref()?.0)))
        .collect();
    let mut taints_of: HashMap<String, Vec<Taint>> = HashMap::new();
    let present: std::collections::HashSet<String> =
        nodes.state().iter().map(|n| pods::name(&n.metadata).to_string()).collect();
    health.retain(|n, _| present.contains(n));
    for n in nodes.state() {
        let name = pods::name(&n.metadata).to_string();
        let ready = ready_condition(&n);
        let h = health.entry(name.clone()).or_insert(Health { renewed: None, heartbeat: None, probed: now });
        let heartbeat = ready.and_then(|c| c.last_heartbeat_time.as_ref()).map(|t| t.0);
        let stale = h.observe(renewals.get(&name).copied(), heartbeat, now, s.grace);
        let status = ready.map(|c| c.status.as_str()).unwrap_or("Unknown");
        if stale && status != "Unknown" {
            tracing::warn!(
                "node {name} stopped renewing its lease: no renewal seen since {} (lease renewed {:?}, last heartbeat {:?})",
                h.probed,
                h.renewed,
                h.heartbeat
            );
            let conds: Vec<NodeCondition> = n
                .status
                .as_ref()
                .and_then(|st| st.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|mut c| {
                    c.status = "Unknown".into();
                    c.reason = Some("NodeStatusUnknown".into());
                    c.message = Some("Kubelet stopped posting node status.".into());
                    c.last_transition_time = Some(Time(now));
                    c
                })
                .collect();
            node_api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({"status": {"conditions": conds}})))
                .await?;
            ctx.recorder
                .record(n.as_ref(), "Normal", "NodeNotReady", format!("Node {name} status is now: NodeNotReady"))
                .await;
        }
        let current: Vec<Taint> = n.spec.as_ref().and_then(|sp| sp.taints.clone()).unwrap_or_default();
        let key = match (stale, status) {
            (true, _) => Some(UNREACHABLE),
            (false, "True") => None,
            (false, "False") => Some(NOT_READY),
            // Not reported yet, and not overdue: leave its taints as they are.
            (false, _) => {
                taints_of.insert(name, current);
                continue;
            }
        };
        let mut want: Vec<Taint> =
            current.iter().filter(|t| t.key != UNREACHABLE && t.key != NOT_READY).cloned().collect();
        if let Some(k) = key {
            for effect in ["NoSchedule", "NoExecute"] {
                let kept = current.iter().find(|t| t.key == k && t.effect == effect).cloned();
                want.push(kept.unwrap_or(Taint {
                    key: k.into(),
                    effect: effect.into(),
                    value: None,
                    time_added: Some(Time(now)),
                }));
            }
        }
        if want != current {
            node_api.patch(&name, &PatchParams::default(), &Patch::Merge(json!({"spec": {"taints": want}}))).await?;
        }
        taints_of.insert(name, want);
    }

    // Evict pods from NoExecute-tainted nodes; collect pods of vanished nodes.
    for p in ctx.pods.state() {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()) else { continue };
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), pods::namespace(&p.metadata));
        let pre = Preconditions { uid: p.metadata.uid.clone(), resource_version: None };
        match taints_of.get(&node) {
            None => {
                if node_api.get_opt(&node).await?.is_none() {
                    let dp =
                        DeleteParams { grace_period_seconds: Some(0), preconditions: Some(pre), ..Default::default() };
                    ignore_gone(api.delete(pods::name(&p.metadata), &dp).await)?;
                }
            }
            Some(taints) if p.metadata.deletion_timestamp.is_none() => {
                if let Some(at) = eviction_time(&p, taints) {
                    if at <= now.as_second() {
                        let dp = DeleteParams { preconditions: Some(pre), ..Default::default() };
                        ignore_gone(api.delete(pods::name(&p.metadata), &dp).await)?;
                        let msg = format!(
                            "Marking for deletion Pod {}/{}",
                            pods::namespace(&p.metadata),
                            pods::name(&p.metadata)
                        );
                        ctx.recorder.record(p.as_ref(), "Normal", "TaintManagerEviction", msg).await;
                    }
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn ignore_gone<T>(r: kube::Result<T>) -> kube::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str, added: i64) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: Some(Time(Timestamp::from_second(added).unwrap())),
        }
    }

    #[test]
    fn a_node_is_overdue_by_when_its_renewals_were_seen_not_by_their_stamps() {
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let grace = Duration::from_secs(40);
        let mut h = Health { renewed: None, heartbeat: None, probed: at(1000) };
        // Renewals stamped long ago (a late watch, or a clock behind) still count when they arrive.
        assert!(!h.observe(Some(at(900)), None, at(1000), grace));
        assert!(!h.observe(Some(at(910)), None, at(1035), grace));
        assert!(!h.observe(Some(at(920)), None, at(1070), grace), "each renewal seen resets the clock");
        assert!(!h.observe(Some(at(920)), None, at(1110), grace), "40 s without one is still within grace");
        assert!(h.observe(Some(at(920)), None, at(1111), grace), "over 40 s: overdue");
        assert!(h.observe(Some(at(915)), None, at(1112), grace), "an older renewal is no news");
        assert!(!h.observe(Some(at(920)), Some(at(1100)), at(1113), grace), "a status heartbeat counts too");
        let mut fresh = Health { renewed: None, heartbeat: None, probed: at(2000) };
        assert!(!fresh.observe(None, None, at(2040), grace), "a silent node gets the grace period from first sight");
        assert!(fresh.observe(None, None, at(2041), grace));
    }

    #[test]
    fn tolerations_decide_when_pods_leave() {
        let mut pod = Pod::default();
        let t = [taint(UNREACHABLE, "NoExecute", 1000)];
        assert_eq!(eviction_time(&pod, &t), Some(0), "no toleration: at once");
        pod.spec = Some(Default::default());
        pod.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some(UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(300),
            value: None,
        }]);
        assert_eq!(eviction_time(&pod, &t), Some(1300));
        assert_eq!(eviction_time(&pod, &[taint(UNREACHABLE, "NoSchedule", 0)]), None, "NoSchedule evicts nobody");
        pod.spec.as_mut().unwrap().tolerations =
            Some(vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]);
        assert_eq!(eviction_time(&pod, &t), None, "tolerates everything forever");
    }
}
