//! A member's configuration, from etcd-style flags, and the identities derived from it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

impl std::str::FromStr for ClusterState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "new" => Ok(ClusterState::New),
            "existing" => Ok(ClusterState::Existing),
            other => Err(format!("invalid --initial-cluster-state {other:?}: expected \"new\" or \"existing\"")),
        }
    }
}

/// TLS for one side of a member (clients or peers), as etcd's `--cert-file`,
/// `--key-file`, `--trusted-ca-file` and `--client-cert-auth` (and their `--peer-`
/// twins) give it. Used for the `https://` URLs of that side.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    /// Refuse connections without a certificate signed by the trusted CA.
    pub client_cert_auth: bool,
}

fn read_pem(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

impl TlsFiles {
    /// The server side: this member's certificate, and the CA client certificates must
    /// chain to (required with `client_cert_auth`).
    pub fn server(&self, side: &str) -> Result<tonic::transport::ServerTlsConfig, String> {
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            let which = if side.is_empty() { "client" } else { "peer" };
            return Err(format!("https {which} URLs need --{side}cert-file and --{side}key-file"));
        };
        let identity = tonic::transport::Identity::from_pem(
            read_pem(&format!("--{side}cert-file"), cert)?,
            read_pem(&format!("--{side}key-file"), key)?,
        );
        let mut cfg = tonic::transport::ServerTlsConfig::new().identity(identity);
        match &self.trusted_ca_file {
            Some(ca) => {
                let ca = read_pem(&format!("--{side}trusted-ca-file"), ca)?;
                cfg = cfg
                    .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                    .client_auth_optional(!self.client_cert_auth);
            }
            None if self.client_cert_auth => {
                return Err(format!("--{side}client-cert-auth needs --{side}trusted-ca-file"));
            }
            None => {}
        }
        Ok(cfg)
    }

    /// The client side (a member calling its peers): trust the CA, show this member's
    /// certificate.
    pub fn client(&self, side: &str) -> Result<tonic::transport::ClientTlsConfig, String> {
        let mut cfg = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &self.trusted_ca_file {
            cfg = cfg.ca_certificate(tonic::transport::Certificate::from_pem(read_pem(
                &format!("--{side}trusted-ca-file"),
                ca,
            )?));
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            cfg = cfg.identity(tonic::transport::Identity::from_pem(
                read_pem(&format!("--{side}cert-file"), cert)?,
                read_pem(&format!("--{side}key-file"), key)?,
            ));
        }
        Ok(cfg)
    }
}

/// Everything `skiff store` needs to run one member.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub initial_advertise_peer_urls: Vec<String>,
    /// `name=url[,name=url...]`, one entry per peer URL.
    pub initial_cluster: String,
    pub initial_cluster_state: ClusterState,
    pub initial_cluster_token: String,
    /// Largest client request accepted (etcd `--max-request-bytes`).
    pub max_request_bytes: usize,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
    /// Applied entries between raft snapshots (etcd `--snapshot-count`).
    pub snapshot_count: u64,
    /// How often watchers that asked for progress notifications get one.
    pub watch_progress_notify_interval: Duration,
    /// Database size past which writes raise the NOSPACE alarm (etcd
    /// `--quota-backend-bytes`); 0 means the 2 GiB default, negative disables it.
    pub quota_backend_bytes: i64,
    /// Where `/metrics` and `/health` are served over plain HTTP (etcd
    /// `--listen-metrics-urls`); none by default.
    pub listen_metrics_urls: Vec<String>,
    /// TLS of the `https://` client URLs.
    pub client_tls: TlsFiles,
    /// TLS of the `https://` peer URLs, both ways.
    pub peer_tls: TlsFiles,
    /// How long an auth token from `Authenticate` stays valid (etcd `--auth-token-ttl`).
    pub auth_token_ttl: Duration,
}

/// etcd's default backend quota.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 << 30;

impl MemberConfig {
    /// The effective quota in bytes, or None when disabled.
    pub fn quota(&self) -> Option<i64> {
        match self.quota_backend_bytes {
            0 => Some(DEFAULT_QUOTA_BYTES),
            q if q < 0 => None,
            q => Some(q),
        }
    }
}

impl MemberConfig {
    /// A single-member configuration on the given ports of 127.0.0.1 (tests, `make up`).
    pub fn local(name: &str, data_dir: PathBuf, client_port: u16, peer_port: u16) -> MemberConfig {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        MemberConfig {
            name: name.to_string(),
            data_dir,
            listen_client_urls: vec![client.clone()],
            advertise_client_urls: vec![client],
            listen_peer_urls: vec![peer.clone()],
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: format!("{name}={peer}"),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "skiff-cluster".into(),
            max_request_bytes: 1572864,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            watch_progress_notify_interval: Duration::from_secs(600),
            quota_backend_bytes: 0,
            listen_metrics_urls: Vec::new(),
            client_tls: TlsFiles::default(),
            peer_tls: TlsFiles::default(),
            auth_token_ttl: Duration::from_secs(300),
        }
    }

