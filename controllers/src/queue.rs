//! A controller's work queue: kube-rs's trigger streams feed its applier (the scheduler
//! that dedupes requests and runs one reconcile per object at a time), and the queue
//! counts what it holds on the way in and out, so `/metrics` shows each controller's
//! `workqueue_depth`, `workqueue_adds_total` and `workqueue_queue_duration_seconds` under
//! client-go's names. kube-rs's own `Controller` builds the same pipeline but keeps its
//! queue private.
//!
//! A request waits from the moment a trigger names its object until its reconcile starts;
//! a second trigger for an object already waiting is the same item, as in client-go.
//! Retries an earlier reconcile asked for (`Action::requeue`) are not counted until they
//! are due, like client-go's delaying queue.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use kube::runtime::controller::{self, trigger_owners, trigger_self, trigger_with, Action, ReconcileRequest};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::Resource;

use crate::{metrics, Error};

type Requests<K> = BoxStream<'static, Result<ReconcileRequest<K>, watcher::Error>>;

/// When each object's last reconcile started (by namespace/name), and the generation it saw.
type Starts = HashMap<String, (Instant, Option<i64>)>;

/// One controller's inputs, named for its metrics.
pub struct Queue<K: Resource<DynamicType = ()> + 'static> {
    name: &'static str,
    store: Store<K>,
    triggers: Vec<Requests<K>>,
    config: controller::Config,
    /// The least time between two reconciles of one object (`spaced`).
    gap: Option<Duration>,
}

impl<K> Queue<K>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static,
{
    /// A queue for the objects of `store`, each reconciled when `changes` shows it.
    pub fn new(
        name: &'static str,
        changes: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
        store: Store<K>,
    ) -> Queue<K> {
        metrics::queue_created(name);
        Queue { name, store, triggers: vec![trigger_self(changes, ()).boxed()], config: Default::default(), gap: None }
    }

