//! `skiff`: one binary, one subcommand per component. This file only parses flags and
//! hands plain values to the library crates.

mod apiserver_cmd;
mod bench_cmd;
mod chaos_cmd;
mod cluster_bench;
mod controllers_cmd;
mod controlplane;
mod dashboard_cmd;
mod duration;
mod endpoint;
mod join_cmd;
mod member_cmd;
mod pod_bench;
mod snapshot;
mod token_cmd;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// glibc's malloc showed up as ~10% of a member's CPU under write load (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use skiff_store::{ClusterState, MemberConfig};

#[derive(Parser)]
#[command(name = "skiff", version, about = "Skiff: an etcd-compatible store and Kubernetes-compatible orchestrator")]
struct Cli {
    /// Log filter, e.g. `info` or `skiff_store=debug,openraft=warn`.
    #[arg(long, global = true, env = "SKIFF_LOG", default_value = "info,openraft=warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run one member of a store cluster (speaks the etcd v3 API).
    Store(StoreArgs),
    /// Inspect store endpoints: `status` or `health`.
    Endpoint {
        #[command(subcommand)]
        command: endpoint::EndpointCommand,
    },
    /// Change a store cluster's membership: list, add, remove, promote, update.
    Member {
        #[command(subcommand)]
        command: member_cmd::MemberCommand,
    },
    /// Load any etcd v3 endpoint (Skiff or etcd) and report throughput and latency.
    Bench(bench_cmd::BenchArgs),
    /// Run the whole control plane with simulated nodes at scale and measure it
    /// (scheduler throughput, pod start latency, API latency, memory and CPU).
    BenchCluster(cluster_bench::ClusterBenchArgs),
    /// Time pods from creation to Running on a real containerd node (needs root).
    BenchPodStart(pod_bench::PodBenchArgs),
    /// Back up a store cluster and restore backups into new clusters.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::SnapshotCommand,
    },
    /// Serve the Kubernetes API on a store cluster (kubectl works against it).
    Apiserver(apiserver_cmd::ApiServerArgs),
    /// Run the controllers (ReplicaSet, Deployment, endpoints, garbage collector, namespaces, node lifecycle).
    ControllerManager(controllers_cmd::ControllerManagerArgs),
    /// Assign pending pods to nodes.
    Scheduler(controllers_cmd::SchedulerArgs),
    /// Run a node agent: register nodes and run the pods bound to them.
    Agent(controllers_cmd::AgentArgs),
    /// Remove what a containerd node agent left on this machine (pods, network, cgroups, data).
    ResetNode(controllers_cmd::ResetNodeArgs),
    /// Manage the images of a node agent's containerd.
    Image {
        #[command(subcommand)]
        command: controllers_cmd::ImageCommand,
    },
    /// Start a whole single-node cluster (store, API server, controllers, scheduler and a
    /// node on a private containerd) in the background and wait until it is ready.
    Up(up::UpArgs),
    /// Like `up`, for the first machine of a cluster others join: the store serves TLS
    /// and takes only clients with a certificate of the cluster CA, and a `skiff join`
    /// command (with a new bootstrap token and the CA's hash) is printed.
    Init(up::UpArgs),
    /// Stop the cluster `skiff up` started and remove what its node made on the machine.
    Down(up::DownArgs),
    /// Serve the web dashboard on a local port, acting as a kubeconfig's user (like
    /// `kubectl proxy`); prints its URL.
    Dashboard(dashboard_cmd::DashboardArgs),
    /// Join this machine to a cluster as a node, with a bootstrap token (like `kubeadm
    /// join`): fetch and check the CA, get a node certificate, run the node agent.
    Join(join_cmd::JoinArgs),
    /// Bootstrap tokens (create, list, delete), with which new machines join.
    Token {
        #[command(subcommand)]
        command: token_cmd::TokenCommand,
    },
    /// Kill, pause and partition store members under load and check that nothing was lost.
    Chaos {
        #[command(subcommand)]
        command: chaos_cmd::ChaosCommand,
    },
}

