//! A worker from spawn to reap, and what its end does to its jobs.
//!
//! # Transitions
//!
//! ```text
//!  Dead ──(retry_at passed, a worker is wanted)──▶ Spawning ──(spawned)──▶ Starting
//!   ▲                                                 │ (spawn failed)        │ Hello ok
//!   │◀────────────────────────────────────────────────┘                       ▼
//!   │                                                                  Initialising
//!   │                                                                         │ Ready
//!   │            kill (timeout, violation, terminate), EOF, a failed send,    ▼
//!   │            close, idle retirement (`sizing`), a failed start         Ready
//!   │                     ┌─────────────────────────────────────────────────┘
//!   │                     ▼
//!   └──(pidfd: reap)── Exiting
//! ```
//!
//! Which `Dead` slots are wanted, and when a ready worker retires for idleness, is the
//! elastic sizing protocol in [`sizing`](super::sizing).
//!
//! The pidfd of any live worker may fire at any stage: the worker is then reaped from where
//! it is. [`State::reap`] reads what the worker left (socket to EOF, ring), then settles its
//! jobs as the job lifecycle in `state` says.
//!
//! # Failure to start
//!
//! While the pool is being built, a worker that fails to start fails the build: the others
//! are killed and `new`/`build` returns the error (a spawn refused for lack of descriptors or
//! processes, a handshake or initializer past the startup timeout, an initializer that
//! panicked). On a running pool a slot whose worker fails to start is retried after a
//! backoff that doubles, per round of failures, from [`BACKOFF_FIRST`] to [`BACKOFF_MAX`].
//! After [`MAX_START_ATTEMPTS`] failures per slot in a row with no worker ready, queued jobs
//! fail with the startup error, and so does `submit`, until a worker becomes ready again: the pool keeps
//! trying, and serves again as soon as spawning works.

use std::time::{Duration, Instant};

use super::conn::{self, Conn, Spawned, Token};
use super::state::{Ending, Jobs, Phase, State, Worker};
use super::{Shared, Wanted};
use crate::ProcessError;
use crate::process::bootstrap;
use crate::process::wire::{self, Fill, ToParent};
use crate::process::{ExitStatus, StartupCause};

/// Failures to start a worker in a row **per slot** (`MAX_START_ATTEMPTS × processes` in the
/// whole pool), with no worker ready, after which queued jobs fail. Not measured: a passing
/// failure (a spawn refused under memory pressure, a start slowed past the startup timeout,
/// a replacement killed from outside while it starts) rarely repeats three times in a row
/// on every slot, while a lasting one (an initializer that always panics, a descriptor
/// limit) fails every slot and is reported after three rounds of attempts instead of
/// leaving jobs waiting. Counted per slot because the slots start at the same time: a
/// pool-wide three let one kill storm over three of eight starting replacements fail jobs
/// that never had a worker (`workers_killed_while_starting_do_not_fail_queued_jobs`).
pub(super) const MAX_START_ATTEMPTS: u32 = 3;

/// The wait before the first retry of a failed start; it doubles with each round of failures
/// in a row (one failure per slot).
/// Not measured: short enough that a passing failure costs little.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);

/// The longest wait between two attempts to start a worker. Not measured: a pool that cannot
/// spawn tries once every two seconds per slot, which costs nothing noticeable and recovers
/// within two seconds once the cause is gone.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long a worker may take to exit after its socket was shut down (or after it closed
/// its end), before it is killed. Idle workers exit within a millisecond; a second leaves
/// room for `atexit` work on a loaded machine.
pub(super) const EXIT_GRACE: Duration = Duration::from_secs(1);

impl State {
    /// Whether the pool wants workers at all (see `sizing` for how many).
    pub(super) fn wants_workers(&self) -> bool {
        match self.phase {
            Phase::Starting => self.failure.is_none(),
            Phase::Running => true,
            Phase::Closing => self.queue.iter().any(|job| !job.spec.sink.is_dead()),
            Phase::Terminating | Phase::Stopped => false,
        }
    }

