//! Streaming, resumable removal of a volume's directory tree.
//!
//! Directories are read with a streaming `readdir` (one libc buffer per open level) and each
//! entry is removed as it is read, so memory stays bounded however many entries a directory
//! holds: at most [`MAX_OPEN_DEPTH`] levels are open at once, each holding one directory
//! stream. Deeper subtrees are renamed up into the volume directory and removed in a later
//! pass.
//!
//! Unlinking while reading may make `readdir` skip entries on some file systems (the NFS
//! cookie of the next entry can move), so a directory is read again from the start, with a
//! fresh open file description, until a pass finds nothing (the volume directory) or it can
//! be removed (subdirectories).
//!
//! Slices: the work stops cleanly once [`OpContext::slice_over`] says the slice's time is up,
//! but only after at least one entry was removed in this slice, so every slice makes
//! progress. A later slice starts again from the top and continues where this one stopped.
//!
//! Never follows a symlink (they are unlinked as entries) and never crosses into another
//! file system (a mount point inside the volume is an error: it cannot and must not be
//! removed).
//!
//! Hand-written: `std::fs::remove_dir_all` and the `remove_dir_all` crate work from a path
//! (not beneath a root handle resolved with `RESOLVE_BENEATH`), do not stop at a deadline to
//! resume later, and do not refuse to cross into another mounted file system.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use super::confined::{
    MAX_OPEN_DEPTH, RESOLVE_RETRIES, UNIQUE_COUNTER, file_type, fs_error, rename_noreplace,
    unsafe_path,
};
use super::{OpContext, StorageError};

/// How removing (part of) a tree ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Everything asked for is removed.
    Done,
    /// The slice's time is up; a later call continues.
    Paused,
}

/// Result of reading a directory once from its start.
enum Pass {
    /// Entries were found (and removed, as far as they still existed).
    Found,
    /// The directory held no entries.
    Empty,
    Paused,
}

/// One slice of removing the contents of a volume directory.
pub(crate) struct Removal<'a> {
    top: BorrowedFd<'a>,
    dev: u64,
    ctx: &'a OpContext,
    removed: u64,
    /// Make each directory writable (0700) before emptying it (see
    /// [`Removal::making_directories_writable`]).
    make_writable: bool,
}

impl<'a> Removal<'a> {
    /// `top` is the volume directory (opened for reading), on device `dev`.
    pub(crate) fn new(top: BorrowedFd<'a>, dev: u64, ctx: &'a OpContext) -> Self {
        Removal {
            top,
            dev,
            ctx,
            removed: 0,
            make_writable: false,
        }
    }

    /// For trees that are the provisioner's own (a staged clone copy): directories copied
    /// read-only (mode 0555) cannot be emptied by an owner without `CAP_DAC_OVERRIDE` (a
    /// non-root provisioner, or root squashed by the NFS server), so each is made 0700
    /// before it is emptied. Never used on a volume's data.
    pub(crate) fn making_directories_writable(mut self) -> Self {
        self.make_writable = true;
        self
    }

    /// Entries removed (or moved up) in this slice.
    pub(crate) fn removed(&self) -> u64 {
        self.removed
    }

    /// Removes everything inside the volume directory, or pauses at the end of the slice.
    pub(crate) fn empty_volume(&mut self, path: &str) -> Result<Flow, StorageError> {
        loop {
            match self.pass(self.top, 1, path)? {
                Pass::Paused => return Ok(Flow::Paused),
                Pass::Empty => return Ok(Flow::Done),
                Pass::Found => {}
            }
        }
    }

    fn paused(&self) -> bool {
        self.removed > 0 && self.ctx.slice_over()
    }

