//! Provisioning and reclaim scenarios. Each runs against the fake control plane, or against a
//! real cluster when `E2E_KUBECONFIG` is set (see `cluster.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeSpec,
    TypedLocalObjectReference,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use nfs_provisioner::persistent_volume::{ANN_ON_DELETE, ANN_PROVISIONED_BY, FINALIZER};

use crate::cluster::{TestCluster, entries};
use crate::provisioner::RunningProvisioner;

mod clone;
mod hand_back;

struct Scenario {
    cluster: TestCluster,
    root: tempfile::TempDir,
    provisioner: Option<RunningProvisioner>,
}

impl Scenario {
    async fn start(test: &str) -> Self {
        let cluster = TestCluster::start(test).await;
        Self::with_cluster(cluster)
    }

    fn with_cluster(cluster: TestCluster) -> Self {
        let root = tempfile::tempdir().expect("temp NFS root");
        let provisioner = Some(RunningProvisioner::start(
            &cluster.provisioner_options(root.path()),
            cluster.provisioner_config(),
        ));
        Self {
            cluster,
            root,
            provisioner,
        }
    }

    fn dir(&self, rel: &str) -> std::path::PathBuf {
        self.root.path().join(rel)
    }

    /// The directory the default naming gives a claim.
    fn default_dir(&self, claim: &str, pv: &PersistentVolume) -> String {
        format!("{}-{claim}-{}", self.cluster.namespace, pv.name_any())
    }

    async fn finish(mut self) {
        if let Some(p) = self.provisioner.take() {
            p.stop();
        }
        // The fake enforced the shipped RBAC: the scenario needed nothing it does not grant.
        if let Some(fake) = self.cluster.fake_server() {
            let denied: Vec<_> = fake
                .denied_requests()
                .into_iter()
                .map(|r| format!("{} {}", r.method, r.path))
                .collect();
            assert!(denied.is_empty(), "requests denied by rbac/: {denied:?}");
        }
        self.cluster.cleanup().await;
    }
}

