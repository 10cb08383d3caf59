//! Error types: opaque structs with a private kind enum and query methods.
//!
//! Each error is a small struct whose kind stays private, so new kinds can be added without
//! breaking callers; callers ask questions (`is_panic()`, `signal()`, ...) instead of matching.

use std::any::Any;
use std::fmt;
#[cfg(all(feature = "process", target_os = "linux"))]
use std::io;
#[cfg(all(feature = "process", target_os = "linux"))]
use std::time::Duration;

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

    /// The task was cancelled before it started ([`Task::cancel`](crate::Task::cancel) or
    /// [`ThreadPool::terminate`](crate::ThreadPool::terminate)).
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = parpool::ThreadPool::new(1)?;
    /// pool.terminate(); // from now on, submitted tasks are cancelled
    /// assert!(pool.submit(|| 1).get().unwrap_err().is_cancelled());
    /// # Ok::<(), parpool::ThreadPoolBuildError>(())
    /// ```
    pub fn is_cancelled(&self) -> bool {
        matches!(self.kind, TaskErrorKind::Cancelled)
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
            TaskErrorKind::Panic { message, .. } => {
                f.debug_tuple("TaskError::Panic").field(message).finish()
            }
            TaskErrorKind::Cancelled => f.write_str("TaskError::Cancelled"),
            TaskErrorKind::Timeout => f.write_str("TaskError::Timeout"),
            TaskErrorKind::Taken => f.write_str("TaskError::Taken"),
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
        }
    }
}

impl std::error::Error for TaskError {}

// ---------------------------------------------------------------------------------------------
// Process pool errors
// ---------------------------------------------------------------------------------------------

/// An error from the [process pool](crate::process): a job that failed, a pool that could not
/// start, or a pool that was used after it was closed.
///
/// Each way a job can fail is a distinct kind with its own query method, so callers decide
/// what to do with the failure without parsing messages:
///
/// | what happened | query |
/// |---|---|
/// | the job panicked; the worker lives on | [`is_panic`](Self::is_panic), [`panic_message`](Self::panic_message) |
/// | the worker died while running the job (abort, segfault, SIGKILL, OOM kill, `exit`) | [`is_crash`](Self::is_crash), [`signal`](Self::signal), [`exit_code`](Self::exit_code) |
/// | the job ran past the pool's `task_timeout`; its worker was killed | [`is_task_timeout`](Self::is_task_timeout) |
/// | `get_timeout` gave up waiting; the job goes on and the handle still works | [`is_timeout`](Self::is_timeout) |
/// | an argument or result could not be (de)serialised | [`is_serialization`](Self::is_serialization), [`type_name`](Self::type_name) |
/// | the worker sent bytes that break the protocol (the job wrote to its socket, say); it was killed | [`is_protocol_violation`](Self::is_protocol_violation) |
/// | a worker could not start (within the startup timeout) | [`is_startup`](Self::is_startup) |
/// | the pool was closed or terminated | [`is_closed`](Self::is_closed) |
/// | the job was cancelled before it started | [`is_cancelled`](Self::is_cancelled) |
/// | a bad argument: 0 processes, a chunk size of 0, a function outside the executable | [`is_invalid_argument`](Self::is_invalid_argument) |
///
/// [`pid`](Self::pid) names the worker process involved, when there was one.
///
/// # Examples
///
/// ```
/// use parpool::ProcessPool;
///
/// let err = ProcessPool::new(0).unwrap_err();
/// assert!(err.is_invalid_argument());
/// assert_eq!(err.pid(), None);
/// ```
#[cfg(all(feature = "process", target_os = "linux"))]
pub struct ProcessError {
    kind: Box<ProcessErrorKind>,
}

/// How a worker process ended.
#[cfg(all(feature = "process", target_os = "linux"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExitStatus {
    /// Killed by this signal number.
    Signal(i32),
    /// Exited with this code.
    Code(i32),
}

