//! A process pool: jobs run in separate worker processes, so a crash, abort or hang in a job
//! fails that job, never the caller.
//!
//! The API follows Python's `multiprocessing.Pool`: [`ProcessPool::submit`] (`apply_async`),
//! [`map`](ProcessPool::map), [`imap`](ProcessPool::imap),
//! [`imap_unordered`](ProcessPool::imap_unordered), [`close`](ProcessPool::close),
//! [`join`](ProcessPool::join) and [`terminate`](ProcessPool::terminate). Where Python's pool
//! hangs or breaks, this one reports an error for the one job concerned and goes on:
//!
//! - a job that panics fails with the panic message; its worker lives on;
//! - a job whose worker dies (abort, segfault, SIGKILL, the OOM killer) fails with the signal
//!   or exit code; every result the worker published before it died is delivered, the jobs
//!   that worker had not started go to other workers (no job ever runs twice), and a new
//!   worker takes its place;
//! - a job that writes garbage to its worker's socket fails with a protocol violation
//!   ([`ProcessError::is_protocol_violation`]);
//! - a job that runs past the pool's `task_timeout` has its worker killed and fails with a
//!   timeout;
//! - when the parent process dies, its workers die too (a parent-death signal, and EOF on
//!   their socket);
//! - a worker that cannot start makes `new`/`build` fail within a startup timeout; on a
//!   running pool the pool retries with a backoff, fails the waiting jobs with the cause
//!   after a few attempts in a row, and serves again once a worker starts;
//! - inside [`Watch::run`](crate::Watch::run), maps count their items into the watch's
//!   progress, and a cancel or deadline stops maps and submitted jobs: what was not sent
//!   to a worker never runs, and the call reports the stop in its error
//!   ([`ProcessError::is_cancelled`], [`ProcessError::is_deadline`]); jobs already running
//!   finish, or are killed with [`kill_on_stop`](ProcessPoolBuilder::kill_on_stop);
//! - processes a job forks stay in its worker's process group, which is killed when the
//!   worker ends (a crash, a timeout, `terminate`, the pool's shutdown, or the parent's
//!   death; a process that leaves the group, by `setsid` say, escapes).
//!
//! A worker process is only ever one the pool spawned: a stray `PARPOOL_WORKER` in the
//! environment of an ordinary run is ignored, because worker mode also needs a nonce the
//! parent writes on the worker's socket. Descriptors a worker inherits beyond the standard
//! three (an MPI launcher leaves several) are closed when it starts.
//!
//! # Jobs
//!
//! A job is a plain function `fn(A) -> R` (closures that capture nothing coerce to one) and
//! an argument; `A` and `R` travel as [`serde`] + `postcard` bytes. Workers are the same
//! executable, started again (`/proc/self/exe`), so the function is named by its position in
//! the executable; the worker proves it runs the same image before it gets any job.
//!
//! A worker runs the job under `catch_unwind`; the panic message still goes to the worker's
//! standard error through the default panic hook (a worker never runs `main`, so a hook set
//! there is not installed in it: set one in the pool's
//! [`initializer`](ProcessPoolBuilder::initializer) if you want another). Workers share the
//! parent's standard output and error; their standard input is `/dev/null`.
//!
//! # Workers start without code in `main`
//!
//! A worker process takes over before `main` runs, from a constructor of this crate. Programs,
//! `cargo test` binaries, doctests, examples and benchmarks need nothing in `main`. Where the
//! constructor does not run, the pool says so; call [`init`] at the start of `main` then.
//!
//! # Examples
//!
//! ```
//! use parpool::ProcessPool;
//! use std::time::Duration;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let procs = ProcessPool::new(2)?;
//! let v: Vec<u64> = procs.map(0..100u64, square)?;
//! assert_eq!(v[99], 99 * 99);
//! let mut sum = 0;
//! for r in procs.imap_unordered(0..100u64, square) {
//!     let y: u64 = r?;
//!     sum += y;
//! }
//! assert_eq!(sum, v.iter().sum::<u64>());
//! let t = procs.submit(square, 7)?;
//! assert_eq!(t.get_timeout(Duration::from_secs(10))?, 49);
//! # Ok::<(), parpool::ProcessError>(())
//! ```
//!
//! # Shutdown
//!
//! [`close`](ProcessPool::close) refuses new jobs and lets queued ones finish;
//! [`join`](ProcessPool::join) closes and waits until every job finished and every worker
//! exited; [`terminate`](ProcessPool::terminate) kills the workers at once and fails the jobs
//! that did not finish. Dropping a pool joins it: the steps are
//!
//! 1. no new jobs are accepted;
//! 2. queued and running jobs finish and deliver their results (set a `task_timeout`, or
//!    call `terminate`, if a job may hang);
//! 3. each worker's socket is shut down; the worker reads EOF and exits with status 0, and a
//!    worker still alive a second later is killed;
//! 4. every worker is reaped (no zombies), what is left of its process group (processes its
//!    jobs forked) is killed, and every descriptor is closed;
//! 5. the supervisor thread exits and `drop` returns.

