//! Indexed inputs (slices, owned vectors, integer ranges, chunks): `par_map` and the rest
//! of the kit, on one engine.
//!
//! # One engine, one consumer per operation
//!
//! [`drive`] does the sampling and the splitting below for every operation; what an
//! operation does with its items is a [`Consumer`]: [`MapConsumer`] writes results in place
//! (`par_map`, `par_map_init`), [`ForEachConsumer`] only calls (`par_for_each` and its
//! variants), [`TryMapConsumer`] stops at the first `Err`, [`ReduceConsumer`] folds and
//! combines neighbours left to right. Per-piece state (`par_map_init`) is made lazily by
//! the consumer, once per piece, on the thread that maps it.
//!
//! # How the work is cut
//!
//! 1. **Sampling.** The caller maps the first items itself for one sample window (see
//!    [`CostProbe`]),
//!    each batch sized from the cost per item measured so far to fill the rest of that
//!    window. A small input is done by then, sequentially, at nearly the cost of a plain
//!    loop (three clock reads in all). Otherwise the sample gives the cost of an item.
//!    A call site whose last call on this thread was that small maps its next call's first
//!    item without sampling, and reads the clock once, to confirm that the last call and
//!    that item were still small, then maps the rest in one batch ("Call-site memory" in
//!    `sample.rs`): a loop of small calls costs one read per call, and a wrong memory
//!    costs one item.
//! 2. **Is it worth it?** If the rest would take less than [`PARALLEL_MIN_NS`] on one thread,
//!    the caller samples another window instead of handing the rest over: waking workers
//!    would cost more than it saves, unless later items turn out to cost more (a ramp).
//! 3. **Splitting on demand.** The rest goes to the pool as one piece. A worker maps its
//!    piece in batches of about [`CHECK_NS`] (counted in items, with the clock read only
//!    once per [`BATCHES_PER_READ`] batches: see [`Pace`]) and, between batches, looks
//!    whether another worker is idle (a few relaxed loads); if one is, and the half it published last was
//!    taken, it splits what is left in two with `join` and the idle worker steals the
//!    second half. So pieces are cut only when someone needs work, an idle worker always
//!    gets the largest piece left, and skewed costs stay balanced: lazy binary splitting on
//!    top of the lazily publishing `join` (see `pool/registry.rs`).
//!
//! # Stopping early
//!
//! A call shares one [`StopAt`]: the leftmost failing index seen so far, or 0 after a
//! panic (in a `try_` operation a panic is a failure at its index, like an `Err`). A piece
//! stops between batches, and a `try_` batch before each item, once the next item lies at
//! or past it; items left of a failure still run, so the failure reported (the error
//! returned, or the panic re-raised) is the first in input order.
//!
//! # Watches
//!
//! A call captures the watch in force when it starts (see `watch.rs`), checks it before
//! its first item and adds its length to the progress total. The caller checks it after
//! each sample window; a piece checks the token after every batch and the deadline only
//! where its [`Pace`] reads the clock anyway (the clock's lap is taken off the time left,
//! and `Instant` is read only once that says the deadline is near), and counts progress
//! at those reads every [`PROGRESS_EVERY_NS`] of work, never per item ([`Watched`]). A
//! piece that sees a stop records it and lowers [`StopAt`] to 0, so every piece stops at
//! its next batch; the caller then drops the partial results (each exactly once, as after
//! a panic) and unwinds with the stop. Unwatched calls pay one thread-local read (one
//! relaxed load while no watch exists).
//!
//! # Where results go
//!
//! Each piece writes its results straight into their final place in the output vector: no
//! per-item allocation, no reorder pass. A piece returns a [`Written`] that owns the range it
//! initialised; `join` hands both halves' `Written` back and adjacent ranges merge, so when
//! a panic unwinds through the tree every initialised result is dropped exactly once (and,
//! for owned inputs, every item not yet mapped is dropped by its [`OwnedSlice`]).

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::sample::{CallStart, Confirmed, CostProbe, Stopwatch};

use crate::pool::{Panic, catch, current_registry, join, on_worker};
use crate::watch::{self, Active, StopCell, Stopped};

/// Below this much estimated remaining work (ns) the caller finishes alone. Handing work to
/// the pool costs ~1 µs if a worker is awake and 20–50 µs if it must be woken; 30 µs of work
/// is where two threads start to win on the 2-core reference machine.
pub(crate) const PARALLEL_MIN_NS: u64 = 30_000;

/// How much work (ns) a worker does between two looks for idle workers. A look is a
/// thread-local read and three relaxed loads (a few ns), so 2 µs keeps it well under 1%,
/// and an idle worker waits at most about that long before it gets half of a busy
/// worker's piece.
pub(crate) const CHECK_NS: u64 = 2_000;

/// How many batches a piece maps between two clock reads (see [`Pace`]).
///
/// Reading the clock is what a look used to cost most: the TSC takes ~10 ns on the
/// reference machine but 30–84 ns on a loaded VM (measured, issue 11), and two reads per
/// 2 µs batch were 3–8% of the work of a uniform `par_map` (1M × 1 µs ran at 1.89× sequential
/// beside rayon's 1.98×). One read per 8 batches (~16 µs of work) keeps the clock under
/// 0.5% even there; the price is that a cost that jumps between items is noticed up to 8
/// batches late (the looks themselves still happen after every batch).
const BATCHES_PER_READ: usize = 8;

/// The most items between two looks for idle workers, whatever they cost: bounds the damage
/// of an estimate taken on cheap items when later ones are expensive.
pub(crate) const MAX_INTERVAL: usize = 4096;

/// Output buffers at least this large are backed by transparent huge pages when freshly
/// allocated. Writing a fresh buffer is dominated by page faults (one per 4 KiB: 20k for
/// 10M `u64`, ~40 ms on the reference machine); with 2 MiB pages there are 512 times fewer.
/// Below a few huge pages the rounding would waste memory for little gain.
const HUGE_PAGE_MIN_BYTES: usize = 8 << 20;

/// The transparent huge page size on x86-64 and aarch64 (4 KiB granule) Linux.
const HUGE_PAGE: usize = 2 << 20;

