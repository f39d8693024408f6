//! The records of one list of volumes, found by name and by the directory they point at.
//!
//! Records are appended to one byte buffer; a replaced or removed record is left there as
//! garbage until the buffer is compacted (when garbage is more than half of it). The slots
//! and the two hash tables hold numbers, not strings. So 100 000 volumes are a handful of
//! large allocations rather than millions of small ones, which glibc could not give back to
//! the kernel after the initial list (a page with one live chunk stays resident).
//!
//! **Directories.** Before a directory is deleted or archived, the controller asks which
//! cached volumes point at it, at a directory above it or at one beneath it ([`Table::near`]).
//! A path is hashed component by component (empty and `.` components dropped, as
//! `planning::ExportPath::directory_of` does), so the hash of each of its ancestors comes for
//! free: volumes at the directory or above it are found by looking up the hash of the
//! directory and of each ancestor; for volumes beneath it, each volume counts itself under
//! each of its ancestors, and only when the directory's count is not zero are the volumes
//! deeper than it checked one by one. A hash collision only adds a candidate; callers judge
//! every candidate against its volume.

use std::collections::HashMap;
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::record;
use super::symbols::Symbols;
use crate::objects::Volume;

/// Garbage below this many bytes is never worth a compaction.
const MIN_GARBAGE: usize = 64 * 1024;

#[derive(Clone, Copy, Default)]
struct Slot {
    at: usize,
    /// 0 for an empty slot.
    len: u32,
    /// Number of components of the NFS path; [`NOT_NFS`] for other volumes.
    depth: u32,
    name_hash: u64,
    path_hash: u64,
}

const NOT_NFS: u32 = u32::MAX;

impl Slot {
    fn path(&self) -> Option<(u64, usize)> {
        (self.depth != NOT_NFS).then_some((self.path_hash, self.depth as usize))
    }

    fn range(&self) -> std::ops::Range<usize> {
        self.at..self.at + self.len as usize
    }
}

/// Hashes of a path and of its ancestors: `hashes[k]` is the hash of its first `k`
/// components, so the last one is the path's own.
fn path_hashes(hasher: &DefaultHashBuilder, path: &str) -> Vec<u64> {
    let absolute = path.starts_with('/');
    let mut hash = hasher.hash_one(absolute);
    let mut hashes = vec![hash];
    for component in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        hash = hasher.hash_one((hash, component));
        hashes.push(hash);
    }
    hashes
}

#[derive(Default)]
pub(super) struct Table {
    bytes: Vec<u8>,
    slots: Vec<Slot>,
    /// Numbers of emptied slots, reused first.
    free: Vec<u32>,
    by_name: HashTable<u32>,
    by_path: HashTable<u32>,
    /// Hash of a directory → how many volumes point beneath it.
    beneath: HashMap<u64, u32>,
    garbage: usize,
    hasher: DefaultHashBuilder,
}

impl Table {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    fn record(&self, id: u32) -> &[u8] {
        &self.bytes[self.slots[id as usize].range()]
    }

    fn find(&self, name: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(name);
        self.by_name
            .find(hash, |id| record::name(self.record(*id)).as_str() == name)
            .copied()
    }

    /// Inserts `pv`, or replaces the volume of the same name.
    pub fn insert(&mut self, pv: &Volume, symbols: &mut Symbols) {
        let name = pv.metadata.name.as_deref().unwrap_or("");
        let at = self.bytes.len();
        record::encode(pv, symbols, &mut self.bytes);
        let hashes = pv
            .spec
            .as_ref()
            .and_then(|s| s.nfs.as_ref())
            .map(|nfs| path_hashes(&self.hasher, &nfs.path));
        let slot = Slot {
            at,
            // A record of 4 GB would need an annotation of 4 GB.
            len: u32::try_from(self.bytes.len() - at).unwrap_or(u32::MAX),
            depth: hashes.as_ref().map_or(NOT_NFS, |h| {
                u32::try_from(h.len() - 1).unwrap_or(NOT_NFS - 1)
            }),
            name_hash: self.hasher.hash_one(name),
            path_hash: hashes.as_ref().map_or(0, |h| h[h.len() - 1]),
        };
        let id = match self.find(name) {
            Some(id) => {
                self.unlink_path(id, symbols);
                self.garbage += self.slots[id as usize].len as usize;
                self.slots[id as usize] = slot;
                id
            }
            None => {
                let id = match self.free.pop() {
                    Some(id) => {
                        self.slots[id as usize] = slot;
                        id
                    }
                    None => {
                        self.slots.push(slot);
                        // Four billion volumes do not fit in memory anyway.
                        u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
                    }
                };
                let slots = &self.slots;
                self.by_name
                    .insert_unique(slot.name_hash, id, |id| slots[*id as usize].name_hash);
                id
            }
        };
        if let Some(hashes) = hashes {
            let slots = &self.slots;
            self.by_path
                .insert_unique(hashes[hashes.len() - 1], id, |id| path_hash(slots, *id));
            for ancestor in &hashes[..hashes.len() - 1] {
                *self.beneath.entry(*ancestor).or_default() += 1;
            }
        }
        self.compact_if_worth_it();
    }

