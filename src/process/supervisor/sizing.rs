//! Elastic sizing: when a worker is spawned and when one retires, and why no job is lost.
//!
//! A pool has `min_processes ≤ max_processes` and an idle timeout; a fixed pool has
//! `min == max` and never retires a worker for idleness. The pool has `max_processes`
//! slots, so its processes (exiting ones included) never outnumber the maximum.
//!
//! # Counting
//!
//! - **live**: slots that are not `Dead` (spawning, starting, initialising, ready or
//!   exiting). An exiting worker counts until it is reaped.
//! - **backing off**: `Dead` slots whose `retry_at` is still to come: a start failed there
//!   and the backoff of `lifecycle` runs. Each stands in for the worker it will retry.
//! - **staying**: live slots that are not `Exiting`.
//!
//! # Spawning ([`State::take_wanted`], at the top of every supervisor pass, after dispatch)
//!
//! Only while the pool wants workers at all (building, running, or closing with jobs
//! queued), in `Dead` slots whose `retry_at` has passed:
//!
//! 1. **Up to the minimum**: `min − live − backing off` workers at once. This starts the
//!    pool and replaces a worker that died (a crash, a timeout, `max_tasks_per_child`);
//!    a fixed pool thus refills every slot, each with its own backoff, as before elastic
//!    sizing existed.
//! 2. **Growth**, one worker at a time: when a job waits in the queue after dispatch, no
//!    ready worker is idle (nothing in flight), no worker is spawning, starting or
//!    initialising, no slot is backing off, and `live < max`. A new worker is ready in about
//!    2 ms, so one at a time reaches 8 workers in under 20 ms of a burst, and a burst never
//!    spawns more workers than it keeps busy (the next one is spawned only once the last is
//!    ready and the queue still waits). Because no slot may be backing off, a pool that
//!    cannot spawn tries at the backoff's pace, not once per pass. Measured
//!    (`benches/process.rs`, group `elastic`, a loaded 2-core VM): 200 jobs that each sleep
//!    20 ms take 0.98× as long on a pool of 1 to 8 workers that starts at 1 as on a fixed
//!    pool of 8, so a faster ramp would buy nothing there.
//!
//! `submit` wakes the supervisor when it leaves a job queued and growth is possible
//! ([`State::wants_growth`]); a fixed pool never can, so its submits pay nothing for this.
//!
//! # Retiring ([`State::retire_idle`], with the deadlines of every supervisor pass)
//!
//! While the pool is running, a **ready** worker with **nothing in flight** and **nothing in
//! its outbox**, idle since `Jobs::front_since` for the idle timeout, retires while more
//! than `min` workers are staying: its socket is shut down for writing and it moves
//! `Ready → Exiting { why: Idle }` under the state lock. It reads EOF, exits with status 0
//! and is reaped like any worker; a fresh one is spawned if the load comes back.
//!
//! # Why no job is lost, duplicated or stranded
//!
//! - Jobs are only ever sent to `Ready` workers, under the state lock (by `submit` or the
//!   supervisor). Retirement checks "nothing in flight" and changes the state to `Exiting`
//!   under that same lock, so no job can be sent between the check and the transition, and
//!   every job dispatched after it goes to another worker (or waits in the queue, which
//!   grows the pool again if needed).
//! - With nothing in flight, every job that worker was sent was answered: the worker has no
//!   job in its socket, running or done-but-undelivered. Results still in its ring or socket
//!   would be delivered anyway (invariant 2 of the job lifecycle in `state`).
//! - If a retiring worker dies in a way it should not (killed, say), it is reaped like any
//!   other; it holds no job, so `settle` has nothing to blame or re-queue.
//! - Growth only adds workers; crash replacement goes through the same `Dead → Spawning`
//!   transition as any spawn, bounded by the slots, so a crash storm during growth or
//!   shrinking is handled by the job lifecycle's invariants unchanged.

use std::time::Instant;

use super::state::{Ending, Phase, State, Worker};
use super::{Shared, Wanted};

impl State {
    /// The slots to spawn a worker for now (see the module doc); they become `Spawning`.
    pub(super) fn take_wanted(&mut self, shared: &Shared, now: Instant) -> Wanted {
        if !self.wants_workers() {
            return Wanted::new();
        }
        let backing_off = self
            .slots
            .iter()
            .filter(|w| matches!(w, Worker::Dead { retry_at } if *retry_at > now))
            .count();
        let mut need = shared
            .config
            .min_processes
            .saturating_sub(self.live() + backing_off);
        if need == 0 && self.wants_growth(now) {
            need = 1;
        }
        let wanted: Wanted = (0..self.slots.len())
            .filter(
                |&slot| matches!(self.slots[slot], Worker::Dead { retry_at } if retry_at <= now),
            )
            .take(need)
            .collect();
        for &slot in &wanted {
            self.slots[slot] = Worker::Spawning;
        }
        wanted
    }

    /// Whether the pool should grow by one worker now: a job waits, no worker is idle or
    /// on its way up, no start is backing off, and a slot is free.
    pub(super) fn wants_growth(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Running | Phase::Closing)
            && self.live() < self.slots.len()
            && self.queue.iter().any(|job| !job.spec.sink.is_dead())
            && self.slots.iter().all(|w| match w {
                Worker::Dead { retry_at } => *retry_at <= now,
                Worker::Spawning | Worker::Starting { .. } | Worker::Initialising { .. } => false,
                Worker::Ready { jobs, .. } => !jobs.inflight.is_empty() || jobs.jobs_left == 0,
                Worker::Exiting { .. } => true,
            })
    }

    /// Retires the workers idle for the idle timeout while more than the minimum stay;
    /// returns when the next idle worker would be due.
    pub(super) fn retire_idle(&mut self, shared: &Shared, now: Instant) -> Option<Instant> {
        let config = &shared.config;
        if self.phase != Phase::Running || config.min_processes == config.max_processes {
            return None;
        }
        let mut staying = self
            .slots
            .iter()
            .filter(|w| w.is_live() && !matches!(w, Worker::Exiting { .. }))
            .count();
        let mut next: Option<Instant> = None;
        for slot in 0..self.slots.len() {
            if staying <= config.min_processes {
                break;
            }
            let Worker::Ready { conn, jobs } = &self.slots[slot] else {
                continue;
            };
            if !jobs.inflight.is_empty() || conn.has_outbox() {
                continue;
            }
            let due = jobs.front_since + config.idle_timeout;
            if now < due {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            conn.shutdown_write();
            self.exit(slot, Ending::Idle, false, shared, now);
            staying -= 1;
        }
        next
    }
}
