//! A stalled NFS root: operations hit their deadline, other volumes proceed, stuck worker
//! threads are bounded and return their permits once the server "recovers".
//!
//! The stall is a blocking test double behind the real interface: a fault hook that runs on
//! the worker thread (where the system calls run) and blocks, like a call hung in the
//! kernel, for paths matching a prefix until the test opens the gate. No timing is asserted
//! beyond the kind of error returned.

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Gate, World, wait_until_no_stuck};
use nfs_provisioner::parameters::DirectoryPermissions;
use nfs_provisioner::planning::VolumeDirectory;
use nfs_provisioner::storage::{
    CancellationToken, CreateOutcome, NfsRoot, RemoveOutcome, StorageError, StorageOptions,
};

async fn stalling_root(
    world: &World,
    opts: StorageOptions,
    gate: &Gate,
    matches: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
) -> NfsRoot {
    let gate = gate.clone();
    NfsRoot::open_with_fault_hook(
        &world.root,
        opts,
        Arc::new(move |op: &str, path: &str| {
            if matches(op, path) {
                gate.wait();
            }
        }),
    )
    .await
    .unwrap()
}

fn opts(max_stuck_ops: usize) -> StorageOptions {
    StorageOptions {
        op_timeout: Duration::from_millis(300),
        max_stuck_ops,
    }
}

fn dir(s: &str) -> VolumeDirectory {
    VolumeDirectory::parse(s).unwrap()
}

fn perms() -> DirectoryPermissions {
    DirectoryPermissions::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_fires_and_other_volumes_proceed() {
    let world = World::new();
    let gate = Gate::new();
    let root = stalling_root(&world, opts(4), &gate, |_, path| {
        path.starts_with("stalled")
    })
    .await;
    let never = CancellationToken::new();

    let (stalled_dir, p) = (dir("stalled/vol"), perms());
    let stalled = root.create_volume_dir(&stalled_dir, &p, &p, &never);
    let others = async {
        let mut outcomes = Vec::new();
        for i in 0..5 {
            let d = dir(&format!("healthy/vol-{i}"));
            outcomes.push(root.create_volume_dir(&d, &perms(), &perms(), &never).await);
        }
        outcomes
    };
    let (stalled, others) = tokio::join!(stalled, others);

    let err = stalled.unwrap_err();
    assert!(
        matches!(err, StorageError::NotResponding { op: "create", .. }),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("NFS root not responding"),
        "{err}"
    );
    for outcome in others {
        assert_eq!(outcome.unwrap(), CreateOutcome::Created);
    }
    assert_eq!(root.stuck_operations(), 1);
    assert_eq!(fs::read_dir(world.root.join("healthy")).unwrap().count(), 5);

    gate.open();
    wait_until_no_stuck(&root).await;
    // The abandoned operation stopped at its next syscall boundary: nothing was created.
    assert!(!world.root.join("stalled").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_threads_are_bounded_then_permits_return() {
    let world = World::new();
    let gate = Gate::new();
    let root = stalling_root(&world, opts(3), &gate, |_, path| {
        path.starts_with("stalled")
    })
    .await;
    let never = CancellationToken::new();

    let stalled: Vec<_> = (0..3)
        .map(|i| {
            let root = root.clone();
            let never = never.clone();
            tokio::spawn(async move {
                root.create_volume_dir(&dir(&format!("stalled-{i}")), &perms(), &perms(), &never)
                    .await
            })
        })
        .collect();
    for handle in stalled {
        let err = handle.await.unwrap().unwrap_err();
        assert_eq!(err.label(), "not_responding", "{err}");
    }
    assert_eq!(root.stuck_operations(), 3);

    // Now even a healthy volume fails fast: no more threads may pile up.
    let err = root
        .create_volume_dir(&dir("healthy"), &perms(), &perms(), &never)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::Overloaded { stuck: 3 }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("NFS root not responding (3 operations stuck)"),
        "{err}"
    );
    assert_eq!(root.probe().await.unwrap_err().label(), "overloaded");
    assert!(!world.root.join("healthy").exists());

    gate.open();
    wait_until_no_stuck(&root).await;
    assert_eq!(
        root.create_volume_dir(&dir("healthy"), &perms(), &perms(), &never)
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    root.probe().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_returns_promptly_while_stalled() {
    let world = World::new();
    let gate = Gate::new();
    let mut o = opts(2);
    o.op_timeout = Duration::from_secs(3600);
    let root = stalling_root(&world, o, &gate, |_, path| path.starts_with("stalled")).await;
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        })
    };
    let err = root
        .delete_volume_dir(&dir("stalled"), Vec::new(), &cancel)
        .await
        .unwrap_err();
    assert_eq!(err.label(), "cancelled", "{err}");
    canceller.await.unwrap();
    assert_eq!(root.stuck_operations(), 1);
    gate.open();
    wait_until_no_stuck(&root).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_a_stalled_root() {
    let world = World::new();
    let gate = Gate::new();
    let root = stalling_root(&world, opts(2), &gate, |op, _| op == "probe").await;
    let err = root.probe().await.unwrap_err();
    assert!(
        matches!(err, StorageError::NotResponding { op: "probe", .. }),
        "{err}"
    );
    gate.open();
    wait_until_no_stuck(&root).await;
    // Only the probe was stalled: the marker was never created, nothing is left behind.
    assert_eq!(fs::read_dir(&world.root).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_delete_past_the_deadline_resumes() {
    let world = World::new();
    let vol = world.root.join("ns/big");
    for i in 0..50 {
        fs::create_dir_all(vol.join(format!("d{i}"))).unwrap();
        fs::write(vol.join(format!("d{i}/f")), b"x").unwrap();
    }
    let gate = Gate::new();
    // The server hangs once the walk reaches entry d25 (entries hold the directory path).
    let root = stalling_root(&world, opts(2), &gate, |op, path| {
        op == "delete_entry" && Path::new(path).ends_with("d25")
    })
    .await;
    let never = CancellationToken::new();
    let err = root
        .delete_volume_dir(&dir("ns/big"), Vec::new(), &never)
        .await
        .unwrap_err();
    assert_eq!(err.label(), "not_responding", "{err}");
    assert!(vol.exists());
    gate.open();
    wait_until_no_stuck(&root).await;
    assert_eq!(
        root.delete_volume_dir(&dir("ns/big"), Vec::new(), &never)
            .await
            .unwrap(),
        RemoveOutcome::Removed
    );
    assert!(!world.root.join("ns").exists());
}
