//! The errors of a distributed map: what failed, on which rank, at which item.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A batch that could not be encoded or decoded by a [`Codec`](crate::Codec).
///
/// # Examples
///
/// ```
/// use parpool_mpi::CodecError;
///
/// let e = CodecError::new("bad bytes");
/// assert_eq!(e.to_string(), "bad bytes");
/// ```
#[derive(Debug, Clone)]
pub struct CodecError {
    message: String,
}

impl CodecError {
    /// An error with this message.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(parpool_mpi::CodecError::new(7).to_string(), "7");
    /// ```
    pub fn new(message: impl fmt::Display) -> Self {
        CodecError {
            message: message.to_string(),
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodecError {}

/// What went wrong, as it travels between ranks (postcard-encoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// The user's function panicked at `item` (`None`: outside any one item).
    Panic { item: Option<u64> },
    /// A batch failed to encode or decode.
    Codec,
    /// The ranks were called with different arguments.
    Mismatch,
}

/// One failure: the rank it happened on, its kind and its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) rank: u32,
    pub(crate) kind: Kind,
    pub(crate) message: String,
}

impl Report {
    pub(crate) fn codec(rank: u32, error: &CodecError) -> Self {
        Report {
            rank,
            kind: Kind::Codec,
            message: error.message.clone(),
        }
    }

    /// The report as bytes, for the outcome broadcast and the failure messages.
    pub(crate) fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("a report always encodes")
    }

    /// A report from bytes another rank sent; a garbled one still names its sender.
    pub(crate) fn decode(bytes: &[u8], sender: u32) -> Self {
        postcard::from_bytes(bytes).unwrap_or_else(|e| Report {
            rank: sender,
            kind: Kind::Codec,
            message: format!("an unreadable failure report: {e}"),
        })
    }
}

/// A distributed map that failed: a panic in the user's function, a batch that did not
/// encode or decode, or ranks called with different arguments.
///
/// Every rank of the map gets the same error, so all of them can stop, or go on to the
/// next map, together. A rank that *dies* (killed, aborts, exits) is not an error here:
/// MPI aborts the whole job, as it does for any MPI program.
///
/// # Examples
///
/// ```
/// use parpool::ThreadPool;
/// use parpool_mpi::{Cluster, Plain};
///
/// let universe = mpi::initialize().unwrap();
/// let cluster = Cluster::new(&universe.world(), ThreadPool::new(2).unwrap());
/// let error = cluster
///     .map_range(Plain, 100, |i| if i == 42 { panic!("bad item") } else { i as u64 })
///     .unwrap_err();
/// assert!(error.is_panic());
/// assert_eq!(error.item(), Some(42));
/// assert_eq!(error.message(), "bad item");
/// assert!(!error.is_codec() && !error.is_mismatch());
/// if cluster.size() == 1 {
///     assert_eq!(error.rank(), 0);
///     assert_eq!(error.to_string(), "rank 0: item 42 panicked: bad item");
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapError {
    report: Report,
}

impl MapError {
    pub(crate) fn new(report: Report) -> Self {
        MapError { report }
    }

    /// The rank the failure happened on (the lowest one when several failed).
    ///
    /// # Examples
    ///
    /// See [`MapError`].
    pub fn rank(&self) -> usize {
        self.report.rank as usize
    }

    /// The index of the input item whose function call panicked, if the failure was one.
    ///
    /// # Examples
    ///
    /// See [`MapError`].
    pub fn item(&self) -> Option<usize> {
        match self.report.kind {
            Kind::Panic { item } => item.map(|i| i as usize),
            Kind::Codec | Kind::Mismatch => None,
        }
    }

    /// Whether the user's function panicked.
    ///
    /// # Examples
    ///
    /// See [`MapError`].
    pub fn is_panic(&self) -> bool {
        matches!(self.report.kind, Kind::Panic { .. })
    }

    /// Whether a batch failed to encode or decode.
    ///
    /// # Examples
    ///
    /// See [`MapError`].
    pub fn is_codec(&self) -> bool {
        self.report.kind == Kind::Codec
    }

    /// Whether the ranks disagreed about the map's arguments (the item count of a
    /// `map_range`).
    ///
    /// # Examples
    ///
    /// See [`MapError`].
    pub fn is_mismatch(&self) -> bool {
        self.report.kind == Kind::Mismatch
    }

    /// The panic message, or what failed.
    ///
    /// # Examples
    ///
    /// See [`MapError`].
    pub fn message(&self) -> &str {
        &self.report.message
    }
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Report {
            rank,
            kind,
            message,
        } = &self.report;
        match kind {
            Kind::Panic { item: Some(item) } => {
                write!(f, "rank {rank}: item {item} panicked: {message}")
            }
            Kind::Panic { item: None } => write!(f, "rank {rank}: the map panicked: {message}"),
            Kind::Codec => write!(f, "rank {rank}: {message}"),
            Kind::Mismatch => write!(f, "rank {rank}: {message}"),
        }
    }
}

impl std::error::Error for MapError {}
