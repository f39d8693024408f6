//! Hostile-input suite on real temporary directories.
//!
//! Every case snapshots the whole temporary world (the root, a sibling `outside/` full of
//! canaries that planted symlinks point at, and `root-sibling/`) before and after, and
//! asserts that nothing outside the volume's own directory changed.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::World;
use nfs_provisioner::parameters::{ClassParameters, DirectoryPermissions};
use nfs_provisioner::planning::{
    ExportPath, VolumeDirectory, VolumeRequest, archive_directory, plan_directory,
};
use nfs_provisioner::storage::{
    ArchiveOutcome, CancellationToken, CreateOutcome, NfsRoot, RemoveOutcome, StorageError,
    StorageOptions,
};

fn class(pattern: Option<&str>) -> ClassParameters {
    let mut map = BTreeMap::new();
    if let Some(p) = pattern {
        map.insert("pathPattern".to_string(), p.to_string());
    }
    ClassParameters::parse(&map).unwrap()
}

fn request() -> VolumeRequest {
    VolumeRequest {
        namespace: "team-a".into(),
        claim_name: "data".into(),
        claim_uid: "4f0c5a36-1d2b-4c4e-9d59-6b1c7f0e2a11".into(),
        pv_name: "pvc-4f0c5a36-1d2b-4c4e-9d59-6b1c7f0e2a11".into(),
        labels: [("app".to_string(), "web".to_string())].into(),
        annotations: [("team".to_string(), "blue".to_string())].into(),
    }
}

fn never() -> CancellationToken {
    CancellationToken::new()
}

fn perms() -> DirectoryPermissions {
    DirectoryPermissions::default()
}

async fn open(world: &World) -> NfsRoot {
    NfsRoot::open(&world.root, StorageOptions::default())
        .await
        .unwrap()
}

fn dir(s: &str) -> VolumeDirectory {
    VolumeDirectory::parse(s).unwrap()
}

/// Plans and, if planning accepts, creates. Asserts the world changed only inside the
/// planned volume directory. Returns the directory or the rejection message.
async fn plan_and_create(
    world: &World,
    pattern: Option<&str>,
    req: &VolumeRequest,
) -> Result<VolumeDirectory, String> {
    let before = world.snapshot();
    let result = match plan_directory(&class(pattern), req) {
        Err(e) => Err(e.to_string()),
        Ok(d) => match open(world)
            .await
            .create_volume_dir(&d, &perms(), &perms(), &never())
            .await
        {
            Ok(_) => Ok(d),
            Err(e) => Err(e.to_string()),
        },
    };
    let after = world.snapshot();
    before.assert_only_volume_changed(&after, result.as_ref().ok().map(|d| d.as_str()));
    if let Ok(d) = &result {
        assert!(world.in_root(d.as_str()).is_dir());
    }
    result
}

/// Expects the claim to be rejected and nothing at all to change.
async fn expect_rejected(pattern: Option<&str>, req: VolumeRequest, needle: &str) {
    let world = World::new();
    let before = world.snapshot();
    let err = plan_and_create(&world, pattern, &req).await.unwrap_err();
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    before.assert_unchanged(&world.snapshot());
}

fn with_label(value: &str) -> VolumeRequest {
    let mut r = request();
    r.labels.insert("app".into(), value.into());
    r
}

// ---- `..`, `.` and separators in every template field ----------------------------------

#[tokio::test]
async fn dotdot_in_namespace_default_naming() {
    let mut r = request();
    r.namespace = "..".into();
    expect_rejected(None, r, "namespace").await;
}

#[tokio::test]
async fn dotdot_in_namespace_field() {
    let mut r = request();
    r.namespace = "..".into();
    expect_rejected(Some("${.PVC.namespace}"), r, "${.PVC.namespace}").await;
}

#[tokio::test]
async fn dotdot_in_claim_name_field() {
    let mut r = request();
    r.claim_name = "..".into();
    expect_rejected(Some("x/${.PVC.name}"), r, "${.PVC.name}").await;
}

#[tokio::test]
async fn dotdot_in_claim_uid_field() {
    let mut r = request();
    r.claim_uid = "..".into();
    expect_rejected(Some("${.PVC.uid}"), r, "${.PVC.uid}").await;
}

#[tokio::test]
async fn dotdot_in_pv_name_field() {
    let mut r = request();
    r.pv_name = "..".into();
    expect_rejected(Some("${.PV.name}"), r, "${.PV.name}").await;
}

#[tokio::test]
async fn dotdot_in_label_field() {
    expect_rejected(
        Some("${.PVC.labels.app}"),
        with_label(".."),
        "${.PVC.labels.app}",
    )
    .await;
}

