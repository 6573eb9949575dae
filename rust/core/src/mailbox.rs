//! Per-object mailbox: one running event per object, a bounded FIFO behind it.
//!
//! The state of an object is `idle` (no entry), `running` (an event holds the
//! object, nothing queued) or `running` with a queue. `queued` is reported for
//! an object whose queue is non-empty while nothing runs, which only happens
//! between a `finish` handing over and the next event starting in callers that
//! split the two. Entries are removed when an object goes idle, so memory does
//! not grow with the number of objects ever seen.
//!
//! Sharded by a hash of the object id with one mutex per shard, so several
//! event-loop threads can share one mailbox.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// What `state` reports for an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxState {
    Idle,
    Queued,
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

#[derive(Default)]
struct Slot {
    running: bool,
    queue: VecDeque<u64>,
}

/// The mailbox of every object of a runtime.
pub struct Mailbox {
    shards: Vec<Mutex<HashMap<Box<[u8]>, Slot>>>,
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
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            max_pending,
        })
    }

    fn shard(&self, object: &[u8]) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, Slot>> {
        let mut hasher = DefaultHasher::new();
        object.hash(&mut hasher);
        let index = (hasher.finish() as usize) % self.shards.len();
        // A poisoned shard only means a panic elsewhere mid-update of plain data.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Offer an event: `true` if the object was idle and now runs it, `false` if queued.
    pub fn push(&self, object: &[u8], token: u64) -> Result<bool> {
        let mut shard = self.shard(object);
        if let Some(slot) = shard.get_mut(object) {
            if !slot.running {
                slot.running = true;
                return Ok(true);
            }
            if slot.queue.len() >= self.max_pending {
                return Err(Error::Overloaded {
                    pending: slot.queue.len(),
                });
            }
            slot.queue.push_back(token);
            return Ok(false);
        }
        shard.insert(
            object.into(),
            Slot {
                running: true,
                queue: VecDeque::new(),
            },
        );
        Ok(true)
    }

    /// End the running event: the next token (the object keeps running) or `None` (idle).
    pub fn finish(&self, object: &[u8]) -> Option<u64> {
        let mut shard = self.shard(object);
        let slot = shard.get_mut(object)?;
        if let Some(next) = slot.queue.pop_front() {
            slot.running = true;
            return Some(next);
        }
        shard.remove(object);
        None
    }

    /// Remove a still-queued token; `false` if it was not queued.
    pub fn cancel(&self, object: &[u8], token: u64) -> bool {
        let mut shard = self.shard(object);
        let Some(slot) = shard.get_mut(object) else {
            return false;
        };
        let Some(position) = slot.queue.iter().position(|&queued| queued == token) else {
            return false;
        };
        slot.queue.remove(position);
        if !slot.running && slot.queue.is_empty() {
            shard.remove(object);
        }
        true
    }

    /// Events queued behind the running one.
    pub fn depth(&self, object: &[u8]) -> usize {
        self.shard(object)
            .get(object)
            .map_or(0, |slot| slot.queue.len())
    }

    pub fn state(&self, object: &[u8]) -> MailboxState {
        match self.shard(object).get(object) {
            None => MailboxState::Idle,
            Some(slot) if slot.running => MailboxState::Running,
            Some(_) => MailboxState::Queued,
        }
    }

    /// Queued events over all objects.
    pub fn total_depth(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.lock().unwrap_or_else(|poison| poison.into_inner());
                shard.values().map(|slot| slot.queue.len()).sum::<usize>()
            })
            .sum()
    }

    /// Objects that are running or have queued events.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_push_runs_later_ones_queue_in_fifo_order() {
        let mailbox = Mailbox::new(10, 4).unwrap();
        assert!(mailbox.push(b"a", 1).unwrap());
        assert!(!mailbox.push(b"a", 2).unwrap());
        assert!(!mailbox.push(b"a", 3).unwrap());
        assert!(mailbox.push(b"b", 4).unwrap());
        assert_eq!(mailbox.depth(b"a"), 2);
        assert_eq!(mailbox.total_depth(), 2);
        assert_eq!(mailbox.finish(b"a"), Some(2));
        assert_eq!(mailbox.finish(b"a"), Some(3));
        assert_eq!(mailbox.state(b"a"), MailboxState::Running);
        assert_eq!(mailbox.finish(b"a"), None);
        assert_eq!(mailbox.state(b"a"), MailboxState::Idle);
        assert_eq!(mailbox.len(), 1);
    }

    #[test]
    fn push_beyond_the_bound_is_overloaded() {
        let mailbox = Mailbox::new(2, 1).unwrap();
        assert!(mailbox.push(b"a", 1).unwrap());
        assert!(!mailbox.push(b"a", 2).unwrap());
        assert!(!mailbox.push(b"a", 3).unwrap());
        assert!(matches!(
            mailbox.push(b"a", 4),
            Err(Error::Overloaded { pending: 2 })
        ));
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
        assert_eq!(mailbox.finish(b"a"), Some(3));
        assert_eq!(mailbox.finish(b"a"), None);
    }

    #[test]
    fn threads_never_run_two_events_of_one_object_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let mailbox = Arc::new(Mailbox::new(1_000_000, 8).unwrap());
        let running = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..4)
            .map(|thread| {
                let (mailbox, running) = (mailbox.clone(), running.clone());
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        if mailbox.push(b"x", thread * 100_000 + i).unwrap() {
                            // We hold the object: run it and everything handed to us.
                            loop {
                                assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0);
                                running.fetch_sub(1, Ordering::SeqCst);
                                if mailbox.finish(b"x").is_none() {
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(mailbox.state(b"x"), MailboxState::Idle);
    }
}
