//! The parent side of a process pool: the job queue, dispatch with a per-worker credit
//! window, crash and timeout detection, respawning, and shutdown.
//!
//! # Files
//!
//! - this file: the state shared with the pool handle and submitting threads ([`Shared`]),
//!   [`start`], and the supervisor thread's loop;
//! - [`conn`]: one worker process and everything the parent holds for it ([`conn::Conn`]:
//!   child, pidfd, socket, frame reader, outbox, ring, epoll token);
//! - [`state`]: the state under the lock, the worker lifecycle enum and the **job
//!   lifecycle** with its invariants (queued → sent → started → finished or failed);
//! - [`dispatch`]: the queue, dispatch with the credit window, and results;
//! - [`lifecycle`]: a worker from spawn to reap, crash blame and re-dispatch, failures to
//!   start and their backoff;
//! - [`sizing`]: **elastic sizing**, when a worker is spawned and when one retires for
//!   idleness, and why no job is lost;
//! - [`shutdown`]: the steps of close and terminate;
//! - [`stop`]: what a stopped [`Watch`](crate::Watch) does to the jobs of its calls.
//!
//! # Threads
//!
//! Each pool has one **supervisor thread**. It spawns every worker (a worker's parent-death
//! signal fires when the thread that spawned it exits, so that thread must live as long as
//! the pool), and it waits in `epoll` on, per worker, the socket (results) and a pidfd
//! (death), plus an eventfd that other threads write to wake it. Threads that submit work
//! send job frames themselves, under the state lock, without waking the supervisor: a
//! `submit` + `get` costs the two process wake-ups of a round trip and nothing more.
//!
//! # Shutdown
//!
//! `close` (and `join`, and `Drop`, which call it) stops new submissions; the queue still
//! drains. Once no job is queued or running, the supervisor shuts down the write side of
//! every socket; each worker reads EOF and exits with status 0; the supervisor reaps it,
//! killing what is left of its process group (and kills a worker that is still alive after
//! [`EXIT_GRACE`](lifecycle::EXIT_GRACE)). When every slot is dead the supervisor thread
//! returns, and `join` returns after it. `terminate` instead kills every worker at once and
//! fails every queued and running job with a "closed" error. See [`shutdown`].

mod conn;
mod dispatch;
mod lifecycle;
mod shutdown;
mod sizing;
mod state;
mod stop;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec, eventfd};

use super::bootstrap;
use super::task::Sink;
use super::wire;
use crate::ProcessError;
use crate::Stopped;
use crate::shm::segment::{Holder, Segment, SegmentId};
use crate::sync::lock;
use conn::{Source, Token};
use state::{Job, Phase, State, Worker};

pub(crate) use wire::Call;

/// Slots the supervisor spawns a worker for, outside the lock.
type Wanted = Vec<usize>;

/// The default time a worker has to start: spawn, handshake, and initializer. Spawning the
/// executable takes about a millisecond; 30 s leaves room for slow initializers and for
/// heavily loaded CI machines, while still turning a worker that never starts into an
/// error.
pub(crate) const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The epoll token of the eventfd.
const WAKER_TOKEN: u64 = u64::MAX;

/// A margin added to the epoll timeout when the supervisor sleeps until the next deadline,
/// so that it wakes after the deadline, not at it, and `check_deadlines` finds it due
/// instead of going round the loop once more. Not measured: `epoll_pwait` rounds its timeout
/// up to whole milliseconds anyway, and any margin well under that serves.
const DEADLINE_SLACK: Duration = Duration::from_micros(100);

/// The default idle timeout of an elastic pool. Not measured against a workload: a worker
/// is ready about 2 ms after it is spawned, so keeping an idle one longer buys little, and
/// 10 s still spans the pauses between the batches of a loop that submits in rounds.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of a pool, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The fewest workers the pool keeps (all of them, for a fixed pool).
    pub(crate) min_processes: usize,
    /// The most workers the pool runs: its number of slots.
    pub(crate) max_processes: usize,
    /// How long a worker may stay idle before it retires, while more than
    /// `min_processes` stay (see `sizing`).
    pub(crate) idle_timeout: Duration,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) initializer: Option<fn()>,
    pub(crate) startup_timeout: Duration,
    /// When a call's watch stops it, kill the workers running its jobs (else they finish).
    pub(crate) kill_on_stop: bool,
}

