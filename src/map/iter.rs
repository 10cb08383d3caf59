//! Blocking maps over any iterator: `map`, `map_chunked`, `try_map`.
//!
//! The calling thread first maps items itself while they are too cheap to hand over
//! ([`CostProbe`]): a small input, or a map of trivial items whose cost is all in
//! pulling the input, stays sequential. Then it becomes the window's feeder (see
//! `window.rs`): it pulls the input (so the iterator itself need not be `Send`), submits
//! chunks, runs chunks itself while it waits, and appends the results in input order. The closure may borrow: the window only keeps a
//! raw pointer to it, and the call does not return, normally or by unwinding, before every
//! chunk has come back.
//!
//! A call captures the watch in force when it starts (see `watch.rs`): it checks it before
//! the first item and before each sampling batch, counts the items it maps, and hands it to
//! the window (see `window.rs`, "Watches"). Once stopped, the chunks not yet started are
//! skipped (their items dropped unmapped), the caller waits for the running ones, drops
//! every result so far and the input not yet pulled, and unwinds with the stop.

use std::sync::Arc;

use super::ZERO_CHUNK_SIZE;
use super::sample::{CostProbe, SAMPLE_NS};
use super::window::{ChunkOp, ChunkSize, Feeder, WINDOW_PER_THREAD};
use crate::pool::{Registry, ThreadPool, current_registry_arc};
use crate::watch::{self, Active, Stopped};

/// Calls the caller's closure through a raw pointer.
struct RawOp<F> {
    f: *const F,
}

// SAFETY: the pointer is only dereferenced (as `&F`) while the blocking call that owns the
// closure is running (see the module docs); `F: Sync` makes the shared use sound.
unsafe impl<F: Sync> Send for RawOp<F> {}
// SAFETY: as above.
unsafe impl<F: Sync> Sync for RawOp<F> {}

impl<F> RawOp<F> {
    fn f(&self) -> &F {
        // SAFETY: see the `Send` impl: the closure outlives every call through the pointer.
        unsafe { &*self.f }
    }
}

impl<T, R: Send, F: Fn(T) -> R + Sync> ChunkOp<T> for RawOp<F> {
    type Output = R;
    #[inline]
    fn call(&self, item: T) -> R {
        (self.f())(item)
    }
}

/// `try_map`'s op: stops a chunk at its first `Err`.
struct RawTryOp<F>(RawOp<F>);

impl<T, R: Send, E: Send, F: Fn(T) -> Result<R, E> + Sync> ChunkOp<T> for RawTryOp<F> {
    type Output = Result<R, E>;
    const CAN_STOP: bool = true;
    #[inline]
    fn call(&self, item: T) -> Result<R, E> {
        (self.0.f())(item)
    }
    fn stops(&self, output: &Result<R, E>) -> bool {
        output.is_err()
    }
}

/// An item must cost at least this much (ns) before handing items to other threads pays.
/// The calling thread pulls every item and moves it into a chunk, and moves every result
/// out again: ~3 ns per item on the reference machine. Below about twice that, the caller
/// alone is faster than any number of workers fed by it, so it keeps mapping by itself.
pub(crate) const ITEM_PARALLEL_MIN_NS: f64 = 8.0;

/// Maps items on the calling thread, one sample window at a time, while they are too cheap
/// to hand over; returns their cost (ns per item) once they are worth handing over (see
/// [`worth_handing_over`]: one expensive window alone may be noise, the output buffer
/// growing or the thread being descheduled), or `None` if `run` stopped first (see
/// [`CostProbe::window`]).
pub(crate) fn map_while_cheap(
    probe: &mut CostProbe,
    mut run: impl FnMut(usize) -> (usize, bool),
) -> Option<f64> {
    let mut expensive_before = false;
    loop {
        let per_item_ns = probe.window(&mut run)?;
        if worth_handing_over(per_item_ns, &mut expensive_before) {
            return Some(per_item_ns);
        }
    }
}

/// The decision of [`map_while_cheap`] after one window: two expensive windows in a row,
/// or a single item that outlasted the whole window (no noise makes a cheap item that slow;
/// waiting for a second window would only run another expensive item on this thread).
pub(crate) fn worth_handing_over(per_item_ns: f64, expensive_before: &mut bool) -> bool {
    let expensive = per_item_ns >= ITEM_PARALLEL_MIN_NS;
    let worth = per_item_ns >= SAMPLE_NS || (expensive && *expensive_before);
    *expensive_before = expensive;
    worth
}

