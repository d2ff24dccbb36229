//! Maintenance: the NOSPACE alarm cycle (quota passed → writes refused, reads and
//! deletes served, alarm persisted across a restart, disarmed after compact + defrag).

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
