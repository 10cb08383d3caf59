//! The process pool's error, [`ProcessError`]: an opaque struct with a private kind enum
//! and a query method per kind.

use std::fmt;
use std::io;
use std::time::Duration;

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
/// | a worker could not start (within the startup timeout) | [`is_startup`](Self::is_startup), [`is_initializer_failure`](Self::is_initializer_failure), [`os_error`](Self::os_error) |
/// | the pool was closed or terminated | [`is_closed`](Self::is_closed) |
/// | the job was cancelled before it started | [`is_cancelled`](Self::is_cancelled) |
/// | the [`Watch`](crate::Watch) the call ran under was cancelled, or its deadline passed | [`is_cancelled`](Self::is_cancelled), [`is_deadline`](Self::is_deadline) |
/// | a bad argument: 0 processes, a chunk size of 0, a function outside the executable | [`is_invalid_argument`](Self::is_invalid_argument), [`argument`](Self::argument) |
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

/// What made a worker fail to start, where a caller can act on it.
#[cfg(all(feature = "process", target_os = "linux"))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartupCause {
    /// The initializer panicked with this message.
    InitializerPanic(String),
    /// The initializer did not return within the startup timeout.
    InitializerTimeout,
    /// Anything else: the message says what.
    Other,
}

/// The operating system's error under a startup failure.
#[cfg(all(feature = "process", target_os = "linux"))]
#[derive(Debug)]
enum OsCause {
    None,
    /// The error itself, reported as the `source`.
    Error(io::Error),
    /// A copy's: the error's code, its text folded into the copy's message (`io::Error` is
    /// not `Clone`).
    Code(i32),
}

#[cfg(all(feature = "process", target_os = "linux"))]
#[derive(Debug)]
enum ProcessErrorKind {
    InvalidArgument {
        /// The argument or setting at fault, for [`ProcessError::argument`].
        argument: &'static str,
        message: String,
    },
    Startup {
        message: String,
        cause: StartupCause,
        os: OsCause,
    },
    Closed,
    Cancelled,
    /// The call's watch stopped it.
    Stopped(crate::Stopped),
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

    /// A bad `argument` (see [`ProcessError::argument`] for the names).
    pub(crate) fn invalid_argument(argument: &'static str, message: impl Into<String>) -> Self {
        Self::new(ProcessErrorKind::InvalidArgument {
            argument,
            message: message.into(),
        })
    }

    pub(crate) fn startup(message: impl Into<String>, source: Option<io::Error>) -> Self {
        Self::startup_because(message, StartupCause::Other, source)
    }

    /// A startup failure with a cause a caller can query.
    pub(crate) fn startup_because(
        message: impl Into<String>,
        cause: StartupCause,
        source: Option<io::Error>,
    ) -> Self {
        Self::new(ProcessErrorKind::Startup {
            message: message.into(),
            cause,
            os: source.map_or(OsCause::None, OsCause::Error),
        })
    }

    /// A startup failure summing up repeated ones (`message` quotes the last, `last`): it
    /// keeps the last one's cause and operating-system error code for the queries.
    pub(crate) fn startup_repeated(message: impl Into<String>, last: &ProcessError) -> Self {
        let (cause, os) = match &*last.kind {
            ProcessErrorKind::Startup { cause, os, .. } => (cause.clone(), os.code()),
            _ => (StartupCause::Other, None),
        };
        Self::new(ProcessErrorKind::Startup {
            message: message.into(),
            cause,
            os: os.map_or(OsCause::None, OsCause::Code),
        })
    }

    pub(crate) fn closed() -> Self {
        Self::new(ProcessErrorKind::Closed)
    }

    pub(crate) fn cancelled() -> Self {
        Self::new(ProcessErrorKind::Cancelled)
    }

    pub(crate) fn stopped(stopped: crate::Stopped) -> Self {
        Self::new(ProcessErrorKind::Stopped(stopped))
    }

