//! Deep `join`s: below a job's first few `join`s (published at once), a worker's `join`
//! halves stay private frames until someone could take them.

use parpool::join;

/// Runs `f` as the `a` half of `levels` nested `join`s: on a one-thread pool, `f`'s own
/// `join`s keep their halves private from 4 levels on (4 eager frames).
pub(crate) fn nested<R: Send>(levels: u32, f: impl FnOnce() -> R + Send) -> R {
    if levels == 0 {
        f()
    } else {
        join(|| nested(levels - 1, f), || ()).0
    }
}
