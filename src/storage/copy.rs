//! Copying one volume directory into a clone's staging directory: confined, streaming,
//! sliced.
//!
//! What is copied: regular files (data with `copy_file_range`, falling back to
//! `pread`/`pwrite`; holes found with `SEEK_DATA`/`SEEK_HOLE` are skipped, so sparse files
//! stay sparse), directories, symbolic links (re-created with the same target text, never
//! followed), hard links (kept as links when both ends are inside the source, see
//! [`LinkMap`]), FIFOs and device nodes (re-created with `mknodat`, never opened; skipped
//! with a note where the kernel refuses, e.g. device nodes without `CAP_MKNOD`). Sockets,
//! mount points inside the source and unknown types are skipped with a note. Modes, owners
//! (`fchown`/`fchownat(AT_SYMLINK_NOFOLLOW)`) and access/modification times
//! (`futimens`/`utimensat(AT_SYMLINK_NOFOLLOW)`) are kept; a directory's are set once its
//! contents are complete. Extended attributes and ACLs are not copied (NFSv3 has none).
//!
//! Confinement: every open is relative to a directory fd of the source or of the staging
//! copy, of a single name from a listing, with `O_NOFOLLOW`; files are opened
//! `O_RDONLY|O_NOFOLLOW|O_NONBLOCK|O_NOCTTY` and `fstat`-checked to be regular before any
//! read, so a symlink swapped in is refused (`ELOOP`) and a FIFO swapped in never blocks;
//! either is then copied as what it has become. (A device node swapped in at that moment is
//! opened and closed without being read; a root mounted `nodev` rules even that out.)
//! Symlink targets are only ever read as text.
//! Directories are entered by fd, never by path, and a mount point is not crossed. So
//! whatever the source holds (symlinks to `/`, to `..`, to other volumes), nothing outside
//! the source is read and nothing outside the staging copy is written.
//!
//! Memory: directories are streamed (one libc buffer per open level); at most
//! [`CopyLimits::open_levels`] levels are open at once: deeper down, the shallowest open
//! level is closed with its position (`telldir`) and reopened by name from the top, checked
//! to be the same directory, and continued there (`seekdir`) on the way back up. Depth is
//! bounded by [`CopyLimits::max_depth`] (a deeper source fails the copy with a clear error
//! rather than cloning part of it). Hard-link bookkeeping is bounded (see [`LinkMap`]).
//!
//! Slices: like tree removal, the work runs in slices, each one deadline-bound operation on
//! a worker thread; a slice stops at [`OpContext::slice_over`] once it has made progress (an
//! entry, or one chunk of at most [`CHUNK_BYTES`] of a large file), and its state (open
//! directories, the file being copied) is handed to the next slice. If a slice fails or is
//! abandoned, that state is dropped with it; the next copy of the same claim starts over
//! (see `super::staging` for the naming that makes this safe).
//!
//! The source may be in use while it is copied: like `cp -a`, the copy is then of no single
//! instant. Entries that vanish meanwhile are noted; a file that shrinks is copied as far as
//! it goes. Durability: files are not fsynced one by one; on NFS the client writes back and
//! commits each file when it is closed (close-to-open consistency).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, OFlag, copy_file_range, fcntl, openat, readlinkat, renameat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstat, fstatat,
    futimens, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::sys::uio::{pread, pwrite};
use nix::unistd::{
    Gid, Uid, Whence, fchown, fchownat, ftruncate, getegid, geteuid, linkat, lseek, symlinkat,
};

use super::confined::{
    MAX_OPEN_DEPTH, RESOLVE_RETRIES, file_type, fs_error, open_volume, unsafe_path,
};
use super::dir_stream::DirStream;
use super::staging::{self, CloneStaging, Removed};
use super::{OpContext, StorageError};
use crate::planning::VolumeDirectory;

/// Notes kept in a [`CopyOutcome`]; [`CopyProgress::notes`] counts all of them.
pub const MAX_COPY_NOTES: usize = 64;
/// Largest piece of a file copied by one system call (so one call stays well within a
/// deadline even on a slow server, and a slice can stop inside a large file).
pub(crate) const CHUNK_BYTES: usize = 8 << 20;
/// Buffer of the `pread`/`pwrite` fallback, allocated on first use.
const FALLBACK_BUFFER_BYTES: usize = 1 << 20;

/// Bounds of one copy's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CopyLimits {
    /// Directory levels below the source directory that may be copied.
    pub(crate) max_depth: usize,
    /// Directory levels kept open at once (each: a source stream and a staging fd).
    pub(crate) open_levels: usize,
    /// Multiply-linked files remembered at once for re-linking their other names.
    pub(crate) max_links: usize,
    /// Bytes of staged paths remembered for them.
    pub(crate) max_link_path_bytes: usize,
}

impl Default for CopyLimits {
    fn default() -> Self {
        CopyLimits {
            max_depth: 2048,
            open_levels: MAX_OPEN_DEPTH,
            // About 100 bytes of map per entry plus its path: a few MiB at most.
            max_links: 32 * 1024,
            max_link_path_bytes: 4 << 20,
        }
    }
}

/// Totals of a copy so far, reported after every slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyProgress {
    /// Bytes of file data copied (holes of sparse files are not copied, not counted).
    pub bytes: u64,
    /// Entries created in the copy: directories (the top one included), files, hard
    /// links, symbolic links, FIFOs and device nodes.
    pub entries: u64,
    /// Entries of the source that are not in the copy (each has a note).
    pub skipped: u64,
    /// Notes so far (skipped entries and entries copied differently); the first
    /// [`MAX_COPY_NOTES`] are in [`CopyOutcome::notes`].
    pub notes: u64,
}

