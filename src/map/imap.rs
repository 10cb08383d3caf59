//! Lazy maps: [`Imap`] (input order) and [`ImapUnordered`] (completion order), one type
//! with the order as a const parameter.
//!
//! Both are the feeder of a window (see `window.rs`) driven by the consumer's `next()`:
//! input is pulled only to keep at most `window` chunks in flight, so memory does not grow
//! with the input and infinite input works.
//!
//! # Soundness
//!
//! A lazy iterator can be leaked (`mem::forget`) while its chunks still run on the pool, so
//! whatever the drainers touch is owned by the window (an `Arc`): the closure and the items
//! must be `'static`, and the results are left in the window if nobody takes them. The input
//! *iterator* stays with the consumer and may borrow. Dropping the iterator skips the chunks
//! not started yet and returns at once: it never waits for running ones.
//!
//! ```compile_fail
//! // The closure borrows a local: not allowed, the iterator could outlive it.
//! let pool = parpool::ThreadPool::new(2).unwrap();
//! let offset = 10;
//! let offset_ref = &offset;
//! let _ = pool.imap(0..10u32, |x| x + *offset_ref).collect::<Vec<_>>();
//! ```
//!
//! ```compile_fail
//! // The items borrow a local vector: not allowed either.
//! let pool = parpool::ThreadPool::new(2).unwrap();
//! let words = vec![String::from("a")];
//! let _ = pool.imap(words.iter(), |w: &String| w.len()).count();
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::ZERO_CHUNK_SIZE;
use super::iter::{HandOver, extend_run, known_len, watched_run};
use super::sample::CostProbe;
use super::window::{ChunkSize, Feeder, MapOp, WINDOW_PER_THREAD};
use crate::pool::{Registry, current_registry_arc};
use crate::watch::{self, Active, Stopped};

/// A lazy parallel map: yields `f(item)` for each input item, in input order (`Imap`) or in
/// the order the results complete ([`ImapUnordered`]). Python's `Pool.imap` and
/// `Pool.imap_unordered`. Created by [`ThreadPool::imap`](crate::ThreadPool::imap),
/// [`ThreadPool::imap_unordered`](crate::ThreadPool::imap_unordered) and the free functions
/// [`imap`](crate::imap) and [`imap_unordered`](crate::imap_unordered).
///
/// The input is pulled only as the iterator is consumed, with at most
/// [`window`](Imap::window) chunks of [`chunk_size`](Imap::chunk_size) items in flight:
/// memory does not grow with the input, and infinite input works. Every input item's result
/// is yielded exactly once. Dropping the iterator stops pulling and skips the chunks not yet
/// started, without waiting for the running ones.
///
/// # Watches
///
/// The iterator captures the [`Watch`](crate::Watch) in force where it is made, not where
/// it is consumed: its items are mapped under that watch (and counted into its progress),
/// whichever thread calls `next()`. When that watch stops it, the chunks not yet taken are
/// dropped unmapped and `next()` unwinds to the enclosing [`Watch::run`](crate::Watch::run),
/// which returns the [`Stopped`](crate::Stopped). An iterator returned out of its `run` and
/// consumed outside any run has no `run` to unwind to: use
/// [`until_stopped`](Imap::until_stopped), which yields the stop once as an item and then
/// ends (plain `next()` panics there, saying so).
///
/// # Panics
///
/// If `f` panics, `next()` re-raises the panic once no chunk is running any more; the pool
/// keeps serving. If the iterator's watch stops it while it is consumed outside any
/// [`Watch::run`](crate::Watch::run) (see "Watches").
///
/// # Examples
///
/// ```
/// let pool = parpool::ThreadPool::new(2)?;
/// let squares: Vec<u64> = pool.imap(0..1000u64, |x| x * x).collect();
/// assert_eq!(squares, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
///
/// // Infinite input, taken lazily.
/// let first: Vec<u64> = pool.imap(1.., |x: u64| x * 10).chunk_size(4).take(3).collect();
/// assert_eq!(first, [10, 20, 30]);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct Imap<I: Iterator, F, R, const ORDERED: bool = true>
where
    F: Fn(I::Item) -> R + Send + Sync + 'static,
    R: Send + 'static,
    I::Item: Send + 'static,
{
    state: State<I, F, R>,
    /// Results ready to be yielded, in yield order.
    current: VecDeque<R>,
    chunk: Option<usize>,
    window: Option<usize>,
    /// The watch in force where the iterator was made: its items are mapped under it.
    watch: Option<Active>,
}

