//! ResourceQuota: what a namespace's objects use (`status.used`), and the admission
//! check that charges a new object to every quota it falls under before it is stored.
//!
//! The charge and the object are written in one store transaction that compares each
//! quota's revision, so two creates racing for the last unit cannot both win, and a
//! refused or failed create charges nothing. The recalculation (`Quotas::run`) lists the
//! quotas and the objects they count at one store revision and writes `status.used`
//! only if no charge came in meanwhile; it runs when this server wrote to a namespace
//! (deletions give room back at once) and every `period` for all namespaces (writes
//! through other API servers, pods that finished).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use crate::registry::{self, Resource};
use crate::status::ApiResult;
use crate::storage::{self, Store};

/// Amounts in thousandths (millicores, millibytes, thousandths of an object), so sums
/// and comparisons are exact.
pub type Usage = BTreeMap<String, i128>;

/// A quantity in thousandths, or None if it is not one.
pub fn milli(v: &Value) -> Option<i128> {
    v.as_str().and_then(crate::dashboard::quantity).or(v.as_f64()).map(|f| (f * 1000.0).round() as i128)
}

/// Kubernetes' canonical form of an amount in thousandths: `500m`, `2`, `128Mi`, `1G`.
pub fn format(resource: &str, m: i128) -> String {
    if m % 1000 != 0 {
        return format!("{m}m");
    }
    let n = m / 1000;
    if n == 0 {
        return "0".into();
    }
    let bytes = ["memory", "storage", "ephemeral-storage"].iter().any(|b| resource.ends_with(b));
    if bytes {
        for (suffix, size) in
            [("Ei", 1i128 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)]
        {
            if n % size == 0 {
                return format!("{}{suffix}", n / size);
            }
        }
    }
    for (suffix, size) in [
        ("E", 10i128.pow(18)),
        ("P", 10i128.pow(15)),
        ("T", 10i128.pow(12)),
        ("G", 10i128.pow(9)),
        ("M", 10i128.pow(6)),
        ("k", 1000),
    ] {
        if n % size == 0 {
            return format!("{}{suffix}", n / size);
        }
    }
    n.to_string()
}

/// The quota name an object of `r` is counted under with `count/`.
fn count_name(r: &Resource) -> String {
    match r.group {
        "" => format!("count/{}", r.plural),
        g => format!("count/{}.{g}", r.plural),
    }
}

/// Whether a pod still uses its quota: not finished, and not past its deletion time.
fn pod_counts(pod: &Value) -> bool {
    let phase = pod["status"]["phase"].as_str().unwrap_or("");
    let gone = pod["metadata"]["deletionTimestamp"]
        .as_str()
        .and_then(crate::object::parse_rfc3339)
        .is_some_and(|t| t <= crate::satoken::now());
    !matches!(phase, "Succeeded" | "Failed") && !gone
}

/// A pod's requests or limits (`field`): per resource the larger of the sum over its
/// containers and the largest init container, plus the pod's overhead, as the
/// scheduler counts them.
fn pod_resources(pod: &Value, field: &str) -> BTreeMap<String, i128> {
    let mut sum: BTreeMap<String, i128> = BTreeMap::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (r, v) in c["resources"][field].as_object().into_iter().flatten() {
            let e = sum.entry(r.clone()).or_default();
            *e = e.saturating_add(milli(v).unwrap_or(0).max(0));
        }
    }
    for c in pod["spec"]["initContainers"].as_array().into_iter().flatten() {
        for (r, v) in c["resources"][field].as_object().into_iter().flatten() {
            let e = sum.entry(r.clone()).or_default();
            *e = (*e).max(milli(v).unwrap_or(0).max(0));
        }
    }
    for (r, v) in pod["spec"]["overhead"].as_object().into_iter().flatten() {
        let e = sum.entry(r.clone()).or_default();
        *e = e.saturating_add(milli(v).unwrap_or(0).max(0));
    }
    sum
}