/// Something about one entry a user should know: it was skipped or copied differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyNote {
    /// Relative to the source volume directory (`.` for the directory itself).
    pub path: String,
    pub kind: CopyNoteKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CopyNoteKind {
    /// A socket: skipped (it cannot be copied; a listener re-creates its own).
    Socket,
    /// A FIFO or device node the kernel refused to create here (device nodes need
    /// `CAP_MKNOD`): skipped.
    SpecialFileNotCreated,
    /// Another file system is mounted there: skipped, not crossed.
    MountPoint,
    /// A type of entry this copy does not know: skipped.
    UnknownType,
    /// Deleted from the source while the copy ran: not in the copy.
    Vanished,
    /// One name of a multiply-linked file, copied as a separate file: more multiply-linked
    /// files than [`CopyLimits::max_links`] were pending at once, or re-linking failed.
    HardLinkCopied,
    /// The owner could not be set (`EPERM`/`EINVAL`: not root, or root squashed by the NFS
    /// server): the entry is owned by the provisioner instead.
    OwnerNotKept,
    /// The mode of a FIFO or device node could not be set without following a symlink
    /// (kernel and libc without `fchmodat2` or `/proc`).
    ModeNotKept,
}

impl CopyNoteKind {
    /// Whether the entry is missing from the copy.
    pub fn skipped(self) -> bool {
        matches!(
            self,
            CopyNoteKind::Socket
                | CopyNoteKind::SpecialFileNotCreated
                | CopyNoteKind::MountPoint
                | CopyNoteKind::UnknownType
                | CopyNoteKind::Vanished
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            CopyNoteKind::Socket => "a socket; not copied",
            CopyNoteKind::SpecialFileNotCreated => {
                "a FIFO or device node that could not be created here; not copied"
            }
            CopyNoteKind::MountPoint => "another file system is mounted here; not copied",
            CopyNoteKind::UnknownType => "an entry of unknown type; not copied",
            CopyNoteKind::Vanished => "deleted from the source during the copy",
            CopyNoteKind::HardLinkCopied => {
                "a hard link copied as a separate file (too many hard-linked files to track)"
            }
            CopyNoteKind::OwnerNotKept => "owner could not be set (not permitted)",
            CopyNoteKind::ModeNotKept => "mode could not be set",
        }
    }
}

impl fmt::Display for CopyNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.kind.describe())
    }
}

/// What the copy found at the staging place when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyStart {
    /// Nothing: copied from scratch.
    Fresh,
    /// An incomplete copy left by an interrupted attempt: removed, then copied from scratch.
    DiscardedPartial,
    /// A complete copy from an earlier attempt: nothing copied (progress and notes are
    /// empty; they were reported by that attempt).
    AlreadyComplete,
}

/// Result of a finished copy: the complete copy is staged, ready for `finish_copy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutcome {
    pub start: CopyStart,
    pub progress: CopyProgress,
    /// The first [`MAX_COPY_NOTES`] notes, in the order found.
    pub notes: Vec<CopyNote>,
}

/// Counts and notes of one copy.
#[derive(Default)]
struct Tally {
    progress: CopyProgress,
    notes: Vec<CopyNote>,
}

impl Tally {
    fn note(&mut self, kind: CopyNoteKind, rel: &str) {
        let path = if rel.is_empty() { "." } else { rel };
        tracing::debug!(path, note = kind.describe(), "clone copy note");
        self.progress.notes += 1;
        if kind.skipped() {
            self.progress.skipped += 1;
        }
        if self.notes.len() < MAX_COPY_NOTES {
            self.notes.push(CopyNote {
                path: path.to_owned(),
                kind,
            });
        }
    }
}

/// How one slice ended.
pub(crate) enum Step {
    InProgress,
    Done,
}

enum Phase {
    Start,
    /// Removing an incomplete copy left by an earlier attempt.
    Discarding,
    Begin,
    Walking(Box<Walk>),
    Done,
}

/// One copy from start to end; moves between the slices' worker threads.
pub(crate) struct CopyJob {
    source: VolumeDirectory,
    staging: CloneStaging,
    limits: CopyLimits,
    phase: Phase,
    start: CopyStart,
    tally: Tally,
}

impl CopyJob {
    pub(crate) fn new(source: VolumeDirectory, staging: CloneStaging, limits: CopyLimits) -> Self {
        CopyJob {
            source,
            staging,
            limits,
            phase: Phase::Start,
            start: CopyStart::Fresh,
            tally: Tally::default(),
        }
    }

    pub(crate) fn progress(&self) -> &CopyProgress {
        &self.tally.progress
    }

    pub(crate) fn into_outcome(self) -> CopyOutcome {
        CopyOutcome {
            start: self.start,
            progress: self.tally.progress,
            notes: self.tally.notes,
        }
    }

