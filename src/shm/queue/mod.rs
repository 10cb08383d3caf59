//! `Queue<T>`: a bounded multi-producer, multi-consumer queue in shared memory that survives
//! a killed user.
//!
//! # Layout
//!
//! One segment (see `shm/segment.rs`):
//!
//! | offset | what |
//! |---|---|
//! | 0 | the `Header` every handle of this module has; its lock is the **put lock** |
//! | 128 | `Control`: the **get lock**, then the `Ring`'s control block (positions, events, capacity) |
//! | `128 + RING_AT` | the ring: `size` bytes, a power of two |
//!
//! An item is a record in the ring: its postcard encoding prefixed by its length (`u32`,
//! little-endian), wrapping around the ring's end. Each record costs 4 bytes on top of the
//! encoding, and the queue holds at most `capacity` items and at most `size` bytes of
//! records.
//!
//! # Protocol
//!
//! - **Put.** Encode the item (in private memory, before any lock). Take the put lock.
//!   Reserve room at the tail (`Ring::reserve`: not closed, fewer than `capacity` items, and
//!   room for the record before the head), write the record there, then **commit**: one
//!   `Release` store of the tail. Release the lock, then notify the getters' event.
//! - **Get.** Take the get lock. Read the record at the head (if the tail is past it),
//!   copy its payload out, then **commit**: one `Release` store of the head. Release the
//!   lock, notify the putters' event, and decode the copy (in private memory, after every
//!   lock).
//! - **Waiting.** A putter finding the queue full, or a getter finding it empty, spins
//!   briefly (bounded, without the lock), then announces itself on the event, re-checks
//!   under the lock, and sleeps on the event's futex in the kernel. The event's protocol
//!   (`ring::Event`) loses no wake-up between live users; sleeps last at most
//!   `LOST_WAKE_TICK` (50 ms), after which a sleeper re-checks on its own.
//! - **Close.** Take the put lock, set `closed`, release it, wake everyone. Putters then see
//!   closed; getters see closed only once the ring is empty (they drain first).
//!
//! # A killed user
//!
//! A process can die at any instruction (SIGKILL, abort, a task timeout). What it leaves:
//!
//! - **The locks** are robust process-shared mutexes: the kernel releases a dead holder's
//!   lock and the next locker is told (`EOWNERDEAD`). The queue does not need to repair
//!   anything (below), so it makes the mutex consistent and goes on: a queue's locks never
//!   poison.
//! - **The ring's state** changes only at the two commits, each a single store of one
//!   word. Before a put's commit its bytes lie beyond the tail, where getters never read
//!   and the next putter overwrites them; before a get's commit the record is still between
//!   head and tail. So a queue is consistent at every instruction of every user.
//! - **An interrupted put**: killed before the commit store, the item is wholly gone (never
//!   seen by a getter); killed after it, the item is wholly in the queue (whether or not
//!   `put` got to return). **An interrupted get**: killed before the commit store, the item
//!   is wholly in the queue, and the next getter gets it; after it, the item is wholly gone
//!   with the dead getter (it was delivered; as with any message a process receives and
//!   then dies holding). No item is ever torn or delivered twice.
//! - **Wake-ups**: a user killed between its commit and its notification takes a wake-up
//!   with it; sleepers re-check every `LOST_WAKE_TICK`, so others stall at most that long.
//!   A killed sleeper leaves a stale "someone sleeps" bit: one needless wake-up call.
//!
//! Nothing here survives memory that a process scribbles on outside this protocol (see the
//! trust note in `lock.rs`); a record whose length prefix is impossible is reported
//! (`GetError::is_decode`) instead of read.
//!
//! # Why no `Pipe`
//!
//! Python's `Pipe()` is two connected ends; a `Queue` of capacity 1 is a one-way pipe with
//! the same blocking behaviour (a put waits until the previous item is got), and two queues
//! make a duplex one. Unlike a pipe, any number of processes may use either end.

mod error;
mod ring;
#[cfg(test)]
mod test;

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::size_of;
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use error::{GetError, PutError};

use super::lock::{Acquired, Held, SharedLock};
use super::{RawBlock, ShmError, type_hash};
use error::{GetErrorKind, PutErrorKind};
use ring::{Bytes, GetHeld, NoItem, NoRoom, PREFIX, PutHeld, Ring};

