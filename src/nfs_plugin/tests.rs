//! The plugin's decisions against a temp root (inside the test sandbox) and an in-memory
//! view of the other PVs.

use std::path::Path;
use std::sync::Mutex;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::objects::{Claim, Class, Volume};
use crate::parameters::OnDelete;
use crate::persistent_volume::{ANN_DIRECTORY_EXISTED, ANN_ON_DELETE, ANN_PROVISIONED_BY};
use crate::storage::StorageOptions;

const EXPORT: &str = "/exports/k8s";

/// Other PVs as a list of `(name, nfs path)`; records what it was asked.
#[derive(Default)]
struct InMemory {
    volumes: Vec<(String, String)>,
    asked: Mutex<Vec<String>>,
}

impl OtherVolumes for InMemory {
    async fn overlapping(
        &self,
        _export: &NfsPlugin,
        me: &str,
        dir: &VolumeDirectory,
    ) -> Result<Option<Overlap>, LookupError> {
        self.asked.lock().unwrap().push(dir.to_string());
        Ok(self.volumes.iter().find_map(|(name, path)| {
            overlap::relation(
                dir,
                &ExportPath::new(EXPORT).unwrap().directory_of(path).ok()?,
            )
            .filter(|_| name != me)
            .map(|relation| Overlap {
                pv: name.clone(),
                relation,
                directory: ExportPath::new(EXPORT).unwrap().directory_of(path).unwrap(),
            })
        }))
    }
}

/// A lookup that fails like an unreachable API server.
struct Unreachable;

impl OtherVolumes for Unreachable {
    async fn overlapping(
        &self,
        _export: &NfsPlugin,
        _me: &str,
        _dir: &VolumeDirectory,
    ) -> Result<Option<Overlap>, LookupError> {
        Err(LookupError("connection refused".into()))
    }
}

async fn plugin(root: &Path) -> NfsPlugin {
    let root = NfsRoot::open(root, StorageOptions::default())
        .await
        .unwrap();
    NfsPlugin::new(
        "default",
        "example.com/nfs",
        "filer",
        ExportPath::new(EXPORT).unwrap(),
        DirectoryPermissions::default(),
        root,
    )
}

fn class(parameters: serde_json::Value) -> Class {
    serde_json::from_value(json!({
        "metadata": {"name": "nfs"}, "provisioner": "example.com/nfs",
        "reclaimPolicy": "Delete", "parameters": parameters
    }))
    .unwrap()
}

fn claim(name: &str) -> Claim {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
        "spec": {"storageClassName": "nfs", "accessModes": ["ReadWriteMany"],
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap()
}

/// A PV of ours at `dir` (beneath the export), released, with the given annotations.
fn released(name: &str, server: &str, dir: &str, annotations: serde_json::Value) -> Volume {
    let mut annotations = annotations;
    annotations[ANN_PROVISIONED_BY] = json!("example.com/nfs");
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"nfs": {"server": server, "path": format!("{EXPORT}/{dir}")},
                 "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "nfs",
                 "claimRef": {"namespace": "ns", "name": "data"}},
        "status": {"phase": "Released"}
    }))
    .unwrap()
}

fn write_data(root: &Path, dir: &str) {
    std::fs::create_dir_all(root.join(dir)).unwrap();
    std::fs::write(root.join(dir).join("data"), b"precious").unwrap();
}

