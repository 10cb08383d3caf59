//! Handles for submitted jobs, and the completion slots the supervisor fills.
//!
//! A job's result travels: worker → supervisor thread (reads the frame, puts the still
//! encoded bytes in the job's [`Sink`]) → the thread that waits (`get`, `map`, `imap`), which
//! decodes them. Decoding on the waiting side keeps the supervisor free of user types and
//! spreads the work.
//!
//! # Waiting
//!
//! A waiter spins for [`SPIN`], yielding its core between checks, then blocks on a latch
//! registered as a hook of the job's completion (`pool/completion.rs`, shared with thread
//! tasks; a timed wait removes its hook when it gives up). The spin covers one round trip to
//! a worker. While a `ProcessTask` waiter spins it also polls the result ring of the worker
//! that has its job, and takes the result itself when it lands (under the pool's state lock, as the supervisor would): a `submit` + `get` of
//! a short job then costs the two process wake-ups of a round trip and no thread hand-off.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::SerdeStage;
use super::ring::Ring;
use super::supervisor::Shared;
use crate::pool::{Completion, Signal, Taken, catch, deadline_after};
use crate::shm::segment::Segment;
use crate::sync::{Condvar, Mutex, lock};
use crate::wait::Awaitable;
use crate::watch::Active;
use crate::{ProcessError, Stopped};

/// How long a waiter spins (yielding) before it blocks. A round trip to a worker measured
/// 50–85 µs on the 2-core VM this was tuned on (raw socketpair ping-pong between two
/// processes); 200 µs covers it with margin, so a waiter is still awake when a short job's
/// result lands and the result costs no futex wake-up. Spinning yields the core at every
/// check, so it does not slow the workers on a small machine.
pub(crate) const SPIN: Duration = Duration::from_micros(200);

/// How long, at most, a thread blocked on process jobs under a [`Watch`](crate::Watch)
/// sleeps before it looks at the watch's cancel token again (it wakes at the watch's
/// deadline in any case). A [`CancelToken`](crate::CancelToken) is a flag that wakes
/// nobody, so a waiter polls it: 10 ms makes a cancel take effect within about one chunk's
/// time for any chunk of 10 ms or more (shorter chunks wake the waiter sooner anyway), and
/// costs a watched waiter 100 wake-ups a second, about a thousandth of a core at the
/// 5–20 µs of a futex wake-up. Not measured against a workload.
pub(crate) const STOP_POLL: Duration = Duration::from_millis(10);

/// When a thread blocked under `watch` must next look at it: `STOP_POLL` from now, or the
/// watch's deadline if sooner.
pub(crate) fn next_look(watch: &Active) -> Instant {
    let poll = Instant::now() + STOP_POLL;
    watch.deadline().map_or(poll, |deadline| deadline.min(poll))
}

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

