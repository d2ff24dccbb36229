//! Membership changes: the Cluster service's add, promote, remove and update, run on
//! the leader (forwarded there from any member), one at a time, with etcd's safety
//! rules:
//! - a member is added as a learner (non-voting) or, like etcd without `--learner`, as a
//!   voter only when enough members are started to keep a quorum of the larger cluster;
//! - a learner is promoted only when its log is within 10% of the leader's (etcd's
//!   readiness rule);
//! - a change that would leave fewer started voters than a quorum is refused;
//! - a removed member is told so and stops serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest, PbMemberListResponse,
    PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest, PbMemberRemoveResponse,
    PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tonic::{Code, Request, Response, Status};

use crate::config::parse_url;
use crate::errors::{EtcdError, EtcdResult};
use crate::member::Member;
use crate::peer::{ForwardRequest, ForwardResponse};
use crate::types::MemberNode;

/// etcd 3.4 allows one learner at a time.
const MAX_LEARNERS: usize = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MembershipOp {
    Add { peer_urls: Vec<String>, learner: bool },
    Promote { id: u64 },
    Remove { id: u64 },
    Update { id: u64, peer_urls: Vec<String> },
}

fn not_found() -> EtcdError {
    EtcdError::new(Code::NotFound, "etcdserver: member not found")
}