/// A job as submitted: what to run, its encoded argument, and where its outcome goes.
#[derive(Debug)]
pub(crate) struct JobSpec {
    pub(crate) call: Call,
    pub(crate) payload: Vec<u8>,
    /// Shared-memory segments the argument names; kept alive until the job is answered.
    pub(crate) segments: Vec<Arc<Segment>>,
    /// Where the outcome goes; it also holds the watch of the call that submitted the job
    /// (see `stop`).
    pub(crate) sink: Sink,
}

impl JobSpec {
    /// Why the job's watch stopped it by `now`, if it did.
    fn stopped(&self, now: Instant) -> Option<Stopped> {
        self.sink.watch()?.check_at(now).err()
    }
}

/// The state shared by the pool handle, submitting threads and the supervisor thread.
#[derive(Debug)]
pub(crate) struct Shared {
    /// This pool, as a holder of the shared-memory segments it sends (see `shm::segment`).
    this: Weak<dyn Holder>,
    /// Segments whose last handle in this process dropped, to release in the workers.
    released: Mutex<Vec<SegmentId>>,
    state: Mutex<State>,
    /// Signalled when the phase leaves `Starting`.
    started: Condvar,
    epoll: OwnedFd,
    waker: OwnedFd,
    config: Config,
    fingerprint: wire::Fingerprint,
}

/// A failure to set up the pool itself, before any worker starts.
fn startup_error(e: std::io::Error) -> ProcessError {
    ProcessError::startup("could not set up the pool", Some(e))
}

/// How long `start` waits past the startup timeout before it gives up on a supervisor that
/// did not report: every worker has `startup_timeout` to become ready and is then killed,
/// and a killed worker is reaped within milliseconds; one exit grace covers a loaded
/// machine. Only a supervisor that never reports needs it.
const START_SLACK: Duration = lifecycle::EXIT_GRACE;

/// Checks that this kernel has `pidfd_open` (Linux 5.3), which the supervisor watches
/// workers with.
fn check_pidfd() -> Result<(), ProcessError> {
    match rustix::process::pidfd_open(
        rustix::process::getpid(),
        rustix::process::PidfdFlags::empty(),
    ) {
        Ok(_) => Ok(()),
        Err(rustix::io::Errno::NOSYS) => Err(ProcessError::startup(
            "this kernel lacks pidfd_open (Linux 5.3 or later is needed), or a sandbox such as \
             valgrind or seccomp hides it; the process pool watches its workers through pidfds",
            None,
        )),
        Err(e) => Err(startup_error(e.into())),
    }
}

