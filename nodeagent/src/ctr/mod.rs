//! The containerd runtime (`skiff agent --runtime containerd`): pods as real containers
//! under containerd + runc, each pod in its own network namespace wired by the CNI
//! plugins.
//!
//! One task per pod sets up its sandbox (namespace, CNI, volumes) and then supervises
//! each container: create from the image's unpacked snapshot, start, wait for exit,
//! restart as `restartPolicy` says with the kubelet's back-off (immediately once, then
//! base, 2×base, … up to the cap). What the agent reports comes from the in-memory
//! record these tasks keep. Containers carry labels (pod uid, container name, restart
//! count), so an agent that restarts finds its running tasks and adopts them instead of
//! starting them again.

pub mod cni;
pub mod daemon;
pub mod dns;
pub mod exec;
pub mod image;
pub mod portforward;
pub mod probe;
pub mod proxy;
pub mod registry;
pub mod routes;
pub mod server;
pub mod spdy;
pub mod spec;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use containerd_client::services::v1::container::Runtime as CRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container as CContainer, CreateContainerRequest, CreateRequest as LeaseCreate, CreateTaskRequest,
    DeleteContainerRequest, DeleteRequest as LeaseDelete, DeleteTaskRequest, GetContainerRequest, GetRequest,
    KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::Request;
use containerd_client::types::v1::Status as TaskStatus;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;

use self::image::SNAPSHOTTER;
use crate::podstatus::{Container as Status, State};
use crate::runtime::{Changes, Runtime, Usage};

const LABEL_UID: &str = "skiff.io/pod-uid";
const LABEL_NAME: &str = "skiff.io/container-name";
const LABEL_RESTARTS: &str = "skiff.io/restart-count";
const LABEL_POD: &str = "skiff.io/pod";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// The node's pod CIDR, as the agent last used it, in its root directory.
pub const POD_CIDR_FILE: &str = "pod-cidr";

/// A connection to containerd in one namespace.
#[derive(Clone)]
pub struct Conn {
    ch: Channel,
    ns: String,
    /// Requests made under a lease keep what they create from containerd's GC.
    lease: Option<String>,
}

impl Conn {
    /// A connection in `namespace` (containerd's rule: letters, digits, `.`, `_`, `-`).
    pub fn new(ch: Channel, namespace: &str) -> anyhow::Result<Conn> {
        let ok = !namespace.is_empty()
            && namespace.len() <= 76
            && namespace.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            anyhow::bail!("{namespace:?} is not a valid containerd namespace (letters, digits, '.', '_', '-')");
        }
        Ok(Conn { ch, ns: namespace.into(), lease: None })
    }

    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert("containerd-namespace", self.ns.parse().expect("a valid namespace name"));
        if let Some(l) = &self.lease {
            r.metadata_mut().insert("containerd-lease", l.parse().expect("a valid lease id"));
        }
        r
    }

    /// Runs `work` with a connection whose requests hold a fresh lease, dropped afterwards
    /// (by then what it made is referenced by an image or a container).
    pub async fn leased<T, F, Fut>(&self, work: F) -> anyhow::Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let id = self.lease().await?;
        let conn = Conn { lease: Some(id.clone()), ..self.clone() };
        let result = work(conn).await;
        self.drop_lease(&id).await;
        result
    }

    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.ch.clone()).max_decoding_message_size(64 << 20)
    }
    fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.ch.clone())
    }
    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.ch.clone())
    }
    fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.ch.clone())
    }
    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.ch.clone()).max_decoding_message_size(64 << 20)
    }
    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.ch.clone())
    }

    /// A lease (expiring in an hour) protecting what is written under it from GC.
    async fn lease(&self) -> anyhow::Result<String> {
        let id = format!("skiff-{}-{}", std::process::id(), Timestamp::now().as_nanosecond());
        let expire = Timestamp::now().checked_add(k8s_openapi::jiff::SignedDuration::from_hours(1))?;
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire.to_string())]);
        LeasesClient::new(self.ch.clone()).create(self.req(LeaseCreate { id: id.clone(), labels })).await?;
        Ok(id)
    }

    async fn drop_lease(&self, id: &str) {
        let _ = LeasesClient::new(self.ch.clone()).delete(self.req(LeaseDelete { id: id.into(), sync: false })).await;
    }

    async fn kill(&self, id: &str, signal: i32) {
        let req = KillRequest { container_id: id.into(), exec_id: String::new(), signal: signal as u32, all: true };
        let _ = self.tasks().kill(self.req(req)).await;
    }

    /// Removes a container's task, record and snapshot; missing parts are fine.
    async fn remove(&self, id: &str) {
        let _ = self.tasks().delete(self.req(DeleteTaskRequest { container_id: id.into() })).await;
        let _ = self.containers().delete(self.req(DeleteContainerRequest { id: id.into() })).await;
        let rm = RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: id.into() };
        let _ = self.snapshots().remove(self.req(rm)).await;
    }
}

/// How the runtime is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Pod directories (volumes, logs, CNI results) and the private containerd live here.
    pub root: PathBuf,
    /// Use this containerd instead of starting one.
    pub socket: Option<PathBuf>,
    pub namespace: String,
    pub network: cni::Network,
    /// Pods' cgroups go under `<parent>/pod<uid>/`.
    pub cgroup_parent: String,
    /// CrashLoopBackOff: first delay and cap.
    pub backoff: (Duration, Duration),
    /// Image archives imported at start.
    pub images: Vec<PathBuf>,
    /// The API server's --service-cluster-ip-range, routed to the bridge.
    pub service_cidr: String,
    /// Names under this domain are answered by the cluster DNS (`cluster.local`).
    pub cluster_domain: String,
    /// Registries (`host[:port]`) pulled from over plain HTTP besides localhost.
    pub insecure_registries: Vec<String>,
    /// `host=URL`: pull that registry's images from the URL instead.
    pub registry_mirrors: Vec<String>,
}

impl Settings {
    pub fn proxy(&self) -> proxy::ProxyConfig {
        let gw = self.network.gateway().map(|(ip, len)| format!("{ip}/{len}"));
        proxy::ProxyConfig::new(&self.network.bridge, &self.network.subnet, &self.service_cidr, gw)
    }
}

/// One container of a pod as last seen.
#[derive(Clone, Debug)]
struct Record {
    status: Status,
    /// containerd's id of the current (or last) run.
    cid: String,
    /// CPU time seen at the last usage sample, to turn into a rate.
    cpu: Option<(Instant, u64)>,
}

/// A container found running (or exited) in containerd at start, to be adopted.
#[derive(Clone, Debug)]
struct Found {
    restarts: i32,
}

#[derive(Default)]
struct PodRec {
    ip: Option<String>,
    containers: Vec<Record>,
    stop: Option<watch::Sender<Option<Duration>>>,
    worker: Option<tokio::task::JoinHandle<()>>,
    found: HashMap<String, Found>,
    /// namespace/name, for messages and the CNI arguments.
    name: String,
    /// Its start latency is in `pod_starts` already.
    start_recorded: bool,
}

