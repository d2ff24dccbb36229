//! A running store member: opens the data dir, starts raft, serves peers and clients.
//!
//! [`Member`] is what the etcd services hold. It knows how to get a write committed
//! (locally on the leader, forwarded from a follower) and how to make a read
//! linearizable (a read index confirmed by the leader, shared by every read that
//! arrived before the confirmation round started).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::PbResponseHeader;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Mutex};

use crate::config::{self, ClusterState, MemberConfig};
use crate::db::{self, Db};
use crate::errors::{EtcdError, EtcdResult};
use crate::log_store::LogStore;
use crate::peer::{ForwardRequest, ForwardResponse, Network, PeerPool};
use crate::state_machine::{Shared, StateMachine};
use crate::types::{Command, CommandResponse, MemberNode, Raft};

/// How long a client request may wait for raft before "request timed out".
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

/// What a member remembers about itself across restarts (`member/identity.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    /// False until the initial membership is in the raft log.
    pub bootstrapped: bool,
    /// The membership to bootstrap with, when it was fixed before the first start
    /// (`snapshot restore`); otherwise `--initial-cluster` decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_members: Option<BTreeMap<u64, MemberNode>>,
}

pub struct Member {
    pub config: MemberConfig,
    pub id: u64,
    pub cluster_id: u64,
    pub raft: Raft,
    pub shared: Arc<Shared>,
    pub pool: PeerPool,
    reads: ReadCoalescer,
    /// Groups concurrent client writes into one log entry (see `batcher`).
    batcher: crate::batcher::Batcher,
    /// Serializes membership changes on the leader.
    pub(crate) membership_lock: Mutex<()>,
    /// Fires when this member learns it was removed from the cluster.
    pub removed: tokio::sync::Notify,
    /// Writes hold it shared; a leadership transfer holds it exclusively, so no entry
    /// refreshes the followers' leader lease while the new leader campaigns.
    pub(crate) transfer: tokio::sync::RwLock<()>,
}

impl Member {
    pub fn db(&self) -> &Db {
        &self.shared.db
    }

