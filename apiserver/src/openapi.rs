//! OpenAPI v3 documents and the schema checks built on them.
//!
//! Each group-version document carries the schemas of its kinds, generated from
//! k8s-openapi's types (Kubernetes 1.33 field set, with their descriptions), in the
//! layout the real API server uses: `components.schemas` keyed by
//! `io.k8s.api.apps.v1.Deployment` and friends, references as
//! `allOf: [{$ref: "#/components/schemas/..."}]`, and each top-level kind tagged
//! with `x-kubernetes-group-version-kind`. That is what `kubectl explain` reads.
//! A PATCH operation per kind that takes `fieldValidation` makes kubectl (create,
//! apply, ...) validate on the server instead of downloading schemas.
//!
//! The same schemas find unknown fields in request bodies ([`unknown_fields`]), for
//! `fieldValidation` Strict (rejected), Warn (dropped with a warning; the default)
//! and Ignore (dropped silently), as Kubernetes does.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::api;
use k8s_openapi::schemars::generate::SchemaSettings;
use k8s_openapi::schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::registry::{self, Resource};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn all_group_versions() -> Vec<(&'static str, &'static str)> {
    let mut gvs = vec![("", "v1")];
    for (g, vs) in registry::groups() {
        gvs.extend(vs.into_iter().map(|v| (g, v)));
    }
    gvs
}

/// `/openapi/v3`: where each group-version's document is.
pub fn root() -> Value {
    let mut paths = Map::new();
    for (g, v) in all_group_versions() {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", env!("CARGO_PKG_VERSION"))}),
        );
    }
    json!({"paths": paths})
}

fn add<T: JsonSchema>(gen: &mut SchemaGenerator) -> String {
    gen.subschema_for::<T>();
    T::schema_name().into_owned()
}

/// Something done with the Rust type of one served kind (its schema, its decoding).
pub trait KindVisitor {
    type Out;
    fn visit<T: JsonSchema + serde::de::DeserializeOwned>(&mut self) -> Self::Out;
}

/// Calls `v` with the k8s-openapi type of `r`'s kind; None for kinds without one.
pub fn for_kind<V: KindVisitor>(r: &Resource, v: &mut V) -> Option<V::Out> {
    use api::{apps, autoscaling, batch, certificates, coordination, core, discovery, events, rbac, storage};
    Some(match (r.group, r.version, r.kind) {
        ("", "v1", "Namespace") => v.visit::<core::v1::Namespace>(),
        ("", "v1", "Pod") => v.visit::<core::v1::Pod>(),
        ("", "v1", "Service") => v.visit::<core::v1::Service>(),
        ("", "v1", "Endpoints") => v.visit::<core::v1::Endpoints>(),
        ("", "v1", "Secret") => v.visit::<core::v1::Secret>(),
        ("", "v1", "ConfigMap") => v.visit::<core::v1::ConfigMap>(),
        ("", "v1", "LimitRange") => v.visit::<core::v1::LimitRange>(),
        ("", "v1", "ResourceQuota") => v.visit::<core::v1::ResourceQuota>(),
        ("", "v1", "ServiceAccount") => v.visit::<core::v1::ServiceAccount>(),
        ("", "v1", "Node") => v.visit::<core::v1::Node>(),
        ("", "v1", "Event") => v.visit::<core::v1::Event>(),
        ("", "v1", "PersistentVolume") => v.visit::<core::v1::PersistentVolume>(),
        ("", "v1", "PersistentVolumeClaim") => v.visit::<core::v1::PersistentVolumeClaim>(),
        ("apps", "v1", "Deployment") => v.visit::<apps::v1::Deployment>(),
        ("apps", "v1", "ReplicaSet") => v.visit::<apps::v1::ReplicaSet>(),
        ("apps", "v1", "StatefulSet") => v.visit::<apps::v1::StatefulSet>(),
        ("apps", "v1", "DaemonSet") => v.visit::<apps::v1::DaemonSet>(),
        ("apps", "v1", "ControllerRevision") => v.visit::<apps::v1::ControllerRevision>(),
        ("certificates.k8s.io", "v1", "CertificateSigningRequest") => {
            v.visit::<certificates::v1::CertificateSigningRequest>()
        }
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => v.visit::<autoscaling::v1::HorizontalPodAutoscaler>(),
        ("autoscaling", "v2", "HorizontalPodAutoscaler") => v.visit::<autoscaling::v2::HorizontalPodAutoscaler>(),
        ("batch", "v1", "Job") => v.visit::<batch::v1::Job>(),
        ("batch", "v1", "CronJob") => v.visit::<batch::v1::CronJob>(),
        ("coordination.k8s.io", "v1", "Lease") => v.visit::<coordination::v1::Lease>(),
        ("discovery.k8s.io", "v1", "EndpointSlice") => v.visit::<discovery::v1::EndpointSlice>(),
        ("events.k8s.io", "v1", "Event") => v.visit::<events::v1::Event>(),
        ("storage.k8s.io", "v1", "StorageClass") => v.visit::<storage::v1::StorageClass>(),
        ("rbac.authorization.k8s.io", "v1", "Role") => v.visit::<rbac::v1::Role>(),
        ("rbac.authorization.k8s.io", "v1", "RoleBinding") => v.visit::<rbac::v1::RoleBinding>(),
        ("rbac.authorization.k8s.io", "v1", "ClusterRole") => v.visit::<rbac::v1::ClusterRole>(),
        ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding") => v.visit::<rbac::v1::ClusterRoleBinding>(),
        _ => return None,
    })
}