fn entries(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn provisioning_creates_the_directory_and_a_pv_pointing_at_it() {
    let tmp = tempfile::tempdir().unwrap();
    let plugin = plugin(tmp.path()).await;
    let never = CancellationToken::new();
    let volume = plugin
        .provision(&claim("data"), &class(json!({})), "pvc-uid-data", &never)
        .await
        .unwrap();
    assert_eq!(volume.directory.as_str(), "ns-data-pvc-uid-data");
    assert!(!volume.directory_existed);
    assert!(tmp.path().join("ns-data-pvc-uid-data").is_dir());
    let spec = volume.pv.spec.as_ref().unwrap();
    let nfs = spec.nfs.as_ref().unwrap();
    assert_eq!(
        (nfs.server.as_str(), nfs.path.as_str()),
        ("filer", "/exports/k8s/ns-data-pvc-uid-data")
    );
    let annotations = volume.pv.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[ANN_ON_DELETE], "archive", "the class default");
    assert!(!annotations.contains_key(ANN_DIRECTORY_EXISTED));
    // Until the PV exists the journal remembers the directory; then it forgets it.
    let journal = plugin.root().journal_entries(&never).await.unwrap();
    assert_eq!(journal.len(), 1);
    volume.created(&never).await.unwrap();
    assert!(
        plugin
            .root()
            .journal_entries(&never)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_directory_that_was_there_before_is_recorded_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path(), "shared");
    let plugin = plugin(tmp.path()).await;
    let never = CancellationToken::new();
    let fixed = class(json!({"pathPattern": "shared", "onDelete": "delete"}));
    let volume = plugin
        .provision(&claim("data"), &fixed, "pvc-uid-data", &never)
        .await
        .unwrap();
    assert!(volume.directory_existed);
    let annotations = volume.pv.metadata.annotations.clone().unwrap();
    assert_eq!(annotations[ANN_DIRECTORY_EXISTED], "true");
    assert!(
        plugin
            .root()
            .journal_entries(&never)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_class_with_invalid_parameters_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let plugin = plugin(tmp.path()).await;
    let err = plugin
        .provision(
            &claim("data"),
            &class(json!({"onDelete": "shred"})),
            "pvc-uid-data",
            &CancellationToken::new(),
        )
        .await
        .err()
        .unwrap();
    assert_eq!(err.label(), "invalid_parameters");
    assert!(entries(tmp.path()).is_empty());
}

#[tokio::test]
async fn an_adopted_volume_whose_class_is_gone_is_archived() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path(), "old");
    let plugin = plugin(tmp.path()).await;
    let pv = released("pvc-1", "filer", "old", json!({}));
    let outcome = plugin
        .reclaim(&pv, None, &InMemory::default(), &CancellationToken::new())
        .await
        .unwrap();
    let ReclaimOutcome::Archived { to: Some(to), .. } = outcome else {
        panic!("expected an archive, got {outcome:?}")
    };
    assert_eq!(to.as_str(), "archived-ns-data-pvc-1");
    assert_eq!(
        std::fs::read(tmp.path().join("archived-ns-data-pvc-1/data")).unwrap(),
        b"precious"
    );
    assert_eq!(entries(tmp.path()), vec!["archived-ns-data-pvc-1"]);
}

#[tokio::test]
async fn the_recorded_policy_wins_over_the_class() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path(), "kept");
    write_data(tmp.path(), "gone");
    let plugin = plugin(tmp.path()).await;
    let never = CancellationToken::new();
    let deleting_class = class(json!({"onDelete": "delete"}));
    let recorded_retain = released("pvc-1", "filer", "kept", json!({ANN_ON_DELETE: "retain"}));
    let outcome = plugin
        .reclaim(
            &recorded_retain,
            Some(&deleting_class),
            &InMemory::default(),
            &never,
        )
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        ReclaimOutcome::Kept {
            because: KeptBecause::Policy(delete_policy::Kept::RetainPolicy(_)),
            ..
        }
    ));
    let archiving_class = class(json!({"onDelete": "archive"}));
    let recorded_delete = released("pvc-2", "filer", "gone", json!({ANN_ON_DELETE: "delete"}));
    let outcome = plugin
        .reclaim(
            &recorded_delete,
            Some(&archiving_class),
            &InMemory::default(),
            &never,
        )
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        ReclaimOutcome::Deleted { existed: true, .. }
    ));
    assert_eq!(entries(tmp.path()), vec!["kept"]);
}

#[tokio::test]
async fn an_unmappable_volume_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path(), "theirs");
    let plugin = plugin(tmp.path()).await;
    let never = CancellationToken::new();
    let others = InMemory::default();
    let delete = json!({ANN_ON_DELETE: "delete"});
    let foreign_server = released("pvc-1", "other-filer", "theirs", delete.clone());
    let err = plugin
        .reclaim(&foreign_server, None, &others, &never)
        .await
        .unwrap_err();
    assert!(err.is_unmappable(), "{err}");
    let mut outside: Volume = released("pvc-2", "filer", "theirs", delete);
    outside.spec.as_mut().unwrap().nfs.as_mut().unwrap().path = "/elsewhere/theirs".into();
    let err = plugin
        .reclaim(&outside, None, &others, &never)
        .await
        .unwrap_err();
    assert!(err.is_unmappable(), "{err}");
    assert!(others.asked.lock().unwrap().is_empty(), "never got as far");
    assert_eq!(
        std::fs::read(tmp.path().join("theirs/data")).unwrap(),
        b"precious"
    );
}

