//! A de-duplicating work queue with per-key backoff, in the manner of client-go's workqueue.
//!
//! A key is never handed to two workers at once: a key added while it is being processed is
//! remembered and handed out again after `done`. This is what keeps two reconciles of one claim
//! or volume from racing on the same directory.
//!
//! Hand-written because no crate offers these semantics: kube-runtime's `Controller` has a
//! scheduler with the same de-duplication, but it is not public on its own, it runs
//! reconcilers on every replica (work here runs only while leading, with a worker pool that
//! stops with the term) and it cannot take keys of two kinds (claims and volumes) in one
//! queue. Delays use `tokio_util::time::DelayQueue` (one timer task, not one task per delay).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting in `queue` or re-added while processing.
    dirty: HashSet<K>,
    processing: HashSet<K>,
    failures: HashMap<K, u32>,
}

/// Above this many slots, a drained queue hands its memory back (see
/// [`State::release_spare_capacity`]).
const SPARE_SLOTS: usize = 1024;

impl<K: Eq + Hash> State<K> {
    /// A full resync puts every volume into the queue at once; the vector and the set keep
    /// that capacity when emptied (about 17 MB for 100 000 volumes), so it is given back once
    /// the queue has drained.
    fn release_spare_capacity(&mut self) {
        if self.queue.capacity() > SPARE_SLOTS {
            self.queue.shrink_to(SPARE_SLOTS);
        }
        if self.dirty.capacity() > SPARE_SLOTS && self.dirty.len() < SPARE_SLOTS / 2 {
            self.dirty.shrink_to(SPARE_SLOTS);
        }
        if self.failures.capacity() > SPARE_SLOTS && self.failures.len() < SPARE_SLOTS / 2 {
            self.failures.shrink_to(SPARE_SLOTS);
        }
    }
}

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
    base_delay: Duration,
    max_delay: Duration,
    /// To the timer task (started with the first delayed add) that adds keys when due.
    delays: OnceLock<mpsc::UnboundedSender<(K, Duration)>>,
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
            delays: OnceLock::new(),
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

    /// Adds `key` once `delay` has passed. A key already waiting keeps the earlier of the
    /// two times (a later add would only postpone work that is due).
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        let timer = self.delays.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_delays(Arc::downgrade(self), rx));
            tx
        });
        let _ = timer.send((key, delay));
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
                    if !more {
                        s.release_spare_capacity();
                    }
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

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The timer task: adds each key to `queue` when its delay expires. Ends with the queue
/// (its sender is dropped with it).
async fn run_delays<K: Clone + Eq + Hash + Send + 'static>(
    queue: Weak<WorkQueue<K>>,
    mut requests: mpsc::UnboundedReceiver<(K, Duration)>,
) {
    let mut delays: DelayQueue<K> = DelayQueue::new();
    let mut waiting: HashMap<K, (delay_queue::Key, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some((key, delay)) = request else { return };
                let due = Instant::now() + delay;
                match waiting.get_mut(&key) {
                    Some((_, when)) if *when <= due => {}
                    Some((timer, when)) => {
                        delays.reset_at(timer, due);
                        *when = due;
                    }
                    None => {
                        let timer = delays.insert_at(key.clone(), due);
                        waiting.insert(key, (timer, due));
                    }
                }
            }
            Some(expired) = futures::future::poll_fn(|cx| delays.poll_expired(cx)), if !delays.is_empty() => {
                let key = expired.into_inner();
                waiting.remove(&key);
                match queue.upgrade() {
                    Some(queue) => queue.add(key),
                    None => return,
                }
            }
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_delayed_key_arrives_once_at_the_earliest_time_asked() {
        let q = WorkQueue::new(Duration::from_millis(1), Duration::from_millis(8));
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(2));
        q.add_after("b", Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert_eq!(q.len(), 0, "nothing is due yet");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(q.next().await, "a", "the earlier time wins");
        q.done(&"a");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(q.next().await, "b");
        q.done(&"b");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            q.len(),
            0,
            "the later request for a was folded into the earlier one"
        );
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
