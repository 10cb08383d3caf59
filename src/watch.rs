//! Watching a block of work: a cancellation token, a deadline and a progress count that apply
//! to every map, task and process job started inside [`Watch::run`].
//!
//! # Why a block, not an argument per call
//!
//! A long job is rarely one map: it is a pipeline of maps, reductions and tasks. A watch
//! applies to all of them at once, with the signatures users already know: `par_map` still
//! returns a `Vec`, `pool.map` still takes items and a function. What `run` adds is one
//! `Result`: `Err(Stopped)` when the token was cancelled or the deadline passed, saying which.
//!
//! # The protocol
//!
//! - **One active watch per thread.** `run` installs its watch in a thread-local for the
//!   duration of the block and restores the one before it on the way out (also when the block
//!   unwinds). A `run` inside a `run` is stopped by either's token or deadline, and reports
//!   progress to both.
//! - **A call captures the watch when it starts** ([`Active::current`]) and carries it to
//!   wherever its work runs: every job of a map, a submitted task and the jobs it starts run
//!   under the watch of the call that made them ([`Active::enter`]), and a worker that runs
//!   an unrelated job while it waits runs it under that job's watch, not its own.
//! - **Stopping.** Work is checked between batches, so a stop takes effect within about one
//!   batch's time; the items not yet processed are dropped, each exactly once. A call that
//!   returns a plain value (`par_map`, `map`, the kit) then unwinds the *calling* thread
//!   with a private payload that `run` turns into `Err(Stopped)`, as salsa's `Cancelled`
//!   does; no worker unwinds. A call that already returns a `Result` (a task's `get`, the
//!   process pool's maps) reports the stop through its own error instead.
//! - **Progress** is counted per batch, never per item, into the watch's [`Progress`].
//!
//! # What each call does (thread pool)
//!
//! - `par_map` and the rest of the kit, `map`, `map_chunked`, `try_map`: checked before
//!   the first item and between batches (the token every batch; the deadline where the
//!   engine reads the clock anyway, about every 16 µs of work, and after every batch of
//!   items coarse enough that those reads are over 100 µs apart); stopped, they drop their
//!   unprocessed items and partial results and unwind to `run`. The `try_` operations
//!   unwind too: their error type is the closure's.
//! - `imap` and `imap_unordered` capture the watch where the iterator is *made*, and
//!   check it each time a chunk's results arrive; stopped, `next()` unwinds to `run`.
//!   An iterator consumed outside any `run` has nowhere to unwind to: its
//!   `until_stopped()` yields the stop once as an item, then ends.
//! - `submit`: the task carries the watch. Stopped before it starts, its closure is
//!   dropped unrun; stopped while a call in it runs, that call unwinds inside the task.
//!   Either way `get` returns a `TaskError` with `is_cancelled()` or `is_deadline()`.
//! - `join`, `scope`, `install` and `spawn` are not stopped themselves but carry the
//!   watch into their jobs: a stop in a job reaches `run` through their join point
//!   (`spawn` has none: a stop just ends its closure).
//! - A map's length joins the progress total when it starts (a map nested in another
//!   map's closure joins when it starts, so the total grows as the work unfolds).
//!
//! An unwatched call pays one thread-local read when it starts, and each job one more;
//! while no watch exists in the process, one relaxed load instead. A `join` reads the
//! watch only if its `b` half is published (see `StackJob::new_frame`), and borrows
//! its owner's watch (the owner waits for it) rather than counting a reference.
//!
//! Unwinding needs `panic = "unwind"` (the default): under `panic = "abort"` a stop inside a
//! call that returns a plain value aborts the process.

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// A cloneable flag that stops the work of every [`Watch`] it is given to.
///
/// Clones share one flag: cancel any of them from any thread, and every block watched by it
/// stops within about one batch's time.
///
/// # Examples
///
/// ```
/// use parpool::CancelToken;
///
/// let token = CancelToken::new();
/// let other = token.clone();
/// assert!(!token.is_cancelled());
/// other.cancel();
/// assert!(token.is_cancelled());
/// ```
#[derive(Clone, Default)]
pub struct CancelToken {
    flag: Arc<AtomicBool>,
}

impl CancelToken {
    /// A token that is not cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!parpool::CancelToken::new().is_cancelled());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the token and every clone of it. Cancelling twice is the same as once.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::{CancelToken, Watch};
    ///
    /// let token = CancelToken::new();
    /// token.cancel();
    /// let stopped = Watch::new().cancel_token(&token).run(|| 1).unwrap_err();
    /// assert!(stopped.is_cancelled());
    /// ```
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Release);
    }

    /// Whether [`cancel`](Self::cancel) was called on this token or a clone of it.
    ///
    /// # Examples
    ///
    /// ```
    /// let token = parpool::CancelToken::new();
    /// token.cancel();
    /// assert!(token.is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// A count of items done, out of a total where the total is known, shared by every clone;
