//! The process pool beside its baselines, measured in the same run:
//!
//! - `round_trip`: one `submit` + `get` against a raw socketpair ping-pong between two
//!   processes (the floor: two process wake-ups, no pool);
//! - `map_one_item_per_job` and `map_auto_chunks`: `map` over a `Pool(2)`-sized pool, against
//!   Python's `multiprocessing.Pool(2).map` (run from `benches/python/process_baseline.py`
//!   when `python3` is present);
//! - `crash`: from the moment a job aborts its worker to the error in the caller, and to the
//!   next job finishing on the replacement worker.
//!
//! The summary at the end prints each median and its ratio to the baseline.
//!
//! ```text
//! cargo bench --bench process -- --warm-up-time 1 --measurement-time 3
//! ```

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{baseline_value, median_ns, python_baseline};

use criterion::{BenchmarkId, Criterion, Throughput};
use parpool::ProcessPool;

/// Items of the one-item-per-job map (the Python baseline uses the same count).
const ONE_ITEM_N: u64 = 20_000;
/// Items of the auto-chunked map (the Python baseline uses the same count).
const AUTO_N: u64 = 2_000_000;

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

/// Nanoseconds of CLOCK_MONOTONIC: the same clock in every process of the machine.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the valid timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits until `at` (monotonic ns), then aborts the worker.
fn abort_at(at: u64) {
    while monotonic_ns() < at {
        std::hint::spin_loop();
    }
    std::process::abort();
}

fn noop(_: ()) {}

/// A child process that echoes what it reads on a socketpair: the floor of a round trip.
struct Echo {
    socket: i32,
    pid: i32,
}

impl Echo {
    fn start() -> Self {
        let mut fds = [0i32; 2];
        // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0);
        // SAFETY: the child only calls async-signal-safe functions (read, write, _exit)
        // before it exits, which is what POSIX allows after fork in a threaded process.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: closing the child's copy of the parent's end, so the parent's close is
            // an EOF here.
            unsafe { libc::close(fds[0]) };
            let mut buf = [0u8; 64];
            loop {
                // SAFETY: read/write on a valid socket into/out of a stack buffer.
                let n = unsafe { libc::read(fds[1], buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    // SAFETY: _exit ends the child without running the parent's atexit work.
                    unsafe { libc::_exit(0) };
                }
                // SAFETY: as above.
                unsafe { libc::write(fds[1], buf.as_ptr().cast(), n as usize) };
            }
        }
        // SAFETY: closing our copy of the child's end, which we own.
        unsafe { libc::close(fds[1]) };
        Self {
            socket: fds[0],
            pid,
        }
    }

    /// One ping-pong of a message the size of a small job frame.
    fn round_trip(&self) {
        let msg = [7u8; 33];
        let mut buf = [0u8; 64];
        // SAFETY: write/read on our valid socket with stack buffers.
        unsafe {
            libc::write(self.socket, msg.as_ptr().cast(), msg.len());
            let mut got = 0;
            while got < msg.len() {
                let n = libc::read(self.socket, buf.as_mut_ptr().cast(), buf.len());
                assert!(n > 0);
                got += n as usize;
            }
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // SAFETY: closing our socket ends the child's loop; waitpid reaps it.
        unsafe {
            libc::close(self.socket);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

fn round_trip(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_trip");
    let echo = Echo::start();
    group.bench_function("socketpair_ping_pong", |b| b.iter(|| echo.round_trip()));
    drop(echo);
    let pool = ProcessPool::new(1).unwrap();
    group.bench_function("parpool_submit_get", |b| {
        b.iter(|| pool.submit(square, black_box(7)).unwrap().get().unwrap())
    });
    group.finish();
}

fn map_one_item_per_job(c: &mut Criterion) {
    let mut group = c.benchmark_group("map_one_item_per_job");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ONE_ITEM_N));
    let pool = ProcessPool::new(2).unwrap();
    group.bench_function(BenchmarkId::new("parpool", ONE_ITEM_N), |b| {
        b.iter(|| pool.map_chunked(0..ONE_ITEM_N, 1, square).unwrap())
    });
    group.finish();
}

fn map_auto_chunks(c: &mut Criterion) {
    let mut group = c.benchmark_group("map_auto_chunks");
    group.sample_size(10);
    group.throughput(Throughput::Elements(AUTO_N));
    let pool = ProcessPool::new(2).unwrap();
    group.bench_function(BenchmarkId::new("parpool", AUTO_N), |b| {
        b.iter(|| pool.map(0..AUTO_N, square).unwrap())
    });
    group.finish();
}

fn crash(c: &mut Criterion) {
    let mut group = c.benchmark_group("crash");
    group.sample_size(10);
    let pool = ProcessPool::new(1).unwrap();
    // The job aborts at a moment fixed in advance (2 ms ahead, so it is running by then);
    // the time counted is from that moment to the caller holding the error.
    group.bench_function("abort_to_error", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let at = monotonic_ns() + 2_000_000;
                let err = pool.submit(abort_at, at).unwrap().get().unwrap_err();
                total += Duration::from_nanos(monotonic_ns() - at);
                assert!(err.is_crash());
                pool.submit(noop, ()).unwrap().get().unwrap();
            }
            total
        })
    });
    // From the abort to the next job done on the replacement worker: spawn + handshake +
    // one round trip.
    group.bench_function("abort_to_next_job_on_replacement", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let at = monotonic_ns() + 2_000_000;
                let crashed = pool.submit(abort_at, at).unwrap();
                let next = pool.submit(noop, ()).unwrap();
                next.get().unwrap();
                total += Duration::from_nanos(monotonic_ns() - at);
                assert!(crashed.get().unwrap_err().is_crash());
            }
            total
        })
    });
    group.finish();
}

