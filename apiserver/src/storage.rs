//! Objects in the store, the way kube-apiserver keeps them in etcd: one key per
//! object under `/registry/<resource>/[<namespace>/]<name>`, the object's
//! resourceVersion is the key's mod_revision, a list's is the store revision, and
//! every write is a compare-and-swap on the mod_revision. Objects are stored as JSON.

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream};
use serde_json::Value;

use crate::registry::Resource;
use crate::status::{ApiError, ApiResult};

#[derive(Clone)]
pub struct Store {
    client: Client,
}

/// An object read back, with the resourceVersion already set in its metadata.
#[derive(Clone, Debug)]
pub struct Stored {
    pub key: String,
    pub obj: Value,
    pub rev: i64,
}

pub fn key(r: &Resource, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if r.namespaced => format!("/registry/{}/{ns}/{name}", r.storage),
        _ => format!("/registry/{}/{name}", r.storage),
    }
}

/// The prefix of a collection: all namespaces when `namespace` is None.
pub fn prefix(r: &Resource, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if r.namespaced => format!("/registry/{}/{ns}/", r.storage),
        _ => format!("/registry/{}/", r.storage),
    }
}

pub fn decode(key: &[u8], value: &[u8], mod_rev: i64) -> ApiResult<Stored> {
    let value = crate::encryption::open(key, value)
        .map_err(|e| ApiError::internal(format!("stored object {}: {e}", String::from_utf8_lossy(key))))?;
    let mut obj: Value = serde_json::from_slice(&value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", String::from_utf8_lossy(key))))?;
    obj["metadata"]["resourceVersion"] = Value::String(mod_rev.to_string());
    Ok(Stored { key: String::from_utf8_lossy(key).into_owned(), obj, rev: mod_rev })
}

/// The bytes stored for `obj` at `key`: JSON without the resourceVersion, encrypted if
/// the encryption configuration says so for its resource.
fn encode(key: &str, obj: &Value) -> Vec<u8> {
    let json = serde_json::to_vec(&WithoutVersion(obj, true)).expect("JSON values serialize");
    crate::encryption::seal(key.as_bytes(), json)
}

/// Serializes an object as it is stored: without `metadata.resourceVersion` (the
/// store's revision says it), and without copying the object to take it out. The flag
/// says whether this level is the object itself (its `metadata` is the one).
struct WithoutVersion<'a>(&'a Value, bool);

impl serde::Serialize for WithoutVersion<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Value::Object(m) = self.0 else { return self.0.serialize(s) };
        let skip = |k: &str| !self.1 && k == "resourceVersion";
        let mut map = s.serialize_map(Some(m.keys().filter(|k| !skip(k)).count()))?;
        for (k, v) in m.iter().filter(|(k, _)| !skip(k)) {
            match self.1 && k == "metadata" {
                true => map.serialize_entry(k, &WithoutVersion(v, false))?,
                false => map.serialize_entry(k, v)?,
            }
        }
        map.end()
    }
}

/// The end of the range of keys starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What became of a `create_with`.
#[derive(Debug, PartialEq)]
pub enum Created {
    At(i64),
    /// The key exists.
    Exists,
    /// One of the other objects changed since it was read.
    Stale,
}

/// How the API server reaches a store that serves TLS (kube-apiserver's `--etcd-cafile`,
/// `--etcd-certfile`, `--etcd-keyfile`); all None: plain HTTP.
#[derive(Clone, Debug, Default)]
pub struct StoreTls {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

impl StoreTls {
    fn options(&self) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
        self.options_named(["--etcd-cafile", "--etcd-certfile", "--etcd-keyfile"])
    }

