//! A pod's status as the kubelet reports it, computed from what the runtime says
//! about its containers. Any runtime (the simulated one now, containerd later) feeds
//! the same function, so phases, conditions and container statuses look alike.

use k8s_openapi::api::core::v1::{
    ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// One container as the runtime sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub id: String,
    pub state: State,
    /// The state of the previous run (lastState), once it has restarted.
    pub last: Option<State>,
    /// Why it waits, in words (e.g. the back-off), for `state.waiting.message`.
    pub message: Option<String>,
    /// The image as resolved by the runtime (`repo@sha256:...`), if known.
    pub image_id: Option<String>,
    pub ready: bool,
    pub restarts: i32,
    /// An init container (reported in initContainerStatuses).
    pub init: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Waiting { reason: String },
    Running { since: Timestamp },
    Terminated { exit_code: i32, reason: String, started: Timestamp, finished: Timestamp },
}

/// Where the pod runs: node address and pod address.
pub struct Placement<'a> {
    pub host_ip: &'a str,
    pub pod_ip: Option<&'a str>,
}

fn seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

pub fn qos(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else { return "BestEffort" };
    let mut any = false;
    let mut guaranteed = true;
    for c in &spec.containers {
        let r = c.resources.clone().unwrap_or_default();
        let (req, lim) = (r.requests.unwrap_or_default(), r.limits.unwrap_or_default());
        any |= !req.is_empty() || !lim.is_empty();
        for k in ["cpu", "memory"] {
            let l = lim.get(k);
            guaranteed &= l.is_some() && req.get(k).is_none_or(|q| Some(q) == l);
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn phase(pod: &Pod, containers: &[Container]) -> &'static str {
    if containers.is_empty() {
        return "Pending";
    }
    let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    let terminated: Vec<i32> = containers
        .iter()
        .filter_map(|c| match c.state {
            State::Terminated { exit_code, .. } => Some(exit_code),
            _ => None,
        })
        .collect();
    if terminated.len() == containers.len() && policy != "Always" {
        let failed = terminated.iter().any(|c| *c != 0);
        if !failed {
            return "Succeeded";
        }
        if policy == "Never" {
            return "Failed";
        }
    }
    // A container waiting to restart (it has a last state) counts as having run, as in the kubelet.
    if containers
        .iter()
        .any(|c| matches!(c.state, State::Running { .. } | State::Terminated { .. }) || c.last.is_some())
    {
        "Running"
    } else {
        "Pending"
    }
}

fn condition(prev: Option<&PodStatus>, type_: &str, ok: bool, reason: Option<&str>, now: &Time) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let old = prev.and_then(|p| p.conditions.as_ref()).and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let since = match old {
        Some(o) if o.status == status => o.last_transition_time.clone(),
        _ => Some(now.clone()),
    };
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: (!ok).then(|| reason.unwrap_or_default().to_string()).filter(|r| !r.is_empty()),
        last_transition_time: since,
        last_probe_time: None,
        message: None,
        observed_generation: None,
    }
}

fn k8s_state(state: &State, id: &str, message: Option<&str>) -> K8sState {
    match state {
        State::Waiting { reason } => K8sState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.clone()), message: message.map(String::from) }),
            ..Default::default()
        },
        State::Running { since } => K8sState {
            running: Some(ContainerStateRunning { started_at: Some(Time(seconds(*since))) }),
            ..Default::default()
        },
        State::Terminated { exit_code, reason, started, finished } => K8sState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.clone()),
                started_at: Some(Time(seconds(*started))),
                finished_at: Some(Time(seconds(*finished))),
                container_id: Some(id.to_string()),
                message: message.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
    }
}