#[tokio::test]
async fn dotdot_in_annotation_field() {
    let mut r = request();
    r.annotations.insert("team".into(), "..".into());
    expect_rejected(
        Some("ns/${.PVC.annotations.team}"),
        r,
        "${.PVC.annotations.team}",
    )
    .await;
}

#[tokio::test]
async fn single_dot_value() {
    expect_rejected(
        Some("${.PVC.labels.app}"),
        with_label("."),
        "current or parent",
    )
    .await;
}

#[tokio::test]
async fn dot_concatenated_into_dotdot() {
    expect_rejected(Some(".${.PVC.labels.app}"), with_label("."), "\".\"").await;
}

#[tokio::test]
async fn traversal_with_slashes_in_value() {
    expect_rejected(
        Some("${.PVC.labels.app}"),
        with_label("../../outside"),
        "contains '/'",
    )
    .await;
}

#[tokio::test]
async fn absolute_path_in_value() {
    expect_rejected(
        Some("${.PVC.labels.app}"),
        with_label("/etc"),
        "contains '/'",
    )
    .await;
}

#[tokio::test]
async fn dotdot_literal_in_pattern_is_a_class_error() {
    let err =
        ClassParameters::parse(&[("pathPattern".into(), "a/../../x".into())].into()).unwrap_err();
    assert_eq!(err.key(), "pathPattern");
}

#[tokio::test]
async fn absolute_pattern_stays_beneath_root() {
    let world = World::new();
    let d = plan_and_create(&world, Some("/abs/${.PVC.name}"), &request())
        .await
        .unwrap();
    assert_eq!(d.as_str(), "abs/data");
    assert!(world.root.join("abs/data").is_dir());
}

// ---- encodings and Unicode lookalikes: plain names, created beneath the root -----------

#[tokio::test]
async fn unicode_lookalike_slash_and_dots_are_plain_names() {
    for value in [
        "\u{2215}\u{2215}",
        "\u{ff0e}\u{ff0e}",
        "\u{2024}\u{2024}",
        "..\u{200b}",
    ] {
        let world = World::new();
        let d = plan_and_create(&world, Some("${.PVC.labels.app}"), &with_label(value))
            .await
            .unwrap();
        assert_eq!(d.as_str(), value);
        assert_eq!(fs::read_dir(&world.root).unwrap().count(), 1);
    }
}

#[tokio::test]
async fn percent_encoded_traversal_is_a_plain_name() {
    let world = World::new();
    let d = plan_and_create(&world, Some("${.PVC.labels.app}"), &with_label("%2e%2e%2f"))
        .await
        .unwrap();
    assert_eq!(d.as_str(), "%2e%2e%2f");
}

#[tokio::test]
async fn backslash_traversal_is_a_plain_name() {
    let world = World::new();
    let d = plan_and_create(&world, Some("${.PVC.labels.app}"), &with_label("..\\..\\x"))
        .await
        .unwrap();
    assert!(world.root.join(d.as_str()).is_dir());
}

// ---- NUL, empty, control characters, missing keys ---------------------------------------

#[tokio::test]
async fn nul_in_value() {
    expect_rejected(Some("${.PVC.labels.app}"), with_label("a\0b"), "NUL").await;
}

#[tokio::test]
async fn empty_value() {
    expect_rejected(Some("x/${.PVC.labels.app}"), with_label(""), "empty").await;
}

#[tokio::test]
async fn control_character_in_value() {
    expect_rejected(Some("${.PVC.labels.app}"), with_label("a\nb"), "control").await;
}

#[tokio::test]
async fn missing_label_is_rejected() {
    expect_rejected(Some("${.PVC.labels.tier}/x"), request(), "\"tier\"").await;
}

#[tokio::test]
async fn missing_annotation_is_rejected() {
    expect_rejected(Some("${.PVC.annotations.owner}"), request(), "\"owner\"").await;
}

// ---- length limits ------------------------------------------------------------------------

#[tokio::test]
async fn component_longer_than_255_bytes() {
    expect_rejected(
        Some("${.PVC.labels.app}"),
        with_label(&"a".repeat(256)),
        "255 bytes",
    )
    .await;
}

#[tokio::test]
async fn multibyte_component_longer_than_255_bytes() {
    expect_rejected(
        Some("${.PVC.labels.app}"),
        with_label(&"é".repeat(128)),
        "255 bytes",
    )
    .await;
}

#[tokio::test]
async fn concatenated_component_longer_than_255_bytes() {
    expect_rejected(
        Some("${.PVC.labels.app}-${.PVC.labels.app}"),
        with_label(&"a".repeat(200)),
        "255 bytes",
    )
    .await;
}

#[tokio::test]
async fn default_name_longer_than_255_bytes() {
    let mut r = request();
    r.claim_name = "c".repeat(253);
    expect_rejected(None, r, "255 bytes").await;
}

