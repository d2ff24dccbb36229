//! Fuzz targets for everything that reads client input: protobuf bodies, objects
//! (validation, defaulting, admission, Pod Security, RBAC's escalation check), patches,
//! selectors, client certificates, bearer tokens, encrypted values and the encryption
//! configuration. Each target must answer or refuse any input, never panic or hang.
//!
//! The targets run two ways, from the same corpora (`apiserver/fuzz/corpus/<target>/`,
//! kept in the repository):
//! - in `make test`, seeded mutation fuzzing (the tests below): bit flips, byte edits,
//!   splices and tokens of the inputs' grammars, a bounded count per target
//!   (`SKIFF_FUZZ_ITERATIONS`, default 4000) from a fixed seed (`SKIFF_FUZZ_SEED`), so a
//!   failure reproduces; a failing input is saved under `target/fuzz-failures/`;
//! - in `make fuzz`, coverage-guided with cargo-fuzz and libFuzzer (`apiserver/fuzz/`,
//!   nightly Rust), for a bounded time per target.

use serde_json::{json, Value};

fn json_of(input: &[u8]) -> Option<Value> {
    serde_json::from_slice(input).ok()
}

/// Protobuf request bodies of every kind the decoder knows.
pub fn protobuf(b: &[u8]) {
    for (g, v) in [("", "v1"), ("apps", "v1"), ("autoscaling", "v1"), ("rbac.authorization.k8s.io", "v1")] {
        let _ = crate::protobuf::decode(g, v, b);
    }
    let _ = crate::protobuf::decode_token_request(b);
    let _ = crate::protobuf::decode_self_subject_access_review(b);
}

/// An object (and the encryption configuration, and YAML) through validation,
/// defaulting, admission, quota, Pod Security and RBAC's escalation check. Returns
/// whether the input was JSON, so a run can tell it reached the code.
pub fn objects(b: &[u8]) -> bool {
    if let Ok(text) = std::str::from_utf8(b) {
        let _ = crate::encryption::Encryption::parse(text);
        let _ = serde_yaml::from_str::<Value>(text);
    }
    let Some(obj) = json_of(b) else { return false };
    let pods = crate::registry::find("", "v1", "pods").expect("registered");
    let deployments = crate::registry::find("apps", "v1", "deployments").expect("registered");
    let roles = crate::registry::find("rbac.authorization.k8s.io", "v1", "roles").expect("registered");
    for r in [pods, deployments, roles] {
        let mut o = obj.clone();
        if crate::object::prepare_create(r, &mut o, Some("default")).is_ok() {
            crate::defaults::apply(r, &mut o);
            let old = o.clone();
            let _ = crate::object::prepare_update(r, &mut o, &old);
        }
        let _ = crate::object::check_type(r, &obj);
        let _ = crate::openapi::check_decodes(r, &obj);
    }
    let mut pod = obj.clone();
    let _ = crate::admission::limit_ranger(&mut pod, std::slice::from_ref(&obj));
    // The object as a quota, and as what is charged to one.
    for r in [pods, deployments] {
        let _ = crate::quota::charge(&obj, r, &obj);
        let _ = crate::quota::charge(&obj, r, &pod);
        let _ = crate::quota::usage(r, &obj);
    }
    let mut lr = obj.clone();
    crate::admission::default_limit_range(&mut lr);
    crate::admission::default_tolerations(&mut pod, Default::default());
    crate::admission::service_account(&mut pod, Some(&obj), "abcde");
    for level in [crate::podsecurity::Level::Baseline, crate::podsecurity::Level::Restricted] {
        let _ = crate::podsecurity::check(level, &obj);
        let _ = crate::podsecurity::check(level, &json!({"spec": obj}));
    }
    let rbac = crate::rbac::Rbac::default();
    let jane = crate::authn::User { name: "jane".into(), uid: String::new(), groups: vec!["dev".into()] };
    for plural in ["roles", "clusterroles", "rolebindings", "clusterrolebindings"] {
        let _ = rbac.may_write(&jane, plural, Some("dev"), &obj);
    }
    let _ = crate::nodeauthz::may_create("w1", "nodes", &obj);
    true
}

