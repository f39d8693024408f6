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

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, unlinkat};

use super::removal::{Flow, Removal};
use super::{ArchiveOutcome, CreateOutcome, OpContext, RemoveOutcome, StorageError};
use crate::parameters::DirectoryPermissions;
use crate::planning::{VolumeDirectory, archive_directory_with_suffix};

/// Directory levels held open at once while removing a tree (see `super::removal`).
pub(crate) const MAX_OPEN_DEPTH: usize = 32;
/// Numeric archive suffixes tried before falling back to a time stamp.
const ARCHIVE_NUMERIC_SUFFIXES: usize = 99;
/// Bounded retries when a concurrent rename/rmdir races with path resolution.
pub(crate) const RESOLVE_RETRIES: usize = 8;

static OPENAT2_UNSUPPORTED: AtomicBool = AtomicBool::new(false);
static RENAMEAT2_UNSUPPORTED: AtomicBool = AtomicBool::new(false);
pub(crate) static UNIQUE_COUNTER: AtomicU64 = AtomicU64::new(0);

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

pub(crate) fn unsafe_path(path: &str, reason: impl Into<String>) -> StorageError {
    StorageError::Unsafe {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

pub(crate) fn file_type(st: &FileStat) -> SFlag {
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

/// Creates `dir` (with `perms`) and any missing parents (with `parent_perms`). Only
/// directories created here are chmod/chown'ed.
pub(crate) fn create(
    root: BorrowedFd<'_>,
    dir: &VolumeDirectory,
    perms: &DirectoryPermissions,
    parent_perms: &DirectoryPermissions,
    ctx: &OpContext,
) -> Result<CreateOutcome, StorageError> {
    let mut attempt = 0;
    loop {
        match create_once(root, dir, perms, parent_perms, ctx) {
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
    volume_perms: &DirectoryPermissions,
    parent_perms: &DirectoryPermissions,
    ctx: &OpContext,
) -> Result<CreateOutcome, Retry> {
    let mut parent = open_dir(root, ".", OFlag::O_PATH).map_err(|e| fs_error("open", ".", e))?;
    let mut path = String::new();
    let mut created_last = false;
    let last = dir.components().count() - 1;
    for (index, component) in dir.components().enumerate() {
        ctx.check()?;
        let perms = if index == last {
            volume_perms
        } else {
            parent_perms
        };
        // The mode is applied with fchmod afterwards because mkdir's mode is masked by umask.
        let mode = Mode::from_bits_truncate(perms.mode);
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
            if let Err(e) = configure_new_directory(child.as_fd(), perms, mode, &path) {
                // Leave no half-configured directory behind: the next attempt would find it,
                // take it for one that existed before the volume and never fix its owner or
                // mode. It was created by this call and is empty unless something wrote into
                // it meanwhile, in which case rmdir fails and it stays (with the error).
                drop(child);
                if let Err(rmdir) = unlinkat(&parent, component, UnlinkatFlags::RemoveDir) {
                    tracing::warn!(path = %path, error = %rmdir, "could not remove the directory whose owner or mode could not be set");
                }
                return Err(e.into());
            }
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

/// Gives a directory this call created its owner (when configured) and mode.
fn configure_new_directory(
    dir: BorrowedFd<'_>,
    perms: &DirectoryPermissions,
    mode: Mode,
    path: &str,
) -> Result<(), StorageError> {
    if perms.uid.is_some() || perms.gid.is_some() {
        match fchown(
            dir,
            perms.uid.map(Uid::from_raw),
            perms.gid.map(Gid::from_raw),
        ) {
            Ok(()) => {}
            // EPERM: no CHOWN capability (or not a member of the group); EINVAL: the id is
            // not mapped in the process's user namespace.
            Err(errno @ (Errno::EPERM | Errno::EINVAL)) => {
                return Err(StorageError::OwnerNotPermitted {
                    path: path.to_owned(),
                    uid: perms.uid,
                    gid: perms.gid,
                    process_uid: nix::unistd::geteuid().as_raw(),
                    source: std::io::Error::from_raw_os_error(errno as i32),
                });
            }
            Err(e) => return Err(fs_error("chown", path, e)),
        }
    }
    fchmod(dir, mode).map_err(|e| fs_error("chmod", path, e))
}

/// Opens the volume directory for removal or renaming, or reports it gone.
///
/// A symlink or non-directory in its place is refused (left untouched) so that an admin
/// sees what happened; a different file system mounted there is refused too.
pub(crate) fn open_volume(
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

/// How one slice of a delete ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeleteStep {
    Finished(RemoveOutcome),
    /// The slice's time ran out after removing `removed` entries; call again to continue.
    InProgress {
        removed: u64,
    },
}

/// Removes the volume directory tree, then empty template parents up to the root (stopping
/// at any directory in `keep`). Works in slices: see `super::removal`.
pub(crate) fn delete(
    root: BorrowedFd<'_>,
    root_dev: u64,
    dir: &VolumeDirectory,
    keep: &[VolumeDirectory],
    ctx: &OpContext,
) -> Result<DeleteStep, StorageError> {
    ctx.check()?;
    let Some((parent, volume, st)) = open_volume(root, root_dev, dir)? else {
        tracing::debug!(dir = %dir, "volume directory already gone");
        remove_empty_parents(root, dir, keep, ctx);
        return Ok(DeleteStep::Finished(RemoveOutcome::AlreadyGone));
    };
    let mut removal = Removal::new(volume.as_fd(), st.st_dev, ctx);
    let flow = removal.empty_volume(dir.as_str())?;
    let removed = removal.removed();
    if flow == Flow::Paused {
        return Ok(DeleteStep::InProgress { removed });
    }
    drop(volume);
    ctx.check()?;
    match unlinkat(&parent, dir.name(), UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        // Something was written into it meanwhile: the next slice removes that too. (If this
        // slice removed nothing, the error is returned instead of looping without progress.)
        Err(Errno::ENOTEMPTY | Errno::EEXIST) if removed > 0 => {
            return Ok(DeleteStep::InProgress { removed });
        }
        Err(e) => return Err(fs_error("rmdir", dir.as_str(), e)),
    }
    tracing::debug!(dir = %dir, "removed volume directory");
    remove_empty_parents(root, dir, keep, ctx);
    Ok(DeleteStep::Finished(RemoveOutcome::Removed))
}

/// Renames without ever replacing an existing entry.
///
/// Uses `renameat2(RENAME_NOREPLACE)`. File systems that do not support it (the Linux NFS
/// client returns EINVAL) fall back to reserving the target with `mkdirat` (atomic, fails
/// if anything exists) and renaming onto that empty reservation, which rename(2) allows
/// for directories; anything that lands in the reservation meanwhile makes it fail.
pub(crate) fn rename_noreplace<P1, P2>(
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
/// Stops at (never removes) a parent listed in `keep`: an empty directory may be another
/// volume's directory. Best effort: stops at the first parent that is not empty or cannot
/// be removed; failures are logged, not returned, because the volume itself is handled.
pub(crate) fn remove_empty_parents(
    root: BorrowedFd<'_>,
    dir: &VolumeDirectory,
    keep: &[VolumeDirectory],
    ctx: &OpContext,
) {
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
        if keep.iter().any(|k| k.as_str() == parent_path) {
            tracing::debug!(path = %parent_path, "parent is another volume's directory; kept");
            return;
        }
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
    keep: &[VolumeDirectory],
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
        tracing::debug!(dir = %dir, "volume directory already gone; nothing to archive");
        remove_empty_parents(root, dir, keep, ctx);
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
                tracing::debug!(dir = %dir, archive = %target, "archived volume directory");
                remove_empty_parents(root, dir, keep, ctx);
                return Ok(ArchiveOutcome::Archived { to: target });
            }
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => continue,
            Err(Errno::ENOENT) => {
                tracing::debug!(dir = %dir, "volume directory vanished while archiving");
                remove_empty_parents(root, dir, keep, ctx);
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

/// Whether anything (of any type, not followed) exists at `dir`.
pub(crate) fn entry_exists(
    root: BorrowedFd<'_>,
    dir: &VolumeDirectory,
) -> Result<bool, StorageError> {
    let parent_path = parent_rel(dir);
    let parent = match open_dir(root, &parent_path, OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(fs_error("open", &parent_path, e)),
    };
    match entry_at(parent.as_fd(), dir.name()).map_err(|e| fs_error("stat", dir.as_str(), e))? {
        Entry::Missing => Ok(false),
        Entry::Directory | Entry::Symlink | Entry::Other => Ok(true),
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
