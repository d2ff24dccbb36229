//! Who is asking: the API server's authentication, in Kubernetes' order.
//!
//! 1. An x509 client certificate the TLS layer verified against the cluster CA: the
//!    subject's CommonName is the user, its Organizations the groups.
//! 2. A bearer token from the static token file (`--token-auth-file`, kube-apiserver's
//!    CSV format: `token,user,uid,"group1,group2"`). A bearer token that matches nothing
//!    is refused with 401, as Kubernetes does.
//! 3. Nobody: `system:anonymous` in group `system:unauthenticated`, which RBAC allows
//!    only the public paths (`/healthz`, `/version`, ...).
//!
//! Everyone authenticated is also in `system:authenticated`. The plain-HTTP loopback port
//! (`--insecure-bind`) is not authenticated or authorized at all (kube-apiserver's old
//! insecure port); it exists for tests and local tools.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;

use crate::status::ApiError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

pub const MASTERS: &str = "system:masters";
pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
pub const ANONYMOUS: &str = "system:anonymous";
pub const NODES: &str = "system:nodes";
/// The simulated-node agent's user: in system:nodes, but no single node's.
pub const SIMULATED_NODES: &str = "system:skiff:simulated-nodes";
pub const SCHEDULER: &str = "system:kube-scheduler";
pub const CONTROLLER_MANAGER: &str = "system:kube-controller-manager";

impl User {
    fn authenticated(name: String, uid: String, mut groups: Vec<String>) -> User {
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        User { name, uid, groups }
    }

    pub fn anonymous() -> User {
        User { name: ANONYMOUS.into(), uid: String::new(), groups: vec![UNAUTHENTICATED.into()] }
    }

    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }

    /// The cluster's own components (administrators, nodes, the scheduler and the
    /// controller-manager): not held to the per-user request and watch limits.
    pub fn is_component(&self) -> bool {
        self.in_group(MASTERS) || self.in_group(NODES) || self.name == SCHEDULER || self.name == CONTROLLER_MANAGER
    }
}

/// Who a connection is, before looking at each request.
#[derive(Clone, Debug)]
pub enum Connection {
    /// The plain-HTTP loopback port: no authentication, no authorization.
    Insecure,
    /// A TLS connection, with the user of its verified client certificate, if any.
    Tls(Option<User>),
}

/// The user of a verified client certificate (DER): CN and O of its subject.
pub fn user_of_certificate(der: &[u8]) -> Option<User> {
    let (cn, orgs) = skiff_x509::subject(der)?;
    if cn.is_empty() {
        return None;
    }
    Some(User::authenticated(cn, String::new(), orgs))
}

/// Static bearer tokens, from kube-apiserver's `--token-auth-file` format.
#[derive(Default)]
pub struct Tokens {
    users: HashMap<String, User>,
}

impl Tokens {
    pub fn load(path: &Path) -> anyhow::Result<Tokens> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Tokens::parse(&text).with_context(|| format!("in the token file {}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> anyhow::Result<Tokens> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = csv_fields(line);
            anyhow::ensure!(
                fields.len() >= 3 && fields[..3].iter().all(|f| !f.is_empty()),
                "line {}: want token,user,uid[,\"group1,group2\"]",
                i + 1
            );
            let groups = fields
                .get(3)
                .map(|g| g.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect())
                .unwrap_or_default();
            let user = User::authenticated(fields[1].clone(), fields[2].clone(), groups);
            anyhow::ensure!(users.insert(fields[0].clone(), user).is_none(), "line {}: the token appears twice", i + 1);
        }
        Ok(Tokens { users })
    }

    pub fn find(&self, token: &str) -> Option<&User> {
        // Compared in full for every token, so the time taken says nothing about how
        // much of a guess was right.
        let mut found = None;
        for (t, u) in &self.users {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(u);
            }
        }
        found
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Splits one CSV line, with double quotes around fields that hold commas.
fn csv_fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// The token of an `Authorization: Bearer <token>` header (the scheme in any case).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The user a request acts as; None on the insecure port (everything allowed).
pub fn authenticate(conn: &Connection, authorization: Option<&str>, tokens: &Tokens) -> Result<Option<User>, ApiError> {
    let cert_user = match conn {
        Connection::Insecure => return Ok(None),
        Connection::Tls(u) => u,
    };
    if let Some(u) = cert_user {
        return Ok(Some(u.clone()));
    }
    match authorization.map(str::trim) {
        None => Ok(Some(User::anonymous())),
        Some(h) => match bearer(h).and_then(|t| tokens.find(t)) {
            Some(u) => Ok(Some(u.clone())),
            None => Err(ApiError::new(401, "Unauthorized", "Unauthorized")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_of_generated_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "jane");
        p.distinguished_name.push(rcgen::DnType::OrganizationName, "dev");
        let cert = p.self_signed(&key).unwrap();
        let u = user_of_certificate(cert.der()).unwrap();
        assert_eq!(u.name, "jane");
        assert_eq!(u.groups, vec!["dev".to_string(), AUTHENTICATED.to_string()]);
        // Truncated or garbage input is no user, never a panic.
        for n in 0..cert.der().len() {
            let _ = user_of_certificate(&cert.der()[..n]);
        }
        assert!(user_of_certificate(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(user_of_certificate(b"").is_none());
    }

    #[test]
    fn token_file_as_kube_apiserver_reads_it() {
        let t = Tokens::parse("# comment\ns3cret,jane,u1,\"dev,qa\"\nother,bob,u2\n").unwrap();
        let jane = t.find("s3cret").unwrap();
        assert_eq!(jane.name, "jane");
        assert_eq!(jane.groups, vec!["dev", "qa", AUTHENTICATED]);
        assert_eq!(t.find("other").unwrap().groups, vec![AUTHENTICATED]);
        assert!(t.find("s3cre").is_none());
        assert!(Tokens::parse("a,b\n").err().unwrap().to_string().contains("line 1"));
        assert!(Tokens::parse("a,b,c\na,d,e\n").err().unwrap().to_string().contains("twice"));
    }

    #[test]
    fn bearer_tokens_and_anonymous() {
        let t = Tokens::parse("tok,jane,u1\n").unwrap();
        let tls = Connection::Tls(None);
        assert_eq!(authenticate(&tls, None, &t).unwrap().unwrap().name, ANONYMOUS);
        assert_eq!(authenticate(&tls, Some("Bearer tok"), &t).unwrap().unwrap().name, "jane");
        assert_eq!(authenticate(&tls, Some("bearer  tok "), &t).unwrap().unwrap().name, "jane");
        assert_eq!(authenticate(&tls, Some("Bearer nope"), &t).unwrap_err().code, 401);
        assert_eq!(authenticate(&tls, Some("Basic eDp5"), &t).unwrap_err().code, 401);
        assert!(authenticate(&Connection::Insecure, Some("Bearer nope"), &t).unwrap().is_none());
    }
}
