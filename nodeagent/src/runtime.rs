//! The container runtime behind the agent. `Fake` simulates containers without
//! running anything, steered by pod annotations (documented in the crate README):
//! `fake.skiff.io/ready: "false"` keeps containers unready, `fake.skiff.io/run-seconds`
//! makes them exit after that long with `fake.skiff.io/exit-code` (default 0),
//! restarting as the restart policy says. `fake.skiff.io/cpu-usage` and
//! `fake.skiff.io/memory-usage` (quantities, default 0) are what each running
//! container reports using.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::podstatus::{Container, State};

pub trait Runtime: Send + Sync + 'static {
    /// Starts the pod's containers (returns once they are being started).
    fn start(&self, pod: &Pod, pod_ip: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Stops them, giving each up to `grace` to exit.
    fn stop(&self, pod: &Pod, grace: Duration) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The containers of a started pod, None if it was never started here.
    fn containers(&self, pod: &Pod) -> Option<Vec<Container>>;
    /// Pods the runtime holds (uids).
    fn pods(&self) -> Vec<String>;
    /// What the running containers of a pod use now; None for a pod not running here.
    fn usage(&self, pod: &Pod) -> Option<Vec<Usage>>;
    /// The pod's address as the runtime's network gave it: None when the runtime has no
    /// network of its own (the agent then makes one up), Some(None) while not yet known.
    fn pod_ip(&self, _pod: &Pod) -> Option<Option<String>> {
        None
    }
    /// The pods whose containers changed on their own (started, exited, became ready,
    /// got an address), so the agent reports them at once instead of at its next
    /// periodic sync.
    fn changes(&self) -> Arc<Changes>;
}

/// Pod uids marked as changed, and a wake-up for whoever reports them.
#[derive(Default)]
pub struct Changes {
    uids: Mutex<HashSet<String>>,
    wake: tokio::sync::Notify,
}

impl Changes {
    pub fn mark(&self, uid: &str) {
        self.uids.lock().expect("not poisoned").insert(uid.to_string());
        self.wake.notify_one();
    }

    /// The uids marked since the last call.
    pub fn take(&self) -> HashSet<String> {
        std::mem::take(&mut *self.uids.lock().expect("not poisoned"))
    }

    /// Returns once a uid has been marked (at once if one was marked since the last wait).
    pub async fn wait(&self) {
        self.wake.notified().await
    }
}

/// One container's resource usage: CPU in millicores, memory in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub container: String,
    pub cpu_milli: i64,
    pub memory_bytes: i64,
}

struct FakePod {
    started: Timestamp,
}

pub struct Fake {
    /// How long containers take to start.
    pub start_delay: Duration,
    pods: Arc<Mutex<HashMap<String, FakePod>>>,
    changes: Arc<Changes>,
}

impl Fake {
    pub fn new(start_delay: Duration) -> Fake {
        Fake { start_delay, pods: Default::default(), changes: Default::default() }
    }
}

/// A timer's slack past the moment a simulated container changes, so that the change
/// is visible (the timer runs on the monotonic clock, states are read from the wall
/// clock).
const FAKE_SLACK: Duration = Duration::from_millis(10);

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// How long the containers run before they exit (`fake.skiff.io/run-seconds`); None: until stopped.
fn run_seconds(pod: &Pod) -> Option<i64> {
    annotation(pod, "fake.skiff.io/run-seconds").and_then(|s| s.parse().ok()).filter(|s| *s > 0)
}

fn exit_code(pod: &Pod) -> i32 {
    annotation(pod, "fake.skiff.io/exit-code").and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Whether exited containers are started again, by the pod's restart policy.
fn restarts_allowed(pod: &Pod) -> bool {
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always") {
        "Always" => true,
        "OnFailure" => exit_code(pod) != 0,
        _ => false,
    }
}

impl Runtime for Fake {
    async fn start(&self, pod: &Pod, _pod_ip: &str) -> anyhow::Result<()> {
        let uid = uid(pod);
        {
            let mut pods = self.pods.lock().expect("not poisoned");
            if pods.contains_key(&uid) {
                return Ok(());
            }
            pods.insert(uid.clone(), FakePod { started: Timestamp::now() });
        }
        // Marks the pod changed each time its containers change on their own: when they
        // are up, and then, with run-seconds, each time they exit (and restart).
        let run = run_seconds(pod).map(|s| Duration::from_secs(s.unsigned_abs()));
        let restarts = restarts_allowed(pod);
        let (pods, changes, delay) = (self.pods.clone(), self.changes.clone(), self.start_delay);
        tokio::spawn(async move {
            let mut next = tokio::time::Instant::now() + delay + FAKE_SLACK;
            let mut first = true;
            loop {
                tokio::time::sleep_until(next).await;
                if !pods.lock().expect("not poisoned").contains_key(&uid) {
                    return;
                }
                changes.mark(&uid);
                match run {
                    // Up, or exited and restarted at once: it exits (again) after `run`.
                    Some(run) if first || restarts => next += run,
                    _ => return,
                }
                first = false;
            }
        });
        Ok(())
    }

    async fn stop(&self, pod: &Pod, _grace: Duration) -> anyhow::Result<()> {
        // Simulated containers exit on SIGTERM at once.
        self.pods.lock().expect("not poisoned").remove(&uid(pod));
        Ok(())
    }

