//! `skiff bench-cluster`: the control plane at scale on this machine. Starts a
//! one-member store, the API server, controller-manager, scheduler and one
//! `skiff agent --runtime fake` holding `--nodes` simulated nodes (all children of this
//! process, under a private directory, on loopback ports, stopped and removed at the
//! end), then creates Deployments totalling `--pods` pods, scales them down by half,
//! rolls them to a new template, and deletes them, measuring:
//!
//! * scheduler throughput (pods bound per second, first creation to last binding),
//! * pod creation -> Running latency (p50/p99, as seen by one watch),
//! * API call latency per verb and resource (p50/p99) from a sampler running
//!   throughout, and the time of a full list of all pods,
//! * watch event delay: from the response to each of the sampler's ConfigMap writes to
//!   the event carrying its resourceVersion on a watch of ConfigMaps (0 when the event
//!   arrived first, so it does not include the write itself),
//! * each phase's duration, and each component's peak RSS and CPU seconds.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

#[derive(Args)]
pub struct ClusterBenchArgs {
    /// Simulated nodes (one agent process holds them all).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods in total, spread evenly over the Deployments.
    #[arg(long, default_value_t = 30000)]
    pods: usize,
    /// Number of Deployments.
    #[arg(long, default_value_t = 30)]
    deployments: usize,
    /// Working directory for the components' data (removed at the end unless --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory and its logs.
    #[arg(long)]
    keep: bool,
    /// Give up on a phase after this long.
    #[arg(long, default_value = "15m", value_parser = crate::duration::parse)]
    phase_timeout: Duration,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Log filter of the components (their logs are in --dir, kept with --keep), e.g.
    /// `warn,skiff_controllers::scheduler=debug`.
    #[arg(long, default_value = "warn")]
    component_log: String,
}

/// The child processes; all killed (and the directory removed) when dropped.
pub(crate) struct Plane {
    dir: PathBuf,
    keep: bool,
    /// The components' log filter.
    log: String,
    procs: Vec<(String, Child)>,
}

impl Drop for Plane {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Plane {
    pub(crate) fn spawn(&mut self, name: &str, args: &[String]) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(std::env::current_exe()?)
            .args(args)
            .env("SKIFF_LOG", &self.log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.procs.push((name.to_string(), child));
        Ok(())
    }

    /// (peak RSS in MiB so far, CPU seconds) per component.
    pub(crate) fn usage(&self) -> Vec<(String, u64, f64)> {
        self.procs
            .iter()
            .map(|(n, c)| {
                let status = std::fs::read_to_string(format!("/proc/{}/status", c.id())).unwrap_or_default();
                let kib = |key: &str| {
                    status
                        .lines()
                        .find(|l| l.starts_with(key))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.id())).unwrap_or_default();
                // Fields after the command name: utime and stime are the 12th and 13th.
                let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
                let f: Vec<&str> = after.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
                (n.clone(), kib("VmHWM:") / 1024, (ticks(11) + ticks(12)) / 100.0)
            })
            .collect()
    }
}

/// Latencies per (verb, resource), in milliseconds.
#[derive(Default)]
struct Latencies(Mutex<BTreeMap<String, Vec<f64>>>);

impl Latencies {
    fn add(&self, what: &str, d: Duration) {
        self.0.lock().expect("not poisoned").entry(what.into()).or_default().push(d.as_secs_f64() * 1000.0);
    }
}

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// What one watch on all pods saw: when each pod appeared, was bound, ran.
#[derive(Default)]
struct PodTimes {
    seen: HashMap<String, Instant>,
    bound: HashMap<String, Instant>,
    running: HashMap<String, Instant>,
    gone: usize,
}

/// Waits until `done` answers None; until then it says how far things are.
async fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> Option<String>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last_report = Instant::now();
    while let Some(progress) = done() {
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {:?} waiting for {what} ({progress})", timeout);
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("  ... waiting for {what}: {progress} ({:.0} s)", start.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(start.elapsed())
}

/// Is every Deployment on `image`, fully updated, with `want` pods available in all?
async fn rolled_out(deploys: &Api<Deployment>, want: usize, image: &str) -> bool {
    let Ok(list) = deploys.list(&ListParams::default()).await else { return false };
    let mut available = 0;
    for d in &list.items {
        let replicas = d.spec.as_ref().and_then(|s| s.replicas);
        let s = d.status.clone().unwrap_or_default();
        let img = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first())
            .and_then(|c| c.image.as_deref());
        let observed = s.observed_generation.is_some() && s.observed_generation >= d.metadata.generation;
        if !observed || img != Some(image) || s.updated_replicas != replicas || s.replicas != replicas {
            return false;
        }
        available += s.available_replicas.unwrap_or(0) as usize;
    }
    available == want
}