#[tokio::test]
async fn whole_path_longer_than_path_max() {
    let pattern = vec!["${.PVC.labels.app}"; 17].join("/");
    expect_rejected(Some(&pattern), with_label(&"a".repeat(255)), "4095").await;
}

#[tokio::test]
async fn component_of_exactly_255_bytes_works() {
    let world = World::new();
    let d = plan_and_create(
        &world,
        Some("${.PVC.labels.app}"),
        &with_label(&"a".repeat(255)),
    )
    .await
    .unwrap();
    assert_eq!(d.as_str().len(), 255);
}

// ---- planted symlinks at each path component ---------------------------------------------

async fn expect_unsafe_create(world: &World, pattern: &str) {
    let before = world.snapshot();
    let err = plan_and_create(world, Some(pattern), &request())
        .await
        .unwrap_err();
    assert!(err.contains("refusing unsafe path"), "{err}");
    before.assert_unchanged(&world.snapshot());
    assert!(!world.outside.join("data").exists());
}

#[tokio::test]
async fn symlink_at_first_component() {
    let world = World::new();
    world.plant_symlink("team-a", &world.outside);
    expect_unsafe_create(&world, "${.PVC.namespace}/${.PVC.name}").await;
}

#[tokio::test]
async fn symlink_at_middle_component() {
    let world = World::new();
    fs::create_dir(world.in_root("team-a")).unwrap();
    world.plant_symlink("team-a/web", &world.outside);
    expect_unsafe_create(&world, "${.PVC.namespace}/${.PVC.labels.app}/${.PVC.name}").await;
}

#[tokio::test]
async fn symlink_at_last_component() {
    let world = World::new();
    world.plant_symlink("team-a/data", &world.outside.join("dir"));
    expect_unsafe_create(&world, "${.PVC.namespace}/${.PVC.name}").await;
}

#[tokio::test]
async fn symlink_to_file_at_last_component() {
    let world = World::new();
    world.plant_symlink("team-a/data", &world.outside.join("canary.txt"));
    expect_unsafe_create(&world, "${.PVC.namespace}/${.PVC.name}").await;
}

#[tokio::test]
async fn relative_symlink_escaping_the_root() {
    let world = World::new();
    world.plant_symlink("team-a", Path::new("../outside"));
    expect_unsafe_create(&world, "${.PVC.namespace}/${.PVC.name}").await;
}

#[tokio::test]
async fn symlink_pointing_inside_the_root_is_refused_too() {
    let world = World::new();
    fs::create_dir(world.in_root("elsewhere")).unwrap();
    world.plant_symlink("team-a", Path::new("elsewhere"));
    expect_unsafe_create(&world, "${.PVC.namespace}/${.PVC.name}").await;
}

#[tokio::test]
async fn file_at_parent_component() {
    let world = World::new();
    fs::write(world.in_root("team-a"), b"not a dir").unwrap();
    expect_unsafe_create(&world, "${.PVC.namespace}/${.PVC.name}").await;
}

// ---- races: swapped in after planning -------------------------------------------------------

#[tokio::test]
async fn symlink_swapped_in_between_plan_and_create() {
    let world = World::new();
    let d = plan_directory(&class(Some("${.PVC.namespace}/${.PVC.name}")), &request()).unwrap();
    fs::create_dir(world.in_root("team-a")).unwrap();
    let before = world.snapshot();
    // The attacker replaces the existing parent with a symlink after planning.
    fs::remove_dir(world.in_root("team-a")).unwrap();
    symlink(&world.outside, world.in_root("team-a")).unwrap();
    let err = open(&world)
        .await
        .create_volume_dir(&d, &perms(), &perms(), &never())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unsafe_path", "{err}");
    assert!(!world.outside.join("data").exists());
    let after = world.snapshot();
    // Only the swapped entry itself differs.
    let mut expected = before.clone();
    expected.entries.remove(Path::new("root/team-a"));
    let mut got = after.clone();
    got.entries.remove(Path::new("root/team-a"));
    assert_eq!(expected, got);
}

