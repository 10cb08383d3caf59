//! The workers of one pool: their deques, the injector, the worker loop and stealing.
//!
//! # Where work lives
//!
//! - Each worker owns a crossbeam-deque [`Worker`] (it pushes and pops at the back, LIFO)
//!   whose [`Stealer`] the other workers take from at the front (FIFO, so thieves get the
//!   oldest, largest pieces).
//! - Work from outside the pool enters through the [`Injector`].
//! - **Private join frames.** The `b` half of a `join` is first recorded in the worker's
//!   private frame list (a plain `Vec`, no atomics) and only *published* to the deque when
//!   someone could take it: right away for the first [`EAGER_JOINS`] joins of each job the
//!   worker takes on (the top of its divide-and-conquer tree), and after that only when
//!   another worker is idle, oldest frame first. A `join` that nobody needs to share
//!   therefore costs a `Vec` push and pop and one relaxed load, not a deque push with its
//!   fences. A worker that has to wait (for a stolen half, a scope, a task) publishes all of
//!   its private frames first, so that while it is blocked every frame it holds can be
//!   taken (by an idle worker, or by the waiting worker itself, which runs its own deque
//!   first). The `b` halves of the inline joins on its stack (below) are no frames: they
//!   stay hidden until their `a` returns.
//! - **Inline joins.** A worker keeps at most [`PRIVATE_FRAMES`] private frames. A `join`
//!   made while it holds that many records nothing: it runs `a` and then `b` as plain calls,
//!   after a thread-local read, a compare of two counters and the idle check. The frames it
//!   holds are older, hence in a divide-and-conquer tree larger, than anything the new
//!   `join` could offer. The idle check still runs at every `join`: when another worker is
//!   idle, the oldest private frame is published and the `join` at hand takes the freed
//!   place (chili keeps the top three of its job queue in the same way, and shares them on
//!   a heartbeat instead). The freed place goes to that `join`, not to the older inline
//!   joins between the frames and it, whose `b` halves were never recorded: once the four
//!   frames a worker held when it went inline have been handed out, idle workers get the
//!   halves of the `join`s it makes next, deeper (smaller) than those hidden above them.
//!   fib(25) with a `join` at every level costs 40 instructions per `join` on one thread
//!   (callgrind) against 60 when every `join` made a frame, and 19 for plain recursion.
//!   The cost: a `b` half made while four older ones are private never moves to another
//!   worker, only the `join`s inside it can; a tree whose upper halves are small and whose
//!   large halves lie deeper shares less than it would with a frame per `join`. The worst
//!   shape is a spine `join(recurse, leaf)`: every leaf is such a `b` half, and the worker
//!   makes no `join` while it runs them, so nothing is handed out. 400 levels with ~10 µs
//!   leaves (`shapes/spine_a_400` in `benches/map.rs`) run at 0.95–1.10× sequential time
//!   on two threads, against 0.52–0.60× for rayon (interleaved rounds, loaded machine);
//!   `a_spines_deep_b_halves_move_to_an_idle_worker` in `tests/pool.rs` is the (ignored)
//!   reproducer. Recording every `join` instead (an intrusive list of frames on the stack,
//!   the idle check where a `join` returns) takes that spine to 0.71–0.82× sequential time
//!   but costs 49 instructions per `join` against 40 (fib(25), one thread, callgrind) and
//!   about 20 % more time for fib(30) on two threads. Nor can a
//!   wait inside `a` hand such a `b` to anyone: a `join` whose `a` waits for something
//!   only its `b` does (an `install` into another pool that waits for it, say) hangs when
//!   it runs inline. The docs of `join` forbid that, as rayon's do.
//!
//! Published frames always form a prefix of the frame list (oldest first), which keeps the
//! deque's order consistent with the stack: when a `join` returns from `a`, its frame is the
//! newest published one, so popping the deque either returns it (taken back, run inline) or
//! shows that a thief took it.
//!
//! # Shutdown
//!
//! A registry counts its *terminate references*: one for the [`ThreadPool`](super::ThreadPool)
//! handle, one per submitted task and per map drainer job (`map/window.rs`) not yet
//! finished. Blocking operations (`install`, `join`,
//! `scope`) need none: their caller holds the pool while they run. When the count reaches
//! zero every worker's terminate latch is set; a worker whose latch is set has, by then,
//! nothing left to run, leaves its loop and exits. The steps of dropping a pool are in the
//! docs of [`ThreadPool`](super::ThreadPool).

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crossbeam_deque::{Injector, Steal, Stealer, Worker};

use super::backoff::{THREAD_SPIN_ROUNDS, snooze};
use super::job::{AbortIfPanic, HeapJob, JobRef, StackJob, catch, resume};
use super::latch::{CoreLatch, Wait, WaitLatch};
use super::relay::Relays;
use super::sleep::Sleep;
use super::{ThreadHandler, ThreadPoolBuildError, ThreadPoolBuilder};
use crate::sync::{AtomicUsize, Mutex, Ordering, lock};
use crate::watch::Active;

/// The first joins of each job a worker takes on publish their `b` half at once instead of
/// waiting for an idle worker to show up. They are the top of the job's divide-and-conquer
/// tree and carry the largest pieces; publishing them costs a few deque pushes per job and
/// means a coarse `join(long_a, long_b)` runs in parallel even if no worker was idle at the
/// moment it started. (Counting by frame depth instead publishes far too often: a `b` half
/// run inline starts its own joins at its parent's depth, so fib(30) published ~3000 frames
/// per run for 5–7 steals; with a per-job budget of 4 it publishes ~4 per steal.)
const EAGER_JOINS: u32 = 4;

