//! One rank's share of a map, on its local pool, with panics turned into reports.
//!
//! Each item runs under `catch_unwind`; the first panic records its item index (the lowest
//! one when several items panic at once) and is re-raised, so parpool stops the local map
//! the way it stops any panicking map, and the outer `catch_unwind` turns it into a
//! [`Report`] that names the rank and the item.

use std::any::Any;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Mutex;

use parpool::ThreadPool;
use parpool::prelude::*;

use crate::error::{Kind, Report};

/// Reduction blocks per local thread: enough for parpool's on-demand splitting to balance
/// a skewed range, few enough that the block partials cost nothing to fold.
const REDUCE_BLOCKS_PER_THREAD: usize = 16;

/// The lowest panicking item seen so far and its message.
struct FirstPanic(Mutex<Option<(usize, String)>>);

impl FirstPanic {
    fn new() -> Self {
        FirstPanic(Mutex::new(None))
    }

    /// Runs `item(i)`, noting a panic before re-raising it.
    fn guard<R>(&self, i: usize, item: impl FnOnce(usize) -> R) -> R {
        match catch_unwind(AssertUnwindSafe(|| item(i))) {
            Ok(result) => result,
            Err(payload) => {
                let mut first = self.0.lock().unwrap_or_else(|e| e.into_inner());
                if first.as_ref().is_none_or(|&(seen, _)| i < seen) {
                    *first = Some((i, panic_message(payload.as_ref())));
                }
                drop(first);
                resume_unwind(payload)
            }
        }
    }

    fn into_report(self, rank: u32, payload: &(dyn Any + Send)) -> Report {
        let first = self.0.into_inner().unwrap_or_else(|e| e.into_inner());
        let (item, message) = match first {
            Some((item, message)) => (Some(item as u64), message),
            None => (None, panic_message(payload)),
        };
        Report {
            rank,
            kind: Kind::Panic { item },
            message,
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// `item(i)` for every `i` in `range`, in order, on `pool`.
pub(crate) fn map<R, F>(
    pool: &ThreadPool,
    rank: u32,
    range: Range<usize>,
    item: F,
) -> Result<Vec<R>, Report>
where
    R: Send,
    F: Fn(usize) -> R + Sync,
{
    let first = FirstPanic::new();
    let run = || pool.install(|| range.par_map(|i| first.guard(i, &item)));
    catch_unwind(AssertUnwindSafe(run)).map_err(|payload| first.into_report(rank, payload.as_ref()))
}

/// The fold of `item(i)` over `range` with `op`, starting each block from `identity()`:
/// blocks in order, so `op` need only be associative.
pub(crate) fn reduce<R, F, I, O>(
    pool: &ThreadPool,
    rank: u32,
    range: Range<usize>,
    item: F,
    identity: I,
    op: O,
) -> Result<R, Report>
where
    R: Send,
    F: Fn(usize) -> R + Sync,
    I: Fn() -> R + Sync,
    O: Fn(R, R) -> R + Sync,
{
    let len = range.len();
    let blocks = len
        .min(pool.current_num_threads() * REDUCE_BLOCKS_PER_THREAD)
        .max(1);
    let first = FirstPanic::new();
    let run = || {
        let partials = pool.install(|| {
            (0..blocks).par_map(|b| {
                let block = range.start + b * len / blocks..range.start + (b + 1) * len / blocks;
                block.fold(identity(), |acc, i| op(acc, first.guard(i, &item)))
            })
        });
        partials.into_iter().fold(identity(), &op)
    };
    catch_unwind(AssertUnwindSafe(run)).map_err(|payload| first.into_report(rank, payload.as_ref()))
}

/// `run()` with a panic turned into a report that names `rank` but no item (for the
/// folding of partials, which belongs to no one item).
pub(crate) fn guarded<R>(rank: u32, run: impl FnOnce() -> R) -> Result<R, Report> {
    catch_unwind(AssertUnwindSafe(run)).map_err(|payload| Report {
        rank,
        kind: Kind::Panic { item: None },
        message: panic_message(payload.as_ref()),
    })
}
