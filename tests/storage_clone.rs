//! Cloning a volume directory: hostile source trees, entries swapped mid-copy, a sparse
//! 10 GB file, 100 000 small files, hard links, a crash mid-copy, a hung root mid-copy.
//!
//! Every case snapshots the whole temporary world (the root with the source and another
//! volume, `outside/` with canaries that planted symlinks point at, `root-sibling/`) before
//! and after, and asserts that nothing changed outside the clone's staging place and its
//! destination. Copies are compared entry by entry with their source: kind, content (or
//! link target, or device number), mode, owner, modification time, access time of files.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File};
use std::hash::{DefaultHasher, Hasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Gate, World, wait_until_no_stuck};
use nfs_provisioner::parameters::DirectoryPermissions;
use nfs_provisioner::planning::VolumeDirectory;
use nfs_provisioner::storage::{
    CancellationToken, CloneStaging, CopyNoteKind, CopyProgress, CopyStart, CreateOutcome,
    FinishOutcome, NfsRoot, RemoveOutcome, StagedCopy, StorageError, StorageOptions,
};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, Whence, fchownat, lseek, mkfifo};

const UID: &str = "7d9c1f0a-5b2e-4c3d-8e4f-a1b2c3d4e5f6";
const STAGING: &str = ".nfs-provisioner-staging";
/// Files larger than this are compared by size and allocated blocks, not content.
const HASHED_BYTES: u64 = 64 << 20;

fn staging() -> CloneStaging {
    CloneStaging::for_claim(UID).unwrap()
}

fn dir(s: &str) -> VolumeDirectory {
    VolumeDirectory::parse(s).unwrap()
}

fn never() -> CancellationToken {
    CancellationToken::new()
}

fn perms() -> DirectoryPermissions {
    DirectoryPermissions::default()
}

fn no_progress(_: &CopyProgress) {}

async fn open(world: &World) -> NfsRoot {
    NfsRoot::open(&world.root, StorageOptions::default())
        .await
        .unwrap()
}

async fn open_hooked(
    world: &World,
    opts: StorageOptions,
    hook: impl Fn(&str, &str) + Send + Sync + 'static,
) -> NfsRoot {
    NfsRoot::open_with_fault_hook(&world.root, opts, Arc::new(hook))
        .await
        .unwrap()
}

// ---- comparing trees -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File { len: u64, hash: u64 },
    BigFile { len: u64, blocks: u64 },
    Symlink(Vec<u8>),
    Fifo,
    CharDevice(u64),
    BlockDevice(u64),
    Socket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    /// Regular files only (reading a symlink or listing a directory may update theirs).
    atime: Option<(i64, i64)>,
    ino: u64,
    nlink: u64,
}

/// Hash of the file's bytes, streamed.
fn hash_file(path: &Path) -> u64 {
    let mut file = File::open(path).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut hasher = DefaultHasher::new();
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            return hasher.finish();
        }
        hasher.write(&buf[..n]);
    }
}

/// Every entry beneath `top` (relative paths), never following a symlink, never opening
/// anything but regular files. All metadata is read before any content: reading a file may
/// update its access time, which another name of the same file would then show.
fn scan(top: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut pending = vec![top.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let md = fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                pending.push(path.clone());
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink(
                    fs::read_link(&path)
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else if ft.is_file() && md.len() > HASHED_BYTES {
                Kind::BigFile {
                    len: md.len(),
                    blocks: md.blocks(),
                }
            } else if ft.is_file() {
                // Hashed below, once all metadata is read.
                Kind::File {
                    len: md.len(),
                    hash: 0,
                }
            } else if ft.is_fifo() {
                Kind::Fifo
            } else if ft.is_char_device() {
                Kind::CharDevice(md.rdev())
            } else if ft.is_block_device() {
                Kind::BlockDevice(md.rdev())
            } else {
                Kind::Socket
            };
            let atime = ft.is_file().then(|| (md.atime(), md.atime_nsec()));
            out.insert(
                path.strip_prefix(top).unwrap().to_path_buf(),
                Node {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: (md.mtime(), md.mtime_nsec()),
                    atime,
                    ino: md.ino(),
                    nlink: md.nlink(),
                },
            );
        }
    }
    for (rel, node) in out.iter_mut() {
        if let Kind::File { hash, .. } = &mut node.kind {
            *hash = hash_file(&top.join(rel));
        }
    }
    out
}

/// Asserts the copy holds exactly the source's entries (less `skipped`), each the same but
/// for inode numbers and link counts, and that the copy's own directory matches the source
/// directory's mode, owner and modification time. Access times are only comparable on the
/// copy's first scan (reading a copied file updates its access time).
fn assert_same_tree(source: &Path, copy: &Path, skipped: &[&str]) {
    assert_same_entries(source, copy, skipped);
    let (s, c) = (fs::metadata(source).unwrap(), fs::metadata(copy).unwrap());
    assert_eq!(
        (s.mode(), s.uid(), s.gid(), s.mtime(), s.mtime_nsec()),
        (c.mode(), c.uid(), c.gid(), c.mtime(), c.mtime_nsec()),
        "the copy's own directory"
    );
}

