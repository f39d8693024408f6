//! Which cached volumes may point at a directory, one inside it, or one containing it.
//!
//! Before a volume's directory is deleted or archived, the controller checks that no other
//! PV points at the same directory, at one inside it or at one it lies in. Scanning every
//! cached volume for that made deleting N volumes cost O(N²) (about a quarter of the CPU of a
//! 3000-claim burst). This index maps every component of each cached NFS volume's path
//! (which path normalisation never changes, apart from dropping empty and `.` ones) to the
//! names of those volumes. A volume at, inside or above directory `a/b/c` has `c`, `a` or `b`
//! among its components, so the check looks at the candidates of the directory's own
//! components and judges each one against the cache.
//!
//! Safety rests on one property: **the index never lacks a volume the cache holds** (it may
//! briefly hold more). Both are updated by the same task, for each watch event in order
//! ([`DirectoryIndex::apply`]): entries are added before the cache gains the object and
//! removed only after the cache lost it, and during a relist the old entries stay until the
//! cache has swapped in the new list.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use kube::runtime::watcher::Event;

use super::Volume;
use super::volume_cache::VolumeCache;

/// The non-empty, non-`.` components of a path, each once.
pub fn components(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if !out.iter().any(|o| o == c) {
            out.push(c.to_string());
        }
    }
    out
}

/// The components of the path a cached volume points at, if it is an NFS volume.
fn components_of(pv: &Volume) -> Option<Vec<String>> {
    let nfs = pv.spec.as_ref()?.nfs.as_ref()?;
    let components = components(&nfs.path);
    (!components.is_empty()).then_some(components)
}

fn name_of(pv: &Volume) -> &str {
    pv.metadata.name.as_deref().unwrap_or("")
}

/// Names and components are shared (`Arc<str>`) between the two maps: a volume's name is
/// held once however many components list it, a component once however many volumes have
/// it. With 100 000 volumes this halved the index (12 to 6 MB at 20 000 volumes, heap
/// profile in BENCHMARKS.md).
/// The volumes listed under one component. Almost always a handful (a short list, not a
/// set), but every volume is also listed under the components of its export's path, and with
/// a list those made the initial list of 100 000 volumes quadratic (136 s of CPU).
enum Names {
    Few(Vec<Arc<str>>),
    Many(std::collections::HashSet<Arc<str>>),
}

/// Above this many names a list becomes a set.
const FEW: usize = 16;

impl Default for Names {
    fn default() -> Self {
        Names::Few(Vec::new())
    }
}

impl Names {
    fn insert(&mut self, name: &Arc<str>) {
        match self {
            Names::Few(names) if names.iter().any(|n| n == name) => {}
            Names::Few(names) if names.len() < FEW => names.push(name.clone()),
            Names::Few(names) => {
                let mut set: std::collections::HashSet<Arc<str>> = names.drain(..).collect();
                set.insert(name.clone());
                *self = Names::Many(set);
            }
            Names::Many(set) => {
                if !set.contains(name) {
                    set.insert(name.clone());
                }
            }
        }
    }

