//! Usage measurement benchmark: what one full pass over many volumes costs.
//!
//! Builds `--volumes` volume directories of `--files` files each (on a tmpfs when the sandbox
//! can mount one, so the figures are the scanner's own, not the disk's), then measures every
//! volume once the way the usage task does: slices of at most `--budget` entries, one at a
//! time. Reports entries stat'ed (≈ file system operations), slices, wall time, CPU seconds
//! and the peak memory growth of the process during the pass.
//!
//! ```sh
//! cargo bench --bench usage -- --volumes 1000 --files 100 [--budget 5000]
//! ```

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use nfs_provisioner::planning::VolumeDirectory;
use nfs_provisioner::storage::{CancellationToken, NfsRoot, StorageOptions, UsageScan, UsageStep};
use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, SFlag, mknodat};

#[derive(Parser, Debug)]
#[command(about = "Usage measurement benchmark of nfs-provisioner")]
struct Args {
    /// Volume directories.
    #[arg(long, default_value_t = 1000)]
    volumes: u64,
    /// Files in each volume (plus the volume directory itself).
    #[arg(long, default_value_t = 100)]
    files: u64,
    /// Entries per slice (USAGE_SCAN_ENTRIES_PER_SLICE).
    #[arg(long, default_value_t = 5000)]
    budget: u64,
    /// Run the usage task itself (its entry per volume) instead of bare slices, with
    /// this many slices per 1 ms round.
    #[arg(long)]
    monitor: Option<u32>,
    /// Ignored: cargo bench passes it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn create_files(dir: &Path, count: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let fd = open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .unwrap();
    for n in 0..count {
        let name = CString::new(format!("f{n}")).unwrap();
        mknodat(
            fd.as_fd(),
            name.as_c_str(),
            SFlag::S_IFREG,
            Mode::from_bits_truncate(0o644),
            0,
        )
        .unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    if std::env::var("NFS_PROVISIONER_SANDBOXED").as_deref() != Ok("1") {
        eprintln!("run through cargo bench (scripts/sandbox-run): it creates files");
        std::process::exit(2);
    }
    let base = tempfile::tempdir().unwrap();
    let on_tmpfs = nix::mount::mount(
        Some("tmpfs"),
        base.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .is_ok();
    let root_path = base.path().join("root");
    let built = Instant::now();
    for v in 0..args.volumes {
        create_files(&root_path.join(format!("ns/vol-{v}")), args.files);
    }
    let build_time = built.elapsed();
    let root = NfsRoot::open(
        &root_path,
        StorageOptions {
            op_timeout: Duration::from_secs(30),
            max_stuck_ops: 16,
        },
    )
    .await
    .unwrap();

    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = status_kib("VmRSS:");
    let hwm_before = if reset {
        rss_before
    } else {
        status_kib("VmHWM:")
    };
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let never = CancellationToken::new();
    let (mut slices, mut entries, mut inodes) = (0u64, 0u64, 0u64);
    let mut page_kib = None;
    if let Some(per_round) = args.monitor {
        let (s, e, i, growth, page) = run_monitor(&root, &args, per_round, hwm_before).await;
        (slices, entries, inodes) = (s, e, i);
        page_kib = Some((page, growth));
    }
    for v in (0..args.volumes).filter(|_| args.monitor.is_none()) {
        let scan = UsageScan::new(VolumeDirectory::parse(&format!("ns/vol-{v}")).unwrap());
        loop {
            slices += 1;
            match root
                .measure_volume_dir(&scan, args.budget, &never)
                .await
                .unwrap()
            {
                UsageStep::InProgress { entries: n } => entries += n,
                UsageStep::Finished { usage, entries: n } => {
                    entries += n;
                    inodes += usage.inodes;
                    break;
                }
                UsageStep::Gone => panic!("volume {v} is there"),
            }
        }
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let growth = match page_kib {
        Some((page, growth)) => {
            eprintln!("/metrics page: {page} KiB (rendered per scrape)");
            growth
        }
        None => status_kib("VmHWM:").saturating_sub(hwm_before),
    };
    assert_eq!(inodes, args.volumes * (args.files + 1));
    println!(
        "| {} × {}{} | {} | {} | {:.2} s | {:.2} s | {:.1} µs | {} KiB |",
        args.volumes,
        args.files,
        if args.monitor.is_some() {
            " (usage task)"
        } else {
            ""
        },
        entries,
        slices,
        wall.as_secs_f64(),
        cpu,
        cpu * 1e6 / entries.max(1) as f64,
        growth
    );
    eprintln!(
        "volumes {} × files {} (built in {build_time:?}, tmpfs: {on_tmpfs}); budget {} entries/slice; VmRSS before {rss_before} KiB (high-water mark reset: {reset})",
        args.volumes, args.files, args.budget
    );
}

/// A volume list that never changes, as the controller's cache is between changes.
struct FixedVolumes {
    volumes: Vec<nfs_provisioner::usage::VolumeRef>,
    visited: std::sync::atomic::AtomicBool,
}

impl nfs_provisioner::usage::VolumeSource for FixedVolumes {
    fn visit_if_changed(&self, f: &mut dyn FnMut(nfs_provisioner::usage::VolumeRef)) -> bool {
        if self
            .visited
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        self.volumes.iter().cloned().for_each(f);
        true
    }

    fn get(&self, pv: &str) -> Option<nfs_provisioner::usage::VolumeRef> {
        // Names are numbered in order: a binary search finds them.
        let i = self
            .volumes
            .binary_search_by(|v| v.pv.as_str().cmp(pv))
            .ok()?;
        Some(self.volumes[i].clone())
    }
}

/// Runs the usage task over every volume until each was measured once; (slices, entries,
/// inodes, peak memory growth in KiB before the first scrape, size of a scraped page in KiB).
async fn run_monitor(
    root: &NfsRoot,
    args: &Args,
    per_round: u32,
    hwm_before: u64,
) -> (u64, u64, u64, u64, usize) {
    use nfs_provisioner::metrics::{Metrics, ResultLabels};
    use nfs_provisioner::usage::{UsageMonitor, UsageSettings, VolumeRef};
    use std::sync::Arc;

    let metrics = Metrics::new();
    // Events are only written for volumes over their request; these have no capacity, so
    // the client never sends anything.
    let client =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let events =
        nfs_provisioner::controller::EventPublisher::new(client, "bench", "bench", metrics.clone());
    let volumes: Vec<VolumeRef> = (0..args.volumes)
        .map(|v| VolumeRef {
            pv: format!("pvc-{v:08}-0000-0000-0000-000000000000"),
            namespace: "bench".into(),
            claim: format!("data-{v}"),
            claim_uid: format!("{v:08}-0000-0000-0000-000000000000"),
            directory: VolumeDirectory::parse(&format!("ns/vol-{v}")).unwrap(),
            capacity: None,
        })
        .collect();
    let source = Arc::new(FixedVolumes {
        volumes,
        visited: std::sync::atomic::AtomicBool::new(false),
    });
    let monitor = UsageMonitor::new(
        root.clone(),
        metrics.usage.clone(),
        events,
        source,
        Arc::new(|| true),
        UsageSettings {
            interval: Duration::from_millis(1),
            slices_per_interval: per_round,
            entries_per_slice: args.budget,
            rescan_period: Duration::from_secs(3600),
        },
    );
    let stop = CancellationToken::new();
    let task = tokio::spawn(monitor.run(stop.clone()));
    let scans = metrics.usage.scans.get_or_create(&ResultLabels {
        result: "exact".into(),
    });
    while scans.get() < args.volumes {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let slices: u64 = ["in_progress", "finished"]
        .iter()
        .map(|r| {
            metrics
                .usage
                .slices
                .get_or_create(&ResultLabels {
                    result: r.to_string(),
                })
                .get()
        })
        .sum();
    let entries = metrics.usage.entries.get();
    // Peak before the page is rendered: a scrape's own cost is reported apart.
    let growth = status_kib("VmHWM:").saturating_sub(hwm_before);
    let page = metrics.render();
    let inodes = page
        .lines()
        .filter(|l| l.starts_with("nfs_provisioner_volume_used_inodes{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    stop.cancel();
    let _ = task.await;
    (slices, entries, inodes, growth, page.len() / 1024)
}
