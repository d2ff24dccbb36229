//! The raft state machine: applies committed commands to the MVCC store, and builds
//! and installs raft snapshots (files streamed in chunks, never held whole in memory).
//!
//! Every applied entry is one rocksdb write batch holding its data changes, the new
//! revision and the applied log id together, so the state on disk always matches the
//! applied index it records. Those writes are not fsynced on their own: they sit in the
//! WAL after the (fsynced) log entries they came from, and a crash recovers a prefix of
//! the WAL, so whatever is lost is re-applied from the log at start-up.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use etcd_client::proto::{
    PbAlarmMember, PbAlarmResponse, PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbLeaseGrantResponse,
    PbLeaseRevokeResponse, PbPutRequest, PbTxnRequest,
};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError};
use prost::Message;
use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncSeekExt;
use tokio::sync::broadcast;

use crate::auth::{Auth, AuthState, META_AUTH};
use crate::db::{cf, Db, CF_KV, CF_META, CF_REVS};
use crate::errors::{EtcdError, EtcdResult};
use crate::lease::Lessor;
use crate::mvcc::{self, RevisionChanges, Writer};
use crate::types::{
    Command, CommandResponse, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const META_APPLIED: &[u8] = b"applied";
const META_MEMBERSHIP: &[u8] = b"membership";
const META_MEMBER_PREFIX: &[u8] = b"member/";
const SNAP_MAGIC: &[u8] = b"SKIFF-SNAPSHOT-1\n";
const INSTALL_MARKER: &str = "INSTALLING";

/// What watchers are told after each apply.
#[derive(Debug)]
pub enum HubMsg {
    Changes(RevisionChanges),
    /// The store was replaced by a snapshot: re-read from storage.
    Reset,
}

/// A member's name and client URLs as it published them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// State shared by the state machine and the request handlers that read it.
pub struct Shared {
    pub db: Db,
    pub hub: broadcast::Sender<Arc<HubMsg>>,
    /// The revision of the last applied change (1 for an empty store).
    pub current_rev: AtomicI64,
    pub snap_dir: PathBuf,
    /// Lease deadlines (acted on by the leader only; see `lease`).
    pub lessor: Lessor,
    /// A NOSPACE alarm is raised somewhere in the cluster.
    pub nospace: AtomicBool,
    /// Watchers open on this member, and leader changes it saw (for `metrics`).
    pub watchers: AtomicI64,
    pub leader_changes: std::sync::atomic::AtomicU64,
    /// Disk, apply and peer latencies (for `metrics`).
    pub latencies: Arc<crate::metrics::Latencies>,
    /// Users, roles and the auth switch, as applied (see `auth`).
    pub auth: Auth,
    /// Requests applied since this process started, a batched entry counting each of its
    /// writes: what `--snapshot-count` counts, as etcd counts committed requests.
    pub applied_requests: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn new(db: Db, snap_dir: PathBuf) -> EtcdResult<Arc<Shared>> {
        let (hub, _) = broadcast::channel(4096);
        let view = mvcc::View::new(&db);
        let rev = view.current_rev()?;
        let lessor = Lessor::default();
        lessor.reload(view.leases()?);
        let nospace = AtomicBool::new(view.alarms()?.iter().any(|(_, a)| *a == mvcc::ALARM_NOSPACE));
        drop(view);
        let auth = Auth::new(load_auth(&db)?);
        Ok(Arc::new(Shared {
            db,
            hub,
            current_rev: AtomicI64::new(rev),
            snap_dir,
            lessor,
            nospace,
            watchers: AtomicI64::new(0),
            leader_changes: Default::default(),
            latencies: Default::default(),
            auth,
            applied_requests: Default::default(),
        }))
    }

    /// Re-reads what a snapshot install replaced: the revision, leases, alarms and auth.
    fn reload(&self) -> EtcdResult<i64> {
        let view = mvcc::View::new(&self.db);
        let rev = view.current_rev()?;
        self.current_rev.store(rev, Ordering::SeqCst);
        self.lessor.reload(view.leases()?);
        let alarms = view.alarms()?;
        self.nospace.store(alarms.iter().any(|(_, a)| *a == mvcc::ALARM_NOSPACE), Ordering::SeqCst);
        drop(view);
        self.auth.replace(load_auth(&self.db)?);
        Ok(rev)
    }

    pub fn member_attrs(&self) -> Vec<(u64, MemberAttrs)> {
        let it = self
            .db
            .iterator_cf(cf(&self.db, CF_META), IteratorMode::From(META_MEMBER_PREFIX, rocksdb::Direction::Forward));
        let mut out = Vec::new();
        for (k, v) in it.flatten() {
            let Some(id) = k.strip_prefix(META_MEMBER_PREFIX) else {
                break;
            };
            let (Ok(id), Ok(attrs)) = (id.try_into().map(u64::from_be_bytes), serde_json::from_slice(&v)) else {
                continue;
            };
            out.push((id, attrs));
        }
        out
    }
}

pub struct StateMachine {
    shared: Arc<Shared>,
}

fn sm_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, openraft::AnyError::error(e.to_string())).into()
}

