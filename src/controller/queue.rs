//! A de-duplicating work queue with per-key backoff, in the manner of client-go's workqueue.
//!
//! A key is never handed to two workers at once: a key added while it is being processed is
//! remembered and handed out again after `done`. This is what keeps two reconciles of one claim
//! or volume from racing on the same directory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting in `queue` or re-added while processing.
    dirty: HashSet<K>,
    processing: HashSet<K>,
    failures: HashMap<K, u32>,
}

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
    base_delay: Duration,
    max_delay: Duration,
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    pub fn new(base_delay: Duration, max_delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
            }),
            ready: Notify::new(),
            base_delay,
            max_delay,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // A panic while holding this lock cannot leave the sets inconsistent in a way that
        // matters more than stopping; recover the data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if !s.dirty.insert(key.clone()) {
            return;
        }
        if s.processing.contains(&key) {
            return;
        }
        s.queue.push_back(key);
        drop(s);
        self.ready.notify_one();
    }

    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(queue) = queue.upgrade() {
                queue.add(key);
            }
        });
    }

    /// Waits for the next key and marks it as being processed.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if let Some(key) = s.queue.pop_front() {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        // Wake another worker: one notification may have covered several adds.
                        self.ready.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Ends processing of `key`; a key re-added meanwhile is queued again.
    pub fn done(&self, key: &K) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.clone());
            drop(s);
            self.ready.notify_one();
        }
    }

    /// Records a failure of `key` and returns how long to wait before the next attempt:
    /// `base * 2^(failures-1)`, capped at `max`. Failures are never given up on.
    pub fn backoff(&self, key: &K) -> Duration {
        let mut s = self.lock();
        let n = s.failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(30));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Forgets the failures of `key` after a success.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    pub fn failures(&self, key: &K) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_never_processed_twice_at_once() {
        let q = WorkQueue::new(Duration::from_millis(1), Duration::from_millis(8));
        q.add("a");
        q.add("a");
        assert_eq!(q.len(), 1, "duplicate adds collapse");
        let k = q.next().await;
        q.add("a");
        assert_eq!(q.len(), 0, "re-added while processing waits for done");
        q.done(&k);
        assert_eq!(q.len(), 1, "re-queued after done");
        assert_eq!(q.next().await, "a");
    }

    #[test]
    fn backoff_doubles_and_caps_and_resets() {
        let q = WorkQueue::new(Duration::from_secs(1), Duration::from_secs(5));
        let d: Vec<_> = (0..5).map(|_| q.backoff(&"k").as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 5, 5]);
        q.forget(&"k");
        assert_eq!(q.backoff(&"k"), Duration::from_secs(1));
        for _ in 0..100 {
            q.backoff(&"k");
        }
        assert_eq!(
            q.backoff(&"k"),
            Duration::from_secs(5),
            "never overflows, never gives up"
        );
    }
}
