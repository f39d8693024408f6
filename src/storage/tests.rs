//! Unit tests of the confined operations on real temporary directories.

use std::fs;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::planning::VolumeDirectory;

/// Refuses to touch the file system outside the sandboxed test runner.
pub(crate) fn require_sandbox() {
    assert_eq!(
        std::env::var("NFS_PROVISIONER_SANDBOXED").as_deref(),
        Ok("1"),
        "file-system tests must run under scripts/sandbox-run (cargo test does this)"
    );
}

/// A temporary directory standing in for the NFS root (in the sandbox only).
pub(crate) fn temp_root() -> tempfile::TempDir {
    require_sandbox();
    tempfile::Builder::new()
        .prefix("storage-unit")
        .tempdir_in(std::env::temp_dir())
        .unwrap()
}

fn dir(s: &str) -> VolumeDirectory {
    VolumeDirectory::parse(s).unwrap()
}

fn open_root(path: &Path) -> (OwnedFd, u64) {
    let fd = open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    let dev = fstat(&fd).unwrap().st_dev;
    (fd, dev)
}

/// One unsliced delete (a detached context has no slice end, so it always finishes).
fn delete(
    root: BorrowedFd<'_>,
    dev: u64,
    d: &VolumeDirectory,
    ctx: &OpContext,
) -> Result<RemoveOutcome, StorageError> {
    match confined::delete(root, dev, d, &[], ctx)? {
        confined::DeleteStep::Finished(outcome) => Ok(outcome),
        step => panic!("an unsliced delete stopped midway: {step:?}"),
    }
}

fn perms(mode: u32) -> DirectoryPermissions {
    DirectoryPermissions {
        mode,
        uid: None,
        gid: None,
    }
}

#[test]
fn create_applies_mode_to_created_dirs_only() {
    let tmp = temp_root();
    let (root, _) = open_root(tmp.path());
    fs::create_dir(tmp.path().join("ns")).unwrap();
    fs::set_permissions(tmp.path().join("ns"), fs::Permissions::from_mode(0o711)).unwrap();
    let ctx = OpContext::detached();
    let out = confined::create(
        root.as_fd(),
        &dir("ns/a/b"),
        &perms(0o1770),
        &perms(0o1770),
        &ctx,
    )
    .unwrap();
    assert_eq!(out, CreateOutcome::Created);
    let mode = |p: &str| fs::metadata(tmp.path().join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("ns"), 0o711, "existing parent untouched");
    assert_eq!(mode("ns/a"), 0o1770);
    assert_eq!(mode("ns/a/b"), 0o1770);
    // Second call: already there, mode not reapplied.
    fs::set_permissions(tmp.path().join("ns/a/b"), fs::Permissions::from_mode(0o700)).unwrap();
    let out = confined::create(
        root.as_fd(),
        &dir("ns/a/b"),
        &perms(0o777),
        &perms(0o777),
        &ctx,
    )
    .unwrap();
    assert_eq!(out, CreateOutcome::AlreadyExisted);
    assert_eq!(mode("ns/a/b"), 0o700);
}

#[test]
fn create_applies_owner_when_root() {
    let tmp = temp_root();
    if !nix::unistd::geteuid().is_root() {
        return; // chown to another uid needs privilege
    }
    let (root, _) = open_root(tmp.path());
    let p = DirectoryPermissions {
        mode: 0o750,
        uid: Some(1234),
        gid: Some(5678),
    };
    confined::create(root.as_fd(), &dir("x/y"), &p, &p, &OpContext::detached()).unwrap();
    for d in ["x", "x/y"] {
        let md = fs::metadata(tmp.path().join(d)).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (1234, 5678, 0o750)
        );
    }
}

/// Runs `work` on a thread whose credentials are those of an unprivileged user (uid and gid
/// 65532, no supplementary groups, no capabilities), as in the PodSecurity `restricted` mode.
/// Raw syscalls change only the calling thread (glibc's setuid would change every thread of
/// the test process). `None` when this process cannot switch (not real root).
fn as_unprivileged_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    std::thread::spawn(move || {
        const ID: libc::c_long = 65532;
        // SAFETY: plain credential syscalls on the current thread; no memory is passed but
        // a null group list of length 0.
        let dropped = unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, ID, ID, ID) == 0
                && libc::syscall(libc::SYS_setresuid, ID, ID, ID) == 0
        };
        dropped.then(work)
    })
    .join()
    .expect("unprivileged thread")
}

