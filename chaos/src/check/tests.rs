//! Hand-made histories: a consistent one that must pass, and planted violations that
//! each checker must catch. A checker that never fails proves nothing.

use super::linearizable::{self, check_key, Input, KeyOp, Verdict};
use super::{check, Report};
use crate::history::*;

const S: u64 = 1_000_000;

/// Builds histories on key `chaos/k/a` and friends, one watcher by default.
struct B {
    h: History,
}

fn k(name: &str) -> String {
    format!("chaos/k/{name}")
}

fn ret(revision: i64) -> Ret {
    Ret { revision, ..Default::default() }
}

impl B {
    fn new() -> B {
        B {
            h: History {
                version: FORMAT_VERSION,
                seed: 1,
                members: 3,
                prefix: "chaos/".into(),
                start_revision: 1,
                watches: vec![WatchLog { id: 0, segments: vec![segment(1)] }],
                ..Default::default()
            },
        }
    }

    fn op(&mut self, client: usize, call: Call, t: (u64, u64), outcome: Outcome, result: Option<Ret>) -> &mut B {
        let id = self.h.ops.len();
        self.h.ops.push(Op {
            id,
            client,
            member: "m1".into(),
            invoke_us: t.0,
            complete_us: t.1,
            call,
            outcome,
            error: None,
            result,
        });
        self
    }

    /// An acknowledged put at `rev`, also delivered to every watcher.
    fn put(&mut self, key: &str, value: &str, rev: i64, t: (u64, u64)) -> &mut B {
        self.op(0, Call::Put { key: k(key), value: value.into(), lease: 0 }, t, Outcome::Ok, Some(ret(rev)));
        self.deliver(vec![put_ev(rev, key, value)], t.1);
        self
    }

    fn get(&mut self, key: &str, seen: Option<(&str, i64)>, rev: i64, t: (u64, u64)) -> &mut B {
        let r = Ret {
            revision: rev,
            value: seen.map(|s| s.0.into()),
            mod_revision: seen.map_or(0, |s| s.1),
            ..Default::default()
        };
        self.op(1, Call::Get { key: k(key), serializable: false }, t, Outcome::Ok, Some(r))
    }

    /// Lease 0x42 (granted at 10 s with `ttl`) holding `chaos/lease/x` from revision 5.
    fn leased_key(&mut self, ttl: i64) {
        let grant = Ret { revision: 4, lease_id: 0x42, ..Default::default() };
        self.op(3, Call::LeaseGrant { ttl }, (10 * S, 10 * S + 1000), Outcome::Ok, Some(grant));
        let put = Call::Put { key: "chaos/lease/x".into(), value: "l".into(), lease: 0x42 };
        self.op(3, put, (11 * S, 11 * S + 1000), Outcome::Ok, Some(ret(5)));
        let ev =
            Event { revision: 5, kind: EventKind::Put, key: "chaos/lease/x".into(), value: "l".into(), lease: 0x42 };
        self.deliver(vec![ev], 11 * S);
    }

    fn deliver(&mut self, events: Vec<Event>, at: u64) {
        for w in &mut self.h.watches {
            let seg = w.segments.last_mut().unwrap();
            seg.responses.push(WatchResp {
                recv_us: at + 1000,
                revision: events[0].revision,
                events: events.clone(),
                ..Default::default()
            });
        }
    }

    /// The end state: the final revision, each key's last value, equal hashes.
    fn end(&mut self, revision: i64, kvs: &[(&str, &str, i64)]) -> &mut B {
        self.h.end = Some(EndState {
            read_us: 100 * S,
            revision,
            kvs: kvs
                .iter()
                .map(|(key, v, m)| FinalKv { key: k(key), value: (*v).into(), mod_revision: *m, lease: 0 })
                .collect(),
            hashes: ["m1", "m2", "m3"]
                .iter()
                .map(|m| MemberHash { member: (*m).into(), revision, hash: 7, compact_revision: 0, error: None })
                .collect(),
        });
        for w in &mut self.h.watches {
            w.segments.last_mut().unwrap().end = "closed".into();
        }
        self
    }

    fn check(&self) -> Report {
        check(&self.h)
    }
}

fn segment(from: i64) -> Segment {
    Segment { member: "m1".into(), start_revision: from, created_us: 0, responses: Vec::new(), end: String::new() }
}

