//! Everything that touches the mounted NFS root.
//!
//! [`NfsRoot`] holds an `O_PATH` handle of the root and runs each operation's blocking
//! system calls on a dedicated thread (see [`confined`] for how paths stay beneath the root).
//!
//! Deadlines: the async caller waits at most [`StorageOptions::op_timeout`] and returns
//! [`StorageError::NotResponding`] (or [`StorageError::Cancelled`] as soon as its token
//! fires). The worker thread cannot be killed if it is stuck in the kernel; it is marked
//! abandoned, stops at its next syscall boundary if it ever returns, and until then counts
//! as *stuck* ([`NfsRoot::stuck_operations`]). Every worker holds a permit from a semaphore
//! of [`StorageOptions::max_stuck_ops`] permits, released only when the thread really
//! returns, so stuck threads are bounded; once that many are stuck, new operations fail
//! fast with [`StorageError::Overloaded`]. Dedicated threads (not `spawn_blocking`) are
//! used so that a stuck thread never blocks runtime shutdown.
//!
//! Work that can outlast any deadline (removing a tree of millions of entries) runs in
//! slices: each slice is one such operation, stops cleanly at half its deadline once it has
//! made progress, and the async method starts the next one (see
//! [`NfsRoot::delete_volume_dir`]). So the deadline still detects a server that stops
//! answering, without failing work that is merely large.
//!
//! Cloning a claim copies the source volume directory into a staging directory beneath the
//! root ([`NfsRoot::copy_volume_dir`], see [`copy`] and [`staging`]) in the same kind of
//! slices, and only [`NfsRoot::finish_copy`] renames a complete copy into place.

mod confined;
mod copy;
mod dir_stream;
mod journal;
mod removal;
mod staging;
mod usage;

pub use usage::{UsageStep, VolumeUsage};

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, open};
use nix::sys::stat::{Mode, SFlag, fstat};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
pub use tokio_util::sync::CancellationToken;

pub use copy::{CopyNote, CopyNoteKind, CopyOutcome, CopyProgress, CopyStart, MAX_COPY_NOTES};
pub use staging::{CloneStaging, FinishOutcome, StagedCopy};

use crate::parameters::DirectoryPermissions;
use crate::planning::{JOURNAL_DIRECTORY, STAGING_DIRECTORY, VolumeDirectory};

/// Tuning for [`NfsRoot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageOptions {
    /// Deadline of every operation on the root. Default 30s.
    pub op_timeout: Duration,
    /// Bound on worker threads that may be stuck in the kernel (and on concurrent
    /// operations). Default 16. Values below 1 are treated as 1.
    pub max_stuck_ops: usize,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            op_timeout: Duration::from_secs(30),
            max_stuck_ops: 16,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The volume directory was created (mode/owner applied to it and to created parents).
    Created,
    /// It already existed; its mode and owner were left alone.
    AlreadyExisted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveOutcome {
    Removed,
    /// Nothing to remove (logged); empty parents were still cleaned up.
    AlreadyGone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveOutcome {
    /// Renamed to `to` (the requested archive name, or it with a collision suffix).
    Archived {
        to: VolumeDirectory,
    },
    AlreadyGone,
}

/// Failure of an operation on the NFS root. Paths are relative to the root.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("NFS root not responding: {op} did not finish within {timeout:?}")]
    NotResponding { op: &'static str, timeout: Duration },
    #[error("NFS root not responding ({stuck} operations stuck); not starting another")]
    Overloaded { stuck: usize },
    #[error("operation on the NFS root cancelled")]
    Cancelled,
    #[error("refusing unsafe path {path:?} beneath the NFS root: {reason}")]
    Unsafe { path: String, reason: String },
    #[error("{op} {path:?} beneath the NFS root failed: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free archive name for {base:?} after {attempts} attempts")]
    ArchiveNameUnavailable { base: String, attempts: usize },
    /// A directory created for a volume could not be given its configured owner, typically
    /// because the provisioner runs without the CHOWN capability (PodSecurity `restricted`)
    /// or the server squashes its uid. The new directory was removed again.
    #[error(
        "cannot give new directory {path:?} owner {} group {}: {source}; the provisioner runs as uid {process_uid} without the right to chown (no CHOWN capability, as in the PodSecurity restricted mode, or an export with root_squash). Unset the StorageClass's directoryUid/directoryGid, the claim's k8s-sigs.io/nfs-directory-uid/gid annotations and NFS_DEFAULT_UID/NFS_DEFAULT_GID, or run the provisioner as root with CHOWN on an export without root_squash. The directory was removed again",
        id_or_unchanged(*uid),
        id_or_unchanged(*gid)
    )]
    OwnerNotPermitted {
        path: String,
        uid: Option<u32>,
        gid: Option<u32>,
        process_uid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot put the cloned copy at {path:?}: something that is not an empty directory is already there; the copy stays staged"
    )]
    DestinationExists { path: String },
}

