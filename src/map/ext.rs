//! The extension traits for collections: [`ParMap`] (the read-only kit on slices, arrays,
//! `Vec`s and integer ranges), [`ParSlice`] (chunks and in-place updates), [`IntoParMap`]
//! (owned vectors), and the views they return ([`ParChunks`], [`ParChunksMut`],
//! [`MinLen`]).
//!
//! Every operation goes through the same engine as `par_map` (`slice.rs`): the caller
//! samples what items cost, small inputs finish there at about the cost of a loop, and the
//! rest is split on demand when a worker is idle.

use std::iter::Sum;
use std::ops::{Range, RangeInclusive};

use super::ZERO_CHUNK_SIZE;
use super::slice::{
    Chunks, IntRange, OwnedSlice, Source, for_each, map_into, map_reduce, try_map_into,
};

/// The state of the plain (stateless) operations.
#[inline]
fn no_state() {}

/// Combines two partial extremes of `par_min` / `par_max`, left `a` and right `b`: `b` when
/// `take_right(a, b)`, else `a`; a missing side yields the other.
fn keep<R>(a: Option<R>, b: Option<R>, take_right: impl Fn(&R, &R) -> bool) -> Option<R> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if take_right(&a, &b) { b } else { a }),
        (a, None) => a,
        (None, b) => b,
    }
}

mod sealed {
    use super::Source;

    /// An indexed input the kit can split: the supertrait of [`ParMap`](super::ParMap),
    /// implemented inside the crate only.
    pub trait Indexed {
        /// What the closures receive: `&T` for slices, the integer for ranges, a chunk for
        /// [`ParChunks`](super::ParChunks).
        type Item<'a>
        where
            Self: 'a;
        /// The splittable form of `&'a self`.
        #[doc(hidden)]
        type Source<'a>: Source<Item = Self::Item<'a>>
        where
            Self: 'a;
        /// `self` as a source.
        #[doc(hidden)]
        fn source(&self) -> Self::Source<'_>;
        /// The shortest piece the pool may cut ([`with_min_len`](super::ParMap::with_min_len)).
        #[doc(hidden)]
        fn min_len(&self) -> usize {
            1
        }
    }
}
use sealed::Indexed;

