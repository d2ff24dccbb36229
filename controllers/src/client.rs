//! A kube-rs client from a kubeconfig file, as kubectl would read it.

use std::path::Path;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The CA certificate (PEM) of the kubeconfig's first cluster, if it carries one.
pub fn root_ca(path: &Path) -> Option<String> {
    use base64::Engine;
    let kc = Kubeconfig::read_from(path).ok()?;
    let cluster = kc.clusters.first()?.cluster.as_ref()?;
    if let Some(data) = &cluster.certificate_authority_data {
        let pem = base64::engine::general_purpose::STANDARD.decode(data.trim()).ok()?;
        return String::from_utf8(pem).ok();
    }
    std::fs::read_to_string(cluster.certificate_authority.as_ref()?).ok()
}

pub async fn from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
    // kube-rs's default read timeout (295 s) stays: watches ask the server to end them
    // sooner (timeoutSeconds), and a request nobody answers fails instead of hanging.
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("the kubeconfig {} is not usable", path.display()))?;
    kube::Client::try_from(config).context("cannot build an API client")
}