/// kubelet_pod_start_duration_seconds' buckets.
const POD_START_BUCKETS: [f64; 16] =
    [0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0];

struct Inner {
    conn: Conn,
    client: kube::Client,
    s: Settings,
    pods: Mutex<HashMap<String, PodRec>>,
    node_memory: i64,
    daemon: tokio::sync::Mutex<Option<daemon::Daemon>>,
    version: String,
    /// Pods whose containers changed state or got an address (see `Runtime::changes`).
    changes: Arc<Changes>,
    registry: registry::Registry,
    /// One pull at a time, like the kubelet's default (serializeImagePulls).
    pulling: tokio::sync::Mutex<()>,
    /// For `/metrics`: containers started, and pods' creation -> all containers running.
    started: std::sync::atomic::AtomicU64,
    pod_starts: Mutex<skiff_controllers::metrics::Histogram>,
}

#[derive(Clone)]
pub struct Containerd {
    inner: Arc<Inner>,
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// containerd ids are at most 76 characters; pod uid + container name may be longer.
fn container_id(uid: &str, name: &str) -> String {
    image::sha256(format!("{uid}/{name}").as_bytes()).trim_start_matches("sha256:")[..40].to_string()
}

/// The machine's memory in bytes (MemTotal).
pub fn node_memory_bytes() -> i64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30)
}

/// The cgroup v1 controller directories (or the v2 root), for reading usage and cleaning up.
fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    std::fs::read_dir(base)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir() && !p.is_symlink()).collect())
        .unwrap_or_default()
}

impl Containerd {
    /// Connects to (or starts) containerd, imports the given archives, and finds the
    /// containers an earlier agent left running.
    pub async fn start(client: kube::Client, s: Settings) -> anyhow::Result<Containerd> {
        std::fs::create_dir_all(s.root.join("pods")).with_context(|| format!("creating {}", s.root.display()))?;
        // The bridge plugin turns on IP forwarding; remember how it was, for reset-node.
        let saved = s.root.join("ip_forward.before");
        if !saved.exists() {
            if let Ok(v) = std::fs::read_to_string(IP_FORWARD) {
                std::fs::write(&saved, v.trim())?;
            }
        }
        let (socket, daemon) = match &s.socket {
            Some(p) => (p.clone(), None),
            None => {
                let d = daemon::Daemon::start(&s.root.join("containerd")).await?;
                (d.socket.clone(), Some(d))
            }
        };
        let ch = daemon::connect(&socket).await?;
        let version = daemon::version(&ch).await?;
        let conn = Conn::new(ch, &s.namespace)?;
        for archive in &s.images {
            let names = conn.import(archive).await.with_context(|| format!("importing {}", archive.display()))?;
            tracing::info!("imported {} from {}", names.join(", "), archive.display());
        }
        let s_insecure = s.insecure_registries.clone();
        let s_mirrors = s.registry_mirrors.clone();
        let inner = Inner {
            conn,
            client,
            s,
            pods: Mutex::new(HashMap::new()),
            node_memory: node_memory_bytes(),
            daemon: tokio::sync::Mutex::new(daemon),
            version,
            changes: Default::default(),
            registry: registry::Registry::new(s_insecure, &s_mirrors)?,
            pulling: tokio::sync::Mutex::new(()),
            started: Default::default(),
            pod_starts: Mutex::new(skiff_controllers::metrics::Histogram::new(&POD_START_BUCKETS)),
        };
        let rt = Containerd { inner: Arc::new(inner) };
        rt.find_existing().await?;
        Ok(rt)
    }

    /// `containerd://<version>` for the Node's nodeInfo.
    pub fn version(&self) -> String {
        format!("containerd://{}", self.inner.version)
    }

    /// Stops the private containerd (pods keep running in their shims).
    pub async fn shutdown(&self) {
        if let Some(mut d) = self.inner.daemon.lock().await.take() {
            d.stop().await;
        }
    }

    async fn find_existing(&self) -> anyhow::Result<()> {
        let conn = &self.inner.conn;
        let list = conn.containers().list(conn.req(ListContainersRequest { filters: vec![] })).await?.into_inner();
        let mut pods = self.inner.pods.lock().expect("not poisoned");
        for c in list.containers {
            let (Some(uid), Some(name)) = (c.labels.get(LABEL_UID), c.labels.get(LABEL_NAME)) else { continue };
            let restarts = c.labels.get(LABEL_RESTARTS).and_then(|r| r.parse().ok()).unwrap_or(0);
            let rec = pods.entry(uid.clone()).or_default();
            rec.name = c.labels.get(LABEL_POD).cloned().unwrap_or_default();
            rec.ip = std::fs::read_to_string(self.pod_dir(uid).join("ip")).ok();
            rec.found.insert(name.clone(), Found { restarts });
        }
        // Pods whose containers are all gone still have a network and volumes to remove.
        if let Ok(dirs) = std::fs::read_dir(self.inner.s.root.join("pods")) {
            for d in dirs.filter_map(|e| e.ok()) {
                let uid = d.file_name().to_string_lossy().into_owned();
                let rec = pods.entry(uid.clone()).or_default();
                if rec.ip.is_none() {
                    rec.ip = std::fs::read_to_string(d.path().join("ip")).ok();
                }
            }
        }
        if !pods.is_empty() {
            tracing::info!("found {} pod(s) left by an earlier agent", pods.len());
        }
        Ok(())
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.inner.s.root.join("pods").join(uid)
    }

    fn set(&self, uid: &str, i: usize, f: impl FnOnce(&mut Record)) {
        if let Some(r) =
            self.inner.pods.lock().expect("not poisoned").get_mut(uid).and_then(|p| p.containers.get_mut(i))
        {
            f(r)
        }
        self.inner.changes.mark(uid);
    }

    fn set_waiting(&self, uid: &str, i: usize, reason: &str, message: Option<String>) {
        self.set(uid, i, |r| {
            r.status.state = State::Waiting { reason: reason.into() };
            r.status.message = message;
            r.status.ready = false;
        });
    }

    fn cgroups_path(&self, uid: &str, cid: &str) -> String {
        format!("{}/pod{uid}/{cid}", self.inner.s.cgroup_parent.trim_end_matches('/'))
    }

