//! The store over TLS: https client and peer URLs with certificates from a test CA,
//! client certificates required on both (`--client-cert-auth`,
//! `--peer-client-cert-auth`), etcdctl with `--cacert/--cert/--key`, and the API server
//! reaching the store with `--etcd-cafile/--etcd-certfile/--etcd-keyfile`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Processes killed when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sh(dir: &Path, cmd: &str) {
    let o = Command::new("bash").arg("-c").arg(cmd).current_dir(dir).output().unwrap();
    assert!(o.status.success(), "{cmd}: {}", text(&o));
}

/// A CA `name` and, signed by it, a certificate `name-<who>` for each (who, CN, usages).
fn pki(dir: &Path, ca: &str, certs: &[(&str, &str, &str)]) {
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    sh(dir, &format!("openssl req -x509 {ec} -keyout {ca}.key -out {ca}.crt -subj /CN={ca} -days 1"));
    for (who, cn, ext) in certs {
        std::fs::write(dir.join(format!("{who}.ext")), format!("{ext}\n")).unwrap();
        sh(dir, &format!("openssl req {ec} -keyout {who}.key -out {who}.csr -subj /CN={cn}"));
        sh(
            dir,
            &format!(
                "openssl x509 -req -in {who}.csr -CA {ca}.crt -CAkey {ca}.key -CAcreateserial -days 1 -extfile {who}.ext -out {who}.crt"
            ),
        );
    }
}

