//! What another control-plane machine needs from the first one, and how it becomes a
//! store member (`skiff init` and `skiff join --control-plane`), after kubeadm's
//! `--upload-certs`:
//!
//! - `skiff init` seals the cluster CA (certificate and key), the ServiceAccount signing
//!   key and the cluster's settings (store endpoints, service and pod ranges) with
//!   AES-256-GCM under a fresh 32-byte key, and keeps the result in the Secret
//!   `kube-system/skiff-certs`. The key is printed in the control-plane join command and
//!   kept nowhere else. The Secret is readable with a node bootstrap token and is owned
//!   by that token's Secret, so it goes when the token expires or is deleted.
//! - `skiff join --control-plane` reads it with the token, opens it with the key, adds
//!   this machine's store member to the store as a learner, and the started member is
//!   promoted once it has caught up.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::json;
use skiff_apiserver::bootstrap;

/// The Secret (in kube-system) holding the sealed [`Shared`].
pub const SECRET: &str = "skiff-certs";
/// A joining machine's store membership, kept in its data directory until promoted.
pub const STORE_JOIN: &str = "store-join.json";
/// The name of this machine's store member, kept in its data directory.
pub const STORE_NAME: &str = "store.name";

/// What every control-plane machine shares.
#[derive(Serialize, Deserialize)]
pub struct Shared {
    pub ca_crt: String,
    pub ca_key: String,
    pub sa_key: String,
    /// Client URLs of the store members (`https://host:port`).
    pub store_endpoints: Vec<String>,
    /// The API server's `--service-cluster-ip-range`.
    pub service_cidr: String,
    /// The range Nodes' pod CIDRs come from.
    pub cluster_cidr: String,
}

/// A joining store member: its id and the membership it starts with.
#[derive(Serialize, Deserialize)]
pub struct StoreJoin {
    pub id: u64,
    pub name: String,
    pub initial_cluster: String,
    /// Where the existing members are, to ask for the promotion.
    pub endpoints: Vec<String>,
}

fn unbound(key: &[u8]) -> anyhow::Result<LessSafeKey> {
    let k = UnboundKey::new(&AES_256_GCM, key).map_err(|_| anyhow::anyhow!("the certificate key must be 32 bytes"))?;
    Ok(LessSafeKey::new(k))
}

/// A new certificate key: 32 random bytes, in hex.
pub fn new_key() -> anyhow::Result<String> {
    let mut k = [0u8; 32];
    SystemRandom::new().fill(&mut k).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(k.iter().map(|b| format!("{b:02x}")).collect())
}

/// Parses a certificate key as printed by [`new_key`].
pub fn parse_key(hex: &str) -> anyhow::Result<Vec<u8>> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--certificate-key must be 64 hex digits, as `skiff init` printed it");
    }
    Ok((0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex")).collect())
}

/// nonce || ciphertext || tag.
pub fn seal(key: &[u8], plain: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let mut data = plain.to_vec();
    unbound(key)?
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(SECRET), &mut data)
        .map_err(|_| anyhow::anyhow!("cannot encrypt"))?;
    Ok([&nonce[..], &data].concat())
}

pub fn open(key: &[u8], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
    if sealed.len() < NONCE_LEN {
        bail!("the sealed certificates are truncated");
    }
    let (nonce, data) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
    let mut data = data.to_vec();
    let plain = unbound(key)?.open_in_place(nonce, Aad::from(SECRET), &mut data).map_err(|_| {
        anyhow::anyhow!(
            "the certificate key does not open the cluster's certificates (mistyped, or from another `skiff init`)"
        )
    })?;
    Ok(plain.to_vec())
}

fn read(dir: &Path, name: &str) -> anyhow::Result<String> {
    let p = dir.join(name);
    std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))
}