    /// Runs until the copy is complete (and renamed to its complete name) or the slice's
    /// time is up.
    pub(crate) fn slice(
        &mut self,
        root: BorrowedFd<'_>,
        root_dev: u64,
        ctx: &OpContext,
    ) -> Result<Step, StorageError> {
        loop {
            ctx.check()?;
            match &mut self.phase {
                Phase::Start => {
                    let existing = staging::open_root(root, root_dev)?;
                    if let Some(staging_root) = &existing
                        && staging::is_staged(staging_root.as_fd(), self.staging.complete_name())?
                    {
                        self.start = CopyStart::AlreadyComplete;
                        self.phase = Phase::Done;
                        continue;
                    }
                    // A missing or unsafe source fails before anything is created.
                    source_top(root, root_dev, &self.source)?;
                    let staging_root = staging::open_or_create_root(root, root_dev)?;
                    let partial = self.staging.partial_name();
                    self.phase = if staging::is_staged(staging_root.as_fd(), &partial)? {
                        tracing::info!(staging = %self.staging, "discarding an incomplete copy left by an earlier attempt");
                        self.start = CopyStart::DiscardedPartial;
                        Phase::Discarding
                    } else {
                        Phase::Begin
                    };
                }
                Phase::Discarding => {
                    let staging_root = staging::open_or_create_root(root, root_dev)?;
                    let partial = self.staging.partial_name();
                    match staging::remove(staging_root.as_fd(), root_dev, &partial, ctx)? {
                        Removed::Paused => return Ok(Step::InProgress),
                        Removed::Gone(_) => self.phase = Phase::Begin,
                    }
                }
                Phase::Begin => {
                    let walk =
                        Walk::begin(root, root_dev, &self.source, &self.staging, self.limits)?;
                    self.tally.progress.entries += 1; // the copy's own directory
                    self.phase = Phase::Walking(Box::new(walk));
                }
                Phase::Walking(walk) => match walk.run(ctx, &mut self.tally)? {
                    Progress::Paused => return Ok(Step::InProgress),
                    Progress::Finished => {
                        walk.complete(&self.staging)?;
                        tracing::info!(source = %self.source, staging = %self.staging, bytes = self.tally.progress.bytes, entries = self.tally.progress.entries, "clone copy complete");
                        self.phase = Phase::Done;
                    }
                },
                Phase::Done => return Ok(Step::Done),
            }
        }
    }
}

/// Opens the source volume directory (a real directory on the root's file system).
fn source_top(
    root: BorrowedFd<'_>,
    root_dev: u64,
    source: &VolumeDirectory,
) -> Result<(OwnedFd, FileStat), StorageError> {
    match open_volume(root, root_dev, source)? {
        Some((_parent, dir, st)) => Ok((dir, st)),
        None => Err(StorageError::Io {
            op: "open source",
            path: source.to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the source volume directory does not exist",
            ),
        }),
    }
}

enum Progress {
    Paused,
    Finished,
}

/// Mode, owner and times to give a copied entry.
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
}

impl Meta {
    fn of(st: &FileStat) -> Meta {
        Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            atime: TimeSpec::new(st.st_atime, st.st_atime_nsec),
            mtime: TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        }
    }
}

/// A directory being copied: its source stream and its staged copy.
struct Streams {
    src: DirStream,
    dst: OwnedFd,
}

/// One directory level on the walk's stack.
struct Level {
    /// Its name in its parent (empty for the source directory itself).
    name: CString,
    /// Length of its path relative to the source (`Walk::rel`).
    rel_len: usize,
    src_ino: u64,
    dst_ino: u64,
    meta: Meta,
    /// `None` while closed to bound open descriptors (see the module docs).
    streams: Option<Streams>,
    /// Listing position to continue at when reopened.
    position: i64,
    /// Reopened: an entry may be listed again, so skip names already in the copy.
    recheck: bool,
}

/// The file whose data is being copied (possibly across slices).
struct FileCopy {
    src: OwnedFd,
    dst: OwnedFd,
    size: i64,
    pos: i64,
    /// End of the data region `pos` is in (`pos >= data_end`: look for the next one).
    data_end: i64,
    /// End of the data written so far (less than `size`: a trailing hole to restore).
    written_end: i64,
    meta: Meta,
    rel: String,
    staged: String,
}

/// Hard links: for each multiply-linked file copied, where its first copy is (relative to
/// the staging copy) and how many of its other names are still to come. An entry is
/// dropped once all names were seen, so only files with names still ahead are held. Names
/// outside the source are never seen, so such a file's entry stays until the end: bounded
/// by `max_links` entries and `max_link_path_bytes`. Beyond that, further multiply-linked
/// files are copied as separate files, each with a [`CopyNoteKind::HardLinkCopied`] note.
struct LinkMap {
    first: HashMap<u64, Linked>,
    path_bytes: usize,
    max_links: usize,
    max_path_bytes: usize,
}

struct Linked {
    path: Box<[u8]>,
    remaining: u64,
}

impl LinkMap {
    fn new(limits: &CopyLimits) -> LinkMap {
        LinkMap {
            first: HashMap::new(),
            path_bytes: 0,
            max_links: limits.max_links,
            max_path_bytes: limits.max_link_path_bytes,
        }
    }

    fn first_copy(&self, ino: u64) -> Option<&[u8]> {
        self.first.get(&ino).map(|l| &*l.path)
    }

    /// Another name of `ino` was linked.
    fn linked(&mut self, ino: u64) {
        if let Some(entry) = self.first.get_mut(&ino) {
            entry.remaining = entry.remaining.saturating_sub(1);
            if entry.remaining == 0 {
                self.path_bytes -= entry.path.len();
                self.first.remove(&ino);
            }
        }
    }

    /// Remembers the first copy of `ino`; false when the bounds are reached.
    fn remember(&mut self, ino: u64, path: Vec<u8>, others: u64) -> bool {
        if self.first.len() >= self.max_links || self.path_bytes + path.len() > self.max_path_bytes
        {
            return false;
        }
        self.path_bytes += path.len();
        self.first.insert(
            ino,
            Linked {
                path: path.into_boxed_slice(),
                remaining: others,
            },
        );
        true
    }
}

/// The walk over the source tree, copying as it goes.
struct Walk {
    /// Source path relative to the root, for messages and the fault hook.
    source: String,
    /// Staged copy's path relative to the root, for messages.
    staged: String,
    partial: String,
    src_dev: u64,
    src_top: OwnedFd,
    dst_top: OwnedFd,
    staging_root: OwnedFd,
    stack: Vec<Level>,
    /// Levels `open_from..` are open; those before are closed.
    open_from: usize,
    /// Current directory relative to the source (empty at the top).
    rel: String,
    file: Option<FileCopy>,
    links: LinkMap,
    buffer: Vec<u8>,
    /// `copy_file_range` works between these files (else `pread`/`pwrite`).
    copy_range: bool,
    host: Host,
    limits: CopyLimits,
}

