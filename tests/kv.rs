//! KV behaviour through the real etcdctl: every Range/Put/DeleteRange/Txn/Compact flag
//! etcdctl exposes, on one member and through a follower of three.

use crate::common::*;

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn revisions_versions_and_put_flags() {
    let c = Cluster::start(1);
    let ep = &c.endpoints();
    // An empty store is at revision 1, so the first write makes revision 2.
    let r = json(ep, &["put", "foo", "bar"]);
    assert_eq!(r["header"]["revision"], 2);
    ok(ep, &["put", "foo", "bar2"]);
    let g = json(ep, &["get", "foo"]);
    assert_eq!(g["count"], 1);
    let kv = &g["kvs"][0];
    assert_eq!(kv["key"], b64("foo"));
    assert_eq!(kv["value"], b64("bar2"));
    assert_eq!(kv["create_revision"], 2);
    assert_eq!(kv["mod_revision"], 3);
    assert_eq!(kv["version"], 2);

    // --prev-kv returns the value being replaced.
    let out = ok(ep, &["put", "foo", "bar3", "--prev-kv"]);
    assert_eq!(out, "OK\nfoo\nbar2\n");
    // --ignore-value keeps the value but bumps version and revision.
    ok(ep, &["put", "foo", "--ignore-value"]);
    let kv = &json(ep, &["get", "foo"])["kvs"][0];
    assert_eq!(kv["value"], b64("bar3"));
    assert_eq!(kv["version"], 4);
    assert_eq!(kv["mod_revision"], 5);
    // ... and needs an existing key, with etcd's error text.
    let err = fails(ep, &["put", "nokey", "--ignore-value"]);
    assert!(err.contains("etcdserver: key not found"), "{err}");
    // An empty key is refused.
    let err = fails(ep, &["put", "", "v"]);
    assert!(err.contains("key is not provided"), "{err}");
    // A lease that does not exist is refused and costs no revision.
    let err = fails(ep, &["put", "k", "v", "--lease=1234"]);
    assert!(err.contains("requested lease not found"), "{err}");
    assert_eq!(json(ep, &["get", "foo"])["header"]["revision"], 5);

    // Delete makes a tombstone: the key is gone, its version history restarts.
    assert_eq!(ok(ep, &["del", "foo"]), "1\n");
    assert_eq!(ok(ep, &["get", "foo"]), "");
    assert_eq!(ok(ep, &["del", "foo"]), "0\n");
    ok(ep, &["put", "foo", "again"]);
    let kv = &json(ep, &["get", "foo"])["kvs"][0];
    assert_eq!(kv["version"], 1);
    assert_eq!(kv["create_revision"], 7);
    // A historical read sees the old value.
    let old = json(ep, &["get", "foo", "--rev=3"]);
    assert_eq!(old["kvs"][0]["value"], b64("bar2"));
    assert_eq!(old["header"]["revision"], 7, "header carries the current revision");
    assert_eq!(ok(ep, &["get", "foo", "--rev=6"]), "", "deleted at revision 6");
    let err = fails(ep, &["get", "foo", "--rev=100"]);
    assert!(err.contains("required revision is a future revision"), "{err}");
}

