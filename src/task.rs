//! Task handles for [`ThreadPool::submit`]: Python's `apply_async` / `Executor.submit`.
//!
//! # The task slot
//!
//! A submitted closure and its [`Task`] handle share a [`TaskShared`]: a state byte, the
//! result, and a list of *hooks* run once when the task finishes (a waiting thread's latch,
//! `on_done` callbacks, `as_completed`'s queue).
//!
//! The state's low two bits are the status, `QUEUED → RUNNING → DONE` or
//! `QUEUED → CANCELLED`; bit 2 (`HOOKED`) says that hooks were registered. The worker that
//! runs the task claims it with a compare-exchange `QUEUED → RUNNING` (losing that race to
//! `cancel` means it only drops the closure), writes the result, then moves the status to
//! `DONE` with one read-modify-write that keeps `HOOKED`.
//!
//! Hooks and completion race without a lost hook: a registrar pushes its hook under the
//! hooks mutex, then sets `HOOKED` with `fetch_or`. If the value it replaced already said
//! finished, the finisher did not see `HOOKED` (or took the list before the push), so the
//! registrar drains the list itself; otherwise the finisher's read-modify-write, which
//! comes later in the state's modification order, sees `HOOKED` and drains the list. The
//! list is drained under the mutex, so each hook runs exactly once.
//!
//! A hook can be removed again by the [`HookId`] its registration returned (a timed wait
//! that timed out removes its latch's hook), so that polling an unfinished task leaves
//! nothing behind. Removal also happens under the mutex: a hook is either removed or run,
//! never both.
//!
//! # Memory ordering
//!
//! The `DONE` transition is `AcqRel`: its release half publishes the result to readers that
//! load the state with `Acquire`; its acquire half pairs with the registrars' `fetch_or`.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::TaskError;
use crate::pool::{
    Outcome, Registry, SPIN_HINT_ROUNDS, ThreadPool, Wait, WaitLatch, catch, current_registry,
    on_worker, snooze,
};
use crate::sync::{AtomicU8, Mutex, Ordering, lock};

/// Not started yet; can be cancelled.
const QUEUED: u8 = 0;
/// A worker is running the closure.
const RUNNING: u8 = 1;
/// The result is written.
const DONE: u8 = 2;
/// Cancelled before it started; the closure is dropped unrun.
const CANCELLED: u8 = 3;
const STATUS: u8 = 0b011;
/// Hooks were registered and must be run when the task finishes.
const HOOKED: u8 = 0b100;

fn is_finished(state: u8) -> bool {
    matches!(state & STATUS, DONE | CANCELLED)
}

/// A callback run once when a task finishes.
type Hook = Box<dyn FnOnce() + Send>;

/// Names a registered hook, for [`TaskShared::remove_hook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HookId(u64);

/// The registered hooks, each with its id, and the id the next one gets.
#[derive(Default)]
struct Hooks {
    list: Vec<(HookId, Hook)>,
    next_id: u64,
}

/// The state shared by a task's closure and its handle.
pub(crate) struct TaskShared<R> {
    state: AtomicU8,
    /// Written once by the running worker before `DONE`; read once by the handle after.
    result: UnsafeCell<Option<Outcome<R>>>,
    hooks: Mutex<Hooks>,
}

// SAFETY: `result` is written by one thread before the `DONE` release and read by the
// unique handle after an acquire of `DONE` (see the module docs); `R: Send` lets the value
// move between those threads. Everything else is atomics and a mutex.
unsafe impl<R: Send> Sync for TaskShared<R> {}

impl<R> TaskShared<R> {
    pub(crate) fn new() -> Self {
        TaskShared {
            state: AtomicU8::new(QUEUED),
            result: UnsafeCell::new(None),
            hooks: Mutex::new(Hooks::default()),
        }
    }

