//! The agent: registers its Nodes, renews their Leases in kube-node-lease, and runs
//! the pods bound to them on its runtime — starting new ones, reporting their status
//! (through `podstatus`, whatever the runtime), and, for a pod marked for deletion,
//! stopping it within its grace period and then deleting it for good.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;
use tokio::sync::Notify;

use skiff_controllers::informer::{notifying_cache, Informer};

use crate::localpath::LocalPath;
use crate::metrics::Reporter;
use crate::podstatus::{self, Placement};
use crate::runtime::Runtime;

#[derive(Clone, Debug)]
pub struct Config {
    pub kubeconfig: PathBuf,
    /// How many nodes this agent registers and runs.
    pub nodes: usize,
    /// Nodes are named `<prefix>-<n>`.
    pub node_prefix: String,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    /// Nodes get `topology.kubernetes.io/zone: zone-<n mod zones>`.
    pub zones: usize,
    pub lease_duration: Duration,
    pub renew: Duration,
    /// How often every pod's status is recomputed and usage reported (pods whose object
    /// or containers change are synced at once).
    pub sync_period: Duration,
    /// Where the local-path provisioner keeps volume directories.
    pub local_path_root: PathBuf,
    /// The name of the (single) real node; simulated ones are `<prefix>-<n>`.
    pub node_name: Option<String>,
    /// The address of the (single) real node; simulated nodes get made-up ones.
    pub node_ip: Option<String>,
    /// The port the agent serves container logs on (daemonEndpoints.kubeletEndpoint).
    pub port: u16,
    /// What runs the containers, for nodeInfo (`fake://0.1.0`, `containerd://1.6.20`).
    pub runtime_version: String,
    /// The real node's pod CIDR when it is configured on the agent (`--pod-cidr`) rather
    /// than given by the controller-manager: registered as the Node's `spec.podCIDR`.
    pub pod_cidr: Option<String>,
}

/// How long one node's lease renewal may take before the agent gives up on it and
/// starts the next: four renew intervals, and never under 5 s.
fn renewal_timeout(renew: Duration) -> Duration {
    (renew * 4).max(Duration::from_secs(5))
}

/// The Node object an agent registers (its status comes separately).
fn node_object(cfg: &Config, s: &Slot, simulated: bool) -> Node {
    let mut spec = json!({});
    if let (Some(c), false) = (&cfg.pod_cidr, simulated) {
        spec = json!({"podCIDR": c, "podCIDRs": [c]});
    }
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": s.name, "labels": {
            "kubernetes.io/hostname": s.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": if simulated { "skiff-simulated" } else { "skiff" },
            "topology.kubernetes.io/zone": format!("zone-{}", s.index % cfg.zones.max(1)),
        }},
        "spec": spec,
    }))
    .expect("a valid Node")
}

