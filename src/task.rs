//! Task handles for [`ThreadPool::submit`]: Python's `apply_async` / `Executor.submit`.
//!
//! A submitted closure and its [`Task`] handle share a [`Completion`] (see
//! `pool/completion.rs`, the primitive under the process pool's `ProcessTask` too): the
//! worker that runs the closure claims it with `start`, so `cancel` and running exclude each
//! other, and delivers the closure's value or panic with `complete`.
//!
//! # Running a task inline
//!
//! The closure lives in the shared state ([`TaskShared`]), not in the queued job, so that a
//! worker whose waits have reached the nesting limit (see "Waiting inside a worker" in
//! `pool/latch.rs`) can claim the very task it waits for and run it on its own stack
//! instead of waiting for it on a relay (`pool/relay.rs`): `fn rec(d) = submit(|| rec(d -
//! 1)).get()` then nests as deep as the program recurses, on one stack, as a plain
//! function call would, instead of starting a relay thread every 17 levels. The queued job still runs later and finds the task
//! claimed. Whoever moves the task out of `QUEUED` — `start` to run it, `cancel` to drop it
//! — owns the closure; the state machine lets exactly one party do that once.
//!
//! # Watches
//!
//! A task submitted inside a [`Watch::run`](crate::Watch::run) carries the watch (see
//! `watch.rs`): its closure runs under it, and is dropped unrun if the watch has stopped
//! by the time a worker starts it. Either way, and when a call in the closure is stopped
//! and unwinds, `get` reports the stop as a [`TaskError`] (`is_cancelled` or
//! `is_deadline`), never as a panic. The watch lives in the shared state beside the
//! closure, so a task run inline runs under its own watch, not its waiter's.

use std::cell::UnsafeCell;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::TaskError;
use crate::pool::{
    Completion, Outcome, Registry, RegistryId, SPIN_HINT_ROUNDS, Signal, Taken, ThreadPool, catch,
    current_registry, deadline_after, on_worker, snooze, waits_inline_on,
};
use crate::wait::Awaitable;
use crate::watch::{self, Active};

fn task_result<R>(taken: Taken<Outcome<R>>) -> Result<R, TaskError> {
    match taken {
        Taken::Outcome(Ok(value)) => Ok(value),
        Taken::Outcome(Err(payload)) => Err(match watch::stopped_by(payload.as_ref()) {
            Some(stopped) => TaskError::stopped(stopped),
            None => TaskError::panic(payload),
        }),
        Taken::Cancelled => Err(TaskError::cancelled()),
        Taken::Gone => Err(TaskError::taken()),
    }
}

/// A handle to a closure submitted to a pool with [`ThreadPool::submit`].
///
/// Dropping the handle does not cancel the task; it runs and its result is dropped.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let pool = parpool::ThreadPool::new(2)?;
/// let task = pool.submit(|| (1..=100u64).sum::<u64>());
/// task.wait();
/// assert!(task.is_ready());
/// assert_eq!(task.get_timeout(Duration::from_secs(1)).unwrap(), 5050);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
#[must_use = "a task's result is lost unless its handle is used"]
pub struct Task<R> {
    shared: Arc<TaskShared<R>>,
}

impl ThreadPool {
    /// Submits `f` to run on the pool and returns a handle to its result. The call never
    /// blocks: the closure is queued (on the current worker's deque if called from this
    /// pool, else on the pool's injector).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let tasks: Vec<_> = (0..4u64).map(|i| pool.submit(move || i * i)).collect();
    /// let squares: Vec<u64> = tasks.into_iter().map(|t| t.get().unwrap()).collect();
    /// assert_eq!(squares, [0, 1, 4, 9]);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn submit<F, R>(&self, f: F) -> Task<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        submit_to(self.registry(), f)
    }
}

/// Submits `f` to the current pool (the pool whose worker calls it, else the global pool);
/// see [`ThreadPool::submit`].
///
/// # Examples
///
/// ```
/// let task = parpool::submit(|| "hello".len());
/// assert_eq!(task.get().unwrap(), 5);
/// ```
pub fn submit<F, R>(f: F) -> Task<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    submit_to(current_registry(), f)
}