#[test]
fn create_without_chown_privilege_fails_clearly_and_leaves_no_half_configured_directory() {
    let tmp = temp_root();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs real root to switch a thread to uid 65532");
        return;
    }
    // The export's root is writable by the unprivileged uid, as a restricted install needs.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let (root, _) = open_root(tmp.path());
    let owned = |uid, gid| DirectoryPermissions {
        mode: 0o750,
        uid,
        gid,
    };
    let outcome = as_unprivileged_thread(move || {
        let ctx = OpContext::detached();
        let create = |d: &str, perms: &DirectoryPermissions, parents: &DirectoryPermissions| {
            confined::create(root.as_fd(), &dir(d), perms, parents, &ctx)
        };
        (
            // Another owner for the volume's directory; parents keep the process's owner.
            create("ns/vol", &owned(Some(1000), None), &perms(0o755)),
            // Another group for a created parent: fails at the parent already.
            create("team/vol", &perms(0o755), &owned(None, Some(1000))),
            // Its own uid and gid: chown to oneself is allowed without privilege.
            create("own/vol", &owned(Some(65532), Some(65532)), &perms(0o755)),
            // Nothing configured: created as the process's uid, as without chown.
            create("plain", &perms(0o770), &perms(0o770)),
        )
    });
    let Some((other_owner, other_group, own, plain)) = outcome else {
        eprintln!("SKIPPED: cannot switch a thread to uid 65532 here");
        return;
    };
    for (result, path, owner) in [
        (other_owner, "ns/vol", "owner 1000 group unchanged"),
        (other_group, "team", "owner unchanged group 1000"),
    ] {
        let err = result.expect_err("chown to another id must fail without privilege");
        assert!(
            matches!(&err, StorageError::OwnerNotPermitted { path: p, process_uid: 65532, .. } if p == path),
            "{err:?}"
        );
        let message = err.to_string();
        for needed in [
            owner,
            "uid 65532",
            "directoryUid",
            "NFS_DEFAULT_UID",
            "removed again",
        ] {
            assert!(
                message.contains(needed),
                "{needed:?} missing from: {message}"
            );
        }
        assert_eq!(err.label(), "owner_not_permitted");
        assert!(
            !tmp.path().join(path).exists(),
            "{path} was left behind half-configured"
        );
    }
    // The parent created before the failing directory is a complete directory of its own.
    let md = fs::metadata(tmp.path().join("ns")).unwrap();
    assert_eq!((md.uid(), md.mode() & 0o7777), (65532, 0o755));
    assert_eq!(own.unwrap(), CreateOutcome::Created);
    let md = fs::metadata(tmp.path().join("own/vol")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (65532, 65532, 0o750)
    );
    assert_eq!(plain.unwrap(), CreateOutcome::Created);
    let md = fs::metadata(tmp.path().join("plain")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (65532, 65532, 0o770)
    );
}

#[test]
fn delete_removes_tree_without_following_symlinks() {
    let tmp = temp_root();
    let outside = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    fs::write(outside.path().join("canary"), b"keep").unwrap();
    let (root, dev) = open_root(tmp.path());
    let vol = tmp.path().join("ns/vol");
    fs::create_dir_all(vol.join("sub/deeper")).unwrap();
    fs::write(vol.join("sub/deeper/f"), b"x").unwrap();
    symlink(outside.path(), vol.join("sub/link-dir")).unwrap();
    symlink(outside.path().join("canary"), vol.join("link-file")).unwrap();
    let out = delete(root.as_fd(), dev, &dir("ns/vol"), &OpContext::detached()).unwrap();
    assert_eq!(out, RemoveOutcome::Removed);
    assert!(!tmp.path().join("ns").exists(), "empty parent removed");
    assert_eq!(fs::read(outside.path().join("canary")).unwrap(), b"keep");
    assert!(tmp.path().exists());
    let again = delete(root.as_fd(), dev, &dir("ns/vol"), &OpContext::detached());
    assert_eq!(again.unwrap(), RemoveOutcome::AlreadyGone);
}

