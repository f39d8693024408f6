//! Measuring how much a volume directory holds: bytes on disk (`st_blocks * 512`, what `du`
//! shows), apparent bytes (`st_size`) and inodes, in slices.
//!
//! A scan is a depth-first walk whose state ([`ScanState`]) outlives each slice: the open
//! directory streams of the current path (at most [`MAX_OPEN_DEPTH`] levels, one libc buffer
//! each), the sums so far, and the inodes of hard-linked files already counted. Each slice is
//! one operation on the NFS root (its own worker thread and deadline) and processes at most a
//! given number of entries, stopping earlier at the end of its time slice; the next slice
//! continues where it stopped. Memory is bounded whatever the tree holds: directories are
//! streamed, deeper subtrees are queued by name (at most [`MAX_DEFERRED`]), and hard links are
//! remembered up to [`MAX_LINKS_REMEMBERED`] (past that they may be counted twice, and the
//! result says so).
//!
//! Confinement: nothing is ever written. The volume directory is opened beneath the root with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`; every other directory is opened by a single
//! name relative to its parent's descriptor with `O_NOFOLLOW` (names from `readdir`, never `.`
//! or `..`), and entries are stat'ed without following links. Symlinks count as themselves,
//! never as what they point at, and another file system mounted inside the volume is not
//! entered. At the start of every slice the held path is checked again from the root (same
//! device and inode at every level); a directory renamed meanwhile is dropped from the walk
//! (its remaining entries are not counted and the result is marked incomplete) rather than
//! followed wherever it went.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::dir::{Dir, OwningIter};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use super::confined::{MAX_OPEN_DEPTH, file_type, fs_error, open_dir};
use super::{OpContext, StorageError};
use crate::planning::VolumeDirectory;

/// Subdirectories deeper than [`MAX_OPEN_DEPTH`] waiting to be walked; more are skipped.
pub(crate) const MAX_DEFERRED: usize = 1024;
/// Deepest level measured below the volume directory; deeper subtrees are skipped. Bounds
/// the names a queued subdirectory holds (so [`MAX_DEFERRED`] bounds memory) and the opens
/// that re-check the held path at the start of every slice, whatever a claim's author
/// nests.
pub(crate) const MAX_TOTAL_DEPTH: usize = 8 * MAX_OPEN_DEPTH;
/// Hard-linked files remembered so that each is counted once.
pub(crate) const MAX_LINKS_REMEMBERED: usize = 100_000;

/// What a volume directory holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    /// Bytes allocated on the server (`st_blocks * 512`, as `du` counts), the directory
    /// itself included.
    pub bytes: u64,
    /// Sum of `st_size` (a sparse file counts its full length here).
    pub apparent_bytes: u64,
    /// Distinct inodes: every file, directory, symlink and other entry, and the directory
    /// itself; a hard-linked file once.
    pub inodes: u64,
    /// Entries not measured or directories not walked: on another file system, unreadable,
    /// too deep to queue, renamed during the scan, or failing with an I/O error. Zero for an
    /// exact result.
    pub skipped: u64,
    /// Hard-linked files counted without checking for repeats (past the memory bound).
    pub unchecked_hard_links: u64,
}

impl VolumeUsage {
    /// Whether every entry was counted exactly once.
    pub fn is_exact(&self) -> bool {
        self.skipped == 0 && self.unchecked_hard_links == 0
    }

    fn add(&mut self, st: &FileStat) {
        self.bytes = self
            .bytes
            .saturating_add((st.st_blocks as u64).saturating_mul(512));
        self.apparent_bytes = self.apparent_bytes.saturating_add(st.st_size.max(0) as u64);
        self.inodes += 1;
    }
}

/// How one slice of a scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageStep {
    /// The slice's budget or time ran out after `entries` entries; call again to continue.
    InProgress { entries: u64 },
    /// The whole tree was walked; `entries` in this last slice.
    Finished { usage: VolumeUsage, entries: u64 },
    /// The volume directory does not exist (nothing to measure).
    Gone,
}

/// One open directory of the current path.
struct Frame {
    /// Name in its parent (empty for the frame a walk starts at).
    name: CString,
    dev: u64,
    ino: u64,
    stream: OwningIter,
}

impl Frame {
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor belongs to `stream`, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) }
    }
}

/// A scan between slices. `Default` is a scan not yet started.
#[derive(Default)]
pub(crate) struct ScanState {
    started: bool,
    totals: VolumeUsage,
    /// Where the current walk starts, as names below the volume directory (empty: the volume
    /// directory itself; otherwise a queued deep subdirectory).
    base: Vec<CString>,
    stack: Vec<Frame>,
    /// Queued deep subdirectories: names below the volume directory, and the device and
    /// inode seen when queued (a different directory found there later is not walked).
    deferred: Vec<(Vec<CString>, u64, u64)>,
    links: HashSet<(u64, u64)>,
}

