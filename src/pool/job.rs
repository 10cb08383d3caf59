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
use std::cell::{Cell, UnsafeCell};
use std::mem::MaybeUninit;
use std::panic::{self, AssertUnwindSafe};

use super::latch::{Latch, SpinLatch};
use super::registry::WorkerThread;
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

    /// Whether `self` is the job of the `join` frame `frame`.
    #[inline]
    pub(crate) fn is_frame(&self, frame: &FrameHead) -> bool {
        std::ptr::eq(self.pointer, std::ptr::from_ref(frame).cast())
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
}

/// A job stored in the stack frame of the thread that waits for it (a job injected from
/// outside a pool). Its latch is set once the result is written.
pub(crate) struct StackJob<L: Latch, F, R> {
    /// The watch of the thread that made the job, borrowed (the owner waits for the job):
    /// entered by whichever thread executes it.
    watch: Option<Borrowed>,
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
            watch,
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
        // SAFETY: the job's owner made it under this watch and waits for the job (its
        // latch, set below after the guard is dropped), in the frame where the watch is
        // installed or one inside it: the watch outlives this run.
        let entered = unsafe { Active::enter_borrowed(this.watch) };
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

/// The type-erased part of a `join`'s `b` half (a [`JoinJob`], whose first field it is):
/// what the owner's frame list links (see "Join frames" in `registry.rs`) and what
/// publishing the frame fills in. A frame is *private* until published: then only its owner
/// touches it, and nothing but `prev` and `execute` is written, so recording a `join` costs
/// a few stores.
#[repr(C)]
pub(crate) struct FrameHead {
    /// The next older frame of the owner's list (its root for the oldest one).
    prev: Cell<*const FrameHead>,
    /// The next newer frame: scratch space for the walk that publishes every private frame
    /// (`WorkerThread::publish_all_frames`), which writes it before it reads it.
    next: Cell<MaybeUninit<*const FrameHead>>,
    /// Runs the [`JoinJob`] this head belongs to.
    execute: unsafe fn(*const ()),
    /// The watch in force where the frame was made, borrowed (the owner waits for the
    /// job). Written when the frame is published: the owner's watch cannot change while it
    /// holds private frames (a change publishes them first), so it is the one in force
    /// where the `join` was made.
    watch: UnsafeCell<MaybeUninit<Option<Borrowed>>>,
    /// Set by whoever runs the published job. Written when the frame is published.
    latch: UnsafeCell<MaybeUninit<SpinLatch>>,
}

impl std::fmt::Debug for FrameHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameHead")
            .field("prev", &self.prev.get())
            .finish_non_exhaustive()
    }
}

