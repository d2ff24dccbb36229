//! Linearizability of each register key, by the Wing–Gong search with Lowe's
//! memoization (the algorithm Porcupine implements), under a model of an etcd key:
//! its value and mod_revision.
//!
//! Operations that were `unknown` (may or may not have happened) get a return time
//! after every other operation, so the search may place them anywhere after their
//! invocation, or at the very end, where they change nothing anybody observed. Failed
//! operations and unacknowledged reads are left out. The model is nondeterministic
//! (an unknown write leaves the mod_revision only bounded from below; an unknown
//! compare-and-swap may or may not have matched), so its state is the set of states
//! the key could be in.
//!
//! Multi-key txns are projected onto each key (a put at the txn's revision); that they
//! are atomic across keys is checked against the revision log (`consistency`).

use std::collections::{HashMap, HashSet};

use crate::history::{Call, History, Op, Outcome};

/// One operation on one key, as the model sees it.
#[derive(Clone, Debug)]
pub struct KeyOp {
    /// Index into `History::ops`.
    pub op: usize,
    pub invoke: u64,
    /// `u64::MAX` for unknown outcomes.
    pub complete: u64,
    pub input: Input,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// `rev` is `None` when the outcome is unknown.
    Put {
        value: u32,
        rev: Option<i64>,
    },
    Delete {
        result: Option<DeleteResult>,
    },
    Get {
        value: Option<u32>,
        mod_rev: i64,
    },
    Cas {
        expect: i64,
        value: u32,
        result: Option<CasResult>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteResult {
    pub deleted: bool,
    pub rev: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasResult {
    Swapped {
        rev: i64,
    },
    /// The compare failed and the key read `value` at `mod_rev`.
    Kept {
        value: Option<u32>,
        mod_rev: i64,
    },
}

/// A state the key can be in. `rev` is the revision of its last change (0: never
/// written); when not `exact` it is only a lower bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Reg {
    value: Option<u32>,
    rev: i64,
    exact: bool,
}

impl Reg {
    const INITIAL: Reg = Reg { value: None, rev: 0, exact: true };

    /// Can a change at revision `r` come after this state?
    fn may_precede(&self, r: i64) -> bool {
        if self.exact {
            r > self.rev
        } else {
            r >= self.rev
        }
    }

    /// The states consistent with reading `value` at `mod_rev`.
    fn read(&self, value: Option<u32>, mod_rev: i64) -> Option<Reg> {
        if self.value != value {
            return None;
        }
        if value.is_none() {
            return Some(*self);
        }
        let fits = if self.exact { mod_rev == self.rev } else { mod_rev >= self.rev };
        fits.then_some(Reg { value, rev: mod_rev, exact: true })
    }

    fn written(&self, value: Option<u32>, rev: Option<i64>) -> Reg {
        match rev {
            Some(rev) => Reg { value, rev, exact: true },
            None => Reg { value, rev: self.rev + 1, exact: false },
        }
    }

    /// Could etcd's `mod_revision(key) == expect` be true / false here?
    fn compare(&self, expect: i64) -> (bool, bool) {
        match (self.value, self.exact) {
            (None, _) => (expect == 0, expect != 0),
            (Some(_), true) => (self.rev == expect, self.rev != expect),
            (Some(_), false) => (expect >= self.rev, true),
        }
    }

    fn step(&self, input: &Input, out: &mut Vec<Reg>) {
        match input {
            Input::Put { value, rev } => {
                if rev.is_none_or(|r| self.may_precede(r)) {
                    out.push(self.written(Some(*value), *rev));
                }
            }
            Input::Delete { result: Some(DeleteResult { deleted: true, rev }) } => {
                if self.value.is_some() && self.may_precede(*rev) {
                    out.push(Reg { value: None, rev: *rev, exact: true });
                }
            }
            Input::Delete { result: Some(DeleteResult { deleted: false, .. }) } => {
                if self.value.is_none() {
                    out.push(*self);
                }
            }
            Input::Delete { result: None } => {
                out.push(if self.value.is_some() { self.written(None, None) } else { *self });
            }
            Input::Get { value, mod_rev } => out.extend(self.read(*value, *mod_rev)),
            Input::Cas { expect, value, result } => {
                let (can_match, can_miss) = self.compare(*expect);
                match result {
                    Some(CasResult::Swapped { rev }) => {
                        if can_match && self.may_precede(*rev) && *rev > *expect {
                            out.push(self.written(Some(*value), Some(*rev)));
                        }
                    }
                    Some(CasResult::Kept { value: seen, mod_rev }) => {
                        if can_miss && (seen.is_none() || *mod_rev != *expect) {
                            out.extend(self.read(*seen, *mod_rev));
                        }
                    }
                    None => {
                        out.push(*self);
                        if can_match {
                            out.push(self.written(Some(*value), None));
                        }
                    }
                }
            }
        }
    }
}

/// Applies `input` to every state in `states`; `None` when no state allows it.
fn step_all(states: &[Reg], input: &Input) -> Option<Vec<Reg>> {
    let mut out = Vec::new();
    for s in states {
        s.step(input, &mut out);
    }
    out.sort();
    out.dedup();
    (!out.is_empty()).then_some(out)
}

/// What the revision log says about writes whose outcome the client never learned:
/// the revision of each (key, value) that was written, and whether the log is
/// complete (every revision of the run seen by some watcher).
pub struct Written<'a> {
    pub at: &'a HashMap<(String, String), i64>,
    pub complete: bool,
}

/// The per-key histories of the register keys (those under `<prefix>k/`).
///
/// A write with an unknown outcome whose value shows up in the revision log did
/// happen, at that revision; one whose value does not show up in a complete log did
/// not happen and is left out (etcd's robustness tests resolve them the same way).
/// What the log cannot settle (unknown deletes, or any unknown write when the log has
/// gaps) stays unknown for the search.
pub fn key_histories(h: &History, written: &Written) -> Vec<(String, Vec<KeyOp>)> {
    let register = format!("{}k/", h.prefix);
    let mut values: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: &str| {
        let n = values.len() as u32;
        *values.entry(v.to_string()).or_insert(n)
    };
    // For an unknown write of `value` to `key`: Some(Some(rev)) happened at rev,
    // Some(None) unknown, None did not happen.
    let resolve = |key: &str, value: &str| -> Option<Option<i64>> {
        match written.at.get(&(key.to_string(), value.to_string())) {
            Some(r) => Some(Some(*r)),
            None if written.complete => None,
            None => Some(None),
        }
    };
    let mut by_key: HashMap<String, Vec<KeyOp>> = HashMap::new();
    for (i, op) in h.ops.iter().enumerate() {
        if op.outcome == Outcome::Failed {
            continue;
        }
        let ok = op.outcome == Outcome::Ok;
        let ret = op.result.clone().unwrap_or_default();
        let complete = if ok { op.complete_us } else { u64::MAX };
        let mut push = |key: &str, input: Input| {
            if key.starts_with(&register) {
                by_key.entry(key.to_string()).or_default().push(KeyOp { op: i, invoke: op.invoke_us, complete, input });
            }
        };
        match &op.call {
            Call::Put { key, value, .. } => {
                let rev = if ok { Some(Some(ret.revision)) } else { resolve(key, value) };
                if let Some(rev) = rev {
                    push(key, Input::Put { value: intern(value), rev });
                }
            }
            Call::MultiPut { puts } => {
                for (key, value) in puts {
                    let rev = if ok { Some(Some(ret.revision)) } else { resolve(key, value) };
                    if let Some(rev) = rev {
                        push(key, Input::Put { value: intern(value), rev });
                    }
                }
            }
            Call::Delete { key } => {
                let result = ok.then_some(DeleteResult { deleted: ret.deleted > 0, rev: ret.revision });
                push(key, Input::Delete { result });
            }
            Call::Get { key, serializable: false } if ok => {
                let value = ret.value.as_deref().map(&mut intern);
                push(key, Input::Get { value, mod_rev: ret.mod_revision });
            }
            Call::Cas { key, expect_mod_revision, value } => {
                let result = if ok {
                    Some(Some(if ret.succeeded {
                        CasResult::Swapped { rev: ret.revision }
                    } else {
                        CasResult::Kept { value: ret.value.as_deref().map(&mut intern), mod_rev: ret.mod_revision }
                    }))
                } else {
                    // Not in a complete log: the compare failed or it never ran; either
                    // way the key did not change.
                    resolve(key, value).map(|r| r.map(|rev| CasResult::Swapped { rev }))
                };
                if let Some(result) = result {
                    push(key, Input::Cas { expect: *expect_mod_revision, value: intern(value), result });
                }
            }
            _ => {}
        }
    }
    let mut out: Vec<_> = by_key.into_iter().collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search ran out of its step budget.
    Undecided,
}

const STEP_BUDGET: u64 = 20_000_000;

/// The WGL search over one key's operations.
pub fn check_key(ops: &[KeyOp]) -> Verdict {
    // Entries: a call and a return per operation, in time order; at equal times calls
    // come first, so touching operations count as concurrent.
    #[derive(Clone, Copy)]
    struct Entry {
        op: usize,
        call: bool,
        prev: usize,
        next: usize,
        partner: usize,
    }
    const NIL: usize = usize::MAX;
    let n = ops.len();
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push((o.invoke, true, i));
        events.push((o.complete.max(o.invoke), false, i));
    }
    events.sort_by_key(|&(t, call, i)| (t, !call, i));
    // Entry 0 is the head sentinel.
    let mut e: Vec<Entry> = vec![Entry { op: NIL, call: false, prev: NIL, next: 1, partner: NIL }];
    let mut call_at = vec![0usize; n];
    for (k, &(_, call, i)) in events.iter().enumerate() {
        let idx = k + 1;
        e.push(Entry {
            op: i,
            call,
            prev: idx - 1,
            next: if k + 1 < events.len() { idx + 1 } else { NIL },
            partner: NIL,
        });
        if call {
            call_at[i] = idx;
        } else {
            let c = call_at[i];
            e[c].partner = idx;
            e[idx].partner = c;
        }
    }
    if events.is_empty() {
        return Verdict::Linearizable;
    }

