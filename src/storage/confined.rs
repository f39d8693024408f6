//! Blocking file-system operations confined beneath the root directory handle.
//!
//! Every path is resolved relative to the root fd with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` (component-wise `openat(O_NOFOLLOW)` on
//! kernels without openat2), and every modifying call (`mkdirat`, `unlinkat`, `renameat2`,
//! `fchmod`, `fchown`) acts on a single name relative to a directory fd opened that way, or
//! on an fd of the directory itself. What was opened is re-checked with `fstat` to be a
//! directory. Symbolic links are never followed: inside a tree being removed they are
//! unlinked as entries; in place of the volume directory or of a parent they make the
//! operation fail as unsafe, leaving them untouched.
//!
//! These functions run on a worker thread (see `super::NfsRoot`) and call
//! [`OpContext::check`] between system calls, so an abandoned operation stops at the next
//! syscall boundary. Every operation is idempotent: a later call continues the work.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use super::{ArchiveOutcome, CreateOutcome, OpContext, RemoveOutcome, StorageError};
use crate::parameters::DirectoryPermissions;
use crate::planning::{VolumeDirectory, archive_directory_with_suffix};

/// Directory fds held open at once while removing a tree; deeper subtrees are moved up to
/// the volume directory and removed in a later pass.
const MAX_OPEN_DEPTH: usize = 32;
/// Numeric archive suffixes tried before falling back to a time stamp.
const ARCHIVE_NUMERIC_SUFFIXES: usize = 99;
/// Bounded retries when a concurrent rename/rmdir races with path resolution.
const RESOLVE_RETRIES: usize = 8;

static OPENAT2_UNSUPPORTED: AtomicBool = AtomicBool::new(false);
static RENAMEAT2_UNSUPPORTED: AtomicBool = AtomicBool::new(false);
static UNIQUE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Maps an errno from a confined call to a clear error about `path` (relative to the root).
pub(crate) fn fs_error(op: &'static str, path: &str, errno: Errno) -> StorageError {
    let unsafe_reason = match errno {
        Errno::ELOOP => Some("a path component is a symbolic link, which is never followed"),
        Errno::EXDEV => Some("resolution would leave the NFS root"),
        Errno::ENOTDIR => Some("a path component is not a directory (or is a symbolic link)"),
        _ => None,
    };
    match unsafe_reason {
        Some(reason) => StorageError::Unsafe {
            path: path.to_owned(),
            reason: reason.to_owned(),
        },
        None => StorageError::Io {
            op,
            path: path.to_owned(),
            source: std::io::Error::from_raw_os_error(errno as i32),
        },
    }
}

fn unsafe_path(path: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Unsafe {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Opens directory `rel` (`.` or `a/b`) beneath `dirfd`, never following a symlink and never
/// leaving `dirfd`, and verifies that the result is a directory.
pub(crate) fn open_dir(dirfd: BorrowedFd<'_>, rel: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = if OPENAT2_UNSUPPORTED.load(Ordering::Relaxed) {
        open_componentwise(dirfd, rel, flags)?
    } else {
        let how = OpenHow::new().flags(flags).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        let mut attempt = 0;
        loop {
            match openat2(dirfd, rel, how) {
                // The kernel saw a concurrent rename and could not rule out an escape.
                Err(Errno::EAGAIN) if attempt < RESOLVE_RETRIES => attempt += 1,
                Err(Errno::ENOSYS) => {
                    OPENAT2_UNSUPPORTED.store(true, Ordering::Relaxed);
                    break open_componentwise(dirfd, rel, flags)?;
                }
                other => break other?,
            }
        }
    };
    if file_type(&fstat(&fd)?) != SFlag::S_IFDIR {
        return Err(Errno::ENOTDIR);
    }
    Ok(fd)
}

/// Fallback for kernels without openat2: one `openat(O_NOFOLLOW|O_DIRECTORY)` per
/// component. Components of a `VolumeDirectory` are never `..`, so this stays beneath.
pub(crate) fn open_componentwise(
    dirfd: BorrowedFd<'_>,
    rel: &str,
    flags: OFlag,
) -> Result<OwnedFd, Errno> {
    let walk_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let components: Vec<&str> = rel.split('/').filter(|c| *c != ".").collect();
    if components.iter().any(|c| c.is_empty() || *c == "..") {
        return Err(Errno::EXDEV);
    }
    let Some((last, walk)) = components.split_last() else {
        return openat(dirfd, ".", flags, Mode::empty());
    };
    let mut current: Option<OwnedFd> = None;
    for component in walk {
        let base = current.as_ref().map_or(dirfd, |fd| fd.as_fd());
        let next = openat(base, *component, walk_flags, Mode::empty())?;
        if file_type(&fstat(&next)?) != SFlag::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        current = Some(next);
    }
    let base = current.as_ref().map_or(dirfd, |fd| fd.as_fd());
    openat(base, *last, flags, Mode::empty())
}

fn parent_rel(dir: &VolumeDirectory) -> String {
    dir.parent()
        .map_or_else(|| ".".to_owned(), |p| p.as_str().to_owned())
}

/// What sits at a name inside a directory, without following it.
enum Entry {
    Missing,
    Directory,
    Symlink,
    Other,
}

fn entry_at(parent: BorrowedFd<'_>, name: &str) -> Result<Entry, Errno> {
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(match file_type(&st) {
            SFlag::S_IFDIR => Entry::Directory,
            SFlag::S_IFLNK => Entry::Symlink,
            _ => Entry::Other,
        }),
        Err(Errno::ENOENT) => Ok(Entry::Missing),
        Err(e) => Err(e),
    }
}