/// Asks Linux to back the 2 MiB-aligned interior of a freshly allocated, not yet touched
/// output buffer (`len` places of `R` at `ptr`) with transparent huge pages. A hint: errors
/// (no THP support, `never` mode) are ignored, and the contents are unaffected.
#[cfg(target_os = "linux")]
fn advise_huge_pages<R>(ptr: *mut R, len: usize) {
    let bytes = len.saturating_mul(std::mem::size_of::<R>());
    if bytes < HUGE_PAGE_MIN_BYTES {
        return;
    }
    let start = ptr as usize;
    let aligned_start = start.next_multiple_of(HUGE_PAGE);
    let aligned_end = (start + bytes) / HUGE_PAGE * HUGE_PAGE;
    if aligned_end > aligned_start {
        // SAFETY: the range lies inside the buffer's own allocation (rounded inwards), and
        // MADV_HUGEPAGE only changes how the kernel backs it, never its contents or
        // validity.
        unsafe {
            libc::madvise(
                aligned_start as *mut libc::c_void,
                aligned_end - aligned_start,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<R>(_ptr: *mut R, _len: usize) {}

/// An indexed input: splits in two, and is consumed in order on any thread.
pub trait Source: Send + Sized {
    type Item;
    type Iter: Iterator<Item = Self::Item>;
    fn len(&self) -> usize;
    /// `[0, index)` and `[index, len)`.
    fn split_at(self, index: usize) -> (Self, Self);
    fn into_iter(self) -> Self::Iter;
}

impl<'a, T: Sync> Source for &'a [T] {
    type Item = &'a T;
    type Iter = std::slice::Iter<'a, T>;

    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn split_at(self, index: usize) -> (Self, Self) {
        <[T]>::split_at(self, index)
    }
    fn into_iter(self) -> Self::Iter {
        self.iter()
    }
}

impl<'a, T: Send> Source for &'a mut [T] {
    type Item = &'a mut T;
    type Iter = std::slice::IterMut<'a, T>;

    fn len(&self) -> usize {
        <[T]>::len(self)
    }
    fn split_at(self, index: usize) -> (Self, Self) {
        self.split_at_mut(index)
    }
    fn into_iter(self) -> Self::Iter {
        self.iter_mut()
    }
}

/// A slice as consecutive chunks of `size` items (the last may be shorter): one item per
/// chunk.
#[derive(Debug)]
pub struct Chunks<S> {
    pub(crate) slice: S,
    /// At least 1.
    pub(crate) size: usize,
}

impl<'a, T: Sync> Source for Chunks<&'a [T]> {
    type Item = &'a [T];
    type Iter = std::slice::Chunks<'a, T>;

    fn len(&self) -> usize {
        self.slice.len().div_ceil(self.size)
    }
    fn split_at(self, index: usize) -> (Self, Self) {
        let (left, right) = self
            .slice
            .split_at((index * self.size).min(self.slice.len()));
        let size = self.size;
        (Chunks { slice: left, size }, Chunks { slice: right, size })
    }
    fn into_iter(self) -> Self::Iter {
        self.slice.chunks(self.size)
    }
}

impl<'a, T: Send> Source for Chunks<&'a mut [T]> {
    type Item = &'a mut [T];
    type Iter = std::slice::ChunksMut<'a, T>;

    fn len(&self) -> usize {
        self.slice.len().div_ceil(self.size)
    }
    fn split_at(self, index: usize) -> (Self, Self) {
        let at = (index * self.size).min(self.slice.len());
        let (left, right) = self.slice.split_at_mut(at);
        let size = self.size;
        (Chunks { slice: left, size }, Chunks { slice: right, size })
    }
    fn into_iter(self) -> Self::Iter {
        self.slice.chunks_mut(self.size)
    }
}

/// The elements of a vector whose buffer the caller keeps; each element is owned by exactly
/// one `OwnedSlice` until it is read (moved into `f`) or dropped with the slice.
pub(crate) struct OwnedSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    marker: PhantomData<&'a mut [T]>,
}

// SAFETY: an `OwnedSlice` owns its elements (moving it moves them to another thread), so it
// is `Send` when `T` is.
unsafe impl<T: Send> Send for OwnedSlice<'_, T> {}

impl<'a, T> OwnedSlice<'a, T> {
    /// Takes ownership of `vec`'s elements, leaving it empty with its buffer.
    pub(crate) fn new(vec: &'a mut Vec<T>) -> Self {
        let len = vec.len();
        // SAFETY: the elements now belong to the returned slice; the vector no longer
        // drops them. Its buffer stays allocated for the lifetime `'a`.
        unsafe { vec.set_len(0) };
        OwnedSlice {
            ptr: vec.as_mut_ptr(),
            len,
            marker: PhantomData,
        }
    }
}

impl<T> Drop for OwnedSlice<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the slice owns `len` initialised elements at `ptr`.
        unsafe { std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) };
    }
}

impl<'a, T: Send> Source for OwnedSlice<'a, T> {
    type Item = T;
    type Iter = OwnedIter<'a, T>;

    fn len(&self) -> usize {
        self.len
    }
    fn split_at(self, index: usize) -> (Self, Self) {
        assert!(index <= self.len);
        let this = ManuallyDrop::new(self);
        // SAFETY: `index <= len`, so both halves lie within the original elements, and
        // ownership of each element passes to exactly one half (`this` is not dropped).
        let right = unsafe { this.ptr.add(index) };
        (
            OwnedSlice {
                ptr: this.ptr,
                len: index,
                marker: PhantomData,
            },
            OwnedSlice {
                ptr: right,
                len: this.len - index,
                marker: PhantomData,
            },
        )
    }
    fn into_iter(self) -> Self::Iter {
        OwnedIter { rest: self }
    }
}

/// Moves the elements of an [`OwnedSlice`] out in order; drops the rest if dropped early.
pub(crate) struct OwnedIter<'a, T> {
    rest: OwnedSlice<'a, T>,
}

impl<T> Iterator for OwnedIter<'_, T> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        if self.rest.len == 0 {
            return None;
        }
        let ptr = self.rest.ptr;
        // SAFETY: the first element is owned and initialised; after advancing past it, the
        // slice no longer owns (or drops) it, so it is read exactly once.
        unsafe {
            self.rest.ptr = ptr.add(1);
            self.rest.len -= 1;
            Some(ptr.read())
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.rest.len, Some(self.rest.len))
    }
}

/// An integer range as `start` plus a length, for every primitive integer type.
#[derive(Debug, Clone, Copy)]
pub struct IntRange<T> {
    start: T,
    len: usize,
}

/// Integers that [`IntRange`] can step through.
pub trait Int: Copy + Send + Sync + 'static {
    /// `self + offset`, for offsets that keep the result in range.
    fn offset(self, offset: usize) -> Self;
    /// The number of integers in `start..end`, if it fits in `usize`.
    fn distance(start: Self, end: Self) -> Option<usize>;
}

