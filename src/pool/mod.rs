//! The thread pool: workers with work-stealing deques, the global pool, and `install`.
//!
//! Nothing here knows about `map`. The map family (`crate::map`) and tasks (`crate::task`)
//! are built on the public fork-join primitives (`join.rs`, `scope.rs`) and on the narrow
//! crate-internal API re-exported below; the modules behind it are private.
//!
//! # The crate-internal API
//!
//! - **Spawn a job:** [`Registry::spawn_counted`] (and its unchecked twin for jobs that
//!   borrow): the job holds a terminate reference, so dropping the pool waits for it.
//! - **The current registry:** [`current_registry`] / [`current_registry_arc`] (the
//!   worker's pool, else the global one), [`on_worker`], [`peers_want_work`].
//! - **Wait on a latch:** [`WaitLatch`] made for a [`Wait`] kind, set through an `Arc`;
//!   [`waits_inline_on`] says when a wait for a queued task should run the task itself.
//! - **Panic policy and backoff:** [`catch`], [`Panic`], [`Outcome`]; [`snooze`].

use std::any::Any;
use std::fmt;
use std::sync::{Arc, OnceLock};

pub(crate) use registry::WorkerThread;

mod backoff;
mod completion;
mod error;
mod job;
mod join;
mod latch;
mod registry;
mod relay;
mod scope;
mod sleep;
#[cfg(all(test, parpool_loom))]
mod test;

pub(crate) use backoff::{SPIN_HINT_ROUNDS, snooze};
pub(crate) use completion::{Completion, HookId, Signal, Taken, deadline_after};
pub use error::{TaskError, ThreadPoolBuildError};
use job::AbortIfPanic;
#[cfg(all(feature = "process", target_os = "linux"))]
pub(crate) use job::panic_message;
pub(crate) use job::{Outcome, Panic, catch};
pub use join::join;
pub(crate) use latch::{Wait, WaitLatch};
pub(crate) use registry::{Registry, RegistryId};
pub use scope::{Scope, scope};

/// The environment variable that sets the size of the global pool (and of pools built
/// without [`ThreadPoolBuilder::num_threads`]). Read once per build.
///
/// # Examples
///
/// ```
/// assert_eq!(parpool::NUM_THREADS_ENV, "PARPOOL_NUM_THREADS");
/// ```
pub const NUM_THREADS_ENV: &str = "PARPOOL_NUM_THREADS";

/// A pool of worker threads with work-stealing deques.
///
/// Work runs on the pool through [`install`](ThreadPool::install) (and everything called
/// inside it: [`join`](crate::join), [`scope`](crate::scope), `par_map`),
/// [`join`](ThreadPool::join), [`scope`](ThreadPool::scope) and
/// [`submit`](ThreadPool::submit). An idle pool blocks its workers in the kernel and uses
/// no CPU.
///
/// # Threads
///
/// A pool of `n` workers starts `n` threads, and never runs more than `n` jobs at once.
/// A worker that waits (a [`Task::get`](crate::Task::get), an `install` into another
/// pool) runs the pool's other jobs meanwhile, at most 16 waits deep on one stack; a wait
/// deeper than that moves the worker onto a *relay*, a thread with a fresh stack that is
/// the worker while the waiting thread sleeps (same index, thread name, stack size, start
/// and exit handlers). Relays are started on first need, sleep between uses, and end with
/// the pool (`drop` joins them with the workers). A worker whose waits nest `D` deep uses
/// at most `⌊D / 17⌋` relays, and never more than 64: a pool runs on at most
/// `n × (1 + 64)` threads. Waits nest the program's own waits and, since a waiting worker
/// takes whatever job is queued, other jobs that wait in turn.
///
/// # Examples
///
/// ```
/// use parpool::ThreadPool;
///
/// let pool = ThreadPool::new(2)?;
/// let (a, b) = pool.join(|| 1 + 1, || 2 + 2);
/// assert_eq!((a, b), (2, 4));
/// assert_eq!(pool.install(|| parpool::current_num_threads()), 2);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
///
/// # Shutdown
///
/// Dropping a pool is Python's `close()` followed by `join()`:
///
/// 1. The handle goes away, so no new work can arrive through it. (Work already running on
///    the pool may still submit more; it is counted like any other task.)
/// 2. Queued tasks still run, running jobs finish, and their [`Task`](crate::Task) handles
///    receive results as usual.
/// 3. When the last task has finished, every worker's terminate latch is set and each
///    worker leaves its loop; nothing is left in any queue by then.
/// 4. `drop` joins the worker threads: when it returns, the threads have exited.
///
/// So `drop` blocks until submitted work is done: a task that never finishes keeps `drop`
/// waiting, as it keeps Python's `join()` waiting. If the last handle is dropped on a worker
/// thread of any pool (a task that owned the pool, or an `install` into another pool called
/// from one of this pool's tasks), `drop` does not join: one of the threads it would wait
/// for may be waiting for the dropper. The threads exit on their own once the work is done.
///
/// Call [`terminate`](ThreadPool::terminate) before dropping to cancel queued tasks
/// instead of running them (Python's `terminate()` then `join()`).
pub struct ThreadPool {
    registry: Arc<Registry>,
    /// Where the panics of [`spawn`](ThreadPool::spawn)ed closures go.
    panic_handler: Option<PanicHandler>,
}

