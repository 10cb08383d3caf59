#![doc = include_str!("../README.md")]

mod cluster;
mod codec;
mod dynamic;
mod error;
mod local;
mod scatter;
mod work;

pub use cluster::{Cluster, Schedule};
pub use codec::{Codec, Payload, Plain, Postcard};
pub use error::{CodecError, MapError};
/// The rsmpi crate this one is built on, for `mpi::initialize` and `Equivalence`.
pub use mpi;

/// The message tags of the protocols. Chunk `k` of a dynamic map travels tagged `k`
/// (below `MAX_CHUNKS`); these sit above every chunk tag and under MPI's guaranteed
/// largest tag, 32767. Each map takes in every message it causes before it returns, and
/// each cluster has a communicator of its own, so tags never meet a stale message.
mod tag {
    use mpi::Tag;

    /// Dynamic: rank 0 has no more chunks; the rank leaves its loop.
    pub(crate) const STOP: Tag = 32_700;
    /// A rank's failure report (empty when it ran nothing).
    pub(crate) const FAILED: Tag = 32_701;
    /// Static: a rank's block of inputs.
    pub(crate) const BLOCK: Tag = 32_702;
    /// Static: a rank's block could not be encoded; the rank runs nothing.
    pub(crate) const SKIP: Tag = 32_703;
    /// Static: a rank's results.
    pub(crate) const RESULT: Tag = 32_704;
    /// The final results, sent on to every rank.
    pub(crate) const DELIVER: Tag = 32_705;
}