#[tokio::test]
async fn a_directory_shared_with_another_volume_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path(), "team/app");
    let plugin = plugin(tmp.path()).await;
    let never = CancellationToken::new();
    let others = InMemory {
        volumes: vec![("pvc-inner".into(), format!("{EXPORT}/team/app"))],
        ..Default::default()
    };
    let outer = released(
        "pvc-outer",
        "filer",
        "team",
        json!({ANN_ON_DELETE: "delete"}),
    );
    let outcome = plugin.reclaim(&outer, None, &others, &never).await.unwrap();
    let ReclaimOutcome::Kept {
        because: KeptBecause::Shared(overlap),
        ..
    } = outcome
    else {
        panic!("expected the directory kept, got {outcome:?}")
    };
    assert_eq!(overlap.pv, "pvc-inner");
    assert_eq!(overlap.relation, Relation::Inside);
    assert_eq!(others.asked.lock().unwrap().as_slice(), ["team"]);
    assert_eq!(
        std::fs::read(tmp.path().join("team/app/data")).unwrap(),
        b"precious"
    );
}

#[tokio::test]
async fn a_failed_lookup_of_other_volumes_keeps_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path(), "vol");
    let plugin = plugin(tmp.path()).await;
    let pv = released("pvc-1", "filer", "vol", json!({ANN_ON_DELETE: "delete"}));
    let err = plugin
        .reclaim(&pv, None, &Unreachable, &CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "kube_api");
    assert!(tmp.path().join("vol/data").is_file());
}

#[tokio::test]
async fn data_that_predates_its_volume_is_kept_whatever_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    write_data(tmp.path(), "vol");
    let plugin = plugin(tmp.path()).await;
    let pv = released(
        "pvc-1",
        "filer",
        "vol",
        json!({ANN_ON_DELETE: "delete", ANN_DIRECTORY_EXISTED: "true"}),
    );
    let others = InMemory::default();
    let outcome = plugin
        .reclaim(&pv, None, &others, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(
        outcome,
        ReclaimOutcome::Kept {
            because: KeptBecause::Policy(delete_policy::Kept::Predates(OnDelete::Delete)),
            ..
        }
    ));
    assert!(tmp.path().join("vol/data").is_file());
}

/// A clone of `source` (a claim with a `dataSource`), named `name`.
fn clone_claim(name: &str, pattern_annotation: Option<&str>) -> Claim {
    let mut c = claim(name);
    c.spec.as_mut().unwrap().data_source =
        Some(k8s_openapi::api::core::v1::TypedLocalObjectReference {
            api_group: None,
            kind: "PersistentVolumeClaim".into(),
            name: "src".into(),
        });
    if let Some(path) = pattern_annotation {
        c.metadata.annotations =
            Some([("nfs.io/storage-path".to_string(), path.to_string())].into());
    }
    c
}

fn no_progress(_: &crate::storage::CopyProgress) {}