/// Registers the schema of one served kind; returns its name in `components.schemas`.
fn add_kind(gen: &mut SchemaGenerator, r: &Resource) -> Option<String> {
    struct Adder<'a>(&'a mut SchemaGenerator);
    impl KindVisitor for Adder<'_> {
        type Out = String;
        fn visit<T: JsonSchema + serde::de::DeserializeOwned>(&mut self) -> String {
            add::<T>(self.0)
        }
    }
    for_kind(r, &mut Adder(gen))
}

/// Whether `obj` decodes as its kind's type, as Kubernetes decodes every body into its
/// Go type first: a field of the wrong type (`"containers": ["x"]`) is refused here
/// instead of being stored and breaking every client that lists the kind.
pub fn check_decodes(r: &Resource, obj: &Value) -> Result<(), String> {
    struct Decoder<'a>(&'a Value);
    impl KindVisitor for Decoder<'_> {
        type Out = Result<(), String>;
        fn visit<T: JsonSchema + serde::de::DeserializeOwned>(&mut self) -> Result<(), String> {
            T::deserialize(self.0).map(|_| ()).map_err(|e| e.to_string())
        }
    }
    for_kind(r, &mut Decoder(obj)).unwrap_or(Ok(()))
}

/// One group-version: its document and, per kind, the name of its schema.
struct GroupVersion {
    doc: Value,
    kinds: BTreeMap<&'static str, String>,
}

impl GroupVersion {
    fn build(group: &'static str, version: &'static str) -> Option<GroupVersion> {
        let base = gv_path(group, version);
        let mut gen = SchemaSettings::openapi3().into_generator();
        let mut paths = Map::new();
        let mut kinds = BTreeMap::new();
        for r in registry::in_group_version(group, version) {
            if let Some(name) = add_kind(&mut gen, r) {
                kinds.insert(r.kind, name);
            }
            let path = if r.namespaced {
                format!("/{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
            } else {
                format!("/{base}/{}/{{name}}", r.plural)
            };
            let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
            let param =
                |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
            paths.insert(
                path,
                json!({"patch": {
                    "operationId": format!("patch{}", r.kind),
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": [param("dryRun"), param("fieldManager"), param("fieldValidation"), param("force")],
                    "responses": {"200": {"description": "OK"}},
                }}),
            );
        }
        if paths.is_empty() {
            return None;
        }
        let mut schemas = gen.take_definitions(true);
        for (kind, name) in &kinds {
            if let Some(s) = schemas.get_mut(name).and_then(Value::as_object_mut) {
                s.insert(
                    "x-kubernetes-group-version-kind".into(),
                    json!([{"group": group, "version": version, "kind": kind}]),
                );
            }
        }
        let doc = json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": paths,
            "components": {"schemas": schemas},
        });
        Some(GroupVersion { doc, kinds })
    }
}

fn documents() -> &'static BTreeMap<(&'static str, &'static str), GroupVersion> {
    static DOCS: OnceLock<BTreeMap<(&'static str, &'static str), GroupVersion>> = OnceLock::new();
    DOCS.get_or_init(|| {
        all_group_versions().into_iter().filter_map(|(g, v)| Some(((g, v), GroupVersion::build(g, v)?))).collect()
    })
}

/// `/openapi/v3/api/v1`, `/openapi/v3/apis/<g>/<v>`.
pub fn group_version(group: &str, version: &str) -> Option<&'static Value> {
    documents().iter().find(|((g, v), _)| *g == group && *v == version).map(|(_, d)| &d.doc)
}

/// `/openapi/v2` (JSON): the same schemas, all group-versions in one Swagger 2.0
/// document, references as `#/definitions/...`.
pub fn v2() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut defs = Map::new();
        for gv in documents().values() {
            for (name, schema) in gv.doc["components"]["schemas"].as_object().into_iter().flatten() {
                match defs.get_mut(name).and_then(Value::as_object_mut) {
                    // A kind served in several group-versions (none today) lists each.
                    Some(seen) => {
                        let extra = schema["x-kubernetes-group-version-kind"].as_array().cloned().unwrap_or_default();
                        if let Some(list) = seen.get_mut("x-kubernetes-group-version-kind").and_then(Value::as_array_mut) {
                            list.extend(extra.into_iter().filter(|g| !list.contains(g)).collect::<Vec<_>>());
                        }
                    }
                    None => {
                        defs.insert(name.clone(), schema.clone());
                    }
                }
            }
        }
        let text = Value::Object(defs).to_string().replace("#/components/schemas/", "#/definitions/");
        let defs: Value = serde_json::from_str(&text).expect("valid JSON stays valid");
        json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": defs})
    })
}

