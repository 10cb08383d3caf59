//! A process-shared, robust lock with a poison flag, living inside a segment
//! ([`SharedLock`], under every handle of this module), and [`Lock`], one on its own.
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
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{LockResult, TryLockError, TryLockResult};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{RawBlock, ShmError, type_hash};

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

/// This thread's hold on a [`SharedLock`]: made only by a successful `lock`, `try_lock` or
/// `lock_until`, and the only way to release the lock (when dropped). So the lock is
/// released once, by the thread that took it (`Held` is not `Send`).
#[must_use = "the lock is released as soon as the hold is dropped"]
pub(crate) struct Held<'a> {
    lock: &'a SharedLock,
    /// Whether the thread was already unwinding when it took the lock (in a `Drop`): a panic
    /// then did not interrupt this holder, as with `std::sync::Mutex`.
    taken_panicking: bool,
    /// The lock must be released by the thread that took it.
    _not_send: PhantomData<*const ()>,
}

impl Held<'_> {
    /// Poisons the lock if a panic began while it was held: what a guard over data does
    /// before it lets go, so the next holder learns the data may be half-written.
    pub(crate) fn poison_if_panicked(&self) {
        if std::thread::panicking() && !self.taken_panicking {
            self.lock.poison();
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // SAFETY: a `Held` is made only when this thread acquired the lock (`acquired`),
        // is not `Send` or `Clone`, and releases it only here, once.
        unsafe { self.lock.unlock() };
    }
}