mod bootstrap;
mod error;
mod map;
mod ring;
mod supervisor;
mod task;
mod wire;
mod worker;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use bootstrap::init;
pub use error::ProcessError;
pub(crate) use error::{ExitStatus, SerdeStage, StartupCause};
pub use map::{Imap, ImapUnordered};
pub use task::ProcessTask;

use crate::shm::segment::{self, Segment};
use crate::watch::Active;
use supervisor::{Call, Config, JobSpec, Shared};
use task::{Sink, TaskSlot};
use worker::Trampoline;

/// A pool of worker processes that run `fn(A) -> R` jobs, isolated from the caller and from
/// each other. See the [module documentation](self) for the failure model.
///
/// The pool is `Send + Sync`: any thread may submit to it.
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
/// let procs = ProcessPool::new(2)?;
/// assert_eq!(procs.map([1, 2, 3], square)?, [1, 4, 9]);
/// # Ok::<(), parpool::ProcessError>(())
/// ```
pub struct ProcessPool {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl ProcessPool {
    /// A pool of `processes` workers with default settings; returns once every worker is
    /// ready.
    ///
    /// # Errors
    ///
    /// `processes == 0` ([`is_invalid_argument`](ProcessError::is_invalid_argument)); a
    /// worker could not start within the startup timeout
    /// ([`is_startup`](ProcessError::is_startup)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// let procs = ProcessPool::new(2)?;
    /// assert_eq!(procs.processes(), 2);
    /// assert!(ProcessPool::new(0).unwrap_err().is_invalid_argument());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn new(processes: usize) -> Result<Self, ProcessError> {
        Self::builder().processes(processes).build()
    }

