//! The parent side of a process pool: the job queue, dispatch with a per-worker credit
//! window, crash and timeout detection, respawning, and shutdown.
//!
//! # Files
//!
//! - this file: the state shared with the pool handle and submitting threads ([`Shared`]),
//!   [`start`], and the supervisor thread's loop;
//! - [`state`]: the per-pool state under the lock: the job queue, dispatch with the credit
//!   window, results, crash and timeout handling, and the steps of shutdown. Its module
//!   documentation describes dispatch and the credit window, crash detection and timeouts;
//! - [`spawn`]: spawning a worker and installing it in its slot. Its module documentation
//!   describes what happens when a worker fails to start.
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
//! every socket; each worker reads EOF and exits with status 0; the supervisor reaps it (and
//! kills one that is still alive after [`EXIT_GRACE`](state::EXIT_GRACE)). When every slot
//! is empty the supervisor thread returns, and `join` returns after it. `terminate` instead
//! kills every worker at once and fails every queued and running job with a "closed" error.

mod spawn;
mod state;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec, eventfd};

use super::bootstrap;
use super::ring::Ring;
use super::task::Sink;
use super::wire::{self, Fill, FrameReader};
use crate::ProcessError;
use crate::shm::segment::{Holder, Segment, SegmentId};
use spawn::spawn_worker;
use state::{Job, Killed, Phase, State};

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

/// Settings of a pool, fixed at build time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) max_tasks_per_child: Option<u64>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) initializer: Option<fn()>,
    pub(crate) startup_timeout: Duration,
}

/// The function a job runs, named by offsets from the anchor (see `bootstrap`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub(crate) trampoline: i64,
    pub(crate) function: i64,
}

/// A job as submitted: what to run, its encoded argument, and where its outcome goes.
#[derive(Debug)]
pub(crate) struct JobSpec {
    pub(crate) call: Call,
    pub(crate) payload: Vec<u8>,
    /// Shared-memory segments the argument names; kept alive until the job is answered.
    pub(crate) segments: Vec<Arc<Segment>>,
    pub(crate) sink: Sink,
}

/// The state shared by the pool handle, submitting threads and the supervisor thread.
#[derive(Debug)]
pub(crate) struct Shared {
    /// This pool, as a holder of the shared-memory segments it sends (see `shm::segment`).
    this: Weak<dyn Holder>,
    /// Segments whose last handle in this process dropped, to release in the workers.
    released: Mutex<Vec<SegmentId>>,
    state: Mutex<State>,
    /// The result ring of each slot's worker, for waiters that poll (`poll_ring`).
    rings: Mutex<Vec<Option<Arc<Ring>>>>,
    /// Signalled when the phase leaves `Starting`.
    started: Condvar,
    epoll: OwnedFd,
    waker: OwnedFd,
    config: Config,
    fingerprint: wire::Fingerprint,
}

/// Supervisor-thread-only data: the frame readers (read without the state lock).
struct Local {
    readers: Vec<FrameReader>,
    sockets: Vec<Option<Arc<OwnedFd>>>,
    rings: Vec<Option<Arc<Ring>>>,
    generations: Vec<u32>,
}

/// Which of a worker's descriptors an epoll event is about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Socket = 0,
    Pidfd = 1,
}

/// The epoll token of a worker's socket or pidfd: the slot's generation in the high 32 bits,
/// the slot and the source below.
fn token(slot: usize, generation: u32, source: Source) -> u64 {
    (u64::from(generation) << 32) | ((slot as u64) << 1) | source as u64
}

/// The slot, generation and source an epoll token names (the inverse of [`token`]).
fn untoken(token: u64) -> (usize, u32, Source) {
    let source = if token & 1 == 0 {
        Source::Socket
    } else {
        Source::Pidfd
    };
    (
        ((token & 0xffff_ffff) >> 1) as usize,
        (token >> 32) as u32,
        source,
    )
}

/// A failure to set up the pool itself, before any worker starts.
fn startup_error(e: std::io::Error) -> ProcessError {
    ProcessError::startup("could not set up the pool", Some(e))
}

