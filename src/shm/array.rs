//! `Array<T>`: a fixed-length array in shared memory, with a lock.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::LockResult;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::lock::Held;
use super::{Block, Pod, ShmError};

/// A fixed-length array of `T` in memory shared with the workers of a process pool
/// (Python's `multiprocessing.Array`).
///
/// Every access goes through the array's process-shared lock: [`get`](Self::get) and
/// [`set`](Self::set) for one element, [`lock`](Self::lock) for a guard that derefs to the
/// whole `[T]`, [`to_vec`](Self::to_vec) for a copy. An index at or past the end is an error
/// ([`is_out_of_bounds`](ShmError::is_out_of_bounds)), never an access outside the segment.
///
/// Cloning gives another handle to the same memory. A handle is an ordinary argument or
/// result of a [`ProcessPool`](crate::ProcessPool) job (see the [module](super) docs).
///
/// # Examples
///
/// ```
/// use parpool::ProcessPool;
/// use parpool::shm::Array;
///
/// fn square_slot((a, i): (Array<u64>, usize)) {
///     let mut data = a.lock().unwrap();
///     data[i] *= data[i];
/// }
///
/// let pool = ProcessPool::new(2)?;
/// let a = Array::from_slice(&[1u64, 2, 3, 4])?;
/// pool.map((0..4).map(|i| (a.clone(), i)), square_slot)?;
/// assert_eq!(a.to_vec()?, [1, 4, 9, 16]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Array<T: Pod> {
    block: Block<T>,
}

impl<T: Pod> Array<T> {
    /// A shared array holding a copy of `values`.
    ///
    /// # Errors
    ///
    /// The operating system refused the segment ([`is_io`](ShmError::is_io)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// let a = Array::from_slice(&[1.5f64, -2.0])?;
    /// assert_eq!(a.len(), 2);
    /// assert_eq!(a.get(1)?, -2.0);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn from_slice(values: &[T]) -> Result<Self, ShmError> {
        let block = Block::create(values.len(), |data| {
            // SAFETY: `create` hands out the data area, valid and aligned for `len` values,
            // in a fresh mapping that cannot overlap `values`.
            unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), data, values.len()) }
        })?;
        Ok(Self { block })
    }

    /// A shared array of `len` zeroed values (zero is a valid value of every [`Pod`] type).
    ///
    /// # Errors
    ///
    /// The operating system refused the segment ([`is_io`](ShmError::is_io)), e.g. for a
    /// length no memory can hold.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// let a = Array::<f32>::zeroed(3)?;
    /// assert_eq!(a.to_vec()?, [0.0; 3]);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn zeroed(len: usize) -> Result<Self, ShmError> {
        // A new memory file reads as zeros.
        let block = Block::create(len, |_| {})?;
        Ok(Self { block })
    }

    /// The number of elements.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// assert_eq!(Array::from_slice(&[1i8, 2])?.len(), 2);
    /// assert!(Array::<i8>::zeroed(0)?.is_empty());
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn len(&self) -> usize {
        self.block.len
    }

    /// Whether the array has no elements.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// assert!(Array::<u8>::zeroed(0)?.is_empty());
    /// assert!(!Array::from_slice(&[0u8])?.is_empty());
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.block.len == 0
    }

    /// Element `index`, read under the lock.
    ///
    /// # Errors
    ///
    /// `index >= len()` ([`is_out_of_bounds`](ShmError::is_out_of_bounds)); a poisoned
    /// lock ([`is_poisoned`](ShmError::is_poisoned)).
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (see [`lock`](Self::lock)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// let a = Array::from_slice(&[10u16, 20])?;
    /// assert_eq!(a.get(1)?, 20);
    /// assert!(a.get(2).unwrap_err().is_out_of_bounds());
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn get(&self, index: usize) -> Result<T, ShmError> {
        self.check(index)?;
        Ok(self.lock()?[index])
    }

    /// Sets element `index`, under the lock.
    ///
    /// # Errors
    ///
    /// `index >= len()` ([`is_out_of_bounds`](ShmError::is_out_of_bounds)); a poisoned
    /// lock ([`is_poisoned`](ShmError::is_poisoned)). Nothing was written.
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (see [`lock`](Self::lock)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// let a = Array::<i64>::zeroed(2)?;
    /// a.set(0, -1)?;
    /// assert_eq!(a.to_vec()?, [-1, 0]);
    /// assert!(a.set(5, 1).unwrap_err().is_out_of_bounds());
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn set(&self, index: usize, value: T) -> Result<(), ShmError> {
        self.check(index)?;
        self.lock()?[index] = value;
        Ok(())
    }

    fn check(&self, index: usize) -> Result<(), ShmError> {
        if index < self.block.len {
            Ok(())
        } else {
            Err(ShmError::out_of_bounds(index, self.block.len))
        }
    }

    /// A copy of the elements, taken under the lock.
    ///
    /// # Errors
    ///
    /// A poisoned lock ([`is_poisoned`](ShmError::is_poisoned)).
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (see [`lock`](Self::lock)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// let a = Array::from_slice(&[3u32, 1, 2])?;
    /// let mut v = a.to_vec()?;
    /// v.sort_unstable(); // a copy: the shared array keeps its order
    /// assert_eq!(v, [1, 2, 3]);
    /// assert_eq!(a.to_vec()?, [3, 1, 2]);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn to_vec(&self) -> Result<Vec<T>, ShmError> {
        Ok(self.lock()?.to_vec())
    }

    /// Locks the array; the guard derefs to the elements as a mutable slice and unlocks when
    /// dropped. Blocks while another thread or process holds the lock.
    ///
    /// # Errors
    ///
    /// A poisoned lock (a holder died or panicked while holding it): the [`PoisonError`](std::sync::PoisonError)
    /// still carries the guard, so [`into_inner`](std::sync::PoisonError::into_inner) gives access
    /// anyway. **The elements may be half-written**: the holder stopped in the middle of its
    /// update. [`clear_poison`](Self::clear_poison) ends the state.
    ///
    /// # Panics
    ///
    /// If this thread already holds the lock (instead of deadlocking).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// let a = Array::from_slice(&[1i32, 2, 3])?;
    /// a.lock()?.iter_mut().for_each(|x| *x = -*x);
    /// assert_eq!(a.to_vec()?, [-1, -2, -3]);
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        let (held, acquired) = self.block.lock().lock();
        let guard = ArrayGuard { array: self, held };
        acquired.into_result(guard)
    }

    /// Whether the lock is poisoned (see [`lock`](Self::lock)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use parpool::shm::Array;
    ///
    /// fn die_holding(a: Array<u8>) {
    ///     let _guard = a.lock().unwrap();
    ///     std::process::exit(1); // the worker dies with the lock held
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let a = Array::from_slice(&[1u8])?;
    /// assert!(!a.is_poisoned());
    /// assert!(pool.submit(die_holding, a.clone())?.get().unwrap_err().is_crash());
    /// assert!(a.is_poisoned());
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
    /// use parpool::shm::Array;
    ///
    /// let a = Array::from_slice(&[1u8, 2])?;
    /// let b = a.clone();
    /// std::thread::spawn(move || {
    ///     let mut data = b.lock().unwrap();
    ///     data[0] = 10;
    ///     panic!("stopped half-way");
    /// })
    /// .join()
    /// .unwrap_err();
    /// assert!(a.to_vec().unwrap_err().is_poisoned());
    /// a.clear_poison();
    /// assert!(!a.is_poisoned());
    /// assert_eq!(a.to_vec()?, [10, 2]); // the half-done update stays
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn clear_poison(&self) {
        self.block.lock().clear_poison();
    }
}

