//! The raft type configuration: what a member is, what a log entry carries and what
//! applying it answers.
//!
//! Client requests travel through the log as the etcd protobuf bytes they arrived as
//! (`Command`), so the state machine decodes exactly what the client sent and a
//! follower can forward a request to the leader without a second schema.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::errors::EtcdError;

/// A member of the store cluster as raft knows it. The peer URLs are what the other
/// members dial; the name is the `--name` flag.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    pub peer_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.peer_urls.join(","))
    }
}

/// One state-machine command. Request payloads are prost-encoded etcd messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    // serde_bytes: (de)serialized as one byte string, not element by element.
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    DeleteRange(#[serde(with = "serde_bytes")] Vec<u8>),
    Txn(#[serde(with = "serde_bytes")] Vec<u8>),
    Compact(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Creates lease `id` (chosen by the proposer) with a TTL in seconds.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// Removes a lease and deletes its keys (a client's revoke, or the leader's expiry).
    LeaseRevoke {
        id: i64,
    },
    /// Raises (or clears) an alarm for a member, e.g. NOSPACE when it passed its quota.
    Alarm {
        activate: bool,
        member_id: u64,
        alarm: i32,
    },
    /// Client writes grouped into one log entry by the leader (see `batcher`); applied in
    /// order as one atomic write, each making its own revision.
    Batch(Vec<Command>),
    /// A member announces its name and client URLs (what `member list` shows).
    Publish {
        member_id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// A change to users, roles or the auth switch (see `auth`).
    Auth(crate::auth::AuthOp),
    /// A client's command that was permitted at auth revision `auth_rev` (None: auth was
    /// off): applied only if the auth state is still the one it was checked against.
    Guarded {
        auth_rev: Option<u64>,
        cmd: Box<Command>,
    },
}

/// What applying one command answers: the prost-encoded etcd response (without the
/// cluster/member/term part of the header, which the answering member fills in), or
/// the etcd error the request earned. `Empty` answers blank and membership entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    Empty,
    Encoded(#[serde(with = "serde_bytes")] Vec<u8>),
    Error(EtcdError),
    /// The responses to a `Command::Batch`, in order.
    Batch(Vec<CommandResponse>),
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = MemberNode,
        // Snapshots live in files and stream in chunks; never whole in memory.
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Vote = openraft::Vote<u64>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, MemberNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, MemberNode>;
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
