//! Node IPAM (kube-controller-manager's range allocator, on with `--allocate-node-cidrs`):
//! every Node without a pod CIDR gets the lowest free block of `--node-cidr-mask-size`
//! bits from `--cluster-cidr`, written to `spec.podCIDR` and `spec.podCIDRs`. The node
//! agent wires its pods from that block and routes the other Nodes' blocks to their
//! addresses.
//!
//! Nothing is kept but the Nodes themselves: the blocks they hold (given earlier, or set
//! by an agent started with `--pod-cidr`) are used, and a deleted Node's block is free
//! again. When the range is used up, a Node waiting for a block gets a `CIDRNotAvailable`
//! event, as Kubernetes records it, and gets a block once one is freed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;

use crate::Ctx;

/// An IPv4 network, `a.b.c.d/len`, with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub net: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    fn mask(len: u8) -> u32 {
        u32::MAX.checked_shl(32 - len as u32).unwrap_or(0)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.len) == u32::from(self.net)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    /// Parses `10.88.0.0/16`; host bits are cleared, as Go's net.ParseCIDR does.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an IPv4 CIDR such as 10.88.0.0/16");
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
        Ok(Cidr { net: Ipv4Addr::from(u32::from(ip) & Cidr::mask(len)), len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// The blocks of `--cluster-cidr` handed to Nodes.
#[derive(Clone, Debug)]
pub struct Settings {
    pub cluster_cidr: Cidr,
    /// Prefix length of each Node's block (`--node-cidr-mask-size`).
    pub mask: u8,
}

impl Settings {
    /// Checks the two flags together, with kube-controller-manager's limits: a block at
    /// least as long as the cluster's prefix, at most 16 bits longer (65,536 blocks), and
    /// room for a gateway and pods in each.
    pub fn new(cluster_cidr: &str, mask: u8) -> Result<Settings, String> {
        let cluster_cidr: Cidr = cluster_cidr.parse().map_err(|e| format!("--cluster-cidr: {e}"))?;
        if mask < cluster_cidr.len || mask > 30 {
            return Err(format!(
                "--node-cidr-mask-size {mask} must be between the cluster CIDR's prefix length ({}) and 30",
                cluster_cidr.len
            ));
        }
        if mask - cluster_cidr.len > 16 {
            return Err(format!(
                "--node-cidr-mask-size {mask} is more than 16 bits longer than --cluster-cidr {cluster_cidr}"
            ));
        }
        Ok(Settings { cluster_cidr, mask })
    }

    fn blocks(&self) -> u32 {
        1 << (self.mask - self.cluster_cidr.len)
    }

    fn block(&self, i: u32) -> Cidr {
        let net = u32::from(self.cluster_cidr.net) + (i << (32 - self.mask as u32));
        Cidr { net: Ipv4Addr::from(net), len: self.mask }
    }

    /// Which block `cidr` is, if it is one of ours.
    fn index(&self, cidr: &Cidr) -> Option<u32> {
        (cidr.len == self.mask && self.cluster_cidr.contains(cidr.net))
            .then(|| (u32::from(cidr.net) - u32::from(self.cluster_cidr.net)) >> (32 - self.mask as u32))
    }

    /// The lowest block not in `used`.
    fn first_free(&self, used: &BTreeSet<u32>) -> Option<u32> {
        (0..self.blocks()).find(|i| !used.contains(i))
    }
}

fn pod_cidr(n: &Node) -> Option<&str> {
    n.spec.as_ref()?.pod_cidr.as_deref().filter(|c| !c.is_empty())
}

/// What one pass decides: for each Node that needs a block, the block (or None when
/// the range is used up). `pending` are blocks given in earlier passes that the cache
/// does not show yet.
fn plan(s: &Settings, nodes: &[Arc<Node>], pending: &HashMap<String, Cidr>) -> Vec<(String, Option<Cidr>)> {
    let mut used: BTreeSet<u32> = nodes
        .iter()
        .filter_map(|n| pod_cidr(n)?.parse::<Cidr>().ok())
        .chain(pending.values().copied())
        .filter_map(|c| s.index(&c))
        .collect();
    let mut waiting: Vec<&Arc<Node>> =
        nodes.iter().filter(|n| pod_cidr(n).is_none() && !pending.contains_key(&name(n))).collect();
    // Oldest first, so a full range serves Nodes in the order they came.
    waiting.sort_by_key(|n| (n.metadata.creation_timestamp.as_ref().map(|t| t.0), name(n)));
    waiting
        .into_iter()
        .map(|n| {
            let block = s.first_free(&used);
            if let Some(i) = block {
                used.insert(i);
            }
            (name(n), block.map(|i| s.block(i)))
        })
        .collect()
}

fn name(n: &Node) -> String {
    n.metadata.name.clone().unwrap_or_default()
}

/// Gives Nodes their blocks whenever `changes` shows a Node (and every few seconds).
pub async fn run<S>(ctx: Arc<Ctx>, nodes: Store<Node>, changes: S, settings: Settings)
where
    S: Stream + Send + Unpin,
{
    let mut changes = changes;
    let _ = nodes.wait_until_ready().await;
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut pending: HashMap<String, Cidr> = HashMap::new();
    let mut reported: HashSet<String> = HashSet::new();
    tracing::info!(
        "allocating node pod CIDRs of /{} from {} ({} blocks)",
        settings.mask,
        settings.cluster_cidr,
        settings.blocks()
    );
    loop {
        let state = nodes.state();
        // A block given earlier is pending until the cache shows it, or its Node is gone.
        pending.retain(|n, _| state.iter().any(|x| &name(x) == n && pod_cidr(x).is_none()));
        reported.retain(|n| state.iter().any(|x| &name(x) == n && pod_cidr(x).is_none()));
        for (node, block) in plan(&settings, &state, &pending) {
            let Some(block) = block else {
                if reported.insert(node.clone()) {
                    if let Some(n) = state.iter().find(|x| name(x) == node) {
                        tracing::warn!("no pod CIDR left in {} for node {node}", settings.cluster_cidr);
                        let msg = format!("Node {node} status is now: CIDRNotAvailable");
                        ctx.recorder.record(n.as_ref(), "Normal", "CIDRNotAvailable", msg).await;
                    }
                }
                continue;
            };
            let rv = state.iter().find(|x| name(x) == node).and_then(|x| x.metadata.resource_version.clone());
            // The resourceVersion makes this a compare-and-set: a Node changed meanwhile
            // (by its agent, say) is looked at again on the next pass.
            let patch = json!({
                "metadata": {"resourceVersion": rv},
                "spec": {"podCIDR": block.to_string(), "podCIDRs": [block.to_string()]},
            });
            match api.patch(&node, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    tracing::info!("node {node} gets pod CIDR {block}");
                    pending.insert(node, block);
                }
                Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                Err(e) => tracing::warn!("setting the pod CIDR of node {node}: {e}"),
            }
        }
        tokio::select! {
            _ = changes.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, created: i64) -> Arc<Node> {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": k8s_openapi::jiff::Timestamp::from_second(created).unwrap()},
            "spec": {},
        }))
        .unwrap();
        n.spec.as_mut().unwrap().pod_cidr = cidr.map(String::from);
        Arc::new(n)
    }

    #[test]
    fn flags_are_checked_as_kube_controller_manager_does() {
        let s = Settings::new("10.88.7.9/16", 24).unwrap();
        assert_eq!(s.cluster_cidr.to_string(), "10.88.0.0/16", "host bits are cleared");
        assert_eq!(s.blocks(), 256);
        assert!(Settings::new("10.88.0.0/16", 12).unwrap_err().contains("between"));
        assert!(Settings::new("10.88.0.0/16", 31).unwrap_err().contains("between"));
        assert!(Settings::new("10.0.0.0/8", 25).unwrap_err().contains("16 bits"));
        assert!(Settings::new("10.88.0.0", 24).unwrap_err().contains("--cluster-cidr"));
        assert!(Settings::new("fd00::/64", 80).is_err());
    }

    #[test]
    fn nodes_get_the_lowest_free_blocks_in_the_order_they_came() {
        let s = Settings::new("10.88.0.0/22", 24).unwrap();
        // b holds the second block (from an earlier run or its agent's --pod-cidr); a
        // foreign CIDR outside the range takes nothing.
        let nodes = vec![
            node("c", None, 30),
            node("b", Some("10.88.1.0/24"), 10),
            node("a", None, 20),
            node("x", Some("192.168.0.0/24"), 5),
        ];
        let got = plan(&s, &nodes, &HashMap::new());
        let want = vec![
            ("a".to_string(), Some("10.88.0.0/24".parse().unwrap())),
            ("c".to_string(), Some("10.88.2.0/24".parse().unwrap())),
        ];
        assert_eq!(got, want);

        // A block given but not yet seen in the cache is not given twice.
        let pending = HashMap::from([("a".to_string(), "10.88.0.0/24".parse().unwrap())]);
        let got = plan(&s, &nodes, &pending);
        assert_eq!(got, vec![("c".to_string(), Some("10.88.2.0/24".parse().unwrap()))]);
    }

    #[test]
    fn a_full_range_makes_nodes_wait_until_a_block_is_freed() {
        let s = Settings::new("10.88.0.0/23", 24).unwrap();
        let mut nodes =
            vec![node("a", Some("10.88.0.0/24"), 1), node("b", Some("10.88.1.0/24"), 2), node("c", None, 3)];
        assert_eq!(plan(&s, &nodes, &HashMap::new()), vec![("c".to_string(), None)]);
        nodes.remove(0); // a is deleted: its block is free again
        assert_eq!(plan(&s, &nodes, &HashMap::new()), vec![("c".to_string(), Some("10.88.0.0/24".parse().unwrap()))]);
    }
}