/// Where a (de)serialisation failed.
#[cfg(all(feature = "process", target_os = "linux"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SerdeStage {
    /// Encoding the argument in the parent (`submit`, `map`).
    EncodeArgument,
    /// Decoding the argument in the worker.
    DecodeArgument,
    /// Encoding the result in the worker.
    EncodeResult,
    /// Decoding the result in the parent (`get`, `map`).
    DecodeResult,
}

#[cfg(all(feature = "process", target_os = "linux"))]
#[derive(Debug)]
enum ProcessErrorKind {
    InvalidArgument(String),
    Startup {
        message: String,
        source: Option<io::Error>,
    },
    Closed,
    Cancelled,
    WaitTimeout,
    Taken,
    Panic {
        message: String,
        pid: u32,
    },
    Crash {
        pid: u32,
        status: ExitStatus,
    },
    TaskTimeout {
        pid: u32,
        timeout: Duration,
    },
    Protocol {
        pid: u32,
        message: String,
    },
    Serialization {
        type_name: String,
        stage: SerdeStage,
        message: String,
        pid: Option<u32>,
    },
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl ProcessError {
    fn new(kind: ProcessErrorKind) -> Self {
        Self {
            kind: Box::new(kind),
        }
    }

    pub(crate) fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ProcessErrorKind::InvalidArgument(message.into()))
    }

    pub(crate) fn startup(message: impl Into<String>, source: Option<io::Error>) -> Self {
        Self::new(ProcessErrorKind::Startup {
            message: message.into(),
            source,
        })
    }

    pub(crate) fn closed() -> Self {
        Self::new(ProcessErrorKind::Closed)
    }

    pub(crate) fn cancelled() -> Self {
        Self::new(ProcessErrorKind::Cancelled)
    }

    pub(crate) fn wait_timeout() -> Self {
        Self::new(ProcessErrorKind::WaitTimeout)
    }

    pub(crate) fn taken() -> Self {
        Self::new(ProcessErrorKind::Taken)
    }

    pub(crate) fn panic(message: String, pid: u32) -> Self {
        Self::new(ProcessErrorKind::Panic { message, pid })
    }

    pub(crate) fn crash(pid: u32, status: ExitStatus) -> Self {
        Self::new(ProcessErrorKind::Crash { pid, status })
    }

    pub(crate) fn task_timeout(pid: u32, timeout: Duration) -> Self {
        Self::new(ProcessErrorKind::TaskTimeout { pid, timeout })
    }

    /// What a startup error says, its source included (`None` for other kinds).
    pub(crate) fn startup_cause(&self) -> Option<String> {
        match &*self.kind {
            ProcessErrorKind::Startup { message, source } => Some(match source {
                Some(s) => format!("{message}: {s}"),
                None => message.clone(),
            }),
            _ => None,
        }
    }

    pub(crate) fn protocol(pid: u32, message: String) -> Self {
        Self::new(ProcessErrorKind::Protocol { pid, message })
    }

    pub(crate) fn serialization(
        type_name: impl Into<String>,
        stage: SerdeStage,
        message: impl fmt::Display,
        pid: Option<u32>,
    ) -> Self {
        Self::new(ProcessErrorKind::Serialization {
            type_name: type_name.into(),
            stage,
            message: message.to_string(),
            pid,
        })
    }

    /// Returns a copy of this error for another job that failed the same way (a startup
    /// failure reported to every queued job). The `io::Error` source is kept as its message.
    pub(crate) fn duplicate(&self) -> Self {
        use ProcessErrorKind as K;
        let kind = match &*self.kind {
            K::InvalidArgument(m) => K::InvalidArgument(m.clone()),
            K::Startup { message, source } => K::Startup {
                message: match source {
                    Some(s) => format!("{message}: {s}"),
                    None => message.clone(),
                },
                source: None,
            },
            K::Closed => K::Closed,
            K::Cancelled => K::Cancelled,
            K::WaitTimeout => K::WaitTimeout,
            K::Taken => K::Taken,
            K::Panic { message, pid } => K::Panic {
                message: message.clone(),
                pid: *pid,
            },
            K::Crash { pid, status } => K::Crash {
                pid: *pid,
                status: *status,
            },
            K::TaskTimeout { pid, timeout } => K::TaskTimeout {
                pid: *pid,
                timeout: *timeout,
            },
            K::Protocol { pid, message } => K::Protocol {
                pid: *pid,
                message: message.clone(),
            },
            K::Serialization {
                type_name,
                stage,
                message,
                pid,
            } => K::Serialization {
                type_name: type_name.clone(),
                stage: *stage,
                message: message.clone(),
                pid: *pid,
            },
        };
        Self::new(kind)
    }

    /// The job panicked. The worker caught the panic and lives on;
    /// [`panic_message`](Self::panic_message) has the message.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn fail(x: u32) -> u32 {
    ///     panic!("no {x}")
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let err = pool.submit(fail, 7)?.get().unwrap_err();
    /// assert!(err.is_panic());
    /// assert_eq!(err.panic_message(), Some("no 7"));
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn is_panic(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::Panic { .. })
    }

    /// The panic message of a job that panicked (`&str` and `String` payloads; other payloads
    /// read `Box<dyn Any>`), or `None` for other errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn fail(_: ()) {
    ///     panic!("bad input")
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let err = pool.submit(fail, ())?.get().unwrap_err();
    /// assert_eq!(err.panic_message(), Some("bad input"));
    /// assert_eq!(ProcessPool::new(0).unwrap_err().panic_message(), None);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn panic_message(&self) -> Option<&str> {
        match &*self.kind {
            ProcessErrorKind::Panic { message, .. } => Some(message),
            _ => None,
        }
    }

    /// The worker process died while running the job: killed by a signal (abort, segfault,
    /// SIGKILL, the OOM killer) or it called `exit`. [`signal`](Self::signal) or
    /// [`exit_code`](Self::exit_code) says which, [`pid`](Self::pid) names the worker. The pool
    /// replaced the worker and sent the jobs that had not started to other workers.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn quit(code: i32) {
    ///     std::process::exit(code)
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let err = pool.submit(quit, 3)?.get().unwrap_err();
    /// assert!(err.is_crash());
    /// assert_eq!(err.exit_code(), Some(3));
    /// assert_eq!(err.signal(), None);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn is_crash(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::Crash { .. })
    }

    /// The signal that killed the worker running the job (6 for an abort, 11 for a
    /// segfault, 9 for SIGKILL and the OOM killer), or `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn abort(_: ()) {
    ///     std::process::abort()
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let err = pool.submit(abort, ())?.get().unwrap_err();
    /// assert!(err.is_crash());
    /// assert_eq!(err.signal(), Some(6)); // SIGABRT
    /// assert_eq!(err.exit_code(), None);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn signal(&self) -> Option<i32> {
        match &*self.kind {
            ProcessErrorKind::Crash {
                status: ExitStatus::Signal(s),
                ..
            } => Some(*s),
            _ => None,
        }
    }

    /// The exit code of a worker that exited while running the job, or `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn quit(code: i32) {
    ///     std::process::exit(code)
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let err = pool.submit(quit, 7)?.get().unwrap_err();
    /// assert_eq!(err.exit_code(), Some(7));
    /// assert_eq!(err.signal(), None);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn exit_code(&self) -> Option<i32> {
        match &*self.kind {
            ProcessErrorKind::Crash {
                status: ExitStatus::Code(c),
                ..
            } => Some(*c),
            _ => None,
        }
    }

    /// The pid of the worker process involved (panic, crash, task timeout, or a
    /// (de)serialisation failure inside a worker), or `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn fail(_: ()) {
    ///     panic!("boom")
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let err = pool.submit(fail, ())?.get().unwrap_err();
    /// assert!(pool.pids().contains(&err.pid().unwrap()));
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn pid(&self) -> Option<u32> {
        match &*self.kind {
            ProcessErrorKind::Panic { pid, .. }
            | ProcessErrorKind::Crash { pid, .. }
            | ProcessErrorKind::TaskTimeout { pid, .. }
            | ProcessErrorKind::Protocol { pid, .. } => Some(*pid),
            ProcessErrorKind::Serialization { pid, .. } => *pid,
            _ => None,
        }
    }

    /// The job's worker sent the parent something the protocol does not allow (typically
    /// the job wrote to a descriptor it does not own: the worker's socket), so it was killed
    /// and replaced; the job fails with this error instead of a bare exit status.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::io::Write;
    /// use std::os::fd::FromRawFd;
    ///
    /// fn scribble(_: ()) {
    ///     // Descriptor 3 of a worker is its socket to the parent (an implementation detail
    ///     // this example abuses on purpose).
    ///     // SAFETY: the File is never dropped, so descriptor 3 is not closed here.
    ///     let socket = unsafe { std::fs::File::from_raw_fd(3) };
    ///     let mut socket = std::mem::ManuallyDrop::new(socket);
    ///     let _ = socket.write_all(b"garbage, garbage, garbage");
    ///     std::thread::sleep(std::time::Duration::from_secs(5));
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let err = pool.submit(scribble, ())?.get().unwrap_err();
    /// assert!(err.is_protocol_violation(), "{err}");
    /// assert!(err.pid().is_some());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn is_protocol_violation(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::Protocol { .. })
    }

    /// The job ran longer than the pool's
    /// [`task_timeout`](crate::process::ProcessPoolBuilder::task_timeout): its worker was
    /// killed and replaced. Not to be confused with [`is_timeout`](Self::is_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn hang(_: ()) {
    ///     loop {
    ///         std::thread::sleep(Duration::from_secs(1));
    ///     }
    /// }
    ///
    /// let pool = ProcessPool::builder()
    ///     .processes(1)
    ///     .task_timeout(Duration::from_millis(100))
    ///     .build()?;
    /// assert!(pool.submit(hang, ())?.get().unwrap_err().is_task_timeout());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn is_task_timeout(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::TaskTimeout { .. })
    }

    /// A `get_timeout` gave up waiting before the job finished. The job
    /// goes on; the handle still works, so a later `get` returns its result.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn slow(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let task = pool.submit(slow, 300)?;
    /// assert!(task.get_timeout(Duration::from_millis(1)).unwrap_err().is_timeout());
    /// assert_eq!(task.get()?, 300);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::WaitTimeout)
    }

    /// An argument or a result could not be serialised or deserialised;
    /// [`type_name`](Self::type_name) names the type.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use serde::{Serialize, Serializer};
    ///
    /// struct Opaque;
    /// impl Serialize for Opaque {
    ///     fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
    ///         Err(serde::ser::Error::custom("not today"))
    ///     }
    /// }
    /// # impl<'de> serde::Deserialize<'de> for Opaque {
    /// #     fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> { Ok(Opaque) }
    /// # }
    ///
    /// fn take(_: Opaque) {}
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let err = pool.submit(take, Opaque).unwrap_err();
    /// assert!(err.is_serialization());
    /// assert!(err.type_name().unwrap().ends_with("Opaque"));
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn is_serialization(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::Serialization { .. })
    }

    /// The Rust type that failed to (de)serialise (from [`std::any::type_name`]), or `None`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::ffi::OsString;
    /// use std::os::unix::ffi::OsStringExt;
    /// use std::path::PathBuf;
    ///
    /// fn exists(path: PathBuf) -> bool {
    ///     path.exists()
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// // serde serialises a path as a string, so a path that is not UTF-8 does not serialise.
    /// let not_utf8 = PathBuf::from(OsString::from_vec(vec![0xff]));
    /// let err = pool.submit(exists, not_utf8).unwrap_err();
    /// assert!(err.type_name().unwrap().ends_with("PathBuf"));
    /// assert_eq!(pool.submit(exists, PathBuf::from("/"))?.get()?, true);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn type_name(&self) -> Option<&str> {
        match &*self.kind {
            ProcessErrorKind::Serialization { type_name, .. } => Some(type_name),
            _ => None,
        }
    }

    /// A worker process could not start: it could not be spawned, it did not finish its
    /// handshake within the startup timeout, it runs a different executable image, its
    /// initializer panicked, or the worker bootstrap did not run before `main` (the message
    /// then says to call [`parpool::process::init()`](crate::process::init)).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn broken() {
    ///     panic!("no config")
    /// }
    ///
    /// let err = ProcessPool::builder().processes(1).initializer(broken).build().unwrap_err();
    /// assert!(err.is_startup());
    /// assert!(err.to_string().contains("no config"));
    /// ```
    pub fn is_startup(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::Startup { .. })
    }

    /// The pool was closed or terminated: `submit`/`map` after `close`, `join` or
    /// `terminate`, or a job that `terminate` discarded.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn id(x: u8) -> u8 {
    ///     x
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// pool.close();
    /// assert!(pool.submit(id, 1).unwrap_err().is_closed());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::Closed)
    }

    /// The job was cancelled (with `cancel`) before it started.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use parpool::shm::Value;
    /// use std::time::Duration;
    ///
    /// fn wait_for(go: Value<u32>) {
    ///     while go.load() == 0 {
    ///         std::thread::sleep(Duration::from_millis(1));
    ///     }
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let go = Value::new(0u32)?;
    /// let running = pool.submit(wait_for, go.clone())?; // holds the only worker
    /// let queued = pool.submit(wait_for, go.clone())?;
    /// assert!(queued.cancel());
    /// assert!(queued.get().unwrap_err().is_cancelled());
    /// go.store(1);
    /// running.get()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_cancelled(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::Cancelled)
    }

    /// An earlier [`ProcessTask::get_timeout`](crate::process::ProcessTask::get_timeout)
    /// returned the job's outcome already: it is moved out once.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    /// use std::time::Duration;
    ///
    /// fn id(x: u8) -> u8 {
    ///     x
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// let task = pool.submit(id, 3)?;
    /// assert_eq!(task.get_timeout(Duration::from_secs(10))?, 3);
    /// assert!(task.get().unwrap_err().is_taken());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn is_taken(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::Taken)
    }

    /// A bad argument: a pool of 0 processes, a chunk size of 0, or a job function that does
    /// not live in the main executable (a dynamic library is mapped at another address in
    /// each process).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn id(x: u8) -> u8 {
    ///     x
    /// }
    ///
    /// let pool = ProcessPool::new(1)?;
    /// assert!(pool.map_chunked(id, 0..10, 0).unwrap_err().is_invalid_argument());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn is_invalid_argument(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::InvalidArgument(_))
    }
}

