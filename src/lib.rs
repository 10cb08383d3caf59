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
//!
//! # Errors
//!
//! Every error type is an opaque struct with a query method per kind (`is_panic()`,
//! `is_timeout()`, ...), `Send + Sync + 'static`, so `?` converts it into
//! `Box<dyn Error + Send + Sync>` or `anyhow::Error`:
//!
//! ```
//! fn thread_side() -> anyhow::Result<u64> {
//!     let pool = parpool::ThreadPool::new(2)?; // ThreadPoolBuildError
//!     Ok(pool.submit(|| 21u64).get()? * 2) // TaskError
//! }
//!
//! # #[cfg(all(feature = "process", target_os = "linux"))]
//! fn twice(x: u64) -> u64 {
//!     2 * x
//! }
//!
//! # #[cfg(all(feature = "process", target_os = "linux"))]
//! fn process_side() -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
//!     let pool = parpool::ProcessPool::new(1)?; // ProcessError
//!     let cell = parpool::shm::Value::new(0u64)?; // ShmError
//!     cell.store(pool.submit(twice, 21)?.get()?);
//!     Ok(cell.load())
//! }
//!
//! fn failing() -> anyhow::Result<u8> {
//!     let pool = parpool::ThreadPool::new(1)?;
//!     Ok(pool.submit(|| -> u8 { panic!("bad input") }).get()?)
//! }
//!
//! assert_eq!(thread_side()?, 42);
//! # #[cfg(all(feature = "process", target_os = "linux"))]
//! assert_eq!(process_side().map_err(|e| anyhow::anyhow!(e))?, 42);
//! let error = failing().unwrap_err();
//! assert!(error.downcast_ref::<parpool::TaskError>().is_some_and(|e| e.is_panic()));
//! # Ok::<(), anyhow::Error>(())
//! ```

mod map;
mod pool;
#[cfg(all(feature = "process", target_os = "linux"))]
pub mod process;
#[cfg(all(feature = "process", target_os = "linux"))]
pub mod shm;
mod sync;
mod task;
mod wait;
mod watch;

pub use map::{
    Imap, ImapUnordered, IntoParMap, MinLen, ParChunks, ParChunksMut, ParMap, ParSlice,
    UntilStopped, imap, imap_unordered, map, map_chunked, try_map,
};
pub use pool::{
    NUM_THREADS_ENV, Scope, TaskError, ThreadPool, ThreadPoolBuildError, ThreadPoolBuilder,
    current_num_threads, current_thread_index, join, scope,
};
#[cfg(all(feature = "process", target_os = "linux"))]
pub use process::{ProcessError, ProcessPool, ProcessPoolBuilder};
#[cfg(all(feature = "process", target_os = "linux"))]
pub use shm::ShmError;
pub use task::{Task, submit};
pub use wait::{AsCompleted, Awaitable, ReturnWhen, as_completed, wait};
pub use watch::{CancelToken, Progress, ProgressUpdate, Stopped, Watch};

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
    pub use crate::{ProcessError, ProcessPool, ProcessPoolBuilder};
}