/// [`Imap`] yielding results in completion order: Python's `imap_unordered`.
///
/// # Examples
///
/// ```
/// let pool = parpool::ThreadPool::new(2)?;
/// let mut lengths: Vec<usize> = pool
///     .imap_unordered(["a", "bb", "ccc"].into_iter(), |s: &'static str| s.len())
///     .collect();
/// lengths.sort();
/// assert_eq!(lengths, [1, 2, 3]);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
pub type ImapUnordered<I, F, R> = Imap<I, F, R, false>;

enum State<I: Iterator, F, R>
where
    F: Fn(I::Item) -> R + Send + Sync + 'static,
    R: Send + 'static,
    I::Item: Send + 'static,
{
    /// Nothing pulled yet; settings may still change.
    New {
        input: I,
        f: F,
        registry: Arc<Registry>,
    },
    /// Items so far were too cheap to hand over: the consumer maps them itself, one probe
    /// window per step (so it never runs ahead by more than a window's worth of items).
    Probing {
        input: I,
        f: F,
        registry: Arc<Registry>,
        probe: CostProbe,
        /// When the items are worth handing over (two expensive windows in a row).
        hand_over: HandOver,
    },
    Running(Feeder<I, MapOp<F>>),
    Finished,
}

impl<I, F, R, const ORDERED: bool> Imap<I, F, R, ORDERED>
where
    I: Iterator,
    I::Item: Send + 'static,
    F: Fn(I::Item) -> R + Send + Sync + 'static,
    R: Send + 'static,
{
    pub(crate) fn new(input: I, f: F, registry: Arc<Registry>) -> Self {
        let watch = Active::current();
        if let Some(watch) = &watch {
            watch.expect(known_len(&input).map(|len| len as u64));
        }
        Imap {
            state: State::New { input, f, registry },
            current: VecDeque::new(),
            chunk: None,
            window: None,
            watch,
        }
    }

    /// This iterator with the stop of its watch as an item: yields `Ok(result)` for each
    /// result, then, if the [`Watch`](crate::Watch) in force where the iterator was made
    /// stops it, `Err(Stopped)` once, and then ends. Use it to consume an `Imap` outside
    /// the [`run`](crate::Watch::run) that made it (see [`Imap`], "Watches"), or to see the
    /// stop without leaving the loop.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::{CancelToken, ThreadPool, Watch};
    ///
    /// let pool = ThreadPool::new(2)?;
    /// let token = CancelToken::new();
    /// let results = Watch::new()
    ///     .cancel_token(&token)
    ///     .run(|| pool.imap(0..1_000_000u64, |x| x * 2).until_stopped())
    ///     .unwrap();
    /// let mut seen = 0;
    /// let mut stops = 0;
    /// for result in results {
    ///     match result {
    ///         Ok(_) => {
    ///             seen += 1;
    ///             if seen == 10 {
    ///                 token.cancel();
    ///             }
    ///         }
    ///         Err(stopped) => {
    ///             assert!(stopped.is_cancelled());
    ///             stops += 1;
    ///         }
    ///     }
    /// }
    /// assert_eq!(stops, 1);
    /// assert!(seen < 1_000_000);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn until_stopped(self) -> UntilStopped<I, F, R, ORDERED> {
        UntilStopped { imap: Some(self) }
    }

    /// The next result, or why the watch stopped the map. The watch is checked before each
    /// probe window and each time a chunk's results arrive, never per item: results that
    /// arrived before the stop was seen are still yielded. Once stopped, every chunk not
    /// yet taken is dropped (those running finish in the background and are dropped
    /// there), and the iterator is finished.
    fn next_or_stop(&mut self) -> Result<Option<R>, Stopped> {
        loop {
            if let Some(value) = self.current.pop_front() {
                return Ok(Some(value));
            }
            if let Err(stopped) = self.advance() {
                self.state = State::Finished;
                self.current.clear();
                return Err(stopped);
            }
            if matches!(self.state, State::Finished) && self.current.is_empty() {
                return Ok(None);
            }
        }
    }

    /// Sets how many items go into one chunk (default: chosen from the measured cost of
    /// the items, aiming at ~50 µs per chunk; items too cheap to hand over are mapped by
    /// the consumer itself).
    ///
    /// # Panics
    ///
    /// If `chunk_size` is 0, or iteration has already started.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let doubled: Vec<u32> = pool.imap(0..10u32, |x| x * 2).chunk_size(3).collect();
    /// assert_eq!(doubled, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn chunk_size(mut self, chunk_size: usize) -> Self {
        assert!(chunk_size > 0, "{}", ZERO_CHUNK_SIZE);
        self.assert_not_started("chunk_size");
        self.chunk = Some(chunk_size);
        self
    }

    /// Sets how many chunks may be in flight at once (default: 4 per pool thread).
    ///
    /// # Panics
    ///
    /// If `window` is 0, or iteration has already started.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// // At most 2 chunks of 4 items in flight ahead of the consumer.
    /// let first: Vec<u64> = pool.imap(0u64.., |x| x + 1).chunk_size(4).window(2).take(5).collect();
    /// assert_eq!(first, [1, 2, 3, 4, 5]);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn window(mut self, window: usize) -> Self {
        assert!(
            window > 0,
            "parpool: the window must hold at least one chunk"
        );
        self.assert_not_started("window");
        self.window = Some(window);
        self
    }

    fn assert_not_started(&self, setting: &str) {
        assert!(
            matches!(self.state, State::New { .. }),
            "parpool: {setting} must be set before the first call to next()"
        );
    }

    /// Makes progress: maps a probe window's worth of items here, or moves the next chunk's
    /// results (in input or completion order) into `current`; `Finished` once everything
    /// has been yielded. `Err` if the watch stopped the map.
    fn advance(&mut self) -> Result<(), Stopped> {
        let feeder = match &mut self.state {
            State::New { .. } | State::Probing { .. } => return self.probe_or_start(),
            State::Running(feeder) => feeder,
            State::Finished => return Ok(()),
        };
        // As in the blocking maps: checked before pulling more input and after each chunk.
        if let Some(stopped) = feeder.stopped() {
            return Err(stopped);
        }
        feeder.fill();
        let Some(mut token) = feeder.next_results(ORDERED) else {
            self.state = State::Finished;
            return Ok(());
        };
        if let Some(stopped) = feeder.stopped() {
            feeder.release(token);
            return Err(stopped);
        }
        let (output, _, _) = feeder.slot(&mut token);
        // Both conversions keep the buffers: the slot's results become `current`, and the
        // empty `current` becomes the slot's next output buffer.
        let results = std::mem::replace(output, Vec::from(std::mem::take(&mut self.current)));
        self.current = VecDeque::from(results);
        feeder.release(token);
        Ok(())
    }

    /// Maps one probe window on this thread and starts the window of chunks once items
    /// prove worth handing over (by the rule of [`HandOver`]);
    /// with a fixed chunk size, starts it at once.
    fn probe_or_start(&mut self) -> Result<(), Stopped> {
        let state = std::mem::replace(&mut self.state, State::Finished);
        let (input, f, registry, chunk) = match state {
            State::New { input, f, registry } => match self.chunk {
                Some(size) => (input, f, registry, ChunkSize::Fixed(size)),
                None => {
                    self.state = State::Probing {
                        input,
                        f,
                        registry,
                        probe: CostProbe::new(),
                        hand_over: HandOver::new(),
                    };
                    return self.probe_or_start();
                }
            },
            State::Probing {
                mut input,
                f,
                registry,
                mut probe,
                mut hand_over,
            } => {
                // The consumer maps these items itself, under the iterator's watch.
                let _entered = Active::enter(self.watch.clone());
                let mut stopped = None;
                let run = watched_run(
                    self.watch.as_ref(),
                    &mut stopped,
                    extend_run(&mut input, &f, &mut self.current),
                );
                // `None`: the input ran out, and every result is in `current`; or stopped.
                let Some(per_item_ns) = probe.window(run) else {
                    return stopped.map_or(Ok(()), Err);
                };
                if !hand_over.worth(per_item_ns) {
                    self.state = State::Probing {
                        input,
                        f,
                        registry,
                        probe,
                        hand_over,
                    };
                    return Ok(());
                }
                (input, f, registry, ChunkSize::Auto { per_item_ns })
            }
            other => {
                self.state = other;
                return Ok(());
            }
        };
        let slots = self
            .window
            .unwrap_or(WINDOW_PER_THREAD * registry.num_threads().max(1));
        let watch = self.watch.clone();
        let feeder = Feeder::new(MapOp(f), slots, registry, input, chunk, false, watch);
        self.state = State::Running(feeder);
        Ok(())
    }
}