/// What this process may do and gets, learned while copying.
struct Host {
    /// `O_NOATIME` is permitted (so reading does not change the source's access times).
    noatime: bool,
    /// Owner of every entry created in the copy, when certain: the copy's directories are
    /// created by the provisioner, mode 0700 without set-group-ID, until their contents are
    /// complete. Entries whose source has this owner need no chown.
    created_owner: Option<(u32, u32)>,
}

/// The entry being copied and the two directories it is in.
struct At<'a> {
    src: BorrowedFd<'a>,
    dst: BorrowedFd<'a>,
    name: &'a CStr,
    /// Relative to the source directory.
    rel: &'a str,
    /// Relative to the root, in the source.
    shown: &'a str,
    /// Relative to the root, in the copy.
    staged: &'a str,
    src_dev: u64,
}

/// What to do after looking at an entry.
enum Action {
    Done,
    /// It changed type between listing and opening: look again.
    Changed,
    Descend(Level),
    File(FileCopy),
}

const READ_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_NOCTTY)
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_CLOEXEC);

impl Walk {
    fn begin(
        root: BorrowedFd<'_>,
        root_dev: u64,
        source: &VolumeDirectory,
        staging: &CloneStaging,
        limits: CopyLimits,
    ) -> Result<Walk, StorageError> {
        let (src_top, st) = source_top(root, root_dev, source)?;
        let staging_root = staging::open_or_create_root(root, root_dev)?;
        let partial = staging.partial_name();
        let staged = CloneStaging::path_of(&partial);
        // Private while it is built; it gets the source's mode when complete.
        mkdirat(
            &staging_root,
            partial.as_str(),
            Mode::from_bits_truncate(0o700),
        )
        .map_err(|e| fs_error("mkdir", &staged, e))?;
        let dst = openat(
            &staging_root,
            partial.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fs_error("open", &staged, e))?;
        let dst_top = openat(
            &dst,
            ".",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fs_error("open", &staged, e))?;
        let dst_st = fstat(&dst).map_err(|e| fs_error("stat", &staged, e))?;
        let (euid, egid) = (geteuid().as_raw(), getegid().as_raw());
        let created_owner =
            (dst_st.st_uid == euid && dst_st.st_gid == egid && dst_st.st_mode & libc::S_ISGID == 0)
                .then_some((euid, egid));
        let listing =
            reopen_here(src_top.as_fd()).map_err(|e| fs_error("open", source.as_str(), e))?;
        let src = DirStream::new(listing).map_err(|e| fs_error("opendir", source.as_str(), e))?;
        let top = Level {
            name: CString::default(),
            rel_len: 0,
            src_ino: st.st_ino,
            dst_ino: dst_st.st_ino,
            meta: Meta::of(&st),
            streams: Some(Streams { src, dst }),
            position: 0,
            recheck: false,
        };
        let mut stack = Vec::with_capacity(limits.open_levels.min(64));
        stack.push(top);
        Ok(Walk {
            source: source.to_string(),
            staged,
            partial,
            src_dev: st.st_dev,
            src_top,
            dst_top,
            staging_root,
            stack,
            open_from: 0,
            rel: String::new(),
            file: None,
            links: LinkMap::new(&limits),
            buffer: Vec::new(),
            copy_range: true,
            host: Host {
                noatime: true,
                created_owner,
            },
            limits,
        })
    }

    fn run(&mut self, ctx: &OpContext, tally: &mut Tally) -> Result<Progress, StorageError> {
        let mut progressed = false;
        loop {
            if progressed && ctx.slice_over() {
                return Ok(Progress::Paused);
            }
            ctx.check()?;
            if let Some(file) = &mut self.file {
                let step = file
                    .step(&mut self.buffer, &mut self.copy_range)
                    .map_err(|e| fs_error("copy", &format!("{}/{}", self.source, file.rel), e))?;
                match step {
                    Some(bytes) => tally.progress.bytes += bytes,
                    None => {
                        if let Some(done) = self.file.take() {
                            done.finish(&self.host, tally)?;
                        }
                    }
                }
                progressed = true;
                continue;
            }
            let depth = self.stack.len() - 1;
            if self.stack[depth].streams.is_none() {
                self.reopen(depth, ctx)?;
            }
            let next = match &mut self.stack[depth].streams {
                Some(streams) => streams.src.next_entry(),
                None => unreachable!("the current directory was just reopened"),
            };
            match next {
                None => {
                    self.leave_dir(tally)?;
                    progressed = true;
                    if self.stack.is_empty() {
                        return Ok(Progress::Finished);
                    }
                }
                Some(Err(e)) => {
                    return Err(fs_error("readdir", &self.shown_dir(), e));
                }
                Some(Ok((name, d_type))) => {
                    if name.as_c_str() == c"." || name.as_c_str() == c".." {
                        continue;
                    }
                    // The listing's type saves a stat for files and directories: they are
                    // opened anyway, and the open descriptor's fstat is what counts.
                    let hint = match d_type {
                        libc::DT_REG => Some(SFlag::S_IFREG),
                        libc::DT_DIR => Some(SFlag::S_IFDIR),
                        _ => None,
                    };
                    self.entry(ctx, tally, &name, hint)?;
                    progressed = true;
                }
            }
        }
    }

    fn shown_dir(&self) -> String {
        if self.rel.is_empty() {
            self.source.clone()
        } else {
            format!("{}/{}", self.source, self.rel)
        }
    }

