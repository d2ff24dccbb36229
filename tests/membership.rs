//! Membership changes through the real etcdctl: a learner added and promoted under
//! write load, a SIGKILLed member replaced, quorum-losing changes refused, a removed
//! member stopping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

/// The hex id of the member named `name` in `member list`.
fn member_id(eps: &str, name: &str) -> String {
    let list = ok(eps, &["member", "list"]);
    list.lines()
        .find(|l| l.split(", ").nth(2) == Some(name))
        .unwrap_or_else(|| panic!("no member {name} in:\n{list}"))
        .split(", ")
        .next()
        .unwrap()
        .to_string()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_writer(eps: String) -> (Arc<AtomicBool>, std::thread::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        let mut i = 0;
        while !s.load(Ordering::SeqCst) {
            if etcdctl(&eps, &["put", &format!("w/{i:05}"), "v"]).status.success() {
                i += 1;
            }
        }
        i
    });
    (stop, h)
}

#[test]
fn learner_added_and_promoted_under_write_load() {
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    let (stop, writer) = start_writer(eps.clone());
    let n = c.new_member("s3");
    let url = c.peer_url(n);
    let out = ok(&eps, &["member", "add", "s3", "--learner", &format!("--peer-urls={url}")]);
    assert!(out.contains("added to cluster"), "{out}");
    // A second learner is refused, as in etcd 3.4.
    let err = fails(&eps, &["member", "add", "s4", "--learner", "--peer-urls=http://127.0.0.1:1"]);
    assert!(err.contains("too many learner members in cluster"), "{err}");
    let initial =
        format!("{},s3={url}", (0..3).map(|i| format!("s{i}={}", c.peer_url(i))).collect::<Vec<_>>().join(","));
    c.join_member(n, &initial);
    wait_until("s3 to start", || ok(&eps, &["member", "list"]).contains(", started, s3,"));
    let id = member_id(&eps, "s3");
    let list = ok(&eps, &["member", "list"]);
    assert!(list.contains(&format!("{id}, started, s3, {url}")) && list.contains("true"), "{list}");
    // A learner serves serializable reads but not linearizable ones.
    let lep = c.members[n].endpoint();
    wait_until("the learner to catch up", || !etcdctl(&lep, &["get", "w/00000", "--consistency=s"]).stdout.is_empty());
    assert!(fails(&lep, &["get", "w/00000"]).contains("rpc not supported for learner"));
    wait_until("the promotion to be accepted", || etcdctl(&eps, &["member", "promote", &id]).status.success());
    stop.store(true, Ordering::SeqCst);
    assert!(writer.join().unwrap() > 0);
    let list = ok(&eps, &["member", "list"]);
    assert_eq!(list.lines().filter(|l| l.ends_with("false")).count(), 4, "four voters:\n{list}");
    // The new voter serves linearizable reads and holds the same data.
    ok(&eps, &["put", "after-promote", "1"]);
    assert_eq!(ok(&lep, &["get", "after-promote", "--print-value-only"]), "1\n");
    let rev = json(&eps, &["get", "x"])["header"]["revision"].as_i64().unwrap();
    let all = format!("{eps},{lep}");
    let hashes = json(&all, &["endpoint", "hashkv", &format!("--rev={rev}")]);
    let hashes: Vec<_> = hashes.as_array().unwrap().iter().map(|h| h["HashKV"]["hash"].clone()).collect();
    assert!(hashes.len() == 4 && hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
}

#[test]
fn replace_a_killed_member() {
    let mut c = Cluster::start(3);
    ok(&c.endpoints(), &["put", "before", "1"]);
    let dead = 2;
    let dead_id = member_id(&c.endpoints(), "s2");
    c.kill(dead);
    c.wait_leader();
    let eps = c.running_endpoints();
    // Removing a live member now would leave one started voter of two: refused.
    let live_id = member_id(&eps, "s1");
    let err = fails(&eps, &["member", "remove", &live_id]);
    assert!(err.contains("not enough started members"), "{err}");
    // Remove the dead one, then add a fresh member in its place.
    let out = ok(&eps, &["member", "remove", &dead_id]);
    // etcdctl pads the id to 16 columns ("Member  749f..." when it has 15 digits).
    assert!(out.split_whitespace().collect::<Vec<_>>()[..3] == ["Member", dead_id.as_str(), "removed"], "{out}");
    let n = c.new_member("s3");
    let url = c.peer_url(n);
    ok(&eps, &["member", "add", "s3", &format!("--peer-urls={url}")]);
    let initial = format!("s0={},s1={},s3={url}", c.peer_url(0), c.peer_url(1));
    c.join_member(n, &initial);
    c.wait_ready();
    let all = c.running_endpoints();
    let health = text(&etcdctl(&all, &["endpoint", "health"]));
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    assert_eq!(ok(&c.members[n].endpoint(), &["get", "before", "--print-value-only"]), "1\n");
    let list = ok(&all, &["member", "list"]);
    assert!(!list.contains(&dead_id) && list.lines().count() == 3, "{list}");
}

#[test]
fn a_removed_member_stops_serving() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    let victim = (leader + 1) % 3;
    let id = member_id(&c.endpoints(), &format!("s{victim}"));
    let others: String = (0..3).filter(|i| *i != victim).map(|i| c.members[i].endpoint()).collect::<Vec<_>>().join(",");
    ok(&others, &["member", "remove", &id]);
    wait_until("the removed member to exit", || !c.is_alive(victim));
    let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
    assert!(log.contains("removed from the cluster"), "{log}");
    ok(&others, &["put", "after-remove", "1"]);
    let err = fails(&others, &["member", "promote", &id]);
    assert!(err.contains("member not found"), "{err}");
}

#[test]
fn move_leader_transfers_leadership() {
    let c = Cluster::start(3);
    let leader = c.wait_leader();
    let target = (leader + 1) % 3;
    let id = member_id(&c.endpoints(), &format!("s{target}"));
    let err = fails(&c.endpoints(), &["move-leader", "1234"]);
    assert!(err.contains("bad leader transferee"), "{err}");
    let out = ok(&c.endpoints(), &["move-leader", &id]);
    assert!(out.contains(&format!("to {id}")), "{out}");
    assert_eq!(c.wait_leader(), target);
    ok(&c.endpoints(), &["put", "after-move", "1"]);
    assert_eq!(ok(&c.members[leader].endpoint(), &["get", "after-move", "--print-value-only"]), "1\n");
}
