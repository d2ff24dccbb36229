//! skiff-nodeagent: the node agent (`skiff agent`). It registers Nodes, keeps their
//! Leases fresh, and runs the pods bound to them on a `runtime::Runtime`. The
//! simulated runtime (`--runtime fake`) lets one process hold hundreds of nodes for
//! testing controllers; the containerd runtime comes with the node agent issue.

pub mod agent;
pub mod localpath;
pub mod metrics;
pub mod podstatus;
pub mod runtime;

/// Runs an agent with the simulated runtime until it is stopped.
pub async fn run_fake(cfg: agent::Config, start_delay: std::time::Duration) -> anyhow::Result<()> {
    let client = skiff_controllers::client::from_kubeconfig(&cfg.kubeconfig).await?;
    agent::Agent::new(client, cfg, runtime::Fake::new(start_delay)).run().await
}
