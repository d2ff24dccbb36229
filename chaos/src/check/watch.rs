//! Watch guarantees, for every watcher: ordered, unique, atomic, reliable, resumable,
//! and progress notifications never ahead of delivered events.

use std::collections::{BTreeSet, HashSet};

use crate::history::{Call, History, Outcome, WatchLog};

use super::log::RevisionLog;
use super::Finding;

pub fn check(h: &History, log: &RevisionLog, findings: &mut Vec<Finding>) {
    coverage(h, log, findings);
    let compactions: BTreeSet<i64> = h
        .ops
        .iter()
        .filter(|o| o.outcome != Outcome::Failed)
        .filter_map(|o| match o.call {
            Call::Compact { revision } => Some(revision),
            _ => None,
        })
        .collect();
    for w in &h.watches {
        check_watcher(h, w, log, &compactions, findings);
    }
    compacted_history_stays_gone(h, findings);
}

/// Once a compaction at C has returned on a member, a watch created there later never
/// delivers a revision below C (it is canceled instead).
fn compacted_history_stays_gone(h: &History, findings: &mut Vec<Finding>) {
    let done: Vec<(&str, u64, i64)> = h
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .filter_map(|o| match o.call {
            Call::Compact { revision } => Some((o.member.as_str(), o.complete_us, revision)),
            _ => None,
        })
        .collect();
    for w in &h.watches {
        for (si, seg) in w.segments.iter().enumerate() {
            let floor = done
                .iter()
                .filter(|(m, t, _)| *m == seg.member && *t < seg.created_us)
                .map(|(_, _, r)| *r)
                .max()
                .unwrap_or(0);
            if let Some(ev) = seg.responses.iter().flat_map(|r| &r.events).find(|e| e.revision < floor) {
                findings.push(Finding::new(
                    "watch",
                    format!(
                        "watcher {} segment {si} (on {}, from revision {}) delivered revision {} although {} had compacted at {floor} before the watch was created",
                        w.id, seg.member, seg.start_revision, ev.revision, seg.member
                    ),
                    vec![],
                ));
            }
        }
    }
}

/// Every revision the workload made must have reached some watcher: revisions are
/// dense (each one holds at least one change), so a revision nobody received was lost.
fn coverage(h: &History, log: &RevisionLog, findings: &mut Vec<Finding>) {
    let Some(end) = &h.end else { return };
    let missing: Vec<i64> = (h.start_revision + 1..=end.revision).filter(|r| !log.revs.contains_key(r)).collect();
    if !missing.is_empty() {
        findings.push(Finding::new(
            "watch",
            format!(
                "no watcher received revision {} ({} revisions missing between {} and {})",
                missing[0],
                missing.len(),
                h.start_revision,
                end.revision
            ),
            vec![format!("missing: {:?}", &missing[..missing.len().min(20)])],
        ));
    }
    if let Some((&r, _)) = log.revs.range(end.revision + 1..).next() {
        findings.push(Finding::new(
            "watch",
            format!("a watcher received revision {r}, beyond the final revision {}", end.revision),
            vec![],
        ));
    }
}

