//! Backup and restore: `etcdctl snapshot save` from a cluster under write load, `skiff
//! snapshot restore` into a new cluster, every key and revision equal; damaged files are
//! refused with nothing written; revisions can be bumped so watchers never go back.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::*;

fn skiff(args: &[&str]) -> std::process::Output {
    Command::new(skiff_bin()).args(args).output().unwrap()
}

/// A new cluster restored from `file`, one data dir per member, started like any other.
pub(crate) fn restore_cluster(file: &Path, n: usize, extra: &[&str]) -> Cluster {
    Cluster::start_prepared(n, |m, initial| {
        let mut args = vec![
            "snapshot".to_string(),
            "restore".into(),
            file.display().to_string(),
            "--name".into(),
            m.name.clone(),
            "--data-dir".into(),
            m.data_dir.display().to_string(),
            "--initial-cluster".into(),
            initial.to_string(),
            "--initial-advertise-peer-urls".into(),
            format!("http://127.0.0.1:{}", m.peer_port),
            "--initial-cluster-token".into(),
            "restored".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = Command::new(skiff_bin()).args(&args).output().unwrap();
        assert!(out.status.success(), "restore failed: {}", text(&out));
    })
}

/// Everything under the prefix as (key, value, create, mod, version, lease) at a revision.
fn dump(ep: &str, rev: i64) -> Vec<serde_json::Value> {
    let mut args = vec!["get", "", "--from-key", "--consistency=s"];
    let r = format!("--rev={rev}");
    if rev > 0 {
        args.push(&r);
    }
    json(ep, &args)["kvs"].as_array().cloned().unwrap_or_default()
}

#[test]
fn save_under_load_and_restore_into_a_new_cluster() {
    let c = Cluster::start(3);
    let eps = c.endpoints();
    let id = ok(&eps, &["lease", "grant", "600"]).split_whitespace().nth(1).unwrap().to_string();
    ok(&eps, &["put", "leased", "v", &format!("--lease={id}")]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, eps) = (stop.clone(), eps.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                ok(&eps, &["put", &format!("load/{}", i % 40), &format!("v{i}")]);
                i += 1;
            }
            i
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let file = c.path().join("backup.db");
    let leader = c.wait_leader();
    let follower = c.members[(leader + 1) % 3].endpoint();
    let out = ok(&follower, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(text_has(&out, "Snapshot saved at"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    assert!(writer.join().unwrap() > 5, "the writer made progress during the save");

    let st = skiff(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(st.status.success(), "{}", text(&st));
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let rev = st["revision"].as_i64().unwrap();
    assert_eq!(st["totalKey"].as_u64().unwrap() as usize, dump(&follower, rev).len());

    let restored = restore_cluster(&file, 3, &[]);
    let reps = restored.endpoints();
    // Same keys, values and revisions as the source had at the snapshot's revision.
    assert_eq!(dump(&reps, 0), dump(&eps, rev));
    assert_eq!(json(&reps, &["get", "leased"])["header"]["revision"], rev);
    // A new cluster: new id, its own members, and the lease came along.
    let a = json(&eps, &["endpoint", "status"])[0]["Status"]["header"]["cluster_id"].clone();
    let b = json(&reps, &["endpoint", "status"])[0]["Status"]["header"]["cluster_id"].clone();
    assert_ne!(a, b);
    assert!(ok(&reps, &["lease", "timetolive", &id, "--keys"]).contains("attached keys([leased])"));
    // It takes writes, continuing the revision sequence.
    assert_eq!(json(&reps, &["put", "new", "1"])["header"]["revision"], rev + 1);
}

fn text_has(s: &str, what: &str) -> bool {
    s.contains(what)
}

#[test]
fn damaged_snapshots_are_refused_and_nothing_is_written() {
    let c = Cluster::start(1);
    let ep = c.endpoints();
    for i in 0..50 {
        ok(&ep, &["put", &format!("k{i}"), "value"]);
    }
    let file = c.path().join("good.db");
    ok(&ep, &["snapshot", "save", file.to_str().unwrap()]);
    let bytes = std::fs::read(&file).unwrap();

    let corrupt = c.path().join("corrupt.db");
    let mut flipped = bytes.clone();
    flipped[100] ^= 0xFF;
    std::fs::write(&corrupt, &flipped).unwrap();
    let truncated = c.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() - 700]).unwrap();

    for (f, want) in [(&corrupt, "is corrupt: expected sha256"), (&truncated, "not a multiple of 512")] {
        let dir = c.path().join("restored");
        let out = skiff(&[
            "snapshot",
            "restore",
            f.to_str().unwrap(),
            "--name",
            "r",
            "--data-dir",
            dir.to_str().unwrap(),
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
            "--initial-cluster",
            "r=http://127.0.0.1:1",
        ]);
        assert!(!out.status.success());
        assert!(text(&out).contains(want), "{}", text(&out));
        assert!(!dir.exists(), "a refused restore must write nothing");
        let st = skiff(&["snapshot", "status", f.to_str().unwrap()]);
        assert!(!st.status.success() && text(&st).contains(want), "{}", text(&st));
    }
    // A restore never writes over an existing data dir.
    let used = c.members[0].data_dir.to_str().unwrap().to_string();
    let out = skiff(&["snapshot", "restore", file.to_str().unwrap(), "--name", "s0", "--data-dir", &used]);
    assert!(!out.status.success() && text(&out).contains("not empty"), "{}", text(&out));
}

#[test]
fn bumped_and_compacted_restore_never_goes_back_in_revisions() {
    let c = Cluster::start(1);
    let ep = c.endpoints();
    for i in 0..10 {
        ok(&ep, &["put", "b", &format!("v{i}")]);
    }
    let file = c.path().join("b.db");
    ok(&ep, &["snapshot", "save", file.to_str().unwrap()]);
    let rev = json(&ep, &["get", "b"])["header"]["revision"].as_i64().unwrap();
    let restored = restore_cluster(&file, 1, &["--bump-revision", "1000", "--mark-compacted"]);
    let rep = restored.endpoints();
    let g = json(&rep, &["get", "b"]);
    assert_eq!(g["header"]["revision"], rev + 1000);
    assert_eq!(g["kvs"][0]["value"], serde_json::Value::from("djk="), "the value v9 survives");
    // A client resuming from an old revision is told to re-list, not fed another history.
    let err = fails(&rep, &["get", "b", &format!("--rev={}", rev - 1)]);
    assert!(err.contains("required revision has been compacted"), "{err}");
    assert_eq!(json(&rep, &["put", "b", "after"])["header"]["revision"], rev + 1001);
}

/// A backup keeps users, roles and the auth switch (as etcd's does), but not the key
/// tokens are signed with: the restored cluster makes its own at its first login, and
/// every member then logs its users in and holds them to their roles.
#[test]
fn restore_keeps_users_and_roles_but_not_the_token_key() {
    let c = Cluster::start(1);
    let ep = c.endpoints();
    let root = ["--user", "root:rootpw"];
    ok(&ep, &["user", "add", "root:rootpw"]);
    ok(&ep, &["auth", "enable"]);
    for args in [
        &["user", "add", "alice:alicepw"][..],
        &["role", "add", "app"],
        &["role", "grant-permission", "app", "readwrite", "/app/", "--prefix"],
        &["user", "grant-role", "alice", "app"],
        &["put", "/app/k", "v"],
    ] {
        ok(&ep, &[&root[..], args].concat());
    }
    let file = c.path().join("auth.db");
    ok(&ep, &["--user", "root:rootpw", "snapshot", "save", file.to_str().unwrap()]);

    let r = restore_cluster(&file, 3, &[]);
    let t = std::time::Instant::now();
    while !etcdctl(&r.endpoints(), &["--user", "alice:alicepw", "get", "/app/k"]).status.success() {
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "{}", r.all_logs());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for m in &r.members {
        let o = etcdctl(&m.endpoint(), &["--user", "alice:alicepw", "get", "/app/k", "--print-value-only"]);
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "v", "{}: {}", m.name, text(&o));
        let o = etcdctl(&m.endpoint(), &["--user", "alice:alicepw", "put", "/elsewhere", "x"]);
        assert!(text(&o).contains("permission denied"), "{}: {}", m.name, text(&o));
    }
    let o = etcdctl(&r.endpoints(), &["get", "/app/k"]);
    assert!(text(&o).contains("user name is empty"), "auth stays enabled: {}", text(&o));
    assert_eq!(ok(&r.endpoints(), &["--user", "root:rootpw", "user", "list"]), "alice\nroot\n");
}