    /// Copies one entry of the current directory (or starts copying it).
    fn entry(
        &mut self,
        ctx: &OpContext,
        tally: &mut Tally,
        name: &CStr,
        mut hint: Option<SFlag>,
    ) -> Result<(), StorageError> {
        let rel = if self.rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{}/{}", self.rel, name.to_string_lossy())
        };
        let shown = format!("{}/{rel}", self.source);
        let staged = format!("{}/{rel}", self.staged);
        ctx.fault_point("copy_entry", &shown);
        ctx.check()?;
        let Walk {
            stack,
            links,
            dst_top,
            host,
            limits,
            src_dev,
            ..
        } = self;
        let level = stack.last().expect("walking a directory");
        let Some(streams) = &level.streams else {
            unreachable!("the current directory is open");
        };
        let at = At {
            src: streams.src.fd(),
            dst: streams.dst.as_fd(),
            name,
            rel: &rel,
            shown: &shown,
            staged: &staged,
            src_dev: *src_dev,
        };
        if level.recheck {
            match fstatat(at.dst, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(_) => return Ok(()), // copied before this directory was closed
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(fs_error("stat", &staged, e)),
            }
        }
        let mut action = Action::Changed;
        for _ in 0..=RESOLVE_RETRIES {
            // Only files and directories come with a hint; everything else is stat'ed.
            let (kind, st) = match hint.take() {
                Some(kind) => (kind, None),
                None => match fstatat(at.src, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => (file_type(&st), Some(st)),
                    Err(Errno::ENOENT) => {
                        tally.note(CopyNoteKind::Vanished, &rel);
                        return Ok(());
                    }
                    Err(e) => return Err(fs_error("stat", &shown, e)),
                },
            };
            action = match (kind, st) {
                (SFlag::S_IFDIR, _) => enter_dir(&at, stack.len(), limits, host, tally, ctx)
                    .or_else(|e| already_copied(e, &rel))?,
                (SFlag::S_IFREG, _) => {
                    let dir_rel = &stack[1..];
                    start_file(&at, dir_rel, dst_top.as_fd(), links, host, tally, ctx)
                        .or_else(|e| already_copied(e, &rel))?
                }
                (SFlag::S_IFSOCK, _) => {
                    tally.note(CopyNoteKind::Socket, &rel);
                    Action::Done
                }
                (SFlag::S_IFLNK, Some(st)) => {
                    copy_symlink(&at, &st, host, tally).or_else(|e| already_copied(e, &rel))?
                }
                (SFlag::S_IFIFO | SFlag::S_IFCHR | SFlag::S_IFBLK, Some(st)) => {
                    copy_special(&at, &st, host, tally).or_else(|e| already_copied(e, &rel))?
                }
                _ => {
                    tally.note(CopyNoteKind::UnknownType, &rel);
                    Action::Done
                }
            };
            if !matches!(action, Action::Changed) {
                break;
            }
        }
        match action {
            Action::Done => Ok(()),
            Action::Changed => Err(unsafe_path(
                &shown,
                "it kept changing type while being copied",
            )),
            Action::File(file) => {
                self.file = Some(file);
                Ok(())
            }
            Action::Descend(level) => {
                self.rel = rel;
                self.push(level);
                Ok(())
            }
        }
    }

    fn push(&mut self, level: Level) {
        self.stack.push(level);
        if self.stack.len() - self.open_from > self.limits.open_levels {
            let shallowest = &mut self.stack[self.open_from];
            if let Some(streams) = shallowest.streams.take() {
                shallowest.position = streams.src.tell();
            }
            self.open_from += 1;
        }
    }

    /// The current directory's listing is done: give its copy the source's mode, owner and
    /// times (now that nothing more is created in it) and go up.
    fn leave_dir(&mut self, tally: &mut Tally) -> Result<(), StorageError> {
        let level = self.stack.pop().expect("walking a directory");
        let Some(Streams { src, dst }) = level.streams else {
            unreachable!("the current directory is open");
        };
        drop(src);
        let staged = if self.rel.is_empty() {
            self.staged.clone()
        } else {
            format!("{}/{}", self.staged, self.rel)
        };
        apply_meta(
            dst.as_fd(),
            &level.meta,
            &self.rel,
            &staged,
            &self.host,
            tally,
        )?;
        if let Some(parent) = self.stack.last() {
            self.rel.truncate(parent.rel_len);
        }
        Ok(())
    }

    /// Reopens the closed level `depth` (the deepest closed one) and the closed levels above
    /// it, up to [`CopyLimits::open_levels`] of them, by name from the top (one walk down
    /// for the whole batch, so climbing out of a deep tree costs depth / open_levels walks,
    /// not one per level). Each reopened directory must be the one copied before.
    fn reopen(&mut self, depth: usize, ctx: &OpContext) -> Result<(), StorageError> {
        let shown = self.shown_dir();
        let changed = || StorageError::Io {
            op: "reopen",
            path: shown.clone(),
            source: std::io::Error::other(
                "a directory being copied was moved or replaced during the copy",
            ),
        };
        let first = (depth + 1).saturating_sub(self.limits.open_levels.max(1));
        let mut src = reopen_here(self.src_top.as_fd()).map_err(|e| fs_error("open", &shown, e))?;
        let mut dst = reopen_here(self.dst_top.as_fd()).map_err(|e| fs_error("open", &shown, e))?;
        for index in 0..=depth {
            // Up to two opens per level of a tree up to the depth limit: stop as soon as the
            // caller gave up.
            ctx.check()?;
            if index > 0 {
                let name = &self.stack[index].name;
                src = open_subdir(src.as_fd(), name).map_err(|_| changed())?;
                dst = open_subdir(dst.as_fd(), name).map_err(|_| changed())?;
            }
            if index < first {
                continue;
            }
            let src_st = fstat(&src).map_err(|e| fs_error("stat", &shown, e))?;
            let dst_st = fstat(&dst).map_err(|e| fs_error("stat", &shown, e))?;
            let level = &mut self.stack[index];
            if src_st.st_ino != level.src_ino
                || src_st.st_dev != self.src_dev
                || dst_st.st_ino != level.dst_ino
            {
                return Err(changed());
            }
            // The stream gets its own descriptors; `src`/`dst` walk on from here.
            let listing = reopen_here(src.as_fd()).map_err(|e| fs_error("open", &shown, e))?;
            let mut stream = DirStream::new(listing).map_err(|e| fs_error("opendir", &shown, e))?;
            stream.seek(level.position);
            let dst_here = reopen_here(dst.as_fd()).map_err(|e| fs_error("open", &shown, e))?;
            level.streams = Some(Streams {
                src: stream,
                dst: dst_here,
            });
            level.recheck = true;
        }
        self.open_from = first;
        Ok(())
    }

    /// Renames the finished copy to its complete name (a plain rename: in the private
    /// staging directory nothing else can be at that name but an empty directory, which
    /// rename(2) replaces atomically; a non-empty one makes it fail).
    fn complete(&mut self, staging: &CloneStaging) -> Result<(), StorageError> {
        renameat(
            &self.staging_root,
            self.partial.as_str(),
            &self.staging_root,
            staging.complete_name(),
        )
        .map_err(|e| fs_error("rename", &CloneStaging::path_of(staging.complete_name()), e))
    }
}