    /// Moves the status from `from` to `to`, keeping the `HOOKED` bit. Returns the previous
    /// state on success.
    fn transition(&self, from: u8, to: u8) -> Option<u8> {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            if current & STATUS != from {
                return None;
            }
            // AcqRel: see the module docs (the CANCELLED transition finishes the task).
            match self.state.compare_exchange_weak(
                current,
                (current & !STATUS) | to,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(previous) => return Some(previous),
                Err(actual) => current = actual,
            }
        }
    }

    /// The running worker claims the task; false if it was cancelled.
    pub(crate) fn start(&self) -> bool {
        self.transition(QUEUED, RUNNING).is_some()
    }

    /// Cancels a task that has not started; true on success.
    pub(crate) fn cancel(&self) -> bool {
        match self.transition(QUEUED, CANCELLED) {
            Some(previous) => {
                if previous & HOOKED != 0 {
                    self.run_hooks();
                }
                true
            }
            None => false,
        }
    }

    /// Stores the result of a started task and wakes whoever waits.
    pub(crate) fn complete(&self, outcome: Outcome<R>) {
        // SAFETY: only the worker that won `start` writes, once, before publishing `DONE`;
        // the handle reads only after observing `DONE`.
        unsafe { *self.result.get() = Some(outcome) };
        // RUNNING → DONE is +1 on the status bits; the RMW keeps `HOOKED`.
        let previous = self.state.fetch_add(DONE - RUNNING, Ordering::AcqRel);
        debug_assert_eq!(previous & STATUS, RUNNING);
        if previous & HOOKED != 0 {
            self.run_hooks();
        }
    }

    /// Whether the task finished (done or cancelled). `Acquire`: pairs with the finishing
    /// transition, so the result is visible after a true answer.
    pub(crate) fn is_finished(&self) -> bool {
        is_finished(self.state.load(Ordering::Acquire))
    }

    /// Registers `hook` to run once the task finishes, or runs it now if it has.
    pub(crate) fn add_hook(&self, hook: Hook) -> HookId {
        let (id, previous) = {
            let mut hooks = lock(&self.hooks);
            let id = HookId(hooks.next_id);
            hooks.next_id += 1;
            hooks.list.push((id, hook));
            (id, self.state.fetch_or(HOOKED, Ordering::AcqRel))
        };
        if is_finished(previous) {
            self.run_hooks();
        }
        id
    }

    /// Unregisters hook `id` unless it has run (or is running) already.
    pub(crate) fn remove_hook(&self, id: HookId) {
        let removed = {
            let mut hooks = lock(&self.hooks);
            let position = hooks.list.iter().rposition(|(hook_id, _)| *hook_id == id);
            position.map(|position| hooks.list.remove(position))
        };
        // Dropped outside the lock: a hook's captures may be anything.
        drop(removed);
    }

    fn run_hooks(&self) {
        let hooks = std::mem::take(&mut lock(&self.hooks).list);
        for (_, hook) in hooks {
            hook();
        }
    }

    /// Takes the outcome of a finished task: its value, its panic, or the cancellation.
    ///
    /// # Safety
    ///
    /// Only the unique handle calls this, after `is_finished` returned true.
    pub(crate) unsafe fn take(&self) -> Result<R, TaskError> {
        // SAFETY: the caller observed the finishing transition (acquire), after which no
        // other thread touches `result`.
        match unsafe { (*self.result.get()).take() } {
            Some(Ok(value)) => Ok(value),
            Some(Err(payload)) => Err(TaskError::panic(payload)),
            None => Err(TaskError::cancelled()),
        }
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
/// let mut task = pool.submit(|| (1..=100u64).sum::<u64>());
/// task.wait();
/// assert!(task.is_ready());
/// assert_eq!(task.get_timeout(Duration::from_secs(1)).unwrap(), 5050);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
#[must_use = "a task's result is lost unless its handle is used"]
pub struct Task<R> {
    shared: Arc<TaskShared<R>>,
    /// The result was already taken by `get_timeout`.
    taken: bool,
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
    let shared = Arc::new(TaskShared::new());
    let for_job = Arc::clone(&shared);
    // A counted job: the task keeps the pool alive until it has finished.
    let job = move |registry: &Registry| {
        if registry.cancels_pending_tasks() {
            for_job.cancel();
        }
        if for_job.start() {
            for_job.complete(catch(f));
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
    Task {
        shared,
        taken: false,
    }
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

    /// Blocks until the task has finished and returns its value.
    ///
    /// # Errors
    ///
    /// [`TaskError::is_panic`] if the closure panicked (the payload is in the error),
    /// [`TaskError::is_cancelled`] if the task was cancelled before it started.
    ///
    /// # Panics
    ///
    /// If the value was already taken by a successful [`get_timeout`](Task::get_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(1)?;
    /// assert_eq!(pool.submit(|| "value").get().unwrap(), "value");
    /// assert!(pool.submit(|| -> u8 { panic!("no value") }).get().unwrap_err().is_panic());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn get(mut self) -> Result<R, TaskError> {
        self.wait();
        self.take()
    }

    /// Waits at most `timeout` for the task and takes its value.
    ///
    /// # Errors
    ///
    /// [`TaskError::is_timeout`] if the task has not finished in time (it keeps running and
    /// the handle stays usable), else as [`get`](Task::get).
    ///
    /// # Panics
    ///
    /// If the outcome was already taken by an earlier call that did not time out.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let (release, gate) = mpsc::channel::<()>();
    /// let mut task = pool.submit(move || gate.recv().map(|()| 42).unwrap());
    /// assert!(task.get_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// release.send(()).unwrap();
    /// assert_eq!(task.get_timeout(Duration::from_secs(10)).unwrap(), 42);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R, TaskError> {
        if self.wait_timeout(timeout) {
            self.take()
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

    /// Runs `callback` once the task has finished (with a value, a panic, or cancelled): on
    /// the thread that finishes it, or right here if it already has. The callback must not
    /// block for long: it runs on a pool worker. A panic in the callback is caught and
    /// reported on stderr by the panic hook; it does not affect the task or the worker.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let task = pool.submit(|| 1 + 1);
    /// let (done, finished) = mpsc::channel();
    /// task.on_done(move || done.send("finished").unwrap());
    /// assert_eq!(finished.recv().unwrap(), "finished");
    /// assert_eq!(task.get().unwrap(), 2);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn on_done(&self, callback: impl FnOnce() + Send + 'static) {
        self.shared.add_hook(Box::new(move || {
            let _ = catch(callback);
        }));
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
            }
        }
        // A timed wait runs no other job meanwhile (see "Waiting inside a worker" in
        // `pool/latch.rs`).
        let latch = Arc::new(WaitLatch::for_current_thread(match deadline {
            None => Wait::Unrelated,
            Some(_) => Wait::Timed,
        }));
        let for_hook = Arc::clone(&latch);
        let hook = self
            .shared
            .add_hook(Box::new(move || WaitLatch::set_shared(&for_hook)));
        if latch.wait_deadline(deadline) {
            return true;
        }
        // Timed out: nobody will wait on this latch any more.
        self.shared.remove_hook(hook);
        self.shared.is_finished()
    }

    fn take(&mut self) -> Result<R, TaskError> {
        assert!(!self.taken, "the task's outcome was already taken");
        self.taken = true;
        // SAFETY: we are the unique handle and the task has finished.
        unsafe { self.shared.take() }
    }
}

