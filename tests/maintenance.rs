//! Maintenance: the NOSPACE alarm cycle (quota passed → writes refused, reads and
//! deletes served, alarm persisted across a restart, disarmed after compact + defrag).

use std::time::Duration;

use crate::common::*;

#[test]
fn nospace_alarm_cycle() {
    let mut c = Cluster::start_with(1, &["--quota-backend-bytes", "1500000"]);
    let ep = c.endpoints();
    ok(&ep, &["put", "small", "1"]);
    let big = "x".repeat(100_000);
    let mut refused = None;
    for i in 0..100 {
        let o = etcdctl(&ep, &["put", "big", &big]);
        if !o.status.success() {
            refused = Some((i, text(&o)));
            break;
        }
    }
    let (writes, err) = refused.expect("the quota was never reached");
    assert!(writes > 3, "refused too early, after {writes} writes");
    assert!(err.contains("etcdserver: mvcc: database space exceeded"), "{err}");
    let id = json(&ep, &["endpoint", "status"])[0]["Status"]["header"]["member_id"].as_u64().unwrap();
    assert_eq!(ok(&ep, &["alarm", "list"]), format!("memberID:{id} alarm:NOSPACE \n"));
    let st = json(&ep, &["endpoint", "status"]);
    assert_eq!(st[0]["Status"]["errors"][0], format!("memberID:{id} alarm:NOSPACE "));
    // Reads and deletes still work; every put is refused, small or not.
    assert_eq!(ok(&ep, &["get", "small", "--print-value-only"]), "1\n");
    assert!(fails(&ep, &["put", "tiny", "1"]).contains("database space exceeded"));
    assert_eq!(ok(&ep, &["del", "small"]), "1\n");
    // The alarm is replicated state: it survives a restart.
    c.kill(0);
    c.start_member(0);
    c.wait_ready();
    assert_eq!(ok(&ep, &["alarm", "list"]), format!("memberID:{id} alarm:NOSPACE \n"));
    assert!(fails(&ep, &["put", "tiny", "1"]).contains("database space exceeded"));
    // Recover: compact away the history, defragment, disarm.
    let rev = json(&ep, &["get", "big"])["header"]["revision"].as_i64().unwrap();
    ok(&ep, &["compaction", &rev.to_string(), "--physical"]);
    ok(&ep, &["defrag"]);
    assert_eq!(ok(&ep, &["alarm", "disarm"]), format!("memberID:{id} alarm:NOSPACE \n"));
    assert_eq!(ok(&ep, &["alarm", "list"]), "");
    ok(&ep, &["put", "tiny", "1"]);
    assert_eq!(ok(&ep, &["get", "big", "--print-value-only"]).len(), 100_001);
}

/// `--listen-metrics-urls` serves Prometheus metrics under etcd's names, which follow
/// the member: leadership, revision, database size, open watchers; and `/health`.
#[test]
fn metrics_and_health_are_served_with_etcds_names() {
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let c = Cluster::start_with_each(3, |i| vec!["--listen-metrics-urls".into(), format!("http://{}", addrs[i])]);
    let leader = c.wait_leader();
    // Everything below is asked of the leader: watchers are counted by the member
    // that serves them.
    let addr = addrs[leader].clone();
    let ep = c.members[leader].endpoint();
    for i in 0..5 {
        ok(&ep, &["put", &format!("k{i}"), "v"]);
    }
    let mut watch = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &ep, "watch", "k", "--prefix"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let value = |samples: &[Sample], name: &str| {
        samples.iter().find(|(n, _, _)| n == name).map(|s| s.2).unwrap_or_else(|| panic!("no {name}"))
    };
    let t = std::time::Instant::now();
    let samples = loop {
        let (code, body) = http_get_plain(&addr, "/metrics");
        assert_eq!(code, 200, "{body}");
        let s = prometheus(&body);
        if value(&s, "etcd_debugging_mvcc_watcher_total") >= 1.0 || t.elapsed() > Duration::from_secs(10) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(value(&samples, "etcd_debugging_mvcc_watcher_total"), 1.0, "the open watch");
    assert_eq!(value(&samples, "etcd_server_has_leader"), 1.0);
    assert_eq!(value(&samples, "etcd_server_is_leader"), 1.0);
    assert!(value(&samples, "etcd_server_leader_changes_seen_total") >= 1.0);
    let status = json(&ep, &["endpoint", "status", "-w", "json"]);
    let rev = status[0]["Status"]["header"]["revision"].as_f64().unwrap();
    assert_eq!(value(&samples, "etcd_debugging_mvcc_current_revision"), rev);
    assert!(value(&samples, "etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert!(value(&samples, "etcd_server_proposals_applied_total") >= 5.0);
    // Latency histograms: every write was fsynced, committed to the database and
    // applied; the buckets add up to the count.
    for h in [
        "etcd_disk_wal_fsync_duration_seconds",
        "etcd_disk_backend_commit_duration_seconds",
        "skiff_server_apply_duration_seconds",
    ] {
        let count = value(&samples, &format!("{h}_count"));
        assert!(count >= 5.0, "{h}_count is {count}");
        let inf = samples.iter().find(|(n, l, _)| *n == format!("{h}_bucket") && l["le"] == "+Inf").unwrap();
        assert_eq!(inf.2, count, "{h}");
        assert!(value(&samples, &format!("{h}_sum")) > 0.0, "{h}");
    }
    // Heartbeats to each of the two followers, labelled with their member ids as
    // `etcdctl member list` prints them.
    let members = ok(&ep, &["member", "list"]);
    let peers: Vec<&Sample> = samples
        .iter()
        .filter(|(n, l, v)| n == "etcd_network_peer_round_trip_time_seconds_count" && *v > 0.0 && l.contains_key("To"))
        .collect();
    assert_eq!(peers.len(), 2, "{peers:?}");
    for (_, l, _) in peers {
        assert!(members.contains(&l["To"]), "{} not in {members}", l["To"]);
    }
    let (code, body) = http_get_plain(&addr, "/health");
    assert_eq!((code, body.as_str()), (200, r#"{"health":"true","reason":""}"#));
    // The watcher is gone once its client is.
    let t = std::time::Instant::now();
    while value(&prometheus(&http_get_plain(&addr, "/metrics").1), "etcd_debugging_mvcc_watcher_total") != 0.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the watcher count did not drop");
        std::thread::sleep(Duration::from_millis(100));
    }
}
