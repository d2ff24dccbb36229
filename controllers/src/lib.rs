//! skiff-controllers: the scheduler and the controller-manager, on kube-rs. Both talk
//! only to the API server (never the store), each reconciler is small and idempotent,
//! and each process can run as several replicas: one leads through a
//! coordination.k8s.io Lease, the others wait to take over.

pub mod client;
pub mod cron;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod expectations;
pub mod gc;
pub mod history;
pub mod hpa;
pub mod informer;
pub mod job;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod pods;
pub mod quantity;
pub mod queue;
pub mod replicaset;
pub mod scheduler;
pub mod statefulset;
pub mod tokencleaner;
pub mod volumes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store;

use crate::informer::Informer;
use crate::queue::Queue;

/// A reconcile failure; the object is retried shortly.
#[derive(Debug)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Error {
        Error(e.to_string())
    }
}

/// What every controller of the controller-manager shares.
pub struct Ctx {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    /// The pods of `pods` by their controller.
    pub pods_by_controller: informer::ByController,
    pub replicasets: Store<ReplicaSet>,
    pub nodes: Store<Node>,
    pub recorder: events::Recorder,
    pub expectations: expectations::Expectations,
    /// The cluster CA (PEM) every namespace's `kube-root-ca.crt` ConfigMap carries.
    pub root_ca: Option<String>,
}

fn retry<K>(_obj: Arc<K>, e: &Error, _ctx: Arc<Ctx>) -> Action {
    // Conflicts are routine (someone else wrote first); anything else is logged.
    if !e.0.contains("409") && !e.0.contains("Conflict") {
        tracing::warn!("reconcile: {e}");
    }
    Action::requeue(Duration::from_millis(500))
}

#[derive(Clone, Debug)]
pub struct Election {
    pub enabled: bool,
    pub lease_duration: Duration,
}

pub struct ManagerConfig {
    pub kubeconfig: PathBuf,
    /// Where `/metrics` is served over plain HTTP, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub election: Election,
    pub nodes: nodelifecycle::Settings,
    pub autoscaling: hpa::Settings,
    /// Pod CIDRs for Nodes (`--allocate-node-cidrs`), if the controller-manager gives them.
    pub node_ipam: Option<nodeipam::Settings>,
}

async fn lead(name: &str, client: &kube::Client, e: &Election) -> futures::future::BoxFuture<'static, ()> {
    if !e.enabled {
        return Box::pin(futures::future::pending());
    }
    Box::pin(leader::Election::new(name, e.lease_duration).lead(client.clone()).await)
}

/// Runs the controller-manager until it is stopped or loses its leadership.
/// How long the controllers that every pod change wakes (ReplicaSet, Endpoints) wait
/// between two reconciles of one object, merging the pod changes in between.
const POD_BATCH: Duration = Duration::from_millis(500);