/// What one object of `r` uses, under every name a quota may limit it by.
pub fn usage(r: &Resource, obj: &Value) -> Usage {
    let mut u = Usage::new();
    if r.plural == "pods" && r.group.is_empty() && !pod_counts(obj) {
        return u;
    }
    u.insert(count_name(r), 1000);
    match (r.group, r.plural) {
        ("", "pods") => {
            u.insert("pods".into(), 1000);
            for (r, v) in pod_resources(obj, "requests") {
                if r == "cpu" || r == "memory" || r == "ephemeral-storage" {
                    u.insert(r.clone(), v);
                }
                u.insert(format!("requests.{r}"), v);
            }
            for (r, v) in pod_resources(obj, "limits") {
                u.insert(format!("limits.{r}"), v);
            }
        }
        ("", "services") => {
            u.insert("services".into(), 1000);
            let t = obj["spec"]["type"].as_str().unwrap_or("ClusterIP");
            if t == "LoadBalancer" {
                u.insert("services.loadbalancers".into(), 1000);
            }
            if t == "NodePort" || t == "LoadBalancer" {
                let ports = obj["spec"]["ports"].as_array().map_or(0, Vec::len) as i128;
                u.insert("services.nodeports".into(), ports.saturating_mul(1000));
            }
        }
        ("", "persistentvolumeclaims") => {
            u.insert("persistentvolumeclaims".into(), 1000);
            let storage = milli(&obj["spec"]["resources"]["requests"]["storage"]).unwrap_or(0).max(0);
            u.insert("requests.storage".into(), storage);
            if let Some(class) = obj["spec"]["storageClassName"].as_str().filter(|c| !c.is_empty()) {
                u.insert(format!("{class}.storageclass.storage.k8s.io/requests.storage"), storage);
                u.insert(format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"), 1000);
            }
        }
        ("", p @ ("secrets" | "configmaps" | "replicationcontrollers" | "resourcequotas")) => {
            u.insert(p.into(), 1000);
        }
        _ => {}
    }
    u
}

/// The resources whose objects a quota limit named `name` counts.
fn counted_by(name: &str) -> Vec<&'static Resource> {
    let core = |p: &str| registry::find("", "v1", p).into_iter().collect::<Vec<_>>();
    if let Some(what) = name.strip_prefix("count/") {
        let (plural, group) = what.split_once('.').unwrap_or((what, ""));
        return registry::RESOURCES.iter().find(|r| r.plural == plural && r.group == group).into_iter().collect();
    }
    match name {
        "services" | "services.nodeports" | "services.loadbalancers" => core("services"),
        "persistentvolumeclaims" | "requests.storage" => core("persistentvolumeclaims"),
        n if n.contains(".storageclass.storage.k8s.io/") => core("persistentvolumeclaims"),
        "secrets" | "configmaps" | "replicationcontrollers" | "resourcequotas" => core(name),
        // pods, cpu, memory, requests.*, limits.*, and anything else a pod may request.
        _ => core("pods"),
    }
}

/// Whether a quota's scopes (`spec.scopes`, `spec.scopeSelector`) take in `obj`. Scoped
/// quotas count pods only.
fn in_scope(quota: &Value, r: &Resource, obj: &Value) -> bool {
    let mut scopes: Vec<(String, String, Vec<String>)> = quota["spec"]["scopes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
        .map(|s| (s.to_string(), "Exists".to_string(), Vec::new()))
        .collect();
    for e in quota["spec"]["scopeSelector"]["matchExpressions"].as_array().into_iter().flatten() {
        let values = e["values"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from));
        scopes.push((
            e["scopeName"].as_str().unwrap_or_default().to_string(),
            e["operator"].as_str().unwrap_or_default().to_string(),
            values.collect(),
        ));
    }
    if scopes.is_empty() {
        return true;
    }
    if !(r.group.is_empty() && r.plural == "pods") {
        return false;
    }
    let best_effort = ["requests", "limits"].iter().all(|f| {
        ["containers", "initContainers"].iter().all(|k| {
            obj["spec"][k]
                .as_array()
                .into_iter()
                .flatten()
                .all(|c| c["resources"][f].as_object().is_none_or(|m| m.is_empty()))
        })
    });
    let terminating = obj["spec"]["activeDeadlineSeconds"].as_i64().is_some_and(|s| s >= 0);
    scopes.iter().all(|(scope, op, values)| match scope.as_str() {
        "Terminating" => terminating,
        "NotTerminating" => !terminating,
        "BestEffort" => best_effort,
        "NotBestEffort" => !best_effort,
        "PriorityClass" => {
            let class = obj["spec"]["priorityClassName"].as_str().filter(|c| !c.is_empty());
            match op.as_str() {
                "In" => class.is_some_and(|c| values.iter().any(|v| v == c)),
                "NotIn" => class.is_none_or(|c| !values.iter().any(|v| v == c)),
                "Exists" => class.is_some(),
                "DoesNotExist" => class.is_none(),
                _ => false,
            }
        }
        _ => false,
    })
}