    /// Why the call's watch stopped it, if that is this error.
    pub(crate) fn stop(&self) -> Option<crate::Stopped> {
        match &*self.kind {
            ProcessErrorKind::Stopped(stopped) => Some(*stopped),
            _ => None,
        }
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
            ProcessErrorKind::Startup { message, os, .. } => Some(match os {
                OsCause::Error(e) => format!("{message}: {e}"),
                OsCause::None | OsCause::Code(_) => message.clone(),
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
            K::InvalidArgument { argument, message } => K::InvalidArgument {
                argument,
                message: message.clone(),
            },
            K::Startup { message, cause, os } => K::Startup {
                message: match os {
                    OsCause::Error(e) => format!("{message}: {e}"),
                    OsCause::None | OsCause::Code(_) => message.clone(),
                },
                cause: cause.clone(),
                os: os.code().map_or(OsCause::None, OsCause::Code),
            },
            K::Closed => K::Closed,
            K::Cancelled => K::Cancelled,
            K::Stopped(stopped) => K::Stopped(*stopped),
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

    /// The panic message of a job that panicked, or of an initializer that panicked (see
    /// [`is_initializer_failure`](Self::is_initializer_failure)) (`&str` and `String`
    /// payloads; other payloads read `Box<dyn Any>`), or `None` for other errors.
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
            ProcessErrorKind::Panic { message, .. }
            | ProcessErrorKind::Startup {
                cause: StartupCause::InitializerPanic(message),
                ..
            } => Some(message),
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
    /// assert_eq!(err.panic_message(), Some("no config"));
    /// ```
    pub fn is_startup(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::Startup { .. })
    }

    /// The operating system's error under a startup failure (a worker process that could
    /// not be spawned, a pool that could not set up its descriptors), when there was one
    /// and this error is the one that saw it (the copies given to queued jobs keep only its
    /// message).
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// let error = ProcessPool::new(0).unwrap_err();
    /// assert!(error.io_error().is_none());
    /// ```
    pub fn io_error(&self) -> Option<&io::Error> {
        match &*self.kind {
            ProcessErrorKind::Startup {
                os: OsCause::Error(e),
                ..
            } => Some(e),
            _ => None,
        }
    }

    /// The operating system's error code (`errno`) under a startup failure, when there was
    /// one: unlike [`io_error`](Self::io_error) it is kept by the copies that queued jobs
    /// receive and by the error of a pool whose workers failed to start again and again.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// let error = ProcessPool::new(0).unwrap_err();
    /// assert_eq!(error.os_error(), None);
    /// if let Some(e) = error.io_error() {
    ///     assert_eq!(error.os_error(), e.raw_os_error());
    /// }
    /// ```
    pub fn os_error(&self) -> Option<i32> {
        match &*self.kind {
            ProcessErrorKind::Startup { os, .. } => os.code(),
            _ => None,
        }
    }

    /// A worker could not start because of the pool's initializer: it panicked (then
    /// [`panic_message`](Self::panic_message) has its message) or did not return within
    /// the startup timeout. Also [`is_startup`](Self::is_startup).
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
    /// assert!(err.is_startup() && err.is_initializer_failure());
    /// assert_eq!(err.panic_message(), Some("no config"));
    /// assert!(!ProcessPool::new(0).unwrap_err().is_initializer_failure());
    /// ```
    pub fn is_initializer_failure(&self) -> bool {
        matches!(
            *self.kind,
            ProcessErrorKind::Startup {
                cause: StartupCause::InitializerPanic(_) | StartupCause::InitializerTimeout,
                ..
            }
        )
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

    /// The job was cancelled (with [`ProcessTask::cancel`](crate::process::ProcessTask::cancel))
    /// before it started, or the [`CancelToken`](crate::CancelToken) of the
    /// [`Watch`](crate::Watch) the call ran under was cancelled (see
    /// [`ProcessPool::map`](crate::ProcessPool::map) for what a stop does to a call).
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
        match &*self.kind {
            ProcessErrorKind::Cancelled => true,
            ProcessErrorKind::Stopped(stopped) => stopped.is_cancelled(),
            _ => false,
        }
    }

    /// The deadline of the [`Watch`](crate::Watch) the call ran under passed (see
    /// [`ProcessPool::map`](crate::ProcessPool::map) for what a stop does to a call). Not to
    /// be confused with [`is_task_timeout`](Self::is_task_timeout), the pool's limit on one
    /// job, nor with [`is_timeout`](Self::is_timeout), a wait that gave up.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::{ProcessPool, Watch};
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let procs = ProcessPool::new(2)?;
    /// let watch = Watch::new().timeout(Duration::from_millis(100));
    /// let err = watch.run(|| procs.map(vec![20; 1000], nap)).unwrap().unwrap_err();
    /// assert!(err.is_deadline() && !err.is_cancelled());
    /// assert_eq!(procs.map([1, 2], nap)?, [1, 2]); // the pool serves on
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn is_deadline(&self) -> bool {
        matches!(&*self.kind, ProcessErrorKind::Stopped(stopped) if stopped.is_deadline())
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

    /// A bad argument: a pool of 0 processes, or a job function that does not live in the
    /// main executable (a dynamic library is mapped at another address in each process). (A
    /// chunk size of 0 is a bug at the call site and panics, as on the thread pool.)
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// assert!(ProcessPool::new(0).unwrap_err().is_invalid_argument());
    /// ```
    pub fn is_invalid_argument(&self) -> bool {
        matches!(*self.kind, ProcessErrorKind::InvalidArgument { .. })
    }

    /// For an [`is_invalid_argument`](Self::is_invalid_argument) error, the argument at
    /// fault: `"processes"` (a pool of 0 processes, from `processes(0)`, `elastic(_, 0)`
    /// or `new(0)`), `"elastic"` (a minimum greater than the maximum), `"initializer"` or
    /// `"function"` (a function outside the main executable). `None` for other errors.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// assert_eq!(ProcessPool::new(0).unwrap_err().argument(), Some("processes"));
    /// let err = ProcessPool::builder().elastic(3, 2).build().unwrap_err();
    /// assert_eq!(err.argument(), Some("elastic"));
    /// ```
    pub fn argument(&self) -> Option<&'static str> {
        match &*self.kind {
            ProcessErrorKind::InvalidArgument { argument, .. } => Some(*argument),
            _ => None,
        }
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
            ProcessErrorKind::InvalidArgument { message, .. } => f.write_str(message),
            ProcessErrorKind::Startup { message, .. } => {
                write!(f, "a worker process could not start: {message}")
            }
            ProcessErrorKind::Closed => f.write_str("the process pool is closed"),
            ProcessErrorKind::Cancelled => f.write_str("the job was cancelled before it started"),
            ProcessErrorKind::Stopped(stopped) => write!(f, "the call was stopped: {stopped}"),
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
                os: OsCause::Error(e),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

#[cfg(all(feature = "process", target_os = "linux"))]
impl OsCause {
    fn code(&self) -> Option<i32> {
        match self {
            OsCause::None => None,
            OsCause::Error(e) => e.raw_os_error(),
            OsCause::Code(code) => Some(*code),
        }
    }
}
