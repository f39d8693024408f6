//! One owner at a time per directory tree: provisioning, reclaiming and the orphan sweep of
//! directories that are the same, or one inside the other, never overlap in this process.
//!
//! Without it a reclaim could check "no other PV uses this directory", then spend up to the
//! operation deadline deleting it while a claim recreated with the same name gets the same
//! directory and a new PV; the delete then removed the new volume's directory. Held from the
//! check (or the mkdir) until the PV exists (or the directory is gone).
//!
//! Hand-written: the crates that lock by key (e.g. a map of mutexes) lock equal keys only,
//! and here `a/b` must also exclude `a` and `a/b/c`.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::planning::VolumeDirectory;

#[derive(Default)]
pub struct DirectoryLocks {
    held: Mutex<Vec<String>>,
    released: Notify,
}

/// Releases its directory when dropped.
pub struct DirectoryGuard {
    locks: Arc<DirectoryLocks>,
    path: String,
}

/// `a` and `b` are the same directory or one lies inside the other.
fn overlap(a: &str, b: &str) -> bool {
    let inside = |inner: &str, outer: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    a == b || inside(a, b) || inside(b, a)
}

impl DirectoryLocks {
    /// Waits until no overlapping directory is held, then holds `dir`.
    pub async fn acquire(self: &Arc<Self>, dir: &VolumeDirectory) -> DirectoryGuard {
        let path = dir.as_str().to_string();
        loop {
            let released = self.released.notified();
            {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                if !held.iter().any(|h| overlap(h, &path)) {
                    held.push(path.clone());
                    return DirectoryGuard {
                        locks: self.clone(),
                        path,
                    };
                }
            }
            released.await;
        }
    }
}

impl Drop for DirectoryGuard {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = held.iter().position(|h| *h == self.path) {
            held.swap_remove(i);
        }
        drop(held);
        self.locks.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn dir(p: &str) -> VolumeDirectory {
        VolumeDirectory::parse(p).unwrap()
    }

    #[test]
    fn overlap_is_same_or_nested_never_a_shared_prefix() {
        assert!(overlap("a/b", "a/b"));
        assert!(overlap("a/b", "a/b/c"));
        assert!(overlap("a/b/c", "a"));
        assert!(!overlap("a/b", "a/bc"));
        assert!(!overlap("a/b", "a/c"));
    }

    #[tokio::test]
    async fn nested_directories_wait_for_each_other_and_others_do_not() {
        let locks = Arc::new(DirectoryLocks::default());
        let outer = locks.acquire(&dir("ns/shared")).await;
        // An unrelated directory is free at once.
        let other = tokio::time::timeout(Duration::from_secs(5), locks.acquire(&dir("ns/other")))
            .await
            .expect("unrelated directory is not blocked");
        let inner_locks = locks.clone();
        let inner = tokio::spawn(async move { inner_locks.acquire(&dir("ns/shared/db")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!inner.is_finished(), "a directory inside a held one waits");
        drop(outer);
        let inner = tokio::time::timeout(Duration::from_secs(5), inner)
            .await
            .expect("released")
            .unwrap();
        drop(inner);
        drop(other);
    }
}