/// [`assert_same_tree`] but for the copy's own directory (for a source changed while it was
/// copied: the copy has the directory's times from when the copy started, like `cp -a`).
fn assert_same_entries(source: &Path, copy: &Path, skipped: &[&str]) {
    let mut expected = scan(source);
    for s in skipped {
        assert!(expected.remove(Path::new(s)).is_some(), "{s} not in source");
    }
    let actual = scan(copy);
    let strip = |m: &BTreeMap<PathBuf, Node>| -> BTreeMap<PathBuf, Node> {
        m.iter()
            .map(|(p, n)| {
                let mut n = n.clone();
                n.ino = 0;
                n.nlink = 0;
                // Allocation may differ; the sparse test checks it on its own.
                if let Kind::BigFile { blocks, .. } = &mut n.kind {
                    *blocks = 0;
                }
                (p.clone(), n)
            })
            .collect()
    };
    let (expected, actual) = (strip(&expected), strip(&actual));
    for (path, node) in &expected {
        assert_eq!(
            actual.get(path),
            Some(node),
            "{} in the copy",
            path.display()
        );
    }
    for path in actual.keys() {
        assert!(
            expected.contains_key(path),
            "{} only in the copy",
            path.display()
        );
    }
}

/// Asserts nothing changed in the world except beneath `allowed` (paths relative to the
/// world's base). Directory modification times are not compared: adding the staging
/// directory or a destination changes its parent's, and every child is compared anyway.
fn assert_unchanged_except(
    before: &BTreeMap<PathBuf, Node>,
    after: &BTreeMap<PathBuf, Node>,
    allowed: &[&str],
) {
    let free = |p: &Path| allowed.iter().any(|a| p.starts_with(a));
    let comparable = |n: &Node| {
        let mut n = n.clone();
        n.atime = None;
        if n.kind == Kind::Dir {
            // Both change when entries are added or removed in it (compared themselves).
            n.mtime = (0, 0);
            n.nlink = 0;
        }
        n
    };
    for (path, node) in before {
        if free(path) {
            continue;
        }
        assert_eq!(
            after.get(path).map(comparable),
            Some(comparable(node)),
            "{} changed or vanished outside the clone's directories",
            path.display()
        );
    }
    for path in after.keys() {
        assert!(
            before.contains_key(path) || free(path),
            "{} appeared outside the clone's directories",
            path.display()
        );
    }
}

fn snapshot(world: &World) -> BTreeMap<PathBuf, Node> {
    scan(&world.base)
}

