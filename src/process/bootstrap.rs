//! Worker start: re-executing the current executable, and the entry that runs before `main`.
//!
//! # How a worker starts
//!
//! 1. The pool's supervisor thread (long-lived: a worker's parent-death signal fires when the
//!    *thread* that spawned it exits) makes a `SOCK_STREAM` socketpair, both ends
//!    `SOCK_CLOEXEC`, and spawns `/proc/self/exe` with `std::process::Command`:
//!    - the worker's end becomes the child's standard input. `posix_spawn` `dup2`s it onto
//!      fd 0, which is the only way to hand one descriptor to the child without `pre_exec`
//!      and without clearing `FD_CLOEXEC` in the parent, where another thread spawning at the
//!      same moment would inherit it;
//!    - `PARPOOL_WORKER=<parent pid>:<nonce>` in its environment marks it as a worker, and
//!      the parent writes the same random nonce on the socket before spawning it: worker
//!      mode needs both (see [Proof of origin](#proof-of-origin));
//!    - `process_group(0)` puts it in its own process group, so Ctrl-C in a terminal reaches
//!      the parent only, and the parent decides what happens to its jobs;
//!    - no `pre_exec`: std then uses `posix_spawn` (a `vfork`-style clone that does not copy
//!      the parent's page tables), ~1 ms whatever the parent's size, where a `pre_exec`
//!      forces a full `fork` (17 ms at 1 GiB of parent RSS, 65 ms at 4 GiB).
//!      `/proc/self/exe` names the image the parent runs even if its file was replaced on
//!      disk since.
//! 2. In the new process the C runtime runs the `.init_array` constructors before Rust's
//!    `main`. Ours ([`BEFORE_MAIN`]) sees `PARPOOL_WORKER` and runs the worker loop
//!    (`worker::run`), which exits the process: the program's `main` never runs in a worker.
//!    That is why no code in `main` is needed, in programs, `cargo test` binaries, doctests,
//!    examples or benches.
//! 3. The worker's first frame is a `Hello` with the fingerprint of its image; the parent
//!    checks it against its own before it sends a single function offset (see `supervisor`).
//!
//! # Proof of origin
//!
//! A stray `PARPOOL_WORKER` (a variable leaked into a CI job's environment, say) must not
//! turn an ordinary run of a program into a silent worker that exits before `main`. So a
//! process is a worker only when its standard input is a socket whose first
//! [`NONCE_LEN`] bytes, read without consuming them (`MSG_PEEK | MSG_DONTWAIT`), equal the
//! 128-bit nonce in the variable: the parent made both, from `getrandom`, for this one
//! worker. Anything else (no socket, no bytes yet, other bytes, a malformed value) and the
//! program runs normally, with the variable left as it was.
//!
//! # When the constructor does not run
//!
//! On a platform or linker that drops `.init_array` entries, [`init`] is the fallback: called
//! first thing in `main`, it does what the constructor would have done. The constructor also
//! runs in the parent (it returns at once there) and records that it ran, so a pool refuses
//! to start when neither the constructor nor `init` ran, with an error that says to call
//! `init`. If a worker somehow reaches a pool constructor with `PARPOOL_WORKER` still set (it
//! runs `main` without having called `init` first), it reports the missed bootstrap to its
//! parent and exits; the parent turns that, or a worker silent past the startup timeout, into
//! a startup error that says the same.
//!
//! # Naming functions across processes
//!
//! A job function is a plain `fn(A) -> R`, named in the wire protocol by its offset from
//! [`anchor`], a function of this crate. The parent and its workers run the same image, and
//! position-independent executables are relocated as a whole, so the offset means the same
//! function in both even though ASLR puts the image at different addresses. Offsets are only
//! valid for functions in the same loaded object as the anchor, which must be the main
//! executable (the worker re-executes that, not a library); [`in_main_image`] checks both.

