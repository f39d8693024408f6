//! Writes: finalizers, patches, preconditions, subresources, pagination.

mod common;

use common::*;
use fake_apiserver::{Kind, Options};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use std::collections::HashSet;

fn no_kcm() -> Options {
    Options {
        controller_manager: false,
        ..Options::default()
    }
}

fn api_code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn finalizers_hold_deletion_until_the_last_goes() {
    let srv = server_with(no_kcm()).await;
    let api: Api<Lease> = Api::namespaced(client(&srv, "u"), "ns");
    let mut l: Lease = serde_json::from_value(lease_json("ns", "f")).unwrap();
    l.metadata.finalizers = Some(vec!["a.example/x".into(), "b.example/y".into()]);
    api.create(&PostParams::default(), &l).await.unwrap();
    let deleted = api.delete("f", &DeleteParams::default()).await.unwrap();
    let obj = deleted.left().expect("object while finalizers remain");
    assert!(obj.metadata.deletion_timestamp.is_some());
    assert_eq!(obj.metadata.deletion_grace_period_seconds, Some(0));
    // adding a finalizer now is refused
    let add = Patch::Merge(
        json!({"metadata": {"finalizers": ["a.example/x", "b.example/y", "c.example/z"]}}),
    );
    assert_eq!(
        api_code(api.patch("f", &PatchParams::default(), &add).await),
        (422, "Invalid".into())
    );
    // optimistic removal with JSON patch test+remove
    let rm = Patch::Json::<()>(
        serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "a.example/x"},
        {"op": "remove", "path": "/metadata/finalizers/0"}]))
        .unwrap(),
    );
    let after = api.patch("f", &PatchParams::default(), &rm).await.unwrap();
    assert_eq!(
        after.metadata.finalizers,
        Some(vec!["b.example/y".to_string()])
    );
    // the same patch again fails its test
    let (code, reason) = api_code(api.patch("f", &PatchParams::default(), &rm).await);
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(srv.get(Kind::Lease, "ns", "f").is_some());
    // merge patch replaces the list; removing the last finalizer deletes the object
    let clear = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    api.patch("f", &PatchParams::default(), &clear)
        .await
        .unwrap();
    assert!(srv.get(Kind::Lease, "ns", "f").is_none());
    assert_eq!(api_code(api.get("f").await), (404, "NotFound".into()));
}

#[tokio::test]
async fn merge_patch_and_preconditions() {
    let srv = server_with(no_kcm()).await;
    let api: Api<Lease> = Api::namespaced(client(&srv, "u"), "ns");
    let l = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(lease_json("ns", "m")).unwrap(),
        )
        .await
        .unwrap();
    let rv = l.metadata.resource_version.clone().unwrap();
    let p = api
        .patch(
            "m",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"k": "v"}, "finalizers": ["x.example/f"]}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap()["k"], "v");
    let p2 = api
        .patch(
            "m",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["y.example/g"]}})),
        )
        .await
        .unwrap();
    assert_eq!(
        p2.metadata.finalizers,
        Some(vec!["y.example/g".to_string()])
    );
    // a merge patch carrying a stale resourceVersion is a precondition
    let stale = Patch::Merge(json!({"metadata": {"resourceVersion": rv, "labels": {"k": "w"}}}));
    assert_eq!(
        api_code(api.patch("m", &PatchParams::default(), &stale).await),
        (409, "Conflict".into())
    );
    // PUT with a stale resourceVersion
    let mut old = l.clone();
    old.spec.as_mut().unwrap().holder_identity = Some("q".into());
    assert_eq!(
        api_code(api.replace("m", &PostParams::default(), &old).await),
        (409, "Conflict".into())
    );
    // PUT without resourceVersion is unconditional
    old.metadata.resource_version = None;
    api.replace("m", &PostParams::default(), &old)
        .await
        .unwrap();
    // delete preconditions
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("other".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(
        api_code(api.delete("m", &dp).await),
        (409, "Conflict".into())
    );
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: Some(rv.clone()),
        }),
        ..Default::default()
    };
    assert_eq!(
        api_code(api.delete("m", &dp).await),
        (409, "Conflict".into())
    );
    // create twice
    assert_eq!(
        api_code(
            api.create(
                &PostParams::default(),
                &serde_json::from_value(lease_json("ns", "m")).unwrap()
            )
            .await
        ),
        (409, "AlreadyExists".into())
    );
    // generateName
    let mut g: Lease = serde_json::from_value(lease_json("ns", "x")).unwrap();
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let made = api.create(&PostParams::default(), &g).await.unwrap();
    let name = made.metadata.name.unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    assert!(made.metadata.uid.is_some() && made.metadata.creation_timestamp.is_some());
}

