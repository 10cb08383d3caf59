//! The completion primitive under both task handles: [`Task`](crate::Task) (a closure on a
//! thread pool) and `ProcessTask` (a job on a process pool).
//!
//! A [`Completion`] holds a state byte, the outcome, and a list of *hooks* run once when
//! the job finishes (a waiting thread's latch, `on_done` callbacks, `as_completed`'s and
//! `wait`'s queues).
//!
//! # States
//!
//! The state's low two bits are the status: `QUEUED → RUNNING → DONE`, or
//! `QUEUED → CANCELLED`, or `QUEUED → DONE` (a process pool that is terminated delivers a
//! failure to a job it never sent), and back `RUNNING → QUEUED` (a process worker died
//! before it ran the job, which goes back to the queue). Bit 2 (`HOOKED`) says that hooks
//! were registered. Whoever runs the job claims it with [`start`](Completion::start), a
//! compare-exchange `QUEUED → RUNNING`; losing that race to [`cancel`](Completion::cancel)
//! means it drops the job unrun.
//!
//! # The outcome
//!
//! [`complete`](Completion::complete) writes the outcome under the `outcome` mutex, then
//! moves the status to `DONE` with one compare-exchange that keeps `HOOKED`, still under
//! the mutex; if that finds the job already finished (cancelled, or a second delivery) it
//! takes its outcome back out before anyone can see it. A reader takes the outcome under
//! the same mutex after it saw a finished status, so it sees either the outcome or the
//! cancellation, never a half-written slot. A taken outcome leaves [`Slot::Taken`] behind,
//! so a second taker learns that instead of finding nothing.
//!
//! # Hooks
//!
//! Hooks and completion race without a lost hook: a registrar pushes its hook under the
//! hooks mutex, then sets `HOOKED` with `fetch_or`. If the value it replaced already said
//! finished, the finisher did not see `HOOKED` (or took the list before the push), so the
//! registrar drains the list itself; otherwise the finisher's read-modify-write, which
//! comes later in the state's modification order, sees `HOOKED` and drains the list. The
//! list is drained under the mutex, so each hook runs exactly once.
//!
//! A hook can be removed again by the [`HookId`] its registration returned (a timed wait
//! that timed out removes its latch's hook), so that polling an unfinished job leaves
//! nothing behind. Removal also happens under the mutex: a hook is either removed or run,
//! never both.
//!
//! # Memory ordering
//!
//! The finishing transitions (`DONE`, `CANCELLED`) are `AcqRel`: the release half pairs
//! with readers that load the state with `Acquire`; the acquire half pairs with the
//! registrars' `fetch_or`. The outcome itself is handed over by its mutex.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::latch::{Wait, WaitLatch};
use crate::sync::{AtomicU8, Mutex, Ordering, lock};

/// Not started yet; can be cancelled.
const QUEUED: u8 = 0;
/// Claimed by whoever runs it.
const RUNNING: u8 = 1;
/// The outcome is written.
const DONE: u8 = 2;
/// Cancelled before it started; no outcome will come.
const CANCELLED: u8 = 3;
const STATUS: u8 = 0b011;
/// Hooks were registered and must be run when the job finishes.
const HOOKED: u8 = 0b100;

fn is_finished(state: u8) -> bool {
    matches!(state & STATUS, DONE | CANCELLED)
}

/// A callback run once when a job finishes.
pub(crate) type Hook = Box<dyn FnOnce() + Send>;

/// Names a registered hook, for [`Completion::remove_hook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HookId(u64);

/// The registered hooks, each with its id, and the id the next one gets.
#[derive(Default)]
struct Hooks {
    list: Vec<(HookId, Hook)>,
    next_id: u64,
}

/// Where the outcome is.
enum Slot<T> {
    /// Not delivered yet (or the job was cancelled).
    Empty,
    /// Delivered and not taken.
    Full(T),
    /// Taken by [`Completion::take`].
    Taken,
}

/// What [`Completion::take`] found in a finished job.
#[derive(Debug)]
pub(crate) enum Taken<T> {
    /// The outcome, moved out.
    Outcome(T),
    /// The job was cancelled before it started.
    Cancelled,
    /// An earlier `take` moved the outcome out: it is gone.
    Gone,
}