impl<R> fmt::Debug for Task<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("ready", &self.is_ready())
            .finish()
    }
}

/// A deadline `timeout` from now, saturating instead of overflowing.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or(now + Duration::from_secs(60 * 60 * 24 * 365))
}

/// Iterates over `tasks` in the order they finish: Python's
/// `concurrent.futures.as_completed`. Each yielded task is ready, so its `get` does not
/// block.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
///
/// let pool = parpool::ThreadPool::new(2)?;
/// let tasks = [30u64, 1, 10].map(|ms| {
///     pool.submit(move || {
///         std::thread::sleep(Duration::from_millis(ms));
///         ms
///     })
/// });
/// let mut finished: Vec<u64> =
///     parpool::as_completed(tasks).map(|task| task.get().unwrap()).collect();
/// finished.sort();
/// assert_eq!(finished, [1, 10, 30]);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
pub fn as_completed<R, I>(tasks: I) -> AsCompleted<R>
where
    I: IntoIterator<Item = Task<R>>,
{
    let queue = Arc::new(ReadyQueue::default());
    let slots: Vec<Option<Task<R>>> = tasks.into_iter().map(Some).collect();
    for (index, task) in slots.iter().enumerate() {
        let queue = Arc::clone(&queue);
        let task = task.as_ref().expect("slot filled above");
        task.shared.add_hook(Box::new(move || queue.push(index)));
    }
    AsCompleted {
        remaining: slots.len(),
        slots,
        queue,
    }
}

/// The iterator returned by [`as_completed`].
///
/// # Examples
///
/// ```
/// let pool = parpool::ThreadPool::new(2)?;
/// let done = parpool::as_completed([pool.submit(|| 1), pool.submit(|| 2)]);
/// assert_eq!(done.len(), 2);
/// assert_eq!(done.map(|t| t.get().unwrap()).sum::<i32>(), 3);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
#[must_use = "iterators are lazy and do nothing unless consumed"]
pub struct AsCompleted<R> {
    slots: Vec<Option<Task<R>>>,
    queue: Arc<ReadyQueue>,
    remaining: usize,
}

/// Indices of finished tasks, and the consumer's latch while it waits for one.
#[derive(Default)]
struct ReadyQueue {
    inner: Mutex<(VecDeque<usize>, Option<Arc<WaitLatch>>)>,
}

impl ReadyQueue {
    fn push(&self, index: usize) {
        let waiting = {
            let mut inner = lock(&self.inner);
            inner.0.push_back(index);
            inner.1.take()
        };
        if let Some(latch) = waiting {
            WaitLatch::set_shared(&latch);
        }
    }
}

impl<R> Iterator for AsCompleted<R> {
    type Item = Task<R>;

    fn next(&mut self) -> Option<Task<R>> {
        if self.remaining == 0 {
            return None;
        }
        loop {
            let latch = {
                let mut inner = lock(&self.queue.inner);
                if let Some(index) = inner.0.pop_front() {
                    self.remaining -= 1;
                    return self.slots[index].take();
                }
                let latch = Arc::new(WaitLatch::for_current_thread(Wait::Unrelated));
                inner.1 = Some(Arc::clone(&latch));
                latch
            };
            latch.wait();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<R> ExactSizeIterator for AsCompleted<R> {}

impl<R> fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsCompleted")
            .field("remaining", &self.remaining)
            .finish()
    }
}

impl fmt::Debug for ReadyQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReadyQueue")
    }
}