/// optionally observed through a callback, or (feature `indicatif`) drawn as a progress bar.
///
/// Give it to a [`Watch`]: every map in the watched block adds its length to the total when
/// it starts (the total becomes unknown if one map's length is unknown) and its items to the
/// count as batches finish. Read it from any thread, or observe it with
/// [`with_callback`](Self::with_callback).
///
/// # Examples
///
/// ```
/// use parpool::prelude::*;
/// use parpool::{Progress, Watch};
///
/// let progress = Progress::new();
/// let squares = Watch::new()
///     .progress(&progress)
///     .run(|| (0..1000u64).par_map(|i| i * i))
///     .unwrap();
/// assert_eq!(squares.len(), 1000);
/// assert_eq!(progress.done(), 1000);
/// assert_eq!(progress.total(), Some(1000));
/// ```
#[derive(Clone, Default)]
pub struct Progress {
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    /// The sum of the known totals.
    total: AtomicU64,
    /// Set once a map of unknown length joined: from then on the total is unknown.
    total_unknown: AtomicBool,
    /// The callback, if the progress was made with one: fixed at construction, so a count
    /// without one costs one branch.
    observer: Option<Observer>,
}

/// What a progress callback is told: the counts when it was called, and whether a watched
/// block that counts into the progress just ended (see [`Progress::with_callback`]).
///
/// # Examples
///
/// ```
/// use parpool::{Progress, Watch};
/// use std::sync::mpsc;
/// use std::time::Duration;
///
/// let (send, updates) = mpsc::channel();
/// let progress = Progress::with_callback(Duration::from_millis(100), move |update| {
///     send.send(update).unwrap();
/// });
/// Watch::new().progress(&progress).run(|| ()).unwrap();
/// let last = updates.try_iter().last().unwrap();
/// assert!(last.finished);
/// assert_eq!((last.done, last.total), (0, Some(0)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProgressUpdate {
    /// The items done so far ([`Progress::done`]).
    pub done: u64,
    /// The items expected, where known ([`Progress::total`]).
    pub total: Option<u64>,
    /// A [`Watch::run`] that counts into this progress ended (returned, was stopped, or
    /// unwound): the counts are final for that block. A progress given to several blocks
    /// gets one such call at the end of each.
    pub finished: bool,
}

/// The callback of a [`Progress`] and its rate limit.
///
/// # Protocol
///
/// A count ([`Progress::add`]) reads the clock and, once `next_due` has passed, moves
/// `next_due` one interval on with a compare-exchange: one counting thread per interval
/// wins the right to call. The winner calls only if it also gets the callback's lock with
/// `try_lock`: a count never blocks behind a slow callback, it skips the call instead. The
/// final call at the end of a `run` takes the lock (waiting for a periodic call under way),
/// so the last call a block makes always carries its final counts. A thread inside the
/// callback makes no nested call (`IN_CALLBACK`), so a callback that counts into its own
/// progress neither recurses nor deadlocks.
///
/// All atomics here are `Relaxed`: `next_due` only elects a caller, and the counts a call
/// reports are whatever the counting threads published so far; the mutex orders the calls.
struct Observer {
    /// The least time between two periodic calls, in nanoseconds.
    every: u64,
    /// The origin of `next_due`.
    epoch: Instant,
    /// Nanoseconds after `epoch` before which no periodic call starts.
    next_due: AtomicU64,
    callback: Mutex<Callback>,
}

/// A progress callback, until it panics.
enum Callback {
    Live(Box<dyn FnMut(ProgressUpdate) + Send>),
    /// It panicked once: it is not called again.
    Panicked,
}

