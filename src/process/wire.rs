//! Framing between the parent and one worker, and the encoding of what the frames carry.
//!
//! # Transport
//!
//! One `AF_UNIX` socketpair per worker, `SOCK_STREAM`. A stream rather than `SOCK_SEQPACKET`
//! because a frame may be larger than the socket buffer (a chunk of a big `map`): a seqpacket
//! message must fit the buffer whole, a stream frame is just bytes. A stream also lets one
//! `recvmsg` pick up many small frames at once, which is how a worker reads a window of
//! one-item jobs in one system call. Both ends are `SOCK_CLOEXEC`; the worker's end reaches
//! it as its standard input (see `bootstrap`), never through fd inheritance.
//!
//! # Frame layout
//!
//! Every frame is a 16-byte header and a body. Integers are little-endian.
//!
//! ```text
//! offset size field
//!      0    4 body length in bytes (u32), not counting the header
//!      4    1 kind (the `Kind` enum below)
//!      5    2 number of file descriptors that travel with this frame (SCM_RIGHTS, u16)
//!      7    1 reserved, zero
//!      8    8 tag (u64): the job id of a Job or Result frame, else zero
//!     16    . body
//! ```
//!
//! Bodies, by kind (who writes it → who reads it):
//!
//! ```text
//! Hello      worker → parent  postcard(Hello): the worker's pid and image fingerprint
//! Init       parent → worker  postcard(Init): initializer offset, max tasks per child;
//!                              one descriptor: the result ring
//! Ready      worker → parent  empty: the initializer ran, jobs may come
//! InitFailed worker → parent  UTF-8: the initializer's panic message; the worker exits
//! Missed     worker → parent  empty: the worker bootstrap did not run before `main`
//! Job        parent → worker  i64 trampoline offset, i64 function offset, postcard(argument)
//! Result     worker → parent  u8 status, then status 0: postcard(result) bytes,
//!                              status 1: postcard(Failure)
//! Doorbell   worker → parent  empty: a result waits in the result ring (see `ring`)
//! Release    parent → worker  postcard(SegmentId): the parent dropped its last handle to a
//!                              shared-memory segment it sent; the worker lets go of it
//! ```
//!
//! This file is the only place that knows these layouts: each direction has a typed message
//! ([`ToParent`], [`ToWorker`]) decoded from a [`RawFrame`], and an encoder per frame. A frame
//! that does not decode is a protocol violation, reported as such by whoever reads it.
//!
//! Before the first frame, the parent writes the worker's [`NONCE_LEN`]-byte nonce on the
//! socket (see `bootstrap`): the proof that the process was started as a worker.
//!
//! A `Job` frame carries the descriptors of the shared-memory segments its argument names
//! that this worker has not been sent before; a `Result` frame carries the descriptors of
//! every segment its result names (see `shm::segment`).
//!
//! `Init` carries one descriptor: the worker's result ring. Small results go through that
//! ring instead of the socket (see `ring`); large ones, and results that carry descriptors,
//! come as `Result` frames here.
//!
//! A worker answers every Job with exactly one Result, in the order the jobs were sent, so the
//! parent's per-worker queue of sent jobs tells it which job was running when a worker died.
//!
//! # File descriptors
//!
//! A frame's descriptors are attached, as `SCM_RIGHTS` ancillary data, to its first bytes, at
//! most [`MAX_FDS`] per `sendmsg`: a frame with more (a result naming many segments) sends
//! one byte with each full group and the rest of its bytes with the last group. On Linux a
//! stream `recvmsg` never reads past a message that carries descriptors, so they arrive no
//! later than the bytes they came with, which all belong to the frame that counts them: the
//! reader queues every descriptor it receives and hands the first `fds` of the queue to the
//! frame whose header it parses, once the whole frame is there. Either side may send
//! descriptors (shared-memory segments travel to workers and back this way).
//!
//! # End of stream
//!
//! The parent closes (or shuts down) its end to tell an idle worker to exit; a worker that
//! reads EOF exits with status 0. When the parent reads EOF it waits for the worker's pidfd to
//! say how the worker ended.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use rustix::io::{IoSlice, IoSliceMut};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::shm::segment::SegmentId;