    fn containers(&self, pod: &Pod) -> Option<Vec<Container>> {
        let started = self.pods.lock().expect("not poisoned").get(&uid(pod))?.started;
        let now = Timestamp::now();
        let delay = SignedDuration::try_from(self.start_delay).unwrap_or_default();
        let up = started.checked_add(delay).unwrap_or(started);
        let ready_wanted = annotation(pod, "fake.skiff.io/ready") != Some("false");
        let run = run_seconds(pod);
        let code = exit_code(pod);
        let restarts_allowed = restarts_allowed(pod);
        let list = pod
            .spec
            .as_ref()
            .map_or(&[][..], |s| s.containers.as_slice())
            .iter()
            .map(|c| {
                let id = format!("fake://{}-{}", uid(pod), c.name);
                let image = c.image.clone().unwrap_or_default();
                let mk = |state, ready, restarts| Container {
                    name: c.name.clone(),
                    image: image.clone(),
                    id: id.clone(),
                    state,
                    last: None,
                    message: None,
                    image_id: None,
                    ready,
                    restarts,
                    init: false,
                };
                if now < up {
                    return mk(State::Waiting { reason: "ContainerCreating".into() }, false, 0);
                }
                let Some(run) = run else { return mk(State::Running { since: up }, ready_wanted, 0) };
                let alive = now.duration_since(up).as_secs();
                if alive < run {
                    return mk(State::Running { since: up }, ready_wanted, 0);
                }
                if !restarts_allowed {
                    let finished = up.checked_add(SignedDuration::from_secs(run)).unwrap_or(up);
                    let reason = if code == 0 { "Completed" } else { "Error" };
                    return mk(
                        State::Terminated { exit_code: code, reason: reason.into(), started: up, finished },
                        false,
                        0,
                    );
                }
                // Restarted at once each time it exits.
                let n = alive / run;
                let since = up.checked_add(SignedDuration::from_secs(n * run)).unwrap_or(up);
                mk(State::Running { since }, ready_wanted, n as i32)
            })
            .collect();
        Some(list)
    }

    fn changes(&self) -> Arc<Changes> {
        self.changes.clone()
    }

    fn pods(&self) -> Vec<String> {
        self.pods.lock().expect("not poisoned").keys().cloned().collect()
    }

    fn usage(&self, pod: &Pod) -> Option<Vec<Usage>> {
        let quantity = |key| annotation(pod, key).and_then(skiff_controllers::quantity::milli).unwrap_or(0);
        let (cpu_milli, memory_bytes) =
            (quantity("fake.skiff.io/cpu-usage"), quantity("fake.skiff.io/memory-usage") / 1000);
        let running: Vec<Usage> = self
            .containers(pod)?
            .into_iter()
            .filter(|c| matches!(c.state, State::Running { .. }))
            .map(|c| Usage { container: c.name, cpu_milli, memory_bytes })
            .collect();
        // A pod with nothing running has no metrics (not zero usage).
        (!running.is_empty()).then_some(running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, policy: &str, run_seconds: Option<&str>) -> Pod {
        let mut annotations = std::collections::BTreeMap::new();
        if let Some(s) = run_seconds {
            annotations.insert("fake.skiff.io/run-seconds".to_string(), s.to_string());
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": uid, "uid": uid, "annotations": annotations},
            "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "i"}]},
        }))
        .unwrap()
    }

    /// Waits for the runtime to report changed pods, and returns them. (A wake-up can
    /// find them taken already, by the previous call.)
    async fn next_changes(rt: &Fake) -> HashSet<String> {
        loop {
            tokio::time::timeout(Duration::from_secs(10), rt.changes().wait()).await.expect("a change within 10 s");
            let changed = rt.changes().take();
            if !changed.is_empty() {
                return changed;
            }
        }
    }

    fn state(rt: &Fake, p: &Pod) -> State {
        rt.containers(p).unwrap()[0].state.clone()
    }

    #[tokio::test]
    async fn simulated_containers_report_when_they_start_and_exit() {
        let rt = Fake::new(Duration::from_millis(100));
        let (job, web) = (pod("job", "Never", Some("1")), pod("web", "Always", None));
        rt.start(&job, "").await.unwrap();
        rt.start(&web, "").await.unwrap();
        assert!(matches!(state(&rt, &web), State::Waiting { .. }));
        // Both come up after the start delay, and are reported changed when they do.
        let mut up = HashSet::new();
        while up.len() < 2 {
            up.extend(next_changes(&rt).await);
        }
        assert_eq!(up, HashSet::from(["job".to_string(), "web".to_string()]));
        assert!(matches!(state(&rt, &web), State::Running { .. }));
        assert!(matches!(state(&rt, &job), State::Running { .. }));
        // The job exits a second later: reported, and seen terminated when it is.
        assert_eq!(next_changes(&rt).await, HashSet::from(["job".to_string()]));
        assert!(matches!(state(&rt, &job), State::Terminated { exit_code: 0, .. }), "{:?}", state(&rt, &job));
        // Nothing changes after that, and a stopped pod is not reported.
        rt.stop(&web, Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(rt.changes().take(), HashSet::new());
    }
}