impl ThreadPool {
    /// A pool of `num_threads` workers with default settings.
    ///
    /// # Errors
    ///
    /// Zero threads, more than the supported maximum (65535), or an OS refusal to start a
    /// thread.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(3)?;
    /// assert_eq!(pool.current_num_threads(), 3);
    /// assert!(parpool::ThreadPool::new(0).unwrap_err().is_zero_threads());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn new(num_threads: usize) -> Result<ThreadPool, ThreadPoolBuildError> {
        ThreadPoolBuilder::new().num_threads(num_threads).build()
    }

    /// A builder for a pool with a thread count, thread names or a stack size.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::builder()
    ///     .num_threads(2)
    ///     .thread_name(|i| format!("worker-{i}"))
    ///     .build()?;
    /// let name = pool.install(|| std::thread::current().name().map(str::to_owned));
    /// assert!(name.unwrap().starts_with("worker-"));
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::new()
    }

    /// The global pool, started on first use with [`PARPOOL_NUM_THREADS`](NUM_THREADS_ENV)
    /// threads, or one per available CPU
    /// ([`std::thread::available_parallelism`], which respects cgroup quotas and CPU
    /// affinity). Free functions (`join`, `scope`, `par_map`, ...) called outside any pool
    /// run here.
    ///
    /// # Panics
    ///
    /// If `PARPOOL_NUM_THREADS` is set to something other than a positive integer, or the OS
    /// refuses to start the threads. Use [`ThreadPoolBuilder::build_global`] to handle these
    /// as errors.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::global();
    /// assert!(pool.current_num_threads() >= 1);
    /// ```
    pub fn global() -> &'static ThreadPool {
        GLOBAL_POOL.get_or_init(|| {
            ThreadPoolBuilder::new()
                .build()
                .unwrap_or_else(|error| panic!("parpool: cannot start the global pool: {error}"))
        })
    }

    /// Runs `op` on this pool and returns its result; `join`, `scope` and the map family
    /// called inside `op` use this pool. If the current thread is already one of its
    /// workers, `op` runs right here. A panic in `op` is re-raised in the caller.
    ///
    /// Called on a worker of another pool, that worker waits as in
    /// [`Task::wait`](crate::Task::wait): by running its own pool's jobs, at most 16 waits
    /// deep on one thread, then on a relay that takes the worker's place with a fresh stack
    /// (`op` must run on this pool, so unlike a task it is never run inline on the waiting
    /// worker). So `other.install(|| pool.submit(f).get())` on a worker of `pool` ends at
    /// any depth, even on a one-thread `pool`: `f` runs on the worker, or its relay.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let index = pool.install(|| parpool::current_thread_index());
    /// assert!(index.unwrap() < 2);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn install<OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce() -> R + Send,
        R: Send,
    {
        self.registry.in_worker(|_| op())
    }

    /// Runs `a` and `b`, potentially in parallel, on this pool; see [`join`](crate::join).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let (sum, product) = pool.join(|| (1..=10).sum::<u32>(), || (1..=10).product::<u32>());
    /// assert_eq!((sum, product), (55, 3_628_800));
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn join<A, B, RA, RB>(&self, a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        self.install(|| join(a, b))
    }

    /// Creates a scope on this pool; see [`scope`](crate::scope).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let hits = AtomicUsize::new(0);
    /// pool.scope(|s| {
    ///     for _ in 0..10 {
    ///         s.spawn(|_| { hits.fetch_add(1, Ordering::Relaxed); });
    ///     }
    /// });
    /// assert_eq!(hits.into_inner(), 10);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn scope<'scope, OP, R>(&self, op: OP) -> R
    where
        OP: FnOnce(&Scope<'scope>) -> R + Send,
        R: Send,
    {
        self.install(|| scope(op))
    }

    /// The number of worker threads.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(3)?;
    /// assert_eq!(pool.current_num_threads(), 3);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn current_num_threads(&self) -> usize {
        self.registry.num_threads()
    }

    /// The index of the current thread in this pool (`0..current_num_threads()`), or `None`
    /// if the current thread is not one of its workers.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(2)?;
    /// assert_eq!(pool.current_thread_index(), None);
    /// assert!(pool.install(|| pool.current_thread_index()).is_some());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn current_thread_index(&self) -> Option<usize> {
        WorkerThread::current()
            .filter(|worker| std::ptr::eq(worker.registry(), &*self.registry))
            .map(WorkerThread::index)
    }

    /// Python's `terminate()`, as far as threads allow: cancels every submitted task that
    /// has not started, now or later (their `get` reports
    /// [`is_cancelled`](crate::TaskError::is_cancelled) and their closures are dropped
    /// unrun). Work that is running cannot be interrupted safely and finishes; `install`,
    /// `join` and `scope` keep working. Drop the pool afterwards to wait for the threads to
    /// exit (Python's `join()`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let (release, gate) = mpsc::channel::<()>();
    /// let (started, has_started) = mpsc::channel();
    /// let running = pool.submit(move || {
    ///     started.send(()).unwrap();
    ///     gate.recv().unwrap()
    /// });
    /// let queued = pool.submit(|| 42);
    /// has_started.recv().unwrap(); // `running` occupies the only worker
    /// pool.terminate();
    /// release.send(()).unwrap();
    /// assert!(running.get().is_ok());
    /// assert!(queued.get().unwrap_err().is_cancelled());
    /// assert!(pool.submit(|| 1).get().unwrap_err().is_cancelled());
    /// drop(pool); // waits for the workers to exit
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn terminate(&self) {
        self.registry.cancel_pending_tasks();
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl ThreadPool {
    /// Runs `f` on the pool, fire-and-forget (rayon's `spawn`): no handle, so nothing waits
    /// for it and no value comes back. A panic in `f` goes to the
    /// [`panic_handler`](ThreadPoolBuilder::panic_handler), else it is reported like a
    /// thread's (the panic hook prints it) and the worker goes on. Dropping the pool runs
    /// spawned closures first; after [`terminate`](ThreadPool::terminate) queued ones are
    /// dropped unrun, like queued tasks.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let pool = parpool::ThreadPool::new(2)?;
    /// let (sender, results) = mpsc::channel();
    /// for i in 0..4u64 {
    ///     let sender = sender.clone();
    ///     pool.spawn(move || sender.send(i * i).unwrap());
    /// }
    /// let mut squares: Vec<u64> = results.iter().take(4).collect();
    /// squares.sort();
    /// assert_eq!(squares, [0, 1, 4, 9]);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let handler = self.panic_handler.clone();
        let job = move |registry: &Registry| {
            if registry.cancels_pending_tasks() {
                let _ = catch(move || drop(f));
                return;
            }
            let Err(payload) = catch(f) else { return };
            if crate::watch::stopped_by(payload.as_ref()).is_some() {
                // A watched call in `f` was stopped: not a panic, and nobody waits to be
                // told (no handle).
                let _ = catch(move || drop(payload));
                return;
            }
            match handler {
                Some(handler) => {
                    let abort = AbortIfPanic;
                    handler(payload);
                    std::mem::forget(abort);
                }
                // Reported by the panic hook already, as a thread's panic is; the payload's
                // `Drop` is user code.
                None => {
                    let _ = catch(move || drop(payload));
                }
            }
        };
        // False only for a registry no handle refers to, which `self` is not.
        let spawned = self.registry.spawn_counted(job);
        debug_assert!(spawned);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.registry.terminate();
        if WorkerThread::current().is_some() {
            // Dropped on a worker of any pool: joining could wait on a thread that waits on
            // this one (this pool's own worker; or, dropped inside `b.install(..)` called
            // from one of this pool's tasks, the worker blocked in that `install`). The
            // threads exit on their own once their work is done.
            return;
        }
        self.registry.join_workers();
    }
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPool")
            .field("num_threads", &self.registry.num_threads())
            .finish()
    }
}