/// Bytes in a frame header.
pub(crate) const HEADER_LEN: usize = 16;

/// Bytes of a Job frame before its argument: the header and the two offsets.
pub(crate) const JOB_PREFIX_LEN: usize = HEADER_LEN + 16;

/// Bytes of a Result frame before its result: the header and the status byte.
pub(crate) const RESULT_PREFIX_LEN: usize = HEADER_LEN + 1;

/// The bytes the parent writes before the first frame: the worker's proof of origin.
pub(crate) const NONCE_LEN: usize = 16;

/// The most file descriptors one `sendmsg` carries. The receive buffer for ancillary data is
/// sized for this many; a job argument that names more shared-memory segments than this is
/// refused (automatic chunks stay below it). Linux accepts up to 253 (`SCM_MAX_FD`) per
/// message; 64 keeps that buffer small.
pub(crate) const MAX_FDS: usize = 64;

/// The most descriptors one Result frame carries, in groups of [`MAX_FDS`]: a chunk of
/// results that names more segments fails with a serialisation error. 512 stays under the
/// usual soft `RLIMIT_NOFILE` of 1024, which also bounds the descriptors a user may have in
/// flight on Unix sockets.
pub(crate) const MAX_RESULT_FDS: usize = 512;

/// The largest body a frame may carry (the length field is a `u32`).
pub(crate) const MAX_BODY: usize = u32::MAX as usize;

/// How much the frame reader asks the kernel for in one `recvmsg` (it grows for larger
/// frames). 64 KiB holds a few thousand one-item jobs or results, so a worker working
/// through a window of small jobs reads them in one call.
const READ_CHUNK: usize = 64 * 1024;

/// A descriptor that may be sent with several frames (a shared-memory segment's memfd).
pub(crate) type SharedFd = Arc<OwnedFd>;

/// The kind byte of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Hello = 1,
    Init = 2,
    Ready = 3,
    InitFailed = 4,
    Missed = 5,
    Job = 6,
    Result = 7,
    Doorbell = 8,
    Release = 9,
}

impl Kind {
    fn from_u8(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Hello,
            2 => Self::Init,
            3 => Self::Ready,
            4 => Self::InitFailed,
            5 => Self::Missed,
            6 => Self::Job,
            7 => Self::Result,
            8 => Self::Doorbell,
            9 => Self::Release,
            _ => return None,
        })
    }
}

/// The status byte that opens a Result body.
const STATUS_OK: u8 = 0;
/// The status byte of a failed job; a `postcard(Failure)` follows.
const STATUS_FAILED: u8 = 1;

/// The worker's first frame: who it is and which executable image it runs.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) pid: u32,
    pub(crate) fingerprint: Fingerprint,
}

/// Identifies an executable image: the parent and a worker compare theirs in the handshake
/// before the parent sends any function offset.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    /// `st_dev`, `st_ino`, `st_size`, `st_mtime` (s, ns) of `/proc/self/exe`.
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: i64,
    /// The offset of a second known function from the anchor: equal only when both sides
    /// run the same code at the same layout.
    pub(crate) probe: i64,
}

/// The parent's answer to a valid Hello.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Init {
    /// Offset of the `fn()` initializer from the anchor, if there is one.
    pub(crate) initializer: Option<i64>,
    /// The worker exits after this many jobs (0: never).
    pub(crate) max_tasks: u64,
}

/// The function a job runs, named by offsets from the anchor (see `bootstrap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) trampoline: i64,
    pub(crate) function: i64,
}

/// Why a job failed inside a worker without killing it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// The job panicked with this message.
    Panic(String),
    /// The argument did not deserialise.
    DecodeArgument { type_name: String, message: String },
    /// The result did not serialise.
    EncodeResult { type_name: String, message: String },
}

/// A message from a worker to the parent, decoded (and copied out of the reader's buffer).
#[derive(Debug)]
pub(crate) enum ToParent {
    Hello(Hello),
    Ready,
    InitFailed(String),
    Missed,
    Result(ResultFrame),
    Doorbell,
}

