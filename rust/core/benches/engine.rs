//! Plain benchmarks of the engine without Python (`cargo bench -p stead-core --bench engine`).
//!
//! Prints: commit cost (no waiting), single-committer commit+wait p50 next to
//! raw write+fdatasync p50 on the same disk, and durable commits/s with
//! several committer threads (group commit).

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stead_core::engine::{Durability, Engine, Op, Options};

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn raw_fdatasync_p50(dir: &std::path::Path, n: usize) -> Duration {
    let path = dir.join("probe");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let samples = (0..n)
        .map(|_| {
            let started = Instant::now();
            file.write_all(&[7u8; 150]).unwrap();
            file.sync_data().unwrap();
            started.elapsed()
        })
        .collect();
    std::fs::remove_file(path).unwrap();
    p50(samples)
}

fn open(dir: &std::path::Path, durability: Durability) -> Engine {
    Engine::open(
        Some(dir),
        Options {
            durability,
            ..Options::default()
        },
    )
    .unwrap()
}

fn commit_cost() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Os);
    let n = 500_000u64;
    let value = [b'v'; 100];
    let started = Instant::now();
    for i in 0..n {
        let object = format!("object-{:06}", i % 1000);
        let key = format!("key-{i}");
        engine
            .commit(object.as_bytes(), &[Op::Put(key.as_bytes(), &value)])
            .unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "commit (os mode, no wait): {:.2} us/commit",
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
}

fn single_committer() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), Durability::Fsync);
    let mut engine_samples = Vec::new();
    let mut raw = Vec::new();
    for _round in 0..5 {
        for i in 0..400 {
            let started = Instant::now();
            let seq = engine
                .commit(
                    b"object",
                    &[Op::Put(format!("k{i}").as_bytes(), &[1u8; 100])],
                )
                .unwrap();
            engine.wait_durable(seq, None).unwrap();
            engine_samples.push(started.elapsed());
        }
        raw.push(raw_fdatasync_p50(dir.path(), 200));
    }
    let engine_p50 = p50(engine_samples);
    let raw_p50 = p50(raw);
    println!(
        "single committer: commit+wait p50 {:.0} us vs raw write+fdatasync p50 {:.0} us -> ratio {:.2}",
        engine_p50.as_secs_f64() * 1e6,
        raw_p50.as_secs_f64() * 1e6,
        engine_p50.as_secs_f64() / raw_p50.as_secs_f64()
    );
}

fn concurrent_committers(threads: usize) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(open(dir.path(), Durability::Fsync));
    let per_thread = 4000;
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let object = format!("object-{t}");
                    let key = format!("key-{i}");
                    let seq = engine
                        .commit(object.as_bytes(), &[Op::Put(key.as_bytes(), &[2u8; 100])])
                        .unwrap();
                    engine.wait_durable(seq, None).unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let syncs = engine.stats().syncs;
    let total = (threads * per_thread) as f64;
    println!(
        "{threads} committer threads: {:.0} durable commits/s, {:.1} commits per sync",
        total / elapsed,
        total / syncs.max(1) as f64
    );
}

fn main() {
    commit_cost();
    single_committer();
    for threads in [4, 64] {
        concurrent_committers(threads);
    }
}
