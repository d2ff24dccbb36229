//! Namespaces. A live one gets what every namespace has in Kubernetes: the `default`
//! ServiceAccount (the service account controller's job) and the `kube-root-ca.crt`
//! ConfigMap with the cluster CA (the root CA publisher's), re-created if deleted.
//!
//! A namespace marked for deletion is emptied (every namespaced kind in `gc::KINDS`,
//! deleted as a collection), and once nothing is left its `kubernetes` finalizer is
//! removed through the `finalize` subresource, which lets the API server delete it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::runtime::controller::Action;

use crate::gc::{api_resource, KINDS};
use crate::{Ctx, Error};

/// Creates the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap where missing.
async fn ensure_defaults(ns: &str, ctx: &Ctx) -> Result<(), Error> {
    let create = |kind: &str, obj: serde_json::Value| {
        let (v, k, p) = match kind {
            "ServiceAccount" => ("v1", "ServiceAccount", "serviceaccounts"),
            _ => ("v1", "ConfigMap", "configmaps"),
        };
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &api_resource("", v, k, p));
        async move {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if let Some(have) = api.get_opt(&name).await? {
                // The CA bundle is put back if someone changed it (pods trust it).
                if obj.get("data").is_some() && have.data["data"] != obj["data"] {
                    let patch = serde_json::json!({"data": obj["data"]});
                    api.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
                }
                return Ok::<_, kube::Error>(());
            }
            let obj: DynamicObject = serde_json::from_value(obj).expect("a valid object");
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
    };
    create(
        "ServiceAccount",
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    )
    .await?;
    if let Some(ca) = &ctx.root_ca {
        let cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kube-root-ca.crt", "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": ca},
        });
        create("ConfigMap", cm).await?;
    }
    Ok(())
}

pub async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let name = ns.metadata.name.clone().unwrap_or_default();
    let waiting =
        ns.spec.as_ref().and_then(|s| s.finalizers.as_ref()).is_some_and(|f| f.iter().any(|x| x == "kubernetes"));
    if ns.metadata.deletion_timestamp.is_none() {
        ensure_defaults(&name, &ctx).await?;
        // Checked again now and then: the objects may be deleted by hand.
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    if !waiting {
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