fn snap_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, openraft::AnyError::error(e.to_string())).into()
}

impl StateMachine {
    /// Opens the state machine, finishing a snapshot install a crash interrupted.
    pub fn open(shared: Arc<Shared>) -> Result<StateMachine, StorageError> {
        std::fs::create_dir_all(&shared.snap_dir).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let marker = shared.snap_dir.join(INSTALL_MARKER);
        if let Ok(name) = std::fs::read_to_string(&marker) {
            tracing::warn!("finishing the snapshot install a crash interrupted ({name})");
            let path = shared.snap_dir.join(name.trim());
            let meta = read_meta(&path).map_err(|e| snap_err(ErrorVerb::Read, e))?;
            load_snapshot(&shared.db, &path, &meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            std::fs::remove_file(&marker).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            shared.reload().map_err(|e| sm_err(ErrorVerb::Read, e))?;
        }
        Ok(StateMachine { shared })
    }

    fn meta_get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.shared.db.get_pinned_cf(cf(&self.shared.db, CF_META), key).map_err(|e| sm_err(ErrorVerb::Read, e))? {
            None => Ok(None),
            Some(b) => bincode::deserialize(&b).map(Some).map_err(|e| sm_err(ErrorVerb::Read, e)),
        }
    }

    /// Runs one command in `w` (a group's commands share one writer, so the group is one
    /// atomic write). On error nothing of the command is kept.
    fn execute(&self, w: &mut Writer, cmd: Command, effects: &mut Vec<Effect>) -> CommandResponse {
        let cmd = match cmd {
            Command::Guarded { auth_rev, cmd } => {
                let auth = self.shared.auth.read();
                if auth.enabled && auth_rev != Some(auth.revision) {
                    return CommandResponse::Error(crate::auth::old_revision());
                }
                *cmd
            }
            cmd => cmd,
        };
        let mut effect = None;
        let result = (|| -> EtcdResult<Vec<u8>> {
            Ok(match cmd {
                Command::Put(b) => w.put(&decode::<PbPutRequest>(&b)?)?.encode_to_vec(),
                Command::DeleteRange(b) => w.delete_range(&decode::<PbDeleteRequest>(&b)?)?.encode_to_vec(),
                Command::Txn(b) => w.txn(&decode::<PbTxnRequest>(&b)?)?.encode_to_vec(),
                Command::Compact(b) => {
                    w.compact(&decode::<PbCompactionRequest>(&b)?)?;
                    PbCompactionResponse { header: Some(mvcc::header(w.base_rev())) }.encode_to_vec()
                }
                Command::LeaseGrant { id, ttl } => {
                    w.lease_grant(id, ttl)?;
                    effect = Some(Effect::Granted(id, ttl));
                    PbLeaseGrantResponse { header: Some(mvcc::header(w.base_rev())), id, ttl, error: String::new() }
                        .encode_to_vec()
                }
                Command::LeaseRevoke { id } => {
                    w.lease_revoke(id)?;
                    effect = Some(Effect::Revoked(id));
                    PbLeaseRevokeResponse { header: Some(mvcc::header(w.response_rev())) }.encode_to_vec()
                }
                Command::Alarm { activate, member_id, alarm } => {
                    let changed = w.alarm(activate, member_id, alarm)?;
                    effect = Some(Effect::Alarms);
                    let alarms = if changed { vec![PbAlarmMember { member_id, alarm }] } else { vec![] };
                    PbAlarmResponse { header: Some(mvcc::header(w.base_rev())), alarms }.encode_to_vec()
                }
                Command::Publish { member_id, name, client_urls } => {
                    let mut key = META_MEMBER_PREFIX.to_vec();
                    key.extend_from_slice(&member_id.to_be_bytes());
                    let attrs = serde_json::to_vec(&MemberAttrs { name, client_urls }).map_err(EtcdError::internal)?;
                    w.put_meta(key, attrs);
                    Vec::new()
                }
                Command::Auth(op) => {
                    let mut auth = self.shared.auth.read().clone();
                    auth.apply(&op)?;
                    w.put_meta(META_AUTH.to_vec(), bincode::serialize(&auth).map_err(EtcdError::internal)?);
                    // Published at once: a later command of this entry is checked against
                    // it. The entry is committed, so a crash before the write re-applies it.
                    self.shared.auth.replace(auth);
                    mvcc::header(w.base_rev()).encode_to_vec()
                }
                Command::Batch(_) => return Err(EtcdError::internal("nested command batch")),
                Command::Guarded { .. } => return Err(EtcdError::internal("nested guarded command")),
            })
        })();
        w.end_command(result.is_ok());
        match result {
            Ok(bytes) => {
                effects.extend(effect);
                CommandResponse::Encoded(bytes)
            }
            Err(e) => CommandResponse::Error(e),
        }
    }
}

