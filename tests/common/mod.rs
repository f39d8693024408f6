//! Shared helpers for the file-system integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

/// Panics unless running under `scripts/sandbox-run` (read-only `/`, private TMPDIR).
/// Every test that creates or deletes under a root calls this first.
pub fn require_sandbox() {
    assert_eq!(
        std::env::var("NFS_PROVISIONER_SANDBOXED").as_deref(),
        Ok("1"),
        "file-system tests must run under scripts/sandbox-run (cargo test does this)"
    );
}

/// A temporary "world": `root/` (the NFS root stand-in), `outside/` with canaries that
/// symlinks point at, and `root-sibling/` whose name shares the root's prefix.
pub struct World {
    _tmp: tempfile::TempDir,
    pub base: PathBuf,
    pub root: PathBuf,
    pub outside: PathBuf,
    /// A tmpfs is mounted on `base` (in the sandbox's private mount namespace).
    pub on_tmpfs: bool,
}

impl Drop for World {
    fn drop(&mut self) {
        if self.on_tmpfs {
            let _ = nix::mount::umount2(&self.base, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl World {
    pub fn new() -> World {
        Self::build(false)
    }

    /// Like [`World::new`] on a fresh tmpfs when the sandbox allows mounting one (it runs in
    /// a private mount namespace), for tests that create millions of files: the scratch
    /// file system may create them at a tenth of the speed. Falls back to [`World::new`].
    pub fn new_on_tmpfs() -> World {
        Self::build(true)
    }

    fn build(want_tmpfs: bool) -> World {
        require_sandbox();
        let tmp = tempfile::Builder::new()
            .prefix("world")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let base = tmp.path().to_path_buf();
        let on_tmpfs = want_tmpfs
            && nix::mount::mount(
                Some("tmpfs"),
                &base,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some("mode=0700"),
            )
            .is_ok();
        let root = base.join("root");
        let outside = base.join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(outside.join("dir/nested")).unwrap();
        fs::write(outside.join("canary.txt"), b"do not touch").unwrap();
        fs::write(outside.join("dir/secret"), b"secret").unwrap();
        fs::write(outside.join("dir/nested/deep"), b"deep").unwrap();
        fs::create_dir(base.join("root-sibling")).unwrap();
        fs::write(base.join("root-sibling/canary"), b"sibling").unwrap();
        World {
            _tmp: tmp,
            base,
            root,
            outside,
            on_tmpfs,
        }
    }

    pub fn in_root(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Plants a symlink at `rel` (beneath the root) pointing at `target`.
    pub fn plant_symlink(&self, rel: &str, target: &Path) {
        let at = self.in_root(rel);
        if let Some(parent) = at.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        symlink(target, at).unwrap();
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut entries = BTreeMap::new();
        walk(&self.base, &self.base, &mut entries);
        Snapshot { entries }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(u64),
    Symlink(PathBuf),
    Other(u32),
}

/// path (relative to the world) -> (kind with content hash / link target, mode, uid, gid)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub entries: BTreeMap<PathBuf, Entry>,
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let md = fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_symlink() {
            Kind::Symlink(fs::read_link(&path).unwrap())
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            let mut h = DefaultHasher::new();
            fs::read(&path).unwrap().hash(&mut h);
            Kind::File(h.finish())
        } else {
            Kind::Other(md.mode() & 0o170000)
        };
        out.insert(
            path.strip_prefix(base).unwrap().to_path_buf(),
            Entry {
                kind: kind.clone(),
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
            },
        );
        if kind == Kind::Dir {
            walk(base, &path, out);
        }
    }
}

impl Snapshot {
    /// Asserts that every difference lies inside the volume's own directory `volume`
    /// (a path beneath the root, relative to it), or is the addition or removal of one of
    /// its ancestors beneath the root (template parents created for it or cleaned up after
    /// it); an ancestor present on both sides must be unchanged. `None`: nothing may change.
    pub fn assert_only_volume_changed(&self, after: &Snapshot, volume: Option<&str>) {
        let volume = volume.map(|v| Path::new("root").join(v));
        let inside = |p: &Path| volume.as_ref().is_some_and(|v| p.starts_with(v));
        let is_new_ancestor = |p: &Path| {
            volume
                .as_ref()
                .is_some_and(|v| v.starts_with(p) && p != Path::new("root"))
        };
        for (path, before) in &self.entries {
            if inside(path) || (is_new_ancestor(path) && !after.entries.contains_key(path)) {
                continue;
            }
            assert_eq!(
                after.entries.get(path),
                Some(before),
                "{} changed or vanished outside the volume directory",
                path.display()
            );
        }
        for path in after.entries.keys() {
            if self.entries.contains_key(path) || inside(path) || is_new_ancestor(path) {
                continue;
            }
            panic!("{} appeared outside the volume directory", path.display());
        }
    }

    pub fn assert_unchanged(&self, after: &Snapshot) {
        self.assert_only_volume_changed(after, None);
    }
}

/// A count from environment variable `var` (for a bigger or smaller run by hand), or `default`.
pub fn count_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{var} is a number")))
        .unwrap_or(default)
}

/// A directory opened for `*at` calls.
pub fn open_dir(path: &Path) -> std::os::fd::OwnedFd {
    use nix::fcntl::{OFlag, open};
    open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap()
}

/// Creates `dir` and `count` empty files `<prefix><n>` in it, one mknodat each (fast).
pub fn create_files(dir: &Path, prefix: &str, count: u64) {
    use nix::sys::stat::{Mode, SFlag, mknodat};
    use std::os::fd::AsFd;
    fs::create_dir_all(dir).unwrap();
    let fd = open_dir(dir);
    for n in 0..count {
        let name = std::ffi::CString::new(format!("{prefix}{n}")).unwrap();
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

/// A `KiB` field of /proc/self/status (`VmHWM:`, `VmRSS:`).
pub fn status_kib(field: &str) -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Blocks every fault-hook call that waits on it until `open()`, like a system call hung in
/// the kernel.
#[derive(Clone)]
pub struct Gate(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate(std::sync::Arc::new((
            std::sync::Mutex::new(false),
            std::sync::Condvar::new(),
        )))
    }

    pub fn wait(&self) {
        let (lock, cvar) = &*self.0;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cvar.wait(open).unwrap();
        }
    }

    pub fn open(&self) {
        let (lock, cvar) = &*self.0;
        *lock.lock().unwrap() = true;
        cvar.notify_all();
    }
}

/// Waits (up to 10 s) until no operation of `root` is stuck in the kernel: an abandoned
/// call has returned once its gate opened.
pub async fn wait_until_no_stuck(root: &nfs_provisioner::storage::NfsRoot) {
    for _ in 0..500 {
        if root.stuck_operations() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!(
        "stuck operations never returned: {}",
        root.stuck_operations()
    );
}
