//! Mailbox benchmark: the cost of one event's push + finish in Rust, for an
//! idle object (entry created and removed) and for a busy one (queued and
//! handed over), on one thread and on two threads sharing the mailbox.
//! Run: `cargo bench -p stead-core --bench mailbox`

use std::sync::Arc;
use std::time::Instant;

use stead_core::mailbox::Mailbox;

const EVENTS: u64 = 2_000_000;
const OBJECTS: u64 = 1_000;

fn ids() -> Vec<[u8; 32]> {
    (0..OBJECTS)
        .map(|n| {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            id
        })
        .collect()
}

/// ns per event: each event is pushed to an idle object and finished.
fn idle_round_trips(mailbox: &Mailbox, ids: &[[u8; 32]], events: u64) -> f64 {
    let started = Instant::now();
    for n in 0..events {
        let id = &ids[(n % OBJECTS) as usize];
        assert!(mailbox.push(id, n).unwrap());
        assert_eq!(mailbox.finish(id), None);
    }
    started.elapsed().as_secs_f64() * 1e9 / events as f64
}

/// ns per event: 8 events queue behind a running one, then are handed over.
fn queued_round_trips(mailbox: &Mailbox, ids: &[[u8; 32]]) -> f64 {
    let started = Instant::now();
    let mut events = 0u64;
    while events < EVENTS {
        let id = &ids[(events / 9 % OBJECTS) as usize];
        for token in 0..9 {
            mailbox.push(id, token).unwrap();
        }
        while mailbox.finish(id).is_some() {}
        events += 9;
    }
    started.elapsed().as_secs_f64() * 1e9 / events as f64
}

fn main() {
    let ids = ids();
    let mailbox = Mailbox::new(1_000, 64).unwrap();
    let idle = idle_round_trips(&mailbox, &ids, EVENTS);
    let queued = queued_round_trips(&mailbox, &ids);
    println!("[mailbox] push + finish, idle object: {idle:.0} ns per event; queued behind a running one: {queued:.0} ns per event");

    let shared = Arc::new(Mailbox::new(1_000, 64).unwrap());
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|half| {
            let (shared, ids) = (shared.clone(), ids.clone());
            std::thread::spawn(move || {
                let mine: Vec<[u8; 32]> = ids.into_iter().skip(half).step_by(2).collect();
                let mut n = 0u64;
                while n < EVENTS / 2 {
                    let id = &mine[(n % mine.len() as u64) as usize];
                    if shared.push(id, n).unwrap() {
                        while shared.finish(id).is_some() {}
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let rate = EVENTS as f64 / started.elapsed().as_secs_f64() / 1e6;
    println!(
        "[mailbox] two threads sharing one mailbox: {rate:.1} M events/s (one thread: {:.1} M/s; ratio {:.2})",
        1e3 / idle,
        rate / (1e3 / idle)
    );
}