#[tokio::test]
async fn symlink_swapped_in_at_the_start_of_the_worker() {
    // The fault hook runs on the worker thread right before the first syscall.
    let world = World::new();
    fs::create_dir(world.in_root("team-a")).unwrap();
    let (root_path, outside) = (world.root.clone(), world.outside.clone());
    let swapped = Arc::new(AtomicBool::new(false));
    let swapped2 = swapped.clone();
    let root = NfsRoot::open_with_fault_hook(
        &world.root,
        StorageOptions::default(),
        Arc::new(move |op: &str, _path: &str| {
            if op == "create" && !swapped2.swap(true, Ordering::SeqCst) {
                fs::remove_dir(root_path.join("team-a")).unwrap();
                symlink(&outside, root_path.join("team-a")).unwrap();
            }
        }),
    )
    .await
    .unwrap();
    let outside_before = world.snapshot();
    let err = root
        .create_volume_dir(&dir("team-a/data"), &perms(), &perms(), &never())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unsafe_path", "{err}");
    assert!(swapped.load(Ordering::SeqCst));
    let after = world.snapshot();
    for (p, e) in &outside_before.entries {
        if p.starts_with("outside") || p.starts_with("root-sibling") {
            assert_eq!(after.entries.get(p), Some(e));
        }
    }
    assert!(!world.outside.join("data").exists());
}

#[tokio::test]
async fn directory_swapped_for_symlink_during_tree_delete() {
    let world = World::new();
    let vol = world.in_root("vol");
    fs::create_dir_all(vol.join("a/inner")).unwrap();
    fs::write(vol.join("a/inner/f"), b"x").unwrap();
    let (vol2, outside) = (vol.clone(), world.outside.clone());
    let swapped = Arc::new(AtomicBool::new(false));
    let swapped2 = swapped.clone();
    let root = NfsRoot::open_with_fault_hook(
        &world.root,
        StorageOptions::default(),
        Arc::new(move |op: &str, _path: &str| {
            // Right before the walk looks at `a`, replace it by a symlink to outside.
            if op == "delete_entry" && !swapped2.swap(true, Ordering::SeqCst) {
                fs::remove_dir_all(vol2.join("a")).unwrap();
                symlink(&outside, vol2.join("a")).unwrap();
            }
        }),
    )
    .await
    .unwrap();
    let before = world.snapshot();
    let out = root
        .delete_volume_dir(&dir("vol"), Vec::new(), &never())
        .await
        .unwrap();
    assert_eq!(out, RemoveOutcome::Removed);
    assert!(swapped.load(Ordering::SeqCst));
    before.assert_only_volume_changed(&world.snapshot(), Some("vol"));
    assert!(!vol.exists());
    assert_eq!(
        fs::read(world.outside.join("canary.txt")).unwrap(),
        b"do not touch"
    );
}

// ---- delete / archive where the volume or a parent became a symlink -------------------------

#[tokio::test]
async fn delete_volume_dir_replaced_by_symlink() {
    let world = World::new();
    world.plant_symlink("team-a/data", &world.outside);
    let before = world.snapshot();
    let err = open(&world)
        .await
        .delete_volume_dir(&dir("team-a/data"), Vec::new(), &never())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unsafe_path");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    // Nothing changed at all: the symlink is left for an admin to inspect.
    before.assert_unchanged(&world.snapshot());
}

#[tokio::test]
async fn delete_with_parent_replaced_by_symlink() {
    let world = World::new();
    fs::create_dir_all(world.outside.join("data")).unwrap();
    fs::write(world.outside.join("data/precious"), b"p").unwrap();
    world.plant_symlink("team-a", &world.outside);
    let before = world.snapshot();
    let err = open(&world)
        .await
        .delete_volume_dir(&dir("team-a/data"), Vec::new(), &never())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unsafe_path");
    before.assert_unchanged(&world.snapshot());
}

#[tokio::test]
async fn delete_volume_dir_replaced_by_file() {
    let world = World::new();
    fs::write(world.in_root("vol"), b"file").unwrap();
    let before = world.snapshot();
    let err = open(&world)
        .await
        .delete_volume_dir(&dir("vol"), Vec::new(), &never())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unsafe_path");
    before.assert_unchanged(&world.snapshot());
}