/// A `run` for [`CostProbe::window`] that maps `input` into `out` in bulk.
pub(crate) fn extend_run<'a, I, R, F>(
    input: &'a mut I,
    f: &'a F,
    out: &'a mut impl Results<R>,
) -> impl FnMut(usize) -> (usize, bool) + 'a
where
    I: Iterator,
    F: Fn(I::Item) -> R,
{
    move |batch| {
        let mapped = extend_batch(input, f, out, batch);
        (mapped, mapped == batch)
    }
}

/// `run` (a sample window's batch) under `watch`: each batch first checks the watch (on a
/// stop, records it in `stopped` and tells the window to stop) and counts its items.
pub(crate) fn watched_run<'a>(
    watch: Option<&'a Active>,
    stopped: &'a mut Option<Stopped>,
    mut run: impl FnMut(usize) -> (usize, bool) + 'a,
) -> impl FnMut(usize) -> (usize, bool) + 'a {
    move |batch| {
        let Some(watch) = watch else {
            return run(batch);
        };
        if let Err(stop) = watch.check() {
            *stopped = Some(stop);
            return (0, false);
        }
        let (mapped, go_on) = run(batch);
        watch.add(mapped as u64);
        (mapped, go_on)
    }
}

/// Checks `watch` as a call starts (unwinding if it is stopped already, with `input`
/// dropped unpulled first) and adds the input's length, if known, to the progress total.
pub(crate) fn start_watched<I: Iterator>(watch: Option<&Active>, input: I) -> I {
    let Some(watch) = watch else {
        return input;
    };
    if let Err(stopped) = watch.check() {
        watch::unwind_after_dropping(stopped, input);
    }
    watch.expect(known_len(&input).map(|len| len as u64));
    input
}

/// Maps up to `batch` items of `input` into `out`; returns how many. A function of its own
/// (not inlined into the sampling loop) so that the compiler sees `input` and `out` as the
/// unaliased references they are and keeps the iterator's state in registers: inlined
/// through the closure, the loop ran ~1.5 times slower than a plain `collect`.
#[inline(never)]
fn extend_batch<I, R, F>(input: &mut I, f: &F, out: &mut impl Results<R>, batch: usize) -> usize
where
    I: Iterator,
    F: Fn(I::Item) -> R,
{
    let before = out.count();
    out.extend(input.by_ref().take(batch).map(f));
    out.count() - before
}

/// Where [`extend_run`] puts results: a vector (`map`) or a queue (`imap`).
pub(crate) trait Results<R>: Extend<R> {
    fn count(&self) -> usize;
}

impl<R> Results<R> for Vec<R> {
    fn count(&self) -> usize {
        self.len()
    }
}

impl<R> Results<R> for std::collections::VecDeque<R> {
    fn count(&self) -> usize {
        self.len()
    }
}

/// Receives in-order results; false stops the map.
trait Collect<O> {
    fn push(&mut self, output: O) -> bool;

    /// Takes a whole chunk's results (leaving `chunk` empty, its buffer kept).
    fn push_chunk(&mut self, chunk: &mut Vec<O>) -> bool {
        let mut keep_going = true;
        for value in chunk.drain(..) {
            if keep_going {
                keep_going = self.push(value);
            }
        }
        keep_going
    }
}

/// The window loop shared by `map` and `try_map`: submits, runs and collects chunks in
/// input order until the input ends or `collect` says stop. If the call's watch stops it,
/// returns why once no chunk runs any more.
fn run_window<I, Op>(
    feeder: &mut Feeder<I, Op>,
    collect: &mut impl Collect<Op::Output>,
) -> Result<(), Stopped>
where
    I: Iterator,
    I::Item: Send,
    Op: ChunkOp<I::Item>,
{
    loop {
        // Checked before pulling more input (none is pulled after a stop) and after each
        // chunk arrives (no result that arrives after it is kept).
        if feeder.stopped().is_none() {
            feeder.fill();
        }
        let Some(mut token) = feeder.next_results(true) else {
            return feeder.stopped().map_or(Ok(()), Err);
        };
        if let Some(stopped) = feeder.stopped() {
            feeder.release(token);
            if let Some(payload) = feeder.cancel_and_take_panic() {
                // A chunk panicked: its panic wins over the stop.
                std::panic::resume_unwind(payload);
            }
            return Err(stopped);
        }
        let (output, _, _) = feeder.slot(&mut token);
        let keep_going = collect.push_chunk(output);
        feeder.release(token);
        if !keep_going {
            feeder.cancel_and_wait();
            return Ok(());
        }
    }
}

/// Collects `map` results.
struct IntoVec<'a, R>(&'a mut Vec<R>);

impl<R> Collect<R> for IntoVec<'_, R> {
    #[inline]
    fn push(&mut self, output: R) -> bool {
        self.0.push(output);
        true
    }

    fn push_chunk(&mut self, chunk: &mut Vec<R>) -> bool {
        self.0.append(chunk);
        true
    }
}

