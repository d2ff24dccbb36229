//! skiff-store: a raft-replicated key-value store that speaks the etcd v3 API.
//!
//! A member ([`member::start`]) keeps everything in one rocksdb database
//! ([`db`]): the raft log and vote ([`log_store`]), and the MVCC keyspace the state
//! machine ([`state_machine`]) applies committed commands to ([`mvcc`]). Clients reach
//! it through the etcd gRPC services ([`server`], [`watch`]); members reach each other
//! through the peer service ([`peer`]). See the crate README for the on-disk layout and
//! the durability argument.

// openraft's storage traits return its (large) `StorageError`; boxing it would only
// mean unboxing it again at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod auth_service;
pub mod backup;
pub mod batcher;
pub mod config;
pub mod db;
pub mod errors;
pub mod keys;
pub mod lease;
pub mod log_store;
pub mod member;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod peer;
pub mod server;
pub mod state_machine;
pub mod types;
pub mod watch;

#[doc(hidden)]
pub mod fuzz;

pub use config::{ClusterState, MemberConfig};
pub use member::{start, Member};
