//! One watch per resource type, shared: a reflector keeps the cache every controller
//! reads (`store`), and each controller that reacts to changes takes a subscription.
//! Subscriptions must all be taken before `run`, and each must be polled, since a
//! full subscriber holds up the shared watch.

use std::fmt::Debug;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, store::Writer, ReflectHandle, Store};
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
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new(api: Api<K>) -> Informer<K> {
        let (store, writer) = reflector::store_shared(4096);
        Informer { api, store, writer }
    }

    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    pub fn subscribe(&self) -> ReflectHandle<K> {
        self.writer.subscribe().expect("shared stores accept subscribers")
    }

    /// Starts the watch; the cache fills from here on.
    pub fn run(self) -> tokio::task::JoinHandle<()> {
        let stream = watcher(self.api, watcher::Config::default()).default_backoff().reflect_shared(self.writer);
        tokio::spawn(async move {
            stream
                .for_each(|e| async move {
                    if let Err(e) = e {
                        tracing::warn!("watch: {e}");
                    }
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
