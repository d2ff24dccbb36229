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
    /// Serve Prometheus `/metrics` here over plain HTTP (e.g. 127.0.0.1:10257).
    /// Default: not served.
    #[arg(long)]
    metrics_bind_address: Option<std::net::SocketAddr>,
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
    /// Give every Node a pod CIDR (`spec.podCIDR`) from --cluster-cidr; node agents
    /// without --pod-cidr wire their pods from it and route to the other Nodes' CIDRs.
    #[arg(long, requires = "cluster_cidr")]
    allocate_node_cidrs: bool,
    /// The range Nodes' pod CIDRs come from (with --allocate-node-cidrs), e.g. 10.88.0.0/16.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// Prefix length of each Node's pod CIDR: /24 gives 254 pod addresses per Node.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
}

#[derive(Args)]
pub struct SchedulerArgs {
    /// Kubeconfig to reach the API server with.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Serve Prometheus `/metrics` here over plain HTTP (e.g. 127.0.0.1:10259).
    /// Default: not served.
    #[arg(long)]
    metrics_bind_address: Option<std::net::SocketAddr>,
    #[command(flatten)]
    election: ElectionArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// Simulated containers: nothing runs, pods go Running after --start-delay.
    Fake,
    /// Real containers on containerd + runc, networked by the CNI plugins (needs root).
    Containerd,
}

/// Where and how the containerd runtime keeps pods; shared by `agent` and `reset-node`.
#[derive(Args, Clone)]
pub struct ContainerdArgs {
    /// Directory of the agent's pods (volumes, logs) and of its private containerd.
    /// Default: /var/lib/skiff/agent (with `skiff up`: <data-dir>/agent).
    #[arg(long)]
    pub(crate) root: Option<PathBuf>,
    /// Use the containerd listening here instead of starting a private one under --root.
    #[arg(long)]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace the agent's images and containers live in.
    #[arg(long, default_value = "skiff")]
    containerd_namespace: String,
    /// Bridge the pods' interfaces attach to (created by the CNI bridge plugin).
    #[arg(long, default_value = "skiff0")]
    bridge: String,
    /// Subnet pod addresses come from; the bridge takes its first address. Default:
    /// the pod CIDR the controller-manager gives this Node (`spec.podCIDR`, with
    /// --allocate-node-cidrs), waited for at start. Given here, it is registered as the
    /// Node's `spec.podCIDR`, so other nodes route it here.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The API server's --service-cluster-ip-range; routed to the bridge so that
    /// Service addresses never leave the machine.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub(crate) service_cidr: String,
    /// Domain of the cluster DNS the agent serves to pods (on the bridge's address).
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Directory of the CNI plugin binaries (Debian's containernetworking-plugins).
    #[arg(long, default_value = "/usr/lib/cni")]
    pub(crate) cni_bin_dir: PathBuf,
    /// cgroup under which pods get `pod<uid>/<container>` cgroups.
    #[arg(long, default_value = "/skiff")]
    cgroup_parent: String,
    /// First CrashLoopBackOff delay; it doubles on each crash up to --crash-loop-backoff-max.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    crash_loop_backoff: Duration,
    /// A registry (`host:port`) to pull from over plain HTTP; localhost and 127.0.0.1
    /// always are (repeatable). Others are spoken to over HTTPS.
    #[arg(long)]
    insecure_registry: Vec<String>,
    /// Pull a registry's images from a mirror instead: `HOST=URL`, e.g.
    /// `docker.io=http://127.0.0.1:5000` (repeatable).
    #[arg(long)]
    registry_mirror: Vec<String>,
    /// Longest CrashLoopBackOff delay.
    #[arg(long, default_value = "300s", value_parser = duration::parse)]
    crash_loop_backoff_max: Duration,
}

/// Where a node agent keeps its state unless told otherwise.
const DEFAULT_AGENT_ROOT: &str = "/var/lib/skiff/agent";

impl ContainerdArgs {
    /// The agent's directory: --root, or `default`.
    pub fn root_or(&self, default: &std::path::Path) -> PathBuf {
        self.root.clone().unwrap_or_else(|| default.to_path_buf())
    }

    /// The runtime's settings, with `root` as the agent's directory.
    pub fn settings_at(&self, root: PathBuf, images: Vec<PathBuf>) -> skiff_nodeagent::ctr::Settings {
        skiff_nodeagent::ctr::Settings {
            root: root.clone(),
            socket: self.containerd_socket.clone(),
            namespace: self.containerd_namespace.clone(),
            network: skiff_nodeagent::ctr::cni::Network {
                bridge: self.bridge.clone(),
                subnet: self.pod_cidr.clone().unwrap_or_default(),
                bin_dir: self.cni_bin_dir.clone(),
                state_dir: root.join("cni"),
            },
            cgroup_parent: self.cgroup_parent.clone(),
            backoff: (self.crash_loop_backoff, self.crash_loop_backoff_max),
            images,
            service_cidr: self.service_cidr.clone(),
            cluster_domain: self.cluster_domain.clone(),
            insecure_registries: self.insecure_registry.clone(),
            registry_mirrors: self.registry_mirror.clone(),
        }
    }