    /// The etcd client's TLS options from these files (None: no file given, plain
    /// HTTP), with errors naming them by `flags` (CA, certificate, key), as the
    /// command line that gave them calls them.
    pub fn options_named(&self, flags: [&str; 3]) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
        use anyhow::Context;
        let read =
            |flag: &str, p: &std::path::Path| std::fs::read(p).with_context(|| format!("{flag} {}", p.display()));
        if self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none() {
            return Ok(None);
        }
        let mut t = etcd_client::TlsOptions::new();
        if let Some(ca) = &self.ca_file {
            t = t.ca_certificate(etcd_client::Certificate::from_pem(read(flags[0], ca)?));
        }
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                t = t.identity(etcd_client::Identity::from_pem(read(flags[1], c)?, read(flags[2], k)?))
            }
            (None, None) => {}
            _ => anyhow::bail!("{} and {} go together", flags[1], flags[2]),
        }
        Ok(Some(t))
    }
}

/// One read of `Store::read_all`.
pub enum Read<'a> {
    /// The object at this key, if any.
    Key(&'a str),
    /// Every object under this prefix.
    Prefix(&'a str),
}

pub struct Page {
    pub items: Vec<Stored>,
    /// The store revision the page was read at.
    pub revision: i64,
    /// Whether keys remain after the last one returned.
    pub more: bool,
}

impl Store {
    pub async fn connect(endpoints: &[String], tls: &StoreTls) -> anyhow::Result<Store> {
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(3))
            .with_timeout(std::time::Duration::from_secs(10));
        if let Some(t) = tls.options()? {
            opts = opts.with_tls(t);
        }
        let client = Client::connect(endpoints, Some(opts)).await?;
        Ok(Store { client })
    }

    /// The etcd client itself, for what is not about objects (store member status).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub async fn get(&self, key: &str) -> ApiResult<Option<Stored>> {
        let r = self.client.kv_client().get(key, None).await?;
        match r.kvs().first() {
            Some(kv) => Ok(Some(decode(kv.key(), kv.value(), kv.mod_revision())?)),
            None => Ok(None),
        }
    }

    /// The current store revision.
    pub async fn revision(&self) -> ApiResult<i64> {
        let r = self.client.kv_client().get("/registry/", Some(GetOptions::new().with_count_only())).await?;
        Ok(r.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Creates `obj` at `key` unless the key exists; the new resourceVersion, or None.
    pub async fn create(&self, key: &str, obj: &Value) -> ApiResult<Option<i64>> {
        let txn = Txn::new().when([Compare::mod_revision(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            encode(key, obj),
            None,
        )]);
        let r = self.client.kv_client().txn(txn).await?;
        Ok(r.succeeded().then(|| r.header().map(|h| h.revision()).unwrap_or_default()))
    }

    /// Creates `obj` at `key` together with `also` (keys, new objects, the revision each
    /// must still be at: the quotas it is charged to), all or nothing.
    pub async fn create_with(&self, key: &str, obj: &Value, also: &[(String, Value, i64)]) -> ApiResult<Created> {
        let mut when = vec![Compare::mod_revision(key, CompareOp::Equal, 0)];
        let mut ops = vec![TxnOp::put(key, encode(key, obj), None)];
        for (k, o, rev) in also {
            when.push(Compare::mod_revision(k.as_str(), CompareOp::Equal, *rev));
            ops.push(TxnOp::put(k.as_str(), encode(k, o), None));
        }
        let txn =
            Txn::new().when(when).and_then(ops).or_else([TxnOp::get(key, Some(GetOptions::new().with_keys_only()))]);
        let r = self.client.kv_client().txn(txn).await?;
        if r.succeeded() {
            return Ok(Created::At(r.header().map(|h| h.revision()).unwrap_or_default()));
        }
        let exists = r.op_responses().iter().any(|op| matches!(op, TxnOpResponse::Get(g) if !g.kvs().is_empty()));
        Ok(if exists { Created::Exists } else { Created::Stale })
    }

    /// Replaces the object at `key` if it is still at `expect`: Ok(new revision), or
    /// Err(what is there now, if anything).
    pub async fn update(&self, key: &str, obj: &Value, expect: i64) -> ApiResult<Result<i64, Option<Stored>>> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expect)])
            .and_then([TxnOp::put(key, encode(key, obj), None)])
            .or_else([TxnOp::get(key, None)]);
        let r = self.client.kv_client().txn(txn).await?;
        if r.succeeded() {
            return Ok(Ok(r.header().map(|h| h.revision()).unwrap_or_default()));
        }
        Ok(Err(current(&r)?))
    }

    /// Deletes the object at `key` if it is still at `expect`: Ok(deletion revision),
    /// or Err(what is there now).
    pub async fn delete(&self, key: &str, expect: i64) -> ApiResult<Result<i64, Option<Stored>>> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expect)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let r = self.client.kv_client().txn(txn).await?;
        if r.succeeded() {
            return Ok(Ok(r.header().map(|h| h.revision()).unwrap_or_default()));
        }
        Ok(Err(current(&r)?))
    }

    /// Up to `limit` objects (0: all) under `prefix` with keys after `after`, read at
    /// `revision` (0: now).
    /// Lists keys under `prefix` (after `after`), at most `limit` (0: all of them, read in
    /// pages of 1000 at one revision, so no single store response grows without bound).
    pub async fn list(&self, prefix: &str, after: Option<&str>, limit: i64, revision: i64) -> ApiResult<Page> {
        if limit > 0 {
            return self.list_page(prefix, after, limit, revision).await;
        }
        let mut page = self.list_page(prefix, after, 1000, revision).await?;
        while page.more {
            let last = page.items.last().map(|s| s.key.clone()).unwrap_or_default();
            let next = self.list_page(prefix, Some(&last), 1000, page.revision).await?;
            page.items.extend(next.items);
            page.more = next.more;
        }
        Ok(page)
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: i64, revision: i64) -> ApiResult<Page> {
        let start = match after {
            Some(k) => format!("{k}\0"),
            None => prefix.to_string(),
        };
        let mut opts = GetOptions::new().with_range(prefix_end(prefix));
        if limit > 0 {
            opts = opts.with_limit(limit);
        }
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let r = self.client.kv_client().get(start, Some(opts)).await?;
        let items =
            r.kvs().iter().map(|kv| decode(kv.key(), kv.value(), kv.mod_revision())).collect::<ApiResult<Vec<_>>>()?;
        Ok(Page { items, revision: r.header().map(|h| h.revision()).unwrap_or_default(), more: r.more() })
    }

    /// Reads several keys and whole prefixes at one revision, in one round trip (a
    /// read-only transaction): for each read, the objects found, in key order.
    pub async fn read_all(&self, reads: &[Read<'_>]) -> ApiResult<Vec<Vec<Stored>>> {
        let ops: Vec<TxnOp> = reads
            .iter()
            .map(|r| match r {
                Read::Key(k) => TxnOp::get(*k, None),
                Read::Prefix(p) => TxnOp::get(*p, Some(GetOptions::new().with_range(prefix_end(p)))),
            })
            .collect();
        let r = self.client.kv_client().txn(Txn::new().and_then(ops)).await?;
        let found: Vec<Vec<Stored>> = r
            .op_responses()
            .iter()
            .filter_map(|op| match op {
                TxnOpResponse::Get(g) => Some(
                    g.kvs().iter().map(|kv| decode(kv.key(), kv.value(), kv.mod_revision())).collect::<ApiResult<_>>(),
                ),
                _ => None,
            })
            .collect::<ApiResult<_>>()?;
        if found.len() != reads.len() {
            return Err(ApiError::internal(format!("the store answered {} of {} reads", found.len(), reads.len())));
        }
        Ok(found)
    }

    /// Watches `prefix` from revision `from` (inclusive), with previous values.
    pub async fn watch(&self, prefix: &str, from: i64) -> ApiResult<WatchStream> {
        let opts = WatchOptions::new()
            .with_range(prefix_end(prefix))
            .with_start_revision(from)
            .with_prev_key()
            .with_progress_notify();
        Ok(self.client.watch_client().watch(prefix, Some(opts)).await?)
    }
}

