//! Deletion the way Kubernetes does it. An object without finalizers goes at once,
//! except a pod on a node, which first gets a `deletionTimestamp` its grace period in
//! the future so the node agent can stop it (and then deletes it with grace 0).
//! `propagationPolicy` Orphan and Foreground become the `orphan` and
//! `foregroundDeletion` finalizers the garbage collector acts on; a namespace waits for
//! its `spec.finalizers` (the namespace controller empties it, then it goes). An
//! update that removes the last finalizer of an object marked for deletion deletes it.

use serde_json::{json, Value};

use crate::object;
use crate::registry::Resource;
use crate::status::{ApiError, ApiResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Orphan,
    Background,
    Foreground,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub grace: Option<i64>,
    pub policy: Option<Policy>,
    pub precondition_rv: Option<String>,
    pub precondition_uid: Option<String>,
}

impl DeleteOptions {
    /// From a DeleteOptions body (possibly `{}`) and the query's
    /// gracePeriodSeconds / propagationPolicy / orphanDependents.
    pub fn parse(body: &Value, query: impl Fn(&str) -> Option<String>) -> ApiResult<DeleteOptions> {
        let grace = match body["gracePeriodSeconds"].as_i64() {
            Some(g) => Some(g),
            None => match query("gracePeriodSeconds") {
                Some(s) => Some(s.parse::<i64>().map_err(|_| {
                    ApiError::bad_request(format!("gracePeriodSeconds: invalid value {s:?}: must be an integer"))
                })?),
                None => None,
            },
        };
        if grace.is_some_and(|g| g < 0) {
            return Err(ApiError::bad_request("gracePeriodSeconds must be zero or more"));
        }
        let policy = body["propagationPolicy"].as_str().map(String::from).or_else(|| query("propagationPolicy"));
        let orphan = body["orphanDependents"].as_bool().or_else(|| query("orphanDependents").map(|s| s == "true"));
        let policy = match (policy.as_deref(), orphan) {
            (Some("Orphan"), _) => Some(Policy::Orphan),
            (Some("Background"), _) => Some(Policy::Background),
            (Some("Foreground"), _) => Some(Policy::Foreground),
            (Some(other), _) => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\""),
                ))
            }
            (None, Some(true)) => Some(Policy::Orphan),
            (None, Some(false)) => Some(Policy::Background),
            (None, None) => None,
        };
        Ok(DeleteOptions {
            grace,
            policy,
            precondition_rv: body["preconditions"]["resourceVersion"].as_str().map(String::from),
            precondition_uid: body["preconditions"]["uid"].as_str().map(String::from),
        })
    }
}

/// What a DELETE does to the stored object.
#[derive(Debug, PartialEq)]
pub enum Deletion {
    /// Remove it from the store.
    Now,
    /// Write this marked object back (deletionTimestamp, finalizers).
    Mark(Value),
    /// Already marked; nothing changes.
    Pending,
}

fn finalizers(o: &Value) -> Vec<String> {
    o["metadata"]["finalizers"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(String::from)).collect()
}

/// The grace period a pod gets: none unless it runs (or may run) on a node.
fn pod_grace(pod: &Value, asked: Option<i64>) -> i64 {
    let on_node = pod["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
    let done = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    if !on_node || done {
        return 0;
    }
    asked.or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30)
}

