//! Where a cloned claim's copy is built, and how it is put into place or thrown away.
//!
//! Naming: one directory per claim in [`STAGING_DIRECTORY`] directly beneath the root
//! (mode 0700, the provisioner's alone; planning never hands that name to a volume, so a
//! copy is never taken for a volume and never lands inside one). The copy is built at
//! `.nfs-provisioner-staging/<claim-uid>.partial` and renamed within that directory to
//! `.nfs-provisioner-staging/<claim-uid>` in the copy's last step. So:
//!
//! * `<uid>.partial` is always incomplete: a restart throws it away and copies again;
//! * `<uid>` is always a complete copy: it only ever has to be renamed into place;
//! * a claim UID (1 to 64 of `[0-9a-zA-Z-]`) never contains `.`, so the two never collide,
//!   and orphan cleanup finds both by listing one directory ([`list`]).
//!
//! Only [`finish`] makes a copy visible at a volume path, by one rename that never
//! replaces a non-empty directory.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::confined::{
    self, RESOLVE_RETRIES, file_type, fs_error, open_dir, rename_noreplace, unsafe_path,
};
use super::dir_stream::DirStream;
use super::journal::check_key;
use super::removal::{Flow, Removal};
use super::{OpContext, StorageError};
use crate::parameters::DirectoryPermissions;
use crate::planning::{STAGING_DIRECTORY, VolumeDirectory};

const PARTIAL_SUFFIX: &str = ".partial";

/// The staging place of one cloned claim's copy, named by the claim's UID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CloneStaging {
    key: String,
}

impl CloneStaging {
    /// The staging place for the claim with this UID (1 to 64 of `[0-9a-zA-Z-]`; anything
    /// else is refused as it could name a path).
    pub fn for_claim(uid: &str) -> Result<CloneStaging, StorageError> {
        check_key(uid).map_err(|_| {
            unsafe_path(
                &format!("{STAGING_DIRECTORY}/{}", uid.escape_debug()),
                "a clone's staging name must be a claim UID: 1 to 64 characters of 0-9, a-z, A-Z and '-'",
            )
        })?;
        Ok(CloneStaging {
            key: uid.to_owned(),
        })
    }

    /// The claim UID.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Name of the copy while it is built, inside [`STAGING_DIRECTORY`].
    pub(crate) fn partial_name(&self) -> String {
        format!("{}{PARTIAL_SUFFIX}", self.key)
    }

    /// Name of the complete copy, inside [`STAGING_DIRECTORY`].
    pub(crate) fn complete_name(&self) -> &str {
        &self.key
    }

    /// Path of `name` (one of the two above) relative to the root, for messages.
    pub(crate) fn path_of(name: &str) -> String {
        format!("{STAGING_DIRECTORY}/{name}")
    }
}

impl fmt::Display for CloneStaging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STAGING_DIRECTORY}/{}", self.key)
    }
}

/// A staged copy found beneath the root (see [`super::NfsRoot::staged_copies`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StagedCopy {
    pub staging: CloneStaging,
    /// A complete copy (`<uid>`), ready for `finish_copy`; otherwise one being built or left
    /// by an interrupted copy (`<uid>.partial`). A claim can have both for a moment.
    pub complete: bool,
}

/// How [`super::NfsRoot::finish_copy`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishOutcome {
    /// The complete copy is now the destination directory. `replaced_empty_directory`: an
    /// empty directory was there and was replaced (what an interrupted rename leaves on file
    /// systems without `RENAME_NOREPLACE`; the rename refuses a non-empty one).
    Finished { replaced_empty_directory: bool },
    /// No complete copy is staged (never made, already finished, or discarded); nothing was
    /// changed. Whether the destination exists is reported for the caller to decide.
    NothingStaged { destination_exists: bool },
}

/// Opens the staging directory, or `None` if it does not exist.
pub(crate) fn open_root(
    root: BorrowedFd<'_>,
    root_dev: u64,
) -> Result<Option<OwnedFd>, StorageError> {
    let fd = match open_dir(root, STAGING_DIRECTORY, OFlag::O_PATH) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(fs_error("open", STAGING_DIRECTORY, e)),
    };
    let st = fstat(&fd).map_err(|e| fs_error("stat", STAGING_DIRECTORY, e))?;
    if st.st_dev != root_dev {
        return Err(unsafe_path(
            STAGING_DIRECTORY,
            "the staging directory is a mount point of another file system",
        ));
    }
    Ok(Some(fd))
}

