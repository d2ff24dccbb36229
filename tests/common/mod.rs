//! Test harness: real `skiff store` processes (and a real etcd 3.4 for differential
//! tests) on 127.0.0.1, each with its own data dir under one temporary directory, all
//! killed and removed when the harness is dropped — also when a test fails.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn skiff_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SKIFF_BIN") {
        // Absolute, so it still names the binary from a test's own working directory.
        return std::fs::canonicalize(&p).unwrap_or_else(|_| PathBuf::from(p));
    }
    PathBuf::from(env!("CARGO_BIN_EXE_skiff"))
}

/// A free loopback port below the kernel's ephemeral range (32768+), so no outgoing
/// connection takes it between this check and the member binding it; chosen at random
/// so parallel test processes rarely pick the same one, and never twice in one process.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut x = seed ^ ((std::process::id() as u64) << 32) | 1;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 10000 + (x % 22000) as u16;
        let mut given = GIVEN.lock().unwrap();
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// A cluster of `skiff store` (or etcd) processes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    binary: PathBuf,
}

impl Cluster {
    /// Starts `n` Skiff members bootstrapped as one cluster and waits for a leader.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        Self::start_with_each(n, |_| extra.iter().map(|s| s.to_string()).collect())
    }

    /// Like `start_with`, with flags of its own for each member (by index).
    pub fn start_with_each(n: usize, extra: impl Fn(usize) -> Vec<String>) -> Cluster {
        let mut c = Self::layout(n, skiff_bin(), "s");
        let initial = c.initial_cluster_of();
        for (i, m) in c.members.iter_mut().enumerate() {
            let mut args = vec!["store".to_string()];
            args.extend(member_flags(m, &initial));
            args.extend(extra(i));
            m.args = args;
        }
        c.members_mut_start_all();
        c.wait_ready();
        c.wait_started();
        c
    }

    /// Like `start`, but runs `prepare` for each member first (e.g. to restore its data
    /// dir from a snapshot), passing the `--initial-cluster` value.
    pub fn start_prepared(n: usize, mut prepare: impl FnMut(&Member, &str)) -> Cluster {
        let mut c = Self::layout(n, skiff_bin(), "s");
        let initial = c.initial_cluster_of();
        for m in &mut c.members {
            prepare(m, &initial);
            let mut args = vec!["store".to_string()];
            args.extend(member_flags(m, &initial));
            m.args = args;
        }
        c.members_mut_start_all();
        c.wait_ready();
        c.wait_started();
        c
    }

    /// Starts a real etcd 3.4 (Debian's etcd-server) the same way.
    pub fn start_etcd(n: usize) -> Cluster {
        let mut c = Self::layout(n, PathBuf::from("etcd"), "e");
        let initial = c.initial_cluster_of();
        let token = format!("etcd-{}", c.members[0].peer_port);
        for m in &mut c.members {
            let mut args = member_flags(m, &initial);
            args.push("--initial-cluster-token".into());
            args.push(token.clone());
            m.args = args;
        }
        c.members_mut_start_all();
        c.wait_ready();
        c.wait_started();
        c
    }

    fn layout(n: usize, binary: PathBuf, prefix: &str) -> Cluster {
        let dir = tempfile::Builder::new().prefix("skiff-test-").tempdir().unwrap();
        let members = (0..n)
            .map(|i| {
                let name = format!("{prefix}{i}");
                Member {
                    client_port: free_port(),
                    peer_port: free_port(),
                    data_dir: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    child: None,
                    args: vec![],
                }
            })
            .collect();
        Cluster { dir, members, binary }
    }

    fn initial_cluster_of(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn members_mut_start_all(&mut self) {
        for i in 0..self.members.len() {
            self.start_member(i);
        }
    }

    /// (Re)starts member `i` with its original flags.
    pub fn start_member(&mut self, i: usize) {
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {i} already runs");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&m.log).unwrap();
        let child = Command::new(&self.binary)
            .args(&m.args)
            .env("SKIFF_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        m.child = Some(child);
    }

    /// Prepares (does not start) a new Skiff member that will join this cluster with
    /// `--initial-cluster-state existing`; `initial_cluster` must include it.
    pub fn new_member(&mut self, name: &str) -> usize {
        let m = Member {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: self.dir.path().join(name),
            log: self.dir.path().join(format!("{name}.log")),
            child: None,
            args: vec![],
        };
        self.members.push(m);
        self.members.len() - 1
    }

    /// Starts member `i` (made by `new_member`) to join the cluster.
    pub fn join_member(&mut self, i: usize, initial_cluster: &str) {
        let mut args = vec!["store".to_string()];
        args.extend(member_flags(&self.members[i], initial_cluster));
        let n = args.len();
        args[n - 1] = "existing".into();
        self.members[i].args = args;
        self.start_member(i);
    }

    pub fn peer_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].peer_port)
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether member `i`'s process still runs (reaps it if it exited).
    pub fn is_alive(&mut self, i: usize) -> bool {
        match self.members[i].child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.members[i].child = None;
                false
            }
            None => false,
        }
    }

    pub fn signal(&self, i: usize, sig: &str) {
        if let Some(pid) = self.members[i].pid() {
            let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
        }
    }

    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.endpoint()).collect::<Vec<_>>().join(",")
    }

    pub fn running_endpoints(&self) -> String {
        self.members.iter().filter(|m| m.is_running()).map(|m| m.endpoint()).collect::<Vec<_>>().join(",")
    }

    /// Waits until every running member answers a linearizable read (or, with auth on,
    /// refuses it for want of a user: it answered).
    pub fn wait_ready(&self) {
        for m in self.members.iter().filter(|m| m.is_running()) {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out = etcdctl(&m.endpoint(), &["get", "ready-probe"]);
                if out.status.success() || text(&out).contains("etcdserver: user name is empty") {
                    break;
                }
                if Instant::now() > deadline {
                    panic!("member {} never became ready:\n{}\n{}", m.name, text(&out), self.log_tail(&m.name));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Waits until `member list` shows every member started (it has published its name
    /// and client URLs, which happens just after it first serves).
    pub fn wait_started(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = etcdctl(&self.running_endpoints(), &["member", "list"]);
            let started = String::from_utf8_lossy(&out.stdout).matches(", started, ").count();
            if started >= self.members.len() {
                return;
            }
            assert!(Instant::now() < deadline, "members never all started:\n{}", text(&out));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the member that currently leads, from `endpoint status`.
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate().filter(|(_, m)| m.is_running()) {
            let out = etcdctl(&m.endpoint(), &["endpoint", "status", "-w", "json"]);
            if !out.status.success() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let st = &v[0]["Status"];
            if st["leader"].as_u64().is_some() && st["leader"] == st["header"]["member_id"] {
                return Some(i);
            }
        }
        None
    }

    pub fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(l) = self.leader() {
                return l;
            }
            assert!(Instant::now() < deadline, "no leader elected:\n{}", self.all_logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log_tail(&self, name: &str) -> String {
        let path = self.dir.path().join(format!("{name}.log"));
        let s = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn all_logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {} ---\n{}", m.name, self.log_tail(&m.name)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn member_flags(m: &Member, initial_cluster: &str) -> Vec<String> {
    let client = format!("http://127.0.0.1:{}", m.client_port);
    let peer = format!("http://127.0.0.1:{}", m.peer_port);
    vec![
        "--name".into(),
        m.name.clone(),
        "--data-dir".into(),
        m.data_dir.display().to_string(),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer,
        "--initial-cluster".into(),
        initial_cluster.into(),
        "--initial-cluster-state".into(),
        "new".into(),
    ]
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("member logs:\n{}", self.all_logs());
        }
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Runs the real etcdctl (v3 API) against `endpoints`.
pub fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    etcdctl_stdin(endpoints, args, None)
}

pub fn etcdctl_stdin(endpoints: &str, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed (make deps)");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// stdout + stderr as text, for assertion messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs etcdctl and returns stdout, failing the test if the command failed.
pub fn ok(endpoints: &str, args: &[&str]) -> String {
    let o = etcdctl(endpoints, args);
    assert!(o.status.success(), "etcdctl {args:?} failed: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Runs etcdctl expecting failure; returns stderr.
pub fn fails(endpoints: &str, args: &[&str]) -> String {
    let o = etcdctl(endpoints, args);
    assert!(!o.status.success(), "etcdctl {args:?} unexpectedly succeeded: {}", text(&o));
    String::from_utf8_lossy(&o.stderr).to_string()
}

pub fn json(endpoints: &str, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-w", "json"]);
    let out = ok(endpoints, &a);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad json from {args:?}: {e}: {out}"))
}

/// One sample of a Prometheus text exposition: name, labels, value.
pub type Sample = (String, std::collections::BTreeMap<String, String>, f64);

/// Parses Prometheus' text format (0.0.4) strictly: every line is a `# HELP`/`# TYPE`
/// comment or `name{label="value",...} number`; panics on anything else.
pub fn prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix("# ") {
            assert!(c.starts_with("HELP ") || c.starts_with("TYPE "), "bad comment line: {line}");
            if let Some(t) = c.strip_prefix("TYPE ") {
                let kind = t.split_whitespace().nth(1).unwrap_or_default();
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "bad type: {line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"))),
            None => (series, ""),
        };
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        let mut map = std::collections::BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line}"));
            let (v, after) = after.split_once('"').unwrap_or_else(|| panic!("unterminated label: {line}"));
            map.insert(k.to_string(), v.to_string());
            rest = after.strip_prefix(',').unwrap_or(after);
        }
        out.push((name.to_string(), map, value));
    }
    out
}

/// GET http://addr/path; (status, body).
pub fn http_get_plain(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_string())
}
