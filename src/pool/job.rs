//! Type-erased jobs, and the panic policy that surrounds them.
//!
//! A [`JobRef`] is a pointer plus the function that runs it: what the deques and the
//! injector carry. Three owners exist:
//!
//! - [`StackJob`]: lives in the stack frame of a `join`, whose owner does not return before
//!   the job ran (it waits on the job's latch), so the pointer stays valid;
//! - [`HeapJob`]: a boxed closure that frees itself when run (`scope` spawns, tasks,
//!   `install` from outside).
//!
//! # Watches
//!
//! Every job captures the watch in force where it is made (see `watch.rs`) and runs under
//! it, wherever it runs: a stolen `join` half, a scope spawn or a task is watched like the
//! call that made it, and a worker that runs an unrelated job while it waits runs it under
//! that job's watch (or none), never under the waiting frame's. A heap job owns its watch
//! (an `Arc`: it may outlive the call that made it); a `join` job borrows it (its owner
//! waits for it), so a `join` touches no reference count. While no watch exists anywhere
//! the capture is one relaxed load; a `join` captures only when its `b` half is published
//! (a worker whose watch changes publishes its private frames first, see
//! `WorkerThread::before_watch_change`).
//!
//! # Panic policy
//!
//! User code always runs under [`catch_unwind`](std::panic::catch_unwind) (or, on the
//! `join` fast path, under a guard that finishes the protocol while unwinding) and the
//! payload is re-raised at the join point. Internal code that must not be interrupted holds
//! an [`AbortIfPanic`] guard: a panic there would leave a latch unset or a job half-run, so
//! the process aborts instead of corrupting memory.

use std::any::Any;
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::panic::{self, AssertUnwindSafe};

use super::latch::Latch;
use crate::watch::{Active, Borrowed};

/// A job's outcome: its value or the panic it raised.
pub(crate) type Outcome<T> = std::thread::Result<T>;

/// Runs `f`, catching a panic as the `Err` payload.
#[inline]
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Outcome<R> {
    panic::catch_unwind(AssertUnwindSafe(f))
}

