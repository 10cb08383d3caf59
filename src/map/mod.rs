//! The map family, built only on the pool's crate-internal API (`join`, the registry's
//! `in_worker` and job spawning).
//!
//! - `slice.rs`: indexed inputs (slices, vectors, ranges) for `par_map`: sampling, then
//!   splitting on demand with results written in place.
//! - `iter.rs`: `map`, `map_chunked` and `try_map` over any iterator, ordered.
//! - `imap.rs`: the lazy `Imap` / `ImapUnordered`.
//! - `ext.rs`: the `ParMap` / `IntoParMap` extension traits.
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

pub use ext::{IntoParMap, ParMap};
pub use imap::{Imap, ImapUnordered, imap, imap_unordered};
pub use iter::{map, map_chunked, try_map};
