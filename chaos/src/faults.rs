//! Fault schedules (a pure function of the seed) and their execution.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::{connect, Cluster};
use crate::history::{Call, FaultRecord, WatchLog};
use crate::proxy::Blocked;
use crate::workload::{self, Recorder, Target, WatchProgress};

pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A small deterministic generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SIGKILL a member, restart it after the hold.
    Kill,
    /// SIGSTOP a member, SIGCONT after the hold.
    Pause,
    /// Cut peer links: isolate the leader, split off a minority, or one direction only.
    Partition,
    /// Remove a member, wipe it, add it back as a learner, promote it.
    Membership,
    /// Move the leadership to a follower.
    Leader,
    /// Cut a follower off long enough that it must catch up from a snapshot.
    Snapshot,
    /// Compact below what the watchers have seen, and watch from a compacted revision.
    Compact,
}

impl Kind {
    pub const ALL: [Kind; 7] =
        [Kind::Kill, Kind::Pause, Kind::Partition, Kind::Membership, Kind::Leader, Kind::Snapshot, Kind::Compact];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::Membership => "membership",
            Kind::Leader => "leader",
            Kind::Snapshot => "snapshot",
            Kind::Compact => "compact",
        }
    }

    pub fn parse(s: &str) -> Result<Kind, String> {
        Kind::ALL.iter().copied().find(|k| k.name() == s).ok_or_else(|| {
            format!("unknown fault {s:?}; known: {}", Kind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", "))
        })
    }
}

/// One fault of the schedule: when (relative to the start of the run; later if the
/// previous fault is still running), what, how long, and a random number that picks
/// its targets among the members as they are when it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub kind: Kind,
    pub hold: Duration,
    pub choice: u64,
}

/// The schedule for a run: faults one after another, never overlapping.
pub fn plan(seed: u64, duration: Duration, kinds: &[Kind]) -> Vec<Planned> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    if kinds.is_empty() {
        return out;
    }
    let mut t = Duration::from_secs(2);
    loop {
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let hold = match kind {
            Kind::Kill | Kind::Pause | Kind::Partition => Duration::from_millis(2000 + rng.below(3000)),
            Kind::Snapshot => Duration::from_secs(8),
            Kind::Membership | Kind::Leader | Kind::Compact => Duration::ZERO,
        };
        // Room for the fault to finish before the workload stops.
        let busy = hold + if kind == Kind::Membership { Duration::from_secs(6) } else { Duration::from_secs(1) };
        if t + busy + Duration::from_secs(2) > duration {
            return out;
        }
        out.push(Planned { at: t, kind, hold, choice: rng.next_u64() });
        t += busy + Duration::from_millis(1500 + rng.below(2000));
    }
}

pub struct FaultContext {
    pub rec: Arc<Recorder>,
    pub target: Target,
    pub prefix: String,
    pub start_revision: i64,
    pub watchers: Vec<Arc<WatchProgress>>,
    /// Watches started by compaction faults, to add to the history.
    pub extra_watches: Vec<WatchLog>,
    pub next_watch_id: usize,
    pub last_compaction: i64,
}

fn names(c: &Cluster, idx: &[usize]) -> String {
    idx.iter().map(|&i| c.members[i].name.clone()).collect::<Vec<_>>().join(",")
}

