//! Object metadata the server maintains (uid, creationTimestamp, generation,
//! generateName, resourceVersion) and the checks every object passes.

use serde_json::{json, Map, Value};

use crate::registry::Resource;
use crate::status::{ApiError, ApiResult};

/// RFC 3339 UTC with seconds precision, as Kubernetes writes `metav1.Time`.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    rfc3339(secs as i64)
}

pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Seconds since the epoch of an RFC 3339 UTC time written by `rfc3339`.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let days = days_from_civil(n(0..4)?, n(5..7)?, n(8..10)?);
    Some(days * 86400 + n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?)
}

// Howard Hinnant's civil calendar algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("the system random source works");
    b
}

/// A random (version 4) UUID.
pub fn uuid() -> String {
    let mut b: [u8; 16] = random_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Five characters as Kubernetes appends to a generateName (no vowels, no 0/1/3).
pub fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes::<5>().iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Is `s` a DNS-1123 subdomain (names of most objects)?
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Is `s` a DNS-1123 label (namespaces, services)?
pub fn is_dns_label(s: &str) -> bool {
    is_dns_subdomain(s) && s.len() <= 63 && !s.contains('.')
}

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

/// Why `name` cannot be one segment of a URL path (Kubernetes' path segment name rule).
fn path_segment_problem(name: &str) -> Option<&'static str> {
    match name {
        "" => Some("name or generateName is required"),
        "." | ".." => Some("may not be '.' or '..'"),
        n if n.contains('/') => Some("may not contain '/'"),
        n if n.contains('%') => Some("may not contain '%'"),
        _ => None,
    }
}

/// Validates the name and labels of `obj` (a resource of type `r`).
pub fn validate_meta(r: &Resource, obj: &Value) -> ApiResult<()> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let mut causes = Vec::new();
    let dns_label_names = matches!(r.plural, "namespaces" | "services");
    // RBAC objects only need names that work as one path segment (`system:masters`).
    if r.group == "rbac.authorization.k8s.io" {
        if let Some(msg) = path_segment_problem(name) {
            causes.push(("metadata.name".to_string(), format!("Invalid value: \"{name}\": {msg}")));
        }
    } else if dns_label_names && !is_dns_label(name) {
        causes.push(("metadata.name".to_string(), format!("Invalid value: \"{name}\": {LABEL_MSG}")));
    } else if !dns_label_names && !is_dns_subdomain(name) {
        causes.push(("metadata.name".to_string(), format!("Invalid value: \"{name}\": {SUBDOMAIN_MSG}")));
    }
    if let Some(labels) = obj["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if !valid_label_key(k) {
                causes.push((
                    "metadata.labels".to_string(),
                    format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                ));
            }
            match v.as_str() {
                Some(v) if valid_label_value(v) => {}
                _ => causes.push((
                    "metadata.labels".to_string(),
                    format!("Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"),
                )),
            }
        }
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(r.kind, r.group, name, causes))
    }
}

fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

fn valid_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain) && valid_label_value(name) && !name.is_empty()
}

/// Fills in what the server sets on create. `namespace` comes from the URL.
pub fn prepare_create(r: &Resource, obj: &mut Value, namespace: Option<&str>) -> ApiResult<()> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON or YAML object"));
    }
    check_type(r, obj)?;
    let meta =
        obj.as_object_mut().expect("checked above").entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    if let Some(ns) = namespace {
        match meta["namespace"].as_str() {
            Some(given) if given != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => meta["namespace"] = json!(ns),
        }
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    if meta["name"].as_str().is_none_or(str::is_empty) {
        match meta["generateName"].as_str() {
            Some(prefix) if !prefix.is_empty() => meta["name"] = json!(format!("{prefix}{}", name_suffix())),
            _ => {
                return Err(ApiError::invalid(
                    r.kind,
                    r.group,
                    "",
                    vec![("metadata.name".into(), "Required value: name or generateName is required".into())],
                ))
            }
        }
    }
    meta["uid"] = json!(uuid());
    meta["creationTimestamp"] = json!(now_rfc3339());
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("selfLink");
    }
    if has_generation(r) {
        meta["generation"] = json!(1);
    }
    // Status is the server's and the controllers' to write, through the status
    // subresource; what a client sends on create is dropped, as Kubernetes does.
    if r.subresources.contains(&"status") {
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    obj["apiVersion"] = json!(r.api_version());
    obj["kind"] = json!(r.kind);
    validate_meta(r, obj)
}

/// Kinds whose spec changes bump `metadata.generation`.
pub fn has_generation(r: &Resource) -> bool {
    !matches!(r.plural, "events" | "secrets" | "configmaps" | "endpoints" | "leases" | "endpointslices")
}