/// Starts a pool: the supervisor thread, which spawns the workers. Returns once every worker
/// is ready, or with the first startup error.
pub(crate) fn start(config: Config) -> Result<(Arc<Shared>, JoinHandle<()>), ProcessError> {
    if config.processes == 0 {
        return Err(ProcessError::invalid_argument(
            "a process pool needs at least one process",
        ));
    }
    bootstrap::check_bootstrap()?;
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
    let n = config.processes;
    let shared = Arc::new_cyclic(|this: &Weak<Shared>| Shared {
        this: this.clone(),
        released: Mutex::new(Vec::new()),
        state: Mutex::new(State::new(n)),
        started: Condvar::new(),
        rings: Mutex::new(vec![None; n]),
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
        state = shared
            .started
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner);
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
        self.released
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
        self.wake();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Internal lock: the state stays consistent between statements that can panic, and
        // the supervisor aborts on an internal panic, so poisoning is ignored.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
    /// The pool is closed, or broken because no worker can start.
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
        let timer_started = state.dispatch(self, Instant::now());
        drop(state);
        if timer_started {
            // A job started on an idle worker under a task timeout: the supervisor must
            // recompute its epoll timeout.
            self.wake();
        }
        Ok(())
    }

    /// Takes the results in a worker's ring, if any, when the state lock is free: a waiting
    /// thread's shortcut past the supervisor (see `task`).
    pub(crate) fn poll_ring(&self, slot: usize) {
        let ring = self
            .rings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(slot)
            .cloned()
            .flatten();
        if !ring.is_some_and(|ring| ring.pending()) {
            return;
        }
        let Ok(mut state) = self.state.try_lock() else {
            return; // the supervisor (or another waiter) is at it
        };
        let now = Instant::now();
        state.take_ring(slot, &mut Vec::new(), now);
        let timer_started = state.dispatch(self, now);
        drop(state);
        if timer_started {
            self.wake();
        }
    }

    fn set_ring(&self, slot: usize, ring: Option<Arc<Ring>>) {
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)[slot] = ring;
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
        self.lock()
            .slots
            .iter()
            .filter_map(|slot| slot.worker.as_ref().map(|w| w.pid))
            .collect()
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

/// The supervisor thread.
fn supervise(shared: &Shared) {
    let _guard = AbortOnPanic;
    let n = shared.config.processes;
    let mut local = Local {
        readers: (0..n).map(|_| FrameReader::new()).collect(),
        sockets: vec![None; n],
        rings: vec![None; n],
        generations: vec![0; n],
    };
    let mut events: Vec<epoll::Event> = Vec::with_capacity(2 * n + 1);
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    let mut exited = Vec::new();
    let mut eof = vec![false; n];
    let mut ring_buf = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        // Spawn what the pool lacks, outside the lock: an exec takes about a millisecond.
        let wanted: Vec<usize> = {
            let mut state = shared.lock();
            let wanted: Vec<usize> = (0..n).filter(|&s| state.wants_worker(s)).collect();
            for &slot in &wanted {
                state.slots[slot].spawning = true;
            }
            wanted
        };
        if !wanted.is_empty() {
            let spawned: Vec<_> = wanted.iter().map(|_| spawn_worker()).collect();
            let mut state = shared.lock();
            let now = Instant::now();
            for (slot, result) in wanted.into_iter().zip(spawned) {
                state.install(slot, result, shared, &mut local, now);
            }
            deadline = state.check_deadlines(shared, now);
        }

        // Announce the sleep to every worker's ring; a ring with results means no sleep.
        let mut pending = false;
        for ring in local.rings.iter().flatten() {
            pending |= ring.arm();
        }
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
        for ring in local.rings.iter().flatten() {
            ring.disarm();
        }

        // Read sockets outside the lock.
        readable.clear();
        writable.clear();
        exited.clear();
        for event in &events {
            let data = event.data.u64();
            if data == WAKER_TOKEN {
                let mut buf = [0u8; 8];
                let _ = rustix::io::read(&shared.waker, &mut buf);
                continue;
            }
            let (slot, generation, source) = untoken(data);
            if local.generations[slot] != generation {
                continue;
            }
            match source {
                Source::Socket => {
                    let flags = event.flags;
                    if flags.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR) {
                        readable.push(slot);
                    }
                    if flags.contains(EventFlags::OUT) {
                        writable.push(slot);
                    }
                }
                Source::Pidfd => exited.push(slot),
            }
        }
        for &slot in readable.iter().chain(&exited) {
            // A dead worker's socket is read to the end: results written before it died.
            // A live socket gets one read per wake (epoll is level-triggered: what is left
            // wakes us again).
            let nonblocking_rounds = if exited.contains(&slot) {
                usize::MAX
            } else {
                1
            };
            if let Some(socket) = local.sockets[slot].clone() {
                for _ in 0..nonblocking_rounds {
                    match local.readers[slot].fill(socket.as_fd(), true) {
                        Ok(Fill::Data(_)) => {}
                        Ok(Fill::Empty) => break,
                        Ok(Fill::Eof) | Err(_) => {
                            eof[slot] = true;
                            break;
                        }
                    }
                }
            }
        }

        let mut state = shared.lock();
        let now = Instant::now();
        for slot in readable.iter().chain(&exited).copied() {
            if state.slots[slot].worker.is_none() {
                continue;
            }
            loop {
                match local.readers[slot].next_frame() {
                    Ok(Some(frame)) => state.on_frame(slot, frame, shared, now),
                    Ok(None) => break,
                    Err(_) => {
                        state.kill(slot, Killed::Broken);
                        break;
                    }
                }
                if state.slots[slot].worker.is_none() {
                    break;
                }
            }
            if std::mem::take(&mut eof[slot]) && state.slots[slot].worker.is_some() {
                state.on_eof(slot, shared, now);
            }
        }
        for slot in 0..n {
            state.take_ring(slot, &mut ring_buf, now);
        }
        let released = std::mem::take(
            &mut *shared
                .released
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for id in released {
            state.release(id, shared);
        }
        for &slot in &writable {
            let generation = state.slots[slot].generation;
            if let Some(w) = state.slots[slot].worker.as_mut() {
                if w.flush(shared, token(slot, generation, Source::Socket))
                    .is_err()
                {
                    state.kill(slot, Killed::Broken);
                }
            }
        }
        for &slot in &exited {
            state.on_exit(slot, shared);
            local.sockets[slot] = None;
            local.rings[slot] = None;
            shared.set_ring(slot, None);
            local.readers[slot] = FrameReader::new();
        }
        state.dispatch(shared, now);
        let stopped = state.advance(shared, now);
        deadline = state.check_deadlines(shared, now);
        if stopped {
            return;
        }
    }
}