macro_rules! int_impls {
    ($($t:ty),*) => {$(
        impl Int for $t {
            #[inline]
            fn offset(self, offset: usize) -> Self {
                // Truncating `offset` and wrapping is exact: the true result is in range.
                self.wrapping_add(offset as $t)
            }
            fn distance(start: Self, end: Self) -> Option<usize> {
                if end <= start {
                    return Some(0);
                }
                usize::try_from((end as i128) - (start as i128)).ok()
            }
        }
    )*};
}
int_impls!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl<T: Int> IntRange<T> {
    /// `range` as an `IntRange`.
    ///
    /// # Panics
    ///
    /// If the range holds more than `usize::MAX` integers.
    pub(crate) fn new(range: Range<T>) -> Self {
        let len = T::distance(range.start, range.end)
            .expect("parpool: the range has more elements than usize can count");
        IntRange {
            start: range.start,
            len,
        }
    }

    /// `start..=end` as an `IntRange`; `start <= end`.
    ///
    /// # Panics
    ///
    /// If the range holds more than `usize::MAX` integers.
    pub(crate) fn inclusive(start: T, end: T) -> Self {
        let len = T::distance(start, end)
            .and_then(|len| len.checked_add(1))
            .expect("parpool: the range has more elements than usize can count");
        IntRange { start, len }
    }
}

impl<T: Int> Source for IntRange<T> {
    type Item = T;
    type Iter = IntIter<T>;

    fn len(&self) -> usize {
        self.len
    }
    fn split_at(self, index: usize) -> (Self, Self) {
        assert!(index <= self.len);
        (
            IntRange {
                start: self.start,
                len: index,
            },
            IntRange {
                start: self.start.offset(index),
                len: self.len - index,
            },
        )
    }
    fn into_iter(self) -> Self::Iter {
        IntIter {
            range: self,
            next: 0,
        }
    }
}

/// The integers of an [`IntRange`], in order.
#[derive(Debug)]
pub struct IntIter<T> {
    range: IntRange<T>,
    next: usize,
}

impl<T: Int> Iterator for IntIter<T> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        if self.next == self.range.len {
            return None;
        }
        let value = self.range.start.offset(self.next);
        self.next += 1;
        Some(value)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.range.len - self.next;
        (left, Some(left))
    }
}

/// Results initialised in `[ptr, ptr + len)`, owned: dropped with this value unless
/// [released](Written::release) into the output vector.
pub(crate) struct Written<R> {
    ptr: *mut R,
    len: usize,
}

// SAFETY: a `Written` owns its results, so moving it to another thread moves them.
unsafe impl<R: Send> Send for Written<R> {}

impl<R> Written<R> {
    fn empty(ptr: *mut R) -> Self {
        Written { ptr, len: 0 }
    }

    /// Appends `other` if it starts where `self` ends. Otherwise `other` is dropped: that
    /// only happens while a panic unwinds the tree and the whole result is discarded.
    fn append(&mut self, other: Written<R>) {
        // `wrapping_add`: only an address comparison (and a no-op for zero-sized `R`).
        if self.ptr.wrapping_add(self.len) == other.ptr {
            self.len += other.len;
            std::mem::forget(other);
        }
    }

    /// Gives up ownership of the results (they now belong to the output vector); returns
    /// how many there are.
    fn release(self) -> usize {
        let len = self.len;
        std::mem::forget(self);
        len
    }
}

impl<R> Drop for Written<R> {
    fn drop(&mut self) {
        // SAFETY: `len` results starting at `ptr` are initialised and owned by `self`.
        unsafe { std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) };
    }
}

/// `len` uninitialised output places starting at `ptr`, each written by exactly one batch.
pub(crate) struct Dst<R> {
    ptr: *mut R,
    len: usize,
}

// SAFETY: a `Dst` is the exclusive right to write its places; results are `Send`.
unsafe impl<R: Send> Send for Dst<R> {}

impl<R> Dst<R> {
    fn split_at(self, index: usize) -> (Dst<R>, Dst<R>) {
        debug_assert!(index <= self.len);
        (
            Dst {
                ptr: self.ptr,
                len: index,
            },
            // `wrapping_add` stays inside the allocation (index <= len) and is a no-op for
            // zero-sized `R`.
            Dst {
                ptr: self.ptr.wrapping_add(index),
                len: self.len - index,
            },
        )
    }
}

/// Where a call stops: the index of the leftmost item known to have failed (`try_`
/// operations, for an `Err` or a panic), 0 once anything else panicked, [`GO_ON`] while
/// nothing has. No item at or past
/// it is started; items before it still are, so the error a call returns is the first in
/// input order, as sequentially. Relaxed: it only decides how much work is skipped, and the
/// results themselves travel back through `join`.
pub(crate) type StopAt = AtomicUsize;

/// [`StopAt`] while nothing has failed.
const GO_ON: usize = usize::MAX;

/// Stops the whole call if dropped during a panic.
struct StopOnUnwind<'a>(&'a StopAt);

impl Drop for StopOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(0, Ordering::Relaxed);
        }
    }
}

/// Whether other pieces of a call may run while a batch does, and so lower its [`StopAt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peers {
    /// The batch runs alone: the caller's sampling (the pool's pieces start only after
    /// it), or a pool of one thread called from outside. Only the batch itself can fail,
    /// and it stops at once when it does, so a `try_` batch looks at [`StopAt`] only
    /// before its first item (before each item, it cost a 1k-item `try_par_for_each` 4
    /// of its 15 instructions per item; callgrind, issue 11).
    Alone,
    /// Pieces may run on other threads: a `try_` batch looks at [`StopAt`] before each
    /// item, so that no item right of a failure found elsewhere starts.
    Running,
}

/// What one call does with its items. The engine (sampling, splitting on demand) is the
/// same for every operation of the kit; they differ only here.
///
/// A call's items are cut into pieces, and each piece into batches consumed in order on
/// one thread. Every batch gets a [`Place`](Consumer::Place) (its share of the output,
/// split alongside the items) and hands back an [`Out`](Consumer::Out); the engine merges
/// the outs of neighbouring batches and pieces left to right, so a merge always sees two
/// neighbours in input order.
pub(crate) trait Consumer<I>: Sync {
    /// A batch's share of the output: the places it writes, or `()`.
    type Place: Send;
    /// What a batch or piece hands back.
    type Out: Send;
    /// Made lazily, at most once per piece, on the thread that maps the piece.
    type State;

