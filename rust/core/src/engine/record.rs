//! The on-disk formats: segment header and batch records.
//!
//! A segment file starts with a 32-byte header, then holds records back to
//! back. A record is one atomic batch:
//!
//! ```text
//! magic u32 | body_len u32 | crc32c(body) u32 | body
//! body = seq u64 | obj_len u32 | obj | n_ops u32 | ops
//! op   = 1 put    key_len u32 | val_len u32 | key | value
//!      | 2 delete key_len u32 | key
//!      | 3 delete-all
//!      | 4 set-alarm i64 (epoch ms)
//!      | 5 delete-alarm
//! ```
//!
//! All integers are little endian. The magic lets recovery tell a torn tail
//! from damage in the middle of the log by looking for valid records after a
//! bad one.

/// First bytes of every segment file.
pub(crate) const SEG_MAGIC: &[u8; 8] = b"STEADSEG";
pub(crate) const SEG_VERSION: u32 = 1;
/// Size of the segment header; the first record starts here.
pub(crate) const HEADER_LEN: u64 = 32;
/// Header flag: the segment is the output of a compaction and holds the
/// complete state of every segment numbered up to and including its own.
pub(crate) const FLAG_COMPACTED: u32 = 1;

pub(crate) const REC_MAGIC: u32 = 0x5354_5243;
pub(crate) const REC_HEADER: usize = 12;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_DELETE_ALL: u8 = 3;
const TAG_SET_ALARM: u8 = 4;
const TAG_DELETE_ALARM: u8 = 5;

/// The header at the start of each segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegHeader {
    pub flags: u32,
    /// For a compacted segment: the highest sequence number it covers.
    pub base_seq: u64,
    /// For a compacted segment: a random stamp its hint file must repeat.
    pub stamp: u64,
}

impl SegHeader {
    pub fn plain() -> Self {
        SegHeader {
            flags: 0,
            base_seq: 0,
            stamp: 0,
        }
    }

    pub fn compacted(&self) -> bool {
        self.flags & FLAG_COMPACTED != 0
    }

    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[..8].copy_from_slice(SEG_MAGIC);
        out[8..12].copy_from_slice(&SEG_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.base_seq.to_le_bytes());
        out[24..32].copy_from_slice(&self.stamp.to_le_bytes());
        out
    }

    /// `None` if the bytes are not a header this version understands.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER_LEN as usize || &bytes[..8] != SEG_MAGIC {
            return None;
        }
        if u32_at(bytes, 8) != SEG_VERSION {
            return None;
        }
        Some(SegHeader {
            flags: u32_at(bytes, 12),
            base_seq: u64_at(bytes, 16),
            stamp: u64_at(bytes, 24),
        })
    }
}

/// One operation of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Put(&'a [u8], &'a [u8]),
    Delete(&'a [u8]),
    DeleteAll,
    SetAlarm(i64),
    DeleteAlarm,
}

impl Op<'_> {
    /// Bytes of the op inside its record.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Op::Put(key, value) => 9 + key.len() + value.len(),
            Op::Delete(key) => 5 + key.len(),
            Op::DeleteAll | Op::DeleteAlarm => 1,
            Op::SetAlarm(_) => 9,
        }
    }
}