/// Creating an entry in the copy found its name taken. The staging place is the copy's
/// alone, so the name was created by this copy: a source directory being written to can list
/// a name twice (its listing shifts under the reads), and the first time was copied whole.
/// The entry is taken as copied instead of failing the clone.
fn already_copied(e: StorageError, rel: &str) -> Result<Action, StorageError> {
    match &e {
        StorageError::Io { op, source, .. }
            if source.raw_os_error() == Some(libc::EEXIST)
                && matches!(*op, "mkdir" | "create" | "symlink" | "mknod" | "link") =>
        {
            tracing::debug!(path = rel, "listed twice by the source; already copied");
            Ok(Action::Done)
        }
        _ => Err(e),
    }
}

/// A fresh open file description of the directory `dir` (reading starts at its top).
fn reopen_here(dir: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

fn open_subdir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens `name` for reading without following a symlink, blocking on a FIFO or becoming a
/// controlling terminal; with `O_NOATIME` where permitted.
fn open_for_reading(
    dir: BorrowedFd<'_>,
    name: &CStr,
    extra: OFlag,
    host: &mut Host,
) -> Result<OwnedFd, Errno> {
    if host.noatime {
        match openat(
            dir,
            name,
            READ_FLAGS | extra | OFlag::O_NOATIME,
            Mode::empty(),
        ) {
            // Only the file's owner (or CAP_FOWNER) may use O_NOATIME.
            Err(Errno::EPERM) => host.noatime = false,
            other => return other,
        }
    }
    openat(dir, name, READ_FLAGS | extra, Mode::empty())
}

fn enter_dir(
    at: &At<'_>,
    depth: usize,
    limits: &CopyLimits,
    host: &mut Host,
    tally: &mut Tally,
    ctx: &OpContext,
) -> Result<Action, StorageError> {
    if depth > limits.max_depth {
        return Err(unsafe_path(
            at.shown,
            format!(
                "the source is more than {} directory levels deep; it was not copied",
                limits.max_depth
            ),
        ));
    }
    ctx.fault_point("copy_open", at.shown);
    let src = match open_for_reading(at.src, at.name, OFlag::O_DIRECTORY, host) {
        Ok(fd) => fd,
        Err(Errno::ELOOP | Errno::ENOTDIR) => return Ok(Action::Changed),
        Err(Errno::ENOENT) => {
            tally.note(CopyNoteKind::Vanished, at.rel);
            return Ok(Action::Done);
        }
        Err(e) => return Err(fs_error("open", at.shown, e)),
    };
    let opened = fstat(&src).map_err(|e| fs_error("stat", at.shown, e))?;
    if file_type(&opened) != SFlag::S_IFDIR {
        return Ok(Action::Changed);
    }
    // A mount point opens as the root of the other file system: not entered further.
    if opened.st_dev != at.src_dev {
        tally.note(CopyNoteKind::MountPoint, at.rel);
        return Ok(Action::Done);
    }
    mkdirat(at.dst, at.name, Mode::from_bits_truncate(0o700))
        .map_err(|e| fs_error("mkdir", at.staged, e))?;
    let dst = open_subdir(at.dst, at.name).map_err(|e| fs_error("open", at.staged, e))?;
    let dst_ino = fstat(&dst)
        .map_err(|e| fs_error("stat", at.staged, e))?
        .st_ino;
    tally.progress.entries += 1;
    let stream = DirStream::new(src).map_err(|e| fs_error("opendir", at.shown, e))?;
    Ok(Action::Descend(Level {
        name: at.name.to_owned(),
        rel_len: at.rel.len(),
        src_ino: opened.st_ino,
        dst_ino,
        meta: Meta::of(&opened),
        streams: Some(Streams { src: stream, dst }),
        position: 0,
        recheck: false,
    }))
}

/// Path of `name` in the current directory relative to the staging copy's top.
fn staged_rel(dirs: &[Level], name: &CStr) -> Vec<u8> {
    let mut path = Vec::new();
    for level in dirs {
        path.extend_from_slice(level.name.to_bytes());
        path.push(b'/');
    }
    path.extend_from_slice(name.to_bytes());
    path
}

/// Links `name` in `dst` to the first copy `first` (relative to `top`), resolving it one
/// component at a time without following anything.
fn link_first_copy(
    top: BorrowedFd<'_>,
    first: &[u8],
    dst: BorrowedFd<'_>,
    name: &CStr,
    ctx: &OpContext,
) -> Result<(), Errno> {
    let mut parts = first.split(|b| *b == b'/').peekable();
    let mut dir: Option<OwnedFd> = None;
    while let Some(part) = parts.next() {
        // The caller gave up (deadline, cancellation): stop walking (its check says why).
        if ctx.check().is_err() {
            return Err(Errno::ECANCELED);
        }
        let part = CString::new(part).map_err(|_| Errno::EINVAL)?;
        let base = dir.as_ref().map_or(top, |fd| fd.as_fd());
        if parts.peek().is_none() {
            return linkat(base, part.as_c_str(), dst, name, AtFlags::empty());
        }
        dir = Some(openat(
            base,
            part.as_c_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?);
    }
    Err(Errno::EINVAL)
}

fn start_file(
    at: &At<'_>,
    dirs: &[Level],
    dst_top: BorrowedFd<'_>,
    links: &mut LinkMap,
    host: &mut Host,
    tally: &mut Tally,
    ctx: &OpContext,
) -> Result<Action, StorageError> {
    ctx.fault_point("copy_open", at.shown);
    let src = match open_for_reading(at.src, at.name, OFlag::empty(), host) {
        Ok(fd) => fd,
        // A symlink swapped in (ELOOP), or a socket (ENXIO): copy it as what it is now.
        Err(Errno::ELOOP | Errno::ENXIO) => return Ok(Action::Changed),
        Err(Errno::ENOENT) => {
            tally.note(CopyNoteKind::Vanished, at.rel);
            return Ok(Action::Done);
        }
        Err(e) => return Err(fs_error("open", at.shown, e)),
    };
    let st = fstat(&src).map_err(|e| fs_error("stat", at.shown, e))?;
    if file_type(&st) != SFlag::S_IFREG {
        // A FIFO, device or directory swapped in: never read; copied as what it is now.
        return Ok(Action::Changed);
    }
    if st.st_dev != at.src_dev {
        tally.note(CopyNoteKind::MountPoint, at.rel);
        return Ok(Action::Done);
    }
    if st.st_nlink > 1
        && let Some(first) = links.first_copy(st.st_ino)
    {
        match link_first_copy(dst_top, first, at.dst, at.name, ctx) {
            Ok(()) => {
                links.linked(st.st_ino);
                tally.progress.entries += 1;
                return Ok(Action::Done);
            }
            Err(
                Errno::ENOENT
                | Errno::ENOTDIR
                | Errno::ELOOP
                | Errno::EMLINK
                | Errno::ENAMETOOLONG
                | Errno::EXDEV
                | Errno::EPERM,
            ) => tally.note(CopyNoteKind::HardLinkCopied, at.rel),
            Err(Errno::ECANCELED) => {
                ctx.check()?;
                return Err(fs_error("link", at.staged, Errno::ECANCELED));
            }
            Err(e) => return Err(fs_error("link", at.staged, e)),
        }
    }
    // Reads block as usual from here on (O_NONBLOCK only guarded the open). F_SETFL sets
    // only the status flags: O_NOATIME (kept if the open used it) and O_NONBLOCK (cleared).
    let status = if host.noatime {
        OFlag::O_NOATIME
    } else {
        OFlag::empty()
    };
    fcntl(&src, FcntlArg::F_SETFL(status)).map_err(|e| fs_error("fcntl", at.shown, e))?;
    let dst = openat(
        at.dst,
        at.name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| fs_error("create", at.staged, e))?;
    tally.progress.entries += 1;
    if st.st_nlink > 1
        && links.first_copy(st.st_ino).is_none()
        && !links.remember(st.st_ino, staged_rel(dirs, at.name), st.st_nlink as u64 - 1)
    {
        tally.note(CopyNoteKind::HardLinkCopied, at.rel);
    }
    // Fewer blocks than bytes: it may have holes, look for them. Otherwise (the heuristic of
    // `cp`) copy it whole without two lseeks per file.
    let maybe_sparse = st.st_blocks.saturating_mul(512) < st.st_size;
    Ok(Action::File(FileCopy {
        src,
        dst,
        size: st.st_size,
        pos: 0,
        data_end: if maybe_sparse { 0 } else { st.st_size },
        written_end: 0,
        meta: Meta::of(&st),
        rel: at.rel.to_owned(),
        staged: at.staged.to_owned(),
    }))
}

impl FileCopy {
    /// Copies the next piece of data: `Some(bytes)` while there is more, `None` when done.
    fn step(&mut self, buffer: &mut Vec<u8>, copy_range: &mut bool) -> Result<Option<u64>, Errno> {
        if self.pos >= self.data_end {
            if self.pos >= self.size {
                return Ok(None);
            }
            match lseek(&self.src, self.pos, Whence::SeekData) {
                Ok(start) => {
                    let end = match lseek(&self.src, start, Whence::SeekHole) {
                        Ok(end) => end,
                        Err(Errno::ENXIO) => self.size,
                        Err(e) => return Err(e),
                    };
                    self.pos = start.min(self.size);
                    self.data_end = end.min(self.size);
                }
                // Only a hole up to the end (ftruncate in `finish` restores the size).
                Err(Errno::ENXIO) => {
                    self.pos = self.size;
                    return Ok(None);
                }
                // No hole reporting here: all of it is data.
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => self.data_end = self.size,
                Err(e) => return Err(e),
            }
            if self.pos >= self.data_end {
                return Ok(None);
            }
        }
        let len = usize::try_from(self.data_end - self.pos)
            .unwrap_or(CHUNK_BYTES)
            .min(CHUNK_BYTES);
        let mut copied = None;
        if *copy_range {
            let (mut off_in, mut off_out) = (self.pos, self.pos);
            match copy_file_range(
                &self.src,
                Some(&mut off_in),
                &self.dst,
                Some(&mut off_out),
                len,
            ) {
                Ok(n) => copied = Some(n),
                // Not between these files (or this kernel): plain reads and writes.
                Err(Errno::EXDEV | Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP) => {
                    *copy_range = false
                }
                Err(e) => return Err(e),
            }
        }
        let n = match copied {
            Some(n) => n,
            None => self.read_write(buffer, len)?,
        };
        if n == 0 {
            // The source ended early: it shrank while being copied. Copy it as it is now.
            self.size = self.pos;
            self.data_end = self.pos;
            return Ok(Some(0));
        }
        self.pos += n as i64;
        self.written_end = self.pos;
        Ok(Some(n as u64))
    }

    fn read_write(&mut self, buffer: &mut Vec<u8>, len: usize) -> Result<usize, Errno> {
        if buffer.is_empty() {
            buffer.resize(FALLBACK_BUFFER_BYTES, 0);
        }
        let want = len.min(buffer.len());
        let n = pread(&self.src, &mut buffer[..want], self.pos)?;
        let mut written = 0;
        while written < n {
            let w = pwrite(&self.dst, &buffer[written..n], self.pos + written as i64)?;
            if w == 0 {
                return Err(Errno::EIO);
            }
            written += w;
        }
        Ok(n)
    }

    /// Size (a trailing hole), then owner, mode and times.
    fn finish(self, host: &Host, tally: &mut Tally) -> Result<(), StorageError> {
        if self.written_end != self.size {
            ftruncate(&self.dst, self.size).map_err(|e| fs_error("truncate", &self.staged, e))?;
        }
        apply_meta(
            self.dst.as_fd(),
            &self.meta,
            &self.rel,
            &self.staged,
            host,
            tally,
        )
    }
}

impl Host {
    fn chown_needed(&self, meta: &Meta) -> bool {
        self.created_owner != Some((meta.uid, meta.gid))
    }
}

/// Owner, then mode (chown clears set-id bits), then times, on an open file or directory.
fn apply_meta(
    fd: BorrowedFd<'_>,
    meta: &Meta,
    rel: &str,
    staged: &str,
    host: &Host,
    tally: &mut Tally,
) -> Result<(), StorageError> {
    if host.chown_needed(meta) {
        let owner = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        match fchown(fd, owner.0, owner.1) {
            Ok(()) => {}
            Err(Errno::EPERM | Errno::EINVAL) => tally.note(CopyNoteKind::OwnerNotKept, rel),
            Err(e) => return Err(fs_error("chown", staged, e)),
        }
    }
    fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(|e| fs_error("chmod", staged, e))?;
    futimens(fd, &meta.atime, &meta.mtime).map_err(|e| fs_error("set times of", staged, e))
}

/// Owner and times of an entry that cannot be opened (symlink, FIFO, device node).
fn apply_meta_at(
    at: &At<'_>,
    meta: &Meta,
    host: &Host,
    tally: &mut Tally,
) -> Result<(), StorageError> {
    if host.chown_needed(meta) {
        let owner = (Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        match fchownat(
            at.dst,
            at.name,
            owner.0,
            owner.1,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(()) => {}
            Err(Errno::EPERM | Errno::EINVAL) => tally.note(CopyNoteKind::OwnerNotKept, at.rel),
            Err(e) => return Err(fs_error("chown", at.staged, e)),
        }
    }
    utimensat(
        at.dst,
        at.name,
        &meta.atime,
        &meta.mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| fs_error("set times of", at.staged, e))
}

fn copy_symlink(
    at: &At<'_>,
    st: &FileStat,
    host: &Host,
    tally: &mut Tally,
) -> Result<Action, StorageError> {
    let target = match readlinkat(at.src, at.name) {
        Ok(target) => target,
        Err(Errno::EINVAL) => return Ok(Action::Changed), // no longer a symlink
        Err(Errno::ENOENT) => {
            tally.note(CopyNoteKind::Vanished, at.rel);
            return Ok(Action::Done);
        }
        Err(e) => return Err(fs_error("readlink", at.shown, e)),
    };
    // The target is text to copy, never a path resolved here.
    symlinkat(target.as_bytes(), at.dst, at.name).map_err(|e| fs_error("symlink", at.staged, e))?;
    tally.progress.entries += 1;
    apply_meta_at(at, &Meta::of(st), host, tally)?;
    Ok(Action::Done)
}

fn copy_special(
    at: &At<'_>,
    st: &FileStat,
    host: &Host,
    tally: &mut Tally,
) -> Result<Action, StorageError> {
    let kind = file_type(st);
    match mknodat(
        at.dst,
        at.name,
        kind,
        Mode::from_bits_truncate(0o600),
        st.st_rdev,
    ) {
        Ok(()) => {}
        Err(Errno::EPERM | Errno::EACCES | Errno::EOPNOTSUPP) => {
            tally.note(CopyNoteKind::SpecialFileNotCreated, at.rel);
            return Ok(Action::Done);
        }
        Err(e) => return Err(fs_error("mknod", at.staged, e)),
    }
    tally.progress.entries += 1;
    let meta = Meta::of(st);
    apply_meta_at(at, &meta, host, tally)?;
    // mknod's mode is masked by umask, so set it again (after chown, which may clear set-id
    // bits; chmod changes no times). glibc does AT_SYMLINK_NOFOLLOW with fchmodat2 or an
    // O_PATH descriptor through /proc; without either it refuses rather than follow.
    match fchmodat(
        at.dst,
        at.name,
        Mode::from_bits_truncate(meta.mode),
        FchmodatFlags::NoFollowSymlink,
    ) {
        Ok(()) => {}
        Err(Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::ENOENT) => {
            tally.note(CopyNoteKind::ModeNotKept, at.rel)
        }
        Err(e) => return Err(fs_error("chmod", at.staged, e)),
    }
    Ok(Action::Done)
}

#[cfg(test)]
mod tests;
