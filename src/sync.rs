//! The synchronisation primitives of the protocols that loom model-checks.
//!
//! Under `--cfg parpool_loom` these are loom's instrumented versions, so the loom tests in
//! `pool/loom_tests.rs` explore every interleaving of the latch, sleep and task-slot
//! protocols; in normal builds they are the std types at zero cost. Only the modules that
//! implement those protocols (`pool/latch.rs`, `pool/sleep.rs`, `task.rs`, `map/window.rs`,
//! `shm/queue/ring.rs`) import from here.

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
