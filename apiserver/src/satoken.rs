//! ServiceAccount tokens: JWTs signed by the API server (ES256, key `pki/sa.key`, made on
//! first use), issued by the TokenRequest API (`serviceaccounts/<name>/token`, what
//! `kubectl create token` and the node agents call) and accepted as bearer tokens.
//!
//! A token names its ServiceAccount (and, when bound, its pod) by name and uid. It is
//! accepted while it has not expired, names this server's audience, and the objects it
//! names still exist with the same uids: deleting the pod (or the ServiceAccount) ends
//! the token at once, as Kubernetes' bound tokens do.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use serde_json::{json, Value};

/// The issuer and default audience of the tokens, as in a Kubernetes cluster whose
/// `--service-account-issuer` is the in-cluster API address.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    kid: String,
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

impl Signer {
    /// Loads `dir/sa.key` (PKCS#8, base64 in PEM armour), or makes it.
    pub fn ensure(dir: &Path) -> anyhow::Result<Signer> {
        let path = dir.join("sa.key");
        let rng = SystemRandom::new();
        let der = match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .with_context(|| format!("{} is not a PEM private key", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| anyhow::anyhow!("cannot generate the service account key"))?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
                let lines: Vec<&str> =
                    b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
                let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
                // Created private: never readable by others, not even for a moment.
                let tmp = dir.join("sa.key.tmp");
                let _ = std::fs::remove_file(&tmp);
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                std::io::Write::write_all(&mut f, pem.as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| anyhow::anyhow!("{} is not a P-256 key: {e}", path.display()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]);
        Ok(Signer { key, rng, kid })
    }

    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = self.key.sign(&self.rng, signing_input.as_bytes()).expect("ECDSA signing does not fail");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    /// The claims of a token this server signed, if the signature holds and it is
    /// within its validity and names `audience`.
    pub fn verify(&self, token: &str, audience: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref());
        public.verify(format!("{h}.{c}").as_bytes(), &sig).ok()?;
        let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
        let t = now();
        let in_time =
            claims["exp"].as_i64().is_some_and(|exp| t < exp) && claims["nbf"].as_i64().is_none_or(|nbf| t >= nbf - 60);
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == audience,
            Value::Array(a) => a.iter().any(|x| x == audience),
            _ => false,
        };
        (in_time && aud_ok && claims["iss"] == ISSUER).then_some(claims)
    }
}

/// The claims of a token for ServiceAccount `sa` (object) in `ns`, bound to `pod` (name,
/// uid) when given, valid for `seconds`.
pub fn claims(ns: &str, sa: &Value, pod: Option<(&str, &str)>, audiences: &[String], seconds: i64) -> Value {
    let t = now();
    let sa_name = sa["metadata"]["name"].as_str().unwrap_or_default();
    let mut k8s = json!({
        "namespace": ns,
        "serviceaccount": {"name": sa_name, "uid": sa["metadata"]["uid"]},
    });
    if let Some((name, uid)) = pod {
        k8s["pod"] = json!({"name": name, "uid": uid});
    }
    json!({
        "aud": audiences,
        "exp": t + seconds,
        "iat": t,
        "nbf": t,
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{ns}:{sa_name}"),
        "kubernetes.io": k8s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_tampered_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("skiff-satoken-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Signer::ensure(&dir).unwrap();
        let sa = json!({"metadata": {"name": "app", "uid": "u-1"}});
        let c = claims("dev", &sa, Some(("web", "p-1")), &[ISSUER.to_string()], 600);
        let token = s.sign(&c);
        let got = s.verify(&token, ISSUER).unwrap();
        assert_eq!(got["sub"], "system:serviceaccount:dev:app");
        assert_eq!(got["kubernetes.io"]["pod"]["uid"], "p-1");
        assert!(s.verify(&token, "other-audience").is_none());
        // The same key is loaded again from disk.
        let again = Signer::ensure(&dir).unwrap();
        assert!(again.verify(&token, ISSUER).is_some());
        // A changed claim breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let mut forged = c.clone();
        forged["sub"] = json!("system:serviceaccount:kube-system:admin");
        parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
        assert!(s.verify(&parts.join("."), ISSUER).is_none());
        // Expired.
        let old = claims("dev", &sa, None, &[ISSUER.to_string()], -1);
        assert!(s.verify(&s.sign(&old), ISSUER).is_none());
        for junk in ["", "a.b", "a.b.c", "...", "x.y.z.w"] {
            assert!(s.verify(junk, ISSUER).is_none());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