/// Flags mirror etcd's; lists are comma-separated.
#[derive(Args)]
struct StoreArgs {
    /// Human-readable name of this member; must match an entry of --initial-cluster.
    #[arg(long, default_value = "default")]
    name: String,
    /// Directory for the member's data (created if missing). Default: `<name>.skiff`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (etcd v3 gRPC).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    listen_client_urls: Vec<String>,
    /// Client URLs this member announces to the cluster (`member list`). Default: the listen URLs.
    #[arg(long, value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// URLs to listen on for traffic from other members.
    #[arg(long, default_value = "http://127.0.0.1:2380", value_delimiter = ',')]
    listen_peer_urls: Vec<String>,
    /// Peer URLs of this member as the other members reach them. Default: the listen peer URLs.
    #[arg(long, value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// The bootstrap membership, `name=peer-url,...`. Default: this member alone.
    #[arg(long)]
    initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster from --initial-cluster; `existing` to join one
    /// (the member must have been added first). Ignored once the data dir holds data.
    #[arg(long, default_value = "new")]
    initial_cluster_state: ClusterState,
    /// Token that makes the ids of one bootstrap unique among clusters with equal flags.
    #[arg(long, default_value = "skiff-cluster")]
    initial_cluster_token: String,
    /// Largest client request accepted, in bytes (etcd's default: 1.5 MiB).
    #[arg(long, default_value_t = 1572864)]
    max_request_bytes: usize,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Raft election timeout in milliseconds (at least 5 heartbeats).
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Requests applied between raft snapshots (etcd 3.4's default); older log entries are
    /// then purged. A snapshot writes the whole key space to a file, so a smaller count
    /// keeps the log shorter at the cost of more frequent bulk writes.
    #[arg(long, default_value_t = 100000)]
    snapshot_count: u64,
    /// Seconds between progress notifications for watchers that asked for them.
    #[arg(long, default_value_t = 600)]
    watch_progress_notify_interval: u64,
    /// Database size in bytes past which writes raise the NOSPACE alarm and are refused
    /// until it is disarmed (0 = 2 GiB, negative = no quota).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    quota_backend_bytes: i64,
    /// URLs to serve Prometheus `/metrics` and `/health` on (plain HTTP), e.g.
    /// `http://127.0.0.1:2381`. Default: none.
    #[arg(long, value_delimiter = ',')]
    listen_metrics_urls: Vec<String>,
    /// Certificate (PEM) served on https:// client URLs.
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// CA (PEM) that client certificates must be signed by.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Refuse clients without a certificate signed by --trusted-ca-file.
    #[arg(long)]
    client_cert_auth: bool,
    /// Certificate (PEM) for https:// peer URLs, served to peers and shown to them.
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file.
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// CA (PEM) that peers' certificates must be signed by.
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Refuse peers without a certificate signed by --peer-trusted-ca-file.
    #[arg(long)]
    peer_client_cert_auth: bool,
    /// Seconds an auth token (etcdctl --user) stays valid; clients then log in again.
    #[arg(long, default_value_t = 300)]
    auth_token_ttl: u64,
}

impl StoreArgs {
    fn into_config(self) -> Result<MemberConfig, String> {
        let advertise_client_urls = if self.advertise_client_urls.is_empty() {
            self.listen_client_urls.clone()
        } else {
            self.advertise_client_urls
        };
        let initial_advertise_peer_urls = if self.initial_advertise_peer_urls.is_empty() {
            self.listen_peer_urls.clone()
        } else {
            self.initial_advertise_peer_urls
        };
        let initial_cluster = self.initial_cluster.unwrap_or_else(|| {
            initial_advertise_peer_urls.iter().map(|u| format!("{}={u}", self.name)).collect::<Vec<_>>().join(",")
        });
        if self.watch_progress_notify_interval == 0 {
            return Err("--watch-progress-notify-interval must be at least 1 second".into());
        }
        if self.auth_token_ttl == 0 {
            return Err("--auth-token-ttl must be at least 1 second".into());
        }
        Ok(MemberConfig {
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from(format!("{}.skiff", self.name))),
            name: self.name,
            listen_client_urls: self.listen_client_urls,
            advertise_client_urls,
            listen_peer_urls: self.listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: self.initial_cluster_state,
            initial_cluster_token: self.initial_cluster_token,
            max_request_bytes: self.max_request_bytes,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            snapshot_count: self.snapshot_count.max(1),
            watch_progress_notify_interval: Duration::from_secs(self.watch_progress_notify_interval),
            quota_backend_bytes: self.quota_backend_bytes,
            listen_metrics_urls: self.listen_metrics_urls,
            client_tls: skiff_store::config::TlsFiles {
                cert_file: self.cert_file,
                key_file: self.key_file,
                trusted_ca_file: self.trusted_ca_file,
                client_cert_auth: self.client_cert_auth,
            },
            peer_tls: skiff_store::config::TlsFiles {
                cert_file: self.peer_cert_file,
                key_file: self.peer_key_file,
                trusted_ca_file: self.peer_trusted_ca_file,
                client_cert_auth: self.peer_client_cert_auth,
            },
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Store(args) => run_store(args).await,
            Command::Endpoint { command } => endpoint::run(command).await,
            Command::Snapshot { command } => snapshot::run(command).await,
            Command::Member { command } => member_cmd::run(command).await,
            Command::Bench(args) => bench_cmd::run(args).await,
            Command::BenchCluster(args) => cluster_bench::run(args).await,
            Command::BenchPodStart(args) => pod_bench::run(args).await,
            Command::Chaos { command } => return chaos_cmd::run(command).await,
            Command::Apiserver(args) => apiserver_cmd::run(args).await,
            Command::ControllerManager(args) => controllers_cmd::controller_manager(args).await,
            Command::Scheduler(args) => controllers_cmd::scheduler(args).await,
            Command::Agent(args) => controllers_cmd::agent(args).await,
            Command::ResetNode(args) => controllers_cmd::reset_node(args).await,
            Command::Image { command } => controllers_cmd::image(command).await,
            Command::Up(args) => up::up(args).await,
            Command::Init(mut args) => {
                args.init = true;
                up::up(args).await
            }
            Command::Down(args) => up::down(args).await,
            Command::Dashboard(args) => dashboard_cmd::run(args).await,
            Command::Token { command } => token_cmd::run(command).await,
            Command::Join(args) => join_cmd::run(args).await,
        }
        .map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_store(args: StoreArgs) -> anyhow::Result<()> {
    let config = args.into_config().map_err(anyhow::Error::msg)?;
    let member = skiff_store::start(config.clone()).await?;
    tracing::info!(
        "member {} ({:x}) serving clients on {} and peers on {}",
        config.name,
        member.id,
        config.listen_client_urls.join(","),
        config.listen_peer_urls.join(",")
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = member.removed.notified() => {
            tracing::warn!("the member has been permanently removed from the cluster; exiting");
        }
    }
    tracing::info!("shutting down");
    member.shutdown().await;
    Ok(())
}
