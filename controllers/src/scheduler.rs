//! The scheduler: binds each pending pod (no `spec.nodeName`, `schedulerName`
//! default-scheduler) to a node through `pods/binding`. Filters: node readiness and
//! `unschedulable` (as the not-ready / unschedulable taints), taints and
//! tolerations, cpu / memory / pod-count requests against allocatable, host ports,
//! nodeSelector and required node affinity, required pod affinity and anti-affinity
//! (both directions for anti-affinity), topology spread constraints with
//! DoNotSchedule. Scores: least allocated, balanced allocation, preferred node
//! affinity, ScheduleAnyway spread and preferred pod anti-affinity. A pod nothing
//! fits gets PodScheduled=False (reason Unschedulable) and a FailedScheduling event
//! with Kubernetes' "0/N nodes are available: ..." message, and is tried again when
//! pods or nodes change. Bound pods are assumed on their node until the watch shows
//! the binding, so one pass can place many pods without overcommitting.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm, PodSpec, Taint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use serde_json::json;
use tokio::sync::Notify;

use crate::events::Recorder;
use crate::nodelifecycle::{tolerates, NOT_READY};
use crate::volumes::{select_node, Volumes};
use crate::{labels, pods, quantity};

const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
/// How long a pod waits for its claims to be provisioned and bound (Kubernetes' bind timeout).
const VOLUME_BIND_TIMEOUT: Duration = Duration::from_secs(600);

/// One node as a scheduling pass sees it.
#[derive(Clone)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub alloc: (i64, i64, i64),
    pub used: (i64, i64, i64),
    pub ports: HashSet<(String, i32)>,
    pub pods: Vec<Arc<Pod>>,
    /// How many of `pods` carry required pod anti-affinity (which every placement must respect).
    pub anti_pods: usize,
}

impl NodeInfo {
    pub fn from_node(n: &Node) -> NodeInfo {
        let status = n.status.clone().unwrap_or_default();
        let mut taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
            && !taints.iter().any(|t| t.key == UNSCHEDULABLE_TAINT)
        {
            taints.push(Taint {
                key: UNSCHEDULABLE_TAINT.into(),
                effect: "NoSchedule".into(),
                value: None,
                time_added: None,
            });
        }
        let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready
            && !taints
                .iter()
                .any(|t| t.effect == "NoSchedule" && (t.key == NOT_READY || t.key.ends_with("/unreachable")))
        {
            taints.push(Taint { key: NOT_READY.into(), effect: "NoSchedule".into(), value: None, time_added: None });
        }
        NodeInfo {
            name: pods::name(&n.metadata).into(),
            labels: n.metadata.labels.clone().unwrap_or_default(),
            taints,
            alloc: quantity::allocatable(status.allocatable.as_ref().or(status.capacity.as_ref())),
            used: (0, 0, 0),
            ports: HashSet::new(),
            pods: Vec::new(),
            anti_pods: 0,
        }
    }

    pub fn add(&mut self, p: Arc<Pod>) {
        if let Some(spec) = p.spec.as_ref() {
            let (c, m) = quantity::pod_requests(spec);
            self.used.0 += c;
            self.used.1 += m;
            self.used.2 += 1;
            for port in host_ports(spec) {
                self.ports.insert(port);
            }
            let anti = spec.affinity.as_ref().and_then(|a| a.pod_anti_affinity.as_ref());
            if anti.is_some_and(|a| {
                a.required_during_scheduling_ignored_during_execution.as_ref().is_some_and(|t| !t.is_empty())
            }) {
                self.anti_pods += 1;
            }
        }
        self.pods.push(p);
    }
}

fn host_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<(String, i32)> {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| p.host_port.filter(|h| *h > 0).map(|h| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), h)))
        .collect()
}

