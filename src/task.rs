//! Task handles for [`ThreadPool::submit`]: Python's `apply_async` / `Executor.submit`.
//!
//! A submitted closure and its [`Task`] handle share a [`Completion`] (see
//! `pool/completion.rs`, the primitive under the process pool's `ProcessTask` too): the
//! worker that runs the closure claims it with `start`, so `cancel` and running exclude each
//! other, and delivers the closure's value or panic with `complete`.
//!
//! A task submitted inside a [`Watch::run`](crate::Watch::run) carries the watch (see
//! `watch.rs`): its closure runs under it, and is dropped unrun if the watch has stopped
//! by the time a worker starts it. Either way, and when a call in the closure is stopped
//! and unwinds, `get` reports the stop as a [`TaskError`] (`is_cancelled` or
//! `is_deadline`), never as a panic.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::TaskError;
use crate::pool::{
    Completion, Outcome, Registry, SPIN_HINT_ROUNDS, Signal, Taken, ThreadPool, catch,
    current_registry, deadline_after, on_worker, snooze,
};
use crate::wait::Awaitable;
use crate::watch::{self, Active};

/// The completion shared by a thread task's closure and its handle.
type Shared<R> = Completion<Outcome<R>>;

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
    shared: Arc<Shared<R>>,
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
    let shared = Arc::new(Completion::new());
    let for_job = Arc::clone(&shared);
    let active = Active::current();
    // A counted job: the task keeps the pool alive until it has finished. It runs under
    // the watch captured here (every job does, see `pool/job.rs`).
    let job = move |registry: &Registry| {
        if registry.cancels_pending_tasks() {
            for_job.cancel();
        }
        if for_job.start() {
            let outcome = match active.as_ref().map(Active::check) {
                Some(Err(stopped)) => {
                    // Stopped before it started: dropped unrun, the stop as its outcome.
                    let _ = catch(move || drop(f));
                    Err(watch::stop_payload(stopped))
                }
                _ => catch(f),
            };
            for_job.complete(outcome);
        } else {
            // A cancelled task's closure is dropped unrun; its captures' `Drop` is user
            // code, caught like the closure itself.
            let _ = catch(move || drop(f));
        }
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
    /// 16 nested waits, and a wait deeper than that blocks its thread instead. (A worker
    /// that blocks holds its thread: if every worker of a pool waits, deeper than that, on
    /// work queued in the same pool, nothing runs it.)
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
    /// task's closure is dropped without running and `get` reports
    /// [`TaskError::is_cancelled`]. A task that started runs to completion.
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
        &*self.shared
    }
}

impl<R: Send> Awaitable for Task<R> {}
