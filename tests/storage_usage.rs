//! Measuring a volume's usage (bytes, inodes) in slices, on a tree of a million entries.
//!
//! * The budget holds: no slice processes more entries than asked (counted through the fault
//!   hook, which sees every entry), and every entry is processed exactly once over the scan.
//! * The numbers are right: they match an independent walk with `std::fs` (bytes on disk as
//!   `st_blocks * 512`, apparent bytes, distinct inodes), with hard links, a sparse file, a
//!   subtree deeper than the scanner keeps open, and symlinks pointing out of the volume
//!   (counted as links, never followed).
//! * A hung server does not stall it or anything else: the slice fails as not responding,
//!   further slices fail fast, other operations (and a scan of another volume) go on, and once
//!   the server answers the scan resumes and finishes with the right numbers.
//!
//! `NFS_PROVISIONER_USAGE_ENTRIES` (default 1 000 000) sets the size for a quicker local run.
//! Figures are printed; BENCHMARKS.md records them.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::{World, count_from_env, create_files, status_kib};
use nfs_provisioner::parameters::DirectoryPermissions;
use nfs_provisioner::planning::VolumeDirectory;
use nfs_provisioner::storage::{
    CancellationToken, NfsRoot, StorageError, StorageOptions, UsageScan, UsageStep, VolumeUsage,
};

const DEFAULT_ENTRIES: u64 = 1_000_000;
/// Entries per slice.
const BUDGET: u64 = 10_000;
/// Peak memory growth allowed during the scan: a few directory buffers, the path held open,
/// and the set of hard-linked inodes, whatever the number of entries.
const MAX_PEAK_GROWTH_KIB: u64 = 16 * 1024;

/// A volume with every kind of entry the scanner must count right; about `wanted` entries.
/// Returns the number of names created beneath `vol`.
fn build_volume(vol: &Path, outside: &Path, wanted: u64) -> u64 {
    let mut names = 0u64;
    // Files with data, of many sizes.
    fs::create_dir_all(vol.join("data")).unwrap();
    names += 1;
    for n in 0..200u64 {
        fs::write(
            vol.join(format!("data/d{n}")),
            vec![7u8; (n * 331) as usize],
        )
        .unwrap();
    }
    names += 200;
    // A sparse file: 1 GiB long, almost nothing allocated.
    let sparse = fs::File::create(vol.join("sparse")).unwrap();
    sparse.set_len(1 << 30).unwrap();
    names += 1;
    // Hard links: 1000 inodes with three names each, in two directories.
    fs::create_dir_all(vol.join("links")).unwrap();
    fs::create_dir_all(vol.join("other")).unwrap();
    names += 2;
    for n in 0..1000 {
        let a = vol.join(format!("links/a{n}"));
        fs::write(&a, vec![1u8; 5000]).unwrap();
        fs::hard_link(&a, vol.join(format!("links/b{n}"))).unwrap();
        fs::hard_link(&a, vol.join(format!("other/c{n}"))).unwrap();
    }
    names += 3000;
    // Deeper than the scanner keeps open (32 levels), with a file at every level.
    let mut deep = vol.join("deep");
    for level in 0..45 {
        fs::create_dir(&deep).unwrap();
        fs::write(deep.join("x"), vec![2u8; 100 + level]).unwrap();
        names += 2;
        deep = deep.join("d");
    }
    // Links out of the volume: counted as links, never followed.
    symlink(outside, vol.join("out")).unwrap();
    symlink(outside.join("canary.txt"), vol.join("canary-link")).unwrap();
    names += 2;
    // Many directories of files, then the rest flat at the top.
    let subdirs = (wanted / 10_000).min(100);
    for s in 0..subdirs {
        create_files(&vol.join(format!("many/s{s}")), "g", 1000);
        names += 1001;
    }
    if subdirs > 0 {
        names += 1;
    }
    let rest = wanted.saturating_sub(names + 1);
    create_files(vol, "f", rest);
    names + rest
}

