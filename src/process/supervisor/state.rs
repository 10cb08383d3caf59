//! The per-pool state behind the supervisor's lock, and the job lifecycle it enforces.
//!
//! The code that changes this state is split by concern: [`dispatch`](super::dispatch)
//! (the queue, the credit window, results), [`lifecycle`](super::lifecycle) (a worker from
//! spawn to reap, and what its death does to its jobs) and [`shutdown`](super::shutdown)
//! (close and terminate).
//!
//! # Job lifecycle
//!
//! ```text
//!                 dispatch                 worker marks it       result published
//!   submit ──▶ queued ─────────▶ sent ──────────────────▶ started ──────────────────▶ finished
//!                ▲                 │                          │
//!                │   worker died,  │                          │ worker died (crash, kill,
//!                └─── job not ─────┘                          │ timeout, protocol violation)
//!                     started                                 ▼
//!                                                           failed
//! ```
//!
//! - **queued**: in [`State::queue`]. `cancel` can still take it out.
//! - **sent**: in the `inflight` queue of exactly one ready or exiting worker ([`Jobs`]),
//!   in send order. The worker may not have read it yet.
//! - **started**: the worker stored the job's id in its ring's `started` word before running
//!   it (see `ring`). A worker runs its jobs one at a time, in order, and publishes each
//!   result before it reads the next job, so at most one sent job has started and not
//!   finished: the front of `inflight`.
//! - **finished**: its result (value or caught failure) was published, in the ring or as a
//!   Result frame, and delivered to its sink.
//! - **failed**: its worker died while running it; the failure names what ended the worker.
//! - **stopped**: the watch of its call stopped while it was queued (or back in the queue):
//!   it completes with the stop and is never sent (see `stop`).
//!
//! # Invariants
//!
//! 1. A job is in at most one place: the queue, or one worker's `inflight`; never both.
//! 2. **A published result is always delivered.** Results are taken from a worker's ring and
//!    socket whatever state the worker is in; before a dead worker's jobs are settled, its
//!    socket is read to the end and its ring emptied (`lifecycle::reap`).
//! 3. **A crash is blamed on the job that was running**: after (2), the front of `inflight`
//!    is the only job that can have started; it fails only when the ring's `started` word
//!    names it (or names nothing this worker was sent, when a job scribbled over the ring:
//!    then failing it is the choice that never runs a job twice).
//! 4. **A job that had not started is re-dispatched**: every other job in `inflight` goes
//!    back to the front of the queue, in order, and so does the front one when `started`
//!    names the last finished job (the worker died between jobs).
//! 5. **No job ever runs twice**: a job is re-queued only by (4), only when it had not
//!    started; a job sent with a batch whose `sendmsg` failed never left the parent and goes
//!    back to the queue without entering `inflight`. (There is no retry option: a job that
//!    was running when its worker died fails.)

use std::collections::VecDeque;
use std::time::Instant;

use super::JobSpec;
use super::conn::Conn;
use crate::ProcessError;
use crate::process::WorkerCounters;
use crate::process::task::Outcome;

/// A job in the queue or sent to a worker: its id (the tag of its Job and Result frames)
/// and what was submitted.
#[derive(Debug)]
pub(super) struct Job {
    pub(super) id: u64,
    pub(super) spec: JobSpec,
}

/// What the pool is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// `new`/`build` waits for the first workers.
    Starting,
    /// Accepting jobs.
    Running,
    /// No new jobs; the queue drains, then the workers are told to exit.
    Closing,
    /// Killing everything; jobs fail with "closed".
    Terminating,
    /// Every worker is reaped; the supervisor thread is gone or going.
    Stopped,
}

/// The jobs of a ready (or exiting) worker.
#[derive(Debug)]
pub(super) struct Jobs {
    /// Sent and not answered yet, in send order; the front one is running or next.
    pub(super) inflight: VecDeque<Job>,
    /// Results that arrived before the result of an earlier job (a large result on the
    /// socket can be overtaken by a later small one in the ring), by job id.
    pub(super) early: Vec<(u64, Outcome)>,
    /// When the front job became the front, as far as the parent knows (its task timeout
    /// runs from here); with nothing in flight, since when the worker is idle (its idle
    /// timeout runs from here).
    pub(super) front_since: Instant,
    /// Jobs this worker may still be sent (`max_tasks_per_child`).
    pub(super) jobs_left: u64,
    /// The id of the last job this worker finished.
    pub(super) last_done: Option<u64>,
}

impl Jobs {
    pub(super) fn new(jobs_left: u64, now: Instant) -> Self {
        Self {
            inflight: VecDeque::new(),
            early: Vec::new(),
            front_since: now,
            jobs_left,
            last_done: None,
        }
    }
}

/// Why a worker is exiting; decides how its running job, if any, fails.
#[derive(Debug)]
pub(super) enum Ending {
    /// Told to exit (its socket was shut down) because the pool is closing.
    Retired,
    /// Told to exit (its socket was shut down) because it was idle for the idle timeout and
    /// the pool had more workers than its minimum (see `sizing`).
    Idle,
    /// It closed its socket, or a send to it failed: it is dying on its own, and its exit
    /// status says how.
    Lost,
    /// Killed: its front job ran past the task timeout.
    Timeout,
    /// Killed: it broke the protocol.
    Violation(String),
    /// Killed by `terminate` or by a failed build.
    Terminated,
    /// Killed: its front job belongs to a call whose watch stopped, and the pool kills on
    /// stop (see `stop`).
    Stopped(crate::Stopped),
    /// It failed to start; the error says why (`None`: its exit status does).
    StartFailed(Option<ProcessError>),
}