fn summary(python: Option<&[(String, f64)]>) {
    let py = |key: &str| baseline_value(python, key);
    println!("\n== process pool summary (medians of this run) ==");
    let floor = median_ns("round_trip/socketpair_ping_pong");
    let ours = median_ns("round_trip/parpool_submit_get");
    if let (Some(floor), Some(ours)) = (floor, ours) {
        println!(
            "round trip: parpool {:.1} µs, socketpair floor {:.1} µs: {:.2}× the floor (target ≤ 1.2×)",
            ours / 1e3,
            floor / 1e3,
            ours / floor
        );
    }
    if let (Some(ours), Some(py)) = (ours, py("round_trip_us")) {
        println!(
            "            Python apply_async().get() {py:.1} µs: parpool is {:.1}× faster",
            py * 1e3 / ours
        );
    }
    for (bench, n, key, target) in [
        (
            "map_one_item_per_job/parpool/20000",
            ONE_ITEM_N,
            "map_one_item_per_job_items_per_s",
            15.0,
        ),
        (
            "map_auto_chunks/parpool/2000000",
            AUTO_N,
            "map_auto_chunks_items_per_s",
            1.5,
        ),
    ] {
        let Some(ns) = median_ns(bench) else { continue };
        let rate = n as f64 / (ns / 1e9);
        match py(key) {
            Some(py) => println!(
                "{bench}: parpool {:.0} items/s, Python {py:.0} items/s: {:.1}× Python (target ≥ {target}×)",
                rate,
                rate / py
            ),
            None => println!("{bench}: parpool {rate:.0} items/s (no python3 for the baseline)"),
        }
    }
    if let Some(ns) = median_ns("crash/abort_to_error") {
        println!("crash → error: {:.3} ms (target ≤ 1 ms)", ns / 1e6);
    }
    if let Some(ns) = median_ns("crash/abort_to_next_job_on_replacement") {
        let rt = ours.unwrap_or(0.0);
        println!(
            "crash → next job done on the replacement: {:.3} ms; minus one round trip, replacement ready ≈ {:.3} ms (target ≤ 5 ms)",
            ns / 1e6,
            (ns - rt) / 1e6
        );
    }
}

fn main() {
    // Python first, while no pool of ours runs beside it.
    let python = python_baseline("process_baseline.py");
    let mut c = Criterion::default().configure_from_args();
    let started = Instant::now();
    round_trip(&mut c);
    map_one_item_per_job(&mut c);
    map_auto_chunks(&mut c);
    crash(&mut c);
    c.final_summary();
    summary(python.as_deref());
    println!("(benchmarks took {:.0?})", started.elapsed());
}