impl<T: Pod> Clone for Array<T> {
    fn clone(&self) -> Self {
        Self {
            block: self.block.clone(),
        }
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Array").field(&self.block).finish()
    }
}

impl<T: Pod> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.block.serialize(serializer)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Self {
            block: Block::deserialize(deserializer)?,
        })
    }
}

/// The lock of an [`Array`], held: derefs to the elements. Unlocks when dropped (and poisons
/// the lock if a panic started while it was held).
///
/// # Examples
///
/// ```
/// use parpool::shm::Array;
///
/// let a = Array::from_slice(&[1i32, 2, 3])?;
/// {
///     let mut guard = a.lock()?;
///     guard.reverse();
///     assert_eq!(*guard, [3, 2, 1]);
/// } // unlocked here
/// assert_eq!(a.to_vec()?, [3, 2, 1]);
/// # Ok::<(), parpool::ShmError>(())
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T: Pod> {
    array: &'a Array<T>,
    /// The hold; released when the guard drops.
    held: Held<'a>,
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        let block = &self.array.block;
        // SAFETY: the guard holds the lock, so no other thread of this process accesses the
        // elements (they are only reached through the lock); the data area holds `len`
        // aligned values (checked against the segment size), valid for any bit pattern.
        unsafe { std::slice::from_raw_parts(block.data(), block.len) }
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let block = &self.array.block;
        // SAFETY: as in `deref`, and `&mut self` makes this the only slice of the guard.
        unsafe { std::slice::from_raw_parts_mut(block.data(), block.len) }
    }
}

impl<T: Pod> Drop for ArrayGuard<'_, T> {
    fn drop(&mut self) {
        self.held.poison_if_panicked();
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArrayGuard").field(&&**self).finish()
    }
}
