//! Shared memory's error, [`ShmError`]: an opaque struct with a private kind enum and a
//! query method per kind.

use std::fmt;
use std::io;

/// An error from [shared memory](crate::shm): a segment that could not be made, a lock whose
/// holder died, an index out of bounds, or a handle that does not name a segment of this
/// process.
///
/// Converting a lock's [`PoisonError`](std::sync::PoisonError) into a `ShmError` (what `?`
/// does) keeps the fact that it was poisoned: [`is_poisoned`](Self::is_poisoned).
///
/// # Examples
///
/// ```
/// use parpool::shm::Array;
///
/// let a = Array::from_slice(&[1u8, 2, 3])?;
/// let err = a.get(3).unwrap_err();
/// assert!(err.is_out_of_bounds());
/// assert_eq!(err.to_string(), "index 3 is out of bounds for a shared array of length 3");
/// # Ok::<(), parpool::ShmError>(())
/// ```
#[cfg(all(feature = "process", target_os = "linux"))]
pub struct ShmError {
    kind: Box<ShmErrorKind>,
}

#[cfg(all(feature = "process", target_os = "linux"))]
#[derive(Debug)]
enum ShmErrorKind {
    Io(io::Error),
    Poisoned,
    OutOfBounds { index: usize, len: usize },
    UnknownSegment(String),
    Invalid(String),
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl ShmError {
    fn new(kind: ShmErrorKind) -> Self {
        Self {
            kind: Box::new(kind),
        }
    }

    pub(crate) fn io(source: io::Error) -> Self {
        Self::new(ShmErrorKind::Io(source))
    }

    pub(crate) fn poisoned() -> Self {
        Self::new(ShmErrorKind::Poisoned)
    }

    pub(crate) fn out_of_bounds(index: usize, len: usize) -> Self {
        Self::new(ShmErrorKind::OutOfBounds { index, len })
    }

    pub(crate) fn unknown_segment(message: impl Into<String>) -> Self {
        Self::new(ShmErrorKind::UnknownSegment(message.into()))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ShmErrorKind::Invalid(message.into()))
    }

    /// The lock is poisoned: a process or thread died (or panicked) while holding it, so the
    /// data may be half-written. [`lock`](crate::shm::Value::lock) still gives access (through
    /// [`PoisonError::into_inner`](std::sync::PoisonError::into_inner)); `clear_poison` ends
    /// the state.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(0u8)?;
    /// let w = v.clone();
    /// std::thread::spawn(move || {
    ///     let _guard = w.lock().unwrap();
    ///     panic!("stopped while holding the lock");
    /// })
    /// .join()
    /// .unwrap_err();
    /// assert!(v.get().unwrap_err().is_poisoned());
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn is_poisoned(&self) -> bool {
        matches!(*self.kind, ShmErrorKind::Poisoned)
    }

    /// An [`Array`](crate::shm::Array) index at or past the end.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// let a = Array::from_slice(&[1u8])?;
    /// assert!(a.set(1, 0).unwrap_err().is_out_of_bounds());
    /// a.set(0, 2)?;
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn is_out_of_bounds(&self) -> bool {
        matches!(*self.kind, ShmErrorKind::OutOfBounds { .. })
    }

    /// A deserialised handle names a segment this process does not have: handles cross
    /// processes as arguments and results of [`ProcessPool`](crate::ProcessPool) jobs, which
    /// carry the segment along; a handle sent any other way, or whose segment is gone, is
    /// unknown on arrival.
    ///
    /// # Examples
    ///
    /// See the [`shm`](crate::shm) module.
    pub fn is_unknown_segment(&self) -> bool {
        matches!(*self.kind, ShmErrorKind::UnknownSegment(_))
    }

    /// The operating system refused a segment: `memfd_create`, `ftruncate` or `mmap` failed
    /// (out of memory, or too many open descriptors). [`source`](std::error::Error::source)
    /// has the `io::Error`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// // Far more than any machine maps.
    /// let err = Array::<u64>::zeroed(usize::MAX / 16).unwrap_err();
    /// assert!(err.is_io());
    /// ```
    pub fn is_io(&self) -> bool {
        matches!(*self.kind, ShmErrorKind::Io(_))
    }

    /// An argument out of range, such as a [`Queue`](crate::shm::Queue) of capacity 0;
    /// nothing was made.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let err = Queue::<u8>::new(0).unwrap_err();
    /// assert!(err.is_invalid());
    /// assert_eq!(err.to_string(), "a shared queue's capacity must be 1 to 2^31 items, not 0");
    /// ```
    pub fn is_invalid(&self) -> bool {
        matches!(*self.kind, ShmErrorKind::Invalid(_))
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl fmt::Display for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            ShmErrorKind::Io(e) => write!(f, "shared memory: {e}"),
            ShmErrorKind::Poisoned => f.write_str(
                "the shared lock is poisoned: its holder died or panicked while holding it",
            ),
            ShmErrorKind::OutOfBounds { index, len } => write!(
                f,
                "index {index} is out of bounds for a shared array of length {len}"
            ),
            ShmErrorKind::UnknownSegment(message) | ShmErrorKind::Invalid(message) => {
                f.write_str(message)
            }
        }
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl fmt::Debug for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmError")
            .field("kind", &self.kind)
            .field("message", &format_args!("{self}"))
            .finish()
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl std::error::Error for ShmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            ShmErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl<G> From<std::sync::PoisonError<G>> for ShmError {
    fn from(_: std::sync::PoisonError<G>) -> Self {
        Self::poisoned()
    }
}
