//! `Value<T>`: one value in shared memory, with a lock and, for integers, atomic operations.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::LockResult;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::Held;
use super::{AtomicInt, Block, Pod, ShmError};

/// One value of type `T` in memory shared with the workers of a process pool
/// (Python's `multiprocessing.Value`).
///
/// `get`, `set`, `update` and `lock` go through the value's process-shared lock; for integer
/// types, [`fetch_add`](Self::fetch_add), [`compare_exchange`](Self::compare_exchange),
/// [`load`](Self::load) and [`store`](Self::store) are lock-free atomic operations that do
/// not take it. Use one style or the other for a given value: the lock does not stop an
/// atomic operation, so a locked read-modify-write racing with a `fetch_add` loses one of
/// the two updates.
///
/// Cloning gives another handle to the same memory. A handle is an ordinary argument or
/// result of a [`ProcessPool`](crate::ProcessPool) job (see the [module](super) docs).
///
/// # Examples
///
/// ```
/// use parpool::ProcessPool;
/// use parpool::shm::Value;
///
/// fn count(counter: Value<u64>) {
///     for _ in 0..1000 {
///         counter.fetch_add(1);
///     }
/// }
///
/// let pool = ProcessPool::new(2)?;
/// let counter = Value::new(0u64)?;
/// pool.map(vec![counter.clone(); 4], count)?;
/// assert_eq!(counter.load(), 4000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Value<T: Pod> {
    block: Block<T>,
}

impl<T: Pod> Value<T> {
    /// Puts `value` in a new shared-memory segment.
    ///
    /// # Errors
    ///
    /// The operating system refused the segment ([`is_io`](ShmError::is_io)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(0.5f64)?;
    /// assert_eq!(v.get()?, 0.5);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn new(value: T) -> Result<Self, ShmError> {
        let block = Block::create(1, |data: *mut T| {
            // SAFETY: `create` hands out the data area, valid and aligned for one `T`.
            unsafe { data.write(value) }
        })?;
        Ok(Self { block })
    }

    /// The value, read under the lock.
    ///
    /// # Errors
    ///
    /// The lock is poisoned ([`is_poisoned`](ShmError::is_poisoned)): read it through
    /// [`lock`](Self::lock) to see it anyway.
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (see [`lock`](Self::lock)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(7u16)?;
    /// assert_eq!(v.get()?, 7);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn get(&self) -> Result<T, ShmError> {
        Ok(*self.lock()?)
    }

    /// Replaces the value, under the lock.
    ///
    /// # Errors
    ///
    /// The lock is poisoned ([`is_poisoned`](ShmError::is_poisoned)); nothing was written.
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (see [`lock`](Self::lock)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(1i32)?;
    /// v.set(-7)?;
    /// assert_eq!(v.get()?, -7);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn set(&self, value: T) -> Result<(), ShmError> {
        *self.lock()? = value;
        Ok(())
    }

    /// Runs `f` on the value with the lock held for the whole read-modify-write, and returns
    /// what `f` returns.
    ///
    /// # Errors
    ///
    /// The lock is poisoned ([`is_poisoned`](ShmError::is_poisoned)); `f` did not run.
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock, e.g. when `f` calls a locking method of the same
    /// value (see [`lock`](Self::lock)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(10.0f64)?;
    /// let old = v.update(|x| std::mem::replace(x, *x * 1.5))?;
    /// assert_eq!((old, v.get()?), (10.0, 15.0));
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R, ShmError> {
        let mut guard = self.lock()?;
        Ok(f(&mut guard))
    }

    /// Locks the value; the guard derefs to it mutably and unlocks when dropped. Blocks while
    /// another thread or process holds the lock.
    ///
    /// # Errors
    ///
    /// A poisoned lock (a holder died or panicked while holding it): the [`PoisonError`](std::sync::PoisonError)
    /// still carries the guard, so [`into_inner`](std::sync::PoisonError::into_inner) gives access
    /// anyway. Poisoned data may be half-written; for a `Value` the guard works on a copy
    /// written back when it drops, so a holder that died left the old value whole and one
    /// that panicked wrote back what it had. [`clear_poison`](Self::clear_poison) ends the
    /// state.
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (instead of deadlocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let counter = Value::new(0.0f64)?;
    /// *counter.lock()? += 1.0; // the lock is held across the update
    /// assert_eq!(counter.get()?, 1.0);
    ///
    /// // A holder that panics poisons the lock, as with std::sync::Mutex.
    /// let c = counter.clone();
    /// std::thread::spawn(move || {
    ///     let _guard = c.lock().unwrap();
    ///     panic!("oops");
    /// })
    /// .join()
    /// .unwrap_err();
    /// let err = counter.get().unwrap_err();
    /// assert!(err.is_poisoned());
    /// let value = *counter.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    /// assert_eq!(value, 1.0);
    /// counter.clear_poison();
    /// assert_eq!(counter.get()?, 1.0);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        let (held, acquired) = self.block.lock().lock();
        // SAFETY: the lock is held (`held`), so no other user of the lock writes the value;
        // the data pointer is valid and aligned for one `T`.
        let local = unsafe { T::read_shared(self.block.data()) };
        let guard = ValueGuard {
            value: self,
            local,
            held,
        };
        acquired.into_result(guard)
    }

    /// Whether the lock is poisoned (see [`lock`](Self::lock)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use parpool::shm::Value;
    ///
    /// fn die_holding(v: Value<u64>) {
    ///     let _guard = v.lock().unwrap();
    ///     std::process::exit(1); // the worker dies with the lock held
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let v = Value::new(5u64)?;
    /// assert!(!v.is_poisoned());
    /// assert!(pool.submit(die_holding, v.clone())?.get().unwrap_err().is_crash());
    /// assert!(v.is_poisoned());
    /// assert_eq!(*v.lock().unwrap_or_else(|e| e.into_inner()), 5);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_poisoned(&self) -> bool {
        self.block.lock().is_poisoned()
    }

    /// Ends the poisoned state of the lock, for every process.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(1u32)?;
    /// let w = v.clone();
    /// std::thread::spawn(move || {
    ///     let mut guard = w.lock().unwrap();
    ///     *guard = 2;
    ///     panic!("after the update");
    /// })
    /// .join()
    /// .unwrap_err();
    /// assert!(v.is_poisoned());
    /// v.clear_poison();
    /// assert_eq!(v.get()?, 2);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn clear_poison(&self) {
        self.block.lock().clear_poison();
    }
}

