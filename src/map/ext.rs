//! The `par_map` extension traits for collections.

use std::ops::{Range, RangeInclusive};

use super::slice::{IntRange, OwnedSlice, map_into};

/// `par_map` for slices (and so `Vec`s, arrays and boxed slices) and integer ranges: map
/// every item on the current pool, results in input order.
///
/// The current pool is the pool whose worker calls it (inside
/// [`ThreadPool::install`](crate::ThreadPool::install) or a pool job), else the global pool.
/// `f` may borrow local data: the call returns only when every item is mapped.
///
/// Small inputs run sequentially on the caller (it decides from what the first items cost,
/// not from the length), so a tiny `par_map` costs about as much as a plain loop.
///
/// # Panics
///
/// If `f` panics, the panic is re-raised here once the other workers have stopped; results
/// already computed are dropped, and the pool keeps serving.
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
pub trait ParMap {
    /// What `f` receives: `&T` for slices, the integer for ranges.
    type Item<'a>
    where
        Self: 'a;

    /// Maps every item with `f`, in parallel, into a new vector in input order.
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
        R: Send;
}

impl<T: Sync> ParMap for [T] {
    type Item<'a>
        = &'a T
    where
        T: 'a;

    fn par_map_into<'a, R, F>(&'a self, f: F, out: &mut Vec<R>)
    where
        F: Fn(&'a T) -> R + Sync,
        R: Send,
    {
        map_into(self, &f, out);
    }
}

macro_rules! range_impls {
    ($($t:ty),*) => {$(
        impl ParMap for Range<$t> {
            type Item<'a> = $t;

            fn par_map_into<'a, R, F>(&'a self, f: F, out: &mut Vec<R>)
            where
                F: Fn(Self::Item<'a>) -> R + Sync,
                R: Send,
            {
                map_into(IntRange::new(self.clone()), &f, out);
            }
        }

        impl ParMap for RangeInclusive<$t> {
            type Item<'a> = $t;

            fn par_map_into<'a, R, F>(&'a self, f: F, out: &mut Vec<R>)
            where
                F: Fn(Self::Item<'a>) -> R + Sync,
                R: Send,
            {
                let range = if self.is_empty() {
                    IntRange::new(*self.start()..*self.start())
                } else {
                    IntRange::inclusive(*self.start(), *self.end())
                };
                map_into(range, &f, out);
            }
        }
    )*};
}
range_impls!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

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
        map_into(OwnedSlice::new(&mut self), &f, &mut out);
        out
    }
}
