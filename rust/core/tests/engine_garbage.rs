//! Garbage accounting: a superseded put, a superseded alarm and every delete
//! count as garbage with their share of the record (header, seq, object id,
//! op count), so the compaction trigger fires for small values and
//! `live_bytes` is the size of the live records; recovery (scan and hint)
//! accounts the same way as live commits.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use stead_core::engine::{Durability, Engine, Op, Options};

const SEGMENT: u64 = 4096;
/// Runtime object ids are 32 bytes.
const OBJECT: [u8; 32] = [7; 32];

fn options(compaction: bool) -> Options {
    Options {
        durability: Durability::Os,
        segment_bytes: SEGMENT,
        compaction,
        ..Options::default()
    }
}

/// Bytes of a one-put record: header 12, seq 8, id length 4, id, op count 4,
/// put op 9 + key + value.
fn one_put_record(object_id: &[u8], key: &[u8], value: &[u8]) -> u64 {
    (12 + 8 + 4 + object_id.len() + 4 + 9 + key.len() + value.len()) as u64
}

fn hints(dir: &Path) -> Vec<std::path::PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hint"))
        .collect()
}

#[test]
fn one_small_key_overwritten_is_compacted_after_about_two_segments() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Some(dir.path()), options(true)).unwrap();
    // ~52 counter updates fill a 4 KiB segment; write three segments' worth.
    let record = one_put_record(&OBJECT, b"count", b"100");
    let updates = 3 * SEGMENT / record;
    for i in 0..updates {
        let value = format!("{:03}", i % 1000);
        let seq = engine
            .commit(&OBJECT, &[Op::Put(b"count", value.as_bytes())])
            .unwrap();
        engine.wait_durable(seq, None).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.stats().compactions == 0 {
        assert!(
            Instant::now() < deadline,
            "no compaction after {updates} overwrites of one key ({} segments): the garbage \
             rule did not fire",
            engine.stats().segments
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        engine.get(&OBJECT, b"count").unwrap().unwrap(),
        format!("{:03}", (updates - 1) % 1000).into_bytes()
    );
}

#[test]
fn live_bytes_of_an_overwritten_key_is_its_one_record_after_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Some(dir.path()), options(false)).unwrap();
    let mut seq = 0;
    for i in 0..500u32 {
        let value = format!("{:03}", i % 1000);
        seq = engine
            .commit(&OBJECT, &[Op::Put(b"count", value.as_bytes())])
            .unwrap();
    }
    engine.wait_durable(seq, None).unwrap();
    let live = one_put_record(&OBJECT, b"count", b"499");
    let stats = engine.stats();
    assert!(stats.segments >= 9, "{} segments", stats.segments);
    assert_eq!(stats.live_bytes, live);
    engine.close().unwrap();

    let engine = Engine::open(Some(dir.path()), options(false)).unwrap();
    assert_eq!(engine.stats().live_bytes, live, "after a scan");
    engine.compact().unwrap();
    assert_eq!(engine.stats().live_bytes, live, "after compaction");
    engine.close().unwrap();
    assert_eq!(hints(dir.path()).len(), 1);

    let engine = Engine::open(Some(dir.path()), options(false)).unwrap();
    assert_eq!(engine.stats().live_bytes, live, "from the hint file");
}

/// Puts over several objects (overwrites, multi-op batches), deletes, alarms
/// set and superseded, delete-all; a compaction half way.
fn mixed_workload(engine: &Engine) {
    let ids: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 32]).collect();
    for round in 0..120u32 {
        let id = &ids[round as usize % ids.len()];
        let key = format!("k{}", round % 7);
        let value = vec![round as u8; (round % 13) as usize];
        let mut ops = vec![Op::Put(key.as_bytes(), &value), Op::Put(b"n", b"x")];
        if round % 5 == 0 {
            ops.push(Op::Delete(b"k3"));
        }
        if round % 4 == 0 {
            ops.push(Op::SetAlarm(i64::from(round)));
        }
        if round % 17 == 0 {
            ops.push(Op::DeleteAlarm);
        }
        engine.commit(id, &ops).unwrap();
        if round % 23 == 0 {
            engine.commit(id, &[Op::DeleteAll]).unwrap();
        }
        if round == 60 {
            engine.compact().unwrap();
        }
    }
    engine.commit(&ids[0], &[]).unwrap();
}

#[test]
fn recovery_accounts_garbage_as_live_commits_do() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(Some(dir.path()), options(false)).unwrap();
    mixed_workload(&engine);
    let live = engine.stats().live_bytes;
    engine.close().unwrap();
    assert_eq!(hints(dir.path()).len(), 1);

    let engine = Engine::open(Some(dir.path()), options(false)).unwrap();
    assert_eq!(engine.stats().live_bytes, live, "hint file and replay");
    engine.close().unwrap();
    for hint in hints(dir.path()) {
        fs::remove_file(hint).unwrap();
    }
    let engine = Engine::open(Some(dir.path()), options(false)).unwrap();
    assert_eq!(engine.stats().live_bytes, live, "scan and replay");

    // Deleting everything leaves no live byte at all.
    for id in engine.objects(None, None, None) {
        engine.commit(&id, &[Op::DeleteAll]).unwrap();
    }
    for (id, _) in engine.alarms() {
        engine.commit(&id, &[Op::DeleteAll]).unwrap();
    }
    assert_eq!(engine.stats().keys, 0);
    assert_eq!(engine.stats().live_bytes, 0);
    engine.compact().unwrap();
    assert_eq!(engine.stats().live_bytes, 0, "after compaction");
    engine.close().unwrap();
    let engine = Engine::open(Some(dir.path()), options(false)).unwrap();
    assert_eq!(engine.stats().live_bytes, 0, "after reopen");
}