fn not_enough_started() -> EtcdError {
    EtcdError::new(Code::FailedPrecondition, "etcdserver: re-configuration failed due to not enough started members")
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

impl Member {
    /// Runs a membership change on the leader; from a follower, forwards it there. While
    /// the cluster is between leaders (the change certainly did not run), tries again.
    pub async fn change_members(&self, op: MembershipOp) -> EtcdResult<u64> {
        let deadline = tokio::time::Instant::now() + crate::member::REQUEST_TIMEOUT;
        loop {
            let result = match self.leader() {
                Some((id, _)) if id == self.id => self.change_members_as_leader(op.clone()).await,
                Some(_) => match self.forward_to_leader(ForwardRequest::Membership(op.clone())).await {
                    Ok(ForwardResponse::MemberId(id)) => Ok(id),
                    Ok(ForwardResponse::Error(e)) => Err(e),
                    Ok(other) => Err(EtcdError::internal(format!("unexpected forward answer {other:?}"))),
                    Err(e) => Err(e),
                },
                None => Err(EtcdError::no_leader()),
            };
            match result {
                Err(e)
                    if (e == EtcdError::no_leader() || e == EtcdError::leader_changed())
                        && tokio::time::Instant::now() + Duration::from_millis(200) < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => return other,
            }
        }
    }

    /// Members that answer a ping within half a second (this member counts as started).
    async fn started(&self, ids: &BTreeSet<u64>) -> usize {
        let nodes = self.raft.metrics().borrow().membership_config.membership().clone();
        let mut n = 0;
        for id in ids {
            if *id == self.id {
                n += 1;
                continue;
            }
            let Some(node) = nodes.get_node(id) else { continue };
            let ping = self.pool.forward(node, &ForwardRequest::Ping, Duration::from_millis(500)).await;
            if matches!(ping, Ok(ForwardResponse::Pong)) {
                n += 1;
            }
        }
        n
    }

    pub(crate) async fn change_members_as_leader(&self, op: MembershipOp) -> EtcdResult<u64> {
        // One change at a time: openraft refuses overlapping changes, and the safety
        // checks below must see the membership the change will start from.
        let _guard = self.membership_lock.lock().await;
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let nodes: BTreeMap<u64, MemberNode> = membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        let learners: Vec<u64> = nodes.keys().filter(|id| !voters.contains(id)).copied().collect();
        let result = match op {
            MembershipOp::Add { peer_urls, learner } => {
                for u in &peer_urls {
                    parse_url(u).map_err(|e| EtcdError::new(Code::InvalidArgument, e))?;
                }
                if nodes.values().any(|n| n.peer_urls.iter().any(|u| peer_urls.contains(u))) {
                    return Err(EtcdError::new(Code::FailedPrecondition, "etcdserver: Peer URLs already exists"));
                }
                if learner && learners.len() >= MAX_LEARNERS {
                    return Err(EtcdError::new(
                        Code::FailedPrecondition,
                        "etcdserver: too many learner members in cluster",
                    ));
                }
                if !learner && self.started(&voters).await < quorum(voters.len() + 1) {
                    return Err(EtcdError::new(Code::FailedPrecondition, "etcdserver: unhealthy cluster"));
                }
                let id = new_member_id(&peer_urls, self.cluster_id);
                let node = MemberNode { name: String::new(), peer_urls };
                self.raft.add_learner(id, node, false).await.map_err(write_err)?;
                if !learner {
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                        .await
                        .map_err(write_err)?;
                }
                Ok(id)
            }
            MembershipOp::Promote { id } => {
                if !nodes.contains_key(&id) {
                    return Err(not_found());
                }
                if voters.contains(&id) {
                    return Err(EtcdError::new(
                        Code::FailedPrecondition,
                        "etcdserver: can only promote a learner member",
                    ));
                }
                let last = metrics.last_log_index.unwrap_or(0);
                let matched =
                    metrics.replication.as_ref().and_then(|r| r.get(&id).cloned().flatten()).map_or(0, |l| l.index);
                if (matched as f64) < last as f64 * 0.9 {
                    return Err(EtcdError::new(
                        Code::FailedPrecondition,
                        "etcdserver: can only promote a learner member which is in sync with leader",
                    ));
                }
                self.raft.change_membership(ChangeMembers::AddVoterIds([id].into()), false).await.map_err(write_err)?;
                Ok(id)
            }
            MembershipOp::Remove { id } => {
                if !nodes.contains_key(&id) {
                    return Err(not_found());
                }
                if voters.contains(&id) {
                    let rest: BTreeSet<u64> = voters.iter().filter(|v| **v != id).copied().collect();
                    if rest.is_empty() {
                        return Err(EtcdError::new(
                            Code::FailedPrecondition,
                            "etcdserver: cannot remove the last member",
                        ));
                    }
                    if self.started(&rest).await < quorum(rest.len()) {
                        return Err(not_enough_started());
                    }
                    self.raft
                        .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                        .await
                        .map_err(write_err)?;
                } else {
                    self.raft
                        .change_membership(ChangeMembers::RemoveNodes([id].into()), false)
                        .await
                        .map_err(write_err)?;
                }
                // Tell the removed member so it stops serving (it may already be gone).
                if let Some(node) = nodes.get(&id) {
                    if id == self.id {
                        self.removed.notify_one();
                    } else {
                        let _ = self.pool.forward(node, &ForwardRequest::Removed, Duration::from_secs(1)).await;
                    }
                }
                Ok(id)
            }
            MembershipOp::Update { id, peer_urls } => {
                let Some(old) = nodes.get(&id) else { return Err(not_found()) };
                for u in &peer_urls {
                    parse_url(u).map_err(|e| EtcdError::new(Code::InvalidArgument, e))?;
                }
                let node = MemberNode { name: old.name.clone(), peer_urls };
                self.raft
                    .change_membership(ChangeMembers::SetNodes([(id, node)].into()), false)
                    .await
                    .map_err(write_err)?;
                Ok(id)
            }
        };
        result
    }

    pub(crate) async fn serve_membership_forward(&self, req: ForwardRequest) -> ForwardResponse {
        match req {
            ForwardRequest::Membership(op) => match self.leader() {
                Some((id, _)) if id == self.id => match self.change_members_as_leader(op).await {
                    Ok(id) => ForwardResponse::MemberId(id),
                    Err(e) => ForwardResponse::Error(e),
                },
                _ => ForwardResponse::Error(EtcdError::leader_changed()),
            },
            ForwardRequest::ClusterInfo => {
                let m = self.raft.metrics().borrow().clone();
                let membership = m.membership_config.membership();
                let voters: BTreeSet<u64> = membership.voter_ids().collect();
                ForwardResponse::ClusterInfo {
                    cluster_id: self.cluster_id,
                    members: membership.nodes().map(|(id, n)| (*id, n.clone(), !voters.contains(id))).collect(),
                }
            }
            ForwardRequest::Removed => {
                tracing::warn!("this member was removed from the cluster; it stops serving");
                self.removed.notify_one();
                ForwardResponse::Pong
            }
            ForwardRequest::Ping => ForwardResponse::Pong,
            ForwardRequest::MoveLeader(target) => match self.move_leader(target).await {
                Ok(()) => ForwardResponse::Pong,
                Err(e) => ForwardResponse::Error(e),
            },
            ForwardRequest::PauseElections(ms) => {
                self.pause_elections(Duration::from_millis(ms));
                ForwardResponse::Pong
            }
            ForwardRequest::Campaign => {
                self.raft.runtime_config().elect(true);
                let _ = self.raft.trigger().elect().await;
                ForwardResponse::Pong
            }
            _ => ForwardResponse::Error(EtcdError::internal("not a membership request")),
        }
    }
}

impl Member {
    /// Stops this member from starting elections for `d`, then lets it again — even if
    /// whoever asked never comes back.
    fn pause_elections(self: &Member, d: Duration) {
        self.raft.runtime_config().elect(false);
        let raft = self.raft.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            raft.runtime_config().elect(true);
        });
    }

    /// Moves leadership to `target` (a voter). openraft 0.9 has no transfer, so the leader
    /// arranges one: the other voters pause their elections, the leader stops heartbeats
    /// and holds new writes until the followers' leader lease (the maximum election
    /// timeout) has run out, then the target campaigns and wins.
    pub async fn move_leader(&self, target: u64) -> EtcdResult<()> {
        match self.leader() {
            Some((id, _)) if id == self.id => {}
            Some(_) => {
                return match self.forward_to_leader(ForwardRequest::MoveLeader(target)).await? {
                    ForwardResponse::Error(e) => Err(e),
                    _ => Ok(()),
                }
            }
            None => return Err(EtcdError::no_leader()),
        }
        let _guard = self.membership_lock.lock().await;
        let membership = self.raft.metrics().borrow().membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if !voters.contains(&target) {
            return Err(EtcdError::new(Code::FailedPrecondition, "etcdserver: bad leader transferee"));
        }
        if target == self.id {
            return Ok(());
        }
        let lease = crate::member::leader_lease(self.config.election_timeout);
        let pause = lease * 3;
        let _writes = self.transfer.write().await;
        for v in voters.iter().filter(|v| **v != target && **v != self.id) {
            if let Some(node) = membership.get_node(v) {
                let _ = self.pool.forward(node, &ForwardRequest::PauseElections(pause.as_millis() as u64), lease).await;
            }
        }
        self.pause_elections(pause);
        self.raft.runtime_config().heartbeat(false);
        tokio::time::sleep(lease + Duration::from_millis(200)).await;
        let node = membership.get_node(&target).cloned().ok_or_else(not_found)?;
        let _ = self.pool.forward(&node, &ForwardRequest::Campaign, lease).await;
        let mut rx = self.raft.metrics();
        let moved = tokio::time::timeout(lease * 2, async {
            loop {
                if rx.borrow().current_leader == Some(target) {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false);
        self.raft.runtime_config().heartbeat(true);
        self.raft.runtime_config().elect(true);
        if moved {
            Ok(())
        } else {
            Err(EtcdError::new(Code::Unavailable, "etcdserver: leadership transfer timed out"))
        }
    }
}

fn write_err(e: RaftError<u64, ClientWriteError<u64, MemberNode>>) -> EtcdError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => EtcdError::leader_changed(),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            EtcdError::new(Code::FailedPrecondition, format!("etcdserver: membership change refused: {c}"))
        }
        RaftError::Fatal(_) => EtcdError::stopped(),
    }
}