impl<I, F, R, const ORDERED: bool> Iterator for Imap<I, F, R, ORDERED>
where
    I: Iterator,
    I::Item: Send + 'static,
    F: Fn(I::Item) -> R + Send + Sync + 'static,
    R: Send + 'static,
{
    type Item = R;

    fn next(&mut self) -> Option<R> {
        match self.next_or_stop() {
            Ok(next) => next,
            Err(stopped) => stopped_outside_run(stopped),
        }
    }
}

/// A stopped `next()`: unwinds to the enclosing [`Watch::run`](crate::Watch::run), or,
/// with none on this thread, panics saying what happened and what to use instead.
fn stopped_outside_run(stopped: Stopped) -> ! {
    if Active::current().is_some() {
        watch::unwind(stopped);
    }
    panic!(
        "parpool: an imap made inside Watch::run was stopped ({stopped}) while iterated \
         outside any run; iterate it with `until_stopped()` to get the stop as an item"
    )
}

/// An [`Imap`] whose items are `Result<R, Stopped>`: every result as `Ok`, then, if the
/// map's watch stops it, the [`Stopped`] once; then the iterator ends. Made by
/// [`Imap::until_stopped`].
///
/// # Examples
///
/// ```
/// use parpool::{ThreadPool, Watch};
/// use std::time::Duration;
///
/// let pool = ThreadPool::new(2)?;
/// let mut results = Watch::new()
///     .timeout(Duration::from_millis(20))
///     .run(|| pool.imap(0..1000u32, |x| x + 1).until_stopped())
///     .unwrap();
/// // Iterated after the deadline (and outside the run): the stop once, then the end.
/// std::thread::sleep(Duration::from_millis(30));
/// assert!(results.next().unwrap().unwrap_err().is_deadline());
/// assert!(results.next().is_none());
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct UntilStopped<I: Iterator, F, R, const ORDERED: bool = true>
where
    F: Fn(I::Item) -> R + Send + Sync + 'static,
    R: Send + 'static,
    I::Item: Send + 'static,
{
    /// `None` once the stop was yielded.
    imap: Option<Imap<I, F, R, ORDERED>>,
}

