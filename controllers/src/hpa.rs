//! The horizontal pod autoscaler (autoscaling/v2, resource metrics). Every sync period
//! each HPA's target (a Deployment, ReplicaSet or StatefulSet, through its scale
//! subresource) gets the replica count its pods' usage asks for:
//!
//! * usage comes from the resource metrics API (`metrics.k8s.io` PodMetrics, which
//!   the node agents write); a `Utilization` target compares usage with the pods'
//!   requests, an `AverageValue` target with a per-pod amount;
//! * as Kubernetes computes it: within the tolerance (10 %) nothing changes; unready
//!   pods do not count for CPU when scaling up; pods without metrics count as idle
//!   when scaling up and as fully used when scaling down, and may cancel the change;
//! * then the behavior: stabilization windows (the highest recommendation of the
//!   scale-down window, 300 s unless `--horizontal-pod-autoscaler-downscale-stabilization`
//!   or the HPA says otherwise; the lowest of the scale-up window, 0 s), rate policies
//!   (by default at most double or +4 pods up, anything down, per step), and
//!   min/max replicas;
//! * status (current/desired replicas, current metrics, lastScaleTime) and the
//!   AbleToScale / ScalingActive / ScalingLimited conditions, written only when they
//!   change; a `SuccessfulRescale` event for each rescale.
//!
//! Rate policies are applied against the current replica count each step, not against
//! the count at the start of their period (Kubernetes remembers past rescales).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricStatus, MetricTarget, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::{gc, labels, pods, quantity, Ctx};

const TOLERANCE: f64 = 0.1;

#[derive(Clone, Debug)]
pub struct Settings {
    /// How often every HPA is evaluated (`--horizontal-pod-autoscaler-sync-period`).
    pub period: Duration,
    /// The scale-down stabilization window of HPAs that set none
    /// (`--horizontal-pod-autoscaler-downscale-stabilization`).
    pub downscale_window: Duration,
}

/// What one pod contributes to one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub ready: bool,
    /// The pod's request for the resource (millicores, bytes); None if a container has none.
    pub request: Option<i64>,
    /// Its usage, None if no metrics were reported for it.
    pub usage: Option<i64>,
}

/// The replica count one resource metric asks for, and the current value it saw:
/// (replicas, utilization in percent of requests or None, average usage per pod).
pub fn recommend(
    current: i32,
    samples: &[Sample],
    target: &MetricTarget,
    ignore_unready: bool,
) -> Result<(i32, Option<i32>, i64), String> {
    let utilization = target.type_ == "Utilization";
    let (mut with, mut missing, mut unready) = (Vec::new(), Vec::new(), Vec::new());
    for s in samples {
        let request = match (utilization, s.request) {
            (true, None) => return Err("missing request for the resource in a targeted pod".into()),
            (_, r) => r.unwrap_or(0),
        };
        match s.usage {
            None => missing.push(request),
            Some(_) if ignore_unready && !s.ready => unready.push(request),
            Some(u) => with.push((u, request)),
        }
    }
    if with.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let ratio_of = |xs: &[(i64, i64)]| -> Result<f64, String> {
        let usage: i64 = xs.iter().map(|x| x.0).sum();
        if utilization {
            let requests: i64 = xs.iter().map(|x| x.1).sum();
            if requests == 0 {
                return Err("the targeted pods request none of the resource".into());
            }
            let want = target.average_utilization.unwrap_or(80).max(1) as f64;
            Ok(usage as f64 * 100.0 / requests as f64 / want)
        } else {
            let want = target.average_value.as_ref().map(quantity::milli_of).unwrap_or(0).max(1) as f64;
            Ok(usage as f64 / xs.len() as f64 / want)
        }
    };
    let usage: i64 = with.iter().map(|x| x.0).sum();
    let requests: i64 = with.iter().map(|x| x.1).sum();
    let seen_util = (utilization && requests > 0).then(|| (usage * 100 / requests) as i32);
    let average = usage / with.len() as i64;
    let ratio = ratio_of(&with)?;
    let rebalance_unready = !unready.is_empty() && ratio > 1.0;
    if !rebalance_unready && missing.is_empty() {
        if (ratio - 1.0).abs() <= TOLERANCE {
            return Ok((current, seen_util, average));
        }
        return Ok(((ratio * with.len() as f64).ceil() as i32, seen_util, average));
    }
    // Fill in the pods without (usable) metrics on the side that argues against the change.
    let at_target = target.average_value.as_ref().map(quantity::milli_of).unwrap_or(0);
    for r in &missing {
        let full = if utilization { *r } else { at_target };
        let as_used = if ratio < 1.0 { full } else { 0 };
        with.push((as_used, *r));
    }
    if rebalance_unready {
        with.extend(unready.iter().map(|r| (0, *r)));
    }
    let new_ratio = ratio_of(&with)?;
    if (new_ratio - 1.0).abs() <= TOLERANCE || (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return Ok((current, seen_util, average));
    }
    let proposed = (new_ratio * with.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && proposed > current) || (new_ratio > 1.0 && proposed < current) {
        return Ok((current, seen_util, average));
    }
    Ok((proposed, seen_util, average))
}

