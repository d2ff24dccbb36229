//! `skiff up` and `skiff down`: a whole single-node cluster in one process.
//!
//! `skiff up` starts, in one background process, a one-member store, the API server,
//! the controller-manager, the scheduler and a node agent (by default on a private
//! containerd), all keeping their state under `--data-dir`; it waits until the node is
//! Ready, showing each step, and prints the `export KUBECONFIG=...` line. `skiff down`
//! stops that process and removes what the node made on the machine (containers,
//! network namespaces, the bridge, iptables chains, cgroups, the containerd data) but
//! keeps the cluster's data — store, certificates, kubeconfig, local volumes — so the
//! next `skiff up` resumes the same cluster; `skiff down --purge` removes that too.
//!
//! Each component is configured by parsing its own command line (`skiff store ...`,
//! `skiff agent ...`), so `skiff up` has exactly the defaults the separate commands have.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser};
use k8s_openapi::api::core::v1::Node;
use kube::Api;

use crate::controllers_cmd::{self, AgentArgs, ContainerdArgs, RuntimeKind};
use crate::controlplane;
use crate::duration;

#[derive(Args, Clone)]
pub struct UpArgs {
    /// Directory of the cluster: store data (`store/`), certificates and kubeconfig
    /// (`apiserver/`), the node agent and its containerd (`agent/`), local volumes
    /// (`local-path/`), the log (`skiff.log`) and the pid file.
    #[arg(long, default_value = "/var/lib/skiff")]
    pub(crate) data_dir: PathBuf,
    /// How the node runs pods: real containers on a private containerd (needs root), or
    /// simulated ones (pods go Running, nothing runs).
    #[arg(long, value_enum, default_value = "containerd")]
    runtime: RuntimeKind,
    /// Where the store serves etcd clients (`etcdctl --endpoints`).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub(crate) store_client_addr: SocketAddr,
    /// Where the store listens for peers (it has none until members are added).
    #[arg(long, default_value = "127.0.0.1:2380")]
    pub(crate) store_peer_addr: SocketAddr,
    /// Where the store serves Prometheus `/metrics` and `/health` (plain HTTP), e.g.
    /// 127.0.0.1:2381 as kubeadm sets up etcd. Default: not served.
    #[arg(long)]
    store_metrics_addr: Option<SocketAddr>,
    /// Where the controller-manager serves Prometheus `/metrics` (plain HTTP), e.g.
    /// 127.0.0.1:10257. Default: not served.
    #[arg(long)]
    controller_metrics_addr: Option<SocketAddr>,
    /// Where the API server serves HTTPS (the kubeconfig points here).
    #[arg(long, default_value = "127.0.0.1:6443")]
    bind: SocketAddr,
    /// The node's name. Default: the host name, lowercased.
    #[arg(long)]
    node_name: Option<String>,
    /// The node's address (its InternalIP, where the API server reaches the agent for
    /// logs, exec and port-forward; NodePorts answer on it). The agent's port has no
    /// authentication yet, so the default keeps it on loopback.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: Option<String>,
    /// The agent's port on the node address (the kubelet's port).
    #[arg(long, default_value_t = 10250)]
    node_port: u16,
    /// The range the controller-manager gives each Node a /24 pod CIDR from
    /// (`spec.podCIDR`); a node agent without --pod-cidr takes its pods' addresses
    /// from that /24.
    #[arg(long, default_value = "10.88.0.0/16")]
    cluster_cidr: String,
    #[command(flatten)]
    containerd: ContainerdArgs,
    /// Run in this process, logging to stderr, instead of starting a background process.
    #[arg(long)]
    foreground: bool,
    /// Give up waiting for the cluster to be ready after this long.
    #[arg(long, default_value = "2m", value_parser = duration::parse)]
    timeout: Duration,
    /// `skiff init`: the store serves TLS with client certificates, and a join command
    /// is printed.
    #[arg(skip)]
    pub(crate) init: bool,
}