impl ToParent {
    /// The frame's kind, for messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            ToParent::Hello(_) => "Hello",
            ToParent::Ready => "Ready",
            ToParent::InitFailed(_) => "InitFailed",
            ToParent::Missed => "Missed",
            ToParent::Result(_) => "Result",
            ToParent::Doorbell => "Doorbell",
        }
    }
}

/// A job's answer: its id, what it produced (the encoded result, or why there is none), and
/// the descriptors of the segments the result names.
#[derive(Debug)]
pub(crate) struct ResultFrame {
    pub(crate) id: u64,
    pub(crate) outcome: Result<Vec<u8>, Failure>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// A message from the parent to a worker, decoded.
#[derive(Debug)]
pub(crate) enum ToWorker<'a> {
    Init { init: Init, ring: OwnedFd },
    Job(JobFrame<'a>),
    Release(SegmentId),
}

/// A job: its id, the function, the encoded argument, and new segment descriptors.
#[derive(Debug)]
pub(crate) struct JobFrame<'a> {
    pub(crate) id: u64,
    pub(crate) call: Call,
    pub(crate) arg: &'a [u8],
    pub(crate) fds: Vec<OwnedFd>,
}

/// A frame whose body does not match its kind, or a kind the reader does not take.
fn violation(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl<'a> RawFrame<'a> {
    /// Decodes a frame the parent read from a worker.
    ///
    /// # Errors
    ///
    /// A kind the parent never receives, or a body that does not parse.
    pub(crate) fn parent_message(self) -> io::Result<ToParent> {
        let body = self.body;
        let no_fds = |m: ToParent| {
            if self.fds.is_empty() {
                Ok(m)
            } else {
                Err(violation(format!(
                    "a {:?} frame carried descriptors",
                    self.kind
                )))
            }
        };
        match self.kind {
            Kind::Hello => no_fds(ToParent::Hello(
                postcard::from_bytes(body).map_err(|e| violation(format!("bad Hello: {e}")))?,
            )),
            Kind::Ready if body.is_empty() => no_fds(ToParent::Ready),
            Kind::InitFailed => no_fds(ToParent::InitFailed(
                String::from_utf8_lossy(body).into_owned(),
            )),
            Kind::Missed if body.is_empty() => no_fds(ToParent::Missed),
            Kind::Doorbell if body.is_empty() => no_fds(ToParent::Doorbell),
            Kind::Result => Ok(ToParent::Result(decode_result(self.tag, body, self.fds)?)),
            kind => Err(violation(format!(
                "a worker sent a {kind:?} frame of {} bytes",
                body.len()
            ))),
        }
    }

    /// Decodes a frame a worker read from the parent.
    ///
    /// # Errors
    ///
    /// A kind a worker never receives, or a body that does not parse.
    pub(crate) fn worker_message(mut self) -> io::Result<ToWorker<'a>> {
        match self.kind {
            Kind::Init if self.fds.len() == 1 => Ok(ToWorker::Init {
                init: postcard::from_bytes(self.body)
                    .map_err(|e| violation(format!("bad Init: {e}")))?,
                ring: self.fds.pop().expect("one descriptor"),
            }),
            Kind::Job if self.body.len() >= JOB_PREFIX_LEN - HEADER_LEN => {
                let (offsets, arg) = self.body.split_at(JOB_PREFIX_LEN - HEADER_LEN);
                let word =
                    |i: usize| i64::from_le_bytes(offsets[i..i + 8].try_into().expect("8 bytes"));
                Ok(ToWorker::Job(JobFrame {
                    id: self.tag,
                    call: Call {
                        trampoline: word(0),
                        function: word(8),
                    },
                    arg,
                    fds: self.fds,
                }))
            }
            Kind::Release if self.fds.is_empty() => Ok(ToWorker::Release(
                postcard::from_bytes(self.body)
                    .map_err(|e| violation(format!("bad Release: {e}")))?,
            )),
            kind => Err(violation(format!(
                "the parent sent a {kind:?} frame of {} bytes",
                self.body.len()
            ))),
        }
    }
}

