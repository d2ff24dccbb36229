//! The watch cache: one store watch per resource, whose events fan out to every
//! client watch of that resource. It keeps the most recent events so a client can
//! start from any revision still in the window; an older one gets 410 Expired, as
//! from kube-apiserver's cache.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::storage::{self, Store};

/// Events kept per resource for clients that start from an older revision.
const WINDOW: usize = 10_000;

#[derive(Clone, Debug)]
pub enum Event {
    /// A change at revision `rev`: the object after it (None: deleted) and before it.
    /// Shared by every client watch it goes to, with the lines already encoded for them.
    Change { rev: i64, key: String, obj: Option<Arc<Value>>, prev: Option<Prev>, encoded: Encoded },
    /// Every change up to `rev` has been sent.
    Progress(i64),
}

/// The watch lines made of one change so far, by the resource (version) they were made
/// for and event type: clients watching the same resource get the same bytes, so a
/// change is encoded once, not once per watcher.
#[derive(Clone, Debug, Default)]
pub struct Encoded(Arc<Mutex<Vec<Line>>>);

/// One encoded line: (the resource's address, event type, the bytes).
type Line = (usize, &'static str, bytes::Bytes);

impl Encoded {
    /// The line for (`resource`, `kind`), made by `make` the first time it is asked for.
    pub fn get_or_make(
        &self,
        resource: &'static crate::registry::Resource,
        kind: &'static str,
        make: impl FnOnce() -> bytes::Bytes,
    ) -> bytes::Bytes {
        let id = resource as *const _ as usize;
        if let Some((_, _, b)) =
            self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(r, k, _)| *r == id && *k == kind)
        {
            return b.clone();
        }
        let b = make();
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((id, kind, b.clone()));
        b
    }
}

/// The object as it was before a change, kept as stored and decoded the first time a
/// watch needs it: only watches with a selector, and deletions, look inside, so most
/// changes never pay for decoding it, and the window holds the compact stored bytes.
#[derive(Clone, Debug)]
pub struct Prev(Arc<PrevInner>);

#[derive(Debug)]
struct PrevInner {
    key: Vec<u8>,
    value: Vec<u8>,
    rev: i64,
    decoded: std::sync::OnceLock<Option<Arc<Value>>>,
}

impl Prev {
    pub fn new(key: &[u8], value: &[u8], rev: i64) -> Prev {
        Prev(Arc::new(PrevInner { key: key.to_vec(), value: value.to_vec(), rev, decoded: Default::default() }))
    }

    /// The object, or None if what was stored does not decode.
    pub fn get(&self) -> Option<Arc<Value>> {
        let p = &self.0;
        p.decoded.get_or_init(|| storage::decode(&p.key, &p.value, p.rev).ok().map(|s| Arc::new(s.obj))).clone()
    }
}

struct Cache {
    /// Recent changes, oldest first.
    recent: VecDeque<Event>,
    /// The revision from which `recent` is complete: every change after it is there.
    since: i64,
    tx: broadcast::Sender<Event>,
}

#[derive(Clone, Default)]
pub struct WatchCaches {
    caches: Arc<Mutex<HashMap<String, Arc<Mutex<Cache>>>>>,
}

/// A client's view: the events after its revision, then live ones.
pub struct Subscription {
    pub backlog: Vec<Event>,
    pub live: broadcast::Receiver<Event>,
}

pub enum Subscribe {
    Ok(Subscription),
    /// The revision is older than the cache's window.
    TooOld {
        oldest: i64,
    },
}

impl WatchCaches {
    /// Subscribes to changes of `prefix` (a whole resource) after revision `after`.
    pub async fn subscribe(&self, store: &Store, prefix: &str, after: i64) -> crate::status::ApiResult<Subscribe> {
        let cache = self.cache(store, prefix).await?;
        let c = cache.lock().unwrap_or_else(|e| e.into_inner());
        if after < c.since {
            return Ok(Subscribe::TooOld { oldest: c.since });
        }
        let backlog =
            c.recent.iter().filter(|e| matches!(e, Event::Change { rev, .. } if *rev > after)).cloned().collect();
        Ok(Subscribe::Ok(Subscription { backlog, live: c.tx.subscribe() }))
    }

    async fn cache(&self, store: &Store, prefix: &str) -> crate::status::ApiResult<Arc<Mutex<Cache>>> {
        if let Some(c) = self.caches.lock().unwrap_or_else(|e| e.into_inner()).get(prefix) {
            return Ok(c.clone());
        }
        // Start from the store's current revision: the window begins there.
        let rev = store.revision().await?;
        let stream = store.watch(prefix, rev + 1).await?;
        let (tx, _) = broadcast::channel(4096);
        let cache = Arc::new(Mutex::new(Cache { recent: VecDeque::new(), since: rev, tx }));
        let mut map = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(prefix) {
            return Ok(c.clone()); // another request started one meanwhile
        }
        map.insert(prefix.to_string(), cache.clone());
        tracing::info!("watch cache for {prefix} starts at revision {rev}");
        tokio::spawn(feed(self.clone(), prefix.to_string(), cache.clone(), stream));
        Ok(cache)
    }
}

/// A store watch response as watch events: its changes, or a progress notification.
pub fn events_of(resp: &etcd_client::WatchResponse) -> Vec<Event> {
    let mut events = Vec::new();
    if resp.events().is_empty() && !resp.created() {
        events.push(Event::Progress(resp.header().map(|h| h.revision()).unwrap_or_default()));
    }
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let rev = kv.mod_revision();
        let prev = ev.prev_kv().map(|p| Prev::new(p.key(), p.value(), p.mod_revision()));
        let obj = match ev.event_type() {
            etcd_client::EventType::Put => storage::decode(kv.key(), kv.value(), rev).ok().map(|s| Arc::new(s.obj)),
            etcd_client::EventType::Delete => None,
        };
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        events.push(Event::Change { rev, key, obj, prev, encoded: Encoded::default() });
    }
    events
}

/// Moves the store's events into the cache; when the store watch ends, the cache is
/// dropped (clients' streams end and they watch again, through a new cache).
async fn feed(caches: WatchCaches, prefix: String, cache: Arc<Mutex<Cache>>, mut stream: etcd_client::WatchStream) {
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) if !r.canceled() => r,
            other => {
                tracing::warn!("the store watch of {prefix} ended ({other:?}); clients will watch again");
                break;
            }
        };
        let events = events_of(&resp);
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        for e in events {
            if matches!(e, Event::Change { .. }) {
                c.recent.push_back(e.clone());
                while c.recent.len() > WINDOW {
                    if let Some(Event::Change { rev, .. }) = c.recent.pop_front() {
                        c.since = rev;
                    }
                }
            }
            let _ = c.tx.send(e);
        }
    }
    caches.caches.lock().unwrap_or_else(|e| e.into_inner()).remove(&prefix);
}