/// The parallel kit for slices (and so `Vec`s, arrays and boxed slices), integer ranges,
/// [`ParChunks`] and [`MinLen`]: map, for-each, reductions, fallible variants and
/// per-piece state, on the current pool.
///
/// The current pool is the pool whose worker calls it (inside
/// [`ThreadPool::install`](crate::ThreadPool::install) or a pool job), else the global pool.
/// The closures may borrow local data: every call returns only when all items are done.
///
/// Small inputs run sequentially on the caller (it decides from what the first items cost,
/// not from the length), so a tiny call costs about as much as a plain loop. In a loop, a
/// call site remembers, per thread, that its last call was small: the next one skips the
/// sampling and only confirms after its first item that it is still small, so if the items
/// turn expensive, that one item runs before the call samples as usual. Larger inputs
/// are cut into pieces only when a worker is idle (see
/// [`with_min_len`](ParMap::with_min_len) to bound how small).
///
/// # Panics
///
/// If a closure panics, the panic is re-raised at the call once the other workers have
/// stopped (each at the end of its current batch, about 2 µs of work); results already
/// computed are dropped, and the pool keeps serving.
///
/// # Examples
///
/// ```
/// use parpool::prelude::*;
///
/// let data: Vec<u64> = (0..1000).collect();
/// let squares: Vec<u64> = data.par_map(|x| x * x);
/// assert_eq!(squares, data.iter().map(|x| x * x).collect::<Vec<_>>());
///
/// let labels = ["a", "bb", "ccc"].par_map(|s| s.len());
/// assert_eq!(labels, [1, 2, 3]);
///
/// let evens: Vec<u32> = (0..5u32).par_map(|i| i * 2);
/// assert_eq!(evens, [0, 2, 4, 6, 8]);
///
/// assert_eq!((1..=100u64).par_sum(|i| i), 5050);
/// ```
///
/// The closure runs on several threads at once, so what it uses must be shareable:
///
/// ```compile_fail
/// use parpool::prelude::*;
///
/// let cache = std::cell::RefCell::new(Vec::new());
/// let out = [1, 2, 3].par_map(|x| cache.borrow_mut().push(*x));
/// ```
pub trait ParMap: Indexed {
    /// Maps every item with `f`, in parallel, into a new vector in input order.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// assert_eq!([1, 2, 3].par_map(|x| x * 10), [10, 20, 30]);
    /// ```
    fn par_map<'a, R, F>(&'a self, f: F) -> Vec<R>
    where
        F: Fn(Self::Item<'a>) -> R + Sync,
        R: Send,
    {
        let mut out = Vec::new();
        self.par_map_into(f, &mut out);
        out
    }

    /// Like [`par_map`](ParMap::par_map), but into `out`, which is cleared first and whose
    /// allocation is reused when it is large enough.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let data = vec![1u32, 2, 3];
    /// let mut out = Vec::with_capacity(1024);
    /// data.par_map_into(|x| x + 1, &mut out);
    /// assert_eq!(out, [2, 3, 4]);
    /// assert!(out.capacity() >= 1024, "the buffer was reused");
    /// ```
    fn par_map_into<'a, R, F>(&'a self, f: F, out: &mut Vec<R>)
    where
        F: Fn(Self::Item<'a>) -> R + Sync,
        R: Send,
    {
        map_into(
            self.source(),
            &no_state,
            &|(), item| f(item),
            out,
            self.min_len(),
        );
    }

    /// Calls `f` on every item, in parallel (rayon's `par_iter().for_each`).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    ///
    /// let total = AtomicU64::new(0);
    /// (1..=100u64).par_for_each(|i| {
    ///     total.fetch_add(i, Ordering::Relaxed);
    /// });
    /// assert_eq!(total.into_inner(), 5050);
    /// ```
    fn par_for_each<'a, F>(&'a self, f: F)
    where
        F: Fn(Self::Item<'a>) + Sync,
    {
        for_each(
            self.source(),
            &no_state,
            &|(), item| f(item),
            self.min_len(),
        );
    }

    /// Like [`par_map`](ParMap::par_map), with state that `f` may mutate: `init` makes it
    /// lazily, at most once per *piece* of work, on the thread that maps the piece
    /// (rayon's `map_init`).
    ///
    /// The caller's sampling is one piece; the pool's share is cut into more pieces only
    /// when a worker is idle (each cut makes two). So the count grows with the number of
    /// cuts, typically a few per worker, never with the number of items. Per piece rather
    /// than per worker because the state then never leaves the thread that made it (no
    /// `Send` bound, no lock per batch), and a closure that itself waits on the pool
    /// cannot find its own state borrowed further up its stack.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let made = AtomicUsize::new(0);
    /// let lines: Vec<String> = (0..10_000u32).par_map_init(
    ///     || {
    ///         made.fetch_add(1, Ordering::Relaxed);
    ///         String::with_capacity(16) // a scratch buffer reused within a piece
    ///     },
    ///     |scratch, i| {
    ///         scratch.clear();
    ///         scratch.push_str("line ");
    ///         scratch.push_str(&i.to_string());
    ///         scratch.clone()
    ///     },
    /// );
    /// assert_eq!(lines[42], "line 42");
    /// assert!(made.into_inner() < 1000, "state per piece, not per item");
    /// ```
    fn par_map_init<'a, S, R, I, F>(&'a self, init: I, f: F) -> Vec<R>
    where
        I: Fn() -> S + Sync,
        F: Fn(&mut S, Self::Item<'a>) -> R + Sync,
        R: Send,
    {
        let mut out = Vec::new();
        map_into(self.source(), &init, &f, &mut out, self.min_len());
        out
    }

    /// Like [`par_for_each`](ParMap::par_for_each), with per-piece state made by `init`;
    /// see [`par_map_init`](ParMap::par_map_init) for when it is made.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use std::sync::Mutex;
    ///
    /// // Each piece counts locally and reports once, when its state is dropped.
    /// struct Counter<'a>(u64, &'a Mutex<u64>);
    /// impl Drop for Counter<'_> {
    ///     fn drop(&mut self) {
    ///         *self.1.lock().unwrap() += self.0;
    ///     }
    /// }
    /// let total = Mutex::new(0);
    /// (0..100_000u64).par_for_each_init(|| Counter(0, &total), |c, i| c.0 += i % 3);
    /// assert_eq!(total.into_inner().unwrap(), (0..100_000u64).map(|i| i % 3).sum::<u64>());
    /// ```
    fn par_for_each_init<'a, S, I, F>(&'a self, init: I, f: F)
    where
        I: Fn() -> S + Sync,
        F: Fn(&mut S, Self::Item<'a>) + Sync,
    {
        for_each(self.source(), &init, &f, self.min_len());
    }

    /// Maps every item with `map` and combines the results with `reduce`; `identity()` is
    /// the result for no items.
    ///
    /// Each batch folds its items from `identity()`, and neighbouring batches and pieces
    /// are combined with `reduce`, always in input order (left with right) but grouped as
    /// the work happened to be cut. So the result is deterministic when `reduce` is
    /// associative and `identity()` is its identity (integer sums, min, max, string
    /// concatenation). Floating-point addition is not associative: a float sum can differ
    /// from the sequential one, and between runs, in the last bits.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let words = ["par", "pool", "is", "here"];
    /// let joined = words.par_map_reduce(|w| w.to_string(), String::new, |a, b| a + &b);
    /// assert_eq!(joined, "parpoolishere");
    ///
    /// let sum_of_squares = (1..=1000u64).par_map_reduce(|i| i * i, || 0, |a, b| a + b);
    /// assert_eq!(sum_of_squares, 333_833_500);
    /// ```
    fn par_map_reduce<'a, T, M, Id, Red>(&'a self, map: M, identity: Id, reduce: Red) -> T
    where
        M: Fn(Self::Item<'a>) -> T + Sync,
        Id: Fn() -> T + Sync,
        Red: Fn(T, T) -> T + Sync,
        T: Send,
    {
        map_reduce(
            self.source(),
            &no_state,
            &|(), item| map(item),
            &identity,
            &reduce,
            self.min_len(),
        )
    }

    /// The sum of `f` over every item (rayon's `par_iter().map(f).sum()`); see
    /// [`par_map_reduce`](ParMap::par_map_reduce) for what is promised for floats.
    ///
    /// # Panics
    ///
    /// As the standard `Sum`: an integer overflow panics in debug builds.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let data: Vec<u32> = (1..=10).collect();
    /// assert_eq!(data.par_sum(|&x| u64::from(x)), 55);
    /// assert_eq!((0..0u8).par_sum(|x| u64::from(x)), 0);
    /// ```
    fn par_sum<'a, S, F>(&'a self, f: F) -> S
    where
        F: Fn(Self::Item<'a>) -> S + Sync,
        S: Sum<S> + Send,
    {
        self.par_map_reduce(
            f,
            || std::iter::empty().sum(),
            |a, b| [a, b].into_iter().sum(),
        )
    }

    /// The smallest value of `f` over the items, `None` if there are none; of several
    /// equal smallest values, the first in input order.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let words = ["pear", "fig", "apple", "kiwi"];
    /// assert_eq!(words.par_min(|w| w.len()), Some(3));
    /// assert_eq!(words.par_min(|w| (w.len(), *w)), Some((3, "fig")));
    /// assert_eq!((0..0i32).par_min(|x| x), None);
    /// ```
    fn par_min<'a, R, F>(&'a self, f: F) -> Option<R>
    where
        F: Fn(Self::Item<'a>) -> R + Sync,
        R: Ord + Send,
    {
        self.par_map_reduce(
            |item| Some(f(item)),
            || None,
            |a, b| keep(a, b, |a, b| b < a),
        )
    }

    /// The largest value of `f` over the items, `None` if there are none; of several equal
    /// largest values, the last in input order (as [`Iterator::max`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let temperatures = [12, -3, 25, 7];
    /// assert_eq!(temperatures.par_max(|&t| t), Some(25));
    /// assert_eq!((1..=10u64).par_max(|i| i % 4), Some(3));
    /// ```
    fn par_max<'a, R, F>(&'a self, f: F) -> Option<R>
    where
        F: Fn(Self::Item<'a>) -> R + Sync,
        R: Ord + Send,
    {
        self.par_map_reduce(
            |item| Some(f(item)),
            || None,
            |a, b| keep(a, b, |a, b| b >= a),
        )
    }

    /// Like [`par_map`](ParMap::par_map) for a fallible `f`: stops at the first `Err` and
    /// returns it.
    ///
    /// The error returned is the first in input order, as sequentially: once an item
    /// fails, no item right of it is started (those already running finish), while items
    /// left of it still run, since one of them may fail first. The results computed so far
    /// are dropped, each exactly once.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let fields = ["4", "8", "15"];
    /// let parsed: Result<Vec<u32>, _> = fields.try_par_map(|s| s.parse::<u32>());
    /// assert_eq!(parsed.unwrap(), [4, 8, 15]);
    ///
    /// let bad = ["4", "x", "15"].try_par_map(|s| s.parse::<u32>());
    /// assert!(bad.is_err());
    /// ```
    fn try_par_map<'a, R, E, F>(&'a self, f: F) -> Result<Vec<R>, E>
    where
        F: Fn(Self::Item<'a>) -> Result<R, E> + Sync,
        R: Send,
        E: Send,
    {
        let mut out = Vec::new();
        try_map_into(
            self.source(),
            &no_state,
            &|(), item| f(item),
            &mut out,
            self.min_len(),
        )?;
        Ok(out)
    }

    /// Calls a fallible `f` on every item, stopping at the first `Err`; see
    /// [`try_par_map`](ParMap::try_par_map) for what stopping means.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let checked = AtomicUsize::new(0);
    /// let result = (0..1_000_000u32).try_par_for_each(|i| {
    ///     checked.fetch_add(1, Ordering::Relaxed);
    ///     if i == 10 { Err(format!("item {i} is bad")) } else { Ok(()) }
    /// });
    /// assert_eq!(result.unwrap_err(), "item 10 is bad");
    /// assert!(checked.into_inner() < 1_000_000, "stopped early");
    /// ```
    fn try_par_for_each<'a, E, F>(&'a self, f: F) -> Result<(), E>
    where
        F: Fn(Self::Item<'a>) -> Result<(), E> + Sync,
        E: Send,
    {
        self.try_par_map(f).map(drop)
    }

    /// A view of `self` that the pool never cuts into pieces of fewer than `min_len`
    /// items (rayon's `with_min_len`), for callers who know that items are too cheap, or
    /// share too much state, to be worth spreading finer. 0 counts as 1. The caller still
    /// samples the first items itself, and an input shorter than `2 * min_len` runs on it
    /// alone.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let pieces = AtomicUsize::new(0);
    /// let data: Vec<u64> = (0..10_000).collect();
    /// let out = data.with_min_len(4096).par_map_init(
    ///     || pieces.fetch_add(1, Ordering::Relaxed),
    ///     |_, x| x + 1,
    /// );
    /// assert_eq!(out[9_999], 10_000);
    /// // The caller's sampling, the pool's piece, and at most one cut of it in two halves
    /// // (each >= 4096 items; a third piece would leave one shorter).
    /// assert!(pieces.into_inner() <= 4);
    /// ```
    fn with_min_len(&self, min_len: usize) -> MinLen<'_, Self> {
        MinLen {
            inner: self,
            min_len,
        }
    }
}

