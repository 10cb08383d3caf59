//! Shared memory between the processes of a [`ProcessPool`](crate::ProcessPool):
//! [`Value<T>`] and [`Array<T>`], each with a process-shared lock that survives a dying
//! holder, in the spirit of Python's `multiprocessing.Value('d', 0.0)` and
//! `Array('i', range(10))`; [`Lock`], that lock on its own (`multiprocessing.Lock`); and
//! [`Queue<T>`], a bounded multi-producer multi-consumer queue of serde values
//! (`multiprocessing.Queue`) that a producer or consumer killed at any instruction never
//! corrupts or blocks.
//!
//! - The memory is a `memfd_create` file: nothing is named in `/dev/shm`, nothing leaks
//!   there, and the kernel frees it when the last handle in the last process is gone, even
//!   if processes were killed. It is sealed against resizing once made.
//! - Handles are ordinary job arguments and results. [`Clone`] gives another handle to the
//!   same memory; serialising one inside a pool message sends the memory's descriptor along
//!   to a worker that does not have it yet, which maps it once and keeps the mapping. It
//!   does not matter whether the handle was made before or after the workers started, or in
//!   a worker (returned to the parent as a result).
//! - The lock is a robust, process-shared `pthread` mutex. When a holder dies (or panics)
//!   while holding it, the next locker gets a [`PoisonError`](std::sync::PoisonError), as
//!   with `std::sync::Mutex`, from which it can take the data anyway and
//!   [`clear_poison`](Value::clear_poison); never a deadlock. **Poisoned data may be
//!   half-written**: the holder stopped in the middle of its update.
//! - [`Value`] of an integer also has lock-free atomic operations
//!   ([`fetch_add`](Value::fetch_add), [`compare_exchange`](Value::compare_exchange),
//!   [`load`](Value::load), [`store`](Value::store)) that do not take the lock: `v.value += 1`
//!   is atomic here (CPython's is not, cpython#106691).
//!
//! Types stored in shared memory implement [`Pod`]: plain data, with no pointers.
//!
//! # Examples
//!
//! ```
//! use parpool::ProcessPool;
//! use parpool::shm::{Array, Value};
//!
//! fn fill((v, a): (Value<f64>, Array<i32>)) {
//!     v.set(3.1415927).unwrap();
//!     a.lock().unwrap().iter_mut().for_each(|x| *x = -*x);
//! }
//!
//! let pool = ProcessPool::new(2)?;
//! let num = Value::new(0.0f64)?;
//! let arr = Array::from_slice(&(0..10).collect::<Vec<i32>>())?;
//! pool.submit(fill, (num.clone(), arr.clone()))?.get()?;
//! assert_eq!(num.get()?, 3.1415927);
//! assert_eq!(arr.to_vec()?, (0..10).map(|x| -x).collect::<Vec<i32>>());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A handle deserialised where its memory never came along is an error, not a guess:
//!
//! ```
//! use parpool::shm::Value;
//!
//! let bytes = postcard::to_allocvec(&Value::new(1u32)?).unwrap();
//! // The value (and with it the memory) is gone: the bytes name nothing any more.
//! assert!(postcard::from_bytes::<Value<u32>>(&bytes).is_err());
//! # Ok::<(), parpool::ShmError>(())
//! ```

mod array;
mod error;
mod lock;
mod queue;
pub(crate) mod segment;
mod value;

use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::sync::Arc;
use std::sync::atomic::{
    AtomicI8, AtomicI16, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU16, AtomicU32,
    AtomicU64, AtomicUsize, Ordering,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use array::{Array, ArrayGuard};
pub use error::ShmError;
pub use lock::{Lock, LockGuard};
pub use queue::{GetError, PutError, Queue};
pub use value::{Value, ValueGuard};

use lock::SharedLock;
use segment::{Segment, SegmentId};

/// Plain old data: a type whose values can live in memory shared with other processes.
///
/// Implemented for the integer and floating-point types and for arrays of `Pod` types.
///
/// # Safety
///
/// Implement it only for a type that
///
/// - is valid for every bit pattern (another process may have written the bytes; zeroed
///   memory must be a valid value too), so not `bool`, `char`, enums or references;
/// - holds no pointer or reference (an address means nothing in another process), and no
///   resource that `Drop` would free;
/// - is `Copy`, typically a `#[repr(C)]` struct of `Pod` fields.
///
/// # Examples
///
/// ```
/// use parpool::shm::{Pod, Value};
///
/// #[derive(Clone, Copy, Debug, PartialEq)]
/// #[repr(C)]
/// struct Point {
///     x: f64,
///     y: f64,
/// }
///
/// // SAFETY: two f64s: every bit pattern is a valid Point, and it holds no pointer.
/// unsafe impl Pod for Point {}
///
/// let p = Value::new(Point { x: 1.0, y: 2.0 })?;
/// p.update(|p| p.x += 1.0)?;
/// assert_eq!(p.get()?, Point { x: 2.0, y: 2.0 });
/// # Ok::<(), parpool::ShmError>(())
/// ```
pub unsafe trait Pod: Copy + Send + Sync + 'static {
    /// Reads a value from shared memory. Integer types read atomically, so that a read under
    /// the lock and a lock-free atomic operation on the same value are not a data race.
    ///
    /// # Safety
    ///
    /// `ptr` is valid for reads and aligned, inside a live mapping.
    #[doc(hidden)]
    unsafe fn read_shared(ptr: *const Self) -> Self {
        // SAFETY: the caller's contract; every bit pattern is a valid `Self`.
        unsafe { ptr.read() }
    }

    /// Writes a value to shared memory (atomically for integer types, see `read_shared`).
    ///
    /// # Safety
    ///
    /// `ptr` is valid for writes and aligned, inside a live mapping.
    #[doc(hidden)]
    unsafe fn write_shared(ptr: *mut Self, value: Self) {
        // SAFETY: the caller's contract.
        unsafe { ptr.write(value) }
    }
}

