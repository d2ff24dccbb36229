//! Multi-version key-value storage with etcd's semantics, on rocksdb.
//!
//! Reads go through a [`View`] (a rocksdb snapshot, so a read sees one revision even
//! while the state machine applies or compacts). Writes go through a [`Writer`], which
//! turns one etcd request (Put, DeleteRange, Txn, Compact) into one rocksdb
//! `WriteBatch` and at most one new revision. Only the state machine creates writers,
//! so revisions are assigned in log order on every member alike.
//!
//! Layout (see `keys`): `kv` holds one rocksdb key per version of a user key, newest
//! first; `revs` lists, per revision, the keys it changed (the watch replay and
//! compaction index); `meta` holds the current and compacted revision.

use std::collections::{BTreeMap, HashSet};

use etcd_client::proto::{
    PbCompactionRequest, PbCompare, PbCompareTarget, PbDeleteRequest, PbDeleteResponse, PbKeyValue, PbPutRequest,
    PbPutResponse, PbRangeRequest, PbRangeResponse, PbResponseHeader, PbResponseOp, PbTargetUnion, PbTxnOpRequest,
    PbTxnOpResponse, PbTxnRequest, PbTxnRequestOp, PbTxnResponse,
};
use rocksdb::{ReadOptions, WriteBatch, DB};

use crate::db::{cf, CF_KV, CF_META, CF_REVS};
use crate::errors::{EtcdError, EtcdResult};
use crate::keys;

pub const META_REV: &[u8] = b"rev";
pub const META_COMPACT: &[u8] = b"compact";
/// `lease/<id>` -> granted TTL in seconds.
const META_LEASE: &[u8] = b"lease/";
/// `lkey/<id><user key>` -> (): the keys attached to a lease.
const META_LEASE_KEY: &[u8] = b"lkey/";

/// `alarm/<member id><alarm type>` -> (): raised alarms (replicated, so they persist).
const META_ALARM: &[u8] = b"alarm/";

/// etcd's AlarmType.NOSPACE.
pub const ALARM_NOSPACE: i32 = 1;

fn alarm_key(member: u64, alarm: i32) -> Vec<u8> {
    let mut k = META_ALARM.to_vec();
    k.extend_from_slice(&member.to_be_bytes());
    k.push(alarm as u8);
    k
}

fn lease_key(id: i64) -> Vec<u8> {
    let mut k = META_LEASE.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn lease_attach_key(id: i64, user: &[u8]) -> Vec<u8> {
    let mut k = META_LEASE_KEY.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(user);
    k
}

/// etcd's limit on operations per txn branch (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

const EVENT_PUT: u8 = 0;
const EVENT_DELETE: u8 = 1;

/// One stored version of a key (the revision is part of the rocksdb key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub tombstone: bool,
    pub create_rev: i64,
    pub version: i64,
    pub lease: i64,
    pub value: Vec<u8>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(25 + self.value.len());
        out.push(self.tombstone as u8);
        out.extend_from_slice(&self.create_rev.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.lease.to_be_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    fn decode(b: &[u8]) -> Option<Record> {
        if b.len() < 25 {
            return None;
        }
        let num = |i: usize| i64::from_be_bytes(b[i..i + 8].try_into().unwrap());
        Some(Record {
            tombstone: b[0] & 1 == 1,
            create_rev: num(1),
            version: num(9),
            lease: num(17),
            value: b[25..].to_vec(),
        })
    }

    /// Whether an encoded record is a tombstone, without decoding it (None: not a record).
    fn is_tombstone(b: &[u8]) -> Option<bool> {
        (b.len() >= 25).then(|| b[0] & 1 == 1)
    }

    fn tombstone() -> Record {
        Record { tombstone: true, create_rev: 0, version: 0, lease: 0, value: Vec::new() }
    }

    /// `to_kv` without copying the value.
    fn into_kv(self, key: &[u8], mod_rev: i64, keys_only: bool) -> PbKeyValue {
        PbKeyValue {
            key: key.to_vec(),
            create_revision: self.create_rev,
            mod_revision: mod_rev,
            version: self.version,
            value: if keys_only { Vec::new() } else { self.value },
            lease: self.lease,
        }
    }

    fn to_kv(&self, key: &[u8], mod_rev: i64, keys_only: bool) -> PbKeyValue {
        PbKeyValue {
            key: key.to_vec(),
            create_revision: self.create_rev,
            mod_revision: mod_rev,
            version: self.version,
            value: if keys_only { Vec::new() } else { self.value.clone() },
            lease: self.lease,
        }
    }
}

/// One change, as watchers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub delete: bool,
    pub kv: PbKeyValue,
    pub prev: Option<PbKeyValue>,
}

/// Every change one revision made, in request order.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionChanges {
    pub rev: i64,
    pub changes: Vec<Change>,
}