fn current(r: &etcd_client::TxnResponse) -> ApiResult<Option<Stored>> {
    for op in r.op_responses() {
        if let TxnOpResponse::Get(g) = op {
            if let Some(kv) = g.kvs().first() {
                return Ok(Some(decode(kv.key(), kv.value(), kv.mod_revision())?));
            }
        }
    }
    Ok(None)
}

impl Store {
    /// Takes `key` (a bare marker, not an object) if nobody holds it: true when taken.
    pub async fn claim(&self, key: &str, holder: &str) -> ApiResult<bool> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, holder, None)]);
        Ok(self.client.kv_client().txn(txn).await?.succeeded())
    }

    /// Gives `key` back.
    pub async fn release(&self, key: &str) -> ApiResult<()> {
        self.client.kv_client().delete(key, None).await?;
        Ok(())
    }

    /// Deletes every key under `prefix` (markers, not objects).
    pub async fn release_prefix(&self, prefix: &str) -> ApiResult<()> {
        let opts = etcd_client::DeleteOptions::new().with_range(prefix_end(prefix));
        self.client.kv_client().delete(prefix, Some(opts)).await?;
        Ok(())
    }
}

/// The key API servers take turns on to compact the store's history (kube-apiserver's).
const COMPACTION_MARKER: &str = "compact_rev_key";

