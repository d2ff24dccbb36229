//! Pulling images from a registry through the OCI distribution API (what `docker pull`
//! and containerd speak): resolve the reference to a manifest (through a multi-platform
//! index to linux/amd64), then fetch the config and layers, verifying every digest.
//!
//! Anonymous bearer tokens are fetched when the registry asks for them (Docker Hub does);
//! registries that want credentials are refused with a clear message (imagePullSecrets
//! are not supported). `localhost`, `127.0.0.1` and hosts given as insecure are spoken
//! to over plain HTTP, all others over HTTPS with the machine's CA certificates.
//! `skiff.local/...` names the images of `skiff image import` and is never contacted.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::image::sha256;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// The registry that `skiff image import` images are named after; never contacted.
pub const LOCAL_ONLY: &str = "skiff.local";

/// Largest manifest or index accepted, and largest image (all its blobs, which are held
/// in memory while pulling).
const MANIFEST_LIMIT: usize = 4 << 20;
const IMAGE_LIMIT: usize = 2 << 30;
/// How long a request may take to be answered, and to deliver its body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const BODY_TIMEOUT: Duration = Duration::from_secs(1800);

pub struct Registry {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    /// `host[:port]` spoken to over plain HTTP, besides localhost and 127.0.0.1.
    insecure: Vec<String>,
    /// Registry host -> base URL (`http://127.0.0.1:5000`) pulled from instead.
    mirrors: HashMap<String, String>,
}

/// An image name split the way the distribution API addresses it.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// The registry as named in the image (`docker.io`, `127.0.0.1:5000`).
    pub host: String,
    /// The repository (`library/nginx`).
    pub repo: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Target {
    /// Splits a normalized name (`docker.io/library/nginx:1.25`, `host/repo@sha256:...`).
    pub fn parse(normalized: &str) -> anyhow::Result<Target> {
        let (name, reference) = match normalized.split_once('@') {
            // `name:tag@digest`: the digest decides.
            Some((n, d)) => (n.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map_or(n, |(n, _)| n), d),
            None => match normalized.rsplit_once(':') {
                Some((n, t)) if !t.contains('/') => (n, t),
                _ => (normalized, "latest"),
            },
        };
        let (host, repo) = name.split_once('/').with_context(|| format!("{normalized} names no registry"))?;
        if repo.is_empty() || reference.is_empty() {
            bail!("{normalized} is not a valid image reference");
        }
        Ok(Target { host: host.into(), repo: repo.into(), reference: reference.into() })
    }
}

/// A resolved manifest (for linux/amd64), as the registry sent it.
pub struct Manifest {
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub digest: String,
}

/// One pull: the target, its base URL and the bearer token once one was needed.
struct Session<'a> {
    registry: &'a Registry,
    target: Target,
    base: String,
    token: Option<String>,
}

