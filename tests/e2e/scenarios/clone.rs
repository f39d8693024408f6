//! Cloning (`dataSource: {kind: PersistentVolumeClaim}`): a clone's directory holds a copy of
//! its source's, a clone of a clone too, the source is protected from deletion while it is
//! copied, and each kind of clone that cannot be made is refused with its reason. Runs on the
//! fake and on real clusters (`E2E_KUBECONFIG`).

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    TypedLocalObjectReference,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use nfs_provisioner::controller::clone::protection;
use nfs_provisioner::planning::STAGING_DIRECTORY;

use super::Scenario;
use crate::cluster::{TestCluster, entries};
use crate::provisioner::RunningProvisioner;

fn clone_of(name: &str, class: &str, source: &str, size: &str) -> PersistentVolumeClaim {
    let mut claim = TestCluster::claim(name, class);
    let spec = claim.spec.as_mut().unwrap();
    spec.data_source = Some(TypedLocalObjectReference {
        api_group: None,
        kind: "PersistentVolumeClaim".into(),
        name: source.into(),
    });
    spec.resources.as_mut().unwrap().requests =
        Some(BTreeMap::from([("storage".into(), Quantity(size.into()))]));
    claim
}

fn sized(name: &str, class: &str, size: &str) -> PersistentVolumeClaim {
    let mut claim = TestCluster::claim(name, class);
    claim
        .spec
        .as_mut()
        .unwrap()
        .resources
        .as_mut()
        .unwrap()
        .requests = Some(BTreeMap::from([("storage".into(), Quantity(size.into()))]));
    claim
}