/// Unwraps an outcome, re-raising a caught panic on this thread.
#[inline]
pub(crate) fn resume<R>(outcome: Outcome<R>) -> R {
    match outcome {
        Ok(value) => value,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// Aborts the process if dropped during unwinding: wrap internal critical sections with
/// it and `mem::forget` it on the normal path.
#[derive(Debug)]
pub(crate) struct AbortIfPanic;

impl Drop for AbortIfPanic {
    fn drop(&mut self) {
        eprintln!("parpool: unexpected panic inside the scheduler; aborting");
        std::process::abort();
    }
}

/// A job that can run on any worker.
pub(crate) trait Job {
    /// Runs the job.
    ///
    /// # Safety
    ///
    /// `this` must come from the matching `JobRef` constructor, and each `JobRef` runs at
    /// most once.
    unsafe fn execute(this: *const ());
}

/// A type-erased pointer to a job. Each `JobRef` must be executed exactly once, or the
/// job's closure leaks (heap jobs) or its owner waits forever (stack jobs).
#[derive(Debug)]
pub(crate) struct JobRef {
    pointer: *const (),
    execute_fn: unsafe fn(*const ()),
}

// SAFETY: a JobRef is only created for jobs whose closures are `Send`, and its pointer is
// dereferenced by exactly one thread (whichever executes it).
unsafe impl Send for JobRef {}
// SAFETY: sharing a JobRef only shares the pointer value; see `Send`.
unsafe impl Sync for JobRef {}

impl JobRef {
    /// Erases the job's type.
    ///
    /// # Safety
    ///
    /// `data` must stay valid until the returned `JobRef` has been executed.
    #[inline]
    unsafe fn new<T: Job>(data: *const T) -> JobRef {
        JobRef {
            pointer: data.cast(),
            execute_fn: <T as Job>::execute,
        }
    }

    /// Whether `self` and `other` point at the same job.
    #[inline]
    pub(crate) fn same(&self, other: &JobRef) -> bool {
        std::ptr::eq(self.pointer, other.pointer)
    }

    /// Runs the job.
    ///
    /// # Safety
    ///
    /// The job behind the pointer must still be alive (the constructor's contract) and not
    /// have been executed through another copy of this `JobRef`.
    #[inline]
    pub(crate) unsafe fn execute(self) {
        // SAFETY: forwarded from this function's contract.
        unsafe { (self.execute_fn)(self.pointer) }
    }

    /// Writes the watch of a `join` frame's job as it is published (see
    /// [`StackJob::new_frame`]).
    ///
    /// # Safety
    ///
    /// `self` points at a live [`StackJob`] that no other thread can reach yet.
    #[inline]
    pub(crate) unsafe fn set_frame_watch(&self, watch: Option<Borrowed>) {
        // SAFETY: a `StackJob` is `repr(C)` with this cell first, the job is alive and
        // unshared (the caller's contract), and the cell permits writes through `&`.
        unsafe {
            let cell = &*self
                .pointer
                .cast::<UnsafeCell<MaybeUninit<Option<Borrowed>>>>();
            cell.get().write(MaybeUninit::new(watch));
        }
    }

    /// A second handle to the same job, used when one copy sits in a private frame list
    /// and the other is published to a deque. Only one of the two may ever be executed.
    #[inline]
    pub(crate) fn duplicate(&self) -> JobRef {
        JobRef {
            pointer: self.pointer,
            execute_fn: self.execute_fn,
        }
    }
}

/// A job stored in the stack frame of the thread that waits for it (the `b` half of a
/// `join`). Its latch is set once the result is written.
///
/// `repr(C)` with the watch first: a worker publishing a `join` frame writes the watch
/// through the type-erased [`JobRef`] (see [`JobRef::set_frame_watch`]).
#[repr(C)]
pub(crate) struct StackJob<L: Latch, F, R> {
    /// The watch of the thread that made the job, borrowed (the owner waits for the job):
    /// entered by whichever thread executes it. Written when the job is made
    /// ([`StackJob::new`]), or, for a `join` frame ([`StackJob::new_frame`]), when the
    /// frame is published: uninitialised until then, and only a published job is executed.
    watch: UnsafeCell<MaybeUninit<Option<Borrowed>>>,
    pub(crate) latch: L,
    func: UnsafeCell<Option<F>>,
    result: UnsafeCell<Option<Outcome<R>>>,
}

impl<L: Latch, F: FnOnce() -> R + Send, R: Send> StackJob<L, F, R> {
    /// A job that captures the current watch now (a job injected from outside a pool).
    #[inline]
    pub(crate) fn new(func: F, latch: L) -> Self {
        // Read before the job is built: read inside the struct expression, the job was
        // assembled in a temporary and copied with a 16-byte load over two 8-byte stores (a
        // store-forwarding stall), which made `fib(30)` with a `join` at every level 2.5×
        // slower (12 ms against 31 ms, measured twenty times each, interleaved).
        let watch = Active::borrow_current();
        StackJob {
            watch: UnsafeCell::new(MaybeUninit::new(watch)),
            latch,
            func: UnsafeCell::new(Some(func)),
            result: UnsafeCell::new(None),
        }
    }

    /// A `join` frame's job: its watch is written when the frame is published
    /// ([`JobRef::set_frame_watch`]), so a `join` whose `b` runs inline (the common case)
    /// reads and stores no watch at all (fib(25) with a `join` at every level on one
    /// thread: 8.28 M instructions capturing at construction, callgrind).
    #[inline]
    pub(crate) fn new_frame(func: F, latch: L) -> Self {
        StackJob {
            watch: UnsafeCell::new(MaybeUninit::uninit()),
            latch,
            func: UnsafeCell::new(Some(func)),
            result: UnsafeCell::new(None),
        }
    }

    /// A `JobRef` to this job.
    ///
    /// # Safety
    ///
    /// The caller keeps `self` alive (does not move or drop it) until the job has run or
    /// has been taken back with [`StackJob::take_func`].
    #[inline]
    pub(crate) unsafe fn as_job_ref(&self) -> JobRef {
        // SAFETY: validity until execution is the caller's promise.
        unsafe { JobRef::new(self) }
    }

    /// Takes the closure back to run it inline (the job was never handed to another
    /// thread, or was popped back from the own deque before anyone stole it).
    #[inline]
    pub(crate) fn take_func(&self) -> F {
        // SAFETY: only the owning thread calls this, and only while no other thread can
        // reach the job (it is private, or was just popped from the owner's own deque).
        unsafe { (*self.func.get()).take() }.expect("join job taken twice")
    }

    /// Takes the result written by whichever thread executed the job.
    ///
    /// # Safety
    ///
    /// The latch must have been observed set (which orders the result write before this
    /// read), and no other thread may touch the job any more.
    #[inline]
    pub(crate) unsafe fn take_outcome(&self) -> Outcome<R> {
        // SAFETY: the executing thread is done with the job (the caller's contract).
        unsafe { (*self.result.get()).take() }.expect("join job finished without a result")
    }

    /// The result written by whichever thread executed the job.
    ///
    /// # Safety
    ///
    /// The latch must have been observed set (which orders the result write before this
    /// read).
    #[inline]
    pub(crate) unsafe fn into_outcome(self) -> Outcome<R> {
        self.result
            .into_inner()
            .expect("join job finished without a result")
    }
}

impl<L: Latch, F: FnOnce() -> R + Send, R: Send> Job for StackJob<L, F, R> {
    unsafe fn execute(this: *const ()) {
        // SAFETY: `this` came from `as_job_ref`, whose caller keeps the job alive until
        // its latch is set below.
        let this = unsafe { &*this.cast::<Self>() };
        let abort = AbortIfPanic;
        // SAFETY: the job is executed once; the owner does not touch `func` or `result`
        // while the job is published and not yet finished.
        let func = unsafe { (*this.func.get()).take() }.expect("join job executed twice");
        // SAFETY: the watch was written when the job was made or, for a `join` frame, when
        // it was published (a frame job is executed only once published; the owner takes
        // a private one back with `take_func`).
        let watch = unsafe { (*this.watch.get()).assume_init() };
        // SAFETY: the job's owner made it under this watch and waits for the job (its
        // latch, set below after the guard is dropped), in the frame where the watch is
        // installed or one inside it: the watch outlives this run.
        let entered = unsafe { Active::enter_borrowed(watch) };
        // SAFETY: as above; nothing else reads `result` before the latch is set.
        unsafe { *this.result.get() = Some(catch(func)) };
        drop(entered);
        // HAZARD: once the latch is set the owner may return and free `this`; `set` reads
        // everything it needs before publishing.
        // SAFETY: `this.latch` is alive here, and `set` does not touch it afterwards.
        unsafe { L::set(&this.latch) };
        std::mem::forget(abort);
    }
}

/// A job on the heap; running it frees it. The closure does its own signalling.
pub(crate) struct HeapJob<F> {
    func: F,
    /// The watch of the thread that made the job, entered while it runs.
    watch: Option<Active>,
}

impl<F: FnOnce() + Send> HeapJob<F> {
    /// Boxes `func` into a job.
    ///
    /// # Safety
    ///
    /// Everything `func` borrows must outlive the job's execution (the `scope` and the
    /// blocking callers guarantee it by waiting for the job).
    pub(crate) unsafe fn into_job_ref(func: F) -> JobRef {
        let raw = Box::into_raw(Box::new(HeapJob {
            func,
            watch: Active::current(),
        }));
        // SAFETY: the box stays allocated until `execute` reclaims it.
        unsafe { JobRef::new(raw) }
    }
}

impl<F: FnOnce() + Send> Job for HeapJob<F> {
    unsafe fn execute(this: *const ()) {
        // SAFETY: `this` came from `Box::into_raw` in `into_job_ref` and runs once.
        let job = unsafe { Box::from_raw(this.cast::<Self>().cast_mut()) };
        let HeapJob { func, watch } = *job;
        let _entered = Active::enter(watch);
        func();
    }
}

/// The payload of a caught panic, to re-raise with `resume_unwind`.
pub(crate) type Panic = Box<dyn Any + Send>;

/// Whether `payload` is a watch's stop unwinding to its `run`, not a panic.
pub(crate) fn is_stop(payload: &Panic) -> bool {
    crate::watch::stopped_by(payload.as_ref()).is_some()
}

/// Resumes `payload`, the panic of one part of a fork (a `join`'s half, a `scope`'s body
/// or spawns), once the other part is done with `other`: `b`'s outcome when `a` panicked,
/// `a`'s result when `b` did, the scope body's value when a spawn did.
#[cold]
pub(crate) fn resume_winner<R>(payload: Panic, other: Outcome<R>) -> ! {
    // The other part's result is dropped here, not by the unwind, so that a panic in its
    // `Drop` (user code) counts as that part's panic instead of aborting the process.
    let other = other.and_then(|result| catch(move || drop(result)));
    // `payload` wins, unless it is only a watch's stop and the other part really panicked:
    // a panic is never hidden behind a stop. The loser (whose `Drop` is user code) is
    // dropped.
    let payload = match other {
        Err(panic) if is_stop(&payload) && !is_stop(&panic) => {
            let _ = catch(move || drop(payload));
            panic
        }
        other => {
            let _ = catch(move || drop(other));
            payload
        }
    };
    panic::resume_unwind(payload)
}

/// The message of a panic payload created by `panic!` with a literal or a format string.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}
