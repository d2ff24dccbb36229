//! `skiff bench-pod-start`: how long a pod takes from creation to Running and Ready on
//! a real node. Starts a one-member store, the API server, controller-manager,
//! scheduler and a containerd agent (private containerd, its own bridge and subnet, all
//! under a private directory), imports a busybox image built from the host's static
//! busybox, then creates `--pods` pods, `--concurrency` at a time, and times each from
//! just before its create call to the watch event that shows it Running and Ready.
//! Then deletes them and times that too. Everything is removed at the end
//! (`skiff reset-node`). Needs root, containerd, runc, the CNI plugins and busybox-static.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

use crate::cluster_bench::{free_port, percentile, start_control_plane};

#[derive(Args)]
pub struct PodBenchArgs {
    /// Pods to create (the bench subnet holds at most 250).
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods being created at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Working directory (removed at the end unless --keep).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory and its logs.
    #[arg(long)]
    keep: bool,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn running_and_ready(p: &Pod) -> bool {
    let Some(s) = &p.status else { return false };
    s.phase.as_deref() == Some("Running")
        && s.conditions.as_ref().is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn run(a: PodBenchArgs) -> anyhow::Result<()> {
    if a.pods == 0 || a.pods > 250 || a.concurrency == 0 {
        anyhow::bail!("--pods must be 1 to 250 and --concurrency at least 1");
    }
    let dir =
        a.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("skiff-bench-pods-{}", std::process::id())));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!("{} is not empty; give an empty or new --dir", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    let image = dir.join("busybox.tar");
    skiff_nodeagent::ctr::image::build_busybox(
        std::path::Path::new("/bin/busybox"),
        "skiff.local/busybox:bench",
        &image,
    )?;
    let node_flags: Vec<String> = [
        "--root",
        &dir.join("agent").display().to_string(),
        "--bridge",
        "skbench0",
        "--pod-cidr",
        "10.199.0.0/24",
        "--cgroup-parent",
        "/skiff-bench",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let result = bench(&a, &dir, &image, &node_flags).await;
    // Whatever happened: the node's pods, network, rules and cgroups go.
    let reset = std::process::Command::new(std::env::current_exe()?).arg("reset-node").args(&node_flags).output();
    if let Ok(o) = reset {
        if !o.status.success() {
            eprintln!("reset-node: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    if !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn bench(
    a: &PodBenchArgs,
    dir: &std::path::Path,
    image: &std::path::Path,
    node_flags: &[String],
) -> anyhow::Result<()> {
    let (mut plane, kubeconfig) = start_control_plane(dir, true, "warn").await?;
    let mut args: Vec<String> = ["agent", "--runtime", "containerd", "--node-name", "bench", "--node-ip", "127.0.0.1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(node_flags.iter().cloned());
    args.extend(["--port".into(), free_port()?.to_string(), "--kubeconfig".into(), kubeconfig.display().to_string()]);
    args.extend(["--image-archive".into(), image.display().to_string(), "--sync-period".into(), "1s".into()]);
    args.extend(["--local-path-root".into(), dir.join("local-path").display().to_string()]);
    plane.spawn("agent", &args)?;
    let client = skiff_controllers::client::from_kubeconfig(&kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let t = Instant::now();
    eprintln!("starting the node ...");
    while nodes.list_metadata(&ListParams::default()).await.map(|l| l.items.len()).unwrap_or(0) == 0 {
        if t.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the node did not register; see {}", dir.join("agent.log").display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let ready: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = {
        let (pods, ready) = (pods.clone(), ready.clone());
        tokio::spawn(async move {
            let mut w = watcher(pods, watcher::Config::default()).boxed();
            while let Some(ev) = w.next().await {
                let list = match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => vec![p],
                    _ => continue,
                };
                for p in list.into_iter().filter(running_and_ready) {
                    ready
                        .lock()
                        .expect("not poisoned")
                        .entry(p.metadata.name.clone().unwrap_or_default())
                        .or_insert_with(Instant::now);
                }
            }
        })
    };
    eprintln!("creating {} pods, {} at a time ...", a.pods, a.concurrency);
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let mut tasks = Vec::new();
    for i in 0..a.pods {
        let permit = sem.clone().acquire_owned().await?;
        let (pods, created, seen) = (pods.clone(), created.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let name = format!("bench-{i}");
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"bench": "pod-start"}},
                "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                    "name": "main", "image": "skiff.local/busybox:bench", "command": ["sleep", "3600"]}]}
            }))
            .expect("a valid pod");
            created.lock().expect("not poisoned").insert(name.clone(), Instant::now());
            pods.create(&PostParams::default(), &pod).await?;
            // The permit is held until the pod runs, so `concurrency` pods start at once.
            while !seen.lock().expect("not poisoned").contains_key(&name) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            drop(permit);
            anyhow::Ok(())
        }));
        if i % 10 == 9 {
            eprint!("\r{} created, {} running", i + 1, ready.lock().expect("not poisoned").len());
        }
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(300), t).await??.map_err(|e| e.context("creating a pod"))?;
    }
    let total = start.elapsed();
    eprintln!("\r{} pods running in {:.1} s", a.pods, total.as_secs_f64());
    let mut lat: Vec<f64> = {
        let (c, r) = (created.lock().expect("not poisoned"), ready.lock().expect("not poisoned"));
        c.iter().filter_map(|(n, t0)| r.get(n).map(|t1| t1.duration_since(*t0).as_secs_f64() * 1000.0)).collect()
    };
    watch.abort();
    eprintln!("deleting them ...");
    let del = Instant::now();
    pods.delete_collection(&DeleteParams::default(), &ListParams::default().labels("bench=pod-start")).await?;
    while !pods.list_metadata(&ListParams::default().labels("bench=pod-start")).await?.items.is_empty() {
        if del.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("the pods were not deleted within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deleted = del.elapsed();
    let usage = plane.usage();
    let (p50, p90, p99, max) =
        (percentile(&mut lat, 0.5), percentile(&mut lat, 0.9), percentile(&mut lat, 0.99), percentile(&mut lat, 1.0));
    println!("pod start latency (create -> Running and Ready), {} pods, {} at a time:", a.pods, a.concurrency);
    println!("  p50 {p50:.0} ms   p90 {p90:.0} ms   p99 {p99:.0} ms   max {max:.0} ms");
    println!(
        "  all running after {:.2} s ({:.1} pods/s); all deleted {:.2} s later",
        total.as_secs_f64(),
        a.pods as f64 / total.as_secs_f64(),
        deleted.as_secs_f64()
    );
    for (name, rss, cpu) in &usage {
        println!("  {name:<20} peak RSS {rss:>5} MiB   CPU {cpu:>6.1} s");
    }
    if let Some(path) = &a.json {
        let v = json!({
            "pods": a.pods, "concurrency": a.concurrency,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "max": max},
            "all_running_s": total.as_secs_f64(), "all_deleted_s": deleted.as_secs_f64(),
            "components": usage.iter().map(|(n, r, c)| json!({"name": n, "peak_rss_mib": r, "cpu_s": c})).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    }
    drop(plane); // stops the agent and the control plane before reset-node
    Ok(())
}
