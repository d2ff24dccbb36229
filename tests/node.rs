//! The node agent on a real containerd + runc with CNI networking (`skiff agent
//! --runtime containerd`), driven by kubectl. Needs root, containerd, runc, the CNI
//! plugins and busybox-static (`make test` installs them).
//!
//! Each test gets its own private containerd (under its temp dir), its own bridge and pod
//! subnet, and its own cgroup parent; `skiff reset-node` removes all of it afterwards,
//! also when the test fails. The only traffic is from this host to pod addresses on the
//! test's own bridge.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;
use crate::controllers::Plane;

/// A control plane plus one real node.
struct Node {
    plane: Plane,
    /// Flags naming this test's root, bridge, subnet and cgroup parent.
    flags: Vec<String>,
    root: PathBuf,
    /// The agent's log port.
    port: u16,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.plane.kill("agent");
        let out = Command::new(skiff_bin()).arg("reset-node").args(&self.flags).output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!("reset-node failed: {}", text(&o));
            }
        }
        let config = self.root.join("containerd/config.toml").display().to_string();
        if process_with_arg(&config) && !std::thread::panicking() {
            panic!("a containerd of this test ({config}) outlived it");
        }
    }
}

impl Node {
    /// `net` picks the test's bridge (`sktest<net>`) and subnet (`10.<200+net>.0.0/24`).
    fn start(net: u8) -> Node {
        Node::start_with(net, &[])
    }

