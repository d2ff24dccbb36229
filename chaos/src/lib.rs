//! skiff-chaos: runs a workload against a store cluster of real `skiff store`
//! processes while killing, pausing, partitioning and re-membering its members,
//! records the history, and judges it with checkers that search and validate the
//! whole history (see `check`). `skiff chaos run` and `skiff chaos check` drive it.

pub mod check;
pub mod cluster;
pub mod faults;
pub mod history;
pub mod proxy;
pub mod timeline;
pub mod workload;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::GetOptions;

use cluster::{connect, Cluster, ClusterOptions};
use faults::{FaultContext, Kind};
use history::{EndState, FinalKv, History, MemberHash, FORMAT_VERSION};
use workload::{Recorder, Target, WatchProgress, WatchStop, WorkloadConfig};

pub struct RunOptions {
    /// The `skiff` binary that runs the members.
    pub binary: PathBuf,
    pub members: usize,
    pub duration: Duration,
    pub faults: Vec<Kind>,
    pub seed: u64,
    pub clients: usize,
    pub rate: f64,
    pub keys: usize,
    /// Where history.json and timeline.svg go.
    pub out: PathBuf,
    /// Where the members keep their data and logs (default: a fresh temporary dir).
    pub work_dir: Option<PathBuf>,
    /// Keep the work dir even when the run passes.
    pub keep: bool,
}

pub struct RunOutcome {
    pub report: check::Report,
    pub history: PathBuf,
    pub timeline: PathBuf,
    /// The members' data and logs, when kept.
    pub work_dir: Option<PathBuf>,
}

const PREFIX: &str = "chaos/";

/// Time after the workload stops for every lease granted during it to expire.
const LEASE_WAIT: Duration = Duration::from_secs(8);

