//! CertificateSigningRequests: reading a PKCS#10 request (and checking it is signed by
//! the key it names), the node-client auto-approver, and the signer that issues
//! approved requests with the cluster CA.
//!
//! Signers served: `kubernetes.io/kube-apiserver-client` (any client certificate, once
//! someone approves it) and `kubernetes.io/kube-apiserver-client-kubelet` (only
//! `CN=system:node:<name>, O=system:nodes`; approved automatically when the requester
//! may `create certificatesigningrequests/nodeclient`, as bootstrap tokens may). The
//! signing runs in the API server, which holds the CA key; Kubernetes runs it in the
//! controller-manager.

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyUsagePurpose, PublicKeyData, SignatureAlgorithm};
use serde_json::{json, Value};

use crate::authn::User;
use crate::registry;
use crate::storage::{self, Store};
use skiff_x509::{name_parts, tlv};

pub const CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// What a certificate request asks for.
#[derive(Debug)]
pub struct Request {
    pub common_name: String,
    pub organizations: Vec<String>,
    algorithm: &'static SignatureAlgorithm,
    /// The subjectPublicKey bits (an EC point, an RSAPublicKey, an Ed25519 key).
    key: Vec<u8>,
}

impl PublicKeyData for Request {
    fn der_bytes(&self) -> &[u8] {
        &self.key
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        self.algorithm
    }
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const OID_RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];

/// The contents of the element at the start of `b` and what follows, if its tag is `tag`.
fn element(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, contents, rest) = tlv(b)?;
    (t == tag).then_some((contents, rest))
}

/// The OIDs of an AlgorithmIdentifier's contents: (algorithm, parameter if an OID).
fn algorithm_id(contents: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (tag, oid, rest) = tlv(contents)?;
    if tag != 0x06 {
        return None;
    }
    let param = tlv(rest).filter(|(t, _, _)| *t == 0x06).map(|(_, p, _)| p);
    Some((oid, param))
}

/// The contents of a BIT STRING with no unused bits.
fn bits(contents: &[u8]) -> Option<&[u8]> {
    match contents.split_first() {
        Some((0, rest)) => Some(rest),
        _ => None,
    }
}

/// Reads a PEM `CERTIFICATE REQUEST` and checks its signature: the requester holds the
/// private key of the public key in it.
pub fn parse_pem(pem: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "the request is not PEM text".to_string())?;
    let body = text
        .split("-----BEGIN CERTIFICATE REQUEST-----")
        .nth(1)
        .and_then(|t| t.split("-----END CERTIFICATE REQUEST-----").next())
        .ok_or("no PEM block of type CERTIFICATE REQUEST")?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("bad base64: {e}"))?;
    parse_der(&der).ok_or_else(|| "not a well-formed, correctly signed PKCS#10 certificate request".to_string())
}

