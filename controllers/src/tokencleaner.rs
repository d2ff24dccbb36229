//! The token cleaner: deletes bootstrap token Secrets (`kube-system`, type
//! `bootstrap.kubernetes.io/token`) once their `expiration` has passed, as Kubernetes'
//! tokencleaner controller does. An expired token is refused by the API server anyway;
//! this keeps `skiff token list` and the namespace tidy.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};

const TYPE: &str = "bootstrap.kubernetes.io/token";

/// When `s` expires, if it is a bootstrap token with a readable expiration.
fn expiry(s: &Secret) -> Option<Timestamp> {
    if s.type_.as_deref() != Some(TYPE) {
        return None;
    }
    let raw = s.data.as_ref()?.get("expiration")?;
    std::str::from_utf8(&raw.0).ok()?.trim().parse().ok()
}

/// Looks every `period` and deletes what has expired.
pub async fn run(client: kube::Client, period: Duration) {
    let api: Api<Secret> = Api::namespaced(client, "kube-system");
    loop {
        match api.list(&ListParams::default().fields(&format!("type={TYPE}"))).await {
            Ok(list) => {
                let now = Timestamp::now();
                for s in list.items.iter().filter(|s| expiry(s).is_some_and(|t| t <= now)) {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions { uid: s.metadata.uid.clone(), resource_version: None }),
                        ..Default::default()
                    };
                    match api.delete(&name, &dp).await {
                        Ok(_) => tracing::info!("deleted expired bootstrap token {name}"),
                        Err(e) => tracing::warn!("token cleaner: cannot delete {name}: {e}"),
                    }
                }
            }
            Err(e) => tracing::warn!("token cleaner: {e}"),
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn only_bootstrap_tokens_with_a_past_expiration_expire() {
        let secret = |t: &str, exp: &str| Secret {
            type_: Some(t.into()),
            data: Some([("expiration".to_string(), ByteString(exp.as_bytes().to_vec()))].into()),
            ..Default::default()
        };
        let past = "2020-01-01T00:00:00Z";
        assert!(expiry(&secret(TYPE, past)).is_some_and(|t| t <= Timestamp::now()));
        assert!(expiry(&secret(TYPE, "2999-01-01T00:00:00Z")).is_some_and(|t| t > Timestamp::now()));
        assert_eq!(expiry(&secret("Opaque", past)), None);
        assert_eq!(expiry(&secret(TYPE, "tomorrow")), None, "unreadable: left alone");
    }
}