fn hard(quota: &Value) -> BTreeMap<String, Value> {
    quota["spec"]["hard"].as_object().map(|m| m.clone().into_iter().collect()).unwrap_or_default()
}

/// `key=value,...` in the order of the names, as Kubernetes prints resource lists.
fn listed(names: &[&String], amounts: impl Fn(&str) -> i128) -> String {
    names.iter().map(|n| format!("{n}={}", format(n, amounts(n)))).collect::<Vec<_>>().join(",")
}

/// The CPU and memory a quota limits that each container must then name (as in
/// Kubernetes, other resources, extended ones included, need not be named).
fn must_specify(quota_hard: &BTreeMap<String, Value>, pod: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    for name in quota_hard.keys() {
        let (field, res) = match name.as_str() {
            "cpu" | "requests.cpu" => ("requests", "cpu"),
            "memory" | "requests.memory" => ("requests", "memory"),
            "limits.cpu" => ("limits", "cpu"),
            "limits.memory" => ("limits", "memory"),
            _ => continue,
        };
        let missing: Vec<&str> = ["containers", "initContainers"]
            .iter()
            .flat_map(|k| pod["spec"][k].as_array().into_iter().flatten())
            .filter(|c| c["resources"][field].get(res).is_none())
            .map(|c| c["name"].as_str().unwrap_or_default())
            .collect();
        if !missing.is_empty() {
            problems.push(format!("{name} for: {}", missing.join(",")));
        }
    }
    problems
}

/// The quota with `obj` charged to it, None if the quota does not limit anything `obj`
/// uses, or the reason it is refused (Kubernetes' words, after `<plural> "<name>" is
/// forbidden: `).
pub fn charge(quota: &Value, r: &Resource, obj: &Value) -> Result<Option<Value>, String> {
    let name = quota["metadata"]["name"].as_str().unwrap_or_default();
    let hard = hard(quota);
    if !in_scope(quota, r, obj) {
        return Ok(None);
    }
    if r.group.is_empty() && r.plural == "pods" {
        let missing = must_specify(&hard, obj);
        if !missing.is_empty() {
            return Err(format!("failed quota: {name}: must specify {}", missing.join("; ")));
        }
    }
    let wanted = usage(r, obj);
    let limited: Vec<&String> = hard.keys().filter(|k| wanted.contains_key(*k)).collect();
    if limited.is_empty() {
        return Ok(None);
    }
    let used = &quota["status"]["used"];
    let unknown: Vec<&String> = limited.iter().copied().filter(|k| used.get(k.as_str()).is_none()).collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
        return Err(format!("status unknown for quota: {name}, resources: {}", names.join(",")));
    }
    let now = |k: &str| milli(&used[k]).unwrap_or(0);
    let limit = |k: &str| milli(&hard[k]).unwrap_or(0);
    // Saturating: a quantity too large to add up is past any limit, never below one.
    let over: Vec<&String> =
        limited.iter().copied().filter(|k| now(k).saturating_add(wanted[k.as_str()]) > limit(k)).collect();
    if !over.is_empty() {
        return Err(format!(
            "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
            listed(&over, |k| wanted[k]),
            listed(&over, now),
            listed(&over, limit)
        ));
    }
    let mut q = quota.clone();
    for k in limited {
        q["status"]["used"][k.as_str()] = json!(format(k, now(k).saturating_add(wanted[k.as_str()])));
    }
    Ok(Some(q))
}

/// Which namespaces to recount, and the loop that does it.
#[derive(Default)]
pub struct Quotas {
    dirty: Mutex<BTreeSet<String>>,
    wake: tokio::sync::Notify,
}

impl Quotas {
    /// Something in `namespace` was written: recount its quotas soon.
    pub fn touch(&self, namespace: &str) {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).insert(namespace.to_string());
        self.wake.notify_one();
    }

    /// Recounts touched namespaces as they come, and all of them every `period`.
    pub async fn run(&self, store: Store, period: Duration) {
        let quotas = registry::find("", "v1", "resourcequotas").expect("resource quotas are registered");
        let mut next_full = tokio::time::Instant::now();
        loop {
            let full = tokio::select! {
                _ = self.wake.notified() => false,
                _ = tokio::time::sleep_until(next_full) => true,
            };
            // A burst of writes is one recount.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut namespaces = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
            if full {
                next_full = tokio::time::Instant::now() + period;
                match store.list(&storage::prefix(quotas, None), None, 0, 0).await {
                    Ok(page) => namespaces.extend(
                        page.items.iter().filter_map(|s| s.obj["metadata"]["namespace"].as_str().map(String::from)),
                    ),
                    Err(e) => tracing::warn!("resource quotas: {}", e.message),
                }
            }
            for ns in namespaces {
                if let Err(e) = recount(&store, quotas, &ns).await {
                    tracing::warn!("resource quotas in {ns}: {}", e.message);
                }
            }
        }
    }
}