/// Total bytes of the record for this batch, header included.
pub(crate) fn record_len(object_id: &[u8], ops: &[Op<'_>]) -> usize {
    REC_HEADER + 8 + 4 + object_id.len() + 4 + ops.iter().map(Op::encoded_len).sum::<usize>()
}

/// Each op's share of the record overhead (header, seq, object id, op
/// count), which is garbage once all its ops are: split evenly, the first
/// ops taking the remainder, so the shares add up to the overhead. With no
/// op (an empty batch), the caller charges the whole overhead at once.
pub(crate) fn overhead_shares(object_id: &[u8], n_ops: usize) -> impl Iterator<Item = u32> {
    let overhead = overhead(object_id);
    let n = n_ops.max(1) as u64;
    (0..n_ops as u64).map(move |i| (overhead / n + u64::from(i < overhead % n)) as u32)
}

/// Bytes of a record that belong to no op.
pub(crate) fn overhead(object_id: &[u8]) -> u64 {
    record_len(object_id, &[]) as u64
}

/// Append the record to `buf`; push, for each put in order, the offset of its
/// value relative to the record's first byte onto `value_offsets`.
pub(crate) fn encode(
    buf: &mut Vec<u8>,
    seq: u64,
    object_id: &[u8],
    ops: &[Op<'_>],
    value_offsets: &mut Vec<usize>,
) {
    let start = buf.len();
    let total = record_len(object_id, ops);
    buf.reserve(total);
    buf.extend_from_slice(&REC_MAGIC.to_le_bytes());
    buf.extend_from_slice(&((total - REC_HEADER) as u32).to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]); // crc, filled in below
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(object_id.len() as u32).to_le_bytes());
    buf.extend_from_slice(object_id);
    buf.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for op in ops {
        match op {
            Op::Put(key, value) => {
                buf.push(TAG_PUT);
                buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
                buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
                buf.extend_from_slice(key);
                value_offsets.push(buf.len() - start);
                buf.extend_from_slice(value);
            }
            Op::Delete(key) => {
                buf.push(TAG_DELETE);
                buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
                buf.extend_from_slice(key);
            }
            Op::DeleteAll => buf.push(TAG_DELETE_ALL),
            Op::SetAlarm(when) => {
                buf.push(TAG_SET_ALARM);
                buf.extend_from_slice(&when.to_le_bytes());
            }
            Op::DeleteAlarm => buf.push(TAG_DELETE_ALARM),
        }
    }
    debug_assert_eq!(buf.len() - start, total);
    let crc = crc32c::crc32c(&buf[start + REC_HEADER..]);
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes at some offset are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BadRecord {
    /// The record would extend past the end of the available bytes.
    Truncated,
    BadMagic,
    BadCrc,
    /// The checksum matched but the body does not parse.
    Malformed(&'static str),
}

impl BadRecord {
    pub fn describe(&self) -> String {
        match self {
            BadRecord::Truncated => "record extends past the end of the file".into(),
            BadRecord::BadMagic => "bad record magic".into(),
            BadRecord::BadCrc => "checksum mismatch".into(),
            BadRecord::Malformed(why) => format!("malformed record: {why}"),
        }
    }
}

/// A decoded record borrowing from the buffer it was parsed from.
#[derive(Debug)]
pub(crate) struct Record<'a> {
    pub seq: u64,
    pub object_id: &'a [u8],
    /// Each op with, for puts, the value's offset relative to the record start.
    pub ops: Vec<(Op<'a>, usize)>,
    /// Bytes the record occupies, header included.
    pub len: usize,
}

/// Parse the record at the start of `bytes`.
/// The length a record starting at `bytes` declares (header included), if
/// its magic is intact; it may run past the bytes there are (a torn write).
pub(crate) fn declared_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 8 || u32_at(bytes, 0) != REC_MAGIC {
        return None;
    }
    Some(REC_HEADER + u32_at(bytes, 4) as usize)
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Record<'_>, BadRecord> {
    if bytes.len() < REC_HEADER {
        return Err(BadRecord::Truncated);
    }
    if u32_at(bytes, 0) != REC_MAGIC {
        return Err(BadRecord::BadMagic);
    }
    let body_len = u32_at(bytes, 4) as usize;
    let total = REC_HEADER + body_len;
    if bytes.len() < total {
        return Err(BadRecord::Truncated);
    }
    if crc32c::crc32c(&bytes[REC_HEADER..total]) != u32_at(bytes, 8) {
        return Err(BadRecord::BadCrc);
    }
    let mut cursor = Cursor {
        bytes: &bytes[..total],
        pos: REC_HEADER,
    };
    let seq = cursor.u64()?;
    let obj_len = cursor.u32()? as usize;
    let object_id = cursor.take(obj_len)?;
    let n_ops = cursor.u32()? as usize;
    let mut ops = Vec::with_capacity(n_ops.min(body_len));
    for _ in 0..n_ops {
        ops.push(cursor.op()?);
    }
    if cursor.pos != total {
        return Err(BadRecord::Malformed("trailing bytes"));
    }
    Ok(Record {
        seq,
        object_id,
        ops,
        len: total,
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadRecord> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(BadRecord::Malformed("field past record end"))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, BadRecord> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, BadRecord> {
        Ok(u32_at(self.take(4)?, 0))
    }

    fn u64(&mut self) -> Result<u64, BadRecord> {
        Ok(u64_at(self.take(8)?, 0))
    }

    fn op(&mut self) -> Result<(Op<'a>, usize), BadRecord> {
        match self.u8()? {
            TAG_PUT => {
                let key_len = self.u32()? as usize;
                let val_len = self.u32()? as usize;
                let key = self.take(key_len)?;
                let at = self.pos;
                Ok((Op::Put(key, self.take(val_len)?), at))
            }
            TAG_DELETE => {
                let key_len = self.u32()? as usize;
                Ok((Op::Delete(self.take(key_len)?), 0))
            }
            TAG_DELETE_ALL => Ok((Op::DeleteAll, 0)),
            TAG_SET_ALARM => Ok((Op::SetAlarm(self.u64()? as i64), 0)),
            TAG_DELETE_ALARM => Ok((Op::DeleteAlarm, 0)),
            _ => Err(BadRecord::Malformed("unknown op tag")),
        }
    }
}

pub(crate) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_ops() -> Vec<Op<'static>> {
        vec![
            Op::DeleteAll,
            Op::Delete(b"gone"),
            Op::Put(b"k1", b"value one"),
            Op::Put(b"k2", b""),
            Op::SetAlarm(-5),
            Op::DeleteAlarm,
        ]
    }

    #[test]
    fn round_trip_keeps_ops_and_value_offsets() {
        let ops = sample_ops();
        let mut buf = vec![0xAA; 3];
        let mut offsets = Vec::new();
        encode(&mut buf, 42, b"obj", &ops, &mut offsets);
        assert_eq!(buf.len() - 3, record_len(b"obj", &ops));
        let record = decode(&buf[3..]).expect("valid");
        assert_eq!(record.seq, 42);
        assert_eq!(record.object_id, b"obj");
        assert_eq!(record.len, buf.len() - 3);
        let decoded: Vec<Op<'_>> = record.ops.iter().map(|(op, _)| *op).collect();
        assert_eq!(decoded, ops);
        let put_offsets: Vec<usize> = record
            .ops
            .iter()
            .filter(|(op, _)| matches!(op, Op::Put(..)))
            .map(|(_, at)| *at)
            .collect();
        assert_eq!(put_offsets, offsets);
        assert_eq!(&buf[3 + offsets[0]..3 + offsets[0] + 9], b"value one");
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, b"o", &sample_ops(), &mut Vec::new());
        for i in 0..buf.len() {
            let mut damaged = buf.clone();
            damaged[i] ^= 0x10;
            assert!(decode(&damaged).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn short_input_is_truncated() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, b"o", &sample_ops(), &mut Vec::new());
        for cut in 0..buf.len() {
            assert_eq!(
                decode(&buf[..cut]).unwrap_err(),
                BadRecord::Truncated,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn overhead_shares_add_up_to_the_record_minus_its_ops() {
        for n in 1..40 {
            let ops = vec![Op::Put(b"k", b"v"); n];
            let shares: Vec<u32> = overhead_shares(b"object", n).collect();
            let ops_len: usize = ops.iter().map(Op::encoded_len).sum();
            let total: u64 = shares.iter().map(|s| u64::from(*s)).sum();
            assert_eq!(total as usize + ops_len, record_len(b"object", &ops));
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
        }
        assert_eq!(overhead_shares(b"o", 0).count(), 0);
    }

    #[test]
    fn header_round_trip() {
        let header = SegHeader {
            flags: FLAG_COMPACTED,
            base_seq: 9,
            stamp: 77,
        };
        assert_eq!(SegHeader::decode(&header.encode()), Some(header));
        assert!(SegHeader::decode(&[0u8; 32]).is_none());
    }
}