thread_local! {
    /// Whether this thread is running a progress callback (see [`Observer`]).
    static IN_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is inside a progress callback, as a value that can move to
/// another thread: a relay that continues a worker's wait (`pool/relay.rs`) continues it
/// inside the callback the wait was made in, if any, and must make no nested call either.
/// Else a job run on the relay that ends a block of the same progress would wait for the
/// callback's lock, held by the thread parked below the relay until the relay is done.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InCallback(bool);

impl InCallback {
    /// The current thread's.
    pub(crate) fn here() -> Self {
        Self(IN_CALLBACK.with(Cell::get))
    }

    /// Runs `f` with this as the current thread's, then restores the thread's own. For a
    /// relay, whose `f` never unwinds (it runs under an abort guard).
    pub(crate) fn carry<R>(self, f: impl FnOnce() -> R) -> R {
        let own = IN_CALLBACK.with(|flag| flag.replace(self.0));
        let result = f();
        IN_CALLBACK.with(|flag| flag.set(own));
        result
    }
}

/// How often, at most, the bar of [`Progress::bar`] is redrawn through its callback:
/// indicatif redraws a bar at most 20 times a second, so 50 ms loses nothing it would show.
#[cfg(feature = "indicatif")]
const BAR_INTERVAL: Duration = Duration::from_millis(50);

impl Progress {
    /// A count at zero, of a total of zero.
    ///
    /// # Examples
    ///
    /// ```
    /// let progress = parpool::Progress::new();
    /// assert_eq!(progress.done(), 0);
    /// assert_eq!(progress.total(), Some(0));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// A count at zero that calls `callback` with its counts as work goes: at most once per
    /// `every` while items are counted, and once more, with
    /// [`finished`](ProgressUpdate::finished) set, when each watched block that counts into
    /// it ends. A zero `every` calls on every count, which is still once per batch of items,
    /// never once per item.
    ///
    /// **Where it runs.** A periodic call runs on the thread that counted the batch: a
    /// thread-pool worker for the thread-side maps, the calling thread for the process pool's
    /// maps. Keep it short (a draw, a channel send): a count whose thread finds the callback
    /// busy on another thread skips the call rather than wait. The final call runs on the
    /// thread that called [`Watch::run`], before `run` returns. Calls never overlap. The
    /// callback runs outside every watch: a map it starts is not watched, nor counted; a
    /// block it runs that counts into this same progress makes no nested call (but it must
    /// not wait for *another* thread's block that counts into it, whose final call waits
    /// for this one to return).
    ///
    /// **Lazy iterators.** An `imap` counts as it is consumed, so consume it inside the
    /// block that made it: one consumed after its block ended counts after that block's
    /// final call (a bar would show finished, then move on).
    ///
    /// **Panics.** A panic in the callback is caught (the panic hook reports it on stderr as
    /// usual) and the callback is not called again; the maps and the counts go on unharmed.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use parpool::{Progress, Watch};
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let progress = Progress::with_callback(Duration::from_millis(100), move |update| {
    ///     log.lock().unwrap().push(update);
    /// });
    /// Watch::new().progress(&progress).run(|| (0..10_000u64).par_map(|x| x + 1)).unwrap();
    /// let seen = seen.lock().unwrap();
    /// let last = seen.last().unwrap();
    /// assert!(last.finished);
    /// assert_eq!((last.done, last.total), (10_000, Some(10_000)));
    /// ```
    pub fn with_callback(
        every: Duration,
        callback: impl FnMut(ProgressUpdate) + Send + 'static,
    ) -> Self {
        Self {
            counts: Arc::new(Counts {
                observer: Some(Observer {
                    every: u64::try_from(every.as_nanos()).unwrap_or(u64::MAX),
                    epoch: Instant::now(),
                    next_due: AtomicU64::new(0),
                    callback: Mutex::new(Callback::Live(Box::new(callback))),
                }),
                ..Counts::default()
            }),
        }
    }

    /// A count drawn as a progress bar on standard error: the number done, the total where
    /// known, the elapsed time and an estimate of the time left, redrawn at most 20 times a
    /// second and finished when the watched block ends. Like every indicatif bar it draws
    /// nothing when standard error is not a terminal, so logs and CI output stay clean.
    /// [`with_bar`](Self::with_bar) takes a bar you styled.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use parpool::{Progress, Watch};
    ///
    /// let progress = Progress::bar();
    /// let v = Watch::new().progress(&progress).run(|| (0..1000u32).par_map(|x| x * 2)).unwrap();
    /// assert_eq!(v[999], 1998);
    /// assert_eq!(progress.done(), 1000);
    /// ```
    #[cfg(feature = "indicatif")]
    pub fn bar() -> Self {
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} ({eta} left)",
        )
        .expect("the template parses");
        Self::with_bar(indicatif::ProgressBar::new(0).with_style(style))
    }

    /// A count drawn on `bar`, an indicatif progress bar styled as you like: its length
    /// follows [`total`](Self::total) (none while the total is unknown), its position
    /// [`done`](Self::done), and it is finished when a watched block that counts into it
    /// ends.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use parpool::{Progress, Watch};
    /// use indicatif::ProgressBar;
    ///
    /// let bar = ProgressBar::hidden();
    /// let progress = Progress::with_bar(bar.clone());
    /// Watch::new().progress(&progress).run(|| (0..500u32).par_map(|x| x)).unwrap();
    /// assert_eq!((bar.position(), bar.length()), (500, Some(500)));
    /// assert!(bar.is_finished());
    /// ```
    #[cfg(feature = "indicatif")]
    pub fn with_bar(bar: indicatif::ProgressBar) -> Self {
        Self::with_callback(BAR_INTERVAL, move |update| {
            match update.total {
                Some(total) => bar.set_length(total),
                None => bar.unset_length(),
            }
            bar.set_position(update.done);
            if update.finished {
                bar.finish();
            }
        })
    }

    /// The items done so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::{Progress, ThreadPool, Watch};
    ///
    /// let pool = ThreadPool::new(2)?;
    /// let progress = Progress::new();
    /// Watch::new().progress(&progress).run(|| pool.map(0..50u32, |x| x + 1)).unwrap();
    /// assert_eq!(progress.done(), 50);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn done(&self) -> u64 {
        self.counts.done.load(Ordering::Relaxed)
    }

    /// The items expected, or `None` when a map of unknown length joined.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use parpool::{Progress, Watch};
    ///
    /// let progress = Progress::new();
    /// Watch::new().progress(&progress).run(|| [1, 2, 3].par_map(|x| x * 2)).unwrap();
    /// assert_eq!(progress.total(), Some(3));
    /// ```
    pub fn total(&self) -> Option<u64> {
        if self.counts.total_unknown.load(Ordering::Relaxed) {
            None
        } else {
            Some(self.counts.total.load(Ordering::Relaxed))
        }
    }

    /// Adds a map's length to the total (`None`: the length is unknown).
    fn expect(&self, items: Option<u64>) {
        match items {
            Some(items) => {
                self.counts.total.fetch_add(items, Ordering::Relaxed);
            }
            None => self.counts.total_unknown.store(true, Ordering::Relaxed),
        }
    }

    /// Counts `items` more done: called once per batch, never per item. Calls the callback
    /// when one is due (see [`Observer`]).
    fn add(&self, items: u64) {
        self.counts.done.fetch_add(items, Ordering::Relaxed);
        if let Some(observer) = &self.counts.observer {
            if observer.due() {
                self.call(observer, false);
            }
        }
    }

    /// The final call of a block that counted into this progress.
    fn finish(&self) {
        if let Some(observer) = &self.counts.observer {
            self.call(observer, true);
        }
    }

    /// Calls the callback with the current counts; a periodic call (`!finished`) skips it
    /// when another thread is in it.
    fn call(&self, observer: &Observer, finished: bool) {
        if IN_CALLBACK.with(Cell::get) {
            return;
        }
        let mut callback = if finished {
            observer
                .callback
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        } else {
            match observer.callback.try_lock() {
                Ok(callback) => callback,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            }
        };
        let Callback::Live(f) = &mut *callback else {
            return;
        };
        let update = ProgressUpdate {
            done: self.done(),
            total: self.total(),
            finished,
        };
        IN_CALLBACK.with(|flag| flag.set(true));
        let unwatched = Active::enter(None);
        let result = panic::catch_unwind(AssertUnwindSafe(|| f(update)));
        drop(unwatched);
        IN_CALLBACK.with(|flag| flag.set(false));
        if result.is_err() {
            *callback = Callback::Panicked;
        }
    }
}

