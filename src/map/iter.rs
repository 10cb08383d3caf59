//! Blocking maps over any iterator: `map`, `map_chunked`, `try_map`.
//!
//! The calling thread first maps items itself while they are too cheap to hand over
//! ([`CostProbe`], [`HandOver`]): a small input, or a map of trivial items whose cost is
//! all in pulling the input, stays sequential. Then it becomes the window's feeder (see
//! `window.rs`): it pulls the input (so the iterator itself need not be `Send`), submits
//! chunks, runs chunks itself while it waits, and appends the results in input order. A
//! chunk that ran cheap hands the input back (see [`run_window`]): the feeder pauses, and
//! the calling thread maps alone again until items prove expensive once more; the next
//! hand-over then keeps one chunk per thread in flight until a chunk confirms that the
//! items are expensive. The closure may borrow: the window only keeps a raw pointer to
//! it, and the call does not return, normally or by unwinding, before every chunk has
//! come back.
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

/// A chunk whose items cost less than this (ns each, measured where the chunk ran) hands
/// the input back to the calling thread (see [`run_window`]). A chunk's time is the op
/// alone, and noise (a page fault, a preemption) only ever adds to it, so a single cheap
/// chunk is evidence enough, where a single expensive sample window is not. Half of
/// [`ITEM_PARALLEL_MIN_NS`]: the sample window's figure also holds the pulling and the
/// output's growth (~1–2 ns per item), and items between the two thresholds stay where they
/// are instead of being handed over and back in turn.
pub(crate) const ITEM_HAND_BACK_NS: f64 = ITEM_PARALLEL_MIN_NS / 2.0;

/// The longest run of expensive sample windows a hand-over may wait for (see
/// [`HandOver::handed_back`]): 1024 windows, ~4 ms of the caller's own mapping. A false
/// hand-over after a hand-back costs the chunks in flight when the first cheap chunk comes
/// back (one chunk of `CHUNK_NS` per thread, see [`run_window`]), so with false hand-overs
/// at most every ~4 ms they cost a few percent; and items that really became expensive
/// reach the pool within that time.
const MAX_HAND_OVER_STREAK: u32 = 1024;

/// When the calling thread hands its items to the pool: once `needed` sample windows in a
/// row were expensive, or at once if a single item outlasted the whole window (no noise
/// makes a cheap item that slow; waiting for another window would only run another
/// expensive item on this thread). One expensive window alone may be noise (the output
/// buffer growing, a page fault, the thread being descheduled), and noise only ever adds
/// time; `needed` starts at 2 and doubles each time the pool hands the items back as
/// cheap, so that noise which keeps recurring (a loaded machine) stops costing a window's
/// round trip through the pool every few windows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandOver {
    streak: u32,
    needed: u32,
}

impl HandOver {
    pub(crate) fn new() -> Self {
        HandOver {
            streak: 0,
            needed: 2,
        }
    }

