//! The result ring: small results travel from a worker to the parent through shared memory.
//!
//! # Why
//!
//! A worker must hand over a job's result before it starts the next job: if it dies in that
//! next job, the parent must know the earlier one finished. Through the socket that costs a
//! `sendmsg` per job (and a `recvmsg` and a wake-up in the parent), which capped one-item
//! `map`s at about 450k items/s on the 2-core VM this was measured on; through this ring a
//! result is a `memcpy` and a store, and the same map ran at about 800k items/s. Results that
//! outlive their worker are a bonus: what a worker published before it crashed is in the
//! parent's mapping.
//!
//! # Layout
//!
//! One sealed memfd segment per worker, made by the parent and sent to the worker with the
//! `Init` frame. Offsets in bytes:
//!
//! ```text
//!      0  tail             u64  bytes published, ever (written by the worker)
//!     64  head             u64  bytes consumed, ever (written by the parent)
//!     72  consumed         u32  futex word, bumped each time the parent advances `head`
//!    128  parent_sleeping  u32  1: the parent may be asleep; ring the doorbell
//!    132  worker_waiting   u32  1: the worker waits for room; wake `consumed`
//!    192  started          u64  1 + the id of the job the worker started last (0: none)
//!    256  data             CAPACITY bytes, records laid end to end, wrapping at the end
//! ```
//!
//! A record is a whole `Result` frame exactly as it would go on the socket (header and body,
//! no descriptors). Results larger than [`MAX_RECORD`], or that carry descriptors, go on the
//! socket instead; the parent accepts a worker's results in any order between the two paths
//! and completes jobs in the order they were sent.
//!
//! # Protocol
//!
//! - **Publish** (worker): wait for room (below), copy the record to `data[tail % CAPACITY..]`,
//!   store `tail + len` with `Release`, then a `SeqCst` fence and: if `parent_sleeping` was
//!   1, swap it to 0 and send a `Doorbell` frame on the socket, which wakes the parent's
//!   `epoll`.
//! - **Sleep** (parent): store `parent_sleeping = 1`, `SeqCst` fence, load `tail`: if records
//!   are pending it does not sleep. This and the worker's store-fence-load above are the two
//!   halves of a Dekker handshake: either the parent sees the new `tail`, or the worker sees
//!   `parent_sleeping == 1` and rings. The parent clears the flag when it wakes.
//! - **Consume** (parent): load `tail` with `Acquire` (pairs with the worker's `Release`),
//!   copy `[head, tail)` out, store the new `head` with `Release`, bump `consumed`, and if
//!   `worker_waiting` is 1, `FUTEX_WAKE` on `consumed`.
//! - **Wait for room** (worker): read `consumed`, check the room; else make sure the parent is
//!   awake (ring if `parent_sleeping`), set `worker_waiting`, check again, and `FUTEX_WAIT`
//!   on `consumed` (bounded by [`WAIT_SLICE`], which also covers a lost wake-up).
//!
//! - **Start** (worker): before it runs a job, the worker stores `1 + id` in `started`. The
//!   parent reads it only after the worker died (its pidfd said so, and the kernel orders
//!   everything the dead process did before that), to tell whether the job at the front of
//!   the worker's queue had started (see `supervisor::lifecycle`).
//!
//! # Trust
//!
//! A job can scribble over its worker's memory, the ring included. The parent never trusts
//! the ring for memory safety: it copies at most `CAPACITY` bytes out, indexes modulo
//! `CAPACITY`, and checks every record's length and job id; a ring that does not parse marks
//! the worker broken.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::Duration;

use rustix::thread::futex;

use super::wire::{self, HEADER_LEN};
use crate::shm::segment::Segment;

/// Bytes of record data in a ring. 256 KiB holds some thousands of small results, so a
/// worker running one-item jobs never waits for room while the parent is awake; it is
/// touched lazily, so an idle worker costs little of it.
pub(crate) const CAPACITY: usize = 256 * 1024;

