//! A pod's volumes on the node and its containers' environment.
//!
//! Volumes live under the pod's directory (`<root>/pods/<uid>/volumes/<name>`):
//! emptyDir (a tmpfs for `medium: Memory`), secret and configMap (one file per key,
//! `items` and `defaultMode` honoured), projected (serviceAccountToken, configMap,
//! secret and downwardAPI sources in one directory; tokens requested bound to the pod and
//! renewed at 80 % of their lifetime), hostPath (checked or created as its `type` says)
//! and persistentVolumeClaim (the bound volume's hostPath or local path). Containers get
//! them as bind mounts (`subPath`, `readOnly`). Env follows the kubelet: `envFrom` first,
//! then `env` (value, fieldRef, resourceFieldRef, secretKeyRef, configMapKeyRef); a
//! missing secret, configMap or key fails with the kubelet's words unless `optional`.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::Api;

use super::spec::Bind;

/// Host paths of the pod's volumes, by volume name.
pub struct Volumes {
    paths: HashMap<String, PathBuf>,
    /// Secret and configMap volumes: always mounted read-only, as in Kubernetes.
    read_only: std::collections::HashSet<String>,
    /// Service account tokens to keep fresh once the pod runs (`start_renewals`).
    renewals: Vec<(TokenSource, PathBuf, i32)>,
}

impl Volumes {
    /// Starts renewing the pod's service account tokens (once per successful `prepare`).
    pub fn start_renewals(&mut self) {
        for (source, file, mode) in self.renewals.drain(..) {
            tokio::spawn(source.renew(file, mode));
        }
    }
}

/// A DNS-1123 label, as Kubernetes requires of volume and container names; anything
/// else would be unsafe to use as a path component on the node.
pub fn is_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

impl Volumes {
    /// The bind mounts of one container.
    pub fn binds(&self, c: &Container) -> anyhow::Result<Vec<Bind>> {
        let mut out = Vec::new();
        for m in c.volume_mounts.clone().unwrap_or_default() {
            let base = self.paths.get(&m.name).with_context(|| format!("volume \"{}\" is not defined", m.name))?;
            let mut source = base.clone();
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if Path::new(sub).is_absolute() || sub.split('/').any(|p| p == "..") {
                    bail!("subPath \"{sub}\" must be a relative path without '..'");
                }
                source = base.join(sub);
                if std::fs::symlink_metadata(&source).is_err() {
                    std::fs::create_dir_all(&source)?;
                }
                // A container may have planted symlinks in its volume: the resolved path
                // must stay inside the volume.
                let (real, root) = (std::fs::canonicalize(&source)?, std::fs::canonicalize(base)?);
                if !real.starts_with(&root) {
                    bail!("subPath \"{sub}\" leads outside volume \"{}\"", m.name);
                }
                source = real;
            }
            out.push(Bind {
                source: source.display().to_string(),
                destination: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false) || self.read_only.contains(&m.name),
            });
        }
        Ok(out)
    }
}

fn namespace(pod: &Pod) -> String {
    pod.metadata.namespace.clone().unwrap_or_else(|| "default".into())
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> anyhow::Result<Option<K>>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get(name).await {
        Ok(o) => Ok(Some(o)),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> =
        s.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    for (k, v) in s.string_data.clone().unwrap_or_default() {
        out.insert(k, v.into_bytes());
    }
    out
}

fn configmap_data(c: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> =
        c.data.clone().unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    for (k, v) in c.binary_data.clone().unwrap_or_default() {
        out.insert(k, v.0);
    }
    out
}

/// Writes keys as files (all, or the `items` remapping) with the given mode.
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
    mode: i32,
    what: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let files: Vec<(String, &Vec<u8>, i32)> = match items {
        Some(items) if !items.is_empty() => items
            .iter()
            .map(|it| {
                let v = data.get(&it.key).with_context(|| format!("couldn't find key {} in {what}", it.key))?;
                Ok((it.path.clone(), v, it.mode.unwrap_or(mode)))
            })
            .collect::<anyhow::Result<_>>()?,
        _ => data.iter().map(|(k, v)| (k.clone(), v, mode)).collect(),
    };
    for (path, value, mode) in files {
        if Path::new(&path).is_absolute() || path.split('/').any(|p| p == "..") {
            bail!("item path \"{path}\" must be relative without '..'");
        }
        let file = dir.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Never through a symlink: remove what is there, then create anew.
        let _ = std::fs::remove_file(&file);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&file)?;
        std::io::Write::write_all(&mut f, value)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode as u32 & 0o777))?;
    }
    Ok(())
}