static GLOBAL_POOL: OnceLock<ThreadPool> = OnceLock::new();

/// The registry that free functions run on: the current worker's pool, else the global one.
pub(crate) fn current_registry() -> &'static Registry {
    match WorkerThread::current() {
        Some(worker) => worker.registry(),
        None => &ThreadPool::global().registry,
    }
}

/// [`current_registry`] as an `Arc`, for work that outlives the call (a map's window).
pub(crate) fn current_registry_arc() -> Arc<Registry> {
    match WorkerThread::current() {
        Some(worker) => Arc::clone(worker.registry_arc()),
        None => Arc::clone(&ThreadPool::global().registry),
    }
}

/// Whether the current thread is a worker of some pool.
pub(crate) fn on_worker() -> bool {
    WorkerThread::current().is_some()
}

/// Whether the current thread is a worker of pool `registry` whose waits have reached the
/// nesting limit: a wait there for one of that pool's queued tasks claims the task and runs
/// it inline instead of blocking (see "Waiting inside a worker" in `latch.rs`).
pub(crate) fn waits_inline_on(registry: RegistryId) -> bool {
    WorkerThread::current().is_some_and(|worker| {
        worker.registry().id() == registry && !worker.may_run_jobs_while_waiting()
    })
}

/// Whether the current thread is a worker whose peers want work: split now (see
/// `WorkerThread::peers_want_work`).
#[inline]
pub(crate) fn peers_want_work() -> bool {
    WorkerThread::current().is_some_and(WorkerThread::peers_want_work)
}