    /// The decision after a window whose items cost `per_item_ns` each.
    pub(crate) fn worth(&mut self, per_item_ns: f64) -> bool {
        if per_item_ns >= SAMPLE_NS {
            self.streak = 0;
            return true;
        }
        if per_item_ns < ITEM_PARALLEL_MIN_NS {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        if self.streak < self.needed {
            return false;
        }
        self.streak = 0;
        true
    }

    /// Whether the pool has handed these items back before: a new hand-over is then
    /// confirmed before it fills the window (see [`run_window`]).
    fn in_doubt(&self) -> bool {
        self.needed > HandOver::new().needed
    }

    /// The rule after the pool measured the items cheap and handed them back (see
    /// [`run_window`]).
    fn handed_back(self) -> Self {
        HandOver {
            streak: 0,
            needed: (self.needed * 2).min(MAX_HAND_OVER_STREAK),
        }
    }
}

/// Maps items on the calling thread, one sample window at a time, while they are too cheap
/// to hand over (see [`HandOver`]); returns their cost (ns per item) once they are worth
/// handing over, or `None` if `run` stopped first (see [`CostProbe::window`]).
fn map_while_cheap(
    probe: &mut CostProbe,
    hand_over: &mut HandOver,
    mut run: impl FnMut(usize) -> (usize, bool),
) -> Option<f64> {
    loop {
        let per_item_ns = probe.window(&mut run)?;
        if hand_over.worth(per_item_ns) {
            return Some(per_item_ns);
        }
    }
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
        let mapped = out.map_batch(input, f, batch);
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

/// Where [`extend_run`] puts results: a vector (`map`) or a queue (`imap`).
///
/// `map_batch` is a function of its own (not inlined into the sampling loop) so that the
/// compiler sees `input` and the results as the unaliased references they are and keeps
/// the iterator's state in registers: inlined through the closure, the loop ran ~1.5 times
/// slower than a plain `collect`.
pub(crate) trait Results<R> {
    /// Maps up to `batch` items of `input` with `f` onto the end; returns how many (fewer
    /// only if the input ended).
    fn map_batch<I, F>(&mut self, input: &mut I, f: &F, batch: usize) -> usize
    where
        I: Iterator,
        F: Fn(I::Item) -> R;
}

impl<R> Results<R> for Vec<R> {
    /// Reserves room for the whole batch first and writes each result into it, so the
    /// loop has one bound, the batch (which the iterator cannot give `collect`), and no
    /// capacity check or length store per item. Callgrind, 1M trivial items from an
    /// iterator without a size hint (issue 11): `Vec::extend` over `take(batch)` cost 16.4
    /// instructions per item, where the whole sequential `collect` costs 11.5; this loop
    /// costs 4.7 (over a counting `from_fn`, which the bounded loop vectorises), and 14.1
    /// over an iterator the optimiser cannot see through (its `collect`: 14.5). The room
    /// reserved past the input's end is at most one batch: what a sample window maps.
    #[inline(never)]
    fn map_batch<I, F>(&mut self, input: &mut I, f: &F, batch: usize) -> usize
    where
        I: Iterator,
        F: Fn(I::Item) -> R,
    {
        self.reserve(batch);
        let start = self.len();
        let mut filled = FilledTo {
            len: start,
            vec: self,
        };
        for place in &mut filled.vec.spare_capacity_mut()[..batch] {
            let Some(item) = input.next() else {
                break;
            };
            place.write(f(item));
            filled.len += 1;
        }
        filled.len - start
    }
}

impl<R> Results<R> for std::collections::VecDeque<R> {
    #[inline(never)]
    fn map_batch<I, F>(&mut self, input: &mut I, f: &F, batch: usize) -> usize
    where
        I: Iterator,
        F: Fn(I::Item) -> R,
    {
        let before = self.len();
        self.extend(input.by_ref().take(batch).map(f));
        self.len() - before
    }
}

/// A vector whose results up to `len` are written: its length is set to `len` when this
/// is dropped, at the end of the batch or while a panic in `next()` or in the closure
/// unwinds (the results already written are then dropped with the vector, none leaks).
struct FilledTo<'a, R> {
    vec: &'a mut Vec<R>,
    /// The vector's length, plus the places after it written so far, in order.
    len: usize,
}

impl<R> Drop for FilledTo<'_, R> {
    fn drop(&mut self) {
        // SAFETY: `len` starts at the vector's length and grows by one only after the next
        // place of its spare capacity (index `len`, within the capacity reserved for the
        // batch) was written; the vector was not touched otherwise meanwhile (it is
        // borrowed by this guard). So the first `len` places are initialised.
        unsafe { self.vec.set_len(self.len) };
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
/// input order until the input ends or `collect` says stop.
///
/// A chunk that cost less than `hand_back_below_ns` per item ([`ITEM_HAND_BACK_NS`] for
/// automatic chunk sizes, 0 for fixed ones) pauses the feeder: the chunks in flight are
/// collected, and if the input has more items, the return value is that chunk's cost per
/// item and the calling thread maps the rest by itself again. A sample window can mistake
/// the output's growth, a page fault or a preemption for expensive items, and handing
/// trivial items over costs more than mapping them (2.3 times the sequential time on 1M
/// trivial items, issue 11).
///
/// If the pool has handed these items back before (`doubted`), this hand-over is confirmed
/// before it costs a whole window: until a chunk has come back measured at or above
/// `hand_back_below_ns`, the feeder keeps one chunk per thread in flight, not the whole
/// window, and a false hand-over maps those chunks through the pool instead of
/// [`WINDOW_PER_THREAD`] times as many. Items whose pulling is what costs (a `lines()`
/// over 1M short lines, issue 11: ~25 ns an item on the caller's path, 30–40 ns on the
/// pool's) hand over again every few ms, each time with 15–120k items when the window
/// filled at once: 1.1–1.3 times the sequential time, 1.05–1.1 with the confirmation (at
/// load 3). A first hand-over fills the window at once: nothing says it is false yet, and
/// with fewer chunks queued the feeder, which runs queued chunks while it waits, runs out
/// of them whenever a worker holding the oldest chunk is descheduled.
///
/// If the call's watch stops it, returns why once no chunk runs any more (a chunk's panic
/// wins over the stop: it is re-raised).
fn run_window<I, Op>(
    feeder: &mut Feeder<I, Op>,
    collect: &mut impl Collect<Op::Output>,
    hand_back_below_ns: f64,
    doubted: bool,
) -> Result<Option<f64>, Stopped>
where
    I: Iterator,
    I::Item: Send,
    Op: ChunkOp<I::Item>,
{
    let mut cheap = None;
    let mut confirmed = !doubted;
    loop {
        // Checked before pulling more input (none is pulled after a stop) and after each
        // chunk arrives (no result that arrives after it is kept).
        if feeder.stopped().is_none() {
            let limit = if confirmed {
                usize::MAX
            } else {
                feeder.threads()
            };
            feeder.fill_up_to(limit);
        }
        let Some(mut token) = feeder.next_results(true) else {
            return match feeder.stopped() {
                Some(stopped) => Err(stopped),
                None => Ok(cheap.filter(|_| feeder.paused())),
            };
        };
        if let Some(stopped) = feeder.stopped() {
            feeder.release(token);
            if let Some(payload) = feeder.cancel_and_take_panic() {
                // A chunk panicked: its panic wins over the stop.
                std::panic::resume_unwind(payload);
            }
            return Err(stopped);
        }
        if cheap.is_none() {
            match feeder.cost_per_item(&mut token) {
                Some(ns) if ns < hand_back_below_ns => {
                    cheap = Some(ns);
                    feeder.pause();
                }
                Some(_) => confirmed = true,
                None => {}
            }
        }
        let (output, _, _) = feeder.slot(&mut token);
        let keep_going = collect.push_chunk(output);
        feeder.release(token);
        if !keep_going {
            feeder.cancel_and_wait();
            return Ok(None);
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
    let slots = window_size(&registry);
    if let Some(size) = chunk {
        let chunk = ChunkSize::Fixed(size);
        let mut feeder = Feeder::new(
            RawOp { f },
            slots,
            registry,
            &mut input,
            chunk,
            true,
            active,
        );
        if let Err(stopped) = run_window(&mut feeder, &mut IntoVec(&mut out), 0.0, false) {
            // The input not yet pulled and the results so far are dropped before this unwinds.
            drop(feeder);
            watch::unwind_after_dropping(stopped, (input, out));
        }
        return out;
    }
    let (mut probe, mut hand_over) = (CostProbe::new(), HandOver::new());
    loop {
        let mut stopped = None;
        let run = watched_run(
            active.as_ref(),
            &mut stopped,
            extend_run(&mut input, f, &mut out),
        );
        let sampled = map_while_cheap(&mut probe, &mut hand_over, run);
        if let Some(stopped) = stopped {
            watch::unwind_after_dropping(stopped, (input, out));
        }
        let Some(per_item_ns) = sampled else {
            break;
        };
        let chunk = ChunkSize::Auto { per_item_ns };
        let (registry, watch) = (Arc::clone(&registry), active.clone());
        let mut feeder = Feeder::new(RawOp { f }, slots, registry, &mut input, chunk, true, watch);
        match run_window(
            &mut feeder,
            &mut IntoVec(&mut out),
            ITEM_HAND_BACK_NS,
            hand_over.in_doubt(),
        ) {
            Ok(Some(cheap_ns)) => {
                (probe, hand_over) = (CostProbe::expecting(cheap_ns), hand_over.handed_back());
            }
            Ok(None) => break,
            Err(stopped) => {
                drop(feeder);
                watch::unwind_after_dropping(stopped, (input, out));
            }
        }
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
    let slots = window_size(&registry);
    let (mut probe, mut hand_over) = (CostProbe::new(), HandOver::new());
    loop {
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
        let sampled = map_while_cheap(&mut probe, &mut hand_over, run);
        if let Some(stopped) = stopped {
            let UntilErr { error, .. } = collect;
            watch::unwind_after_dropping(stopped, (input, error, out));
        }
        let Some(per_item_ns) = sampled else {
            break;
        };
        let (op, registry) = (RawTryOp(RawOp { f }), Arc::clone(&registry));
        let chunk = ChunkSize::Auto { per_item_ns };
        let watch = active.clone();
        let mut feeder = Feeder::new(op, slots, registry, &mut input, chunk, true, watch);
        match run_window(
            &mut feeder,
            &mut collect,
            ITEM_HAND_BACK_NS,
            hand_over.in_doubt(),
        ) {
            Ok(Some(cheap_ns)) => {
                (probe, hand_over) = (CostProbe::expecting(cheap_ns), hand_over.handed_back());
            }
            Ok(None) => break,
            Err(stopped) => {
                drop(feeder);
                let UntilErr { error, .. } = collect;
                watch::unwind_after_dropping(stopped, (input, error, out));
            }
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
    /// that is done within that first measurement never leaves the calling thread, and
    /// items that turn out too cheap to hand over go back to it. `f` may borrow local data.
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

#[cfg(test)]
mod test {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn hand_over_needs_two_expensive_windows_then_twice_as_many_after_each_hand_back() {
        let expensive = ITEM_PARALLEL_MIN_NS * 2.0;
        let mut rule = HandOver::new();
        assert!(!rule.worth(expensive));
        assert!(!rule.worth(1.0), "a cheap window breaks the streak");
        assert!(!rule.worth(expensive));
        assert!(rule.worth(expensive));
        assert!(
            rule.worth(SAMPLE_NS),
            "one item outlasting a window is enough"
        );
        let mut rule = rule.handed_back();
        assert!((1..4).all(|_| !rule.worth(expensive)));
        assert!(rule.worth(expensive));
        for _ in 0..20 {
            rule = rule.handed_back();
        }
        let waited = (0..).take_while(|_| !rule.worth(expensive)).count();
        assert_eq!(waited + 1, MAX_HAND_OVER_STREAK as usize);
    }

    /// Counts the live values made by [`Live::new`].
    struct Live<'a>(&'a std::cell::Cell<isize>, u64);

    impl<'a> Live<'a> {
        fn new(live: &'a std::cell::Cell<isize>, value: u64) -> Self {
            live.set(live.get() + 1);
            Live(live, value)
        }
    }

    impl Drop for Live<'_> {
        fn drop(&mut self) {
            self.0.set(self.0.get() - 1);
        }
    }

    #[test]
    fn map_batch_appends_at_most_a_batch_and_stops_at_the_first_none() {
        // Not fused: after item 5 comes `None`, then more items, which the batch that met
        // the end must not pull.
        let mut next = 0;
        let mut input = std::iter::from_fn(|| {
            next += 1;
            (next != 6).then_some(next)
        });
        let mut out = vec![0];
        assert_eq!(out.map_batch(&mut input, &|x| x * 10, 3), 3);
        assert_eq!(out.map_batch(&mut input, &|x| x * 10, 0), 0);
        assert_eq!(
            out.map_batch(&mut input, &|x| x * 10, 3),
            2,
            "the input ended"
        );
        assert_eq!(out, [0, 10, 20, 30, 40, 50]);
        assert_eq!(input.next(), Some(7), "nothing pulled after the `None`");
        let mut units = Vec::new();
        assert_eq!(units.map_batch(&mut (0..5), &|_| (), 8), 5);
        assert_eq!(units.len(), 5);
    }

    #[test]
    fn map_batch_keeps_and_later_drops_every_result_written_before_a_panic() {
        let live = std::cell::Cell::new(0);
        let make = |x| Live::new(&live, x);
        // A panic in the closure at the 5th item, then in `next()` at the 5th item: the
        // four results written before it are in the vector, and nothing leaks.
        for in_next in [false, true] {
            let mut out = vec![Live::new(&live, 100)];
            let mut pulled = 0;
            let input = std::iter::from_fn(|| {
                pulled += 1;
                assert!(!(in_next && pulled == 5), "boom in next");
                Some(pulled)
            });
            let mut input = input.map(make);
            let f = |item: Live<'_>| {
                assert!(item.1 != 5, "boom in f");
                Live::new(&live, item.1 * 2)
            };
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                out.map_batch(&mut input, &f, 1000)
            }));
            assert!(unwound.is_err());
            let values: Vec<u64> = out.iter().map(|item| item.1).collect();
            assert_eq!(values, [100, 2, 4, 6, 8], "panic in next: {in_next}");
            drop(out);
            drop(input);
            assert_eq!(live.get(), 0, "panic in next: {in_next}");
        }
    }

    /// Takes `map` results into `out`, recording how many items were pulled and not yet
    /// taken each time a chunk's results arrive.
    struct InFlight<'a> {
        out: Vec<u64>,
        pulled: &'a std::cell::Cell<usize>,
        in_flight: Vec<usize>,
    }

    impl Collect<u64> for InFlight<'_> {
        fn push(&mut self, output: u64) -> bool {
            self.out.push(output);
            true
        }

        fn push_chunk(&mut self, chunk: &mut Vec<u64>) -> bool {
            self.in_flight.push(self.pulled.get() - self.out.len());
            self.out.append(chunk);
            true
        }
    }

