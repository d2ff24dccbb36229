//! The containerd the agent talks to: either one it is given (`--containerd-socket`), or
//! a private one it starts itself with its own config, root, state and socket under the
//! agent's root directory, and stops when it stops. The private daemon has the CRI
//! plugin disabled (the agent is the CRI-like layer) and its `opt` directory inside its
//! state, so it leaves nothing outside the root.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use containerd_client::services::v1::version_client::VersionClient;
use containerd_client::tonic::transport::Channel;

/// A running private containerd; killed (with its shims left alone) when dropped.
pub struct Daemon {
    child: Option<tokio::process::Child>,
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `containerd` with everything under `dir`, and waits until it answers.
    pub async fn start(dir: &Path) -> anyhow::Result<Daemon> {
        let binary = which("containerd").context(
            "containerd is not installed (apt-get install containerd runc); \
             or run the agent with --runtime fake",
        )?;
        let (root, state) = (dir.join("root"), dir.join("state"));
        for d in [&root, &state] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let socket = state.join("containerd.sock");
        let config = dir.join("config.toml");
        let text = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {socket:?}\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt:?}\n",
            root = root.display().to_string(),
            state = state.display().to_string(),
            socket = socket.display().to_string(),
            opt = state.join("opt").display().to_string(),
        );
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let child = tokio::process::Command::new(binary)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting containerd")?;
        let mut daemon = Daemon { child: Some(child), socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(ch) = connect(&daemon.socket).await {
                if VersionClient::new(ch).version(()).await.is_ok() {
                    return Ok(daemon);
                }
            }
            if let Some(status) = daemon.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!("containerd exited at start ({status}); see {}", dir.join("containerd.log").display());
            }
            if Instant::now() > deadline {
                anyhow::bail!("containerd did not answer on {} within 20 s", daemon.socket.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the daemon (SIGTERM, then SIGKILL after 5 s). Shims and their tasks live on.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Some(pid) = child.id() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

/// A channel to containerd's socket.
pub async fn connect(socket: &Path) -> anyhow::Result<Channel> {
    containerd_client::connect(socket)
        .await
        .with_context(|| format!("connecting to containerd at {}", socket.display()))
}

/// containerd's version, e.g. "1.6.20~ds1".
pub async fn version(ch: &Channel) -> anyhow::Result<String> {
    Ok(VersionClient::new(ch.clone()).version(()).await?.into_inner().version)
}

/// The full path of an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}
