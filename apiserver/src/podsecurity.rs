//! Pod Security admission: the Pod Security Standards (`privileged`, `baseline`,
//! `restricted`) applied to new pods by their namespace's labels
//! `pod-security.kubernetes.io/enforce` (refuse) and `.../warn` (admit with a warning),
//! with Kubernetes' check names and wording, in its order (baseline checks, then
//! restricted ones, each by check id; a restricted check replaces the baseline check it
//! tightens).
//!
//! Every check of the Pod Security Standards is made: AppArmor profiles (fields and the
//! beta annotations), capabilities, host namespaces, hostPath volumes, host ports,
//! privileged, /proc mount type, SELinux options, seccomp, sysctls, Windows hostProcess;
//! and for `restricted` allowPrivilegeEscalation, volume types, runAsNonRoot and
//! runAsUser. Not relaxed for user-namespaced pods (`hostUsers: false`), which Skiff
//! does not run.

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

/// A namespace's policy for one mode (`enforce`, `warn`): level and the version label.
pub fn policy(namespace: &Value, mode: &str) -> Option<(Level, String)> {
    let labels = &namespace["metadata"]["labels"];
    let level = Level::parse(labels[format!("pod-security.kubernetes.io/{mode}")].as_str()?)?;
    let version = labels[format!("pod-security.kubernetes.io/{mode}-version")].as_str().unwrap_or("latest");
    Some((level, version.to_string()))
}

/// `violates PodSecurity "restricted:latest": ...` without its prefix: the failed checks.
pub fn describe(level: Level, version: &str, violations: &[String]) -> String {
    format!("PodSecurity \"{}:{version}\": {}", level.name(), violations.join(", "))
}

/// Every container of the pod, init and ephemeral ones included: (name, container).
fn containers(spec: &Value) -> Vec<(&str, &Value)> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten())
        .map(|c| (c["name"].as_str().unwrap_or_default(), c))
        .collect()
}

/// `container "a"` or `containers "a", "b"`.
fn named(what: &str, names: &[&str]) -> String {
    let plural = if names.len() == 1 { "" } else { "s" };
    format!("{what}{plural} {}", quoted(names))
}

/// `"a", "b"`: each item in double quotes, as Kubernetes lists values.
fn quoted(items: &[&str]) -> String {
    items.iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ")
}