fn put_ev(rev: i64, key: &str, value: &str) -> Event {
    Event { revision: rev, kind: EventKind::Put, key: k(key), value: value.into(), lease: 0 }
}

/// Three writes to `a` and reads that saw each in turn.
fn consistent() -> B {
    let mut b = B::new();
    b.put("a", "v1", 2, (0, S))
        .get("a", Some(("v1", 2)), 2, (2 * S, 3 * S))
        .put("a", "v2", 3, (4 * S, 5 * S))
        .get("a", Some(("v2", 3)), 3, (6 * S, 7 * S))
        .put("b", "w1", 4, (8 * S, 9 * S));
    b.end(4, &[("a", "v2", 3), ("b", "w1", 4)]);
    b
}

fn assert_caught(r: &Report, checker: &str, text: &str) {
    assert!(
        r.findings.iter().any(|f| f.checker == checker && f.reason.contains(text)),
        "expected a {checker} finding containing {text:?}, got {:#?}",
        r.findings
    );
}

#[test]
fn a_consistent_history_passes() {
    let r = consistent().check();
    assert!(r.passed(), "{:#?}", r.findings);
    assert_eq!(r.verdict(), "PASS");
}

#[test]
fn a_stale_read_is_not_linearizable() {
    let mut b = consistent();
    // After v2 was acknowledged, a read still returns v1.
    b.get("a", Some(("v1", 2)), 4, (10 * S, 11 * S));
    let r = b.check();
    assert_caught(&r, "linearizable", "chaos/k/a");
    assert_caught(&r, "stale-read", "returned v1@2");
    assert!(r.verdict().starts_with("FAIL: linearizable: "), "{}", r.verdict());
    // The minimal sub-history names the stale read and the write it missed, and little else.
    let f = r.findings.iter().find(|f| f.checker == "linearizable").unwrap();
    let ops: Vec<&String> = f.details.iter().skip(1).collect();
    assert!(ops.len() <= 3, "{ops:#?}");
    assert!(ops.iter().any(|l| l.contains("put chaos/k/a=v2")), "{ops:#?}");
    assert!(ops.iter().any(|l| l.contains("-> v1@2")), "{ops:#?}");
}

#[test]
fn a_lost_write_is_caught() {
    let mut b = consistent();
    // Acknowledged at revision 4, but the history and the final state do not have it.
    b.op(2, Call::Put { key: k("c"), value: "x".into(), lease: 0 }, (9 * S, 10 * S), Outcome::Ok, Some(ret(4)));
    let r = b.check();
    assert_caught(&r, "lost-write", "acknowledged write");
}

#[test]
fn a_final_state_without_a_write_is_caught() {
    let mut b = consistent();
    b.h.end.as_mut().unwrap().kvs.retain(|kv| kv.key != k("b"));
    let r = b.check();
    assert_caught(&r, "lost-write", "final state of chaos/k/b");
}

#[test]
fn a_watch_gap_is_caught() {
    let mut b = consistent();
    // A second watcher that never got revision 3.
    let mut w = b.h.watches[0].clone();
    w.id = 1;
    w.segments[0].responses.retain(|r| r.revision != 3);
    b.h.watches.push(w);
    let r = b.check();
    assert_caught(&r, "watch", "watcher 1 segment 0 (on m1, from revision 1): reliable: revision 3 missing");
}

#[test]
fn a_revision_no_watcher_saw_is_caught() {
    let mut b = consistent();
    b.h.watches[0].segments[0].responses.retain(|r| r.revision != 3);
    let r = b.check();
    assert_caught(&r, "watch", "no watcher received revision 3");
}

#[test]
fn a_duplicated_event_is_caught() {
    let mut b = consistent();
    let again = b.h.watches[0].segments[0].responses[1].clone();
    b.h.watches[0].segments[0].responses.push(again);
    let r = b.check();
    assert_caught(&r, "watch", "unique: the event for chaos/k/a at revision 3 was delivered twice");
}

#[test]
fn events_out_of_order_are_caught() {
    let mut b = consistent();
    b.h.watches[0].segments[0].responses.swap(1, 2);
    let r = b.check();
    assert_caught(&r, "watch", "ordered: revision 3 after revision 4");
}