fn submit_to<F, R>(registry: &Registry, f: F) -> Task<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let for_job = Arc::new(TaskShared {
        completion: Completion::new(),
        registry: registry.id(),
        watch: Active::current(),
        closure: ClosureSlot(UnsafeCell::new(Some(f))),
    });
    let shared: Arc<TaskShared<R>> = Arc::clone(&for_job) as _;
    // A counted job: the task keeps the pool alive until it has finished.
    let job = move |registry: &Registry| {
        if registry.cancels_pending_tasks() {
            for_job.cancel();
        }
        // Nothing to do if the task was cancelled (its closure is dropped already) or a
        // waiter claimed it and ran it inline (see "Running a task inline").
        for_job.run_if_queued();
        // The last reference may be this one (the handle is gone): then the result is
        // dropped here, and its `Drop` is user code too.
        let _ = catch(move || drop(for_job));
    };
    if !registry.spawn_counted(job) {
        // Only reachable through a registry whose handle and tasks are all gone, which no
        // caller holds; the task then reports what would have happened to it.
        shared.cancel();
    }
    Task { shared }
}

impl<R> Task<R> {
    /// Whether the task has finished (with a value, a panic, or cancelled): `get` will not
    /// block.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let task = pool.submit(|| 1);
    /// task.wait();
    /// assert!(task.is_ready());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn is_ready(&self) -> bool {
        self.shared.is_finished()
    }

    /// Blocks until the task has finished.
    ///
    /// Any thread outside a pool spins briefly, then parks. A worker thread of any pool
    /// waits by running that pool's other jobs on its own stack, which costs two things:
    /// the stack grows by those jobs (and by their own waits), and this wait cannot return
    /// before the job it is running returns. Both are bounded: a worker runs jobs in at most
    /// 16 nested waits on one thread. A wait deeper than that runs no job on this stack: if
    /// the task belongs to the waiter's own pool and has not started, the waiter runs the
    /// task itself, right here (so a recursion through `submit(..).get()` nests like plain
    /// function calls); otherwise the worker goes on waiting, and running its pool's jobs,
    /// on a *relay*: a thread with a fresh stack that takes the worker's place (same index,
    /// name and handlers) while this thread parks, and hands it back once the task has
    /// finished and the job the relay runs meanwhile has returned. So a wait never holds a
    /// worker away from its pool's queue, and work that only the waiter's pool can run
    /// always finds a thread (see [`ThreadPool`] for the threads relays add).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let done = Arc::new(AtomicBool::new(false));
    /// let flag = Arc::clone(&done);
    /// let task = pool.submit(move || flag.store(true, Ordering::SeqCst));
    /// task.wait();
    /// assert!(done.load(Ordering::SeqCst));
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn wait(&self) {
        let finished = self.wait_deadline(None);
        debug_assert!(finished);
    }

    /// Blocks until the task has finished, or `timeout` has passed; true if it finished.
    ///
    /// A timed wait runs no other job meanwhile, even on a worker (a job cannot be
    /// interrupted, so one taken meanwhile could outlast the timeout): it returns within
    /// `timeout` plus a wake-up's latency.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let task = pool.submit(|| 7);
    /// assert!(task.wait_timeout(Duration::from_secs(10)));
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_deadline(Some(deadline_after(timeout)))
    }

    /// Blocks until the task has finished and returns its value. `get` consumes the handle;
    /// [`get_timeout`](Task::get_timeout) borrows it.
    ///
    /// # Errors
    ///
    /// [`TaskError::is_panic`] if the closure panicked (the payload is in the error),
    /// [`TaskError::is_cancelled`] if the task was cancelled before it started (by
    /// [`cancel`](Task::cancel), or by the [`CancelToken`](crate::CancelToken) of the
    /// [`Watch`](crate::Watch) it was submitted in: then also if a call in the closure
    /// was stopped by it), [`TaskError::is_deadline`] likewise for the watch's deadline,
    /// [`TaskError::is_taken`] if an earlier [`get_timeout`](Task::get_timeout) returned the
    /// outcome already.
    ///
    /// A task carries the [`Watch`](crate::Watch) it was submitted in. Its error reports a
    /// stop; it does not unwind.
    ///
    /// ```
    /// use parpool::prelude::*;
    /// use parpool::{CancelToken, Watch};
    ///
    /// let pool = ThreadPool::new(1)?;
    /// let token = CancelToken::new();
    /// let watched = Watch::new().cancel_token(&token);
    /// // The body's map stops: the task reports a cancellation, not a panic.
    /// let stopping = watched
    ///     .run(|| {
    ///         let token = token.clone();
    ///         pool.submit(move || {
    ///             (0..1_000_000u64)
    ///                 .par_map(|x| {
    ///                     if x == 10 {
    ///                         token.cancel();
    ///                     }
    ///                     x + 1
    ///                 })
    ///                 .len()
    ///         })
    ///     })
    ///     .unwrap();
    /// let error = stopping.get().unwrap_err();
    /// assert!(error.is_cancelled() && !error.is_panic());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(1)?;
    /// assert_eq!(pool.submit(|| "value").get().unwrap(), "value");
    /// assert!(pool.submit(|| -> u8 { panic!("no value") }).get().unwrap_err().is_panic());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn get(self) -> Result<R, TaskError> {
        self.wait();
        task_result(self.shared.take())
    }

    /// Waits at most `timeout` for the task and takes its outcome. A zero timeout polls:
    /// it neither blocks nor leaves anything behind.
    ///
    /// # Errors
    ///
    /// [`TaskError::is_timeout`] if the task has not finished in time (it keeps running and
    /// the handle stays usable); [`TaskError::is_taken`] if an earlier call returned the
    /// outcome already (the outcome is moved out once); else as [`get`](Task::get).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let (release, gate) = mpsc::channel::<()>();
    /// let task = pool.submit(move || gate.recv().map(|()| 42).unwrap());
    /// assert!(task.get_timeout(Duration::ZERO).unwrap_err().is_timeout());
    /// release.send(()).unwrap();
    /// assert_eq!(task.get_timeout(Duration::from_secs(10)).unwrap(), 42);
    /// assert!(task.get_timeout(Duration::ZERO).unwrap_err().is_taken());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, TaskError> {
        if self.wait_timeout(timeout) {
            task_result(self.shared.take())
        } else {
            Err(TaskError::timeout())
        }
    }

    /// Cancels the task if it has not started; returns true if it was cancelled. A cancelled
    /// task's closure is dropped without running, right here (a panic in its captures'
    /// `Drop` is caught), and `get` reports [`TaskError::is_cancelled`]. A task that
    /// started runs to completion.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let (release, gate) = mpsc::channel::<()>();
    /// let blocker = pool.submit(move || gate.recv().unwrap());
    /// let queued = pool.submit(|| 42);
    /// assert!(queued.cancel());
    /// release.send(()).unwrap();
    /// blocker.get().unwrap();
    /// assert!(queued.get().unwrap_err().is_cancelled());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn cancel(&self) -> bool {
        self.shared.cancel()
    }

    fn wait_deadline(&self, deadline: Option<Instant>) -> bool {
        if self.shared.is_finished() {
            return true;
        }
        self.wait_cold(deadline)
    }

    #[cold]
    fn wait_cold(&self, deadline: Option<Instant>) -> bool {
        // A worker of the task's pool that may not run other jobs while it waits (16 waits
        // deep) runs the task itself if nobody has started it; a timed wait never does.
        if deadline.is_none()
            && waits_inline_on(self.shared.registry)
            && self.shared.run_if_queued()
        {
            return true;
        }
        if !on_worker() {
            // A short spin without any allocation catches a task that is about to finish.
            for round in 0..SPIN_HINT_ROUNDS {
                snooze(round);
                if self.shared.is_finished() {
                    return true;
                }
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    return false;
                }
            }
        }
        self.shared.wait_cold(deadline)
    }
}