/// What `du` would say, walking with `std::fs` only: (usage, names).
fn independent_walk(vol: &Path) -> (VolumeUsage, u64) {
    fn walk(dir: &Path, seen: &mut HashSet<(u64, u64)>, usage: &mut VolumeUsage, names: &mut u64) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            *names += 1;
            if seen.insert((md.dev(), md.ino())) {
                usage.bytes += md.blocks() * 512;
                usage.apparent_bytes += md.size();
                usage.inodes += 1;
            }
            if md.file_type().is_dir() {
                walk(&path, seen, usage, names);
            }
        }
    }
    let md = fs::symlink_metadata(vol).unwrap();
    let mut usage = VolumeUsage {
        bytes: md.blocks() * 512,
        apparent_bytes: md.size(),
        inodes: 1,
        ..Default::default()
    };
    let mut seen = HashSet::new();
    let mut names = 0;
    walk(vol, &mut seen, &mut usage, &mut names);
    (usage, names)
}

/// User + system CPU time of the process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Entries the hook saw, per slice of the scan of one volume.
#[derive(Default)]
struct SliceCounts {
    slices: Mutex<Vec<u64>>,
}

impl SliceCounts {
    fn hook(self: &Arc<Self>, volume: &'static str) -> impl Fn(&str, &str) + Send + Sync + 'static {
        let counts = self.clone();
        move |op: &str, path: &str| {
            if path != volume {
                return;
            }
            let mut slices = counts.slices.lock().unwrap();
            match op {
                "usage" => slices.push(0),
                "usage_entry" => *slices.last_mut().expect("an entry within a slice") += 1,
                _ => {}
            }
        }
    }
}

/// Runs slices until the scan finishes; a slice the server took too long for is tried again.
async fn measure(root: &NfsRoot, scan: &UsageScan, budget: u64) -> (VolumeUsage, u32) {
    let mut calls = 0;
    let mut stalls = 0;
    loop {
        calls += 1;
        match root
            .measure_volume_dir(scan, budget, &CancellationToken::new())
            .await
        {
            Ok(UsageStep::Finished { usage, .. }) => return (usage, calls),
            Ok(UsageStep::InProgress { .. }) => {}
            Ok(UsageStep::Gone) => panic!("the volume directory is there"),
            Err(e) if e.is_not_responding() && stalls < 20 => {
                stalls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the scan failed after {calls} calls: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_entries_are_measured_in_bounded_slices_and_match_an_independent_walk() {
    let world = World::new_on_tmpfs();
    let wanted = count_from_env("NFS_PROVISIONER_USAGE_ENTRIES", DEFAULT_ENTRIES);
    fs::create_dir_all(world.in_root("ns/neighbour")).unwrap();
    fs::write(world.in_root("ns/neighbour/data"), vec![9u8; 100_000]).unwrap();
    let vol = world.in_root("ns/big");
    let created = Instant::now();
    let names = build_volume(&vol, &world.outside, wanted);
    let create_time = created.elapsed();
    let before = world.snapshot();

    let counts = Arc::new(SliceCounts::default());
    let root = NfsRoot::open_with_fault_hook(
        &world.root,
        StorageOptions {
            op_timeout: Duration::from_secs(2),
            max_stuck_ops: 2,
        },
        Arc::new(counts.hook("ns/big")),
    )
    .await
    .unwrap();
    let reset = fs::write("/proc/self/clear_refs", "5").is_ok();
    let hwm_before = status_kib(if reset { "VmRSS:" } else { "VmHWM:" });
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let scan = UsageScan::new(VolumeDirectory::parse("ns/big").unwrap());
    let (usage, calls) = measure(&root, &scan, BUDGET).await;
    let scan_time = started.elapsed();
    let growth = status_kib("VmHWM:").saturating_sub(hwm_before);
    let cpu = cpu_seconds() - cpu_before;

    let (expected, walked_names) = independent_walk(&vol);
    assert_eq!(walked_names, names, "the tree holds what was built");
    assert_eq!(
        usage,
        VolumeUsage {
            skipped: 0,
            unchecked_hard_links: 0,
            ..expected
        },
        "the scan measured what an independent walk measures"
    );
    assert!(usage.is_exact());
    // Hard links once, the sparse file by its allocation, links never followed.
    assert_eq!(usage.inodes, names + 1 - 2000);
    assert!(usage.apparent_bytes >= 1 << 30);
    assert!(usage.bytes < usage.apparent_bytes);

    let slices = counts.slices.lock().unwrap().clone();
    let largest = slices.iter().copied().max().unwrap_or(0);
    let processed: u64 = slices.iter().sum();
    assert!(largest <= BUDGET, "a slice processed {largest} entries");
    assert_eq!(processed, names, "every entry processed exactly once");
    assert!(slices.len() as u64 >= names / BUDGET);
    // Read only: nothing anywhere changed.
    before.assert_unchanged(&world.snapshot());
    println!(
        "usage scan: {names} entries (created in {create_time:?}); {usage:?}; scanned in {scan_time:?} with {} slices ({calls} calls), at most {largest} entries a slice; CPU {cpu:.2} s (process, user + system); peak RSS growth {growth} KiB (high-water mark reset: {reset}; tmpfs: {})",
        slices.len(),
        world.on_tmpfs
    );
    assert!(
        growth <= MAX_PEAK_GROWTH_KIB,
        "peak memory grew by {growth} KiB measuring {names} entries"
    );
}

/// Blocks `usage_entry` of one volume while `hung` is set, like a server that stops answering.
struct Hang {
    hung: Mutex<bool>,
    released: Condvar,
    entered: AtomicBool,
}

impl Hang {
    fn hold(&self) {
        let mut hung = self.hung.lock().unwrap();
        while *hung {
            self.entered.store(true, Ordering::SeqCst);
            hung = self.released.wait(hung).unwrap();
        }
    }
    fn set(&self, on: bool) {
        *self.hung.lock().unwrap() = on;
        self.released.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_neither_stalls_the_scan_nor_anything_else_and_the_scan_resumes() {
    let world = World::new_on_tmpfs();
    let vol = world.in_root("ns/a");
    build_volume(&vol, &world.outside, 30_000);
    create_files(&world.in_root("ns/b"), "h", 5000);
    let hang = Arc::new(Hang {
        hung: Mutex::new(false),
        released: Condvar::new(),
        entered: AtomicBool::new(false),
    });
    let hook_hang = hang.clone();
    let deadline = Duration::from_millis(300);
    let root = NfsRoot::open_with_fault_hook(
        &world.root,
        StorageOptions {
            op_timeout: deadline,
            max_stuck_ops: 4,
        },
        Arc::new(move |op: &str, path: &str| {
            if op == "usage_entry" && path == "ns/a" {
                hook_hang.hold();
            }
        }),
    )
    .await
    .unwrap();
    let never = CancellationToken::new();
    let scan = UsageScan::new(VolumeDirectory::parse("ns/a").unwrap());
    for _ in 0..3 {
        let step = root.measure_volume_dir(&scan, 1000, &never).await.unwrap();
        assert!(matches!(step, UsageStep::InProgress { .. }), "{step:?}");
    }

    hang.set(true);
    let guard = Duration::from_secs(20);
    let hung = tokio::time::timeout(guard, root.measure_volume_dir(&scan, 1000, &never))
        .await
        .expect("the slice gives up at its deadline");
    assert!(
        matches!(hung, Err(StorageError::NotResponding { .. })),
        "{hung:?}"
    );
    assert!(hang.entered.load(Ordering::SeqCst));
    assert_eq!(root.stuck_operations(), 1);
    // Further slices of the stuck scan fail at once instead of piling up threads.
    let again = tokio::time::timeout(guard, root.measure_volume_dir(&scan, 1000, &never))
        .await
        .expect("does not wait for the stuck slice");
    let again = again.unwrap_err();
    assert!(again.is_not_responding(), "{again}");
    assert!(again.to_string().contains("earlier slice"), "{again}");
    assert_eq!(root.stuck_operations(), 1, "no second thread stuck");

    // Everything else goes on: other volumes, the probe, a scan of another volume.
    let other = VolumeDirectory::parse("ns/c").unwrap();
    let perms = DirectoryPermissions {
        mode: 0o755,
        uid: None,
        gid: None,
    };
    root.create_volume_dir(&other, &perms, &perms, &never)
        .await
        .expect("provisioning still works");
    assert!(root.volume_dir_exists(&other, &never).await.unwrap());
    root.probe().await.expect("the probe still answers");
    let b = UsageScan::new(VolumeDirectory::parse("ns/b").unwrap());
    let (b_usage, _) = measure(&root, &b, 1000).await;
    assert_eq!(b_usage.inodes, 5001);

    // The server answers again: the stuck slice returns, and the scan continues from there.
    hang.set(false);
    let back = Instant::now();
    while scan.is_busy() || root.stuck_operations() > 0 {
        assert!(back.elapsed() < guard, "the released slice returned");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (usage, _) = measure(&root, &scan, 1000).await;
    let (expected, _) = independent_walk(&vol);
    assert_eq!(
        usage, expected,
        "resumed without losing or repeating entries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_renamed_out_of_the_volume_during_a_scan_is_not_followed() {
    let world = World::new();
    let vol = world.in_root("ns/a");
    create_files(&vol.join("sub"), "f", 1000);
    fs::write(world.in_root("elsewhere-data"), vec![3u8; 50_000]).unwrap();
    let root = NfsRoot::open(&world.root, StorageOptions::default())
        .await
        .unwrap();
    let scan = UsageScan::new(VolumeDirectory::parse("ns/a").unwrap());
    let never = CancellationToken::new();
    // The first slice enters `sub` (the only entry) and counts ten entries.
    let step = root.measure_volume_dir(&scan, 10, &never).await.unwrap();
    assert_eq!(step, UsageStep::InProgress { entries: 10 });
    fs::rename(vol.join("sub"), world.in_root("moved")).unwrap();
    create_files(&world.in_root("moved"), "extra", 100);
    let (usage, _) = measure(&root, &scan, 10).await;
    assert!(!usage.is_exact());
    assert!(usage.skipped >= 1);
    assert!(
        usage.inodes <= 11,
        "nothing of the moved directory counted after the move: {usage:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_place_of_the_volume_is_refused_and_mounts_are_not_entered() {
    let world = World::new();
    world.plant_symlink("ns/link", &world.outside);
    let root = NfsRoot::open(&world.root, StorageOptions::default())
        .await
        .unwrap();
    let never = CancellationToken::new();
    let scan = UsageScan::new(VolumeDirectory::parse("ns/link").unwrap());
    let refused = root.measure_volume_dir(&scan, 100, &never).await;
    assert!(
        matches!(refused, Err(StorageError::Unsafe { .. })),
        "{refused:?}"
    );
    let gone = UsageScan::new(VolumeDirectory::parse("ns/none").unwrap());
    assert_eq!(
        root.measure_volume_dir(&gone, 100, &never).await.unwrap(),
        UsageStep::Gone
    );

    // Another file system mounted inside a volume is not this volume's data.
    let vol = world.in_root("ns/m");
    fs::create_dir_all(vol.join("mnt")).unwrap();
    fs::write(vol.join("own"), b"own").unwrap();
    let mounted = nix::mount::mount(
        Some("tmpfs"),
        &vol.join("mnt"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .is_ok();
    if mounted {
        create_files(&vol.join("mnt"), "foreign", 50);
    }
    let scan = UsageScan::new(VolumeDirectory::parse("ns/m").unwrap());
    let (usage, _) = measure(&root, &scan, 100).await;
    if mounted {
        assert_eq!(usage.inodes, 2, "the volume and its own file: {usage:?}");
        assert_eq!(usage.skipped, 1);
        let _ = nix::mount::umount2(&vol.join("mnt"), nix::mount::MntFlags::MNT_DETACH);
    } else {
        // The sandbox runs in its own mount namespace, where a tmpfs can always be mounted:
        // failing to means this case was not checked, which must not pass silently.
        panic!("could not mount a tmpfs inside the volume: the mount point case was not checked");
    }
}

/// A tree nested deeper than the scanner measures (a claim's author decides the depth): the
/// scan still finishes, says it skipped what lies below, and a tree within the depth is
/// measured exactly, through the deferred subtrees beyond the open-directory bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_nested_deeper_than_measured_finishes_and_says_so() {
    let world = World::new();
    let root = NfsRoot::open(&world.root, StorageOptions::default())
        .await
        .unwrap();
    // Each level holds a file `f` and the next level `d`.
    let build = |vol: &str, levels: usize| {
        let mut dir = world.in_root(vol);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f"), b"x").unwrap();
        for _ in 0..levels {
            dir = dir.join("d");
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("f"), b"x").unwrap();
        }
    };
    build("within", 200);
    let scan = UsageScan::new(VolumeDirectory::parse("within").unwrap());
    let (usage, _) = measure(&root, &scan, 1000).await;
    assert_eq!(usage.skipped, 0, "{usage:?}");
    assert_eq!(
        usage.inodes,
        2 * 200 + 2,
        "the volume, 200 levels, 201 files"
    );

    build("beyond", 2000);
    let scan = UsageScan::new(VolumeDirectory::parse("beyond").unwrap());
    let (usage, _) = measure(&root, &scan, 1000).await;
    assert!(usage.skipped > 0, "{usage:?}");
    assert!(usage.inodes < 2 * 2000 + 2, "{usage:?}");
}
