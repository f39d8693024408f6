//! The cache of PVs, held compactly.
//!
//! A cluster can hold 100 000 PVs of this provisioner. Cached as [`Volume`] (an `ObjectMeta`
//! of about 350 bytes inline, three `BTreeMap`s of one 544-byte node each for annotations,
//! labels and capacity, and some 25 separately allocated strings) in kube's reflector store
//! (whose key repeats name, uid and resourceVersion), each cost about 4.8 KB (heap profile in
//! BENCHMARKS.md). Here each one is an [`Entry`]: the strings unique to the volume (name,
//! uid, resourceVersion, the claim reference's, the NFS path) packed into one allocation,
//! and every string that repeats across volumes (annotation and label keys and values,
//! finalizers, server, class, reclaim policy, phase, the claim's namespace) interned and
//! shared.
//!
//! Readers get a [`Volume`] rebuilt from its entry, field for field as it was cached, so no
//! reader can tell the difference. Hand-written rather than kube's `Store`: that store holds
//! the object type it hands out, and there is no hook to store one type and hand out another.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::api::core::v1::{NFSVolumeSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use tokio::sync::watch;

use crate::objects::{Volume, VolumeSpec, VolumeStatus};

type Sym = Arc<str>;

/// Strings that repeat across volumes, each held once. Entries no volume refers to any more
/// are dropped when a relist completes and after every [`PRUNE_EVERY`] removals.
#[derive(Default)]
struct Interner {
    strings: HashSet<Sym>,
}

const PRUNE_EVERY: usize = 4096;

impl Interner {
    fn intern(&mut self, s: &str) -> Sym {
        if let Some(found) = self.strings.get(s) {
            return found.clone();
        }
        let sym: Sym = Arc::from(s);
        self.strings.insert(sym.clone());
        sym
    }

    fn intern_opt(&mut self, s: &Option<String>) -> Option<Sym> {
        s.as_deref().map(|s| self.intern(s))
    }

    fn prune(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.strings.shrink_to_fit();
    }
}

/// Which of the packed strings are present (`None` and `Some("")` differ).
const NAME: usize = 0;
const UID: usize = 1;
const RESOURCE_VERSION: usize = 2;
const CLAIM_NAME: usize = 3;
const CLAIM_UID: usize = 4;
const CLAIM_RESOURCE_VERSION: usize = 5;
const CLAIM_FIELD_PATH: usize = 6;
const NFS_PATH: usize = 7;
const PACKED: usize = 8;

/// The strings unique to one volume, in one allocation.
struct Packed {
    text: Box<str>,
    /// End of each string in `text`; `u32::MAX` for an absent one.
    ends: [u32; PACKED],
}

impl Packed {
    fn new(parts: [Option<&str>; PACKED]) -> Packed {
        let mut text = String::with_capacity(parts.iter().flatten().map(|p| p.len()).sum());
        let mut ends = [u32::MAX; PACKED];
        for (i, part) in parts.iter().enumerate() {
            if let Some(part) = part {
                text.push_str(part);
                ends[i] = u32::try_from(text.len()).unwrap_or(u32::MAX - 1);
            }
        }
        Packed {
            text: text.into_boxed_str(),
            ends,
        }
    }

    fn get(&self, i: usize) -> Option<&str> {
        if self.ends[i] == u32::MAX {
            return None;
        }
        let start = self.ends[..i]
            .iter()
            .rev()
            .find(|e| **e != u32::MAX)
            .copied()
            .unwrap_or(0);
        self.text.get(start as usize..self.ends[i] as usize)
    }

    fn owned(&self, i: usize) -> Option<String> {
        self.get(i).map(str::to_string)
    }
}

/// What few PVs have, boxed so that the others do not pay for it.
#[derive(Clone)]
struct Rare {
    namespace: Option<String>,
    generate_name: Option<String>,
    generation: Option<i64>,
    owner_references: Option<Vec<OwnerReference>>,
    deletion_grace_period_seconds: Option<i64>,
    /// `spec.nfs.readOnly`.
    read_only: Option<bool>,
}

/// `spec` and the claim reference's interned parts.
struct SpecSyms {
    claim_ref: Option<ClaimSyms>,
    /// `spec.nfs` present, with its server.
    nfs_server: Option<Sym>,
    reclaim_policy: Option<Sym>,
    storage_class_name: Option<Sym>,
    capacity: Option<Box<[(Sym, Sym)]>>,
}

struct ClaimSyms {
    api_version: Option<Sym>,
    kind: Option<Sym>,
    namespace: Option<Sym>,
}

/// One cached volume.
struct Entry {
    packed: Packed,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    annotations: Option<Box<[(Sym, Sym)]>>,
    labels: Option<Box<[(Sym, Sym)]>>,
    finalizers: Option<Box<[Sym]>>,
    spec: Option<Box<SpecSyms>>,
    /// `status` present, with its phase.
    status: Option<Option<Sym>>,
    rare: Option<Box<Rare>>,
}

