//! The map family, built only on the pool's crate-internal API (`join`, the registry's
//! `in_worker` and job spawning).
//!
//! - `slice.rs`: indexed inputs (slices, vectors, ranges, chunks) for `par_map` and the rest
//!   of the kit: sampling, then splitting on demand, results written in place or reduced.
//! - `iter.rs`: `map`, `map_chunked` and `try_map` over any iterator, ordered.
//! - `imap.rs`: the lazy `Imap` / `ImapUnordered`.
//! - `ext.rs`: the extension traits (`ParMap`, `ParSlice`, `IntoParMap`) and their views.
//! - `sample.rs`: measuring what items cost (a cheap stopwatch, sample windows).
//! - `window.rs`: the bounded chunk window behind the iterator maps; `test.rs` model-checks
//!   its hand-overs with loom.

mod ext;
mod imap;
mod iter;
mod sample;
mod slice;
#[cfg(all(test, parpool_loom))]
mod test;
mod window;

pub use ext::{IntoParMap, MinLen, ParChunks, ParChunksMut, ParMap, ParSlice};
pub use imap::{Imap, ImapUnordered, UntilStopped, imap, imap_unordered};
pub use iter::{map, map_chunked, try_map};

/// The panic message of every chunked call given a chunk size of 0 (thread and process
/// `map_chunked`, `Imap::chunk_size` on both pools, `par_chunks`, `par_chunks_mut`): one
/// rule everywhere, a documented panic, because a zero chunk size is a bug at the call
/// site, not a condition to handle.
pub(crate) const ZERO_CHUNK_SIZE: &str = "parpool: the chunk size must be at least 1";