impl<I, F, R, const ORDERED: bool> Iterator for UntilStopped<I, F, R, ORDERED>
where
    I: Iterator,
    I::Item: Send + 'static,
    F: Fn(I::Item) -> R + Send + Sync + 'static,
    R: Send + 'static,
{
    type Item = Result<R, Stopped>;

    fn next(&mut self) -> Option<Result<R, Stopped>> {
        match self.imap.as_mut()?.next_or_stop() {
            Ok(next) => next.map(Ok),
            Err(stopped) => {
                self.imap = None;
                Some(Err(stopped))
            }
        }
    }
}

impl<I: Iterator, F, R, const ORDERED: bool> fmt::Debug for UntilStopped<I, F, R, ORDERED>
where
    F: Fn(I::Item) -> R + Send + Sync + 'static,
    R: Send + 'static,
    I::Item: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UntilStopped")
            .field("imap", &self.imap)
            .finish()
    }
}

impl<I: Iterator, F, R, const ORDERED: bool> fmt::Debug for Imap<I, F, R, ORDERED>
where
    F: Fn(I::Item) -> R + Send + Sync + 'static,
    R: Send + 'static,
    I::Item: Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(if ORDERED { "Imap" } else { "ImapUnordered" })
            .field("ready", &self.current.len())
            .finish_non_exhaustive()
    }
}

