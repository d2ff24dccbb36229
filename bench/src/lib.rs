//! skiff-bench: drive any etcd v3 endpoint with a workload and report throughput and
//! latency. See the crate README.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions};
use serde::Serialize;

#[derive(Clone, Debug)]
pub enum Workload {
    /// Put random keys of the key space.
    Put,
    /// Range (get) random keys; linearizable unless `serializable`.
    Range { serializable: bool },
    /// Kubernetes' write pattern: Txn(if mod_revision(key) == last seen then put else get).
    TxnPut,
    /// `watchers` watchers on one prefix, spread over the connections; puts at the
    /// configured rate carry their send time, and each delivery's delay is measured.
    Watch { watchers: usize },
    /// Keep-alives on `leases` leases.
    LeaseKeepAlive { leases: usize },
    /// Writes every key of the key space once, `batch` puts per txn (to load data fast;
    /// each txn is one request).
    Fill { batch: usize },
}

impl Workload {
    pub fn name(&self) -> String {
        match self {
            Workload::Put => "put".into(),
            Workload::Range { serializable: false } => "range-linearizable".into(),
            Workload::Range { serializable: true } => "range-serializable".into(),
            Workload::TxnPut => "txn-put".into(),
            Workload::Watch { watchers } => format!("watch-{watchers}"),
            Workload::LeaseKeepAlive { .. } => "lease-keepalive".into(),
            Workload::Fill { batch } => format!("fill-{batch}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub endpoints: Vec<String>,
    /// gRPC connections, spread round-robin over the endpoints.
    pub conns: usize,
    /// Requests in flight at once (each a task using connection `i % conns`).
    pub clients: usize,
    /// Stop after this many requests (or events, for watch)...
    pub total: Option<u64>,
    /// ...or after this long.
    pub duration: Option<Duration>,
    /// Offered load in requests per second (puts per second for watch); None = as fast
    /// as the clients go.
    pub rate: Option<f64>,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    pub workload: Workload,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub workload: String,
    pub clients: usize,
    pub conns: usize,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub latency: Latency,
}

impl Report {
    pub fn table(&self) -> String {
        format!(
            "{:<22} {:>8} clients {:>4} conns  {:>9} ok {:>6} errors  {:>10.1} req/s   latency ms: mean {:.2} p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            self.workload,
            self.clients,
            self.conns,
            self.requests,
            self.errors,
            self.throughput,
            self.latency.mean_ms,
            self.latency.p50_ms,
            self.latency.p90_ms,
            self.latency.p99_ms,
            self.latency.max_ms
        )
    }
}

/// Latencies in microseconds, merged from every client at the end.
#[derive(Default)]
struct Recorder {
    samples: Mutex<Vec<u32>>,
    done: AtomicU64,
    errors: AtomicU64,
}

impl Recorder {
    fn add(&self, local: &mut Vec<u32>, took: Duration) {
        local.push(took.as_micros().min(u32::MAX as u128) as u32);
        self.done.fetch_add(1, Ordering::Relaxed);
        if local.len() >= 4096 {
            self.samples.lock().unwrap().append(local);
        }
    }

    /// Records a request scheduled at `due`: its latency if it succeeded, an error if not.
    fn outcome(&self, local: &mut Vec<u32>, ok: bool, due: Instant) {
        if ok {
            self.add(local, due.elapsed());
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn flush(&self, local: &mut Vec<u32>) {
        self.samples.lock().unwrap().append(local);
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// A small, fast, seedable generator (xorshift64*) so key choice costs nothing.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
}

fn key(i: u64, size: usize) -> Vec<u8> {
    let s = format!("k{i:0w$}", w = size.saturating_sub(1));
    s.into_bytes()
}

/// Shared pacing: request number `n` is due at `start + n / rate`.
struct Pacer {
    start: Instant,
    next: AtomicU64,
    rate: Option<f64>,
    total: Option<u64>,
    deadline: Option<Instant>,
    stop: AtomicBool,
}

impl Pacer {
    /// The next request's number and scheduled time, or None when the run is over.
    async fn ticket(&self) -> Option<(u64, Instant)> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.total.is_some_and(|t| n >= t) {
            return None;
        }
        let due = match self.rate {
            Some(r) => self.start + Duration::from_secs_f64(n as f64 / r),
            None => Instant::now(),
        };
        if self.deadline.is_some_and(|d| due >= d) {
            return None;
        }
        tokio::time::sleep_until(due.into()).await;
        Some((n, due))
    }
}

async fn connect_all(cfg: &Config) -> anyhow::Result<Vec<Client>> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(10));
    let mut out = Vec::new();
    for i in 0..cfg.conns.max(1) {
        let ep = &cfg.endpoints[i % cfg.endpoints.len()];
        out.push(
            Client::connect([ep.as_str()], Some(opts.clone())).await.with_context(|| format!("connecting to {ep}"))?,
        );
    }
    Ok(out)
}

/// Runs a workload; `progress` is called about once a second with (done, errors).
pub async fn run(cfg: Config, progress: impl Fn(u64, u64) + Send + Sync + 'static) -> anyhow::Result<Report> {
    anyhow::ensure!(!cfg.endpoints.is_empty(), "no endpoints given");
    anyhow::ensure!(cfg.total.is_some() || cfg.duration.is_some(), "give --total or --duration");
    let clients = connect_all(&cfg).await?;
    let rec = Arc::new(Recorder::default());
    let start = Instant::now();
    let pacer = Arc::new(Pacer {
        start,
        next: AtomicU64::new(0),
        rate: cfg.rate,
        total: cfg.total,
        deadline: cfg.duration.map(|d| start + d),
        stop: AtomicBool::new(false),
    });
    let progress_task = {
        let rec = rec.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            t.tick().await;
            loop {
                t.tick().await;
                progress(rec.done.load(Ordering::Relaxed), rec.errors.load(Ordering::Relaxed));
            }
        })
    };
    match &cfg.workload {
        Workload::Watch { watchers } => run_watch(&cfg, &clients, *watchers, &rec, &pacer).await?,
        Workload::LeaseKeepAlive { leases } => run_keepalive(&cfg, &clients, *leases, &rec, &pacer).await?,
        _ => run_requests(&cfg, &clients, &rec, &pacer).await?,
    }
    let elapsed = start.elapsed().as_secs_f64();
    progress_task.abort();
    let mut samples = std::mem::take(&mut *rec.samples.lock().unwrap());
    samples.sort_unstable();
    let n = samples.len() as u64;
    let mean =
        if samples.is_empty() { 0.0 } else { samples.iter().map(|s| *s as f64).sum::<f64>() / n as f64 / 1000.0 };
    Ok(Report {
        workload: cfg.workload.name(),
        clients: cfg.clients,
        conns: cfg.conns,
        requests: n,
        errors: rec.errors.load(Ordering::Relaxed),
        seconds: elapsed,
        throughput: n as f64 / elapsed,
        latency: Latency {
            mean_ms: mean,
            p50_ms: percentile(&samples, 0.50),
            p90_ms: percentile(&samples, 0.90),
            p99_ms: percentile(&samples, 0.99),
            max_ms: samples.last().map_or(0.0, |m| *m as f64 / 1000.0),
        },
    })
}

async fn run_requests(cfg: &Config, clients: &[Client], rec: &Arc<Recorder>, pacer: &Arc<Pacer>) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for c in 0..cfg.clients.max(1) {
        let mut client = clients[c % clients.len()].clone();
        let (rec, pacer, cfg) = (rec.clone(), pacer.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E3779B97F4A7C15 ^ (c as u64 + 1).wrapping_mul(0xBF58476D1CE4E5B9));
            let value = vec![b'v'; cfg.val_size];
            let mut local = Vec::with_capacity(4096);
            // txn-put: each client owns a slice of the key space and remembers the
            // mod revision it last wrote, as a Kubernetes object's resourceVersion.
            let mut known: HashMap<u64, i64> = HashMap::new();
            let per_client = (cfg.key_space / cfg.clients.max(1) as u64).max(1);
            while let Some((n, due)) = pacer.ticket().await {
                let ok = match &cfg.workload {
                    Workload::Put => {
                        let k = key(rng.next() % cfg.key_space.max(1), cfg.key_size);
                        client.put(k, value.clone(), None).await.is_ok()
                    }
                    Workload::Range { serializable } => {
                        let k = key(rng.next() % cfg.key_space.max(1), cfg.key_size);
                        let opts = if *serializable { Some(GetOptions::new().with_serializable()) } else { None };
                        client.get(k, opts).await.is_ok()
                    }
                    Workload::TxnPut => {
                        let i = c as u64 * per_client + rng.next() % per_client;
                        let k = key(i, cfg.key_size);
                        let rev = known.get(&i).copied().unwrap_or(0);
                        let txn = Txn::new()
                            .when([Compare::mod_revision(k.clone(), CompareOp::Equal, rev)])
                            .and_then([TxnOp::put(k.clone(), value.clone(), None)])
                            .or_else([TxnOp::get(k, None)]);
                        match client.txn(txn).await {
                            Ok(r) => {
                                if r.succeeded() {
                                    known.insert(i, r.header().map_or(0, |h| h.revision()));
                                } else if let Some(etcd_client::TxnOpResponse::Get(g)) = r.op_responses().first() {
                                    known.insert(i, g.kvs().first().map_or(0, |kv| kv.mod_revision()));
                                }
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    Workload::Fill { batch } => {
                        // Request n writes keys [n*batch, (n+1)*batch) of the key space.
                        let first = n * *batch as u64;
                        let ops: Vec<TxnOp> = (first..(first + *batch as u64).min(cfg.key_space))
                            .map(|i| TxnOp::put(key(i, cfg.key_size), value.clone(), None))
                            .collect();
                        ops.is_empty() || client.txn(Txn::new().and_then(ops)).await.is_ok()
                    }
                    _ => unreachable!("handled elsewhere"),
                };
                rec.outcome(&mut local, ok, due);
            }
            rec.flush(&mut local);
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

async fn run_watch(
    cfg: &Config,
    clients: &[Client],
    watchers: usize,
    rec: &Arc<Recorder>,
    pacer: &Arc<Pacer>,
) -> anyhow::Result<()> {
    let prefix = format!("bench-watch/{}/", now_nanos());
    // One watch stream per connection, the watchers multiplexed on it (as clientv3 does).
    let mut streams = Vec::new();
    let per_stream: Vec<usize> =
        (0..clients.len()).map(|i| watchers / clients.len() + usize::from(i < watchers % clients.len())).collect();
    for (i, n) in per_stream.iter().enumerate() {
        if *n == 0 {
            continue;
        }
        let mut c = clients[i].clone();
        let opts = WatchOptions::new().with_prefix();
        let mut stream = c.watch(prefix.clone(), Some(opts.clone())).await?;
        for _ in 1..*n {
            stream.watch(prefix.clone(), Some(opts.clone())).await?;
        }
        let mut created = 0;
        while created < *n {
            let r = stream.message().await?.context("watch stream ended")?;
            created += usize::from(r.created());
        }
        streams.push(stream);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for mut stream in streams {
        let (rec, stop) = (rec.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut local = Vec::with_capacity(4096);
            while !stop.load(Ordering::Relaxed) {
                let msg = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
                let Ok(Ok(Some(r))) = msg else { continue };
                let now = now_nanos();
                for e in r.events() {
                    let sent = e.kv().and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse::<u128>().ok());
                    if let Some(sent) = sent {
                        rec.add(&mut local, Duration::from_nanos(now.saturating_sub(sent) as u64));
                    }
                }
            }
            rec.flush(&mut local);
        }));
    }
    // The writer: puts carrying their send time, paced by the configured rate.
    let mut writer = clients[0].clone();
    let mut i = 0u64;
    while pacer.ticket().await.is_some() {
        let k = format!("{prefix}{}", i % cfg.key_space.max(1));
        if writer.put(k, now_nanos().to_string(), None).await.is_err() {
            rec.errors.fetch_add(1, Ordering::Relaxed);
        }
        i += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await?;
    }
    Ok(())
}

async fn run_keepalive(
    cfg: &Config,
    clients: &[Client],
    leases: usize,
    rec: &Arc<Recorder>,
    pacer: &Arc<Pacer>,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    let per_client = leases.max(1).div_ceil(cfg.clients.max(1));
    for c in 0..cfg.clients.max(1) {
        let mut client = clients[c % clients.len()].clone();
        let (rec, pacer) = (rec.clone(), pacer.clone());
        tasks.push(tokio::spawn(async move {
            let mut keepers = Vec::new();
            for _ in 0..per_client {
                let Ok(lease) = client.lease_grant(60, None).await else {
                    rec.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Ok(pair) = client.lease_keep_alive(lease.id()).await {
                    keepers.push(pair);
                }
            }
            let mut local = Vec::with_capacity(4096);
            let mut i = 0;
            while !keepers.is_empty() {
                let Some((_, due)) = pacer.ticket().await else { break };
                let n = keepers.len();
                let (keeper, stream) = &mut keepers[i % n];
                i += 1;
                let ok = keeper.keep_alive().await.is_ok() && matches!(stream.message().await, Ok(Some(_)));
                rec.outcome(&mut local, ok, due);
            }
            rec.flush(&mut local);
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn keys_have_the_requested_size() {
        assert_eq!(key(42, 8), b"k0000042".to_vec());
        assert_eq!(key(7, 1), b"k7".to_vec());
    }
}