/// Collects `try_map` results up to the first error.
struct UntilErr<'a, R, E> {
    out: &'a mut Vec<R>,
    error: Option<E>,
}

impl<R, E> Collect<Result<R, E>> for UntilErr<'_, R, E> {
    #[inline]
    fn push(&mut self, output: Result<R, E>) -> bool {
        match output {
            Ok(value) => {
                self.out.push(value);
                true
            }
            Err(error) => {
                self.error = Some(error);
                false
            }
        }
    }
}

/// The length of an iterator that knows it exactly (to size the output once), else 0.
fn exact_len(input: &impl Iterator) -> usize {
    known_len(input).unwrap_or(0)
}

/// The length of an iterator that knows it exactly.
pub(crate) fn known_len(input: &impl Iterator) -> Option<usize> {
    match input.size_hint() {
        (lower, Some(upper)) if lower == upper => Some(lower),
        _ => None,
    }
}

fn window_size(registry: &Registry) -> usize {
    WINDOW_PER_THREAD * registry.num_threads().max(1)
}

/// `map`: ordered results of `f` over `items`, on `registry`'s pool.
fn map_on<I, R, F>(registry: Arc<Registry>, items: I, chunk: Option<usize>, f: &F) -> Vec<R>
where
    I: IntoIterator,
    I::Item: Send,
    R: Send,
    F: Fn(I::Item) -> R + Sync,
{
    let active = Active::current();
    let mut input = start_watched(active.as_ref(), items.into_iter());
    let mut out = Vec::with_capacity(exact_len(&input));
    let chunk = match chunk {
        Some(size) => ChunkSize::Fixed(size),
        None => {
            let mut stopped = None;
            let run = watched_run(
                active.as_ref(),
                &mut stopped,
                extend_run(&mut input, f, &mut out),
            );
            match map_while_cheap(&mut CostProbe::new(), run) {
                Some(per_item_ns) => ChunkSize::Auto { per_item_ns },
                None => match stopped {
                    Some(stopped) => watch::unwind_after_dropping(stopped, (input, out)),
                    None => return out,
                },
            }
        }
    };
    let slots = window_size(&registry);
    let mut feeder = Feeder::new(RawOp { f }, slots, registry, input, chunk, true, active);
    if let Err(stopped) = run_window(&mut feeder, &mut IntoVec(&mut out)) {
        // The input not yet pulled goes with the feeder.
        watch::unwind_after_dropping(stopped, (feeder, out));
    }
    out
}

/// `try_map`: ordered results of `f` over `items` up to the first `Err`.
fn try_map_on<I, R, E, F>(registry: Arc<Registry>, items: I, f: &F) -> Result<Vec<R>, E>
where
    I: IntoIterator,
    I::Item: Send,
    R: Send,
    E: Send,
    F: Fn(I::Item) -> Result<R, E> + Sync,
{
    let active = Active::current();
    let mut input = start_watched(active.as_ref(), items.into_iter());
    let mut out = Vec::with_capacity(exact_len(&input));
    let mut collect = UntilErr {
        out: &mut out,
        error: None,
    };
    let mut stopped = None;
    let run = watched_run(active.as_ref(), &mut stopped, |batch| {
        let mut mapped = 0;
        for item in input.by_ref().take(batch) {
            mapped += 1;
            if !collect.push(f(item)) {
                return (mapped, false);
            }
        }
        (mapped, mapped == batch)
    });
    let sampled = map_while_cheap(&mut CostProbe::new(), run);
    if let Some(stopped) = stopped {
        let UntilErr { error, .. } = collect;
        watch::unwind_after_dropping(stopped, (input, error, out));
    }
    if let Some(per_item_ns) = sampled {
        let op = RawTryOp(RawOp { f });
        let slots = window_size(&registry);
        let chunk = ChunkSize::Auto { per_item_ns };
        let mut feeder = Feeder::new(op, slots, registry, input, chunk, true, active);
        if let Err(stopped) = run_window(&mut feeder, &mut collect) {
            let UntilErr { error, .. } = collect;
            watch::unwind_after_dropping(stopped, (feeder, error, out));
        }
    }
    match collect.error {
        Some(error) => Err(error),
        None => Ok(out),
    }
}

