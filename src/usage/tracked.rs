//! What the usage task keeps per measurable volume: one compact entry, which is also where
//! the volume's series are read from at each scrape (see
//! [`VolumeUsageSeries`](crate::metrics::VolumeUsageSeries)).
//!
//! An entry is about 80 bytes plus one string `pv/namespace/claim` (the key and the series'
//! labels at once). The directory, the claim's UID and the capacity's source are not kept:
//! they are read from the controller's cache when a measurement starts. With 100 000 Bound
//! volumes the earlier layout (the cache's strings copied per volume, a sorted map, a queue
//! of names and four labelled gauges each) cost about 80 MB of resident memory; this one
//! about 19 MB (BENCHMARKS.md, "Usage entries instead of copies").

use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::time::{Duration, Instant, SystemTime};

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{Fill, VolumeRef};
use crate::metrics::{VolumeSample, VolumeSamples};

/// Volumes picked per pass over the table (see [`TrackedVolumes::next_due`]).
const DUE_BATCH: usize = 256;

/// Capacity not known (it did not parse).
const NO_CAPACITY: u64 = u64::MAX;

struct Entry {
    /// `pv/namespace/claim`: none of the three may hold a `/`.
    names: Box<str>,
    /// Hash of the volume's directory, namespace and claim: when one of them changes, the
    /// volume is measured anew and its series start over.
    identity: u64,
    capacity: u64,
    used_bytes: u64,
    used_inodes: u64,
    /// Unix time of the last complete measurement; 0: not measured (no series).
    measured_at: i64,
    /// Milliseconds after the table's epoch, plus one, of the last attempt that ended
    /// (measured, gone, failed); 0: never.
    last_attempt: u64,
    fill: Fill,
    /// Seen by the refresh under way (equal to the table's `pass`).
    seen: bool,
}

impl Entry {
    fn pv(&self) -> &str {
        self.names.split('/').next().unwrap_or_default()
    }

    fn sample(&self) -> Option<VolumeSample<'_>> {
        if self.measured_at == 0 {
            return None;
        }
        let mut names = self.names.splitn(3, '/');
        Some(VolumeSample {
            persistentvolume: names.next()?,
            namespace: names.next()?,
            persistentvolumeclaim: names.next()?,
            used_bytes: self.used_bytes,
            used_inodes: self.used_inodes,
            capacity_bytes: (self.capacity != NO_CAPACITY).then_some(self.capacity),
            measured_timestamp: self.measured_at,
        })
    }
}

/// The tracked volumes of one usage task.
pub struct TrackedVolumes {
    entries: HashTable<Entry>,
    hasher: DefaultHashBuilder,
    epoch: Instant,
    /// Flips at every refresh: an entry whose `seen` differs afterwards was not seen.
    pass: bool,
    /// Nothing is due before this (ms after the epoch), as of the last search; 0: search.
    nothing_due_before: u64,
    /// The next volumes due, the next one last.
    due: Vec<Box<str>>,
}

impl Default for TrackedVolumes {
    fn default() -> Self {
        TrackedVolumes {
            entries: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            epoch: Instant::now(),
            pass: false,
            nothing_due_before: 0,
            due: Vec::new(),
        }
    }
}

/// The names a volume is keyed and labelled by; `None` if one holds a `/` (no valid object
/// name does).
fn names_of(volume: &VolumeRef) -> Option<Box<str>> {
    let parts = [&volume.pv, &volume.namespace, &volume.claim];
    if parts.iter().any(|p| p.contains('/')) {
        return None;
    }
    Some(parts.map(|p| p.as_str()).join("/").into_boxed_str())
}

impl TrackedVolumes {
    fn key_hash(&self, pv: &str) -> u64 {
        self.hasher.hash_one(pv)
    }

    fn identity(&self, volume: &VolumeRef) -> u64 {
        self.hasher
            .hash_one((volume.directory.as_str(), &volume.namespace, &volume.claim))
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1)
            + 1
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains(&self, pv: &str) -> bool {
        self.find(pv).is_some()
    }

    fn find(&self, pv: &str) -> Option<&Entry> {
        self.entries.find(self.key_hash(pv), |e| e.pv() == pv)
    }