/// Integer types, which a [`Value`] can update without its lock
/// ([`fetch_add`](Value::fetch_add) and friends). Sealed: implemented for the primitive
/// integers up to 64 bits.
///
/// # Examples
///
/// ```
/// use parpool::shm::{AtomicInt, Value};
///
/// fn bump<T: AtomicInt>(v: &Value<T>, by: T) -> T {
///     v.fetch_add(by)
/// }
///
/// let v = Value::new(1i32)?;
/// assert_eq!(bump(&v, 2), 1);
/// assert_eq!(v.load(), 3);
/// # Ok::<(), parpool::ShmError>(())
/// ```
pub trait AtomicInt: Pod + sealed::Atomic {}

mod sealed {
    /// The atomic operations behind [`AtomicInt`](super::AtomicInt).
    pub trait Atomic: Sized {
        /// # Safety
        ///
        /// `ptr` is valid and aligned for the matching atomic type, in a live mapping.
        unsafe fn fetch_add(ptr: *mut Self, value: Self) -> Self;
        /// # Safety
        ///
        /// As `fetch_add`.
        unsafe fn compare_exchange(ptr: *mut Self, current: Self, new: Self) -> Result<Self, Self>;
        /// # Safety
        ///
        /// As `fetch_add`.
        unsafe fn load(ptr: *mut Self) -> Self;
        /// # Safety
        ///
        /// As `fetch_add`.
        unsafe fn store(ptr: *mut Self, value: Self);
    }
}

// SAFETY: floating-point numbers are valid for every bit pattern and hold no pointer.
unsafe impl Pod for f32 {}
// SAFETY: as for f32.
unsafe impl Pod for f64 {}
// SAFETY: 128-bit integers are valid for every bit pattern and hold no pointer.
unsafe impl Pod for i128 {}
// SAFETY: as for i128.
unsafe impl Pod for u128 {}
// SAFETY: an array of plain data is plain data.
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

