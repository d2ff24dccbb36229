//! The gRPC servers a member runs: the etcd v3 API on the client URLs and the peer
//! service on the peer URLs. The etcd services live here, each a thin adapter from
//! protobuf to [`Member`] and [`mvcc`]; watch has its own module.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::*;
use futures::Stream;
use prost::Message;
use rocksdb::WriteBatch;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::auth_service::{self, AuthService, PbAuthServer};
use crate::config::parse_url;
use crate::errors::{EtcdError, EtcdResult};
use crate::lease::LeaseService;
use crate::member::Member;
use crate::membership::ClusterService;
use crate::mvcc::{self, View, Writer};
use crate::peer::{self, pb, MAX_PEER_MESSAGE};
use crate::types::Command;
use crate::watch::WatchService;

/// Extra room gRPC decoding allows beyond `--max-request-bytes`, as etcd does, so an
/// oversized request reaches the handler and gets etcd's own error.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

type TonicResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn bind(url: &str) -> anyhow::Result<TcpIncoming> {
    let addr = parse_url(url).map_err(anyhow::Error::msg)?;
    let incoming = TcpIncoming::bind(addr).map_err(|e| anyhow::anyhow!("cannot listen on {url}: {e}"))?;
    Ok(incoming.with_nodelay(Some(true)))
}

pub async fn serve_peers(member: Arc<Member>) -> anyhow::Result<()> {
    for url in &member.config.listen_peer_urls {
        let incoming = bind(url)?;
        let svc = pb::peer_server::PeerServer::new(PeerService { m: member.clone() })
            .max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE);
        let mut server = tonic::transport::Server::builder();
        if crate::config::is_https(url) {
            let tls = member.config.peer_tls.server("peer-").map_err(anyhow::Error::msg)?;
            server = server.tls_config(tls)?;
        }
        let url = url.clone();
        tokio::spawn(async move {
            if let Err(e) = server.add_service(svc).serve_with_incoming(incoming).await {
                tracing::error!("peer server on {url} stopped: {e}");
            }
        });
    }
    Ok(())
}

pub async fn serve_clients(member: Arc<Member>) -> anyhow::Result<()> {
    let limit = member.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    for url in &member.config.listen_client_urls {
        let incoming = bind(url)?;
        let m = member.clone();
        let mut server = tonic::transport::Server::builder();
        if crate::config::is_https(url) {
            let tls = member.config.client_tls.server("").map_err(anyhow::Error::msg)?;
            server = server.tls_config(tls)?;
        }
        let router = server
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(PbKvServer::new(KvService { m: m.clone() }).max_decoding_message_size(limit))
            .add_service(PbWatchServer::new(WatchService::new(m.clone())).max_decoding_message_size(limit))
            .add_service(PbMaintenanceServer::new(MaintenanceService { m: m.clone() }).max_decoding_message_size(limit))
            .add_service(PbClusterServer::new(ClusterService { m: m.clone() }).max_decoding_message_size(limit))
            .add_service(PbLeaseServer::new(LeaseService { m: m.clone() }).max_decoding_message_size(limit))
            .add_service(PbAuthServer::new(AuthService { m: m.clone() }).max_decoding_message_size(limit));
        let url = url.clone();
        tokio::spawn(async move {
            if let Err(e) = router.serve_with_incoming(incoming).await {
                tracing::error!("client server on {url} stopped: {e}");
            }
        });
    }
    Ok(())
}

struct PeerService {
    m: Arc<Member>,
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn append_entries(&self, req: Request<pb::Blob>) -> TonicResult<pb::Blob> {
        let r = self.m.raft.append_entries(peer::decode(req.get_ref())?).await;
        Ok(Response::new(peer::encode(&r)))
    }
    async fn vote(&self, req: Request<pb::Blob>) -> TonicResult<pb::Blob> {
        let r = self.m.raft.vote(peer::decode(req.get_ref())?).await;
        Ok(Response::new(peer::encode(&r)))
    }
    async fn install_snapshot(&self, req: Request<pb::Blob>) -> TonicResult<pb::Blob> {
        let r = self.m.raft.install_snapshot(peer::decode(req.get_ref())?).await;
        Ok(Response::new(peer::encode(&r)))
    }
    async fn forward(&self, req: Request<pb::Blob>) -> TonicResult<pb::Blob> {
        let r = self.m.serve_forward(peer::decode(req.get_ref())?).await;
        Ok(Response::new(peer::encode(&r)))
    }
}

impl Member {
    fn check_size<M: Message>(&self, req: &M) -> EtcdResult<()> {
        if req.encoded_len() > self.config.max_request_bytes {
            return Err(EtcdError::request_too_large());
        }
        Ok(())
    }

