//! `skiff join`: a machine becomes a node of an existing cluster with a bootstrap token,
//! as `kubeadm join` does. It fetches the CA from `kube-public/cluster-info` (readable
//! without credentials), trusts it only if its public key hashes to `--ca-hash`, asks
//! with the token for a certificate as `system:node:<name>` (a CertificateSigningRequest
//! the cluster approves for the default node token), keeps it in `--data-dir`, and runs
//! the node agent with it.
//!
//! With `--control-plane`, the machine becomes a control-plane machine as well: see
//! `controlplane` for how it gets the cluster's CA and joins the store.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use clap::Args;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use skiff_apiserver::{bootstrap, csr, pki};

#[derive(Args)]
pub struct JoinArgs {
    /// The API server to join, host:port.
    server: String,
    /// A bootstrap token (`skiff token create` on the cluster).
    #[arg(long)]
    token: String,
    /// `sha256:<hex>` of the cluster CA's public key; the CA the server presents must
    /// match it (`skiff token create --print-join-command` prints it).
    #[arg(long)]
    ca_hash: String,
    /// This node's name; its certificate is for `system:node:<name>`. Default: the host
    /// name, lowercased.
    #[arg(long)]
    node_name: Option<String>,
    /// Where the node keeps its credentials (`node.kubeconfig`); default
    /// /var/lib/skiff-node. A node that already has them there does not ask again. With
    /// --control-plane: the machine's `skiff init --data-dir` (default /var/lib/skiff).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Join as a control-plane machine: a store member (added as a learner, promoted
    /// once caught up), an API server, a controller-manager and a scheduler, besides the
    /// node agent. The flags after `--` are then `skiff init`'s, for this machine (its
    /// --bind, --store-client-addr, --store-peer-addr and --node-ip on an address the
    /// other machines reach).
    #[arg(long, requires = "certificate_key")]
    control_plane: bool,
    /// With --control-plane: the key `skiff init` printed, which opens the cluster's CA
    /// and signing keys.
    #[arg(long, requires = "control_plane")]
    certificate_key: Option<String>,
    /// Flags for the node agent, as `skiff agent` takes them, after `--` (for example
    /// `-- --runtime containerd`); `--kubeconfig` is set by join. With --control-plane:
    /// `skiff init`'s flags.
    #[arg(last = true)]
    agent: Vec<String>,
}

/// Whether `argv` sets `flag` (as `--flag value` or `--flag=value`), and to what.
fn flag_value<'a>(argv: &'a [String], flag: &str) -> Option<&'a str> {
    argv.iter().enumerate().find_map(|(i, f)| {
        if f == flag {
            argv.get(i + 1).map(String::as_str)
        } else {
            f.strip_prefix(flag).and_then(|r| r.strip_prefix('='))
        }
    })
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn kubeconfig(server: &str, ca: &[u8], user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: node\n  user:\n{user}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: node\ncurrent-context: skiff\n",
        b64(ca)
    )
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The CA the server publishes, once its hash is the expected one.
async fn discover_ca(server: &str, want: &str) -> anyhow::Result<Vec<u8>> {
    let url: http::Uri =
        format!("https://{server}").parse().with_context(|| format!("bad server address {server:?}"))?;
    let mut config = kube::Config::new(url);
    // Not trusted yet: what comes back is believed only if it hashes to --ca-hash.
    config.accept_invalid_certs = true;
    config.connect_timeout = Some(Duration::from_secs(5));
    let client = kube::Client::try_from(config)?;
    let info = Api::<ConfigMap>::namespaced(client, "kube-public")
        .get("cluster-info")
        .await
        .with_context(|| format!("cannot read kube-public/cluster-info from {server}"))?;
    let text = info.data.and_then(|d| d.get("kubeconfig").cloned()).context("cluster-info has no kubeconfig")?;
    let data = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .context("cluster-info's kubeconfig has no certificate-authority-data")?;
    let ca =
        base64::engine::general_purpose::STANDARD.decode(data.trim()).context("cluster-info's CA is not base64")?;
    let got = pki::ca_hash(&ca).context("cluster-info's CA is not a PEM certificate")?;
    if got != want {
        bail!("the cluster's CA has the public key hash {got}, not the --ca-hash {want}: refusing to trust {server}");
    }
    Ok(ca)
}

