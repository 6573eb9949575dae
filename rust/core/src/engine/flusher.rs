//! The flusher thread: group commit.
//!
//! It takes everything pending in one go, writes it, fdatasyncs (fsync mode),
//! publishes the durable sequence number and signals the eventfd once per
//! group. After a group it spins briefly before sleeping: a single committer
//! usually commits again within microseconds of being woken, and a futex
//! wake-up would add tens of microseconds to every commit.
//!
//! While the consumer (the Python thread) is backlogged, the flusher holds the
//! next group back (as PostgreSQL's `commit_delay`, but driven by the consumer's
//! own report): the consumer says how much already-durable work it has still
//! to start (`Engine::consumer_backlog`). Its callers that commit meanwhile
//! would only queue behind that work once durable, so the flusher lets their
//! group grow until a sync started then would end as that work runs out, and
//! at most `group_delay()` after the previous group started. Fewer, larger
//! groups mean fewer fdatasyncs, and every fdatasync costs the committing
//! side too (on a VM each one is device I/O whose completion interrupts a
//! CPU). A consumer that keeps up (a lone committer, callers waiting on the
//! disk) reports no backlog and never waits for this.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::record::{SegHeader, HEADER_LEN};
use super::{segment_path, sys, Chunk, Durability, SegFile, Shared};
use crate::error::{Error, Result};

/// How long the flusher polls for new work before sleeping on the condvar
/// (overridable with `STEAD_ENGINE_SPIN_US`, read once per process).
const DEFAULT_SPIN_US: u64 = 200;

/// How far ahead of the writes segment files are grown (overridable with
/// `STEAD_ENGINE_PREALLOCATE` in bytes, `0` to disable; read once per process).
const DEFAULT_PREALLOCATE: u64 = 1 << 20;

fn preallocate_bytes() -> u64 {
    static BYTES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        let bytes = std::env::var("STEAD_ENGINE_PREALLOCATE").ok();
        bytes
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_PREALLOCATE)
    })
}

/// The longest the flusher holds a group back for a backlogged consumer,
/// measured from the previous group's start (`STEAD_ENGINE_GROUP_DELAY_US`,
/// read once per process; `0` turns holding off).
const DEFAULT_GROUP_DELAY_US: u64 = 1000;

/// The consumer's backlog is re-read this often while a group is held: it
/// reports after every batch of callers it resumes, and a shrinking backlog
/// ends the hold early.
const HOLD_SLICE: Duration = Duration::from_micros(200);

fn group_delay() -> Duration {
    static DELAY: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| micros_from_env("STEAD_ENGINE_GROUP_DELAY_US", DEFAULT_GROUP_DELAY_US))
}

/// `name` from the environment as microseconds, else `default` (or if unparsable).
fn micros_from_env(name: &str, default: u64) -> Duration {
    let micros = std::env::var(name).ok().and_then(|v| v.parse().ok());
    Duration::from_micros(micros.unwrap_or(default))
}

/// How long to sleep before re-deciding whether to take the next group, or
/// `None` to take it now. Hold while the consumer stays busy for longer than
/// a sync takes (`consumer_busy`: its reported backlog still left), so the
/// group's sync ends before that work runs out, and never past `max_delay`
/// after the previous group started.
fn hold_next_group(
    consumer_busy: Duration,
    sync_time: Duration,
    since_group_start: Duration,
    max_delay: Duration,
) -> Option<Duration> {
    let until_sync_needed = consumer_busy.checked_sub(sync_time)?;
    let until_max_delay = max_delay.checked_sub(since_group_start)?;
    let hold = until_sync_needed.min(until_max_delay).min(HOLD_SLICE);
    (!hold.is_zero()).then_some(hold)
}

/// Hold the next group while the consumer is backlogged (see the module docs).
fn hold_for_consumer(shared: &Shared, group_started: Instant, sync_time: Duration) {
    let mut held = false;
    loop {
        let busy_until = shared.consumer_busy_until_ns.load(Ordering::Relaxed);
        let consumer_busy = Duration::from_nanos(busy_until.saturating_sub(shared.now_ns()));
        let Some(hold) = hold_next_group(
            consumer_busy,
            sync_time,
            group_started.elapsed(),
            group_delay(),
        ) else {
            break;
        };
        if !held {
            held = true;
            shared.held_groups.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(hold);
    }
}

fn spin_time() -> Duration {
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| micros_from_env("STEAD_ENGINE_SPIN_US", DEFAULT_SPIN_US))
}

