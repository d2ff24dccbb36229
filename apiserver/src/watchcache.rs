//! The watch cache: one store watch per resource, whose events fan out to every
//! client watch of that resource, and the resource's current objects, from which lists
//! are served without going to the store (as kube-apiserver's cacher serves them).
//!
//! It keeps the most recent events so a client can start from any revision still in
//! the window; an older one gets 410 Expired, as from kube-apiserver's cache. The same
//! window lets a list continue at the revision its first page was read at: the objects
//! as they were then are the current ones with the window's later changes undone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{broadcast, Notify, OnceCell};

use crate::storage::{self, Store};

/// Events kept per resource for clients that start from an older revision.
const WINDOW: usize = 10_000;

/// How long a list waits for the cache to reach the revision it must show before it
/// reads the store instead (kube-apiserver waits up to 3 s as well).
const CATCH_UP: Duration = Duration::from_secs(3);

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
    /// The resource's objects by key, as of revision `rev`.
    objects: BTreeMap<String, Arc<Value>>,
    /// Every change up to this revision is in `objects` (from the store's events and
    /// progress notifications).
    rev: i64,
    tx: broadcast::Sender<Event>,
}

/// One resource's cache, and what its readers wait on.
struct Shared {
    cache: Mutex<Cache>,
    /// `Cache::rev`, for lists waiting until the cache has caught up.
    applied: tokio::sync::watch::Sender<i64>,
    /// Asks the feed for a progress notification from the store: a quiet resource's
    /// cache learns that it is current without a change to it.
    progress: Notify,
}

/// A resource's cache once started (the cell lets one request start it while others wait).
type Slot = Arc<OnceCell<Arc<Shared>>>;

#[derive(Clone, Default)]
pub struct WatchCaches {
    caches: Arc<Mutex<HashMap<String, Slot>>>,
    /// Lists by resource prefix: [served from the cache, left to the store].
    lists: Arc<Mutex<BTreeMap<String, [u64; 2]>>>,
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

/// Which revision a list must show (a list's `resourceVersion` and
/// `resourceVersionMatch`, or its continue token).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum At {
    /// Whatever the cache holds (`resourceVersion=0`).
    Any,
    /// The store's current revision or later: a consistent read (no `resourceVersion`).
    Latest,
    /// This revision or later.
    NotOlderThan(i64),
    /// Exactly this revision (`resourceVersionMatch=Exact`, and continue tokens).
    Exact(i64),
}

/// A list read from the cache: objects in key order, as of revision `rev`.
pub struct Listed {
    pub rev: i64,
    pub items: Vec<Arc<Value>>,
    /// The key of the last item, when more keys follow it (the list was cut at its limit).
    pub more_after: Option<String>,
}

/// What a list asks of the cache: the keys under `range` (within the cache's resource)
/// after `after`, those `keep` accepts, at most `limit` of them (0: all).
pub struct ListQuery<'a> {
    pub range: &'a str,
    pub after: Option<&'a str>,
    pub at: At,
    pub limit: usize,
    pub keep: &'a (dyn Fn(&Value) -> bool + Sync),
}

impl WatchCaches {
    /// Subscribes to changes of `prefix` (a whole resource) after revision `after`.
    pub async fn subscribe(&self, store: &Store, prefix: &str, after: i64) -> crate::status::ApiResult<Subscribe> {
        let shared = self.cache(store, prefix).await?;
        let c = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
        if after < c.since {
            return Ok(Subscribe::TooOld { oldest: c.since });
        }
        let backlog =
            c.recent.iter().filter(|e| matches!(e, Event::Change { rev, .. } if *rev > after)).cloned().collect();
        Ok(Subscribe::Ok(Subscription { backlog, live: c.tx.subscribe() }))
    }

    /// Lists objects of the resource `prefix` from its cache. None when the cache
    /// cannot show the revision asked for: it did not catch up with the store in time,
    /// or an exact revision is outside its window. The store must answer then.
    pub async fn list(
        &self,
        store: &Store,
        prefix: &str,
        q: &ListQuery<'_>,
    ) -> crate::status::ApiResult<Option<Listed>> {
        let shared = self.cache(store, prefix).await?;
        let want = match q.at {
            At::Any | At::Exact(_) => 0,
            At::Latest => store.revision().await?,
            At::NotOlderThan(rev) => rev,
        };
        let listed = match caught_up(&shared, want).await {
            true => read(&shared.cache.lock().unwrap_or_else(|e| e.into_inner()), q),
            false => None,
        };
        self.lists.lock().unwrap_or_else(|e| e.into_inner()).entry(prefix.to_string()).or_default()
            [listed.is_none() as usize] += 1;
        Ok(listed)
    }