    fn cni_args(&self, pod: &Pod) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default(),
            uid_of(pod)
        )
    }

    /// The pod's task: sandbox, volumes, then one supervisor per container.
    async fn run_pod(self, pod: Pod, stop: watch::Receiver<Option<Duration>>) {
        let uid = uid_of(&pod);
        let dir = self.pod_dir(&uid);
        let adopted_ip = self.inner.pods.lock().expect("not poisoned").get(&uid).and_then(|p| p.ip.clone());
        let ip = match adopted_ip.filter(|_| Path::new(&cni::netns_path(&uid)).exists()) {
            Some(ip) => ip,
            None => loop {
                let ports = host_ports(&pod);
                let attempt = async {
                    std::fs::create_dir_all(&dir)?;
                    self.inner.s.network.add(&dir, &uid, &self.cni_args(&pod), ports).await
                };
                match attempt.await {
                    Ok(ip) => {
                        let _ = std::fs::write(dir.join("ip"), &ip);
                        break ip;
                    }
                    Err(e) => {
                        tracing::warn!("setting up the network of pod {}: {e:#}", pod_name(&pod));
                        if wait_or_stop(&stop, Duration::from_secs(2)).await {
                            return;
                        }
                    }
                }
            },
        };
        if let Some(p) = self.inner.pods.lock().expect("not poisoned").get_mut(&uid) {
            p.ip = Some(ip.clone());
        }
        self.inner.changes.mark(&uid);
        if let Err(e) = self.write_etc(&pod, &dir, &ip) {
            tracing::warn!("writing /etc files of pod {}: {e:#}", pod_name(&pod));
        }
        let vols = loop {
            match volumes::prepare(&self.inner.client, &pod, &dir).await {
                Ok(v) => break v,
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::warn!("volumes of pod {}: {msg}", pod_name(&pod));
                    let n = pod.spec.as_ref().map_or(0, |s| s.containers.len());
                    let n_init = pod.spec.as_ref().and_then(|s| s.init_containers.as_ref()).map_or(0, |c| c.len());
                    for i in 0..n_init + n {
                        self.set_waiting(&uid, i, "ContainerCreating", Some(msg.clone()));
                    }
                    if wait_or_stop(&stop, Duration::from_secs(2)).await {
                        return;
                    }
                }
            }
        };
        let mut vols = vols;
        vols.start_renewals();
        let vols = Arc::new(vols);
        let spec = pod.spec.clone().unwrap_or_default();
        let inits = spec.init_containers.clone().unwrap_or_default();
        let n_init = inits.len();
        let pod = Arc::new(pod);
        let ip = Arc::new(ip);
        // Init containers run one after another, each to success, before the others start;
        // not again for a pod whose containers an earlier agent already started.
        let initialized = self
            .inner
            .pods
            .lock()
            .expect("not poisoned")
            .get(&uid)
            .is_some_and(|p| spec.containers.iter().any(|c| p.found.contains_key(&c.name)));
        for (i, c) in inits.into_iter().enumerate() {
            if initialized {
                self.set(&uid, i, |r| {
                    let now = Timestamp::now();
                    r.status.state =
                        State::Terminated { exit_code: 0, reason: "Completed".into(), started: now, finished: now };
                });
                continue;
            }
            self.clone().supervise(pod.clone(), i, c, vols.clone(), ip.clone(), stop.clone(), true).await;
            let ok = self
                .inner
                .pods
                .lock()
                .expect("not poisoned")
                .get(&uid)
                .and_then(|p| p.containers.get(i))
                .is_some_and(|r| matches!(r.status.state, State::Terminated { exit_code: 0, .. }));
            if !ok {
                return; // failed under restartPolicy Never, or the pod is going away
            }
        }
        for i in n_init..n_init + spec.containers.len() {
            self.set_waiting(&uid, i, "ContainerCreating", None);
        }
        let handles: Vec<_> = spec
            .containers
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let (this, pod, vols, ip, stop) = (self.clone(), pod.clone(), vols.clone(), ip.clone(), stop.clone());
                tokio::spawn(async move { this.supervise(pod, n_init + i, c, vols, ip, stop, false).await })
            })
            .collect();
        for h in handles {
            let _ = h.await;
        }
    }

    /// Runs one container for as long as its pod lives, restarting it as the policy says.
    #[allow(clippy::too_many_arguments)]
    async fn supervise(
        self,
        pod: Arc<Pod>,
        i: usize,
        c: Container,
        vols: Arc<volumes::Volumes>,
        ip: Arc<String>,
        stop: watch::Receiver<Option<Duration>>,
        init: bool,
    ) {
        let uid = uid_of(&pod);
        let conn = self.inner.conn.clone();
        let cid = container_id(&uid, &c.name);
        let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into());
        let found = self.inner.pods.lock().expect("not poisoned").get_mut(&uid).and_then(|p| p.found.remove(&c.name));
        let mut restarts = found.as_ref().map_or(0, |f| f.restarts);
        let mut adopt = found.is_some();
        let mut crashes = 0u32;
        let (base, cap) = self.inner.s.backoff;
        loop {
            if stop.borrow().is_some() {
                break;
            }
            // Adopt a task an earlier agent started, or start a new one.
            let adopting = adopt;
            let running = if adopt {
                adopt = false;
                let got =
                    conn.tasks().get(conn.req(GetRequest { container_id: cid.clone(), exec_id: String::new() })).await;
                match got.ok().and_then(|r| r.into_inner().process) {
                    // A task that exited while no agent watched is adopted too: its Wait
                    // returns at once and the exit goes through the restart policy.
                    Some(p) if p.status == TaskStatus::Running as i32 || p.status == TaskStatus::Stopped as i32 => {
                        // The container record is made just before its task starts.
                        let record = conn
                            .containers()
                            .get(conn.req(GetContainerRequest { id: cid.clone() }))
                            .await
                            .ok()
                            .and_then(|r| r.into_inner().container);
                        let saved = std::fs::read_to_string(self.started_path(&uid, &c.name)).ok();
                        let created = saved
                            .and_then(|s| s.trim().parse::<i64>().ok())
                            .and_then(|secs| Timestamp::new(secs, 0).ok())
                            .or_else(|| {
                                let t = record.as_ref().and_then(|c| c.created_at)?;
                                Timestamp::new(t.seconds, t.nanos).ok()
                            })
                            .unwrap_or_else(Timestamp::now);
                        let image_id = match record {
                            Some(c) => conn.image_config(&c.image).await.ok().flatten().map(|i| i.id),
                            None => None,
                        };
                        self.set(&uid, i, |r| {
                            r.status.image_id = image_id;
                            r.status.state = State::Running { since: created };
                            r.status.id = format!("containerd://{cid}");
                        });
                        Ok(())
                    }
                    _ => {
                        conn.remove(&cid).await;
                        Err(None)
                    }
                }
            } else {
                let created = self.create(&pod, i, &c, &cid, restarts, &vols, &ip).await.map_err(Some);
                if created.is_ok() {
                    self.inner.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if !init {
                        self.note_pod_started(&pod);
                    }
                }
                created
            };
            let started = Timestamp::now();
            if let Err(why) = running {
                if let Some((reason, msg)) = why {
                    // The kubelet reports ErrImagePull once, then ImagePullBackOff while it waits.
                    let reason =
                        if reason == "ErrImagePull" && crashes > 0 { "ImagePullBackOff".into() } else { reason };
                    self.set_waiting(&uid, i, &reason, Some(msg));
                    let delay = backoff(base, cap, crashes.max(1));
                    crashes += 1;
                    if wait_or_stop(&stop, delay).await {
                        break;
                    }
                }
                continue;
            }
            let since = match self.inner.pods.lock().expect("not poisoned").get(&uid).and_then(|p| p.containers.get(i))
            {
                Some(Record { status: Status { state: State::Running { since }, .. }, .. }) => *since,
                _ => started,
            };
            // Wait for the exit, or stop it when the pod goes.
            let mut waiter = {
                let conn = conn.clone();
                let cid = cid.clone();
                tokio::spawn(async move {
                    conn.tasks().wait(conn.req(WaitRequest { container_id: cid, exec_id: String::new() })).await
                })
            };
            // A new run's postStart hook runs before its probes; if it fails, the container
            // is killed and goes through the restart policy, as with the kubelet.
            let mut hook_failed = None;
            if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()).filter(|_| !adopting) {
                let mut stopped = stop.clone();
                tokio::select! {
                    r = probe::hook(&conn, &cid, &c, h, &ip) => hook_failed = r.err(),
                    _ = async { let _ = stopped.wait_for(|s| s.is_some()).await; } => {}
                }
            }
            // Probes run for as long as this run of the container does.
            let (events, mut probe_events) = tokio::sync::mpsc::channel(4);
            let (probes_done, probes_stop) = watch::channel(false);
            let prober =
                tokio::spawn(probe::run(conn.clone(), cid.clone(), c.clone(), ip.to_string(), events, probes_stop));
            let pod_grace = Duration::from_secs(
                pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0) as u64,
            );
            let mut stopped = stop.clone();
            let exited = if let Some(e) = &hook_failed {
                tracing::info!("{}: postStart hook of container {} failed: {e}; killing it", pod_name(&pod), c.name);
                stop_task(&conn, &cid, &c, &ip, &mut waiter, pod_grace).await
            } else {
                loop {
                    tokio::select! {
                        r = &mut waiter => break r.ok().and_then(|r| r.ok()).map(|r| r.into_inner().exit_status),
                        _ = async { let _ = stopped.wait_for(|s| s.is_some()).await; } => {
                            let grace = (*stop.borrow()).unwrap_or_default();
                            break stop_task(&conn, &cid, &c, &ip, &mut waiter, grace).await;
                        }
                        Some(ev) = probe_events.recv() => match ev {
                            probe::Event::Ready(ready) => self.set(&uid, i, |r| r.status.ready = ready),
                            probe::Event::Kill(why) => {
                                tracing::info!("{}: container {} {why}, will be restarted", pod_name(&pod), c.name);
                                break stop_task(&conn, &cid, &c, &ip, &mut waiter, pod_grace).await;
                            }
                        },
                    }
                }
            };
            let _ = probes_done.send(true);
            prober.abort();
            let code = exited.unwrap_or(255) as i32;
            let oom = oom_killed(&self.cgroups_path(&uid, &cid));
            conn.remove(&cid).await;
            let _ = std::fs::remove_dir(cgroup_dir(&self.cgroups_path(&uid, &cid)));
            let reason = if oom {
                "OOMKilled"
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            };
            let finished = Timestamp::now();
            let term = State::Terminated { exit_code: code, reason: reason.into(), started: since, finished };
            let message = hook_failed.map(|e| format!("PostStartHookError: {e}"));
            self.set(&uid, i, |r| {
                r.status.state = term.clone();
                r.status.ready = false;
                r.status.message = message.clone();
            });
            let stopping = stop.borrow().is_some();
            let restart = match policy.as_str() {
                _ if init && code == 0 => false, // an init container that succeeded is done
                "Never" => false,
                "OnFailure" => code != 0,
                _ => !init || code != 0,
            };
            if stopping || !restart {
                break;
            }
            // A container that ran for a long while starts its back-off afresh.
            if finished.duration_since(since).as_secs() as u128 > 2 * cap.as_secs() as u128 {
                crashes = 0;
            }
            let delay = if crashes == 0 { Duration::ZERO } else { backoff(base, cap, crashes) };
            crashes += 1;
            if !delay.is_zero() {
                let msg = format!(
                    "back-off {} restarting failed container={} pod={}_{}({uid})",
                    human(delay),
                    c.name,
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    pod.metadata.namespace.as_deref().unwrap_or("default")
                );
                self.set(&uid, i, |r| {
                    r.status.last = Some(term.clone());
                    r.status.state = State::Waiting { reason: "CrashLoopBackOff".into() };
                    r.status.message = Some(msg);
                });
                if wait_or_stop(&stop, delay).await {
                    break;
                }
            }
            restarts += 1;
            self.set(&uid, i, |r| {
                r.status.last = Some(term.clone());
                r.status.restarts = restarts;
            });
        }
    }

    /// Records the pod's start latency (creation to every container running) once.
    fn note_pod_started(&self, pod: &Pod) {
        let uid = uid_of(pod);
        {
            let mut pods = self.inner.pods.lock().expect("not poisoned");
            let Some(rec) = pods.get_mut(&uid) else { return };
            let regular = rec.containers.iter().filter(|r| !r.status.init);
            if rec.start_recorded || !regular.clone().all(|r| matches!(r.status.state, State::Running { .. })) {
                return;
            }
            rec.start_recorded = true;
        }
        let Some(created) = pod.metadata.creation_timestamp.as_ref() else { return };
        let secs = Timestamp::now().duration_since(created.0).as_secs_f64().max(0.0);
        self.inner.pod_starts.lock().expect("not poisoned").observe(secs);
    }

    /// The node's metrics in Prometheus' text format, under the kubelet's and cAdvisor's
    /// names (served on the agent's port at `/metrics`).
    pub fn prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let (mut running_pods, mut running_containers) = (0, 0);
        // Each family's samples are written together, as the format requires.
        let (mut restarts, mut cpu, mut memory) = (String::new(), String::new(), String::new());
        let mut running = Vec::new();
        let pods = self.inner.pods.lock().expect("not poisoned");
        for (uid, rec) in pods.iter() {
            let (ns, name) = rec.name.split_once('/').unwrap_or(("", rec.name.as_str()));
            let mut any = false;
            for r in &rec.containers {
                let l = format!("container=\"{}\",namespace=\"{ns}\",pod=\"{name}\"", r.status.name);
                let _ = writeln!(restarts, "kube_pod_container_status_restarts_total{{{l}}} {}", r.status.restarts);
                if !matches!(r.status.state, State::Running { .. }) {
                    continue;
                }
                any = true;
                running_containers += 1;
                let path = format!("{}/pod{uid}/{}", self.inner.s.cgroup_parent.trim_end_matches('/'), r.cid);
                running.push((l, path));
            }
            running_pods += any as u32;
        }
        drop(pods);
        // The cgroup files are read without holding the pods' lock.
        for (l, path) in running {
            if let Some((cpu_ns, mem)) = cgroup_usage(&path) {
                let _ = writeln!(cpu, "container_cpu_usage_seconds_total{{{l}}} {}", cpu_ns as f64 / 1e9);
                let _ = writeln!(memory, "container_memory_working_set_bytes{{{l}}} {mem}");
            }
        }
        let _ = writeln!(out, "# HELP kubelet_running_pods Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {running_pods}");
        let _ = writeln!(out, "# HELP kubelet_running_containers Number of containers currently running\n# TYPE kubelet_running_containers gauge\nkubelet_running_containers{{container_state=\"running\"}} {running_containers}");
        let started = self.inner.started.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "# HELP kubelet_started_containers_total Cumulative number of containers started\n# TYPE kubelet_started_containers_total counter\nkubelet_started_containers_total{{container_type=\"container\"}} {started}");
        let _ = writeln!(out, "# HELP kubelet_pod_start_duration_seconds Duration in seconds from the pod's creation to all its containers running\n# TYPE kubelet_pod_start_duration_seconds histogram");
        self.inner.pod_starts.lock().expect("not poisoned").write(&mut out, "kubelet_pod_start_duration_seconds", "");
        out.push_str("# HELP kube_pod_container_status_restarts_total The number of container restarts per container.\n# TYPE kube_pod_container_status_restarts_total counter\n");
        out.push_str(&restarts);
        out.push_str("# HELP container_cpu_usage_seconds_total Cumulative cpu time consumed in seconds.\n# TYPE container_cpu_usage_seconds_total counter\n");
        out.push_str(&cpu);
        out.push_str("# HELP container_memory_working_set_bytes Current working set in bytes.\n# TYPE container_memory_working_set_bytes gauge\n");
        out.push_str(&memory);
        out
    }

    /// The image a container runs, pulled as its imagePullPolicy says: `Always` asks
    /// the registry each time (and downloads only a changed manifest), `IfNotPresent`
    /// pulls only a missing image, `Never` never pulls. `skiff.local/` images come only
    /// from import. Errors are (reason, message) as the kubelet reports them.
    async fn ensure_image(&self, c: &Container, image_ref: &str) -> Result<image::ImageConfig, (String, String)> {
        let conn = &self.inner.conn;
        let name = image::normalize(image_ref);
        let local_only = name.starts_with(&format!("{}/", registry::LOCAL_ONLY));
        let policy = c.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let present = conn.image_config(image_ref).await.map_err(|e| ("ErrImagePull".to_string(), format!("{e:#}")))?;
        let pull = match policy {
            "Never" => false,
            "Always" => !local_only,
            _ => present.is_none() && !local_only,
        };
        if pull {
            let _one_at_a_time = self.inner.pulling.lock().await;
            let started = Instant::now();
            if let Err(e) = conn.pull(&self.inner.registry, image_ref).await {
                return Err(("ErrImagePull".into(), format!("Failed to pull image \"{image_ref}\": {e:#}")));
            }
            tracing::info!("pulled {name} in {:.1} s", started.elapsed().as_secs_f64());
            if let Ok(Some(img)) = conn.image_config(image_ref).await {
                return Ok(img);
            }
        }
        match present {
            Some(img) if !pull => Ok(img),
            _ if policy == "Never" => Err((
                "ErrImageNeverPull".into(),
                format!("Container image \"{image_ref}\" is not present with pull policy of Never"),
            )),
            _ => Err((
                "ErrImagePull".into(),
                format!(
                    "image \"{name}\" is not on this node: {} images come only from `skiff image import`",
                    registry::LOCAL_ONLY
                ),
            )),
        }
    }

    /// Creates and starts one run of a container. Errors carry the waiting reason and message.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        pod: &Pod,
        i: usize,
        c: &Container,
        cid: &str,
        restarts: i32,
        vols: &volumes::Volumes,
        ip: &str,
    ) -> Result<(), (String, String)> {
        let uid = uid_of(pod);
        let conn = &self.inner.conn;
        if !volumes::is_label(&c.name) {
            return Err((
                "CreateContainerConfigError".into(),
                format!("container name \"{}\" is not a valid DNS-1123 label", c.name),
            ));
        }
        let image_ref = c.image.clone().unwrap_or_default();
        let img = self.ensure_image(c, &image_ref).await?;
        spec::check_non_root(pod, c, &img).map_err(|m| ("CreateContainerConfigError".to_string(), m))?;
        let env = volumes::env(&self.inner.client, pod, c, ip)
            .await
            .map_err(|e| ("CreateContainerConfigError".to_string(), format!("{e:#}")))?;
        let mut binds = vols.binds(c).map_err(|e| ("CreateContainerConfigError".to_string(), format!("{e:#}")))?;
        let etc = self.pod_dir(&uid).join("etc");
        for f in ["hosts", "hostname", "resolv.conf"] {
            let dest = format!("/etc/{f}");
            if etc.join(f).exists() && !binds.iter().any(|b| b.destination == dest) {
                binds.push(spec::Bind {
                    source: etc.join(f).display().to_string(),
                    destination: dest,
                    read_only: false,
                });
            }
        }
        let err = |e: anyhow::Error| ("CreateContainerError".to_string(), format!("{e:#}"));
        // Leftovers of an earlier run under the same id go first.
        conn.remove(cid).await;
        let spec = spec::build(
            pod,
            c,
            spec::Inputs {
                image: &img,
                env,
                binds,
                netns: cni::netns_path(&uid),
                cgroups_path: self.cgroups_path(&uid, cid),
                node_memory: self.inner.node_memory,
            },
        );
        let labels = HashMap::from([
            (LABEL_UID.to_string(), uid.clone()),
            (LABEL_NAME.to_string(), c.name.clone()),
            (LABEL_RESTARTS.to_string(), restarts.to_string()),
            (LABEL_POD.to_string(), pod_name(pod)),
        ]);
        let record = CContainer {
            id: cid.into(),
            labels,
            image: image::normalize(&image_ref),
            runtime: Some(CRuntime { name: "io.containerd.runc.v2".into(), options: None }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: serde_json::to_vec(&spec).map_err(|e| err(e.into()))?,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: cid.into(),
            ..Default::default()
        };
        // The root filesystem snapshot is held by a lease until the container references it.
        let prep = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: cid.into(),
            parent: img.top.clone(),
            labels: HashMap::new(),
        };
        let mounts = conn
            .leased(|conn| async move {
                let mounts = conn
                    .snapshots()
                    .prepare(conn.req(prep))
                    .await
                    .map_err(|e| anyhow::anyhow!("preparing the root filesystem: {}", e.message()))?
                    .into_inner()
                    .mounts;
                conn.containers()
                    .create(conn.req(CreateContainerRequest { container: Some(record) }))
                    .await
                    .map_err(|e| anyhow::anyhow!("creating the container: {}", e.message()))?;
                Ok(mounts)
            })
            .await
            .map_err(err)?;
        let log = self.log_path(&uid, &c.name, restarts);
        // Only this run's and the previous run's logs are kept (`kubectl logs --previous`).
        if restarts >= 2 {
            let _ = std::fs::remove_file(self.log_path(&uid, &c.name, restarts - 2));
        }
        let prepared = (|| {
            std::fs::create_dir_all(log.parent().expect("a log directory"))?;
            std::fs::OpenOptions::new().create(true).append(true).open(&log)
        })();
        if let Err(e) = prepared {
            conn.remove(cid).await;
            return Err(err(anyhow::anyhow!("creating the log file {}: {e}", log.display())));
        }
        let log = log.display().to_string();
        let task = CreateTaskRequest {
            container_id: cid.into(),
            rootfs: mounts,
            stdout: log.clone(),
            stderr: log,
            ..Default::default()
        };
        let started = async {
            conn.tasks().create(conn.req(task)).await?;
            conn.tasks().start(conn.req(StartRequest { container_id: cid.into(), exec_id: String::new() })).await?;
            Ok::<_, containerd_client::tonic::Status>(())
        };
        if let Err(e) = started.await {
            conn.remove(cid).await;
            return Err((
                "RunContainerError".into(),
                format!("failed to start container \"{}\": {}", c.name, e.message()),
            ));
        }
        // Kept beside the pod, so an agent that adopts the container reports the same time.
        let since = Timestamp::now();
        let _ = std::fs::write(self.started_path(&uid, &c.name), since.as_second().to_string());
        self.set(&uid, i, |r| {
            r.cid = cid.into();
            r.cpu = None;
            r.status.id = format!("containerd://{cid}");
            r.status.image_id = Some(img.id.clone());
            r.status.state = State::Running { since };
            r.status.message = None;
            r.status.ready = false; // until the probes (or their absence) say so
        });
        Ok(())
    }

    /// The pod's /etc/hosts, /etc/hostname and /etc/resolv.conf (cluster DNS first, as
    /// for `dnsPolicy: ClusterFirst`; `Default` copies the node's; `None` takes dnsConfig).
    fn write_etc(&self, pod: &Pod, dir: &Path, ip: &str) -> anyhow::Result<()> {
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        let host = spec::hostname(pod);
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let domain = &self.inner.s.cluster_domain;
        let spec = pod.spec.clone().unwrap_or_default();
        let fqdn = spec.subdomain.as_ref().map(|sub| format!("{host}.{sub}.{ns}.svc.{domain} "));
        let hosts = format!(
            "# Kubernetes-managed hosts file (skiff).
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
{ip}	{}{host}
",
            fqdn.unwrap_or_default()
        );
        std::fs::write(etc.join("hosts"), hosts)?;
        std::fs::write(
            etc.join("hostname"),
            format!(
                "{host}
"
            ),
        )?;
        let cfg = spec.dns_config.clone().unwrap_or_default();
        let mut servers: Vec<String> = Vec::new();
        let mut searches: Vec<String> = Vec::new();
        let mut options: Vec<String> = Vec::new();
        match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
            "Default" => {
                let host_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
                std::fs::write(etc.join("resolv.conf"), host_conf)?;
                return Ok(());
            }
            "None" => {}
            _ => {
                if let Some((gw, _)) = self.inner.s.network.gateway() {
                    servers.push(gw.to_string());
                }
                searches = vec![format!("{ns}.svc.{domain}"), format!("svc.{domain}"), domain.clone()];
                options.push("ndots:5".into());
            }
        }
        servers.extend(cfg.nameservers.unwrap_or_default());
        searches.extend(cfg.searches.unwrap_or_default());
        for o in cfg.options.unwrap_or_default() {
            let name = o.name.unwrap_or_default();
            options.retain(|x| x.split(':').next() != Some(name.as_str()));
            options.push(match o.value {
                Some(v) => format!("{name}:{v}"),
                None => name,
            });
        }
        let mut conf = String::new();
        if !searches.is_empty() {
            conf += &format!(
                "search {}
",
                searches.join(" ")
            );
        }
        for s in servers {
            conf += &format!(
                "nameserver {s}
"
            );
        }
        if !options.is_empty() {
            conf += &format!(
                "options {}
",
                options.join(" ")
            );
        }
        std::fs::write(etc.join("resolv.conf"), conf)?;
        Ok(())
    }

    /// The uid of a pod running here, by `namespace/name`.
    pub fn pod_uid(&self, name: &str) -> Option<String> {
        let pods = self.inner.pods.lock().expect("not poisoned");
        pods.iter().find(|(_, p)| p.name == name && p.worker.is_some()).map(|(uid, _)| uid.clone())
    }

    fn container_state(&self, uid: &str, container: &str) -> Option<State> {
        let pods = self.inner.pods.lock().expect("not poisoned");
        let rec = pods.get(uid)?;
        rec.containers.iter().find(|r| r.status.name == container).map(|r| r.status.state.clone())
    }

    /// Why a container is waiting, if it is.
    pub fn waiting_reason(&self, uid: &str, container: &str) -> Option<String> {
        match self.container_state(uid, container)? {
            State::Waiting { reason } => Some(reason),
            _ => None,
        }
    }

    /// containerd's id of a container that runs now.
    pub fn running_container(&self, uid: &str, container: &str) -> Option<String> {
        let pods = self.inner.pods.lock().expect("not poisoned");
        let r = pods.get(uid)?.containers.iter().find(|r| r.status.name == container)?;
        matches!(r.status.state, State::Running { .. }).then(|| r.cid.clone())
    }

    pub fn is_running(&self, uid: &str, container: &str) -> bool {
        matches!(self.container_state(uid, container), Some(State::Running { .. }))
    }

    /// When the current run of a container started (seconds), for adoption.
    fn started_path(&self, uid: &str, container: &str) -> PathBuf {
        self.pod_dir(uid).join(format!("started-{container}"))
    }

    /// Where a container's output goes: one file per run, so `--previous` can read the last.
    pub fn log_path(&self, uid: &str, container: &str, run: i32) -> PathBuf {
        self.pod_dir(uid).join("logs").join(container).join(format!("{run}.log"))
    }

    /// The log file of a pod's container: the current run, or the one before it.
    pub fn log_file(&self, uid: &str, container: &str, previous: bool) -> Option<PathBuf> {
        let restarts = {
            let pods = self.inner.pods.lock().expect("not poisoned");
            let rec = pods.get(uid)?;
            rec.containers.iter().find(|r| r.status.name == container)?.status.restarts
        };
        let run = if previous { restarts - 1 } else { restarts };
        let p = self.log_path(uid, container, run);
        (run >= 0 && p.exists()).then_some(p)
    }

    /// Tears down what a pod had on this node: tasks, containers, network, volumes, cgroups.
    async fn teardown(&self, uid: &str, name: &str, grace: Duration) {
        let conn = &self.inner.conn;
        let leftovers: Vec<String> = conn
            .containers()
            .list(conn.req(ListContainersRequest { filters: vec![format!("labels.\"{LABEL_UID}\"=={uid}")] }))
            .await
            .map(|r| r.into_inner().containers.into_iter().map(|c| c.id).collect())
            .unwrap_or_default();
        for cid in &leftovers {
            conn.kill(cid, libc::SIGTERM).await;
        }
        if !leftovers.is_empty() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && self.any_running(&leftovers).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        for cid in &leftovers {
            conn.kill(cid, libc::SIGKILL).await;
            let req = WaitRequest { container_id: cid.clone(), exec_id: String::new() };
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.tasks().wait(conn.req(req))).await;
            conn.remove(cid).await;
        }
        let dir = self.pod_dir(uid);
        let args = format!("IgnoreUnknown=1;K8S_POD_UID={uid}");
        if let Err(e) = self.inner.s.network.del(&dir, uid, &args).await {
            tracing::warn!("removing the network of pod {name}: {e:#}");
        }
        volumes::unmount_all(&dir);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", dir.display());
            }
        }
        let pod_cgroup = format!("{}/pod{uid}", self.inner.s.cgroup_parent.trim_end_matches('/'));
        for root in cgroup_roots() {
            let d = root.join(pod_cgroup.trim_start_matches('/'));
            if let Ok(children) = std::fs::read_dir(&d) {
                for c in children.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
            let _ = std::fs::remove_dir(&d);
        }
    }

    async fn any_running(&self, ids: &[String]) -> bool {
        let conn = &self.inner.conn;
        for id in ids {
            let got = conn.tasks().get(conn.req(GetRequest { container_id: id.clone(), exec_id: String::new() })).await;
            if got.ok().and_then(|r| r.into_inner().process).is_some_and(|p| p.status == TaskStatus::Running as i32) {
                return true;
            }
        }
        false
    }

    /// Removes the node-level leftovers (bridge, cgroup parent) once no pod is left.
    pub async fn cleanup_node(&self) {
        if !self.inner.pods.lock().expect("not poisoned").is_empty() {
            return;
        }
        self.inner.s.network.remove_bridge().await;
        for root in cgroup_roots() {
            let _ = std::fs::remove_dir(root.join(self.inner.s.cgroup_parent.trim_start_matches('/')));
        }
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn host_ports(pod: &Pod) -> Vec<serde_json::Value> {
    let Some(spec) = pod.spec.as_ref() else { return vec![] };
    spec.containers
        .iter()
        .flat_map(|c| c.ports.clone().unwrap_or_default())
        .filter_map(|p| {
            let host = p.host_port.filter(|h| *h > 0)?;
            let proto = p.protocol.unwrap_or_else(|| "TCP".into()).to_lowercase();
            Some(serde_json::json!({"hostPort": host, "containerPort": p.container_port, "protocol": proto}))
        })
        .collect()
}

type Waiter = tokio::task::JoinHandle<
    Result<
        containerd_client::tonic::Response<containerd_client::services::v1::WaitResponse>,
        containerd_client::tonic::Status,
    >,
>;

/// SIGTERM, up to `grace` for the exit, then SIGKILL; the exit status.
/// The preStop hook (within the grace period, as the kubelet runs it), SIGTERM, up to the
/// rest of `grace` for the exit, then SIGKILL; the exit status.
async fn stop_task(
    conn: &Conn,
    cid: &str,
    c: &Container,
    ip: &str,
    waiter: &mut Waiter,
    grace: Duration,
) -> Option<u32> {
    let start = Instant::now();
    if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
        if let Err(e) =
            tokio::time::timeout(grace, probe::hook(conn, cid, c, hook, ip)).await.unwrap_or(Err("timed out".into()))
        {
            tracing::info!("preStop hook of container {} failed: {e}", c.name);
        }
    }
    let grace = grace.saturating_sub(start.elapsed());
    let status = |r: Result<_, tokio::task::JoinError>| {
        r.ok()
            .and_then(
                |r: Result<containerd_client::tonic::Response<containerd_client::services::v1::WaitResponse>, _>| {
                    r.ok()
                },
            )
            .map(|r| r.into_inner().exit_status)
    };
    conn.kill(cid, libc::SIGTERM).await;
    match tokio::time::timeout(grace, &mut *waiter).await {
        Ok(r) => status(r),
        Err(_) => {
            conn.kill(cid, libc::SIGKILL).await;
            status(waiter.await)
        }
    }
}