#[test]
fn range_options() {
    let c = Cluster::start(1);
    let ep = &c.endpoints();
    for (k, v) in [("a1", "z"), ("a2", "y"), ("a3", "x"), ("b1", "w"), ("a2", "yy")] {
        ok(ep, &["put", k, v]);
    }
    assert_eq!(ok(ep, &["get", "a", "--prefix", "--keys-only"]), "a1\n\na2\n\na3\n\n");
    let g = json(ep, &["get", "a", "--prefix", "--limit=2"]);
    assert_eq!(g["kvs"].as_array().unwrap().len(), 2);
    assert_eq!(g["more"], true);
    assert_eq!(g["count"], 3, "count ignores the limit");
    assert_eq!(ok(ep, &["get", "a2", "--from-key", "--keys-only"]), "a2\n\na3\n\nb1\n\n");
    assert_eq!(ok(ep, &["get", "a1", "a3", "--keys-only"]), "a1\n\na2\n\n");
    assert_eq!(
        ok(ep, &["get", "a", "--prefix", "--sort-by=VALUE", "--order=ASCEND", "--keys-only"]),
        "a3\n\na2\n\na1\n\n"
    );
    assert_eq!(ok(ep, &["get", "a", "--prefix", "--order=DESCEND", "--keys-only"]), "a3\n\na2\n\na1\n\n");
    assert_eq!(
        ok(ep, &["get", "a", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "--keys-only", "--limit=1"]),
        "a2\n\n"
    );
    assert_eq!(
        ok(ep, &["get", "a", "--prefix", "--sort-by=VERSION", "--order=DESCEND", "--keys-only", "--limit=1"]),
        "a2\n\n"
    );
    // Serializable reads are served locally and see the same data.
    assert_eq!(ok(ep, &["get", "a1", "--consistency=s", "--print-value-only"]), "z\n");
    // Revision filters (etcdctl has no flags for them; the etcd-client tests cover those).
    assert_eq!(ok(ep, &["del", "a", "--prefix", "--prev-kv"]), "3\na1\nz\na2\nyy\na3\nx\n");
    assert_eq!(ok(ep, &["get", "", "--from-key", "--keys-only"]), "b1\n\n");
}

#[test]
fn compaction_removes_history() {
    let c = Cluster::start(1);
    let ep = &c.endpoints();
    for i in 0..5 {
        ok(ep, &["put", "k", &format!("v{i}")]);
    }
    // revisions 2..=6 hold v0..v4
    assert_eq!(ok(ep, &["get", "k", "--rev=3", "--print-value-only"]), "v1\n");
    assert_eq!(ok(ep, &["compaction", "5", "--physical"]), "compacted revision 5\n");
    let err = fails(ep, &["get", "k", "--rev=4"]);
    assert!(err.contains("required revision has been compacted"), "{err}");
    assert_eq!(
        ok(ep, &["get", "k", "--rev=5", "--print-value-only"]),
        "v3\n",
        "the compaction revision stays readable"
    );
    assert_eq!(ok(ep, &["get", "k", "--print-value-only"]), "v4\n");
    let err = fails(ep, &["compaction", "5"]);
    assert!(err.contains("required revision has been compacted"), "{err}");
    let err = fails(ep, &["compaction", "50"]);
    assert!(err.contains("required revision is a future revision"), "{err}");
    // A key deleted before the compaction revision disappears from history entirely.
    ok(ep, &["put", "gone", "x"]);
    ok(ep, &["del", "gone"]);
    let rev = json(ep, &["get", "k"])["header"]["revision"].as_i64().unwrap();
    ok(ep, &["compaction", &rev.to_string()]);
    assert_eq!(ok(ep, &["get", "gone", "--rev", &rev.to_string()]), "");
    assert_eq!(ok(ep, &["get", "k", "--print-value-only"]), "v4\n");
}

