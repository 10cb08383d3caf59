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
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(parpool_loom)]
pub(crate) use loom::thread::{self, Thread};

#[cfg(not(parpool_loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
#[cfg(all(not(parpool_loom), feature = "process", target_os = "linux"))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64};
#[cfg(not(parpool_loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(parpool_loom))]
pub(crate) use std::thread::{self, Thread};

/// Locks `mutex`, ignoring poisoning.
///
/// Every mutex in this crate guards state that stays consistent across a panic (the
/// critical sections only move plain values and never call user code), so a poisoned
/// lock carries no information and is not an error.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
