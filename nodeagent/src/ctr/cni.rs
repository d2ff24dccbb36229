//! Pod networking with the standard CNI plugins (Debian's containernetworking-plugins in
//! /usr/lib/cni): one network namespace per pod (made with `ip netns`), `loopback` for
//! `lo`, then the list `bridge` (with `host-local` IPAM) and `portmap` for `eth0`, run as
//! the CNI spec says — name and cniVersion copied into each plugin, `prevResult` chained,
//! `runtimeConfig.portMappings` for the plugin that declares that capability, DEL in
//! reverse order. ADD results are kept in the pod's directory so DEL gets its prevResult.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const CNI_VERSION: &str = "1.0.0";

#[derive(Clone, Debug)]
pub struct Network {
    /// The bridge pods attach to; its address is the pods' gateway.
    pub bridge: String,
    /// Pod addresses come from this subnet (e.g. 10.88.0.0/16).
    pub subnet: String,
    /// Where the plugin binaries are.
    pub bin_dir: PathBuf,
    /// host-local's reservations.
    pub state_dir: PathBuf,
}

/// The network namespace a pod's containers join.
pub fn netns_name(pod_uid: &str) -> String {
    format!("skiff-{pod_uid}")
}

pub fn netns_path(pod_uid: &str) -> String {
    format!("/var/run/netns/{}", netns_name(pod_uid))
}

async fn run(cmd: &mut tokio::process::Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().await.with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Network {
    /// The bridge's own address (the pods' gateway): the subnet's first host, and the
    /// prefix length.
    pub fn gateway(&self) -> Option<(std::net::Ipv4Addr, u8)> {
        let cidr: skiff_controllers::nodeipam::Cidr = self.subnet.parse().ok()?;
        (cidr.len <= 30).then(|| (std::net::Ipv4Addr::from(u32::from(cidr.net) + 1), cidr.len))
    }

    fn list(&self) -> Vec<Value> {
        vec![
            json!({
                "type": "bridge", "bridge": self.bridge, "isGateway": true, "ipMasq": false, "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.state_dir.join("ipam"),
                },
            }),
            json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
        ]
    }

    async fn plugin(
        &self,
        command: &str,
        mut conf: Value,
        id: &str,
        netns: &str,
        ifname: &str,
        args: &str,
    ) -> anyhow::Result<Value> {
        let kind = conf["type"].as_str().unwrap_or_default().to_string();
        conf["cniVersion"] = json!(CNI_VERSION);
        if conf.get("name").is_none() {
            conf["name"] = json!("skiff");
        }
        let bin = self.bin_dir.join(&kind);
        let mut child = tokio::process::Command::new(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!("running CNI plugin {} (apt-get install containernetworking-plugins)", bin.display())
            })?;
        let mut stdin = child.stdin.take().context("plugin stdin")?;
        stdin.write_all(&serde_json::to_vec(&conf)?).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        let stdout: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if !out.status.success() {
            let msg =
                stdout["msg"].as_str().map(String::from).unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into());
            bail!("CNI {kind} {command}: {msg} {}", stdout["details"].as_str().unwrap_or_default());
        }
        Ok(stdout)
    }

    /// Makes the pod's network namespace and wires it; returns the pod's IP.
    pub async fn add(&self, pod_dir: &Path, uid: &str, args: &str, ports: Vec<Value>) -> anyhow::Result<String> {
        let ns = netns_name(uid);
        let path = netns_path(uid);
        if !Path::new(&path).exists() {
            run(tokio::process::Command::new("ip").args(["netns", "add", &ns]), "ip netns add").await?;
        }
        self.plugin("ADD", json!({"type": "loopback"}), uid, &path, "lo", args).await?;
        let mut prev: Option<Value> = None;
        let result = async {
            for mut conf in self.list() {
                if let Some(p) = &prev {
                    conf["prevResult"] = p.clone();
                }
                if conf["capabilities"]["portMappings"] == json!(true) {
                    if ports.is_empty() {
                        continue;
                    }
                    conf["runtimeConfig"] = json!({"portMappings": ports});
                }
                prev = Some(self.plugin("ADD", conf, uid, &path, "eth0", args).await?);
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            let _ = self.del(pod_dir, uid, args).await;
            return Err(e);
        }
        let prev = prev.context("the CNI list returned no result")?;
        std::fs::write(pod_dir.join("cni-result.json"), serde_json::to_vec(&prev)?)?;
        let ip = prev["ips"][0]["address"].as_str().context("the CNI result has no IP")?;
        Ok(ip.split('/').next().unwrap_or(ip).to_string())
    }

    /// Unwires the pod (plugins in reverse) and removes its namespace. Idempotent.
    pub async fn del(&self, pod_dir: &Path, uid: &str, args: &str) -> anyhow::Result<()> {
        let path = netns_path(uid);
        let netns = if Path::new(&path).exists() { path.clone() } else { String::new() };
        let prev: Option<Value> =
            std::fs::read(pod_dir.join("cni-result.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let mut first_err = None;
        for mut conf in self.list().into_iter().rev() {
            if let Some(p) = &prev {
                conf["prevResult"] = p.clone();
            }
            if conf["capabilities"]["portMappings"] == json!(true) {
                conf["runtimeConfig"] = json!({"portMappings": []});
            }
            if let Err(e) = self.plugin("DEL", conf, uid, &netns, "eth0", args).await {
                first_err.get_or_insert(e);
            }
        }
        if !netns.is_empty() {
            let _ = self.plugin("DEL", json!({"type": "loopback"}), uid, &netns, "lo", args).await;
            run(tokio::process::Command::new("ip").args(["netns", "delete", &netns_name(uid)]), "ip netns delete")
                .await?;
        }
        let _ = std::fs::remove_file(pod_dir.join("cni-result.json"));
        first_err.map_or(Ok(()), Err)
    }

    /// Removes the bridge once no pod uses it (the bridge plugin never does).
    pub async fn remove_bridge(&self) {
        let _ = run(tokio::process::Command::new("ip").args(["link", "delete", &self.bridge]), "ip link delete").await;
    }
}