/// A job's state, outcome and hooks, shared by the job and its handle.
pub(crate) struct Completion<T> {
    state: AtomicU8,
    outcome: Mutex<Slot<T>>,
    hooks: Mutex<Hooks>,
}

impl<T> Completion<T> {
    pub(crate) fn new() -> Self {
        Completion {
            state: AtomicU8::new(QUEUED),
            outcome: Mutex::new(Slot::Empty),
            hooks: Mutex::new(Hooks::default()),
        }
    }

    /// Moves the status from one of `from` to `to`, keeping the `HOOKED` bit. Returns the
    /// previous state on success.
    fn transition(&self, from: &[u8], to: u8) -> Option<u8> {
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            if !from.contains(&(current & STATUS)) {
                return None;
            }
            // AcqRel: see the module docs (DONE and CANCELLED finish the job; the claim
            // and the requeue only need to agree with `cancel` on who leaves QUEUED).
            match self.state.compare_exchange_weak(
                current,
                (current & !STATUS) | to,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(previous) => return Some(previous),
                Err(actual) => current = actual,
            }
        }
    }

    /// Claims the job to run it; false if it was cancelled (or already claimed).
    pub(crate) fn start(&self) -> bool {
        self.transition(&[QUEUED], RUNNING).is_some()
    }

    /// Gives a claimed job back (it was not run after all): it can be cancelled again.
    #[cfg(all(feature = "process", target_os = "linux"))]
    pub(crate) fn requeue(&self) {
        let _ = self.transition(&[RUNNING], QUEUED);
    }

    /// Cancels a job that has not started; true on success.
    pub(crate) fn cancel(&self) -> bool {
        match self.transition(&[QUEUED], CANCELLED) {
            Some(previous) => {
                if previous & HOOKED != 0 {
                    self.run_hooks();
                }
                true
            }
            None => false,
        }
    }

    /// Stores the outcome and runs the hooks; false (and `outcome` is dropped) if the job
    /// had finished already (cancelled, or delivered before).
    pub(crate) fn complete(&self, outcome: T) -> bool {
        let (previous, unwanted) = {
            let mut slot = lock(&self.outcome);
            if self.is_finished() {
                // Delivered before, or cancelled: the slot is not ours to write.
                (None, Some(outcome))
            } else {
                *slot = Slot::Full(outcome);
                match self.transition(&[QUEUED, RUNNING], DONE) {
                    Some(previous) => (Some(previous), None),
                    // `cancel` won since the check above. Nobody reads the slot of a job
                    // they saw finished before this lock is released, so the outcome is
                    // taken back unseen.
                    None => match std::mem::replace(&mut *slot, Slot::Empty) {
                        Slot::Full(outcome) => (None, Some(outcome)),
                        Slot::Empty | Slot::Taken => (None, None),
                    },
                }
            }
        };
        // Dropped outside the lock: an outcome's `Drop` may be anything.
        drop(unwanted);
        match previous {
            Some(previous) => {
                if previous & HOOKED != 0 {
                    self.run_hooks();
                }
                true
            }
            None => false,
        }
    }

    /// Whether the job finished (done or cancelled). `Acquire`: pairs with the finishing
    /// transition.
    pub(crate) fn is_finished(&self) -> bool {
        is_finished(self.state.load(Ordering::Acquire))
    }

    /// Whether the job was cancelled. `Acquire`, as in `is_finished`.
    #[cfg(all(feature = "process", target_os = "linux"))]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) & STATUS == CANCELLED
    }

    /// A name for the current status, for `Debug` output.
    pub(crate) fn status_name(&self) -> &'static str {
        match self.state.load(Ordering::Acquire) & STATUS {
            QUEUED => "queued",
            RUNNING => "running",
            DONE => "done",
            _ => "cancelled",
        }
    }

    /// Whether the job finished with an outcome that `failed` says is a failure (and has
    /// not been taken). Cancellation is not a failure.
    pub(crate) fn finished_with(&self, failed: impl FnOnce(&T) -> bool) -> bool {
        if !self.is_finished() {
            return false;
        }
        match &*lock(&self.outcome) {
            Slot::Full(outcome) => failed(outcome),
            Slot::Empty | Slot::Taken => false,
        }
    }

    /// Registers `hook` to run once the job finishes, or runs it now if it has.
    pub(crate) fn add_hook(&self, hook: Hook) -> HookId {
        let (id, previous) = {
            let mut hooks = lock(&self.hooks);
            let id = HookId(hooks.next_id);
            hooks.next_id += 1;
            hooks.list.push((id, hook));
            (id, self.state.fetch_or(HOOKED, Ordering::AcqRel))
        };
        if is_finished(previous) {
            self.run_hooks();
        }
        id
    }

    /// Unregisters hook `id` unless it has run (or is running) already; true if it was
    /// removed, and then it never runs.
    pub(crate) fn remove_hook(&self, id: HookId) -> bool {
        let removed = {
            let mut hooks = lock(&self.hooks);
            let position = hooks.list.iter().rposition(|(hook_id, _)| *hook_id == id);
            position.map(|position| hooks.list.remove(position))
        };
        // Dropped outside the lock: a hook's captures may be anything.
        removed.is_some()
    }

    fn run_hooks(&self) {
        let hooks = std::mem::take(&mut lock(&self.hooks).list);
        for (_, hook) in hooks {
            hook();
        }
    }

    /// Takes the outcome of a job that [`is_finished`](Self::is_finished) said finished.
    pub(crate) fn take(&self) -> Taken<T> {
        debug_assert!(self.is_finished());
        let mut slot = lock(&self.outcome);
        match std::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Full(outcome) => Taken::Outcome(outcome),
            Slot::Taken => Taken::Gone,
            Slot::Empty => {
                *slot = Slot::Empty;
                Taken::Cancelled
            }
        }
    }

    /// Blocks until the job finished or `deadline` passed; true if it finished. The caller
    /// has spun already: this registers a latch as a hook and waits on it (see "Waiting
    /// inside a worker" in `pool/latch.rs`: a timed wait runs no other job meanwhile).
    #[cold]
    pub(crate) fn wait_cold(&self, deadline: Option<Instant>) -> bool {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return self.is_finished();
        }
        let latch = Arc::new(WaitLatch::for_current_thread(match deadline {
            None => Wait::Unrelated,
            Some(_) => Wait::Timed,
        }));
        let for_hook = Arc::clone(&latch);
        let hook = self.add_hook(Box::new(move || WaitLatch::set_shared(&for_hook)));
        if latch.wait_deadline(deadline) {
            return true;
        }
        // Timed out: nobody will wait on this latch any more.
        self.remove_hook(hook);
        self.is_finished()
    }
}