/// The capabilities a baseline pod may add (the container runtime's defaults).
const DEFAULT_CAPS: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The sysctls a baseline pod may set (Kubernetes 1.32's safe set, what 1.33 allows).
const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// Volume types a restricted pod may use.
const RESTRICTED_VOLUMES: [&str; 8] =
    ["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

fn added_caps(c: &Value) -> Vec<&str> {
    c["securityContext"]["capabilities"]["add"].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// The AppArmor beta annotation prefix (one annotation per container).
const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/";

/// appArmorProfile: a profile type other than RuntimeDefault or Localhost, on the pod or
/// a container, or an annotation other than `runtime/default` or `localhost/*`.
fn apparmor(meta: &Value, psc: &Value, cs: &[(&str, &Value)]) -> Option<String> {
    let bad_type = |sc: &Value| -> Option<String> {
        let profile = &sc["appArmorProfile"];
        let t = profile["type"].as_str().unwrap_or_default();
        (!profile.is_null() && t != "RuntimeDefault" && t != "Localhost").then(|| t.to_string())
    };
    let mut setters = Vec::new();
    let mut types = std::collections::BTreeSet::new();
    if let Some(t) = bad_type(psc) {
        setters.push("pod".to_string());
        types.insert(t);
    }
    let bad: Vec<&str> = cs
        .iter()
        .filter(|(_, c)| bad_type(&c["securityContext"]).map(|t| types.insert(t)).is_some())
        .map(|(n, _)| *n)
        .collect();
    if !bad.is_empty() {
        setters.push(named("container", &bad));
    }
    let mut annotations: Vec<String> = meta["annotations"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(APPARMOR_ANNOTATION))
        .filter_map(|(k, v)| {
            let v = v.as_str().unwrap_or_default();
            let allowed = v.is_empty() || v == "runtime/default" || v.starts_with("localhost/");
            (!allowed).then(|| format!("{k}={}", Value::from(v)))
        })
        .collect();
    annotations.sort();
    if !annotations.is_empty() {
        setters.push(if annotations.len() == 1 { "annotation" } else { "annotations" }.to_string());
    }
    if setters.is_empty() {
        return None;
    }
    let values: Vec<&str> = types.iter().map(String::as_str).chain(annotations.iter().map(String::as_str)).collect();
    let reason = if values.len() == 1 { "forbidden AppArmor profile" } else { "forbidden AppArmor profiles" };
    Some(format!("{reason} ({} must not set AppArmor profile type to {})", setters.join(" and "), quoted(&values)))
}

/// seLinuxOptions: a type other than the container ones, or any user or role.
fn selinux(psc: &Value, cs: &[(&str, &Value)]) -> Option<String> {
    const TYPES: [&str; 4] = ["", "container_t", "container_init_t", "container_kvm_t"];
    let mut types = std::collections::BTreeSet::new();
    let (mut user, mut role) = (false, false);
    let mut bad = |sc: &Value| -> bool {
        let o = &sc["seLinuxOptions"];
        if !o.is_object() {
            return false;
        }
        let t = o["type"].as_str().unwrap_or_default();
        let bad_type = !TYPES.contains(&t);
        if bad_type {
            types.insert(t.to_string());
        }
        let u = o["user"].as_str().is_some_and(|u| !u.is_empty());
        let r = o["role"].as_str().is_some_and(|r| !r.is_empty());
        user |= u;
        role |= r;
        bad_type || u || r
    };
    let mut setters = Vec::new();
    if bad(psc) {
        setters.push("pod".to_string());
    }
    let containers: Vec<&str> = cs.iter().filter(|(_, c)| bad(&c["securityContext"])).map(|(n, _)| *n).collect();
    if !containers.is_empty() {
        setters.push(named("container", &containers));
    }
    if setters.is_empty() {
        return None;
    }
    let mut data = Vec::new();
    if !types.is_empty() {
        let list: Vec<&str> = types.iter().map(String::as_str).collect();
        data.push(format!("{} {}", if list.len() == 1 { "type" } else { "types" }, quoted(&list)));
    }
    if user {
        data.push("user may not be set".to_string());
    }
    if role {
        data.push("role may not be set".to_string());
    }
    Some(format!(
        "seLinuxOptions ({} set forbidden securityContext.seLinuxOptions: {})",
        setters.join(" and "),
        data.join("; ")
    ))
}

/// windowsHostProcess: hostProcess=true on the pod or a container.
fn host_process(psc: &Value, cs: &[(&str, &Value)]) -> Option<String> {
    let mut setters = Vec::new();
    if psc["windowsOptions"]["hostProcess"] == true {
        setters.push("pod".to_string());
    }
    let bad: Vec<&str> = cs
        .iter()
        .filter(|(_, c)| c["securityContext"]["windowsOptions"]["hostProcess"] == true)
        .map(|(n, _)| *n)
        .collect();
    if !bad.is_empty() {
        setters.push(named("container", &bad));
    }
    (!setters.is_empty()).then(|| {
        format!("hostProcess ({} must not set securityContext.windowsOptions.hostProcess=true)", setters.join(" and "))
    })
}

/// The checks `pod` (its metadata and spec) fails at `level`, in Kubernetes' order and
/// words.
pub fn check(level: Level, pod: &Value) -> Vec<String> {
    if level == Level::Privileged {
        return Vec::new();
    }
    let spec = &pod["spec"];
    let restricted = level == Level::Restricted;
    let cs = containers(spec);
    let psc = &spec["securityContext"];
    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    let mut out = Vec::new();

    // --- baseline, by check id ---
    // appArmorProfile
    out.extend(apparmor(&pod["metadata"], psc, &cs));
    // capabilities_baseline (replaced by capabilities_restricted)
    if !restricted {
        let bad: Vec<(&str, Vec<&str>)> = cs
            .iter()
            .map(|(n, c)| (*n, added_caps(c).into_iter().filter(|cap| !DEFAULT_CAPS.contains(cap)).collect::<Vec<_>>()))
            .filter(|(_, caps)| !caps.is_empty())
            .collect();
        if !bad.is_empty() {
            let parts: Vec<String> = bad
                .iter()
                .map(|(n, caps)| {
                    format!(
                        "{} must not include {} in securityContext.capabilities.add",
                        named("container", &[n]),
                        quoted(caps)
                    )
                })
                .collect();
            out.push(format!("non-default capabilities ({})", parts.join("; ")));
        }
    }
    // hostNamespaces
    let host: Vec<&str> = ["hostNetwork", "hostPID", "hostIPC"].into_iter().filter(|k| spec[*k] == true).collect();
    if !host.is_empty() {
        let parts: Vec<String> = host.iter().map(|k| format!("{k}=true")).collect();
        out.push(format!("host namespaces ({})", parts.join(", ")));
    }
    // hostPathVolumes (replaced by restrictedVolumes)
    if !restricted {
        let names: Vec<&str> =
            volumes.iter().filter(|v| v.get("hostPath").is_some()).filter_map(|v| v["name"].as_str()).collect();
        if !names.is_empty() {
            out.push(format!("hostPath volumes ({})", named("volume", &names)));
        }
    }
    // hostPorts
    let mut port_owners = Vec::new();
    let mut ports = Vec::new();
    for (n, c) in &cs {
        let mine: Vec<i64> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["hostPort"].as_i64())
            .filter(|p| *p != 0)
            .collect();
        if !mine.is_empty() {
            port_owners.push(*n);
            ports.extend(mine);
        }
    }
    if !ports.is_empty() {
        let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
        let (verb, noun) = if port_owners.len() == 1 { ("uses", "hostPort") } else { ("use", "hostPorts") };
        let noun = if ports.len() > 1 { "hostPorts" } else { noun };
        out.push(format!("hostPort ({} {verb} {noun} {})", named("container", &port_owners), list.join(", ")));
    }
    // privileged
    let privileged: Vec<&str> =
        cs.iter().filter(|(_, c)| c["securityContext"]["privileged"] == true).map(|(n, _)| *n).collect();
    if !privileged.is_empty() {
        out.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            named("container", &privileged)
        ));
    }
    // procMount
    let unmasked: Vec<(&str, &str)> = cs
        .iter()
        .filter_map(|(n, c)| c["securityContext"]["procMount"].as_str().filter(|p| *p != "Default").map(|p| (*n, p)))
        .collect();
    if !unmasked.is_empty() {
        let names: Vec<&str> = unmasked.iter().map(|(n, _)| *n).collect();
        let mut kinds: Vec<&str> = unmasked.iter().map(|(_, p)| *p).collect();
        kinds.sort();
        kinds.dedup();
        out.push(format!(
            "procMount ({} must not set securityContext.procMount to {})",
            named("container", &names),
            quoted(&kinds)
        ));
    }
    // seLinuxOptions
    out.extend(selinux(psc, &cs));
    // seccompProfile_baseline (replaced by seccompProfile_restricted)
    if !restricted {
        let mut parts = Vec::new();
        if psc["seccompProfile"]["type"] == "Unconfined" {
            parts.push("pod".to_string());
        }
        let bad: Vec<&str> = cs
            .iter()
            .filter(|(_, c)| c["securityContext"]["seccompProfile"]["type"] == "Unconfined")
            .map(|(n, _)| *n)
            .collect();
        if !bad.is_empty() {
            parts.push(named("container", &bad));
        }
        if !parts.is_empty() {
            out.push(format!(
                "seccompProfile ({} must not set securityContext.seccompProfile.type to \"Unconfined\")",
                parts.join(" and ")
            ));
        }
    }
    // sysctls
    let forbidden: Vec<&str> = psc["sysctls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .collect();
    if !forbidden.is_empty() {
        out.push(format!("forbidden sysctls ({})", forbidden.join(", ")));
    }
    // windowsHostProcess
    out.extend(host_process(psc, &cs));
    if !restricted {
        return out;
    }

    // --- restricted, by check id ---
    // allowPrivilegeEscalation
    let escalating: Vec<&str> =
        cs.iter().filter(|(_, c)| c["securityContext"]["allowPrivilegeEscalation"] != false).map(|(n, _)| *n).collect();
    if !escalating.is_empty() {
        out.push(format!(
            "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
            named("container", &escalating)
        ));
    }
    // capabilities_restricted
    {
        let no_drop: Vec<&str> = cs
            .iter()
            .filter(|(_, c)| {
                !c["securityContext"]["capabilities"]["drop"].as_array().into_iter().flatten().any(|d| d == "ALL")
            })
            .map(|(n, _)| *n)
            .collect();
        let mut parts = Vec::new();
        if !no_drop.is_empty() {
            parts
                .push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", named("container", &no_drop)));
        }
        for (n, c) in &cs {
            let extra: Vec<&str> = added_caps(c).into_iter().filter(|cap| *cap != "NET_BIND_SERVICE").collect();
            if !extra.is_empty() {
                parts.push(format!(
                    "{} must not include {} in securityContext.capabilities.add",
                    named("container", &[n]),
                    quoted(&extra)
                ));
            }
        }
        if !parts.is_empty() {
            out.push(format!("unrestricted capabilities ({})", parts.join("; ")));
        }
    }
    // restrictedVolumes
    {
        let bad: Vec<(&str, &str)> = volumes
            .iter()
            .filter_map(|v| {
                let kind = v.as_object()?.keys().find(|k| *k != "name")?;
                (!RESTRICTED_VOLUMES.contains(&kind.as_str()))
                    .then(|| (v["name"].as_str().unwrap_or_default(), kind.as_str()))
            })
            .collect();
        if !bad.is_empty() {
            let names: Vec<&str> = bad.iter().map(|(n, _)| *n).collect();
            let mut kinds: Vec<&str> = bad.iter().map(|(_, k)| *k).collect();
            kinds.dedup();
            let (verb, noun) = if names.len() == 1 { ("uses", "type") } else { ("use", "type") };
            let noun = if kinds.len() > 1 { "types" } else { noun };
            out.push(format!(
                "restricted volume types ({} {verb} restricted volume {noun} {})",
                named("volume", &names),
                quoted(&kinds)
            ));
        }
    }
    // runAsNonRoot
    {
        let pod_true = psc["runAsNonRoot"] == true;
        let explicit_false: Vec<&str> =
            cs.iter().filter(|(_, c)| c["securityContext"]["runAsNonRoot"] == false).map(|(n, _)| *n).collect();
        let unset: Vec<&str> = cs
            .iter()
            .filter(|(_, c)| c["securityContext"]["runAsNonRoot"].is_null() && !pod_true)
            .map(|(n, _)| *n)
            .collect();
        let mut parts = Vec::new();
        if psc["runAsNonRoot"] == false {
            parts.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        if !explicit_false.is_empty() {
            parts.push(format!(
                "{} must not set securityContext.runAsNonRoot=false",
                named("container", &explicit_false)
            ));
        }
        if !unset.is_empty() && psc["runAsNonRoot"] != false {
            parts.push(format!("pod or {} must set securityContext.runAsNonRoot=true", named("container", &unset)));
        }
        if !parts.is_empty() {
            out.push(format!("runAsNonRoot != true ({})", parts.join("; ")));
        }
    }
    // runAsUser
    {
        let mut parts = Vec::new();
        if psc["runAsUser"] == 0 {
            parts.push("pod".to_string());
        }
        let root: Vec<&str> =
            cs.iter().filter(|(_, c)| c["securityContext"]["runAsUser"] == 0).map(|(n, _)| *n).collect();
        if !root.is_empty() {
            parts.push(named("container", &root));
        }
        if !parts.is_empty() {
            out.push(format!("runAsUser=0 ({} must not set runAsUser=0)", parts.join(" and ")));
        }
    }
    // seccompProfile_restricted
    {
        let ok = |t: &Value| t == "RuntimeDefault" || t == "Localhost";
        let pod_ok = ok(&psc["seccompProfile"]["type"]);
        let mut parts = Vec::new();
        if psc["seccompProfile"]["type"] == "Unconfined" {
            parts.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string());
        }
        let unconfined: Vec<&str> = cs
            .iter()
            .filter(|(_, c)| c["securityContext"]["seccompProfile"]["type"] == "Unconfined")
            .map(|(n, _)| *n)
            .collect();
        if !unconfined.is_empty() {
            parts.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                named("container", &unconfined)
            ));
        }
        let unset: Vec<&str> = cs
            .iter()
            .filter(|(_, c)| c["securityContext"]["seccompProfile"]["type"].is_null() && !pod_ok)
            .map(|(n, _)| *n)
            .collect();
        if !unset.is_empty() && psc["seccompProfile"]["type"] != "Unconfined" {
            parts.push(format!(
                "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                named("container", &unset)
            ));
        }
        if !parts.is_empty() {
            out.push(format!("seccompProfile ({})", parts.join("; ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_privileged_pod_in_restricted_and_baseline_namespaces() {
        let spec = json!({"containers": [{"name": "app", "image": "nginx", "securityContext": {"privileged": true}}]});
        assert_eq!(
            describe(Level::Restricted, "latest", &check(Level::Restricted, &json!({"spec": spec}))),
            "PodSecurity \"restricted:latest\": privileged (container \"app\" must not set securityContext.privileged=true), allowPrivilegeEscalation != false (container \"app\" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"app\" must set securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"app\" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container \"app\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        assert_eq!(
            check(Level::Baseline, &json!({"spec": spec})),
            vec!["privileged (container \"app\" must not set securityContext.privileged=true)"]
        );
        assert!(check(Level::Privileged, &json!({"spec": spec})).is_empty());
    }

    #[test]
    fn restricted_pods_pass_and_volumes_ports_caps_are_named() {
        let good = json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "t", "projected": {}}, {"name": "d", "emptyDir": {}}],
            "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
        });
        assert_eq!(check(Level::Restricted, &json!({"spec": good})), Vec::<String>::new());
        let host = json!({
            "hostNetwork": true,
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}, {"name": "g", "hostPath": {"path": "/etc"}}],
            "containers": [{"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}], "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}],
        });
        assert_eq!(
            check(Level::Baseline, &json!({"spec": host})),
            vec![
                "non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)",
                "host namespaces (hostNetwork=true)",
                "hostPath volumes (volumes \"h\", \"g\")",
                "hostPort (container \"a\" uses hostPort 8080)",
            ]
        );
        let r = check(Level::Restricted, &json!({"spec": host}));
        assert!(
            r.contains(
                &"restricted volume types (volumes \"h\", \"g\" use restricted volume type \"hostPath\")".to_string()
            ),
            "{r:?}"
        );
        assert!(r.iter().any(|v| v.contains("must not include \"NET_ADMIN\"")), "{r:?}");
        assert!(!r.iter().any(|v| v.starts_with("hostPath volumes")), "replaced by the restricted check: {r:?}");
    }

    #[test]
    fn unmasked_proc_and_unsafe_sysctls_are_refused_at_baseline() {
        let pod = json!({
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}, {"name": "net.core.somaxconn", "value": "1"}]},
            "containers": [
                {"name": "a", "securityContext": {"procMount": "Unmasked"}},
                {"name": "b", "securityContext": {"procMount": "Default", "privileged": true}},
            ],
        });
        assert_eq!(
            check(Level::Baseline, &json!({"spec": pod})),
            vec![
                "privileged (container \"b\" must not set securityContext.privileged=true)",
                "procMount (container \"a\" must not set securityContext.procMount to \"Unmasked\")",
                "forbidden sysctls (kernel.msgmax, net.core.somaxconn)",
            ]
        );
        let r = check(Level::Restricted, &json!({"spec": pod}));
        assert!(r.contains(&"forbidden sysctls (kernel.msgmax, net.core.somaxconn)".to_string()), "{r:?}");
        let safe = json!({"securityContext": {"sysctls": [{"name": "net.ipv4.ip_local_port_range", "value": "1024 65535"}]}, "containers": [{"name": "a"}]});
        assert_eq!(check(Level::Baseline, &json!({"spec": safe})), Vec::<String>::new());
    }
    #[test]
    fn apparmor_selinux_and_host_process_are_refused_at_baseline() {
        let pod = json!({
            "metadata": {"annotations": {
                "container.apparmor.security.beta.kubernetes.io/a": "unconfined",
                "container.apparmor.security.beta.kubernetes.io/b": "localhost/mine",
            }},
            "spec": {
                "securityContext": {"appArmorProfile": {"type": "Unconfined"}, "seLinuxOptions": {"user": "root"}},
                "initContainers": [{"name": "i", "securityContext": {"seLinuxOptions": {"type": "spc_t", "role": "r"}}}],
                "containers": [
                    {"name": "a", "securityContext": {"appArmorProfile": {"type": "RuntimeDefault"}, "windowsOptions": {"hostProcess": true}}},
                    {"name": "b", "securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}, "seLinuxOptions": {"type": "container_t"}}},
                ],
            },
        });
        let want = vec![
            "forbidden AppArmor profiles (pod and annotation must not set AppArmor profile type to \"Unconfined\", \"container.apparmor.security.beta.kubernetes.io/a=\"unconfined\"\")",
            "seLinuxOptions (pod and container \"i\" set forbidden securityContext.seLinuxOptions: type \"spc_t\"; user may not be set; role may not be set)",
            "hostProcess (container \"a\" must not set securityContext.windowsOptions.hostProcess=true)",
        ];
        assert_eq!(check(Level::Baseline, &pod), want);
        let r = check(Level::Restricted, &pod);
        assert!(want.iter().all(|w| r.contains(&w.to_string())), "restricted includes baseline: {r:?}");
        // Allowed values pass.
        let fine = json!({
            "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/a": "runtime/default"}},
            "spec": {"containers": [{"name": "a", "securityContext": {
                "appArmorProfile": {"type": "Localhost", "localhostProfile": "p"},
                "seLinuxOptions": {"type": "container_init_t", "level": "s0:c1"},
                "windowsOptions": {"hostProcess": false},
            }}]},
        });
        assert_eq!(check(Level::Baseline, &fine), Vec::<String>::new());
        // Only containers: the plural forms.
        let two = json!({"spec": {"containers": [
            {"name": "x", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}},
            {"name": "y", "securityContext": {"appArmorProfile": {"type": "Unconfined"}}},
        ]}});
        assert_eq!(
            check(Level::Baseline, &two),
            vec!["forbidden AppArmor profile (containers \"x\", \"y\" must not set AppArmor profile type to \"Unconfined\")"]
        );
    }
}
