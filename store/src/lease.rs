//! Leases: the Lease service and the leader's expiry clock.
//!
//! A lease's existence and TTL are replicated state (granted and revoked through the
//! raft log, stored by `mvcc`); its deadline is not. Every member tracks deadlines in a
//! [`Lessor`], but only the leader acts on them: it renews them on keep-alive and, when
//! one passes, proposes the revoke that deletes the attached keys in one revision. A
//! member that becomes leader restarts every deadline at the full TTL, as etcd does, so
//! a leader change can make a lease live longer but never shorter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse, PbLeaseLeasesRequest,
    PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse, PbLeaseService, PbLeaseStatus,
    PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::errors::{EtcdError, EtcdResult};
use crate::member::Member;
use crate::mvcc::View;
use crate::peer::{ForwardRequest, ForwardResponse};
use crate::server::decode_reply;
use crate::types::Command;

/// etcd's largest TTL.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

struct Tracked {
    ttl: i64,
    deadline: Instant,
    revoking: bool,
}

/// Deadlines of the leases this member knows.
#[derive(Default)]
pub struct Lessor {
    leases: Mutex<HashMap<i64, Tracked>>,
}

fn deadline(ttl: i64) -> Instant {
    Instant::now() + Duration::from_secs(ttl.max(0) as u64)
}

impl Lessor {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Tracked>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces everything with the leases stored in the state machine, all deadlines
    /// at the full TTL (start-up, snapshot install).
    pub fn reload(&self, leases: Vec<(i64, i64)>) {
        let mut m = self.lock();
        m.clear();
        for (id, ttl) in leases {
            m.insert(id, Tracked { ttl, deadline: deadline(ttl), revoking: false });
        }
    }

    pub fn granted(&self, id: i64, ttl: i64) {
        self.lock().insert(id, Tracked { ttl, deadline: deadline(ttl), revoking: false });
    }

    pub fn revoked(&self, id: i64) {
        self.lock().remove(&id);
    }

    /// This member just became leader: no lease expires earlier than a full TTL from now.
    fn promote(&self) {
        for t in self.lock().values_mut() {
            t.deadline = deadline(t.ttl);
            t.revoking = false;
        }
    }

    /// Restarts a lease's clock; its TTL, or None for an unknown lease.
    fn renew(&self, id: i64) -> Option<i64> {
        let mut m = self.lock();
        let t = m.get_mut(&id)?;
        t.deadline = deadline(t.ttl);
        Some(t.ttl)
    }

    /// (granted TTL, remaining seconds) of a lease.
    fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        let m = self.lock();
        let t = m.get(&id)?;
        Some((t.ttl, t.deadline.saturating_duration_since(Instant::now()).as_secs() as i64))
    }

    /// Leases past their deadline that nobody is revoking yet; marks them as being revoked.
    fn take_expired(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (id, t) in self.lock().iter_mut() {
            if !t.revoking && t.deadline <= now {
                t.revoking = true;
                out.push(*id);
            }
        }
        out
    }

    fn revoke_failed(&self, id: i64) {
        if let Some(t) = self.lock().get_mut(&id) {
            t.revoking = false;
        }
    }
}

/// The smallest TTL granted: one and a half election timeouts, rounded up to seconds, as
/// etcd computes it, so a lease cannot expire during an ordinary leader election.
pub fn min_ttl(election_timeout: Duration) -> i64 {
    ((election_timeout.as_millis() as f64 * 1.5) / 1000.0).ceil().max(1.0) as i64
}