/// The bounds a scaling rule's policies put on one step from `current`.
fn rate_limit(rules: &HPAScalingRules, current: i32, up: bool) -> i32 {
    let policies = rules.policies.clone().unwrap_or_default();
    let select = rules.select_policy.as_deref().unwrap_or("Max");
    if select == "Disabled" {
        return current;
    }
    let limits: Vec<i32> = policies
        .iter()
        .map(|p| match (p.type_.as_str(), up) {
            ("Percent", true) => (current as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i32,
            ("Percent", false) => (current as f64 * (1.0 - p.value as f64 / 100.0)).floor() as i32,
            (_, true) => current + p.value,
            (_, false) => current - p.value,
        })
        .collect();
    if limits.is_empty() {
        return if up { i32::MAX } else { 0 };
    }
    // "Max" picks the policy that allows the largest change.
    match (select == "Min", up) {
        (false, true) | (true, false) => *limits.iter().max().expect("not empty"),
        (false, false) | (true, true) => *limits.iter().min().expect("not empty"),
    }
}

fn default_rules(up: bool, downscale_window: Duration) -> HPAScalingRules {
    use k8s_openapi::api::autoscaling::v2::HPAScalingPolicy;
    let policy = |type_: &str, value| HPAScalingPolicy { type_: type_.into(), value, period_seconds: 15 };
    if up {
        HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Percent", 100), policy("Pods", 4)]),
            ..Default::default()
        }
    } else {
        HPAScalingRules {
            stabilization_window_seconds: Some(downscale_window.as_secs() as i32),
            select_policy: Some("Max".into()),
            policies: Some(vec![policy("Percent", 100)]),
            ..Default::default()
        }
    }
}

/// The rules of one direction: the HPA's, with Kubernetes' defaults for what it leaves out.
fn rules_of(hpa: &HorizontalPodAutoscaler, up: bool, downscale_window: Duration) -> HPAScalingRules {
    let mut d = default_rules(up, downscale_window);
    let given = hpa.spec.as_ref().and_then(|s| s.behavior.as_ref()).and_then(|b| match up {
        true => b.scale_up.clone(),
        false => b.scale_down.clone(),
    });
    if let Some(g) = given {
        if g.stabilization_window_seconds.is_some() {
            d.stabilization_window_seconds = g.stabilization_window_seconds;
        }
        if g.select_policy.is_some() {
            d.select_policy = g.select_policy;
        }
        if g.policies.as_ref().is_some_and(|p| !p.is_empty()) {
            d.policies = g.policies;
        }
    }
    d
}