fn is_mounted(path: &Path) -> bool {
    let target = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

fn run(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A downwardAPI item's value: the pod's namespace, name, uid, labels or annotations.
fn field_value(pod: &Pod, path: &str) -> anyhow::Result<Vec<u8>> {
    let md = &pod.metadata;
    let map = |m: &Option<BTreeMap<String, String>>| -> Vec<u8> {
        m.iter().flatten().map(|(k, v)| format!("{k}=\"{v}\"\n")).collect::<String>().into_bytes()
    };
    Ok(match path {
        "metadata.namespace" => md.namespace.clone().unwrap_or_default().into_bytes(),
        "metadata.name" => md.name.clone().unwrap_or_default().into_bytes(),
        "metadata.uid" => md.uid.clone().unwrap_or_default().into_bytes(),
        "metadata.labels" => map(&md.labels),
        "metadata.annotations" => map(&md.annotations),
        other => bail!("unsupported fieldPath {other}"),
    })
}

/// Fills a projected volume's directory from its sources. Service account tokens are
/// kept fresh by a task that renews them until the pod's directory goes.
async fn projected(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    p: &k8s_openapi::api::core::v1::ProjectedVolumeSource,
    dir: &Path,
    renewals: &mut Vec<(TokenSource, PathBuf, i32)>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mode = p.default_mode.unwrap_or(0o644);
    for source in p.sources.iter().flatten() {
        if let Some(t) = &source.service_account_token {
            let account = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or("default".into());
            let seconds = t.expiration_seconds.unwrap_or(3600).clamp(600, 1 << 32);
            let request = TokenSource {
                client: client.clone(),
                ns: ns.to_string(),
                account,
                audience: t.audience.clone(),
                seconds,
                pod: (pod.metadata.name.clone().unwrap_or_default(), pod.metadata.uid.clone().unwrap_or_default()),
            };
            let token = request.fetch().await?;
            let data = BTreeMap::from([(t.path.clone(), token.into_bytes())]);
            write_keys(dir, &data, None, mode, "the service account token")?;
            renewals.push((request, dir.join(&t.path), mode));
        }
        if let Some(c) = &source.config_map {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            match get_opt(&api, &c.name).await? {
                Some(cm) => write_keys(
                    dir,
                    &configmap_data(&cm),
                    c.items.as_deref(),
                    mode,
                    &format!("ConfigMap {ns}/{}", c.name),
                )?,
                None if c.optional == Some(true) => {}
                None => bail!("configmap \"{}\" not found", c.name),
            }
        }
        if let Some(s) = &source.secret {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            match get_opt(&api, &s.name).await? {
                Some(secret) => write_keys(
                    dir,
                    &secret_data(&secret),
                    s.items.as_deref(),
                    mode,
                    &format!("Secret {ns}/{}", s.name),
                )?,
                None if s.optional == Some(true) => {}
                None => bail!("secret \"{}\" not found", s.name),
            }
        }
        if let Some(d) = &source.downward_api {
            let mut data = BTreeMap::new();
            for item in d.items.iter().flatten() {
                match &item.field_ref {
                    Some(f) => drop(data.insert(item.path.clone(), field_value(pod, &f.field_path)?)),
                    None => bail!("downwardAPI item {}: only fieldRef is supported", item.path),
                }
            }
            write_keys(dir, &data, None, mode, "downwardAPI")?;
        }
    }
    Ok(())
}

/// How to ask the API server for a pod's service account token.
struct TokenSource {
    client: kube::Client,
    ns: String,
    account: String,
    audience: Option<String>,
    seconds: i64,
    /// Name and uid of the pod the token is bound to.
    pod: (String, String),
}

impl TokenSource {
    async fn fetch(&self) -> anyhow::Result<String> {
        use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
        let api: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(self.client.clone(), &self.ns);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: self.audience.iter().cloned().collect(),
                expiration_seconds: Some(self.seconds),
                bound_object_ref: Some(BoundObjectReference {
                    kind: Some("Pod".into()),
                    api_version: Some("v1".into()),
                    name: Some(self.pod.0.clone()),
                    uid: Some(self.pod.1.clone()),
                }),
            },
            ..Default::default()
        };
        let resp = api
            .create_token_request(&self.account, &Default::default(), &req)
            .await
            .with_context(|| format!("requesting a token for service account {}/{}", self.ns, self.account))?;
        resp.status.map(|s| s.token).context("the token request returned no token")
    }

    /// Replaces the token at 80 % of its lifetime (retrying every 10 s on failure) for as
    /// long as its file's directory exists.
    async fn renew(self, file: PathBuf, mode: i32) {
        let mut wait = std::time::Duration::from_secs((self.seconds as u64) * 4 / 5);
        loop {
            tokio::time::sleep(wait).await;
            let Some(dir) = file.parent().filter(|d| d.exists()) else { return };
            wait = match self.fetch().await {
                Ok(token) => {
                    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let tmp = dir.join(format!(".{name}.tmp"));
                    let written = std::fs::write(&tmp, token)
                        .and_then(|_| {
                            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode as u32 & 0o777))
                        })
                        .and_then(|_| std::fs::rename(&tmp, &file));
                    if let Err(e) = written {
                        tracing::warn!("writing the renewed token {}: {e}", file.display());
                    }
                    std::time::Duration::from_secs((self.seconds as u64) * 4 / 5)
                }
                Err(e) => {
                    tracing::warn!("{e:#}");
                    std::time::Duration::from_secs(10)
                }
            };
        }
    }
}