/// The largest record that goes through the ring; larger results take the socket, so the
/// ring never has to wait for one result to be consumed in pieces.
pub(crate) const MAX_RECORD: usize = CAPACITY / 4;

/// How long a worker sleeps at most, per round, waiting for room. The parent's `FUTEX_WAKE`
/// ends the wait normally; this only bounds the stall should a wake-up be lost. Not
/// measured: long enough that a worker waiting on a busy parent does not spin, short
/// enough that a lost wake-up costs little.
const WAIT_SLICE: Duration = Duration::from_millis(50);

/// Where the data starts.
const DATA: usize = 256;

#[repr(C)]
struct Header {
    tail: AtomicU64,
    _pad0: [u64; 7],
    head: AtomicU64,
    consumed: AtomicU32,
    _pad1: [u32; 13],
    parent_sleeping: AtomicU32,
    worker_waiting: AtomicU32,
    _pad2: [u32; 14],
    started: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= DATA);
const _: () = assert!(std::mem::offset_of!(Header, started) == 192);

/// One worker's result ring (either side's mapping of it).
#[derive(Debug)]
pub(crate) struct Ring {
    segment: Segment,
}

impl Ring {
    /// Creates a ring (parent side).
    pub(crate) fn create() -> io::Result<Self> {
        Ok(Self {
            segment: Segment::create("parpool-results", DATA + CAPACITY)?,
        })
    }

