//! A directory stream that can report and restore its position.
//!
//! The copy keeps only a bounded number of directories open (see `super::copy`); a directory
//! closed on the way down is reopened on the way back up and continued where it stopped.
//! That needs `telldir`/`seekdir`, which `nix::dir::Dir` does not offer, hence this small
//! wrapper around libc's `DIR`. The positions are the file system's own directory cookies
//! (ext4 hashes, NFS cookies, tmpfs offsets), valid on a fresh open of the same directory.

use std::ffi::{CStr, CString};
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd};
use std::ptr::NonNull;

use nix::errno::Errno;

/// An open directory stream (one libc buffer).
pub(crate) struct DirStream(NonNull<libc::DIR>);

// SAFETY: the stream is used by one thread at a time (it moves between the slices' worker
// threads, never shared); libc's `DIR` has no thread affinity.
unsafe impl Send for DirStream {}

impl DirStream {
    /// Takes ownership of `fd`, an open directory.
    pub(crate) fn new(fd: OwnedFd) -> Result<DirStream, Errno> {
        let raw = fd.into_raw_fd();
        // SAFETY: `raw` is an open descriptor we own; on success the stream owns it.
        match NonNull::new(unsafe { libc::fdopendir(raw) }) {
            Some(dir) => Ok(DirStream(dir)),
            None => {
                let err = Errno::last();
                // SAFETY: fdopendir failed, so the descriptor is still ours to close.
                unsafe { libc::close(raw) };
                Err(err)
            }
        }
    }

    /// The next entry's name (`.` and `..` included) and its `d_type` (`libc::DT_*`,
    /// `DT_UNKNOWN` where the file system does not say), `None` at the end.
    pub(crate) fn next_entry(&mut self) -> Option<Result<(CString, u8), Errno>> {
        Errno::clear();
        // SAFETY: the stream is open; the returned entry is valid until the next call on
        // this stream, and its name is copied out before that.
        unsafe {
            let entry = libc::readdir(self.0.as_ptr());
            if entry.is_null() {
                match Errno::last_raw() {
                    0 => None,
                    _ => Some(Err(Errno::last())),
                }
            } else {
                let name = CStr::from_ptr((*entry).d_name.as_ptr()).to_owned();
                Some(Ok((name, (*entry).d_type)))
            }
        }
    }

    /// The position after the last entry returned.
    pub(crate) fn tell(&self) -> i64 {
        // SAFETY: the stream is open.
        unsafe { libc::telldir(self.0.as_ptr()) }
    }

    /// Continues reading at a position from [`DirStream::tell`] of the same directory.
    pub(crate) fn seek(&mut self, position: i64) {
        // SAFETY: the stream is open; an unknown position makes later reads fail or end, it
        // is not undefined behaviour.
        unsafe { libc::seekdir(self.0.as_ptr(), position) }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor stays open as long as the stream, which `self` borrows.
        unsafe { BorrowedFd::borrow_raw(libc::dirfd(self.0.as_ptr())) }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: the stream is open and closed exactly once.
        unsafe { libc::closedir(self.0.as_ptr()) };
    }
}
