//! `skiff join`: a machine becomes a node of an existing cluster with a bootstrap token,
//! as `kubeadm join` does. It fetches the CA from `kube-public/cluster-info` (readable
//! without credentials), trusts it only if its public key hashes to `--ca-hash`, asks
//! with the token for a certificate as `system:node:<name>` (a CertificateSigningRequest
//! the cluster approves for the default node token), keeps it in `--data-dir`, and runs
//! the node agent with it.

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
    /// Where the node keeps its credentials (`node.kubeconfig`). A node that already has
    /// them there does not ask again.
    #[arg(long, default_value = "/var/lib/skiff-node")]
    data_dir: PathBuf,
    /// Flags for the node agent, as `skiff agent` takes them, after `--` (for example
    /// `-- --runtime containerd`); `--kubeconfig` is set by join.
    #[arg(last = true)]
    agent: Vec<String>,
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
async fn node_credentials(a: &JoinArgs, node: &str, ca: &[u8], dir: &std::path::Path) -> anyhow::Result<String> {
    let server = format!("https://{}", a.server);
    let boot = dir.join("bootstrap.kubeconfig");
    write_private(&boot, &kubeconfig(&server, ca, &format!("    token: {}", a.token)))?;
    let client = skiff_controllers::client::from_kubeconfig(&boot).await?;
    std::fs::remove_file(&boot).ok();
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
    let node = a.node_name.clone().unwrap_or_else(crate::controllers_cmd::host_name);
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let path = a.data_dir.join("node.kubeconfig");
    if path.exists() {
        eprintln!("{} exists: this machine has joined before; starting its agent", path.display());
    } else {
        let ca = discover_ca(&a.server, &a.ca_hash.to_lowercase()).await?;
        let text = node_credentials(&a, &node, &ca, &a.data_dir).await?;
        write_private(&path, &text)?;
        eprintln!("joined as system:node:{node}; credentials in {}", path.display());
    }
    let mut argv = vec!["--kubeconfig".to_string(), path.display().to_string()];
    argv.extend(a.agent.iter().cloned());
    let agent: crate::controllers_cmd::AgentArgs = crate::up::parse("agent", argv)?;
    crate::controllers_cmd::agent(agent).await
}
