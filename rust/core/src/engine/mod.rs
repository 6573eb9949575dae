//! The log-structured storage engine shared by all objects of a data dir.
//!
//! Every write is one atomic batch appended as one record to the active
//! segment file (`seg-<n>.log`). `commit` only encodes the record into an
//! in-memory pending buffer and updates the index; a flusher thread writes
//! (and, in `fsync` mode, fdatasyncs) everything pending in one go, publishes
//! the durable sequence number and signals an eventfd once per group.
//! Reads are served from the index: values come from the value cache, from
//! the pending/in-flight buffers if not yet written, or from the segment file.
//!
//! Submodules: [`record`] (formats), [`index`], [`cache`], [`flusher`],
//! [`recovery`], [`compact`] (compaction and hint files), [`sys`] (OS glue).

mod cache;
mod compact;
mod flusher;
mod index;
mod record;
mod recovery;
mod sys;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use cache::ValueCache;
pub use index::ListOptions;
use index::{Index, Loc, Slot};
pub use record::Op;
use record::HEADER_LEN;
use sys::{DirLock, EventFd};

/// How much a commit promises once `durable_seq` covers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// write + fdatasync per group: survives power loss.
    Fsync,
    /// write only: survives a process crash.
    Os,
    /// Durable at once; written in the background, nothing guaranteed.
    None,
}

impl Durability {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "fsync" => Ok(Durability::Fsync),
            "os" => Ok(Durability::Os),
            "none" => Ok(Durability::None),
            other => Err(Error::InvalidArgument(format!(
                "durability must be 'fsync', 'os' or 'none', not {other:?}"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::Os => "os",
            Durability::None => "none",
        }
    }
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub durability: Durability,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub cache_bytes: usize,
    pub segment_bytes: u64,
    pub compaction: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Fsync,
            max_key_bytes: 2048,
            max_value_bytes: 2 << 20,
            cache_bytes: 64 << 20,
            segment_bytes: 64 << 20,
            compaction: true,
        }
    }
}

/// The longest object id accepted.
pub const MAX_OBJECT_ID_BYTES: usize = 65_535;
/// Smallest segment size accepted (smaller values are raised to it).
const MIN_SEGMENT_BYTES: u64 = 4096;
/// Sync latencies kept for `take_sync_latencies` before old ones are dropped.
const MAX_LATENCY_SAMPLES: usize = 65_536;

/// Counters reported by [`Engine::stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub objects: u64,
    pub keys: u64,
    pub segments: u64,
    pub live_bytes: u64,
    pub index_bytes: u64,
    pub key_bytes: u64,
    pub cache_bytes: u64,
    pub commits: u64,
    pub syncs: u64,
    pub compactions: u64,
    pub last_seq: u64,
    pub durable_seq: u64,
}

/// An open segment file.
pub(crate) struct SegFile {
    pub file: File,
    pub seg: u64,
    pub path: PathBuf,
    pub compacted: bool,
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
    fn slice(&self, loc: &Loc) -> Option<&[u8]> {
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
    pub files: HashMap<u32, Arc<SegFile>>,
    /// Record bytes per file id (with `Index::dead_bytes`: the garbage ratio).
    pub file_bytes: HashMap<u32, u64>,
    pub next_file_id: u32,
    /// `None` for the in-memory engine.
    pub active: Option<Active>,
    pub pending: Vec<Chunk>,
    pub inflight: Option<Arc<Vec<Chunk>>>,
    pub last_seq: u64,
    pub closing: bool,
    pub flusher_sleeping: bool,
    pub compaction_wanted: bool,
    /// A recycled buffer for the next pending chunk.
    pub spare: Vec<u8>,
    scratch: Vec<usize>,
}

impl State {
    pub fn alloc_file_id(&mut self) -> u32 {
        self.next_file_id += 1;
        self.next_file_id
    }

    /// Start a new segment; the flusher creates its file on first write.
    fn roll(&mut self) {
        let file = self.alloc_file_id();
        let active = self.active.as_mut().expect("disk engine");
        *active = Active {
            file,
            seg: active.seg + 1,
            end: HEADER_LEN,
        };
    }