    /// A piece's state, made before its first batch.
    fn make_state(&self) -> Self::State;
    /// `place` cut like the items: `[0, index)` and `[index, len)`.
    fn split_place(place: Self::Place, index: usize) -> (Self::Place, Self::Place);
    /// The out of no items at `place`.
    fn empty(&self, place: &Self::Place) -> Self::Out;
    /// Consumes `items`, the call's items from index `start` on, in order into `place`
    /// (as many items as it has places). A failure at index `i` lowers `stop` to `i`;
    /// `peers` says whether other pieces may lower it meanwhile.
    fn consume(
        &self,
        state: &mut Self::State,
        items: impl Iterator<Item = I>,
        place: Self::Place,
        start: usize,
        stop: &StopAt,
        peers: Peers,
    ) -> Self::Out;
    /// The out of `left` followed by `right`.
    fn merge(&self, left: Self::Out, right: Self::Out) -> Self::Out;
    /// Whether `out` carries a panic a batch caught (the `try_` operations keep panics as
    /// failures): the caller re-raises it, even if the watch stopped the call too, as a
    /// panic unwinds the other operations whatever the watch says.
    fn holds_panic(_out: &Self::Out) -> bool {
        false
    }
}

/// Consumes one batch on this thread; a panic in it tells the other pieces to stop.
#[inline]
fn run_batch<S, C>(
    consumer: &C,
    state: &mut Option<C::State>,
    (source, place): (S, C::Place),
    start: usize,
    stop: &StopAt,
    peers: Peers,
) -> C::Out
where
    S: Source,
    C: Consumer<S::Item>,
{
    // The state lives in a local for the batch, where the compiler can keep it in
    // registers; behind `&mut Option` it must assume that any opaque call in `f` changes it
    // (measured: `par_for_each_init` over 1k items took 2.7× its loop). A panic drops it
    // here, once.
    let mut local = state.take().unwrap_or_else(|| consumer.make_state());
    let unwinding = StopOnUnwind(stop);
    let out = consumer.consume(&mut local, source.into_iter(), place, start, stop, peers);
    std::mem::forget(unwinding);
    *state = Some(local);
    out
}

/// What every piece of one call shares.
struct Ctx<'c, C> {
    consumer: &'c C,
    /// No piece is cut shorter than this (`with_min_len`; at least 1).
    min_len: usize,
    /// Where the call stops.
    stop: StopAt,
    /// The watch the call captured when it started.
    watch: Option<Active>,
    /// Why the watch stopped the call, if it did.
    stopped: StopCell,
}

impl<C> Ctx<'_, C> {
    /// Stops every piece of the call at its next batch, for `stopped`.
    #[cold]
    fn stop_for(&self, stopped: Stopped) {
        self.stopped.record(stopped);
        self.stop.store(0, Ordering::Relaxed);
    }

    /// After a stretch of `items` on the calling thread: adds them to the watch's progress
    /// and checks the watch, if the call has one.
    #[inline]
    fn count_and_check(&self, items: usize) -> Result<(), Stopped> {
        match &self.watch {
            Some(active) => {
                active.add(items as u64);
                active.check()
            }
            None => Ok(()),
        }
    }
}

/// How much work (ns) a piece does between two additions to its watch's progress. An
/// addition is one relaxed `fetch_add` on a line every worker writes: ~100 ns when it
/// must move between cores, so every 2 µs batch would cost up to 5%, and every clock
/// read (~16 µs) still ~0.6%; every 100 µs it is ~0.1%, while a progress bar redraws
/// ~15 times a second, 600 times less often.
const PROGRESS_EVERY_NS: f64 = 100_000.0;

/// A [`Pace`] lap (the time between two of its clock reads, [`BATCHES_PER_READ`] batches)
/// longer than this means coarse items: the deadline is then checked after every batch,
/// not only on laps, so it is overrun by about one item instead of eight. One clock read
/// (~25 ns) per batch is then under 0.2% of the work; a lap this long overruns a deadline
/// by 0.1 ms at most.
const COARSE_LAP_NS: f64 = 100_000.0;

/// A piece's share of its call's watch: the items done since progress was last counted,
/// and the time left to the deadline by the piece's own clock reads.
struct Watched<'c> {
    active: &'c Active,
    /// Items done and not yet added to the progress.
    pending: u64,
    /// Work (ns) since the pending items started to pile up, by the [`Pace`] laps.
    pending_ns: f64,
    /// Nanoseconds to the deadline at the last `Instant` read, less the [`Pace`] laps
    /// since (infinite without a deadline).
    left_ns: f64,
    /// Whether to check the deadline after every batch: there is one and the items are
    /// coarse (the last lap took over [`COARSE_LAP_NS`]; before the first lap, the piece
    /// starts at one item per batch).
    every_batch: bool,
}

impl<'c> Watched<'c> {
    fn new(active: &'c Active, interval: usize) -> Self {
        Watched {
            active,
            pending: 0,
            pending_ns: 0.0,
            left_ns: time_left_ns(active),
            every_batch: interval == 1 && active.deadline().is_some(),
        }
    }

    /// A batch of `items` is done; `lap_ns` is the time the piece's pace measured if it
    /// read the clock after this batch. The token is checked every batch (a load); the
    /// deadline only on a lap, and the progress counted on the lap that completes
    /// [`PROGRESS_EVERY_NS`] (and when the piece ends). Over coarse items the deadline is
    /// checked after every batch (see [`COARSE_LAP_NS`]).
    #[inline]
    fn batch_done(&mut self, items: usize, lap_ns: Option<f64>) -> Result<(), Stopped> {
        self.pending += items as u64;
        self.active.check_token()?;
        if self.every_batch && lap_ns.is_none() {
            // One clock read; `left_ns` goes on counting down by the laps.
            return self.active.check();
        }
        if let Some(lap_ns) = lap_ns {
            self.every_batch = lap_ns > COARSE_LAP_NS && self.left_ns.is_finite();
            self.pending_ns += lap_ns;
            if self.pending_ns >= PROGRESS_EVERY_NS {
                self.flush();
            }
            self.left_ns -= lap_ns;
            if self.left_ns <= 0.0 {
                return self.deadline_near();
            }
        }
        Ok(())
    }

