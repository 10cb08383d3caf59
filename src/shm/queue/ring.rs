//! The queue's core: a byte ring of length-prefixed records, the two positions that commit
//! a put and a get, and the two events that put waiters to sleep on a futex.
//!
//! Everything here lives in shared memory and is used by processes that may be killed at
//! any instruction; [`Queue`](super::Queue) adds the two locks and the encoding around it.
//! The protocol is in the [module docs](super) ("Protocol"); this file implements it, and
//! the loom models in `test.rs` check it.
//!
//! # Positions
//!
//! `tail` and `head` each pack two wrapping 32-bit counters into one `u64`: items put (or
//! got) in the high half, bytes in the low half. One store commits both, so no reader ever
//! sees the byte count of one state and the item count of another, and a process killed
//! around the store leaves one state or the other. The ring's size is a power of two up to
//! 2³¹ bytes, so a wrapping byte counter masked by `size - 1` is an offset in the ring, and
//! `tail - head` (wrapping) is the bytes or items in use.

use std::marker::PhantomData;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Bytes of a record's length prefix (little-endian `u32`).
pub(super) const PREFIX: u32 = 4;

/// The smallest ring, in bytes.
pub(super) const MIN_RING_BYTES: u32 = 64;

/// The largest ring, in bytes: byte counters wrap at 2³², so the ring must be at most half.
pub(super) const MAX_RING_BYTES: u32 = 1 << 31;

/// The most items a queue may hold: item counters wrap at 2³², as for bytes.
pub(super) const MAX_CAPACITY: u32 = 1 << 31;

/// A position: (items, bytes), packed into one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    items: u32,
    bytes: u32,
}

impl Position {
    fn unpack(word: u64) -> Self {
        Self {
            items: (word >> 32) as u32,
            bytes: word as u32,
        }
    }

    fn pack(self) -> u64 {
        (u64::from(self.items) << 32) | u64::from(self.bytes)
    }

    /// One record of `len` payload bytes further.
    fn after(self, len: u32) -> Self {
        Self {
            items: self.items.wrapping_add(1),
            bytes: self.bytes.wrapping_add(PREFIX + len),
        }
    }
}

/// A futex word on which waiters of one kind (getters waiting for an item, putters waiting
/// for room) sleep.
///
/// Bit 0 says "someone may be asleep, or about to be"; the other bits count notifications.
/// A waiter announces itself with an RMW that sets bit 0 and keeps the value it made as its
/// ticket, re-checks its condition, and sleeps only while the word still equals the ticket.
/// A notifier, after committing (a Release store of a position), always makes an RMW that
/// clears bit 0; if it was set, it bumps the count (so every ticket taken before is stale)
/// and wakes every sleeper.
///
/// # Memory ordering
///
/// Both RMWs are `AcqRel` on the one word, so they are ordered in its modification order.
/// If the notifier's RMW comes first, the waiter's RMW reads it (or a later RMW in its
/// release sequence) and synchronises with it: the commit happens before the waiter's
/// re-check, which sees it. If the waiter's comes first, the notifier reads bit 0 set and
/// changes the word, so the waiter either fails to sleep (the futex compares the word with
/// the ticket) or is woken. No step relies on `SeqCst`, which loom cannot model.
///
/// A waiter killed after announcing leaves bit 0 set: the next notifier clears it and makes
/// one needless wake-up call. A notifier killed between its commit and its wake-up loses
/// that wake-up; sleepers sleep at most [`LOST_WAKE_TICK`] before re-checking on their own.
pub(super) struct Event {
    word: AtomicU32,
    /// The futex, modelled: loom has no futex, so a mutex and condition variable stand in
    /// for the kernel's wait queue (the wait compares the word under the mutex, as the kernel
    /// does under its hash-bucket lock).
    #[cfg(parpool_loom)]
    park: (loom::sync::Mutex<()>, loom::sync::Condvar),
}

/// How long a sleeper waits before it re-checks its condition although nobody woke it.
///
/// Only a user killed between committing and waking the others loses a wake-up (see
/// [`Event`]); this bounds the stall that causes. 50 ms keeps such a stall short next to a
/// kill (a process restart costs more), while an idle waiter's 20 wake-ups a second cost
/// ~25 µs each (re-check under the lock included): a getter idle in `get_timeout` for 3 s
/// used 1.4 ms of CPU (release; 3.6 ms in a debug build) on a loaded 2-core machine, 0.05%
/// of a core.
#[cfg(not(parpool_loom))]
pub(super) const LOST_WAKE_TICK: std::time::Duration = std::time::Duration::from_millis(50);