/// Runs the leader's expiry clock for as long as the member runs.
pub async fn run_expiry(member: Arc<Member>) {
    let mut was_leader = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let is_leader = member.leader().is_some_and(|(id, _)| id == member.id);
        if is_leader && !was_leader {
            member.shared.lessor.promote();
        }
        was_leader = is_leader;
        if !is_leader {
            continue;
        }
        for id in member.shared.lessor.take_expired() {
            let m = member.clone();
            tokio::spawn(async move {
                match m.propose(Command::LeaseRevoke { id }).await {
                    Ok(_) => {}
                    Err(e) if e == EtcdError::lease_not_found() => {}
                    Err(e) => {
                        tracing::warn!("revoking expired lease {id:x} failed, will retry: {e}");
                        m.shared.lessor.revoke_failed(id);
                    }
                }
            });
        }
    }
}

impl Member {
    fn is_leader(&self) -> bool {
        self.leader().is_some_and(|(id, _)| id == self.id)
    }

    /// Keep-alive on the leader (forwarded there from a follower): the TTL, 0 if unknown.
    pub async fn lease_keep_alive(&self, id: i64) -> EtcdResult<i64> {
        if self.is_leader() {
            return Ok(self.shared.lessor.renew(id).unwrap_or(0));
        }
        match self.forward_to_leader(ForwardRequest::LeaseKeepAlive(id)).await? {
            ForwardResponse::LeaseTtl { ttl, .. } => Ok(ttl),
            ForwardResponse::Error(e) => Err(e),
            other => Err(EtcdError::internal(format!("unexpected forward answer {other:?}"))),
        }
    }

    /// (granted TTL, remaining) as the leader's clock has it.
    pub async fn lease_remaining(&self, id: i64) -> EtcdResult<Option<(i64, i64)>> {
        if self.is_leader() {
            return Ok(self.shared.lessor.remaining(id));
        }
        match self.forward_to_leader(ForwardRequest::LeaseTimeToLive(id)).await? {
            ForwardResponse::LeaseTtl { ttl, remaining } if ttl > 0 => Ok(Some((ttl, remaining))),
            ForwardResponse::LeaseTtl { .. } => Ok(None),
            ForwardResponse::Error(e) => Err(e),
            other => Err(EtcdError::internal(format!("unexpected forward answer {other:?}"))),
        }
    }

    /// Answers lease requests forwarded from a follower.
    pub fn serve_lease_forward(&self, req: &ForwardRequest) -> ForwardResponse {
        if !self.is_leader() {
            return ForwardResponse::Error(EtcdError::leader_changed());
        }
        match req {
            ForwardRequest::LeaseKeepAlive(id) => {
                ForwardResponse::LeaseTtl { ttl: self.shared.lessor.renew(*id).unwrap_or(0), remaining: 0 }
            }
            ForwardRequest::LeaseTimeToLive(id) => match self.shared.lessor.remaining(*id) {
                Some((ttl, remaining)) => ForwardResponse::LeaseTtl { ttl, remaining },
                None => ForwardResponse::LeaseTtl { ttl: 0, remaining: 0 },
            },
            _ => ForwardResponse::Error(EtcdError::internal("not a lease request")),
        }
    }
}

/// A lease id nobody chose: time and member id mixed, positive, never 0.
fn new_lease_id(member_id: u64) -> i64 {
    use sha2::{Digest, Sha256};
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let d = Sha256::new().chain_update(nanos.to_be_bytes()).chain_update(member_id.to_be_bytes()).finalize();
    (u64::from_be_bytes(d[..8].try_into().unwrap()) >> 1).max(1) as i64
}

