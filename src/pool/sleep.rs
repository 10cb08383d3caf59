//! When idle workers spin, sleep and wake.
//!
//! # The protocol
//!
//! A worker that runs out of work becomes *inactive* and searches: it looks at its own
//! deque, steals from the others and pops the injector, with bounded backoff between rounds
//! ([`ROUNDS_UNTIL_SLEEPY`] of them: spin-loop hints first, then `yield_now`). Still empty
//! handed, it becomes *sleepy*: it records the **jobs event counter** (JEC) and searches
//! one last time. Then, holding its own sleep mutex, it registers as *sleeping* with a
//! compare-exchange that only succeeds if the JEC has not moved since it became sleepy, and
//! blocks on its condvar. No timer or heartbeat thread exists: an idle pool blocks every
//! worker in the kernel and burns no CPU.
//!
//! Search rounds before the announcement look at up to a few deques each; the search after
//! it looks at every deque (the argument below needs that one). A worker that starts while
//! its pool is being built skips the search altogether ([`Sleep::start_asleep`] says why
//! that is safe), so starting a pool is linear in its size.
//!
//! Whoever publishes work (a deque push, an injection) afterwards reads the counters, and
//! if some worker announced it is sleepy since the last publication (the JEC is *sleepy*,
//! i.e. even), bumps the JEC, and then wakes sleepers only if the work needs them: if no
//! worker is awake and idle to take it (or the queue already held work, so the idle ones
//! are not keeping up).
//!
//! ## Why no wake-up is lost
//!
//! Take a worker W going to sleep and a publisher P of a job J. Every step that decides
//! something is a read-modify-write (RMW) of the one counters word, with `AcqRel` ordering;
//! RMWs always read the latest value, and an acquiring RMW that reads (a value after) a
//! releasing one synchronises with it.
//!
//! - P publishes J, then makes an RMW on the counters (`bump_jec_if_sleepy`: a `fetch_add(0)`
//!   to read, and a compare-exchange to bump).
//! - W records a sleepy JEC (its own RMW, or a load of another worker's announcement), then
//!   searches once more, then registers as sleeping with a compare-exchange that expects the
//!   JEC it recorded.
//!
//! If P's RMW comes before the announcement W recorded, the announcement (an RMW, or what W
//! loaded from one) follows P's release in the word's modification order, so J's
//! publication happens before W's last search, which finds J. If it comes after, P reads a
//! sleepy JEC and bumps it, so W's registration fails and W searches again — unless W's
//! registration came first, and then P's RMW sees one more sleeper and wakes one. Waking
//! takes the sleeper's mutex, under which W set `blocked` before blocking, so the wake
//! either finds W blocked or W has not blocked yet (and re-checked the JEC under that mutex).
//!
//! No step relies on `SeqCst` (whose store-buffering guarantees loom cannot model), so the
//! loom test in `pool/test.rs` checks exactly this argument. Compared with a fence plus a
//! plain load on the publishing side (rayon's choice), the RMW costs about the same
//! uncontended; publications are rare here because `join` publishes lazily.
//!
//! A worker that waits for a latch (a stolen `join` half) sleeps through the same path, with
//! the latch's own state machine (see `latch.rs`) guarding against the latch being set
//! between its last check and the block. A worker that waits for forked work beyond the
//! nesting limit runs only its own jobs, so it sleeps apart, uncounted, woken only through
//! its latch ([`Sleep::block_on_latch`]).
//!
//! ## The counters word
//!
//! One `AtomicUsize`, cache-padded: on 64-bit targets bits 0..16 count sleeping threads,
//! bits 16..32 count inactive threads (searching, sleepy or sleeping), the rest is the JEC.
//! On 32-bit targets each thread count has 8 bits and the JEC 16 (as in rayon), so a pool
//! there has at most 255 workers. An even JEC is
//! "sleepy" (a worker announced sleepiness after the last publication), odd is "active".
//! Busy workers read the inactive count (one `Relaxed` load, a cache line nobody writes
//! while everyone is busy) to decide whether to publish work at all; see `registry.rs`.