use std::ffi::{c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::wire::{Fingerprint, NONCE_LEN};
use super::worker;
use crate::ProcessError;

/// The environment variable that marks a worker process; its value is the parent's pid and
/// the worker's nonce in hex, `<pid>:<nonce>`.
pub(crate) const ENV_WORKER: &str = "PARPOOL_WORKER";

/// What to do when the bootstrap did not run, for error messages.
pub(crate) const BOOTSTRAP_ADVICE: &str = "the parpool worker bootstrap did not run before \
     `main` in this executable (its `.init_array` constructor was dropped by the platform or \
     linker); call `parpool::process::init()` as the first statement of `main`";

/// Set by the constructor in every process of an executable where it runs.
static CONSTRUCTOR_RAN: AtomicBool = AtomicBool::new(false);

/// Set by [`init`].
static INIT_CALLED: AtomicBool = AtomicBool::new(false);

/// The signature the C runtime calls `.init_array` entries with.
type InitArrayFn = extern "C" fn(c_int, *const *const c_char, *const *const c_char);

/// The constructor entry: the C runtime calls it before `main` in every process of an
/// executable that links this crate.
#[used]
#[unsafe(link_section = ".init_array")]
static BEFORE_MAIN: InitArrayFn = before_main;

extern "C" fn before_main(_argc: c_int, _argv: *const *const c_char, _env: *const *const c_char) {
    CONSTRUCTOR_RAN.store(true, Ordering::Relaxed);
    enter_if_worker();
}

/// Runs the worker loop, never to return, when this process is a parpool worker.
fn enter_if_worker() {
    if let Some(parent) = worker_parent() {
        worker::run(parent);
    }
}

/// The parent pid, when this process is a parpool worker: `PARPOOL_WORKER` is set, well
/// formed, and its nonce waits on standard input (see [Proof of origin](self#proof-of-origin)).
fn worker_parent() -> Option<u32> {
    let value = std::env::var_os(ENV_WORKER)?;
    let (parent, nonce) = value.to_str()?.split_once(':')?;
    let parent = parent.parse().ok()?;
    let nonce = parse_nonce(nonce)?;
    let mut seen = [0u8; NONCE_LEN];
    let peeked = rustix::net::recv(
        rustix::stdio::stdin(),
        &mut seen,
        rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
    );
    match peeked {
        Ok((n, _)) if n == NONCE_LEN && seen == nonce => Some(parent),
        _ => None,
    }
}

/// A nonce as the parent writes it in the environment: lowercase hex.
fn format_nonce(nonce: &[u8; NONCE_LEN]) -> String {
    nonce.iter().map(|b| format!("{b:02x}")).collect()
}

/// The inverse of [`format_nonce`].
fn parse_nonce(hex: &str) -> Option<[u8; NONCE_LEN]> {
    if hex.len() != 2 * NONCE_LEN || !hex.is_ascii() {
        return None;
    }
    let mut nonce = [0u8; NONCE_LEN];
    for (i, byte) in nonce.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(nonce)
}

/// A fresh random nonce.
fn new_nonce() -> io::Result<[u8; NONCE_LEN]> {
    let mut nonce = [0u8; NONCE_LEN];
    let mut filled = 0;
    while filled < NONCE_LEN {
        // SAFETY: the pointer and length describe the unfilled tail of `nonce`, which lives
        // across the call; getrandom writes at most that many bytes.
        let n =
            unsafe { libc::getrandom(nonce[filled..].as_mut_ptr().cast(), NONCE_LEN - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(nonce)
}

/// The fallback worker entry for platforms where the constructor does not run: call it as the
/// first statement of `main`. In a worker process it runs the worker loop and exits the
/// process; everywhere else it returns at once.
///
/// On Linux with the usual linkers you do not need it: an `.init_array` constructor takes over
/// worker processes before `main`. A pool notices when neither ran and fails to start with
/// an error saying to call `init`.
///
/// Call it before the program starts other threads (it edits the environment of a worker
/// process).
///
/// # Examples
///
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() {
///     parpool::process::init(); // in a worker: runs the worker loop and never returns
///     // ... the program, which may use a ProcessPool ...
///     let procs = parpool::ProcessPool::new(1).unwrap();
///     assert_eq!(procs.map([3], square).unwrap(), [9]);
/// }
/// # main();
/// ```
pub fn init() {
    INIT_CALLED.store(true, Ordering::Relaxed);
    enter_if_worker();
}

/// Checks that this process may start workers: a worker's bootstrap must have had a chance to
/// run (the constructor or [`init`]), and this process must not be a worker running `main`.
pub(crate) fn check_bootstrap() -> Result<(), ProcessError> {
    if worker_parent().is_some() {
        // A worker that runs the program's `main`: neither the constructor nor `init` ran
        // here. Tell the parent instead of running the program a second time.
        worker::report_missed_bootstrap();
    }
    if !CONSTRUCTOR_RAN.load(Ordering::Relaxed) && !INIT_CALLED.load(Ordering::Relaxed) {
        return Err(ProcessError::startup(BOOTSTRAP_ADVICE, None));
    }
    if !in_main_image(anchor as fn() as usize) {
        return Err(ProcessError::startup(
            "parpool is not linked into the main executable (it lives in a dynamic library), \
             so a re-executed worker would not contain it",
            None,
        ));
    }
    Ok(())
}

/// Spawns one worker process: `/proc/self/exe` with the worker end of a new socketpair as its
/// standard input. Returns the child and the parent's end.
pub(crate) fn spawn() -> io::Result<(Child, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // The nonce goes on the socket first: the worker's proof of origin. A fresh socket's
    // buffer takes 16 bytes without blocking.
    let nonce = new_nonce()?;
    super::wire::send_all(ours.as_fd(), &[&nonce], &[])?;
    // Keeps the constructor's object in the link of every program that spawns workers.
    std::hint::black_box(&BEFORE_MAIN);
    let child = Command::new("/proc/self/exe")
        .arg0("parpool-worker")
        .env(
            ENV_WORKER,
            format!("{}:{}", std::process::id(), format_nonce(&nonce)),
        )
        .stdin(Stdio::from(theirs))
        .process_group(0)
        .spawn()?;
    Ok((child, ours))
}

/// The reference point of function offsets. `inline(never)` and used only by address.
#[inline(never)]
fn anchor() {
    std::hint::black_box(());
}

/// A second known function: its offset from the anchor is part of the image fingerprint.
#[inline(never)]
fn probe() -> u64 {
    std::hint::black_box(0x7061_7270_6f6f_6c21)
}

/// The offset of a code address from the anchor.
pub(crate) fn offset_of(address: usize) -> i64 {
    address.wrapping_sub(anchor as fn() as usize) as i64
}

/// The code address at an offset from the anchor (the inverse of [`offset_of`] within one
/// image).
pub(crate) fn address_of(offset: i64) -> usize {
    (anchor as fn() as usize).wrapping_add(offset as usize)
}

/// The base address of the loaded object containing `address`, from `dladdr`.
fn object_base(address: usize) -> Option<usize> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::uninit();
    // SAFETY: `dladdr` only reads the dynamic loader's tables and writes `info`, a valid
    // out-pointer; it accepts any address.
    let found = unsafe { libc::dladdr(address as *const c_void, info.as_mut_ptr()) };
    if found == 0 {
        return None;
    }
    // SAFETY: `dladdr` returned non-zero, so it initialised `info`.
    let info = unsafe { info.assume_init() };
    Some(info.dli_fbase as usize)
}

/// Whether `address` lies in the main executable, the object a worker re-executes.
pub(crate) fn in_main_image(address: usize) -> bool {
    static MAIN_BASE: OnceLock<Option<usize>> = OnceLock::new();
    // SAFETY: `getauxval` reads the auxiliary vector the kernel passed at exec; AT_PHDR is
    // the address of the main executable's program headers, mapped inside it.
    let main =
        *MAIN_BASE.get_or_init(|| object_base(unsafe { libc::getauxval(libc::AT_PHDR) } as usize));
    main.is_some() && object_base(address) == main
}

/// The fingerprint of the image this process runs (see [`Fingerprint`]).
pub(crate) fn fingerprint() -> io::Result<Fingerprint> {
    let stat = rustix::fs::stat("/proc/self/exe")?;
    Ok(Fingerprint {
        dev: stat.st_dev,
        ino: stat.st_ino,
        size: stat.st_size as u64,
        mtime: stat.st_mtime,
        mtime_nsec: stat.st_mtime_nsec as i64,
        probe: offset_of(probe as fn() -> u64 as usize),
    })
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn nonce_round_trips_and_rejects_malformed_values() {
        let nonce = new_nonce().unwrap();
        assert_ne!(nonce, new_nonce().unwrap(), "fresh nonces differ");
        assert_eq!(parse_nonce(&format_nonce(&nonce)), Some(nonce));
        for bad in [
            "",
            "00",
            "zz112233445566778899aabbccddeeff",
            "é0112233445566778899aabbccddeef",
        ] {
            assert_eq!(parse_nonce(bad), None, "{bad:?}");
        }
    }
}