impl<P: Indexed + ?Sized> ParMap for P {}

impl<T: Sync> Indexed for [T] {
    type Item<'a>
        = &'a T
    where
        T: 'a;
    type Source<'a>
        = &'a [T]
    where
        T: 'a;

    fn source(&self) -> &[T] {
        self
    }
}

macro_rules! range_impls {
    ($($t:ty),*) => {$(
        impl Indexed for Range<$t> {
            type Item<'a> = $t;
            type Source<'a> = IntRange<$t>;

            fn source(&self) -> IntRange<$t> {
                IntRange::new(self.clone())
            }
        }

        impl Indexed for RangeInclusive<$t> {
            type Item<'a> = $t;
            type Source<'a> = IntRange<$t>;

            fn source(&self) -> IntRange<$t> {
                if self.is_empty() {
                    IntRange::new(*self.start()..*self.start())
                } else {
                    IntRange::inclusive(*self.start(), *self.end())
                }
            }
        }
    )*};
}
range_impls!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

/// A view that the pool never cuts finer than a minimum length; made by
/// [`ParMap::with_min_len`], and itself a [`ParMap`].
///
/// # Examples
///
/// ```
/// use parpool::prelude::*;
///
/// let coarse = (0..100u32).with_min_len(50);
/// assert_eq!(coarse.par_sum(|i| u64::from(i)), 4950);
/// ```
#[derive(Debug)]
pub struct MinLen<'p, P: ?Sized> {
    inner: &'p P,
    min_len: usize,
}

