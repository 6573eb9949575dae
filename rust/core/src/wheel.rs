//! A hierarchical hashed timer wheel of 1 ms resolution.
//!
//! Six levels of 64 slots: level `n` slots span `64^n` ms, so the wheel covers
//! 2^36 ms (about 2.2 years) ahead of its current time; later deadlines wait in
//! an overflow list and deadlines already past wait in an expired list. An
//! entry lives at the level given by the highest bit in which its deadline
//! differs from the wheel's time, which keeps every entry of a lower level
//! earlier than every entry of a higher one; advancing cascades a higher-level
//! slot's entries down when the wheel's time reaches it.
//!
//! Entries sit in a slab (24 bytes each) and form intrusive doubly linked
//! lists per slot, so set, replace and cancel are O(1); a token -> entry map
//! finds them. The wheel only holds times: alarms themselves are log records.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SPAN_BITS: u32 = SLOT_BITS * LEVELS as u32;
const EXPIRED: u32 = (LEVELS * SLOTS) as u32;
const OVERFLOW: u32 = EXPIRED + 1;
const LISTS: usize = OVERFLOW as usize + 1;
const NIL: u32 = u32::MAX;
/// Marks `prev` as "head of list n" rather than an entry index.
const HEAD_FLAG: u32 = 1 << 31;