/// etcdctl against `endpoints` with the given TLS flags.
fn etcdctl_tls(dir: &Path, endpoints: &str, tls: &[&str], args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .current_dir(dir)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--command-timeout=5s", "--dial-timeout=3s"])
        .args(tls)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn store_serves_tls_with_client_certificates_to_etcdctl_and_the_api_server() {
    let tmp = tempfile::Builder::new().prefix("skiff-test-").tempdir().unwrap();
    let d = tmp.path();
    let both = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth";
    let client = "extendedKeyUsage=clientAuth";
    pki(d, "ca", &[("member", "member", both), ("client", "root", client), ("alice", "alice", client)]);
    pki(d, "rogue-ca", &[("rogue", "root", "extendedKeyUsage=clientAuth")]);

    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, p))| format!("t{i}=https://127.0.0.1:{p}")).collect();
    let mut procs = Procs(Vec::new());
    for (i, (client, peer)) in ports.iter().enumerate() {
        let log = std::fs::File::create(d.join(format!("t{i}.log"))).unwrap();
        let child = Command::new(skiff_bin())
            .current_dir(d)
            .args(["store", "--name", &format!("t{i}")])
            .arg("--data-dir")
            .arg(d.join(format!("t{i}")))
            .args(["--listen-client-urls", &format!("https://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("https://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--cert-file", "member.crt", "--key-file", "member.key", "--trusted-ca-file", "ca.crt"])
            .arg("--client-cert-auth")
            .args(["--peer-cert-file", "member.crt", "--peer-key-file", "member.key"])
            .args(["--peer-trusted-ca-file", "ca.crt", "--peer-client-cert-auth"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        procs.0.push(child);
    }
    let url = |i: usize| format!("https://127.0.0.1:{}", ports[i].0);
    let good = ["--cacert=ca.crt", "--cert=client.crt", "--key=client.key"];
    let good = &good[..];
    let logs =
        || (0..3).map(|i| std::fs::read_to_string(d.join(format!("t{i}.log"))).unwrap_or_default()).collect::<String>();
    let t = Instant::now();
    while !etcdctl_tls(d, &url(0), good, &["put", "greeting", "hello"]).status.success() {
        assert!(t.elapsed() < Duration::from_secs(30), "the TLS cluster never took a write:\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Replicated over the https peer links, readable from every member.
    for i in 0..3 {
        let o = etcdctl_tls(d, &url(i), good, &["get", "greeting", "--print-value-only"]);
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "hello", "member {i}: {}", text(&o));
    }
    let o = etcdctl_tls(d, &url(1), good, &["member", "list"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout).matches("https://127.0.0.1:").count(), 6, "{}", text(&o));

    // No client certificate, one from another CA, or plain HTTP: no answer.
    for (what, tls, endpoint) in [
        ("no client certificate", vec!["--cacert=ca.crt"], url(0)),
        ("a certificate of another CA", vec!["--cacert=ca.crt", "--cert=rogue.crt", "--key=rogue.key"], url(0)),
        ("plain HTTP", vec![], format!("http://127.0.0.1:{}", ports[0].0)),
        ("a server it does not trust", vec!["--cacert=rogue-ca.crt", "--cert=client.crt", "--key=client.key"], url(0)),
    ] {
        let o = etcdctl_tls(d, &endpoint, &tls, &["get", "greeting"]);
        assert!(!o.status.success(), "{what} was served: {}", text(&o));
        assert!(!String::from_utf8_lossy(&o.stdout).contains("hello"), "{what}");
    }

    // skiff's own clients take etcdctl's TLS flags.
    let endpoints: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", ports[i].0)).collect();
    let skiff = |args: &[&str]| {
        let o = Command::new(skiff_bin()).current_dir(d).args(args).args(good).output().unwrap();
        assert!(o.status.success(), "skiff {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let health = skiff(&["endpoint", "health", "--endpoints", &endpoints.join(",")]);
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    skiff(&["snapshot", "save", "tls.snap", "--endpoints", &endpoints[1]]);
    assert!(d.join("tls.snap").metadata().unwrap().len() > 0);
    let members = skiff(&["member", "list", "--endpoints", &endpoints[0]]);
    assert_eq!(members.lines().count(), 3, "{members}");

    // The API server over TLS to the store.
    let (https, http) = (free_port(), free_port());
    let api_log = std::fs::File::create(d.join("apiserver.log")).unwrap();
    procs.0.push(
        Command::new(skiff_bin())
            .current_dir(d)
            .args(["apiserver", "--store-endpoints", &endpoints.join(",")])
            .args(["--etcd-cafile", "ca.crt", "--etcd-certfile", "client.crt", "--etcd-keyfile", "client.key"])
            .args(["--bind", &format!("127.0.0.1:{https}"), "--insecure-bind", &format!("127.0.0.1:{http}")])
            .arg("--data-dir")
            .arg(d.join("api"))
            .stdout(Stdio::null())
            .stderr(api_log)
            .spawn()
            .unwrap(),
    );
    let kubectl = |args: &[&str]| {
        Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32")
            .arg("--kubeconfig")
            .arg(d.join("api/admin.kubeconfig"))
            .args(args)
            .output()
            .unwrap()
    };
    let t = Instant::now();
    while !kubectl(&["get", "namespaces"]).status.success() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the API server never answered:\n{}",
            std::fs::read_to_string(d.join("apiserver.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = kubectl(&["create", "configmap", "over-tls", "--from-literal=a=b"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = etcdctl_tls(d, &url(2), good, &["get", "/registry/configmaps/default/over-tls", "--keys-only"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("/registry/configmaps/default/over-tls"), "{}", text(&o));

    // With auth on, a client certificate's CN is its user, as in etcd: CN=root
    // administers without a password, CN=alice gets what her role allows.
    let run = |tls: &[&str], args: &[&str]| {
        let o = etcdctl_tls(d, &url(1), tls, args);
        (o.status.success(), text(&o))
    };
    let alice = ["--cacert=ca.crt", "--cert=alice.crt", "--key=alice.key"];
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["auth", "enable"],
        &["user", "add", "alice", "--no-password"],
        &["role", "add", "reader"],
        &["role", "grant-permission", "reader", "read", "/pub/", "--prefix"],
        &["user", "grant-role", "alice", "reader"],
        &["put", "/pub/x", "shared"],
    ] {
        let (ok, out) = run(good, args);
        assert!(ok, "{args:?}: {out}");
    }
    let (ok, out) = run(&alice, &["get", "/pub/x", "--print-value-only"]);
    assert!(ok && out.trim() == "shared", "{out}");
    let (ok, out) = run(&alice, &["get", "greeting"]);
    assert!(!ok && out.contains("etcdserver: permission denied"), "{out}");
    let (ok, out) = run(&alice, &["user", "list"]);
    assert!(!ok && out.contains("etcdserver: permission denied"), "{out}");
    // The API server's certificate is root's: it goes on working.
    let o = kubectl(&["create", "configmap", "with-auth", "--from-literal=a=b"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// TLS flags that cannot work stop the member before it touches its data, saying why.
#[test]
fn store_refuses_tls_flags_that_cannot_work() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let o = Command::new(skiff_bin())
            .args(["store", "--name", "x"])
            .arg("--data-dir")
            .arg(tmp.path().join("x"))
            .args(["--listen-client-urls", &format!("https://127.0.0.1:{}", free_port())])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", free_port())])
            .args(extra)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{extra:?} started: {}", text(&o));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run(&[]);
    assert!(e.contains("https client URLs need --cert-file and --key-file"), "{e}");
    let e = run(&["--cert-file", "/nonexistent/m.crt", "--key-file", "/nonexistent/m.key"]);
    assert!(e.contains("--cert-file /nonexistent/m.crt: No such file or directory"), "{e}");
    let e = run(&["--cert-file", "/etc/hostname", "--key-file", "/etc/hostname", "--client-cert-auth"]);
    assert!(e.contains("--client-cert-auth needs --trusted-ca-file"), "{e}");
    assert!(!tmp.path().join("x").exists(), "nothing was written");
}