    /// The laps say the deadline passed: ask `Instant` (the laps' clock is calibrated to
    /// ~1%), and go on with what it says is left.
    #[cold]
    fn deadline_near(&mut self) -> Result<(), Stopped> {
        self.active.check()?;
        self.left_ns = time_left_ns(self.active);
        Ok(())
    }

    /// Adds the pending items to the progress.
    fn flush(&mut self) {
        if self.pending > 0 {
            self.active.add(self.pending);
            self.pending = 0;
        }
        self.pending_ns = 0.0;
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Nanoseconds from now to `active`'s deadline (infinite without one): one `Instant` read
/// when it has a deadline.
fn time_left_ns(active: &Active) -> f64 {
    active.deadline().map_or(f64::INFINITY, |deadline| {
        deadline
            .saturating_duration_since(Instant::now())
            .as_nanos() as f64
    })
}

/// Whether the current worker should split its piece: some worker is idle and the last
/// piece this worker published has been taken.
fn peers_want_work() -> bool {
    crate::pool::peers_want_work()
}

/// Items between two looks for idle workers for items of `per_item_ns` each: about
/// [`CHECK_NS`] of work, at most [`MAX_INTERVAL`] items.
fn interval_for(per_item_ns: f64) -> usize {
    (CHECK_NS as f64 / per_item_ns.max(f64::MIN_POSITIVE)).clamp(1.0, MAX_INTERVAL as f64) as usize
}

/// The batch size of one piece, kept near [`CHECK_NS`] of work as the cost per item drifts
/// (a ramp of costs). Batches are counted in items; the clock is read once per
/// [`BATCHES_PER_READ`] batches, and the cost per item re-estimated from all of them.
struct Pace {
    /// Items per batch.
    interval: usize,
    /// Items mapped since the last clock read.
    counted: usize,
    /// Running since the last clock read.
    watch: Stopwatch,
}

impl Pace {
    /// A piece's pace, starting at `interval` items per batch (its parent's, or the
    /// sample's).
    fn new(interval: usize) -> Self {
        Pace {
            interval,
            counted: 0,
            watch: Stopwatch::start(),
        }
    }

    /// A batch of `items` is done; every [`BATCHES_PER_READ`] batches, re-estimate. Returns
    /// the time since the last clock read when it read the clock (for [`Watched`]).
    #[inline]
    fn batch_done(&mut self, items: usize) -> Option<f64> {
        self.counted += items;
        if self.counted >= self.interval.saturating_mul(BATCHES_PER_READ) {
            return Some(self.measure());
        }
        None
    }

    fn measure(&mut self) -> f64 {
        let lap_ns = self.watch.lap_ns();
        let per_item_ns = lap_ns / self.counted as f64;
        self.interval = interval_for(per_item_ns);
        self.counted = 0;
        lap_ns
    }
}

/// Consumes a piece on this worker, in batches of about [`CHECK_NS`] (see [`Pace`]);
/// between batches, if another worker is idle, splits what is left in two with `join`, so
/// the idle worker can take the second half (lazy binary splitting). Both halves start at
/// this piece's batch size. `start` is the index of the piece's first item in the call.
fn split_on_demand<S, C>(
    mut source: S,
    mut place: C::Place,
    mut start: usize,
    interval: usize,
    ctx: &Ctx<'_, C>,
) -> C::Out
where
    S: Source,
    C: Consumer<S::Item>,
{
    let consumer = ctx.consumer;
    let mut out = consumer.empty(&place);
    let mut state = None;
    let mut pace = Pace::new(interval);
    let mut watched = ctx
        .watch
        .as_ref()
        .map(|active| Watched::new(active, interval));
    while source.len() > 0 {
        if ctx.stop.load(Ordering::Relaxed) <= start {
            // A panic, or a failure left of here: the rest of `source` is dropped
            // unconsumed.
            break;
        }
        // `len / 2 >= min_len` is `len >= 2 * min_len`, without overflow for a huge `min_len`.
        if source.len() / 2 >= ctx.min_len && peers_want_work() {
            // Each half makes its own state and counts its own progress: this piece's are
            // not needed any more.
            drop(state);
            drop(watched);
            let mid = source.len() / 2;
            let (left, right) = source.split_at(mid);
            let (left_place, right_place) = C::split_place(place, mid);
            let interval = pace.interval;
            let (a, b) = join(
                || split_on_demand(left, left_place, start, interval, ctx),
                || split_on_demand(right, right_place, start + mid, interval, ctx),
            );
            return consumer.merge(consumer.merge(out, a), b);
        }
        let take = pace.interval.min(source.len());
        let (head, tail) = source.split_at(take);
        let (head_place, tail_place) = C::split_place(place, take);
        (source, place) = (tail, tail_place);
        let batch = run_batch(
            consumer,
            &mut state,
            (head, head_place),
            start,
            &ctx.stop,
            Peers::Running,
        );
        start += take;
        out = consumer.merge(out, batch);
        let lap_ns = pace.batch_done(take);
        if let Some(watched) = &mut watched {
            if let Err(stopped) = watched.batch_done(take, lap_ns) {
                ctx.stop_for(stopped);
            }
        }
    }
    out
}

/// A recalled call whose first item confirmed its memory ("Call-site memory" in
/// `sample.rs`): the other items (`source`, from index 1) in one batch on this thread, then
/// the watch, as after a sample window. `first` is the first item's result.
///
/// Never inlined: inside `drive` the batch's loop is compiled as a plain loop over an index
/// (no unrolling; 6 instructions per item of `par_for_each_mut(|x| *x *= 3)` against 3.4 for
/// the same loop alone), and on its own it compiles like sequential code. Measured on 1k
/// trivial items, time over the sequential loop's (interleaved rounds): `par_for_each_mut`
/// 1.88–1.96× → 1.13–1.15×, `try_par_for_each` 1.47–1.76× → 0.99–1.06×,
/// `par_chunks(16).map` 1.39–1.45× → 1.21–1.29×; `par_map`, `par_sum` and `par_map_init`
/// move within their noise (±0.07) for the one call more.
#[inline(never)]
fn drive_confirmed<S, C>(
    (source, place): (S, C::Place),
    first: C::Out,
    state: &mut Option<C::State>,
    ctx: &Ctx<'_, C>,
    confirmed: Confirmed,
) -> C::Out
where
    S: Source,
    C: Consumer<S::Item>,
{
    let len = 1 + source.len();
    let rest = run_batch(
        ctx.consumer,
        state,
        (source, place),
        1,
        &ctx.stop,
        Peers::Alone,
    );
    let out = ctx.consumer.merge(first, rest);
    if let Err(stopped) = ctx.count_and_check(len) {
        if C::holds_panic(&out) {
            // The batch panicked: its panic wins (the caller re-raises it).
            return out;
        }
        drop(out);
        watch::unwind(stopped);
    }
    if ctx.stop.load(Ordering::Relaxed) == GO_ON {
        confirmed.finished();
    }
    out
}

/// Consumes every item of `source` into `place` on the current pool: sampling on the
/// caller, then splitting on demand (see the module docs). `min_len` is the shortest piece
/// the pool may cut (0 counts as 1).
pub(crate) fn drive<S, C>(source: S, place: C::Place, consumer: &C, min_len: usize) -> C::Out
where
    S: Source,
    C: Consumer<S::Item>,
{
    let min_len = min_len.max(1);
    let ctx = Ctx {
        consumer,
        min_len,
        stop: StopAt::new(GO_ON),
        watch: Active::current(),
        stopped: StopCell::default(),
    };
    if let Some(active) = &ctx.watch {
        if let Err(stopped) = active.check() {
            drop(source);
            watch::unwind(stopped);
        }
        active.expect(Some(source.len() as u64));
    }
    let stop = &ctx.stop;
    let mut state = None;
    // The call site: this function's instance for the operation's closure types.
    let site = drive::<S, C> as fn(S, C::Place, &C, usize) -> C::Out as usize;
    let (mut probe, mut start, first, (source, place)) =
        match CostProbe::at_site(site, source.len()) {
            CallStart::Sampling(probe) => (probe, 0, consumer.empty(&place), (source, place)),
            CallStart::Recalled(recall) => {
                // Its first item, then its one clock read (see "Call-site memory" in
                // `sample.rs`).
                let len = source.len();
                let (head, tail) = source.split_at(1);
                let (head_place, tail_place) = C::split_place(place, 1);
                let first = run_batch(
                    consumer,
                    &mut state,
                    (head, head_place),
                    0,
                    stop,
                    Peers::Alone,
                );
                let probe = if stop.load(Ordering::Relaxed) == GO_ON {
                    match recall.confirm(len) {
                        Ok(confirmed) => {
                            return drive_confirmed(
                                (tail, tail_place),
                                first,
                                &mut state,
                                &ctx,
                                confirmed,
                            );
                        }
                        Err(probe) => probe,
                    }
                } else {
                    // A failure: the sampling below maps nothing more and ends the call.
                    CostProbe::new()
                };
                (probe, 1, first, (tail, tail_place))
            }
        };
    let mut out = Some(first);
    let mut rest = Some((source, place));

    // 1. Sampling on this thread, window by window, until the input is done (or failed) or
    //    the rest is estimated to be worth parallel work.
    // The items already added to the progress.
    let mut counted = 0;
    let per_item_ns = loop {
        let window = probe.window(|batch| {
            let (source, place) = rest.take().expect("the rest is put back after every batch");
            if source.len() == 0 {
                rest = Some((source, place));
                return (0, false);
            }
            let take = batch.min(source.len());
            let (head, tail) = source.split_at(take);
            let (head_place, tail_place) = C::split_place(place, take);
            let more = tail.len() > 0;
            rest = Some((tail, tail_place));
            let batch_out = run_batch(
                consumer,
                &mut state,
                (head, head_place),
                start,
                stop,
                Peers::Alone,
            );
            start += take;
            let so_far = out.take().expect("the out is put back after every batch");
            out = Some(consumer.merge(so_far, batch_out));
            // Done (or failed): say so now, sparing a clock read (~10 ns, most of what a
            // tiny call costs beyond its loop).
            (take, more && stop.load(Ordering::Relaxed) > start)
        });
        let remaining = rest.as_ref().map_or(0, |(source, _)| source.len());
        if let Err(stopped) = ctx.count_and_check(start - counted) {
            let out = out.expect("the out is put back after every batch");
            if C::holds_panic(&out) {
                // A batch panicked: its panic wins (the caller re-raises it).
                return out;
            }
            // The rest is dropped unconsumed, and the results so far with `out`.
            drop((rest, out));
            watch::unwind(stopped);
        }
        counted = start;
        match window {
            Some(per_item_ns)
                if per_item_ns * remaining as f64 >= PARALLEL_MIN_NS as f64
                    && remaining / 2 >= min_len =>
            {
                break per_item_ns;
            }
            Some(_) => {}
            None => {
                if remaining == 0 && stop.load(Ordering::Relaxed) == GO_ON {
                    probe.finished();
                }
                return out.expect("the out is put back after every batch");
            }
        }
    };
    let (rest, place) = rest.expect("the rest is put back after every batch");
    let out = out.expect("the out is put back after every batch");

    // 2. The rest, on the pool.
    let registry = current_registry();
    let alone = registry.num_threads() == 1 && !on_worker();
    let tail = if alone && ctx.watch.is_none() {
        // One worker would only take the work off this thread, not share it.
        run_batch(
            consumer,
            &mut state,
            (rest, place),
            start,
            stop,
            Peers::Alone,
        )
    } else {
        // The pool's pieces make their own state; the caller's is done.
        drop(state);
        let interval = interval_for(per_item_ns);
        if alone {
            // Watched: in batches on this thread, which check the watch between them.
            split_on_demand(rest, place, start, interval, &ctx)
        } else {
            registry.in_worker(|_| split_on_demand(rest, place, start, interval, &ctx))
        }
    };
    let out = consumer.merge(out, tail);
    match ctx.stopped.get() {
        // A batch's panic wins over the stop: the caller re-raises it.
        Some(stopped) if !C::holds_panic(&out) => {
            // The partial results go with `out`, each exactly once (see "Where results go").
            drop(out);
            watch::unwind(stopped);
        }
        _ => {}
    }
    out
}

impl<R> Dst<R> {
    /// Writes `value` at place `index`.
    ///
    /// # Safety
    ///
    /// `index < self.len`, and each place is written at most once.
    #[inline]
    unsafe fn write(&self, index: usize, value: R) {
        debug_assert!(index < self.len);
        // SAFETY: `index < len` (the caller's promise), so the place lies inside the
        // output buffer (or is a no-op for zero-sized `R`), and nobody else writes it.
        unsafe { self.ptr.wrapping_add(index).write(value) };
    }
}

/// `map`, `map_init` and `for_each` (a map to `()`): each result goes to its place in the
/// output. `f` gets the piece's state, made by `init` (`()` for the plain operations).
pub(crate) struct MapConsumer<'f, Init, F> {
    pub(crate) init: &'f Init,
    pub(crate) f: &'f F,
}

impl<I, St, R, Init, F> Consumer<I> for MapConsumer<'_, Init, F>
where
    Init: Fn() -> St + Sync,
    F: Fn(&mut St, I) -> R + Sync,
    R: Send,
{
    type Place = Dst<R>;
    type Out = Written<R>;
    type State = St;

    fn make_state(&self) -> St {
        (self.init)()
    }

    fn split_place(place: Dst<R>, index: usize) -> (Dst<R>, Dst<R>) {
        place.split_at(index)
    }
    fn empty(&self, place: &Dst<R>) -> Written<R> {
        Written::empty(place.ptr)
    }
    #[inline]
    fn consume(
        &self,
        state: &mut St,
        items: impl Iterator<Item = I>,
        place: Dst<R>,
        _start: usize,
        _stop: &StopAt,
        _peers: Peers,
    ) -> Written<R> {
        let mut written = Written::empty(place.ptr);
        // One counter for both the items and the places where the iterator allows it
        // (`zip` over a slice's items and a range is indexed): `take` kept two.
        for (offset, item) in (0..place.len).zip(items) {
            let value = (self.f)(state, item);
            // SAFETY: `offset < place.len` (the range), and this batch alone owns its
            // places, each visited once.
            unsafe { place.write(offset, value) };
            written.len = offset + 1;
        }
        written
    }
    fn merge(&self, mut left: Written<R>, right: Written<R>) -> Written<R> {
        left.append(right);
        left
    }
}

/// `for_each` and its variants: nothing is collected, so a batch is the plain loop.
pub(crate) struct ForEachConsumer<'f, Init, F> {
    pub(crate) init: &'f Init,
    pub(crate) f: &'f F,
}