/// How many private (unpublished) join frames a worker keeps; a `join` made while it holds
/// this many runs its halves as plain calls (see "Inline joins" in the module docs). The
/// count barely changes the cost of a `join` (only the top levels of a path make frames);
/// it is how many halves an idle worker can be handed, oldest first, before the busy one
/// reaches its next `join`. As many as the eager joins of a job, so a thief that takes the
/// oldest of them finds the next ones ready.
const PRIVATE_FRAMES: usize = 4;

/// How many deques a search round looks at before the last one (which looks at all).
///
/// A worker searches [`ROUNDS_UNTIL_SLEEPY`](super::sleep::ROUNDS_UNTIL_SLEEPY) rounds
/// before it announces sleepiness; with every deque in every round, each idle transition
/// cost `32 × threads` probes per worker, and starting a pool (every worker idle at once)
/// was quadratic: build(1,000) took 0.44 s, build(4,000) 6.9 s. Pools of up to 9 threads
/// still look at every deque in every round.
const STEAL_VICTIMS_PER_ROUND: usize = 8;

/// How many waits that run other jobs may nest on one thread's stack (beyond the main
/// loop's, or a relay's own); a wait that would be deeper runs the queued task it waits
/// for inline, or, waiting for work it forked (`join`, `scope`), runs only its own jobs,
/// or else hops to a relay, which goes on running the pool's jobs on a fresh stack (see
/// "Waiting inside a worker" in `latch.rs`, and `relay.rs`).
///
/// Each level costs the pool's frames (a few hundred bytes in release builds: the default
/// 2 MiB stack overflowed between 3,000 and 6,000 nested task waits) plus the frames of the
/// job that waits, so 16 levels stay far inside any stack a job could already use, and a
/// waiting task is held up by at most 16 later jobs on its stack before its own wait can
/// return. Deeper nesting buys no parallelism (it only stacks waiters on one thread), while
/// a lower limit would hop (two thread hand-offs) whenever a task waits for a sibling task
/// a few levels down.
pub(crate) const MAX_NESTED_WAITS: u32 = 16;

/// A pool's identity, to tell whether the current thread is one of its workers without
/// holding a reference to the pool. It is the registry's address: a registry allocated where
/// a freed one was would share it, but a registry is freed only after every counted job
/// (every task) has run (see "Shutdown"), so nobody still waits for one of its queued jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegistryId(usize);

/// Jobs forked for one waiter that its own deque cannot hold: a scope's spawns made off its
/// pool (see "Spawning from outside the pool" in `scope.rs`). Created by the first such
/// spawn; each job is also announced to the pool by a *pump* job that holds this queue and
/// runs one job from it on whichever worker takes the pump, so the jobs run in parallel as
/// usual, and the waiter beyond the nesting limit, which takes nothing from the pool's
/// queues, finds them here.
#[derive(Debug, Default)]
pub(crate) struct ForkedJobs(OnceLock<Arc<Injector<JobRef>>>);

impl ForkedJobs {
    /// Queues `job`; returns the queue, for the pump that announces it.
    pub(crate) fn push(&self, job: JobRef) -> Arc<Injector<JobRef>> {
        let queue = self.0.get_or_init(Arc::default);
        queue.push(job);
        Arc::clone(queue)
    }

    fn pop(&self) -> Option<JobRef> {
        self.0.get().and_then(|queue| pop(queue))
    }

    fn is_empty(&self) -> bool {
        self.0.get().is_none_or(|queue| queue.is_empty())
    }
}

/// Takes one job from `queue`, if it holds any.
pub(crate) fn pop(queue: &Injector<JobRef>) -> Option<JobRef> {
    loop {
        match queue.steal() {
            Steal::Success(job) => return Some(job),
            Steal::Empty => return None,
            Steal::Retry => {}
        }
    }
}

/// The shared state of one pool.
#[derive(Debug)]
pub(crate) struct Registry {
    thread_infos: Vec<ThreadInfo>,
    injector: Injector<JobRef>,
    sleep: Sleep,
    /// See "Shutdown" in the module docs.
    terminate_count: AtomicUsize,
    /// Set by `ThreadPool::terminate`: tasks that have not started yet are cancelled.
    cancel_pending: AtomicBool,
    /// True until `Registry::new` has started every worker and returns: no job exists
    /// before then (see `WorkerThread::sleep_at_start`).
    building: AtomicBool,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Deques looked at while stealing, for the startup-cost test.
    #[cfg(test)]
    probes: AtomicUsize,
}

#[derive(Debug)]
struct ThreadInfo {
    stealer: Stealer<JobRef>,
    /// Set once the registry's terminate count reaches zero.
    terminate: CoreLatch,
}