/// Opens the staging directory, creating it (mode 0700) if missing. An existing one whose
/// mode lets anyone else in (changed on the server) is set back to 0700 first: half-built
/// copies of volumes are not for other users of the export to read.
pub(crate) fn open_or_create_root(
    root: BorrowedFd<'_>,
    root_dev: u64,
) -> Result<OwnedFd, StorageError> {
    if let Some(fd) = open_root(root, root_dev)? {
        let st = fstat(&fd).map_err(|e| fs_error("stat", STAGING_DIRECTORY, e))?;
        if st.st_mode & 0o7077 != 0 {
            tracing::warn!(
                mode = format!("{:o}", st.st_mode & 0o7777),
                "the staging directory was opened up to other users; setting it back to 0700"
            );
            let dir = open_dir(root, STAGING_DIRECTORY, OFlag::O_RDONLY)
                .map_err(|e| fs_error("open", STAGING_DIRECTORY, e))?;
            fchmod(&dir, Mode::from_bits_truncate(0o700))
                .map_err(|e| fs_error("chmod", STAGING_DIRECTORY, e))?;
        }
        return Ok(fd);
    }
    let mode = Mode::from_bits_truncate(0o700);
    let created = match mkdirat(root, STAGING_DIRECTORY, mode) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(fs_error("mkdir", STAGING_DIRECTORY, e)),
    };
    if created {
        // mkdir's mode is masked by umask; half-built copies are the provisioner's alone.
        let fd = open_dir(root, STAGING_DIRECTORY, OFlag::O_RDONLY)
            .map_err(|e| fs_error("open", STAGING_DIRECTORY, e))?;
        fchmod(&fd, mode).map_err(|e| fs_error("chmod", STAGING_DIRECTORY, e))?;
    }
    open_root(root, root_dev)?.ok_or_else(|| fs_error("open", STAGING_DIRECTORY, Errno::ENOENT))
}

/// What sits at `name` inside the staging directory.
pub(crate) fn is_staged(staging_root: BorrowedFd<'_>, name: &str) -> Result<bool, StorageError> {
    match fstatat(staging_root, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if file_type(&st) == nix::sys::stat::SFlag::S_IFDIR => Ok(true),
        Ok(_) => Err(unsafe_path(
            &CloneStaging::path_of(name),
            "not a directory (a symbolic link or file was put there); left in place",
        )),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(fs_error("stat", &CloneStaging::path_of(name), e)),
    }
}

/// How one slice of removing a staged copy ended.
pub(crate) enum Removed {
    /// Gone; `true` if there was something to remove.
    Gone(bool),
    /// The slice's time is up; call again.
    Paused,
}

/// Removes the staged directory `name` (streamed, sliced: see `super::removal`).
pub(crate) fn remove(
    staging_root: BorrowedFd<'_>,
    root_dev: u64,
    name: &str,
    ctx: &OpContext,
) -> Result<Removed, StorageError> {
    let path = CloneStaging::path_of(name);
    if !is_staged(staging_root, name)? {
        return Ok(Removed::Gone(false));
    }
    // The copy's top directory has the source's mode, which may not let its owner read it.
    if let Ok(cname) = std::ffi::CString::new(name) {
        super::removal::make_writable(staging_root, &cname);
    }
    let dir = match open_dir(staging_root, name, OFlag::O_RDONLY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(Removed::Gone(false)),
        Err(e) => return Err(fs_error("open", &path, e)),
    };
    let dev = fstat(&dir).map_err(|e| fs_error("stat", &path, e))?.st_dev;
    if dev != root_dev {
        return Err(unsafe_path(
            &path,
            "a mount point of another file system; not removed",
        ));
    }
    let mut removal = Removal::new(dir.as_fd(), dev, ctx).making_directories_writable();
    if removal.empty_volume(&path)? == Flow::Paused {
        return Ok(Removed::Paused);
    }
    let removed = removal.removed();
    drop(dir);
    ctx.check()?;
    match unlinkat(staging_root, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(Removed::Gone(true)),
        // Written to meanwhile (an abandoned slice finishing its last call): go again.
        Err(Errno::ENOTEMPTY | Errno::EEXIST) if removed > 0 => Ok(Removed::Paused),
        Err(e) => Err(fs_error("rmdir", &path, e)),
    }
}

/// One slice of discarding both forms of a claim's staged copy.
pub(crate) fn discard(
    root: BorrowedFd<'_>,
    root_dev: u64,
    staging: &CloneStaging,
    ctx: &OpContext,
) -> Result<Option<bool>, StorageError> {
    let Some(staging_root) = open_root(root, root_dev)? else {
        return Ok(Some(false));
    };
    let mut found = false;
    for name in [staging.partial_name().as_str(), staging.complete_name()] {
        ctx.check()?;
        match remove(staging_root.as_fd(), root_dev, name, ctx)? {
            Removed::Paused => return Ok(None),
            Removed::Gone(existed) => found |= existed,
        }
    }
    Ok(Some(found))
}

