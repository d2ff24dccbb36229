//! Service load balancing on the node (what kube-proxy does in iptables mode): every
//! Service port with ready endpoints becomes a chain that picks one endpoint at random
//! (`statistic --probability 1/(n-i)`) and DNATs to it; NodePorts do the same for
//! traffic to the node's own addresses; ports without endpoints are REJECTed at once
//! instead of timing out; hairpin and NodePort traffic is masqueraded.
//!
//! All rules live in chains named `<prefix>-...` (the prefix comes from the bridge name,
//! so agents on different bridges do not collide), are recomputed from scratch on every
//! change and applied atomically with `iptables-restore --noflush`; chains no longer
//! wanted are deleted in the same transaction. The service CIDR is routed to the
//! bridge, so a packet to a VIP that no rule catches never leaves the machine.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// Where the proxy's rules go and what they may touch.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Chain name prefix (at most 8 characters).
    pub prefix: String,
    pub bridge: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    /// The bridge's address (`ip/len`), which also serves cluster DNS.
    pub gateway: Option<String>,
}

impl ProxyConfig {
    pub fn new(bridge: &str, pod_cidr: &str, service_cidr: &str, gateway: Option<String>) -> ProxyConfig {
        let prefix: String = bridge.to_uppercase().chars().filter(|c| c.is_ascii_alphanumeric()).take(8).collect();
        ProxyConfig {
            prefix,
            bridge: bridge.into(),
            pod_cidr: pod_cidr.into(),
            service_cidr: service_cidr.into(),
            gateway,
        }
    }
}

/// One service port as the rules need it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    id: String,
    vip: String,
    port: i32,
    node_port: Option<i32>,
    protocol: String,
    endpoints: Vec<(String, i32)>,
}

fn hash(s: &str) -> String {
    super::image::sha256(s.as_bytes())[7..19].to_uppercase()
}

fn ports(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Vec<Port> {
    let mut out = Vec::new();
    for svc in services {
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &svc.spec else { continue };
        // Only IPv4 addresses go into the rules (parsed, so nothing else can end up in them).
        let Some(vip) = spec.cluster_ip.as_deref().and_then(|v| v.parse::<std::net::Ipv4Addr>().ok()) else { continue };
        let vip = vip.to_string();
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        for sp in spec.ports.clone().unwrap_or_default() {
            let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
            if protocol != "TCP" && protocol != "UDP" {
                continue;
            }
            let port_name = sp.name.clone().unwrap_or_default();
            let mut endpoints = BTreeSet::new();
            for slice in slices.iter().filter(|s| {
                s.metadata.namespace.as_deref() == Some(&ns)
                    && s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")) == Some(&name)
            }) {
                let Some(target) = slice.ports.as_ref().and_then(|ps| {
                    ps.iter().find(|p| {
                        p.name.clone().unwrap_or_default() == port_name
                            && p.protocol.clone().unwrap_or_else(|| "TCP".into()) == protocol
                    })
                }) else {
                    continue;
                };
                let Some(target_port) = target.port else { continue };
                for ep in &slice.endpoints {
                    let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    if !ready {
                        continue;
                    }
                    for a in ep.addresses.iter().filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok()) {
                        endpoints.insert((a.to_string(), target_port));
                    }
                }
            }
            let id: String = format!("{ns}/{name}:{port_name}/{protocol}")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | ':' | '-' | '.' | '_'))
                .collect();
            out.push(Port {
                id,
                vip: vip.clone(),
                port: sp.port,
                node_port: sp.node_port.filter(|p| *p > 0),
                protocol: protocol.to_lowercase(),
                endpoints: endpoints.into_iter().collect(),
            });
        }
    }
    out.sort();
    out
}

