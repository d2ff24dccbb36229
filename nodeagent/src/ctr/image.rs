//! Images in containerd's content store, through its API: importing OCI-layout and
//! docker-archive tarballs (`skiff image import`), unpacking layers into snapshots, and
//! reading back what a container needs (top snapshot, Env, Entrypoint, Cmd, WorkingDir).
//!
//! Import writes each blob with the garbage-collection labels containerd itself sets
//! (manifest -> config and layers, config -> its unpacked snapshot), under a lease so
//! nothing is collected half-way, then creates or updates the image record.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, InfoRequest, ReadContentRequest, UpdateImageRequest,
    WriteAction, WriteContentRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::registry::Registry;
use super::Conn;

pub const SNAPSHOTTER: &str = "overlayfs";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What a container of an image starts from.
#[derive(Clone, Debug, Default)]
pub struct ImageConfig {
    /// `name@sha256:...` of the manifest, reported as the container's imageID.
    pub id: String,
    /// The snapshot holding the unpacked top layer (its chain ID).
    pub top: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    /// The image's `User` (numeric `uid[:gid]` is honoured).
    pub user: String,
}

/// The name containerd stores an image reference under, as the kubelet normalizes it:
/// `busybox` is `docker.io/library/busybox:latest`.
pub fn normalize(reference: &str) -> String {
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let first = name.split('/').next().unwrap_or_default();
    let has_host = name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = match (has_host, name.contains('/')) {
        (true, _) => name.to_string(),
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if let Some(d) = digest {
        full = format!("{full}@{d}");
    } else if !last.contains(':') {
        full.push_str(":latest");
    }
    full
}

pub fn sha256(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    format!("sha256:{}", hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// chain(L0) = diffID(L0); chain(Ln) = sha256(chain(Ln-1) + " " + diffID(Ln)).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn read_tar(path: &Path) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let mut files = HashMap::new();
    for entry in archive.entries().with_context(|| format!("reading {} as a tar archive", path.display()))? {
        let mut entry = entry.with_context(|| format!("reading {} as a tar archive", path.display()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().trim_start_matches("./").to_string();
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut data)?;
        files.insert(name, data);
    }
    Ok(files)
}

/// A blob to write, with its descriptor.
struct Blob {
    desc: Descriptor,
    data: Vec<u8>,
    labels: HashMap<String, String>,
}

fn descriptor(media_type: &str, data: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: sha256(data),
        size: data.len() as i64,
        annotations: HashMap::new(),
    }
}

/// One image found in a tarball: its names, manifest, config and layers.
struct Found {
    names: Vec<String>,
    manifest: Blob,
    config: Blob,
    layers: Vec<Blob>,
    diff_ids: Vec<String>,
}

fn blob_file<'a>(files: &'a HashMap<String, Vec<u8>>, digest: &str) -> anyhow::Result<&'a Vec<u8>> {
    let path = format!("blobs/{}", digest.replacen(':', "/", 1));
    let data = files.get(&path).with_context(|| format!("the archive has no {path}"))?;
    if sha256(data) != digest {
        bail!("{path} does not match its digest");
    }
    Ok(data)
}

fn parse_json(data: &[u8], what: &str) -> anyhow::Result<Value> {
    serde_json::from_slice(data).with_context(|| format!("{what} is not valid JSON"))
}

/// The layers' uncompressed digests an image config lists (rootfs.diff_ids).
fn diff_ids(config: &[u8]) -> anyhow::Result<Vec<String>> {
    let config = parse_json(config, "the image config")?;
    Ok(config["rootfs"]["diff_ids"]
        .as_array()
        .context("the image config has no rootfs.diff_ids")?
        .iter()
        .filter_map(|d| d.as_str().map(String::from))
        .collect())
}

