//! Indexed inputs (slices, owned vectors, integer ranges): `par_map` and friends.
//!
//! # How the work is cut
//!
//! 1. **Sampling.** The caller maps the first items itself for one sample window (see
//!    [`CostProbe`]),
//!    each batch sized from the cost per item measured so far to fill the rest of that
//!    window. A small input is done by then, sequentially, at nearly the cost of a plain
//!    loop (a handful of clock reads in all). Otherwise the sample gives the cost of an
//!    item.
//! 2. **Is it worth it?** If the rest would take less than [`PARALLEL_MIN_NS`] on one thread,
//!    the caller samples another window instead of handing the rest over: waking workers
//!    would cost more than it saves, unless later items turn out to cost more (a ramp).
//! 3. **Splitting on demand.** The rest goes to the pool as one piece. A worker maps its
//!    piece in batches of about [`CHECK_NS`] and, between batches, looks whether another
//!    worker is idle (one relaxed load); if one is, and the half it published last was
//!    taken, it splits what is left in two with `join` and the idle worker steals the
//!    second half. So pieces are cut only when someone needs work, an idle worker always
//!    gets the largest piece left, and skewed costs stay balanced: lazy binary splitting on
//!    top of the lazily publishing `join` (see `pool/registry.rs`).
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
use std::sync::atomic::{AtomicBool, Ordering};

use super::sample::{CostProbe, Stopwatch};

use crate::pool::{current_registry, join, on_worker};

/// Below this much estimated remaining work (ns) the caller finishes alone. Handing work to
/// the pool costs ~1 µs if a worker is awake and 20–50 µs if it must be woken; 30 µs of work
/// is where two threads start to win on the 2-core reference machine.
pub(crate) const PARALLEL_MIN_NS: u64 = 30_000;

/// How much work (ns) a worker does between two looks for idle workers. A look is a relaxed
/// load and a clock read (~10 ns), so 2 µs keeps it under 1%, and an idle worker waits at
/// most about that long before it gets half of a busy worker's piece.
pub(crate) const CHECK_NS: u64 = 2_000;

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
pub(crate) trait Source: Send + Sized {
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
pub(crate) struct IntRange<T> {
    start: T,
    len: usize,
}

/// Integers that [`IntRange`] can step through.
pub(crate) trait Int: Copy + Send + Sync + 'static {
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
pub(crate) struct IntIter<T> {
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

