//! Several threads share one mailbox, as several event-loop threads will:
//! each pushes events for a few shared objects and runs whatever the mailbox
//! hands it. Checked: no object ever runs two events at once, every event
//! runs exactly once, each thread's events for an object run in the order it
//! pushed them, and nothing is left behind.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use stead_core::mailbox::{Mailbox, MailboxState};

const THREADS: u64 = 4;
const OBJECTS: usize = 3;
const EVENTS: u64 = 20_000;

struct Shared {
    mailbox: Mailbox,
    holding: [AtomicBool; OBJECTS],
    /// Per object, the tokens in the order they ran.
    ran: [Mutex<Vec<u64>>; OBJECTS],
}

impl Shared {
    /// Run `token` and then every event the mailbox hands over for `object`.
    fn run_all(&self, object: usize, mut token: u64) {
        let id = [object as u8; 32];
        loop {
            let exclusive = self.holding[object]
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            assert!(exclusive, "two events of object {object} ran at once");
            self.ran[object].lock().unwrap().push(token);
            thread::yield_now(); // widen the window for an overlapping start
            self.holding[object].store(false, Ordering::Release);
            match self.mailbox.finish(&id) {
                Some(next) => token = next,
                None => return,
            }
        }
    }
}

#[test]
fn threads_share_a_mailbox_with_one_event_per_object_at_a_time() {
    let shared = Arc::new(Shared {
        mailbox: Mailbox::new(usize::MAX, 8).unwrap(),
        holding: Default::default(),
        ran: Default::default(),
    });
    let workers: Vec<_> = (0..THREADS)
        .map(|thread_no| {
            let shared = shared.clone();
            thread::spawn(move || {
                for n in 0..EVENTS {
                    let object = (n as usize * 7 + thread_no as usize) % OBJECTS;
                    let token = thread_no << 32 | n;
                    if shared.mailbox.push(&[object as u8; 32], token).unwrap() {
                        shared.run_all(object, token);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let mut total = 0;
    for (object, ran) in shared.ran.iter().enumerate() {
        let ran = ran.lock().unwrap();
        total += ran.len();
        for thread_no in 0..THREADS {
            let mine: Vec<u64> = ran
                .iter()
                .copied()
                .filter(|t| t >> 32 == thread_no)
                .collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "FIFO broken");
        }
        assert_eq!(
            shared.mailbox.state(&[object as u8; 32]),
            MailboxState::Idle
        );
    }
    assert_eq!(total as u64, THREADS * EVENTS);
    assert!(shared.mailbox.is_empty());
}