/// The schema `s` stands for once `$ref`s and single-element `allOf`s are followed.
fn resolve<'a>(schemas: &'a Map<String, Value>, mut s: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(r) = s["$ref"].as_str() {
            match r.strip_prefix("#/components/schemas/").and_then(|n| schemas.get(n)) {
                Some(t) => s = t,
                None => return s,
            }
        } else if let Some([one]) = s["allOf"].as_array().map(Vec::as_slice) {
            s = one;
        } else {
            return s;
        }
    }
    s
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(schemas: &Map<String, Value>, schema: &Value, v: &mut Value, path: &str, found: &mut Vec<String>) {
    let schema = resolve(schemas, schema);
    match v {
        Value::Object(m) => {
            if let Some(props) = schema["properties"].as_object().filter(|p| !p.is_empty()) {
                let unknown: Vec<String> = m.keys().filter(|k| !props.contains_key(*k)).cloned().collect();
                for k in unknown {
                    m.remove(&k);
                    found.push(child_path(path, &k));
                }
                for (k, child) in m.iter_mut() {
                    walk(schemas, &props[k], child, &child_path(path, k), found);
                }
            } else if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (k, child) in m.iter_mut() {
                    walk(schemas, values, child, &child_path(path, k), found);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (i, child) in items.iter_mut().enumerate() {
                    walk(schemas, item, child, &format!("{path}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}

/// Removes the fields of `obj` (an object of `r`) that `r`'s schema does not declare,
/// and returns their paths (`spec.template.spec.containers[0].imagez`), in document
/// order. Kinds without a schema are left alone.
pub fn unknown_fields(r: &Resource, obj: &mut Value) -> Vec<String> {
    let mut found = Vec::new();
    let Some(gv) = documents().get(&(r.group, r.version)) else { return found };
    let (Some(name), Some(schemas)) = (gv.kinds.get(r.kind), gv.doc["components"]["schemas"].as_object()) else {
        return found;
    };
    walk(schemas, &json!({"$ref": format!("#/components/schemas/{name}")}), obj, "", &mut found);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployments() -> &'static Resource {
        registry::find("apps", "v1", "deployments").unwrap()
    }

    #[test]
    fn every_served_kind_has_a_tagged_schema() {
        for r in registry::RESOURCES.iter().filter(|r| r.group != "metrics.k8s.io") {
            let doc = group_version(r.group, r.version).expect("a document per group-version");
            let schemas = doc["components"]["schemas"].as_object().unwrap();
            let tagged = schemas.values().any(|s| {
                s["x-kubernetes-group-version-kind"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|g| g["kind"] == r.kind && g["group"] == r.group))
            });
            assert!(tagged, "no schema for {} {}", r.api_version(), r.kind);
        }
    }

    #[test]
    fn references_point_at_schemas_in_the_same_document() {
        let doc = group_version("apps", "v1").unwrap();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(schemas.contains_key(name), "dangling reference to {name}");
        }
        assert!(schemas.contains_key("io.k8s.api.core.v1.PodSpec"));
    }

    #[test]
    fn unknown_fields_are_found_and_removed_known_ones_kept() {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "extra": 1,
            "metadata": {"name": "web", "labels": {"any-key": "v"}, "annotations": {"x": "y"}},
            "spec": {
                "replicaz": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [
                        {"name": "a", "image": "nginx", "resources": {"limits": {"cpu": "1"}}},
                        {"name": "b", "imagez": "nginx", "ports": [{"containerPort": 80, "bogus": true}]}
                    ]}
                }
            },
            "status": {"replicas": 1}
        });
        let found = unknown_fields(deployments(), &mut d);
        assert_eq!(
            found,
            vec![
                "extra",
                "spec.replicaz",
                "spec.template.spec.containers[1].imagez",
                "spec.template.spec.containers[1].ports[0].bogus"
            ]
        );
        assert!(d.get("extra").is_none() && d["spec"].get("replicaz").is_none());
        assert_eq!(d["spec"]["template"]["spec"]["containers"][1]["ports"][0], json!({"containerPort": 80}));
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"], "1");
        assert_eq!(d["metadata"]["labels"]["any-key"], "v");
        assert_eq!(d["status"]["replicas"], 1);
    }

    #[test]
    fn v2_holds_every_kind_with_v2_references() {
        let doc = v2();
        assert_eq!(doc["swagger"], "2.0");
        let text = doc.to_string();
        assert!(!text.contains("#/components/schemas/"));
        let d = &doc["definitions"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(d["x-kubernetes-group-version-kind"][0]["kind"], "Deployment");
        for part in text.split("\"#/definitions/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(doc["definitions"].get(name).is_some(), "dangling reference to {name}");
        }
    }

    #[test]
    fn free_form_values_are_not_checked() {
        let r = registry::find("apps", "v1", "controllerrevisions").unwrap();
        let mut rev = json!({"metadata": {"name": "r"}, "revision": 1, "data": {"spec": {"anything": 1}}});
        assert!(unknown_fields(r, &mut rev).is_empty());
        assert_eq!(rev["data"]["spec"]["anything"], 1);
    }
}
