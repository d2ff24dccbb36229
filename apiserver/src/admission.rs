//! Admission steps applied to new objects after defaulting.

use serde_json::{json, Value};

/// How long pods tolerate their node being not-ready or unreachable before the node
/// lifecycle controller evicts them (kube-apiserver's DefaultTolerationSeconds plugin:
/// `--default-not-ready-toleration-seconds`, `--default-unreachable-toleration-seconds`).
#[derive(Clone, Copy, Debug)]
pub struct Tolerations {
    pub not_ready: i64,
    pub unreachable: i64,
}

impl Default for Tolerations {
    fn default() -> Tolerations {
        Tolerations { not_ready: 300, unreachable: 300 }
    }
}

/// Adds the NoExecute tolerations for not-ready and unreachable nodes unless the pod
/// already tolerates those taints.
pub fn default_tolerations(pod: &mut Value, t: Tolerations) {
    if !pod["spec"].is_object() {
        return;
    }
    let mut tols: Vec<Value> = pod["spec"]["tolerations"].as_array().cloned().unwrap_or_default();
    for (key, secs) in
        [("node.kubernetes.io/not-ready", t.not_ready), ("node.kubernetes.io/unreachable", t.unreachable)]
    {
        let covered = tols.iter().any(|x| {
            let effect_ok = x["effect"].as_str().is_none_or(|e| e.is_empty() || e == "NoExecute");
            let key_ok = x["key"].as_str() == Some(key)
                || (x["operator"] == "Exists" && x["key"].as_str().is_none_or(|k| k.is_empty()));
            effect_ok && key_ok
        });
        if !covered {
            tols.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": secs}));
        }
    }
    pod["spec"]["tolerations"] = json!(tols);
}

/// Where a pod's ServiceAccount token, CA and namespace are mounted.
pub const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// ServiceAccount admission: a pod runs as `default` unless it names a ServiceAccount,
/// and unless the pod or its ServiceAccount opts out (`automountServiceAccountToken:
/// false`) it gets a projected volume `kube-api-access-<suffix>` with a token bound to
/// it, the cluster CA and its namespace, mounted read-only in every container at
/// [`SA_MOUNT`]. Unlike Kubernetes, a pod whose ServiceAccount does not exist (yet) is
/// admitted: the namespace controller creates `default` moments after the namespace, and
/// the node agent waits for it before the pod starts.
pub fn service_account(pod: &mut Value, account: Option<&Value>, suffix: &str) {
    if !pod["spec"].is_object() {
        return;
    }
    let spec = &mut pod["spec"];
    let name = spec["serviceAccountName"]
        .as_str()
        .or(spec["serviceAccount"].as_str())
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
        .to_string();
    spec["serviceAccountName"] = json!(name);
    spec["serviceAccount"] = json!(name);
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or(account.and_then(|a| a["automountServiceAccountToken"].as_bool()))
        .unwrap_or(true);
    let kinds = ["containers", "initContainers"];
    let mounted = kinds.iter().any(|k| {
        spec[*k].as_array().into_iter().flatten().any(|c| {
            c["volumeMounts"].as_array().into_iter().flatten().any(|m| m["mountPath"].as_str() == Some(SA_MOUNT))
        })
    });
    if !automount || mounted {
        return;
    }
    let volume = format!("kube-api-access-{suffix}");
    let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    volumes.push(json!({
        "name": volume,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    }));
    spec["volumes"] = json!(volumes);
    for k in kinds {
        for c in spec[k].as_array_mut().into_iter().flatten().filter(|c| c.is_object()) {
            let mut mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
            mounts.push(json!({"name": volume, "mountPath": SA_MOUNT, "readOnly": true}));
            c["volumeMounts"] = json!(mounts);
        }
    }
}

/// LimitRange defaulting, as Kubernetes defaults LimitRange objects: a resource with a
/// `max` but no `default` gets the max as default; one with a `default` but no
/// `defaultRequest` gets the default as request, else its `min`.
pub fn default_limit_range(lr: &mut Value) {
    let Some(items) = lr.get_mut("spec").and_then(|s| s.get_mut("limits")).and_then(Value::as_array_mut) else {
        return;
    };
    for item in items.iter_mut().filter(|i| i.is_object()) {
        if item["type"] != "Container" {
            continue;
        }
        let copy = |item: &mut Value, from: &str, to: &str| {
            if let Some(src) = item[from].as_object().cloned() {
                for (k, v) in src {
                    if item[to].get(&k).is_none() {
                        if !item[to].is_object() {
                            item[to] = json!({});
                        }
                        item[to][k] = v;
                    }
                }
            }
        };
        copy(item, "max", "default");
        copy(item, "default", "defaultRequest");
        copy(item, "min", "defaultRequest");
    }
}

