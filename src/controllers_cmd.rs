//! `skiff controller-manager`, `skiff scheduler` and `skiff agent`: the control loops
//! and the node agent. The work is done by `skiff_controllers` and `skiff_nodeagent`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::duration;

#[derive(Args)]
pub struct ElectionArgs {
    /// Take part in leader election through a Lease in kube-system, so several replicas
    /// can run and one leads.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a leader's Lease lasts without renewal before a standby takes over.
    #[arg(long, default_value = "15s", value_parser = duration::parse)]
    leader_elect_lease_duration: Duration,
}

impl ElectionArgs {
    fn election(&self) -> skiff_controllers::Election {
        skiff_controllers::Election { enabled: self.leader_elect, lease_duration: self.leader_elect_lease_duration }
    }
}

#[derive(Args)]
pub struct ControllerManagerArgs {
    /// Kubeconfig to reach the API server with (e.g. the API server's admin.kubeconfig).
    #[arg(long)]
    kubeconfig: PathBuf,
    #[command(flatten)]
    election: ElectionArgs,
    /// How long a node may go without renewing its Lease before it is marked
    /// Ready=Unknown and tainted unreachable.
    #[arg(long, default_value = "40s", value_parser = duration::parse)]
    node_monitor_grace_period: Duration,
    /// How often node health is checked.
    #[arg(long, default_value = "5s", value_parser = duration::parse)]
    node_monitor_period: Duration,
    /// How often each HorizontalPodAutoscaler is evaluated.
    #[arg(long, default_value = "15s", value_parser = duration::parse)]
    horizontal_pod_autoscaler_sync_period: Duration,
    /// How long an HPA waits, after its metrics call for fewer replicas, before scaling
    /// down (the highest recommendation of this window wins), unless its
    /// behavior.scaleDown sets a window.
    #[arg(long, default_value = "5m", value_parser = duration::parse)]
    horizontal_pod_autoscaler_downscale_stabilization: Duration,
}

#[derive(Args)]
pub struct SchedulerArgs {
    /// Kubeconfig to reach the API server with.
    #[arg(long)]
    kubeconfig: PathBuf,
    #[command(flatten)]
    election: ElectionArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum RuntimeKind {
    /// Simulated containers: nothing runs, pods go Running after --start-delay.
    Fake,
}

#[derive(Args)]
pub struct AgentArgs {
    /// Kubeconfig to reach the API server with.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// The container runtime.
    #[arg(long, value_enum)]
    runtime: RuntimeKind,
    /// How many nodes this agent registers and runs (simulated runtime).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Nodes are named `<prefix>-0`, `<prefix>-1`, ...
    #[arg(long, default_value = "node")]
    node_name_prefix: String,
    /// CPU capacity of each node (a Kubernetes quantity).
    #[arg(long, default_value = "4")]
    cpu: String,
    /// Memory capacity of each node.
    #[arg(long, default_value = "16Gi")]
    memory: String,
    /// Most pods each node runs.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Nodes are spread over this many zones (label topology.kubernetes.io/zone).
    #[arg(long, default_value_t = 3)]
    zones: usize,
    /// How long simulated containers take to start.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    start_delay: Duration,
    /// The leaseDurationSeconds written into node Leases.
    #[arg(long, default_value = "40s", value_parser = duration::parse)]
    node_lease_duration: Duration,
    /// How often node Leases are renewed.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    node_lease_renew_interval: Duration,
    /// How often every pod's status is recomputed.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    sync_period: Duration,
    /// Where the local-path provisioner makes the directories of volumes for claims of
    /// the default StorageClass (`<root>/<node>/<volume>_<namespace>_<claim>`).
    #[arg(long, default_value = "/var/lib/skiff/local-path")]
    local_path_root: PathBuf,
}

async fn until_stopped(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
    }
}

pub async fn controller_manager(a: ControllerManagerArgs) -> anyhow::Result<()> {
    until_stopped(skiff_controllers::run_controller_manager(skiff_controllers::ManagerConfig {
        kubeconfig: a.kubeconfig,
        election: a.election.election(),
        nodes: skiff_controllers::nodelifecycle::Settings {
            grace: a.node_monitor_grace_period,
            period: a.node_monitor_period,
        },
        autoscaling: skiff_controllers::hpa::Settings {
            period: a.horizontal_pod_autoscaler_sync_period,
            downscale_window: a.horizontal_pod_autoscaler_downscale_stabilization,
        },
    }))
    .await
}

pub async fn scheduler(a: SchedulerArgs) -> anyhow::Result<()> {
    until_stopped(skiff_controllers::run_scheduler(skiff_controllers::SchedulerConfig {
        kubeconfig: a.kubeconfig,
        election: a.election.election(),
    }))
    .await
}

pub async fn agent(a: AgentArgs) -> anyhow::Result<()> {
    if a.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    let cfg = skiff_nodeagent::agent::Config {
        kubeconfig: a.kubeconfig,
        nodes: a.nodes,
        node_prefix: a.node_name_prefix,
        cpu: a.cpu,
        memory: a.memory,
        max_pods: a.max_pods,
        zones: a.zones,
        lease_duration: a.node_lease_duration,
        renew: a.node_lease_renew_interval,
        sync_period: a.sync_period,
        local_path_root: a.local_path_root,
    };
    match a.runtime {
        RuntimeKind::Fake => until_stopped(skiff_nodeagent::run_fake(cfg, a.start_delay)).await,
    }
}