    /// Maps a ring the parent sent (worker side).
    pub(crate) fn open(fd: OwnedFd) -> io::Result<Self> {
        let segment = Segment::open(fd)?;
        if segment.len() != DATA + CAPACITY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a result ring",
            ));
        }
        Ok(Self { segment })
    }

    /// The memory file, to send to the worker.
    pub(crate) fn fd(&self) -> &Arc<OwnedFd> {
        self.segment.fd()
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned and at least DATA bytes long (checked in
        // `open`, made so in `create`), `Header` fits in DATA bytes and consists of atomics,
        // for which every bit pattern (zero at creation) is valid; other processes only
        // access it through atomics too.
        unsafe { &*self.segment.as_ptr().cast::<Header>() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: DATA < the mapping's length, so the result stays inside the mapping.
        unsafe { self.segment.as_ptr().add(DATA) }
    }

    // ---- worker side ----------------------------------------------------------------------

    /// Publishes one record (a whole Result frame of at most `MAX_RECORD` bytes), waiting for
    /// room if needed. `doorbell` sends a Doorbell frame on the socket.
    pub(crate) fn publish(
        &self,
        record: &[u8],
        mut doorbell: impl FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        assert!(record.len() <= MAX_RECORD);
        let h = self.header();
        // Only this worker writes `tail`.
        let tail = h.tail.load(Ordering::Relaxed);
        self.wait_for_room(tail, record.len(), &mut doorbell)?;
        let start = (tail % CAPACITY as u64) as usize;
        let first = record.len().min(CAPACITY - start);
        // SAFETY: `start + first <= CAPACITY` and `record.len() - first <= CAPACITY`, so both
        // copies stay inside the data area; the room check above guarantees the parent is
        // not reading these bytes (they lie outside `[head, tail)`).
        unsafe {
            std::ptr::copy_nonoverlapping(record.as_ptr(), self.data().add(start), first);
            std::ptr::copy_nonoverlapping(
                record.as_ptr().add(first),
                self.data(),
                record.len() - first,
            );
        }
        // Release: pairs with the parent's Acquire load of `tail`; the bytes above are
        // visible once the new tail is.
        h.tail.store(tail + record.len() as u64, Ordering::Release);
        // SeqCst fence: the worker's half of the Dekker handshake (see the module docs).
        fence(Ordering::SeqCst);
        // Only a swap that takes the flag from 1 rings: one doorbell per sleep. AcqRel: pairs
        // with the SeqCst store of 1 in `arm`.
        if h.parent_sleeping.load(Ordering::Relaxed) != 0
            && h.parent_sleeping.swap(0, Ordering::AcqRel) != 0
        {
            doorbell()?;
        }
        Ok(())
    }

    fn wait_for_room(
        &self,
        tail: u64,
        len: usize,
        doorbell: &mut impl FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        let h = self.header();
        let room = |head: u64| CAPACITY as u64 - (tail - head) >= len as u64;
        loop {
            // SeqCst: the futex word is read before the room check. `take` bumps it after it
            // moves `head`, so either this load sees the bump, and with it the new `head`, or
            // the futex wait below returns at once.
            let seen = h.consumed.load(Ordering::SeqCst);
            // Acquire: pairs with the Release store of `head` in `take`: the parent copied
            // those bytes out before it freed their room.
            if room(h.head.load(Ordering::Acquire)) {
                return Ok(());
            }
            // The ring is not empty, so the parent will not go to sleep on it; but it may be
            // asleep already if it has not seen our last record. (AcqRel as in `publish`.)
            if h.parent_sleeping.swap(0, Ordering::AcqRel) != 0 {
                doorbell()?;
            }
            // SeqCst store, then SeqCst load: announce the wait, then check once more. `take`
            // moves `head` before it reads this flag (SeqCst), so it wakes us or we see the
            // room; `seen` above covers a bump that lands in between.
            h.worker_waiting.store(1, Ordering::SeqCst);
            if room(h.head.load(Ordering::SeqCst)) {
                h.worker_waiting.store(0, Ordering::Relaxed);
                return Ok(());
            }
            let slice = rustix::event::Timespec::try_from(WAIT_SLICE).expect("small duration");
            let _ = futex::wait(&h.consumed, futex::Flags::empty(), seen, Some(&slice));
            h.worker_waiting.store(0, Ordering::Relaxed);
        }
    }

    /// Records that the worker starts job `id` (see the module documentation).
    pub(crate) fn mark_started(&self, id: u64) {
        // Relaxed: read only after this process died, which orders it.
        self.header()
            .started
            .store(id.wrapping_add(1), Ordering::Relaxed);
    }

    // ---- parent side ----------------------------------------------------------------------

    /// The id of the job the worker started last, if any. Meaningful once the worker is dead;
    /// a job may have scribbled over it, so the caller checks it against what it sent.
    pub(crate) fn started(&self) -> Option<u64> {
        // Relaxed: see `mark_started`.
        self.header().started.load(Ordering::Relaxed).checked_sub(1)
    }

    /// Announces that the parent is about to sleep. Returns `true` when records are already
    /// pending: then the parent must not sleep.
    pub(crate) fn arm(&self) -> bool {
        let h = self.header();
        // SeqCst store, fence and load of `tail`: the parent's half of the Dekker handshake
        // with `publish` (see the module docs). Only the parent writes `head`.
        h.parent_sleeping.store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        h.tail.load(Ordering::SeqCst) != h.head.load(Ordering::Relaxed)
    }

    /// Whether records wait to be taken (parent side).
    pub(crate) fn pending(&self) -> bool {
        let h = self.header();
        // Acquire: pairs with the worker's Release store of `tail`, as in `take`.
        h.tail.load(Ordering::Acquire) != h.head.load(Ordering::Relaxed)
    }

    /// The parent is awake again: no doorbell needed.
    pub(crate) fn disarm(&self) {
        self.header().parent_sleeping.store(0, Ordering::Relaxed);
    }

    /// Takes every published record, in order, into `buf` (replacing its contents), frees
    /// their room, and calls `each(tag, body)` for each. Returns the number of records.
    ///
    /// # Errors
    ///
    /// The published bytes are not a sequence of whole Result frames.
    pub(crate) fn take(
        &self,
        buf: &mut Vec<u8>,
        mut each: impl FnMut(u64, &[u8]),
    ) -> io::Result<usize> {
        let h = self.header();
        // Only the parent writes `head`.
        let head = h.head.load(Ordering::Relaxed);
        // Acquire: pairs with the worker's Release store of `tail`.
        let tail = h.tail.load(Ordering::Acquire);
        if tail == head {
            return Ok(0);
        }
        let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "corrupt result ring");
        if tail < head || tail - head > CAPACITY as u64 {
            return Err(corrupt());
        }
        let len = (tail - head) as usize;
        let start = (head % CAPACITY as u64) as usize;
        let first = len.min(CAPACITY - start);
        buf.clear();
        buf.reserve(len);
        // SAFETY: both source ranges lie inside the data area (`start + first <= CAPACITY`,
        // `len - first <= CAPACITY`), and `buf` has room for `len` bytes, set below. The
        // worker does not write `[head, tail)` until `head` moves past it.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data().add(start), buf.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.data(), buf.as_mut_ptr().add(first), len - first);
            buf.set_len(len);
        }
        // Release: the copy above is done before the worker may reuse the room.
        h.head.store(tail, Ordering::Release);
        // SeqCst: bump the futex word, then read whether the worker waits; pairs with the
        // worker's SeqCst load of `consumed`, store of `worker_waiting` and load of `head` in
        // `wait_for_room`.
        h.consumed.fetch_add(1, Ordering::SeqCst);
        if h.worker_waiting.load(Ordering::SeqCst) != 0 {
            let _ = futex::wake(&h.consumed, futex::Flags::empty(), 1);
        }
        let mut records = 0;
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let (kind, fds, tag, body_len) = wire::parse_header(rest).ok_or_else(corrupt)?;
            if kind != wire::Kind::Result || fds != 0 || rest.len() < HEADER_LEN + body_len {
                return Err(corrupt());
            }
            each(tag, &rest[HEADER_LEN..HEADER_LEN + body_len]);
            rest = &rest[HEADER_LEN + body_len..];
            records += 1;
        }
        Ok(records)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn record(tag: u64, body: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        wire::begin_result(&mut r);
        r.extend_from_slice(body);
        wire::finish_result(&mut r, tag, None, 0);
        r
    }

    #[test]
    fn smoke_publish_and_take() {
        let parent = Ring::create().unwrap();
        let worker =
            Ring::open(rustix::io::fcntl_dupfd_cloexec(&**parent.fd(), 0).unwrap()).unwrap();
        let mut bells = 0;
        assert!(!parent.arm());
        worker
            .publish(&record(1, b"one"), || {
                bells += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(bells, 1, "a sleeping parent is woken");
        worker
            .publish(&record(2, b"two"), || panic!("rung once per sleep"))
            .unwrap();
        parent.disarm();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        assert_eq!(
            parent
                .take(&mut buf, |tag, body| got.push((tag, body[1..].to_vec())))
                .unwrap(),
            2
        );
        assert_eq!(got, [(1, b"one".to_vec()), (2, b"two".to_vec())]);
        assert!(!parent.arm());
    }

    #[test]
    fn stress_wraps_and_waits_for_room() {
        let parent = Ring::create().unwrap();
        let worker =
            Ring::open(rustix::io::fcntl_dupfd_cloexec(&**parent.fd(), 0).unwrap()).unwrap();
        const N: u64 = 20_000;
        let producer = std::thread::spawn(move || {
            for i in 0..N {
                let body = vec![(i % 251) as u8; (i % 700) as usize];
                worker.publish(&record(i, &body), || Ok(())).unwrap();
            }
        });
        let mut next = 0;
        let mut buf = Vec::new();
        while next < N {
            parent
                .take(&mut buf, |tag, body| {
                    let body = &body[1..]; // the status byte
                    assert_eq!(tag, next);
                    assert_eq!(body.len(), (next % 700) as usize);
                    assert!(body.iter().all(|&b| b == (next % 251) as u8));
                    next += 1;
                })
                .unwrap();
        }
        producer.join().unwrap();
    }
}
