//! ClusterIPs and NodePorts for Services, handed out from configurable ranges and never
//! twice. Each address or port taken is a marker key in the store
//! (`/registry/ranges/serviceips/<ip>`, `/registry/ranges/servicenodeports/<port>`)
//! created only if absent, so API servers sharing one store cannot hand out the same
//! one. The markers go when the Service goes, or when an update stops using them.

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use crate::status::{ApiError, ApiResult};
use crate::storage::Store;

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// The ranges Services draw from (`--service-cluster-ip-range`, `--service-node-port-range`).
#[derive(Clone, Debug)]
pub struct Ranges {
    cidr: String,
    net: u32,
    size: u32,
    ports: (u16, u16),
}

impl Default for Ranges {
    fn default() -> Ranges {
        Ranges::parse("10.96.0.0/12", "30000-32767").expect("the defaults parse")
    }
}

impl Ranges {
    pub fn parse(cidr: &str, ports: &str) -> anyhow::Result<Ranges> {
        let (ip, len) =
            cidr.split_once('/').ok_or_else(|| anyhow::anyhow!("{cidr:?} is not a CIDR like 10.96.0.0/12"))?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| anyhow::anyhow!("{cidr:?}: {ip:?} is not an IPv4 address"))?;
        let len: u32 = len.parse().ok().filter(|l| (8..=28).contains(l)).ok_or_else(|| {
            anyhow::anyhow!(
                "{cidr:?}: the prefix length must be between 8 and 28 (a service range of 16 to 2^24 addresses)"
            )
        })?;
        let size = 1u32 << (32 - len);
        let net = u32::from(ip) & !(size - 1);
        let (lo, hi) =
            ports.split_once('-').ok_or_else(|| anyhow::anyhow!("{ports:?} is not a port range like 30000-32767"))?;
        let (lo, hi): (u16, u16) = match (lo.trim().parse(), hi.trim().parse()) {
            (Ok(l), Ok(h)) if l > 0 && l <= h => (l, h),
            _ => anyhow::bail!("{ports:?} is not a port range like 30000-32767"),
        };
        Ok(Ranges { cidr: format!("{}/{len}", Ipv4Addr::from(net)), net, size, ports: (lo, hi) })
    }

    /// The address of the `kubernetes` Service: the first of the range.
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.net + 1)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.net && v < self.net + self.size - 1
    }
}

/// What an allocation took and what it let go; the caller releases `claimed` if its
/// write fails and `freed` once it succeeds.
#[derive(Default, Debug)]
pub struct Allocation {
    pub claimed: Vec<String>,
    pub freed: Vec<String>,
}

impl Allocation {
    pub async fn undo(self, store: &Store) {
        for k in self.claimed {
            let _ = store.release(&k).await;
        }
    }

    pub async fn commit(self, store: &Store) {
        for k in self.freed {
            let _ = store.release(&k).await;
        }
    }
}

/// The marker keys a stored Service holds.
pub fn held(svc: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = svc["spec"]["clusterIP"].as_str().filter(|ip| ip.parse::<Ipv4Addr>().is_ok()) {
        keys.push(format!("{IP_PREFIX}{ip}"));
    }
    for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(n) = p["nodePort"].as_u64() {
            keys.push(format!("{PORT_PREFIX}{n}"));
        }
    }
    keys
}