    /// Also reconcile an object when one of the children it controls changes.
    pub fn owns<C>(mut self, children: impl Stream<Item = Result<C, watcher::Error>> + Send + 'static) -> Queue<K>
    where
        C: Resource<DynamicType = ()> + Send + 'static,
    {
        self.triggers.push(trigger_owners(children, (), ()).boxed());
        self
    }

    /// Also reconcile the objects `related` names when another kind's object changes.
    pub fn watches<O, I>(
        mut self,
        others: impl Stream<Item = Result<O, watcher::Error>> + Send + 'static,
        related: impl Fn(O) -> I + Send + Sync + 'static,
    ) -> Queue<K>
    where
        O: Send + 'static,
        I: IntoIterator<Item = ObjectRef<K>> + 'static,
        I::IntoIter: Send,
    {
        self.triggers.push(trigger_with(others, related).boxed());
        self
    }

    /// Reconciles each object at most once per `gap`: the changes that come during the
    /// gap are taken in one reconcile after it, of the object as it is then. A new
    /// generation of the object (its spec changed) is reconciled at once: a ReplicaSet
    /// scaled down by a rolling update must delete its pod before the new ReplicaSet's
    /// surge pod counts, or the Deployment briefly has more pods than maxSurge allows. For
    /// controllers every pod change wakes (the ReplicaSet's status counts its pods), so
    /// that a burst of pod changes costs one walk over the pods, not one per change;
    /// Kubernetes' Job controller batches pod updates the same way (1 s).
    pub fn spaced(mut self, gap: Duration) -> Queue<K> {
        self.gap = Some(gap);
        self
    }

    /// At most `n` reconciles at once (0, the default, is no limit).
    #[cfg(test)]
    fn concurrency(mut self, n: u16) -> Queue<K> {
        self.config = self.config.concurrency(n);
        self
    }

    /// Runs `reconcile` for every request, each on its own task, retrying failures
    /// after `on_error`'s delay. The stream yields once per finished request.
    pub fn run<C, F, Fut>(
        self,
        reconcile: F,
        on_error: fn(Arc<K>, &Error, Arc<C>) -> Action,
        ctx: Arc<C>,
    ) -> BoxStream<'static, ()>
    where
        C: Send + Sync + 'static,
        F: Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
    {
        let name = self.name;
        let requests = futures::stream::select_all(self.triggers)
            .inspect_ok(move |r| metrics::queue_add(name, key(&r.obj_ref.namespace, &r.obj_ref.name)));
        let timed = Arc::new(metrics::timed(name, reconcile));
        let (gap, store) = (self.gap, self.store.clone());
        let last_start: Arc<Mutex<Starts>> = Arc::default();
        let start = move |obj: Arc<K>, ctx: Arc<C>| -> BoxFuture<'static, Result<Action, Error>> {
            let meta = obj.meta();
            let k = key(&meta.namespace, meta.name.as_deref().unwrap_or_default());
            metrics::queue_take(name, k.clone());
            let (timed, store, last_start) = (timed.clone(), store.clone(), last_start.clone());
            let task = tokio::spawn(async move {
                let Some(gap) = gap else { return timed(obj, ctx).await };
                // A changed spec (a new generation: a ReplicaSet scaled) is acted on at
                // once; the gap is for the changes of its pods.
                let generation = obj.meta().generation;
                let due = last_start
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&k)
                    .filter(|(_, g)| *g == generation)
                    .map(|(t, _)| *t + gap);
                let obj = match due.filter(|d| *d > Instant::now()) {
                    Some(d) => {
                        tokio::time::sleep_until(d.into()).await;
                        // Changes during the wait are merged into this reconcile.
                        match store.get(&ObjectRef::from_obj(obj.as_ref())) {
                            Some(o) => o,
                            None => return Ok(Action::await_change()),
                        }
                    }
                    None => obj,
                };
                {
                    let mut starts = last_start.lock().unwrap_or_else(|e| e.into_inner());
                    let now = Instant::now();
                    if starts.len() > 10_000 {
                        starts.retain(|_, (t, _)| now.duration_since(*t) < gap);
                    }
                    starts.insert(k, (now, obj.meta().generation));
                }
                timed(obj, ctx).await
            });
            async move {
                match task.await {
                    Ok(r) => r,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => Err(Error(format!("reconcile task: {e}"))),
                }
            }
            .boxed()
        };
        kube::runtime::applier(start, on_error, ctx, self.store, requests, self.config)
            .map(move |r| {
                // A request for an object that is gone leaves the queue without a reconcile.
                if let Err(controller::Error::ObjectNotFound(r)) = r {
                    metrics::queue_take(name, key(&r.namespace, &r.name));
                }
            })
            .boxed()
    }
}

