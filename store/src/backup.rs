//! Backups: the file `Maintenance.Snapshot` streams (and `etcdctl snapshot save` /
//! `skiff snapshot save` write), and restoring one into the data dirs of a new cluster.
//!
//! Format: `SKIFF-BACKUP-1\n`, then records `tag u8 | key len u32 | key | value len u32 |
//! value` (tag 1 = kv version, 2 = revision log, 3 = state-machine metadata), then tag
//! 0xFF, zero padding to a multiple of 512 bytes, and the 32-byte sha256 of everything
//! before it — the framing `etcdctl snapshot save` checks. A backup holds the data,
//! history, leases and users and roles; never the membership, which a restore replaces.

use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rocksdb::{IteratorMode, WriteBatch};
use sha2::{Digest, Sha256};

use crate::config::{self, MemberConfig};
use crate::db::{self, cf, Db, CF_KV, CF_META, CF_REVS};
use crate::keys;
use crate::member::{write_identity, Identity};
use crate::mvcc::{self, View, Writer};

const MAGIC: &[u8] = b"SKIFF-BACKUP-1\n";
const TAG_KV: u8 = 1;
const TAG_REVS: u8 = 2;
const TAG_META: u8 = 3;
const TAG_END: u8 = 0xFF;

/// Metadata keys a backup carries: revisions, leases and users/roles (as etcd's does),
/// not membership or raft state.
fn meta_key_in_backup(k: &[u8]) -> bool {
    k == mvcc::META_REV
        || k == mvcc::META_COMPACT
        || k == crate::auth::META_AUTH
        || k.starts_with(b"lease/")
        || k.starts_with(b"lkey/")
}

/// The auth record without its token key: whoever holds a backup could otherwise sign
/// tokens for any user of the live cluster. A restored cluster makes a new key at its
/// first login.
fn without_token_key(record: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut auth: crate::auth::AuthState = bincode::deserialize(record).map_err(std::io::Error::other)?;
    auth.token_key.clear();
    bincode::serialize(&auth).map_err(std::io::Error::other)
}

/// Writes a consistent backup of `db` (one rocksdb snapshot) to `path`; returns its size.
pub fn write_backup(db: &Db, path: &Path) -> std::io::Result<u64> {
    let snap = db.snapshot();
    let file = std::fs::File::create(path)?;
    let mut w = HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hash: Sha256::new(), len: 0 };
    w.write_all(MAGIC)?;
    for (tag, name) in [(TAG_KV, CF_KV), (TAG_REVS, CF_REVS), (TAG_META, CF_META)] {
        for item in snap.iterator_cf(cf(db, name), IteratorMode::Start) {
            let (k, v) = item.map_err(std::io::Error::other)?;
            if tag == TAG_META && !meta_key_in_backup(&k) {
                continue;
            }
            let stripped;
            let v: &[u8] = if tag == TAG_META && *k == *crate::auth::META_AUTH {
                stripped = without_token_key(&v)?;
                &stripped
            } else {
                &v
            };
            w.write_all(&[tag])?;
            w.write_all(&(k.len() as u32).to_be_bytes())?;
            w.write_all(&k)?;
            w.write_all(&(v.len() as u32).to_be_bytes())?;
            w.write_all(v)?;
        }
    }
    w.write_all(&[TAG_END])?;
    let pad = (512 - (w.len % 512)) % 512;
    w.write_all(&vec![0u8; pad as usize])?;
    let digest = w.hash.finalize();
    let mut inner = w.inner;
    inner.write_all(&digest)?;
    let f = inner.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    Ok(w.len + 32)
}

struct HashingWriter<W: Write> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a backup's framing and hash. Reads the file once, in chunks.
pub fn verify(path: &Path) -> Result<u64, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    if size < 32 + 512 || size % 512 != 32 {
        return Err(format!(
            "{} is not a snapshot: {size} bytes is not a multiple of 512 plus a 32-byte sha256 (truncated?)",
            path.display()
        ));
    }
    let mut hash = Sha256::new();
    let mut left = size - 32;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n]).map_err(|e| e.to_string())?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    let mut want = [0u8; 32];
    f.read_exact(&mut want).map_err(|e| e.to_string())?;
    let got = hash.finalize();
    if got.as_slice() != want {
        return Err(format!(
            "snapshot {} is corrupt: expected sha256 {}, got {}",
            path.display(),
            hex(&want),
            hex(&got)
        ));
    }
    let mut magic = vec![0u8; MAGIC.len()];
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    f.read_exact(&mut magic).map_err(|e| e.to_string())?;
    if magic != MAGIC {
        return Err(format!(
            "{} is not a Skiff snapshot (an etcd bbolt file cannot be restored into Skiff)",
            path.display()
        ));
    }
    Ok(size)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Calls `f` for every record of a verified backup.
fn for_each_record(path: &Path, mut f: impl FnMut(u8, Vec<u8>, Vec<u8>) -> Result<(), String>) -> Result<(), String> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path).map_err(|e| e.to_string())?);
    let mut magic = vec![0u8; MAGIC.len()];
    r.read_exact(&mut magic).map_err(|e| e.to_string())?;
    let chunk = |r: &mut BufReader<std::fs::File>| -> Result<Vec<u8>, String> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    };
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).map_err(|e| e.to_string())?;
        match tag[0] {
            TAG_END => return Ok(()),
            t @ (TAG_KV | TAG_REVS | TAG_META) => {
                let k = chunk(&mut r)?;
                let v = chunk(&mut r)?;
                f(t, k, v)?;
            }
            t => return Err(format!("bad record tag {t}")),
        }
    }
}