/// The pod CIDR of the real node: `cfg.pod_cidr` if the agent was given one (a Node
/// holding another is warned about), else the `spec.podCIDR` the controller-manager
/// gives the Node, waited for. The Node is created first if it does not exist, since
/// the controller-manager only gives CIDRs to Nodes it sees.
pub async fn node_pod_cidr(client: &kube::Client, cfg: &Config) -> anyhow::Result<String> {
    let name = cfg.node_name.clone().ok_or_else(|| anyhow::anyhow!("the agent has no node name"))?;
    let slot = Slot { name: name.clone(), host_ip: cfg.node_ip.clone().unwrap_or_default(), index: 0 };
    let api: Api<Node> = Api::all(client.clone());
    let mut next_note = std::time::Instant::now();
    loop {
        let held = match api.get_opt(&name).await {
            Ok(Some(n)) => n.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()),
            Ok(None) => match api.create(&PostParams::default(), &node_object(cfg, &slot, false)).await {
                Ok(n) => n.spec.and_then(|s| s.pod_cidr).filter(|c| !c.is_empty()),
                Err(e) => {
                    tracing::warn!("registering node {name}: {e}");
                    None
                }
            },
            Err(e) => {
                tracing::warn!("reading node {name}: {e}");
                None
            }
        };
        match (&cfg.pod_cidr, held) {
            (Some(mine), Some(held)) if *mine != held => {
                tracing::warn!(
                    "node {name} holds pod CIDR {held} but this agent was given --pod-cidr {mine}; using {mine}: \
                     other nodes route {held} here"
                );
                return Ok(mine.clone());
            }
            (Some(mine), _) => return Ok(mine.clone()),
            (None, Some(held)) => {
                tracing::info!("node {name} has pod CIDR {held}");
                return Ok(held);
            }
            (None, None) => {}
        }
        if std::time::Instant::now() >= next_note {
            tracing::info!(
                "waiting for the controller-manager to give node {name} a pod CIDR (it needs --allocate-node-cidrs \
                 and --cluster-cidr), or pass --pod-cidr"
            );
            next_note += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

struct Slot {
    name: String,
    host_ip: String,
    index: usize,
}

pub struct Agent<R: Runtime> {
    client: kube::Client,
    cfg: Config,
    rt: R,
    slots: HashMap<String, Slot>,
    /// Pod IPs handed out: pod uid -> IP, and per node the next host number.
    ips: Mutex<(HashMap<String, String>, HashMap<String, u32>)>,
    metrics: Reporter,
    local_path: LocalPath,
    /// Pods being stopped (uids), each by its own task.
    stopping: Mutex<HashSet<String>>,
    /// What the next sync pass covers, and its wake-up.
    pending: Mutex<Pending>,
    wake: Notify,
    /// The pods this agent has synced, by uid (runtime changes name pods by uid).
    known: Mutex<HashMap<String, ObjectRef<Pod>>>,
}

/// The pods the next sync pass covers: all of them (at start, every `--sync-period`,
/// after a volume change), or just those whose object changed (seen on the watch) or
/// whose containers changed (told by the runtime). A kubelet syncs pods the same way,
/// each when something about it changed, all of them once a minute. Recomputing every
/// pod's status on every change cost the agent most of its CPU at 30,000 pods.
#[derive(Default)]
struct Pending {
    all: bool,
    /// Pod uid -> its key (a deleted pod is found by its uid; a pod recreated under the
    /// same name has another).
    pods: HashMap<String, ObjectRef<Pod>>,
}

/// After a failed start, how long until the pod is tried again.
const START_RETRY: Duration = Duration::from_secs(1);

fn seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// The kernel release and the OS's PRETTY_NAME, for a real node's nodeInfo.
fn host_info() -> (String, String) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| "Linux".into());
    (kernel, os)
}

impl<R: Runtime> Agent<R> {
    fn simulated(&self) -> bool {
        self.cfg.runtime_version.starts_with("fake://")
    }

    pub fn new(client: kube::Client, cfg: Config, rt: R) -> Agent<R> {
        let slots: HashMap<String, Slot> = (0..cfg.nodes)
            .map(|i| {
                let name = match (&cfg.node_name, i) {
                    (Some(n), 0) => n.clone(),
                    _ => format!("{}-{i}", cfg.node_prefix),
                };
                // Simulated nodes get addresses from 198.18.0.0/15 (reserved for benchmarks); nothing is sent there.
                let host_ip = match (&cfg.node_ip, i) {
                    (Some(ip), 0) => ip.clone(),
                    _ => format!("198.18.{}.{}", i / 250, i % 250 + 1),
                };
                (name.clone(), Slot { name, host_ip, index: i })
            })
            .collect();
        let metrics = Reporter::new(client.clone());
        let local_path = LocalPath::new(client.clone(), cfg.local_path_root.clone(), slots.keys().cloned().collect());
        Agent {
            client,
            cfg,
            rt,
            slots,
            ips: Mutex::new((HashMap::new(), HashMap::new())),
            metrics,
            local_path,
            stopping: Mutex::new(HashSet::new()),
            pending: Mutex::new(Pending { all: true, pods: HashMap::new() }),
            wake: Notify::new(),
            known: Mutex::new(HashMap::new()),
        }
    }