    /// Whether sealed segments carry enough garbage to be worth compacting.
    fn garbage_worth_compacting(&self, segment_bytes: u64) -> bool {
        let Some(active) = self.active else {
            return false;
        };
        let (mut total, mut dead) = (0u64, 0u64);
        for (id, file) in &self.files {
            if file.seg < active.seg {
                total += self.file_bytes.get(id).copied().unwrap_or(0);
                dead += self.index.dead_bytes(*id);
            }
        }
        total >= segment_bytes && dead * 2 >= total
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
    pub commits: AtomicU64,
    pub syncs: AtomicU64,
    pub compactions: AtomicU64,
}

impl Shared {
    fn poison_error(&self) -> Error {
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

    pub fn notify_durable(&self) {
        let _guard = self.durable_lock.lock();
        self.durable_cv.notify_all();
    }

    /// Block until `check()` holds, the engine is poisoned, or `deadline` passes.
    fn wait_until(&self, deadline: Option<Instant>, check: impl Fn() -> bool) -> Result<bool> {
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

/// A value resolved under the lock, or a file read still to do outside it.
enum Pending {
    Ready(Option<Arc<[u8]>>),
    Read(Arc<SegFile>, Loc),
}

/// The storage engine. All methods take `&self`; it is `Send + Sync`.
pub struct Engine {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    lock: Mutex<Option<DirLock>>,
}

impl Engine {
    /// Open (creating if needed) and recover `data_dir`; `None` is in memory.
    pub fn open(data_dir: Option<&Path>, mut opts: Options) -> Result<Engine> {
        opts.segment_bytes = opts.segment_bytes.max(MIN_SEGMENT_BYTES);
        let Some(dir) = data_dir else {
            return Self::start(None, opts, None, recovery::Recovered::empty());
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let lock = sys::lock_dir(dir)?;
        let recovered = recovery::recover(dir, &opts)?;
        Self::start(Some(dir.to_path_buf()), opts, Some(lock), recovered)
    }

    fn start(
        dir: Option<PathBuf>,
        opts: Options,
        lock: Option<DirLock>,
        recovered: recovery::Recovered,
    ) -> Result<Engine> {
        let on_disk = dir.is_some();
        let last_seq = recovered.last_seq;
        let state = State {
            index: recovered.index,
            cache: ValueCache::new(opts.cache_bytes),
            files: recovered.files,
            file_bytes: recovered.file_bytes,
            next_file_id: recovered.next_file_id,
            active: recovered.active,
            pending: Vec::new(),
            inflight: None,
            last_seq,
            closing: false,
            flusher_sleeping: false,
            compaction_wanted: false,
            spare: Vec::new(),
            scratch: Vec::new(),
        };
        let compaction = opts.compaction;
        let shared = Arc::new(Shared {
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
            commits: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        if on_disk {
            threads.push(spawn("stead-flusher", &shared, flusher::run)?);
            if compaction {
                threads.push(spawn("stead-compactor", &shared, compact::run)?);
            }
        }
        Ok(Engine {
            shared,
            threads: Mutex::new(threads),
            lock: Mutex::new(lock),
        })
    }

    pub fn data_dir(&self) -> Option<&Path> {
        self.shared.dir.as_deref()
    }

    pub fn durability(&self) -> Durability {
        self.shared.opts.durability
    }

    /// Reject a batch that breaks a limit, before anything is written.
    fn check_limits(&self, object_id: &[u8], ops: &[Op<'_>]) -> Result<()> {
        let opts = &self.shared.opts;
        if object_id.is_empty() {
            return Err(Error::InvalidArgument("object id must not be empty".into()));
        }
        if object_id.len() > MAX_OBJECT_ID_BYTES {
            return Err(Error::Limit(format!(
                "object id is {} bytes, more than {MAX_OBJECT_ID_BYTES}",
                object_id.len()
            )));
        }
        for op in ops {
            let (key, value) = match op {
                Op::Put(key, value) => (*key, Some(*value)),
                Op::Delete(key) => (*key, None),
                _ => continue,
            };
            if key.is_empty() {
                return Err(Error::Limit("key must not be empty".into()));
            }
            if key.len() > opts.max_key_bytes {
                return Err(Error::Limit(format!(
                    "key is {} bytes, more than the limit of {}",
                    key.len(),
                    opts.max_key_bytes
                )));
            }
            if let Some(value) = value.filter(|v| v.len() > opts.max_value_bytes) {
                return Err(Error::Limit(format!(
                    "value of key {:?} is {} bytes, more than the limit of {}",
                    String::from_utf8_lossy(key),
                    value.len(),
                    opts.max_value_bytes
                )));
            }
        }
        if record::record_len(object_id, ops) > u32::MAX as usize / 2 {
            return Err(Error::Limit("batch is larger than 2 GiB".into()));
        }
        Ok(())
    }

    /// Append one atomic batch for `object_id`; returns its sequence number.
    /// Ops apply in the order given. Reads see the batch at once.
    pub fn commit(&self, object_id: &[u8], ops: &[Op<'_>]) -> Result<u64> {
        self.check_limits(object_id, ops)?;
        let shared = &*self.shared;
        if shared.poisoned.load(Ordering::SeqCst) {
            return Err(shared.poison_error());
        }
        let mut guard = shared.state.lock();
        let state = &mut *guard;
        if state.closing {
            return Err(Error::Closed("the engine is closed".into()));
        }
        if shared.fail_next.swap(false, Ordering::SeqCst) {
            return Err(Error::InjectedFault);
        }
        let seq = state.last_seq + 1;
        if state.active.is_some() {
            self.append(state, seq, object_id, ops);
        } else {
            for op in ops {
                let slot = match op {
                    Op::Put(_, value) => Some(Slot::Mem((*value).into())),
                    _ => None,
                };
                state.index.apply(object_id, op, slot);
            }
        }
        state.last_seq = seq;
        shared.commits.fetch_add(1, Ordering::Relaxed);
        if state.active.is_none() || shared.opts.durability == Durability::None {
            shared.durable_seq.store(seq, Ordering::SeqCst);
        }
        if state.active.is_some() {
            shared.has_pending.store(true, Ordering::SeqCst);
            if state.flusher_sleeping {
                shared.work.notify_one();
            }
        }
        Ok(seq)
    }

    /// Encode the record into the pending buffer and point the index at it.
    fn append(&self, state: &mut State, seq: u64, object_id: &[u8], ops: &[Op<'_>]) {
        let shared = &*self.shared;
        let len = record::record_len(object_id, ops) as u64;
        let mut active = state.active.expect("disk engine");
        if active.end > HEADER_LEN && active.end + len > shared.opts.segment_bytes {
            state.roll();
            active = state.active.expect("disk engine");
            if shared.opts.compaction && state.garbage_worth_compacting(shared.opts.segment_bytes) {
                state.compaction_wanted = true;
                shared.compact_cv.notify_one();
            }
        }
        if !matches!(state.pending.last(), Some(chunk) if chunk.file == active.file) {
            let data = std::mem::take(&mut state.spare);
            state.pending.push(Chunk {
                file: active.file,
                seg: active.seg,
                start: active.end,
                data,
                last_seq: seq,
            });
        }
        let chunk = state.pending.last_mut().expect("just ensured");
        let record_off = chunk.start + chunk.data.len() as u64;
        state.scratch.clear();
        record::encode(&mut chunk.data, seq, object_id, ops, &mut state.scratch);
        chunk.last_seq = seq;
        state.active.as_mut().expect("disk engine").end += len;
        *state.file_bytes.entry(active.file).or_default() += len;
        let mut values = state.scratch.iter();
        for op in ops {
            let slot = match op {
                Op::Put(_, value) => {
                    let at = *values.next().expect("one offset per put") as u64;
                    Some(Slot::Disk(Loc {
                        off: record_off + at,
                        file: active.file,
                        len: value.len() as u32,
                    }))
                }
                _ => None,
            };
            state.index.apply(object_id, op, slot);
        }
    }

    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::SeqCst)
    }

    pub fn last_seq(&self) -> u64 {
        self.shared.state.lock().last_seq
    }

    /// The eventfd that becomes readable when `durable_seq` advances.
    pub fn wakeup_fd(&self) -> i32 {
        self.shared.wakeup.raw()
    }

    /// Clear the wakeup fd and return `durable_seq`; an error once poisoned.
    pub fn drain_wakeup(&self) -> Result<u64> {
        self.shared.wakeup.drain();
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(self.shared.poison_error());
        }
        Ok(self.durable_seq())
    }

    /// Block until `seq` is durable; `Ok(false)` on timeout.
    pub fn wait_durable(&self, seq: u64, timeout: Option<Duration>) -> Result<bool> {
        let shared = &*self.shared;
        let deadline = timeout.map(|t| Instant::now() + t);
        shared.wait_until(deadline, || {
            shared.durable_seq.load(Ordering::SeqCst) >= seq
        })
    }

    pub fn get(&self, object_id: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_many(object_id, &[key])?.pop().flatten())
    }

    pub fn get_many(&self, object_id: &[u8], keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let pending: Vec<Pending> = {
            let mut guard = self.shared.state.lock();
            let state = &mut *guard;
            keys.iter()
                .map(|key| match state.index.get(object_id, key).cloned() {
                    None => Pending::Ready(None),
                    Some(slot) => resolve(state, &slot),
                })
                .collect()
        };
        self.finish_reads(pending)
            .map(|values| values.into_iter().map(|v| v.map(|v| v.to_vec())).collect())
    }

    /// Entries of `object_id` selected by `options`.
    pub fn list(&self, object_id: &[u8], options: &ListOptions) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let (keys, pending): (Vec<Box<[u8]>>, Vec<Pending>) = {
            let mut guard = self.shared.state.lock();
            let state = &mut *guard;
            let entries = state.index.list(object_id, options);
            entries
                .into_iter()
                .map(|(key, slot)| (key, resolve(state, &slot)))
                .unzip()
        };
        let values = self.finish_reads(pending)?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| {
                (
                    key.into_vec(),
                    value.map(|v| v.to_vec()).unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Do the file reads left over by `resolve` (outside the lock), then cache them.
    fn finish_reads(&self, pending: Vec<Pending>) -> Result<Vec<Option<Arc<[u8]>>>> {
        let mut out = Vec::with_capacity(pending.len());
        let mut fresh = Vec::new();
        for item in pending {
            match item {
                Pending::Ready(value) => out.push(value),
                Pending::Read(file, loc) => {
                    let value: Arc<[u8]> = read_at(&file, &loc)?.into();
                    fresh.push((loc, value.clone()));
                    out.push(Some(value));
                }
            }
        }
        if !fresh.is_empty() {
            let mut state = self.shared.state.lock();
            for (loc, value) in fresh {
                state.cache.insert(loc, value);
            }
        }
        Ok(out)
    }

    /// Ids of objects with at least one key, ascending.
    pub fn objects(
        &self,
        prefix: Option<&[u8]>,
        after: Option<&[u8]>,
        limit: Option<usize>,
    ) -> Vec<Vec<u8>> {
        self.shared
            .state
            .lock()
            .index
            .object_ids(prefix, after, limit)
    }

    pub fn get_alarm(&self, object_id: &[u8]) -> Option<i64> {
        self.shared.state.lock().index.alarm(object_id)
    }

    /// Every object with an alarm, and its time (epoch ms).
    pub fn alarms(&self) -> Vec<(Vec<u8>, i64)> {
        let state = self.shared.state.lock();
        state
            .index
            .alarms()
            .iter()
            .map(|(id, when)| (id.to_vec(), *when))
            .collect()
    }

    /// Compact all sealed segments now (blocking).
    pub fn compact(&self) -> Result<()> {
        if self.shared.dir.is_none() {
            return Ok(());
        }
        compact::compact(&self.shared, true)
    }

    pub fn stats(&self) -> Stats {
        let shared = &*self.shared;
        let state = shared.state.lock();
        let file_total: u64 = state.file_bytes.values().sum();
        let dead: u64 = state
            .files
            .keys()
            .map(|id| state.index.dead_bytes(*id))
            .sum();
        let live = if state.active.is_some() {
            file_total.saturating_sub(dead)
        } else {
            state.index.mem_value_bytes() as u64 + state.index.key_bytes() as u64
        };
        Stats {
            objects: state.index.object_count() as u64,
            keys: state.index.key_count() as u64,
            segments: state.files.len() as u64,
            live_bytes: live,
            index_bytes: state.index.heap_bytes() as u64,
            key_bytes: state.index.key_bytes() as u64,
            cache_bytes: state.cache.used() as u64,
            commits: shared.commits.load(Ordering::Relaxed),
            syncs: shared.syncs.load(Ordering::Relaxed),
            compactions: shared.compactions.load(Ordering::Relaxed),
            last_seq: state.last_seq,
            durable_seq: shared.durable_seq.load(Ordering::SeqCst),
        }
    }

    /// Nanosecond durations of the syncs since the last call.
    pub fn take_sync_latencies(&self) -> Vec<u64> {
        std::mem::take(&mut *self.shared.sync_latencies.lock())
    }

    /// Test-only: make the next commit fail with `InjectedFault`, writing nothing.
    pub fn fail_next_commit(&self) {
        self.shared.fail_next.store(true, Ordering::SeqCst);
    }

    /// Flush, sync, stop background threads and release the lock. Idempotent.
    pub fn close(&self) -> Result<()> {
        {
            let mut state = self.shared.state.lock();
            state.closing = true;
            self.shared.work.notify_all();
            self.shared.compact_cv.notify_all();
        }
        let threads = std::mem::take(&mut *self.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
        self.lock.lock().take();
        if self.shared.poisoned.load(Ordering::SeqCst) {
            return Err(self.shared.poison_error());
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn spawn(name: &str, shared: &Arc<Shared>, body: fn(Arc<Shared>)) -> Result<JoinHandle<()>> {
    let shared = shared.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || body(shared))
        .map_err(|e| Error::io(format!("spawn {name} thread"), e))
}

/// Find a value without I/O if possible: memory, cache, or unwritten buffers.
fn resolve(state: &mut State, slot: &Slot) -> Pending {
    let loc = match slot {
        Slot::Mem(value) => return Pending::Ready(Some(Arc::from(&value[..]))),
        Slot::Disk(loc) => *loc,
    };
    if let Some(value) = state.cache.get(&loc) {
        return Pending::Ready(Some(value));
    }
    let inflight = state.inflight.iter().flat_map(|chunks| chunks.iter());
    for chunk in inflight.chain(state.pending.iter()) {
        if let Some(bytes) = chunk.slice(&loc) {
            return Pending::Ready(Some(Arc::from(bytes)));
        }
    }
    match state.files.get(&loc.file) {
        Some(file) => Pending::Read(file.clone(), loc),
        // Unreachable by construction: a location is in a buffer or a file.
        None => Pending::Ready(None),
    }
}

pub(crate) fn read_at(file: &SegFile, loc: &Loc) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; loc.len as usize];
    file.file
        .read_exact_at(&mut buf, loc.off)
        .map_err(|e| Error::io(format!("read {} at {}", file.path.display(), loc.off), e))?;
    Ok(buf)
}

/// `seg-<n>.log` inside `dir`.
pub(crate) fn segment_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("seg-{seg:010}.log"))
}

/// `seg-<n>.hint` inside `dir`.
pub(crate) fn hint_path(dir: &Path, seg: u64) -> PathBuf {
    dir.join(format!("seg-{seg:010}.hint"))
}
