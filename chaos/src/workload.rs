//! The workload: clients issuing puts, reads, deletes, compare-and-swaps, multi-key
//! txns and leased puts against the members, and long-lived watchers on the whole
//! prefix. Everything is recorded in the history as it happens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;

use crate::cluster::connect;
use crate::faults::Rng;
use crate::history::{Call, Event, EventKind, Op, Outcome, Ret, Segment, WatchLog, WatchResp};

/// How long one request may take before its outcome is recorded as unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    /// ok, failed, unknown.
    pub counts: [AtomicU64; 3],
    pub max_revision: AtomicI64,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder { start, ops: Mutex::default(), counts: Default::default(), max_revision: AtomicI64::new(0) }
    }

    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub fn record(
        &self,
        client: usize,
        member: &str,
        invoke_us: u64,
        call: Call,
        result: Result<Ret, (Outcome, String)>,
    ) {
        let complete_us = self.now_us();
        let (outcome, error, result) = match result {
            Ok(r) => {
                self.max_revision.fetch_max(r.revision, Ordering::Relaxed);
                (Outcome::Ok, None, Some(r))
            }
            Err((o, e)) => (o, Some(e), None),
        };
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let id = ops.len();
        ops.push(Op { id, client, member: member.to_string(), invoke_us, complete_us, call, outcome, error, result });
    }

    pub fn take(&self) -> Vec<Op> {
        let mut ops = std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()));
        ops.sort_by_key(|o| o.invoke_us);
        for (i, op) in ops.iter_mut().enumerate() {
            op.id = i;
        }
        ops
    }
}

#[derive(Clone)]
pub struct Target {
    pub names: Vec<String>,
    pub urls: Vec<String>,
}

#[derive(Clone)]
pub struct WorkloadConfig {
    pub prefix: String,
    pub keys: usize,
    pub clients: usize,
    /// Operations per second over all clients.
    pub rate: f64,
    pub seed: u64,
}

/// Whether a failed request certainly had no effect.
pub fn classify(write: bool, err: &etcd_client::Error) -> Outcome {
    if !write {
        return Outcome::Failed;
    }
    let text = format!("{err:?} {err}");
    if text.contains("tcp connect error") || text.contains("Connection refused") {
        return Outcome::Failed;
    }
    if let etcd_client::Error::GRpcStatus(s) = err {
        use tonic::Code::*;
        if matches!(
            s.code(),
            InvalidArgument
                | FailedPrecondition
                | NotFound
                | OutOfRange
                | AlreadyExists
                | PermissionDenied
                | ResourceExhausted
        ) {
            return Outcome::Failed;
        }
    }
    Outcome::Unknown
}

/// Sends one call and turns the response into the history's terms.
pub async fn execute(c: &mut Client, call: &Call) -> Result<Ret, etcd_client::Error> {
    let header_rev = |h: Option<&etcd_client::ResponseHeader>| h.map(|h| h.revision()).unwrap_or_default();
    Ok(match call {
        Call::Put { key, value, lease } => {
            let opts = (*lease != 0).then(|| PutOptions::new().with_lease(*lease));
            let r = c.put(key.as_str(), value.as_str(), opts).await?;
            Ret { revision: header_rev(r.header()), ..Default::default() }
        }
        Call::Get { key, serializable } => {
            let opts = serializable.then(|| GetOptions::new().with_serializable());
            let r = c.get(key.as_str(), opts).await?;
            let kv = r.kvs().first();
            Ret {
                revision: header_rev(r.header()),
                value: kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                mod_revision: kv.map(|kv| kv.mod_revision()).unwrap_or_default(),
                ..Default::default()
            }
        }
        Call::Delete { key } => {
            let r = c.delete(key.as_str(), None).await?;
            Ret { revision: header_rev(r.header()), deleted: r.deleted(), ..Default::default() }
        }
        Call::Cas { key, expect_mod_revision, value } => {
            let txn = Txn::new()
                .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, *expect_mod_revision)])
                .and_then([TxnOp::put(key.as_str(), value.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let r = c.txn(txn).await?;
            let mut ret = Ret { revision: header_rev(r.header()), succeeded: r.succeeded(), ..Default::default() };
            if !r.succeeded() {
                if let Some(TxnOpResponse::Get(g)) = r.op_responses().first() {
                    if let Some(kv) = g.kvs().first() {
                        ret.value = Some(String::from_utf8_lossy(kv.value()).into_owned());
                        ret.mod_revision = kv.mod_revision();
                    }
                }
            }
            ret
        }
        Call::MultiPut { puts } => {
            let ops: Vec<TxnOp> = puts.iter().map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None)).collect();
            let r = c.txn(Txn::new().and_then(ops)).await?;
            Ret { revision: header_rev(r.header()), ..Default::default() }
        }
        Call::LeaseGrant { ttl } => {
            let r = c.lease_grant(*ttl, None).await?;
            Ret { revision: header_rev(r.header()), lease_id: r.id(), ..Default::default() }
        }
        Call::Compact { revision } => {
            let r = c.compact(*revision, Some(CompactionOptions::new().with_physical())).await?;
            Ret { revision: header_rev(r.header()), ..Default::default() }
        }
    })
}

