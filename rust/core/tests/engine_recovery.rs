//! Recovery on real files: torn tails are truncated, damage before valid
//! records is refused with `Corruption` naming file and offset, and the
//! states an interrupted compaction can leave behind all recover.

use std::fs;
use std::path::{Path, PathBuf};

use stead_core::engine::{Durability, Engine, ListOptions, Op, Options};
use stead_core::Error;

fn options() -> Options {
    Options {
        durability: Durability::Fsync,
        ..Options::default()
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    out.sort();
    out
}

/// Where a segment's records end: the flusher reserves space ahead of its
/// writes, and that reserved tail reads as zeros. (Every record here ends in
/// a non-zero value byte.)
fn data_end(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap();
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |at| at as u64 + 1)
}

/// Commit `n` one-put batches to object `o` and close; returns the segment's length after each.
fn write_batches(dir: &Path, n: usize) -> Vec<u64> {
    let engine = Engine::open(Some(dir), options()).unwrap();
    let mut ends = Vec::new();
    for i in 0..n {
        let key = format!("k{i:03}");
        let seq = engine
            .commit(
                b"o",
                &[
                    Op::Put(key.as_bytes(), b"value"),
                    Op::Put(b"batch", key.as_bytes()),
                ],
            )
            .unwrap();
        engine.wait_durable(seq, None).unwrap();
        ends.push(data_end(&segments(dir)[0]));
    }
    engine.close().unwrap();
    ends
}

/// `puts` 100-byte values written into 4 KiB segments without compaction, the
/// engine closed; the options used, to reopen with.
fn puts_in_small_segments(dir: &Path, puts: u32) -> Options {
    let opts = Options {
        segment_bytes: 4096,
        compaction: false,
        ..options()
    };
    let engine = Engine::open(Some(dir), opts.clone()).unwrap();
    for i in 0..puts {
        engine
            .commit(b"o", &[Op::Put(&i.to_le_bytes(), &[7u8; 100])])
            .unwrap();
    }
    engine.close().unwrap();
    opts
}

fn keys(engine: &Engine) -> Vec<Vec<u8>> {
    engine
        .list(b"o", &ListOptions::default())
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn torn_tail_is_truncated_at_every_cut_point() {
    let template = tempfile::tempdir().unwrap();
    let ends = write_batches(template.path(), 3);
    let original = fs::read(&segments(template.path())[0]).unwrap();
    for cut in ends[1]..ends[2] {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir
            .path()
            .join(segments(template.path())[0].file_name().unwrap());
        fs::write(&seg, &original[..cut as usize]).unwrap();
        let engine = Engine::open(Some(dir.path()), options()).unwrap();
        assert_eq!(engine.last_seq(), 2, "cut at {cut}");
        assert_eq!(keys(&engine).len(), 3, "two batches: k000, k001, batch");
        assert_eq!(engine.get(b"o", b"batch").unwrap().unwrap(), b"k001");
        // The next commit lands where the torn record was.
        engine.commit(b"o", &[Op::Put(b"after", b"x")]).unwrap();
        engine.close().unwrap();
        // o + put(after, x): 12 header + 8 seq + 4+1 id + 4 count + 9+5+1 op.
        assert_eq!(data_end(&seg), ends[1] + 44);
        let reopened = Engine::open(Some(dir.path()), options()).unwrap();
        assert_eq!(reopened.get(b"o", b"after").unwrap().unwrap(), b"x");
    }
}

/// Three batches whose last record fails its checksum; the record ends and the segment.
fn with_a_bad_last_checksum(dir: &Path) -> (Vec<u64>, PathBuf) {
    let ends = write_batches(dir, 3);
    let seg = segments(dir).swap_remove(0);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[ends[2] as usize - 1] ^= 0xFF;
    fs::write(&seg, &bytes).unwrap();
    (ends, seg)
}

#[test]
fn bad_checksum_in_last_record_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (ends, seg) = with_a_bad_last_checksum(dir.path());
    let engine = Engine::open(Some(dir.path()), options()).unwrap();
    assert_eq!(engine.last_seq(), 2);
    assert_eq!(data_end(&seg), ends[1]);
}