/// The number of threads of the current pool: the pool whose worker is running this code,
/// else the global pool.
///
/// # Examples
///
/// ```
/// let pool = parpool::ThreadPool::new(3)?;
/// assert_eq!(pool.install(parpool::current_num_threads), 3);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
pub fn current_num_threads() -> usize {
    current_registry().num_threads()
}

/// The index of the current thread in its pool, or `None` outside any pool.
///
/// # Examples
///
/// ```
/// assert_eq!(parpool::current_thread_index(), None);
/// let pool = parpool::ThreadPool::new(2)?;
/// assert!(pool.install(parpool::current_thread_index).unwrap() < 2);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
pub fn current_thread_index() -> Option<usize> {
    WorkerThread::current().map(WorkerThread::index)
}

/// Settings for a [`ThreadPool`].
///
/// # Examples
///
/// ```
/// let pool = parpool::ThreadPool::builder()
///     .num_threads(4)
///     .stack_size(4 << 20)
///     .build()?;
/// assert_eq!(pool.current_num_threads(), 4);
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
#[derive(Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ThreadPoolBuilder {
    num_threads: Option<usize>,
    thread_name: Option<Box<dyn FnMut(usize) -> String>>,
    stack_size: Option<usize>,
    start_handler: Option<ThreadHandler>,
    exit_handler: Option<ThreadHandler>,
    panic_handler: Option<PanicHandler>,
}

/// A start or exit handler, shared by every worker of a pool.
pub(crate) type ThreadHandler = Arc<dyn Fn(usize) + Send + Sync>;

/// The handler of panics in spawned closures, shared by every spawned job of a pool.
type PanicHandler = Arc<dyn Fn(Panic) + Send + Sync>;