pub(crate) fn run(shared: Arc<Shared>) {
    let mut current: Option<Current> = None;
    let mut done = None;
    let mut spin = Spin::new(spin_time());
    while let Some(batch) = next_batch(&shared, done.take(), &mut spin) {
        let started = Instant::now();
        let sync_time = match write_batch(&shared, &batch, &mut current) {
            Ok(sync_time) => {
                publish(&shared, &batch, sync_time);
                sync_time
            }
            Err(error) => {
                shared.poison(error.to_string());
                return;
            }
        };
        done = Some(batch);
        if let Some(sync_time) = sync_time {
            hold_for_consumer(&shared, started, sync_time);
        }
    }
    final_sync(&shared);
}

/// Retire the previous group's buffers, wait for pending records and take
/// them all; `None` once closing and drained. One lock round trip per group
/// in the common case: commits contend for the same mutex.
fn next_batch(
    shared: &Shared,
    done: Option<Arc<Vec<Chunk>>>,
    spin: &mut Spin,
) -> Option<Arc<Vec<Chunk>>> {
    let mut state = shared.state.lock();
    state.inflight = None;
    if let Some(spare) = done.and_then(reusable_buffer) {
        state.spare = spare;
    }
    loop {
        if !state.pending.is_empty() {
            shared.has_pending.store(false, Ordering::SeqCst);
            let batch = Arc::new(std::mem::take(&mut state.pending));
            state.inflight = Some(batch.clone());
            return Some(batch);
        }
        if state.closing {
            return None;
        }
        drop(state);
        spin.poll(&shared.has_pending);
        state = shared.state.lock();
        if state.pending.is_empty() && !state.closing {
            state.flusher_sleeping = true;
            let slept = Instant::now();
            shared.work.wait(&mut state);
            state.flusher_sleeping = false;
            spin.woken_after(slept.elapsed());
        }
    }
}

/// Adaptive polling (with `sched_yield`) before sleeping: the budget halves each time a poll
/// finds nothing (an idle engine stops burning a core within a few groups)
/// and returns to the maximum when a sleep turns out shorter than the
/// maximum (a poll would have caught that commit without a futex wake-up).
struct Spin {
    max: Duration,
    budget: Duration,
}

impl Spin {
    fn new(max: Duration) -> Self {
        Spin { max, budget: max }
    }

    /// Poll `flag` for up to the current budget.
    fn poll(&mut self, flag: &AtomicBool) {
        if self.budget.is_zero() {
            return;
        }
        let until = Instant::now() + self.budget;
        while !flag.load(Ordering::Relaxed) {
            if Instant::now() >= until {
                self.budget /= 2;
                if self.budget < Duration::from_micros(2) {
                    self.budget = Duration::ZERO;
                }
                return;
            }
            // Yield rather than spin hard: on a busy 2-core machine the
            // committing thread may be waiting for this very CPU.
            std::thread::yield_now();
        }
    }

    fn woken_after(&mut self, slept: Duration) {
        if slept < self.max {
            self.budget = self.max;
        }
    }
}

/// The largest buffer of a written group, emptied, unless it is huge.
fn reusable_buffer(batch: Arc<Vec<Chunk>>) -> Option<Vec<u8>> {
    let chunks = Arc::try_unwrap(batch).ok()?;
    let mut data = chunks
        .into_iter()
        .map(|c| c.data)
        .max_by_key(Vec::capacity)?;
    data.clear();
    (data.capacity() <= 8 << 20).then_some(data)
}

/// The segment file the flusher is appending to.
struct Current {
    id: u32,
    file: Arc<SegFile>,
    /// File size reserved with `fallocate` (or written) so far.
    allocated: u64,
}