    /// Before a request that takes space is proposed: past the quota, raise the NOSPACE
    /// alarm (replicated and persisted) and refuse, as etcd does.
    pub(crate) async fn check_quota<M: Message>(&self, req: &M) -> EtcdResult<()> {
        if self.shared.nospace.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(EtcdError::no_space());
        }
        let Some(quota) = self.config.quota() else { return Ok(()) };
        if self.db_size() + req.encoded_len() as i64 <= quota {
            return Ok(());
        }
        let alarm = Command::Alarm { activate: true, member_id: self.id, alarm: mvcc::ALARM_NOSPACE };
        if let Err(e) = self.propose(alarm).await {
            tracing::warn!("raising the NOSPACE alarm failed: {e}");
        } else {
            tracing::warn!("database size passed the quota of {quota} bytes: NOSPACE alarm raised");
        }
        Err(EtcdError::no_space())
    }

    /// Learners serve only serializable reads and status, as in etcd.
    fn check_not_learner(&self) -> EtcdResult<()> {
        if self.is_learner() {
            return Err(EtcdError::new(tonic::Code::Unavailable, "etcdserver: rpc not supported for learner"));
        }
        Ok(())
    }

    /// Replaces the revision-only header the store produced with a full one.
    pub(crate) fn fill(&self, h: &mut Option<PbResponseHeader>) {
        let rev = h.as_ref().map_or(self.current_rev(), |h| h.revision);
        *h = Some(self.header(rev));
    }

    async fn range(self: &Arc<Self>, user: Option<&str>, r: &PbRangeRequest) -> EtcdResult<PbRangeResponse> {
        self.check_size(r)?;
        if !r.serializable {
            self.check_not_learner()?;
            self.linearizable_barrier().await?;
        }
        // After the barrier: a permission revoked before this read began is gone here too.
        self.permit(user, || auth_service::range_needs(r))?;
        let mut resp = View::new(self.db()).range(r)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }
}

/// Decodes the etcd response the state machine encoded for a committed command.
pub(crate) fn decode_reply<M: Message + Default>(b: &[u8]) -> EtcdResult<M> {
    M::decode(b).map_err(EtcdError::internal)
}

struct KvService {
    m: Arc<Member>,
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(&self, req: Request<PbRangeRequest>) -> TonicResult<PbRangeResponse> {
        let user = self.m.caller(&req)?;
        Ok(Response::new(self.m.range(user.as_deref(), req.get_ref()).await?))
    }

    type RangeStreamStream = BoxStream<PbRangeStreamResponse>;