/// A uid/gid as chown(2) takes it: unset means "leave unchanged".
fn id_or_unchanged(id: Option<u32>) -> String {
    id.map_or_else(|| "unchanged".to_owned(), |id| id.to_string())
}

impl StorageError {
    /// Short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            StorageError::NotResponding { .. } => "not_responding",
            StorageError::Overloaded { .. } => "overloaded",
            StorageError::Cancelled => "cancelled",
            StorageError::Unsafe { .. } => "unsafe_path",
            StorageError::Io { .. } => "io",
            StorageError::ArchiveNameUnavailable { .. } => "archive_name_unavailable",
            StorageError::OwnerNotPermitted { .. } => "owner_not_permitted",
            StorageError::DestinationExists { .. } => "destination_exists",
        }
    }

    /// True for errors caused by a slow or hung server (worth retrying later).
    pub fn is_not_responding(&self) -> bool {
        matches!(
            self,
            StorageError::NotResponding { .. } | StorageError::Overloaded { .. }
        )
    }
}

/// Test hook called on the worker thread at the start of each operation (op name, path
/// relative to the root) and before each entry removed in a tree. It lets a test stand in
/// for a server that hangs inside a system call.
#[doc(hidden)]
pub type FaultHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

const RUNNING: u8 = 0;
const DONE: u8 = 1;
const ABANDONED: u8 = 2;

/// Per-operation state shared between the async caller and the worker thread.
pub(crate) struct OpContext {
    state: Arc<AtomicU8>,
    hook: Option<FaultHook>,
    /// When work that can stop midway (tree removal) should stop and report progress, well
    /// before the caller's deadline.
    slice_end: Option<Instant>,
}

impl OpContext {
    /// Fails once the caller has given up (deadline or cancellation).
    pub(crate) fn check(&self) -> Result<(), StorageError> {
        if self.state.load(Ordering::Acquire) == ABANDONED {
            Err(StorageError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// True once the slice's time is up (never for a context without a slice end).
    pub(crate) fn slice_over(&self) -> bool {
        self.slice_end.is_some_and(|end| Instant::now() >= end)
    }

    pub(crate) fn fault_point(&self, op: &str, path: &str) {
        if let Some(hook) = &self.hook {
            hook(op, path);
        }
    }

    #[cfg(test)]
    pub(crate) fn detached() -> Self {
        OpContext {
            state: Arc::new(AtomicU8::new(RUNNING)),
            hook: None,
            slice_end: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn with_slice_end(end: Instant) -> Self {
        OpContext {
            slice_end: Some(end),
            ..Self::detached()
        }
    }
}

/// Holds state with open descriptors on the NFS root (a copy between its slices). Dropped
/// anywhere but a worker thread, it closes them on a thread of its own: closing a file
/// written on NFS flushes its data and can hang like any other call on a dead server, and it
/// must never block the async runtime.
struct DroppedOffRuntime<T: Send + 'static>(Option<T>);

impl<T: Send + 'static> Drop for DroppedOffRuntime<T> {
    fn drop(&mut self) {
        if let Some(held) = self.0.take() {
            // If no thread can be started, `held` goes back with the error and is dropped
            // here: there is nowhere else to close it.
            let _ = std::thread::Builder::new()
                .name("nfs-close".into())
                .spawn(move || drop(held));
        }
    }
}

struct Inner {
    root: OwnedFd,
    root_dev: u64,
    path: PathBuf,
    opts: StorageOptions,
    permits: Arc<Semaphore>,
    stuck: AtomicUsize,
    hook: Option<FaultHook>,
}

/// Handle of the mounted NFS root. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct NfsRoot {
    inner: Arc<Inner>,
}

impl fmt::Debug for NfsRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NfsRoot")
            .field("path", &self.inner.path)
            .field("opts", &self.inner.opts)
            .field("stuck", &self.stuck_operations())
            .finish()
    }
}

/// Runs on the worker thread's exit (also on panic): releases the permit and, if the caller
/// had given up on this thread, removes it from the stuck count.
struct WorkerExit {
    inner: Arc<Inner>,
    state: Arc<AtomicU8>,
    op: &'static str,
    _permit: OwnedSemaphorePermit,
}

impl Drop for WorkerExit {
    fn drop(&mut self) {
        if self
            .state
            .compare_exchange(RUNNING, DONE, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.inner.stuck.fetch_sub(1, Ordering::AcqRel);
            tracing::info!(
                op = self.op,
                "abandoned NFS operation finished; permit returned"
            );
        }
    }
}

/// Marks the worker abandoned if the caller stops waiting for any reason (deadline,
/// cancellation, or the caller's future being dropped).
struct CallerWatch {
    inner: Arc<Inner>,
    state: Arc<AtomicU8>,
    armed: bool,
}

impl CallerWatch {
    /// Returns false if the worker already finished (its result is in the channel).
    fn abandon(&mut self) -> bool {
        if !std::mem::take(&mut self.armed) {
            return false;
        }
        // Count first so the worker's decrement can never underflow.
        self.inner.stuck.fetch_add(1, Ordering::AcqRel);
        if self
            .state
            .compare_exchange(RUNNING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            true
        } else {
            self.inner.stuck.fetch_sub(1, Ordering::AcqRel);
            false
        }
    }
}

impl Drop for CallerWatch {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// Runs `work` on a detached thread and waits up to `timeout` (used before an `Inner`
/// exists, i.e. to open the root).
async fn run_detached<T: Send + 'static>(
    op: &'static str,
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StorageError> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("nfs-root-open".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|source| StorageError::Io {
            op: "spawn worker thread for",
            path: ".".into(),
            source,
        })?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(worker_died(op)),
        Err(_) => Err(StorageError::NotResponding { op, timeout }),
    }
}