#[tokio::test]
async fn a_clone_is_copied_to_a_new_journaled_directory_and_put_in_place_once() {
    let tmp = tempfile::tempdir().unwrap();
    let p = plugin(tmp.path()).await;
    let term = CancellationToken::new();
    write_data(tmp.path(), "src-dir");
    let source = released("pvc-src", "filer", "src-dir", json!({}));
    let clone = clone_claim("copy", None);
    let nfs = class(json!({}));

    // The plain provisioning path never gives a clone an empty volume.
    assert!(matches!(
        p.provision(&clone, &nfs, "pvc-copy", &term).await,
        Err(VolumeError::DataSource(_))
    ));

    let target = p
        .prepare_clone(&clone, &nfs, &source, "pvc-copy", &term)
        .await
        .unwrap();
    assert!(!target.in_place);
    assert_eq!(target.source.as_str(), "src-dir");
    // Journaled before anything is copied: the orphan sweep finds it if the claim goes.
    assert!(
        p.journaled_for("uid-copy", &target.destination, &term)
            .await
            .unwrap()
    );
    assert!(!tmp.path().join(target.destination.as_str()).exists());

    p.root
        .copy_volume_dir(&target.source, &target.staging, &no_progress, &term)
        .await
        .unwrap();
    let volume = p
        .finish_clone(&clone, &nfs, &target, "pvc-copy", &term)
        .await
        .unwrap();
    assert!(
        !volume.directory_existed,
        "the copy is the volume's own data"
    );
    let copied = tmp.path().join(target.destination.as_str()).join("data");
    assert_eq!(std::fs::read(copied).unwrap(), b"precious");
    assert_eq!(
        std::fs::read(tmp.path().join("src-dir/data")).unwrap(),
        b"precious"
    );
    volume.created(&term).await.unwrap();

    // A repeated attempt after a crash before the PV was created finds the copy in place.
    p.root
        .journal_record("uid-copy", &target.destination, &term)
        .await
        .unwrap();
    let again = p
        .prepare_clone(&clone, &nfs, &source, "pvc-copy", &term)
        .await
        .unwrap();
    assert!(again.in_place);
    let volume = p
        .finish_clone(&clone, &nfs, &again, "pvc-copy", &term)
        .await
        .unwrap();
    assert!(!volume.directory_existed);
}

#[tokio::test]
async fn a_clone_never_lands_on_existing_data_or_on_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let p = plugin(tmp.path()).await;
    let term = CancellationToken::new();
    write_data(tmp.path(), "src-dir");
    write_data(tmp.path(), "taken");
    let source = released("pvc-src", "filer", "src-dir", json!({}));
    let by_path = class(json!({"pathPattern": "${.PVC.annotations.nfs.io/storage-path}"}));

    // An existing directory (data that predates the clone) is refused, untouched.
    let onto_existing = clone_claim("a", Some("taken"));
    assert!(matches!(
        p.prepare_clone(&onto_existing, &by_path, &source, "pvc-a", &term)
            .await,
        Err(VolumeError::CloneDestinationExists(_))
    ));
    // The source itself, a directory inside it, or one containing it.
    let inside = class(json!({"pathPattern": "src-dir/${.PVC.name}"}));
    for (class, c) in [
        (&by_path, clone_claim("b", Some("src-dir"))),
        (&inside, clone_claim("b", None)),
    ] {
        let refused = p.prepare_clone(&c, class, &source, "pvc-b", &term).await;
        assert!(
            matches!(refused, Err(VolumeError::CloneOverlapsSource { .. })),
            "{refused:?}"
        );
    }
    let nested_source = released("pvc-n", "filer", "outer/src", json!({}));
    let c = clone_claim("c", Some("outer"));
    assert!(matches!(
        p.prepare_clone(&c, &by_path, &nested_source, "pvc-c", &term)
            .await,
        Err(VolumeError::CloneOverlapsSource { .. })
    ));
    assert!(p.root.journal_entries(&term).await.unwrap().is_empty());

    // A directory that appears while the copy runs is someone else's: the copy is not
    // renamed over it (even an empty one), and the claim lets go of it.
    let late = clone_claim("d", Some("late"));
    let target = p
        .prepare_clone(&late, &by_path, &source, "pvc-d", &term)
        .await
        .unwrap();
    p.root
        .copy_volume_dir(&target.source, &target.staging, &no_progress, &term)
        .await
        .unwrap();
    std::fs::create_dir(tmp.path().join("late")).unwrap();
    assert!(matches!(
        p.finish_clone(&late, &by_path, &target, "pvc-d", &term)
            .await,
        Err(VolumeError::CloneDestinationExists(_))
    ));
    assert_eq!(
        std::fs::read_dir(tmp.path().join("late")).unwrap().count(),
        0
    );
    assert!(
        !p.journaled_for("uid-d", &target.destination, &term)
            .await
            .unwrap()
    );
    assert_eq!(
        std::fs::read(tmp.path().join("taken/data")).unwrap(),
        b"precious"
    );
}