impl Observer {
    /// Whether this thread may make the periodic call now: the interval since the last one
    /// passed, and this thread won the compare-exchange that starts the next interval.
    fn due(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let due = self.next_due.load(Ordering::Relaxed);
        now >= due
            && self
                .next_due
                .compare_exchange(
                    due,
                    now.saturating_add(self.every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("done", &self.done())
            .field("total", &self.total())
            .field("callback", &self.counts.observer.is_some())
            .finish()
    }
}

/// What stops the work of a block, and where its progress goes: a [`CancelToken`], a
/// deadline and a [`Progress`], each optional. [`run`](Self::run) applies them to every map,
/// task and process job started in the block (see "What is watched").
///
/// # What is watched (thread pool)
///
/// Every call started inside `run`, on whatever thread its work runs: maps nested in a
/// map's closure, tasks and the jobs of `join` and `scope` are watched too.
///
/// - `par_map` and the rest of the [`ParMap`](crate::ParMap) kit, [`map`](crate::map),
///   [`map_chunked`](crate::map_chunked), [`try_map`](crate::try_map) (and the
///   [`ThreadPool`](crate::ThreadPool) methods): checked between batches, so a stop takes
///   effect within about one batch's time; the items not yet processed are dropped, each
///   exactly once, never processed, and so are the results so far; the call then unwinds
///   to `run`, which returns [`Stopped`]. The `try_` operations stop the same way.
/// - [`imap`](crate::imap) and [`imap_unordered`](crate::imap_unordered): watched by the
///   watch in force where the iterator is *made*; see [`Imap`](crate::Imap) and
///   [`Imap::until_stopped`](crate::Imap::until_stopped).
/// - [`submit`](crate::ThreadPool::submit): the task carries the watch; a stop is reported
///   by [`Task::get`](crate::Task::get) as a [`TaskError`](crate::TaskError) with
///   `is_cancelled()` or `is_deadline()`.
/// - Progress: each map adds its length to the total when it starts (none if unknown) and
///   its items to the count as batches finish.
///
/// Stopping unwinds the calling thread with a private payload, so it needs
/// `panic = "unwind"` (the default). The pool stays usable after a stop.
///
/// # Examples
///
/// ```
/// use parpool::prelude::*;
/// use parpool::{CancelToken, Watch};
/// use std::time::Duration;
///
/// let token = CancelToken::new();
/// let watch = Watch::new().cancel_token(&token).timeout(Duration::from_secs(60));
///
/// // Nothing stops it: the block's value comes back.
/// let v = watch.run(|| (0..100u32).par_map(|x| x + 1)).unwrap();
/// assert_eq!(v[99], 100);
///
/// // Cancelled from inside (any thread may cancel): the map stops and `run` says why.
/// let stopped = watch
///     .run(|| {
///         (0..1_000_000u32).par_map(|x| {
///             if x == 10 {
///                 token.cancel();
///             }
///             x
///         })
///     })
///     .unwrap_err();
/// assert!(stopped.is_cancelled());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Watch {
    cancel: Option<CancelToken>,
    deadline: Option<Instant>,
    progress: Option<Progress>,
}

impl Watch {
    /// A watch that stops nothing and counts nothing, until told to.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(parpool::Watch::new().run(|| 7).unwrap(), 7);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops the block when `token` (or a clone of it) is cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::{CancelToken, Watch};
    ///
    /// let token = CancelToken::new();
    /// let watch = Watch::new().cancel_token(&token);
    /// assert!(watch.run(|| ()).is_ok());
    /// token.cancel();
    /// assert!(watch.run(|| ()).unwrap_err().is_cancelled());
    /// ```
    pub fn cancel_token(mut self, token: &CancelToken) -> Self {
        self.cancel = Some(token.clone());
        self
    }