#[derive(Args)]
pub struct DownArgs {
    /// The cluster's directory, as given to `skiff up`.
    #[arg(long, default_value = "/var/lib/skiff")]
    data_dir: PathBuf,
    /// Also delete the cluster's data (store, certificates, kubeconfig, local volumes):
    /// the next `skiff up` starts a new cluster.
    #[arg(long)]
    purge: bool,
    /// How long the cluster may take to stop before it is killed.
    #[arg(long, default_value = "30s", value_parser = duration::parse)]
    timeout: Duration,
}

/// What `skiff up` was started with, so `skiff down` undoes exactly that.
const ARGS_FILE: &str = "up.args";

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    cwd: PathBuf,
    argv: Vec<String>,
}
const PID_FILE: &str = "skiff.pid";
const LOG_FILE: &str = "skiff.log";

/// Parses `argv` as the flags of one subcommand (`T`), with that command's defaults.
#[derive(Parser)]
struct Flags<T: Args> {
    #[command(flatten)]
    inner: T,
}

pub(crate) fn parse<T: Args>(what: &str, argv: Vec<String>) -> anyhow::Result<T> {
    Flags::<T>::try_parse_from(std::iter::once(what.to_string()).chain(argv))
        .map(|f| f.inner)
        .map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

impl UpArgs {
    pub(crate) fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(controllers_cmd::host_name)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("apiserver/admin.kubeconfig")
    }

    fn agent_root(&self) -> PathBuf {
        self.containerd.root_or(&self.data_dir.join("agent"))
    }
}

/// Why this machine cannot run the containerd runtime, if it cannot.
fn containerd_unavailable(a: &UpArgs) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("running containers needs root (network namespaces, cgroups, iptables)".into());
    }
    let on_path = |bin: &str| {
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file())).unwrap_or(false)
    };
    for bin in ["containerd", "containerd-shim-runc-v2", "runc"] {
        if !on_path(bin) {
            return Some(format!("`{bin}` is not installed (apt-get install containerd runc)"));
        }
    }
    let bridge = a.containerd.cni_bin_dir.join("bridge");
    if !bridge.is_file() {
        return Some(format!(
            "the CNI plugins are missing ({} not found; apt-get install containernetworking-plugins)",
            bridge.display()
        ));
    }
    if !Path::new("/sys/fs/cgroup/memory").exists() && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        return Some("no memory cgroup is mounted under /sys/fs/cgroup".into());
    }
    None
}

/// The pid in the pid file, if that process still runs and is a `skiff up --foreground`
/// (a zombie does not count, nor a process that got the pid after a reboot).
fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = (args.contains(&&b"up"[..]) || args.contains(&&b"init"[..])) && args.contains(&&b"--foreground"[..]);
    (ours && alive(pid)).then_some(pid)
}

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

pub async fn up(a: UpArgs) -> anyhow::Result<()> {
    up_with(a, std::env::args().skip(1).collect()).await
}