/// A readable name for the signals a job is likely to die of.
#[cfg(all(feature = "process", target_os = "linux"))]
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGABRT => "SIGABRT, an abort",
        libc::SIGSEGV => "SIGSEGV, a segmentation fault",
        libc::SIGKILL => "SIGKILL, e.g. the OOM killer or `kill -9`",
        libc::SIGBUS => "SIGBUS, a bus error",
        libc::SIGFPE => "SIGFPE, an arithmetic fault",
        libc::SIGILL => "SIGILL, an illegal instruction",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => return None,
    })
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            ProcessErrorKind::InvalidArgument(message) => f.write_str(message),
            ProcessErrorKind::Startup { message, .. } => {
                write!(f, "a worker process could not start: {message}")
            }
            ProcessErrorKind::Closed => f.write_str("the process pool is closed"),
            ProcessErrorKind::Cancelled => f.write_str("the job was cancelled before it started"),
            ProcessErrorKind::WaitTimeout => {
                f.write_str("the job has not finished yet (the wait timed out)")
            }
            ProcessErrorKind::Taken => f.write_str("the job's outcome was taken already"),
            ProcessErrorKind::Panic { message, pid } => {
                write!(f, "the job panicked in worker {pid}: {message}")
            }
            ProcessErrorKind::Crash {
                pid,
                status: ExitStatus::Signal(signal),
            } => {
                write!(f, "worker {pid} was killed by signal {signal}")?;
                if let Some(name) = signal_name(*signal) {
                    write!(f, " ({name})")?;
                }
                f.write_str(" while running the job")
            }
            ProcessErrorKind::Crash {
                pid,
                status: ExitStatus::Code(code),
            } => write!(
                f,
                "worker {pid} exited with code {code} while running the job"
            ),
            ProcessErrorKind::TaskTimeout { pid, timeout } => write!(
                f,
                "the job ran longer than the task timeout of {timeout:?}; worker {pid} was killed"
            ),
            ProcessErrorKind::Protocol { pid, message } => write!(
                f,
                "worker {pid} violated the pool's protocol while running the job ({message}), \
                 so it was killed; did the job write to a descriptor it does not own?"
            ),
            ProcessErrorKind::Serialization {
                type_name,
                stage,
                message,
                pid,
            } => {
                let what = match stage {
                    SerdeStage::EncodeArgument => "serialise the argument",
                    SerdeStage::DecodeArgument => "deserialise the argument",
                    SerdeStage::EncodeResult => "serialise the result",
                    SerdeStage::DecodeResult => "deserialise the result",
                };
                write!(f, "could not {what} of type `{type_name}`")?;
                if let Some(pid) = pid {
                    write!(f, " in worker {pid}")?;
                }
                write!(f, ": {message}")
            }
        }
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl fmt::Debug for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessError")
            .field("kind", &self.kind)
            .field("message", &format_args!("{self}"))
            .finish()
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl std::error::Error for ProcessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            ProcessErrorKind::Startup {
                source: Some(e), ..
            } => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared-memory errors
