//! The OCI runtime spec runc gets for one container of a pod, following the kubelet:
//! `command` replaces the image's Entrypoint and `args` its Cmd; the image's Env comes
//! first, then the container's; containers join the pod's network namespace; resources
//! become cgroup settings (cpu.shares from the request, CFS quota from the limit, the
//! memory limit) and the QoS class sets oom_score_adj.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use super::image::ImageConfig;

const CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A bind mount from the host into the container.
pub struct Bind {
    pub source: String,
    pub destination: String,
    pub read_only: bool,
}

/// Everything besides the pod and container that shapes the spec.
pub struct Inputs<'a> {
    pub image: &'a ImageConfig,
    pub env: Vec<(String, String)>,
    pub binds: Vec<Bind>,
    pub netns: String,
    pub cgroups_path: String,
    /// Node memory, for the Burstable oom_score_adj.
    pub node_memory: i64,
}

/// Replaces `$(VAR)` with the variable's value, `$$(VAR)` with `$(VAR)`; unknown ones stay.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("$$") {
            out.push('$');
            rest = t;
        } else if let Some(end) = tail.strip_prefix("$(").and_then(|t| t.find(')')) {
            let name = &tail[2..2 + end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..3 + end]),
            }
            rest = &tail[3 + end..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The process arguments as the kubelet picks them.
pub fn argv(c: &Container, img: &ImageConfig, vars: &BTreeMap<String, String>) -> Vec<String> {
    let command = c.command.clone().unwrap_or_default();
    let args = c.args.clone().unwrap_or_default();
    let (cmd, args) = match (command.is_empty(), args.is_empty()) {
        (false, _) => (command, args),
        (true, false) => (img.entrypoint.clone(), args),
        (true, true) => (img.entrypoint.clone(), img.cmd.clone()),
    };
    cmd.into_iter().chain(args).map(|a| expand(&a, vars)).collect()
}

fn quantity(c: &Container, which: &str, key: &str) -> Option<i64> {
    let r = c.resources.as_ref()?;
    let map = if which == "limits" { r.limits.as_ref() } else { r.requests.as_ref() };
    skiff_controllers::quantity::milli(&map?.get(key)?.0)
}

fn oom_score_adj(pod: &Pod, c: &Container, node_memory: i64) -> i64 {
    match crate::podstatus::qos(pod) {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let req = quantity(c, "requests", "memory").map(|m| m / 1000).unwrap_or(0);
            let adj = 1000 - 1000 * req / node_memory.max(1);
            adj.clamp(3, 999)
        }
    }
}

/// The pod's host name: `spec.hostname`, else its name (truncated to 63 characters).
pub fn hostname(pod: &Pod) -> String {
    let name = pod.spec.as_ref().and_then(|s| s.hostname.clone()).or_else(|| pod.metadata.name.clone());
    let h: String = name.unwrap_or_default().chars().take(63).collect();
    h.trim_end_matches(['-', '.']).to_string()
}

/// The uid and gid a container runs as: its securityContext, else the pod's, else the
/// image's numeric `User` (`uid[:gid]`), else root.
pub fn run_as(pod: &Pod, c: &Container, img: &ImageConfig) -> (i64, i64) {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let c_sc = c.security_context.as_ref();
    let (img_user, img_group) = match img.user.split_once(':') {
        Some((u, g)) => (u.parse().ok(), g.parse().ok()),
        None => (img.user.parse().ok(), None),
    };
    let user = c_sc.and_then(|s| s.run_as_user).or(pod_sc.and_then(|s| s.run_as_user)).or(img_user).unwrap_or(0);
    let group = c_sc.and_then(|s| s.run_as_group).or(pod_sc.and_then(|s| s.run_as_group)).or(img_group).unwrap_or(0);
    (user, group)
}