/// Makes every volume of the pod ready on the node.
pub async fn prepare(client: &kube::Client, pod: &Pod, pod_dir: &Path) -> anyhow::Result<Volumes> {
    let ns = namespace(pod);
    let mut paths = HashMap::new();
    let mut read_only = std::collections::HashSet::new();
    let mut renewals = Vec::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
        if !is_label(&v.name) {
            bail!("volume name \"{}\" is not a valid DNS-1123 label", v.name);
        }
        if v.secret.is_some() || v.config_map.is_some() || v.projected.is_some() {
            read_only.insert(v.name.clone());
        }
        let dir = pod_dir.join("volumes").join(&v.name);
        let path = if let Some(e) = &v.empty_dir {
            std::fs::create_dir_all(&dir)?;
            if e.medium.as_deref() == Some("Memory") && !is_mounted(&dir) {
                let mut opts = "mode=0777".to_string();
                if let Some(size) = e.size_limit.as_ref().and_then(|q| skiff_controllers::quantity::milli(&q.0)) {
                    opts.push_str(&format!(",size={}", size / 1000));
                }
                run(std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &opts, "tmpfs"]).arg(&dir))
                    .with_context(|| format!("mounting a tmpfs for emptyDir \"{}\"", v.name))?;
            } else {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
            }
            dir
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&p)?,
                "FileOrCreate" => {
                    if let Some(parent) = p.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::OpenOptions::new().create(true).append(true).open(&p)?;
                }
                "Directory" if !p.is_dir() => bail!("hostPath type check failed: {} is not a directory", h.path),
                "File" if !p.is_file() => bail!("hostPath type check failed: {} is not a file", h.path),
                _ => {}
            }
            p
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            match get_opt(&api, &name).await? {
                Some(secret) => {
                    let what = format!("Secret {ns}/{name}");
                    write_keys(&dir, &secret_data(&secret), s.items.as_deref(), s.default_mode.unwrap_or(0o644), &what)?
                }
                None if s.optional == Some(true) => std::fs::create_dir_all(&dir)?,
                None => bail!("secret \"{name}\" not found"),
            }
            dir
        } else if let Some(c) = &v.config_map {
            let name = c.name.clone();
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            match get_opt(&api, &name).await? {
                Some(cm) => {
                    let what = format!("ConfigMap {ns}/{name}");
                    write_keys(&dir, &configmap_data(&cm), c.items.as_deref(), c.default_mode.unwrap_or(0o644), &what)?
                }
                None if c.optional == Some(true) => std::fs::create_dir_all(&dir)?,
                None => bail!("configmap \"{name}\" not found"),
            }
            dir
        } else if let Some(p) = &v.projected {
            projected(client, pod, &ns, p, &dir, &mut renewals)
                .await
                .with_context(|| format!("projected volume \"{}\"", v.name))?;
            dir
        } else if let Some(claim) = &v.persistent_volume_claim {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            let pvc = get_opt(&api, &claim.claim_name)
                .await?
                .with_context(|| format!("persistentvolumeclaim \"{}\" not found", claim.claim_name))?;
            let pv_name = pvc
                .spec
                .and_then(|s| s.volume_name)
                .with_context(|| format!("persistentvolumeclaim \"{}\" is not bound", claim.claim_name))?;
            let pv = Api::<PersistentVolume>::all(client.clone()).get(&pv_name).await?;
            let spec = pv.spec.unwrap_or_default();
            let p = spec
                .host_path
                .map(|h| h.path)
                .or(spec.local.map(|l| l.path))
                .with_context(|| format!("volume {pv_name} is neither hostPath nor local"))?;
            std::fs::create_dir_all(&p)?;
            PathBuf::from(p)
        } else {
            // Unsupported sources (projected, downwardAPI, ...) get an empty directory.
            tracing::warn!(
                "volume \"{}\" of {ns}/{}: unsupported type, using an empty directory",
                v.name,
                pod.metadata.name.as_deref().unwrap_or_default()
            );
            std::fs::create_dir_all(&dir)?;
            dir
        };
        paths.insert(v.name.clone(), path);
    }
    Ok(Volumes { paths, read_only, renewals })
}