fn pairs(
    interner: &mut Interner,
    map: &Option<BTreeMap<String, String>>,
) -> Option<Box<[(Sym, Sym)]>> {
    map.as_ref().map(|m| {
        m.iter()
            .map(|(k, v)| (interner.intern(k), interner.intern(v)))
            .collect()
    })
}

fn map<V>(
    pairs: &Option<Box<[(Sym, Sym)]>>,
    value: impl Fn(&str) -> V,
) -> Option<BTreeMap<String, V>> {
    pairs
        .as_ref()
        .map(|p| p.iter().map(|(k, v)| (k.to_string(), value(v))).collect())
}

impl Entry {
    fn new(pv: &Volume, interner: &mut Interner) -> Entry {
        let meta = &pv.metadata;
        let spec = pv.spec.as_deref();
        let claim = spec.and_then(|s| s.claim_ref.as_ref());
        let nfs = spec.and_then(|s| s.nfs.as_ref());
        let packed = Packed::new([
            meta.name.as_deref(),
            meta.uid.as_deref(),
            meta.resource_version.as_deref(),
            claim.and_then(|c| c.name.as_deref()),
            claim.and_then(|c| c.uid.as_deref()),
            claim.and_then(|c| c.resource_version.as_deref()),
            claim.and_then(|c| c.field_path.as_deref()),
            nfs.map(|n| n.path.as_str()),
        ]);
        let rare = Rare {
            namespace: meta.namespace.clone(),
            generate_name: meta.generate_name.clone(),
            generation: meta.generation,
            owner_references: meta.owner_references.clone(),
            deletion_grace_period_seconds: meta.deletion_grace_period_seconds,
            read_only: nfs.and_then(|n| n.read_only),
        };
        let has_rare = rare.namespace.is_some()
            || rare.generate_name.is_some()
            || rare.generation.is_some()
            || rare.owner_references.is_some()
            || rare.deletion_grace_period_seconds.is_some()
            || rare.read_only.is_some();
        let spec_syms = spec.map(|s| {
            Box::new(SpecSyms {
                claim_ref: s.claim_ref.as_ref().map(|c| ClaimSyms {
                    api_version: interner.intern_opt(&c.api_version),
                    kind: interner.intern_opt(&c.kind),
                    namespace: interner.intern_opt(&c.namespace),
                }),
                nfs_server: s.nfs.as_ref().map(|n| interner.intern(&n.server)),
                reclaim_policy: interner.intern_opt(&s.persistent_volume_reclaim_policy),
                storage_class_name: interner.intern_opt(&s.storage_class_name),
                capacity: s.capacity.as_ref().map(|c| {
                    c.iter()
                        .map(|(k, q)| (interner.intern(k), interner.intern(&q.0)))
                        .collect()
                }),
            })
        });
        let status = pv.status.as_ref().map(|s| interner.intern_opt(&s.phase));
        let finalizers = meta
            .finalizers
            .as_ref()
            .map(|f| f.iter().map(|f| interner.intern(f)).collect());
        Entry {
            packed,
            creation_timestamp: meta.creation_timestamp.clone(),
            deletion_timestamp: meta.deletion_timestamp.clone(),
            annotations: pairs(interner, &meta.annotations),
            labels: pairs(interner, &meta.labels),
            finalizers,
            spec: spec_syms,
            status,
            rare: has_rare.then(|| Box::new(rare)),
        }
    }

    fn name(&self) -> &str {
        self.packed.get(NAME).unwrap_or("")
    }

    /// The volume as it was cached.
    fn volume(&self) -> Volume {
        let p = &self.packed;
        let rare = self.rare.as_deref();
        let metadata = ObjectMeta {
            annotations: map(&self.annotations, str::to_string),
            creation_timestamp: self.creation_timestamp.clone(),
            deletion_grace_period_seconds: rare.and_then(|r| r.deletion_grace_period_seconds),
            deletion_timestamp: self.deletion_timestamp.clone(),
            finalizers: self
                .finalizers
                .as_ref()
                .map(|f| f.iter().map(|f| f.to_string()).collect()),
            generate_name: rare.and_then(|r| r.generate_name.clone()),
            generation: rare.and_then(|r| r.generation),
            labels: map(&self.labels, str::to_string),
            name: p.owned(NAME),
            namespace: rare.and_then(|r| r.namespace.clone()),
            owner_references: rare.and_then(|r| r.owner_references.clone()),
            resource_version: p.owned(RESOURCE_VERSION),
            uid: p.owned(UID),
            ..Default::default()
        };
        let owned = |s: &Option<Sym>| s.as_ref().map(|s| s.to_string());
        let spec = self.spec.as_ref().map(|s| {
            Box::new(VolumeSpec {
                claim_ref: s.claim_ref.as_ref().map(|c| ObjectReference {
                    api_version: owned(&c.api_version),
                    field_path: p.owned(CLAIM_FIELD_PATH),
                    kind: owned(&c.kind),
                    name: p.owned(CLAIM_NAME),
                    namespace: owned(&c.namespace),
                    resource_version: p.owned(CLAIM_RESOURCE_VERSION),
                    uid: p.owned(CLAIM_UID),
                }),
                nfs: s.nfs_server.as_ref().map(|server| NFSVolumeSource {
                    path: p.owned(NFS_PATH).unwrap_or_default(),
                    read_only: rare.and_then(|r| r.read_only),
                    server: server.to_string(),
                }),
                persistent_volume_reclaim_policy: owned(&s.reclaim_policy),
                storage_class_name: owned(&s.storage_class_name),
                capacity: map(&s.capacity, |q| Quantity(q.to_string())),
            })
        });
        let status = self.status.as_ref().map(|phase| VolumeStatus {
            phase: phase.as_ref().map(|p| p.to_string()),
        });
        Volume {
            metadata,
            spec,
            status,
        }
    }
}

