//! The state shared by the engine handle, the flusher and the compactor:
//! one mutex over the index, cache, file table and pending buffers, plus the
//! atomics and condvars the threads signal each other with.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::cache::ValueCache;
use super::compact::ValueCrcs;
use super::index::{Index, Loc};
use super::record::HEADER_LEN;
use super::recovery::Recovered;
use super::sys::EventFd;
use super::Options;
use crate::error::{Error, Result};
use crate::FastMap;

/// Plain sealed segments tolerated before compaction bounds startup replay.
const REPLAY_SEGMENTS: u64 = 8;

/// An open segment file.
pub(crate) struct SegFile {
    pub file: File,
    pub seg: u64,
    pub path: PathBuf,
    pub compacted: bool,
    /// For a compacted segment whose index came from its hint file (its
    /// records' checksums were never read): each value's checksum, checked
    /// on every read of it.
    pub value_crcs: Option<ValueCrcs>,
}

/// Records appended but not yet handed to the flusher, for one file.
pub(crate) struct Chunk {
    pub file: u32,
    pub seg: u64,
    /// File offset of `data[0]`.
    pub start: u64,
    pub data: Vec<u8>,
    pub last_seq: u64,
}

impl Chunk {
    pub fn slice(&self, loc: &Loc) -> Option<&[u8]> {
        let from = loc.off.checked_sub(self.start)? as usize;
        let to = from + loc.len as usize;
        (self.file == loc.file && to <= self.data.len()).then(|| &self.data[from..to])
    }
}

/// Where the next record goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Active {
    pub file: u32,
    pub seg: u64,
    pub end: u64,
}

/// Everything behind the engine's one mutex.
pub(crate) struct State {
    pub index: Index,
    pub cache: ValueCache,
    pub files: FastMap<u32, Arc<SegFile>>,
    /// Record bytes per file id (with `Index::dead_bytes`: the garbage ratio).
    pub file_bytes: FastMap<u32, u64>,
    pub next_file_id: u32,
    /// `None` for the in-memory engine.
    pub active: Option<Active>,
    pub pending: Vec<Chunk>,
    pub inflight: Option<Arc<Vec<Chunk>>>,
    pub last_seq: u64,
    /// Commits since open (under the lock: an atomic shared with the flusher
    /// would bounce a cache line between cores on every commit).
    pub commits: u64,
    pub closing: bool,
    pub flusher_sleeping: bool,
    pub compaction_wanted: bool,
    /// A recycled buffer for the next pending chunk.
    pub spare: Vec<u8>,
    /// Reused for the value offsets of the record being encoded.
    pub scratch: Vec<usize>,
}

impl State {
    pub fn new(recovered: Recovered, cache_bytes: usize) -> Self {
        State {
            index: recovered.index,
            cache: ValueCache::new(cache_bytes),
            files: recovered.files,
            file_bytes: recovered.file_bytes,
            next_file_id: recovered.next_file_id,
            active: recovered.active,
            pending: Vec::new(),
            inflight: None,
            last_seq: recovered.last_seq,
            commits: 0,
            closing: false,
            flusher_sleeping: false,
            compaction_wanted: false,
            spare: Vec::new(),
            scratch: Vec::new(),
        }
    }

    pub fn alloc_file_id(&mut self) -> u32 {
        self.next_file_id += 1;
        self.next_file_id
    }

    /// Start a new segment; the flusher creates its file on first write.
    pub fn roll(&mut self) {
        let file = self.alloc_file_id();
        let active = self.active.as_mut().expect("disk engine");
        *active = Active {
            file,
            seg: active.seg + 1,
            end: HEADER_LEN,
        };
    }

    /// Whether compacting the sealed segments is worth it: they hold at least
    /// a segment's worth of bytes of which half is garbage, or the plain
    /// (never compacted) ones that startup would replay record by record
    /// outgrow both `REPLAY_SEGMENTS` segments and the compacted base (which
    /// bounds replay while keeping rewrite cost at most ~2x for data that is
    /// only ever added).
    pub fn compaction_worthwhile(&self, segment_bytes: u64) -> bool {
        let Some(active) = self.active else {
            return false;
        };
        let (mut total, mut dead, mut plain) = (0u64, 0u64, 0u64);
        for (id, file) in &self.files {
            if file.seg < active.seg {
                let bytes = self.file_bytes.get(id).copied().unwrap_or(0);
                total += bytes;
                dead += self.index.dead_bytes(*id);
                if !file.compacted {
                    plain += bytes;
                }
            }
        }
        let garbage = total >= segment_bytes && dead * 2 >= total;
        let base = total - plain;
        garbage || plain >= (REPLAY_SEGMENTS * segment_bytes).max(base)
    }
}