/// What applying a command changes besides the store, done once the write is durable.
enum Effect {
    Granted(i64, i64),
    Revoked(i64),
    Alarms,
}

/// The auth record in `db` (the default, auth off and nobody, when there is none).
fn load_auth(db: &Db) -> EtcdResult<AuthState> {
    match db.get_pinned_cf(cf(db, CF_META), META_AUTH).map_err(EtcdError::internal)? {
        None => Ok(AuthState::default()),
        Some(b) => bincode::deserialize(&b).map_err(EtcdError::internal),
    }
}

fn decode<M: Message + Default>(b: &[u8]) -> EtcdResult<M> {
    M::decode(b).map_err(EtcdError::corrupt)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.meta_get::<LogId>(META_APPLIED)?;
        let membership = self.meta_get::<StoredMembership>(META_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let db = self.shared.db.clone();
        let mut responses = Vec::new();
        for entry in entries {
            let started = std::time::Instant::now();
            let log_id = entry.log_id;
            let capped = self.shared.nospace.load(Ordering::SeqCst);
            let mut w = Writer::new(&db, WriteBatch::default()).map_err(|e| sm_err(ErrorVerb::Read, e))?.capped(capped);
            let mut effects = Vec::new();
            let requests = match &entry.payload {
                EntryPayload::Normal(Command::Batch(cmds)) => cmds.len().max(1) as u64,
                _ => 1,
            };
            self.shared.applied_requests.fetch_add(requests, Ordering::Relaxed);
            let resp = match entry.payload {
                EntryPayload::Blank => CommandResponse::Empty,
                EntryPayload::Membership(m) => {
                    let stored = StoredMembership::new(Some(log_id), m);
                    let bytes = bincode::serialize(&stored).map_err(|e| sm_err(ErrorVerb::Write, e))?;
                    w.put_meta(META_MEMBERSHIP.to_vec(), bytes);
                    CommandResponse::Empty
                }
                // A group of client writes: one entry, one atomic write, one revision each.
                EntryPayload::Normal(Command::Batch(cmds)) => {
                    CommandResponse::Batch(cmds.into_iter().map(|c| self.execute(&mut w, c, &mut effects)).collect())
                }
                EntryPayload::Normal(cmd) => self.execute(&mut w, cmd, &mut effects),
            };
            let (mut batch, revisions) = w.finish();
            batch.put_cf(
                cf(&db, CF_META),
                META_APPLIED,
                bincode::serialize(&log_id).map_err(|e| sm_err(ErrorVerb::Write, e))?,
            );
            let commit = std::time::Instant::now();
            db.write(batch).map_err(|e| sm_err(ErrorVerb::Write, e))?;
            self.shared.latencies.backend_commit.observe(commit.elapsed());
            for effect in effects {
                match effect {
                    Effect::Granted(id, ttl) => self.shared.lessor.granted(id, ttl),
                    Effect::Revoked(id) => self.shared.lessor.revoked(id),
                    Effect::Alarms => {
                        let alarms = mvcc::View::new(&db).alarms().map_err(|e| sm_err(ErrorVerb::Read, e))?;
                        let nospace = alarms.iter().any(|(_, a)| *a == mvcc::ALARM_NOSPACE);
                        self.shared.nospace.store(nospace, Ordering::SeqCst);
                    }
                }
            }
            for changes in revisions {
                self.shared.current_rev.store(changes.rev, Ordering::SeqCst);
                let _ = self.shared.hub.send(Arc::new(HubMsg::Changes(changes)));
            }
            self.shared.latencies.apply.observe(started.elapsed());
            responses.push(resp);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder { shared: self.shared.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.shared.snap_dir.join("incoming.tmp");
        let f = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        Ok(Box::new(f))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        // Keep the received file as the current snapshot, then load it.
        let final_path = self.shared.snap_dir.join(format!("{}.snap", meta.snapshot_id));
        let tmp = final_path.with_extension("snap.tmp");
        {
            snapshot.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
            let mut out = tokio::fs::File::create(&tmp).await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
            tokio::io::copy(&mut snapshot, &mut out).await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
            out.sync_all().await.map_err(|e| snap_err(ErrorVerb::Write, e))?;
        }
        std::fs::rename(&tmp, &final_path).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        write_meta(&final_path, meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let shared = self.shared.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let marker = shared.snap_dir.join(INSTALL_MARKER);
            let name = final_path.file_name().unwrap().to_string_lossy().to_string();
            write_synced(&marker, name.as_bytes()).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            load_snapshot(&shared.db, &final_path, &meta).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            std::fs::remove_file(&marker).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            remove_other_snapshots(&shared.snap_dir, &final_path);
            let rev = shared.reload().map_err(|e| sm_err(ErrorVerb::Read, e))?;
            let _ = shared.hub.send(Arc::new(HubMsg::Reset));
            tracing::info!("installed snapshot {} (revision {rev})", meta.snapshot_id);
            Ok(())
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(path) = latest_snapshot(&self.shared.snap_dir) else {
            return Ok(None);
        };
        let meta = read_meta(&path).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        let f = tokio::fs::File::open(&path).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(f) }))
    }
}

pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let shared = self.shared.clone();
        let path = tokio::task::spawn_blocking(move || build_snapshot_file(&shared))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let meta = read_meta(&path).map_err(|e| snap_err(ErrorVerb::Read, e))?;
        remove_other_snapshots(&self.shared.snap_dir, &path);
        let f = tokio::fs::File::open(&path).await.map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(Snapshot { meta, snapshot: Box::new(f) })
    }
}

/// Writes every state-machine column family, as one rocksdb snapshot sees them, to a
/// file; its meta (applied log id, membership) comes from the same rocksdb snapshot.
fn build_snapshot_file(shared: &Shared) -> std::io::Result<PathBuf> {
    let db = &shared.db;
    let snap = db.snapshot();
    let get = |key: &[u8]| -> std::io::Result<Option<Vec<u8>>> {
        snap.get_cf(cf(db, CF_META), key).map_err(std::io::Error::other)
    };
    let applied: Option<LogId> =
        get(META_APPLIED)?.map(|b| bincode::deserialize(&b)).transpose().map_err(std::io::Error::other)?;
    let membership: StoredMembership = get(META_MEMBERSHIP)?
        .map(|b| bincode::deserialize(&b))
        .transpose()
        .map_err(std::io::Error::other)?
        .unwrap_or_default();
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
    let id = match &applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, stamp),
        None => format!("0-0-{stamp}"),
    };
    let meta = SnapshotMeta { last_log_id: applied, last_membership: membership, snapshot_id: id.clone() };
    let path = shared.snap_dir.join(format!("{id}.snap"));
    let tmp = path.with_extension("snap.tmp");
    {
        let mut w = BufWriter::with_capacity(1 << 20, SyncedAsWritten::new(std::fs::File::create(&tmp)?));
        w.write_all(SNAP_MAGIC)?;
        for (tag, name) in [(1u8, CF_KV), (2, CF_REVS), (3, CF_META)] {
            for item in snap.iterator_cf(cf(db, name), IteratorMode::Start) {
                let (k, v) = item.map_err(std::io::Error::other)?;
                w.write_all(&[tag])?;
                w.write_all(&(k.len() as u32).to_be_bytes())?;
                w.write_all(&k)?;
                w.write_all(&(v.len() as u32).to_be_bytes())?;
                w.write_all(&v)?;
            }
        }
        w.write_all(&[0xFF])?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    write_meta(&path, &meta)?;
    Ok(path)
}

