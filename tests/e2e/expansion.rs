//! Claim expansion scenarios. Each runs against the fake control plane, or against a real
//! cluster when `E2E_KUBECONFIG` is set (see `cluster.rs`). The crash scenarios are in
//! `fake_only.rs`.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::cluster::{PROVISIONER_USER, TestCluster};
use crate::provisioner::RunningProvisioner;

fn storage_request(claim: &PersistentVolumeClaim) -> Option<String> {
    Some(
        claim
            .spec
            .as_ref()?
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get("storage")?
            .0
            .clone(),
    )
}

/// What `kubectl get pvc` prints in its CAPACITY column.
pub fn claim_capacity(claim: &PersistentVolumeClaim) -> Option<String> {
    Some(
        claim
            .status
            .as_ref()?
            .capacity
            .as_ref()?
            .get("storage")?
            .0
            .clone(),
    )
}

pub fn volume_capacity(pv: &PersistentVolume) -> Option<String> {
    Some(
        pv.spec
            .as_ref()?
            .capacity
            .as_ref()?
            .get("storage")?
            .0
            .clone(),
    )
}

/// Asks for `size`; the API server's answer (an error for a refused request).
pub async fn ask_for(c: &TestCluster, claim: &str, size: &str) -> Result<(), kube::Error> {
    let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
    c.claims()
        .patch(claim, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}

pub async fn growable_class(c: &TestCluster, short: &str, allow: Option<bool>) -> String {
    c.create_class_with(short, &[("onDelete", "delete")], "Delete", |sc| {
        sc.allow_volume_expansion = allow
    })
    .await
}

/// Waits until the claim's status shows `size` and no resize in progress; returns the claim.
pub async fn wait_claim_holds(c: &TestCluster, claim: &str, size: &str) -> PersistentVolumeClaim {
    c.eventually(&format!("claim {claim} to hold {size}"), || async {
        let pvc = c.claims().get_opt(claim).await.ok()??;
        let status = pvc.status.as_ref()?;
        let resizing = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Resizing" || c.type_ == "FileSystemResizePending");
        (claim_capacity(&pvc).as_deref() == Some(size) && !resizing).then_some(pvc)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resizing_a_bound_claim_grows_its_volume_and_shows_in_its_status() {
    let c = TestCluster::start("resize").await;
    let root = tempfile::tempdir().unwrap();
    let p = RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    let class = growable_class(&c, "grow", Some(true)).await;
    c.create_claim(&TestCluster::claim("data", &class)).await;
    let pv = c.wait_bound("data").await;
    assert_eq!(volume_capacity(&pv).as_deref(), Some("1Mi"));
    let dir = format!("{}-data-{}", c.namespace, pv.name_any());
    std::fs::write(root.path().join(&dir).join("payload"), b"kept").unwrap();

    ask_for(&c, "data", "3Mi")
        .await
        .expect("the API server takes the request");
    // What `kubectl get pvc` shows, with the same provisioner still running: no restart.
    let claim = wait_claim_holds(&c, "data", "3Mi").await;
    assert_eq!(storage_request(&claim).as_deref(), Some("3Mi"));
    let status = claim.status.as_ref().unwrap();
    // v1.33 keeps what was allocated (quota counts it); v1.19 has no such field.
    if let Some(allocated) = &status.allocated_resources {
        assert_eq!(allocated["storage"].0, "3Mi");
    }
    assert!(
        status
            .allocated_resource_statuses
            .as_ref()
            .is_none_or(|m| !m.contains_key("storage")),
        "no resize left in progress: {status:?}"
    );
    let pv = c.volumes().get(&pv.name_any()).await.unwrap();
    assert_eq!(volume_capacity(&pv).as_deref(), Some("3Mi"));
    assert!(p.is_running());
    let note = c.wait_claim_event("data", "VolumeResizeSuccessful").await;
    assert!(
        note.contains("3Mi") && note.contains(&pv.name_any()),
        "{note}"
    );
    c.wait_claim_event("data", "Resizing").await;
    // The data is where it was: a resize touches only API objects.
    assert_eq!(
        std::fs::read(root.path().join(&dir).join("payload")).unwrap(),
        b"kept"
    );

    // A second resize of the same claim works the same way.
    ask_for(&c, "data", "5Mi").await.unwrap();
    wait_claim_holds(&c, "data", "5Mi").await;
    let pv = c.volumes().get(&pv.name_any()).await.unwrap();
    assert_eq!(volume_capacity(&pv).as_deref(), Some("5Mi"));
    c.eventually("both resizes reported", || async {
        let done = c
            .events_about(&c.namespace, "data")
            .await
            .iter()
            .filter(|e| e.reason.as_deref() == Some("VolumeResizeSuccessful"))
            .count();
        (done == 2).then_some(())
    })
    .await;
    let failed: Vec<_> = c
        .events_about(&c.namespace, "data")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("VolumeResizeFailed"))
        .filter_map(|e| e.note)
        .collect();
    assert!(failed.is_empty(), "no failure reported: {failed:?}");

    p.stop();
    if let Some(fake) = c.fake_server() {
        // (The admin's refused resizes above are 403s from admission, not RBAC.)
        let denied: Vec<_> = fake
            .denied_requests()
            .into_iter()
            .filter(|r| r.user == PROVISIONER_USER)
            .map(|r| r.path)
            .collect();
        assert!(denied.is_empty(), "requests denied by rbac/: {denied:?}");
    }
    c.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_resizes_leave_volume_and_claim_as_they_were() {
    let c = TestCluster::start("resize-refused").await;
    let root = tempfile::tempdir().unwrap();
    let options = c.provisioner_options(root.path());
    let first = RunningProvisioner::start(&options, c.provisioner_config());
    let growable = growable_class(&c, "grow", Some(true)).await;
    let fixed = growable_class(&c, "fixed", None).await;
    c.create_claim(&TestCluster::claim("shrink", &growable))
        .await;
    c.create_claim(&TestCluster::claim("fixed", &fixed)).await;
    c.create_claim(&TestCluster::claim("late", &growable)).await;
    let shrink_pv = c.wait_bound("shrink").await;
    c.wait_bound("fixed").await;
    let late_pv = c.wait_bound("late").await;

    // A shrink: the API server refuses it (v1.19: "can not be less than previous value",
    // v1.33: "can not be less than status.capacity").
    match ask_for(&c, "shrink", "512Ki").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            assert!(s.message.contains("can not be less than"), "{}", s.message);
        }
        other => panic!("a shrink was not refused: {other:?}"),
    }
    // A class without allowVolumeExpansion: the API server's admission refuses it.
    match ask_for(&c, "fixed", "2Mi").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(s.message.contains("must support resize"), "{}", s.message);
        }
        other => panic!("a resize of a fixed-size class was not refused: {other:?}"),
    }

    // Asked while expansion was allowed, then the class stopped allowing it before the
    // provisioner got to it: refused, with an Event saying why.
    first.stop();
    ask_for(&c, "late", "2Mi").await.unwrap();
    let patch = json!({"allowVolumeExpansion": false});
    c.classes()
        .patch(&growable, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    // A claim of our class bound to a PV this provisioner did not make.
    let static_pv_name = format!("{}-static", c.namespace);
    let static_pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": static_pv_name},
        "spec": {
            "accessModes": ["ReadWriteMany"], "capacity": {"storage": "1Mi"},
            "claimRef": {"namespace": c.namespace, "name": "static"},
            "nfs": {"server": "nfs.example.test", "path": "/exports/k8s/hand-made"},
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": growable,
        }
    }))
    .unwrap();
    c.volumes()
        .create(&PostParams::default(), &static_pv)
        .await
        .unwrap();
    let second = RunningProvisioner::start(&options, c.provisioner_config());
    let note = c.wait_claim_event("late", "VolumeResizeFailed").await;
    assert!(note.contains("allowVolumeExpansion"), "{note}");

    c.classes()
        .patch(
            &growable,
            &PatchParams::default(),
            &Patch::Merge(&json!({"allowVolumeExpansion": true})),
        )
        .await
        .unwrap();
    c.create_claim(&TestCluster::claim("static", &growable))
        .await;
    let bound = c.wait_bound("static").await;
    assert_eq!(bound.name_any(), static_pv_name);
    ask_for(&c, "static", "2Mi").await.unwrap();
    let note = c.wait_claim_event("static", "VolumeResizeFailed").await;
    assert!(
        note.contains(&static_pv_name) && note.contains("not provisioned by this provisioner"),
        "{note}"
    );

    // Nothing changed anywhere.
    for (claim, pv) in [
        ("shrink", shrink_pv.name_any()),
        ("late", late_pv.name_any()),
        ("static", static_pv_name.clone()),
    ] {
        let pvc = c.claims().get(claim).await.unwrap();
        assert_eq!(claim_capacity(&pvc).as_deref(), Some("1Mi"), "{claim}");
        let pv = c.volumes().get(&pv).await.unwrap();
        assert_eq!(volume_capacity(&pv).as_deref(), Some("1Mi"), "{claim}");
    }
    assert!(
        !root.path().join("hand-made").exists(),
        "no directory for the hand-made PV"
    );

    second.stop();
    if let Some(fake) = c.fake_server() {
        // (The admin's refused resizes above are 403s from admission, not RBAC.)
        let denied: Vec<_> = fake
            .denied_requests()
            .into_iter()
            .filter(|r| r.user == PROVISIONER_USER)
            .map(|r| r.path)
            .collect();
        assert!(denied.is_empty(), "requests denied by rbac/: {denied:?}");
    }
    let _ = c
        .volumes()
        .delete(&static_pv_name, &DeleteParams::default())
        .await;
    c.cleanup().await;
}
