//! Namespace deletion: a namespace marked for deletion is emptied (every namespaced
//! kind in `gc::KINDS`, deleted as a collection), and once nothing is left its
//! `kubernetes` finalizer is removed through the `finalize` subresource, which lets
//! the API server delete it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::controller::Action;

use crate::gc::{api_resource, KINDS};
use crate::{Ctx, Error};

pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let waiting =
        ns.spec.as_ref().and_then(|s| s.finalizers.as_ref()).is_some_and(|f| f.iter().any(|x| x == "kubernetes"));
    if ns.metadata.deletion_timestamp.is_none() || !waiting {
        return Ok(Action::await_change());
    }
    let mut left = 0;
    for (g, v, k, p, namespaced) in KINDS {
        if !namespaced {
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &name, &api_resource(g, v, k, p));
        let n = api.list_metadata(&ListParams::default()).await?.items.len();
        if n > 0 {
            left += n;
            api.delete_collection(&DeleteParams::background(), &ListParams::default()).await?;
        }
    }
    if left > 0 {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let mut done = (*ns).clone();
    if let Some(spec) = done.spec.as_mut() {
        spec.finalizers = Some(spec.finalizers.iter().flatten().filter(|f| *f != "kubernetes").cloned().collect());
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    api.replace_subresource("finalize", &name, &PostParams::default(), &done).await?;
    Ok(Action::await_change())
}