/// Which keys a request covers (etcd's key / range_end convention).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRange {
    Single(Vec<u8>),
    /// `[start, end)`; `None` end means "every key >= start" (range_end "\0").
    Span(Vec<u8>, Option<Vec<u8>>),
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        if range_end.is_empty() {
            KeyRange::Single(key.to_vec())
        } else if range_end == [0] {
            KeyRange::Span(key.to_vec(), None)
        } else {
            KeyRange::Span(key.to_vec(), Some(range_end.to_vec()))
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        match self {
            KeyRange::Single(key) => key.as_slice() == k,
            KeyRange::Span(start, end) => k >= start.as_slice() && end.as_deref().is_none_or(|e| k < e),
        }
    }

    /// True when the range can hold no key at all (etcd answers such ranges empty).
    fn is_empty(&self) -> bool {
        matches!(self, KeyRange::Span(s, Some(e)) if e <= s)
    }
}

/// A consistent read view of the MVCC store.
pub struct View<'a> {
    db: &'a DB,
    snap: rocksdb::SnapshotWithThreadMode<'a, DB>,
}

impl<'a> View<'a> {
    pub fn new(db: &'a DB) -> View<'a> {
        View { db, snap: db.snapshot() }
    }

    fn opts(&self) -> ReadOptions {
        let mut o = ReadOptions::default();
        o.set_snapshot(&self.snap);
        o
    }

    fn meta_i64(&self, key: &[u8]) -> EtcdResult<i64> {
        let v = self.db.get_pinned_cf_opt(cf(self.db, CF_META), key, &self.opts()).map_err(EtcdError::internal)?;
        Ok(match v {
            Some(b) if b.len() == 8 => i64::from_be_bytes(b[..].try_into().unwrap()),
            _ => 0,
        })
    }

    /// The current revision; an empty store is at revision 1.
    pub fn current_rev(&self) -> EtcdResult<i64> {
        Ok(self.meta_i64(META_REV)?.max(1))
    }

    /// The revision of the last compaction, 0 when the store was never compacted.
    pub fn compact_rev(&self) -> EtcdResult<i64> {
        self.meta_i64(META_COMPACT)
    }

    /// The newest version of `key` at or below `rev`, tombstones included.
    pub fn version_at(&self, key: &[u8], rev: i64) -> EtcdResult<Option<(i64, Record)>> {
        let esc = keys::escape(key);
        let mut o = self.opts();
        o.set_iterate_upper_bound(keys::after_all_versions(&esc));
        let mut it = self.db.raw_iterator_cf_opt(cf(self.db, CF_KV), o);
        it.seek(keys::version_key(key, rev));
        if !it.valid() {
            return it.status().map(|_| None).map_err(EtcdError::internal);
        }
        let (k, v) = (it.key().unwrap(), it.value().unwrap());
        match keys::split_version_key(k) {
            Some((e, r)) if e == esc.as_slice() => {
                let rec = Record::decode(v).ok_or_else(|| EtcdError::internal("bad record"))?;
                Ok(Some((r, rec)))
            }
            _ => Ok(None),
        }
    }

    /// The live value of `key` at `rev` as etcd shows it, if the key exists then.
    pub fn get(&self, key: &[u8], rev: i64) -> EtcdResult<Option<PbKeyValue>> {
        Ok(match self.version_at(key, rev)? {
            Some((r, rec)) if !rec.tombstone => Some(rec.into_kv(key, r, false)),
            _ => None,
        })
    }

    /// Scans `range` at `rev`: the first `limit` live keys (all when 0) and the count of
    /// every live key in the range.
    pub fn scan(
        &self,
        range: &KeyRange,
        rev: i64,
        limit: usize,
        keys_only: bool,
        count_only: bool,
    ) -> EtcdResult<(Vec<PbKeyValue>, i64)> {
        if range.is_empty() {
            return Ok((Vec::new(), 0));
        }
        if let KeyRange::Single(key) = range {
            return Ok(match self.get(key, rev)? {
                Some(mut kv) if !count_only => {
                    if keys_only {
                        kv.value.clear();
                    }
                    (vec![kv], 1)
                }
                Some(_) => (Vec::new(), 1),
                None => (Vec::new(), 0),
            });
        }
        let KeyRange::Span(start, end) = range else { unreachable!() };
        let mut o = self.opts();
        if let Some(end) = end {
            o.set_iterate_upper_bound(keys::escape(end));
        }
        let mut it = self.db.raw_iterator_cf_opt(cf(self.db, CF_KV), o);
        it.seek(keys::escape(start));
        let mut kvs = Vec::new();
        let mut count = 0i64;
        while it.valid() {
            let k = it.key().unwrap();
            let (esc, r) = keys::split_version_key(k).ok_or_else(|| EtcdError::internal("bad kv key"))?;
            let esc = esc.to_vec();
            if r > rev {
                let mut target = esc.clone();
                target.extend_from_slice(&(!(rev as u64)).to_be_bytes());
                it.seek(target);
                continue;
            }
            let raw = it.value().unwrap();
            if !Record::is_tombstone(raw).ok_or_else(|| EtcdError::internal("bad record"))? {
                count += 1;
                // Past the limit only the count is wanted: the value is not copied.
                if !count_only && (limit == 0 || kvs.len() < limit) {
                    let rec = Record::decode(raw).ok_or_else(|| EtcdError::internal("bad record"))?;
                    let (user, _) = keys::unescape(&esc).ok_or_else(|| EtcdError::internal("bad key"))?;
                    kvs.push(rec.into_kv(&user, r, keys_only));
                }
            }
            // Skip the older versions of this key: usually there are none and `next`
            // already stands on the next key.
            it.next();
            if it.valid() && it.key().unwrap().starts_with(&esc) && it.key().unwrap().len() == esc.len() + 8 {
                it.seek(keys::after_all_versions(&esc));
            }
        }
        it.status().map_err(EtcdError::internal)?;
        Ok((kvs, count))
    }

    /// The granted TTL of a lease, if it exists.
    pub fn lease_ttl(&self, id: i64) -> EtcdResult<Option<i64>> {
        let v = self
            .db
            .get_pinned_cf_opt(cf(self.db, CF_META), lease_key(id), &self.opts())
            .map_err(EtcdError::internal)?;
        Ok(v.and_then(|b| b[..].try_into().ok().map(i64::from_be_bytes)))
    }

    /// Every lease and its granted TTL.
    pub fn leases(&self) -> EtcdResult<Vec<(i64, i64)>> {
        self.prefixed(META_LEASE, |rest, v| {
            Some((i64::from_be_bytes(rest.try_into().ok()?), i64::from_be_bytes(v.try_into().ok()?)))
        })
    }

    /// Raised alarms as (member id, alarm type).
    pub fn alarms(&self) -> EtcdResult<Vec<(u64, i32)>> {
        self.prefixed(META_ALARM, |rest, _| {
            (rest.len() == 9).then(|| (u64::from_be_bytes(rest[..8].try_into().unwrap()), rest[8] as i32))
        })
    }

    /// The keys attached to a lease, in key order.
    pub fn lease_keys(&self, id: i64) -> EtcdResult<Vec<Vec<u8>>> {
        let mut prefix = META_LEASE_KEY.to_vec();
        prefix.extend_from_slice(&id.to_be_bytes());
        self.prefixed(&prefix, |rest, _| Some(rest.to_vec()))
    }

    fn prefixed<T>(&self, prefix: &[u8], f: impl Fn(&[u8], &[u8]) -> Option<T>) -> EtcdResult<Vec<T>> {
        let mut o = self.opts();
        if let Some(end) = keys::prefix_end(prefix) {
            o.set_iterate_upper_bound(end);
        }
        let mut it = self.db.raw_iterator_cf_opt(cf(self.db, CF_META), o);
        it.seek(prefix);
        let mut out = Vec::new();
        while it.valid() {
            if let Some(t) = f(&it.key().unwrap()[prefix.len()..], it.value().unwrap()) {
                out.push(t);
            }
            it.next();
        }
        it.status().map_err(EtcdError::internal)?;
        Ok(out)
    }

    /// Resolves the revision a request reads at, with etcd's errors.
    pub fn resolve_rev(&self, requested: i64) -> EtcdResult<i64> {
        let current = self.current_rev()?;
        if requested <= 0 {
            return Ok(current);
        }
        if requested > current {
            return Err(EtcdError::future_rev());
        }
        if requested < self.compact_rev()? {
            return Err(EtcdError::compacted());
        }
        Ok(requested)
    }

    /// etcd's Range. The header carries only the revision; the server adds the rest.
    pub fn range(&self, req: &PbRangeRequest) -> EtcdResult<PbRangeResponse> {
        check_range(req)?;
        let rev = self.resolve_rev(req.revision)?;
        let current = self.current_rev()?;
        range_with(req, |range, fetch_limit, keys_only| self.scan(range, rev, fetch_limit, keys_only, req.count_only))
            .map(|mut resp| {
                resp.header = Some(header(current));
                resp
            })
    }

    /// The changes of revisions `from..=to` that touch `range`, read back from storage
    /// (the watch catch-up path). Stops early once `max_revs` revisions produced events.
    pub fn changes(&self, from: i64, to: i64, range: &KeyRange, max_revs: usize) -> EtcdResult<Vec<RevisionChanges>> {
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        let mut o = self.opts();
        o.set_iterate_upper_bound(keys::rev_key(to + 1).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(cf(self.db, CF_REVS), o);
        it.seek(keys::rev_key(from));
        while it.valid() && out.len() < max_revs {
            let rev = keys::parse_rev_key(it.key().unwrap()).ok_or_else(|| EtcdError::internal("bad rev key"))?;
            let mut changes = Vec::new();
            for (delete, key) in decode_rev_log(it.value().unwrap())? {
                if !range.contains(&key) {
                    continue;
                }
                changes.push(self.change_at(&key, rev, delete)?);
            }
            if !changes.is_empty() {
                out.push(RevisionChanges { rev, changes });
            }
            it.next();
        }
        it.status().map_err(EtcdError::internal)?;
        Ok(out)
    }

    fn change_at(&self, key: &[u8], rev: i64, delete: bool) -> EtcdResult<Change> {
        let kv = if delete {
            PbKeyValue { key: key.to_vec(), mod_revision: rev, ..Default::default() }
        } else {
            match self.version_at(key, rev)? {
                Some((r, rec)) if r == rev => rec.to_kv(key, rev, false),
                _ => return Err(EtcdError::internal(format!("revision {rev} lost its version of a key"))),
            }
        };
        let prev = self.get(key, rev - 1)?;
        Ok(Change { delete, kv, prev })
    }
}

pub fn header(rev: i64) -> PbResponseHeader {
    PbResponseHeader { revision: rev, ..Default::default() }
}

fn check_range(req: &PbRangeRequest) -> EtcdResult<()> {
    if req.key.is_empty() {
        return Err(EtcdError::empty_key());
    }
    Ok(())
}

/// The part of Range common to plain reads and reads inside a txn: etcd's order of
/// fetching, filtering by revision, sorting and truncating to the limit.
fn range_with(
    req: &PbRangeRequest,
    fetch: impl FnOnce(&KeyRange, usize, bool) -> EtcdResult<(Vec<PbKeyValue>, i64)>,
) -> EtcdResult<PbRangeResponse> {
    const SORT_BY_VALUE: i32 = 4;
    let range = KeyRange::new(&req.key, &req.range_end);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // Sorting or filtering needs every key first; otherwise fetch one more than the
    // limit to learn whether there is more.
    let fetch_limit = if req.sort_order != 0 || filtered || req.limit <= 0 { 0 } else { req.limit as usize + 1 };
    // Values are needed to sort by value; otherwise keys_only skips reading them.
    let sorts_by_value = req.sort_target == SORT_BY_VALUE;
    let (mut kvs, count) = fetch(&range, fetch_limit, req.keys_only && !sorts_by_value)?;
    if filtered {
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
    }
    sort_kvs(&mut kvs, req.sort_order, req.sort_target);
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only && sorts_by_value {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    Ok(PbRangeResponse { header: None, kvs, more, count })
}

/// etcd sorts ascending when a target other than the key is given without an order.
fn sort_kvs(kvs: &mut [PbKeyValue], order: i32, target: i32) {
    const NONE: i32 = 0;
    const DESCEND: i32 = 2;
    const KEY: i32 = 0;
    let order = if order == NONE && target != KEY { 1 } else { order };
    if order == NONE {
        return;
    }
    match target {
        1 => kvs.sort_by_key(|kv| kv.version),
        2 => kvs.sort_by_key(|kv| kv.create_revision),
        3 => kvs.sort_by_key(|kv| kv.mod_revision),
        4 => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        _ => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
    }
    if order == DESCEND {
        kvs.reverse();
    }
}

fn encode_rev_log(entries: &[(bool, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (delete, key) in entries {
        out.push(if *delete { EVENT_DELETE } else { EVENT_PUT });
        out.extend_from_slice(&(key.len() as u32).to_be_bytes());
        out.extend_from_slice(key);
    }
    out
}

fn decode_rev_log(mut b: &[u8]) -> EtcdResult<Vec<(bool, Vec<u8>)>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 5 {
            return Err(EtcdError::internal("truncated revision log entry"));
        }
        let delete = b[0] == EVENT_DELETE;
        let len = u32::from_be_bytes(b[1..5].try_into().unwrap()) as usize;
        if b.len() < 5 + len {
            return Err(EtcdError::internal("truncated revision log entry"));
        }
        out.push((delete, b[5..5 + len].to_vec()));
        b = &b[5 + len..];
    }
    Ok(out)
}

/// Validates a request before it is proposed: etcd rejects these without touching the
/// log, so a bad request costs no revision and no raft round.
pub fn check_put(req: &PbPutRequest) -> EtcdResult<()> {
    if req.key.is_empty() {
        return Err(EtcdError::empty_key());
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(EtcdError::value_provided());
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(EtcdError::lease_provided());
    }
    Ok(())
}

pub fn check_delete(req: &PbDeleteRequest) -> EtcdResult<()> {
    if req.key.is_empty() {
        return Err(EtcdError::empty_key());
    }
    Ok(())
}

pub fn check_txn(req: &PbTxnRequest) -> EtcdResult<()> {
    if req.success.len() > MAX_TXN_OPS || req.failure.len() > MAX_TXN_OPS {
        return Err(EtcdError::too_many_ops());
    }
    for c in &req.compare {
        if c.key.is_empty() {
            return Err(EtcdError::empty_key());
        }
    }
    for op in req.success.iter().chain(&req.failure) {
        match &op.request {
            Some(PbTxnOpRequest::RequestRange(r)) => check_range(r)?,
            Some(PbTxnOpRequest::RequestPut(r)) => check_put(r)?,
            Some(PbTxnOpRequest::RequestDeleteRange(r)) => check_delete(r)?,
            Some(PbTxnOpRequest::RequestTxn(t)) => check_txn(t)?,
            None => {}
        }
    }
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

/// etcd's rule for keys written twice in one txn: within one branch (nested txns
/// included) no key may be put twice, and no put may fall inside a deleted range. The
/// then/else branches of a nested txn exclude each other, so they may share puts.
fn check_intervals(ops: &[PbTxnRequestOp]) -> EtcdResult<(HashSet<Vec<u8>>, Vec<KeyRange>)> {
    let mut dels: Vec<KeyRange> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => Some(KeyRange::new(&d.key, &d.range_end)),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    let hits = |dels: &[KeyRange], k: &[u8]| dels.iter().any(|d| d.contains(k));
    for op in ops {
        let Some(PbTxnOpRequest::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(EtcdError::duplicate_key());
            }
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || hits(&dels, k) {
                return Err(EtcdError::duplicate_key());
            }
        }
        puts.extend(puts_then);
        puts.extend(puts_else);
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(PbTxnOpRequest::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || hits(&dels, &p.key) {
            return Err(EtcdError::duplicate_key());
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

/// True when a txn writes nothing on either branch, so it can be served like a read.
pub fn txn_is_read_only(req: &PbTxnRequest) -> bool {
    req.success.iter().chain(&req.failure).all(|op| match &op.request {
        Some(PbTxnOpRequest::RequestPut(_)) | Some(PbTxnOpRequest::RequestDeleteRange(_)) => false,
        Some(PbTxnOpRequest::RequestTxn(t)) => txn_is_read_only(t),
        _ => true,
    })
}

/// Whether any branch of a txn (nested ones included) puts a key.
pub fn txn_puts(req: &PbTxnRequest) -> bool {
    req.success.iter().chain(&req.failure).any(|op| match &op.request {
        Some(PbTxnOpRequest::RequestPut(_)) => true,
        Some(PbTxnOpRequest::RequestTxn(t)) => txn_puts(t),
        _ => false,
    })
}

/// Whether a txn's ranges all ask for serializable reads (no read barrier needed).
pub fn txn_is_serializable(req: &PbTxnRequest) -> bool {
    req.success.iter().chain(&req.failure).all(|op| match &op.request {
        Some(PbTxnOpRequest::RequestRange(r)) => r.serializable,
        Some(PbTxnOpRequest::RequestTxn(t)) => txn_is_serializable(t),
        _ => true,
    })
}

/// A write staged by the current command, applied to the batch only if it succeeds.
enum Staged {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
}

/// Turns requests into one rocksdb write batch: one or several commands (a raft entry
/// may carry a group of client writes), each making at most one new revision. Every
/// command sees the writes of the commands before it (`overlay`); a failed command
/// leaves no trace (`end_command(false)`). `finish` hands back the batch and what
/// watchers must see, revision by revision.
pub struct Writer<'a> {
    view: View<'a>,
    db: &'a DB,
    batch: WriteBatch,
    /// The revision before the current command.
    base_rev: i64,
    /// Keys changed by this writer's commands so far, and their new state (None = deleted).
    overlay: BTreeMap<Vec<u8>, Option<PbKeyValue>>,
    /// The current command's changes, revision log, staged writes and overlay undo log.
    changes: Vec<Change>,
    rev_log: Vec<(bool, Vec<u8>)>,
    staged: Vec<Staged>,
    undo: Vec<(Vec<u8>, Option<Option<PbKeyValue>>)>,
    /// Finished commands' revisions.
    done: Vec<RevisionChanges>,
    /// A NOSPACE alarm is raised: puts and lease grants are refused.
    capped: bool,
}

impl<'a> Writer<'a> {
    pub fn new(db: &'a DB, batch: WriteBatch) -> EtcdResult<Writer<'a>> {
        let view = View::new(db);
        let base_rev = view.current_rev()?;
        Ok(Writer {
            view,
            db,
            batch,
            base_rev,
            overlay: BTreeMap::new(),
            changes: Vec::new(),
            rev_log: Vec::new(),
            staged: Vec::new(),
            undo: Vec::new(),
            done: Vec::new(),
            capped: false,
        })
    }

    fn put_cf(&mut self, cf: &'static str, k: impl Into<Vec<u8>>, v: impl Into<Vec<u8>>) {
        self.staged.push(Staged::Put(cf, k.into(), v.into()));
    }

    fn delete_cf(&mut self, cf: &'static str, k: impl Into<Vec<u8>>) {
        self.staged.push(Staged::Delete(cf, k.into()));
    }

    fn set_overlay(&mut self, key: Vec<u8>, value: Option<PbKeyValue>) {
        let before = self.overlay.insert(key.clone(), value);
        self.undo.push((key, before));
    }

    /// Stages a state-machine metadata write as part of the current command.
    pub fn put_meta(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.put_cf(CF_META, key, value);
    }

    /// Closes the current command: keeps its writes and its revision if it succeeded,
    /// forgets them if it failed.
    pub fn end_command(&mut self, ok: bool) {
        if ok {
            if !self.rev_log.is_empty() {
                let rev = self.base_rev + 1;
                let log = encode_rev_log(&std::mem::take(&mut self.rev_log));
                self.put_cf(CF_REVS, keys::rev_key(rev).to_vec(), log);
                self.put_cf(CF_META, META_REV.to_vec(), rev.to_be_bytes().to_vec());
                self.done.push(RevisionChanges { rev, changes: std::mem::take(&mut self.changes) });
                self.base_rev = rev;
            }
            for op in std::mem::take(&mut self.staged) {
                match op {
                    Staged::Put(c, k, v) => self.batch.put_cf(cf(self.db, c), k, v),
                    Staged::Delete(c, k) => self.batch.delete_cf(cf(self.db, c), k),
                    Staged::DeleteRange(c, a, b) => self.batch.delete_range_cf(cf(self.db, c), a, b),
                }
            }
        } else {
            for (k, before) in std::mem::take(&mut self.undo).into_iter().rev() {
                match before {
                    Some(v) => self.overlay.insert(k, v),
                    None => self.overlay.remove(&k),
                };
            }
            self.staged.clear();
        }
        self.undo.clear();
        self.rev_log.clear();
        self.changes.clear();
    }

    /// Refuses space-consuming requests while a NOSPACE alarm is raised (etcd's capped
    /// applier: Put, Txn with puts and LeaseGrant fail; deletes and compaction work).
    pub fn capped(mut self, capped: bool) -> Self {
        self.capped = capped;
        self
    }

    fn new_rev(&self) -> i64 {
        self.base_rev + 1
    }

    /// The revision a response reports: the new one once this command changed anything.
    fn visible_rev(&self) -> i64 {
        if self.rev_log.is_empty() {
            self.base_rev
        } else {
            self.base_rev + 1
        }
    }

    /// The live value of `key` as this command sees it (its own writes included).
    fn current(&self, key: &[u8]) -> EtcdResult<Option<PbKeyValue>> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.view.get(key, self.base_rev),
        }
    }

    pub fn put(&mut self, req: &PbPutRequest) -> EtcdResult<PbPutResponse> {
        check_put(req)?;
        if self.capped {
            return Err(EtcdError::no_space());
        }
        let prev = self.current(&req.key)?;
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(EtcdError::key_not_found());
        }
        let lease = if req.ignore_lease { prev.as_ref().map_or(0, |p| p.lease) } else { req.lease };
        if lease != 0 && self.view.lease_ttl(lease)?.is_none() {
            return Err(EtcdError::lease_not_found());
        }
        let rev = self.new_rev();
        let rec = Record {
            tombstone: false,
            create_rev: prev.as_ref().map_or(rev, |p| p.create_revision),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value: if req.ignore_value {
                prev.as_ref().map(|p| p.value.clone()).unwrap_or_default()
            } else {
                req.value.clone()
            },
        };
        self.put_cf(CF_KV, keys::version_key(&req.key, rev), rec.encode());
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.delete_cf(CF_META, lease_attach_key(old_lease, &req.key));
            }
            if lease != 0 {
                self.put_cf(CF_META, lease_attach_key(lease, &req.key), []);
            }
        }
        let kv = rec.to_kv(&req.key, rev, false);
        self.set_overlay(req.key.clone(), Some(kv.clone()));
        self.rev_log.push((false, req.key.clone()));
        self.changes.push(Change { delete: false, kv, prev: prev.clone() });
        Ok(PbPutResponse { header: Some(header(rev)), prev_kv: if req.prev_kv { prev } else { None } })
    }

    pub fn delete_range(&mut self, req: &PbDeleteRequest) -> EtcdResult<PbDeleteResponse> {
        check_delete(req)?;
        let range = KeyRange::new(&req.key, &req.range_end);
        let victims = self.live_in(&range)?;
        let rev = self.new_rev();
        for prev in &victims {
            self.put_cf(CF_KV, keys::version_key(&prev.key, rev), Record::tombstone().encode());
            if prev.lease != 0 {
                self.delete_cf(CF_META, lease_attach_key(prev.lease, &prev.key));
            }
            self.set_overlay(prev.key.clone(), None);
            self.rev_log.push((true, prev.key.clone()));
            self.changes.push(Change {
                delete: true,
                kv: PbKeyValue { key: prev.key.clone(), mod_revision: rev, ..Default::default() },
                prev: Some(prev.clone()),
            });
        }
        Ok(PbDeleteResponse {
            header: Some(header(self.visible_rev())),
            deleted: victims.len() as i64,
            prev_kvs: if req.prev_kv { victims } else { Vec::new() },
        })
    }

    /// Live keys in `range` as this command sees them, in key order.
    fn live_in(&self, range: &KeyRange) -> EtcdResult<Vec<PbKeyValue>> {
        let (stored, _) = self.view.scan(range, self.base_rev, 0, false, false)?;
        if self.overlay.is_empty() {
            return Ok(stored);
        }
        let mut merged: BTreeMap<Vec<u8>, PbKeyValue> = stored.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        for (k, v) in &self.overlay {
            if range.contains(k) {
                match v {
                    Some(kv) => merged.insert(k.clone(), kv.clone()),
                    None => merged.remove(k),
                };
            }
        }
        Ok(merged.into_values().collect())
    }

    fn range(&self, req: &PbRangeRequest) -> EtcdResult<PbRangeResponse> {
        check_range(req)?;
        let rev = if req.revision <= 0 { self.visible_rev() } else { req.revision };
        if rev > self.visible_rev() {
            return Err(EtcdError::future_rev());
        }
        if rev < self.view.compact_rev()? {
            return Err(EtcdError::compacted());
        }
        let mut resp = if rev == self.visible_rev() && !self.overlay.is_empty() {
            range_with(req, |range, _, keys_only| {
                let mut kvs = self.live_in(range)?;
                let count = kvs.len() as i64;
                if req.count_only {
                    kvs.clear();
                }
                if keys_only {
                    kvs.iter_mut().for_each(|kv| kv.value.clear());
                }
                Ok((kvs, count))
            })?
        } else {
            let read_rev = rev.min(self.base_rev);
            range_with(req, |range, limit, keys_only| {
                self.view.scan(range, read_rev, limit, keys_only, req.count_only)
            })?
        };
        resp.header = Some(header(self.visible_rev()));
        Ok(resp)
    }

    fn compare(&self, c: &PbCompare) -> EtcdResult<bool> {
        let range = KeyRange::new(&c.key, &c.range_end);
        // Through the overlay: earlier commands of this writer are part of the state.
        let kvs = match &range {
            KeyRange::Single(k) => self.current(k)?.into_iter().collect(),
            _ => self.live_in(&range)?,
        };
        let target = PbCompareTarget::try_from(c.target).unwrap_or(PbCompareTarget::Version);
        if kvs.is_empty() {
            // A missing key compares as a zero KeyValue, except that no value compare
            // on a missing key ever succeeds.
            if target == PbCompareTarget::Value {
                return Ok(false);
            }
            return Ok(compare_kv(c, target, &PbKeyValue::default()));
        }
        Ok(kvs.iter().all(|kv| compare_kv(c, target, kv)))
    }

    /// Decides the branch of every (nested) txn up front, against the state before the
    /// txn, as etcd does.
    fn txn_path(&self, req: &PbTxnRequest, path: &mut Vec<bool>) -> EtcdResult<()> {
        let mut ok = true;
        for c in &req.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            if let Some(PbTxnOpRequest::RequestTxn(t)) = &op.request {
                self.txn_path(t, path)?;
            }
        }
        Ok(())
    }

    pub fn txn(&mut self, req: &PbTxnRequest) -> EtcdResult<PbTxnResponse> {
        check_txn(req)?;
        let mut path = Vec::new();
        self.txn_path(req, &mut path)?;
        let mut path = path.into_iter();
        self.run_txn(req, &mut path)
    }

    fn run_txn(&mut self, req: &PbTxnRequest, path: &mut impl Iterator<Item = bool>) -> EtcdResult<PbTxnResponse> {
        let succeeded = path.next().unwrap_or(false);
        let ops = if succeeded { &req.success } else { &req.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => Some(PbTxnOpResponse::ResponseRange(self.range(r)?)),
                Some(PbTxnOpRequest::RequestPut(r)) => Some(PbTxnOpResponse::ResponsePut(self.put(r)?)),
                Some(PbTxnOpRequest::RequestDeleteRange(r)) => {
                    Some(PbTxnOpResponse::ResponseDeleteRange(self.delete_range(r)?))
                }
                Some(PbTxnOpRequest::RequestTxn(t)) => Some(PbTxnOpResponse::ResponseTxn(self.run_txn(t, path)?)),
                None => None,
            };
            responses.push(PbResponseOp { response });
        }
        Ok(PbTxnResponse { header: Some(header(self.visible_rev())), succeeded, responses })
    }