/// `skiff up` / `skiff init` as the command line `argv` (from the subcommand on) says;
/// the background process is started with it, and `skiff down` reads it back.
pub(crate) async fn up_with(a: UpArgs, argv: Vec<String>) -> anyhow::Result<()> {
    if a.runtime == RuntimeKind::Containerd {
        if let Some(why) = containerd_unavailable(&a) {
            anyhow::bail!(
                "cannot run containers on this machine: {why}.\n\
                 A cluster whose node is simulated (pods go Running, no containers run) works anywhere:\n  \
                 skiff up --runtime fake"
            );
        }
    }
    // (The background process finds its own pid there, written by its parent.)
    if let Some(pid) = running_pid(&a.data_dir).filter(|p| *p as u32 != std::process::id()) {
        anyhow::bail!(
            "a cluster already runs from {} (pid {pid}); `skiff down --data-dir {}` stops it",
            a.data_dir.display(),
            a.data_dir.display()
        );
    }
    std::fs::create_dir_all(&a.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data directory {}: {e}", a.data_dir.display()))?;
    // How this cluster was started, for `skiff down` (with the directory relative paths
    // in it are relative to).
    // Without the --foreground the background process is started with, so that the
    // saved line starts the cluster as its user did.
    let saved_argv = argv.iter().filter(|f| *f != "--foreground").cloned().collect();
    let saved = Saved { cwd: std::env::current_dir()?, argv: saved_argv };
    std::fs::write(a.data_dir.join(ARGS_FILE), serde_json::to_vec(&saved)?)?;
    if a.foreground {
        return run(a).await;
    }
    // A control-plane machine joining the store (see `skiff join --control-plane`).
    let joining = a.data_dir.join(controlplane::STORE_JOIN).exists();
    start_background(&a, &argv)?;
    wait_ready(&a, joining).await
}

/// The command line `skiff up` / `skiff init` was last started with in `dir`.
pub(crate) fn saved_argv(dir: &Path) -> Option<Vec<String>> {
    let saved: Saved = serde_json::from_slice(&std::fs::read(dir.join(ARGS_FILE)).ok()?).ok()?;
    Some(saved.argv)
}

/// Starts this program again as `skiff up --foreground` in a session of its own, logging
/// to the data directory, and remembers how it was started for `skiff down`.
fn start_background(a: &UpArgs, argv: &[String]) -> anyhow::Result<()> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(a.data_dir.join(LOG_FILE))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(argv).arg("--foreground").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; it detaches the cluster from this terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    std::fs::write(a.data_dir.join(PID_FILE), child.id().to_string())?;
    Ok(())
}

