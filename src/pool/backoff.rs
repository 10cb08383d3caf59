//! The spin/snooze policy: how long threads spin before they yield, and yield before they
//! park. Used by idle workers (`sleep.rs`), by threads waiting outside the pool
//! (`latch.rs`), by task handles, and by the map window's feeder and drainers.
//!
//! The field's `crossbeam_utils::Backoff` has the same shape (spin-loop hints doubling each
//! step, then `yield_now`), but is a stateful object that says when to stop; our callers
//! count their own rounds against their own limits (documented beside each limit), so one
//! stateless step is all they share. Under loom the step does nothing (see [`snooze`]).

use crate::sync::thread;

/// Bounded spinning of a thread that waits outside the pool before it parks.
///
/// A park/unpark round trip costs 15–25 µs on the 2-core machines this crate is measured
/// on, a hand-off caught while spinning ~1.5 µs; 60 rounds of `Backoff`-style snoozing (the
/// first ones `spin_loop` hints, the rest `yield_now`) last ~30–50 µs, long enough to catch
/// a worker that is already running and to cover most of a sleeping worker's wake-up.
#[cfg(not(parpool_loom))]
pub(crate) const THREAD_SPIN_ROUNDS: u32 = 60;
/// Under loom every round is a yield point; one keeps the state space small.
#[cfg(parpool_loom)]
pub(crate) const THREAD_SPIN_ROUNDS: u32 = 1;

/// Rounds of a backoff (spin-loop hints doubling each round) before it yields instead.
pub(crate) const SPIN_HINT_ROUNDS: u32 = 6;

/// One round of bounded backoff: `2^round` spin-loop hints for the first
/// [`SPIN_HINT_ROUNDS`] rounds, a `yield_now` after that.
///
/// Under loom it does nothing: loom reads a yield as "this thread waits for another one"
/// and would stop exploring the interleavings in which the other thread is slow, which are
/// exactly the ones that lose wake-ups.
#[inline]
pub(crate) fn snooze(round: u32) {
    if cfg!(parpool_loom) {
        return;
    }
    if round < SPIN_HINT_ROUNDS {
        for _ in 0..(1u32 << round) {
            std::hint::spin_loop();
        }
    } else {
        thread::yield_now();
    }
}
