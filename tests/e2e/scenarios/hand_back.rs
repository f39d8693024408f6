//! Going back to the Go provisioner (README "Going back to the Go provisioner"):
//! `nfs-provisioner hand-back` removes this project's finalizer, annotations and label from
//! the PVs of one provisioner name and nothing else, refuses while an instance holds the
//! Lease, and a second run finds nothing to do. Afterwards nothing of this project holds a
//! PV: deleting it completes with the provisioner stopped. Runs on the fake (as a user with
//! only the README's RBAC) and on real clusters (`E2E_KUBECONFIG`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{NFSVolumeSource, PersistentVolume, PersistentVolumeSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use nfs_provisioner::persistent_volume::{
    ANN_ON_DELETE, ANN_PROVISIONED_BY, FINALIZER, LABEL_DIRECTORY_TREE,
};
use serde::Deserialize;

use crate::cluster::{TestCluster, real_cluster_kubeconfig, shipped_rbac};
use crate::provisioner::RunningProvisioner;

/// User the fake authenticates the command as: an admin holding only the README's role.
const ADMIN_USER: &str = "hand-back-admin";

/// The ClusterRole the README documents for running `hand-back`.
fn documented_role() -> serde_json::Value {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split("```yaml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .find(|b| b.contains("name: nfs-provisioner-hand-back"))
        .expect("README documents the hand-back ClusterRole");
    serde_json::Value::deserialize(serde_yaml::Deserializer::from_str(block))
        .expect("the README's ClusterRole parses")
}

/// A kubeconfig for the command: the real cluster's, or the fake's for [`ADMIN_USER`] (who
/// is granted the README's role and nothing else).
fn kubeconfig(c: &TestCluster, dir: &Path) -> PathBuf {
    if let Some(path) = real_cluster_kubeconfig() {
        return PathBuf::from(path);
    }
    let fake = c.fake_server().expect("fake cluster");
    let role = documented_role();
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "nfs-provisioner-hand-back"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": ADMIN_USER}],
    });
    let mut objects = shipped_rbac();
    objects.extend([role, binding]);
    c.set_rbac_objects(objects);
    let path = dir.join("kubeconfig");
    let yaml =
        fake_apiserver::local_cluster::kubeconfig_yaml(&fake.url(), &fake.token_for(ADMIN_USER));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Runs `nfs-provisioner hand-back ARGS` as a user would, off the async runtime.
async fn hand_back(kubeconfig: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nfs-provisioner"));
    cmd.arg("hand-back")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env_remove("KUBECONFIG")
        .env_remove("PROVISIONER_NAME")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || cmd.output().expect("hand-back runs"))
        .await
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What this project puts on a PV, as (finalizer, on-delete annotation, directory label).
fn ours(pv: &PersistentVolume) -> (bool, bool, bool) {
    (
        pv.finalizers().iter().any(|f| f == FINALIZER),
        pv.annotations().contains_key(ANN_ON_DELETE),
        pv.labels().contains_key(LABEL_DIRECTORY_TREE),
    )
}