/// `runAsNonRoot` refuses to run as uid 0, with the kubelet's message.
pub fn check_non_root(pod: &Pod, c: &Container, img: &ImageConfig) -> Result<(), String> {
    let pod_sc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let non_root = c
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root)
        .or(pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if non_root && run_as(pod, c, img).0 == 0 {
        return Err("container has runAsNonRoot and image will run as root".into());
    }
    Ok(())
}

pub fn build(pod: &Pod, c: &Container, inp: Inputs) -> Value {
    let mut env: Vec<String> = inp.image.env.clone();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for e in &inp.image.env {
        if let Some((k, v)) = e.split_once('=') {
            vars.insert(k.into(), v.into());
        }
    }
    for (k, v) in &inp.env {
        let v = expand(v, &vars);
        env.retain(|e| e.split_once('=').map(|(n, _)| n) != Some(k.as_str()));
        env.push(format!("{k}={v}"));
        vars.insert(k.clone(), v);
    }
    let args = argv(c, inp.image, &vars);
    let cwd = c.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| {
        if inp.image.working_dir.is_empty() {
            "/".into()
        } else {
            inp.image.working_dir.clone()
        }
    });
    let hostname = hostname(pod);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    for b in &inp.binds {
        let mode = if b.read_only { "ro" } else { "rw" };
        mounts.push(json!({"destination": b.destination, "type": "bind", "source": b.source, "options": ["rbind", "rprivate", mode]}));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let shares = quantity(c, "requests", "cpu")
        .or_else(|| quantity(c, "limits", "cpu"))
        .map(|m| (m * 1024 / 1000).clamp(2, 262_144));
    resources["cpu"] = json!({"shares": shares.unwrap_or(2)});
    if let Some(limit) = quantity(c, "limits", "cpu") {
        resources["cpu"]["quota"] = json!((limit * 100_000 / 1000).max(1000));
        resources["cpu"]["period"] = json!(100_000);
    }
    if let Some(mem) = quantity(c, "limits", "memory") {
        resources["memory"] = json!({"limit": mem / 1000});
    }
    let caps = json!(CAPS);
    let (user, group) = run_as(pod, c, inp.image);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": user, "gid": group},
            "args": args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true,
            "oomScoreAdj": oom_score_adj(pod, c, inp.node_memory),
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": inp.cgroups_path,
            "resources": resources,
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": inp.netns},
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(v: Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn command_and_args_replace_entrypoint_and_cmd_as_in_kubernetes() {
        let img = ImageConfig { entrypoint: vec!["/ep".into()], cmd: vec!["dflt".into()], ..Default::default() };
        let vars = BTreeMap::from([("WHO".to_string(), "world".to_string())]);
        let c = container(json!({"name": "c"}));
        assert_eq!(argv(&c, &img, &vars), ["/ep", "dflt"]);
        let c = container(json!({"name": "c", "args": ["hi $(WHO)", "$$(WHO)", "$(NOPE)"]}));
        assert_eq!(argv(&c, &img, &vars), ["/ep", "hi world", "$(WHO)", "$(NOPE)"]);
        let c = container(json!({"name": "c", "command": ["sh"]}));
        assert_eq!(argv(&c, &img, &vars), ["sh"]);
    }

    #[test]
    fn resources_become_cgroup_settings() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}}
        ]}}))
        .unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let img = ImageConfig::default();
        let inp = Inputs {
            image: &img,
            env: vec![("A".into(), "1".into())],
            binds: vec![],
            netns: "/var/run/netns/x".into(),
            cgroups_path: "/skiff/podx/c".into(),
            node_memory: 1 << 30,
        };
        let s = build(&pod, c, inp);
        assert_eq!(s["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(s["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(s["linux"]["resources"]["memory"]["limit"], 128 << 20);
        assert_eq!(s["process"]["oomScoreAdj"], 1000 - 1000 * (64i64 << 20) / (1i64 << 30));
        assert_eq!(s["process"]["env"], json!(["A=1"]));
    }
}
