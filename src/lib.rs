#![doc = include_str!("../README.md")]
//!
//! # Where to start
//!
//! - [`ThreadPool`]: a work-stealing pool; [`ThreadPool::global`] is the default one.
//! - [`ParMap::par_map`], [`ThreadPool::map`], [`ThreadPool::imap`]: the map family.
//! - [`join`] and [`scope`]: fork-join on the current pool.
//! - [`ThreadPool::submit`] → [`Task`]: Python's `apply_async` / `Executor.submit`, with
//!   [`as_completed`].
//! - `ProcessPool`: process-isolated jobs that survive crashes and hangs (Linux, the
//!   default `process` feature).
//! - `shm::Value`, `shm::Array`, `shm::Lock` and `shm::Queue`: shared memory for process
//!   jobs and threads (likewise).

mod error;
mod map;
mod pool;
#[cfg(all(feature = "process", target_os = "linux"))]
pub mod process;
#[cfg(all(feature = "process", target_os = "linux"))]
pub mod shm;
mod sync;
mod task;
mod wait;

#[cfg(all(feature = "process", target_os = "linux"))]
pub use error::{ProcessError, ShmError};
pub use error::{TaskError, ThreadPoolBuildError};
pub use map::{
    Imap, ImapUnordered, IntoParMap, MinLen, ParChunks, ParChunksMut, ParMap, ParSlice, imap,
    imap_unordered, map, map_chunked, try_map,
};
pub use pool::{
    NUM_THREADS_ENV, Scope, ThreadPool, ThreadPoolBuilder, current_num_threads,
    current_thread_index, join, scope,
};
#[cfg(all(feature = "process", target_os = "linux"))]
pub use process::ProcessPool;
pub use task::{Task, submit};
pub use wait::{AsCompleted, Awaitable, ReturnWhen, as_completed, wait};

/// The names most programs need: `use parpool::prelude::*;`.
///
/// # Examples
///
/// ```
/// use parpool::prelude::*;
///
/// let pool = ThreadPool::new(2)?;
/// assert_eq!([1, 2, 3].par_map(|x| x * 10), [10, 20, 30]);
/// assert_eq!(pool.submit(|| 5).get().unwrap(), 5);
/// # Ok::<(), ThreadPoolBuildError>(())
/// ```
pub mod prelude {
    #[cfg(all(feature = "process", target_os = "linux"))]
    pub use crate::shm::{Array, Value};
    pub use crate::{
        Awaitable, IntoParMap, ParMap, ParSlice, ReturnWhen, Task, TaskError, ThreadPool,
        ThreadPoolBuildError, ThreadPoolBuilder, as_completed,
    };
    #[cfg(all(feature = "process", target_os = "linux"))]
    pub use crate::{ProcessError, ProcessPool};
}