/// Sleeps for `d`; true if the pod is being stopped meanwhile (or already).
async fn wait_or_stop(stop: &watch::Receiver<Option<Duration>>, d: Duration) -> bool {
    let mut stop = stop.clone();
    if stop.borrow().is_some() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = async { let _ = stop.wait_for(|s| s.is_some()).await; } => true,
    }
}

/// The n-th back-off (n >= 1): base, 2×base, 4×base, … capped.
fn backoff(base: Duration, cap: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << (n - 1).min(20)).min(cap)
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else if s > 0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn cgroup_dir(path: &str) -> PathBuf {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        base.join(path.trim_start_matches('/'))
    } else {
        base.join("memory").join(path.trim_start_matches('/'))
    }
}

/// Whether the kernel's OOM killer killed something in the container's cgroup.
fn oom_killed(path: &str) -> bool {
    let dir = cgroup_dir(path);
    let text = std::fs::read_to_string(dir.join("memory.oom_control"))
        .or_else(|_| std::fs::read_to_string(dir.join("memory.events")))
        .unwrap_or_default();
    text.lines().any(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()).unwrap_or(0) > 0)
}

/// CPU time used (ns) and working-set memory (bytes) of a container's cgroup.
fn cgroup_usage(path: &str) -> Option<(u64, i64)> {
    let rel = path.trim_start_matches('/');
    let base = Path::new("/sys/fs/cgroup");
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let stat_value = |text: &str, key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse::<i64>().ok()))
    };
    if base.join("cgroup.controllers").exists() {
        let d = base.join(rel);
        let cpu = stat_value(&read(d.join("cpu.stat"))?, "usage_usec ")? as u64 * 1000;
        let mem: i64 = read(d.join("memory.current"))?.trim().parse().ok()?;
        let inactive = read(d.join("memory.stat")).and_then(|t| stat_value(&t, "inactive_file ")).unwrap_or(0);
        return Some((cpu, (mem - inactive).max(0)));
    }
    let cpu: u64 = read(base.join("cpuacct").join(rel).join("cpuacct.usage"))?.trim().parse().ok()?;
    let m = base.join("memory").join(rel);
    let mem: i64 = read(m.join("memory.usage_in_bytes"))?.trim().parse().ok()?;
    let inactive = read(m.join("memory.stat")).and_then(|t| stat_value(&t, "total_inactive_file ")).unwrap_or(0);
    Some((cpu, (mem - inactive).max(0)))
}

