//! A bounded value cache with CLOCK (second chance) eviction.
//!
//! Keyed by file location: a location's bytes never change, so entries never
//! go stale; locations that are no longer referenced simply age out.

use std::collections::VecDeque;
use std::sync::Arc;

use super::index::Loc;
use crate::FastMap;

/// Bytes charged per entry on top of the value (map slot, ring slot, Arc header).
const ENTRY_OVERHEAD: usize = 64;

pub(crate) struct ValueCache {
    budget: usize,
    used: usize,
    entries: FastMap<Loc, (Arc<[u8]>, bool)>,
    ring: VecDeque<Loc>,
}

impl ValueCache {
    pub fn new(budget: usize) -> Self {
        ValueCache {
            budget,
            used: 0,
            entries: FastMap::default(),
            ring: VecDeque::new(),
        }
    }

    pub fn get(&mut self, loc: &Loc) -> Option<Arc<[u8]>> {
        let (value, referenced) = self.entries.get_mut(loc)?;
        *referenced = true;
        Some(value.clone())
    }

    pub fn insert(&mut self, loc: Loc, value: Arc<[u8]>) {
        let cost = value.len() + ENTRY_OVERHEAD;
        if cost > self.budget / 8 || self.entries.contains_key(&loc) {
            return; // huge values would flush everything else out
        }
        while self.used + cost > self.budget {
            if !self.evict_one() {
                break;
            }
        }
        self.used += cost;
        self.entries.insert(loc, (value, false));
        self.ring.push_back(loc);
    }

    /// Evict one unreferenced entry, giving referenced ones a second chance.
    fn evict_one(&mut self) -> bool {
        while let Some(loc) = self.ring.pop_front() {
            let Some((value, referenced)) = self.entries.get_mut(&loc) else {
                continue;
            };
            if *referenced {
                *referenced = false;
                self.ring.push_back(loc);
                continue;
            }
            self.used -= value.len() + ENTRY_OVERHEAD;
            self.entries.remove(&loc);
            return true;
        }
        false
    }

    /// Drop every entry of `file` (its file was deleted by compaction).
    pub fn forget_file(&mut self, file: u32) {
        let mut freed = 0;
        self.entries.retain(|loc, (value, _)| {
            let keep = loc.file != file;
            if !keep {
                freed += value.len() + ENTRY_OVERHEAD;
            }
            keep
        });
        self.used -= freed;
        let entries = &self.entries;
        self.ring.retain(|loc| entries.contains_key(loc));
    }

    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(off: u64) -> Loc {
        Loc {
            off,
            file: 1,
            len: 10,
        }
    }

    #[test]
    fn stays_within_budget_and_keeps_referenced_entries() {
        let mut cache = ValueCache::new(10 * (10 + ENTRY_OVERHEAD));
        let value: Arc<[u8]> = vec![0u8; 10].into();
        for off in 0..10 {
            cache.insert(loc(off), value.clone());
        }
        assert!(cache.get(&loc(0)).is_some());
        cache.insert(loc(100), value.clone());
        assert!(cache.used() <= 10 * (10 + ENTRY_OVERHEAD));
        assert!(
            cache.get(&loc(0)).is_some(),
            "referenced entry got a second chance"
        );
        assert!(
            cache.get(&loc(1)).is_none(),
            "oldest unreferenced entry was evicted"
        );
        cache.forget_file(1);
        assert_eq!(cache.used(), 0);
    }
}