/// Entries are found by name (PVs are cluster-scoped), which each holds: a set, not a map,
/// so the name is not stored twice.
impl std::borrow::Borrow<str> for Entry {
    fn borrow(&self) -> &str {
        self.name()
    }
}

impl std::hash::Hash for Entry {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Entry {}

#[derive(Default)]
struct State {
    entries: HashSet<Entry>,
    /// The entries of a relist in progress; they replace `entries` when it completes.
    relisted: Option<HashSet<Entry>>,
    interner: Interner,
    removed_since_prune: usize,
}

impl State {
    fn insert_into(entries: &mut HashSet<Entry>, interner: &mut Interner, pv: &Volume) {
        entries.replace(Entry::new(pv, interner));
    }

    fn removed(&mut self) {
        self.removed_since_prune += 1;
        if self.removed_since_prune >= PRUNE_EVERY {
            self.removed_since_prune = 0;
            self.interner.prune();
        }
    }
}

/// The PV cache: what the volume watch selected (see `super::watches`), as [`Volume`]s.
pub struct VolumeCache {
    state: RwLock<State>,
    ready_tx: Mutex<Option<watch::Sender<bool>>>,
    ready: watch::Receiver<bool>,
}

impl Default for VolumeCache {
    fn default() -> Self {
        let (tx, ready) = watch::channel(false);
        VolumeCache {
            state: RwLock::default(),
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
                    entries, interner, ..
                } = &mut *state;
                State::insert_into(entries, interner, pv);
            }
            Event::Delete(pv) => {
                let mut state = self.write();
                let name = pv.metadata.name.as_deref().unwrap_or("");
                if state.entries.remove(name) {
                    state.removed();
                }
            }
            Event::Init => self.write().relisted = Some(HashSet::new()),
            Event::InitApply(pv) => {
                let mut state = self.write();
                let State {
                    relisted, interner, ..
                } = &mut *state;
                State::insert_into(relisted.get_or_insert_default(), interner, pv);
            }
            Event::InitDone => {
                let mut state = self.write();
                if let Some(mut relisted) = state.relisted.take() {
                    relisted.shrink_to_fit();
                    state.entries = relisted;
                }
                state.interner.prune();
                state.removed_since_prune = 0;
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
    }

    /// The cached volume of `key`'s name.
    pub fn get(&self, key: &ObjectRef<Volume>) -> Option<Arc<Volume>> {
        self.read()
            .entries
            .get(key.name.as_str())
            .map(|e| Arc::new(e.volume()))
    }

    /// Every cached volume. Builds them all at once: for one pass over a large cache, use
    /// [`VolumeCache::filter_map`].
    pub fn state(&self) -> Vec<Arc<Volume>> {
        self.filter_map(|pv| Some(Arc::new(pv)))
    }

    /// `f` of every cached volume, built one at a time (the cache is read-locked meanwhile:
    /// `f` must not touch it).
    pub fn filter_map<T>(&self, mut f: impl FnMut(Volume) -> Option<T>) -> Vec<T> {
        self.read()
            .entries
            .iter()
            .filter_map(|e| f(e.volume()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().entries.len()
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
        let interned = cache.read().interner.strings.len();
        assert!(interned < 20, "{interned} strings for 100 volumes");
        let state = cache.read();
        let a = state.entries.get("pv-1").unwrap();
        let b = state.entries.get("pv-2").unwrap();
        assert!(Arc::ptr_eq(
            &a.finalizers.as_ref().unwrap()[1],
            &b.finalizers.as_ref().unwrap()[1]
        ));
        drop(state);
        cache.apply_watcher_event(&Event::Init);
        cache.apply_watcher_event(&Event::InitDone);
        assert!(cache.is_empty());
        assert_eq!(cache.read().interner.strings.len(), 0);
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
