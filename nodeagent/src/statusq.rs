//! Pod statuses waiting to be written, only the newest one per pod, as the kubelet's
//! status manager keeps them.
//!
//! The agent's sync passes offer each pod's computed status here instead of writing it
//! themselves; a fixed number of writers take pods in the order they were first offered.
//! A status that changes again before its turn (Pending, then Running a second later, while
//! the API server is busy) is written once, in its newest form: on a loaded control plane
//! that halves the writes a starting pod costs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::Notify;

/// What a writer takes: the pod as the cache had it (its resourceVersion guards the
/// write) and the status to put on it.
#[derive(Clone, Debug)]
pub struct Pending {
    pub pod: Arc<Pod>,
    pub status: PodStatus,
}

#[derive(Default)]
pub struct StatusQueue {
    inner: Mutex<Inner>,
    ready: Notify,
}

#[derive(Default)]
struct Inner {
    /// Pod uids waiting for a writer, oldest offer first; each is in `latest`.
    order: VecDeque<String>,
    latest: HashMap<String, Pending>,
    /// Statuses being written now, by pod uid.
    writing: HashMap<String, PodStatus>,
    /// The last status written for a pod, and the resourceVersion it was written over:
    /// until the cache shows the write, the pod still carries that version and the old
    /// status, and offering the same status again would only earn a conflict.
    written: HashMap<String, (Option<String>, PodStatus)>,
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl StatusQueue {
    /// Queues `status` for `pod`, replacing a status still waiting for it (which keeps its
    /// place in line). A status already being written, or written over the very version
    /// `pod` has, is not queued again.
    pub fn offer(&self, pod: Arc<Pod>, status: PodStatus) {
        let id = uid(&pod);
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = q.latest.get_mut(&id) {
            *waiting = Pending { pod, status };
            return;
        }
        if q.writing.get(&id) == Some(&status) {
            return;
        }
        if q.written.get(&id).is_some_and(|(rv, s)| *rv == pod.metadata.resource_version && *s == status) {
            return;
        }
        q.order.push_back(id.clone());
        q.latest.insert(id, Pending { pod, status });
        drop(q);
        self.ready.notify_one();
    }

    /// The next status to write, waiting for one; the caller reports with `done`.
    pub async fn next(&self) -> Pending {
        loop {
            let ready = self.ready.notified();
            {
                let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(id) = q.order.pop_front() {
                    let p = q.latest.remove(&id).expect("every queued uid has a status");
                    q.writing.insert(id, p.status.clone());
                    if !q.order.is_empty() {
                        self.ready.notify_one(); // wake another writer for the rest
                    }
                    return p;
                }
            }
            ready.await;
        }
    }

    /// Records the end of a write that `next` handed out.
    pub fn done(&self, p: &Pending, written: bool) {
        let id = uid(&p.pod);
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        q.writing.remove(&id);
        if written {
            q.written.insert(id, (p.pod.metadata.resource_version.clone(), p.status.clone()));
        } else {
            q.written.remove(&id);
        }
    }

    /// Forgets pods that are gone (by uid).
    pub fn retain(&self, live: &HashSet<String>) {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { order, latest, written, .. } = &mut *q;
        written.retain(|id, _| live.contains(id));
        latest.retain(|id, _| live.contains(id));
        order.retain(|id| latest.contains_key(id));
    }

    /// Statuses waiting for a writer.
    pub fn waiting(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, rv: &str) -> Arc<Pod> {
        let mut p = Pod::default();
        p.metadata.uid = Some(uid.into());
        p.metadata.resource_version = Some(rv.into());
        Arc::new(p)
    }

    fn phase(p: &str) -> PodStatus {
        PodStatus { phase: Some(p.into()), ..Default::default() }
    }

    fn take(q: &StatusQueue) -> Pending {
        q.next().now_or_never().expect("a status is waiting")
    }

    use futures::FutureExt;

    #[test]
    fn a_newer_status_replaces_a_waiting_one_in_its_place() {
        let q = StatusQueue::default();
        q.offer(pod("a", "1"), phase("Pending"));
        q.offer(pod("b", "1"), phase("Pending"));
        q.offer(pod("a", "2"), phase("Running"));
        assert_eq!(q.waiting(), 2);
        let first = take(&q);
        assert_eq!(first.pod.metadata.uid.as_deref(), Some("a"));
        assert_eq!(first.status, phase("Running"));
        assert_eq!(first.pod.metadata.resource_version.as_deref(), Some("2"));
        assert_eq!(take(&q).pod.metadata.uid.as_deref(), Some("b"));
        assert!(q.next().now_or_never().is_none(), "nothing else waits");
    }

    #[test]
    fn what_is_being_or_was_just_written_is_not_queued_again() {
        let q = StatusQueue::default();
        q.offer(pod("a", "1"), phase("Pending"));
        let p = take(&q);
        // The cache has not seen the write yet: the same status over the same version.
        q.offer(pod("a", "1"), phase("Pending"));
        assert_eq!(q.waiting(), 0, "being written");
        q.done(&p, true);
        q.offer(pod("a", "1"), phase("Pending"));
        assert_eq!(q.waiting(), 0, "written over this version");
        // A new status, or the same one over a newer version (someone else changed
        // the pod back), is written.
        q.offer(pod("a", "1"), phase("Running"));
        assert_eq!(q.waiting(), 1);
        let p = take(&q);
        q.done(&p, false);
        q.offer(pod("a", "1"), phase("Running"));
        assert_eq!(q.waiting(), 1, "a failed write is tried again");
        let p = take(&q);
        q.done(&p, true);
        q.offer(pod("a", "3"), phase("Running"));
        assert_eq!(q.waiting(), 1);
    }

    #[test]
    fn gone_pods_are_forgotten() {
        let q = StatusQueue::default();
        q.offer(pod("a", "1"), phase("Pending"));
        q.offer(pod("b", "1"), phase("Pending"));
        q.retain(&HashSet::from(["b".to_string()]));
        assert_eq!(q.waiting(), 1);
        assert_eq!(take(&q).pod.metadata.uid.as_deref(), Some("b"));
    }
}