impl<R: Send + 'static> Task<R> {
    /// Runs `callback` with the task's outcome once it has finished (with a value, a panic,
    /// or cancelled): on the thread that finishes it, or right here if it already has. The
    /// handle is consumed: the callback owns the outcome. The callback must not block for
    /// long: it runs on a pool worker. A panic in the callback is caught and reported on
    /// stderr by the panic hook; it does not affect the task or the worker.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let (sender, outcomes) = mpsc::channel();
    /// pool.submit(|| 1 + 1).on_done(move |outcome| sender.send(outcome).unwrap());
    /// assert_eq!(outcomes.recv().unwrap().unwrap(), 2);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn on_done(self, callback: impl FnOnce(Result<R, TaskError>) + Send + 'static) {
        let shared = Arc::clone(&self.shared);
        self.shared.add_hook(Box::new(move || {
            let outcome = task_result(shared.take());
            let _ = catch(move || callback(outcome));
        }));
    }
}

impl<R> fmt::Debug for Task<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl<R: Send> crate::wait::sealed::Sealed for Task<R> {
    #[expect(private_interfaces, reason = "sealed: only this crate calls it")]
    fn signal(&self) -> &dyn Signal {
        &self.shared.completion
    }
}

impl<R: Send> Awaitable for Task<R> {}

