//! A hierarchical hashed timer wheel of 1 ms resolution.
//!
//! Six levels of 64 slots: level `n` slots span `64^n` ms, so the wheel covers
//! the 2^36 ms block (about 2.2 years) its current time is in; later deadlines
//! wait in an overflow list and deadlines already past in an expired list. An
//! entry lives at the level given by the highest bit in which its deadline
//! differs from the wheel's time, which keeps every entry of a lower level
//! earlier than every entry of a higher one; advancing cascades a higher-level
//! slot's entries down when the wheel's time reaches it.
//!
//! Entries are 24-byte slab records linked into intrusive doubly linked lists
//! per slot, so set, replace and cancel are O(1); an index finds them by token
//! (see [`entries`]). The wheel only holds times: alarms themselves are log
//! records.

mod entries;

use entries::{Entries, NIL};

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const SPAN_BITS: u32 = SLOT_BITS * LEVELS as u32;
const EXPIRED: u32 = (LEVELS * SLOTS) as u32;
const OVERFLOW: u32 = EXPIRED + 1;
const LISTS: usize = OVERFLOW as usize + 1;
/// Marks `prev` as "head of list n" rather than an entry position.
const HEAD_FLAG: u32 = 1 << 31;

/// Deadlines (epoch ms) for u64 tokens, one per token.
pub struct TimerWheel {
    /// The wheel's time: every slot before it has been visited.
    elapsed: i64,
    entries: Entries,
    heads: Vec<u32>,
    /// Bit `s` of `occupied[l]`: slot `s` of level `l` has entries.
    occupied: [u64; LEVELS],
    /// At most the earliest deadline of the expired and the overflow list
    /// (`i64::MAX` when empty); a cancel may leave it lower until the list is
    /// next drained.
    floor: [i64; 2],
}

impl TimerWheel {
    /// An empty wheel whose time is `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        TimerWheel {
            elapsed: now_ms,
            entries: Entries::new(),
            heads: vec![NIL; LISTS],
            occupied: [0; LEVELS],
            floor: [i64::MAX; 2],
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// Set or replace the deadline of `token`.
    pub fn set(&mut self, token: u64, deadline: i64) {
        let at = match self.entries.find(token) {
            Some(at) => {
                self.unlink(at);
                self.entries.get_mut(at).deadline = deadline;
                at
            }
            None => self.entries.insert(token, deadline),
        };
        self.place(at);
    }

    /// Remove `token`'s deadline; `false` if it had none.
    pub fn cancel(&mut self, token: u64) -> bool {
        let Some(at) = self.entries.find(token) else {
            return false;
        };
        self.unlink(at);
        self.entries.remove(at);
        true
    }

    /// The deadline of `token`.
    pub fn get(&self, token: u64) -> Option<i64> {
        self.entries
            .find(token)
            .map(|at| self.entries.get(at).deadline)
    }

    /// When to call `advance` next, `None` when empty; never after the
    /// earliest deadline. Exact for overdue deadlines (in the past: call now),
    /// for those within the wheel's current 64 ms and for the earliest
    /// overflow one; otherwise the start of the earliest occupied slot, so a
    /// caller that re-arms after every `advance` converges on the exact time
    /// in at most six steps. O(1).
    pub fn next_deadline(&self) -> Option<i64> {
        if self.heads[EXPIRED as usize] != NIL {
            // Below the wheel's time only if the caller's clock went back.
            return Some(self.floor[0]);
        }
        if let Some((_, _, start)) = self.next_slot() {
            return Some(start);
        }
        if self.heads[OVERFLOW as usize] != NIL {
            return Some(self.floor[1].max(self.elapsed));
        }
        None
    }

    /// Remove and return every token due at or before `now_ms`, earliest first
    /// (ties by token). Never returns a token whose deadline is after `now_ms`.
    pub fn advance(&mut self, now_ms: i64) -> Vec<u64> {
        let mut due: Vec<(i64, u64)> = Vec::new();
        let block = self.elapsed >> SPAN_BITS;
        if self.heads[EXPIRED as usize] != NIL {
            self.floor[0] = i64::MAX;
            self.drain_list(EXPIRED, now_ms, &mut due);
        }
        while let Some((level, slot, start)) = self.next_slot() {
            if start > now_ms {
                break;
            }
            self.elapsed = self.elapsed.max(start);
            self.occupied[level] &= !(1u64 << slot);
            self.drain_list((level * SLOTS + slot) as u32, now_ms, &mut due);
        }
        self.elapsed = self.elapsed.max(now_ms);
        // Overflow deadlines lie in a later 2^36 ms block than the wheel's
        // time, so they need a look only once the time has changed block, or
        // to make the floor exact again once a cancel left it behind.
        let stale = self.floor[1] <= self.elapsed || self.elapsed >> SPAN_BITS != block;
        if stale && self.heads[OVERFLOW as usize] != NIL {
            self.floor[1] = i64::MAX;
            self.drain_list(OVERFLOW, now_ms, &mut due);
        }
        due.sort_unstable();
        due.into_iter().map(|(_, token)| token).collect()
    }

