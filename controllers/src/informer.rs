//! One watch per resource type, shared: a reflector keeps the cache every controller
//! reads (`store`), and each controller that reacts to changes takes a subscription
//! (`subscribe`, before `run`), a stream of every object that changed — deleted ones
//! included, which kube-rs's own shared streams leave out and a StatefulSet waiting
//! for a pod to be gone depends on. On request it also keeps an index of the cache by
//! controller (`by_controller`), from the same events.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
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
    index: Option<ByController>,
}

/// The cache's objects by their controller: the uid of the owner reference marked
/// `controller: true`, or, for objects with none, their namespace. A ReplicaSet reads
/// its own pods and its namespace's orphans from here instead of going through every
/// pod in the cluster on each reconcile (Kubernetes' ReplicaSet controller keeps the
/// same index). Updated by the informer right after its cache, from the same events.
#[derive(Clone, Default)]
pub struct ByController(Arc<Mutex<Index>>);

#[derive(Default)]
struct Index {
    /// Group key -> (namespace, name) of its objects.
    groups: HashMap<String, HashSet<(String, String)>>,
    /// (namespace, name) -> its group key.
    group_of: HashMap<(String, String), String>,
}

impl Index {
    fn key(meta: &ObjectMeta) -> String {
        match meta.owner_references.iter().flatten().find(|r| r.controller == Some(true)) {
            Some(r) => r.uid.clone(),
            None => format!("orphans/{}", meta.namespace.as_deref().unwrap_or_default()),
        }
    }

    fn remove(&mut self, id: &(String, String)) {
        if let Some(old) = self.group_of.remove(id) {
            if let Some(g) = self.groups.get_mut(&old) {
                g.remove(id);
                if g.is_empty() {
                    self.groups.remove(&old);
                }
            }
        }
    }

    fn apply(&mut self, meta: &ObjectMeta) {
        let id = (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default());
        let key = Index::key(meta);
        if self.group_of.get(&id) == Some(&key) {
            return;
        }
        self.remove(&id);
        self.groups.entry(key.clone()).or_default().insert(id.clone());
        self.group_of.insert(id, key);
    }
}

impl ByController {
    /// (namespace, name) of the objects controlled by `uid`.
    pub fn controlled_by(&self, uid: &str) -> Vec<(String, String)> {
        self.group(uid)
    }

    /// (namespace, name) of the objects in `namespace` that no controller owns.
    pub fn orphans(&self, namespace: &str) -> Vec<(String, String)> {
        self.group(&format!("orphans/{namespace}"))
    }

    fn group(&self, key: &str) -> Vec<(String, String)> {
        let index = self.0.lock().unwrap_or_else(|e| e.into_inner());
        index.groups.get(key).map(|g| g.iter().cloned().collect()).unwrap_or_default()
    }
}

impl<K> Informer<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    pub fn new(api: Api<K>) -> Informer<K> {
        let (store, writer) = reflector::store();
        Informer { api, store, writer, subscribers: Vec::new(), index: None }
    }

    /// The index of the cache by controller (made on first call; before `run`).
    pub fn by_controller(&mut self) -> ByController {
        self.index.get_or_insert_with(ByController::default).clone()
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
        let Informer { api, mut writer, subscribers, index, .. } = self;
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        // A relist fills a new index, which replaces the old one when the list is done
        // (as the cache is replaced).
        let mut relisting: Option<Index> = None;
        tokio::spawn(async move {
            stream
                .for_each(|e| {
                    match e {
                        Ok(ev) => {
                            // The index first: a ReplicaSet counts its pods from the
                            // index once its expectations see the pods it created in the
                            // cache; a pod in the cache but not yet in the index was
                            // counted as missing, and created again.
                            if let Some(index) = &index {
                                let mut live = index.0.lock().unwrap_or_else(|e| e.into_inner());
                                match &ev {
                                    watcher::Event::Init => relisting = Some(Index::default()),
                                    watcher::Event::InitApply(o) => {
                                        relisting.get_or_insert_with(Index::default).apply(o.meta())
                                    }
                                    watcher::Event::InitDone => *live = relisting.take().unwrap_or_default(),
                                    watcher::Event::Apply(o) => live.apply(o.meta()),
                                    watcher::Event::Delete(o) => {
                                        let m = o.meta();
                                        let id = (
                                            m.namespace.clone().unwrap_or_default(),
                                            m.name.clone().unwrap_or_default(),
                                        );
                                        live.remove(&id)
                                    }
                                }
                            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn meta(name: &str, controller: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            owner_references: controller
                .map(|uid| vec![OwnerReference { uid: uid.into(), controller: Some(true), ..Default::default() }]),
            ..Default::default()
        }
    }

    #[test]
    fn objects_are_found_by_their_controller_and_move_when_it_changes() {
        let mut i = Index::default();
        i.apply(&meta("a", Some("rs1")));
        i.apply(&meta("b", Some("rs1")));
        i.apply(&meta("c", None));
        let idx = ByController(Arc::new(Mutex::new(i)));
        let sorted = |mut v: Vec<(String, String)>| {
            v.sort();
            v.into_iter().map(|(_, n)| n).collect::<Vec<_>>()
        };
        assert_eq!(sorted(idx.controlled_by("rs1")), ["a", "b"]);
        assert_eq!(sorted(idx.orphans("ns")), ["c"]);
        // Released, adopted, deleted.
        idx.0.lock().unwrap().apply(&meta("a", None));
        idx.0.lock().unwrap().apply(&meta("c", Some("rs2")));
        idx.0.lock().unwrap().remove(&("ns".into(), "b".into()));
        assert!(idx.controlled_by("rs1").is_empty());
        assert_eq!(sorted(idx.orphans("ns")), ["a"]);
        assert_eq!(sorted(idx.controlled_by("rs2")), ["c"]);
        assert!(idx.orphans("other").is_empty());
        assert!(!idx.0.lock().unwrap().groups.contains_key("rs1"), "empty groups are dropped");
    }
}
