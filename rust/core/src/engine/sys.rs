//! Thin wrappers over the OS: the data dir lock, the wakeup eventfd, and
//! directory syncs.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crate::error::{Error, Result};

/// An exclusive `flock` on `<data_dir>/LOCK`, released when dropped (or when
/// the process dies, so a crashed process never leaves a stale lock).
pub(crate) struct DirLock {
    _file: File,
}

pub(crate) fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::Locked {
                path: dir.to_path_buf(),
            });
        }
        return Err(Error::io(format!("flock {}", path.display()), err));
    }
    Ok(DirLock { _file: file })
}

/// A non-blocking eventfd: the flusher adds to it once per group commit; the
/// event loop reads (and so clears) it.
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> Result<Self> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io("eventfd", io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN)
        // still leaves the fd readable, which is all a signal needs.
        unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
    }

    pub fn drain(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN (nothing to drain) is fine.
        unsafe { libc::read(self.raw(), (&mut value as *mut u64).cast(), 8) };
    }
}

/// fsync a directory so that created, renamed or removed entries persist.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let file = File::open(dir).map_err(|e| Error::io(format!("open dir {}", dir.display()), e))?;
    file.sync_all()
        .map_err(|e| Error::io(format!("fsync dir {}", dir.display()), e))
}

/// A random 64-bit stamp (no extra dependency: the kernel's entropy).
pub(crate) fn random_u64() -> u64 {
    let mut value: u64 = 0;
    // SAFETY: fills 8 bytes of a live u64.
    let n = unsafe { libc::getrandom((&mut value as *mut u64).cast(), 8, 0) };
    if n != 8 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        value = nanos ^ u64::from(std::process::id()).rotate_left(32);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        assert!(matches!(lock_dir(dir.path()), Err(Error::Locked { .. })));
        drop(first);
        lock_dir(dir.path()).unwrap();
    }

    #[test]
    fn eventfd_signal_and_drain() {
        let efd = EventFd::new().unwrap();
        efd.signal();
        efd.signal();
        efd.drain();
        efd.drain(); // nothing left: must not block
    }
}
