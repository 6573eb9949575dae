//! Compaction and hint files.
//!
//! Compaction takes every sealed segment (all but the active one, numbered
//! up to `k`), writes the live entries and alarms they hold into one new
//! segment flagged *compacted*, plus a hint file listing each key's location,
//! then renames the new segment over `seg-<k>.log`. A compacted segment holds
//! the whole state of segments `<= k`, so recovery starts from the newest one
//! and deletes anything older (an interrupted compaction leaves either the old
//! files, or the new segment plus stale older files: both recover correctly).
//!
//! Entries changed while compaction runs already point into newer segments;
//! the index swap only moves entries that still point where they did.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::index::{put_bytes, Alarm, Index, Keys, Loc, Slot};
use super::record::{self, Op, SegHeader, FLAG_COMPACTED, HEADER_LEN};
use super::{hint_path, read_at, segment_path, sys, SegFile, Shared};
use crate::error::{Error, Result};
use crate::FastMap;

const HINT_MAGIC: &[u8; 8] = b"STEADHNT";
/// 3: each entry also holds its share of the record overhead (garbage
/// accounting) and its value's crc32c (reads check it: a hint load reads no
/// record checksum). Older hints are ignored: the segment is scanned.
const HINT_VERSION: u32 = 3;
/// Values per compacted record are grouped up to about this many bytes.
const RECORD_TARGET: usize = 1 << 20;
/// Index entries relocated per lock acquisition, so commits are not stalled.
const SWAP_BATCH: usize = 4096;

type Entry = (Box<[u8]>, Loc);
type Entries = Vec<(Box<[u8]>, Vec<Entry>)>;
/// A value's new location, its share of its record's overhead, its crc32c.
type NewLoc = (Loc, u32, u32);

/// The value checksums of a hint-loaded compacted segment, by value offset
/// (ascending: the hint lists entries in the order they were written).
/// Two flat arrays: 12 bytes a key.
pub(crate) struct ValueCrcs {
    offsets: Vec<u64>,
    crcs: Vec<u32>,
    /// Where the last value listed ends: the segment is at least this long.
    values_end: u64,
}

impl ValueCrcs {
    /// The offset the segment's last listed value ends at.
    pub fn values_end(&self) -> u64 {
        self.values_end
    }

