//! Clone copy throughput against `cp -a` of the same tree on the same disk.
//!
//! Builds two source trees beneath a temporary root (the sandbox's scratch directory under
//! `cargo bench`, on the machine's disk): many small files, and a few large files. Each run
//! copies each tree twice, with `cp -a SRC DST` and with `NfsRoot::copy_volume_dir` +
//! `finish_copy` (default options: 30 s deadline, 15 s slices), alternating which goes
//! first, with a `sync` before each copy (not timed) and one after it (timed separately:
//! the write-back the copy left behind). Copies are removed between runs. Also reported:
//! the bench process's peak RSS growth during our copy (`VmHWM`, reset with
//! `/proc/self/clear_refs`), and that the copy has as many entries and bytes as the source.
//!
//! ```sh
//! cargo bench --bench clone_copy -- [--small-files 20000] [--large-files 4] [--large-mib 256] [--runs 3] [--tmpfs]
//! ```

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use nfs_provisioner::planning::VolumeDirectory;
use nfs_provisioner::storage::{
    CancellationToken, CloneStaging, CopyProgress, NfsRoot, StorageOptions,
};

#[derive(Parser, Debug)]
#[command(about = "Clone copy throughput against cp -a")]
struct Args {
    /// Files of the many-small-files tree (100 per directory, 1 to 16 KiB each).
    #[arg(long, default_value_t = 20_000)]
    small_files: usize,
    /// Files of the few-large-files tree.
    #[arg(long, default_value_t = 4)]
    large_files: usize,
    /// Size of each large file, MiB.
    #[arg(long, default_value_t = 256)]
    large_mib: usize,
    /// Runs per tree and tool.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Copy on a fresh tmpfs instead of the scratch directory's disk (the bench runs in
    /// the sandbox's private mount namespace), to see each tool's own cost per file without
    /// the disk file system's inode allocation.
    #[arg(long)]
    tmpfs: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn status_kib(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// User + system CPU time of this process (`RUSAGE_SELF`, all threads) or of its waited-for
/// children (`RUSAGE_CHILDREN`).
fn cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn sync() -> Duration {
    let started = Instant::now();
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    started.elapsed()
}

/// Deterministic content without a random-number crate: an xorshift stream.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn build_small(dir: &Path, files: usize) {
    for i in 0..files {
        let sub = dir.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(&sub).unwrap();
        }
        let len = 1024 + (i * 7919) % (15 * 1024);
        fs::write(sub.join(format!("f{i:06}")), content(i as u64, len)).unwrap();
    }
}

fn build_large(dir: &Path, files: usize, mib: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        let mut data = content(1_000_000 + i as u64, 1 << 20);
        let path = dir.join(format!("large{i}"));
        let mut file = fs::File::create(&path).unwrap();
        for chunk in 0..mib {
            data[0] = chunk as u8;
            std::io::Write::write_all(&mut file, &data).unwrap();
        }
    }
}

/// (entries, bytes of regular files) beneath `dir`.
fn tally(dir: &Path) -> (u64, u64) {
    let (mut entries, mut bytes) = (0, 0);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            entries += 1;
            if md.is_dir() {
                pending.push(path);
            } else if md.is_file() {
                bytes += md.size();
            }
        }
    }
    (entries, bytes)
}

struct Timing {
    copy: Duration,
    cpu: Duration,
    sync: Duration,
}

fn cp_a(root: &Path, tree: &str, to: &str) -> Timing {
    sync();
    let cpu_before = cpu(libc::RUSAGE_CHILDREN);
    let started = Instant::now();
    let status = Command::new("cp")
        .arg("-a")
        .arg(root.join(tree))
        .arg(root.join(to))
        .status()
        .expect("run cp -a");
    assert!(status.success(), "cp -a failed");
    let copy = started.elapsed();
    let cpu = cpu(libc::RUSAGE_CHILDREN) - cpu_before;
    Timing {
        copy,
        cpu,
        sync: sync(),
    }
}