fn check_watcher(
    h: &History,
    w: &WatchLog,
    log: &RevisionLog,
    compactions: &BTreeSet<i64>,
    findings: &mut Vec<Finding>,
) {
    let name = format!("watcher {}", w.id);
    let mut fail = |reason: String, details: Vec<String>| findings.push(Finding::new("watch", reason, details));
    let mut delivered_all: HashSet<(i64, String)> = HashSet::new();
    // Highest revision delivered so far, and the response that delivered it.
    let mut max_rev = 0i64;
    let mut max_rev_resp = (usize::MAX, usize::MAX);
    // Highest revision a progress notification vouched for.
    let mut progress_floor = 0i64;
    let mut upto_last = 0i64;
    for (si, seg) in w.segments.iter().enumerate() {
        let at = |ri: usize| {
            format!("{name} segment {si} (on {}, from revision {}) response {ri}", seg.member, seg.start_revision)
        };
        let mut delivered: BTreeSet<i64> = BTreeSet::new();
        let mut upto = seg.start_revision - 1;
        for (ri, resp) in seg.responses.iter().enumerate() {
            if resp.canceled && resp.compact_revision > 0 {
                if !compactions.contains(&resp.compact_revision) {
                    fail(
                        format!(
                            "{}: canceled as compacted at {}, but no compaction at that revision was requested",
                            at(ri),
                            resp.compact_revision
                        ),
                        vec![format!("compactions requested: {compactions:?}")],
                    );
                } else if seg.start_revision >= resp.compact_revision {
                    fail(
                        format!(
                            "{}: canceled as compacted at {}, but it started at {}, which was kept",
                            at(ri),
                            resp.compact_revision,
                            seg.start_revision
                        ),
                        vec![],
                    );
                }
            }
            for ev in &resp.events {
                if !ev.key.starts_with(&h.prefix) {
                    fail(format!("{}: event for {} outside the watched prefix {}", at(ri), ev.key, h.prefix), vec![]);
                }
                if ev.revision < seg.start_revision {
                    fail(format!("{}: event at revision {} before the start revision", at(ri), ev.revision), vec![]);
                }
                if !delivered_all.insert((ev.revision, ev.key.clone())) {
                    fail(
                        format!(
                            "{}: unique: the event for {} at revision {} was delivered twice",
                            at(ri),
                            ev.key,
                            ev.revision
                        ),
                        vec![],
                    );
                } else if ev.revision <= progress_floor {
                    fail(
                        format!(
                            "{}: event at revision {} after a progress notification at {progress_floor}",
                            at(ri),
                            ev.revision
                        ),
                        vec![],
                    );
                } else if ev.revision < max_rev {
                    fail(format!("{}: ordered: revision {} after revision {max_rev}", at(ri), ev.revision), vec![]);
                } else if ev.revision == max_rev && max_rev_resp != (si, ri) {
                    fail(format!("{}: atomic: revision {} split across responses", at(ri), ev.revision), vec![]);
                }
                if ev.revision >= max_rev {
                    max_rev = ev.revision;
                    max_rev_resp = (si, ri);
                }
                delivered.insert(ev.revision);
                upto = upto.max(ev.revision);
            }
            if resp.progress {
                if let Some(r) = revs_between(log, seg.start_revision, resp.revision).find(|r| !delivered.contains(r)) {
                    fail(
                        format!(
                            "{}: progress notification at revision {} before revision {r} was delivered",
                            at(ri),
                            resp.revision
                        ),
                        vec![],
                    );
                }
                progress_floor = progress_floor.max(resp.revision);
                upto = upto.max(resp.revision);
            }
        }
        // Reliable and resumable: from its start revision up to what it vouched for, the
        // segment delivered every revision of the log.
        let missing: Vec<i64> =
            revs_between(log, seg.start_revision, upto).filter(|r| !delivered.contains(r)).collect();
        if !missing.is_empty() {
            fail(
                format!(
                    "{name} segment {si} (on {}, from revision {}): reliable: revision {} missing ({} missing up to {upto})",
                    seg.member,
                    seg.start_revision,
                    missing[0],
                    missing.len()
                ),
                vec![format!("missing: {:?}", &missing[..missing.len().min(20)])],
            );
        }
        upto_last = upto;
    }
    if let (Some(end), Some(last)) = (&h.end, w.segments.last()) {
        if last.end == "closed" && upto_last < end.revision {
            fail(format!("{name} stopped at revision {upto_last}; the store reached {}", end.revision), vec![]);
        }
    }
}

/// The log's revisions in `from..=to` (none when `to < from`).
fn revs_between(log: &RevisionLog, from: i64, to: i64) -> impl Iterator<Item = i64> + '_ {
    log.revs.range(from..=to.max(from)).map(|(r, _)| *r).filter(move |r| *r <= to)
}