    /// Stops the block once `at` has passed.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::Watch;
    /// use std::time::Instant;
    ///
    /// let past = Watch::new().deadline(Instant::now());
    /// assert!(past.run(|| ()).unwrap_err().is_deadline());
    /// ```
    pub fn deadline(mut self, at: Instant) -> Self {
        self.deadline = Some(at);
        self
    }

    /// Stops the block once `after` has passed from now (this call, not the start of `run`).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::Watch;
    /// use std::time::Duration;
    ///
    /// let watch = Watch::new().timeout(Duration::from_secs(3600));
    /// assert_eq!(watch.run(|| 1 + 1).unwrap(), 2);
    /// ```
    pub fn timeout(self, after: Duration) -> Self {
        self.deadline(Instant::now() + after)
    }

    /// Counts the items of every map in the block into `progress`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use parpool::{Progress, Watch};
    ///
    /// let progress = Progress::new();
    /// let watch = Watch::new().progress(&progress);
    /// watch.run(|| (0..10u8).par_map(|x| x)).unwrap();
    /// watch.run(|| (0..5u8).par_map(|x| x)).unwrap();
    /// assert_eq!((progress.done(), progress.total()), (15, Some(15)));
    /// ```
    pub fn progress(mut self, progress: &Progress) -> Self {
        self.progress = Some(progress.clone());
        self
    }

    /// Runs `block` under this watch, and returns its value, or why it was stopped.
    ///
    /// A block that was stopped may have left what it mutated part-way, as after an early
    /// return; what the stopped calls had not yet processed was dropped, never processed.
    /// Panics in the block are not caught: they continue to unwind past `run`.
    ///
    /// # Errors
    ///
    /// [`Stopped`] when the token was cancelled or the deadline passed, checked before the
    /// block starts and by every call in it.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::{CancelToken, Watch};
    ///
    /// let token = CancelToken::new();
    /// assert_eq!(Watch::new().cancel_token(&token).run(|| "done").unwrap(), "done");
    /// ```
    pub fn run<T>(&self, block: impl FnOnce() -> T) -> Result<T, Stopped> {
        // Dropped last, however `run` ends: the progress callback's final call.
        let _finish = Finish(self.progress.as_ref());
        let active = Active::nested_in(Active::current(), self);
        active.check()?;
        let _entered = Active::enter(Some(active));
        match panic::catch_unwind(AssertUnwindSafe(block)) {
            Ok(value) => Ok(value),
            Err(payload) => match payload.downcast::<StopSignal>() {
                Ok(signal) => Err(signal.0),
                Err(payload) => panic::resume_unwind(payload),
            },
        }
    }
}

/// Makes a progress's final call when a [`Watch::run`] ends, however it ends.
struct Finish<'a>(Option<&'a Progress>);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if let Some(progress) = self.0 {
            progress.finish();
        }
    }
}

