//! Startup: find the segments, load the newest compacted segment (from its
//! hint file when valid), replay the log tail, truncate a torn tail.
//!
//! A segment's data ends where only zero bytes follow (the flusher reserves
//! file space ahead of its writes). A torn tail is damage at the very end of
//! the log: a record that is cut short or fails its checksum with no valid
//! record after it, in its segment or any later one. It is what a crash in
//! the middle of a write leaves, so it is truncated and logged; later segments
//! (created by a roll whose records never validly reached the disk) are
//! removed. Damage followed by a valid record is corruption: recovery refuses
//! to open rather than silently drop acknowledged batches.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::compact::{load_hint, ValueCrcs};
use super::index::{Index, Loc, Placed, Slot};
use super::record::{self, Op, SegHeader, HEADER_LEN, REC_HEADER, REC_MAGIC};
use super::{hint_path, sys, Active, Options, SegFile};
use crate::error::{Error, Result};
use crate::FastMap;

pub(crate) struct Recovered {
    pub index: Index,
    pub files: FastMap<u32, Arc<SegFile>>,
    pub file_bytes: FastMap<u32, u64>,
    pub next_file_id: u32,
    pub active: Option<Active>,
    pub last_seq: u64,
}

impl Recovered {
    pub fn empty() -> Self {
        Recovered {
            index: Index::default(),
            files: FastMap::default(),
            file_bytes: FastMap::default(),
            next_file_id: 0,
            active: None,
            last_seq: 0,
        }
    }
}

/// A segment's number and path.
type Numbered = (u64, PathBuf);

/// A segment file found on disk.
struct Found {
    seg: u64,
    path: PathBuf,
    file: File,
    header: SegHeader,
    len: u64,
}

pub(crate) fn recover(dir: &Path, opts: &Options) -> Result<Recovered> {
    let read_only = opts.read_only;
    let (obsolete, live) = scan_dir(dir, read_only)?;
    let mut live = &live[..];
    let mut out = Recovered::empty();
    let mut i = 0;
    while let Some(seg) = live.get(i) {
        let id = out.next_file_id + 1;
        out.next_file_id = id;
        let later = &live[i + 1..];
        let Loaded {
            len,
            torn,
            value_crcs,
        } = load_segment(dir, seg, id, later, read_only, &mut out)?;
        let file = seg
            .file
            .try_clone()
            .map_err(|e| Error::io("dup segment fd", e))?;
        let seg_file = SegFile {
            file,
            seg: seg.seg,
            path: seg.path.clone(),
            compacted: seg.header.compacted(),
            value_crcs,
        };
        out.files.insert(id, Arc::new(seg_file));
        out.file_bytes.insert(id, len - HEADER_LEN);
        out.last_seq = out.last_seq.max(seg.header.base_seq);
        i += 1;
        if torn && !later.is_empty() {
            // The later segments hold no valid record (checked before the
            // truncation): a crash during a roll. The log ends here.
            if !read_only {
                remove_empty_later(dir, later)?;
            }
            live = &live[..i];
        }
    }
    if !read_only {
        remove_obsolete(dir, &obsolete)?;
    }
    out.active = Some(choose_active(&mut out, live, opts));
    Ok(out)
}

/// Append to the last segment if it is a plain one with room, else start a new one.
fn choose_active(out: &mut Recovered, live: &[Found], opts: &Options) -> Active {
    if let Some(last) = live.last() {
        let id = out.next_file_id;
        let len = HEADER_LEN + out.file_bytes[&id];
        if !last.header.compacted() && len < opts.segment_bytes {
            return Active {
                file: id,
                seg: last.seg,
                end: len,
            };
        }
    }
    out.next_file_id += 1;
    Active {
        file: out.next_file_id,
        seg: live.last().map_or(1, |f| f.seg + 1),
        end: HEADER_LEN,
    }
}

/// The segment files of `dir`: those older than the newest compacted segment
/// (obsolete: its state includes theirs, their contents are never read), and
/// the rest in log order. Leftovers of an interrupted compaction are removed
/// and a header-less last segment (crash right after creating it) is dropped.
fn scan_dir(dir: &Path, read_only: bool) -> Result<(Vec<Numbered>, Vec<Found>)> {
    let mut numbered = list_segments(dir, read_only)?;
    let count = numbered.len();
    let mut live = Vec::new();
    while let Some((seg, path)) = numbered.pop() {
        let is_last = numbered.len() + 1 == count;
        let Some(found) = open_segment(seg, path, is_last, read_only)? else {
            continue;
        };
        let compacted = found.header.compacted();
        live.push(found);
        if compacted {
            break;
        }
    }
    live.reverse();
    Ok((numbered, live))
}