    // Dancing links: an entry leaves the list and comes back to the same place.
    fn unlink(e: &mut [Entry], i: usize) {
        let (p, nx) = (e[i].prev, e[i].next);
        e[p].next = nx;
        if nx != NIL {
            e[nx].prev = p;
        }
    }
    fn relink(e: &mut [Entry], i: usize) {
        let (p, nx) = (e[i].prev, e[i].next);
        e[p].next = i;
        if nx != NIL {
            e[nx].prev = i;
        }
    }
    /// Takes a call and its return out of the list (the operation is linearized).
    fn lift(e: &mut [Entry], c: usize) {
        unlink(e, c);
        unlink(e, e[c].partner);
    }
    fn unlift(e: &mut [Entry], c: usize) {
        relink(e, e[c].partner);
        relink(e, c);
    }

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state = vec![Reg::INITIAL];
    let mut seen: HashSet<(Vec<u64>, Vec<Reg>)> = HashSet::new();
    let mut stack: Vec<(usize, Vec<Reg>)> = Vec::new();
    let mut cur = e[0].next;
    let mut steps = 0u64;
    while e[0].next != NIL {
        steps += 1;
        if steps > STEP_BUDGET {
            return Verdict::Undecided;
        }
        // At a return (or past the end, if every remaining call failed to go next) the
        // operation returning here could not be linearized: undo the last choice.
        let at_return = cur == NIL || !e[cur].call;
        if at_return {
            let Some((c, s)) = stack.pop() else { return Verdict::NotLinearizable };
            state = s;
            let op = e[c].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut e, c);
            cur = e[c].next;
            continue;
        }
        let entry = e[cur];
        if let Some(next) = step_all(&state, &ops[entry.op].input) {
            let mut lin = linearized.clone();
            lin[entry.op / 64] |= 1 << (entry.op % 64);
            if seen.insert((lin.clone(), next.clone())) {
                stack.push((cur, std::mem::replace(&mut state, next)));
                linearized = lin;
                lift(&mut e, cur);
                cur = e[0].next;
                continue;
            }
        }
        cur = entry.next;
    }
    Verdict::Linearizable
}

