//! Routes to the pods of the other nodes, "host-gw" style: for every other Node with a
//! pod CIDR (`spec.podCIDR`) and an InternalIP, `ip route replace <podCIDR> via
//! <InternalIP>`. A pod's packet to a pod elsewhere leaves through the node's own link
//! unchanged (no NAT, no encapsulation) and the other node hands it to its bridge.
//!
//! That needs the nodes to share a link, as flannel's host-gw backend does: the kernel
//! refuses a route through an address that is not on a directly connected network
//! ("Nexthop has invalid gateway"), which is logged once per route. The routes carry
//! protocol number 83 (`ip route show proto 83` lists them) so `skiff reset-node`
//! removes exactly them. They stay when the agent stops, like its pods.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;
use skiff_controllers::nodeipam::Cidr;
use tokio::sync::Notify;

/// The routing protocol number of the agent's routes.
pub const PROTO: &str = "83";

/// Pod CIDR -> the node address it is reached through.
type Table = BTreeMap<String, String>;

/// The routes this node wants: every other Node's pod CIDR through its InternalIP.
fn wanted(me: &str, nodes: &[Arc<Node>]) -> Table {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| {
            let cidr: Cidr = n.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()?;
            let ip: Ipv4Addr = n
                .status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")?
                .address
                .parse()
                .ok()?;
            Some((cidr.to_string(), ip.to_string()))
        })
        .collect()
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    super::proxy::run("ip", args, None).await.map(|_| ())
}

/// Keeps this node's routes to the other nodes' pods as the Nodes say.
pub struct Routes {
    me: String,
    /// What is in the kernel now, as far as this agent put it there.
    applied: Table,
    /// Routes that failed, logged once until they succeed or change.
    failed: HashSet<(String, String)>,
}

impl Routes {
    pub fn new(me: &str) -> Routes {
        Routes { me: me.into(), applied: Table::new(), failed: HashSet::new() }
    }

    /// Adds, changes and removes routes to match `nodes`; with `all`, every wanted route
    /// is written again (one removed behind the agent's back comes back).
    async fn sync(&mut self, nodes: &[Arc<Node>], all: bool) {
        let want = wanted(&self.me, nodes);
        let stale: Vec<(String, String)> = self
            .applied
            .iter()
            .filter(|(c, gw)| want.get(*c) != Some(*gw))
            .map(|(c, g)| (c.clone(), g.clone()))
            .collect();
        for (cidr, gw) in stale {
            if let Err(e) = ip(&["route", "del", &cidr, "via", &gw, "proto", PROTO]).await {
                tracing::debug!("removing the route to {cidr} via {gw}: {e:#}");
            }
            tracing::info!("removed the route to pod CIDR {cidr} via {gw}");
            self.applied.remove(&cidr);
        }
        for (cidr, gw) in &want {
            if !all && self.applied.get(cidr) == Some(gw) {
                continue;
            }
            match ip(&["route", "replace", cidr, "via", gw, "proto", PROTO]).await {
                Ok(()) => {
                    if self.applied.insert(cidr.clone(), gw.clone()).as_ref() != Some(gw) {
                        tracing::info!("routing pod CIDR {cidr} via node address {gw}");
                    }
                    self.failed.remove(&(cidr.clone(), gw.clone()));
                }
                Err(e) => {
                    if self.failed.insert((cidr.clone(), gw.clone())) {
                        tracing::warn!("cannot route pod CIDR {cidr} via {gw} (nodes must share a link): {e:#}");
                    }
                }
            }
        }
    }

    /// Follows the Nodes: a pass whenever one changes, and a full one every minute.
    pub async fn run(mut self, nodes: Store<Node>, changed: Arc<Notify>) -> anyhow::Result<()> {
        let _ = nodes.wait_until_ready().await;
        let mut full = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = changed.notified() => self.sync(&nodes.state(), false).await,
                _ = full.tick() => self.sync(&nodes.state(), true).await,
            }
        }
    }
}

/// Removes every route an agent made on this machine (`skiff reset-node`).
pub async fn remove_all() {
    let Ok(out) = super::proxy::run("ip", &["-4", "-o", "route", "show", "proto", PROTO], None).await else { return };
    for line in out.lines() {
        if let Some(dst) = line.split_whitespace().next() {
            if let Err(e) = ip(&["route", "del", dst, "proto", PROTO]).await {
                tracing::warn!("removing the route to {dst}: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Arc<Node> {
        let addresses: Vec<_> = ip.iter().map(|a| json!({"type": "InternalIP", "address": a})).collect();
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"podCIDR": cidr},
                "status": {"addresses": addresses},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn every_other_node_with_a_cidr_and_an_address_is_routed() {
        let nodes = vec![
            node("me", Some("10.88.0.0/24"), Some("192.0.2.1")),
            node("b", Some("10.88.1.0/24"), Some("192.0.2.2")),
            node("c", None, Some("192.0.2.3")),            // no CIDR yet
            node("d", Some("10.88.3.0/24"), None),         // no address yet
            node("e", Some("garbage"), Some("192.0.2.5")), // never passed to ip
            node("f", Some("10.88.5.0/24"), Some("fd00::5")),
        ];
        let want = wanted("me", &nodes);
        assert_eq!(want, Table::from([("10.88.1.0/24".into(), "192.0.2.2".into())]));
    }
}