/// Unmounts the tmpfs volumes under a pod directory before it is removed.
pub fn unmount_all(pod_dir: &Path) {
    let prefix = pod_dir.display().to_string();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    for m in mounts {
        let _ = std::process::Command::new("umount").arg(&m).status();
    }
}

fn resource_value(c: &Container, resource: &str, divisor: Option<&str>) -> Option<String> {
    let (which, key) = resource.split_once('.')?;
    let r = c.resources.as_ref();
    let map = if which == "limits" { r.and_then(|r| r.limits.as_ref()) } else { r.and_then(|r| r.requests.as_ref()) };
    let milli = map.and_then(|m| m.get(key)).and_then(|q| skiff_controllers::quantity::milli(&q.0)).unwrap_or(0);
    let div = divisor.and_then(skiff_controllers::quantity::milli).filter(|d| *d > 0).unwrap_or(1000);
    // Rounded up, as the kubelet does.
    Some(((milli + div - 1) / div).to_string())
}

/// The container's environment, in order (later entries win).
pub async fn env(client: &kube::Client, pod: &Pod, c: &Container, ip: &str) -> anyhow::Result<Vec<(String, String)>> {
    let ns = namespace(pod);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut out = Vec::new();
    for from in c.env_from.clone().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(s) = &from.secret_ref {
            match get_opt(&secrets, &s.name).await? {
                Some(sec) => secret_data(&sec),
                None if s.optional == Some(true) => continue,
                None => bail!("secret \"{}\" not found", s.name),
            }
        } else if let Some(m) = &from.config_map_ref {
            match get_opt(&maps, &m.name).await? {
                Some(cm) => configmap_data(&cm),
                None if m.optional == Some(true) => continue,
                None => bail!("configmap \"{}\" not found", m.name),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            out.push((format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned()));
        }
    }
    for e in c.env.clone().unwrap_or_default() {
        let value = match e.value_from {
            None => e.value.unwrap_or_default(),
            Some(from) => {
                if let Some(f) = from.field_ref {
                    super::field_value(pod, &f.field_path, ip)
                        .with_context(|| format!("unsupported fieldPath: {}", f.field_path))?
                } else if let Some(r) = from.resource_field_ref {
                    resource_value(c, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()))
                        .with_context(|| format!("unsupported resource: {}", r.resource))?
                } else if let Some(k) = from.secret_key_ref {
                    let optional = k.optional == Some(true);
                    match get_opt(&secrets, &k.name).await? {
                        Some(sec) => match secret_data(&sec).get(&k.key) {
                            Some(v) => String::from_utf8_lossy(v).into_owned(),
                            None if optional => continue,
                            None => bail!("couldn't find key {} in Secret {ns}/{}", k.key, k.name),
                        },
                        None if optional => continue,
                        None => bail!("secret \"{}\" not found", k.name),
                    }
                } else if let Some(k) = from.config_map_key_ref {
                    let optional = k.optional == Some(true);
                    match get_opt(&maps, &k.name).await? {
                        Some(cm) => match configmap_data(&cm).get(&k.key) {
                            Some(v) => String::from_utf8_lossy(v).into_owned(),
                            None if optional => continue,
                            None => bail!("couldn't find key {} in ConfigMap {ns}/{}", k.key, k.name),
                        },
                        None if optional => continue,
                        None => bail!("configmap \"{}\" not found", k.name),
                    }
                } else {
                    String::new()
                }
            }
        };
        out.push((e.name, value));
    }
    Ok(out)
}