// SAFETY: the directory streams are only ever used by one thread at a time (the state sits
// behind a mutex that a slice holds for its whole run).
unsafe impl Send for ScanState {}

impl ScanState {
    /// The whole walk so far, for a fresh start.
    pub(crate) fn reset(&mut self) {
        *self = ScanState::default();
    }
}

fn open_child(dir: BorrowedFd<'_>, name: &CStr, flags: OFlag) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        flags | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn join(path: &str, name: &CStr) -> String {
    format!("{path}/{}", name.to_string_lossy())
}

fn stream_of(fd: OwnedFd, path: &str) -> Result<OwningIter, StorageError> {
    Ok(Dir::from_fd(fd)
        .map_err(|e| fs_error("opendir", path, e))?
        .into_iter())
}

/// Opens `names` one by one below `from`, never following a symlink.
fn walk_names(from: BorrowedFd<'_>, names: &[CString]) -> Result<OwnedFd, Errno> {
    let mut current = openat(
        from,
        c".",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for name in names {
        current = open_child(current.as_fd(), name, OFlag::O_PATH)?;
    }
    Ok(current)
}

/// One slice of measuring `dir`: processes at most `max_entries` entries (at least one, unless
/// the tree is exhausted), stopping earlier once the slice's time is up.
pub(crate) fn scan_slice(
    root: BorrowedFd<'_>,
    root_dev: u64,
    dir: &VolumeDirectory,
    state: &mut ScanState,
    max_entries: u64,
    ctx: &OpContext,
) -> Result<UsageStep, StorageError> {
    ctx.check()?;
    let path = dir.as_str();
    let volume = match open_dir(root, path, OFlag::O_RDONLY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            state.reset();
            return Ok(UsageStep::Gone);
        }
        Err(e) => return Err(fs_error("open", path, e)),
    };
    let st = fstat(&volume).map_err(|e| fs_error("stat", path, e))?;
    if st.st_dev != root_dev {
        return Err(StorageError::Unsafe {
            path: path.to_owned(),
            reason: "the volume directory is a mount point of another file system".into(),
        });
    }
    if state.started && !recheck_path(volume.as_fd(), state, path)? {
        tracing::info!(dir = %path, "the volume directory was replaced during a usage scan; starting again");
        state.reset();
    }
    if !state.started {
        state.started = true;
        state.totals.add(&st);
        state.stack.push(Frame {
            name: CString::default(),
            dev: st.st_dev,
            ino: st.st_ino,
            stream: stream_of(volume, path)?,
        });
    }

    let mut processed = 0u64;
    loop {
        if processed >= max_entries.max(1) || (processed > 0 && ctx.slice_over()) {
            return Ok(UsageStep::InProgress { entries: processed });
        }
        ctx.check()?;
        let Some(frame) = state.stack.last_mut() else {
            if !start_deferred(root, root_dev, path, state)? {
                let usage = state.totals;
                state.reset();
                return Ok(UsageStep::Finished {
                    usage,
                    entries: processed,
                });
            }
            continue;
        };
        let entry = match frame.stream.next() {
            None => {
                state.stack.pop();
                continue;
            }
            Some(Err(e)) => return Err(fs_error("readdir", path, e)),
            Some(Ok(entry)) => entry,
        };
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        processed += 1;
        ctx.fault_point("usage_entry", path);
        let name = name.to_owned();
        if let Err(e) = count_entry(state, &name, root_dev, path) {
            // The stream has moved past this entry: the next slice continues after it.
            state.totals.skipped += 1;
            return Err(e);
        }
    }
}

/// Re-resolves the held path from a fresh handle of the volume directory; frames that are no
/// longer where they were (renamed, replaced) are dropped with everything below them. False
/// when the volume directory itself is not the one the scan started in.
fn recheck_path(
    volume: BorrowedFd<'_>,
    state: &mut ScanState,
    path: &str,
) -> Result<bool, StorageError> {
    let mut current = match walk_names(volume, &state.base) {
        Ok(fd) => Some(fd),
        Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => None,
        Err(e) => return Err(fs_error("open", path, e)),
    };
    for index in 0..state.stack.len() {
        let frame = &state.stack[index];
        let here = match (current.take(), index) {
            (Some(fd), 0) => Some(fd),
            (Some(fd), _) => match open_child(fd.as_fd(), &frame.name, OFlag::O_PATH) {
                Ok(child) => Some(child),
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => None,
                Err(e) => return Err(fs_error("open", path, e)),
            },
            (None, _) => None,
        };
        let same = here
            .as_ref()
            .and_then(|fd| fstat(fd).ok())
            .is_some_and(|st| st.st_dev == frame.dev && st.st_ino == frame.ino);
        if !same {
            if index == 0 && state.base.is_empty() {
                return Ok(false);
            }
            tracing::info!(dir = %path, "a directory moved while its usage was measured; not following it");
            state.totals.skipped += (state.stack.len() - index) as u64;
            state.stack.truncate(index);
            return Ok(true);
        }
        current = here;
    }
    Ok(true)
}