/// Spins, yielding between checks, until `done()` or `limit` passed since `start` (a clock
/// reading the caller makes, and may use for more). Returns `done()`.
pub(crate) fn spin_until(start: Instant, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
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

/// The completion slot of one submitted job: the crate's completion primitive (see
/// `pool/completion.rs`: `start` when the job is sent, `requeue` when its worker died before
/// running it, `complete` when its outcome arrives) and the worker the job went to.
#[derive(Debug)]
pub(crate) struct TaskSlot {
    completion: Completion<Outcome>,
    /// The watch the job was submitted under: the pool never sends the job once it
    /// stopped, and a wait looks at it.
    watch: Option<Active>,
    /// The pool slot of the worker the job was sent to, and that worker's result ring: a
    /// waiter checks the ring without the pool's lock while it spins, and takes the result
    /// through the pool once one is there. Cleared when the job completes.
    sent: Mutex<Option<(usize, Arc<Ring>)>>,
}

impl TaskSlot {
    pub(crate) fn new(watch: Option<Active>) -> Self {
        Self {
            completion: Completion::new(),
            watch,
            sent: Mutex::new(None),
        }
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

    /// Stores the outcome and wakes the waiters, unless the job was cancelled.
    fn complete(&self, outcome: Outcome) {
        lock(&self.sent).take();
        self.completion.complete(outcome);
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
    /// The watch of the call: the pool never sends a chunk once it stopped. Kept here, once
    /// per call, rather than in each chunk's `JobSpec`: a chunk's sink already shares the
    /// batch, so being watched adds nothing to the per-chunk reference counting.
    watch: Option<Active>,
}

impl Batch {
    pub(crate) fn new(watch: Option<Active>) -> Self {
        Self {
            done: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            completed: AtomicUsize::new(0),
            abandoned: AtomicBool::new(false),
            watch,
        }
    }

    /// The watch of the call.
    pub(crate) fn watch(&self) -> Option<&Active> {
        self.watch.as_ref()
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
    /// caller's counter, used to spin without the lock). With `watched`, returns the stop
    /// instead once the call's watch stopped: looked at first (against the clock reading
    /// the spin makes anyway, so a watched chunk costs no extra clock read), then every
    /// [`STOP_POLL`] and at the watch's deadline while it blocks.
    pub(crate) fn take(
        &self,
        taken: &mut usize,
        watched: bool,
    ) -> Result<(usize, Outcome), Stopped> {
        let watch = self.watch.as_ref().filter(|_| watched);
        let now = Instant::now();
        if let Some(watch) = watch {
            watch.check_at(now)?;
        }
        // Acquire: pairs with the Release increment in `complete`.
        spin_until(now, SPIN, || {
            self.completed.load(Ordering::Acquire) > *taken
        });
        let mut done = lock(&self.done);
        loop {
            if let Some(next) = done.pop_front() {
                *taken += 1;
                return Ok(next);
            }
            done = match watch {
                None => self
                    .ready
                    .wait(done)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(watch) => {
                    watch.check()?;
                    let wait = next_look(watch).saturating_duration_since(Instant::now());
                    self.ready
                        .wait_timeout(done, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
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
    /// The watch of the call that submitted the job.
    pub(crate) fn watch(&self) -> Option<&Active> {
        match self {
            Sink::Task(slot) => slot.watch.as_ref(),
            Sink::Batch(batch, _) => batch.watch(),
        }
    }

    /// Claims the job for sending; `false` when nobody wants its outcome any more.
    pub(crate) fn start(&self) -> bool {
        match self {
            Sink::Task(slot) => slot.completion.start(),
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
            slot.completion.requeue();
        }
    }

    /// Nobody wants this job's outcome any more (cancelled, or its iterator was dropped).
    pub(crate) fn is_dead(&self) -> bool {
        match self {
            Sink::Task(slot) => slot.completion.is_cancelled(),
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
        let completion = &self.slot.completion;
        if completion.is_finished() {
            return true;
        }
        let shared = self.shared.upgrade();
        let now = Instant::now();
        let spin = match deadline {
            Some(d) => SPIN.min(d.saturating_duration_since(now)),
            None => SPIN,
        };
        let finished = spin_until(now, spin, || {
            if !completion.is_finished()
                && let (Some(shared), Some(worker)) = (&shared, self.slot.ring_pending())
            {
                shared.poll_ring(worker);
            }
            completion.is_finished()
        });
        if finished {
            return true;
        }
        let Some(watch) = &self.slot.watch else {
            return completion.wait_cold(deadline);
        };
        // Watched: wake to look at the watch; once it stopped, have the pool settle the job
        // (dropped if not sent, killed if the pool kills on stop) and wait for that.
        loop {
            if watch.check().is_err() {
                if let Some(shared) = &shared {
                    shared.stop_watched();
                }
                return completion.wait_cold(deadline);
            }
            let look = next_look(watch);
            let until = deadline.map_or(look, |deadline| deadline.min(look));
            if completion.wait_cold(Some(until)) {
                return true;
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return false;
            }
        }
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
        self.slot.completion.is_finished()
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

    /// Blocks until the job finished (or was cancelled), or `timeout` passed; true if it
    /// finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn double(x: u64) -> u64 {
    ///     2 * x
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let task = pool.submit(double, 21)?;
    /// assert!(task.wait_timeout(Duration::from_secs(10)));
    /// assert_eq!(task.get()?, 42);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(Some(deadline_after(timeout)))
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
        self.slot.completion.cancel()
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
    /// [`is_taken`](ProcessError::is_taken) when [`get_timeout`](Self::get_timeout) already
    /// returned the job's result (or failure): the result is moved out once.
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
        process_result(self.slot.completion.take())
    }

    /// Waits at most `timeout` for the job. While the job is not done it returns an error
    /// with [`is_timeout`](ProcessError::is_timeout), and the handle keeps working: call it
    /// (or `get`) again later.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), plus the timeout. A zero timeout polls: it neither blocks nor
    /// leaves anything behind.
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
        process_result(self.slot.completion.take())
    }
}

impl<R: DeserializeOwned + 'static> ProcessTask<R> {
    /// Runs `callback` with the job's outcome once it has finished (with a value, a failure,
    /// or cancelled): on the pool's supervisor thread (or a thread waiting on another of the
    /// pool's tasks) that delivers it, or right here if it already has. The handle is
    /// consumed: the callback owns the outcome. The callback must not block for long. A
    /// panic in the callback (or in decoding the result) is caught and reported on stderr by
    /// the panic hook.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::sync::mpsc;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let (sender, outcomes) = mpsc::channel();
    /// pool.submit(square, 6)?.on_done(move |outcome| sender.send(outcome).unwrap());
    /// assert_eq!(outcomes.recv().unwrap()?, 36);
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
    pub fn on_done(self, callback: impl FnOnce(Result<R, ProcessError>) + Send + 'static) {
        let slot = Arc::clone(&self.slot);
        self.slot.completion.add_hook(Box::new(move || {
            let _ = catch(move || callback(process_result(slot.completion.take())));
        }));
    }
}

fn process_result<R: DeserializeOwned>(taken: Taken<Outcome>) -> Result<R, ProcessError> {
    match taken {
        Taken::Outcome(outcome) => outcome?.decode(),
        Taken::Cancelled => Err(ProcessError::cancelled()),
        Taken::Gone => Err(ProcessError::taken()),
    }
}

impl<R> crate::wait::sealed::Sealed for ProcessTask<R> {
    #[expect(private_interfaces, reason = "sealed: only this crate calls it")]
    fn signal(&self) -> &dyn Signal {
        &self.slot.completion
    }
}

impl<R> Awaitable for ProcessTask<R> {}

impl<R> fmt::Debug for ProcessTask<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessTask")
            .field("state", &self.slot.completion.status_name())
            .finish()
    }
}
