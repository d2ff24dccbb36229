//! Server-side defaulting, the fields Kubernetes fills in on create and update that
//! clients rely on (`kubectl rollout status` needs the update strategy, for one), and
//! kind-specific normalisation (a Secret's `stringData`).

use base64::Engine;
use serde_json::{json, Value};

use crate::registry::Resource;

/// Sets `obj[key]` when it is absent, null, or an empty object (Go's protobuf encoder
/// writes unset non-pointer structs as empty messages).
fn set_default(obj: &mut Value, key: &str, v: Value) {
    let unset = |x: &Value| x.is_null() || x.as_object().is_some_and(|m| m.is_empty());
    if obj.is_object() && obj.get(key).is_none_or(unset) {
        obj[key] = v;
    }
}

/// `obj[key]`, made an object if it is missing (never inserts a null).
fn object_at<'a>(obj: &'a mut Value, key: &str) -> &'a mut Value {
    if !obj[key].is_object() {
        obj[key] = json!({});
    }
    &mut obj[key]
}

fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                let image = c["image"].as_str().unwrap_or_default().to_string();
                let tag_latest = match image.rsplit_once(':') {
                    Some((_, tag)) => tag == "latest" || tag.contains('/'),
                    None => true,
                } && !image.contains('@');
                set_default(c, "imagePullPolicy", json!(if tag_latest { "Always" } else { "IfNotPresent" }));
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                set_default(c, "resources", json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

fn template(obj: &mut Value) {
    if obj["spec"]["template"].is_object() {
        pod_spec(object_at(&mut obj["spec"]["template"], "spec"));
        set_default(&mut obj["spec"]["template"], "metadata", json!({}));
    }
}

/// Applies the defaults of `r` to `obj` (a full object, before it is stored).
pub fn apply(r: &Resource, obj: &mut Value) {
    match (r.group, r.plural) {
        ("", "pods") => {
            pod_spec(object_at(obj, "spec"));
            set_default(obj, "status", json!({"phase": "Pending", "qosClass": "BestEffort"}));
        }
        ("", "namespaces") => {
            set_default(obj, "spec", json!({"finalizers": ["kubernetes"]}));
            set_default(obj, "status", json!({"phase": "Active"}));
            let name = obj["metadata"]["name"].clone();
            if !obj["metadata"]["labels"].is_object() {
                obj["metadata"]["labels"] = json!({});
            }
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
        }
        ("", "services") => {
            let spec = &mut obj["spec"];
            if !spec.is_object() {
                *spec = json!({});
            }
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
            set_default(spec, "ipFamilies", json!(["IPv4"]));
            set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    set_default(p, "protocol", json!("TCP"));
                    let port = p["port"].clone();
                    set_default(p, "targetPort", port);
                }
            }
            set_default(obj, "status", json!({"loadBalancer": {}}));
        }
        ("", "secrets") => {
            set_default(obj, "type", json!("Opaque"));
            // stringData is write-only: merged into data (base64) and not stored.
            if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData")) {
                if let Some(sd) = sd.as_object() {
                    if !obj["data"].is_object() {
                        obj["data"] = json!({});
                    }
                    for (k, v) in sd {
                        let s = v.as_str().unwrap_or_default();
                        obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
                    }
                }
            }
        }
        ("", "serviceaccounts") | ("", "configmaps") | ("", "endpoints") => {}
        ("", "persistentvolumeclaims") => {
            set_default(object_at(obj, "spec"), "volumeMode", json!("Filesystem"));
            set_default(obj, "status", json!({"phase": "Pending"}));
        }
        ("apps", "deployments") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            );
            template(obj);
        }
        ("apps", "replicasets") => {
            set_default(object_at(obj, "spec"), "replicas", json!(1));
            template(obj);
        }
        ("apps", "statefulsets") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "updateStrategy", json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            template(obj);
        }
        ("apps", "daemonsets") => {
            set_default(object_at(obj, "spec"), "revisionHistoryLimit", json!(10));
            set_default(
                object_at(obj, "spec"),
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            template(obj);
        }
        ("batch", "jobs") => {
            let spec = object_at(obj, "spec");
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completions", json!(1));
            set_default(spec, "parallelism", json!(1));
            set_default(spec, "completionMode", json!("NonIndexed"));
            if obj["spec"]["template"]["spec"].is_object() {
                set_default(&mut obj["spec"]["template"]["spec"], "restartPolicy", json!("Never"));
            }
            template(obj);
            // Without manualSelector, a Job selects its pods by its own uid, and its pod
            // template carries the labels that match (as kube-apiserver generates them).
            let uid = obj["metadata"]["uid"].clone();
            let name = obj["metadata"]["name"].clone();
            if obj["spec"]["manualSelector"] != json!(true) && obj["spec"]["selector"].is_null() && uid.is_string() {
                obj["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
                if obj["spec"]["template"].is_object() {
                    let meta = &mut obj["spec"]["template"]["metadata"];
                    if !meta["labels"].is_object() {
                        meta["labels"] = json!({});
                    }
                    for (k, v) in [
                        ("batch.kubernetes.io/controller-uid", &uid),
                        ("batch.kubernetes.io/job-name", &name),
                        ("controller-uid", &uid),
                        ("job-name", &name),
                    ] {
                        meta["labels"][k] = v.clone();
                    }
                }
            }
        }
        _ => {}
    }
}
