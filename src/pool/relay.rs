//! Relays: a fresh stack for a worker whose waits nest too deep.
//!
//! A worker that waits runs its pool's jobs meanwhile, on its own stack, at most
//! [`MAX_NESTED_WAITS`](super::registry::MAX_NESTED_WAITS) waits deep (see "Waiting inside a
//! worker" in `latch.rs`). An *unrelated* wait deeper than that (a task, an `install` into
//! another pool, a map's chunks) used to block its thread, and with it the worker: if the
//! latch could only be set by a job that this pool must run — `other.install(||
//! pool.submit(f).get())` on the only worker of `pool` — nobody ran it, and the program
//! hung. Such a wait now *hops*: the worker goes on waiting, running its pool's jobs, on
//! a **relay**, a thread of its own with a fresh stack, while the thread that waited parks
//! until the hop is over.
//!
//! # The worker moves, the pool stays the same size
//!
//! What hops is the worker itself — its `WorkerThread`: index, deque, join frames, sleep
//! state — not a copy: for the length of the hop the relay *is* worker `i` (it is the
//! current thread's worker, it takes jobs from worker `i`'s deque, it sleeps on worker
//! `i`'s condvar, `current_thread_index()` says `i`), and the thread below does nothing
//! at all. So at every moment each worker is held by exactly one running thread, and a
//! pool of `n` workers runs at most `n` jobs at once, as before. Nothing else in the pool
//! (the sleep protocol, stealing, the deques) knows that relays exist. Of the waiting
//! thread's own thread-locals, one moves with the worker: whether the wait was made inside
//! a progress callback ([`InCallback`]), which forbids nested calls of callbacks on the
//! relay as on the thread below. The others describe the job a thread runs (its watch,
//! its shared-memory buffers), are set by each job the relay runs, and start empty there,
//! as on any worker. This is rayon's
//! answer (a worker waiting across pools keeps running its own pool's jobs) with the stack
//! bounded, and Java's `ForkJoinPool` compensation (a blocked worker's place goes to a
//! spare thread) without the extra parallelism: Java's compensating thread is a new worker
//! that runs beside the blocked one once it wakes, a relay is the same worker, and the
//! thread below resumes only once the relay has handed it back.
//!
//! # The hand-over
//!
//! Each relay has one [`State`] word under a mutex, and a condvar both sides wait on:
//!
//! ```text
//!   Idle ──hop (the thread below)──▶ Hop(latch) ──relay: wait over──▶ Done
//!     ▲                                                               │
//!     └────────────────── the thread below takes the worker back ─────┘
//!   Idle ──stop (the worker's own thread, at exit)──▶ Exit
//! ```
//!
//! The thread below writes `Hop` and then waits for `Done`; the relay waits for `Hop`,
//! runs the wait as the worker ([`WorkerThread::act_as`]) until the latch is set, and
//! writes `Done`. Both writes happen under the mutex, so everything one thread did to the
//! worker happens before the other touches it: the worker is used by one thread at a
//! time, and each hand-over synchronises. The latch lives in the frame of the thread
//! below, which stays parked in [`Relays::hop`] until `Done`.
//!
//! # Depth, and how many threads
//!
//! Hops nest like the waits they continue: a wait on relay `k` that is again too deep
//! hops to relay `k + 1`, and a hop ends before the one below it can. So a worker's relays
//! form a stack, relay `k` serving every hop at depth `k`, started on the first one and
//! then parked (on its condvar: no CPU) between hops. A hop to depth `k` needs
//! `k × (MAX_NESTED_WAITS + 1)` waits nested on the worker, so a pool of `n` workers runs
//! on at most `n × (1 + ⌊D / 17⌋)` threads, where `D` is the deepest nesting of waits any
//! of its workers reached, and never more than `n × (1 + MAX_RELAYS)`. At `MAX_RELAYS` (or
//! if the OS refuses a thread) a wait blocks as it used to: the last resort, documented
//! under "Deadlock" in `latch.rs`.
//!
//! `D` is not only the program's own nesting. A job-running wait takes whatever job the
//! pool has queued, and that job may wait in turn, so waits nest *unrelated* jobs on top
//! of each other, and the nest unwinds in order: a wait whose latch is set returns only
//! once everything stacked above it has. Within one stack that is bounded by
//! `MAX_NESTED_WAITS`; across relays it is bounded only by `MAX_RELAYS`. On a pool with
//! a long queue of jobs that each wait for another pool which waits back (random join
//! trees with cross-pool cycles), a one-thread pool's worker reached 20–39 relays. A
//! remedy would give a relay a worker slot of its own (Java's compensation threads), so
//! that a wait resumes as soon as its latch is set instead of after the relay's stack;
//! it needs a registry whose set of deques and sleepers can grow, and is not done.
//!
//! # Lifetime
//!
//! A relay ends with its worker: when the worker's own thread leaves its loop (the pool
//! has terminated), no hop is under way (a hop lasts one wait, and the loop's own wait has
//! returned), so it stops its relays one by one and joins them ([`Relays::stop`]) before
//! its own exit handler runs. Dropping a pool joins its workers, so when `drop` returns
//! the relays have exited too; a pool dropped on a worker does not join, and its threads,
//! relays included, end on their own. A relay runs its worker's start handler when it
//! first takes the worker, and the exit handler as it ends, each as the worker (with its
//! index), and carries the worker's thread name and stack size.
//!
//! # What a hop costs
//!
//! Two condvar hand-offs (~15–25 µs each on the reference machine; the first hop of a
//! relay also starts its thread), and the relay's stack. And one thing besides: like any
//! job-running wait, a hopped wait returns only when the relay returns the worker, after
//! the job it runs at that moment, so a wait that used to block until its latch was set
//! may now be held up by that job (and by the ones nested in it, at most
//! `MAX_NESTED_WAITS` per relay).