    /// Removes the volume called `name`; whether there was one.
    pub fn remove(&mut self, name: &str, symbols: &Symbols) -> bool {
        let Some(id) = self.find(name) else {
            return false;
        };
        self.unlink_path(id, symbols);
        let slot = self.slots[id as usize];
        if let Ok(entry) = self
            .by_name
            .find_entry(slot.name_hash, |other| *other == id)
        {
            entry.remove();
        }
        self.garbage += slot.len as usize;
        self.slots[id as usize] = Slot::default();
        self.free.push(id);
        self.compact_if_worth_it();
        true
    }

    /// Takes slot `id` out of the directory tables (before its record goes).
    fn unlink_path(&mut self, id: u32, symbols: &Symbols) {
        let Some((hash, _)) = self.slots[id as usize].path() else {
            return;
        };
        if let Ok(entry) = self.by_path.find_entry(hash, |other| *other == id) {
            entry.remove();
        }
        let hashes = {
            let path = record::nfs_path(self.record(id), symbols).unwrap_or_default();
            path_hashes(&self.hasher, &path)
        };
        for ancestor in &hashes[..hashes.len() - 1] {
            if let Some(count) = self.beneath.get_mut(ancestor) {
                *count -= 1;
                if *count == 0 {
                    self.beneath.remove(ancestor);
                }
            }
        }
    }

    fn compact_if_worth_it(&mut self) {
        if self.garbage >= MIN_GARBAGE && self.garbage * 2 > self.bytes.len() {
            self.compact();
        }
    }

    /// Copies the live records into a buffer of their size.
    pub fn compact(&mut self) {
        let live = self.bytes.len() - self.garbage;
        let mut bytes = Vec::with_capacity(live);
        for slot in self.slots.iter_mut().filter(|s| s.len > 0) {
            let at = bytes.len();
            bytes.extend_from_slice(&self.bytes[slot.range()]);
            slot.at = at;
        }
        self.bytes = bytes;
        self.garbage = 0;
    }

    /// Gives back what the initial list left spare.
    pub fn shrink_to_fit(&mut self) {
        self.compact();
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
        let slots = &self.slots;
        self.by_name
            .shrink_to_fit(|id| slots[*id as usize].name_hash);
        self.by_path.shrink_to_fit(|id| path_hash(slots, *id));
        self.beneath.shrink_to_fit();
    }

    fn live(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_name.iter().copied()
    }

    pub fn get(&self, name: &str, symbols: &Symbols) -> Option<Volume> {
        self.find(name)
            .map(|id| record::decode(self.record(id), symbols))
    }

    /// `f` of every volume, decoded one at a time.
    pub fn filter_map<T>(
        &self,
        symbols: &Symbols,
        f: &mut impl FnMut(Volume) -> Option<T>,
        out: &mut Vec<T>,
    ) {
        out.extend(
            self.live()
                .filter_map(|id| f(record::decode(self.record(id), symbols))),
        );
    }

    /// Marks the symbols every record refers to.
    pub fn mark_symbols(&self, symbols: &Symbols, marks: &mut Vec<bool>) {
        for id in self.live() {
            record::mark_symbols(self.record(id), symbols, marks);
        }
    }

    /// The volumes pointing at `path`, at a directory above it or at one beneath it
    /// (and, rarely, some others whose hash collides).
    pub fn near(&self, path: &str, symbols: &Symbols, out: &mut Vec<Volume>) {
        let hashes = path_hashes(&self.hasher, path);
        let depth = hashes.len() - 1;
        for hash in &hashes {
            for id in self.by_path.iter_hash(*hash) {
                if path_hash(&self.slots, *id) == *hash {
                    out.push(record::decode(self.record(*id), symbols));
                }
            }
        }
        if self.beneath.get(&hashes[depth]).is_some_and(|n| *n > 0) {
            for id in self.live() {
                let Some((_, their_depth)) = self.slots[id as usize].path() else {
                    continue;
                };
                if their_depth <= depth {
                    continue;
                }
                let theirs = record::nfs_path(self.record(id), symbols).unwrap_or_default();
                if path_hashes(&self.hasher, &theirs)[depth] == hashes[depth] {
                    out.push(record::decode(self.record(id), symbols));
                }
            }
        }
    }