/// Decodes a Result frame's body (from the socket, or a ring record).
///
/// # Errors
///
/// An empty body, an unknown status, or a failure that does not parse.
pub(crate) fn decode_result(id: u64, body: &[u8], fds: Vec<OwnedFd>) -> io::Result<ResultFrame> {
    let outcome = match body.split_first() {
        Some((&STATUS_OK, bytes)) => Ok(bytes.to_vec()),
        Some((&STATUS_FAILED, bytes)) => Err(postcard::from_bytes(bytes)
            .map_err(|e| violation(format!("an unreadable failure: {e}")))?),
        _ => return Err(violation("a Result frame without a valid status")),
    };
    Ok(ResultFrame { id, outcome, fds })
}

/// Encodes a control frame: header and body in one buffer.
fn control(kind: Kind, body: &[u8], fds: usize) -> Vec<u8> {
    let mut frame = header(kind, 0, body.len(), fds).to_vec();
    frame.extend_from_slice(body);
    frame
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("control frames always serialise")
}

/// A Hello frame.
pub(crate) fn hello(hello: &Hello) -> Vec<u8> {
    control(Kind::Hello, &encode(hello), 0)
}

/// An Init frame; the ring's descriptor must go with it.
pub(crate) fn init(init: &Init) -> Vec<u8> {
    control(Kind::Init, &encode(init), 1)
}

/// A Ready frame.
pub(crate) fn ready() -> Vec<u8> {
    control(Kind::Ready, &[], 0)
}

/// An InitFailed frame with the initializer's panic message.
pub(crate) fn init_failed(message: &str) -> Vec<u8> {
    control(Kind::InitFailed, message.as_bytes(), 0)
}

/// A Missed frame.
pub(crate) fn missed() -> Vec<u8> {
    control(Kind::Missed, &[], 0)
}

/// A Doorbell frame.
pub(crate) fn doorbell() -> Vec<u8> {
    control(Kind::Doorbell, &[], 0)
}

/// A Release frame.
pub(crate) fn release(id: SegmentId) -> Vec<u8> {
    control(Kind::Release, &encode(&id), 0)
}

/// The bytes of a Job frame before its argument, which follows in its own iovec.
pub(crate) fn job_prefix(id: u64, call: Call, arg_len: usize, fds: usize) -> [u8; JOB_PREFIX_LEN] {
    let mut prefix = [0u8; JOB_PREFIX_LEN];
    let body_len = JOB_PREFIX_LEN - HEADER_LEN + arg_len;
    prefix[..HEADER_LEN].copy_from_slice(&header(Kind::Job, id, body_len, fds));
    prefix[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&call.trampoline.to_le_bytes());
    prefix[HEADER_LEN + 8..].copy_from_slice(&call.function.to_le_bytes());
    prefix
}

/// Starts a Result frame in `out`: room for its prefix; the result's bytes are appended
/// after it, then [`finish_result`] fills the prefix in.
pub(crate) fn begin_result(out: &mut Vec<u8>) {
    out.clear();
    out.resize(RESULT_PREFIX_LEN, 0);
}

/// Completes the Result frame of job `id` in `out`: as a success whose bytes follow the
/// prefix (`None`), or as `failure`, replacing whatever bytes were appended.
pub(crate) fn finish_result(out: &mut Vec<u8>, id: u64, failure: Option<&Failure>, fds: usize) {
    let status = match failure {
        None => STATUS_OK,
        Some(failure) => {
            begin_result(out);
            out.extend_from_slice(&encode(failure));
            STATUS_FAILED
        }
    };
    out[HEADER_LEN] = status;
    let header = header(Kind::Result, id, out.len() - HEADER_LEN, fds);
    out[..HEADER_LEN].copy_from_slice(&header);
}

/// Decodes a job's argument or result. A failure's message includes why a shared-memory
/// handle in it was refused (postcard itself drops that message).
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let _stale = crate::shm::segment::take_decode_error();
    postcard::from_bytes(bytes).map_err(|e| match crate::shm::segment::take_decode_error() {
        Some(why) => format!("{e}: {why}"),
        None => e.to_string(),
    })
}

/// Decodes a frame header at the start of `bytes`: (kind, descriptor count, tag, body
/// length). `None` when the bytes are too short or the kind is unknown.
pub(crate) fn parse_header(bytes: &[u8]) -> Option<(Kind, usize, u64, usize)> {
    let h = bytes.get(..HEADER_LEN)?;
    let body_len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
    let kind = Kind::from_u8(h[4])?;
    let fds = u16::from_le_bytes([h[5], h[6]]) as usize;
    let tag = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    Some((kind, fds, tag, body_len))
}

