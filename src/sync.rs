//! The synchronisation primitives of the protocols that loom model-checks.
//!
//! Under `--cfg parpool_loom` these are loom's instrumented versions, so the loom tests in
//! `pool/test.rs` (latches, the sleep protocol, the completion under both task kinds) and `map/test.rs` (the chunk
//! window's rings, drainer retire/rejoin, feeder sleep) explore every interleaving; in
//! normal builds they are the std types at zero cost. The modules that implement those
//! protocols import from here: `pool/latch.rs`, `pool/sleep.rs`, `pool/backoff.rs`,
//! `pool/completion.rs`, `map/window.rs` and `shm/queue/ring.rs`, plus the registry's and the scope's locks (so that the
//! types they share with the modelled code agree).

#[cfg(parpool_loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
#[cfg(all(parpool_loom, feature = "process", target_os = "linux"))]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64};
#[cfg(parpool_loom)]
pub(crate) use loom::sync::{Condvar, Mutex};
#[cfg(parpool_loom)]
pub(crate) use loom::thread::{self, Thread};

#[cfg(not(parpool_loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
#[cfg(all(not(parpool_loom), feature = "process", target_os = "linux"))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64};
#[cfg(not(parpool_loom))]
pub(crate) use std::sync::{Condvar, Mutex};
#[cfg(not(parpool_loom))]
pub(crate) use std::thread::{self, Thread};

/// Locks `mutex`, ignoring poisoning: the one way this crate takes its internal locks,
/// std's (statics, and state outside the loom models) and the facade's alike.
///
/// Every mutex in this crate guards state that stays consistent across a panic (the
/// critical sections only move plain values and never call user code), so a poisoned
/// lock carries no information and is not an error.
pub(crate) fn lock<M: IgnorePoison + ?Sized>(mutex: &M) -> M::Guard<'_> {
    mutex.lock_ignoring_poison()
}

/// A mutex that [`lock`] can take.
pub(crate) trait IgnorePoison {
    /// The guard its lock returns.
    type Guard<'a>
    where
        Self: 'a;

    /// Locks, ignoring poisoning.
    fn lock_ignoring_poison(&self) -> Self::Guard<'_>;
}

impl<T: ?Sized> IgnorePoison for std::sync::Mutex<T> {
    type Guard<'a>
        = std::sync::MutexGuard<'a, T>
    where
        T: 'a;

    fn lock_ignoring_poison(&self) -> Self::Guard<'_> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(parpool_loom)]
impl<T> IgnorePoison for loom::sync::Mutex<T> {
    type Guard<'a>
        = loom::sync::MutexGuard<'a, T>
    where
        T: 'a;

    fn lock_ignoring_poison(&self) -> Self::Guard<'_> {
        self.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