/// Asks for and waits for the node's certificate; the node kubeconfig's text.
/// A client of the cluster that authenticates with the bootstrap token.
async fn bootstrap_client(a: &JoinArgs, ca: &[u8], dir: &std::path::Path) -> anyhow::Result<kube::Client> {
    let boot = dir.join("bootstrap.kubeconfig");
    write_private(&boot, &kubeconfig(&format!("https://{}", a.server), ca, &format!("    token: {}", a.token)))?;
    let client = skiff_controllers::client::from_kubeconfig(&boot).await;
    std::fs::remove_file(&boot).ok();
    client
}

async fn node_credentials(a: &JoinArgs, node: &str, ca: &[u8], dir: &std::path::Path) -> anyhow::Result<String> {
    let server = format!("https://{}", a.server);
    let client = bootstrap_client(a, ca, dir).await?;
    let (key, request) = csr::new_request(&format!("system:node:{node}"), "system:nodes")?;
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let suffix: String = bootstrap::generate().chars().skip(7).take(6).collect();
    let name = format!("node-csr-{node}-{suffix}");
    let object = CertificateSigningRequest {
        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: csr::KUBELET.into(),
            usages: Some(vec!["digital signature".into(), "client auth".into()]),
            ..Default::default()
        },
        status: None,
    };
    api.create(&PostParams::default(), &object).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 401 => {
            anyhow::anyhow!("the cluster did not accept the token (expired, deleted or mistyped): {}", s.message)
        }
        other => anyhow::anyhow!("cannot ask for a node certificate: {other}"),
    })?;
    eprintln!("asked for a certificate as system:node:{node} ({name}); waiting for it to be issued");
    let started = Instant::now();
    loop {
        let c = api.get(&name).await?;
        let status = c.status.unwrap_or_default();
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let user =
                format!("    client-certificate-data: {}\n    client-key-data: {}", b64(&cert.0), b64(key.as_bytes()));
            return Ok(kubeconfig(&server, ca, &user));
        }
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status != "False")
        {
            bail!(
                "the certificate request {name} was {}: {}",
                c.type_.to_lowercase(),
                c.message.clone().unwrap_or_default()
            );
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the certificate request {name} was not issued within 2 minutes; approve it with `kubectl certificate approve {name}`");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub async fn run(a: JoinArgs) -> anyhow::Result<()> {
    if bootstrap::parse(&a.token).is_none() {
        bail!("--token must look like abcdef.0123456789abcdef (6 and 16 characters of a-z, 0-9)");
    }
    let hex = a.ca_hash.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--ca-hash must be sha256: followed by 64 hex digits, not {:?}", a.ca_hash);
    }
    if a.control_plane {
        return control_plane(a).await;
    }
    let node = a.node_name.clone().unwrap_or_else(crate::controllers_cmd::host_name);
    let data_dir = a.data_dir.clone().unwrap_or_else(|| PathBuf::from("/var/lib/skiff-node"));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path = data_dir.join("node.kubeconfig");
    if path.exists() {
        eprintln!("{} exists: this machine has joined before; starting its agent", path.display());
    } else {
        let ca = discover_ca(&a.server, &a.ca_hash.to_lowercase()).await?;
        let text = node_credentials(&a, &node, &ca, &data_dir).await?;
        write_private(&path, &text)?;
        eprintln!("joined as system:node:{node}; credentials in {}", path.display());
    }
    let mut argv = vec!["--kubeconfig".to_string(), path.display().to_string()];
    // The agent registers the Node its certificate names, unless told otherwise.
    if !a.agent.iter().any(|f| f == "--node-name" || f.starts_with("--node-name=")) {
        argv.extend(["--node-name".to_string(), node.clone()]);
    }
    argv.extend(a.agent.iter().cloned());
    let agent: crate::controllers_cmd::AgentArgs = crate::up::parse("agent", argv)?;
    crate::controllers_cmd::agent(agent).await
}