    /// What [`run_window`] returned, and what the input and the results saw.
    struct Windowed {
        out: Vec<u64>,
        cheap: Option<f64>,
        /// Items pulled and not yet taken, as each chunk's results arrived.
        in_flight: Vec<usize>,
        /// The item the input gives after the map.
        next: Option<u64>,
    }

    /// Maps `0..` up to `end` (then `None`, then more items: not fused) in chunks of 10
    /// through a window of 4 slots on 2 threads, handing back below `hand_back_below_ns`
    /// (`doubted`: the items were handed back before); each item takes at least `item`.
    fn chunks_of_ten(end: u64, hand_back_below_ns: f64, doubted: bool, item: Duration) -> Windowed {
        let pulled = std::cell::Cell::new(0);
        let mut input = std::iter::from_fn(|| {
            pulled.set(pulled.get() + 1);
            (pulled.get() - 1 != end as usize).then_some(pulled.get() as u64 - 1)
        });
        let mut collect = InFlight {
            out: Vec::new(),
            pulled: &pulled,
            in_flight: Vec::new(),
        };
        let pool = ThreadPool::new(2).unwrap();
        let registry = Arc::clone(pool.registry());
        let f = |x: u64| {
            let start = Instant::now();
            while start.elapsed() < item {
                std::hint::spin_loop();
            }
            x * 2
        };
        let chunk = ChunkSize::Fixed(10);
        let op = RawOp { f: &f };
        let mut feeder = Feeder::new(op, 4, registry, &mut input, chunk, true, None);
        let cheap = run_window(&mut feeder, &mut collect, hand_back_below_ns, doubted)
            .expect("no watch, no stop");
        drop(feeder);
        Windowed {
            out: collect.out,
            cheap,
            in_flight: collect.in_flight,
            next: input.next(),
        }
    }

