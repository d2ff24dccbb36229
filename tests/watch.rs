//! Watch through the real etcdctl: live events, prefixes, prev_kv, history from a
//! revision, compacted starts, progress requests, and resuming across a restart.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// A running `etcdctl watch`, its output collected line by line.
struct Watch {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
}

impl Watch {
    fn start(ep: &str, args: &[&str]) -> Watch {
        let mut child = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .arg("watch")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let stdin = child.stdin.take();
        // etcdctl prints nothing when the watch is created; give it a moment to connect.
        std::thread::sleep(Duration::from_millis(700));
        Watch { child, stdin, out }
    }

    fn send(&mut self, line: &str) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(line.as_bytes()).unwrap();
        s.write_all(b"\n").unwrap();
        s.flush().unwrap();
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until the output contains `want`, failing with what it holds.
    fn wait_for(&self, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let o = self.output();
            if o.contains(want) {
                return o;
            }
            assert!(Instant::now() < deadline, "watch output never contained {want:?}:\n{o}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn live_events_in_order_with_prefix_and_prev_kv() {
    let c = Cluster::start(1);
    let ep = &c.endpoints();
    let w = Watch::start(ep, &["foo"]);
    let wp = Watch::start(ep, &["--prefix", "dir/", "--prev-kv"]);
    ok(ep, &["put", "foo", "w1"]);
    ok(ep, &["put", "dir/a", "1"]);
    ok(ep, &["put", "dir/a", "2"]);
    ok(ep, &["put", "other", "x"]);
    ok(ep, &["del", "foo"]);
    ok(ep, &["del", "dir/", "--prefix"]);
    assert_eq!(w.wait_for("DELETE\nfoo\n\n"), "PUT\nfoo\nw1\nDELETE\nfoo\n\n");
    let out = wp.wait_for("DELETE\ndir/a\n2\ndir/a\n");
    assert_eq!(out, "PUT\ndir/a\n1\nPUT\ndir/a\n1\ndir/a\n2\nDELETE\ndir/a\n2\ndir/a\n\n");
}

#[test]
fn history_from_a_revision_and_compacted_start() {
    let c = Cluster::start(1);
    let ep = &c.endpoints();
    for i in 0..4 {
        ok(ep, &["put", "h", &format!("v{i}")]);
    }
    // revisions 2..=5; watching from 3 replays v1..v3, then follows live writes.
    let w = Watch::start(ep, &["h", "--rev=3"]);
    w.wait_for("PUT\nh\nv3\n");
    ok(ep, &["put", "h", "v4"]);
    assert_eq!(w.wait_for("v4\n"), "PUT\nh\nv1\nPUT\nh\nv2\nPUT\nh\nv3\nPUT\nh\nv4\n");
    ok(ep, &["compaction", "4"]);
    let mut w = Watch::start(ep, &["h", "--rev=2"]);
    let out = w.wait_for("compacted");
    assert!(out.contains("watch was canceled (etcdserver: mvcc: required revision has been compacted)"), "{out}");
    assert_eq!(w.exit_code(), Some(5), "etcdctl exits 5 when the server cancels a watch");
    // The compaction revision itself is still watchable.
    let w = Watch::start(ep, &["h", "--rev=4"]);
    w.wait_for("PUT\nh\nv2\nPUT\nh\nv3\nPUT\nh\nv4\n");
}

#[test]
fn progress_requests_report_the_synced_revision() {
    let c = Cluster::start(1);
    let ep = &c.endpoints();
    ok(ep, &["put", "p", "1"]);
    ok(ep, &["put", "p", "2"]);
    let mut w = Watch::start(ep, &["-i"]);
    w.send("watch p");
    std::thread::sleep(Duration::from_millis(300));
    ok(ep, &["put", "p", "3"]);
    w.wait_for("PUT\np\n3\n");
    w.send("progress");
    w.wait_for("progress notify: 4\n");
}

#[test]
fn watch_on_a_follower_and_resume_after_restart() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    let follower = (leader + 1) % 3;
    let fe = c.members[follower].endpoint();
    let le = c.members[leader].endpoint();
    let w = Watch::start(&fe, &["r", "--prefix"]);
    ok(&le, &["put", "r1", "a"]);
    w.wait_for("PUT\nr1\na\n");
    let rev = json(&le, &["get", "r1"])["header"]["revision"].as_i64().unwrap();
    drop(w);
    // Writes while the follower is down, then a restart: a watch resumed from the last
    // seen revision + 1 gets exactly what it missed.
    c.kill(follower);
    ok(&le, &["put", "r2", "b"]);
    ok(&le, &["put", "r3", "c"]);
    c.start_member(follower);
    c.wait_ready();
    let w = Watch::start(&fe, &["r", "--prefix", &format!("--rev={}", rev + 1)]);
    assert_eq!(w.wait_for("PUT\nr3\nc\n"), "PUT\nr2\nb\nPUT\nr3\nc\n");
}