impl Registry {
    /// `mirrors` are `host=URL` (`docker.io=http://127.0.0.1:5000`): images of that host
    /// are pulled from the URL instead, as containerd's registry mirrors do.
    pub fn new(insecure: Vec<String>, mirrors: &[String]) -> anyhow::Result<Registry> {
        let mut mirror_map = HashMap::new();
        for m in mirrors {
            let (host, url) = m.split_once('=').with_context(|| format!("registry mirror {m:?} is not HOST=URL"))?;
            let url = url.trim_end_matches('/');
            let parsed: Uri = url.parse().with_context(|| format!("registry mirror {m:?}: bad URL"))?;
            if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.authority().is_none() {
                bail!("registry mirror {m:?}: the URL must be http://HOST[:PORT] or https://HOST[:PORT]");
            }
            mirror_map.insert(host.to_string(), url.to_string());
        }
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .or_else(|_| {
                // No CA certificates on this machine: HTTPS registries fail when used.
                let roots = rustls::RootCertStore::empty();
                let config =
                    rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
                        .with_safe_default_protocol_versions()?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                anyhow::Ok(hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config))
            })?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Registry { client: Client::builder(TokioExecutor::new()).build(tls), insecure, mirrors: mirror_map })
    }

    fn plain_http(&self, host: &str) -> bool {
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        name == "localhost" || name == "127.0.0.1" || name == "[::1]" || self.insecure.iter().any(|i| i == host)
    }

    fn session(&self, normalized: &str) -> anyhow::Result<Session<'_>> {
        let target = Target::parse(normalized)?;
        if target.host == LOCAL_ONLY {
            bail!("{LOCAL_ONLY} images are not pulled: import them with `skiff image import`");
        }
        let base = match self.mirrors.get(&target.host) {
            Some(url) => format!("{url}/v2/{}", target.repo),
            None => {
                let api_host = if target.host == "docker.io" { "registry-1.docker.io" } else { &target.host };
                let scheme = if self.plain_http(&target.host) { "http" } else { "https" };
                format!("{scheme}://{api_host}/v2/{}", target.repo)
            }
        };
        Ok(Session { registry: self, target, base, token: None })
    }

    /// The manifest `normalized` names, for linux/amd64.
    pub async fn resolve(&self, normalized: &str) -> anyhow::Result<(Manifest, PullHandle<'_>)> {
        let mut s = self.session(normalized)?;
        let url = format!("{}/manifests/{}", s.base, s.target.reference);
        let (ct, bytes) = match s.get(&url, Some(MANIFEST_TYPES), MANIFEST_LIMIT).await? {
            Some(r) => r,
            None => bail!("failed to resolve reference \"{normalized}\": {normalized}: not found"),
        };
        if s.target.reference.starts_with("sha256:") && sha256(&bytes) != s.target.reference {
            bail!("the registry sent a manifest that does not match {}", s.target.reference);
        }
        let mut media_type = media_type_of(&ct, &bytes);
        let mut bytes = bytes;
        if media_type == OCI_INDEX || media_type == DOCKER_LIST {
            let index: Value = serde_json::from_slice(&bytes).context("the image index is not valid JSON")?;
            let pick = index["manifests"]
                .as_array()
                .and_then(|ms| {
                    ms.iter().find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
                })
                .with_context(|| format!("{normalized} has no linux/amd64 image"))?;
            let digest = pick["digest"].as_str().context("an index entry has no digest")?.to_string();
            let url = format!("{}/manifests/{digest}", s.base);
            let (ct, b) = s
                .get(&url, Some(MANIFEST_TYPES), MANIFEST_LIMIT)
                .await?
                .with_context(|| format!("{normalized}: manifest {digest} not found"))?;
            if sha256(&b) != digest {
                bail!("the registry sent a manifest that does not match {digest}");
            }
            media_type = pick["mediaType"].as_str().map(String::from).unwrap_or_else(|| media_type_of(&ct, &b));
            bytes = b;
        }
        if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
            bail!("{normalized}: unsupported manifest type {media_type}");
        }
        let digest = sha256(&bytes);
        Ok((Manifest { media_type, bytes, digest }, PullHandle(s)))
    }
}

/// Fetches the blobs of a resolved manifest (with the same token).
pub struct PullHandle<'a>(Session<'a>);

impl PullHandle<'_> {
    /// The config and layers, keyed `blobs/sha256/<hex>` as in an OCI layout, each verified.
    pub async fn blobs(mut self, manifest: &Manifest) -> anyhow::Result<HashMap<String, Vec<u8>>> {
        let m: Value = serde_json::from_slice(&manifest.bytes).context("the manifest is not valid JSON")?;
        let mut blobs = vec![&m["config"]];
        blobs.extend(m["layers"].as_array().context("the manifest has no layers")?.iter());
        // The manifest declares every size: refuse an image too large before fetching it.
        let mut wanted = Vec::new();
        let mut total = 0usize;
        for b in blobs {
            let d = b["digest"].as_str().context("a blob has no digest")?.to_string();
            if !d.starts_with("sha256:") || d.len() != 71 || !d[7..].bytes().all(|c| c.is_ascii_hexdigit()) {
                bail!("unsupported digest {d}");
            }
            let size = b["size"].as_u64().context("a blob has no size")? as usize;
            total = total.saturating_add(size);
            wanted.push((d, size));
        }
        if total > IMAGE_LIMIT {
            bail!("the image is {total} bytes, more than the {IMAGE_LIMIT} this node pulls");
        }
        let mut out = HashMap::new();
        for (d, size) in wanted {
            let url = format!("{}/blobs/{d}", self.0.base);
            let (_, data) = self.0.get(&url, None, size).await?.with_context(|| format!("blob {d} not found"))?;
            if sha256(&data) != d {
                bail!("blob {d} does not match its digest");
            }
            out.insert(format!("blobs/{}", d.replacen(':', "/", 1)), data);
        }
        Ok(out)
    }
}

