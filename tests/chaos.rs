//! `skiff chaos`: short runs of each fault kind on 3 members with fixed seeds, and the
//! `check` command on a saved history — untouched it passes, tampered it fails.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::skiff_bin;

fn chaos(args: &[&str]) -> Output {
    Command::new(skiff_bin()).arg("chaos").args(args).output().expect("run skiff chaos")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs 20 s of `fault` and returns the saved history.
fn run(fault: &str, seed: u64, dir: &Path) -> serde_json::Value {
    let out = dir.join("out");
    let work = dir.join("work");
    let o = chaos(&[
        "run",
        "--members",
        "3",
        "--duration",
        "20s",
        "--faults",
        fault,
        "--seed",
        &seed.to_string(),
        "--out",
        out.to_str().unwrap(),
        "--work-dir",
        work.to_str().unwrap(),
    ]);
    let all = text(&o);
    assert!(o.status.success(), "chaos run with {fault} failed:\n{all}");
    assert!(String::from_utf8_lossy(&o.stdout).lines().any(|l| l == "PASS"), "{all}");
    assert!(!work.exists(), "a passing run removes its members' data");
    let svg = std::fs::read_to_string(out.join("timeline.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(&format!("<title>{fault} ")), "the timeline shades the faults");
    let h: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("history.json")).unwrap()).unwrap();
    let faults = h["faults"].as_array().unwrap();
    assert!(!faults.is_empty(), "{all}");
    for f in faults {
        assert_eq!(f["kind"], fault);
        assert!(f["end_us"].as_u64() > f["start_us"].as_u64(), "{f}");
        assert!(!f["detail"].as_str().unwrap().contains("harness could not"), "{f}");
    }
    // The workload kept going through the faults: operations succeeded after the last one.
    let last_end = faults.iter().map(|f| f["end_us"].as_u64().unwrap()).max().unwrap();
    let ops = h["ops"].as_array().unwrap();
    assert!(ops.len() > 500, "only {} operations", ops.len());
    assert!(ops.iter().any(|o| o["outcome"] == "ok" && o["invoke_us"].as_u64().unwrap() > last_end));
    let hashes = h["end"]["hashes"].as_array().unwrap();
    assert_eq!(hashes.len(), 3);
    h
}

#[test]
fn chaos_kill_passes_and_check_catches_a_tampered_history() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = run("kill", 101, dir.path());
    assert!(h["faults"][0]["detail"].as_str().unwrap().contains("SIGKILL"));

    let path = dir.path().join("out/history.json");
    let o = chaos(&["check", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("PASS"));

    // Make a linearizable read return what its key held before the latest write.
    let ops = h["ops"].as_array().unwrap().clone();
    let (i, stale) = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o["op"] == "get" && o["serializable"] == false && o["outcome"] == "ok")
        .find_map(|(i, o)| {
            let key = o["key"].as_str()?;
            let seen = o["result"]["value"].as_str()?;
            // An earlier acknowledged plain put of another value to this key.
            let older = ops[..i].iter().rev().find(|p| {
                p["op"] == "put" && p["key"] == key && p["outcome"] == "ok" && p["value"].as_str() != Some(seen)
            })?;
            Some((i, (older["value"].clone(), older["result"]["revision"].clone())))
        })
        .expect("a read that saw a later write");
    h["ops"][i]["result"]["value"] = stale.0;
    h["ops"][i]["result"]["mod_revision"] = stale.1;
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, serde_json::to_vec(&h).unwrap()).unwrap();
    let o = chaos(&["check", tampered.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.lines().any(|l| l.starts_with("FAIL: ")), "{out}");
    assert!(out.contains("stale-read: read #"), "{out}");
}

#[test]
fn chaos_pause_passes() {
    let dir = tempfile::tempdir().unwrap();
    let h = run("pause", 202, dir.path());
    assert!(h["faults"][0]["detail"].as_str().unwrap().contains("SIGSTOP"));
}

#[test]
fn chaos_partition_passes() {
    let dir = tempfile::tempdir().unwrap();
    run("partition", 303, dir.path());
}

#[test]
fn chaos_membership_passes() {
    let dir = tempfile::tempdir().unwrap();
    let h = run("membership", 404, dir.path());
    assert!(h["faults"][0]["detail"].as_str().unwrap().contains("promoted"), "{}", h["faults"][0]);
}

#[test]
fn chaos_rejects_bad_input() {
    let o = chaos(&["run", "--faults", "kill,flood"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("unknown fault \"flood\""), "{}", text(&o));
    let o = chaos(&["run", "--duration", "soon"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("is not a duration"), "{}", text(&o));
    let o = chaos(&["check", "/nonexistent/history.json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("cannot read /nonexistent/history.json"), "{}", text(&o));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("h.json");
    std::fs::write(&bad, "{\"ops\": 3}").unwrap();
    let o = chaos(&["check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("is not a chaos history"), "{}", text(&o));
}