/// Bit 0 of an [`Event`]'s word: a waiter may be asleep.
const SLEEPERS: u32 = 1;

/// `FUTEX_WAKE`'s count meaning "every waiter". The kernel reads the count as a signed
/// `int` and stops after the first waiter once its tally passes it, so `u32::MAX` (-1)
/// would wake one sleeper only, leaving the rest to [`LOST_WAKE_TICK`].
#[cfg(not(parpool_loom))]
const WAKE_EVERY: u32 = i32::MAX as u32;

impl Event {
    fn new() -> Self {
        Self {
            word: AtomicU32::new(0),
            #[cfg(parpool_loom)]
            park: (loom::sync::Mutex::new(()), loom::sync::Condvar::new()),
        }
    }

    /// Announces a waiter; returns its ticket. Re-check the condition after this, then
    /// [`sleep`](Self::sleep) with the ticket if it still holds.
    pub(super) fn announce(&self) -> u32 {
        // AcqRel: pairs with `notify`'s RMW (see the type docs).
        self.word.fetch_or(SLEEPERS, Ordering::AcqRel) | SLEEPERS
    }

    /// Wakes the waiters that announced themselves, if any. Call after committing.
    #[inline]
    pub(super) fn notify(&self) {
        // AcqRel: pairs with `announce` (see the type docs). Always an RMW, even when nobody
        // sleeps: a plain load could miss an announcement made while the commit was still
        // in this core's store buffer.
        if self.word.fetch_and(!SLEEPERS, Ordering::AcqRel) & SLEEPERS != 0 {
            self.wake_all();
        }
    }

    /// Invalidates every ticket and wakes every sleeper (closing the queue).
    pub(super) fn notify_all(&self) {
        // AcqRel: as in `notify`.
        self.word.fetch_and(!SLEEPERS, Ordering::AcqRel);
        self.wake_all();
    }

    #[cold]
    fn wake_all(&self) {
        // Release: a sleeper that reads the new count sees what the notifier did before.
        self.word.fetch_add(2, Ordering::Release);
        #[cfg(not(parpool_loom))]
        {
            use rustix::thread::futex;
            // Not PRIVATE: the word is in memory shared between processes.
            let _ = futex::wake(&self.word, futex::Flags::empty(), WAKE_EVERY);
        }
        #[cfg(parpool_loom)]
        {
            let _guard = self.park.0.lock().unwrap();
            self.park.1.notify_all();
        }
    }

    /// Sleeps while the word equals `ticket`, at most `timeout` (and at most
    /// [`LOST_WAKE_TICK`]). May return early; the caller re-checks its condition.
    #[cfg(not(parpool_loom))]
    pub(super) fn sleep(&self, ticket: u32, timeout: Option<std::time::Duration>) {
        self.sleep_at_most(
            ticket,
            timeout.map_or(LOST_WAKE_TICK, |t| t.min(LOST_WAKE_TICK)),
        );
    }

    /// Sleeps while the word equals `ticket`, at most `timeout` (no tick). May return
    /// early.
    #[cfg(not(parpool_loom))]
    pub(super) fn sleep_at_most(&self, ticket: u32, timeout: std::time::Duration) {
        use rustix::thread::futex;
        let timespec = futex::Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        // EAGAIN (the word moved), EINTR and ETIMEDOUT all mean: re-check.
        let _ = futex::wait(&self.word, futex::Flags::empty(), ticket, Some(&timespec));
    }

    /// The loom model of the futex wait (no timeout: a lost wake-up must show as a
    /// deadlock).
    #[cfg(parpool_loom)]
    pub(super) fn sleep(&self, ticket: u32, _timeout: Option<std::time::Duration>) {
        let guard = self.park.0.lock().unwrap();
        if self.word.load(Ordering::Relaxed) == ticket {
            drop(self.park.1.wait(guard).unwrap());
        }
    }
}

/// The shared control block of a queue.
///
/// # Memory ordering
///
/// - `tail` is stored (`Release`) only by the holder of the put lock, after it wrote the
///   record's bytes; getters load it with `Acquire`, so the bytes they read are complete.
///   Putters load it `Relaxed`: the put lock orders putters among themselves.
/// - `head` is stored (`Release`) only by the holder of the get lock, after it read the
///   record's bytes; putters load it with `Acquire` before overwriting freed bytes, so a
///   getter's read happens before the overwrite.
/// - `closed` is stored (`Release`) under the put lock, so it follows every committed put;
///   a getter that loads it (`Acquire`) and then reloads `tail` sees them all.
pub(super) struct Ring {
    tail: CachePadded<AtomicU64>,
    head: CachePadded<AtomicU64>,
    /// Getters waiting for an item sleep here.
    pub(super) not_empty: CachePadded<Event>,
    /// Putters waiting for room sleep here.
    pub(super) not_full: CachePadded<Event>,
    /// 1 once the queue is closed.
    closed: AtomicU32,
    /// The most items held at once (fixed at creation).
    capacity: u32,
    /// The ring's size in bytes, a power of two (fixed at creation).
    size: u32,
}