impl Runtime for Containerd {
    async fn start(&self, pod: &Pod, _pod_ip: &str) -> anyhow::Result<()> {
        let uid = uid_of(pod);
        let mut pods = self.inner.pods.lock().expect("not poisoned");
        let rec = pods.entry(uid.clone()).or_default();
        if rec.worker.is_some() {
            return Ok(());
        }
        rec.name = pod_name(pod);
        let spec = pod.spec.clone().unwrap_or_default();
        let inits = spec.init_containers.clone().unwrap_or_default();
        let first = if inits.is_empty() { "ContainerCreating" } else { "PodInitializing" };
        rec.containers = inits
            .iter()
            .map(|c| (c, true))
            .chain(spec.containers.iter().map(|c| (c, false)))
            .map(|(c, init)| Record {
                status: Status {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    id: String::new(),
                    state: State::Waiting { reason: if init { "ContainerCreating" } else { first }.into() },
                    last: None,
                    message: None,
                    image_id: None,
                    ready: false,
                    init,
                    restarts: rec.found.get(&c.name).map_or(0, |f| f.restarts),
                },
                cid: container_id(&uid, &c.name),
                cpu: None,
            })
            .collect();
        let (tx, rx) = watch::channel(None);
        rec.stop = Some(tx);
        rec.worker = Some(tokio::spawn(self.clone().run_pod(pod.clone(), rx)));
        Ok(())
    }