    /// The object at `key` and its revision, if the cache of the resource `prefix` is
    /// running and holds it. Never starts a cache, never waits: a first guess, which a
    /// write's compare-and-swap then checks against the store.
    pub fn peek(&self, prefix: &str, key: &str) -> Option<(Arc<Value>, i64)> {
        let slot = self.caches.lock().unwrap_or_else(|e| e.into_inner()).get(prefix)?.clone();
        let shared = slot.get()?;
        let obj = shared.cache.lock().unwrap_or_else(|e| e.into_inner()).objects.get(key)?.clone();
        let rev = obj["metadata"]["resourceVersion"].as_str()?.parse().ok()?;
        Some((obj, rev))
    }

    /// The list counters in Prometheus' text format: `apiserver_cache_list_total`
    /// (kube-apiserver's name) and `skiff_apiserver_cache_list_fallback_total`, lists
    /// the cache could not serve, which went to the store.
    pub fn render_metrics(&self) -> String {
        let lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (i, name) in ["apiserver_cache_list_total", "skiff_apiserver_cache_list_fallback_total"].iter().enumerate()
        {
            out += &format!("# TYPE {name} counter\n");
            for (prefix, n) in lists.iter() {
                out += &format!("{name}{{resource_prefix=\"{prefix}\"}} {}\n", n[i]);
            }
        }
        out
    }

    async fn cache(&self, store: &Store, prefix: &str) -> crate::status::ApiResult<Arc<Shared>> {
        let cell = self.caches.lock().unwrap_or_else(|e| e.into_inner()).entry(prefix.to_string()).or_default().clone();
        let shared = cell.get_or_try_init(|| self.start(store, prefix, cell.clone())).await?;
        Ok(shared.clone())
    }

    /// Loads the resource's objects from the store and follows its changes from there.
    async fn start(&self, store: &Store, prefix: &str, cell: Slot) -> crate::status::ApiResult<Arc<Shared>> {
        let page = store.list(prefix, None, 0, 0).await?;
        let rev = page.revision;
        let stream = store.watch(prefix, rev + 1).await?;
        let objects = page.items.into_iter().map(|s| (s.key, Arc::new(s.obj))).collect();
        let (tx, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            cache: Mutex::new(Cache { recent: VecDeque::new(), since: rev, objects, rev, tx }),
            applied: tokio::sync::watch::Sender::new(rev),
            progress: Notify::new(),
        });
        tracing::info!("watch cache for {prefix} starts at revision {rev}");
        tokio::spawn(feed(self.clone(), prefix.to_string(), cell, shared.clone(), stream));
        Ok(shared)
    }
}

/// Waits until the cache holds every change up to `want`, asking the store for
/// progress notifications meanwhile; false if that took longer than `CATCH_UP`.
async fn caught_up(shared: &Shared, want: i64) -> bool {
    let mut applied = shared.applied.subscribe();
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        if *applied.borrow_and_update() >= want {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        shared.progress.notify_one();
        let wait = tokio::time::timeout(Duration::from_millis(100), applied.changed()).await;
        if matches!(wait, Ok(Err(_))) {
            return false; // the feed ended
        }
    }
}

