//! A store cluster of real `skiff store` processes, one per 127.0.0.x address, with a
//! fault-injecting proxy in front of each member's peer listener, and the controls
//! the faults need: kill, restart, pause, resume, partition, remove and add back.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, ConnectOptions, GetOptions, MemberAddOptions};

use crate::proxy::{self, Links};

pub struct MemberProc {
    pub name: String,
    pub ip: Ipv4Addr,
    pub client_port: u16,
    /// The member's real peer listener.
    pub peer_port: u16,
    /// The proxy in front of it: the peer URL the cluster knows.
    pub proxy_port: u16,
    pub data_dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl MemberProc {
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.proxy_port)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

pub struct ClusterOptions {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub members: usize,
    /// Raft entries between snapshots; small so a lagging member must install one.
    pub snapshot_count: u64,
    /// Varies the 127.0.0.x addresses between concurrent runs.
    pub address_base: u8,
}

pub struct Cluster {
    opts: ClusterOptions,
    pub members: Vec<MemberProc>,
    pub links: Links,
    proxies: Vec<tokio::task::JoinHandle<()>>,
}

pub fn connect_options() -> ConnectOptions {
    ConnectOptions::new().with_connect_timeout(Duration::from_secs(1)).with_timeout(Duration::from_secs(3))
}

pub async fn connect(url: &str) -> Result<Client, etcd_client::Error> {
    Client::connect([url], Some(connect_options())).await
}

/// A port below the ephemeral range that is free on `ip`.
fn free_port(ip: Ipv4Addr, taken: &mut Vec<u16>, rng: &mut u64) -> anyhow::Result<u16> {
    for _ in 0..1000 {
        *rng = crate::faults::splitmix(*rng);
        let port = 20000 + (*rng % 12000) as u16;
        if !taken.contains(&port) && std::net::TcpListener::bind((ip, port)).is_ok() {
            taken.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free port on {ip}")
}

impl Cluster {
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(&opts.dir).with_context(|| format!("cannot create {}", opts.dir.display()))?;
        let mut rng = std::process::id() as u64 ^ (opts.address_base as u64) << 40;
        let mut taken = Vec::new();
        let mut members = Vec::new();
        for i in 0..opts.members {
            let ip = Ipv4Addr::new(127, 0, 0, opts.address_base + i as u8);
            members.push(MemberProc {
                name: format!("m{}", i + 1),
                ip,
                client_port: free_port(ip, &mut taken, &mut rng)?,
                peer_port: free_port(ip, &mut taken, &mut rng)?,
                proxy_port: free_port(ip, &mut taken, &mut rng)?,
                data_dir: opts.dir.join(format!("m{}", i + 1)),
                child: None,
                paused: false,
            });
        }
        let ips: Vec<IpAddr> = members.iter().map(|m| IpAddr::V4(m.ip)).collect();
        let member_of: Arc<dyn Fn(IpAddr) -> Option<usize> + Send + Sync> =
            Arc::new(move |ip| ips.iter().position(|m| *m == ip));
        let links = Links::default();
        let mut proxies = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let listen = SocketAddr::new(IpAddr::V4(m.ip), m.proxy_port);
            let target = SocketAddr::new(IpAddr::V4(m.ip), m.peer_port);
            proxies.push(proxy::start(listen, target, i, member_of.clone(), links.clone()).await?);
        }
        let mut cluster = Cluster { opts, members, links, proxies };
        let initial = cluster.initial_cluster(&cluster.members.iter().map(|m| m.name.clone()).collect::<Vec<_>>());
        for i in 0..cluster.members.len() {
            cluster.spawn(i, "new", &initial)?;
        }
        cluster.wait_ready(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    fn initial_cluster(&self, names: &[String]) -> String {
        self.members
            .iter()
            .filter(|m| names.contains(&m.name))
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str, initial_cluster: &str) -> anyhow::Result<()> {
        let log_path = self.opts.dir.join(format!("{}.log", self.members[i].name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let m = &self.members[i];
        let child = Command::new(&self.opts.binary)
            .arg("store")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &format!("http://{}:{}", m.ip, m.peer_port)])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--snapshot-count", &self.opts.snapshot_count.to_string()])
            .env("SKIFF_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.opts.binary.display()))?;
        let m = &mut self.members[i];
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// Waits until every member answers and a linearizable read succeeds.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = String::new();
        loop {
            let mut ok = true;
            for i in 0..self.members.len() {
                if !self.members[i].is_running() {
                    anyhow::bail!(
                        "member {} exited; see {}",
                        self.members[i].name,
                        self.opts.dir.join(format!("{}.log", self.members[i].name)).display()
                    );
                }
                match self.read_through(i).await {
                    Ok(()) => {}
                    Err(e) => {
                        ok = false;
                        last = format!("{}: {e}", self.members[i].name);
                    }
                }
            }
            if ok {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the cluster did not become ready within {limit:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn read_through(&self, i: usize) -> anyhow::Result<()> {
        let mut c = connect(&self.members[i].client_url()).await?;
        c.get("health", Some(GetOptions::new().with_count_only())).await?;
        Ok(())
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url()).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// The index of the member every answering member names as leader, if any.
    pub async fn leader(&self) -> Option<usize> {
        let mut ids = vec![0u64; self.members.len()];
        let mut leader = None;
        for (i, m) in self.members.iter().enumerate() {
            if m.paused {
                continue;
            }
            let Ok(mut c) = connect(&m.client_url()).await else { continue };
            let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), c.status()).await else { continue };
            ids[i] = s.header().map(|h| h.member_id()).unwrap_or_default();
            if s.leader() != 0 {
                leader = Some(s.leader());
            }
        }
        let leader = leader?;
        ids.iter().position(|id| *id == leader)
    }

    /// A member's own id, from its status.
    pub async fn member_id(&self, i: usize) -> anyhow::Result<u64> {
        let mut c = connect(&self.members[i].client_url()).await?;
        let s = tokio::time::timeout(Duration::from_secs(3), c.status()).await.context("status timed out")??;
        Ok(s.header().map(|h| h.member_id()).unwrap_or_default())
    }

    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        m.paused = false;
    }

    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        // Data exists, so the initial cluster flags are ignored.
        let initial = self.initial_cluster(&self.names());
        self.spawn(i, "new", &initial)
    }

    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            self.members[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.members[i].pid() {
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        self.members[i].paused = false;
    }

    /// Removes member `i` from the cluster (it exits by itself), wipes its data, adds
    /// it back as a learner, starts it, and promotes it once it has caught up.
    /// Returns a description of what happened.
    pub async fn remove_and_add_back(&mut self, i: usize) -> anyhow::Result<String> {
        let id = self.member_id(i).await.context("reading the member's id")?;
        let via = (i + 1) % self.members.len();
        let mut admin = connect(&self.members[via].client_url()).await?;
        retry(Duration::from_secs(15), || {
            let mut admin = admin.clone();
            async move {
                match admin.member_remove(id).await {
                    // An earlier attempt went through after all.
                    Err(e) if e.to_string().contains("member not found") => Ok(()),
                    r => r.map(|_| ()),
                }
            }
        })
        .await
        .context("member remove")?;
        // A removed member stops itself.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.members[i].is_running() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let exited_alone = !self.members[i].is_running();
        self.kill(i);
        let dir = self.members[i].data_dir.clone();
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;

        let peer_url = self.members[i].peer_url();
        let new_id = retry(Duration::from_secs(20), || {
            let mut admin = admin.clone();
            let url = peer_url.clone();
            async move {
                match admin.member_add([url.clone()], Some(MemberAddOptions::new().with_is_learner())).await {
                    Ok(r) => Ok(r.member().map(|m| m.id()).unwrap_or_default()),
                    // An earlier attempt went through after all: find the member it added.
                    Err(e) if e.to_string().contains("already exists") => {
                        let list = admin.member_list().await?;
                        Ok(list
                            .members()
                            .iter()
                            .find(|m| m.peer_urls().contains(&url))
                            .map(|m| m.id())
                            .unwrap_or_default())
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await
        .context("member add")?;
        let list = admin.member_list().await.context("member list")?;
        let initial = list
            .members()
            .iter()
            .filter_map(|m| {
                let name = if m.id() == new_id { self.members[i].name.clone() } else { m.name().to_string() };
                let url = m.peer_urls().first()?;
                (!name.is_empty()).then(|| format!("{name}={url}"))
            })
            .collect::<Vec<_>>()
            .join(",");
        self.spawn(i, "existing", &initial)?;
        let promoted = retry(Duration::from_secs(40), || {
            let mut admin = admin.clone();
            async move {
                match admin.member_promote(new_id).await {
                    // Already a voter: an earlier attempt went through after all.
                    Err(e)
                        if e.to_string().contains("promote a learner member") && !e.to_string().contains("in sync") =>
                    {
                        Ok(())
                    }
                    r => r.map(|_| ()),
                }
            }
        })
        .await;
        promoted.context("member promote")?;
        Ok(format!(
            "removed {:x} ({}), added back as {new_id:x}, promoted",
            id,
            if exited_alone { "exited by itself" } else { "killed after 10s" }
        ))
    }

    /// Makes every member run and every link work again.
    pub fn heal_all(&mut self) -> anyhow::Result<()> {
        self.links.heal();
        for i in 0..self.members.len() {
            if self.members[i].paused {
                self.resume(i);
            }
            if !self.members[i].is_running() {
                self.kill(i);
                self.restart(i)?;
            }
        }
        Ok(())
    }

    /// How many lines of member `i`'s log contain `needle`.
    pub fn log_lines(&self, i: usize, needle: &str) -> usize {
        let path = self.opts.dir.join(format!("{}.log", self.members[i].name));
        std::fs::read_to_string(path).map(|t| t.lines().filter(|l| l.contains(needle)).count()).unwrap_or(0)
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Stops every process and proxy.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.resume(i);
            self.kill(i);
        }
        for p in self.proxies.drain(..) {
            p.abort();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Repeats `f` until it succeeds or `limit` passes; the last error otherwise.
pub async fn retry<T, F, Fut>(limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), f()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if tokio::time::Instant::now() > deadline => return Err(e.into()),
            Err(_) if tokio::time::Instant::now() > deadline => anyhow::bail!("timed out"),
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}
