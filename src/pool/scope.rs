//! `scope`: spawn any number of jobs that may borrow from the enclosing stack frame.
//!
//! The scope counts outstanding jobs in a [`CountLatch`] (one for the scope's own body,
//! one per spawned job). `scope` returns only when the count reaches zero, running other
//! jobs (its own spawns first: they sit on top of its deque) while it waits, so borrowed
//! data outlives every job that uses it. The first panic of the body or of any job is kept
//! and re-raised once everything has finished; later ones are dropped, except that a panic
//! replaces a watch's stop kept before it (a stop never hides a panic).
//!
//! # Spawning from outside the pool
//!
//! A spawn made on one of the pool's workers pushes the job onto that worker's deque. One
//! made anywhere else (a thread the scope body started, a worker of another pool) cannot
//! reach a deque: the job goes into the scope's own queue ([`ForkedJobs`]) and a counted
//! *pump* job, injected into the pool, runs one job from that queue on whichever worker
//! takes it. The scope's waiter looks at that queue too, and the spawn *pokes* its latch
//! (`CountLatch::poke`) in case it sleeps. This matters beyond the nesting limit, where the
//! waiter runs only its own jobs and takes nothing from the injector: on a one-thread pool
//! it is the only worker that could run the job. Each pump finds its job, or (when the
//! waiter took it) another job of the queue, or nothing; every job is run exactly once,
//! and the scope outlives all of them (its count), while a pump outlives the scope only as
//! a no-op holding the emptied queue.

use std::marker::PhantomData;
use std::sync::Arc;

use crossbeam_deque::Injector;

use super::ThreadPool;
use super::job::{HeapJob, JobRef, Panic, catch, is_stop, resume_winner};
use super::latch::{CountLatch, Latch};
use super::registry::{ForkedJobs, Registry, WorkerThread, pop};
use crate::sync::{Mutex, lock};

/// A scope in which [`spawn`](Scope::spawn)ed jobs may borrow data that outlives the
/// scope; created by [`scope`] or [`ThreadPool::scope`].
///
/// Data created inside the scope's closure cannot be borrowed by a job, because the job
/// may outlive the closure:
///
/// ```compile_fail
/// parpool::scope(|s| {
///     let local = vec![1, 2, 3];
///     s.spawn(|_| println!("{local:?}"));
/// });
/// ```
///
/// and values that are not `Send` cannot be moved into a job:
///
/// ```compile_fail
/// let shared = std::rc::Rc::new(5);
/// parpool::scope(|s| {
///     let shared = shared.clone();
///     s.spawn(move |_| println!("{shared}"));
/// });
/// ```
pub struct Scope<'scope> {
    registry: Arc<Registry>,
    latch: CountLatch,
    /// Jobs spawned from outside the pool; see "Spawning from outside the pool".
    forked: ForkedJobs,
    panic: Mutex<Option<Panic>>,
    /// Invariant in `'scope`, like `std::thread::Scope`: spawned closures may borrow for
    /// exactly `'scope`.
    marker: PhantomData<fn(&'scope ()) -> &'scope ()>,
}