impl fmt::Debug for Held<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held").finish_non_exhaustive()
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

    /// Acquires the lock, waiting for it: this thread's hold on it, and whether it is
    /// poisoned.
    ///
    /// # Panics
    ///
    /// If this thread already holds it, or the mutex is broken (`ENOTRECOVERABLE`: memory
    /// overwritten by a process outside this protocol).
    pub(crate) fn lock(&self) -> (Held<'_>, Acquired) {
        // SAFETY: the mutex was initialised by `init` when its segment was created, and its
        // memory lives as long as `self`.
        let rc = unsafe { libc::pthread_mutex_lock(self.mutex.get()) };
        self.acquired(rc).expect("a blocking lock does not give up")
    }

    /// Acquires the lock if it is free now.
    ///
    /// # Panics
    ///
    /// As [`lock`](Self::lock), except that a lock this thread holds is busy (`None`).
    pub(crate) fn try_lock(&self) -> Option<(Held<'_>, Acquired)> {
        // SAFETY: as in `lock`.
        match unsafe { libc::pthread_mutex_trylock(self.mutex.get()) } {
            // A robust error-checking mutex tells its own holder EDEADLK: busy, for us.
            libc::EDEADLK => None,
            rc => self.acquired(rc),
        }
    }

    /// Acquires the lock, waiting for it until `deadline` (`None`: it was still held then).
    ///
    /// # Panics
    ///
    /// As [`lock`](Self::lock).
    pub(crate) fn lock_until(&self, deadline: Instant) -> Option<(Held<'_>, Acquired)> {
        if let Some(acquired) = self.try_lock() {
            return Some(acquired);
        }
        // `pthread_mutex_timedlock` takes a CLOCK_REALTIME instant; the deadline is
        // monotonic, so convert what is left of it (a clock step while waiting shifts it).
        let left = deadline.saturating_duration_since(Instant::now());
        // SAFETY: an all-zero timespec is a valid value.
        let mut at: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `at` is a valid, writable timespec; CLOCK_REALTIME always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut at) };
        let nanos = i128::from(at.tv_sec) * 1_000_000_000
            + i128::from(at.tv_nsec)
            + left.as_nanos() as i128;
        // A deadline past what a `time_t` holds is "never" (a plain cast would wrap it into
        // the past, and the wait would end at once).
        at.tv_sec = libc::time_t::try_from(nanos / 1_000_000_000).unwrap_or(libc::time_t::MAX);
        at.tv_nsec = (nanos % 1_000_000_000) as _;
        // SAFETY: as in `lock`; `at` is a valid timespec on the stack.
        let rc = unsafe { libc::pthread_mutex_timedlock(self.mutex.get(), &at) };
        self.acquired(rc)
    }

    /// What a `pthread_mutex_*lock` return code means: acquired (the hold, and how), or not
    /// (`None`: busy or timed out).
    fn acquired(&self, rc: libc::c_int) -> Option<(Held<'_>, Acquired)> {
        let held = || Held {
            lock: self,
            taken_panicking: std::thread::panicking(),
            _not_send: PhantomData,
        };
        // Acquire: pairs with the Release stores in `poison` and `clear_poison`.
        match rc {
            0 if self.poisoned.load(Ordering::Acquire) != 0 => Some((held(), Acquired::Poisoned)),
            0 => Some((held(), Acquired::Clean)),
            libc::EOWNERDEAD => {
                // SAFETY: we hold the mutex (EOWNERDEAD means acquired); making it consistent
                // is what lets later lockers in.
                unsafe { libc::pthread_mutex_consistent(self.mutex.get()) };
                self.poison();
                Some((held(), Acquired::Poisoned))
            }
            libc::EBUSY | libc::ETIMEDOUT => None,
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
    unsafe fn unlock(&self) {
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
        self.notice_dead_holder();
        self.poisoned.load(Ordering::Acquire) != 0
    }

    /// Ends the poisoned state (including a death nobody has noticed yet, even on a lock
    /// that was poisoned before it).
    pub(crate) fn clear_poison(&self) {
        self.notice_dead_holder();
        // Release: pairs with the Acquire loads in `lock` and `is_poisoned`.
        self.poisoned.store(0, Ordering::Release);
    }

    /// If the holder died and nobody locked the mutex since, takes it, makes it consistent
    /// and poisons it, as the next `lock` would; then releases it.
    fn notice_dead_holder(&self) {
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
    }
}

/// A lock shared with the workers of a process pool (Python's `multiprocessing.Lock`), that
/// survives a holder that dies.
///
/// It is the robust, process-shared mutex that [`Value`](super::Value) and
/// [`Array`](super::Array) use, on its own: [`lock`](Self::lock) returns a guard that
/// unlocks when dropped. When a holder dies while holding it (SIGKILL, abort, a task
/// timeout, a panic), the next locker gets a [`PoisonError`](std::sync::PoisonError) that
/// still carries the guard, as with `std::sync::Mutex`: never a deadlock.
/// [`clear_poison`](Self::clear_poison) ends that state.
///
/// Cloning gives another handle to the same lock. A handle is an ordinary argument or result
/// of a [`ProcessPool`](crate::ProcessPool) job (see the [module](super) docs).
///
/// # Examples
///
/// Ten jobs print under one lock:
///
/// ```
/// use parpool::ProcessPool;
/// use parpool::shm::Lock;
///
/// fn greet((lock, i): (Lock, u32)) -> u32 {
///     let _guard = lock.lock().unwrap();
///     println!("hello world {i}");
///     i
/// }
///
/// let pool = ProcessPool::new(2)?;
/// let lock = Lock::new()?;
/// let done = pool.map((0..10).map(|i| (lock.clone(), i)), greet)?;
/// assert_eq!(done, (0..10).collect::<Vec<_>>());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Lock {
    raw: RawBlock,
}

impl Lock {
    /// A new, unlocked lock in its own shared-memory segment.
    ///
    /// # Errors
    ///
    /// The operating system refused the segment ([`is_io`](ShmError::is_io)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Lock;
    ///
    /// let lock = Lock::new()?;
    /// assert!(!lock.is_poisoned());
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn new() -> Result<Self, ShmError> {
        let raw = RawBlock::create(type_hash::<Lock>(), 0, 0, |_| Ok(()))?;
        Ok(Self { raw })
    }

    /// Acquires the lock, blocking (asleep in the kernel) while another thread or process
    /// holds it.
    ///
    /// # Errors
    ///
    /// A poisoned lock (a holder died or panicked while holding it): the
    /// [`PoisonError`](std::sync::PoisonError) still carries the guard
    /// ([`into_inner`](std::sync::PoisonError::into_inner)).
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (instead of deadlocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Lock;
    ///
    /// let lock = Lock::new()?;
    /// let l = lock.clone();
    /// std::thread::spawn(move || {
    ///     let _guard = l.lock().unwrap();
    ///     panic!("a holder that panics poisons the lock");
    /// })
    /// .join()
    /// .unwrap_err();
    /// let guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    /// drop(guard);
    /// lock.clear_poison();
    /// assert!(lock.lock().is_ok());
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn lock(&self) -> LockResult<LockGuard<'_>> {
        let (held, acquired) = self.raw.lock().lock();
        acquired.into_result(self.guard(held))
    }