/// Why a watched block stopped: its [`CancelToken`] was cancelled or its deadline passed.
///
/// # Examples
///
/// ```
/// use parpool::Watch;
/// use std::time::Instant;
///
/// let stopped = Watch::new().deadline(Instant::now()).run(|| ()).unwrap_err();
/// assert!(stopped.is_deadline() && !stopped.is_cancelled());
/// assert_eq!(stopped.to_string(), "the watch's deadline passed");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    reason: Reason,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reason {
    Cancelled,
    Deadline,
}

impl Stopped {
    /// The watch's [`CancelToken`] was cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::{CancelToken, Watch};
    ///
    /// let token = CancelToken::new();
    /// token.cancel();
    /// assert!(Watch::new().cancel_token(&token).run(|| ()).unwrap_err().is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.reason == Reason::Cancelled
    }

    /// The watch's deadline passed.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::Watch;
    /// use std::time::Instant;
    ///
    /// assert!(Watch::new().deadline(Instant::now()).run(|| ()).unwrap_err().is_deadline());
    /// ```
    pub fn is_deadline(&self) -> bool {
        self.reason == Reason::Deadline
    }
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.reason {
            Reason::Cancelled => "the watch's cancel token was cancelled",
            Reason::Deadline => "the watch's deadline passed",
        })
    }
}

impl fmt::Debug for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stopped")
            .field("reason", &self.reason)
            .finish()
    }
}

impl std::error::Error for Stopped {}

/// The payload a stopped call unwinds the calling thread with, up to its [`Watch::run`].
struct StopSignal(Stopped);

/// The watch in force: the conditions of every `run` enclosing a call, merged when the
/// innermost began, shared by the call's jobs wherever they run.
#[derive(Clone)]
pub(crate) struct Active {
    inner: Arc<Merged>,
}

struct Merged {
    /// The tokens of every enclosing `run` (usually one).
    tokens: Vec<CancelToken>,
    /// The earliest of their deadlines.
    deadline: Option<Instant>,
    /// The progress counts of every enclosing `run` (usually one, often none).
    progress: Vec<Progress>,
}

/// How many [`Merged`] exist in the process. While none does, no thread has a watch (a
/// watch in force holds one), so [`Active::current`] and [`Active::enter`] with none skip
/// the thread-local: a program that never watches pays one relaxed load per call and per
/// heap job (a `join` reads the thread-local directly, see [`Active::borrow_current`]).
///
/// Relaxed is enough: a thread that has a watch made it (program order) or got it with a
/// job, whose hand-over orders the increment before; and the count cannot fall to 0 while
/// that watch lives.
static LIVE: AtomicUsize = AtomicUsize::new(0);

impl Drop for Merged {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

thread_local! {
    /// The watch in force on this thread: set by `run` and by jobs that carry one. Not
    /// counted: whoever installs a watch keeps it alive for as long as it is installed (an
    /// [`Entered`] that owns it, or the frame of a `join` job's owner, see [`Borrowed`]).
    static CURRENT: Cell<Option<NonNull<Merged>>> = const { Cell::new(None) };
}

/// The watch in force where a `join` job was made, carried without touching its reference
/// count: a `join` happens at every level of a recursion, and an `Arc` clone and drop per
/// `join` on a count every worker shares made `fib(30)` with a `join` at every level 4×
/// slower inside a `run` (12 ms against 50 ms). Valid while the job's owner waits for it
/// (see [`Active::enter_borrowed`]).
#[derive(Clone, Copy)]
pub(crate) struct Borrowed(NonNull<Merged>);

// SAFETY: a `Borrowed` is a pointer to a `Merged`, which is `Send` and `Sync` (tokens, a
// deadline, progress counts); it is dereferenced only while the watch is alive.
unsafe impl Send for Borrowed {}
// SAFETY: as above; sharing it only shares the pointer value.
unsafe impl Sync for Borrowed {}

impl Active {
    /// The watch in force on this thread, if any: a call captures it when it starts.
    #[inline]
    pub(crate) fn current() -> Option<Active> {
        if LIVE.load(Ordering::Relaxed) == 0 {
            return None;
        }
        Self::current_cold()
    }

