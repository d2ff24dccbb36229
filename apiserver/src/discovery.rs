//! Discovery documents: legacy (`/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`) and
//! aggregated (`apidiscovery.k8s.io/v2`, chosen by the Accept header).

use serde_json::{json, Value};

use crate::registry::{self, Resource};

pub const AGGREGATED_CONTENT_TYPE: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Does the client take the aggregated v2 form?
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|a| a.contains("as=APIGroupDiscoveryList") && a.contains("v=v2") && !a.contains("v=v2beta1"))
}

fn sub_kind(r: &Resource, sub: &str) -> (String, String, String) {
    match sub {
        "scale" => ("autoscaling".into(), "v1".into(), "Scale".into()),
        "binding" => ("".into(), "v1".into(), "Binding".into()),
        "eviction" => ("policy".into(), "v1".into(), "Eviction".into()),
        _ => (r.group.into(), r.version.into(), r.kind.into()),
    }
}

fn sub_verbs(sub: &str) -> Value {
    match sub {
        "binding" | "eviction" => json!(["create"]),
        "log" => json!(["get"]),
        "exec" | "attach" | "portforward" => json!(["create", "get"]),
        _ => json!(["get", "patch", "update"]),
    }
}

pub fn api_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

pub fn api_group(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> =
        versions.iter().map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v})).collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": vs[0]})
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = registry::groups().iter().map(|(g, vs)| api_group(g, vs)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in registry::in_group_version(group, version) {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if r.in_all {
            e["categories"] = json!(["all"]);
        }
        resources.push(e);
        for sub in r.subresources {
            let (g, v, kind) = sub_kind(r, sub);
            let mut e = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": sub_verbs(sub)});
            if g != r.group || v != r.version {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            resources.push(e);
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

fn aggregated_version(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = registry::in_group_version(group, version)
        .map(|r| {
            let mut e = json!({
                "resource": r.plural,
                "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs(),
            });
            if !r.short_names.is_empty() {
                e["shortNames"] = json!(r.short_names);
            }
            if r.in_all {
                e["categories"] = json!(["all"]);
            }
            let subs: Vec<Value> = r
                .subresources
                .iter()
                .map(|s| {
                    let (g, v, k) = sub_kind(r, s);
                    json!({"subresource": s, "responseKind": {"group": g, "version": v, "kind": k}, "verbs": sub_verbs(s)})
                })
                .collect();
            if !subs.is_empty() {
                e["subresources"] = json!(subs);
            }
            e
        })
        .collect();
    json!({"version": version, "freshness": "Current", "resources": resources})
}

/// `/api` (core) or `/apis` (named groups) in the aggregated form.
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![json!({"metadata": {"creationTimestamp": null}, "versions": [aggregated_version("", "v1")]})]
    } else {
        registry::groups()
            .iter()
            .map(|(g, vs)| {
                json!({"metadata": {"name": g, "creationTimestamp": null},
                       "versions": vs.iter().map(|v| aggregated_version(g, v)).collect::<Vec<_>>()})
            })
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