impl<P: Indexed + ?Sized> Indexed for MinLen<'_, P> {
    type Item<'a>
        = P::Item<'a>
    where
        Self: 'a;
    type Source<'a>
        = P::Source<'a>
    where
        Self: 'a;

    fn source(&self) -> P::Source<'_> {
        self.inner.source()
    }
    fn min_len(&self) -> usize {
        self.min_len.max(self.inner.min_len())
    }
}

/// Chunks and in-place updates on slices (and so `Vec`s and arrays): rayon's
/// `par_iter_mut`, `par_chunks` and `par_chunks_mut`, through the same engine as
/// [`ParMap`].
///
/// # Examples
///
/// ```
/// use parpool::prelude::*;
///
/// let mut data: Vec<u64> = (0..1000).collect();
/// data.par_for_each_mut(|x| *x = *x * 2 + 1);
/// assert_eq!(data[10], 21);
///
/// let sums: Vec<u64> = data.par_chunks(100).map(|c| c.iter().sum());
/// assert_eq!(sums.len(), 10);
///
/// data.par_chunks_mut(256).for_each(|chunk| chunk.reverse());
/// assert_eq!(data[0], 2 * 255 + 1);
/// ```
pub trait ParSlice<T> {
    /// Calls `f` on every item, in parallel, with mutable access (rayon's
    /// `par_iter_mut().for_each`).
    ///
    /// # Panics
    ///
    /// A panic in `f` is re-raised here once no item is being updated; items updated
    /// before it keep their new values.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let mut values = vec![1.0f64, 4.0, 9.0];
    /// values.par_for_each_mut(|x| *x = x.sqrt());
    /// assert_eq!(values, [1.0, 2.0, 3.0]);
    /// ```
    fn par_for_each_mut<F>(&mut self, f: F)
    where
        F: Fn(&mut T) + Sync,
        T: Send;