pub fn plan(r: &Resource, obj: &Value, opts: &DeleteOptions, now: i64) -> Deletion {
    let mut o = obj.clone();
    let mut fins = finalizers(obj);
    let add = |fins: &mut Vec<String>, f: &str| {
        if !fins.iter().any(|x| x == f) {
            fins.push(f.to_string());
        }
    };
    match opts.policy {
        Some(Policy::Orphan) => add(&mut fins, "orphan"),
        Some(Policy::Foreground) => add(&mut fins, "foregroundDeletion"),
        _ => {}
    }
    let is_ns = r.group.is_empty() && r.plural == "namespaces";
    let ns_waits = is_ns && o["spec"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    let grace = if r.group.is_empty() && r.plural == "pods" { pod_grace(obj, opts.grace) } else { 0 };
    if fins.is_empty() && !ns_waits && grace == 0 {
        return Deletion::Now;
    }
    let marked = o["metadata"]["deletionTimestamp"].is_string();
    let cur_grace = o["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
    let changed_fins = fins != finalizers(obj);
    if marked && !changed_fins && grace >= cur_grace {
        return Deletion::Pending;
    }
    o["metadata"]["deletionTimestamp"] = json!(object::rfc3339(now + grace));
    o["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    if !fins.is_empty() {
        o["metadata"]["finalizers"] = json!(fins);
    }
    if is_ns {
        o["status"]["phase"] = json!("Terminating");
    }
    Deletion::Mark(o)
}

/// Whether a marked object that was just updated has nothing left to wait for.
pub fn finished(r: &Resource, obj: &Value) -> bool {
    if !obj["metadata"]["deletionTimestamp"].is_string() || !finalizers(obj).is_empty() {
        return false;
    }
    if r.group.is_empty() && r.plural == "namespaces" {
        return obj["spec"]["finalizers"].as_array().is_none_or(|f| f.is_empty());
    }
    obj["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry;

    fn res(plural: &str) -> &'static Resource {
        let g = if plural == "deployments" { "apps" } else { "" };
        registry::find(g, "v1", plural).unwrap()
    }

    fn opts(body: Value) -> DeleteOptions {
        DeleteOptions::parse(&body, |_| None).unwrap()
    }

    #[test]
    fn plain_objects_go_at_once_and_policies_become_finalizers() {
        let d = json!({"metadata": {"name": "d"}});
        assert_eq!(plan(res("deployments"), &d, &opts(json!({})), 0), Deletion::Now);
        assert_eq!(plan(res("deployments"), &d, &opts(json!({"propagationPolicy": "Background"})), 0), Deletion::Now);
        let Deletion::Mark(m) = plan(res("deployments"), &d, &opts(json!({"propagationPolicy": "Orphan"})), 10) else {
            panic!("orphan must mark")
        };
        assert_eq!(m["metadata"]["finalizers"], json!(["orphan"]));
        assert_eq!(m["metadata"]["deletionTimestamp"], json!("1970-01-01T00:00:10Z"));
        assert!(!finished(res("deployments"), &m));
        // Deleting again changes nothing.
        assert_eq!(plan(res("deployments"), &m, &opts(json!({"propagationPolicy": "Orphan"})), 20), Deletion::Pending);
        let fg = DeleteOptions::parse(&json!({}), |k| (k == "propagationPolicy").then(|| "Foreground".into())).unwrap();
        let Deletion::Mark(m) = plan(res("deployments"), &d, &fg, 0) else { panic!() };
        assert_eq!(m["metadata"]["finalizers"], json!(["foregroundDeletion"]));
        let mut done = m.clone();
        done["metadata"]["finalizers"] = json!([]);
        assert!(finished(res("deployments"), &done));
        assert!(DeleteOptions::parse(&json!({"propagationPolicy": "Sideways"}), |_| None).is_err());
    }

    #[test]
    fn pods_on_nodes_get_their_grace_period() {
        let unbound = json!({"metadata": {"name": "p"}, "spec": {}});
        assert_eq!(plan(res("pods"), &unbound, &opts(json!({})), 0), Deletion::Now);
        let bound = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 5}});
        let Deletion::Mark(m) = plan(res("pods"), &bound, &opts(json!({})), 100) else { panic!() };
        assert_eq!(m["metadata"]["deletionGracePeriodSeconds"], json!(5));
        assert_eq!(m["metadata"]["deletionTimestamp"], json!("1970-01-01T00:01:45Z"));
        // A longer grace period does not extend it; a shorter one shortens it; 0 deletes.
        assert_eq!(plan(res("pods"), &m, &opts(json!({"gracePeriodSeconds": 30})), 101), Deletion::Pending);
        assert!(matches!(plan(res("pods"), &m, &opts(json!({"gracePeriodSeconds": 1})), 101), Deletion::Mark(_)));
        assert_eq!(plan(res("pods"), &m, &opts(json!({"gracePeriodSeconds": 0})), 101), Deletion::Now);
        let done = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Succeeded"}});
        assert_eq!(plan(res("pods"), &done, &opts(json!({})), 0), Deletion::Now);
    }

    #[test]
    fn namespaces_wait_for_their_spec_finalizers() {
        let ns =
            json!({"metadata": {"name": "x"}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let Deletion::Mark(m) = plan(res("namespaces"), &ns, &opts(json!({})), 0) else { panic!() };
        assert_eq!(m["status"]["phase"], json!("Terminating"));
        assert!(!finished(res("namespaces"), &m));
        let mut done = m.clone();
        done["spec"]["finalizers"] = json!([]);
        assert!(finished(res("namespaces"), &done));
    }
}
