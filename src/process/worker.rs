//! The loop inside a worker process, and the trampolines that run a job's function.
//!
//! # Lifecycle of a worker
//!
//! 1. **Start** (before `main`, from the constructor, or from `init`, once the nonce on
//!    standard input proved that the parent made this process; see `bootstrap`): close every
//!    inherited descriptor from 3 up (`close_range`: under MPI a process inherits 3 to ~15,
//!    the PMI socket among them, which a worker must not hold), consume the nonce, remove
//!    `PARPOOL_WORKER` from the environment, so processes a job starts are not workers; set
//!    `PR_SET_PDEATHSIG` to a realtime signal whose handler `SIGKILL`s the worker's process
//!    group (the worker and what its jobs forked; `die_with_parent`), then check that `getppid()` is still the pid the parent
//!    wrote in the environment: a parent that died before the `prctl` would never send the
//!    signal, so the worker exits. Move the socket from fd 0 to a close-on-exec descriptor
//!    and put `/dev/null` on fd 0; ignore `SIGPIPE`, as Rust's runtime does before `main`.
//! 2. **Handshake**: send `Hello` (pid, image fingerprint); read `Init`; run the initializer,
//!    if any, under `catch_unwind`; send `Ready`, or `InitFailed` with the panic message and
//!    exit.
//! 3. **Jobs**: run `Job` frames one at a time in the order they arrive, marking each as
//!    started in the ring before it runs (so the parent can tell, after a death, whether the
//!    job had started), and publish each
//!    job's result before starting the next (in the result ring that came with `Init`, or as
//!    a `Result` frame when it is large), so the parent knows which job was running when a
//!    worker dies. A panic is caught and becomes a failed result; the worker
//!    goes on. After `max_tasks` jobs (when set) the worker exits with status 0.
//!    Descriptors that come with a job are shared-memory segments: mapped (once) and kept
//!    until the parent's `Release` frame; the descriptors of the segments a result names go
//!    back with that result, on the socket.
//! 4. **End**: EOF on the socket (the parent closed it, or died) → exit with status 0. If the
//!    parent process dies the kernel sends the parent-death signal, whose handler kills the
//!    worker's process group, even if a job is stuck and never reads the socket again.

use std::any::type_name;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::bootstrap::{self, ENV_WORKER};
use super::ring::{self, Ring};
use super::wire::{self, Call, Failure, Fill, FrameReader, Hello, ToWorker};
use crate::shm::segment::{self, Segment, SegmentId};

/// Exit status of a worker whose parent was already gone when it started.
const EXIT_ORPHANED: i32 = 0;
/// Exit status when the parent sent something this worker does not understand.
pub(crate) const EXIT_PROTOCOL: i32 = 112;
/// Exit status after the initializer panicked.
pub(crate) const EXIT_INIT_FAILED: i32 = 113;
/// Exit status after an internal error of the worker loop (not of a job).
pub(crate) const EXIT_INTERNAL: i32 = 114;
/// Exit status of a worker that reached `main` without its bootstrap.
pub(crate) const EXIT_MISSED_BOOTSTRAP: i32 = 115;

/// The function the worker calls for a job, by the offset the parent sent. `call_one` and
/// `call_chunk` instantiated for the job's types. `func` is the address of the user's
/// `fn(A) -> R`; the encoded result is appended to `out`.
/// On success it returns the result's type name (for a later error about the result).
pub(crate) type Trampoline =
    fn(func: usize, arg: &[u8], out: &mut Vec<u8>) -> Result<&'static str, Failure>;

/// Runs a worker to the end and exits the process.
pub(crate) fn run(parent: u32) -> ! {
    let code = catch_unwind(|| match serve(parent) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("parpool worker {}: {e}", std::process::id());
            EXIT_INTERNAL
        }
    })
    .unwrap_or(EXIT_INTERNAL);
    std::process::exit(code)
}

