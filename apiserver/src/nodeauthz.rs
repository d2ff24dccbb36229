//! The Node authorizer and NodeRestriction admission, as Kubernetes has them: a node
//! agent, authenticated as `system:node:<name>` in `system:nodes`, acts for its own node
//! only. On top of what the `system:node` role grants (RBAC is asked first), a node may:
//! - get a Secret or ConfigMap only when a pod bound to it refers to it (volumes,
//!   projected sources, `env`, `envFrom`, `imagePullSecrets`), and never list or watch
//!   them;
//! - request a ServiceAccount token only for an account a pod bound to it runs as, and
//!   only bound to such a pod;
//! - create, change or delete only its own Node, and in `kube-node-lease` only its own
//!   Lease;
//! - update the status of, or delete, only pods bound to it.
//!
//! Members of `system:nodes` with another user name (the simulated-node agent, which runs
//! many nodes under one identity) are left to RBAC, as in Kubernetes. PersistentVolumes
//! and claims stay with RBAC too: Skiff's local-path provisioner runs inside the agent
//! and follows every claim.

use serde_json::Value;

use crate::authn::{User, NODES};
use crate::rbac::Attributes;
use crate::registry;
use crate::status::ApiResult;
use crate::storage::{self, Store};

/// The namespace of node Leases.
pub const NODE_LEASES: &str = "kube-node-lease";

/// The node a user acts for: `n` for `system:node:n` in `system:nodes`.
pub fn node_of(user: &User) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    (!name.is_empty() && user.in_group(NODES)).then_some(name)
}

/// Whether `user`, acting for `node`, may make the request `a`: Ok(None) to go on,
/// Ok(Some(message)) to refuse with a 403 (the authorizer's refusals in RBAC's words with
/// the reason after them; NodeRestriction's as admission words them). Creates are
/// checked later, with their body (`may_create`).
pub async fn authorize(store: &Store, user: &User, node: &str, a: &Attributes) -> ApiResult<Option<String>> {
    if !a.resource_request {
        return Ok(None);
    }
    let denied = authorizer(store, node, a).await?.map(|why| format!("{}: {why}", a.forbidden_message(user)));
    if denied.is_some() {
        return Ok(denied);
    }
    Ok(restriction(store, node, a).await?.map(|why| format!("{} \"{}\" is forbidden: {why}", a.resource, a.name)))
}

/// The Node authorizer: Secrets, ConfigMaps and tokens through the node's pods, and
/// node Leases.
async fn authorizer(store: &Store, node: &str, a: &Attributes) -> ApiResult<Option<String>> {
    let no_relationship = || Some(format!("no relationship found between node '{node}' and this object"));
    match (a.api_group.as_str(), a.resource.as_str()) {
        ("", "secrets" | "configmaps") => {
            if a.verb != "get" || a.name.is_empty() {
                return Ok(Some("can only get individual resources of this type".into()));
            }
            if !a.subresource.is_empty() {
                return Ok(Some("cannot get subresource".into()));
            }
            let found = pods_on(store, node, &a.namespace).await?.iter().any(|p| refers_to(p, &a.resource, &a.name));
            Ok(if found { None } else { no_relationship() })
        }
        ("", "serviceaccounts") if a.subresource == "token" => {
            let found = pods_on(store, node, &a.namespace)
                .await?
                .iter()
                .any(|p| p["spec"]["serviceAccountName"].as_str().unwrap_or("default") == a.name);
            Ok(if found { None } else { no_relationship() })
        }
        ("coordination.k8s.io", "leases") => {
            if a.namespace != NODE_LEASES {
                return Ok(Some(format!("can only access leases in the {NODE_LEASES} namespace")));
            }
            if !matches!(a.verb.as_str(), "get" | "create" | "update" | "patch" | "delete") {
                return Ok(Some("can only get, create, update, patch, or delete a node lease".into()));
            }
            let own = a.name.is_empty() && a.verb == "create" || a.name == node;
            Ok((!own).then(|| "can only access node lease with the same name as the requesting node".into()))
        }
        _ => Ok(None),
    }
}

/// NodeRestriction: a node changes only itself and its own pods.
async fn restriction(store: &Store, node: &str, a: &Attributes) -> ApiResult<Option<String>> {
    match (a.api_group.as_str(), a.resource.as_str()) {
        ("", "nodes") if matches!(a.verb.as_str(), "update" | "patch" | "delete") && a.name != node => {
            Ok(Some(format!("node \"{node}\" is not allowed to modify node \"{}\"", a.name)))
        }
        ("", "pods") => {
            let what = match (a.verb.as_str(), a.subresource.as_str()) {
                ("update" | "patch", "status") => "update pod status for",
                ("delete", "") => "delete",
                _ => return Ok(None),
            };
            let pods = registry::find("", "v1", "pods").expect("registered");
            let pod = store.get(&storage::key(pods, Some(&a.namespace), &a.name)).await?;
            // A pod that is not there gets its 404 from the handler.
            let elsewhere = pod.is_some_and(|p| p.obj["spec"]["nodeName"].as_str() != Some(node));
            Ok(elsewhere.then(|| format!("node \"{node}\" can only {what} pods with spec.nodeName set to itself")))
        }
        _ => Ok(None),
    }
}

