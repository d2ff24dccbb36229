//! skiff-apiserver: the Kubernetes REST API on the store. One generic handler serves
//! every resource of the registry (`registry`), objects live in the store the way
//! kube-apiserver keeps them in etcd (`storage`), and `skiff apiserver` runs it over
//! HTTPS with certificates it generates (`pki`).

pub mod admission;
pub mod alloc;
pub mod authn;
pub mod bootstrap;
pub mod convert;
pub mod csr;
pub mod dashboard;
pub mod defaults;
pub mod discovery;
pub mod encryption;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod lifecycle;
pub mod limits;
pub mod listbody;
pub mod metrics;
pub mod nodeauthz;
pub mod nodeproxy;
pub mod object;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod podsecurity;
pub mod protobuf;
pub mod quota;
pub mod rbac;
pub mod registry;
pub mod satoken;
pub mod selector;
pub mod status;
pub mod storage;
pub mod table;
pub mod watchcache;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

pub struct Config {
    pub store_endpoints: Vec<String>,
    /// TLS to the store, if it serves https.
    pub store_tls: storage::StoreTls,
    /// HTTPS address.
    pub bind: SocketAddr,
    /// Optional plain-HTTP address (loopback only), for tests and local tools.
    pub insecure_bind: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Where Services' cluster IPs and node ports come from.
    pub ranges: alloc::Ranges,
    /// The tolerations new pods get for not-ready and unreachable nodes.
    pub tolerations: admission::Tolerations,
    /// Static bearer tokens (kube-apiserver's `--token-auth-file` CSV), if any.
    pub token_auth_file: Option<PathBuf>,
    /// How objects are encrypted in the store (an `EncryptionConfiguration`), if at all.
    pub encryption_provider_config: Option<PathBuf>,
    /// Watches one user may hold open at once (0: no limit).
    pub max_watches_per_user: usize,
    /// Requests per second one user may make, sustained and in a burst (0: no limit).
    pub requests_per_user: (u32, u32),
    /// Read-only and mutating requests served at once (0: no limit); more wait their turn.
    pub max_inflight: (usize, usize),
    /// How often every ResourceQuota is counted again (writes through this server
    /// recount their namespace at once).
    pub resource_quota_sync_period: std::time::Duration,
    /// How often the store's history is compacted (`storage::compact_history`; zero: never).
    pub etcd_compaction_interval: std::time::Duration,
    /// The node whose agent runs beside this server: `node.kubeconfig` is written for
    /// `system:node:<name>` (None: the host name).
    pub node_name: Option<String>,
}

/// A running API server: where it listens and where its kubeconfig is.
pub struct Running {
    pub https: SocketAddr,
    pub http: Option<SocketAddr>,
    pub kubeconfig: PathBuf,
}

/// The namespaces every cluster has.
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