fn serve(parent: u32) -> io::Result<i32> {
    close_inherited()?;
    let mut nonce = [0u8; wire::NONCE_LEN];
    let (n, _) = rustix::net::recv(
        rustix::stdio::stdin(),
        &mut nonce,
        rustix::net::RecvFlags::WAITALL,
    )?;
    if n != wire::NONCE_LEN {
        return Ok(EXIT_PROTOCOL);
    }
    // SAFETY: this runs before `main` (from the constructor) or as the first statement of
    // `main` (`init`, documented to be called before other threads start), so no other
    // thread reads or writes the environment concurrently.
    unsafe { std::env::remove_var(ENV_WORKER) };
    die_with_parent()?;
    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
        return Ok(EXIT_ORPHANED);
    }
    let socket = take_stdin()?;
    // SAFETY: SIG_IGN installs no handler code; this mirrors what Rust's runtime does before
    // `main`, so a job writing to a closed pipe gets EPIPE instead of dying.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

    let hello = Hello {
        pid: std::process::id(),
        fingerprint: bootstrap::fingerprint()?,
    };
    send(&socket, &wire::hello(&hello))?;

    let mut reader = FrameReader::new();
    let init = next_frame(&mut reader, &socket, |frame| match frame.worker_message() {
        Ok(ToWorker::Init { init, ring }) => Some((init, ring)),
        _ => None,
    })?;
    let (init, ring) = match init {
        None => return Ok(0),
        Some(None) => return Ok(EXIT_PROTOCOL),
        Some(Some(init)) => init,
    };
    let ring = Ring::open(ring)?;
    if let Some(offset) = init.initializer {
        let address = bootstrap::address_of(offset);
        if !bootstrap::in_main_image(address) {
            return Ok(EXIT_PROTOCOL);
        }
        // SAFETY: the parent derived this offset from a `fn()` it checked to be in the main
        // image (`supervisor::start`), after the handshake proved that this process runs the
        // same image; the address was just checked to lie in this process's main image.
        let initializer: fn() = unsafe { std::mem::transmute(address) };
        if let Err(payload) = catch_unwind(initializer) {
            send(&socket, &wire::init_failed(&panic_message(&*payload)))?;
            return Ok(EXIT_INIT_FAILED);
        }
    }
    send(&socket, &wire::ready())?;

    let mut out = Vec::new();
    let mut done = 0u64;
    // Segments the parent sent, kept until it releases them: it sends each descriptor once.
    let mut known: HashMap<SegmentId, Arc<Segment>> = HashMap::new();
    loop {
        let step = next_frame(&mut reader, &socket, |frame| match frame.worker_message() {
            Ok(ToWorker::Job(job)) => {
                let _stale = segment::take_decode_error();
                for fd in job.fds {
                    match Segment::adopt(fd) {
                        Ok(seg) => {
                            known.insert(seg.id(), seg);
                        }
                        Err(e) => segment::set_decode_error(format!(
                            "could not map a shared-memory segment: {e}"
                        )),
                    }
                }
                ring.mark_started(job.id);
                Step::Ran(run_job(job.id, job.call, job.arg, &mut out))
            }
            Ok(ToWorker::Release(id)) => {
                known.remove(&id);
                Step::Released
            }
            Ok(ToWorker::Init { .. }) | Err(_) => Step::Broken,
        })?;
        let segments = match step {
            None => return Ok(0),
            Some(Step::Broken) => return Ok(EXIT_PROTOCOL),
            Some(Step::Released) => continue,
            Some(Step::Ran(segments)) => segments,
        };
        if segments.is_empty() && out.len() <= ring::MAX_RECORD {
            ring.publish(&out, || send(&socket, &wire::doorbell()))?;
        } else {
            let fds: Vec<BorrowedFd<'_>> = segments.iter().map(|s| s.fd().as_fd()).collect();
            wire::send_all(socket.as_fd(), &[&out], &fds)?;
        }
        done += 1;
        if done == init.max_tasks {
            return Ok(0);
        }
    }
}