    /// [`Active::current`] once some watch exists: out of line, so that the hot paths it
    /// is inlined into stay small.
    #[cold]
    #[inline(never)]
    fn current_cold() -> Option<Active> {
        let pointer = CURRENT.with(Cell::get)?;
        // SAFETY: the watch `CURRENT` points at is alive while installed (see `CURRENT`),
        // and it is owned by an `Arc`: one more reference to it is a new `Arc`.
        let inner = unsafe {
            Arc::increment_strong_count(pointer.as_ptr());
            Arc::from_raw(pointer.as_ptr())
        };
        Some(Active { inner })
    }

    /// The watch in force on this thread, borrowed, for a `join` job (see [`Borrowed`]).
    ///
    /// Reads the thread-local without checking [`LIVE`] first: while no watch exists the
    /// thread-local is `None` anyway, and the read is cheaper than the check (fib(25) with
    /// a `join` at every level on one thread: 8.53 M instructions with the check, 8.28 M
    /// without, against 7.68 M before watches existed; callgrind).
    #[inline]
    pub(crate) fn borrow_current() -> Option<Borrowed> {
        CURRENT.with(Cell::get).map(Borrowed)
    }

    /// Installs `active` (or none) as this thread's watch until the guard drops, which
    /// restores the one before: how a job runs under the watch of the call that made it.
    #[inline]
    pub(crate) fn enter(active: Option<Active>) -> Entered {
        if active.is_none() && LIVE.load(Ordering::Relaxed) == 0 {
            // No watch exists: this thread has none to replace.
            return Entered {
                previous: None,
                _owned: None,
            };
        }
        Self::enter_cold(active)
    }

    /// [`Active::enter`] once some watch exists (out of line, as `current_cold`).
    #[cold]
    #[inline(never)]
    fn enter_cold(active: Option<Active>) -> Entered {
        let pointer = active.as_ref().map(|active| NonNull::from(&*active.inner));
        crate::pool::WorkerThread::before_watch_change();
        Entered {
            previous: Some(CURRENT.with(|current| current.replace(pointer))),
            _owned: active,
        }
    }

    /// Installs a borrowed watch (or none) until the guard drops, as [`Active::enter`].
    ///
    /// # Safety
    ///
    /// The watch must stay alive until the guard drops. It does for a `join` job's
    /// [`Borrowed`] while the job runs: its owner installed the watch in a frame that does
    /// not return before the job has finished (the owner waits for it), and the owner's
    /// installation keeps the watch alive (owned by an [`Entered`], or itself borrowed by
    /// the same rule from a frame further out).
    #[inline]
    pub(crate) unsafe fn enter_borrowed(borrowed: Option<Borrowed>) -> Entered {
        if borrowed.is_none() && LIVE.load(Ordering::Relaxed) == 0 {
            return Entered {
                previous: None,
                _owned: None,
            };
        }
        let pointer = borrowed.map(|borrowed| borrowed.0);
        crate::pool::WorkerThread::before_watch_change();
        Entered {
            previous: Some(CURRENT.with(|current| current.replace(pointer))),
            _owned: None,
        }
    }

    /// `watch`'s conditions added to those of `outer`.
    fn nested_in(outer: Option<Active>, watch: &Watch) -> Active {
        let (mut tokens, outer_deadline, mut progress) = match outer {
            Some(outer) => (
                outer.inner.tokens.clone(),
                outer.inner.deadline,
                outer.inner.progress.clone(),
            ),
            None => (Vec::new(), None, Vec::new()),
        };
        tokens.extend(watch.cancel.iter().cloned());
        progress.extend(watch.progress.iter().cloned());
        let deadline = match (outer_deadline, watch.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        LIVE.fetch_add(1, Ordering::Relaxed);
        Active {
            inner: Arc::new(Merged {
                tokens,
                deadline,
                progress,
            }),
        }
    }

    /// Whether the work must stop: a token cancelled (checked first, it costs a load) or the
    /// deadline passed (this reads the clock).
    pub(crate) fn check(&self) -> Result<(), Stopped> {
        self.check_with(Instant::now)
    }

    /// [`check`](Self::check), reading the clock through `now` (only when there is a
    /// deadline).
    fn check_with(&self, now: impl FnOnce() -> Instant) -> Result<(), Stopped> {
        self.check_token()?;
        match self.inner.deadline {
            Some(deadline) if now() >= deadline => Err(Stopped {
                reason: Reason::Deadline,
            }),
            _ => Ok(()),
        }
    }

    /// Whether a token was cancelled: a load per token and no clock read, cheap enough for
    /// every batch (the deadline is checked where the engine reads the clock anyway).
    #[inline]
    pub(crate) fn check_token(&self) -> Result<(), Stopped> {
        if self.inner.tokens.iter().any(CancelToken::is_cancelled) {
            return Err(Stopped {
                reason: Reason::Cancelled,
            });
        }
        Ok(())
    }

    /// The earliest deadline of the enclosing `run`s, if any: the engine counts down to it
    /// with its own clock reads, a thread that waits on process jobs wakes by then, and the
    /// supervisor by then when it must kill the jobs of a stopped call.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// A call of `items` items (`None`: unknown) starts: add them to every progress total.
    pub(crate) fn expect(&self, items: Option<u64>) {
        for progress in &self.inner.progress {
            progress.expect(items);
        }
    }

    /// `items` more items are done: called once per batch.
    pub(crate) fn add(&self, items: u64) {
        for progress in &self.inner.progress {
            progress.add(items);
        }
    }
}

/// Restores the thread's previous watch when dropped (see [`Active::enter`]), then drops
/// the watch it installed, if it owns it: the thread-local never points at a freed watch.
pub(crate) struct Entered {
    /// The watch to restore; `None` when `enter` left the thread-local alone.
    previous: Option<Option<NonNull<Merged>>>,
    /// The installed watch, kept alive while installed (none when borrowed).
    _owned: Option<Active>,
}

impl Drop for Entered {
    #[inline]
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            CURRENT.with(|current| current.set(previous));
        }
    }
}

