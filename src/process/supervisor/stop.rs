//! What a stopped [`Watch`](crate::Watch) does to the jobs of its calls: the process side
//! of `crate::watch`.
//!
//! Every job carries the watch of the call that submitted it (in its sink), and is
//! stopped once that watch is (its token cancelled, or its deadline passed). Then:
//!
//! - **A queued job is never sent.** [`State::dispatch`] completes each stopped job it meets
//!   with the stop instead of sending it; [`State::drop_stopped`], which a call runs as soon
//!   as it sees its watch stop (`Shared::stop_watched`), does so for the whole queue at once;
//!   and a job that goes back to the queue because its worker died before running it is
//!   settled the same way (`lifecycle`'s `settle`).
//! - **A sent job** (a worker has it, running or waiting in its socket: the pool cannot take
//!   it back) **runs to the end** and delivers its outcome, by default. With
//!   `kill_on_stop`, a ready worker whose unanswered jobs are *all* stopped is killed
//!   instead ([`State::kill_stopped`]); the running job fails with the stop, the others
//!   complete with the stop (they never started), and the pool spawns a replacement, as
//!   after a task timeout. A worker that also holds a job of a call that did not stop is
//!   not killed: the parent's view lags the worker (the front job's result may be
//!   published and not yet taken, the worker already running the next job), so a kill
//!   decided on the front job alone could land in the other call's job and fail it. Such a
//!   worker is killed once its unstopped jobs are answered, or stopped too. In practice
//!   this costs little: a worker holds more than one job only when jobs are short (the
//!   credit window in `dispatch`), and long jobs, the ones worth killing, go one per
//!   worker. A kill on stop is not a crash:
//!   [`WorkerCounters::crashed`](crate::process::WorkerCounters) does not count it.
//!
//! **Exactly once.** A job is in one place at a time, the queue or one worker's in-flight
//! list (invariant 1 of the job lifecycle in `state`); each step above takes it out of that
//! place under the state lock before it completes the job's sink, and a killed worker's
//! jobs are settled by `settle` as after any death. So every job of a stopped call
//! completes exactly once: with its outcome if it ran, with the stop if it did not or was
//! killed.
//!
//! **When.** The check runs wherever jobs move (dispatch, a result, a death), in every pass
//! of the supervisor (kills), and when the call that waits on the jobs sees the stop: such
//! a call wakes at its watch's deadline and looks at its token at least every
//! `task::STOP_POLL`. Under `kill_on_stop` the supervisor also sleeps no later than the
//! moment a worker's jobs will all have passed their watches' deadlines, and no longer than
//! `STOP_POLL` while each of them may be stopped by a token (a token wakes nobody), so a
//! deadline or a cancel kills them even when nobody waits on them. That poll costs a
//! watched, killable pool about 100 wake-ups a second while such jobs run, as it costs a
//! watched waiter.

use std::time::Instant;

use super::Shared;
use super::state::{Ending, State, Worker};
use crate::ProcessError;
use crate::process::task::STOP_POLL;

impl State {
    /// Completes every queued job whose watch stopped with the stop (they are never sent).
    pub(super) fn drop_stopped(&mut self, now: Instant) {
        let queue = std::mem::take(&mut self.queue);
        for job in queue {
            match job.spec.stopped(now) {
                Some(stopped) => job.spec.sink.complete(Err(ProcessError::stopped(stopped))),
                None => self.queue.push_back(job),
            }
        }
    }

    /// Under `kill_on_stop`, kills each ready worker whose unanswered jobs all stopped (see
    /// the module docs for why all). Returns whether it killed one.
    pub(super) fn kill_stopped(&mut self, shared: &Shared, now: Instant) -> bool {
        if !shared.config.kill_on_stop {
            return false;
        }
        let mut killed = false;
        for slot in 0..self.slots.len() {
            let Worker::Ready { jobs, .. } = &self.slots[slot] else {
                continue;
            };
            let mut stops = jobs.inflight.iter().map(|job| job.spec.stopped(now));
            let Some(Some(stopped)) = stops.next() else {
                continue;
            };
            if !stops.all(|stop| stop.is_some()) {
                continue;
            }
            self.exit(slot, Ending::Stopped(stopped), true, shared, now);
            killed = true;
        }
        killed
    }

    /// Under `kill_on_stop`, when the supervisor must next look at the jobs of a ready
    /// worker whose unanswered jobs may all stop: the moment the last of them passes its
    /// watch's deadline, or within `STOP_POLL` for a job a token may stop. Past
    /// `kill_stopped` in the same pass, every such moment is in the future.
    pub(super) fn stop_deadline(&self, shared: &Shared, now: Instant) -> Option<Instant> {
        if !shared.config.kill_on_stop {
            return None;
        }
        self.slots
            .iter()
            .filter_map(|worker| {
                let Worker::Ready { jobs, .. } = worker else {
                    return None;
                };
                let mut all_stopped_at: Option<Instant> = None;
                for job in &jobs.inflight {
                    if job.spec.stopped(now).is_some() {
                        continue;
                    }
                    let watch = job.spec.sink.watch()?;
                    let poll = watch.has_token().then(|| now + STOP_POLL);
                    let look = match (watch.deadline(), poll) {
                        (Some(deadline), Some(poll)) => deadline.min(poll),
                        (deadline, poll) => deadline.or(poll)?,
                    };
                    all_stopped_at = Some(all_stopped_at.map_or(look, |at| at.max(look)));
                }
                all_stopped_at
            })
            .min()
    }
}