/// Proof that the caller holds the put lock: only a holder may reserve room and commit.
///
/// Not `Clone`; made by [`PutHeld::assume`] from the lock's guard, which it borrows: no
/// reservation or commit can happen after the guard is dropped (the lock released).
#[derive(Debug)]
pub(super) struct PutHeld<'lock>(PhantomData<&'lock ()>);

impl<'lock> PutHeld<'lock> {
    /// # Safety
    ///
    /// `_guard` holds the queue's put lock (or, in a loom model, the mutex standing for it)
    /// until it is dropped.
    pub(super) unsafe fn assume<G>(_guard: &'lock G) -> Self {
        Self(PhantomData)
    }
}

/// Proof that the caller holds the get lock; see [`PutHeld`].
#[derive(Debug)]
pub(super) struct GetHeld<'lock>(PhantomData<&'lock ()>);

impl<'lock> GetHeld<'lock> {
    /// # Safety
    ///
    /// `_guard` holds the queue's get lock (or the mutex standing for it) until it is
    /// dropped.
    pub(super) unsafe fn assume<G>(_guard: &'lock G) -> Self {
        Self(PhantomData)
    }
}

/// Room for one record at the tail, reserved by the put-lock holder: only it may write
/// there, until it commits.
#[derive(Debug)]
#[must_use = "a reservation is a put in progress: commit it"]
pub(super) struct Reserved<'held> {
    at: Position,
    len: u32,
    _held: &'held PutHeld<'held>,
}

/// The record at the head, owned by the get-lock holder until it releases it.
#[derive(Debug)]
#[must_use = "a taken record is a get in progress: release it"]
pub(super) struct Taken<'held> {
    at: Position,
    len: u32,
    _held: &'held GetHeld<'held>,
}

impl Taken<'_> {
    /// The record's payload length in bytes.
    pub(super) fn len(&self) -> usize {
        self.len as usize
    }
}

/// Why no room was reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoRoom {
    /// The queue holds `capacity` items, or too many bytes for this record.
    Full,
    /// The queue is closed.
    Closed,
}

/// Why no record was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoItem {
    /// The queue is empty.
    Empty,
    /// The queue is empty and closed.
    Closed,
    /// The record at the head is longer than the bytes in use: the memory was written
    /// outside this protocol.
    Corrupt,
}

impl Ring {
    /// A control block for a queue of at most `capacity` items in a ring of `size` bytes.
    ///
    /// # Panics
    ///
    /// If `size` is not a power of two in `MIN_RING_BYTES..=MAX_RING_BYTES`, or `capacity`
    /// is 0 or above `MAX_CAPACITY` (the queue checks both before).
    pub(super) fn new(capacity: u32, size: u32) -> Self {
        assert!(size.is_power_of_two() && (MIN_RING_BYTES..=MAX_RING_BYTES).contains(&size));
        assert!((1..=MAX_CAPACITY).contains(&capacity));
        Self {
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            not_empty: CachePadded::new(Event::new()),
            not_full: CachePadded::new(Event::new()),
            closed: AtomicU32::new(0),
            capacity,
            size,
        }
    }

    pub(super) fn capacity(&self) -> u32 {
        self.capacity
    }

    pub(super) fn size(&self) -> u32 {
        self.size
    }

    /// The items in the queue (a snapshot).
    pub(super) fn len(&self) -> u32 {
        // Acquire (both): a snapshot of committed positions.
        let head = Position::unpack(self.head.load(Ordering::Acquire));
        let tail = Position::unpack(self.tail.load(Ordering::Acquire));
        tail.items.wrapping_sub(head.items).min(self.capacity)
    }

    pub(super) fn is_closed(&self) -> bool {
        // Acquire: pairs with the Release store in `close`.
        self.closed.load(Ordering::Acquire) != 0
    }

    /// Whether a record of `len` payload bytes would fit now (a hint, for spinning).
    pub(super) fn has_room(&self, len: u32) -> bool {
        let tail = Position::unpack(self.tail.load(Ordering::Relaxed));
        let head = Position::unpack(self.head.load(Ordering::Relaxed));
        self.fits(head, tail, len)
    }