/// Past recommendations per HPA (uid), for the stabilization windows.
#[derive(Default)]
pub struct History(Mutex<HashMap<String, Vec<(Instant, i32)>>>);

impl History {
    /// The stabilized count: no lower than the lowest recommendation of the scale-up
    /// window, no higher than the highest of the scale-down window.
    fn stabilize(&self, uid: &str, current: i32, desired: i32, up: Duration, down: Duration) -> i32 {
        let now = Instant::now();
        let mut all = self.0.lock().expect("not poisoned");
        let recs = all.entry(uid.to_string()).or_default();
        let (mut up_rec, mut down_rec) = (desired, desired);
        for (t, r) in recs.iter() {
            let age = now.duration_since(*t);
            if age <= up {
                up_rec = up_rec.min(*r);
            }
            if age <= down {
                down_rec = down_rec.max(*r);
            }
        }
        let keep = up.max(down);
        recs.retain(|(t, _)| now.duration_since(*t) <= keep);
        recs.push((now, desired));
        current.max(up_rec).min(down_rec)
    }

    fn forget_others(&self, live: &[String]) {
        self.0.lock().expect("not poisoned").retain(|uid, _| live.contains(uid));
    }
}

fn condition(type_: &str, ok: bool, reason: &str, message: String) -> HorizontalPodAutoscalerCondition {
    HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(Timestamp::now())),
    }
}