fn set_times(path: &Path, atime: i64, mtime: i64) {
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::new(atime, 123_456_789),
        &TimeSpec::new(mtime, 987_654_321),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Copies `source` for the test claim and puts it at `destination`.
async fn clone(
    root: &NfsRoot,
    source: &str,
    destination: &str,
) -> nfs_provisioner::storage::CopyOutcome {
    let outcome = root
        .copy_volume_dir(&dir(source), &staging(), &no_progress, &never())
        .await
        .unwrap();
    assert_eq!(
        root.finish_copy(&staging(), &dir(destination), &perms(), &never())
            .await
            .unwrap(),
        FinishOutcome::Finished {
            replaced_empty_directory: false
        }
    );
    outcome
}

// ---- hostile source trees -----------------------------------------------------------------

/// A source volume full of things pointing out of it, plus every kind of entry.
fn hostile_source(world: &World) {
    let src = world.in_root("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    fs::create_dir_all(world.in_root("other-vol")).unwrap();
    fs::write(world.in_root("other-vol/secret"), b"another volume's data").unwrap();
    fs::write(src.join("file.txt"), b"hello").unwrap();
    fs::write(src.join("sub/deeper/file"), b"deep").unwrap();
    fs::write(src.join("setuid-bin"), b"#!/bin/true\n").unwrap();
    fs::create_dir(src.join("empty-dir")).unwrap();
    fs::write(src.join("name with\nnewline"), b"newline").unwrap();
    fs::write(
        src.join(std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe")),
        b"bytes",
    )
    .unwrap();
    symlink("/", src.join("to-root")).unwrap();
    symlink("..", src.join("to-parent")).unwrap();
    symlink("../other-vol", src.join("to-other-volume")).unwrap();
    symlink("../other-vol/secret", src.join("to-other-secret")).unwrap();
    symlink(&world.outside, src.join("to-outside")).unwrap();
    symlink(
        world.outside.join("canary.txt"),
        src.join("to-outside-canary"),
    )
    .unwrap();
    symlink("does/not/exist", src.join("dangling")).unwrap();
    symlink("../../../../../../../../etc/passwd", src.join("sub/to-etc")).unwrap();
    mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o620)).unwrap();
    mknod(
        &src.join("null-device"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o640),
        makedev(1, 3),
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(src.join("sock")).unwrap();
    // Modes, owners and times that differ from the defaults.
    fs::set_permissions(src.join("file.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(src.join("setuid-bin"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("sub"), fs::Permissions::from_mode(0o2775)).unwrap();
    fs::set_permissions(src.join("empty-dir"), fs::Permissions::from_mode(0o1700)).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o750)).unwrap();
    chown(&src.join("file.txt"), 1234, 5678);
    chown(&src.join("setuid-bin"), 1000, 1000);
    fs::set_permissions(src.join("setuid-bin"), fs::Permissions::from_mode(0o4755)).unwrap();
    chown(&src.join("to-outside"), 4321, 8765);
    chown(&src.join("fifo"), 42, 43);
    chown(&src, 1000, 2000);
    for (i, entry) in [
        "file.txt",
        "to-outside",
        "fifo",
        "null-device",
        "sub/deeper",
        "sub",
        "empty-dir",
        "",
    ]
    .iter()
    .enumerate()
    {
        set_times(
            &src.join(entry),
            1_000_000_000 + i as i64,
            1_100_000_000 + i as i64,
        );
    }
}

#[tokio::test]
async fn hostile_source_tree_is_copied_confined_and_faithfully() {
    let world = World::new();
    hostile_source(&world);
    let before = snapshot(&world);
    let root = open(&world).await;

    let outcome = clone(&root, "src", "team/clone").await;

    assert_eq!(outcome.start, CopyStart::Fresh);
    assert_eq!(outcome.progress.skipped, 1);
    assert_eq!(
        outcome
            .notes
            .iter()
            .map(|n| (n.path.as_str(), n.kind))
            .collect::<Vec<_>>(),
        vec![("sock", CopyNoteKind::Socket)]
    );
    assert_same_tree(
        &world.in_root("src"),
        &world.in_root("team/clone"),
        &["sock"],
    );
    let clone = world.in_root("team/clone");
    assert_eq!(
        fs::read_link(clone.join("to-root")).unwrap(),
        Path::new("/")
    );
    assert!(clone.join("fifo").metadata().unwrap().file_type().is_fifo());
    assert!(!clone.join("sock").exists());
    // Nothing else changed: the source, the other volume, the canaries outside the root.
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &["root/team", "root/.nfs-provisioner-staging"],
    );
    assert_eq!(fs::read_dir(world.in_root(STAGING)).unwrap().count(), 0);
    assert!(root.staged_copies(&never()).await.unwrap().is_empty());
}

// ---- entries swapped while the copy runs --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_and_a_fifo_swapped_in_mid_copy_are_copied_as_such() {
    let world = World::new();
    let src = world.in_root("src");
    fs::create_dir_all(src.join("victim-dir")).unwrap();
    fs::write(src.join("victim-dir/inside"), b"inside").unwrap();
    fs::write(src.join("victim-file"), b"data").unwrap();
    fs::write(src.join("victim-fifo"), b"becomes a FIFO").unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("plain-{i}")), format!("plain {i}")).unwrap();
    }
    let outside = world.outside.clone();
    let src2 = src.clone();
    let swaps = Arc::new(AtomicUsize::new(0));
    let swaps2 = swaps.clone();
    // Right after the copy looked at the entry and before it opens it: the worst moment.
    let root = open_hooked(&world, StorageOptions::default(), move |op, path| {
        if op != "copy_open" {
            return;
        }
        let name = Path::new(path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        match name.as_str() {
            "victim-file" => {
                fs::remove_file(src2.join(&name)).unwrap();
                symlink(outside.join("canary.txt"), src2.join(&name)).unwrap();
            }
            "victim-dir" => {
                fs::rename(
                    src2.join(&name),
                    outside.parent().unwrap().join("moved-away"),
                )
                .unwrap();
                symlink(&outside, src2.join(&name)).unwrap();
            }
            "victim-fifo" => {
                fs::remove_file(src2.join(&name)).unwrap();
                mkfifo(&src2.join(&name), Mode::from_bits_truncate(0o600)).unwrap();
            }
            _ => return,
        }
        swaps2.fetch_add(1, Ordering::SeqCst);
    })
    .await;
    let before = snapshot(&world);

    // A FIFO opened for reading would block: the default 30 s deadline would then fail
    // the copy as "not responding".
    clone(&root, "src", "clone").await;

    assert_eq!(swaps.load(Ordering::SeqCst), 3);
    let clone = world.in_root("clone");
    assert_eq!(
        fs::read_link(clone.join("victim-file")).unwrap(),
        world.outside.join("canary.txt")
    );
    assert_eq!(
        fs::read_link(clone.join("victim-dir")).unwrap(),
        world.outside
    );
    assert!(
        clone
            .join("victim-fifo")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_same_entries(&src, &clone, &[]);
    // Outside the root only the test's own move happened; nothing of outside/ was read
    // into the copy or written.
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &[
            "root/clone",
            "root/.nfs-provisioner-staging",
            "root/src",
            "moved-away",
        ],
    );
    assert!(
        fs::symlink_metadata(clone.join("victim-dir"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// inotify watch for open, read and write events on one path.
struct Watch(std::os::fd::OwnedFd);

impl Watch {
    fn new(path: &Path) -> Watch {
        // SAFETY: plain system calls; the descriptor is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let mask = libc::IN_OPEN | libc::IN_ACCESS | libc::IN_MODIFY | libc::IN_DONT_FOLLOW;
        let wd = unsafe {
            libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), c.as_ptr(), mask)
        };
        assert!(wd >= 0, "inotify_add_watch {}", path.display());
        Watch(fd)
    }

    fn events(&self) -> usize {
        let mut buf = [0u8; 4096];
        match nix::unistd::read(self.0.as_fd(), &mut buf) {
            Ok(n) => n,
            Err(nix::errno::Errno::EAGAIN) => 0,
            Err(e) => panic!("inotify read: {e}"),
        }
    }
}

#[tokio::test]
async fn a_fifo_and_a_device_node_are_recreated_and_never_opened() {
    let world = World::new();
    let src = world.in_root("src");
    fs::create_dir(&src).unwrap();
    mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
    mknod(
        &src.join("null-device"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        makedev(1, 3),
    )
    .unwrap();
    fs::write(src.join("regular"), b"read me").unwrap();
    let watches = [
        Watch::new(&src.join("fifo")),
        Watch::new(&src.join("null-device")),
    ];
    let regular = Watch::new(&src.join("regular"));
    let before = snapshot(&world);

    clone(&open(&world).await, "src", "clone").await;

    assert_same_tree(&src, &world.in_root("clone"), &[]);
    assert_eq!(
        fs::symlink_metadata(world.in_root("clone/null-device"))
            .unwrap()
            .rdev(),
        makedev(1, 3)
    );
    for watch in &watches {
        assert_eq!(watch.events(), 0, "a special file was opened");
    }
    // The watches do see opens: the regular file was read, and opening the FIFO now shows.
    assert!(regular.events() > 0);
    drop(
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(src.join("fifo"))
            .unwrap(),
    );
    assert!(watches[0].events() > 0);
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &["root/clone", "root/.nfs-provisioner-staging"],
    );
}

// ---- large trees ----------------------------------------------------------------------------

/// Data and hole ranges of a file, from SEEK_DATA/SEEK_HOLE.
fn data_ranges(path: &Path) -> Vec<(i64, i64)> {
    let file = File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as i64;
    let mut ranges = Vec::new();
    let mut pos = 0;
    while pos < len {
        let start = match lseek(file.as_fd(), pos, Whence::SeekData) {
            Ok(start) => start,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => panic!("SEEK_DATA: {e}"),
        };
        let end = lseek(file.as_fd(), start, Whence::SeekHole).unwrap();
        ranges.push((start, end));
        pos = end;
    }
    ranges
}

fn read_range(path: &Path, start: i64, end: i64) -> Vec<u8> {
    let mut file = File::open(path).unwrap();
    file.seek(SeekFrom::Start(start as u64)).unwrap();
    let mut buf = vec![0u8; (end - start) as usize];
    file.read_exact(&mut buf).unwrap();
    buf
}

#[tokio::test]
async fn a_ten_gigabyte_sparse_file_stays_sparse() {
    let world = World::new();
    let src = world.in_root("src");
    fs::create_dir(&src).unwrap();
    const SIZE: u64 = 10 << 30;
    let mut file = File::create(src.join("sparse")).unwrap();
    for (offset, byte) in [(0, b'A'), (5 << 30, b'B'), (SIZE - 4096, b'C')] {
        file.seek(SeekFrom::Start(offset)).unwrap();
        file.write_all(&[byte; 4096]).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    let source_ranges = data_ranges(&src.join("sparse"));
    let source_blocks = fs::metadata(src.join("sparse")).unwrap().blocks();
    assert!(source_ranges.len() >= 3, "{source_ranges:?}");
    let before = snapshot(&world);

    let outcome = clone(&open(&world).await, "src", "clone").await;

    let copy = world.in_root("clone/sparse");
    let md = fs::metadata(&copy).unwrap();
    assert_eq!(md.len(), SIZE);
    // 512-byte blocks: the source holds 12 KiB of data (24 blocks plus extent metadata);
    // a copy that wrote the holes would hold 20 971 520.
    assert!(
        md.blocks() <= source_blocks + 64,
        "copy allocates {} blocks, source {source_blocks}",
        md.blocks()
    );
    assert_eq!(data_ranges(&copy), source_ranges);
    for (start, end) in &source_ranges {
        assert!(read_range(&copy, *start, *end) == read_range(&src.join("sparse"), *start, *end));
    }
    let data: i64 = source_ranges.iter().map(|(s, e)| e - s).sum();
    assert_eq!(outcome.progress.bytes, data as u64);
    assert_same_tree(&src, &world.in_root("clone"), &[]);
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &["root/clone", "root/.nfs-provisioner-staging"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_small_files_are_copied_in_slices_with_progress() {
    let world = World::new_on_tmpfs();
    let src = world.in_root("src");
    const DIRS: usize = 100;
    const FILES: usize = 1000;
    let mut bytes = 0;
    for d in 0..DIRS {
        let sub = src.join(format!("d{d:03}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..FILES {
            let content = format!("file {d}/{f}");
            bytes += content.len() as u64;
            fs::write(sub.join(format!("f{f:04}")), content).unwrap();
        }
    }
    let before = snapshot(&world);
    let slices = Arc::new(AtomicUsize::new(0));
    let counter = slices.clone();
    let root = open_hooked(
        &world,
        StorageOptions {
            // Slices of half a second: the copy takes several.
            op_timeout: Duration::from_secs(1),
            max_stuck_ops: 2,
        },
        move |op, _| {
            if op == "copy" {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        },
    )
    .await;
    let reports = Mutex::new(Vec::new());
    let record = |p: &CopyProgress| reports.lock().unwrap().push(p.clone());
    // A slice stalled past its deadline by a busy machine is "not responding"; the caller
    // (the controller) copies again, which starts over. Allow a few.
    let mut calls = 0;
    let outcome = loop {
        calls += 1;
        reports.lock().unwrap().clear();
        match root
            .copy_volume_dir(&dir("src"), &staging(), &record, &never())
            .await
        {
            Ok(outcome) => break outcome,
            Err(e) if e.is_not_responding() && calls < 5 => {}
            Err(e) => panic!("copy failed after {calls} calls: {e}"),
        }
    };
    let reports = reports.into_inner().unwrap();

    assert_eq!(outcome.progress.entries, (DIRS * FILES + DIRS + 1) as u64);
    assert_eq!(outcome.progress.bytes, bytes);
    assert_eq!(outcome.progress.skipped, 0);
    assert!(reports.len() >= 2, "{} progress reports", reports.len());
    assert_eq!(reports.last(), Some(&outcome.progress));
    assert!(slices.load(Ordering::SeqCst) >= reports.len());
    for pair in reports.windows(2) {
        assert!(pair[0].entries <= pair[1].entries && pair[0].bytes <= pair[1].bytes);
    }
    root.finish_copy(&staging(), &dir("clone"), &perms(), &never())
        .await
        .unwrap();
    assert_same_tree(&src, &world.in_root("clone"), &[]);
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &["root/clone", "root/.nfs-provisioner-staging"],
    );
    println!(
        "100 000 files: {} slices, {} progress reports, {calls} call(s), tmpfs: {}",
        slices.load(Ordering::SeqCst),
        reports.len(),
        world.on_tmpfs
    );
}

#[tokio::test]
async fn hard_links_inside_stay_links_and_links_out_are_copied_as_files() {
    let world = World::new();
    let src = world.in_root("src");
    fs::create_dir_all(src.join("d/e")).unwrap();
    fs::create_dir_all(world.in_root("other-vol")).unwrap();
    // Three names inside the source.
    fs::write(src.join("a"), b"three names").unwrap();
    fs::hard_link(src.join("a"), src.join("d/b")).unwrap();
    fs::hard_link(src.join("a"), src.join("d/e/c")).unwrap();
    // One name inside, one in another volume.
    fs::write(src.join("x"), b"shared with another volume").unwrap();
    fs::hard_link(src.join("x"), world.in_root("other-vol/x-link")).unwrap();
    // Two names inside and one outside the root entirely.
    fs::write(src.join("y"), b"two inside, one outside").unwrap();
    fs::hard_link(src.join("y"), src.join("d/y2")).unwrap();
    fs::hard_link(src.join("y"), world.outside.join("y-link")).unwrap();
    let before = snapshot(&world);

    let outcome = clone(&open(&world).await, "src", "clone").await;

    assert!(outcome.notes.is_empty(), "{:?}", outcome.notes);
    assert_same_tree(&src, &world.in_root("clone"), &[]);
    let copy = scan(&world.in_root("clone"));
    let node = |p: &str| copy.get(Path::new(p)).unwrap().clone();
    assert_eq!(node("a").ino, node("d/b").ino);
    assert_eq!(node("a").ino, node("d/e/c").ino);
    assert_eq!(node("a").nlink, 3);
    assert_eq!(node("x").nlink, 1);
    assert_eq!(node("y").ino, node("d/y2").ino);
    assert_eq!(node("y").nlink, 2);
    assert_ne!(node("a").ino, node("y").ino);
    // The outside names still share their inodes with the source, and nothing gained links.
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &["root/clone", "root/.nfs-provisioner-staging"],
    );
    assert_eq!(
        fs::metadata(world.in_root("other-vol/x-link"))
            .unwrap()
            .ino(),
        fs::metadata(src.join("x")).unwrap().ino()
    );
}

#[tokio::test]
async fn a_tree_deeper_than_the_open_directory_bound_is_copied_whole() {
    let world = World::new();
    let src = world.in_root("src");
    // 100 levels (the copy keeps 32 open), with entries after each deep descent.
    let mut d = src.clone();
    for level in 0..100 {
        fs::create_dir_all(d.join("deeper")).unwrap();
        fs::write(d.join(format!("file-{level}")), format!("{level}")).unwrap();
        fs::create_dir(d.join("zz-sibling")).unwrap();
        symlink("..", d.join("zz-sibling/up")).unwrap();
        d = d.join("deeper");
    }
    let before = snapshot(&world);
    let outcome = clone(&open(&world).await, "src", "clone").await;
    assert_eq!(outcome.progress.entries, 100 * 4 + 1);
    assert_same_tree(&src, &world.in_root("clone"), &[]);
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &["root/clone", "root/.nfs-provisioner-staging"],
    );
}

// ---- crash and hang ---------------------------------------------------------------------

/// 300 small files in 3 directories and one 20 MiB file (three chunks).
fn medium_source(world: &World) {
    let src = world.in_root("src");
    for d in 0..3 {
        fs::create_dir_all(src.join(format!("d{d}"))).unwrap();
        for f in 0..100 {
            fs::write(src.join(format!("d{d}/f{f:03}")), format!("{d}/{f}")).unwrap();
        }
    }
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i % 253) as u8).collect();
    fs::write(src.join("big"), big).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_interrupted_midway_is_never_bound_and_the_next_one_starts_over() {
    let world = World::new();
    medium_source(&world);
    let before = snapshot(&world);
    let cancel = CancellationToken::new();
    let seen = Arc::new(AtomicUsize::new(0));
    let (gate, reached) = (Gate::new(), Gate::new());
    let (seen2, gate2, reached2) = (seen.clone(), gate.clone(), reached.clone());
    // The process "dies" at the 150th entry: the worker is held there while its caller
    // gives up; then it stops at its next check, leaving a half-built copy behind.
    let crashing = open_hooked(&world, StorageOptions::default(), move |op, _| {
        if op == "copy_entry" && seen2.fetch_add(1, Ordering::SeqCst) == 150 {
            reached2.open();
            gate2.wait();
        }
    })
    .await;
    let copying = {
        let (crashing, cancel) = (crashing.clone(), cancel.clone());
        tokio::spawn(async move {
            crashing
                .copy_volume_dir(&dir("src"), &staging(), &no_progress, &cancel)
                .await
        })
    };
    tokio::task::spawn_blocking(move || reached.wait())
        .await
        .unwrap();
    cancel.cancel();
    let err = copying.await.unwrap().unwrap_err();
    assert!(matches!(err, StorageError::Cancelled), "{err}");
    gate.open();
    wait_until_no_stuck(&crashing).await;
    drop(crashing);

    let partial = world.in_root(&format!("{STAGING}/{UID}.partial"));
    let half = scan(&partial).len();
    assert!(
        half > 0 && half < 300,
        "{half} entries copied before the crash"
    );
    assert!(!world.in_root("clone").exists());

    // After the restart: the half copy is never put into place...
    let root = open(&world).await;
    assert_eq!(
        root.staged_copies(&never()).await.unwrap(),
        vec![StagedCopy {
            staging: staging(),
            complete: false
        }]
    );
    assert_eq!(
        root.finish_copy(&staging(), &dir("clone"), &perms(), &never())
            .await
            .unwrap(),
        FinishOutcome::NothingStaged {
            destination_exists: false
        }
    );
    assert!(!world.in_root("clone").exists());
    // ...the copy starts over...
    let outcome = root
        .copy_volume_dir(&dir("src"), &staging(), &no_progress, &never())
        .await
        .unwrap();
    assert_eq!(outcome.start, CopyStart::DiscardedPartial);
    assert_eq!(outcome.progress.entries, 300 + 3 + 1 + 1);
    assert!(!partial.exists());
    // ...and a crash after it completed keeps the complete copy: copying again finds it.
    let again = root
        .copy_volume_dir(&dir("src"), &staging(), &no_progress, &never())
        .await
        .unwrap();
    assert_eq!(again.start, CopyStart::AlreadyComplete);
    assert_eq!(again.progress, CopyProgress::default());
    root.finish_copy(&staging(), &dir("clone"), &perms(), &never())
        .await
        .unwrap();
    assert_same_tree(&world.in_root("src"), &world.in_root("clone"), &[]);
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &["root/clone", "root/.nfs-provisioner-staging"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_hung_mid_copy_fails_the_copy_within_its_deadline_and_others_proceed() {
    let world = World::new();
    medium_source(&world);
    let before = snapshot(&world);
    let gate = Gate::new();
    let gate2 = gate.clone();
    let root = open_hooked(
        &world,
        StorageOptions {
            op_timeout: Duration::from_secs(2),
            max_stuck_ops: 4,
        },
        move |op, path| {
            if op == "copy_entry" && path.ends_with("d1/f050") {
                gate2.wait();
            }
        },
    )
    .await;

    let err = root
        .copy_volume_dir(&dir("src"), &staging(), &no_progress, &never())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::NotResponding { op: "copy", .. }),
        "{err}"
    );
    assert_eq!(root.stuck_operations(), 1);
    // Other volumes are served meanwhile.
    assert_eq!(
        root.create_volume_dir(&dir("healthy"), &perms(), &perms(), &never())
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    root.probe().await.unwrap();
    assert!(!world.in_root("clone").exists());

    // The server answers again: the abandoned slice stops without writing anything more.
    let partial = world.in_root(&format!("{STAGING}/{UID}.partial"));
    let stalled = snapshot(&world);
    gate.open();
    wait_until_no_stuck(&root).await;
    assert_unchanged_except(&stalled, &snapshot(&world), &[]);

    let outcome = root
        .copy_volume_dir(&dir("src"), &staging(), &no_progress, &never())
        .await
        .unwrap();
    assert_eq!(outcome.start, CopyStart::DiscardedPartial);
    assert!(!partial.exists());
    root.finish_copy(&staging(), &dir("clone"), &perms(), &never())
        .await
        .unwrap();
    assert_same_tree(&world.in_root("src"), &world.in_root("clone"), &[]);
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &[
            "root/clone",
            "root/healthy",
            "root/.nfs-provisioner-staging",
        ],
    );
}

// ---- finishing, discarding, refusing ----------------------------------------------------

#[tokio::test]
async fn finishing_never_replaces_anything_but_an_empty_directory() {
    let world = World::new();
    fs::create_dir_all(world.in_root("src")).unwrap();
    fs::write(world.in_root("src/data"), b"cloned").unwrap();
    fs::create_dir_all(world.in_root("taken")).unwrap();
    fs::write(world.in_root("taken/keep"), b"existing data").unwrap();
    fs::create_dir_all(world.in_root("empty")).unwrap();
    symlink(&world.outside, world.in_root("link")).unwrap();
    fs::write(world.in_root("file"), b"a file").unwrap();
    let before = snapshot(&world);
    let root = open(&world).await;
    root.copy_volume_dir(&dir("src"), &staging(), &no_progress, &never())
        .await
        .unwrap();

    for occupied in ["taken", "link", "file"] {
        let err = root
            .finish_copy(&staging(), &dir(occupied), &perms(), &never())
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::DestinationExists { .. }),
            "{occupied}: {err}"
        );
        assert!(err.to_string().contains("stays staged"), "{err}");
    }
    assert_eq!(
        root.staged_copies(&never()).await.unwrap(),
        vec![StagedCopy {
            staging: staging(),
            complete: true
        }]
    );
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &["root/.nfs-provisioner-staging"],
    );

    assert_eq!(
        root.finish_copy(&staging(), &dir("empty"), &perms(), &never())
            .await
            .unwrap(),
        FinishOutcome::Finished {
            replaced_empty_directory: true
        }
    );
    assert_eq!(fs::read(world.in_root("empty/data")).unwrap(), b"cloned");
    // Finished: nothing staged any more.
    assert_eq!(
        root.finish_copy(&staging(), &dir("empty"), &perms(), &never())
            .await
            .unwrap(),
        FinishOutcome::NothingStaged {
            destination_exists: true
        }
    );
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &["root/empty", "root/.nfs-provisioner-staging"],
    );
}

