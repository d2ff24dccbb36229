//! The revision log: what happened at each revision, assembled from every watcher's
//! events. Every watcher watches the whole prefix, so two watchers that delivered the
//! same revision must have delivered the same events; where they differ the log
//! cannot be built and that is itself a finding.

use std::collections::{BTreeMap, HashMap};

use crate::history::{Event, EventKind, History};

use super::Finding;

#[derive(Debug, Default)]
pub struct RevisionLog {
    pub revs: BTreeMap<i64, Vec<Event>>,
    /// Earliest time any watcher received each revision.
    pub first_seen_us: BTreeMap<i64, u64>,
    /// Per key, its value (None: deleted) and lease after each revision that changed it.
    by_key: HashMap<String, BTreeMap<i64, Option<(String, i64)>>>,
}

impl RevisionLog {
    pub fn build(h: &History, findings: &mut Vec<Finding>) -> RevisionLog {
        let mut log = RevisionLog::default();
        // Which watcher first gave each revision, to name it in a disagreement.
        let mut source: BTreeMap<i64, usize> = BTreeMap::new();
        for w in &h.watches {
            for seg in &w.segments {
                // A revision's events, merged across consecutive responses (a split
                // revision is reported by the watch checker, not here).
                let mut by_rev: BTreeMap<i64, (Vec<Event>, u64)> = BTreeMap::new();
                for resp in &seg.responses {
                    for ev in &resp.events {
                        let slot = by_rev.entry(ev.revision).or_insert_with(|| (Vec::new(), resp.recv_us));
                        if !slot.0.contains(ev) {
                            slot.0.push(ev.clone());
                        }
                    }
                }
                for (rev, (events, recv)) in by_rev {
                    let t = log.first_seen_us.entry(rev).or_insert(recv);
                    *t = (*t).min(recv);
                    match log.revs.get(&rev) {
                        None => {
                            log.revs.insert(rev, events);
                            source.insert(rev, w.id);
                        }
                        Some(known) if *known == events => {}
                        Some(known) => findings.push(Finding::new(
                            "watch",
                            format!(
                                "watchers {} and {} disagree on revision {rev}",
                                source.get(&rev).copied().unwrap_or_default(),
                                w.id
                            ),
                            vec![
                                format!(
                                    "watcher {}: {}",
                                    source.get(&rev).copied().unwrap_or_default(),
                                    events_str(known)
                                ),
                                format!("watcher {}: {}", w.id, events_str(&events)),
                            ],
                        )),
                    }
                }
            }
        }
        for (rev, events) in &log.revs {
            for ev in events {
                let state = match ev.kind {
                    EventKind::Put => Some((ev.value.clone(), ev.lease)),
                    EventKind::Delete => None,
                };
                log.by_key.entry(ev.key.clone()).or_default().insert(*rev, state);
            }
        }
        log
    }

    /// The value, mod_revision and lease of `key` as of revision `rev` (None: absent).
    pub fn state_at(&self, key: &str, rev: i64) -> Option<(String, i64, i64)> {
        let (r, state) = self.by_key.get(key)?.range(..=rev).next_back()?;
        state.as_ref().map(|(v, lease)| (v.clone(), *r, *lease))
    }

    /// Every key's state at `rev`.
    pub fn replay(&self, rev: i64) -> BTreeMap<String, (String, i64, i64)> {
        let mut state = BTreeMap::new();
        for (r, events) in self.revs.range(..=rev) {
            for ev in events {
                match ev.kind {
                    EventKind::Put => {
                        state.insert(ev.key.clone(), (ev.value.clone(), *r, ev.lease));
                    }
                    EventKind::Delete => {
                        state.remove(&ev.key);
                    }
                }
            }
        }
        state
    }
}

pub fn events_str(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| match e.kind {
            EventKind::Put => format!("put {}={}", e.key, e.value),
            EventKind::Delete => format!("delete {}", e.key),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