    /// Heap bytes held: entry chunks, token index and list heads.
    pub fn memory_bytes(&self) -> usize {
        self.entries.memory_bytes() + self.heads.capacity() * std::mem::size_of::<u32>()
    }

    // -- internals -----------------------------------------------------------

    /// The list an entry with `deadline` belongs in at the wheel's current time.
    fn list_for(&self, deadline: i64) -> u32 {
        if deadline <= self.elapsed {
            return EXPIRED;
        }
        let differing = (self.elapsed as u64 ^ deadline as u64) | (SLOTS as u64 - 1);
        if differing >> SPAN_BITS != 0 {
            return OVERFLOW;
        }
        let level = (63 - differing.leading_zeros()) / SLOT_BITS;
        let slot = ((deadline as u64) >> (level * SLOT_BITS)) as usize & (SLOTS - 1);
        (level as usize * SLOTS + slot) as u32
    }

    /// Link the entry at `at` first into the list its deadline belongs in.
    fn place(&mut self, at: u32) {
        let deadline = self.entries.get(at).deadline;
        let list = self.list_for(deadline);
        let head = std::mem::replace(&mut self.heads[list as usize], at);
        let entry = self.entries.get_mut(at);
        entry.next = head;
        entry.prev = HEAD_FLAG | list;
        if head != NIL {
            self.entries.get_mut(head).prev = at;
        }
        if list < EXPIRED {
            self.occupied[list as usize / SLOTS] |= 1u64 << (list as usize % SLOTS);
        } else {
            let floor = &mut self.floor[(list - EXPIRED) as usize];
            *floor = (*floor).min(deadline);
        }
    }

    fn unlink(&mut self, at: u32) {
        let entries::Entry { next, prev, .. } = *self.entries.get(at);
        if next != NIL {
            self.entries.get_mut(next).prev = prev;
        }
        if prev & HEAD_FLAG == 0 {
            self.entries.get_mut(prev).next = next;
            return;
        }
        let list = prev & !HEAD_FLAG;
        self.heads[list as usize] = next;
        if next == NIL && list < EXPIRED {
            self.occupied[list as usize / SLOTS] &= !(1u64 << (list as usize % SLOTS));
        } else if next == NIL {
            self.floor[(list - EXPIRED) as usize] = i64::MAX;
        }
    }

    /// Take a whole list: due entries go to `due`, the rest are placed again
    /// at the wheel's (new) time, i.e. cascaded to a lower level.
    fn drain_list(&mut self, list: u32, now_ms: i64, due: &mut Vec<(i64, u64)>) {
        let mut at = std::mem::replace(&mut self.heads[list as usize], NIL);
        while at != NIL {
            let entries::Entry {
                token,
                deadline,
                next,
                ..
            } = *self.entries.get(at);
            if deadline <= now_ms {
                due.push((deadline, token));
                self.entries.remove(at);
            } else {
                self.place(at);
            }
            at = next;
        }
    }