fn key(namespace: &Option<String>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::runtime::reflector;
    use tokio::sync::{mpsc, Notify};

    fn cm(name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("ns".into()), ..Default::default() },
            ..Default::default()
        }
    }

    /// The sample of `series{name="q-test"}` in the rendered metrics.
    fn sample(series: &str) -> f64 {
        let line = format!("{series}{{name=\"q-test\"}} ");
        let text = metrics::render();
        let v = text.lines().find_map(|l| l.strip_prefix(&line)).unwrap_or_else(|| panic!("{series}: {text}"));
        v.parse().unwrap()
    }

    async fn until(ok: impl Fn() -> bool) {
        let wait = async {
            while !ok() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), wait).await.expect("reached in 10 s");
    }

    /// While one reconcile holds the only slot, the other objects wait in the queue:
    /// the depth counts them once each however often they are triggered, and drops
    /// to zero once they ran; a request for an object that is gone leaves too.
    #[tokio::test]
    async fn depth_counts_what_waits_once() {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for n in ["a", "b", "c"] {
            writer.apply_watcher_event(&watcher::Event::InitApply(cm(n)));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<ConfigMap, watcher::Error>>();
        let release = Arc::new(Notify::new());
        let (done_tx, mut done) = mpsc::unbounded_channel::<String>();
        let reconcile = move |obj: Arc<ConfigMap>, ctx: Arc<(Arc<Notify>, mpsc::UnboundedSender<String>)>| async move {
            let name = obj.metadata.name.clone().unwrap();
            if name == "a" {
                ctx.0.notified().await;
            }
            let _ = ctx.1.send(name);
            Ok(Action::await_change())
        };
        let on_error =
            |_: Arc<ConfigMap>, _: &Error, _: Arc<(Arc<Notify>, mpsc::UnboundedSender<String>)>| Action::await_change();
        let ctx = Arc::new((release.clone(), done_tx));
        let run = Queue::new("q-test", rx, store).concurrency(1).run(reconcile, on_error, ctx);
        let driver = tokio::spawn(run.collect::<Vec<()>>());
        assert_eq!(sample("workqueue_depth"), 0.0);

        tx.unbounded_send(Ok(cm("a"))).unwrap();
        // "a" has started (and holds the slot) once it is no longer waiting.
        until(|| sample("workqueue_depth") == 0.0 && sample("workqueue_adds_total") == 1.0).await;
        for n in ["b", "c", "b", "gone"] {
            tx.unbounded_send(Ok(cm(n))).unwrap();
        }
        until(|| sample("workqueue_adds_total") == 4.0).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(sample("workqueue_depth"), 3.0, "b, c and gone wait behind a, b once");
        release.notify_one();
        let mut ran = Vec::new();
        while ran.len() < 3 {
            ran.push(done.recv().await.unwrap());
        }
        ran.sort();
        assert_eq!(ran, ["a", "b", "c"], "each object once");
        // "gone" is not in the store: it leaves without a reconcile.
        until(|| sample("workqueue_depth") == 0.0).await;
        assert_eq!(sample("workqueue_adds_total"), 4.0);
        assert_eq!(sample("workqueue_queue_duration_seconds_count"), 4.0);
        driver.abort();
    }
    /// A spaced queue reconciles an object at most once per gap, and the changes made
    /// during the gap reach one reconcile after it, which sees the object as it is then.
    #[tokio::test]
    async fn a_spaced_queue_merges_the_changes_of_its_gap() {
        let (store, mut writer) = reflector::store();
        let with = |v: usize| ConfigMap { data: Some([("v".to_string(), v.to_string())].into()), ..cm("a") };
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(with(0)));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<ConfigMap, watcher::Error>>();
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<(String, Instant)>();
        let reconcile = |obj: Arc<ConfigMap>, ctx: Arc<mpsc::UnboundedSender<(String, Instant)>>| async move {
            let _ = ctx.send((obj.data.as_ref().unwrap()["v"].clone(), Instant::now()));
            Ok(Action::await_change())
        };
        let on_error =
            |_: Arc<ConfigMap>, _: &Error, _: Arc<mpsc::UnboundedSender<(String, Instant)>>| Action::await_change();
        let gap = Duration::from_millis(300);
        let run = Queue::new("q-spaced", rx, store).spaced(gap).run(reconcile, on_error, Arc::new(seen_tx));
        let driver = tokio::spawn(run.collect::<Vec<()>>());
        tx.unbounded_send(Ok(with(0))).unwrap();
        let (v, first) = seen.recv().await.unwrap();
        assert_eq!(v, "0");
        for i in 1..=5 {
            writer.apply_watcher_event(&watcher::Event::Apply(with(i)));
            tx.unbounded_send(Ok(with(i))).unwrap();
        }
        tokio::time::sleep(gap * 4).await;
        let mut later = Vec::new();
        while let Ok(r) = seen.try_recv() {
            later.push(r);
        }
        // Five changes: one reconcile after the gap, which sees the latest object, and
        // at most one more for the changes that came while it waited.
        assert!(matches!(later.len(), 1 | 2), "{later:?}");
        assert!(later.iter().all(|(v, _)| v == "5"), "{later:?}");
        // Spaced by the gap (measured from inside the reconciles, which start a moment
        // after the queue records their start).
        let mut prev = first;
        for (_, t) in &later {
            assert!(t.duration_since(prev) >= gap - Duration::from_millis(50), "{later:?}");
            prev = *t;
        }
        driver.abort();
    }
}