/// The queue's part of its segment's data area, before the ring's bytes. The ring's
/// fields are cache-padded (aligned to 128 bytes), so the get lock has its own line.
#[repr(C)]
struct Control {
    get_lock: SharedLock,
    ring: Ring,
}

/// Where the ring's bytes start in the data area.
const RING_AT: usize = size_of::<Control>().next_multiple_of(128);

/// The ring of [`Queue::new`]: room for `capacity` records of this many bytes, ...
const DEFAULT_RECORD_BYTES: usize = 64;
/// ... but at least this much (a few items of a few KiB fit even in a small queue) ...
const MIN_DEFAULT_RING_BYTES: usize = 64 << 10;
/// ... and at most this much. The kernel gives a segment pages only as they are first
/// written, so an idle or short queue costs little of it.
const MAX_DEFAULT_RING_BYTES: usize = 16 << 20;

thread_local! {
    /// A buffer for encoding and decoding, reused by this thread's puts and gets.
    static BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A buffer kept for reuse only up to this capacity; larger ones are freed after use.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

/// This thread's buffer, or a new one once its thread-locals are destroyed (a put or get
/// from another thread-local's `Drop`).
fn take_buffer() -> Vec<u8> {
    let mut buffer = BUFFER.try_with(Cell::take).unwrap_or_default();
    buffer.clear();
    buffer
}

fn return_buffer(buffer: Vec<u8>) {
    if buffer.capacity() <= KEEP_BUFFER_BYTES {
        // Dropped instead once the thread-locals are destroyed.
        let _ = BUFFER.try_with(|kept| kept.set(buffer));
    }
}

/// Takes a queue lock, waiting at most until `deadline` (`None`: as long as it takes); the
/// hold releases it when dropped.
///
/// A poisoned lock only means that a holder died: the queue needs no repair (see the module
/// docs), so the poison is cleared.
fn take(lock: &SharedLock, deadline: Option<Instant>) -> Option<Held<'_>> {
    let (held, acquired) = match deadline {
        None => lock.lock(),
        Some(deadline) => lock.lock_until(deadline)?,
    };
    if acquired == Acquired::Poisoned {
        lock.clear_poison();
    }
    Some(held)
}

/// How long a put or get may wait for room or an item.
#[derive(Clone, Copy)]
enum Wait {
    /// Not at all (`try_put`, `try_get`); the locks are still waited for.
    No,
    /// Until the deadline, or forever (`None`).
    Until(Option<Instant>),
}

impl Wait {
    fn deadline(self) -> Option<Instant> {
        match self {
            Wait::No => None,
            Wait::Until(deadline) => deadline,
        }
    }

    fn after(timeout: Duration) -> Self {
        Wait::Until(Instant::now().checked_add(timeout))
    }
}

/// What one locked attempt of a put or get found, when it did not finish.
enum Blocked {
    /// First time: spin (without the lock) before sleeping.
    Spin,
    /// Announced and re-checked: sleep with this ticket.
    Sleep(u32),
}