    /// Whether the queue holds an item now (a hint, for spinning).
    pub(super) fn has_item(&self) -> bool {
        self.tail.load(Ordering::Relaxed) != self.head.load(Ordering::Relaxed)
    }

    fn fits(&self, head: Position, tail: Position, len: u32) -> bool {
        let items = tail.items.wrapping_sub(head.items);
        let used = tail.bytes.wrapping_sub(head.bytes);
        items < self.capacity && u64::from(used) + u64::from(PREFIX + len) <= u64::from(self.size)
    }

    /// Reserves room at the tail for a record of `len` payload bytes (`PREFIX + len` at most
    /// the ring's size: the queue checks it first).
    pub(super) fn reserve<'held>(
        &self,
        held: &'held PutHeld<'_>,
        len: u32,
    ) -> Result<Reserved<'held>, NoRoom> {
        // Relaxed: `closed` changes only under the put lock, which we hold.
        if self.closed.load(Ordering::Relaxed) != 0 {
            return Err(NoRoom::Closed);
        }
        // Relaxed: only put-lock holders store the tail; the lock orders us after them
        // (also after one that died: the kernel's hand-over of a robust mutex is a full
        // barrier).
        let tail = Position::unpack(self.tail.load(Ordering::Relaxed));
        // Acquire: pairs with the Release store in `release`: the getters' reads of the
        // bytes we are about to overwrite happened before.
        let head = Position::unpack(self.head.load(Ordering::Acquire));
        if !self.fits(head, tail, len) {
            return Err(NoRoom::Full);
        }
        Ok(Reserved {
            at: tail,
            len,
            _held: held,
        })
    }

    /// Writes the record (prefix and payload) into its reserved room.
    pub(super) fn fill(&self, bytes: &Bytes, reserved: &Reserved<'_>, payload: &[u8]) {
        assert_eq!(payload.len(), reserved.len as usize);
        // SAFETY: the reservation owns `PREFIX + len` bytes from its position: they are
        // free (between the tail and head + size, checked in `reserve`), getters never read
        // there before the commit, and other putters wait for the put lock the reservation
        // borrows.
        unsafe {
            bytes.write(reserved.at.bytes, &reserved.len.to_le_bytes());
            bytes.write(reserved.at.bytes.wrapping_add(PREFIX), payload);
        }
    }

    /// Commits a filled reservation: the item is in the queue from this store on.
    pub(super) fn commit(&self, reserved: Reserved<'_>) {
        let next = reserved.at.after(reserved.len);
        // Release: pairs with the Acquire loads in `take`: the bytes written in `fill` are
        // visible to the getter that reads this tail.
        self.tail.store(next.pack(), Ordering::Release);
    }

    /// Takes the record at the head, if any: reads its length prefix.
    pub(super) fn take<'held>(
        &self,
        bytes: &Bytes,
        held: &'held GetHeld<'_>,
    ) -> Result<Taken<'held>, NoItem> {
        // Relaxed: only get-lock holders store the head (see `reserve` for the tail).
        let head = Position::unpack(self.head.load(Ordering::Relaxed));
        // Acquire: pairs with the Release store in `commit`: the record's bytes are
        // complete.
        let mut tail = Position::unpack(self.tail.load(Ordering::Acquire));
        if tail == head {
            if !self.is_closed() {
                return Err(NoItem::Empty);
            }
            // Closed: puts committed before the close are visible now (see the type docs).
            tail = Position::unpack(self.tail.load(Ordering::Acquire));
            if tail == head {
                return Err(NoItem::Closed);
            }
        }
        let used = tail.bytes.wrapping_sub(head.bytes);
        let mut prefix = [0; PREFIX as usize];
        if used >= PREFIX {
            // SAFETY: the bytes between head and tail are committed records, which putters
            // do not touch until the head moves past them; we hold the get lock, so no
            // other getter moves it.
            unsafe { bytes.read(head.bytes, &mut prefix) };
        }
        let len = u32::from_le_bytes(prefix);
        if used < PREFIX || len > used - PREFIX || tail.items == head.items {
            return Err(NoItem::Corrupt);
        }
        Ok(Taken {
            at: head,
            len,
            _held: held,
        })
    }

    /// Copies a taken record's payload into `out` (`out.len()` is the record's length).
    pub(super) fn read(&self, bytes: &Bytes, taken: &Taken<'_>, out: &mut [u8]) {
        assert_eq!(out.len(), taken.len as usize);
        // SAFETY: as in `take`: the record is committed and stays until `release`.
        unsafe { bytes.read(taken.at.bytes.wrapping_add(PREFIX), out) };
    }

    /// Releases a taken record: the item is out of the queue from this store on, and its
    /// bytes are free.
    pub(super) fn release(&self, taken: Taken<'_>) {
        let next = taken.at.after(taken.len);
        // Release: pairs with the Acquire load in `reserve`: our reads of the record happen
        // before a putter overwrites its bytes.
        self.head.store(next.pack(), Ordering::Release);
    }

    /// Closes the queue. Call with the put lock held, so that no put commits after it.
    pub(super) fn close(&self, _held: &PutHeld<'_>) {
        // Release: pairs with the Acquire load in `is_closed` (see the type docs).
        self.closed.store(1, Ordering::Release);
    }
}

