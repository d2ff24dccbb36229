//! The CronJob controller: at each time of a CronJob's schedule (UTC) it creates a Job
//! `<cronjob>-<minutes since the epoch>` from the job template, owned by the CronJob,
//! unless the CronJob is suspended, the start is later than
//! `startingDeadlineSeconds`, or `concurrencyPolicy` says otherwise (`Forbid`: not
//! while a Job runs; `Replace`: the running ones are deleted first). Only the latest
//! missed time is started, as Kubernetes does. Status lists the active Jobs,
//! `lastScheduleTime` and `lastSuccessfulTime`; finished Jobs beyond
//! `successfulJobsHistoryLimit` (3) and `failedJobsHistoryLimit` (1) are deleted.
//! `spec.timeZone` is not supported: schedules are read in UTC.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::cron::Schedule;
use crate::{pods, Ctx};

/// Finished (Complete or Failed) and whether it succeeded.
fn outcome(job: &Job) -> Option<bool> {
    let conds = job.status.as_ref()?.conditions.as_ref()?;
    conds.iter().filter(|c| c.status == "True").find_map(|c| match c.type_.as_str() {
        "Complete" => Some(true),
        "Failed" => Some(false),
        _ => None,
    })
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job name for a scheduled time, as Kubernetes forms it.
pub fn job_name(cronjob: &str, at: Timestamp) -> String {
    format!("{cronjob}-{}", at.as_second() / 60)
}

pub struct Controller {
    ctx: Arc<Ctx>,
    cronjobs: Store<CronJob>,
    jobs: Store<Job>,
    /// Warnings already recorded (cronjob uid, reason) so each is said once.
    said: Mutex<HashSet<(String, String)>>,
}

impl Controller {
    pub fn new(ctx: Arc<Ctx>, cronjobs: Store<CronJob>, jobs: Store<Job>) -> Controller {
        Controller { ctx, cronjobs, jobs, said: Mutex::default() }
    }

    pub async fn run(self) {
        let _ = self.cronjobs.wait_until_ready().await;
        let _ = self.jobs.wait_until_ready().await;
        loop {
            for cj in self.cronjobs.state() {
                if let Err(e) = self.reconcile(&cj, Timestamp::now()).await {
                    tracing::warn!("cronjob {}: {e}", pods::name(&cj.metadata));
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn say_once(&self, cj: &CronJob, type_: &str, reason: &str, message: String) {
        if self.said.lock().expect("not poisoned").insert((pods::uid(&cj.metadata).to_string(), reason.to_string())) {
            self.ctx.recorder.record(cj, type_, reason, message).await;
        }
    }

    pub async fn reconcile(&self, cj: &CronJob, now: Timestamp) -> kube::Result<()> {
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        let ns = pods::namespace(&cj.metadata);
        let name = pods::name(&cj.metadata);
        let uid = pods::uid(&cj.metadata);
        let spec = cj.spec.clone().unwrap_or_default();
        let old = cj.status.clone().unwrap_or_default();
        let job_api: Api<Job> = Api::namespaced(self.ctx.client.clone(), ns);
        let mut owned: Vec<Arc<Job>> = crate::informer::in_namespace(&self.jobs, ns)
            .into_iter()
            .filter(|j| pods::controlled_by(&j.metadata, uid) && j.metadata.deletion_timestamp.is_none())
            .collect();
        owned.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));

        // Jobs that finished since the last pass, and the history limits.
        let was_active: HashSet<String> =
            old.active.iter().flatten().filter_map(|r| r.uid.clone()).collect::<HashSet<_>>();
        let mut last_success = old.last_successful_time.clone();
        for j in &owned {
            if let Some(ok) = outcome(j) {
                if was_active.contains(pods::uid(&j.metadata)) {
                    let status = if ok { "Complete" } else { "Failed" };
                    let msg = format!("Saw completed job: {}, condition: {status}", pods::name(&j.metadata));
                    self.ctx.recorder.record(cj, "Normal", "SawCompletedJob", msg).await;
                }
                if ok {
                    let done = j.status.as_ref().and_then(|s| s.completion_time.clone());
                    if done.as_ref().map(|t| t.0) > last_success.as_ref().map(|t| t.0) {
                        last_success = done;
                    }
                }
            }
        }
        for (ok, limit) in [
            (true, spec.successful_jobs_history_limit.unwrap_or(3)),
            (false, spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let finished: Vec<&Arc<Job>> = owned.iter().filter(|j| outcome(j) == Some(ok)).collect();
            let excess = finished.len().saturating_sub(limit.max(0) as usize);
            for j in &finished[..excess] {
                self.delete_job(&job_api, cj, j).await?;
            }
        }
        let mut active: Vec<Arc<Job>> = owned.iter().filter(|j| outcome(j).is_none()).cloned().collect();
        let mut last_schedule = old.last_schedule_time.clone();

        // A scheduled start, if one is due.
        match Schedule::parse(&spec.schedule) {
            Err(e) => {
                let msg = format!("invalid schedule: {}: {e}", spec.schedule);
                self.say_once(cj, "Warning", "UnparseableSchedule", msg).await;
            }
            Ok(_) if spec.suspend == Some(true) => {}
            Ok(schedule) => {
                let created = cj.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
                let mut earliest = old.last_schedule_time.as_ref().map(|t| t.0).unwrap_or(created);
                if let Some(d) = spec.starting_deadline_seconds {
                    let cutoff = now.saturating_sub(k8s_openapi::jiff::SignedDuration::from_secs(d));
                    earliest = earliest.max(cutoff.unwrap_or(now));
                }
                let (due, missed) = schedule.last_between(earliest, now);
                if missed > 100 {
                    let msg = "too many missed start times (> 100). Set or decrease .spec.startingDeadlineSeconds or check clock skew".to_string();
                    self.say_once(cj, "Warning", "TooManyMissedTimes", msg).await;
                }
                if let Some(at) = due {
                    let job = job_name(name, at);
                    let exists = owned.iter().any(|j| pods::name(&j.metadata) == job);
                    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                    if !exists && policy == "Forbid" && !active.is_empty() {
                        let msg =
                            "Not starting job because prior execution is running and concurrency policy is Forbid"
                                .to_string();
                        self.say_once(cj, "Normal", "JobAlreadyActive", msg).await;
                    } else if !exists {
                        if policy == "Replace" {
                            for j in active.drain(..) {
                                self.delete_job(&job_api, cj, &j).await?;
                            }
                        }
                        if let Some(j) = self.create_job(&job_api, cj, &job, at).await? {
                            active.push(Arc::new(j));
                        }
                        last_schedule = Some(Time(at));
                    } else if last_schedule.as_ref().map(|t| t.0) < Some(at) {
                        last_schedule = Some(Time(at));
                    }
                }
            }
        }

        let refs: Vec<ObjectReference> = active.iter().map(|j| reference(j)).collect();
        let old_refs: Vec<Option<String>> = old.active.iter().flatten().map(|r| r.uid.clone()).collect();
        let new_refs: Vec<Option<String>> = refs.iter().map(|r| r.uid.clone()).collect();
        if old_refs != new_refs || last_schedule != old.last_schedule_time || last_success != old.last_successful_time {
            let api: Api<CronJob> = Api::namespaced(self.ctx.client.clone(), ns);
            let active = if refs.is_empty() { serde_json::Value::Null } else { json!(refs) };
            let patch = json!({"status": {"active": active, "lastScheduleTime": last_schedule, "lastSuccessfulTime": last_success}});
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        }
        Ok(())
    }

    async fn create_job(&self, api: &Api<Job>, cj: &CronJob, name: &str, at: Timestamp) -> kube::Result<Option<Job>> {
        let template = cj.spec.as_ref().map(|s| s.job_template.clone()).unwrap_or_default();
        let meta = template.metadata.unwrap_or_default();
        let mut annotations = meta.annotations.unwrap_or_default();
        annotations.insert("batch.kubernetes.io/cronjob-scheduled-timestamp".into(), at.to_string());
        let job = Job {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                namespace: cj.metadata.namespace.clone(),
                labels: meta.labels,
                annotations: Some(annotations),
                owner_references: Some(vec![pods::controller_ref("batch/v1", "CronJob", &cj.metadata)]),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        match api.create(&PostParams::default(), &job).await {
            Ok(j) => {
                self.ctx.recorder.record(cj, "Normal", "SuccessfulCreate", format!("Created job {name}")).await;
                Ok(Some(j))
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_job(&self, api: &Api<Job>, cj: &CronJob, j: &Job) -> kube::Result<()> {
        let dp = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        match api.delete(pods::name(&j.metadata), &dp).await {
            Ok(_) => {
                let msg = format!("Deleted job {}", pods::name(&j.metadata));
                self.ctx.recorder.record(cj, "Normal", "SuccessfulDelete", msg).await;
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}
