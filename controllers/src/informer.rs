//! One watch per resource type, shared: a reflector keeps the cache every controller
//! reads (`store`), and each controller that reacts to changes takes a subscription
//! (`subscribe`, before `run`), a stream of every object that changed — deleted ones
//! included, which kube-rs's own shared streams leave out and a StatefulSet waiting
//! for a pod to be gone depends on.

use std::fmt::Debug;

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;

pub struct Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    api: Api<K>,
    store: Store<K>,
    writer: Writer<K>,
    subscribers: Vec<mpsc::UnboundedSender<K>>,
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new(api: Api<K>) -> Informer<K> {
        let (store, writer) = reflector::store();
        Informer { api, store, writer, subscribers: Vec::new() }
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every object that changes from now on (as kube-rs trigger streams want them).
    pub fn subscribe(&mut self) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded();
        self.subscribers.push(tx);
        rx.map(Ok)
    }

    /// Starts the watch; the cache fills from here on.
    pub fn run(self) -> tokio::task::JoinHandle<()> {
        let Informer { api, mut writer, subscribers, .. } = self;
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        tokio::spawn(async move {
            stream
                .for_each(|e| {
                    match e {
                        Ok(ev) => {
                            writer.apply_watcher_event(&ev);
                            if let watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) =
                                ev
                            {
                                for s in &subscribers {
                                    let _ = s.unbounded_send(o.clone());
                                }
                            }
                        }
                        Err(e) => tracing::warn!("watch: {e}"),
                    }
                    futures::future::ready(())
                })
                .await
        })
    }
}

/// Every object of `store` in `namespace`.
pub fn in_namespace<K>(store: &Store<K>, namespace: &str) -> Vec<std::sync::Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.state().into_iter().filter(|o| o.meta().namespace.as_deref() == Some(namespace)).collect()
}

/// A cache of `api` that pokes `changed` on every event (for loops that look at the
/// whole cache rather than at single objects: the scheduler, the node agent).
pub fn notifying_cache<K>(api: Api<K>, changed: std::sync::Arc<tokio::sync::Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff());
    tokio::spawn(async move {
        stream
            .for_each(|e| {
                match e {
                    Ok(_) => changed.notify_one(),
                    Err(e) => tracing::warn!("watch: {e}"),
                }
                futures::future::ready(())
            })
            .await
    });
    reader
}