impl FrameHead {
    /// The root of a worker's frame list: never published, never executed.
    pub(crate) fn root() -> FrameHead {
        /// A root is never published, so never executed.
        unsafe fn never(_: *const ()) {
            unreachable!("the root of a frame list was executed");
        }
        FrameHead {
            prev: Cell::new(std::ptr::null()),
            next: Cell::new(MaybeUninit::uninit()),
            execute: never,
            watch: UnsafeCell::new(MaybeUninit::uninit()),
            latch: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Links `self`, a new frame, on top of `newest`; the owner's list is the only caller.
    #[inline]
    pub(crate) fn link_above(&self, newest: *const FrameHead) {
        self.prev.set(newest);
    }

    /// Records `newer` as the frame above this one, for a walk up the list.
    #[inline]
    pub(crate) fn set_next(&self, newer: *const FrameHead) {
        self.next.set(MaybeUninit::new(newer));
    }

    /// The next older frame.
    #[inline]
    pub(crate) fn prev(&self) -> *const FrameHead {
        self.prev.get()
    }

    /// The next newer frame.
    ///
    /// # Safety
    ///
    /// [`Self::set_next`] has recorded the frame now above this one.
    #[inline]
    pub(crate) unsafe fn next(&self) -> *const FrameHead {
        // SAFETY: written by `set_next` (the caller's contract).
        unsafe { self.next.get().assume_init() }
    }

    /// Publishes the frame: fills in its watch and latch and returns the job to push on the
    /// owner's deque.
    ///
    /// # Safety
    ///
    /// `self` is a private frame of `owner`'s list (no other thread can reach it), and not
    /// the root.
    #[inline]
    pub(crate) unsafe fn publish(&self, owner: &WorkerThread, watch: Option<Borrowed>) -> JobRef {
        // SAFETY: private, so nobody else reads these cells (the caller's contract).
        unsafe {
            self.watch.get().write(MaybeUninit::new(watch));
            self.latch
                .get()
                .write(MaybeUninit::new(SpinLatch::new(owner)));
        }
        JobRef {
            pointer: std::ptr::from_ref(self).cast(),
            execute_fn: self.execute,
        }
    }

    /// The latch of a published frame.
    ///
    /// # Safety
    ///
    /// The frame has been published (its latch written).
    #[inline]
    pub(crate) unsafe fn latch(&self) -> &SpinLatch {
        // SAFETY: written by `publish` (the caller's contract) and never moved.
        unsafe { (*self.latch.get()).assume_init_ref() }
    }
}

/// The `b` half of a `join`, in the `join`'s stack frame: a [`FrameHead`] that the worker's
/// frame list links, and the closure, run by the owner unless the frame was published and
/// another worker took it (then the result comes back through `result` and the latch).
///
/// No field has drop glue: every way out of a `join` takes the closure exactly once (runs
/// it, or lets the thief run it), and the result only when a thief wrote it.
#[repr(C)]
pub(crate) struct JoinJob<F, R> {
    /// First, so that a pointer to the head is a pointer to the job.
    head: FrameHead,
    func: UnsafeCell<MaybeUninit<F>>,
    result: UnsafeCell<MaybeUninit<Outcome<R>>>,
}

impl<F: FnOnce() -> R + Send, R: Send> JoinJob<F, R> {
    /// A private frame holding `func`; link it with the worker's `push_frame`.
    #[inline]
    pub(crate) fn new(func: F) -> Self {
        JoinJob {
            head: FrameHead {
                prev: Cell::new(std::ptr::null()),
                next: Cell::new(MaybeUninit::uninit()),
                execute: <Self as Job>::execute,
                watch: UnsafeCell::new(MaybeUninit::uninit()),
                latch: UnsafeCell::new(MaybeUninit::uninit()),
            },
            func: UnsafeCell::new(MaybeUninit::new(func)),
            result: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    #[inline]
    pub(crate) fn head(&self) -> &FrameHead {
        &self.head
    }

    /// Takes the closure to run it on the owner's thread.
    ///
    /// # Safety
    ///
    /// Called once, by the owner, while no other thread can reach the job: it was never
    /// published, or was popped back from the owner's deque before anyone took it.
    #[inline]
    pub(crate) unsafe fn take_func(&self) -> F {
        // SAFETY: written by `new`, read once (the caller's contract).
        unsafe { (*self.func.get()).assume_init_read() }
    }

    /// Takes the outcome written by the thread that ran the published job.
    ///
    /// # Safety
    ///
    /// The frame's latch was observed set (which orders the write before this read), and
    /// this is the only read.
    #[inline]
    pub(crate) unsafe fn take_outcome(&self) -> Outcome<R> {
        // SAFETY: written by `execute` before it set the latch (the caller's contract).
        unsafe { (*self.result.get()).assume_init_read() }
    }
}

impl<F: FnOnce() -> R + Send, R: Send> Job for JoinJob<F, R> {
    unsafe fn execute(this: *const ()) {
        // SAFETY: `this` came from `FrameHead::publish` of this job's head (its first field,
        // `repr(C)`), whose owner keeps the job alive until its latch is set below.
        let this = unsafe { &*this.cast::<Self>() };
        let abort = AbortIfPanic;
        // SAFETY: a published job is executed once, and its owner does not take the
        // closure back once another thread has taken the job from the deque.
        let func = unsafe { (*this.func.get()).assume_init_read() };
        // SAFETY: written by `publish`, and only a published job is executed.
        let watch = unsafe { (*this.head.watch.get()).assume_init() };
        // SAFETY: the job's owner made it under this watch and waits for the job (its
        // latch, set below after the guard is dropped), in the frame where the watch is
        // installed or one inside it: the watch outlives this run.
        let entered = unsafe { Active::enter_borrowed(watch) };
        // SAFETY: as above; the owner reads `result` only once the latch is set.
        unsafe { (*this.result.get()).write(catch(func)) };
        drop(entered);
        // HAZARD: once the latch is set the owner may return and free `this`; `set` reads
        // everything it needs before publishing.
        // SAFETY: the latch was written by `publish`, is alive here, and `set` does not
        // touch it afterwards.
        unsafe { SpinLatch::set(this.head.latch()) };
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
