//! Timer wheel benchmark (issue 4): 1M pending alarms.
//!
//! Prints the set rate (target >= 1M/s) and the wheel's heap bytes per alarm
//! (target <= 64 B), then replace, cancel, `next_deadline` and firing costs
//! and the memory per alarm at other sizes (the worst case sits just past a
//! table growth). Run: `cargo bench -p stead-core --bench wheel`

use std::hint::black_box;
use std::time::Instant;

use stead_core::wheel::TimerWheel;

const ALARMS: u64 = 1_000_000;
const NOW: i64 = 1_780_000_000_000;

/// A deterministic spread of `n` deadlines over the next hour (xorshift).
fn deadlines(n: u64) -> Vec<i64> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            NOW + (state % 3_600_000) as i64
        })
        .collect()
}

fn filled(times: &[i64]) -> TimerWheel {
    let mut wheel = TimerWheel::new(NOW);
    for (token, &when) in times.iter().enumerate() {
        wheel.set(token as u64, when);
    }
    wheel
}

/// Seconds per call of `f` over `n` calls, in ns.
fn ns_per(n: u64, started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1e9 / n as f64
}

fn main() {
    let times = deadlines(ALARMS);
    // Best of three fills: the machine is shared.
    let mut set_secs = f64::MAX;
    let mut wheel = TimerWheel::new(NOW);
    for _ in 0..3 {
        let started = Instant::now();
        wheel = filled(&times);
        set_secs = set_secs.min(started.elapsed().as_secs_f64());
    }
    assert_eq!(wheel.len(), ALARMS as usize);
    let per_alarm = wheel.memory_bytes() as f64 / ALARMS as f64;
    let set_rate = ALARMS as f64 / set_secs / 1e6;
    println!(
        "[wheel] set {ALARMS} alarms: {set_rate:.2} M/s (target >= 1 M/s; ratio {set_rate:.2})"
    );
    println!(
        "[wheel] memory per pending alarm: {per_alarm:.1} B (target <= 64 B; ratio {:.2})",
        per_alarm / 64.0
    );

    let started = Instant::now();
    for token in (0..ALARMS).step_by(2) {
        wheel.set(token, times[token as usize] + 1_000);
    }
    let replace = ns_per(ALARMS / 2, started);
    let started = Instant::now();
    for _ in 0..ALARMS {
        black_box(wheel.next_deadline());
    }
    let next = ns_per(ALARMS, started);
    let started = Instant::now();
    for token in (1..ALARMS).step_by(4) {
        wheel.cancel(token);
    }
    let cancel = ns_per(ALARMS / 4, started);
    println!("[wheel] with 1M pending: replace {replace:.0} ns, cancel {cancel:.0} ns, next_deadline {next:.1} ns");

    let pending = wheel.len() as u64;
    let started = Instant::now();
    let (mut fired, mut clock) = (0u64, NOW);
    while let Some(deadline) = wheel.next_deadline() {
        clock = clock.max(deadline);
        fired += wheel.advance(clock).len() as u64;
    }
    assert_eq!(fired, pending);
    println!(
        "[wheel] fire all {pending} following next_deadline (each exactly on time): {:.0} ns per alarm",
        ns_per(pending, started)
    );

    for n in [10_000u64, 100_000, 600_000, 1_900_000] {
        let wheel = filled(&deadlines(n));
        println!(
            "[wheel] memory per pending alarm at {n}: {:.1} B (target <= 64 B)",
            wheel.memory_bytes() as f64 / n as f64
        );
    }
}