fn node_term_matches(term: &NodeSelectorTerm, n: &NodeInfo) -> bool {
    let exprs =
        term.match_expressions.iter().flatten().all(|e| requirement(e, n.labels.get(&e.key).map(String::as_str)));
    let fields = term
        .match_fields
        .iter()
        .flatten()
        .all(|e| requirement(e, (e.key == "metadata.name").then_some(n.name.as_str())));
    (term.match_expressions.is_some() || term.match_fields.is_some()) && exprs && fields
}

/// Does node `n` satisfy a NodeSelector (any of its terms)?
pub fn node_selector_matches(sel: &NodeSelector, n: &NodeInfo) -> bool {
    sel.node_selector_terms.iter().any(|t| node_term_matches(t, n))
}

fn requirement(e: &NodeSelectorRequirement, v: Option<&str>) -> bool {
    let values = e.values.as_deref().unwrap_or_default();
    let num = |s: &str| s.parse::<i64>().ok();
    match e.operator.as_str() {
        "In" => v.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => v.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" => matches!((v.and_then(num), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a > b),
        "Lt" => matches!((v.and_then(num), values.first().and_then(|x| num(x))), (Some(a), Some(b)) if a < b),
        _ => false,
    }
}

/// nodeSelector and required node affinity.
pub fn node_affinity_ok(pod: &Pod, n: &NodeInfo) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return true };
    if !spec.node_selector.iter().flatten().all(|(k, v)| n.labels.get(k) == Some(v)) {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| na.required_during_scheduling_ignored_during_execution.as_ref());
    required.is_none_or(|r| r.node_selector_terms.iter().any(|t| node_term_matches(t, n)))
}

fn term_selects(term: &PodAffinityTerm, owner_ns: &str, p: &Pod) -> bool {
    let nss = term.namespaces.clone().unwrap_or_default();
    let ns_ok = if nss.is_empty() && term.namespace_selector.is_none() {
        pods::namespace(&p.metadata) == owner_ns
    } else {
        nss.iter().any(|n| n == pods::namespace(&p.metadata))
            || term.namespace_selector.as_ref().is_some_and(|s| *s == LabelSelector::default())
    };
    ns_ok && labels::matches(term.label_selector.as_ref(), p.metadata.labels.as_ref())
}

/// Why `pod` cannot go to `n`, if it cannot.
pub fn filter(pod: &Pod, n: &NodeInfo, all: &[NodeInfo]) -> Result<(), String> {
    filter_with(&Wants::of(pod), n, all, all.iter().any(|o| o.anti_pods > 0))
}

/// What filtering and scoring need of the pod itself, worked out once per placement
/// instead of once per node (its requests are parsed from quantity strings).
struct Wants<'a> {
    pod: &'a Pod,
    spec: &'a PodSpec,
    ns: &'a str,
    /// CPU (millicores) and memory (bytes) requested.
    requests: (i64, i64),
    host_ports: Vec<(String, i32)>,
}

static NO_SPEC: std::sync::LazyLock<PodSpec> = std::sync::LazyLock::new(PodSpec::default);

