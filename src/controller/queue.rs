//! A de-duplicating work queue with per-key backoff, in the manner of client-go's workqueue.
//!
//! A key is never handed to two workers at once: a key added while it is being processed is
//! remembered and handed out again after `done`. This is what keeps two reconciles of one claim
//! or volume from racing on the same directory.
//!
//! Keys wait in one of two lanes ([`Lane`]): urgent keys are always handed out before
//! deferrable ones, and deferrable keys occupy at most a bounded number of workers at once, so
//! that an urgent key always finds a worker (see [`WorkQueue::with_lanes`]).
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

/// Which of the queue's two lanes a key waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Handed out first, to any worker.
    Urgent,
    /// Handed out when no urgent key waits, to at most the queue's limit of workers at once.
    Deferrable,
}

struct State<K> {
    urgent: VecDeque<K>,
    deferrable: VecDeque<K>,
    /// Keys waiting in a lane or re-added while processing.
    dirty: HashSet<K>,
    processing: HashSet<K>,
    /// How many of `processing` are deferrable.
    deferrable_processing: usize,
    failures: HashMap<K, u32>,
}

/// Above this many slots, a drained queue hands its memory back (see
/// [`State::release_spare_capacity`]).
const SPARE_SLOTS: usize = 1024;

impl<K: Eq + Hash> State<K> {
    /// The next key a worker may take: urgent first, then deferrable within the limit.
    fn pop(&mut self, deferrable_limit: usize) -> Option<(K, Lane)> {
        if let Some(key) = self.urgent.pop_front() {
            return Some((key, Lane::Urgent));
        }
        if self.deferrable_processing < deferrable_limit {
            return self.deferrable.pop_front().map(|k| (k, Lane::Deferrable));
        }
        None
    }

    /// Whether a worker asking now would get a key.
    fn takeable(&self, deferrable_limit: usize) -> bool {
        !self.urgent.is_empty()
            || (!self.deferrable.is_empty() && self.deferrable_processing < deferrable_limit)
    }

    fn lane_mut(&mut self, lane: Lane) -> &mut VecDeque<K> {
        match lane {
            Lane::Urgent => &mut self.urgent,
            Lane::Deferrable => &mut self.deferrable,
        }
    }

