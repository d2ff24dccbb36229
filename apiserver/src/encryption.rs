//! Encryption at rest, configured as kube-apiserver's `--encryption-provider-config`
//! (an `EncryptionConfiguration`): for each listed resource, the first provider encrypts
//! what is written, and every provider is tried on what is read, so keys rotate by
//! putting a new key first, rewriting the objects, then dropping the old key.
//!
//! Providers: `aesgcm` (AES-GCM with a 16- or 32-byte key, a random 96-bit nonce per
//! write, and the store key as additional data, so a value cannot be moved to another
//! key) and `identity` (plain). Values are stored as `k8s:enc:aesgcm:v1:<key name>:`
//! followed by nonce, ciphertext and tag, as Kubernetes stores them. Secretbox, KMS and
//! aescbc are not supported.

use std::sync::OnceLock;

use anyhow::{bail, Context};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, NONCE_LEN};
use serde_json::Value;

enum Provider {
    Identity,
    AesGcm(Vec<(String, LessSafeKey)>),
}

/// Resources (store prefix names, e.g. `secrets`) and their providers, in order.
pub struct Encryption {
    rules: Vec<(Vec<String>, Vec<Provider>)>,
}

static CONFIG: OnceLock<Encryption> = OnceLock::new();

const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";

/// Installs the process's configuration (once, at start).
pub fn install(e: Encryption) {
    let _ = CONFIG.set(e);
}

/// `/registry/<resource>/...` → `<resource>` (`secrets`; `configmaps`; ...).
fn resource_of(key: &[u8]) -> &str {
    let key = std::str::from_utf8(key).unwrap_or_default();
    key.strip_prefix("/registry/").and_then(|r| r.split('/').next()).unwrap_or_default()
}

/// The bytes to store for `plain` at `key`.
pub fn seal(key: &[u8], plain: Vec<u8>) -> Vec<u8> {
    let Some(cfg) = CONFIG.get() else { return plain };
    match cfg.providers(resource_of(key)).and_then(|p| p.first()) {
        Some(Provider::AesGcm(keys)) => {
            let (name, k) = &keys[0];
            let nonce_bytes: [u8; NONCE_LEN] = crate::object::random_bytes();
            let mut data = plain;
            k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(key), &mut data)
                .expect("AES-GCM sealing does not fail for in-memory data");
            let mut out = Vec::with_capacity(PREFIX.len() + name.len() + 1 + NONCE_LEN + data.len());
            out.extend_from_slice(PREFIX);
            out.extend_from_slice(name.as_bytes());
            out.push(b':');
            out.extend_from_slice(&nonce_bytes);
            out.extend_from_slice(&data);
            out
        }
        Some(Provider::Identity) | None => plain,
    }
}

/// The plain bytes of a stored value: decrypted with whichever configured key it names.
pub fn open(key: &[u8], stored: &[u8]) -> Result<Vec<u8>, String> {
    let Some(rest) = stored.strip_prefix(PREFIX) else {
        // Plain values are read only where they may be: resources not encrypted, or with
        // `identity` among their providers (written before encryption was turned on).
        let providers = CONFIG.get().and_then(|c| c.providers(resource_of(key)));
        return match providers {
            Some(p) if !p.iter().any(|p| matches!(p, Provider::Identity)) => {
                Err("the value is not encrypted, and the encryption configuration has no identity provider for it"
                    .into())
            }
            _ => Ok(stored.to_vec()),
        };
    };
    let Some(colon) = rest.iter().position(|b| *b == b':') else {
        return Err("an encrypted value without a key name".into());
    };
    let (name, rest) = (String::from_utf8_lossy(&rest[..colon]).into_owned(), &rest[colon + 1..]);
    let keys = CONFIG.get().and_then(|c| c.providers(resource_of(key))).into_iter().flatten().flat_map(|p| match p {
        Provider::AesGcm(keys) => keys.iter().collect::<Vec<_>>(),
        Provider::Identity => Vec::new(),
    });
    let Some((_, k)) = keys.into_iter().find(|(n, _)| *n == name) else {
        return Err(format!("no key named {name:?} in the encryption configuration"));
    };
    if rest.len() < NONCE_LEN {
        return Err("an encrypted value too short to hold its nonce".into());
    }
    let nonce = Nonce::try_assume_unique_for_key(&rest[..NONCE_LEN]).map_err(|_| "a bad nonce".to_string())?;
    let mut data = rest[NONCE_LEN..].to_vec();
    let plain = k.open_in_place(nonce, Aad::from(key), &mut data).map_err(|_| {
        format!("the value does not decrypt with key {name:?} (tampered with, or moved from another key)")
    })?;
    Ok(plain.to_vec())
}

/// The store names (`/registry/<name>/`) a resource entry names: `secrets` or `secrets.`
/// (core), `deployments.apps`, `*.apps` (a whole group), `*.` (the core group), `*.*`.
fn store_names(entry: &str) -> Vec<String> {
    let (plural, group) = entry.split_once('.').unwrap_or((entry, ""));
    let mut out: Vec<String> = crate::registry::RESOURCES
        .iter()
        .filter(|r| (plural == "*" || r.plural == plural) && (group == "*" || r.group == group))
        .map(|r| r.storage.to_string())
        .collect();
    out.dedup();
    out
}