impl<I, St, Init, F> Consumer<I> for ForEachConsumer<'_, Init, F>
where
    Init: Fn() -> St + Sync,
    F: Fn(&mut St, I) + Sync,
{
    type Place = ();
    type Out = ();
    type State = St;

    fn make_state(&self) -> St {
        (self.init)()
    }

    fn split_place((): (), _index: usize) -> ((), ()) {
        ((), ())
    }
    fn empty(&self, (): &()) {}
    #[inline]
    fn consume(
        &self,
        state: &mut St,
        items: impl Iterator<Item = I>,
        (): (),
        _start: usize,
        _stop: &StopAt,
        _peers: Peers,
    ) {
        items.for_each(|item| (self.f)(state, item));
    }
    fn merge(&self, (): (), (): ()) {}
}

/// Calls `f` (with state from `init`) on every item of `source`, on the current pool.
pub(crate) fn for_each<S, St, Init, F>(source: S, init: &Init, f: &F, min_len: usize)
where
    S: Source,
    Init: Fn() -> St + Sync,
    F: Fn(&mut St, S::Item) + Sync,
{
    drive(source, (), &ForEachConsumer { init, f }, min_len);
}

/// Why a `try_` batch stopped early: `f` returned an `Err`, or it panicked.
pub(crate) enum Failure<E> {
    Err(E),
    Panic(Panic),
}

