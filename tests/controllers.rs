//! The control plane end to end: a store, the API server, `skiff controller-manager`,
//! `skiff scheduler` and simulated nodes (`skiff agent --runtime fake`), driven by the
//! real kubectl. Timings are shortened with flags (node grace periods, start delays)
//! so each test takes seconds; nothing here asserts on speed.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::apiserver::{Api, KUBECTL_132};
use crate::common::*;

pub(crate) struct Plane {
    pub(crate) api: Api,
    procs: Vec<(String, Child)>,
}

impl Drop for Plane {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const MANAGER: &[&str] = &[
    "--node-monitor-grace-period",
    "4s",
    "--node-monitor-period",
    "500ms",
    "--leader-elect-lease-duration",
    "2s",
    "--horizontal-pod-autoscaler-sync-period",
    "500ms",
    "--horizontal-pod-autoscaler-downscale-stabilization",
    "2s",
];

impl Plane {
    /// API server, controller-manager, scheduler, and one agent with `nodes` nodes named `a-N`.
    fn start(nodes: usize) -> Plane {
        Plane::start_with(nodes, &[])
    }

    /// The same, with more flags for the agent.
    fn start_with(nodes: usize, agent_flags: &[&str]) -> Plane {
        let mut p = Plane::control_plane();
        p.agent("a", nodes, agent_flags);
        p.wait_for("the nodes to be Ready", Duration::from_secs(20), |p| p.ready_nodes() >= nodes);
        p
    }

    /// API server, controller-manager and scheduler; no nodes.
    pub(crate) fn control_plane() -> Plane {
        Plane::control_plane_on(Cluster::start(1))
    }

    /// API server (on `store`), controller-manager and scheduler; no nodes.
    pub(crate) fn control_plane_on(store: Cluster) -> Plane {
        let api = Api::start_on(
            store,
            &[
                "--default-unreachable-toleration-seconds",
                "2",
                "--default-not-ready-toleration-seconds",
                "2",
                "--node-name",
                "real",
            ],
        );
        let mut p = Plane { api, procs: Vec::new() };
        p.spawn("controller-manager", &[&["controller-manager"], MANAGER].concat());
        p.spawn("scheduler", &["scheduler", "--leader-elect-lease-duration", "2s"]);
        p
    }

