//! Engine settings, durability modes and the counters `stats` reports.

use crate::error::{Error, Result};

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
    /// Open for reading only: recovery changes no file (a torn tail is left in
    /// place and ignored), no thread starts, commits and compaction are refused.
    pub read_only: bool,
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
            read_only: false,
        }
    }
}

/// The longest object id accepted.
pub const MAX_OBJECT_ID_BYTES: usize = 65_535;
/// Smallest segment size accepted (smaller values are raised to it).
pub(crate) const MIN_SEGMENT_BYTES: u64 = 4096;
/// Sync latencies kept for `take_sync_latencies` before old ones are dropped.
pub(crate) const MAX_LATENCY_SAMPLES: usize = 65_536;

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
    /// Groups held back (up to the group delay) for a backlogged consumer.
    pub held_groups: u64,
    pub compactions: u64,
    pub last_seq: u64,
    pub durable_seq: u64,
}