#[test]
fn a_split_revision_is_caught() {
    let mut b = consistent();
    // A two-key txn at revision 5 delivered in two responses.
    b.op(
        0,
        Call::MultiPut { puts: vec![(k("a"), "t1".into()), (k("b"), "t2".into())] },
        (12 * S, 13 * S),
        Outcome::Ok,
        Some(ret(5)),
    );
    b.deliver(vec![put_ev(5, "a", "t1")], 13 * S);
    b.deliver(vec![put_ev(5, "b", "t2")], 13 * S);
    b.end(5, &[("a", "t1", 5), ("b", "t2", 5)]);
    let r = b.check();
    assert_caught(&r, "watch", "atomic: revision 5 split across responses");
}

#[test]
fn a_progress_notification_ahead_of_events_is_caught() {
    let mut b = consistent();
    let seg = &mut b.h.watches[0].segments[0];
    let progress = WatchResp { recv_us: 9 * S, revision: 4, progress: true, ..Default::default() };
    seg.responses.insert(2, progress); // before revision 4 was delivered
    let r = b.check();
    assert_caught(&r, "watch", "progress notification at revision 4 before revision 4 was delivered");
}

#[test]
fn a_resumed_watch_that_skips_history_is_caught() {
    let mut b = consistent();
    // The stream broke after revision 2 and was re-created from 3, but the new stream
    // started with revision 4.
    let seg = &mut b.h.watches[0].segments[0];
    let rest: Vec<WatchResp> = seg.responses.drain(1..).collect();
    seg.end = "error: connection lost".into();
    let mut resumed = segment(3);
    resumed.responses = rest.into_iter().filter(|r| r.revision != 3).collect();
    resumed.end = "closed".into();
    b.h.watches[0].segments.push(resumed);
    let mut other = b.h.watches[0].clone();
    other.id = 1;
    other.segments = vec![consistent().h.watches[0].segments[0].clone()];
    b.h.watches.push(other);
    let r = b.check();
    assert_caught(&r, "watch", "watcher 0 segment 1 (on m1, from revision 3): reliable: revision 3 missing");
}

#[test]
fn a_revision_going_backwards_is_caught() {
    let mut b = consistent();
    // Starts after the put at revision 4 completed, yet reports revision 3.
    b.get("a", Some(("v2", 3)), 3, (10 * S, 11 * S));
    let r = b.check();
    assert_caught(&r, "revision", "revision went backwards");
}

#[test]
fn a_lease_expiring_early_is_caught() {
    let mut b = consistent();
    b.leased_key(10);
    // Deleted by expiry 3 s after the grant, though its TTL is 10 s.
    b.deliver(
        vec![Event {
            revision: 6,
            kind: EventKind::Delete,
            key: "chaos/lease/x".into(),
            value: String::new(),
            lease: 0,
        }],
        13 * S,
    );
    b.end(6, &[("a", "v2", 3), ("b", "w1", 4)]);
    let r = b.check();
    assert_caught(&r, "lease", "before its TTL ran out");
}

#[test]
fn a_lease_that_never_expires_is_caught() {
    let mut b = consistent();
    b.leased_key(2);
    b.end(5, &[("a", "v2", 3), ("b", "w1", 4)]);
    b.h.end.as_mut().unwrap().kvs.push(FinalKv {
        key: "chaos/lease/x".into(),
        value: "l".into(),
        mod_revision: 5,
        lease: 0x42,
    });
    let r = b.check();
    assert_caught(&r, "lease", "still holds chaos/lease/x");
}

#[test]
fn members_with_different_hashes_are_caught() {
    let mut b = consistent();
    b.h.end.as_mut().unwrap().hashes[2].hash = 8;
    let r = b.check();
    assert_caught(&r, "hash", "members differ at revision 4");
}

#[test]
fn a_write_nobody_made_is_caught() {
    let mut b = consistent();
    b.deliver(vec![put_ev(5, "a", "ghost")], 12 * S);
    b.end(5, &[("a", "ghost", 5), ("b", "w1", 4)]);
    let r = b.check();
    assert_caught(&r, "lost-write", "which no client requested");
}