    pub(crate) fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.api.dir.path().join(format!("{name}.log")))
            .unwrap();
        // Each component with its own identity and role, as `skiff up` runs them.
        let identity = match name {
            n if n.starts_with("controller-manager") => "controller-manager",
            n if n.starts_with("scheduler") => "scheduler",
            // The real node of tests/node.rs is `real` (the API server's --node-name);
            // simulated ones share one identity, which the Node authorizer leaves alone.
            "agent" => "node",
            n if n.starts_with("agent") => "simulated-nodes",
            _ => "admin",
        };
        let child = Command::new(skiff_bin())
            .args(args)
            .arg("--kubeconfig")
            .arg(self.api.dir.path().join(format!("api/{identity}.kubeconfig")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push((name.to_string(), child));
    }

    fn agent(&mut self, prefix: &str, nodes: usize, extra: &[&str]) {
        let n = nodes.to_string();
        let mut args = vec!["agent", "--runtime", "fake", "--nodes", &n, "--node-name-prefix", prefix];
        args.extend(["--start-delay", "300ms", "--node-lease-renew-interval", "500ms"]);
        // The agent syncs a pod when its object or containers change; its periodic pass
        // over all pods is a safety net. An hour here makes every test fail that waits
        // for the safety net instead (usage reports, which are periodic, need less).
        if !extra.contains(&"--sync-period") {
            args.extend(["--sync-period", "1h"]);
        }
        let root = self.api.dir.path().join("local-path").to_string_lossy().into_owned();
        args.extend(["--local-path-root", &root]);
        args.extend(extra);
        self.spawn(&format!("agent-{prefix}"), &args);
    }

    pub(crate) fn kill(&mut self, name: &str) {
        for (n, c) in &mut self.procs {
            if n == name {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.procs.retain(|(n, _)| n != name);
    }

    pub(crate) fn logs(&self) -> String {
        let mut out = String::new();
        for (n, _) in &self.procs {
            let l = std::fs::read_to_string(self.api.dir.path().join(format!("{n}.log"))).unwrap_or_default();
            let tail: Vec<&str> = l.lines().rev().take(15).collect();
            out += &format!("--- {n}\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        out
    }

    pub(crate) fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&Plane) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}\n{}", self.state());
    }

    /// What a failing test prints: component logs first (CI keeps the start of long
    /// output), then objects, node taints and lease renewals, pod conditions, events.
    pub(crate) fn state(&self) -> String {
        let run =
            |args: &[&str]| text(&self.api.kubectl_with("/usr/lib/google-cloud-sdk/bin/kubectl.1.32", args, None));
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.logs(),
            run(&["get", "nodes,deploy,rs,pods", "-o", "wide"]),
            run(&["get", "nodes", "-o", "custom-columns=NAME:.metadata.name,TAINTS:.spec.taints[*].key,READY:.status.conditions[?(@.type=='Ready')].status"]),
            run(&["get", "pods", "-o", "custom-columns=NAME:.metadata.name,SCHEDULED:.status.conditions[?(@.type=='PodScheduled')].message,WAITING:.status.containerStatuses[*].state.waiting.message"]),
            run(&["get", "leases", "-n", "kube-node-lease", "-o", "custom-columns=NAME:.metadata.name,RENEWED:.spec.renewTime"]),
            run(&["get", "events", "--sort-by=.lastTimestamp"]),
        )
    }

    /// kubectl; on failure the test fails with the cluster's state and component logs.
    pub(crate) fn k(&self, args: &[&str]) -> String {
        let o = self.api.kubectl_with("/usr/lib/google-cloud-sdk/bin/kubectl.1.32", args, None);
        if !o.status.success() {
            panic!("kubectl {args:?} failed:\n{}\nstate:\n{}", text(&o), self.state());
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        self.api.k_json(args)
    }

    pub(crate) fn ready_nodes(&self) -> usize {
        let nodes = self.json(&["get", "nodes"]);
        nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| {
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count()
    }

    /// Pods matching `selector` that are not being deleted.
    pub(crate) fn live_pods(&self, selector: &str) -> Vec<Value> {
        let pods = self.json(&["get", "pods", "-l", selector]);
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect()
    }

    fn deploy_available(&self, name: &str) -> i64 {
        self.json(&["get", "deploy", name])["status"]["availableReplicas"].as_i64().unwrap_or(0)
    }
}

fn is_ready(p: &Value) -> bool {
    p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A watch on the plain-HTTP port that records events until stopped.
struct Watch {
    stream: TcpStream,
    events: Arc<Mutex<Vec<Value>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Watch {
    fn start(port: u16, path: &str) -> Watch {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let (reader, sink) = (s.try_clone().unwrap(), events.clone());
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v.get("type").is_some() {
                        sink.lock().unwrap().push(v);
                    }
                }
            }
        });
        Watch { stream: s, events, thread }
    }

    fn stop(self) -> Vec<Value> {
        let _ = self.stream.shutdown(Shutdown::Both);
        let _ = self.thread.join();
        Arc::try_unwrap(self.events).unwrap().into_inner().unwrap()
    }
}

fn pod_yaml_patch(image: &str) -> String {
    json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": image}]}}}}).to_string()
}

#[test]
fn deployment_scales_rolls_out_without_outage_and_rolls_back() {
    let mut p = Plane::start(3);
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nginx-deployment.yaml")).unwrap();
    p.api.k_in(&["apply", "-f", "-"], &manifest);
    let out = p.k(&["rollout", "status", "deploy/nginx", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let get = p.k(&["get", "deploy", "nginx"]);
    assert!(get.contains("nginx   3/3     3            3"), "{get}");
    let pods = p.live_pods("app=nginx");
    assert_eq!(pods.len(), 3);
    for pod in &pods {
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert!(pod["spec"]["nodeName"].as_str().unwrap().starts_with("a-"));
        assert_eq!(pod["status"]["phase"], "Running");
        assert!(pod["metadata"]["labels"]["pod-template-hash"].is_string());
    }

    // Scale to 10 and back: exactly that many pods.
    p.k(&["scale", "deploy", "nginx", "--replicas=10"]);
    p.wait_for("10 available", Duration::from_secs(30), |p| p.deploy_available("nginx") == 10);
    assert_eq!(p.live_pods("app=nginx").len(), 10);
    p.k(&["scale", "deploy", "nginx", "--replicas=3"]);
    p.wait_for("3 pods", Duration::from_secs(30), |p| {
        p.live_pods("app=nginx").len() == 3 && p.deploy_available("nginx") == 3
    });

    // A rolling update watched pod by pod: with 3 replicas (maxSurge 1, maxUnavailable 0)
    // never fewer than 3 ready pods, never more than 4 pods.
    let list = p.api.raw_json("GET", "/api/v1/namespaces/default/pods?labelSelector=app%3Dnginx", None).1;
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let w = Watch::start(
        p.api.http_port(),
        &format!("/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dnginx&resourceVersion={rv}"),
    );
    p.k(&["set", "image", "deploy/nginx", "nginx=nginx:1.26"]);
    let out = p.k(&["rollout", "status", "deploy/nginx", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    let events = w.stop();
    let mut state: std::collections::BTreeMap<String, (bool, bool)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["metadata"]["name"].as_str().unwrap().to_string(), (is_ready(p), false)))
        .collect();
    let (mut min_ready, mut max_pods) = (usize::MAX, 0);
    for e in &events {
        let o = &e["object"];
        let name = o["metadata"]["name"].as_str().unwrap().to_string();
        match e["type"].as_str().unwrap() {
            "DELETED" => {
                state.remove(&name);
            }
            _ => {
                state.insert(name, (is_ready(o), o["metadata"]["deletionTimestamp"].is_string()));
            }
        }
        min_ready = min_ready.min(state.values().filter(|(r, gone)| *r && !gone).count());
        max_pods = max_pods.max(state.values().filter(|(_, gone)| !gone).count());
    }
    assert!(events.len() > 6, "the rollout was watched: {events:?}");
    assert_eq!(min_ready, 3, "availability dropped during the rollout");
    assert_eq!(max_pods, 4, "more pods than replicas + maxSurge");
    let images: Vec<Value> =
        p.live_pods("app=nginx").iter().map(|p| p["spec"]["containers"][0]["image"].clone()).collect();
    assert_eq!(images, vec![json!("nginx:1.26"); 3]);

    // History and undo.
    let hist = p.k(&["rollout", "history", "deploy/nginx"]);
    assert!(hist.contains("1 ") && hist.contains("2 "), "{hist}");
    p.k(&["rollout", "undo", "deploy/nginx"]);
    p.k(&["rollout", "status", "deploy/nginx", "--timeout=60s"]);
    let d = p.json(&["get", "deploy", "nginx"]);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.25");
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "3");
    let hist = p.k(&["rollout", "history", "deploy/nginx"]);
    assert!(hist.contains("2 ") && hist.contains("3 ") && !hist.contains("\n1 "), "revision 1 became 3: {hist}");
    assert_eq!(p.json(&["get", "rs"])["items"].as_array().unwrap().len(), 2, "one ReplicaSet per template");

    // Paused: template changes wait for resume. Then a restart rolls again.
    p.k(&["rollout", "pause", "deploy/nginx"]);
    p.k(&["patch", "deploy", "nginx", "-p", &pod_yaml_patch("nginx:1.27")]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(p.json(&["get", "rs"])["items"].as_array().unwrap().len(), 2, "no rollout while paused");
    p.k(&["rollout", "resume", "deploy/nginx"]);
    p.k(&["rollout", "status", "deploy/nginx", "--timeout=60s"]);
    p.k(&["rollout", "restart", "deploy/nginx"]);
    p.k(&["rollout", "status", "deploy/nginx", "--timeout=60s"]);
    assert_eq!(p.json(&["get", "rs"])["items"].as_array().unwrap().len(), 4);
    let d = p.json(&["get", "deploy", "nginx"]);
    let cond =
        |t: &str| d["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == t).cloned().unwrap();
    assert_eq!(cond("Available")["status"], "True");
    assert_eq!(cond("Progressing")["reason"], "NewReplicaSetAvailable");
    let events = p.k(&["get", "events", "--field-selector", "involvedObject.name=nginx", "--sort-by=.lastTimestamp"]);
    assert!(events.contains("ScalingReplicaSet"), "{events}");

    // Idempotent: a fresh controller-manager finds nothing to change.
    let snapshot = |p: &Plane| -> std::collections::BTreeMap<String, Value> {
        let mut v = std::collections::BTreeMap::new();
        for kind in ["deploy", "rs", "pods", "endpoints"] {
            for o in p.json(&["get", kind])["items"].as_array().unwrap() {
                v.insert(format!("{kind}/{}", o["metadata"]["name"].as_str().unwrap()), o.clone());
            }
        }
        v
    };
    let versions = |s: &std::collections::BTreeMap<String, Value>| -> Vec<(String, Value)> {
        s.iter().map(|(k, o)| (k.clone(), o["metadata"]["resourceVersion"].clone())).collect()
    };
    // First let the running manager settle (status updates after the rollback): nothing
    // changes for three seconds in a row (a loaded machine delays the last writes).
    let mut before = snapshot(&p);
    let mut quiet = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        let now = snapshot(&p);
        quiet = if versions(&now) == versions(&before) { quiet + 1 } else { 0 };
        before = now;
        if quiet == 3 {
            break;
        }
    }
    p.kill("controller-manager");
    p.spawn("controller-manager", &[&["controller-manager"], MANAGER].concat());
    std::thread::sleep(Duration::from_secs(5));
    let after = snapshot(&p);
    let changed: Vec<String> = after
        .iter()
        .filter(|(k, o)| before.get(*k) != Some(*o))
        .map(|(k, o)| format!("{k}\n  before: {}\n  after:  {o}", before.get(k).cloned().unwrap_or_default()))
        .collect();
    assert_eq!(versions(&after), versions(&before), "reconciling again changed objects:\n{}", changed.join("\n"));
}

#[test]
fn services_find_ready_pods_and_namespaces_empty_on_deletion() {
    let p = Plane::start(2);
    p.k(&["create", "deployment", "web", "--image=nginx", "--replicas=3", "--port=80"]);
    p.k(&["expose", "deployment", "web", "--port=8080", "--target-port=80"]);
    let addresses = |p: &Plane| -> (usize, usize) {
        let ep = p.json(&["get", "endpoints", "web"]);
        let n = |k: &str| {
            ep["subsets"].as_array().into_iter().flatten().map(|s| s[k].as_array().map_or(0, |a| a.len())).sum()
        };
        (n("addresses"), n("notReadyAddresses"))
    };
    p.wait_for("3 ready endpoints", Duration::from_secs(30), |p| addresses(p) == (3, 0));
    let ep = p.json(&["get", "endpoints", "web"]);
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 80, "the target port");
    let slices = p.json(&["get", "endpointslices", "-l", "kubernetes.io/service-name=web"]);
    assert_eq!(slices["items"][0]["endpoints"].as_array().unwrap().len(), 3);

    // A pod that turns unready moves to notReadyAddresses, and back.
    let pod = p.live_pods("app=web")[0]["metadata"]["name"].as_str().unwrap().to_string();
    p.k(&["annotate", "pod", &pod, "fake.skiff.io/ready=false"]);
    p.wait_for("one unready endpoint", Duration::from_secs(20), |p| addresses(p) == (2, 1));
    p.k(&["annotate", "pod", &pod, "fake.skiff.io/ready-"]);
    p.wait_for("3 ready endpoints again", Duration::from_secs(20), |p| addresses(p) == (3, 0));
    // A deleted pod leaves the endpoints; its replacement joins.
    p.k(&["delete", "pod", &pod]);
    p.wait_for("the replacement", Duration::from_secs(30), |p| {
        let ep = p.json(&["get", "endpoints", "web"]);
        let names: Vec<String> = ep["subsets"][0]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a["targetRef"]["name"].as_str().unwrap().to_string())
            .collect();
        names.len() == 3 && !names.contains(&pod)
    });

    // Deleting a namespace deletes what is in it, then the namespace.
    p.k(&["create", "namespace", "scratch"]);
    p.k(&["create", "deployment", "tmp", "--image=nginx", "--replicas=2", "-n", "scratch"]);
    p.k(&["create", "configmap", "cfg", "--from-literal=a=b", "-n", "scratch"]);
    p.wait_for("pods in scratch", Duration::from_secs(30), |p| {
        p.json(&["get", "pods", "-n", "scratch"])["items"].as_array().unwrap().len() == 2
    });
    p.k(&["delete", "namespace", "scratch", "--timeout=60s"]);
    let o = p.api.kubectl_with("/usr/lib/google-cloud-sdk/bin/kubectl.1.32", &["get", "namespace", "scratch"], None);
    assert!(!o.status.success());
}

#[test]
fn cascading_deletion_background_foreground_and_orphan() {
    let p = Plane::start(2);
    for name in ["bg", "fg", "orphan"] {
        p.k(&["create", "deployment", name, "--image=nginx", "--replicas=2"]);
    }
    p.wait_for("6 running pods", Duration::from_secs(30), |p| {
        p.json(&["get", "pods"])["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["status"]["phase"] == "Running")
            .count()
            == 6
    });
    let rs_of =
        |p: &Plane, app: &str| p.json(&["get", "rs", "-l", &format!("app={app}")])["items"].as_array().unwrap().clone();

    // Background: the Deployment goes at once, its ReplicaSet and pods after.
    p.k(&["delete", "deploy", "bg"]);
    p.wait_for("bg's pods to go", Duration::from_secs(30), |p| {
        rs_of(p, "bg").is_empty() && p.json(&["get", "pods", "-l", "app=bg"])["items"].as_array().unwrap().is_empty()
    });

    // Foreground: kubectl returns once dependents and then the Deployment are gone.
    p.k(&["delete", "deploy", "fg", "--cascade=foreground", "--timeout=60s"]);
    assert!(rs_of(&p, "fg").is_empty());
    assert!(
        p.json(&["get", "pods", "-l", "app=fg"])["items"].as_array().unwrap().is_empty(),
        "pods went before their owner"
    );

    // Orphan: the ReplicaSet and pods stay, without the owner reference.
    p.k(&["delete", "deploy", "orphan", "--cascade=orphan", "--timeout=60s"]);
    let rss = rs_of(&p, "orphan");
    assert_eq!(rss.len(), 1);
    assert!(rss[0]["metadata"]["ownerReferences"].as_array().is_none_or(|r| r.is_empty()), "{}", rss[0]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(p.live_pods("app=orphan").len(), 2, "orphaned pods keep running");
}

#[test]
fn scheduler_filters_reports_and_retries() {
    let mut p = Plane::start(2);
    let pod = |name: &str, extra: Value| {
        let mut spec =
            json!({"containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "6"}}}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}).to_string()
    };
    // 6 CPUs fit no 4-CPU node: Unschedulable, with Kubernetes' message and event.
    p.api.k_in(&["create", "-f", "-"], &pod("big", json!({})));
    p.wait_for("PodScheduled=False", Duration::from_secs(20), |p| {
        let c = p.json(&["get", "pod", "big"])["status"]["conditions"].clone();
        c.as_array().into_iter().flatten().any(|c| c["type"] == "PodScheduled" && c["status"] == "False")
    });
    let pod_json = p.json(&["get", "pod", "big"]);
    let cond = pod_json["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodScheduled")
        .unwrap()
        .clone();
    assert_eq!(cond["reason"], "Unschedulable");
    assert_eq!(cond["message"], "0/2 nodes are available: 2 Insufficient cpu.");
    let described = p.k(&["describe", "pod", "big"]);
    assert!(described.contains("FailedScheduling") && described.contains("2 Insufficient cpu"), "{described}");

    // A bigger node joins: the pod is retried and lands there.
    p.agent("big", 1, &["--cpu", "16"]);
    p.wait_for("big to be scheduled", Duration::from_secs(30), |p| {
        p.json(&["get", "pod", "big"])["spec"]["nodeName"] == "big-0"
    });

    // nodeSelector and taints.
    p.k(&["taint", "node", "a-0", "dedicated=db:NoSchedule"]);
    p.api.k_in(&["create", "-f", "-"], &pod("zone", json!({"nodeSelector": {"kubernetes.io/hostname": "a-0"}, "containers": [{"name": "c", "image": "busybox"}]})));
    p.api.k_in(
        &["create", "-f", "-"],
        &pod(
            "tolerant",
            json!({"nodeSelector": {"kubernetes.io/hostname": "a-0"}, "containers": [{"name": "c", "image": "busybox"}],
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
        ),
    );
    p.wait_for("tolerant on a-0", Duration::from_secs(20), |p| {
        p.json(&["get", "pod", "tolerant"])["spec"]["nodeName"] == "a-0"
    });
    p.wait_for("zone unschedulable", Duration::from_secs(20), |p| {
        let c = p.json(&["get", "pod", "zone"])["status"]["conditions"].clone();
        c.as_array().into_iter().flatten().any(|c| {
            c["type"] == "PodScheduled"
                && c["message"].as_str().is_some_and(|m| {
                    m.contains("1 node(s) had untolerated taint {dedicated: db}")
                        && m.contains("node affinity/selector")
                })
        })
    });
}

#[test]
fn pods_of_a_dead_node_are_replaced_and_a_standby_manager_takes_over() {
    let mut p = Plane::start(2);
    p.spawn("controller-manager-2", &[&["controller-manager"], MANAGER].concat());
    p.k(&["create", "deployment", "web", "--image=nginx", "--replicas=4"]);
    p.wait_for("4 available", Duration::from_secs(30), |p| p.deploy_available("web") == 4);
    p.agent("b", 2, &[]);
    p.wait_for("b nodes", Duration::from_secs(20), |p| p.ready_nodes() == 4);

    // The leading controller-manager dies mid-rollout; the standby finishes it.
    let lease = p.json(&["get", "lease", "-n", "kube-system", "kube-controller-manager"]);
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_string();
    p.k(&["set", "image", "deploy/web", "nginx=nginx:2"]);
    let leader = p
        .procs
        .iter()
        .find(|(n, c)| n.starts_with("controller-manager") && holder.ends_with(&format!("_{}", c.id())))
        .map(|(n, _)| n.clone());
    p.kill(&leader.expect("the lease names a running controller-manager"));
    let out = p.k(&["rollout", "status", "deploy/web", "--timeout=90s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let lease = p.json(&["get", "lease", "-n", "kube-system", "kube-controller-manager"]);
    assert_ne!(lease["spec"]["holderIdentity"].as_str().unwrap(), holder);

    // Node agent a dies: its nodes go NotReady, get the unreachable taint, and their pods
    // are evicted after the 2 s toleration and replaced on b's nodes.
    p.kill("agent-a");
    p.wait_for("a-0 unreachable", Duration::from_secs(30), |p| {
        let n = p.json(&["get", "node", "a-0"]);
        n["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute")
    });
    assert!(p.k(&["get", "node", "a-0"]).contains("NotReady"));
    p.wait_for("4 pods on b", Duration::from_secs(60), |p| {
        let live = p.live_pods("app=web");
        live.len() == 4
            && live.iter().all(|x| x["spec"]["nodeName"].as_str().is_some_and(|n| n.starts_with("b-")) && is_ready(x))
    });
    p.wait_for("4 available again", Duration::from_secs(30), |p| p.deploy_available("web") == 4);
}

#[test]
fn statefulset_orders_pods_keeps_claims_and_rolls_from_the_top() {
    let p = Plane::start(2);
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/web-statefulset.yaml")).unwrap();
    p.api.k_in(&["apply", "-f", "-"], &manifest);
    let out = p.k(&["rollout", "status", "sts/web", "--timeout=60s"]);
    assert!(out.contains("roll out complete"), "{out}");
    let sts = p.json(&["get", "sts", "web"]);
    let replicas = sts["spec"]["replicas"].as_i64().unwrap() as usize;
    let selector: Vec<String> = sts["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    let selector = selector.join(",");
    let pods_by_name = |p: &Plane| -> std::collections::BTreeMap<String, Value> {
        p.live_pods(&selector).into_iter().map(|x| (x["metadata"]["name"].as_str().unwrap().to_string(), x)).collect()
    };
    let pods = pods_by_name(&p);
    let names: Vec<&String> = pods.keys().collect();
    let want: Vec<String> = (0..replicas).map(|i| format!("web-{i}")).collect();
    assert_eq!(names, want.iter().collect::<Vec<_>>(), "stable names web-0..");
    // Ordered: each pod was created once the one before it was Ready.
    for i in 1..replicas {
        let created = pods[&format!("web-{i}")]["metadata"]["creationTimestamp"].as_str().unwrap().to_string();
        let prev = &pods[&format!("web-{}", i - 1)];
        let ready_at = prev["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap()
            ["lastTransitionTime"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(created >= ready_at, "web-{i} created at {created} before web-{} was ready at {ready_at}", i - 1);
    }
    for (name, pod) in &pods {
        assert_eq!(pod["spec"]["hostname"], json!(name));
        assert_eq!(pod["spec"]["subdomain"], sts["spec"]["serviceName"]);
        let claim = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
            .unwrap()
            .to_string();
        assert!(claim.ends_with(name.as_str()), "{claim}");
        // Each claim got the default class and a volume made on its pod's node.
        let pvc = p.json(&["get", "pvc", &claim]);
        assert_eq!((&pvc["spec"]["storageClassName"], &pvc["status"]["phase"]), (&json!("standard"), &json!("Bound")));
        let pv = p.json(&["get", "pv", pvc["spec"]["volumeName"].as_str().unwrap()]);
        assert_eq!(pv["status"]["phase"], "Bound");
        assert_eq!(pv["spec"]["claimRef"]["name"], json!(claim));
        let node = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0];
        assert_eq!(node, &pod["spec"]["nodeName"], "the volume is on the pod's node");
        let dir = pv["spec"]["hostPath"]["path"].as_str().unwrap();
        assert!(
            dir.starts_with(p.api.dir.path().join("local-path").to_str().unwrap()) && Path::new(dir).is_dir(),
            "{dir}"
        );
    }

    // A rolling update replaces pods from the highest ordinal down.
    let container = sts["spec"]["template"]["spec"]["containers"][0]["name"].as_str().unwrap().to_string();
    p.k(&["set", "image", "sts/web", &format!("{container}=nginx:next")]);
    let out = p.k(&["rollout", "status", "sts/web", "--timeout=60s"]);
    assert!(out.contains("roll out complete"), "{out}");
    let pods = pods_by_name(&p);
    for pod in pods.values() {
        assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:next");
    }
    let created: Vec<String> = (0..replicas)
        .map(|i| pods[&format!("web-{i}")]["metadata"]["creationTimestamp"].as_str().unwrap().to_string())
        .collect();
    assert!(created.windows(2).all(|w| w[0] >= w[1]), "replaced from the top: {created:?}");
    let hist = p.k(&["rollout", "history", "sts/web"]);
    assert!(hist.contains("1 ") && hist.contains("2 "), "{hist}");

    // Scaled down and deleted, the claims stay.
    p.k(&["scale", "sts", "web", "--replicas=1"]);
    p.wait_for("one pod", Duration::from_secs(30), |p| pods_by_name(p).len() == 1);
    assert!(pods_by_name(&p).contains_key("web-0"));
    p.k(&["delete", "sts", "web", "--timeout=60s"]);
    p.wait_for("pods gone", Duration::from_secs(30), |p| pods_by_name(p).is_empty());
    let claims = p.json(&["get", "pvc"]);
    assert_eq!(claims["items"].as_array().unwrap().len(), replicas, "claims are retained");
    // Recreated, web-0 finds its old claim and so its old volume, on the same node.
    let pv0 = p.json(&["get", "pvc", "www-web-0"])["spec"]["volumeName"].clone();
    p.api.k_in(&["apply", "-f", "-"], &manifest);
    let out = p.k(&["rollout", "status", "sts/web", "--timeout=60s"]);
    assert!(out.contains("roll out complete"), "{out}");
    let pv = p.json(&["get", "pv", pv0.as_str().unwrap()]);
    let node = &pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0];
    assert_eq!(&pods_by_name(&p)["web-0"]["spec"]["nodeName"], node, "web-0 follows its volume");
    // A deleted claim releases its volume, which goes with its directory (reclaim Delete).
    p.k(&["delete", "sts", "web", "--timeout=60s"]);
    p.wait_for("pods gone", Duration::from_secs(30), |p| pods_by_name(p).is_empty());
    let dir = pv["spec"]["hostPath"]["path"].as_str().unwrap().to_string();
    p.k(&["delete", "pvc", "www-web-0"]);
    p.wait_for("the volume to go", Duration::from_secs(30), |p| {
        p.json(&["get", "pv"])["items"].as_array().unwrap().iter().all(|v| v["metadata"]["name"] != pv0)
    });
    assert!(!Path::new(&dir).exists(), "{dir} was removed");
}

#[test]
fn jobs_complete_or_give_up() {
    let p = Plane::start(2);
    let job = |name: &str, completions: i32, parallelism: i32, exit: i32| {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"completions": completions, "parallelism": parallelism, "backoffLimit": 2,
                "template": {"metadata": {"annotations": {"fake.skiff.io/run-seconds": "1", "fake.skiff.io/exit-code": exit.to_string()}},
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}})
        .to_string()
    };
    p.api.k_in(&["create", "-f", "-"], &job("ok", 3, 2, 0));
    p.api.k_in(&["create", "-f", "-"], &job("bad", 1, 1, 1));
    // The server generated the selector from the Job's uid.
    let j = p.json(&["get", "job", "ok"]);
    let uid = j["metadata"]["uid"].as_str().unwrap();
    assert_eq!(j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"], uid);
    p.k(&["wait", "--for=condition=complete", "job/ok", "--timeout=60s"]);
    let j = p.json(&["get", "job", "ok"]);
    assert_eq!(j["status"]["succeeded"], 3);
    assert!(j["status"]["completionTime"].is_string());
    let pods = p.json(&["get", "pods", "-l", "job-name=ok"]);
    assert_eq!(pods["items"].as_array().unwrap().len(), 3, "exactly completions pods, kept after success");
    let get = p.k(&["get", "job", "ok"]);
    assert!(get.contains("Complete") && get.contains("3/3"), "{get}");

    p.k(&["wait", "--for=condition=failed", "job/bad", "--timeout=60s"]);
    let j = p.json(&["get", "job", "bad"]);
    assert_eq!(j["status"]["failed"], 3, "backoffLimit 2 allows 3 tries");
    let failed = j["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Failed").unwrap().clone();
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
}

#[test]
fn daemonsets_run_one_pod_per_fitting_node() {
    let mut p = Plane::start(2);
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}}}})
    .to_string();
    p.api.k_in(&["create", "-f", "-"], &ds);
    let nodes_of = |p: &Plane| -> Vec<String> {
        let mut n: Vec<String> =
            p.live_pods("app=agent").iter().filter_map(|x| x["spec"]["nodeName"].as_str().map(String::from)).collect();
        n.sort();
        n
    };
    p.k(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert_eq!(nodes_of(&p), ["a-0", "a-1"]);
    // A new node gets one; a cordoned node keeps its pod (daemon pods tolerate unschedulable).
    p.agent("b", 1, &[]);
    p.wait_for("a pod on b-0", Duration::from_secs(30), |p| nodes_of(p) == ["a-0", "a-1", "b-0"]);
    p.k(&["cordon", "a-1"]);
    // A rolling update replaces each node's pod.
    p.k(&["set", "image", "ds/agent", "c=busybox:2"]);
    p.k(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    let live = p.live_pods("app=agent");
    assert_eq!(live.len(), 3);
    assert!(live.iter().all(|x| x["spec"]["containers"][0]["image"] == "busybox:2"), "{live:?}");
    assert_eq!(nodes_of(&p), ["a-0", "a-1", "b-0"]);
    // Each template is a revision; undo goes back to the first.
    let hist = p.k(&["rollout", "history", "ds/agent"]);
    assert!(hist.contains("1         <none>") && hist.contains("2         <none>"), "{hist}");
    let rev1 = p.k(&["rollout", "history", "ds/agent", "--revision=1"]);
    assert!(rev1.contains("busybox:1"), "{rev1}");
    p.k(&["rollout", "undo", "ds/agent"]);
    p.k(&["rollout", "status", "ds/agent", "--timeout=60s"]);
    p.wait_for("busybox:1 everywhere", Duration::from_secs(30), |p| {
        let live = p.live_pods("app=agent");
        live.len() == 3 && live.iter().all(|x| x["spec"]["containers"][0]["image"] == "busybox:1")
    });
    let hist = p.k(&["rollout", "history", "ds/agent"]);
    assert!(
        hist.contains("2         <none>") && hist.contains("3         <none>") && !hist.contains("1         <none>"),
        "{hist}"
    );
    // A node selector shrinks the set to the nodes that match.
    p.k(&["label", "node", "b-0", "role=edge"]);
    p.k(&["patch", "ds", "agent", "-p", r#"{"spec":{"template":{"spec":{"nodeSelector":{"role":"edge"}}}}}"#]);
    p.wait_for("only b-0", Duration::from_secs(30), |p| nodes_of(p) == ["b-0"]);
    let get = p.k(&["get", "ds", "agent"]);
    assert!(get.contains("role=edge"), "{get}");
}

const APP1RS: &str = "apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: app1rs
spec:
  replicas: 1
  selector:
    matchLabels: {app: app1}
  template:
    metadata:
      labels: {app: app1}
      annotations: {fake.skiff.io/cpu-usage: 50m, fake.skiff.io/memory-usage: 64Mi}
    spec:
      containers:
      - name: app
        image: nginx:1.25
        resources:
          requests: {cpu: 100m, memory: 128Mi}
";

#[test]
fn autoscaler_follows_reported_usage_and_top_shows_it() {
    // Usage is reported every sync period.
    let p = Plane::start_with(3, &["--sync-period", "300ms"]);
    p.api.k_in(&["apply", "-f", "-"], APP1RS);
    let rs_replicas = |p: &Plane| p.json(&["get", "rs", "app1rs"])["spec"]["replicas"].as_i64().unwrap_or(0);
    // The course's command; min 2 lifts the ReplicaSet from 1 at once.
    let out = p.k(&["autoscale", "rs", "app1rs", "--min=2", "--max=5", "--cpu-percent=80"]);
    assert!(out.contains("horizontalpodautoscaler.autoscaling/app1rs autoscaled"), "{out}");
    p.wait_for("2 replicas", Duration::from_secs(20), |p| rs_replicas(p) == 2);
    p.wait_for("2 running pods with metrics", Duration::from_secs(20), |p| {
        let top = text(&p.api.kubectl_with(
            "/usr/lib/google-cloud-sdk/bin/kubectl.1.32",
            &["top", "pods", "-l", "app=app1", "--no-headers"],
            None,
        ));
        top.lines().filter(|l| l.contains("50m") && l.contains("64Mi")).count() == 2
    });
    // 50 % of requests against 80 %: within range, nothing changes; the table shows it.
    p.wait_for("the HPA to report 50%", Duration::from_secs(20), |p| {
        p.k(&["get", "hpa", "app1rs"]).contains("cpu: 50%/80%")
    });
    assert_eq!(rs_replicas(&p), 2);
    let top = p.k(&["top", "nodes"]);
    assert!(top.contains("CPU(cores)") && top.lines().filter(|l| l.starts_with("a-")).count() == 3, "{top}");

    // 300 % of requests: up to the maximum (the policies allow doubling or +4 per step).
    p.k(&["annotate", "pods", "-l", "app=app1", "fake.skiff.io/cpu-usage=300m", "--overwrite"]);
    p.wait_for("5 replicas", Duration::from_secs(30), |p| rs_replicas(p) == 5);
    p.wait_for("5 pods", Duration::from_secs(20), |p| p.live_pods("app=app1").len() == 5);
    let hpa = p.json(&["get", "hpa.v2.autoscaling", "app1rs"]);
    assert_eq!(hpa["spec"]["maxReplicas"], 5);
    p.wait_for("ScalingLimited", Duration::from_secs(20), |p| {
        let hpa = p.json(&["get", "hpa.v2.autoscaling", "app1rs"]);
        hpa["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "ScalingLimited" && c["status"] == "True" && c["reason"] == "TooManyReplicas")
            && hpa["status"]["currentReplicas"] == 5
    });
    let described = p.k(&["describe", "hpa", "app1rs"]);
    assert!(described.contains("SuccessfulRescale") && described.contains("New size: 5"), "{described}");

    // Idle: back down to the minimum once the stabilization window (2 s here) has passed.
    p.k(&["annotate", "pods", "-l", "app=app1", "fake.skiff.io/cpu-usage=5m", "--overwrite"]);
    p.wait_for("2 replicas again", Duration::from_secs(30), |p| rs_replicas(p) == 2);
    p.wait_for("2 pods", Duration::from_secs(20), |p| p.live_pods("app=app1").len() == 2);
    // The metrics of removed pods go with them.
    p.wait_for("2 PodMetrics", Duration::from_secs(20), |p| {
        p.api.raw_json("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods", None).1["items"]
            .as_array()
            .map_or(0, |a| a.len())
            == 2
    });
}

#[test]
fn claims_bind_to_fitting_static_volumes() {
    let p = Plane::start(1);
    let pv = |name: &str, size: &str| {
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": "/nonexistent/skiff-test"}}})
        .to_string()
    };
    let pvc = |name: &str, size: &str| {
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
            "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}})
        .to_string()
    };
    p.api.k_in(&["apply", "-f", "-"], &pv("big", "10Gi"));
    p.api.k_in(&["apply", "-f", "-"], &pv("small", "2Gi"));
    p.wait_for("volumes Available", Duration::from_secs(20), |p| {
        p.json(&["get", "pv"])["items"].as_array().unwrap().iter().all(|v| v["status"]["phase"] == "Available")
    });
    // The smallest volume that fits.
    p.api.k_in(&["apply", "-f", "-"], &pvc("one", "1Gi"));
    p.wait_for("claim one Bound", Duration::from_secs(20), |p| {
        p.json(&["get", "pvc", "one"])["status"]["phase"] == "Bound"
    });
    assert_eq!(p.json(&["get", "pvc", "one"])["spec"]["volumeName"], "small");
    assert_eq!(p.json(&["get", "pvc", "one"])["status"]["capacity"]["storage"], "2Gi");
    // Nothing left that is big enough: Pending, with the reason as an event.
    p.api.k_in(&["apply", "-f", "-"], &pvc("huge", "20Gi"));
    p.wait_for("a FailedBinding event", Duration::from_secs(20), |p| {
        p.k(&["describe", "pvc", "huge"]).contains("FailedBinding")
    });
    assert_eq!(p.json(&["get", "pvc", "huge"])["status"]["phase"], "Pending");
    // A claim in use is kept (pvc-protection) until its pod is gone; then its volume is
    // Released (and kept: Retain).
    let holder = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "holder"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "one"}}]}});
    p.api.k_in(&["apply", "-f", "-"], &holder.to_string());
    p.wait_for("holder running", Duration::from_secs(20), |p| {
        p.json(&["get", "pod", "holder"])["status"]["phase"] == "Running"
    });
    p.k(&["delete", "pvc", "one", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(1));
    let one = p.json(&["get", "pvc", "one"]);
    assert!(one["metadata"]["deletionTimestamp"].is_string() && one["status"]["phase"] == "Bound", "{one}");
    p.k(&["delete", "pod", "holder"]);
    p.wait_for("claim one gone", Duration::from_secs(20), |p| {
        p.json(&["get", "pvc"])["items"].as_array().unwrap().iter().all(|c| c["metadata"]["name"] != "one")
    });
    // A pod using the pending claim waits.
    p.wait_for("small Released", Duration::from_secs(20), |p| {
        p.json(&["get", "pv", "small"])["status"]["phase"] == "Released"
    });
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "huge"}}]}});
    p.api.k_in(&["apply", "-f", "-"], &pod.to_string());
    p.wait_for("FailedScheduling", Duration::from_secs(20), |p| {
        p.k(&["describe", "pod", "user"]).contains("pod has unbound immediate PersistentVolumeClaims")
    });
}