/// A fresh member id: from the peer URLs, the cluster and the time, never 0.
fn new_member_id(peer_urls: &[String], cluster_id: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    crate::config::member_id(peer_urls, &format!("{cluster_id:x}-{nanos}"))
}

pub struct ClusterService {
    pub m: Arc<Member>,
}

impl ClusterService {
    fn members_response(&self) -> (Option<etcd_client::proto::PbResponseHeader>, Vec<PbMember>) {
        (Some(self.m.header(0)), self.m.members())
    }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(&self, req: Request<PbMemberAddRequest>) -> Result<Response<PbMemberAddResponse>, Status> {
        self.m.permit_admin_request(&req)?;
        let r = req.into_inner();
        if r.peer_ur_ls.is_empty() {
            return Err(EtcdError::new(Code::InvalidArgument, "etcdserver: member peer URLs are not provided").into());
        }
        let id =
            self.m.change_members(MembershipOp::Add { peer_urls: r.peer_ur_ls.clone(), learner: r.is_learner }).await?;
        self.m.wait_for_member(id, true).await;
        let (header, members) = self.members_response();
        let member = PbMember {
            id,
            name: String::new(),
            peer_ur_ls: r.peer_ur_ls,
            client_ur_ls: vec![],
            is_learner: r.is_learner,
        };
        Ok(Response::new(PbMemberAddResponse { header, member: Some(member), members }))
    }

    async fn member_remove(
        &self,
        req: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        self.m.permit_admin_request(&req)?;
        let id = req.get_ref().id;
        self.m.change_members(MembershipOp::Remove { id }).await?;
        self.m.wait_for_member(id, false).await;
        let (header, members) = self.members_response();
        Ok(Response::new(PbMemberRemoveResponse { header, members }))
    }

    async fn member_update(
        &self,
        req: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        self.m.permit_admin_request(&req)?;
        let r = req.into_inner();
        self.m.change_members(MembershipOp::Update { id: r.id, peer_urls: r.peer_ur_ls }).await?;
        let (header, members) = self.members_response();
        Ok(Response::new(PbMemberUpdateResponse { header, members }))
    }

    async fn member_list(&self, _req: Request<PbMemberListRequest>) -> Result<Response<PbMemberListResponse>, Status> {
        let (header, members) = self.members_response();
        Ok(Response::new(PbMemberListResponse { header, members }))
    }

    async fn member_promote(
        &self,
        req: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        self.m.permit_admin_request(&req)?;
        let id = req.get_ref().id;
        self.m.change_members(MembershipOp::Promote { id }).await?;
        let (header, members) = self.members_response();
        Ok(Response::new(PbMemberPromoteResponse { header, members }))
    }
}

impl Member {
    /// Waits (briefly) until this member's view of the membership shows `id` present or
    /// absent, so a response's member list reflects the change just made.
    async fn wait_for_member(&self, id: u64, present: bool) {
        let mut rx = self.raft.metrics();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                let has = rx.borrow().membership_config.membership().get_node(&id).is_some();
                if has == present || rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }
}
