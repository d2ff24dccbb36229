//! Member-to-member traffic: openraft's RPCs and client requests a follower forwards to
//! the leader, on a small tonic service (`proto/peer.proto`) whose messages carry
//! bincode payloads.
//!
//! One HTTP/2 channel per peer URL is kept in a [`PeerPool`] and shared by every
//! replication stream and forwarded request, so openraft's frequent `new_client` calls
//! cost nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::errors::EtcdError;
use crate::types::{Command, CommandResponse, MemberNode, TypeConfig};

pub mod pb {
    tonic::include_proto!("skiff.peer");
}
use pb::peer_client::PeerClient;
use pb::Blob;

/// Peer messages may carry a batch of log entries; allow far more than a client request.
pub const MAX_PEER_MESSAGE: usize = 256 << 20;

/// A client request a follower hands to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardRequest {
    Write(Command),
    /// "Confirm you lead and tell me the index a linearizable read must wait for."
    ReadIndex,
    /// Lease deadlines live on the leader: renew one / read its remaining time.
    LeaseKeepAlive(i64),
    LeaseTimeToLive(i64),
    /// A membership change, run by the leader.
    Membership(crate::membership::MembershipOp),
    /// "Who is in the cluster?" (asked by a member joining an existing cluster).
    ClusterInfo,
    /// "You were removed from the cluster."
    Removed,
    Ping,
    /// Transfer leadership to this member (run by the leader).
    MoveLeader(u64),
    /// Do not start elections for this many milliseconds (during a leadership transfer).
    PauseElections(u64),
    /// Start an election now.
    Campaign,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardResponse {
    /// The response and the index of the log entry that carried the write.
    Write(CommandResponse, u64),
    ReadIndex(u64),
    /// `ttl` is 0 for an unknown lease.
    LeaseTtl {
        ttl: i64,
        remaining: i64,
    },
    MemberId(u64),
    /// The cluster id and every member: (id, node, is learner).
    ClusterInfo {
        cluster_id: u64,
        members: Vec<(u64, MemberNode, bool)>,
    },
    Pong,
    Error(EtcdError),
}

pub fn encode<T: Serialize>(v: &T) -> Blob {
    Blob { data: bincode::serialize(v).expect("peer messages serialize") }
}

pub fn decode<T: DeserializeOwned>(b: &Blob) -> Result<T, tonic::Status> {
    bincode::deserialize(&b.data).map_err(|e| tonic::Status::invalid_argument(format!("bad peer message: {e}")))
}

/// Shared HTTP/2 channels to peers, keyed by peer URL.
#[derive(Clone, Default)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// Source address of outgoing peer connections (see [`PeerPool::for_member`]).
    local: Option<IpAddr>,
    /// For `https://` peers: the CA to trust and this member's certificate.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl PeerPool {
    /// A pool whose connections leave from this member's own peer address when that
    /// is a loopback address, so that members sharing a machine on 127.0.0.x addresses
    /// can be told apart by the source of their connections (firewall rules, the
    /// fault-injecting proxies of `skiff chaos`). Other addresses keep the kernel's
    /// choice of source, which routing may need.
    pub fn for_member(config: &crate::config::MemberConfig) -> Self {
        let local = config
            .listen_peer_urls
            .first()
            .and_then(|u| crate::config::parse_url(u).ok())
            .map(|a| a.ip())
            .filter(|ip| ip.is_loopback());
        // Checked readable by MemberConfig::validate before the member starts.
        let tls = config.peer_tls.client("peer-").ok();
        PeerPool { channels: Arc::default(), local, tls }
    }

    pub fn client(&self, url: &str) -> Result<PeerClient<Channel>, String> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match map.get(url) {
            Some(c) => c.clone(),
            None => {
                let mut e = Endpoint::from_shared(url.to_string()).map_err(|e| format!("bad peer URL {url}: {e}"))?;
                if crate::config::is_https(url) {
                    let tls = self.tls.clone().unwrap_or_default();
                    e = e.tls_config(tls).map_err(|e| format!("peer URL {url}: {e}"))?;
                }
                let c = e
                    .connect_timeout(Duration::from_millis(500))
                    .local_address(self.local)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .connect_lazy();
                map.insert(url.to_string(), c.clone());
                c
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE))
    }

    /// Sends a forwarded client request to `node`.
    pub async fn forward(
        &self,
        node: &MemberNode,
        req: &ForwardRequest,
        timeout: Duration,
    ) -> Result<ForwardResponse, EtcdError> {
        let url = node.peer_urls.first().ok_or_else(EtcdError::no_leader)?;
        let mut client = self.client(url).map_err(EtcdError::internal)?;
        let mut request = tonic::Request::new(encode(req));
        request.set_timeout(timeout);
        match client.forward(request).await {
            Ok(resp) => decode(resp.get_ref()).map_err(|e| EtcdError::internal(e.message())),
            Err(s) if s.code() == tonic::Code::DeadlineExceeded || s.code() == tonic::Code::Cancelled => {
                Err(EtcdError::timeout())
            }
            Err(s) if never_sent(&s) => Err(EtcdError::leader_changed()),
            Err(s) => {
                // The request may have reached the leader and been proposed; only the
                // caller knows whether repeating it is safe.
                tracing::debug!("forwarding to {url} failed: {s}");
                Err(EtcdError::connection_lost())
            }
        }
    }
}

/// True when a failed call certainly never reached the peer: no connection could be made.
fn never_sent(s: &tonic::Status) -> bool {
    let mut err: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = err {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotConnected) {
                return true;
            }
        }
        if e.to_string().contains("tcp connect error") {
            return true;
        }
        err = e.source();
    }
    false
}

/// openraft's view of the network.
#[derive(Clone)]
pub struct Network {
    pub pool: PeerPool,
    pub latencies: Arc<crate::metrics::Latencies>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConn;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> PeerConn {
        let client = match node.peer_urls.first() {
            Some(url) => self.pool.client(url),
            None => Err(format!("member {target:x} has no peer URL")),
        };
        PeerConn { target, client, latencies: self.latencies.clone() }
    }
}

pub struct PeerConn {
    target: u64,
    client: Result<PeerClient<Channel>, String>,
    latencies: Arc<crate::metrics::Latencies>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, MemberNode, E>>;

impl PeerConn {
    async fn call<Req, Resp, E>(&mut self, method: Method, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.clone())))),
        };
        let mut request = tonic::Request::new(encode(req));
        request.set_timeout(option.hard_ttl());
        let resp = match method {
            Method::Append => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let blob = match resp {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&s)));
            }
            Err(s) => return Err(RPCError::Network(NetworkError::new(&s))),
        };
        let result: Result<Resp, E> =
            bincode::deserialize(&blob.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

enum Method {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerConn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, RaftError<u64>> {
        // Heartbeats carry no entries: their round trip is the network's and the peer's
        // scheduling, not its disk (etcd measures the same with small probes).
        let heartbeat = rpc.entries.is_empty();
        let started = std::time::Instant::now();
        let r = self.call(Method::Append, &rpc, &option).await;
        if heartbeat && r.is_ok() {
            self.latencies.peer_round_trip(self.target, started.elapsed());
        }
        r
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> RpcResult<VoteResponse<u64>, RaftError<u64>> {
        self.call(Method::Vote, &rpc, &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // Retry an unreachable peer quickly: a restarted member should rejoin promptly.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
