//! The recorded history of a chaos run: every client operation with its invoke and
//! complete times and outcome, every watch response, every fault window, and the state
//! read at the end. Saved as JSON (format described in docs/chaos.md); the checkers
//! read nothing else, so a saved or hand-edited history can be judged again.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    pub version: u32,
    pub seed: u64,
    pub members: usize,
    /// Fault kinds enabled for the run.
    pub faults_enabled: Vec<String>,
    /// Every key the workload touches starts with this prefix.
    pub prefix: String,
    /// The store's revision before the workload started; every write has a larger one.
    pub start_revision: i64,
    pub ops: Vec<Op>,
    pub watches: Vec<WatchLog>,
    pub faults: Vec<FaultRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndState>,
}

/// One client operation. Times are microseconds since the run started.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Op {
    pub id: usize,
    pub client: usize,
    /// The member the request was sent to.
    pub member: String,
    pub invoke_us: u64,
    pub complete_us: u64,
    #[serde(flatten)]
    pub call: Call,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Ret>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Call {
    /// A put, with a lease when `lease` is not 0.
    Put {
        key: String,
        value: String,
        #[serde(default)]
        lease: i64,
    },
    Get {
        key: String,
        #[serde(default)]
        serializable: bool,
    },
    Delete {
        key: String,
    },
    /// `txn(if mod_revision(key) == expect then put(key, value) else get(key))`.
    Cas {
        key: String,
        expect_mod_revision: i64,
        value: String,
    },
    /// Several puts in one txn, hence one revision.
    MultiPut {
        puts: Vec<(String, String)>,
    },
    LeaseGrant {
        ttl: i64,
    },
    Compact {
        revision: i64,
    },
}

impl Call {
    pub fn name(&self) -> &'static str {
        match self {
            Call::Put { .. } => "put",
            Call::Get { serializable: false, .. } => "get",
            Call::Get { serializable: true, .. } => "get-serializable",
            Call::Delete { .. } => "delete",
            Call::Cas { .. } => "cas",
            Call::MultiPut { .. } => "multi-put",
            Call::LeaseGrant { .. } => "lease-grant",
            Call::Compact { .. } => "compact",
        }
    }

    pub fn is_write(&self) -> bool {
        !matches!(self, Call::Get { .. })
    }
}

/// `ok`: the response arrived. `failed`: certainly had no effect. `unknown`: may or
/// may not have taken effect (a timeout, a lost connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
    Unknown,
}

/// What an `ok` operation returned. Which fields mean something depends on the call.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ret {
    /// The response header's revision.
    pub revision: i64,
    /// Get, and a Cas whose compare failed: the value read (absent key: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// With `value`: its mod_revision.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mod_revision: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deleted: i64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub succeeded: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_id: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

/// One long-lived watcher on the whole prefix. Each time its stream breaks it is
/// re-created (a new segment) from the revision after the last one it received.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WatchLog {
    pub id: usize,
    pub segments: Vec<Segment>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Segment {
    pub member: String,
    pub start_revision: i64,
    pub created_us: u64,
    pub responses: Vec<WatchResp>,
    /// Why the segment ended: `canceled`, `error: ...`, `closed` (end of the run).
    pub end: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResp {
    pub recv_us: u64,
    /// Header revision.
    pub revision: i64,
    /// A progress notification: no events, and every event up to `revision` was sent.
    #[serde(default, skip_serializing_if = "is_false")]
    pub progress: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub canceled: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub compact_revision: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The event's revision (the key's mod_revision).
    pub revision: i64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FaultRecord {
    pub kind: String,
    /// The member(s) it hit, e.g. `m2` or `m0,m1|m2`.
    pub target: String,
    pub start_us: u64,
    pub end_us: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Read once the faults were healed and the workload stopped.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndState {
    /// Invoke time of the final linearizable read.
    pub read_us: u64,
    /// Its header revision.
    pub revision: i64,
    /// Every key under the prefix at `revision`.
    pub kvs: Vec<FinalKv>,
    /// HashKV of every member at `revision`.
    pub hashes: Vec<MemberHash>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalKv {
    pub key: String,
    pub value: String,
    pub mod_revision: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MemberHash {
    pub member: String,
    pub revision: i64,
    pub hash: u32,
    pub compact_revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl History {
    pub fn load(path: &Path) -> anyhow::Result<History> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let h: History = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a chaos history: {e}", path.display()))?;
        if h.version != FORMAT_VERSION {
            anyhow::bail!(
                "{}: history format {} is not supported (expected {FORMAT_VERSION})",
                path.display(),
                h.version
            );
        }
        Ok(h)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string(self)?;
        std::fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }
}