impl<T: AtomicInt> Value<T> {
    /// Adds to the value atomically, without the lock, and returns the previous value
    /// (wrapping on overflow). Sequentially consistent.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(u8::MAX)?;
    /// assert_eq!(v.fetch_add(2), u8::MAX);
    /// assert_eq!(v.load(), 1);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn fetch_add(&self, value: T) -> T {
        // SAFETY: the data pointer is valid and 128-byte aligned, so aligned for the atomic
        // type; shared-memory integers are only accessed atomically in this process.
        unsafe { T::fetch_add(self.block.data(), value) }
    }

    /// Stores `new` if the value is `current`, atomically, without the lock. Returns the
    /// previous value: `Ok` if it was `current`, else `Err`. Sequentially consistent.
    ///
    /// # Errors
    ///
    /// `Err(previous)` when the value was not `current`; nothing was stored.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(5i64)?;
    /// assert_eq!(v.compare_exchange(5, 6), Ok(5));
    /// assert_eq!(v.compare_exchange(5, 7), Err(6));
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn compare_exchange(&self, current: T, new: T) -> Result<T, T> {
        // SAFETY: as in `fetch_add`.
        unsafe { T::compare_exchange(self.block.data(), current, new) }
    }

    /// Reads the value atomically, without the lock. Sequentially consistent.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(41u64)?;
    /// v.fetch_add(1);
    /// assert_eq!(v.load(), 42);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn load(&self) -> T {
        // SAFETY: as in `fetch_add`.
        unsafe { T::load(self.block.data()) }
    }

    /// Writes the value atomically, without the lock. Sequentially consistent.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(0u32)?;
    /// v.store(9);
    /// assert_eq!(v.load(), 9);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn store(&self, value: T) {
        // SAFETY: as in `fetch_add`.
        unsafe { T::store(self.block.data(), value) }
    }
}

impl<T: Pod> Clone for Value<T> {
    fn clone(&self) -> Self {
        Self {
            block: self.block.clone(),
        }
    }
}

impl<T: Pod> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Value").field(&self.block).finish()
    }
}

impl<T: Pod> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.block.serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let block = Block::deserialize(deserializer)?;
        if block.len != 1 {
            return Err(serde::de::Error::custom(
                "a shared array is not a shared value",
            ));
        }
        Ok(Self { block })
    }
}

/// The lock of a [`Value`], held: derefs to the value. Unlocks when dropped (and poisons the
/// lock if a panic started while it was held).
///
/// The guard works on a copy of the value, written back when it drops: a process that dies
/// while holding it leaves the old value whole.
///
/// # Examples
///
/// ```
/// use parpool::shm::Value;
///
/// let v = Value::new([0u8; 4])?;
/// {
///     let mut guard = v.lock()?;
///     guard[0] = 1;
///     guard[3] = 4;
/// } // written back and unlocked here
/// assert_eq!(v.get()?, [1, 0, 0, 4]);
/// # Ok::<(), parpool::ShmError>(())
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: Pod> {
    value: &'a Value<T>,
    local: T,
    /// The hold; released (after `drop` below wrote the value back) when the guard drops.
    held: Held<'a>,
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.local
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.local
    }
}

impl<T: Pod> Drop for ValueGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this guard holds the lock (`held` is released only after this runs); the
        // data pointer is valid and aligned.
        unsafe { T::write_shared(self.value.block.data(), self.local) };
        self.held.poison_if_panicked();
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&self.local).finish()
    }
}