async fn bootstrap(store: &storage::Store) -> anyhow::Result<()> {
    let r = registry::find("", "v1", "namespaces").expect("namespaces are registered");
    let mut first_start = false;
    for ns in SYSTEM_NAMESPACES {
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        object::prepare_create(r, &mut obj, None).map_err(|e| anyhow::anyhow!(e.message))?;
        defaults::apply(r, &mut obj);
        let created = store.create(&storage::key(r, None, ns), &obj).await.map_err(|e| anyhow::anyhow!(e.message))?;
        first_start |= ns == "default" && created.is_some();
    }
    // The default RBAC roles and bindings: created where missing; where present and
    // still marked `rbac.authorization.kubernetes.io/autoupdate: "true"`, given the rules
    // (subjects) a newer version added, keeping what an administrator added, as
    // kube-apiserver reconciles them. Set the annotation to "false" to keep a role as is.
    for (plural, obj) in rbac::default_policy() {
        let r = registry::find("rbac.authorization.k8s.io", "v1", plural).expect("RBAC kinds are registered");
        let mut obj = obj;
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let key = storage::key(r, None, &name);
        let err = |e: status::ApiError| anyhow::anyhow!(e.message);
        match store.get(&key).await.map_err(err)? {
            None => {
                object::prepare_create(r, &mut obj, None).map_err(err)?;
                store.create(&key, &obj).await.map_err(err)?;
            }
            Some(cur)
                if cur.obj["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] == "true" =>
            {
                let field = if plural == "clusterroles" { "rules" } else { "subjects" };
                let mut items = cur.obj[field].as_array().cloned().unwrap_or_default();
                let missing: Vec<Value> =
                    obj[field].as_array().into_iter().flatten().filter(|x| !items.contains(x)).cloned().collect();
                if !missing.is_empty() {
                    items.extend(missing);
                    let mut new = cur.obj.clone();
                    new[field] = Value::Array(items);
                    // Lost to a concurrent writer (another API server): it reconciles too.
                    let _ = store.update(&key, &new, cur.rev).await.map_err(err)?;
                }
            }
            Some(_) => {}
        }
    }
    // A new cluster gets a default StorageClass once (as minikube's addon gives one);
    // if an administrator deletes it, it stays deleted.
    if first_start {
        let r = registry::find("storage.k8s.io", "v1", "storageclasses").expect("storage classes are registered");
        let mut class = admission::standard_storage_class();
        object::prepare_create(r, &mut class, None).map_err(|e| anyhow::anyhow!(e.message))?;
        store.create(&storage::key(r, None, "standard"), &class).await.map_err(|e| anyhow::anyhow!(e.message))?;
    }
    Ok(())
}

/// Writes `kube-public/cluster-info` (the CA and this server's address) and lets
/// anonymous users read it and nothing else, as kubeadm does, for `skiff join`.
async fn publish_cluster_info(store: &storage::Store, pki: &pki::Pki, server: &str) -> anyhow::Result<()> {
    let ca = std::fs::read(pki.dir.join("ca.crt"))?;
    let objects = [
        (registry::find("", "v1", "configmaps"), pki::cluster_info(&ca, server)),
        (
            registry::find("rbac.authorization.k8s.io", "v1", "roles"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "skiff:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]}]}),
        ),
        (
            registry::find("rbac.authorization.k8s.io", "v1", "rolebindings"),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "skiff:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "skiff:bootstrap-signer-clusterinfo"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": authn::ANONYMOUS}]}),
        ),
    ];
    for (r, mut obj) in objects {
        let r = r.expect("registered");
        let key = storage::key(r, Some("kube-public"), obj["metadata"]["name"].as_str().unwrap_or_default());
        match store.get(&key).await.map_err(|e| anyhow::anyhow!(e.message))? {
            // The address changes when the server moves: keep the published one current.
            Some(cur) if cur.obj["data"] != obj["data"] && obj.get("data").is_some() => {
                let mut new = cur.obj.clone();
                new["data"] = obj["data"].clone();
                let _ = store.update(&key, &new, cur.rev).await.map_err(|e| anyhow::anyhow!(e.message))?;
            }
            Some(_) => {}
            None => {
                object::prepare_create(r, &mut obj, Some("kube-public")).map_err(|e| anyhow::anyhow!(e.message))?;
                store.create(&key, &obj).await.map_err(|e| anyhow::anyhow!(e.message))?;
            }
        }
    }
    Ok(())
}

/// This machine's name, as nodes are named.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