/// The apiVersion and kind of a body, when given, must match the URL's resource.
pub fn check_type(r: &Resource, obj: &Value) -> ApiResult<()> {
    if let Some(v) = obj.get("apiVersion").and_then(Value::as_str) {
        let same_group = match v.split_once('/') {
            Some((g, _)) => g == r.group,
            None => r.group.is_empty(),
        };
        if !same_group {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                r.api_version()
            )));
        }
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str) {
        if k != r.kind {
            return Err(ApiError::bad_request(format!(
                "the object provided is unrecognized (must be of type {}): kind {k}",
                r.kind
            )));
        }
    }
    Ok(())
}

/// Carries over what a client may not change on update and bumps the generation when
/// anything but metadata and status changed.
pub fn prepare_update(r: &Resource, new: &mut Value, old: &Value) -> ApiResult<()> {
    check_type(r, new)?;
    if !new["metadata"].is_object() {
        new["metadata"] = json!({});
    }
    for field in ["uid", "creationTimestamp", "namespace", "deletionTimestamp", "deletionGracePeriodSeconds"] {
        match old["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if new["metadata"]["name"] != old["metadata"]["name"] {
        return Err(ApiError::bad_request("the name of the object cannot be changed"));
    }
    new["apiVersion"] = json!(r.api_version());
    new["kind"] = json!(r.kind);
    if has_generation(r) {
        let gen = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let changed = !same_spec(new, old);
        new["metadata"]["generation"] = json!(if changed { gen + 1 } else { gen });
    }
    validate_meta(r, new)
}

/// A Node's pod CIDRs may be set once (by the controller-manager or the node's agent)
/// and never changed: pods and other nodes' routes depend on them.
pub fn keep_pod_cidrs(new: &Value, old: &Value) -> ApiResult<()> {
    let cidrs = |n: &Value| -> Vec<Value> {
        let list = n["spec"]["podCIDRs"].as_array().cloned().unwrap_or_default();
        match (list.is_empty(), n["spec"]["podCIDR"].as_str()) {
            (true, Some(one)) if !one.is_empty() => vec![json!(one)],
            _ => list,
        }
    };
    let held = cidrs(old);
    if held.is_empty() || cidrs(new) == held {
        return Ok(());
    }
    let name = new["metadata"]["name"].as_str().unwrap_or_default();
    let msg = "Forbidden: node updates may not change podCIDR except from \"\" to valid";
    Err(ApiError::invalid("Node", "", name, vec![("spec.podCIDRs".into(), msg.into())]))
}

/// Whether two objects are the same but for metadata and status (what generation
/// tracks). Compared in place: pods and their templates are big, and every update asks.
fn same_spec(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return a == b };
    let tracked = |k: &String| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind");
    a.keys().filter(|k| tracked(k)).count() == b.keys().filter(|k| tracked(k)).count()
        && a.iter().filter(|(k, _)| tracked(k)).all(|(k, v)| b.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_pod_cidr_is_set_once() {
        let node = |cidrs: Value| json!({"metadata": {"name": "n1"}, "spec": cidrs});
        let none = node(json!({}));
        let a = node(json!({"podCIDR": "10.88.0.0/24", "podCIDRs": ["10.88.0.0/24"]}));
        let b = node(json!({"podCIDR": "10.88.1.0/24", "podCIDRs": ["10.88.1.0/24"]}));
        assert!(keep_pod_cidrs(&a, &none).is_ok(), "from nothing to a CIDR");
        assert!(keep_pod_cidrs(&a, &a).is_ok());
        assert!(keep_pod_cidrs(&a, &node(json!({"podCIDR": "10.88.0.0/24"}))).is_ok(), "the one podCIDR counts");
        for changed in [&b, &none] {
            let e = keep_pod_cidrs(changed, &a).unwrap_err();
            assert_eq!(e.code, 422);
            assert_eq!(
                e.message,
                "Node \"n1\" is invalid: spec.podCIDRs: Forbidden: node updates may not change podCIDR except from \"\" to valid"
            );
        }
    }

    #[test]
    fn times_round_trip_and_match_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(parse_rfc3339("2024-02-29T12:00:00Z").map(rfc3339).as_deref(), Some("2024-02-29T12:00:00Z"));
    }

    #[test]
    fn names_and_uids() {
        assert!(is_dns_subdomain("web-1.example"));
        assert!(!is_dns_subdomain("Web"));
        assert!(!is_dns_label("a.b"));
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid());
        assert_eq!(name_suffix().len(), 5);
        assert!(valid_label_key("app.kubernetes.io/name"));
        assert!(!valid_label_key("-bad"));
    }
}
