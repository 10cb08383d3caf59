//! `join`: run two closures, potentially in parallel.
//!
//! Inside a worker, `a` runs right away on the current thread while `b` waits in the
//! worker's private frame list (see "Private join frames" in `registry.rs`), from where it is
//! published to the worker's deque if another worker could take it. When `a` returns, `b`
//! either never left (run inline: the common case, costing little more than a function
//! call), is still in the deque (taken back and run inline), or was stolen: then the worker
//! runs other jobs, or sleeps, until the thief sets `b`'s latch.
//!
//! Called from outside a pool, `join` injects itself into the global pool and waits.

use super::ThreadPool;
use super::job::{JobRef, StackJob, catch, resume};
use super::latch::SpinLatch;
use super::registry::{Frame, WorkerThread};

/// Runs `a` and `b`, potentially in parallel, on the current pool (the pool whose worker
/// calls it, else the global pool), and returns both results.
///
/// # Panics
///
/// Both closures always run to completion. If either panics, `join` panics with that
/// payload once both are done; if both panic, with `a`'s.
///
/// # Examples
///
/// ```
/// fn fib(n: u64) -> u64 {
///     if n < 2 {
///         return n;
///     }
///     let (a, b) = parpool::join(|| fib(n - 1), || fib(n - 2));
///     a + b
/// }
/// assert_eq!(fib(20), 6765);
/// ```
pub fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    match WorkerThread::current() {
        Some(worker) => join_in_worker(worker, a, b),
        None => join_cold(a, b),
    }
}

#[cold]
fn join_cold<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    ThreadPool::global()
        .registry()
        .in_worker(|worker| join_in_worker(worker, a, b))
}

/// `join` on the given worker (the current thread's).
#[inline]
pub(crate) fn join_in_worker<A, B, RA, RB>(worker: &WorkerThread, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    let job_b = StackJob::new(b, SpinLatch::new(worker));
    // SAFETY: `job_b` lives in this frame, and the frame is not left (normally or by
    // unwinding, see `Resolve`) before `job_b` has run or has been taken back.
    let job_b_ref = unsafe { job_b.as_job_ref() };
    let frame = worker.push_frame(job_b_ref.duplicate());
    // If `a` panics, `b` must still be resolved before this frame unwinds.
    let resolve = Resolve {
        worker,
        frame,
        job_b: &job_b,
        job_b_ref: &job_b_ref,
    };
    let result_a = a();
    std::mem::forget(resolve);

    let result_b = match worker.pop_frame(frame) {
        Frame::Private => (job_b.take_func())(),
        Frame::Published => {
            if worker.take_back(&job_b_ref, &job_b.latch.core) {
                (job_b.take_func())()
            } else {
                // SAFETY: `take_back` returned false only once the latch was set.
                resume(unsafe { job_b.into_outcome() })
            }
        }
    };
    (result_a, result_b)
}

/// Finishes a `join` whose `a` half panicked: runs `b` if nobody took it (its own panic is
/// dropped: `a`'s wins), or waits for the thread that did.
struct Resolve<'a, 'r, B, RB>
where
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    worker: &'a WorkerThread,
    frame: usize,
    job_b: &'a StackJob<SpinLatch<'r>, B, RB>,
    job_b_ref: &'a JobRef,
}

impl<B, RB> Drop for Resolve<'_, '_, B, RB>
where
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    fn drop(&mut self) {
        let run_here = match self.worker.pop_frame(self.frame) {
            Frame::Private => true,
            Frame::Published => self
                .worker
                .take_back(self.job_b_ref, &self.job_b.latch.core),
        };
        if run_here {
            let _ = catch(self.job_b.take_func());
        }
    }
}
