//! The per-pool state behind the supervisor's lock: the job queue, the worker slots,
//! dispatch with a per-worker credit window, results, crash and timeout detection, and the
//! steps of shutdown (see the [parent module](super) for the threads and for shutdown).
//!
//! # Dispatch and the credit window
//!
//! Jobs wait in one FIFO queue. A ready worker may hold up to `credit` jobs that it has not
//! answered yet (the running one and the ones queued in its socket), so it starts the next
//! job without waiting for the parent. The credit adapts to the jobs: it is the number of
//! jobs that make about [`CREDIT_TARGET`] of work, by a moving average of job durations,
//! between [`MIN_CREDIT`] and [`MAX_CREDIT`]. Short jobs get a deep pipeline; long jobs get
//! 1, so no job waits behind a long one while another worker could run it. A job goes to
//! the ready worker with the fewest unanswered jobs.
//!
//! # Crash detection
//!
//! A worker's jobs are answered in the order they were sent, so the front of its `inflight`
//! queue is the job it is running. When its pidfd turns readable (it exited), the supervisor
//! reads what is left in its socket (results written before it died), reaps it, and then:
//!
//! - the front job, if any, fails: a task timeout when the supervisor killed it for running
//!   too long, else a crash with the signal or exit code and the pid;
//! - the jobs behind it never started: they go back to the front of the queue, in order;
//! - the slot gets a new worker.
//!
//! EOF on a socket alone is not a death: the pidfd says when and how the worker ended (a
//! worker that closes its socket but lives on is killed after [`EXIT_GRACE`]).
//!
//! # Timeouts
//!
//! With a `task_timeout`, the front job of a worker is timed from when it became the front
//! (sent to an idle worker, or the previous result arrived). Past the timeout the supervisor
//! sends `SIGKILL` through the pidfd and marks why, and the death is handled as above. A
//! worker that does not finish its handshake within the startup timeout is killed too, and
//! counts as a failure to start.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::process::Signal;

use super::{JobSpec, Shared, Source, token};
use crate::ProcessError;
use crate::error::{ExitStatus, SerdeStage};
use crate::process::bootstrap;
use crate::process::ring::Ring;
use crate::process::task::{Outcome, Reply};
use crate::process::wire::{self, Kind, Outbox, SharedFd};
use crate::shm::segment::{Segment, SegmentId};

/// About how much work, in time, a worker may hold. The credit is
/// `ceil(CREDIT_TARGET / average job duration)`: 500 µs lets one-item jobs of a few µs fill
/// the whole window (a wake-up of the supervisor costs 20–60 µs on the 2-core VM this was
/// tuned on, so a shallower pipeline leaves workers waiting), gives jobs of a few hundred µs
/// a second slot so the round trip (50–85 µs here) overlaps with work, and gives jobs of
/// 500 µs or more a credit of 1: a job never waits behind a long one while another worker
/// idles.
const CREDIT_TARGET: Duration = Duration::from_micros(500);

/// The smallest credit: the job a worker runs. A fresh pool starts here (its estimate of a
/// job's duration starts at `CREDIT_TARGET`) and deepens the window as short jobs come back.
const MIN_CREDIT: usize = 1;

/// The largest credit. 64 one-item jobs of the `map` benchmark keep a worker busy through a
/// supervisor wake-up; more only adds jobs to requeue when a worker dies.
const MAX_CREDIT: usize = 64;

/// How long a worker may take to exit after its socket was shut down (or after it closed
/// its end), before it is killed. Idle workers exit within a millisecond; a second leaves
/// room for `atexit` work on a loaded machine.
pub(super) const EXIT_GRACE: Duration = Duration::from_secs(1);

/// The most jobs sent in one `sendmsg`: two iovecs each, well under `IOV_MAX` (1024).
const MAX_BATCH: usize = 256;

/// About how many jobs the moving average of job durations spans: each finished job moves
/// it `1 / JOB_AVERAGE_SPAN` of the way to its own duration. Not measured: short enough
/// that the credit follows a change in job size within a few dozen jobs, long enough that
/// one odd job does not swing it.
const JOB_AVERAGE_SPAN: f64 = 8.0;

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

