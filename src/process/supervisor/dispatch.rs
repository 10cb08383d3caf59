//! Dispatch with a per-worker credit window, and results.
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
//! # Results
//!
//! A worker's results come through its ring or as Result frames on its socket, and complete
//! their jobs in the order the jobs were sent (one that overtook an earlier job's result
//! waits in `early`). A result for a job the worker was not sent is a protocol violation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use super::state::{Ending, Job, Jobs, Phase, State, Worker};
use crate::ProcessError;
use crate::process::SerdeStage;
use crate::process::task::{Outcome, Reply};
use crate::process::wire::{self, Failure, ResultFrame, SharedFd};
use crate::shm::segment::{Segment, SegmentId};

/// About how much work, in time, a worker may hold. The credit is
/// `ceil(CREDIT_TARGET / average job duration)`: 500 µs lets one-item jobs of a few µs fill
/// the whole window (a wake-up of the supervisor costs 20–60 µs on the 2-core VM this was
/// tuned on, so a shallower pipeline leaves workers waiting), gives jobs of a few hundred µs
/// a second slot so the round trip (50–85 µs here) overlaps with work, and gives jobs of
/// 500 µs or more a credit of 1: a job never waits behind a long one while another worker
/// idles.
const CREDIT_TARGET: Duration = Duration::from_micros(500);

/// The estimate of a job's duration a fresh pool starts from: `CREDIT_TARGET`, so the
/// credit starts at `MIN_CREDIT` and deepens as short jobs come back.
pub(super) const INITIAL_JOB_NANOS: f64 = CREDIT_TARGET.as_nanos() as f64;

/// The smallest credit: the job a worker runs.
const MIN_CREDIT: usize = 1;

/// The largest credit. 64 one-item jobs of the `map` benchmark keep a worker busy through a
/// supervisor wake-up; more only adds jobs to requeue when a worker dies.
const MAX_CREDIT: usize = 64;

/// The most jobs sent in one `sendmsg`: two iovecs each, well under `IOV_MAX` (1024).
const MAX_BATCH: usize = 256;

/// About how many jobs the moving average of job durations spans: each finished job moves
/// it `1 / JOB_AVERAGE_SPAN` of the way to its own duration. Not measured: short enough
/// that the credit follows a change in job size within a few dozen jobs, long enough that
/// one odd job does not swing it.
const JOB_AVERAGE_SPAN: f64 = 8.0;