    /// A builder to set the number of processes, `max_tasks_per_child`, a `task_timeout`,
    /// an initializer and the startup timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// let procs = ProcessPool::builder()
    ///     .processes(2)
    ///     .max_tasks_per_child(1000)
    ///     .task_timeout(Duration::from_secs(60))
    ///     .build()?;
    /// assert_eq!(procs.processes(), 2);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn builder() -> ProcessPoolBuilder {
        ProcessPoolBuilder::default()
    }

    /// The number of worker processes: the pool's size, or for an
    /// [elastic](ProcessPoolBuilder::elastic) pool its maximum (see
    /// [`workers`](Self::workers) for how many it runs now).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// let procs = ProcessPool::builder().processes(3).build()?;
    /// assert_eq!(procs.processes(), 3);
    /// let elastic = ProcessPool::builder().elastic(1, 4).build()?;
    /// assert_eq!(elastic.processes(), 4);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn processes(&self) -> usize {
        self.shared.config().max_processes
    }

    /// How many worker processes the pool has now: starting, ready, or exiting and not
    /// reaped yet. A fixed pool has its size (less a worker being replaced); an
    /// [elastic](ProcessPoolBuilder::elastic) pool has between its minimum and maximum.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) {
    ///     std::thread::sleep(Duration::from_millis(ms));
    /// }
    ///
    /// let procs = ProcessPool::builder()
    ///     .elastic(1, 4)
    ///     .idle_timeout(Duration::from_millis(100))
    ///     .build()?;
    /// assert_eq!(procs.workers(), 1); // `build` starts the minimum
    /// procs.map([50; 16], nap)?; // jobs wait: the pool grows
    /// assert!(procs.counters().spawned > 1);
    /// while procs.workers() > 1 {
    ///     nap(10); // idle past the timeout: it shrinks back
    /// }
    /// assert_eq!(procs.counters().retired, procs.counters().spawned - 1);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn workers(&self) -> usize {
        self.shared.workers()
    }

    /// What happened to the pool's workers so far: how many started, retired for
    /// idleness, and crashed.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn crash(_: ()) {
    ///     std::process::abort();
    /// }
    ///
    /// let procs = ProcessPool::new(2)?;
    /// assert!(procs.submit(crash, ())?.get().unwrap_err().is_crash());
    /// let counters = procs.counters();
    /// assert_eq!(counters.crashed, 1);
    /// assert_eq!(counters.retired, 0);
    /// assert!(counters.spawned >= 2); // 3 once the replacement is ready
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn counters(&self) -> WorkerCounters {
        self.shared.counters()
    }

    /// The pids of the worker processes alive now (a worker being replaced is missing).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn pid(_: ()) -> u32 {
    ///     std::process::id()
    /// }
    ///
    /// let procs = ProcessPool::new(1)?;
    /// assert_eq!(procs.pids(), [procs.submit(pid, ())?.get()?]);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn pids(&self) -> Vec<u32> {
        self.shared.pids()
    }

    /// Submits one job: `f(arg)` in a worker. Returns a handle to wait for its result.
    ///
    /// Inside [`Watch::run`](crate::Watch::run) the job is watched: once the watch stops it
    /// (its token cancelled, or its deadline passed), the job is never sent if it was not
    /// yet, and its handle reports the stop
    /// ([`is_cancelled`](ProcessError::is_cancelled), [`is_deadline`](ProcessError::is_deadline));
    /// a job already sent runs to the end and delivers its result, unless the pool
    /// [kills on stop](ProcessPoolBuilder::kill_on_stop). A waiting `get` sees the stop
    /// within 10 ms. A submitted job is not counted in the watch's
    /// progress, which counts the items of maps.
    ///
    /// # Errors
    ///
    /// The watch stopped already ([`is_cancelled`](ProcessError::is_cancelled),
    /// [`is_deadline`](ProcessError::is_deadline)); the pool is closed or terminated ([`is_closed`](ProcessError::is_closed)); `arg` does
    /// not serialise ([`is_serialization`](ProcessError::is_serialization)); `f` is not in the
    /// main executable ([`is_invalid_argument`](ProcessError::is_invalid_argument)); no worker
    /// could start several times in a row ([`is_startup`](ProcessError::is_startup); the
    /// pool keeps trying, and `submit` works again once a worker starts). The job's own
    /// failure comes from the handle.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// let procs = ProcessPool::new(1)?;
    /// let task = procs.submit(|s: String| s.len(), "four".to_string())?;
    /// assert_eq!(task.get()?, 4);
    ///
    /// // Under a watch: a job queued behind a long one (on a fresh pool of one worker, which
    /// // sends one job at a time) is dropped when the token is cancelled, and never runs.
    /// use parpool::{CancelToken, Watch};
    /// let procs = ProcessPool::new(1)?;
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(std::time::Duration::from_millis(ms));
    ///     ms
    /// }
    /// let token = CancelToken::new();
    /// let (long, queued) = Watch::new().cancel_token(&token).run(|| {
    ///     let long = procs.submit(nap, 300)?;
    ///     let queued = procs.submit(nap, 1)?;
    ///     token.cancel();
    ///     Ok::<_, parpool::ProcessError>((long, queued.get()))
    /// }).unwrap()?;
    /// assert!(queued.unwrap_err().is_cancelled());
    /// assert_eq!(long.get()?, 300); // it was running: it finished
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn submit<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<ProcessTask<R>, ProcessError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let watch = Active::current();
        if let Some(stopped) = watch.as_ref().and_then(|watch| watch.check().err()) {
            return Err(ProcessError::stopped(stopped));
        }
        let call = call_for(f as usize, worker::call_one::<A, R> as Trampoline)?;
        let (payload, segments) = encode_argument(&arg)?;
        let slot = Arc::new(TaskSlot::new(watch));
        self.shared.submit([JobSpec {
            call,
            payload,
            segments,
            sink: Sink::Task(Arc::clone(&slot)),
        }])?;
        Ok(ProcessTask::new(slot, &self.shared))
    }

    /// Stops accepting jobs. Queued and running jobs still finish; the workers exit once the
    /// queue is empty. Does not wait (see [`join`](Self::join)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn id(x: u8) -> u8 {
    ///     x
    /// }
    ///
    /// let procs = ProcessPool::new(1)?;
    /// let before = procs.submit(id, 5)?;
    /// procs.close();
    /// assert!(procs.submit(id, 6).unwrap_err().is_closed());
    /// assert_eq!(before.get()?, 5); // submitted before `close`: it still runs
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn close(&self) {
        self.shared.close();
    }

    /// Closes the pool and waits until every job finished and every worker exited and was
    /// reaped. Waits forever for a job that hangs, unless the pool has a `task_timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn double(x: i32) -> i32 {
    ///     2 * x
    /// }
    ///
    /// let procs = ProcessPool::new(2)?;
    /// let task = procs.submit(double, 21)?;
    /// procs.join();
    /// assert!(procs.pids().is_empty());
    /// assert_eq!(task.get()?, 42);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn join(&self) {
        self.shared.close();
        self.wait_supervisor();
    }

    /// Kills every worker now and waits until they are reaped. Jobs that had not finished
    /// fail with [`is_closed`](ProcessError::is_closed).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn sleepy(secs: u64) {
    ///     std::thread::sleep(Duration::from_secs(secs));
    /// }
    ///
    /// let procs = ProcessPool::new(1)?;
    /// let task = procs.submit(sleepy, 3600)?;
    /// procs.terminate();
    /// assert!(task.get().unwrap_err().is_closed());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn terminate(&self) {
        self.shared.terminate();
        self.wait_supervisor();
    }

    fn wait_supervisor(&self) {
        let mut supervisor = crate::sync::lock(&self.supervisor);
        if let Some(thread) = supervisor.take() {
            // The supervisor aborts the process on a panic, so it only returns normally.
            let _ = thread.join();
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// Dropping a pool joins it: queued and running jobs finish, then the workers exit. See the
/// [module documentation](self#shutdown) for the steps.
impl Drop for ProcessPool {
    fn drop(&mut self) {
        self.join();
    }
}

impl fmt::Debug for ProcessPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessPool")
            .field("processes", &self.processes())
            .field("workers", &self.workers())
            .field("pids", &self.pids())
            .finish()
    }
}