    /// A response header as etcd fills it.
    pub fn header(&self, revision: i64) -> PbResponseHeader {
        PbResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.id,
            revision,
            raft_term: self.raft.metrics().borrow().current_term,
        }
    }

    pub fn current_rev(&self) -> i64 {
        self.shared.current_rev.load(Ordering::SeqCst)
    }

    /// The leader's id and address, if this member knows of one.
    pub fn leader(&self) -> Option<(u64, MemberNode)> {
        // Borrow, not clone: this runs on every read barrier and forwarded request.
        let rx = self.raft.metrics();
        let m = rx.borrow();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader).cloned()?;
        Some((leader, node))
    }

    /// Commits `cmd` through raft, from whichever member this is.
    pub async fn propose(&self, cmd: Command) -> EtcdResult<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let attempt = async {
                let write = async {
                    let _gate = self.transfer.read().await;
                    self.batcher.write(cmd.clone()).await
                };
                match write.await {
                    Ok((resp, _)) => Ok(resp),
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_node {
                        Some(node) if f.leader_id != Some(self.id) => {
                            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                            match self.pool.forward(&node, &ForwardRequest::Write(cmd.clone()), left).await? {
                                ForwardResponse::Write(r, index) => {
                                    // Answer once this member has applied the write too, as
                                    // etcd does: a client then reads its own write here, also
                                    // serializably, and a compaction holds on this member.
                                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                                    self.raft
                                        .wait(Some(left))
                                        .applied_index_at_least(Some(index), "forwarded write")
                                        .await
                                        .map_err(|_| EtcdError::timeout())?;
                                    Ok(r)
                                }
                                ForwardResponse::Error(e) => Err(e),
                                other => Err(EtcdError::internal(format!("unexpected forward answer {other:?}"))),
                            }
                        }
                        _ => Err(EtcdError::no_leader()),
                    },
                    Err(RaftError::APIError(e)) => Err(EtcdError::internal(e)),
                    Err(RaftError::Fatal(_)) => Err(EtcdError::stopped()),
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Err(EtcdError::timeout()),
                Ok(Ok(CommandResponse::Encoded(b))) => return Ok(b),
                Ok(Ok(CommandResponse::Empty)) => return Ok(Vec::new()),
                Ok(Ok(CommandResponse::Error(e))) => return Err(e),
                Ok(Ok(CommandResponse::Batch(_))) => return Err(EtcdError::internal("unexpected group response")),
                Ok(Err(e)) if retryable(&e) => {
                    if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Answers a forwarded request on the leader.
    pub async fn serve_forward(&self, req: ForwardRequest) -> ForwardResponse {
        match req {
            ForwardRequest::Write(cmd) => match async {
                let _gate = self.transfer.read().await;
                self.batcher.write(cmd).await
            }
            .await
            {
                Ok((r, index)) => ForwardResponse::Write(r, index),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                    ForwardResponse::Error(EtcdError::leader_changed())
                }
                Err(e) => ForwardResponse::Error(EtcdError::internal(e)),
            },
            ForwardRequest::ReadIndex => match self.local_read_index().await {
                Ok(i) => ForwardResponse::ReadIndex(i),
                Err(e) => ForwardResponse::Error(e),
            },
            lease @ (ForwardRequest::LeaseKeepAlive(_) | ForwardRequest::LeaseTimeToLive(_)) => {
                self.serve_lease_forward(&lease)
            }
            other => self.serve_membership_forward(other).await,
        }
    }

    /// Sends a request that only the leader can answer to the leader.
    pub async fn forward_to_leader(&self, req: ForwardRequest) -> EtcdResult<ForwardResponse> {
        match self.leader() {
            Some((id, node)) if id != self.id => self.pool.forward(&node, &req, REQUEST_TIMEOUT).await,
            _ => Err(EtcdError::no_leader()),
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the index reads
    /// must wait for.
    async fn local_read_index(&self) -> EtcdResult<u64> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(EtcdError::leader_changed())
            }
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(EtcdError::timeout())
            }
            Err(RaftError::Fatal(_)) => Err(EtcdError::stopped()),
        }
    }

    /// One read-index round: ask the leader (maybe ourselves).
    async fn read_index_round(&self) -> EtcdResult<u64> {
        match self.leader() {
            Some((id, _)) if id == self.id => self.local_read_index().await,
            Some((_, node)) => match self.pool.forward(&node, &ForwardRequest::ReadIndex, REQUEST_TIMEOUT).await? {
                ForwardResponse::ReadIndex(i) => Ok(i),
                ForwardResponse::Error(e) => Err(e),
                other => Err(EtcdError::internal(format!("unexpected forward answer {other:?}"))),
            },
            None => Err(EtcdError::no_leader()),
        }
    }

    /// Waits until a read served locally reflects every write committed before the call.
    pub async fn linearizable_barrier(self: &Arc<Self>) -> EtcdResult<()> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let index = match self.reads.wait(self).await {
                Ok(i) => i,
                Err(e) if retryable(&e) && tokio::time::Instant::now() + Duration::from_millis(100) < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            return match self.raft.wait(Some(left)).applied_index_at_least(Some(index), "linearizable read").await {
                Ok(_) => Ok(()),
                Err(openraft::metrics::WaitError::Timeout(..)) => Err(EtcdError::timeout()),
                Err(openraft::metrics::WaitError::ShuttingDown) => Err(EtcdError::stopped()),
            };
        }
    }

    /// Stops raft and flushes rocksdb's memtables, so the next start does not replay the
    /// WAL (a killed member replays it; that is what the WAL is for).
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.raft.shutdown()).await;
        let db = self.db().clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let handles: Vec<_> = crate::db::ALL_CFS.iter().map(|n| crate::db::cf(&db, n)).collect();
            db.flush_cfs_opt(&handles, &rocksdb::FlushOptions::default())
        })
        .await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!("flushing the database at shutdown failed: {e}");
        }
    }

    pub fn is_learner(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Learner
    }
}

/// Errors after which a write certainly was not proposed, so trying again inside the
/// same client request is safe: there was no leader, or the leader refused before
/// proposing (openraft answers ForwardToLeader only then, or after truncating the
/// entry, which was therefore never committed).
fn retryable(e: &EtcdError) -> bool {
    *e == EtcdError::no_leader() || *e == EtcdError::leader_changed()
}

/// Coalesces concurrent read-index requests: every waiter that arrives while a round is
/// in flight joins the next round, so one round of heartbeats serves them all, and no
/// waiter is served by a round that started before it arrived.
#[derive(Default)]
struct ReadCoalescer {
    state: Mutex<ReadState>,
}

#[derive(Default)]
struct ReadState {
    running: bool,
    next: Vec<oneshot::Sender<EtcdResult<u64>>>,
}

impl ReadCoalescer {
    async fn wait(&self, member: &Arc<Member>) -> EtcdResult<u64> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut s = self.state.lock().await;
            s.next.push(tx);
            !std::mem::replace(&mut s.running, true)
        };
        if start {
            let member = member.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut s = member.reads.state.lock().await;
                        if s.next.is_empty() {
                            s.running = false;
                            break;
                        }
                        std::mem::take(&mut s.next)
                    };
                    let result = member.read_index_round().await;
                    for w in batch {
                        let _ = w.send(result.clone());
                    }
                }
            });
        }
        rx.await.unwrap_or_else(|_| Err(EtcdError::stopped()))
    }
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("identity.json")
}

