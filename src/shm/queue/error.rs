//! The errors of [`Queue::put`](super::Queue::put) and [`Queue::get`](super::Queue::get)
//! and their variants.

use std::fmt;

/// A put that did not happen; the item comes back with [`into_inner`](Self::into_inner), and
/// nothing of it is in the queue.
///
/// # Examples
///
/// ```
/// use parpool::shm::Queue;
///
/// let q = Queue::new(1)?;
/// q.put(1u8)?;
/// let err = q.try_put(2).unwrap_err();
/// assert!(err.is_full());
/// assert_eq!(err.into_inner(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct PutError<T> {
    kind: PutErrorKind,
    item: T,
}

#[derive(Debug)]
pub(super) enum PutErrorKind {
    Full,
    Timeout,
    Closed,
    TooLarge { len: usize, max: usize },
    Encode(postcard::Error),
}

impl<T> PutError<T> {
    pub(super) fn new(kind: PutErrorKind, item: T) -> Self {
        Self { kind, item }
    }

    /// [`try_put`](super::Queue::try_put) found the queue full.
    ///
    /// # Examples
    ///
    /// See [`PutError`].
    pub fn is_full(&self) -> bool {
        matches!(self.kind, PutErrorKind::Full)
    }

    /// [`put_timeout`](super::Queue::put_timeout) found the queue full until the timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(1)?;
    /// q.put('a')?;
    /// let err = q.put_timeout('b', Duration::from_millis(5)).unwrap_err();
    /// assert!(err.is_timeout());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, PutErrorKind::Timeout)
    }

    /// The queue is [closed](super::Queue::close).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::<u32>::new(4)?;
    /// q.close();
    /// assert!(q.put(1).unwrap_err().is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, PutErrorKind::Closed)
    }

    /// The encoded item (plus its 4-byte length prefix) is larger than the queue's ring of
    /// bytes, so it could never fit.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::with_ring_bytes(4, 64)?;
    /// let err = q.put(vec![0u8; 100]).unwrap_err();
    /// assert!(err.is_too_large());
    /// assert_eq!(err.into_inner().len(), 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_too_large(&self) -> bool {
        matches!(self.kind, PutErrorKind::TooLarge { .. })
    }

    /// The item's `Serialize` implementation failed (postcard cannot encode, e.g., a
    /// sequence whose length it does not know in advance).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    /// use serde::ser::{Error, Serialize, Serializer};
    ///
    /// struct Refuses;
    /// impl Serialize for Refuses {
    ///     fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
    ///         Err(S::Error::custom("no"))
    ///     }
    /// }
    /// # impl<'de> serde::Deserialize<'de> for Refuses {
    /// #     fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
    /// #         Ok(Refuses)
    /// #     }
    /// # }
    ///
    /// let q = Queue::new(4)?;
    /// assert!(q.put(Refuses).unwrap_err().is_encode());
    /// assert!(q.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_encode(&self) -> bool {
        matches!(self.kind, PutErrorKind::Encode(_))
    }

    /// The item that was not put.
    ///
    /// # Examples
    ///
    /// See [`PutError`].
    pub fn into_inner(self) -> T {
        self.item
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            PutErrorKind::Full => f.write_str("the shared queue is full"),
            PutErrorKind::Timeout => f.write_str("the shared queue stayed full until the timeout"),
            PutErrorKind::Closed => f.write_str("the shared queue is closed"),
            PutErrorKind::TooLarge { len, max } => write!(
                f,
                "an item of {len} encoded bytes does not fit a shared queue whose ring holds \
                 {max} (each item takes 4 more)"
            ),
            PutErrorKind::Encode(e) => write!(f, "the item could not be encoded: {e}"),
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("kind", &self.kind)
            .field("message", &format_args!("{self}"))
            .finish_non_exhaustive()
    }
}

impl<T> std::error::Error for PutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            PutErrorKind::Encode(e) => Some(e),
            _ => None,
        }
    }
}

/// A get that returned no item.
///
/// # Examples
///
/// ```
/// use parpool::shm::Queue;
///
/// let q = Queue::<u8>::new(4)?;
/// assert!(q.try_get().unwrap_err().is_empty());
/// q.close();
/// assert!(q.get().unwrap_err().is_closed());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct GetError {
    kind: GetErrorKind,
}

#[derive(Debug)]
pub(super) enum GetErrorKind {
    Empty,
    Timeout,
    Closed,
    Decode(postcard::Error),
    Corrupt,
}

impl GetError {
    pub(super) fn new(kind: GetErrorKind) -> Self {
        Self { kind }
    }

    /// [`try_get`](super::Queue::try_get) found the queue empty (and not closed).
    ///
    /// # Examples
    ///
    /// See [`GetError`].
    pub fn is_empty(&self) -> bool {
        matches!(self.kind, GetErrorKind::Empty)
    }

    /// [`get_timeout`](super::Queue::get_timeout) found the queue empty until the timeout.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::<u8>::new(4)?;
    /// assert!(q.get_timeout(Duration::from_millis(5)).unwrap_err().is_timeout());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, GetErrorKind::Timeout)
    }

    /// The queue is closed and empty: every item put before the close has been got.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let q = Queue::new(4)?;
    /// q.put(1u8)?;
    /// q.close();
    /// assert_eq!(q.get()?, 1); // getters drain first
    /// assert!(q.get().unwrap_err().is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, GetErrorKind::Closed)
    }

    /// An item was taken out of the queue, but `T`'s `Deserialize` refused its bytes (a
    /// `Deserialize` that validates, or a shared-memory handle inside the item whose segment
    /// this process does not have). The item is gone from the queue. Or the queue's memory
    /// was overwritten outside this module's protocol (then nothing was taken, and the
    /// queue cannot go on).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::{Queue, Value};
    ///
    /// // A handle inside an item names its segment; once that is gone, it cannot decode.
    /// let q = Queue::new(4)?;
    /// q.put(Value::new(1u32)?)?; // the value is dropped right after the put
    /// assert!(q.get().unwrap_err().is_decode());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_decode(&self) -> bool {
        matches!(self.kind, GetErrorKind::Decode(_) | GetErrorKind::Corrupt)
    }
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            GetErrorKind::Empty => f.write_str("the shared queue is empty"),
            GetErrorKind::Timeout => f.write_str("the shared queue stayed empty until the timeout"),
            GetErrorKind::Closed => f.write_str("the shared queue is closed and empty"),
            GetErrorKind::Decode(e) => {
                write!(f, "an item taken from the queue did not decode: {e}")
            }
            GetErrorKind::Corrupt => {
                f.write_str("the shared queue's memory was overwritten outside its protocol")
            }
        }
    }
}

impl fmt::Debug for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetError")
            .field("kind", &self.kind)
            .field("message", &format_args!("{self}"))
            .finish()
    }
}

impl std::error::Error for GetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            GetErrorKind::Decode(e) => Some(e),
            _ => None,
        }
    }
}
