//! One worker process and everything the parent holds for it: the child, its pidfd, the
//! socket with its frame reader and outbox, the result ring, the epoll token, and the
//! shared-memory segments it was sent. A [`Conn`] is the only owner of each of these; the
//! worker lifecycle (`lifecycle`) moves it from state to state, and dropping it closes
//! everything.
//!
//! # Epoll registrations
//!
//! The socket is registered for `IN` while the worker is starting or ready, and for `OUT` too
//! exactly while the outbox holds bytes (armed when a send leaves bytes queued, disarmed when
//! a flush empties it). Once the worker is exiting the socket is unregistered: what it holds
//! is read when the pidfd says the worker ended (see [`Conn::drain`]). The pidfd is
//! registered for `IN` (readable once the process ended) for the whole life of the `Conn`.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::sync::Arc;

use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::process::ExitStatus;
use crate::process::bootstrap;
use crate::process::ring::Ring;
use crate::process::wire::{self, Fill, FrameReader, Outbox, SharedFd, ToParent};
use crate::shm::segment::{Segment, SegmentId};

/// Which of a worker's descriptors an epoll event is about.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Source {
    Socket = 0,
    Pidfd = 1,
}

/// The epoll token of a worker's socket or pidfd: a pool-wide generation (one per spawned
/// worker) in the high 32 bits, the slot and the source below. Events of a dead worker carry
/// an old generation and are not taken for its replacement's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Token {
    pub(super) slot: usize,
    pub(super) generation: u32,
}

impl Token {
    pub(super) fn encode(self, source: Source) -> u64 {
        (u64::from(self.generation) << 32) | ((self.slot as u64) << 1) | source as u64
    }

    /// The token and source an epoll event names (the inverse of [`encode`](Self::encode)).
    pub(super) fn decode(data: u64) -> (Self, Source) {
        let source = if data & 1 == 0 {
            Source::Socket
        } else {
            Source::Pidfd
        };
        let token = Token {
            slot: ((data & 0xffff_ffff) >> 1) as usize,
            generation: (data >> 32) as u32,
        };
        (token, source)
    }
}

/// A freshly spawned worker, before it has a slot: the child, its socket, pidfd and ring.
#[derive(Debug)]
pub(super) struct Spawned {
    child: Child,
    socket: OwnedFd,
    pidfd: OwnedFd,
    ring: Ring,
}

/// Spawns a worker, opens its pidfd and makes its result ring (outside the state lock).
pub(super) fn spawn() -> io::Result<Spawned> {
    let ring = Ring::create()?;
    let (mut child, socket) = bootstrap::spawn()?;
    match rustix::process::pidfd_open(Pid::from_child(&child), PidfdFlags::empty()) {
        Ok(pidfd) => Ok(Spawned {
            child,
            socket,
            pidfd,
            ring,
        }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e.into())
        }
    }
}

/// A live worker connection. See the [module documentation](self).
#[derive(Debug)]
pub(super) struct Conn {
    pid: u32,
    child: Child,
    pidfd: OwnedFd,
    socket: OwnedFd,
    /// Shared with the waiters of the jobs sent to this worker, which check it for results
    /// without the state lock (see `task`); only this `Conn` takes from it.
    ring: Arc<Ring>,
    reader: FrameReader,
    outbox: Outbox,
    token: Token,
    /// Shared-memory segments whose descriptor this worker was sent (it keeps them until a
    /// `Release`).
    sent: HashSet<SegmentId>,
    /// Whether the socket is still registered in epoll (until the worker starts exiting).
    watched: bool,
}