/// Creates `dir` and any missing parents. Only directories created here get `perms`.
pub(crate) fn create(
    root: BorrowedFd<'_>,
    dir: &VolumeDirectory,
    perms: &DirectoryPermissions,
    ctx: &OpContext,
) -> Result<CreateOutcome, StorageError> {
    let mut attempt = 0;
    loop {
        match create_once(root, dir, perms, ctx) {
            // A parent was removed concurrently (empty-parent cleanup of another volume).
            Err(Retry::ParentVanished) if attempt < RESOLVE_RETRIES => attempt += 1,
            Err(Retry::ParentVanished) => {
                return Err(fs_error("create", dir.as_str(), Errno::ENOENT));
            }
            Err(Retry::Failed(e)) => return Err(e),
            Ok(outcome) => return Ok(outcome),
        }
    }
}

enum Retry {
    ParentVanished,
    Failed(StorageError),
}

impl From<StorageError> for Retry {
    fn from(e: StorageError) -> Self {
        Retry::Failed(e)
    }
}

fn create_once(
    root: BorrowedFd<'_>,
    dir: &VolumeDirectory,
    perms: &DirectoryPermissions,
    ctx: &OpContext,
) -> Result<CreateOutcome, Retry> {
    let mut parent = open_dir(root, ".", OFlag::O_PATH).map_err(|e| fs_error("open", ".", e))?;
    let mut path = String::new();
    let mut created_last = false;
    // The mode is applied with fchmod afterwards because mkdir's mode is masked by umask.
    let mode = Mode::from_bits_truncate(perms.mode);
    for component in dir.components() {
        ctx.check()?;
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(component);
        let created = match mkdirat(&parent, component, mode) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(Errno::ENOENT) => return Err(Retry::ParentVanished),
            Err(e) => return Err(fs_error("mkdir", &path, e).into()),
        };
        // No cancellation check between mkdir and chmod/chown: a half-configured new
        // directory would later be taken for an existing one and never fixed.
        let flags = if created {
            OFlag::O_RDONLY
        } else {
            OFlag::O_PATH
        };
        let child = match open_dir(parent.as_fd(), component, flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(Retry::ParentVanished),
            Err(e) => return Err(fs_error("open", &path, e).into()),
        };
        if created {
            if perms.uid.is_some() || perms.gid.is_some() {
                fchown(
                    &child,
                    perms.uid.map(Uid::from_raw),
                    perms.gid.map(Gid::from_raw),
                )
                .map_err(|e| fs_error("chown", &path, e))?;
            }
            fchmod(&child, mode).map_err(|e| fs_error("chmod", &path, e))?;
            tracing::debug!(path = %path, mode = format_args!("{:o}", perms.mode), "created directory");
        }
        created_last = created;
        parent = child;
    }
    Ok(if created_last {
        CreateOutcome::Created
    } else {
        CreateOutcome::AlreadyExisted
    })
}