/// State shared between the engine handle, the flusher and the compactor.
pub(crate) struct Shared {
    pub dir: Option<PathBuf>,
    pub opts: Options,
    pub state: Mutex<State>,
    /// The flusher sleeps here when there is nothing to write.
    pub work: Condvar,
    /// The compactor sleeps here until compaction is wanted.
    pub compact_cv: Condvar,
    pub compact_lock: Mutex<()>,
    /// Waiters on `durable_seq` / `written_seq`.
    pub durable_lock: Mutex<()>,
    pub durable_cv: Condvar,
    pub durable_seq: AtomicU64,
    /// Highest seq whose record is in the file (readable by pread).
    pub written_seq: AtomicU64,
    pub has_pending: AtomicBool,
    pub fail_next: AtomicBool,
    pub poisoned: AtomicBool,
    pub poison_reason: Mutex<Option<String>>,
    pub wakeup: EventFd,
    pub sync_latencies: Mutex<Vec<u64>>,
    pub syncs: AtomicU64,
    pub compactions: AtomicU64,
    /// Reference point of the `*_ns` fields below.
    pub epoch: Instant,
    /// Until when the consumer is busy with work that is already durable
    /// (ns since `epoch`; 0: not backlogged), as it last reported.
    pub consumer_busy_until_ns: AtomicU64,
    /// Groups the flusher held back for a backlogged consumer.
    pub held_groups: AtomicU64,
}

impl Shared {
    pub fn new(dir: Option<PathBuf>, opts: Options, state: State) -> Result<Self> {
        let last_seq = state.last_seq;
        Ok(Shared {
            dir,
            opts,
            state: Mutex::new(state),
            work: Condvar::new(),
            compact_cv: Condvar::new(),
            compact_lock: Mutex::new(()),
            durable_lock: Mutex::new(()),
            durable_cv: Condvar::new(),
            durable_seq: AtomicU64::new(last_seq),
            written_seq: AtomicU64::new(last_seq),
            has_pending: AtomicBool::new(false),
            fail_next: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            poison_reason: Mutex::new(None),
            wakeup: EventFd::new()?,
            sync_latencies: Mutex::new(Vec::new()),
            syncs: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            epoch: Instant::now(),
            consumer_busy_until_ns: AtomicU64::new(0),
            held_groups: AtomicU64::new(0),
        })
    }

    pub fn poison_error(&self) -> Error {
        let reason = self.poison_reason.lock().clone().unwrap_or_default();
        Error::Closed(format!(
            "a log flush failed earlier, no further writes: {reason}"
        ))
    }

    pub fn poison(&self, reason: String) {
        eprintln!("stead engine: flush failed, engine poisoned: {reason}");
        *self.poison_reason.lock() = Some(reason);
        self.poisoned.store(true, Ordering::SeqCst);
        self.notify_durable();
        self.wakeup.signal();
    }

    /// Nanoseconds since `epoch` (never 0, which means "none").
    pub fn now_ns(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    pub fn notify_durable(&self) {
        let _guard = self.durable_lock.lock();
        self.durable_cv.notify_all();
    }

    /// Block until `check()` holds, the engine is poisoned, or `deadline` passes.
    pub fn wait_until(&self, deadline: Option<Instant>, check: impl Fn() -> bool) -> Result<bool> {
        let mut guard = self.durable_lock.lock();
        loop {
            if check() {
                return Ok(true);
            }
            if self.poisoned.load(Ordering::SeqCst) {
                return Err(self.poison_error());
            }
            match deadline {
                Some(deadline) => {
                    if self.durable_cv.wait_until(&mut guard, deadline).timed_out() {
                        return Ok(check());
                    }
                }
                None => self.durable_cv.wait(&mut guard),
            }
        }
    }
}