// ---------------------------------------------------------------------------------------------

/// An error from [shared memory](crate::shm): a segment that could not be made, a lock whose
/// holder died, an index out of bounds, or a handle that does not name a segment of this
/// process.
///
/// Converting a lock's [`PoisonError`](std::sync::PoisonError) into a `ShmError` (what `?`
/// does) keeps the fact that it was poisoned: [`is_poisoned`](Self::is_poisoned).
///
/// # Examples
///
/// ```
/// use parpool::shm::Array;
///
/// let a = Array::from_slice(&[1u8, 2, 3])?;
/// let err = a.get(3).unwrap_err();
/// assert!(err.is_out_of_bounds());
/// assert_eq!(err.to_string(), "index 3 is out of bounds for a shared array of length 3");
/// # Ok::<(), parpool::ShmError>(())
/// ```
#[cfg(all(feature = "process", target_os = "linux"))]
pub struct ShmError {
    kind: Box<ShmErrorKind>,
}

#[cfg(all(feature = "process", target_os = "linux"))]
#[derive(Debug)]
enum ShmErrorKind {
    Io(io::Error),
    Poisoned,
    OutOfBounds { index: usize, len: usize },
    UnknownSegment(String),
    Invalid(String),
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl ShmError {
    fn new(kind: ShmErrorKind) -> Self {
        Self {
            kind: Box::new(kind),
        }
    }

    pub(crate) fn io(source: io::Error) -> Self {
        Self::new(ShmErrorKind::Io(source))
    }

    pub(crate) fn poisoned() -> Self {
        Self::new(ShmErrorKind::Poisoned)
    }

    pub(crate) fn out_of_bounds(index: usize, len: usize) -> Self {
        Self::new(ShmErrorKind::OutOfBounds { index, len })
    }

    pub(crate) fn unknown_segment(message: impl Into<String>) -> Self {
        Self::new(ShmErrorKind::UnknownSegment(message.into()))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ShmErrorKind::Invalid(message.into()))
    }

