//! Leader election through a coordination.k8s.io Lease, as Kubernetes components do it:
//! the holder renews `renewTime` every `renew` interval; a candidate takes the Lease
//! when it has not been renewed for `leaseDurationSeconds`. Every write is a replace
//! at the Lease's resourceVersion, so two candidates can never both win. A leader
//! that cannot renew in time stops leading (the process exits; a supervisor or a
//! standby carries on).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew: Duration,
}

impl Election {
    pub fn new(name: &str, lease_duration: Duration) -> Election {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Election {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: format!("{}_{}", host.trim(), std::process::id()),
            lease_duration,
            renew: (lease_duration / 3).max(Duration::from_millis(200)),
        }
    }

    fn lease(&self, transitions: i32, acquired: Option<MicroTime>, rv: Option<String>) -> Lease {
        let now = MicroTime(Timestamp::now());
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: rv,
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
                acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
                renew_time: Some(now),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }

    /// One attempt: Ok(true) when we hold the Lease afterwards.
    pub async fn try_acquire_or_renew(&self, api: &Api<Lease>) -> kube::Result<bool> {
        let pp = PostParams::default();
        let Some(cur) = api.get_opt(&self.name).await? else {
            return match api.create(&pp, &self.lease(0, None, None)).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = cur.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(&self.identity);
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
        let expired = match &spec.renew_time {
            Some(t) => {
                let age = Timestamp::now().duration_since(t.0);
                age.as_secs_f64() > duration.as_secs_f64()
            }
            None => true,
        };
        if !ours && !expired && spec.holder_identity.as_deref().is_some_and(|h| !h.is_empty()) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { spec.acquire_time } else { None };
        let next = self.lease(transitions, acquired, cur.metadata.resource_version.clone());
        match api.replace(&self.name, &pp, &next).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate leads, then returns a future that resolves when
    /// leadership is lost (a renewal failed for longer than the lease lasts).
    pub async fn lead(self, client: kube::Client) -> impl std::future::Future<Output = ()> {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        loop {
            match self.try_acquire_or_renew(&api).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!("leader election for {}: {e}", self.name),
            }
            tokio::time::sleep(self.renew).await;
        }
        tracing::info!("{} leads {}", self.identity, self.name);
        async move {
            let mut last_ok = std::time::Instant::now();
            loop {
                tokio::time::sleep(self.renew).await;
                match self.try_acquire_or_renew(&api).await {
                    Ok(true) => last_ok = std::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("{} lost the lease {}", self.identity, self.name);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("renewing the lease {}: {e}", self.name);
                        // Stop before another candidate may take over.
                        if last_ok.elapsed() + self.renew >= self.lease_duration {
                            return;
                        }
                    }
                }
            }
        }
    }
}
