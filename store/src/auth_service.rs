//! The etcd Auth service, and who each client request comes from: the user its `token`
//! metadata names (from `Authenticate`), else — on a member started with
//! `--client-cert-auth` — the CommonName of its verified client certificate, as etcd.
//!
//! Changes (enable, users, roles, permissions) are raft entries checked on the receiving
//! member and guarded by the auth revision they were checked at; reads (`user get`,
//! `role list`, ...) are answered from the local state after a linearizable read barrier,
//! so they see every change that completed before them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::proto::{
    PbDeleteRequest, PbPutRequest, PbRangeRequest, PbResponseHeader, PbTxnOpRequest, PbTxnRequest,
};
use tonic::{Code, Request, Response, Status};

use pb::auth_server::Auth as PbAuthService;
pub use pb::auth_server::AuthServer as PbAuthServer;
use pb::*;

use crate::auth::{self, AuthOp, AuthState, Perm};
use crate::errors::{EtcdError, EtcdResult};
use crate::member::Member;
use crate::server::decode_reply;
use crate::types::Command;

/// The Auth service's messages (proto/etcd_auth.proto).
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

type TonicResult<T> = Result<Response<T>, Status>;

/// One permission a request needs: (READ or WRITE, key, range_end).
pub type Need<'a> = (i32, &'a [u8], &'a [u8]);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a request shows of who sent it: its token, and its client certificate's CN
/// (kept only on members with `--client-cert-auth`, where rustls verified the chain).
#[derive(Clone, Default)]
pub struct Identity {
    token: Option<String>,
    cn: Option<String>,
}

/// Hashing a password costs tens of milliseconds of CPU: at most two at a time, so
/// logins cannot starve the raft heartbeats of the cores.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn hashing<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> EtcdResult<T> {
    let _permit = HASHING.acquire().await.map_err(EtcdError::internal)?;
    tokio::task::spawn_blocking(f).await.map_err(EtcdError::internal)
}

impl Member {
    /// The credentials `req` carries. Certificates are read only while auth is on.
    pub(crate) fn identity<T>(&self, req: &Request<T>) -> Identity {
        // A token that is not text can match nothing: kept as one that fails.
        let token = req.metadata().get("token").map(|t| t.to_str().unwrap_or("-").to_string());
        let mut cn = None;
        if self.config.client_tls.client_cert_auth && self.shared.auth.read().enabled {
            let certs = req.peer_certs();
            let subject = certs.as_deref().and_then(|c| c.first()).and_then(|c| skiff_x509::subject(c.as_ref()));
            cn = subject.map(|(cn, _)| cn).filter(|cn| !cn.is_empty());
        }
        Identity { token: token.filter(|t| !t.is_empty()), cn }
    }

    /// The user `id` acts as now. A token that is present but not valid (expired, its
    /// user's password changed, auth disabled) is an error on every RPC, as in etcd.
    pub(crate) fn user_of(&self, id: &Identity) -> EtcdResult<Option<String>> {
        match &id.token {
            Some(t) => self.shared.auth.read().verify_token(t, now()).map(Some),
            None => Ok(id.cn.clone()),
        }
    }

    /// The user a request acts as, if any.
    pub(crate) fn caller<T>(&self, req: &Request<T>) -> EtcdResult<Option<String>> {
        self.user_of(&self.identity(req))
    }