#[tokio::test]
async fn delete_tree_with_links_to_outside() {
    let world = World::new();
    let vol = world.in_root("ns/vol");
    fs::create_dir_all(vol.join("sub")).unwrap();
    symlink(&world.outside, vol.join("to-outside")).unwrap();
    symlink(world.outside.join("dir"), vol.join("sub/to-dir")).unwrap();
    symlink("../../../outside", vol.join("sub/relative")).unwrap();
    symlink("/", vol.join("to-slash")).unwrap();
    fs::hard_link(world.outside.join("canary.txt"), vol.join("hardlink")).unwrap();
    nix::unistd::mkfifo(
        &vol.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let before = world.snapshot();
    let out = open(&world)
        .await
        .delete_volume_dir(&dir("ns/vol"), Vec::new(), &never())
        .await
        .unwrap();
    assert_eq!(out, RemoveOutcome::Removed);
    before.assert_only_volume_changed(&world.snapshot(), Some("ns/vol"));
    assert!(
        !world.in_root("ns").exists(),
        "empty template parent removed"
    );
    assert!(world.root.is_dir(), "root kept");
}

#[tokio::test]
async fn delete_keeps_non_empty_and_shared_parents() {
    let world = World::new();
    fs::create_dir_all(world.in_root("ns/a")).unwrap();
    fs::create_dir_all(world.in_root("ns/b")).unwrap();
    let before = world.snapshot();
    let root = open(&world).await;
    root.delete_volume_dir(&dir("ns/a"), Vec::new(), &never())
        .await
        .unwrap();
    before.assert_only_volume_changed(&world.snapshot(), Some("ns/a"));
    assert!(world.in_root("ns/b").is_dir());
}

#[tokio::test]
async fn delete_already_gone_is_success() {
    let world = World::new();
    let before = world.snapshot();
    let out = open(&world)
        .await
        .delete_volume_dir(&dir("ns/never-created"), Vec::new(), &never())
        .await
        .unwrap();
    assert_eq!(out, RemoveOutcome::AlreadyGone);
    before.assert_unchanged(&world.snapshot());
}

#[tokio::test]
async fn archive_volume_dir_replaced_by_symlink() {
    let world = World::new();
    world.plant_symlink("vol", &world.outside);
    let before = world.snapshot();
    let err = open(&world)
        .await
        .archive_volume_dir(&dir("vol"), &dir("archived-vol"), Vec::new(), &never())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unsafe_path");
    before.assert_unchanged(&world.snapshot());
}

#[tokio::test]
async fn archive_with_parent_replaced_by_symlink() {
    let world = World::new();
    fs::create_dir(world.outside.join("data")).unwrap();
    world.plant_symlink("team-a", &world.outside);
    let before = world.snapshot();
    let err = open(&world)
        .await
        .archive_volume_dir(
            &dir("team-a/data"),
            &dir("archived-x"),
            Vec::new(),
            &never(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unsafe_path");
    before.assert_unchanged(&world.snapshot());
}

// ---- archive naming collisions ----------------------------------------------------------------

async fn archive_onto_existing(existing: impl FnOnce(&World, &Path)) {
    let world = World::new();
    let vol = dir("team-a/data");
    fs::create_dir_all(world.in_root("team-a/data")).unwrap();
    fs::write(world.in_root("team-a/data/f"), b"payload").unwrap();
    let base = archive_directory(&vol, "team-a", "data", "pvc-1");
    existing(&world, &world.in_root(base.as_str()));
    let before = world.snapshot();
    let out = open(&world)
        .await
        .archive_volume_dir(&vol, &base, Vec::new(), &never())
        .await
        .unwrap();
    let ArchiveOutcome::Archived { to } = out else {
        panic!("not archived: {out:?}")
    };
    assert_ne!(to, base);
    assert!(to.as_str().starts_with(base.as_str()));
    assert_eq!(
        fs::read(world.in_root(&format!("{to}/f"))).unwrap(),
        b"payload"
    );
    let after = world.snapshot();
    // Only the volume moved (and its empty parent went): the existing entry is untouched.
    for (p, e) in &before.entries {
        if !p.starts_with("root/team-a") {
            assert_eq!(after.entries.get(p), Some(e), "{}", p.display());
        }
    }
    for p in after.entries.keys() {
        assert!(
            before.entries.contains_key(p) || p.starts_with(Path::new("root").join(to.as_str())),
            "unexpected {}",
            p.display()
        );
    }
}

#[tokio::test]
async fn archive_onto_existing_directory() {
    archive_onto_existing(|_, at| {
        fs::create_dir(at).unwrap();
        fs::write(at.join("old"), b"old").unwrap();
    })
    .await;
}

#[tokio::test]
async fn archive_onto_existing_empty_directory() {
    archive_onto_existing(|_, at| fs::create_dir(at).unwrap()).await;
}

#[tokio::test]
async fn archive_onto_existing_symlink() {
    archive_onto_existing(|w, at| symlink(&w.outside, at).unwrap()).await;
}

#[tokio::test]
async fn archive_onto_existing_file() {
    archive_onto_existing(|_, at| fs::write(at, b"x").unwrap()).await;
}

#[tokio::test]
async fn archive_shared_layout_never_collides() {
    let world = World::new();
    let root = open(&world).await;
    let pattern = class(Some("${.PVC.namespace}/data"));
    let mut names = Vec::new();
    for uid in ["11111111", "22222222", "33333333"] {
        let mut r = request();
        r.pv_name = format!("pvc-{uid}");
        let d = plan_directory(&pattern, &r).unwrap();
        assert_eq!(d.as_str(), "team-a/data");
        root.create_volume_dir(&d, &perms(), &perms(), &never())
            .await
            .unwrap();
        fs::write(world.in_root("team-a/data/owner"), uid).unwrap();
        let base = archive_directory(&d, &r.namespace, &r.claim_name, &r.pv_name);
        let before = world.snapshot();
        let out = root
            .archive_volume_dir(&d, &base, Vec::new(), &never())
            .await
            .unwrap();
        assert_eq!(out, ArchiveOutcome::Archived { to: base.clone() });
        let after = world.snapshot();
        for (p, e) in &before.entries {
            if !p.starts_with("root/team-a") {
                assert_eq!(after.entries.get(p), Some(e));
            }
        }
        names.push(base);
    }
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 3);
    for n in &names {
        assert!(world.in_root(n.as_str()).join("owner").is_file());
    }
}

// ---- existing directories, root and PV path mapping -------------------------------------------

#[tokio::test]
async fn existing_volume_dir_is_not_chmodded() {
    let world = World::new();
    fs::create_dir_all(world.in_root("ns/vol")).unwrap();
    fs::set_permissions(world.in_root("ns/vol"), fs::Permissions::from_mode(0o700)).unwrap();
    let before = world.snapshot();
    let out = open(&world)
        .await
        .create_volume_dir(&dir("ns/vol"), &perms(), &perms(), &never())
        .await
        .unwrap();
    assert_eq!(out, CreateOutcome::AlreadyExisted);
    before.assert_unchanged(&world.snapshot());
}

#[tokio::test]
async fn the_root_cannot_be_named() {
    let world = World::new();
    let before = world.snapshot();
    for rel in ["", ".", "/", "./", "..", "a/.."] {
        assert!(VolumeDirectory::parse(rel).is_err(), "{rel:?}");
    }
    let export = ExportPath::new("/exports/k8s/").unwrap();
    for pv_path in [
        "/exports/k8s",
        "/exports/k8s/",
        "/exports/k8s/.",
        "/exports/k8s/..",
        "/exports/k8s/../root-sibling",
        "/exports/k8s-sibling/x",
        "/etc",
    ] {
        assert!(export.directory_of(pv_path).is_err(), "{pv_path:?}");
    }
    before.assert_unchanged(&world.snapshot());
}

#[tokio::test]
async fn escaping_archive_target_cannot_be_expressed_and_nested_target_is_refused() {
    let world = World::new();
    fs::create_dir(world.in_root("vol")).unwrap();
    let before = world.snapshot();
    assert!(VolumeDirectory::parse("../outside/x").is_err());
    let err = open(&world)
        .await
        .archive_volume_dir(&dir("vol"), &dir("vol/inside"), Vec::new(), &never())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unsafe_path");
    before.assert_unchanged(&world.snapshot());
}

#[tokio::test]
async fn mode_from_claim_annotation_is_applied_to_new_dirs_only() {
    let world = World::new();
    fs::create_dir(world.in_root("team-a")).unwrap();
    let mut r = request();
    r.annotations
        .insert("k8s-sigs.io/nfs-directory-mode".into(), "0750".into());
    let c = class(Some("${.PVC.namespace}/${.PVC.name}"));
    let p = DirectoryPermissions::resolve(&DirectoryPermissions::default(), &c, &r.annotations)
        .unwrap();
    let d = plan_directory(&c, &r).unwrap();
    let before = world.snapshot();
    open(&world)
        .await
        .create_volume_dir(&d, &p, &p, &never())
        .await
        .unwrap();
    before.assert_only_volume_changed(&world.snapshot(), Some(d.as_str()));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(world.in_root("team-a/data")).unwrap().mode() & 0o7777,
        0o750
    );
}

#[tokio::test]
async fn volume_dir_exists_refuses_symlink() {
    let world = World::new();
    world.plant_symlink("vol", &world.outside);
    let err = open(&world)
        .await
        .volume_dir_exists(&dir("vol"), &never())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Unsafe { .. }), "{err}");
}