    /// Acquires the lock if it is free now, without waiting.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] when another thread or process (or this thread) holds
    /// it; [`TryLockError::Poisoned`] (carrying the guard) as in [`lock`](Self::lock).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::TryLockError;
    /// use parpool::shm::Lock;
    ///
    /// let lock = Lock::new()?;
    /// let guard = lock.try_lock().unwrap();
    /// assert!(matches!(lock.try_lock(), Err(TryLockError::WouldBlock)));
    /// drop(guard);
    /// assert!(lock.try_lock().is_ok());
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn try_lock(&self) -> TryLockResult<LockGuard<'_>> {
        match self.raw.lock().try_lock() {
            Some((held, acquired)) => Ok(acquired.into_result(self.guard(held))?),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// Acquires the lock, waiting for it at most `timeout`.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] when it was still held when the timeout expired;
    /// [`TryLockError::Poisoned`] (carrying the guard) as in [`lock`](Self::lock).
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (instead of waiting out the timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::TryLockError;
    /// use std::time::Duration;
    /// use parpool::shm::Lock;
    ///
    /// let lock = Lock::new()?;
    /// let l = lock.clone();
    /// let _guard = lock.lock().unwrap();
    /// std::thread::spawn(move || {
    ///     let waited = l.lock_timeout(Duration::from_millis(20));
    ///     assert!(matches!(waited, Err(TryLockError::WouldBlock)));
    /// })
    /// .join()
    /// .unwrap();
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn lock_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_>> {
        let deadline = Instant::now().checked_add(timeout);
        let acquired = match deadline {
            Some(deadline) => self.raw.lock().lock_until(deadline),
            None => Some(self.raw.lock().lock()),
        };
        match acquired {
            Some((held, acquired)) => Ok(acquired.into_result(self.guard(held))?),
            None => Err(TryLockError::WouldBlock),
        }
    }

    /// Whether the lock is poisoned: a holder panicked or died while holding it (a death is
    /// noticed here even if nobody has locked it since).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use parpool::shm::Lock;
    ///
    /// fn die_holding(lock: Lock) {
    ///     let _guard = lock.lock().unwrap();
    ///     std::process::abort();
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let lock = Lock::new()?;
    /// assert!(pool.submit(die_holding, lock.clone())?.get().unwrap_err().is_crash());
    /// assert!(lock.is_poisoned());
    /// assert!(lock.lock().is_err()); // poisoned, but never a deadlock
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.raw.lock().is_poisoned()
    }

    /// Ends the poisoned state, for every process.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Lock;
    ///
    /// let lock = Lock::new()?;
    /// let l = lock.clone();
    /// std::thread::spawn(move || {
    ///     let _guard = l.lock().unwrap();
    ///     panic!("poison it");
    /// })
    /// .join()
    /// .unwrap_err();
    /// assert!(lock.is_poisoned());
    /// lock.clear_poison();
    /// assert!(!lock.is_poisoned());
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn clear_poison(&self) {
        self.raw.lock().clear_poison();
    }

    fn guard<'a>(&'a self, held: Held<'a>) -> LockGuard<'a> {
        LockGuard { lock: self, held }
    }
}

impl Clone for Lock {
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
        }
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Lock").field(&self.raw).finish()
    }
}

impl Serialize for Lock {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Lock {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawBlock::deserialize(deserializer, type_hash::<Lock>(), "a `Lock`", |len| {
            (len == 0).then_some(0)
        })?;
        Ok(Self { raw })
    }
}

/// A held [`Lock`]. Unlocks when dropped, and poisons the lock if a panic started while it
/// was held.
///
/// # Examples
///
/// ```
/// use parpool::shm::Lock;
///
/// let lock = Lock::new()?;
/// {
///     let _guard = lock.lock().unwrap();
///     assert!(lock.try_lock().is_err());
/// } // unlocked here
/// assert!(lock.try_lock().is_ok());
/// # Ok::<(), parpool::ShmError>(())
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    /// The hold; released (after `drop` below) when the guard drops.
    held: Held<'a>,
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.held.poison_if_panicked();
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("LockGuard").field(&self.lock.raw).finish()
    }
}