    /// A full resync puts every volume into the queue at once; the vector and the set keep
    /// that capacity when emptied (about 17 MB for 100 000 volumes), so it is given back once
    /// the queue has drained.
    fn release_spare_capacity(&mut self) {
        for lane in [&mut self.urgent, &mut self.deferrable] {
            if lane.is_empty() && lane.capacity() > SPARE_SLOTS {
                lane.shrink_to(SPARE_SLOTS);
            }
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
    lane_of: fn(&K) -> Lane,
    /// At most this many deferrable keys are processed at once.
    deferrable_limit: usize,
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    /// A queue of one lane: every key is urgent, handed out in the order added.
    pub fn new(base_delay: Duration, max_delay: Duration) -> Arc<Self> {
        Self::with_lanes(base_delay, max_delay, |_| Lane::Urgent, usize::MAX)
    }

    /// A queue whose keys `lane_of` sorts into two lanes: urgent keys are handed out before
    /// deferrable ones, and at most `deferrable_limit` deferrable keys are processed at once
    /// (so with more workers than that, the rest are free for urgent keys). Within a lane,
    /// keys are handed out in the order added. A limit of 0 is taken as 1 (deferrable work
    /// must go on).
    pub fn with_lanes(
        base_delay: Duration,
        max_delay: Duration,
        lane_of: fn(&K) -> Lane,
        deferrable_limit: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                urgent: VecDeque::new(),
                deferrable: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                deferrable_processing: 0,
                failures: HashMap::new(),
            }),
            ready: Notify::new(),
            base_delay,
            max_delay,
            delays: OnceLock::new(),
            lane_of,
            deferrable_limit: deferrable_limit.max(1),
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
        let lane = (self.lane_of)(&key);
        s.lane_mut(lane).push_back(key);
        let takeable = s.takeable(self.deferrable_limit);
        drop(s);
        if takeable {
            self.ready.notify_one();
        }
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

    /// Waits for the next key and marks it as being processed: an urgent key if one waits,
    /// else a deferrable one while fewer than the limit are being processed.
    pub async fn next(&self) -> K {
        loop {
            let notified = self.ready.notified();
            {
                let mut s = self.lock();
                if let Some((key, lane)) = s.pop(self.deferrable_limit) {
                    s.dirty.remove(&key);
                    s.processing.insert(key.clone());
                    if lane == Lane::Deferrable {
                        s.deferrable_processing += 1;
                    }
                    let more = s.takeable(self.deferrable_limit);
                    if s.urgent.is_empty() && s.deferrable.is_empty() {
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
        if !s.processing.remove(key) {
            return;
        }
        let lane = (self.lane_of)(key);
        if lane == Lane::Deferrable {
            s.deferrable_processing -= 1;
        }
        if s.dirty.contains(key) {
            s.lane_mut(lane).push_back(key.clone());
        }
        // A freed deferrable slot may let a waiting worker take the next deferrable key.
        let takeable = s.takeable(self.deferrable_limit);
        drop(s);
        if takeable {
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

    /// Keys waiting, in both lanes.
    pub fn len(&self) -> usize {
        let s = self.lock();
        s.urgent.len() + s.deferrable.len()
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

    /// Keys starting with `v` are deferrable (volumes), the rest urgent (claims).
    fn lanes(limit: usize) -> Arc<WorkQueue<&'static str>> {
        WorkQueue::with_lanes(
            Duration::from_millis(1),
            Duration::from_millis(8),
            |k: &&str| {
                if k.starts_with('v') {
                    Lane::Deferrable
                } else {
                    Lane::Urgent
                }
            },
            limit,
        )
    }

    /// Whether `next` hands out a key within a moment (a worker that would wait gets none).
    async fn next_now(q: &WorkQueue<&'static str>) -> Option<&'static str> {
        tokio::time::timeout(Duration::from_millis(50), q.next())
            .await
            .ok()
    }

    #[tokio::test]
    async fn claims_are_handed_out_before_volumes_added_earlier() {
        let q = lanes(usize::MAX);
        for v in ["v1", "v2", "v3"] {
            q.add(v);
        }
        q.add("c1");
        q.add("c2");
        assert_eq!(q.len(), 5);
        let order: Vec<_> = [q.next().await, q.next().await, q.next().await].into();
        assert_eq!(
            order,
            vec!["c1", "c2", "v1"],
            "claims first, each lane in order"
        );
    }

    #[tokio::test]
    async fn volumes_occupy_at_most_their_share_and_a_claim_still_finds_a_worker() {
        let q = lanes(2);
        for v in ["v1", "v2", "v3", "v4"] {
            q.add(v);
        }
        assert_eq!(next_now(&q).await, Some("v1"));
        assert_eq!(next_now(&q).await, Some("v2"));
        assert_eq!(
            next_now(&q).await,
            None,
            "a third worker takes no volume while two are processed"
        );
        // A worker already waiting gets the claim added meanwhile.
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.add("c1");
        assert_eq!(waiting.await.unwrap(), "c1");
        // A volume done frees its slot for the next volume, handed to a waiting worker.
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "still no free slot for volumes");
        q.done(&"v1");
        assert_eq!(waiting.await.unwrap(), "v3");
        assert_eq!(next_now(&q).await, None);
        assert_eq!(q.len(), 1, "v4 waits for a slot");
    }

    #[tokio::test]
    async fn lanes_keep_de_duplication_and_requeue_after_done() {
        let q = lanes(1);
        q.add("v1");
        q.add("v1");
        assert_eq!(q.len(), 1, "duplicate adds collapse");
        assert_eq!(next_now(&q).await, Some("v1"));
        q.add("v1");
        q.add("v2");
        assert_eq!(q.len(), 1, "v1 re-added while processing waits for done");
        assert_eq!(next_now(&q).await, None, "the one volume slot is taken");
        q.done(&"v1");
        // v1 re-queued behind v2, which was waiting.
        assert_eq!(next_now(&q).await, Some("v2"));
        assert_eq!(next_now(&q).await, None, "v1 again only once v2 is done");
        q.done(&"v2");
        assert_eq!(next_now(&q).await, Some("v1"));
        q.done(&"v1");
        q.done(&"v1");
        q.add("v9");
        assert_eq!(
            next_now(&q).await,
            Some("v9"),
            "a repeated done does not free a slot twice or block one"
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