    fn find_mut(&mut self, pv: &str) -> Option<&mut Entry> {
        let hash = self.key_hash(pv);
        self.entries.find_mut(hash, |e| e.pv() == pv)
    }

    /// Starts a refresh: every volume still measurable must then be [`seen`](Self::see).
    pub fn begin_refresh(&mut self) {
        self.pass = !self.pass;
    }

    /// A measurable volume, in a refresh: tracked from now on if it was not. False if it is
    /// new, or its directory or claim changed (its series start over).
    pub fn see(&mut self, volume: &VolumeRef) -> bool {
        let identity = self.identity(volume);
        let pass = self.pass;
        let capacity = volume.capacity.unwrap_or(NO_CAPACITY);
        if let Some(entry) = self.find_mut(&volume.pv)
            && entry.identity == identity
        {
            entry.seen = pass;
            entry.capacity = capacity;
            return true;
        }
        let Some(names) = names_of(volume) else {
            return false;
        };
        let hash = self.key_hash(&volume.pv);
        let entry = Entry {
            names,
            identity,
            capacity,
            used_bytes: 0,
            used_inodes: 0,
            measured_at: 0,
            last_attempt: 0,
            fill: Fill::Within,
            seen: pass,
        };
        match self.entries.find_mut(hash, |e| e.pv() == volume.pv) {
            Some(old) => *old = entry,
            None => {
                let hasher = &self.hasher;
                self.entries
                    .insert_unique(hash, entry, |e| hasher.hash_one(e.pv()));
            }
        }
        self.nothing_due_before = 0;
        self.due.clear();
        false
    }

    /// Ends a refresh: forgets (with their series) the volumes not seen; `on_forget` is told
    /// each one's name.
    pub fn end_refresh(&mut self, mut on_forget: impl FnMut(&str)) {
        let pass = self.pass;
        self.entries.retain(|e| {
            let keep = e.seen == pass;
            if !keep {
                on_forget(e.pv());
            }
            keep
        });
        // Compact after many volumes went: the table never shrinks by itself.
        if self.entries.capacity() > 64 && self.entries.len() < self.entries.capacity() / 4 {
            let hasher = &self.hasher;
            self.entries.shrink_to_fit(|e| hasher.hash_one(e.pv()));
        }
    }

    /// The volume never tried, else the one tried longest ago if `rescan` has passed since.
    ///
    /// One pass over the table picks the next [`DUE_BATCH`] volumes due, in order, so a pick
    /// costs a pass only every so many; a new volume starts the batch over (it goes first).
    pub fn next_due(&mut self, now: Instant, rescan: Duration) -> Option<String> {
        let now_ms = self.millis(now);
        let rescan_ms = u64::try_from(rescan.as_millis()).unwrap_or(u64::MAX);
        let is_due = |last: u64| last == 0 || now_ms >= last.saturating_add(rescan_ms);
        loop {
            if let Some(pv) = self.due.pop() {
                // A refresh may have forgotten it since, or it was tried meanwhile.
                if self.find(&pv).is_some_and(|e| is_due(e.last_attempt)) {
                    return Some(pv.into());
                }
                continue;
            }
            if self.nothing_due_before != 0 && now_ms < self.nothing_due_before {
                return None;
            }
            // The DUE_BATCH due volumes tried longest ago (a max-heap of the best so far).
            let mut best: BinaryHeap<(u64, &str)> = BinaryHeap::with_capacity(DUE_BATCH + 1);
            let mut earliest = u64::MAX;
            for e in self.entries.iter() {
                if is_due(e.last_attempt) {
                    best.push((e.last_attempt, e.pv()));
                    if best.len() > DUE_BATCH {
                        best.pop();
                    }
                } else {
                    earliest = earliest.min(e.last_attempt.saturating_add(rescan_ms));
                }
            }
            if best.is_empty() {
                self.nothing_due_before = if earliest == u64::MAX { 0 } else { earliest };
                return None;
            }
            // Ascending, then reversed: `pop` takes the one tried longest ago.
            let batch: Vec<Box<str>> = best
                .into_sorted_vec()
                .into_iter()
                .rev()
                .map(|(_, pv)| Box::from(pv))
                .collect();
            self.due = batch;
        }
    }