/// What happened to a pool's workers so far (see [`ProcessPool::counters`]).
///
/// # Examples
///
/// ```
/// use parpool::ProcessPool;
///
/// let procs = ProcessPool::new(2)?;
/// let counters = procs.counters();
/// assert_eq!((counters.spawned, counters.retired, counters.crashed), (2, 0, 0));
/// # Ok::<(), parpool::ProcessError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerCounters {
    /// Workers that started (became ready to take jobs): the first ones, replacements, and
    /// those an elastic pool added.
    pub spawned: u64,
    /// Workers an [elastic](ProcessPoolBuilder::elastic) pool retired after the idle
    /// timeout.
    pub retired: u64,
    /// Workers that died while they should have lived: a job crashed, aborted or exited
    /// them, ran past the task timeout, or broke the protocol, or something killed them.
    /// Not counted: workers retired, recycled by `max_tasks_per_child`, or stopped by
    /// `close`, `join`, `terminate` or drop.
    pub crashed: u64,
}

/// Names `f` and its trampoline for the wire.
fn call_for(f: usize, trampoline: Trampoline) -> Result<Call, ProcessError> {
    if !bootstrap::in_main_image(f) {
        return Err(ProcessError::invalid_argument(
            "function",
            "the job function is not in the main executable (it is in a dynamic library, \
             which a worker maps at another address)",
        ));
    }
    Ok(Call {
        trampoline: bootstrap::offset_of(trampoline as usize),
        function: bootstrap::offset_of(f),
    })
}