/// A PV of another provisioner name that carries this project's metadata (another instance
/// under another name): hand-back for our name must leave it alone.
fn decoy(name: &str) -> PersistentVolume {
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            annotations: Some(
                [
                    (
                        ANN_PROVISIONED_BY.to_string(),
                        "example.com/another-nfs".to_string(),
                    ),
                    (ANN_ON_DELETE.to_string(), "retain".to_string()),
                ]
                .into(),
            ),
            finalizers: Some(vec![FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            capacity: Some([("storage".to_string(), Quantity("1Mi".into()))].into()),
            nfs: Some(NFSVolumeSource {
                server: "nfs.example.test".into(),
                path: format!("/exports/k8s/{name}"),
                read_only: None,
            }),
            persistent_volume_reclaim_policy: Some("Retain".into()),
            ..Default::default()
        }),
        status: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_back_returns_the_volumes_to_the_go_provisioner() {
    let c = TestCluster::start("hand-back").await;
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig(&c, work.path());
    let name = c.provisioner_name.clone();

    // A running, leading provisioner with one bound claim.
    let mut options = c.provisioner_options(root.path());
    options.leader_election = true;
    let lease_namespace = options.lease_namespace.clone();
    let provisioner = RunningProvisioner::start(&options, c.provisioner_config());
    c.eventually("the provisioner to lead", || async {
        provisioner.is_leading().then_some(())
    })
    .await;
    let class = c.create_class("hand-back", &[], "Delete").await;
    c.create_claim(&TestCluster::claim("data", &class)).await;
    let pv = c.wait_bound("data").await;
    let pv_name = pv.name_any();
    // The adoption step adds the finalizer right after the PV is created: wait for all three.
    let pv = c
        .eventually("the PV to carry this project's metadata", || async {
            let v = c.volumes().get(&pv_name).await.ok()?;
            (ours(&v) == (true, true, true)).then_some(v)
        })
        .await;
    let directory = root.path().join(format!("{}-data-{pv_name}", c.namespace));
    assert!(directory.is_dir());
    let decoy_name = format!("{}-decoy", c.namespace);
    c.volumes()
        .create(&PostParams::default(), &decoy(&decoy_name))
        .await
        .expect("create the decoy PV");

    // While an instance holds the Lease, the command refuses and changes nothing.
    let out = hand_back(
        &kubeconfig,
        &[
            "--provisioner-name",
            &name,
            "--lease-namespace",
            &lease_namespace,
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("is running") && stderr.contains(&lease_namespace),
        "{stderr}"
    );
    assert_eq!(
        ours(&c.volumes().get(&pv_name).await.unwrap()),
        (true, true, true)
    );

    // Stopped (it releases the Lease): a dry run lists the change and makes none.
    provisioner.stop();
    let out = hand_back(&kubeconfig, &["--provisioner-name", &name, "--dry-run"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "persistentvolume/{pv_name}: would remove finalizer {FINALIZER}"
        )),
        "{stdout}"
    );
    assert_eq!(
        ours(&c.volumes().get(&pv_name).await.unwrap()),
        (true, true, true)
    );

    // The real run removes exactly this project's metadata from exactly this provisioner's PV.
    let out = hand_back(&kubeconfig, &["--provisioner-name", &name]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "persistentvolume/{pv_name}: removed finalizer {FINALIZER}; annotation {ANN_ON_DELETE}; label {LABEL_DIRECTORY_TREE}"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(&decoy_name), "{stdout}");
    let handed = c.volumes().get(&pv_name).await.unwrap();
    assert_eq!(ours(&handed), (false, false, false));
    assert_eq!(handed.annotations().get(ANN_PROVISIONED_BY), Some(&name));
    let mut before = pv.annotations().clone();
    before.remove(ANN_ON_DELETE);
    assert_eq!(handed.annotations(), &before, "other annotations are kept");
    let before_finalizers: Vec<&String> =
        pv.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    assert_eq!(
        handed.finalizers().iter().collect::<Vec<_>>(),
        before_finalizers,
        "other finalizers are kept"
    );
    assert_eq!(handed.spec, pv.spec, "the spec is untouched");
    let decoy_now = c.volumes().get(&decoy_name).await.unwrap();
    assert!(
        ours(&decoy_now).0,
        "another provisioner's PV keeps its finalizer"
    );
    assert!(decoy_now.annotations().contains_key(ANN_ON_DELETE));

    // Idempotent: a second run changes nothing and says so.
    let out = hand_back(&kubeconfig, &["--provisioner-name", &name]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("persistentvolume/"), "{stdout}");
    assert!(stdout.contains(": 0 changed, 1 without"), "{stdout}");

    // Nothing of this project holds the PV any more: with no provisioner running, deleting
    // the claim and the PV completes. Its directory is left alone (no provisioner ran).
    c.delete_claim("data").await;
    c.volumes()
        .delete(&pv_name, &DeleteParams::default())
        .await
        .expect("delete the PV");
    c.wait_volume_gone(&pv_name).await;
    assert!(directory.is_dir(), "the directory is still there");
    // The decoy, still carrying the finalizer, stays Terminating: the finalizer is what
    // the hand-back had to remove.
    c.volumes()
        .delete(&decoy_name, &DeleteParams::default())
        .await
        .expect("delete the decoy");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stuck = c
        .volumes()
        .get(&decoy_name)
        .await
        .expect("decoy still there");
    assert!(stuck.metadata.deletion_timestamp.is_some());
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    c.volumes()
        .patch(
            &decoy_name,
            &PatchParams::default(),
            &Patch::Merge(&release),
        )
        .await
        .expect("release the decoy");
    c.wait_volume_gone(&decoy_name).await;

    if let Some(fake) = c.fake_server() {
        let denied: Vec<_> = fake
            .denied_requests()
            .into_iter()
            .map(|r| format!("{} {} as {}", r.method, r.path, r.user))
            .collect();
        assert!(
            denied.is_empty(),
            "denied by rbac/ or the README's role: {denied:?}"
        );
    }
    c.cleanup().await;
}

#[test]
fn hand_back_flags_are_checked_with_one_line() {
    let binary = env!("CARGO_BIN_EXE_nfs-provisioner");
    for (args, needle) in [
        (&["hand-back"][..], "--provisioner-name"),
        (
            &["hand-back", "--provisioner-name", "Not/Valid"],
            "--provisioner-name",
        ),
        (
            &["hand-back", "--provisioner-name", "a/b", "--dry-run=maybe"],
            "--dry-run",
        ),
    ] {
        let out = Command::new(binary)
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rights_on_leases_hand_back_says_what_to_grant() {
    // Always the fake: it needs a user with fewer rights than the README's role.
    let c = TestCluster::fake(fake_apiserver::Options::default()).await;
    let fake = c.fake_server().unwrap();
    let role = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "volumes-only"},
        "rules": [{"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "list", "patch"]}],
    });
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "volumes-only"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "volumes-only"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "volumes-only"}],
    });
    let mut objects = shipped_rbac();
    objects.extend([role, binding]);
    c.set_rbac_objects(objects);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        fake_apiserver::local_cluster::kubeconfig_yaml(
            &fake.url(),
            &fake.token_for("volumes-only"),
        ),
    )
    .unwrap();
    let out = hand_back(&kubeconfig, &["--provisioner-name", "example.com/nfs"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("example.com-nfs") && stderr.contains("--lease-namespace"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "nothing was changed or listed: {stdout}");
}
