//! [`PackedMap`]: a small, rarely changed string map (a pod's labels or annotations) kept in two
//! allocations. The operator holds one pair per pod: at 100,000 pods, `BTreeMap`s cost over a
//! kilobyte a pod (a node of eleven slots however few entries, plus two allocations per entry),
//! this about a fifth of it.

use std::{collections::BTreeMap, fmt};

/// A string-to-string map, sorted by key: every key and value one after another in one string,
/// and where each ends. Reads are a binary search; a change rebuilds it (maps of pods change
/// only when their pod does).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct PackedMap {
    text: Box<str>,
    /// End of key `i` at `2i`, of its value at `2i + 1`.
    ends: Box<[u32]>,
}

impl PackedMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn start(&self, slot: usize) -> usize {
        slot.checked_sub(1)
            .and_then(|s| self.ends.get(s))
            .map_or(0, |&e| e as usize)
    }

    fn slot(&self, slot: usize) -> &str {
        let end = self.ends.get(slot).map_or(0, |&e| e as usize);
        self.text.get(self.start(slot)..end).unwrap_or_default()
    }

    fn key(&self, i: usize) -> &str {
        self.slot(2 * i)
    }

    fn value(&self, i: usize) -> &str {
        self.slot(2 * i + 1)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.value(mid)),
            }
        }
        None
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        (0..self.len()).map(|i| (self.key(i), self.value(i)))
    }

    /// Sets `key` to `value` (rebuilds the map).
    pub fn insert(&mut self, key: String, value: String) {
        let mut all = self.to_btree();
        all.insert(key, value);
        *self = Self::from_sorted(all.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The map as a `BTreeMap`.
    pub fn to_btree(&self) -> BTreeMap<String, String> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// From entries sorted by key, without duplicates. A map past 4 GiB of text (no pod's is:
    /// the API server caps all of a pod's annotations at 256 KiB) keeps what fits.
    fn from_sorted<'a>(entries: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Self {
        let bytes: usize = entries.clone().map(|(k, v)| k.len() + v.len()).sum();
        let mut text = String::with_capacity(bytes);
        let mut ends = Vec::with_capacity(2 * entries.size_hint().0);
        for (k, v) in entries {
            let Ok(end) = u32::try_from(text.len() + k.len() + v.len()) else {
                break;
            };
            text.push_str(k);
            ends.push(end - v.len() as u32);
            text.push_str(v);
            ends.push(end);
        }
        Self {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

impl From<&BTreeMap<String, String>> for PackedMap {
    fn from(map: &BTreeMap<String, String>) -> Self {
        Self::from_sorted(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

impl From<BTreeMap<String, String>> for PackedMap {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self::from(&map)
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for PackedMap {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for PackedMap {
    /// The last value of a key wins, as in a `BTreeMap`.
    fn from_iter<T: IntoIterator<Item = (K, V)>>(iter: T) -> Self {
        let all: BTreeMap<String, String> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Self::from(&all)
    }
}

impl fmt::Debug for PackedMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl std::ops::Index<&str> for PackedMap {
    type Output = str;

    /// The value of `key`; panics without one, as a `BTreeMap` does (for tests).
    fn index(&self, key: &str) -> &str {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no key {key:?} in the map"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn btree(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_what_a_btree_map_holds() {
        let maps = [
            btree(&[]),
            btree(&[("app", "checkout")]),
            btree(&[
                ("", "empty key"),
                ("app", ""),
                ("team", "core"),
                ("z", "é ü"),
            ]),
            btree(
                &(0..40)
                    .map(|i| (format!("k{i:02}"), format!("v{i}")))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            ),
        ];
        for map in maps {
            let packed = PackedMap::from(&map);
            assert_eq!(packed.len(), map.len());
            assert_eq!(packed.is_empty(), map.is_empty());
            assert_eq!(packed.to_btree(), map);
            for (k, v) in &map {
                assert_eq!(packed.get(k), Some(v.as_str()), "{k}");
            }
            for missing in ["", "a", "appp", "k", "k41", "zz"] {
                assert_eq!(packed.get(missing), map.get(missing).map(String::as_str));
            }
            assert_eq!(format!("{packed:?}"), format!("{map:?}"));
        }
    }

    #[test]
    fn changes_keep_keys_sorted_and_unique() {
        let mut m: PackedMap = [("team", "core"), ("app", "a"), ("app", "b")]
            .into_iter()
            .collect();
        assert_eq!(m.to_btree(), btree(&[("app", "b"), ("team", "core")]));
        m.insert("version".into(), "2".into());
        m.insert("app".into(), "c".into());
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [("app", "c"), ("team", "core"), ("version", "2")]
        );
        assert_eq!(&m["team"], "core");
        m.clear();
        assert!(m.is_empty());
        assert_eq!(m, PackedMap::new());
    }
}