/// Starts a pool: the supervisor thread, which spawns the workers. Returns once the minimum
/// of workers (every worker, for a fixed pool) is ready, or with the first startup error, within the startup timeout.
pub(crate) fn start(config: Config) -> Result<(Arc<Shared>, JoinHandle<()>), ProcessError> {
    if config.max_processes == 0 {
        return Err(ProcessError::invalid_argument(
            "processes",
            "a process pool needs at least one process",
        ));
    }
    if config.min_processes > config.max_processes {
        return Err(ProcessError::invalid_argument(
            "elastic",
            format!(
                "a process pool's minimum number of processes ({}) is greater than its maximum \
             ({})",
                config.min_processes, config.max_processes
            ),
        ));
    }
    if let Some(initializer) = config.initializer {
        if !bootstrap::in_main_image(initializer as usize) {
            return Err(ProcessError::invalid_argument(
                "initializer",
                "the initializer is not in the main executable (it is in a dynamic library, \
                 which a worker maps at another address)",
            ));
        }
    }
    bootstrap::check_bootstrap()?;
    check_pidfd()?;
    let fingerprint = bootstrap::fingerprint().map_err(startup_error)?;
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| startup_error(e.into()))?;
    let waker = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| startup_error(e.into()))?;
    epoll::add(
        &epoll,
        &waker,
        EventData::new_u64(WAKER_TOKEN),
        EventFlags::IN,
    )
    .map_err(|e| startup_error(e.into()))?;
    let (n, min) = (config.max_processes, config.min_processes);
    let give_up = Instant::now() + config.startup_timeout + START_SLACK;
    let shared = Arc::new_cyclic(|this: &Weak<Shared>| Shared {
        this: this.clone(),
        released: Mutex::new(Vec::new()),
        state: Mutex::new(State::new(n, min, Instant::now())),
        started: Condvar::new(),
        epoll,
        waker,
        config,
        fingerprint,
    });
    let for_thread = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("parpool-supervisor".into())
        .spawn(move || supervise(&for_thread))
        .map_err(startup_error)?;
    let mut state = shared.lock();
    while state.phase == Phase::Starting {
        let now = Instant::now();
        if now >= give_up {
            state.failure.get_or_insert_with(|| {
                ProcessError::startup("the pool's workers did not start in time", None)
            });
            state.phase = Phase::Terminating;
            drop(state);
            shared.wake();
            state = shared.lock();
            break;
        }
        state = shared
            .started
            .wait_timeout(state, give_up - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    if state.phase == Phase::Running {
        drop(state);
        return Ok((shared, thread));
    }
    let error = state
        .failure
        .take()
        .unwrap_or_else(|| ProcessError::startup("the pool stopped while starting", None));
    drop(state);
    let _ = thread.join();
    Err(error)
}

impl Holder for Shared {
    fn released(&self, id: SegmentId) {
        lock(&self.released).push(id);
        self.wake();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Internal lock: the state stays consistent between statements that can panic, and
        // the supervisor aborts on an internal panic, so poisoning is ignored.
        lock(&self.state)
    }

    fn wake(&self) {
        let _ = rustix::io::write(&self.waker, &1u64.to_ne_bytes());
    }

    /// The pool's settings.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Queues jobs and sends what the workers' credit allows.
    ///
    /// # Errors
    ///
    /// The pool is closed, or no worker could start `MAX_START_ATTEMPTS` times per slot in a row
    /// (the pool keeps trying; `submit` works again once a worker is ready).
    pub(crate) fn submit(
        &self,
        jobs: impl IntoIterator<Item = JobSpec>,
    ) -> Result<(), ProcessError> {
        let mut state = self.lock();
        if state.phase != Phase::Running {
            return Err(ProcessError::closed());
        }
        if let Some(failure) = &state.failure {
            return Err(failure.duplicate());
        }
        for spec in jobs {
            let id = state.next_id;
            state.next_id += 1;
            state.queue.push_back(Job { id, spec });
        }
        let now = Instant::now();
        let timer_started = state.dispatch(self, now);
        let grow = !state.queue.is_empty() && state.wants_growth(now);
        drop(state);
        if timer_started || grow {
            // A job started on an idle worker under a task timeout (or a watch deadline the
            // pool kills at): the supervisor must recompute its epoll timeout. Or jobs wait
            // and the pool may grow: the supervisor spawns (see `sizing`).
            self.wake();
        }
        Ok(())
    }

    /// Takes the results in a worker's ring when the state lock is free: a waiting thread's
    /// shortcut past the supervisor, once it saw results in the ring of the worker that has
    /// its job (see `task`).
    pub(crate) fn poll_ring(&self, slot: usize) {
        let Ok(mut state) = self.state.try_lock() else {
            return; // the supervisor (or another waiter) is at it
        };
        state.take_ring(slot, &mut Vec::new(), self);
        let now = Instant::now();
        // A result taken here may have brought a stopped call's job to the front (killed
        // now), or one whose watch has an earlier deadline than the supervisor sleeps until
        // (it must recompute its sleep).
        state.kill_stopped(self, now);
        let timer_started = state.dispatch(self, now);
        drop(state);
        if timer_started || self.config.kill_on_stop {
            self.wake();
        }
    }

    /// A call saw its watch stop: settle the queued jobs of every stopped call now (each
    /// completes once, with the stop, and is never sent) and, if the pool kills on stop,
    /// kill the workers running such jobs (see `State::kill_stopped`).
    pub(crate) fn stop_watched(&self) {
        let mut state = self.lock();
        let now = Instant::now();
        state.drop_stopped(now);
        if state.kill_stopped(self, now) {
            drop(state);
            // The supervisor reaps the killed workers and spawns their replacements.
            self.wake();
        }
    }

    /// Drops queued jobs nobody waits for (an abandoned `imap`).
    pub(crate) fn purge(&self) {
        self.lock().queue.retain(|job| !job.spec.sink.is_dead());
    }

    /// Stops taking jobs; the queue drains, then the workers exit.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        if state.phase == Phase::Running {
            state.phase = Phase::Closing;
            drop(state);
            self.wake();
        }
    }

    /// Kills every worker and fails every queued and running job.
    pub(crate) fn terminate(&self) {
        let mut state = self.lock();
        if matches!(state.phase, Phase::Running | Phase::Closing) {
            state.phase = Phase::Terminating;
            drop(state);
            self.wake();
        }
    }

    /// The pids of the live workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.lock().pids()
    }

    /// The workers that exist or are being made now (see `sizing`).
    pub(crate) fn workers(&self) -> usize {
        self.lock().live()
    }

    /// What happened to the pool's workers so far.
    pub(crate) fn counters(&self) -> crate::process::WorkerCounters {
        self.lock().counters
    }
}