#[test]
fn a_read_only_open_reads_past_a_torn_tail_and_changes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    with_a_bad_last_checksum(dir.path());
    // Leftovers an interrupted compaction may leave: also left alone.
    fs::write(dir.path().join("seg-9.log.tmp"), b"partial").unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    let opts = Options {
        read_only: true,
        ..options()
    };
    let engine = Engine::open(Some(dir.path()), opts).unwrap();
    assert_eq!(engine.last_seq(), 2);
    assert_eq!(engine.get(b"o", b"batch").unwrap().unwrap(), b"k001");
    assert!(matches!(
        engine.commit(b"o", &[Op::Put(b"x", b"y")]),
        Err(Error::Closed(_))
    ));
    assert!(matches!(engine.compact(), Err(Error::Closed(_))));
    engine.close().unwrap();
    for (path, contents) in before {
        assert_eq!(fs::read(&path).unwrap(), contents, "{}", path.display());
    }
    // A read-only open never creates the data dir.
    let missing = dir.path().join("missing");
    assert!(Engine::open(
        Some(&missing),
        Options {
            read_only: true,
            ..options()
        }
    )
    .is_err());
    assert!(!missing.exists());
}

#[test]
fn damage_before_valid_records_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_batches(dir.path(), 5);
    let seg = segments(dir.path())[0].clone();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[ends[1] as usize + 20] ^= 0x01; // inside the third record
    fs::write(&seg, &bytes).unwrap();
    match Engine::open(Some(dir.path()), options()) {
        Err(Error::Corruption { file, offset, .. }) => {
            assert_eq!(file, seg);
            assert_eq!(offset, ends[1]);
        }
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("opened a corrupt log"),
    }
    assert_eq!(fs::read(&seg).unwrap(), bytes, "nothing was truncated");
}

#[test]
fn damaged_length_field_before_valid_records_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_batches(dir.path(), 4);
    let seg = segments(dir.path())[0].clone();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[ends[0] as usize + 6] = 0x7F; // length now runs past the end of the file
    fs::write(&seg, &bytes).unwrap();
    assert!(
        matches!(Engine::open(Some(dir.path()), options()), Err(Error::Corruption { offset, .. }) if offset == ends[0])
    );
}

#[test]
fn corruption_in_a_sealed_segment_is_refused_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let opts = puts_in_small_segments(dir.path(), 100);
    let segs = segments(dir.path());
    assert!(segs.len() > 2);
    let mut bytes = fs::read(&segs[0]).unwrap();
    let last = data_end(&segs[0]) as usize - 1; // the last record's last byte
    bytes[last] ^= 0xFF;
    fs::write(&segs[0], &bytes).unwrap();
    assert!(
        matches!(Engine::open(Some(dir.path()), opts), Err(Error::Corruption { file, .. }) if file == segs[0])
    );
}

#[test]
fn interrupted_compaction_states_recover() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 4096,
        compaction: false,
        ..options()
    };
    let engine = Engine::open(Some(dir.path()), opts.clone()).unwrap();
    for i in 0..200u32 {
        engine
            .commit(b"o", &[Op::Put(&(i % 50).to_le_bytes(), &i.to_le_bytes())])
            .unwrap();
    }
    let expected = engine.list(b"o", &ListOptions::default()).unwrap();
    engine.close().unwrap();
    let before: Vec<PathBuf> = segments(dir.path());

    // 1. A leftover temporary output is ignored and removed.
    fs::write(dir.path().join("seg-0000000099.compact"), b"partial").unwrap();
    fs::write(dir.path().join("seg-0000000099.hint.tmp"), b"partial").unwrap();
    let engine = Engine::open(Some(dir.path()), opts.clone()).unwrap();
    assert_eq!(
        engine.list(b"o", &ListOptions::default()).unwrap(),
        expected
    );
    assert!(!dir.path().join("seg-0000000099.compact").exists());

    // 2. Compacted segment renamed in, old segments not yet deleted, hint stale.
    engine.compact().unwrap();
    engine.close().unwrap();
    let compacted = segments(dir.path());
    assert_eq!(compacted.len(), 1);
    let hint = compacted[0].with_extension("hint");
    fs::write(&hint, b"stale hint").unwrap();
    for old in &before[..before.len() - 1] {
        if !compacted.contains(old) {
            fs::write(old, b"STEADSEG garbage that must never be read").unwrap();
        }
    }
    let engine = Engine::open(Some(dir.path()), opts).unwrap();
    assert_eq!(
        engine.list(b"o", &ListOptions::default()).unwrap(),
        expected
    );
    assert_eq!(
        segments(dir.path()),
        compacted,
        "older segments were removed"
    );
}

type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Full contents of every object, for comparisons.
fn dump(engine: &Engine) -> Vec<(Vec<u8>, Entries)> {
    engine
        .objects(None, None, None)
        .into_iter()
        .map(|id| {
            let entries = engine.list(&id, &ListOptions::default()).unwrap();
            (id, entries)
        })
        .collect()
}