/// Renames the complete copy to `destination`, creating missing parents with
/// `parent_perms`; never replaces anything but an empty directory.
pub(crate) fn finish(
    root: BorrowedFd<'_>,
    root_dev: u64,
    staging: &CloneStaging,
    destination: &VolumeDirectory,
    parent_perms: &DirectoryPermissions,
    ctx: &OpContext,
) -> Result<FinishOutcome, StorageError> {
    let nothing_staged = || {
        Ok(FinishOutcome::NothingStaged {
            destination_exists: confined::entry_exists(root, destination)?,
        })
    };
    let Some(staging_root) = open_root(root, root_dev)? else {
        return nothing_staged();
    };
    let name = staging.complete_name();
    let mut attempt = 0;
    loop {
        ctx.check()?;
        if !is_staged(staging_root.as_fd(), name)? {
            return nothing_staged();
        }
        let parent = match destination.parent() {
            None => open_dir(root, ".", OFlag::O_PATH).map_err(|e| fs_error("open", ".", e))?,
            Some(parent) => {
                confined::create(root, &parent, parent_perms, parent_perms, ctx)?;
                match open_dir(root, parent.as_str(), OFlag::O_PATH) {
                    Ok(fd) => fd,
                    // Removed again by another volume's empty-parent cleanup: create again.
                    Err(Errno::ENOENT) if attempt < RESOLVE_RETRIES => {
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(fs_error("open", parent.as_str(), e)),
                }
            }
        };
        ctx.check()?;
        match rename_noreplace(
            staging_root.as_fd(),
            name,
            parent.as_fd(),
            destination.name(),
        ) {
            Ok(()) => {
                tracing::info!(staging = %staging, destination = %destination, "cloned volume directory put into place");
                return Ok(FinishOutcome::Finished {
                    replaced_empty_directory: false,
                });
            }
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => {
                return replace_empty(staging_root.as_fd(), staging, parent.as_fd(), destination);
            }
            Err(Errno::ENOENT) if attempt < RESOLVE_RETRIES => attempt += 1,
            Err(Errno::EXDEV) => {
                return Err(unsafe_path(
                    destination.as_str(),
                    "the destination's parent is on another file system than the staged copy",
                ));
            }
            Err(e) => return Err(fs_error("rename", destination.as_str(), e)),
        }
    }
}

/// The destination exists: replace it only if it is an empty directory (plain rename(2)
/// replaces an empty directory atomically and refuses a non-empty one).
fn replace_empty(
    staging_root: BorrowedFd<'_>,
    staging: &CloneStaging,
    parent: BorrowedFd<'_>,
    destination: &VolumeDirectory,
) -> Result<FinishOutcome, StorageError> {
    let exists = || StorageError::DestinationExists {
        path: destination.to_string(),
    };
    let st = fstatat(parent, destination.name(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| fs_error("stat", destination.as_str(), e))?;
    if file_type(&st) != nix::sys::stat::SFlag::S_IFDIR {
        return Err(exists());
    }
    match renameat(
        staging_root,
        staging.complete_name(),
        parent,
        destination.name(),
    ) {
        Ok(()) => {
            tracing::info!(staging = %staging, destination = %destination, "cloned volume directory put into place over an empty directory");
            Ok(FinishOutcome::Finished {
                replaced_empty_directory: true,
            })
        }
        Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOTDIR | Errno::EISDIR) => Err(exists()),
        Err(e) => Err(fs_error("rename", destination.as_str(), e)),
    }
}

/// Every staged copy, sorted. Names that are not `<uid>` or `<uid>.partial` are skipped
/// (logged).
pub(crate) fn list(
    root: BorrowedFd<'_>,
    root_dev: u64,
    ctx: &OpContext,
) -> Result<Vec<StagedCopy>, StorageError> {
    let Some(staging_root) = open_root(root, root_dev)? else {
        return Ok(Vec::new());
    };
    let listing = openat(
        &staging_root,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fs_error("open", STAGING_DIRECTORY, e))?;
    let mut stream =
        DirStream::new(listing).map_err(|e| fs_error("opendir", STAGING_DIRECTORY, e))?;
    let mut found = Vec::new();
    while let Some(entry) = stream.next_entry() {
        let (raw, _) = entry.map_err(|e| fs_error("readdir", STAGING_DIRECTORY, e))?;
        if raw.as_c_str() == c"." || raw.as_c_str() == c".." {
            continue;
        }
        ctx.check()?;
        let name = raw.to_string_lossy();
        let (key, complete) = match name.strip_suffix(PARTIAL_SUFFIX) {
            Some(key) => (key, false),
            None => (name.as_ref(), true),
        };
        match CloneStaging::for_claim(key) {
            Ok(staging) => found.push(StagedCopy { staging, complete }),
            Err(_) => {
                tracing::warn!(entry = %CloneStaging::path_of(&name), "skipping unknown entry in the staging directory")
            }
        }
    }
    found.sort();
    Ok(found)
}