fn from_manifest(
    files: &HashMap<String, Vec<u8>>,
    names: Vec<String>,
    media_type: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<Found> {
    let m = parse_json(&bytes, "the manifest")?;
    let cfg_digest = m["config"]["digest"].as_str().context("the manifest has no config")?;
    let cfg_type = m["config"]["mediaType"].as_str().unwrap_or("application/vnd.oci.image.config.v1+json");
    let cfg_data = blob_file(files, cfg_digest)?.clone();
    let diff_ids = diff_ids(&cfg_data)?;
    let mut layers = Vec::new();
    for (i, l) in m["layers"].as_array().context("the manifest has no layers")?.iter().enumerate() {
        let digest = l["digest"].as_str().context("a layer has no digest")?;
        let data = blob_file(files, digest)?.clone();
        let mut desc = descriptor(l["mediaType"].as_str().unwrap_or_default(), &data);
        desc.media_type = l["mediaType"].as_str().unwrap_or_default().into();
        let diff = diff_ids.get(i).context("the config lists fewer diff_ids than the manifest has layers")?;
        let labels = HashMap::from([("containerd.io/uncompressed".to_string(), diff.clone())]);
        layers.push(Blob { desc, data, labels });
    }
    finish(
        names,
        media_type,
        bytes,
        Blob { desc: descriptor(cfg_type, &cfg_data), data: cfg_data, labels: HashMap::new() },
        layers,
        diff_ids,
    )
}

fn finish(
    names: Vec<String>,
    media_type: &str,
    bytes: Vec<u8>,
    config: Blob,
    layers: Vec<Blob>,
    diff_ids: Vec<String>,
) -> anyhow::Result<Found> {
    let mut labels = HashMap::from([("containerd.io/gc.ref.content.config".to_string(), config.desc.digest.clone())]);
    for (i, l) in layers.iter().enumerate() {
        labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.desc.digest.clone());
    }
    let manifest = Blob { desc: descriptor(media_type, &bytes), data: bytes, labels };
    Ok(Found { names, manifest, config, layers, diff_ids })
}

/// An OCI image layout: index.json naming manifests (or nested indexes).
fn oci_layout(files: &HashMap<String, Vec<u8>>, index: &[u8]) -> anyhow::Result<Vec<Found>> {
    let index = parse_json(index, "index.json")?;
    let mut found = Vec::new();
    for m in index["manifests"].as_array().context("index.json has no manifests")? {
        let ann = &m["annotations"];
        let name = ann["io.containerd.image.name"]
            .as_str()
            .or_else(|| ann["org.opencontainers.image.ref.name"].as_str().filter(|n| n.contains(['/', ':'])))
            .context("an image in index.json has no name (annotation io.containerd.image.name)")?;
        let mut digest = m["digest"].as_str().context("a manifest in index.json has no digest")?.to_string();
        let mut media_type = m["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string();
        // A multi-platform index: take linux/amd64.
        if media_type == OCI_INDEX || media_type == DOCKER_LIST {
            let nested = parse_json(blob_file(files, &digest)?, "a nested index")?;
            let pick = nested["manifests"]
                .as_array()
                .and_then(|ms| {
                    ms.iter().find(|e| e["platform"]["os"] == "linux" && e["platform"]["architecture"] == "amd64")
                })
                .context("the image has no linux/amd64 manifest")?;
            digest = pick["digest"].as_str().unwrap_or_default().to_string();
            media_type = pick["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string();
        }
        let bytes = blob_file(files, &digest)?.clone();
        found.push(from_manifest(files, vec![normalize(name)], &media_type, bytes)?);
    }
    Ok(found)
}

/// A `docker save` archive: manifest.json with Config, RepoTags and Layers file names.
/// containerd keeps it as a docker v2 manifest built from those files.
fn docker_archive(files: &HashMap<String, Vec<u8>>, manifest: &[u8]) -> anyhow::Result<Vec<Found>> {
    let list = parse_json(manifest, "manifest.json")?;
    let mut found = Vec::new();
    for entry in list.as_array().context("manifest.json is not a list")? {
        let file = |key: &str| -> anyhow::Result<&Vec<u8>> {
            files.get(key).with_context(|| format!("the archive has no {key} (named in manifest.json)"))
        };
        let cfg_data = file(entry["Config"].as_str().context("manifest.json has no Config")?)?.clone();
        let diff_ids = diff_ids(&cfg_data)?;
        let mut layers = Vec::new();
        for (i, l) in entry["Layers"].as_array().context("manifest.json has no Layers")?.iter().enumerate() {
            let data = file(l.as_str().unwrap_or_default())?.clone();
            let gz = data.starts_with(&[0x1f, 0x8b]);
            let media = if gz {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            } else {
                "application/vnd.docker.image.rootfs.diff.tar"
            };
            let diff = diff_ids.get(i).context("the config lists fewer diff_ids than manifest.json has layers")?;
            let labels = HashMap::from([("containerd.io/uncompressed".to_string(), diff.clone())]);
            layers.push(Blob { desc: descriptor(media, &data), data, labels });
        }
        let config = Blob {
            desc: descriptor("application/vnd.docker.container.image.v1+json", &cfg_data),
            data: cfg_data,
            labels: HashMap::new(),
        };
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": config.desc.media_type, "digest": config.desc.digest, "size": config.desc.size},
            "layers": layers.iter().map(|l| json!({"mediaType": l.desc.media_type, "digest": l.desc.digest, "size": l.desc.size})).collect::<Vec<_>>(),
        });
        let names: Vec<String> = entry["RepoTags"]
            .as_array()
            .map(|t| t.iter().filter_map(|n| n.as_str()).map(normalize).collect())
            .unwrap_or_default();
        if names.is_empty() {
            bail!("an image in manifest.json has no RepoTags to name it by");
        }
        found.push(finish(names, DOCKER_MANIFEST, serde_json::to_vec(&manifest)?, config, layers, diff_ids)?);
    }
    Ok(found)
}