#[test]
fn delete_handles_trees_deeper_than_the_fd_budget() {
    let tmp = temp_root();
    let (root, dev) = open_root(tmp.path());
    let mut p = tmp.path().join("vol");
    for i in 0..150 {
        p.push(format!("d{i}"));
    }
    fs::create_dir_all(&p).unwrap();
    fs::write(p.join("leaf"), b"x").unwrap();
    let out = delete(root.as_fd(), dev, &dir("vol"), &OpContext::detached()).unwrap();
    assert_eq!(out, RemoveOutcome::Removed);
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn interrupted_delete_resumes() {
    let tmp = temp_root();
    let (root, dev) = open_root(tmp.path());
    let vol = tmp.path().join("vol");
    for i in 0..20 {
        fs::create_dir_all(vol.join(format!("d{i}"))).unwrap();
        fs::write(vol.join(format!("d{i}/f")), b"x").unwrap();
    }
    // Abandon the operation after a few entries, as a deadline would.
    let state = Arc::new(AtomicU8::new(RUNNING));
    let seen = Arc::new(AtomicUsize::new(0));
    let (state2, seen2) = (state.clone(), seen.clone());
    let ctx = OpContext {
        state: state.clone(),
        hook: Some(Arc::new(move |_op: &str, _path: &str| {
            if seen2.fetch_add(1, Ordering::SeqCst) == 10 {
                state2.store(ABANDONED, Ordering::SeqCst);
            }
        })),
        slice_end: None,
    };
    let err = delete(root.as_fd(), dev, &dir("vol"), &ctx).unwrap_err();
    assert!(matches!(err, StorageError::Cancelled), "{err}");
    assert!(vol.exists(), "stopped midway");
    let out = delete(root.as_fd(), dev, &dir("vol"), &OpContext::detached()).unwrap();
    assert_eq!(out, RemoveOutcome::Removed);
    assert!(!vol.exists());
}

#[test]
fn componentwise_fallback_refuses_symlinks() {
    let tmp = temp_root();
    let outside = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let (root, _) = open_root(tmp.path());
    fs::create_dir_all(tmp.path().join("a/b")).unwrap();
    symlink(outside.path(), tmp.path().join("a/link")).unwrap();
    assert!(confined::open_componentwise(root.as_fd(), "a/b", OFlag::O_PATH).is_ok());
    assert!(confined::open_componentwise(root.as_fd(), ".", OFlag::O_PATH).is_ok());
    assert!(
        confined::open_componentwise(
            root.as_fd(),
            "a/link",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW
        )
        .is_err()
    );
    assert!(confined::open_componentwise(root.as_fd(), "a/link/x", OFlag::O_PATH).is_err());
    assert!(confined::open_componentwise(root.as_fd(), "a/../..", OFlag::O_PATH).is_err());
    // And the openat2 path.
    // A final symlink is opened as the link itself by O_PATH|O_NOFOLLOW, which O_DIRECTORY
    // then rejects; an intermediate one fails resolution.
    let final_link = confined::open_dir(root.as_fd(), "a/link", OFlag::O_PATH).unwrap_err();
    assert!(matches!(
        final_link,
        nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP
    ));
    assert_eq!(
        confined::open_dir(root.as_fd(), "a/link/x", OFlag::O_PATH).unwrap_err(),
        nix::errno::Errno::ELOOP
    );
}

#[test]
fn reserve_and_rename_never_replaces() {
    let tmp = temp_root();
    let (root, _) = open_root(tmp.path());
    fs::create_dir(tmp.path().join("src")).unwrap();
    fs::write(tmp.path().join("src/f"), b"data").unwrap();
    fs::create_dir(tmp.path().join("taken")).unwrap();
    fs::write(tmp.path().join("file"), b"other").unwrap();
    let r = root.as_fd();
    assert_eq!(
        confined::reserve_and_rename(r, "src", r, "taken").unwrap_err(),
        nix::errno::Errno::EEXIST
    );
    assert_eq!(
        confined::reserve_and_rename(r, "src", r, "file").unwrap_err(),
        nix::errno::Errno::EEXIST
    );
    confined::reserve_and_rename(r, "src", r, "fresh").unwrap();
    assert_eq!(fs::read(tmp.path().join("fresh/f")).unwrap(), b"data");
    assert_eq!(fs::read(tmp.path().join("file")).unwrap(), b"other");
    assert!(tmp.path().join("taken").is_dir());
}

#[tokio::test]
async fn probe_and_exists_work() {
    let tmp = temp_root();
    let root = NfsRoot::open(tmp.path(), StorageOptions::default())
        .await
        .unwrap();
    root.probe().await.unwrap();
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "marker removed"
    );
    let never = CancellationToken::new();
    assert!(!root.volume_dir_exists(&dir("a/b"), &never).await.unwrap());
    root.create_volume_dir(&dir("a/b"), &perms(0o777), &perms(0o777), &never)
        .await
        .unwrap();
    assert!(root.volume_dir_exists(&dir("a/b"), &never).await.unwrap());
    assert_eq!(root.stuck_operations(), 0);
}