    pub fn settings(&self, images: Vec<PathBuf>) -> skiff_nodeagent::ctr::Settings {
        self.settings_at(self.root_or(DEFAULT_AGENT_ROOT.as_ref()), images)
    }
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
    /// Name of the node (containerd runtime). Default: the host name, lowercased.
    #[arg(long)]
    node_name: Option<String>,
    /// Address of the node (containerd runtime), reported as its InternalIP and pods'
    /// hostIP. Default: the address of the interface of the default route.
    #[arg(long)]
    node_ip: Option<String>,
    /// OCI-layout or docker-archive image tarballs to import before running pods
    /// (containerd runtime; repeatable).
    #[arg(long)]
    pub(crate) image_archive: Vec<PathBuf>,
    /// Port on the node's address where the agent serves container logs to the API
    /// server (the kubelet's port).
    #[arg(long, default_value_t = 10250)]
    port: u16,
    #[command(flatten)]
    pub(crate) containerd: ContainerdArgs,
    /// Nodes are named `<prefix>-0`, `<prefix>-1`, ...
    #[arg(long, default_value = "node")]
    node_name_prefix: String,
    /// CPU capacity of each node (a Kubernetes quantity). Default: 4 when simulated,
    /// the machine's CPUs with containerd.
    #[arg(long)]
    cpu: Option<String>,
    /// Memory capacity of each node. Default: 16Gi when simulated, the machine's memory
    /// with containerd.
    #[arg(long)]
    memory: Option<String>,
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
    /// How often every pod's status is recomputed and its usage reported (PodMetrics,
    /// NodeMetrics) even if nothing changed. A pod whose object or containers change is
    /// synced at once, whatever this period (as the kubelet's --sync-frequency).
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
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
    let node_ipam = match (a.allocate_node_cidrs, &a.cluster_cidr) {
        (true, Some(c)) => {
            Some(skiff_controllers::nodeipam::Settings::new(c, a.node_cidr_mask_size).map_err(|e| anyhow::anyhow!(e))?)
        }
        _ => None,
    };
    until_stopped(skiff_controllers::run_controller_manager(skiff_controllers::ManagerConfig {
        kubeconfig: a.kubeconfig,
        metrics_addr: a.metrics_bind_address,
        election: a.election.election(),
        nodes: skiff_controllers::nodelifecycle::Settings {
            grace: a.node_monitor_grace_period,
            period: a.node_monitor_period,
        },
        autoscaling: skiff_controllers::hpa::Settings {
            period: a.horizontal_pod_autoscaler_sync_period,
            downscale_window: a.horizontal_pod_autoscaler_downscale_stabilization,
        },
        node_ipam,
    }))
    .await
}

pub async fn scheduler(a: SchedulerArgs) -> anyhow::Result<()> {
    until_stopped(skiff_controllers::run_scheduler(skiff_controllers::SchedulerConfig {
        kubeconfig: a.kubeconfig,
        election: a.election.election(),
        metrics_addr: a.metrics_bind_address,
    }))
    .await
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "node".into()).trim().to_lowercase()
}

/// The source address of the default route (what the node is reached at), from /proc.
fn default_route_ip() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let dev = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000")).then(|| f[0].to_string())
    })?;
    let out = std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &dev]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text.split_whitespace().skip_while(|w| *w != "inet").nth(1)?;
    Some(cidr.split('/').next()?.to_string())
}