/// `{"target": ..., "patch": ...}` through the three patch types.
pub fn patches(b: &[u8]) {
    let Some(v) = json_of(b) else { return };
    let (target, patch) = (v["target"].clone(), v["patch"].clone());
    let mut t = target.clone();
    crate::patch::merge_patch(&mut t, &patch);
    let mut t = target.clone();
    let _ = crate::patch::strategic_merge_patch(&mut t, &patch);
    let mut t = target;
    let _ = crate::patch::json_patch(&mut t, &patch);
    let mut whole = v.clone();
    let _ = crate::patch::json_patch(&mut whole, &json!([{"op": "add", "path": "/x", "value": v}]));
}

/// Label and field selectors, and timestamps.
pub fn selectors(b: &[u8]) {
    let s = String::from_utf8_lossy(b);
    if let Ok(l) = crate::selector::LabelSelector::parse(&s) {
        let _ = l.matches(&json!({"app": "web", "env": "prod"}));
    }
    if let Ok(f) = crate::selector::FieldSelector::parse(&s) {
        let _ = f.matches(&json!({"metadata": {"name": "web"}, "spec": {"nodeName": "n"}}));
    }
    let _ = crate::object::parse_rfc3339(&s);
}

/// Client certificates and certificate requests, DER and PEM.
pub fn certificates(b: &[u8]) {
    let _ = crate::authn::user_of_certificate(b);
    let _ = crate::csr::parse_der(b);
    let _ = crate::csr::parse_pem(b);
}

