//! Memory segments backed by `memfd_create`, mapped shared; the registry of this process's
//! segments; and how handles ride along with process-pool messages.
//!
//! # Segments
//!
//! A segment is an anonymous memory file: nothing is named in `/dev/shm`, and the kernel
//! frees it when the last descriptor and the last mapping are gone, in whatever way the
//! processes holding them ended (SIGKILL included). Once sized, a segment is sealed against
//! shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`), so no process can
//! truncate it under another's mapping (which would turn every access into SIGBUS). A segment
//! received from another process is mapped only if it carries those seals.
//!
//! # The registry
//!
//! Every segment a handle uses in this process is in a process-wide map from its
//! [`SegmentId`] (device and inode of the memory file, the same in every process) to a weak
//! reference. Deserialising a handle looks its segment up there: one mapping per segment per
//! process, however many handles and messages name it.
//!
//! # Riding along with process-pool messages
//!
//! Serialising a handle inside a process-pool message ([`collect`]) records its segment. The
//! pool then sends the segment's descriptor (`SCM_RIGHTS`) with the frame to a worker that
//! has not had it yet, and remembers that the worker has it. The worker maps it once
//! ([`Segment::adopt`]) and keeps it until the parent says the segment is released: when the
//! parent's last handle drops, the segment tells every pool it was sent through
//! ([`Holder::released`]), and each pool sends its workers a `Release` frame. A worker sends
//! the descriptors of the segments its results name back the same way.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};
use serde::{Deserialize, Serialize};

/// The seals every segment carries once sized.
const SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Names a segment across processes: the device and inode of its memory file, which every
/// process that holds the file sees alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct SegmentId {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
}

/// Something that sent a segment's descriptor to other processes and must hear when this
/// process drops its last handle to it (a process pool, which then tells its workers).
pub(crate) trait Holder: Send + Sync {
    /// The segment `id` is gone from this process.
    fn released(&self, id: SegmentId);
}

/// A mapping of a sealed memory file.
///
/// The mapping is `len` bytes, readable and writable, shared with every process that maps
/// the same file. It lives until the `Segment` drops.
pub(crate) struct Segment {
    fd: Arc<OwnedFd>,
    ptr: NonNull<u8>,
    len: usize,
    id: SegmentId,
    /// Its number in the registry (0: not registered).
    serial: u64,
    /// The pools that sent this segment to a worker.
    holders: Mutex<Vec<Weak<dyn Holder>>>,
}

// SAFETY: a `Segment` owns a shared mapping and a descriptor; neither is tied to a thread.
// Access to the bytes goes through raw pointers whose users synchronise (atomics, the
// process-shared lock), so sharing the handle between threads is sound.
unsafe impl Send for Segment {}
// SAFETY: as for `Send`: `&Segment` only hands out the raw pointer and the descriptor, and
// `holders` is behind a mutex.
unsafe impl Sync for Segment {}

/// This process's registered segments: id → (serial, segment).
static REGISTRY: Mutex<BTreeMap<SegmentId, (u64, Weak<Segment>)>> = Mutex::new(BTreeMap::new());

/// Serial numbers of registered mappings (0 means unregistered).
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

