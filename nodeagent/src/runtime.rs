//! The container runtime behind the agent. `Fake` simulates containers without
//! running anything, steered by pod annotations (documented in the crate README):
//! `fake.skiff.io/ready: "false"` keeps containers unready, `fake.skiff.io/run-seconds`
//! makes them exit after that long with `fake.skiff.io/exit-code` (default 0),
//! restarting as the restart policy says. `fake.skiff.io/cpu-usage` and
//! `fake.skiff.io/memory-usage` (quantities, default 0) are what each running
//! container reports using.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
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
    /// Woken when a container changes state on its own (started, exited, became ready),
    /// so the agent reports it at once instead of at its next periodic sync.
    fn changes(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
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
    pods: Mutex<HashMap<String, FakePod>>,
}

impl Fake {
    pub fn new(start_delay: Duration) -> Fake {
        Fake { start_delay, pods: Mutex::new(HashMap::new()) }
    }
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl Runtime for Fake {
    async fn start(&self, pod: &Pod, _pod_ip: &str) -> anyhow::Result<()> {
        self.pods.lock().expect("not poisoned").entry(uid(pod)).or_insert(FakePod { started: Timestamp::now() });
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
        let run: Option<i64> =
            annotation(pod, "fake.skiff.io/run-seconds").and_then(|s| s.parse().ok()).filter(|s| *s > 0);
        let code: i32 = annotation(pod, "fake.skiff.io/exit-code").and_then(|s| s.parse().ok()).unwrap_or(0);
        let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
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
                let restarts_allowed = policy == "Always" || (policy == "OnFailure" && code != 0);
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