/// ServiceAccount JWTs, bootstrap and static tokens, bearer headers, encrypted values.
pub fn tokens(b: &[u8]) {
    static SIGNER: std::sync::OnceLock<crate::satoken::Signer> = std::sync::OnceLock::new();
    let signer = SIGNER.get_or_init(|| {
        // The key is made in a directory of its own and kept only in memory.
        let dir = std::env::temp_dir().join(format!("skiff-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let signer = crate::satoken::Signer::ensure(&dir).expect("a signing key");
        let _ = std::fs::remove_dir_all(&dir);
        signer
    });
    let s = String::from_utf8_lossy(b);
    let _ = signer.verify(&s, crate::satoken::ISSUER);
    if let Some((id, secret)) = crate::bootstrap::parse(&s) {
        let _ = crate::bootstrap::user(&json!({"type": crate::bootstrap::SECRET_TYPE, "data": {}}), id, secret, 0);
    }
    let _ = crate::authn::Tokens::parse(&s);
    let _ = crate::authn::bearer(&s);
    let _ = crate::encryption::open(b"/registry/secrets/default/x", b);
}

/// Seeded mutation fuzzing of the targets, bounded by a count (`make test`).
#[cfg(test)]
mod seeded {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::path::PathBuf;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }
    }

    /// Fragments that are meaningful in the inputs' grammars (JSON, selectors, JWTs,
    /// protobuf varints), spliced in to get past the first syntax check.
    const TOKENS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"null",
        b"true",
        b"-1",
        b"0",
        b"1e999",
        b"18446744073709551616",
        b"\"\"",
        b"[]",
        b"{}",
        b"\\u0000",
        b"$patch",
        b"delete",
        b"replace",
        b"$retainKeys",
        b"/-",
        b"/~1",
        b"=",
        b"!=",
        b"==",
        b" in (",
        b")",
        b"!",
        b".",
        b"*",
        b"\xff\xff\xff\xff\x0f",
        b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
        b"\x12\x7f",
        b"\x0a\x00",
        b"k8s\x00",
        b"k8s:enc:aesgcm:v1:",
        b"\"containers\"",
        b"\"volumes\"",
        b"\"spec\"",
        b"\"securityContext\"",
        b"\"rules\"",
        b"\"op\"",
        b"\"path\"",
        b"\"from\"",
    ];

    fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut v = input.to_vec();
        for _ in 0..=rng.below(4) {
            let len = v.len();
            match rng.below(8) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    v[i] ^= 1 << rng.below(8);
                }
                1 if len > 0 => {
                    let i = rng.below(len);
                    v[i] = rng.next() as u8;
                }
                2 => {
                    let i = rng.below(len + 1);
                    v.insert(i, rng.next() as u8);
                }
                3 if len > 0 => {
                    let i = rng.below(len);
                    let n = 1 + rng.below((len - i).min(16));
                    v.drain(i..i + n);
                }
                4 if len > 0 => {
                    let i = rng.below(len);
                    let n = 1 + rng.below((len - i).min(32));
                    let chunk = v[i..i + n].to_vec();
                    let at = rng.below(len + 1);
                    v.splice(at..at, chunk);
                }
                5 => {
                    let t = TOKENS[rng.below(TOKENS.len())];
                    let at = rng.below(len + 1);
                    v.splice(at..at, t.iter().copied());
                }
                6 if !corpus.is_empty() => {
                    let other = &corpus[rng.below(corpus.len())];
                    let cut = rng.below(len + 1);
                    let from = rng.below(other.len() + 1);
                    v.truncate(cut);
                    v.extend_from_slice(&other[from..]);
                }
                _ if len > 1 => v.truncate(rng.below(len)),
                _ => {}
            }
        }
        v.truncate(64 << 10);
        v
    }

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
            .map(|e| e.expect("a directory entry").path())
            .collect();
        files.sort();
        let seeds: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).expect("a corpus file")).collect();
        assert!(!seeds.is_empty(), "the corpus {} is empty", dir.display());
        seeds
    }

    fn env_u64(name: &str, default: u64) -> u64 {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    /// Runs `f` on every seed and on mutations of them; fails on the first panic.
    fn fuzz(target: &str, f: impl Fn(&[u8])) {
        let seeds = corpus(target);
        let iterations = env_u64("SKIFF_FUZZ_ITERATIONS", 4000);
        let mut rng = Rng(env_u64("SKIFF_FUZZ_SEED", 0x5EED_F00D_1234_ABCD) | 1);
        for i in 0..iterations as usize + seeds.len() {
            let input = if i < seeds.len() {
                seeds[i].clone()
            } else {
                let base = &seeds[rng.below(seeds.len())];
                mutate(&mut rng, base, &seeds)
            };
            if catch_unwind(AssertUnwindSafe(|| f(&input))).is_err() {
                let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{target}-{i}"));
                let _ = std::fs::write(&file, &input);
                panic!(
                    "fuzz target {target} panicked on input {i} (saved to {}): {:?}",
                    file.display(),
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }

    #[test]
    fn fuzz_protobuf_bodies() {
        fuzz("protobuf", super::protobuf);
    }

    #[test]
    fn fuzz_objects_through_validation_admission_and_policy() {
        let parsed = std::sync::atomic::AtomicUsize::new(0);
        fuzz("objects", |b| {
            if super::objects(b) {
                parsed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        // Not vacuous: a good share of the mutations still parse and reach the code.
        let n = parsed.into_inner();
        assert!(n * 20 > env_u64("SKIFF_FUZZ_ITERATIONS", 4000) as usize, "only {n} inputs parsed as JSON");
    }

    #[test]
    fn fuzz_patches() {
        fuzz("patches", super::patches);
    }

    #[test]
    fn fuzz_selectors() {
        fuzz("selectors", super::selectors);
    }

    #[test]
    fn fuzz_client_certificates() {
        fuzz("certificates", super::certificates);
    }

    #[test]
    fn fuzz_tokens_and_encrypted_values() {
        fuzz("tokens", super::tokens);
    }
}