/// A file written in bulk beside the raft log, synced every few megabytes as it is
/// written. One sync of a whole snapshot (tens of megabytes) at its end queues the log's
/// group fsync behind it for hundreds of milliseconds, and the members of a cluster
/// snapshot at about the same time; small syncs along the way keep each wait short.
struct SyncedAsWritten {
    file: std::fs::File,
    unsynced: usize,
}

impl SyncedAsWritten {
    const EVERY: usize = 4 << 20;

    fn new(file: std::fs::File) -> SyncedAsWritten {
        SyncedAsWritten { file, unsynced: 0 }
    }
}

impl Write for SyncedAsWritten {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n;
        if self.unsynced >= Self::EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Replaces the state-machine column families with a snapshot file's contents. Safe to
/// repeat after a crash (the install marker makes start-up repeat it).
fn load_snapshot(db: &Db, path: &Path, meta: &SnapshotMeta) -> std::io::Result<()> {
    for name in [CF_KV, CF_REVS, CF_META] {
        clear_cf(db, name)?;
    }
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let mut magic = vec![0u8; SNAP_MAGIC.len()];
    r.read_exact(&mut magic)?;
    if magic != SNAP_MAGIC {
        return Err(std::io::Error::other(format!("{} is not a Skiff snapshot", path.display())));
    }
    let mut batch = WriteBatch::default();
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)?;
        let name = match tag[0] {
            1 => CF_KV,
            2 => CF_REVS,
            3 => CF_META,
            0xFF => break,
            t => return Err(std::io::Error::other(format!("bad record tag {t} in snapshot"))),
        };
        let k = read_chunk(&mut r)?;
        let v = read_chunk(&mut r)?;
        batch.put_cf(cf(db, name), k, v);
        if batch.size_in_bytes() > 4 << 20 {
            db.write(std::mem::take(&mut batch)).map_err(std::io::Error::other)?;
        }
    }
    let enc = |e: bincode::Error| std::io::Error::other(e);
    if let Some(l) = &meta.last_log_id {
        batch.put_cf(cf(db, CF_META), META_APPLIED, bincode::serialize(l).map_err(enc)?);
    }
    batch.put_cf(cf(db, CF_META), META_MEMBERSHIP, bincode::serialize(&meta.last_membership).map_err(enc)?);
    db.write(batch).map_err(std::io::Error::other)?;
    db.flush_wal(true).map_err(std::io::Error::other)
}