    /// Creates a lease. The id was chosen by the proposer; a taken id is an error.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> EtcdResult<()> {
        if self.capped {
            return Err(EtcdError::no_space());
        }
        if self.view.lease_ttl(id)?.is_some() {
            return Err(EtcdError::new(tonic::Code::FailedPrecondition, "etcdserver: lease already exists"));
        }
        self.put_cf(CF_META, lease_key(id), ttl.to_be_bytes());
        Ok(())
    }

    /// Raises or clears an alarm; true when that changed anything.
    pub fn alarm(&mut self, activate: bool, member: u64, alarm: i32) -> EtcdResult<bool> {
        let present = self.view.alarms()?.contains(&(member, alarm));
        match (activate, present) {
            (true, false) => self.put_cf(CF_META, alarm_key(member, alarm), []),
            (false, true) => self.delete_cf(CF_META, alarm_key(member, alarm)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Removes a lease and deletes every key attached to it, all in one revision.
    pub fn lease_revoke(&mut self, id: i64) -> EtcdResult<()> {
        if self.view.lease_ttl(id)?.is_none() {
            return Err(EtcdError::lease_not_found());
        }
        for key in self.view.lease_keys(id)? {
            self.delete_range(&PbDeleteRequest { key, ..Default::default() })?;
        }
        self.delete_cf(CF_META, lease_key(id));
        Ok(())
    }

    /// Removes every version superseded at or before `rev`, and the revision log
    /// below it. The newest version at or below `rev` of each key survives unless it is a
    /// tombstone. Reads and watches from `rev` on stay possible.
    pub fn compact(&mut self, req: &PbCompactionRequest) -> EtcdResult<()> {
        let rev = req.revision;
        let prev_compact = self.view.compact_rev()?;
        if rev <= prev_compact {
            return Err(EtcdError::compacted());
        }
        if rev > self.base_rev {
            return Err(EtcdError::future_rev());
        }
        let kv_cf = cf(self.db, CF_KV);
        let mut touched: Vec<Vec<u8>> = Vec::new();
        {
            let mut o = self.view.opts();
            o.set_iterate_upper_bound(keys::rev_key(rev + 1).to_vec());
            let mut it = self.db.raw_iterator_cf_opt(cf(self.db, CF_REVS), o);
            it.seek(keys::rev_key(prev_compact.max(1)));
            while it.valid() {
                for (_, key) in decode_rev_log(it.value().unwrap())? {
                    touched.push(key);
                }
                it.next();
            }
            it.status().map_err(EtcdError::internal)?;
        }
        touched.sort();
        touched.dedup();
        for key in touched {
            let esc = keys::escape(&key);
            let mut o = self.view.opts();
            o.set_iterate_upper_bound(keys::after_all_versions(&esc));
            let mut it = self.db.raw_iterator_cf_opt(kv_cf, o);
            it.seek(keys::version_key(&key, rev));
            let mut newest = true;
            while it.valid() {
                let k = it.key().unwrap();
                let keep = newest && !Record::decode(it.value().unwrap()).is_some_and(|r| r.tombstone);
                if !keep {
                    self.staged.push(Staged::Delete(CF_KV, k.to_vec()));
                }
                newest = false;
                it.next();
            }
            it.status().map_err(EtcdError::internal)?;
        }
        self.staged.push(Staged::DeleteRange(CF_REVS, keys::rev_key(0).to_vec(), keys::rev_key(rev).to_vec()));
        self.put_cf(CF_META, META_COMPACT.to_vec(), rev.to_be_bytes().to_vec());
        Ok(())
    }

    /// Ends the writer: the batch, and the changes to publish to watchers, per revision.
    /// A command still open counts as succeeded.
    pub fn finish(mut self) -> (WriteBatch, Vec<RevisionChanges>) {
        if !self.staged.is_empty() || !self.rev_log.is_empty() {
            self.end_command(true);
        }
        (self.batch, self.done)
    }

    /// The revision before the current command.
    pub fn base_rev(&self) -> i64 {
        self.base_rev
    }

    /// The revision a response to the current command reports.
    pub fn response_rev(&self) -> i64 {
        self.visible_rev()
    }
}

fn compare_kv(c: &PbCompare, target: PbCompareTarget, kv: &PbKeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match (target, &c.target_union) {
        (PbCompareTarget::Value, Some(PbTargetUnion::Value(v))) => kv.value.as_slice().cmp(v.as_slice()),
        (PbCompareTarget::Version, Some(PbTargetUnion::Version(v))) => kv.version.cmp(v),
        (PbCompareTarget::Create, Some(PbTargetUnion::CreateRevision(v))) => kv.create_revision.cmp(v),
        (PbCompareTarget::Mod, Some(PbTargetUnion::ModRevision(v))) => kv.mod_revision.cmp(v),
        (PbCompareTarget::Lease, Some(PbTargetUnion::Lease(v))) => kv.lease.cmp(v),
        // A target with no value set compares against the zero value of its type.
        (PbCompareTarget::Value, _) => kv.value.as_slice().cmp(&[][..]),
        (PbCompareTarget::Version, _) => kv.version.cmp(&0),
        (PbCompareTarget::Create, _) => kv.create_revision.cmp(&0),
        (PbCompareTarget::Mod, _) => kv.mod_revision.cmp(&0),
        (PbCompareTarget::Lease, _) => kv.lease.cmp(&0),
    };
    match c.result {
        0 => ord == Ordering::Equal,
        1 => ord == Ordering::Greater,
        2 => ord == Ordering::Less,
        3 => ord != Ordering::Equal,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> PbPutRequest {
        PbPutRequest { key: key.into(), value: value.into(), ..Default::default() }
    }

    #[test]
    fn a_group_of_commands_is_one_write_with_one_revision_each() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::open(dir.path()).unwrap();
        let mut w = Writer::new(&db, WriteBatch::default()).unwrap();
        assert_eq!(w.put(&put("a", "1")).unwrap().header.unwrap().revision, 2);
        w.end_command(true);
        // A command that fails halfway leaves nothing behind, not even its first put.
        let bad = PbTxnRequest {
            success: vec![
                PbTxnRequestOp { request: Some(PbTxnOpRequest::RequestPut(put("b", "x"))) },
                PbTxnRequestOp {
                    request: Some(PbTxnOpRequest::RequestPut(PbPutRequest { lease: 99, ..put("c", "y") })),
                },
            ],
            ..Default::default()
        };
        assert_eq!(w.txn(&bad).unwrap_err(), EtcdError::lease_not_found());
        w.end_command(false);
        // Later commands see earlier ones: version 2 of "a", prev value "1".
        let r = w.put(&PbPutRequest { prev_kv: true, ..put("a", "2") }).unwrap();
        assert_eq!(r.header.unwrap().revision, 3);
        assert_eq!(r.prev_kv.unwrap().value, b"1");
        w.end_command(true);
        let (batch, revisions) = w.finish();
        assert_eq!(revisions.iter().map(|r| r.rev).collect::<Vec<_>>(), [2, 3]);
        // Nothing is visible before the batch is written, everything after.
        assert_eq!(View::new(&db).current_rev().unwrap(), 1);
        db.write(batch).unwrap();
        let v = View::new(&db);
        assert_eq!(v.current_rev().unwrap(), 3);
        assert_eq!(v.get(b"a", 3).unwrap().unwrap().version, 2);
        assert!(v.get(b"b", 3).unwrap().is_none());
        assert_eq!(v.changes(1, 3, &KeyRange::Span(vec![0], None), 10).unwrap().len(), 2);
    }
}
