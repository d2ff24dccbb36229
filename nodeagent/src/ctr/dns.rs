//! Cluster DNS on the node: a small authoritative server on the bridge's gateway
//! address (port 53, UDP), which pods' resolv.conf names, answering what the
//! Kubernetes DNS specification asks for A records:
//!
//! - `<service>.<ns>.svc.<domain>`: the ClusterIP, or for a headless Service the
//!   addresses of its ready endpoints;
//! - `<hostname>.<subdomain>.<ns>.svc.<domain>`: a pod with that `spec.hostname` and
//!   `spec.subdomain` (StatefulSet pods: `web-0.nginx.default.svc.cluster.local`);
//! - `<a-b-c-d>.<ns>.pod.<domain>`: that address.
//!
//! Other names under the cluster domain are NXDOMAIN; names outside it are REFUSED —
//! the server never forwards queries off the machine. Known names asked for other types
//! (AAAA, ...) get an empty NOERROR answer, so resolvers fall back to A.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;

const TTL: u32 = 5;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;

pub struct Dns {
    pub domain: String,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub pods: Store<Pod>,
}

/// What a name resolves to.
#[derive(Debug, PartialEq)]
enum Answer {
    Addresses(Vec<Ipv4Addr>),
    NxDomain,
    Refused,
}

/// A parsed question: the name (lowercase, no trailing dot), its type and class, and
/// where the question section ends.
fn question(msg: &[u8]) -> Option<(String, u16, u16, usize)> {
    if msg.len() < 12 || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression is not used in questions
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + len)?).to_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(i + 2)?, *msg.get(i + 3)?]);
    Some((labels.join("."), qtype, qclass, i + 4))
}

/// The reply to `msg`, or None for something that is not a query we can parse.
fn reply(msg: &[u8], resolve: impl Fn(&str) -> Answer) -> Option<Vec<u8>> {
    if msg.len() < 12 || msg[2] & 0x80 != 0 {
        return None;
    }
    let opcode = (msg[2] >> 3) & 0x0f;
    let rd = msg[2] & 0x01;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&msg[0..2]);
    let header = |rcode: u8, answers: u16, qd: u16, out: &mut Vec<u8>| {
        out.push(0x80 | (opcode << 3) | 0x04 | rd); // QR, AA, RD copied
        out.push(rcode);
        out.extend_from_slice(&qd.to_be_bytes());
        out.extend_from_slice(&answers.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
    };
    let Some((name, qtype, qclass, end)) = question(msg).filter(|_| opcode == 0) else {
        header(4, 0, 0, &mut out); // NOTIMP / FORMERR-ish: we only answer standard queries
        return Some(out);
    };
    let (rcode, addrs) = match resolve(&name) {
        Answer::Refused => (5, vec![]),
        Answer::NxDomain => (3, vec![]),
        Answer::Addresses(a) if qtype == TYPE_A && qclass == CLASS_IN => (0, a),
        Answer::Addresses(_) => (0, vec![]),
    };
    header(rcode, addrs.len() as u16, 1, &mut out);
    out.extend_from_slice(&msg[12..end]);
    for a in addrs {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name in the question
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    Some(out)
}

impl Dns {
    fn resolve(&self, name: &str) -> Answer {
        let Some(local) = name.strip_suffix(&format!(".{}", self.domain)) else {
            return if name == self.domain { Answer::Addresses(vec![]) } else { Answer::Refused };
        };
        let parts: Vec<&str> = local.split('.').collect();
        let found = match parts.as_slice() {
            [svc, ns, "svc"] => self.service(ns, svc),
            [host, sub, ns, "svc"] => self.pod_by_hostname(ns, sub, host),
            [ip, _ns, "pod"] => ip.replace('-', ".").parse::<Ipv4Addr>().ok().map(|a| vec![a]),
            ["svc"] | [_, "svc"] | ["pod"] | [_, "pod"] => Some(vec![]),
            _ => None,
        };
        match found {
            Some(a) => Answer::Addresses(a),
            None => Answer::NxDomain,
        }
    }

    fn service(&self, ns: &str, name: &str) -> Option<Vec<Ipv4Addr>> {
        let svc = self
            .services
            .state()
            .into_iter()
            .find(|s| s.metadata.namespace.as_deref() == Some(ns) && s.metadata.name.as_deref() == Some(name))?;
        let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.clone()).unwrap_or_default();
        if ip != "None" && !ip.is_empty() {
            return Some(ip.parse().ok().into_iter().collect());
        }
        // Headless: the ready endpoints.
        let mut out: Vec<Ipv4Addr> = self
            .slices
            .state()
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")).map(String::as_str)
                        == Some(name)
            })
            .flat_map(|s| s.endpoints.clone())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .flat_map(|e| e.addresses)
            .filter_map(|a| a.parse().ok())
            .collect();
        out.sort();
        out.dedup();
        Some(out)
    }

    fn pod_by_hostname(&self, ns: &str, subdomain: &str, host: &str) -> Option<Vec<Ipv4Addr>> {
        let pod = self.pods.state().into_iter().find(|p| {
            let spec = p.spec.as_ref();
            p.metadata.namespace.as_deref() == Some(ns)
                && p.metadata.deletion_timestamp.is_none()
                && spec.and_then(|s| s.subdomain.as_deref()) == Some(subdomain)
                && spec.and_then(|s| s.hostname.as_deref()) == Some(host)
        })?;
        let ip = pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()?;
        Some(vec![ip])
    }

    /// Answers on `addr` until the agent stops; waits for the address to exist first.
    pub async fn serve(self, addr: SocketAddr) -> anyhow::Result<()> {
        let socket = loop {
            match tokio::net::UdpSocket::bind(addr).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!("cluster DNS cannot bind {addr} yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        tracing::info!("cluster DNS for {} on {addr}", self.domain);
        let this = Arc::new(self);
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("cluster DNS: {e}");
                    continue;
                }
            };
            if let Some(out) = reply(&buf[..n], |name| this.resolve(name)) {
                let _ = socket.send_to(&out, from).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn answers_carry_the_question_and_a_records() {
        let q = query("Web.Default.svc.cluster.local", 1);
        let r = reply(&q, |n| {
            assert_eq!(n, "web.default.svc.cluster.local");
            Answer::Addresses(vec![Ipv4Addr::new(10, 96, 0, 7)])
        })
        .unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34], "same id");
        assert_eq!(r[2] & 0x80, 0x80, "a response");
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 96, 0, 7]);
        let r = reply(&query("nope.default.svc.cluster.local", 1), |_| Answer::NxDomain).unwrap();
        assert_eq!(r[3] & 0x0f, 3, "NXDOMAIN");
        let r = reply(&query("example.com", 1), |_| Answer::Refused).unwrap();
        assert_eq!(r[3] & 0x0f, 5, "REFUSED");
        let r = reply(&query("web.default.svc.cluster.local", 28), |_| Answer::Addresses(vec![Ipv4Addr::LOCALHOST]))
            .unwrap();
        assert_eq!((r[3] & 0x0f, u16::from_be_bytes([r[6], r[7]])), (0, 0), "AAAA: no data");
        assert!(reply(&[1, 2, 3], |_| Answer::Refused).is_none(), "garbage is ignored");
    }
}
