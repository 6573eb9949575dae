//! The in-memory index: per object, an ordered map key -> value location, and
//! the alarm of every object that has one.
//!
//! Values are not held here (except in the fully in-memory engine): a slot
//! points into a segment file, so memory grows with the number and size of
//! keys, never with the size of values.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::record::Op;
use crate::FastMap;

/// Where a value lives in a segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Loc {
    pub off: u64,
    pub file: u32,
    pub len: u32,
}

/// A value's home: a file location, or the value itself (in-memory engine).
/// A disk slot also carries its put's share of the record overhead (see
/// `record::overhead_shares`): garbage, with the put, once it is superseded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Disk(Loc, u32),
    Mem(Box<[u8]>),
}

/// Where an op of a record lies: its segment file and its share of the
/// record overhead. `None` for the in-memory engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    pub file: u32,
    pub share: u32,
}

/// An object's alarm and where its set-alarm op lies (file, bytes with its
/// overhead share): garbage once superseded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Alarm {
    pub when: i64,
    pub at: Option<(u32, u32)>,
}

pub(crate) type Keys = BTreeMap<Box<[u8]>, Slot>;

/// The options of a `list` call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub prefix: Option<Vec<u8>>,
    pub start: Option<Vec<u8>>,
    pub start_after: Option<Vec<u8>>,
    pub end: Option<Vec<u8>>,
    pub reverse: bool,
    pub limit: Option<usize>,
}

#[derive(Default)]
pub(crate) struct Index {
    /// Per object, its keys. Hashed: every commit looks its object up, and a
    /// B-tree of ids costs a dozen key comparisons per lookup.
    objects: FastMap<Box<[u8]>, Keys>,
    /// The same object ids in order, for `objects()` and compaction.
    order: BTreeSet<Box<[u8]>>,
    alarms: BTreeMap<Box<[u8]>, Alarm>,
    keys: usize,
    key_bytes: usize,
    /// Heap bytes of the key allocations (kept incrementally for `stats`).
    key_alloc: usize,
    /// Bytes of values held in memory (in-memory engine only).
    mem_values: usize,
    /// Heap bytes of the object id allocations.
    object_alloc: usize,
    /// Garbage bytes per segment file id (drives compaction): superseded
    /// puts and set-alarms, every delete, delete-all and delete-alarm (a
    /// compaction of the sealed segments keeps none of them), each with its
    /// share of the record overhead.
    dead: FastMap<u32, u64>,
}

impl Index {
    /// Apply one op; `slot` is the new value's home for a put, `placed`
    /// where the op lies on disk (to charge it once garbage).
    pub fn apply(
        &mut self,
        object_id: &[u8],
        op: &Op<'_>,
        slot: Option<Slot>,
        placed: Option<Placed>,
    ) {
        match op {
            Op::Put(key, _) => self.put(object_id, key, slot.expect("a put has a slot")),
            Op::Delete(key) => self.delete(object_id, key),
            Op::DeleteAll => self.delete_all(object_id),
            Op::SetAlarm(when) => {
                let at = placed.map(|p| (p.file, op.encoded_len() as u32 + p.share));
                let alarm = Alarm { when: *when, at };
                let old = self.alarms.insert(object_id.into(), alarm);
                self.account_alarm(old);
                return;
            }
            Op::DeleteAlarm => {
                let old = self.alarms.remove(object_id);
                self.account_alarm(old);
            }
        }
        if let (false, Some(placed)) = (matches!(op, Op::Put(..)), placed) {
            self.add_dead(
                placed.file,
                op.encoded_len() as u64 + u64::from(placed.share),
            );
        }
    }

    /// A record without ops: all of it is garbage at once.
    pub fn apply_empty(&mut self, placed: Option<Placed>) {
        if let Some(placed) = placed {
            self.add_dead(placed.file, u64::from(placed.share));
        }
    }

    fn account_alarm(&mut self, old: Option<Alarm>) {
        if let Some((file, bytes)) = old.and_then(|a| a.at) {
            self.add_dead(file, u64::from(bytes));
        }
    }

    fn put(&mut self, object_id: &[u8], key: &[u8], slot: Slot) {
        self.account_add(&slot);
        let keys = match self.objects.get_mut(object_id) {
            Some(keys) => keys,
            None => {
                self.object_alloc += 2 * malloc_size(object_id.len());
                self.order.insert(object_id.into());
                self.objects.entry(object_id.into()).or_default()
            }
        };
        if let Some(old) = keys.get_mut(key) {
            let old = std::mem::replace(old, slot);
            self.account_remove(&old, key.len());
        } else {
            keys.insert(key.into(), slot);
            self.count_key(key, 1);
        }
    }