/// Runs one fault to its end and heals it. Errors mean the harness could not do it.
pub async fn execute(c: &mut Cluster, p: &Planned, ctx: &mut FaultContext) -> anyhow::Result<FaultRecord> {
    let n = c.members.len();
    let leader = c.leader().await;
    let l = leader.unwrap_or((p.choice % n as u64) as usize);
    let followers: Vec<usize> = (0..n).filter(|&i| i != l).collect();
    let follower = |k: u64| followers[(k % followers.len().max(1) as u64) as usize];
    let role = |i: usize| if Some(i) == leader { " (leader)" } else { "" };
    let start_us = ctx.rec.now_us();
    let mut rec = FaultRecord { kind: p.kind.name().into(), start_us, ..Default::default() };
    match p.kind {
        Kind::Kill | Kind::Pause => {
            let t = match p.choice % 3 {
                0 => l,
                _ => follower(p.choice / 3),
            };
            rec.target = c.members[t].name.clone();
            if p.kind == Kind::Kill {
                c.kill(t);
                rec.detail = format!("SIGKILL{}, restarted after {:?}", role(t), p.hold);
                tokio::time::sleep(p.hold).await;
                c.restart(t)?;
            } else {
                c.pause(t);
                rec.detail = format!("SIGSTOP{}, SIGCONT after {:?}", role(t), p.hold);
                tokio::time::sleep(p.hold).await;
                c.resume(t);
            }
        }
        Kind::Partition => {
            let mut blocked = Blocked::new();
            let cut = |blocked: &mut Blocked, a: &[usize], b: &[usize]| {
                for &x in a {
                    for &y in b {
                        blocked.insert((x, y));
                        blocked.insert((y, x));
                    }
                }
            };
            match p.choice % 4 {
                0 => {
                    cut(&mut blocked, &[l], &followers);
                    rec.target = format!("{}|{}", names(c, &[l]), names(c, &followers));
                    rec.detail = "leader isolated".into();
                }
                1 => {
                    // A random minority against the majority.
                    let mut order: Vec<usize> = (0..n).collect();
                    let mut rng = Rng::new(p.choice);
                    for i in (1..n).rev() {
                        order.swap(i, rng.below(i as u64 + 1) as usize);
                    }
                    let (minority, majority) = order.split_at((n - 1) / 2);
                    cut(&mut blocked, minority, majority);
                    rec.target = format!("{}|{}", names(c, minority), names(c, majority));
                    rec.detail = format!("minority {} cut off from the majority", names(c, minority));
                }
                2 => {
                    let f = follower(p.choice / 4);
                    blocked.insert((l, f));
                    rec.target = format!("{}->{}", c.members[l].name, c.members[f].name);
                    rec.detail = "one-way: leader's messages to a follower dropped".into();
                }
                _ => {
                    let f = follower(p.choice / 4);
                    blocked.insert((f, l));
                    rec.target = format!("{}->{}", c.members[f].name, c.members[l].name);
                    rec.detail = "one-way: a follower's messages to the leader dropped".into();
                }
            }
            c.links.set(blocked);
            tokio::time::sleep(p.hold).await;
            c.links.heal();
        }
        Kind::Snapshot => {
            let f = follower(p.choice);
            rec.target = c.members[f].name.clone();
            let others: Vec<usize> = (0..n).filter(|&i| i != f).collect();
            let mut blocked = Blocked::new();
            for &o in &others {
                blocked.insert((f, o));
                blocked.insert((o, f));
            }
            let installs = c.log_lines(f, "installed snapshot");
            c.links.set(blocked);
            tokio::time::sleep(p.hold).await;
            let behind = applied_gap(c, f, l).await;
            c.links.heal();
            rec.detail = match behind {
                Some(g) => format!("cut off for {:?}, {g} raft entries behind the leader when healed", p.hold),
                None => format!("cut off for {:?}", p.hold),
            };
            // Wait for it to catch up, so the next fault starts from a whole cluster.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            while applied_gap(c, f, l).await.is_none_or(|g| g > 50) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            rec.detail += if c.log_lines(f, "installed snapshot") > installs {
                "; it caught up by installing a snapshot"
            } else {
                "; it caught up from the leader's log"
            };
        }
        Kind::Membership => {
            let t = match p.choice % 3 {
                0 => l,
                _ => follower(p.choice / 3),
            };
            rec.target = c.members[t].name.clone();
            rec.detail = format!("{}{}", c.remove_and_add_back(t).await?, role(t));
        }
        Kind::Leader => {
            let f = follower(p.choice);
            rec.target = format!("{}->{}", c.members[l].name, c.members[f].name);
            let id = c.member_id(f).await?;
            let mut admin = connect(&c.members[l].client_url()).await?;
            rec.detail = match tokio::time::timeout(Duration::from_secs(5), admin.move_leader(id)).await {
                Ok(Ok(_)) => "leadership moved".into(),
                Ok(Err(e)) => format!("move-leader refused: {e}"),
                Err(_) => "move-leader timed out".into(),
            };
        }
        Kind::Compact => {
            // Below every long-lived watcher, so they keep their streams; the doomed
            // watch below starts under the compaction and must be canceled.
            let min_seen = ctx.watchers.iter().map(|w| w.next.load(Ordering::Relaxed) - 1).min().unwrap_or(0);
            let rev = min_seen - 5;
            let m = (p.choice % n as u64) as usize;
            rec.target = c.members[m].name.clone();
            if rev <= ctx.last_compaction.max(ctx.start_revision + 5) {
                rec.detail = format!("skipped: watchers at {min_seen}, too close to the last compaction");
            } else {
                let mut client = connect(&c.members[m].client_url()).await?;
                let done = workload::run_op(
                    &ctx.rec,
                    usize::MAX,
                    &ctx.target,
                    m,
                    &mut client,
                    Call::Compact { revision: rev },
                )
                .await;
                ctx.last_compaction = rev;
                if done.is_some() {
                    let id = ctx.next_watch_id;
                    ctx.next_watch_id += 1;
                    let from = (rev - 3).max(ctx.start_revision);
                    // On the member that answered the compaction: it has applied it (a
                    // lagging member may still serve the old revisions, as etcd does).
                    let w = workload::doomed_watch(id, &ctx.prefix, from, &ctx.target, m, &ctx.rec).await;
                    rec.detail = format!("compacted at {rev}; watch from {from}: {}", w.segments[0].end);
                    ctx.extra_watches.push(w);
                } else {
                    rec.detail = format!("compaction at {rev} did not complete");
                }
            }
        }
    }
    rec.end_us = ctx.rec.now_us();
    Ok(rec)
}

/// How many raft entries member `f` has applied fewer than member `l`.
async fn applied_gap(c: &Cluster, f: usize, l: usize) -> Option<u64> {
    let index = |i: usize| {
        let url = c.members[i].client_url();
        async move {
            let mut client = connect(&url).await.ok()?;
            let s = tokio::time::timeout(Duration::from_secs(2), client.status()).await.ok()?.ok()?;
            Some(s.raft_index())
        }
    };
    let (a, b) = (index(f).await?, index(l).await?);
    Some(b.saturating_sub(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let kinds = Kind::ALL;
        let a = plan(42, Duration::from_secs(60), &kinds);
        assert_eq!(a, plan(42, Duration::from_secs(60), &kinds));
        assert_ne!(a, plan(43, Duration::from_secs(60), &kinds));
        assert!(a.len() >= 5, "{a:?}");
        // Faults never overlap and all end before the run does.
        for w in a.windows(2) {
            assert!(w[0].at + w[0].hold < w[1].at, "{w:?}");
        }
        assert!(a.iter().all(|p| p.at + p.hold < Duration::from_secs(60)));
        // Only the kinds asked for.
        assert!(plan(7, Duration::from_secs(60), &[Kind::Pause]).iter().all(|p| p.kind == Kind::Pause));
        assert!(plan(7, Duration::from_secs(60), &[]).is_empty());
    }
}