/// The API resource behind a scaleTargetRef.
fn target_resource(api_version: &str, kind: &str) -> Option<ApiResource> {
    let plural = match kind {
        "Deployment" => "deployments",
        "ReplicaSet" => "replicasets",
        "StatefulSet" => "statefulsets",
        _ => return None,
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Some(gc::api_resource(group, version, kind, plural))
}

/// The pod's request for `resource` (a container's limit stands for its request when it
/// sets none, as the API server defaults it in Kubernetes); None if a container has neither.
fn container_request(p: &Pod, resource: &str) -> Option<i64> {
    let spec = p.spec.as_ref()?;
    let mut sum = 0;
    for c in &spec.containers {
        let r = c.resources.as_ref()?;
        let q = r
            .requests
            .as_ref()
            .and_then(|m| m.get(resource))
            .or_else(|| r.limits.as_ref().and_then(|m| m.get(resource)))?;
        sum += quantity::milli_of(q);
    }
    Some(sum)
}

/// Usage per pod name (millicores or millibytes), from the PodMetrics of a namespace.
fn usage_by_pod(list: &[DynamicObject], resource: &str) -> HashMap<String, i64> {
    list.iter()
        .filter_map(|m| {
            let cs = m.data["containers"].as_array()?;
            let total = cs.iter().filter_map(|c| quantity::milli(c["usage"][resource].as_str()?)).sum();
            Some((m.metadata.name.clone()?, total))
        })
        .collect()
}

pub async fn run(ctx: Arc<Ctx>, hpas: Store<HorizontalPodAutoscaler>, settings: Settings, history: History) {
    loop {
        tokio::time::sleep(settings.period).await;
        let all = hpas.state();
        history.forget_others(&all.iter().filter_map(|h| h.metadata.uid.clone()).collect::<Vec<_>>());
        for hpa in all {
            if let Err(e) = reconcile(&ctx, &hpa, &settings, &history).await {
                tracing::warn!("autoscaling {}: {e}", pods::name(&hpa.metadata));
            }
        }
    }
}

/// Evaluates one HPA: rescales its target when its metrics ask for it, and reports.
pub async fn reconcile(
    ctx: &Ctx,
    hpa: &HorizontalPodAutoscaler,
    settings: &Settings,
    history: &History,
) -> kube::Result<()> {
    let ns = pods::namespace(&hpa.metadata).to_string();
    let spec = hpa.spec.clone().unwrap_or_default();
    let old = hpa.status.clone().unwrap_or_default();
    let mut status = HorizontalPodAutoscalerStatus {
        observed_generation: hpa.metadata.generation,
        last_scale_time: old.last_scale_time.clone(),
        current_replicas: old.current_replicas,
        desired_replicas: old.desired_replicas,
        current_metrics: old.current_metrics.clone(),
        conditions: None,
    };
    let mut conds = Vec::new();
    let target = &spec.scale_target_ref;
    let Some(ar) = target_resource(target.api_version.as_deref().unwrap_or(""), &target.kind) else {
        conds.push(condition(
            "AbleToScale",
            false,
            "FailedGetScale",
            format!("the HPA controller cannot scale a {}", target.kind),
        ));
        return write_status(ctx, hpa, status, conds).await;
    };
    let targets: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    let obj = match targets.get_opt(&target.name).await? {
        Some(o) => o,
        None => {
            conds.push(condition(
                "AbleToScale",
                false,
                "FailedGetScale",
                format!(
                    "the HPA controller was unable to get the target's current scale: {} \"{}\" not found",
                    ar.plural, target.name
                ),
            ));
            return write_status(ctx, hpa, status, conds).await;
        }
    };
    let current = obj.data["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
    status.current_replicas = Some(current);
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    if current == 0 && min != 0 {
        conds.push(condition(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale".into(),
        ));
        conds.push(condition(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero".into(),
        ));
        status.desired_replicas = 0;
        return write_status(ctx, hpa, status, conds).await;
    }
    let selector: Option<LabelSelector> = serde_json::from_value(obj.data["spec"]["selector"].clone()).ok();
    let targeted: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            pods::namespace(&p.metadata) == ns
                && p.metadata.deletion_timestamp.is_none()
                && pods::phase(p) != "Failed"
                && pods::phase(p) != "Succeeded"
                && labels::matches(selector.as_ref(), p.metadata.labels.as_ref())
        })
        .collect();
    let metrics: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &ns,
        &gc::api_resource("metrics.k8s.io", "v1beta1", "PodMetrics", "pods"),
    );
    let reported = metrics.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();

    let specs = spec.metrics.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| {
        serde_json::from_value(json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]))
            .expect("a valid metric")
    });
    let mut proposal: Option<(i32, String)> = None;
    let mut current_metrics = Vec::new();
    let mut failure: Option<(String, String)> = None;
    for m in &specs {
        let Some(res) = m.resource.as_ref().filter(|_| m.type_ == "Resource") else {
            failure = Some((
                "InvalidMetricSourceType".into(),
                format!("the HPA controller supports Resource metrics, not {}", m.type_),
            ));
            continue;
        };
        let usage = usage_by_pod(&reported, &res.name);
        let samples: Vec<Sample> = targeted
            .iter()
            .map(|p| Sample {
                ready: pods::is_ready(p),
                request: container_request(p, &res.name),
                usage: usage.get(pods::name(&p.metadata)).copied(),
            })
            .collect();
        match recommend(current, &samples, &res.target, res.name == "cpu") {
            Ok((replicas, util, average)) => {
                let avg = if res.name == "cpu" { format!("{average}m") } else { format!("{}", average / 1000) };
                current_metrics.push(MetricStatus {
                    type_: "Resource".into(),
                    resource: Some(ResourceMetricStatus {
                        name: res.name.clone(),
                        current: MetricValueStatus {
                            average_utilization: util,
                            average_value: Some(Quantity(avg)),
                            value: None,
                        },
                    }),
                    ..Default::default()
                });
                let what = match res.target.type_.as_str() {
                    "Utilization" => format!("{} resource utilization (percentage of request)", res.name),
                    _ => format!("{} resource", res.name),
                };
                if proposal.as_ref().is_none_or(|(r, _)| replicas > *r) {
                    proposal = Some((replicas, what));
                }
            }
            Err(e) => {
                failure = Some((
                    "FailedGetResourceMetric".into(),
                    format!("the HPA was unable to compute the replica count: {e}"),
                ))
            }
        }
    }
    status.current_metrics = (!current_metrics.is_empty()).then_some(current_metrics);
    conds.push(condition(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale".into(),
    ));
    let Some((recommended, what)) = proposal else {
        let (reason, message) = failure.unwrap_or(("FailedGetResourceMetric".into(), "no metrics".into()));
        conds.push(condition("ScalingActive", false, &reason, message));
        status.desired_replicas = current;
        return write_status(ctx, hpa, status, conds).await;
    };
    conds.push(condition(
        "ScalingActive",
        true,
        "ValidMetricFound",
        format!("the HPA was able to successfully calculate a replica count from {what}"),
    ));

    let up_rules = rules_of(hpa, true, settings.downscale_window);
    let down_rules = rules_of(hpa, false, settings.downscale_window);
    let secs = |r: &HPAScalingRules| Duration::from_secs(r.stabilization_window_seconds.unwrap_or(0).max(0) as u64);
    let uid = pods::uid(&hpa.metadata).to_string();
    let stable = history.stabilize(&uid, current, recommended, secs(&up_rules), secs(&down_rules));
    let mut desired = stable;
    if desired > current {
        desired = desired.min(rate_limit(&up_rules, current, true));
    } else if desired < current {
        desired = desired.max(rate_limit(&down_rules, current, false));
    }
    let limited = if desired > max {
        desired = max;
        Some(("TooManyReplicas", "the desired replica count is more than the maximum replica count"))
    } else if desired < min {
        desired = min;
        Some(("TooFewReplicas", "the desired replica count is less than the minimum replica count"))
    } else {
        None
    };
    conds.push(match limited {
        Some((reason, message)) => condition("ScalingLimited", true, reason, message.into()),
        None => condition(
            "ScalingLimited",
            false,
            "DesiredWithinRange",
            "the desired count is within the acceptable range".into(),
        ),
    });
    status.desired_replicas = desired;
    if desired != current {
        let patch = json!({"spec": {"replicas": desired}});
        targets.patch_scale(&target.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let direction = if desired > current { "above" } else { "below" };
        ctx.recorder
            .record(
                hpa,
                "Normal",
                "SuccessfulRescale",
                format!("New size: {desired}; reason: {what} {direction} target"),
            )
            .await;
        status.last_scale_time = Some(Time(Timestamp::now()));
        conds[0] = condition(
            "AbleToScale",
            true,
            "SucceededRescale",
            format!("the HPA controller was able to update the target scale to {desired}"),
        );
    } else {
        conds[0] = condition("AbleToScale", true, "ReadyForNewScale", "recommended size matches current size".into());
    }
    write_status(ctx, hpa, status, conds).await
}