    /// The slice as chunks of `size` items (the last may be shorter), each mapped as one
    /// item.
    ///
    /// # Panics
    ///
    /// If `size` is 0, like [`ThreadPool::map_chunked`](crate::ThreadPool::map_chunked)
    /// and the standard `chunks`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let data = [1, 2, 3, 4, 5];
    /// let sums: Vec<i32> = data.par_chunks(2).map(|c| c.iter().sum());
    /// assert_eq!(sums, [3, 7, 5]);
    /// ```
    fn par_chunks(&self, size: usize) -> ParChunks<'_, T>
    where
        T: Sync;

    /// The slice as mutable chunks of `size` items (the last may be shorter).
    ///
    /// # Panics
    ///
    /// If `size` is 0, as [`par_chunks`](ParSlice::par_chunks).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let mut image = vec![0u8; 4 * 3]; // 3 rows of 4 pixels
    /// image.par_chunks_mut(4).for_each(|row| row[0] = 255);
    /// assert_eq!(image, [255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0]);
    /// ```
    fn par_chunks_mut(&mut self, size: usize) -> ParChunksMut<'_, T>
    where
        T: Send;
}

impl<T> ParSlice<T> for [T] {
    fn par_for_each_mut<F>(&mut self, f: F)
    where
        F: Fn(&mut T) + Sync,
        T: Send,
    {
        for_each(self, &no_state, &|(), item| f(item), 1);
    }

    fn par_chunks(&self, size: usize) -> ParChunks<'_, T>
    where
        T: Sync,
    {
        assert!(size > 0, "{}", ZERO_CHUNK_SIZE);
        ParChunks { slice: self, size }
    }

    fn par_chunks_mut(&mut self, size: usize) -> ParChunksMut<'_, T>
    where
        T: Send,
    {
        assert!(size > 0, "{}", ZERO_CHUNK_SIZE);
        ParChunksMut { slice: self, size }
    }
}

/// A slice as chunks, made by [`ParSlice::par_chunks`]; a [`ParMap`] whose items are the
/// chunks, so the whole kit (reductions, `try_`, `_init`) works on it.
///
/// # Examples
///
/// ```
/// use parpool::prelude::*;
///
/// let data: Vec<u32> = (0..10).collect();
/// let chunks = data.par_chunks(4);
/// assert_eq!(chunks.map(|c| c.len()), [4, 4, 2]);
/// assert_eq!(chunks.par_max(|c| c[0]), Some(8));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ParChunks<'s, T> {
    slice: &'s [T],
    size: usize,
}

impl<T: Sync> ParChunks<'_, T> {
    /// Maps every chunk with `f`, in parallel, results in chunk order (the same as
    /// [`par_map`](ParMap::par_map) on the view).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let firsts: Vec<char> = ['a', 'b', 'c', 'd'].par_chunks(3).map(|c| c[0]);
    /// assert_eq!(firsts, ['a', 'd']);
    /// ```
    pub fn map<'a, R, F>(&'a self, f: F) -> Vec<R>
    where
        F: Fn(&'a [T]) -> R + Sync,
        R: Send,
    {
        self.par_map(f)
    }

    /// Calls `f` on every chunk, in parallel (the same as
    /// [`par_for_each`](ParMap::par_for_each) on the view).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let seen = AtomicUsize::new(0);
    /// [0u8; 10].par_chunks(3).for_each(|c| {
    ///     seen.fetch_add(c.len(), Ordering::Relaxed);
    /// });
    /// assert_eq!(seen.into_inner(), 10);
    /// ```
    pub fn for_each<'a, F>(&'a self, f: F)
    where
        F: Fn(&'a [T]) + Sync,
    {
        self.par_for_each(f);
    }
}