    /// Reads `dir` once from its first entry, removing each entry as it is read.
    fn pass(
        &mut self,
        dir: BorrowedFd<'_>,
        depth: usize,
        path: &str,
    ) -> Result<Pass, StorageError> {
        // A fresh open file description each time, so reading starts at the first entry.
        let fd = openat(
            dir,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fs_error("open", path, e))?;
        let mut stream = Dir::from_fd(fd).map_err(|e| fs_error("opendir", path, e))?;
        let mut found = false;
        for entry in stream.iter() {
            let entry = entry.map_err(|e| fs_error("readdir", path, e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            found = true;
            if self.paused() {
                return Ok(Pass::Paused);
            }
            self.ctx.check()?;
            self.ctx.fault_point("delete_entry", path);
            if self.remove_entry(dir, name, entry.file_type(), depth, path)? == Flow::Paused {
                return Ok(Pass::Paused);
            }
        }
        Ok(if found { Pass::Found } else { Pass::Empty })
    }

    fn remove_entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        kind: Option<Type>,
        depth: usize,
        path: &str,
    ) -> Result<Flow, StorageError> {
        // The listing's type saves a stat per file. unlinkat without AT_REMOVEDIR never
        // removes a directory (EISDIR), so a stale type only costs the stat below.
        if !matches!(kind, Some(Type::Directory) | None) {
            match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) => {
                    self.removed += 1;
                    return Ok(Flow::Done);
                }
                Err(Errno::ENOENT) => return Ok(Flow::Done),
                Err(Errno::EISDIR | Errno::EPERM) => {}
                Err(e) => return Err(fs_error("unlink", &join(path, name), e)),
            }
        }
        let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(Flow::Done),
            Err(e) => return Err(fs_error("stat", &join(path, name), e)),
        };
        if file_type(&st) != SFlag::S_IFDIR {
            self.unlink(dir, name, UnlinkatFlags::NoRemoveDir, path)?;
            return Ok(Flow::Done);
        }
        let child_path = join(path, name);
        if st.st_dev != self.dev {
            return Err(unsafe_path(
                &child_path,
                "a mount point inside the volume; not crossing into another file system",
            ));
        }
        if depth >= MAX_OPEN_DEPTH {
            move_up(dir, name, self.top, &child_path)?;
            self.removed += 1;
            return Ok(Flow::Done);
        }
        if self.make_writable {
            make_writable(dir, name);
        }
        let sub = match open_subdir(dir, name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(Flow::Done),
            // Swapped for a symlink or file since the stat: remove it as an entry.
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                self.unlink(dir, name, UnlinkatFlags::NoRemoveDir, path)?;
                return Ok(Flow::Done);
            }
            Err(e) => return Err(fs_error("open", &child_path, e)),
        };
        let sub_st = fstat(&sub).map_err(|e| fs_error("stat", &child_path, e))?;
        if file_type(&sub_st) != SFlag::S_IFDIR || sub_st.st_dev != self.dev {
            return Err(unsafe_path(
                &child_path,
                "changed into a mount point while being removed",
            ));
        }
        let mut empty_passes_refused = 0;
        loop {
            let pass = self.pass(sub.as_fd(), depth + 1, &child_path)?;
            match pass {
                Pass::Paused => return Ok(Flow::Paused),
                Pass::Found | Pass::Empty => {}
            }
            self.ctx.check()?;
            match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
                Ok(()) => {
                    self.removed += 1;
                    return Ok(Flow::Done);
                }
                Err(Errno::ENOENT) => return Ok(Flow::Done),
                // The listing skipped entries, or something was added meanwhile: read again.
                // A directory that reads as empty yet cannot be removed is an error, not a
                // loop.
                Err(Errno::ENOTEMPTY | Errno::EEXIST)
                    if matches!(pass, Pass::Found) || empty_passes_refused < RESOLVE_RETRIES =>
                {
                    if matches!(pass, Pass::Empty) {
                        empty_passes_refused += 1;
                    }
                    if self.paused() {
                        return Ok(Flow::Paused);
                    }
                }
                Err(e) => return Err(fs_error("rmdir", &child_path, e)),
            }
        }
    }

    fn unlink(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        flags: UnlinkatFlags,
        path: &str,
    ) -> Result<(), StorageError> {
        match unlinkat(dir, name, flags) {
            Ok(()) => {
                self.removed += 1;
                Ok(())
            }
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(fs_error("unlink", &join(path, name), e)),
        }
    }
}

/// Sets directory `name` in `dir` to 0700, never following a symlink put there instead (glibc
/// does `AT_SYMLINK_NOFOLLOW` with `fchmodat2` or an `O_PATH` descriptor, or refuses). A
/// failure is left for the removal itself to report.
pub(crate) fn make_writable(dir: BorrowedFd<'_>, name: &CStr) {
    let _ = nix::sys::stat::fchmodat(
        dir,
        name,
        Mode::from_bits_truncate(0o700),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    );
}

fn open_subdir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn join(path: &str, name: &CStr) -> String {
    format!("{path}/{}", name.to_string_lossy())
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