/// Runs `call` on member `m` with the op timeout and records it.
pub async fn run_op(
    rec: &Recorder,
    client_id: usize,
    target: &Target,
    m: usize,
    c: &mut Client,
    call: Call,
) -> Option<Ret> {
    let invoke = rec.now_us();
    let write = call.is_write();
    let result = match tokio::time::timeout(OP_TIMEOUT, execute(c, &call)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err((classify(write, &e), e.to_string())),
        Err(_) => Err((if write { Outcome::Unknown } else { Outcome::Failed }, "timed out".to_string())),
    };
    let ret = result.as_ref().ok().cloned();
    rec.record(client_id, &target.names[m], invoke, call, result);
    ret
}

/// One client: a loop of random operations until `stop`.
pub async fn client(
    cfg: WorkloadConfig,
    id: usize,
    target: Target,
    rec: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) {
    let mut rng = Rng::new(cfg.seed ^ (id as u64 + 1).wrapping_mul(0x5851_F42D_4C95_7F2D));
    let n = target.urls.len();
    // Each client has a home member, leaves it for a random other one on an error and
    // comes back after a run of successes, so the load stays spread over all members
    // (clients moving in lockstep would all pile onto one).
    let home = id % n;
    let mut member = home;
    let mut streak = 0;
    let mut clients: HashMap<usize, Client> = HashMap::new();
    let mut seq = 0u64;
    // The mod_revision this client last saw for each key, for its compare-and-swaps.
    let mut seen: HashMap<String, i64> = HashMap::new();
    let pause = Duration::from_secs_f64(cfg.clients as f64 / cfg.rate.max(0.1));
    let mut next = tokio::time::Instant::now();
    while !*stop.borrow() {
        next += pause;
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => break,
        }
        if tokio::time::Instant::now() > next + pause * 4 {
            next = tokio::time::Instant::now(); // fell behind during an outage: no burst
        }
        let c = match clients.get_mut(&member) {
            Some(c) => c,
            None => match tokio::time::timeout(OP_TIMEOUT, connect(&target.urls[member])).await {
                Ok(Ok(c)) => clients.entry(member).or_insert(c),
                _ => {
                    member = (member + 1 + rng.below(n as u64 - 1) as usize) % n;
                    continue;
                }
            },
        };
        seq += 1;
        let value = format!("c{id}-{seq}");
        let key = |rng: &mut Rng| format!("{}k/{:02}", cfg.prefix, rng.below(cfg.keys as u64));
        let roll = rng.below(100);
        let call = match roll {
            0..20 => Call::Put { key: key(&mut rng), value, lease: 0 },
            20..40 => Call::Get { key: key(&mut rng), serializable: false },
            40..50 => Call::Get { key: key(&mut rng), serializable: true },
            50..55 => Call::Delete { key: key(&mut rng) },
            55..80 => {
                let k = key(&mut rng);
                let expect = seen.get(&k).copied().unwrap_or_default();
                Call::Cas { key: k, expect_mod_revision: expect, value }
            }
            80..95 => {
                let a = rng.below(cfg.keys as u64);
                let b = (a + 1 + rng.below(cfg.keys as u64 - 1)) % cfg.keys as u64;
                let puts = [a, b].iter().map(|k| (format!("{}k/{k:02}", cfg.prefix), format!("{value}.{k}"))).collect();
                Call::MultiPut { puts }
            }
            _ => Call::LeaseGrant { ttl: 2 + rng.below(2) as i64 },
        };
        let ok = match run_op(&rec, id, &target, member, c, call.clone()).await {
            None => false,
            Some(r) => {
                match &call {
                    Call::Get { key, .. } => {
                        seen.insert(key.clone(), if r.value.is_some() { r.mod_revision } else { 0 });
                    }
                    Call::Cas { key, .. } => {
                        seen.insert(
                            key.clone(),
                            if r.succeeded {
                                r.revision
                            } else if r.value.is_some() {
                                r.mod_revision
                            } else {
                                0
                            },
                        );
                    }
                    Call::Put { key, .. } => {
                        seen.insert(key.clone(), r.revision);
                    }
                    Call::LeaseGrant { .. } => {
                        seq += 1;
                        let key = format!("{}lease/c{id}-{seq}", cfg.prefix);
                        let put = Call::Put { key, value: format!("c{id}-{seq}"), lease: r.lease_id };
                        run_op(&rec, id, &target, member, c, put).await;
                    }
                    _ => {}
                }
                true
            }
        };
        if ok {
            streak += 1;
            if member != home && streak >= 20 {
                member = home;
            }
        } else {
            streak = 0;
            clients.remove(&member);
            member = (member + 1 + rng.below(n as u64 - 1) as usize) % n;
        }
    }
}

/// Shared state of one watcher, seen by the fault that compacts.
#[derive(Default)]
pub struct WatchProgress {
    /// The next revision the watcher expects.
    pub next: AtomicI64,
}

