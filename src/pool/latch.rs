//! Completion signals ("latches"): set once by one thread, waited for by another.
//!
//! Every latch is built on [`CoreLatch`], a four-state word that also carries the
//! waiter's sleep protocol, so that setting a latch costs one atomic swap and wakes the
//! waiter only when it actually went to sleep:
//!
//! ```text
//!            get_sleepy           fall_asleep
//!   UNSET ───────────────▶ SLEEPY ───────────────▶ SLEEPING
//!     ▲                      │                        │
//!     └──────── wake_up ─────┴────────────────────────┘
//!   any state ── set ──▶ SET   (set reports whether the old state was SLEEPING)
//!   SLEEPY, SLEEPING ── poke ──▶ UNSET   (new work for the waiter; SLEEPING: wake it)
//! ```
//!
//! Waiters never block on an `UNSET`/`SLEEPY` latch: they move it to `SLEEPING` first
//! (under their sleep mutex for workers, before `park` for plain threads), and the setter,
//! seeing `SLEEPING` in the value its swap returned, wakes them. A setter that swaps first
//! makes the waiter's `fall_asleep` compare-exchange fail, so the waiter never blocks on a
//! latch that is already set: no lost wake-up.
//!
//! # Memory ordering
//!
//! `set` swaps with `AcqRel` and `probe` loads with `Acquire`: everything the setter wrote
//! before `set` (a job's result, a task's value) is visible to the waiter once `probe`
//! returns true. `poke` and `get_sleepy` are `AcqRel` RMWs: a job pushed before a poke is
//! visible to a waiter whose `get_sleepy` comes after it (see `Sleep::block_on_latch`).
//! The other sleepy/asleep transitions are `Relaxed` (they carry no data; the sleep mutex
//! orders them against the wake).
//!
//! # Waiting inside a worker
//!
//! A worker that waits (`Task::get`, `install` into another pool, a `scope`, a blocking
//! map's feeder, a stolen `join` half) must not simply block: the work it waits for may
//! sit in its own deque. So a [`WaitLatch`] made on a worker normally *runs other jobs*
//! while it waits (its own deque first, then stealing, then the injector; see
//! `WorkerThread::wait_until`), and sleeps through the pool's sleep protocol when there
//! are none. What that costs, and the limits that keep it bounded:
//!
//! - **Stack.** Every job run meanwhile runs on the waiter's stack, and may wait in turn.
//!   Each worker counts the `wait_until` frames on its stack. A wait for *unrelated* work
//!   ([`Wait::Unrelated`]: a task, an `install` into another pool, a map's chunks running
//!   elsewhere) that starts while
//!   [`MAX_NESTED_WAITS`](super::registry::MAX_NESTED_WAITS) job-running waits are already
//!   under way (besides the main loop's) *hops*: the worker goes on waiting, and running
//!   its pool's jobs, on a **relay**, a parked thread with a fresh stack, while the thread
//!   that waited parks until the latch is set and the relay hands the worker back
//!   (`relay.rs`). The relay *is* the worker for that time (same index, deque and sleep
//!   state), so the pool still runs at most one thread per worker, and no thread's stack
//!   holds more than that many job-running waits, whatever the queue length. The relays
//!   of a worker nest like its waits; `relay.rs` gives the bound on threads. One exception
//!   avoids the hop in a recursion through tasks: a wait that deep for a task of the
//!   waiter's own pool that nobody has started claims the task and runs it inline
//!   (`task.rs`, "Running a task inline"), which grows the stack with the program's own
//!   recursion, like a function call, not with the queue. A wait for work the waiter
//!   forked itself ([`Wait::Forked`]: a `scope`'s jobs, like a `join`'s stolen half)
//!   does not hop (its jobs may sit in its own deque, and a hop per stolen half would
//!   cost two thread hand-offs each); beyond the same limit it runs only *its own* jobs
//!   — its own deque's, and its scope's spawns made off the pool (`scope.rs`, "Spawning
//!   from outside the pool") — never stolen or injected ones, which would stack
//!   unrelated tasks that each `join` or `scope` on one worker in proportion to the
//!   queue. With none left it spins briefly, then sleeps on its latch without counting as
//!   an idle worker (`Sleep::block_on_latch`), and the latch's setter, or an off-pool
//!   spawn's poke, wakes it: no CPU is burnt while the stolen half runs elsewhere. What
//!   stays unbounded is nesting through the own deque: a thread that pushed many tasks
//!   itself and then waits deep may run them on top of each other.
//! - **Head-of-line blocking.** A wait returns only when the job it is running meanwhile
//!   returns: a task whose result is ready stays blocked under the later jobs stacked on
//!   it, at most `MAX_NESTED_WAITS` of them on one stack (each of which may wait in turn).
//!   A wait that hopped returns when the relay hands the worker back, after the job the
//!   relay is running then (and what is nested in it, up to the same limit per relay).
//! - **Timeouts.** A timed wait (`get_timeout`, `wait_timeout`) runs no other job: a job
//!   cannot be interrupted, so one taken meanwhile could outlast the timeout by its whole
//!   run time. It blocks its thread (spin, then `park_timeout`) and returns within its
//!   timeout plus the wake-up latency. The price: on a pool whose every worker is in such a
//!   wait, queued jobs wait too, and a timed wait for a task queued behind it on the same
//!   worker can only time out.
//! - **Deadlock.** No untimed wait holds its worker away from the pool's jobs: it runs
//!   them, or hops to a relay that does, or (forked, deep) runs its own while its stolen
//!   jobs run on workers that are themselves live by the same rule. So work that only the
//!   waiter's pool can run always finds a thread: `other.install(|| pool.submit(f).get())`
//!   on the only worker of `pool`, at any depth, ends. What is left: a timed wait holds
//!   its worker until its deadline (it cannot hang, but queued work waits behind it, as
//!   above); and a worker whose relays reach [`MAX_RELAYS`](super::relay::MAX_RELAYS)
//!   (hundreds of nested waits), or that the OS refuses a relay thread, blocks as every
//!   deep wait used to, so a cycle that needs its pool's jobs hangs there, as in Python's
//!   `ThreadPoolExecutor` once all its threads wait.
//!
//! # The hazard
//!
//! A latch usually lives in the waiter's stack frame or in a structure the waiter frees as
//! soon as it sees the latch set. Each `set` therefore reads everything it needs to wake the
//! waiter (the registry, the worker index, a `Thread` handle) *before* the swap, and touches
//! nothing of the latch after it.

