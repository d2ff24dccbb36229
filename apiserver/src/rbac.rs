//! Authorization by RBAC: Roles, ClusterRoles and their bindings, read from the store and
//! kept current by a watch, decide every request of an authenticated or anonymous user.
//! Members of `system:masters` may do anything (as in Kubernetes, without a binding).
//!
//! ClusterRoles with an `aggregationRule` get the rules of every ClusterRole whose labels
//! match its selectors, at the time of each decision (Kubernetes' aggregation controller
//! writes them into the object; here `kubectl get clusterrole view -o yaml` shows the rule
//! but not the aggregated list).
//!
//! On start the default roles and bindings are created where missing: `cluster-admin`,
//! `admin`, `edit`, `view` (aggregated from `system:aggregate-to-*`), `system:discovery`,
//! `system:basic-user` and `system:public-info-viewer`, bound as Kubernetes binds them.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};

use crate::authn::{User, AUTHENTICATED, MASTERS, UNAUTHENTICATED};
use crate::storage::{self, Store};

/// What a request wants to do.
#[derive(Debug, Default, Clone)]
pub struct Attributes {
    pub verb: String,
    /// Resource requests: API group, resource, subresource, namespace, name.
    pub resource_request: bool,
    pub api_group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// Non-resource requests: the URL path.
    pub path: String,
}

impl Attributes {
    /// Kubernetes' words for a refusal: `pods "x" is forbidden: User "jane" cannot get
    /// resource "pods" in API group "" in the namespace "default"`.
    pub fn forbidden_message(&self, user: &User) -> String {
        if !self.resource_request {
            return format!("forbidden: User \"{}\" cannot {} path \"{}\"", user.name, self.verb, self.path);
        }
        let what = match self.api_group.as_str() {
            "" => self.resource.clone(),
            g => format!("{}.{g}", self.resource),
        };
        let subject = if self.name.is_empty() { what } else { format!("{what} \"{}\"", self.name) };
        let resource = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        format!(
            "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            user.name, self.verb, self.api_group
        )
    }
}

#[derive(Default)]
struct State {
    cluster_roles: BTreeMap<String, Value>,
    cluster_bindings: BTreeMap<String, Value>,
    /// Keyed by (namespace, name).
    roles: BTreeMap<(String, String), Value>,
    bindings: BTreeMap<(String, String), Value>,
}

/// The RBAC objects of the cluster, kept current.
#[derive(Default, Clone)]
pub struct Rbac {
    state: Arc<RwLock<State>>,
}

const PREFIXES: [&str; 4] =
    ["/registry/clusterroles/", "/registry/clusterrolebindings/", "/registry/roles/", "/registry/rolebindings/"];