#[test]
fn compaction_while_committing_keeps_every_write() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 16 * 1024,
        durability: Durability::Os,
        ..options()
    };
    let engine = Arc::new(Engine::open(Some(dir.path()), opts.clone()).unwrap());
    // Many objects so that snapshot and swap take several lock rounds.
    for o in 0..300u32 {
        let keys: Vec<Vec<u8>> = (0..30u32).map(|k| k.to_be_bytes().to_vec()).collect();
        let ops: Vec<Op<'_>> = keys.iter().map(|k| Op::Put(k, b"initial")).collect();
        engine.commit(&o.to_be_bytes(), &ops).unwrap();
    }
    let compactions = Arc::new(AtomicUsize::new(0));
    let writer = {
        let engine = engine.clone();
        let compactions = compactions.clone();
        std::thread::spawn(move || {
            let mut model: BTreeMap<(u32, u32), Option<Vec<u8>>> = BTreeMap::new();
            // Keep writing until several compactions ran concurrently.
            let mut i = 0u32;
            while i < 20_000 || compactions.load(Ordering::SeqCst) < 3 {
                i += 1;
                let (o, k) = (i.wrapping_mul(7919) % 300, i.wrapping_mul(104_729) % 30);
                let key = k.to_be_bytes();
                let seq = if i % 5 == 0 {
                    model.insert((o, k), None);
                    engine
                        .commit(&o.to_be_bytes(), &[Op::Delete(&key)])
                        .unwrap()
                } else {
                    let value = format!("v{i}").into_bytes();
                    let seq = engine
                        .commit(&o.to_be_bytes(), &[Op::Put(&key, &value)])
                        .unwrap();
                    model.insert((o, k), Some(value));
                    seq
                };
                // Now and then wait for the flusher, as callers of the runtime
                // do: a writer that never waits runs ahead of it without bound
                // (commit() does not block), and every compaction then waits
                // for it to catch up while thousands of segments pile up.
                if i % 256 == 0 {
                    engine.wait_durable(seq, None).unwrap();
                }
            }
            model
        })
    };
    while !writer.is_finished() {
        engine.compact().unwrap();
        compactions.fetch_add(1, Ordering::SeqCst);
    }
    let model = writer.join().unwrap();
    let check = |engine: &Engine| {
        for o in 0..300u32 {
            for k in 0..30u32 {
                let expected = match model.get(&(o, k)) {
                    Some(value) => value.clone(),
                    None => Some(b"initial".to_vec()),
                };
                let got = engine.get(&o.to_be_bytes(), &k.to_be_bytes()).unwrap();
                assert_eq!(got, expected, "object {o} key {k}");
            }
        }
    };
    check(&engine);
    let before = dump(&engine);
    engine.compact().unwrap();
    assert_eq!(dump(&engine), before);
    engine.close().unwrap();
    drop(engine);
    let reopened = Engine::open(Some(dir.path()), opts).unwrap();
    check(&reopened);
    assert_eq!(dump(&reopened), before);
}

#[test]
fn reserved_zero_tail_is_a_clean_end_but_a_torn_record_before_it_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_batches(dir.path(), 3);
    let seg = segments(dir.path())[0].clone();
    assert!(
        fs::metadata(&seg).unwrap().len() > ends[2],
        "space is reserved ahead"
    );
    let engine = Engine::open(Some(dir.path()), options()).unwrap();
    assert_eq!(engine.last_seq(), 3);
    engine.close().unwrap();
    // A record cut short, followed by the reserved zeros: a torn tail.
    let mut bytes = fs::read(&seg).unwrap();
    for b in &mut bytes[ends[1] as usize + 30..] {
        *b = 0;
    }
    fs::write(&seg, &bytes).unwrap();
    let engine = Engine::open(Some(dir.path()), options()).unwrap();
    assert_eq!(engine.last_seq(), 2);
    assert_eq!(fs::metadata(&seg).unwrap().len(), ends[1]);
}

#[test]
fn append_only_log_is_compacted_to_bound_startup_replay() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 4096,
        durability: Durability::Os,
        ..options()
    };
    let engine = Engine::open(Some(dir.path()), opts.clone()).unwrap();
    for i in 0..2000u32 {
        // Distinct keys only: no garbage, so only the replay bound can trigger.
        engine
            .commit(b"o", &[Op::Put(&i.to_be_bytes(), &[9u8; 100])])
            .unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while engine.stats().compactions == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no background compaction"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    engine.close().unwrap();
    let segments_left = segments(dir.path()).len();
    assert!(segments_left < 80, "{segments_left} segments, ~80 written");
    let reopened = Engine::open(Some(dir.path()), opts).unwrap();
    assert_eq!(reopened.stats().keys, 2000);
    assert_eq!(
        reopened.get(b"o", &1999u32.to_be_bytes()).unwrap().unwrap(),
        vec![9u8; 100]
    );
}

