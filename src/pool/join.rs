//! `join`: run two closures, potentially in parallel.
//!
//! Inside a worker, a `join` deep in a recursion is two plain calls: the worker already
//! holds a few older halves that others may take, and records nothing (see "Inline joins"
//! in `registry.rs`). Otherwise `a` runs right away on the current thread while `b` waits
//! in the worker's private frame list (see "Private join frames" there), from where it is
//! published to the worker's deque if another worker could take it. When `a` returns, `b`
//! either never left (run inline), is still in the deque (taken back and run inline), or
//! was stolen: then the worker runs other jobs, or sleeps, until the thief sets `b`'s
//! latch.
//!
//! Called from outside a pool, `join` injects itself into the global pool and waits.

use super::ThreadPool;
use std::mem::ManuallyDrop;

use super::job::{Outcome, Panic, StackJob, catch, resume_winner};
use super::latch::SpinLatch;
use super::registry::{Frame, WorkerThread};

/// Runs `a` and `b`, potentially in parallel, on the current pool (the pool whose worker
/// calls it, else the global pool), and returns both results.
///
/// They may as well run one after the other on the calling thread: deep in a recursion
/// (below a worker's first few `join`s) `b` always starts only once `a` has returned. So
/// `a` must never wait for something that only `b` does; it would wait forever.
///
/// # Panics
///
/// Both closures always run to completion. If either panics, `join` panics with that
/// payload once both are done; if both panic, with `a`'s. Inside a
/// [`Watch`](crate::Watch), a panic wins over a stop: if `a` was stopped and `b` panicked,
/// `join` panics with `b`'s payload. The result of the half that returned is dropped before
/// `join` panics; a panic in its `Drop` does not abort the process, and is the payload
/// only where the other half was merely stopped.
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
///
/// Data that is not `Send` cannot cross to another thread:
///
/// ```compile_fail
/// let counter = std::rc::Rc::new(0);
/// parpool::join(|| *counter + 1, || 2);
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
///
/// Always inlined into `join` (and `join_cold`): left to the optimiser, `join` was inlined
/// into the caller instead and this became the recursive function, taking the worker as an
/// argument and moving it between registers: fib(25) with a `join` at every level on one
/// thread ran 7.93 M instructions against 7.68 M inlined (callgrind).
#[inline(always)]
pub(crate) fn join_in_worker<A, B, RA, RB>(worker: &WorkerThread, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    if worker.wants_frame() {
        join_framed(worker, a, b)
    } else {
        join_inline(a, b)
    }
}

/// `join` with `b` recorded as a frame that another worker may take.
///
/// Never inlined: only the oldest few `join`s of a worker's stack come here (see
/// [`WorkerThread::wants_frame`]), and kept apart from the inline path it leaves that path
/// a small function that saves and restores fewer registers.
#[inline(never)]
fn join_framed<A, B, RA, RB>(worker: &WorkerThread, a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    // No drop glue on the fast path: every way out of this function leaves both the
    // closure and the result slot empty (run inline, taken back, or the thief's outcome
    // taken; `resolve_after_panic` does the same when `a` panics), so there is nothing to
    // drop.
    let job_b = ManuallyDrop::new(StackJob::new_frame(b, SpinLatch::new(worker)));
    // SAFETY: `job_b` is a `new_frame` job that lives in this frame, and the frame is not
    // left (normally, or by the unwind resumed below) before `job_b` has run or has been
    // taken back.
    let frame = unsafe { worker.push_frame(job_b.as_job_ref()) };
    // `a`'s panic is caught, not left to unwind through this frame: resolving `b` may run
    // other jobs (while `b`'s thief finishes), and no unrelated job may run while this
    // thread unwinds (it would see `thread::panicking()`, and a lock it held at a panic of
    // its own would not be poisoned). The unwind resumes once `b` is resolved.
    let result_a = match catch(a) {
        Ok(value) => value,
        Err(payload) => resolve_after_panic(worker, &job_b, frame, payload),
    };
    match worker.pop_frame(frame) {
        Frame::Private => run_b(result_a, job_b.take_func()),
        Frame::Published => match take_back_or_wait(worker, &*job_b) {
            Ok(result_b) => (result_a, result_b),
            Err(payload) => resume_winner(payload, Ok(result_a)),
        },
    }
}

/// `join` as two plain calls: `a`, then `b`, on this thread; nothing is recorded, so
/// nothing can be taken by another worker.
#[inline(always)]
fn join_inline<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA,
    B: FnOnce() -> RB,
{
    // `a`'s panic is caught so that `b` runs on a thread in its normal state (as when `b`
    // is a frame: see `join_framed`).
    match catch(a) {
        Ok(result_a) => run_b(result_a, b),
        Err(payload) => resume_winner(payload, catch(b)),
    }
}

/// Runs `b` on this thread once `a` has returned `result_a`. A panic in `b` is caught if
/// `result_a` has drop glue, so that `result_a` is dropped outside the unwind (a panic in
/// its `Drop`, user code, would abort the process there) and by `join`'s rules (see
/// [`resume_winner`]); without drop glue `b` is a plain call (fib(25) on one thread: 40
/// instructions per `join`, against 42 with every `b` caught; callgrind).
#[inline(always)]
fn run_b<RA, B, RB>(result_a: RA, b: B) -> (RA, RB)
where
    B: FnOnce() -> RB,
{
    if std::mem::needs_drop::<RA>() {
        match catch(b) {
            Ok(result_b) => (result_a, result_b),
            Err(payload) => resume_winner(payload, Ok(result_a)),
        }
    } else {
        (result_a, b())
    }
}

/// `b` was published: run it here if it is still in our deque, else wait for its thief.
#[cold]
fn take_back_or_wait<B, RB>(
    worker: &WorkerThread,
    job_b: &StackJob<SpinLatch<'_>, B, RB>,
) -> Outcome<RB>
where
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    // SAFETY: only used for identity comparison against the deque's jobs.
    let job_b_ref = unsafe { job_b.as_job_ref() };
    if worker.take_back(&job_b_ref, &job_b.latch.core) {
        catch(job_b.take_func())
    } else {
        // SAFETY: `take_back` returned false only once the latch was set.
        unsafe { job_b.take_outcome() }
    }
}

/// Finishes a `join` whose `a` half panicked with `payload`, then resumes that panic: runs
/// `b` if nobody took it (its own panic is dropped: `a`'s wins), or waits for the thread
/// that did. Called outside any unwind, so the jobs the wait runs meanwhile see a thread in
/// its normal state.
#[cold]
fn resolve_after_panic<B, RB>(
    worker: &WorkerThread,
    job_b: &StackJob<SpinLatch<'_>, B, RB>,
    frame: usize,
    payload: Panic,
) -> !
where
    B: FnOnce() -> RB + Send,
    RB: Send,
{
    let run_here = match worker.pop_frame(frame) {
        Frame::Private => true,
        Frame::Published => {
            // SAFETY: identity comparison only.
            let job_b_ref = unsafe { job_b.as_job_ref() };
            worker.take_back(&job_b_ref, &job_b.latch.core)
        }
    };
    let outcome_b = if run_here {
        catch(job_b.take_func())
    } else {
        // SAFETY: `take_back` returned false only once the latch was set.
        unsafe { job_b.take_outcome() }
    };
    resume_winner(payload, outcome_b)
}