/// Closes every descriptor from 3 up: what the process inherited beyond the standard three
/// (the socket is still on fd 0 here). `close_range` (Linux 5.9); on older kernels, each
/// descriptor `/proc/self/fd` lists.
fn close_inherited() -> io::Result<()> {
    // SAFETY: close_range takes plain integers; closing descriptors this process does not use
    // (nothing has run yet but the C runtime and constructors) has no memory effects.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed == 0 {
        return Ok(());
    }
    let listed: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd >= 3)
        .collect();
    for fd in listed {
        // SAFETY: as above; the directory's own descriptor is closed already (EBADF).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// The parent-death signal: when the parent's supervisor thread ends (the parent died),
/// the kernel sends it to the worker, whose handler kills the worker's whole process group.
/// A realtime signal, so that jobs, which may use the classic ones, do not meet it.
fn parent_death_signal() -> libc::c_int {
    libc::SIGRTMAX()
}

/// Kills the worker's process group, the worker included: what a job forked dies with the
/// worker when the parent died and nobody is left to reap the worker and kill its group.
extern "C" fn on_parent_death(_: libc::c_int) {
    // SAFETY: getpid and kill are async-signal-safe and have no memory effects. The worker
    // leads its process group (`process_group(0)` at spawn), so the group's id is its pid;
    // the second kill covers a job that moved the worker to another group.
    unsafe {
        let me = libc::getpid();
        libc::kill(-me, libc::SIGKILL);
        libc::kill(me, libc::SIGKILL);
    }
}

/// Sets the parent-death signal and its handler (which kills the worker's process group).
///
/// The signal used to be `SIGKILL`, which ended the worker but left what its jobs forked
/// running once the parent died (`workers_die_with_their_parent` checks the group). A job
/// that blocks this signal, or installs its own handler for it, keeps its worker alive after
/// the parent's death until the job ends and the worker reads EOF.
fn die_with_parent() -> io::Result<()> {
    let signal = parent_death_signal();
    // SAFETY: `action` is zeroed (no flags, empty mask) then given a handler that only calls
    // async-signal-safe functions; sigaction and prctl take plain values and pointers to
    // locals.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_parent_death as extern "C" fn(libc::c_int) as usize;
        libc::sigfillset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What the worker did with one frame.
enum Step {
    /// Ran a job; its Result frame is in `out`, naming these segments.
    Ran(Vec<Arc<Segment>>),
    /// Let go of a segment.
    Released,
    /// Got a frame it does not expect.
    Broken,
}

/// Moves the socket off fd 0 to a close-on-exec descriptor, and puts `/dev/null` on fd 0.
fn take_stdin() -> io::Result<OwnedFd> {
    let socket = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdin(), 3)?;
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    rustix::stdio::dup2_stdin(&null)?;
    Ok(socket)
}

/// Waits for the next frame and hands it to `handle`. `Ok(None)` at EOF.
fn next_frame<T>(
    reader: &mut FrameReader,
    socket: &OwnedFd,
    handle: impl FnOnce(wire::RawFrame<'_>) -> T,
) -> io::Result<Option<T>> {
    while !reader.has_frame() {
        if reader.fill(socket.as_fd(), false)? == Fill::Eof {
            return Ok(None);
        }
    }
    let frame = reader.next_frame()?.expect("a whole frame is buffered");
    Ok(Some(handle(frame)))
}

/// Sends one encoded frame.
fn send(socket: &OwnedFd, frame: &[u8]) -> io::Result<()> {
    wire::send_all(socket.as_fd(), &[frame], &[])
}

/// Runs one job and leaves its whole Result frame in `out`. Returns the shared-memory
/// segments the result names, whose descriptors must go with the frame.
fn run_job(id: u64, call: Call, arg: &[u8], out: &mut Vec<u8>) -> Vec<Arc<Segment>> {
    wire::begin_result(out);
    // SAFETY: the parent derived `call.trampoline` from a function of type `Trampoline` (an
    // instantiation of `call_one` or `call_chunk`) in this same image; the handshake proved
    // the images are the same.
    let tramp: Trampoline = unsafe { std::mem::transmute(bootstrap::address_of(call.trampoline)) };
    let (result, mut segments) =
        segment::collect(|| tramp(bootstrap::address_of(call.function), arg, out));
    let result = result.and_then(|type_name| {
        if segments.len() > wire::MAX_RESULT_FDS {
            return Err(Failure::EncodeResult {
                type_name: type_name.to_owned(),
                message: format!(
                    "it names {} shared-memory segments; a result may name at most {}",
                    segments.len(),
                    wire::MAX_RESULT_FDS
                ),
            });
        }
        Ok(())
    });
    if result.is_err() {
        segments.clear();
    }
    wire::finish_result(out, id, result.as_ref().err(), segments.len());
    segments
}

/// Tells the parent that this worker reached `main` without its bootstrap, and exits.
pub(crate) fn report_missed_bootstrap() -> ! {
    let _ = wire::send_all(rustix::stdio::stdin(), &[&wire::missed()], &[]);
    eprintln!(
        "parpool worker {}: {}",
        std::process::id(),
        bootstrap::BOOTSTRAP_ADVICE
    );
    std::process::exit(EXIT_MISSED_BOOTSTRAP)
}

/// The message of a panic payload: `&str` and `String` payloads, else a placeholder.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    crate::pool::panic_message(payload)
        .unwrap_or("Box<dyn Any>")
        .to_owned()
}

fn decode<A: DeserializeOwned>(arg: &[u8]) -> Result<A, Failure> {
    wire::decode(arg).map_err(|message| Failure::DecodeArgument {
        type_name: type_name::<A>().to_owned(),
        message,
    })
}

fn encode_into<T: Serialize>(
    value: &T,
    out: &mut Vec<u8>,
    type_name: &'static str,
) -> Result<&'static str, Failure> {
    let buf = std::mem::take(out);
    match postcard::to_extend(value, buf) {
        Ok(buf) => {
            *out = buf;
            Ok(type_name)
        }
        Err(e) => Err(Failure::EncodeResult {
            type_name: type_name.to_owned(),
            message: e.to_string(),
        }),
    }
}