/// LimitRanger: fills each container's missing requests and limits from the namespace's
/// LimitRanges (`defaultRequest`, `default`) and checks them against `min`, `max` and
/// `maxLimitRequestRatio`; the refusals in Kubernetes' words.
pub fn limit_ranger(pod: &mut Value, ranges: &[Value]) -> Result<(), Vec<String>> {
    // Compared in whole thousandths (millicores, millibytes): no floating-point surprises.
    let q = |v: &Value| {
        v.as_str().and_then(crate::dashboard::quantity).or(v.as_f64()).map(|f| (f * 1000.0).round() as i128)
    };
    let mut problems = Vec::new();
    // As the kubelet and Kubernetes' defaulting do first: a container that sets a limit
    // but no request requests its limit.
    for kind in ["initContainers", "containers"] {
        let Some(list) = pod.get_mut("spec").and_then(|s| s.get_mut(kind)).and_then(Value::as_array_mut) else {
            continue;
        };
        for c in list.iter_mut().filter(|c| c["resources"]["limits"].is_object()) {
            let limits = c["resources"]["limits"].as_object().cloned().unwrap_or_default();
            if !c["resources"]["requests"].is_object() {
                c["resources"]["requests"] = json!({});
            }
            for (res, v) in limits {
                if c["resources"]["requests"].get(&res).is_none() {
                    c["resources"]["requests"][res] = v;
                }
            }
        }
    }
    for lr in ranges {
        for item in lr["spec"]["limits"].as_array().into_iter().flatten() {
            if item["type"] != "Container" {
                continue;
            }
            for kind in ["initContainers", "containers"] {
                let Some(list) = pod.get_mut("spec").and_then(|s| s.get_mut(kind)).and_then(Value::as_array_mut) else {
                    continue;
                };
                for c in list.iter_mut().filter(|c| c.is_object()) {
                    for (field, defaults) in [("limits", &item["default"]), ("requests", &item["defaultRequest"])] {
                        for (res, v) in defaults.as_object().into_iter().flatten() {
                            if c["resources"][field].get(res).is_none() {
                                if !c["resources"].is_object() {
                                    c["resources"] = json!({});
                                }
                                if !c["resources"][field].is_object() {
                                    c["resources"][field] = json!({});
                                }
                                c["resources"][field][res] = v.clone();
                            }
                        }
                    }
                    let req = |r: &str| q(&c["resources"]["requests"][r]);
                    let lim = |r: &str| q(&c["resources"]["limits"][r]);
                    let shown =
                        |field: &str, r: &str| c["resources"][field][r].as_str().map(String::from).unwrap_or_default();
                    // One reason per bound and resource, in Kubernetes' order.
                    for (res, min) in item["min"].as_object().into_iter().flatten() {
                        let m = min.as_str().map(String::from).unwrap_or_else(|| min.to_string());
                        let mn = q(min);
                        let why = match (req(res), lim(res)) {
                            (None, _) => {
                                Some(format!("minimum {res} usage per Container is {m}.  No request is specified"))
                            }
                            (Some(r), _) if mn.is_some_and(|mn| r < mn) => Some(format!(
                                "minimum {res} usage per Container is {m}, but request is {}",
                                shown("requests", res)
                            )),
                            (_, Some(l)) if mn.is_some_and(|mn| l < mn) => Some(format!(
                                "minimum {res} usage per Container is {m}, but limit is {}",
                                shown("limits", res)
                            )),
                            _ => None,
                        };
                        problems.extend(why);
                    }
                    for (res, max) in item["max"].as_object().into_iter().flatten() {
                        let m = max.as_str().map(String::from).unwrap_or_else(|| max.to_string());
                        let mx = q(max);
                        let why = match (lim(res), req(res)) {
                            (None, _) => {
                                Some(format!("maximum {res} usage per Container is {m}.  No limit is specified"))
                            }
                            (Some(l), _) if mx.is_some_and(|mx| l > mx) => Some(format!(
                                "maximum {res} usage per Container is {m}, but limit is {}",
                                shown("limits", res)
                            )),
                            (_, Some(r)) if mx.is_some_and(|mx| r > mx) => Some(format!(
                                "maximum {res} usage per Container is {m}, but request is {}",
                                shown("requests", res)
                            )),
                            _ => None,
                        };
                        problems.extend(why);
                    }
                    for (res, ratio) in item["maxLimitRequestRatio"].as_object().into_iter().flatten() {
                        let shown_ratio = ratio.as_str().map(String::from).unwrap_or_else(|| ratio.to_string());
                        match (lim(res), req(res), q(ratio)) {
                            (None, _, _) => problems.push(format!(
                                "{res} max limit to request ratio per Container is {shown_ratio}, but no limit is specified"
                            )),
                            (_, None | Some(0), _) => problems.push(format!(
                                "{res} max limit to request ratio per Container is {shown_ratio}, but no request is specified or request is 0"
                            )),
                            (Some(l), Some(r), Some(max)) if l * 1000 > max * r => problems.push(format!(
                                "{res} max limit to request ratio per Container is {shown_ratio}, but provided ratio is {:.6}",
                                l as f64 / r as f64
                            )),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The annotation that makes a StorageClass the default one.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";

/// DefaultStorageClass: a claim that names no class (the field absent, not "") gets the
/// default StorageClass, the newest if several are marked.
pub fn default_storage_class(claim: &mut Value, classes: &[Value]) {
    if claim["spec"].get("storageClassName").is_some() {
        return;
    }
    let default = classes
        .iter()
        .filter(|c| c["metadata"]["annotations"][DEFAULT_CLASS] == "true")
        .max_by_key(|c| c["metadata"]["creationTimestamp"].as_str().unwrap_or("").to_string());
    if let (Some(c), Some(spec)) = (default, claim.get_mut("spec").and_then(Value::as_object_mut)) {
        spec.insert("storageClassName".into(), c["metadata"]["name"].clone());
    }
}

/// StorageObjectInUseProtection: a claim keeps the `kubernetes.io/pvc-protection`
/// finalizer, which the volume binder removes once no pod uses the claim.
pub fn pvc_protection(claim: &mut Value) {
    const FINALIZER: &str = "kubernetes.io/pvc-protection";
    let Some(meta) = claim.get_mut("metadata").and_then(Value::as_object_mut) else { return };
    let fins = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = fins.as_array_mut() {
        if !list.iter().any(|f| f == FINALIZER) {
            list.push(json!(FINALIZER));
        }
    }
}

/// The StorageClass a new cluster starts with: directories on the node the first pod
/// using a claim is scheduled to, made by that node's agent.
pub fn standard_storage_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "standard", "annotations": {DEFAULT_CLASS: "true"}},
        "provisioner": "skiff.io/local-path",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_volume_unless_opted_out_or_mounted() {
        let pod = |spec: Value| json!({"spec": spec});
        let mut p = pod(json!({"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]}));
        service_account(&mut p, None, "abcde");
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["volumes"][0]["name"], "kube-api-access-abcde");
        for k in ["containers", "initContainers"] {
            assert_eq!(p["spec"][k][0]["volumeMounts"][0]["mountPath"], SA_MOUNT);
        }
        // Admitting again (an update) adds nothing: the mount is there.
        let before = p.clone();
        service_account(&mut p, None, "fghij");
        assert_eq!(p, before);
        // The ServiceAccount opts out; the pod's own setting wins over it.
        let sa = json!({"automountServiceAccountToken": false});
        let mut p = pod(json!({"serviceAccountName": "app", "containers": [{"name": "a"}]}));
        service_account(&mut p, Some(&sa), "abcde");
        assert!(p["spec"].get("volumes").is_none());
        let mut p = pod(
            json!({"serviceAccountName": "app", "automountServiceAccountToken": true, "containers": [{"name": "a"}]}),
        );
        service_account(&mut p, Some(&sa), "abcde");
        assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
        // The deprecated field names the account too.
        let mut p = pod(json!({"serviceAccount": "legacy", "containers": []}));
        service_account(&mut p, None, "abcde");
        assert_eq!(p["spec"]["serviceAccountName"], "legacy");
    }

    #[test]
    fn adds_what_is_missing_only() {
        let mut p = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]}});
        default_tolerations(&mut p, Tolerations { not_ready: 30, unreachable: 40 });
        let t = p["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 5);
        assert_eq!(t[1]["key"], "node.kubernetes.io/not-ready");
        assert_eq!(t[1]["tolerationSeconds"], 30);
        let mut all = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        default_tolerations(&mut all, Tolerations::default());
        assert_eq!(all["spec"]["tolerations"].as_array().unwrap().len(), 1);
    }
}
