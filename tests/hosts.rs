//! Clusters of several "machines" on one host: each machine a network namespace with one
//! address (10.231.0.1, .2, ...) on a shared link (a bridge in a namespace of its own),
//! running its own skiff processes. The first runs `skiff init`, the others run the
//! printed `skiff join` lines: as nodes with real containerd, whose pods reach each other
//! across machines, or as control-plane machines that keep the cluster going when one
//! of them is destroyed.
//!
//! The namespaces are entered with `nsenter --net`, which, unlike `ip netns exec`, keeps
//! the host's /sys (and so its cgroup filesystem) in view. Everything, namespaces
//! included, is removed afterwards, also when the test fails; no traffic leaves them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::apiserver::KUBECTL_132;
use crate::common::*;

/// Machines: network namespaces with one address each on a shared link.
struct Machines {
    /// The machines' namespaces; each one's interface on the link has the same name.
    names: Vec<String>,
    /// The namespace of the bridge that links them.
    switch: String,
    dir: tempfile::TempDir,
    /// The second machine's `skiff join` when it runs in the foreground (a node agent).
    join: Option<Child>,
}

const ADDR: [&str; 3] = ["10.231.0.1", "10.231.0.2", "10.231.0.3"];

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", text(&o));
    o
}

impl Machines {
    /// `n` machines, named `skh<pid><test>-<i>`, on a bridge in `skh<pid><test>-s`.
    fn new(test: char, n: usize) -> Machines {
        let id = format!("skh{}{test}", std::process::id());
        let names: Vec<String> = (0..n).map(|i| format!("{id}-{i}")).collect();
        let m = Machines { names, switch: format!("{id}-s"), dir: tempfile::tempdir().unwrap(), join: None };
        let sw = m.switch.as_str();
        run(Command::new("ip").args(["netns", "add", sw]));
        run(Command::new("ip").args(["-n", sw, "link", "add", "br0", "type", "bridge"]));
        run(Command::new("ip").args(["-n", sw, "link", "set", "br0", "up"]));
        for (i, n) in m.names.iter().enumerate() {
            run(Command::new("ip").args(["netns", "add", n]));
            run(Command::new("ip").args(["-n", n, "link", "set", "lo", "up"]));
            // eth0 in the machine, port<i> on the bridge.
            let port = format!("port{i}");
            run(Command::new("ip")
                .args(["link", "add", "eth0", "netns", n, "type", "veth", "peer", "name", &port, "netns", sw]));
            run(Command::new("ip").args(["-n", sw, "link", "set", &port, "master", "br0", "up"]));
            run(Command::new("ip").args(["-n", n, "addr", "add", &format!("{}/24", ADDR[i]), "dev", "eth0"]));
            run(Command::new("ip").args(["-n", n, "link", "set", "eth0", "up"]));
        }
        m
    }