    /// Range, answered in chunks of at most 1000 keys; the last chunk carries the header,
    /// `more` and `count`.
    async fn range_stream(&self, req: Request<PbRangeRequest>) -> TonicResult<Self::RangeStreamStream> {
        let user = self.m.caller(&req)?;
        let full = self.m.range(user.as_deref(), req.get_ref()).await?;
        let mut chunks: Vec<Vec<PbKeyValue>> = full.kvs.chunks(1000).map(|c| c.to_vec()).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let last = chunks.len() - 1;
        let responses: Vec<Result<PbRangeStreamResponse, Status>> = chunks
            .into_iter()
            .enumerate()
            .map(|(i, kvs)| {
                let done = i == last;
                Ok(PbRangeStreamResponse {
                    range_response: Some(PbRangeResponse {
                        header: if done { full.header } else { None },
                        kvs,
                        more: done && full.more,
                        count: if done { full.count } else { 0 },
                    }),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(responses))))
    }

    async fn put(&self, req: Request<PbPutRequest>) -> TonicResult<PbPutResponse> {
        let user = self.m.caller(&req)?;
        let r = req.into_inner();
        self.m.check_size(&r)?;
        self.m.check_not_learner()?;
        mvcc::check_put(&r)?;
        let lease_keys = self.m.lease_keys_if_auth(r.lease)?;
        let auth_rev = self.m.permit(user.as_deref(), || auth_service::put_needs(&r, &lease_keys))?;
        self.m.check_quota(&r).await?;
        let cmd = Command::Put(r.encode_to_vec());
        let mut resp: PbPutResponse = decode_reply(&self.m.propose_guarded(cmd, auth_rev).await?)?;
        self.m.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn delete_range(&self, req: Request<PbDeleteRequest>) -> TonicResult<PbDeleteResponse> {
        let user = self.m.caller(&req)?;
        let r = req.into_inner();
        self.m.check_size(&r)?;
        self.m.check_not_learner()?;
        mvcc::check_delete(&r)?;
        let auth_rev = self.m.permit(user.as_deref(), || auth_service::delete_needs(&r))?;
        let cmd = Command::DeleteRange(r.encode_to_vec());
        let mut resp: PbDeleteResponse = decode_reply(&self.m.propose_guarded(cmd, auth_rev).await?)?;
        self.m.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<PbTxnRequest>) -> TonicResult<PbTxnResponse> {
        let user = self.m.caller(&req)?;
        let r = req.into_inner();
        self.m.check_size(&r)?;
        mvcc::check_txn(&r)?;
        let mut resp = if mvcc::txn_is_read_only(&r) {
            // A txn that writes nothing is a read: no log entry, no revision.
            if !mvcc::txn_is_serializable(&r) {
                self.m.check_not_learner()?;
                self.m.linearizable_barrier().await?;
            }
            self.m.permit(user.as_deref(), || auth_service::txn_needs(&r))?;
            Writer::new(self.m.db(), WriteBatch::default())?.txn(&r)?
        } else {
            let auth_rev = self.m.permit(user.as_deref(), || auth_service::txn_needs(&r))?;
            self.m.check_not_learner()?;
            if mvcc::txn_puts(&r) {
                self.m.check_quota(&r).await?;
            }
            decode_reply(&self.m.propose_guarded(Command::Txn(r.encode_to_vec()), auth_rev).await?)?
        };
        self.m.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    /// Open to every client, as in etcd 3.4 (a token, if given, must still be valid).
    async fn compact(&self, req: Request<PbCompactionRequest>) -> TonicResult<PbCompactionResponse> {
        self.m.caller(&req)?;
        let r = req.into_inner();
        self.m.check_not_learner()?;
        // Compaction is applied as part of the raft entry, so `physical` holds on return.
        let mut resp: PbCompactionResponse = decode_reply(&self.m.propose(Command::Compact(r.encode_to_vec())).await?)?;
        self.m.fill(&mut resp.header);
        Ok(Response::new(resp))
    }
}

/// The etcd version whose API Skiff implements; clients compare against it.
pub const ETCD_API_VERSION: &str = "3.4.23";

struct MaintenanceService {
    m: Arc<Member>,
}

impl Member {
    /// The size of the key-value state (versions, history, metadata) on disk and in
    /// memtables: what etcd's bbolt file holds. The raft log is not counted, as etcd does
    /// not count its WAL.
    pub fn db_size(&self) -> i64 {
        let db = self.db();
        let mut total = 0u64;
        for name in [crate::db::CF_KV, crate::db::CF_REVS, crate::db::CF_META] {
            let h = crate::db::cf(db, name);
            for prop in ["rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"] {
                total += db.property_int_value_cf(h, prop).ok().flatten().unwrap_or(0);
            }
        }
        total as i64
    }

    pub fn status(&self) -> PbStatusResponse {
        let m = self.raft.metrics().borrow().clone();
        let mut errors = Vec::new();
        if m.current_leader.is_none() {
            errors.push("etcdserver: no leader".to_string());
        }
        let size = self.db_size();
        for (member, alarm) in View::new(self.db()).alarms().unwrap_or_default() {
            let name = if alarm == mvcc::ALARM_NOSPACE { "NOSPACE" } else { "CORRUPT" };
            errors.push(format!("memberID:{member} alarm:{name} "));
        }
        PbStatusResponse {
            header: Some(self.header(self.current_rev())),
            version: ETCD_API_VERSION.into(),
            db_size: size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map_or(0, |l| l.index),
            errors,
            db_size_in_use: size,
            is_learner: m.state == openraft::ServerState::Learner,
            ..Default::default()
        }
    }

    /// A hash of every version at or below `rev` that compaction kept; equal on every
    /// member that applied the same log (the corruption check).
    pub fn hash_kv(&self, rev: i64) -> EtcdResult<PbHashKvResponse> {
        let db = self.db();
        let view = View::new(db);
        let current = view.current_rev()?;
        let rev = if rev <= 0 { current } else { rev };
        if rev > current {
            return Err(EtcdError::future_rev());
        }
        let compact = view.compact_rev()?;
        if rev < compact {
            return Err(EtcdError::compacted());
        }
        let mut h = crc32fast::Hasher::new();
        let snap = db.snapshot();
        for item in snap.iterator_cf(crate::db::cf(db, crate::db::CF_KV), rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(EtcdError::internal)?;
            if let Some((_, r)) = crate::keys::split_version_key(&k) {
                if r <= rev {
                    h.update(&k);
                    h.update(&v);
                }
            }
        }
        Ok(PbHashKvResponse {
            header: Some(self.header(current)),
            hash: h.finalize(),
            compact_revision: if compact == 0 { -1 } else { compact },
            hash_revision: rev,
        })
    }
}

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    /// GET lists raised alarms; ACTIVATE / DEACTIVATE raise or clear one through raft
    /// (etcdctl's `alarm disarm` lists, then deactivates each).
    async fn alarm(&self, req: Request<PbAlarmRequest>) -> TonicResult<PbAlarmResponse> {
        let r = req.into_inner();
        let header = Some(self.m.header(self.m.current_rev()));
        match r.action {
            0 => {
                let alarms = View::new(self.m.db())
                    .alarms()?
                    .into_iter()
                    .filter(|(m, a)| (r.member_id == 0 || *m == r.member_id) && (r.alarm == 0 || *a == r.alarm))
                    .map(|(member_id, alarm)| PbAlarmMember { member_id, alarm })
                    .collect();
                Ok(Response::new(PbAlarmResponse { header, alarms }))
            }
            1 | 2 => {
                let cmd = Command::Alarm { activate: r.action == 1, member_id: r.member_id, alarm: r.alarm };
                let mut resp: PbAlarmResponse = decode_reply(&self.m.propose(cmd).await?)?;
                self.m.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            other => Err(Status::invalid_argument(format!("unknown alarm action {other}"))),
        }
    }

    async fn status(&self, _req: Request<PbStatusRequest>) -> TonicResult<PbStatusResponse> {
        Ok(Response::new(self.m.status()))
    }

    async fn defragment(&self, req: Request<PbDefragmentRequest>) -> TonicResult<PbDefragmentResponse> {
        self.m.permit_maintenance(&req)?;
        let m = self.m.clone();
        tokio::task::spawn_blocking(move || {
            for name in crate::db::ALL_CFS {
                m.db().compact_range_cf(crate::db::cf(m.db(), name), None::<&[u8]>, None::<&[u8]>);
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(PbDefragmentResponse { header: Some(self.m.header(self.m.current_rev())) }))
    }

    async fn hash(&self, req: Request<PbHashRequest>) -> TonicResult<PbHashResponse> {
        self.m.permit_maintenance(&req)?;
        let r = self.m.hash_kv(0)?;
        Ok(Response::new(PbHashResponse { header: r.header, hash: r.hash }))
    }

    async fn hash_kv(&self, req: Request<PbHashKvRequest>) -> TonicResult<PbHashKvResponse> {
        self.m.permit_maintenance(&req)?;
        Ok(Response::new(self.m.hash_kv(req.get_ref().revision)?))
    }

    type SnapshotStream = BoxStream<PbSnapshotResponse>;

    /// Streams a consistent backup (see `backup`): written from one rocksdb snapshot to a
    /// temporary file, then sent in 64 KiB chunks, so it is never whole in memory.
    async fn snapshot(&self, req: Request<PbSnapshotRequest>) -> TonicResult<Self::SnapshotStream> {
        self.m.permit_maintenance(&req)?;
        use tokio::io::AsyncReadExt;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let tmp = self.m.shared.snap_dir.join(format!("backup-{stamp}.tmp"));
        let (db, path) = (self.m.db().clone(), tmp.clone());
        let size = tokio::task::spawn_blocking(move || crate::backup::write_backup(&db, &path))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                EtcdError::internal(format!("writing the snapshot: {e}"))
            })?;
        let mut file = tokio::fs::File::open(&tmp).await.map_err(EtcdError::internal)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let m = self.m.clone();
        tokio::spawn(async move {
            let mut left = size;
            let mut buf = vec![0u8; 64 << 10];
            while left > 0 {
                let n = match file.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("reading the snapshot: {e}")))).await;
                        break;
                    }
                };
                left = left.saturating_sub(n as u64);
                let msg = PbSnapshotResponse {
                    header: Some(m.header(m.current_rev())),
                    remaining_bytes: left,
                    blob: buf[..n].to_vec(),
                    version: ETCD_API_VERSION.into(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
            let _ = tokio::fs::remove_file(&tmp).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn move_leader(&self, req: Request<PbMoveLeaderRequest>) -> TonicResult<PbMoveLeaderResponse> {
        self.m.move_leader(req.get_ref().target_id).await?;
        Ok(Response::new(PbMoveLeaderResponse { header: Some(self.m.header(self.m.current_rev())) }))
    }

    async fn downgrade(&self, _req: Request<PbDowngradeRequest>) -> TonicResult<PbDowngradeResponse> {
        Err(EtcdError::not_supported("Maintenance.Downgrade").into())
    }
}

impl Member {
    pub fn members(&self) -> Vec<PbMember> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let attrs = self.shared.member_attrs();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| {
                let published = attrs.iter().find(|(a, _)| a == id).map(|(_, a)| a.clone());
                PbMember {
                    id: *id,
                    // etcd shows no name until the member has started and published it.
                    name: published.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
                    peer_ur_ls: node.peer_urls.clone(),
                    client_ur_ls: published.map(|a| a.client_urls).unwrap_or_default(),
                    is_learner: !voters.contains(id),
                }
            })
            .collect()
    }
}
