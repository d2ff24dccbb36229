//! `skiff up` / `skiff down` as a user runs them: one command starts a whole cluster in
//! the background and returns once its node is Ready; kubectl and etcdctl work against
//! it; `skiff down` stops it and removes what the node made on the machine; the next
//! `skiff up` resumes the same cluster from its data.
//!
//! Every cluster here runs on its own loopback ports, and (real node) its own bridge,
//! pod subnet, service range and cgroup parent; `skiff down --purge` runs on drop, also
//! when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

struct Cluster {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    flags: Vec<String>,
    store: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.dir.exists() {
            let o = Command::new(skiff_bin()).args(["down", "--purge", "--data-dir"]).arg(&self.dir).output();
            if let Ok(o) = o {
                if !o.status.success() && !std::thread::panicking() {
                    panic!("skiff down --purge failed: {}", text(&o));
                }
            }
        }
    }
}

impl Cluster {
    fn new(extra: &[String]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("cluster");
        let store = format!("127.0.0.1:{}", free_port());
        let mut flags: Vec<String> = vec![
            "--data-dir".into(),
            dir.display().to_string(),
            "--store-client-addr".into(),
            store.clone(),
            "--store-peer-addr".into(),
            format!("127.0.0.1:{}", free_port()),
            "--bind".into(),
            format!("127.0.0.1:{}", free_port()),
            "--node-name".into(),
            "up-test".into(),
        ];
        flags.extend(extra.iter().cloned());
        Cluster { _tmp: tmp, dir, flags, store }
    }

    fn skiff(&self, args: &[&str]) -> Output {
        Command::new(skiff_bin()).args(args).output().unwrap()
    }

