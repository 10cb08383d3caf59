//! `scope`: spawn any number of jobs that may borrow from the enclosing stack frame.
//!
//! The scope counts outstanding jobs in a [`CountLatch`] (one for the scope's own body,
//! one per spawned job). `scope` returns only when the count reaches zero, running other
//! jobs (its own spawns first: they sit on top of its deque) while it waits, so borrowed
//! data outlives every job that uses it. The first panic of the body or of any job is kept
//! and re-raised once everything has finished; later ones are dropped, except that a panic
//! replaces a watch's stop kept before it (a stop never hides a panic).

use std::marker::PhantomData;
use std::sync::Arc;

use super::ThreadPool;
use super::job::{HeapJob, Panic, catch};
use super::latch::{CountLatch, Latch};
use super::registry::{Registry, WorkerThread};
use crate::sync::{Mutex, lock};
use crate::watch::stopped_by;

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
/// is stopped only if nothing in the scope panicked.
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
            panic: Mutex::new(None),
            marker: PhantomData,
        };
        let outcome = scope.run(|| op(&scope));
        // The body's own count; the scope stays alive (it is this frame's) while we wait.
        // SAFETY: `scope.latch` is live for the whole call.
        unsafe { CountLatch::set(&scope.latch) };
        scope.latch.wait();
        let panic = lock(&scope.panic).take();
        match (panic, outcome) {
            (Some(payload), _) => std::panic::resume_unwind(payload),
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
        self.registry.push_or_inject(job);
    }

    /// Runs `f`, recording its panic (the first one wins, but a panic wins over a watch's
    /// stop: a panic is never hidden behind a stop) instead of unwinding.
    fn run<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        match catch(f) {
            Ok(value) => Some(value),
            Err(payload) => {
                let is_stop = |payload: &Panic| stopped_by(payload.as_ref()).is_some();
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

impl std::fmt::Debug for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("pool_threads", &self.registry.num_threads())
            .finish()
    }
}
