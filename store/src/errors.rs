//! etcd's client-visible errors: gRPC code plus the exact description text, because
//! etcd clients map the text back to their typed errors (clientv3 `rpctypes`).

use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

/// An error as an etcd server answers it. Serializable so that it can travel in raft
/// responses and in forwarded requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct EtcdError {
    code: i32,
    message: String,
}

impl EtcdError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        EtcdError { code: code as i32, message: message.into() }
    }
    pub fn code(&self) -> Code {
        Code::from_i32(self.code)
    }
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn empty_key() -> Self {
        Self::new(Code::InvalidArgument, "etcdserver: key is not provided")
    }
    pub fn key_not_found() -> Self {
        Self::new(Code::InvalidArgument, "etcdserver: key not found")
    }
    pub fn value_provided() -> Self {
        Self::new(Code::InvalidArgument, "etcdserver: value is provided")
    }
    pub fn lease_provided() -> Self {
        Self::new(Code::InvalidArgument, "etcdserver: lease is provided")
    }
    pub fn too_many_ops() -> Self {
        Self::new(Code::InvalidArgument, "etcdserver: too many operations in txn request")
    }
    pub fn duplicate_key() -> Self {
        Self::new(Code::InvalidArgument, "etcdserver: duplicate key given in txn request")
    }
    pub fn request_too_large() -> Self {
        Self::new(Code::InvalidArgument, "etcdserver: request is too large")
    }
    pub fn compacted() -> Self {
        Self::new(Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    }
    pub fn future_rev() -> Self {
        Self::new(Code::OutOfRange, "etcdserver: mvcc: required revision is a future revision")
    }
    pub fn no_space() -> Self {
        Self::new(Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded")
    }
    pub fn lease_not_found() -> Self {
        Self::new(Code::NotFound, "etcdserver: requested lease not found")
    }
    pub fn no_leader() -> Self {
        Self::new(Code::Unavailable, "etcdserver: no leader")
    }
    pub fn leader_changed() -> Self {
        Self::new(Code::Unavailable, "etcdserver: leader changed")
    }
    pub fn timeout() -> Self {
        Self::new(Code::Unavailable, "etcdserver: request timed out")
    }
    /// The forwarded request may or may not have reached the leader: never retried.
    pub fn connection_lost() -> Self {
        Self::new(Code::Unavailable, "etcdserver: request timed out, possibly due to connection lost")
    }
    pub fn stopped() -> Self {
        Self::new(Code::Unavailable, "etcdserver: server stopped")
    }
    pub fn not_supported(what: &str) -> Self {
        Self::new(Code::Unimplemented, format!("skiff: {what} is not supported yet"))
    }
    pub fn internal(what: impl std::fmt::Display) -> Self {
        Self::new(Code::Internal, format!("skiff: internal error: {what}"))
    }
    pub fn corrupt(what: impl std::fmt::Display) -> Self {
        Self::new(Code::DataLoss, format!("skiff: corrupt request: {what}"))
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.message)
    }
}

pub type EtcdResult<T> = Result<T, EtcdError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_etcd_code_and_text() {
        let s: Status = EtcdError::compacted().into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
        let s: Status = EtcdError::no_leader().into();
        assert_eq!(s.code(), Code::Unavailable);
    }
}