impl Registry {
    /// Starts the workers described by `builder`.
    ///
    /// Everything that can fail in user code (the thread names) is settled before the first
    /// thread starts; if the OS then refuses a thread, the workers already started are
    /// stopped and joined. A failed build leaves no thread behind.
    pub(crate) fn new(
        mut builder: ThreadPoolBuilder,
    ) -> Result<Arc<Registry>, ThreadPoolBuildError> {
        let n_threads = builder.resolved_num_threads()?;
        let mut names = Vec::with_capacity(n_threads);
        for index in 0..n_threads {
            names.push(thread_name(&mut builder, index)?);
        }
        let workers: Vec<Worker<JobRef>> = (0..n_threads).map(|_| Worker::new_lifo()).collect();
        let registry = Arc::new(Registry {
            thread_infos: workers
                .iter()
                .map(|w| ThreadInfo {
                    stealer: w.stealer(),
                    terminate: CoreLatch::new(),
                })
                .collect(),
            injector: Injector::new(),
            sleep: Sleep::new(n_threads),
            terminate_count: AtomicUsize::new(1),
            cancel_pending: AtomicBool::new(false),
            building: AtomicBool::new(true),
            handles: Mutex::new(Vec::with_capacity(n_threads)),
            #[cfg(test)]
            probes: AtomicUsize::new(0),
        });
        for ((index, worker), name) in workers.into_iter().enumerate().zip(names) {
            let (start_handler, exit_handler) = builder.handlers();
            let setup = WorkerSetup {
                name,
                stack_size: builder.configured_stack_size(),
                start_handler,
                exit_handler,
            };
            let thread = setup.thread();
            let for_thread = Arc::clone(&registry);
            match thread.spawn(move || main_loop(for_thread, index, worker, setup)) {
                Ok(handle) => lock(&registry.handles).push(handle),
                Err(error) => {
                    // Stop the workers already started; they have no work yet.
                    registry.terminate();
                    registry.join_workers();
                    return Err(ThreadPoolBuildError::spawn(error));
                }
            }
        }
        // Release: pairs with a starting worker's acquire load after its announcement
        // (see `WorkerThread::sleep_at_start`); every job is published after this store.
        registry.building.store(false, Ordering::Release);
        Ok(registry)
    }

    pub(crate) fn num_threads(&self) -> usize {
        self.thread_infos.len()
    }

    /// This pool's identity, to compare with the current worker's.
    pub(crate) fn id(&self) -> RegistryId {
        RegistryId(std::ptr::from_ref(self).addr())
    }

    /// Pushes a job from outside the pool (or from a worker of another pool).
    pub(crate) fn inject(&self, job: JobRef) {
        let queue_was_empty = self.injector.is_empty();
        self.injector.push(job);
        self.sleep.new_jobs(1, queue_was_empty);
    }

    /// Pushes a job onto the current worker's deque if it belongs to this registry, else
    /// injects it.
    pub(crate) fn push_or_inject(&self, job: JobRef) {
        match WorkerThread::current() {
            Some(worker) if std::ptr::eq(worker.registry(), self) => worker.push(job),
            _ => self.inject(job),
        }
    }

    pub(crate) fn has_injected_job(&self) -> bool {
        !self.injector.is_empty()
    }

    fn pop_injected_job(&self) -> Option<JobRef> {
        pop(&self.injector)
    }

    /// Runs `op` on a worker of this registry and returns its result: directly if the
    /// current thread is one, else by injecting it and waiting (a worker of another pool
    /// keeps running its own pool's jobs meanwhile; any other thread spins, then parks).
    /// A panic in `op` is re-raised here.
    pub(crate) fn in_worker<R: Send>(&self, op: impl FnOnce(&WorkerThread) -> R + Send) -> R {
        match WorkerThread::current() {
            Some(worker) if std::ptr::eq(worker.registry(), self) => op(worker),
            _ => self.in_worker_external(op),
        }
    }

    #[cold]
    fn in_worker_external<R: Send>(&self, op: impl FnOnce(&WorkerThread) -> R + Send) -> R {
        let job = StackJob::new(
            || op(WorkerThread::current().expect("injected job ran off the pool")),
            WaitLatch::for_current_thread(Wait::Unrelated),
        );
        // SAFETY: `job` stays in this frame until its latch is set: `wait` returns only then.
        self.inject(unsafe { job.as_job_ref() });
        job.latch.wait();
        // SAFETY: the latch is set.
        resume(unsafe { job.into_outcome() })
    }

    /// Runs `job` on this pool as a *counted* job (a task, a map drainer): it holds a
    /// terminate reference until it has run, so dropping the pool waits for it (see
    /// "Shutdown"). `job` runs on a worker and receives the registry. Returns false, with
    /// `job` dropped unrun, if the pool has terminated already (its handle is gone and every
    /// counted job finished).
    pub(crate) fn spawn_counted(&self, job: impl FnOnce(&Registry) + Send + 'static) -> bool {
        // SAFETY: a 'static job borrows nothing that could end before it runs.
        unsafe { self.spawn_counted_unchecked(job) }
    }

    /// [`Registry::spawn_counted`] for a job that borrows.
    ///
    /// # Safety
    ///
    /// Everything `job` borrows must outlive its run (the caller waits for it, or the
    /// borrow is only used while the caller is known to be alive).
    pub(crate) unsafe fn spawn_counted_unchecked(
        &self,
        job: impl FnOnce(&Registry) + Send,
    ) -> bool {
        if !self.try_increment_terminate_count() {
            return false;
        }
        let job = move || {
            let worker = WorkerThread::current().expect("a counted job ran off its pool");
            job(worker.registry());
            // The reference taken above; the worker's own `Arc` keeps the registry alive.
            worker.registry().terminate();
        };
        // SAFETY: forwarded from this function's contract.
        let job = unsafe { HeapJob::into_job_ref(job) };
        self.push_or_inject(job);
        true
    }

    /// One more terminate reference, unless the pool has already terminated (its handle is
    /// gone and every task finished): then false, and nothing will run on it any more.
    fn try_increment_terminate_count(&self) -> bool {
        let mut count = self.terminate_count.load(Ordering::Relaxed);
        while count != 0 {
            match self.terminate_count.compare_exchange_weak(
                count,
                count + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => count = actual,
            }
        }
        false
    }

    /// Drops one terminate reference; the last one tells every worker to exit.
    pub(crate) fn terminate(&self) {
        // AcqRel: everything done under the dropped reference happens before the workers
        // see the terminate latch.
        if self.terminate_count.fetch_sub(1, Ordering::AcqRel) == 1 {
            for (index, info) in self.thread_infos.iter().enumerate() {
                info.terminate.set_and_notify(self, index);
            }
        }
    }