/// Opens the volume directory for removal or renaming, or reports it gone.
///
/// A symlink or non-directory in its place is refused (left untouched) so that an admin
/// sees what happened; a different file system mounted there is refused too.
fn open_volume(
    root: BorrowedFd<'_>,
    root_dev: u64,
    dir: &VolumeDirectory,
) -> Result<Option<(OwnedFd, OwnedFd, FileStat)>, StorageError> {
    let parent_path = parent_rel(dir);
    let parent = match open_dir(root, &parent_path, OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(fs_error("open", &parent_path, e)),
    };
    match entry_at(parent.as_fd(), dir.name()).map_err(|e| fs_error("stat", dir.as_str(), e))? {
        Entry::Missing => return Ok(None),
        Entry::Directory => {}
        Entry::Symlink => {
            return Err(unsafe_path(
                dir.as_str(),
                "the volume directory has been replaced by a symbolic link; it is not followed and was left in place",
            ));
        }
        Entry::Other => {
            return Err(unsafe_path(
                dir.as_str(),
                "the volume directory has been replaced by something that is not a directory; left in place",
            ));
        }
    }
    let volume = match open_dir(parent.as_fd(), dir.name(), OFlag::O_RDONLY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(fs_error("open", dir.as_str(), e)),
    };
    let st = fstat(&volume).map_err(|e| fs_error("stat", dir.as_str(), e))?;
    if st.st_dev != root_dev {
        return Err(unsafe_path(
            dir.as_str(),
            "the volume directory is a mount point of another file system",
        ));
    }
    Ok(Some((parent, volume, st)))
}

/// Removes the volume directory tree, then empty template parents up to the root.
pub(crate) fn delete(
    root: BorrowedFd<'_>,
    root_dev: u64,
    dir: &VolumeDirectory,
    ctx: &OpContext,
) -> Result<RemoveOutcome, StorageError> {
    ctx.check()?;
    let Some((parent, volume, st)) = open_volume(root, root_dev, dir)? else {
        tracing::info!(dir = %dir, "volume directory already gone");
        remove_empty_parents(root, dir, ctx);
        return Ok(RemoveOutcome::AlreadyGone);
    };
    remove_contents(volume.as_fd(), st.st_dev, dir.as_str(), ctx)?;
    drop(volume);
    ctx.check()?;
    match unlinkat(&parent, dir.name(), UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(fs_error("rmdir", dir.as_str(), e)),
    }
    tracing::info!(dir = %dir, "removed volume directory");
    remove_empty_parents(root, dir, ctx);
    Ok(RemoveOutcome::Removed)
}

/// Removes everything inside `top` (a directory on device `dev`).
///
/// Never follows symlinks (they are unlinked as entries), never descends into another file
/// system (a mount point inside the volume is an error: we cannot and must not remove it).
/// Subtrees deeper than [`MAX_OPEN_DEPTH`] are renamed up into `top` and removed in a later
/// pass, so open fds stay bounded however deep the tree is.
pub(crate) fn remove_contents(
    top: BorrowedFd<'_>,
    dev: u64,
    path: &str,
    ctx: &OpContext,
) -> Result<(), StorageError> {
    loop {
        let moved_up = remove_level(top, top, dev, 1, path, ctx)?;
        if moved_up == 0 {
            return Ok(());
        }
    }
}

fn read_names(dir: BorrowedFd<'_>, path: &str) -> Result<Vec<CString>, StorageError> {
    // A fresh open file description each time, so reading starts at the first entry.
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fs_error("open", path, e))?;
    let mut handle = Dir::from_fd(fd).map_err(|e| fs_error("opendir", path, e))?;
    let mut names = Vec::new();
    for entry in handle.iter() {
        let entry = entry.map_err(|e| fs_error("readdir", path, e))?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

fn join(path: &str, name: &CStr) -> String {
    format!("{path}/{}", name.to_string_lossy())
}

fn remove_level(
    dir: BorrowedFd<'_>,
    top: BorrowedFd<'_>,
    dev: u64,
    depth: usize,
    path: &str,
    ctx: &OpContext,
) -> Result<usize, StorageError> {
    let mut moved_up = 0;
    for name in read_names(dir, path)? {
        ctx.check()?;
        ctx.fault_point("delete_entry", path);
        let st = match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(fs_error("stat", &join(path, &name), e)),
        };
        if file_type(&st) == SFlag::S_IFDIR {
            if st.st_dev != dev {
                return Err(unsafe_path(
                    &join(path, &name),
                    "a mount point inside the volume; not crossing into another file system",
                ));
            }
            if depth >= MAX_OPEN_DEPTH {
                move_up(dir, &name, top, &join(path, &name))?;
                moved_up += 1;
                continue;
            }
            let sub = match openat(
                dir,
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => continue,
                // Swapped for a symlink or file since the stat: remove it as an entry.
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    unlink_entry(dir, &name, UnlinkatFlags::NoRemoveDir, path)?;
                    continue;
                }
                Err(e) => return Err(fs_error("open", &join(path, &name), e)),
            };
            let sub_st = fstat(&sub).map_err(|e| fs_error("stat", &join(path, &name), e))?;
            if file_type(&sub_st) != SFlag::S_IFDIR || sub_st.st_dev != dev {
                return Err(unsafe_path(
                    &join(path, &name),
                    "changed into a mount point while being removed",
                ));
            }
            moved_up += remove_level(sub.as_fd(), top, dev, depth + 1, &join(path, &name), ctx)?;
            drop(sub);
            ctx.check()?;
            unlink_entry(dir, &name, UnlinkatFlags::RemoveDir, path)?;
        } else {
            unlink_entry(dir, &name, UnlinkatFlags::NoRemoveDir, path)?;
        }
    }
    Ok(moved_up)
}