    async fn stop(&self, pod: &Pod, grace: Duration) -> anyhow::Result<()> {
        let uid = uid_of(pod);
        let (worker, name) = {
            let mut pods = self.inner.pods.lock().expect("not poisoned");
            let Some(rec) = pods.get_mut(&uid) else { return Ok(()) };
            if let Some(tx) = &rec.stop {
                let _ = tx.send(Some(grace));
            }
            (rec.worker.take(), rec.name.clone())
        };
        if let Some(w) = worker {
            let _ = w.await;
        }
        self.teardown(&uid, &name, grace).await;
        self.inner.pods.lock().expect("not poisoned").remove(&uid);
        Ok(())
    }

    fn containers(&self, pod: &Pod) -> Option<Vec<Status>> {
        let pods = self.inner.pods.lock().expect("not poisoned");
        let rec = pods.get(&uid_of(pod))?;
        rec.worker.as_ref()?;
        Some(rec.containers.iter().map(|r| r.status.clone()).collect())
    }

    fn pods(&self) -> Vec<String> {
        self.inner.pods.lock().expect("not poisoned").keys().cloned().collect()
    }

    fn usage(&self, pod: &Pod) -> Option<Vec<Usage>> {
        let uid = uid_of(pod);
        let mut pods = self.inner.pods.lock().expect("not poisoned");
        let rec = pods.get_mut(&uid)?;
        let now = Instant::now();
        let mut out = Vec::new();
        for r in rec.containers.iter_mut().filter(|r| matches!(r.status.state, State::Running { .. })) {
            let path = format!("{}/pod{uid}/{}", self.inner.s.cgroup_parent.trim_end_matches('/'), r.cid);
            let Some((cpu_ns, mem)) = cgroup_usage(&path) else { continue };
            let cpu_milli = match r.cpu {
                Some((at, prev)) if now > at => {
                    let ns = cpu_ns.saturating_sub(prev) as f64;
                    (ns / now.duration_since(at).as_nanos() as f64 * 1000.0).round() as i64
                }
                _ => 0,
            };
            r.cpu = Some((now, cpu_ns));
            out.push(Usage { container: r.status.name.clone(), cpu_milli, memory_bytes: mem });
        }
        (!out.is_empty()).then_some(out)
    }

