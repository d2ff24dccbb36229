//! Differential tests: the same etcdctl commands against a real etcd 3.4 (Debian's
//! etcd-server) and against Skiff, each freshly started on loopback; outputs must be
//! identical once cluster/member ids and raft terms are normalised.

use std::process::Output;

use crate::common::*;

/// One step: etcdctl arguments and optional stdin.
type Step<'a> = (&'a [&'a str], Option<&'a str>);

fn normalise(o: &Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let stdout = match serde_json::from_str::<serde_json::Value>(stdout.trim()) {
        Ok(mut v) => {
            scrub(&mut v);
            v.to_string()
        }
        // `-w fields` prints `"ClusterID" : 123` lines.
        Err(_) => stdout
            .lines()
            .map(|l| match l.split_once(" : ") {
                Some((k, _)) if matches!(k, "\"ClusterID\"" | "\"MemberID\"" | "\"RaftTerm\"") => {
                    format!("{k} : <id>\n")
                }
                _ => format!("{l}\n"),
            })
            .collect(),
    };
    // etcdctl may log retries on stderr; the error line is what users read.
    let stderr = String::from_utf8_lossy(&o.stderr);
    let err: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error:")).collect();
    format!("exit={:?}\n{stdout}{}", o.status.code(), err.join("\n"))
}

fn scrub(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                // Ids and terms differ between any two clusters; sizes and raft indexes
                // depend on the storage engine and on how many entries bootstrap took.
                if matches!(
                    k.as_str(),
                    "cluster_id"
                        | "member_id"
                        | "raft_term"
                        | "ClusterID"
                        | "MemberID"
                        | "RaftTerm"
                        | "leader"
                        | "raftIndex"
                        | "raftTerm"
                        | "raftAppliedIndex"
                        | "dbSize"
                        | "dbSizeInUse"
                        | "Endpoint"
                ) {
                    *val = serde_json::Value::from("<id>");
                } else {
                    scrub(val);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
        _ => {}
    }
}

/// Runs the steps against a fresh 3-member etcd 3.4 and a fresh 3-member Skiff cluster.
fn run_both(steps: &[Step]) {
    let etcd = Cluster::start_etcd(3);
    let skiff = Cluster::start(3);
    for (args, stdin) in steps {
        let a = normalise(&etcdctl_stdin(&etcd.endpoints(), args, *stdin));
        let b = normalise(&etcdctl_stdin(&skiff.endpoints(), args, *stdin));
        assert_eq!(a, b, "etcd 3.4 and Skiff differ on `etcdctl {}`", args.join(" "));
    }
}

#[test]
fn kv_commands_match_etcd() {
    run_both(&[
        (&["put", "foo", "bar"], None),
        (&["put", "foo", "bar2", "-w", "json"], None),
        (&["get", "foo", "-w", "json"], None),
        (&["put", "foo", "bar3", "--prev-kv"], None),
        (&["put", "foo", "--ignore-value", "-w", "json"], None),
        (&["put", "nope", "--ignore-value"], None),
        (&["put", "a1", "1"], None),
        (&["put", "a2", "22"], None),
        (&["put", "a3", "333"], None),
        (&["get", "a", "--prefix", "-w", "json"], None),
        (&["get", "a", "--prefix", "--limit=2", "-w", "json"], None),
        (&["get", "a", "--prefix", "--keys-only"], None),
        (&["get", "a", "--prefix", "--sort-by=VALUE", "--order=DESCEND"], None),
        (&["get", "a", "--prefix", "--sort-by=VALUE", "--order=ASCEND", "--keys-only"], None),
        (&["get", "a", "--prefix", "--order=DESCEND", "--limit=2", "-w", "json"], None),
        (&["endpoint", "health"], None),
        (&["endpoint", "status", "-w", "json"], None),
        (&["get", "a", "--prefix", "--sort-by=CREATE", "--order=ASCEND", "-w", "json"], None),
        (&["get", "a2", "--from-key"], None),
        (&["get", "a1", "a3", "-w", "json"], None),
        (&["get", "foo", "--rev=2", "-w", "json"], None),
        (&["get", "foo", "--rev=99"], None),
        (&["get", "missing", "-w", "json"], None),
        (&["get", "foo", "-w", "fields"], None),
        (&["del", "a2", "--prev-kv", "-w", "json"], None),
        (&["del", "nothing", "-w", "json"], None),
        (&["del", "a", "--prefix"], None),
        (&["put", "", "x"], None),
        (&["get", "", "--from-key", "-w", "json"], None),
    ]);
}

#[test]
fn txn_and_compaction_match_etcd() {
    run_both(&[
        (&["put", "k1", "v1"], None),
        (&["put", "k2", "v2"], None),
        (&["txn", "-w", "json"], Some("value(\"k1\") = \"v1\"\n\nput k1 v11\nget k2\ndel k2\n\nget k1\n\n")),
        (&["txn"], Some("version(\"k1\") > \"5\"\n\nput k1 x\n\nget k1\nget nothing\n\n")),
        (&["txn"], Some("create(\"k1\") = \"2\"\nmod(\"k1\") < \"100\"\n\nput k3 v3\n\n\n")),
        (&["txn", "-w", "json"], Some("value(\"absent\") != \"x\"\n\nput k4 v4\n\nput k5 v5\n\n")),
        (&["txn"], Some("\nput d 1\nput d 2\n\n\n")),
        (&["txn"], Some("\ndel k --prefix\nput k9 9\n\n\n")),
        (&["get", "k", "--prefix", "-w", "json"], None),
        (&["compaction", "3"], None),
        (&["compaction", "3"], None),
        (&["compaction", "100"], None),
        (&["get", "k1", "--rev=2"], None),
        (&["get", "k1", "--rev=3", "-w", "json"], None),
        (&["get", "k", "--prefix", "-w", "json"], None),
    ]);
}

#[test]
fn historical_watch_matches_etcd() {
    let etcd = Cluster::start_etcd(1);
    let skiff = Cluster::start(1);
    let mut outputs = Vec::new();
    for c in [&etcd, &skiff] {
        let ep = c.endpoints();
        for (k, v) in [("w", "1"), ("w", "2"), ("x", "3"), ("w", "4")] {
            ok(&ep, &["put", k, v]);
        }
        ok(&ep, &["del", "w"]);
        // `watch --rev` replays history and then blocks; read what it printed by then.
        let mut child = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([format!("--endpoints={ep}"), "watch".into(), "w".into(), "--rev=2".into(), "--prev-kv".into()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        child.kill().unwrap();
        let out = child.wait_with_output().unwrap();
        outputs.push(String::from_utf8_lossy(&out.stdout).to_string());
    }
    assert_eq!(outputs[0], outputs[1]);
    assert!(outputs[1].contains("DELETE\nw\n4\nw\n\n"), "{}", outputs[1]);
}