/// `try_map` and `try_for_each`: like [`MapConsumer`], but an `Err` stops the call. While
/// pieces run on several threads, every batch checks [`StopAt`] before each item, so once
/// an error is seen no item right of it starts anywhere (a batch that runs alone checks it
/// before its first item: see [`Peers`]); the results are dropped with their `Written`.
///
/// A panic in `f` is a failure at its index like an `Err` (caught in the batch, re-raised
/// by [`try_map_into`] if it is the leftmost failure): an item right of the first `Err`
/// may already be running when that `Err` is found, and its panic must not replace the
/// error that sequential code would have returned.
pub(crate) struct TryMapConsumer<'f, Init, F> {
    pub(crate) init: &'f Init,
    pub(crate) f: &'f F,
}

impl<I, St, R, E, Init, F> Consumer<I> for TryMapConsumer<'_, Init, F>
where
    Init: Fn() -> St + Sync,
    F: Fn(&mut St, I) -> Result<R, E> + Sync,
    R: Send,
    E: Send,
{
    type Place = Dst<R>;
    type Out = Result<Written<R>, Failure<E>>;
    type State = St;

    fn make_state(&self) -> St {
        (self.init)()
    }

    fn split_place(place: Dst<R>, index: usize) -> (Dst<R>, Dst<R>) {
        place.split_at(index)
    }
    fn empty(&self, place: &Dst<R>) -> Self::Out {
        Ok(Written::empty(place.ptr))
    }
    #[inline]
    fn consume(
        &self,
        state: &mut St,
        items: impl Iterator<Item = I>,
        place: Dst<R>,
        start: usize,
        stop: &StopAt,
        peers: Peers,
    ) -> Self::Out {
        let mut written = Written::empty(place.ptr);
        let mut index = start;
        if stop.load(Ordering::Relaxed) <= start {
            return Ok(written);
        }
        let look = peers == Peers::Running;
        let outcome = catch(|| {
            for (offset, item) in (0..place.len).zip(items) {
                if look && stop.load(Ordering::Relaxed) <= index {
                    break;
                }
                match (self.f)(state, item) {
                    // SAFETY: `offset < place.len` (the range), and this batch alone owns
                    // its places, each visited once.
                    Ok(value) => unsafe { place.write(offset, value) },
                    Err(error) => return Some(error),
                }
                written.len = offset + 1;
                index += 1;
            }
            None
        });
        let failure = match outcome {
            Ok(None) => return Ok(written),
            Ok(Some(error)) => Failure::Err(error),
            Err(payload) => Failure::Panic(payload),
        };
        // Item `index` failed: nothing right of it starts any more.
        stop.fetch_min(index, Ordering::Relaxed);
        Err(failure)
    }
    /// The leftmost error wins (every item left of it ran, so it is the first in input
    /// order); the results on either side are dropped with it.
    fn merge(&self, left: Self::Out, right: Self::Out) -> Self::Out {
        let mut left = left?;
        left.append(right?);
        Ok(left)
    }
    fn holds_panic(out: &Self::Out) -> bool {
        matches!(out, Err(Failure::Panic(_)))
    }
}