impl<'s, T: Sync> Indexed for ParChunks<'s, T> {
    type Item<'a>
        = &'a [T]
    where
        Self: 'a;
    type Source<'a>
        = Chunks<&'a [T]>
    where
        Self: 'a;

    fn source(&self) -> Chunks<&[T]> {
        Chunks {
            slice: self.slice,
            size: self.size,
        }
    }
}

/// A slice as mutable chunks, made by [`ParSlice::par_chunks_mut`].
///
/// # Examples
///
/// ```
/// use parpool::prelude::*;
///
/// let mut data = vec![1u32; 10];
/// let lens = data.par_chunks_mut(4).map(|c| {
///     c.fill(7);
///     c.len()
/// });
/// assert_eq!(lens, [4, 4, 2]);
/// assert!(data.iter().all(|&x| x == 7));
/// ```
#[derive(Debug)]
pub struct ParChunksMut<'s, T> {
    slice: &'s mut [T],
    size: usize,
}

impl<'s, T: Send> ParChunksMut<'s, T> {
    /// Maps every chunk with `f`, in parallel, results in chunk order.
    ///
    /// # Panics
    ///
    /// A panic in `f` is re-raised here once no chunk is being mapped; results already
    /// computed are dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let mut data = [3, 1, 2, 9, 8];
    /// let maxima: Vec<i32> = data.par_chunks_mut(3).map(|c| {
    ///     c.sort();
    ///     c[c.len() - 1]
    /// });
    /// assert_eq!(maxima, [3, 9]);
    /// assert_eq!(data, [1, 2, 3, 8, 9]);
    /// ```
    pub fn map<R, F>(self, f: F) -> Vec<R>
    where
        F: Fn(&'s mut [T]) -> R + Sync,
        R: Send,
    {
        let mut out = Vec::new();
        let source = Chunks {
            slice: self.slice,
            size: self.size,
        };
        map_into(source, &no_state, &|(), chunk| f(chunk), &mut out, 1);
        out
    }

    /// Calls `f` on every chunk, in parallel.
    ///
    /// # Panics
    ///
    /// As [`map`](ParChunksMut::map).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    ///
    /// let mut data: Vec<u32> = (0..8).collect();
    /// data.par_chunks_mut(2).for_each(|pair| pair.swap(0, 1));
    /// assert_eq!(data, [1, 0, 3, 2, 5, 4, 7, 6]);
    /// ```
    pub fn for_each<F>(self, f: F)
    where
        F: Fn(&'s mut [T]) + Sync,
    {
        let source = Chunks {
            slice: self.slice,
            size: self.size,
        };
        for_each(source, &no_state, &|(), chunk| f(chunk), 1);
    }
}

/// `into_par_map` for owned vectors: each item is moved into `f`, in parallel, and the
/// results come back in input order.
///
/// # Panics
///
/// As [`ParMap`]: a panic in `f` is re-raised here; items not yet mapped and results
/// already computed are dropped.
///
/// # Examples
///
/// ```
/// use parpool::prelude::*;
///
/// let words = vec![String::from("par"), String::from("pool")];
/// let lengths: Vec<usize> = words.into_par_map(|s| s.len());
/// assert_eq!(lengths, [3, 4]);
/// ```
pub trait IntoParMap {
    /// What `f` receives.
    type Item;

    /// Maps every item with `f`, in parallel, into a new vector in input order.
    fn into_par_map<R, F>(self, f: F) -> Vec<R>
    where
        F: Fn(Self::Item) -> R + Sync,
        R: Send;
}

impl<T: Send> IntoParMap for Vec<T> {
    type Item = T;

    fn into_par_map<R, F>(mut self, f: F) -> Vec<R>
    where
        F: Fn(T) -> R + Sync,
        R: Send,
    {
        let mut out = Vec::new();
        map_into(
            OwnedSlice::new(&mut self),
            &no_state,
            &|(), item| f(item),
            &mut out,
            1,
        );
        out
    }
}