fn read_chunk(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn clear_cf(db: &Db, name: &str) -> std::io::Result<()> {
    let handle = cf(db, name);
    let first = db.iterator_cf(handle, IteratorMode::Start).next().transpose().map_err(std::io::Error::other)?;
    let last = db.iterator_cf(handle, IteratorMode::End).next().transpose().map_err(std::io::Error::other)?;
    if let (Some((first, _)), Some((last, _))) = (first, last) {
        let mut end = last.to_vec();
        end.push(0);
        db.delete_range_cf(handle, &first[..], &end[..]).map_err(std::io::Error::other)?;
    }
    Ok(())
}

fn meta_path(snap: &Path) -> PathBuf {
    snap.with_extension("meta")
}

fn write_meta(snap: &Path, meta: &SnapshotMeta) -> std::io::Result<()> {
    write_synced(&meta_path(snap), &bincode::serialize(meta).map_err(std::io::Error::other)?)
}

fn read_meta(snap: &Path) -> std::io::Result<SnapshotMeta> {
    bincode::deserialize(&std::fs::read(meta_path(snap))?).map_err(std::io::Error::other)
}

fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("writing");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The newest complete snapshot in `dir` (one with its meta file written).
fn latest_snapshot(dir: &Path) -> Option<PathBuf> {
    let mut snaps: Vec<(u128, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap") && meta_path(p).exists())
        .filter_map(|p| {
            let stamp = p.file_stem()?.to_str()?.rsplit('-').next()?.parse().ok()?;
            Some((stamp, p))
        })
        .collect();
    snaps.sort();
    snaps.pop().map(|(_, p)| p)
}

fn remove_other_snapshots(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let is_snap = p.extension().is_some_and(|e| e == "snap" || e == "meta");
        if is_snap && p.with_extension("snap") != keep {
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{self, AuthOp};
    use etcd_client::proto::PbRangeRequest;

    /// A write checked against an auth state that has changed since (or checked while
    /// auth was off, and applied after it came on) is refused and leaves nothing behind.
    #[test]
    fn writes_checked_at_an_older_auth_revision_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let db = crate::db::open(&tmp.path().join("db")).unwrap();
        let shared = Shared::new(db.clone(), tmp.path().join("snap")).unwrap();
        let sm = StateMachine::open(shared.clone()).unwrap();
        let run = |cmd: Command| {
            let mut w = Writer::new(&db, WriteBatch::default()).unwrap();
            let r = sm.execute(&mut w, cmd, &mut Vec::new());
            db.write(w.finish().0).unwrap();
            r
        };
        let put = |v: &str| {
            let req = PbPutRequest { key: b"k".to_vec(), value: v.into(), ..Default::default() };
            Box::new(Command::Put(req.encode_to_vec()))
        };
        assert!(matches!(run(Command::Guarded { auth_rev: None, cmd: put("open") }), CommandResponse::Encoded(_)));
        for op in [
            AuthOp::UserAdd { name: "root".into(), password: None },
            AuthOp::UserGrantRole { user: "root".into(), role: "root".into() },
            AuthOp::Enable { token_key: vec![1; 32] },
        ] {
            assert!(matches!(run(Command::Auth(op)), CommandResponse::Encoded(_)));
        }
        let rev = shared.auth.read().revision;
        let refused = CommandResponse::Error(auth::old_revision());
        assert_eq!(run(Command::Guarded { auth_rev: None, cmd: put("while off") }), refused);
        assert_eq!(run(Command::Guarded { auth_rev: Some(rev - 1), cmd: put("stale") }), refused);
        assert!(matches!(
            run(Command::Guarded { auth_rev: Some(rev), cmd: put("current") }),
            CommandResponse::Encoded(_)
        ));
        let all = mvcc::View::new(&db).range(&PbRangeRequest { key: b"k".to_vec(), ..Default::default() }).unwrap();
        assert_eq!(all.kvs[0].value, b"current");
        assert_eq!(all.kvs[0].version, 2, "the refused writes made no versions");
        // The auth record is durable: a member opened on this database has it.
        drop(sm);
        let reopened = Shared::new(db.clone(), tmp.path().join("snap")).unwrap();
        assert_eq!(reopened.auth.read().revision, rev);
        assert!(reopened.auth.read().enabled);
    }
}
