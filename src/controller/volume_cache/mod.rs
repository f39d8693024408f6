//! The cache of PVs, held compactly.
//!
//! A cluster can hold 100 000 PVs of this provisioner. Cached as [`Volume`] (an `ObjectMeta`
//! of about 350 bytes inline, three `BTreeMap`s of one 544-byte node each for annotations,
//! labels and capacity, and some 25 separately allocated strings) in kube's reflector store,
//! each cost about 4.8 KB (heap profile in BENCHMARKS.md). Here each one is a record of
//! about 150 bytes ([`record`]): its unique strings in their shortest form, every string
//! that repeats across volumes as a number ([`symbols`]). The records of one list live in
//! one buffer, found by name and by directory through tables of numbers ([`table`]).
//!
//! Readers get a [`Volume`] decoded from its record, field for field as it was cached, so
//! no reader can tell the difference. Hand-written rather than kube's `Store`: that store
//! holds the object type it hands out, and there is no hook to store one type and hand out
//! another.
//!
//! The cache also answers which volumes point at, above or beneath a directory
//! ([`VolumeCache::near`]), for the shared-directory check before a delete or archive. Both
//! come from the same tables under the same lock, so that answer never lacks a volume the
//! cache holds.

mod record;
mod symbols;
mod table;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use tokio::sync::watch;

use crate::objects::Volume;
use symbols::Symbols;
use table::Table;

/// Symbols no record refers to any more are freed when a relist completes and after this
/// many updates and removals.
const SWEEP_EVERY: usize = 4096;

#[derive(Default)]
struct State {
    current: Table,
    /// The volumes of a relist in progress; they replace `current` when it completes.
    relisted: Option<Table>,
    symbols: Symbols,
    changes_since_sweep: usize,
}

impl State {
    fn changed(&mut self) {
        self.changes_since_sweep += 1;
        if self.changes_since_sweep >= SWEEP_EVERY {
            self.sweep();
        }
    }

    fn sweep(&mut self) {
        self.changes_since_sweep = 0;
        let mut marks = vec![false; self.symbols.capacity()];
        self.current.mark_symbols(&self.symbols, &mut marks);
        if let Some(relisted) = &self.relisted {
            relisted.mark_symbols(&self.symbols, &mut marks);
        }
        self.symbols.sweep(&marks);
    }
}

/// The PV cache: what the volume watch selected (see `super::watches`), as [`Volume`]s.
pub struct VolumeCache {
    state: RwLock<State>,
    /// Counts the events applied: unchanged means the cache holds what it held.
    generation: AtomicU64,
    ready_tx: Mutex<Option<watch::Sender<bool>>>,
    ready: watch::Receiver<bool>,
}

impl Default for VolumeCache {
    fn default() -> Self {
        let (tx, ready) = watch::channel(false);
        VolumeCache {
            state: RwLock::default(),
            generation: AtomicU64::new(0),
            ready_tx: Mutex::new(Some(tx)),
            ready,
        }
    }
}

