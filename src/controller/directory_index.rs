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
use std::sync::{Mutex, MutexGuard};

use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;

use super::Volume;

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

#[derive(Default)]
struct Entries {
    /// Almost always a handful of names per component: a short list, not a set.
    names_by_component: HashMap<String, Vec<String>>,
    components_by_name: HashMap<String, Vec<String>>,
}

impl Entries {
    /// Adds `name` under each of `components`; returns the components it was listed under
    /// before, if different (still listed: the caller unlinks them once the cache holds the
    /// new object).
    fn add(&mut self, name: &str, components: &[String]) -> Option<Vec<String>> {
        self.list_under(name, components);
        match self
            .components_by_name
            .insert(name.to_string(), components.to_vec())
        {
            Some(old) if old != components => Some(
                old.into_iter()
                    .filter(|c| !components.contains(c))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Lists `name` under each of `components` (no other bookkeeping).
    fn list_under(&mut self, name: &str, components: &[String]) {
        for component in components {
            let names = self
                .names_by_component
                .entry(component.clone())
                .or_default();
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }

    /// Removes `name` from the lists of `components` (not from `components_by_name`).
    fn unlink(&mut self, name: &str, components: &[String]) {
        for component in components {
            if let Some(names) = self.names_by_component.get_mut(component) {
                names.retain(|n| n != name);
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
    pub fn apply(&self, writer: &mut Writer<Volume>, event: &Event<Volume>) {
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
                        current.list_under(name, &components);
                        current
                            .components_by_name
                            .entry(name.to_string())
                            .or_default()
                            .extend(components.iter().cloned());
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
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::{self, Store};
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
    fn assert_covers(index: &DirectoryIndex, store: &Store<Volume>) {
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
        let (store, mut writer) = reflector::store::<Volume>();
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
            index.apply(&mut writer, e);
            assert_covers(&index, &store);
        }
        assert_eq!(index.candidates("ns-a"), vec!["a".to_string()]);
        let mut shared = index.candidates("ns-b");
        shared.sort();
        assert_eq!(shared, vec!["b".to_string(), "c".to_string()]);

        index.apply(&mut writer, &Event::Delete(pv("b", Some("/exports/ns-b"))));
        assert_eq!(index.candidates("ns-b"), vec!["c".to_string()]);

        // Recreated under another directory while the watch was down: the relist replaces it.
        for e in [
            Event::Init,
            Event::InitApply(pv("a", Some("/exports/elsewhere"))),
            Event::InitDone,
        ] {
            index.apply(&mut writer, &e);
            assert_covers(&index, &store);
        }
        assert!(index.candidates("ns-a").is_empty());
        assert!(index.candidates("ns-b").is_empty(), "c was not relisted");
        assert_eq!(index.candidates("elsewhere"), vec!["a".to_string()]);
        assert_eq!(index.candidates("exports"), vec!["a".to_string()]);
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
            let (store, mut writer) = reflector::store::<Volume>();
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
                    index.apply(&mut writer, e);
                    assert_covers(&index, &store);
                }
                // Between steps the index holds exactly the cache's NFS volumes.
                let state = index.lock();
                let cached: Vec<_> = store.state().into_iter().filter_map(|v| components_of(&v)).collect();
                prop_assert_eq!(state.current.components_by_name.len(), cached.len());
                let listed: usize = state.current.names_by_component.values().map(Vec::len).sum();
                prop_assert_eq!(listed, cached.iter().map(Vec::len).sum::<usize>());
            }
        }
    }
}
