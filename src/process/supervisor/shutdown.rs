//! The steps of shutdown, as the supervisor takes them (see the [parent module](super) for
//! what `close`, `join`, `terminate` and `Drop` promise).
//!
//! - **Closing**: the queue still drains, and a dead worker is still replaced while jobs
//!   wait. Once no job is queued or unanswered, every ready worker's socket is shut down for
//!   writing (it reads EOF and exits with status 0) and it becomes `Exiting` with
//!   [`EXIT_GRACE`](super::lifecycle::EXIT_GRACE) to go; a worker still starting is killed.
//! - **Terminating**: queued jobs fail with "closed"; every live worker is killed (with its
//!   process group) and its jobs fail with "closed" when it is reaped.
//! - Either way the pool is **Stopped** once every slot is `Dead`: every worker was reaped.

use std::time::Instant;

use super::Shared;
use super::state::{Ending, Phase, State, Worker};

impl State {
    /// Moves Closing and Terminating pools along; returns whether the pool stopped.
    pub(super) fn advance(&mut self, shared: &Shared, now: Instant) -> bool {
        match self.phase {
            Phase::Closing if !self.has_work() => {
                for slot in 0..self.slots.len() {
                    match &self.slots[slot] {
                        Worker::Ready { conn, .. } => {
                            conn.shutdown_write();
                            self.exit(slot, Ending::Retired, false, shared, now);
                        }
                        Worker::Starting { .. } | Worker::Initialising { .. } => {
                            self.exit(slot, Ending::Terminated, true, shared, now);
                        }
                        _ => {}
                    }
                }
            }
            Phase::Terminating => {
                self.fail_queue(None);
                for slot in 0..self.slots.len() {
                    let killed = matches!(self.slots[slot], Worker::Exiting { deadline: None, .. });
                    if self.slots[slot].conn().is_some() && !killed {
                        self.exit(slot, Ending::Terminated, true, shared, now);
                    }
                }
            }
            _ => {}
        }
        let empty = self.slots.iter().all(|w| !w.is_live());
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
