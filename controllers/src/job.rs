//! The Job controller (NonIndexed completion mode): keeps up to `parallelism` pods
//! running until `completions` of them have succeeded (Complete), or more than
//! `backoffLimit` have failed (Failed, reason BackoffLimitExceeded, remaining pods
//! deleted), or `activeDeadlineSeconds` has passed (Failed, DeadlineExceeded). Pods of a
//! finished Job are kept, as Kubernetes keeps them; the counts come from the pods that
//! exist.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::{pods, Ctx, Error};

fn finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"))
}

fn condition(type_: &str, reason: &str, message: &str, now: &Time) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

pub async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let meta = &job.metadata;
    let (ns, name, uid) = (pods::namespace(meta), pods::name(meta), pods::uid(meta));
    if meta.deletion_timestamp.is_some() || finished(&job) {
        return Ok(Action::await_change());
    }
    let spec = job.spec.clone().unwrap_or_default();
    let completions = spec.completions.unwrap_or(1).max(0);
    let parallelism = spec.parallelism.unwrap_or(1).max(0);
    let backoff = spec.backoff_limit.unwrap_or(6).max(0);
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let owned: Vec<Arc<Pod>> = crate::informer::in_namespace(&ctx.pods, ns)
        .into_iter()
        .filter(|p| pods::controlled_by(&p.metadata, uid))
        .collect();
    let succeeded = owned.iter().filter(|p| pods::phase(p) == "Succeeded").count() as i32;
    let failed = owned.iter().filter(|p| pods::phase(p) == "Failed").count() as i32;
    let active: Vec<&Arc<Pod>> = owned.iter().filter(|p| pods::is_active(p)).collect();
    let now = Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::now()));
    let old = job.status.clone().unwrap_or_default();
    let start = old.start_time.clone().unwrap_or_else(|| now.clone());
    let overdue = spec.active_deadline_seconds.is_some_and(|d| now.0.duration_since(start.0).as_secs() >= d);

    let mut conditions = old.conditions.clone().unwrap_or_default();
    let mut completion_time = old.completion_time.clone();
    let verdict = if succeeded >= completions {
        Some(("Complete", "CompletionsReached", "Reached expected number of succeeded pods"))
    } else if failed > backoff {
        Some(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
    } else if overdue {
        Some(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"))
    } else {
        None
    };
    let mut active_count = active.len() as i32;
    match verdict {
        Some((type_, reason, message)) => {
            for p in &active {
                pods::delete(&pod_api, p).await?;
            }
            active_count = 0;
            if type_ == "Complete" {
                conditions.push(condition("SuccessCriteriaMet", reason, message, &now));
                completion_time = Some(now.clone());
            } else {
                conditions.push(condition("FailureTarget", reason, message, &now));
            }
            conditions.push(condition(type_, reason, message, &now));
            let kind = if type_ == "Complete" { "Normal" } else { "Warning" };
            let what = if type_ == "Complete" { "Completed" } else { reason };
            ctx.recorder
                .record(
                    job.as_ref(),
                    kind,
                    what,
                    if type_ == "Complete" { "Job completed".into() } else { message.to_string() },
                )
                .await;
        }
        None => {
            let met = ctx.expectations.met(
                uid,
                |n| ctx.pods.get(&ObjectRef::new(n).within(ns)).is_some(),
                |n| ctx.pods.get(&ObjectRef::new(n).within(ns)).is_none_or(|p| p.metadata.deletion_timestamp.is_some()),
            );
            let want = parallelism.min(completions - succeeded).max(0);
            if met && active_count < want {
                let template = spec.template.clone();
                let owner = pods::controller_ref("batch/v1", "Job", meta);
                let creates = (active_count..want).map(|_| {
                    let mut pod = pods::from_template(&template, ns, owner.clone());
                    pod.metadata.generate_name = Some(format!("{name}-"));
                    let api = pod_api.clone();
                    async move { api.create(&PostParams::default(), &pod).await }
                });
                for r in join_all(creates).await {
                    let p = r?;
                    let pname = pods::name(&p.metadata).to_string();
                    ctx.expectations.created(uid, pname.clone());
                    ctx.recorder
                        .record(job.as_ref(), "Normal", "SuccessfulCreate", format!("Created pod: {pname}"))
                        .await;
                    active_count += 1;
                }
            } else if met && active_count > want {
                for p in active.iter().take((active_count - want) as usize) {
                    ctx.expectations.deleted(uid, pods::name(&p.metadata).to_string());
                    pods::delete(&pod_api, p).await?;
                    active_count -= 1;
                }
            }
        }
    }
    let status = JobStatus {
        active: Some(active_count),
        succeeded: Some(succeeded),
        failed: Some(failed),
        ready: Some(active.iter().filter(|p| pods::is_ready(p)).count() as i32),
        start_time: Some(start),
        completion_time,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating: Some(
            owned.iter().filter(|p| p.metadata.deletion_timestamp.is_some() && !pods::is_terminated(p)).count() as i32,
        ),
        ..Default::default()
    };
    let mut cmp_old = old.clone();
    cmp_old.start_time = status.start_time.clone();
    if job.status.is_none() || cmp_old != status {
        Api::<Job>::namespaced(ctx.client.clone(), ns)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await?;
    }
    Ok(match spec.active_deadline_seconds {
        Some(d) => Action::requeue(Duration::from_secs(d.max(1) as u64)),
        None => Action::requeue(Duration::from_secs(300)),
    })
}