/// Encodes a job argument; returns the bytes and the shared-memory segments its handles
/// name, which travel with it.
fn encode_argument<A: Serialize + ?Sized>(
    arg: &A,
) -> Result<(Vec<u8>, Vec<Arc<Segment>>), ProcessError> {
    let fail = |message: &dyn fmt::Display| {
        ProcessError::serialization(
            std::any::type_name::<A>(),
            SerdeStage::EncodeArgument,
            message,
            None,
        )
    };
    let (payload, segments) = segment::collect(|| postcard::to_allocvec(arg));
    let payload = payload.map_err(|e| fail(&e))?;
    if payload.len() + wire::JOB_PREFIX_LEN > wire::MAX_BODY {
        return Err(fail(&"the encoded argument is larger than 4 GiB"));
    }
    if segments.len() > wire::MAX_FDS {
        return Err(fail(&format_args!(
            "the argument names {} shared-memory segments; a job may name at most {}",
            segments.len(),
            wire::MAX_FDS
        )));
    }
    Ok((payload, segments))
}

/// Builds a [`ProcessPool`].
///
/// # Examples
///
/// ```
/// use parpool::ProcessPool;
///
/// fn setup() {
///     // runs once in each worker, before its first job
/// }
///
/// let procs = ProcessPool::builder().processes(2).initializer(setup).build()?;
/// assert_eq!(procs.processes(), 2);
/// # Ok::<(), parpool::ProcessError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ProcessPoolBuilder {
    /// The minimum and maximum number of processes; `None`: a fixed pool of one per
    /// available core.
    size: Option<(usize, usize)>,
    config: Config,
}

impl Default for ProcessPoolBuilder {
    fn default() -> Self {
        Self {
            size: None,
            config: Config {
                min_processes: 0,
                max_processes: 0,
                idle_timeout: supervisor::DEFAULT_IDLE_TIMEOUT,
                max_tasks_per_child: None,
                task_timeout: None,
                initializer: None,
                startup_timeout: supervisor::DEFAULT_STARTUP_TIMEOUT,
                kill_on_stop: false,
            },
        }
    }
}

