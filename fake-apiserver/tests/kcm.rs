//! The controller-manager stand-in walks a claim through the same steps as the traces.

mod common;

use common::*;
use fake_apiserver::{FakeApiServer, Kind, KubeVersion, Options};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const KCM_ANNOTATIONS: &[&str] = &[
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
];

/// What the binder is responsible for in one watch event.
fn signature(e: &Value) -> String {
    let o = &e["object"];
    let ann: Vec<&str> = KCM_ANNOTATIONS
        .iter()
        .copied()
        .filter(|a| o["metadata"]["annotations"].get(*a).is_some())
        .collect();
    format!(
        "{} phase={} ann={:?} volumeName={} deleting={} finalizers={} capacity={}",
        e["type"].as_str().unwrap(),
        o["status"]["phase"].as_str().unwrap_or("-"),
        ann,
        o["spec"]["volumeName"].is_string(),
        o["metadata"]["deletionTimestamp"].is_string(),
        o["metadata"]["finalizers"],
        o["status"]["capacity"]["storage"].as_str().unwrap_or("-"),
    )
}

fn trace(name: &str) -> Vec<String> {
    fixture(name)
        .lines()
        .map(|l| signature(&serde_json::from_str(l).unwrap()))
        .collect()
}

/// Collects the raw watch events of a kind from `rv` on, as JSON.
fn record<K>(api: Api<K>, rv: String) -> JoinHandle<Vec<Value>>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug
        + Send
        + 'static,
{
    tokio::spawn(async move {
        let mut out = Vec::new();
        let mut s = api
            .watch(&WatchParams::default().disable_bookmarks().timeout(60), &rv)
            .await
            .unwrap()
            .boxed();
        while let Some(ev) = s.try_next().await.unwrap() {
            let (t, o) = match ev {
                WatchEvent::Added(o) => ("ADDED", o),
                WatchEvent::Modified(o) => ("MODIFIED", o),
                WatchEvent::Deleted(o) => ("DELETED", o),
                _ => continue,
            };
            let done = t == "DELETED";
            out.push(json!({"type": t, "object": serde_json::to_value(&o).unwrap()}));
            if done {
                break;
            }
        }
        out
    })
}

async fn walk_one_claim(srv: &FakeApiServer) -> (Vec<Value>, Vec<Value>) {
    let c = client(srv, "provisioner");
    srv.put_object(class_json("trace-delete", "example.com/trace", "Immediate"))
        .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "trace");
    let pvs: Api<PersistentVolume> = Api::all(c.clone());
    let rv = srv.current_resource_version().to_string();
    let claims_seen = record(pvcs.clone(), rv.clone());
    let pvs_seen = record(pvs.clone(), rv);
    // the watches must be open before the first write
    srv.wait_for(
        |s| {
            s.requests()
                .iter()
                .filter(|r| r.verb.as_deref() == Some("watch") && r.status == Some(200))
                .count()
                == 2
        },
        WAIT,
    )
    .await;

    let claim = pvcs
        .create(
            &PostParams::default(),
            &serde_json::from_value(pvc_json("trace", "data-0", "trace-delete")).unwrap(),
        )
        .await
        .unwrap();
    let uid = claim.metadata.uid.clone().unwrap();
    srv.wait_for_object(
        Kind::PersistentVolumeClaim,
        "trace",
        "data-0",
        |o| {
            o.is_some_and(|o| {
                o["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-provisioner"]
                    == "example.com/trace"
            })
        },
        WAIT,
    )
    .await
    .expect("claim annotated");

    // the provisioner's part: create the PV
    let pv = pv_json(
        &format!("pvc-{uid}"),
        json!({
            "storageClassName": "trace-delete",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "trace",
                          "name": "data-0", "uid": uid, "resourceVersion": claim.metadata.resource_version},
        }),
    );
    let mut pv = pv;
    pv["metadata"]["annotations"] = json!({"pv.kubernetes.io/provisioned-by": "example.com/trace"});
    pvs.create(&PostParams::default(), &serde_json::from_value(pv).unwrap())
        .await
        .unwrap();
    srv.wait_for_object(
        Kind::PersistentVolumeClaim,
        "trace",
        "data-0",
        |o| o.is_some_and(|o| o["status"]["phase"] == "Bound"),
        WAIT,
    )
    .await
    .expect("claim bound");

    pvcs.delete("data-0", &DeleteParams::default())
        .await
        .unwrap();
    let pv_name = format!("pvc-{uid}");
    srv.wait_for_object(
        Kind::PersistentVolume,
        "",
        &pv_name,
        |o| o.is_some_and(|o| o["status"]["phase"] == "Released"),
        WAIT,
    )
    .await
    .expect("released");
    assert!(
        srv.get(Kind::PersistentVolumeClaim, "trace", "data-0")
            .is_none()
    );
    let released = srv.get(Kind::PersistentVolume, "", &pv_name).unwrap();
    assert_eq!(released["spec"]["claimRef"]["uid"], json!(uid));

    // the provisioner reclaims and deletes the PV
    pvs.delete(&pv_name, &DeleteParams::default())
        .await
        .unwrap();
    srv.wait_for_object(Kind::PersistentVolume, "", &pv_name, |o| o.is_none(), WAIT)
        .await
        .expect("pv gone");
    (claims_seen.await.unwrap(), pvs_seen.await.unwrap())
}