    /// `self` with `other` appended; see [`Written::append`].
    fn merge(mut self, other: Written<R>) -> Written<R> {
        self.append(other);
        self
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

/// `len` uninitialised output places starting at `ptr`, each written by exactly one leaf.
struct Dst<R> {
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

/// Sets the flag if dropped during a panic: tells the other leaves to stop mapping.
struct StopOnUnwind<'a>(&'a AtomicBool);

impl Drop for StopOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Maps `source` into `dst` in order, on this thread.
#[inline]
fn write_seq<S, R, F>(source: S, dst: Dst<R>, f: &F, stop: &AtomicBool) -> Written<R>
where
    S: Source,
    F: Fn(S::Item) -> R,
{
    debug_assert!(source.len() <= dst.len);
    let mut written = Written::empty(dst.ptr);
    let unwinding = StopOnUnwind(stop);
    for item in source.into_iter() {
        let value = f(item);
        // SAFETY: `written.len < dst.len` (the source is no longer than `dst`), and this
        // place is written once, by this leaf only.
        unsafe { dst.ptr.wrapping_add(written.len).write(value) };
        written.len += 1;
    }
    std::mem::forget(unwinding);
    written
}

/// What every piece of one `par_map` shares.
struct Ctx<'f, F> {
    f: &'f F,
    /// Items between two looks for idle workers, to start with (the piece adapts it).
    interval: usize,
    /// Set when a piece panics: the others stop mapping.
    stop: AtomicBool,
}

/// Whether the current worker should split its piece: some worker is idle and the last
/// piece this worker published has been taken.
fn peers_want_work() -> bool {
    crate::pool::peers_want_work()
}

/// Maps a piece on this worker, in batches of about [`CHECK_NS`]; between batches, if
/// another worker is idle, splits what is left in two with `join`, so the idle worker can
/// take the second half (lazy binary splitting).
fn split_on_demand<S, R, F>(mut source: S, mut dst: Dst<R>, ctx: &Ctx<'_, F>) -> Written<R>
where
    S: Source,
    R: Send,
    F: Fn(S::Item) -> R + Sync,
{
    let mut written = Written::empty(dst.ptr);
    let mut interval = ctx.interval;
    while source.len() > 0 {
        if ctx.stop.load(Ordering::Relaxed) {
            // Another piece panicked: the rest of `source` is dropped unmapped.
            break;
        }
        if source.len() >= 2 && peers_want_work() {
            let mid = source.len() / 2;
            let (left, right) = source.split_at(mid);
            let (left_dst, right_dst) = dst.split_at(mid);
            let (a, b) = join(
                || split_on_demand(left, left_dst, ctx),
                || split_on_demand(right, right_dst, ctx),
            );
            return written.merge(a).merge(b);
        }
        let take = interval.min(source.len());
        let (head, tail) = source.split_at(take);
        let (head_dst, tail_dst) = dst.split_at(take);
        (source, dst) = (tail, tail_dst);
        let watch = Stopwatch::start();
        written.append(write_seq(head, head_dst, ctx.f, &ctx.stop));
        // Keep batches near CHECK_NS as the cost per item drifts (a ramp of costs).
        let elapsed = watch.elapsed_ns().max(1.0);
        interval = ((interval as f64 * CHECK_NS as f64 / elapsed) as usize).clamp(1, MAX_INTERVAL);
    }
    written
}

/// Maps every item of `source` into `out` (cleared first, its allocation reused), in order,
/// on the current pool.
pub(crate) fn map_into<S, R, F>(source: S, f: &F, out: &mut Vec<R>)
where
    S: Source,
    R: Send,
    F: Fn(S::Item) -> R + Sync,
{
    let n = source.len();
    out.clear();
    if out.capacity() < n {
        out.reserve(n);
        advise_huge_pages(out.as_mut_ptr(), n);
    }
    let base = out.as_mut_ptr();
    let stop = AtomicBool::new(false);
    let mut written = Written::empty(base);
    let mut rest = Some(source);

    // 1. Sampling on this thread, window by window, until the input is done or the rest is
    //    estimated to be worth parallel work.
    let mut probe = CostProbe::new();
    let per_item_ns = loop {
        let window = probe.window(|batch| {
            let source = rest.take().expect("the rest is put back after every batch");
            if source.len() == 0 {
                rest = Some(source);
                return (0, false);
            }
            let take = batch.min(source.len());
            let (head, tail) = source.split_at(take);
            rest = Some(tail);
            let dst = Dst {
                ptr: base.wrapping_add(written.len),
                len: take,
            };
            written.append(write_seq(head, dst, f, &stop));
            (take, true)
        });
        let remaining = rest.as_ref().map_or(0, Source::len);
        match window {
            Some(per_item_ns) if per_item_ns * remaining as f64 >= PARALLEL_MIN_NS as f64 => {
                break per_item_ns;
            }
            Some(_) => {}
            None => {
                let len = written.release();
                debug_assert_eq!(len, n);
                // SAFETY: every place in `[0, n)` was initialised exactly once (`written`
                // covered it), and ownership passed from `written` to the vector.
                unsafe { out.set_len(len) };
                return;
            }
        }
    };
    let rest = rest.expect("the rest is put back after every batch");

    // 2. The rest, on the pool.
    let dst = Dst {
        ptr: base.wrapping_add(written.len),
        len: rest.len(),
    };
    let registry = current_registry();
    let tail = if registry.num_threads() == 1 && !on_worker() {
        // One worker would only take the work off this thread, not share it.
        write_seq(rest, dst, f, &stop)
    } else {
        let interval = (CHECK_NS as f64 / per_item_ns).clamp(1.0, MAX_INTERVAL as f64) as usize;
        let ctx = Ctx { f, interval, stop };
        registry.in_worker(|_| split_on_demand(rest, dst, &ctx))
    };
    written.append(tail);
    let len = written.release();
    debug_assert_eq!(len, n);
    // SAFETY: every place in `[0, n)` was initialised exactly once (the merged `Written`
    // covers the whole range), and ownership passed from `written` to the vector.
    unsafe { out.set_len(len) };
}