    /// A command run inside machine `i`'s network namespace.
    fn on(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.names[i])).arg(program);
        c
    }

    fn data(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("m{}", i + 1))
    }

    fn agent_flags(&self, i: usize) -> Vec<String> {
        // Each machine's pods get a cgroup parent of their own: the host's cgroup tree
        // is shared.
        vec!["--cgroup-parent".into(), format!("/skiff-hosts-{}-{i}", std::process::id())]
    }

    /// kubectl on machine `i`, against its own API server.
    fn kubectl_on(&self, i: usize, args: &[&str]) -> Output {
        let kubeconfig = self.data(i).join("apiserver/admin.kubeconfig");
        let mut c = self.on(i, KUBECTL_132);
        c.arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join(format!("kubectl-cache-{i}")));
        c.args(["--request-timeout", "20s"]).args(args).output().unwrap()
    }

    fn k_on(&self, i: usize, args: &[&str]) -> String {
        let o = self.kubectl_on(i, args);
        assert!(o.status.success(), "kubectl {args:?} on machine {i}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json_on(&self, i: usize, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.k_on(i, &a)).unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_on(0, args)
    }

    fn k(&self, args: &[&str]) -> String {
        self.k_on(0, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        self.json_on(0, args)
    }

    /// `skiff init` on the first machine, with `extra` flags; the printed join lines.
    fn init(&self, extra: &[&str]) -> Vec<String> {
        let init = run(self
            .on(0, skiff_bin())
            .arg("init")
            .arg("--data-dir")
            .arg(self.data(0))
            .args(["--bind", &format!("{}:6443", ADDR[0]), "--node-ip", ADDR[0], "--node-name", "m1"])
            .args(self.agent_flags(0))
            .args(extra));
        let stdout = String::from_utf8_lossy(&init.stdout).into_owned();
        let lines: Vec<String> = stdout.lines().map(String::from).collect();
        assert_eq!(lines.len(), 3, "export, join, join --control-plane: {stdout}");
        lines[1..].to_vec()
    }

    fn routes(&self, i: usize) -> String {
        String::from_utf8_lossy(
            &run(Command::new("ip").args(["-n", &self.names[i], "route", "show", "proto", "83"])).stdout,
        )
        .into_owned()
    }

    fn wait(&self, what: &str, ok: impl FnMut() -> bool) {
        self.wait_with(what, 0, ok)
    }

    /// Waits, and on timeout shows what machine `shown` sees.
    fn wait_with(&self, what: &str, shown: usize, mut ok: impl FnMut() -> bool) {
        let t = Instant::now();
        while !ok() {
            if t.elapsed() > Duration::from_secs(90) {
                let log = |p: &Path| {
                    let l = std::fs::read_to_string(p).unwrap_or_default();
                    l.lines().rev().take(20).collect::<Vec<_>>().join("\n")
                };
                panic!(
                    "timed out waiting for {what}\n{}\n--- init (newest first)\n{}\n--- join\n{}\n--- m{} (newest first)\n{}",
                    text(&self.kubectl_on(shown, &["get", "nodes,pods", "-o", "wide"])),
                    log(&self.data(0).join("skiff.log")),
                    log(&self.dir.path().join("join.log")),
                    shown + 1,
                    log(&self.data(shown).join("skiff.log")),
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Whether machine `i` sees exactly `n` live pods of the `web` Deployment, each bound
    /// to a node.
    fn web_pods_all_bound(&self, i: usize, n: usize) -> bool {
        let o = self.kubectl_on(i, &["get", "pods", "-l", "app=web", "-o", "json"]);
        let Ok(pods) = serde_json::from_slice::<Value>(&o.stdout) else { return false };
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let live: Vec<&Value> = items.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()).collect();
        live.len() == n && live.iter().all(|p| p["spec"]["nodeName"].is_string())
    }

    fn stop_join(&mut self) {
        if let Some(mut c) = self.join.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        self.stop_join();
        let mut failed = Vec::new();
        let agent = self.data(1).join("agent");
        if agent.exists() {
            let o =
                self.on(1, skiff_bin()).arg("reset-node").arg("--root").arg(&agent).args(self.agent_flags(1)).output();
            failed.extend(o.ok().filter(|o| !o.status.success()).map(|o| format!("reset-node: {}", text(&o))));
        }
        for i in 0..self.names.len() {
            if self.data(i).join("up.args").exists() {
                let o = self.on(i, skiff_bin()).args(["down", "--purge", "--data-dir"]).arg(self.data(i)).output();
                failed.extend(o.ok().filter(|o| !o.status.success()).map(|o| format!("skiff down: {}", text(&o))));
            }
        }
        // Deleting a namespace deletes its ends of the veth pairs, and so the pairs.
        for n in self.names.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "delete", n]).output();
        }
        if !failed.is_empty() && !std::thread::panicking() {
            panic!("cleaning up: {failed:?}");
        }
    }
}

/// A pod pinned to `node` whose httpd answers `/cgi-bin/who` with its name and the
/// address the request came from.
fn web_pod(name: &str, node: &str) -> Value {
    let script = "mkdir -p /www/cgi-bin\n\
        printf '#!/bin/sh\\nprintf \"Content-Type: text/plain\\\\r\\\\n\\\\r\\\\n%%s %%s\\\\n\" \"$(hostname)\" \"$REMOTE_ADDR\"\\n' > /www/cgi-bin/who\n\
        chmod +x /www/cgi-bin/who\n\
        exec httpd -f -p 80 -h /www\n";
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "httpd", "image": "skiff.local/busybox:latest",
                "command": ["sh", "-c", script],
                "readinessProbe": {"httpGet": {"path": "/cgi-bin/who", "port": 80}, "periodSeconds": 1},
            }],
        },
    })
}