#[test]
fn cronjobs_start_jobs_on_schedule_and_keep_their_history() {
    let p = Plane::start(1);
    let cj = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "concurrencyPolicy": "Forbid", "successfulJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"template": {
                "metadata": {"annotations": {"fake.skiff.io/run-seconds": "1"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}}});
    p.api.k_in(&["apply", "-f", "-"], &cj.to_string());
    let table = p.k(&["get", "cronjob", "tick"]);
    assert!(
        table.contains("SCHEDULE") && table.contains("* * * * *   <none>     False     0        <none>"),
        "{table}"
    );
    // A Job started by hand from the CronJob belongs to it.
    p.k(&["create", "job", "manual", "--from=cronjob/tick"]);
    let manual = p.json(&["get", "job", "manual"]);
    assert_eq!(manual["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    let complete = |p: &Plane, name: &str| {
        p.json(&["get", "job", name])["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Complete" && c["status"] == "True")
    };
    p.wait_for("the manual job to complete", Duration::from_secs(20), |p| complete(p, "manual"));
    // The next whole minute starts a Job named after it.
    let scheduled = |p: &Plane| -> Option<String> {
        let jobs = p.json(&["get", "jobs"]);
        jobs["items"].as_array().unwrap().iter().find_map(|j| {
            j["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
                .as_str()
                .map(|_| j["metadata"]["name"].as_str().unwrap().to_string())
        })
    };
    p.wait_for("a scheduled job", Duration::from_secs(75), |p| scheduled(p).is_some());
    let name = scheduled(&p).unwrap();
    let minutes: i64 = name.strip_prefix("tick-").unwrap().parse().unwrap();
    let job = p.json(&["get", "job", &name]);
    let stamp = job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"].as_str().unwrap();
    assert!(stamp.ends_with(":00Z"), "on the minute: {stamp}");
    assert_eq!(job["metadata"]["ownerReferences"][0]["name"], "tick");
    p.wait_for("the scheduled job to complete", Duration::from_secs(20), |p| complete(p, &name));
    // Status follows, and only one successful Job is kept (the manual one goes).
    p.wait_for("the history limit", Duration::from_secs(20), |p| {
        let cj = p.json(&["get", "cronjob", "tick"]);
        let jobs = p.json(&["get", "jobs"]);
        cj["status"]["lastSuccessfulTime"].is_string()
            && cj["status"]["active"].is_null()
            && jobs["items"].as_array().unwrap().len() == 1
    });
    let cj = p.json(&["get", "cronjob", "tick"]);
    let last = cj["status"]["lastScheduleTime"].as_str().unwrap().to_string();
    assert!(last.as_str() >= stamp && last.ends_with(":00Z"), "{last} {stamp}");
    let stamp_minutes = p.json(&["get", "job", &name])["status"]["startTime"].as_str().map(|_| minutes);
    assert_eq!(stamp_minutes, Some(minutes));
    let described = p.k(&["describe", "cronjob", "tick"]);
    for want in ["SuccessfulCreate", "SawCompletedJob", "SuccessfulDelete", "Deleted job manual"] {
        assert!(described.contains(want), "{want} missing:\n{described}");
    }
}

#[test]
fn scaling_mid_rollout_is_proportional() {
    let p = Plane::start(3);
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "prop"},
        "spec": {"replicas": 10, "selector": {"matchLabels": {"app": "prop"}},
            "template": {"metadata": {"labels": {"app": "prop"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}});
    p.api.k_in(&["apply", "-f", "-"], &d.to_string());
    p.wait_for("10 available", Duration::from_secs(30), |p| p.deploy_available("prop") == 10);
    // A new template whose pods never become ready: the rollout stalls with both
    // ReplicaSets up (25 % surge and unavailability of 10: 8 old, 5 new).
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"fake.skiff.io/ready": "false"}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.26"}]}}}});
    p.k(&["patch", "deploy", "prop", "-p", &patch.to_string()]);
    let sizes = |p: &Plane| -> Vec<(String, i64)> {
        let rss = p.json(&["get", "rs", "-l", "app=prop"]);
        let mut v: Vec<(String, i64)> = rss["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let image = r["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().to_string();
                (image, r["spec"]["replicas"].as_i64().unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let want = |old: i64, new: i64| vec![("nginx:1.25".to_string(), old), ("nginx:1.26".to_string(), new)];
    p.wait_for("8 old and 5 new", Duration::from_secs(30), |p| sizes(p) == want(8, 5));
    // Scaled to 20 (surge 5, 25 allowed): each grows by its share, 8 -> 15 and 5 -> 10.
    p.k(&["scale", "deploy", "prop", "--replicas=20"]);
    p.wait_for("15 old and 10 new", Duration::from_secs(30), |p| sizes(p) == want(15, 10));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sizes(&p), want(15, 10), "and it stays so");
}

/// Events are limited per object as client-go's recorder limits them: a ReplicaSet
/// that creates 30 pods has 25 SuccessfulCreate events (the first 25), while each pod
/// still gets its own Scheduled event.
#[test]
fn events_about_one_object_are_limited_to_25_at_once() {
    let p = Plane::start(2);
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "many"},
        "spec": {"replicas": 30, "selector": {"matchLabels": {"app": "many"}},
            "template": {"metadata": {"labels": {"app": "many"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.25"}]}}}});
    p.api.k_in(&["apply", "-f", "-"], &rs.to_string());
    let count = |p: &Plane, selector: &str| {
        p.json(&["get", "events", "--field-selector", selector])["items"].as_array().map_or(0, Vec::len)
    };
    let created = "involvedObject.name=many,reason=SuccessfulCreate";
    p.wait_for("30 pods, each scheduled", Duration::from_secs(60), |p| {
        p.live_pods("app=many").len() == 30 && count(p, "reason=Scheduled") == 30
    });
    p.wait_for("25 SuccessfulCreate events", Duration::from_secs(10), |p| count(p, created) >= 25);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&p, created), 25, "{}", p.k(&["describe", "rs", "many"]));
    let described = p.k(&["describe", "rs", "many"]);
    assert!(described.contains("SuccessfulCreate") && described.contains("Created pod: many-"), "{described}");
}

/// `skiff join` with a bootstrap token: the joining machine checks the CA against the
/// hash, gets a certificate as `system:node:<name>` through a CertificateSigningRequest
/// approved for the token, and runs its agent with it; pods then run on the new node. A
/// wrong CA hash or an unknown token stops the join with the reason.
#[test]
fn a_machine_joins_with_a_bootstrap_token_and_runs_pods() {
    let mut p = Plane::control_plane();
    let admin = p.api.kubeconfig();
    let skiff = |args: &[&str]| {
        let o = Command::new(skiff_bin()).args(args).arg("--kubeconfig").arg(&admin).output().unwrap();
        assert!(o.status.success(), "skiff {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let join = skiff(&["token", "create", "--print-join-command", "--ttl", "1h"]);
    let parts: Vec<&str> = join.split_whitespace().collect();
    assert!(
        matches!(parts.as_slice(), ["skiff", "join", _, "--token", _, "--ca-hash", h] if h.starts_with("sha256:") && h.len() == 71),
        "{join}"
    );
    let (server, token, hash) = (parts[2], parts[4], parts[6]);
    let data = p.api.dir.path().join("joined");
    let try_join = |server: &str, token: &str, hash: &str| {
        let o = Command::new(skiff_bin())
            .args(["join", server, "--token", token, "--ca-hash", hash, "--node-name", "w1-0", "--data-dir"])
            .arg(p.api.dir.path().join("refused"))
            .args(["--", "--runtime", "fake"])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let wrong = format!("sha256:{}", "0".repeat(64));
    let e = try_join(server, token, &wrong);
    assert!(e.contains("refusing to trust"), "{e}");
    let e = try_join(server, "abcdef.0123456789abcdef", hash);
    assert!(e.contains("did not accept the token"), "{e}");
    assert!(!p.api.dir.path().join("refused/node.kubeconfig").exists());

    let log = std::fs::File::create(p.api.dir.path().join("join.log")).unwrap();
    let child = Command::new(skiff_bin())
        .args(["join", server, "--token", token, "--ca-hash", hash, "--node-name", "w1-0", "--data-dir"])
        .arg(&data)
        .args(["--", "--runtime", "fake", "--node-name-prefix", "w1", "--start-delay", "300ms"])
        .args(["--node-lease-renew-interval", "500ms", "--sync-period", "300ms"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    p.procs.push(("join".into(), child));
    p.wait_for("the joined node to be Ready", Duration::from_secs(60), |p| p.ready_nodes() == 1);
    assert!(p.k(&["get", "nodes"]).contains("w1-0"));
    let csrs = p.k(&["get", "csr"]);
    assert!(csrs.contains("system:bootstrap:") && csrs.contains("Approved,Issued"), "{csrs}");
    let node_kc = data.join("node.kubeconfig");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&node_kc).unwrap().permissions().mode() & 0o777, 0o600);
    let o = Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
        .arg("--kubeconfig")
        .arg(&node_kc)
        .args(["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "system:node:w1-0", "{}", text(&o));
    // The controller-manager's token cleaner deletes tokens once they expire.
    let brief = skiff(&["token", "create", "--ttl", "2s"]);
    let id = brief.split('.').next().unwrap().to_string();
    assert!(skiff(&["token", "list"]).contains(&id));
    p.wait_for("the expired token's Secret to go", Duration::from_secs(30), |_| {
        !skiff(&["token", "list"]).contains(&id)
    });
    p.k(&["create", "deployment", "web", "--image=nginx", "--replicas=2"]);
    p.wait_for("2 pods running on the joined node", Duration::from_secs(60), |p| {
        let pods = p.live_pods("app=web");
        pods.len() == 2 && pods.iter().all(|x| x["status"]["phase"] == "Running" && x["spec"]["nodeName"] == "w1-0")
    });
}

/// docs/disaster-recovery.md, step by step: a control plane on a 3-member store with a
/// Deployment running; a backup; two of the three members destroyed (quorum lost, the
/// API can no longer write); the backup restored into a new 3-member store with the
/// revision bumped and marked compacted; the API server pointed at it. Objects from the
/// backup come back, later ones are gone, the controllers carry on, and no watcher sees
/// a resourceVersion go backwards: an old watch resumes with 410 Gone, and everything
/// listed afterwards is newer than anything seen before.
#[test]
fn disaster_recovery_after_losing_two_of_three_store_members() {
    let mut p = Plane::control_plane_on(Cluster::start(3));
    p.agent("dr", 2, &[]);
    p.wait_for("the nodes to be Ready", Duration::from_secs(20), |p| p.ready_nodes() >= 2);
    p.k(&["create", "deployment", "web", "--image=nginx", "--replicas=3"]);
    p.k(&["create", "configmap", "kept", "--from-literal=a=1"]);
    p.wait_for("3 available replicas", Duration::from_secs(30), |p| p.deploy_available("web") == 3);
    let watch = Watch::start(p.api.http_port(), "/api/v1/namespaces/default/configmaps?watch=true");

    // The scheduled backup (docs: a cron line running `skiff snapshot save`).
    let backup = p.api.dir.path().join("backup.db");
    let ep0 = p.api.store.members[0].endpoint();
    let o =
        Command::new(skiff_bin()).args(["snapshot", "save"]).arg(&backup).args(["--endpoints", &ep0]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // Written after the backup: lost with the cluster.
    p.k(&["create", "configmap", "after-backup", "--from-literal=a=2"]);
    let rv = |v: &Value| v["metadata"]["resourceVersion"].as_str().unwrap_or_default().parse::<i64>().unwrap();
    let list_rv = |p: &Plane| rv(&p.api.raw_json("GET", "/api/v1/namespaces/default/configmaps", None).1);
    let before = list_rv(&p);

    // Two of three members are destroyed: no quorum, no writes.
    for i in [1, 2] {
        p.api.store.kill(i);
        std::fs::remove_dir_all(&p.api.store.members[i].data_dir).unwrap();
    }
    let o = p.api.kubectl_with(KUBECTL_132, &["create", "configmap", "no-quorum", "--request-timeout=5s"], None);
    assert!(!o.status.success(), "a write without quorum: {}", text(&o));
    let seen = watch.stop();
    let seen_max = seen.iter().map(|e| rv(&e["object"])).max().unwrap_or(0).max(before);

    // Restore into a new store, revisions bumped past anything the old one handed out.
    let new_store = crate::backup::restore_cluster(&backup, 3, &["--bump-revision", "1000000", "--mark-compacted"]);
    p.api.stop();
    p.api.store = new_store;
    p.api.restart();
    // The components that gave up their leadership while the store was gone are started
    // again (what their supervisor does; the procedure restarts all three).
    for name in ["controller-manager", "scheduler"] {
        p.kill(name);
    }
    p.spawn("controller-manager", &[&["controller-manager"], MANAGER].concat());
    p.spawn("scheduler", &["scheduler", "--leader-elect-lease-duration", "2s"]);

    let names = |p: &Plane, kind: &str| -> Vec<String> {
        p.json(&["get", kind])["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let cms = names(&p, "configmaps");
    assert!(cms.contains(&"kept".to_string()), "{cms:?}");
    assert!(!cms.contains(&"after-backup".to_string()), "written after the backup: {cms:?}");
    p.wait_for("the Deployment from the backup", Duration::from_secs(30), |p| p.deploy_available("web") == 3);
    // Nothing goes backwards: a watch from an old version is told to re-list...
    let (code, body) = p.api.raw(
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={seen_max}&timeoutSeconds=2"),
        None,
    );
    assert!(code == 410 || body.contains("\"code\":410"), "resuming at {seen_max}: {code} {body}");
    // ...and the list it gets, and every write after it, are newer than all it saw.
    assert!(list_rv(&p) > seen_max);
    p.k(&["create", "configmap", "after-restore", "--from-literal=a=3"]);
    assert!(rv(&p.json(&["get", "configmap", "after-restore"])) > seen_max);
    // The controllers and nodes carry on against the restored cluster.
    p.k(&["scale", "deployment", "web", "--replicas=4"]);
    p.wait_for("4 available replicas after the restore", Duration::from_secs(30), |p| p.deploy_available("web") == 4);
}
