//! The wheel's entries: a chunked slab of fixed 24-byte records plus a token
//! index that stores only slab positions (4 bytes a bucket).
//!
//! Why not `Vec<Entry>` and `HashMap<u64, u32>`: a doubling `Vec` holds up to
//! twice the live entries, and a map bucket of `(u64, u32)` is 16 bytes plus
//! control. The index here hashes the token but keeps the token itself only
//! in the slab, and the slab grows one chunk at a time.

use hashbrown::HashTable;

/// Entries per chunk: 4096 x 24 B = 96 KiB, so the unused tail of the last
/// chunk is negligible next to a large wheel and a small wheel costs one chunk.
const CHUNK_BITS: u32 = 12;
const CHUNK: usize = 1 << CHUNK_BITS;
/// "No entry", for list links and the free list.
pub const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
pub struct Entry {
    pub token: u64,
    pub deadline: i64,
    pub next: u32,
    /// Previous entry, or a list-head marker (see the wheel).
    pub prev: u32,
}

const VACANT: Entry = Entry {
    token: 0,
    deadline: 0,
    next: NIL,
    prev: NIL,
};

/// Multiplicative hashing: tokens are often small sequential integers, and
/// SipHash would cost more than the rest of `set`. The index is not exposed
/// to untrusted input (tokens are chosen by the runtime).
fn hash(token: u64) -> u64 {
    (token ^ (token >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Every live entry, found by token in O(1).
#[derive(Default)]
pub struct Entries {
    chunks: Vec<Box<[Entry]>>,
    /// Slots handed out so far (live or on the free list).
    used: u32,
    /// Head of the free list, threaded through `next`.
    free: u32,
    index: HashTable<u32>,
}

impl Entries {
    pub fn new() -> Self {
        Entries {
            free: NIL,
            ..Entries::default()
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn get(&self, at: u32) -> &Entry {
        &self.chunks[(at >> CHUNK_BITS) as usize][at as usize & (CHUNK - 1)]
    }

    pub fn get_mut(&mut self, at: u32) -> &mut Entry {
        &mut self.chunks[(at >> CHUNK_BITS) as usize][at as usize & (CHUNK - 1)]
    }

    /// The position of `token`'s entry.
    pub fn find(&self, token: u64) -> Option<u32> {
        let chunks = &self.chunks;
        self.index
            .find(hash(token), |&at| entry(chunks, at).token == token)
            .copied()
    }

    /// A new, unlinked entry for `token`, which must not have one yet.
    pub fn insert(&mut self, token: u64, deadline: i64) -> u32 {
        let at = self.allocate();
        *self.get_mut(at) = Entry {
            token,
            deadline,
            ..VACANT
        };
        let chunks = &self.chunks;
        self.index
            .insert_unique(hash(token), at, |&other| hash(entry(chunks, other).token));
        at
    }

    /// Drop the (already unlinked) entry at `at` and its index slot.
    pub fn remove(&mut self, at: u32) {
        let token = self.get(at).token;
        // Positions are unique, so the index slot is found without touching the slab.
        if let Ok(found) = self.index.find_entry(hash(token), |&other| other == at) {
            found.remove();
        }
        *self.get_mut(at) = Entry {
            next: self.free,
            ..VACANT
        };
        self.free = at;
    }

    /// Heap bytes: allocated chunks, the chunk table and the index.
    pub fn memory_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<Entry>()
            + self.chunks.capacity() * std::mem::size_of::<Box<[Entry]>>()
            + self.index.allocation_size()
    }

    fn allocate(&mut self) -> u32 {
        if self.free != NIL {
            let at = self.free;
            self.free = self.get(at).next;
            return at;
        }
        if self.used as usize == self.chunks.len() * CHUNK {
            self.chunks.push(vec![VACANT; CHUNK].into_boxed_slice());
        }
        assert!(self.used < NIL, "timer wheel is full (2^32 - 1 entries)");
        self.used += 1;
        self.used - 1
    }
}

fn entry(chunks: &[Box<[Entry]>], at: u32) -> &Entry {
    &chunks[(at >> CHUNK_BITS) as usize][at as usize & (CHUNK - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_find_remove_and_reuse() {
        let mut entries = Entries::new();
        let positions: Vec<u32> = (0..5_000u64).map(|t| entries.insert(t, t as i64)).collect();
        assert_eq!(entries.len(), 5_000);
        assert_eq!(entries.find(4_321), Some(positions[4_321]));
        assert_eq!(entries.get(positions[7]).deadline, 7);
        entries.remove(positions[7]);
        assert_eq!(entries.find(7), None);
        assert_eq!(entries.len(), 4_999);
        // The freed slot is reused before the slab grows.
        assert_eq!(entries.insert(99_999, 1), positions[7]);
        assert_eq!(entries.find(99_999), Some(positions[7]));
    }

    #[test]
    fn memory_is_counted_per_chunk_and_bucket() {
        let mut entries = Entries::new();
        assert_eq!(entries.memory_bytes(), 0);
        entries.insert(1, 1);
        let one = entries.memory_bytes();
        assert!(one >= CHUNK * std::mem::size_of::<Entry>());
        for token in 2..=CHUNK as u64 {
            entries.insert(token, 1);
        }
        assert_eq!(entries.chunks.len(), 1);
    }
}