impl Ending {
    /// A start that failed for the reason `message` gives.
    pub(super) fn start_failed(message: String) -> Self {
        Ending::StartFailed(Some(ProcessError::startup(message, None)))
    }
}

/// One slot's worker, through its lifecycle. Each variant carries exactly what that stage
/// needs; see `lifecycle` for the transitions.
#[derive(Debug)]
pub(super) enum Worker {
    /// No process. A new one may be spawned from `retry_at` on (backoff after failures).
    Dead { retry_at: Instant },
    /// The supervisor thread is spawning one, outside the lock.
    Spawning,
    /// Spawned; its Hello is due by `deadline`.
    Starting { conn: Conn, deadline: Instant },
    /// Sent Init; its Ready is due by `deadline`.
    Initialising { conn: Conn, deadline: Instant },
    /// Takes jobs.
    Ready { conn: Conn, jobs: Jobs },
    /// On its way out: reaped when its pidfd fires. `deadline`: when to kill it if it has
    /// not exited (`None`: killed already).
    Exiting {
        conn: Conn,
        deadline: Option<Instant>,
        why: Ending,
        jobs: Jobs,
    },
}

impl Worker {
    /// The connection of a live worker.
    pub(super) fn conn(&self) -> Option<&Conn> {
        match self {
            Worker::Starting { conn, .. }
            | Worker::Initialising { conn, .. }
            | Worker::Ready { conn, .. }
            | Worker::Exiting { conn, .. } => Some(conn),
            Worker::Dead { .. } | Worker::Spawning => None,
        }
    }

    pub(super) fn conn_mut(&mut self) -> Option<&mut Conn> {
        match self {
            Worker::Starting { conn, .. }
            | Worker::Initialising { conn, .. }
            | Worker::Ready { conn, .. }
            | Worker::Exiting { conn, .. } => Some(conn),
            Worker::Dead { .. } | Worker::Spawning => None,
        }
    }

    /// Whether a process exists (or is being made) for this slot.
    pub(super) fn is_live(&self) -> bool {
        !matches!(self, Worker::Dead { .. })
    }
}

/// What the supervisor and the submitting threads change under `Shared::state`.
#[derive(Debug)]
pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) queue: VecDeque<Job>,
    pub(super) slots: Vec<Worker>,
    pub(super) next_id: u64,
    /// Bumped for every spawned worker: the generation of its epoll tokens.
    pub(super) next_generation: u32,
    /// Moving average of job durations, in nanoseconds (for the credit).
    pub(super) job_nanos: f64,
    /// Failures to start a worker since one last became ready.
    pub(super) start_failures: u32,
    /// While starting: the error that fails the build. Running: set after
    /// `MAX_START_ATTEMPTS` failures to start per slot with no worker ready; `submit` returns it, and
    /// it clears when a worker becomes ready again.
    pub(super) failure: Option<ProcessError>,
    /// Round-robin start for picking among equally loaded workers.
    pub(super) next_pick: usize,
    /// What happened to the pool's workers so far.
    pub(super) counters: WorkerCounters,
}

impl State {
    /// A pool of `processes` empty slots (its maximum), starting; running at once when it
    /// starts with no worker (`min_processes == 0`).
    pub(super) fn new(processes: usize, min_processes: usize, now: Instant) -> Self {
        State {
            phase: if min_processes == 0 {
                Phase::Running
            } else {
                Phase::Starting
            },
            queue: VecDeque::new(),
            slots: (0..processes)
                .map(|_| Worker::Dead { retry_at: now })
                .collect(),
            next_id: 0,
            next_generation: 0,
            job_nanos: super::dispatch::INITIAL_JOB_NANOS,
            start_failures: 0,
            failure: None,
            next_pick: 0,
            counters: WorkerCounters::default(),
        }
    }

    /// The workers that exist or are being made: every slot not `Dead`. An exiting worker
    /// counts until it is reaped, so the processes of a pool never outnumber its slots.
    pub(super) fn live(&self) -> usize {
        self.slots.iter().filter(|w| w.is_live()).count()
    }

    /// Whether any job is queued or unanswered.
    pub(super) fn has_work(&self) -> bool {
        self.queue.iter().any(|job| !job.spec.sink.is_dead())
            || self.slots.iter().any(|w| match w {
                Worker::Ready { conn, jobs } => !jobs.inflight.is_empty() || conn.has_outbox(),
                Worker::Exiting { jobs, .. } => !jobs.inflight.is_empty(),
                _ => false,
            })
    }

    /// Fails every queued job with `error` (or "closed").
    pub(super) fn fail_queue(&mut self, error: Option<&ProcessError>) {
        for job in self.queue.drain(..) {
            let e = error.map_or_else(ProcessError::closed, ProcessError::duplicate);
            job.spec.sink.complete(Err(e));
        }
    }

    /// The pids of the live workers.
    pub(super) fn pids(&self) -> Vec<u32> {
        self.slots
            .iter()
            .filter_map(|w| w.conn().map(Conn::pid))
            .collect()
    }
}