/// `(n, path)` of every `seg-<n>.log`, ascending.
fn list_segments(dir: &Path, read_only: bool) -> Result<Vec<Numbered>> {
    let mut numbered = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") || name.ends_with(".compact") {
            if !read_only {
                let _ = fs::remove_file(entry.path());
            }
            continue;
        }
        let seg = name
            .strip_prefix("seg-")
            .and_then(|rest| rest.strip_suffix(".log"));
        if let Some(seg) = seg.and_then(|n| n.parse::<u64>().ok()) {
            numbered.push((seg, entry.path()));
        }
    }
    numbered.sort();
    Ok(numbered)
}

/// Open a segment and read its header; `None` for a header-less last segment
/// (removed, unless read-only).
fn open_segment(seg: u64, path: PathBuf, is_last: bool, read_only: bool) -> Result<Option<Found>> {
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(&path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .len();
    let mut head = [0u8; HEADER_LEN as usize];
    let read =
        len >= HEADER_LEN && std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).is_ok();
    match SegHeader::decode(&head).filter(|_| read) {
        Some(header) => Ok(Some(Found {
            seg,
            path,
            file,
            header,
            len,
        })),
        None if is_last && len < HEADER_LEN && read_only => Ok(None),
        None if is_last && len < HEADER_LEN => {
            eprintln!(
                "stead engine: removing {} (created but never written)",
                path.display()
            );
            fs::remove_file(&path)
                .map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
            Ok(None)
        }
        None => Err(Error::Corruption {
            file: path,
            offset: 0,
            reason: "bad segment header".into(),
        }),
    }
}

/// What loading a segment found.
struct Loaded {
    /// Its length, after a torn tail was truncated.
    len: u64,
    /// Whether a torn tail was cut off (or, read-only, skipped).
    torn: bool,
    /// Its value checksums, when its index came from a hint file.
    value_crcs: Option<ValueCrcs>,
}

impl Loaded {
    fn scanned(len: u64, torn: bool) -> Self {
        Loaded {
            len,
            torn,
            value_crcs: None,
        }
    }
}

/// Load one segment into the index. `later` are the segments after it: a
/// torn tail is only accepted when none of them holds a valid record, so
/// nothing written after the damage survived.
fn load_segment(
    dir: &Path,
    seg: &Found,
    id: u32,
    later: &[Found],
    read_only: bool,
    out: &mut Recovered,
) -> Result<Loaded> {
    if seg.header.compacted() {
        let hint = hint_path(dir, seg.seg);
        if let Some(crcs) = load_hint(&hint, seg.header.stamp, id, &mut out.index)? {
            // A partial copy or lost blocks: refuse now, not at the first read.
            if crcs.values_end() > seg.len {
                return Err(Error::Corruption {
                    file: seg.path.clone(),
                    offset: seg.len,
                    reason: format!(
                        "the compacted segment ends before its values do (its hint file \
                         places one up to offset {}): truncated",
                        crcs.values_end()
                    ),
                });
            }
            return Ok(Loaded {
                len: seg.len,
                torn: false,
                value_crcs: Some(crcs),
            });
        }
    }
    let data =
        fs::read(&seg.path).map_err(|e| Error::io(format!("read {}", seg.path.display()), e))?;
    let mut pos = HEADER_LEN as usize;
    while pos < data.len() {
        match record::decode(&data[pos..]) {
            Ok(rec) => {
                apply_record(&rec, pos as u64, id, out);
                pos += rec.len;
            }
            Err(_) if data[pos..].iter().all(|b| *b == 0) => {
                // Space the flusher reserved ahead of its writes: the clean end.
                return Ok(Loaded::scanned(pos as u64, false));
            }
            Err(bad) => {
                let tail_ok = !seg.header.compacted()
                    && !log_continues_after(&data, pos, out.last_seq)
                    && no_valid_record_in(later)?;
                if !tail_ok {
                    return Err(Error::Corruption {
                        file: seg.path.clone(),
                        offset: pos as u64,
                        reason: bad.describe(),
                    });
                }
                if read_only {
                    eprintln!(
                        "stead engine: torn tail of {} at offset {pos} ({} bytes, left in place: \
                         read-only): {}",
                        seg.path.display(),
                        seg.len - pos as u64,
                        bad.describe()
                    );
                } else {
                    truncate(seg, pos as u64, &bad.describe())?;
                }
                return Ok(Loaded::scanned(pos as u64, true));
            }
        }
    }
    Ok(Loaded::scanned(data.len() as u64, false))
}

