//! stead-core: the hot path of stead, in pure Rust (no Python).
//!
//! - [`engine`]: the log-structured storage engine shared by all objects of a data dir.
//! - [`wheel`]: a hierarchical hashed timer wheel holding alarm deadlines.
//! - [`mailbox`]: per-object FIFO queues that enforce one running event per object.
//! - [`seq_queue`]: waiters released in order as the durable commit watermark advances.

pub mod engine;
pub mod error;
pub mod mailbox;
pub mod seq_queue;
pub mod wheel;

pub use error::{Error, Result};

/// A hash map with a fast per-process seeded hasher (foldhash) instead of
/// SipHash: the keys hashed on the hot path are HMAC-derived object ids,
/// file ids and file locations, none of them shaped by clients.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