    fn changes(&self) -> Arc<Changes> {
        self.inner.changes.clone()
    }

    fn pod_ip(&self, pod: &Pod) -> Option<Option<String>> {
        let pods = self.inner.pods.lock().expect("not poisoned");
        Some(pods.get(&uid_of(pod)).and_then(|p| p.ip.clone()))
    }
}

/// Environment helpers shared by `volumes::env`.
pub(crate) fn field_value(pod: &Pod, path: &str, ip: &str) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let lookup = |map: &Option<BTreeMap<String, String>>, key: &str| map.as_ref().and_then(|m| m.get(key).cloned());
    let key_of = |prefix: &str| path.strip_prefix(prefix)?.strip_suffix("']").map(String::from);
    Some(match path {
        "metadata.name" => m.name.clone()?,
        "metadata.namespace" => m.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => m.uid.clone()?,
        "spec.nodeName" => spec?.node_name.clone()?,
        "spec.serviceAccountName" => spec?.service_account_name.clone().unwrap_or_else(|| "default".into()),
        "status.podIP" => ip.to_string(),
        "status.hostIP" => pod.status.as_ref()?.host_ip.clone().unwrap_or_default(),
        _ => {
            if let Some(k) = key_of("metadata.labels['") {
                lookup(&m.labels, &k).unwrap_or_default()
            } else if let Some(k) = key_of("metadata.annotations['") {
                lookup(&m.annotations, &k).unwrap_or_default()
            } else {
                return None;
            }
        }
    })
}