#[tokio::test]
async fn binder_walks_a_claim_like_v1_33() {
    let srv = server().await;
    let (claims, pvs) = walk_one_claim(&srv).await;
    let got: Vec<String> = claims.iter().map(signature).collect();
    assert_eq!(got, trace("v1.33-claim-watch.jsonl"));
    let got: Vec<String> = pvs.iter().map(signature).collect();
    assert_eq!(got, trace("v1.33-pv-watch.jsonl"));
    // claim status copied from the PV; PV phase changes are time-stamped on v1.33
    let bound = claims
        .iter()
        .find(|e| e["object"]["status"]["phase"] == "Bound")
        .unwrap();
    assert_eq!(
        bound["object"]["status"]["accessModes"],
        json!(["ReadWriteMany"])
    );
    assert!(
        pvs.iter()
            .all(|e| e["object"]["status"]["lastPhaseTransitionTime"].is_string())
    );
    // the DELETED event carries the last stored state, as etcd reports it
    let last = claims.last().unwrap();
    assert_eq!(
        last["object"]["metadata"]["finalizers"],
        json!(["kubernetes.io/pvc-protection"])
    );
}

#[tokio::test]
async fn binder_walks_a_claim_like_v1_19() {
    let srv = server_with(Options {
        kube_version: KubeVersion::V1_19,
        ..Options::default()
    })
    .await;
    let (claims, pvs) = walk_one_claim(&srv).await;
    let got: Vec<String> = claims.iter().map(signature).collect();
    assert_eq!(got, trace("v1.19-claim-watch.jsonl"));
    assert!(claims.iter().all(|e| {
        e["object"]["metadata"]["annotations"]
            .get("volume.kubernetes.io/storage-provisioner")
            .is_none()
    }));
    let got: Vec<String> = pvs.iter().map(signature).collect();
    assert_eq!(got, trace("v1.19-pv-watch.jsonl"));
    assert!(pvs.iter().all(|e| {
        e["object"]["status"]
            .get("lastPhaseTransitionTime")
            .is_none()
    }));
}