/// Aborts the process if the supervisor panics: a half-updated pool state would lose jobs
/// or hang their waiters, which is worse than a loud stop.
struct AbortOnPanic;

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("parpool: the process pool supervisor panicked; aborting");
            std::process::abort();
        }
    }
}

/// The supervisor thread: spawn what is wanted, settle the state, announce the sleep to the
/// rings, wait in epoll, handle the events; until the pool stopped.
///
/// Every pass through the loop ends with `advance` and `check_deadlines` under the lock, so
/// a pass that changed anything (a spawn that failed included) is followed by a sleep whose
/// timeout covers every deadline and every retry: the supervisor never sleeps without a
/// timeout while something is due.
fn supervise(shared: &Shared) {
    let _guard = AbortOnPanic;
    let n = shared.config.max_processes;
    let mut events: Vec<epoll::Event> = Vec::with_capacity(2 * n + 1);
    let mut ring_buf = Vec::new();
    let mut state = shared.lock();
    loop {
        // Spawn what the pool lacks, outside the lock: an exec takes about a millisecond.
        // Dispatch first, so that growth sees only the jobs no ready worker can take.
        state.dispatch(shared, Instant::now());
        let wanted = state.take_wanted(shared, Instant::now());
        if !wanted.is_empty() {
            drop(state);
            let spawned = lifecycle::spawn_all(&wanted);
            state = shared.lock();
            let now = Instant::now();
            for (slot, result) in wanted.into_iter().zip(spawned) {
                state.install(slot, result, shared, now);
            }
        }
        let now = Instant::now();
        state.dispatch(shared, now);
        if state.advance(shared, now) {
            return;
        }
        let deadline = state.check_deadlines(shared, now);

        // Announce the sleep to every ready worker's ring; a ring with results means no
        // sleep.
        let mut pending = false;
        for worker in &state.slots {
            if let Worker::Ready { conn, .. } = worker {
                pending |= conn.ring().arm();
            }
        }
        drop(state);
        let timeout = if pending {
            Some(Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            })
        } else {
            deadline.map(|d| {
                let wait = d.saturating_duration_since(Instant::now()) + DEADLINE_SLACK;
                Timespec::try_from(wait).unwrap_or(Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                })
            })
        };
        events.clear();
        match epoll::wait(
            &shared.epoll,
            rustix::buffer::spare_capacity(&mut events),
            timeout.as_ref(),
        ) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("epoll_wait failed: {e}"),
        }

        state = shared.lock();
        let now = Instant::now();
        for worker in &state.slots {
            if let Worker::Ready { conn, .. } = worker {
                conn.ring().disarm();
            }
        }
        let mut exited = Vec::new();
        for event in &events {
            let data = event.data.u64();
            if data == WAKER_TOKEN {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&shared.waker, &mut buf);
                continue;
            }
            let (token, source) = Token::decode(data);
            let current = state.slots[token.slot].conn().map(conn::Conn::token);
            if current != Some(token) {
                continue; // an event of a worker already reaped
            }
            match source {
                Source::Pidfd => exited.push(token.slot),
                Source::Socket => {
                    let flags = event.flags;
                    if flags.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR) {
                        state.on_readable(token.slot, shared, now);
                    }
                    if flags.contains(EventFlags::OUT) {
                        state.on_writable(token.slot, shared, now);
                    }
                }
            }
        }
        for slot in 0..n {
            state.take_ring(slot, &mut ring_buf, shared);
        }
        let released = std::mem::take(&mut *lock(&shared.released));
        for id in released {
            state.release(id, shared);
        }
        for slot in exited {
            state.reap(slot, &mut ring_buf, shared, now);
        }
    }
}