/// Ends a call that returns a plain value and was stopped: unwinds the calling thread to
/// its [`Watch::run`], which returns `Err(stopped)`.
pub(crate) fn unwind(stopped: Stopped) -> ! {
    panic::resume_unwind(stop_payload(stopped))
}

/// [`unwind`], after dropping `held` (the input and results a stopped call still holds):
/// dropped here, not by the unwind, so that a `Drop` that panics raises a plain panic
/// (which wins over the stop) instead of aborting the process as a panic during an
/// unwind does.
pub(crate) fn unwind_after_dropping<T>(stopped: Stopped, held: T) -> ! {
    drop(held);
    unwind(stopped)
}

/// The payload [`unwind`] raises, for a caller that reports a stop through a caught
/// outcome instead of unwinding (a task stopped before it started).
pub(crate) fn stop_payload(stopped: Stopped) -> Box<dyn Any + Send> {
    Box::new(StopSignal(stopped))
}

/// The stop a caught payload carries, if it is [`unwind`]'s and not a user panic: how a
/// task's `get` tells a stopped body from a panicking one.
pub(crate) fn stopped_by(payload: &(dyn Any + Send)) -> Option<Stopped> {
    payload.downcast_ref::<StopSignal>().map(|signal| signal.0)
}

/// Where the pieces of one call record that its watch stopped it: the first reason seen,
/// read by the calling thread once the pieces are done. One byte, written at most a few
/// times per call (by each piece that sees the stop), so Relaxed: the pieces' hand-back
/// (`join`, the window's rings) orders it before the caller reads it.
#[derive(Debug, Default)]
pub(crate) struct StopCell(AtomicU8);

/// [`StopCell`] values: nothing stopped the call yet, or why it stopped.
const NOT_STOPPED: u8 = 0;
const STOPPED_CANCELLED: u8 = 1;
const STOPPED_DEADLINE: u8 = 2;

impl StopCell {
    /// Records `stopped` unless a reason was recorded first.
    pub(crate) fn record(&self, stopped: Stopped) {
        let value = match stopped.reason {
            Reason::Cancelled => STOPPED_CANCELLED,
            Reason::Deadline => STOPPED_DEADLINE,
        };
        let _ = self
            .0
            .compare_exchange(NOT_STOPPED, value, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The first recorded reason, if the call was stopped.
    pub(crate) fn get(&self) -> Option<Stopped> {
        let reason = match self.0.load(Ordering::Relaxed) {
            STOPPED_CANCELLED => Reason::Cancelled,
            STOPPED_DEADLINE => Reason::Deadline,
            _ => return None,
        };
        Some(Stopped { reason })
    }
}

impl fmt::Debug for Active {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Active")
            .field("tokens", &self.inner.tokens)
            .field("deadline", &self.inner.deadline)
            .field("progress", &self.inner.progress)
            .finish()
    }
}

/// What the process pool needs beyond the calls every map makes.
#[cfg(all(feature = "process", target_os = "linux"))]
impl Active {
    /// [`check`](Self::check) against a clock reading the caller made already: the
    /// supervisor reads the clock once per pass, then checks every job it moves.
    pub(crate) fn check_at(&self, now: Instant) -> Result<(), Stopped> {
        self.check_with(|| now)
    }

    /// Whether a token may stop this watch: a token wakes nobody, so the supervisor of a
    /// pool that kills on stop looks at it every `STOP_POLL` while such a job runs.
    pub(crate) fn has_token(&self) -> bool {
        !self.inner.tokens.is_empty()
    }
}

#[cfg(test)]
mod test;
