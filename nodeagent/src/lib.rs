//! skiff-nodeagent: the node agent (`skiff agent`). It registers Nodes, keeps their
//! Leases fresh, and runs the pods bound to them on a `runtime::Runtime`: the simulated
//! runtime (`--runtime fake`) lets one process hold hundreds of nodes for testing
//! controllers; the containerd runtime (`ctr`, `--runtime containerd`) runs real
//! containers with CNI networking.

pub mod agent;
pub mod ctr;
pub mod localpath;
pub mod metrics;
pub mod podstatus;
pub mod runtime;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use skiff_controllers::informer::notifying_cache;

/// Runs an agent with the simulated runtime until it is stopped.
pub async fn run_fake(mut cfg: agent::Config, start_delay: std::time::Duration) -> anyhow::Result<()> {
    // Simulated nodes serve no logs or exec: port 0 tells the API server not to dial
    // their made-up addresses.
    cfg.port = 0;
    let client = skiff_controllers::client::from_kubeconfig(&cfg.kubeconfig).await?;
    agent::Agent::new(client, cfg, runtime::Fake::new(start_delay)).run().await
}

/// Runs an agent on containerd until `stopped` resolves; then stops the private
/// containerd (if it started one), leaving running pods to be adopted next time.
pub async fn run_containerd(
    mut cfg: agent::Config,
    settings: ctr::Settings,
    stopped: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = skiff_controllers::client::from_kubeconfig(&cfg.kubeconfig).await?;
    let mut settings = settings;
    settings.network.subnet = agent::node_pod_cidr(&client, &cfg).await?;
    // For `skiff reset-node`, which tears pods' networks down without asking the Node.
    std::fs::create_dir_all(&settings.root)?;
    std::fs::write(settings.root.join(ctr::POD_CIDR_FILE), &settings.network.subnet)?;
    let proxy = settings.proxy();
    let dns_addr = settings.network.gateway().map(|(ip, _)| std::net::SocketAddr::from((ip, 53)));
    let domain = settings.cluster_domain.clone();
    let rt = ctr::Containerd::start(client.clone(), settings).await?;
    // Services and EndpointSlices feed both the service rules and the cluster DNS.
    let changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let services = notifying_cache(Api::<Service>::all(client.clone()), changed.clone());
    let slices = notifying_cache(Api::<EndpointSlice>::all(client.clone()), changed.clone());
    let pods = notifying_cache(Api::<Pod>::all(client.clone()), std::sync::Arc::new(tokio::sync::Notify::new()));
    let dns = ctr::dns::Dns { domain, services: services.clone(), slices: slices.clone(), pods };
    let dns = async move {
        match dns_addr {
            Some(a) => dns.serve(a).await,
            None => std::future::pending().await,
        }
    };
    cfg.runtime_version = rt.version();
    let ip: std::net::IpAddr = match &cfg.node_ip {
        Some(ip) => ip.parse().map_err(|_| anyhow::anyhow!("--node-ip {ip} is not an IP address"))?,
        None => anyhow::bail!("the containerd agent needs the node's address"),
    };
    let addr = std::net::SocketAddr::new(ip, cfg.port);
    let nodes_changed = std::sync::Arc::new(tokio::sync::Notify::new());
    let nodes = notifying_cache(Api::<Node>::all(client.clone()), nodes_changed.clone());
    let routes = ctr::routes::Routes::new(cfg.node_name.as_deref().unwrap_or_default());
    let result = tokio::select! {
        r = agent::Agent::new(client.clone(), cfg, rt.clone()).run() => r,
        r = ctr::server::serve(rt.clone(), addr) => r,
        r = ctr::proxy::run_proxy(proxy, services, slices, changed) => r,
        r = routes.run(nodes, nodes_changed) => r,
        r = dns => r,
        _ = stopped => Ok(()),
    };
    rt.shutdown().await;
    result
}

/// Removes everything an agent with these settings left on the node: containers and
/// their tasks, pod network namespaces and addresses, volumes, cgroups, the bridge, and
/// the private containerd's data (like `kubeadm reset`).
pub async fn reset(settings: ctr::Settings) -> anyhow::Result<()> {
    ctr::reset(settings).await
}