    fn doubled(items: std::ops::Range<u64>) -> Vec<u64> {
        items.map(|x| x * 2).collect()
    }

    #[test]
    fn a_paused_window_returns_every_chunk_in_flight_and_leaves_the_rest_of_the_input() {
        // A window of 4 slots is full after 40 items: the first chunk pauses it, the other
        // three still come back, in order, and the input resumes at item 40.
        let run = chunks_of_ten(1_000, f64::INFINITY, false, Duration::ZERO);
        assert_eq!(run.out, doubled(0..40));
        assert!(run.cheap.is_some());
        assert_eq!(run.in_flight, [40, 30, 20, 10]);
        assert_eq!(run.next, Some(40));
    }

    #[test]
    fn a_window_whose_input_ended_is_not_paused_and_not_pulled_again() {
        // The input ends inside the first window: every item comes back, the window says
        // the input is done, and the `next()` after the end is ours alone (item 26 of the
        // non-fused input, which the map never pulled).
        let run = chunks_of_ten(25, f64::INFINITY, false, Duration::ZERO);
        assert_eq!(run.out, doubled(0..25));
        assert_eq!(run.cheap, None);
        assert_eq!(run.next, Some(26));
    }

    #[test]
    fn a_doubted_hand_over_fills_the_window_only_once_a_chunk_measured_the_items_expensive() {
        // Handed back before, and cheap again: one chunk per thread was in flight (20
        // items), and the input resumes at item 20.
        let run = chunks_of_ten(1_000, f64::INFINITY, true, Duration::ZERO);
        assert_eq!(run.out, doubled(0..20));
        assert!(run.cheap.is_some());
        assert_eq!(run.in_flight, [20, 10]);
        assert_eq!(run.next, Some(20));
        // Handed back before, and expensive now: the first chunk arrives with 20 items
        // pulled, and the window fills all 4 slots after it (chunk 1 and three more in
        // flight when chunk 1 arrives).
        let run = chunks_of_ten(100, 1e-3, true, Duration::from_micros(2));
        assert_eq!(run.out, doubled(0..100));
        assert_eq!(run.cheap, None);
        assert_eq!(run.in_flight[..2], [20, 40]);
    }
}