    /// With extra agent flags (of the containerd runtime, so reset-node takes them too).
    fn start_with(net: u8, extra: &[String]) -> Node {
        let plane = Plane::control_plane();
        let root = plane.api.dir.path().join("agent");
        let flags: Vec<String> = [
            "--root",
            &root.display().to_string(),
            "--bridge",
            &format!("sktest{net}"),
            "--pod-cidr",
            &format!("10.{}.0.0/24", 200 + net),
            "--cgroup-parent",
            &format!("/skiff-test-{net}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .collect();
        let image = plane.api.dir.path().join("busybox.tar");
        let built = Command::new(skiff_bin())
            .args(["image", "build-busybox", "--name", "skiff.local/busybox:test"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(built.status.success(), "building the test image: {}", text(&built));
        let mut node = Node { plane, flags, root, port: free_port() };
        node.start_agent(Some(&image));
        node.plane.wait_for("the node to be Ready", Duration::from_secs(60), |p| p.ready_nodes() >= 1);
        node
    }

    fn start_agent(&mut self, image: Option<&std::path::Path>) {
        let mut args: Vec<String> =
            ["agent", "--runtime", "containerd", "--node-name", "real", "--node-ip", "127.0.0.1"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        args.extend(self.flags.iter().cloned());
        args.extend(["--port".into(), self.port.to_string()]);
        args.extend(["--crash-loop-backoff", "1s", "--crash-loop-backoff-max", "2s"].map(String::from));
        args.extend(["--node-lease-renew-interval", "1s", "--sync-period", "300ms"].map(String::from));
        args.extend(["--local-path-root".into(), self.root.join("local-path").display().to_string()]);
        if let Some(i) = image {
            args.extend(["--image-archive".into(), i.display().to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.plane.spawn("agent", &refs);
    }

    fn apply(&self, yaml: &str) {
        let o = self.plane.api.kubectl_with(
            "/usr/lib/google-cloud-sdk/bin/kubectl.1.32",
            &["apply", "-f", "-"],
            Some(yaml),
        );
        assert!(o.status.success(), "kubectl apply: {}", text(&o));
    }

    fn pod(&self, name: &str) -> Value {
        self.plane.json(&["get", "pod", name])
    }

    /// Waits until the pod satisfies `ok`; the pod as it was then.
    fn wait_pod(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let seen = std::cell::RefCell::new(Value::Null);
        self.plane.wait_for(&format!("pod {name}: {what}"), Duration::from_secs(60), |p| {
            let pod = p.json(&["get", "pod", name]);
            let good = ok(&pod);
            *seen.borrow_mut() = pod;
            good
        });
        seen.into_inner()
    }
}

/// A `kubectl port-forward` running in the background, killed on drop; its stderr goes
/// to a file so it can be read while it runs.
struct Forward {
    child: std::process::Child,
    err: tempfile::NamedTempFile,
}

impl Forward {
    fn start(n: &Node, args: &[&str]) -> Forward {
        let err = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
            .arg("--kubeconfig")
            .arg(n.plane.api.kubeconfig())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(err.reopen().unwrap())
            .spawn()
            .unwrap();
        Forward { child, err }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.err.path()).unwrap_or_default()
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether any process has `arg` among its arguments.
fn process_with_arg(arg: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()).any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| c.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
            .unwrap_or(false)
    })
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    pod["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

fn running(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["status"]["containerStatuses"].as_array().is_some_and(|cs| cs.iter().all(|c| c["ready"] == true))
}

/// GET http://ip:port/path from this host; the body, or None if it cannot connect.
fn http_get(ip: &str, port: u16, path: &str) -> Option<String> {
    let addr = format!("{ip}:{port}").parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

const WEB: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: greeting}
stringData: {word: hello}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 2
  volumes:
  - {name: shared, emptyDir: {}}
  - {name: secret, secret: {secretName: greeting}}
  - {name: out, hostPath: {path: OUT_DIR, type: DirectoryOrCreate}}
  containers:
  - name: httpd
    image: skiff.local/busybox:test
    command: [httpd, -f, -p, "80", -h, /shared]
    ports: [{containerPort: 80}]
    volumeMounts: [{name: shared, mountPath: /shared}]
  - name: writer
    image: skiff.local/busybox:test
    lifecycle:
      preStop: {exec: {command: [sh, -c, "echo stopping > /out/prestop"]}}
    env:
    - name: WORD
      valueFrom: {secretKeyRef: {name: greeting, key: word}}
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: MESSAGE
      value: "$(WORD) from $(POD_NAME)"
    command: [sh, -c]
    args:
    - |
      echo "$MESSAGE" > /shared/index.html
      cp /etc/secret/word /shared/secret-file
      echo started
      until wget -q -O /shared/seen http://127.0.0.1:80/index.html 2>/dev/null; do sleep 0.2; done
      exec sleep 3600
    volumeMounts:
    - {name: shared, mountPath: /shared}
    - {name: secret, mountPath: /etc/secret, readOnly: true}
    - {name: out, mountPath: /out}
"#;

/// A pod of two containers serves over its own address; they share localhost and an
/// emptyDir; a secret arrives as env and as a file; a killed agent's pods are adopted
/// by the next one without restarting; deletion waits for the grace period and the
/// network, volumes and cgroups go with the pod.
#[test]
fn a_pod_runs_as_real_containers_on_its_own_network() {
    let mut n = Node::start(1);
    let out_dir = n.root.parent().unwrap().join("out");
    n.apply(&WEB.replace("OUT_DIR", &out_dir.display().to_string()));
    let pod = n.wait_pod("web", "Running and Ready", running);
    let ip = pod["status"]["podIP"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.201.0."), "pod IP {ip} is from the test's subnet");
    assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
    let httpd = container(&pod, "httpd");
    assert!(httpd["containerID"].as_str().unwrap().starts_with("containerd://"), "{httpd}");
    assert!(httpd["imageID"].as_str().unwrap().contains("@sha256:"), "{httpd}");

    n.plane.wait_for("the writer's page", Duration::from_secs(30), |_| http_get(&ip, 80, "/seen").is_some());
    assert_eq!(http_get(&ip, 80, "/").as_deref(), Some("hello from web\n"));
    // The writer fetched the page from httpd over the pod's localhost.
    assert_eq!(http_get(&ip, 80, "/seen").as_deref(), Some("hello from web\n"));
    assert_eq!(http_get(&ip, 80, "/secret-file").as_deref(), Some("hello"));

    // Logs through the API server, from the agent.
    assert_eq!(n.plane.k(&["logs", "web", "-c", "writer"]), "started\n");
    assert_eq!(n.plane.k(&["logs", "web", "-c", "writer", "--tail=1"]), "started\n");
    let bad =
        n.plane.api.kubectl_with("/usr/lib/google-cloud-sdk/bin/kubectl.1.32", &["logs", "web", "-c", "nope"], None);
    assert!(text(&bad).contains("container nope is not valid for pod web"), "{}", text(&bad));

    // Usage measured from the containers' cgroups, as `kubectl top` shows it.
    n.plane.wait_for("pod metrics", Duration::from_secs(30), |p| {
        let m = p.api.kubectl_with(
            "/usr/lib/google-cloud-sdk/bin/kubectl.1.32",
            &["top", "pod", "web", "--containers"],
            None,
        );
        m.status.success() && text(&m).contains("httpd") && text(&m).contains("writer")
    });
    let (code, body) = n.plane.api.raw("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web", None);
    assert_eq!(code, 200, "{body}");
    let usage: Value = serde_json::from_str(&body).unwrap();
    let mem = usage["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["usage"]["memory"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert!(mem.iter().all(|m| m != "0"), "real containers use some memory: {usage}");

    // Exec through the API server (WebSocket, v5 channel protocol): output, exit codes, stdin.
    assert_eq!(n.plane.k(&["exec", "web", "-c", "writer", "--", "cat", "/etc/secret/word"]), "hello");
    // The projected service account volume: a token bound to the pod, the CA, the
    // namespace; the token authenticates as the pod's ServiceAccount.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let read = |f: &str| n.plane.k(&["exec", "web", "-c", "writer", "--", "cat", &format!("{sa}/{f}")]);
    assert_eq!(read("namespace"), "default");
    assert!(read("ca.crt").starts_with("-----BEGIN CERTIFICATE-----"));
    let kc = crate::apiserver::user_kubeconfig(&n.plane.api, "pod-sa", &format!("    token: {}", read("token")));
    let o = crate::apiserver::kubectl_as(&kc, &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "system:serviceaccount:default:default", "{}", text(&o));
    let o = crate::apiserver::kubectl_as(&kc, &["get", "secrets"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot list resource"), "{}", text(&o));
    let o = n.plane.api.kubectl_with(
        "/usr/lib/google-cloud-sdk/bin/kubectl.1.32",
        &["exec", "web", "-c", "writer", "--", "sh", "-c", "echo out; echo err >&2; exit 3"],
        None,
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("err"), "{}", text(&o));
    let o = n.plane.api.kubectl_with(
        "/usr/lib/google-cloud-sdk/bin/kubectl.1.32",
        &["exec", "-i", "web", "-c", "writer", "--", "tr", "a-z", "A-Z"],
        Some("piped through\n"),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "PIPED THROUGH\n", "{}", text(&o));

    // exec -it from a terminal (util-linux `script` makes one): the process gets a tty.
    let cmd = format!(
        "/usr/lib/google-cloud-sdk/bin/kubectl.1.32 --kubeconfig {} exec -it web -c writer -- sh -c 'tty; echo done'",
        n.plane.api.kubeconfig().display()
    );
    let o =
        Command::new("script").args(["-qec", &cmd, "/dev/null"]).stdin(std::process::Stdio::null()).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("/dev/pts/") && out.contains("done"), "{}", text(&o));

    // Port forwarding through the API server (SPDY/3.1, portforward.k8s.io) to the pod's
    // own localhost: connections in turn, then a port nothing listens on.
    let local = free_port();
    let pf = Forward::start(&n, &["port-forward", "pod/web", &format!("{local}:80")]);
    n.plane.wait_for("port-forward to serve", Duration::from_secs(20), |_| {
        http_get("127.0.0.1", local, "/").as_deref() == Some("hello from web\n")
    });
    assert_eq!(http_get("127.0.0.1", local, "/secret-file").as_deref(), Some("hello"));
    assert_eq!(http_get("127.0.0.1", local, "/seen").as_deref(), Some("hello from web\n"));
    drop(pf);
    let closed = free_port();
    let pf = Forward::start(&n, &["port-forward", "pod/web", &format!("{closed}:81")]);
    n.plane.wait_for("kubectl to report the refused port", Duration::from_secs(20), |_| {
        let _ = http_get("127.0.0.1", closed, "/");
        pf.stderr().contains("error forwarding port 81 to pod default/web")
    });
    drop(pf);

    // The agent's /metrics: the kubelet's and cAdvisor's series for this pod.
    let (code, body) = http_get_plain(&format!("127.0.0.1:{}", n.port), "/metrics");
    assert_eq!(code, 200, "{body}");
    let samples = prometheus(&body);
    let find = |name: &str, container: Option<&str>| {
        samples
            .iter()
            .find(|(m, l, _)| m == name && container.is_none_or(|c| l.get("container").map(String::as_str) == Some(c)))
            .map(|x| x.2)
    };
    assert!(find("kubelet_running_pods", None) >= Some(1.0), "{body}");
    assert!(find("kubelet_started_containers_total", None) >= Some(2.0), "{body}");
    assert!(find("kubelet_pod_start_duration_seconds_count", None) >= Some(1.0), "{body}");
    assert!(find("container_memory_working_set_bytes", Some("httpd")) > Some(0.0), "{body}");
    assert_eq!(find("kube_pod_container_status_restarts_total", Some("writer")), Some(0.0), "{body}");

    // The pod's cgroup, network namespace and volume directory exist on the node.
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let netns = PathBuf::from(format!("/var/run/netns/skiff-{uid}"));
    let pod_dir = n.root.join("pods").join(&uid);
    assert!(netns.exists() && pod_dir.join("volumes/shared/index.html").exists());

    // Kill the agent (its containerd goes with it); the next one adopts the running containers.
    let (started, id) = (httpd["state"]["running"]["startedAt"].clone(), httpd["containerID"].clone());
    n.plane.kill("agent");
    assert_eq!(http_get(&ip, 80, "/").as_deref(), Some("hello from web\n"), "pods outlive the agent");
    let config = n.root.join("containerd/config.toml").display().to_string();
    n.plane.wait_for("the killed agent's containerd to stop", Duration::from_secs(10), |_| !process_with_arg(&config));
    n.start_agent(None);
    std::thread::sleep(Duration::from_secs(2));
    let pod = n.wait_pod("web", "Running after the agent restarted", running);
    let httpd = container(&pod, "httpd");
    assert_eq!(httpd["restartCount"], 0, "{httpd}");
    assert_eq!(httpd["containerID"], id, "the same container");
    assert_eq!(http_get(&ip, 80, "/").as_deref(), Some("hello from web\n"));
    assert_eq!(httpd["state"]["running"]["startedAt"], started, "not restarted");

    // httpd as PID 1 ignores SIGTERM: deletion waits out the 2 s grace period, then kills.
    let t = Instant::now();
    n.plane.k(&["delete", "pod", "web", "--wait=true", "--timeout=60s"]);
    assert!(t.elapsed() >= Duration::from_secs(2), "deleted after {:?}, before the grace period", t.elapsed());
    let hook = std::fs::read_to_string(out_dir.join("prestop")).unwrap_or_default();
    assert_eq!(hook, "stopping\n", "the preStop hook ran before the container stopped");
    assert!(http_get(&ip, 80, "/").is_none(), "nothing answers at the old pod address");
    assert!(!netns.exists(), "the network namespace is removed");
    assert!(!pod_dir.exists(), "the pod's directory (volumes, logs) is removed");
}

const JOBS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: fails}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: skiff.local/busybox:test, command: [sh, -c, "echo hi; exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: counter}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: skiff.local/busybox:test, command: [sh, -c, "for i in 1 2 3; do echo line $i; sleep 1; done"]}
---
apiVersion: v1
kind: Pod
metadata: {name: live-http}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.local/busybox:test
    command: [sh, -c, "mkdir -p /w; echo ok > /w/healthz; (sleep 2; rm /w/healthz) & exec httpd -f -p 8080 -h /w"]
    livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: live-exec}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.local/busybox:test
    command: [sh, -c, "touch /tmp/alive; sleep 2; rm /tmp/alive; exec sleep 3600"]
    livenessProbe: {exec: {command: [cat, /tmp/alive]}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: ready-later}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.local/busybox:test
    command: [sh, -c, "sleep 2; touch /tmp/ready; exec sleep 3600"]
    readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: never-ready}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.local/busybox:test
    command: [sleep, "3600"]
    readinessProbe: {tcpSocket: {port: 9999}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata: {name: initialized}
spec:
  restartPolicy: Never
  volumes: [{name: work, emptyDir: {}}]
  initContainers:
  - {name: first, image: skiff.local/busybox:test, command: [sh, -c, "echo one > /work/msg"], volumeMounts: [{name: work, mountPath: /work}]}
  - {name: second, image: skiff.local/busybox:test, command: [sh, -c, "echo two >> /work/msg"], volumeMounts: [{name: work, mountPath: /work}]}
  containers:
  - {name: main, image: skiff.local/busybox:test, command: [cat, /work/msg], volumeMounts: [{name: work, mountPath: /work}]}
---
apiVersion: v1
kind: Pod
metadata: {name: escape}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{name: data, emptyDir: {}}]
  initContainers:
  - {name: plant, image: skiff.local/busybox:test, command: [ln, -s, /, /data/root], volumeMounts: [{name: data, mountPath: /data}]}
  containers:
  - {name: main, image: skiff.local/busybox:test, command: [sleep, "3600"], volumeMounts: [{name: data, mountPath: /host, subPath: root}]}
---
apiVersion: v1
kind: Pod
metadata: {name: init-fails}
spec:
  restartPolicy: Never
  initContainers:
  - {name: first, image: skiff.local/busybox:test, command: [sh, -c, "exit 2"]}
  containers:
  - {name: main, image: skiff.local/busybox:test, command: [sh, -c, "echo should not run"]}
---
apiVersion: v1
kind: Pod
metadata: {name: succeeds}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: skiff.local/busybox:test, command: [sh, -c, "exit 0"]}
---
apiVersion: v1
kind: Pod
metadata: {name: crashes}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: skiff.local/busybox:test, command: [sh, -c, "echo crash; exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: skiff.local/busybox:test
    command: [sh, -c, "dd if=/dev/zero of=/dev/null bs=256M count=1"]
    resources: {limits: {memory: 32Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: missing}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: skiff.local/not-there:1}
---
apiVersion: v1
kind: Pod
metadata: {name: nosecret}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.local/busybox:test
    env: [{name: X, valueFrom: {secretKeyRef: {name: absent, key: k}}}]
"#;

const HOOKS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.local/busybox:test
    command: [sh, -c, "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: hooked}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.local/busybox:test
    command: [sleep, "3600"]
    lifecycle:
      postStart: {exec: {command: [sh, -c, "echo set by postStart > /tmp/hook"]}}
---
apiVersion: v1
kind: Pod
metadata: {name: hook-fails}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: skiff.local/busybox:test
    command: [sleep, "3600"]
    lifecycle:
      postStart: {exec: {command: [sh, -c, "exit 7"]}}
"#;

fn terminated(pod: &Value) -> &Value {
    &container(pod, "main")["state"]["terminated"]
}

/// Exit codes decide the phase; a crashing container backs off and its restartCount
/// grows; the OOM killer is reported as OOMKilled; a missing image or secret leaves the
/// container waiting with the kubelet's reason.
#[test]
fn containers_exit_crash_and_are_oom_killed_as_kubernetes_reports() {
    let n = Node::start(2);
    n.apply(JOBS);
    let p = n.wait_pod("fails", "Failed", |p| p["status"]["phase"] == "Failed");
    assert_eq!(terminated(&p)["exitCode"], 3);
    assert_eq!(terminated(&p)["reason"], "Error");
    assert_eq!(n.plane.k(&["logs", "fails"]), "hi\n");
    // Following a running container streams its lines until it exits.
    n.wait_pod("counter", "Running", |p| p["status"]["phase"] == "Running");
    assert_eq!(n.plane.k(&["logs", "-f", "counter"]), "line 1\nline 2\nline 3\n");
    let p = n.wait_pod("succeeds", "Succeeded", |p| p["status"]["phase"] == "Succeeded");
    assert_eq!(terminated(&p)["exitCode"], 0);
    assert_eq!(terminated(&p)["reason"], "Completed");

    let p = n.wait_pod("crashes", "restarted twice", |p| container(p, "main")["restartCount"].as_i64() >= Some(2));
    assert_eq!(p["status"]["phase"], "Running");
    let p = n.wait_pod("crashes", "in CrashLoopBackOff", |p| {
        container(p, "main")["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    });
    let c = container(&p, "main");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1, "{c}");
    assert!(c["state"]["waiting"]["message"].as_str().unwrap().contains("back-off"), "{c}");
    assert_eq!(n.plane.k(&["logs", "crashes", "--previous"]), "crash\n");

    // kubectl attach streams what the container writes from now on, not before.
    n.apply(HOOKS);
    n.wait_pod("ticker", "Running", running);
    std::thread::sleep(Duration::from_millis(1500));
    let mut att = Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
        .arg("--kubeconfig")
        .arg(n.plane.api.kubeconfig())
        .args(["attach", "ticker"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (seen, mut out) = (seen.clone(), att.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(k) = out.read(&mut buf) {
                if k == 0 {
                    break;
                }
                seen.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..k]));
            }
        })
    };
    let t = Instant::now();
    while !seen.lock().unwrap().contains("tick ") && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = att.kill();
    let _ = att.wait();
    let _ = reader.join();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains("tick "), "attach shows new output: {seen:?}");
    assert!(!seen.lines().any(|l| l == "tick 1"), "and not what came before it: {seen:?}");

    // postStart hooks run in the new container before it counts as started; a failing
    // one gets the container killed, reported as PostStartHookError.
    n.wait_pod("hooked", "Running", running);
    assert_eq!(n.plane.k(&["exec", "hooked", "--", "cat", "/tmp/hook"]), "set by postStart\n");
    let p = n.wait_pod("hook-fails", "Failed", |p| p["status"]["phase"] == "Failed");
    let msg = terminated(&p)["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.starts_with("PostStartHookError"), "{}", p["status"]);

    // Init containers run in order before the main one; a failed one fails the pod.
    n.wait_pod("initialized", "Succeeded", |p| p["status"]["phase"] == "Succeeded");
    assert_eq!(n.plane.k(&["logs", "initialized"]), "one\ntwo\n");
    assert_eq!(n.plane.k(&["logs", "initialized", "-c", "second"]), "");
    let p = n.wait_pod("init-fails", "Failed", |p| p["status"]["phase"] == "Failed");
    assert_eq!(p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"], 2, "{}", p["status"]);
    assert_eq!(container(&p, "main")["state"]["waiting"]["reason"], "PodInitializing", "{}", p["status"]);

    // A symlink planted in a volume cannot make a subPath mount reach the host.
    let p = n.wait_pod("escape", "refused its subPath", |p| {
        container(p, "main")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    });
    let msg = container(&p, "main")["state"]["waiting"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("leads outside volume"), "{msg}");

    // Probes: failing liveness (HTTP, exec) restarts; readiness gates Ready.
    for name in ["live-http", "live-exec"] {
        let p = n.wait_pod(name, "restarted by its liveness probe", |p| {
            container(p, "main")["restartCount"].as_i64() >= Some(1)
        });
        let c = container(&p, "main");
        assert!(c["lastState"]["terminated"].is_object(), "{c}");
    }
    n.wait_pod("ready-later", "Ready once its file exists", running);
    let p = n.pod("never-ready");
    assert_eq!(p["status"]["phase"], "Running");
    assert_eq!(container(&p, "main")["ready"], false, "a failing readiness probe keeps it unready");
    let ready = p["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap().clone();
    assert_eq!(ready["status"], "False", "{ready}");

    let p = n.wait_pod("hog", "Failed", |p| p["status"]["phase"] == "Failed");
    assert_eq!(terminated(&p)["reason"], "OOMKilled", "{}", terminated(&p));
    assert_eq!(terminated(&p)["exitCode"], 137);

    let p = n.wait_pod("missing", "waiting for its image", |p| {
        matches!(container(p, "main")["state"]["waiting"]["reason"].as_str(), Some("ErrImagePull" | "ImagePullBackOff"))
    });
    let msg = container(&p, "main")["state"]["waiting"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("skiff.local/not-there:1"), "{msg}");
    let o = n.plane.api.kubectl_with("/usr/lib/google-cloud-sdk/bin/kubectl.1.32", &["logs", "missing"], None);
    assert!(!o.status.success() && text(&o).contains("is waiting to start"), "{}", text(&o));
    let p = n.wait_pod("nosecret", "waiting for its secret", |p| {
        container(p, "main")["state"]["waiting"]["reason"] == "CreateContainerConfigError"
    });
    assert_eq!(container(&p, "main")["state"]["waiting"]["message"], "secret \"absent\" not found");

    n.plane.k(&["delete", "pods", "--all", "--wait=true", "--timeout=60s"]);
}

const SERVICE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  replicas: 3
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: skiff.local/busybox:test
        command: [sh, -c, "hostname > /www/index.html; exec httpd -f -p 8080 -h /www"]
        ports: [{containerPort: 8080, name: web}]
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  type: NodePort
  selector: {app: hello}
  ports: [{port: 80, targetPort: web}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: skiff.local/busybox:test, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Service
metadata: {name: nobody}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
"#;

/// A Deployment of three httpd replicas answers through its Service's VIP from the
/// node and from another pod, and through its NodePort; every replica gets traffic; a
/// Service without endpoints refuses connections at once.
#[test]
fn services_balance_over_ready_pods_by_vip_and_node_port() {
    let n = Node::start(3);
    n.apply(SERVICE);
    n.plane.wait_for("3 ready replicas", Duration::from_secs(60), |p| {
        p.json(&["get", "deploy", "hello"])["status"]["readyReplicas"] == 3
    });
    let svc = n.plane.json(&["get", "svc", "hello"]);
    let vip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
    let pods: BTreeSet<String> =
        n.plane.live_pods("app=hello").iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();

    // From the node: every answer is one of the replicas, and all of them answer.
    let mut seen = BTreeSet::new();
    n.plane.wait_for("the VIP to answer", Duration::from_secs(30), |_| http_get(&vip, 80, "/").is_some());
    for _ in 0..60 {
        let body = http_get(&vip, 80, "/").expect("the VIP answers");
        seen.insert(body.trim().to_string());
    }
    assert_eq!(seen, pods, "answers came from exactly the replicas");
    // Through the NodePort on the node's address.
    assert!(pods.contains(http_get("127.0.0.1", node_port, "/").expect("the NodePort answers").trim()));

    // From another pod, by VIP.
    let client = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: main, image: skiff.local/busybox:test, command: [sh, -c, \"for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O - http://{vip}/; done\"]}}\n"
    );
    n.apply(&client);
    n.wait_pod("client", "Succeeded", |p| p["status"]["phase"] == "Succeeded");
    let answers = n.plane.k(&["logs", "client"]);
    assert_eq!(answers.lines().count(), 10, "{answers}");
    assert!(answers.lines().all(|l| pods.contains(l)), "{answers}");

    // Cluster DNS: a Service by its full and its short name, a StatefulSet pod by its
    // stable name; names outside the cluster are not resolved (nothing leaves the node).
    n.wait_pod("db-0", "Running", running);
    let db_ip = n.pod("db-0")["status"]["podIP"].as_str().unwrap().to_string();
    let script = "nslookup hello.default.svc.cluster.local; nslookup db-0.db.default.svc.cluster.local; \
                  wget -q -O - http://hello/; nslookup example.com || echo outside-refused";
    let dns = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: resolver}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: main, image: skiff.local/busybox:test, command: [sh, -c, {script:?}]}}\n"
    );
    n.apply(&dns);
    n.wait_pod("resolver", "finished", |p| matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")));
    let out = n.plane.k(&["logs", "resolver"]);
    let after = |name: &str| out.split(name).nth(1).unwrap_or_default().to_string();
    assert!(after("hello.default.svc.cluster.local").contains(&format!("Address: {vip}")), "{out}");
    assert!(after("db-0.db.default.svc.cluster.local").contains(&format!("Address: {db_ip}")), "{out}");
    assert!(out.lines().any(|l| pods.contains(l.trim())), "the short name reached a replica: {out}");
    assert!(out.contains("outside-refused"), "{out}");

    // No endpoints: refused at once rather than hanging.
    let nobody = n.plane.json(&["get", "svc", "nobody"])["spec"]["clusterIP"].as_str().unwrap().to_string();
    n.plane.wait_for("the empty service to refuse", Duration::from_secs(30), |_| {
        let addr = format!("{nobody}:80").parse().unwrap();
        matches!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    });

    // Scaled to one: only that replica answers.
    n.plane.k(&["scale", "deploy", "hello", "--replicas=1"]);
    n.plane.wait_for("one replica left", Duration::from_secs(60), |p| p.live_pods("app=hello").len() == 1);
    let left = n.plane.live_pods("app=hello")[0]["metadata"]["name"].as_str().unwrap().to_string();
    n.plane.wait_for("the VIP to answer from the last replica only", Duration::from_secs(30), |_| {
        (0..10).all(|_| http_get(&vip, 80, "/").is_some_and(|b| b.trim() == left))
    });
    n.plane.k(&["delete", "deploy,sts", "--all", "--wait=true"]);
    n.plane.k(&["delete", "pods", "--all", "--wait=true", "--timeout=60s"]);
}

/// Debian's docker-registry on a loopback port of its own, storing under `dir`; killed
/// on drop.
struct LocalRegistry {
    child: std::process::Child,
    port: u16,
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalRegistry {
    fn start(dir: &std::path::Path) -> LocalRegistry {
        let port = free_port();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (apt-get install docker-registry; `make test` does)");
        let t = Instant::now();
        while http_get("127.0.0.1", port, "/v2/").is_none() {
            assert!(t.elapsed() < Duration::from_secs(20), "the registry did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        LocalRegistry { child, port }
    }
}

/// Images come from a registry as their imagePullPolicy says: a missing image is pulled
/// (manifest, config and layers over the distribution API) and runs; `Always` asks the
/// registry again; an unknown image is ErrImagePull then ImagePullBackOff; `Never` does
/// not pull.
#[test]
fn images_are_pulled_from_a_registry_as_the_pull_policy_says() {
    let n = Node::start(5);
    let reg = LocalRegistry::start(&n.root.parent().unwrap().join("registry"));
    let socket = n.root.join("containerd/state/containerd.sock").display().to_string();
    let ctr = |args: &[&str]| {
        let o = Command::new("ctr").args(["-a", &socket, "-n", "skiff"]).args(args).output().unwrap();
        assert!(o.status.success(), "ctr {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    // Put the test image into the registry with containerd's own client, then forget it
    // on the node, so that only a pull can bring it back.
    let remote = format!("127.0.0.1:{}/team/web:1", reg.port);
    ctr(&["images", "tag", "skiff.local/busybox:test", &remote]);
    ctr(&["images", "push", "--plain-http", &remote]);
    ctr(&["images", "rm", &remote]);
    assert!(!ctr(&["images", "ls", "-q"]).contains(&remote));

    let pod = |name: &str, image: &str, policy: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  \
             containers:\n  - {{name: c, image: \"{image}\", imagePullPolicy: {policy}, command: [httpd, -f, -p, \"80\", -h, /www]}}\n"
        )
    };
    n.apply(&pod("pulled", &remote, "IfNotPresent"));
    let p = n.wait_pod("pulled", "Running", running);
    let id = container(&p, "c")["imageID"].as_str().unwrap_or_default().to_string();
    assert!(id.starts_with(&format!("127.0.0.1:{}/team/web@sha256:", reg.port)), "imageID {id}");
    assert!(ctr(&["images", "ls", "-q"]).contains(&remote), "the image is in containerd now");
    let ip = p["status"]["podIP"].as_str().unwrap().to_string();
    assert!(http_get(&ip, 80, "/").is_some_and(|b| b.contains("hello from skiff")), "the pulled image serves");

    n.apply(&pod("always", &remote, "Always"));
    let p = n.wait_pod("always", "Running", running);
    assert_eq!(container(&p, "c")["imageID"].as_str(), Some(id.as_str()), "the same manifest");
    // A new image under the same tag: `Always` asks the registry and gets it.
    let rootfs = n.root.parent().unwrap().join("rootfs2");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/httpd")).unwrap();
    std::fs::create_dir_all(rootfs.join("www")).unwrap();
    std::fs::write(rootfs.join("www/index.html"), "version two\n").unwrap();
    let tar = n.root.parent().unwrap().join("v2.tar");
    let o = Command::new(skiff_bin())
        .args(["image", "build", "--rootfs"])
        .arg(&rootfs)
        .args(["--name", &remote, "--cmd", "/bin/httpd"])
        .arg(&tar)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new(skiff_bin())
        .args(["image", "import", "--containerd-namespace", "v2", "--containerd-socket", &socket])
        .arg(&tar)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("ctr")
        .args(["-a", &socket, "-n", "v2", "images", "push", "--plain-http", &remote])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    n.apply(&pod("always2", &remote, "Always"));
    let p = n.wait_pod("always2", "Running", running);
    let id2 = container(&p, "c")["imageID"].as_str().unwrap_or_default().to_string();
    assert!(id2.starts_with(&format!("127.0.0.1:{}/team/web@sha256:", reg.port)) && id2 != id, "{id2} after {id}");
    let ip2 = p["status"]["podIP"].as_str().unwrap().to_string();
    assert_eq!(http_get(&ip2, 80, "/").as_deref(), Some("version two\n"), "the new image runs");

    let missing = format!("127.0.0.1:{}/team/nope:1", reg.port);
    n.apply(&pod("missing", &missing, "IfNotPresent"));
    let p = n.wait_pod("missing", "ImagePullBackOff after ErrImagePull", |p| {
        container(p, "c")["state"]["waiting"]["reason"] == "ImagePullBackOff"
    });
    let message = container(&p, "c")["state"]["waiting"]["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains(&format!("Failed to pull image \"{missing}\"")) && message.contains("not found"),
        "{message}"
    );
    assert_eq!(p["status"]["phase"], "Pending");

    n.apply(&pod("never", &format!("127.0.0.1:{}/team/web:2", reg.port), "Never"));
    let p = n.wait_pod("never", "ErrImageNeverPull", |p| {
        container(p, "c")["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    });
    let message = container(&p, "c")["state"]["waiting"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("is not present with pull policy of Never"), "{message}");
}

/// The course's nginx Deployment, Secret and Service from examples/, unmodified: the
/// node pulls `nginx:1.25` through a registry mirror (Docker Hub is not reachable from
/// here) holding a stand-in built from Debian's nginx (scripts/nginx-rootfs.sh), and
/// three real nginx processes serve behind the Service.
#[test]
fn the_courses_nginx_deployment_runs_as_real_containers() {
    let rootfs = std::env::var("SKIFF_NGINX_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-images/nginx-rootfs"));
    assert!(
        rootfs.join("usr/sbin/nginx").exists(),
        "{} is missing: run `make test-deps` (scripts/nginx-rootfs.sh)",
        rootfs.display()
    );
    let reg_dir = tempfile::tempdir().unwrap();
    let reg = LocalRegistry::start(reg_dir.path());
    let mirror = format!("docker.io=http://127.0.0.1:{}", reg.port);
    let n = Node::start_with(6, &["--registry-mirror".into(), mirror]);

    // Build the image and push it to the registry from a containerd namespace the agent
    // does not use, so the node has to pull it.
    let tar = reg_dir.path().join("nginx.tar");
    let remote = format!("127.0.0.1:{}/library/nginx:1.25", reg.port);
    let o = Command::new(skiff_bin())
        .args(["image", "build", "--rootfs"])
        .arg(&rootfs)
        .args(["--name", &remote, "--cmd", "nginx", "--cmd", "-g", "--cmd", "daemon off;"])
        .arg(&tar)
        .output()
        .unwrap();
    assert!(o.status.success(), "skiff image build: {}", text(&o));
    let socket = n.root.join("containerd/state/containerd.sock");
    let o = Command::new(skiff_bin())
        .args(["image", "import", "--containerd-namespace", "push", "--containerd-socket"])
        .arg(&socket)
        .arg(&tar)
        .output()
        .unwrap();
    assert!(o.status.success(), "skiff image import: {}", text(&o));
    let o = Command::new("ctr")
        .arg("-a")
        .arg(&socket)
        .args(["-n", "push", "images", "push", "--plain-http", &remote])
        .output()
        .unwrap();
    assert!(o.status.success(), "ctr push: {}", text(&o));

    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples");
    for f in ["nginx-secret.yaml", "nginx-deployment.yaml", "nginx-service.yaml"] {
        let path = examples.join(f).display().to_string();
        let o = n.plane.api.kubectl_with("/usr/lib/google-cloud-sdk/bin/kubectl.1.32", &["apply", "-f", &path], None);
        assert!(o.status.success(), "kubectl apply -f {f}: {}", text(&o));
    }
    n.plane.wait_for("3 nginx replicas available", Duration::from_secs(90), |p| {
        p.json(&["get", "deployment", "nginx"])["status"]["availableReplicas"] == 3
    });
    let pods = n.plane.json(&["get", "pods", "-l", "app=nginx"]);
    for p in pods["items"].as_array().unwrap() {
        let c = container(p, "nginx");
        assert!(c["image"].as_str().unwrap_or_default().contains("nginx:1.25"), "{c}");
        assert!(c["imageID"].as_str().unwrap_or_default().starts_with("docker.io/library/nginx@sha256:"), "{c}");
    }
    let ip = n.plane.json(&["get", "service", "nginx"])["spec"]["clusterIP"].as_str().unwrap().to_string();
    n.plane.wait_for("nginx to answer on the Service", Duration::from_secs(30), |_| {
        http_get(&ip, 80, "/").is_some_and(|b| b.contains("Welcome to nginx!"))
    });
    // Each request is in some replica's access log, which kubectl logs shows.
    n.plane.wait_for("the access log", Duration::from_secs(30), |p| {
        let _ = http_get(&ip, 80, "/from-the-test");
        let items = p.json(&["get", "pods", "-l", "app=nginx"]);
        items["items"].as_array().unwrap().iter().any(|pod| {
            let name = pod["metadata"]["name"].as_str().unwrap();
            p.k(&["logs", name]).contains("GET /from-the-test HTTP/1.0")
        })
    });
}