pub(crate) fn parse_der(der: &[u8]) -> Option<Request> {
    const SEQ: u8 = 0x30;
    const BITS: u8 = 0x03;
    let (outer, _) = element(der, SEQ)?;
    let (info, rest) = element(outer, SEQ)?;
    // The signed bytes: the whole certificationRequestInfo element.
    let info_der = &outer[..outer.len() - rest.len()];
    let (sig_alg, rest) = element(rest, SEQ)?;
    let signature = bits(element(rest, BITS)?.0)?;

    // version, subject, subjectPKInfo, [0] attributes
    let (_, rest) = element(info, 0x02)?;
    let (name, rest) = element(rest, SEQ)?;
    let (common_name, organizations) = name_parts(name)?;
    let (spki, _) = element(rest, SEQ)?;
    let (key_alg, rest) = element(spki, SEQ)?;
    let (key, _) = element(rest, BITS)?;
    let key = bits(key)?.to_vec();

    type Verify = &'static dyn ring::signature::VerificationAlgorithm;
    // The key's algorithm, and the signature algorithm that must go with it.
    let (algorithm, verify, signed_as): (&'static SignatureAlgorithm, Verify, &[u8]) = match algorithm_id(key_alg)? {
        // Either digest with either curve, as openssl signs P-384 requests with SHA-256.
        (OID_EC_PUBLIC_KEY, Some(OID_P256)) if algorithm_id(sig_alg)?.0 == OID_ECDSA_SHA384 => {
            (&rcgen::PKCS_ECDSA_P256_SHA256, &ring::signature::ECDSA_P256_SHA384_ASN1, OID_ECDSA_SHA384)
        }
        (OID_EC_PUBLIC_KEY, Some(OID_P256)) => {
            (&rcgen::PKCS_ECDSA_P256_SHA256, &ring::signature::ECDSA_P256_SHA256_ASN1, OID_ECDSA_SHA256)
        }
        (OID_EC_PUBLIC_KEY, Some(OID_P384)) if algorithm_id(sig_alg)?.0 == OID_ECDSA_SHA256 => {
            (&rcgen::PKCS_ECDSA_P384_SHA384, &ring::signature::ECDSA_P384_SHA256_ASN1, OID_ECDSA_SHA256)
        }
        (OID_EC_PUBLIC_KEY, Some(OID_P384)) => {
            (&rcgen::PKCS_ECDSA_P384_SHA384, &ring::signature::ECDSA_P384_SHA384_ASN1, OID_ECDSA_SHA384)
        }
        (OID_RSA, _) => (&rcgen::PKCS_RSA_SHA256, &ring::signature::RSA_PKCS1_2048_8192_SHA256, OID_RSA_SHA256),
        (OID_ED25519, _) => (&rcgen::PKCS_ED25519, &ring::signature::ED25519, OID_ED25519),
        _ => return None,
    };
    if algorithm_id(sig_alg)?.0 != signed_as {
        return None;
    }
    ring::signature::UnparsedPublicKey::new(verify, &key).verify(info_der, signature).ok()?;
    Some(Request { common_name, organizations, algorithm, key })
}

/// The cluster CA, able to issue client certificates.
pub struct Issuer {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Issuer {
    pub fn new(cert: rcgen::Certificate, key: rcgen::KeyPair) -> Issuer {
        Issuer { cert, key }
    }

    pub fn cert(&self) -> &rcgen::Certificate {
        &self.cert
    }

    pub fn key(&self) -> &rcgen::KeyPair {
        &self.key
    }

    /// A client certificate (PEM) for `req`'s subject and key, valid from a minute ago
    /// for `seconds`. A subject with several organizations is refused: the certificate
    /// library keeps one value per attribute, and a group silently dropped is worse
    /// than a request refused.
    pub fn issue(&self, req: &Request, seconds: i64) -> Result<String, String> {
        if req.organizations.len() > 1 {
            return Err(format!(
                "the subject has {} organizations; skiff signs at most one (one group per certificate)",
                req.organizations.len()
            ));
        }
        self.sign(req, seconds).map_err(|e| e.to_string())
    }

    fn sign(&self, req: &Request, seconds: i64) -> Result<String, rcgen::Error> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, req.common_name.as_str());
        for o in &req.organizations {
            p.distinguished_name.push(DnType::OrganizationName, o.as_str());
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let now = crate::satoken::now();
        let at = |t: i64| time::OffsetDateTime::from_unix_timestamp(t).map_err(|_| rcgen::Error::Time);
        p.not_before = at(now - 60)?;
        p.not_after = at(now + seconds)?;
        let mut serial = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
            .map_err(|_| rcgen::Error::Time)?;
        serial[0] &= 0x7f;
        p.serial_number = Some(serial.to_vec().into());
        Ok(p.signed_by(req, &self.cert, &self.key)?.pem())
    }
}

/// A new private key and a certificate request for `CN=common_name, O=organization`,
/// both PEM: what a joining node sends.
pub fn new_request(common_name: &str, organization: &str) -> Result<(String, String), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.distinguished_name.push(DnType::OrganizationName, organization);
    let pem = p.serialize_request(&key)?.pem()?;
    Ok((key.serialize_pem(), pem))
}

