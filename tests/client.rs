//! The Rust `etcd-client` crate against Skiff: what etcdctl cannot express (revision
//! filters, nested txns, several watchers on one stream, progress, fragments, filters).

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
    WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};

use crate::common::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("watch response in time")
        .expect("watch stream error")
        .expect("watch stream ended")
}

#[test]
fn revision_filters_sorting_and_nested_txn() {
    let c = Cluster::start(1);
    rt().block_on(async {
        let mut cl = Client::connect([c.endpoints()], None).await.unwrap();
        for (k, v) in [("f/a", "1"), ("f/b", "2"), ("f/c", "3"), ("f/a", "4")] {
            cl.put(k, v, None).await.unwrap();
        }
        // f/a created at 2, modified at 5; f/b at 3; f/c at 4.
        let keys = |r: &etcd_client::GetResponse| {
            r.kvs().iter().map(|kv| kv.key_str().unwrap().to_string()).collect::<Vec<_>>()
        };
        let r = cl.get("f/", Some(GetOptions::new().with_prefix().with_min_mod_revision(4))).await.unwrap();
        assert_eq!(keys(&r), ["f/a", "f/c"]);
        assert_eq!(r.count(), 3, "count is taken before the filters");
        let r = cl.get("f/", Some(GetOptions::new().with_prefix().with_max_create_revision(3))).await.unwrap();
        assert_eq!(keys(&r), ["f/a", "f/b"]);
        let r = cl
            .get(
                "f/",
                Some(GetOptions::new().with_prefix().with_sort(SortTarget::Mod, SortOrder::Descend).with_limit(2)),
            )
            .await
            .unwrap();
        assert_eq!(keys(&r), ["f/a", "f/c"]);
        assert!(r.more());

        // Nested txns: the inner branch is decided against the state before the txn.
        let inner = Txn::new()
            .when([Compare::value("f/b", CompareOp::Equal, "2")])
            .and_then([TxnOp::put("n/inner", "then", None)])
            .or_else([TxnOp::put("n/inner", "else", None)]);
        let outer = Txn::new().when([Compare::version("f/a", CompareOp::Equal, 2)]).and_then([
            TxnOp::put("f/b", "changed", None),
            TxnOp::txn(inner),
            TxnOp::get("f/b", None),
        ]);
        let resp = cl.txn(outer).await.unwrap();
        assert!(resp.succeeded());
        let rev = resp.header().unwrap().revision();
        assert_eq!(rev, 6, "one revision for the whole txn");
        match &resp.op_responses()[2] {
            TxnOpResponse::Get(g) => {
                assert_eq!(g.kvs()[0].value_str().unwrap(), "changed", "a get sees the txn's own put")
            }
            other => panic!("unexpected {other:?}"),
        }
        let inner = cl.get("n/inner", None).await.unwrap();
        assert_eq!(inner.kvs()[0].value_str().unwrap(), "then");
        assert_eq!(inner.kvs()[0].mod_revision(), 6);

        // Put with prev_kv through the crate.
        let p = cl.put("f/c", "5", Some(PutOptions::new().with_prev_key())).await.unwrap();
        assert_eq!(p.prev_key().unwrap().value_str().unwrap(), "3");
    });
}

