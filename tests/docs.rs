//! The procedures in docs/operations.md run as written: every block marked
//! `<!-- run: NAME -->` is executed in order in one bash session, in a temporary
//! directory, with each 127.0.0.1 port remapped to a free one. Every process the
//! procedures start is killed afterwards, also when the test fails.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The runnable blocks of a markdown file, in order: (name, script).
fn runnable_blocks(md: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = md.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("<!-- run: ").and_then(|r| r.strip_suffix(" -->")) else { continue };
        assert_eq!(lines.next(), Some("```sh"), "block {name} must start with ```sh");
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        out.push((name.to_string(), body.join("\n")));
    }
    out
}

/// Replaces every port written as `127.0.0.1:PORT`, wherever the number appears as a
/// whole token, with a free port.
fn remap_ports(script: &str) -> (String, BTreeMap<String, String>) {
    let mut map = BTreeMap::new();
    for part in script.split("127.0.0.1:").skip(1) {
        let port: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
        if !port.is_empty() && !map.contains_key(&port) {
            map.insert(port, free_port().to_string());
        }
    }
    let mut out = String::new();
    let mut token = String::new();
    for c in script.chars().chain(std::iter::once('\n')) {
        if c.is_ascii_digit() {
            token.push(c);
            continue;
        }
        out.push_str(map.get(&token).map_or(&token, |p| p));
        token.clear();
        out.push(c);
    }
    out.pop();
    (out, map)
}

/// Kills the script's process group (every member it started in the background stays
/// in it) and removes the directory.
struct Cleanup(tempfile::TempDir, u32);

impl Drop for Cleanup {
    fn drop(&mut self) {
        assert!(self.1 > 1, "refusing to signal process group {}", self.1);
        let _ = Command::new("kill").args(["-9", "--", &format!("-{}", self.1)]).status();
    }
}

#[test]
fn operations_guide_procedures_run_as_written() {
    let md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    let blocks = runnable_blocks(&md);
    let names: Vec<&str> = blocks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["start", "five", "backup", "add", "remove", "replace", "restore"]);
    let mut script = String::from("set -euo pipefail\n");
    for (name, body) in &blocks {
        script.push_str(&format!("echo '=== {name}'\n{body}\n"));
    }
    let (script, ports) = remap_ports(&script);
    assert!(ports.len() >= 20, "ports found: {ports:?}");

    let dir = tempfile::Builder::new().prefix("skiff-docs-").tempdir().unwrap();
    let bin_dir = skiff_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = Cleanup(dir, child.id());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(300) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let output = text(&out);
    let logs: String = std::fs::read_dir(guard.0.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| {
            let s = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = s.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
            format!("--- {}\n{}", e.path().display(), tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(status.is_some_and(|s| s.success()), "the procedures failed:\n{output}\n{logs}");
    // The data written at the start survived the replacement and the restore.
    assert_eq!(output.matches("greeting\nhello\n").count(), 2, "{output}");
    assert!(output.contains("=== restore"), "{output}");
}
