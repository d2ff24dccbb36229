//! ControllerRevisions: the template history of StatefulSets and DaemonSets, which
//! `kubectl rollout history|undo` read. Each revision holds
//! `{"spec": {"template": ..., "$patch": "replace"}}`, the patch that brings the
//! template back, and a revision number; going back to an older template makes its
//! revision the newest.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{pods, Ctx, Error};

/// The owner's revisions, oldest first, after making sure revision `name` holds `template`.
pub async fn ensure(
    ctx: &Ctx,
    owner: &ObjectMeta,
    kind: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    template: &PodTemplateSpec,
) -> Result<Vec<ControllerRevision>, Error> {
    let ns = pods::namespace(owner);
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ns);
    let mut revs: Vec<ControllerRevision> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| pods::controlled_by(&r.metadata, pods::uid(owner)))
        .collect();
    revs.sort_by_key(|r| r.revision);
    let newest = revs.last().map(|r| r.revision).unwrap_or(0);
    if let Some(i) = revs.iter().position(|r| pods::name(&r.metadata) == name) {
        if revs[i].revision < newest {
            let p = json!({"revision": newest + 1});
            revs[i] = api.patch(name, &PatchParams::default(), &Patch::Merge(&p)).await?;
            revs.sort_by_key(|r| r.revision);
        }
        return Ok(revs);
    }
    let mut t = serde_json::to_value(template).map_err(|e| Error(e.to_string()))?;
    t["$patch"] = json!("replace");
    let rev = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(labels),
            owner_references: Some(vec![pods::controller_ref("apps/v1", kind, owner)]),
            ..Default::default()
        },
        data: Some(RawExtension(json!({"spec": {"template": t}}))),
        revision: newest + 1,
    };
    match api.create(&PostParams::default(), &rev).await {
        Ok(r) => revs.push(r),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            return Err(Error(format!("controller revision {name} exists; retrying")))
        }
        Err(e) => return Err(e.into()),
    }
    Ok(revs)
}

/// Deletes the oldest revisions beyond `limit` that no name in `in_use` refers to.
pub async fn trim(ctx: &Ctx, ns: &str, revs: &[ControllerRevision], in_use: &[String], limit: i32) {
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ns);
    let old: Vec<&ControllerRevision> =
        revs.iter().filter(|r| !in_use.iter().any(|u| u == pods::name(&r.metadata))).collect();
    for r in old.iter().take(old.len().saturating_sub(limit.max(0) as usize)) {
        let _ = api.delete(pods::name(&r.metadata), &DeleteParams::default()).await;
    }
}

/// The template stored in a revision.
pub fn template_of(rev: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut t = rev.data.as_ref()?.0["spec"]["template"].clone();
    if let Some(m) = t.as_object_mut() {
        m.remove("$patch");
    }
    serde_json::from_value(t).ok()
}