#[test]
fn txn_compare_branches_and_errors() {
    let c = Cluster::start(1);
    let ep = &c.endpoints();
    ok(ep, &["put", "key1", "v1"]);
    ok(ep, &["put", "counter", "1"]);
    let script = "value(\"key1\") = \"v1\"\nmod(\"counter\") > \"0\"\n\nput key1 v2\nget counter\n\nput key1 bad\n\n";
    let o = etcdctl_stdin(ep, &["txn"], Some(script));
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "SUCCESS\n\nOK\n\ncounter\n1\n");
    assert_eq!(ok(ep, &["get", "key1", "--print-value-only"]), "v2\n");
    // The failure branch runs when a compare fails; compares on a missing key's value fail.
    let script = "value(\"missing\") = \"\"\n\nput x 1\n\nput y 2\n\n";
    let o = etcdctl_stdin(ep, &["txn"], Some(script));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "FAILURE\n\nOK\n");
    assert_eq!(ok(ep, &["get", "y", "--print-value-only"]), "2\n");
    assert_eq!(ok(ep, &["get", "x"]), "");
    // version("missing") = "0" succeeds: a missing key compares as zero.
    let o = etcdctl_stdin(ep, &["txn"], Some("version(\"missing\") = \"0\"\n\nput x 1\n\n\n"));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "SUCCESS\n\nOK\n");
    // One revision per txn, whatever it writes.
    let before = json(ep, &["get", "x"])["header"]["revision"].as_i64().unwrap();
    let o = etcdctl_stdin(ep, &["txn"], Some("\nput a 1\nput b 2\ndel x\n\n\n"));
    assert!(o.status.success(), "{}", text(&o));
    let g = json(ep, &["get", "a"]);
    assert_eq!(g["header"]["revision"], before + 1);
    assert_eq!(json(ep, &["get", "b"])["kvs"][0]["mod_revision"], before + 1);
    // Writing one key twice is refused.
    let o = etcdctl_stdin(ep, &["txn"], Some("\nput a 1\nput a 2\n\n\n"));
    assert!(!o.status.success());
    assert!(text(&o).contains("duplicate key given in txn request"), "{}", text(&o));
    let o = etcdctl_stdin(ep, &["txn"], Some("\ndel a --prefix\nput ab 2\n\n\n"));
    assert!(text(&o).contains("duplicate key given in txn request"), "{}", text(&o));
    // More than 128 operations are refused.
    let many: String = (0..129).map(|i| format!("put k{i} v\n")).collect();
    let o = etcdctl_stdin(ep, &["txn"], Some(&format!("\n{many}\n\n")));
    assert!(text(&o).contains("too many operations in txn request"), "{}", text(&o));
    // A read-only txn costs no revision.
    let before = json(ep, &["get", "a"])["header"]["revision"].as_i64().unwrap();
    let o = etcdctl_stdin(ep, &["txn", "-w", "json"], Some("\nget a\n\n\n"));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["header"]["revision"], before);
}

#[test]
fn oversized_request_is_refused() {
    let c = Cluster::start_with(1, &["--max-request-bytes", "10000"]);
    let ep = &c.endpoints();
    let big = "x".repeat(20000);
    let err = fails(ep, &["put", "big", &big]);
    assert!(err.contains("etcdserver: request is too large"), "{err}");
    ok(ep, &["put", "small", &"x".repeat(5000)]);
}

#[test]
fn three_members_every_member_serves_every_request() {
    let c = Cluster::start(3);
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    let f = &c.members[follower].endpoint();
    let l = &c.members[leader].endpoint();
    // A write sent to a follower is forwarded; the revision is the cluster's.
    let r = json(f, &["put", "via-follower", "1"]);
    let rev = r["header"]["revision"].as_i64().unwrap();
    assert_eq!(r["header"]["member_id"], json(f, &["endpoint", "status"])[0]["Status"]["header"]["member_id"]);
    // A linearizable read on any member sees it at once.
    for m in &c.members {
        let g = json(&m.endpoint(), &["get", "via-follower"]);
        assert_eq!(g["kvs"][0]["mod_revision"], rev, "member {}", m.name);
    }
    // As in etcd, a member answers a write once it has applied it itself: a serializable
    // read right after it on the same member sees it.
    for i in 0..20 {
        ok(f, &["put", "ryw", &i.to_string()]);
        assert_eq!(ok(f, &["get", "ryw", "--consistency=s", "--print-value-only"]), format!("{i}\n"));
    }
    // ... and a compaction through a follower holds there when it returns.
    let r = json(f, &["put", "ryw", "last"]);
    let rev = r["header"]["revision"].as_i64().unwrap();
    ok(f, &["compact", &rev.to_string()]);
    let w = etcdctl(f, &["watch", "ryw", "--rev", &(rev - 5).to_string()]);
    assert!(text(&w).contains("required revision has been compacted"), "{}", text(&w));
    ok(l, &["put", "via-leader", "2"]);
    assert_eq!(ok(f, &["get", "via-leader", "--print-value-only"]), "2\n");
    let o = etcdctl_stdin(f, &["txn"], Some("value(\"via-leader\") = \"2\"\n\nput t ok\n\n\n"));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "SUCCESS\n\nOK\n");
    // Every member reports the same cluster id and leader.
    let st = json(&c.endpoints(), &["endpoint", "status"]);
    let arr = st.as_array().unwrap();
    assert_eq!(arr.len(), 3);
    for s in arr {
        assert_eq!(s["Status"]["header"]["cluster_id"], arr[0]["Status"]["header"]["cluster_id"]);
        assert_eq!(s["Status"]["leader"], arr[0]["Status"]["leader"]);
    }
    // etcdctl 3.4 prints health lines on stderr.
    let health = text(&etcdctl(&c.endpoints(), &["endpoint", "health"]));
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    // member list shows names and client URLs once members published them.
    let list = ok(l, &["member", "list"]);
    for m in &c.members {
        assert!(list.contains(&format!("started, {}, http://127.0.0.1:{}", m.name, m.peer_port)), "{list}");
    }
}

