//! Bootstrap tokens, as kubeadm makes them: a token `<id>.<secret>` (6 and 16 characters
//! of `[a-z0-9]`) is valid while the Secret `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` holds the same secret, allows authentication
//! (`usage-bootstrap-authentication: "true"`) and has not expired. Its user is
//! `system:bootstrap:<id>` in `system:bootstrappers` and the Secret's `auth-extra-groups`.
//! A joining node uses one to ask for its certificate (a CertificateSigningRequest).

use base64::Engine;
use serde_json::{json, Value};

use crate::authn::User;

pub const SECRET_TYPE: &str = "bootstrap.kubernetes.io/token";
pub const GROUP: &str = "system:bootstrappers";
pub const NAMESPACE: &str = "kube-system";
/// The group `skiff token create` puts its tokens in; the default policy lets it ask
/// for node certificates (kubeadm's `system:bootstrappers:kubeadm:default-node-token`).
pub const DEFAULT_GROUP: &str = "system:bootstrappers:skiff:default-node-token";

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// (id, secret) of a token shaped like a bootstrap token.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| ALPHABET.contains(&b));
    (ok(id, 6) && ok(secret, 16)).then_some((id, secret))
}

/// The name of the Secret that holds token `id`.
pub fn secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// A new random token.
pub fn generate() -> String {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let pick = |n: usize| -> String {
        let mut out = String::with_capacity(n);
        while out.len() < n {
            let mut b = [0u8; 1];
            rng.fill(&mut b).expect("the system's random source works");
            // 252 = 7 * 36: no bias towards the first letters.
            if b[0] < 252 {
                out.push(ALPHABET[(b[0] % 36) as usize] as char);
            }
        }
        out
    };
    let id = pick(6);
    format!("{id}.{}", pick(16))
}

/// The Secret that makes `token` valid until `expiration` (RFC 3339), for
/// authentication, with the extra groups (each `system:bootstrappers:...`).
pub fn secret(token: &str, expiration: &str, groups: &[String], description: &str) -> Option<Value> {
    let (id, secret) = parse(token)?;
    let mut data = json!({
        "token-id": id,
        "token-secret": secret,
        "expiration": expiration,
        "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true",
    });
    if !groups.is_empty() {
        data["auth-extra-groups"] = json!(groups.join(","));
    }
    if !description.is_empty() {
        data["description"] = json!(description);
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(id), "namespace": NAMESPACE},
        "type": SECRET_TYPE,
        "stringData": data,
    }))
}

/// The user `secret` (the stored Secret object, data base64-encoded) makes of a
/// token with `id` and `given` secret at unix time `now`; None if it does not.
pub fn user(stored: &Value, id: &str, given: &str, now: i64) -> Option<User> {
    if stored["type"] != SECRET_TYPE || stored["metadata"]["deletionTimestamp"].is_string() {
        return None;
    }
    let field = |k: &str| -> Option<String> {
        let b = base64::engine::general_purpose::STANDARD.decode(stored["data"][k].as_str()?).ok()?;
        String::from_utf8(b).ok()
    };
    let want = field("token-secret")?;
    if field("token-id").as_deref() != Some(id)
        || !crate::authn::constant_time_eq(want.as_bytes(), given.as_bytes())
        || field("usage-bootstrap-authentication").as_deref() != Some("true")
    {
        return None;
    }
    if let Some(exp) = field("expiration") {
        // An expiration that cannot be read ends the token, as in Kubernetes.
        if crate::object::parse_rfc3339(&exp).is_none_or(|t| t <= now) {
            return None;
        }
    }
    let mut groups = vec![GROUP.to_string()];
    for g in field("auth-extra-groups").unwrap_or_default().split(',').map(str::trim).filter(|g| !g.is_empty()) {
        // Only groups under system:bootstrappers: may be added.
        if !g.starts_with("system:bootstrappers:") {
            return None;
        }
        groups.push(g.to_string());
    }
    groups.push(crate::authn::AUTHENTICATED.to_string());
    Some(User { name: format!("system:bootstrap:{id}"), uid: String::new(), groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(token: &str, expiration: &str, groups: &[String]) -> Value {
        let mut s = secret(token, expiration, groups, "test").unwrap();
        let data: serde_json::Map<String, Value> = s["stringData"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), json!(base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap()))))
            .collect();
        s["data"] = Value::Object(data);
        s
    }

    #[test]
    fn tokens_are_well_formed_and_random() {
        let a = generate();
        assert!(parse(&a).is_some(), "{a}");
        assert_ne!(a, generate());
        for bad in
            ["abcdef.0123456789abcdeF", "abcde.0123456789abcdef", "abcdef0123456789abcdef", "abcdef.0123456789abcde"]
        {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_token_is_its_secrets_user_until_it_expires() {
        let t = "abcdef.0123456789abcdef";
        let s = stored(t, "2030-01-01T00:00:00Z", &["system:bootstrappers:workers".into()]);
        let now = crate::object::parse_rfc3339("2029-12-31T23:59:59Z").unwrap();
        let u = user(&s, "abcdef", "0123456789abcdef", now).unwrap();
        assert_eq!(u.name, "system:bootstrap:abcdef");
        assert_eq!(u.groups, ["system:bootstrappers", "system:bootstrappers:workers", "system:authenticated"]);
        assert!(user(&s, "abcdef", "0123456789abcdeg", now).is_none(), "wrong secret");
        assert!(user(&s, "abcdef", "0123456789abcdef", now + 1).is_none(), "expired");
        let s = stored(t, "2030-01-01T00:00:00Z", &["system:masters".into()]);
        assert!(user(&s, "abcdef", "0123456789abcdef", now).is_none(), "a group outside system:bootstrappers:");
        let mut s = stored(t, "2030-01-01T00:00:00Z", &[]);
        s["type"] = json!("Opaque");
        assert!(user(&s, "abcdef", "0123456789abcdef", now).is_none(), "not a bootstrap token secret");
    }
}