    /// The lock is poisoned: a process or thread died (or panicked) while holding it, so the
    /// data may be half-written. [`lock`](crate::shm::Value::lock) still gives access (through
    /// [`PoisonError::into_inner`](std::sync::PoisonError::into_inner)); `clear_poison` ends
    /// the state.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Value;
    ///
    /// let v = Value::new(0u8)?;
    /// let w = v.clone();
    /// std::thread::spawn(move || {
    ///     let _guard = w.lock().unwrap();
    ///     panic!("stopped while holding the lock");
    /// })
    /// .join()
    /// .unwrap_err();
    /// assert!(v.get().unwrap_err().is_poisoned());
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn is_poisoned(&self) -> bool {
        matches!(*self.kind, ShmErrorKind::Poisoned)
    }

    /// An [`Array`](crate::shm::Array) index at or past the end.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// let a = Array::from_slice(&[1u8])?;
    /// assert!(a.set(1, 0).unwrap_err().is_out_of_bounds());
    /// a.set(0, 2)?;
    /// # Ok::<(), parpool::ShmError>(())
    /// ```
    pub fn is_out_of_bounds(&self) -> bool {
        matches!(*self.kind, ShmErrorKind::OutOfBounds { .. })
    }

    /// A deserialised handle names a segment this process does not have: handles cross
    /// processes as arguments and results of [`ProcessPool`](crate::ProcessPool) jobs, which
    /// carry the segment along; a handle sent any other way, or whose segment is gone, is
    /// unknown on arrival.
    ///
    /// # Examples
    ///
    /// See the [`shm`](crate::shm) module.
    pub fn is_unknown_segment(&self) -> bool {
        matches!(*self.kind, ShmErrorKind::UnknownSegment(_))
    }