    /// The earliest occupied slot: (level, slot, start time). By the level
    /// invariant the lowest occupied level holds it, in the first occupied
    /// slot after the wheel's position at that level.
    fn next_slot(&self) -> Option<(usize, usize, i64)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let shift = level as u32 * SLOT_BITS;
        let position = (self.elapsed as u64 >> shift) as usize & (SLOTS - 1);
        // Slots at or before `position` are empty at this level (their times
        // have passed), so the first set bit from `position` on is the one.
        let offset = self.occupied[level]
            .rotate_right(position as u32)
            .trailing_zeros() as usize;
        let slot = (position + offset) % SLOTS;
        let level_span = 1u64 << (shift + SLOT_BITS);
        let start = (self.elapsed as u64 & !(level_span - 1)) + ((slot as u64) << shift);
        Some((level, slot, start as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    #[test]
    fn fires_in_deadline_order_and_never_early() {
        let mut wheel = TimerWheel::new(NOW);
        wheel.set(1, NOW + 5);
        wheel.set(2, NOW + 70);
        wheel.set(3, NOW + 5_000);
        wheel.set(4, NOW - 10);
        assert_eq!(wheel.advance(NOW), vec![4]);
        assert_eq!(wheel.advance(NOW + 4), Vec::<u64>::new());
        assert_eq!(wheel.advance(NOW + 69), vec![1]);
        assert_eq!(wheel.advance(NOW + 70), vec![2]);
        assert_eq!(wheel.advance(NOW + 4_999), Vec::<u64>::new());
        assert_eq!(wheel.advance(NOW + 6_000), vec![3]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn one_advance_returns_everything_due_earliest_first() {
        let mut wheel = TimerWheel::new(NOW);
        let deadlines = [9_000_000, 3, 70_000, 64, 1, 4_096, -7, 262_144];
        for (token, offset) in deadlines.iter().enumerate() {
            wheel.set(token as u64, NOW + offset);
        }
        assert_eq!(wheel.advance(NOW + 262_144), vec![6, 4, 1, 3, 5, 2, 7]);
        assert_eq!(wheel.len(), 1);
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
        assert_eq!(wheel.get(7), None);
        assert_eq!(wheel.next_deadline(), None);
        assert_eq!(wheel.advance(2_000), Vec::<u64>::new());
    }

    #[test]
    fn past_deadlines_are_due_at_once() {
        let mut wheel = TimerWheel::new(NOW);
        wheel.advance(NOW + 10_000);
        wheel.set(1, NOW);
        assert_eq!(wheel.next_deadline(), Some(NOW)); // in the past: call now
        assert_eq!(wheel.advance(NOW + 10_000), vec![1]);
    }

    #[test]
    fn deadlines_years_ahead_wait_in_overflow_and_fire_on_time() {
        let mut wheel = TimerWheel::new(NOW);
        let years = 5 * 365 * 86_400_000;
        wheel.set(1, NOW + years);
        wheel.set(2, NOW + 2 * years);
        assert_eq!(wheel.next_deadline(), Some(NOW + years));
        assert_eq!(wheel.advance(NOW + years - 1), Vec::<u64>::new());
        assert_eq!(wheel.advance(NOW + years), vec![1]);
        let mut clock = NOW + years;
        while let Some(deadline) = wheel.next_deadline() {
            assert!(deadline <= NOW + 2 * years && deadline >= clock);
            clock = deadline;
            if wheel.advance(clock) == [2] {
                break;
            }
        }
        assert_eq!(clock, NOW + 2 * years);
    }

    #[test]
    fn a_clock_that_went_back_still_gets_alarms_on_its_time() {
        let mut wheel = TimerWheel::new(NOW);
        wheel.advance(NOW + 3_600_000); // the clock then steps back an hour
        wheel.set(1, NOW + 2_000);
        wheel.set(2, NOW + 1_000);
        assert_eq!(wheel.next_deadline(), Some(NOW + 1_000));
        assert_eq!(wheel.advance(NOW + 999), Vec::<u64>::new());
        assert_eq!(wheel.advance(NOW + 1_000), vec![2]);
        assert_eq!(wheel.next_deadline(), Some(NOW + 2_000));
        assert_eq!(wheel.advance(NOW + 2_000), vec![1]);
    }

    #[test]
    fn cancelling_the_earliest_far_deadline_does_not_stall_next_deadline() {
        let mut wheel = TimerWheel::new(NOW);
        let far = NOW + 4 * (1 << SPAN_BITS);
        wheel.set(1, far);
        wheel.set(2, far + 1_000);
        wheel.cancel(1);
        let mut clock = NOW;
        for _ in 0..4 {
            clock = wheel.next_deadline().unwrap();
            if wheel.advance(clock) == [2] {
                break;
            }
        }
        assert_eq!(clock, far + 1_000);
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
            assert!(steps <= LEVELS);
        }
        assert_eq!(now, 100_000);
    }

    #[test]
    fn memory_per_entry_stays_small() {
        let mut wheel = TimerWheel::new(NOW);
        for token in 0..100_000u64 {
            wheel.set(token, NOW + (token as i64 * 7_919) % 3_600_000);
        }
        assert!(wheel.memory_bytes() / wheel.len() <= 64);
    }
}