    fn delete(&mut self, object_id: &[u8], key: &[u8]) {
        let Some(keys) = self.objects.get_mut(object_id) else {
            return;
        };
        let Some(old) = keys.remove(key) else { return };
        let emptied = keys.is_empty();
        self.count_key(key, -1);
        self.account_remove(&old, key.len());
        if emptied {
            self.remove_object(object_id);
        }
    }

    fn delete_all(&mut self, object_id: &[u8]) {
        let old = self.alarms.remove(object_id);
        self.account_alarm(old);
        let Some(keys) = self.remove_object(object_id) else {
            return;
        };
        for (key, old) in &keys {
            self.count_key(key, -1);
            self.account_remove(old, key.len());
        }
    }

    fn remove_object(&mut self, object_id: &[u8]) -> Option<Keys> {
        let keys = self.objects.remove(object_id)?;
        self.order.remove(object_id);
        self.object_alloc -= 2 * malloc_size(object_id.len());
        Some(keys)
    }

    fn count_key(&mut self, key: &[u8], sign: isize) {
        self.keys = self.keys.wrapping_add_signed(sign);
        self.key_bytes = self
            .key_bytes
            .wrapping_add_signed(sign * key.len() as isize);
        self.key_alloc = self
            .key_alloc
            .wrapping_add_signed(sign * malloc_size(key.len()) as isize);
    }

    fn account_add(&mut self, slot: &Slot) {
        if let Slot::Mem(value) = slot {
            self.mem_values += value.len();
        }
    }

    /// The entry at `slot` became garbage: charge its file (the put op and
    /// its share of the record overhead).
    fn account_remove(&mut self, slot: &Slot, key_len: usize) {
        match slot {
            Slot::Disk(loc, share) => {
                self.add_dead(loc.file, put_bytes(loc, key_len, *share));
            }
            Slot::Mem(value) => self.mem_values -= value.len(),
        }
    }

    /// Add an object's whole key map (bulk load from a hint file); the object
    /// must not be in the index yet.
    pub fn load_object(&mut self, object_id: Box<[u8]>, keys: Keys) {
        for (key, slot) in &keys {
            self.count_key(key, 1);
            self.account_add(slot);
        }
        if !keys.is_empty() {
            self.object_alloc += 2 * malloc_size(object_id.len());
            self.order.insert(object_id.clone());
            let replaced = self.objects.insert(object_id, keys);
            debug_assert!(replaced.is_none(), "object loaded twice");
        }
    }

    /// Point `key` at `new` if it still points at `old` (compaction's swap).
    pub fn relocate(
        &mut self,
        object_id: &[u8],
        key: &[u8],
        old: Loc,
        new: Loc,
        share: u32,
    ) -> bool {
        let Some(slot) = self
            .objects
            .get_mut(object_id)
            .and_then(|keys| keys.get_mut(key))
        else {
            return false;
        };
        if !matches!(slot, Slot::Disk(loc, _) if *loc == old) {
            return false;
        }
        *slot = Slot::Disk(new, share);
        true
    }

    /// Point the object's alarm at its copy in a compacted segment (`file`,
    /// `bytes`) if its op still lies in a file `moved` says was compacted.
    pub fn relocate_alarm(
        &mut self,
        object_id: &[u8],
        moved: impl Fn(u32) -> bool,
        file: u32,
        bytes: u32,
    ) -> bool {
        match self.alarms.get_mut(object_id) {
            Some(alarm) if alarm.at.is_some_and(|(f, _)| moved(f)) => {
                alarm.at = Some((file, bytes));
                true
            }
            _ => false,
        }
    }

    pub fn forget_file(&mut self, file: u32) {
        self.dead.remove(&file);
    }

    pub fn add_dead(&mut self, file: u32, bytes: u64) {
        *self.dead.entry(file).or_default() += bytes;
    }

    /// Garbage bytes in `file`.
    pub fn dead_bytes(&self, file: u32) -> u64 {
        self.dead.get(&file).copied().unwrap_or(0)
    }

    /// Bytes of values held in memory (in-memory engine).
    pub fn mem_value_bytes(&self) -> usize {
        self.mem_values
    }

    pub fn get(&self, object_id: &[u8], key: &[u8]) -> Option<&Slot> {
        self.objects.get(object_id)?.get(key)
    }

