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
//! Submodules: `options` (settings, stats), `state` (what the threads
//! share), `record` (formats), `index`, `cache`, `flusher`, `recovery`,
//! `compact` (compaction and hint files), `sys` (OS glue).

mod cache;
mod compact;
mod flusher;
mod index;
mod options;
mod record;
mod recovery;
mod state;
mod sys;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
pub use index::ListOptions;
use index::{Loc, Placed, Slot};
pub use options::{Durability, Options, Stats, MAX_OBJECT_ID_BYTES};
use options::{MAX_LATENCY_SAMPLES, MIN_SEGMENT_BYTES};
pub use record::Op;
use record::HEADER_LEN;
pub(crate) use state::{Active, Chunk, SegFile, Shared, State};
use sys::DirLock;

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
        if opts.read_only {
            std::fs::read_dir(dir).map_err(|e| Error::io(format!("open {}", dir.display()), e))?;
        } else {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
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
        let on_disk = dir.is_some() && !opts.read_only;
        let compaction = opts.compaction;
        let state = State::new(recovered, opts.cache_bytes);
        let shared = Arc::new(Shared::new(dir, opts, state)?);
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
        if opts.read_only {
            return Err(Error::Closed("the engine was opened read-only".into()));
        }
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
        if shared.fail_next.load(Ordering::Relaxed)
            && shared.fail_next.swap(false, Ordering::SeqCst)
        {
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
                state.index.apply(object_id, op, slot, None);
            }
        }
        state.last_seq = seq;
        state.commits += 1;
        if state.active.is_none() || shared.opts.durability == Durability::None {
            shared.durable_seq.store(seq, Ordering::SeqCst);
        }
        // The flag only changes under the state lock, which we hold: store only
        // when it flips, so a run of commits does not keep stealing the cache
        // line the polling flusher reads.
        if state.active.is_some() && !shared.has_pending.load(Ordering::Relaxed) {
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
            if shared.opts.compaction && state.compaction_worthwhile(shared.opts.segment_bytes) {
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
        if ops.is_empty() {
            let share = record::overhead(object_id) as u32;
            let file = active.file;
            state.index.apply_empty(Some(Placed { file, share }));
        }
        for (op, share) in ops
            .iter()
            .zip(record::overhead_shares(object_id, ops.len()))
        {
            let slot = match op {
                Op::Put(_, value) => {
                    let at = *values.next().expect("one offset per put") as u64;
                    let loc = Loc {
                        off: record_off + at,
                        file: active.file,
                        len: value.len() as u32,
                    };
                    Some(Slot::Disk(loc, share))
                }
                _ => None,
            };
            let placed = Placed {
                file: active.file,
                share,
            };
            state.index.apply(object_id, op, slot, Some(placed));
        }
    }

    /// Why the engine refuses every write (a log write or sync failed), or
    /// `None` while it is healthy.
    pub fn failure(&self) -> Option<String> {
        if !self.shared.poisoned.load(Ordering::SeqCst) {
            return None;
        }
        Some(self.shared.poison_error().to_string())
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

    /// The consumer (the thread draining the wakeup fd) still has `backlog`
    /// of work that is already durable to start. While it is that far behind,
    /// the flusher may hold the next group back (see `flusher`): callers that
    /// would only queue behind that backlog lose nothing by waiting for the
    /// disk instead, and fewer, larger groups make fewer fdatasyncs.
    pub fn consumer_backlog(&self, backlog: Duration) {
        let shared = &*self.shared;
        let until = if backlog.is_zero() {
            0
        } else {
            shared.now_ns() + backlog.as_nanos().min(u64::MAX as u128 / 2) as u64
        };
        shared
            .consumer_busy_until_ns
            .store(until, Ordering::Relaxed);
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

    /// Ids of objects with at least one key or an alarm, ascending.
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
            .map(|(id, alarm)| (id.to_vec(), alarm.when))
            .collect()
    }

    /// Compact all sealed segments now (blocking).
    pub fn compact(&self) -> Result<()> {
        if self.shared.opts.read_only {
            return Err(Error::Closed("the engine was opened read-only".into()));
        }
        if self.shared.dir.is_none() {
            return Ok(());
        }
        compact::compact(&self.shared, true)
    }

    pub fn stats(&self) -> Stats {
        let shared = &*self.shared;
        let state = shared.state.lock();
        let file_total: u64 = state.file_bytes.values().sum();
        // Over the same files as `file_total`: the flusher may not have
        // opened the newest ones yet.
        let dead: u64 = state
            .file_bytes
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
            index_bytes: (state.index.heap_bytes() + value_crc_bytes(&state)) as u64,
            key_bytes: state.index.key_bytes() as u64,
            cache_bytes: state.cache.used() as u64,
            commits: state.commits,
            syncs: shared.syncs.load(Ordering::Relaxed),
            held_groups: shared.held_groups.load(Ordering::Relaxed),
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

/// Heap bytes of the value checksums kept for hint-loaded segments.
fn value_crc_bytes(state: &State) -> usize {
    let crcs = state.files.values().filter_map(|f| f.value_crcs.as_ref());
    crcs.map(compact::ValueCrcs::heap_bytes).sum()
}

/// Find a value without I/O if possible: memory, cache, or unwritten buffers.
fn resolve(state: &mut State, slot: &Slot) -> Pending {
    let loc = match slot {
        Slot::Mem(value) => return Pending::Ready(Some(Arc::from(&value[..]))),
        Slot::Disk(loc, _) => *loc,
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

/// Read a value; checked against its hint checksum when it has one.
pub(crate) fn read_at(file: &SegFile, loc: &Loc) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; loc.len as usize];
    file.file
        .read_exact_at(&mut buf, loc.off)
        .map_err(|e| Error::io(format!("read {} at {}", file.path.display(), loc.off), e))?;
    if let Some(crcs) = &file.value_crcs {
        if !crcs.matches(loc.off, &buf) {
            return Err(Error::Corruption {
                file: file.path.clone(),
                offset: loc.off,
                reason: "value does not match the checksum its hint file recorded".into(),
            });
        }
    }
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