/// Starts serving; returns once the listeners are bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    if let Some(a) = cfg.insecure_bind {
        if !a.ip().is_loopback() {
            anyhow::bail!("--insecure-bind must be a loopback address, not {a}: plain HTTP has no authentication");
        }
    }
    if let Some(n) = cfg.node_name.as_deref().filter(|n| !object::is_dns_subdomain(n)) {
        anyhow::bail!(
            "--node-name {n:?} is not a valid node name: lowercase letters, digits, '-' and '.', at most 253, starting and ending with a letter or digit"
        );
    }
    std::fs::create_dir_all(&cfg.data_dir).with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    if let Some(p) = &cfg.encryption_provider_config {
        encryption::install(encryption::Encryption::load(p)?);
    }
    let store = storage::Store::connect(&cfg.store_endpoints, &cfg.store_tls)
        .await
        .with_context(|| format!("cannot reach the store at {}", cfg.store_endpoints.join(",")))?;
    bootstrap(&store).await.context("cannot create the system namespaces in the store")?;

    let tokens = match &cfg.token_auth_file {
        Some(p) => authn::Tokens::load(p)?,
        None => authn::Tokens::default(),
    };
    let rbac = rbac::Rbac::default();
    rbac.start(store.clone()).await.context("cannot load the RBAC objects from the store")?;
    let pki = pki::Pki::ensure(&cfg.data_dir, cfg.bind.ip())?;
    let sa_signer = Arc::new(satoken::Signer::ensure(&pki.dir)?);
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config()?));
    let listener =
        tokio::net::TcpListener::bind(cfg.bind).await.with_context(|| format!("cannot listen on {}", cfg.bind))?;
    let https = listener.local_addr()?;
    let host = if https.ip().is_unspecified() { "127.0.0.1".to_string() } else { https.ip().to_string() };
    let kubeconfig = cfg.data_dir.join("admin.kubeconfig");
    let server = format!("https://{host}:{}", https.port());
    pki.write_kubeconfig(&kubeconfig, &server)?;
    // Each component's own identity, with only the rights its role gives.
    // `node.kubeconfig` is one node's, held to that node by the Node authorizer;
    // `simulated-nodes.kubeconfig` is for an agent that runs many simulated nodes under
    // one identity, which only RBAC's system:node role limits.
    let node = format!("system:node:{}", cfg.node_name.clone().unwrap_or_else(hostname));
    for (file, user, group) in [
        ("controller-manager.kubeconfig", authn::CONTROLLER_MANAGER, None),
        ("scheduler.kubeconfig", authn::SCHEDULER, None),
        ("node.kubeconfig", node.as_str(), Some(authn::NODES)),
        ("simulated-nodes.kubeconfig", authn::SIMULATED_NODES, Some(authn::NODES)),
    ] {
        pki.write_component_kubeconfig(&cfg.data_dir.join(file), &server, user, group)?;
    }
    publish_cluster_info(&store, &pki, &server).await.context("cannot publish kube-public/cluster-info")?;

    let app = Arc::new(http::App {
        metrics: Default::default(),
        store,
        caches: watchcache::WatchCaches::default(),
        ranges: cfg.ranges.clone(),
        tolerations: cfg.tolerations,
        usage: Default::default(),
        tokens,
        rbac,
        sa_signer,
        watch_limits: Arc::new(limits::WatchLimits::new(cfg.max_watches_per_user)),
        request_rates: limits::RequestRates::new(cfg.requests_per_user.0, cfg.requests_per_user.1),
        inflight: limits::Inflight::new(cfg.max_inflight.0, cfg.max_inflight.1),
        quotas: Default::default(),
        signer: Arc::new(csr::Signer::new(pki.issuer()?)),
    });
    dashboard::spawn_sampler(app.store.clone(), app.usage.clone());
    {
        let (quotas, store) = (app.quotas.clone(), app.store.clone());
        tokio::spawn(async move { quotas.run(store, cfg.resource_quota_sync_period).await });
        if !cfg.etcd_compaction_interval.is_zero() {
            let store = app.store.clone();
            tokio::spawn(async move { storage::compact_history(store, cfg.etcd_compaction_interval).await });
        }
        let (signer, store, rbac) = (app.signer.clone(), app.store.clone(), app.rbac.clone());
        tokio::spawn(async move { signer.run(store, rbac, std::time::Duration::from_secs(10)).await });
    }
    {
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (app, tls) = (app.clone(), tls.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else { return };
                    // rustls verified the certificate against the CA; its subject names the user.
                    let user = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| authn::user_of_certificate(c));
                    serve_connection(app, authn::Connection::Tls(user), TokioIo::new(stream)).await;
                });
            }
        });
    }
    let http = match cfg.insecure_bind {
        None => None,
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            let local = l.local_addr()?;
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = l.accept().await else { continue };
                    let app = app.clone();
                    tokio::spawn(
                        async move { serve_connection(app, authn::Connection::Insecure, TokioIo::new(tcp)).await },
                    );
                }
            });
            Some(local)
        }
    };
    Ok(Running { https, http, kubeconfig })
}

async fn serve_connection<I>(app: Arc<http::App>, conn: authn::Connection, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let service = hyper::service::service_fn(move |req| http::handle(app.clone(), conn.clone(), req));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(io, service)
        .await;
}
