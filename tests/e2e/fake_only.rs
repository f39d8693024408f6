//! Scenarios that need the fake control plane: crash safety (the provisioner is killed, every
//! task dropped where it stands, at each step of provisioning and reclaiming while the fake
//! holds that step's request, before applying it or after applying it but before answering),
//! injected API errors, expired watches, and the v1.19 control plane's behaviour.

use fake_apiserver::{Fault, FaultAction, Options};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::cluster::{PROVISIONER_USER, TestCluster, entries};
use crate::provisioner::RunningProvisioner;

/// Where to kill the provisioner.
struct CrashPoint {
    verb: &'static str,
    resource: &'static str,
    action: FaultAction,
}

async fn provision_with_crash(point: CrashPoint) {
    let c = TestCluster::fake(Options::default()).await;
    let fake = c.fake_server().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = c
        .create_class("crash", &[("onDelete", "delete")], "Delete")
        .await;
    let fault = fake.add_fault(
        Fault::new(point.action.clone())
            .verb(point.verb)
            .resource(point.resource)
            .times(1),
    );
    let first =
        RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    c.create_claim(&TestCluster::claim("victim", &class)).await;
    fault.triggered().await;
    first.kill();
    fake.clear_faults();

    let second =
        RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    let pv = c.wait_bound("victim").await;
    let ours: Vec<_> = c.our_volumes().await;
    assert_eq!(ours.len(), 1, "no duplicate PV");
    let dir = format!("{}-victim-{}", c.namespace, pv.name_any());
    assert_eq!(
        entries(root.path()),
        vec![dir],
        "one directory, referenced by the PV"
    );

    // And the volume still reclaims normally afterwards.
    c.delete_claim("victim").await;
    c.wait_volume_gone(&pv.name_any()).await;
    assert!(entries(root.path()).is_empty());
    second.stop();
}