fn condition(csr: &Value, t: &str) -> bool {
    csr["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
}

fn usages(csr: &Value) -> Vec<&str> {
    csr["spec"]["usages"].as_array().into_iter().flatten().filter_map(|u| u.as_str()).collect()
}

/// A kubelet client request: `CN=system:node:<name>`, `O=system:nodes` only, usages
/// client auth and digital signature (key encipherment allowed).
fn is_node_client(req: &Request, csr: &Value) -> bool {
    let u = usages(csr);
    req.common_name.starts_with("system:node:")
        && req.common_name.len() > "system:node:".len()
        && req.organizations == ["system:nodes"]
        && u.contains(&"client auth")
        && u.iter().all(|x| matches!(*x, "client auth" | "digital signature" | "key encipherment"))
}

/// The user who created the request, as admission recorded it in its spec.
fn requester(csr: &Value) -> User {
    let spec = &csr["spec"];
    User {
        name: spec["username"].as_str().unwrap_or_default().to_string(),
        uid: spec["uid"].as_str().unwrap_or_default().to_string(),
        groups: spec["groups"].as_array().into_iter().flatten().filter_map(|g| g.as_str().map(String::from)).collect(),
    }
}

/// What the signer loop does with one request: the object to write back, if anything
/// changes.
fn decide(csr: &Value, issuer: &Issuer, rbac: &crate::rbac::Rbac) -> Option<Value> {
    let signer = csr["spec"]["signerName"].as_str().unwrap_or_default();
    if (signer != CLIENT && signer != KUBELET)
        || condition(csr, "Denied")
        || condition(csr, "Failed")
        || csr["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty())
    {
        return None;
    }
    let mut out = csr.clone();
    let mut add = |t: &str, reason: &str, message: String| {
        let c = json!({"type": t, "status": "True", "reason": reason, "message": message,
            "lastUpdateTime": crate::object::now_rfc3339(), "lastTransitionTime": crate::object::now_rfc3339()});
        match out["status"]["conditions"].as_array_mut() {
            Some(cs) => cs.push(c),
            None => out["status"]["conditions"] = json!([c]),
        }
    };
    let pem = csr["spec"]["request"]
        .as_str()
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    let req = match parse_pem(&pem) {
        Ok(r) => r,
        Err(e) => {
            add("Failed", "SignerValidationFailure", format!("the request cannot be read: {e}"));
            return Some(out);
        }
    };
    if signer == KUBELET && !is_node_client(&req, csr) {
        add(
            "Failed",
            "SignerValidationFailure",
            "kubernetes.io/kube-apiserver-client-kubelet signs only CN=system:node:<name>, O=system:nodes for client auth"
                .into(),
        );
        return Some(out);
    }
    if !condition(csr, "Approved") {
        // The node-client auto-approver.
        let who = requester(csr);
        let sub = if who.name == req.common_name { "selfnodeclient" } else { "nodeclient" };
        let may = |sub: &str| {
            rbac.allowed(
                &who,
                &crate::rbac::Attributes {
                    verb: "create".into(),
                    resource_request: true,
                    api_group: "certificates.k8s.io".into(),
                    resource: "certificatesigningrequests".into(),
                    subresource: sub.into(),
                    ..Default::default()
                },
            )
        };
        if signer == KUBELET && is_node_client(&req, csr) && (may(sub) || may("nodeclient")) {
            add(
                "Approved",
                "AutoApproved",
                "Auto approving kubelet client certificate after SubjectAccessReview.".into(),
            );
        } else {
            return None;
        }
    }
    // One year unless the request asks for less (at least 10 minutes).
    let seconds = csr["spec"]["expirationSeconds"].as_i64().map_or(365 * 86400, |s| s.clamp(600, 365 * 86400));
    match issuer.issue(&req, seconds) {
        Ok(cert) => out["status"]["certificate"] = json!(base64::engine::general_purpose::STANDARD.encode(cert)),
        Err(e) => add("Failed", "SignerValidationFailure", format!("cannot sign: {e}")),
    }
    Some(out)
}

/// Approves and signs what it may, when requests change and every `period`.
pub struct Signer {
    pub issuer: Issuer,
    wake: tokio::sync::Notify,
    busy: Mutex<()>,
}

impl Signer {
    pub fn new(issuer: Issuer) -> Signer {
        Signer { issuer, wake: tokio::sync::Notify::new(), busy: Mutex::new(()) }
    }

    /// A request was written: look at the requests soon.
    pub fn touch(&self) {
        self.wake.notify_one();
    }

    pub async fn run(&self, store: Store, rbac: crate::rbac::Rbac, period: Duration) {
        let r = registry::find("certificates.k8s.io", "v1", "certificatesigningrequests").expect("registered");
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(period) => {}
            }
            let page = match store.list(&storage::prefix(r, None), None, 0, 0).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("certificate signing requests: {}", e.message);
                    continue;
                }
            };
            for s in page.items {
                let decided = {
                    let _one_at_a_time = self.busy.lock().unwrap_or_else(|e| e.into_inner());
                    decide(&s.obj, &self.issuer, &rbac)
                };
                if let Some(obj) = decided {
                    // Lost to another writer: seen again on the next round.
                    if let Err(e) = store.update(&s.key, &obj, s.rev).await {
                        tracing::warn!("certificate signing request {}: {}", s.key, e.message);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(cn: &str, orgs: &[&str]) -> (String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name.push(DnType::OrganizationName, *o);
        }
        (p.serialize_request(&key).unwrap().pem().unwrap(), key)
    }

    fn issuer() -> Issuer {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "test-ca");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        Issuer::new(ca.self_signed(&key).unwrap(), key)
    }

    #[test]
    fn requests_are_read_and_their_signatures_checked() {
        let (pem, _) = request("system:node:w1", &["system:nodes"]);
        let r = parse_pem(pem.as_bytes()).unwrap();
        assert_eq!(
            (r.common_name.as_str(), r.organizations.as_slice()),
            ("system:node:w1", &["system:nodes".to_string()][..])
        );
        // One bit changed anywhere in the signed part: refused.
        let der = base64::engine::general_purpose::STANDARD
            .decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
            .unwrap();
        for i in 0..der.len() {
            let mut bad = der.clone();
            bad[i] ^= 1;
            let _ = parse_der(&bad); // never panics
        }
        let mut bad = der.clone();
        let at = der.windows(12).position(|w| w == b"system:node:").unwrap();
        bad[at] = b'S';
        assert!(parse_der(&bad).is_none(), "a changed subject no longer matches the signature");
        assert!(parse_pem(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----").is_err());
    }

    #[test]
    fn issued_certificates_carry_the_requested_subject() {
        let (pem, _) = request("jane", &["dev"]);
        let mut req = parse_pem(pem.as_bytes()).unwrap();
        let cert = issuer().issue(&req, 3600).unwrap();
        // (rcgen writes one O per request; openssl can write several.)
        req.organizations.push("ops".into());
        let e = issuer().issue(&req, 3600).unwrap_err();
        assert!(e.contains("2 organizations"), "{e}");
        let der = base64::engine::general_purpose::STANDARD
            .decode(cert.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
            .unwrap();
        let u = crate::authn::user_of_certificate(&der).unwrap();
        assert_eq!(u.name, "jane");
        assert_eq!(u.groups, ["dev", "system:authenticated"]);
    }

    #[test]
    fn only_approved_or_auto_approvable_requests_are_signed() {
        let issuer = issuer();
        let rbac = crate::rbac::Rbac::default();
        let csr = |cn: &str, orgs: &[&str], signer: &str| {
            let (pem, _) = request(cn, orgs);
            json!({"metadata": {"name": "x"}, "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem),
                "signerName": signer, "usages": ["digital signature", "client auth"], "username": "system:bootstrap:abcdef",
                "groups": ["system:bootstrappers", "system:authenticated"]}})
        };
        // No RBAC rules loaded: nobody may create nodeclient requests, nothing is approved.
        assert_eq!(decide(&csr("system:node:w1", &["system:nodes"], KUBELET), &issuer, &rbac), None);
        let mut approved = csr("jane", &["system:masters"], CLIENT);
        assert_eq!(decide(&approved, &issuer, &rbac), None, "waits for approval");
        approved["status"]["conditions"] = json!([{"type": "Approved", "status": "True"}]);
        let signed = decide(&approved, &issuer, &rbac).unwrap();
        assert!(signed["status"]["certificate"].is_string());
        assert_eq!(decide(&signed, &issuer, &rbac), None, "signed once");
        let mut wrong = csr("jane", &["system:nodes"], KUBELET);
        wrong["status"]["conditions"] = json!([{"type": "Approved", "status": "True"}]);
        let failed = decide(&wrong, &issuer, &rbac).unwrap();
        assert_eq!(failed["status"]["conditions"][1]["type"], "Failed");
        assert!(failed["status"]["certificate"].is_null());
    }
}