impl Conn {
    /// Writes a blob unless the store has it already.
    async fn write_blob(&self, blob: &Blob) -> anyhow::Result<()> {
        let have = self.content().info(self.req(InfoRequest { digest: blob.desc.digest.clone() })).await;
        if have.is_ok() {
            return Ok(());
        }
        const CHUNK: usize = 1 << 20;
        let reference = format!("skiff-import-{}", blob.desc.digest);
        let total = blob.data.len() as i64;
        let mut msgs: Vec<WriteContentRequest> = blob
            .data
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, c)| WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.clone(),
                total,
                expected: blob.desc.digest.clone(),
                offset: (i * CHUNK) as i64,
                data: c.to_vec(),
                labels: HashMap::new(),
            })
            .collect();
        msgs.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference,
            total,
            expected: blob.desc.digest.clone(),
            offset: total,
            data: Vec::new(),
            labels: blob.labels.clone(),
        });
        match self.content().write(self.req(futures::stream::iter(msgs))).await {
            Ok(resp) => {
                let mut s = resp.into_inner();
                while let Some(r) = s.next().await {
                    match r {
                        Ok(_) => {}
                        Err(e) if e.code() == Code::AlreadyExists => break,
                        Err(e) => return Err(e).context(format!("writing {}", blob.desc.digest)),
                    }
                }
                Ok(())
            }
            Err(e) if e.code() == Code::AlreadyExists => Ok(()),
            Err(e) => Err(e).context(format!("writing {}", blob.desc.digest)),
        }
    }

    /// Reads a whole blob from the content store.
    pub async fn read_blob(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let mut s = self
            .content()
            .read(self.req(ReadContentRequest { digest: digest.into(), offset: 0, size: 0 }))
            .await
            .with_context(|| format!("reading {digest}"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?.data);
        }
        Ok(out)
    }

    async fn put_image(&self, name: &str, target: &Descriptor) -> anyhow::Result<()> {
        let image = Image { name: name.into(), target: Some(target.clone()), ..Default::default() };
        let exists = self.images().get(self.req(GetImageRequest { name: name.into() })).await.is_ok();
        if exists {
            let req = UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None };
            self.images().update(self.req(req)).await.with_context(|| format!("updating image {name}"))?;
        } else {
            let req = CreateImageRequest { image: Some(image), source_date_epoch: None };
            self.images().create(self.req(req)).await.with_context(|| format!("creating image {name}"))?;
        }
        Ok(())
    }

    /// Unpacks layers into committed snapshots named by chain ID; returns the top one.
    async fn unpack(&self, layers: &[Descriptor], diff_ids: &[String]) -> anyhow::Result<String> {
        let chains = chain_ids(diff_ids);
        for (i, chain) in chains.iter().enumerate() {
            let stat = StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: chain.clone() };
            if self.snapshots().stat(self.req(stat)).await.is_ok() {
                continue;
            }
            let layer = layers.get(i).context("fewer layers than diff_ids")?;
            let key = format!("extract-{}-{chain}", std::process::id());
            let parent = if i == 0 { String::new() } else { chains[i - 1].clone() };
            let prep = PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            };
            let mounts =
                self.snapshots().prepare(self.req(prep)).await.context("preparing a snapshot")?.into_inner().mounts;
            let applied = self
                .diff()
                .apply(self.req(ApplyRequest {
                    diff: Some(layer.clone()),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                }))
                .await;
            let result = match applied {
                Ok(r) => {
                    let got = r.into_inner().applied.map(|d| d.digest).unwrap_or_default();
                    if got != diff_ids[i] {
                        Err(anyhow::anyhow!(
                            "layer {} unpacked to {got}, not its diff ID {}",
                            layer.digest,
                            diff_ids[i]
                        ))
                    } else {
                        let commit = CommitSnapshotRequest {
                            snapshotter: SNAPSHOTTER.into(),
                            name: chain.clone(),
                            key: key.clone(),
                            labels: HashMap::new(),
                        };
                        self.snapshots().commit(self.req(commit)).await.map(|_| ()).or_else(|e| {
                            if e.code() == Code::AlreadyExists {
                                Ok(())
                            } else {
                                Err(e.into())
                            }
                        })
                    }
                }
                Err(e) => Err(anyhow::Error::from(e).context(format!("unpacking layer {}", layer.digest))),
            };
            if let Err(e) = result {
                let _ = self
                    .snapshots()
                    .remove(self.req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key }))
                    .await;
                return Err(e);
            }
        }
        chains.last().cloned().context("the image has no layers")
    }

    /// Imports every image in an OCI-layout or docker-archive tarball; returns their names.
    pub async fn import(&self, path: &Path) -> anyhow::Result<Vec<String>> {
        let files = read_tar(path)?;
        let found = if let Some(index) = files.get("index.json") {
            oci_layout(&files, index)?
        } else if let Some(manifest) = files.get("manifest.json") {
            docker_archive(&files, manifest)?
        } else {
            bail!(
                "{} is neither an OCI image layout (index.json) nor a docker archive (manifest.json)",
                path.display()
            );
        };
        self.store(found).await
    }

    /// Writes found images' blobs, unpacks their layers and names them; returns the names.
    async fn store(&self, found: Vec<Found>) -> anyhow::Result<Vec<String>> {
        self.leased(|conn| async move {
            let mut names = Vec::new();
            for mut f in found {
                for l in &f.layers {
                    conn.write_blob(l).await?;
                }
                let layers: Vec<Descriptor> = f.layers.iter().map(|l| l.desc.clone()).collect();
                let top = conn.unpack(&layers, &f.diff_ids).await?;
                f.config.labels.insert(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top);
                conn.write_blob(&f.config).await?;
                conn.write_blob(&f.manifest).await?;
                for n in &f.names {
                    conn.put_image(n, &f.manifest.desc).await?;
                    names.push(n.clone());
                }
            }
            anyhow::Ok(names)
        })
        .await
    }

    /// Pulls `reference` from its registry (unless containerd already has the manifest
    /// the registry names now) and unpacks it, as `ctr images pull` would.
    pub async fn pull(&self, registry: &Registry, reference: &str) -> anyhow::Result<()> {
        let name = normalize(reference);
        let fail = |e: anyhow::Error| e.context(format!("failed to pull and unpack image \"{name}\""));
        let (manifest, handle) = registry.resolve(&name).await.map_err(fail)?;
        let current = self.images().get(self.req(GetImageRequest { name: name.clone() })).await.ok();
        let target = current.and_then(|r| r.into_inner().image).and_then(|i| i.target).map(|t| t.digest);
        if target.as_deref() == Some(manifest.digest.as_str()) && matches!(self.image_config(&name).await, Ok(Some(_)))
        {
            return Ok(());
        }
        let blobs = handle.blobs(&manifest).await.map_err(fail)?;
        let found = from_manifest(&blobs, vec![name.clone()], &manifest.media_type, manifest.bytes).map_err(fail)?;
        self.store(vec![found]).await.map_err(fail)?;
        Ok(())
    }

    /// The image `reference` as a container needs it; None when containerd does not have it.
    pub async fn image_config(&self, reference: &str) -> anyhow::Result<Option<ImageConfig>> {
        let name = normalize(reference);
        let image = match self.images().get(self.req(GetImageRequest { name: name.clone() })).await {
            Ok(r) => r.into_inner().image.context("containerd returned no image")?,
            Err(e) if e.code() == Code::NotFound => return Ok(None),
            Err(e) => return Err(e).context(format!("looking up image {name}")),
        };
        let mut target = image.target.context("the image has no target")?;
        if target.media_type == OCI_INDEX || target.media_type == DOCKER_LIST {
            let index = parse_json(&self.read_blob(&target.digest).await?, "the image index")?;
            let pick = index["manifests"]
                .as_array()
                .and_then(|ms| {
                    ms.iter().find(|e| e["platform"]["os"] == "linux" && e["platform"]["architecture"] == "amd64")
                })
                .context("the image has no linux/amd64 manifest")?;
            target.digest = pick["digest"].as_str().unwrap_or_default().into();
        }
        let manifest = parse_json(&self.read_blob(&target.digest).await?, "the manifest")?;
        let cfg_digest = manifest["config"]["digest"].as_str().context("the manifest has no config")?;
        let config = parse_json(&self.read_blob(cfg_digest).await?, "the image config")?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str().map(String::from)).collect())
            .unwrap_or_default();
        let layers: Vec<Descriptor> = manifest["layers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| Descriptor {
                        media_type: l["mediaType"].as_str().unwrap_or_default().into(),
                        digest: l["digest"].as_str().unwrap_or_default().into(),
                        size: l["size"].as_i64().unwrap_or_default(),
                        annotations: HashMap::new(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let top = chain_ids(&diff_ids).last().cloned().context("the image has no layers")?;
        let stat = StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: top.clone() };
        if self.snapshots().stat(self.req(stat)).await.is_err() {
            self.leased(|conn| async move { conn.unpack(&layers, &diff_ids).await }).await?;
        }
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
        };
        let c = &config["config"];
        let repo = name.split('@').next().unwrap_or(&name);
        let repo = match repo.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => repo,
        };
        Ok(Some(ImageConfig {
            id: format!("{repo}@{}", target.digest),
            top,
            env: strings(&c["Env"]),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().into(),
            user: c["User"].as_str().unwrap_or_default().into(),
        }))
    }
}