    /// Objects in id order, starting at `lower`.
    pub fn objects_from<'a>(
        &'a self,
        lower: Bound<&[u8]>,
    ) -> impl Iterator<Item = (&'a Box<[u8]>, &'a Keys)> + 'a {
        let ids = self.order.range::<[u8], _>((lower, Bound::Unbounded));
        ids.map(move |id| (id, &self.objects[&**id]))
    }

    pub fn alarm(&self, object_id: &[u8]) -> Option<i64> {
        self.alarms.get(object_id).map(|a| a.when)
    }

    pub fn alarms(&self) -> &BTreeMap<Box<[u8]>, Alarm> {
        &self.alarms
    }

    /// Add an alarm loaded from a hint file (the object has none yet).
    pub fn load_alarm(&mut self, object_id: Box<[u8]>, alarm: Alarm) {
        self.alarms.insert(object_id, alarm);
    }

    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    pub fn key_count(&self) -> usize {
        self.keys
    }

    /// Entries of one object selected by `options`, in the order to return them.
    pub fn list(&self, object_id: &[u8], options: &ListOptions) -> Vec<(Box<[u8]>, Slot)> {
        let Some(keys) = self.objects.get(object_id) else {
            return Vec::new();
        };
        let Some((lower, upper)) = list_bounds(options) else {
            return Vec::new();
        };
        let range = keys.range::<[u8], _>((as_ref(&lower), as_ref(&upper)));
        let limit = options.limit.unwrap_or(usize::MAX);
        #[allow(clippy::borrowed_box)] // the map yields &Box<[u8]>; cloning it keeps the Box
        let clone = |(k, v): (&Box<[u8]>, &Slot)| (k.clone(), v.clone());
        if options.reverse {
            range.rev().take(limit).map(clone).collect()
        } else {
            range.take(limit).map(clone).collect()
        }
    }

    /// Ids of objects with at least one key or an alarm, ascending.
    pub fn object_ids(
        &self,
        prefix: Option<&[u8]>,
        after: Option<&[u8]>,
        limit: Option<usize>,
    ) -> Vec<Vec<u8>> {
        let prefix = prefix.unwrap_or(b"");
        let lower = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let range = (lower, Bound::Unbounded);
        // Two ordered sources merged: an object may have keys, an alarm, or both.
        let mut with_keys = self
            .order
            .range::<[u8], _>(range)
            .map(|id| &**id)
            .peekable();
        let mut with_alarm = self
            .alarms
            .range::<[u8], _>(range)
            .map(|(id, _)| &**id)
            .peekable();
        let limit = limit.unwrap_or(usize::MAX);
        let mut ids = Vec::new();
        while ids.len() < limit {
            let next = match (with_keys.peek(), with_alarm.peek()) {
                (Some(keyed), Some(alarmed)) if keyed < alarmed => with_keys.next(),
                (Some(keyed), Some(alarmed)) if alarmed < keyed => with_alarm.next(),
                (Some(_), Some(_)) => {
                    with_alarm.next();
                    with_keys.next()
                }
                (Some(_), None) => with_keys.next(),
                (None, _) => with_alarm.next(),
            };
            match next {
                Some(id) if id.starts_with(prefix) => ids.push(id.to_vec()),
                _ => break,
            }
        }
        ids
    }

    /// Key bytes held (the part of the index that is the keys themselves).
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// An estimate of the heap bytes the index uses: key allocations as
    /// malloc rounds them, B-tree node space per entry, object and alarm maps.
    /// In-memory values are not counted (see `live_bytes`).
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<Box<[u8]>>() + std::mem::size_of::<Slot>();
        // B-tree nodes hold up to 11 entries and are about 3/4 full when
        // filled incrementally; parent links and lengths add ~4 bytes/entry.
        let per_entry = entry * 4 / 3 + 4;
        // Hash map slot (~7/8 full, 1 control byte) plus an ordered-set entry.
        let slot = std::mem::size_of::<Box<[u8]>>() + std::mem::size_of::<Keys>() + 1;
        let per_object = slot * 8 / 7 + std::mem::size_of::<Box<[u8]>>() * 4 / 3 + 4;
        let objects = self.object_alloc + self.objects.len() * per_object;
        let alarm = std::mem::size_of::<Box<[u8]>>() + std::mem::size_of::<Alarm>();
        let alarms = self.alarms.len() * (alarm * 4 / 3 + 4 + 48);
        self.key_alloc + self.keys * per_entry + objects + alarms + self.dead.len() * 32
    }
}

