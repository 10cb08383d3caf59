//! Deep `join`s: a worker keeps only a few of its `join` halves as frames that others may
//! take, and runs deeper `join`s as two plain calls.

use parpool::join;

/// Runs `f` as the `a` half of `levels` nested `join`s: on a one-thread pool, `f`'s own
/// `join`s run their halves as plain calls from 8 levels on (4 eager frames, 4 private).
pub(crate) fn nested<R: Send>(levels: u32, f: impl FnOnce() -> R + Send) -> R {
    if levels == 0 {
        f()
    } else {
        join(|| nested(levels - 1, f), || ()).0
    }
}