impl Encryption {
    /// The providers of a resource, by its store name; the first rule naming it wins.
    fn providers(&self, resource: &str) -> Option<&Vec<Provider>> {
        self.rules.iter().find(|(rs, _)| rs.iter().any(|r| r == resource)).map(|(_, p)| p)
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<Encryption> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Encryption::parse(&text).with_context(|| format!("in the encryption configuration {}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> anyhow::Result<Encryption> {
        let doc: Value = serde_yaml::from_str(text).context("not YAML")?;
        if doc["kind"] != "EncryptionConfiguration" {
            bail!("kind must be EncryptionConfiguration, not {}", doc["kind"]);
        }
        let mut rules = Vec::new();
        for (i, r) in doc["resources"].as_array().context("no resources list")?.iter().enumerate() {
            let mut names = Vec::new();
            for n in r["resources"].as_array().with_context(|| format!("resources[{i}] lists no resources"))? {
                let n = n.as_str().unwrap_or_default();
                let found = store_names(n);
                if found.is_empty() {
                    bail!("resources[{i}]: no resource {n:?} is served (write `secrets`, `deployments.apps`, `*.apps` or `*.*`)");
                }
                names.extend(found);
            }
            let mut providers = Vec::new();
            for (j, p) in r["providers"]
                .as_array()
                .with_context(|| format!("resources[{i}] has no providers"))?
                .iter()
                .enumerate()
            {
                let at = format!("resources[{i}].providers[{j}]");
                if p.get("identity").is_some() {
                    providers.push(Provider::Identity);
                } else if let Some(g) = p.get("aesgcm") {
                    let mut keys = Vec::new();
                    for k in g["keys"].as_array().with_context(|| format!("{at}.aesgcm has no keys"))? {
                        let name = k["name"].as_str().filter(|n| !n.is_empty() && !n.contains(':'));
                        let name = name.with_context(|| format!("{at}: a key needs a name without ':'"))?;
                        let secret = base64::engine::general_purpose::STANDARD
                            .decode(k["secret"].as_str().unwrap_or_default())
                            .with_context(|| format!("{at}: key {name}'s secret is not base64"))?;
                        let alg = match secret.len() {
                            16 => &AES_128_GCM,
                            32 => &AES_256_GCM,
                            n => bail!("{at}: key {name} is {n} bytes; AES-GCM keys are 16 or 32 bytes"),
                        };
                        let key = UnboundKey::new(alg, &secret).map_err(|_| anyhow::anyhow!("{at}: bad key {name}"))?;
                        keys.push((name.to_string(), LessSafeKey::new(key)));
                    }
                    if keys.is_empty() {
                        bail!("{at}.aesgcm has no keys");
                    }
                    providers.push(Provider::AesGcm(keys));
                } else {
                    bail!("{at}: unsupported provider (identity and aesgcm are)");
                }
            }
            if providers.is_empty() {
                bail!("resources[{i}] has no providers");
            }
            rules.push((names, providers));
        }
        Ok(Encryption { rules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG_A: &str = "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n- resources: [secrets]\n  providers:\n  - aesgcm:\n      keys:\n      - {name: key1, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}\n  - identity: {}\n";

    #[test]
    fn configuration_errors_are_precise() {
        assert!(Encryption::parse(CONFIG_A).is_ok());
        let bad_len = CONFIG_A.replace("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "c2hvcnQ=");
        let e = format!("{:#}", Encryption::parse(&bad_len).err().unwrap());
        assert!(e.contains("key key1 is 5 bytes"), "{e}");
        let e = format!("{:#}", Encryption::parse(&CONFIG_A.replace("aesgcm", "kms")).err().unwrap());
        assert!(e.contains("unsupported provider"), "{e}");
        let e = format!("{:#}", Encryption::parse("kind: Other").err().unwrap());
        assert!(e.contains("EncryptionConfiguration"), "{e}");
        let e = format!("{:#}", Encryption::parse(&CONFIG_A.replace("[secrets]", "[secretz]")).err().unwrap());
        assert!(e.contains("no resource \"secretz\" is served"), "{e}");
        assert_eq!(store_names("secrets."), vec!["secrets"]);
        assert_eq!(store_names("deployments.apps"), vec!["deployments"]);
        assert!(store_names("*.apps").contains(&"statefulsets".to_string()));
        assert!(!store_names("*.apps").contains(&"secrets".to_string()));
    }

    #[test]
    fn sealed_values_open_only_at_their_key() {
        install(Encryption::parse(CONFIG_A).unwrap());
        let key = b"/registry/secrets/default/db";
        let sealed = seal(key, b"{\"data\":\"hunter2\"}".to_vec());
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"), "no plaintext in the stored bytes");
        assert_eq!(open(key, &sealed).unwrap(), b"{\"data\":\"hunter2\"}");
        // Moved to another key, or changed: refused.
        assert!(open(b"/registry/secrets/default/other", &sealed).unwrap_err().contains("does not decrypt"));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open(key, &flipped).is_err());
        // Other resources stay plain; plain values still read.
        assert_eq!(seal(b"/registry/configmaps/default/x", b"{}".to_vec()), b"{}");
        assert_eq!(open(key, b"{}").unwrap(), b"{}", "identity is listed: plain values read");
        assert!(open(key, b"k8s:enc:aesgcm:v1:nokey:0123456789ab").unwrap_err().contains("no key named"));
    }
}