    /// Asks tasks that have not started to cancel themselves (`ThreadPool::terminate`).
    pub(crate) fn cancel_pending_tasks(&self) {
        self.cancel_pending.store(true, Ordering::Relaxed);
    }

    pub(crate) fn cancels_pending_tasks(&self) -> bool {
        self.cancel_pending.load(Ordering::Relaxed)
    }

    /// Waits for every worker thread to exit (after the last terminate reference went).
    pub(crate) fn join_workers(&self) {
        let handles = std::mem::take(&mut *lock(&self.handles));
        for handle in handles {
            // A worker thread never unwinds (its loop aborts on an internal panic, and user
            // panics are caught), so `join` cannot return an error worth reporting.
            let _ = handle.join();
        }
    }

    pub(crate) fn notify_worker_latch_is_set(&self, index: usize) {
        self.sleep.notify_worker_latch_is_set(index);
    }
}

/// The name of worker `index` from the builder's callback: a panic in it, or a NUL byte in
/// the name (which `std::thread` cannot pass to the OS), is an error.
fn thread_name(
    builder: &mut ThreadPoolBuilder,
    index: usize,
) -> Result<Option<String>, ThreadPoolBuildError> {
    match catch(|| builder.thread_name_for(index)) {
        Ok(Some(name)) if name.contains('\0') => Err(ThreadPoolBuildError::thread_name(
            index,
            format!("the name {name:?} contains a NUL byte"),
        )),
        Ok(name) => Ok(name),
        Err(payload) => {
            let message = super::job::panic_message(payload.as_ref()).unwrap_or("a panic");
            Err(ThreadPoolBuildError::thread_name(
                index,
                format!("the thread_name callback panicked: {message}"),
            ))
        }
    }
}

/// What the threads of one worker start with: the worker's own thread, and its relays
/// (`relay.rs`), which carry its name, its stack size and its handlers.
pub(crate) struct WorkerSetup {
    name: Option<String>,
    stack_size: Option<usize>,
    start_handler: Option<ThreadHandler>,
    exit_handler: Option<ThreadHandler>,
}

impl WorkerSetup {
    /// A thread builder with the worker's name and stack size.
    pub(crate) fn thread(&self) -> std::thread::Builder {
        let mut thread = std::thread::Builder::new();
        if let Some(name) = &self.name {
            thread = thread.name(name.clone());
        }
        if let Some(size) = self.stack_size {
            thread = thread.stack_size(size);
        }
        thread
    }

    /// The start and exit handlers, for a relay.
    pub(crate) fn handlers(&self) -> (Option<ThreadHandler>, Option<ThreadHandler>) {
        (self.start_handler.clone(), self.exit_handler.clone())
    }
}

impl std::fmt::Debug for WorkerSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerSetup")
            .field("name", &self.name)
            .field("stack_size", &self.stack_size)
            .finish_non_exhaustive()
    }
}

/// The worker's loop: run jobs until the terminate latch is set. The start and exit
/// handlers run on either side of it, with the worker registered (so
/// `current_thread_index` works in them), under the abort guard: a panic in a handler
/// aborts the process rather than leave a pool with a worker missing its setup. Before
/// its exit handler the worker ends its relays (`relay.rs`), which are all idle by then:
/// a hop lasts one wait, and the loop's own wait has returned.
fn main_loop(registry: Arc<Registry>, index: usize, deque: Worker<JobRef>, setup: WorkerSetup) {
    let worker = WorkerThread {
        deque,
        frames: UnsafeCell::new(Vec::new()),
        published: Cell::new(0),
        eager_joins: Cell::new(EAGER_JOINS),
        waits: Cell::new(0),
        hops: Cell::new(0),
        relays: Relays::default(),
        index,
        rng: Cell::new(seed(index)),
        registry,
        setup,
    };
    WORKER_THREAD.with(|current| current.set(&raw const worker));
    // Internal panics abort; user panics are caught inside the jobs.
    let abort = AbortIfPanic;
    if let Some(handler) = &worker.setup.start_handler {
        handler(index);
    }
    let terminate = &worker.registry.thread_infos[index].terminate;
    worker.sleep_at_start(terminate);
    worker.wait_until(terminate, Wait::Unrelated, None);
    debug_assert!(worker.deque.is_empty(), "worker exits with queued jobs");
    worker.relays.stop();
    if let Some(handler) = &worker.setup.exit_handler {
        handler(index);
    }
    std::mem::forget(abort);
    WORKER_THREAD.with(|current| current.set(std::ptr::null()));
}

fn seed(index: usize) -> u64 {
    // Any non-zero odd seed works for xorshift; spread the indices.
    (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1
}

thread_local! {
    /// The worker running on this thread, if any. Set at the start of `main_loop`, cleared
    /// before the `WorkerThread` (a local of `main_loop`) is dropped.
    static WORKER_THREAD: Cell<*const WorkerThread> = const { Cell::new(std::ptr::null()) };
}

/// The per-thread state of a worker; only ever used on its own thread.
#[derive(Debug)]
pub(crate) struct WorkerThread {
    deque: Worker<JobRef>,
    /// Private join frames, oldest first; see "Private join frames" in the module docs.
    frames: UnsafeCell<Vec<JobRef>>,
    /// How many of the oldest frames have been published to the deque.
    published: Cell<usize>,
    /// Joins left that publish eagerly; refilled when the worker takes on a new job.
    eager_joins: Cell<u32>,
    /// How many [`WorkerThread::wait_until`] frames are on the stack of the thread that
    /// holds the worker now (the main loop's, or a relay's own loop, included); see
    /// "Waiting inside a worker" in `latch.rs`.
    waits: Cell<u32>,
    /// How many relays hold the worker above its own thread: 0 on its own thread, `k` on
    /// the relay of its `k`-th nested hop (see `relay.rs`).
    hops: Cell<usize>,
    /// The worker's relays, by hop depth.
    relays: Relays,
    index: usize,
    rng: Cell<u64>,
    registry: Arc<Registry>,
    setup: WorkerSetup,
}

/// Where the `b` half of a `join` is when `a` returns.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Never published: run it inline.
    Private,
    /// Published to the deque: take it back or wait for whoever took it.
    Published,
}