use crossbeam_utils::CachePadded;

use super::backoff::snooze;
use super::latch::CoreLatch;
use crate::sync::AtomicUsize;
use crate::sync::{Condvar, Mutex, Ordering, lock};

/// Search rounds (with backoff) before a worker announces it is sleepy. With
/// [`SPIN_HINT_ROUNDS`](super::backoff::SPIN_HINT_ROUNDS) rounds of spin-loop hints and the
/// rest `yield_now`, 32 rounds keep a worker searching for ~20–40 µs on the 2-core
/// reference machine: long enough that back-to-back `submit`/`map` calls find it awake
/// (the warm hand-off costs ~1 µs instead of a 15–25 µs futex wake), short enough that an
/// idle pool costs well under 1 ms of CPU per second.
#[cfg(not(parpool_loom))]
pub(crate) const ROUNDS_UNTIL_SLEEPY: u32 = 32;
/// Under loom every round is a yield point; one keeps the state space small.
#[cfg(parpool_loom)]
pub(crate) const ROUNDS_UNTIL_SLEEPY: u32 = 1;

/// One more search round after announcing sleepiness, then sleep.
const ROUNDS_UNTIL_SLEEPING: u32 = ROUNDS_UNTIL_SLEEPY + 1;

/// The width of each thread count in the counters word: half of it stays for the JEC.
#[cfg(target_pointer_width = "64")]
const THREADS_BITS: usize = 16;
/// The width of each thread count in the counters word: half of it stays for the JEC.
#[cfg(not(target_pointer_width = "64"))]
const THREADS_BITS: usize = 8;
const SLEEPING_SHIFT: usize = 0;
const INACTIVE_SHIFT: usize = THREADS_BITS;
const JEC_SHIFT: usize = 2 * THREADS_BITS;
const THREADS_MASK: usize = (1 << THREADS_BITS) - 1;

/// The most workers one pool can have: the width of the thread counters.
pub(crate) const THREADS_MAX: usize = THREADS_MASK;

const ONE_SLEEPING: usize = 1 << SLEEPING_SHIFT;
const ONE_INACTIVE: usize = 1 << INACTIVE_SHIFT;
const ONE_JEC: usize = 1 << JEC_SHIFT;

/// A snapshot of the counters word.
#[derive(Clone, Copy, Debug)]
struct Counters(usize);

impl Counters {
    fn sleeping(self) -> usize {
        (self.0 >> SLEEPING_SHIFT) & THREADS_MASK
    }
    fn inactive(self) -> usize {
        (self.0 >> INACTIVE_SHIFT) & THREADS_MASK
    }
    fn jec(self) -> usize {
        self.0 >> JEC_SHIFT
    }
    fn awake_but_idle(self) -> usize {
        self.inactive() - self.sleeping()
    }
}

/// A JEC value is sleepy when even: a worker announced sleepiness after the last
/// publication.
fn jec_is_sleepy(jec: usize) -> bool {
    jec % 2 == 0
}

/// Whether, and how, a worker is blocked on its condvar.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Blocked {
    /// Running, searching, or about to block.
    #[default]
    No,
    /// Asleep as an idle worker, counted in the counters word: any publication may wake it.
    Idle,
    /// Blocked on a latch only, beyond the nesting limit ([`Sleep::block_on_latch`]): not
    /// counted, since it would take no published work; only its latch wakes it.
    OnLatch,
}

/// Per-worker blocking state.
#[derive(Debug, Default)]
struct WorkerSleepState {
    /// How the worker is blocked on `condvar`; set back to `No` by whoever wakes it.
    blocked: Mutex<Blocked>,
    condvar: Condvar,
}

/// The sleep/wake state of one pool.
#[derive(Debug)]
pub(crate) struct Sleep {
    worker_sleep_states: Vec<CachePadded<WorkerSleepState>>,
    counters: CachePadded<AtomicUsize>,
}

/// Evidence that a worker is idle, carried through its search loop.
#[derive(Debug)]
pub(crate) struct IdleState {
    worker_index: usize,
    rounds: u32,
    /// The JEC recorded when the worker became sleepy.
    jec: Option<usize>,
}