    /// `skiff up`; its stdout must be exactly the `export KUBECONFIG=...` line.
    fn up(&self) {
        let o = Command::new(skiff_bin()).arg("up").args(&self.flags).output().unwrap();
        assert!(o.status.success(), "skiff up: {}", text(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        let want = format!("export KUBECONFIG={}\n", self.kubeconfig().display());
        assert_eq!(stdout, want, "skiff up printed: {}", text(&o));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("node up-test") && stderr.contains("The cluster is up"), "{stderr}");
    }

    fn down(&self, extra: &[&str]) -> Output {
        let dir = self.dir.display().to_string();
        let mut args = vec!["down", "--data-dir", &dir];
        args.extend(extra);
        self.skiff(&args)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("apiserver/admin.kubeconfig")
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.join("kubectl-cache"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let o = self.kubectl(&all, None);
        assert!(o.status.success(), "kubectl {args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn wait(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let t = Instant::now();
        while !ok() {
            if t.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(self.dir.join("skiff.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!("timed out waiting for {what}; log tail (newest first):\n{}", tail.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn available(&self, deployment: &str) -> i64 {
        let d = self.json(&["get", "deployment", deployment]);
        d["status"]["availableReplicas"].as_i64().unwrap_or(0)
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("skiff.pid")).ok()?.trim().parse().ok()
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) != Some("Z"))
        .unwrap_or(false)
}

/// Whether any live process has an argument that starts with `prefix`.
fn process_with_arg_under(prefix: &Path) -> bool {
    let prefix = prefix.display().to_string();
    std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()).any(|e| {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { return false };
        alive(pid)
            && std::fs::read(e.path().join("cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a.starts_with(prefix.as_bytes())))
                .unwrap_or(false)
    })
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: skiff.local/busybox:latest
        command: [sh, -c, "echo served by $HOSTNAME > /www/index.html; exec httpd -f -p 8080 -h /www"]
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

fn get_via(ip: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&format!("{ip}:80").parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.trim().to_string())
}

/// The embedded default with real containers: up, deploy and reach a Service, down
/// (nothing left running or configured), up again (the same objects, serving again),
/// and down --purge (the data is gone).
#[test]
fn up_runs_a_real_cluster_and_down_removes_it_and_up_resumes_it() {
    let net = 4;
    let extra: Vec<String> = [
        "--node-ip",
        "127.0.0.1",
        "--node-port",
        &free_port().to_string(),
        "--bridge",
        &format!("sktest{net}"),
        "--pod-cidr",
        &format!("10.{}.0.0/24", 200 + net),
        "--service-cidr",
        &format!("10.{}.128.0/20", 200 + net),
        "--cgroup-parent",
        &format!("/skiff-test-{net}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c = Cluster::new(&extra);
    c.up();
    let pid = c.pid().expect("skiff up writes its pid");
    assert!(alive(pid));

    // A second `skiff up` on the same directory refuses, naming the running one.
    let again = Command::new(skiff_bin()).arg("up").args(&c.flags).output().unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again).contains(&format!("a cluster already runs from {} (pid {pid})", c.dir.display())),
        "{}",
        text(&again)
    );

    let o = c.kubectl(&["apply", "-f", "-"], Some(WEB));
    assert!(o.status.success(), "kubectl apply: {}", text(&o));
    c.wait("2 available replicas", || c.available("web") == 2);
    let ip = c.json(&["get", "service", "web"])["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with(&format!("10.{}.", 200 + net)), "cluster IP {ip} from --service-cidr");
    c.wait("the Service to answer", || get_via(&ip).is_some_and(|b| b.starts_with("served by web-")));
    let uid = c.json(&["get", "deployment", "web"])["metadata"]["uid"].as_str().unwrap().to_string();
    // The store is a real etcd-compatible endpoint.
    let keys = etcdctl(&c.store, &["get", "/registry/deployments/default/web", "--keys-only"]);
    assert!(String::from_utf8_lossy(&keys.stdout).contains("/registry/deployments/default/web"), "{}", text(&keys));

    let o = c.down(&[]);
    assert!(o.status.success(), "skiff down: {}", text(&o));
    assert!(!alive(pid), "the cluster process is gone");
    assert!(!process_with_arg_under(&c.dir), "no process of the cluster is left");
    let link = Command::new("ip").args(["link", "show", &format!("sktest{net}")]).output().unwrap();
    assert!(!link.status.success(), "the bridge is removed");
    let rules = Command::new("iptables-save").output().unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains(&format!("SKTEST{net}")), "no service chains are left");
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory/skiff-test-{net}")).exists(), "the pods' cgroups are removed");
    let cidr = format!("10.{}.128.0/20", 200 + net);
    let route = Command::new("ip").args(["route", "show", &cidr]).output().unwrap();
    assert!(String::from_utf8_lossy(&route.stdout).trim().is_empty(), "the service range's route is removed");
    assert!(c.dir.join("store").is_dir() && c.kubeconfig().is_file(), "the cluster's data stays");

    // Up again: the same cluster, and its workload serves again.
    c.up();
    let d = c.json(&["get", "deployment", "web"]);
    assert_eq!(d["metadata"]["uid"], uid.as_str(), "the same Deployment, from the store");
    c.wait("the Deployment to be available again", || c.available("web") == 2);
    c.wait("the Service to answer again", || get_via(&ip).is_some_and(|b| b.starts_with("served by web-")));

    let o = c.down(&["--purge"]);
    assert!(o.status.success(), "skiff down --purge: {}", text(&o));
    assert!(!c.dir.exists(), "--purge removes the data directory");
    let o = c.down(&[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no cluster in"), "{}", text(&o));
}

/// The simulated runtime works without containerd; `skiff down` of a stopped cluster
/// says so; an unknown directory is refused.
#[test]
fn up_with_a_simulated_node_needs_no_containers() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let cm_metrics = format!("127.0.0.1:{}", free_port());
    let c = Cluster::new(&[
        "--runtime".into(),
        "fake".into(),
        "--store-metrics-addr".into(),
        metrics.clone(),
        "--controller-metrics-addr".into(),
        cm_metrics.clone(),
    ]);
    c.up();
    // Metrics: the store's on its own address, the API server's through kubectl.
    let (code, body) = http_get_plain(&metrics, "/metrics");
    assert_eq!(code, 200);
    assert!(prometheus(&body).iter().any(|(n, _, v)| n == "etcd_server_has_leader" && *v == 1.0), "{body}");
    let o = c.kubectl(&["get", "--raw", "/metrics"], None);
    assert!(o.status.success(), "{}", text(&o));
    let samples = prometheus(&String::from_utf8_lossy(&o.stdout));
    assert!(samples.iter().any(|(n, _, _)| n == "apiserver_request_total"));
    let nodes = c.json(&["get", "nodes"]);
    assert_eq!(nodes["items"][0]["metadata"]["name"], "up-test");
    let o = c.kubectl(&["create", "deployment", "sim", "--image=nginx", "--replicas=3"], None);
    assert!(o.status.success(), "{}", text(&o));
    c.wait("3 simulated replicas", || c.available("sim") == 3);
    // The controller-manager counted and timed its reconciles.
    let (code, body) = http_get_plain(&cm_metrics, "/metrics");
    assert_eq!(code, 200);
    let samples = prometheus(&body);
    let count = |ctrl: &str, name: &str| {
        samples
            .iter()
            .filter(|(n, l, _)| n == name && l.get("controller").map(String::as_str) == Some(ctrl))
            .map(|s| s.2)
            .sum::<f64>()
    };
    assert!(count("deployment", "controller_runtime_reconcile_total") >= 1.0, "{body}");
    assert!(count("replicaset", "controller_runtime_reconcile_time_seconds_count") >= 1.0, "{body}");
    // Each controller's work queue: the Deployment went through it (and its ReplicaSet,
    // and the pods' changes through the ReplicaSet's), and nothing waits once all is done.
    let queue = |name: &str, series: &str| {
        samples.iter().find(|(n, l, _)| n == series && l.get("name").map(String::as_str) == Some(name)).map(|s| s.2)
    };
    for name in ["deployment", "replicaset", "statefulset", "daemonset", "job", "endpoints", "namespace"] {
        assert!(queue(name, "workqueue_depth").is_some(), "{name}: {body}");
    }
    assert!(queue("deployment", "workqueue_adds_total").is_some_and(|v| v >= 1.0), "{body}");
    assert!(queue("replicaset", "workqueue_adds_total").is_some_and(|v| v >= 1.0), "{body}");
    assert!(queue("replicaset", "workqueue_queue_duration_seconds_count").is_some_and(|v| v >= 1.0), "{body}");
    c.wait("the deployment queue to drain", || {
        let (_, body) = http_get_plain(&cm_metrics, "/metrics");
        prometheus(&body).iter().any(|(n, l, v)| {
            n == "workqueue_depth" && l.get("name").map(String::as_str) == Some("deployment") && *v == 0.0
        })
    });
    // The scheduler runs in the same process, so its attempts are there too.
    let scheduled =
        samples.iter().find(|(n, l, _)| n == "scheduler_schedule_attempts_total" && l["result"] == "scheduled");
    assert!(scheduled.is_some_and(|s| s.2 >= 3.0), "{body}");
    // And how long each pod waited to be bound: three pods, each within the buckets.
    // All three are bound, so none is pending (as of the scheduler's last pass).
    let pending = samples
        .iter()
        .find(|(n, l, _)| n == "scheduler_pending_pods" && l.get("queue").map(String::as_str) == Some("active"));
    assert!(pending.is_some(), "{body}");
    let sli = |n: &str| samples.iter().find(|(name, _, _)| name == n).map(|s| s.2);
    assert!(sli("scheduler_pod_scheduling_sli_duration_seconds_count").is_some_and(|v| v >= 3.0), "{body}");
    let inf = samples.iter().find(|(n, l, _)| {
        n == "scheduler_pod_scheduling_sli_duration_seconds_bucket" && l.get("le").map(String::as_str) == Some("+Inf")
    });
    assert_eq!(inf.map(|s| s.2), sli("scheduler_pod_scheduling_sli_duration_seconds_count"), "{body}");

    let pid = c.pid().unwrap();
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t = Instant::now();
    while alive(pid) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = c.down(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("the cluster is not running"), "{}", text(&o));

    let o = c.skiff(&["down", "--data-dir", "/nonexistent/skiff-up-test"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no cluster in /nonexistent/skiff-up-test"), "{}", text(&o));
}

/// Sends `request` as is to `addr`; the whole response.
fn raw_http(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// `skiff dashboard`, killed when dropped.
struct Dashboard {
    child: std::process::Child,
    url: String,
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dashboard {
    fn start(kubeconfig: &Path) -> Dashboard {
        use std::io::BufRead;
        let mut child = Command::new(skiff_bin())
            .args(["dashboard", "--address", "127.0.0.1:0", "--kubeconfig"])
            .arg(kubeconfig)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().to_string();
        let d = Dashboard { child, url };
        assert!(d.url.starts_with("http://127.0.0.1:") && d.url.ends_with("/dashboard/"), "printed {line:?}");
        d
    }

    fn addr(&self) -> &str {
        self.url.trim_start_matches("http://").trim_end_matches("/dashboard/")
    }
}

/// The web dashboard in headless Chromium against a running cluster: the node and the
/// store member with their status, a Deployment's pods appearing after `kubectl apply`,
/// the page's Scale and Restart buttons changing the cluster (and the page following
/// through its watches), a pod's page, Services, Events, and usage charts. Screenshots go
/// to target/test-artifacts/dashboard/.
#[test]
fn dashboard_in_a_browser_follows_and_changes_the_cluster() {
    let c = Cluster::new(&["--runtime".into(), "fake".into()]);
    c.up();
    let d = Dashboard::start(&c.kubeconfig());

    // The page, with headers that keep its scripts its own and its buttons unframed.
    let resp = raw_http(d.addr(), &format!("GET /dashboard/ HTTP/1.0\r\nHost: {}\r\n\r\n", d.addr()));
    assert!(resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("content-security-policy: default-src 'self'"), "{resp}");
    assert!(resp.contains("x-frame-options: DENY") && resp.contains("<title>Skiff dashboard</title>"), "{resp}");
    // What a web page elsewhere could make a browser send is refused: another Host
    // (DNS rebinding), a change from another origin.
    let resp = raw_http(d.addr(), "GET /api/v1/secrets HTTP/1.0\r\nHost: evil.example:80\r\n\r\n");
    assert!(resp.contains(" 403 "), "{resp}");
    let patch = format!(
        "PATCH /apis/apps/v1/namespaces/default/deployments/x/scale HTTP/1.0\r\nHost: {}\r\nOrigin: http://evil.example\r\nContent-Type: application/merge-patch+json\r\nContent-Length: 2\r\n\r\n{{}}",
        d.addr()
    );
    let resp = raw_http(d.addr(), &patch);
    assert!(resp.contains(" 403 ") && resp.contains("evil.example"), "{resp}");
    let delete = format!(
        "DELETE /api/v1/namespaces/default/pods/x HTTP/1.0\r\nHost: {}\r\nSec-Fetch-Site: cross-site\r\n\r\n",
        d.addr()
    );
    let resp = raw_http(d.addr(), &delete);
    assert!(resp.contains(" 403 ") && resp.contains("cross-site"), "{resp}");
    // The store's members, as the page reads them.
    let resp = raw_http(d.addr(), &format!("GET /dashboard/api/store HTTP/1.0\r\nHost: {}\r\n\r\n", d.addr()));
    let body: Value = serde_json::from_str(resp.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["members"][0]["isLeader"], true, "{body}");
    assert_eq!(body["members"][0]["endpoint"], format!("http://{}", c.store), "{body}");

    let python = std::env::var("SKIFF_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/dashboard.py");
    let artifacts = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-artifacts/dashboard");
    let o =
        Command::new(&python).arg(script).arg(&d.url).arg(c.kubeconfig()).arg(KUBECTL).arg(artifacts).output().unwrap();
    assert!(
        o.status.success(),
        "{python} {script} failed (selenium, chromium and chromedriver: `make test-deps` installs them; screenshots in {artifacts}):\n{}",
        text(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("dashboard: ok"), "{}", text(&o));
    assert!(Path::new(artifacts).join("overview.png").exists());
}

/// `skiff init`: a cluster whose store serves only TLS clients with a certificate of the
/// cluster CA, and a printed `skiff join` command that makes another "machine" (here a
/// simulated node in its own data directory) a node of it.
#[test]
fn init_serves_the_store_over_tls_and_prints_a_join_command_that_works() {
    let c = Cluster::new(&["--runtime".into(), "fake".into()]);
    let o = Command::new(skiff_bin()).arg("init").args(&c.flags).output().unwrap();
    assert!(o.status.success(), "skiff init: {}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0], format!("export KUBECONFIG={}", c.kubeconfig().display()));
    let join: Vec<&str> = lines[1].split_whitespace().collect();
    assert!(matches!(join.as_slice(), ["skiff", "join", _, "--token", _, "--ca-hash", _]), "{stdout}");
    assert_eq!(
        lines[2],
        format!("{} --control-plane --certificate-key {}", lines[1], &lines[2][lines[2].len() - 64..])
    );

    // The control-plane line needs a store other machines reach; this one is on 127.0.0.1.
    let o = Command::new(skiff_bin())
        .args(&lines[2].split_whitespace().collect::<Vec<_>>()[1..])
        .args(["--", "--data-dir"])
        .arg(c.dir.parent().unwrap().join("second"))
        .args(["--store-client-addr", "127.0.0.1:1", "--store-peer-addr", "127.0.0.1:2"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("--store-client-addr 127.0.0.1:1: give an address of this machine"), "{}", text(&o));

    // The store: nothing over plain HTTP or without a client certificate; everything
    // with the one the API server uses.
    let pki = c.dir.join("apiserver/pki");
    let tls = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://{}", c.store))
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .args(args)
            .args(["--command-timeout=5s", "--dial-timeout=3s"])
            .output()
            .unwrap()
    };
    let cert = format!("--cert={}", pki.join("apiserver-etcd-client.crt").display());
    let key = format!("--key={}", pki.join("apiserver-etcd-client.key").display());
    let o = tls(&[&cert, &key, "get", "/registry/namespaces/default", "--keys-only"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("/registry/namespaces/default"), "{}", text(&o));
    assert!(!tls(&["get", "/registry/namespaces/default"]).status.success(), "no client certificate");
    let plain = etcdctl(&format!("http://{}", c.store), &["--dial-timeout=3s", "get", "/registry/namespaces/default"]);
    assert!(!plain.status.success(), "plain HTTP");

    // The printed join command, run as written (plus where the new node keeps its data
    // and the simulated runtime), adds a node.
    let node_dir = c.dir.parent().unwrap().join("joined");
    let mut agent = Command::new(skiff_bin())
        .args(&join[1..])
        .args(["--node-name", "joined-0", "--data-dir"])
        .arg(&node_dir)
        .args(["--", "--runtime", "fake", "--node-name-prefix", "joined", "--start-delay", "300ms"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let ready = |c: &Cluster| {
        let nodes = c.json(&["get", "nodes"]);
        nodes["items"].as_array().unwrap().iter().any(|n| {
            n["metadata"]["name"] == "joined-0"
                && n["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|x| x["type"] == "Ready" && x["status"] == "True"))
        })
    };
    while !ready(&c) {
        if t.elapsed() > Duration::from_secs(60) {
            let _ = agent.kill();
            panic!(
                "the joined node never became Ready: {}",
                String::from_utf8_lossy(&c.kubectl(&["get", "nodes", "-o", "wide"], None).stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(node_dir.join("node.kubeconfig").exists());
}