/// Multiplicative hashing for u64 tokens: tokens are small integers, and
/// SipHash would cost more than the rest of `set`.
#[derive(Default)]
struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = (value ^ (value >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type TokenMap = HashMap<u64, u32, BuildHasherDefault<TokenHasher>>;

#[derive(Clone, Copy)]
struct Entry {
    token: u64,
    deadline: i64,
    next: u32,
    /// Previous entry, or `HEAD_FLAG | list` for the first entry of a list.
    prev: u32,
}

/// Deadlines (epoch ms) for u64 tokens, one per token.
pub struct TimerWheel {
    elapsed: i64,
    entries: Vec<Entry>,
    free: u32,
    heads: Vec<u32>,
    occupied: [u64; LEVELS],
    index: TokenMap,
}

impl TimerWheel {
    /// An empty wheel whose time is `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        TimerWheel {
            elapsed: now_ms,
            entries: Vec::new(),
            free: NIL,
            heads: vec![NIL; LISTS],
            occupied: [0; LEVELS],
            index: TokenMap::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Set or replace the deadline of `token`.
    pub fn set(&mut self, token: u64, deadline: i64) {
        let at = match self.index.get(&token) {
            Some(&at) => {
                self.unlink(at);
                at
            }
            None => {
                let at = self.allocate(token);
                self.index.insert(token, at);
                at
            }
        };
        self.entries[at as usize].deadline = deadline;
        self.place(at);
    }

    /// Remove `token`'s deadline; `false` if it had none.
    pub fn cancel(&mut self, token: u64) -> bool {
        match self.index.remove(&token) {
            Some(at) => {
                self.unlink(at);
                self.release(at);
                true
            }
            None => false,
        }
    }

    /// The deadline of `token`.
    pub fn get(&self, token: u64) -> Option<i64> {
        self.index
            .get(&token)
            .map(|&at| self.entries[at as usize].deadline)
    }

    /// When to call `advance` next: exact for deadlines within 64 ms of the
    /// wheel's time, else the start of the earliest occupied slot (a lower
    /// bound). `None` when empty.
    pub fn next_deadline(&self) -> Option<i64> {
        if self.heads[EXPIRED as usize] != NIL {
            return Some(self.elapsed);
        }
        if let Some((level, slot, start)) = self.next_slot() {
            if level == 0 {
                return Some(start);
            }
            let _ = slot;
            return Some(start.max(self.elapsed));
        }
        if self.heads[OVERFLOW as usize] != NIL {
            let mut earliest = i64::MAX;
            self.for_each(OVERFLOW, |entry| earliest = earliest.min(entry.deadline));
            return Some(earliest);
        }
        None
    }

    /// Remove and return every token due at or before `now_ms`, earliest first.
    pub fn advance(&mut self, now_ms: i64) -> Vec<u64> {
        let mut due: Vec<(i64, u64)> = Vec::new();
        self.drain_list(EXPIRED, now_ms, &mut due);
        while let Some((level, slot, start)) = self.next_slot() {
            if start > now_ms {
                break;
            }
            self.elapsed = self.elapsed.max(start);
            let list = (level * SLOTS + slot) as u32;
            self.occupied[level] &= !(1u64 << slot);
            self.drain_list(list, now_ms, &mut due);
        }
        if now_ms > self.elapsed {
            self.elapsed = now_ms;
        }
        if self.heads[OVERFLOW as usize] != NIL {
            self.drain_list(OVERFLOW, now_ms, &mut due);
        }
        due.sort_unstable();
        due.into_iter().map(|(_, token)| token).collect()
    }

    /// Heap bytes held: the slab, the list heads and the token map (buckets
    /// plus one control byte each, at hashbrown's 7/8 load).
    pub fn memory_bytes(&self) -> usize {
        let slab = self.entries.capacity() * std::mem::size_of::<Entry>();
        let heads = self.heads.capacity() * std::mem::size_of::<u32>();
        let bucket = std::mem::size_of::<(u64, u32)>() + 1;
        let buckets = (self.index.capacity() * 8 / 7).next_power_of_two();
        slab + heads + buckets * bucket
    }

    // -- internals -----------------------------------------------------------

    fn allocate(&mut self, token: u64) -> u32 {
        let entry = Entry {
            token,
            deadline: 0,
            next: NIL,
            prev: NIL,
        };
        if self.free != NIL {
            let at = self.free;
            self.free = self.entries[at as usize].next;
            self.entries[at as usize] = entry;
            at
        } else {
            self.entries.push(entry);
            (self.entries.len() - 1) as u32
        }
    }

    fn release(&mut self, at: u32) {
        self.entries[at as usize].next = self.free;
        self.entries[at as usize].prev = NIL;
        self.free = at;
    }

    /// The list an entry with `deadline` belongs in at the wheel's current time.
    fn list_for(&self, deadline: i64) -> u32 {
        if deadline <= self.elapsed {
            return EXPIRED;
        }
        let differing = (self.elapsed as u64 ^ deadline as u64) | (SLOTS as u64 - 1);
        if differing >> SPAN_BITS != 0 {
            return OVERFLOW;
        }
        let significant = 63 - differing.leading_zeros();
        let level = (significant / SLOT_BITS) as usize;
        let slot = ((deadline as u64) >> (level as u32 * SLOT_BITS)) as usize & (SLOTS - 1);
        (level * SLOTS + slot) as u32
    }

    fn place(&mut self, at: u32) {
        let list = self.list_for(self.entries[at as usize].deadline);
        let head = self.heads[list as usize];
        {
            let entry = &mut self.entries[at as usize];
            entry.next = head;
            entry.prev = HEAD_FLAG | list;
        }
        if head != NIL {
            self.entries[head as usize].prev = at;
        }
        self.heads[list as usize] = at;
        if list < EXPIRED {
            let (level, slot) = (list as usize / SLOTS, list as usize % SLOTS);
            self.occupied[level] |= 1u64 << slot;
        }
    }

    fn unlink(&mut self, at: u32) {
        let Entry { next, prev, .. } = self.entries[at as usize];
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if prev & HEAD_FLAG != 0 {
            let list = prev & !HEAD_FLAG;
            self.heads[list as usize] = next;
            if next == NIL && list < EXPIRED {
                let (level, slot) = (list as usize / SLOTS, list as usize % SLOTS);
                self.occupied[level] &= !(1u64 << slot);
            }
        } else if prev != NIL {
            self.entries[prev as usize].next = next;
        }
    }

    /// Take a whole list: due entries go to `due`, the rest are placed again
    /// at the wheel's (new) time, i.e. cascaded to a lower level.
    fn drain_list(&mut self, list: u32, now_ms: i64, due: &mut Vec<(i64, u64)>) {
        let mut at = std::mem::replace(&mut self.heads[list as usize], NIL);
        while at != NIL {
            let Entry {
                token,
                deadline,
                next,
                ..
            } = self.entries[at as usize];
            if deadline <= now_ms {
                due.push((deadline, token));
                self.index.remove(&token);
                self.release(at);
            } else {
                self.place(at);
            }
            at = next;
        }
    }

    /// The earliest occupied slot: (level, slot, start time), lowest level first.
    fn next_slot(&self) -> Option<(usize, usize, i64)> {
        for level in 0..LEVELS {
            let occupied = self.occupied[level];
            if occupied == 0 {
                continue;
            }
            let shift = level as u32 * SLOT_BITS;
            let position = ((self.elapsed as u64 >> shift) as usize) & (SLOTS - 1);
            let offset = occupied.rotate_right(position as u32).trailing_zeros() as usize;
            let slot = (position + offset) % SLOTS;
            let level_span = 1u64 << (shift + SLOT_BITS);
            let rotation_start = (self.elapsed as u64) & !(level_span - 1);
            let mut start = rotation_start + ((slot as u64) << shift);
            if slot < position {
                start += level_span; // only reachable after the wheel time wrapped a rotation
            }
            return Some((level, slot, start as i64));
        }
        None
    }

    fn for_each(&self, list: u32, mut visit: impl FnMut(&Entry)) {
        let mut at = self.heads[list as usize];
        while at != NIL {
            let entry = &self.entries[at as usize];
            visit(entry);
            at = entry.next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_order_and_never_early() {
        let now = 1_700_000_000_000;
        let mut wheel = TimerWheel::new(now);
        wheel.set(1, now + 5);
        wheel.set(2, now + 70);
        wheel.set(3, now + 5_000);
        wheel.set(4, now - 10);
        assert_eq!(wheel.advance(now), vec![4]);
        assert_eq!(wheel.advance(now + 4), Vec::<u64>::new());
        assert_eq!(wheel.advance(now + 69), vec![1]);
        assert_eq!(wheel.advance(now + 70), vec![2]);
        assert_eq!(wheel.advance(now + 4_999), Vec::<u64>::new());
        assert_eq!(wheel.advance(now + 6_000), vec![3]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn replace_and_cancel() {
        let mut wheel = TimerWheel::new(0);
        wheel.set(7, 1_000);
        wheel.set(7, 10);
        assert_eq!(wheel.get(7), Some(10));
        assert_eq!(wheel.len(), 1);
        assert!(wheel.cancel(7));
        assert!(!wheel.cancel(7));
        assert_eq!(wheel.advance(2_000), Vec::<u64>::new());
    }

    #[test]
    fn far_future_deadlines_wait_in_overflow() {
        let mut wheel = TimerWheel::new(0);
        let far = 1i64 << 40;
        wheel.set(1, far);
        assert_eq!(wheel.next_deadline(), Some(far));
        assert_eq!(wheel.advance(far - 1), Vec::<u64>::new());
        assert_eq!(wheel.advance(far), vec![1]);
    }

    #[test]
    fn next_deadline_is_a_lower_bound_that_converges() {
        let mut wheel = TimerWheel::new(0);
        wheel.set(1, 100_000);
        let mut now = 0;
        let mut steps = 0;
        while let Some(deadline) = wheel.next_deadline() {
            assert!(deadline <= 100_000);
            now = deadline.max(now);
            if !wheel.advance(now).is_empty() {
                break;
            }
            steps += 1;
            assert!(steps < 10);
        }
        assert_eq!(now, 100_000);
    }
}