/// `map_reduce` and its conveniences: each batch folds its items from `identity()`, and
/// neighbours are combined with `reduce`. `None` stands for "no items yet", so `identity`
/// runs once per batch, not per merge.
pub(crate) struct ReduceConsumer<'f, Init, F, Id, Red> {
    pub(crate) init: &'f Init,
    pub(crate) f: &'f F,
    pub(crate) identity: &'f Id,
    pub(crate) reduce: &'f Red,
}

impl<I, St, T, Init, F, Id, Red> Consumer<I> for ReduceConsumer<'_, Init, F, Id, Red>
where
    Init: Fn() -> St + Sync,
    F: Fn(&mut St, I) -> T + Sync,
    Id: Fn() -> T + Sync,
    Red: Fn(T, T) -> T + Sync,
    T: Send,
{
    type Place = ();
    type Out = Option<T>;
    type State = St;

    fn make_state(&self) -> St {
        (self.init)()
    }

    fn split_place((): (), _index: usize) -> ((), ()) {
        ((), ())
    }
    fn empty(&self, (): &()) -> Option<T> {
        None
    }
    #[inline]
    fn consume(
        &self,
        state: &mut St,
        items: impl Iterator<Item = I>,
        (): (),
        _start: usize,
        _stop: &StopAt,
        _peers: Peers,
    ) -> Option<T> {
        Some(items.fold((self.identity)(), |acc, item| {
            (self.reduce)(acc, (self.f)(state, item))
        }))
    }
    fn merge(&self, left: Option<T>, right: Option<T>) -> Option<T> {
        match (left, right) {
            (Some(left), Some(right)) => Some((self.reduce)(left, right)),
            (left, None) => left,
            (None, right) => right,
        }
    }
}

/// An output vector being filled: `out` cleared, room for `n` results reserved (a fresh
/// large buffer advised to use huge pages), and the [`Dst`] covering all of it.
fn output_places<R>(out: &mut Vec<R>, n: usize) -> Dst<R> {
    out.clear();
    if out.capacity() < n {
        // A fresh buffer, not a grown one: nothing in `out` is kept, so growing it would
        // only copy the old buffer, and `reserve`'s general growth path costs ~70
        // instructions more than an allocation (callgrind, issue 11: a tenth of what a
        // 1k-item `par_map` added to its loop). The old buffer goes first.
        *out = Vec::new();
        *out = Vec::with_capacity(n);
        advise_huge_pages(out.as_mut_ptr(), n);
    }
    Dst {
        ptr: out.as_mut_ptr(),
        len: n,
    }
}

/// Hands the results in `written` (all `n` places of `out`, from [`output_places`]) to
/// `out`.
fn finish_output<R>(out: &mut Vec<R>, written: Written<R>, n: usize) {
    assert_eq!(
        written.ptr,
        out.as_mut_ptr(),
        "parpool: results written elsewhere"
    );
    let len = written.release();
    assert_eq!(len, n, "parpool: not every result was written");
    // SAFETY: the `Written` started at the buffer and covered `n` places, each initialised
    // exactly once, and its ownership passed to the vector (`release`).
    unsafe { out.set_len(len) };
}

/// Maps every item of `source` with `f` (state from `init`) into `out` (cleared first, its
/// allocation reused), in order, on the current pool.
pub(crate) fn map_into<S, St, R, Init, F>(
    source: S,
    init: &Init,
    f: &F,
    out: &mut Vec<R>,
    min_len: usize,
) where
    S: Source,
    Init: Fn() -> St + Sync,
    F: Fn(&mut St, S::Item) -> R + Sync,
    R: Send,
{
    let n = source.len();
    let place = output_places(out, n);
    let written = drive(source, place, &MapConsumer { init, f }, min_len);
    finish_output(out, written, n);
}

/// Like [`map_into`] for a fallible `f`: on the first `Err` the call stops, `out` is left
/// empty, and the error is returned.
pub(crate) fn try_map_into<S, St, R, E, Init, F>(
    source: S,
    init: &Init,
    f: &F,
    out: &mut Vec<R>,
    min_len: usize,
) -> Result<(), E>
where
    S: Source,
    Init: Fn() -> St + Sync,
    F: Fn(&mut St, S::Item) -> Result<R, E> + Sync,
    R: Send,
    E: Send,
{
    let n = source.len();
    let place = output_places(out, n);
    match drive(source, place, &TryMapConsumer { init, f }, min_len) {
        Ok(written) => {
            finish_output(out, written, n);
            Ok(())
        }
        Err(Failure::Err(error)) => Err(error),
        Err(Failure::Panic(payload)) => std::panic::resume_unwind(payload),
    }
}

/// Maps every item with `f` and combines the results with `reduce` (`identity` for none),
/// on the current pool.
pub(crate) fn map_reduce<S, St, T, Init, F, Id, Red>(
    source: S,
    init: &Init,
    f: &F,
    identity: &Id,
    reduce: &Red,
    min_len: usize,
) -> T
where
    S: Source,
    Init: Fn() -> St + Sync,
    F: Fn(&mut St, S::Item) -> T + Sync,
    Id: Fn() -> T + Sync,
    Red: Fn(T, T) -> T + Sync,
    T: Send,
{
    let consumer = ReduceConsumer {
        init,
        f,
        identity,
        reduce,
    };
    drive(source, (), &consumer, min_len).unwrap_or_else(identity)
}

#[cfg(all(test, not(parpool_loom)))]
mod test {
    use super::*;

    #[test]
    fn interval_targets_check_ns_within_bounds() {
        assert_eq!(interval_for(100.0), (CHECK_NS / 100) as usize);
        assert_eq!(interval_for(0.0), MAX_INTERVAL);
        // Never 0 items (a batch of none would never end the piece), whatever the clock says.
        assert!((1..=MAX_INTERVAL).contains(&interval_for(f64::NAN)));
        assert_eq!(interval_for(1e9), 1);
    }

    /// The clock is read once per `BATCHES_PER_READ` batches, not per batch: the items
    /// counted since the last read only reset on the read.
    #[test]
    fn pace_reads_the_clock_once_per_batches_per_read() {
        let mut pace = Pace::new(4);
        for batch in 1..BATCHES_PER_READ {
            pace.batch_done(4);
            assert_eq!(
                pace.counted,
                4 * batch,
                "read before batch {batch} of the round"
            );
            assert_eq!(pace.interval, 4, "re-estimated without a read");
        }
        pace.batch_done(4);
        assert_eq!(pace.counted, 0, "no read after {BATCHES_PER_READ} batches");
        assert!((1..=MAX_INTERVAL).contains(&pace.interval));
    }
}