impl ProcessPoolBuilder {
    /// The number of worker processes. Defaults to
    /// [`std::thread::available_parallelism`]; 0 makes `build` fail.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// assert_eq!(ProcessPool::builder().processes(1).build()?.processes(), 1);
    /// let err = ProcessPool::builder().processes(0).build().unwrap_err();
    /// assert!(err.is_invalid_argument());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn processes(mut self, processes: usize) -> Self {
        self.size = Some((processes, processes));
        self
    }

    /// An elastic pool: it starts `min` workers, grows one worker at a time up to `max`
    /// while jobs wait and no worker is idle, and retires a worker that was idle for the
    /// [idle timeout](Self::idle_timeout) while more than `min` remain. `min` may be 0 (no
    /// worker until the first job). Replaces [`processes`](Self::processes) (which is
    /// `elastic(n, n)`); the last of the two called wins.
    ///
    /// No job is lost, run twice or left waiting by a worker that retires: it retires only
    /// with nothing in flight, and jobs go only to workers that are not retiring.
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
    /// let procs = ProcessPool::builder().elastic(1, 4).build()?;
    /// assert_eq!((procs.workers(), procs.processes()), (1, 4));
    /// assert_eq!(procs.map(0..100u64, square)?[99], 99 * 99);
    /// assert!(procs.workers() <= 4);
    ///
    /// // Bad bounds are errors at `build`.
    /// assert!(ProcessPool::builder().elastic(3, 2).build().unwrap_err().is_invalid_argument());
    /// assert!(ProcessPool::builder().elastic(0, 0).build().unwrap_err().is_invalid_argument());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn elastic(mut self, min: usize, max: usize) -> Self {
        self.size = Some((min, max));
        self
    }

    /// How long a worker of an [elastic](Self::elastic) pool may stay idle before it
    /// retires (while more than the minimum remain). 10 seconds by default. A fixed pool
    /// never retires a worker, whatever this says.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) {
    ///     std::thread::sleep(Duration::from_millis(ms));
    /// }
    ///
    /// let procs = ProcessPool::builder()
    ///     .elastic(0, 2)
    ///     .idle_timeout(Duration::from_millis(50))
    ///     .build()?;
    /// assert_eq!(procs.workers(), 0);
    /// procs.submit(nap, 1)?.get()?; // the first job starts a worker
    /// assert_eq!(procs.counters().spawned, 1);
    /// while procs.workers() > 0 {
    ///     nap(10); // 50 ms later it retires
    /// }
    /// assert_eq!(procs.counters().retired, 1);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Replace each worker after it ran `tasks` jobs (a chunk of a `map` counts as one job),
    /// to bound leaks in job code. 0 means never, the default.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn pid(_: ()) -> u32 {
    ///     std::process::id()
    /// }
    ///
    /// let procs = ProcessPool::builder().processes(1).max_tasks_per_child(1).build()?;
    /// let first = procs.submit(pid, ())?.get()?;
    /// let second = procs.submit(pid, ())?.get()?;
    /// assert_ne!(first, second);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn max_tasks_per_child(mut self, tasks: u64) -> Self {
        self.config.max_tasks_per_child = (tasks > 0).then_some(tasks);
        self
    }

    /// Kill a worker whose job runs longer than `timeout`; the job fails with
    /// [`is_task_timeout`](ProcessError::is_task_timeout) and a new worker takes the slot.
    /// The time counts from when the job reached the front of its worker's queue. No timeout
    /// by default.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn hang(_: ()) {
    ///     loop {
    ///         std::thread::sleep(Duration::from_secs(1));
    ///     }
    /// }
    ///
    /// fn id(x: u8) -> u8 {
    ///     x
    /// }
    ///
    /// let procs = ProcessPool::builder()
    ///     .processes(1)
    ///     .task_timeout(Duration::from_millis(100))
    ///     .build()?;
    /// assert!(procs.submit(hang, ())?.get().unwrap_err().is_task_timeout());
    /// assert_eq!(procs.submit(id, 7)?.get()?, 7); // a new worker took the slot
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.config.task_timeout = Some(timeout);
        self
    }

    /// A function each worker runs once when it starts, before its first job. If it panics,
    /// the worker does not start: `build` fails, or, for a replacement worker, the pool
    /// retries and eventually reports the failure to the jobs. Like a job function it must
    /// live in the main executable: `build` refuses one from a dynamic library
    /// ([`is_invalid_argument`](ProcessError::is_invalid_argument)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::sync::atomic::{AtomicBool, Ordering};
    ///
    /// static SET_UP: AtomicBool = AtomicBool::new(false);
    ///
    /// fn setup() {
    ///     SET_UP.store(true, Ordering::Relaxed);
    /// }
    ///
    /// fn was_set_up(_: ()) -> bool {
    ///     SET_UP.load(Ordering::Relaxed)
    /// }
    ///
    /// let procs = ProcessPool::builder().processes(1).initializer(setup).build()?;
    /// assert!(procs.submit(was_set_up, ())?.get()?);
    /// assert!(!SET_UP.load(Ordering::Relaxed)); // it ran in the worker, not here
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn initializer(mut self, initializer: fn()) -> Self {
        self.config.initializer = Some(initializer);
        self
    }

    /// What happens to the jobs already running when a [`Watch`](crate::Watch) stops the
    /// call they belong to: `false` (the default) lets them run to the end, and the call
    /// returns once they did (about one job's time); `true` kills the workers running them,
    /// as a [`task_timeout`](Self::task_timeout) does, and the call returns once they are
    /// reaped (milliseconds). The jobs a stopped call had not sent are never sent, either
    /// way. A killed worker is replaced; it does not count as crashed. A worker is killed
    /// only when every job it holds belongs to a stopped call: one that also holds a job of
    /// another call (short jobs pipelined behind the stopped one) lets them run, since a
    /// kill could land in the other call's job.
    ///
    /// Kill when a job may run much longer than you are willing to wait after a cancel or a
    /// deadline; let them finish when a job must not be interrupted (it writes a file, say).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::{ProcessPool, Watch};
    /// use std::time::{Duration, Instant};
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let procs = ProcessPool::builder().processes(1).kill_on_stop(true).build()?;
    /// let pid = procs.pids()[0];
    /// let start = Instant::now();
    /// let watch = Watch::new().timeout(Duration::from_millis(100));
    /// let err = watch.run(|| procs.map([60_000], nap)).unwrap().unwrap_err();
    /// assert!(err.is_deadline());
    /// assert!(start.elapsed() < Duration::from_secs(30)); // not the minute the job wanted
    /// assert_eq!(procs.map([1], nap)?, [1]); // a new worker took the slot
    /// assert_ne!(procs.pids(), [pid]);
    /// assert_eq!(procs.counters().crashed, 0);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn kill_on_stop(mut self, kill: bool) -> Self {
        self.config.kill_on_stop = kill;
        self
    }

    /// How long a worker may take to start (spawn, handshake and initializer) before it
    /// counts as failed. 30 seconds by default.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn slow_setup() {
    ///     std::thread::sleep(Duration::from_secs(60));
    /// }
    ///
    /// let procs = ProcessPool::builder()
    ///     .processes(1)
    ///     .startup_timeout(Duration::from_secs(5))
    ///     .build()?;
    /// assert_eq!(procs.processes(), 1);
    ///
    /// let err = ProcessPool::builder()
    ///     .processes(1)
    ///     .initializer(slow_setup)
    ///     .startup_timeout(Duration::from_millis(200))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(err.is_startup());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.config.startup_timeout = timeout;
        self
    }

    /// Starts the workers and returns once every one of them (for an elastic pool, its
    /// minimum) is ready.
    ///
    /// # Errors
    ///
    /// `processes(0)`, `elastic(min, max)` with `min > max` or `max == 0`, or an
    /// initializer outside the main executable
    /// ([`is_invalid_argument`](ProcessError::is_invalid_argument)); a worker could not be
    /// spawned (a descriptor or process limit, say), did not finish its handshake within the
    /// startup timeout, or its initializer panicked; or the kernel lacks `pidfd_open` (Linux
    /// 5.3) ([`is_startup`](ProcessError::is_startup)). It returns within the startup
    /// timeout in every case.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// let procs = ProcessPool::builder().processes(2).build()?;
    /// assert_eq!(procs.pids().len(), 2); // every worker is ready when `build` returns
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn build(self) -> Result<ProcessPool, ProcessError> {
        let mut config = self.config;
        (config.min_processes, config.max_processes) = self.size.unwrap_or_else(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            (n, n)
        });
        let (shared, thread) = supervisor::start(config)?;
        Ok(ProcessPool {
            shared,
            supervisor: Mutex::new(Some(thread)),
        })
    }
}