/// Writes a small OCI-layout image tarball built from a static busybox binary: one
/// uncompressed layer with `/bin/busybox`, a link per applet, `/etc/passwd`, `/tmp` and a
/// web root `/www` holding `index.html`. Reproducible: fixed owners and times.
pub fn build_busybox(busybox: &Path, name: &str, out: &Path) -> anyhow::Result<()> {
    let bin = std::fs::read(busybox)
        .with_context(|| format!("reading {} (apt-get install busybox-static)", busybox.display()))?;
    let list = std::process::Command::new(busybox).arg("--list").output().context("listing busybox applets")?;
    let applets: Vec<String> =
        String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox").map(String::from).collect();
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin/", "etc/", "tmp/", "www/", "var/", "root/"] {
        let mode = if dir == "tmp/" { 0o1777 } else { 0o755 };
        layer.append_data(&mut header(tar::EntryType::Directory, mode, 0), dir, std::io::empty())?;
    }
    layer.append_data(&mut header(tar::EntryType::Regular, 0o755, bin.len() as u64), "bin/busybox", &bin[..])?;
    for a in &applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        layer.append_link(&mut h, format!("bin/{a}"), "busybox")?;
    }
    let files: [(&str, &[u8]); 3] = [
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        ("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
        ("www/index.html", b"hello from skiff\n"),
    ];
    for (path, data) in files {
        layer.append_data(&mut header(tar::EntryType::Regular, 0o644, data.len() as u64), path, data)?;
    }
    let layer = layer.into_inner()?;
    write_image(out, name, layer, json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}))
}