impl<'a> Wants<'a> {
    fn of(pod: &'a Pod) -> Wants<'a> {
        let spec = pod.spec.as_ref().unwrap_or(&NO_SPEC);
        Wants {
            pod,
            spec,
            ns: pods::namespace(&pod.metadata),
            requests: quantity::pod_requests(spec),
            host_ports: host_ports(spec),
        }
    }
}

/// `filter`, told whether any placed pod has required anti-affinity (so the check of
/// existing pods' rules can be skipped, as it usually can, without a scan per node).
fn filter_with(w: &Wants, n: &NodeInfo, all: &[NodeInfo], existing_anti: bool) -> Result<(), String> {
    let (pod, spec, ns) = (w.pod, w.spec, w.ns);
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    for t in n.taints.iter().filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute") {
        if !tolerations.iter().any(|tol| tolerates(tol, t)) {
            if t.key == UNSCHEDULABLE_TAINT {
                return Err("node(s) were unschedulable".into());
            }
            return Err(format!("node(s) had untolerated taint {{{}: {}}}", t.key, t.value.as_deref().unwrap_or("")));
        }
    }
    if !node_affinity_ok(pod, n) {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    let (cpu, mem) = w.requests;
    if n.used.2 + 1 > n.alloc.2 {
        return Err("Too many pods".into());
    }
    if cpu > 0 && n.used.0 + cpu > n.alloc.0 {
        return Err("Insufficient cpu".into());
    }
    if mem > 0 && n.used.1 + mem > n.alloc.1 {
        return Err("Insufficient memory".into());
    }
    if w.host_ports.iter().any(|p| n.ports.contains(p)) {
        return Err("node(s) didn't have free ports for the requested pod ports".into());
    }
    let domain = |node: &NodeInfo, key: &str| node.labels.get(key).cloned();
    let no_affinity = k8s_openapi::api::core::v1::Affinity::default();
    let affinity = spec.affinity.as_ref().unwrap_or(&no_affinity);
    // Required anti-affinity: no selected pod in the same domain.
    for term in affinity
        .pod_anti_affinity
        .iter()
        .flat_map(|a| a.required_during_scheduling_ignored_during_execution.iter().flatten())
    {
        let Some(d) = domain(n, &term.topology_key) else { continue };
        let clash = all
            .iter()
            .filter(|o| domain(o, &term.topology_key).as_ref() == Some(&d))
            .any(|o| o.pods.iter().any(|p| term_selects(term, ns, p)));
        if clash {
            return Err("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    // ... and no pod there whose own anti-affinity rejects this one.
    for o in all.iter().filter(|o| existing_anti && o.anti_pods > 0) {
        for p in &o.pods {
            let terms = p.spec.as_ref().and_then(|s| s.affinity.as_ref()).and_then(|a| a.pod_anti_affinity.as_ref());
            for term in
                terms.iter().flat_map(|a| a.required_during_scheduling_ignored_during_execution.iter().flatten())
            {
                if domain(o, &term.topology_key).is_some()
                    && domain(o, &term.topology_key) == domain(n, &term.topology_key)
                    && term_selects(term, pods::namespace(&p.metadata), pod)
                {
                    return Err("node(s) didn't satisfy existing pods anti-affinity rules".into());
                }
            }
        }
    }
    // Required affinity: a selected pod in the same domain (or none anywhere, for the first of a group).
    for term in affinity
        .pod_affinity
        .iter()
        .flat_map(|a| a.required_during_scheduling_ignored_during_execution.iter().flatten())
    {
        let anywhere = all.iter().any(|o| o.pods.iter().any(|p| term_selects(term, ns, p)));
        let here = domain(n, &term.topology_key).is_some_and(|d| {
            all.iter()
                .filter(|o| domain(o, &term.topology_key).as_ref() == Some(&d))
                .any(|o| o.pods.iter().any(|p| term_selects(term, ns, p)))
        });
        let first = !anywhere && term_selects(term, ns, pod) && domain(n, &term.topology_key).is_some();
        if !here && !first {
            return Err("node(s) didn't match pod affinity rules".into());
        }
    }
    // Topology spread with DoNotSchedule.
    for c in spec.topology_spread_constraints.iter().flatten().filter(|c| c.when_unsatisfiable == "DoNotSchedule") {
        let Some(d) = domain(n, &c.topology_key) else {
            return Err("node(s) didn't match pod topology spread constraints (missing required label)".into());
        };
        let counts = spread_counts(pod, c, all);
        let min = counts.values().copied().min().unwrap_or(0);
        if counts.get(&d).copied().unwrap_or(0) + 1 - min > c.max_skew as i64 {
            return Err("node(s) didn't match pod topology spread constraints".into());
        }
    }
    Ok(())
}

/// Matching pods per domain of the constraint, over nodes the pod may use.
fn spread_counts(
    pod: &Pod,
    c: &k8s_openapi::api::core::v1::TopologySpreadConstraint,
    all: &[NodeInfo],
) -> HashMap<String, i64> {
    let ns = pods::namespace(&pod.metadata);
    let mut counts: HashMap<String, i64> = HashMap::new();
    for o in all.iter().filter(|o| node_affinity_ok(pod, o)) {
        let Some(d) = o.labels.get(&c.topology_key) else { continue };
        let n = o
            .pods
            .iter()
            .filter(|p| {
                pods::namespace(&p.metadata) == ns
                    && pods::is_active(p)
                    && labels::matches(c.label_selector.as_ref(), p.metadata.labels.as_ref())
            })
            .count() as i64;
        *counts.entry(d.clone()).or_default() += n;
    }
    counts
}

/// Higher is better: resources left, balance, preferences.
pub fn score(pod: &Pod, n: &NodeInfo, all: &[NodeInfo]) -> i64 {
    score_with(&Wants::of(pod), n, all)
}

fn score_with(w: &Wants, n: &NodeInfo, all: &[NodeInfo]) -> i64 {
    let (pod, spec) = (w.pod, w.spec);
    let (cpu, mem) = w.requests;
    // The scheduler's defaults for pods that request nothing: 100m and 200Mi.
    let (cpu, mem) = (if cpu == 0 { 100 } else { cpu }, if mem == 0 { 200 << 20 } else { mem });
    let frac = |used: i64, alloc: i64| if alloc <= 0 { 1.0 } else { ((used as f64) / (alloc as f64)).min(1.0) };
    let (fc, fm) = (frac(n.used.0 + cpu, n.alloc.0), frac(n.used.1 + mem, n.alloc.1));
    let least = ((1.0 - fc) + (1.0 - fm)) / 2.0 * 100.0;
    let balanced = (1.0 - (fc - fm).abs()) * 100.0;
    let mut s = least + balanced;
    let no_affinity = k8s_openapi::api::core::v1::Affinity::default();
    let affinity = spec.affinity.as_ref().unwrap_or(&no_affinity);
    for p in affinity
        .node_affinity
        .iter()
        .flat_map(|a| a.preferred_during_scheduling_ignored_during_execution.iter().flatten())
    {
        if node_term_matches(&p.preference, n) {
            s += p.weight as f64;
        }
    }
    let ns = w.ns;
    for pref in affinity
        .pod_anti_affinity
        .iter()
        .flat_map(|a| a.preferred_during_scheduling_ignored_during_execution.iter().flatten())
    {
        let t = &pref.pod_affinity_term;
        if let Some(d) = n.labels.get(&t.topology_key) {
            if all
                .iter()
                .filter(|o| o.labels.get(&t.topology_key) == Some(d))
                .any(|o| o.pods.iter().any(|p| term_selects(t, ns, p)))
            {
                s -= pref.weight as f64;
            }
        }
    }
    for c in spec.topology_spread_constraints.iter().flatten().filter(|c| c.when_unsatisfiable == "ScheduleAnyway") {
        if let Some(d) = n.labels.get(&c.topology_key) {
            s -= 10.0 * spread_counts(pod, c, all).get(d).copied().unwrap_or(0) as f64;
        }
    }
    s.round() as i64
}

/// Kubernetes' summary of why no node fits.
pub fn fit_error(total: usize, reasons: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reasons {
        *counts.entry(r.as_str()).or_default() += 1;
    }
    let mut parts: Vec<String> = counts.into_iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    if parts.is_empty() {
        return format!("0/{total} nodes are available.");
    }
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// Chooses a node for `pod`: Ok(name) or Err(the fit error message).
pub fn choose(pod: &Pod, nodes: &[NodeInfo], turn: usize) -> Result<usize, String> {
    choose_with(pod, nodes, turn, |_| Ok(()))
}

/// `choose` with one more filter (the pod's volumes).
pub fn choose_with(
    pod: &Pod,
    nodes: &[NodeInfo],
    turn: usize,
    extra: impl Fn(&NodeInfo) -> Result<(), String>,
) -> Result<usize, String> {
    let mut reasons = Vec::new();
    let mut best: Vec<(i64, usize)> = Vec::new();
    let existing_anti = nodes.iter().any(|o| o.anti_pods > 0);
    let wants = Wants::of(pod);
    // Like Kubernetes (percentageOfNodesToScore), stop once enough nodes fit: all of
    // them up to 100 nodes, then a share falling from 50 % (at least 100 nodes), starting
    // where the last search left off so every node gets its turn.
    let enough = match nodes.len() {
        n if n <= 100 => n,
        n => (n * (50usize.saturating_sub(n / 125)).max(5) / 100).max(100),
    };
    let start = if nodes.is_empty() { 0 } else { turn % nodes.len() };
    for k in 0..nodes.len() {
        let i = (start + k) % nodes.len();
        let n = &nodes[i];
        match filter_with(&wants, n, nodes, existing_anti).and_then(|()| extra(n)) {
            Ok(()) => best.push((score_with(&wants, n, nodes), i)),
            Err(r) => reasons.push(r),
        }
        if best.len() >= enough {
            break;
        }
    }
    let top = best.iter().map(|(s, _)| *s).max().ok_or_else(|| fit_error(nodes.len(), &reasons))?;
    let tied: Vec<usize> = best.iter().filter(|(s, _)| *s == top).map(|(_, i)| *i).collect();
    Ok(tied[turn % tied.len()])
}

/// Bindings (each with its event) in flight at once.
const BINDS_IN_FLIGHT: usize = 64;

pub struct Scheduler {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub changed: Arc<Notify>,
    pub recorder: Recorder,
    /// Pods bound by us that the watch has not shown bound yet: uid -> node.
    assumed: Mutex<HashMap<String, String>>,
    /// The last failure reported per pod uid, so unchanged failures are not re-reported.
    reported: Mutex<HashMap<String, String>>,
    pub volumes: Volumes,
    /// Pods placed on a node whose claims are being provisioned there: uid -> (node,
    /// since). They are bound once their claims are, or given up after `VOLUME_BIND_TIMEOUT`.
    awaiting: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// When this scheduler first saw each pending pod (uid), for the scheduling latency.
    queued: Mutex<HashMap<String, std::time::Instant>>,
}

impl Scheduler {
    pub fn new(
        client: kube::Client,
        pods: Store<Pod>,
        nodes: Store<Node>,
        volumes: Volumes,
        changed: Arc<Notify>,
    ) -> Scheduler {
        let recorder = Recorder::new(client.clone(), "default-scheduler");
        Scheduler {
            client,
            pods,
            nodes,
            changed,
            recorder,
            assumed: Mutex::default(),
            reported: Mutex::default(),
            volumes,
            awaiting: Mutex::default(),
            queued: Mutex::default(),
        }
    }

    pub async fn run(self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        self.volumes.wait_until_ready().await;
        // Bindings go out while the pass goes on choosing, as Kubernetes' binding cycle
        // runs apart from its scheduling cycle: up to BINDS_IN_FLIGHT at once, and a
        // pass waits only when four times as many are queued.
        let me = Arc::new(self);
        let (binder, mut queue) = tokio::sync::mpsc::channel::<(Arc<Pod>, String)>(4 * BINDS_IN_FLIGHT);
        let bindings = me.clone();
        tokio::spawn(async move {
            futures::stream::poll_fn(|cx| queue.poll_recv(cx))
                .for_each_concurrent(BINDS_IN_FLIGHT, |(p, node)| bindings.bind_one(p, node))
                .await
        });
        let mut turn = 0usize;
        loop {
            turn = turn.wrapping_add(me.pass(turn, &binder).await);
            tokio::select! {
                _ = me.changed.notified() => tokio::time::sleep(Duration::from_millis(20)).await,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    fn pending(p: &Pod) -> bool {
        let spec = p.spec.as_ref();
        spec.is_some_and(|s| s.node_name.as_deref().unwrap_or("").is_empty())
            && spec.and_then(|s| s.scheduler_name.as_deref()).is_none_or(|n| n == "default-scheduler")
            && p.metadata.deletion_timestamp.is_none()
            && pods::phase(p) == "Pending"
    }

    /// One scheduling pass over every pending pod; returns how many were placed. The
    /// placed pods are queued on `binder`, and count as placed (`assumed`) until their
    /// binding shows in the watch or fails.
    async fn pass(&self, turn: usize, binder: &tokio::sync::mpsc::Sender<(Arc<Pod>, String)>) -> usize {
        let started = std::time::Instant::now();
        let all_pods = self.pods.state();
        let mut nodes: Vec<NodeInfo> = self.nodes.state().iter().map(|n| NodeInfo::from_node(n)).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let index: HashMap<String, usize> = nodes.iter().enumerate().map(|(i, n)| (n.name.clone(), i)).collect();
        let mut pending = Vec::new();
        {
            let mut assumed = self.assumed.lock().expect("not poisoned");
            let live: HashSet<&str> = all_pods.iter().filter_map(|p| p.metadata.uid.as_deref()).collect();
            assumed.retain(|uid, _| live.contains(uid.as_str()));
            self.reported.lock().expect("not poisoned").retain(|uid, _| live.contains(uid.as_str()));
            let mut queued = self.queued.lock().expect("not poisoned");
            queued.retain(|uid, _| live.contains(uid.as_str()));
            let now = std::time::Instant::now();
            for p in all_pods.iter().filter(|p| Self::pending(p)) {
                queued.entry(pods::uid(&p.metadata).to_string()).or_insert(now);
            }
            drop(queued);
            for p in &all_pods {
                let uid = pods::uid(&p.metadata);
                let bound = p.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty());
                if bound.is_some() {
                    assumed.remove(uid);
                }
                if pods::is_terminated(p) {
                    continue;
                }
                match bound.or_else(|| assumed.get(uid).cloned()) {
                    Some(n) => {
                        if let Some(i) = index.get(&n) {
                            nodes[*i].add(p.clone());
                        }
                    }
                    None if Self::pending(p) => pending.push(p.clone()),
                    None => {}
                }
            }
        }
        crate::metrics::pending_pods(pending.len());
        pending.sort_by_key(|p| {
            (
                std::cmp::Reverse(p.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)),
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            )
        });
        let mut binds = Vec::new();
        let mut retry = Vec::new();
        {
            // Pods whose claims were being provisioned go once the claims are bound.
            let live: HashMap<&str, &Arc<Pod>> =
                all_pods.iter().filter(|p| Self::pending(p)).map(|p| (pods::uid(&p.metadata), p)).collect();
            let mut awaiting = self.awaiting.lock().expect("not poisoned");
            awaiting.retain(|uid, _| live.contains_key(uid.as_str()));
            let settled: Vec<String> = awaiting
                .iter()
                .filter(|(uid, (_, since))| {
                    self.volumes.all_bound(live[uid.as_str()]) || since.elapsed() > VOLUME_BIND_TIMEOUT
                })
                .map(|(uid, _)| uid.clone())
                .collect();
            for uid in settled {
                let (node, since) = awaiting.remove(&uid).expect("listed");
                let pod = live[uid.as_str()].clone();
                // Bound where the volumes ended up; anything else goes back to the queue.
                let fits = self.volumes.all_bound(&pod)
                    && index
                        .get(&node)
                        .is_some_and(|i| self.volumes.for_pod(&pod).is_ok_and(|v| v.fits(&nodes[*i]).is_ok()));
                if fits {
                    binds.push((pod, node));
                } else {
                    self.assumed.lock().expect("not poisoned").remove(uid.as_str());
                    if since.elapsed() > VOLUME_BIND_TIMEOUT {
                        retry.push(pod);
                    }
                }
            }
        }
        for p in retry {
            // Kubernetes' words for a PreBind that gave up waiting.
            let msg =
                "running PreBind plugin \"VolumeBinding\": binding volumes: context deadline exceeded".to_string();
            self.unschedulable(&p, msg).await;
        }
        let mut placed = binds.len();
        for b in binds {
            let _ = binder.send(b).await;
        }
        let mut failures = Vec::new();
        let mut provisions = Vec::new();
        for (k, p) in pending.into_iter().enumerate() {
            let vols = match self.volumes.for_pod(&p) {
                Ok(v) => v,
                Err(msg) => {
                    failures.push((p, format!("0/{} nodes are available: {msg}.", nodes.len())));
                    continue;
                }
            };
            match choose_with(&p, &nodes, turn + k, |n| vols.fits(n)) {
                Ok(i) => {
                    let node = nodes[i].name.clone();
                    nodes[i].add(p.clone());
                    self.assumed.lock().expect("not poisoned").insert(pods::uid(&p.metadata).into(), node.clone());
                    // Bound as we go (by the binder's tasks), so a long queue starts
                    // running before the whole pass is done.
                    match vols.to_provision.is_empty() {
                        true => {
                            placed += 1;
                            let _ = binder.send((p, node)).await;
                        }
                        false => provisions.push((p, node, vols.to_provision)),
                    }
                }
                Err(msg) => failures.push((p, msg)),
            }
        }
        for (p, node, claims) in provisions {
            match select_node(&self.client, pods::namespace(&p.metadata), &claims, &node).await {
                Ok(()) => {
                    let since = std::time::Instant::now();
                    self.awaiting.lock().expect("not poisoned").insert(pods::uid(&p.metadata).into(), (node, since));
                }
                Err(e) => {
                    tracing::warn!("choosing {node} for the claims of {}: {e}", pods::name(&p.metadata));
                    self.assumed.lock().expect("not poisoned").remove(pods::uid(&p.metadata));
                }
            }
        }
        let unschedulable = failures.len();
        for (p, msg) in failures {
            self.unschedulable(&p, msg).await;
        }
        if placed + unschedulable > 0 {
            tracing::debug!(
                "scheduling pass: {placed} placed, {unschedulable} unschedulable, of {} pods on {} nodes, in {:?}",
                all_pods.len(),
                nodes.len(),
                started.elapsed()
            );
        }
        placed
    }

    /// Binds a pod to its chosen node, then records its Scheduled event (in the same
    /// turn: written one by one after a batch of binds, the events alone took seconds
    /// per 256 pods under load).
    async fn bind_one(&self, p: Arc<Pod>, node: String) {
        match self.bind(&p, &node).await {
            Ok(()) => {
                crate::metrics::schedule_attempt("scheduled");
                if let Some(t) = self.queued.lock().expect("not poisoned").remove(pods::uid(&p.metadata)) {
                    crate::metrics::pod_scheduled(t.elapsed());
                }
                self.reported.lock().expect("not poisoned").remove(pods::uid(&p.metadata));
                let msg = format!(
                    "Successfully assigned {}/{} to {node}",
                    pods::namespace(&p.metadata),
                    pods::name(&p.metadata)
                );
                self.recorder.record(p.as_ref(), "Normal", "Scheduled", msg).await;
            }
            Err(e) => {
                crate::metrics::schedule_attempt("error");
                tracing::warn!("binding {} to {node}: {e}", pods::name(&p.metadata));
                self.assumed.lock().expect("not poisoned").remove(pods::uid(&p.metadata));
            }
        }
    }

    async fn bind(&self, p: &Pod, node: &str) -> kube::Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), pods::namespace(&p.metadata));
        let body = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pods::name(&p.metadata), "uid": pods::uid(&p.metadata)}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        let _: serde_json::Value =
            api.create_subresource("binding", pods::name(&p.metadata), &PostParams::default(), &body).await?;
        Ok(())
    }

    async fn unschedulable(&self, p: &Pod, msg: String) {
        crate::metrics::schedule_attempt("unschedulable");
        let uid = pods::uid(&p.metadata).to_string();
        if self.reported.lock().expect("not poisoned").get(&uid) == Some(&msg) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), pods::namespace(&p.metadata));
        let mut conds: Vec<_> = p.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
        conds.retain(|c| c.type_ != "PodScheduled");
        conds.push(k8s_openapi::api::core::v1::PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(msg.clone()),
            last_transition_time: Some(Time(Timestamp::now())),
            ..Default::default()
        });
        let patch = json!({"status": {"conditions": conds}});
        if api.patch_status(pods::name(&p.metadata), &PatchParams::default(), &Patch::Merge(&patch)).await.is_ok() {
            self.recorder.record(p, "Warning", "FailedScheduling", msg.clone()).await;
            self.reported.lock().expect("not poisoned").insert(uid, msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, labels: &[(&str, &str)]) -> NodeInfo {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
            "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "3"}, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        NodeInfo::from_node(&n)
    }

    fn pod(v: serde_json::Value) -> Arc<Pod> {
        let mut base = json!({"metadata": {"name": "p", "namespace": "default", "labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
        for (k, val) in v.as_object().unwrap() {
            base["spec"][k] = val.clone();
        }
        Arc::new(serde_json::from_value(base).unwrap())
    }

    #[test]
    fn resources_and_selectors_filter_nodes() {
        let nodes = vec![node("a", "1", &[("zone", "x")]), node("b", "4", &[("zone", "y")])];
        let big = pod(json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "2"}}}]}));
        assert_eq!(choose(&big, &nodes, 0), Ok(1));
        let huge = pod(json!({"containers": [{"name": "c", "image": "i", "resources": {"requests": {"cpu": "8"}}}]}));
        assert_eq!(choose(&huge, &nodes, 0), Err("0/2 nodes are available: 2 Insufficient cpu.".into()));
        let picky = pod(json!({"nodeSelector": {"zone": "x"}}));
        assert_eq!(choose(&picky, &nodes, 0), Ok(0));
        let mut full = nodes.clone();
        for _ in 0..3 {
            full[0].add(pod(json!({})));
        }
        assert_eq!(
            choose(&picky, &full, 0),
            Err("0/2 nodes are available: 1 Too many pods, 1 node(s) didn't match Pod's node affinity/selector.".into())
        );
    }

    #[test]
    fn taints_and_anti_affinity() {
        let mut nodes = vec![
            node("a", "4", &[("kubernetes.io/hostname", "a")]),
            node("b", "4", &[("kubernetes.io/hostname", "b")]),
        ];
        nodes[1].taints.push(Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        });
        let plain = pod(json!({}));
        assert_eq!(choose(&plain, &nodes, 1), Ok(0));
        let tolerant = pod(
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
        );
        assert!(choose(&tolerant, &nodes, 0).is_ok());
        nodes[0].add(pod(json!({})));
        let anti = pod(json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "a"}}, "topologyKey": "kubernetes.io/hostname"}]}},
            "tolerations": [{"operator": "Exists"}]}));
        assert_eq!(choose(&anti, &nodes, 0), Ok(1));
    }

    #[test]
    fn spread_constraints_balance_zones() {
        let mut nodes = vec![node("a", "4", &[("zone", "x")]), node("b", "4", &[("zone", "y")])];
        nodes[0].add(pod(json!({})));
        let spread = pod(
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "a"}}}]}),
        );
        assert_eq!(choose(&spread, &nodes, 0), Ok(1));
        assert!(filter(&spread, &nodes[0], &nodes).is_err());
    }
}