#[test]
fn watchers_share_a_stream_with_filters_progress_and_cancel() {
    let c = Cluster::start(1);
    rt().block_on(async {
        let mut cl = Client::connect([c.endpoints()], None).await.unwrap();
        let mut stream = cl.watch("w/", Some(WatchOptions::new().with_prefix())).await.unwrap();
        let created = next(&mut stream).await;
        assert!(created.created());
        let all_id = created.watch_id();
        stream
            .watch("w/", Some(WatchOptions::new().with_prefix().with_filters([WatchFilterType::NoPut]).with_prev_key()))
            .await
            .unwrap();
        let created = next(&mut stream).await;
        assert!(created.created());
        let deletes_id = created.watch_id();
        assert_ne!(all_id, deletes_id);

        cl.put("w/1", "a", None).await.unwrap();
        cl.delete("w/1", None).await.unwrap();
        let mut seen_all = Vec::new();
        let mut seen_deletes = Vec::new();
        while seen_all.len() < 2 || seen_deletes.is_empty() {
            let r = next(&mut stream).await;
            for e in r.events() {
                let item = (e.event_type(), e.kv().unwrap().mod_revision());
                if r.watch_id() == all_id {
                    seen_all.push(item);
                } else {
                    assert_eq!(e.prev_kv().unwrap().value_str().unwrap(), "a");
                    seen_deletes.push(item);
                }
            }
        }
        assert_eq!(seen_all, [(EventType::Put, 2), (EventType::Delete, 3)]);
        assert_eq!(seen_deletes, [(EventType::Delete, 3)]);

        // A progress request answers with the revision every watcher has reached.
        stream.request_progress().await.unwrap();
        let p = next(&mut stream).await;
        assert!(p.events().is_empty());
        assert_eq!(p.header().unwrap().revision(), 3);

        stream.cancel(all_id).await.unwrap();
        let r = next(&mut stream).await;
        assert!(r.canceled());
        assert_eq!(r.watch_id(), all_id);
        cl.put("w/2", "b", None).await.unwrap();
        cl.delete("w/2", None).await.unwrap();
        let r = next(&mut stream).await;
        assert_eq!(r.watch_id(), deletes_id, "the cancelled watcher sends nothing more");
        assert_eq!(r.events()[0].event_type(), EventType::Delete);
    });
}

#[test]
fn a_big_txn_is_one_atomic_watch_response() {
    let c = Cluster::start(1);
    rt().block_on(async {
        let mut cl = Client::connect([c.endpoints()], None).await.unwrap();
        let mut stream = cl.watch("t/", Some(WatchOptions::new().with_prefix())).await.unwrap();
        assert!(next(&mut stream).await.created());
        let ops: Vec<TxnOp> = (0..100).map(|i| TxnOp::put(format!("t/{i:03}"), vec![b'x'; 100], None)).collect();
        let rev = cl.txn(Txn::new().and_then(ops)).await.unwrap().header().unwrap().revision();
        let r = next(&mut stream).await;
        assert_eq!(r.events().len(), 100, "all events of one revision arrive in one response");
        assert!(r.events().iter().all(|e| e.kv().unwrap().mod_revision() == rev));
        let keys: Vec<String> = r.events().iter().map(|e| e.kv().unwrap().key_str().unwrap().to_string()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "events come in the txn's op order");
    });
}

#[test]
fn slow_watcher_catches_up_from_storage() {
    let c = Cluster::start(1);
    rt().block_on(async {
        let mut cl = Client::connect([c.endpoints()], None).await.unwrap();
        let mut slow = cl.watch("s/", Some(WatchOptions::new().with_prefix())).await.unwrap();
        assert!(next(&mut slow).await.created());
        // Far more revisions than the live broadcast buffers while the watcher reads nothing.
        let writes = 6000;
        let mut futs = Vec::new();
        for i in 0..writes {
            let mut c2 = cl.clone();
            futs.push(tokio::spawn(
                async move { c2.put(format!("s/{}", i % 50), format!("{i}"), None).await.unwrap() },
            ));
            if futs.len() >= 64 {
                for f in futs.drain(..) {
                    f.await.unwrap();
                }
            }
        }
        for f in futs {
            f.await.unwrap();
        }
        let mut last = 1;
        let mut count = 0;
        while count < writes {
            for e in next(&mut slow).await.events() {
                let rev = e.kv().unwrap().mod_revision();
                assert_eq!(rev, last + 1, "events are gap-free and unique");
                last = rev;
                count += 1;
            }
        }
    });
}