/// Shows the start-up step by step until the node is Ready.
async fn wait_ready(a: &UpArgs, joining: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    // A resumed cluster's Node still says Ready from before: only a heartbeat of this
    // start counts (the times have whole seconds).
    let since = k8s_openapi::jiff::Timestamp::now().as_second() - 1;
    let log = a.data_dir.join(LOG_FILE);
    let failed = |what: &str| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::anyhow!("{what}; the last lines of {}:\n{}", log.display(), tail.join("\n"))
    };
    let step = |name: &str| eprint!("  {name:<40} ");
    let done = |t: Instant| eprintln!("ready ({:.1} s)", t.elapsed().as_secs_f64());
    let what = if joining { "this machine's part of the control plane" } else { "a single-node cluster" };
    eprintln!("starting {what} in {} (log: {})", a.data_dir.display(), log.display());

    // Each step polls `check` until it holds, the process dies, or time runs out.
    async fn until<F, Fut>(a: &UpArgs, start: Instant, mut check: F) -> Result<(), &'static str>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        loop {
            if check().await {
                return Ok(());
            }
            if running_pid(&a.data_dir).is_none() {
                return Err("the cluster stopped while starting");
            }
            if start.elapsed() > a.timeout {
                return Err(
                    "the cluster did not get ready in time (see --timeout); it still runs: `skiff down` stops it",
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let t = Instant::now();
    step(&format!("store on {}", a.store_client_addr));
    let endpoint = a.store_client_addr.to_string();
    until(a, start, || store_answers(&endpoint, &a.data_dir, a.init)).await.map_err(failed)?;
    done(t);

    let t = Instant::now();
    step(&format!("API server on https://{}", a.bind));
    let kubeconfig = a.kubeconfig();
    until(a, start, || async { api_client(&kubeconfig).await.is_some() }).await.map_err(failed)?;
    done(t);
    let client = api_client(&kubeconfig).await.context("the API server stopped answering")?;

    let t = Instant::now();
    let node = a.node_name();
    step(&format!("node {node}"));
    let nodes: Api<Node> = Api::all(client);
    until(a, start, || async {
        let Ok(n) = nodes.get(&node).await else { return false };
        let conditions = n.status.and_then(|s| s.conditions).unwrap_or_default();
        conditions.iter().any(|c| {
            let fresh = c.last_heartbeat_time.as_ref().is_some_and(|t| t.0.as_second() >= since);
            c.type_ == "Ready" && c.status == "True" && fresh
        })
    })
    .await
    .map_err(failed)?;
    done(t);

    let kc = std::fs::canonicalize(&kubeconfig)?;
    println!("export KUBECONFIG={}", kc.display());
    if a.init && !joining {
        let token = crate::token_cmd::create(
            &kc,
            "24h",
            &[skiff_apiserver::bootstrap::DEFAULT_GROUP.to_string()],
            "skiff init",
        )
        .await?;
        let join = crate::token_cmd::join_command(&kc, &token)?;
        let pki = std::fs::canonicalize(a.data_dir.join("apiserver/pki"))?;
        let client = skiff_controllers::client::from_kubeconfig(&kc).await?;
        let stores = vec![format!("https://{}", a.store_client_addr)];
        let key =
            controlplane::upload(client, &pki, &token, stores, &a.containerd.service_cidr, &a.cluster_cidr).await?;
        println!("{join}");
        println!("{join} --control-plane --certificate-key {key}");
        eprintln!(
            "\nOn another machine, the first line above makes it a node of this cluster; the second makes it a\n\
             control-plane machine too (a store member, an API server, a controller-manager and a scheduler;\n\
             add `-- <skiff init flags for that machine>`). The token lives 24 hours, and the certificates for\n\
             the second line go with it (`skiff token create --print-join-command` makes a token for nodes).\n\
             The store takes only clients with a certificate:\n\
             etcdctl --endpoints https://{} --cacert {1}/ca.crt --cert {1}/apiserver-etcd-client.crt --key {1}/apiserver-etcd-client.key",
            a.store_client_addr,
            pki.display()
        );
    }
    if joining {
        eprintln!("\nThis machine joined the control plane: its store member is a voting member.");
    }
    eprintln!(
        "\nThe cluster is up ({:.1} s). Run the line above, then e.g. `kubectl get nodes`.\n\
         The store answers etcdctl on {}. Stop with `skiff down{}`.",
        start.elapsed().as_secs_f64(),
        a.store_client_addr,
        if a.data_dir == Path::new("/var/lib/skiff") {
            String::new()
        } else {
            format!(" --data-dir {}", a.data_dir.display())
        }
    );
    Ok(())
}

/// The cluster itself: every component as a task of this process, until SIGTERM/Ctrl-C
/// or until one of them fails.
async fn run(a: UpArgs) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&a.data_dir)?;
    std::fs::write(dir.join(PID_FILE), std::process::id().to_string())?;
    let path = |p: &str| dir.join(p).display().to_string();
    let s = |x: &str| x.to_string();

    // `skiff init`: certificates for the store (server and peer) and for the API server
    // as its client, from the cluster CA; the store then takes only clients with one.
    let scheme = if a.init { "https" } else { "http" };
    let mut store_argv = vec![
        s("--data-dir"),
        path("store"),
        s("--listen-client-urls"),
        format!("{scheme}://{}", a.store_client_addr),
        s("--listen-peer-urls"),
        format!("{scheme}://{}", a.store_peer_addr),
    ];
    let mut etcd_tls = Vec::new();
    let joining: Option<controlplane::StoreJoin> =
        std::fs::read(dir.join(controlplane::STORE_JOIN)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    if a.init {
        // Members of a multi-machine store need names of their own: the node's. (A store
        // made before names were kept stays `default`, the name it was made with.)
        let name = match std::fs::read_to_string(dir.join(controlplane::STORE_NAME)) {
            Ok(n) => n.trim().to_string(),
            Err(_) if dir.join("store").exists() => s("default"),
            Err(_) => {
                std::fs::write(dir.join(controlplane::STORE_NAME), a.node_name())?;
                a.node_name()
            }
        };
        store_argv.extend([s("--name"), name]);
        if let Some(j) = &joining {
            store_argv.extend([s("--initial-cluster"), j.initial_cluster.clone()]);
            store_argv.extend([s("--initial-cluster-state"), s("existing")]);
        }
        let pki = skiff_apiserver::pki::Pki::ensure(&dir.join("apiserver"), a.bind.ip())?;
        let ips = [a.store_client_addr.ip(), a.store_peer_addr.ip()];
        pki.ensure_pair("store", "skiff-store", &ips, true)?;
        pki.ensure_pair("apiserver-etcd-client", "kube-apiserver-etcd-client", &[], false)?;
        let f = |n: &str| pki.dir.join(n).display().to_string();
        store_argv.extend([s("--cert-file"), f("store.crt"), s("--key-file"), f("store.key")]);
        store_argv.extend([s("--trusted-ca-file"), f("ca.crt"), s("--client-cert-auth")]);
        store_argv.extend([s("--peer-cert-file"), f("store.crt"), s("--peer-key-file"), f("store.key")]);
        store_argv.extend([s("--peer-trusted-ca-file"), f("ca.crt"), s("--peer-client-cert-auth")]);
        etcd_tls = vec![
            s("--etcd-cafile"),
            f("ca.crt"),
            s("--etcd-certfile"),
            f("apiserver-etcd-client.crt"),
            s("--etcd-keyfile"),
            f("apiserver-etcd-client.key"),
        ];
    }
    store_argv.extend(a.store_metrics_addr.iter().flat_map(|m| [s("--listen-metrics-urls"), format!("http://{m}")]));
    let store: crate::StoreArgs = parse("store", store_argv)?;
    let mut tasks = Components::new();
    tasks.spawn(async move { ("store", crate::run_store(store).await) });
    let endpoint = a.store_client_addr.to_string();
    if let Some(j) = &joining {
        // A learner serves no linearizable reads: the API server waits for the promotion,
        // which the leader grants once the member has caught up.
        let pki = dir.join("apiserver/pki");
        wait_for("this machine's store member's promotion", || async {
            match controlplane::promote(&pki, j).await {
                Ok(done) => done,
                Err(e) => {
                    tracing::warn!("promoting this machine's store member: {e:#}");
                    false
                }
            }
        })
        .await?;
        tracing::info!("store member {} promoted to a voting member", j.name);
        std::fs::remove_file(dir.join(controlplane::STORE_JOIN))?;
    }
    wait_for("the store", || store_answers(&endpoint, &dir, a.init)).await?;

    let api: crate::apiserver_cmd::ApiServerArgs = parse(
        "apiserver",
        vec![
            s("--store-endpoints"),
            a.store_client_addr.to_string(),
            s("--bind"),
            a.bind.to_string(),
            s("--data-dir"),
            path("apiserver"),
            s("--service-cluster-ip-range"),
            a.containerd.service_cidr.clone(),
            s("--node-name"),
            a.node_name(),
        ]
        .into_iter()
        .chain(etcd_tls)
        .collect(),
    )?;
    tasks.spawn(async move { ("apiserver", crate::apiserver_cmd::run(api).await) });
    let kubeconfig = dir.join("apiserver/admin.kubeconfig");
    wait_for("the API server", || async { api_client(&kubeconfig).await.is_some() }).await?;
    // Each component acts with its own identity (the API server wrote their kubeconfigs).
    let kc = |component: &str| dir.join(format!("apiserver/{component}.kubeconfig")).display().to_string();

    // `skiff up`: one process holds the only replica, so no leader election (whose Lease
    // would make a restarted cluster wait for the previous one to expire). `skiff init`:
    // other control-plane machines may join, so they elect.
    let elect = if a.init { "true" } else { "false" };
    let single = |component: &str| [s("--kubeconfig"), kc(component), s("--leader-elect"), s(elect)];
    let mut cm_argv = single("controller-manager").to_vec();
    cm_argv.extend([s("--allocate-node-cidrs"), s("--cluster-cidr"), a.cluster_cidr.clone()]);
    if let Some(m) = a.controller_metrics_addr {
        cm_argv.extend([s("--metrics-bind-address"), m.to_string()]);
    }
    let cm: controllers_cmd::ControllerManagerArgs = parse("controller-manager", cm_argv)?;
    tasks.spawn(async move { ("controller-manager", controllers_cmd::controller_manager(cm).await) });
    let sched: controllers_cmd::SchedulerArgs = parse("scheduler", single("scheduler").to_vec())?;
    tasks.spawn(async move { ("scheduler", controllers_cmd::scheduler(sched).await) });

    let mut agent_argv = vec![s("--kubeconfig"), kc("node"), s("--node-name"), a.node_name()];
    agent_argv.extend([s("--local-path-root"), path("local-path")]);
    let mut agent: AgentArgs = match a.runtime {
        RuntimeKind::Fake => {
            agent_argv.extend([s("--runtime"), s("fake"), s("--zones"), s("1")]);
            parse("agent", agent_argv)?
        }
        RuntimeKind::Containerd => {
            let ip = a.node_ip.clone().unwrap_or_else(|| s("127.0.0.1"));
            agent_argv.extend([s("--runtime"), s("containerd"), s("--node-ip"), ip]);
            agent_argv.extend([s("--port"), a.node_port.to_string()]);
            parse("agent", agent_argv)?
        }
    };
    agent.containerd = a.containerd.clone();
    agent.containerd.root = Some(a.agent_root());
    if a.runtime == RuntimeKind::Containerd {
        if let Some(image) = busybox_image(&dir) {
            agent.image_archive.push(image);
        }
    }
    // The agent's future is not Send (kube's config loading), so it runs in this task.
    let agent = controllers_cmd::agent(agent);
    tokio::pin!(agent);
    let mut agent_done = false;

    // Every component stops by itself on SIGTERM/Ctrl-C; the first to stop for any other
    // reason takes the cluster down.
    let mut result = Ok(());
    while !(agent_done && tasks.is_empty()) {
        tokio::select! {
            r = &mut agent, if !agent_done => {
                agent_done = true;
                record("agent", r, &mut result, &mut tasks);
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => match joined {
                Ok((name, r)) => record(name, r, &mut result, &mut tasks),
                Err(e) if e.is_cancelled() => {}
                Err(e) => record("a component", Err(anyhow::anyhow!("panicked: {e}")), &mut result, &mut tasks),
            },
        }
        if result.is_err() && !agent_done {
            break; // the agent is dropped with this function
        }
    }
    let _ = std::fs::remove_file(dir.join(PID_FILE));
    result
}

type Components = tokio::task::JoinSet<(&'static str, anyhow::Result<()>)>;

/// Notes how a component ended; the first failure stops the others.
fn record(name: &str, r: anyhow::Result<()>, result: &mut anyhow::Result<()>, tasks: &mut Components) {
    match r {
        Ok(()) => tracing::info!("{name} stopped"),
        Err(e) => {
            tracing::error!("{name} failed: {e:#}");
            if result.is_ok() {
                *result = Err(e.context(format!("{name} failed")));
            }
            tasks.abort_all();
        }
    }
}

/// The demo/test image (`skiff.local/busybox:latest`) built from Debian's busybox-static,
/// if it is installed; made once per data directory.
fn busybox_image(dir: &Path) -> Option<PathBuf> {
    let out = dir.join("images/busybox.tar");
    if out.exists() {
        return Some(out);
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        tracing::warn!("no /bin/busybox (busybox-static): the skiff.local/busybox image is not available");
        return None;
    }
    std::fs::create_dir_all(out.parent()?).ok()?;
    match skiff_nodeagent::ctr::image::build_busybox(busybox, "skiff.local/busybox:latest", &out) {
        Ok(()) => Some(out),
        Err(e) => {
            tracing::warn!("building the busybox image: {e:#}");
            None
        }
    }
}

/// Whether the store at `endpoint` answers a read.
/// Whether the store at `endpoint` answers a read (over TLS, as the API server reaches
/// it, for `skiff init`).
async fn store_answers(endpoint: &str, dir: &Path, tls: bool) -> bool {
    let mut opts = etcd_client::ConnectOptions::new();
    if tls {
        let pki = dir.join("apiserver/pki");
        let files = skiff_apiserver::storage::StoreTls {
            ca_file: Some(pki.join("ca.crt")),
            cert_file: Some(pki.join("apiserver-etcd-client.crt")),
            key_file: Some(pki.join("apiserver-etcd-client.key")),
        };
        match files.options_named(["the CA", "the certificate", "the key"]) {
            Ok(Some(t)) => opts = opts.with_tls(t),
            _ => return false,
        }
    }
    match etcd_client::Client::connect([endpoint], Some(opts)).await {
        Ok(mut c) => c.get("/", None).await.is_ok(),
        Err(_) => false,
    }
}

/// A client of the API server `kubeconfig` names, once the server answers.
async fn api_client(kubeconfig: &Path) -> Option<kube::Client> {
    if !kubeconfig.exists() {
        return None;
    }
    let c = skiff_controllers::client::from_kubeconfig(kubeconfig).await.ok()?;
    c.apiserver_version().await.ok().map(|_| c)
}

async fn wait_for<F, Fut>(what: &str, mut ok: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ok().await {
        if start.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("{what} did not start within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub async fn down(d: DownArgs) -> anyhow::Result<()> {
    let dir = &d.data_dir;
    if !dir.exists() {
        anyhow::bail!("no cluster in {} (the directory does not exist)", dir.display());
    }
    let dir = &std::fs::canonicalize(dir)?;
    let saved: Option<Saved> = std::fs::read(dir.join(ARGS_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let Some(saved) = saved else {
        anyhow::bail!("{} holds no cluster started by `skiff up` (no {ARGS_FILE})", dir.display());
    };
    // Relative paths among the flags mean what they meant to `skiff up`.
    std::env::set_current_dir(&saved.cwd)
        .map_err(|e| anyhow::anyhow!("`skiff up` ran in {}, which is gone: {e}", saved.cwd.display()))?;
    let parsed = crate::Cli::try_parse_from(std::iter::once("skiff".to_string()).chain(saved.argv))
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", dir.join(ARGS_FILE).display()))?;
    let (crate::Command::Up(a) | crate::Command::Init(a)) = parsed.command else {
        anyhow::bail!("{} does not hold a `skiff up` command line", dir.join(ARGS_FILE).display());
    };

    match running_pid(dir) {
        Some(pid) => {
            eprint!("stopping the cluster (pid {pid}) ...");
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let t = Instant::now();
            while alive(pid) && t.elapsed() < d.timeout {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if alive(pid) {
                eprint!(" still running after {:?}, killing it ...", d.timeout);
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                while alive(pid) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            eprintln!(" stopped ({:.1} s)", t.elapsed().as_secs_f64());
        }
        None => eprintln!("the cluster is not running"),
    }
    let _ = std::fs::remove_file(dir.join(PID_FILE));

    if a.runtime == RuntimeKind::Containerd {
        eprint!("removing the node's containers, network, cgroups and containerd data ...");
        skiff_nodeagent::reset(a.containerd.settings_at(a.agent_root(), vec![])).await?;
        eprintln!(" done");
    }
    if d.purge {
        std::fs::remove_dir_all(dir).map_err(|e| anyhow::anyhow!("removing {}: {e}", dir.display()))?;
        eprintln!("removed {}", dir.display());
    } else {
        eprintln!(
            "The cluster's data stays in {}: `skiff up` resumes it, `skiff down --purge` deletes it.",
            dir.display()
        );
    }
    Ok(())
}