    fn node_object(&self, s: &Slot) -> Node {
        node_object(&self.cfg, s, self.simulated())
    }

    fn node_status(&self, s: &Slot) -> serde_json::Value {
        let now = seconds(Timestamp::now()).to_string();
        let cond = |t: &str, st: &str, reason: &str, msg: &str| json!({"type": t, "status": st, "reason": reason, "message": msg, "lastHeartbeatTime": now, "lastTransitionTime": now});
        let (kernel, os_image) =
            if self.simulated() { ("simulated".to_string(), "Skiff simulated node".to_string()) } else { host_info() };
        let res = json!({"cpu": self.cfg.cpu, "memory": self.cfg.memory, "pods": self.cfg.max_pods.to_string(), "ephemeral-storage": "100Gi"});
        json!({
            "capacity": res,
            "allocatable": res,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": s.host_ip}, {"type": "Hostname", "address": s.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.cfg.port}},
            "nodeInfo": {
                "machineID": s.name, "systemUUID": s.name, "bootID": s.name,
                "kernelVersion": kernel, "osImage": os_image,
                "containerRuntimeVersion": self.cfg.runtime_version, "kubeletVersion": "v1.32.0-skiff",
                "kubeProxyVersion": "v1.32.0-skiff", "operatingSystem": "linux", "architecture": "amd64"
            }
        })
    }

