//! The thread pool's errors: [`ThreadPoolBuildError`] and [`TaskError`], opaque structs
//! with a private kind enum and query methods (callers ask `is_panic()`, ... instead of
//! matching, so kinds can be added without breaking them).

use std::any::Any;
use std::fmt;

use super::job::panic_message;
use crate::watch::Stopped;

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
    ThreadName { index: usize, reason: String },
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

    pub(crate) fn thread_name(index: usize, reason: String) -> Self {
        ThreadPoolBuildError {
            kind: BuildErrorKind::ThreadName { index, reason },
        }
    }

    pub(crate) fn spawn(error: std::io::Error) -> Self {
        ThreadPoolBuildError {
            kind: BuildErrorKind::Spawn(error),
        }
    }

    /// The pool was asked for zero threads.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(parpool::ThreadPool::new(0).unwrap_err().is_zero_threads());
    /// ```
    pub fn is_zero_threads(&self) -> bool {
        matches!(self.kind, BuildErrorKind::ZeroThreads)
    }

    /// `build_global` was called after the global pool already existed.
    ///
    /// # Examples
    ///
    /// ```
    /// let _ = parpool::ThreadPool::global(); // the global pool exists from here on
    /// let error = parpool::ThreadPoolBuilder::new().build_global().unwrap_err();
    /// assert!(error.is_global_already_initialized());
    /// ```
    pub fn is_global_already_initialized(&self) -> bool {
        matches!(self.kind, BuildErrorKind::GlobalAlreadyInitialized)
    }

    /// `PARPOOL_NUM_THREADS` held something other than a positive integer.
    ///
    /// # Examples
    ///
    /// ```
    /// // Only a bad PARPOOL_NUM_THREADS makes this true; an explicit count never does.
    /// assert!(!parpool::ThreadPool::new(0).unwrap_err().is_invalid_env());
    /// ```
    pub fn is_invalid_env(&self) -> bool {
        matches!(self.kind, BuildErrorKind::InvalidEnv { .. })
    }

    /// The [`thread_name`](crate::ThreadPoolBuilder::thread_name) callback panicked or
    /// returned a name with a NUL byte. No thread was started.
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parpool::ThreadPool::builder()
    ///     .num_threads(2)
    ///     .thread_name(|i| format!("bad\0name-{i}"))
    ///     .build()
    ///     .unwrap_err();
    /// assert!(error.is_thread_name());
    /// ```
    pub fn is_thread_name(&self) -> bool {
        matches!(self.kind, BuildErrorKind::ThreadName { .. })
    }

    /// The index of the thread whose name was bad, for an
    /// [`is_thread_name`](Self::is_thread_name) error.
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parpool::ThreadPool::builder()
    ///     .num_threads(3)
    ///     .thread_name(|i| if i == 1 { "bad\0".to_owned() } else { format!("w{i}") })
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(error.thread_index(), Some(1));
    /// ```
    pub fn thread_index(&self) -> Option<usize> {
        match self.kind {
            BuildErrorKind::ThreadName { index, .. } => Some(index),
            _ => None,
        }
    }

    /// More threads were asked for than a pool can have.
    /// [`max_threads`](Self::max_threads) says the limit.
    ///
    /// # Examples
    ///
    /// ```
    /// let error = parpool::ThreadPool::new(1 << 20).unwrap_err();
    /// assert!(error.is_too_many_threads());
    /// assert!(error.max_threads().is_some_and(|max| max < 1 << 20));
    /// ```
    pub fn is_too_many_threads(&self) -> bool {
        matches!(self.kind, BuildErrorKind::TooManyThreads { .. })
    }

    /// The most threads a pool can have, for an
    /// [`is_too_many_threads`](Self::is_too_many_threads) error.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(parpool::ThreadPool::new(0).unwrap_err().max_threads().is_none());
    /// ```
    pub fn max_threads(&self) -> Option<usize> {
        match self.kind {
            BuildErrorKind::TooManyThreads { max, .. } => Some(max),
            _ => None,
        }
    }

    /// The operating system refused to start a worker thread;
    /// [`source`](std::error::Error::source) is its `io::Error`. No thread was left running.
    ///
    /// # Examples
    ///
    /// ```
    /// // A stack too big for the address space is refused by the OS.
    /// let built = parpool::ThreadPool::builder().num_threads(1).stack_size(usize::MAX).build();
    /// if let Err(error) = built {
    ///     assert!(error.is_spawn());
    ///     assert!(std::error::Error::source(&error).is_some());
    /// }
    /// ```
    pub fn is_spawn(&self) -> bool {
        matches!(self.kind, BuildErrorKind::Spawn(_))
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
            BuildErrorKind::ThreadName { index, reason } => {
                write!(f, "no name for worker thread {index}: {reason}")
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
    Panic {
        /// Read once when the error is made, so that `panic_message` can lend it.
        message: Option<String>,
        /// Behind a mutex only to make the error `Sync` (the payload is `Send` only); the
        /// payload is never touched through a shared reference.
        payload: std::sync::Mutex<Box<dyn Any + Send>>,
    },
    Cancelled,
    Timeout,
    Taken,
    /// The [`Watch`](crate::Watch) the task was submitted in stopped it.
    Stopped(Stopped),
}

impl TaskError {
    pub(crate) fn panic(payload: Box<dyn Any + Send>) -> Self {
        TaskError {
            kind: TaskErrorKind::Panic {
                message: panic_message(payload.as_ref()).map(str::to_owned),
                payload: std::sync::Mutex::new(payload),
            },
        }
    }

    pub(crate) fn taken() -> Self {
        TaskError {
            kind: TaskErrorKind::Taken,
        }
    }

    pub(crate) fn cancelled() -> Self {
        TaskError {
            kind: TaskErrorKind::Cancelled,
        }
    }

    pub(crate) fn stopped(stopped: Stopped) -> Self {
        TaskError {
            kind: TaskErrorKind::Stopped(stopped),
        }
    }

    pub(crate) fn timeout() -> Self {
        TaskError {
            kind: TaskErrorKind::Timeout,
        }
    }

    /// The task panicked; [`TaskError::into_panic`] returns the payload.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(1)?;
    /// assert!(pool.submit(|| -> u8 { panic!("x") }).get().unwrap_err().is_panic());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn is_panic(&self) -> bool {
        matches!(self.kind, TaskErrorKind::Panic { .. })
    }

    /// The task was cancelled: before it started ([`Task::cancel`](crate::Task::cancel) or
    /// [`ThreadPool::terminate`](crate::ThreadPool::terminate)), or by the
    /// [`CancelToken`](crate::CancelToken) of the [`Watch`](crate::Watch) it was submitted
    /// in (before it started, or by stopping a call in it).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::{CancelToken, Watch};
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// pool.terminate(); // from now on, submitted tasks are cancelled
    /// assert!(pool.submit(|| 1).get().unwrap_err().is_cancelled());
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let token = CancelToken::new();
    /// let (release, gate) = std::sync::mpsc::channel::<()>();
    /// let blocker = pool.submit(move || gate.recv().unwrap());
    /// let watched = Watch::new().cancel_token(&token).run(|| pool.submit(|| 1)).unwrap();
    /// token.cancel(); // before the watched task starts: it never runs
    /// release.send(()).unwrap();
    /// blocker.get().unwrap();
    /// assert!(watched.get().unwrap_err().is_cancelled());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn is_cancelled(&self) -> bool {
        match self.kind {
            TaskErrorKind::Cancelled => true,
            TaskErrorKind::Stopped(stopped) => stopped.is_cancelled(),
            _ => false,
        }
    }

    /// The deadline of the [`Watch`](crate::Watch) the task was submitted in passed: before
    /// it started (it never ran), or while a call in it ran (that call stopped).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::Watch;
    /// use std::time::Duration;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let (release, gate) = std::sync::mpsc::channel::<()>();
    /// let blocker = pool.submit(move || gate.recv().unwrap());
    /// let watched = Watch::new()
    ///     .timeout(Duration::from_millis(10))
    ///     .run(|| pool.submit(|| 1))
    ///     .unwrap();
    /// std::thread::sleep(Duration::from_millis(20)); // the deadline passes while it waits
    /// release.send(()).unwrap();
    /// blocker.get().unwrap();
    /// let error = watched.get().unwrap_err();
    /// assert!(error.is_deadline() && !error.is_cancelled());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn is_deadline(&self) -> bool {
        matches!(self.kind, TaskErrorKind::Stopped(stopped) if stopped.is_deadline())
    }

    /// A timed wait ended before the task finished; the task itself goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let task = pool.submit(|| std::thread::sleep(Duration::from_millis(200)));
    /// assert!(task.get_timeout(Duration::from_millis(1)).unwrap_err().is_timeout());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, TaskErrorKind::Timeout)
    }

    /// An earlier [`Task::get_timeout`](crate::Task::get_timeout) returned the task's
    /// outcome already: it is moved out once.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let task = pool.submit(|| 1);
    /// assert_eq!(task.get_timeout(Duration::from_secs(10)).unwrap(), 1);
    /// assert!(task.get().unwrap_err().is_taken());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn is_taken(&self) -> bool {
        matches!(self.kind, TaskErrorKind::Taken)
    }

    /// The panic message, when the task panicked with a string (`panic!("...")`).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let error = pool.submit(|| -> u8 { panic!("disk full") }).get().unwrap_err();
    /// assert_eq!(error.panic_message(), Some("disk full"));
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn panic_message(&self) -> Option<&str> {
        match &self.kind {
            TaskErrorKind::Panic { message, .. } => message.as_deref(),
            _ => None,
        }
    }

    /// The panic payload, to re-raise with [`std::panic::resume_unwind`].
    ///
    /// # Panics
    ///
    /// Panics if the error is not a panic (check [`TaskError::is_panic`] first).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(1)?;
    /// let error = pool.submit(|| -> u8 { std::panic::panic_any(7u32) }).get().unwrap_err();
    /// assert_eq!(*error.into_panic().downcast::<u32>().unwrap(), 7);
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn into_panic(self) -> Box<dyn Any + Send> {
        match self.kind {
            TaskErrorKind::Panic { payload, .. } => into_payload(payload),
            _ => panic!("TaskError::into_panic called on a {self} error"),
        }
    }

    /// The panic payload, or the error itself if it is not a panic.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(1)?;
    /// pool.terminate();
    /// let cancelled = pool.submit(|| 1).get().unwrap_err();
    /// assert!(cancelled.try_into_panic().unwrap_err().is_cancelled());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn try_into_panic(self) -> Result<Box<dyn Any + Send>, TaskError> {
        match self.kind {
            TaskErrorKind::Panic { payload, .. } => Ok(into_payload(payload)),
            kind => Err(TaskError { kind }),
        }
    }
}

fn into_payload(payload: std::sync::Mutex<Box<dyn Any + Send>>) -> Box<dyn Any + Send> {
    payload
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TaskErrorKind::Panic { message, .. } => {
                f.debug_tuple("TaskError::Panic").field(message).finish()
            }
            TaskErrorKind::Cancelled => f.write_str("TaskError::Cancelled"),
            TaskErrorKind::Timeout => f.write_str("TaskError::Timeout"),
            TaskErrorKind::Taken => f.write_str("TaskError::Taken"),
            TaskErrorKind::Stopped(stopped) => {
                f.debug_tuple("TaskError::Stopped").field(stopped).finish()
            }
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            TaskErrorKind::Panic { .. } => match self.panic_message() {
                Some(message) => write!(f, "task panicked: {message}"),
                None => f.write_str("task panicked"),
            },
            TaskErrorKind::Cancelled => f.write_str("task was cancelled before it started"),
            TaskErrorKind::Timeout => f.write_str("timed out waiting for the task"),
            TaskErrorKind::Taken => f.write_str("the task's outcome was taken already"),
            TaskErrorKind::Stopped(stopped) => write!(f, "task was stopped: {stopped}"),
        }
    }
}

impl std::error::Error for TaskError {}