/// How far a worker got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Spawned; waiting for its Hello.
    Hello,
    /// Sent Init; waiting for Ready.
    Init,
    /// Takes jobs.
    Ready,
    /// Its socket was shut down; waiting for it to exit.
    Exiting,
}

/// Why the supervisor killed a worker (decides how its running job fails).
#[derive(Debug)]
pub(super) enum Killed {
    /// Its job ran past the task timeout.
    Timeout,
    /// It did not start properly; the message says why.
    Startup(String),
    /// It broke the protocol, or closed its socket and lived on.
    Broken,
    /// `terminate`, or the pool's build failed.
    Terminate,
}

/// A worker process, as the supervisor sees it.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) pid: u32,
    pub(super) child: Child,
    pub(super) pidfd: OwnedFd,
    pub(super) socket: Arc<OwnedFd>,
    /// Where the worker publishes small results.
    pub(super) ring: Arc<Ring>,
    pub(super) stage: Stage,
    /// Startup deadline, or the deadline to exit after EOF or shutdown.
    pub(super) deadline: Option<Instant>,
    /// Sent and not yet answered, in send order; the front one is running.
    pub(super) inflight: VecDeque<Job>,
    /// Results that arrived before the result of an earlier job (a large result on the
    /// socket can be overtaken by a later small one in the ring), by job id.
    pub(super) early: Vec<(u64, Outcome)>,
    /// When the front job started, as far as the parent knows.
    pub(super) front_since: Instant,
    pub(super) outbox: Outbox,
    /// EPOLLOUT is registered because the outbox holds bytes.
    pub(super) out_armed: bool,
    /// Jobs this worker may still be sent (`max_tasks_per_child`).
    pub(super) jobs_left: u64,
    /// Shared-memory segments whose descriptor this worker was sent (it keeps them until a
    /// `Release`).
    pub(super) sent: HashSet<SegmentId>,
    pub(super) killed: Option<Killed>,
    /// What a worker that failed to start said about it.
    pub(super) startup_message: Option<String>,
    pub(super) eof: bool,
}

/// One of the pool's places for a worker; it outlives the workers that fill it.
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) worker: Option<Worker>,
    /// Bumped for every new worker; part of the epoll tokens, so events of a dead worker
    /// are not taken for its replacement's.
    pub(super) generation: u32,
    pub(super) start_failures: u32,
    /// The supervisor is spawning a worker for this slot.
    pub(super) spawning: bool,
    /// Gave up after `MAX_START_ATTEMPTS` failures.
    pub(super) given_up: bool,
}

/// What the supervisor and the submitting threads change under `Shared::state`.
#[derive(Debug)]
pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) queue: VecDeque<Job>,
    pub(super) slots: Vec<Slot>,
    pub(super) next_id: u64,
    /// Moving average of job durations, in nanoseconds (for the credit).
    job_nanos: f64,
    /// A startup error: fails the build while Starting; afterwards the pool is broken.
    pub(super) failure: Option<ProcessError>,
    /// Round-robin start for picking among equally loaded workers.
    next_pick: usize,
}

impl State {
    /// A pool of `processes` empty slots, starting. The estimate of a job's duration starts
    /// at `CREDIT_TARGET`, so the credit starts at `MIN_CREDIT`.
    pub(super) fn new(processes: usize) -> Self {
        State {
            phase: Phase::Starting,
            queue: VecDeque::new(),
            slots: (0..processes).map(|_| Slot::default()).collect(),
            next_id: 0,
            job_nanos: CREDIT_TARGET.as_nanos() as f64,
            failure: None,
            next_pick: 0,
        }
    }

    pub(super) fn worker(&mut self, slot: usize) -> &mut Worker {
        self.slots[slot].worker.as_mut().expect("a live worker")
    }

    /// How many unanswered jobs a worker may hold.
    fn credit(&self) -> usize {
        ((CREDIT_TARGET.as_nanos() as f64 / self.job_nanos).ceil() as usize)
            .clamp(MIN_CREDIT, MAX_CREDIT)
    }