/// The status to report for `pod` given its containers (None: not started yet).
pub fn compute(pod: &Pod, containers: Option<&[Container]>, at: &Placement, now: Timestamp) -> PodStatus {
    // The API keeps times to the second; finer ones would differ from what is stored
    // and be written again on every sync.
    let now = seconds(now);
    let prev = pod.status.as_ref();
    let now_t = Time(now);
    let all = containers.unwrap_or_default();
    let inits: Vec<Container> = all.iter().filter(|c| c.init).cloned().collect();
    let cs: &[Container] = &all.iter().filter(|c| !c.init).cloned().collect::<Vec<_>>();
    let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always");
    let initialized = inits.iter().all(|c| matches!(c.state, State::Terminated { exit_code: 0, .. }));
    let init_failed = policy == "Never"
        && inits.iter().any(|c| matches!(c.state, State::Terminated { exit_code, .. } if exit_code != 0));
    let phase = if init_failed {
        "Failed"
    } else if !initialized {
        "Pending"
    } else {
        phase(pod, cs)
    };
    let all_ready = !cs.is_empty() && cs.iter().all(|c| c.ready);
    let done = matches!(phase, "Succeeded" | "Failed");
    let not_ready = if done { "PodCompleted" } else { "ContainersNotReady" };
    let conditions = vec![
        condition(prev, "PodReadyToStartContainers", at.pod_ip.is_some(), None, &now_t),
        condition(prev, "Initialized", initialized, Some("ContainersNotInitialized"), &now_t),
        condition(prev, "Ready", all_ready && !done, Some(not_ready), &now_t),
        condition(prev, "ContainersReady", all_ready && !done, Some(not_ready), &now_t),
        condition(prev, "PodScheduled", true, None, &now_t),
    ];
    let status_of = |c: &Container| {
        let state = k8s_state(&c.state, &c.id, c.message.as_deref());
        let started = matches!(c.state, State::Running { .. });
        ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone(),
            image_id: c.image_id.clone().unwrap_or_else(|| format!("{}@sha256:{:064x}", c.image, 0)),
            container_id: (!matches!(c.state, State::Waiting { .. })).then(|| c.id.clone()),
            ready: c.ready,
            started: Some(started),
            restart_count: c.restarts,
            state: Some(state),
            last_state: c.last.as_ref().map(|l| k8s_state(l, &c.id, None)),
            ..Default::default()
        }
    };
    let statuses: Vec<ContainerStatus> = cs.iter().map(status_of).collect();
    let init_statuses: Vec<ContainerStatus> = inits.iter().map(status_of).collect();
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        container_statuses: (!statuses.is_empty()).then_some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        host_ip: Some(at.host_ip.into()),
        host_ips: Some(vec![HostIP { ip: at.host_ip.into() }]),
        pod_ip: at.pod_ip.map(String::from),
        pod_ips: at.pod_ip.map(|ip| vec![PodIP { ip: ip.into() }]),
        start_time: prev.and_then(|p| p.start_time.clone()).or(Some(now_t)),
        qos_class: Some(qos(pod).into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(policy: &str) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "i"}]}})).unwrap()
    }

    fn c(state: State, ready: bool) -> Container {
        Container {
            name: "c".into(),
            image: "i".into(),
            id: "fake://1".into(),
            state,
            last: None,
            message: None,
            image_id: None,
            ready,
            restarts: 0,
            init: false,
        }
    }

    #[test]
    fn phases_follow_containers_and_restart_policy() {
        let at = Placement { host_ip: "10.0.0.1", pod_ip: Some("10.244.0.2") };
        let now = Timestamp::now();
        let s = compute(&pod("Always"), None, &at, now);
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let running = [c(State::Running { since: now }, true)];
        let s = compute(&pod("Always"), Some(&running), &at, now);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        let ready = s.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(ready.status, "True");
        let exit = |code| {
            [c(State::Terminated { exit_code: code, reason: "Completed".into(), started: now, finished: now }, false)]
        };
        assert_eq!(compute(&pod("Never"), Some(&exit(0)), &at, now).phase.as_deref(), Some("Succeeded"));
        assert_eq!(compute(&pod("Never"), Some(&exit(1)), &at, now).phase.as_deref(), Some("Failed"));
        assert_eq!(compute(&pod("OnFailure"), Some(&exit(1)), &at, now).phase.as_deref(), Some("Running"));
        // Unchanged conditions keep their transition time.
        let mut p = pod("Always");
        p.status = Some(compute(&p, Some(&running), &at, now));
        let later = compute(
            &p,
            Some(&running),
            &at,
            now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(60)).unwrap(),
        );
        assert_eq!(later.conditions, p.status.as_ref().unwrap().conditions);
    }
}