// ---- template parents and other volumes' directories ------------------------------------

#[tokio::test]
async fn claim_mode_never_reaches_created_template_parents() {
    let world = World::new();
    let mut r = request();
    r.labels.insert("tier".into(), "gold".into());
    r.annotations
        .insert("k8s-sigs.io/nfs-directory-mode".into(), "0700".into());
    let mut params = BTreeMap::new();
    params.insert(
        "pathPattern".to_string(),
        "${.PVC.labels.tier}/${.PVC.name}".to_string(),
    );
    params.insert("directoryMode".to_string(), "0755".to_string());
    let c = ClassParameters::parse(&params).unwrap();
    let defaults = DirectoryPermissions::default();
    let volume = DirectoryPermissions::resolve(&defaults, &c, &r.annotations).unwrap();
    let parents = DirectoryPermissions::resolve_parents(&defaults, &c);
    let d = plan_directory(&c, &r).unwrap();
    assert_eq!(d.as_str(), "gold/data");
    let before = world.snapshot();
    open(&world)
        .await
        .create_volume_dir(&d, &volume, &parents, &never())
        .await
        .unwrap();
    before.assert_only_volume_changed(&world.snapshot(), Some(d.as_str()));
    use std::os::unix::fs::MetadataExt;
    let mode = |p: &str| fs::metadata(world.in_root(p)).unwrap().mode() & 0o7777;
    assert_eq!(
        mode("gold"),
        0o755,
        "the shared parent takes the class's mode"
    );
    assert_eq!(
        mode("gold/data"),
        0o700,
        "the claim's own directory takes its annotation"
    );
}

