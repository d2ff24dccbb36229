//! etcd's authentication and role-based access control: users with passwords and
//! roles, roles with key-range permissions, the `root` user who may do everything, and
//! what each request needs (`docs/reference` facts come from etcd 3.4.23's auth store).
//!
//! The whole auth state is one replicated record (`meta` key `auth`) changed only by
//! [`AuthOp`] log entries, so every member holds the same users, roles and revision.
//! Each member keeps it in memory ([`Auth`]) for the per-request checks. A request is
//! checked on the member that receives it against the state at some auth revision; the
//! write it proposes carries that revision, and the state machine refuses it with
//! `revision of auth store is old` when the state changed in between — so a permission
//! revoked before a write is applied is never used, as in etcd.
//!
//! Passwords are stored as PBKDF2-HMAC-SHA256 hashes made on the receiving member (the
//! plain password never enters the log). Tokens are stateless: the user name, an expiry
//! and an HMAC under a key made at `auth enable`, bound to the user's password
//! generation, so a token dies with `auth disable`, a password change or the user's
//! deletion, on every member at once.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::RwLock;

use ring::{hmac, pbkdf2, rand::SecureRandom};
use serde::{Deserialize, Serialize};
use tonic::Code;

use crate::errors::{EtcdError, EtcdResult};

pub const ROOT: &str = "root";
/// The `meta` key of the auth record.
pub const META_AUTH: &[u8] = b"auth";

/// etcd's permission types (`authpb.Permission.Type`).
pub const READ: i32 = 0;
pub const WRITE: i32 = 1;
pub const READWRITE: i32 = 2;