#[tokio::test]
async fn wait_for_first_consumer_waits_for_selected_node() {
    let srv = server().await;
    srv.put_object(class_json(
        "wffc",
        "example.com/nfs",
        "WaitForFirstConsumer",
    ))
    .unwrap();
    srv.put_object(class_json("now", "example.com/nfs", "Immediate"))
        .unwrap();
    srv.put_object(class_json(
        "intree",
        "kubernetes.io/no-provisioner",
        "Immediate",
    ))
    .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client(&srv, "u"), "ns");
    for (name, class) in [("late", "wffc"), ("local", "intree"), ("marker", "now")] {
        pvcs.create(
            &PostParams::default(),
            &serde_json::from_value(pvc_json("ns", name, class)).unwrap(),
        )
        .await
        .unwrap();
    }
    // once the later claim is handled, the earlier ones have been looked at too
    let ann = "volume.kubernetes.io/storage-provisioner";
    srv.wait_for_object(
        Kind::PersistentVolumeClaim,
        "ns",
        "marker",
        |o| o.is_some_and(|o| o["metadata"]["annotations"][ann] == "example.com/nfs"),
        WAIT,
    )
    .await
    .expect("marker annotated");
    let late = srv.get(Kind::PersistentVolumeClaim, "ns", "late").unwrap();
    assert!(late["metadata"]["annotations"].get(ann).is_none(), "{late}");
    let local = srv.get(Kind::PersistentVolumeClaim, "ns", "local").unwrap();
    assert!(local["metadata"]["annotations"].get(ann).is_none());
    // the scheduler picks a node
    srv.modify_object(Kind::PersistentVolumeClaim, "ns", "late", |o| {
        o["metadata"]["annotations"] = json!({"volume.kubernetes.io/selected-node": "node-1"});
    })
    .unwrap();
    srv.wait_for_object(
        Kind::PersistentVolumeClaim,
        "ns",
        "late",
        |o| o.is_some_and(|o| o["metadata"]["annotations"][ann] == "example.com/nfs"),
        WAIT,
    )
    .await
    .expect("annotated after selected-node");
}

#[tokio::test]
async fn paused_binder_does_nothing_until_resumed() {
    let srv = server().await;
    srv.put_object(class_json("now", "example.com/nfs", "Immediate"))
        .unwrap();
    srv.pause_controller_manager(true);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client(&srv, "u"), "ns");
    pvcs.create(
        &PostParams::default(),
        &serde_json::from_value(pvc_json("ns", "c", "now")).unwrap(),
    )
    .await
    .unwrap();
    let before = srv.current_resource_version();
    let c = srv.get(Kind::PersistentVolumeClaim, "ns", "c").unwrap();
    assert!(c["metadata"].get("annotations").is_none());
    assert_eq!(srv.current_resource_version(), before);
    srv.pause_controller_manager(false);
    srv.wait_for_object(
        Kind::PersistentVolumeClaim,
        "ns",
        "c",
        |o| o.is_some_and(|o| o["metadata"]["annotations"].is_object()),
        WAIT,
    )
    .await
    .expect("annotated after resume");
}

#[tokio::test]
async fn stale_claim_ref_releases_and_retain_stays_released() {
    let srv = server().await;
    let pvs: Api<PersistentVolume> = Api::all(client(&srv, "u"));
    // a claimRef to a claim that does not exist (wrong uid): released, like the real binder
    let pv = pv_json(
        "orphan",
        json!({"persistentVolumeReclaimPolicy": "Retain",
        "claimRef": {"namespace": "ns", "name": "gone", "uid": "00000000-0000-4000-8000-000000000000"}}),
    );
    pvs.create(&PostParams::default(), &serde_json::from_value(pv).unwrap())
        .await
        .unwrap();
    srv.wait_for_object(
        Kind::PersistentVolume,
        "",
        "orphan",
        |o| o.is_some_and(|o| o["status"]["phase"] == "Released"),
        WAIT,
    )
    .await
    .expect("released");
    // no claimRef: available
    pvs.create(
        &PostParams::default(),
        &serde_json::from_value(pv_json("free", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    srv.wait_for_object(
        Kind::PersistentVolume,
        "",
        "free",
        |o| o.is_some_and(|o| o["status"]["phase"] == "Available"),
        WAIT,
    )
    .await
    .expect("available");
    // the Retain PV was not touched meanwhile
    let orphan = srv.get(Kind::PersistentVolume, "", "orphan").unwrap();
    assert_eq!(orphan["status"]["phase"], "Released");
    // a provisioner finalizer keeps a deleted PV after pv-protection let go
    pvs.patch(
        "orphan",
        &Default::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"finalizers": ["kubernetes.io/pv-protection", "example.com/nfs"]}}),
        ),
    )
    .await
    .unwrap();
    pvs.delete("orphan", &DeleteParams::default())
        .await
        .unwrap();
    let left = srv
        .wait_for_object(
            Kind::PersistentVolume,
            "",
            "orphan",
            |o| o.is_some_and(|o| o["metadata"]["finalizers"] == json!(["example.com/nfs"])),
            WAIT,
        )
        .await
        .expect("pv-protection removed");
    assert!(left.unwrap()["metadata"]["deletionTimestamp"].is_string());
}