    fn remove(&mut self, name: &str) {
        match self {
            Names::Few(names) => names.retain(|n| &**n != name),
            Names::Many(set) => {
                set.remove(name);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Names::Few(names) => names.len(),
            Names::Many(set) => set.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn to_vec(&self) -> Vec<String> {
        match self {
            Names::Few(names) => names.iter().map(|n| n.to_string()).collect(),
            Names::Many(set) => set.iter().map(|n| n.to_string()).collect(),
        }
    }
}

#[derive(Default)]
struct Entries {
    names_by_component: HashMap<Arc<str>, Names>,
    components_by_name: HashMap<Arc<str>, Vec<Arc<str>>>,
}

impl Entries {
    fn name_arc(&self, name: &str) -> Arc<str> {
        match self.components_by_name.get_key_value(name) {
            Some((known, _)) => known.clone(),
            None => Arc::from(name),
        }
    }

    fn component_arc(&self, component: &str) -> Arc<str> {
        match self.names_by_component.get_key_value(component) {
            Some((known, _)) => known.clone(),
            None => Arc::from(component),
        }
    }

    /// Adds `name` under each of `components`; returns the components it was listed under
    /// before, if different (still listed: the caller unlinks them once the cache holds the
    /// new object).
    fn add(&mut self, name: &str, components: &[String]) -> Option<Vec<Arc<str>>> {
        let name = self.name_arc(name);
        let shared = self.list_under(&name, components);
        match self.components_by_name.insert(name, shared) {
            Some(old) if !same(&old, components) => Some(
                old.into_iter()
                    .filter(|c| !components.iter().any(|n| **n == **c))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Lists `name` under each of `components` (no other bookkeeping); returns the
    /// components as held.
    fn list_under(&mut self, name: &Arc<str>, components: &[String]) -> Vec<Arc<str>> {
        let mut shared = Vec::with_capacity(components.len());
        for component in components {
            let key = self.component_arc(component);
            shared.push(key.clone());
            self.names_by_component.entry(key).or_default().insert(name);
        }
        shared
    }

    /// Removes `name` from the lists of `components` (not from `components_by_name`).
    fn unlink<C: AsRef<str>>(&mut self, name: &str, components: &[C]) {
        for component in components {
            let component = component.as_ref();
            if let Some(names) = self.names_by_component.get_mut(component) {
                names.remove(name);
                if names.is_empty() {
                    self.names_by_component.remove(component);
                }
            }
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(components) = self.components_by_name.remove(name) {
            self.unlink(name, &components);
        }
    }
}

fn same(held: &[Arc<str>], components: &[String]) -> bool {
    held.len() == components.len() && held.iter().zip(components).all(|(h, c)| **h == **c)
}

#[derive(Default)]
struct State {
    current: Entries,
    /// Entries of a relist in progress (between `Init` and `InitDone`).
    relisted: Option<Entries>,
}

/// Directory name → names of cached volumes pointing at a directory of that name.
#[derive(Default)]
pub struct DirectoryIndex {
    state: Mutex<State>,
}

impl DirectoryIndex {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one watch event to the cache (through `writer`) and to the index, in the
    /// order that keeps every cached volume indexed.
    pub fn apply(&self, writer: &VolumeCache, event: &Event<Volume>) {
        match event {
            Event::Apply(pv) => {
                let name = name_of(pv);
                match components_of(pv) {
                    Some(components) => {
                        let previous = self.lock().current.add(name, &components);
                        writer.apply_watcher_event(event);
                        if let Some(old) = previous {
                            self.lock().current.unlink(name, &old);
                        }
                    }
                    None => {
                        writer.apply_watcher_event(event);
                        self.lock().current.remove(name);
                    }
                }
            }
            Event::Delete(pv) => {
                writer.apply_watcher_event(event);
                self.lock().current.remove(name_of(pv));
            }
            Event::Init => {
                writer.apply_watcher_event(event);
                self.lock().relisted = Some(Entries::default());
            }
            Event::InitApply(pv) => {
                let name = name_of(pv);
                let mut state = self.lock();
                match components_of(pv) {
                    Some(components) => {
                        // Also into the current entries: a lookup before `InitDone` still
                        // answers from the old cache, but must not miss what it will hold.
                        // (Added only: an old component may stay listed until `InitDone`.)
                        let current = &mut state.current;
                        let key = current.name_arc(name);
                        let shared = current.list_under(&key, &components);
                        current
                            .components_by_name
                            .entry(key)
                            .or_default()
                            .extend(shared);
                        let relisted = state.relisted.get_or_insert_with(Entries::default);
                        if let Some(old) = relisted.add(name, &components) {
                            relisted.unlink(name, &old);
                        }
                    }
                    None => {
                        if let Some(relisted) = state.relisted.as_mut() {
                            relisted.remove(name);
                        }
                    }
                }
                drop(state);
                writer.apply_watcher_event(event);
            }
            Event::InitDone => {
                writer.apply_watcher_event(event);
                let mut state = self.lock();
                if let Some(relisted) = state.relisted.take() {
                    state.current = relisted;
                }
            }
        }
    }

    /// Names of cached volumes whose path has `component` among its components. Every
    /// cached volume that does is among them; callers judge each one against the cache.
    pub fn candidates(&self, component: &str) -> Vec<String> {
        self.lock()
            .current
            .names_by_component
            .get(component)
            .map(Names::to_vec)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn pv(name: &str, path: Option<&str>) -> Volume {
        let spec = match path {
            Some(p) => json!({"nfs": {"server": "s", "path": p}}),
            None => json!({}),
        };
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    }

    /// The property the shared-directory check relies on: for every directory name, every
    /// cached volume pointing at it is a candidate.
    fn assert_covers(index: &DirectoryIndex, store: &VolumeCache) {
        for cached in store.state() {
            for component in components_of(&cached).unwrap_or_default() {
                assert!(
                    index
                        .candidates(&component)
                        .contains(&name_of(&cached).to_string()),
                    "{} under {component} is cached but not indexed",
                    name_of(&cached)
                );
            }
        }
    }

    #[test]
    fn follows_adds_changes_deletes_and_relists() {
        let store = VolumeCache::default();
        let index = DirectoryIndex::default();
        let events = [
            Event::Init,
            Event::InitApply(pv("a", Some("/exports/ns-a"))),
            Event::InitApply(pv("csi", None)),
            Event::InitDone,
            Event::Apply(pv("b", Some("/exports/ns-b/"))),
            Event::Apply(pv("c", Some("/other/ns-b"))),
        ];
        for e in &events {
            index.apply(&store, e);
            assert_covers(&index, &store);
        }
        assert_eq!(index.candidates("ns-a"), vec!["a".to_string()]);
        let mut shared = index.candidates("ns-b");
        shared.sort();
        assert_eq!(shared, vec!["b".to_string(), "c".to_string()]);

        index.apply(&store, &Event::Delete(pv("b", Some("/exports/ns-b"))));
        assert_eq!(index.candidates("ns-b"), vec!["c".to_string()]);

        // Recreated under another directory while the watch was down: the relist replaces it.
        for e in [
            Event::Init,
            Event::InitApply(pv("a", Some("/exports/elsewhere"))),
            Event::InitDone,
        ] {
            index.apply(&store, &e);
            assert_covers(&index, &store);
        }
        assert!(index.candidates("ns-a").is_empty());
        assert!(index.candidates("ns-b").is_empty(), "c was not relisted");
        assert_eq!(index.candidates("elsewhere"), vec!["a".to_string()]);
        assert_eq!(index.candidates("exports"), vec!["a".to_string()]);
    }

    /// Every volume is also listed under its export's path components: thousands of names
    /// under one component, held as a set past a few.
    #[test]
    fn a_component_shared_by_many_volumes() {
        let store = VolumeCache::default();
        let index = DirectoryIndex::default();
        let n = 3 * FEW;
        for i in 0..n {
            let path = format!("/exports/dir-{i}");
            index.apply(&store, &Event::Apply(pv(&format!("pv-{i}"), Some(&path))));
        }
        assert_eq!(index.candidates("exports").len(), n);
        index.apply(&store, &Event::Apply(pv("pv-0", Some("/exports/dir-0"))));
        assert_eq!(index.candidates("exports").len(), n, "no duplicates");
        for i in 0..n - 1 {
            let path = format!("/exports/dir-{i}");
            index.apply(&store, &Event::Delete(pv(&format!("pv-{i}"), Some(&path))));
        }
        assert_eq!(index.candidates("exports"), vec![format!("pv-{}", n - 1)]);
        assert_covers(&index, &store);
    }

    #[derive(Clone, Debug)]
    enum Step {
        Apply(u8, Option<u8>),
        Delete(u8),
        Relist(Vec<(u8, Option<u8>)>),
    }

    fn step() -> impl Strategy<Value = Step> {
        let obj = (0u8..6, prop::option::of(0u8..4));
        prop_oneof![
            4 => obj.clone().prop_map(|(n, l)| Step::Apply(n, l)),
            2 => (0u8..6).prop_map(Step::Delete),
            1 => prop::collection::vec(obj, 0..6).prop_map(Step::Relist),
        ]
    }

    fn volume(n: u8, leaf: Option<u8>) -> Volume {
        // Some nested: dir-0 contains dir-2 (as `/exports/dir-0/dir-2`).
        let path = leaf.map(|l| {
            if l == 2 {
                "/exports/dir-0/dir-2".to_string()
            } else {
                format!("/exports/dir-{l}")
            }
        });
        pv(&format!("pv-{n}"), path.as_deref())
    }

    proptest! {
        /// Any sequence of watch events: after each one, every cached NFS volume is a
        /// candidate for its directory name, and nothing outlives a relist that dropped it.
        #[test]
        fn never_misses_a_cached_volume(steps in prop::collection::vec(step(), 0..40)) {
            let store = VolumeCache::default();
            let index = DirectoryIndex::default();
            for s in steps {
                let events = match s {
                    Step::Apply(n, l) => vec![Event::Apply(volume(n, l))],
                    Step::Delete(n) => vec![Event::Delete(volume(n, None))],
                    Step::Relist(objs) => {
                        let mut v = vec![Event::Init];
                        v.extend(objs.into_iter().map(|(n, l)| Event::InitApply(volume(n, l))));
                        v.push(Event::InitDone);
                        v
                    }
                };
                for e in &events {
                    index.apply(&store, e);
                    assert_covers(&index, &store);
                }
                // Between steps the index holds exactly the cache's NFS volumes.
                let state = index.lock();
                let cached: Vec<_> = store.state().into_iter().filter_map(|v| components_of(&v)).collect();
                prop_assert_eq!(state.current.components_by_name.len(), cached.len());
                let listed: usize = state.current.names_by_component.values().map(Names::len).sum();
                prop_assert_eq!(listed, cached.iter().map(Vec::len).sum::<usize>());
            }
        }
    }
}