fn strs(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

fn has(list: &Value, want: &str) -> bool {
    strs(list).any(|s| s == want || s == "*")
}

/// Whether one PolicyRule allows the request.
fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    if !has(&rule["verbs"], &a.verb) {
        return false;
    }
    if !a.resource_request {
        return strs(&rule["nonResourceURLs"])
            .any(|u| u == "*" || u == a.path || u.strip_suffix('*').is_some_and(|prefix| a.path.starts_with(prefix)));
    }
    if !has(&rule["apiGroups"], &a.api_group) {
        return false;
    }
    let combined =
        if a.subresource.is_empty() { a.resource.clone() } else { format!("{}/{}", a.resource, a.subresource) };
    let resource_ok = strs(&rule["resources"]).any(|r| {
        r == "*" || r == combined || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    if !resource_ok {
        return false;
    }
    let names: Vec<&str> = strs(&rule["resourceNames"]).collect();
    names.is_empty() || names.contains(&a.name.as_str())
}

/// Whether a binding's subjects include `user` (`ns`: the binding's namespace).
fn bound(binding: &Value, user: &User, ns: &str) -> bool {
    binding["subjects"].as_array().into_iter().flatten().any(|s| {
        let name = s["name"].as_str().unwrap_or_default();
        match s["kind"].as_str() {
            Some("User") => user.name == name,
            Some("Group") => user.in_group(name),
            Some("ServiceAccount") => {
                let sa_ns = s["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(ns);
                user.name == format!("system:serviceaccount:{sa_ns}:{name}")
            }
            _ => false,
        }
    })
}

fn labels_match(labels: &Value, selector: &Value) -> bool {
    let Some(want) = selector["matchLabels"].as_object() else { return false };
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl State {
    /// A ClusterRole's rules, with those of the roles it aggregates (and theirs: `edit`
    /// aggregates `view`, itself aggregated).
    fn cluster_role_rules(&self, name: &str) -> Vec<&Value> {
        let mut rules = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        self.collect_rules(name, &mut rules, &mut seen);
        rules
    }

    fn collect_rules<'a>(
        &'a self,
        name: &str,
        rules: &mut Vec<&'a Value>,
        seen: &mut std::collections::BTreeSet<String>,
    ) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some(role) = self.cluster_roles.get(name) else { return };
        let selectors = role["aggregationRule"]["clusterRoleSelectors"].as_array();
        // An aggregated role's rules are those of the roles it selects (Kubernetes'
        // controller overwrites whatever rules it holds itself).
        if selectors.is_none() {
            rules.extend(role["rules"].as_array().into_iter().flatten());
        }
        if let Some(selectors) = selectors {
            for (other, r) in &self.cluster_roles {
                if selectors.iter().any(|sel| labels_match(&r["metadata"]["labels"], sel)) {
                    self.collect_rules(other, rules, seen);
                }
            }
        }
    }

    fn binding_allows(&self, b: &Value, ns: Option<&str>, a: &Attributes) -> bool {
        let name = b["roleRef"]["name"].as_str().unwrap_or_default();
        let rules = match (b["roleRef"]["kind"].as_str(), ns) {
            (Some("ClusterRole"), _) => self.cluster_role_rules(name),
            (Some("Role"), Some(ns)) => self
                .roles
                .get(&(ns.to_string(), name.to_string()))
                .map(|r| r["rules"].as_array().into_iter().flatten().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        rules.into_iter().any(|r| rule_allows(r, a))
    }
}

impl Rbac {
    pub fn allowed(&self, user: &User, a: &Attributes) -> bool {
        if user.in_group(MASTERS) {
            return true;
        }
        let s = self.state.read().unwrap_or_else(|e| e.into_inner());
        if s.cluster_bindings.values().any(|b| bound(b, user, "") && s.binding_allows(b, None, a)) {
            return true;
        }
        if !a.resource_request || a.namespace.is_empty() {
            return false;
        }
        let ns = a.namespace.as_str();
        s.bindings
            .range((ns.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == ns)
            .any(|(_, b)| bound(b, user, ns) && s.binding_allows(b, Some(ns), a))
    }

    fn apply(&self, key: &str, obj: Option<Value>) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        s.apply(key, obj);
    }
}

impl State {
    fn apply(&mut self, key: &str, obj: Option<Value>) {
        let s = self;
        let Some((prefix, rest)) = PREFIXES.iter().find_map(|p| key.strip_prefix(p).map(|r| (*p, r))) else { return };
        let namespaced = |rest: &str| rest.split_once('/').map(|(n, m)| (n.to_string(), m.to_string()));
        match (prefix, obj) {
            ("/registry/clusterroles/", Some(o)) => drop(s.cluster_roles.insert(rest.to_string(), o)),
            ("/registry/clusterroles/", None) => drop(s.cluster_roles.remove(rest)),
            ("/registry/clusterrolebindings/", Some(o)) => drop(s.cluster_bindings.insert(rest.to_string(), o)),
            ("/registry/clusterrolebindings/", None) => drop(s.cluster_bindings.remove(rest)),
            ("/registry/roles/", o) => {
                if let Some(k) = namespaced(rest) {
                    match o {
                        Some(o) => drop(s.roles.insert(k, o)),
                        None => drop(s.roles.remove(&k)),
                    }
                }
            }
            (_, o) => {
                if let Some(k) = namespaced(rest) {
                    match o {
                        Some(o) => drop(s.bindings.insert(k, o)),
                        None => drop(s.bindings.remove(&k)),
                    }
                }
            }
        }
    }
}

/// The requests one rule grants, as attributes to ask `allowed` about (wildcards kept
/// as literal `*`, which only a rule holding `*` itself covers).
fn requests_of(rule: &Value, namespace: &str) -> Vec<Attributes> {
    let mut out = Vec::new();
    let verbs: Vec<&str> = strs(&rule["verbs"]).collect();
    for url in strs(&rule["nonResourceURLs"]) {
        for v in &verbs {
            out.push(Attributes { verb: v.to_string(), path: url.to_string(), ..Default::default() });
        }
    }
    let names: Vec<&str> = strs(&rule["resourceNames"]).collect();
    let names = if names.is_empty() { vec![""] } else { names };
    for g in strs(&rule["apiGroups"]) {
        for r in strs(&rule["resources"]) {
            let (resource, sub) = r.split_once('/').unwrap_or((r, ""));
            for v in &verbs {
                for n in &names {
                    out.push(Attributes {
                        verb: v.to_string(),
                        resource_request: true,
                        api_group: g.to_string(),
                        resource: resource.to_string(),
                        subresource: sub.to_string(),
                        namespace: namespace.to_string(),
                        name: n.to_string(),
                        path: String::new(),
                    });
                }
            }
        }
    }
    out
}

/// A rule as Kubernetes prints it in escalation errors.
fn print_rule(rule: &Value) -> String {
    let list = |k: &str| strs(&rule[k]).map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ");
    let mut parts = Vec::new();
    for (k, name) in [
        ("apiGroups", "APIGroups"),
        ("resources", "Resources"),
        ("resourceNames", "ResourceNames"),
        ("nonResourceURLs", "NonResourceURLs"),
        ("verbs", "Verbs"),
    ] {
        if rule[k].as_array().is_some_and(|a| !a.is_empty()) {
            parts.push(format!("{name}:[{}]", list(k)));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

impl Rbac {
    /// Kubernetes' escalation check on writes of roles and bindings: a user may write a
    /// Role or ClusterRole only if they hold every permission it grants (where it grants
    /// them), unless they may `escalate` it; and a binding only if they hold every
    /// permission of the role it refers to, unless they may `bind` that role.
    pub fn may_write(&self, user: &User, plural: &str, namespace: Option<&str>, obj: &Value) -> Result<(), String> {
        if user.in_group(MASTERS) {
            return Ok(());
        }
        let ns = namespace.unwrap_or_default();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let may = |verb: &str, resource: &str, name: &str| {
            let a = Attributes {
                verb: verb.into(),
                resource_request: true,
                api_group: "rbac.authorization.k8s.io".into(),
                resource: resource.into(),
                namespace: ns.into(),
                name: name.into(),
                ..Default::default()
            };
            self.allowed(user, &a)
        };
        let rules: Vec<Value> = match plural {
            "roles" | "clusterroles" => {
                if may("escalate", plural, name) {
                    return Ok(());
                }
                obj["rules"].as_array().cloned().unwrap_or_default()
            }
            "rolebindings" | "clusterrolebindings" => {
                let role = obj["roleRef"]["name"].as_str().unwrap_or_default();
                let (kind_plural, role_ns) = match obj["roleRef"]["kind"].as_str() {
                    Some("Role") => ("roles", Some(ns)),
                    _ => ("clusterroles", None),
                };
                if may("bind", kind_plural, role) {
                    return Ok(());
                }
                let s = self.state.read().unwrap_or_else(|e| e.into_inner());
                match role_ns {
                    Some(rns) => s
                        .roles
                        .get(&(rns.to_string(), role.to_string()))
                        .and_then(|r| r["rules"].as_array().cloned())
                        .unwrap_or_default(),
                    None => s.cluster_role_rules(role).into_iter().cloned().collect(),
                }
            }
            _ => return Ok(()),
        };
        let missing: Vec<String> = rules
            .iter()
            .filter(|r| !requests_of(r, ns).iter().all(|a| self.allowed(user, a)))
            .map(print_rule)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
        Err(format!(
            "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            groups.join(" "),
            missing.join("\n")
        ))
    }

    /// Loads every RBAC object and follows the store's changes for as long as the server
    /// runs (listing again after any break). Returns once the first load is done.
    pub async fn start(&self, store: Store) -> anyhow::Result<()> {
        let rev = self.load(&store).await?;
        let this = self.clone();
        tokio::spawn(async move {
            let mut from = rev + 1;
            loop {
                let _ = this.follow(&store, from).await;
                // The watch broke: list again (until that works) and follow from there;
                // the objects already loaded keep deciding meanwhile.
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match this.load(&store).await {
                        Ok(rev) => {
                            from = rev + 1;
                            break;
                        }
                        Err(e) => tracing::warn!("reloading RBAC objects: {e}"),
                    }
                }
            }
        });
        Ok(())
    }

    /// Lists all RBAC objects at one revision and replaces the state with them, only if
    /// the whole list succeeded.
    async fn load(&self, store: &Store) -> anyhow::Result<i64> {
        let mut rev = 0;
        let mut fresh = State::default();
        for p in PREFIXES {
            let page = store.list(p, None, 0, rev).await.map_err(|e| anyhow::anyhow!(e.message))?;
            rev = page.revision;
            for item in page.items {
                fresh.apply(&item.key, Some(item.obj));
            }
        }
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(rev)
    }

    /// Applies the store's changes under `/registry/` RBAC prefixes from revision `from`.
    async fn follow(&self, store: &Store, from: i64) -> anyhow::Result<()> {
        // One watch over the common prefix of the four, filtered here.
        let mut stream = store.watch("/registry/", from).await.map_err(|e| anyhow::anyhow!(e.message))?;
        loop {
            let Some(resp) = stream.message().await? else { return Ok(()) };
            if resp.canceled() {
                return Ok(());
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                if !PREFIXES.iter().any(|p| key.starts_with(p)) {
                    continue;
                }
                let obj = match ev.event_type() {
                    etcd_client::EventType::Put => {
                        storage::decode(kv.key(), kv.value(), kv.mod_revision()).ok().map(|s| s.obj)
                    }
                    etcd_client::EventType::Delete => None,
                };
                self.apply(&key, obj);
            }
        }
    }
}

// ---- the default policy -------------------------------------------------------------------

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
            READ,
        ),
        rule(
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
            READ,
        ),
        rule(&[""], &["namespaces"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            READ,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers", "horizontalpodautoscalers/status"], READ),
        rule(&["batch"], &["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
        rule(&["policy"], &["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
        rule(&["networking.k8s.io"], &["ingresses", "ingresses/status", "networkpolicies"], READ),
        rule(&["metrics.k8s.io"], &["pods", "nodes"], READ),
    ]
}

fn edit_rules() -> Vec<Value> {
    vec![
        rule(&[""], &["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"], READ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "pods/eviction",
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], WRITE),
        rule(&["policy"], &["poddisruptionbudgets"], WRITE),
        rule(&["networking.k8s.io"], &["ingresses", "networkpolicies"], WRITE),
        rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
    ]
}

/// The scheduler's rights: read what placement depends on, bind pods, say why a pod
/// waits, pick volumes for claims, and hold its lease.
fn scheduler_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "pods",
                "nodes",
                "namespaces",
                "services",
                "replicationcontrollers",
                "persistentvolumes",
                "persistentvolumeclaims",
            ],
            READ,
        ),
        rule(&[""], &["pods/binding", "bindings"], &["create"]),
        rule(&[""], &["pods/status"], &["patch", "update"]),
        rule(&[""], &["persistentvolumes", "persistentvolumeclaims"], &["patch", "update"]),
        rule(&[""], &["persistentvolumes/status", "persistentvolumeclaims/status"], &["patch", "update"]),
        rule(&["storage.k8s.io"], &["storageclasses", "csinodes"], READ),
        rule(&["apps"], &["replicasets", "statefulsets"], READ),
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
        rule(&["coordination.k8s.io"], &["leases"], &["create", "get", "list", "watch", "update", "patch"]),
    ]
}

/// The controller-manager's rights. Kubernetes gives each controller its own service
/// account; skiff's controller-manager is one identity, so this is the union: read,
/// change and delete everything (the garbage collector removes owner references and
/// finalizers from every kind, as Kubernetes' does; namespace deletion empties every
/// kind, Secrets included), create the kinds the controllers manage. It may not create
/// Secrets, RBAC objects or CertificateSigningRequests, nor impersonate, escalate or
/// bind (so it cannot widen a role: the escalation check still applies to its updates).
fn controller_manager_rules() -> Vec<Value> {
    vec![
        rule(&["*"], &["*"], &["get", "list", "watch", "patch", "update", "delete", "deletecollection"]),
        rule(
            &[""],
            &[
                "pods",
                "pods/status",
                "services",
                "services/status",
                "endpoints",
                "events",
                "nodes",
                "nodes/status",
                "namespaces",
                "namespaces/status",
                "namespaces/finalize",
                "serviceaccounts",
                "configmaps",
                "persistentvolumes",
                "persistentvolumes/status",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "replicationcontrollers",
                "replicationcontrollers/status",
            ],
            &["create", "patch", "update"],
        ),
        rule(&["apps", "batch", "autoscaling"], &["*"], &["create", "patch", "update"]),
        rule(&["discovery.k8s.io"], &["endpointslices"], &["create", "patch", "update"]),
        rule(&["events.k8s.io"], &["events"], &["create", "patch", "update"]),
        rule(&["coordination.k8s.io"], &["leases"], &["create", "patch", "update"]),
        rule(&["policy"], &["poddisruptionbudgets/status"], &["patch", "update"]),
    ]
}

/// A node agent's rights (bound to the group system:nodes). Kubernetes narrows these
/// per node with its Node authorizer, which skiff does not have: any node may read
/// every Secret and ConfigMap and write any Node and pod status.
fn node_rules() -> Vec<Value> {
    vec![
        rule(&[""], &["nodes"], &["create", "get", "list", "watch", "update", "patch", "delete"]),
        rule(&[""], &["nodes/status"], &["patch", "update"]),
        rule(&[""], &["pods"], &["get", "list", "watch", "delete"]),
        rule(&[""], &["pods/status"], &["get", "patch", "update"]),
        rule(
            &[""],
            &[
                "configmaps",
                "secrets",
                "services",
                "endpoints",
                "namespaces",
                "persistentvolumeclaims",
                "persistentvolumes",
            ],
            READ,
        ),
        rule(&[""], &["persistentvolumes"], &["create", "delete", "patch", "update"]),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch", "update"]),
        rule(&["storage.k8s.io"], &["storageclasses"], READ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(&["coordination.k8s.io"], &["leases"], &["create", "get", "list", "watch", "update", "patch", "delete"]),
        rule(&["metrics.k8s.io"], &["pods", "nodes"], &["create", "get", "list", "watch", "update", "patch", "delete"]),
        rule(&["certificates.k8s.io"], &["certificatesigningrequests"], &["create", "get", "list", "watch"]),
    ]
}

fn admin_rules() -> Vec<Value> {
    vec![
        rule(&["authorization.k8s.io"], &["localsubjectaccessreviews"], &["create"]),
        rule(
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "roles"],
            &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        ),
    ]
}

const SCHEDULER_ROLE: &str = "system:kube-scheduler";
const CONTROLLER_MANAGER_ROLE: &str = "system:kube-controller-manager";

/// The default ClusterRoles and ClusterRoleBindings.
pub fn default_policy() -> Vec<(&'static str, Value)> {
    let role = |name: &str, labels: Value, rules: Vec<Value>, aggregate: Option<&str>| {
        let mut r = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "rules": rules,
        });
        if let Some(to) = aggregate {
            r["aggregationRule"] = json!({"clusterRoleSelectors": [{"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{to}"): "true"}}]});
        }
        r
    };
    let bootstrap = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let with = |extra: &[(&str, &str)]| {
        let mut l = bootstrap.clone();
        for (k, v) in extra {
            l[*k] = json!(v);
        }
        l
    };
    let binding = |name: &str, role: &str, groups: &[&str]| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": bootstrap.clone(), "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": groups.iter().map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g})).collect::<Vec<_>>(),
        })
    };
    let user_binding = |name: &str, role: &str, user: &str| {
        let mut b = binding(name, role, &[]);
        b["subjects"] = json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]);
        b
    };
    vec![
        (
            "clusterroles",
            role(
                "cluster-admin",
                bootstrap.clone(),
                vec![
                    json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                    json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
                ],
                None,
            ),
        ),
        ("clusterroles", role("admin", bootstrap.clone(), vec![], Some("admin"))),
        (
            "clusterroles",
            role("edit", with(&[("rbac.authorization.k8s.io/aggregate-to-admin", "true")]), vec![], Some("edit")),
        ),
        (
            "clusterroles",
            role("view", with(&[("rbac.authorization.k8s.io/aggregate-to-edit", "true")]), vec![], Some("view")),
        ),
        (
            "clusterroles",
            role(
                "system:aggregate-to-admin",
                with(&[("rbac.authorization.k8s.io/aggregate-to-admin", "true")]),
                admin_rules(),
                None,
            ),
        ),
        (
            "clusterroles",
            role(
                "system:aggregate-to-edit",
                with(&[("rbac.authorization.k8s.io/aggregate-to-edit", "true")]),
                edit_rules(),
                None,
            ),
        ),
        (
            "clusterroles",
            role(
                "system:aggregate-to-view",
                with(&[("rbac.authorization.k8s.io/aggregate-to-view", "true")]),
                view_rules(),
                None,
            ),
        ),
        (
            "clusterroles",
            role(
                "system:discovery",
                bootstrap.clone(),
                vec![
                    json!({"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version", "/version/", "/healthz", "/livez", "/readyz"], "verbs": ["get"]}),
                ],
                None,
            ),
        ),
        (
            "clusterroles",
            role(
                "system:basic-user",
                bootstrap.clone(),
                vec![
                    rule(
                        &["authorization.k8s.io"],
                        &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                        &["create"],
                    ),
                    rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
                ],
                None,
            ),
        ),
        (
            "clusterroles",
            role(
                "system:public-info-viewer",
                bootstrap.clone(),
                vec![
                    json!({"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/", "/dashboard", "/dashboard/", "/dashboard/index.html", "/dashboard/app.js", "/dashboard/style.css"], "verbs": ["get"]}),
                ],
                None,
            ),
        ),
        (
            "clusterroles",
            role(
                "system:node-bootstrapper",
                bootstrap.clone(),
                vec![rule(
                    &["certificates.k8s.io"],
                    &["certificatesigningrequests"],
                    &["create", "get", "list", "watch"],
                )],
                None,
            ),
        ),
        (
            "clusterroles",
            role(
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                bootstrap.clone(),
                vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests/nodeclient"], &["create"])],
                None,
            ),
        ),
        (
            "clusterroles",
            role(
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                bootstrap.clone(),
                vec![rule(&["certificates.k8s.io"], &["certificatesigningrequests/selfnodeclient"], &["create"])],
                None,
            ),
        ),
        // As kubeadm binds them: holders of the default node token may ask for node
        // certificates, which are approved at once; nodes may renew their own.
        (
            "clusterrolebindings",
            binding("skiff:kubelet-bootstrap", "system:node-bootstrapper", &[crate::bootstrap::DEFAULT_GROUP]),
        ),
        (
            "clusterrolebindings",
            binding(
                "skiff:node-autoapprove-bootstrap",
                "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
                &[crate::bootstrap::DEFAULT_GROUP],
            ),
        ),
        (
            "clusterrolebindings",
            binding(
                "skiff:node-autoapprove-certificate-rotation",
                "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
                &["system:nodes"],
            ),
        ),
        ("clusterroles", role(SCHEDULER_ROLE, bootstrap.clone(), scheduler_rules(), None)),
        ("clusterroles", role(CONTROLLER_MANAGER_ROLE, bootstrap.clone(), controller_manager_rules(), None)),
        ("clusterroles", role("system:node", bootstrap.clone(), node_rules(), None)),
        ("clusterrolebindings", user_binding(SCHEDULER_ROLE, SCHEDULER_ROLE, crate::authn::SCHEDULER)),
        (
            "clusterrolebindings",
            user_binding(CONTROLLER_MANAGER_ROLE, CONTROLLER_MANAGER_ROLE, crate::authn::CONTROLLER_MANAGER),
        ),
        ("clusterrolebindings", binding("system:node", "system:node", &[crate::authn::NODES])),
        ("clusterrolebindings", binding("cluster-admin", "cluster-admin", &[MASTERS])),
        ("clusterrolebindings", binding("system:discovery", "system:discovery", &[AUTHENTICATED])),
        ("clusterrolebindings", binding("system:basic-user", "system:basic-user", &[AUTHENTICATED])),
        (
            "clusterrolebindings",
            binding("system:public-info-viewer", "system:public-info-viewer", &[AUTHENTICATED, UNAUTHENTICATED]),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User { name: name.into(), uid: String::new(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    fn res(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
            path: String::new(),
        }
    }

    fn with_defaults() -> Rbac {
        let r = Rbac::default();
        for (plural, obj) in default_policy() {
            let key = format!("/registry/{plural}/{}", obj["metadata"]["name"].as_str().unwrap());
            r.apply(&key, Some(obj));
        }
        r
    }

    #[test]
    fn view_edit_admin_by_aggregation() {
        let r = with_defaults();
        let bind = |ns: &str, name: &str, role: &str, user: &str| {
            r.apply(
                &format!("/registry/rolebindings/{ns}/{name}"),
                Some(json!({"roleRef": {"kind": "ClusterRole", "name": role}, "subjects": [{"kind": "User", "name": user}]})),
            );
        };
        bind("dev", "jane-view", "view", "jane");
        bind("dev", "bob-edit", "edit", "bob");
        let (jane, bob) = (user("jane", &[AUTHENTICATED]), user("bob", &[AUTHENTICATED]));
        assert!(r.allowed(&jane, &res("list", "", "pods", "", "dev", "")));
        assert!(r.allowed(&jane, &res("get", "apps", "deployments", "scale", "dev", "web")));
        assert!(!r.allowed(&jane, &res("get", "", "secrets", "", "dev", "db")), "view cannot read secrets");
        assert!(!r.allowed(&jane, &res("create", "", "pods", "", "dev", "")));
        assert!(!r.allowed(&jane, &res("list", "", "pods", "", "other", "")), "only in its namespace");
        assert!(r.allowed(&bob, &res("create", "", "pods", "exec", "dev", "web")), "edit includes view and exec");
        assert!(r.allowed(&bob, &res("get", "", "secrets", "", "dev", "db")));
        assert!(!r.allowed(&bob, &res("create", "rbac.authorization.k8s.io", "roles", "", "dev", "")), "admin only");
        assert!(r.allowed(&user("root", &[MASTERS]), &res("delete", "", "nodes", "", "", "n1")));
        let anon = user("system:anonymous", &[UNAUTHENTICATED]);
        let path = |p: &str| Attributes { verb: "get".into(), path: p.into(), ..Default::default() };
        assert!(r.allowed(&anon, &path("/healthz")));
        assert!(!r.allowed(&anon, &path("/api")), "discovery needs authentication");
        assert!(r.allowed(&jane, &path("/apis/apps/v1")));
        // A Role bound in its namespace; resourceNames narrow it.
        r.apply(
            "/registry/roles/dev/one-secret",
            Some(json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["db"], "verbs": ["get"]}]})),
        );
        r.apply(
            "/registry/rolebindings/dev/jane-secret",
            Some(json!({"roleRef": {"kind": "Role", "name": "one-secret"}, "subjects": [{"kind": "User", "name": "jane"}]})),
        );
        assert!(r.allowed(&jane, &res("get", "", "secrets", "", "dev", "db")));
        assert!(!r.allowed(&jane, &res("get", "", "secrets", "", "dev", "other")));
        r.apply("/registry/rolebindings/dev/jane-secret", None);
        assert!(!r.allowed(&jane, &res("get", "", "secrets", "", "dev", "db")), "a deleted binding grants nothing");
    }

    #[test]
    fn no_one_grants_what_they_do_not_hold() {
        let r = with_defaults();
        r.apply(
            "/registry/rolebindings/dev/admin",
            Some(json!({"roleRef": {"kind": "ClusterRole", "name": "admin"}, "subjects": [{"kind": "User", "name": "ann"}]})),
        );
        let ann = user("ann", &[AUTHENTICATED]);
        let binding = |role: &str| json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": role}});
        // A namespace admin may hand out edit and view in the namespace...
        assert!(r.may_write(&ann, "rolebindings", Some("dev"), &binding("edit")).is_ok());
        // ...but not cluster-admin, not even there.
        let e = r.may_write(&ann, "rolebindings", Some("dev"), &binding("cluster-admin")).unwrap_err();
        assert!(
            e.contains("is attempting to grant RBAC permissions not currently held") && e.contains("Verbs:[\"*\"]"),
            "{e}"
        );
        // A Role within what ann holds is fine; one reaching for nodes is not.
        let role = |rules: Value| json!({"metadata": {"name": "r"}, "rules": rules});
        let ok = role(json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]));
        assert!(r.may_write(&ann, "roles", Some("dev"), &ok).is_ok());
        let nodes = role(json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]));
        assert!(r.may_write(&ann, "roles", Some("dev"), &nodes).is_err());
        let all = role(json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]));
        assert!(r.may_write(&ann, "roles", Some("dev"), &all).is_err());
        // The bind verb lets someone bind a role without holding it.
        r.apply(
            "/registry/clusterroles/binder",
            Some(json!({"rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["cluster-admin"]}]})),
        );
        r.apply(
            "/registry/clusterrolebindings/ann-binder",
            Some(json!({"roleRef": {"kind": "ClusterRole", "name": "binder"}, "subjects": [{"kind": "User", "name": "ann"}]})),
        );
        assert!(r.may_write(&ann, "rolebindings", Some("dev"), &binding("cluster-admin")).is_ok());
    }

    #[test]
    fn service_accounts_and_messages() {
        let r = with_defaults();
        r.apply(
            "/registry/rolebindings/dev/sa",
            Some(json!({"roleRef": {"kind": "ClusterRole", "name": "view"}, "subjects": [{"kind": "ServiceAccount", "name": "app"}]})),
        );
        let sa = user("system:serviceaccount:dev:app", &[AUTHENTICATED]);
        assert!(r.allowed(&sa, &res("list", "", "pods", "", "dev", "")));
        assert!(!r.allowed(&user("system:serviceaccount:other:app", &[]), &res("list", "", "pods", "", "dev", "")));
        let jane = user("jane", &[]);
        assert_eq!(
            res("get", "", "secrets", "", "dev", "db").forbidden_message(&jane),
            "secrets \"db\" is forbidden: User \"jane\" cannot get resource \"secrets\" in API group \"\" in the namespace \"dev\""
        );
        assert_eq!(
            res("list", "apps", "deployments", "", "", "").forbidden_message(&jane),
            "deployments.apps is forbidden: User \"jane\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
    }
}