pub async fn agent(a: AgentArgs) -> anyhow::Result<()> {
    if a.nodes == 0 {
        anyhow::bail!("--nodes must be at least 1");
    }
    let real = matches!(a.runtime, RuntimeKind::Containerd);
    if real && a.nodes != 1 {
        anyhow::bail!("--nodes applies to the simulated runtime; a containerd agent runs one node");
    }
    let (cpu, memory) = if real {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mem = skiff_nodeagent::ctr::node_memory_bytes() / 1024;
        (a.cpu.unwrap_or_else(|| cpus.to_string()), a.memory.unwrap_or_else(|| format!("{mem}Ki")))
    } else {
        (a.cpu.unwrap_or_else(|| "4".into()), a.memory.unwrap_or_else(|| "16Gi".into()))
    };
    let node_ip = if real {
        let ip = a.node_ip.or_else(default_route_ip);
        Some(ip.ok_or_else(|| anyhow::anyhow!("cannot tell the node's address; pass --node-ip"))?)
    } else {
        a.node_ip
    };
    if let Some(c) = &a.containerd.pod_cidr {
        let cidr: skiff_controllers::nodeipam::Cidr = c.parse().map_err(|e| anyhow::anyhow!("--pod-cidr: {e}"))?;
        if cidr.len > 30 || cidr.to_string() != *c {
            anyhow::bail!(
                "--pod-cidr {c}: give a network of at least 4 addresses with its host bits clear, e.g. {cidr}"
            );
        }
    }
    let cfg = skiff_nodeagent::agent::Config {
        kubeconfig: a.kubeconfig,
        nodes: a.nodes,
        node_prefix: a.node_name_prefix,
        node_name: if real { Some(a.node_name.unwrap_or_else(host_name)) } else { a.node_name },
        cpu,
        memory,
        max_pods: a.max_pods,
        zones: a.zones,
        lease_duration: a.node_lease_duration,
        renew: a.node_lease_renew_interval,
        sync_period: a.sync_period,
        local_path_root: a.local_path_root,
        node_ip,
        port: a.port,
        runtime_version: "fake://0.1.0".into(),
        pod_cidr: if real { a.containerd.pod_cidr.clone() } else { None },
    };
    match a.runtime {
        RuntimeKind::Fake => until_stopped(skiff_nodeagent::run_fake(cfg, a.start_delay)).await,
        RuntimeKind::Containerd => {
            let settings = a.containerd.settings(a.image_archive);
            skiff_nodeagent::run_containerd(cfg, settings, async {
                let _ = until_stopped(std::future::pending::<anyhow::Result<()>>()).await;
            })
            .await
        }
    }
}

#[derive(Args)]
pub struct ResetNodeArgs {
    #[command(flatten)]
    containerd: ContainerdArgs,
}

/// `skiff reset-node`: removes what a containerd agent left on this machine.
pub async fn reset_node(a: ResetNodeArgs) -> anyhow::Result<()> {
    let settings = a.containerd.settings(vec![]);
    let root = settings.root.clone();
    skiff_nodeagent::reset(settings).await?;
    eprintln!("removed the pods, network, cgroups and data of the agent under {}", root.display());
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Import OCI-layout or docker-archive tarballs into the agent's containerd.
    Import {
        /// The containerd socket (the agent's private one is `<root>/containerd/state/containerd.sock`).
        #[arg(long, default_value = "/var/lib/skiff/agent/containerd/state/containerd.sock")]
        containerd_socket: PathBuf,
        /// containerd namespace to import into (the agent's).
        #[arg(long, default_value = "skiff")]
        containerd_namespace: String,
        /// Tarballs to import.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write an OCI image tarball whose one layer is a directory tree (the files, modes
    /// and symlinks under --rootfs, owned by root).
    Build {
        /// The tarball to write.
        out: PathBuf,
        /// The directory that becomes the image's filesystem.
        #[arg(long)]
        rootfs: PathBuf,
        /// The image's name, e.g. `docker.io/library/nginx:1.25`.
        #[arg(long)]
        name: String,
        /// The image's command, one argument per flag (`--cmd nginx --cmd -g --cmd "daemon off;"`).
        #[arg(long = "cmd", allow_hyphen_values = true)]
        cmd: Vec<String>,
        /// Environment variables `K=V` (default: a standard PATH).
        #[arg(long)]
        env: Vec<String>,
    },
    /// Write a small OCI image tarball built from a static busybox (for tests, demos and
    /// benchmarks without a registry): busybox and its applets, /etc/passwd, /www.
    BuildBusybox {
        /// The tarball to write.
        out: PathBuf,
        /// The image's name.
        #[arg(long, default_value = "skiff.local/busybox:latest")]
        name: String,
        /// The static busybox binary to use (Debian's busybox-static).
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
}

pub async fn image(c: ImageCommand) -> anyhow::Result<()> {
    match c {
        ImageCommand::Import { containerd_socket, containerd_namespace, files } => {
            let ch = skiff_nodeagent::ctr::daemon::connect(&containerd_socket).await?;
            let conn = skiff_nodeagent::ctr::Conn::new(ch, &containerd_namespace)?;
            for f in files {
                let names = conn.import(&f).await.map_err(|e| e.context(format!("importing {}", f.display())))?;
                for n in names {
                    println!("{n}");
                }
            }
            Ok(())
        }
        ImageCommand::Build { out, rootfs, name, cmd, env } => {
            if cmd.is_empty() {
                anyhow::bail!("--cmd: the image needs a command");
            }
            skiff_nodeagent::ctr::image::build_from_dir(&rootfs, &name, &cmd, &env, &out)?;
            println!("{}: {}", out.display(), skiff_nodeagent::ctr::image::normalize(&name));
            Ok(())
        }
        ImageCommand::BuildBusybox { out, name, busybox } => {
            skiff_nodeagent::ctr::image::build_busybox(&busybox, &name, &out)?;
            println!("{}: {}", out.display(), skiff_nodeagent::ctr::image::normalize(&name));
            Ok(())
        }
    }
}