impl ThreadPoolBuilder {
    /// A builder with default settings: [`PARPOOL_NUM_THREADS`](NUM_THREADS_ENV) or one
    /// thread per available CPU, unnamed threads, the standard library's stack size.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPoolBuilder::new().num_threads(1).build()?;
    /// assert_eq!(pool.current_num_threads(), 1);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of worker threads; zero makes [`build`](Self::build) fail.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::builder().num_threads(2).build()?;
    /// assert_eq!(pool.current_num_threads(), 2);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn num_threads(mut self, num_threads: usize) -> Self {
        self.num_threads = Some(num_threads);
        self
    }

    /// Names worker `i` with `name(i)`.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::builder().num_threads(1).thread_name(|i| format!("cruncher-{i}")).build()?;
    /// let name = pool.install(|| std::thread::current().name().map(str::to_owned));
    /// assert_eq!(name.as_deref(), Some("cruncher-0"));
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn thread_name(mut self, name: impl FnMut(usize) -> String + 'static) -> Self {
        self.thread_name = Some(Box::new(name));
        self
    }

    /// The stack size of each worker thread, in bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// // Deep recursion on the workers needs a bigger stack than the default.
    /// fn depth(n: u32) -> u32 {
    ///     if n == 0 { 0 } else { 1 + depth(n - 1) }
    /// }
    /// let pool = parpool::ThreadPool::builder().num_threads(1).stack_size(64 << 20).build()?;
    /// assert_eq!(pool.install(|| depth(100_000)), 100_000);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Runs `handler(i)` on worker `i` when it starts, before it takes any work: per-thread
    /// setup such as pinning, thread-local buffers or a profiler hook (rayon's
    /// `start_handler`). [`current_thread_index`](crate::current_thread_index) already
    /// works inside it. A relay of worker `i` (see "Threads" in [`ThreadPool`]) runs it
    /// too, with `i`, before it first runs the worker's jobs.
    ///
    /// # Panics
    ///
    /// A panic in `handler` aborts the process (as in rayon without a panic handler): a
    /// pool with a worker whose setup failed would misbehave later in ways far harder to
    /// trace.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    ///
    /// let started = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&started);
    /// let pool = parpool::ThreadPool::builder()
    ///     .num_threads(3)
    ///     .start_handler(move |i| log.lock().unwrap().push(i))
    ///     .build()?;
    /// // Dropping the pool waits for its workers, each of which ran the handler first.
    /// drop(pool);
    /// let mut started = started.lock().unwrap().clone();
    /// started.sort();
    /// assert_eq!(started, [0, 1, 2]);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn start_handler(mut self, handler: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.start_handler = Some(Arc::new(handler));
        self
    }

    /// Runs `handler(i)` on worker `i` as it exits, after its last job: per-thread
    /// teardown (rayon's `exit_handler`); and on each relay of worker `i` as it ends, just
    /// before the worker's own. Dropping the pool waits for its workers, so every exit
    /// handler has run when `drop` returns.
    ///
    /// # Panics
    ///
    /// A panic in `handler` aborts the process, as for
    /// [`start_handler`](Self::start_handler).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let exited = Arc::new(AtomicUsize::new(0));
    /// let count = Arc::clone(&exited);
    /// let pool = parpool::ThreadPool::builder()
    ///     .num_threads(2)
    ///     .exit_handler(move |_| {
    ///         count.fetch_add(1, Ordering::SeqCst);
    ///     })
    ///     .build()?;
    /// assert_eq!(pool.install(|| 1 + 1), 2);
    /// drop(pool);
    /// assert_eq!(exited.load(Ordering::SeqCst), 2);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn exit_handler(mut self, handler: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.exit_handler = Some(Arc::new(handler));
        self
    }

    /// Runs `handler(payload)` when a closure given to [`ThreadPool::spawn`] panics
    /// (rayon's `panic_handler`), on the worker that ran it. Without one, a spawned closure's
    /// panic is reported like a thread's: the panic hook prints it (to stderr, by default)
    /// when it happens, and the worker goes on. Panics in tasks never reach the handler: they
    /// are the task's outcome. Nor does a spawned closure's call stopped by the
    /// [`Watch`](crate::Watch) it was spawned in: a stop is not a panic, and it just ends
    /// the closure.
    ///
    /// # Panics
    ///
    /// A panic in `handler` aborts the process: nothing is left to report it to.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let (sender, panics) = mpsc::channel();
    /// let sender = std::sync::Mutex::new(sender);
    /// let pool = parpool::ThreadPool::builder()
    ///     .num_threads(1)
    ///     .panic_handler(move |payload| {
    ///         let message = payload.downcast_ref::<&str>().copied().unwrap_or("?");
    ///         sender.lock().unwrap().send(message.to_owned()).unwrap();
    ///     })
    ///     .build()?;
    /// pool.spawn(|| panic!("lost"));
    /// assert_eq!(panics.recv().unwrap(), "lost");
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn panic_handler(
        mut self,
        handler: impl Fn(Box<dyn Any + Send>) + Send + Sync + 'static,
    ) -> Self {
        self.panic_handler = Some(Arc::new(handler));
        self
    }

    /// Starts the pool.
    ///
    /// # Errors
    ///
    /// Zero threads, more than 65535 (255 on 32-bit targets), an invalid
    /// `PARPOOL_NUM_THREADS` (when no count was set), a [`thread_name`](Self::thread_name)
    /// callback that panics or returns a name with a NUL byte, or an OS refusal to start a
    /// thread. A failed build leaves no thread running.
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parpool::ThreadPool::builder().num_threads(0).build().unwrap_err();
    /// assert!(error.is_zero_threads());
    /// ```
    pub fn build(mut self) -> Result<ThreadPool, ThreadPoolBuildError> {
        let panic_handler = self.panic_handler.take();
        Ok(ThreadPool {
            panic_handler,
            registry: Registry::new(self)?,
        })
    }

    /// Starts the global pool with these settings.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), and if the global pool already exists (a second call, or
    /// after anything used it).
    ///
    /// # Examples
    ///
    /// ```
    /// // In a fresh process this would set the global pool; here something may already
    /// // have started it, and a second call is always an error.
    /// let _ = parpool::ThreadPool::builder().num_threads(2).build_global();
    /// let again = parpool::ThreadPool::builder().num_threads(2).build_global();
    /// assert!(again.unwrap_err().is_global_already_initialized());
    /// ```
    pub fn build_global(self) -> Result<(), ThreadPoolBuildError> {
        if GLOBAL_POOL.get().is_some() {
            return Err(ThreadPoolBuildError::global_already_initialized());
        }
        let pool = self.build()?;
        // If another thread won the race, `pool` comes back and is dropped (joined) here.
        GLOBAL_POOL
            .set(pool)
            .map_err(|_| ThreadPoolBuildError::global_already_initialized())
    }

    /// The thread count this builder resolves to.
    pub(crate) fn resolved_num_threads(&self) -> Result<usize, ThreadPoolBuildError> {
        let n = match self.num_threads {
            Some(n) => n,
            None => default_num_threads()?,
        };
        if n == 0 {
            return Err(ThreadPoolBuildError::zero_threads());
        }
        if n > sleep::THREADS_MAX {
            return Err(ThreadPoolBuildError::too_many_threads(
                n,
                sleep::THREADS_MAX,
            ));
        }
        Ok(n)
    }

    pub(crate) fn thread_name_for(&mut self, index: usize) -> Option<String> {
        self.thread_name.as_mut().map(|name| name(index))
    }

    pub(crate) fn configured_stack_size(&self) -> Option<usize> {
        self.stack_size
    }

    /// The start and exit handlers, for one worker.
    pub(crate) fn handlers(&self) -> (Option<ThreadHandler>, Option<ThreadHandler>) {
        (self.start_handler.clone(), self.exit_handler.clone())
    }
}

impl fmt::Debug for ThreadPoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPoolBuilder")
            .field("num_threads", &self.num_threads)
            .field("thread_name", &self.thread_name.as_ref().map(|_| "<fn>"))
            .field("stack_size", &self.stack_size)
            .field(
                "start_handler",
                &self.start_handler.as_ref().map(|_| "<fn>"),
            )
            .field("exit_handler", &self.exit_handler.as_ref().map(|_| "<fn>"))
            .field(
                "panic_handler",
                &self.panic_handler.as_ref().map(|_| "<fn>"),
            )
            .finish()
    }
}

/// `PARPOOL_NUM_THREADS` if set, else `available_parallelism` (1 if even that fails).
fn default_num_threads() -> Result<usize, ThreadPoolBuildError> {
    match std::env::var(NUM_THREADS_ENV) {
        Ok(value) if !value.trim().is_empty() => match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ThreadPoolBuildError::invalid_env(value)),
        },
        Ok(_) | Err(std::env::VarError::NotPresent) => {
            Ok(std::thread::available_parallelism().map_or(1, usize::from))
        }
        Err(std::env::VarError::NotUnicode(value)) => Err(ThreadPoolBuildError::invalid_env(
            value.to_string_lossy().into_owned(),
        )),
    }
}