pub(crate) fn write_identity(data_dir: &Path, id: &Identity) -> anyhow::Result<()> {
    let path = identity_path(data_dir);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(id)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// Starts a member and returns once its servers listen. Bootstraps a new cluster only
/// on a data dir that never held one.
pub async fn start(config: MemberConfig) -> anyhow::Result<Arc<Member>> {
    config.validate().map_err(anyhow::Error::msg)?;
    let members = config.initial_members().map_err(anyhow::Error::msg)?;
    let token = config.initial_cluster_token.clone();
    let member_dir = config.data_dir.join("member");
    std::fs::create_dir_all(&member_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", member_dir.display()))?;

    let identity = match std::fs::read(identity_path(&config.data_dir)) {
        Ok(bytes) => {
            let id: Identity = serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", identity_path(&config.data_dir).display()))?;
            if id.name != config.name {
                anyhow::bail!(
                    "data dir {} belongs to member {:?}, not {:?}",
                    config.data_dir.display(),
                    id.name,
                    config.name
                );
            }
            tracing::info!(
                "restarting member {} ({:x}) of cluster {:x} from its data dir",
                id.name,
                id.member_id,
                id.cluster_id
            );
            id
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if member_dir.join("db").exists() {
                anyhow::bail!(
                    "data dir {} holds a database but no identity.json; refusing to bootstrap over it",
                    config.data_dir.display()
                );
            }
            let id = if config.initial_cluster_state == ClusterState::Existing {
                join_identity(&config, &members).await?
            } else {
                let ids: Vec<u64> = members.iter().map(|(_, urls)| config::member_id(urls, &token)).collect();
                Identity {
                    name: config.name.clone(),
                    member_id: config::member_id(&config.initial_advertise_peer_urls, &token),
                    cluster_id: config::cluster_id(&ids, &token),
                    bootstrapped: false,
                    initial_members: None,
                }
            };
            write_identity(&config.data_dir, &id)?;
            id
        }
        Err(e) => anyhow::bail!("cannot read {}: {e}", identity_path(&config.data_dir).display()),
    };

    let db = db::open(&member_dir.join("db")).map_err(|e| anyhow::anyhow!("cannot open the database: {e}"))?;
    let shared = Shared::new(db.clone(), member_dir.join("snap")).map_err(anyhow::Error::msg)?;
    let sm = StateMachine::open(shared.clone()).map_err(|e| anyhow::anyhow!("cannot open the state machine: {e}"))?;
    let log = LogStore::new(db.clone(), shared.latencies.clone());
    let raft_config = openraft::Config {
        cluster_name: "skiff".into(),
        heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
        // openraft makes a follower wait for its leader lease (election_timeout_max) plus
        // a random timeout in min..max after the last heartbeat before campaigning. These
        // bounds put that wait at 1.25–1.5x --election-timeout, close to etcd's 1–2x;
        // `min..2*min` would make it 3–4x and a dead leader cost seconds of writes.
        election_timeout_min: config.election_timeout.as_millis() as u64 / 2,
        election_timeout_max: leader_lease(config.election_timeout).as_millis() as u64,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 256,
        // Snapshots are taken by `snapshot_when_due`, which counts requests, not entries.
        snapshot_policy: SnapshotPolicy::Never,
        // A follower further behind than this many entries catches up from a snapshot.
        max_in_snapshot_log_to_keep: config.snapshot_count.min(5000),
        purge_batch_size: 256,
        ..Default::default()
    }
    .validate()?;
    let pool = PeerPool::for_member(&config);
    let raft = Raft::new(
        identity.member_id,
        Arc::new(raft_config),
        Network { pool: pool.clone(), latencies: shared.latencies.clone() },
        log,
        sm,
    )
    .await?;

    let member = Arc::new(Member {
        config: config.clone(),
        id: identity.member_id,
        cluster_id: identity.cluster_id,
        raft: raft.clone(),
        shared,
        pool,
        reads: ReadCoalescer::default(),
        batcher: crate::batcher::Batcher::start(raft.clone()),
        membership_lock: Mutex::new(()),
        removed: tokio::sync::Notify::new(),
        transfer: tokio::sync::RwLock::new(()),
    });

    crate::server::serve_peers(member.clone()).await?;

    if !identity.bootstrapped {
        let nodes = identity.initial_members.clone().unwrap_or_else(|| initial_nodes(&members, &token));
        let n = nodes.len();
        match raft.initialize(nodes).await {
            Ok(()) => tracing::info!("bootstrapped a new cluster {:x} with {n} member(s)", identity.cluster_id),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
            Err(e) => anyhow::bail!("cannot bootstrap the cluster: {e}"),
        }
        write_identity(&config.data_dir, &Identity { bootstrapped: true, ..identity.clone() })?;
    }

    crate::server::serve_clients(member.clone()).await?;
    tokio::spawn(crate::metrics::count_leader_changes(member.clone()));
    for url in &member.config.listen_metrics_urls {
        let addr = config::parse_url(url).map_err(anyhow::Error::msg)?;
        crate::metrics::serve(member.clone(), addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {url}: {e}"))?;
    }
    tokio::spawn(publish_attributes(member.clone()));
    tokio::spawn(crate::lease::run_expiry(member.clone()));
    tokio::spawn(snapshot_when_due(member.clone()));
    Ok(member)
}

/// Takes a raft snapshot (which lets the log before it be purged) once `--snapshot-count`
/// requests have been applied since the last one. etcd counts requests too; counting
/// log entries instead would snapshot ever more often the less the batcher can group
/// (at a paced 1,000 writes/s nearly every write is its own entry), and a snapshot
/// writes the whole state.
async fn snapshot_when_due(member: Arc<Member>) {
    let due = member.config.snapshot_count.max(1);
    // What the log held when this process started counts, at one request per entry.
    let backlog = {
        let m = member.raft.metrics();
        let m = m.borrow();
        m.last_applied.map_or(0, |l| l.index).saturating_sub(m.snapshot.map_or(0, |l| l.index))
    };
    let mut last = member.shared.applied_requests.load(Ordering::Relaxed).wrapping_sub(backlog);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let now = member.shared.applied_requests.load(Ordering::Relaxed);
        if now.wrapping_sub(last) < due {
            continue;
        }
        last = now;
        if member.raft.trigger().snapshot().await.is_err() {
            return; // raft has stopped
        }
    }
}

/// How long a follower trusts a leader after its last heartbeat (openraft's leader
/// lease, which is its `election_timeout_max`): 3/4 of `--election-timeout`.
pub(crate) fn leader_lease(election_timeout: Duration) -> Duration {
    election_timeout * 3 / 4
}

/// The bootstrap membership from `--initial-cluster`, with the ids every member derives
/// alike from the peer URLs and the cluster token.
pub(crate) fn initial_nodes(members: &[(String, Vec<String>)], token: &str) -> BTreeMap<u64, MemberNode> {
    members
        .iter()
        .map(|(name, urls)| {
            (config::member_id(urls, token), MemberNode { name: name.clone(), peer_urls: urls.clone() })
        })
        .collect()
}

/// For a member joining an existing cluster: asks the members listed in
/// `--initial-cluster` for the membership and finds this member's id (given by `member
/// add`) by its peer URLs.
async fn join_identity(config: &MemberConfig, members: &[(String, Vec<String>)]) -> anyhow::Result<Identity> {
    let pool = PeerPool::for_member(config);
    let mut mine = config.initial_advertise_peer_urls.clone();
    mine.sort();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut last_err = String::from("no other member listed in --initial-cluster");
    loop {
        for (name, urls) in members.iter().filter(|(n, _)| *n != config.name) {
            let node = MemberNode { name: name.clone(), peer_urls: urls.clone() };
            match pool.forward(&node, &ForwardRequest::ClusterInfo, Duration::from_secs(2)).await {
                Ok(ForwardResponse::ClusterInfo { cluster_id, members }) => {
                    let me = members.iter().find(|(_, n, _)| {
                        let mut u = n.peer_urls.clone();
                        u.sort();
                        u == mine
                    });
                    let Some((id, _, _)) = me else {
                        anyhow::bail!(
                            "peer URLs {} are not a member of cluster {cluster_id:x}; add this member first \
                             (`skiff member add {} --peer-urls {}`)",
                            mine.join(","),
                            config.name,
                            mine.join(",")
                        );
                    };
                    tracing::info!("joining cluster {cluster_id:x} as member {id:x}");
                    return Ok(Identity {
                        name: config.name.clone(),
                        member_id: *id,
                        cluster_id,
                        bootstrapped: true,
                        initial_members: None,
                    });
                }
                Ok(other) => last_err = format!("unexpected answer {other:?} from {name}"),
                Err(e) => last_err = format!("{name}: {e}"),
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("cannot reach the existing cluster to join it: {last_err}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Announces this member's name and client URLs through raft (what `member list`
/// shows), retrying until a leader takes it.
async fn publish_attributes(member: Arc<Member>) {
    let cmd = Command::Publish {
        member_id: member.id,
        name: member.config.name.clone(),
        client_urls: member.config.advertise_client_urls.clone(),
    };
    loop {
        match member.propose(cmd.clone()).await {
            Ok(_) => return,
            Err(e) if e == EtcdError::stopped() => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
