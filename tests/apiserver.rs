//! `skiff apiserver` on a one-member store, driven by the real kubectl 1.32 and 1.33
//! (each with a fresh cache dir) over HTTPS with the generated kubeconfig, and by raw
//! HTTP requests for what kubectl hides (status codes, watch streams, pagination).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

pub(crate) const KUBECTL_132: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";
const KUBECTL_133: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

pub(crate) struct Api {
    pub(crate) store: Cluster,
    pub(crate) dir: tempfile::TempDir,
    child: Child,
    http_port: u16,
    https_port: u16,
    extra: Vec<String>,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Api {
    pub(crate) fn start() -> Api {
        Self::start_with(&[])
    }

    /// With extra `skiff apiserver` flags.
    pub(crate) fn start_with(extra: &[&str]) -> Api {
        Api::start_on(Cluster::start(1), extra)
    }

    /// An API server on `store`.
    pub(crate) fn start_on(store: Cluster, extra: &[&str]) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let (https_port, http_port) = (free_port(), free_port());
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(&store, dir.path(), https_port, http_port, &extra);
        let api = Api { store, dir, child, http_port, https_port, extra };
        api.wait_ready();
        api
    }

    fn spawn(store: &Cluster, dir: &Path, https: u16, http: u16, extra: &[String]) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("apiserver.log")).unwrap();
        Command::new(skiff_bin())
            .args(["apiserver", "--store-endpoints", &store.endpoints()])
            .args(["--bind", &format!("127.0.0.1:{https}")])
            .args(["--insecure-bind", &format!("127.0.0.1:{http}")])
            .arg("--data-dir")
            .arg(dir.join("api"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub(crate) fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.kubeconfig().exists() && self.raw("GET", "/readyz", None).0 == 200 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the API server did not start: {}",
            std::fs::read_to_string(self.dir.path().join("apiserver.log")).unwrap()
        );
    }

    pub(crate) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports and data dir (after `stop`).
    pub(crate) fn restart(&mut self) {
        self.child = Self::spawn(&self.store, self.dir.path(), self.https_port, self.http_port, &self.extra);
        self.wait_ready();
    }

    pub(crate) fn http_port(&self) -> u16 {
        self.http_port
    }

    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("api/admin.kubeconfig")
    }

    pub(crate) fn kubectl_with(&self, bin: &str, args: &[&str], stdin: Option<&str>) -> Output {
        self.kubectl_env(bin, &[], args, stdin)
    }

    /// kubectl `bin` with extra environment variables (`KUBE_EDITOR`, ...).
    pub(crate) fn kubectl_env(&self, bin: &str, env: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> Output {
        let cache = self.dir.path().join(format!("cache-{}", Path::new(bin).file_name().unwrap().to_string_lossy()));
        let mut c = Command::new(bin);
        // kubectl edit leaves its temporary files behind: in the test's directory.
        c.env("TMPDIR", self.dir.path()).envs(env.iter().copied());
        c.arg("--kubeconfig").arg(self.kubeconfig()).arg("--cache-dir").arg(cache).args(args);
        output_with_input(c, stdin)
    }

    /// kubectl 1.32; panics with its output unless it succeeds.
    pub(crate) fn k(&self, args: &[&str]) -> String {
        let o = self.kubectl_with(KUBECTL_132, args, None);
        assert!(o.status.success(), "kubectl {args:?} failed:\n{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub(crate) fn k_in(&self, args: &[&str], stdin: &str) -> String {
        let o = self.kubectl_with(KUBECTL_132, args, Some(stdin));
        assert!(o.status.success(), "kubectl {args:?} failed:\n{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// kubectl that must fail; its stderr.
    pub(crate) fn k_fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.kubectl_with(KUBECTL_132, args, stdin);
        assert!(!o.status.success(), "kubectl {args:?} should have failed:\n{}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub(crate) fn k_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.k(&a)).unwrap()
    }

    /// One plain-HTTP request: (status, body).
    pub(crate) fn raw(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, String) {
        raw_http(self.http_port, method, path, body)
    }

    pub(crate) fn raw_json(&self, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, Value) {
        let (code, b) = self.raw(method, path, body);
        (code, serde_json::from_str(&b).unwrap_or_else(|e| panic!("{method} {path}: {code} {b:?}: {e}")))
    }
}

/// One plain-HTTP request to the API server's insecure port: (status, body).
pub(crate) fn raw_http(port: u16, method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    let (ct, b) = body.unwrap_or(("", ""));
    let ct_line = if ct.is_empty() { String::new() } else { format!("Content-Type: {ct}\r\n") };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{ct_line}Content-Length: {}\r\nConnection: close\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let chunked = head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    (code, if chunked { dechunk(body) } else { body.to_string() })
}

/// A chunked HTTP/1.1 body's data (large lists are sent in chunks).
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  labels: {app: nginx}
spec:
  replicas: 3
  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: {app: nginx}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports:
        - containerPort: 80
";

#[test]
fn kubectl_discovery_version_and_namespaces() {
    let api = Api::start();
    // The dispatcher picks the kubectl matching the server's minor.
    let v = api.k(&["version", "-o", "json"]);
    let v: Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["serverVersion"]["minor"], "32");
    let ns = api.k(&["get", "ns"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.lines().any(|l| l.starts_with(n) && l.contains("Active")), "{ns}");
    }
    // Short names and categories come from discovery.
    let res = api.k(&["api-resources"]);
    assert!(
        res.lines().any(|l| l.starts_with("deployments") && l.contains("deploy") && l.contains("apps/v1")),
        "{res}"
    );
    assert!(api.k(&["get", "po"]).is_empty());
    // kubectl 1.33 works too.
    let o = api.kubectl_with(KUBECTL_133, &["get", "deploy"], None);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn kubectl_create_get_apply_scale_label_delete() {
    let api = Api::start();
    api.k_in(&["create", "-f", "-"], DEPLOYMENT);
    let get = api.k(&["get", "deploy"]);
    let header: Vec<&str> = get.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert!(get.contains("nginx   0/3"), "{get}");

    let d = api.k_json(&["get", "deploy", "nginx"]);
    assert_eq!(d["metadata"]["generation"], 1);
    assert_eq!(d["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(d["metadata"]["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    assert!(d["metadata"]["resourceVersion"].as_str().unwrap().parse::<i64>().unwrap() > 1);
    // Defaults as Kubernetes sets them.
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");

    // Creating it again: AlreadyExists, as kubectl prints it.
    let err = api.k_fails(&["create", "-f", "-"], Some(DEPLOYMENT));
    assert!(err.contains("Error from server (AlreadyExists): error when creating \"STDIN\": deployments.apps \"nginx\" already exists"), "{err}");

    // Label (merge patch), scale (scale subresource), apply (strategic merge), server-side apply.
    api.k(&["label", "deploy", "nginx", "tier=web"]);
    api.k(&["annotate", "deploy", "nginx", "note=hello"]);
    api.k(&["scale", "deploy", "nginx", "--replicas=5"]);
    let d = api.k_json(&["get", "deploy", "nginx"]);
    assert_eq!(d["metadata"]["labels"]["tier"], "web");
    assert_eq!(d["metadata"]["annotations"]["note"], "hello");
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(d["metadata"]["generation"], 2, "labels do not bump the generation, replicas do");
    let out = api.k_in(&["apply", "-f", "-"], &DEPLOYMENT.replace("nginx:1.25", "nginx:1.26"));
    assert!(out.contains("deployment.apps/nginx configured"), "{out}");
    let d = api.k_json(&["get", "deploy", "nginx"]);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.26");
    assert_eq!(d["spec"]["replicas"], 3);
    let out = api.k_in(&["apply", "--server-side", "-f", "-"], &DEPLOYMENT.replace("replicas: 3", "replicas: 2"));
    assert!(out.contains("serverside-applied"), "{out}");
    assert_eq!(api.k_json(&["get", "deploy", "nginx"])["spec"]["replicas"], 2);
    // Server-side apply creates what does not exist.
    let out = api.k_in(&["apply", "--server-side", "-f", "-"], &DEPLOYMENT.replace("name: nginx\n", "name: other\n"));
    assert!(out.contains("deployment.apps/other serverside-applied"), "{out}");

    let all = api.k(&["get", "all"]);
    assert!(all.contains("deployment.apps/nginx") && all.contains("deployment.apps/other"), "{all}");
    let by_label = api.k(&["get", "deploy", "-l", "tier=web", "-o", "name"]);
    assert_eq!(by_label, "deployment.apps/nginx\n");

    api.k(&["delete", "deploy", "nginx"]);
    let err = api.k_fails(&["get", "deploy", "nginx"], None);
    assert!(err.contains("Error from server (NotFound): deployments.apps \"nginx\" not found"), "{err}");
    // Foreground deletion waits for the garbage collector (not running here): the
    // Deployment stays, marked, with the finalizer the collector acts on.
    api.k(&["delete", "deploy", "other", "--cascade=foreground", "--wait=false"]);
    let d = api.k_json(&["get", "deploy", "other"]);
    assert_eq!(d["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    assert!(d["metadata"]["deletionTimestamp"].is_string());
}

#[test]
fn service_addresses_are_allocated_once() {
    let api = Api::start();
    api.k(&["create", "service", "clusterip", "a", "--tcp=80:8080"]);
    api.k(&["create", "service", "nodeport", "b", "--tcp=80:8080"]);
    let a = api.k_json(&["get", "svc", "a"]);
    let b = api.k_json(&["get", "svc", "b"]);
    let ip = |s: &Value| s["spec"]["clusterIP"].as_str().unwrap().to_string();
    assert_ne!(ip(&a), ip(&b));
    for s in [&a, &b] {
        let o: Vec<u8> = ip(s).split('.').map(|x| x.parse().unwrap()).collect();
        assert!(o[0] == 10 && (96..112).contains(&o[1]), "{} is outside 10.96.0.0/12", ip(s));
        assert_eq!(s["spec"]["clusterIPs"], json!([ip(s)]));
    }
    let node_port = b["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port));
    assert!(a["spec"]["ports"][0]["nodePort"].is_null());

    // Asking for what is taken, or outside the range, is refused with Kubernetes' words.
    let svc = |name: &str, extra: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  {extra}\n  ports: [{{port: 80, nodePort: 0}}]\n")
    };
    let err = api.k_fails(&["create", "-f", "-"], Some(&svc("c", &format!("clusterIP: {}", ip(&a)))));
    assert!(err.contains("provided IP is already allocated"), "{err}");
    let err = api.k_fails(&["create", "-f", "-"], Some(&svc("c", "clusterIP: 192.168.0.1")));
    assert!(err.contains("The range of valid IPs is 10.96.0.0/12"), "{err}");
    let taken = svc("c", "type: NodePort").replace("nodePort: 0", &format!("nodePort: {node_port}"));
    let err = api.k_fails(&["create", "-f", "-"], Some(&taken));
    assert!(
        err.contains("spec.ports[0].nodePort: Invalid value") && err.contains("provided port is already allocated"),
        "{err}"
    );
    // An update keeps the address; changing it is refused.
    api.k(&["label", "svc", "a", "x=y"]);
    assert_eq!(ip(&api.k_json(&["get", "svc", "a"])), ip(&a));
    let err = api.k_fails(&["patch", "svc", "a", "-p", r#"{"spec":{"clusterIP":"10.96.0.77"}}"#], None);
    assert!(err.contains("may not change once set"), "{err}");
    // Deleting frees them for others.
    api.k(&["delete", "svc", "a", "b"]);
    api.k_in(&["create", "-f", "-"], &svc("c", &format!("clusterIP: {}", ip(&a))));
    api.k_in(&["create", "-f", "-"], &taken.replace("name: c", "name: d"));
    assert_eq!(api.k_json(&["get", "svc", "d"])["spec"]["ports"][0]["nodePort"], json!(node_port));
}

#[test]
fn binding_eviction_graceful_deletion_and_finalizers() {
    let api = Api::start();
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
        .to_string()
    };
    let pods = "/api/v1/namespaces/default/pods";
    assert_eq!(api.raw("POST", pods, Some(("application/json", &pod("p")))).0, 201);
    let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
    let (code, st) =
        api.raw_json("POST", &format!("{pods}/p/binding"), Some(("application/json", &binding.to_string())));
    assert_eq!((code, st["status"].as_str()), (201, Some("Success")), "{st}");
    let (code, st) =
        api.raw_json("POST", &format!("{pods}/p/binding"), Some(("application/json", &binding.to_string())));
    assert_eq!(code, 409);
    assert!(st["message"].as_str().unwrap().contains("pod p is already assigned to node \"n1\""), "{st}");
    let p = api.k_json(&["get", "pod", "p"]);
    assert_eq!(p["spec"]["nodeName"], "n1");
    assert!(p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "PodScheduled" && c["status"] == "True"));

    // A pod on a node is only marked: the node agent stops it, then deletes it with grace 0.
    api.k(&["delete", "pod", "p", "--wait=false"]);
    let p = api.k_json(&["get", "pod", "p"]);
    assert_eq!(p["metadata"]["deletionGracePeriodSeconds"], 30);
    assert!(p["metadata"]["deletionTimestamp"].is_string());
    let (code, _) = api.raw("DELETE", &format!("{pods}/p"), Some(("application/json", r#"{"gracePeriodSeconds":0}"#)));
    assert_eq!(code, 200);
    assert_eq!(api.raw("GET", &format!("{pods}/p"), None).0, 404);

    // Eviction deletes an unbound pod at once.
    assert_eq!(api.raw("POST", pods, Some(("application/json", &pod("q")))).0, 201);
    let ev = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "q"}});
    assert_eq!(api.raw("POST", &format!("{pods}/q/eviction"), Some(("application/json", &ev.to_string()))).0, 201);
    assert_eq!(api.raw("GET", &format!("{pods}/q"), None).0, 404);

    // Orphan deletion leaves a finalizer; removing it completes the deletion.
    api.k(&["create", "configmap", "cm", "--from-literal=a=b"]);
    api.k(&["delete", "cm", "cm", "--cascade=orphan", "--wait=false"]);
    assert_eq!(api.k_json(&["get", "cm", "cm"])["metadata"]["finalizers"], json!(["orphan"]));
    api.k(&["patch", "cm", "cm", "--type=merge", "-p", r#"{"metadata":{"finalizers":null}}"#]);
    assert_eq!(api.raw("GET", "/api/v1/namespaces/default/configmaps/cm", None).0, 404);

    // A namespace being deleted takes no new content and goes once finalized.
    api.k(&["create", "ns", "gone"]);
    api.k(&["delete", "ns", "gone", "--wait=false"]);
    assert_eq!(api.k_json(&["get", "ns", "gone"])["status"]["phase"], "Terminating");
    let err = api.k_fails(&["create", "configmap", "x", "-n", "gone"], None);
    assert!(err.contains("unable to create new content in namespace gone because it is being terminated"), "{err}");
    let fin =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gone"}, "spec": {"finalizers": []}});
    let (code, _) = api.raw("PUT", "/api/v1/namespaces/gone/finalize", Some(("application/json", &fin.to_string())));
    assert_eq!(code, 200);
    assert_eq!(api.raw("GET", "/api/v1/namespaces/gone", None).0, 404);
}

#[test]
fn services_secrets_and_configmaps_from_yaml() {
    let api = Api::start();
    let manifest = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: conf}
data: {a: '1', b: '2'}
";
    api.k_in(&["apply", "-f", "-"], manifest);
    let svc = api.k_json(&["get", "svc", "web"]);
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 80);
    let secret = api.k_json(&["get", "secret", "creds"]);
    assert_eq!(secret["data"]["password"], "czNjcmV0", "stringData is merged into data as base64");
    assert!(secret.get("stringData").is_none());
    assert_eq!(secret["type"], "Opaque");
    let table = api.k(&["get", "secret,cm"]);
    assert!(
        table.lines().any(|l| l.starts_with("secret/creds") && l.contains("Opaque") && l.contains(" 1 ")),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("configmap/conf") && l.contains(" 2 ")), "{table}");
}

#[test]
fn status_codes_for_bad_requests() {
    let api = Api::start();
    let base = "/apis/apps/v1/namespaces/default/deployments";
    // Malformed JSON and YAML.
    let (code, s) = api.raw_json("POST", base, Some(("application/json", "{\"metadata\": ")));
    assert_eq!((code, s["reason"].as_str()), (400, Some("BadRequest")), "{s}");
    assert_eq!(s["kind"], "Status");
    let (code, s) = api.raw_json("POST", base, Some(("application/yaml", "metadata: [unclosed")));
    assert_eq!((code, s["reason"].as_str()), (400, Some("BadRequest")), "{s}");
    // No Content-Type means JSON (the Python client sends none).
    let (code, _) = api.raw_json(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(("", "{\"metadata\":{\"name\":\"plain\"}}")),
    );
    assert_eq!(code, 201);
    // Wrong kind or apiVersion for the URL.
    let (code, s) = api.raw_json(
        "POST",
        base,
        Some(("application/json", r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x"}}"#)),
    );
    assert_eq!(code, 400, "{s}");
    // Fields of the wrong type are refused (not stored to break every client that lists
    // pods), in Kubernetes' words; and a merge patch cannot sneak them in either.
    let pods = "/api/v1/namespaces/default/pods";
    for body in [
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"odd"},"spec":{"containers":["x", 5]}}"#,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"odd"},"spec":"x"}"#,
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"odd"},"spec":{"containers":[{"name":"c","ports":[{"containerPort":"eighty"}]}]}}"#,
    ] {
        let (code, s) = api.raw_json("POST", pods, Some(("application/json", body)));
        assert_eq!((code, s["reason"].as_str()), (400, Some("BadRequest")), "{body}: {s}");
        assert!(
            s["message"].as_str().unwrap().starts_with("Pod in version \"v1\" cannot be handled as a Pod: "),
            "{s}"
        );
    }
    let ok = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"fine"},"spec":{"containers":[{"name":"c","image":"busybox"}]}}"#;
    assert_eq!(api.raw_json("POST", pods, Some(("application/json", ok))).0, 201);
    let (code, s) = api.raw_json(
        "PATCH",
        &format!("{pods}/fine"),
        Some(("application/merge-patch+json", r#"{"spec":{"nodeName":7}}"#)),
    );
    assert_eq!(code, 400, "{s}");
    // Invalid names and labels: 422 Invalid with field causes.
    let (code, s) = api.raw_json(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        Some(("application/json", r#"{"metadata":{"name":"Bad_Name","labels":{"ok":"-no-"}}}"#)),
    );
    assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")), "{s}");
    assert!(
        s["message"].as_str().unwrap().starts_with("ConfigMap \"Bad_Name\" is invalid: [metadata.name: Invalid value"),
        "{s}"
    );
    assert_eq!(s["details"]["causes"].as_array().unwrap().len(), 2, "{s}");
    // A namespace that does not exist.
    let (code, s) = api.raw_json(
        "POST",
        "/api/v1/namespaces/nowhere/configmaps",
        Some(("application/json", r#"{"metadata":{"name":"a"}}"#)),
    );
    assert_eq!((code, s["message"].as_str()), (404, Some("namespaces \"nowhere\" not found")), "{s}");
    // A protobuf body without an object, and a media type nobody decodes.
    let (code, s) = api.raw_json("POST", base, Some(("application/vnd.kubernetes.protobuf", "k8s\0")));
    assert_eq!((code, s["reason"].as_str()), (400, Some("BadRequest")), "{s}");
    assert!(s["message"].as_str().unwrap().starts_with("the protobuf request body is malformed"), "{s}");
    let (code, s) = api.raw_json("POST", base, Some(("application/xml", "<x/>")));
    assert_eq!((code, s["reason"].as_str()), (415, Some("UnsupportedMediaType")), "{s}");
    // Optimistic concurrency: an update with a stale resourceVersion is a 409 Conflict.
    let (_, cm) = api.raw_json("GET", "/api/v1/namespaces/default/configmaps/plain", None);
    let mut stale = cm.clone();
    stale["data"] = json!({"v": "1"});
    let (code, _) = api.raw_json(
        "PUT",
        "/api/v1/namespaces/default/configmaps/plain",
        Some(("application/json", &stale.to_string())),
    );
    assert_eq!(code, 200);
    stale["data"] = json!({"v": "2"});
    let (code, s) = api.raw_json(
        "PUT",
        "/api/v1/namespaces/default/configmaps/plain",
        Some(("application/json", &stale.to_string())),
    );
    assert_eq!((code, s["reason"].as_str()), (409, Some("Conflict")), "{s}");
    assert!(s["message"]
        .as_str()
        .unwrap()
        .contains("the object has been modified; please apply your changes to the latest version and try again"));
    // Unknown paths and methods.
    assert_eq!(api.raw("GET", "/apis/nope/v1/things", None).0, 404);
    assert_eq!(api.raw("POST", "/api/v1/namespaces/default/configmaps/plain", Some(("application/json", "{}"))).0, 405);
}

#[test]
fn list_pages_selectors_and_watch_with_410() {
    let api = Api::start();
    let cms = "/api/v1/namespaces/default/configmaps";
    for i in 0..7 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        let body = json!({"metadata": {"name": format!("cm{i}"), "labels": {"tier": tier}}}).to_string();
        assert_eq!(api.raw("POST", cms, Some(("application/json", &body))).0, 201);
    }
    // limit/continue walks every item once, at one revision.
    let mut names = Vec::new();
    let mut path = format!("{cms}?limit=3");
    let mut rvs = Vec::new();
    loop {
        let (code, l) = api.raw_json("GET", &path, None);
        assert_eq!(code, 200, "{l}");
        rvs.push(l["metadata"]["resourceVersion"].as_str().unwrap().to_string());
        names
            .extend(l["items"].as_array().unwrap().iter().map(|i| i["metadata"]["name"].as_str().unwrap().to_string()));
        match l["metadata"]["continue"].as_str() {
            Some(c) => path = format!("{cms}?limit=3&continue={c}"),
            None => break,
        }
    }
    assert_eq!(names, (0..7).map(|i| format!("cm{i}")).collect::<Vec<_>>());
    // A continue token can only continue its own list.
    use base64::Engine;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": 1, "start": "/registry/clusterroles/a"}).to_string());
    let (code, s) = api.raw_json("GET", &format!("{cms}?limit=3&continue={forged}"), None);
    assert_eq!((code, s["reason"].as_str()), (400, Some("BadRequest")), "{s}");
    assert!(rvs.windows(2).all(|w| w[0] == w[1]), "{rvs:?}");
    // Selectors, every operator.
    let count = |sel: &str| {
        api.raw_json("GET", &format!("{cms}?labelSelector={sel}"), None).1["items"].as_array().unwrap().len()
    };
    assert_eq!(count("tier%3Deven"), 4);
    assert_eq!(count("tier!%3Deven"), 3);
    assert_eq!(count("tier%20in%20(odd,none)"), 3);
    assert_eq!(count("tier%20notin%20(odd)"), 4);
    assert_eq!(count("tier"), 7);
    assert_eq!(count("!tier"), 0);
    let (_, l) = api.raw_json("GET", &format!("{cms}?fieldSelector=metadata.name%3Dcm3"), None);
    assert_eq!(l["items"].as_array().unwrap().len(), 1);

    // A watch from the list's revision sees later changes, in order, as JSON lines.
    let rv = rvs[0].clone();
    let port = api.http_port;
    let watcher = watch_thread(
        port,
        format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=3"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let body = json!({"metadata": {"name": "late"}, "data": {"a": "1"}}).to_string();
    assert_eq!(api.raw("POST", cms, Some(("application/json", &body))).0, 201);
    let patch = r#"{"data":{"a":"2"}}"#;
    assert_eq!(api.raw("PATCH", &format!("{cms}/late"), Some(("application/merge-patch+json", patch))).0, 200);
    assert_eq!(api.raw("DELETE", &format!("{cms}/late"), None).0, 200);
    let events = watcher.join().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"], "{events:?}");
    assert_eq!(events[1]["object"]["data"]["a"], "2");
    let rvs: Vec<i64> =
        events.iter().map(|e| e["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()).collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");

    // After compaction, a watch from before it gets a 410 Expired ERROR event.
    let (_, l) = api.raw_json("GET", cms, None);
    let now: i64 = l["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    ok(&api.store.endpoints(), &["compact", &now.to_string()]);
    let (code, body) = api.raw("GET", &format!("{cms}?watch=true&resourceVersion=2&timeoutSeconds=2"), None);
    assert_eq!(code, 200);
    let ev: Value = body
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(|v| v.get("type").is_some())
        .unwrap_or_else(|| panic!("{body:?}"));
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
}

/// Writes start from the watch cache's copy of an object when it has one (no store
/// read): concurrent patches still lose nothing, a stale resourceVersion still gets
/// 409, and a pod is still bound only once.
#[test]
fn writes_that_start_from_the_watch_cache_lose_no_update() {
    let api = Api::start();
    let cms = "/api/v1/namespaces/default/configmaps";
    let body = json!({"metadata": {"name": "shared"}, "data": {}}).to_string();
    assert_eq!(api.raw("POST", cms, Some(("application/json", &body))).0, 201);
    // A list starts the configmaps' watch cache.
    assert_eq!(api.raw("GET", cms, None).0, 200);
    let port = api.http_port();
    let writers: Vec<_> = (0..6)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..8 {
                    let patch = json!({"data": {format!("w{t}-{i}"): "1"}}).to_string();
                    let path = "/api/v1/namespaces/default/configmaps/shared";
                    // A 409 (every attempt lost its race) is sent again, as clients do.
                    let sent = (0..20).any(|_| {
                        let (code, out) = raw_http(port, "PATCH", path, Some(("application/merge-patch+json", &patch)));
                        assert!(code == 200 || code == 409, "{code} {out}");
                        code == 200
                    });
                    assert!(sent, "patch {t}-{i} never went through");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let (_, cm) = api.raw_json("GET", &format!("{cms}/shared"), None);
    let keys = cm["data"].as_object().unwrap().len();
    assert_eq!(keys, 48, "{cm}");
    // A PUT naming a revision that is no longer current, also once the cache has it.
    let mut stale = cm.clone();
    stale["data"] = json!({"v": "1"});
    assert_eq!(api.raw("PUT", &format!("{cms}/shared"), Some(("application/json", &stale.to_string()))).0, 200);
    let (_, now) = api.raw_json("GET", &format!("{cms}/shared"), None);
    assert_eq!(now["data"], json!({"v": "1"}));
    stale["data"] = json!({"v": "2"});
    let (code, s) = api.raw_json("PUT", &format!("{cms}/shared"), Some(("application/json", &stale.to_string())));
    assert_eq!((code, s["reason"].as_str()), (409, Some("Conflict")), "{s}");
    // The same with a status write naming its revision, and a binding.
    let pods = "/api/v1/namespaces/default/pods";
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    assert_eq!(api.raw("POST", pods, Some(("application/json", &pod.to_string()))).0, 201);
    assert_eq!(api.raw("GET", pods, None).0, 200);
    let (_, p) = api.raw_json("GET", &format!("{pods}/p"), None);
    let mut st = p.clone();
    st["status"]["phase"] = json!("Running");
    let (code, out) = api.raw_json("PUT", &format!("{pods}/p/status"), Some(("application/json", &st.to_string())));
    assert_eq!((code, out["status"]["phase"].as_str()), (200, Some("Running")), "{out}");
    st["status"]["phase"] = json!("Failed");
    let (code, s) = api.raw_json("PUT", &format!("{pods}/p/status"), Some(("application/json", &st.to_string())));
    assert_eq!((code, s["reason"].as_str()), (409, Some("Conflict")), "{s}");
    let binding = |node: &str| {
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": node}})
            .to_string()
    };
    let (code, _) = api.raw("POST", &format!("{pods}/p/binding"), Some(("application/json", &binding("n1"))));
    assert_eq!(code, 201);
    let (code, s) = api.raw_json("POST", &format!("{pods}/p/binding"), Some(("application/json", &binding("n2"))));
    assert_eq!(code, 409, "{s}");
    assert!(s["message"].as_str().unwrap().contains("is already assigned to node \"n1\""), "{s}");
    let (_, p) = api.raw_json("GET", &format!("{pods}/p"), None);
    assert_eq!((p["spec"]["nodeName"].as_str(), p["status"]["phase"].as_str()), (Some("n1"), Some("Running")), "{p}");
}

/// Lists come from the API server's watch cache: a paged list shows the objects as they
/// were at its first page while they change underneath it, a list right after a write
/// shows the write, and `resourceVersion`/`resourceVersionMatch` mean what they mean in
/// Kubernetes.
#[test]
fn a_paged_list_shows_one_revision_while_objects_change() {
    let api = Api::start();
    let cms = "/api/v1/namespaces/default/configmaps";
    let names = |l: &Value| -> Vec<String> {
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| format!("{}={}", i["metadata"]["name"].as_str().unwrap(), i["data"]["v"].as_str().unwrap()))
            .collect()
    };
    for i in 0..7 {
        let body = json!({"metadata": {"name": format!("cm{i}")}, "data": {"v": "1"}}).to_string();
        assert_eq!(api.raw("POST", cms, Some(("application/json", &body))).0, 201);
        // Each create shows in the list that follows it: lists are consistent reads.
        let (_, l) = api.raw_json("GET", cms, None);
        assert_eq!(l["items"].as_array().unwrap().len(), i + 1, "{l}");
    }
    let (code, first) = api.raw_json("GET", &format!("{cms}?limit=3"), None);
    assert_eq!(code, 200, "{first}");
    assert_eq!(names(&first), ["cm0=1", "cm1=1", "cm2=1"]);
    let rv = first["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    // Changes after the first page: one already listed, some ahead, one new in between.
    let set = |name: &str, v: &str| {
        let patch = json!({"data": {"v": v}}).to_string();
        assert_eq!(api.raw("PATCH", &format!("{cms}/{name}"), Some(("application/merge-patch+json", &patch))).0, 200);
    };
    assert_eq!(api.raw("DELETE", &format!("{cms}/cm1"), None).0, 200);
    assert_eq!(api.raw("DELETE", &format!("{cms}/cm4"), None).0, 200);
    set("cm5", "2");
    let body = json!({"metadata": {"name": "cm3a"}, "data": {"v": "1"}}).to_string();
    assert_eq!(api.raw("POST", cms, Some(("application/json", &body))).0, 201);
    let mut pages = vec![names(&first)];
    let mut cont = first["metadata"]["continue"].as_str().unwrap().to_string();
    loop {
        let (code, l) = api.raw_json("GET", &format!("{cms}?limit=3&continue={cont}"), None);
        assert_eq!(code, 200, "{l}");
        assert_eq!(l["metadata"]["resourceVersion"], rv.as_str());
        pages.push(names(&l));
        match l["metadata"]["continue"].as_str() {
            Some(c) => cont = c.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, [vec!["cm0=1", "cm1=1", "cm2=1"], vec!["cm3=1", "cm4=1", "cm5=1"], vec!["cm6=1"]]);
    // The same revision, asked for by number; and now.
    let (_, then) = api.raw_json("GET", &format!("{cms}?resourceVersion={rv}&resourceVersionMatch=Exact"), None);
    assert_eq!(names(&then).len(), 7, "{then}");
    assert_eq!(then["metadata"]["resourceVersion"], rv.as_str());
    let (_, now) = api.raw_json("GET", cms, None);
    assert_eq!(names(&now), ["cm0=1", "cm2=1", "cm3=1", "cm3a=1", "cm5=2", "cm6=1"]);
    let (_, any) = api.raw_json("GET", &format!("{cms}?resourceVersion=0"), None);
    assert_eq!(names(&any), names(&now));
    // Kubernetes' checks of the list options.
    for (q, msg) in [
        ("resourceVersionMatch=Exact", "resourceVersionMatch is forbidden unless resourceVersion is provided"),
        (
            "resourceVersion=0&resourceVersionMatch=Exact",
            "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
        ),
        ("resourceVersion=1&resourceVersionMatch=Newest", "Unsupported value: \"Newest\""),
    ] {
        let (code, s) = api.raw_json("GET", &format!("{cms}?{q}"), None);
        assert_eq!((code, s["reason"].as_str()), (422, Some("Invalid")), "{q}: {s}");
        assert!(s["message"].as_str().unwrap().contains(msg), "{q}: {s}");
    }
    // Every list above came from the cache; none fell back to the store.
    let (_, metrics) = api.raw("GET", "/metrics", None);
    let series = |name: &str| -> u64 {
        let line = format!("{name}{{resource_prefix=\"/registry/configmaps/\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&line)).map_or(0, |n| n.parse().unwrap())
    };
    assert!(series("apiserver_cache_list_total") >= 13, "{metrics}");
    assert_eq!(series("skiff_apiserver_cache_list_fallback_total"), 0, "{metrics}");
}

/// Starts a raw watch on a thread; returns the events once the server ends it.
pub(crate) fn watch_thread(port: u16, path: String) -> std::thread::JoinHandle<Vec<Value>> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        BufReader::new(s)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|v| v.get("type").is_some())
            .collect()
    })
}

#[test]
fn watches_share_one_stream_and_follow_selectors() {
    let api = Api::start();
    let cms = "/api/v1/namespaces/default/configmaps";
    let (_, l) = api.raw_json("GET", cms, None);
    let rv = l["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let all = watch_thread(api.http_port, format!("{cms}?watch=true&resourceVersion={rv}&timeoutSeconds=3"));
    let selected = watch_thread(
        api.http_port,
        format!("{cms}?watch=true&resourceVersion={rv}&timeoutSeconds=3&labelSelector=tier%3Da"),
    );
    // Another namespace's objects never show up in a namespaced watch.
    let body = json!({"metadata": {"name": "elsewhere"}}).to_string();
    assert_eq!(api.raw("POST", "/api/v1/namespaces/kube-system/configmaps", Some(("application/json", &body))).0, 201);
    std::thread::sleep(Duration::from_millis(300));
    let body = json!({"metadata": {"name": "w", "labels": {"tier": "a"}}}).to_string();
    assert_eq!(api.raw("POST", cms, Some(("application/json", &body))).0, 201);
    let relabel = r#"{"metadata":{"labels":{"tier":"b"}}}"#;
    assert_eq!(api.raw("PATCH", &format!("{cms}/w"), Some(("application/merge-patch+json", relabel))).0, 200);
    assert_eq!(api.raw("DELETE", &format!("{cms}/w"), None).0, 200);
    let kinds = |evs: &[Value]| evs.iter().map(|e| e["type"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let all = all.join().unwrap();
    assert_eq!(kinds(&all), ["ADDED", "MODIFIED", "DELETED"], "{all:?}");
    // Leaving the selection is a DELETED of the last matching state.
    let selected = selected.join().unwrap();
    assert_eq!(kinds(&selected), ["ADDED", "DELETED"], "{selected:?}");
    assert_eq!(selected[1]["object"]["metadata"]["labels"]["tier"], "a");
    assert_eq!(selected[1]["object"]["metadata"]["resourceVersion"], all[1]["object"]["metadata"]["resourceVersion"]);
}

#[test]
fn python_kubernetes_client() {
    let api = Api::start();
    // Compact everything so far: the script's watch from revision 2 must get 410.
    let (_, l) = api.raw_json("GET", "/api/v1/namespaces", None);
    ok(&api.store.endpoints(), &["compact", l["metadata"]["resourceVersion"].as_str().unwrap()]);
    // `make test` installs the client into a virtualenv and names its python here.
    let python = std::env::var("SKIFF_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/k8s_client.py");
    let o = Command::new(&python).arg(script).arg(api.kubeconfig()).output().unwrap();
    assert!(
        o.status.success(),
        "{python} {script} failed (is the `kubernetes` package installed? `make test` installs it):\n{}",
        text(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("python client: ok"));
}

#[test]
fn kubectl_create_commands_that_send_protobuf() {
    let api = Api::start();
    api.k(&["create", "secret", "generic", "db", "--from-literal=user=admin", "--from-literal=pass=s3cr3t"]);
    let s = api.k_json(&["get", "secret", "db"]);
    assert_eq!(s["data"], json!({"user": "YWRtaW4=", "pass": "czNjcjN0"}));
    assert_eq!(s["type"], "Opaque");
    api.k(&["create", "configmap", "conf", "--from-literal=a=1"]);
    assert_eq!(api.k_json(&["get", "cm", "conf"])["data"], json!({"a": "1"}));
    api.k(&["create", "namespace", "team"]);
    assert!(api.k(&["get", "ns", "team"]).contains("Active"));
    api.k(&["create", "deployment", "web", "--image=nginx:1.25", "--replicas=2", "--port=80"]);
    let d = api.k_json(&["get", "deploy", "web"]);
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["spec"]["selector"]["matchLabels"], json!({"app": "web"}));
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate", "an empty strategy is defaulted: {d}");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!((c["name"].as_str(), c["image"].as_str()), (Some("nginx"), Some("nginx:1.25")));
    assert_eq!(c["ports"][0]["containerPort"], 80);
    assert!(d["spec"]["template"]["spec"].get("initContainers").is_none(), "{d}");
    assert!(d.get("status").is_none_or(|s| s.as_object().is_some_and(|m| m.is_empty())), "{d}");
    api.k(&["create", "service", "clusterip", "websvc", "--tcp=80:8080"]);
    let svc = api.k_json(&["get", "svc", "websvc"]);
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    api.k(&["create", "job", "once", "--image=busybox", "--", "echo", "hi"]);
    let j = api.k_json(&["get", "job", "once"]);
    assert_eq!(j["spec"]["template"]["spec"]["containers"][0]["command"], json!(["echo", "hi"]));
    assert_eq!(j["spec"]["template"]["spec"]["restartPolicy"], "Never");
    api.k(&["create", "serviceaccount", "robot"]);
    api.k(&["autoscale", "deployment", "web", "--min=2", "--max=5", "--cpu-percent=80"]);
    let h = api.k_json(&["get", "horizontalpodautoscalers.v1.autoscaling", "web"]);
    assert_eq!(h["spec"]["scaleTargetRef"]["name"], "web");
    assert_eq!((h["spec"]["minReplicas"].as_i64(), h["spec"]["maxReplicas"].as_i64()), (Some(2), Some(5)));
    // One object, two versions: v2 shows the CPU target as a metric.
    let h2 = api.k_json(&["get", "horizontalpodautoscalers.v2.autoscaling", "web"]);
    assert_eq!(h2["apiVersion"], "autoscaling/v2");
    assert_eq!(h2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 80, "{h2}");
    assert_eq!(h["spec"]["targetCPUUtilizationPercentage"], 80);
    let hpa = api.k(&["get", "hpa"]);
    assert!(hpa.lines().next().unwrap().starts_with("NAME   REFERENCE        TARGETS"), "{hpa}");
    assert!(hpa.contains("Deployment/web   cpu: <unknown>/80%   2         5"), "{hpa}");
    // kubectl 1.33 sends autoscaling/v2.
    let o = api.kubectl_with(
        KUBECTL_133,
        &["autoscale", "deployment", "web", "--name=web2", "--min=1", "--max=3", "--cpu-percent=50"],
        None,
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = api.kubectl_with(KUBECTL_133, &["create", "secret", "generic", "db2", "--from-literal=k=v"], None);
    assert!(o.status.success(), "{}", text(&o));
}

/// kube-rs (the client the controllers use): a watcher feeding a reflector keeps an
/// exact copy of the ConfigMaps across an API server restart, and across a 410 after
/// the store was compacted past its resourceVersion (it relists).
#[test]
fn kube_rs_reflector_survives_restart_and_410() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{reflector, watcher, WatchStreamExt};

    let mut api = Api::start();
    let port = api.http_port;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let url: http::Uri = format!("http://127.0.0.1:{port}").parse().unwrap();
    let (reader, writer) = reflector::store();
    let task = rt.spawn(async move {
        let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
        let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client, "default");
        let stream = watcher(cms, watcher::Config::default()).default_backoff().reflect(writer).applied_objects();
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    let names = || {
        let mut n: Vec<String> = reader.state().iter().map(|c| c.metadata.name.clone().unwrap_or_default()).collect();
        n.sort();
        n
    };
    let wait_for = |want: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if names() == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the reflector holds {:?}, expected {want:?}", names());
    };
    let create = |name: &str| {
        let body = json!({"metadata": {"name": name}, "data": {"v": "1"}}).to_string();
        let (code, _) =
            raw_http(port, "POST", "/api/v1/namespaces/default/configmaps", Some(("application/json", &body)));
        assert_eq!(code, 201);
    };
    create("a");
    create("b");
    wait_for(&["a", "b"]);

    // The API server restarts; the watcher reconnects from its resourceVersion.
    api.stop();
    api.restart();
    create("c");
    wait_for(&["a", "b", "c"]);

    // While it is down, the store changes and is compacted: the watcher's
    // resourceVersion is gone, it gets 410 Expired, relists, and converges.
    api.stop();
    let ep = api.store.endpoints();
    let d = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d", "namespace": "default",
        "uid": "00000000-0000-4000-8000-000000000001", "creationTimestamp": "2026-01-01T00:00:00Z"}});
    ok(&ep, &["put", "/registry/configmaps/default/d", &d.to_string()]);
    ok(&ep, &["del", "/registry/configmaps/default/a"]);
    let rev = json(&ep, &["get", "x"])["header"]["revision"].as_i64().unwrap();
    ok(&ep, &["compact", &rev.to_string()]);
    api.restart();
    wait_for(&["b", "c", "d"]);
    task.abort();
}

/// The API server compacts the store's history as kube-apiserver does: every
/// `--etcd-compaction-interval`, up to the revision of one interval before. Old versions
/// of an object go; the object itself and its history since then stay.
#[test]
fn the_store_history_is_compacted_one_interval_behind() {
    let api = Api::start_with(&["--etcd-compaction-interval", "1s"]);
    let ep = api.store.endpoints();
    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"v": v}});
    api.k_in(&["apply", "-f", "-"], &cm("1").to_string());
    let first: i64 = api.k_json(&["get", "cm", "c"])["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    let old = |rev: i64| etcdctl(&ep, &["get", "/registry/configmaps/default/c", "--rev", &rev.to_string()]);
    assert!(old(first).status.success(), "the first version is there before any compaction");
    api.k_in(&["apply", "-f", "-"], &cm("2").to_string());
    // Turns come every second and each compacts to what the turn before recorded: within
    // a few seconds the first version is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = old(first);
        if !o.status.success() {
            assert!(text(&o).contains("required revision has been compacted"), "{}", text(&o));
            break;
        }
        let log = || std::fs::read_to_string(api.dir.path().join("apiserver.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "the history was not compacted:\n{}", log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(api.k_json(&["get", "cm", "c"])["data"]["v"], "2", "the object itself stays");
    let marker = etcdctl(&ep, &["get", "compact_rev_key", "-w", "json"]);
    assert!(marker.status.success() && text(&marker).contains("\"version\""), "{}", text(&marker));
}

#[test]
fn the_course_examples_apply_and_read_back() {
    let api = Api::start();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let out = api.k(&["apply", "-f", dir]);
    for want in [
        "secret/nginx-admin created",
        "deployment.apps/nginx created",
        "service/nginx created",
        "service/web created",
        "statefulset.apps/web created",
    ] {
        assert!(out.contains(want), "{out}");
    }
    // Applying again changes nothing. (The Secret reads "configured", as with Kubernetes:
    // kubectl patches `stringData` every time, since the server never stores it.)
    let again = api.k(&["apply", "-f", dir]);
    assert!(again.lines().all(|l| l.ends_with("unchanged") || l == "secret/nginx-admin configured"), "{again}");
    let d = api.k_json(&["get", "deploy", "nginx"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"],
        "nginx-admin"
    );
    assert_eq!(api.k_json(&["get", "secret", "nginx-admin"])["data"]["password"], "Y2hhbmdlLW1l");
    let sts = api.k_json(&["get", "sts", "web"]);
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "www");
    assert_eq!(api.k_json(&["get", "svc", "web"])["spec"]["clusterIP"], "None");
    let table = api.k(&["get", "sts,deploy,svc"]);
    assert!(table.contains("statefulset.apps/web   0/2"), "{table}");
    assert!(table.contains("deployment.apps/nginx   0/3"), "{table}");
    let out = api.k(&["delete", "-f", dir]);
    assert_eq!(out.lines().filter(|l| l.ends_with("deleted")).count(), 5, "{out}");
    assert!(api.k(&["get", "sts,deploy,secret", "-o", "name"]).is_empty());
}

#[test]
fn explain_and_unknown_fields_under_each_field_validation() {
    let api = Api::start();
    for bin in [KUBECTL_132, KUBECTL_133] {
        let o = api.kubectl_with(bin, &["explain", "deployment.spec"], None);
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        assert!(out.contains("KIND:       Deployment") && out.contains("FIELD: spec <DeploymentSpec>"), "{out}");
        assert!(out.contains("replicas\t<integer>") && out.contains("Number of desired pods."), "{out}");
        assert!(out.contains("selector\t<LabelSelector> -required-"), "{out}");
    }
    let out = api.k(&["explain", "pods.spec.containers.ports"]);
    assert!(
        out.contains("FIELD: ports <[]ContainerPort>") && out.contains("containerPort\t<integer> -required-"),
        "{out}"
    );
    let out = api.k(&["explain", "hpa.spec", "--api-version=autoscaling/v2"]);
    assert!(out.contains("VERSION:    v2") && out.contains("metrics\t<[]MetricSpec>"), "{out}");
    let err = api.k_fails(&["explain", "deployment.spec.nosuchfield"], None);
    assert!(err.contains("nosuchfield"), "{err}");
    // The same schemas as Swagger 2.0 for clients that read /openapi/v2 as JSON.
    let (code, v2) = api.raw_json("GET", "/openapi/v2", None);
    assert_eq!((code, &v2["swagger"]), (200, &json!("2.0")));
    assert!(v2["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"].is_object());

    let bad = DEPLOYMENT
        .replace("  replicas: 3", "  replicaz: 3")
        .replace("image: nginx:1.25", "image: nginx:1.25\n        imagez: x");
    // kubectl's default (--validate=strict): the server refuses, nothing is stored.
    let err = api.k_fails(&["apply", "-f", "-"], Some(&bad));
    assert!(
        err.contains(
            "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: \
             unknown field \"spec.replicaz\", unknown field \"spec.template.spec.containers[0].imagez\""
        ),
        "{err}"
    );
    assert!(api.k_fails(&["get", "deploy", "nginx"], None).contains("not found"));
    // Server-side apply types the configuration and names each undeclared field.
    let err = api.k_fails(&["apply", "--server-side", "-f", "-"], Some(&bad));
    assert!(err.contains(".spec.replicaz: field not declared in schema"), "{err}");
    assert!(api.k_fails(&["get", "deploy", "nginx"], None).contains("not found"));
    // --validate=warn: stored without the unknown fields, one warning each.
    let o = api.kubectl_with(KUBECTL_132, &["apply", "--validate=warn", "-f", "-"], Some(&bad));
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{}", text(&o));
    assert!(stderr.contains("Warning: unknown field \"spec.replicaz\""), "{stderr}");
    assert!(stderr.contains("Warning: unknown field \"spec.template.spec.containers[0].imagez\""), "{stderr}");
    let d = api.k_json(&["get", "deploy", "nginx"]);
    assert!(
        d["spec"].get("replicaz").is_none() && d["spec"]["template"]["spec"]["containers"][0].get("imagez").is_none()
    );
    assert_eq!(d["spec"]["replicas"], 1, "defaulted, since replicas was misspelled");
    // --validate=false (fieldValidation=Ignore): dropped silently.
    let o = api.kubectl_with(KUBECTL_132, &["replace", "--validate=false", "-f", "-"], Some(&bad));
    assert!(o.status.success() && !String::from_utf8_lossy(&o.stderr).contains("Warning"), "{}", text(&o));
    // A request naming a mode that does not exist.
    let (code, s) = api.raw_json(
        "POST",
        "/api/v1/namespaces/default/configmaps?fieldValidation=Loose",
        Some(("application/json", r#"{"metadata":{"name":"x"}}"#)),
    );
    assert_eq!((code, s["reason"].as_str()), (400, Some("BadRequest")), "{s}");
}

#[test]
fn oversize_objects_are_refused_with_413() {
    let api = Api::start();
    let cm = |name: &str, size: usize| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"x": "a".repeat(size)}})
            .to_string()
    };
    // Over the API server's 3 MiB body limit.
    let file = api.dir.path().join("big.json");
    std::fs::write(&file, cm("big", 4 << 20)).unwrap();
    let err = api.k_fails(&["create", "-f", file.to_str().unwrap()], None);
    assert!(err.contains("Error from server (RequestEntityTooLarge)") && err.contains("limit is 3145728"), "{err}");
    // Under it, but over the store's request limit (1.5 MiB, as etcd's), and over its
    // gRPC message limit (2 MiB).
    for (name, size) in [("mid", 1_700_000), ("mid", 2_500_000)] {
        std::fs::write(&file, cm(name, size)).unwrap();
        let err = api.k_fails(&["create", "-f", file.to_str().unwrap()], None);
        assert!(err.contains("(RequestEntityTooLarge)") && err.contains("etcdserver: request is too large"), "{err}");
    }
    assert!(api.k(&["get", "cm", "-o", "name"]).lines().all(|l| !l.contains("big") && !l.contains("mid")));
    // The API server and the store are fine afterwards.
    std::fs::write(&file, cm("small", 1 << 20)).unwrap();
    assert!(api.k(&["create", "-f", file.to_str().unwrap()]).contains("configmap/small created"));
}

#[test]
fn kubectl_describe_diff_and_edit() {
    let api = Api::start();
    api.k_in(&["apply", "-f", "-"], DEPLOYMENT);
    let out = api.k(&["describe", "deployment", "nginx"]);
    for want in [
        "Name:                   nginx",
        "Replicas:               3 desired",
        "Image:         nginx:1.25",
        "Port:          80/TCP",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    // diff: exit 1 and a unified diff when the live object would change; 0 when not.
    let changed = DEPLOYMENT.replace("replicas: 3", "replicas: 5");
    let o = api.kubectl_with(KUBECTL_132, &["diff", "-f", "-"], Some(&changed));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(out.contains("-  replicas: 3") && out.contains("+  replicas: 5"), "{out}");
    let o = api.kubectl_with(KUBECTL_133, &["diff", "-f", "-"], Some(DEPLOYMENT));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // diff is a dry run: nothing changed.
    assert_eq!(api.k_json(&["get", "deploy", "nginx"])["spec"]["replicas"], 3);
    // edit: the editor's change is sent as a patch.
    let editor = api.dir.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nsed -i 's/replicas: 3/replicas: 4/; s/image: nginx:1.25/image: nginx:1.26/' \"$1\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o =
        api.kubectl_env(KUBECTL_132, &[("KUBE_EDITOR", editor.to_str().unwrap())], &["edit", "deploy", "nginx"], None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("deployment.apps/nginx edited"), "{}", text(&o));
    let d = api.k_json(&["get", "deploy", "nginx"]);
    assert_eq!(d["spec"]["replicas"], 4);
    assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["image"], "nginx:1.26");
    assert_eq!(d["metadata"]["generation"], 2);
    // An edit that breaks the object is refused and the object is kept as it was.
    std::fs::write(&editor, "#!/bin/sh\nsed -i 's/name: nginx$/name: Not_Valid/' \"$1\"\n").unwrap();
    let o =
        api.kubectl_env(KUBECTL_132, &[("KUBE_EDITOR", editor.to_str().unwrap())], &["edit", "deploy", "nginx"], None);
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(
        api.k_json(&["get", "deploy", "nginx"])["metadata"]["resourceVersion"],
        d["metadata"]["resourceVersion"]
    );
}

#[test]
fn a_list_larger_than_one_store_message_is_served_whole() {
    let api = Api::start();
    // 1,200 ConfigMaps of 2 KiB: more keys than one store page and more bytes than one
    // gRPC message (2 MiB); a list without a limit must still return them all.
    let data = "x".repeat(2048);
    for i in 0..1200 {
        let body = json!({"metadata": {"name": format!("cm-{i:04}")}, "data": {"d": data}}).to_string();
        let (code, _) = api.raw("POST", "/api/v1/namespaces/default/configmaps", Some(("application/json", &body)));
        assert_eq!(code, 201, "creating cm-{i}");
    }
    let (code, list) = api.raw_json("GET", "/api/v1/namespaces/default/configmaps", None);
    assert_eq!(code, 200, "{}", list["message"]);
    let names: Vec<&str> =
        list["items"].as_array().unwrap().iter().filter_map(|c| c["metadata"]["name"].as_str()).collect();
    assert_eq!(names.iter().filter(|n| n.starts_with("cm-")).count(), 1200);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "in key order");
}

/// `/metrics` is Prometheus text with Kubernetes' series: requests by verb, resource and
/// code, their latency histogram, and the watches open now.
#[test]
fn metrics_count_requests_by_verb_resource_and_code_and_open_watches() {
    let api = Api::start();
    api.k(&["get", "pods"]);
    let missing = api.kubectl_with(KUBECTL_132, &["get", "pod", "nope"], None);
    assert!(!missing.status.success());
    let mut watch = Command::new(KUBECTL_132)
        .arg("--kubeconfig")
        .arg(api.kubeconfig())
        .args(["get", "configmaps", "-w"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let find = |s: &[Sample], name: &str, want: &[(&str, &str)]| -> Option<f64> {
        s.iter()
            .find(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|x| x.2)
    };
    let t = std::time::Instant::now();
    let samples = loop {
        let (code, body) = api.raw("GET", "/metrics", None);
        assert_eq!(code, 200, "{body}");
        let s = prometheus(&body);
        let watching = find(&s, "apiserver_longrunning_requests", &[("resource", "configmaps"), ("verb", "WATCH")]);
        if watching == Some(1.0) || t.elapsed() > std::time::Duration::from_secs(15) {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let _ = watch.kill();
    let _ = watch.wait();
    let list = [("verb", "LIST"), ("resource", "pods"), ("code", "200")];
    assert!(find(&samples, "apiserver_request_total", &list) >= Some(1.0), "LIST pods counted");
    let get404 = [("verb", "GET"), ("resource", "pods"), ("code", "404")];
    assert!(find(&samples, "apiserver_request_total", &get404) >= Some(1.0), "the 404 counted");
    let hist = [("verb", "LIST"), ("resource", "pods"), ("le", "+Inf")];
    assert!(find(&samples, "apiserver_request_duration_seconds_bucket", &hist) >= Some(1.0));
    let open = [("resource", "configmaps"), ("verb", "WATCH")];
    assert_eq!(find(&samples, "apiserver_longrunning_requests", &open), Some(1.0), "the open watch");
    // Made-up paths do not make new series.
    let (code, _) = api.raw("GET", "/api/v1/namespaces/default/madeup1", None);
    assert_eq!(code, 404);
    let (_, body) = api.raw("GET", "/metrics", None);
    assert!(!body.contains("madeup1"), "unknown resources are not labels");
}

/// A kubeconfig for the API server at `api` with the given user entry (YAML lines).
pub(crate) fn user_kubeconfig(api: &Api, name: &str, user: &str) -> PathBuf {
    let ca = std::fs::read(api.dir.path().join("api/pki/ca.crt")).unwrap();
    let ca = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n{user}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u, namespace: dev}}\ncurrent-context: x\n",
        api.https_port
    );
    let path = api.dir.path().join(format!("{name}.kubeconfig"));
    std::fs::write(&path, text).unwrap();
    path
}

/// kubectl as the user of `kubeconfig`, which must succeed: its stdout.
fn ok_as(kubeconfig: &Path, args: &[&str]) -> String {
    let o = kubectl_as(kubeconfig, args);
    assert!(o.status.success(), "kubectl {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// kubectl as the user of `kubeconfig`, which must fail: its stderr.
fn refused_as(kubeconfig: &Path, args: &[&str]) -> String {
    let o = kubectl_as(kubeconfig, args);
    assert!(!o.status.success(), "kubectl {args:?} should fail: {}", text(&o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// kubectl as the user of `kubeconfig`.
pub(crate) fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    kubectl_as_in(kubeconfig, args, None)
}

/// kubectl 1.32 as the user of `kubeconfig`, with `stdin` as its input.
pub(crate) fn kubectl_as_in(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(KUBECTL_132);
    c.arg("--kubeconfig").arg(kubeconfig).arg("--cache-dir").arg(kubeconfig.with_extension("cache")).args(args);
    output_with_input(c, stdin)
}

/// Runs `c` with `stdin` (or nothing) as its input; its whole output.
fn output_with_input(mut c: Command, stdin: Option<&str>) -> Output {
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Authentication (client certificates with CN/O, static bearer tokens, anonymous) and
/// RBAC with Kubernetes' default roles, through kubectl: a user with `view` reads pods but
/// not secrets and creates nothing; a group bound to `edit` cluster-wide may create pods
/// and read secrets but not manage roles; `kubectl auth can-i` and `whoami` answer; a
/// deleted binding stops granting; bad tokens get 401 and anonymous users only the
/// public paths.
#[test]
fn rbac_decides_what_each_user_may_do() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.csv");
    std::fs::write(&tokens, "jane-secret-token,jane,1001,\"dev-team\"\n").unwrap();
    let api = Api::start_with(&["--token-auth-file", tokens.to_str().unwrap()]);
    api.k(&["create", "namespace", "dev"]);
    api.k(&["create", "secret", "generic", "db", "-n", "dev", "--from-literal=password=hunter2"]);
    api.k(&["create", "rolebinding", "jane-view", "--clusterrole=view", "--user=jane", "-n", "dev"]);

    let jane = user_kubeconfig(&api, "jane", "    token: jane-secret-token");
    let (ok, refused) = (ok_as, refused_as);
    // Eventually: bindings reach the authorizer through its watch.
    let eventually = |what: &str, f: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    eventually("jane's view binding", &|| kubectl_as(&jane, &["get", "pods"]).status.success());
    ok(&jane, &["get", "deployments,services,configmaps"]);
    let e = refused(&jane, &["get", "secrets"]);
    assert!(
        e.contains(
            r#"secrets is forbidden: User "jane" cannot list resource "secrets" in API group "" in the namespace "dev""#
        ),
        "{e}"
    );
    let e = refused(&jane, &["get", "secret", "db"]);
    assert!(e.contains(r#"secrets "db" is forbidden: User "jane" cannot get resource "secrets""#), "{e}");
    let e = refused(&jane, &["run", "x", "--image=busybox"]);
    assert!(
        e.contains(
            r#"pods is forbidden: User "jane" cannot create resource "pods" in API group "" in the namespace "dev""#
        ),
        "{e}"
    );
    let e = refused(&jane, &["get", "pods", "-n", "default"]);
    assert!(e.contains(r#"in the namespace "default""#), "{e}");
    let e = refused(&jane, &["get", "nodes"]);
    assert!(e.contains(r#"cannot list resource "nodes" in API group "" at the cluster scope"#), "{e}");
    // can-i and whoami.
    assert_eq!(ok(&jane, &["auth", "can-i", "list", "pods"]).trim(), "yes");
    let o = kubectl_as(&jane, &["auth", "can-i", "get", "secrets"]);
    assert_eq!((o.status.code(), String::from_utf8_lossy(&o.stdout).trim()), (Some(1), "no"), "{}", text(&o));
    let o = kubectl_as(&jane, &["auth", "can-i", "list", "pods", "-n", "other"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "no", "{}", text(&o));
    let who = ok(&jane, &["auth", "whoami", "-o", "json"]);
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "jane");
    assert_eq!(who["status"]["userInfo"]["groups"], json!(["dev-team", "system:authenticated"]));

    // A client certificate signed by the cluster CA: CN is the user, O its groups.
    let pki = api.dir.path().join("api/pki");
    let d = tmp.path();
    let sh = |cmd: &str| {
        let o = Command::new("bash").arg("-c").arg(cmd).current_dir(d).output().unwrap();
        assert!(o.status.success(), "{cmd}: {}", text(&o));
    };
    std::fs::write(d.join("ext.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    sh("openssl ecparam -name prime256v1 -genkey -noout -out bob.key");
    sh("openssl req -new -key bob.key -subj '/CN=bob/O=ops' -out bob.csr");
    sh(&format!(
        "openssl x509 -req -in bob.csr -CA {0}/ca.crt -CAkey {0}/ca.key -CAcreateserial -days 1 -extfile ext.cnf -out bob.crt",
        pki.display()
    ));
    let b64 =
        |f: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, std::fs::read(d.join(f)).unwrap());
    let bob = user_kubeconfig(
        &api,
        "bob",
        &format!("    client-certificate-data: {}\n    client-key-data: {}", b64("bob.crt"), b64("bob.key")),
    );
    let e = refused(&bob, &["get", "pods"]);
    assert!(e.contains(r#"User "bob" cannot list resource "pods""#), "{e}");
    api.k(&["create", "clusterrolebinding", "ops-edit", "--clusterrole=edit", "--group=ops"]);
    eventually("the ops group's edit binding", &|| kubectl_as(&bob, &["get", "pods"]).status.success());
    ok(&bob, &["run", "web", "--image=busybox", "-n", "default"]);
    assert!(ok(&bob, &["get", "secret", "db", "-o", "jsonpath={.data.password}"]).contains("aHVudGVyMg=="));
    let e = refused(&bob, &["create", "role", "r", "--verb=get", "--resource=pods"]);
    assert!(
        e.contains(r#"roles.rbac.authorization.k8s.io is forbidden: User "bob" cannot create resource "roles""#),
        "{e}"
    );
    assert_eq!(ok(&bob, &["auth", "can-i", "delete", "pods", "-A"]).trim(), "yes");
    // No one grants what they do not hold: bob, admin of dev, may hand out edit there
    // but not cluster-admin.
    api.k(&["create", "rolebinding", "bob-admin", "--clusterrole=admin", "--user=bob", "-n", "dev"]);
    eventually("bob's admin binding", &|| kubectl_as(&bob, &["get", "rolebindings"]).status.success());
    ok(&bob, &["create", "rolebinding", "jane-edit", "--clusterrole=edit", "--user=jane"]);
    let e = refused(&bob, &["create", "rolebinding", "escalate", "--clusterrole=cluster-admin", "--user=bob"]);
    assert!(
        e.contains(r#"rolebindings.rbac.authorization.k8s.io "escalate" is forbidden: user "bob" (groups=["ops" "system:authenticated"]) is attempting to grant RBAC permissions not currently held"#),
        "{e}"
    );
    api.k(&["delete", "rolebinding", "jane-edit", "-n", "dev"]);

    // Revoked: the binding's deletion takes the right away.
    api.k(&["delete", "rolebinding", "jane-view", "-n", "dev"]);
    eventually("jane's binding to go", &|| !kubectl_as(&jane, &["get", "pods"]).status.success());

    // A bad token is 401; no credentials at all is system:anonymous, which may read
    // only the public paths.
    let wrong = user_kubeconfig(&api, "wrong", "    token: not-a-token");
    let e = refused(&wrong, &["get", "pods"]);
    assert!(e.contains("You must be logged in to the server"), "{e}");
    // (kubectl asks for a password when its kubeconfig has no credentials: curl it is.)
    let anon = |path: &str| {
        let ca = api.dir.path().join("api/pki/ca.crt");
        let url = format!("https://127.0.0.1:{}{path}", api.https_port);
        let o =
            Command::new("curl").args(["-s", "-w", " %{http_code}", "--cacert"]).arg(&ca).arg(url).output().unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let body = anon("/api/v1/namespaces/dev/pods");
    assert!(
        body.contains(r#"User \"system:anonymous\" cannot list resource \"pods\""#) && body.ends_with(" 403"),
        "{body}"
    );
    assert_eq!(anon("/healthz"), "ok 200");
    assert!(anon("/version").ends_with(" 200"));
    assert!(anon("/metrics").ends_with(" 403"));
    assert!(anon("/api").ends_with(" 403"), "discovery is for authenticated users");
    assert!(anon("/dashboard/").contains("<title>Skiff dashboard</title>"), "the dashboard page is public");
    assert!(anon("/dashboard/api/usage").ends_with(" 403"), "its data is not");
}

/// ServiceAccount tokens: `kubectl create token` (the TokenRequest API) signs a token for
/// a ServiceAccount, bound to a pod when asked; the token acts as the ServiceAccount with
/// exactly what its bindings allow, and stops working when its pod or ServiceAccount is
/// deleted. New pods get the `default` ServiceAccount and a projected token volume.
#[test]
fn service_account_tokens_are_bound_to_their_pod() {
    let api = Api::start();
    api.k(&["create", "namespace", "dev"]);
    api.k(&["create", "serviceaccount", "app", "-n", "dev"]);
    api.k(&["create", "rolebinding", "app-view", "--clusterrole=view", "--serviceaccount=dev:app", "-n", "dev"]);
    api.k_in(
        &["apply", "-n", "dev", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "busybox"}]}}"#,
    );
    // Admission: the ServiceAccount's token, CA and namespace, projected into every container.
    let pod = api.k_json(&["get", "pod", "web", "-n", "dev"]);
    let vol = &pod["spec"]["volumes"][0];
    let vol_name = vol["name"].as_str().unwrap();
    assert!(vol_name.starts_with("kube-api-access-"), "{pod}");
    assert_eq!(vol["projected"]["sources"][0]["serviceAccountToken"]["path"], "token");
    assert_eq!(vol["projected"]["sources"][1]["configMap"]["name"], "kube-root-ca.crt");
    let mount = &pod["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(
        (mount["name"].as_str(), mount["mountPath"].as_str(), mount["readOnly"].as_bool()),
        (Some(vol_name), Some("/var/run/secrets/kubernetes.io/serviceaccount"), Some(true))
    );
    let other = api.k_in(
        &["create", "-n", "dev", "-o", "json", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
            "spec": {"automountServiceAccountToken": false, "containers": [{"name": "c", "image": "busybox"}]}}"#,
    );
    let other: Value = serde_json::from_str(&other).unwrap();
    assert_eq!(other["spec"]["serviceAccountName"], "default");
    assert!(other["spec"].get("volumes").is_none(), "opted out: {other}");

    // A token bound to the pod acts as the ServiceAccount, with what its binding allows.
    let token =
        api.k(&["create", "token", "app", "-n", "dev", "--bound-object-kind", "Pod", "--bound-object-name", "web"]);
    let token = token.trim();
    assert_eq!(token.matches('.').count(), 2, "a JWT: {token}");
    let kc = user_kubeconfig(&api, "sa", &format!("    token: {token}"));
    let run = |args: &[&str]| kubectl_as(&kc, args);
    let who: Value = serde_json::from_slice(&run(&["auth", "whoami", "-o", "json"]).stdout).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:serviceaccount:dev:app");
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        json!(["system:serviceaccounts", "system:serviceaccounts:dev", "system:authenticated"])
    );
    let o = run(&["get", "pods"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("web"), "{}", text(&o));
    let o = run(&["get", "secrets"]);
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains(r#"User "system:serviceaccount:dev:app" cannot list resource "secrets""#),
        "{}",
        text(&o)
    );
    // An unbound token lives as long as the ServiceAccount.
    let unbound = api.k(&["create", "token", "app", "-n", "dev", "--duration", "15m"]);
    let kc2 = user_kubeconfig(&api, "sa2", &format!("    token: {}", unbound.trim()));
    assert!(kubectl_as(&kc2, &["get", "pods"]).status.success());

    // Requests the API refuses, in Kubernetes' words.
    let e = api.k_fails(&["create", "token", "app", "-n", "dev", "--duration", "5m"], None);
    assert!(e.contains("may not specify a duration less than 10 minutes"), "{e}");
    let e = api.k_fails(&["create", "token", "ghost", "-n", "dev"], None);
    assert!(e.contains(r#"serviceaccounts "ghost" not found"#), "{e}");
    let e = api.k_fails(
        &[
            "create",
            "token",
            "app",
            "-n",
            "dev",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "web",
            "--bound-object-uid",
            "0000",
        ],
        None,
    );
    assert!(e.contains("does not match the UID in record"), "{e}");
    // A forged token (one character of the signature changed) is nobody.
    let mut forged = token.to_string();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let kc3 = user_kubeconfig(&api, "forged", &format!("    token: {forged}"));
    let o = kubectl_as(&kc3, &["get", "pods"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("You must be logged in"), "{}", text(&o));

    // The pod goes, and its token with it; the ServiceAccount goes, and the unbound one.
    api.k(&["delete", "pod", "web", "-n", "dev", "--wait=false"]);
    let t = Instant::now();
    loop {
        let o = run(&["get", "pods"]);
        if String::from_utf8_lossy(&o.stderr).contains("You must be logged in") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the bound token outlived its pod: {}", text(&o));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(kubectl_as(&kc2, &["get", "pods"]).status.success(), "the unbound token is not tied to the pod");
    api.k(&["delete", "serviceaccount", "app", "-n", "dev"]);
    let o = kubectl_as(&kc2, &["get", "pods"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("You must be logged in"), "{}", text(&o));
}

/// The Node authorizer and NodeRestriction: a node's identity (`system:node:w1`) reads
/// only the Secrets and ConfigMaps its own pods use, gets tokens only for its own pods,
/// and changes only its own Node, Lease and pods, with Kubernetes' refusals; the
/// simulated-node identity is left to RBAC.
#[test]
fn a_node_reaches_only_what_its_own_pods_use() {
    let api = Api::start_with(&["--node-name", "w1"]);
    for name in ["w1", "w2"] {
        api.k_in(
            &["create", "-f", "-"],
            &format!(r#"{{"apiVersion": "v1", "kind": "Node", "metadata": {{"name": "{name}"}}}}"#),
        );
    }
    api.k(&["create", "secret", "generic", "used", "--from-literal=k=v"]);
    api.k(&["create", "secret", "generic", "other", "--from-literal=k=v"]);
    api.k(&["create", "configmap", "used-map", "--from-literal=k=v"]);
    api.k(&["create", "configmap", "other-map", "--from-literal=k=v"]);
    api.k(&["create", "serviceaccount", "a1"]);
    api.k(&["create", "serviceaccount", "a2"]);
    let pod = |name: &str, node: &str, account: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}},
                "spec": {{"nodeName": "{node}", "serviceAccountName": "{account}",
                  "volumes": [{{"name": "s", "secret": {{"secretName": "used"}}}}],
                  "containers": [{{"name": "c", "image": "busybox",
                    "env": [{{"name": "K", "valueFrom": {{"configMapKeyRef": {{"name": "used-map", "key": "k"}}}}}}]}}]}}}}"#
        )
    };
    api.k_in(&["create", "-f", "-"], &pod("p1", "w1", "a1"));
    api.k_in(&["create", "-f", "-"], &pod("p2", "w2", "a2"));
    api.k_in(&["create", "-f", "-"], &pod("p3", "w2", "a1"));

    let node = api.dir.path().join("api/node.kubeconfig");
    let as_node = |args: &[&str], stdin: Option<&str>| kubectl_as_in(&node, args, stdin);
    let ok_in = |args: &[&str], stdin: Option<&str>| {
        let o = as_node(args, stdin);
        assert!(o.status.success(), "kubectl {args:?} as the node: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let ok = |args: &[&str]| ok_in(args, None);
    let refused = |args: &[&str], stdin: Option<&str>| {
        let o = as_node(args, stdin);
        assert!(!o.status.success(), "kubectl {args:?} as the node should be refused: {}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert_eq!(ok(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]), "system:node:w1");

    // Secrets and ConfigMaps: only those of its own pods, one at a time.
    assert!(ok(&["get", "secret", "used"]).contains("used"));
    assert!(ok(&["get", "configmap", "used-map"]).contains("used-map"));
    let e = refused(&["get", "secret", "other"], None);
    assert!(
        e.contains(r#"secrets "other" is forbidden: User "system:node:w1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'w1' and this object"#),
        "{e}"
    );
    let e = refused(&["get", "configmap", "other-map"], None);
    assert!(e.contains("no relationship found between node 'w1' and this object"), "{e}");
    let e = refused(&["get", "secrets"], None);
    assert!(e.contains("can only get individual resources of this type"), "{e}");

    // Tokens: for the accounts of its pods, bound to its own pods.
    let token = ok(&["create", "token", "a1", "--bound-object-kind", "Pod", "--bound-object-name", "p1"]);
    assert_eq!(token.trim().matches('.').count(), 2, "{token}");
    let e = refused(&["create", "token", "a2", "--bound-object-kind", "Pod", "--bound-object-name", "p2"], None);
    assert!(e.contains("no relationship found between node 'w1' and this object"), "{e}");
    let e = refused(&["create", "token", "a1", "--bound-object-kind", "Pod", "--bound-object-name", "p3"], None);
    assert!(e.contains("node requested token bound to a pod scheduled on a different node"), "{e}");

    // Its own Node, Lease and pods only.
    ok(&["label", "node", "w1", "disk=ssd"]);
    let e = refused(&["label", "node", "w2", "disk=ssd"], None);
    assert!(e.contains(r#"nodes "w2" is forbidden: node "w1" is not allowed to modify node "w2""#), "{e}");
    let lease = |name: &str| {
        format!(
            r#"{{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {{"name": "{name}", "namespace": "kube-node-lease"}}, "spec": {{"holderIdentity": "{name}"}}}}"#
        )
    };
    ok_in(&["create", "-f", "-"], Some(&lease("w1")));
    let e = refused(&["create", "-f", "-"], Some(&lease("w2")));
    assert!(e.contains("can only access node lease with the same name as the requesting node"), "{e}");
    let e = refused(&["patch", "pod", "p2", "--subresource=status", "-p", r#"{"status": {"phase": "Failed"}}"#], None);
    assert!(
        e.contains(
            r#"pods "p2" is forbidden: node "w1" can only update pod status for pods with spec.nodeName set to itself"#
        ),
        "{e}"
    );
    ok(&["patch", "pod", "p1", "--subresource=status", "-p", r#"{"status": {"phase": "Running"}}"#]);
    let e = refused(&["delete", "pod", "p2", "--wait=false"], None);
    assert!(e.contains(r#"node "w1" can only delete pods with spec.nodeName set to itself"#), "{e}");
    ok(&["delete", "pod", "p1", "--wait=false"]);

    // The simulated-node identity is not one node's: RBAC's system:node role alone.
    let sim = api.dir.path().join("api/simulated-nodes.kubeconfig");
    let o = kubectl_as(&sim, &["get", "secret", "other"]);
    assert!(o.status.success(), "{}", text(&o));

    // A node name that could not be one (an empty one would make an identity the Node
    // authorizer does not hold) stops the server with the reason.
    let o = Command::new(skiff_bin())
        .args(["apiserver", "--store-endpoints", &api.store.endpoints(), "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(api.dir.path().join("api2"))
        .args(["--node-name", ""])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains(r#"--node-name "" is not a valid node name"#), "{}", text(&o));
}

/// Secrets encrypted at rest with an EncryptionConfiguration: the store holds only
/// ciphertext (`k8s:enc:aesgcm:v1:<key>:`), kubectl reads the plain values, other kinds
/// stay plain, and keys rotate: a new key first, the secrets rewritten, the old key gone.
#[test]
fn secrets_are_encrypted_at_rest_and_keys_rotate() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("encryption.yaml");
    let write_config = |keys: &[(&str, &str)]| {
        let keys: String = keys.iter().map(|(n, s)| format!("      - name: {n}\n        secret: {s}\n")).collect();
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n{keys}  - identity: {{}}\n"
        );
        std::fs::write(&config, text).unwrap();
    };
    let key1 = ("key1", "c2tpZmYtdGVzdC1rZXktb25lLTMyLWJ5dGVzLWxvbmc="); // 32 bytes
    let key2 = ("key2", "MDEyMzQ1Njc4OWFiY2RlZg=="); // 16 bytes
    write_config(&[key1]);
    let mut api = Api::start_with(&["--encryption-provider-config", config.to_str().unwrap()]);
    api.k(&["create", "secret", "generic", "db", "--from-literal=password=hunter2"]);
    api.k(&["create", "configmap", "settings", "--from-literal=mode=plain-text-value"]);
    let endpoints = api.store.endpoints();
    let raw = |key: &str| -> Vec<u8> {
        let j = json(&endpoints, &["get", key, "-w", "json"]);
        let v = j["kvs"][0]["value"].as_str().unwrap_or_else(|| panic!("no {key}: {j}"));
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v).unwrap()
    };
    let contains = |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    let stored = raw("/registry/secrets/default/db");
    assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:key1:"), "{}", String::from_utf8_lossy(&stored));
    assert!(!contains(&stored, "hunter2") && !contains(&stored, "aHVudGVyMg") && !contains(&stored, "password"));
    assert!(contains(&raw("/registry/configmaps/default/settings"), "plain-text-value"), "configmaps are not listed");
    let read = |api: &Api| api.k(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]);
    assert_eq!(read(&api), "aHVudGVyMg==");
    assert!(api.k(&["get", "secrets"]).contains("db"), "lists decrypt too");

    // Rotation: key2 first (new writes), key1 still there (old reads); rewrite; drop key1.
    write_config(&[key2, key1]);
    api.stop();
    api.restart();
    assert_eq!(read(&api), "aHVudGVyMg==", "written with key1, read after key2 came first");
    // (A List document needs --validate=false: kubectl validates Lists with the protobuf
    // /openapi/v2, which is not served; docs/compatibility.md.)
    let all = api.k(&["get", "secrets", "-o", "json"]);
    api.k_in(&["replace", "--validate=false", "-f", "-"], &all);
    assert!(raw("/registry/secrets/default/db").starts_with(b"k8s:enc:aesgcm:v1:key2:"));
    write_config(&[key2]);
    api.stop();
    api.restart();
    assert_eq!(read(&api), "aHVudGVyMg==");

    // A configuration that cannot be used stops the server with the reason.
    std::fs::write(&config, "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - {name: k, secret: c2hvcnQ=}\n").unwrap();
    let o = Command::new(skiff_bin())
        .args(["apiserver", "--store-endpoints", &endpoints, "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("api2"))
        .args(["--encryption-provider-config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("key k is 5 bytes; AES-GCM keys are 16 or 32 bytes"), "{}", text(&o));
}

/// Pod Security admission by namespace labels, in Kubernetes' words: `restricted` refuses
/// a privileged pod and admits a hardened one; `baseline` refuses host namespaces, an
/// unmasked /proc, unsafe sysctls, an unconfined AppArmor profile and a custom SELinux
/// type; `warn` admits with a warning.
#[test]
fn pod_security_levels_refuse_and_warn_as_kubernetes_does() {
    let api = Api::start();
    api.k(&["create", "namespace", "locked"]);
    api.k(&["label", "namespace", "locked", "pod-security.kubernetes.io/enforce=restricted"]);
    let pod = |name: &str, spec: &str| {
        format!(r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}}, "spec": {spec}}}"#)
    };
    let privileged = pod(
        "priv",
        r#"{"containers": [{"name": "app", "image": "busybox", "securityContext": {"privileged": true}}]}"#,
    );
    let e = api.k_fails(&["create", "-n", "locked", "-f", "-"], Some(&privileged));
    assert!(
        e.contains(r#"pods "priv" is forbidden: violates PodSecurity "restricted:latest": privileged (container "app" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container "app" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "app" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "app" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "app" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")"#),
        "{e}"
    );
    let hardened = pod(
        "ok",
        r#"{"securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "busybox",
              "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}]}"#,
    );
    api.k_in(&["create", "-n", "locked", "-f", "-"], &hardened);
    assert!(api.k(&["get", "pods", "-n", "locked"]).contains("ok"));

    api.k(&["create", "namespace", "base"]);
    api.k(&[
        "label",
        "namespace",
        "base",
        "pod-security.kubernetes.io/enforce=baseline",
        "pod-security.kubernetes.io/warn=restricted",
    ]);
    let host = pod("host", r#"{"hostNetwork": true, "containers": [{"name": "app", "image": "busybox"}]}"#);
    let e = api.k_fails(&["create", "-n", "base", "-f", "-"], Some(&host));
    assert!(e.contains(r#"violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)"#), "{e}");
    let tuned = pod(
        "tuned",
        r#"{"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "65536"}]},
            "containers": [{"name": "app", "image": "busybox", "securityContext": {"procMount": "Unmasked"}}]}"#,
    );
    let e = api.k_fails(&["create", "-n", "base", "-f", "-"], Some(&tuned));
    assert!(
        e.contains(r#"violates PodSecurity "baseline:latest": procMount (container "app" must not set securityContext.procMount to "Unmasked"), forbidden sysctls (kernel.msgmax)"#),
        "{e}"
    );
    let confined = pod(
        "confined",
        r#"{"securityContext": {"seLinuxOptions": {"type": "spc_t"}},
            "containers": [{"name": "app", "image": "busybox", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}}]}"#,
    );
    let e = api.k_fails(&["create", "-n", "base", "-f", "-"], Some(&confined));
    assert!(
        e.contains(r#"violates PodSecurity "baseline:latest": forbidden AppArmor profile (container "app" must not set AppArmor profile type to "Unconfined"), seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type "spc_t")"#),
        "{e}"
    );
    let plain = pod("plain", r#"{"containers": [{"name": "app", "image": "busybox"}]}"#);
    let o = api.kubectl_with(KUBECTL_132, &["create", "-n", "base", "-f", "-"], Some(&plain));
    assert!(o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(r#"Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false"#),
        "{stderr}"
    );
    // Namespaces without labels are privileged: anything goes.
    api.k_in(&["create", "-f", "-"], &privileged);
}

/// LimitRanger: a namespace's LimitRange fills in containers' missing requests and
/// limits and refuses what is outside its bounds, in Kubernetes' words.
#[test]
fn limit_ranges_default_and_bound_container_resources() {
    let api = Api::start();
    api.k_in(
        &["create", "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "bounds"},
            "spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "16Mi"},
                                 "defaultRequest": {"memory": "64Mi"}}]}}"#,
    );
    // Defaulted as Kubernetes defaults it: the max is the default limit and the request.
    let lr = api.k_json(&["get", "limits", "bounds"]);
    assert_eq!(lr["spec"]["limits"][0]["default"], json!({"cpu": "1"}), "{lr}");
    assert_eq!(lr["spec"]["limits"][0]["defaultRequest"], json!({"cpu": "1", "memory": "64Mi"}), "{lr}");
    // A container that says nothing gets the defaults.
    api.k(&["run", "plain", "--image=busybox"]);
    let res = &api.k_json(&["get", "pod", "plain"])["spec"]["containers"][0]["resources"];
    assert_eq!(res["limits"], json!({"cpu": "1"}), "{res}");
    assert_eq!(res["requests"], json!({"cpu": "1", "memory": "64Mi"}), "{res}");
    // Outside the bounds: refused, every reason listed.
    let pod = |name: &str, resources: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}"}}, "spec": {{"containers": [{{"name": "c", "image": "busybox", "resources": {resources}}}]}}}}"#
        )
    };
    let e = api.k_fails(&["create", "-f", "-"], Some(&pod("big", r#"{"limits": {"cpu": "2"}}"#)));
    assert!(e.contains(r#"pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#), "{e}");
    let e = api.k_fails(
        &["create", "-f", "-"],
        Some(&pod("both", r#"{"limits": {"cpu": "1500m"}, "requests": {"memory": "8Mi", "cpu": "100m"}}"#)),
    );
    assert!(
        e.contains(r#"pods "both" is forbidden: [minimum memory usage per Container is 16Mi, but request is 8Mi, maximum cpu usage per Container is 1, but limit is 1500m]"#),
        "{e}"
    );
    api.k_in(&["create", "-f", "-"], &pod("fits", r#"{"limits": {"cpu": "500m"}, "requests": {"memory": "32Mi"}}"#));
}

/// Bootstrap tokens and CertificateSigningRequests, the way a new node joins: `skiff
/// token create` makes a token; with it the node asks for `CN=system:node:<name>`, which
/// is approved and signed at once; the issued certificate then authenticates it. Other
/// requests wait for `kubectl certificate approve`. A deleted or expired token is dead.
#[test]
fn bootstrap_tokens_get_node_certificates_through_csrs() {
    let api = Api::start();
    let (ok, refused) = (ok_as, refused_as);
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let skiff = |args: &[&str]| -> String {
        let o = Command::new(skiff_bin()).args(args).arg("--kubeconfig").arg(api.kubeconfig()).output().unwrap();
        assert!(o.status.success(), "skiff {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let token = skiff(&["token", "create", "--ttl", "1h", "--description", "for w1"]);
    let (id, _) = token.split_once('.').unwrap();
    let list = skiff(&["token", "list"]);
    assert!(list.contains(id) && list.contains("authentication,signing") && list.contains("for w1"), "{list}");
    let joiner = user_kubeconfig(&api, "joiner", &format!("    token: {token}"));
    let who: Value = serde_json::from_str(&ok(&joiner, &["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], format!("system:bootstrap:{id}"));
    assert_eq!(
        who["status"]["userInfo"]["groups"],
        json!(["system:bootstrappers", "system:bootstrappers:skiff:default-node-token", "system:authenticated"])
    );
    let e = refused(&joiner, &["get", "secrets", "-n", "kube-system"]);
    assert!(e.contains(&format!(r#"User "system:bootstrap:{id}" cannot list resource "secrets""#)), "{e}");

    let sh = |cmd: &str| {
        let o = Command::new("bash").arg("-c").arg(cmd).current_dir(d).output().unwrap();
        assert!(o.status.success(), "{cmd}: {}", text(&o));
    };
    let csr = |name: &str, subject: &str, signer: &str| -> String {
        sh(&format!("openssl ecparam -name prime256v1 -genkey -noout -out {name}.key"));
        sh(&format!("openssl req -new -key {name}.key -subj '{subject}' -out {name}.csr"));
        let pem = std::fs::read(d.join(format!("{name}.csr"))).unwrap();
        let request = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pem);
        format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {request}\n  signerName: {signer}\n  usages: [digital signature, client auth]\n"
        )
    };
    let create_as = |kubeconfig: &Path, manifest: &str| {
        let path = d.join("csr.yaml");
        std::fs::write(&path, manifest).unwrap();
        ok(kubeconfig, &["create", "-f", path.to_str().unwrap()]);
    };
    let issued = |name: &str| -> String {
        let t = Instant::now();
        loop {
            let c = api.k(&["get", "csr", name, "-o", "jsonpath={.status.certificate}"]);
            if !c.is_empty() {
                return c;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{name} was never issued: {}",
                api.k(&["get", "csr", name, "-o", "yaml"])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let kubeconfig_of = |name: &str, cert_b64: &str| {
        let key = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            std::fs::read(d.join(format!("{name}.key"))).unwrap(),
        );
        user_kubeconfig(&api, name, &format!("    client-certificate-data: {cert_b64}\n    client-key-data: {key}"))
    };

    // The node's own request: approved automatically, issued, and it authenticates.
    create_as(&joiner, &csr("w1", "/O=system:nodes/CN=system:node:w1", "kubernetes.io/kube-apiserver-client-kubelet"));
    let cert = issued("w1");
    let table = api.k(&["get", "csr", "w1"]);
    assert!(table.contains(&format!("system:bootstrap:{id}")) && table.contains("Approved,Issued"), "{table}");
    let w1 = kubeconfig_of("w1", &cert);
    let who: Value = serde_json::from_str(&ok(&w1, &["auth", "whoami", "-o", "json"])).unwrap();
    assert_eq!(who["status"]["userInfo"]["username"], "system:node:w1");
    assert_eq!(who["status"]["userInfo"]["groups"], json!(["system:nodes", "system:authenticated"]));

    // A request for anything else waits for a person, who may approve or deny it.
    create_as(&joiner, &csr("admin2", "/O=system:masters/CN=admin2", "kubernetes.io/kube-apiserver-client"));
    create_as(&joiner, &csr("denied", "/CN=mallory", "kubernetes.io/kube-apiserver-client"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(api.k(&["get", "csr", "admin2"]).contains("Pending"));
    let e = refused(&joiner, &["certificate", "approve", "admin2"]);
    assert!(e.contains("cannot update resource \"certificatesigningrequests/approval\""), "{e}");
    api.k(&["certificate", "deny", "denied"]);
    api.k(&["certificate", "approve", "admin2"]);
    let admin2 = kubeconfig_of("admin2", &issued("admin2"));
    assert_eq!(ok(&admin2, &["auth", "can-i", "delete", "nodes"]).trim(), "yes");
    let denied = api.k(&["get", "csr", "denied"]);
    assert!(denied.contains("Denied") && !denied.contains("Issued"), "{denied}");
    // A node request that names someone else is refused by the signer, not signed.
    create_as(
        &joiner,
        &csr("sneaky", "/O=system:masters/CN=system:node:w2", "kubernetes.io/kube-apiserver-client-kubelet"),
    );
    let t = Instant::now();
    while !api.k(&["get", "csr", "sneaky"]).contains("Failed") {
        assert!(t.elapsed() < Duration::from_secs(30), "{}", api.k(&["get", "csr", "sneaky", "-o", "yaml"]));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(api.k(&["get", "csr", "sneaky", "-o", "jsonpath={.status.certificate}"]), "");
    // A request that is not a signed PKCS#10 request is refused outright.
    let bad = "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: bad\nspec:\n  request: aGVsbG8=\n  signerName: kubernetes.io/kube-apiserver-client\n";
    std::fs::write(d.join("bad.yaml"), bad).unwrap();
    let e = api.k_fails(&["create", "-f", d.join("bad.yaml").to_str().unwrap()], None);
    assert!(e.contains("spec.request: Invalid value"), "{e}");

    // Approval goes only through the approval subresource, by those who may approve
    // for the signer: a write to the request itself or to its status cannot approve it.
    create_as(&joiner, &csr("pending", "/CN=eve", "kubernetes.io/kube-apiserver-client"));
    let approved = r#"{"status":{"conditions":[{"type":"Approved","status":"True","reason":"X","message":"x"}]}}"#;
    api.k(&["patch", "csr", "pending", "--type=merge", "-p", approved]);
    api.k(&["patch", "csr", "pending", "--subresource=status", "--type=merge", "-p", approved]);
    std::thread::sleep(Duration::from_millis(500));
    let pending = api.k(&["get", "csr", "pending"]);
    assert!(pending.contains("Pending"), "{pending}");
    api.k(&[
        "create",
        "clusterrole",
        "csr-updater",
        "--verb=get,list,update",
        "--resource=certificatesigningrequests,certificatesigningrequests/approval",
    ]);
    api.k(&[
        "create",
        "clusterrolebinding",
        "csr-updater",
        "--clusterrole=csr-updater",
        &format!("--user=system:bootstrap:{id}"),
    ]);
    let t = Instant::now();
    let e = loop {
        let o = kubectl_as(&joiner, &["certificate", "approve", "pending"]);
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        if e.contains("not permitted to approve") || t.elapsed() > Duration::from_secs(20) {
            break e;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        e.contains(r#"user not permitted to approve requests with signerName "kubernetes.io/kube-apiserver-client""#),
        "{e}"
    );
    assert!(api.k(&["get", "csr", "pending"]).contains("Pending"));

    // A deleted token stops working at once; an expired one too.
    assert!(skiff(&["token", "delete", &token]).contains(id));
    let e = refused(&joiner, &["get", "csr"]);
    assert!(e.contains("You must be logged in to the server"), "{e}");
    let short = skiff(&["token", "create", "--ttl", "5s"]);
    let brief = user_kubeconfig(&api, "brief", &format!("    token: {short}"));
    ok(&brief, &["auth", "whoami"]);
    std::thread::sleep(Duration::from_secs(6));
    let e = refused(&brief, &["auth", "whoami"]);
    assert!(e.contains("You must be logged in to the server"), "{e}");
    let o = Command::new(skiff_bin())
        .args(["token", "create", "--groups", "system:masters", "--kubeconfig"])
        .arg(api.kubeconfig())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(r#"does not start with "system:bootstrappers:""#),
        "{}",
        text(&o)
    );
}

/// ResourceQuota: a namespace's quota counts what its objects use, refuses what would
/// go past it (and pods that do not say what it limits) in Kubernetes' words, gives room
/// back when objects go, and lets exactly as many racing creates through as fit.
#[test]
fn resource_quotas_count_refuse_and_give_back() {
    let api = Api::start();
    api.k(&["create", "namespace", "q"]);
    api.k(&[
        "create",
        "quota",
        "compute",
        "-n",
        "q",
        "--hard=pods=2,requests.cpu=1,limits.memory=256Mi,count/configmaps=3",
    ]);
    let quota = || api.k_json(&["get", "quota", "compute", "-n", "q"]);
    let t = Instant::now();
    while quota()["status"]["used"].is_null() {
        assert!(t.elapsed() < Duration::from_secs(20), "the quota was never counted: {}", quota());
        std::thread::sleep(Duration::from_millis(100));
    }
    // kube-root-ca.crt is not here (no controller-manager): no configmaps yet.
    assert_eq!(
        quota()["status"]["used"],
        json!({"pods": "0", "requests.cpu": "0", "limits.memory": "0", "count/configmaps": "0"})
    );
    let pod = |name: &str, resources: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Pod", "metadata": {{"name": "{name}", "namespace": "q"}}, "spec": {{"containers": [{{"name": "c", "image": "busybox", "resources": {resources}}}]}}}}"#
        )
    };
    let e = api.k_fails(&["create", "-f", "-"], Some(&pod("bare", "{}")));
    assert!(
        e.contains(
            r#"pods "bare" is forbidden: failed quota: compute: must specify limits.memory for: c; requests.cpu for: c"#
        ),
        "{e}"
    );
    let sized = r#"{"requests": {"cpu": "400m"}, "limits": {"memory": "100Mi"}}"#;
    api.k_in(&["create", "-f", "-"], &pod("one", sized));
    api.k_in(&["create", "-f", "-"], &pod("two", sized));
    let q = quota();
    assert_eq!(q["status"]["used"]["pods"], "2", "{q}");
    assert_eq!(q["status"]["used"]["requests.cpu"], "800m", "{q}");
    assert_eq!(q["status"]["used"]["limits.memory"], "200Mi", "{q}");
    let table = api.k(&["get", "quota", "-n", "q"]);
    assert!(table.contains("pods: 2/2, requests.cpu: 800m/1"), "{table}");
    assert!(table.contains("limits.memory: 200Mi/256Mi"), "{table}");
    let e = api.k_fails(&["create", "-f", "-"], Some(&pod("three", sized)));
    assert!(
        e.contains(r#"pods "three" is forbidden: exceeded quota: compute, requested: limits.memory=100Mi,pods=1,requests.cpu=400m, used: limits.memory=200Mi,pods=2,requests.cpu=800m, limited: limits.memory=256Mi,pods=2,requests.cpu=1"#),
        "{e}"
    );
    // A refused create charged nothing; a deleted pod gives its share back.
    assert_eq!(quota()["status"]["used"]["pods"], "2");
    api.k(&["delete", "pod", "one", "-n", "q", "--grace-period=0", "--force"]);
    let t = Instant::now();
    while quota()["status"]["used"]["pods"] != "1" {
        assert!(t.elapsed() < Duration::from_secs(20), "the deleted pod was not given back: {}", quota());
        std::thread::sleep(Duration::from_millis(100));
    }
    api.k_in(&["create", "-f", "-"], &pod("three", sized));
    // Eight configmaps created at once against a limit of three: exactly three land.
    let made: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let api = &api;
                s.spawn(move || {
                    let name = format!("cm{i}");
                    api.kubectl_with(KUBECTL_132, &["create", "configmap", &name, "-n", "q"], None).status.success()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap() as usize).sum()
    });
    assert_eq!(made, 3, "creates racing for the last units");
    let listed = api.k(&["get", "configmaps", "-n", "q", "-o", "name"]);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    let e = api.k_fails(&["create", "configmap", "cm-late", "-n", "q"], None);
    assert!(e.contains("exceeded quota: compute, requested: count/configmaps=1, used: count/configmaps=3, limited: count/configmaps=3"), "{e}");
    // Server-side dry run is checked too, and charges nothing.
    api.k(&[
        "delete",
        "configmap",
        "cm0",
        "cm1",
        "cm2",
        "cm3",
        "cm4",
        "cm5",
        "cm6",
        "cm7",
        "-n",
        "q",
        "--ignore-not-found",
    ]);
    let t = Instant::now();
    while quota()["status"]["used"]["count/configmaps"] != "0" {
        assert!(t.elapsed() < Duration::from_secs(20), "deleted configmaps were not given back: {}", quota());
        std::thread::sleep(Duration::from_millis(100));
    }
    api.k(&["create", "configmap", "dry", "-n", "q", "--dry-run=server"]);
    assert_eq!(quota()["status"]["used"]["count/configmaps"], "0");
}

/// A user gets `--max-request-burst-per-user` requests at once and then
/// `--max-requests-per-user` a second; beyond that 429 with Retry-After, which kubectl
/// waits out. Other users are not affected.
#[test]
fn requests_per_user_are_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.csv");
    std::fs::write(&tokens, "jane-token,jane,1,\"readers\"\nbob-token,bob,2,\"readers\"\n").unwrap();
    let api = Api::start_with(&[
        "--token-auth-file",
        tokens.to_str().unwrap(),
        "--max-requests-per-user",
        "1",
        "--max-request-burst-per-user",
        "5",
    ]);
    api.k(&["create", "clusterrolebinding", "readers", "--clusterrole=view", "--group=readers"]);
    let ca = api.dir.path().join("api/pki/ca.crt");
    let url = format!("https://127.0.0.1:{}/api/v1/namespaces/default/configmaps", api.https_port);
    // `n` requests in a row on one connection: each one's status code.
    let codes = |token: &str, n: usize| -> Vec<String> {
        let o = Command::new("curl")
            .args(["-s", "-w", "%{http_code}\\n", "--max-time", "20", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args((0..n).flat_map(|_| ["-o", "/dev/null", url.as_str()]))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect()
    };
    let t = Instant::now();
    while codes("bob-token", 1) != ["200"] {
        assert!(t.elapsed() < Duration::from_secs(30), "the readers binding never took effect");
        std::thread::sleep(Duration::from_millis(1100));
    }
    let jane = codes("jane-token", 12);
    let served = jane.iter().filter(|c| *c == "200").count();
    assert!(jane[..5].iter().all(|c| c == "200"), "the burst is served: {jane:?}");
    assert!(served < 12, "a burst of 5 then 1 a second: {jane:?}");
    assert!(jane.iter().all(|c| c == "200" || c == "429"), "{jane:?}");
    // Three more at once (at most one refilled meanwhile): headers and bodies.
    let refused = Command::new("curl")
        .args(["-s", "-D", "-", "--max-time", "5", "--cacert"])
        .arg(&ca)
        .args(["-H", "Authorization: Bearer jane-token", &url, &url, &url])
        .output()
        .unwrap();
    let refused = String::from_utf8_lossy(&refused.stdout).to_lowercase();
    assert!(refused.contains("http/1.1 429") || refused.contains("http/2 429"), "{refused}");
    assert!(refused.contains("\r\nretry-after: 1\r\n"), "{refused}");
    assert!(refused.contains("too many requests, please try again later."), "{refused}");
    assert!(refused.contains(r#""reason":"toomanyrequests""#), "{refused}");
    // bob is not jane.
    assert_eq!(codes("bob-token", 3), ["200", "200", "200"]);
    // kubectl waits out the 429s and gets its answer.
    let out = Command::new("kubectl")
        .args(["--server", &format!("https://127.0.0.1:{}", api.https_port), "--certificate-authority"])
        .arg(&ca)
        .args(["--token", "jane-token", "get", "configmaps", "-o", "name"])
        .env("KUBECONFIG", "/dev/null")
        .env("HOME", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The components (system:masters) are not limited.
    for _ in 0..10 {
        api.k(&["get", "configmaps"]);
    }
}

/// A user may hold only so many watches open (`--max-watches-per-user`); one more gets
/// 429, and closing one makes room again. Other users are not affected.
#[test]
fn watches_per_user_are_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.csv");
    std::fs::write(&tokens, "jane-token,jane,1,\"readers\"\nbob-token,bob,2,\"readers\"\n").unwrap();
    let api = Api::start_with(&["--token-auth-file", tokens.to_str().unwrap(), "--max-watches-per-user", "2"]);
    api.k(&["create", "clusterrolebinding", "readers", "--clusterrole=view", "--group=readers"]);
    // (The components, in system:masters, are not limited: the admin kubeconfig watches freely.)
    let ca = api.dir.path().join("api/pki/ca.crt");
    let url = format!("https://127.0.0.1:{}/api/v1/namespaces/default/configmaps?watch=1", api.https_port);
    // A watch held open by curl, returned once the server has answered it with 200 (curl
    // prints the response headers as they arrive).
    let watch = |token: &str| {
        let mut c = Command::new("curl")
            .args(["-sN", "-o", "/dev/null", "-D", "-", "--max-time", "120", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}"), &url])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut status = String::new();
        BufReader::new(c.stdout.as_mut().unwrap()).read_line(&mut status).unwrap();
        assert!(status.contains(" 200"), "the watch was not served: {status:?}");
        c
    };
    // A watch that is refused answers at once; one that is served streams until killed.
    let status_now = |token: &str| {
        let o = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}"), &url])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let t = Instant::now();
    while status_now("jane-token") != "200" {
        assert!(t.elapsed() < Duration::from_secs(30), "the readers binding never took effect");
    }
    let mut held = vec![watch("jane-token"), watch("jane-token")];
    assert_eq!(status_now("jane-token"), "429", "jane's third watch");
    let body = Command::new("curl")
        .args(["-s", "--max-time", "2", "--cacert"])
        .arg(&ca)
        .args(["-H", "Authorization: Bearer jane-token", &url])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&body.stdout);
    assert!(body.contains(r#"too many watches open for user \"jane\" (at most 2 at once)"#), "{body}");
    // bob is not jane: his watch is served.
    let mut bob = watch("bob-token");
    let _ = bob.kill();
    let _ = bob.wait();
    // One of jane's watches ends: there is room again.
    let mut first = held.remove(0);
    first.kill().unwrap();
    first.wait().unwrap();
    let t = Instant::now();
    while status_now("jane-token") != "200" {
        assert!(t.elapsed() < Duration::from_secs(30), "jane's closed watch was not given back");
        std::thread::sleep(Duration::from_millis(200));
    }
    for mut c in held {
        let _ = c.kill();
        let _ = c.wait();
    }
}