fn registry() -> std::sync::MutexGuard<'static, BTreeMap<SegmentId, (u64, Weak<Segment>)>> {
    crate::sync::lock(&REGISTRY)
}

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
        let id = Self::id_of(&fd)?;
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
            id,
            serial: 0,
            holders: Mutex::new(Vec::new()),
        })
    }

    /// Puts the segment in this process's registry, where deserialised handles find it.
    pub(crate) fn register(mut self) -> Arc<Self> {
        self.serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        let id = self.id;
        let serial = self.serial;
        let segment = Arc::new(self);
        registry().insert(id, (serial, Arc::downgrade(&segment)));
        segment
    }

    /// The registered segment `id` of this process, if it is alive.
    pub(crate) fn lookup(id: SegmentId) -> Option<Arc<Self>> {
        registry().get(&id).and_then(|(_, weak)| weak.upgrade())
    }

    /// The segment of a received descriptor: the mapping this process already has, or a new
    /// registered one.
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Arc<Self>> {
        let id = Self::id_of(&fd)?;
        if let Some(known) = Self::lookup(id) {
            return Ok(known);
        }
        Ok(Self::open(fd)?.register())
    }

    /// The id of a memory file.
    fn id_of(fd: impl AsFd) -> io::Result<SegmentId> {
        let stat = rustix::fs::fstat(fd)?;
        Ok(SegmentId {
            dev: stat.st_dev,
            ino: stat.st_ino,
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

    /// The segment's name across processes.
    pub(crate) fn id(&self) -> SegmentId {
        self.id
    }

    /// Records that `holder` sent this segment to another process.
    pub(crate) fn add_holder(&self, holder: Weak<dyn Holder>) {
        let mut holders = crate::sync::lock(&self.holders);
        if !holders.iter().any(|h| Weak::ptr_eq(h, &holder)) {
            holders.push(holder);
        }
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.serial != 0 {
            let mut registry = registry();
            // Only our own entry: the segment may have been mapped again since.
            if registry
                .get(&self.id)
                .is_some_and(|(s, _)| *s == self.serial)
            {
                registry.remove(&self.id);
            }
        }
        let holders = std::mem::take(
            self.holders
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for holder in holders.iter().filter_map(Weak::upgrade) {
            holder.released(self.id);
        }
        // SAFETY: `ptr`/`len` are the mapping made in `map`, unmapped only here; every
        // reference into it borrows `self` (or an `Arc` of it), so none outlives this call.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

thread_local! {
    /// The segments named by what this thread is serialising for a process-pool message.
    static OUTGOING: RefCell<Option<Vec<Arc<Segment>>>> = const { RefCell::new(None) };
    /// Why the last handle this thread deserialised was refused (postcard drops the message
    /// of a custom serde error; the pool puts it back into its error).
    static DECODE_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs `encode` and returns what it returned together with the segments of the handles it
/// serialised (each once).
pub(crate) fn collect<R>(encode: impl FnOnce() -> R) -> (R, Vec<Arc<Segment>>) {
    /// Restores the outer collection, also when `encode` panics.
    struct Restore(Option<Option<Vec<Arc<Segment>>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(previous) = self.0.take() {
                OUTGOING.with(|o| *o.borrow_mut() = previous);
            }
        }
    }
    let previous = OUTGOING.with(|o| o.replace(Some(Vec::new())));
    let mut restore = Restore(Some(previous));
    let result = encode();
    let previous = restore.0.take().expect("set above");
    let collected = OUTGOING.with(|o| o.replace(previous)).unwrap_or_default();
    (result, collected)
}

/// Called by a handle's `Serialize`: records the segment when a pool message is being
/// encoded on this thread.
pub(crate) fn note_outgoing(segment: &Arc<Segment>) {
    OUTGOING.with(|o| {
        if let Some(list) = o.borrow_mut().as_mut() {
            if !list.iter().any(|s| s.id == segment.id) {
                list.push(Arc::clone(segment));
            }
        }
    });
}

/// Records why a handle could not be deserialised on this thread.
pub(crate) fn set_decode_error(message: String) {
    DECODE_ERROR.with(|e| *e.borrow_mut() = Some(message));
}

/// Takes the message recorded by [`set_decode_error`], if any.
pub(crate) fn take_decode_error() -> Option<String> {
    DECODE_ERROR.with(|e| e.borrow_mut().take())
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn smoke_shared_between_two_mappings() {
        let a = Segment::create("segment-test", 4096).unwrap();
        let dup = rustix::io::fcntl_dupfd_cloexec(&**a.fd(), 0).unwrap();
        let b = Segment::open(dup).unwrap();
        assert_eq!(a.id(), b.id());
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

    #[test]
    fn adopt_reuses_the_registered_mapping() {
        let a = Segment::create("adopt", 4096).unwrap().register();
        let dup = rustix::io::fcntl_dupfd_cloexec(&**a.fd(), 0).unwrap();
        let b = Segment::adopt(dup).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let id = a.id();
        drop((a, b));
        assert!(Segment::lookup(id).is_none());
    }

    #[test]
    fn collect_nests_and_dedups() {
        let a = Segment::create("collect-a", 4096).unwrap().register();
        let b = Segment::create("collect-b", 4096).unwrap().register();
        let ((), outer) = collect(|| {
            note_outgoing(&a);
            let ((), inner) = collect(|| note_outgoing(&b));
            assert_eq!(inner.len(), 1);
            note_outgoing(&a);
        });
        assert_eq!(outer.len(), 1);
        assert_eq!(outer[0].id(), a.id());
        note_outgoing(&a); // outside a collection: nothing happens
    }

    struct Recorder(Mutex<Vec<SegmentId>>);
    impl Holder for Recorder {
        fn released(&self, id: SegmentId) {
            self.0.lock().unwrap().push(id);
        }
    }

    #[test]
    fn holders_hear_of_the_last_drop() {
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        let a = Segment::create("holder", 4096).unwrap().register();
        let weak: Weak<dyn Holder> = Arc::downgrade(&recorder) as Weak<dyn Holder>;
        a.add_holder(weak.clone());
        a.add_holder(weak);
        let id = a.id();
        let a2 = Arc::clone(&a);
        drop(a);
        assert!(recorder.0.lock().unwrap().is_empty());
        drop(a2);
        assert_eq!(*recorder.0.lock().unwrap(), [id]);
    }
}