/// Starts walking the next queued deep subdirectory; false when none is left.
fn start_deferred(
    root: BorrowedFd<'_>,
    root_dev: u64,
    path: &str,
    state: &mut ScanState,
) -> Result<bool, StorageError> {
    while let Some((names, dev, ino)) = state.deferred.pop() {
        let volume = open_dir(root, path, OFlag::O_PATH).map_err(|e| fs_error("open", path, e))?;
        let (parent_names, last) = names.split_at(names.len() - 1);
        let opened = walk_names(volume.as_fd(), parent_names)
            .and_then(|parent| open_child(parent.as_fd(), &last[0], OFlag::O_RDONLY));
        let fd = match opened {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EACCES | Errno::EPERM) => {
                state.totals.skipped += 1;
                continue;
            }
            Err(e) => return Err(fs_error("open", path, e)),
        };
        let st = fstat(&fd).map_err(|e| fs_error("stat", path, e))?;
        if st.st_dev != root_dev || st.st_dev != dev || st.st_ino != ino {
            // A mount point now, or another directory moved in under that name: not this
            // walk's to enter.
            state.totals.skipped += 1;
            continue;
        }
        state.stack.push(Frame {
            name: CString::default(),
            dev: st.st_dev,
            ino: st.st_ino,
            stream: stream_of(fd, path)?,
        });
        state.base = names;
        return Ok(true);
    }
    Ok(false)
}

/// Counts one entry of the top frame, descending into it if it is a directory.
fn count_entry(
    state: &mut ScanState,
    name: &CStr,
    root_dev: u64,
    path: &str,
) -> Result<(), StorageError> {
    let frame = state.stack.last().expect("an entry comes from a frame");
    let st = match fstatat(frame.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        // Not searchable by this process (a 0744 directory under root_squash) or a stale
        // handle: counted as skipped, so one such entry never keeps a volume unmeasured.
        Err(Errno::EACCES | Errno::EPERM | Errno::ESTALE) => {
            state.totals.skipped += 1;
            return Ok(());
        }
        Err(e) => return Err(fs_error("stat", &join(path, name), e)),
    };
    if st.st_dev != root_dev {
        // A mount point: another file system, not this volume's data.
        state.totals.skipped += 1;
        return Ok(());
    }
    if file_type(&st) != SFlag::S_IFDIR {
        if st.st_nlink > 1 {
            if state.links.len() < MAX_LINKS_REMEMBERED {
                if !state.links.insert((st.st_dev, st.st_ino)) {
                    return Ok(()); // this inode was counted through another name
                }
            } else if !state.links.contains(&(st.st_dev, st.st_ino)) {
                state.totals.unchecked_hard_links += 1;
            } else {
                return Ok(());
            }
        }
        state.totals.add(&st);
        return Ok(());
    }
    state.totals.add(&st);
    if state.base.len() + state.stack.len() >= MAX_TOTAL_DEPTH {
        state.totals.skipped += 1;
        return Ok(());
    }
    if state.stack.len() >= MAX_OPEN_DEPTH {
        if state.deferred.len() < MAX_DEFERRED {
            let mut names = state.base.clone();
            names.extend(state.stack.iter().skip(1).map(|f| f.name.clone()));
            names.push(name.to_owned());
            state.deferred.push((names, st.st_dev, st.st_ino));
        } else {
            state.totals.skipped += 1;
        }
        return Ok(());
    }
    let fd = match open_child(frame.fd(), name, OFlag::O_RDONLY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        // Replaced by a symlink or file since the stat: it was counted as a directory; not
        // followed. Unreadable: counted, contents unknown.
        Err(Errno::ELOOP | Errno::ENOTDIR | Errno::EACCES | Errno::EPERM) => {
            state.totals.skipped += 1;
            return Ok(());
        }
        Err(e) => return Err(fs_error("open", &join(path, name), e)),
    };
    let opened = fstat(&fd).map_err(|e| fs_error("stat", &join(path, name), e))?;
    if opened.st_dev != st.st_dev || opened.st_ino != st.st_ino {
        // Swapped between the stat and the open: do not walk something else.
        state.totals.skipped += 1;
        return Ok(());
    }
    state.stack.push(Frame {
        name: name.to_owned(),
        dev: opened.st_dev,
        ino: opened.st_ino,
        stream: stream_of(fd, path)?,
    });
    Ok(())
}