    /// The open worker with the fewest unanswered jobs, if one has credit left. `batches`
    /// holds the jobs picked for each worker in this dispatch round, not sent yet.
    fn pick(&mut self, credit: usize, open: &[bool], batches: &[Vec<Job>]) -> Option<usize> {
        let n = self.slots.len();
        let mut best: Option<(usize, usize)> = None;
        for i in 0..n {
            let slot = (self.next_pick + i) % n;
            let Some(w) = &self.slots[slot].worker else {
                continue;
            };
            let picked = batches[slot].len();
            let load = w.inflight.len() + picked;
            if open[slot]
                && load < credit
                && w.jobs_left > picked as u64
                && best.is_none_or(|(_, b)| load < b)
            {
                best = Some((slot, load));
            }
        }
        let (slot, _) = best?;
        self.next_pick = (slot + 1) % n;
        Some(slot)
    }

    /// Sends queued jobs to workers with credit. Returns whether a job started on an idle
    /// worker under a task timeout (the supervisor must then recompute its timeout).
    ///
    /// A worker is topped up only once it is down to half its credit, so the jobs go out in
    /// batches of about half the credit, one `sendmsg` per batch, while the worker still has
    /// the other half to work on.
    pub(super) fn dispatch(&mut self, shared: &Shared, now: Instant) -> bool {
        if !matches!(self.phase, Phase::Running | Phase::Closing) {
            return false;
        }
        let credit = self.credit();
        let n = self.slots.len();
        let open: Vec<bool> = self
            .slots
            .iter()
            .map(|s| {
                s.worker.as_ref().is_some_and(|w| {
                    w.stage == Stage::Ready
                        && !w.eof
                        && w.killed.is_none()
                        && w.inflight.len() <= credit / 2
                })
            })
            .collect();
        let mut batches: Vec<Vec<Job>> = (0..n).map(|_| Vec::new()).collect();
        let mut batch_fds = vec![0usize; n];
        let mut timer_started = false;
        while let Some(job) = self.queue.front() {
            if job.spec.sink.is_dead() {
                self.queue.pop_front();
                continue;
            }
            let Some(slot) = self.pick(credit, &open, &batches) else {
                break;
            };
            let job = self.queue.pop_front().expect("front exists");
            if !job.spec.sink.start() {
                continue;
            }
            if batches[slot].len() == MAX_BATCH
                || batch_fds[slot] + job.spec.segments.len() > wire::MAX_FDS
            {
                let full = std::mem::take(&mut batches[slot]);
                batch_fds[slot] = 0;
                timer_started |= self.send_batch(slot, full, shared, now);
            }
            batch_fds[slot] += job.spec.segments.len();
            batches[slot].push(job);
        }
        for (slot, batch) in batches.into_iter().enumerate() {
            if !batch.is_empty() {
                timer_started |= self.send_batch(slot, batch, shared, now);
            }
        }
        timer_started
    }