impl Conn {
    /// Registers a spawned worker's socket and pidfd under `token`. On failure the worker is
    /// killed and reaped.
    pub(super) fn register(spawned: Spawned, token: Token, epoll: &OwnedFd) -> io::Result<Self> {
        let Spawned {
            child,
            socket,
            pidfd,
            ring,
        } = spawned;
        let mut conn = Conn {
            pid: child.id(),
            child,
            pidfd,
            socket,
            ring: Arc::new(ring),
            reader: FrameReader::new(),
            outbox: Outbox::default(),
            token,
            sent: HashSet::new(),
            watched: false,
        };
        let registered = epoll::add(
            epoll,
            &conn.socket,
            EventData::new_u64(token.encode(Source::Socket)),
            EventFlags::IN,
        )
        .and_then(|()| {
            conn.watched = true;
            epoll::add(
                epoll,
                &conn.pidfd,
                EventData::new_u64(token.encode(Source::Pidfd)),
                EventFlags::IN,
            )
        });
        match registered {
            Ok(()) => Ok(conn),
            Err(e) => {
                // Without its registrations the supervisor would never hear from the worker.
                conn.kill();
                conn.unwatch(epoll);
                let _ = epoll::delete(epoll, &conn.pidfd);
                let _ = conn.child.wait();
                Err(e.into())
            }
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    pub(super) fn token(&self) -> Token {
        self.token
    }

    pub(super) fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// Sends one frame (or a batch of job frames) without blocking, queueing what the socket
    /// does not take, and arms `OUT` when bytes stay queued.
    pub(super) fn send(
        &mut self,
        epoll: &OwnedFd,
        parts: &[&[u8]],
        fds: &[SharedFd],
    ) -> io::Result<()> {
        let was_empty = self.outbox.is_empty();
        let pending = self.outbox.send(self.socket.as_fd(), parts, fds)?;
        if was_empty && pending {
            self.watch(epoll, EventFlags::IN | EventFlags::OUT)?;
        }
        Ok(())
    }

    /// Sends queued bytes now that the socket is writable; disarms `OUT` once none are left.
    pub(super) fn flush(&mut self, epoll: &OwnedFd) -> io::Result<()> {
        if !self.outbox.is_empty() && !self.outbox.flush(self.socket.as_fd())? {
            self.watch(epoll, EventFlags::IN)?;
        }
        Ok(())
    }

    /// Whether bytes wait in the outbox.
    pub(super) fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    fn watch(&self, epoll: &OwnedFd, flags: EventFlags) -> io::Result<()> {
        if self.watched {
            epoll::modify(
                epoll,
                &self.socket,
                EventData::new_u64(self.token.encode(Source::Socket)),
                flags,
            )?;
        }
        Ok(())
    }

    /// Stops watching the socket (the worker is exiting).
    pub(super) fn unwatch(&mut self, epoll: &OwnedFd) {
        if std::mem::take(&mut self.watched) {
            let _ = epoll::delete(epoll, &self.socket);
        }
    }

    /// Records that the worker gets segment `seg`; returns whether it did not have it yet
    /// (then its descriptor must go with the frame).
    pub(super) fn note_segment(&mut self, seg: &Segment) -> bool {
        self.sent.insert(seg.id())
    }

    /// Forgets that the worker has segment `id`; returns whether it had it.
    pub(super) fn forget_segment(&mut self, id: SegmentId) -> bool {
        self.sent.remove(&id)
    }

    /// One non-blocking read. A reset (the worker died with job frames unread; Linux
    /// reports it once the bytes the worker wrote are all read) counts as EOF.
    pub(super) fn read(&mut self) -> io::Result<Fill> {
        match self.reader.fill(self.socket.as_fd(), true) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Fill::Eof),
            other => other,
        }
    }

    /// Reads everything left in the socket (the worker is dead: what it wrote is all there).
    pub(super) fn drain(&mut self) -> io::Result<()> {
        while let Fill::Data(_) = self.read()? {}
        Ok(())
    }

    /// The next whole frame read so far, decoded.
    ///
    /// # Errors
    ///
    /// The bytes are not a frame a worker may send: a protocol violation.
    pub(super) fn next_message(&mut self) -> io::Result<Option<ToParent>> {
        match self.reader.next_frame()? {
            Some(frame) => frame.parent_message().map(Some),
            None => Ok(None),
        }
    }

    /// Kills the worker and every process in its process group (what its jobs forked). The
    /// worker is not reaped yet, so its pid, which is also the group's id, cannot have been
    /// reused.
    pub(super) fn kill(&self) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
        self.kill_group();
    }

    fn kill_group(&self) {
        if let Some(pid) = Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }

    /// Reaps the ended worker: kills what is left of its process group, waits for it, and
    /// unregisters its descriptors (closed when the `Conn` drops).
    pub(super) fn reap(&mut self, epoll: &OwnedFd) -> ExitStatus {
        self.kill_group();
        self.unwatch(epoll);
        let _ = epoll::delete(epoll, &self.pidfd);
        match self.child.wait() {
            Ok(s) => match (s.signal(), s.code()) {
                (Some(signal), _) => ExitStatus::Signal(signal),
                (None, Some(code)) => ExitStatus::Code(code),
                (None, None) => ExitStatus::Code(-1),
            },
            Err(_) => ExitStatus::Code(-1),
        }
    }

    /// Shuts down the write side of the socket: an idle worker reads EOF and exits.
    pub(super) fn shutdown_write(&self) {
        let _ = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Write);
    }

    /// Sends `Init`, with the result ring's descriptor.
    pub(super) fn send_init(&mut self, epoll: &OwnedFd, init: &wire::Init) -> io::Result<()> {
        let frame = wire::init(init);
        let ring = Arc::clone(self.ring.fd());
        self.send(epoll, &[&frame], &[ring])
    }
}
