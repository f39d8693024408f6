//! List+watch through kube's own watcher and raw watch calls.

mod common;

use common::*;
use fake_apiserver::{Kind, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use std::time::Duration;

fn lease(name: &str) -> Lease {
    serde_json::from_value(lease_json("ns", name)).unwrap()
}

async fn next_event<S>(stream: &mut S) -> Event<Lease>
where
    S: futures::Stream<Item = Result<Event<Lease>, watcher::Error>> + Unpin,
{
    match tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("watch event in time")
    {
        Some(Ok(e)) => e,
        Some(Err(e)) => panic!("watcher error {e}"),
        None => panic!("watch ended"),
    }
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    let srv = server().await;
    let api: Api<Lease> = Api::namespaced(client(&srv, "u"), "ns");
    api.create(&PostParams::default(), &lease("pre"))
        .await
        .unwrap();
    let mut w = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next_event(&mut w).await, Event::Init));
    match next_event(&mut w).await {
        Event::InitApply(l) => assert_eq!(l.metadata.name.as_deref(), Some("pre")),
        e => panic!("{e:?}"),
    }
    assert!(matches!(next_event(&mut w).await, Event::InitDone));

    api.create(&PostParams::default(), &lease("a"))
        .await
        .unwrap();
    let patched = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "b"}})),
        )
        .await
        .unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        match next_event(&mut w).await {
            Event::Apply(l) => seen.push((
                "apply",
                l.spec.unwrap().holder_identity.unwrap(),
                l.metadata.resource_version.unwrap(),
            )),
            Event::Delete(l) => seen.push((
                "delete",
                l.spec.unwrap().holder_identity.unwrap(),
                l.metadata.resource_version.unwrap(),
            )),
            _ => {}
        }
    }
    assert_eq!(seen[0].0, "apply");
    assert_eq!(seen[0].1, "a");
    assert_eq!(
        seen[1],
        (
            "apply",
            "b".to_string(),
            patched.metadata.resource_version.unwrap()
        )
    );
    assert_eq!(seen[2].0, "delete");
    assert!(seen[2].2.parse::<u64>().unwrap() > seen[1].2.parse::<u64>().unwrap());
}

#[tokio::test]
async fn watch_resumes_from_a_resource_version() {
    let srv = server().await;
    let api: Api<Lease> = Api::namespaced(client(&srv, "u"), "ns");
    let a = api
        .create(&PostParams::default(), &lease("a"))
        .await
        .unwrap();
    let rv = a.metadata.resource_version.clone().unwrap();
    api.create(&PostParams::default(), &lease("b"))
        .await
        .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"holderIdentity": "z"}})),
    )
    .await
    .unwrap();
    let mut s = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut got = Vec::new();
    while got.len() < 2 {
        match s.try_next().await.unwrap().expect("event") {
            WatchEvent::Added(l) => got.push(format!("ADDED {}", l.metadata.name.unwrap())),
            WatchEvent::Modified(l) => got.push(format!("MODIFIED {}", l.metadata.name.unwrap())),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, vec!["ADDED b", "MODIFIED a"]);
}

#[tokio::test]
async fn watch_from_zero_starts_with_current_objects_and_honours_selectors() {
    let srv = server().await;
    let api: Api<Lease> = Api::namespaced(client(&srv, "u"), "ns");
    let mut l = lease("x");
    l.metadata.labels = Some([("app".to_string(), "nfs".to_string())].into());
    api.create(&PostParams::default(), &l).await.unwrap();
    api.create(&PostParams::default(), &lease("y"))
        .await
        .unwrap();
    let wp = WatchParams::default().labels("app=nfs").timeout(1);
    let events: Vec<_> = api
        .watch(&wp, "0")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let names: Vec<String> = events
        .into_iter()
        .filter_map(|e| match e {
            WatchEvent::Added(l) => l.metadata.name,
            _ => None,
        })
        .collect();
    assert_eq!(names, vec!["x"]);
}