/// The iptables-restore input for the nat and filter tables; `existing` are chains of
/// ours present now, deleted unless still wanted.
fn render(cfg: &ProxyConfig, ports: &[Port], existing: &BTreeSet<(String, String)>) -> String {
    let p = &cfg.prefix;
    let mut nat_chains: BTreeSet<String> =
        [format!("{p}-SERVICES"), format!("{p}-NODEPORTS"), format!("{p}-POSTROUTING"), format!("{p}-MARK-MASQ")]
            .into();
    let filter_chains: BTreeSet<String> =
        [format!("{p}-SERVICES"), format!("{p}-NODEPORTS"), format!("{p}-FORWARD")].into();
    let mut nat = vec![
        format!("-A {p}-MARK-MASQ -j MARK --or-mark 0x4000"),
        format!("-A {p}-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"),
        format!("-A {p}-POSTROUTING -j MARK --xor-mark 0x4000"),
        format!("-A {p}-POSTROUTING -j MASQUERADE"),
    ];
    let mut filter = vec![
        format!("-A {p}-FORWARD -i {} -j ACCEPT", cfg.bridge),
        format!("-A {p}-FORWARD -o {} -j ACCEPT", cfg.bridge),
    ];
    let mut node_ports = Vec::new();
    for port in ports {
        let h = hash(&port.id);
        let comment = format!("-m comment --comment \"{}\"", port.id);
        let matcher = format!("-p {proto} -m {proto}", proto = port.protocol);
        if port.endpoints.is_empty() {
            filter.push(format!(
                "-A {p}-SERVICES -d {}/32 {matcher} --dport {} {comment} -j REJECT --reject-with icmp-port-unreachable",
                port.vip, port.port
            ));
            if let Some(np) = port.node_port {
                filter.push(format!(
                    "-A {p}-NODEPORTS -m addrtype --dst-type LOCAL {matcher} --dport {np} {comment} -j REJECT --reject-with icmp-port-unreachable"
                ));
            }
            continue;
        }
        let svc = format!("{p}-SVC-{h}");
        nat_chains.insert(svc.clone());
        nat.push(format!("-A {p}-SERVICES -d {}/32 {matcher} --dport {} {comment} -j {svc}", port.vip, port.port));
        // Traffic to the VIP from outside the pod network (the node itself) is masqueraded.
        nat.push(format!(
            "-A {svc} ! -s {} -d {}/32 {matcher} --dport {} -j {p}-MARK-MASQ",
            cfg.pod_cidr, port.vip, port.port
        ));
        if let Some(np) = port.node_port {
            let ext = format!("{p}-EXT-{h}");
            nat_chains.insert(ext.clone());
            node_ports.push(format!("-A {p}-NODEPORTS {matcher} --dport {np} {comment} -j {ext}"));
            nat.push(format!("-A {ext} -j {p}-MARK-MASQ"));
            nat.push(format!("-A {ext} -j {svc}"));
        }
        let n = port.endpoints.len();
        for (i, (ip, tp)) in port.endpoints.iter().enumerate() {
            let sep = format!("{p}-SEP-{}", hash(&format!("{}/{ip}:{tp}", port.id)));
            nat_chains.insert(sep.clone());
            if i + 1 < n {
                let prob = 1.0 / (n - i) as f64;
                nat.push(format!("-A {svc} -m statistic --mode random --probability {prob:.10} -j {sep}"));
            } else {
                nat.push(format!("-A {svc} -j {sep}"));
            }
            // Hairpin: a pod reaching itself through the VIP.
            nat.push(format!("-A {sep} -s {ip}/32 -j {p}-MARK-MASQ"));
            nat.push(format!("-A {sep} {matcher} -j DNAT --to-destination {ip}:{tp}"));
        }
    }
    nat.extend(node_ports);
    // Must come last: everything addressed to the node itself may be a NodePort.
    nat.push(format!("-A {p}-SERVICES -m addrtype --dst-type LOCAL -j {p}-NODEPORTS"));

    let mut out = String::from("*nat\n");
    let stale_nat: Vec<&String> =
        existing.iter().filter(|(t, c)| t == "nat" && !nat_chains.contains(c)).map(|(_, c)| c).collect();
    for c in nat_chains.iter().chain(stale_nat.iter().copied()) {
        out += &format!(":{c} - [0:0]\n");
    }
    for r in &nat {
        out += r;
        out.push('\n');
    }
    for c in stale_nat {
        out += &format!("-X {c}\n");
    }
    out += "COMMIT\n*filter\n";
    let stale_filter: Vec<&String> =
        existing.iter().filter(|(t, c)| t == "filter" && !filter_chains.contains(c)).map(|(_, c)| c).collect();
    for c in filter_chains.iter().chain(stale_filter.iter().copied()) {
        out += &format!(":{c} - [0:0]\n");
    }
    for r in &filter {
        out += r;
        out.push('\n');
    }
    for c in stale_filter {
        out += &format!("-X {c}\n");
    }
    out += "COMMIT\n";
    out
}

