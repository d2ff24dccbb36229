//! Mutation fuzzing of the store's request handling: a protobuf `TxnRequest` (the most
//! general write; it nests puts, ranges, deletes and txns) is decoded as the gRPC layer
//! does, checked as the server checks it (auth permissions included), and, when accepted, applied to a real rocksdb
//! through the same `Writer` the state machine uses, then read back. A request may be
//! refused, but nothing may panic: a panic while applying would stop every member that
//! applies the entry.
//!
//! Corpus: `store/fuzz/corpus/txn/` (in the repository). In `make test`, seeded mutation
//! fuzzing bounded by a count (`SKIFF_FUZZ_ITERATIONS`, default 3000) from a fixed seed
//! (`SKIFF_FUZZ_SEED`); the mutator is the same small one as the API server's fuzzer
//! (`apiserver/src/fuzz.rs`; the crates share no code by design, ARCHITECTURE.md). In
//! `make fuzz`, `TxnTarget` also runs coverage-guided under cargo-fuzz (`store/fuzz/`).

#[cfg(test)]
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;

use etcd_client::proto::{PbRangeRequest, PbTxnRequest};
use prost::Message;
use rocksdb::WriteBatch;

use crate::auth::{AuthOp, Perm, READ, READWRITE, WRITE};
use crate::mvcc::{check_txn, View, Writer};

#[cfg(test)]
struct Rng(u64);

#[cfg(test)]
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

#[cfg(test)]
/// Protobuf fragments: tags of the request fields, large varints, empty messages.
const TOKENS: &[&[u8]] = &[
    b"\x0a\x00",
    b"\x12\x00",
    b"\x1a\x00",
    b"\x22\x00",
    b"\x12\x02\x0a\x00",
    b"\x12\x02\x22\x00",
    b"\x08\xff\xff\xff\xff\x0f",
    b"\x18\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
    b"\x20\x01",
    b"\x28\x01",
    b"\x30\x05",
    b"\x82\x04\x01\x00",
];

#[cfg(test)]
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(len + 1);
                v.insert(at, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(8));
                v.drain(i..i + n);
            }
            4 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                v.splice(at..at, t.iter().copied());
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len() + 1);
                v.extend_from_slice(&other[from..]);
            }
            _ if len > 1 => v.truncate(rng.below(len)),
            _ => {}
        }
    }
    v
}

#[cfg(test)]
fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The fuzz target: a `TxnRequest` decoded, checked (auth included) and applied to one
/// rocksdb, kept across inputs as a member's database is.
pub struct TxnTarget {
    db: crate::db::Db,
    auth: crate::auth::AuthState,
}

impl TxnTarget {
    /// A target on a new database in `dir`.
    pub fn new(dir: &Path) -> TxnTarget {
        let db = crate::db::open(dir).expect("a database");
        // The permission check every txn goes through once auth is on: a user with a few
        // ranges (adjacent, point and open-ended) checked against whatever the txn names.
        let mut auth = crate::auth::AuthState::default();
        for op in [
            AuthOp::UserAdd { name: "root".into(), password: None },
            AuthOp::UserGrantRole { user: "root".into(), role: "root".into() },
            AuthOp::UserAdd { name: "u".into(), password: None },
            AuthOp::RoleAdd { name: "r".into() },
            AuthOp::UserGrantRole { user: "u".into(), role: "r".into() },
            AuthOp::Enable { token_key: vec![7; 32] },
        ] {
            auth.apply(&op).expect("a valid set-up");
        }
        for (kind, key, end) in
            [(READ, &b"a"[..], &b"c"[..]), (READWRITE, b"c", b"e"), (WRITE, b"k", b""), (READ, b"x", b"\0")]
        {
            let perm = Perm { kind, key: key.to_vec(), range_end: end.to_vec() };
            auth.apply(&AuthOp::RoleGrantPermission { role: "r".into(), perm }).expect("a grant");
        }
        TxnTarget { db, auth }
    }

    /// Runs one input; true if it was applied (false: refused as a request).
    pub fn run(&self, input: &[u8]) -> bool {
        let Ok(req) = PbTxnRequest::decode(input) else { return false };
        if check_txn(&req).is_err() {
            return false;
        }
        let _ = self.auth.check_all(Some("u"), &crate::auth_service::txn_needs(&req));
        let mut w = Writer::new(&self.db, WriteBatch::default()).expect("a writer");
        let ok = w.txn(&req).is_ok();
        w.end_command(ok);
        let (batch, _) = w.finish();
        self.db.write(batch).expect("the batch is written");
        // Everything written reads back.
        let all = PbRangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
        View::new(&self.db).range(&all).expect("a full range");
        ok
    }
}

#[test]
fn fuzz_txn_requests_decode_check_and_apply() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/txn");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("the txn corpus").map(|e| e.expect("an entry").path()).collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).expect("a corpus file")).collect();
    assert!(!seeds.is_empty());
    for s in &seeds {
        let req = PbTxnRequest::decode(s.as_slice()).expect("every seed decodes");
        check_txn(&req).expect("every seed is a valid request");
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let target = TxnTarget::new(tmp.path());
    let mut rng = Rng(env_u64("SKIFF_FUZZ_SEED", 0x5EED_F00D_1234_ABCD) | 1);
    let iterations = env_u64("SKIFF_FUZZ_ITERATIONS", 3000) as usize;
    let (mut applied, mut refused) = (0, 0);
    for i in 0..iterations + seeds.len() {
        let input = if i < seeds.len() {
            seeds[i].clone()
        } else {
            let base = rng.below(seeds.len());
            mutate(&mut rng, &seeds[base], &seeds)
        };
        match catch_unwind(AssertUnwindSafe(|| target.run(&input))) {
            Ok(true) => applied += 1,
            Ok(false) => refused += 1,
            Err(_) => {
                let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
                let _ = std::fs::create_dir_all(&out);
                let file = out.join(format!("txn-{i}"));
                let _ = std::fs::write(&file, &input);
                panic!("a TxnRequest panicked the store (input {i}, saved to {})", file.display());
            }
        }
    }
    eprintln!("fuzz txn: {applied} applied, {refused} refused");
    // The mutations reach the apply path, not only the decoder.
    assert!(applied > seeds.len(), "only {applied} of {} inputs were applied ({refused} refused)", iterations);
}
