//! etcd's auth API with the real etcdctl 3.4: users, roles, key-prefix permissions,
//! `etcdctl --user`, the root user's protections, and auth state that survives a
//! restart of the whole cluster. (Certificate CNs as users: tests/tls.rs.)

use crate::common::*;

/// etcdctl as `user` ("name:password").
fn as_user(c: &Cluster, user: &str, args: &[&str]) -> std::process::Output {
    let mut a = vec!["--user", user];
    a.extend(args);
    etcdctl(&c.endpoints(), &a)
}

fn ok_as(c: &Cluster, user: &str, args: &[&str]) -> String {
    let o = as_user(c, user, args);
    assert!(o.status.success(), "{user} {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The command fails with exit code `code` and `message` on stderr.
fn refused_as(c: &Cluster, user: &str, args: &[&str], code: i32, message: &str) {
    let o = as_user(c, user, args);
    assert_eq!(o.status.code(), Some(code), "{user} {args:?}: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains(message), "{user} {args:?}: {}", text(&o));
}

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

#[test]
fn users_roles_and_prefix_permissions_with_etcdctl() {
    let mut c = Cluster::start(3);
    c.wait_ready();
    let e = c.endpoints();
    ok(&e, &["put", "/other/k", "before"]);

    // A --user given while auth is off is ignored, by etcdctl and by skiff alike.
    assert!(etcdctl(&e, &["--user", "nobody:x", "get", "/other/k"]).status.success());
    let o = std::process::Command::new(skiff_bin())
        .args(["member", "list", "--endpoints", &c.members[0].endpoint(), "--user", "nobody:x"])
        .output()
        .unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).lines().count() == 3, "{}", text(&o));

    // Set-up as an etcd user does it; etcdctl creates the root role on `auth enable`.
    assert_eq!(ok(&e, &["user", "add", "root:rootpw"]).trim(), "User root created");
    assert_eq!(ok(&e, &["user", "get", "root"]).trim(), "User: root\nRoles:");
    assert_eq!(ok(&e, &["auth", "enable"]).trim(), "Authentication Enabled");
    assert_eq!(ok_as(&c, ROOT, &["user", "get", "root"]).trim(), "User: root\nRoles: root");
    assert_eq!(ok_as(&c, ROOT, &["role", "add", "app"]).trim(), "Role app created");
    assert_eq!(
        ok_as(&c, ROOT, &["role", "grant-permission", "app", "readwrite", "/app/", "--prefix"]).trim(),
        "Role app updated"
    );
    ok_as(&c, ROOT, &["role", "grant-permission", "app", "read", "/config"]);
    assert_eq!(ok_as(&c, ROOT, &["user", "add", "alice:alicepw"]).trim(), "User alice created");
    assert_eq!(ok_as(&c, ROOT, &["user", "grant-role", "alice", "app"]).trim(), "Role app is granted to user alice");
    assert_eq!(
        ok_as(&c, ROOT, &["role", "get", "app"]),
        "Role app\nKV Read:\n\t[/app/, /app0) (prefix /app/)\n\t/config\nKV Write:\n\t[/app/, /app0) (prefix /app/)\n"
    );
    assert_eq!(ok_as(&c, ROOT, &["user", "list"]), "alice\nroot\n");
    assert_eq!(ok_as(&c, ROOT, &["role", "list"]), "app\nroot\n");

    // Without credentials nothing but what etcd leaves open.
    let o = etcdctl(&e, &["get", "/app/x"]);
    assert!(!o.status.success() && text(&o).contains("etcdserver: user name is empty"), "{}", text(&o));
    assert!(etcdctl(&e, &["endpoint", "status"]).status.success(), "status needs no user");
    refused_as(&c, "alice:wrong", &["get", "/app/x"], 2, "authentication failed, invalid user ID or password");

    // alice: her prefix, read-only /config, nothing else.
    assert_eq!(ok_as(&c, ALICE, &["put", "/app/x", "1"]).trim(), "OK");
    assert_eq!(ok_as(&c, ALICE, &["get", "/app/", "--prefix", "--print-value-only"]).trim(), "1");
    ok_as(&c, ALICE, &["get", "/config"]);
    for args in [
        &["put", "/other/k", "2"][..],
        &["get", "/other/k"],
        &["put", "/config", "v"],
        &["del", "/app/", "--from-key"],
        &["get", "/app/", "--from-key"],
        &["user", "list"],
        &["user", "get", "root"],
        &["role", "get", "root"],
    ] {
        refused_as(&c, ALICE, args, 1, "etcdserver: permission denied");
    }
    assert_eq!(ok_as(&c, ALICE, &["user", "get", "alice"]).trim(), "User: alice\nRoles: app", "herself");
    ok_as(&c, ALICE, &["role", "get", "app"]);
    // A txn is checked whole: its compare and both branches.
    let txn = |body: &str| {
        let mut a = vec!["--user", ALICE, "txn"];
        a.push("--interactive=false");
        etcdctl_stdin(&e, &a, Some(body))
    };
    let o = txn("value(\"/app/x\") = \"1\"\n\nput /app/y 2\n\nput /other/k 3\n\n");
    assert!(!o.status.success() && text(&o).contains("permission denied"), "{}", text(&o));
    let o = txn("value(\"/app/x\") = \"1\"\n\nput /app/y 2\n\nget /app/x\n\n");
    assert!(o.status.success() && text(&o).starts_with("SUCCESS"), "{}", text(&o));
    // A watch she may not make is canceled, not left open.
    refused_as(&c, ALICE, &["watch", "/other/k"], 5, "watch is canceled by the server");
    // Maintenance and membership are root's.
    refused_as(&c, ALICE, &["defrag"], 1, "auth: permission denied");
    let snap = c.path().join("alice.snap");
    let o = etcdctl(&c.members[0].endpoint(), &["--user", ALICE, "snapshot", "save", snap.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("auth: permission denied"), "{}", text(&o));
    refused_as(&c, ALICE, &["member", "remove", "1"], 1, "etcdserver: permission denied");
    // skiff's own clients log in with etcdctl's --user.
    let skiff_snapshot = |user: &str| {
        std::process::Command::new(skiff_bin())
            .args(["snapshot", "save"])
            .arg(c.path().join("root.snap"))
            .args(["--endpoints", c.members[0].endpoint().trim_start_matches("http://"), "--user", user])
            .output()
            .unwrap()
    };
    let o = skiff_snapshot(ROOT);
    assert!(o.status.success() && c.path().join("root.snap").exists(), "{}", text(&o));
    let o = skiff_snapshot(ALICE);
    assert!(!o.status.success() && text(&o).contains("auth: permission denied"), "{}", text(&o));
    assert_eq!(ok_as(&c, ROOT, &["get", "/other/k", "--print-value-only"]).trim(), "before", "root reads all");

    // root stays root while auth is on.
    refused_as(&c, ROOT, &["user", "delete", "root"], 1, "etcdserver: invalid auth management");
    refused_as(&c, ROOT, &["user", "revoke-role", "root", "root"], 1, "etcdserver: invalid auth management");
    refused_as(&c, ROOT, &["user", "add", "alice:x"], 1, "etcdserver: user name already exists");
    refused_as(&c, ROOT, &["user", "grant-role", "alice", "nope"], 1, "etcdserver: role name not found");

    // Taking the permission away takes effect at once, on every member.
    assert_eq!(
        ok_as(&c, ROOT, &["role", "revoke-permission", "app", "/app/", "--prefix"]).trim(),
        "Permission of range [/app/, /app0) is revoked from role app"
    );
    for m in &c.members {
        let o = etcdctl(&m.endpoint(), &["--user", ALICE, "put", "/app/z", "3"]);
        assert!(!o.status.success() && text(&o).contains("permission denied"), "{}: {}", m.name, text(&o));
    }
    // A new password replaces the old one.
    assert_eq!(ok_as(&c, ROOT, &["user", "add", "bob:bobpw"]).trim(), "User bob created");
    let o = etcdctl_stdin(&e, &["--user", ROOT, "user", "passwd", "alice", "--interactive=false"], Some("newpw\n"));
    assert!(o.status.success() && text(&o).contains("Password updated"), "{}", text(&o));
    refused_as(&c, ALICE, &["get", "/config"], 2, "authentication failed");
    ok_as(&c, "alice:newpw", &["get", "/config"]);

    // Users, roles and the switch are in the replicated, durable state.
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.start_member(i);
    }
    let t = std::time::Instant::now();
    while !as_user(&c, "alice:newpw", &["get", "/config"]).status.success() {
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "{}", c.all_logs());
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let o = etcdctl(&c.endpoints(), &["get", "/app/x"]);
    assert!(text(&o).contains("user name is empty"), "still enabled after the restart: {}", text(&o));
    assert_eq!(ok_as(&c, ROOT, &["user", "list"]), "alice\nbob\nroot\n");

    assert_eq!(ok_as(&c, ROOT, &["auth", "disable"]).trim(), "Authentication Disabled");
    assert_eq!(ok(&c.endpoints(), &["get", "/app/x", "--print-value-only"]).trim(), "1", "open again");
}