/// The objects `q` asks for, as of the cache's revision or, for `At::Exact`, as of
/// that revision: the current objects with the later changes in the window undone.
fn read(c: &Cache, q: &ListQuery<'_>) -> Option<Listed> {
    let rev = match q.at {
        At::Exact(rev) if rev < c.since || rev > c.rev => return None,
        At::Exact(rev) => rev,
        _ => c.rev,
    };
    // Each key changed after `rev` as it was at `rev` (None: it did not exist): the
    // object before its first later change.
    let mut undone: BTreeMap<&str, Option<Arc<Value>>> = BTreeMap::new();
    if rev < c.rev {
        for e in c.recent.iter().rev() {
            match e {
                Event::Change { rev: r, key, prev, .. } if *r > rev => {
                    undone.insert(key, prev.as_ref().and_then(Prev::get));
                }
                Event::Change { .. } => break,
                Event::Progress(_) => {}
            }
        }
    }
    let from = match q.after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Included(q.range),
    };
    let in_range = |k: &&str| k.starts_with(q.range);
    let mut now = c.objects.range::<str, _>((from, Bound::Unbounded)).map(|(k, v)| (k.as_str(), Some(v))).peekable();
    let mut then = undone.range::<str, _>((from, Bound::Unbounded)).map(|(k, v)| (*k, v.as_ref())).peekable();
    let mut items = Vec::new();
    let mut last: Option<&str> = None;
    loop {
        // The next key of either, the window's version winning.
        let next = match (now.peek(), then.peek()) {
            (Some(a), Some(b)) if a.0 < b.0 => now.next(),
            (Some(a), Some(b)) if a.0 == b.0 => {
                now.next();
                then.next()
            }
            (Some(_), None) => now.next(),
            (_, Some(_)) => then.next(),
            (None, None) => None,
        };
        let Some((key, obj)) = next.filter(|(k, _)| in_range(k)) else {
            return Some(Listed { rev, items, more_after: None });
        };
        let Some(obj) = obj else { continue }; // created after `rev`
        if q.limit > 0 && items.len() == q.limit {
            // Another object follows the last item. If none past it is selected, the
            // next page is empty, as after a limited etcd range.
            return Some(Listed { rev, items, more_after: last.map(String::from) });
        }
        if (q.keep)(obj) {
            items.push(obj.clone());
            last = Some(key);
        }
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
async fn feed(
    caches: WatchCaches,
    prefix: String,
    cell: Slot,
    shared: Arc<Shared>,
    mut stream: etcd_client::WatchStream,
) {
    loop {
        let message = tokio::select! {
            m = stream.message() => Some(m),
            _ = shared.progress.notified() => None,
        };
        let Some(message) = message else {
            if let Err(e) = stream.request_progress().await {
                tracing::warn!("the store watch of {prefix} took no progress request: {e}");
                break;
            }
            continue;
        };
        let resp = match message {
            Ok(Some(r)) if !r.canceled() => r,
            other => {
                tracing::warn!("the store watch of {prefix} ended ({other:?}); clients will watch again");
                break;
            }
        };
        let events = events_of(&resp);
        let mut c = shared.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut rev = c.rev;
        for e in events {
            match &e {
                Event::Change { rev: r, key, obj, .. } => {
                    match obj {
                        Some(o) => c.objects.insert(key.clone(), o.clone()),
                        None => c.objects.remove(key),
                    };
                    rev = rev.max(*r);
                    c.recent.push_back(e.clone());
                    while c.recent.len() > WINDOW {
                        if let Some(Event::Change { rev, .. }) = c.recent.pop_front() {
                            c.since = rev;
                        }
                    }
                }
                Event::Progress(r) => rev = rev.max(*r),
            }
            let _ = c.tx.send(e);
        }
        // A response holds whole revisions: the cache is at `rev` now.
        c.rev = rev;
        drop(c);
        shared.applied.send_replace(rev);
    }
    let mut map = caches.caches.lock().unwrap_or_else(|e| e.into_inner());
    if map.get(&prefix).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
        map.remove(&prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const P: &str = "/registry/configmaps/";

    fn cm(name: &str, v: &str, rev: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": rev.to_string()}, "data": {"v": v}})
    }

    fn key(name: &str) -> String {
        format!("{P}default/{name}")
    }

    /// A cache whose history is `changes` (name, value or None for a deletion, at
    /// revisions 1, 2, ...), with a window that starts at revision `since`.
    fn cache(changes: &[(&str, Option<&str>)], since: i64) -> Cache {
        let (tx, _) = broadcast::channel(16);
        let mut c = Cache { recent: VecDeque::new(), since, objects: BTreeMap::new(), rev: 0, tx };
        for (i, (name, v)) in changes.iter().enumerate() {
            let rev = i as i64 + 1;
            let k = key(name);
            let prev = c.objects.get(&k).map(|o| {
                Prev::new(
                    k.as_bytes(),
                    &serde_json::to_vec(&**o).unwrap(),
                    o["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap(),
                )
            });
            let obj = v.map(|v| Arc::new(cm(name, v, rev)));
            match &obj {
                Some(o) => c.objects.insert(k.clone(), o.clone()),
                None => c.objects.remove(&k),
            };
            if rev > since {
                c.recent.push_back(Event::Change { rev, key: k, obj, prev, encoded: Encoded::default() });
            }
            c.rev = rev;
        }
        c
    }

    fn names(l: &Listed) -> Vec<String> {
        l.items
            .iter()
            .map(|o| format!("{}={}", o["metadata"]["name"].as_str().unwrap(), o["data"]["v"].as_str().unwrap()))
            .collect()
    }

    fn query<'a>(
        at: At,
        after: Option<&'a str>,
        limit: usize,
        keep: &'a (dyn Fn(&Value) -> bool + Sync),
    ) -> ListQuery<'a> {
        ListQuery { range: P, after, at, limit, keep }
    }

    #[test]
    fn a_list_at_an_older_revision_undoes_the_later_changes() {
        let all = |_: &Value| true;
        // Revisions 1-4 create a..d; 5 updates b, 6 deletes c, 7 creates bb, 8 updates b again.
        let c = cache(
            &[
                ("a", Some("1")),
                ("b", Some("1")),
                ("c", Some("1")),
                ("d", Some("1")),
                ("b", Some("2")),
                ("c", None),
                ("bb", Some("1")),
                ("b", Some("3")),
            ],
            0,
        );
        let now = read(&c, &query(At::Latest, None, 0, &all)).unwrap();
        assert_eq!((now.rev, names(&now)), (8, vec!["a=1".into(), "b=3".into(), "bb=1".into(), "d=1".into()]));
        let at4 = read(&c, &query(At::Exact(4), None, 0, &all)).unwrap();
        assert_eq!(names(&at4), ["a=1", "b=1", "c=1", "d=1"]);
        // The undone object carries the resourceVersion it had then.
        assert_eq!(at4.items[1]["metadata"]["resourceVersion"], "2");
        let at6 = read(&c, &query(At::Exact(6), None, 0, &all)).unwrap();
        assert_eq!(names(&at6), ["a=1", "b=2", "d=1"]);
        // Pages at revision 4, two at a time, continue after the last key.
        let p1 = read(&c, &query(At::Exact(4), None, 2, &all)).unwrap();
        assert_eq!((names(&p1), p1.more_after.clone()), (vec!["a=1".into(), "b=1".into()], Some(key("b"))));
        let p2 = read(&c, &query(At::Exact(4), p1.more_after.as_deref(), 2, &all)).unwrap();
        assert_eq!((names(&p2), p2.more_after), (vec!["c=1".into(), "d=1".into()], None));
    }

    #[test]
    fn a_revision_outside_the_window_is_left_to_the_store() {
        let all = |_: &Value| true;
        let c = cache(&[("a", Some("1")), ("a", Some("2")), ("a", Some("3"))], 2);
        assert!(read(&c, &query(At::Exact(1), None, 0, &all)).is_none());
        assert!(read(&c, &query(At::Exact(4), None, 0, &all)).is_none());
        assert_eq!(names(&read(&c, &query(At::Exact(2), None, 0, &all)).unwrap()), ["a=2"]);
    }

    #[test]
    fn a_limited_list_counts_only_selected_objects_and_stays_in_its_range() {
        let odd = |o: &Value| o["data"]["v"] == "odd";
        let mut c = cache(&[("a", Some("odd")), ("b", Some("even")), ("c", Some("odd")), ("d", Some("even"))], 0);
        // An object of another namespace sorts after this one's and is not in its range.
        c.objects.insert(format!("{P}other/a"), Arc::new(cm("x", "odd", 1)));
        let q = ListQuery { range: &format!("{P}default/"), after: None, at: At::Any, limit: 1, keep: &odd };
        let p1 = read(&c, &q).unwrap();
        assert_eq!((names(&p1), p1.more_after.clone()), (vec!["a=odd".into()], Some(key("a"))));
        let q = ListQuery { after: p1.more_after.as_deref(), ..q };
        let p2 = read(&c, &q).unwrap();
        // "d" follows "c" but is not selected: the next page is empty, as after an etcd range.
        assert_eq!((names(&p2), p2.more_after.clone()), (vec!["c=odd".into()], Some(key("c"))));
        let q = ListQuery { after: p2.more_after.as_deref(), ..q };
        let p3 = read(&c, &q).unwrap();
        assert_eq!((p3.items.len(), p3.more_after), (0, None));
    }
}