/// What `snapshot status` prints.
#[derive(Debug, serde::Serialize)]
pub struct BackupStatus {
    /// crc32 of the file's data part (as etcd prints a 32-bit hash).
    pub hash: u32,
    pub revision: i64,
    /// Keys that exist at `revision`.
    #[serde(rename = "totalKey")]
    pub total_key: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

pub fn status(path: &Path) -> Result<BackupStatus, String> {
    let size = verify(path)?;
    let mut revision = 1;
    let mut live: u64 = 0;
    let mut last_key: Option<Vec<u8>> = None;
    let mut crc = crc32fast::Hasher::new();
    for_each_record(path, |tag, k, v| {
        crc.update(&k);
        crc.update(&v);
        match tag {
            // Versions come newest first per key: the first one decides whether it lives.
            TAG_KV => {
                let (esc, _) = keys::split_version_key(&k).ok_or("bad key record")?;
                if last_key.as_deref() != Some(esc) {
                    last_key = Some(esc.to_vec());
                    if v.first().is_some_and(|flags| flags & 1 == 0) {
                        live += 1;
                    }
                }
            }
            TAG_META if k == mvcc::META_REV => {
                revision = i64::from_be_bytes(v.as_slice().try_into().map_err(|_| "bad revision record")?);
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(BackupStatus { hash: crc.finalize(), revision, total_key: live, total_size: size })
}

/// `snapshot restore` options, as etcdctl names them.
pub struct RestoreOptions {
    pub data_dir: PathBuf,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: Vec<String>,
    /// Added to the snapshot's revision, so watchers never see revisions go backwards.
    pub bump_revision: i64,
    /// Marks the (bumped) revision compacted, so watchers from before the restore get
    /// "compacted" and re-list instead of resuming in a different history.
    pub mark_compacted: bool,
}

/// Builds the data dir of one member of a new cluster holding the backup's data.
/// Verifies the backup first and writes nothing if it is damaged or the dir is in use.
pub fn restore(path: &Path, opts: &RestoreOptions, progress: &mut dyn FnMut(u64)) -> Result<Identity, String> {
    verify(path)?;
    if opts.bump_revision < 0 {
        return Err("--bump-revision must not be negative".into());
    }
    let mut cfg = MemberConfig::local(&opts.name, opts.data_dir.clone(), 0, 0);
    cfg.initial_cluster = opts.initial_cluster.clone();
    cfg.initial_cluster_token = opts.initial_cluster_token.clone();
    cfg.initial_advertise_peer_urls = opts.initial_advertise_peer_urls.clone();
    // Only the membership is checked: the member is started later with its own listen
    // URLs and certificates (https:// peer URLs need none to restore).
    cfg.validate()?;
    let members = cfg.initial_members()?;
    if opts.data_dir.exists() && std::fs::read_dir(&opts.data_dir).map_err(|e| e.to_string())?.next().is_some() {
        return Err(format!("data dir {} already exists and is not empty", opts.data_dir.display()));
    }
    let member_dir = opts.data_dir.join("member");
    std::fs::create_dir_all(&member_dir).map_err(|e| format!("cannot create {}: {e}", member_dir.display()))?;
    let result = (|| {
        let db = db::open(&member_dir.join("db")).map_err(|e| e.to_string())?;
        let mut batch = WriteBatch::default();
        let mut n = 0u64;
        for_each_record(path, |tag, k, v| {
            let name = match tag {
                TAG_KV => CF_KV,
                TAG_REVS => CF_REVS,
                _ => CF_META,
            };
            batch.put_cf(cf(&db, name), k, v);
            n += 1;
            if batch.size_in_bytes() > 4 << 20 {
                db.write(std::mem::take(&mut batch)).map_err(|e| e.to_string())?;
                progress(n);
            }
            Ok(())
        })?;
        db.write(batch).map_err(|e| e.to_string())?;
        progress(n);
        let rev = View::new(&db).current_rev().map_err(|e| e.to_string())?;
        let mut batch = WriteBatch::default();
        if opts.mark_compacted && rev > View::new(&db).compact_rev().map_err(|e| e.to_string())? {
            // Drop the history the marker makes unreachable.
            let mut w = Writer::new(&db, WriteBatch::default()).map_err(|e| e.to_string())?;
            w.compact(&etcd_client::proto::PbCompactionRequest { revision: rev, physical: true })
                .map_err(|e| e.to_string())?;
            db.write(w.finish().0).map_err(|e| e.to_string())?;
        }
        let new_rev = rev + opts.bump_revision;
        batch.put_cf(cf(&db, CF_META), mvcc::META_REV, new_rev.to_be_bytes());
        if opts.mark_compacted {
            batch.put_cf(cf(&db, CF_META), mvcc::META_COMPACT, new_rev.to_be_bytes());
        }
        db.write(batch).map_err(|e| e.to_string())?;
        db.flush_wal(true).map_err(|e| e.to_string())?;
        let ids: Vec<u64> =
            members.iter().map(|(_, urls)| config::member_id(urls, &opts.initial_cluster_token)).collect();
        let identity = Identity {
            name: opts.name.clone(),
            member_id: config::member_id(&opts.initial_advertise_peer_urls, &opts.initial_cluster_token),
            cluster_id: config::cluster_id(&ids, &opts.initial_cluster_token),
            bootstrapped: false,
            // The ids depend on this restore's token, which the later `skiff store` flags
            // need not repeat: fix the membership now.
            initial_members: Some(crate::member::initial_nodes(&members, &opts.initial_cluster_token)),
        };
        write_identity(&opts.data_dir, &identity).map_err(|e| e.to_string())?;
        Ok(identity)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&opts.data_dir);
    }
    result
}
