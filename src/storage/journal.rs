//! The orphan journal: which volume directory was created for which claim, kept across
//! restarts so that a directory whose PV was never made can be found again.
//!
//! It lives in [`JOURNAL_DIRECTORY`] directly beneath the root (mode 0700; planning never
//! hands it to a claim). One regular file per entry, named by the key (a Kubernetes UID),
//! holding the directory path relative to the root. Entries are written to a temporary name,
//! fsynced and renamed into place, so a reader sees the old entry or the new one, never a
//! torn write. Nothing here follows a symlink: the journal directory is opened like any
//! other path (beneath the root, no symlinks), entries with `O_NOFOLLOW` relative to it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, SFlag, fchmod, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, fsync, unlinkat};

use super::confined::{UNIQUE_COUNTER, file_type, fs_error, open_dir, unsafe_path};
use super::{OpContext, StorageError};
use crate::planning::{JOURNAL_DIRECTORY, VolumeDirectory};

/// Longest entry read back; a valid path is at most 4095 bytes.
const MAX_ENTRY_BYTES: u64 = 4096;
/// Prefix of in-flight entries (a key never starts with `.`).
const TEMP_PREFIX: &str = ".tmp-";

/// A key is a Kubernetes UID: 1 to 64 of `[0-9a-zA-Z-]`. Anything else could name a path.
pub(crate) fn check_key(key: &str) -> Result<(), StorageError> {
    let valid = (1..=64).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(unsafe_path(
            &format!("{JOURNAL_DIRECTORY}/{}", key.escape_debug()),
            "a journal key must be 1 to 64 characters of 0-9, a-z, A-Z and '-'",
        ))
    }
}

fn entry_path(name: &str) -> String {
    format!("{JOURNAL_DIRECTORY}/{name}")
}

/// Opens the journal directory, or `None` if it does not exist.
fn open_journal(root: BorrowedFd<'_>) -> Result<Option<OwnedFd>, StorageError> {
    match open_dir(root, JOURNAL_DIRECTORY, OFlag::O_RDONLY) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(fs_error("open", JOURNAL_DIRECTORY, e)),
    }
}

fn open_or_create_journal(root: BorrowedFd<'_>) -> Result<OwnedFd, StorageError> {
    if let Some(fd) = open_journal(root)? {
        return Ok(fd);
    }
    let mode = Mode::from_bits_truncate(0o700);
    let created = match mkdirat(root, JOURNAL_DIRECTORY, mode) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(fs_error("mkdir", JOURNAL_DIRECTORY, e)),
    };
    let fd = open_dir(root, JOURNAL_DIRECTORY, OFlag::O_RDONLY)
        .map_err(|e| fs_error("open", JOURNAL_DIRECTORY, e))?;
    if created {
        // mkdir's mode is masked by umask; the journal is the provisioner's alone.
        fchmod(&fd, mode).map_err(|e| fs_error("chmod", JOURNAL_DIRECTORY, e))?;
    }
    Ok(fd)
}

/// Writes (or replaces) the entry `key` -> `dir` atomically and durably.
pub(crate) fn record(
    root: BorrowedFd<'_>,
    key: &str,
    dir: &VolumeDirectory,
    ctx: &OpContext,
) -> Result<(), StorageError> {
    check_key(key)?;
    let journal = open_or_create_journal(root)?;
    ctx.check()?;
    let n = UNIQUE_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = format!("{TEMP_PREFIX}{key}-{}-{n}", std::process::id());
    let fd = openat(
        &journal,
        temp.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| fs_error("create", &entry_path(&temp), e))?;
    let mut file = File::from(fd);
    let written = file
        .write_all(dir.as_str().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| StorageError::Io {
            op: "write",
            path: entry_path(&temp),
            source,
        });
    drop(file);
    let renamed = written.and_then(|()| {
        ctx.check()?;
        renameat(&journal, temp.as_str(), &journal, key)
            .map_err(|e| fs_error("rename", &entry_path(key), e))
    });
    if let Err(e) = renamed {
        let _ = unlinkat(&journal, temp.as_str(), UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    // The rename is durable only once the directory is.
    fsync(&journal).map_err(|e| fs_error("fsync", JOURNAL_DIRECTORY, e))
}

/// Removes the entry `key`; an entry (or journal) already gone is success.
pub(crate) fn remove(root: BorrowedFd<'_>, key: &str, ctx: &OpContext) -> Result<(), StorageError> {
    check_key(key)?;
    let Some(journal) = open_journal(root)? else {
        return Ok(());
    };
    ctx.check()?;
    match unlinkat(&journal, key, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(fs_error("unlink", &entry_path(key), e)),
    }
}

/// Every valid entry, sorted by key. Entries that are not regular files (a planted symlink
/// or FIFO), too large, or do not hold a valid volume directory are skipped and logged.
pub(crate) fn entries(
    root: BorrowedFd<'_>,
    ctx: &OpContext,
) -> Result<Vec<(String, VolumeDirectory)>, StorageError> {
    let Some(journal) = open_journal(root)? else {
        return Ok(Vec::new());
    };
    let listing = openat(
        &journal,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fs_error("open", JOURNAL_DIRECTORY, e))?;
    let mut stream =
        Dir::from_fd(listing).map_err(|e| fs_error("opendir", JOURNAL_DIRECTORY, e))?;
    let mut found = Vec::new();
    for entry in stream.iter() {
        let entry = entry.map_err(|e| fs_error("readdir", JOURNAL_DIRECTORY, e))?;
        let raw = entry.file_name();
        if raw == c"." || raw == c".." {
            continue;
        }
        ctx.check()?;
        let name = raw.to_string_lossy();
        if name.starts_with(TEMP_PREFIX) {
            continue; // a write in flight, or left by a crash before its rename
        }
        if check_key(&name).is_err() {
            tracing::warn!(entry = %entry_path(&name), "skipping journal entry: not a valid key");
            continue;
        }
        match read_entry(journal.as_fd(), &name) {
            Ok(dir) => found.push((name.into_owned(), dir)),
            Err(reason) => {
                tracing::warn!(entry = %entry_path(&name), %reason, "skipping journal entry")
            }
        }
    }
    found.sort();
    Ok(found)
}

fn read_entry(journal: BorrowedFd<'_>, name: &str) -> Result<VolumeDirectory, String> {
    // O_NONBLOCK: a FIFO planted here must not hang the read.
    let fd = openat(
        journal,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP => "it is a symbolic link, which is never followed".to_owned(),
        e => format!("cannot open it: {e}"),
    })?;
    let st = fstat(&fd).map_err(|e| format!("cannot stat it: {e}"))?;
    if file_type(&st) != SFlag::S_IFREG {
        return Err("it is not a regular file".into());
    }
    let mut content = Vec::new();
    File::from(fd)
        .take(MAX_ENTRY_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if content.len() as u64 > MAX_ENTRY_BYTES {
        return Err(format!("it is larger than {MAX_ENTRY_BYTES} bytes"));
    }
    let text = String::from_utf8(content).map_err(|_| "it is not UTF-8".to_owned())?;
    VolumeDirectory::parse(&text).map_err(|e| format!("not a volume directory: {e}"))
}