fn nfs_of(pv: &PersistentVolume) -> &NFSVolumeSource {
    pv.spec
        .as_ref()
        .and_then(|s| s.nfs.as_ref())
        .expect("nfs PV")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisions_a_bound_volume_and_archives_it_by_default() {
    let s = Scenario::start("archive-default").await;
    let c = &s.cluster;
    let class = c
        .create_class_with("default", &[], "Delete", |sc| {
            sc.mount_options = Some(vec!["nfsvers=4.1".into(), "hard".into()]);
        })
        .await;
    let claim = c.create_claim(&TestCluster::claim("data-0", &class)).await;
    let pv = c.wait_bound("data-0").await;

    // The PV carries everything the claim and class asked for.
    assert_eq!(pv.name_any(), format!("pvc-{}", claim.uid().unwrap()));
    let spec = pv.spec.as_ref().unwrap();
    assert_eq!(
        spec.capacity.as_ref().unwrap()["storage"],
        Quantity("1Mi".into())
    );
    assert_eq!(
        spec.access_modes.as_deref(),
        Some(&["ReadWriteMany".to_string()][..])
    );
    assert_eq!(
        spec.mount_options.as_deref(),
        Some(&["nfsvers=4.1".to_string(), "hard".to_string()][..])
    );
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    assert_eq!(spec.storage_class_name.as_deref(), Some(class.as_str()));
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
    let claim_ref = spec.claim_ref.as_ref().unwrap();
    assert_eq!(claim_ref.uid, claim.uid());
    assert_eq!(claim_ref.name.as_deref(), Some("data-0"));
    assert_eq!(
        pv.annotations().get(ANN_PROVISIONED_BY),
        Some(&c.provisioner_name)
    );
    assert_eq!(
        pv.annotations().get(ANN_ON_DELETE).map(String::as_str),
        Some("archive")
    );
    assert!(pv.finalizers().iter().any(|f| f == FINALIZER));
    let dir = s.default_dir("data-0", &pv);
    assert_eq!(nfs_of(&pv).server, "nfs.example.test");
    assert_eq!(nfs_of(&pv).path, format!("/exports/k8s/{dir}"));
    assert!(s.dir(&dir).is_dir(), "volume directory exists");
    c.wait_claim_event("data-0", "ProvisioningSucceeded").await;

    std::fs::write(s.dir(&dir).join("payload"), b"keep me").unwrap();
    c.delete_claim("data-0").await;
    c.wait_volume_gone(&pv.name_any()).await;
    let archive = format!("archived-{}-data-0-{}", c.namespace, pv.name_any());
    assert!(!s.dir(&dir).exists(), "volume directory moved away");
    assert_eq!(
        std::fs::read(s.dir(&archive).join("payload")).unwrap(),
        b"keep me"
    );
    assert_eq!(
        entries(s.root.path()),
        vec![archive.clone(), format!("{archive}/payload")]
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_policies_delete_or_keep_the_directory() {
    let s = Scenario::start("delete-policies").await;
    let c = &s.cluster;
    let deletes = c
        .create_class("ondelete-delete", &[("onDelete", "delete")], "Delete")
        .await;
    let legacy_deletes = c
        .create_class("archive-false", &[("archiveOnDelete", "false")], "Delete")
        .await;
    let retains = c
        .create_class("ondelete-retain", &[("onDelete", "retain")], "Delete")
        .await;
    let archives = c
        .create_class("ondelete-archive", &[("onDelete", "archive")], "Delete")
        .await;
    for (claim, class) in [
        ("a", &deletes),
        ("b", &legacy_deletes),
        ("c", &retains),
        ("d", &archives),
    ] {
        c.create_claim(&TestCluster::claim(claim, class)).await;
    }
    let mut volumes = BTreeMap::new();
    for claim in ["a", "b", "c", "d"] {
        let pv = c.wait_bound(claim).await;
        let dir = s.default_dir(claim, &pv);
        std::fs::write(s.dir(&dir).join("data"), claim).unwrap();
        volumes.insert(claim, (pv, dir));
    }
    assert_eq!(volumes["a"].0.annotations()[ANN_ON_DELETE], "delete");
    assert_eq!(volumes["b"].0.annotations()[ANN_ON_DELETE], "delete");
    assert_eq!(volumes["c"].0.annotations()[ANN_ON_DELETE], "retain");
    for claim in ["a", "b", "c", "d"] {
        c.delete_claim(claim).await;
    }
    for (pv, _) in volumes.values() {
        c.wait_volume_gone(&pv.name_any()).await;
    }
    assert!(
        !s.dir(&volumes["a"].1).exists(),
        "onDelete: delete removes the directory"
    );
    assert!(
        !s.dir(&volumes["b"].1).exists(),
        "archiveOnDelete: false removes the directory"
    );
    assert_eq!(
        std::fs::read(s.dir(&volumes["c"].1).join("data")).unwrap(),
        b"c",
        "onDelete: retain keeps it"
    );
    let archive = format!("archived-{}-d-{}", c.namespace, volumes["d"].0.name_any());
    assert_eq!(std::fs::read(s.dir(&archive).join("data")).unwrap(), b"d");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_reclaim_keeps_the_volume_and_its_data() {
    let s = Scenario::start("retain").await;
    let c = &s.cluster;
    let class = c
        .create_class("retain", &[("onDelete", "delete")], "Retain")
        .await;
    c.create_claim(&TestCluster::claim("keep", &class)).await;
    let pv = c.wait_bound("keep").await;
    let dir = s.default_dir("keep", &pv);
    c.delete_claim("keep").await;
    let released = c.wait_volume_phase(&pv.name_any(), "Released").await;
    // Give the provisioner time to (wrongly) act; it must not.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let still = c.volumes().get(&pv.name_any()).await.expect("PV kept");
    assert!(still.metadata.deletion_timestamp.is_none());
    assert_eq!(released.name_any(), still.name_any());
    assert!(s.dir(&dir).is_dir(), "data kept");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_pattern_places_directories_and_removes_empty_parents() {
    let s = Scenario::start("path-pattern").await;
    let c = &s.cluster;
    let class = c
        .create_class(
            "pattern",
            &[
                (
                    "pathPattern",
                    "${.PVC.namespace}/${.PVC.labels.team}/${.PVC.annotations.nfs.io/storage-path}",
                ),
                ("onDelete", "delete"),
            ],
            "Delete",
        )
        .await;
    let mut claim = TestCluster::claim("web", &class);
    claim.metadata.labels = Some(BTreeMap::from([("team".into(), "blue".into())]));
    claim.metadata.annotations = Some(BTreeMap::from([(
        "nfs.io/storage-path".into(),
        "www".into(),
    )]));
    c.create_claim(&claim).await;
    let pv = c.wait_bound("web").await;
    let rel = format!("{}/blue/www", c.namespace);
    assert_eq!(nfs_of(&pv).path, format!("/exports/k8s/{rel}"));
    assert!(s.dir(&rel).is_dir());
    c.delete_claim("web").await;
    c.wait_volume_gone(&pv.name_any()).await;
    assert!(
        entries(s.root.path()).is_empty(),
        "empty template parents removed: {:?}",
        entries(s.root.path())
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_claims_and_classes_are_refused_clearly_without_blocking_others() {
    let s = Scenario::start("rejections").await;
    let c = &s.cluster;
    let good = c.create_class("good", &[], "Delete").await;
    let unknown_param = c
        .create_class("unknown", &[("archiveOnDelet", "false")], "Delete")
        .await;
    let bad_value = c
        .create_class("badvalue", &[("onDelete", "shred")], "Delete")
        .await;
    let pattern = c
        .create_class(
            "pattern",
            &[("pathPattern", "${.PVC.annotations.nfs.io/storage-path}")],
            "Delete",
        )
        .await;

    let mut block = TestCluster::claim("block", &good);
    block.spec.as_mut().unwrap().volume_mode = Some("Block".into());
    let mut selector = TestCluster::claim("selector", &good);
    selector.spec.as_mut().unwrap().selector = Some(LabelSelector {
        match_labels: Some(BTreeMap::from([("disk".into(), "fast".into())])),
        ..Default::default()
    });
    let mut clone = TestCluster::claim("clone", &good);
    clone.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
        api_group: None,
        kind: "PersistentVolumeClaim".into(),
        name: "source".into(),
    });
    let mut escape = TestCluster::claim("escape", &pattern);
    escape.metadata.annotations = Some(BTreeMap::from([(
        "nfs.io/storage-path".into(),
        "../../etc".into(),
    )]));
    let missing = TestCluster::claim("missing", &pattern);
    let unknown = TestCluster::claim("unknown", &unknown_param);
    let badvalue = TestCluster::claim("badvalue", &bad_value);
    for claim in [
        &block, &selector, &clone, &escape, &missing, &unknown, &badvalue,
    ] {
        c.create_claim(claim).await;
    }
    c.create_claim(&TestCluster::claim("fine", &good)).await;

    let expectations = [
        ("block", "volumeMode Block"),
        ("selector", "spec.selector"),
        ("clone", "dataSource"),
        ("escape", "nfs.io/storage-path"),
        ("missing", "nfs.io/storage-path"),
        ("unknown", "archiveOnDelet"),
        ("badvalue", "shred"),
    ];
    for (claim, needle) in expectations {
        let note = c.wait_claim_event(claim, "ProvisioningFailed").await;
        assert!(
            note.contains(needle),
            "event on {claim} should mention {needle:?}: {note}"
        );
    }
    // Other claims are not held up.
    let fine = c.wait_bound("fine").await;
    // Nothing was created for any refused claim: no PV and no directory.
    for (claim, _) in expectations {
        let cl = c.claims().get(claim).await.unwrap();
        assert_eq!(
            cl.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Pending"),
            "{claim}"
        );
        let pv = format!("pvc-{}", cl.uid().unwrap());
        assert!(
            c.volumes().get_opt(&pv).await.unwrap().is_none(),
            "no PV for {claim}"
        );
    }
    assert_eq!(entries(s.root.path()), vec![s.default_dir("fine", &fine)]);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixing_the_class_provisions_waiting_claims_without_a_restart() {
    let s = Scenario::start("fix-class").await;
    let c = &s.cluster;
    let class = c
        .create_class("fixme", &[("onDelete", "sometimes")], "Delete")
        .await;
    c.create_claim(&TestCluster::claim("waiting", &class)).await;
    c.wait_claim_event("waiting", "ProvisioningFailed").await;
    c.replace_class(&class, &[("onDelete", "delete")], "Delete")
        .await;
    let pv = c.wait_bound("waiting").await;
    assert_eq!(pv.annotations()[ANN_ON_DELETE], "delete");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_policy_wins_over_later_class_changes() {
    let s = Scenario::start("recorded-policy").await;
    let c = &s.cluster;
    let class = c
        .create_class("keepdata", &[("onDelete", "retain")], "Delete")
        .await;
    c.create_claim(&TestCluster::claim("precious", &class))
        .await;
    let pv = c.wait_bound("precious").await;
    let dir = s.default_dir("precious", &pv);
    // Someone replaces the class with one that deletes data.
    c.replace_class(&class, &[("onDelete", "delete")], "Delete")
        .await;
    c.delete_claim("precious").await;
    c.wait_volume_gone(&pv.name_any()).await;
    assert!(
        s.dir(&dir).is_dir(),
        "policy recorded at provisioning (retain) was applied"
    );
    s.finish().await;
}

/// A PV as the Go provisioner made it: no policy annotation, no finalizer.
pub(crate) fn legacy_volume(
    c: &TestCluster,
    name: &str,
    claim: &str,
    claim_uid: &str,
    class: &str,
    dir: &str,
) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some(BTreeMap::from([(
                ANN_PROVISIONED_BY.into(),
                c.provisioner_name.clone(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Mi".into()))])),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(c.namespace.clone()),
                name: Some(claim.into()),
                uid: Some(claim_uid.into()),
                ..Default::default()
            }),
            nfs: Some(NFSVolumeSource {
                server: "nfs.example.test".into(),
                path: format!("/exports/k8s/{dir}"),
                read_only: None,
            }),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            storage_class_name: Some(class.into()),
            ..Default::default()
        }),
        status: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_volumes_of_the_go_provisioner() {
    let s = Scenario::start("adoption").await;
    let c = &s.cluster;
    let deletes = c
        .create_class("legacy-delete", &[("archiveOnDelete", "false")], "Delete")
        .await;
    // The second volume's class is gone (as after an uninstall): "never delete data when in
    // doubt" archives it. (A class that never existed here, so no cache can still hold it.)
    let vanishing = format!("{}-legacy-gone", c.namespace);
    let mut pvs = Vec::new();
    for (claim, class) in [("old-a", &deletes), ("old-b", &vanishing)] {
        let mut pvc = TestCluster::claim(claim, class);
        let pv_name = format!("{}-{claim}-legacy", c.namespace);
        pvc.spec.as_mut().unwrap().volume_name = Some(pv_name.clone());
        let created = c.create_claim(&pvc).await;
        let dir = format!("{}-{claim}-{pv_name}", c.namespace);
        std::fs::create_dir(s.dir(&dir)).unwrap();
        std::fs::write(s.dir(&dir).join("old-data"), claim).unwrap();
        let pv = legacy_volume(c, &pv_name, claim, &created.uid().unwrap(), class, &dir);
        c.volumes()
            .create(&PostParams::default(), &pv)
            .await
            .expect("legacy PV");
        pvs.push((claim, pv_name, dir));
    }
    for (claim, pv_name, _) in &pvs {
        c.wait_bound(claim).await;
        c.eventually("adoption finalizer", || async {
            let pv = c.volumes().get(pv_name).await.ok()?;
            pv.finalizers().iter().any(|f| f == FINALIZER).then_some(())
        })
        .await;
    }
    for (claim, _, _) in &pvs {
        c.delete_claim(claim).await;
    }
    for (_, pv_name, _) in &pvs {
        c.wait_volume_gone(pv_name).await;
    }
    assert!(
        !s.dir(&pvs[0].2).exists(),
        "class policy (delete) applied to the adopted volume"
    );
    let archive = format!("archived-{}-old-b-{}", c.namespace, pvs[1].1);
    assert_eq!(
        std::fs::read(s.dir(&archive).join("old-data")).unwrap(),
        b"old-b",
        "archived, not deleted"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_another_volume_uses_is_never_deleted() {
    let s = Scenario::start("shared").await;
    let c = &s.cluster;
    let class = c
        .create_class("shared", &[("onDelete", "delete")], "Delete")
        .await;
    c.create_claim(&TestCluster::claim("first", &class)).await;
    let pv = c.wait_bound("first").await;
    let dir = s.default_dir("first", &pv);
    // A hand-made static PV pointing at the same directory.
    let mut other = legacy_volume(
        c,
        &format!("{}-static", c.namespace),
        "nobody",
        "0",
        &class,
        &dir,
    );
    other.metadata.annotations = None;
    other.spec.as_mut().unwrap().claim_ref = None;
    other
        .spec
        .as_mut()
        .unwrap()
        .persistent_volume_reclaim_policy = Some("Retain".into());
    // A class no claim uses, so that on a real cluster no one else's claim binds to it.
    other.spec.as_mut().unwrap().storage_class_name = Some(format!("{}-static", c.namespace));
    c.volumes()
        .create(&PostParams::default(), &other)
        .await
        .expect("static PV");
    std::fs::write(s.dir(&dir).join("shared-data"), b"x").unwrap();

    c.delete_claim("first").await;
    c.wait_volume_gone(&pv.name_any()).await;
    assert!(
        s.dir(&dir).join("shared-data").is_file(),
        "shared directory left in place"
    );
    let note = c
        .wait_volume_event(&pv.name_any(), "VolumeDirectoryShared")
        .await;
    assert!(note.contains(&other.name_any()), "{note}");
    let _ = c
        .volumes()
        .delete(&other.name_any(), &DeleteParams::default())
        .await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_bound_volume_waits_for_its_claim() {
    let s = Scenario::start("delete-bound-pv").await;
    let c = &s.cluster;
    let class = c
        .create_class("bound", &[("onDelete", "delete")], "Delete")
        .await;
    c.create_claim(&TestCluster::claim("in-use", &class)).await;
    let pv = c.wait_bound("in-use").await;
    let dir = s.default_dir("in-use", &pv);
    c.volumes()
        .delete(&pv.name_any(), &DeleteParams::default())
        .await
        .expect("delete PV");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let terminating = c
        .volumes()
        .get(&pv.name_any())
        .await
        .expect("PV still there");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert!(
        s.dir(&dir).is_dir(),
        "data of a bound volume is never touched"
    );

    c.delete_claim("in-use").await;
    c.wait_volume_gone(&pv.name_any()).await;
    assert!(
        !s.dir(&dir).exists(),
        "policy applied once the claim was gone"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_first_consumer_claims_wait_for_a_node() {
    let s = Scenario::start("wffc").await;
    let c = &s.cluster;
    let class = c
        .create_class_with("wffc", &[], "Delete", |sc| {
            sc.volume_binding_mode = Some("WaitForFirstConsumer".into());
        })
        .await;
    let claim = c.create_claim(&TestCluster::claim("late", &class)).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let pv = format!("pvc-{}", claim.uid().unwrap());
    assert!(
        c.volumes().get_opt(&pv).await.unwrap().is_none(),
        "nothing before a node is selected"
    );
    assert!(entries(s.root.path()).is_empty());
    let patch = serde_json::json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "node-1"}}});
    c.claims()
        .patch("late", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("select node");
    c.wait_bound("late").await;
    s.finish().await;
}

/// A PV of someone else that already has the name this provisioner gives the claim's volume
/// (`pvc-<claim uid>`): provisioning fails with an event naming it, the claim stays Pending
/// and the foreign PV is left as it was. (It used to count as "already provisioned".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_name_taken_by_someone_else_fails_instead_of_passing_as_provisioned() {
    let s = Scenario::start("name-taken").await;
    let c = &s.cluster;
    // WaitForFirstConsumer holds the provisioner back until the foreign PV exists.
    let class = c
        .create_class_with("taken", &[], "Delete", |sc| {
            sc.volume_binding_mode = Some("WaitForFirstConsumer".into());
        })
        .await;
    let claim = c.create_claim(&TestCluster::claim("taken", &class)).await;
    let pv_name = format!("pvc-{}", claim.uid().unwrap());
    let foreign = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name.clone()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Mi".into()))])),
            nfs: Some(NFSVolumeSource {
                server: "other-filer.example.test".into(),
                path: "/elsewhere".into(),
                read_only: None,
            }),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            storage_class_name: Some(format!("{class}-someone-else")),
            ..Default::default()
        }),
        ..Default::default()
    };
    c.volumes()
        .create(&PostParams::default(), &foreign)
        .await
        .expect("create the foreign PV");
    let patch = serde_json::json!({"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "node-1"}}});
    c.claims()
        .patch("taken", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("select node");

    let note = c.wait_claim_event("taken", "ProvisioningFailed").await;
    assert!(note.contains(&pv_name), "the event names the PV: {note}");
    let after = c
        .volumes()
        .get(&pv_name)
        .await
        .expect("foreign PV still there");
    assert_eq!(nfs_of(&after).server, "other-filer.example.test");
    assert!(!after.annotations().contains_key(ANN_PROVISIONED_BY));
    let pending = c.claims().get("taken").await.expect("claim");
    assert!(
        pending
            .spec
            .and_then(|spec| spec.volume_name)
            .is_none_or(|v| v.is_empty()),
        "the claim is not bound to the foreign PV"
    );
    assert!(
        c.events_about(&c.namespace, "taken")
            .await
            .iter()
            .all(|e| e.reason.as_deref() != Some("ProvisioningSucceeded")),
        "no success is reported"
    );
    c.delete_claim("taken").await;
    c.volumes()
        .delete(&pv_name, &DeleteParams::default())
        .await
        .expect("remove the foreign PV");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_claims_is_provisioned_and_reclaimed_exactly_once_each() {
    let n: usize = std::env::var("E2E_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let s = Scenario::start("burst").await;
    let c = &s.cluster;
    let class = c
        .create_class("burst", &[("onDelete", "delete")], "Delete")
        .await;
    let names: Vec<String> = (0..n).map(|i| format!("burst-{i:04}")).collect();
    let claims: Vec<_> = names
        .iter()
        .map(|n| TestCluster::claim(n, &class))
        .collect();
    futures::future::join_all(claims.iter().map(|claim| c.create_claim(claim))).await;
    let bound = c.wait_all_bound(n).await;
    let dirs = entries(s.root.path());
    assert_eq!(dirs.len(), n, "one directory per claim");
    for claim in &bound {
        let pv = claim.spec.as_ref().unwrap().volume_name.clone().unwrap();
        assert_eq!(
            pv,
            format!("pvc-{}", claim.uid().unwrap()),
            "PV named after the claim"
        );
    }
    let ours = c.our_volumes().await.len();
    assert_eq!(ours, n, "exactly one PV per claim");

    futures::future::join_all(names.iter().map(|n| c.delete_claim(n))).await;
    c.eventually("all PVs gone", || async {
        let left = c.our_volumes().await.len();
        (left == 0).then_some(())
    })
    .await;
    assert!(entries(s.root.path()).is_empty(), "every directory deleted");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_of_another_export_is_never_touched() {
    let s = Scenario::start("foreign").await;
    let c = &s.cluster;
    let class = c
        .create_class("foreign", &[("onDelete", "delete")], "Delete")
        .await;
    std::fs::create_dir(s.dir("foreign-dir")).unwrap();
    std::fs::write(s.dir("foreign-dir").join("data"), b"not ours").unwrap();
    let name = format!("{}-foreign", c.namespace);
    let mut pv = legacy_volume(c, &name, "nobody", "0", &class, "foreign-dir");
    pv.spec.as_mut().unwrap().claim_ref = None;
    pv.spec.as_mut().unwrap().nfs.as_mut().unwrap().server = "other-server.example.test".into();
    c.volumes()
        .create(&PostParams::default(), &pv)
        .await
        .expect("PV");
    c.eventually("adoption finalizer", || async {
        let pv = c.volumes().get(&name).await.ok()?;
        pv.finalizers().iter().any(|f| f == FINALIZER).then_some(())
    })
    .await;
    c.volumes()
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete PV");
    c.wait_volume_gone(&name).await;
    let note = c.wait_volume_event(&name, "VolumeFailedDelete").await;
    assert!(note.contains("other-server.example.test"), "{note}");
    assert_eq!(
        std::fs::read(s.dir("foreign-dir").join("data")).unwrap(),
        b"not ours"
    );
    s.finish().await;
}

/// A PV that carries our finalizer but no `provisioned-by` annotation (someone removed it, or
/// a tool copied the finalizer) is not known as ours: deleting it completes instead of hanging
/// in Terminating, with an event, and its directory is never touched, although it names our
/// server, our export and a delete policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_ours_only_by_its_finalizer_is_released_without_touching_its_data() {
    let s = Scenario::start("finalizer-only").await;
    let c = &s.cluster;
    let class = c
        .create_class("finalizer-only", &[("onDelete", "delete")], "Delete")
        .await;
    std::fs::create_dir(s.dir("unannotated")).unwrap();
    std::fs::write(s.dir("unannotated").join("data"), b"keep me").unwrap();
    let name = format!("{}-finalizer-only", c.namespace);
    let mut pv = legacy_volume(c, &name, "nobody", "0", &class, "unannotated");
    pv.spec.as_mut().unwrap().claim_ref = None;
    pv.metadata.annotations = Some(BTreeMap::from([(ANN_ON_DELETE.into(), "delete".into())]));
    pv.metadata.finalizers = Some(vec![FINALIZER.into()]);
    c.volumes()
        .create(&PostParams::default(), &pv)
        .await
        .expect("PV");
    c.volumes()
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete PV");
    c.wait_volume_gone(&name).await;
    let note = c.wait_volume_event(&name, "VolumeReleasedDataKept").await;
    assert!(note.contains("left untouched"), "{note}");
    assert_eq!(
        std::fs::read(s.dir("unannotated").join("data")).unwrap(),
        b"keep me"
    );
    assert_eq!(entries(s.root.path()), ["unannotated", "unannotated/data"]);
    s.finish().await;
}

/// Nested both ways: class `outer` puts a claim's volume at `<ns>/shared`, class `inner` at
/// `<ns>/shared/<claim>`. Deleting either while the other exists keeps its directory in place
/// (with an event naming the other PV); no live data of one volume goes with the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_volumes_never_delete_each_other() {
    let s = Scenario::start("nested").await;
    let c = &s.cluster;
    let outer = c
        .create_class(
            "outer",
            &[
                ("pathPattern", "${.PVC.namespace}/shared"),
                ("onDelete", "delete"),
            ],
            "Delete",
        )
        .await;
    let inner = c
        .create_class(
            "inner",
            &[
                ("pathPattern", "${.PVC.namespace}/shared/${.PVC.name}"),
                ("onDelete", "delete"),
            ],
            "Delete",
        )
        .await;
    c.create_claim(&TestCluster::claim("a", &outer)).await;
    let outer_pv = c.wait_bound("a").await;
    c.create_claim(&TestCluster::claim("b", &inner)).await;
    let inner_pv = c.wait_bound("b").await;
    let shared = format!("{}/shared", c.namespace);
    std::fs::write(s.dir(&shared).join("outer-data"), b"a").unwrap();
    std::fs::write(s.dir(&format!("{shared}/b")).join("inner-data"), b"b").unwrap();

    // The outer volume contains the inner one's directory: kept.
    c.delete_claim("a").await;
    c.wait_volume_gone(&outer_pv.name_any()).await;
    let note = c
        .wait_volume_event(&outer_pv.name_any(), "VolumeDirectoryShared")
        .await;
    assert!(note.contains(&inner_pv.name_any()), "{note}");
    assert!(
        s.dir(&format!("{shared}/b/inner-data")).is_file(),
        "inner volume's data kept"
    );
    assert!(
        s.dir(&format!("{shared}/outer-data")).is_file(),
        "outer directory kept"
    );

    // A new outer volume on the kept directory, then the inner one goes: it lies inside the
    // outer volume's directory, so it is kept too.
    c.create_claim(&TestCluster::claim("a2", &outer)).await;
    let outer2 = c.wait_bound("a2").await;
    c.delete_claim("b").await;
    c.wait_volume_gone(&inner_pv.name_any()).await;
    let note = c
        .wait_volume_event(&inner_pv.name_any(), "VolumeDirectoryShared")
        .await;
    assert!(note.contains(&outer2.name_any()), "{note}");
    assert!(
        s.dir(&format!("{shared}/b/inner-data")).is_file(),
        "inner data kept"
    );

    // The second outer volume found the directory in place: its data predates it, so its
    // delete keeps it as well.
    c.delete_claim("a2").await;
    c.wait_volume_gone(&outer2.name_any()).await;
    c.wait_volume_event(&outer2.name_any(), "VolumeDataPredatesVolume")
        .await;
    assert!(s.dir(&format!("{shared}/outer-data")).is_file());
    s.finish().await;
}

/// Class `keep` retains, class `scratch` deletes, both at `<ns>/<claim>`. The data `keep`
/// promised to keep survives a `scratch` claim of the same name reusing and deleting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_kept_by_retain_survives_a_deleting_class_reusing_its_directory() {
    let s = Scenario::start("reuse").await;
    let c = &s.cluster;
    let pattern = ("pathPattern", "${.PVC.namespace}/${.PVC.name}");
    let keep = c
        .create_class("keep", &[pattern, ("onDelete", "retain")], "Delete")
        .await;
    let scratch = c
        .create_class("scratch", &[pattern, ("onDelete", "delete")], "Delete")
        .await;
    c.create_claim(&TestCluster::claim("db", &keep)).await;
    let kept_pv = c.wait_bound("db").await;
    let dir = format!("{}/db", c.namespace);
    std::fs::write(s.dir(&dir).join("precious"), b"data").unwrap();
    c.delete_claim("db").await;
    c.wait_volume_gone(&kept_pv.name_any()).await;
    assert!(
        s.dir(&dir).join("precious").is_file(),
        "retain kept the data"
    );

    c.eventually("claim db gone", || async {
        c.claims().get_opt("db").await.ok()?.is_none().then_some(())
    })
    .await;
    c.create_claim(&TestCluster::claim("db", &scratch)).await;
    let reused = c.wait_bound("db").await;
    assert_eq!(
        reused
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("nfs-provisioner.io/directory-existed"))
            .map(String::as_str),
        Some("true"),
        "the PV records that its directory existed"
    );
    c.delete_claim("db").await;
    c.wait_volume_gone(&reused.name_any()).await;
    let note = c
        .wait_volume_event(&reused.name_any(), "VolumeDataPredatesVolume")
        .await;
    assert!(note.contains(&dir), "{note}");
    assert!(
        s.dir(&dir).join("precious").is_file(),
        "the kept data is still there"
    );
    s.finish().await;
}

/// A claim's mode annotation applies to its own directory only: template parents it
/// creates take the class's mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_parents_take_the_class_mode_never_a_claims() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scenario::start("parent-mode").await;
    let c = &s.cluster;
    let class = c
        .create_class(
            "tiers",
            &[
                (
                    "pathPattern",
                    "${.PVC.namespace}/${.PVC.labels.tier}/${.PVC.name}",
                ),
                ("directoryMode", "0755"),
                ("onDelete", "delete"),
            ],
            "Delete",
        )
        .await;
    let mut claim = TestCluster::claim("locked", &class);
    claim.metadata.labels = Some(BTreeMap::from([("tier".into(), "gold".into())]));
    claim.metadata.annotations = Some(BTreeMap::from([(
        "k8s-sigs.io/nfs-directory-mode".into(),
        "0700".into(),
    )]));
    c.create_claim(&claim).await;
    let pv = c.wait_bound("locked").await;
    let mode = |rel: &str| std::fs::metadata(s.dir(rel)).unwrap().permissions().mode() & 0o7777;
    let tier = format!("{}/gold", c.namespace);
    assert_eq!(
        mode(&format!("{tier}/locked")),
        0o700,
        "the claim's own directory"
    );
    assert_eq!(
        mode(&tier),
        0o755,
        "the shared parent takes the class's mode"
    );
    assert_eq!(mode(&c.namespace), 0o755);
    c.delete_claim("locked").await;
    c.wait_volume_gone(&pv.name_any()).await;
    s.finish().await;
}

/// `archiveOnDelete` written for the Go provisioner with any of Go's boolean spellings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_on_delete_takes_every_go_boolean() {
    let s = Scenario::start("go-bool").await;
    let c = &s.cluster;
    let deleting = c
        .create_class("bool-f", &[("archiveOnDelete", "F")], "Delete")
        .await;
    let archiving = c
        .create_class("bool-1", &[("archiveOnDelete", "1")], "Delete")
        .await;
    c.create_claim(&TestCluster::claim("gone", &deleting)).await;
    c.create_claim(&TestCluster::claim("kept", &archiving))
        .await;
    let gone = c.wait_bound("gone").await;
    let kept = c.wait_bound("kept").await;
    let kept_dir = s.default_dir("kept", &kept);
    c.delete_claim("gone").await;
    c.delete_claim("kept").await;
    c.wait_volume_gone(&gone.name_any()).await;
    c.wait_volume_gone(&kept.name_any()).await;
    let left = entries(s.root.path());
    assert_eq!(left.len(), 1, "one archive, the deleted one gone: {left:?}");
    assert!(
        left[0].starts_with(&format!("archived-{}-kept-", c.namespace)),
        "{left:?} (was {kept_dir})"
    );
    s.finish().await;
}