/// `skiff init` on one machine, the printed `skiff join` on the other: each Node gets
/// its own pod CIDR from the controller-manager, each agent routes the other's through
/// the other's address, pods talk across machines with their own addresses, a Service
/// balances over pods on both, and a deleted Node's route goes.
#[test]
fn pods_on_two_machines_reach_each_other_and_a_service_spans_both() {
    let mut m = Machines::new('n', 2);
    let lines = m.init(&[]);
    let join: Vec<&str> = lines[0].split_whitespace().collect();
    assert!(matches!(join.as_slice(), ["skiff", "join", _, "--token", _, "--ca-hash", _]), "{lines:?}");

    // The second machine has only what the join command brings, plus an image.
    let image = m.dir.path().join("busybox.tar");
    run(Command::new(skiff_bin()).args(["image", "build-busybox", "--name", "skiff.local/busybox:latest"]).arg(&image));
    let log = std::fs::File::create(m.dir.path().join("join.log")).unwrap();
    let child = m
        .on(1, skiff_bin())
        .args(&join[1..])
        .args(["--node-name", "m2", "--data-dir"])
        .arg(m.data(1))
        .args(["--", "--runtime", "containerd", "--node-ip", ADDR[1], "--root"])
        .arg(m.data(1).join("agent"))
        .arg("--local-path-root")
        .arg(m.data(1).join("local-path"))
        .arg("--image-archive")
        .arg(&image)
        .args(m.agent_flags(1))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    m.join = Some(child);

    // Two Ready nodes, each with a /24 of the cluster's 10.88.0.0/16 of its own.
    let cidrs = || -> Vec<(String, String)> {
        let nodes = m.json(&["get", "nodes"]);
        let ready = |n: &Value| {
            n["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        };
        nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| ready(n) && n["spec"]["podCIDR"].is_string())
            .map(|n| {
                (
                    n["metadata"]["name"].as_str().unwrap().to_string(),
                    n["spec"]["podCIDR"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    m.wait("two Ready nodes with pod CIDRs", || cidrs().len() == 2);
    let cidrs = cidrs();
    let cidr_of = |node: &str| cidrs.iter().find(|(n, _)| n == node).unwrap().1.clone();
    let (c1, c2) = (cidr_of("m1"), cidr_of("m2"));
    assert_ne!(c1, c2);
    for c in [&c1, &c2] {
        assert!(c.starts_with("10.88.") && c.ends_with(".0/24"), "{c} is a /24 of 10.88.0.0/16");
    }
    let node = m.json(&["get", "node", "m2"]);
    assert_eq!(node["spec"]["podCIDRs"], json!([c2]));

    // Each machine routes the other's pod CIDR through the other's address.
    m.wait("the routes between the machines", || {
        m.routes(0).contains(&format!("{c2} via {}", ADDR[1])) && m.routes(1).contains(&format!("{c1} via {}", ADDR[0]))
    });

    // A pod CIDR is set once.
    let patch = json!({"spec": {"podCIDR": "10.88.200.0/24", "podCIDRs": ["10.88.200.0/24"]}}).to_string();
    let o = m.kubectl(&["patch", "node", "m1", "-p", &patch]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(
            r#"Node "m1" is invalid: spec.podCIDRs: Forbidden: node updates may not change podCIDR except from "" to valid"#
        ),
        "{}",
        text(&o)
    );

    // A pod on each machine, each with an address from its node's CIDR.
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}});
    let docs: Vec<String> =
        [web_pod("web-1", "m1"), web_pod("web-2", "m2"), service].iter().map(Value::to_string).collect();
    let file = m.dir.path().join("web.json");
    std::fs::write(&file, docs.join("\n")).unwrap(); // a stream of JSON objects
    m.k(&["apply", "-f", file.to_str().unwrap()]);
    let ip = |pod: &str| m.json(&["get", "pod", pod])["status"]["podIP"].as_str().unwrap_or_default().to_string();
    let ready = |pod: &str| {
        let p = m.json(&["get", "pod", pod]);
        p["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    };
    m.wait("both pods Ready", || ready("web-1") && ready("web-2"));
    let (ip1, ip2) = (ip("web-1"), ip("web-2"));
    let prefix = |c: &str| c.trim_end_matches("0/24").to_string();
    assert!(ip1.starts_with(&prefix(&c1)) && ip2.starts_with(&prefix(&c2)), "{ip1} in {c1}, {ip2} in {c2}");

    // Across machines, by pod address, and the other side sees the caller's own address.
    let who = |from: &str, to: &str| -> String {
        m.k(&["exec", from, "--", "timeout", "10", "wget", "-qO-", &format!("http://{to}/cgi-bin/who")])
            .trim()
            .to_string()
    };
    // httpd reports an IPv4 peer as `[::ffff:a.b.c.d]`.
    let seen = |reply: &str| {
        let addr = reply.split_whitespace().nth(1).unwrap_or_default();
        addr.trim_matches(['[', ']']).trim_start_matches("::ffff:").to_string()
    };
    let reply = who("web-1", &ip2);
    assert!(reply.starts_with("web-2 "), "{reply}");
    assert_eq!(seen(&reply), ip1, "no NAT between pods: {reply}");
    let reply = who("web-2", &ip1);
    assert!(reply.starts_with("web-1 "), "{reply}");
    assert_eq!(seen(&reply), ip2, "no NAT between pods: {reply}");

    // The Service, by its DNS name, answers from pods on both machines.
    let mut answered = BTreeSet::new();
    for _ in 0..60 {
        let reply = who("web-2", "web");
        answered.insert(reply.split_whitespace().next().unwrap_or_default().to_string());
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered, BTreeSet::from(["web-1".to_string(), "web-2".to_string()]));

    // The second machine leaves: its Node is deleted, and the first stops routing to it.
    m.stop_join();
    m.k(&["delete", "node", "m2"]);
    m.wait("m2's route to go", || !m.routes(0).contains(&c2));
}

/// Three control-plane machines (`skiff init`, then the printed `skiff join
/// --control-plane` on two more): a three-member store, and an API server, controller-
/// manager and scheduler on each. One machine is destroyed; the other two keep the
/// cluster: the store has quorum, writes go through either remaining API server, and a
/// controller-manager and scheduler on a survivor take over and scale a Deployment.
///
/// Then disaster recovery as docs/disaster-recovery.md describes it for such machines: a
/// backup, a write after it, a second machine lost (no quorum), the backup restored on
/// the last machine with bumped, compacted revisions: the backup's objects come back, the
/// later write does not, no resourceVersion goes backwards, and the controllers go on.
#[test]
fn three_control_plane_machines_survive_losing_one_and_recover_from_losing_two() {
    let m = Machines::new('c', 3);
    let store_flags = |i: usize| -> Vec<String> {
        ["--store-client-addr", &format!("{}:2379", ADDR[i]), "--store-peer-addr", &format!("{}:2380", ADDR[i])]
            .map(String::from)
            .to_vec()
    };
    let flags0: Vec<String> = [vec!["--runtime".to_string(), "fake".into()], store_flags(0)].concat();
    let lines = m.init(&flags0.iter().map(String::as_str).collect::<Vec<_>>());
    let join: Vec<&str> = lines[1].split_whitespace().collect();
    assert!(
        matches!(
            join.as_slice(),
            ["skiff", "join", _, "--token", _, "--ca-hash", _, "--control-plane", "--certificate-key", _]
        ),
        "{lines:?}"
    );
    // The printed line, then `--` and `skiff init`'s flags for machine `i`.
    let join_on = |i: usize| -> Output {
        let (addr, node) = (ADDR[i], format!("m{}", i + 1));
        m.on(i, skiff_bin())
            .args(&join[1..])
            .arg("--")
            .arg("--data-dir")
            .arg(m.data(i))
            .args(["--runtime", "fake", "--bind", &format!("{addr}:6443"), "--node-ip", addr, "--node-name", &node])
            .args(store_flags(i))
            .output()
            .unwrap()
    };
    for i in 1..ADDR.len() {
        let o = join_on(i);
        assert!(o.status.success(), "skiff join --control-plane on m{}: {}", i + 1, text(&o));
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            stdout.trim(),
            format!("export KUBECONFIG={}", m.data(i).join("apiserver/admin.kubeconfig").display())
        );
    }

    // Three voting store members, named after their machines.
    let pki = m.data(1).join("apiserver/pki");
    let etcdctl_on = |i: usize, args: &[&str]| {
        m.on(i, "etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=https://{}:2379", ADDR[i]))
            .arg(format!("--cacert={}", pki.join("ca.crt").display()))
            .arg(format!("--cert={}", pki.join("apiserver-etcd-client.crt").display()))
            .arg(format!("--key={}", pki.join("apiserver-etcd-client.key").display()))
            .args(["--dial-timeout=3s", "--command-timeout=5s"])
            .args(args)
            .output()
            .unwrap()
    };
    let o = etcdctl_on(1, &["member", "list", "-w", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let members: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut names: Vec<&str> =
        members["members"].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["m1", "m2", "m3"]);
    assert!(members["members"].as_array().unwrap().iter().all(|x| x["isLearner"] != true), "{members}");

    // Every machine's API server serves the same cluster.
    let ready_nodes = |i: usize| -> usize {
        let o = m.kubectl_on(i, &["get", "nodes", "-o", "json"]);
        let Ok(nodes) = serde_json::from_slice::<Value>(&o.stdout) else { return 0 };
        nodes["items"].as_array().map_or(0, |items| {
            items
                .iter()
                .filter(|n| {
                    n["status"]["conditions"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
                })
                .count()
        })
    };
    for i in 0..3 {
        m.wait_with("three Ready nodes", i, || ready_nodes(i) == 3);
    }
    m.k_on(1, &["create", "deployment", "web", "--image=nginx", "--replicas=3"]);
    let available = |i: usize| m.json_on(i, &["get", "deployment", "web"])["status"]["availableReplicas"].as_i64();
    m.wait_with("web's 3 replicas", 2, || available(2) == Some(3));

    // The first machine is destroyed: every process killed, its link cut.
    let pid = std::fs::read_to_string(m.data(0).join("skiff.pid")).unwrap();
    run(Command::new("kill").args(["-KILL", pid.trim()]));
    run(Command::new("ip").args(["-n", &m.names[0], "link", "set", "eth0", "down"]));

    // The store keeps quorum: a write through the second machine's API server goes
    // through (a request caught by the new store leader's election may fail, and is
    // retried as a client would), and the third machine reads it.
    m.wait_with("a write after the loss", 1, || {
        m.kubectl_on(1, &["create", "configmap", "after-loss", "--from-literal=written=yes"]).status.success()
            || m.kubectl_on(1, &["get", "configmap", "after-loss"]).status.success()
    });
    let cm = m.json_on(2, &["get", "configmap", "after-loss"]);
    assert_eq!(cm["data"]["written"], "yes");

    // A controller-manager and a scheduler of the survivors take over (once the dead
    // leader's Lease expires): scaled to 5, the ReplicaSet gets 5 pods, all bound.
    m.k_on(2, &["scale", "deployment", "web", "--replicas=5"]);
    m.wait_with("5 pods of web, all scheduled", 2, || m.web_pods_all_bound(2, 5));
    let lease = m.json_on(2, &["-n", "kube-system", "get", "lease", "kube-controller-manager"]);
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_string();
    assert!(!holder.ends_with(&format!("_{}", pid.trim())), "the lease moved off the dead machine: {holder}");

    // A backup from a survivor (what a timer runs), then a write it does not hold.
    let backup = m.dir.path().join("backup.db");
    run(m
        .on(1, skiff_bin())
        .args(["snapshot", "save"])
        .arg(&backup)
        .args(["--endpoints", &format!("{}:2379", ADDR[1])])
        .arg("--cacert")
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("apiserver-etcd-client.crt"))
        .arg("--key")
        .arg(pki.join("apiserver-etcd-client.key")));
    m.k_on(1, &["create", "configmap", "after-backup"]);
    // (The API's list, not kubectl's: kubectl's -o json list carries no resourceVersion.)
    let list_rv = |i: usize| -> u64 {
        let list: Value =
            serde_json::from_str(&m.k_on(i, &["get", "--raw", "/api/v1/namespaces/default/configmaps"])).unwrap();
        list["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
    };
    let seen = list_rv(1);

    // The second machine is lost too: the last one's store has no quorum.
    let pid = std::fs::read_to_string(m.data(1).join("skiff.pid")).unwrap();
    run(Command::new("kill").args(["-KILL", pid.trim()]));
    run(Command::new("ip").args(["-n", &m.names[1], "link", "set", "eth0", "down"]));
    let o = m.kubectl_on(2, &["create", "configmap", "no-quorum", "--request-timeout=5s"]);
    assert!(!o.status.success(), "a write without quorum: {}", text(&o));

    // Restore on the last machine: stop it, restore the backup into a new store
    // directory (the store member keeps its name and address), start it as before.
    run(m.on(2, skiff_bin()).args(["down", "--data-dir"]).arg(m.data(2)));
    std::fs::rename(m.data(2).join("store"), m.data(2).join("store.lost")).unwrap();
    let peer = format!("https://{}:2380", ADDR[2]);
    run(Command::new(skiff_bin())
        .args(["snapshot", "restore"])
        .arg(&backup)
        .args(["--name", "m3", "--data-dir"])
        .arg(m.data(2).join("store"))
        .args(["--initial-cluster", &format!("m3={peer}"), "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster-token", "restored", "--bump-revision", "1000000", "--mark-compacted"]));
    let o = join_on(2);
    assert!(o.status.success(), "starting m3 again: {}", text(&o));

    // The backup's objects are back, the later write is not.
    assert_eq!(m.json_on(2, &["get", "configmap", "after-loss"])["data"]["written"], "yes");
    assert!(!m.kubectl_on(2, &["get", "configmap", "after-backup"]).status.success(), "written after the backup");
    // No resourceVersion goes backwards: lists and writes are past everything seen, and a
    // watch resuming from before is told to list again.
    let now = list_rv(2);
    assert!(now > seen, "list resourceVersion {now} after {seen}");
    let watch = m.k_on(
        2,
        &[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={seen}&timeoutSeconds=2"),
        ],
    );
    assert!(watch.contains("\"code\":410"), "{watch}");
    let o = etcdctl_on(2, &["member", "list", "-w", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let members: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");

    // The controllers carry on (once the Lease from the backup expires).
    m.k_on(2, &["scale", "deployment", "web", "--replicas=6"]);
    m.wait_with("6 pods of web after the restore", 2, || m.web_pods_all_bound(2, 6));
}