    /// Sends `jobs` to a worker in one `sendmsg` (queueing what the socket does not take) and
    /// records them as unanswered. Returns whether a timed job started on an idle worker.
    fn send_batch(&mut self, slot: usize, jobs: Vec<Job>, shared: &Shared, now: Instant) -> bool {
        let token = token(slot, self.slots[slot].generation, Source::Socket);
        let w = self.worker(slot);
        // The descriptors of the segments this worker has not had yet travel with the batch
        // (attached to its first byte; the worker's reader hands each frame its own).
        let mut fds: Vec<SharedFd> = Vec::new();
        let prefixes: Vec<[u8; 32]> = jobs
            .iter()
            .map(|job| {
                let before = fds.len();
                for seg in &job.spec.segments {
                    if w.sent.insert(seg.id()) {
                        fds.push(Arc::clone(seg.fd()));
                        seg.add_holder(shared.this.clone());
                    }
                }
                let payload = &job.spec.payload;
                let mut prefix = [0u8; 32];
                let header =
                    wire::header(Kind::Job, job.id, 16 + payload.len(), fds.len() - before);
                prefix[..16].copy_from_slice(&header);
                prefix[16..24].copy_from_slice(&job.spec.call.trampoline.to_le_bytes());
                prefix[24..].copy_from_slice(&job.spec.call.function.to_le_bytes());
                prefix
            })
            .collect();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * jobs.len());
        for (prefix, job) in prefixes.iter().zip(&jobs) {
            parts.push(prefix);
            parts.push(&job.spec.payload);
        }
        match w.outbox.send(w.socket.as_fd(), &parts, &fds) {
            Ok(pending) => {
                if pending {
                    w.arm_out(shared, token);
                }
                let was_idle = w.inflight.is_empty();
                w.jobs_left -= jobs.len() as u64;
                for job in &jobs {
                    job.spec.sink.sent_to(slot);
                }
                w.inflight.extend(jobs);
                if was_idle {
                    w.front_since = now;
                }
                was_idle && shared.config.task_timeout.is_some()
            }
            Err(_) => {
                // The socket is broken: the worker is dying. Its death is handled when its
                // pidfd fires; these jobs did not reach it.
                for job in jobs.into_iter().rev() {
                    job.spec.sink.requeue();
                    self.queue.push_front(job);
                }
                self.kill(slot, Killed::Broken);
                false
            }
        }
    }

    pub(super) fn kill(&mut self, slot: usize, why: Killed) {
        if let Some(w) = self.slots[slot].worker.as_mut() {
            if w.killed.is_none() {
                w.killed = Some(why);
            }
            let _ = rustix::process::pidfd_send_signal(&w.pidfd, Signal::KILL);
        }
    }

    /// Whether any job is queued or unanswered.
    fn has_work(&self) -> bool {
        self.queue.iter().any(|job| !job.spec.sink.is_dead())
            || self
                .slots
                .iter()
                .filter_map(|s| s.worker.as_ref())
                .any(|w| !w.inflight.is_empty() || !w.outbox.is_empty())
    }

    /// Fails every queued job with `error` (or "closed").
    pub(super) fn fail_queue(&mut self, error: Option<&ProcessError>) {
        for job in self.queue.drain(..) {
            let e = error.map_or_else(ProcessError::closed, ProcessError::duplicate);
            job.spec.sink.complete(Err(e));
        }
    }

    /// Handles one frame from a worker.
    pub(super) fn on_frame(
        &mut self,
        slot: usize,
        frame: wire::Frame<'_>,
        shared: &Shared,
        now: Instant,
    ) {
        let stage = self.worker(slot).stage;
        match (stage, frame.kind) {
            (Stage::Hello, Kind::Hello) => {
                let hello = postcard::from_bytes::<wire::Hello>(frame.body);
                match hello {
                    Ok(hello) if hello.fingerprint == shared.fingerprint => {
                        let init = wire::Init {
                            initializer: shared
                                .config
                                .initializer
                                .map(|f| bootstrap::offset_of(f as usize)),
                            max_tasks: shared.config.max_tasks_per_child.unwrap_or(0),
                        };
                        let body = postcard::to_allocvec(&init).expect("Init serialises");
                        let header = wire::header(Kind::Init, 0, body.len(), 1);
                        let generation = self.slots[slot].generation;
                        let w = self.worker(slot);
                        let ring_fd = Arc::clone(w.ring.fd());
                        let sent = w
                            .outbox
                            .send(w.socket.as_fd(), &[&header, &body], &[ring_fd]);
                        match sent {
                            Ok(pending) => {
                                w.stage = Stage::Init;
                                if pending {
                                    w.arm_out(shared, token(slot, generation, Source::Socket));
                                }
                            }
                            Err(e) => self.kill(slot, Killed::Startup(e.to_string())),
                        }
                    }
                    Ok(hello) => self.kill(
                        slot,
                        Killed::Startup(format!(
                            "worker {} runs a different executable image than the parent \
                             ({:?} against {:?}); was the executable replaced while running?",
                            hello.pid, hello.fingerprint, shared.fingerprint
                        )),
                    ),
                    Err(e) => self.kill(slot, Killed::Startup(format!("bad handshake: {e}"))),
                }
            }
            (Stage::Hello, Kind::Missed) => {
                self.kill(slot, Killed::Startup(bootstrap::BOOTSTRAP_ADVICE.into()));
            }
            (Stage::Init, Kind::Ready) => {
                let w = self.worker(slot);
                w.stage = Stage::Ready;
                w.deadline = None;
                self.slots[slot].start_failures = 0;
                if self.phase == Phase::Starting
                    && self
                        .slots
                        .iter()
                        .all(|s| s.worker.as_ref().is_some_and(|w| w.stage == Stage::Ready))
                {
                    self.phase = Phase::Running;
                    shared.started.notify_all();
                }
            }
            (Stage::Init, Kind::InitFailed) => {
                let message = String::from_utf8_lossy(frame.body);
                self.worker(slot).startup_message =
                    Some(format!("the initializer panicked: {message}"));
            }
            (Stage::Ready | Stage::Exiting, Kind::Result) => {
                // Segments the result names: map them (once per process) before anyone
                // decodes the result.
                let mut segments = Vec::with_capacity(frame.fds.len());
                for fd in frame.fds {
                    match Segment::adopt(fd) {
                        Ok(seg) => segments.push(seg),
                        Err(e) => crate::shm::segment::set_decode_error(format!(
                            "could not map a shared-memory segment: {e}"
                        )),
                    }
                }
                self.on_result(slot, frame.tag, frame.body, segments, now);
            }
            (Stage::Ready | Stage::Exiting, Kind::Doorbell) => {}
            _ => self.kill(slot, Killed::Broken),
        }
    }

    /// A job's result, from the socket or the ring. Results complete their jobs in the
    /// order the jobs were sent; one that overtook an earlier job's result waits in `early`.
    fn on_result(
        &mut self,
        slot: usize,
        tag: u64,
        body: &[u8],
        segments: Vec<Arc<Segment>>,
        now: Instant,
    ) {
        let w = self.worker(slot);
        let pid = w.pid;
        if body.is_empty() || !w.inflight.iter().any(|job| job.id == tag) {
            self.kill(slot, Killed::Broken);
            return;
        }
        let outcome = decode_outcome(pid, body, segments);
        if w.inflight.front().map(|job| job.id) != Some(tag) {
            w.early.push((tag, outcome));
            return;
        }
        self.complete_front(slot, outcome, now);
        loop {
            let w = self.worker(slot);
            let Some(front) = w.inflight.front().map(|job| job.id) else {
                break;
            };
            let Some(at) = w.early.iter().position(|(id, _)| *id == front) else {
                break;
            };
            let (_, outcome) = w.early.swap_remove(at);
            self.complete_front(slot, outcome, now);
        }
    }

    /// Completes the job a worker was running.
    fn complete_front(&mut self, slot: usize, outcome: Outcome, now: Instant) {
        let w = self.worker(slot);
        let job = w.inflight.pop_front().expect("a running job");
        let elapsed = now.saturating_duration_since(w.front_since);
        w.front_since = now;
        job.spec.sink.complete(outcome);
        self.job_nanos += (elapsed.as_nanos() as f64 - self.job_nanos) / JOB_AVERAGE_SPAN;
        self.job_nanos = self.job_nanos.max(1.0);
    }

    /// Takes the results a worker published in its ring.
    pub(super) fn take_ring(&mut self, slot: usize, buf: &mut Vec<u8>, now: Instant) {
        let Some(w) = self.slots[slot].worker.as_ref() else {
            return;
        };
        if !matches!(w.stage, Stage::Ready | Stage::Exiting) {
            return;
        }
        let mut records = Vec::new();
        match w
            .ring
            .take(buf, |tag, body| records.push((tag, body.to_vec())))
        {
            Ok(_) => {
                for (tag, body) in records {
                    if self.slots[slot]
                        .worker
                        .as_ref()
                        .is_none_or(|w| w.killed.is_some())
                    {
                        break;
                    }
                    self.on_result(slot, tag, &body, Vec::new(), now);
                }
            }
            Err(_) => self.kill(slot, Killed::Broken),
        }
    }

    /// Tells the workers that have segment `id` to let go of it.
    pub(super) fn release(&mut self, id: SegmentId, shared: &Shared) {
        let body = postcard::to_allocvec(&id).expect("a SegmentId serialises");
        let header = wire::header(Kind::Release, 0, body.len(), 0);
        for slot in 0..self.slots.len() {
            let token = token(slot, self.slots[slot].generation, Source::Socket);
            let Some(w) = self.slots[slot].worker.as_mut() else {
                continue;
            };
            if !w.sent.remove(&id) || w.eof || w.killed.is_some() {
                continue;
            }
            match w.outbox.send(w.socket.as_fd(), &[&header, &body], &[]) {
                Ok(true) => w.arm_out(shared, token),
                Ok(false) => {}
                Err(_) => self.kill(slot, Killed::Broken),
            }
        }
    }

    /// A worker exited: reap it, settle its jobs, free its slot.
    pub(super) fn on_exit(&mut self, slot: usize, shared: &Shared) {
        let Some(mut w) = self.slots[slot].worker.take() else {
            return;
        };
        let _ = epoll::delete(&shared.epoll, &*w.socket);
        let _ = epoll::delete(&shared.epoll, &w.pidfd);
        let status = match w.child.wait() {
            Ok(s) => match (s.signal(), s.code()) {
                (Some(signal), _) => ExitStatus::Signal(signal),
                (None, Some(code)) => ExitStatus::Code(code),
                (None, None) => ExitStatus::Code(-1),
            },
            Err(_) => ExitStatus::Code(-1),
        };
        let pid = w.pid;
        if matches!(w.stage, Stage::Hello | Stage::Init) {
            let message = match (w.killed.take(), w.startup_message.take()) {
                (_, Some(m)) | (Some(Killed::Startup(m)), _) => m,
                _ => match status {
                    ExitStatus::Signal(s) => {
                        format!("worker {pid} was killed by signal {s} during its startup")
                    }
                    ExitStatus::Code(c) => {
                        format!("worker {pid} exited with code {c} during its startup")
                    }
                },
            };
            self.start_failed(slot, ProcessError::startup(message, None), shared);
            return;
        }
        let terminating = self.phase == Phase::Terminating;
        if let Some(job) = w.inflight.pop_front() {
            let error = match (&w.killed, terminating) {
                (_, true) | (Some(Killed::Terminate), _) => ProcessError::closed(),
                (Some(Killed::Timeout), _) => {
                    ProcessError::task_timeout(pid, shared.config.task_timeout.unwrap_or_default())
                }
                _ => ProcessError::crash(pid, status),
            };
            job.spec.sink.complete(Err(error));
        }
        // The jobs behind the running one never started.
        while let Some(job) = w.inflight.pop_back() {
            if terminating {
                job.spec.sink.complete(Err(ProcessError::closed()));
            } else {
                job.spec.sink.requeue();
                self.queue.push_front(job);
            }
        }
    }

    /// The socket of a worker reached EOF.
    pub(super) fn on_eof(&mut self, slot: usize, shared: &Shared, now: Instant) {
        let w = self.worker(slot);
        if w.eof {
            return;
        }
        w.eof = true;
        let _ = epoll::delete(&shared.epoll, &*w.socket);
        w.deadline = Some(now + EXIT_GRACE);
    }

    /// Kills workers past a deadline; returns the next deadline.
    pub(super) fn check_deadlines(&mut self, shared: &Shared, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        for slot in 0..self.slots.len() {
            let Some(w) = self.slots[slot].worker.as_mut() else {
                continue;
            };
            if w.killed.is_some() {
                continue;
            }
            if let Some(deadline) = w.deadline {
                if now >= deadline {
                    let why = match w.stage {
                        Stage::Hello if !w.eof => Killed::Startup(format!(
                            "worker {} did not send its handshake within {:?}; if it is stuck \
                             in `main`, {}",
                            w.pid,
                            shared.config.startup_timeout,
                            bootstrap::BOOTSTRAP_ADVICE
                        )),
                        Stage::Init if !w.eof => Killed::Startup(format!(
                            "worker {} did not finish its initializer within {:?}",
                            w.pid, shared.config.startup_timeout
                        )),
                        _ => Killed::Broken,
                    };
                    self.kill(slot, why);
                    continue;
                }
                earliest(deadline);
            }
            let w = self.worker(slot);
            if let (Some(timeout), Some(_)) = (shared.config.task_timeout, w.inflight.front()) {
                if w.stage == Stage::Ready || w.stage == Stage::Exiting {
                    let deadline = w.front_since + timeout;
                    if now >= deadline {
                        self.kill(slot, Killed::Timeout);
                    } else {
                        earliest(deadline);
                    }
                }
            }
        }
        next
    }

    /// Moves Closing and Terminating pools along; returns whether the pool stopped.
    pub(super) fn advance(&mut self, shared: &Shared, now: Instant) -> bool {
        match self.phase {
            Phase::Closing if !self.has_work() => {
                for slot in 0..self.slots.len() {
                    let Some(w) = self.slots[slot].worker.as_mut() else {
                        continue;
                    };
                    match w.stage {
                        Stage::Ready => {
                            let _ = rustix::net::shutdown(&*w.socket, rustix::net::Shutdown::Write);
                            w.stage = Stage::Exiting;
                            w.deadline = Some(now + EXIT_GRACE);
                        }
                        Stage::Hello | Stage::Init => self.kill(slot, Killed::Terminate),
                        Stage::Exiting => {}
                    }
                }
            }
            Phase::Terminating => {
                self.fail_queue(None);
                for slot in 0..self.slots.len() {
                    if self.slots[slot]
                        .worker
                        .as_ref()
                        .is_some_and(|w| w.killed.is_none())
                    {
                        self.kill(slot, Killed::Terminate);
                    }
                }
            }
            _ => {}
        }
        let empty = self.slots.iter().all(|s| s.worker.is_none() && !s.spawning);
        let done = match self.phase {
            Phase::Closing => empty && !self.has_work(),
            Phase::Terminating => empty,
            _ => false,
        };
        if done {
            self.phase = Phase::Stopped;
            shared.started.notify_all();
        }
        done
    }
}

