//! The Watch service, with etcd's guarantees.
//!
//! Each watcher is a task with its own subscription to the state machine's broadcast of
//! applied revisions. It first replays history from storage (the `revs` log), then
//! follows the broadcast. A watcher that falls behind the broadcast (`Lagged`), or a
//! member that installed a snapshot (`Reset`), goes back to replaying from storage, so a
//! slow watcher never holds up a fast one and never loses an event:
//! - ordered and atomic: one response never splits a revision (unless the client asked
//!   for fragments), and revisions go out in order;
//! - reliable and unique: the watcher resumes exactly at `next_rev` after every switch;
//! - resumable: a new watch from revision R replays history from R;
//! - progress: a watcher records the revision up to which it has sent everything
//!   (`synced`), and a progress notification never names a later revision.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use etcd_client::proto::{PbEvent, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse, PbWatchService};
use prost::Message;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth_service::Identity;
use crate::errors::EtcdError;
use crate::member::Member;
use crate::mvcc::{KeyRange, RevisionChanges, View};
use crate::state_machine::HubMsg;

/// At most this many revisions go into one catch-up response (as etcd's batching).
const MAX_REVS_PER_RESPONSE: usize = 1000;

const FILTER_NOPUT: i32 = 0;
const FILTER_NODELETE: i32 = 1;

pub struct WatchService {
    m: Arc<Member>,
}

impl WatchService {
    pub fn new(m: Arc<Member>) -> WatchService {
        WatchService { m }
    }
}

type Out = mpsc::Sender<Result<PbWatchResponse, Status>>;

#[tonic::async_trait]
impl PbWatchService for WatchService {
    type WatchStream = ReceiverStream<Result<PbWatchResponse, Status>>;