fn unlink_entry(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: UnlinkatFlags,
    path: &str,
) -> Result<(), StorageError> {
    match unlinkat(dir, name, flags) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(fs_error("unlink", &join(path, name), e)),
    }
}

/// Renames a too-deep subdirectory up into the volume directory under a fresh name.
fn move_up(
    dir: BorrowedFd<'_>,
    name: &CStr,
    top: BorrowedFd<'_>,
    path: &str,
) -> Result<(), StorageError> {
    loop {
        let n = UNIQUE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let new_name = format!(".nfs-provisioner-deep-{}-{n}", std::process::id());
        match rename_noreplace(dir, name, top, new_name.as_str()) {
            Ok(()) => return Ok(()),
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => continue,
            Err(e) => return Err(fs_error("rename", path, e)),
        }
    }
}

/// Renames without ever replacing an existing entry.
///
/// Uses `renameat2(RENAME_NOREPLACE)`. File systems that do not support it (the Linux NFS
/// client returns EINVAL) fall back to reserving the target with `mkdirat` (atomic, fails
/// if anything exists) and renaming onto that empty reservation, which rename(2) allows
/// for directories; anything that lands in the reservation meanwhile makes it fail.
fn rename_noreplace<P1, P2>(
    old_dir: BorrowedFd<'_>,
    old: &P1,
    new_dir: BorrowedFd<'_>,
    new: &P2,
) -> Result<(), Errno>
where
    P1: ?Sized + nix::NixPath,
    P2: ?Sized + nix::NixPath,
{
    if !RENAMEAT2_UNSUPPORTED.load(Ordering::Relaxed) {
        let res = old.with_nix_path(|old_c| {
            new.with_nix_path(|new_c| {
                // SAFETY: both paths are valid NUL-terminated strings for the call's duration.
                unsafe {
                    libc::syscall(
                        libc::SYS_renameat2,
                        old_dir.as_raw_fd(),
                        old_c.as_ptr(),
                        new_dir.as_raw_fd(),
                        new_c.as_ptr(),
                        libc::RENAME_NOREPLACE,
                    )
                }
            })
        })??;
        match Errno::result(res) {
            Ok(_) => return Ok(()),
            Err(Errno::ENOSYS) => RENAMEAT2_UNSUPPORTED.store(true, Ordering::Relaxed),
            Err(Errno::EINVAL | Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(e),
        }
    }
    reserve_and_rename(old_dir, old, new_dir, new)
}

/// The `rename_noreplace` fallback: reserve `new` with mkdirat, then rename onto it.
pub(crate) fn reserve_and_rename<P1, P2>(
    old_dir: BorrowedFd<'_>,
    old: &P1,
    new_dir: BorrowedFd<'_>,
    new: &P2,
) -> Result<(), Errno>
where
    P1: ?Sized + nix::NixPath,
    P2: ?Sized + nix::NixPath,
{
    mkdirat(new_dir, new, Mode::from_bits_truncate(0o700))?;
    match renameat(old_dir, old, new_dir, new) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Best effort: drop our reservation if it is still empty.
            let _ = unlinkat(new_dir, new, UnlinkatFlags::RemoveDir);
            Err(match e {
                Errno::ENOTEMPTY => Errno::EEXIST,
                other => other,
            })
        }
    }
}

/// Removes the now-empty parent directories of `dir` up to (not including) the root.
///
/// Best effort: stops at the first parent that is not empty or cannot be removed; failures
/// are logged, not returned, because the volume itself is already handled.
pub(crate) fn remove_empty_parents(root: BorrowedFd<'_>, dir: &VolumeDirectory, ctx: &OpContext) {
    let components: Vec<&str> = dir.components().collect();
    for depth in (1..components.len()).rev() {
        if ctx.check().is_err() {
            return;
        }
        let grandparent = if depth == 1 {
            ".".to_owned()
        } else {
            components[..depth - 1].join("/")
        };
        let parent_path = components[..depth].join("/");
        let fd = match open_dir(root, &grandparent, OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => {
                tracing::warn!(path = %grandparent, error = %e, "not cleaning up parents");
                return;
            }
        };
        match unlinkat(&fd, components[depth - 1], UnlinkatFlags::RemoveDir) {
            Ok(()) => tracing::debug!(path = %parent_path, "removed empty parent directory"),
            Err(Errno::ENOENT) => {}
            Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::EBUSY) => return,
            Err(e) => {
                tracing::warn!(path = %parent_path, error = %e, "could not remove empty parent");
                return;
            }
        }
    }
}

