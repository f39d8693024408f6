//! Property: no expansion ever escapes the root or names the root itself.

mod common;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use nfs_provisioner::parameters::{ClassParameters, DirectoryPermissions};
use nfs_provisioner::planning::{
    ExportPath, VolumeDirectory, VolumeRequest, archive_directory, plan_directory,
};
use nfs_provisioner::storage::{CancellationToken, NfsRoot, StorageOptions};
use proptest::prelude::*;

/// Hostile-ish strings: traversal pieces, separators, NUL, control and Unicode lookalikes.
fn value() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("/".to_string()),
        Just("\0".to_string()),
        Just("\n".to_string()),
        Just("\u{2215}".to_string()),
        Just("\u{ff0e}".to_string()),
        Just("%2e".to_string()),
        Just("\\".to_string()),
        Just("é".to_string()),
        "[a-z0-9-]{1,8}",
        any::<String>(),
    ];
    prop::collection::vec(atom, 0..6).prop_map(|parts| parts.concat())
}

fn long_value() -> impl Strategy<Value = String> {
    prop_oneof![value(), (1usize..300).prop_map(|n| "x".repeat(n))]
}

const FIELDS: &[&str] = &[
    "${.PVC.namespace}",
    "${.PVC.name}",
    "${.PVC.uid}",
    "${.PV.name}",
    "${.PVC.labels.a}",
    "${.PVC.annotations.b}",
    "${.PVC.labels.missing}",
];

/// Templates made of fields, literals and separators.
fn pattern() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(FIELDS).prop_map(str::to_string),
        Just("/".to_string()),
        Just(".".to_string()),
        Just("-".to_string()),
        "[a-z]{1,4}",
    ];
    prop::collection::vec(piece, 1..8).prop_map(|p| p.concat())
}

fn request() -> impl Strategy<Value = VolumeRequest> {
    (
        long_value(),
        long_value(),
        value(),
        value(),
        long_value(),
        value(),
    )
        .prop_map(
            |(namespace, claim_name, claim_uid, pv_name, label, annotation)| VolumeRequest {
                namespace,
                claim_name,
                claim_uid,
                pv_name,
                labels: [("a".to_string(), label)].into(),
                annotations: [("b".to_string(), annotation)].into(),
            },
        )
}

fn class(pattern: Option<String>) -> Option<ClassParameters> {
    let mut map = BTreeMap::new();
    if let Some(p) = pattern {
        map.insert("pathPattern".to_string(), p);
    }
    ClassParameters::parse(&map).ok()
}

/// Lexically normalises `root/rel` and checks it lies strictly beneath `root`.
fn strictly_beneath(root: &Path, rel: &VolumeDirectory) -> bool {
    let mut out = PathBuf::new();
    for c in root.join(rel.as_str()).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.starts_with(root) && out != root
}

fn check_dir(d: &VolumeDirectory) {
    let root = Path::new("/nfs/root");
    assert!(
        strictly_beneath(root, d),
        "{d:?} escapes or equals the root"
    );
    assert!(d.as_str().len() <= 4095);
    assert!(d.components().count() >= 1);
    for c in d.components() {
        assert!(!c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        assert!(c.len() <= 255);
    }
    // Round trip through the validated parser and the PV path mapping.
    assert_eq!(&VolumeDirectory::parse(d.as_str()).unwrap(), d);
    let export = ExportPath::new("/exports/k8s/").unwrap();
    assert_eq!(&export.directory_of(&export.pv_path(d)).unwrap(), d);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn expansion_never_escapes(pattern in prop::option::of(pattern()), req in request()) {
        if let Some(d) = class(pattern).and_then(|params| plan_directory(&params, &req).ok()) {
            check_dir(&d);
        }
    }

    #[test]
    fn archive_names_never_escape(ns in long_value(), claim in long_value(), pv in long_value()) {
        let base = VolumeDirectory::parse("x").unwrap();
        let a = archive_directory(&base, &ns, &claim, &pv);
        check_dir(&a);
        prop_assert_eq!(a.components().count(), 1);
        prop_assert!(a.as_str().starts_with("archived-"));
    }

    #[test]
    fn reverse_mapping_never_escapes(path in value()) {
        let export = ExportPath::new("/exports/k8s").unwrap();
        for candidate in [path.clone(), format!("/exports/k8s/{path}")] {
            if let Ok(d) = export.directory_of(&candidate) {
                check_dir(&d);
            }
        }
    }
}

proptest! {
    // Real file-system operations are slower: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn create_only_writes_beneath_the_root(pattern in prop::option::of(pattern()), req in request()) {
        let Some(params) = class(pattern) else { return Ok(()) };
        let Ok(d) = plan_directory(&params, &req) else { return Ok(()) };
        let world = common::World::new();
        let before = world.snapshot();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let root = NfsRoot::open(&world.root, StorageOptions::default()).await.unwrap();
            let never = CancellationToken::new();
            root.create_volume_dir(&d, &DirectoryPermissions::default(), &DirectoryPermissions::default(), &never).await.unwrap();
            assert!(root.volume_dir_exists(&d, &never).await.unwrap());
            let after = world.snapshot();
            before.assert_only_volume_changed(&after, Some(d.as_str()));
            root.delete_volume_dir(&d, Vec::new(), &never).await.unwrap();
        });
        // Deleting removes the volume and the parents created for it, never the root.
        before.assert_unchanged(&world.snapshot());
        prop_assert!(world.root.is_dir());
    }
}