async fn reclaim_with_crash(point: CrashPoint, on_delete: &str) {
    let c = TestCluster::fake(Options::default()).await;
    let fake = c.fake_server().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = c
        .create_class("crash", &[("onDelete", on_delete)], "Delete")
        .await;
    let first =
        RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    c.create_claim(&TestCluster::claim("victim", &class)).await;
    let pv = c.wait_bound("victim").await;
    let dir = format!("{}-victim-{}", c.namespace, pv.name_any());
    std::fs::write(root.path().join(&dir).join("data"), b"payload").unwrap();

    let fault = fake.add_fault(
        Fault::new(point.action.clone())
            .verb(point.verb)
            .resource(point.resource)
            .times(1),
    );
    c.delete_claim("victim").await;
    fault.triggered().await;
    first.kill();
    fake.clear_faults();

    let second =
        RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    c.wait_volume_gone(&pv.name_any()).await;
    let archive = format!("archived-{}-victim-{}", c.namespace, pv.name_any());
    match on_delete {
        "delete" => assert!(
            entries(root.path()).is_empty(),
            "{:?}",
            entries(root.path())
        ),
        "archive" => {
            assert_eq!(
                entries(root.path()),
                vec![archive.clone(), format!("{archive}/data")],
                "exactly one archive"
            );
            assert_eq!(
                std::fs::read(root.path().join(&archive).join("data")).unwrap(),
                b"payload"
            );
        }
        "retain" => assert_eq!(
            entries(root.path()),
            vec![dir.clone(), format!("{dir}/data")]
        ),
        other => unreachable!("{other}"),
    }
    second.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_directory_before_the_volume_is_created() {
    provision_with_crash(CrashPoint {
        verb: "create",
        resource: "persistentvolumes",
        action: FaultAction::Hang,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_volume_was_created_before_the_answer() {
    provision_with_crash(CrashPoint {
        verb: "create",
        resource: "persistentvolumes",
        action: FaultAction::ApplyThenHang,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_while_writing_an_event() {
    provision_with_crash(CrashPoint {
        verb: "create",
        resource: "events",
        action: FaultAction::Hang,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_archiving_before_the_volume_is_deleted() {
    reclaim_with_crash(
        CrashPoint {
            verb: "delete",
            resource: "persistentvolumes",
            action: FaultAction::Hang,
        },
        "archive",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_deleting_the_directory_before_the_volume_is_deleted() {
    reclaim_with_crash(
        CrashPoint {
            verb: "delete",
            resource: "persistentvolumes",
            action: FaultAction::Hang,
        },
        "delete",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_volume_delete_was_applied() {
    reclaim_with_crash(
        CrashPoint {
            verb: "delete",
            resource: "persistentvolumes",
            action: FaultAction::ApplyThenHang,
        },
        "archive",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_finalizer_removal_was_applied() {
    reclaim_with_crash(
        CrashPoint {
            verb: "patch",
            resource: "persistentvolumes",
            action: FaultAction::ApplyThenHang,
        },
        "retain",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_retried_until_they_clear() {
    let c = TestCluster::fake(Options::default()).await;
    let fake = c.fake_server().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = c.create_class("flaky", &[], "Delete").await;
    let fault = fake.add_fault(
        Fault::new(FaultAction::RespondError(500, "InternalError".into()))
            .verb("create")
            .resource("persistentvolumes")
            .times(3),
    );
    let p = RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    c.create_claim(&TestCluster::claim("flaky", &class)).await;
    c.wait_bound("flaky").await;
    assert_eq!(fault.hits(), 3, "three failed creates, then success");
    let note = c.wait_claim_event("flaky", "ProvisioningFailed").await;
    assert!(note.contains("Kubernetes API"), "{note}");
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_watches_are_resumed_by_relisting() {
    let c = TestCluster::fake(Options::default()).await;
    let fake = c.fake_server().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = c.create_class("relist", &[], "Delete").await;
    let p = RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    c.create_claim(&TestCluster::claim("before", &class)).await;
    c.wait_bound("before").await;
    // History is compacted and watches cut: resuming from the old resourceVersion gets
    // 410 Expired, and the provisioner must re-list to see the next claim.
    fake.compact_and_close_watches();
    c.create_claim(&TestCluster::claim("after", &class)).await;
    c.wait_bound("after").await;
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_19_control_plane_with_only_the_beta_annotation_is_served() {
    let c = TestCluster::fake(Options {
        kube_version: fake_apiserver::KubeVersion::V1_19,
        ..Options::default()
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let class = c
        .create_class("old", &[("onDelete", "delete")], "Delete")
        .await;
    let p = RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    c.create_claim(&TestCluster::claim("old-cluster", &class))
        .await;
    let pv = c.wait_bound("old-cluster").await;
    let claim = c.claims().get("old-cluster").await.unwrap();
    assert!(
        claim
            .annotations()
            .contains_key("volume.beta.kubernetes.io/storage-provisioner")
    );
    assert!(
        !claim
            .annotations()
            .contains_key("volume.kubernetes.io/storage-provisioner")
    );
    c.delete_claim("old-cluster").await;
    c.wait_volume_gone(&pv.name_any()).await;
    assert!(entries(root.path()).is_empty());
    p.stop();
}

/// Crash after the directory was created, before its PV: the claim is deleted while the
/// provisioner is down. After the restart the orphaned directory is found (orphan journal)
/// and archived with what was written into it, never deleted; nothing else changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_whose_claim_vanished_before_its_volume_is_archived_after_a_restart() {
    let c = TestCluster::fake(Options::default()).await;
    let fake = c.fake_server().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = c
        .create_class("orphan", &[("onDelete", "delete")], "Delete")
        .await;
    // The PV create is lost (connection closed, nothing applied); the kill comes before the
    // retry (the first retry waits a second).
    let fault = fake.add_fault(
        Fault::new(FaultAction::DropConnection)
            .verb("create")
            .resource("persistentvolumes")
            .times(1),
    );
    let first =
        RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    let claim = c.create_claim(&TestCluster::claim("ghost", &class)).await;
    let uid = claim.uid().unwrap();
    fault.triggered().await;
    first.kill();
    fake.clear_faults();
    let created = entries(root.path());
    assert_eq!(created.len(), 1, "the directory was created: {created:?}");
    std::fs::write(root.path().join(&created[0]).join("written"), b"x").unwrap();
    c.delete_claim("ghost").await;
    c.eventually("claim gone", || async {
        c.claims()
            .get_opt("ghost")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;

    let second =
        RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    let archive = c
        .eventually("the orphan archived", || async {
            let now = entries(root.path());
            now.iter()
                .find(|e| e.starts_with(&format!("archived-orphan-{uid}")) && !e.contains('/'))
                .cloned()
        })
        .await;
    assert!(
        root.path().join(&archive).join("written").is_file(),
        "archived with its contents"
    );
    assert!(
        !root.path().join(&created[0]).exists(),
        "no longer at the volume path"
    );
    assert!(c.our_volumes().await.is_empty(), "no PV was made for it");
    let denied = fake.denied_requests();
    assert!(denied.is_empty(), "requests denied by rbac/: {denied:?}");
    assert!(
        !root
            .path()
            .join(nfs_provisioner::planning::JOURNAL_DIRECTORY)
            .join(&uid)
            .exists(),
        "journal entry removed"
    );
    second.stop();
}

/// A claim recreated with the same name while its old volume's directory is being deleted
/// (the delete held back at its first step): the new volume waits for the delete and gets a
/// fresh directory, which the old delete never touches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_recreated_during_its_old_volumes_delete_keeps_its_new_directory() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let c = TestCluster::fake(Options::default()).await;
    let root = tempfile::tempdir().unwrap();
    let class = c
        .create_class(
            "race",
            &[
                ("pathPattern", "${.PVC.namespace}/${.PVC.name}"),
                ("onDelete", "delete"),
            ],
            "Delete",
        )
        .await;
    let holding = Arc::new(AtomicBool::new(false));
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let started_tx = std::sync::Mutex::new(Some(started_tx));
    let hold = holding.clone();
    let instrumentation = nfs_provisioner::app::Instrumentation {
        // The first delete step waits while `holding` is set.
        nfs_fault_hook: Some(Arc::new(move |op: &str, _path: &str| {
            if op == "delete" && hold.load(Ordering::SeqCst) {
                if let Some(tx) = started_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                while hold.load(Ordering::SeqCst) {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        })),
        ..Default::default()
    };
    let p = RunningProvisioner::start_instrumented(
        &c.provisioner_options(root.path()),
        c.provisioner_config(),
        instrumentation,
    );
    c.create_claim(&TestCluster::claim("db", &class)).await;
    let old = c.wait_bound("db").await;
    let dir = root.path().join(format!("{}/db", c.namespace));
    std::fs::write(dir.join("old"), b"old").unwrap();

    holding.store(true, Ordering::SeqCst);
    c.delete_claim("db").await;
    tokio::task::spawn_blocking(move || started_rx.recv().expect("delete started"))
        .await
        .unwrap();
    c.eventually("old claim gone", || async {
        c.claims().get_opt("db").await.ok()?.is_none().then_some(())
    })
    .await;
    c.create_claim(&TestCluster::claim("db", &class)).await;
    // The new claim must not be provisioned on the directory being deleted.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    holding.store(false, Ordering::SeqCst);

    c.wait_volume_gone(&old.name_any()).await;
    let new = c.wait_bound("db").await;
    assert_ne!(new.name_any(), old.name_any());
    assert!(dir.is_dir(), "the new volume's directory exists");
    assert!(
        !dir.join("old").exists(),
        "a fresh directory, not the old data"
    );
    assert_eq!(
        new.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("nfs-provisioner.io/directory-existed")),
        None,
        "created for the new volume"
    );
    std::fs::write(dir.join("new"), b"new").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        dir.join("new").is_file(),
        "nothing deletes the new volume's data"
    );
    p.stop();
}

/// Claims created while the provisioner was cut off from the API server (as during a
/// kube-apiserver restart), whose watch then has to re-list: every one is provisioned at
/// once, none waits for the next resync. The re-list spans two pages and every request takes
/// a little time, so workers are free while the list is still coming in (the cache shows the
/// relisted objects only when the list is complete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_created_while_cut_off_are_provisioned_after_the_relist() {
    let c = TestCluster::fake(Options {
        latency: std::time::Duration::from_millis(20),
        ..Options::default()
    })
    .await;
    let fake = c.fake_server().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = c.create_class("cut-off", &[], "Delete").await;
    let p = RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    c.create_claim(&TestCluster::claim("before", &class)).await;
    c.wait_bound("before").await;

    fake.partition_user(crate::cluster::PROVISIONER_USER, true);
    let claims: Vec<_> = (0..150)
        .map(|i| TestCluster::claim(&format!("cut-{i:03}"), &class))
        .collect();
    futures::future::join_all(claims.iter().map(|claim| c.create_claim(claim))).await;
    // Resuming from the old resourceVersion gets 410 Expired: the watches must re-list.
    fake.compact_and_close_watches();
    fake.partition_user(crate::cluster::PROVISIONER_USER, false);

    let bound = c.wait_all_bound(151).await;
    assert_eq!(bound.len(), 151);
    assert_eq!(c.our_volumes().await.len(), 151, "one PV per claim");
    p.stop();
}

/// Resizes a bound claim while the fake holds `point`'s request, kills the provisioner there,
/// and checks that a new one finishes the resize: PV and claim both at the new size, no
/// resize left in progress.
async fn resize_with_crash(point: CrashPoint, pv_grown_at_crash: bool) {
    use crate::expansion::{
        ask_for, claim_capacity, growable_class, volume_capacity, wait_claim_holds,
    };

    let c = TestCluster::fake(Options::default()).await;
    let fake = c.fake_server().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = growable_class(&c, "crash", Some(true)).await;
    let first =
        RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    c.create_claim(&TestCluster::claim("victim", &class)).await;
    let pv = c.wait_bound("victim").await;
    let fault = fake.add_fault(
        Fault::new(point.action.clone())
            .verb(point.verb)
            .resource(point.resource)
            .times(1),
    );
    ask_for(&c, "victim", "4Mi").await.unwrap();
    fault.triggered().await;
    first.kill();

    // Where the crash left things: the claim marked Resizing, the PV grown or not. (Read
    // while the fault still holds the request: once cleared, a held request goes on.)
    let claim = c.claims().get("victim").await.unwrap();
    assert_eq!(claim_capacity(&claim).as_deref(), Some("1Mi"));
    let conditions = claim
        .status
        .as_ref()
        .unwrap()
        .conditions
        .clone()
        .unwrap_or_default();
    assert!(
        conditions.iter().any(|c| c.type_ == "Resizing"),
        "{conditions:?}"
    );
    let expected = if pv_grown_at_crash { "4Mi" } else { "1Mi" };
    // (The fault fires as the request arrives; an applied one lands just after.)
    c.eventually(&format!("the PV at {expected}"), || async {
        let pv = c.volumes().get(&pv.name_any()).await.ok()?;
        (volume_capacity(&pv).as_deref() == Some(expected)).then_some(())
    })
    .await;
    fake.clear_faults();

    let second =
        RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    wait_claim_holds(&c, "victim", "4Mi").await;
    let after = c.volumes().get(&pv.name_any()).await.unwrap();
    assert_eq!(volume_capacity(&after).as_deref(), Some("4Mi"));
    let note = c.wait_claim_event("victim", "VolumeResizeSuccessful").await;
    if pv_grown_at_crash {
        assert!(note.contains("earlier attempt"), "{note}");
    }
    assert_eq!(c.our_volumes().await.len(), 1, "no second PV");
    second.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_volume_grew_before_the_claim_was_updated() {
    resize_with_crash(
        CrashPoint {
            verb: "patch",
            resource: "persistentvolumes",
            action: FaultAction::ApplyThenHang,
        },
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_claim_was_marked_resizing_before_the_volume_grew() {
    resize_with_crash(
        CrashPoint {
            verb: "patch",
            resource: "persistentvolumes",
            action: FaultAction::Hang,
        },
        false,
    )
    .await;
}

/// Reclaims that wait long (here: the API server holds their shared-directory list) never
/// keep a new claim from its volume: claims are handed out first and volume work occupies
/// at most three of the four workers. The held reclaims share lists instead of sending one
/// each, and finish once the API server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_provisioned_while_more_reclaims_wait_than_there_are_workers() {
    let c = TestCluster::fake(Options::default()).await;
    let fake = c.fake_server().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = c
        .create_class("lanes", &[("onDelete", "delete")], "Delete")
        .await;
    let mut options = c.provisioner_options(root.path());
    options.extra_args = vec!["--workers".into(), "4".into()];
    let p = RunningProvisioner::start(&options, c.provisioner_config());
    let names: Vec<String> = (0..12).map(|i| format!("old-{i:02}")).collect();
    futures::future::join_all(
        names
            .iter()
            .map(|n| async { c.create_claim(&TestCluster::claim(n, &class)).await }),
    )
    .await;
    c.wait_all_bound(names.len()).await;
    let held = fake.add_fault(
        Fault::new(FaultAction::Hang)
            .verb("list")
            .resource("persistentvolumes")
            .user(PROVISIONER_USER),
    );
    futures::future::join_all(names.iter().map(|n| c.delete_claim(n))).await;
    held.triggered().await;
    // Give the reclaims time to take every worker volume work may have.
    c.eventually("volumes deleted and waiting for their cleanup", || async {
        let deleting = c
            .our_volumes()
            .await
            .iter()
            .filter(|pv| pv.metadata.deletion_timestamp.is_some())
            .count();
        (deleting >= 3).then_some(())
    })
    .await;

    let started = std::time::Instant::now();
    c.create_claim(&TestCluster::claim("new", &class)).await;
    let pv = c.wait_bound("new").await;
    let waited = started.elapsed();
    assert_eq!(
        held.hits(),
        1,
        "reclaims asking while a list is in flight wait for the next one"
    );
    assert!(
        waited < std::time::Duration::from_secs(10),
        "the claim waited {waited:?} behind reclaims"
    );
    assert!(
        c.our_volumes()
            .await
            .iter()
            .filter(|v| v.name_any() != pv.name_any())
            .count()
            == names.len(),
        "no reclaim finished while their list was held"
    );

    fake.remove_fault(&held);
    c.eventually("the old volumes gone", || async {
        (c.our_volumes().await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(
        entries(root.path()).len(),
        1,
        "only the new volume's directory left"
    );
    // The reclaims that asked while the first list was held waited for the next one and
    // shared it, instead of sending one each.
    let queries: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| {
            r.user == PROVISIONER_USER
                && r.verb.as_deref() == Some("list")
                && r.resource.as_deref() == Some("persistentvolumes")
                && r.query.contains("labelSelector")
        })
        .map(|r| r.query)
        .collect();
    assert!(
        queries.iter().any(|q| q.contains("%2C") || q.contains(',')),
        "no list named several directory trees: {queries:?}"
    );
    let denied = fake.denied_requests();
    assert!(denied.is_empty(), "requests denied by rbac/: {denied:?}");
    p.stop();
}

/// A claim `data` whose volume is a Go-provisioner PV of `class` (its directory holding a
/// file `data`), the PV marked Released as a binder behind the API server would mark it.
/// The claim names `claim_volume` (the PV itself when `None`). Returns the PV's name and its
/// directory beneath `root`.
async fn released_by_a_binder_behind(
    c: &TestCluster,
    root: &std::path::Path,
    class: &str,
    claim_volume: Option<&str>,
) -> (String, std::path::PathBuf) {
    let fake = c.fake_server().unwrap();
    // The binder is behind: it binds nothing while the scene is set.
    fake.pause_controller_manager(true);
    let pv_name = format!("{}-data-legacy", c.namespace);
    let mut pvc = TestCluster::claim("data", class);
    pvc.spec.as_mut().unwrap().volume_name = Some(claim_volume.unwrap_or(&pv_name).to_string());
    let created = c.create_claim(&pvc).await;
    let dir = format!("{}-data-{pv_name}", c.namespace);
    std::fs::create_dir(root.join(&dir)).unwrap();
    std::fs::write(root.join(&dir).join("data"), b"keep").unwrap();
    let pv =
        crate::scenarios::legacy_volume(c, &pv_name, "data", &created.uid().unwrap(), class, &dir);
    c.volumes()
        .create(&kube::api::PostParams::default(), &pv)
        .await
        .expect("PV");
    fake.modify_object(fake_apiserver::Kind::PersistentVolume, "", &pv_name, |pv| {
        pv["status"] = serde_json::json!({"phase": "Released"});
    })
    .expect("PV stored");
    (pv_name, root.join(dir))
}

/// kube-controller-manager marks a PV Released when its claim is missing from its own cache:
/// a loaded v1.19 did so to a claim created with `volumeName` before its PV, and the
/// provisioner then deleted that claim's data. A Released PV whose claim (same UID) is still
/// in the API server is kept, with a Warning, and deleted only once the claim is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_volume_whose_claim_still_exists_is_not_deleted() {
    let c = TestCluster::fake(Options::default()).await;
    let fake = c.fake_server().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = c
        .create_class("doubt", &[("archiveOnDelete", "false")], "Delete")
        .await;
    let mut options = c.provisioner_options(root.path());
    options.extra_args = vec!["--resync-period".into(), "2s".into()];
    let p = RunningProvisioner::start(&options, c.provisioner_config());
    let (pv_name, dir) = released_by_a_binder_behind(&c, root.path(), &class, None).await;

    let note = c
        .wait_volume_event(&pv_name, "VolumeClaimStillExists")
        .await;
    assert!(note.contains("still exists"), "{note}");
    // Looked at again by a later resync (the Warning repeated): still kept.
    c.eventually("the Warning repeated by a later resync", || async {
        Api::<Event>::all(c.client.clone())
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&pv_name))
            .filter(|e| e.reason.as_deref() == Some("VolumeClaimStillExists"))
            .any(|e| e.series.is_some_and(|s| s.count >= 2))
            .then_some(())
    })
    .await;
    let kept = c.volumes().get(&pv_name).await.expect("the PV is kept");
    assert!(kept.metadata.deletion_timestamp.is_none());
    assert_eq!(std::fs::read(dir.join("data")).unwrap(), b"keep");

    // The claim goes: now the PV is released indeed, and its class deletes it.
    fake.delete_object(
        fake_apiserver::Kind::PersistentVolumeClaim,
        &c.namespace,
        "data",
    )
    .expect("claim stored");
    // (pv-protection, a controller of the binder's process, lets the deleted PV go.)
    fake.pause_controller_manager(false);
    c.wait_volume_gone(&pv_name).await;
    assert!(!dir.exists(), "deleted as its class says");
    p.stop();
}

/// The binder also releases a provisioned PV whose claim was bound to another volume: that
/// claim does not hold this PV, which its class deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_volume_whose_claim_went_to_another_volume_is_deleted() {
    let c = TestCluster::fake(Options::default()).await;
    let fake = c.fake_server().unwrap();
    let root = tempfile::tempdir().unwrap();
    let class = c
        .create_class("elsewhere", &[("archiveOnDelete", "false")], "Delete")
        .await;
    let p = RunningProvisioner::start(&c.provisioner_options(root.path()), c.provisioner_config());
    let other = format!("{}-another-volume", c.namespace);
    let (pv_name, dir) = released_by_a_binder_behind(&c, root.path(), &class, Some(&other)).await;
    fake.pause_controller_manager(false);
    c.wait_volume_gone(&pv_name).await;
    assert!(!dir.exists(), "deleted as its class says");
    let kept_events: Vec<_> = Api::<Event>::all(c.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("VolumeClaimStillExists"))
        .collect();
    assert!(kept_events.is_empty(), "{kept_events:?}");
    p.stop();
}