/// Tears down every pod an agent with these settings left, then the node-level parts
/// and the root directory. A client is not needed: nothing is reported.
pub async fn reset(s: Settings) -> anyhow::Result<()> {
    if !s.root.exists() {
        return Ok(());
    }
    // Any client will do; teardown never calls the API server.
    let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().expect("a valid URL")))?;
    let root = s.root.clone();
    if let Err(e) = proxy::remove(&s.proxy()).await {
        tracing::warn!("removing service rules: {e:#}");
    }
    routes::remove_all().await;
    let mut s = s;
    s.images.clear();
    if s.network.subnet.is_empty() {
        s.network.subnet = std::fs::read_to_string(root.join(POD_CIDR_FILE)).unwrap_or_default().trim().to_string();
    }
    let rt = Containerd::start(client, s).await?;
    let mut uids: Vec<String> = rt.pods();
    // Pod directories without containers (stopped half-way) are torn down too.
    if let Ok(d) = std::fs::read_dir(root.join("pods")) {
        uids.extend(d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()));
    }
    uids.sort();
    uids.dedup();
    for uid in &uids {
        rt.teardown(uid, uid, Duration::ZERO).await;
    }
    rt.inner.pods.lock().expect("not poisoned").clear();
    rt.cleanup_node().await;
    rt.shutdown().await;
    if let Ok(v) = std::fs::read_to_string(root.join("ip_forward.before")) {
        let _ = std::fs::write(IP_FORWARD, v.trim());
    }
    volumes::unmount_all(&root);
    std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_base_to_the_cap() {
        let (b, c) = (Duration::from_secs(10), Duration::from_secs(300));
        let got: Vec<u64> = (1..=7).map(|n| backoff(b, c, n).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(human(Duration::from_secs(40)), "40s");
        assert_eq!(human(Duration::from_secs(300)), "5m0s");
    }

    #[test]
    fn container_ids_are_short_and_stable() {
        let a = container_id("0f5a6c1e-1111-2222-3333-444455556666", &"x".repeat(63));
        assert_eq!(a.len(), 40);
        assert_eq!(a, container_id("0f5a6c1e-1111-2222-3333-444455556666", &"x".repeat(63)));
        assert_ne!(a, container_id("0f5a6c1e-1111-2222-3333-444455556666", "y"));
    }
}