/// Renames the volume directory to `archive` (or a suffixed variant), never replacing
/// anything, then removes empty template parents.
pub(crate) fn archive(
    root: BorrowedFd<'_>,
    root_dev: u64,
    dir: &VolumeDirectory,
    archive: &VolumeDirectory,
    ctx: &OpContext,
) -> Result<ArchiveOutcome, StorageError> {
    ctx.check()?;
    if archive == dir || archive.as_str().starts_with(&format!("{dir}/")) {
        return Err(unsafe_path(
            archive.as_str(),
            "the archive name lies inside the volume directory",
        ));
    }
    let Some((parent, volume, _)) = open_volume(root, root_dev, dir)? else {
        tracing::info!(dir = %dir, "volume directory already gone; nothing to archive");
        remove_empty_parents(root, dir, ctx);
        return Ok(ArchiveOutcome::AlreadyGone);
    };
    drop(volume);
    let archive_parent_path = parent_rel(archive);
    let archive_parent = open_dir(root, &archive_parent_path, OFlag::O_PATH)
        .map_err(|e| fs_error("open", &archive_parent_path, e))?;
    let attempts = ARCHIVE_NUMERIC_SUFFIXES + 2;
    for attempt in 0..attempts {
        ctx.check()?;
        let target = match attempt {
            0 => archive.clone(),
            n if n <= ARCHIVE_NUMERIC_SUFFIXES => {
                archive_directory_with_suffix(archive, &n.to_string())
            }
            _ => archive_directory_with_suffix(
                archive,
                &k8s_openapi::jiff::Timestamp::now()
                    .strftime("%Y%m%dT%H%M%S%.fZ")
                    .to_string(),
            ),
        };
        match rename_noreplace(
            parent.as_fd(),
            dir.name(),
            archive_parent.as_fd(),
            target.name(),
        ) {
            Ok(()) => {
                tracing::info!(dir = %dir, archive = %target, "archived volume directory");
                remove_empty_parents(root, dir, ctx);
                return Ok(ArchiveOutcome::Archived { to: target });
            }
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => continue,
            Err(Errno::ENOENT) => {
                tracing::info!(dir = %dir, "volume directory vanished while archiving");
                remove_empty_parents(root, dir, ctx);
                return Ok(ArchiveOutcome::AlreadyGone);
            }
            Err(e) => return Err(fs_error("rename", dir.as_str(), e)),
        }
    }
    Err(StorageError::ArchiveNameUnavailable {
        base: archive.to_string(),
        attempts,
    })
}

/// Whether the volume directory exists (as a real directory).
pub(crate) fn exists(root: BorrowedFd<'_>, dir: &VolumeDirectory) -> Result<bool, StorageError> {
    let parent_path = parent_rel(dir);
    let parent = match open_dir(root, &parent_path, OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(fs_error("open", &parent_path, e)),
    };
    match entry_at(parent.as_fd(), dir.name()).map_err(|e| fs_error("stat", dir.as_str(), e))? {
        Entry::Missing => Ok(false),
        Entry::Directory => Ok(true),
        Entry::Symlink => Err(unsafe_path(
            dir.as_str(),
            "the volume directory is a symbolic link",
        )),
        Entry::Other => Err(unsafe_path(
            dir.as_str(),
            "the volume directory is not a directory",
        )),
    }
}

/// Health check: the root is a directory and a marker file can be created and removed.
pub(crate) fn probe(root: BorrowedFd<'_>) -> Result<(), StorageError> {
    let st = fstat(root).map_err(|e| fs_error("stat", ".", e))?;
    if file_type(&st) != SFlag::S_IFDIR {
        return Err(unsafe_path(".", "the NFS root is not a directory"));
    }
    let n = UNIQUE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let marker = format!(".nfs-provisioner-probe-{}-{n}", std::process::id());
    let fd = openat(
        root,
        marker.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| fs_error("create probe marker", &marker, e))?;
    drop(fd);
    unlinkat(root, marker.as_str(), UnlinkatFlags::NoRemoveDir)
        .map_err(|e| fs_error("remove probe marker", &marker, e))
}
