//! Per-object mailbox: one running event per object, a bounded FIFO behind it.
//!
//! An object with an entry is running an event; queued events wait in the
//! entry's FIFO. An object without one is idle: the entry is removed when the
//! last event finishes, so memory does not grow with the objects ever seen.
//! `state` reports `Queued` for a running object with events waiting.
//!
//! Sharded by a hash of the object id, one mutex per shard, so several
//! event-loop threads can share one mailbox. The id is hashed once per call:
//! the same hash picks the shard and probes the shard's table.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;

use hashbrown::HashTable;
use parking_lot::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// What `state` reports for an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxState {
    /// No event runs.
    Idle,
    /// An event runs and others wait behind it.
    Queued,
    /// An event runs and none waits.
    Running,
}

impl MailboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxState::Idle => "idle",
            MailboxState::Queued => "queued",
            MailboxState::Running => "running",
        }
    }
}

/// A running object and the events queued behind its running one.
struct Slot {
    id: Box<[u8]>,
    queue: VecDeque<u64>,
}

type Shard = HashTable<Slot>;

/// A shard's lock on a cache line of its own, so threads working on
/// different shards do not invalidate each other's lines (false sharing).
#[repr(align(64))]
struct Padded(Mutex<Shard>);

/// The mailbox of every object of a runtime.
pub struct Mailbox {
    shards: Box<[Padded]>,
    /// Seeded per mailbox; object ids are HMAC outputs, not chosen bit patterns.
    hasher: RandomState,
    max_pending: usize,
}

impl Mailbox {
    /// A mailbox allowing `max_pending` queued events per object.
    pub fn new(max_pending: usize, shards: usize) -> Result<Self> {
        if max_pending == 0 || shards == 0 {
            return Err(Error::InvalidArgument(
                "max_pending and shards must be >= 1".into(),
            ));
        }
        Ok(Mailbox {
            shards: (0..shards)
                .map(|_| Padded(Mutex::new(Shard::new())))
                .collect(),
            hasher: RandomState::default(),
            max_pending,
        })
    }

    /// Offer an event: `true` if the object was idle and now runs it, `false`
    /// if queued; `Overloaded` if `max_pending` events already wait.
    pub fn push(&self, object: &[u8], token: u64) -> Result<bool> {
        let (hash, mut shard) = self.lock(object);
        if let Some(slot) = shard.find_mut(hash, |slot| *slot.id == *object) {
            if slot.queue.len() >= self.max_pending {
                return Err(Error::Overloaded {
                    pending: slot.queue.len(),
                });
            }
            slot.queue.push_back(token);
            return Ok(false);
        }
        let slot = Slot {
            id: object.into(),
            queue: VecDeque::new(),
        };
        shard.insert_unique(hash, slot, |slot| self.hasher.hash_one(&*slot.id));
        Ok(true)
    }

    /// End the running event: the next token (the object keeps running,
    /// now that event) or `None` (the object is idle and forgotten).
    pub fn finish(&self, object: &[u8]) -> Option<u64> {
        let (hash, mut shard) = self.lock(object);
        let Ok(mut entry) = shard.find_entry(hash, |slot| *slot.id == *object) else {
            return None;
        };
        let next = entry.get_mut().queue.pop_front();
        if next.is_none() {
            entry.remove();
        }
        next
    }

    /// Remove a still-queued token; `false` if it was not queued (the running
    /// event cannot be cancelled here).
    pub fn cancel(&self, object: &[u8], token: u64) -> bool {
        let (hash, mut shard) = self.lock(object);
        let Some(slot) = shard.find_mut(hash, |slot| *slot.id == *object) else {
            return false;
        };
        match slot.queue.iter().position(|&queued| queued == token) {
            Some(position) => slot.queue.remove(position).is_some(),
            None => false,
        }
    }

    /// Events queued behind the running one.
    pub fn depth(&self, object: &[u8]) -> usize {
        let (hash, shard) = self.lock(object);
        shard
            .find(hash, |slot| *slot.id == *object)
            .map_or(0, |slot| slot.queue.len())
    }

    /// No event runs for `object` (cheaper than `state`: one probe, no allocation).
    pub fn is_idle(&self, object: &[u8]) -> bool {
        let (hash, shard) = self.lock(object);
        shard.find(hash, |slot| *slot.id == *object).is_none()
    }

    pub fn state(&self, object: &[u8]) -> MailboxState {
        let (hash, shard) = self.lock(object);
        match shard.find(hash, |slot| *slot.id == *object) {
            None => MailboxState::Idle,
            Some(slot) if slot.queue.is_empty() => MailboxState::Running,
            Some(_) => MailboxState::Queued,
        }
    }