fn wants_node_ports(svc: &Value) -> bool {
    matches!(svc["spec"]["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

fn random_u32() -> u32 {
    u32::from_le_bytes(crate::object::random_bytes::<4>())
}

/// Fills in `svc`'s clusterIP and nodePorts, taking them in the store. `old` is the
/// stored Service an update replaces; what it holds carries over.
pub async fn allocate(store: &Store, ranges: &Ranges, svc: &mut Value, old: Option<&Value>) -> ApiResult<Allocation> {
    let mut a = Allocation::default();
    match allocate_into(store, ranges, svc, old, &mut a).await {
        Ok(()) => {
            let now = held(svc);
            if let Some(old) = old {
                a.freed = held(old).into_iter().filter(|k| !now.contains(k)).collect();
            }
            Ok(a)
        }
        Err(e) => {
            a.undo(store).await;
            Err(e)
        }
    }
}

async fn allocate_into(
    store: &Store,
    ranges: &Ranges,
    svc: &mut Value,
    old: Option<&Value>,
    a: &mut Allocation,
) -> ApiResult<()> {
    let kind = "Service";
    let name = svc["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let holder = format!("{}/{name}", svc["metadata"]["namespace"].as_str().unwrap_or_default());
    let invalid = |field: String, msg: String| ApiError::invalid(kind, "", &name, vec![(field, msg)]);
    let external = svc["spec"]["type"].as_str() == Some("ExternalName");

    // The cluster IP.
    let old_ip = old.and_then(|o| o["spec"]["clusterIP"].as_str()).filter(|s| !s.is_empty()).map(String::from);
    let asked = svc["spec"]["clusterIP"].as_str().filter(|s| !s.is_empty()).map(String::from);
    let ip = match (old_ip, asked) {
        _ if external => None,
        (Some(o), Some(n)) if o != n => {
            return Err(invalid(
                "spec.clusterIPs[0]".into(),
                format!("Invalid value: []string{{\"{n}\"}}: may not change once set"),
            ))
        }
        (Some(o), _) => Some(o),
        (_, Some(n)) if n == "None" => Some(n),
        (_, Some(n)) => {
            let parsed: Ipv4Addr = n.parse().map_err(|_| {
                invalid(
                    "spec.clusterIPs[0]".into(),
                    format!("Invalid value: \"{n}\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
                )
            })?;
            let fail = |why: String| {
                invalid(
                    "spec.clusterIPs".into(),
                    format!("Invalid value: []string{{\"{n}\"}}: failed to allocate IP {n}: {why}"),
                )
            };
            if !ranges.contains(parsed) {
                return Err(fail(format!(
                    "the provided IP ({n}) is not in the valid range. The range of valid IPs is {}",
                    ranges.cidr
                )));
            }
            let key = format!("{IP_PREFIX}{n}");
            if !store.claim(&key, &holder).await? {
                return Err(fail("provided IP is already allocated".into()));
            }
            a.claimed.push(key);
            Some(n)
        }
        (None, None) => {
            // Offset 1 is kept for the `kubernetes` Service; probe from a random start.
            let usable = ranges.size - 3;
            let start = random_u32() % usable;
            let mut found = None;
            for i in 0..usable {
                let ip = Ipv4Addr::from(ranges.net + 2 + (start + i) % usable).to_string();
                let key = format!("{IP_PREFIX}{ip}");
                if store.claim(&key, &holder).await? {
                    a.claimed.push(key);
                    found = Some(ip);
                    break;
                }
            }
            Some(found.ok_or_else(|| {
                ApiError::new(
                    500,
                    "InternalError",
                    format!("Internal error occurred: failed to allocate a serviceIP: range is full ({})", ranges.cidr),
                )
            })?)
        }
    };
    match ip {
        Some(ip) => {
            svc["spec"]["clusterIP"] = json!(ip);
            svc["spec"]["clusterIPs"] = json!([ip]);
        }
        None => {
            if let Some(s) = svc["spec"].as_object_mut() {
                s.remove("clusterIP");
                s.remove("clusterIPs");
            }
        }
    }

    // Node ports.
    let old_ports: Vec<Value> =
        old.filter(|o| wants_node_ports(o)).and_then(|o| o["spec"]["ports"].as_array().cloned()).unwrap_or_default();
    let want = wants_node_ports(svc);
    let (lo, hi) = ranges.ports;
    let Some(ports) = svc["spec"].get_mut("ports").and_then(Value::as_array_mut) else { return Ok(()) };
    for (i, p) in ports.iter_mut().enumerate() {
        if !want {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
            continue;
        }
        let held_before = |n: u64| old_ports.iter().any(|o| o["nodePort"].as_u64() == Some(n));
        let asked = p["nodePort"].as_u64().filter(|n| *n != 0);
        // An update that leaves nodePort out keeps the one the same port had.
        let asked = asked.or_else(|| {
            old_ports
                .iter()
                .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                .and_then(|o| o["nodePort"].as_u64())
        });
        let port = match asked {
            Some(n) if held_before(n) => n,
            Some(n) => {
                let field = format!("spec.ports[{i}].nodePort");
                if n < lo as u64 || n > hi as u64 {
                    return Err(invalid(
                        field,
                        format!("Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {lo}-{hi}"),
                    ));
                }
                let key = format!("{PORT_PREFIX}{n}");
                if !store.claim(&key, &holder).await? {
                    return Err(invalid(field, format!("Invalid value: {n}: provided port is already allocated")));
                }
                a.claimed.push(key);
                n
            }
            None => {
                let span = (hi - lo) as u32 + 1;
                let start = random_u32() % span;
                let mut found = None;
                for k in 0..span {
                    let n = lo as u64 + ((start + k) % span) as u64;
                    let key = format!("{PORT_PREFIX}{n}");
                    if store.claim(&key, &holder).await? {
                        a.claimed.push(key);
                        found = Some(n);
                        break;
                    }
                }
                found.ok_or_else(|| {
                    ApiError::new(
                        500,
                        "InternalError",
                        format!("Internal error occurred: failed to allocate a nodePort: range is full ({lo}-{hi})"),
                    )
                })?
            }
        };
        p["nodePort"] = json!(port);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_reject() {
        let r = Ranges::parse("10.96.5.7/12", "30000-32767").unwrap();
        assert_eq!(r.cidr, "10.96.0.0/12");
        assert_eq!(r.first_ip(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(r.contains(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!r.contains(Ipv4Addr::new(10, 112, 0, 1)));
        assert!(!r.contains(Ipv4Addr::new(10, 96, 0, 0)));
        assert!(Ranges::parse("10.96.0.0", "1-2").is_err());
        assert!(Ranges::parse("10.96.0.0/30", "1-2").is_err());
        assert!(Ranges::parse("10.96.0.0/16", "32767-30000").is_err());
    }

    #[test]
    fn held_lists_ip_and_node_ports() {
        let svc = json!({"spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "nodePort": 30001}, {"port": 81}]}});
        assert_eq!(
            held(&svc),
            vec!["/registry/ranges/serviceips/10.96.0.9", "/registry/ranges/servicenodeports/30001"]
        );
        assert!(held(&json!({"spec": {"clusterIP": "None"}})).is_empty());
    }
}