/// The ring's bytes, after the control block in the same segment.
///
/// Accesses are plain copies: the protocol (reservations and taken records) makes sure no
/// two processes touch the same bytes at once, and the positions' Release/Acquire pairs
/// order the copies.
#[cfg(not(parpool_loom))]
pub(super) struct Bytes {
    ptr: *mut u8,
    size: u32,
}

/// Under loom, one cell per byte, so that loom reports any access the protocol leaves
/// unordered.
#[cfg(parpool_loom)]
pub(super) struct Bytes {
    cells: Box<[loom::cell::UnsafeCell<u8>]>,
}

impl Bytes {
    /// The ring at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` is valid for reads and writes of `size` bytes (a power of two) for as long as
    /// the `Bytes` lives, and only used through the protocol of this module.
    #[cfg(not(parpool_loom))]
    pub(super) unsafe fn new(ptr: *mut u8, size: u32) -> Self {
        Self { ptr, size }
    }

    /// A ring of `size` bytes for a loom model.
    #[cfg(all(test, parpool_loom))]
    pub(super) fn new_model(size: u32) -> Self {
        Self {
            cells: (0..size).map(|_| loom::cell::UnsafeCell::new(0)).collect(),
        }
    }

    /// Copies `src` into the ring from position `at` (wrapping around its end).
    ///
    /// # Safety
    ///
    /// The caller owns those bytes of the ring: no other thread or process reads or writes
    /// them until the caller publishes them.
    unsafe fn write(&self, at: u32, src: &[u8]) {
        #[cfg(not(parpool_loom))]
        {
            let (first, rest) = self.split(at, src.len());
            // SAFETY: `split` keeps both parts inside the ring; the caller owns them, and
            // `src` (private memory) cannot overlap the mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(first.0), first.1);
                std::ptr::copy_nonoverlapping(src.as_ptr().add(first.1), self.ptr, rest);
            }
        }
        #[cfg(parpool_loom)]
        {
            let mask = self.cells.len() as u32 - 1;
            for (i, &b) in src.iter().enumerate() {
                let cell = &self.cells[(at.wrapping_add(i as u32) & mask) as usize];
                // SAFETY: the caller owns the byte.
                cell.with_mut(|p| unsafe { *p = b });
            }
        }
    }

    /// Copies bytes of the ring from position `at` into `dst` (wrapping around its end).
    ///
    /// # Safety
    ///
    /// Nobody writes those bytes while this runs: they are committed and not yet released.
    unsafe fn read(&self, at: u32, dst: &mut [u8]) {
        #[cfg(not(parpool_loom))]
        {
            let (first, rest) = self.split(at, dst.len());
            // SAFETY: as in `write`, for reading.
            unsafe {
                std::ptr::copy_nonoverlapping(self.ptr.add(first.0), dst.as_mut_ptr(), first.1);
                std::ptr::copy_nonoverlapping(self.ptr, dst.as_mut_ptr().add(first.1), rest);
            }
        }
        #[cfg(parpool_loom)]
        {
            let mask = self.cells.len() as u32 - 1;
            for (i, b) in dst.iter_mut().enumerate() {
                let cell = &self.cells[(at.wrapping_add(i as u32) & mask) as usize];
                // SAFETY: nobody writes the byte meanwhile (the caller's contract).
                *b = cell.with(|p| unsafe { *p });
            }
        }
    }

    /// Splits `len` bytes from position `at` into ((offset, length) up to the ring's end,
    /// length from its start). `len` is at most the ring's size.
    #[cfg(not(parpool_loom))]
    fn split(&self, at: u32, len: usize) -> ((usize, usize), usize) {
        let offset = (at & (self.size - 1)) as usize;
        let first = len.min(self.size as usize - offset);
        ((offset, first), len - first)
    }
}