pub struct LeaseService {
    pub m: Arc<Member>,
}

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    /// Lease RPCs need no permission (etcd checks the keys, not the leases), but a token
    /// given must be valid.
    async fn lease_grant(&self, req: Request<PbLeaseGrantRequest>) -> Result<Response<PbLeaseGrantResponse>, Status> {
        self.m.caller(&req)?;
        let r = req.into_inner();
        if r.ttl > MAX_LEASE_TTL {
            return Err(EtcdError::new(tonic::Code::OutOfRange, "etcdserver: too large lease TTL").into());
        }
        let ttl = r.ttl.max(min_ttl(self.m.config.election_timeout));
        self.m.check_quota(&r).await?;
        let mut attempts = 0;
        loop {
            let id = if r.id != 0 { r.id } else { new_lease_id(self.m.id) };
            match self.m.propose(Command::LeaseGrant { id, ttl }).await {
                Ok(b) => {
                    let mut resp: PbLeaseGrantResponse = decode_reply(&b)?;
                    self.m.fill(&mut resp.header);
                    return Ok(Response::new(resp));
                }
                // A chosen id that happens to exist: choose again.
                Err(e) if r.id == 0 && e.code() == tonic::Code::FailedPrecondition && attempts < 3 => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let user = self.m.caller(&req)?;
        let id = req.get_ref().id;
        // Revoking deletes the lease's keys: the caller must be allowed to delete each.
        let keys = self.m.lease_keys_if_auth(id)?;
        let needs = || keys.iter().map(|k| (crate::auth::WRITE, k.as_slice(), &[][..])).collect();
        let auth_rev = self.m.permit(user.as_deref(), needs)?;
        let cmd = Command::LeaseRevoke { id };
        let mut resp: PbLeaseRevokeResponse = decode_reply(&self.m.propose_guarded(cmd, auth_rev).await?)?;
        self.m.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    type LeaseKeepAliveStream = ReceiverStream<Result<PbLeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.m.caller(&req)?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let m = self.m.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                let resp = match m.lease_keep_alive(r.id).await {
                    Ok(ttl) => Ok(PbLeaseKeepAliveResponse { header: Some(m.header(m.current_rev())), id: r.id, ttl }),
                    Err(e) => Err(Status::from(e)),
                };
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let user = self.m.caller(&req)?;
        let r = req.into_inner();
        let header = Some(self.m.header(self.m.current_rev()));
        let Some((granted, remaining)) = self.m.lease_remaining(r.id).await? else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(Response::new(PbLeaseTimeToLiveResponse {
                header,
                id: r.id,
                ttl: -1,
                granted_ttl: 0,
                keys: vec![],
            }));
        };
        let keys = if r.keys { View::new(self.m.db()).lease_keys(r.id)? } else { Vec::new() };
        // Key names are data: listing them needs read on each (etcd's fix of CVE-2023-32082).
        let needs = || keys.iter().map(|k| (crate::auth::READ, k.as_slice(), &[][..])).collect();
        self.m.permit(user.as_deref(), needs)?;
        Ok(Response::new(PbLeaseTimeToLiveResponse { header, id: r.id, ttl: remaining, granted_ttl: granted, keys }))
    }

    async fn lease_leases(
        &self,
        req: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        self.m.caller(&req)?;
        let leases = View::new(self.m.db()).leases()?.into_iter().map(|(id, _)| PbLeaseStatus { id }).collect();
        Ok(Response::new(PbLeaseLeasesResponse { header: Some(self.m.header(self.m.current_rev())), leases }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
        assert_eq!(min_ttl(Duration::from_millis(1000)), 2);
        assert_eq!(min_ttl(Duration::from_millis(2000)), 3);
        assert_eq!(min_ttl(Duration::from_millis(100)), 1);
    }

    #[test]
    fn lessor_expires_only_after_the_deadline_and_promotion_extends() {
        let l = Lessor::default();
        l.granted(1, 0);
        l.granted(2, 100);
        assert_eq!(l.take_expired(), vec![1]);
        assert!(l.take_expired().is_empty(), "a lease being revoked is not handed out twice");
        l.revoke_failed(1);
        assert_eq!(l.take_expired(), vec![1]);
        assert_eq!(l.renew(2), Some(100));
        assert_eq!(l.renew(3), None);
        let (granted, remaining) = l.remaining(2).unwrap();
        assert_eq!(granted, 100);
        assert!(remaining >= 99);
        l.revoked(2);
        assert!(l.remaining(2).is_none());
        l.promote();
    }
}