use std::cell::RefCell;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::ThreadHandler;
use super::job::AbortIfPanic;
use super::latch::CoreLatch;
use super::registry::WorkerThread;
use crate::sync::lock;
use crate::watch::InCallback;

/// The most relays one worker starts; a wait that would need one more blocks (see
/// "Depth, and how many threads" in the module docs).
///
/// 64 relays carry a worker through about 64 × 17 = 1,088 nested waits. A program's own
/// nesting needs few (the 40-level cross-pool cycles in `tests/pool.rs` need three), but
/// waits also stack *unrelated* jobs, each of which may wait in turn: the random join
/// trees of depth 24 in `registry.rs`'s tests, with cycles between two pools in their
/// lower 8 levels, reached 10–29 relays on a one-thread pool (and 20–39 with cycles at
/// every level, where 32 was once too few and the wait blocked). 64 leaves twice the
/// margin and still caps what runaway recursion through waits costs: 64 threads per
/// worker, each with its stack (2 MiB of address space by default, touched only as far
/// as used), where a single stack of the default size overflowed between 3,000 and 6,000
/// nested task waits.
pub(crate) const MAX_RELAYS: usize = 64;

/// The relays of one worker, by hop depth (relay `k` holds the worker during hops to
/// depth `k + 1`). Part of the worker: only the thread holding the worker touches it.
#[derive(Debug, Default)]
pub(crate) struct Relays(RefCell<Vec<Relay>>);

/// A relay thread and its hand-over state.
#[derive(Debug)]
struct Relay {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
}

/// What the thread below and the relay share.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// Who holds the worker, between a relay and the thread below it (see "The hand-over").
#[derive(Debug, Default)]
enum State {
    /// The thread below holds the worker; the relay is parked.
    #[default]
    Idle,
    /// The relay holds the worker and waits for the latch, running the pool's jobs, inside
    /// a progress callback if the thread below waited in one.
    Hop(LatchPtr, InCallback),
    /// The latch was set and the relay let go of the worker: the thread below takes it back.
    Done,
    /// The worker is exiting: the relay runs the exit handler and ends.
    Exit,
}

/// The latch of a hop: in the frame of the thread below, which stays parked until `Done`.
#[derive(Debug, Clone, Copy)]
struct LatchPtr(*const CoreLatch);

// SAFETY: a `CoreLatch` is an atomic word, usable from any thread; the pointer is only
// dereferenced during the hop, while the frame holding the latch is parked in `hop`.
unsafe impl Send for LatchPtr {}

/// The worker a relay serves: a local of its `main_loop`, which outlives the relay (it
/// joins its relays before it returns).
#[derive(Debug, Clone, Copy)]
struct WorkerPtr(*const WorkerThread);

// SAFETY: the relay dereferences it only while it holds the worker (during a hop, or at
// exit while the worker's own thread waits in `Relays::stop`); see "The hand-over".
unsafe impl Send for WorkerPtr {}