    /// An attempt at `pv` ended at `at` (measured, found gone, or failed).
    pub fn attempted(&mut self, pv: &str, at: Instant) {
        let at = self.millis(at);
        if let Some(e) = self.find_mut(pv) {
            e.last_attempt = at;
        }
    }

    /// A complete measurement of `pv`: its series are set, and its fill state moves; the
    /// capacity it was judged against and the change to report, if any.
    pub fn measured(
        &mut self,
        pv: &str,
        bytes: u64,
        inodes: u64,
    ) -> Option<(Option<u64>, Option<super::Transition>)> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(1)
            .max(1);
        let e = self.find_mut(pv)?;
        e.used_bytes = bytes;
        e.used_inodes = inodes;
        e.measured_at = now;
        if e.capacity == NO_CAPACITY {
            return Some((None, None));
        }
        let (fill, transition) = super::next_fill(e.fill, bytes, e.capacity);
        e.fill = fill;
        Some((Some(e.capacity), transition))
    }

    /// The volume's directory is not there: its series go (it stays tracked).
    pub fn unmeasured(&mut self, pv: &str) {
        if let Some(e) = self.find_mut(pv) {
            e.measured_at = 0;
        }
    }

    pub fn clear(&mut self) {
        self.entries = HashTable::new();
        self.due = Vec::new();
    }
}

