//! Memory segments backed by `memfd_create`, mapped shared.
//!
//! A segment is an anonymous memory file: nothing is named in `/dev/shm`, and the kernel
//! frees it when the last descriptor and the last mapping are gone, in whatever way the
//! processes holding them ended (a SIGKILL included). Once sized, a segment is sealed
//! against shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), so no process
//! can truncate it under another's mapping (which would turn every access into SIGBUS).
//! A segment received from another process is mapped only if it carries those seals.
//!
//! Descriptors travel between processes with the frames of the process pool (`SCM_RIGHTS`).

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

/// The seals every segment carries once sized.
const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A mapping of a sealed memory file.
///
/// The mapping is `len` bytes, readable and writable, shared with every process that maps
/// the same file. It lives until the `Segment` drops.
#[derive(Debug)]
pub(crate) struct Segment {
    fd: Arc<OwnedFd>,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Segment` owns a shared mapping and a descriptor; neither is tied to a thread.
// Access to the bytes goes through raw pointers whose users synchronise (atomics, the
// process-shared lock), so sharing the handle between threads is sound.
unsafe impl Send for Segment {}
// SAFETY: as for `Send`: `&Segment` only hands out the raw pointer and the descriptor.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a zero-filled segment of `len` bytes (at least 1), sealed, and maps it.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Self> {
        let len = len.max(1);
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SEALS)?;
        Self::map(fd, len)
    }

    /// Maps a segment another process created (received as a descriptor). Refuses a file
    /// that is not sealed against resizing.
    pub(crate) fn open(fd: OwnedFd) -> io::Result<Self> {
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a shared-memory segment must be sealed against resizing",
            ));
        }
        let len = rustix::fs::fstat(&fd)?.st_size as usize;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "an empty segment",
            ));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel (null hint) of a file we hold, `len`
        // bytes, which the file has and keeps (it is sealed against shrinking); nothing else
        // in this process refers to that address range.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )?
        };
        Ok(Self {
            fd: Arc::new(fd),
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
        })
    }

    /// The start of the mapping: page-aligned, valid for `len()` bytes while `self` lives.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The size of the mapping in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The memory file, to send to another process.
    pub(crate) fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `map`, unmapped only here; every
        // reference into it borrows `self`, so none outlives this call.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn smoke_shared_between_two_mappings() {
        let a = Segment::create("segment-test", 4096).unwrap();
        let dup = rustix::io::fcntl_dupfd_cloexec(&**a.fd(), 0).unwrap();
        let b = Segment::open(dup).unwrap();
        assert_eq!(b.len(), 4096);
        // SAFETY: both mappings are 4096 bytes; this thread is the only user.
        unsafe {
            a.as_ptr().add(100).write(42);
            assert_eq!(b.as_ptr().add(100).read(), 42);
        }
    }

    #[test]
    fn unsealed_files_are_refused() {
        let fd = rustix::fs::memfd_create("unsealed", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(Segment::open(fd).is_err());
    }

    #[test]
    fn sealed_against_resizing() {
        let a = Segment::create("sealed", 4096).unwrap();
        assert!(rustix::fs::ftruncate(&**a.fd(), 0).is_err());
        assert!(rustix::fs::ftruncate(&**a.fd(), 8192).is_err());
    }
}