impl WorkerThread {
    /// The worker running on the current thread, if the thread is a worker.
    #[inline]
    pub(crate) fn current() -> Option<&'static WorkerThread> {
        let ptr = WORKER_THREAD.with(Cell::get);
        // SAFETY: a non-null pointer was set by `main_loop` of this very thread and points
        // at its `WorkerThread`, which lives until `main_loop` clears the pointer; all code
        // that can observe it runs inside that loop on this thread. Or it was set by
        // `act_as` on a relay, for as long as the relay holds the worker: the worker's own
        // thread is parked inside that loop meanwhile (see `relay.rs`), so the
        // `WorkerThread` lives, and only this thread uses it. `WorkerThread` is not `Sync`,
        // so the reference cannot leave the thread.
        unsafe { ptr.as_ref() }
    }

    /// Runs `f` with this worker as the current thread's worker (on a relay).
    ///
    /// # Safety
    ///
    /// The calling thread holds the worker for the whole call: every other thread that
    /// could use it (its own, and the relays of lower hops) is parked until the call is
    /// over, and the hand-over to and from this thread synchronises (`relay.rs`).
    pub(crate) unsafe fn act_as<R>(&self, f: impl FnOnce(&WorkerThread) -> R) -> R {
        /// Clears the current worker again, also when `f` unwinds (it cannot: the relay
        /// runs under an abort guard).
        struct Leave;
        impl Drop for Leave {
            fn drop(&mut self) {
                WORKER_THREAD.with(|current| current.set(std::ptr::null()));
            }
        }
        debug_assert!(
            WorkerThread::current().is_none(),
            "a relay is no worker itself"
        );
        WORKER_THREAD.with(|current| current.set(std::ptr::from_ref(self)));
        let leave = Leave;
        let result = f(self);
        drop(leave);
        result
    }

    /// The settings the worker's threads start with.
    pub(crate) fn setup(&self) -> &WorkerSetup {
        &self.setup
    }

    #[inline]
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    #[inline]
    pub(crate) fn registry_arc(&self) -> &Arc<Registry> {
        &self.registry
    }

    #[inline]
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Pushes a job on the own deque and wakes a sleeper if one is needed.
    #[inline]
    pub(crate) fn push(&self, job: JobRef) {
        let queue_was_empty = self.deque.is_empty();
        self.deque.push(job);
        self.registry.sleep.new_jobs(1, queue_was_empty);
    }

    /// Whether this worker should split its work: another worker is idle, and whatever this
    /// one published before has been taken (so splits do not pile up while a sleeper wakes).
    #[inline]
    pub(crate) fn peers_want_work(&self) -> bool {
        self.registry.sleep.has_idle_workers() && self.deque.is_empty()
    }

    /// Whether a new `join` records its `b` half as a frame (true) or runs both halves as
    /// plain calls (false): the worker already holds [`PRIVATE_FRAMES`] private frames,
    /// which are older, hence in a balanced tree larger, than anything this `join` could
    /// offer. An idle worker is served first: the oldest private frame is published, and
    /// this `join` takes the freed place.
    #[inline]
    pub(crate) fn wants_frame(&self) -> bool {
        // SAFETY: as in `push_frame`.
        let len = unsafe { (*self.frames.get()).len() };
        len - self.published.get() < PRIVATE_FRAMES
            || (self.registry.sleep.has_idle_workers() && self.frame_for_idle())
    }

    /// [`Self::wants_frame`] with every private place taken and a worker idle: publish the
    /// oldest private frame (unless the deque still holds work for the idle worker), and
    /// say whether that freed a place.
    #[cold]
    fn frame_for_idle(&self) -> bool {
        self.publish_for_idle();
        // SAFETY: as in `push_frame`.
        let len = unsafe { (*self.frames.get()).len() };
        len - self.published.get() < PRIVATE_FRAMES
    }

    /// Records the `b` half of a `join`; returns its frame index for [`Self::pop_frame`].
    ///
    /// # Safety
    ///
    /// `job` comes from a [`StackJob::new_frame`] job kept alive until its frame is popped:
    /// publishing it writes its watch through the pointer.
    #[inline]
    pub(crate) unsafe fn push_frame(&self, job: JobRef) -> usize {
        // SAFETY: the frame list is only touched by this thread, and no reference to it
        // outlives a single method call.
        let frames = unsafe { &mut *self.frames.get() };
        let index = frames.len();
        frames.push(job);
        let eager = self.eager_joins.get();
        if eager > 0 {
            self.eager_joins.set(eager - 1);
            self.publish_next_frame();
        } else if self.registry.sleep.has_idle_workers() {
            self.publish_for_idle();
        }
        index
    }

    /// Another worker is idle: publish our oldest private frame, unless our deque already
    /// holds work it could take.
    #[cold]
    fn publish_for_idle(&self) {
        if self.deque.is_empty() {
            self.publish_next_frame();
        }
    }

    /// Publishes the oldest private frame, if any.
    fn publish_next_frame(&self) {
        // SAFETY: as in `push_frame`.
        let frames = unsafe { &*self.frames.get() };
        let published = self.published.get();
        if let Some(frame) = frames.get(published) {
            // The thread's watch now is the one the frame was pushed under: a change of
            // watch publishes every private frame first (`before_watch_change`).
            // SAFETY: every frame is a `join`'s `StackJob`, alive while listed, and private
            // until the push below.
            unsafe { frame.set_frame_watch(Active::borrow_current()) };
            self.published.set(published + 1);
            self.push(frame.duplicate());
        }
    }

    /// This thread's watch is about to change: on a worker, publish every private frame
    /// while the watch they were pushed under is still in force, as a frame's job takes
    /// its watch when published (see [`StackJob::new_frame`]). Only called once some watch
    /// exists.
    pub(crate) fn before_watch_change() {
        if let Some(worker) = WorkerThread::current() {
            worker.publish_all_frames();
        }
    }

    /// Publishes every private frame: the worker is about to wait, and idle workers must be
    /// able to take everything it is not running.
    pub(crate) fn publish_all_frames(&self) {
        // SAFETY: as in `push_frame`.
        let len = unsafe { (*self.frames.get()).len() };
        while self.published.get() < len {
            self.publish_next_frame();
        }
    }

    /// Removes the newest frame (the caller's, at `index`) and says whether it had been
    /// published.
    #[inline]
    pub(crate) fn pop_frame(&self, index: usize) -> Frame {
        // SAFETY: as in `push_frame`.
        let frames = unsafe { &mut *self.frames.get() };
        debug_assert_eq!(frames.len(), index + 1, "join frames popped out of order");
        // SAFETY: `index` is the newest frame (the joins nest), so shrinking the list to
        // `index` drops exactly it; `JobRef` has no destructor.
        unsafe { frames.set_len(index) };
        if index < self.published.get() {
            self.published.set(index);
            Frame::Published
        } else {
            Frame::Private
        }
    }

    /// For a published frame whose `a` half is done: pops the own deque until the frame's
    /// job comes back (true: the caller runs it inline) or shows it was stolen, running any
    /// newer jobs found on the way; in the stolen case waits for `latch` (false).
    pub(crate) fn take_back(&self, job: &JobRef, latch: &CoreLatch) -> bool {
        while !latch.probe() {
            match self.deque.pop() {
                Some(popped) if popped.same(job) => return true,
                // SAFETY: a job popped from the own deque is live and runs exactly once here.
                Some(other) => unsafe { self.execute(other) },
                None => {
                    self.wait_until(latch, Wait::Forked, None);
                    break;
                }
            }
        }
        false
    }

    /// Runs other jobs (and sleeps when there are none) until `latch` is set; `wait`: what
    /// the latch waits for ([`Wait::Forked`] or [`Wait::Unrelated`]); `forked`: the
    /// waiting scope's jobs spawned off the pool, which it runs too (see "Waiting inside a
    /// worker" in `latch.rs` for what a wait may run, and at which depth).
    #[inline]
    pub(crate) fn wait_until(&self, latch: &CoreLatch, wait: Wait, forked: Option<&ForkedJobs>) {
        if !latch.probe() {
            self.wait_until_cold(latch, wait, forked);
        }
    }

    /// A starting worker sleeps without searching while its pool is being built (no job
    /// exists before `Registry::new` returns); see [`Sleep::start_asleep`] for why no job
    /// published meanwhile is missed.
    fn sleep_at_start(&self, terminate: &CoreLatch) {
        let registry = &self.registry;
        registry.sleep.start_asleep(
            self.index,
            terminate,
            // Acquire: pairs with the release store at the end of `Registry::new`.
            || registry.building.load(Ordering::Acquire),
            || registry.has_injected_job(),
        );
    }

    /// Whether a wait starting now may run other jobs on this stack: fewer than
    /// [`MAX_NESTED_WAITS`] job-running waits are under way besides the main loop's (or
    /// the relay's own loop, on a relay).
    #[inline]
    pub(crate) fn may_run_jobs_while_waiting(&self) -> bool {
        self.waits.get() <= MAX_NESTED_WAITS
    }

    #[cold]
    fn wait_until_cold(&self, latch: &CoreLatch, wait: Wait, forked: Option<&ForkedJobs>) {
        // Jobs catch their own panics; a panic here is a bug that would leave latches unset.
        let abort = AbortIfPanic;
        let too_deep = !self.may_run_jobs_while_waiting();
        self.waits.set(self.waits.get() + 1);
        self.publish_all_frames();
        if !too_deep {
            self.wait_running_any_jobs(latch, forked);
        } else if wait == Wait::Forked {
            self.wait_running_own_jobs(latch, forked);
        } else if !self.wait_on_relay(latch) {
            self.block_on(latch);
        }
        self.waits.set(self.waits.get() - 1);
        std::mem::forget(abort);
    }

    /// An unrelated wait beyond the nesting limit: the worker goes on waiting, running
    /// its pool's jobs, on a relay's fresh stack while this thread parks (see `relay.rs`).
    /// False, with nothing done, if no relay can be had
    /// ([`MAX_RELAYS`](super::relay::MAX_RELAYS) of them in use on
    /// this worker already, or the OS refused a thread).
    fn wait_on_relay(&self, latch: &CoreLatch) -> bool {
        let depth = self.hops.get();
        // The relay starts with a stack of its own: one job-running wait (its loop).
        let waits = self.waits.replace(1);
        self.hops.set(depth + 1);
        let relayed = self.relays.hop(self, depth, latch);
        self.hops.set(depth);
        self.waits.set(waits);
        relayed
    }

    /// On a relay: the wait handed over by the thread below, run like the main loop's.
    pub(crate) fn relayed_wait(&self, latch: &CoreLatch) {
        self.wait_running_any_jobs(latch, None);
    }

    /// The last resort for an unrelated wait beyond the nesting limit that gets no relay:
    /// spin briefly, then sleep on the latch, running nothing (see "Deadlock" in
    /// `latch.rs`).
    fn block_on(&self, latch: &CoreLatch) {
        let mut round = 0;
        while !latch.probe() {
            if round < THREAD_SPIN_ROUNDS {
                snooze(round);
                round += 1;
            } else {
                self.registry
                    .sleep
                    .block_on_latch(self.index, latch, || false);
            }
        }
    }

    /// A wait beyond the nesting limit (only waits for forked work get here: `join`'s
    /// stolen half, a `scope`'s spawns; see "Waiting inside a worker" in `latch.rs`). It
    /// runs only its own jobs — its own deque's (its scope's spawns, the join halves of the
    /// frames below it, tasks this thread submitted) and its scope's spawns made off the
    /// pool — and never steals or takes injected jobs, which would stack unrelated work on
    /// this thread without bound. With none left it spins briefly, then blocks until its
    /// latch is set or poked ([`Sleep::block_on_latch`]): nothing else would reach its
    /// own deque meanwhile (only this thread pushes there), and an off-pool spawn pokes.
    fn wait_running_own_jobs(&self, latch: &CoreLatch, forked: Option<&ForkedJobs>) {
        let mut round = 0;
        while !latch.probe() {
            if let Some(job) = self
                .deque
                .pop()
                .or_else(|| forked.and_then(ForkedJobs::pop))
            {
                // SAFETY: popped from the own deque or the scope's queue: live, runs once.
                unsafe { self.execute(job) };
                round = 0;
            } else if round < THREAD_SPIN_ROUNDS {
                snooze(round);
                round += 1;
            } else {
                self.registry
                    .sleep
                    .block_on_latch(self.index, latch, || forked.is_some_and(|f| !f.is_empty()));
                round = 0;
            }
        }
    }

    /// Runs other jobs (own deque, the scope's off-pool spawns, stealing, the injector)
    /// until `latch` is set, sleeping through the pool's sleep protocol when there are none.
    fn wait_running_any_jobs(&self, latch: &CoreLatch, forked: Option<&ForkedJobs>) {
        let sleep = &self.registry.sleep;
        'outer: while !latch.probe() {
            // Local work first, before touching shared sleep state.
            if let Some(job) = self
                .deque
                .pop()
                .or_else(|| forked.and_then(ForkedJobs::pop))
            {
                // SAFETY: popped from the own deque or the scope's queue: live, runs once.
                unsafe { self.execute(job) };
                continue;
            }
            let mut idle = sleep.start_looking(self.index);
            while !latch.probe() {
                if let Some(job) = self.find_work(idle.is_sleepy()) {
                    sleep.work_found();
                    // SAFETY: taken from a deque or the injector: live, runs once.
                    unsafe { self.execute(job) };
                    continue 'outer;
                }
                sleep.no_work_found(&mut idle, latch, || self.registry.has_injected_job());
            }
            sleep.work_found();
            break;
        }
    }

    /// Runs a job taken from a queue; the job starts with a fresh budget of eager joins.
    ///
    /// # Safety
    ///
    /// As [`JobRef::execute`]: the job is live and runs exactly once.
    unsafe fn execute(&self, job: JobRef) {
        self.eager_joins.set(EAGER_JOINS);
        // SAFETY: forwarded from this function's contract.
        unsafe { job.execute() }
    }

    /// Own deque, then the other workers' deques, then the injector: finish what this
    /// worker started before taking on something new. `every_victim`: look at every other
    /// deque (the search after announcing sleepiness, which the sleep protocol relies on),
    /// else at up to [`STEAL_VICTIMS_PER_ROUND`].
    fn find_work(&self, every_victim: bool) -> Option<JobRef> {
        self.deque
            .pop()
            .or_else(|| self.steal(every_victim))
            .or_else(|| self.registry.pop_injected_job())
    }

    /// Steals one job from another worker, starting at a random victim.
    fn steal(&self, every_victim: bool) -> Option<JobRef> {
        let infos = &self.registry.thread_infos;
        let n = infos.len();
        if n <= 1 {
            return None;
        }
        let victims = if every_victim {
            n
        } else {
            n.min(STEAL_VICTIMS_PER_ROUND)
        };
        loop {
            let mut retry = false;
            let start = self.next_random() % n;
            for victim in (start..n).chain(0..start).take(victims) {
                #[cfg(test)]
                self.registry.probes.fetch_add(1, Ordering::Relaxed);
                // `is_empty` is two loads; `steal` also pins the epoch. Most deques of an
                // idle pool are empty.
                if victim == self.index || infos[victim].stealer.is_empty() {
                    continue;
                }
                match infos[victim].stealer.steal() {
                    Steal::Success(job) => return Some(job),
                    Steal::Empty => {}
                    Steal::Retry => retry = true,
                }
            }
            if !retry {
                return None;
            }
        }
    }

    /// xorshift64*: victim selection only needs to spread, not to be good randomness.
    fn next_random(&self) -> usize {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize
    }
}

