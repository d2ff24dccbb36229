//! The one rocksdb database a member keeps, and its column families.
//!
//! Everything lives in one database so that every write shares one WAL. RocksDB
//! recovers a prefix of that WAL after a crash, which is what the durability argument in
//! the crate README rests on: if a later write survived, every earlier one did too.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};

/// Raft log entries: `log_key(index)` -> bincode(Entry).
pub const CF_LOG: &str = "log";
/// Raft log metadata: vote, last purged log id.
pub const CF_RAFT: &str = "raft";
/// MVCC versions: `version_key(user_key, rev)` -> `Record`.
pub const CF_KV: &str = "kv";
/// Revision log: `rev_key(rev)` -> the keys changed at that revision, in order.
pub const CF_REVS: &str = "revs";
/// State-machine metadata: applied log id, membership, current and compacted revision.
pub const CF_META: &str = "meta";

pub const ALL_CFS: [&str; 5] = [CF_LOG, CF_RAFT, CF_KV, CF_REVS, CF_META];

pub type Db = Arc<DB>;

pub fn open(path: &Path) -> Result<Db, rocksdb::Error> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // A crash keeps a consistent prefix of the WAL (the default, stated for the reader).
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(3);
    // Table files written by flushes and compactions are handed to the disk a megabyte at a
    // time, not all at their closing fsync: a burst of tens of megabytes would otherwise
    // queue the raft log's group fsync behind it for hundreds of milliseconds.
    opts.set_bytes_per_sync(1 << 20);
    let cfs = ALL_CFS.iter().map(|name| {
        let mut o = Options::default();
        o.set_compression_type(rocksdb::DBCompressionType::Lz4);
        if *name == CF_KV {
            o.set_write_buffer_size(64 << 20);
        }
        ColumnFamilyDescriptor::new(*name, o)
    });
    Ok(Arc::new(DB::open_cf_descriptors(&opts, path, cfs)?))
}

/// The handle of a column family every open database has.
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name).expect("column family is created when the database opens")
}