/// What a thread task's queued job and its handle share: the completion, the pool it was
/// submitted to, the watch it was submitted in, and the closure until someone claims it
/// (see "Running a task inline").
/// The handle sees the closure type-erased (`C` unsized), the job sees it concrete; both
/// point at one allocation.
struct TaskShared<R, C: ?Sized = dyn Closure<R>> {
    completion: Completion<Outcome<R>>,
    registry: RegistryId,
    /// The watch in force where the task was submitted: checked before the closure starts,
    /// and in force while it runs, wherever it runs.
    watch: Option<Active>,
    closure: C,
}

/// The handle reads the completion (status, outcome, hooks) straight through the shared
/// state.
impl<R, C: ?Sized> Deref for TaskShared<R, C> {
    type Target = Completion<Outcome<R>>;

    fn deref(&self) -> &Self::Target {
        &self.completion
    }
}

impl<R, C: Closure<R> + ?Sized> TaskShared<R, C> {
    /// Claims the task (`QUEUED → RUNNING`) and runs it on this thread under its watch,
    /// delivering its value or panic (or the stop, dropping it unrun, if its watch has
    /// stopped); false, running nothing, if it was started or cancelled already.
    fn run_if_queued(&self) -> bool {
        if !self.completion.start() {
            return false;
        }
        let outcome = match self.watch.as_ref().map(Active::check) {
            Some(Err(stopped)) => {
                // SAFETY: `start` moved the task out of QUEUED, which happens once in a
                // thread task's life (only process tasks are ever requeued), so this thread
                // owns the closure.
                unsafe { self.closure.discard() };
                Err(watch::stop_payload(stopped))
            }
            _ => {
                let _entered = Active::enter(self.watch.clone());
                // SAFETY: as above, `start` made this thread the closure's owner.
                unsafe { self.closure.run() }
            }
        };
        self.completion.complete(outcome);
        true
    }

    /// Cancels the task if it has not started, dropping its closure unrun on this thread;
    /// true if it was cancelled.
    fn cancel(&self) -> bool {
        if !self.completion.cancel() {
            return false;
        }
        // SAFETY: `cancel` moved the task out of QUEUED (once in its life, as in
        // `run_if_queued`), so this thread owns the closure.
        unsafe { self.closure.discard() };
        true
    }
}

/// A task's closure, seen without its type; taken once, by whoever moved the task out of
/// `QUEUED`.
trait Closure<R>: Send + Sync {
    /// Takes the closure and runs it, catching a panic.
    ///
    /// # Safety
    ///
    /// The caller moved the task out of `QUEUED` (with `start`).
    unsafe fn run(&self) -> Outcome<R>;

    /// Takes the closure and drops it unrun; a panic in its captures' `Drop` (user code) is
    /// caught like the closure's own.
    ///
    /// # Safety
    ///
    /// The caller moved the task out of `QUEUED` (with `cancel`).
    unsafe fn discard(&self);
}

/// The closure's cell: `Some` until the task leaves `QUEUED`.
struct ClosureSlot<F>(UnsafeCell<Option<F>>);

// SAFETY: the cell is reached only by the one thread that moved the task out of QUEUED (the
// `Closure` methods' contract) or by `Drop` (exclusive); the closure itself is `Send`.
unsafe impl<F: Send> Sync for ClosureSlot<F> {}

impl<F: FnOnce() -> R + Send, R> Closure<R> for ClosureSlot<F> {
    unsafe fn run(&self) -> Outcome<R> {
        // SAFETY: the caller owns the cell (this method's contract).
        let f = unsafe { (*self.0.get()).take() }.expect("a task's closure taken twice");
        catch(f)
    }

    unsafe fn discard(&self) {
        // SAFETY: as in `run`.
        let f = unsafe { (*self.0.get()).take() };
        let _ = catch(move || drop(f));
    }
}