/// A tree with what a copy must keep: contents, modes, owners, times, a symlink pointing out
/// of the volume (copied as a link, never followed), a hard link pair and a FIFO.
fn fill(dir: &Path) {
    let write = |rel: &str, data: &[u8], mode: u32| {
        let p = dir.join(rel);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    write("config.yaml", b"replicas: 3\n", 0o640);
    write("sub/deeper/data.bin", &vec![7u8; 300_000], 0o600);
    write("linked", b"one inode, two names", 0o644);
    std::fs::hard_link(dir.join("linked"), dir.join("sub/also-linked")).unwrap();
    std::os::unix::fs::symlink("/etc", dir.join("escape")).unwrap();
    std::os::unix::fs::symlink("../../outside-the-volume", dir.join("sub/up")).unwrap();
    nix::unistd::mkfifo(
        &dir.join("pipe"),
        nix::sys::stat::Mode::from_bits_truncate(0o620),
    )
    .unwrap();
    std::os::unix::fs::lchown(dir.join("config.yaml"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::chown(dir.join("sub"), Some(4321), Some(8765)).unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000);
    std::fs::File::open(dir.join("config.yaml"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::fs::File::open(dir.join("sub/deeper"))
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// Every entry beneath `dir` with its type, mode, owner, mtime and content (or link target).
fn snapshot(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let t = m.file_type();
            let what = if t.is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if t.is_dir() {
                format!("dir mtime {}", m.mtime())
            } else if t.is_file() {
                let data = std::fs::read(&p).unwrap();
                let sum: u64 = data.iter().map(|b| u64::from(*b)).sum();
                format!("file {} bytes sum {sum} mtime {}", data.len(), m.mtime())
            } else {
                "special".to_string()
            };
            let mode = m.mode() & 0o7777;
            out.push(format!(
                "{rel}: {what} mode {mode:o} owner {}:{}",
                m.uid(),
                m.gid()
            ));
            if t.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

fn volume_dir(s: &Scenario, pv: &PersistentVolume) -> PathBuf {
    let path = &pv.spec.as_ref().unwrap().nfs.as_ref().unwrap().path;
    s.dir(path.strip_prefix("/exports/k8s/").unwrap())
}

fn staged(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join(STAGING_DIRECTORY))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until claim `name` carries no protection of this provisioner.
async fn wait_unprotected(c: &TestCluster, name: &str) {
    c.eventually(&format!("claim {name} no longer protected"), || async {
        let claim = c.claims().get(name).await.ok()?;
        let free = !claim
            .finalizers()
            .iter()
            .any(|f| f == protection::FINALIZER)
            && !claim.annotations().contains_key(protection::ANN_CLONES)
            && !claim.labels().contains_key(protection::LABEL);
        free.then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_holds_a_copy_of_its_source_and_so_does_a_clone_of_the_clone() {
    let s = Scenario::start("clone").await;
    let c = &s.cluster;
    let class = c
        .create_class("clone", &[("onDelete", "delete")], "Delete")
        .await;
    c.create_claim(&TestCluster::claim("source", &class)).await;
    let source_pv = c.wait_bound("source").await;
    let source_dir = volume_dir(&s, &source_pv);
    fill(&source_dir);
    let original = snapshot(&source_dir);

    let copy = c
        .create_claim(&clone_of("copy", &class, "source", "1Mi"))
        .await;
    let copy_pv = c.wait_bound("copy").await;
    let copy_dir = volume_dir(&s, &copy_pv);
    assert_ne!(copy_dir, source_dir, "a directory of its own");
    assert_eq!(
        snapshot(&copy_dir),
        original,
        "the copy is the source's tree"
    );
    let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
    assert_eq!(
        meta(&copy_dir.join("linked")).ino(),
        meta(&copy_dir.join("sub/also-linked")).ino(),
        "a hard link inside the source stays a link"
    );
    assert_ne!(
        meta(&copy_dir.join("linked")).ino(),
        meta(&source_dir.join("linked")).ino(),
        "and is not linked to the source's file"
    );
    assert!(
        std::fs::symlink_metadata(&copy_dir)
            .unwrap()
            .file_type()
            .is_dir()
    );
    assert_eq!(snapshot(&source_dir), original, "the source is untouched");
    let started = c.wait_claim_event("copy", "CloneStarted").await;
    assert!(started.contains("source"), "{started}");
    let succeeded = c.wait_claim_event("copy", "ProvisioningSucceeded").await;
    assert!(
        succeeded.contains("cloned from claim source"),
        "{succeeded}"
    );
    assert_eq!(
        copy_pv
            .spec
            .as_ref()
            .unwrap()
            .claim_ref
            .as_ref()
            .unwrap()
            .uid,
        copy.uid()
    );
    wait_unprotected(c, "source").await;

    // A clone of the clone.
    c.create_claim(&clone_of("copy-of-copy", &class, "copy", "2Mi"))
        .await;
    let second_pv = c.wait_bound("copy-of-copy").await;
    let second_dir = volume_dir(&s, &second_pv);
    assert_eq!(snapshot(&second_dir), original);
    assert_eq!(
        second_pv.spec.as_ref().unwrap().capacity.as_ref().unwrap()["storage"],
        Quantity("2Mi".into()),
        "a clone may be larger than its source"
    );
    wait_unprotected(c, "copy").await;
    assert!(staged(s.root.path()).is_empty(), "no copy left staged");

    // A clone is a volume like any other: deleting it deletes its directory only.
    c.delete_claim("copy").await;
    c.wait_volume_gone(&copy_pv.name_any()).await;
    assert!(!copy_dir.exists());
    assert_eq!(snapshot(&source_dir), original);
    assert_eq!(snapshot(&second_dir), original);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_that_cannot_be_made_are_refused_with_the_reason() {
    let s = Scenario::start("clone-refused").await;
    let c = &s.cluster;
    let class = c.create_class("clone-refused", &[], "Delete").await;
    let nobodys = c
        .create_class_with("nobodys", &[], "Delete", |sc| {
            sc.provisioner = "example.com/nobody".into();
        })
        .await;
    c.create_claim(&sized("big", &class, "2Mi")).await;
    c.create_claim(&TestCluster::claim("waiting", &nobodys))
        .await;
    // A claim bound to a PV this provisioner did not make (on the same NFS server).
    let foreign_pv = format!("{}-foreign", c.namespace);
    c.volumes()
        .create(
            &PostParams::default(),
            &PersistentVolume {
                metadata: ObjectMeta {
                    name: Some(foreign_pv.clone()),
                    ..Default::default()
                },
                spec: Some(PersistentVolumeSpec {
                    capacity: Some(BTreeMap::from([("storage".into(), Quantity("1Mi".into()))])),
                    access_modes: Some(vec!["ReadWriteMany".into()]),
                    nfs: Some(NFSVolumeSource {
                        server: "nfs.example.test".into(),
                        path: "/exports/k8s/hand-made".into(),
                        read_only: None,
                    }),
                    storage_class_name: Some(String::new()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut static_claim = TestCluster::claim("static", "");
    static_claim.spec.as_mut().unwrap().volume_name = Some(foreign_pv.clone());
    static_claim.spec.as_mut().unwrap().storage_class_name = Some(String::new());
    c.create_claim(&static_claim).await;
    c.wait_bound("big").await;
    c.wait_bound("static").await;

    let mut snapshot_clone = TestCluster::claim("from-snapshot", &class);
    snapshot_clone.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
        api_group: Some("snapshot.storage.k8s.io".into()),
        kind: "VolumeSnapshot".into(),
        name: "nightly".into(),
    });
    // Data that predates the clone, where the clone's directory would go.
    let by_path = c
        .create_class(
            "clone-by-path",
            &[("pathPattern", "${.PVC.annotations.nfs.io/storage-path}")],
            "Delete",
        )
        .await;
    std::fs::create_dir(s.dir("existing-data")).unwrap();
    std::fs::write(s.dir("existing-data/kept"), b"not the clone's").unwrap();
    let mut onto_existing = clone_of("onto-existing", &by_path, "big", "2Mi");
    onto_existing.metadata.annotations = Some(BTreeMap::from([(
        "nfs.io/storage-path".into(),
        "existing-data".into(),
    )]));
    let refused = [
        (onto_existing, "already exists"),
        (snapshot_clone, "VolumeSnapshot"),
        (
            clone_of("elsewhere", &class, "in-another-namespace", "1Mi"),
            "no such claim in namespace",
        ),
        (clone_of("unbound", &class, "waiting", "1Mi"), "not Bound"),
        (
            clone_of("foreign", &class, "static", "1Mi"),
            "not a volume of this provisioner",
        ),
        (
            clone_of("small", &class, "big", "1Mi"),
            "less than the size",
        ),
    ];
    for (claim, _) in &refused {
        c.create_claim(claim).await;
    }
    // The provisioner looked: a plain claim of the same class is provisioned meanwhile.
    c.create_claim(&TestCluster::claim("fine", &class)).await;
    c.wait_bound("fine").await;
    for (claim, needle) in &refused {
        let name = claim.name_any();
        let note = c.wait_claim_event(&name, "ProvisioningFailed").await;
        assert!(note.contains(needle), "{name}: {note}");
    }
    for (claim, _) in &refused {
        let now = c.claims().get(&claim.name_any()).await.unwrap();
        let spec = now.spec.unwrap();
        assert!(
            spec.volume_name.unwrap_or_default().is_empty(),
            "{} got a volume",
            claim.name_any()
        );
    }
    // Nothing was made for them: only the two provisioned directories exist, no copy was
    // staged, and no source was protected.
    let dirs: Vec<String> = entries(s.root.path())
        .into_iter()
        .filter(|e| !e.contains('/'))
        .collect();
    assert_eq!(dirs.len(), 3, "{dirs:?}");
    assert!(dirs.contains(&"existing-data".to_string()));
    assert_eq!(
        entries(&s.dir("existing-data")),
        vec!["kept".to_string()],
        "the existing directory is left as it was"
    );
    assert_eq!(
        std::fs::read(s.dir("existing-data/kept")).unwrap(),
        b"not the clone's"
    );
    assert!(staged(s.root.path()).is_empty());
    for source in ["big", "static", "waiting"] {
        wait_unprotected(c, source).await;
    }
    c.volumes()
        .delete(&foreign_pv, &DeleteParams::default())
        .await
        .unwrap();
    s.finish().await;
}

/// The copy is held (a hung NFS call) so that the source can be deleted while it is copied:
/// it stays, Terminating, until the copy is done, and then goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_is_kept_while_it_is_copied_and_goes_once_the_copy_is_done() {
    let c = TestCluster::start("clone-protect").await;
    let root = tempfile::tempdir().unwrap();
    let (hold, instrumentation) = CopyHold::new(std::time::Duration::ZERO);
    let p = RunningProvisioner::start_instrumented(
        &c.provisioner_options(root.path()),
        c.provisioner_config(),
        instrumentation,
    );
    let class = c
        .create_class("clone-protect", &[("onDelete", "delete")], "Delete")
        .await;
    c.create_claim(&TestCluster::claim("source", &class)).await;
    let source_pv = c.wait_bound("source").await;
    let path = &source_pv.spec.as_ref().unwrap().nfs.as_ref().unwrap().path;
    let source_dir = root
        .path()
        .join(path.strip_prefix("/exports/k8s/").unwrap());
    std::fs::write(source_dir.join("data"), b"copy me").unwrap();

    let copy = c
        .create_claim(&clone_of("copy", &class, "source", "1Mi"))
        .await;
    hold.wait_held(&c, 1).await;
    let protected = c.claims().get("source").await.unwrap();
    assert!(
        protected
            .finalizers()
            .iter()
            .any(|f| f == protection::FINALIZER),
        "{:?}",
        protected.finalizers()
    );
    assert_eq!(
        protected.annotations().get(protection::ANN_CLONES),
        copy.uid().as_ref()
    );
    c.delete_claim("source").await;
    let terminating = c.claims().get("source").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    c.wait_claim_event("copy", "CloneStarted").await;

    hold.set(false);
    let copy_pv = c.wait_bound("copy").await;
    let path = &copy_pv.spec.as_ref().unwrap().nfs.as_ref().unwrap().path;
    let copy_dir = root
        .path()
        .join(path.strip_prefix("/exports/k8s/").unwrap());
    assert_eq!(std::fs::read(copy_dir.join("data")).unwrap(), b"copy me");
    // Released: the source claim goes, and its volume is reclaimed (deleted by its policy);
    // the copy stays.
    c.eventually("the source claim is gone", || async {
        c.claims()
            .get_opt("source")
            .await
            .ok()
            .and_then(|o| o.is_none().then_some(()))
    })
    .await;
    c.wait_volume_gone(&source_pv.name_any()).await;
    assert!(!source_dir.exists());
    assert_eq!(std::fs::read(copy_dir.join("data")).unwrap(), b"copy me");
    p.stop();
    c.cleanup().await;
}

/// A fault hook on the copy: while `hold` is set a copy slice waits (a hung NFS call), and
/// `held` counts the slices that did; otherwise each slice is slowed by `delay`.
struct CopyHold {
    hold: Arc<AtomicBool>,
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl CopyHold {
    fn new(delay: std::time::Duration) -> (Self, nfs_provisioner::app::Instrumentation) {
        let hold = Arc::new(AtomicBool::new(true));
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (h, n) = (hold.clone(), held.clone());
        let instrumentation = nfs_provisioner::app::Instrumentation {
            nfs_fault_hook: Some(Arc::new(move |op: &str, _path: &str| {
                if op != "copy" {
                    return;
                }
                if h.load(Ordering::SeqCst) {
                    n.fetch_add(1, Ordering::SeqCst);
                    while h.load(Ordering::SeqCst) {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
                std::thread::sleep(delay);
            })),
            ..Default::default()
        };
        (CopyHold { hold, held }, instrumentation)
    }

    async fn wait_held(&self, c: &TestCluster, at_least: usize) {
        c.eventually("a copy is held", || async {
            (self.held.load(Ordering::SeqCst) >= at_least).then_some(())
        })
        .await
    }

    fn set(&self, hold: bool) {
        self.hold.store(hold, Ordering::SeqCst);
    }
}

fn dir_of(root: &Path, pv: &PersistentVolume) -> PathBuf {
    let path = &pv.spec.as_ref().unwrap().nfs.as_ref().unwrap().path;
    root.join(path.strip_prefix("/exports/k8s/").unwrap())
}

/// With one copy at a time, a second clone waits for the slot (and says so) while plain
/// claims are provisioned meanwhile; a slow copy reports its progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_beyond_the_bound_wait_for_a_slot_while_other_claims_are_provisioned() {
    let c = TestCluster::start("clone-slots").await;
    let root = tempfile::tempdir().unwrap();
    let (hold, instrumentation) = CopyHold::new(std::time::Duration::from_millis(300));
    let mut options = c.provisioner_options(root.path());
    options.extra_args = [
        "--max-concurrent-clones",
        "1",
        "--clone-progress-interval",
        "100ms",
    ]
    .map(String::from)
    .to_vec();
    let p =
        RunningProvisioner::start_instrumented(&options, c.provisioner_config(), instrumentation);
    let class = c.create_class("clone-slots", &[], "Delete").await;
    c.create_claim(&TestCluster::claim("source", &class)).await;
    let source_pv = c.wait_bound("source").await;
    std::fs::write(dir_of(root.path(), &source_pv).join("data"), b"twice").unwrap();

    c.create_claim(&clone_of("first", &class, "source", "1Mi"))
        .await;
    hold.wait_held(&c, 1).await;
    c.create_claim(&clone_of("second", &class, "source", "1Mi"))
        .await;
    let waiting = c.wait_claim_event("second", "CloneWaiting").await;
    assert!(waiting.contains("1 copies run at once"), "{waiting}");
    c.create_claim(&TestCluster::claim("plain", &class)).await;
    c.wait_bound("plain").await;
    for name in ["first", "second"] {
        let claim = c.claims().get(name).await.unwrap();
        assert!(
            claim
                .spec
                .unwrap()
                .volume_name
                .unwrap_or_default()
                .is_empty(),
            "{name} was bound while its copy was held"
        );
    }
    // Both clones protect the source.
    let source = c.claims().get("source").await.unwrap();
    assert_eq!(
        source
            .annotations()
            .get(protection::ANN_CLONES)
            .map(|v| v.split(',').count()),
        Some(2),
        "{:?}",
        source.annotations()
    );

    hold.set(false);
    for name in ["first", "second"] {
        let pv = c.wait_bound(name).await;
        assert_eq!(
            std::fs::read(dir_of(root.path(), &pv).join("data")).unwrap(),
            b"twice"
        );
    }
    let progress = c.wait_claim_event("first", "CloneProgress").await;
    assert!(progress.starts_with("copied "), "{progress}");
    wait_unprotected(&c, "source").await;
    p.stop();
    c.cleanup().await;
}

/// A clone whose claim is deleted mid-copy leaves no copy, no directory and no protection
/// behind; a copy interrupted by a crash starts over in the next instance and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_copy_leaves_nothing_behind_or_starts_over() {
    let c = TestCluster::start("clone-interrupted").await;
    let root = tempfile::tempdir().unwrap();
    let (hold, instrumentation) = CopyHold::new(std::time::Duration::ZERO);
    let options = c.provisioner_options(root.path());
    let p =
        RunningProvisioner::start_instrumented(&options, c.provisioner_config(), instrumentation);
    let class = c
        .create_class("clone-interrupted", &[("onDelete", "delete")], "Delete")
        .await;
    c.create_claim(&TestCluster::claim("source", &class)).await;
    let source_pv = c.wait_bound("source").await;
    let source_dir = dir_of(root.path(), &source_pv);
    fill(&source_dir);
    let original = snapshot(&source_dir);

    // The claim goes while its copy runs.
    c.create_claim(&clone_of("gone", &class, "source", "1Mi"))
        .await;
    hold.wait_held(&c, 1).await;
    c.claims()
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    c.eventually("claim gone is deleted", || async {
        c.claims()
            .get_opt("gone")
            .await
            .ok()
            .and_then(|o| o.is_none().then_some(()))
    })
    .await;
    hold.set(false);
    wait_unprotected(&c, "source").await;
    c.eventually("no copy left staged", || async {
        staged(root.path()).is_empty().then_some(())
    })
    .await;
    let top: Vec<String> = entries(root.path())
        .into_iter()
        .filter(|e| !e.contains('/'))
        .collect();
    assert_eq!(
        top,
        vec![
            source_dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string()
        ]
    );

    // The instance dies mid-copy; the next one copies again from the start.
    hold.set(true);
    c.create_claim(&clone_of("restarted", &class, "source", "1Mi"))
        .await;
    hold.wait_held(&c, 2).await;
    p.kill();
    hold.set(false);
    let p = RunningProvisioner::start(&options, c.provisioner_config());
    let pv = c.wait_bound("restarted").await;
    assert_eq!(snapshot(&dir_of(root.path(), &pv)), original);
    assert_eq!(snapshot(&source_dir), original);
    wait_unprotected(&c, "source").await;
    c.eventually("no copy left staged", || async {
        staged(root.path()).is_empty().then_some(())
    })
    .await;
    p.stop();
    c.cleanup().await;
}

/// A protection whose clone no longer exists (its claim deleted while no instance ran) is
/// taken off by the sweep at the start of the next leadership term, and only that clone's
/// share: the finalizers of others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protection_left_by_a_vanished_clone_is_taken_off() {
    let mut s = Scenario::start("clone-stale").await;
    let class = s.cluster.create_class("clone-stale", &[], "Delete").await;
    s.cluster
        .create_claim(&TestCluster::claim("source", &class))
        .await;
    s.cluster.wait_bound("source").await;
    s.cluster
        .claims()
        .patch(
            "source",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {
                "finalizers": [protection::FINALIZER, "example.com/keep-me"],
                "annotations": {protection::ANN_CLONES: "0b6c2a52-0000-4000-8000-00000000dead"},
                "labels": {protection::LABEL: "true"},
            }})),
        )
        .await
        .unwrap();
    // A new term (a restart) sweeps.
    s.provisioner.take().unwrap().stop();
    s.provisioner = Some(RunningProvisioner::start(
        &s.cluster.provisioner_options(s.root.path()),
        s.cluster.provisioner_config(),
    ));
    wait_unprotected(&s.cluster, "source").await;
    let source = s.cluster.claims().get("source").await.unwrap();
    assert!(
        source
            .finalizers()
            .iter()
            .any(|f| f == "example.com/keep-me"),
        "{:?}",
        source.finalizers()
    );
    s.cluster
        .claims()
        .patch(
            "source",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    s.finish().await;
}
