//! Resource quantities ("100m", "0.5", "128Mi", "1G", "2e3") as integers: CPU in
//! millicores, everything else in units (bytes for memory).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The value of `q` times 1000 (millis), rounded up; None if it does not parse.
pub fn milli(q: &str) -> Option<i64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (num, mult) = suffixes
        .iter()
        .find(|(s, _)| q.ends_with(s) && q.len() > s.len())
        .map(|(s, m)| (&q[..q.len() - s.len()], *m))
        .unwrap_or((q, 1.0));
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    Some((v * mult * 1000.0).ceil() as i64)
}

/// Any quantity in millis (millicores, millibytes), 0 if it does not parse.
pub fn milli_of(q: &Quantity) -> i64 {
    milli(&q.0).unwrap_or(0)
}

/// CPU in millicores.
pub fn cpu(q: &Quantity) -> i64 {
    milli(&q.0).unwrap_or(0)
}

/// Memory (or any count) in units.
pub fn units(q: &Quantity) -> i64 {
    milli(&q.0).map(|m| (m + 999) / 1000).unwrap_or(0)
}

/// A pod's requests as the scheduler counts them: the sum over its containers, or the
/// largest init container if that is more. (cpu millicores, memory bytes)
pub fn pod_requests(spec: &PodSpec) -> (i64, i64) {
    let req = |c: &Container, k: &str| -> Option<Quantity> {
        let r = c.resources.as_ref()?;
        r.requests.as_ref().and_then(|m| m.get(k)).or_else(|| r.limits.as_ref().and_then(|m| m.get(k))).cloned()
    };
    let sum = |k: &str, f: fn(&Quantity) -> i64| -> i64 {
        spec.containers.iter().filter_map(|c| req(c, k)).map(|q| f(&q)).sum()
    };
    let init = |k: &str, f: fn(&Quantity) -> i64| -> i64 {
        spec.init_containers.iter().flatten().filter_map(|c| req(c, k)).map(|q| f(&q)).max().unwrap_or(0)
    };
    (sum("cpu", cpu).max(init("cpu", cpu)), sum("memory", units).max(init("memory", units)))
}

/// cpu / memory / pods out of a capacity or allocatable map.
pub fn allocatable(m: Option<&BTreeMap<String, Quantity>>) -> (i64, i64, i64) {
    let get = |k: &str| m.and_then(|m| m.get(k));
    (get("cpu").map(cpu).unwrap_or(0), get("memory").map(units).unwrap_or(0), get("pods").map(units).unwrap_or(110))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!(milli("100m"), Some(100));
        assert_eq!(milli("0.5"), Some(500));
        assert_eq!(milli("2"), Some(2000));
        assert_eq!(units(&Quantity("128Mi".into())), 128 * 1024 * 1024);
        assert_eq!(units(&Quantity("1G".into())), 1_000_000_000);
        assert_eq!(units(&Quantity("2e3".into())), 2000);
        assert_eq!(milli("x"), None);
        assert_eq!(milli("-1"), None);
    }
}