/// Sets `status.hard` and `status.used` of every quota in `ns` from the objects there,
/// all read at one revision; a quota charged since is left for the next round.
async fn recount(store: &Store, quotas: &'static Resource, ns: &str) -> ApiResult<()> {
    let page = store.list(&storage::prefix(quotas, Some(ns)), None, 0, 0).await?;
    if page.items.is_empty() {
        return Ok(());
    }
    let mut kinds: Vec<&'static Resource> = Vec::new();
    for q in &page.items {
        for name in hard(&q.obj).keys() {
            for r in counted_by(name) {
                if !kinds.iter().any(|k| std::ptr::eq(*k, r)) {
                    kinds.push(r);
                }
            }
        }
    }
    let mut objects: Vec<(&'static Resource, Vec<Value>)> = Vec::new();
    for r in kinds {
        let list = store.list(&storage::prefix(r, Some(ns)), None, 0, page.revision).await?;
        objects.push((r, list.items.into_iter().map(|s| s.obj).collect()));
    }
    for q in page.items {
        let hard = hard(&q.obj);
        let mut used: BTreeMap<String, i128> = hard.keys().map(|k| (k.clone(), 0)).collect();
        for (r, objs) in &objects {
            for o in objs.iter().filter(|o| in_scope(&q.obj, r, o)) {
                for (k, v) in usage(r, o) {
                    if let Some(u) = used.get_mut(&k) {
                        *u = u.saturating_add(v);
                    }
                }
            }
        }
        let status = json!({
            "hard": hard,
            "used": used.iter().map(|(k, v)| (k.clone(), json!(format(k, *v)))).collect::<serde_json::Map<_, _>>(),
        });
        if q.obj["status"] == status {
            continue;
        }
        let mut obj = q.obj.clone();
        obj["status"] = status;
        // Lost to a charge or an edit: counted again on the next round.
        let _ = store.update(&q.key, &obj, q.rev).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> &'static Resource {
        registry::find("", "v1", "pods").unwrap()
    }

    fn pod(requests: Value, limits: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "resources": {"requests": requests, "limits": limits}},
            {"name": "b", "resources": {"requests": requests, "limits": limits}},
        ]}})
    }

    #[test]
    fn amounts_print_in_kubernetes_canonical_form() {
        assert_eq!(format("requests.cpu", 500), "500m");
        assert_eq!(format("requests.cpu", 2000), "2");
        assert_eq!(format("pods", 3000), "3");
        assert_eq!(format("requests.memory", 128 * 1024 * 1024 * 1000), "128Mi");
        assert_eq!(format("requests.memory", 1_000_000_000_000), "1G");
        assert_eq!(format("limits.memory", 0), "0");
        assert_eq!(format("requests.storage", 1536 * 1000), "1536");
    }

    #[test]
    fn a_pod_uses_the_sum_of_its_containers_or_its_largest_init_container() {
        let mut p = pod(json!({"cpu": "250m", "memory": "64Mi"}), json!({"cpu": "1"}));
        p["spec"]["initContainers"] = json!([{"name": "i", "resources": {"requests": {"cpu": "2"}}}]);
        let u = usage(pods(), &p);
        assert_eq!(u["pods"], 1000);
        assert_eq!(u["count/pods"], 1000);
        assert_eq!(u["requests.cpu"], 2000);
        assert_eq!(u["cpu"], 2000);
        assert_eq!(u["requests.memory"], 128 * 1024 * 1024 * 1000);
        assert_eq!(u["limits.cpu"], 2000);
        p["status"]["phase"] = json!("Succeeded");
        assert!(usage(pods(), &p).is_empty(), "a finished pod uses nothing");
    }

    #[test]
    fn charges_refuses_past_the_limit_in_kubernetes_words() {
        let quota = json!({"metadata": {"name": "compute"},
            "spec": {"hard": {"pods": "2", "requests.cpu": "1"}},
            "status": {"hard": {"pods": "2", "requests.cpu": "1"}, "used": {"pods": "1", "requests.cpu": "500m"}}});
        let p = pod(json!({"cpu": "200m"}), json!({}));
        let q = charge(&quota, pods(), &p).unwrap().unwrap();
        assert_eq!(q["status"]["used"], json!({"pods": "2", "requests.cpu": "900m"}));
        let e = charge(&q, pods(), &p).unwrap_err();
        assert_eq!(
            e,
            "exceeded quota: compute, requested: pods=1,requests.cpu=400m, used: pods=2,requests.cpu=900m, limited: pods=2,requests.cpu=1"
        );
        let e = charge(&quota, pods(), &pod(json!({}), json!({}))).unwrap_err();
        assert_eq!(e, "failed quota: compute: must specify requests.cpu for: a,b");
        // A quota not yet counted refuses what it limits; one that limits nothing of a
        // Secret lets it through.
        let fresh = json!({"metadata": {"name": "new"}, "spec": {"hard": {"pods": "2"}}});
        assert_eq!(charge(&fresh, pods(), &p).unwrap_err(), "status unknown for quota: new, resources: pods");
        let secrets = registry::find("", "v1", "secrets").unwrap();
        assert_eq!(charge(&fresh, secrets, &json!({"metadata": {"name": "s"}})).unwrap(), None);
    }

    #[test]
    fn huge_quantities_exceed_the_quota_instead_of_wrapping() {
        let quota = json!({"metadata": {"name": "q"}, "spec": {"hard": {"requests.cpu": "4"}},
            "status": {"used": {"requests.cpu": "1e100"}}});
        let p = pod(json!({"cpu": "1e100"}), json!({}));
        assert!(charge(&quota, pods(), &p).unwrap_err().starts_with("exceeded quota: q"));
        let mut many = pod(json!({"cpu": "1e100"}), json!({}));
        many["spec"]["overhead"] = json!({"cpu": "1e100"});
        assert_eq!(usage(pods(), &many)["requests.cpu"], i128::MAX);
    }

    #[test]
    fn only_cpu_and_memory_must_be_named() {
        let quota = json!({"metadata": {"name": "gpu"}, "spec": {"hard": {"requests.nvidia.com/gpu": "1", "requests.ephemeral-storage": "1Gi"}},
            "status": {"used": {"requests.nvidia.com/gpu": "0", "requests.ephemeral-storage": "0"}}});
        assert_eq!(charge(&quota, pods(), &pod(json!({}), json!({}))).unwrap(), None);
    }

    #[test]
    fn scopes_choose_pods() {
        let quota = json!({"metadata": {"name": "be"}, "spec": {"hard": {"pods": "1"}, "scopes": ["BestEffort"]},
            "status": {"used": {"pods": "1"}}});
        assert!(charge(&quota, pods(), &pod(json!({}), json!({}))).is_err());
        assert_eq!(charge(&quota, pods(), &pod(json!({"cpu": "1"}), json!({}))).unwrap(), None);
        let by_class = json!({"metadata": {"name": "hi"}, "spec": {"hard": {"pods": "0"},
            "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}},
            "status": {"used": {"pods": "0"}}});
        let mut p = pod(json!({}), json!({}));
        assert_eq!(charge(&by_class, pods(), &p).unwrap(), None);
        p["spec"]["priorityClassName"] = json!("high");
        assert!(charge(&by_class, pods(), &p).is_err());
    }

    #[test]
    fn services_count_node_ports_and_claims_their_storage() {
        let svc = registry::find("", "v1", "services").unwrap();
        let u = usage(svc, &json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}}));
        assert_eq!((u["services"], u["services.nodeports"], u["count/services"]), (1000, 2000, 1000));
        let pvc = registry::find("", "v1", "persistentvolumeclaims").unwrap();
        let u =
            usage(pvc, &json!({"spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}}}}));
        assert_eq!(u["requests.storage"], (1i128 << 30) * 1000);
        assert_eq!(u["fast.storageclass.storage.k8s.io/persistentvolumeclaims"], 1000);
        let deploy = registry::find("apps", "v1", "deployments").unwrap();
        assert_eq!(usage(deploy, &json!({})).keys().collect::<Vec<_>>(), ["count/deployments.apps"]);
        assert_eq!(counted_by("count/deployments.apps")[0].kind, "Deployment");
    }
}