use std::sync::Arc;
use std::time::Instant;

use super::backoff::{THREAD_SPIN_ROUNDS, snooze};
use super::registry::{ForkedJobs, Registry, WorkerThread};
use crate::sync::{AtomicUsize, Ordering, Thread, thread};

/// Nobody has set the latch, and the waiter is awake.
const UNSET: usize = 0;
/// The waiter is about to sleep; it will still check the latch once more.
const SLEEPY: usize = 1;
/// The waiter is (about to be) blocked: the setter must wake it.
const SLEEPING: usize = 2;
/// The latch is set; the waiter may go on (and free the latch).
const SET: usize = 3;

/// The state word shared by all latches; see the module docs for the state machine.
#[derive(Debug)]
pub(crate) struct CoreLatch {
    state: AtomicUsize,
}

impl CoreLatch {
    pub(crate) fn new() -> Self {
        CoreLatch {
            state: AtomicUsize::new(UNSET),
        }
    }

    /// UNSET → SLEEPY; false if the latch was set meanwhile.
    #[inline]
    pub(crate) fn get_sleepy(&self) -> bool {
        // AcqRel: pairs with `poke` (see "Memory ordering").
        self.state
            .compare_exchange(UNSET, SLEEPY, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// SLEEPY → UNSET: the waiter found work after all and will not block now.
    #[inline]
    pub(crate) fn stay_awake(&self) {
        let _ = self
            .state
            .compare_exchange(SLEEPY, UNSET, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Tells the waiter that work it may run arrived, without setting the latch: a waiter
    /// about to block (SLEEPY) looks again, and one that blocks (SLEEPING) must be woken,
    /// which the `true` result asks the caller to do. Both go back to UNSET. The caller
    /// pushed the work first; the RMW (made even when nothing changes) publishes it to the
    /// waiter's next `get_sleepy` (see `Sleep::block_on_latch`).
    pub(crate) fn poke(&self) -> bool {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            if current == SET {
                return false;
            }
            // AcqRel: pairs with `get_sleepy` (see "Memory ordering").
            match self.state.compare_exchange_weak(
                current,
                UNSET,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(previous) => return previous == SLEEPING,
                Err(actual) => current = actual,
            }
        }
    }

    /// SLEEPY → SLEEPING; false if the latch was set meanwhile (then the waiter must not
    /// block).
    #[inline]
    pub(crate) fn fall_asleep(&self) -> bool {
        self.state
            .compare_exchange(SLEEPY, SLEEPING, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Back to UNSET after a wake-up, unless the latch is set.
    #[inline]
    pub(crate) fn wake_up(&self) {
        if !self.probe() {
            let _ =
                self.state
                    .compare_exchange(SLEEPING, UNSET, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Sets the latch; true when the waiter was asleep and must be woken.
    ///
    /// # Safety
    ///
    /// `this` must point at a live latch. It may be freed by the waiter as soon as the swap
    /// happened: the caller must not use it afterwards.
    #[inline]
    pub(crate) unsafe fn set(this: *const Self) -> bool {
        // Release: publishes the job's result; Acquire: pairs with nothing the setter reads
        // but keeps the swap a full RMW in the latch's modification order.
        // SAFETY: `this` is live until the swap (the caller's contract).
        let old = unsafe { (*this).state.swap(SET, Ordering::AcqRel) };
        old == SLEEPING
    }

    /// Sets a latch that outlives the call (a worker's terminate latch) and wakes worker
    /// `index` of `registry` if it sleeps on it.
    pub(crate) fn set_and_notify(&self, registry: &Registry, index: usize) {
        // SAFETY: `self` is borrowed for the whole call, so it outlives the swap.
        if unsafe { CoreLatch::set(self) } {
            registry.notify_worker_latch_is_set(index);
        }
    }

    /// Whether the latch is set. `Acquire` pairs with the swap in `set`.
    #[inline]
    pub(crate) fn probe(&self) -> bool {
        self.state.load(Ordering::Acquire) == SET
    }
}

/// Something that can be set once, waking its waiter.
pub(crate) trait Latch {
    /// Sets the latch.
    ///
    /// # Safety
    ///
    /// `this` must point at a live latch; it may be freed during the call (see the module
    /// docs on the hazard), so implementations read what they need first.
    unsafe fn set(this: *const Self);
}

/// The latch of a `join` frame: waited for by the worker that owns the frame, set by a
/// worker of the same registry (so the registry outlives the `set` call without a reference
/// count of its own).
#[derive(Debug)]
pub(crate) struct SpinLatch<'r> {
    pub(crate) core: CoreLatch,
    owner: &'r WorkerThread,
}

impl<'r> SpinLatch<'r> {
    pub(crate) fn new(owner: &'r WorkerThread) -> Self {
        SpinLatch {
            core: CoreLatch::new(),
            owner,
        }
    }
}

impl Latch for SpinLatch<'_> {
    #[inline]
    unsafe fn set(this: *const Self) {
        // SAFETY: `this` is live until `CoreLatch::set` (the caller's contract). The owner's
        // registry and index are read first: they are immutable fields, and once the latch
        // is set the owner may go on and, eventually, its thread may exit. The registry
        // itself stays alive because the setting thread is one of its workers.
        let (registry, index, core) = unsafe {
            let owner = (*this).owner;
            (owner.registry(), owner.index(), &raw const (*this).core)
        };
        // SAFETY: `core` is live until the swap inside `set`; not used after.
        if unsafe { CoreLatch::set(core) } {
            registry.notify_worker_latch_is_set(index);
        }
    }
}

/// Who waits on a [`WaitLatch`], and how to wake them.
#[derive(Debug, Clone)]
enum Waiter {
    /// A worker thread: it runs other jobs while waiting and sleeps through the registry.
    Worker {
        registry: Arc<Registry>,
        index: usize,
    },
    /// Any other thread: it spins briefly, then parks.
    Thread(Thread),
}

impl Waiter {
    fn wake(&self) {
        match self {
            Waiter::Worker { registry, index } => registry.notify_worker_latch_is_set(*index),
            Waiter::Thread(thread) => thread.unpark(),
        }
    }
}

/// What a [`WaitLatch`] waits for, which decides what a waiting worker may do meanwhile
/// (see "Waiting inside a worker" in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Work the waiter forked (a `scope`'s jobs): run other jobs meanwhile; beyond the
    /// nesting limit only its own (its deque's, its scope's off-pool spawns), then sleep.
    Forked,
    /// Work anyone may hold (a task, an `install` into another pool, chunks claimed by
    /// other threads): run other jobs meanwhile; beyond the nesting limit, on a relay.
    Unrelated,
    /// A wait with a deadline: block, run nothing.
    Timed,
}

/// A latch for the thread that creates it: a worker of any pool waits by running its own
/// pool's jobs (within the limits of "Waiting inside a worker" in the module docs), any
/// other thread, and a worker in a timed wait, spins then parks. Used by `install` and `join` from outside a pool, across
/// pools, by `scope`, by the map window's feeder, and by task handles.
#[derive(Debug)]
pub(crate) struct WaitLatch {
    core: CoreLatch,
    waiter: Waiter,
    wait: Wait,
}

impl WaitLatch {
    /// A latch whose waiter is the calling thread, waiting for `wait`: on a worker, one
    /// that runs other jobs while it waits, or one that blocks (see [`Wait`]).
    pub(crate) fn for_current_thread(wait: Wait) -> Self {
        let waiter = match WorkerThread::current() {
            Some(worker) if wait != Wait::Timed => Waiter::Worker {
                registry: Arc::clone(worker.registry_arc()),
                index: worker.index(),
            },
            _ => Waiter::Thread(thread::current()),
        };
        WaitLatch {
            core: CoreLatch::new(),
            waiter,
            wait,
        }
    }

    /// Whether the latch is set.
    #[inline]
    pub(crate) fn probe(&self) -> bool {
        self.core.probe()
    }

    /// Blocks the creating thread until the latch is set.
    pub(crate) fn wait(&self) {
        let set = self.wait_deadline(None);
        debug_assert!(set);
    }

    /// Blocks the creating thread until the latch is set or `deadline` passes; returns
    /// whether the latch is set. Must be called on the thread that created the latch; a
    /// deadline needs a latch made for [`Wait::Timed`].
    pub(crate) fn wait_deadline(&self, deadline: Option<Instant>) -> bool {
        self.wait_inner(deadline, None)
    }

    /// [`WaitLatch::wait_deadline`]; a waiting worker also runs `forked` (a scope's jobs
    /// spawned off its pool).
    fn wait_inner(&self, deadline: Option<Instant>, forked: Option<&ForkedJobs>) -> bool {
        if self.probe() {
            return true;
        }
        match &self.waiter {
            Waiter::Worker { .. } => {
                assert!(deadline.is_none(), "a job-running wait with a deadline");
                let worker =
                    WorkerThread::current().expect("a worker's latch waited off its thread");
                worker.wait_until(&self.core, self.wait, forked);
                true
            }
            Waiter::Thread(_) => {
                if let Some(worker) = WorkerThread::current() {
                    // A worker that blocks leaves its private `join` halves to the others.
                    worker.publish_all_frames();
                }
                self.park_until(deadline)
            }
        }
    }

    /// The outside-thread wait: bounded spinning, then park (see [`THREAD_SPIN_ROUNDS`]).
    #[cold]
    fn park_until(&self, deadline: Option<Instant>) -> bool {
        for round in 0..THREAD_SPIN_ROUNDS {
            if self.probe() {
                return true;
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return false;
            }
            snooze(round);
        }
        if !self.core.get_sleepy() || !self.core.fall_asleep() {
            return self.probe();
        }
        // SLEEPING: from here the setter unparks us. Unpark tokens make a wake that lands
        // before `park` harmless, and spurious wake-ups just loop.
        loop {
            if self.probe() {
                return true;
            }
            match deadline {
                None => park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        self.core.wake_up();
                        return self.probe();
                    }
                    park_timeout(deadline - now);
                }
            }
        }
    }
}

#[cfg(not(parpool_loom))]
fn park() {
    thread::park();
}

#[cfg(not(parpool_loom))]
fn park_timeout(timeout: std::time::Duration) {
    thread::park_timeout(timeout);
}

#[cfg(parpool_loom)]
fn park() {
    thread::park();
}

// loom has no timed park; a timed wait is modelled as an untimed one.
#[cfg(parpool_loom)]
fn park_timeout(_timeout: std::time::Duration) {
    thread::park();
}

impl WaitLatch {
    /// New work for the waiter arrived (see [`CoreLatch::poke`]): wake it if it sleeps.
    /// The latch must stay alive through the call (the caller holds what keeps it unset).
    fn poke(&self) {
        if self.core.poke() {
            self.waiter.wake();
        }
    }

    /// Sets a shared latch; the `Arc` keeps it alive through the call.
    pub(crate) fn set_shared(this: &Arc<WaitLatch>) {
        // SAFETY: `this` is live for the whole call.
        unsafe { WaitLatch::set(&**this) }
    }
}

impl Latch for WaitLatch {
    #[inline]
    unsafe fn set(this: *const Self) {
        // HAZARD: the waiter may free `*this` right after the swap; take our own handle to
        // it first.
        // SAFETY: `this` is live until `CoreLatch::set` (the caller's contract).
        let (waiter, core) = unsafe { ((*this).waiter.clone(), &raw const (*this).core) };
        // SAFETY: `core` is live until the swap inside `set`; not used after.
        if unsafe { CoreLatch::set(core) } {
            waiter.wake();
        }
    }
}

/// A latch set when a counter of outstanding jobs drops to zero (`scope`).
#[derive(Debug)]
pub(crate) struct CountLatch {
    counter: AtomicUsize,
    latch: WaitLatch,
}

impl CountLatch {
    /// A latch with one outstanding job (the creator's own), waited for by the caller.
    pub(crate) fn for_current_thread() -> Self {
        CountLatch {
            counter: AtomicUsize::new(1),
            latch: WaitLatch::for_current_thread(Wait::Forked),
        }
    }

    /// One more outstanding job.
    pub(crate) fn increment(&self) {
        // Relaxed: the increment happens before the job is published, and publishing is a
        // release operation of its own (deque push / injector push).
        let previous = self.counter.fetch_add(1, Ordering::Relaxed);
        debug_assert!(previous != 0, "scope latch incremented after completion");
    }

    /// Waits until every outstanding job called `set`; a waiting worker also runs `forked`
    /// (the scope's jobs spawned off its pool).
    pub(crate) fn wait(&self, forked: &ForkedJobs) {
        let set = self.latch.wait_inner(None, Some(forked));
        debug_assert!(set);
    }

    /// A job the waiter may run was queued where it does not otherwise look (`forked` of
    /// [`CountLatch::wait`]): wake it if it sleeps. The caller holds an outstanding job, so
    /// the latch stays unset and alive through the call.
    pub(crate) fn poke(&self) {
        self.latch.poke();
    }
}

impl Latch for CountLatch {
    #[inline]
    unsafe fn set(this: *const Self) {
        // AcqRel: each job's writes (a recorded panic) happen before the last decrement,
        // which happens before the waiter's acquire `probe`.
        // SAFETY: `this` is live while the counter is non-zero (the waiter waits for the
        // inner latch, which only the final decrement sets).
        if unsafe { (*this).counter.fetch_sub(1, Ordering::AcqRel) } == 1 {
            // SAFETY: as above; `WaitLatch::set` handles the hazard from here.
            unsafe { WaitLatch::set(&raw const (*this).latch) };
        }
    }
}
