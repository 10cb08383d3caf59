//! Handles for submitted jobs, and the completion slots the supervisor fills.
//!
//! A job's result travels: worker → supervisor thread (reads the frame, puts the still
//! encoded bytes in the job's [`Sink`]) → the thread that waits (`get`, `map`, `imap`), which
//! decodes them. Decoding on the waiting side keeps the supervisor free of user types and
//! spreads the work.
//!
//! # Waiting
//!
//! A waiter spins for [`SPIN`], yielding its core between checks, then blocks on a condition
//! variable. The spin covers one round trip to a worker. While a `ProcessTask` waiter spins
//! it also polls the result ring of the worker that has its job, and takes the result itself
//! when it lands (under the pool's state lock, as the supervisor would): a `submit` + `get` of
//! a short job then costs the two process wake-ups of a round trip and no thread hand-off.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::ring::Ring;
use super::supervisor::Shared;
use crate::ProcessError;
use crate::error::SerdeStage;
use crate::shm::segment::Segment;

/// How long a waiter spins (yielding) before it blocks. A round trip to a worker measured
/// 50–85 µs on the 2-core VM this was tuned on (raw socketpair ping-pong between two
/// processes); 200 µs covers it with margin, so a waiter is still awake when a short job's
/// result lands and the result costs no futex wake-up. Spinning yields the core at every
/// check, so it does not slow the workers on a small machine.
pub(crate) const SPIN: Duration = Duration::from_micros(200);

/// A job's result as the supervisor delivers it: encoded bytes, or why there are none.
pub(crate) type Outcome = Result<Reply, ProcessError>;

/// The encoded result of a job that ran to completion.
#[derive(Debug)]
pub(crate) struct Reply {
    /// `postcard` bytes of `R` (one item) or `Vec<R>` (a chunk).
    pub(crate) bytes: Vec<u8>,
    /// The shared-memory segments the result names, mapped in this process: held only to
    /// keep them alive until the result is decoded into handles.
    pub(crate) _segments: Vec<Arc<Segment>>,
}

impl Reply {
    /// Decodes the reply as a `T`.
    pub(crate) fn decode<T: DeserializeOwned>(&self) -> Result<T, ProcessError> {
        super::wire::decode(&self.bytes).map_err(|e| {
            ProcessError::serialization(
                std::any::type_name::<T>(),
                SerdeStage::DecodeResult,
                e,
                None,
            )
        })
    }
}

/// Spins, yielding between checks, until `done()` or `limit` passed. Returns `done()`.
pub(crate) fn spin_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return done();
        }
        std::thread::yield_now();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Internal locks: the data is valid after a panic elsewhere, so poisoning is ignored.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The job is waiting in the parent's queue.
const QUEUED: u8 = 0;
/// The job was sent to a worker; it can no longer be cancelled.
const STARTED: u8 = 1;
/// The outcome is in the slot.
const DONE: u8 = 2;
/// `cancel` won before the job was sent; no outcome will come.
const CANCELLED: u8 = 3;

/// The completion slot of one submitted job.
///
/// # Memory ordering
///
/// `state` moves QUEUED → STARTED → DONE (and back STARTED → QUEUED when a dead worker's
/// unstarted job is requeued), or QUEUED → CANCELLED. The outcome is written under `result`'s
/// lock before `state` becomes DONE with `Release`; a waiter that reads DONE with `Acquire`
/// then takes the outcome under the same lock.
#[derive(Debug)]
pub(crate) struct TaskSlot {
    state: AtomicU8,
    /// The pool slot of the worker the job was sent to, and that worker's result ring: a
    /// waiter checks the ring without the pool's lock while it spins, and takes the result
    /// through the pool once one is there. Cleared when the job completes.
    sent: Mutex<Option<(usize, Arc<Ring>)>>,
    result: Mutex<Option<Outcome>>,
    ready: Condvar,
}