/// The manifest's media type: its own `mediaType` field, else the Content-Type.
fn media_type_of(content_type: &str, bytes: &[u8]) -> String {
    let field = serde_json::from_slice::<Value>(bytes).ok().and_then(|v| v["mediaType"].as_str().map(String::from));
    field.unwrap_or_else(|| content_type.split(';').next().unwrap_or_default().trim().to_string())
}

/// A URL without its query (pre-signed storage URLs carry credentials there).
fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

fn authority(url: &str) -> Option<String> {
    url.parse::<Uri>().ok()?.authority().map(|a| a.to_string())
}

impl Session<'_> {
    /// GET `url`, following redirects and answering a bearer challenge once. Some((content
    /// type, body)) on success, None on 404.
    async fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        let registry_authority = authority(url);
        let mut url = url.to_string();
        let mut refreshed = false;
        for _ in 0..10 {
            // The token is for the registry, not for wherever it redirects blobs to.
            let bearer = self.token.as_deref().filter(|_| authority(&url) == registry_authority);
            let resp = self.registry.send(&url, accept, bearer).await?;
            let status = resp.status();
            let header = |h| resp.headers().get(h).and_then(|v: &hyper::header::HeaderValue| v.to_str().ok());
            if status.is_redirection() {
                let loc = header(LOCATION)
                    .with_context(|| format!("GET {}: {status} without a Location", without_query(&url)))?;
                let next = if loc.starts_with('/') {
                    let u: Uri = url.parse()?;
                    format!("{}://{}{loc}", u.scheme_str().unwrap_or("https"), u.authority().map_or("", |a| a.as_str()))
                } else {
                    loc.to_string()
                };
                // Only to http(s), and never from HTTPS down to plain HTTP.
                let (from, to) = (url.parse::<Uri>().ok(), next.parse::<Uri>().ok());
                let scheme = |u: &Option<Uri>| u.as_ref().and_then(|u| u.scheme_str().map(String::from));
                match (scheme(&from).as_deref(), scheme(&to).as_deref()) {
                    (Some("https"), Some("https")) | (Some("http"), Some("http" | "https")) => {}
                    _ => bail!("{}: refusing a redirect to {}", without_query(&url), without_query(&next)),
                }
                url = next;
                continue;
            }
            // A token is fetched when asked for, and once more if it expired meanwhile.
            if status == StatusCode::UNAUTHORIZED && (self.token.is_none() || !refreshed) {
                refreshed = self.token.is_some();
                let challenge = header(WWW_AUTHENTICATE).unwrap_or_default().to_string();
                self.token = Some(self.token_for(&challenge).await?);
                continue;
            }
            let content_type = header(CONTENT_TYPE).unwrap_or_default().to_string();
            let body = read_body(resp, limit, &url).await?;
            return match status {
                s if s.is_success() => Ok(Some((content_type, body.to_vec()))),
                StatusCode::NOT_FOUND => Ok(None),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => bail!(
                    "pull access denied for {}/{}: the registry wants credentials (imagePullSecrets are not supported)",
                    self.target.host,
                    self.target.repo
                ),
                // The body only when it came from the registry itself (not a redirect target).
                s if authority(&url) == registry_authority => {
                    bail!("GET {}: {s}: {}", without_query(&url), String::from_utf8_lossy(&body[..body.len().min(300)]))
                }
                s => bail!("GET {}: {s}", without_query(&url)),
            };
        }
        bail!("GET {}: too many redirects", without_query(&url))
    }

    /// An anonymous token for pulling this repository, from a `Bearer realm=...` challenge.
    async fn token_for(&mut self, challenge: &str) -> anyhow::Result<String> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            bail!(
                "pull access denied for {}/{}: the registry wants credentials (imagePullSecrets are not supported)",
                self.target.host,
                self.target.repo
            );
        };
        let fields = challenge_fields(params);
        let realm = fields.get("realm").context("the registry's challenge has no realm")?;
        let scope = fields.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", self.target.repo));
        let mut url = format!("{realm}?scope={}", query_escape(&scope));
        if let Some(service) = fields.get("service") {
            url.push_str(&format!("&service={}", query_escape(service)));
        }
        let resp = self.registry.send(&url, None, None).await?;
        let status = resp.status();
        let body = read_body(resp, MANIFEST_LIMIT, &url).await?;
        if !status.is_success() {
            bail!("the token service {realm} answered {status}");
        }
        let v: Value = serde_json::from_slice(&body).context("the token service sent invalid JSON")?;
        v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .map(String::from)
            .context("the token service sent no token")
    }
}

