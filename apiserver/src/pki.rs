//! The API server's certificates under `<data-dir>/pki`, generated on first start:
//! a self-signed CA, a serving certificate for the bind address, and an admin client
//! certificate (CN admin, O system:masters) that `<data-dir>/admin.kubeconfig` uses.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What `skiff join --ca-hash` checks, as kubeadm's `--discovery-token-ca-cert-hash`:
/// `sha256:` and the hex SHA-256 of the CA certificate's subjectPublicKeyInfo (PEM in).
pub fn ca_hash(ca_pem: &[u8]) -> Option<String> {
    let der = CertificateDer::pem_slice_iter(ca_pem).next()?.ok()?;
    let spki = skiff_x509::public_key_info(der.as_ref())?;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    Some(format!("sha256:{}", digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// The `cluster-info` ConfigMap of kube-public, as kubeadm publishes it: a kubeconfig
/// with the API server's address and the CA, readable without credentials, so that a
/// joining machine can fetch the CA and check it against the hash it was given.
pub fn cluster_info(ca_pem: &[u8], server: &str) -> serde_json::Value {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {ca}\n    server: {server}\ncontexts: []\ncurrent-context: \"\"\nusers: []\n"
    );
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": kubeconfig},
    })
}

/// The cluster CA's certificate parameters (its subject and uses).
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "skiff-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(ca)
}

pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates what is missing of the CA, the API server's serving certificate and the
    /// admin's client certificate. `ip` goes into the serving certificate's names with
    /// `localhost` and 127.0.0.1. A control-plane machine that joins brings the CA (and
    /// so gets only the other two made here).
    pub fn ensure(data_dir: &Path, ip: IpAddr) -> anyhow::Result<Pki> {
        let pki = Pki { dir: data_dir.join("pki") };
        std::fs::create_dir_all(&pki.dir).with_context(|| format!("cannot create {}", pki.dir.display()))?;
        let write = |name: &str, text: String| -> anyhow::Result<()> {
            let p = pki.path(name);
            std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
            if name.ends_with(".key") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(())
        };
        if !pki.path("ca.crt").exists() {
            let ca_key = KeyPair::generate()?;
            let ca_cert = ca_params()?.self_signed(&ca_key)?;
            write("ca.key", ca_key.serialize_pem())?;
            // Last: its presence means the CA is complete.
            write("ca.crt", ca_cert.pem())?;
        }
        let issuer = pki.issuer()?;
        if !pki.path("apiserver.crt").exists() {
            let server_key = KeyPair::generate()?;
            let mut server = CertificateParams::new(vec!["localhost".to_string(), "kubernetes".to_string()])?;
            server.distinguished_name.push(DnType::CommonName, "skiff-apiserver");
            let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
            if !ip.is_unspecified() && !ips.contains(&ip) {
                ips.push(ip);
            }
            server.subject_alt_names.extend(ips.into_iter().map(SanType::IpAddress));
            server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let server_cert = server.signed_by(&server_key, issuer.cert(), issuer.key())?;
            write("apiserver.key", server_key.serialize_pem())?;
            write("apiserver.crt", server_cert.pem())?;
        }
        if !pki.path("admin.crt").exists() {
            let admin_key = KeyPair::generate()?;
            let mut admin = CertificateParams::new(Vec::<String>::new())?;
            admin.distinguished_name.push(DnType::CommonName, "admin");
            admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
            admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let admin_cert = admin.signed_by(&admin_key, issuer.cert(), issuer.key())?;
            write("admin.key", admin_key.serialize_pem())?;
            write("admin.crt", admin_cert.pem())?;
        }
        Ok(pki)
    }

    /// `<name>.crt` and `<name>.key` in the PKI directory, for `CN=common_name` and the
    /// given IP addresses, for server and client use (`server`) or client use only;
    /// made once, kept across restarts.
    pub fn ensure_pair(&self, name: &str, common_name: &str, ips: &[IpAddr], server: bool) -> anyhow::Result<()> {
        let (crt, key_path) = (self.path(&format!("{name}.crt")), self.path(&format!("{name}.key")));
        if crt.exists() && key_path.exists() {
            return Ok(());
        }
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(if server { vec!["localhost".to_string()] } else { Vec::new() })?;
        p.distinguished_name.push(DnType::CommonName, common_name);
        let mut all = vec![IpAddr::from([127, 0, 0, 1])];
        all.extend(ips.iter().copied().filter(|ip| !ip.is_unspecified()));
        all.sort();
        all.dedup();
        if server {
            p.subject_alt_names.extend(all.into_iter().map(SanType::IpAddress));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let issuer = self.issuer()?;
        let cert = p.signed_by(&key, issuer.cert(), issuer.key())?;
        std::fs::write(&key_path, key.serialize_pem())
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(&crt, cert.pem()).with_context(|| format!("cannot write {}", crt.display()))?;
        Ok(())
    }

    /// The CA as an issuer of certificates: its key, and a certificate with the same
    /// subject and key as `ca.crt` (what signing needs from the issuer).
    pub fn issuer(&self) -> anyhow::Result<crate::csr::Issuer> {
        let p = self.path("ca.key");
        let pem = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
        let key = KeyPair::from_pem(&pem).with_context(|| format!("{} is not a private key", p.display()))?;
        let cert = ca_params()?.self_signed(&key)?;
        Ok(crate::csr::Issuer::new(cert, key))
    }

    /// TLS for the server: its certificate, and client certificates checked against
    /// the CA when a client offers one.
    pub fn server_config(&self) -> anyhow::Result<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<CertificateDer> =
            CertificateDer::pem_file_iter(self.path("apiserver.crt"))?.collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(self.path("apiserver.key"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.crt"))? {
            roots.add(c?)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// Writes a kubeconfig for the admin user that reaches the server at `server`.
    pub fn write_kubeconfig(&self, path: &Path, server: &str) -> anyhow::Result<()> {
        let read = |name: &str| -> anyhow::Result<Vec<u8>> {
            let p = self.path(name);
            std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
        };
        self.write_kubeconfig_with(path, server, "admin", &read("admin.crt")?, &read("admin.key")?)
    }

    /// Writes a kubeconfig for a component: a new key and a certificate for `CN=user`
    /// (and `O=group`), valid for a year, issued by the cluster CA.
    pub fn write_component_kubeconfig(
        &self,
        path: &Path,
        server: &str,
        user: &str,
        group: Option<&str>,
    ) -> anyhow::Result<()> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, user);
        if let Some(g) = group {
            p.distinguished_name.push(DnType::OrganizationName, g);
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(1);
        p.not_after = now + time::Duration::days(365);
        let issuer = self.issuer()?;
        let cert = p.signed_by(&key, issuer.cert(), issuer.key())?;
        self.write_kubeconfig_with(path, server, user, cert.pem().as_bytes(), key.serialize_pem().as_bytes())
    }

    fn write_kubeconfig_with(
        &self,
        path: &Path,
        server: &str,
        user: &str,
        cert: &[u8],
        key: &[u8],
    ) -> anyhow::Result<()> {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let ca = std::fs::read(self.path("ca.crt"))
            .with_context(|| format!("cannot read {}", self.path("ca.crt").display()))?;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: {user}\n    namespace: default\ncurrent-context: skiff\n",
            b64(&ca),
            b64(cert),
            b64(key)
        );
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    }
}