    /// Queued events over all objects (locks each shard in turn, so only a
    /// snapshot while other threads push).
    pub fn total_depth(&self) -> usize {
        let queued =
            |shard: &Padded| -> usize { shard.0.lock().iter().map(|slot| slot.queue.len()).sum() };
        self.shards.iter().map(queued).sum()
    }

    /// Objects that are running (with or without queued events).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.0.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id's hash and its locked shard. The shard comes from bits 26-31 of
    /// the hash (for up to 64 shards), above those the table's bucket index
    /// uses at sizes up to 2^26 and below the 7 tag bits it compares.
    fn lock(&self, object: &[u8]) -> (u64, MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(object);
        let index = ((hash & 0xffff_ffff) * self.shards.len() as u64) >> 32;
        (hash, self.shards[index as usize].0.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_push_runs_later_ones_queue_in_fifo_order() {
        let mailbox = Mailbox::new(10, 4).unwrap();
        assert!(mailbox.push(b"a", 1).unwrap());
        assert_eq!(mailbox.state(b"a"), MailboxState::Running);
        assert!(!mailbox.push(b"a", 2).unwrap());
        assert!(!mailbox.push(b"a", 3).unwrap());
        assert_eq!(mailbox.state(b"a"), MailboxState::Queued);
        assert!(mailbox.push(b"b", 4).unwrap());
        assert_eq!(mailbox.depth(b"a"), 2);
        assert_eq!(mailbox.total_depth(), 2);
        assert_eq!(mailbox.len(), 2);
        assert_eq!(mailbox.finish(b"a"), Some(2));
        assert_eq!(mailbox.finish(b"a"), Some(3));
        assert_eq!(mailbox.state(b"a"), MailboxState::Running);
        assert_eq!(mailbox.finish(b"a"), None);
        assert_eq!(mailbox.state(b"a"), MailboxState::Idle);
        assert_eq!(mailbox.len(), 1);
        assert_eq!(mailbox.finish(b"a"), None);
    }

    #[test]
    fn push_beyond_the_bound_is_overloaded_and_changes_nothing() {
        let mailbox = Mailbox::new(2, 1).unwrap();
        assert!(mailbox.push(b"a", 1).unwrap());
        assert!(!mailbox.push(b"a", 2).unwrap());
        assert!(!mailbox.push(b"a", 3).unwrap());
        assert!(matches!(
            mailbox.push(b"a", 4),
            Err(Error::Overloaded { pending: 2 })
        ));
        assert_eq!(mailbox.depth(b"a"), 2);
        assert_eq!(mailbox.finish(b"a"), Some(2));
        assert!(!mailbox.push(b"a", 5).unwrap());
        assert_eq!(mailbox.finish(b"a"), Some(3));
        assert_eq!(mailbox.finish(b"a"), Some(5));
    }

    #[test]
    fn cancel_removes_only_queued_tokens() {
        let mailbox = Mailbox::new(10, 1).unwrap();
        mailbox.push(b"a", 1).unwrap();
        mailbox.push(b"a", 2).unwrap();
        mailbox.push(b"a", 3).unwrap();
        assert!(mailbox.cancel(b"a", 2));
        assert!(!mailbox.cancel(b"a", 2));
        assert!(!mailbox.cancel(b"a", 1)); // running, not queued
        assert!(!mailbox.cancel(b"b", 1)); // idle object
        assert_eq!(mailbox.finish(b"a"), Some(3));
        assert_eq!(mailbox.finish(b"a"), None);
    }

    #[test]
    fn bad_bounds_are_refused() {
        assert!(matches!(Mailbox::new(0, 1), Err(Error::InvalidArgument(_))));
        assert!(matches!(Mailbox::new(1, 0), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn many_objects_leave_no_entries_behind() {
        let mailbox = Mailbox::new(4, 64).unwrap();
        for n in 0..10_000u64 {
            let id = n.to_le_bytes();
            assert!(mailbox.push(&id, n).unwrap());
            assert!(!mailbox.push(&id, n + 1).unwrap());
        }
        assert_eq!((mailbox.len(), mailbox.total_depth()), (10_000, 10_000));
        for n in 0..10_000u64 {
            let id = n.to_le_bytes();
            assert_eq!(mailbox.finish(&id), Some(n + 1));
            assert_eq!(mailbox.finish(&id), None);
        }
        assert!(mailbox.is_empty());
    }
}
