//! Starting workers: the supervisor thread spawns a worker process (outside the state lock),
//! then installs it in its slot: epoll registrations for its socket and pidfd, its result
//! ring, and its startup deadline. The handshake that follows is in [`State::on_frame`].
//!
//! # Failure to start
//!
//! While the pool is being built, any worker that fails to start fails the build: the others
//! are killed and `new`/`build` returns the error. Later, a slot whose replacement fails
//! [`MAX_START_ATTEMPTS`] times in a row stays empty; when no slot has or can get a worker,
//! queued and future jobs fail with the startup error.

use std::collections::{HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::process::Child;
use std::sync::Arc;
use std::time::Instant;

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::process::{Pid, PidfdFlags};

use super::state::{Killed, Phase, Stage, State, Worker};
use super::{Local, Shared, Source, token};
use crate::ProcessError;
use crate::process::bootstrap;
use crate::process::ring::Ring;
use crate::process::wire::{FrameReader, Outbox};

/// Consecutive failures to start a replacement worker before a slot gives up. Not
/// measured: a passing failure (a spawn refused under memory pressure, a start slowed past
/// the startup timeout) rarely repeats three times in a row, while a lasting one (an
/// initializer that always panics) is reported after three startups instead of retried
/// forever.
const MAX_START_ATTEMPTS: u32 = 3;

/// A freshly spawned worker: the child, its socket, its pidfd and its result ring.
type Spawned = (Child, OwnedFd, OwnedFd, Ring);

/// Spawns a worker, opens its pidfd and makes its result ring.
pub(super) fn spawn_worker() -> std::io::Result<Spawned> {
    let ring = Ring::create()?;
    let (mut child, socket) = bootstrap::spawn()?;
    let pid = Pid::from_child(&child);
    match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(pidfd) => Ok((child, socket, pidfd, ring)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.into())
        }
    }
}

impl State {
    /// Whether a slot should get a (new) worker now.
    pub(super) fn wants_worker(&self, slot: usize) -> bool {
        let s = &self.slots[slot];
        if s.worker.is_some() || s.spawning || s.given_up {
            return false;
        }
        match self.phase {
            Phase::Starting => self.failure.is_none(),
            Phase::Running => true,
            Phase::Closing => self.queue.iter().any(|job| !job.spec.sink.is_dead()),
            Phase::Terminating | Phase::Stopped => false,
        }
    }

    /// A worker could not start.
    pub(super) fn start_failed(&mut self, slot: usize, error: ProcessError, shared: &Shared) {
        let s = &mut self.slots[slot];
        s.start_failures += 1;
        match self.phase {
            Phase::Starting => {
                self.failure.get_or_insert(error);
                self.phase = Phase::Terminating;
                shared.started.notify_all();
            }
            Phase::Running | Phase::Closing => {
                if s.start_failures >= MAX_START_ATTEMPTS {
                    s.given_up = true;
                }
                let any_left = self
                    .slots
                    .iter()
                    .any(|s| s.worker.is_some() || s.spawning || !s.given_up);
                if !any_left {
                    self.fail_queue(Some(&error));
                    self.failure.get_or_insert(error);
                }
            }
            Phase::Terminating | Phase::Stopped => {}
        }
    }

    /// Installs a freshly spawned worker in its slot.
    pub(super) fn install(
        &mut self,
        slot: usize,
        spawned: std::io::Result<Spawned>,
        shared: &Shared,
        local: &mut Local,
        now: Instant,
    ) {
        self.slots[slot].spawning = false;
        let (child, socket, pidfd, ring) = match spawned {
            Ok(s) => s,
            Err(e) => {
                let error = ProcessError::startup("could not spawn a worker process", Some(e));
                self.start_failed(slot, error, shared);
                return;
            }
        };
        let s = &mut self.slots[slot];
        s.generation = s.generation.wrapping_add(1);
        let generation = s.generation;
        let socket = Arc::new(socket);
        let registered = epoll::add(
            &shared.epoll,
            &*socket,
            EventData::new_u64(token(slot, generation, Source::Socket)),
            EventFlags::IN,
        )
        .and_then(|()| {
            epoll::add(
                &shared.epoll,
                &pidfd,
                EventData::new_u64(token(slot, generation, Source::Pidfd)),
                EventFlags::IN,
            )
        });
        local.readers[slot] = FrameReader::new();
        local.sockets[slot] = Some(Arc::clone(&socket));
        let ring = Arc::new(ring);
        local.rings[slot] = Some(Arc::clone(&ring));
        shared.set_ring(slot, Some(Arc::clone(&ring)));
        local.generations[slot] = generation;
        let pid = child.id();
        s.worker = Some(Worker {
            pid,
            child,
            pidfd,
            socket,
            ring,
            stage: Stage::Hello,
            deadline: Some(now + shared.config.startup_timeout),
            inflight: VecDeque::new(),
            early: Vec::new(),
            front_since: now,
            outbox: Outbox::default(),
            out_armed: false,
            jobs_left: shared.config.max_tasks_per_child.unwrap_or(u64::MAX),
            sent: HashSet::new(),
            killed: None,
            startup_message: None,
            eof: false,
        });
        if let Err(e) = registered {
            // Without its registrations the supervisor would never hear from the worker.
            self.kill(
                slot,
                Killed::Startup(format!("epoll registration failed: {e}")),
            );
            let _ = self.worker(slot).child.wait();
            self.slots[slot].worker = None;
            let error = ProcessError::startup("could not watch a worker process", Some(e.into()));
            self.start_failed(slot, error, shared);
        }
    }
}