/// Write every chunk at its offset; fdatasync in fsync mode. Returns how long
/// the sync took (`None`: no sync in this mode).
fn write_batch(
    shared: &Shared,
    batch: &[Chunk],
    current: &mut Option<Current>,
) -> Result<Option<Duration>> {
    let fsync = shared.opts.durability == Durability::Fsync;
    let mut touched: Vec<Arc<SegFile>> = Vec::new();
    for chunk in batch {
        let target = match current {
            Some(target) if target.id == chunk.file => target,
            _ => {
                // A roll: make the segment being left durable before the next
                // one exists. Otherwise a power loss could keep the new
                // (durably created) segment while the tail of the old one is
                // only partly on disk: damage before a later segment, which
                // recovery must treat as corruption.
                if fsync {
                    sync_files(&touched)?;
                    touched.clear();
                }
                current.insert(open_segment(shared, chunk)?)
            }
        };
        let end = chunk.start + chunk.data.len() as u64;
        if end > target.allocated && preallocate_bytes() > 0 {
            target.allocated = preallocate(&target.file, target.allocated, end, shared);
        }
        let file = &target.file;
        file.file
            .write_all_at(&chunk.data, chunk.start)
            .map_err(|e| Error::io(format!("write {}", file.path.display()), e))?;
        if !touched.iter().any(|f| Arc::ptr_eq(f, file)) {
            touched.push(file.clone());
        }
    }
    if !fsync {
        return Ok(None);
    }
    let started = Instant::now();
    sync_files(&touched)?;
    Ok(Some(started.elapsed()))
}

fn sync_files(files: &[Arc<SegFile>]) -> Result<()> {
    for file in files {
        file.file
            .sync_data()
            .map_err(|e| Error::io(format!("fdatasync {}", file.path.display()), e))?;
    }
    Ok(())
}

/// Grow the file ahead of the writes, `preallocate_bytes()` at a time (never
/// past the segment size unless a record needs it). Appending inside an
/// already-sized file lets fdatasync skip the inode size update: measurably
/// faster syncs (~15-25% on ext4). The unwritten tail reads as zeros, which
/// recovery treats as the clean end of a segment. Best effort: on error (say,
/// a filesystem without fallocate) the write extends the file as usual.
fn preallocate(file: &SegFile, allocated: u64, end: u64, shared: &Shared) -> u64 {
    let segment = shared.opts.segment_bytes;
    let target = (end + preallocate_bytes()).min(segment.max(end));
    // SAFETY: fallocate on a descriptor we own; mode 0 only allocates and
    // extends, never discards data.
    let rc = unsafe {
        libc::fallocate(
            file.file.as_raw_fd(),
            0,
            allocated as libc::off_t,
            (target - allocated) as libc::off_t,
        )
    };
    if rc == 0 {
        target
    } else {
        end
    }
}

/// The chunk's segment file, created (with its header) on first use.
fn open_segment(shared: &Shared, chunk: &Chunk) -> Result<Current> {
    let existing = shared.state.lock().files.get(&chunk.file).cloned();
    if let Some(file) = existing {
        let allocated = file
            .file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", file.path.display()), e))?
            .len();
        return Ok(Current {
            id: chunk.file,
            file,
            allocated,
        });
    }
    let dir = shared.dir.as_ref().expect("flusher runs for disk engines");
    let path = segment_path(dir, chunk.seg);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    file.write_all_at(&SegHeader::plain().encode(), 0)
        .map_err(|e| Error::io(format!("write header of {}", path.display()), e))?;
    if shared.opts.durability == Durability::Fsync {
        file.sync_data()
            .map_err(|e| Error::io(format!("fdatasync {}", path.display()), e))?;
        sys::sync_dir(dir)?;
    }
    let seg = Arc::new(SegFile {
        file,
        seg: chunk.seg,
        path,
        compacted: false,
        value_crcs: None,
    });
    let mut state = shared.state.lock();
    state.files.insert(chunk.file, seg.clone());
    // Rolls decide on compaction from the files the flusher has opened; when
    // commits run ahead of the flusher, a roll can miss segments not yet
    // opened, so look again once this one is known.
    if shared.opts.compaction
        && !state.compaction_wanted
        && state.compaction_worthwhile(shared.opts.segment_bytes)
    {
        state.compaction_wanted = true;
        shared.compact_cv.notify_one();
    }
    drop(state);
    Ok(Current {
        id: chunk.file,
        file: seg,
        allocated: HEADER_LEN,
    })
}