/// Runs `cmd` with `args` (and `stdin`), its stdout; a failure says the command and its stderr.
pub(crate) async fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd} (apt-get install iptables iproute2)"))?;
    let mut input = child.stdin.take().context("stdin")?;
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await?;
    }
    drop(input);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Our chains present in the nat and filter tables: (table, chain).
async fn existing_chains(prefix: &str) -> anyhow::Result<BTreeSet<(String, String)>> {
    let mut out = BTreeSet::new();
    for table in ["nat", "filter"] {
        let dump = run("iptables-save", &["-t", table], None).await?;
        for line in dump.lines() {
            if let Some(c) = line.strip_prefix(':').and_then(|l| l.split_whitespace().next()) {
                if c.starts_with(&format!("{prefix}-")) {
                    out.insert((table.to_string(), c.to_string()));
                }
            }
        }
    }
    Ok(out)
}

/// The jumps from the built-in chains into ours: (table, chain, extra match).
fn jumps(cfg: &ProxyConfig) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let p = &cfg.prefix;
    let c = |target: String, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(["-m".into(), "comment".into(), "--comment".into(), format!("skiff {p}"), "-j".into(), target]);
        v
    };
    let new = ["-m", "conntrack", "--ctstate", "NEW"];
    vec![
        ("nat", "PREROUTING", c(format!("{p}-SERVICES"), &[])),
        ("nat", "OUTPUT", c(format!("{p}-SERVICES"), &[])),
        ("nat", "POSTROUTING", c(format!("{p}-POSTROUTING"), &[])),
        ("filter", "OUTPUT", c(format!("{p}-SERVICES"), &new)),
        ("filter", "FORWARD", c(format!("{p}-SERVICES"), &new)),
        ("filter", "FORWARD", c(format!("{p}-FORWARD"), &[])),
        ("filter", "INPUT", c(format!("{p}-NODEPORTS"), &new)),
    ]
}

async fn ensure_jumps(cfg: &ProxyConfig) -> anyhow::Result<()> {
    for (table, chain, rule) in jumps(cfg) {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        let check = [&["-w", "-t", table, "-C", chain][..], &rule].concat();
        if run("iptables", &check, None).await.is_err() {
            let insert = [&["-w", "-t", table, "-I", chain, "1"][..], &rule].concat();
            run("iptables", &insert, None).await?;
        }
    }
    Ok(())
}

/// The bridge must exist to route the service CIDR to it (the CNI plugin would make it
/// with the first pod); pods' packets to VIPs cross it, so it also needs br_netfilter.
async fn ensure_route(cfg: &ProxyConfig) -> anyhow::Result<()> {
    if !std::path::Path::new(&format!("/sys/class/net/{}", cfg.bridge)).exists() {
        let _ = run("ip", &["link", "add", &cfg.bridge, "type", "bridge"], None).await;
    }
    run("ip", &["link", "set", &cfg.bridge, "up"], None).await?;
    // The address the CNI plugin would give it, so cluster DNS can listen before any pod.
    if let Some(gw) = &cfg.gateway {
        run("ip", &["addr", "replace", gw, "dev", &cfg.bridge], None).await?;
    }
    run("ip", &["route", "replace", &cfg.service_cidr, "dev", &cfg.bridge], None).await?;
    // NodePorts on 127.0.0.1 need loopback-sourced packets to be routable to the bridge.
    let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{}/route_localnet", cfg.bridge), "1");
    Ok(())
}