/// `skiff init`: seals what other control-plane machines need into the Secret, owned by
/// the Secret of `token`, readable with it; returns the certificate key.
pub async fn upload(
    client: kube::Client,
    pki: &Path,
    token: &str,
    store_endpoints: Vec<String>,
    service_cidr: &str,
    cluster_cidr: &str,
) -> anyhow::Result<String> {
    let shared = Shared {
        ca_crt: read(pki, "ca.crt")?,
        ca_key: read(pki, "ca.key")?,
        sa_key: read(pki, "sa.key")?,
        store_endpoints,
        service_cidr: service_cidr.into(),
        cluster_cidr: cluster_cidr.into(),
    };
    let key = new_key()?;
    let sealed = seal(&parse_key(&key)?, &serde_json::to_vec(&shared)?)?;
    let (id, _) = bootstrap::parse(token).context("a bootstrap token")?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), bootstrap::NAMESPACE);
    let owner = secrets.get(&bootstrap::secret_name(id)).await.context("reading the token's Secret")?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": SECRET,
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Secret", "name": owner.metadata.name, "uid": owner.metadata.uid,
            }],
        },
        "type": "Opaque",
        "data": {"sealed": base64::engine::general_purpose::STANDARD.encode(sealed)},
    }))?;
    let _ = secrets.delete(SECRET, &Default::default()).await;
    secrets.create(&PostParams::default(), &secret).await.context("storing the sealed certificates")?;

    // Bootstrap tokens may read this one Secret.
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "skiff:skiff-certs"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [SECRET], "verbs": ["get"]}],
    }))?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "skiff:skiff-certs"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "skiff:skiff-certs"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": bootstrap::DEFAULT_GROUP}],
    }))?;
    let pp = PostParams::default();
    let role = Api::<Role>::namespaced(client.clone(), bootstrap::NAMESPACE).create(&pp, &role).await.map(|_| ());
    let binding = Api::<RoleBinding>::namespaced(client, bootstrap::NAMESPACE).create(&pp, &binding).await.map(|_| ());
    for r in [role, binding] {
        match r {
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            r => r.context("letting bootstrap tokens read the sealed certificates")?,
        }
    }
    Ok(key)
}

/// `skiff join --control-plane`: the shared part, read with the bootstrap token and
/// opened with the certificate key.
pub async fn download(client: kube::Client, key: &[u8]) -> anyhow::Result<Shared> {
    let secrets: Api<Secret> = Api::namespaced(client, bootstrap::NAMESPACE);
    let s = match secrets.get(SECRET).await {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 403 => bail!(
            "the cluster has no certificates for another control-plane machine (kube-system/{SECRET}: {}); \
             they go with the token `skiff init` printed",
            e.message
        ),
        Err(e) => return Err(e).context(format!("reading kube-system/{SECRET}")),
    };
    let sealed = s.data.as_ref().and_then(|d| d.get("sealed")).context("the Secret has no sealed certificates")?;
    Ok(serde_json::from_slice(&open(key, &sealed.0)?)?)
}

/// A client of the store members at `endpoints` with this machine's certificate for the
/// API server (made from the cluster CA).
async fn store_client(pki: &Path, endpoints: &[String]) -> anyhow::Result<etcd_client::Client> {
    let files = skiff_apiserver::storage::StoreTls {
        ca_file: Some(pki.join("ca.crt")),
        cert_file: Some(pki.join("apiserver-etcd-client.crt")),
        key_file: Some(pki.join("apiserver-etcd-client.key")),
    };
    let mut opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
    if let Some(t) = files.options_named(["the CA", "the certificate", "the key"])? {
        opts = opts.with_tls(t);
    }
    Ok(etcd_client::Client::connect(endpoints, Some(opts)).await?)
}

/// Adds this machine's store member (`name`, reached by peers at `peer_url`) as a learner.
pub async fn add_member(pki: &Path, endpoints: &[String], name: &str, peer_url: &str) -> anyhow::Result<StoreJoin> {
    let mut c = store_client(pki, endpoints).await.context("reaching the cluster's store")?;
    let opts = etcd_client::MemberAddOptions::new().with_is_learner();
    let resp = c.member_add([peer_url], Some(opts)).await.context("adding this machine's store member")?;
    let id = resp.member().context("the store did not say which member it added")?.id();
    let mut parts = Vec::new();
    for m in resp.member_list() {
        let n = if m.id() == id { name.to_string() } else { m.name().to_string() };
        for u in m.peer_urls() {
            parts.push(format!("{n}={u}"));
        }
    }
    Ok(StoreJoin { id, name: name.into(), initial_cluster: parts.join(","), endpoints: endpoints.to_vec() })
}

/// Asks the existing members to promote the learner; Ok(false) while it has not caught up.
pub async fn promote(pki: &Path, join: &StoreJoin) -> anyhow::Result<bool> {
    let mut c = store_client(pki, &join.endpoints).await?;
    match c.member_promote(join.id).await {
        Ok(_) => Ok(true),
        // etcd's texts: not caught up yet, and already a voter.
        Err(e) if e.to_string().contains("in sync with leader") => Ok(false),
        Err(e) if e.to_string().contains("can only promote a learner member") => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key() {
        let key = parse_key(&new_key().unwrap()).unwrap();
        let sealed = seal(&key, b"the CA").unwrap();
        assert_eq!(open(&key, &sealed).unwrap(), b"the CA");
        let other = parse_key(&new_key().unwrap()).unwrap();
        assert!(open(&other, &sealed).unwrap_err().to_string().contains("does not open"));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(open(&key, &flipped).is_err(), "tampering is noticed");
        assert!(open(&key, &sealed[..5]).is_err());
        assert!(parse_key("abc").is_err());
        assert!(parse_key(&"g".repeat(64)).is_err());
    }
}
