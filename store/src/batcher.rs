//! Group commit of client writes on the leader.
//!
//! openraft 0.9 turns every `client_write` into its own log entry, log append and
//! replication round. The batcher puts concurrent writes into one entry instead: while
//! up to `MAX_IN_FLIGHT` entries are being committed, new writes queue; the next entry
//! takes everything queued (up to `MAX_BATCH` writes or `MAX_BATCH_BYTES`). One write
//! alone still goes as a plain entry, so an idle cluster adds no latency. The state
//! machine applies a group as one atomic write, each command with its own revision, so
//! clients see exactly what they would without grouping.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::types::{Command, CommandResponse, MemberNode, Raft};

const MAX_IN_FLIGHT: usize = 4;
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 4 << 20;

/// The command's response and the index of the raft entry that carried it.
pub type WriteResult = Result<(CommandResponse, u64), RaftError<u64, ClientWriteError<u64, MemberNode>>>;

type Job = (Command, oneshot::Sender<WriteResult>);

pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
}

/// Only plain client writes are grouped. Commands whose effects the state machine
/// publishes after the write (leases, alarms), compaction (which reads the revision log
/// as stored) and txns reading at an explicit revision go alone.
fn groupable(cmd: &Command) -> bool {
    match cmd {
        Command::Put(_) | Command::DeleteRange(_) => true,
        Command::Txn(b) => !b.is_empty() && !txn_reads_at_revision(b),
        Command::Guarded { cmd, .. } => groupable(cmd),
        _ => false,
    }
}

fn txn_reads_at_revision(bytes: &[u8]) -> bool {
    use etcd_client::proto::{PbTxnOpRequest, PbTxnRequest};
    use prost::Message;
    fn any(t: &PbTxnRequest) -> bool {
        t.success.iter().chain(&t.failure).any(|op| match &op.request {
            Some(PbTxnOpRequest::RequestRange(r)) => r.revision > 0,
            Some(PbTxnOpRequest::RequestTxn(t)) => any(t),
            _ => false,
        })
    }
    PbTxnRequest::decode(bytes).map(|t| any(&t)).unwrap_or(true)
}

fn size(cmd: &Command) -> usize {
    match cmd {
        Command::Put(b) | Command::DeleteRange(b) | Command::Txn(b) | Command::Compact(b) => b.len(),
        Command::Guarded { cmd, .. } => size(cmd),
        _ => 64,
    }
}

impl Batcher {
    pub fn start(raft: Raft) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(drive(raft, rx));
        Batcher { tx }
    }

    /// Commits one command (possibly grouped with others) and returns its response.
    pub async fn write(&self, cmd: Command) -> WriteResult {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((cmd, tx)).is_err() {
            return Err(RaftError::Fatal(openraft::error::Fatal::Stopped));
        }
        rx.await.unwrap_or(Err(RaftError::Fatal(openraft::error::Fatal::Stopped)))
    }
}

async fn drive(raft: Raft, mut rx: mpsc::UnboundedReceiver<Job>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut pending: Option<Job> = None;
    loop {
        let first = match pending.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        // Wait for a free slot first: whatever queues meanwhile joins this entry.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut jobs = vec![first];
        if groupable(&jobs[0].0) {
            let mut bytes = size(&jobs[0].0);
            while jobs.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(j) if groupable(&j.0) => {
                        bytes += size(&j.0);
                        jobs.push(j);
                    }
                    Ok(j) => {
                        pending = Some(j);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if jobs.len() == 1 {
                let (cmd, tx) = jobs.pop().unwrap();
                let _ = tx.send(raft.client_write(cmd).await.map(|r| (r.data, r.log_id.index)));
                return;
            }
            let (cmds, txs): (Vec<Command>, Vec<_>) = jobs.into_iter().unzip();
            match raft.client_write(Command::Batch(cmds)).await {
                Ok(r) => match r.data {
                    CommandResponse::Batch(resps) if resps.len() == txs.len() => {
                        for (tx, resp) in txs.into_iter().zip(resps) {
                            let _ = tx.send(Ok((resp, r.log_id.index)));
                        }
                    }
                    other => {
                        let e = crate::errors::EtcdError::internal(format!("bad group response {other:?}"));
                        for tx in txs {
                            let _ = tx.send(Ok((CommandResponse::Error(e.clone()), r.log_id.index)));
                        }
                    }
                },
                Err(e) => {
                    for tx in txs {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
