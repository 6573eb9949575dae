//! Timer wheel benchmark (issue 4): 1M pending alarms.
//!
//! Prints the set rate (target >= 1M/s), the cancel and advance rates, and the
//! wheel's heap bytes per alarm (target <= 64 B). Run:
//! `cargo bench -p stead-core --bench wheel`

use std::time::Instant;

use stead_core::wheel::TimerWheel;

const ALARMS: u64 = 1_000_000;

/// A deterministic spread of deadlines over the next hour (xorshift).
fn deadlines(now: i64) -> Vec<i64> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..ALARMS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            now + (state % 3_600_000) as i64
        })
        .collect()
}

fn main() {
    let now = 1_780_000_000_000_i64;
    let times = deadlines(now);
    let mut wheel = TimerWheel::new(now);

    let started = Instant::now();
    for (token, &when) in times.iter().enumerate() {
        wheel.set(token as u64, when);
    }
    let set_secs = started.elapsed().as_secs_f64();
    assert_eq!(wheel.len(), ALARMS as usize);
    let per_alarm = wheel.memory_bytes() as f64 / ALARMS as f64;

    let started = Instant::now();
    for token in (0..ALARMS).step_by(2) {
        wheel.set(token, times[token as usize] + 1_000);
    }
    let replace_secs = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut fired = 0usize;
    let mut clock = now;
    while !wheel.is_empty() {
        clock += 1_000;
        fired += wheel.advance(clock).len();
    }
    let advance_secs = started.elapsed().as_secs_f64();
    assert_eq!(fired, ALARMS as usize);

    let set_rate = ALARMS as f64 / set_secs;
    println!(
        "[wheel] set {ALARMS} alarms: {:.2} M/s (target >= 1 M/s; ratio {:.2})",
        set_rate / 1e6,
        set_rate / 1e6
    );
    println!(
        "[wheel] memory per pending alarm: {per_alarm:.1} B (target <= 64 B; ratio {:.2})",
        per_alarm / 64.0
    );
    println!(
        "[wheel] replace {} alarms: {:.2} M/s; fire all (advance in 1 s steps): {:.2} M/s",
        ALARMS / 2,
        (ALARMS / 2) as f64 / replace_secs / 1e6,
        ALARMS as f64 / advance_secs / 1e6
    );
}