/// The trampoline for one item: decode `A`, call `f`, encode `R`.
pub(crate) fn call_one<A, R>(
    func: usize,
    arg: &[u8],
    out: &mut Vec<u8>,
) -> Result<&'static str, Failure>
where
    A: DeserializeOwned,
    R: Serialize,
{
    let arg: A = decode(arg)?;
    // SAFETY: the parent sent this `func` together with this trampoline's offset, both taken
    // from the same `submit::<A, R>` call, where `func` was a `fn(A) -> R` of this image.
    let f: fn(A) -> R = unsafe { std::mem::transmute(func) };
    let result = catch_unwind(AssertUnwindSafe(|| f(arg)))
        .map_err(|payload| Failure::Panic(panic_message(&*payload)))?;
    encode_into(&result, out, type_name::<R>())
}

/// The trampoline for a chunk: decode `Vec<A>`, call `f` on each item in order, encode
/// `Vec<R>`. A panic fails the whole chunk.
pub(crate) fn call_chunk<A, R>(
    func: usize,
    arg: &[u8],
    out: &mut Vec<u8>,
) -> Result<&'static str, Failure>
where
    A: DeserializeOwned,
    R: Serialize,
{
    let args: Vec<A> = wire::decode(arg).map_err(|message| Failure::DecodeArgument {
        type_name: type_name::<A>().to_owned(),
        message,
    })?;
    // SAFETY: as in `call_one`: `func` is a `fn(A) -> R` of this image, sent together with
    // this trampoline by a `map::<A, R>` call.
    let f: fn(A) -> R = unsafe { std::mem::transmute(func) };
    let results: Vec<R> = catch_unwind(AssertUnwindSafe(|| args.into_iter().map(f).collect()))
        .map_err(|payload| Failure::Panic(panic_message(&*payload)))?;
    encode_into(&results, out, type_name::<R>())
}
