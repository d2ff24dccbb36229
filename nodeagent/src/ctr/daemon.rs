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
    /// A daemon an earlier agent started on the same root and left running (to stop).
    adopted: Option<i32>,
    pub socket: PathBuf,
}

/// The pid in `<dir>/containerd.pid` if that process is alive and runs `containerd`
/// with this directory's config.
fn running_daemon(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("containerd.pid")).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let config = dir.join("config.toml").display().to_string();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    (args.iter().any(|a| a.ends_with("containerd")) && args.contains(&config)).then_some(pid)
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
        // One daemon per root: one an earlier agent left running (killed before it could stop
        // it) is stopped first. Its shims, and so the pods, live on.
        if let Some(pid) = running_daemon(dir) {
            tracing::info!("stopping containerd (pid {pid}) left running on {}", dir.display());
            let mut old = Daemon { child: None, adopted: Some(pid), socket: socket.clone() };
            old.stop().await;
        }
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
        let mut cmd = tokio::process::Command::new(binary);
        cmd.arg("--config").arg(&config).stdout(Stdio::null()).stderr(log).kill_on_drop(true);
        // SAFETY: prctl in the child before exec; async-signal-safe. The daemon gets SIGTERM
        // if the agent dies without stopping it (e.g. SIGKILL); the pods' shims live on.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting containerd")?;
        if let Some(pid) = child.id() {
            std::fs::write(dir.join("containerd.pid"), pid.to_string())?;
        }
        let mut daemon = Daemon { child: Some(child), adopted: None, socket };
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
        if let Some(pid) = self.adopted.take() {
            // SAFETY: plain kill(2) of the daemon taken over at start.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..50 {
                if !alive(pid) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return;
        }
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

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
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
