//! The table of resources the API server serves. Everything generic (routing,
//! discovery, storage keys, printing) is driven from here.

#[derive(Debug)]
pub struct Resource {
    /// API group; "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The plural name used in URLs.
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// In the `all` category (`kubectl get all`).
    pub in_all: bool,
    pub subresources: &'static [&'static str],
    /// Resources that are the same stored objects seen under another version share
    /// this (e.g. HPAs in autoscaling/v1 and v2).
    pub storage: &'static str,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, as Kubernetes names resources in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        &["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
    }
}

macro_rules! res {
    ($g:expr, $v:expr, $kind:expr, $plural:expr, $singular:expr, $ns:expr, [$($short:expr),*], $all:expr, [$($sub:expr),*], $storage:expr) => {
        Resource {
            group: $g,
            version: $v,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            namespaced: $ns,
            short_names: &[$($short),*],
            in_all: $all,
            subresources: &[$($sub),*],
            storage: $storage,
        }
    };
}

pub static RESOURCES: &[Resource] = &[
    res!("", "v1", "Namespace", "namespaces", "namespace", false, ["ns"], false, ["status", "finalize"], "namespaces"),
    res!(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        true,
        ["po"],
        true,
        ["status", "binding", "eviction", "log", "exec", "attach", "portforward"],
        "pods"
    ),
    res!("", "v1", "Service", "services", "service", true, ["svc"], true, ["status"], "services"),
    res!("", "v1", "Endpoints", "endpoints", "endpoints", true, ["ep"], false, [], "endpoints"),
    res!("", "v1", "Secret", "secrets", "secret", true, [], false, [], "secrets"),
    res!("", "v1", "ConfigMap", "configmaps", "configmap", true, ["cm"], false, [], "configmaps"),
    res!("", "v1", "LimitRange", "limitranges", "limitrange", true, ["limits"], false, [], "limitranges"),
    res!(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificatesigningrequest",
        false,
        ["csr"],
        false,
        ["status", "approval"],
        "certificatesigningrequests"
    ),
    res!(
        "",
        "v1",
        "ResourceQuota",
        "resourcequotas",
        "resourcequota",
        true,
        ["quota"],
        false,
        ["status"],
        "resourcequotas"
    ),
    res!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        true,
        ["sa"],
        false,
        ["token"],
        "serviceaccounts"
    ),
    res!("", "v1", "Node", "nodes", "node", false, ["no"], false, ["status"], "nodes"),
    res!("", "v1", "Event", "events", "event", true, ["ev"], false, [], "events"),
    res!(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        false,
        ["pv"],
        false,
        ["status"],
        "persistentvolumes"
    ),
    res!(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        true,
        ["pvc"],
        false,
        ["status"],
        "persistentvolumeclaims"
    ),
    res!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        true,
        ["deploy"],
        true,
        ["status", "scale"],
        "deployments"
    ),
    res!(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        true,
        ["rs"],
        true,
        ["status", "scale"],
        "replicasets"
    ),
    res!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        true,
        ["sts"],
        true,
        ["status", "scale"],
        "statefulsets"
    ),
    res!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", true, ["ds"], true, ["status"], "daemonsets"),
    res!(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        true,
        [],
        false,
        [],
        "controllerrevisions"
    ),
    res!("batch", "v1", "Job", "jobs", "job", true, [], true, ["status"], "jobs"),
    res!("batch", "v1", "CronJob", "cronjobs", "cronjob", true, ["cj"], true, ["status"], "cronjobs"),
    res!(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        ["hpa"],
        true,
        ["status"],
        "horizontalpodautoscalers"
    ),
    res!(
        "autoscaling",
        "v1",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        true,
        ["hpa"],
        true,
        ["status"],
        "horizontalpodautoscalers"
    ),
    res!("coordination.k8s.io", "v1", "Lease", "leases", "lease", true, [], false, [], "leases"),
    res!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        true,
        [],
        false,
        [],
        "endpointslices"
    ),
    res!("events.k8s.io", "v1", "Event", "events", "event", true, ["ev"], false, [], "events"),
    res!(
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        "storageclass",
        false,
        ["sc"],
        false,
        [],
        "storageclasses"
    ),
    res!("rbac.authorization.k8s.io", "v1", "Role", "roles", "role", true, [], false, [], "roles"),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        true,
        [],
        false,
        [],
        "rolebindings"
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        false,
        [],
        false,
        [],
        "clusterroles"
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        false,
        [],
        false,
        [],
        "clusterrolebindings"
    ),
    // The resource metrics API (metrics-server's in Kubernetes): node agents write the
    // usage they measure, `kubectl top` and the HPA controller read it.
    res!("metrics.k8s.io", "v1beta1", "PodMetrics", "pods", "podmetrics", true, [], false, [], "podmetrics"),
    res!("metrics.k8s.io", "v1beta1", "NodeMetrics", "nodes", "nodemetrics", false, [], false, [], "nodemetrics"),
];

/// The groups in the order discovery lists them, each with its versions (preferred first).
pub fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) if !versions.contains(&r.version) => versions.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

pub fn in_group_version<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES.iter().filter(move |r| r.group == group && r.version == version)
}

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_is_unique_and_groups_list_preferred_versions_first() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert!(!(a.group == b.group && a.version == b.version && a.plural == b.plural), "{a:?}");
            }
        }
        let g = groups();
        let autoscaling = g.iter().find(|(g, _)| *g == "autoscaling").unwrap();
        assert_eq!(autoscaling.1, ["v2", "v1"]);
        assert_eq!(find("apps", "v1", "deployments").unwrap().kind, "Deployment");
        assert!(find("apps", "v2", "deployments").is_none());
    }
}
