//! Endpoints and EndpointSlices for Services with a selector: every pod the selector
//! matches that has an IP, ready ones as addresses and the rest as notReadyAddresses
//! (all as addresses with `publishNotReadyAddresses`); named target ports resolved
//! per pod. Both objects carry an owner reference to their Service, so the garbage
//! collector removes them with it (Kubernetes' endpoints controller deletes its
//! Endpoints itself; the result is the same).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use crate::{labels, pods, Ctx, Error};

/// The Services in the pod's namespace whose selector matches it.
pub fn services_of(pod: &Pod, services: &kube::runtime::reflector::Store<Service>) -> Vec<ObjectRef<Service>> {
    let ns = pods::namespace(&pod.metadata);
    crate::informer::in_namespace(services, ns)
        .into_iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|sp| sp.selector.as_ref())
                .is_some_and(|sel| labels::map_matches(sel, pod.metadata.labels.as_ref()))
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// A pod's resolved ports: (name, port, protocol) per Service port.
type Ports = Vec<(String, i32, String)>;

fn resolve_port(target: Option<&IntOrString>, port: i32, pod: &Pod) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let meta = &svc.metadata;
    let (ns, name) = (pods::namespace(meta), pods::name(meta));
    let spec = svc.spec.clone().unwrap_or_default();
    let Some(selector) = spec.selector.clone().filter(|s| !s.is_empty()) else { return Ok(Action::await_change()) };
    if meta.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let publish_all = spec.publish_not_ready_addresses == Some(true);
    let svc_ports = spec.ports.clone().unwrap_or_default();

    // Group pods by their resolved ports, as Endpoints subsets do.
    let mut groups: BTreeMap<Ports, (Vec<EndpointAddress>, Vec<EndpointAddress>)> = BTreeMap::new();
    let mut slice_endpoints = Vec::new();
    let mut slice_ports: Option<Ports> = None;
    let mut matched: Vec<Arc<Pod>> = crate::informer::in_namespace(&ctx.pods, ns)
        .into_iter()
        .filter(|p| labels::map_matches(&selector, p.metadata.labels.as_ref()))
        .collect();
    matched.sort_by_key(|p| p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default());
    for p in &matched {
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty()) else { continue };
        if pods::is_terminated(p) {
            continue;
        }
        let ports: Option<Ports> = svc_ports
            .iter()
            .map(|sp| {
                resolve_port(sp.target_port.as_ref(), sp.port, p).map(|port| {
                    (sp.name.clone().unwrap_or_default(), port, sp.protocol.clone().unwrap_or_else(|| "TCP".into()))
                })
            })
            .collect();
        let Some(ports) = ports else { continue };
        let ready = pods::is_ready(p);
        let terminating = p.metadata.deletion_timestamp.is_some();
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        let target = ObjectReference {
            kind: Some("Pod".into()),
            name: p.metadata.name.clone(),
            namespace: p.metadata.namespace.clone(),
            uid: p.metadata.uid.clone(),
            ..Default::default()
        };
        slice_ports.get_or_insert_with(|| ports.clone());
        slice_endpoints.push(Endpoint {
            addresses: vec![ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(ready && !terminating),
                serving: Some(ready),
                terminating: Some(terminating),
            }),
            node_name: node.clone(),
            target_ref: Some(target.clone()),
            ..Default::default()
        });
        if terminating {
            continue;
        }
        let addr = EndpointAddress { ip, node_name: node, target_ref: Some(target), hostname: None };
        let g = groups.entry(ports).or_default();
        if ready || publish_all {
            g.0.push(addr);
        } else {
            g.1.push(addr);
        }
    }
    let subsets: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(n, port, proto)| EndpointPort {
                        name: (!n.is_empty()).then_some(n),
                        port,
                        protocol: Some(proto),
                        app_protocol: None,
                    })
                    .collect(),
            ),
        })
        .collect();
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: name.into(),
        uid: pods::uid(meta).into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };

    let ep_api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let want = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: meta.labels.clone(),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    match ep_api.get_opt(name).await? {
        None => {
            ep_api.create(&PostParams::default(), &want).await?;
        }
        Some(cur) if cur.subsets != want.subsets || cur.metadata.labels != want.metadata.labels => {
            let mut next = want;
            next.metadata.resource_version = cur.metadata.resource_version;
            ep_api.replace(name, &PostParams::default(), &next).await?;
        }
        Some(_) => {}
    }

    let slice_api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let slice_name = format!(
        "{name}-{}",
        &pods::uid(meta).chars().filter(|c| c.is_ascii_alphanumeric()).take(5).collect::<String>()
    );
    let mut slice_labels = meta.labels.clone().unwrap_or_default();
    slice_labels.insert("kubernetes.io/service-name".into(), name.into());
    slice_labels.insert("endpointslice.kubernetes.io/managed-by".into(), "endpointslice-controller.k8s.io".into());
    let want = EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name.clone()),
            namespace: Some(ns.into()),
            labels: Some(slice_labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        endpoints: slice_endpoints,
        ports: Some(
            slice_ports
                .unwrap_or_default()
                .into_iter()
                .map(|(n, port, proto)| SlicePort {
                    name: Some(n),
                    port: Some(port),
                    protocol: Some(proto),
                    app_protocol: None,
                })
                .collect(),
        ),
    };
    match slice_api.get_opt(&slice_name).await? {
        None => {
            slice_api.create(&PostParams::default(), &want).await?;
        }
        Some(cur) if cur.endpoints != want.endpoints || cur.ports != want.ports => {
            let mut next = want;
            next.metadata.resource_version = cur.metadata.resource_version;
            slice_api.replace(&slice_name, &PostParams::default(), &next).await?;
        }
        Some(_) => {}
    }
    Ok(Action::await_change())
}