/// What a power loss during a segment roll could leave (before the flusher
/// synced the segment being left first): the last record of segment N only
/// partly on disk, segment N+1 created with its header and no record.
#[test]
fn a_torn_tail_followed_only_by_an_empty_segment_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 4096,
        compaction: false,
        ..options()
    };
    let engine = Engine::open(Some(dir.path()), opts.clone()).unwrap();
    let mut n = 0u32;
    while segments(dir.path()).len() < 2 {
        let key = format!("k{n:03}");
        let seq = engine
            .commit(b"o", &[Op::Put(key.as_bytes(), &[b'v'; 100])])
            .unwrap();
        engine.wait_durable(seq, None).unwrap();
        n += 1;
    }
    engine.close().unwrap();
    let segs = segments(dir.path());
    let (prev, last) = (&segs[0], &segs[1]);
    let end = data_end(prev);
    fs::OpenOptions::new()
        .write(true)
        .open(prev)
        .unwrap()
        .set_len(end - 50)
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(32)
        .unwrap();
    // Lost: the torn record, and the one record of the new segment (never acknowledged).
    let survivors = u64::from(n) - 2;

    let snapshot = |p: &PathBuf| fs::read(p).unwrap();
    let (prev_bytes, last_bytes) = (snapshot(prev), snapshot(last));
    let read_only = Options {
        read_only: true,
        ..opts.clone()
    };
    let engine = Engine::open(Some(dir.path()), read_only).unwrap();
    assert_eq!(engine.last_seq(), survivors);
    assert_eq!(keys(&engine).len() as u64, survivors);
    engine.close().unwrap();
    assert_eq!(snapshot(prev), prev_bytes, "read-only changes no file");
    assert_eq!(snapshot(last), last_bytes, "read-only changes no file");

    let engine = Engine::open(Some(dir.path()), opts.clone()).unwrap();
    assert_eq!(engine.last_seq(), survivors);
    assert_eq!(keys(&engine).len() as u64, survivors);
    assert!(!last.exists(), "the empty later segment is removed");
    assert_eq!(fs::metadata(prev).unwrap().len(), data_end(prev));
    let seq = engine.commit(b"o", &[Op::Put(b"after", b"x")]).unwrap();
    engine.wait_durable(seq, None).unwrap();
    engine.close().unwrap();
    let engine = Engine::open(Some(dir.path()), opts).unwrap();
    assert_eq!(keys(&engine).len() as u64, survivors + 1);
    assert_eq!(engine.get(b"o", b"after").unwrap().unwrap(), b"x");
}

#[test]
fn a_torn_tail_followed_by_a_segment_with_a_valid_record_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let opts = puts_in_small_segments(dir.path(), 60);
    let segs = segments(dir.path());
    let prev = &segs[segs.len() - 2];
    let end = data_end(prev);
    fs::OpenOptions::new()
        .write(true)
        .open(prev)
        .unwrap()
        .set_len(end - 50)
        .unwrap();
    let before = fs::read(prev).unwrap();
    assert!(
        matches!(Engine::open(Some(dir.path()), opts), Err(Error::Corruption { file, .. }) if &file == prev)
    );
    assert_eq!(fs::read(prev).unwrap(), before, "nothing was truncated");
    assert!(segs.iter().all(|s| s.exists()));
}

/// 40 puts to object `o` (`k000` = `good-value-000`, ...) in 4 KiB segments,
/// compacted into one segment with a hint file, the engine closed; the options
/// used, and that segment.
fn compacted_puts(dir: &Path) -> (Options, PathBuf) {
    let opts = Options {
        segment_bytes: 4096,
        compaction: false,
        ..options()
    };
    let engine = Engine::open(Some(dir), opts.clone()).unwrap();
    for i in 0..40 {
        let (key, value) = (format!("k{i:03}"), format!("good-value-{i:03}"));
        engine
            .commit(b"o", &[Op::Put(key.as_bytes(), value.as_bytes())])
            .unwrap();
    }
    engine.compact().unwrap();
    engine.close().unwrap();
    let seg = segments(dir)
        .into_iter()
        .find(|seg| seg.with_extension("hint").exists())
        .expect("a compacted segment with its hint file");
    (opts, seg)
}