fn worker_died(op: &'static str) -> StorageError {
    StorageError::Io {
        op,
        path: ".".into(),
        source: std::io::Error::other("worker thread panicked"),
    }
}

impl NfsRoot {
    /// Opens an `O_PATH|O_DIRECTORY` handle of the mounted root (following a symlink in the
    /// configured path itself, which is the admin's choice), within the deadline.
    pub async fn open(path: &Path, opts: StorageOptions) -> Result<NfsRoot, StorageError> {
        Self::open_inner(path, opts, None).await
    }

    /// Like [`NfsRoot::open`], with a [`FaultHook`] for tests that simulate a hung server.
    #[doc(hidden)]
    pub async fn open_with_fault_hook(
        path: &Path,
        opts: StorageOptions,
        hook: FaultHook,
    ) -> Result<NfsRoot, StorageError> {
        Self::open_inner(path, opts, Some(hook)).await
    }

    async fn open_inner(
        path: &Path,
        mut opts: StorageOptions,
        hook: Option<FaultHook>,
    ) -> Result<NfsRoot, StorageError> {
        opts.max_stuck_ops = opts.max_stuck_ops.max(1);
        let owned_path = path.to_path_buf();
        let shown = path.display().to_string();
        let (root, st) = run_detached("open root", opts.op_timeout, move || {
            let fd = open(
                owned_path.as_path(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            let st = fstat(&fd)?;
            Ok::<_, nix::Error>((fd, st))
        })
        .await?
        .map_err(|e| StorageError::Io {
            op: "open root",
            path: shown.clone(),
            source: std::io::Error::from_raw_os_error(e as i32),
        })?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFDIR {
            return Err(StorageError::Unsafe {
                path: shown,
                reason: "the NFS root is not a directory".into(),
            });
        }
        Ok(NfsRoot {
            inner: Arc::new(Inner {
                root,
                root_dev: st.st_dev,
                path: path.to_path_buf(),
                permits: Arc::new(Semaphore::new(opts.max_stuck_ops)),
                opts,
                stuck: AtomicUsize::new(0),
                hook,
            }),
        })
    }

    /// The root path as configured.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Worker threads the callers gave up on that have not returned yet.
    pub fn stuck_operations(&self) -> usize {
        self.inner.stuck.load(Ordering::Acquire)
    }

    /// Creates `dir` and missing parents beneath the root. Only directories created here are
    /// chmod/chown'ed: `dir` itself gets `perms`, created parents get `parent_perms` (mode
    /// set explicitly with fchmod, so umask does not matter; owner with fchown when uid/gid
    /// are set). An existing directory is never chmod/chown'ed.
    pub async fn create_volume_dir(
        &self,
        dir: &VolumeDirectory,
        perms: &DirectoryPermissions,
        parent_perms: &DirectoryPermissions,
        cancel: &CancellationToken,
    ) -> Result<CreateOutcome, StorageError> {
        let (dir2, perms, parent_perms) = (dir.clone(), *perms, *parent_perms);
        self.run("create", dir, cancel, move |inner, ctx| {
            confined::create(inner.root.as_fd(), &dir2, &perms, &parent_perms, ctx)
        })
        .await
    }

    /// Removes the volume directory tree (no symlink followed, no mount point crossed, never
    /// the root), then its empty parents up to (not including) the root, stopping at any
    /// directory in `keep` (other volumes' directories, which may be empty). Already gone is
    /// success (logged). A symlink or non-directory in place of the volume directory is an
    /// [`StorageError::Unsafe`] error and is left untouched.
    ///
    /// Huge trees: the work runs in slices, each a separate operation with its own deadline
    /// ([`StorageOptions::op_timeout`]) that stops cleanly at half of it and reports
    /// progress; this call starts the next slice until the tree is gone. So a delete of
    /// millions of entries takes as long as it takes but never fails as "not responding"
    /// while the server keeps answering; only a slice that makes no progress within the
    /// deadline does. Memory stays bounded (directories are streamed, never listed whole).
    /// Cancellation is honoured between slices and at every entry. Resumable: after an
    /// error, the next call continues.
    pub async fn delete_volume_dir(
        &self,
        dir: &VolumeDirectory,
        keep: Vec<VolumeDirectory>,
        cancel: &CancellationToken,
    ) -> Result<RemoveOutcome, StorageError> {
        let keep = Arc::new(keep);
        let mut removed = 0u64;
        loop {
            let (dir2, keep2) = (dir.clone(), keep.clone());
            let step = self
                .run("delete", dir, cancel, move |inner, ctx| {
                    confined::delete(inner.root.as_fd(), inner.root_dev, &dir2, &keep2, ctx)
                })
                .await?;
            match step {
                confined::DeleteStep::Finished(outcome) => return Ok(outcome),
                confined::DeleteStep::InProgress { removed: slice } => {
                    removed += slice;
                    tracing::debug!(dir = %dir, removed, "deleting a large volume directory");
                }
            }
        }
    }

    /// Renames the volume directory to `archive`, or to `archive` with a `.N` / time-stamp
    /// suffix if that exists; never replaces an existing entry. Then removes empty parents,
    /// stopping at any directory in `keep` (other volumes' directories).
    /// The archive's parent must exist (planning puts archives at the root).
    pub async fn archive_volume_dir(
        &self,
        dir: &VolumeDirectory,
        archive: &VolumeDirectory,
        keep: Vec<VolumeDirectory>,
        cancel: &CancellationToken,
    ) -> Result<ArchiveOutcome, StorageError> {
        let (dir2, archive2) = (dir.clone(), archive.clone());
        self.run("archive", dir, cancel, move |inner, ctx| {
            confined::archive(
                inner.root.as_fd(),
                inner.root_dev,
                &dir2,
                &archive2,
                &keep,
                ctx,
            )
        })
        .await
    }

    /// Whether the volume directory exists as a real directory (a symlink there is an error).
    pub async fn volume_dir_exists(
        &self,
        dir: &VolumeDirectory,
        cancel: &CancellationToken,
    ) -> Result<bool, StorageError> {
        let dir2 = dir.clone();
        self.run("stat", dir, cancel, move |inner, _ctx| {
            confined::exists(inner.root.as_fd(), &dir2)
        })
        .await
    }

    /// Records in the orphan journal (`.nfs-provisioner-journal` beneath the root) that
    /// `dir` was created for `key` (a Kubernetes UID: 1 to 64 of `[0-9a-zA-Z-]`, anything
    /// else is refused). Atomic (temp file, fsync, rename) and replaces an earlier entry of
    /// the same key. Creates the journal directory (mode 0700) if missing.
    pub async fn journal_record(
        &self,
        key: &str,
        dir: &VolumeDirectory,
        cancel: &CancellationToken,
    ) -> Result<(), StorageError> {
        journal::check_key(key)?;
        let (key, dir) = (key.to_owned(), dir.clone());
        self.run_at(
            "journal record",
            JOURNAL_DIRECTORY,
            cancel,
            move |inner, ctx| journal::record(inner.root.as_fd(), &key, &dir, ctx),
        )
        .await
    }

    /// Removes the journal entry of `key`; already gone is success.
    pub async fn journal_remove(
        &self,
        key: &str,
        cancel: &CancellationToken,
    ) -> Result<(), StorageError> {
        journal::check_key(key)?;
        let key = key.to_owned();
        self.run_at(
            "journal remove",
            JOURNAL_DIRECTORY,
            cancel,
            move |inner, ctx| journal::remove(inner.root.as_fd(), &key, ctx),
        )
        .await
    }

    /// Every journal entry as `(key, directory)`, sorted by key. Entries that are not
    /// regular files, exceed 4 KiB or do not hold a valid volume directory are skipped
    /// (logged). No journal yet: empty.
    pub async fn journal_entries(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<(String, VolumeDirectory)>, StorageError> {
        self.run_at("journal list", JOURNAL_DIRECTORY, cancel, |inner, ctx| {
            journal::entries(inner.root.as_fd(), ctx)
        })
        .await
    }

    /// Copies the volume directory `source` into the staging place of a cloned claim
    /// (`.nfs-provisioner-staging/<claim-uid>`, see [`CloneStaging`]), ready for
    /// [`NfsRoot::finish_copy`]. Nothing is visible at any volume path until then.
    ///
    /// What is copied and how it stays beneath the two directories: see the [`copy`] module
    /// (files with their holes, directories, symlinks as symlinks, hard links inside the
    /// source as links, FIFOs and device nodes re-created, sockets skipped with a note;
    /// modes, owners, times). The copy's own directory gets the source directory's mode,
    /// owner and times, like `cp -a source/. copy`.
    ///
    /// Runs in slices like [`NfsRoot::delete_volume_dir`], each a separate operation with
    /// its own deadline, so a large tree never fails as "not responding" while the server
    /// answers; memory is bounded (directories streamed, a bounded number open).
    /// `progress` is called after every slice with the totals so far (from this task, not
    /// the worker thread). Cancellation is honoured at every entry and every chunk of data.
    ///
    /// Resume semantics: within one call the slices continue each other. Across calls
    /// (after an error, a cancellation, a restart) a copy starts over: an incomplete copy
    /// left at the staging place is removed first ([`CopyStart::DiscardedPartial`]); a
    /// complete one is kept and returned at once ([`CopyStart::AlreadyComplete`]); call
    /// [`NfsRoot::discard_copy`] first to copy afresh. One copy per staging place at a
    /// time. The source's size is not checked here (the caller compares it with the
    /// claim's request beforehand).
    pub async fn copy_volume_dir(
        &self,
        source: &VolumeDirectory,
        staging: &CloneStaging,
        progress: &(dyn Fn(&CopyProgress) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<CopyOutcome, StorageError> {
        self.copy_with_limits(
            source,
            staging,
            copy::CopyLimits::default(),
            progress,
            cancel,
        )
        .await
    }

    pub(crate) async fn copy_with_limits(
        &self,
        source: &VolumeDirectory,
        staging: &CloneStaging,
        limits: copy::CopyLimits,
        progress: &(dyn Fn(&CopyProgress) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<CopyOutcome, StorageError> {
        let mut job = DroppedOffRuntime(Some(Box::new(copy::CopyJob::new(
            source.clone(),
            staging.clone(),
            limits,
        ))));
        loop {
            // The job moves to the slice's worker thread and back; if the slice fails or is
            // abandoned it is dropped there (its descriptors closed when the thread returns).
            // If the caller gives up before the slice starts (cancelled, no permit), the
            // closure is dropped here instead, and the wrapper closes the job on a thread.
            let (returned, step) = self
                .run("copy", source, cancel, move |inner, ctx| {
                    let mut job = job.0.take().expect("a copy job between slices");
                    let step = job.slice(inner.root.as_fd(), inner.root_dev, ctx)?;
                    Ok((job, step))
                })
                .await?;
            job = DroppedOffRuntime(Some(returned));
            let returned = job.0.as_ref().expect("just returned");
            progress(returned.progress());
            if let copy::Step::Done = step {
                let done = job.0.take().expect("just returned");
                return Ok(done.into_outcome());
            }
        }
    }

    /// Renames the complete staged copy to `destination`, creating missing parents with
    /// `parent_perms` (like [`NfsRoot::create_volume_dir`]). One atomic rename that never
    /// replaces anything but an empty directory (what an interrupted rename leaves on file
    /// systems without `RENAME_NOREPLACE`): anything else there is
    /// [`StorageError::DestinationExists`] and the copy stays staged. Nothing staged (never
    /// copied, already finished, discarded): [`FinishOutcome::NothingStaged`], nothing
    /// changed. An incomplete copy is never moved.
    pub async fn finish_copy(
        &self,
        staging: &CloneStaging,
        destination: &VolumeDirectory,
        parent_perms: &DirectoryPermissions,
        cancel: &CancellationToken,
    ) -> Result<FinishOutcome, StorageError> {
        let (staging, destination2, parent_perms) =
            (staging.clone(), destination.clone(), *parent_perms);
        self.run("finish copy", destination, cancel, move |inner, ctx| {
            staging::finish(
                inner.root.as_fd(),
                inner.root_dev,
                &staging,
                &destination2,
                &parent_perms,
                ctx,
            )
        })
        .await
    }

    /// Removes a claim's staged copy, complete or not (streamed and sliced like
    /// [`NfsRoot::delete_volume_dir`]). Nothing there: [`RemoveOutcome::AlreadyGone`]. A
    /// symlink or file at the staging name is refused as unsafe and left in place.
    pub async fn discard_copy(
        &self,
        staging: &CloneStaging,
        cancel: &CancellationToken,
    ) -> Result<RemoveOutcome, StorageError> {
        let path = staging.to_string();
        loop {
            let staging2 = staging.clone();
            let step = self
                .run_at("discard copy", &path, cancel, move |inner, ctx| {
                    staging::discard(inner.root.as_fd(), inner.root_dev, &staging2, ctx)
                })
                .await?;
            match step {
                Some(true) => return Ok(RemoveOutcome::Removed),
                Some(false) => return Ok(RemoveOutcome::AlreadyGone),
                None => tracing::debug!(staging = %staging, "discarding a large staged copy"),
            }
        }
    }

    /// Every staged copy beneath the root (complete or not), sorted, for orphan cleanup:
    /// a copy whose claim is gone can be discarded. Unknown names are skipped (logged).
    pub async fn staged_copies(
        &self,
        cancel: &CancellationToken,
    ) -> Result<Vec<StagedCopy>, StorageError> {
        self.run_at(
            "list staged copies",
            STAGING_DIRECTORY,
            cancel,
            |inner, ctx| staging::list(inner.root.as_fd(), inner.root_dev, ctx),
        )
        .await
    }

    /// Health probe: fstat the root, create and remove a marker file directly beneath it.
    /// Returns the latency. Subject to the same deadline and stuck-thread bound.
    pub async fn probe(&self) -> Result<Duration, StorageError> {
        let started = Instant::now();
        let never = CancellationToken::new();
        self.run_at("probe", ".", &never, |inner, _ctx| {
            confined::probe(inner.root.as_fd())
        })
        .await?;
        Ok(started.elapsed())
    }

    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        dir: &VolumeDirectory,
        cancel: &CancellationToken,
        work: impl FnOnce(&Inner, &OpContext) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.run_at(op, dir.as_str(), cancel, work).await
    }

    async fn run_at<T: Send + 'static>(
        &self,
        op: &'static str,
        path: &str,
        cancel: &CancellationToken,
        work: impl FnOnce(&Inner, &OpContext) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let inner = &self.inner;
        let timeout = inner.opts.op_timeout;
        if cancel.is_cancelled() {
            return Err(StorageError::Cancelled);
        }
        let stuck = self.stuck_operations();
        if stuck >= inner.opts.max_stuck_ops {
            return Err(StorageError::Overloaded { stuck });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        // Permits are only short of stuck threads or a burst of slow operations: wait for
        // one within the same deadline.
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(StorageError::Cancelled),
            acquired = tokio::time::timeout_at(deadline, inner.permits.clone().acquire_owned()) => {
                match acquired {
                    Ok(Ok(permit)) => permit,
                    _ => {
                        let stuck = self.stuck_operations();
                        return Err(if stuck > 0 {
                            StorageError::Overloaded { stuck }
                        } else {
                            StorageError::NotResponding { op, timeout }
                        });
                    }
                }
            }
        };
        let state = Arc::new(AtomicU8::new(RUNNING));
        let ctx = OpContext {
            state: state.clone(),
            hook: inner.hook.clone(),
            // Half the deadline leaves the other half for the last system call in flight.
            slice_end: Some(Instant::now() + timeout / 2),
        };
        let exit = WorkerExit {
            inner: inner.clone(),
            state: state.clone(),
            op,
            _permit: permit,
        };
        let (tx, mut rx) = oneshot::channel();
        let worker_inner = inner.clone();
        let worker_path = path.to_owned();
        let mut watch = CallerWatch {
            inner: inner.clone(),
            state,
            armed: true,
        };
        std::thread::Builder::new()
            .name(format!("nfs-{op}"))
            .spawn(move || {
                let result = {
                    ctx.fault_point(op, &worker_path);
                    ctx.check().and_then(|()| work(&worker_inner, &ctx))
                };
                drop(exit);
                let _ = tx.send(result);
            })
            .map_err(|source| {
                watch.armed = false;
                StorageError::Io {
                    op: "spawn worker thread for",
                    path: path.to_owned(),
                    source,
                }
            })?;
        let gave_up = tokio::select! {
            result = &mut rx => {
                watch.armed = false;
                return result.unwrap_or_else(|_| Err(worker_died(op)));
            }
            _ = tokio::time::sleep_until(deadline) => StorageError::NotResponding { op, timeout },
            _ = cancel.cancelled() => StorageError::Cancelled,
        };
        if !watch.abandon() {
            // Finished at the last moment: report what really happened.
            return rx.await.unwrap_or_else(|_| Err(worker_died(op)));
        }
        tracing::warn!(op, path, error = %gave_up, stuck = self.stuck_operations(), "gave up waiting for NFS operation");
        Err(gave_up)
    }
}

/// A measurement of one volume directory in progress: where the walk stands and the sums so
/// far (see [`NfsRoot::measure_volume_dir`]). Cheap to clone; clones share the progress.
#[derive(Clone)]
pub struct UsageScan {
    dir: VolumeDirectory,
    state: Arc<std::sync::Mutex<usage::ScanState>>,
}

impl UsageScan {
    pub fn new(dir: VolumeDirectory) -> Self {
        UsageScan {
            dir,
            state: Default::default(),
        }
    }

    pub fn dir(&self) -> &VolumeDirectory {
        &self.dir
    }

    /// Whether a slice of this scan is running (or stuck in the kernel) right now.
    pub fn is_busy(&self) -> bool {
        matches!(
            self.state.try_lock(),
            Err(std::sync::TryLockError::WouldBlock)
        )
    }
}

impl fmt::Debug for UsageScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsageScan").field("dir", &self.dir).finish()
    }
}

impl NfsRoot {
    /// One slice of measuring a volume directory's usage (bytes on disk, apparent bytes,
    /// inodes; see [`VolumeUsage`]): at most `max_entries` entries, within one operation's
    /// deadline (stopping cleanly at half of it), continuing where the previous slice of
    /// `scan` stopped. Call again while it returns [`UsageStep::InProgress`].
    ///
    /// Read only, confined beneath the root, never following a symlink or entering another
    /// file system. A slice that hangs is abandoned like any operation (NotResponding); its
    /// thread keeps the scan's progress, so until the server answers again further slices
    /// fail fast instead of queueing behind it, and once it has answered the scan continues
    /// from there.
    pub async fn measure_volume_dir(
        &self,
        scan: &UsageScan,
        max_entries: u64,
        cancel: &CancellationToken,
    ) -> Result<UsageStep, StorageError> {
        let timeout = self.inner.opts.op_timeout;
        if scan.is_busy() {
            return Err(StorageError::NotResponding {
                op: "usage scan (an earlier slice is still waiting for the server)",
                timeout,
            });
        }
        let (state, dir) = (scan.state.clone(), scan.dir.clone());
        self.run("usage", &scan.dir, cancel, move |inner, ctx| {
            let mut state = match state.try_lock() {
                Ok(state) => state,
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err(StorageError::NotResponding {
                        op: "usage scan (an earlier slice is still waiting for the server)",
                        timeout,
                    });
                }
                // A slice panicked midway: its progress cannot be trusted; start again.
                Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                    let mut guard = poisoned.into_inner();
                    guard.reset();
                    state.clear_poison();
                    guard
                }
            };
            usage::scan_slice(
                inner.root.as_fd(),
                inner.root_dev,
                &dir,
                &mut state,
                max_entries,
                ctx,
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests;
