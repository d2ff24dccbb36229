//! Checks against the revision log: acknowledged writes present (and atomic), no write
//! nobody made, every read equal to the log at its revision, revisions never going
//! backwards, lease expiry never early and always done, final state and member hashes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::history::{Call, Event, EventKind, History, Op, Outcome};

use super::linearizable::describe_op;
use super::log::{events_str, RevisionLog};
use super::Finding;

fn ok_ops(h: &History) -> impl Iterator<Item = &Op> {
    h.ops.iter().filter(|o| o.outcome == Outcome::Ok && o.result.is_some())
}

fn rev_of(op: &Op) -> i64 {
    op.result.as_ref().map(|r| r.revision).unwrap_or_default()
}

fn put_event(key: &str, value: &str, lease: i64, rev: i64) -> Event {
    Event { revision: rev, kind: EventKind::Put, key: key.into(), value: value.into(), lease }
}

/// Every acknowledged write is in the log at its revision, with exactly its changes;
/// every change in the log was made by some request.
pub fn writes(h: &History, log: &RevisionLog, findings: &mut Vec<Finding>) {
    let mut lost = |op: &Op, why: String| {
        findings.push(Finding::new(
            "lost-write",
            format!("acknowledged write #{} {why}", op.id),
            vec![describe_op(op)],
        ));
    };
    for op in ok_ops(h) {
        let rev = rev_of(op);
        let r = op.result.as_ref().expect("ok ops carry results");
        let expected: Vec<Event> = match &op.call {
            Call::Put { key, value, lease } => vec![put_event(key, value, *lease, rev)],
            Call::MultiPut { puts } => puts.iter().map(|(k, v)| put_event(k, v, 0, rev)).collect(),
            Call::Cas { key, value, .. } if r.succeeded => vec![put_event(key, value, 0, rev)],
            Call::Delete { key } if r.deleted > 0 => {
                vec![Event { revision: rev, kind: EventKind::Delete, key: key.clone(), value: String::new(), lease: 0 }]
            }
            _ => continue,
        };
        match log.revs.get(&rev) {
            None => lost(op, format!("at revision {rev} is not in the history")),
            Some(events) if *events != expected => {
                lost(op, format!("at revision {rev} does not match it: the history has {}", events_str(events)))
            }
            Some(_) => {}
        }
    }

    // Phantoms: every put in the log was requested by somebody.
    let mut requested: BTreeSet<(&str, &str)> = BTreeSet::new();
    for op in h.ops.iter().filter(|o| o.outcome != Outcome::Failed) {
        match &op.call {
            Call::Put { key, value, .. } | Call::Cas { key, value, .. } => {
                requested.insert((key, value));
            }
            Call::MultiPut { puts } => requested.extend(puts.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            _ => {}
        }
    }
    for (rev, events) in &log.revs {
        for ev in events.iter().filter(|e| e.kind == EventKind::Put) {
            if !requested.contains(&(ev.key.as_str(), ev.value.as_str())) {
                findings.push(Finding::new(
                    "lost-write",
                    format!("revision {rev} holds put {}={}, which no client requested", ev.key, ev.value),
                    vec![],
                ));
            }
        }
    }
}

/// Every acknowledged read (linearizable or serializable) returned the key exactly as
/// the log has it at the read's revision.
pub fn reads(h: &History, log: &RevisionLog, findings: &mut Vec<Finding>) {
    let Some(last) = log.revs.keys().next_back().copied() else { return };
    for op in ok_ops(h) {
        let Call::Get { key, .. } = &op.call else { continue };
        let r = op.result.as_ref().expect("ok ops carry results");
        if r.revision > last {
            continue; // beyond what the watchers saw; `watch` reports that
        }
        let expected = log.state_at(key, r.revision).map(|(v, m, _)| (v, m));
        let got = r.value.clone().map(|v| (v, r.mod_revision));
        if expected != got {
            let show = |s: &Option<(String, i64)>| match s {
                Some((v, m)) => format!("{v}@{m}"),
                None => "(absent)".into(),
            };
            findings.push(Finding::new(
                "stale-read",
                format!(
                    "read #{} of {key} at revision {} returned {}, but the key was {} at that revision",
                    op.id,
                    r.revision,
                    show(&got),
                    show(&expected)
                ),
                vec![describe_op(op)],
            ));
        }
    }
}

/// Revisions never go backwards: an operation that started after another finished
/// sees at least its revision (serializable reads excepted: they may lag), and the
/// serializable reads one client makes on one member never go backwards, also across
/// that member's restarts.
pub fn revisions(h: &History, findings: &mut Vec<Finding>) {
    let mut done: Vec<&Op> = ok_ops(h).collect();
    done.sort_by_key(|o| o.complete_us);
    let mut started: Vec<&Op> =
        ok_ops(h).filter(|o| !matches!(o.call, Call::Get { serializable: true, .. } | Call::Compact { .. })).collect();
    started.sort_by_key(|o| o.invoke_us);
    let mut i = 0;
    let mut best: Option<&Op> = None;
    for b in started {
        while i < done.len() && done[i].complete_us < b.invoke_us {
            if !matches!(done[i].call, Call::Compact { .. }) && best.is_none_or(|x| rev_of(done[i]) > rev_of(x)) {
                best = Some(done[i]);
            }
            i += 1;
        }
        if let Some(a) = best {
            if rev_of(b) < rev_of(a) {
                findings.push(Finding::new(
                    "revision",
                    format!(
                        "revision went backwards: #{} saw {} after #{} had seen {}",
                        b.id,
                        rev_of(b),
                        a.id,
                        rev_of(a)
                    ),
                    vec![describe_op(a), describe_op(b)],
                ));
                return;
            }
        }
    }

    let mut last: HashMap<(usize, &str), &Op> = HashMap::new();
    let mut reads: Vec<&Op> = ok_ops(h).filter(|o| matches!(o.call, Call::Get { serializable: true, .. })).collect();
    reads.sort_by_key(|o| o.invoke_us);
    for op in reads {
        if let Some(prev) = last.insert((op.client, &op.member), op) {
            if rev_of(op) < rev_of(prev) {
                findings.push(Finding::new(
                    "revision",
                    format!(
                        "revision went backwards on {}: client {} read at {} after reading at {}",
                        op.member,
                        op.client,
                        rev_of(op),
                        rev_of(prev)
                    ),
                    vec![describe_op(prev), describe_op(op)],
                ));
                return;
            }
        }
    }
}

/// Slack after a lease's TTL before its keys must be gone at the final read: a new
/// leader restarts every lease's TTL, so faults push expiry later.
pub const LEASE_SLACK_US: u64 = 3_000_000;

/// Lease keys: never removed before the lease's TTL ran out, removed together in one
/// revision, and gone by the end.
pub fn leases(h: &History, log: &RevisionLog, findings: &mut Vec<Finding>) {
    let grants: HashMap<i64, &Op> = ok_ops(h)
        .filter(|o| matches!(o.call, Call::LeaseGrant { .. }))
        .map(|o| (o.result.as_ref().map(|r| r.lease_id).unwrap_or_default(), o))
        .collect();
    let ttl_us = |op: &Op| match op.call {
        Call::LeaseGrant { ttl } => ttl as u64 * 1_000_000,
        _ => 0,
    };
    // The earliest moment revision `r` is known to have happened: some watcher
    // received it or something later, or an operation completed having seen it.
    let mut evidence: BTreeMap<i64, u64> = log.first_seen_us.clone();
    for op in ok_ops(h) {
        let t = evidence.entry(rev_of(op)).or_insert(op.complete_us);
        *t = (*t).min(op.complete_us);
    }
    let mut suffix_min: BTreeMap<i64, u64> = BTreeMap::new();
    let mut m = u64::MAX;
    for (&r, &t) in evidence.iter().rev() {
        m = m.min(t);
        suffix_min.insert(r, m);
    }
    let known_by = |r: i64| suffix_min.range(r..).next().map(|(_, t)| *t).unwrap_or(u64::MAX);

    // The lease of each key, from its puts in the log.
    let mut lease_of: HashMap<&str, i64> = HashMap::new();
    let mut removed_at: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for (rev, events) in &log.revs {
        for ev in events {
            match ev.kind {
                EventKind::Put => {
                    lease_of.insert(&ev.key, ev.lease);
                }
                EventKind::Delete => {
                    let lease = lease_of.get(ev.key.as_str()).copied().unwrap_or_default();
                    if lease == 0 {
                        continue;
                    }
                    removed_at.entry(lease).or_default().insert(*rev);
                    let Some(grant) = grants.get(&lease) else { continue };
                    let earliest_allowed = grant.invoke_us + ttl_us(grant);
                    if known_by(*rev) < earliest_allowed {
                        findings.push(Finding::new(
                            "lease",
                            format!(
                                "lease {lease:x} (ttl {}s, granted from {:.3}s) lost {} at revision {rev} by {:.3}s, before its TTL ran out at {:.3}s",
                                ttl_us(grant) / 1_000_000,
                                grant.invoke_us as f64 / 1e6,
                                ev.key,
                                known_by(*rev) as f64 / 1e6,
                                earliest_allowed as f64 / 1e6
                            ),
                            vec![describe_op(grant)],
                        ));
                    }
                }
            }
        }
    }
    for (lease, revs) in &removed_at {
        if revs.len() > 1 {
            findings.push(Finding::new(
                "lease",
                format!("the keys of lease {lease:x} were removed in {} revisions {revs:?}, not one", revs.len()),
                vec![],
            ));
        }
    }

    let Some(end) = &h.end else { return };
    let last_fault = h.faults.iter().map(|f| f.end_us).max().unwrap_or_default();
    for kv in end.kvs.iter().filter(|kv| kv.lease != 0) {
        let Some(grant) = grants.get(&kv.lease) else { continue };
        let due = grant.complete_us.max(last_fault) + ttl_us(grant) + LEASE_SLACK_US;
        if end.read_us > due {
            findings.push(Finding::new(
                "lease",
                format!(
                    "lease {:x} (ttl {}s) still holds {} at {:.3}s; it should have expired by {:.3}s",
                    kv.lease,
                    ttl_us(grant) / 1_000_000,
                    kv.key,
                    end.read_us as f64 / 1e6,
                    due as f64 / 1e6
                ),
                vec![describe_op(grant)],
            ));
        }
    }
}

/// The store's final state equals the log replayed to the final revision, and every
/// member hashes to the same value there.
pub fn end_state(h: &History, log: &RevisionLog, findings: &mut Vec<Finding>) {
    let Some(end) = &h.end else {
        findings.push(Finding::new("end", "the history has no final state (the run did not finish)".into(), vec![]));
        return;
    };
    let expected = log.replay(end.revision);
    let got: BTreeMap<String, (String, i64, i64)> =
        end.kvs.iter().map(|kv| (kv.key.clone(), (kv.value.clone(), kv.mod_revision, kv.lease))).collect();
    for key in expected.keys().chain(got.keys()).collect::<BTreeSet<_>>() {
        let (e, g) = (expected.get(key), got.get(key));
        if e != g {
            let show = |s: Option<&(String, i64, i64)>| match s {
                Some((v, m, _)) => format!("{v}@{m}"),
                None => "(absent)".into(),
            };
            findings.push(Finding::new(
                "lost-write",
                format!(
                    "final state of {key} at revision {}: the store has {}, the history says {}",
                    end.revision,
                    show(g),
                    show(e)
                ),
                vec![],
            ));
        }
    }
    let mut first: Option<&crate::history::MemberHash> = None;
    for mh in &end.hashes {
        if let Some(err) = &mh.error {
            findings.push(Finding::new(
                "hash",
                format!("{} gave no HashKV at revision {}: {err}", mh.member, end.revision),
                vec![],
            ));
            continue;
        }
        match first {
            None => first = Some(mh),
            Some(f) if (f.hash, f.compact_revision) != (mh.hash, mh.compact_revision) || mh.revision != f.revision => {
                findings.push(Finding::new(
                    "hash",
                    format!(
                        "members differ at revision {}: {} hash {:08x} (compacted at {}), {} hash {:08x} (compacted at {})",
                        end.revision, f.member, f.hash, f.compact_revision, mh.member, mh.hash, mh.compact_revision
                    ),
                    vec![],
                ));
            }
            Some(_) => {}
        }
    }
}
