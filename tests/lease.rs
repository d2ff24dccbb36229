//! Leases through the real etcdctl: grant, attach, keep-alive, time-to-live, list,
//! revoke, expiry (one revision for all attached keys), and expiry across a leader kill.

use std::time::{Duration, Instant};

use crate::common::*;

/// "lease 694d7b4c28ed0a0f granted with TTL(10s)" -> the hex id.
fn granted_id(out: &str) -> String {
    let id = out.split_whitespace().nth(1).unwrap_or_else(|| panic!("unexpected grant output {out:?}"));
    assert!(out.contains("granted with TTL("), "{out}");
    id.to_string()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn grant_attach_keepalive_revoke() {
    let c = Cluster::start(1);
    let ep = &c.endpoints();
    let out = ok(ep, &["lease", "grant", "100"]);
    assert!(out.ends_with("granted with TTL(100s)\n"), "{out}");
    let id = granted_id(&out);
    // The minimum TTL is 1.5 election timeouts, rounded up: 2s with the defaults.
    assert!(ok(ep, &["lease", "grant", "1"]).ends_with("granted with TTL(2s)\n"));
    ok(ep, &["put", "lk1", "v", &format!("--lease={id}")]);
    ok(ep, &["put", "lk2", "v", &format!("--lease={id}")]);
    let g = json(ep, &["get", "lk1"]);
    assert_eq!(format!("{:016x}", g["kvs"][0]["lease"].as_i64().unwrap()), id);
    let ttl = ok(ep, &["lease", "timetolive", &id, "--keys"]);
    assert!(ttl.starts_with(&format!("lease {id} granted with TTL(100s), remaining(")), "{ttl}");
    assert!(ttl.trim_end().ends_with("attached keys([lk1 lk2])"), "{ttl}");
    assert_eq!(ok(ep, &["lease", "keep-alive", "--once", &id]), format!("lease {id} keepalived with TTL(100)\n"));
    let list = ok(ep, &["lease", "list"]);
    assert!(list.starts_with("found 2 leases\n") && list.contains(&id), "{list}");
    // Moving a key to no lease detaches it.
    ok(ep, &["put", "lk2", "v2"]);
    assert!(ok(ep, &["lease", "timetolive", &id, "--keys"]).trim_end().ends_with("attached keys([lk1])"));

    let before = json(ep, &["get", "lk1"])["header"]["revision"].as_i64().unwrap();
    assert_eq!(ok(ep, &["lease", "revoke", &id]), format!("lease {id} revoked\n"));
    assert_eq!(ok(ep, &["get", "lk1"]), "");
    assert_eq!(ok(ep, &["get", "lk2", "--print-value-only"]), "v2\n");
    assert_eq!(json(ep, &["get", "lk2"])["header"]["revision"], before + 1);

    // Unknown leases answer as etcd does.
    assert_eq!(ok(ep, &["lease", "timetolive", &id]), format!("lease {id} already expired\n"));
    assert!(fails(ep, &["lease", "revoke", &id]).contains("requested lease not found"));
    assert!(fails(ep, &["lease", "keep-alive", "--once", &id]).contains("requested lease not found"));
    assert!(fails(ep, &["put", "k", "v", &format!("--lease={id}")]).contains("requested lease not found"));
}

#[test]
fn expiry_deletes_all_attached_keys_in_one_revision() {
    let c = Cluster::start(1);
    let ep = &c.endpoints();
    let id = granted_id(&ok(ep, &["lease", "grant", "2"]));
    for k in ["e1", "e2", "e3"] {
        ok(ep, &["put", k, "v", &format!("--lease={id}")]);
    }
    let rev = json(ep, &["get", "e1"])["header"]["revision"].as_i64().unwrap();
    // Not before the TTL...
    assert_eq!(ok(ep, &["get", "e", "--prefix", "--keys-only"]), "e1\n\ne2\n\ne3\n\n");
    // ...but soon after it.
    wait_until("the lease to expire", || ok(ep, &["get", "e", "--prefix", "--keys-only"]).is_empty());
    assert_eq!(json(ep, &["get", "e1"])["header"]["revision"], rev + 1, "one revision deletes every key");
    assert_eq!(ok(ep, &["lease", "timetolive", &id]), format!("lease {id} already expired\n"));
}

#[test]
fn leases_survive_a_leader_kill_and_then_expire() {
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    let id = granted_id(&ok(&eps, &["lease", "grant", "6"]));
    ok(&eps, &["put", "held", "v", &format!("--lease={id}")]);
    let leader = c.wait_leader();
    let started = Instant::now();
    c.kill(leader);
    let eps = c.running_endpoints();
    // The new leader restarts the clock at the full TTL: the key outlives the old
    // deadline's remainder, and a keep-alive through a follower reaches the new leader.
    c.wait_leader();
    assert_eq!(ok(&eps, &["get", "held", "--print-value-only"]), "v\n");
    let ka = ok(&eps, &["lease", "keep-alive", "--once", &id]);
    assert_eq!(ka, format!("lease {id} keepalived with TTL(6)\n"));
    let kept = Instant::now();
    wait_until("the lease to expire under the new leader", || ok(&eps, &["get", "held"]).is_empty());
    assert!(kept.elapsed() >= Duration::from_secs(5), "expired before its TTL: {:?}", kept.elapsed());
    assert!(started.elapsed() >= Duration::from_secs(6));
}