impl<T> fmt::Debug for Completion<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("status", &self.status_name())
            .finish_non_exhaustive()
    }
}

/// A deadline `timeout` from now, saturating instead of overflowing (`None` is never
/// returned: a timeout too long to represent waits a year, which no caller distinguishes
/// from forever).
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or(now + Duration::from_secs(60 * 60 * 24 * 365))
}

/// A completion seen without its outcome type: what [`as_completed`](crate::as_completed)
/// and [`wait`](crate::wait()) need from a task of either pool.
pub(crate) trait Signal: Send + Sync {
    /// Whether the job finished.
    fn is_finished(&self) -> bool;
    /// Whether the job finished with a failure whose outcome is still there to take.
    fn failed(&self) -> bool;
    /// As [`Completion::add_hook`].
    fn add_hook(&self, hook: Hook) -> HookId;
    /// As [`Completion::remove_hook`].
    fn remove_hook(&self, id: HookId) -> bool;
}

impl<A: Send, B: Send> Signal for Completion<Result<A, B>> {
    fn is_finished(&self) -> bool {
        Completion::is_finished(self)
    }

    fn failed(&self) -> bool {
        self.finished_with(Result::is_err)
    }

    fn add_hook(&self, hook: Hook) -> HookId {
        Completion::add_hook(self, hook)
    }

    fn remove_hook(&self, id: HookId) -> bool {
        Completion::remove_hook(self, id)
    }
}