    /// The operating system refused a segment: `memfd_create`, `ftruncate` or `mmap` failed
    /// (out of memory, or too many open descriptors). [`source`](std::error::Error::source)
    /// has the `io::Error`.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Array;
    ///
    /// // Far more than any machine maps.
    /// let err = Array::<u64>::zeroed(usize::MAX / 16).unwrap_err();
    /// assert!(err.is_io());
    /// ```
    pub fn is_io(&self) -> bool {
        matches!(*self.kind, ShmErrorKind::Io(_))
    }

    /// An argument out of range, such as a [`Queue`](crate::shm::Queue) of capacity 0;
    /// nothing was made.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::shm::Queue;
    ///
    /// let err = Queue::<u8>::new(0).unwrap_err();
    /// assert!(err.is_invalid());
    /// assert_eq!(err.to_string(), "a shared queue's capacity must be 1 to 2^31 items, not 0");
    /// ```
    pub fn is_invalid(&self) -> bool {
        matches!(*self.kind, ShmErrorKind::Invalid(_))
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl fmt::Display for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            ShmErrorKind::Io(e) => write!(f, "shared memory: {e}"),
            ShmErrorKind::Poisoned => f.write_str(
                "the shared lock is poisoned: its holder died or panicked while holding it",
            ),
            ShmErrorKind::OutOfBounds { index, len } => write!(
                f,
                "index {index} is out of bounds for a shared array of length {len}"
            ),
            ShmErrorKind::UnknownSegment(message) | ShmErrorKind::Invalid(message) => {
                f.write_str(message)
            }
        }
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl fmt::Debug for ShmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmError")
            .field("kind", &self.kind)
            .field("message", &format_args!("{self}"))
            .finish()
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl std::error::Error for ShmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            ShmErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl<G> From<std::sync::PoisonError<G>> for ShmError {
    fn from(_: std::sync::PoisonError<G>) -> Self {
        Self::poisoned()
    }
}