/// Writes the status if anything but condition times changed (a condition keeps its
/// lastTransitionTime while its status stays).
async fn write_status(
    ctx: &Ctx,
    hpa: &HorizontalPodAutoscaler,
    mut status: HorizontalPodAutoscalerStatus,
    mut conds: Vec<HorizontalPodAutoscalerCondition>,
) -> kube::Result<()> {
    let old = hpa.status.clone().unwrap_or_default();
    let old_conds = old.conditions.clone().unwrap_or_default();
    for c in &mut conds {
        if let Some(o) = old_conds.iter().find(|o| o.type_ == c.type_ && o.status == c.status) {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
    status.conditions = Some(conds);
    if status == old {
        return Ok(());
    }
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), pods::namespace(&hpa.metadata));
    let mut body = serde_json::to_value(&status).map_err(kube::Error::SerdeError)?;
    // Fields now absent must be cleared, not left as they were.
    for key in ["currentMetrics", "lastScaleTime", "observedGeneration", "currentReplicas"] {
        body.as_object_mut().expect("an object").entry(key).or_insert(serde_json::Value::Null);
    }
    let patch = json!({"status": body});
    api.patch_status(pods::name(&hpa.metadata), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn util(p: i32) -> MetricTarget {
        MetricTarget { type_: "Utilization".into(), average_utilization: Some(p), ..Default::default() }
    }

    fn pod(ready: bool, request: i64, usage: Option<i64>) -> Sample {
        Sample { ready, request: Some(request), usage }
    }

    #[test]
    fn utilization_sets_the_count_outside_the_tolerance() {
        // 2 pods at 100 % of their requests against 50 %: twice as many.
        let s = [pod(true, 100, Some(100)), pod(true, 100, Some(100))];
        assert_eq!(recommend(2, &s, &util(50), true).unwrap(), (4, Some(100), 100));
        // 54 % against 50 % is within 10 %: unchanged.
        let s = [pod(true, 100, Some(54)), pod(true, 100, Some(54))];
        assert_eq!(recommend(2, &s, &util(50), true).unwrap().0, 2);
        // 10 % of requests against 80 %: ceil(5 * 0.125) = 1.
        let s = vec![pod(true, 100, Some(10)); 5];
        assert_eq!(recommend(5, &s, &util(80), true).unwrap().0, 1);
    }

    #[test]
    fn missing_metrics_and_unready_pods_argue_against_the_change() {
        // Scale-up: two busy pods, two pods without metrics (idle): 4 pods at 100 % of 80.
        let s = [pod(true, 100, Some(200)), pod(true, 100, Some(200)), pod(true, 100, None), pod(true, 100, None)];
        assert_eq!(recommend(4, &s, &util(80), true).unwrap().0, 5);
        // Scale-down: pods without metrics count as fully used, which cancels it here.
        let s = [pod(true, 100, Some(60)), pod(true, 100, None)];
        assert_eq!(recommend(2, &s, &util(80), true).unwrap().0, 2);
        // Unready pods are left out of a CPU scale-up, then counted as idle.
        let s = [pod(true, 100, Some(200)), pod(false, 100, Some(900))];
        assert_eq!(recommend(2, &s, &util(50), true).unwrap().0, 4);
        // No pod with usable metrics at all.
        assert!(recommend(2, &[pod(true, 100, None)], &util(50), true).is_err());
        // A pod without a request for a Utilization target.
        let s = [Sample { ready: true, request: None, usage: Some(5) }];
        assert!(recommend(1, &s, &util(50), true).unwrap_err().contains("missing request"));
    }

    #[test]
    fn average_value_targets_compare_per_pod_usage() {
        let t = MetricTarget {
            type_: "AverageValue".into(),
            average_value: Some(Quantity("100m".into())),
            ..Default::default()
        };
        let s = [pod(true, 0, Some(300)), pod(true, 0, Some(300))];
        assert_eq!(recommend(2, &s, &t, true).unwrap(), (6, None, 300));
    }

    #[test]
    fn default_policies_double_or_add_four_and_may_drop_to_anything() {
        let up = default_rules(true, Duration::from_secs(300));
        assert_eq!(rate_limit(&up, 1, true), 5);
        assert_eq!(rate_limit(&up, 10, true), 20);
        let down = default_rules(false, Duration::from_secs(300));
        assert_eq!(rate_limit(&down, 10, false), 0);
    }

    #[test]
    fn stabilization_keeps_the_highest_recent_recommendation_down() {
        let h = History::default();
        let (up, down) = (Duration::ZERO, Duration::from_secs(60));
        assert_eq!(h.stabilize("a", 5, 5, up, down), 5);
        // A lower recommendation within the window does not scale down yet.
        assert_eq!(h.stabilize("a", 5, 2, up, down), 5);
        // Scaling up is not held back by a zero window.
        assert_eq!(h.stabilize("a", 5, 8, up, down), 8);
        // Without a window the latest recommendation wins at once.
        assert_eq!(History::default().stabilize("b", 5, 2, up, Duration::ZERO), 2);
    }
}
