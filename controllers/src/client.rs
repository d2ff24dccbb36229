//! A kube-rs client from a kubeconfig file, as kubectl would read it.

use std::path::Path;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub async fn from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kc = Kubeconfig::read_from(path).with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("the kubeconfig {} is not usable", path.display()))?;
    // Controllers hold watches open; the API server ends them by timeoutSeconds.
    config.read_timeout = None;
    kube::Client::try_from(config).context("cannot build an API client")
}