macro_rules! atomic_ints {
    ($($int:ty => $atomic:ty),* $(,)?) => {$(
        // SAFETY: integers are valid for every bit pattern and hold no pointer.
        unsafe impl Pod for $int {
            unsafe fn read_shared(ptr: *const Self) -> Self {
                // SAFETY: the caller passes a valid pointer into a live mapping, aligned for
                // the atomic type (a `Value` keeps its data at a 128-byte boundary).
                unsafe { <$atomic>::from_ptr(ptr.cast_mut()) }.load(Ordering::Relaxed)
            }

            unsafe fn write_shared(ptr: *mut Self, value: Self) {
                // SAFETY: as in `read_shared`.
                unsafe { <$atomic>::from_ptr(ptr) }.store(value, Ordering::Relaxed)
            }
        }

        // SeqCst throughout: `Value`'s lock-free operations are documented as sequentially
        // consistent; they pair with whatever other threads and processes do to the value.
        impl sealed::Atomic for $int {
            unsafe fn fetch_add(ptr: *mut Self, value: Self) -> Self {
                // SAFETY: the caller's contract.
                unsafe { <$atomic>::from_ptr(ptr) }.fetch_add(value, Ordering::SeqCst)
            }

            unsafe fn compare_exchange(
                ptr: *mut Self,
                current: Self,
                new: Self,
            ) -> Result<Self, Self> {
                // SAFETY: the caller's contract.
                unsafe { <$atomic>::from_ptr(ptr) }.compare_exchange(
                    current,
                    new,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
            }

            unsafe fn load(ptr: *mut Self) -> Self {
                // SAFETY: the caller's contract.
                unsafe { <$atomic>::from_ptr(ptr) }.load(Ordering::SeqCst)
            }

            unsafe fn store(ptr: *mut Self, value: Self) {
                // SAFETY: the caller's contract.
                unsafe { <$atomic>::from_ptr(ptr) }.store(value, Ordering::SeqCst)
            }
        }

        impl AtomicInt for $int {}
    )*};
}

atomic_ints! {
    i8 => AtomicI8, i16 => AtomicI16, i32 => AtomicI32, i64 => AtomicI64, isize => AtomicIsize,
    u8 => AtomicU8, u16 => AtomicU16, u32 => AtomicU32, u64 => AtomicU64, usize => AtomicUsize,
}

/// Where the data starts in a segment: after the header, aligned for any `Pod` type with an
/// alignment up to 128 bytes.
const DATA: usize = 128;

/// `b"parpool1"`: marks a segment made by this module.
const MAGIC: u64 = u64::from_le_bytes(*b"parpool1");

/// The start of every `Value`/`Array` segment.
#[repr(C)]
struct Header {
    magic: u64,
    /// Random at creation: a handle names the segment by inode *and* token, so a stale
    /// handle never matches a later segment that reuses the inode number.
    token: u64,
    /// Which `T` the segment holds (`type_hash`).
    type_hash: u64,
    /// How many `T`s.
    len: u64,
    lock: SharedLock,
}

const _: () = assert!(size_of::<Header>() <= DATA);

/// FNV-1a of the type's name, size and alignment: the same in every process of one program.
fn type_hash<T>() -> u64 {
    let name = std::any::type_name::<T>().bytes();
    let shape = (size_of::<T>() as u64).to_le_bytes().into_iter();
    let align = (align_of::<T>() as u64).to_le_bytes().into_iter();
    name.chain(shape)
        .chain(align)
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

fn new_token() -> u64 {
    use std::hash::BuildHasher;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    std::collections::hash_map::RandomState::new().hash_one((
        std::process::id(),
        now,
        COUNTER.fetch_add(1, Ordering::Relaxed),
    ))
}

/// How a handle travels: which segment, and what it must hold.
#[derive(Debug, Serialize, Deserialize)]
struct HandleWire {
    id: SegmentId,
    token: u64,
    type_hash: u64,
    len: u64,
}

/// An untyped segment: a [`Header`], then a data area at [`DATA`]. Every handle of this
/// module ([`Value`], [`Array`], [`Lock`], [`Queue`]) is one, with its own `kind` (the
/// header's `type_hash`) so that a handle of one kind never opens a segment of another.
struct RawBlock {
    segment: Arc<Segment>,
}

impl Clone for RawBlock {
    fn clone(&self) -> Self {
        Self {
            segment: Arc::clone(&self.segment),
        }
    }
}

impl RawBlock {
    /// Makes a zeroed segment with a header naming `kind` and `len`, and a data area of
    /// `data_bytes`; `init` writes the data area before any other thread or process can see
    /// it.
    fn create(
        kind: u64,
        len: u64,
        data_bytes: usize,
        init: impl FnOnce(*mut u8) -> std::io::Result<()>,
    ) -> Result<Self, ShmError> {
        let bytes = data_bytes
            .checked_add(DATA)
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| {
                ShmError::io(std::io::Error::new(
                    std::io::ErrorKind::OutOfMemory,
                    "the shared-memory segment is too large",
                ))
            })?;
        let segment = Segment::create("parpool-shm", bytes).map_err(ShmError::io)?;
        let header = segment.as_ptr().cast::<Header>();
        // SAFETY: the segment is new, at least DATA bytes (> size of Header), page-aligned,
        // and no other thread or process has it yet, so plain writes race with nothing; the
        // data area is the `data_bytes` after DATA.
        unsafe {
            (&raw mut (*header).magic).write(MAGIC);
            (&raw mut (*header).token).write(new_token());
            (&raw mut (*header).type_hash).write(kind);
            (&raw mut (*header).len).write(len);
            SharedLock::init(&raw mut (*header).lock).map_err(ShmError::io)?;
            init(segment.as_ptr().add(DATA)).map_err(ShmError::io)?;
        }
        Ok(Self {
            segment: segment.register(),
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the segment starts with a Header written at creation (checked by magic,
        // token and kind in `from_wire` for received segments); it is only read after that,
        // except for the lock, which is built for shared use.
        unsafe { &*self.segment.as_ptr().cast::<Header>() }
    }

    fn lock(&self) -> &SharedLock {
        &self.header().lock
    }

    /// The start of the data area, 128-byte aligned.
    fn data(&self) -> *mut u8 {
        // SAFETY: DATA is inside the mapping (its size was checked to hold the header).
        unsafe { self.segment.as_ptr().add(DATA) }
    }

    fn wire(&self) -> HandleWire {
        let header = self.header();
        HandleWire {
            id: self.segment.id(),
            token: header.token,
            type_hash: header.type_hash,
            len: header.len,
        }
    }

    /// The segment a received handle names, checked to hold `kind` (described as
    /// `kind_name`, e.g. "values of type `f32`") and a data area of at least
    /// `data_bytes(len)` bytes (`None`: no size fits that `len`).
    fn from_wire(
        wire: &HandleWire,
        kind: u64,
        kind_name: &str,
        data_bytes: impl FnOnce(u64) -> Option<usize>,
    ) -> Result<Self, ShmError> {
        let Some(segment) = Segment::lookup(wire.id) else {
            return Err(ShmError::unknown_segment(format!(
                "shared-memory segment {}:{} is not known in process {}: a handle can only be \
                 deserialised where its memory is, and reaches another process as an argument \
                 or result of a ProcessPool job (or the memory was freed: every handle to it \
                 was dropped)",
                wire.id.dev,
                wire.id.ino,
                std::process::id()
            )));
        };
        let mismatch = |what: &str| {
            ShmError::unknown_segment(format!(
                "shared-memory segment {}:{} does not hold what the handle says: {what}",
                wire.id.dev, wire.id.ino
            ))
        };
        let needed = data_bytes(wire.len).and_then(|b| b.checked_add(DATA));
        if needed.is_none_or(|n| n > segment.len()) {
            return Err(mismatch("length"));
        }
        let block = Self { segment };
        let header = block.header();
        if header.magic != MAGIC || header.token != wire.token {
            return Err(mismatch("another segment reuses its inode"));
        }
        if header.type_hash != kind || wire.type_hash != kind {
            return Err(mismatch(&format!("not {kind_name}")));
        }
        if header.len != wire.len {
            return Err(mismatch("length"));
        }
        Ok(block)
    }

    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        segment::note_outgoing(&self.segment);
        self.wire().serialize(serializer)
    }

    fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
        kind: u64,
        kind_name: &str,
        data_bytes: impl FnOnce(u64) -> Option<usize>,
    ) -> Result<Self, D::Error> {
        let wire = HandleWire::deserialize(deserializer)?;
        Self::from_wire(&wire, kind, kind_name, data_bytes).map_err(|e| {
            segment::set_decode_error(e.to_string());
            serde::de::Error::custom(e)
        })
    }
}

impl std::fmt::Debug for RawBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let id = self.segment.id();
        write!(f, "{}:{}", id.dev, id.ino)
    }
}