/// Bytes of a put op (with its share of the record overhead) in its segment.
pub(crate) fn put_bytes(loc: &Loc, key_len: usize, share: u32) -> u64 {
    Op::Put(&[], &[]).encoded_len() as u64 + key_len as u64 + u64::from(loc.len) + u64::from(share)
}

/// Bytes glibc malloc hands out for a request of `n` bytes (16-byte chunks,
/// 8 bytes of header, 32 bytes minimum); zero-length boxes allocate nothing.
pub(crate) fn malloc_size(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

type OwnedBound = Bound<Vec<u8>>;

fn as_ref(bound: &OwnedBound) -> Bound<&[u8]> {
    match bound {
        Bound::Included(key) => Bound::Included(key.as_slice()),
        Bound::Excluded(key) => Bound::Excluded(key.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The smallest key greater than every key starting with `prefix`, if any.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last != 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// The tighter of two lower bounds.
fn max_lower(a: OwnedBound, b: OwnedBound) -> OwnedBound {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Included(x) | Bound::Excluded(x), Bound::Included(y) | Bound::Excluded(y)) => {
            if x > y || (x == y && matches!(a, Bound::Excluded(_))) {
                a
            } else {
                b
            }
        }
    }
}

/// The tighter of two upper bounds (both exclusive or unbounded here).
fn min_upper(a: OwnedBound, b: OwnedBound) -> OwnedBound {
    match (&a, &b) {
        (Bound::Unbounded, _) => b,
        (_, Bound::Unbounded) => a,
        (Bound::Excluded(x), Bound::Excluded(y)) => {
            if x <= y {
                a
            } else {
                b
            }
        }
        _ => unreachable!("upper bounds are exclusive"),
    }
}

/// The key range of a list call, or `None` when it is empty.
fn list_bounds(options: &ListOptions) -> Option<(OwnedBound, OwnedBound)> {
    let mut lower = Bound::Unbounded;
    let mut upper = Bound::Unbounded;
    if let Some(prefix) = &options.prefix {
        lower = Bound::Included(prefix.clone());
        if let Some(next) = prefix_successor(prefix) {
            upper = Bound::Excluded(next);
        }
    }
    if let Some(start) = &options.start {
        lower = max_lower(lower, Bound::Included(start.clone()));
    }
    if let Some(after) = &options.start_after {
        lower = max_lower(lower, Bound::Excluded(after.clone()));
    }
    if let Some(end) = &options.end {
        upper = min_upper(upper, Bound::Excluded(end.clone()));
    }
    if options.limit == Some(0) {
        return None;
    }
    let empty = match (&lower, &upper) {
        (Bound::Included(lo) | Bound::Excluded(lo), Bound::Excluded(hi)) => lo >= hi,
        _ => false,
    };
    (!empty).then_some((lower, upper))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(value: &[u8]) -> Option<Slot> {
        Some(Slot::Mem(value.into()))
    }

    fn keys_of(entries: Vec<(Box<[u8]>, Slot)>) -> Vec<Vec<u8>> {
        entries.into_iter().map(|(k, _)| k.to_vec()).collect()
    }

    fn sample() -> Index {
        let mut index = Index::default();
        for key in [&b"a"[..], b"ab", b"abc", b"b", b"b\xff", b"c"] {
            index.apply(b"o", &Op::Put(key, b"v"), mem(b"v"), None);
        }
        index
    }

    #[test]
    fn list_bounds_and_prefix() {
        let index = sample();
        let list = |options: ListOptions| keys_of(index.list(b"o", &options));
        let all = list(ListOptions::default());
        assert_eq!(all.len(), 6);
        let opts = ListOptions {
            prefix: Some(b"a".to_vec()),
            ..Default::default()
        };
        assert_eq!(
            list(opts),
            vec![b"a".to_vec(), b"ab".to_vec(), b"abc".to_vec()]
        );
        let opts = ListOptions {
            start: Some(b"ab".to_vec()),
            end: Some(b"b\xff".to_vec()),
            ..Default::default()
        };
        assert_eq!(
            list(opts),
            vec![b"ab".to_vec(), b"abc".to_vec(), b"b".to_vec()]
        );
        let opts = ListOptions {
            start_after: Some(b"ab".to_vec()),
            reverse: true,
            limit: Some(2),
            ..Default::default()
        };
        assert_eq!(list(opts), vec![b"c".to_vec(), b"b\xff".to_vec()]);
        let opts = ListOptions {
            start: Some(b"c".to_vec()),
            end: Some(b"a".to_vec()),
            ..Default::default()
        };
        assert!(list(opts).is_empty());
        let opts = ListOptions {
            prefix: Some(b"b\xff".to_vec()),
            ..Default::default()
        };
        assert_eq!(list(opts), vec![b"b\xff".to_vec()]);
    }

    #[test]
    fn delete_all_clears_keys_and_alarm() {
        let mut index = sample();
        index.apply(b"o", &Op::SetAlarm(5), None, None);
        assert_eq!(index.alarm(b"o"), Some(5));
        index.apply(b"o", &Op::DeleteAll, None, None);
        assert_eq!(index.alarm(b"o"), None);
        assert_eq!(index.key_count(), 0);
        assert_eq!(index.object_count(), 0);
    }

    #[test]
    fn object_ids_include_objects_with_only_an_alarm() {
        let mut index = Index::default();
        index.apply(b"x1", &Op::Put(b"k", b"v"), mem(b"v"), None);
        index.apply(b"x2", &Op::SetAlarm(5), None, None);
        index.apply(b"x3", &Op::Put(b"k", b"v"), mem(b"v"), None);
        index.apply(b"x3", &Op::SetAlarm(5), None, None);
        index.apply(b"y1", &Op::SetAlarm(5), None, None);
        let x = Some(&b"x"[..]);
        let all = vec![b"x1".to_vec(), b"x2".to_vec(), b"x3".to_vec()];
        assert_eq!(index.object_ids(x, None, None), all);
        assert_eq!(
            index.object_ids(x, Some(b"x1"), Some(1)),
            vec![b"x2".to_vec()]
        );
        assert_eq!(index.object_ids(x, Some(b"x2"), None), vec![b"x3".to_vec()]);
        index.apply(b"x2", &Op::DeleteAlarm, None, None);
        let left = vec![b"x1".to_vec(), b"x3".to_vec()];
        assert_eq!(index.object_ids(x, None, None), left);
    }

    #[test]
    fn object_ids_respect_prefix_and_after() {
        let mut index = Index::default();
        for id in [&b"x1"[..], b"x2", b"x3", b"y1"] {
            index.apply(id, &Op::Put(b"k", b"v"), mem(b"v"), None);
        }
        assert_eq!(
            index.object_ids(Some(b"x"), Some(b"x1"), Some(1)),
            vec![b"x2".to_vec()]
        );
        assert_eq!(
            index.object_ids(None, Some(b"x3"), None),
            vec![b"y1".to_vec()]
        );
        assert_eq!(index.object_ids(Some(b"x"), Some(b"a"), None).len(), 3);
    }

    #[test]
    fn dead_bytes_follow_overwrites_with_their_share_of_the_record() {
        let mut index = Index::default();
        let placed = |share| Some(Placed { file: 1, share });
        let put = |index: &mut Index, off, len, share| {
            let slot = Some(Slot::Disk(Loc { off, file: 1, len }, share));
            index.apply(b"o", &Op::Put(b"k", b""), slot, placed(share));
        };
        put(&mut index, 0, 10, 30);
        assert_eq!(index.dead_bytes(1), 0);
        put(&mut index, 100, 5, 29);
        assert_eq!(index.dead_bytes(1), 9 + 1 + 10 + 30);
        index.apply(b"o", &Op::Delete(b"k"), None, placed(29));
        let deleted_put = 9 + 1 + 5 + 29;
        let delete_op = 5 + 1 + 29;
        assert_eq!(index.dead_bytes(1), 50 + deleted_put + delete_op);
    }

    #[test]
    fn alarm_ops_are_garbage_once_superseded_and_deletes_at_once() {
        let mut index = Index::default();
        let placed = |file| Some(Placed { file, share: 20 });
        index.apply(b"o", &Op::SetAlarm(5), None, placed(1));
        assert_eq!(index.dead_bytes(1), 0);
        index.apply(b"o", &Op::SetAlarm(6), None, placed(2));
        assert_eq!(index.dead_bytes(1), 9 + 20);
        index.apply(b"o", &Op::DeleteAll, None, placed(3));
        assert_eq!(
            index.dead_bytes(2),
            9 + 20,
            "delete-all supersedes the alarm"
        );
        assert_eq!(index.dead_bytes(3), 1 + 20);
        index.apply(b"o", &Op::DeleteAlarm, None, placed(3));
        assert_eq!(index.dead_bytes(3), 2 * (1 + 20), "nothing left to delete");
        index.apply_empty(placed(4));
        assert_eq!(index.dead_bytes(4), 20);
    }

    #[test]
    fn a_disk_slot_with_its_share_is_no_larger_than_before() {
        assert_eq!(std::mem::size_of::<Slot>(), 24);
    }
}