async fn wait_rolled_out(
    deploys: &Api<Deployment>,
    want: usize,
    image: &str,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let t = Instant::now();
    while !rolled_out(deploys, want, image).await {
        if t.elapsed() > timeout {
            anyhow::bail!("{what} did not finish within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

fn deployment(name: &str, replicas: usize) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "bench:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}
    }))
    .expect("a valid Deployment")
}

/// A one-member store, the API server, controller-manager and scheduler under `dir`
/// (no nodes); the Plane and the admin kubeconfig.
pub(crate) async fn start_control_plane(
    dir: &std::path::Path,
    keep: bool,
    log: &str,
) -> anyhow::Result<(Plane, PathBuf)> {
    let mut plane = Plane { dir: dir.to_path_buf(), keep, log: log.to_string(), procs: Vec::new() };
    let s = |x: &str| x.to_string();
    let (client_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
    let store_dir = dir.join("store");
    plane.spawn(
        "store",
        &[
            s("store"),
            s("--data-dir"),
            store_dir.display().to_string(),
            s("--listen-client-urls"),
            format!("http://127.0.0.1:{client_port}"),
            s("--listen-peer-urls"),
            format!("http://127.0.0.1:{peer_port}"),
        ],
    )?;
    // The API server needs an answering store.
    let t = Instant::now();
    loop {
        let ok = match etcd_client::Client::connect([format!("127.0.0.1:{client_port}")], None).await {
            Ok(mut c) => c.get("/", None).await.is_ok(),
            Err(_) => false,
        };
        if ok {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the store did not start; see {}", dir.join("store.log").display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let api_dir = dir.join("api");
    plane.spawn(
        "apiserver",
        &[
            s("apiserver"),
            s("--store-endpoints"),
            format!("127.0.0.1:{client_port}"),
            s("--bind"),
            format!("127.0.0.1:{api_port}"),
            s("--data-dir"),
            api_dir.display().to_string(),
        ],
    )?;
    let kubeconfig = api_dir.join("admin.kubeconfig");
    let started = Instant::now();
    while !kubeconfig.exists() || skiff_controllers::client::from_kubeconfig(&kubeconfig).await.is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the API server did not start; see {}", dir.join("apiserver.log").display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kc = kubeconfig.display().to_string();
    plane.spawn("controller-manager", &[s("controller-manager"), s("--kubeconfig"), kc.clone()])?;
    plane.spawn("scheduler", &[s("scheduler"), s("--kubeconfig"), kc.clone()])?;
    Ok((plane, kubeconfig))
}

pub async fn run(a: ClusterBenchArgs) -> anyhow::Result<()> {
    if a.nodes == 0 || a.pods == 0 || a.deployments == 0 {
        anyhow::bail!("--nodes, --pods and --deployments must be at least 1");
    }
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("skiff-bench-cluster-{}", std::process::id())));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!("{} is not empty; give an empty or new --dir", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    let (mut plane, kubeconfig) = start_control_plane(&dir, a.keep, &a.component_log).await?;
    let s = |x: &str| x.to_string();
    let kc = kubeconfig.display().to_string();
    plane.spawn(
        "agent",
        &[
            s("agent"),
            s("--kubeconfig"),
            kc.clone(),
            s("--runtime"),
            s("fake"),
            s("--nodes"),
            a.nodes.to_string(),
            s("--start-delay"),
            s("1s"),
            s("--local-path-root"),
            dir.join("local-path").display().to_string(),
        ],
    )?;
    let client = skiff_controllers::client::from_kubeconfig(&kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    eprintln!("starting {} simulated nodes ...", a.nodes);
    let t = Instant::now();
    loop {
        let n = nodes.list_metadata(&ListParams::default()).await.map(|l| l.items.len()).unwrap_or(0);
        if n >= a.nodes {
            break;
        }
        if t.elapsed() > a.phase_timeout {
            anyhow::bail!("only {n} of {} nodes registered", a.nodes);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let nodes_up = t.elapsed();

    // One watch on all pods records when each appears, is bound and runs.
    let times = Arc::new(Mutex::new(PodTimes::default()));
    let pod_watch = {
        let times = times.clone();
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default()).boxed();
            while let Some(e) = events.next().await {
                let now = Instant::now();
                let mut t = times.lock().expect("not poisoned");
                let mut see = |p: &Pod| {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    t.seen.entry(name.clone()).or_insert(now);
                    if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                        t.bound.entry(name.clone()).or_insert(now);
                    }
                    if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                        t.running.entry(name).or_insert(now);
                    }
                };
                match e {
                    Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => see(&p),
                    Ok(watcher::Event::Delete(_)) => t.gone += 1,
                    _ => {}
                }
            }
        })
    };
    // Watch event delay: a watch on ConfigMaps notes when each version arrives, by
    // resourceVersion; the sampler's writes below note when their responses came.
    let cm_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let written: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let cm_watch = {
        let cm_seen = cm_seen.clone();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        tokio::spawn(async move {
            let mut events = watcher(cms, watcher::Config::default()).boxed();
            while let Some(e) = events.next().await {
                if let Ok(watcher::Event::Apply(cm)) = e {
                    if let Some(rv) = cm.metadata.resource_version {
                        cm_seen.lock().expect("not poisoned").insert(rv, Instant::now());
                    }
                }
            }
        })
    };
    // The sampler: single-object reads and writes and paged lists, throughout.
    let lat = Arc::new(Latencies::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (lat, stop, pods, deploys) = (lat.clone(), stop.clone(), pods.clone(), deploys.clone());
        let written = written.clone();
        tokio::spawn(async move {
            let cms: Api<ConfigMap> = Api::namespaced(deploys.clone().into_client(), "default");
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let t = Instant::now();
                if deploys.get_opt("bench-0").await.is_ok() {
                    lat.add("GET deployment", t.elapsed());
                }
                let t = Instant::now();
                if pods.list(&ListParams::default().limit(500)).await.is_ok() {
                    lat.add("LIST pods (limit 500)", t.elapsed());
                }
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("sample-{}", i % 10)}, "data": {"i": i.to_string()}});
                let t = Instant::now();
                let r = cms
                    .patch(&format!("sample-{}", i % 10), &PatchParams::apply("bench").force(), &Patch::Apply(&cm))
                    .await;
                if let Ok(cm) = r {
                    lat.add("PATCH (apply) configmap", t.elapsed());
                    if let Some(rv) = cm.metadata.resource_version {
                        written.lock().expect("not poisoned").push((rv, Instant::now()));
                    }
                }
                // Once a second: the sampler measures the cluster's load, it should not add to it.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let per = a.pods / a.deployments;
    let total = per * a.deployments;
    let mut phases: Vec<(String, Duration)> = vec![("nodes registered".into(), nodes_up)];
    eprintln!("creating {} Deployments of {per} pods ...", a.deployments);
    let t0 = Instant::now();
    for d in 0..a.deployments {
        let t = Instant::now();
        deploys.create(&PostParams::default(), &deployment(&format!("bench-{d}"), per)).await?;
        lat.add("POST deployment", t.elapsed());
    }
    let progress = |times: &Arc<Mutex<PodTimes>>| {
        let t = times.lock().expect("not poisoned");
        (t.running.len() < total)
            .then(|| format!("{} created, {} bound, {} Running", t.seen.len(), t.bound.len(), t.running.len()))
    };
    phases.push((
        "create: all pods Running".into(),
        wait_until("all pods Running", a.phase_timeout, || progress(&times)).await?,
    ));
    let create_total = t0.elapsed();
    let (sched_rate, start_p50, start_p99) = {
        let t = times.lock().expect("not poisoned");
        let first = t.seen.values().min().copied().unwrap_or(t0);
        let last = t.bound.values().max().copied().unwrap_or(t0);
        let rate = t.bound.len() as f64 / last.duration_since(first).as_secs_f64().max(1e-3);
        let mut lat: Vec<f64> = t
            .running
            .iter()
            .filter_map(|(n, r)| Some(r.duration_since(*t.seen.get(n)?).as_secs_f64() * 1000.0))
            .collect();
        (rate, percentile(&mut lat, 0.5), percentile(&mut lat, 0.99))
    };
    eprintln!(
        "all {total} pods Running after {:.1} s; scheduler {sched_rate:.0} pods/s; start latency p50 {start_p50:.0} ms, p99 {start_p99:.0} ms",
        create_total.as_secs_f64()
    );
    let t = Instant::now();
    let all = pods.list(&ListParams::default()).await?;
    let full_list = t.elapsed();
    eprintln!("listed {} pods in {:.0} ms", all.items.len(), full_list.as_secs_f64() * 1000.0);

    eprintln!("scaling each Deployment to {} ...", per / 2);
    let t = Instant::now();
    for d in 0..a.deployments {
        let p = json!({"spec": {"replicas": per / 2}});
        let s = Instant::now();
        deploys.patch_scale(&format!("bench-{d}"), &PatchParams::default(), &Patch::Merge(&p)).await?;
        lat.add("PATCH deployment/scale", s.elapsed());
    }
    let want = (per / 2) * a.deployments;
    wait_rolled_out(&deploys, want, "bench:1", a.phase_timeout, "scaling down").await?;
    phases.push((format!("scale to half: {want} pods available"), t.elapsed()));
    eprintln!("scaled down in {:.1} s", t.elapsed().as_secs_f64());

    eprintln!("rolling every Deployment to a new image ...");
    let t = Instant::now();
    for d in 0..a.deployments {
        let p = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "bench:2"}]}}}});
        let s = Instant::now();
        deploys.patch(&format!("bench-{d}"), &PatchParams::default(), &Patch::Strategic(&p)).await?;
        lat.add("PATCH deployment", s.elapsed());
    }
    wait_rolled_out(&deploys, want, "bench:2", a.phase_timeout, "the rolling update").await?;
    phases.push(("rolling update: all updated and available".into(), t.elapsed()));
    eprintln!("rolled out in {:.1} s", t.elapsed().as_secs_f64());

    eprintln!("deleting the Deployments ...");
    let t = Instant::now();
    for d in 0..a.deployments {
        let s = Instant::now();
        deploys.delete(&format!("bench-{d}"), &DeleteParams::background()).await?;
        lat.add("DELETE deployment", s.elapsed());
    }
    loop {
        let left = pods.list_metadata(&ListParams::default().limit(1)).await.map(|l| l.items.len()).unwrap_or(1);
        if left == 0 {
            break;
        }
        if t.elapsed() > a.phase_timeout {
            anyhow::bail!("pods were not all deleted");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    phases.push(("delete: all pods gone".into(), t.elapsed()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the last write's event
    pod_watch.abort();
    cm_watch.abort();
    let usage = plane.usage();
    // From a write's response to its watch event (0 when the event came first); writes
    // whose event never came are counted apart.
    let (watch_delay, unseen) = {
        let seen = cm_seen.lock().expect("not poisoned");
        let written = written.lock().expect("not poisoned");
        let delays: Vec<f64> = written
            .iter()
            .filter_map(|(rv, at)| Some(seen.get(rv)?.saturating_duration_since(*at).as_secs_f64() * 1000.0))
            .collect();
        let unseen = written.len() - delays.len();
        (delays, unseen)
    };
    let mut delays = watch_delay;
    let (watch_p50, watch_p99) = (percentile(&mut delays, 0.5), percentile(&mut delays, 0.99));

    // Report.
    println!("\nskiff bench-cluster: {} nodes, {} Deployments, {total} pods\n", a.nodes, a.deployments);
    println!("| phase | seconds |\n|---|---:|");
    for (p, d) in &phases {
        println!("| {p} | {:.1} |", d.as_secs_f64());
    }
    println!("\n| measure | value |\n|---|---:|");
    println!("| scheduler throughput (pods bound/s) | {sched_rate:.0} |");
    println!("| pod created -> Running p50 / p99 (ms) | {start_p50:.0} / {start_p99:.0} |");
    println!("| {total} pods created -> all Running (s) | {:.1} |", create_total.as_secs_f64());
    println!("| LIST all {} pods (ms) | {:.0} |", all.items.len(), full_list.as_secs_f64() * 1000.0);
    println!(
        "| watch event delay after the write's response, p50 / p99 (ms; {} writes, {unseen} events missing) | {watch_p50:.1} / {watch_p99:.1} |",
        delays.len() + unseen
    );
    println!("\n| API call | n | p50 ms | p99 ms |\n|---|---:|---:|---:|");
    let mut json_lat = serde_json::Map::new();
    for (what, v) in lat.0.lock().expect("not poisoned").iter_mut() {
        let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
        println!("| {what} | {} | {p50:.1} | {p99:.1} |", v.len());
        json_lat.insert(what.clone(), json!({"n": v.len(), "p50_ms": p50, "p99_ms": p99}));
    }
    println!("\n| component | peak RSS MiB | CPU s |\n|---|---:|---:|");
    for (n, rss, cpu) in &usage {
        println!("| {n} | {rss} | {cpu:.1} |");
    }
    if let Some(path) = &a.json {
        let out = json!({
            "nodes": a.nodes, "deployments": a.deployments, "pods": total,
            "phases_s": phases.iter().map(|(p, d)| (p.clone(), json!(d.as_secs_f64()))).collect::<serde_json::Map<_, _>>(),
            "scheduler_pods_per_s": sched_rate, "start_p50_ms": start_p50, "start_p99_ms": start_p99,
            "list_all_pods_ms": full_list.as_secs_f64() * 1000.0, "api": json_lat,
            "watch_delay": {"n": delays.len(), "missing": unseen, "p50_ms": watch_p50, "p99_ms": watch_p99},
            "components": usage.iter().map(|(n, r, c)| (n.clone(), json!({"peak_rss_mib": r, "cpu_s": c}))).collect::<serde_json::Map<_, _>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    if a.keep {
        eprintln!("logs and data kept in {}", dir.display());
    }
    drop(plane);
    Ok(())
}