    /// Whether `value`, read at `off`, matches its checksum (true for an
    /// offset the hint did not list).
    pub fn matches(&self, off: u64, value: &[u8]) -> bool {
        match self.offsets.binary_search(&off) {
            Ok(i) => crc32c::crc32c(value) == self.crcs[i],
            Err(_) => true,
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.offsets.capacity() * 8 + self.crcs.capacity() * 4
    }
}
type Alarms = BTreeMap<Box<[u8]>, Alarm>;

/// The background compactor: runs when a roll finds enough garbage.
pub(crate) fn run(shared: Arc<Shared>) {
    loop {
        {
            let mut state = shared.state.lock();
            while !state.compaction_wanted && !state.closing {
                shared.compact_cv.wait(&mut state);
            }
            if state.closing {
                return;
            }
        }
        if let Err(error) = compact(&shared, false) {
            eprintln!("stead engine: background compaction failed: {error}");
        }
    }
}

/// Compact the sealed segments. `forced` first seals the active segment.
pub(crate) fn compact(shared: &Shared, forced: bool) -> Result<()> {
    let _serial = shared.compact_lock.lock();
    let dir = shared
        .dir
        .as_deref()
        .expect("compaction runs for disk engines");
    let (k, roll_seq) = {
        let mut state = shared.state.lock();
        state.compaction_wanted = false;
        if forced && state.closing {
            return Err(Error::Closed("the engine is closed".into()));
        }
        if forced && state.active.is_some_and(|a| a.end > HEADER_LEN) {
            state.roll();
        }
        (state.active.expect("disk engine").seg - 1, state.last_seq)
    };
    if k == 0 {
        return Ok(());
    }
    // Everything in segments <= k must be in the files before they are read.
    shared.wait_until(None, || {
        shared.written_seq.load(Ordering::SeqCst) >= roll_seq
    })?;
    let (sources, alarms, new_id, alarms_seq) = {
        let mut state = shared.state.lock();
        let sources: FastMap<u32, Arc<SegFile>> = state
            .files
            .iter()
            .filter(|(_, f)| f.seg <= k)
            .map(|(id, f)| (*id, f.clone()))
            .collect();
        let garbage: u64 = sources.keys().map(|id| state.index.dead_bytes(*id)).sum();
        let only_clean_compacted = sources.len() == 1 && sources.values().all(|f| f.compacted);
        if sources.is_empty() || (only_clean_compacted && garbage == 0) {
            return Ok(());
        }
        let alarms = state.index.alarms().clone();
        (sources, alarms, state.alloc_file_id(), state.last_seq)
    };
    let (entries, entries_seq) = snapshot(shared, &sources);
    let stamp = sys::random_u64();
    let header = SegHeader {
        flags: FLAG_COMPACTED,
        base_seq: roll_seq,
        stamp,
    };
    let tmp = dir.join(format!("seg-{k:010}.compact"));
    let (file, new_locs, bytes) = write_segment(&tmp, header, &entries, &alarms, &sources, new_id)?;
    let hint_tmp = dir.join(format!("seg-{k:010}.hint.tmp"));
    write_hint(&hint_tmp, stamp, &entries, &new_locs, &alarms)?;
    // The snapshots reflect commits the flusher may not have written yet: a
    // value they left out (overwritten, deleted) or an alarm they took may
    // stand on such a commit. Only once it is durable may the compacted
    // segment replace the sources, or a crash would lose both the old value
    // and the new one (or revive half a batch).
    let snapshot_seq = entries_seq.max(alarms_seq);
    shared.wait_until(None, || {
        shared.written_seq.load(Ordering::SeqCst) >= snapshot_seq
    })?;
    let path = segment_path(dir, k);
    fs::rename(&tmp, &path).map_err(|e| Error::io(format!("rename {}", tmp.display()), e))?;
    fs::rename(&hint_tmp, hint_path(dir, k))
        .map_err(|e| Error::io(format!("rename {}", hint_tmp.display()), e))?;
    sys::sync_dir(dir)?;
    relocate_alarms(shared, &alarms, &sources, new_id);
    swap_in(
        shared,
        SegFile {
            file,
            seg: k,
            path,
            compacted: true,
            // Written from checked values and synced just now.
            value_crcs: None,
        },
        new_id,
        bytes,
        &entries,
        &new_locs,
        &sources,
    );
    for source in sources.values().filter(|f| f.seg != k) {
        fs::remove_file(&source.path)
            .map_err(|e| Error::io(format!("remove {}", source.path.display()), e))?;
        let _ = fs::remove_file(hint_path(dir, source.seg));
    }
    sys::sync_dir(dir)?;
    shared.compactions.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Live entries whose values lie in `sources`, grouped by object, in key
/// order. Taken a few thousand entries per lock acquisition so that commits
/// (which hold the GIL while they wait for the lock) never stall for long;
/// anything changed in between already points into newer segments.
///
/// Also returns the newest commit seq the snapshot saw: the entries it left
/// out may have been superseded by commits up to it.
fn snapshot(shared: &Shared, sources: &FastMap<u32, Arc<SegFile>>) -> (Entries, u64) {
    let mut entries: Entries = Vec::new();
    let mut after: Option<Box<[u8]>> = None;
    loop {
        let state = shared.state.lock();
        let seen_seq = state.last_seq;
        let lower = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut visited = 0;
        let mut exhausted = true;
        for (object_id, keys) in state.index.objects_from(lower) {
            let live: Vec<Entry> = keys
                .iter()
                .filter_map(|(key, slot)| match slot {
                    Slot::Disk(loc, _) if sources.contains_key(&loc.file) => {
                        Some((key.clone(), *loc))
                    }
                    _ => None,
                })
                .collect();
            if !live.is_empty() {
                entries.push((object_id.clone(), live));
            }
            after = Some(object_id.clone());
            visited += keys.len() + 1;
            if visited >= SWAP_BATCH {
                exhausted = false;
                break;
            }
        }
        if exhausted {
            return (entries, seen_seq);
        }
    }
}

/// Write the compacted segment; returns it, each entry's new location, and its record bytes.
fn write_segment(
    path: &Path,
    header: SegHeader,
    entries: &Entries,
    alarms: &Alarms,
    sources: &FastMap<u32, Arc<SegFile>>,
    new_id: u32,
) -> Result<(File, Vec<Vec<NewLoc>>, u64)> {
    let io = |e| Error::io(format!("write {}", path.display()), e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    out.write_all(&header.encode()).map_err(io)?;
    let mut pos = HEADER_LEN;
    let mut buf = Vec::new();
    let mut offsets = Vec::new();
    let mut new_locs = Vec::with_capacity(entries.len());
    for (object_id, keys) in entries {
        let mut locs = Vec::with_capacity(keys.len());
        for group in groups(keys) {
            let values = group
                .iter()
                .map(|(_, loc)| read_at(&sources[&loc.file], loc))
                .collect::<Result<Vec<Vec<u8>>>>()?;
            let ops: Vec<Op<'_>> = group
                .iter()
                .zip(&values)
                .map(|((key, _), value)| Op::Put(key, value))
                .collect();
            buf.clear();
            offsets.clear();
            record::encode(&mut buf, header.base_seq, object_id, &ops, &mut offsets);
            let shares = record::overhead_shares(object_id, ops.len());
            for ((at, value), share) in offsets.iter().zip(&values).zip(shares) {
                let loc = Loc {
                    off: pos + *at as u64,
                    file: new_id,
                    len: value.len() as u32,
                };
                locs.push((loc, share, crc32c::crc32c(value)));
            }
            out.write_all(&buf).map_err(io)?;
            pos += buf.len() as u64;
        }
        new_locs.push(locs);
    }
    for (object_id, alarm) in alarms {
        buf.clear();
        record::encode(
            &mut buf,
            header.base_seq,
            object_id,
            &[Op::SetAlarm(alarm.when)],
            &mut offsets,
        );
        out.write_all(&buf).map_err(io)?;
        pos += buf.len() as u64;
    }
    out.flush().map_err(io)?;
    drop(out);
    file.sync_all().map_err(io)?;
    Ok((file, new_locs, pos - HEADER_LEN))
}

/// Split an object's entries into runs of about `RECORD_TARGET` value bytes.
fn groups(keys: &[Entry]) -> Vec<&[Entry]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, (key, loc)) in keys.iter().enumerate() {
        bytes += loc.len as usize + key.len();
        if bytes >= RECORD_TARGET {
            out.push(&keys[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < keys.len() {
        out.push(&keys[start..]);
    }
    out
}

/// Point the alarms whose op lay in the sources at their copies in the
/// compacted segment; the other copies (alarms set or superseded since the
/// snapshot, or set in a later segment) are garbage at once. Done before the
/// sources are retired, so a later supersede charges the compacted segment.
fn relocate_alarms(
    shared: &Shared,
    alarms: &Alarms,
    sources: &FastMap<u32, Arc<SegFile>>,
    new_id: u32,
) {
    let mut ids = alarms.keys();
    loop {
        let mut state = shared.state.lock();
        let mut done = 0;
        for object_id in ids.by_ref().take(SWAP_BATCH) {
            let bytes = alarm_record_bytes(object_id);
            let moved = |file| sources.contains_key(&file);
            if !state.index.relocate_alarm(object_id, moved, new_id, bytes) {
                state.index.add_dead(new_id, u64::from(bytes));
            }
            done += 1;
        }
        if done < SWAP_BATCH {
            return;
        }
    }
}

/// Point the index at the compacted segment and retire the sources.
fn swap_in(
    shared: &Shared,
    seg: SegFile,
    new_id: u32,
    bytes: u64,
    entries: &Entries,
    new_locs: &[Vec<NewLoc>],
    sources: &FastMap<u32, Arc<SegFile>>,
) {
    {
        let mut state = shared.state.lock();
        state.files.insert(new_id, Arc::new(seg));
        state.file_bytes.insert(new_id, bytes);
    }
    let mut moves = entries
        .iter()
        .zip(new_locs)
        .flat_map(|((object_id, keys), locs)| {
            keys.iter()
                .zip(locs)
                .map(move |((key, old), (new, share, _))| (object_id, key, *old, *new, *share))
        });
    loop {
        let mut state = shared.state.lock();
        let mut done = 0;
        for (object_id, key, old, new, share) in moves.by_ref().take(SWAP_BATCH) {
            if !state.index.relocate(object_id, key, old, new, share) {
                // Overwritten since the snapshot: the copy in the new segment is garbage.
                let bytes = put_bytes(&new, key.len(), share);
                state.index.add_dead(new_id, bytes);
            }
            done += 1;
        }
        if done < SWAP_BATCH {
            break;
        }
    }
    let mut state = shared.state.lock();
    for id in sources.keys() {
        state.files.remove(id);
        state.file_bytes.remove(id);
        state.index.forget_file(*id);
        state.cache.forget_file(*id);
    }
}

/// Bytes of the one-op record holding an alarm in a compacted segment.
fn alarm_record_bytes(object_id: &[u8]) -> u32 {
    record::record_len(object_id, &[Op::SetAlarm(0)]) as u32
}

/// Accumulates bytes into the hint file and its running checksum.
struct HintWriter<W: Write> {
    out: W,
    crc: u32,
}

impl<W: Write> HintWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.out.write_all(bytes)
    }
}

fn write_hint(
    path: &Path,
    stamp: u64,
    entries: &Entries,
    new_locs: &[Vec<NewLoc>],
    alarms: &Alarms,
) -> Result<()> {
    let io = |e| Error::io(format!("write {}", path.display()), e);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    let mut hint = HintWriter {
        out: BufWriter::with_capacity(1 << 20, &file),
        crc: 0,
    };
    hint.put(HINT_MAGIC).map_err(io)?;
    hint.put(&HINT_VERSION.to_le_bytes()).map_err(io)?;
    hint.put(&stamp.to_le_bytes()).map_err(io)?;
    hint.put(&(entries.len() as u64).to_le_bytes())
        .map_err(io)?;
    for ((object_id, keys), locs) in entries.iter().zip(new_locs) {
        hint.put(&(object_id.len() as u32).to_le_bytes())
            .map_err(io)?;
        hint.put(object_id).map_err(io)?;
        hint.put(&(keys.len() as u32).to_le_bytes()).map_err(io)?;
        for ((key, _), (loc, share, crc)) in keys.iter().zip(locs) {
            hint.put(&(key.len() as u32).to_le_bytes()).map_err(io)?;
            hint.put(key).map_err(io)?;
            hint.put(&loc.off.to_le_bytes()).map_err(io)?;
            hint.put(&loc.len.to_le_bytes()).map_err(io)?;
            hint.put(&share.to_le_bytes()).map_err(io)?;
            hint.put(&crc.to_le_bytes()).map_err(io)?;
        }
    }
    hint.put(&(alarms.len() as u64).to_le_bytes()).map_err(io)?;
    for (object_id, alarm) in alarms {
        hint.put(&(object_id.len() as u32).to_le_bytes())
            .map_err(io)?;
        hint.put(object_id).map_err(io)?;
        hint.put(&alarm.when.to_le_bytes()).map_err(io)?;
    }
    let crc = hint.crc;
    hint.out.write_all(&crc.to_le_bytes()).map_err(io)?;
    hint.out.flush().map_err(io)?;
    drop(hint);
    file.sync_all().map_err(io)
}

/// Load a compacted segment's index from its hint file; returns its value
/// checksums. `Ok(None)` when the hint is missing, stale (other stamp),
/// damaged or of an older version: the caller scans the segment.
pub(crate) fn load_hint(
    path: &Path,
    stamp: u64,
    file: u32,
    index: &mut Index,
) -> Result<Option<ValueCrcs>> {
    let data = match fs::read(path) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    match parse_hint(&data, stamp, file) {
        Some((objects, alarms, crcs)) => {
            for (object_id, keys) in objects {
                index.load_object(object_id, keys);
            }
            for (object_id, when) in alarms {
                let at = Some((file, alarm_record_bytes(&object_id)));
                index.load_alarm(object_id, Alarm { when, at });
            }
            Ok(Some(crcs))
        }
        None => {
            eprintln!(
                "stead engine: ignoring invalid or older-version hint file {}",
                path.display()
            );
            Ok(None)
        }
    }
}

type Parsed = (Vec<(Box<[u8]>, Keys)>, Vec<(Box<[u8]>, i64)>, ValueCrcs);

fn parse_hint(data: &[u8], stamp: u64, file: u32) -> Option<Parsed> {
    let body_len = data.len().checked_sub(4)?;
    let (body, crc) = data.split_at(body_len);
    if crc32c::crc32c(body) != record::u32_at(crc, 0) || body.len() < 28 || &body[..8] != HINT_MAGIC
    {
        return None;
    }
    if record::u32_at(body, 8) != HINT_VERSION || record::u64_at(body, 12) != stamp {
        return None;
    }
    let mut r = Reader {
        data: body,
        pos: 20,
    };
    let n_objects = r.u64()?;
    let mut objects = Vec::with_capacity(n_objects.min(1 << 20) as usize);
    let mut crcs = ValueCrcs {
        offsets: Vec::new(),
        crcs: Vec::new(),
        values_end: 0,
    };
    for _ in 0..n_objects {
        let object_id: Box<[u8]> = r.bytes()?.into();
        let n_keys = r.u32()?;
        let mut keys = Vec::with_capacity(n_keys.min(1 << 20) as usize);
        for _ in 0..n_keys {
            let key: Box<[u8]> = r.bytes()?.into();
            let off = r.u64()?;
            let len = r.u32()?;
            let share = r.u32()?;
            let crc = r.u32()?;
            if crcs.offsets.last().is_some_and(|last| *last >= off) {
                return None; // not in write order: not a hint this code wrote
            }
            crcs.offsets.push(off);
            crcs.crcs.push(crc);
            crcs.values_end = off.saturating_add(u64::from(len));
            keys.push((key, Slot::Disk(Loc { off, file, len }, share)));
        }
        // Written in key order: collecting a sorted run builds the tree in bulk.
        objects.push((object_id, keys.into_iter().collect::<Keys>()));
    }
    let n_alarms = r.u64()?;
    let mut alarms = Vec::new();
    for _ in 0..n_alarms {
        let object_id: Box<[u8]> = r.bytes()?.into();
        alarms.push((object_id, r.u64()? as i64));
    }
    crcs.offsets.shrink_to_fit();
    crcs.crcs.shrink_to_fit();
    (r.pos == body.len()).then_some((objects, alarms, crcs))
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())?;
        let out = &self.data[self.pos..end];
        self.pos = end;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| record::u32_at(b, 0))
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| record::u64_at(b, 0))
    }

    fn bytes(&mut self) -> Option<&[u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}
