//! Error types: opaque structs with a private kind and query methods.

use std::any::Any;
use std::fmt;

// ---------------------------------------------------------------------------------------
// Thread pool
// ---------------------------------------------------------------------------------------

/// Why a [`ThreadPool`](crate::ThreadPool) could not be built.
///
/// # Examples
///
/// ```
/// use parpool::ThreadPool;
///
/// let error = ThreadPool::new(0).unwrap_err();
/// assert!(error.is_zero_threads());
/// assert_eq!(error.to_string(), "a thread pool needs at least one thread (got 0)");
/// ```
#[derive(Debug)]
pub struct ThreadPoolBuildError {
    kind: BuildErrorKind,
}

#[derive(Debug)]
enum BuildErrorKind {
    ZeroThreads,
    TooManyThreads { requested: usize, max: usize },
    InvalidEnv { value: String },
    GlobalAlreadyInitialized,
    Spawn(std::io::Error),
}

impl ThreadPoolBuildError {
    pub(crate) fn zero_threads() -> Self {
        ThreadPoolBuildError {
            kind: BuildErrorKind::ZeroThreads,
        }
    }

    pub(crate) fn too_many_threads(requested: usize, max: usize) -> Self {
        ThreadPoolBuildError {
            kind: BuildErrorKind::TooManyThreads { requested, max },
        }
    }

    pub(crate) fn invalid_env(value: String) -> Self {
        ThreadPoolBuildError {
            kind: BuildErrorKind::InvalidEnv { value },
        }
    }

    pub(crate) fn global_already_initialized() -> Self {
        ThreadPoolBuildError {
            kind: BuildErrorKind::GlobalAlreadyInitialized,
        }
    }

    pub(crate) fn spawn(error: std::io::Error) -> Self {
        ThreadPoolBuildError {
            kind: BuildErrorKind::Spawn(error),
        }
    }

    /// The pool was asked for zero threads.
    pub fn is_zero_threads(&self) -> bool {
        matches!(self.kind, BuildErrorKind::ZeroThreads)
    }

    /// `build_global` was called after the global pool already existed.
    pub fn is_global_already_initialized(&self) -> bool {
        matches!(self.kind, BuildErrorKind::GlobalAlreadyInitialized)
    }

    /// `PARPOOL_NUM_THREADS` held something other than a positive integer.
    pub fn is_invalid_env(&self) -> bool {
        matches!(self.kind, BuildErrorKind::InvalidEnv { .. })
    }
}

impl fmt::Display for ThreadPoolBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BuildErrorKind::ZeroThreads => {
                f.write_str("a thread pool needs at least one thread (got 0)")
            }
            BuildErrorKind::TooManyThreads { requested, max } => {
                write!(
                    f,
                    "a thread pool has at most {max} threads (got {requested})"
                )
            }
            BuildErrorKind::InvalidEnv { value } => write!(
                f,
                "PARPOOL_NUM_THREADS must be a positive integer (got {value:?}); \
                 unset it to use one thread per available CPU"
            ),
            BuildErrorKind::GlobalAlreadyInitialized => {
                f.write_str("the global thread pool has already been initialized")
            }
            BuildErrorKind::Spawn(error) => write!(f, "could not start a worker thread: {error}"),
        }
    }
}

impl std::error::Error for ThreadPoolBuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            BuildErrorKind::Spawn(error) => Some(error),
            _ => None,
        }
    }
}

/// Why a [`Task`](crate::Task) produced no value.
///
/// # Examples
///
/// ```
/// use parpool::ThreadPool;
///
/// let pool = ThreadPool::new(1)?;
/// let task = pool.submit(|| -> u32 { panic!("boom") });
/// let error = task.get().unwrap_err();
/// assert!(error.is_panic());
/// assert_eq!(error.panic_message(), Some("boom"));
/// # Ok::<(), parpool::ThreadPoolBuildError>(())
/// ```
pub struct TaskError {
    kind: TaskErrorKind,
}

enum TaskErrorKind {
    Panic(Box<dyn Any + Send>),
    Cancelled,
    Timeout,
}

impl TaskError {
    pub(crate) fn panic(payload: Box<dyn Any + Send>) -> Self {
        TaskError {
            kind: TaskErrorKind::Panic(payload),
        }
    }

    pub(crate) fn cancelled() -> Self {
        TaskError {
            kind: TaskErrorKind::Cancelled,
        }
    }

    pub(crate) fn timeout() -> Self {
        TaskError {
            kind: TaskErrorKind::Timeout,
        }
    }

    /// The task panicked; [`TaskError::into_panic`] returns the payload.
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, TaskErrorKind::Panic(_))
    }

    /// The task was cancelled before it started ([`Task::cancel`](crate::Task::cancel) or
    /// [`ThreadPool::terminate`](crate::ThreadPool::terminate)).
    pub fn is_cancelled(&self) -> bool {
        matches!(self.kind, TaskErrorKind::Cancelled)
    }

    /// A timed wait ended before the task finished; the task itself goes on.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, TaskErrorKind::Timeout)
    }

    /// The panic message, when the task panicked with a string (`panic!("...")`).
    pub fn panic_message(&self) -> Option<&str> {
        match &self.kind {
            TaskErrorKind::Panic(payload) => panic_message(payload.as_ref()),
            _ => None,
        }
    }

    /// The panic payload, to re-raise with [`std::panic::resume_unwind`].
    ///
    /// # Panics
    ///
    /// Panics if the error is not a panic (check [`TaskError::is_panic`] first).
    pub fn into_panic(self) -> Box<dyn Any + Send> {
        match self.kind {
            TaskErrorKind::Panic(payload) => payload,
            _ => panic!("TaskError::into_panic called on a {self} error"),
        }
    }

    /// The panic payload, or the error itself if it is not a panic.
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send>, TaskError> {
        match self.kind {
            TaskErrorKind::Panic(payload) => Ok(payload),
            kind => Err(TaskError { kind }),
        }
    }
}

/// The message of a panic payload created by `panic!` with a literal or a format string.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TaskErrorKind::Panic(_) => f
                .debug_tuple("TaskError::Panic")
                .field(&self.panic_message())
                .finish(),
            TaskErrorKind::Cancelled => f.write_str("TaskError::Cancelled"),
            TaskErrorKind::Timeout => f.write_str("TaskError::Timeout"),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TaskErrorKind::Panic(_) => match self.panic_message() {
                Some(message) => write!(f, "task panicked: {message}"),
                None => f.write_str("task panicked"),
            },
            TaskErrorKind::Cancelled => f.write_str("task was cancelled before it started"),
            TaskErrorKind::Timeout => f.write_str("timed out waiting for the task"),
        }
    }
}

impl std::error::Error for TaskError {}