#[test]
fn leader_failure_loses_nothing_and_restart_rejoins() {
    let mut c = Cluster::start(3);
    for i in 0..20 {
        ok(&c.endpoints(), &["put", &format!("k{i}"), &format!("v{i}")]);
    }
    let leader = c.wait_leader();
    c.kill(leader);
    // The survivors elect a new leader and keep serving, with every acknowledged write.
    let eps = c.running_endpoints();
    ok(&eps, &["put", "after", "kill"]);
    assert_eq!(json(&eps, &["get", "k", "--prefix", "--limit=1"])["count"], 20);
    // The killed member rejoins from its data dir and catches up.
    c.start_member(leader);
    c.wait_ready();
    let ep = c.members[leader].endpoint();
    assert_eq!(ok(&ep, &["get", "after", "--print-value-only"]), "kill\n");
    assert_eq!(ok(&ep, &["get", "k19", "--consistency=s", "--print-value-only"]), "v19\n");
}

#[test]
fn quorum_loss_refuses_writes_but_serves_serializable_reads() {
    let mut c = Cluster::start(3);
    ok(&c.endpoints(), &["put", "k", "v"]);
    c.kill(1);
    c.kill(2);
    let ep = c.members[0].endpoint();
    let o = etcdctl(&ep, &["put", "k", "v2", "--command-timeout=3s"]);
    assert!(!o.status.success(), "a write without quorum must fail: {}", text(&o));
    assert_eq!(ok(&ep, &["get", "k", "--consistency=s", "--print-value-only"]), "v\n");
    c.start_member(1);
    c.wait_ready();
    ok(&c.running_endpoints(), &["put", "k", "v3"]);
    assert_eq!(ok(&ep, &["get", "k", "--print-value-only"]), "v3\n");
}

#[test]
fn restarted_single_member_keeps_data_and_identity() {
    let mut c = Cluster::start(1);
    let ep = c.endpoints();
    ok(&ep, &["put", "durable", "yes"]);
    let before = json(&ep, &["endpoint", "status"]);
    c.kill(0);
    c.start_member(0);
    c.wait_ready();
    assert_eq!(ok(&ep, &["get", "durable", "--print-value-only"]), "yes\n");
    let after = json(&ep, &["endpoint", "status"]);
    assert_eq!(before[0]["Status"]["header"]["cluster_id"], after[0]["Status"]["header"]["cluster_id"]);
    assert_eq!(before[0]["Status"]["header"]["member_id"], after[0]["Status"]["header"]["member_id"]);
}