/// A bounded queue of `T` in memory shared with the workers of a process pool (Python's
/// `multiprocessing.Queue`), for any number of producers and consumers, threads or
/// processes.
///
/// Items travel encoded with postcard (any `Serialize + DeserializeOwned` type). The queue
/// holds at most `capacity` items, and at most the bytes of its ring ([`new`](Self::new)
/// sizes it; [`with_ring_bytes`](Self::with_ring_bytes) chooses): an encoded item takes its
/// length plus 4 bytes. [`put`](Self::put) waits while the queue is full and
/// [`get`](Self::get) while it is empty, asleep in the kernel (a futex in the shared
/// memory); `try_` variants never wait for room or an item, `_timeout` ones up to a
/// timeout. [`close`](Self::close) ends it: puts fail, gets drain what is left, then fail.
///
/// **A killed user never breaks it.** A producer or consumer killed at any instruction
/// (SIGKILL, abort, a task timeout) leaves the queue consistent and the others running,
/// and no item is ever torn or delivered twice. An item whose `put` was interrupted is
/// either wholly in the queue or wholly gone (never got by anyone); one whose `get` was
/// interrupted is either wholly still in the queue (the next getter gets it) or wholly gone
/// with the dead getter. The module source documents the protocol.
///
/// Cloning gives another handle to the same queue. A handle is an ordinary argument or
/// result of a [`ProcessPool`](crate::ProcessPool) job (see the [module](super) docs).
/// Items that contain shared-memory handles decode only in a process that already has
/// their segments.
///
/// Python's `Pipe()` is covered by a queue of capacity 1 (a put waits until the previous
/// item is got); two make a duplex pipe.
///
/// # Examples
///
/// A job puts, the parent gets:
///
/// ```
/// use parpool::ProcessPool;
/// use parpool::shm::Queue;
///
/// type Item = (i32, Option<u8>, String);
///
/// fn f(q: Queue<Item>) {
///     q.put((42, None, "hello".to_owned())).unwrap();
/// }
///
/// let pool = ProcessPool::new(1)?;
/// let q = Queue::new(16)?;
/// let job = pool.submit(f, q.clone())?;
/// assert_eq!(q.get()?, (42, None, "hello".to_owned()));
/// job.get()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Queue<T> {
    raw: RawBlock,
    _type: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// A queue of at most `capacity` items, in a new shared-memory segment whose ring holds
    /// `capacity` records of 64 encoded bytes, but at least 64 KiB and at most 16 MiB (use
    /// [`with_ring_bytes`](Self::with_ring_bytes) for other sizes).
    ///
    /// # Errors
    ///
    /// `capacity` is 0 or above 2³¹ ([`is_invalid`](ShmError::is_invalid)); the operating
    /// system refused the segment ([`is_io`](ShmError::is_io)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(100)?;
    /// q.put("a".to_owned())?;
    /// assert_eq!(q.capacity(), 100);
    /// assert_eq!(q.get()?, "a");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(capacity: usize) -> Result<Self, ShmError> {
        let ring = capacity
            .saturating_mul(DEFAULT_RECORD_BYTES)
            .clamp(MIN_DEFAULT_RING_BYTES, MAX_DEFAULT_RING_BYTES);
        Self::with_ring_bytes(capacity, ring)
    }

    /// A queue of at most `capacity` items and `ring_bytes` bytes of records (rounded up to
    /// a power of two, at least 64): an item takes its postcard encoding plus 4 bytes.
    ///
    /// # Errors
    ///
    /// `capacity` is 0 or above 2³¹, or `ring_bytes` above 2³¹
    /// ([`is_invalid`](ShmError::is_invalid)); the operating system refused the segment
    /// ([`is_io`](ShmError::is_io)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// // Bounded by bytes: a [u8; 3] encodes in 3 bytes, so each record takes 7, and a
    /// // ring of 64 bytes holds 9 of them, below the capacity of 1000 items.
    /// let q = Queue::with_ring_bytes(1000, 64)?;
    /// for i in 0..9u8 {
    ///     q.try_put([i; 3])?;
    /// }
    /// assert!(q.try_put([9u8; 3]).unwrap_err().is_full());
    /// assert_eq!(q.len(), 9);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_ring_bytes(capacity: usize, ring_bytes: usize) -> Result<Self, ShmError> {
        let capacity = u32::try_from(capacity)
            .ok()
            .filter(|c| (1..=ring::MAX_CAPACITY).contains(c))
            .ok_or_else(|| {
                ShmError::invalid(format!(
                    "a shared queue's capacity must be 1 to 2^31 items, not {capacity}"
                ))
            })?;
        let size = ring_bytes
            .max(ring::MIN_RING_BYTES as usize)
            .checked_next_power_of_two()
            .and_then(|s| u32::try_from(s).ok())
            .filter(|&s| s <= ring::MAX_RING_BYTES)
            .ok_or_else(|| {
                ShmError::invalid(format!(
                    "a shared queue's ring must be at most 2^31 bytes, not {ring_bytes}"
                ))
            })?;
        let raw = RawBlock::create(
            type_hash::<Self>(),
            u64::from(size),
            RING_AT + size as usize,
            |data| {
                let control = data.cast::<Control>();
                // SAFETY: the data area is new, 128-byte aligned and at least RING_AT bytes,
                // so it holds a `Control`; nobody else sees the segment yet.
                unsafe {
                    SharedLock::init(&raw mut (*control).get_lock)?;
                    (&raw mut (*control).ring).write(Ring::new(capacity, size));
                }
                Ok(())
            },
        )?;
        Ok(Self {
            raw,
            _type: PhantomData,
        })
    }

    /// Puts `item` at the back of the queue, waiting (asleep) while the queue is full.
    ///
    /// Returns once the item is in the queue. If this process dies during the call, the
    /// item is either wholly in the queue or wholly gone (see [`Queue`]).
    ///
    /// # Errors
    ///
    /// With the item back ([`PutError::into_inner`]): the queue is closed
    /// ([`is_closed`](PutError::is_closed)); the encoded item can never fit
    /// ([`is_too_large`](PutError::is_too_large)); it did not encode
    /// ([`is_encode`](PutError::is_encode)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(1)?;
    /// let q2 = q.clone();
    /// let producer = std::thread::spawn(move || {
    ///     for i in 0..100u32 {
    ///         q2.put(i).unwrap(); // waits while the one slot is taken
    ///     }
    /// });
    /// let got: Vec<u32> = (0..100).map(|_| q.get().unwrap()).collect();
    /// producer.join().unwrap();
    /// assert_eq!(got, (0..100).collect::<Vec<_>>());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_with(item, Wait::Until(None))
    }

    /// Puts `item` if the queue has room now; never waits for room (only, briefly, for the
    /// lock that other putters hold while they copy an item in).
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put), and a full queue ([`is_full`](PutError::is_full)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(2)?;
    /// q.try_put(1u16)?;
    /// q.try_put(2)?;
    /// assert_eq!(q.try_put(3).unwrap_err().into_inner(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_with(item, Wait::No)
    }

    /// Puts `item`, waiting at most `timeout` for room.
    ///
    /// # Errors
    ///
    /// As [`put`](Self::put), and still no room when the timeout expired
    /// ([`is_timeout`](PutError::is_timeout)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(1)?;
    /// q.put_timeout(1u8, Duration::from_millis(5))?;
    /// let err = q.put_timeout(2, Duration::from_millis(5)).unwrap_err();
    /// assert!(err.is_timeout());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_with(item, Wait::after(timeout))
    }

    /// Takes the item at the front of the queue, waiting (asleep) while it is empty.
    ///
    /// If this process dies during the call, the item is either wholly still in the queue
    /// or wholly gone with it (see [`Queue`]).
    ///
    /// # Errors
    ///
    /// The queue is closed and empty ([`is_closed`](GetError::is_closed)); the item
    /// taken did not decode ([`is_decode`](GetError::is_decode)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(8)?;
    /// q.put(vec![1.5f64, 2.5])?;
    /// assert_eq!(q.get()?, [1.5, 2.5]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self) -> Result<T, GetError> {
        self.get_with(Wait::Until(None))
    }

    /// Takes the item at the front if there is one now; never waits for an item (only,
    /// briefly, for the lock that other getters hold while they copy an item out).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), and an empty queue ([`is_empty`](GetError::is_empty)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(8)?;
    /// assert!(q.try_get().unwrap_err().is_empty());
    /// q.put(7i64)?;
    /// assert_eq!(q.try_get()?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn try_get(&self) -> Result<T, GetError> {
        self.get_with(Wait::No)
    }

    /// Takes the item at the front, waiting at most `timeout` for one.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), and still empty when the timeout expired
    /// ([`is_timeout`](GetError::is_timeout)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(8)?;
    /// let q2 = q.clone();
    /// std::thread::spawn(move || q2.put(5u8).unwrap());
    /// assert_eq!(q.get_timeout(Duration::from_secs(10))?, 5);
    /// assert!(q.get_timeout(Duration::from_millis(5)).unwrap_err().is_timeout());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_with(Wait::after(timeout))
    }

    fn put_with(&self, item: T, wait: Wait) -> Result<(), PutError<T>> {
        let buffer = match postcard::to_extend(&item, take_buffer()) {
            Ok(buffer) => buffer,
            Err(e) => return Err(PutError::new(PutErrorKind::Encode(e), item)),
        };
        let result = self.put_bytes(&buffer, wait);
        return_buffer(buffer);
        result.map_err(|kind| PutError::new(kind, item))
    }

    fn put_bytes(&self, record: &[u8], wait: Wait) -> Result<(), PutErrorKind> {
        let ring = &self.control().ring;
        let bytes = self.bytes();
        let max = (ring.size() - PREFIX) as usize;
        if record.len() > max {
            return Err(PutErrorKind::TooLarge {
                len: record.len(),
                max,
            });
        }
        let len = record.len() as u32;
        let deadline = wait.deadline();
        let mut spun = false;
        loop {
            let lock = take(self.raw.lock(), deadline).ok_or(PutErrorKind::Timeout)?;
            // SAFETY: `lock` holds the put lock; `held` borrows it.
            let held = unsafe { PutHeld::assume(&lock) };
            let mut ticket = None;
            let blocked = loop {
                match ring.reserve(&held, len) {
                    Ok(reserved) => {
                        ring.fill(&bytes, &reserved, record);
                        ring.commit(reserved);
                        drop(lock);
                        ring.not_empty.notify();
                        return Ok(());
                    }
                    Err(NoRoom::Closed) => return Err(PutErrorKind::Closed),
                    Err(NoRoom::Full) => match (wait, ticket) {
                        (Wait::No, _) => return Err(PutErrorKind::Full),
                        _ if !spun => break Blocked::Spin,
                        (_, None) => ticket = Some(ring.not_full.announce()),
                        (_, Some(ticket)) => break Blocked::Sleep(ticket),
                    },
                }
            };
            drop(lock);
            match blocked {
                Blocked::Spin => {
                    spun = true;
                    spin_until(|| ring.has_room(len));
                }
                Blocked::Sleep(ticket) => {
                    let timeout = left(deadline).map_err(|()| PutErrorKind::Timeout)?;
                    ring.not_full.sleep(ticket, timeout);
                }
            }
        }
    }

    fn get_with(&self, wait: Wait) -> Result<T, GetError> {
        let mut buffer = take_buffer();
        let result = self.get_bytes(&mut buffer, wait).and_then(|()| {
            postcard::from_bytes(&buffer).map_err(|e| GetError::new(GetErrorKind::Decode(e)))
        });
        return_buffer(buffer);
        result
    }

    fn get_bytes(&self, out: &mut Vec<u8>, wait: Wait) -> Result<(), GetError> {
        let control = self.control();
        let ring = &control.ring;
        let bytes = self.bytes();
        let deadline = wait.deadline();
        let timeout = || GetError::new(GetErrorKind::Timeout);
        let mut spun = false;
        loop {
            let lock = take(&control.get_lock, deadline).ok_or_else(timeout)?;
            // SAFETY: `lock` holds the get lock; `held` borrows it.
            let held = unsafe { GetHeld::assume(&lock) };
            let mut ticket = None;
            let blocked = loop {
                match ring.take(&bytes, &held) {
                    Ok(taken) => {
                        out.resize(taken.len(), 0);
                        ring.read(&bytes, &taken, out);
                        ring.release(taken);
                        drop(lock);
                        ring.not_full.notify();
                        return Ok(());
                    }
                    Err(NoItem::Closed) => return Err(GetError::new(GetErrorKind::Closed)),
                    Err(NoItem::Corrupt) => return Err(GetError::new(GetErrorKind::Corrupt)),
                    Err(NoItem::Empty) => match (wait, ticket) {
                        (Wait::No, _) => return Err(GetError::new(GetErrorKind::Empty)),
                        _ if !spun => break Blocked::Spin,
                        (_, None) => ticket = Some(ring.not_empty.announce()),
                        (_, Some(ticket)) => break Blocked::Sleep(ticket),
                    },
                }
            };
            drop(lock);
            match blocked {
                Blocked::Spin => {
                    spun = true;
                    spin_until(|| ring.has_item() || ring.is_closed());
                }
                Blocked::Sleep(ticket) => {
                    ring.not_empty
                        .sleep(ticket, left(deadline).map_err(|()| timeout())?);
                }
            }
        }
    }

    /// Closes the queue: puts fail from now on ([`is_closed`](PutError::is_closed)); gets go
    /// on until the queue is empty, then fail ([`is_closed`](GetError::is_closed)).
    /// Everyone waiting wakes up. Closing twice does nothing more.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(8)?;
    /// let q2 = q.clone();
    /// let consumer = std::thread::spawn(move || {
    ///     let mut sum = 0;
    ///     while let Ok(x) = q2.get() {
    ///         sum += x;
    ///     }
    ///     sum
    /// });
    /// for x in 1..=10u64 {
    ///     q.put(x)?;
    /// }
    /// q.close();
    /// assert_eq!(consumer.join().unwrap(), 55);
    /// assert!(q.is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn close(&self) {
        let ring = &self.control().ring;
        {
            let lock = take(self.raw.lock(), None);
            // SAFETY: `lock` holds the put lock (a lock without a deadline is always
            // taken); `held` borrows it.
            let held = unsafe { PutHeld::assume(&lock) };
            ring.close(&held);
        }
        ring.not_empty.notify_all();
        ring.not_full.notify_all();
    }

    /// Whether the queue is closed (it may still hold items).
    ///
    /// # Examples
    ///
    /// See [`close`](Self::close).
    pub fn is_closed(&self) -> bool {
        self.control().ring.is_closed()
    }

    /// The number of items in the queue: a snapshot, which other users may change at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(8)?;
    /// q.put('x')?;
    /// q.put('y')?;
    /// assert_eq!(q.len(), 2);
    /// q.get()?;
    /// assert_eq!(q.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.control().ring.len() as usize
    }

    /// Whether the queue holds no item (a snapshot, as [`len`](Self::len)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::<u8>::new(8)?;
    /// assert!(q.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items the queue holds at once.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// assert_eq!(Queue::<u8>::new(3)?.capacity(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn capacity(&self) -> usize {
        self.control().ring.capacity() as usize
    }

    /// The size of the queue's ring of records, in bytes (see
    /// [`with_ring_bytes`](Self::with_ring_bytes)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// assert_eq!(Queue::<u8>::with_ring_bytes(3, 1000)?.ring_bytes(), 1024);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ring_bytes(&self) -> usize {
        self.control().ring.size() as usize
    }
}