/// `ns` is another PV's directory (for example of a class with pattern `${.PVC.namespace}`)
/// and it is empty; `ns/data` is the volume being removed.
fn volume_inside_another_volume(world: &World) -> (VolumeDirectory, VolumeDirectory) {
    fs::create_dir_all(world.in_root("ns/data/sub")).unwrap();
    fs::write(world.in_root("ns/data/sub/f"), b"x").unwrap();
    (dir("ns/data"), dir("ns"))
}

#[tokio::test]
async fn delete_keeps_an_empty_parent_that_is_another_volume() {
    let world = World::new();
    let (vol, other) = volume_inside_another_volume(&world);
    let root = open(&world).await;
    let out = root
        .delete_volume_dir(&vol, vec![other.clone()], &never())
        .await
        .unwrap();
    assert_eq!(out, RemoveOutcome::Removed);
    assert!(!world.in_root("ns/data").exists());
    assert!(
        world.in_root("ns").is_dir(),
        "another volume's directory survives"
    );
    // Already gone: parent cleanup still stops there.
    let out = root
        .delete_volume_dir(&vol, vec![other], &never())
        .await
        .unwrap();
    assert_eq!(out, RemoveOutcome::AlreadyGone);
    assert!(world.in_root("ns").is_dir());
}

#[tokio::test]
async fn delete_without_keep_removes_the_empty_parent() {
    let world = World::new();
    let (vol, _) = volume_inside_another_volume(&world);
    let out = open(&world)
        .await
        .delete_volume_dir(&vol, Vec::new(), &never())
        .await
        .unwrap();
    assert_eq!(out, RemoveOutcome::Removed);
    assert!(!world.in_root("ns").exists());
}

#[tokio::test]
async fn archive_keeps_an_empty_parent_that_is_another_volume() {
    let world = World::new();
    let (vol, other) = volume_inside_another_volume(&world);
    let before = world.snapshot();
    let out = open(&world)
        .await
        .archive_volume_dir(&vol, &dir("archived-data"), vec![other], &never())
        .await
        .unwrap();
    assert_eq!(
        out,
        ArchiveOutcome::Archived {
            to: dir("archived-data")
        }
    );
    assert!(
        world.in_root("ns").is_dir(),
        "another volume's directory survives"
    );
    assert_eq!(
        fs::read(world.in_root("archived-data/sub/f")).unwrap(),
        b"x"
    );
    let mut after = world.snapshot();
    for moved in ["archived-data", "archived-data/sub", "archived-data/sub/f"] {
        after.entries.remove(&Path::new("root").join(moved));
    }
    before.assert_only_volume_changed(&after, Some("ns/data"));
}

#[tokio::test]
async fn archive_without_keep_removes_the_empty_parent() {
    let world = World::new();
    let (vol, _) = volume_inside_another_volume(&world);
    open(&world)
        .await
        .archive_volume_dir(&vol, &dir("archived-data"), Vec::new(), &never())
        .await
        .unwrap();
    assert!(!world.in_root("ns").exists());
}

// ---- orphan journal ---------------------------------------------------------------------

const UID_A: &str = "4f0c5a36-1d2b-4c4e-9d59-6b1c7f0e2a11";
const UID_B: &str = "0b1c2d3e-0000-4000-8000-000000000001";
const JOURNAL: &str = ".nfs-provisioner-journal";