impl crate::ThreadPool {
    /// A lazy, ordered parallel map over any iterator on this pool: Python's `Pool.imap`.
    /// See [`Imap`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let mut lines = pool.imap(["a", "bb"].into_iter(), |s: &'static str| s.repeat(2));
    /// assert_eq!(lines.next().as_deref(), Some("aa"));
    /// assert_eq!(lines.next().as_deref(), Some("bbbb"));
    /// assert_eq!(lines.next(), None);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn imap<I, R, F>(&self, items: I, f: F) -> Imap<I::IntoIter, F, R>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> R + Send + Sync + 'static,
        R: Send + 'static,
    {
        Imap::new(items.into_iter(), f, Arc::clone(self.registry()))
    }

    /// A lazy parallel map yielding results in completion order: Python's
    /// `Pool.imap_unordered`. See [`ImapUnordered`].
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let total: u64 = pool.imap_unordered(1..=100u64, |x| x * 2).sum();
    /// assert_eq!(total, 10_100);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn imap_unordered<I, R, F>(&self, items: I, f: F) -> ImapUnordered<I::IntoIter, F, R>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> R + Send + Sync + 'static,
        R: Send + 'static,
    {
        ImapUnordered::new(items.into_iter(), f, Arc::clone(self.registry()))
    }
}

/// [`ThreadPool::imap`](crate::ThreadPool::imap) on the current pool (the pool whose worker
/// calls it, else the global pool).
///
/// # Examples
///
/// ```
/// let firsts: Vec<u64> = parpool::imap(0.., |x: u64| x + 1).take(3).collect();
/// assert_eq!(firsts, [1, 2, 3]);
/// ```
pub fn imap<I, R, F>(items: I, f: F) -> Imap<I::IntoIter, F, R>
where
    I: IntoIterator,
    I::Item: Send + 'static,
    F: Fn(I::Item) -> R + Send + Sync + 'static,
    R: Send + 'static,
{
    Imap::new(items.into_iter(), f, current_registry_arc())
}

/// [`ThreadPool::imap_unordered`](crate::ThreadPool::imap_unordered) on the current pool.
///
/// # Examples
///
/// ```
/// let mut seen: Vec<u8> = parpool::imap_unordered(0..4u8, |x| x).collect();
/// seen.sort();
/// assert_eq!(seen, [0, 1, 2, 3]);
/// ```
pub fn imap_unordered<I, R, F>(items: I, f: F) -> ImapUnordered<I::IntoIter, F, R>
where
    I: IntoIterator,
    I::Item: Send + 'static,
    F: Fn(I::Item) -> R + Send + Sync + 'static,
    R: Send + 'static,
{
    ImapUnordered::new(items.into_iter(), f, current_registry_arc())
}
