//! Waiters keyed by commit sequence number, released in order as the durable
//! watermark advances.
//!
//! Commits are numbered in the order they are issued, so waiters almost always
//! arrive in ascending order: `push` is then an append, and `release_at_most` drains a
//! prefix. A waiter for an older number (a `sync()` after later commits) is
//! inserted at its place, so release order stays ascending.

use std::collections::VecDeque;

/// Waiters in ascending sequence-number order (equal numbers keep push order).
#[derive(Debug)]
pub struct SeqQueue<T> {
    entries: VecDeque<(u64, T)>,
}

impl<T> Default for SeqQueue<T> {
    fn default() -> Self {
        SeqQueue {
            entries: VecDeque::new(),
        }
    }
}

impl<T> SeqQueue<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a waiter for `seq`.
    pub fn push(&mut self, seq: u64, waiter: T) {
        match self.entries.back() {
            Some(&(last, _)) if last > seq => {
                let at = self.entries.partition_point(|&(queued, _)| queued <= seq);
                self.entries.insert(at, (seq, waiter));
            }
            _ => self.entries.push_back((seq, waiter)),
        }
    }

    /// Remove the first `limit` waiters whose number is `<= watermark`, in ascending order.
    pub fn release_at_most(
        &mut self,
        watermark: u64,
        limit: usize,
    ) -> impl Iterator<Item = T> + '_ {
        let count = self.count_at_or_below(watermark).min(limit);
        self.entries.drain(..count).map(|(_, waiter)| waiter)
    }

    /// How many waiters have a number `<= watermark`.
    pub fn count_at_or_below(&self, watermark: u64) -> usize {
        self.entries
            .partition_point(|&(queued, _)| queued <= watermark)
    }

    /// Remove every waiter, in ascending order.
    pub fn drain_all(&mut self) -> impl Iterator<Item = T> + '_ {
        self.entries.drain(..).map(|(_, waiter)| waiter)
    }

    /// The waiters, in ascending order (for a garbage collector's traversal).
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.entries.iter().map(|(_, waiter)| waiter)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_a_prefix_in_order() {
        let mut queue = SeqQueue::new();
        for seq in 1..=5 {
            queue.push(seq, seq * 10);
        }
        assert_eq!(
            queue.release_at_most(3, usize::MAX).collect::<Vec<_>>(),
            [10, 20, 30]
        );
        assert_eq!(queue.release_at_most(3, usize::MAX).count(), 0);
        assert_eq!(queue.len(), 2);
        assert_eq!(
            queue
                .release_at_most(u64::MAX, usize::MAX)
                .collect::<Vec<_>>(),
            [40, 50]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn release_at_most_takes_the_oldest_first() {
        let mut queue = SeqQueue::new();
        for seq in 1..=5 {
            queue.push(seq, seq);
        }
        assert_eq!(queue.release_at_most(4, 3).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(queue.count_at_or_below(4), 1);
        assert_eq!(queue.release_at_most(4, 3).collect::<Vec<_>>(), [4]);
        assert_eq!(queue.count_at_or_below(4), 0);
        assert_eq!(queue.release_at_most(4, 3).count(), 0);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn an_older_seq_is_inserted_at_its_place() {
        let mut queue = SeqQueue::new();
        queue.push(5, "five");
        queue.push(9, "nine");
        queue.push(2, "two");
        queue.push(5, "five again");
        assert_eq!(
            queue.release_at_most(4, usize::MAX).collect::<Vec<_>>(),
            ["two"]
        );
        assert_eq!(
            queue.drain_all().collect::<Vec<_>>(),
            ["five", "five again", "nine"]
        );
    }

    #[test]
    fn matches_a_sorted_model_for_any_push_order() {
        // A small exhaustive-ish check: every permutation-like order of pushes
        // releases exactly the waiters at or below each watermark, ascending.
        let orders: [&[u64]; 4] = [&[1, 2, 3, 4], &[4, 3, 2, 1], &[2, 4, 1, 3], &[3, 3, 1, 2]];
        for order in orders {
            let mut queue = SeqQueue::new();
            for (index, &seq) in order.iter().enumerate() {
                queue.push(seq, (seq, index));
            }
            let mut model: Vec<(u64, usize)> =
                order.iter().enumerate().map(|(i, &s)| (s, i)).collect();
            model.sort();
            let released: Vec<_> = queue.release_at_most(2, usize::MAX).collect();
            let expected: Vec<_> = model.iter().copied().filter(|&(s, _)| s <= 2).collect();
            assert_eq!(released, expected, "order {order:?}");
            assert_eq!(queue.len(), model.len() - expected.len());
        }
    }
}
