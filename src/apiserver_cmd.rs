//! `skiff apiserver`: the Kubernetes API on a store cluster. The work is done by
//! `skiff_apiserver`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Args)]
pub struct ApiServerArgs {
    /// Comma-separated store (etcd v3) endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    store_endpoints: Vec<String>,
    /// CA (PEM) the store's certificate must be signed by; set for a store that serves
    /// https (kube-apiserver's flag).
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) shown to the store (for --client-cert-auth).
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    /// Private key (PEM) of --etcd-certfile.
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
    /// HTTPS address to serve on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    bind: SocketAddr,
    /// Also serve plain HTTP, without authentication, on this loopback address.
    #[arg(long)]
    insecure_bind: Option<SocketAddr>,
    /// Directory for the CA and certificates (`pki/`, generated on first start) and the
    /// admin kubeconfig (`admin.kubeconfig`).
    #[arg(long, default_value = "apiserver.skiff")]
    data_dir: PathBuf,
    /// The IPv4 range Services' cluster IPs come from; its first address is kept for
    /// the `kubernetes` Service.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// The ports NodePort Services' node ports come from.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Seconds new pods tolerate a not-ready node before they are evicted from it.
    #[arg(long, default_value_t = 300)]
    default_not_ready_toleration_seconds: i64,
    /// Seconds new pods tolerate an unreachable node before they are evicted from it.
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: i64,
    /// Static bearer tokens, one per line: `token,user,uid,"group1,group2"` (as
    /// kube-apiserver's flag of the same name).
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// An EncryptionConfiguration (kube-apiserver's format; providers aesgcm and
    /// identity): which resources are encrypted in the store, with which keys.
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// Watches one user may hold open at once; more get 429 TooManyRequests (0: no
    /// limit). The insecure port is not limited.
    #[arg(long, default_value_t = 1000)]
    max_watches_per_user: usize,
    /// Requests per second one user may make, sustained; beyond it (and the burst) the
    /// server answers 429 TooManyRequests with Retry-After, which kubectl and client
    /// libraries wait out. Members of system:masters (the components) and the insecure
    /// port are not limited (0: no limit).
    #[arg(long, default_value_t = 100)]
    max_requests_per_user: u32,
    /// Requests one user may make at once before --max-requests-per-user applies.
    #[arg(long, default_value_t = 200)]
    max_request_burst_per_user: u32,
    /// Read-only requests (GET, list) served at once, from all users; more wait their
    /// turn, up to 60 s, then get 429 (0: no limit). Watches, Leases, Nodes, logs,
    /// exec, proxy and health probes are not counted.
    #[arg(long, default_value_t = 400)]
    max_requests_inflight: usize,
    /// Writes (create, update, patch, delete) served at once, from all users; more wait
    /// their turn, up to 60 s, then get 429 (0: no limit). Writes to Leases and Nodes are
    /// not counted, so node heartbeats and leader election go ahead of a flood of writes.
    #[arg(long, default_value_t = 200)]
    max_mutating_requests_inflight: usize,
    /// How often every ResourceQuota's status.used is counted again from the objects
    /// (writes through this server recount their namespace at once), e.g. 10s, 1m.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    resource_quota_sync_period: std::time::Duration,
    /// How often the store's history is compacted, as kube-apiserver's flag of the same
    /// name: each time to the revision the store had one interval before, so watches
    /// can resume from up to one interval back. 0 turns compaction off (the store then
    /// keeps every version of every object).
    #[arg(long, default_value = "5m", value_parser = crate::duration::parse)]
    etcd_compaction_interval: std::time::Duration,
    /// The node whose agent runs on this machine: `node.kubeconfig` in --data-dir is
    /// written for `system:node:<name>`, which the Node authorizer holds to that node's
    /// own objects. Default: the host name.
    #[arg(long)]
    node_name: Option<String>,
}

pub async fn run(args: ApiServerArgs) -> anyhow::Result<()> {
    let ranges = skiff_apiserver::alloc::Ranges::parse(&args.service_cluster_ip_range, &args.service_node_port_range)?;
    let running = skiff_apiserver::start(skiff_apiserver::Config {
        store_endpoints: args.store_endpoints,
        store_tls: skiff_apiserver::storage::StoreTls {
            ca_file: args.etcd_cafile,
            cert_file: args.etcd_certfile,
            key_file: args.etcd_keyfile,
        },
        bind: args.bind,
        insecure_bind: args.insecure_bind,
        data_dir: args.data_dir,
        ranges,
        tolerations: skiff_apiserver::admission::Tolerations {
            not_ready: args.default_not_ready_toleration_seconds,
            unreachable: args.default_unreachable_toleration_seconds,
        },
        token_auth_file: args.token_auth_file,
        encryption_provider_config: args.encryption_provider_config,
        max_watches_per_user: args.max_watches_per_user,
        requests_per_user: (args.max_requests_per_user, args.max_request_burst_per_user),
        max_inflight: (args.max_requests_inflight, args.max_mutating_requests_inflight),
        resource_quota_sync_period: args.resource_quota_sync_period,
        etcd_compaction_interval: args.etcd_compaction_interval,
        node_name: args.node_name,
    })
    .await?;
    tracing::info!("serving the Kubernetes API on https://{}", running.https);
    if let Some(h) = running.http {
        tracing::info!("and without authentication on http://{h}");
    }
    println!("export KUBECONFIG={}", std::fs::canonicalize(&running.kubeconfig)?.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