#[tokio::test]
async fn cancelled_token_returns_cancelled() {
    let tmp = temp_root();
    let root = NfsRoot::open(tmp.path(), StorageOptions::default())
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = root
        .create_volume_dir(&dir("x"), &perms(0o777), &perms(0o777), &cancel)
        .await
        .unwrap_err();
    assert_eq!(err.label(), "cancelled");
    assert!(!tmp.path().join("x").exists());
}

#[tokio::test]
async fn open_rejects_missing_or_file_root() {
    let tmp = temp_root();
    let err = NfsRoot::open(&tmp.path().join("missing"), StorageOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "io");
    fs::write(tmp.path().join("file"), b"").unwrap();
    assert!(
        NfsRoot::open(&tmp.path().join("file"), StorageOptions::default())
            .await
            .is_err()
    );
}

#[test]
fn error_labels_and_messages() {
    let e = StorageError::NotResponding {
        op: "create",
        timeout: Duration::from_secs(30),
    };
    assert_eq!(e.label(), "not_responding");
    assert!(e.to_string().starts_with("NFS root not responding"));
    let e = StorageError::Overloaded { stuck: 16 };
    assert_eq!(e.label(), "overloaded");
    assert!(
        e.to_string()
            .contains("NFS root not responding (16 operations stuck)")
    );
    let e = confined::fs_error("open", "a/b", nix::errno::Errno::ELOOP);
    assert_eq!(e.label(), "unsafe_path");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    let e = confined::fs_error("mkdir", "a", nix::errno::Errno::EACCES);
    assert_eq!(e.label(), "io");
}

