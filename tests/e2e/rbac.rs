//! The shipped RBAC (`rbac/`) is exactly what the provisioner needs. Every scenario runs with
//! it enforced by the fake API server (sufficient); here, removing any single permission makes
//! a full lifecycle fail (nothing unused).

use std::time::Duration;

use fake_apiserver::Options;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::Value;

use crate::cluster::{PROVISIONER_USER, TestCluster, shipped_rbac};
use crate::provisioner::RunningProvisioner;

/// One verb of one rule of one role.
#[derive(Debug, Clone)]
struct Permission {
    role: String,
    rule: usize,
    verb: String,
}

fn permissions(objects: &[Value]) -> Vec<Permission> {
    let mut out = Vec::new();
    for o in objects
        .iter()
        .filter(|o| matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")))
    {
        for (i, rule) in o["rules"].as_array().into_iter().flatten().enumerate() {
            for verb in rule["verbs"].as_array().into_iter().flatten() {
                out.push(Permission {
                    role: o["metadata"]["name"].as_str().unwrap().to_string(),
                    rule: i,
                    verb: verb.as_str().unwrap().to_string(),
                });
            }
        }
    }
    out
}

fn without(objects: &[Value], p: &Permission) -> Vec<Value> {
    let mut objects = objects.to_vec();
    for o in objects.iter_mut() {
        if matches!(o["kind"].as_str(), Some("ClusterRole" | "Role"))
            && o["metadata"]["name"] == p.role.as_str()
        {
            let verbs = o["rules"][p.rule]["verbs"].as_array_mut().unwrap();
            verbs.retain(|v| v != p.verb.as_str());
        }
    }
    objects
}

/// Provision, report, resize, adopt, keep leading, reclaim: everything the provisioner does.
/// `Err` names the first expectation that was not met within the time limit.
async fn lifecycle(c: &TestCluster, root: &std::path::Path) -> Result<(), String> {
    let limit = Duration::from_secs(8);
    let good = c
        .create_class("good", &[("archiveOnDelete", "false")], "Delete")
        .await;
    let broken = c
        .create_class("broken", &[("noSuchParameter", "x")], "Delete")
        .await;

    // A PV of the Go provisioner, bound to its claim, to be adopted.
    let mut legacy_claim = TestCluster::claim("legacy", &good);
    legacy_claim.spec.as_mut().unwrap().volume_name = Some("legacy-pv".into());
    let legacy_claim = c.create_claim(&legacy_claim).await;
    std::fs::create_dir(root.join("legacy-dir")).unwrap();
    let legacy_pv: k8s_openapi::api::core::v1::PersistentVolume = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "legacy-pv", "annotations": {"pv.kubernetes.io/provisioned-by": c.provisioner_name}},
        "spec": {
            "accessModes": ["ReadWriteMany"], "capacity": {"storage": "1Mi"},
            "claimRef": {"namespace": c.namespace, "name": "legacy", "uid": legacy_claim.uid()},
            "nfs": {"server": "nfs.example.test", "path": "/exports/k8s/legacy-dir"},
            "persistentVolumeReclaimPolicy": "Delete", "storageClassName": good,
        }
    }))
    .unwrap();
    c.volumes()
        .create(&PostParams::default(), &legacy_pv)
        .await
        .unwrap();

    let mut options = c.provisioner_options(root);
    options.leader_election = true;
    let p = RunningProvisioner::start(&options, c.provisioner_config());
    let outcome = async {
        // Objects created from here on can only be seen through watches, not initial lists.
        within(limit, "caches synced", || async {
            p.observers.readiness.check().is_ok()
        })
        .await?;
        // A class created after start must be seen too (watched, not only listed).
        let late = c
            .create_class("late", &[("archiveOnDelete", "false")], "Delete")
            .await;
        c.create_claim(&TestCluster::claim("good", &late)).await;
        c.create_claim(&TestCluster::claim("bad", &broken)).await;
        within(limit, "claim bound", || async {
            let claim = c.claims().get("good").await.unwrap();
            claim.status.and_then(|s| s.phase).as_deref() == Some("Bound")
        })
        .await?;
        within(limit, "success event written", || async {
            let events = c.events_about(&c.namespace, "good").await;
            events
                .iter()
                .any(|e| e.reason.as_deref() == Some("ProvisioningSucceeded"))
        })
        .await?;
        // Repeated failures of one claim update one event series (create, then patch).
        within(limit, "repeated failure event patched", || async {
            let events = c.events_about(&c.namespace, "bad").await;
            events
                .iter()
                .any(|e| e.series.as_ref().is_some_and(|s| s.count >= 2))
        })
        .await?;
        // Expansion: the PV grows (PV patch) and the claim's status says so (status patch).
        let growable = c
            .create_class_with("growable", &[], "Delete", |sc| {
                sc.allow_volume_expansion = Some(true)
            })
            .await;
        c.create_claim(&TestCluster::claim("grown", &growable))
            .await;
        within(limit, "claim to grow bound", || async {
            let claim = c.claims().get("grown").await.unwrap();
            claim.status.and_then(|s| s.phase).as_deref() == Some("Bound")
        })
        .await?;
        let more = serde_json::json!({"spec": {"resources": {"requests": {"storage": "2Mi"}}}});
        c.claims()
            .patch("grown", &PatchParams::default(), &Patch::Merge(&more))
            .await
            .unwrap();
        within(limit, "claim resized", || async {
            let claim = c.claims().get("grown").await.unwrap();
            claim
                .status
                .and_then(|s| s.capacity)
                .and_then(|c| c.get("storage").cloned())
                .is_some_and(|q| q.0 == "2Mi")
        })
        .await?;
        // Cloning: the source claim is protected while it is copied (claim patch).
        let mut copy = TestCluster::claim("copy", &late);
        copy.spec.as_mut().unwrap().data_source =
            Some(k8s_openapi::api::core::v1::TypedLocalObjectReference {
                api_group: None,
                kind: "PersistentVolumeClaim".into(),
                name: "good".into(),
            });
        c.create_claim(&copy).await;
        within(limit, "clone bound", || async {
            let claim = c.claims().get("copy").await.unwrap();
            claim.status.and_then(|s| s.phase).as_deref() == Some("Bound")
        })
        .await?;
        within(limit, "legacy PV adopted", || async {
            let pv = c.volumes().get("legacy-pv").await.unwrap();
            pv.finalizers()
                .iter()
                .any(|f| f == nfs_provisioner::persistent_volume::FINALIZER)
        })
        .await?;
        // Leadership must be kept, not just won: the Lease is renewed.
        within(limit, "lease renewed", || async {
            let fake = c.fake_server().unwrap();
            let lease = fake.get(
                fake_apiserver::Kind::Lease,
                "nfs-provisioner",
                "example.com-nfs",
            );
            lease.is_some_and(|l| l["spec"]["renewTime"] != l["spec"]["acquireTime"])
                && p.is_leading()
        })
        .await?;

        let pv = c
            .claims()
            .get("good")
            .await
            .unwrap()
            .spec
            .unwrap()
            .volume_name
            .unwrap();
        c.delete_claim("good").await;
        c.delete_claim("legacy").await;
        for name in [pv.as_str(), "legacy-pv"] {
            within(limit, "PV reclaimed", || async {
                c.volumes().get_opt(name).await.unwrap().is_none()
            })
            .await
            .map_err(|e| format!("{e}: {name}"))?;
        }
        Ok::<(), String>(())
    }
    .await;
    p.kill();
    outcome
}