#[cfg(all(test, not(parpool_loom)))]
mod test {
    use super::super::ThreadPool;
    use super::{PRIVATE_FRAMES, WorkerThread};
    use crate::sync::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// The most private frames [`check_frames`] saw on a worker.
    static MOST_PRIVATE: AtomicUsize = AtomicUsize::new(0);

    /// The frame list of the current worker, if any, is as "Private join frames" says: its
    /// published frames are a prefix of it, and at most [`PRIVATE_FRAMES`] are private.
    /// Returns the list's length.
    fn check_frames() -> usize {
        let Some(worker) = WorkerThread::current() else {
            return 0;
        };
        // SAFETY: this thread's own list, not borrowed across the call.
        let len = unsafe { (*worker.frames.get()).len() };
        let published = worker.published.get();
        assert!(
            published <= len,
            "{published} frames published out of {len}"
        );
        assert!(
            len - published <= PRIVATE_FRAMES,
            "{} private frames",
            len - published
        );
        MOST_PRIVATE.fetch_max(len - published, Ordering::Relaxed);
        len
    }

    /// xorshift64*, for reproducible random shapes.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
    }

    /// How many levels above the leaves `walk` makes cycles between the pools: enough to
    /// go past the nesting limit on relays, few enough to stay far from `MAX_RELAYS`
    /// (see its docs for the relays this needed).
    const CYCLE_DEPTH: u32 = 8;

    /// A random recursion of `join`s with the things that publish frames or start jobs
    /// in between (a `scope` and its spawns, a task's `get`, an `install` into another
    /// pool, a nested watch); checks the frame list at every step. Returns how many leaves
    /// it ran. Inside `other` it goes on alike in the lowest [`CYCLE_DEPTH`] levels, so the
    /// two pools wait for each other in cycles, which relays keep alive beyond the nesting
    /// limit; higher up it only joins there.
    fn walk(pool: &Arc<ThreadPool>, other: Option<&ThreadPool>, seed: u64, depth: u32) -> u64 {
        let mut state = seed | 1;
        let before = check_frames();
        let leaves = match next(&mut state) % 16 {
            _ if depth == 0 => 1,
            0 if other.is_some() => {
                let spawned = AtomicUsize::new(0);
                let here = pool.scope(|s| {
                    s.spawn(|_| {
                        let leaves = walk(pool, other, seed ^ 0x55, depth - 1);
                        spawned.fetch_add(leaves as usize, Ordering::Relaxed);
                    });
                    walk(pool, other, seed ^ 0xAA, depth - 1)
                });
                here + spawned.load(Ordering::Relaxed) as u64
            }
            1 if other.is_some() => {
                let task_seed = next(&mut state);
                let task = {
                    let for_task = Arc::clone(pool);
                    pool.submit(move || walk(&for_task, None, task_seed, depth - 1))
                };
                walk(pool, other, next(&mut state), depth - 1) + task.get().unwrap()
            }
            2 => match other {
                Some(other) => other.install(|| {
                    walk(
                        pool,
                        (depth <= CYCLE_DEPTH).then_some(other),
                        next(&mut state),
                        depth - 1,
                    )
                }),
                None => walk(pool, other, next(&mut state), depth - 1),
            },
            3 => crate::Watch::new()
                .run(|| walk(pool, other, next(&mut state), depth - 1))
                .unwrap(),
            _ => {
                let (left, right) = (next(&mut state), next(&mut state));
                // Spines: one half a single leaf.
                let (left_depth, right_depth) = match right % 3 {
                    0 => (depth - 1, 0),
                    1 => (0, depth - 1),
                    _ => (depth - 1, depth - 1),
                };
                let (a, b) = crate::join(
                    || walk(pool, other, left, left_depth),
                    || walk(pool, other, right, right_depth),
                );
                a + b
            }
        };
        assert_eq!(check_frames(), before, "the frames made below were popped");
        leaves
    }

    /// Random recursions on pools of 1, 2 and 4 threads (another pool's install in
    /// between): the frame list keeps its invariants at every step, and is empty again
    /// when a job ends.
    ///
    /// The cross-pool cycles rely on relays, and a wait past `MAX_RELAYS` blocks: the
    /// rounds run on a thread of their own, and the test fails if they have not ended
    /// within a bound (about 1–3 s here) instead of stalling the suite.
    #[test]
    fn frame_list_keeps_its_invariants() {
        let (done, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for threads in [1, 2, 4] {
                let pool = Arc::new(ThreadPool::new(threads).unwrap());
                let other = ThreadPool::new(2).unwrap();
                for round in 0..100u64 {
                    let seed = round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let leaves = pool.install(|| {
                        assert_eq!(check_frames(), 0);
                        walk(&pool, Some(&other), seed, 24)
                    });
                    assert!(leaves > 0);
                }
            }
            // Not sent if a round panicked: the channel then closes, and the test fails.
            done.send(()).unwrap();
        });
        match ended.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the rounds hung (a wait blocked at MAX_RELAYS?)")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("a round panicked"),
        }
        // The recursions went deep enough for `join`s to run inline.
        assert_eq!(MOST_PRIVATE.load(Ordering::Relaxed), PRIVATE_FRAMES);
    }

    /// Starting a pool of `n` workers (every one idle from the start) must not make each
    /// search all `n` deques: before, every worker probed every other deque in each of its
    /// 33 search rounds (2,176 probes each for n = 64), which made startup quadratic
    /// (build(900) took 0.64–1.0 s). A worker that starts while its pool is being built
    /// sleeps without searching; one that starts later searches like any idle worker.
    #[test]
    fn startup_probes_each_deque_about_once_per_worker() {
        const N: usize = 64;
        let pool = ThreadPool::new(N).unwrap();
        let registry = pool.registry();
        // Wait until every worker has searched and gone to sleep; nothing else runs.
        while registry.sleep.sleeping_workers() < N {
            std::thread::yield_now();
        }
        let per_worker = registry.probes.load(Ordering::Relaxed) / N;
        let rounds = super::super::sleep::ROUNDS_UNTIL_SLEEPY as usize;
        let bound = rounds * super::STEAL_VICTIMS_PER_ROUND + N;
        println!("{per_worker} probes per starting worker");
        assert!(
            per_worker <= bound,
            "{per_worker} probes per starting worker (bound {bound})"
        );
    }
}