#[test]
fn a_member_far_behind_catches_up_from_a_snapshot() {
    let mut c = Cluster::start_with(3, &["--snapshot-count", "100"]);
    let leader = c.wait_leader();
    let lagger = (leader + 1) % 3;
    c.kill(lagger);
    let eps = c.running_endpoints();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Sequential writes: each is its own log entry (concurrent ones would be grouped).
    rt.block_on(async {
        let mut cl = etcd_client::Client::connect(eps.split(',').collect::<Vec<_>>(), None).await.unwrap();
        for t in 0..16 {
            for i in 0..40 {
                cl.put(format!("snap/{t:02}/{i:03}"), format!("{t}-{i}"), None).await.unwrap();
            }
        }
    });
    c.start_member(lagger);
    c.wait_ready();
    let ep = c.members[lagger].endpoint();
    let g = json(&ep, &["get", "snap/", "--prefix", "--limit=1", "--consistency=s"]);
    assert_eq!(g["count"], 640);
    assert_eq!(ok(&ep, &["get", "snap/15/039", "--consistency=s", "--print-value-only"]), "15-39\n");
    let log = std::fs::read_to_string(&c.members[lagger].log).unwrap();
    assert!(log.contains("installed snapshot"), "the member should have caught up from a snapshot:\n{log}");
    // History came along: an old revision reads the same on this member as elsewhere,
    // and every member hashes to the same value.
    let created = json(&ep, &["get", "snap/00/000"])["kvs"][0]["create_revision"].as_i64().unwrap();
    let old = json(&ep, &["get", "snap/", "--prefix", "--limit=1", &format!("--rev={created}"), "--consistency=s"]);
    assert!(old["count"].as_i64().unwrap() >= 1);
    let rev = json(&ep, &["get", "x"])["header"]["revision"].as_i64().unwrap();
    let hashes = json(&c.endpoints(), &["endpoint", "hashkv", &format!("--rev={rev}")]);
    let hashes: Vec<_> = hashes.as_array().unwrap().iter().map(|h| h["HashKV"]["hash"].clone()).collect();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    // The member also keeps serving writes afterwards.
    ok(&ep, &["put", "after-snapshot", "1"]);
    assert_eq!(ok(&c.endpoints(), &["get", "after-snapshot", "--print-value-only"]), "1\n");
}

/// `--snapshot-count` counts requests, as etcd's does: concurrent writes the batcher
/// groups into a few log entries still bring the snapshot on once enough have applied.
#[test]
fn snapshot_count_counts_requests_not_log_entries() {
    let mut c = Cluster::start_with(1, &["--snapshot-count", "500"]);
    c.wait_ready();
    let snap_dir = c.members[0].data_dir.join("member/snap");
    let has_snapshot = || {
        std::fs::read_dir(&snap_dir)
            .is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".snap")))
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let entries = rt.block_on(async {
        let cl = etcd_client::Client::connect([c.members[0].endpoint()], None).await.unwrap();
        let index = |s: etcd_client::StatusResponse| s.raft_index();
        let before = index(cl.maintenance_client().status().await.unwrap());
        // 600 writes, 100 in flight at a time.
        for round in 0..6 {
            let puts = (0..100).map(|i| {
                let mut kv = cl.kv_client();
                async move { kv.put(format!("batched/{round}/{i:03}"), "v", None).await.unwrap() }
            });
            futures::future::join_all(puts).await;
        }
        let after = index(cl.maintenance_client().status().await.unwrap());
        after - before
    });
    assert!(entries < 500, "600 concurrent writes took {entries} log entries; the test needs fewer than 500");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !has_snapshot() {
        assert!(std::time::Instant::now() < deadline, "no snapshot after 600 requests with --snapshot-count 500");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A restart from the snapshot and what the log kept after it serves all 600 keys.
    c.kill(0);
    c.start_member(0);
    c.wait_ready();
    assert_eq!(json(&c.endpoints(), &["get", "batched/", "--prefix", "--limit=1"])["count"], 600);
}