/// `skiff join --control-plane`: gets the cluster's CA and keys, adds this machine's
/// store member as a learner, then starts everything as `skiff init` with the flags
/// after `--` (in the background, as `skiff init` does). Run again, a machine that has
/// joined before starts as it did then.
async fn control_plane(a: JoinArgs) -> anyhow::Result<()> {
    use crate::controlplane;
    let key = controlplane::parse_key(a.certificate_key.as_deref().unwrap_or_default())?;
    let mut argv = a.agent.clone();
    if let (Some(n), None) = (&a.node_name, flag_value(&argv, "--node-name")) {
        argv.extend(["--node-name".into(), n.clone()]);
    }
    if let (Some(d), None) = (&a.data_dir, flag_value(&argv, "--data-dir")) {
        argv.extend(["--data-dir".into(), d.display().to_string()]);
    }
    let up: crate::up::UpArgs = crate::up::parse("init", argv.clone())?;
    let dir = up.data_dir.clone();
    let prepared = dir.join("store").exists() || dir.join(controlplane::STORE_JOIN).exists();
    if prepared {
        if let Some(saved) = crate::up::saved_argv(&dir) {
            eprintln!("{} holds a control-plane machine that joined before; starting it", dir.display());
            argv = saved.into_iter().skip(1).collect();
        }
    } else {
        for (flag, addr) in [("--store-client-addr", up.store_client_addr), ("--store-peer-addr", up.store_peer_addr)] {
            if addr.ip().is_loopback() || addr.ip().is_unspecified() {
                bail!("{flag} {addr}: give an address of this machine that the other control-plane machines reach");
            }
        }
        let ca = discover_ca(&a.server, &a.ca_hash.to_lowercase()).await?;
        let pki = dir.join("apiserver/pki");
        std::fs::create_dir_all(&pki).with_context(|| format!("cannot create {}", pki.display()))?;
        let shared = controlplane::download(bootstrap_client(&a, &ca, &dir).await?, &key).await?;
        if shared.ca_crt.as_bytes() != ca.as_slice() {
            bail!("the sealed CA is not the one the cluster serves");
        }
        if let Some(e) = shared.store_endpoints.iter().find(|e| e.contains("//127.") || e.contains("//localhost")) {
            bail!(
                "the cluster's store listens on {e} only, which no other machine reaches; start `skiff init` \
                 with --store-client-addr and --store-peer-addr on the first machine's address"
            );
        }
        // The API server's Service range and the Nodes' pod range are the cluster's.
        for (flag, theirs) in [("--service-cidr", &shared.service_cidr), ("--cluster-cidr", &shared.cluster_cidr)] {
            match flag_value(&argv, flag) {
                Some(mine) if mine != theirs => bail!("{flag} {mine}: the cluster uses {theirs}"),
                Some(_) => {}
                None => argv.extend([flag.to_string(), theirs.clone()]),
            }
        }
        write_private(&pki.join("ca.key"), &shared.ca_key)?;
        write_private(&pki.join("sa.key"), &shared.sa_key)?;
        std::fs::write(pki.join("ca.crt"), &shared.ca_crt)?;
        let certs = skiff_apiserver::pki::Pki { dir: pki.clone() };
        certs.ensure_pair("apiserver-etcd-client", "kube-apiserver-etcd-client", &[], false)?;
        let name = up.node_name();
        let peer = format!("https://{}", up.store_peer_addr);
        let join = controlplane::add_member(&pki, &shared.store_endpoints, &name, &peer).await?;
        std::fs::write(dir.join(controlplane::STORE_NAME), &name)?;
        std::fs::write(dir.join(controlplane::STORE_JOIN), serde_json::to_vec(&join)?)?;
        eprintln!("added store member {name} ({peer}) as a learner; starting this machine's control plane");
    }
    let mut up: crate::up::UpArgs = crate::up::parse("init", argv.clone())?;
    up.init = true;
    crate::up::up_with(up, std::iter::once("init".to_string()).chain(argv).collect()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_found_in_either_spelling() {
        let argv: Vec<String> = ["--bind", "10.0.0.2:6443", "--cluster-cidr=10.88.0.0/16"].map(String::from).to_vec();
        assert_eq!(flag_value(&argv, "--bind"), Some("10.0.0.2:6443"));
        assert_eq!(flag_value(&argv, "--cluster-cidr"), Some("10.88.0.0/16"));
        assert_eq!(flag_value(&argv, "--cluster"), None);
        assert_eq!(flag_value(&argv, "--data-dir"), None);
    }
}