/// A smallest-found sub-history of a non-linearizable key history that is still not
/// linearizable: chunks of operations are dropped while the rest still fails. A write
/// is only dropped together with every read that saw its value, so the result does
/// not fail merely because a read lost its writer.
pub fn minimize(ops: &[KeyOp]) -> Vec<KeyOp> {
    let mut keep: Vec<KeyOp> = ops.to_vec();
    let mut checks = 0;
    let mut chunk = keep.len().div_ceil(2).max(1);
    loop {
        let mut start = keep.len();
        while start > 0 && checks < 3000 {
            let lo = start.saturating_sub(chunk);
            let candidate: Vec<KeyOp> = keep[..lo].iter().chain(&keep[start..]).cloned().collect();
            checks += 1;
            if readers_have_writers(&candidate) && check_key(&candidate) == Verdict::NotLinearizable {
                keep = candidate;
            }
            start = lo;
        }
        if chunk == 1 || checks >= 3000 {
            return keep;
        }
        chunk = chunk.div_ceil(2);
    }
}

fn readers_have_writers(ops: &[KeyOp]) -> bool {
    let written: HashSet<u32> = ops
        .iter()
        .filter_map(|o| match o.input {
            Input::Put { value, .. } | Input::Cas { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    ops.iter().all(|o| match &o.input {
        Input::Get { value: Some(v), .. } | Input::Cas { result: Some(CasResult::Kept { value: Some(v), .. }), .. } => {
            written.contains(v)
        }
        _ => true,
    })
}

/// One line per operation of a sub-history, for reports.
pub fn describe(h: &History, ops: &[KeyOp]) -> Vec<String> {
    ops.iter().map(|o| describe_op(&h.ops[o.op])).collect()
}

pub fn describe_op(op: &Op) -> String {
    let call = match &op.call {
        Call::Put { key, value, lease } if *lease != 0 => format!("put {key}={value} lease={lease:x}"),
        Call::Put { key, value, .. } => format!("put {key}={value}"),
        Call::Get { key, .. } => format!("{} {key}", op.call.name()),
        Call::Delete { key } => format!("delete {key}"),
        Call::Cas { key, expect_mod_revision, value } => {
            format!("cas {key} if mod={expect_mod_revision} then ={value}")
        }
        Call::MultiPut { puts } => {
            format!("multi-put {}", puts.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
        }
        Call::LeaseGrant { ttl } => format!("lease-grant ttl={ttl}"),
        Call::Compact { revision } => format!("compact {revision}"),
    };
    let result = match (&op.outcome, &op.result) {
        (crate::history::Outcome::Ok, Some(r)) => {
            let mut s = format!("ok rev={}", r.revision);
            if matches!(op.call, Call::Get { .. }) || (matches!(op.call, Call::Cas { .. }) && !r.succeeded) {
                match &r.value {
                    Some(v) => s += &format!(" -> {v}@{}", r.mod_revision),
                    None => s += " -> (absent)",
                }
            }
            if matches!(op.call, Call::Cas { .. }) {
                s += if r.succeeded { " swapped" } else { " kept" };
            }
            if matches!(op.call, Call::Delete { .. }) {
                s += &format!(" deleted={}", r.deleted);
            }
            s
        }
        (o, _) => format!("{o:?}").to_lowercase(),
    };
    format!(
        "#{} client {} on {} [{:.3}s..{:.3}s] {call}: {result}",
        op.id,
        op.client,
        op.member,
        op.invoke_us as f64 / 1e6,
        op.complete_us as f64 / 1e6
    )
}