#[tokio::test]
async fn admission_and_status_subresource() {
    let srv = server_with(no_kcm()).await;
    let c = client(&srv, "u");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "ns");
    let claim = pvcs
        .create(
            &PostParams::default(),
            &serde_json::from_value(pvc_json("ns", "c", "sc")).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        claim.metadata.finalizers,
        Some(vec!["kubernetes.io/pvc-protection".to_string()])
    );
    assert_eq!(
        claim.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    let pvs: Api<PersistentVolume> = Api::all(c);
    let pv = pvs
        .create(
            &PostParams::default(),
            &serde_json::from_value(pv_json("v", json!({}))).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        pv.metadata.finalizers,
        Some(vec!["kubernetes.io/pv-protection".to_string()])
    );
    assert_eq!(
        pv.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );
    // status changes through the main resource are ignored ...
    let p = pvs
        .patch(
            "v",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Bound"}, "metadata": {"labels": {"a": "b"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
    assert_eq!(p.metadata.labels.unwrap()["a"], "b");
    // ... and spec/metadata changes through /status
    let s = pvs.patch_status("v", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Available"}, "spec": {"capacity": {"storage": "9Gi"}}, "metadata": {"labels": {"a": "c"}}}))).await.unwrap();
    assert_eq!(s.status.unwrap().phase.as_deref(), Some("Available"));
    assert_eq!(s.spec.unwrap().capacity.unwrap()["storage"].0, "1Gi");
    assert_eq!(s.metadata.labels.unwrap()["a"], "b");
    // strategic merge adds to finalizers
    let sp = pvs
        .patch(
            "v",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"finalizers": ["example.com/keep"]}})),
        )
        .await
        .unwrap();
    assert_eq!(sp.metadata.finalizers.unwrap().len(), 2);
}

#[tokio::test]
async fn pagination_returns_each_object_once_even_under_writes() {
    let srv = server_with(no_kcm()).await;
    let objs: Vec<_> = (0..1234)
        .map(|i| lease_json(&format!("ns{}", i % 7), &format!("l{i:05}")))
        .collect();
    srv.put_objects(objs).unwrap();
    let api: Api<Lease> = Api::all(client(&srv, "u"));
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(100);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let page = api.list(&lp).await.unwrap();
        pages += 1;
        names.extend(page.items.iter().map(|l| l.metadata.name.clone().unwrap()));
        // writes between pages must not show up in this list
        srv.put_object(lease_json("ns0", &format!("new{pages}")))
            .unwrap();
        srv.delete_object(Kind::Lease, "ns3", "l00003");
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 13);
    assert_eq!(names.len(), 1234);
    let unique: HashSet<_> = names.iter().collect();
    assert_eq!(unique.len(), 1234);
    assert!(names.iter().all(|n| n.starts_with('l')));
    // namespaced list and selectors
    let ns3: Api<Lease> = Api::namespaced(client(&srv, "u"), "ns3");
    let in_ns3 = (0..1234).filter(|i| i % 7 == 3).count() - 1; // l00003 was deleted
    assert_eq!(
        ns3.list(&ListParams::default()).await.unwrap().items.len(),
        in_ns3
    );
    let one = api
        .list(&ListParams::default().fields("metadata.name=l00010"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    // a continue token from before a compaction is expired
    let first = api.list(&ListParams::default().limit(10)).await.unwrap();
    srv.compact();
    let r = api
        .list(
            &ListParams::default()
                .limit(10)
                .continue_token(&first.metadata.continue_.unwrap()),
        )
        .await;
    assert_eq!(api_code(r), (410, "Expired".into()));
}