/// Compacts the store's history every `every`, as kube-apiserver does: each turn
/// writes `COMPACTION_MARKER` (the write's revision is the turn's) and compacts at the
/// revision of the previous turn, so history reaches back at least one interval. Several API
/// servers share the work through the marker's version: a turn is taken only by the
/// server that saw the marker last, and the others wait for the next interval.
pub async fn compact_history(store: Store, every: std::time::Duration) {
    // The marker's version this server expects, and the revision its last turn recorded.
    let (mut version, mut recorded) = (0i64, 0i64);
    loop {
        tokio::time::sleep(every).await;
        match store.compaction_turn(version, recorded).await {
            Ok((v, r)) => (version, recorded) = (v, r),
            Err(e) => tracing::warn!("compacting the store's history: {}", e.message),
        }
    }
}

impl Store {
    /// One turn of `compact_history`: the marker's new version and the revision recorded
    /// (0 when another server took the turn).
    async fn compaction_turn(&self, version: i64, recorded: i64) -> ApiResult<(i64, i64)> {
        let txn = Txn::new()
            .when([Compare::version(COMPACTION_MARKER, CompareOp::Equal, version)])
            .and_then([TxnOp::put(COMPACTION_MARKER, "", None)])
            .or_else([TxnOp::get(COMPACTION_MARKER, None)]);
        let r = self.client.kv_client().txn(txn).await?;
        if !r.succeeded() {
            let now = r.op_responses().iter().find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.version()),
                _ => None,
            });
            return Ok((now.unwrap_or(0), 0));
        }
        if recorded > 0 {
            match self.client.kv_client().compact(recorded, None).await {
                Ok(_) => tracing::info!("compacted the store's history up to revision {recorded}"),
                // Already compacted there (by hand, or by another server's turn).
                Err(e) if e.to_string().contains("required revision has been compacted") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((version + 1, r.header().map(|h| h.revision()).unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_are_stored_without_their_resource_version_only() {
        let obj = json!({
            "kind": "Event",
            "metadata": {"name": "e", "resourceVersion": "42", "labels": {"resourceVersion": "kept"}},
            "involvedObject": {"kind": "Pod", "resourceVersion": "7"},
        });
        let key = "/registry/events/default/e";
        let stored: Value = serde_json::from_slice(&encode(key, &obj)).unwrap();
        let mut want = obj.clone();
        want["metadata"].as_object_mut().unwrap().remove("resourceVersion");
        assert_eq!(stored, want);
        // Read back, the revision is the store's.
        let read = decode(key.as_bytes(), &encode(key, &obj), 50).unwrap();
        assert_eq!(read.obj["metadata"]["resourceVersion"], "50");
        assert_eq!(read.obj["involvedObject"]["resourceVersion"], "7");
    }
}