/// Whether none of `segments` holds a complete, checksummed record. They are
/// read only when the segment before them ends in damage.
fn no_valid_record_in(segments: &[Found]) -> Result<bool> {
    for seg in segments {
        let data = fs::read(&seg.path)
            .map_err(|e| Error::io(format!("read {}", seg.path.display()), e))?;
        if has_valid_record_after(&data, HEADER_LEN as usize - 1) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Remove the segments after a torn tail: created by a roll whose records
/// never (validly) reached the disk. The flusher creates them again.
fn remove_empty_later(dir: &Path, later: &[Found]) -> Result<()> {
    for seg in later {
        eprintln!(
            "stead engine: removing {} (after the torn tail of the segment before it, it holds \
             no valid record)",
            seg.path.display()
        );
        fs::remove_file(&seg.path)
            .map_err(|e| Error::io(format!("remove {}", seg.path.display()), e))?;
    }
    sys::sync_dir(dir)
}

/// Apply a record as a live commit does (the same garbage accounting).
fn apply_record(rec: &record::Record<'_>, at: u64, file: u32, out: &mut Recovered) {
    if rec.ops.is_empty() {
        let share = record::overhead(rec.object_id) as u32;
        out.index.apply_empty(Some(Placed { file, share }));
    }
    let shares = record::overhead_shares(rec.object_id, rec.ops.len());
    for ((op, value_at), share) in rec.ops.iter().zip(shares) {
        let slot = match op {
            Op::Put(_, value) => {
                let loc = Loc {
                    off: at + *value_at as u64,
                    file,
                    len: value.len() as u32,
                };
                Some(Slot::Disk(loc, share))
            }
            _ => None,
        };
        out.index
            .apply(rec.object_id, op, slot, Some(Placed { file, share }));
    }
    out.last_seq = out.last_seq.max(rec.seq);
}

/// How many records a stretch of damage may cover and the log's next record
/// still be recognised by its seq (see `log_continues_after`).
const CONTINUATION_WINDOW: u64 = 1 << 20;

/// Whether records written after the damaged one at `pos` survive in `data`,
/// so the damage is in the middle of the log, not a torn tail. `last_seq`:
/// the newest seq of the records before it.
///
/// A torn write leaves a prefix of its record, whose value bytes may hold
/// anything, records of another data dir included (a stored backup, an
/// upload). So a valid record counts if it starts past the damaged record's
/// declared end (when its magic is intact: the bytes before are its payload),
/// or, anywhere, if its seq continues this log (seqs grow by one per record):
/// that finds the log's own next records when the damage is to the length
/// field itself.
fn log_continues_after(data: &[u8], pos: usize, last_seq: u64) -> bool {
    let payload_end = record::declared_len(&data[pos..]).map(|len| pos.saturating_add(len));
    let continues = |seq: u64| seq > last_seq && seq - last_seq <= CONTINUATION_WINDOW;
    let magic = REC_MAGIC.to_le_bytes();
    (pos + 1..data.len().saturating_sub(REC_HEADER - 1))
        .filter(|at| data[*at..*at + 4] == magic)
        .filter_map(|at| record::decode(&data[at..]).ok().map(|rec| (at, rec.seq)))
        .any(|(at, seq)| payload_end.map_or(true, |end| at >= end) || continues(seq))
}

/// Whether any complete, checksummed record starts after `pos`.
fn has_valid_record_after(data: &[u8], pos: usize) -> bool {
    let magic = REC_MAGIC.to_le_bytes();
    (pos + 1..data.len().saturating_sub(REC_HEADER - 1))
        .filter(|at| data[*at..*at + 4] == magic)
        .any(|at| record::decode(&data[at..]).is_ok())
}

fn truncate(seg: &Found, at: u64, why: &str) -> Result<()> {
    eprintln!(
        "stead engine: truncating torn tail of {} at offset {at} ({} bytes dropped: {why})",
        seg.path.display(),
        seg.len - at
    );
    seg.file
        .set_len(at)
        .map_err(|e| Error::io(format!("truncate {}", seg.path.display()), e))?;
    seg.file
        .sync_all()
        .map_err(|e| Error::io(format!("fsync {}", seg.path.display()), e))
}

/// Segments (and hints) older than the newest compacted segment: it holds their state.
fn remove_obsolete(dir: &Path, obsolete: &[Numbered]) -> Result<()> {
    for (seg, path) in obsolete {
        fs::remove_file(path).map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
        let _ = fs::remove_file(hint_path(dir, *seg));
    }
    if !obsolete.is_empty() {
        sys::sync_dir(dir)?;
    }
    Ok(())
}