impl VolumeSamples for std::sync::Mutex<TrackedVolumes> {
    fn volume_count(&self) -> usize {
        self.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn for_each_sample(&self, part: u64, parts: u64, f: &mut dyn FnMut(&VolumeSample<'_>)) {
        let table = self.lock().unwrap_or_else(|e| e.into_inner());
        for e in table.entries.iter() {
            if parts > 1 && table.key_hash(e.pv()) % parts != part {
                continue;
            }
            if let Some(sample) = e.sample() {
                f(&sample);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::usage::test_volume as volume;

    fn samples(table: TrackedVolumes) -> Vec<(String, u64, Option<u64>)> {
        let table = std::sync::Mutex::new(table);
        let mut out = Vec::new();
        table.for_each_sample(0, 1, &mut |s| {
            out.push((
                s.persistentvolume.to_string(),
                s.used_bytes,
                s.capacity_bytes,
            ))
        });
        out.sort();
        out
    }

    #[test]
    fn series_exist_only_for_measured_volumes_and_go_with_them() {
        let mut t = TrackedVolumes::default();
        t.begin_refresh();
        assert!(!t.see(&volume(1, Some(100))), "new");
        assert!(!t.see(&volume(2, None)));
        t.end_refresh(|_| panic!("nothing goes"));
        assert_eq!(
            t.measured("pv-1", 150, 3),
            Some((Some(100), Some(super::super::Transition::WentOver)))
        );
        assert_eq!(t.measured("pv-2", 5, 1), Some((None, None)));
        assert_eq!(t.measured("pv-9", 5, 1), None, "not tracked");

        // pv-2 is gone; pv-1's claim is now another one: measured anew, series start over.
        let mut moved = volume(1, Some(100));
        moved.claim = "other".into();
        t.begin_refresh();
        assert!(!t.see(&moved));
        let mut forgotten = Vec::new();
        t.end_refresh(|pv| forgotten.push(pv.to_string()));
        assert_eq!(forgotten, ["pv-2"]);
        assert_eq!(t.len(), 1);
        assert_eq!(samples(t), Vec::<(String, u64, Option<u64>)>::new());
    }

    #[test]
    fn a_sample_carries_the_volumes_labels_and_capacity() {
        let mut t = TrackedVolumes::default();
        t.begin_refresh();
        t.see(&volume(1, Some(100)));
        t.see(&volume(2, Some(100)));
        t.end_refresh(|_| {});
        t.measured("pv-1", 7, 1);
        t.begin_refresh();
        assert!(t.see(&volume(1, Some(400))), "same volume, resized");
        t.see(&volume(2, Some(100)));
        t.end_refresh(|_| {});
        let table = std::sync::Mutex::new(t);
        let mut seen = Vec::new();
        table.for_each_sample(0, 1, &mut |s| {
            seen.push((
                s.namespace.to_string(),
                s.persistentvolumeclaim.to_string(),
                s.persistentvolume.to_string(),
                s.capacity_bytes,
                s.measured_timestamp > 0,
            ))
        });
        assert_eq!(
            seen,
            [("ns".into(), "c-1".into(), "pv-1".into(), Some(400), true)]
        );
    }

    #[test]
    fn names_with_a_slash_are_not_tracked() {
        let mut t = TrackedVolumes::default();
        let mut odd = volume(1, None);
        odd.claim = "a/b".into();
        t.begin_refresh();
        t.see(&odd);
        t.end_refresh(|_| {});
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn never_tried_first_then_the_longest_ago_once_the_rescan_period_passed() {
        let mut t = TrackedVolumes::default();
        let rescan = Duration::from_secs(60);
        t.begin_refresh();
        t.see(&volume(1, None));
        t.see(&volume(2, None));
        t.end_refresh(|_| {});
        let now = Instant::now();
        let first = t.next_due(now, rescan).unwrap();
        t.attempted(&first, now);
        let second = t.next_due(now, rescan).unwrap();
        assert_ne!(first, second);
        t.attempted(&second, now + Duration::from_secs(1));
        assert_eq!(t.next_due(now, rescan), None, "both tried: nothing due");
        assert_eq!(
            t.next_due(now + Duration::from_secs(30), rescan),
            None,
            "still nothing (remembered)"
        );
        t.begin_refresh();
        t.see(&volume(1, None));
        t.see(&volume(2, None));
        t.see(&volume(3, None));
        t.end_refresh(|_| {});
        assert_eq!(
            t.next_due(now, rescan).as_deref(),
            Some("pv-3"),
            "new first"
        );
        t.attempted("pv-3", now + Duration::from_secs(2));
        assert_eq!(
            t.next_due(now + Duration::from_secs(61), rescan),
            Some(first),
            "tried longest ago"
        );
    }

    #[test]
    fn picks_stay_in_order_across_batches_and_a_new_volume_cuts_in() {
        let mut t = TrackedVolumes::default();
        let rescan = Duration::from_secs(10);
        let n = 3 * DUE_BATCH as u32 + 7;
        t.begin_refresh();
        for v in 0..n {
            t.see(&volume(v, None));
        }
        t.end_refresh(|_| {});
        // Tried in a scrambled order, one millisecond apart.
        let start = Instant::now();
        let order: Vec<u32> = (0..n).map(|i| (i * 7919) % n).collect();
        for (i, v) in order.iter().enumerate() {
            t.attempted(&format!("pv-{v}"), start + Duration::from_millis(i as u64));
        }
        let later = start + Duration::from_secs(60);
        let mut picked = Vec::new();
        while let Some(pv) = t.next_due(later, rescan) {
            t.attempted(&pv, later + Duration::from_secs(1));
            picked.push(pv);
            if picked.len() == DUE_BATCH + 3 {
                t.begin_refresh();
                for v in 0..=n {
                    t.see(&volume(v, None));
                }
                t.end_refresh(|_| {});
                let new = t.next_due(later, rescan).unwrap();
                assert_eq!(new, format!("pv-{n}"), "the new volume first");
                t.attempted(&new, later + Duration::from_secs(1));
            }
        }
        let expected: Vec<String> = order.iter().map(|v| format!("pv-{v}")).collect();
        assert_eq!(picked, expected, "tried longest ago first, every one once");
    }

    #[test]
    fn parts_of_a_scrape_hold_each_measured_volume_once() {
        let mut t = TrackedVolumes::default();
        t.begin_refresh();
        for v in 0..1000 {
            t.see(&volume(v, None));
        }
        t.end_refresh(|_| {});
        for v in (0..1000).step_by(2) {
            t.measured(&format!("pv-{v}"), 1, 1);
        }
        let table = std::sync::Mutex::new(t);
        assert_eq!(table.volume_count(), 1000);
        let mut seen = Vec::new();
        for part in 0..7 {
            let before = seen.len();
            table.for_each_sample(part, 7, &mut |s| seen.push(s.persistentvolume.to_string()));
            assert!(seen.len() > before, "part {part} is not empty");
        }
        seen.sort();
        let mut expected: Vec<String> = (0..1000).step_by(2).map(|v| format!("pv-{v}")).collect();
        expected.sort();
        assert_eq!(seen, expected);
    }
}