async fn ours(root: &NfsRoot, base: &Path, tree: &str, to: &str, run: usize) -> (Timing, u64, u64) {
    let uid = format!("00000000-0000-4000-8000-{run:012}");
    let staging = CloneStaging::for_claim(&uid).unwrap();
    let cancel = CancellationToken::new();
    let slices = std::sync::atomic::AtomicU64::new(0);
    let progress = |_: &CopyProgress| {
        slices.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    sync();
    let reset = fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_before = status_kib("VmRSS:");
    let hwm_before = if reset {
        rss_before
    } else {
        status_kib("VmHWM:")
    };
    let cpu_before = cpu(libc::RUSAGE_SELF);
    let started = Instant::now();
    let outcome = root
        .copy_volume_dir(
            &VolumeDirectory::parse(tree).unwrap(),
            &staging,
            &progress,
            &cancel,
        )
        .await
        .expect("copy");
    root.finish_copy(
        &staging,
        &VolumeDirectory::parse(to).unwrap(),
        &Default::default(),
        &cancel,
    )
    .await
    .expect("finish");
    let copy = started.elapsed();
    let cpu = cpu(libc::RUSAGE_SELF) - cpu_before;
    let growth = status_kib("VmHWM:").saturating_sub(hwm_before);
    let timing = Timing {
        copy,
        cpu,
        sync: sync(),
    };
    assert_eq!(
        tally(&base.join(tree)),
        tally(&base.join(to)),
        "{tree}: copy differs"
    );
    assert!(outcome.notes.is_empty(), "{:?}", outcome.notes);
    (timing, growth, slices.into_inner())
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    let tmp = tempfile::Builder::new()
        .prefix("clone-bench")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    if args.tmpfs {
        nix::mount::mount(
            Some("tmpfs"),
            tmp.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .expect("mount a tmpfs (run under cargo bench, in the sandbox)");
    }
    let base: PathBuf = tmp.path().join("root");
    fs::create_dir(&base).unwrap();
    let started = Instant::now();
    build_small(&base.join("small"), args.small_files);
    build_large(&base.join("large"), args.large_files, args.large_mib);
    sync();
    println!(
        "trees built in {:.1?} under {} ({})",
        started.elapsed(),
        base.display(),
        Command::new("df")
            .args(["--output=fstype,source"])
            .arg(&base)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', " "))
            .unwrap_or_default()
    );
    let root = NfsRoot::open(&base, StorageOptions::default())
        .await
        .unwrap();
    for tree in ["small", "large"] {
        let (entries, bytes) = tally(&base.join(tree));
        if entries == 0 {
            continue;
        }
        println!(
            "\n{tree}: {entries} entries, {:.1} MiB",
            bytes as f64 / 1048576.0
        );
        println!(
            "run  tool      copy s    MB/s    files/s   CPU s  + sync s  peak RSS growth  slices"
        );
        let mb = bytes as f64 / 1e6;
        let mut walls: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let mut cpus: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for run in 0..args.runs {
            let cp_to = format!("cp-{tree}-{run}");
            let our_to = format!("ours-{tree}-{run}");
            let mut rows = Vec::new();
            let ours_first = run % 2 == 1;
            for turn in 0..2 {
                if (turn == 0) == ours_first {
                    let (t, growth, slices) = ours(&root, &base, tree, &our_to, run).await;
                    rows.push(("ours", t, Some((growth, slices))));
                } else {
                    rows.push(("cp -a", cp_a(&base, tree, &cp_to), None));
                }
            }
            for (tool, t, extra) in rows {
                let secs = t.copy.as_secs_f64();
                let which = usize::from(tool == "ours");
                walls[which].push(secs);
                cpus[which].push(t.cpu.as_secs_f64());
                let (growth, slices) = match extra {
                    Some((g, s)) => (format!("{g} KiB"), s.to_string()),
                    None => ("-".into(), "-".into()),
                };
                println!(
                    "{run:<4} {tool:<8} {secs:>7.2} {:>7.1} {:>10.0} {:>7.2} {:>9.2}  {growth:>15}  {slices:>6}",
                    mb / secs,
                    entries as f64 / secs,
                    t.cpu.as_secs_f64(),
                    t.sync.as_secs_f64(),
                );
            }
            fs::remove_dir_all(base.join(&cp_to)).unwrap();
            fs::remove_dir_all(base.join(&our_to)).unwrap();
        }
        for (which, tool) in ["cp -a", "ours"].iter().enumerate() {
            let (wall, cpu) = (median(&mut walls[which]), median(&mut cpus[which]));
            println!(
                "median {tool:<6} {wall:>7.2} s wall ({:.1} MB/s, {:.0} files/s), {cpu:.2} s CPU",
                mb / wall,
                entries as f64 / wall
            );
        }
    }
    if args.tmpfs {
        let _ = nix::mount::umount2(tmp.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