/// A tar header owned by root with a fixed time, so equal trees give equal layers.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_577_836_800);
    h
}

/// Writes an OCI-layout tarball of a one-layer image named `name` (importable with
/// `skiff image import`); `config` is the image config's `config` section.
fn write_image(out: &Path, name: &str, layer: Vec<u8>, config: Value) -> anyhow::Result<()> {
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(&manifest), "size": manifest.len(),
            "annotations": {"io.containerd.image.name": normalize(name)}}],
    }))?;
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut tar = tar::Builder::new(file);
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let entries: Vec<(String, &[u8])> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), &index),
        (blob(&sha256(&manifest)), &manifest),
        (blob(&sha256(&config)), &config),
        (blob(&layer_digest), &layer),
    ];
    for (path, data) in entries {
        tar.append_data(&mut header(tar::EntryType::Regular, 0o644, data.len() as u64), path, data)?;
    }
    tar.finish()?;
    Ok(())
}

/// Writes an image whose one layer is the directory tree `rootfs` (files, directories
/// and symlinks with their modes, owned by root), running `cmd` with `env`.
pub fn build_from_dir(rootfs: &Path, name: &str, cmd: &[String], env: &[String], out: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !rootfs.is_dir() {
        bail!("{} is not a directory", rootfs.display());
    }
    let mut layer = tar::Builder::new(Vec::new());
    let mut stack = vec![rootfs.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(rootfs).expect("under the root").to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                layer.append_link(&mut header(tar::EntryType::Symlink, 0o777, 0), &rel, &target)?;
            } else if meta.is_dir() {
                layer.append_data(
                    &mut header(tar::EntryType::Directory, mode, 0),
                    format!("{rel}/"),
                    std::io::empty(),
                )?;
                stack.push(path);
            } else if meta.is_file() {
                let data = std::fs::read(&path)?;
                layer.append_data(&mut header(tar::EntryType::Regular, mode, data.len() as u64), &rel, &data[..])?;
            }
        }
    }
    let layer = layer.into_inner()?;
    let env = if env.is_empty() {
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()]
    } else {
        env.to_vec()
    };
    write_image(out, name, layer, json!({"Env": env, "Cmd": cmd, "WorkingDir": "/"}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalized_as_the_kubelet_does() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(normalize("me/app"), "docker.io/me/app:latest");
        assert_eq!(normalize("127.0.0.1:5000/skiff/busybox"), "127.0.0.1:5000/skiff/busybox:latest");
        assert_eq!(normalize("localhost/x:1"), "localhost/x:1");
        assert_eq!(normalize("skiff.local/busybox:test"), "skiff.local/busybox:test");
        assert_eq!(normalize("busybox@sha256:ab"), "docker.io/library/busybox@sha256:ab");
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let d = ["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256(b"sha256:a sha256:b"));
    }
}