impl VolumeCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one watch event, as kube's reflector writer does: a relist (`Init` …
    /// `InitDone`) replaces the whole cache when it completes, and the cache is ready after
    /// the first one.
    pub fn apply_watcher_event(&self, event: &Event<Volume>) {
        match event {
            Event::Apply(pv) => {
                let mut state = self.write();
                let State {
                    current, symbols, ..
                } = &mut *state;
                current.insert(pv, symbols);
                state.changed();
            }
            Event::Delete(pv) => {
                let mut state = self.write();
                let name = pv.metadata.name.as_deref().unwrap_or("");
                let State {
                    current, symbols, ..
                } = &mut *state;
                if current.remove(name, symbols) {
                    state.changed();
                }
            }
            Event::Init => self.write().relisted = Some(Table::default()),
            Event::InitApply(pv) => {
                let mut state = self.write();
                let State {
                    relisted, symbols, ..
                } = &mut *state;
                relisted.get_or_insert_default().insert(pv, symbols);
            }
            Event::InitDone => {
                let mut state = self.write();
                if let Some(mut relisted) = state.relisted.take() {
                    relisted.shrink_to_fit();
                    state.current = relisted;
                }
                state.sweep();
                drop(state);
                if let Some(tx) = self
                    .ready_tx
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                {
                    let _ = tx.send(true);
                }
            }
        }
        // Counted after the change: a reader that saw the old number and then read the new
        // contents reads once more than needed, and none misses a change.
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The cached volume of `key`'s name.
    pub fn get(&self, key: &ObjectRef<Volume>) -> Option<Arc<Volume>> {
        let state = self.read();
        state
            .current
            .get(key.name.as_str(), &state.symbols)
            .map(Arc::new)
    }

    /// Every cached volume. Builds them all at once: for one pass over a large cache, use
    /// [`VolumeCache::filter_map`].
    pub fn state(&self) -> Vec<Arc<Volume>> {
        self.filter_map(|pv| Some(Arc::new(pv)))
    }

    /// `f` of every cached volume, built one at a time (the cache is read-locked meanwhile:
    /// `f` must not touch it).
    pub fn filter_map<T>(&self, mut f: impl FnMut(Volume) -> Option<T>) -> Vec<T> {
        let state = self.read();
        let mut out = Vec::new();
        state.current.filter_map(&state.symbols, &mut f, &mut out);
        out
    }

    /// `f` of every cached volume, built one at a time and collected nowhere (the cache is
    /// read-locked meanwhile: `f` must not touch it).
    pub fn for_each(&self, mut f: impl FnMut(Volume)) {
        let state = self.read();
        let mut none: Vec<()> = Vec::new();
        state.current.filter_map(
            &state.symbols,
            &mut |pv| {
                f(pv);
                None
            },
            &mut none,
        );
    }

    /// Every cached NFS volume whose path is `nfs_path`, a directory above it or one beneath
    /// it (paths compared component by component, empty and `.` components dropped), and
    /// maybe a few others: callers judge each one. During a relist, the volumes it has
    /// listed so far are included too (the cache will hold them in a moment).
    pub fn near(&self, nfs_path: &str) -> Vec<Volume> {
        let state = self.read();
        let mut out = Vec::new();
        state.current.near(nfs_path, &state.symbols, &mut out);
        if let Some(relisted) = &state.relisted {
            relisted.near(nfs_path, &state.symbols, &mut out);
        }
        out
    }

    /// A number that changes whenever the cache may have.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn len(&self) -> usize {
        self.read().current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the first complete list is in.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::VolumeStatus;
    use serde_json::json;

    fn volume(value: serde_json::Value) -> Volume {
        serde_json::from_value(value).unwrap()
    }

    fn full(name: &str) -> Volume {
        volume(json!({
            "metadata": {
                "name": name, "uid": format!("uid-{name}"), "resourceVersion": "42",
                "creationTimestamp": "2025-03-01T10:00:01Z",
                "deletionTimestamp": "2025-03-02T10:00:01Z", "deletionGracePeriodSeconds": 0,
                "generateName": "pvc-", "generation": 3,
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "ou"}],
                "labels": {"nfs-provisioner.io/directory-tree": "abc", "team": ""},
                "annotations": {"pv.kubernetes.io/provisioned-by": "me", "nfs-provisioner.io/on-delete": "retain"},
                "finalizers": ["kubernetes.io/pv-protection", "nfs-provisioner.io/volume-directory"]
            },
            "spec": {
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "ns",
                             "name": "data", "uid": "cu", "resourceVersion": "7", "fieldPath": ""},
                "nfs": {"server": "filer", "path": "/exports/ns-data", "readOnly": false},
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "nfs",
                "capacity": {"storage": "1Gi"}
            },
            "status": {"phase": "Released"}
        }))
    }

    fn cache_of(volumes: &[Volume]) -> VolumeCache {
        let cache = VolumeCache::default();
        cache.apply_watcher_event(&Event::Init);
        for pv in volumes {
            cache.apply_watcher_event(&Event::InitApply(pv.clone()));
        }
        cache.apply_watcher_event(&Event::InitDone);
        cache
    }

    /// Whatever a volume holds (every field of [`Volume`], absent, empty or set), the cache
    /// hands back exactly that.
    #[test]
    fn a_cached_volume_reads_back_field_for_field() {
        let sparse = volume(json!({"metadata": {"name": "bare"}}));
        let empty = volume(json!({
            "metadata": {"name": "empty", "uid": "", "annotations": {}, "labels": {}, "finalizers": []},
            "spec": {"claimRef": {}, "nfs": {"server": "", "path": ""}, "capacity": {}},
            "status": {}
        }));
        let all = [full("a"), sparse, empty, full("b")];
        let cache = cache_of(&all);
        for pv in &all {
            let key = ObjectRef::new(pv.metadata.name.as_deref().unwrap());
            assert_eq!(*cache.get(&key).unwrap(), *pv);
        }
        assert_eq!(cache.len(), 4);
        assert!(cache.get(&ObjectRef::new("missing")).is_none());
    }

    #[test]
    fn follows_applies_deletes_and_relists() {
        let cache = cache_of(&[full("a"), full("b")]);
        let mut changed = full("a");
        changed.status = Some(VolumeStatus {
            phase: Some("Bound".into()),
        });
        cache.apply_watcher_event(&Event::Apply(changed.clone()));
        assert_eq!(*cache.get(&ObjectRef::new("a")).unwrap(), changed);
        cache.apply_watcher_event(&Event::Delete(full("b")));
        assert!(cache.get(&ObjectRef::new("b")).is_none());

        // A relist replaces the cache only once complete.
        cache.apply_watcher_event(&Event::Init);
        cache.apply_watcher_event(&Event::InitApply(full("c")));
        assert!(
            cache.get(&ObjectRef::new("a")).is_some(),
            "old cache until InitDone"
        );
        assert!(cache.get(&ObjectRef::new("c")).is_none());
        cache.apply_watcher_event(&Event::InitDone);
        assert!(cache.get(&ObjectRef::new("a")).is_none());
        assert_eq!(*cache.get(&ObjectRef::new("c")).unwrap(), full("c"));
    }

    /// Strings shared by many volumes are held once, and let go when no volume uses them.
    #[test]
    fn repeated_strings_are_held_once() {
        let volumes: Vec<Volume> = (0..100).map(|i| full(&format!("pv-{i}"))).collect();
        let cache = cache_of(&volumes);
        let symbols = cache.read().symbols.len();
        assert!(symbols < 25, "{symbols} symbols for 100 volumes");
        cache.apply_watcher_event(&Event::Init);
        cache.apply_watcher_event(&Event::InitDone);
        assert!(cache.is_empty());
        assert_eq!(cache.read().symbols.len(), 0);
    }

    /// The shared-directory check asks the cache: what it finds is what the cache holds,
    /// and during a relist also what the relist brought so far.
    #[test]
    fn finds_volumes_near_a_directory_including_a_relist_in_progress() {
        let cache = cache_of(&[full("a"), full("b")]);
        let names = |volumes: Vec<Volume>| {
            let mut n: Vec<String> = volumes
                .into_iter()
                .filter_map(|v| v.metadata.name)
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(cache.near("/exports/ns-data")), ["a", "b"]);
        assert_eq!(names(cache.near("/exports/ns-data/sub")), ["a", "b"]);
        assert!(names(cache.near("/exports/other")).is_empty());
        cache.apply_watcher_event(&Event::Delete(full("b")));
        assert_eq!(names(cache.near("/exports")), ["a"]);

        cache.apply_watcher_event(&Event::Init);
        cache.apply_watcher_event(&Event::InitApply(full("c")));
        assert_eq!(names(cache.near("/exports/ns-data")), ["a", "c"]);
        cache.apply_watcher_event(&Event::InitDone);
        assert_eq!(names(cache.near("/exports/ns-data")), ["c"]);
    }

    /// The usage task decodes the cache only when this number moved.
    #[test]
    fn every_event_moves_the_generation() {
        let cache = cache_of(&[full("a")]);
        let mut last = cache.generation();
        for event in [
            Event::Apply(full("b")),
            Event::Delete(full("missing")),
            Event::Delete(full("a")),
            Event::Init,
            Event::InitDone,
        ] {
            cache.apply_watcher_event(&event);
            assert_ne!(cache.generation(), last);
            last = cache.generation();
        }
    }

    #[tokio::test]
    async fn ready_after_the_first_complete_list() {
        let cache = VolumeCache::default();
        cache.apply_watcher_event(&Event::Init);
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            cache.wait_until_ready(),
        )
        .await;
        assert!(waiting.is_err(), "not ready during the list");
        cache.apply_watcher_event(&Event::InitDone);
        cache.wait_until_ready().await;
    }
}