    /// Creates the Node (or takes over an existing one) and reports it Ready.
    async fn register(&self, s: &Slot) -> kube::Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &self.node_object(s)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
        api.patch_status(&s.name, &PatchParams::default(), &Patch::Merge(json!({"status": self.node_status(s)})))
            .await?;
        Ok(())
    }

    /// Renews every node's Lease once (and reports a node Ready again when the node
    /// controller marked it Unknown). Each node's renewal is abandoned after
    /// `renewal_timeout`, so one request the server never answers cannot stop the
    /// heartbeats: the next round tries again.
    async fn renew_leases(&self, nodes: &Store<Node>, rvs: &Mutex<HashMap<String, String>>) {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let node_api: Api<Node> = Api::all(self.client.clone());
        let limit = renewal_timeout(self.cfg.renew);
        let work: Vec<_> = self
            .slots
            .values()
            .map(|s| {
                let (api, node_api) = (api.clone(), node_api.clone());
                let renew = async move {
                    let rv = rvs.lock().expect("not poisoned").get(&s.name).cloned();
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(s.name.clone()),
                            namespace: Some("kube-node-lease".into()),
                            resource_version: rv.clone(),
                            ..Default::default()
                        },
                        spec: Some(LeaseSpec {
                            holder_identity: Some(s.name.clone()),
                            lease_duration_seconds: Some(self.cfg.lease_duration.as_secs().max(1) as i32),
                            renew_time: Some(MicroTime(Timestamp::now())),
                            ..Default::default()
                        }),
                    };
                    let sent = std::time::Instant::now();
                    let r = match rv {
                        Some(_) => api.replace(&s.name, &PostParams::default(), &lease).await,
                        None => match api.create(&PostParams::default(), &lease).await {
                            Err(kube::Error::Api(e)) if e.code == 409 => {
                                let cur = api.get(&s.name).await;
                                match cur {
                                    Ok(cur) => {
                                        let mut l = lease.clone();
                                        l.metadata.resource_version = cur.metadata.resource_version;
                                        api.replace(&s.name, &PostParams::default(), &l).await
                                    }
                                    Err(e) => Err(e),
                                }
                            }
                            other => other,
                        },
                    };
                    if sent.elapsed() > self.cfg.renew {
                        tracing::warn!("the API server took {:?} to renew the lease of {}", sent.elapsed(), s.name);
                    }
                    match r {
                        Ok(l) => {
                            rvs.lock()
                                .expect("not poisoned")
                                .insert(s.name.clone(), l.metadata.resource_version.unwrap_or_default());
                        }
                        Err(e) => {
                            rvs.lock().expect("not poisoned").remove(&s.name);
                            tracing::warn!("renewing the lease of {}: {e}", s.name);
                        }
                    }
                    // Ready again after the node controller marked it Unknown.
                    let node = nodes.get(&ObjectRef::new(&s.name));
                    let ready = node
                        .as_ref()
                        .and_then(|n| n.status.as_ref())
                        .and_then(|st| st.conditions.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                    if node.is_some() && !ready {
                        let _ = node_api
                            .patch_status(
                                &s.name,
                                &PatchParams::default(),
                                &Patch::Merge(json!({"status": self.node_status(s)})),
                            )
                            .await;
                    } else if node.is_none() && nodes.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok()) {
                        // Deleted behind our back: registered again. Not before the node
                        // cache has loaded (a node missing from it then is no news), and
                        // without waiting for it: a renewal round that waited held up
                        // the leases of every node behind it.
                        let _ = self.register(s).await;
                    }
                };
                async move {
                    if tokio::time::timeout(limit, renew).await.is_err() {
                        rvs.lock().expect("not poisoned").remove(&s.name);
                        tracing::warn!("renewing the lease of {} took over {limit:?}; trying again", s.name);
                    }
                }
            })
            .collect();
        futures::stream::iter(work).buffer_unordered(32).collect::<Vec<()>>().await;
    }

    /// A made-up address for a pod on a simulated node.
    fn pod_ip(&self, pod: &Pod, slot: &Slot) -> String {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut ips = self.ips.lock().expect("not poisoned");
        if let Some(ip) = ips.0.get(&uid) {
            return ip.clone();
        }
        let n = ips.1.entry(slot.name.clone()).or_insert(1);
        *n = *n % 65_000 + 1;
        // Simulated pods get addresses from 100.64.0.0/10 (one /16 per node); nothing is sent there.
        let ip = format!("100.{}.{}.{}", 64 + (slot.index % 64), *n / 250, *n % 250 + 1);
        ips.0.insert(uid, ip.clone());
        ip
    }

    /// Stops a pod marked for deletion within its grace period, then deletes it for good.
    /// Runs in its own task, so a long grace period holds up no other pod.
    fn stop_pod(self: &Arc<Self>, pod: Arc<Pod>) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !self.stopping.lock().expect("not poisoned").insert(uid.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> =
                Api::namespaced(this.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
            let grace = Duration::from_secs(pod.metadata.deletion_grace_period_seconds.unwrap_or(30).max(0) as u64);
            match this.rt.stop(&pod, grace).await {
                Err(e) => tracing::warn!("stopping {name}: {e}"),
                Ok(()) if pod.metadata.name.is_some() => {
                    let dp = DeleteParams {
                        grace_period_seconds: Some(0),
                        preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                        ..Default::default()
                    };
                    let _ = api.delete(&name, &dp).await;
                    this.ips.lock().expect("not poisoned").0.remove(&uid);
                    this.known.lock().expect("not poisoned").remove(&uid);
                }
                Ok(()) => {}
            }
            this.stopping.lock().expect("not poisoned").remove(&uid);
        });
    }

    async fn sync_pod(self: &Arc<Self>, pod: Arc<Pod>) {
        let Some(slot) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).and_then(|n| self.slots.get(n)) else {
            return;
        };
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), pod.metadata.namespace.as_deref().unwrap_or("default"));
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            self.stop_pod(pod);
            return;
        }
        self.known.lock().expect("not poisoned").insert(uid.clone(), ObjectRef::from_obj(&*pod));
        let terminal = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        let made_up = self.pod_ip(&pod, slot);
        if self.rt.containers(&pod).is_none() && !terminal {
            if let Err(e) = self.rt.start(&pod, &made_up).await {
                tracing::warn!("starting {name}: {e}");
                let (this, key) = (self.clone(), ObjectRef::from_obj(&*pod));
                tokio::spawn(async move {
                    tokio::time::sleep(START_RETRY).await;
                    this.mark(key, uid);
                });
            }
        }
        let ip = match self.rt.pod_ip(&pod) {
            None => Some(made_up),
            Some(ip) => ip,
        };
        let containers = self.rt.containers(&pod);
        if containers.is_none() && terminal {
            return; // finished before this agent started; its status stays as reported
        }
        let at = Placement { host_ip: &slot.host_ip, pod_ip: ip.as_deref() };
        let status = podstatus::compute(&pod, containers.as_deref(), &at, seconds(Timestamp::now()));
        if pod.status.as_ref() != Some(&status) {
            let mut next = (*pod).clone();
            next.status = Some(status);
            match api.replace_status(&name, &PostParams::default(), &next).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                Err(e) => tracing::warn!("reporting the status of {name}: {e}"),
            }
        }
    }

    /// Reports what each running pod, and each node in total, uses.
    async fn report_usage(&self, mine: &[Arc<Pod>]) {
        let mut totals: BTreeMap<String, (i64, i64)> = self.slots.keys().map(|n| (n.clone(), (0, 0))).collect();
        let mut reports = Vec::new();
        let mut live = HashSet::new();
        for p in mine.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            let Some(usage) = self.rt.usage(p) else { continue };
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            if let Some(t) = totals.get_mut(&node) {
                t.0 += usage.iter().map(|u| u.cpu_milli).sum::<i64>();
                t.1 += usage.iter().map(|u| u.memory_bytes).sum::<i64>();
            }
            live.insert((
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            ));
            reports.push((p.clone(), usage));
        }
        self.metrics.prune(&live).await;
        futures::stream::iter(reports.into_iter().map(|(p, u)| async move { self.metrics.pod(&p, u).await }))
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
        self.metrics.nodes(totals).await;
    }

    /// The pods bound to the nodes this agent holds.
    fn mine(&self, pods: &Store<Pod>) -> Vec<Arc<Pod>> {
        pods.state()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some_and(|n| self.slots.contains_key(n)))
            .collect()
    }

    pub async fn run(self) -> anyhow::Result<()> {
        let this = Arc::new(self);
        futures::stream::iter(this.slots.values().map(|s| this.register(s)))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<kube::Result<Vec<()>>>()?;
        match &this.cfg.node_name {
            Some(n) if this.slots.len() == 1 => tracing::info!("registered node {n}"),
            _ => tracing::info!("registered {} node(s) named {}-N", this.slots.len(), this.cfg.node_prefix),
        }

        let mut informer = Informer::new(Api::<Pod>::all(this.client.clone()));
        let changed_pods = informer.subscribe();
        let pods = informer.store();
        informer.run();
        {
            let this = this.clone();
            tokio::spawn(async move {
                let mut changed_pods = std::pin::pin!(changed_pods);
                while let Some(Ok(p)) = changed_pods.next().await {
                    this.mark(ObjectRef::from_obj(&p), p.metadata.uid.clone().unwrap_or_default());
                }
            });
        }
        let volumes_changed = Arc::new(Notify::new());
        let nodes = notifying_cache(Api::<Node>::all(this.client.clone()), Arc::new(Notify::new()));
        let claims = notifying_cache(Api::<PersistentVolumeClaim>::all(this.client.clone()), volumes_changed.clone());
        let volumes = notifying_cache(Api::<PersistentVolume>::all(this.client.clone()), volumes_changed.clone());
        {
            let this = this.clone();
            let nodes = nodes.clone();
            tokio::spawn(async move {
                let rvs = Mutex::new(HashMap::new());
                loop {
                    this.renew_leases(&nodes, &rvs).await;
                    tokio::time::sleep(this.cfg.renew).await;
                }
            });
        }
        let _ = pods.wait_until_ready().await;
        {
            // Usage is reported on its own schedule: a sync pass waiting for hundreds of
            // PodMetrics writes would hold back the status of every pod behind it.
            let (this, pods) = (this.clone(), pods.clone());
            tokio::spawn(async move {
                loop {
                    this.report_usage(&this.mine(&pods)).await;
                    tokio::time::sleep(this.cfg.sync_period).await;
                }
            });
        }
        let changes = this.rt.changes();
        let mut next_full = tokio::time::Instant::now();
        loop {
            if this.sync_pass(&pods, &changes.take()).await {
                this.local_path.sync(&claims, &volumes).await;
                next_full = tokio::time::Instant::now() + this.cfg.sync_period;
            }
            tokio::select! {
                _ = this.wake.notified() => {}
                _ = changes.wait() => {}
                _ = volumes_changed.notified() => this.pending.lock().expect("not poisoned").all = true,
                _ = tokio::time::sleep_until(next_full) => this.pending.lock().expect("not poisoned").all = true,
            }
            // Changes arriving together are synced together.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Marks a pod for the next sync pass.
    fn mark(&self, key: ObjectRef<Pod>, uid: String) {
        self.pending.lock().expect("not poisoned").pods.insert(uid, key);
        self.wake.notify_one();
    }

    /// Syncs the pending pods and those the runtime reported changed (by uid); stops the
    /// runtime's pods whose object is gone. Returns whether it was a pass over all pods.
    async fn sync_pass(self: &Arc<Self>, pods: &Store<Pod>, changed: &HashSet<String>) -> bool {
        let Pending { all, pods: marked } = std::mem::take(&mut *self.pending.lock().expect("not poisoned"));
        // The pods to sync, and the uids of pods whose object is gone.
        let (batch, mut gone): (Vec<Arc<Pod>>, Vec<String>) = if all {
            let mine = self.mine(pods);
            let live: HashSet<&str> = mine.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
            let gone = self.rt.pods().into_iter().filter(|u| !live.contains(u.as_str())).collect();
            (mine, gone)
        } else {
            let mut wanted = marked;
            {
                let known = self.known.lock().expect("not poisoned");
                for uid in changed {
                    if let Some(k) = known.get(uid) {
                        wanted.entry(uid.clone()).or_insert_with(|| k.clone());
                    }
                }
            }
            let mut batch = Vec::new();
            let mut gone = Vec::new();
            for (uid, key) in wanted {
                match pods.get(&key) {
                    Some(p) if p.metadata.uid.as_deref() == Some(uid.as_str()) => batch.push(p),
                    _ => gone.push(uid),
                }
            }
            (batch, gone)
        };
        if !gone.is_empty() {
            let mut known = self.known.lock().expect("not poisoned");
            for uid in &gone {
                known.remove(uid);
            }
            drop(known);
            if !all {
                let held: HashSet<String> = self.rt.pods().into_iter().collect();
                gone.retain(|u| held.contains(u));
            }
        }
        // Pods removed behind our back (force-deleted) are stopped too.
        for uid in gone {
            let mut pod = Pod::default();
            pod.metadata.uid = Some(uid);
            pod.metadata.deletion_grace_period_seconds = Some(0);
            self.stop_pod(Arc::new(pod));
        }
        // 32 pods at a time per node, as if each node had its own agent, up to 256:
        // one agent holding a thousand simulated nodes would otherwise report their
        // pods no faster than one real node does.
        let parallel = self.slots.len().saturating_mul(32).min(256);
        futures::stream::iter(batch.into_iter().map(|p| self.sync_pod(p)))
            .buffer_unordered(parallel)
            .collect::<Vec<()>>()
            .await;
        all
    }
}
