//! End-to-end tests of the built `skiff` binary with real clients. All modules compile
//! into this one test binary (cheap to build on 2 cores).

mod common;

mod apiserver;
mod auth;
mod backup;
mod chaos;
mod client;
mod controllers;
mod crash;
mod differential;
mod docs;
mod hosts;
mod kv;
mod lease;
mod maintenance;
mod membership;
mod node;
mod tls;
mod up;
mod watch;