#[test]
fn unknown_writes_are_resolved_from_the_log() {
    // A put that timed out but happened (a later read saw it), and one that did not.
    let mut b = consistent();
    b.op(2, Call::Put { key: k("a"), value: "v3".into(), lease: 0 }, (10 * S, 13 * S), Outcome::Unknown, None);
    b.deliver(vec![put_ev(5, "a", "v3")], 11 * S);
    b.op(2, Call::Put { key: k("a"), value: "never".into(), lease: 0 }, (14 * S, 17 * S), Outcome::Unknown, None);
    b.get("a", Some(("v3", 5)), 5, (18 * S, 19 * S));
    b.end(5, &[("a", "v3", 5), ("b", "w1", 4)]);
    let r = b.check();
    assert!(r.passed(), "{:#?}", r.findings);
    // A read of the value that never happened is a violation.
    b.get("a", Some(("never", 6)), 5, (20 * S, 21 * S));
    let r = b.check();
    assert_caught(&r, "linearizable", "chaos/k/a");
}

fn kop(op: usize, t: (u64, u64), input: Input) -> KeyOp {
    KeyOp { op, invoke: t.0, complete: t.1, input }
}

#[test]
fn the_search_places_unknown_writes_like_porcupine() {
    let put = |v, rev| Input::Put { value: v, rev };
    let get = |v: Option<u32>, m| Input::Get { value: v, mod_rev: m };
    // An unknown put (no response) explains a later read of its value.
    let ops =
        vec![kop(0, (0, 10), put(1, Some(2))), kop(1, (20, u64::MAX), put(2, None)), kop(2, (30, 40), get(Some(2), 3))];
    assert_eq!(check_key(&ops), Verdict::Linearizable);
    // ...but not a read that finished before the unknown put was even sent.
    let ops =
        vec![kop(0, (0, 10), put(1, Some(2))), kop(1, (50, u64::MAX), put(2, None)), kop(2, (30, 40), get(Some(2), 3))];
    assert_eq!(check_key(&ops), Verdict::NotLinearizable);
    // Concurrent operations may take effect in either order.
    let ops = vec![kop(0, (0, 10), put(1, Some(2))), kop(1, (5, 30), get(Some(1), 2)), kop(2, (4, 8), get(None, 0))];
    assert_eq!(check_key(&ops), Verdict::Linearizable);
    // A mod_revision that does not match the write that produced the value.
    let ops = vec![kop(0, (0, 10), put(1, Some(2))), kop(1, (20, 30), get(Some(1), 7))];
    assert_eq!(check_key(&ops), Verdict::NotLinearizable);
    // Revisions must grow in the order writes take effect.
    let ops = vec![kop(0, (0, 10), put(1, Some(5))), kop(1, (20, 30), put(2, Some(4)))];
    assert_eq!(check_key(&ops), Verdict::NotLinearizable);
    // A compare-and-swap that succeeded against a revision the key never had.
    let cas = Input::Cas { expect: 9, value: 3, result: Some(linearizable::CasResult::Swapped { rev: 10 }) };
    let ops = vec![kop(0, (0, 10), put(1, Some(2))), kop(1, (20, 30), cas)];
    assert_eq!(check_key(&ops), Verdict::NotLinearizable);
}

#[test]
fn histories_survive_a_json_round_trip() {
    let b = consistent();
    let dir = std::env::temp_dir().join(format!("skiff-chaos-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("h.json");
    b.h.save(&path).unwrap();
    let back = History::load(&path).unwrap();
    assert_eq!(back.ops.len(), b.h.ops.len());
    assert!(check(&back).passed());
    std::fs::write(&path, "{\"version\": 99}").unwrap();
    assert!(History::load(&path).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compacted_history_served_after_the_compaction_returned_is_caught() {
    let mut b = consistent();
    b.op(4, Call::Compact { revision: 3 }, (10 * S, 10 * S + 500), Outcome::Ok, Some(ret(4)));
    // A watch created on the same member afterwards, from revision 2, still gets it.
    let mut late = segment(2);
    late.created_us = 11 * S;
    late.responses = b.h.watches[0].segments[0].responses[..1].to_vec();
    late.end = "stopped".into();
    b.h.watches.push(WatchLog { id: 1, segments: vec![late] });
    let r = b.check();
    assert_caught(&r, "watch", "delivered revision 2 although m1 had compacted at 3");
}