    /// Checks `needs` for `user`; returns the auth revision they hold at (None while
    /// auth is off), which the proposed command then carries.
    /// `needs` is only called while auth is on.
    pub(crate) fn permit<'a>(
        &self,
        user: Option<&str>,
        needs: impl FnOnce() -> Vec<Need<'a>>,
    ) -> EtcdResult<Option<u64>> {
        let st = self.shared.auth.read();
        if !st.enabled {
            return Ok(None);
        }
        st.check_all(user, &needs())?;
        Ok(Some(st.revision))
    }

    /// Like [`Member::permit`] for administrative requests (the `root` role).
    pub(crate) fn permit_admin(&self, user: Option<&str>) -> EtcdResult<Option<u64>> {
        let st = self.shared.auth.read();
        st.check_admin(user)?;
        Ok(st.enabled.then_some(st.revision))
    }

    /// The admin check of a request that is not a log command (membership changes).
    pub(crate) fn permit_admin_request<T>(&self, req: &Request<T>) -> EtcdResult<()> {
        let user = self.caller(req)?;
        self.permit_admin(user.as_deref()).map(|_| ())
    }

    /// The Maintenance service's admin check, whose errors etcd passes on unmapped:
    /// code Unknown and the auth package's own words.
    pub(crate) fn permit_maintenance<T>(&self, req: &Request<T>) -> EtcdResult<()> {
        let user = self.caller(req).map_err(unmapped)?;
        self.permit_admin(user.as_deref()).map_err(unmapped)?;
        Ok(())
    }

    /// The keys attached to lease `id` when auth is on (their write permission is
    /// needed to attach more or to revoke it); nothing otherwise.
    pub(crate) fn lease_keys_if_auth(&self, id: i64) -> EtcdResult<Vec<Vec<u8>>> {
        if id == 0 || !self.shared.auth.read().enabled {
            return Ok(Vec::new());
        }
        crate::mvcc::View::new(self.db()).lease_keys(id)
    }

    /// Commits `cmd` if the auth state is still the one at `auth_rev` when it applies.
    pub(crate) async fn propose_guarded(&self, cmd: Command, auth_rev: Option<u64>) -> EtcdResult<Vec<u8>> {
        self.propose(Command::Guarded { auth_rev, cmd: Box::new(cmd) }).await
    }

    /// The admin check of an auth change; the revision to guard it with.
    fn admin<T>(&self, req: &Request<T>) -> EtcdResult<Option<u64>> {
        let user = self.caller(req)?;
        self.permit_admin(user.as_deref())
    }

    /// Runs an auth change as `req`'s caller; the response header.
    async fn change<T>(&self, req: &Request<T>, op: AuthOp) -> EtcdResult<Option<ResponseHeader>> {
        let rev = self.admin(req)?;
        self.change_checked(rev, op).await
    }

    /// Runs an auth change already checked at `rev`.
    async fn change_checked(&self, rev: Option<u64>, op: AuthOp) -> EtcdResult<Option<ResponseHeader>> {
        let header: PbResponseHeader = decode_reply(&self.propose_guarded(Command::Auth(op), rev).await?)?;
        let mut header = Some(header);
        self.fill(&mut header);
        Ok(header.map(to_pb))
    }

    /// The auth state after a read barrier, and the caller, for the read-only RPCs.
    async fn read_auth<T>(self: &Arc<Self>, req: &Request<T>) -> EtcdResult<(AuthState, Option<String>)> {
        let user = self.caller(req)?;
        self.linearizable_barrier().await?;
        Ok((self.shared.auth.read().clone(), user))
    }

    fn auth_header(&self) -> Option<ResponseHeader> {
        Some(to_pb(self.header(self.current_rev())))
    }
}

fn to_pb(h: PbResponseHeader) -> ResponseHeader {
    ResponseHeader { cluster_id: h.cluster_id, member_id: h.member_id, revision: h.revision, raft_term: h.raft_term }
}

/// etcd's Maintenance service returns auth errors as the auth package's raw error.
fn unmapped(e: EtcdError) -> EtcdError {
    let text = e.message().strip_prefix("etcdserver: ").unwrap_or(e.message());
    EtcdError::new(Code::Unknown, format!("auth: {text}"))
}

async fn hash(password: String) -> EtcdResult<String> {
    hashing(move || auth::hash_password(&password)).await
}

/// A request with only a bcrypt `hashedPassword` (etcd 3.5 clients): Skiff cannot check
/// bcrypt, and taking the empty `password` instead would set an empty one.
fn refuse_prehashed(password: &str, hashed: &str) -> EtcdResult<()> {
    if password.is_empty() && !hashed.is_empty() {
        return Err(EtcdError::new(Code::InvalidArgument, "skiff: pre-hashed (bcrypt) passwords are not supported"));
    }
    Ok(())
}

pub struct AuthService {
    pub m: Arc<Member>,
}

