//! Crash test: clients write continuously while members (the leader included) are
//! killed with SIGKILL and restarted. Every acknowledged write must be readable
//! afterwards, and all members must agree on the data (same revision, same HashKV).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::common::*;

#[test]
fn acknowledged_writes_survive_sigkill_of_any_member() {
    let mut c = Cluster::start(3);
    let endpoints: Vec<String> = c.members.iter().map(|m| m.endpoint()).collect();
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));

    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop, endpoints) = (acked.clone(), stop.clone(), endpoints.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let opts = ConnectOptions::new()
                        .with_timeout(Duration::from_secs(3))
                        .with_connect_timeout(Duration::from_secs(1));
                    let mut n = 0u64;
                    // One client per member, used in turn, so writes land on followers too.
                    let mut clients = Vec::new();
                    for ep in &endpoints {
                        clients.push(Client::connect([ep.as_str()], Some(opts.clone())).await.unwrap());
                    }
                    while !stop.load(Ordering::SeqCst) {
                        let key = format!("crash/{w}/{n:06}");
                        let value = format!("value-{w}-{n}");
                        let i = (n as usize + w) % clients.len();
                        match clients[i].put(key.as_str(), value.as_str(), None).await {
                            Ok(_) => {
                                acked.lock().unwrap().insert(key, value);
                                n += 1;
                            }
                            // Unknown outcome: the same key is retried with the same value.
                            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                        }
                    }
                })
            })
        })
        .collect();

    for round in 0..6 {
        std::thread::sleep(Duration::from_millis(1500));
        let victim = if round % 2 == 0 { c.leader().unwrap_or(round % 3) } else { round % 3 };
        c.kill(victim);
        std::thread::sleep(Duration::from_millis(1000));
        c.start_member(victim);
        c.wait_ready();
    }
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "the workload made too little progress to prove anything: {} writes", acked.len());

    // Bring every member up to date, then check each one's own copy.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut first = Client::connect([endpoints[0].as_str()], None).await.unwrap();
        let rev = first.put("crash-barrier", "x", None).await.unwrap().header().unwrap().revision();
        let mut hashes = Vec::new();
        for ep in &endpoints {
            let mut cl = Client::connect([ep.as_str()], None).await.unwrap();
            // A linearizable read makes the member apply everything up to now.
            cl.get("crash-barrier", None).await.unwrap();
            let got = cl.get("crash/", Some(GetOptions::new().with_prefix().with_serializable())).await.unwrap();
            let stored: BTreeMap<String, String> = got
                .kvs()
                .iter()
                .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
                .collect();
            for (k, v) in &acked {
                assert_eq!(stored.get(k), Some(v), "member {ep} lost acknowledged write {k}");
            }
            let h = cl.hash_kv(rev).await.unwrap();
            hashes.push(h.hash());
        }
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "members disagree at revision {rev}: {hashes:?}");
    });
}