impl State {
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
            let Worker::Ready { jobs, .. } = &self.slots[slot] else {
                continue;
            };
            let picked = batches[slot].len();
            let load = jobs.inflight.len() + picked;
            if open[slot]
                && load < credit
                && jobs.jobs_left > picked as u64
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
    /// worker under a task timeout, or under a watch with a deadline or a token in a pool
    /// that kills on stop (the supervisor must then recompute its timeout).
    ///
    /// A worker is topped up only once it is down to half its credit, so the jobs go out in
    /// batches of about half the credit, one `sendmsg` per batch, while the worker still has
    /// the other half to work on.
    pub(super) fn dispatch(&mut self, shared: &Shared, now: Instant) -> bool {
        if !matches!(self.phase, Phase::Running | Phase::Closing) || self.queue.is_empty() {
            return false;
        }
        let credit = self.credit();
        let n = self.slots.len();
        let open: Vec<bool> = self
            .slots
            .iter()
            .map(|w| matches!(w, Worker::Ready { jobs, .. } if jobs.inflight.len() <= credit / 2))
            .collect();
        let mut batches: Vec<Vec<Job>> = (0..n).map(|_| Vec::new()).collect();
        let mut batch_fds = vec![0usize; n];
        let mut timer_started = false;
        while let Some(job) = self.queue.front() {
            if job.spec.sink.is_dead() {
                self.queue.pop_front();
                continue;
            }
            if let Some(stopped) = job.spec.stopped(now) {
                // Never sent (see `stop`).
                let job = self.queue.pop_front().expect("front exists");
                job.spec.sink.complete(Err(ProcessError::stopped(stopped)));
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

    /// Sends `batch` to a ready worker in one `sendmsg` (queueing what the socket does not
    /// take) and records the jobs as sent. Returns whether a timed job (see `dispatch`)
    /// started on an idle worker.
    ///
    /// When the send fails the worker is dying (it closed its end): the batch never reached
    /// it and goes back to the front of the queue, and the worker becomes `Exiting` with
    /// [`Ending::Lost`], so that its pidfd, not this send, decides what its running job
    /// failed with (invariant 5 of the job lifecycle).
    fn send_batch(&mut self, slot: usize, batch: Vec<Job>, shared: &Shared, now: Instant) -> bool {
        let Worker::Ready { conn, jobs } = &mut self.slots[slot] else {
            unreachable!("dispatch picks ready workers only");
        };
        // The descriptors of the segments this worker has not had yet travel with the batch
        // (attached to its first byte; the worker's reader hands each frame its own).
        let mut fds: Vec<SharedFd> = Vec::new();
        let prefixes: Vec<[u8; wire::JOB_PREFIX_LEN]> = batch
            .iter()
            .map(|job| {
                let before = fds.len();
                for seg in &job.spec.segments {
                    if conn.note_segment(seg) {
                        fds.push(Arc::clone(seg.fd()));
                        seg.add_holder(shared.this.clone());
                    }
                }
                let spec = &job.spec;
                wire::job_prefix(job.id, spec.call, spec.payload.len(), fds.len() - before)
            })
            .collect();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * batch.len());
        for (prefix, job) in prefixes.iter().zip(&batch) {
            parts.push(prefix);
            parts.push(&job.spec.payload);
        }
        if conn.send(&shared.epoll, &parts, &fds).is_ok() {
            let was_idle = jobs.inflight.is_empty();
            jobs.jobs_left -= batch.len() as u64;
            for job in &batch {
                job.spec.sink.sent_to(slot, conn.ring());
            }
            jobs.inflight.extend(batch);
            if was_idle {
                jobs.front_since = now;
            }
            // A new front job with a deadline of its own (a task timeout, or its watch's
            // deadline or token under `kill_on_stop`): the supervisor must recompute its
            // sleep (see `stop`).
            let front_timed = shared.config.task_timeout.is_some()
                || (shared.config.kill_on_stop
                    && jobs.inflight.front().is_some_and(|job| {
                        job.spec
                            .sink
                            .watch()
                            .is_some_and(|w| w.deadline().is_some() || w.has_token())
                    }));
            return was_idle && front_timed;
        }
        for job in batch.into_iter().rev() {
            job.spec.sink.requeue();
            self.queue.push_front(job);
        }
        self.exit(slot, Ending::Lost, false, shared, now);
        false
    }

    /// A job's result, from the socket or the ring, for a ready or exiting worker.
    pub(super) fn on_result(
        &mut self,
        slot: usize,
        result: ResultFrame,
        shared: &Shared,
        now: Instant,
    ) {
        let (pid, jobs) = match &mut self.slots[slot] {
            Worker::Ready { conn, jobs } | Worker::Exiting { conn, jobs, .. } => (conn.pid(), jobs),
            _ => unreachable!("results are taken from ready and exiting workers only"),
        };
        let id = result.id;
        if !jobs.inflight.iter().any(|job| job.id == id) {
            let why = format!("it answered job {id}, which it was not running");
            self.violation(slot, why, shared, now);
            return;
        }
        let outcome = outcome(pid, result);
        if jobs.inflight.front().map(|job| job.id) != Some(id) {
            jobs.early.push((id, outcome));
            return;
        }
        let mut next = Some(outcome);
        while let Some(outcome) = next.take() {
            let job = jobs.inflight.pop_front().expect("a running job");
            let elapsed = now.saturating_duration_since(jobs.front_since);
            jobs.front_since = now;
            jobs.last_done = Some(job.id);
            job.spec.sink.complete(outcome);
            self.job_nanos += (elapsed.as_nanos() as f64 - self.job_nanos) / JOB_AVERAGE_SPAN;
            self.job_nanos = self.job_nanos.max(1.0);
            if let Some(front) = jobs.inflight.front().map(|job| job.id) {
                if let Some(at) = jobs.early.iter().position(|(id, _)| *id == front) {
                    next = Some(jobs.early.swap_remove(at).1);
                }
            }
        }
    }

    /// Takes the results a ready or exiting worker published in its ring.
    pub(super) fn take_ring(&mut self, slot: usize, buf: &mut Vec<u8>, shared: &Shared) {
        let conn = match &self.slots[slot] {
            Worker::Ready { conn, .. } | Worker::Exiting { conn, .. } => conn,
            _ => return,
        };
        let mut records = Vec::new();
        let taken = conn.ring().take(buf, |tag, body| {
            records.push(wire::decode_result(tag, body, Vec::new()));
        });
        let now = Instant::now();
        if let Err(e) = taken {
            self.violation(slot, e.to_string(), shared, now);
        }
        for record in records {
            match record {
                Ok(result) => self.on_result(slot, result, shared, now),
                Err(e) => self.violation(slot, e.to_string(), shared, now),
            }
        }
    }

    /// Tells the workers that have segment `id` to let go of it.
    pub(super) fn release(&mut self, id: SegmentId, shared: &Shared) {
        let frame = wire::release(id);
        for slot in 0..self.slots.len() {
            let Worker::Ready { conn, .. } = &mut self.slots[slot] else {
                // A worker on its way out drops its segments when it exits.
                continue;
            };
            if !conn.forget_segment(id) {
                continue;
            }
            if conn.send(&shared.epoll, &[&frame], &[]).is_err() {
                self.exit(slot, Ending::Lost, false, shared, Instant::now());
            }
        }
    }
}

/// The outcome a Result frame reports, with the segments its result names mapped.
fn outcome(pid: u32, result: ResultFrame) -> Outcome {
    match result.outcome {
        Ok(bytes) => {
            // Map the segments the result names (once per process) before anyone decodes
            // the result.
            let mut segments = Vec::with_capacity(result.fds.len());
            for fd in result.fds {
                match Segment::adopt(fd) {
                    Ok(seg) => segments.push(seg),
                    Err(e) => crate::shm::segment::set_decode_error(format!(
                        "could not map a shared-memory segment: {e}"
                    )),
                }
            }
            Ok(Reply {
                bytes,
                _segments: segments,
            })
        }
        Err(Failure::Panic(message)) => Err(ProcessError::panic(message, pid)),
        Err(Failure::DecodeArgument { type_name, message }) => Err(ProcessError::serialization(
            type_name,
            SerdeStage::DecodeArgument,
            message,
            Some(pid),
        )),
        Err(Failure::EncodeResult { type_name, message }) => Err(ProcessError::serialization(
            type_name,
            SerdeStage::EncodeResult,
            message,
            Some(pid),
        )),
    }
}

impl Jobs {
    /// When the front job runs past `timeout`, if a job is in flight.
    pub(super) fn timeout_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.inflight.front().map(|_| self.front_since + timeout)
    }
}