/// A typed view of a segment: a header and `len` values of `T`. What `Value` and `Array`
/// are made of.
struct Block<T> {
    raw: RawBlock,
    /// Checked against the segment's size once; never read again from shared memory.
    len: usize,
    _type: PhantomData<T>,
}

impl<T> Clone for Block<T> {
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
            len: self.len,
            _type: PhantomData,
        }
    }
}

impl<T: Pod> Block<T> {
    /// The data area for `len` values, in bytes.
    fn data_bytes(len: u64) -> Option<usize> {
        usize::try_from(len).ok()?.checked_mul(size_of::<T>())
    }

    /// Makes a segment for `len` values; `init` writes them (the memory starts zeroed).
    fn create(len: usize, init: impl FnOnce(*mut T)) -> Result<Self, ShmError> {
        const { assert!(align_of::<T>() <= DATA, "Pod types aligned above 128 bytes") };
        let bytes = Self::data_bytes(len as u64).ok_or_else(|| {
            ShmError::io(std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                "the shared array is too large",
            ))
        })?;
        let raw = RawBlock::create(type_hash::<T>(), len as u64, bytes, |data| {
            // The data area holds `len` values of `T`, aligned (DATA >= align_of::<T>()).
            init(data.cast::<T>());
            Ok(())
        })?;
        Ok(Self {
            raw,
            len,
            _type: PhantomData,
        })
    }

    fn lock(&self) -> &SharedLock {
        self.raw.lock()
    }

    /// The first value: aligned, and valid for `len` values while `self` lives.
    fn data(&self) -> *mut T {
        self.raw.data().cast::<T>()
    }

    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }

    fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawBlock::deserialize(
            deserializer,
            type_hash::<T>(),
            &format!("values of type `{}`", std::any::type_name::<T>()),
            Self::data_bytes,
        )?;
        let len = raw.header().len as usize;
        Ok(Self {
            raw,
            len,
            _type: PhantomData,
        })
    }
}

impl<T> std::fmt::Debug for Block<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} ({} × {})",
            self.raw,
            self.len,
            std::any::type_name::<T>()
        )
    }
}