pub async fn run(opts: RunOptions) -> anyhow::Result<RunOutcome> {
    if opts.members == 0 || opts.members > 7 {
        anyhow::bail!("--members must be between 1 and 7, not {}", opts.members);
    }
    if opts.keys < 2 {
        anyhow::bail!("--keys must be at least 2");
    }
    std::fs::create_dir_all(&opts.out).with_context(|| format!("cannot create {}", opts.out.display()))?;
    let work_dir = match &opts.work_dir {
        Some(d) => {
            if d.exists() && d.read_dir().map(|mut r| r.next().is_some()).unwrap_or(false) {
                anyhow::bail!("{} is not empty; give a new directory", d.display());
            }
            d.clone()
        }
        None => {
            let d = std::env::temp_dir().join(format!("skiff-chaos-{}-{}", std::process::id(), opts.seed));
            let _ = std::fs::remove_dir_all(&d);
            d
        }
    };
    let schedule = faults::plan(opts.seed, opts.duration, &opts.faults);
    let start = Instant::now();
    let rec = Arc::new(Recorder::new(start));
    let status = Arc::new(Mutex::new(String::from("starting the cluster")));

    eprintln!(
        "chaos: {} members, {:?}, faults {}, seed {}, {} faults planned; members' data and logs in {}",
        opts.members,
        opts.duration,
        opts.faults.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
        opts.seed,
        schedule.len(),
        work_dir.display()
    );
    let mut cluster = Cluster::start(ClusterOptions {
        binary: opts.binary.clone(),
        dir: work_dir.clone(),
        members: opts.members,
        snapshot_count: 200,
        address_base: 10 + ((std::process::id() as u64 ^ opts.seed) % 200) as u8,
    })
    .await?;
    let target = Target { names: cluster.names(), urls: cluster.client_urls() };
    let start_revision = {
        let mut c = connect(&target.urls[0]).await?;
        let r = c.get(PREFIX, Some(GetOptions::new().with_prefix().with_count_only())).await?;
        r.header().map(|h| h.revision()).unwrap_or_default()
    };

    // Watchers, then clients.
    let until = Arc::new(AtomicI64::new(i64::MAX));
    let (force_tx, force_rx) = tokio::sync::watch::channel(false);
    let mut watchers = Vec::new();
    let mut progress = Vec::new();
    for id in 0..opts.members.min(3) {
        let p = Arc::new(WatchProgress::default());
        progress.push(p.clone());
        let stop = WatchStop { until: until.clone(), force: force_rx.clone() };
        watchers.push(tokio::spawn(workload::watcher(
            id,
            PREFIX.into(),
            start_revision + 1,
            target.clone(),
            rec.clone(),
            p,
            stop,
        )));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cfg = WorkloadConfig {
        prefix: PREFIX.into(),
        keys: opts.keys,
        clients: opts.clients,
        rate: opts.rate,
        seed: opts.seed,
    };
    let clients: Vec<_> = (0..opts.clients)
        .map(|id| tokio::spawn(workload::client(cfg.clone(), id, target.clone(), rec.clone(), stop_rx.clone())))
        .collect();
    let printer = tokio::spawn(print_progress(rec.clone(), status.clone(), opts.duration));

    // The faults, one after another.
    let mut ctx = FaultContext {
        rec: rec.clone(),
        target: target.clone(),
        prefix: PREFIX.into(),
        start_revision,
        watchers: progress.clone(),
        extra_watches: Vec::new(),
        next_watch_id: watchers.len(),
        last_compaction: 0,
    };
    let mut fault_log = Vec::new();
    let run_start = tokio::time::Instant::now();
    let deadline = run_start + opts.duration;
    set(&status, "no fault");
    for p in &schedule {
        tokio::time::sleep_until(run_start + p.at).await;
        if tokio::time::Instant::now() + p.hold + Duration::from_secs(1) > deadline {
            break;
        }
        set(&status, format!("fault: {}", p.kind.name()));
        let r = match faults::execute(&mut cluster, p, &mut ctx).await {
            Ok(r) => r,
            Err(e) => {
                cluster.heal_all()?;
                history::FaultRecord {
                    kind: p.kind.name().into(),
                    target: String::new(),
                    start_us: rec.now_us(),
                    end_us: rec.now_us(),
                    detail: format!("the harness could not carry it out: {e:#}"),
                }
            }
        };
        set(&status, format!("last fault: {} {} {}", r.kind, r.target, r.detail));
        fault_log.push(r);
    }
    tokio::time::sleep_until(deadline).await;

    // Stop the workload, heal, and read the end state.
    set(&status, "stopping the workload");
    let _ = stop_tx.send(true);
    for c in clients {
        let _ = c.await;
    }
    cluster.heal_all()?;
    set(&status, "waiting for the cluster and for leases to expire");
    cluster.wait_ready(Duration::from_secs(30)).await.context("the cluster did not recover after the faults")?;
    tokio::time::sleep(LEASE_WAIT).await;
    let end = final_state(&cluster, &rec).await?;
    set(&status, format!("waiting for watchers to reach revision {}", end.revision));
    until.store(end.revision, Ordering::Relaxed);
    let watch_deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while progress.iter().any(|p| p.next.load(Ordering::Relaxed) <= end.revision)
        && tokio::time::Instant::now() < watch_deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = force_tx.send(true);
    let mut watch_logs = Vec::new();
    for w in watchers {
        watch_logs.push(w.await?);
    }
    watch_logs.extend(ctx.extra_watches);
    set(&status, "hashing every member");
    let hashes = hash_all(&cluster, end.revision).await;
    printer.abort();
    cluster.stop();

    let history = History {
        version: FORMAT_VERSION,
        seed: opts.seed,
        members: opts.members,
        faults_enabled: opts.faults.iter().map(|k| k.name().to_string()).collect(),
        prefix: PREFIX.into(),
        start_revision,
        ops: rec.take(),
        watches: watch_logs,
        faults: fault_log,
        end: Some(EndState { hashes, ..end }),
    };
    let history_path = opts.out.join("history.json");
    history.save(&history_path)?;
    let (report, timeline) = judge(&history, &opts.out)?;
    let keep = opts.keep || !report.passed();
    drop(cluster);
    if !keep {
        let _ = std::fs::remove_dir_all(&work_dir);
    }
    Ok(RunOutcome { report, history: history_path, timeline, work_dir: keep.then_some(work_dir) })
}

/// Runs the checkers and draws the timeline next to the history.
pub fn judge(h: &History, out: &Path) -> anyhow::Result<(check::Report, PathBuf)> {
    let report = check::check(h);
    let timeline = out.join("timeline.svg");
    std::fs::write(&timeline, timeline::svg(h, &report.verdict()))
        .with_context(|| format!("cannot write {}", timeline.display()))?;
    Ok((report, timeline))
}

async fn final_state(cluster: &Cluster, rec: &Recorder) -> anyhow::Result<EndState> {
    let urls = cluster.client_urls();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        let read_us = rec.now_us();
        let attempt = async {
            let mut c = connect(&urls[i % urls.len()]).await?;
            c.get(PREFIX, Some(GetOptions::new().with_prefix())).await
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(r)) => {
                let kvs = r
                    .kvs()
                    .iter()
                    .map(|kv| FinalKv {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: String::from_utf8_lossy(kv.value()).into_owned(),
                        mod_revision: kv.mod_revision(),
                        lease: kv.lease(),
                    })
                    .collect();
                let revision = r.header().map(|h| h.revision()).unwrap_or_default();
                return Ok(EndState { read_us, revision, kvs, hashes: Vec::new() });
            }
            _ if tokio::time::Instant::now() > deadline => anyhow::bail!("the final read did not succeed within 20s"),
            _ => i += 1,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// HashKV of every member at `revision`, waiting for laggards to apply it.
async fn hash_all(cluster: &Cluster, revision: i64) -> Vec<MemberHash> {
    let mut out = Vec::new();
    for m in &cluster.members {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut entry = MemberHash { member: m.name.clone(), revision, ..Default::default() };
        loop {
            let attempt = async {
                let mut c = connect(&m.client_url()).await?;
                c.hash_kv(revision).await
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(r)) => {
                    entry.hash = r.hash();
                    entry.compact_revision = r.compact_version();
                    entry.error = None;
                    break;
                }
                Ok(Err(e)) => entry.error = Some(e.to_string()),
                Err(_) => entry.error = Some("timed out".into()),
            }
            if tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        out.push(entry);
    }
    out
}

/// Sets the progress line's status text.
fn set(status: &Mutex<String>, text: impl Into<String>) {
    *status.lock().unwrap_or_else(|e| e.into_inner()) = text.into();
}

async fn print_progress(rec: Arc<Recorder>, status: Arc<Mutex<String>>, duration: Duration) {
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(if tty { 1 } else { 5 }));
    tick.tick().await;
    loop {
        tick.tick().await;
        let c = |i: usize| rec.counts[i].load(Ordering::Relaxed);
        let line = format!(
            "[{:>4}s/{}s] ops {} (ok {}, failed {}, unknown {}) revision {} | {}",
            start.elapsed().as_secs(),
            duration.as_secs(),
            c(0) + c(1) + c(2),
            c(0),
            c(1),
            c(2),
            rec.max_revision.load(Ordering::Relaxed),
            status.lock().map(|s| s.clone()).unwrap_or_default()
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}