const PBKDF2_ITERATIONS: u32 = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>`; None for a user created with
    /// `--no-password` (who can only come in by certificate).
    pub password: Option<String>,
    /// Sorted.
    pub roles: Vec<String>,
    /// The auth revision at which the password was last set: tokens issued before it
    /// are void.
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    pub kind: i32,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    /// Sorted by key.
    pub perms: Vec<Perm>,
}

/// The replicated auth record.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// Bumped by every change.
    pub revision: u64,
    /// The token signing key, made anew at each `auth enable`.
    #[serde(with = "serde_bytes")]
    pub token_key: Vec<u8>,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

/// One change to the auth record, as a log entry carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOp {
    Enable {
        #[serde(with = "serde_bytes")]
        token_key: Vec<u8>,
    },
    /// A token key for a cluster restored from a backup (which carries none); ignored
    /// once there is one.
    TokenKey {
        #[serde(with = "serde_bytes")]
        token_key: Vec<u8>,
    },
    Disable,
    UserAdd {
        name: String,
        password: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        perm: Perm,
    },
    RoleRevokePermission {
        role: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
    },
}

// Keys and password hashes stay out of logs and panic messages.
impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState")
            .field("enabled", &self.enabled)
            .field("revision", &self.revision)
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AuthOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthOp::Enable { .. } => f.write_str("Enable"),
            AuthOp::TokenKey { .. } => f.write_str("TokenKey"),
            AuthOp::Disable => f.write_str("Disable"),
            AuthOp::UserAdd { name, .. } => write!(f, "UserAdd({name})"),
            AuthOp::UserDelete { name } => write!(f, "UserDelete({name})"),
            AuthOp::UserChangePassword { name, .. } => write!(f, "UserChangePassword({name})"),
            AuthOp::UserGrantRole { user, role } => write!(f, "UserGrantRole({user}, {role})"),
            AuthOp::UserRevokeRole { user, role } => write!(f, "UserRevokeRole({user}, {role})"),
            AuthOp::RoleAdd { name } => write!(f, "RoleAdd({name})"),
            AuthOp::RoleDelete { name } => write!(f, "RoleDelete({name})"),
            AuthOp::RoleGrantPermission { role, perm } => write!(f, "RoleGrantPermission({role}, {perm:?})"),
            AuthOp::RoleRevokePermission { role, key, range_end } => {
                write!(f, "RoleRevokePermission({role}, {key:?}, {range_end:?})")
            }
        }
    }
}

// etcd's auth errors, code and text as clients match them (rpctypes).
fn failed(msg: &str) -> EtcdError {
    EtcdError::new(Code::FailedPrecondition, format!("etcdserver: {msg}"))
}
fn invalid(msg: &str) -> EtcdError {
    EtcdError::new(Code::InvalidArgument, format!("etcdserver: {msg}"))
}
pub fn user_empty() -> EtcdError {
    invalid("user name is empty")
}
pub fn user_not_found() -> EtcdError {
    failed("user name not found")
}
pub fn role_not_found() -> EtcdError {
    failed("role name not found")
}
pub fn permission_denied() -> EtcdError {
    EtcdError::new(Code::PermissionDenied, "etcdserver: permission denied")
}
pub fn auth_failed() -> EtcdError {
    invalid("authentication failed, invalid user ID or password")
}
pub fn not_enabled() -> EtcdError {
    failed("authentication is not enabled")
}
pub fn invalid_token() -> EtcdError {
    EtcdError::new(Code::Unauthenticated, "etcdserver: invalid auth token")
}
pub fn old_revision() -> EtcdError {
    invalid("revision of auth store is old")
}
fn invalid_management() -> EtcdError {
    invalid("invalid auth management")
}

impl AuthState {
    /// Applies one change; on error the state is unchanged.
    /// Applies one change; on error the state is unchanged. A change that changes
    /// nothing (enabling twice, granting a role held) keeps the revision, as in etcd, so
    /// it does not fail the writes checked at the current one.
    pub fn apply(&mut self, op: &AuthOp) -> EtcdResult<()> {
        let mut next = self.clone();
        if next.change(op)? {
            next.revision += 1;
        }
        *self = next;
        Ok(())
    }

    /// Makes the change; whether it changed what requests are checked against.
    fn change(&mut self, op: &AuthOp) -> EtcdResult<bool> {
        match op {
            AuthOp::Enable { token_key } => {
                if self.enabled {
                    return Ok(false);
                }
                let root = self.users.get(ROOT).ok_or_else(|| failed("root user does not exist"))?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(failed("root user does not have root role"));
                }
                self.enabled = true;
                self.token_key = token_key.clone();
            }
            AuthOp::TokenKey { token_key } => {
                if self.token_key.is_empty() {
                    self.token_key = token_key.clone();
                }
                return Ok(false);
            }
            AuthOp::Disable => {
                if !self.enabled {
                    return Ok(false);
                }
                self.enabled = false;
            }
            AuthOp::UserAdd { name, password } => {
                if name.is_empty() {
                    return Err(user_empty());
                }
                if self.users.contains_key(name) {
                    return Err(failed("user name already exists"));
                }
                let user = User {
                    name: name.clone(),
                    password: password.clone(),
                    roles: Vec::new(),
                    generation: self.revision + 1,
                };
                self.users.insert(name.clone(), user);
            }
            AuthOp::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(invalid_management());
                }
                self.users.remove(name).ok_or_else(user_not_found)?;
            }
            AuthOp::UserChangePassword { name, password } => {
                let generation = self.revision + 1;
                let user = self.users.get_mut(name).ok_or_else(user_not_found)?;
                user.password = Some(password.clone());
                user.generation = generation;
            }
            AuthOp::UserGrantRole { user, role } => {
                // `root` may be granted before a role of that name exists, as in etcd.
                if !self.roles.contains_key(role) && role != ROOT {
                    return Err(role_not_found());
                }
                let user = self.users.get_mut(user).ok_or_else(user_not_found)?;
                match user.roles.binary_search(role) {
                    Ok(_) => return Ok(false),
                    Err(at) => user.roles.insert(at, role.clone()),
                }
            }
            AuthOp::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(invalid_management());
                }
                let user = self.users.get_mut(user).ok_or_else(user_not_found)?;
                let at = user.roles.binary_search(role).map_err(|_| failed("role is not granted to the user"))?;
                user.roles.remove(at);
            }
            AuthOp::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(invalid("role name is empty"));
                }
                if self.roles.contains_key(name) {
                    return Err(failed("role name already exists"));
                }
                self.roles.insert(name.clone(), Role { name: name.clone(), perms: Vec::new() });
            }
            AuthOp::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(invalid_management());
                }
                self.roles.remove(name).ok_or_else(role_not_found)?;
                for u in self.users.values_mut() {
                    u.roles.retain(|r| r != name);
                }
            }
            AuthOp::RoleGrantPermission { role, perm } => {
                let role = self.roles.get_mut(role).ok_or_else(role_not_found)?;
                match role.perms.iter_mut().find(|p| p.key == perm.key && p.range_end == perm.range_end) {
                    Some(p) => p.kind = perm.kind,
                    None => {
                        role.perms.push(perm.clone());
                        role.perms.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
            }
            AuthOp::RoleRevokePermission { role, key, range_end } => {
                let role = self.roles.get_mut(role).ok_or_else(role_not_found)?;
                let before = role.perms.len();
                role.perms.retain(|p| !(&p.key == key && &p.range_end == range_end));
                if role.perms.len() == before {
                    return Err(failed("permission is not granted to the role"));
                }
            }
        }
        Ok(true)
    }

    fn is_root(&self, user: &User) -> bool {
        user.roles.iter().any(|r| r == ROOT)
    }

    /// May `user` run an administrative request (etcd's `IsAdminPermitted`)?
    pub fn check_admin(&self, user: Option<&str>) -> EtcdResult<()> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.filter(|u| !u.is_empty()).ok_or_else(user_empty)?;
        let user = self.users.get(name).ok_or_else(user_not_found)?;
        if !self.is_root(user) {
            return Err(permission_denied());
        }
        Ok(())
    }

    /// May `user` read (`READ`) or write (`WRITE`) the keys `[key, range_end)` (just
    /// `key` when `range_end` is empty; to the end of the keyspace when it is "\0")?
    pub fn check_range(&self, user: Option<&str>, kind: i32, key: &[u8], range_end: &[u8]) -> EtcdResult<()> {
        self.check_all(user, &[(kind, key, range_end)])
    }

    /// [`AuthState::check_range`] for each of `needs`, the user's ranges gathered once.
    pub fn check_all(&self, user: Option<&str>, needs: &[(i32, &[u8], &[u8])]) -> EtcdResult<()> {
        if !self.enabled || needs.is_empty() {
            return Ok(());
        }
        let name = user.filter(|u| !u.is_empty()).ok_or_else(user_empty)?;
        let user = self.users.get(name).ok_or_else(permission_denied)?;
        if self.is_root(user) {
            return Ok(());
        }
        let spans = |kind: i32| {
            let mut spans: Vec<(&[u8], Option<Vec<u8>>)> = user
                .roles
                .iter()
                .filter_map(|r| self.roles.get(r))
                .flat_map(|r| &r.perms)
                .filter(|p| p.kind == kind || p.kind == READWRITE)
                .map(|p| (p.key.as_slice(), span_end(&p.key, &p.range_end)))
                .collect();
            spans.sort_by(|a, b| a.0.cmp(b.0));
            spans
        };
        let (read, write) = (spans(READ), spans(WRITE));
        for (kind, key, range_end) in needs {
            let spans = if *kind == READ { &read } else { &write };
            if !covered(spans, key, span_end(key, range_end)) {
                return Err(permission_denied());
            }
        }
        Ok(())
    }

    /// The user a name/password pair proves, as `Authenticate` answers it.
    pub fn check_password(&self, name: &str, password: &str) -> EtcdResult<&User> {
        if !self.enabled {
            return Err(not_enabled());
        }
        let Some(user) = self.users.get(name) else {
            // As slow as a wrong password, so timing does not tell who exists.
            static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
            verify_password(DUMMY.get_or_init(|| hash_password("")), password);
            return Err(auth_failed());
        };
        match &user.password {
            None => Err(EtcdError::new(
                Code::Unknown,
                "auth: authentication failed, password was given for no password user",
            )),
            Some(stored) if verify_password(stored, password) => Ok(user),
            Some(_) => Err(auth_failed()),
        }
    }

    /// A token for `user`, valid for `ttl` from `now` (seconds since the epoch):
    /// `<name hex>.<expiry>.<password generation>.<HMAC-SHA256 hex>`.
    pub fn issue_token(&self, user: &User, now: u64, ttl: u64) -> String {
        let body = format!("{}.{}.{}", hex(user.name.as_bytes()), now.saturating_add(ttl), user.generation);
        let mac = hmac::sign(&self.token_key(), body.as_bytes());
        format!("{body}.{}", hex(mac.as_ref()))
    }

    /// The user a token names, if it is genuine, unexpired and its user unchanged. The
    /// MAC is checked first (in constant time), before anything the token claims.
    pub fn verify_token(&self, token: &str, now: u64) -> EtcdResult<String> {
        if !self.enabled || self.token_key.len() < 32 {
            return Err(invalid_token());
        }
        let (body, mac) = token.rsplit_once('.').ok_or_else(invalid_token)?;
        let mac = unhex(mac).ok_or_else(invalid_token)?;
        hmac::verify(&self.token_key(), body.as_bytes(), &mac).map_err(|_| invalid_token())?;
        let mut parts = body.split('.');
        let (Some(name), Some(expires), Some(generation), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid_token());
        };
        let name = unhex(name).and_then(|n| String::from_utf8(n).ok()).ok_or_else(invalid_token)?;
        let (Ok(expires), Ok(generation)) = (expires.parse::<u64>(), generation.parse::<u64>()) else {
            return Err(invalid_token());
        };
        match self.users.get(&name) {
            Some(u) if expires > now && u.generation == generation => Ok(name),
            _ => Err(invalid_token()),
        }
    }

    fn token_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.token_key)
    }
}

/// The exclusive end of a permission or request range: None is "to the end".
fn span_end(key: &[u8], range_end: &[u8]) -> Option<Vec<u8>> {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            Some(end)
        }
        [0] => None,
        end => Some(end.to_vec()),
    }
}

/// Do `spans` (sorted by start) together cover `[start, end)` without a gap?
fn covered(spans: &[(&[u8], Option<Vec<u8>>)], start: &[u8], end: Option<Vec<u8>>) -> bool {
    if end.as_deref().is_some_and(|e| e <= start) {
        // An empty range (etcd treats range_end < key as the single key; callers
        // pass the single-key form for that) needs nothing.
        return spans.iter().any(|(s, e)| *s <= start && e.as_deref().is_none_or(|e| start < e));
    }
    let mut reached: Vec<u8> = start.to_vec();
    for (s, e) in spans {
        if *s > reached.as_slice() {
            break;
        }
        match e {
            None => return true,
            Some(e) if e.as_slice() > reached.as_slice() => reached = e.clone(),
            Some(_) => {}
        }
        if end.as_deref().is_some_and(|end| reached.as_slice() >= end) {
            return true;
        }
    }
    false
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// A fresh random byte string (salts, token keys).
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    ring::rand::SystemRandom::new().fill(&mut b).expect("the system's random source works");
    b
}

/// The stored form of `password`.
pub fn hash_password(password: &str) -> String {
    let salt = random_bytes(16);
    let mut out = [0u8; 32];
    let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).expect("non-zero");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, password.as_bytes(), &mut out);
    format!("pbkdf2-sha256${PBKDF2_ITERATIONS}${}${}", hex(&salt), hex(&out))
}

fn verify_password(stored: &str, password: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2-sha256"), Some(iterations), Some(salt), Some(hash), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Some(iterations), Some(salt), Some(hash)) =
        (iterations.parse().ok().and_then(NonZeroU32::new), unhex(salt), unhex(hash))
    else {
        return false;
    };
    pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, password.as_bytes(), &hash).is_ok()
}

/// A member's in-memory copy of the auth record, kept equal to the applied state.
#[derive(Default)]
pub struct Auth {
    state: RwLock<AuthState>,
}

impl Auth {
    pub fn new(state: AuthState) -> Auth {
        Auth { state: RwLock::new(state) }
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, AuthState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn replace(&self, state: AuthState) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(kind: i32, key: &[u8], end: &[u8]) -> Perm {
        Perm { kind, key: key.to_vec(), range_end: end.to_vec() }
    }

    /// root with the root role, and alice with role `r`.
    fn state() -> AuthState {
        let mut s = AuthState::default();
        for op in [
            AuthOp::UserAdd { name: "root".into(), password: Some(hash_password("rootpw")) },
            AuthOp::UserGrantRole { user: "root".into(), role: "root".into() },
            AuthOp::UserAdd { name: "alice".into(), password: Some(hash_password("alicepw")) },
            AuthOp::RoleAdd { name: "r".into() },
            AuthOp::UserGrantRole { user: "alice".into(), role: "r".into() },
            AuthOp::Enable { token_key: random_bytes(32) },
        ] {
            s.apply(&op).unwrap();
        }
        s
    }

    #[test]
    fn ranges_must_be_covered_without_gaps() {
        let mut s = state();
        let grant = |s: &mut AuthState, p| s.apply(&AuthOp::RoleGrantPermission { role: "r".into(), perm: p }).unwrap();
        grant(&mut s, perm(READ, b"a2", b"a4"));
        grant(&mut s, perm(READWRITE, b"a4", b"a6"));
        grant(&mut s, perm(WRITE, b"k", b""));
        let alice = Some("alice");
        assert!(s.check_range(alice, READ, b"a2", b"a6").is_ok(), "two adjacent spans cover it");
        assert_eq!(s.check_range(alice, READ, b"a2", b"a7"), Err(permission_denied()), "a gap at a6");
        assert!(s.check_range(alice, READ, b"a3", b"").is_ok());
        assert_eq!(s.check_range(alice, WRITE, b"a3", b""), Err(permission_denied()), "a2..a4 is read only");
        assert!(s.check_range(alice, WRITE, b"a5", b"").is_ok(), "readwrite counts as write");
        assert!(s.check_range(alice, WRITE, b"k", b"").is_ok());
        assert_eq!(s.check_range(alice, WRITE, b"k", b"l"), Err(permission_denied()), "only the key k");
        assert_eq!(s.check_range(alice, READ, b"a4", b"\0"), Err(permission_denied()), "not to the end");
        grant(&mut s, perm(READ, b"a6", b"\0"));
        assert!(s.check_range(alice, READ, b"a2", b"\0").is_ok(), "now to the end");
        assert!(s.check_range(Some("root"), WRITE, b"", b"\0").is_ok(), "root may do anything");
        assert_eq!(s.check_range(None, READ, b"a3", b""), Err(user_empty()));
        assert_eq!(s.check_range(Some("bob"), READ, b"a3", b""), Err(permission_denied()));
    }

    #[test]
    fn admin_checks_and_root_protection() {
        let mut s = state();
        assert!(s.check_admin(Some("root")).is_ok());
        assert_eq!(s.check_admin(Some("alice")), Err(permission_denied()));
        assert_eq!(s.check_admin(Some("bob")), Err(user_not_found()));
        assert_eq!(s.check_admin(None), Err(user_empty()));
        let rev = s.revision;
        assert_eq!(s.apply(&AuthOp::UserDelete { name: "root".into() }), Err(invalid_management()));
        assert_eq!(
            s.apply(&AuthOp::UserRevokeRole { user: "root".into(), role: "root".into() }),
            Err(invalid_management())
        );
        assert_eq!(s.revision, rev, "a refused change changes nothing");
        s.apply(&AuthOp::Disable).unwrap();
        assert!(s.check_admin(None).is_ok(), "with auth off everyone is admin");
        s.apply(&AuthOp::UserRevokeRole { user: "root".into(), role: "root".into() }).unwrap();
        assert_eq!(
            s.apply(&AuthOp::Enable { token_key: vec![1] }),
            Err(EtcdError::new(Code::FailedPrecondition, "etcdserver: root user does not have root role"))
        );
    }

    #[test]
    fn passwords_and_tokens() {
        let mut s = state();
        assert_eq!(s.check_password("alice", "alicepw").map(|u| u.name.clone()), Ok("alice".to_string()));
        assert_eq!(s.check_password("alice", "wrong").err(), Some(auth_failed()));
        assert_eq!(s.check_password("nobody", "x").err(), Some(auth_failed()));
        let alice = s.users["alice"].clone();
        let token = s.issue_token(&alice, 1000, 300);
        assert_eq!(s.verify_token(&token, 1299), Ok("alice".into()));
        assert_eq!(s.verify_token(&token, 1300), Err(invalid_token()), "expired");
        let forged = token.replacen(&hex(b"alice"), &hex(b"root"), 1);
        assert_eq!(s.verify_token(&forged, 1000), Err(invalid_token()), "the MAC covers the name");
        assert_eq!(s.verify_token("garbage", 1000), Err(invalid_token()));
        let later = token.replacen(".1300.", ".9999.", 1);
        assert_eq!(s.verify_token(&later, 1000), Err(invalid_token()), "the MAC covers the expiry");
        s.apply(&AuthOp::UserChangePassword { name: "alice".into(), password: hash_password("new") }).unwrap();
        assert_eq!(s.verify_token(&token, 1000), Err(invalid_token()), "a password change voids tokens");
        let token = s.issue_token(&s.users["alice"].clone(), 1000, 300);
        s.apply(&AuthOp::Disable).unwrap();
        s.apply(&AuthOp::Enable { token_key: random_bytes(32) }).unwrap();
        assert_eq!(s.verify_token(&token, 1000), Err(invalid_token()), "a new enable, a new key");
        s.apply(&AuthOp::UserAdd { name: "np".into(), password: None }).unwrap();
        assert_eq!(s.check_password("np", "x").err().map(|e| e.code()), Some(Code::Unknown));
    }

    #[test]
    fn roles_and_permissions_change_like_etcd() {
        let mut s = state();
        let p = perm(READ, b"a", b"b");
        s.apply(&AuthOp::RoleGrantPermission { role: "r".into(), perm: p.clone() }).unwrap();
        s.apply(&AuthOp::RoleGrantPermission { role: "r".into(), perm: perm(WRITE, b"a", b"b") }).unwrap();
        assert_eq!(s.roles["r"].perms, vec![perm(WRITE, b"a", b"b")], "same range: the type is replaced");
        let revoke = |key: &[u8], end: &[u8]| AuthOp::RoleRevokePermission {
            role: "r".into(),
            key: key.to_vec(),
            range_end: end.to_vec(),
        };
        assert_eq!(
            s.apply(&revoke(b"a", b"c")),
            Err(EtcdError::new(Code::FailedPrecondition, "etcdserver: permission is not granted to the role"))
        );
        s.apply(&revoke(b"a", b"b")).unwrap();
        assert!(s.roles["r"].perms.is_empty());
        s.apply(&AuthOp::RoleDelete { name: "r".into() }).unwrap();
        assert!(s.users["alice"].roles.is_empty(), "deleting a role takes it from its users");
        assert_eq!(s.apply(&AuthOp::UserGrantRole { user: "alice".into(), role: "r".into() }), Err(role_not_found()));
        // Changes that change nothing keep the revision writes were checked at.
        let rev = s.revision;
        s.apply(&AuthOp::UserGrantRole { user: "root".into(), role: "root".into() }).unwrap();
        s.apply(&AuthOp::Enable { token_key: vec![9; 32] }).unwrap();
        s.apply(&AuthOp::TokenKey { token_key: vec![9; 32] }).unwrap();
        assert_eq!(s.revision, rev);
        assert_ne!(s.token_key, vec![9; 32], "a key is never replaced by TokenKey or a second Enable");
    }
}
