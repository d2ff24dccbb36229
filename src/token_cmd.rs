//! `skiff token`: bootstrap tokens, as `kubeadm token` makes them. A token lets a new
//! machine authenticate as `system:bootstrap:<id>` for as long as its Secret in
//! kube-system lives, enough to ask for a node certificate.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use skiff_apiserver::bootstrap;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a bootstrap token and print it.
    Create(CreateArgs),
    /// List the bootstrap tokens: id, expiry, usages, groups, description.
    List(KubeconfigArg),
    /// Delete a bootstrap token (its id, or the whole token): it stops working at once.
    Delete {
        token: String,
        #[command(flatten)]
        k: KubeconfigArg,
    },
}

#[derive(Args)]
pub struct KubeconfigArg {
    /// Kubeconfig of a user who may manage Secrets in kube-system (default: the first
    /// file of $KUBECONFIG, else ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    k: KubeconfigArg,
    /// How long the token works, e.g. 30m, 24h (at most a week), or 0 for no expiry.
    #[arg(long, default_value = "24h")]
    ttl: String,
    /// Extra groups the token's user is in, comma-separated; each must start with
    /// `system:bootstrappers:`.
    #[arg(long, default_value = bootstrap::DEFAULT_GROUP, value_delimiter = ',')]
    groups: Vec<String>,
    /// A note stored with the token.
    #[arg(long, default_value = "")]
    description: String,
    /// Print the whole `skiff join` command (API server, token and CA hash), not just
    /// the token.
    #[arg(long)]
    print_join_command: bool,
}

/// Stores a new bootstrap token valid for `ttl` (`0`: no expiry) through the API
/// server of kubeconfig `path`; the token.
pub(crate) async fn create(
    path: &std::path::Path,
    ttl: &str,
    groups: &[String],
    description: &str,
) -> anyhow::Result<String> {
    for g in groups {
        anyhow::ensure!(
            g.starts_with("system:bootstrappers:"),
            "--groups: {g:?} does not start with \"system:bootstrappers:\"; a bootstrap token may only add such groups"
        );
    }
    let expiration = match ttl {
        "0" => String::new(),
        ttl => {
            let d = crate::duration::parse(ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            skiff_apiserver::object::rfc3339(skiff_apiserver::satoken::now() + d.as_secs() as i64)
        }
    };
    let token = bootstrap::generate();
    let mut secret = bootstrap::secret(&token, &expiration, groups, description).expect("a generated token");
    if expiration.is_empty() {
        secret["stringData"].as_object_mut().expect("an object").remove("expiration");
    }
    let secret: Secret = serde_json::from_value(secret)?;
    let client = skiff_controllers::client::from_kubeconfig(path).await?;
    Api::<Secret>::namespaced(client, bootstrap::NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .context("cannot store the token's Secret")?;
    Ok(token)
}

/// `skiff join <host:port> --token <token> --ca-hash <hash>` for the cluster of `path`.
pub(crate) fn join_command(path: &std::path::Path, token: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let field = |name: &str| text.lines().find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()));
    let server = field("server:").context("the kubeconfig names no server")?;
    let ca = field("certificate-authority-data:").context("the kubeconfig has no certificate-authority-data")?;
    use base64::Engine;
    let ca =
        base64::engine::general_purpose::STANDARD.decode(ca).context("certificate-authority-data is not base64")?;
    let hash = skiff_apiserver::pki::ca_hash(&ca).context("certificate-authority-data is not a PEM certificate")?;
    let server = server.trim_start_matches("https://").trim_end_matches('/');
    Ok(format!("skiff join {server} --token {token} --ca-hash {hash}"))
}

async fn api(k: KubeconfigArg) -> anyhow::Result<Api<Secret>> {
    let path = crate::dashboard_cmd::kubeconfig_path(k.kubeconfig)?;
    let client = skiff_controllers::client::from_kubeconfig(&path).await?;
    Ok(Api::namespaced(client, bootstrap::NAMESPACE))
}

pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create(a) => {
            let path = crate::dashboard_cmd::kubeconfig_path(a.k.kubeconfig.clone())?;
            let token = create(&path, &a.ttl, &a.groups, &a.description).await?;
            if a.print_join_command {
                println!("{}", join_command(&path, &token)?);
            } else {
                println!("{token}");
            }
            Ok(())
        }
        TokenCommand::List(k) => {
            let secrets =
                api(k).await?.list(&ListParams::default().fields(&format!("type={}", bootstrap::SECRET_TYPE))).await?;
            println!("{:<8} {:<22} {:<26} {:<50} DESCRIPTION", "TOKEN", "EXPIRES", "USAGES", "EXTRA GROUPS");
            for s in secrets.items.iter().filter(|s| s.type_.as_deref() == Some(bootstrap::SECRET_TYPE)) {
                let field = |k: &str| {
                    s.data
                        .as_ref()
                        .and_then(|d| d.get(k))
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                        .unwrap_or_default()
                };
                let usages: Vec<&str> = ["authentication", "signing"]
                    .into_iter()
                    .filter(|u| field(&format!("usage-bootstrap-{u}")) == "true")
                    .collect();
                let expires = field("expiration");
                println!(
                    "{:<8} {:<22} {:<26} {:<50} {}",
                    field("token-id"),
                    if expires.is_empty() { "<never>".to_string() } else { expires },
                    usages.join(","),
                    field("auth-extra-groups"),
                    field("description")
                );
            }
            Ok(())
        }
        TokenCommand::Delete { token, k } => {
            let id = token.split('.').next().unwrap_or_default();
            anyhow::ensure!(
                bootstrap::parse(&format!("{id}.0000000000000000")).is_some(),
                "{token:?} is not a token id (6 characters of a-z, 0-9) or a token"
            );
            let name = bootstrap::secret_name(id);
            api(k)
                .await?
                .delete(&name, &DeleteParams::default())
                .await
                .with_context(|| format!("cannot delete token {id}"))?;
            println!("bootstrap token {id:?} deleted");
            Ok(())
        }
    }
}