    /// Installs a freshly spawned worker in its slot (or records that it could not be).
    pub(super) fn install(
        &mut self,
        slot: usize,
        spawned: std::io::Result<Spawned>,
        shared: &Shared,
        now: Instant,
    ) {
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                let error = ProcessError::startup("could not spawn a worker process", Some(e));
                self.start_failed(slot, error, shared, now);
                return;
            }
        };
        self.next_generation = self.next_generation.wrapping_add(1);
        let token = Token {
            slot,
            generation: self.next_generation,
        };
        match Conn::register(spawned, token, &shared.epoll) {
            Ok(conn) => {
                self.slots[slot] = Worker::Starting {
                    conn,
                    deadline: now + shared.config.startup_timeout,
                };
            }
            Err(e) => {
                let error = ProcessError::startup("could not watch a worker process", Some(e));
                self.start_failed(slot, error, shared, now);
            }
        }
    }

    /// A worker could not start: retry later; fail the build, or the queue after
    /// `MAX_START_ATTEMPTS` failures in a row with no worker ready.
    fn start_failed(&mut self, slot: usize, error: ProcessError, shared: &Shared, now: Instant) {
        self.start_failures = self.start_failures.saturating_add(1);
        let slots = u32::try_from(self.slots.len()).unwrap_or(u32::MAX).max(1);
        let rounds = (self.start_failures - 1) / slots;
        let backoff = BACKOFF_FIRST
            .saturating_mul(1 << rounds.min(16))
            .min(BACKOFF_MAX);
        self.slots[slot] = Worker::Dead {
            retry_at: now + backoff,
        };
        match self.phase {
            Phase::Starting => {
                self.failure.get_or_insert(error);
                self.phase = Phase::Terminating;
                shared.started.notify_all();
            }
            Phase::Running | Phase::Closing => {
                let any_ready = self.slots.iter().any(|w| matches!(w, Worker::Ready { .. }));
                if self.start_failures >= MAX_START_ATTEMPTS.saturating_mul(slots) && !any_ready {
                    let error = ProcessError::startup_repeated(
                        format!(
                            "no worker could start ({} attempts in a row failed; the pool \
                             keeps trying): {}",
                            self.start_failures,
                            error.startup_cause().unwrap_or_default()
                        ),
                        &error,
                    );
                    self.fail_queue(Some(&error));
                    self.failure = Some(error);
                }
            }
            Phase::Terminating | Phase::Stopped => {}
        }
    }

    /// Reads and handles what a live worker's socket holds (one read; epoll is
    /// level-triggered, so what is left wakes the supervisor again).
    pub(super) fn on_readable(&mut self, slot: usize, shared: &Shared, now: Instant) {
        let Some(conn) = self.slots[slot].conn_mut() else {
            return;
        };
        match conn.read() {
            Ok(Fill::Data(_)) => self.handle_messages(slot, shared, now),
            Ok(Fill::Empty) => {}
            // EOF: the worker closed its end, so it is dying; its pidfd says how.
            Ok(Fill::Eof) => self.handle_eof(slot, shared, now),
            Err(e) => self.violation(slot, format!("its socket failed: {e}"), shared, now),
        }
    }

    /// A live worker's socket turned writable: send what its outbox holds.
    pub(super) fn on_writable(&mut self, slot: usize, shared: &Shared, now: Instant) {
        if let Worker::Ready { conn, .. } = &mut self.slots[slot] {
            if conn.flush(&shared.epoll).is_err() {
                self.exit(slot, Ending::Lost, false, shared, now);
            }
        } else if let Some(conn) = self.slots[slot].conn_mut() {
            // Starting: the Init frame; a failure shows as EOF on the next read.
            let _ = conn.flush(&shared.epoll);
        }
    }

    /// The socket reached EOF.
    fn handle_eof(&mut self, slot: usize, shared: &Shared, now: Instant) {
        match &self.slots[slot] {
            Worker::Starting { .. } | Worker::Initialising { .. } => {
                // Its exit status says why; a worker that lives on is killed at the deadline.
                self.exit(slot, Ending::StartFailed(None), false, shared, now);
            }
            Worker::Ready { .. } => self.exit(slot, Ending::Lost, false, shared, now),
            _ => {}
        }
    }

    /// Handles the whole frames read so far from a worker's socket.
    fn handle_messages(&mut self, slot: usize, shared: &Shared, now: Instant) {
        loop {
            let Some(conn) = self.slots[slot].conn_mut() else {
                return;
            };
            let message = conn.next_message();
            match message {
                Ok(Some(message)) => self.on_message(slot, message, shared, now),
                Ok(None) => return,
                Err(e) => {
                    self.violation(slot, e.to_string(), shared, now);
                    return;
                }
            }
        }
    }

    /// Handles one message from a worker, by the worker's stage.
    fn on_message(&mut self, slot: usize, message: ToParent, shared: &Shared, now: Instant) {
        let worker = std::mem::replace(&mut self.slots[slot], Worker::Spawning);
        self.slots[slot] = match (worker, message) {
            (Worker::Starting { mut conn, deadline }, ToParent::Hello(hello)) => {
                if hello.fingerprint != shared.fingerprint {
                    let why = format!(
                        "worker {} runs a different executable image than the parent ({:?} \
                         against {:?}); was the executable replaced while running?",
                        hello.pid, hello.fingerprint, shared.fingerprint
                    );
                    self.slots[slot] = Worker::Starting { conn, deadline };
                    self.exit(slot, Ending::start_failed(why), true, shared, now);
                    return;
                }
                let init = wire::Init {
                    initializer: shared
                        .config
                        .initializer
                        .map(|f| bootstrap::offset_of(f as usize)),
                    max_tasks: shared.config.max_tasks_per_child.unwrap_or(0),
                };
                if let Err(e) = conn.send_init(&shared.epoll, &init) {
                    let why = format!("could not send Init: {e}");
                    self.slots[slot] = Worker::Starting { conn, deadline };
                    self.exit(slot, Ending::start_failed(why), true, shared, now);
                    return;
                }
                Worker::Initialising { conn, deadline }
            }
            (Worker::Starting { conn, deadline }, ToParent::Missed) => {
                self.slots[slot] = Worker::Starting { conn, deadline };
                let why = bootstrap::BOOTSTRAP_ADVICE.to_owned();
                self.exit(slot, Ending::start_failed(why), true, shared, now);
                return;
            }
            (Worker::Initialising { conn, .. }, ToParent::Ready) => {
                self.start_failures = 0;
                if self.phase != Phase::Starting {
                    self.failure = None;
                }
                let jobs_left = shared.config.max_tasks_per_child.unwrap_or(u64::MAX);
                self.slots[slot] = Worker::Ready {
                    conn,
                    jobs: Jobs::new(jobs_left, now),
                };
                self.counters.spawned += 1;
                let ready = self
                    .slots
                    .iter()
                    .filter(|w| matches!(w, Worker::Ready { .. }))
                    .count();
                if self.phase == Phase::Starting && ready >= shared.config.min_processes {
                    self.phase = Phase::Running;
                    shared.started.notify_all();
                }
                return;
            }
            (Worker::Initialising { conn, deadline }, ToParent::InitFailed(message)) => {
                // The worker exits by itself (status 113).
                self.slots[slot] = Worker::Initialising { conn, deadline };
                let why = ProcessError::startup_because(
                    format!("the initializer panicked: {message}"),
                    StartupCause::InitializerPanic(message),
                    None,
                );
                self.exit(slot, Ending::StartFailed(Some(why)), false, shared, now);
                return;
            }
            (
                worker @ (Worker::Ready { .. } | Worker::Exiting { .. }),
                ToParent::Result(result),
            ) => {
                self.slots[slot] = worker;
                self.on_result(slot, result, shared, now);
                return;
            }
            (worker @ (Worker::Ready { .. } | Worker::Exiting { .. }), ToParent::Doorbell) => {
                worker
            }
            (worker, message) => {
                self.slots[slot] = worker;
                let why = format!("it sent {} out of turn", message.name());
                self.violation(slot, why, shared, now);
                return;
            }
        };
    }

    /// A worker broke the protocol: kill it and say so (a startup failure while it starts).
    pub(super) fn violation(&mut self, slot: usize, why: String, shared: &Shared, now: Instant) {
        let ending = match &self.slots[slot] {
            Worker::Starting { .. } | Worker::Initialising { .. } => {
                Ending::start_failed(format!("worker broke the protocol: {why}"))
            }
            Worker::Ready { .. } => Ending::Violation(why),
            Worker::Exiting { .. } => {
                // Keep the first reason (a timeout, say); the worker is on its way out.
                self.exit(slot, Ending::Lost, true, shared, now);
                return;
            }
            Worker::Dead { .. } | Worker::Spawning => return,
        };
        self.exit(slot, ending, true, shared, now);
    }

    /// Moves a live worker to `Exiting` for `why`: killed now (`kill`), or given
    /// [`EXIT_GRACE`] to exit on its own. An exiting worker keeps its first reason; a kill
    /// still goes through.
    pub(super) fn exit(
        &mut self,
        slot: usize,
        why: Ending,
        kill: bool,
        shared: &Shared,
        now: Instant,
    ) {
        let worker = std::mem::replace(&mut self.slots[slot], Worker::Spawning);
        let jobs_left = shared.config.max_tasks_per_child.unwrap_or(u64::MAX);
        let (mut conn, jobs, why, deadline) = match worker {
            Worker::Starting { conn, .. } | Worker::Initialising { conn, .. } => {
                let why = match why {
                    Ending::Terminated => Ending::Terminated,
                    Ending::StartFailed(m) => Ending::StartFailed(m),
                    _ => Ending::StartFailed(None),
                };
                (conn, Jobs::new(jobs_left, now), why, None)
            }
            Worker::Ready { conn, jobs } => (conn, jobs, why, None),
            Worker::Exiting {
                conn,
                jobs,
                why: first,
                deadline,
            } => (conn, jobs, first, deadline),
            other => {
                self.slots[slot] = other;
                return;
            }
        };
        conn.unwatch(&shared.epoll);
        let deadline = if kill {
            conn.kill();
            None
        } else {
            deadline.or(Some(now + EXIT_GRACE))
        };
        self.slots[slot] = Worker::Exiting {
            conn,
            deadline,
            why,
            jobs,
        };
    }

    /// Kills workers past a deadline (startup, exit grace, task timeout); returns the next
    /// deadline, retries of failed starts included.
    pub(super) fn check_deadlines(&mut self, shared: &Shared, now: Instant) -> Option<Instant> {
        self.kill_stopped(shared, now);
        let mut next: Option<Instant> = self.retire_idle(shared, now);
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if let Some(deadline) = self.stop_deadline(shared, now) {
            earliest(deadline);
        }
        let timeout = shared.config.task_timeout;
        for slot in 0..self.slots.len() {
            let (deadline, why) = match &self.slots[slot] {
                Worker::Dead { retry_at } => {
                    // A slot past its backoff is spawned at the top of a pass if it is
                    // wanted; one still backing off wakes the supervisor when it is due.
                    if *retry_at > now && self.wants_workers() {
                        earliest(*retry_at);
                    }
                    continue;
                }
                Worker::Spawning | Worker::Exiting { deadline: None, .. } => continue,
                Worker::Starting { conn, deadline } => (
                    *deadline,
                    Ending::start_failed(format!(
                        "worker {} did not send its handshake within {:?}; if it is stuck in \
                         `main`, {}",
                        conn.pid(),
                        shared.config.startup_timeout,
                        bootstrap::BOOTSTRAP_ADVICE
                    )),
                ),
                Worker::Initialising { conn, deadline } => (
                    *deadline,
                    Ending::StartFailed(Some(ProcessError::startup_because(
                        format!(
                            "worker {} did not finish its initializer within {:?}",
                            conn.pid(),
                            shared.config.startup_timeout
                        ),
                        StartupCause::InitializerTimeout,
                        None,
                    ))),
                ),
                Worker::Ready { jobs, .. } => {
                    match timeout.and_then(|t| jobs.timeout_deadline(t)) {
                        Some(deadline) => (deadline, Ending::Timeout),
                        None => continue,
                    }
                }
                // An exiting worker keeps its first reason, unless it was lost (it closed its
                // socket) and then lived on past its grace: that is a protocol violation.
                Worker::Exiting {
                    deadline: Some(deadline),
                    ..
                } => (
                    *deadline,
                    Ending::Violation("it closed its socket but did not exit".to_owned()),
                ),
            };
            if now < deadline {
                earliest(deadline);
                continue;
            }
            if let Worker::Exiting { why: first, .. } = &mut self.slots[slot] {
                if matches!(first, Ending::Lost) {
                    *first = why;
                }
                self.exit(slot, Ending::Terminated, true, shared, now);
            } else {
                self.exit(slot, why, true, shared, now);
            }
        }
        next
    }

    /// A worker's pidfd fired: read what it left, reap it, settle its jobs, free its slot.
    pub(super) fn reap(&mut self, slot: usize, buf: &mut Vec<u8>, shared: &Shared, now: Instant) {
        if self.slots[slot].conn().is_none() {
            return;
        }
        // Invariant 2: every result it published is delivered before its jobs are settled.
        if let Some(conn) = self.slots[slot].conn_mut() {
            match conn.drain() {
                Ok(()) => self.handle_messages(slot, shared, now),
                Err(e) => self.violation(slot, format!("its socket failed: {e}"), shared, now),
            }
        }
        self.take_ring(slot, buf, shared);
        let worker = std::mem::replace(&mut self.slots[slot], Worker::Dead { retry_at: now });
        match worker {
            Worker::Starting { mut conn, .. } | Worker::Initialising { mut conn, .. } => {
                let status = conn.reap(&shared.epoll);
                let error = startup_error(conn.pid(), None, status);
                self.start_failed(slot, error, shared, now);
            }
            Worker::Exiting {
                mut conn,
                why: Ending::StartFailed(message),
                ..
            } => {
                let status = conn.reap(&shared.epoll);
                let error = startup_error(conn.pid(), message, status);
                self.start_failed(slot, error, shared, now);
            }
            Worker::Ready { mut conn, jobs } => {
                let status = conn.reap(&shared.epoll);
                self.settle(&conn, jobs, Ending::Lost, status, shared, now);
            }
            Worker::Exiting {
                mut conn,
                why,
                jobs,
                ..
            } => {
                let status = conn.reap(&shared.epoll);
                self.settle(&conn, jobs, why, status, shared, now);
            }
            other @ (Worker::Dead { .. } | Worker::Spawning) => self.slots[slot] = other,
        }
    }

    /// Settles the jobs of a reaped worker (invariants 3 to 5 of the job lifecycle): the
    /// running one fails with what ended the worker; the others go back to the queue.
    fn settle(
        &mut self,
        conn: &Conn,
        mut jobs: Jobs,
        why: Ending,
        status: ExitStatus,
        shared: &Shared,
        now: Instant,
    ) {
        let terminating = self.phase == Phase::Terminating;
        let pid = conn.pid();
        // Results that overtook a result that never came: published, so delivered.
        for (id, outcome) in jobs.early.drain(..) {
            if let Some(at) = jobs.inflight.iter().position(|job| job.id == id) {
                let job = jobs.inflight.remove(at).expect("found");
                job.spec.sink.complete(outcome);
            }
        }
        let front = jobs.inflight.front().map(|job| job.id);
        let started = conn.ring().started();
        let running = match started {
            // It died between jobs: the front one never started.
            s if s == jobs.last_done => false,
            Some(id) if Some(id) == front => true,
            // The ring names a job this worker was never sent: a job scribbled over it.
            // Failing the front job is the choice that never runs a job twice.
            _ => front.is_some(),
        };
        let crashed = !terminating
            && match why {
                Ending::Terminated | Ending::Stopped(_) => false,
                Ending::Timeout | Ending::Violation(_) => true,
                Ending::Retired | Ending::Idle | Ending::Lost | Ending::StartFailed(_) => {
                    running || status != ExitStatus::Code(0)
                }
            };
        if crashed {
            self.counters.crashed += 1;
        } else if matches!(why, Ending::Idle) {
            self.counters.retired += 1;
        }
        if running {
            let job = jobs.inflight.pop_front().expect("a front job");
            let error = match why {
                _ if terminating => ProcessError::closed(),
                Ending::Terminated => ProcessError::closed(),
                Ending::Stopped(stopped) => ProcessError::stopped(stopped),
                Ending::Timeout => {
                    ProcessError::task_timeout(pid, shared.config.task_timeout.unwrap_or_default())
                }
                Ending::Violation(message) => ProcessError::protocol(pid, message),
                Ending::Retired | Ending::Idle | Ending::Lost | Ending::StartFailed(_) => {
                    ProcessError::crash(pid, status)
                }
            };
            job.spec.sink.complete(Err(error));
        }
        while let Some(job) = jobs.inflight.pop_back() {
            if terminating {
                job.spec.sink.complete(Err(ProcessError::closed()));
            } else if let Some(stopped) = job.spec.stopped(now) {
                // It never started, and its call stopped: it is never sent (see `stop`).
                job.spec.sink.complete(Err(ProcessError::stopped(stopped)));
            } else {
                job.spec.sink.requeue();
                self.queue.push_front(job);
            }
        }
    }
}

/// The error of a worker that failed to start: its own, else one from its exit status.
fn startup_error(pid: u32, error: Option<ProcessError>, status: ExitStatus) -> ProcessError {
    error.unwrap_or_else(|| {
        let message = match status {
            ExitStatus::Signal(s) => {
                format!("worker {pid} was killed by signal {s} during its startup")
            }
            ExitStatus::Code(c) => {
                format!("worker {pid} exited with code {c} during its startup")
            }
        };
        ProcessError::startup(message, None)
    })
}

/// Spawns the workers for `wanted` slots (outside the lock).
pub(super) fn spawn_all(wanted: &Wanted) -> Vec<std::io::Result<Spawned>> {
    wanted.iter().map(|_| conn::spawn()).collect()
}
