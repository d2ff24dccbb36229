//! The raft log and vote, in rocksdb, with group-committed fsync.
//!
//! `append` writes entries into the WAL without syncing and returns at once (they are
//! readable from then on); a dedicated syncer thread then calls `flush_wal(sync)` once
//! for every batch of appends waiting and only afterwards tells openraft the entries are
//! durable. So concurrent client writes share one fsync, the async workers never block
//! on the disk, and nothing is acknowledged before it is on disk. The vote is written
//! with a synchronous write before `save_vote` returns.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::mpsc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::db::{cf, Db, CF_LOG, CF_RAFT};
use crate::keys;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"last_purged";
const KEY_COMMITTED: &[u8] = b"committed";

/// The newest entries, kept in memory so that replication (which reads every entry it
/// sends) costs neither a rocksdb read nor a decode. Always a suffix of the stored log.
const CACHE_ENTRIES: usize = 4096;

type Cache = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Entry>>>;

#[derive(Clone)]
pub struct LogStore {
    db: Db,
    syncer: mpsc::Sender<LogFlushed<TypeConfig>>,
    cache: Cache,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

impl LogStore {
    pub fn new(db: Db, latencies: std::sync::Arc<crate::metrics::Latencies>) -> LogStore {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let sync_db = db.clone();
        std::thread::Builder::new()
            .name("skiff-wal-sync".into())
            .spawn(move || {
                // Each round syncs every append that arrived before it started.
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let started = std::time::Instant::now();
                    let result = sync_db.flush_wal(true).map_err(|e| std::io::Error::other(e.to_string()));
                    latencies.wal_fsync.observe(started.elapsed());
                    for cb in waiting {
                        cb.log_io_completed(
                            result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())),
                        );
                    }
                }
            })
            .expect("spawning the WAL sync thread");
        LogStore { db, syncer: tx, cache: Default::default() }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let v = self
            .db
            .get_pinned_cf(cf(&self.db, CF_RAFT), key)
            .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        match v {
            None => Ok(None),
            Some(b) => bincode::deserialize(&b).map(Some).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e)),
        }
    }

    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        let mut it = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(io_err(ErrorSubject::Logs, ErrorVerb::Read, e)),
            Some(Ok((_, v))) => {
                let e: Entry = bincode::deserialize(&v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                Ok(Some(e.log_id))
            }
        }
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), rocksdb::Error> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(batch, &wo)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.first_key_value().is_some_and(|(first, _)| *first <= start) {
                return Ok(cache.range(range).map(|(_, e)| e.clone()).collect());
            }
        }
        let mut out = Vec::new();
        let it =
            self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::From(&keys::log_key(start), Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let idx = keys::parse_log_key(&k).unwrap_or(u64::MAX);
            if !range.contains(&idx) {
                break;
            }
            out.push(bincode::deserialize(&v).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        b.put_cf(cf(&self.db, CF_RAFT), KEY_VOTE, bincode::serialize(vote).expect("a vote serializes"));
        self.write(b, true).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        b.put_cf(cf(&self.db, CF_RAFT), KEY_COMMITTED, bincode::serialize(&committed).expect("a log id serializes"));
        self.write(b, false).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut b = WriteBatch::default();
        let log_cf = cf(&self.db, CF_LOG);
        let mut appended = Vec::new();
        for e in entries {
            let bytes =
                bincode::serialize(&e).map_err(|err| io_err(ErrorSubject::Log(e.log_id), ErrorVerb::Write, err))?;
            b.put_cf(log_cf, keys::log_key(e.log_id.index), bytes);
            appended.push(e);
        }
        self.write(b, false).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            // Appends are contiguous: an entry that does not follow the cache starts it anew.
            if let Some(first) = appended.first() {
                if cache.last_key_value().is_some_and(|(last, _)| last + 1 != first.log_id.index) {
                    cache.clear();
                }
            }
            for e in appended {
                cache.insert(e.log_id.index, e);
            }
            while cache.len() > CACHE_ENTRIES {
                cache.pop_first();
            }
        }
        // Durable once the syncer's next flush_wal(sync) returns; see the module docs.
        self.syncer
            .send(callback)
            .map_err(|_| io_err(ErrorSubject::Logs, ErrorVerb::Write, std::io::Error::other("WAL sync thread stopped")))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).split_off(&log_id.index);
        let mut b = WriteBatch::default();
        b.delete_range_cf(cf(&self.db, CF_LOG), keys::log_key(log_id.index), keys::log_key(u64::MAX));
        self.write(b, false).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            *cache = cache.split_off(&(log_id.index + 1));
        }
        // One batch records the purge point and deletes up to it, so no hole can appear.
        let mut b = WriteBatch::default();
        b.put_cf(cf(&self.db, CF_RAFT), KEY_PURGED, bincode::serialize(&log_id).expect("a log id serializes"));
        b.delete_range_cf(cf(&self.db, CF_LOG), keys::log_key(0), keys::log_key(log_id.index + 1));
        self.write(b, false).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}