pub async fn run_controller_manager(cfg: ManagerConfig) -> anyhow::Result<()> {
    let client = client::from_kubeconfig(&cfg.kubeconfig).await?;
    // Served before leading, so a standby answers too (with no reconciles).
    serve_metrics(cfg.metrics_addr).await?;
    let lost = lead("kube-controller-manager", &client, &cfg.election).await;

    let mut pods = Informer::new(Api::<Pod>::all(client.clone()));
    let mut rss = Informer::new(Api::<ReplicaSet>::all(client.clone()));
    let mut nodes = Informer::new(Api::<Node>::all(client.clone()));
    let leases = Informer::new(Api::<Lease>::namespaced(client.clone(), "kube-node-lease"));
    let hpas = Informer::new(Api::<HorizontalPodAutoscaler>::all(client.clone()));
    let mut jobs = Informer::new(Api::<Job>::all(client.clone()));
    let cronjobs = Informer::new(Api::<CronJob>::all(client.clone()));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods: pods.store(),
        pods_by_controller: pods.by_controller(),
        replicasets: rss.store(),
        nodes: nodes.store(),
        recorder: events::Recorder::new(client.clone(), "controller-manager"),
        expectations: Default::default(),
        root_ca: client::root_ca(&cfg.kubeconfig),
    });

    let drain = |s: futures::stream::BoxStream<'static, ()>| tokio::spawn(s.collect::<Vec<()>>());
    let mut deploys = Informer::new(Api::<Deployment>::all(client.clone()));
    let mut statefulsets = Informer::new(Api::<StatefulSet>::all(client.clone()));
    let mut daemonsets = Informer::new(Api::<DaemonSet>::all(client.clone()));
    let mut services = Informer::new(Api::<Service>::all(client.clone()));
    let mut namespaces = Informer::new(Api::<Namespace>::all(client.clone()));
    let rs_ctrl = Queue::new("replicaset", rss.subscribe(), rss.store()).owns(pods.subscribe()).spaced(POD_BATCH).run(
        replicaset::reconcile,
        retry,
        ctx.clone(),
    );
    let deploy_ctrl = Queue::new("deployment", deploys.subscribe(), deploys.store()).owns(rss.subscribe()).run(
        deployment::reconcile,
        retry,
        ctx.clone(),
    );
    let sts_ctrl = Queue::new("statefulset", statefulsets.subscribe(), statefulsets.store())
        .owns(pods.subscribe())
        .run(statefulset::reconcile, retry, ctx.clone());
    let ds_store = daemonsets.store();
    let ds_ctrl = Queue::new("daemonset", daemonsets.subscribe(), daemonsets.store())
        .owns(pods.subscribe())
        .watches(nodes.subscribe(), move |_: Node| {
            ds_store.state().iter().map(|d| ObjectRef::from_obj(d.as_ref())).collect::<Vec<_>>()
        })
        .run(daemonset::reconcile, retry, ctx.clone());
    let job_ctrl = Queue::new("job", jobs.subscribe(), jobs.store()).owns(pods.subscribe()).run(
        job::reconcile,
        retry,
        ctx.clone(),
    );
    let svc_store = services.store();
    let ep_ctrl = Queue::new("endpoints", services.subscribe(), services.store())
        .watches(pods.subscribe(), move |p: Pod| endpoints::services_of(&p, &svc_store))
        .spaced(POD_BATCH)
        .run(endpoints::reconcile, retry, ctx.clone());
    let ns_ctrl = Queue::new("namespace", namespaces.subscribe(), namespaces.store()).run(
        namespace::reconcile,
        retry,
        ctx.clone(),
    );
    let node_store = nodes.store();
    let ipam = cfg.node_ipam.clone().map(|s| (s, nodes.subscribe().boxed()));
    let lease_store = leases.store();
    let hpa_store = hpas.store();
    let cronjob_ctrl = cronjob::Controller::new(ctx.clone(), cronjobs.store(), jobs.store());
    drop(jobs.run());
    drop(cronjobs.run());
    let volumes_changed = Arc::new(tokio::sync::Notify::new());
    let volume_caches = volumes::Volumes::watch(&client, volumes_changed.clone());
    drop(hpas.run());
    drop(pods.run());
    drop(rss.run());
    drop(nodes.run());
    drop(leases.run());
    drop(deploys.run());
    drop(statefulsets.run());
    drop(daemonsets.run());
    drop(services.run());
    drop(namespaces.run());
    // The controllers read each other's caches (a ReplicaSet's pods, a Deployment's
    // ReplicaSets): they start only once those hold a full list, or a fresh manager
    // would take an empty cache for "no pods" and act on it.
    let synced = futures::try_join!(
        ctx.pods.wait_until_ready(),
        ctx.replicasets.wait_until_ready(),
        ctx.nodes.wait_until_ready(),
    );
    synced.map_err(|_| anyhow::anyhow!("a cache's watch ended before its first list"))?;
    let tasks = vec![
        drain(rs_ctrl),
        drain(deploy_ctrl),
        drain(sts_ctrl),
        drain(job_ctrl),
        drain(ds_ctrl),
        drain(ep_ctrl),
        drain(ns_ctrl),
        tokio::spawn(async move {
            gc::Gc::start(client).run().await;
            Vec::new()
        }),
        tokio::spawn(async move {
            cronjob_ctrl.run().await;
            Vec::new()
        }),
        {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                volumes::run(ctx, volume_caches, volumes_changed).await;
                Vec::new()
            })
        },
        {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                hpa::run(ctx, hpa_store, cfg.autoscaling, hpa::History::default()).await;
                Vec::new()
            })
        },
        {
            let client = ctx.client.clone();
            tokio::spawn(async move {
                tokencleaner::run(client, Duration::from_secs(5)).await;
                Vec::new()
            })
        },
        {
            let (ctx, nodes) = (ctx.clone(), node_store.clone());
            tokio::spawn(async move {
                match ipam {
                    Some((settings, changes)) => nodeipam::run(ctx, nodes, changes, settings).await,
                    None => std::future::pending().await,
                }
                Vec::new()
            })
        },
        tokio::spawn(async move {
            nodelifecycle::run(ctx, node_store, lease_store, cfg.nodes).await;
            Vec::new()
        }),
    ];
    tokio::select! {
        _ = lost => anyhow::bail!("lost the kube-controller-manager lease; stopping so a standby can lead"),
        _ = futures::future::select_all(tasks) => anyhow::bail!("a controller stopped"),
    }
}

pub struct SchedulerConfig {
    pub kubeconfig: PathBuf,
    pub election: Election,
    /// Where `/metrics` is served over plain HTTP, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Binds `addr` (so a bad address fails at start) and serves `/metrics` there.
async fn serve_metrics(addr: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("--metrics-bind-address {addr}: {e}"))?;
        tokio::spawn(metrics::serve(listener));
    }
    Ok(())
}

/// Runs the scheduler until it is stopped or loses its leadership.
pub async fn run_scheduler(cfg: SchedulerConfig) -> anyhow::Result<()> {
    let client = client::from_kubeconfig(&cfg.kubeconfig).await?;
    serve_metrics(cfg.metrics_addr).await?;
    let lost = lead("kube-scheduler", &client, &cfg.election).await;
    let changed = Arc::new(tokio::sync::Notify::new());
    let pods = informer::notifying_cache(Api::<Pod>::all(client.clone()), changed.clone());
    let nodes = informer::notifying_cache(Api::<Node>::all(client.clone()), changed.clone());
    let volumes = volumes::Volumes::watch(&client, changed.clone());
    let s = scheduler::Scheduler::new(client, pods, nodes, volumes, changed);
    tokio::select! {
        _ = lost => anyhow::bail!("lost the kube-scheduler lease; stopping so a standby can lead"),
        _ = s.run() => anyhow::bail!("the scheduler stopped"),
    }
}