impl Worker {
    /// Registers interest in the socket turning writable (the outbox holds bytes).
    fn arm_out(&mut self, shared: &Shared, token: u64) {
        if !self.out_armed && !self.eof {
            self.out_armed = true;
            let _ = epoll::modify(
                &shared.epoll,
                &*self.socket,
                EventData::new_u64(token),
                EventFlags::IN | EventFlags::OUT,
            );
        }
    }

    /// Sends queued bytes now that the socket is writable.
    pub(super) fn flush(&mut self, shared: &Shared, token: u64) -> std::io::Result<()> {
        if !self.outbox.flush(self.socket.as_fd())? && self.out_armed && !self.eof {
            self.out_armed = false;
            epoll::modify(
                &shared.epoll,
                &*self.socket,
                EventData::new_u64(token),
                EventFlags::IN,
            )?;
        }
        Ok(())
    }
}

/// Decodes a Result body.
fn decode_outcome(pid: u32, body: &[u8], segments: Vec<Arc<Segment>>) -> Outcome {
    if body[0] == wire::STATUS_OK {
        return Ok(Reply {
            bytes: body[1..].to_vec(),
            _segments: segments,
        });
    }
    Err(match postcard::from_bytes::<wire::Failure>(&body[1..]) {
        Ok(wire::Failure::Panic(message)) => ProcessError::panic(message, pid),
        Ok(wire::Failure::DecodeArgument { type_name, message }) => {
            ProcessError::serialization(type_name, SerdeStage::DecodeArgument, message, Some(pid))
        }
        Ok(wire::Failure::EncodeResult { type_name, message }) => {
            ProcessError::serialization(type_name, SerdeStage::EncodeResult, message, Some(pid))
        }
        Err(e) => ProcessError::io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("worker {pid} sent an unreadable failure: {e}"),
        )),
    })
}