/// Keeps the rules in step with Services and EndpointSlices until the agent stops.
pub async fn run_proxy(
    cfg: ProxyConfig,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    changed: Arc<Notify>,
) -> anyhow::Result<()> {
    let _ = services.wait_until_ready().await;
    let _ = slices.wait_until_ready().await;
    let mut applied: Option<Vec<Port>> = None;
    let mut last_check = std::time::Instant::now() - Duration::from_secs(3600);
    loop {
        let wanted = ports(&services.state(), &slices.state());
        let resync = last_check.elapsed() > Duration::from_secs(30);
        if applied.as_ref() != Some(&wanted) || resync {
            let result = async {
                ensure_route(&cfg).await?;
                let existing = existing_chains(&cfg.prefix).await?;
                run("iptables-restore", &["-w", "--noflush"], Some(&render(&cfg, &wanted, &existing))).await?;
                ensure_jumps(&cfg).await
            }
            .await;
            match result {
                Ok(()) => {
                    applied = Some(wanted);
                    last_check = std::time::Instant::now();
                }
                Err(e) => tracing::warn!("applying service rules: {e:#}"),
            }
        }
        tokio::select! {
            _ = changed.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Removes every rule and chain of ours (on `skiff reset-node`).
pub async fn remove(cfg: &ProxyConfig) -> anyhow::Result<()> {
    for (table, chain, rule) in jumps(cfg) {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        let del = [&["-w", "-t", table, "-D", chain][..], &rule].concat();
        while run("iptables", &del, None).await.is_ok() {}
    }
    let existing = existing_chains(&cfg.prefix).await?;
    if existing.is_empty() {
        return Ok(());
    }
    let mut input = String::new();
    for table in ["nat", "filter"] {
        input += &format!("*{table}\n");
        let chains: Vec<&String> = existing.iter().filter(|(t, _)| t == table).map(|(_, c)| c).collect();
        for c in &chains {
            input += &format!(":{c} - [0:0]\n");
        }
        for c in &chains {
            input += &format!("-X {c}\n");
        }
        input += "COMMIT\n";
    }
    run("iptables-restore", &["-w", "--noflush"], Some(&input)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(endpoints: &[(&str, i32)], node_port: Option<i32>) -> Port {
        Port {
            id: "default/web:/TCP".into(),
            vip: "10.96.0.20".into(),
            port: 80,
            node_port,
            protocol: "tcp".into(),
            endpoints: endpoints.iter().map(|(a, p)| (a.to_string(), *p)).collect(),
        }
    }

    #[test]
    fn endpoints_are_picked_with_falling_probabilities_and_empty_services_reject() {
        let cfg = ProxyConfig::new("skiff0", "10.88.0.0/16", "10.96.0.0/12", None);
        let three = port(&[("10.88.0.2", 8080), ("10.88.0.3", 8080), ("10.88.0.4", 8080)], Some(30080));
        let out = render(&cfg, &[three], &BTreeSet::new());
        assert!(out.contains("--probability 0.3333333333"), "{out}");
        assert!(out.contains("--probability 0.5000000000"), "{out}");
        assert_eq!(out.matches("-j DNAT --to-destination").count(), 3);
        assert!(out.contains("--dport 30080"), "{out}");
        let last = out.lines().rfind(|l| l.starts_with("-A SKIFF0-SERVICES")).unwrap();
        assert!(last.contains("--dst-type LOCAL -j SKIFF0-NODEPORTS"), "NodePorts come last: {last}");

        let stale = BTreeSet::from([("nat".to_string(), "SKIFF0-SVC-OLD".to_string())]);
        let out = render(&cfg, &[port(&[], Some(30080))], &stale);
        assert!(out.contains("-j REJECT"), "{out}");
        assert!(!out.contains("DNAT"), "{out}");
        assert!(out.contains("-X SKIFF0-SVC-OLD"), "stale chains are deleted: {out}");
    }
}
