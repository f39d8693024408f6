//! Strings that repeat across volumes (annotation keys and values, label keys, finalizers,
//! server, class, reclaim policy, phase, the claim's namespace), each held once and referred
//! to by number.
//!
//! Unused ones are found by a sweep over every record (`super::State::sweep`), not counted:
//! a record is a run of bytes, and counting would mean decoding the old record at every
//! update.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

#[derive(Default)]
pub(super) struct Symbols {
    /// By number; `None` for a freed one (its number is reused).
    texts: Vec<Option<Box<str>>>,
    /// Numbers of the live ones, found by text.
    ids: HashTable<u32>,
    free: Vec<u32>,
    hasher: DefaultHashBuilder,
}

impl Symbols {
    /// The number of `s`, interning it if new.
    pub fn intern(&mut self, s: &str) -> u32 {
        let hash = self.hasher.hash_one(s);
        let texts = &self.texts;
        let text_of = |id: &u32| texts[*id as usize].as_deref().unwrap_or("");
        if let Some(id) = self.ids.find(hash, |id| text_of(id) == s) {
            return *id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.texts[id as usize] = Some(s.into());
                id
            }
            None => {
                // More than 4 billion distinct strings cannot be held anyway.
                let id = u32::try_from(self.texts.len()).unwrap_or(u32::MAX);
                self.texts.push(Some(s.into()));
                id
            }
        };
        let (texts, hasher) = (&self.texts, &self.hasher);
        self.ids.insert_unique(hash, id, |id| {
            hasher.hash_one(texts[*id as usize].as_deref().unwrap_or(""))
        });
        id
    }

    /// The text of number `id` ("" for a number never handed out).
    pub fn text(&self, id: u32) -> &str {
        self.texts
            .get(id as usize)
            .and_then(|t| t.as_deref())
            .unwrap_or("")
    }

    /// How many numbers have been handed out (live or freed): the size of a sweep's marks.
    pub fn capacity(&self) -> usize {
        self.texts.len()
    }

    /// Live symbols.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Frees every symbol not marked as used.
    pub fn sweep(&mut self, used: &[bool]) {
        let Symbols {
            texts,
            ids,
            free,
            hasher,
        } = self;
        for (id, text) in texts.iter_mut().enumerate() {
            if text.is_some() && !used.get(id).copied().unwrap_or(false) {
                let hash = hasher.hash_one(text.as_deref().unwrap_or(""));
                let id = id as u32;
                if let Ok(entry) = ids.find_entry(hash, |other| *other == id) {
                    entry.remove();
                }
                *text = None;
                free.push(id);
            }
        }
        let texts = &*texts;
        ids.shrink_to_fit(|id| hasher.hash_one(texts[*id as usize].as_deref().unwrap_or("")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_gets_the_same_number_and_freed_numbers_are_reused() {
        let mut symbols = Symbols::default();
        let a = symbols.intern("kubernetes.io/pv-protection");
        let b = symbols.intern("Retain");
        assert_eq!(symbols.intern("kubernetes.io/pv-protection"), a);
        assert_ne!(a, b);
        assert_eq!(symbols.text(b), "Retain");

        let mut used = vec![false; symbols.capacity()];
        used[b as usize] = true;
        symbols.sweep(&used);
        assert_eq!(symbols.len(), 1);
        assert_eq!(symbols.text(a), "");
        assert_eq!(symbols.text(b), "Retain", "a used symbol keeps its number");
        assert_eq!(symbols.intern("Delete"), a, "a freed number is reused");
        assert_eq!(symbols.intern("Retain"), b);
        assert_eq!(symbols.len(), 2);
    }
}