    async fn watch(&self, req: Request<Streaming<PbWatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = req.metadata().get("hasleader").is_some_and(|v| v == "true");
        if require_leader && self.m.leader().is_none() {
            return Err(EtcdError::no_leader().into());
        }
        // The stream's credentials; each watch is checked with them as it is created.
        let identity = self.m.identity(&req);
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(128);
        tokio::spawn(run_stream(self.m.clone(), identity, inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One open watcher in `Shared::watchers`, for the metrics.
struct Counted(Arc<crate::state_machine::Shared>);

impl Counted {
    fn new(shared: Arc<crate::state_machine::Shared>) -> Counted {
        shared.watchers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(shared)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

struct WatcherHandle {
    task: JoinHandle<()>,
    synced: Arc<AtomicI64>,
}

/// Serves one Watch stream: creates and cancels watchers, answers progress requests.
async fn run_stream(m: Arc<Member>, identity: Identity, mut inbound: Streaming<PbWatchRequest>, tx: Out) {
    let mut watchers: HashMap<i64, WatcherHandle> = HashMap::new();
    let mut next_id: i64 = 0;
    loop {
        let msg = tokio::select! {
            msg = inbound.message() => msg,
            _ = tx.closed() => break,
        };
        let req = match msg {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => break,
        };
        watchers.retain(|_, w| !w.task.is_finished());
        match req.request_union {
            Some(PbWatchRequestUnion::CreateRequest(c)) => {
                let id = if c.watch_id != 0 {
                    c.watch_id
                } else {
                    while watchers.contains_key(&next_id) {
                        next_id += 1;
                    }
                    next_id
                };
                if watchers.contains_key(&id) {
                    let resp = PbWatchResponse {
                        header: Some(m.header(m.current_rev())),
                        watch_id: id,
                        created: true,
                        canceled: true,
                        cancel_reason: "mvcc: duplicate watch ID provided on the WatchStream".into(),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                    continue;
                }
                // etcd: an empty key means "\0"; range_end "\0" means every key >= key.
                let key = if c.key.is_empty() { vec![0] } else { c.key };
                let allowed = m
                    .user_of(&identity)
                    .and_then(|user| m.permit(user.as_deref(), || vec![(crate::auth::READ, &key, &c.range_end)]));
                if let Err(e) = allowed {
                    // Refused watches are not stream errors: a canceled watch, as etcd answers.
                    let resp = PbWatchResponse {
                        header: Some(m.header(m.current_rev())),
                        watch_id: -1,
                        created: true,
                        canceled: true,
                        cancel_reason: format!("rpc error: code = {:?} desc = {}", e.code(), e.message()),
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                    continue;
                }
                let range = KeyRange::new(&key, &c.range_end);
                let current = m.current_rev();
                let start = if c.start_revision <= 0 { current + 1 } else { c.start_revision };
                let created = PbWatchResponse {
                    header: Some(m.header(current)),
                    watch_id: id,
                    created: true,
                    ..Default::default()
                };
                if tx.send(Ok(created)).await.is_err() {
                    break;
                }
                let synced = Arc::new(AtomicI64::new(start - 1));
                let w = Watcher {
                    m: m.clone(),
                    tx: tx.clone(),
                    id,
                    range,
                    no_put: c.filters.contains(&FILTER_NOPUT),
                    no_delete: c.filters.contains(&FILTER_NODELETE),
                    prev_kv: c.prev_kv,
                    fragment: c.fragment,
                    progress_notify: c.progress_notify,
                    next_rev: start,
                    synced: synced.clone(),
                };
                watchers.insert(id, WatcherHandle { task: tokio::spawn(w.run()), synced });
            }
            Some(PbWatchRequestUnion::CancelRequest(c)) => {
                if let Some(w) = watchers.remove(&c.watch_id) {
                    w.task.abort();
                    let _ = w.task.await;
                    let resp = PbWatchResponse {
                        header: Some(m.header(m.current_rev())),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        break;
                    }
                }
            }
            Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                // Never claim a revision some watcher on this stream has not delivered yet.
                let rev = watchers
                    .values()
                    .filter(|w| !w.task.is_finished())
                    .map(|w| w.synced.load(Ordering::SeqCst))
                    .min()
                    .unwrap_or_else(|| m.current_rev())
                    .min(m.current_rev());
                let resp = PbWatchResponse { header: Some(m.header(rev)), watch_id: -1, ..Default::default() };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
            None => {}
        }
    }
    for (_, w) in watchers {
        w.task.abort();
    }
}

struct Watcher {
    m: Arc<Member>,
    tx: Out,
    id: i64,
    range: KeyRange,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// The first revision this watcher has not yet delivered.
    next_rev: i64,
    /// Everything up to this revision has been sent.
    synced: Arc<AtomicI64>,
}

enum Next {
    CatchUp,
    Stop,
}

impl Watcher {
    async fn run(mut self) {
        // Counted while the task lives (an aborted task drops the guard too).
        let _counted = Counted::new(self.m.shared.clone());
        let mut hub = self.m.shared.hub.subscribe();
        loop {
            if self.catch_up().await.is_err() {
                return;
            }
            match self.follow(&mut hub).await {
                Next::CatchUp => continue,
                Next::Stop => return,
            }
        }
    }

    /// Replays history from storage up to the current revision.
    async fn catch_up(&mut self) -> Result<(), ()> {
        loop {
            let db = self.m.db().clone();
            let (from, range) = (self.next_rev, self.range.clone());
            let read = tokio::task::spawn_blocking(move || {
                let view = View::new(&db);
                let current = view.current_rev()?;
                let compact = view.compact_rev()?;
                if from < compact {
                    return Ok((current, Err(compact)));
                }
                Ok((current, Ok(view.changes(from, current, &range, MAX_REVS_PER_RESPONSE)?)))
            })
            .await
            .map_err(|_| ())?;
            let (current, batch) = match read {
                Ok(r) => r,
                Err::<_, EtcdError>(e) => {
                    tracing::error!("watch {} cannot read history: {e}", self.id);
                    return Err(());
                }
            };
            let changes = match batch {
                Err(compact) => {
                    let resp = PbWatchResponse {
                        header: Some(self.m.header(0)),
                        watch_id: self.id,
                        canceled: true,
                        compact_revision: compact,
                        cancel_reason: EtcdError::compacted().message().to_string(),
                        ..Default::default()
                    };
                    let _ = self.tx.send(Ok(resp)).await;
                    return Err(());
                }
                Ok(c) => c,
            };
            let full = changes.len() < MAX_REVS_PER_RESPONSE;
            let last = changes.last().map(|c| c.rev);
            let events: Vec<PbEvent> = changes.iter().flat_map(|c| self.events(c)).collect();
            if !events.is_empty() {
                self.send(current, events).await?;
            }
            if full {
                self.next_rev = self.next_rev.max(current + 1);
                self.synced.store(current, Ordering::SeqCst);
                return Ok(());
            }
            self.next_rev = last.map_or(current + 1, |r| r + 1);
            self.synced.store(self.next_rev - 1, Ordering::SeqCst);
        }
    }

    /// Follows the live broadcast until told to re-read storage or to stop.
    async fn follow(&mut self, hub: &mut broadcast::Receiver<Arc<HubMsg>>) -> Next {
        let interval = self.m.config.watch_progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                msg = hub.recv() => match msg {
                    Ok(msg) => match &*msg {
                        HubMsg::Changes(c) if c.rev < self.next_rev => {}
                        HubMsg::Changes(c) if c.rev == self.next_rev => {
                            let events = self.events(c);
                            if !events.is_empty() && self.send(c.rev, events).await.is_err() {
                                return Next::Stop;
                            }
                            self.next_rev = c.rev + 1;
                            self.synced.store(c.rev, Ordering::SeqCst);
                        }
                        // A revision we did not see announced: storage has it.
                        HubMsg::Changes(_) | HubMsg::Reset => return Next::CatchUp,
                    },
                    Err(broadcast::error::RecvError::Lagged(_)) => return Next::CatchUp,
                    Err(broadcast::error::RecvError::Closed) => return Next::Stop,
                },
                _ = ticker.tick(), if self.progress_notify => {
                    let rev = self.synced.load(Ordering::SeqCst);
                    let resp = PbWatchResponse { header: Some(self.m.header(rev)), watch_id: self.id, ..Default::default() };
                    if self.tx.send(Ok(resp)).await.is_err() {
                        return Next::Stop;
                    }
                }
                _ = self.tx.closed() => return Next::Stop,
            }
        }
    }

    fn events(&self, c: &RevisionChanges) -> Vec<PbEvent> {
        c.changes
            .iter()
            .filter(|ch| self.range.contains(&ch.kv.key))
            .filter(|ch| !(ch.delete && self.no_delete || !ch.delete && self.no_put))
            .map(|ch| PbEvent {
                r#type: if ch.delete { 1 } else { 0 },
                kv: Some(ch.kv.clone()),
                prev_kv: if self.prev_kv { ch.prev.clone() } else { None },
            })
            .collect()
    }

    /// Sends events in one response, or in fragments when the client allows it and the
    /// response would exceed the request size limit.
    async fn send(&self, rev: i64, events: Vec<PbEvent>) -> Result<(), ()> {
        let header = Some(self.m.header(rev));
        let limit = self.m.config.max_request_bytes;
        let mut parts: Vec<Vec<PbEvent>> = vec![];
        if self.fragment {
            let mut cur = Vec::new();
            let mut size = 0;
            for e in events {
                let len = e.encoded_len();
                if !cur.is_empty() && size + len > limit {
                    parts.push(std::mem::take(&mut cur));
                    size = 0;
                }
                size += len;
                cur.push(e);
            }
            parts.push(cur);
        } else {
            parts.push(events);
        }
        let n = parts.len();
        for (i, events) in parts.into_iter().enumerate() {
            let resp = PbWatchResponse { header, watch_id: self.id, fragment: i + 1 < n, events, ..Default::default() };
            self.tx.send(Ok(resp)).await.map_err(|_| ())?;
        }
        Ok(())
    }
}
