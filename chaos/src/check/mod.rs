//! The checkers. Each one validates the whole history (no sampling) and reports
//! findings; a run passes when there are none.

pub mod consistency;
pub mod linearizable;
pub mod log;
pub mod watch;

#[cfg(test)]
mod tests;

use crate::history::History;

#[derive(Clone, Debug)]
pub struct Finding {
    /// `linearizable`, `watch`, `lost-write`, `stale-read`, `revision`, `lease`, `hash`, `end`.
    pub checker: &'static str,
    pub reason: String,
    /// Supporting lines: the operations involved, a minimal failing sub-history.
    pub details: Vec<String>,
}

impl Finding {
    pub fn new(checker: &'static str, reason: String, details: Vec<String>) -> Finding {
        Finding { checker, reason, details }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// What was checked, one line per checker.
    pub summary: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.findings.is_empty()
    }

    /// `PASS` or `FAIL: <checker>: <reason>` (the first finding).
    pub fn verdict(&self) -> String {
        match self.findings.first() {
            None => "PASS".into(),
            Some(f) => format!("FAIL: {}: {}", f.checker, f.reason),
        }
    }
}

/// Runs every checker on `h`.
pub fn check(h: &History) -> Report {
    let mut findings = Vec::new();
    let mut summary = Vec::new();
    let log = log::RevisionLog::build(h, &mut findings);
    summary.push(format!(
        "revision log: {} revisions from {} watchers ({}..{})",
        log.revs.len(),
        h.watches.len(),
        h.start_revision,
        h.end.as_ref().map(|e| e.revision).unwrap_or_default()
    ));

    let mut written = std::collections::HashMap::new();
    for (rev, events) in &log.revs {
        for ev in events.iter().filter(|e| e.kind == crate::history::EventKind::Put) {
            written.insert((ev.key.clone(), ev.value.clone()), *rev);
        }
    }
    let complete =
        h.end.as_ref().is_some_and(|end| (h.start_revision + 1..=end.revision).all(|r| log.revs.contains_key(&r)));
    let keys = linearizable::key_histories(h, &linearizable::Written { at: &written, complete });
    let total: usize = keys.iter().map(|(_, ops)| ops.len()).sum();
    for (key, ops) in &keys {
        match linearizable::check_key(ops) {
            linearizable::Verdict::Linearizable => {}
            linearizable::Verdict::NotLinearizable => {
                let small = linearizable::minimize(ops);
                let mut details = vec![format!(
                    "minimal failing sub-history of {key} ({} of {} operations):",
                    small.len(),
                    ops.len()
                )];
                details.extend(linearizable::describe(h, &small));
                findings.push(Finding::new(
                    "linearizable",
                    format!("the history of {key} is not linearizable"),
                    details,
                ));
            }
            linearizable::Verdict::Undecided => findings.push(Finding::new(
                "linearizable",
                format!("the search over {key} ({} operations) gave up without a verdict", ops.len()),
                vec![],
            )),
        }
    }
    summary.push(format!("linearizable: {} keys, {total} operations searched", keys.len()));

    watch::check(h, &log, &mut findings);
    let events: usize =
        h.watches.iter().flat_map(|w| &w.segments).flat_map(|s| &s.responses).map(|r| r.events.len()).sum();
    let segments: usize = h.watches.iter().map(|w| w.segments.len()).sum();
    summary.push(format!("watch: {} watchers, {segments} streams, {events} events", h.watches.len()));
    consistency::writes(h, &log, &mut findings);
    consistency::reads(h, &log, &mut findings);
    consistency::revisions(h, &mut findings);
    consistency::leases(h, &log, &mut findings);
    consistency::end_state(h, &log, &mut findings);
    summary.push(format!(
        "writes, reads, revisions, leases, final state: {} operations; hashes of {} members",
        h.ops.len(),
        h.end.as_ref().map(|e| e.hashes.len()).unwrap_or_default()
    ));
    Report { findings, summary }
}