/// A hint load reads no record checksum: each value's checksum, kept in the
/// hint file, is checked when the value is read (by a get, a list or the
/// next compaction, which must not copy damage into a fresh segment).
#[test]
fn damage_in_a_hint_loaded_compacted_segment_is_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, seg) = compacted_puts(dir.path());
    let mut bytes = fs::read(&seg).unwrap();
    let at = bytes
        .windows(14)
        .position(|w| w == b"good-value-029")
        .unwrap()
        + 12;
    bytes[at] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();

    let engine = Engine::open(Some(dir.path()), opts.clone()).unwrap();
    assert_eq!(
        engine.get(b"o", b"k028").unwrap().unwrap(),
        b"good-value-028"
    );
    let refused = |result: Result<_, Error>| match result {
        Err(Error::Corruption { file, offset, .. }) => file == seg && offset == at as u64 - 12,
        _ => false,
    };
    assert!(refused(engine.get(b"o", b"k029").map(|_| ())));
    assert!(refused(
        engine.list(b"o", &ListOptions::default()).map(|_| ())
    ));
    engine.commit(b"o", &[Op::Put(b"k000", b"new")]).unwrap();
    assert!(refused(engine.compact()), "compaction copies no damage");
    engine.close().unwrap();

    // Without the hint the scan finds the bad record checksum at startup.
    for hint in fs::read_dir(dir.path()).unwrap() {
        let hint = hint.unwrap().path();
        if hint.extension().is_some_and(|x| x == "hint") {
            fs::remove_file(hint).unwrap();
        }
    }
    assert!(matches!(
        Engine::open(Some(dir.path()), opts),
        Err(Error::Corruption { .. })
    ));
}

/// A compacted segment cut short (a partial copy, lost blocks) is refused at
/// open, naming it, not at the first read of a value past its end.
#[test]
fn a_truncated_compacted_segment_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, seg) = compacted_puts(dir.path());
    let cut = data_end(&seg) - 100;
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(cut)
        .unwrap();
    match Engine::open(Some(dir.path()), opts) {
        Err(Error::Corruption { file, offset, .. }) => {
            assert_eq!((file, offset), (seg, cut));
        }
        Err(other) => panic!("expected a corruption error, got {other}"),
        Ok(_) => panic!("a truncated compacted segment was opened"),
    }
}

/// A torn write of a value that holds records of its own (a stored backup of a
/// data dir, an upload): those records are the torn record's payload, not log
/// written after it, so the tail is truncated, not refused as corruption.
#[test]
fn records_inside_a_torn_record_s_value_do_not_make_it_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let ends = write_batches(dir.path(), 2);
    let seg = segments(dir.path())[0].clone();
    // The first record's bytes: a complete, checksummed record (of seq 1).
    let record = fs::read(&seg).unwrap()[32..ends[0] as usize].to_vec();
    let mut value = record.clone();
    value.extend_from_slice(&[0xAB; 4000]);
    value.extend_from_slice(&record);
    value.extend_from_slice(&[0xCD; 4000]);
    let engine = Engine::open(Some(dir.path()), options()).unwrap();
    let seq = engine.commit(b"o", &[Op::Put(b"blob", &value)]).unwrap();
    engine.wait_durable(seq, None).unwrap();
    engine.close().unwrap();
    let whole = fs::read(&seg).unwrap();
    // Cut after each embedded record, as a crash in the middle of the write would.
    // The value starts 42 bytes into its record (header, seq, id, count, op head, key).
    let value_at = ends[1] as usize + 42;
    assert_eq!(&whole[value_at..value_at + record.len()], &record[..]);
    let second = value_at + 4000 + record.len();
    for cut in [value_at + record.len() + 10, second + record.len() + 10] {
        let torn = tempfile::tempdir().unwrap();
        let torn_seg = torn.path().join(seg.file_name().unwrap());
        fs::write(&torn_seg, &whole[..cut]).unwrap();
        let engine = Engine::open(Some(torn.path()), options()).unwrap();
        assert_eq!(engine.last_seq(), 2, "cut at {cut}");
        assert_eq!(engine.get(b"o", b"blob").unwrap(), None);
        assert_eq!(engine.get(b"o", b"batch").unwrap().unwrap(), b"k001");
        engine.close().unwrap();
        assert_eq!(
            data_end(&torn_seg),
            ends[1],
            "truncated where the torn record began"
        );
    }
}
