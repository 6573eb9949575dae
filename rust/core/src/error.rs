//! The one error type of stead-core. `rust/bindings` maps every variant to a
//! class of `stead.errors`, so adding a variant means adding its mapping there.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Every failure the core can report.
#[derive(Debug)]
pub enum Error {
    /// An I/O operation failed (write, fsync, read, open). Maps to `StorageError`.
    Io { context: String, source: io::Error },
    /// A record in the middle of the log is damaged. Maps to `CorruptionError`.
    Corruption {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Another process holds the data dir's lock. Maps to `DataDirLockedError`.
    Locked { path: PathBuf },
    /// A key, value or batch exceeds a configured limit. Maps to `LimitError`.
    Limit(String),
    /// The test-only fault switch failed this commit. Maps to `StorageError`.
    InjectedFault,
    /// The engine was closed, or poisoned by an earlier failed flush. Maps to `StorageError`.
    Closed(String),
    /// A mailbox queue is at its bound. Maps to `OverloadedError`.
    Overloaded { pending: usize },
    /// A caller passed a value the core cannot accept. Maps to `ValueError`.
    InvalidArgument(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Corruption {
                file,
                offset,
                reason,
            } => {
                write!(
                    f,
                    "corrupt record in {} at offset {offset}: {reason}",
                    file.display()
                )
            }
            Error::Locked { path } => write!(
                f,
                "data dir {} is locked by another process (one process per data dir)",
                path.display()
            ),
            Error::Limit(msg) => write!(f, "{msg}"),
            Error::InjectedFault => write!(f, "commit failed (injected fault)"),
            Error::Closed(why) => write!(f, "storage engine unavailable: {why}"),
            Error::Overloaded { pending } => {
                write!(f, "object overloaded: {pending} events already queued")
            }
            Error::InvalidArgument(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