    /// The initial cluster as (name, peer URLs), members in flag order.
    pub fn initial_members(&self) -> Result<Vec<(String, Vec<String>)>, String> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for part in self.initial_cluster.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, url) = part
                .split_once('=')
                .ok_or_else(|| format!("invalid --initial-cluster entry {part:?}: expected name=url"))?;
            parse_url(url)?;
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => out.push((name.to_string(), vec![url.to_string()])),
            }
        }
        if out.is_empty() {
            return Err("--initial-cluster is empty".into());
        }
        Ok(out)
    }

    /// Checks the flags against each other the way etcd does before touching the disk.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("--name must not be empty".into());
        }
        for u in self.listen_client_urls.iter().chain(&self.listen_peer_urls).chain(&self.advertise_client_urls) {
            parse_url(u)?;
        }
        // TLS flags where nothing serves TLS would protect nothing: refuse them.
        if self.client_tls.client_cert_auth && !self.listen_client_urls.iter().any(|u| is_https(u)) {
            return Err("--client-cert-auth applies to https:// client URLs; --listen-client-urls has none".into());
        }
        if self.peer_tls.client_cert_auth && !self.listen_peer_urls.iter().any(|u| is_https(u)) {
            return Err("--peer-client-cert-auth applies to https:// peer URLs; --listen-peer-urls has none".into());
        }
        // The certificates must be readable before anything starts.
        if self.listen_client_urls.iter().any(|u| is_https(u)) {
            self.client_tls.server("")?;
        }
        if self.listen_peer_urls.iter().any(|u| is_https(u)) {
            self.peer_tls.server("peer-")?;
        }
        self.peer_tls.client("peer-")?;
        let members = self.initial_members()?;
        if self.initial_cluster_state == ClusterState::New {
            let mine = members
                .iter()
                .find(|(n, _)| *n == self.name)
                .ok_or_else(|| format!("--initial-cluster has no entry for this member's --name {:?}", self.name))?;
            let mut want = mine.1.clone();
            let mut have = self.initial_advertise_peer_urls.clone();
            want.sort();
            have.sort();
            if want != have {
                return Err(format!(
                    "--initial-cluster must include {}={} (--initial-advertise-peer-urls), but has {}={}",
                    self.name,
                    have.join(","),
                    self.name,
                    want.join(",")
                ));
            }
        }
        if self.max_request_bytes == 0 {
            return Err("--max-request-bytes must be positive".into());
        }
        if self.election_timeout < self.heartbeat_interval * 5 {
            return Err("--election-timeout must be at least 5 times --heartbeat-interval".into());
        }
        Ok(())
    }
}

/// Parses `http://host:port` into a socket address.
/// Whether `url` asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.starts_with("https://")
}

pub fn parse_url(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("invalid URL {url:?}: only http://host:port and https://host:port are supported"))?;
    let hostport = rest.trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .map_err(|e| format!("invalid URL {url:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("invalid URL {url:?}: host has no address"))
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap())
}

/// A member's id, from its peer URLs and the cluster token (as etcd derives it), so
/// every member computes the same ids from the same `--initial-cluster`.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let joined = urls.join(",");
    // 0 is not a valid member id anywhere in etcd's API.
    hash64(&[joined.as_bytes(), token.as_bytes()]).max(1)
}

/// The cluster id, from the initial members' ids and the token.
pub fn cluster_id(member_ids: &[u64], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort();
    let bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_be_bytes()).collect();
    hash64(&[&bytes, token.as_bytes()]).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_urls_and_token_only() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "t");
        assert_eq!(a, member_id(&["http://127.0.0.1:2380".into()], "t"));
        assert_ne!(a, member_id(&["http://127.0.0.1:2381".into()], "t"));
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into()], "u"));
        assert_eq!(cluster_id(&[1, 2, 3], "t"), cluster_id(&[3, 1, 2], "t"));
    }

    #[test]
    fn validation_explains_bad_flags() {
        let mut c = MemberConfig::local("a", "/tmp/x".into(), 2379, 2380);
        assert!(c.validate().is_ok());
        c.initial_cluster = "b=http://127.0.0.1:2380".into();
        assert!(c.validate().unwrap_err().contains("no entry for this member"));
        c.initial_cluster = "a=http://127.0.0.1:9999".into();
        assert!(c.validate().unwrap_err().contains("--initial-advertise-peer-urls"));
        c.initial_cluster = "a".into();
        assert!(c.validate().unwrap_err().contains("expected name=url"));
        assert!(parse_url("127.0.0.1:80").unwrap_err().contains("only http://"));
        assert!("old".parse::<ClusterState>().is_err());
    }
}