impl TaskSlot {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicU8::new(QUEUED),
            sent: Mutex::new(None),
            result: Mutex::new(None),
            ready: Condvar::new(),
        }
    }

    /// Claims the job for sending. `false` when it was cancelled.
    fn start(&self) -> bool {
        // AcqRel: pairs with the CAS in `cancel`, the other way out of QUEUED: one of them
        // wins. No data is handed over here (the outcome's hand-over is `complete`'s).
        self.state
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Records the worker slot the job was sent to, and its ring.
    fn sent_to(&self, slot: usize, ring: &Arc<Ring>) {
        *lock(&self.sent) = Some((slot, Arc::clone(ring)));
    }

    /// The worker slot the job was sent to, when results wait in that worker's ring.
    fn ring_pending(&self) -> Option<usize> {
        match &*lock(&self.sent) {
            Some((slot, ring)) if ring.pending() => Some(*slot),
            _ => None,
        }
    }

    /// Returns a started job to the queued state (its worker died before running it).
    fn requeue(&self) {
        // AcqRel: as in `start`, whose transition this undoes.
        let _ = self
            .state
            .compare_exchange(STARTED, QUEUED, Ordering::AcqRel, Ordering::Acquire);
    }

    fn is_cancelled(&self) -> bool {
        // Acquire: pairs with the CAS in `cancel`.
        self.state.load(Ordering::Acquire) == CANCELLED
    }

    /// Stores the outcome and wakes the waiter, unless the job was cancelled.
    fn complete(&self, outcome: Outcome) {
        lock(&self.sent).take();
        let mut result = lock(&self.result);
        // Acquire: pairs with the CAS in `cancel`; a cancelled or done job takes no outcome.
        let state = self.state.load(Ordering::Acquire);
        if state == CANCELLED || state == DONE {
            return;
        }
        *result = Some(outcome);
        // Release: pairs with the Acquire loads in `is_finished`; the outcome written above
        // is visible to a waiter that sees DONE.
        if self
            .state
            .compare_exchange(state, DONE, Ordering::Release, Ordering::Acquire)
            .is_err()
        {
            // Only `cancel` (QUEUED → CANCELLED) races with this; it won.
            *result = None;
            return;
        }
        drop(result);
        self.ready.notify_all();
    }

    fn cancel(&self) -> bool {
        // AcqRel: pairs with the CAS in `start` and the loads in `complete` and
        // `is_finished`: either the job leaves QUEUED here or it is sent.
        let won = self
            .state
            .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            // Wake a waiter blocked in `get` on another thread.
            let _guard = lock(&self.result);
            self.ready.notify_all();
        }
        won
    }

    fn is_finished(&self) -> bool {
        // Acquire: pairs with the Release CAS in `complete` (a waiter that sees DONE sees the
        // outcome) and with the CAS in `cancel`.
        matches!(self.state.load(Ordering::Acquire), DONE | CANCELLED)
    }

    /// Waits until the job finished or `deadline` passed; returns whether it finished.
    /// While it spins it calls `poll`, which may complete the job.
    fn wait_until(&self, deadline: Option<Instant>, mut poll: impl FnMut(&Self)) -> bool {
        let spin = match deadline {
            Some(d) => SPIN.min(d.saturating_duration_since(Instant::now())),
            None => SPIN,
        };
        let finished = spin_until(spin, || {
            if !self.is_finished() {
                poll(self);
            }
            self.is_finished()
        });
        finished || self.wait_cold(deadline)
    }

    #[cold]
    fn wait_cold(&self, deadline: Option<Instant>) -> bool {
        let mut guard = lock(&self.result);
        loop {
            if self.is_finished() {
                return true;
            }
            guard = match deadline {
                None => self
                    .ready
                    .wait(guard)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    self.ready
                        .wait_timeout(guard, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Takes the outcome of a finished job.
    ///
    /// # Panics
    ///
    /// When the outcome was already taken.
    fn take(&self) -> Outcome {
        if self.is_cancelled() {
            return Err(ProcessError::cancelled());
        }
        lock(&self.result)
            .take()
            .expect("the result of this ProcessTask was already taken")
    }
}

/// The completion queue of a `map`/`imap` call: chunk outcomes in completion order.
///
/// # Memory ordering
///
/// `complete` pushes an outcome onto `done` under its lock, then increments `completed` with
/// `Release`; `take` spins on `completed` with `Acquire` before it takes the lock, so the
/// count it waits for means the outcome is queued. `abandoned` is a `Relaxed` flag: a chunk
/// sent before the dispatcher sees it is only wasted work, its outcome dropped in
/// `complete`.
#[derive(Debug)]
pub(crate) struct Batch {
    done: Mutex<VecDeque<(usize, Outcome)>>,
    ready: Condvar,
    /// Chunks completed so far; a waiter spins on it without taking the lock.
    completed: AtomicUsize,
    /// The iterator was dropped: queued chunks are discarded instead of sent.
    abandoned: AtomicBool,
}

impl Batch {
    pub(crate) fn new() -> Self {
        Self {
            done: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            completed: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
        }
    }

    fn complete(&self, index: usize, outcome: Outcome) {
        if self.abandoned.load(Ordering::Relaxed) {
            return;
        }
        lock(&self.done).push_back((index, outcome));
        // Release: pairs with the Acquire in `take`'s spin; the push above happened first.
        self.completed.fetch_add(1, Ordering::Release);
        self.ready.notify_one();
    }

    /// Marks the batch abandoned: its queued chunks are dropped by the dispatcher.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    /// Waits for the next completed chunk. `taken` counts the chunks taken so far (the
    /// caller's counter, used to spin without the lock).
    pub(crate) fn take(&self, taken: &mut usize) -> (usize, Outcome) {
        // Acquire: pairs with the Release increment in `complete`.
        spin_until(SPIN, || self.completed.load(Ordering::Acquire) > *taken);
        let mut done = lock(&self.done);
        loop {
            if let Some(next) = done.pop_front() {
                *taken += 1;
                return next;
            }
            done = self
                .ready
                .wait(done)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Where a job's outcome goes.
#[derive(Debug)]
pub(crate) enum Sink {
    /// A `submit`ted job and its handle.
    Task(Arc<TaskSlot>),
    /// Chunk `index` of a `map`/`imap` call.
    Batch(Arc<Batch>, usize),
}

impl Sink {
    /// Claims the job for sending; `false` when nobody wants its outcome any more.
    pub(crate) fn start(&self) -> bool {
        match self {
            Sink::Task(slot) => slot.start(),
            Sink::Batch(batch, _) => !batch.abandoned.load(Ordering::Relaxed),
        }
    }

    /// Records which worker slot the job went to, and that worker's result ring.
    pub(crate) fn sent_to(&self, slot: usize, ring: &Arc<Ring>) {
        if let Sink::Task(task) = self {
            task.sent_to(slot, ring);
        }
    }

    /// The job goes back to the queue: its worker died before it started.
    pub(crate) fn requeue(&self) {
        if let Sink::Task(slot) = self {
            slot.requeue();
        }
    }

    /// Nobody wants this job's outcome any more (cancelled, or its iterator was dropped).
    pub(crate) fn is_dead(&self) -> bool {
        match self {
            Sink::Task(slot) => slot.is_cancelled(),
            Sink::Batch(batch, _) => batch.abandoned.load(Ordering::Relaxed),
        }
    }

    /// Delivers the outcome.
    pub(crate) fn complete(&self, outcome: Outcome) {
        match self {
            Sink::Task(slot) => slot.complete(outcome),
            Sink::Batch(batch, index) => batch.complete(*index, outcome),
        }
    }
}

/// A handle to a job submitted with [`ProcessPool::submit`](crate::ProcessPool::submit):
/// `apply_async` in Python's terms.
///
/// Dropping the handle does not cancel the job; it still runs, and its result is dropped.
///
/// # Examples
///
/// ```
/// use parpool::ProcessPool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = ProcessPool::new(2)?;
/// let task = pool.submit(square, 7)?;
/// task.wait();
/// assert!(task.is_ready());
/// assert_eq!(task.get()?, 49);
/// # Ok::<(), parpool::ProcessError>(())
/// ```
#[must_use = "a ProcessTask does nothing unless you get its result; drop it to ignore the result"]
pub struct ProcessTask<R> {
    slot: Arc<TaskSlot>,
    /// The pool, to poll its result rings; weak, so a handle that outlives its pool does not
    /// keep the pool's descriptors open.
    shared: Weak<Shared>,
    _result: PhantomData<fn() -> R>,
}

impl<R> ProcessTask<R> {
    pub(crate) fn new(slot: Arc<TaskSlot>, shared: &Arc<Shared>) -> Self {
        Self {
            slot,
            shared: Arc::downgrade(shared),
            _result: PhantomData,
        }
    }

    /// Waits for the job, polling its worker's result ring while spinning: the waiting thread
    /// takes the result itself instead of waiting for the supervisor to wake up.
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        if self.slot.is_finished() {
            return true;
        }
        let shared = self.shared.upgrade();
        self.slot.wait_until(deadline, |slot| {
            if let (Some(shared), Some(worker)) = (&shared, slot.ring_pending()) {
                shared.poll_ring(worker);
            }
        })
    }

    /// Whether the job finished (or was cancelled), so `get` returns without waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use parpool::shm::Value;
    /// use std::time::Duration;
    ///
    /// fn wait_for(go: Value<u32>) {
    ///     while go.load() == 0 {
    ///         std::thread::sleep(Duration::from_millis(1));
    ///     }
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let go = Value::new(0u32)?;
    /// let task = pool.submit(wait_for, go.clone())?;
    /// assert!(!task.is_ready());
    /// go.store(1);
    /// task.wait();
    /// assert!(task.is_ready());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_ready(&self) -> bool {
        self.slot.is_finished()
    }

    /// Blocks until the job finished (or was cancelled).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn double(x: u64) -> u64 {
    ///     2 * x
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let task = pool.submit(double, 21)?;
    /// task.wait();
    /// assert!(task.is_ready());
    /// assert_eq!(task.get()?, 42);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn wait(&self) {
        self.wait_until(None);
    }

    /// Cancels the job if it has not started. Returns `true` when it was cancelled: it will
    /// not run, and `get` returns an error with [`is_cancelled`](ProcessError::is_cancelled).
    /// Returns `false` when it was already sent to a worker (a job counts as started once a
    /// worker has it, even while it waits behind that worker's current job) or finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// // Keep the only worker busy, with one job waiting behind it, so the last stays queued.
    /// let busy = [pool.submit(nap, 300)?, pool.submit(nap, 1)?];
    /// let queued = pool.submit(nap, 1)?;
    /// assert!(queued.cancel());
    /// assert!(queued.get().unwrap_err().is_cancelled());
    /// for task in busy {
    ///     task.get()?;
    /// }
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn cancel(&self) -> bool {
        self.slot.cancel()
    }
}

impl<R: DeserializeOwned> ProcessTask<R> {
    /// Waits for the job and returns its result.
    ///
    /// # Errors
    ///
    /// The job's failure: a panic, a crash of its worker, a task timeout, a result that did
    /// not deserialise, a cancellation, or a pool terminated before the job ran. See
    /// [`ProcessError`].
    ///
    /// # Panics
    ///
    /// When [`get_timeout`](Self::get_timeout) already returned the job's result (or
    /// failure): the result is moved out once.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn half(x: u64) -> u64 {
    ///     assert!(x % 2 == 0, "odd");
    ///     x / 2
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// assert_eq!(pool.submit(half, 8)?.get()?, 4);
    /// assert!(pool.submit(half, 7)?.get().unwrap_err().is_panic());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn get(self) -> Result<R, ProcessError> {
        self.wait_until(None);
        self.slot.take()?.decode()
    }

    /// Waits at most `timeout` for the job. While the job is not done it returns an error
    /// with [`is_timeout`](ProcessError::is_timeout), and the handle keeps working: call it
    /// (or `get`) again later.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), plus the timeout.
    ///
    /// # Panics
    ///
    /// When an earlier call already returned the job's result (or failure): the result is
    /// moved out once.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let task = pool.submit(square, 9)?;
    /// let value = loop {
    ///     match task.get_timeout(Duration::from_millis(10)) {
    ///         Err(e) if e.is_timeout() => continue, // not yet; do something else
    ///         other => break other?,
    ///     }
    /// };
    /// assert_eq!(value, 81);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn get_timeout(&self, timeout: Duration) -> Result<R, ProcessError> {
        let deadline = Instant::now().checked_add(timeout);
        if !self.wait_until(deadline) {
            return Err(ProcessError::wait_timeout());
        }
        self.slot.take()?.decode()
    }
}

impl<R> fmt::Debug for ProcessTask<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Acquire, as in `is_finished`; only a snapshot to print.
        let state = match self.slot.state.load(Ordering::Acquire) {
            QUEUED => "queued",
            STARTED => "started",
            DONE => "done",
            _ => "cancelled",
        };
        f.debug_struct("ProcessTask")
            .field("state", &state)
            .finish()
    }
}