#[tokio::test]
async fn staged_copies_are_listed_and_discarded() {
    let world = World::new();
    fs::create_dir_all(world.in_root("src/sub")).unwrap();
    fs::write(world.in_root("src/sub/f"), b"x").unwrap();
    let root = open(&world).await;
    let other = CloneStaging::for_claim("0b1c2d3e-0000-4000-8000-000000000002").unwrap();
    root.copy_volume_dir(&dir("src"), &staging(), &no_progress, &never())
        .await
        .unwrap();
    // An incomplete copy of another claim, and junk nobody should have put there.
    fs::create_dir_all(world.in_root(&format!("{STAGING}/{}.partial/half", other.key()))).unwrap();
    fs::write(world.in_root(&format!("{STAGING}/not a uid")), b"junk").unwrap();
    let before = snapshot(&world);

    let mut expected = vec![
        StagedCopy {
            staging: staging(),
            complete: true,
        },
        StagedCopy {
            staging: other.clone(),
            complete: false,
        },
    ];
    expected.sort();
    assert_eq!(root.staged_copies(&never()).await.unwrap(), expected);
    for s in [&staging(), &other] {
        assert_eq!(
            root.discard_copy(s, &never()).await.unwrap(),
            RemoveOutcome::Removed
        );
        assert_eq!(
            root.discard_copy(s, &never()).await.unwrap(),
            RemoveOutcome::AlreadyGone
        );
    }
    assert!(root.staged_copies(&never()).await.unwrap().is_empty());
    assert!(world.in_root(&format!("{STAGING}/not a uid")).exists());
    assert_unchanged_except(
        &before,
        &snapshot(&world),
        &[
            &format!("root/{STAGING}/{UID}"),
            &format!("root/{STAGING}/{}.partial", other.key()),
        ],
    );
}