    /// Bytes held (for tests of compaction).
    #[cfg(test)]
    pub fn bytes_held(&self) -> usize {
        self.bytes.len()
    }
}

fn path_hash(slots: &[Slot], id: u32) -> u64 {
    slots[id as usize].path_hash
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

    fn names(volumes: Vec<Volume>) -> Vec<String> {
        let mut names: Vec<String> = volumes
            .into_iter()
            .map(|v| v.metadata.name.unwrap_or_default())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn near(table: &Table, symbols: &Symbols, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        table.near(path, symbols, &mut out);
        names(out)
    }

    #[test]
    fn finds_volumes_at_above_and_beneath_a_directory() {
        let mut symbols = Symbols::default();
        let mut table = Table::default();
        for (name, path) in [
            ("same", "/exports/ns/data"),
            ("same-spelled-otherwise", "//exports/./ns/data/"),
            ("above", "/exports/ns"),
            ("beneath", "/exports/ns/data/sub/deeper"),
            ("sibling", "/exports/ns/other"),
            ("relative", "exports/ns/data"),
            ("prefix-not-parent", "/exports/ns/data-2"),
        ] {
            table.insert(&pv(name, Some(path)), &mut symbols);
        }
        table.insert(&pv("csi", None), &mut symbols);
        assert_eq!(
            near(&table, &symbols, "/exports/ns/data"),
            ["above", "beneath", "same", "same-spelled-otherwise"]
        );
        assert_eq!(
            near(&table, &symbols, "/exports/ns/other"),
            ["above", "sibling"]
        );
        assert_eq!(near(&table, &symbols, "exports/ns/data"), ["relative"]);

        table.remove("beneath", &symbols);
        table.insert(&pv("above", Some("/elsewhere")), &mut symbols);
        assert_eq!(
            near(&table, &symbols, "/exports/ns/data"),
            ["same", "same-spelled-otherwise"]
        );
        assert_eq!(near(&table, &symbols, "/elsewhere/x"), ["above"]);
        assert_eq!(table.len(), 7);
    }

    #[test]
    fn garbage_is_compacted_away() {
        let mut symbols = Symbols::default();
        let mut table = Table::default();
        for round in 0..50 {
            for i in 0..1000 {
                let mut v = pv(&format!("pv-{i}"), Some(&format!("/exports/dir-{i}")));
                v.metadata.resource_version = Some(format!("{round}-{i}"));
                table.insert(&v, &mut symbols);
            }
        }
        let one = {
            let mut bytes = Vec::new();
            record::encode(
                &pv("pv-999", Some("/exports/dir-999")),
                &mut symbols,
                &mut bytes,
            );
            bytes.len() + 8
        };
        assert!(
            table.bytes_held() < 2 * 1000 * one + MIN_GARBAGE,
            "{} bytes held for 1000 volumes of about {one} bytes",
            table.bytes_held()
        );
        let got = table.get("pv-7", &symbols).unwrap();
        assert_eq!(got.metadata.resource_version.as_deref(), Some("49-7"));
        assert_eq!(near(&table, &symbols, "/exports/dir-7"), ["pv-7"]);
    }

    proptest! {
        /// Any sequence of inserts, updates and removals: `near` finds exactly the volumes
        /// a scan of all of them finds (and maybe a collision, which 64-bit hashes make
        /// vanishingly rare here), and `get` every live one.
        #[test]
        fn near_agrees_with_a_scan(
            steps in prop::collection::vec((0u8..8, prop::option::of(0usize..6), any::<bool>()), 0..60),
            probe in 0usize..6,
        ) {
            let paths = ["/e/a", "/e/a/b", "/e/a/b/c", "/e/b", "/e", "e/a"];
            let mut symbols = Symbols::default();
            let mut table = Table::default();
            let mut model: HashMap<String, Option<&str>> = HashMap::new();
            for (n, path, remove) in steps {
                let name = format!("pv-{n}");
                if remove {
                    prop_assert_eq!(table.remove(&name, &symbols), model.remove(&name).is_some());
                } else {
                    let path = path.map(|p| paths[p]);
                    table.insert(&pv(&name, path), &mut symbols);
                    model.insert(name, path);
                }
            }
            prop_assert_eq!(table.len(), model.len());
            for name in model.keys() {
                prop_assert!(table.get(name, &symbols).is_some());
            }
            let probe = paths[probe];
            let related = |theirs: &str| {
                let (a, b) = (probe.trim_end_matches('/'), theirs.trim_end_matches('/'));
                a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
            };
            let mut expected: Vec<String> = model
                .iter()
                .filter(|(_, p)| p.is_some_and(related))
                .map(|(n, _)| n.clone())
                .collect();
            expected.sort();
            prop_assert_eq!(near(&table, &symbols, probe), expected);
        }
    }
}