/// Polls `check` until it holds; `Err(what)` when `limit` passes first.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            return Err(what.to_string());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn run_lifecycle_with(objects: Vec<Value>) -> (Result<(), String>, Vec<String>) {
    let c = TestCluster::fake(Options::default()).await;
    c.set_rbac_objects(objects);
    let root = tempfile::tempdir().unwrap();
    let outcome = lifecycle(&c, root.path()).await;
    let denied = c
        .fake_server()
        .unwrap()
        .denied_requests()
        .into_iter()
        .filter(|r| r.user == PROVISIONER_USER)
        .map(|r| {
            format!(
                "{} {}",
                r.verb.unwrap_or_default(),
                r.resource.unwrap_or_default()
            )
        })
        .collect();
    (outcome, denied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rbac_is_sufficient() {
    let (outcome, denied) = run_lifecycle_with(shipped_rbac()).await;
    assert_eq!(outcome, Ok(()));
    assert!(denied.is_empty(), "{denied:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_any_single_permission_breaks_the_provisioner() {
    let objects = shipped_rbac();
    let all = permissions(&objects);
    assert!(
        all.len() >= 15,
        "every verb of every rule is tried: {all:?}"
    );
    let runs = all.iter().map(|p| {
        let reduced = without(&objects, p);
        async move { (p.clone(), run_lifecycle_with(reduced).await) }
    });
    let results = futures::future::join_all(runs).await;
    let mut unused = Vec::new();
    for (p, (outcome, denied)) in results {
        if outcome.is_ok() {
            unused.push(format!("{p:?} (denied: {denied:?})"));
        } else {
            assert!(
                !denied.is_empty(),
                "{p:?} failed the lifecycle ({outcome:?}) without any 403"
            );
        }
    }
    assert!(
        unused.is_empty(),
        "permissions the lifecycle did not need: {unused:?}"
    );
}