/// Creates a scope on the current pool (the pool whose worker calls it, else the global
/// pool), runs `op` in it, waits for every job spawned in the scope, and returns `op`'s
/// result.
///
/// # Panics
///
/// If `op` or any spawned job panics, `scope` panics with the first payload, after every
/// job has finished. Inside a [`Watch`](crate::Watch), a panic wins over a stop: the block
/// is stopped only if nothing in the scope panicked. A value `op` returned is dropped
/// before `scope` panics; a panic in its `Drop` does not abort the process, and is the
/// payload only where the scope was merely stopped.
///
/// # Examples
///
/// ```
/// let mut chunks = vec![vec![1, 2], vec![3, 4, 5], vec![6]];
/// parpool::scope(|s| {
///     for chunk in chunks.iter_mut() {
///         s.spawn(move |_| chunk.iter_mut().for_each(|x| *x *= 10));
///     }
/// });
/// assert_eq!(chunks, [vec![10, 20], vec![30, 40, 50], vec![60]]);
/// ```
pub fn scope<'scope, OP, R>(op: OP) -> R
where
    OP: FnOnce(&Scope<'scope>) -> R + Send,
    R: Send,
{
    let run = |worker: &WorkerThread| {
        let scope = Scope {
            registry: Arc::clone(worker.registry_arc()),
            latch: CountLatch::for_current_thread(),
            forked: ForkedJobs::default(),
            panic: Mutex::new(None),
            marker: PhantomData,
        };
        let outcome = scope.run(|| op(&scope));
        // The body's own count; the scope stays alive (it is this frame's) while we wait.
        // SAFETY: `scope.latch` is live for the whole call.
        unsafe { CountLatch::set(&scope.latch) };
        scope.latch.wait(&scope.forked);
        let panic = lock(&scope.panic).take();
        match (panic, outcome) {
            // The body's value is dropped before the unwind, not by it (see
            // `resume_winner`).
            (Some(payload), outcome) => resume_winner(payload, Ok(outcome)),
            (None, Some(value)) => value,
            (None, None) => unreachable!("a scope body panicked without recording it"),
        }
    };
    match WorkerThread::current() {
        Some(worker) => run(worker),
        None => ThreadPool::global().registry().in_worker(run),
    }
}

impl<'scope> Scope<'scope> {
    /// Spawns `body` into the scope. It may run on any worker of the pool, in parallel with
    /// the rest of the scope, and receives the scope to spawn more jobs.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    ///
    /// let total = AtomicU32::new(0);
    /// parpool::scope(|s| {
    ///     s.spawn(|s| {
    ///         total.fetch_add(1, Ordering::Relaxed);
    ///         s.spawn(|_| { total.fetch_add(10, Ordering::Relaxed); });
    ///     });
    /// });
    /// assert_eq!(total.into_inner(), 11);
    /// ```
    pub fn spawn<BODY>(&self, body: BODY)
    where
        BODY: FnOnce(&Scope<'scope>) + Send + 'scope,
    {
        self.latch.increment();
        let scope = self;
        let job = move || {
            let _ = scope.run(|| body(scope));
            // SAFETY: the scope is alive until its latch count reaches zero, which this set
            // may cause; nothing of the scope is touched after it.
            unsafe { CountLatch::set(&scope.latch) };
        };
        // SAFETY: the job borrows `self` and data living for `'scope`; `scope()` does not
        // return (so neither ends) before the latch shows every job has finished.
        let job = unsafe { HeapJob::into_job_ref(job) };
        match WorkerThread::current() {
            Some(worker) if std::ptr::eq(worker.registry(), &*self.registry) => worker.push(job),
            _ => self.spawn_off_pool(job),
        }
    }

    /// Queues a job spawned outside the pool; see "Spawning from outside the pool".
    #[cold]
    fn spawn_off_pool(&self, job: JobRef) {
        let queue = self.forked.push(job);
        let for_pump = Arc::clone(&queue);
        // A counted job, so that a pool dropped right after the scope still runs it.
        if !self.registry.spawn_counted(move |_| pump(&for_pump)) {
            // The pool has terminated (a scope in a start handler of a pool dropped since):
            // queue the pump uncounted; the scope's waiter runs the job anyway.
            // SAFETY: the pump owns everything it uses.
            self.registry
                .inject(unsafe { HeapJob::into_job_ref(move || pump(&queue)) });
        }
        self.latch.poke();
    }

    /// Runs `f`, recording its panic (the first one wins, but a panic wins over a watch's
    /// stop: a panic is never hidden behind a stop) instead of unwinding.
    fn run<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        match catch(f) {
            Ok(value) => Some(value),
            Err(payload) => {
                let mut recorded = lock(&self.panic);
                let replace = match &*recorded {
                    None => true,
                    Some(first) => is_stop(first) && !is_stop(&payload),
                };
                let loser = if replace {
                    recorded.replace(payload)
                } else {
                    Some(payload)
                };
                drop(recorded);
                // Its `Drop` is user code: caught, and outside the lock.
                let _ = catch(move || drop(loser));
                None
            }
        }
    }
}

/// A pump: runs one job of a scope's off-pool queue, if any is left.
fn pump(queue: &Injector<JobRef>) {
    if let Some(job) = pop(queue) {
        // SAFETY: popped from the scope's queue, so live (the scope waits for every job it
        // counted) and run only here.
        unsafe { job.execute() };
    }
}

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("pool_threads", &self.registry.num_threads())
            .finish()
    }
}