#[test]
fn sliced_delete_progresses_every_slice_and_finishes() {
    let tmp = temp_root();
    let outside = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    fs::write(outside.path().join("canary"), b"keep").unwrap();
    let (root, dev) = open_root(tmp.path());
    let vol = tmp.path().join("ns/vol");
    for i in 0..10 {
        fs::create_dir_all(vol.join(format!("d{i}/e"))).unwrap();
        fs::write(vol.join(format!("d{i}/e/f")), b"x").unwrap();
        fs::write(vol.join(format!("f{i}")), b"x").unwrap();
    }
    let mut deep = vol.join("deep");
    for i in 0..40 {
        deep.push(format!("l{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    symlink(outside.path(), vol.join("link")).unwrap();
    fs::write(tmp.path().join("ns-sibling"), b"keep").unwrap();
    // Every slice is already over when it starts: each removes the least it may, one entry
    // (plus the directories that entry emptied, at most one per open level, which it meets
    // on the way back up).
    let mut slices = 0;
    let outcome = loop {
        slices += 1;
        assert!(slices < 10_000, "no end in sight");
        let ctx = OpContext::with_slice_end(std::time::Instant::now());
        match confined::delete(root.as_fd(), dev, &dir("ns/vol"), &[], &ctx).unwrap() {
            confined::DeleteStep::Finished(outcome) => break outcome,
            confined::DeleteStep::InProgress { removed } => {
                assert!((1..=33).contains(&removed), "{removed}")
            }
        }
    };
    assert_eq!(outcome, RemoveOutcome::Removed);
    // At least one slice per entry of the volume directory (10 files, 10 chains, deep, link).
    assert!(
        slices >= 22,
        "only {slices} slices: the delete did not stop at its slice end"
    );
    assert!(!tmp.path().join("ns").exists());
    assert_eq!(fs::read(tmp.path().join("ns-sibling")).unwrap(), b"keep");
    assert_eq!(fs::read(outside.path().join("canary")).unwrap(), b"keep");
}

#[test]
fn parent_cleanup_stops_at_kept_directories() {
    let tmp = temp_root();
    let (root, dev) = open_root(tmp.path());
    let ctx = OpContext::detached();
    // "ns" is another volume's (empty) directory; "ns/a" is a plain template parent.
    fs::create_dir_all(tmp.path().join("ns/a/vol")).unwrap();
    let step = confined::delete(root.as_fd(), dev, &dir("ns/a/vol"), &[dir("ns")], &ctx).unwrap();
    assert_eq!(step, confined::DeleteStep::Finished(RemoveOutcome::Removed));
    assert!(
        !tmp.path().join("ns/a").exists(),
        "plain empty parent removed"
    );
    assert!(tmp.path().join("ns").is_dir(), "kept directory survives");

    fs::create_dir_all(tmp.path().join("ns/a/vol")).unwrap();
    let out = confined::archive(
        root.as_fd(),
        dev,
        &dir("ns/a/vol"),
        &dir("archived-vol"),
        &[dir("ns/a")],
        &ctx,
    )
    .unwrap();
    assert!(matches!(out, ArchiveOutcome::Archived { .. }), "{out:?}");
    assert!(tmp.path().join("ns/a").is_dir(), "kept directory survives");

    // Without the keep list the same empty parents go.
    fs::create_dir_all(tmp.path().join("ns/a/vol")).unwrap();
    let out = delete(root.as_fd(), dev, &dir("ns/a/vol"), &ctx).unwrap();
    assert_eq!(out, RemoveOutcome::Removed);
    assert!(!tmp.path().join("ns").exists());
}

#[test]
fn create_gives_parents_and_volume_their_own_permissions() {
    let tmp = temp_root();
    let (root, _) = open_root(tmp.path());
    let ctx = OpContext::detached();
    let (volume, parents) = if nix::unistd::geteuid().is_root() {
        (
            DirectoryPermissions {
                mode: 0o700,
                uid: Some(4000),
                gid: Some(4001),
            },
            DirectoryPermissions {
                mode: 0o755,
                uid: Some(3000),
                gid: Some(3001),
            },
        )
    } else {
        (perms(0o700), perms(0o755))
    };
    let out =
        confined::create(root.as_fd(), &dir("tier/sub/vol"), &volume, &parents, &ctx).unwrap();
    assert_eq!(out, CreateOutcome::Created);
    let md = |p: &str| fs::metadata(tmp.path().join(p)).unwrap();
    for parent in ["tier", "tier/sub"] {
        assert_eq!(md(parent).mode() & 0o7777, 0o755, "{parent}");
        if let Some(uid) = parents.uid {
            assert_eq!(
                (md(parent).uid(), md(parent).gid()),
                (uid, 3001),
                "{parent}"
            );
        }
    }
    assert_eq!(md("tier/sub/vol").mode() & 0o7777, 0o700);
    if let Some(uid) = volume.uid {
        assert_eq!(
            (md("tier/sub/vol").uid(), md("tier/sub/vol").gid()),
            (uid, 4001)
        );
    }
    // A second volume under the existing parent leaves the parent alone.
    confined::create(
        root.as_fd(),
        &dir("tier/sub/other"),
        &perms(0o711),
        &perms(0o777),
        &ctx,
    )
    .unwrap();
    assert_eq!(md("tier/sub").mode() & 0o7777, 0o755);
    assert_eq!(md("tier/sub/other").mode() & 0o7777, 0o711);
}