impl<T> Queue<T> {
    fn control(&self) -> &Control {
        // SAFETY: the data area starts with a `Control`, initialised at creation (a
        // received handle's segment was checked to be a queue of this type, of the right
        // size, in `RawBlock::from_wire`); it lives as long as `self.raw`, and its fields
        // are built for shared use.
        unsafe { &*self.raw.data().cast::<Control>() }
    }

    #[cfg(not(parpool_loom))]
    fn bytes(&self) -> Bytes {
        let size = self.control().ring.size();
        // SAFETY: the ring's `size` bytes follow the control block (the segment was made,
        // or checked on arrival, to hold RING_AT + size bytes of data), and live as long as
        // `self.raw`; the ring protocol is their only user.
        unsafe { Bytes::new(self.raw.data().add(RING_AT), size) }
    }

    /// Under loom only the ring protocol is modelled (`test.rs`), never a segment.
    #[cfg(parpool_loom)]
    fn bytes(&self) -> Bytes {
        unreachable!("loom models the ring protocol alone")
    }
}

/// Spins (bounded: a `Backoff` until it completes, tens of µs) until `ready` holds.
fn spin_until(ready: impl Fn() -> bool) {
    if cfg!(parpool_loom) {
        return;
    }
    let backoff = Backoff::new();
    while !ready() && !backoff.is_completed() {
        backoff.snooze();
    }
}

/// What is left until `deadline` (`None`: no deadline); `Err` once it passed.
fn left(deadline: Option<Instant>) -> Result<Option<Duration>, ()> {
    match deadline {
        None => Ok(None),
        Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(Some(left)),
            _ => Err(()),
        },
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = &self.control().ring;
        f.debug_struct("Queue")
            .field("segment", &self.raw)
            .field("len", &ring.len())
            .field("capacity", &ring.capacity())
            .field("closed", &ring.is_closed())
            .finish()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawBlock::deserialize(
            deserializer,
            type_hash::<Self>(),
            &format!("a `{}`", std::any::type_name::<Self>()),
            |size| {
                let size = u32::try_from(size).ok()?;
                let valid = size.is_power_of_two()
                    && (ring::MIN_RING_BYTES..=ring::MAX_RING_BYTES).contains(&size);
                valid.then_some(RING_AT + size as usize)
            },
        )?;
        Ok(Self {
            raw,
            _type: PhantomData,
        })
    }
}
