//! Inputs shared by the map and kit tests: a pool, an uneven function, and a value that
//! counts how many of its kind are alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use parpool::ThreadPool;

pub(crate) fn pool(threads: usize) -> ThreadPool {
    ThreadPool::new(threads).unwrap()
}

/// A deliberately uneven function, so that batches, chunks and pieces take different times.
pub(crate) fn work(x: u64) -> u64 {
    let rounds = x % 7;
    (0..rounds).fold(x, |acc, i| acc.wrapping_mul(31).wrapping_add(i))
}

/// A value that counts how many of its kind are alive; a double drop drives the count
/// below zero.
#[derive(Debug)]
pub(crate) struct Tracked {
    pub(crate) live: Arc<AtomicIsize>,
    pub(crate) value: u64,
}

impl Tracked {
    pub(crate) fn new(live: &Arc<AtomicIsize>, value: u64) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Tracked {
            live: Arc::clone(live),
            value,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}