/// When a watcher may stop: once it has everything up to `until` (set at the end of
/// the run), or at once when `force` is set.
#[derive(Clone)]
pub struct WatchStop {
    pub until: Arc<AtomicI64>,
    pub force: watch::Receiver<bool>,
}

/// A long-lived watcher on the whole prefix. Re-created from the next revision on
/// another member whenever its stream breaks.
pub async fn watcher(
    id: usize,
    prefix: String,
    from: i64,
    target: Target,
    rec: Arc<Recorder>,
    progress: Arc<WatchProgress>,
    mut stop: WatchStop,
) -> WatchLog {
    let n = target.urls.len();
    let mut log = WatchLog { id, segments: Vec::new() };
    let mut member = id % n;
    progress.next.store(from, Ordering::Relaxed);
    loop {
        let next = progress.next.load(Ordering::Relaxed);
        if *stop.force.borrow() || next > stop.until.load(Ordering::Relaxed) {
            break;
        }
        let mut seg = Segment {
            member: target.names[member].clone(),
            start_revision: next,
            created_us: rec.now_us(),
            ..Default::default()
        };
        seg.end = watch_segment(&target.urls[member], &prefix, &mut seg, &rec, &progress, &mut stop).await;
        let done = seg.end == "closed";
        log.segments.push(seg);
        if done {
            break;
        }
        member = (member + 1) % n;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log
}

/// One watch stream; returns why it ended.
async fn watch_segment(
    url: &str,
    prefix: &str,
    seg: &mut Segment,
    rec: &Recorder,
    progress: &WatchProgress,
    stop: &mut WatchStop,
) -> String {
    let opts = WatchOptions::new().with_prefix().with_start_revision(seg.start_revision).with_progress_notify();
    let stream = async {
        let mut c = connect(url).await?;
        c.watch(prefix, Some(opts)).await
    };
    let mut stream = match tokio::time::timeout(OP_TIMEOUT, stream).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("error: {e}"),
        Err(_) => return "error: timed out creating the watch".into(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(700));
    let mut silent_ticks = 0;
    loop {
        if progress.next.load(Ordering::Relaxed) > stop.until.load(Ordering::Relaxed) {
            return "closed".into();
        }
        tokio::select! {
            msg = stream.message() => {
                silent_ticks = 0;
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return "error: the stream ended".into(),
                    Err(e) => return format!("error: {e}"),
                };
                if resp.created() && resp.events().is_empty() && !resp.canceled() {
                    continue;
                }
                let events: Vec<Event> = resp
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let kv = e.kv()?;
                        Some(Event {
                            revision: kv.mod_revision(),
                            kind: match e.event_type() {
                                etcd_client::EventType::Put => EventKind::Put,
                                etcd_client::EventType::Delete => EventKind::Delete,
                            },
                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                            value: String::from_utf8_lossy(kv.value()).into_owned(),
                            lease: kv.lease(),
                        })
                    })
                    .collect();
                let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
                let canceled = resp.canceled();
                let r = WatchResp {
                    recv_us: rec.now_us(),
                    revision,
                    progress: events.is_empty() && !canceled && resp.compact_revision() == 0,
                    canceled,
                    compact_revision: resp.compact_revision(),
                    events,
                };
                if let Some(last) = r.events.last() {
                    progress.next.fetch_max(last.revision + 1, Ordering::Relaxed);
                }
                if r.progress {
                    progress.next.fetch_max(revision + 1, Ordering::Relaxed);
                }
                let compacted = r.compact_revision;
                seg.responses.push(r);
                if canceled {
                    if compacted > 0 {
                        progress.next.fetch_max(compacted, Ordering::Relaxed);
                    }
                    return "canceled".into();
                }
            }
            _ = tick.tick() => {
                silent_ticks += 1;
                // A member that stopped answering (paused, cut off) gets the same
                // treatment a client library gives it: the watch moves elsewhere.
                if silent_ticks > 6 {
                    return "error: no response for 4s".into();
                }
                let _ = stream.request_progress().await;
            }
            _ = stop.force.changed() => return "closed".into(),
        }
    }
}

/// A watch from an already compacted revision: it must be canceled with the
/// compaction's revision. Recorded as a watcher of its own.
pub async fn doomed_watch(id: usize, prefix: &str, from: i64, target: &Target, m: usize, rec: &Recorder) -> WatchLog {
    let mut seg = Segment {
        member: target.names[m].clone(),
        start_revision: from,
        created_us: rec.now_us(),
        ..Default::default()
    };
    let progress = WatchProgress::default();
    let (_tx, force) = watch::channel(false);
    let mut stop = WatchStop { until: Arc::new(AtomicI64::new(i64::MAX)), force };
    let end = tokio::time::timeout(
        Duration::from_secs(3),
        watch_segment(&target.urls[m], prefix, &mut seg, rec, &progress, &mut stop),
    )
    .await;
    seg.end = end.unwrap_or_else(|_| "stopped".into());
    if seg.end == "closed" {
        seg.end = "stopped".into();
    }
    WatchLog { id, segments: vec![seg] }
}