impl Registry {
    async fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        bearer: Option<&str>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let mut req = Request::get(url);
        if let Some(a) = accept {
            req = req.header(ACCEPT, a);
        }
        if let Some(t) = bearer {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let send = self.client.request(req.body(Empty::new()).with_context(|| format!("bad URL {url}"))?);
        tokio::time::timeout(REQUEST_TIMEOUT, send)
            .await
            .with_context(|| format!("GET {}: timed out", without_query(url)))?
            .with_context(|| format!("GET {}", without_query(url)))
    }
}

async fn read_body(resp: hyper::Response<hyper::body::Incoming>, limit: usize, url: &str) -> anyhow::Result<Bytes> {
    Ok(tokio::time::timeout(BODY_TIMEOUT, Limited::new(resp.into_body(), limit).collect())
        .await
        .with_context(|| format!("GET {}: timed out reading the body", without_query(url)))?
        .map_err(|e| anyhow::anyhow!("GET {}: {e}", without_query(url)))?
        .to_bytes())
}

/// `realm="...",service="...",scope="..."` as a map.
fn challenge_fields(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((v, n)) => (v.to_string(), n),
                None => (quoted.to_string(), ""),
            },
            None => match after.split_once(',') {
                Some((v, n)) => (v.trim().to_string(), n),
                None => (after.trim().to_string(), ""),
            },
        };
        out.insert(key, value);
        rest = next.trim_start_matches(',').trim();
    }
    out
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_host_repository_and_tag_or_digest() {
        let t = Target::parse("docker.io/library/nginx:1.25").unwrap();
        assert_eq!((t.host.as_str(), t.repo.as_str(), t.reference.as_str()), ("docker.io", "library/nginx", "1.25"));
        let t = Target::parse("127.0.0.1:5000/team/app").unwrap();
        assert_eq!((t.host.as_str(), t.repo.as_str(), t.reference.as_str()), ("127.0.0.1:5000", "team/app", "latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let t = Target::parse(&format!("127.0.0.1:5000/app:1@{d}")).unwrap();
        assert_eq!((t.repo.as_str(), t.reference.as_str()), ("app", d.as_str()));
        assert!(Target::parse("nginx").is_err());
    }

    #[test]
    fn bearer_challenges_are_parsed_like_docker_hubs() {
        let f = challenge_fields(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(f["realm"], "https://auth.docker.io/token");
        assert_eq!(f["service"], "registry.docker.io");
        assert_eq!(f["scope"], "repository:library/nginx:pull");
        assert_eq!(query_escape("repository:a/b:pull,push"), "repository:a/b:pull%2Cpush");
    }

    #[tokio::test]
    async fn local_only_and_plain_http_hosts_are_told_apart() {
        let r = Registry::new(vec!["registry.lan:5000".into()], &["docker.io=http://127.0.0.1:5000/".into()]).unwrap();
        let s = r.session("docker.io/library/nginx:1.25").unwrap();
        assert_eq!(s.base, "http://127.0.0.1:5000/v2/library/nginx", "a mirror replaces the registry");
        let s = r.session("quay.io/x/y:1").unwrap();
        assert_eq!(s.base, "https://quay.io/v2/x/y");
        assert!(Registry::new(vec![], &["docker.io".into()]).is_err());
        assert!(Registry::new(vec![], &["docker.io=ftp://x".into()]).is_err());
        assert!(r.plain_http("127.0.0.1:5000") && r.plain_http("localhost") && r.plain_http("registry.lan:5000"));
        assert!(!r.plain_http("docker.io") && !r.plain_http("registry.lan"));
        let err = r.session("skiff.local/busybox:latest").err().unwrap().to_string();
        assert!(err.contains("not pulled"), "{err}");
    }
}