impl Sleep {
    pub(crate) fn new(n_threads: usize) -> Self {
        assert!(
            n_threads <= THREADS_MAX,
            "at most {THREADS_MAX} threads per pool"
        );
        Sleep {
            worker_sleep_states: (0..n_threads).map(|_| CachePadded::default()).collect(),
            counters: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// How many workers are registered asleep (for tests that wait for a quiet pool).
    #[cfg(test)]
    pub(crate) fn sleeping_workers(&self) -> usize {
        Counters(self.counters.load(Ordering::Acquire)).sleeping()
    }

    /// Whether any worker is idle (searching, sleepy or asleep): then busy workers should
    /// publish work. A `Relaxed` hint; acting on a stale value only costs one publication
    /// too many or too few, never correctness.
    #[inline]
    pub(crate) fn has_idle_workers(&self) -> bool {
        Counters(self.counters.load(Ordering::Relaxed)).inactive() > 0
    }

    /// The worker ran out of work and starts searching.
    #[inline]
    pub(crate) fn start_looking(&self, worker_index: usize) -> IdleState {
        self.counters.fetch_add(ONE_INACTIVE, Ordering::AcqRel);
        IdleState {
            worker_index,
            rounds: 0,
            jec: None,
        }
    }

    /// The worker found work: it is active again. If it was the last idle worker while
    /// others sleep, wake one so that somebody keeps searching.
    #[inline]
    pub(crate) fn work_found(&self) {
        let old = Counters(self.counters.fetch_sub(ONE_INACTIVE, Ordering::AcqRel));
        if old.awake_but_idle() == 1 && old.sleeping() > 0 {
            self.wake_any_threads(1);
        }
    }

    /// One search round found nothing: back off, become sleepy, or sleep, depending on how
    /// long the worker has been searching. `latch` is what the worker waits for (its
    /// terminate latch, or a join latch); `has_injected_jobs` is the last check before
    /// blocking. A worker never sleeps here with a deadline: a timed wait blocks its thread
    /// without running jobs (see "Waiting inside a worker" in `latch.rs`).
    pub(crate) fn no_work_found(
        &self,
        idle: &mut IdleState,
        latch: &CoreLatch,
        has_injected_jobs: impl FnOnce() -> bool,
    ) {
        if idle.rounds < ROUNDS_UNTIL_SLEEPY {
            snooze(idle.rounds);
            idle.rounds += 1;
        } else if idle.rounds == ROUNDS_UNTIL_SLEEPY {
            idle.jec = Some(self.announce_sleepy());
            snooze(idle.rounds);
            idle.rounds += 1;
        } else {
            debug_assert_eq!(idle.rounds, ROUNDS_UNTIL_SLEEPING);
            self.sleep(idle, latch, has_injected_jobs);
        }
    }

    /// A starting worker's first idle period: announce sleepiness at once, then, if
    /// `still_building` says its pool is still being built, sleep without searching;
    /// either way return with the worker active again, about to search as usual.
    ///
    /// Searching first (every deque, for [`ROUNDS_UNTIL_SLEEPY`] rounds) is what made a
    /// pool's startup quadratic in its size. Skipping it is safe because `still_building`
    /// is read *after* the announcement (an `AcqRel` RMW on the counters): every
    /// publication is an `AcqRel` RMW on the same word and happens after the builder's
    /// release store that ends the build. So if a publication came before the
    /// announcement, the announcement acquired it and `still_building` reads false: the
    /// worker searches. If it reads true, nothing was published before the announcement,
    /// and a later publication bumps the JEC, which fails the worker's registration or
    /// wakes it (see "Why no wake-up is lost"). `pool/test.rs` model-checks this.
    pub(crate) fn start_asleep(
        &self,
        worker_index: usize,
        latch: &CoreLatch,
        still_building: impl FnOnce() -> bool,
        has_injected_jobs: impl FnOnce() -> bool,
    ) {
        let mut idle = self.start_looking(worker_index);
        idle.jec = Some(self.announce_sleepy());
        idle.rounds = ROUNDS_UNTIL_SLEEPING;
        if still_building() {
            self.sleep(&mut idle, latch, has_injected_jobs);
        }
        // Not `work_found`: the worker starts searching right away, so no other sleeper
        // needs waking to take its place.
        self.counters.fetch_sub(ONE_INACTIVE, Ordering::AcqRel);
    }

    /// Makes the JEC sleepy (even) if it is active, and returns its value.
    #[cold]
    fn announce_sleepy(&self) -> usize {
        // Acquire (load and exchange): see "Why no wake-up is lost".
        let mut old = self.counters.load(Ordering::Acquire);
        loop {
            let c = Counters(old);
            if jec_is_sleepy(c.jec()) {
                return c.jec();
            }
            match self.counters.compare_exchange_weak(
                old,
                old.wrapping_add(ONE_JEC),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Counters(old.wrapping_add(ONE_JEC)).jec(),
                Err(actual) => old = actual,
            }
        }
    }

    #[cold]
    fn sleep(
        &self,
        idle: &mut IdleState,
        latch: &CoreLatch,
        has_injected_jobs: impl FnOnce() -> bool,
    ) {
        let jec = idle.jec.expect("sleep without announcing sleepiness");
        if !latch.get_sleepy() {
            // The latch was set: stop idling.
            idle.wake_fully();
            return;
        }
        let state = &self.worker_sleep_states[idle.worker_index];
        let mut blocked = lock(&state.blocked);
        debug_assert_eq!(*blocked, Blocked::No);
        if !latch.fall_asleep() {
            idle.wake_fully();
            return;
        }
        loop {
            let old = self.counters.load(Ordering::Acquire);
            if Counters(old).jec() != jec {
                // Work was published since we got sleepy; search again before sleeping.
                idle.wake_partly();
                latch.wake_up();
                return;
            }
            if self
                .counters
                .compare_exchange(old, old + ONE_SLEEPING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        // Registered as asleep. One last look at the injector: the JEC can wrap around (2^32
        // publications while we were sleepy, 2^16 on 32-bit targets), and we may be the only worker that would ever
        // take an injected job.
        if has_injected_jobs() {
            // Undo our registration ourselves (normally the waker does it).
            self.counters.fetch_sub(ONE_SLEEPING, Ordering::AcqRel);
        } else {
            *blocked = Blocked::Idle;
            // Blocks until a waker clears `blocked` (and deregisters us).
            while *blocked != Blocked::No {
                blocked = state
                    .condvar
                    .wait(blocked)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        idle.wake_fully();
        latch.wake_up();
    }

    /// `num_jobs` jobs were just published (pushed onto a deque or injected): wake sleepers
    /// if the awake idle workers are not enough to take them. `queue_was_empty` says whether
    /// the queue was empty before the push (if not, the idle workers are not keeping up).
    #[inline]
    pub(crate) fn new_jobs(&self, num_jobs: usize, queue_was_empty: bool) {
        let counters = self.bump_jec_if_sleepy();
        let sleepers = counters.sleeping();
        if sleepers == 0 {
            return;
        }
        // Idle-but-awake workers will find the work unless the queue already held more than
        // they are taking.
        let to_wake = if queue_was_empty {
            num_jobs.saturating_sub(counters.awake_but_idle())
        } else {
            num_jobs
        };
        self.wake_any_threads(to_wake.min(sleepers));
    }

    /// Bumps the JEC to active if it is sleepy; returns the counters after the update.
    #[inline]
    fn bump_jec_if_sleepy(&self) -> Counters {
        loop {
            // An RMW, not a load: it reads the latest value and releases the publication (see
            // "Why no wake-up is lost").
            let old = self.counters.fetch_add(0, Ordering::AcqRel);
            if !jec_is_sleepy(Counters(old).jec()) {
                return Counters(old);
            }
            let new = old.wrapping_add(ONE_JEC);
            if self
                .counters
                .compare_exchange(old, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return Counters(new);
            }
        }
    }

    #[cold]
    fn wake_any_threads(&self, mut num_to_wake: usize) {
        for index in 0..self.worker_sleep_states.len() {
            if num_to_wake == 0 {
                return;
            }
            // Only idle sleepers: a worker blocked on its latch beyond the nesting limit
            // would not take the work, which would then be left to nobody.
            if self.wake_specific_thread(index, |how| how == Blocked::Idle) {
                num_to_wake -= 1;
            }
        }
    }

    /// The latch worker `index` sleeps on was set (or poked, see `CoreLatch::poke`): wake
    /// it, however it sleeps.
    pub(crate) fn notify_worker_latch_is_set(&self, index: usize) {
        self.wake_specific_thread(index, |_| true);
    }

    /// Wakes worker `index` if it is blocked in a way `wake` accepts; true if it was.
    fn wake_specific_thread(&self, index: usize, wake: impl FnOnce(Blocked) -> bool) -> bool {
        let state = &self.worker_sleep_states[index];
        let mut blocked = lock(&state.blocked);
        let how = *blocked;
        if how == Blocked::No || !wake(how) {
            return false;
        }
        *blocked = Blocked::No;
        state.condvar.notify_one();
        if how == Blocked::Idle {
            // The waker deregisters the sleeper, so that publishers stop counting it as
            // asleep as soon as it is woken rather than once it runs.
            self.counters.fetch_sub(ONE_SLEEPING, Ordering::AcqRel);
        }
        true
    }

    /// Blocks worker `worker_index`, which waits beyond the nesting limit and has found
    /// nothing it may run (a forked wait, or an unrelated one that got no relay), until
    /// `latch` is set or poked; returns at once if either
    /// happened already, or if `has_work` says work arrived (then the caller looks again).
    ///
    /// Unlike [`Sleep::sleep`] the worker does not register as an idle sleeper: it would
    /// take none of the work publishers wake sleepers for, so counting it would make a
    /// publication wake it in place of a worker that would. Only its latch wakes it: the
    /// setter, or a poker bringing it work of its own (a scope's spawn made outside the
    /// pool). No wake-up is lost: the poker pushes its job, then makes an `AcqRel` RMW on
    /// the latch (`CoreLatch::poke`); this side announces itself with an `AcqRel` RMW
    /// (`get_sleepy`) and then checks `has_work`. If the poke comes first in the latch's
    /// modification order, `get_sleepy` synchronises with it and `has_work` sees the job; if
    /// it comes later, it turns `SLEEPY` back to `UNSET` (then `fall_asleep` fails) or finds
    /// `SLEEPING` and wakes us under the mutex we hold from `fall_asleep` until we block.
    /// `pool/test.rs` model-checks this.
    pub(crate) fn block_on_latch(
        &self,
        worker_index: usize,
        latch: &CoreLatch,
        has_work: impl FnOnce() -> bool,
    ) {
        if !latch.get_sleepy() {
            return;
        }
        if has_work() {
            latch.stay_awake();
            return;
        }
        let state = &self.worker_sleep_states[worker_index];
        let mut blocked = lock(&state.blocked);
        debug_assert_eq!(*blocked, Blocked::No);
        if !latch.fall_asleep() {
            // Set or poked meanwhile.
            return;
        }
        *blocked = Blocked::OnLatch;
        while *blocked != Blocked::No {
            blocked = state
                .condvar
                .wait(blocked)
                .unwrap_or_else(|p| p.into_inner());
        }
        drop(blocked);
        latch.wake_up();
    }
}

impl IdleState {
    /// Whether the worker has announced sleepiness: its next search must look everywhere
    /// (see "Why no wake-up is lost").
    pub(crate) fn is_sleepy(&self) -> bool {
        self.jec.is_some()
    }

    fn wake_fully(&mut self) {
        self.rounds = 0;
        self.jec = None;
    }

    fn wake_partly(&mut self) {
        self.rounds = ROUNDS_UNTIL_SLEEPY;
        self.jec = None;
    }
}