#[tokio::test]
async fn unsafe_sources_and_staging_places_are_refused_untouched() {
    let world = World::new();
    fs::create_dir_all(world.in_root("real")).unwrap();
    symlink(&world.outside, world.in_root("linked")).unwrap();
    symlink(world.in_root("real"), world.in_root("linked-inside")).unwrap();
    let before = snapshot(&world);
    let root = open(&world).await;
    for (source, needle) in [
        ("missing", "does not exist"),
        ("linked", "symbolic link"),
        ("linked-inside", "symbolic link"),
    ] {
        let err = root
            .copy_volume_dir(&dir(source), &staging(), &no_progress, &never())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{source}: {err}");
    }
    assert_unchanged_except(&before, &snapshot(&world), &[]);

    // The staging directory planted as a symlink to outside the root is not followed.
    symlink(&world.outside, world.in_root(STAGING)).unwrap();
    let before = snapshot(&world);
    let err = root
        .copy_volume_dir(&dir("real"), &staging(), &no_progress, &never())
        .await
        .unwrap_err();
    assert_eq!(err.label(), "unsafe_path", "{err}");
    assert_eq!(
        root.discard_copy(&staging(), &never())
            .await
            .unwrap_err()
            .label(),
        "unsafe_path"
    );
    assert_unchanged_except(&before, &snapshot(&world), &[]);

    for bad in ["", "../x", "a/b", ".", "x.partial", &"a".repeat(65)] {
        assert!(CloneStaging::for_claim(bad).is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn a_mount_point_inside_the_source_is_not_crossed() {
    let world = World::new();
    let src = world.in_root("src");
    fs::create_dir_all(src.join("mnt")).unwrap();
    fs::write(src.join("file"), b"copied").unwrap();
    // The test runs in a private mount namespace (scripts/sandbox-run).
    nix::mount::mount(
        Some("tmpfs"),
        &src.join("mnt"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    fs::write(src.join("mnt/other-fs"), b"on another file system").unwrap();
    let before = snapshot(&world);

    let outcome = clone(&open(&world).await, "src", "clone").await;

    nix::mount::umount(&src.join("mnt")).unwrap();
    assert_eq!(outcome.progress.skipped, 1);
    assert_eq!(outcome.notes[0].kind, CopyNoteKind::MountPoint);
    assert_eq!(outcome.notes[0].path, "mnt");
    assert!(!world.in_root("clone/mnt").exists());
    assert_eq!(fs::read(world.in_root("clone/file")).unwrap(), b"copied");
    let mut before = before;
    before.retain(|p, _| !p.starts_with("root/src/mnt"));
    let mut after = snapshot(&world);
    after.retain(|p, _| !p.starts_with("root/src/mnt"));
    assert_unchanged_except(
        &before,
        &after,
        &["root/clone", "root/.nfs-provisioner-staging"],
    );
}

/// Drops `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH` and `CAP_FOWNER` from the calling
/// thread's effective set: from then on it is held to file modes like a non-root provisioner,
/// or root squashed by an NFS server, that owns the files.
fn drop_override_capabilities() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a version 3 header and two data words, as the ABI defines;
    // pid 0 is the calling thread.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !((1 << 1) | (1 << 2) | (1 << 3));
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            0
        );
    }
}

/// A staged copy of read-only directories (0555, 0500: modes copied from the source) can be
/// thrown away by an owner held to file modes, as a non-root provisioner or root squashed by
/// the server is: otherwise an interrupted clone of such a tree could never start over.
#[tokio::test]
async fn a_staged_copy_of_read_only_directories_is_discarded_by_an_unprivileged_owner() {
    let world = World::new();
    fs::create_dir_all(world.in_root("src/ro/deeper")).unwrap();
    fs::write(world.in_root("src/ro/deeper/f"), b"x").unwrap();
    fs::write(world.in_root("src/ro/g"), b"y").unwrap();
    for (rel, mode) in [("src/ro/deeper", 0o555), ("src/ro", 0o500), ("src", 0o555)] {
        fs::set_permissions(world.in_root(rel), fs::Permissions::from_mode(mode)).unwrap();
    }
    let root = open_hooked(&world, StorageOptions::default(), |op, _| {
        if op == "discard copy" {
            drop_override_capabilities();
        }
    })
    .await;
    root.copy_volume_dir(&dir("src"), &staging(), &no_progress, &never())
        .await
        .unwrap();
    let staged_mode = |rel: &str| {
        fs::symlink_metadata(world.in_root(&format!("{STAGING}/{UID}/{rel}")))
            .unwrap()
            .mode()
            & 0o7777
    };
    assert_eq!(staged_mode("ro"), 0o500, "the copy keeps the modes");
    assert_eq!(
        root.discard_copy(&staging(), &never()).await.unwrap(),
        RemoveOutcome::Removed
    );
    assert!(!world.in_root(&format!("{STAGING}/{UID}")).exists());
    // The source is untouched.
    let mode = |rel: &str| fs::metadata(world.in_root(rel)).unwrap().mode() & 0o7777;
    assert_eq!(
        (mode("src"), mode("src/ro"), mode("src/ro/deeper")),
        (0o555, 0o500, 0o555)
    );
    assert_eq!(fs::read(world.in_root("src/ro/deeper/f")).unwrap(), b"x");
}

/// A source directory being written to can list a name twice; the second time finds the
/// name already in the copy. The copy takes it as copied and goes on instead of failing.
#[tokio::test]
async fn a_name_listed_twice_by_the_source_is_copied_once() {
    let world = World::new();
    fs::create_dir_all(world.in_root("src/d")).unwrap();
    for name in ["a", "b", "c"] {
        fs::write(world.in_root(&format!("src/{name}")), name).unwrap();
    }
    fs::write(world.in_root("src/d/inner"), b"inner").unwrap();
    symlink("a", world.in_root("src/l")).unwrap();
    let partial = world.in_root(&format!("{STAGING}/{UID}.partial"));
    // Stand in for the first listing of each name: it is in the copy already, as the copy
    // would have made it, when the entry comes.
    let (p, src) = (partial.clone(), world.in_root("src"));
    let root = open_hooked(&world, StorageOptions::default(), move |op, path| {
        if op != "copy_entry" {
            return;
        }
        let rel = path.strip_prefix("src/").unwrap_or(path);
        match rel {
            "b" => fs::copy(src.join("b"), p.join("b")).map(|_| ()).unwrap(),
            "d" => fs::create_dir(p.join("d")).unwrap(),
            "l" => symlink("a", p.join("l")).unwrap(),
            _ => {}
        }
    })
    .await;
    let outcome = root
        .copy_volume_dir(&dir("src"), &staging(), &no_progress, &never())
        .await
        .unwrap();
    assert!(outcome.notes.is_empty(), "{:?}", outcome.notes);
    let copy = world.in_root(&format!("{STAGING}/{UID}"));
    for name in ["a", "b", "c"] {
        assert_eq!(fs::read(copy.join(name)).unwrap(), name.as_bytes());
    }
    assert_eq!(fs::read_link(copy.join("l")).unwrap(), Path::new("a"));
    assert!(copy.join("d").is_dir());
}

/// A staging directory opened up on the server (mode 0777) is closed again before a copy is
/// built in it: half-built copies of a volume are not for other users of the export.
#[tokio::test]
async fn a_staging_directory_opened_up_to_others_is_closed_again() {
    let world = World::new();
    fs::create_dir_all(world.in_root("src")).unwrap();
    fs::write(world.in_root("src/secret"), b"s").unwrap();
    fs::create_dir(world.in_root(STAGING)).unwrap();
    fs::set_permissions(world.in_root(STAGING), fs::Permissions::from_mode(0o777)).unwrap();
    let root = open(&world).await;
    root.copy_volume_dir(&dir("src"), &staging(), &no_progress, &never())
        .await
        .unwrap();
    let mode = fs::metadata(world.in_root(STAGING)).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700);
}