#[tonic::async_trait]
impl PbAuthService for AuthService {
    async fn auth_enable(&self, req: Request<AuthEnableRequest>) -> TonicResult<AuthEnableResponse> {
        let header = self.m.change(&req, AuthOp::Enable { token_key: auth::random_bytes(32) }).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(&self, req: Request<AuthDisableRequest>) -> TonicResult<AuthDisableResponse> {
        let header = self.m.change(&req, AuthOp::Disable).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    /// etcd 3.5's AuthStatus (3.4 has none): open to everyone, as in 3.5.
    async fn auth_status(&self, req: Request<AuthStatusRequest>) -> TonicResult<AuthStatusResponse> {
        let (st, _) = self.m.read_auth(&req).await?;
        Ok(Response::new(AuthStatusResponse {
            header: self.m.auth_header(),
            enabled: st.enabled,
            auth_revision: st.revision,
        }))
    }

    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> TonicResult<AuthenticateResponse> {
        self.m.linearizable_barrier().await?;
        let key_missing = {
            let st = self.m.shared.auth.read();
            st.enabled && st.token_key.is_empty()
        };
        if key_missing {
            // Restored from a backup, which carries no token key: make one, once.
            let op = AuthOp::TokenKey { token_key: auth::random_bytes(32) };
            self.m.propose(Command::Auth(op)).await?;
        }
        let st = self.m.shared.auth.read().clone();
        let r = req.into_inner();
        let ttl = self.m.config.auth_token_ttl.as_secs();
        let token = hashing(move || -> EtcdResult<String> {
            let user = st.check_password(&r.name, &r.password)?;
            Ok(st.issue_token(user, now(), ttl))
        })
        .await??;
        Ok(Response::new(AuthenticateResponse { header: self.m.auth_header(), token }))
    }

    async fn user_add(&self, req: Request<AuthUserAddRequest>) -> TonicResult<AuthUserAddResponse> {
        // Checked before hashing, so no one but an administrator makes the member hash.
        let rev = self.m.admin(&req)?;
        let r = req.get_ref();
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password {
            refuse_prehashed(&r.password, &r.hashed_password)?;
        }
        let password = if no_password { None } else { Some(hash(r.password.clone()).await?) };
        let op = AuthOp::UserAdd { name: r.name.clone(), password };
        Ok(Response::new(AuthUserAddResponse { header: self.m.change_checked(rev, op).await? }))
    }

    async fn user_get(&self, req: Request<AuthUserGetRequest>) -> TonicResult<AuthUserGetResponse> {
        let (st, user) = self.m.read_auth(&req).await?;
        let name = &req.get_ref().name;
        if let Err(e) = st.check_admin(user.as_deref()) {
            // Everyone may look at themselves.
            if user.as_deref() != Some(name.as_str()) {
                return Err(e.into());
            }
        }
        let found = st.users.get(name).ok_or_else(auth::user_not_found)?;
        Ok(Response::new(AuthUserGetResponse { header: self.m.auth_header(), roles: found.roles.clone() }))
    }

    async fn user_list(&self, req: Request<AuthUserListRequest>) -> TonicResult<AuthUserListResponse> {
        let (st, user) = self.m.read_auth(&req).await?;
        st.check_admin(user.as_deref())?;
        Ok(Response::new(AuthUserListResponse {
            header: self.m.auth_header(),
            users: st.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(&self, req: Request<AuthUserDeleteRequest>) -> TonicResult<AuthUserDeleteResponse> {
        let op = AuthOp::UserDelete { name: req.get_ref().name.clone() };
        Ok(Response::new(AuthUserDeleteResponse { header: self.m.change(&req, op).await? }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> TonicResult<AuthUserChangePasswordResponse> {
        let rev = self.m.admin(&req)?;
        let r = req.get_ref();
        refuse_prehashed(&r.password, &r.hashed_password)?;
        let op = AuthOp::UserChangePassword { name: r.name.clone(), password: hash(r.password.clone()).await? };
        Ok(Response::new(AuthUserChangePasswordResponse { header: self.m.change_checked(rev, op).await? }))
    }

    async fn user_grant_role(&self, req: Request<AuthUserGrantRoleRequest>) -> TonicResult<AuthUserGrantRoleResponse> {
        let op = AuthOp::UserGrantRole { user: req.get_ref().user.clone(), role: req.get_ref().role.clone() };
        Ok(Response::new(AuthUserGrantRoleResponse { header: self.m.change(&req, op).await? }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> TonicResult<AuthUserRevokeRoleResponse> {
        let op = AuthOp::UserRevokeRole { user: req.get_ref().name.clone(), role: req.get_ref().role.clone() };
        Ok(Response::new(AuthUserRevokeRoleResponse { header: self.m.change(&req, op).await? }))
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> TonicResult<AuthRoleAddResponse> {
        let op = AuthOp::RoleAdd { name: req.get_ref().name.clone() };
        Ok(Response::new(AuthRoleAddResponse { header: self.m.change(&req, op).await? }))
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> TonicResult<AuthRoleGetResponse> {
        let (st, user) = self.m.read_auth(&req).await?;
        let name = &req.get_ref().role;
        if let Err(e) = st.check_admin(user.as_deref()) {
            // Everyone may look at the roles they hold.
            let holds = user.as_deref().and_then(|u| st.users.get(u)).is_some_and(|u| u.roles.contains(name));
            if !holds {
                return Err(e.into());
            }
        }
        let role = st.roles.get(name).ok_or_else(auth::role_not_found)?;
        let perm = role
            .perms
            .iter()
            .map(|p| Permission { perm_type: p.kind, key: p.key.clone(), range_end: p.range_end.clone() })
            .collect();
        Ok(Response::new(AuthRoleGetResponse { header: self.m.auth_header(), perm }))
    }

    async fn role_list(&self, req: Request<AuthRoleListRequest>) -> TonicResult<AuthRoleListResponse> {
        let (st, user) = self.m.read_auth(&req).await?;
        st.check_admin(user.as_deref())?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.m.auth_header(),
            roles: st.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(&self, req: Request<AuthRoleDeleteRequest>) -> TonicResult<AuthRoleDeleteResponse> {
        let op = AuthOp::RoleDelete { name: req.get_ref().role.clone() };
        Ok(Response::new(AuthRoleDeleteResponse { header: self.m.change(&req, op).await? }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> TonicResult<AuthRoleGrantPermissionResponse> {
        let r = req.get_ref();
        let Some(p) = &r.perm else {
            return Err(EtcdError::new(Code::InvalidArgument, "etcdserver: permission not given").into());
        };
        if !(auth::READ..=auth::READWRITE).contains(&p.perm_type) {
            return Err(EtcdError::new(Code::InvalidArgument, "skiff: unknown permission type").into());
        }
        let perm = Perm { kind: p.perm_type, key: p.key.clone(), range_end: p.range_end.clone() };
        let op = AuthOp::RoleGrantPermission { role: r.name.clone(), perm };
        Ok(Response::new(AuthRoleGrantPermissionResponse { header: self.m.change(&req, op).await? }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> TonicResult<AuthRoleRevokePermissionResponse> {
        let r = req.get_ref();
        let op =
            AuthOp::RoleRevokePermission { role: r.role.clone(), key: r.key.clone(), range_end: r.range_end.clone() };
        Ok(Response::new(AuthRoleRevokePermissionResponse { header: self.m.change(&req, op).await? }))
    }
}

/// What a Range needs.
pub fn range_needs(r: &PbRangeRequest) -> Vec<Need<'_>> {
    vec![(auth::READ, &r.key, &r.range_end)]
}

/// What a Put needs: write on its key, read too for the previous value, and write on
/// every key already attached to the lease it names (`lease_keys`).
pub fn put_needs<'a>(r: &'a PbPutRequest, lease_keys: &'a [Vec<u8>]) -> Vec<Need<'a>> {
    let mut needs = vec![(auth::WRITE, r.key.as_slice(), &[][..])];
    if r.prev_kv {
        needs.push((auth::READ, &r.key, &[]));
    }
    needs.extend(lease_keys.iter().map(|k| (auth::WRITE, k.as_slice(), &[][..])));
    needs
}

/// What a DeleteRange needs.
pub fn delete_needs(r: &PbDeleteRequest) -> Vec<Need<'_>> {
    let mut needs = vec![(auth::WRITE, r.key.as_slice(), r.range_end.as_slice())];
    if r.prev_kv {
        needs.push((auth::READ, &r.key, &r.range_end));
    }
    needs
}

/// What a Txn needs: read on every compare, and what every operation of both branches
/// needs (whichever runs), as etcd checks it.
pub fn txn_needs(t: &PbTxnRequest) -> Vec<Need<'_>> {
    let mut needs: Vec<Need<'_>> = t.compare.iter().map(|c| (auth::READ, &c.key[..], &c.range_end[..])).collect();
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(PbTxnOpRequest::RequestRange(r)) => needs.extend(range_needs(r)),
            Some(PbTxnOpRequest::RequestPut(p)) => {
                needs.push((auth::WRITE, &p.key, &[]));
                // etcd 3.4 forgets this one inside a txn; a previous value is a read.
                if p.prev_kv {
                    needs.push((auth::READ, &p.key, &[]));
                }
            }
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => needs.extend(delete_needs(d)),
            Some(PbTxnOpRequest::RequestTxn(inner)) => needs.extend(txn_needs(inner)),
            None => {}
        }
    }
    needs
}