#[tokio::test]
async fn journal_records_lists_and_removes() {
    let world = World::new();
    let root = open(&world).await;
    assert_eq!(root.journal_entries(&never()).await.unwrap(), Vec::new());
    let before = world.snapshot();
    root.journal_record(UID_A, &dir("ns/a"), &never())
        .await
        .unwrap();
    root.journal_record(UID_B, &dir("b"), &never())
        .await
        .unwrap();
    // Same key again: replaced, not duplicated.
    root.journal_record(UID_A, &dir("ns/a2"), &never())
        .await
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    let journal = world.in_root(JOURNAL);
    assert_eq!(fs::metadata(&journal).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(fs::read(journal.join(UID_A)).unwrap(), b"ns/a2");
    assert_eq!(
        fs::read_dir(&journal).unwrap().count(),
        2,
        "no temp files left"
    );
    assert_eq!(
        root.journal_entries(&never()).await.unwrap(),
        vec![
            (UID_B.to_string(), dir("b")),
            (UID_A.to_string(), dir("ns/a2"))
        ]
    );
    root.journal_remove(UID_A, &never()).await.unwrap();
    root.journal_remove(UID_A, &never()).await.unwrap();
    assert_eq!(
        root.journal_entries(&never()).await.unwrap(),
        vec![(UID_B.to_string(), dir("b"))]
    );
    before.assert_only_volume_changed(&world.snapshot(), Some(JOURNAL));
}

#[tokio::test]
async fn journal_refuses_keys_that_are_not_uids() {
    let world = World::new();
    let root = open(&world).await;
    let before = world.snapshot();
    let long = "a".repeat(65);
    for bad in [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "/etc",
        ".tmp-x",
        "a b",
        "a_b",
        "ü",
        "a\0b",
        long.as_str(),
    ] {
        let err = root
            .journal_record(bad, &dir("vol"), &never())
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Unsafe { .. }), "{bad:?}: {err}");
        assert!(root.journal_remove(bad, &never()).await.is_err(), "{bad:?}");
    }
    root.journal_record(&"a".repeat(64), &dir("vol"), &never())
        .await
        .unwrap();
    before.assert_only_volume_changed(&world.snapshot(), Some(JOURNAL));
    assert_eq!(fs::read_dir(world.in_root(JOURNAL)).unwrap().count(), 1);
}

#[tokio::test]
async fn journal_dir_replaced_by_symlink_is_not_followed() {
    let world = World::new();
    world.plant_symlink(JOURNAL, &world.outside);
    let root = open(&world).await;
    let before = world.snapshot();
    let err = root
        .journal_record(UID_A, &dir("vol"), &never())
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Unsafe { .. }), "{err}");
    assert!(root.journal_entries(&never()).await.is_err());
    assert!(root.journal_remove(UID_A, &never()).await.is_err());
    before.assert_unchanged(&world.snapshot());
    assert!(!world.outside.join(UID_A).exists());
}

#[tokio::test]
async fn journal_entries_planted_as_symlinks_or_junk_are_skipped_and_never_followed() {
    let world = World::new();
    let root = open(&world).await;
    root.journal_record(UID_B, &dir("good"), &never())
        .await
        .unwrap();
    let journal = world.in_root(JOURNAL);
    // A symlink to a file outside holding a valid path, and one to a directory.
    fs::write(world.outside.join("fake-entry"), b"victim").unwrap();
    symlink(world.outside.join("fake-entry"), journal.join(UID_A)).unwrap();
    symlink(&world.outside, journal.join("dir-link")).unwrap();
    // A FIFO (must not hang the read), an oversized entry, junk content, a bad name.
    nix::unistd::mkfifo(
        &journal.join("fifo-0"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    fs::write(journal.join("big-1"), "a/".repeat(3000)).unwrap();
    fs::write(journal.join("junk-2"), b"../../etc").unwrap();
    fs::write(journal.join("reserved-3"), JOURNAL.as_bytes()).unwrap();
    fs::write(journal.join("not a key"), b"vol").unwrap();
    fs::create_dir(journal.join("subdir-4")).unwrap();
    let before = world.snapshot();
    assert_eq!(
        root.journal_entries(&never()).await.unwrap(),
        vec![(UID_B.to_string(), dir("good"))]
    );
    before.assert_unchanged(&world.snapshot());
    // Removing or rewriting the planted key acts on the link itself, never its target.
    root.journal_remove(UID_A, &never()).await.unwrap();
    assert!(fs::symlink_metadata(journal.join(UID_A)).is_err());
    symlink(world.outside.join("fake-entry"), journal.join(UID_A)).unwrap();
    root.journal_record(UID_A, &dir("mine"), &never())
        .await
        .unwrap();
    assert!(fs::symlink_metadata(journal.join(UID_A)).unwrap().is_file());
    assert_eq!(
        fs::read(world.outside.join("fake-entry")).unwrap(),
        b"victim"
    );
    // A directory under an entry's name is refused, not removed.
    assert!(root.journal_remove("subdir-4", &never()).await.is_err());
    assert!(journal.join("subdir-4").is_dir());
    let after = world.snapshot();
    for path in after.entries.keys() {
        assert!(
            path.starts_with(Path::new("root").join(JOURNAL)) || before.entries.contains_key(path),
            "{} appeared outside the journal",
            path.display()
        );
    }
    before.assert_only_volume_changed(&after, Some(JOURNAL));
}