/// NodeRestriction for creates: a node makes only its own Node and its own Lease.
pub fn may_create(node: &str, plural: &str, obj: &Value) -> Result<(), String> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match plural {
        "nodes" if name != node => Err(format!("node \"{node}\" is not allowed to modify node \"{name}\"")),
        "leases" if name != node => Err("can only access node lease with the same name as the requesting node".into()),
        _ => Ok(()),
    }
}

/// NodeRestriction for a token request: bound to a pod on this node.
pub fn may_bind_token(node: &str, pod: &Value) -> Result<(), String> {
    match pod["spec"]["nodeName"].as_str() {
        Some(n) if n == node => Ok(()),
        _ => Err("node requested token bound to a pod scheduled on a different node".into()),
    }
}

/// The pods of `namespace` bound to `node`.
async fn pods_on(store: &Store, node: &str, namespace: &str) -> ApiResult<Vec<Value>> {
    let pods = registry::find("", "v1", "pods").expect("registered");
    let page = store.list(&storage::prefix(pods, Some(namespace)), None, 0, 0).await?;
    Ok(page.items.into_iter().map(|s| s.obj).filter(|p| p["spec"]["nodeName"].as_str() == Some(node)).collect())
}

/// Whether `pod` uses the Secret or ConfigMap (`plural`) called `name`.
fn refers_to(pod: &Value, plural: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let is = |v: &Value| v.as_str() == Some(name);
    let arr = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let containers: Vec<Value> =
        ["initContainers", "containers", "ephemeralContainers"].iter().flat_map(|k| arr(&spec[*k])).collect();
    let (volume, projected, key_ref, env_from) = match plural {
        "secrets" => ("secret", "secret", "secretKeyRef", "secretRef"),
        _ => ("configMap", "configMap", "configMapKeyRef", "configMapRef"),
    };
    let volume_name =
        |v: &Value| if plural == "secrets" { is(&v[volume]["secretName"]) } else { is(&v[volume]["name"]) };
    arr(&spec["volumes"])
        .iter()
        .any(|v| volume_name(v) || arr(&v["projected"]["sources"]).iter().any(|s| is(&s[projected]["name"])))
        || containers.iter().any(|c| {
            arr(&c["env"]).iter().any(|e| is(&e["valueFrom"][key_ref]["name"]))
                || arr(&c["envFrom"]).iter().any(|e| is(&e[env_from]["name"]))
        })
        || (plural == "secrets" && arr(&spec["imagePullSecrets"]).iter().any(|s| is(&s["name"])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> User {
        User { name: name.into(), uid: String::new(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    #[test]
    fn only_named_members_of_system_nodes_are_nodes() {
        assert_eq!(node_of(&user("system:node:w1", &[NODES])), Some("w1"));
        assert_eq!(node_of(&user("system:node:w1", &["system:authenticated"])), None, "not in system:nodes");
        assert_eq!(node_of(&user("system:node:", &[NODES])), None);
        assert_eq!(node_of(&user("system:skiff:simulated-nodes", &[NODES])), None, "left to RBAC");
    }

    #[test]
    fn pods_refer_to_secrets_and_configmaps_in_every_way_kubernetes_has() {
        let pod = json!({"spec": {
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "configMap": {"name": "vol-map"}},
                {"name": "c", "projected": {"sources": [{"secret": {"name": "proj-secret"}}, {"configMap": {"name": "kube-root-ca.crt"}}]}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
            "containers": [{"name": "c", "env": [
                {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "env-map", "key": "k"}}},
                {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
            ], "envFrom": [{"configMapRef": {"name": "from-map"}}]}],
        }});
        for s in ["pull", "vol-secret", "proj-secret", "init-env", "env-secret"] {
            assert!(refers_to(&pod, "secrets", s), "{s}");
            assert!(!refers_to(&pod, "configmaps", s), "{s} is a secret");
        }
        for m in ["vol-map", "kube-root-ca.crt", "env-map", "from-map"] {
            assert!(refers_to(&pod, "configmaps", m), "{m}");
            assert!(!refers_to(&pod, "secrets", m), "{m} is a configmap");
        }
        assert!(!refers_to(&pod, "secrets", "other"));
    }

    #[test]
    fn creates_and_token_bindings_are_for_the_node_itself() {
        assert!(may_create("w1", "nodes", &json!({"metadata": {"name": "w1"}})).is_ok());
        assert_eq!(
            may_create("w1", "nodes", &json!({"metadata": {"name": "w2"}})).unwrap_err(),
            "node \"w1\" is not allowed to modify node \"w2\""
        );
        assert!(may_create("w1", "leases", &json!({"metadata": {"name": "w2"}})).is_err());
        assert!(may_create("w1", "events", &json!({"metadata": {"name": "w2.123"}})).is_ok());
        assert!(may_bind_token("w1", &json!({"spec": {"nodeName": "w1"}})).is_ok());
        assert!(may_bind_token("w1", &json!({"spec": {"nodeName": "w2"}})).is_err());
        assert!(may_bind_token("w1", &json!({"spec": {}})).is_err());
    }
}
