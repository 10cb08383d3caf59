//! The map family, built only on the pool's crate-internal API (`join`, the registry's
//! `in_worker` and job spawning).
//!
//! - `slice.rs`: indexed inputs (slices, vectors, ranges) for `par_map`: sampling, then
//!   adaptive splitting with results written in place.
//! - `ext.rs`: the `ParMap` / `IntoParMap` extension traits.
//! - `sample.rs`: measuring what items cost (a cheap stopwatch, sample windows).

mod ext;
mod imap;
mod iter;
mod sample;
mod slice;
mod window;

pub use ext::{IntoParMap, ParMap};
pub use imap::{Imap, ImapUnordered, imap, imap_unordered};
pub use iter::{map, map_chunked, try_map};