impl Relays {
    /// Continues the current wait (for `latch`) of `worker`, held by the calling thread at
    /// hop depth `depth`, on relay `depth`, starting it if needed; returns once the latch is
    /// set and the relay gave the worker back. False, with nothing done, if no relay can be
    /// had (`depth` is [`MAX_RELAYS`], or the OS refused a thread).
    pub(crate) fn hop(&self, worker: &WorkerThread, depth: usize, latch: &CoreLatch) -> bool {
        let shared = {
            let mut relays = self.0.borrow_mut();
            // Relay `depth - 1` holds us, so relays 0..depth exist.
            debug_assert!(depth <= relays.len());
            if depth == relays.len() {
                if depth == MAX_RELAYS {
                    return false;
                }
                match Relay::start(worker) {
                    Some(relay) => relays.push(relay),
                    None => return false,
                }
            }
            // The borrow ends here: the relay borrows the list in turn for a deeper hop.
            Arc::clone(&relays[depth].shared)
        };
        let mut state = lock(&shared.state);
        debug_assert!(matches!(*state, State::Idle), "a relay asked for twice");
        *state = State::Hop(LatchPtr(latch), InCallback::here());
        shared.changed.notify_all();
        // From here the relay holds the worker: touch nothing of it until `Done`.
        while !matches!(*state, State::Done) {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        *state = State::Idle;
        true
    }

    /// Ends every relay and joins it; called by the worker's own thread as it exits, when
    /// no hop is under way.
    pub(crate) fn stop(&self) {
        for relay in self.0.take() {
            {
                let mut state = lock(&relay.shared.state);
                debug_assert!(matches!(*state, State::Idle), "a relay stopped mid-hop");
                *state = State::Exit;
                relay.shared.changed.notify_all();
            }
            // The relay runs the exit handler as the worker while we wait here. It never
            // unwinds (its loop aborts on a panic), so there is no error to report.
            let _ = relay.thread.join();
        }
    }
}

impl Relay {
    /// Starts a relay for `worker` (parked until its first hop); `None` if the OS refuses
    /// the thread.
    fn start(worker: &WorkerThread) -> Option<Relay> {
        let shared = Arc::new(Shared::default());
        let for_thread = Arc::clone(&shared);
        let worker_ptr = WorkerPtr(std::ptr::from_ref(worker));
        let handlers = worker.setup().handlers();
        let thread = worker
            .setup()
            .thread()
            .spawn(move || relay_loop(&for_thread, worker_ptr, handlers))
            .ok()?;
        Some(Relay { shared, thread })
    }
}

/// The relay's thread: wait for a hop, run it as the worker, hand the worker back; at
/// `Exit`, end. The start handler runs on the first hop, the exit handler at the end, both
/// as the worker. Under the abort guard: jobs catch their own panics, and a panic in a
/// handler or in the pool's code aborts, as on the worker's own thread.
fn relay_loop(
    shared: &Shared,
    worker: WorkerPtr,
    (start_handler, exit_handler): (Option<ThreadHandler>, Option<ThreadHandler>),
) {
    let abort = AbortIfPanic;
    // SAFETY: the worker outlives its relays (`WorkerPtr`); this reference is only used
    // through `act_as`, while this thread holds the worker (below).
    let worker = unsafe { &*worker.0 };
    let mut started = false;
    loop {
        let latch = {
            let mut state = lock(&shared.state);
            loop {
                match *state {
                    State::Hop(latch, in_callback) => break Some((latch, in_callback)),
                    State::Exit => break None,
                    State::Idle | State::Done => {
                        state = shared
                            .changed
                            .wait(state)
                            .unwrap_or_else(|p| p.into_inner());
                    }
                }
            }
        };
        let Some((latch, in_callback)) = latch else {
            break;
        };
        // SAFETY: `Hop` hands us the worker: the thread below parks until `Done` and wrote
        // `Hop` under the mutex we read it under. The latch lives in its frame meanwhile.
        unsafe {
            worker.act_as(|worker| {
                if !started {
                    started = true;
                    if let Some(handler) = &start_handler {
                        handler(worker.index());
                    }
                }
                in_callback.carry(|| worker.relayed_wait(&*latch.0));
            });
        }
        let mut state = lock(&shared.state);
        *state = State::Done;
        shared.changed.notify_all();
    }
    if let Some(handler) = exit_handler.filter(|_| started) {
        // SAFETY: `Exit` comes from the worker's own thread in `Relays::stop`, which waits
        // in `join` for this thread: we hold the worker.
        unsafe { worker.act_as(|worker| handler(worker.index())) };
    }
    std::mem::forget(abort);
}
