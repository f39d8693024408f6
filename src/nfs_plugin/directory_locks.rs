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

use super::overlap::relation;
use crate::planning::VolumeDirectory;

#[derive(Default)]
pub struct DirectoryLocks {
    held: Mutex<Vec<VolumeDirectory>>,
    released: Notify,
}

/// Releases its directory when dropped.
pub struct DirectoryGuard {
    locks: Arc<DirectoryLocks>,
    dir: VolumeDirectory,
}

impl DirectoryLocks {
    /// Waits until no overlapping directory is held, then holds `dir`.
    pub async fn acquire(self: &Arc<Self>, dir: &VolumeDirectory) -> DirectoryGuard {
        loop {
            let released = self.released.notified();
            {
                let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
                if !held.iter().any(|h| relation(h, dir).is_some()) {
                    held.push(dir.clone());
                    return DirectoryGuard {
                        locks: self.clone(),
                        dir: dir.clone(),
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
        if let Some(i) = held.iter().position(|h| *h == self.dir) {
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

    #[tokio::test]
    async fn nested_directories_wait_for_each_other_and_others_do_not() {
        let locks = Arc::new(DirectoryLocks::default());
        let outer = locks.acquire(&dir("ns/shared")).await;
        // An unrelated directory is free at once.
        let other = tokio::time::timeout(Duration::from_secs(5), locks.acquire(&dir("ns/other")))
            .await
            .expect("unrelated directory is not blocked");
        // A shared name prefix is not nesting.
        let sibling =
            tokio::time::timeout(Duration::from_secs(5), locks.acquire(&dir("ns/shared-2")))
                .await
                .expect("a sibling with a common prefix is not blocked");
        drop(sibling);
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