/// Encodes a frame header.
fn header(kind: Kind, tag: u64, body_len: usize, fds: usize) -> [u8; HEADER_LEN] {
    debug_assert!(body_len <= MAX_BODY && fds <= MAX_RESULT_FDS);
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[4] = kind as u8;
    h[5..7].copy_from_slice(&(fds as u16).to_le_bytes());
    h[8..16].copy_from_slice(&tag.to_le_bytes());
    h
}

/// One `sendmsg` of `parts`, with `fds` attached. Returns the bytes sent, which may be fewer
/// than the total; the descriptors went with them when the count is not zero.
pub(crate) fn send_parts(
    socket: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
    nonblocking: bool,
) -> io::Result<usize> {
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut flags = SendFlags::NOSIGNAL;
    if nonblocking {
        flags |= SendFlags::DONTWAIT;
    }
    let n = if fds.is_empty() {
        rustix::net::sendmsg(socket, &iov, &mut SendAncillaryBuffer::default(), flags)?
    } else {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let pushed = control.push(SendAncillaryMessage::ScmRights(fds));
        assert!(pushed, "at most MAX_FDS descriptors per frame");
        rustix::net::sendmsg(socket, &iov, &mut control, flags)?
    };
    Ok(n)
}

/// Sends all of `parts` as one frame, blocking until the kernel took every byte (the worker's
/// way of writing; the parent never blocks on a worker). The descriptors go in groups of
/// [`MAX_FDS`], each group with one byte of the frame and the last group with the rest (see
/// the module documentation).
pub(crate) fn send_all(
    socket: BorrowedFd<'_>,
    parts: &[&[u8]],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    assert!(
        fds.len() <= total * MAX_FDS,
        "every group of descriptors needs a byte to travel with"
    );
    let mut sent = 0;
    let mut fds = fds;
    while sent < total {
        let group = fds.len().min(MAX_FDS);
        let mut rest = remaining(parts, sent);
        if fds.len() > MAX_FDS {
            // More groups follow: this one travels with a single byte.
            rest = vec![&rest[0][..1]];
        }
        match send_parts(socket, &rest, &fds[..group], false) {
            Ok(n) => {
                sent += n;
                fds = &fds[group..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The parts left after the first `skip` bytes.
fn remaining<'a>(parts: &[&'a [u8]], mut skip: usize) -> Vec<&'a [u8]> {
    let mut rest = Vec::with_capacity(parts.len());
    for part in parts {
        if skip >= part.len() {
            skip -= part.len();
        } else {
            rest.push(&part[skip..]);
            skip = 0;
        }
    }
    rest
}

/// Bytes queued for a socket that would have blocked, oldest first. The parent's side of a
/// worker socket: the supervisor flushes it when the socket turns writable.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    frames: VecDeque<Pending>,
}

#[derive(Debug)]
struct Pending {
    bytes: Vec<u8>,
    sent: usize,
    /// Descriptors still to attach: they go with the first `sendmsg` of this frame.
    fds: Vec<SharedFd>,
}

impl Outbox {
    /// Whether everything queued has been sent.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Sends one frame without blocking: directly when nothing is queued before it, else (or
    /// for what the socket did not take) by queueing it. Returns `true` when bytes remain
    /// queued, so the caller must wait for the socket to turn writable.
    pub(crate) fn send(
        &mut self,
        socket: BorrowedFd<'_>,
        parts: &[&[u8]],
        fds: &[SharedFd],
    ) -> io::Result<bool> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut sent = 0;
        let mut fds_sent = false;
        if self.frames.is_empty() {
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
            loop {
                match send_parts(socket, parts, &borrowed, true) {
                    Ok(n) => {
                        sent = n;
                        fds_sent = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if sent == total {
                return Ok(false);
            }
        }
        let rest = remaining(parts, sent);
        self.frames.push_back(Pending {
            bytes: rest.concat(),
            sent: 0,
            fds: if fds_sent { Vec::new() } else { fds.to_vec() },
        });
        Ok(true)
    }

    /// Sends what the socket takes without blocking. Returns `true` when bytes remain.
    pub(crate) fn flush(&mut self, socket: BorrowedFd<'_>) -> io::Result<bool> {
        while let Some(front) = self.frames.front_mut() {
            let borrowed: Vec<BorrowedFd<'_>> = front.fds.iter().map(|fd| fd.as_fd()).collect();
            match send_parts(socket, &[&front.bytes[front.sent..]], &borrowed, true) {
                Ok(n) => {
                    front.fds.clear();
                    front.sent += n;
                    if front.sent == front.bytes.len() {
                        self.frames.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }
}

/// One frame parsed from a [`FrameReader`], not decoded yet; the body borrows the reader's
/// buffer. [`RawFrame::parent_message`] and [`RawFrame::worker_message`] decode it.
#[derive(Debug)]
pub(crate) struct RawFrame<'a> {
    kind: Kind,
    tag: u64,
    body: &'a [u8],
    fds: Vec<OwnedFd>,
}

/// Reads frames from a socket: a byte buffer plus the queue of descriptors received so far.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
}

/// What one [`FrameReader::fill`] saw.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Read this many bytes.
    Data(usize),
    /// The peer closed its end.
    Eof,
    /// Nothing to read now (non-blocking reads only).
    Empty,
}

impl FrameReader {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            fds: VecDeque::new(),
        }
    }

    /// One `recvmsg` into the free end of the buffer (growing it to hold at least the frame
    /// being parsed), queueing any descriptors that came with the bytes.
    pub(crate) fn fill(&mut self, socket: BorrowedFd<'_>, nonblocking: bool) -> io::Result<Fill> {
        self.make_room();
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut flags = RecvFlags::CMSG_CLOEXEC;
        if nonblocking {
            flags |= RecvFlags::DONTWAIT;
        }
        let received = loop {
            let mut iov = [IoSliceMut::new(&mut self.buf[self.end..])];
            match rustix::net::recvmsg(socket, &mut iov, &mut control, flags) {
                Ok(r) => break r,
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) if nonblocking => return Ok(Fill::Empty),
                Err(e) => return Err(e.into()),
            }
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                self.fds.extend(fds);
            }
        }
        if received.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "descriptors were dropped: more than MAX_FDS in one message",
            ));
        }
        if received.bytes == 0 {
            return Ok(Fill::Eof);
        }
        self.end += received.bytes;
        Ok(Fill::Data(received.bytes))
    }

    /// Moves unread bytes to the front and grows the buffer so the next read has room for at
    /// least the rest of the frame being parsed.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 4 * READ_CHUNK {
                // Give back the memory of a past large frame.
                self.buf = vec![0; READ_CHUNK];
            }
        }
        let needed = match self.peek_len() {
            Some(body) => HEADER_LEN + body,
            None => HEADER_LEN,
        }
        .max(READ_CHUNK);
        if self.buf.len() - self.start < needed || self.buf.len() - self.end < READ_CHUNK / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < needed {
                self.buf.resize(needed, 0);
            }
        }
    }

    /// The body length of the frame being parsed, once its header is here and valid (a
    /// known kind): the buffer never grows for a header that is garbage.
    fn peek_len(&self) -> Option<usize> {
        parse_header(&self.buf[self.start..self.end])
            .filter(|&(_, fds, _, _)| fds <= MAX_RESULT_FDS)
            .map(|(_, _, _, len)| len)
    }

    /// The next complete frame in the buffer, if there is one.
    ///
    /// # Errors
    ///
    /// An unknown kind, or a frame that counts more descriptors than arrived: the peer does
    /// not speak this protocol, and the connection is unusable.
    pub(crate) fn next_frame(&mut self) -> io::Result<Option<RawFrame<'_>>> {
        let Some(body_len) = self.peek_len() else {
            if self.end - self.start >= HEADER_LEN {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a frame header with an unknown kind or too many descriptors",
                ));
            }
            return Ok(None);
        };
        if self.end - self.start < HEADER_LEN + body_len {
            return Ok(None);
        }
        let (kind, nfds, tag, _) =
            parse_header(&self.buf[self.start..self.end]).expect("peek_len parsed it");
        if nfds > self.fds.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a frame counts descriptors that did not arrive",
            ));
        }
        let fds = self.fds.drain(..nfds).collect();
        let body_start = self.start + HEADER_LEN;
        self.start = body_start + body_len;
        Ok(Some(RawFrame {
            kind,
            tag,
            body: &self.buf[body_start..body_start + body_len],
            fds,
        }))
    }

    /// Whether a whole frame is buffered, so [`next_frame`](Self::next_frame) returns one.
    /// (Or a header that does not parse, which `next_frame` reports.)
    pub(crate) fn has_frame(&self) -> bool {
        let avail = self.end - self.start;
        avail >= HEADER_LEN
            && self
                .peek_len()
                .is_none_or(|body| avail >= HEADER_LEN + body)
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    use std::io::{Read, Seek, Write};

    fn pair() -> (OwnedFd, OwnedFd) {
        rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap()
    }

    fn temp_file(contents: &[u8]) -> OwnedFd {
        let fd = rustix::fs::memfd_create("wire-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let mut file = std::fs::File::from(fd);
        file.write_all(contents).unwrap();
        OwnedFd::from(file)
    }

    fn read_back(fd: OwnedFd) -> Vec<u8> {
        let mut file = std::fs::File::from(fd);
        file.rewind().unwrap();
        let mut out = Vec::new();
        file.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn smoke_frames_in_order() {
        let (a, b) = pair();
        for i in 0..100u64 {
            let body = i.to_le_bytes();
            let h = header(Kind::Job, i, body.len(), 0);
            send_all(a.as_fd(), &[&h, &body], &[]).unwrap();
        }
        let mut reader = FrameReader::new();
        let mut seen = 0u64;
        while seen < 100 {
            assert!(matches!(
                reader.fill(b.as_fd(), false).unwrap(),
                Fill::Data(_)
            ));
            while let Some(frame) = reader.next_frame().unwrap() {
                assert_eq!(frame.kind, Kind::Job);
                assert_eq!(frame.tag, seen);
                assert_eq!(frame.body, seen.to_le_bytes());
                seen += 1;
            }
        }
        drop(a);
        assert_eq!(reader.fill(b.as_fd(), false).unwrap(), Fill::Eof);
    }

    #[test]
    fn fds_travel_with_their_frame_both_ways() {
        let (a, b) = pair();
        let one: SharedFd = Arc::new(temp_file(b"one"));
        let two: SharedFd = Arc::new(temp_file(b"two"));
        // a -> b: a plain frame, then one with two descriptors, then a plain one.
        let mut outbox = Outbox::default();
        for (tag, fds) in [
            (1, vec![]),
            (2, vec![one.clone(), two.clone()]),
            (3, vec![]),
        ] {
            let h = header(Kind::Job, tag, 3, fds.len());
            assert!(!outbox.send(a.as_fd(), &[&h, b"abc"], &fds).unwrap());
        }
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        while got.len() < 3 {
            reader.fill(b.as_fd(), false).unwrap();
            while let Some(frame) = reader.next_frame().unwrap() {
                got.push((frame.tag, frame.fds));
            }
        }
        assert_eq!(got[0].1.len(), 0);
        assert_eq!(got[2].1.len(), 0);
        let mut fds = std::mem::take(&mut got[1].1).into_iter();
        assert_eq!(read_back(fds.next().unwrap()), b"one");
        let back = fds.next().unwrap();
        // b -> a: send a received descriptor back.
        let h = header(Kind::Result, 9, 0, 1);
        send_all(b.as_fd(), &[&h], &[back.as_fd()]).unwrap();
        let mut reader = FrameReader::new();
        reader.fill(a.as_fd(), false).unwrap();
        let frame = reader.next_frame().unwrap().unwrap();
        assert_eq!(frame.tag, 9);
        let mut fds = frame.fds;
        assert_eq!(read_back(fds.pop().unwrap()), b"two");
    }

    #[test]
    fn stress_large_frame_through_outbox() {
        let (a, b) = pair();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let h = header(Kind::Result, 5, big.len(), 0);
        let reader_thread = std::thread::spawn(move || {
            let mut reader = FrameReader::new();
            loop {
                if let Some(frame) = reader.next_frame().unwrap() {
                    return (frame.tag, frame.body.to_vec());
                }
                reader.fill(b.as_fd(), false).unwrap();
            }
        });
        let mut outbox = Outbox::default();
        let mut pending = outbox.send(a.as_fd(), &[&h, &big], &[]).unwrap();
        while pending {
            std::thread::yield_now();
            pending = outbox.flush(a.as_fd()).unwrap();
        }
        let (tag, body) = reader_thread.join().unwrap();
        assert_eq!(tag, 5);
        assert!(body == big);
    }

    #[test]
    fn stress_more_descriptors_than_one_message_carries() {
        let (a, b) = pair();
        let files: Vec<OwnedFd> = (0..150u32).map(|i| temp_file(&i.to_le_bytes())).collect();
        let borrowed: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
        let mut frame = Vec::new();
        begin_result(&mut frame);
        frame.extend_from_slice(&[5u8; 40]);
        finish_result(&mut frame, 11, None, files.len());
        send_all(a.as_fd(), &[&frame], &borrowed).unwrap();
        drop(a);
        let mut reader = FrameReader::new();
        loop {
            if reader.has_frame() {
                break;
            }
            assert_ne!(reader.fill(b.as_fd(), false).unwrap(), Fill::Eof);
        }
        let ToParent::Result(result) = reader
            .next_frame()
            .unwrap()
            .unwrap()
            .parent_message()
            .unwrap()
        else {
            panic!("a Result");
        };
        assert_eq!(result.id, 11);
        assert_eq!(result.outcome.unwrap(), [5u8; 40]);
        assert_eq!(result.fds.len(), 150);
        for (i, fd) in result.fds.into_iter().enumerate() {
            assert_eq!(read_back(fd), (i as u32).to_le_bytes());
        }
    }

    #[test]
    fn typed_frames_round_trip() {
        let (a, b) = pair();
        let call = Call {
            trampoline: -5,
            function: 77,
        };
        let prefix = job_prefix(3, call, 2, 0);
        send_all(a.as_fd(), &[&prefix, b"xy"], &[]).unwrap();
        send_all(a.as_fd(), &[&release(SegmentId { dev: 1, ino: 2 })], &[]).unwrap();
        let mut reader = FrameReader::new();
        while !reader.has_frame() {
            reader.fill(b.as_fd(), false).unwrap();
        }
        match reader
            .next_frame()
            .unwrap()
            .unwrap()
            .worker_message()
            .unwrap()
        {
            ToWorker::Job(job) => {
                assert_eq!((job.id, job.call, job.arg), (3, call, &b"xy"[..]));
            }
            other => panic!("{other:?}"),
        }
        while !reader.has_frame() {
            reader.fill(b.as_fd(), false).unwrap();
        }
        let frame = reader.next_frame().unwrap().unwrap();
        assert!(matches!(frame.worker_message(), Ok(ToWorker::Release(_))));
        // A worker never receives a Ready; a parent never receives a Job.
        send_all(a.as_fd(), &[&ready()], &[]).unwrap();
        send_all(b.as_fd(), &[&prefix, b"xy"], &[]).unwrap();
        while !reader.has_frame() {
            reader.fill(b.as_fd(), false).unwrap();
        }
        assert!(
            reader
                .next_frame()
                .unwrap()
                .unwrap()
                .worker_message()
                .is_err()
        );
        let mut reader = FrameReader::new();
        while !reader.has_frame() {
            reader.fill(a.as_fd(), false).unwrap();
        }
        assert!(
            reader
                .next_frame()
                .unwrap()
                .unwrap()
                .parent_message()
                .is_err()
        );
    }

    #[test]
    fn unknown_kind_is_an_error() {
        let (a, b) = pair();
        let mut h = header(Kind::Job, 0, 0, 0);
        h[4] = 200;
        send_all(a.as_fd(), &[&h], &[]).unwrap();
        let mut reader = FrameReader::new();
        reader.fill(b.as_fd(), false).unwrap();
        assert!(reader.next_frame().is_err());
    }
}