#[test]
fn fragmented_watch_responses_split_only_when_asked() {
    let c = Cluster::start_with(1, &["--max-request-bytes", "4096"]);
    rt().block_on(async {
        let mut cl = Client::connect([c.endpoints()], None).await.unwrap();
        let ops = || (0..8).map(|i| TxnOp::put(format!("big/{i}"), vec![b'v'; 400], None)).collect::<Vec<_>>();
        cl.txn(Txn::new().and_then(ops())).await.unwrap();
        let opts = WatchOptions::new().with_prefix().with_prev_key();
        let mut frag = cl.watch("big/", Some(opts.clone().with_fragment())).await.unwrap();
        assert!(next(&mut frag).await.created());
        let mut whole = cl.watch("big/", Some(opts)).await.unwrap();
        assert!(next(&mut whole).await.created());
        // One revision rewriting 8 keys of 400 bytes: with previous values the events
        // take about 7 KB, over the 4 KB limit, while the request itself fits.
        cl.txn(Txn::new().and_then(ops())).await.unwrap();
        let mut parts = Vec::new();
        loop {
            let r = next(&mut frag).await;
            parts.push((r.events().len(), r.0.fragment));
            if !r.0.fragment {
                break;
            }
        }
        assert!(parts.len() > 1, "expected fragments, got {parts:?}");
        assert_eq!(parts.iter().map(|p| p.0).sum::<usize>(), 8);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.1), "every part but the last is marked as a fragment");
        let r = next(&mut whole).await;
        assert_eq!(r.events().len(), 8, "without the fragment option a revision is never split");
        assert!(!r.0.fragment);
    });
}

/// Writes sent to a follower are forwarded to the leader, which groups them with others
/// into shared raft entries; each still gets its own answer: hundreds of concurrent puts
/// and txns through one follower each see their own key's previous value, get distinct
/// revisions, and land.
#[test]
fn concurrent_writes_through_a_follower_each_get_their_own_answer() {
    let c = Cluster::start(3);
    let leader = c.wait_leader();
    let follower = (0..3).find(|i| *i != leader).unwrap();
    rt().block_on(async {
        let cl = Client::connect([c.members[follower].endpoint()], None).await.unwrap();
        let n = 300;
        let round = |tag: &'static str| {
            let cl = cl.clone();
            async move {
                let writes = (0..n).map(|i| {
                    let mut cl = cl.clone();
                    async move {
                        let (key, value) = (format!("fw/{i}"), format!("{tag}-{i}"));
                        if i % 3 == 0 {
                            // Kubernetes' write: a txn on the key's mod revision.
                            let t =
                                Txn::new().when([Compare::version(key.as_str(), CompareOp::Greater, -1)]).and_then([
                                    TxnOp::put(key.as_str(), value.as_str(), Some(PutOptions::new().with_prev_key())),
                                ]);
                            let r = cl.txn(t).await.unwrap();
                            let prev = match &r.op_responses()[0] {
                                TxnOpResponse::Put(p) => p.prev_key().map(|kv| kv.value_str().unwrap().to_string()),
                                other => panic!("{other:?}"),
                            };
                            (i, prev, r.header().unwrap().revision())
                        } else {
                            let r = cl
                                .put(key.as_str(), value.as_str(), Some(PutOptions::new().with_prev_key()))
                                .await
                                .unwrap();
                            let prev = r.prev_key().map(|kv| kv.value_str().unwrap().to_string());
                            (i, prev, r.header().unwrap().revision())
                        }
                    }
                });
                futures::future::join_all(writes).await
            }
        };
        let first = round("one").await;
        assert!(first.iter().all(|(_, prev, _)| prev.is_none()), "new keys have no previous value");
        let second = round("two").await;
        for (i, prev, _) in &second {
            assert_eq!(prev.as_deref(), Some(format!("one-{i}").as_str()), "key fw/{i} got another write's answer");
        }
        let mut revisions: Vec<i64> = first.iter().chain(&second).map(|(_, _, r)| *r).collect();
        revisions.sort();
        revisions.dedup();
        assert_eq!(revisions.len(), 2 * n, "every write has a revision of its own");
        let mut cl = cl.clone();
        let all = cl.get("fw/", Some(GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(all.count(), n as i64);
        assert!(all.kvs().iter().all(|kv| kv.value_str().unwrap().starts_with("two-")));
    });
}