/// The batch is in the file (and synced if asked): advance the sequence
/// numbers, signal the eventfd once (first: a waiting event loop is the
/// latency that matters) and wake blocking waiters. No engine lock taken.
fn publish(shared: &Shared, batch: &[Chunk], sync_time: Option<Duration>) {
    // Count the sync before anyone can observe its commits as durable, so a
    // caller acknowledged by this group always finds it in the statistics.
    if let Some(elapsed) = sync_time {
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        let mut latencies = shared.sync_latencies.lock();
        if latencies.len() < super::MAX_LATENCY_SAMPLES {
            latencies.push(elapsed.as_nanos() as u64);
        }
    }
    let upto = batch.last().map_or(0, |chunk| chunk.last_seq);
    shared.written_seq.store(upto, Ordering::SeqCst);
    if shared.opts.durability != Durability::None {
        shared.durable_seq.store(upto, Ordering::SeqCst);
        shared.wakeup.signal();
    }
    shared.notify_durable();
}

/// On close: make everything written durable whatever the mode.
fn final_sync(shared: &Shared) {
    let files: Vec<Arc<SegFile>> = {
        let state = shared.state.lock();
        state
            .files
            .values()
            .filter(|f| !f.compacted)
            .cloned()
            .collect()
    };
    for file in files {
        if let Err(error) = file.file.sync_data() {
            eprintln!(
                "stead engine: fdatasync {} on close failed: {error}",
                file.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlogged_consumer_holds_the_next_group_until_a_sync_before_its_backlog_ends() {
        let us = Duration::from_micros;
        // 700 us of backlog, syncs take 250 us: hold for up to 450 us, re-reading every slice.
        assert_eq!(
            hold_next_group(us(700), us(250), us(300), us(1000)),
            Some(HOLD_SLICE)
        );
        assert_eq!(
            hold_next_group(us(400), us(250), us(300), us(1000)),
            Some(us(150))
        );
        // ... but never past the group delay after the previous group started.
        assert_eq!(
            hold_next_group(us(5000), us(250), us(900), us(1000)),
            Some(us(100))
        );
        assert_eq!(hold_next_group(us(5000), us(250), us(1000), us(1000)), None);
        assert_eq!(hold_next_group(us(5000), us(250), us(1200), us(1000)), None);
    }

    #[test]
    fn a_consumer_that_keeps_up_never_holds_a_group() {
        let us = Duration::from_micros;
        // No backlog, or less than a sync takes: the sync should start now.
        assert_eq!(
            hold_next_group(Duration::ZERO, us(250), us(300), us(1000)),
            None
        );
        assert_eq!(hold_next_group(us(250), us(250), us(300), us(1000)), None);
        assert_eq!(hold_next_group(us(100), us(250), us(300), us(1000)), None);
        // Holding turned off.
        assert_eq!(
            hold_next_group(us(5000), us(250), us(0), Duration::ZERO),
            None
        );
    }

    #[test]
    fn spin_budget_halves_when_idle_and_recovers_on_short_sleeps() {
        let idle = AtomicBool::new(false);
        let mut spin = Spin::new(Duration::from_micros(16));
        spin.poll(&idle);
        assert_eq!(spin.budget, Duration::from_micros(8));
        for _ in 0..4 {
            spin.poll(&idle);
        }
        assert_eq!(spin.budget, Duration::ZERO, "an idle flusher stops polling");
        spin.woken_after(Duration::from_millis(5));
        assert_eq!(
            spin.budget,
            Duration::ZERO,
            "long sleeps: polling would not have helped"
        );
        spin.woken_after(Duration::from_micros(3));
        assert_eq!(spin.budget, Duration::from_micros(16));
        let busy = AtomicBool::new(true);
        spin.poll(&busy);
        assert_eq!(
            spin.budget,
            Duration::from_micros(16),
            "work found: budget kept"
        );
    }
}