#[tokio::test]
async fn compaction_makes_the_watcher_relist_and_recover() {
    let srv = server().await;
    let api: Api<Lease> = Api::namespaced(client(&srv, "u"), "ns");
    let mut w = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    assert!(matches!(next_event(&mut w).await, Event::Init));
    assert!(matches!(next_event(&mut w).await, Event::InitDone));
    api.create(&PostParams::default(), &lease("a"))
        .await
        .unwrap();
    assert!(matches!(next_event(&mut w).await, Event::Apply(_)));

    srv.compact_and_close_watches();
    api.create(&PostParams::default(), &lease("b"))
        .await
        .unwrap();

    // the resumed watch answers 410; the watcher reports it and lists again
    let mut saw_expired = false;
    loop {
        match tokio::time::timeout(WAIT, w.next())
            .await
            .expect("in time")
            .expect("stream")
        {
            Err(watcher::Error::WatchError(e)) => {
                assert_eq!(e.code, 410);
                assert_eq!(e.reason, "Expired");
                assert!(
                    e.message.starts_with("too old resource version: "),
                    "{}",
                    e.message
                );
                saw_expired = true;
            }
            Err(e) => panic!("{e}"),
            Ok(Event::Init) => break,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_expired);
    let mut relisted = Vec::new();
    loop {
        match next_event(&mut w).await {
            Event::InitApply(l) => relisted.push(l.metadata.name.unwrap()),
            Event::InitDone => break,
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(relisted, vec!["a", "b"]);
    // and keeps watching afterwards
    api.create(&PostParams::default(), &lease("c"))
        .await
        .unwrap();
    match next_event(&mut w).await {
        Event::Apply(l) => assert_eq!(l.metadata.name.as_deref(), Some("c")),
        e => panic!("{e:?}"),
    }
}

#[tokio::test]
async fn bounded_history_expires_old_revisions() {
    let srv = server_with(Options {
        history_limit: 5,
        ..Options::default()
    })
    .await;
    let api: Api<Lease> = Api::namespaced(client(&srv, "u"), "ns");
    let first = api
        .create(&PostParams::default(), &lease("l0"))
        .await
        .unwrap();
    for i in 1..10 {
        api.create(&PostParams::default(), &lease(&format!("l{i}")))
            .await
            .unwrap();
    }
    let rv = first.metadata.resource_version.unwrap();
    let events: Vec<_> = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert!(matches!(&events[0], WatchEvent::Error(e) if e.code == 410));
}

#[tokio::test]
async fn bookmarks_carry_the_current_revision() {
    let srv = server_with(Options {
        bookmark_interval: Some(Duration::from_millis(50)),
        ..Options::default()
    })
    .await;
    let api: Api<Lease> = Api::namespaced(client(&srv, "u"), "ns");
    let a = api
        .create(&PostParams::default(), &lease("a"))
        .await
        .unwrap();
    // a write to another kind moves the global revision
    srv.put_object(pv_json("pv1", json!({}))).unwrap();
    let now = srv.current_resource_version();
    let rv = a.metadata.resource_version.unwrap();
    let mut s = api
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    // nothing happened to leases since `a`, so the first thing on the stream is a bookmark
    match s.try_next().await.unwrap().expect("event") {
        WatchEvent::Bookmark(b) => {
            assert!(b.metadata.resource_version.parse::<u64>().unwrap() >= now);
        }
        other => panic!("{other:?}"),
    }
    assert!(srv.get(Kind::PersistentVolume, "", "pv1").is_some());
}

#[tokio::test]
async fn watcher_with_streaming_list_gets_initial_events() {
    let srv = server().await;
    let api: Api<Lease> = Api::namespaced(client(&srv, "u"), "ns");
    api.create(&PostParams::default(), &lease("a"))
        .await
        .unwrap();
    let cfg = watcher::Config::default().streaming_lists();
    let mut w = watcher::watcher(api.clone(), cfg).default_backoff().boxed();
    assert!(matches!(next_event(&mut w).await, Event::Init));
    assert!(matches!(next_event(&mut w).await, Event::InitApply(_)));
    assert!(matches!(next_event(&mut w).await, Event::InitDone));
}
