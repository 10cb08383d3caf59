//! A process-shared, robust lock with a poison flag, living inside a segment.
//!
//! # The lock
//!
//! A `pthread_mutex_t` initialised with `PTHREAD_PROCESS_SHARED` (it works between processes
//! that map the same memory), `PTHREAD_MUTEX_ROBUST` (when its holder dies, the kernel marks
//! it so that the next locker is told, instead of waiting forever) and
//! `PTHREAD_MUTEX_ERRORCHECK` (a thread that locks it twice gets an error, turned into a
//! panic, instead of a deadlock).
//!
//! # Poisoning
//!
//! Like `std::sync::Mutex`, the lock is poisoned when a holder did not finish: it panicked
//! while holding it (the guard sees `thread::panicking()`), or its thread or process died
//! (`pthread_mutex_lock` returns `EOWNERDEAD`: we call `pthread_mutex_consistent`, so the
//! mutex works again, and set the flag). The flag is in shared memory, next to the mutex, so
//! every process sees it; it stays set until `clear_poison`. Poisoned data may be
//! half-written: the holder stopped in the middle of whatever it was doing.
//!
//! # Trust
//!
//! The mutex lives in memory every process of the pool can write. A process that scribbles
//! over it breaks the lock for all; the processes of a pool run the same program and are
//! trusted to use the lock only through this type.

use std::cell::UnsafeCell;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lock as laid out in shared memory.
///
/// # Memory ordering
///
/// The data behind the lock is ordered by the mutex. `poisoned` is stored with `Release`
/// and loaded with `Acquire`: most accesses happen with the mutex held, which orders them
/// anyway, but `is_poisoned` reads it and `clear_poison` writes it without holding it.
#[repr(C)]
pub(crate) struct SharedLock {
    /// 1 when poisoned.
    poisoned: AtomicU32,
    _pad: u32,
    mutex: UnsafeCell<libc::pthread_mutex_t>,
}

// SAFETY: the mutex is designed for concurrent use from threads (and processes); all access
// to it goes through the pthread functions, and `poisoned` is atomic.
unsafe impl Sync for SharedLock {}

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The last holder finished normally.
    Clean,
    /// A holder died or panicked; the data may be half-written.
    Poisoned,
}

impl Acquired {
    /// The guard, as `std::sync::Mutex::lock` would return it.
    pub(crate) fn into_result<G>(self, guard: G) -> std::sync::LockResult<G> {
        match self {
            Acquired::Clean => Ok(guard),
            Acquired::Poisoned => Err(std::sync::PoisonError::new(guard)),
        }
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

impl SharedLock {
    /// Initialises a lock in place.
    ///
    /// # Safety
    ///
    /// `this` points to writable memory of a shared mapping, aligned for `SharedLock`, that
    /// no thread or process uses yet (a segment being created).
    pub(crate) unsafe fn init(this: *mut SharedLock) -> io::Result<()> {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
        // SAFETY: `attr` is initialised by `pthread_mutexattr_init` before any other use and
        // destroyed once; `this` is valid for writes and unused (the caller's contract), so
        // initialising the mutex there races with nobody.
        unsafe {
            check(libc::pthread_mutexattr_init(attr.as_mut_ptr()))?;
            let attr = attr.as_mut_ptr();
            let result = check(libc::pthread_mutexattr_setpshared(
                attr,
                libc::PTHREAD_PROCESS_SHARED,
            ))
            .and_then(|()| {
                check(libc::pthread_mutexattr_setrobust(
                    attr,
                    libc::PTHREAD_MUTEX_ROBUST,
                ))
            })
            .and_then(|()| {
                check(libc::pthread_mutexattr_settype(
                    attr,
                    libc::PTHREAD_MUTEX_ERRORCHECK,
                ))
            })
            .and_then(|()| {
                (*this).poisoned = AtomicU32::new(0);
                check(libc::pthread_mutex_init(
                    UnsafeCell::raw_get(&raw const (*this).mutex),
                    attr,
                ))
            });
            libc::pthread_mutexattr_destroy(attr);
            result
        }
    }

    /// Acquires the lock, waiting for it. Reports whether it is poisoned.
    ///
    /// # Panics
    ///
    /// If this thread already holds it, or the mutex is broken (`ENOTRECOVERABLE`: memory
    /// overwritten by a process outside this protocol).
    pub(crate) fn lock(&self) -> Acquired {
        // SAFETY: the mutex was initialised by `init` when its segment was created, and its
        // memory lives as long as `self`.
        let rc = unsafe { libc::pthread_mutex_lock(self.mutex.get()) };
        // Acquire: pairs with the Release stores in `poison` and `clear_poison`.
        match rc {
            0 if self.poisoned.load(Ordering::Acquire) != 0 => Acquired::Poisoned,
            0 => Acquired::Clean,
            libc::EOWNERDEAD => {
                // SAFETY: we hold the mutex (EOWNERDEAD means acquired); making it consistent
                // is what lets later lockers in.
                unsafe { libc::pthread_mutex_consistent(self.mutex.get()) };
                self.poison();
                Acquired::Poisoned
            }
            libc::EDEADLK => panic!("this thread already holds this shared-memory lock"),
            e => panic!(
                "the shared-memory lock is unusable: {}",
                io::Error::from_raw_os_error(e)
            ),
        }
    }

    /// Releases the lock.
    ///
    /// # Safety
    ///
    /// This thread holds the lock (a `lock` returned and no `unlock` followed).
    pub(crate) unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock; the mutex is initialised (see `lock`).
        unsafe { libc::pthread_mutex_unlock(self.mutex.get()) };
    }

    /// Marks the lock poisoned.
    pub(crate) fn poison(&self) {
        // Release: pairs with the Acquire in `lock`/`is_poisoned`.
        self.poisoned.store(1, Ordering::Release);
    }

    /// Whether the lock is poisoned, or its holder died and nobody locked it since (then
    /// this marks it poisoned, as the next `lock` would).
    pub(crate) fn is_poisoned(&self) -> bool {
        // Acquire (here and below): pairs with the Release stores in `poison` and
        // `clear_poison`.
        if self.poisoned.load(Ordering::Acquire) != 0 {
            return true;
        }
        // SAFETY: the mutex is initialised (see `lock`).
        match unsafe { libc::pthread_mutex_trylock(self.mutex.get()) } {
            0 => {
                // SAFETY: trylock succeeded, so we hold it.
                unsafe { self.unlock() };
            }
            libc::EOWNERDEAD => {
                // SAFETY: EOWNERDEAD means acquired; make it consistent, then release it.
                unsafe {
                    libc::pthread_mutex_consistent(self.mutex.get());
                    self.poison();
                    self.unlock();
                }
            }
            // Held by a live thread (perhaps this one): the flag says it all.
            _ => {}
        }
        self.poisoned.load(Ordering::Acquire) != 0
    }

    /// Ends the poisoned state (including a death nobody has noticed yet).
    pub(crate) fn clear_poison(&self) {
        self.is_poisoned();
        // Release: pairs with the Acquire loads in `lock` and `is_poisoned`.
        self.poisoned.store(0, Ordering::Release);
    }
}