impl ThreadPool {
    /// Maps `f` over any iterator on this pool; results in input order. Python's
    /// `Pool.map`.
    ///
    /// The input needs no size hint and need not be `Send`: the calling thread pulls it in
    /// chunks (never a lock or a message per item), hands them to the workers, maps chunks
    /// itself while it waits, and reassembles the results in order. The chunk size is chosen
    /// from the measured cost of the first items and adapts as chunks complete; an input
    /// that is done within that first measurement never leaves the calling thread. `f` may
    /// borrow local data.
    ///
    /// # Panics
    ///
    /// If `f` panics, the panic is re-raised here once no chunk is running any more; the
    /// pool keeps serving.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let offset = 100;
    /// let lines = "3\n1\n2".lines(); // no size hint needed
    /// let values: Vec<u32> = pool.map(lines, |s| s.parse::<u32>().unwrap() + offset);
    /// assert_eq!(values, [103, 101, 102]);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn map<I, R, F>(&self, items: I, f: F) -> Vec<R>
    where
        I: IntoIterator,
        I::Item: Send,
        R: Send,
        F: Fn(I::Item) -> R + Sync,
    {
        map_on(Arc::clone(self.registry()), items, None, &f)
    }

    /// Like [`map`](ThreadPool::map), with a fixed number of items per chunk (Python's
    /// `chunksize`).
    ///
    /// # Panics
    ///
    /// If `chunk_size` is 0; and as [`map`](ThreadPool::map) if `f` panics.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let doubled = pool.map_chunked(0..10, 3, |x| x * 2);
    /// assert_eq!(doubled, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn map_chunked<I, R, F>(&self, items: I, chunk_size: usize, f: F) -> Vec<R>
    where
        I: IntoIterator,
        I::Item: Send,
        R: Send,
        F: Fn(I::Item) -> R + Sync,
    {
        assert!(chunk_size > 0, "{}", ZERO_CHUNK_SIZE);
        map_on(Arc::clone(self.registry()), items, Some(chunk_size), &f)
    }

    /// Maps a fallible `f` over any iterator, stopping at the first `Err`: input is no longer
    /// pulled, chunks after the failing item are skipped, and the error is returned. The
    /// result is what the sequential `items.map(f).collect::<Result<Vec<_>, _>>()` gives:
    /// the values in input order, or the error of the earliest failing item.
    ///
    /// # Errors
    ///
    /// The first `Err` returned by `f`, in input order.
    ///
    /// # Panics
    ///
    /// As [`map`](ThreadPool::map).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let parsed: Result<Vec<u8>, _> = pool.try_map(["1", "2", "3"], |s| s.parse::<u8>());
    /// assert_eq!(parsed.unwrap(), [1, 2, 3]);
    /// let failed: Result<Vec<u8>, _> = pool.try_map(["1", "x", "300"], |s| s.parse::<u8>());
    /// assert!(failed.is_err());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn try_map<I, R, E, F>(&self, items: I, f: F) -> Result<Vec<R>, E>
    where
        I: IntoIterator,
        I::Item: Send,
        R: Send,
        E: Send,
        F: Fn(I::Item) -> Result<R, E> + Sync,
    {
        try_map_on(Arc::clone(self.registry()), items, &f)
    }
}

/// [`ThreadPool::map`] on the current pool (the pool whose worker calls it, else the
/// global pool).
///
/// # Examples
///
/// ```
/// let words = vec!["alpha", "beta"];
/// assert_eq!(parpool::map(words.iter().copied(), str::len), [5, 4]);
/// ```
pub fn map<I, R, F>(items: I, f: F) -> Vec<R>
where
    I: IntoIterator,
    I::Item: Send,
    R: Send,
    F: Fn(I::Item) -> R + Sync,
{
    map_on(current_registry_arc(), items, None, &f)
}

/// [`ThreadPool::map_chunked`] on the current pool.
///
/// # Panics
///
/// If `chunk_size` is 0; and if `f` panics.
///
/// # Examples
///
/// ```
/// assert_eq!(parpool::map_chunked(1..=4, 2, |x| x * x), [1, 4, 9, 16]);
/// ```
pub fn map_chunked<I, R, F>(items: I, chunk_size: usize, f: F) -> Vec<R>
where
    I: IntoIterator,
    I::Item: Send,
    R: Send,
    F: Fn(I::Item) -> R + Sync,
{
    assert!(chunk_size > 0, "{}", ZERO_CHUNK_SIZE);
    map_on(current_registry_arc(), items, Some(chunk_size), &f)
}

/// [`ThreadPool::try_map`] on the current pool.
///
/// # Errors
///
/// The first `Err` returned by `f`, in input order.
///
/// # Examples
///
/// ```
/// let sums = parpool::try_map(0..5u32, |x| x.checked_sub(1).ok_or("underflow"));
/// assert_eq!(sums, Err("underflow"));
/// ```
pub fn try_map<I, R, E, F>(items: I, f: F) -> Result<Vec<R>, E>
where
    I: IntoIterator,
    I::Item: Send,
    R: Send,
    E: Send,
    F: Fn(I::Item) -> Result<R, E> + Sync,
{
    try_map_on(current_registry_arc(), items, &f)
}
