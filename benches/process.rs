//! The process pool beside its baselines, measured in the same run:
//!
//! - `round_trip`: one `submit` + `get` against a raw socketpair ping-pong between two
//!   processes (the floor: two process wake-ups, no pool);
//! - `map_one_item_per_job` and `map_auto_chunks`: `map` over a `Pool(2)`-sized pool, against
//!   Python's `multiprocessing.Pool(2).map` (run from `benches/python/process_baseline.py`
//!   when `python3` is present);
//! - `crash`: from the moment a job aborts its worker to the error in the caller, and to the
//!   next job finishing on the replacement worker;
//! - `elastic`: a burst of [`BURST_JOBS`] jobs that each sleep [`BURST_MS`] on an elastic
//!   pool of 1 to 8 workers (starting each time from 1 worker) against a fixed pool of 8,
//!   and, timed once in the same run, a fixed pool of 1; and, after each elastic burst, the
//!   time until the pool is back at 1 worker (against its idle timeout). Sleeping jobs keep
//!   these figures meaningful on a loaded machine: they need a worker each, not a core;
//! - `watch`: a `map` of [`WATCH_N`] one-item jobs of a few nanoseconds, plain, then inside
//!   `Watch::run` with a progress, a cancel token and a deadline (a token load and a clock
//!   read per chunk and per dispatched job, a progress count per chunk), then with a progress
//!   callback too: the process side's cost of being watched. Its summary compares medians
//!   of interleaved rounds, so that the drift of a loaded machine hits every case alike.
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

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use parpool::{CancelToken, ProcessPool, Progress, Watch};

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

/// Jobs of the `elastic` burst.
const BURST_JOBS: usize = 200;
/// How long each job of the `elastic` burst sleeps, in ms.
const BURST_MS: u64 = 20;
/// The idle timeout of the elastic pool of the `elastic` group.
const BURST_IDLE: Duration = Duration::from_millis(200);

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// One burst: `BURST_JOBS` jobs of `BURST_MS`, one job each.
fn burst(pool: &ProcessPool) {
    pool.map_chunked(vec![BURST_MS; BURST_JOBS], 1, nap)
        .unwrap();
}

/// Waits until `pool` is back at one worker; returns how long that took.
fn back_to_one(pool: &ProcessPool) -> Duration {
    let started = Instant::now();
    while pool.workers() > 1 {
        std::thread::sleep(Duration::from_micros(500));
    }
    started.elapsed()
}

/// The `elastic` group; returns the fixed pool of 1's time for the burst (one run) and the
/// time the elastic pool took to get back to one worker after each of its bursts.
fn elastic(c: &mut Criterion) -> (Duration, Vec<Duration>) {
    let mut group = c.benchmark_group("elastic");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    let fixed = ProcessPool::new(8).unwrap();
    group.bench_function("fixed_8", |b| b.iter(|| burst(&fixed)));
    drop(fixed);
    let pool = ProcessPool::builder()
        .elastic(1, 8)
        .idle_timeout(BURST_IDLE)
        .build()
        .unwrap();
    let mut shrinks = Vec::new();
    group.bench_function("elastic_1_8", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                back_to_one(&pool);
                let started = Instant::now();
                burst(&pool);
                total += started.elapsed();
                shrinks.push(back_to_one(&pool));
            }
            total
        })
    });
    group.finish();
    drop(pool);
    let one = ProcessPool::new(1).unwrap();
    let started = Instant::now();
    burst(&one);
    (started.elapsed(), shrinks)
}

/// Jobs in a `map` of the `watch` group: one item each, so every job pays the per-chunk
/// costs of a watch.
const WATCH_N: u64 = 10_000;

/// The `watch` group; returns the medians of [`WATCH_ROUNDS`] interleaved rounds of each
/// case (plain, watched, watched with a callback), which a loaded machine's drift hits
/// alike, unlike criterion's one case after the other.
fn watch(c: &mut Criterion) -> [Duration; 3] {
    let mut group = c.benchmark_group("watch");
    group.sample_size(10);
    group.throughput(Throughput::Elements(WATCH_N));
    let pool = ProcessPool::new(2).unwrap();
    let map = || pool.map_chunked(0..WATCH_N, 1, square).unwrap();
    let token = CancelToken::new();
    let progress = Progress::new();
    let watched = Watch::new()
        .cancel_token(&token)
        .progress(&progress)
        .timeout(Duration::from_secs(3600));
    let observed = Progress::with_callback(Duration::from_millis(50), |update| {
        black_box(update);
    });
    let with_callback = watched.clone().progress(&observed);
    group.bench_function("plain", |b| b.iter(map));
    group.bench_function("watched", |b| b.iter(|| watched.run(map).unwrap()));
    group.bench_function("watched_with_callback", |b| {
        b.iter(|| with_callback.run(map).unwrap())
    });
    group.finish();
    let cases: [&dyn Fn(); 3] = [
        &|| {
            black_box(map());
        },
        &|| {
            black_box(watched.run(map).unwrap());
        },
        &|| {
            black_box(with_callback.run(map).unwrap());
        },
    ];
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..WATCH_ROUNDS {
        for (case, times) in cases.iter().zip(&mut times) {
            let start = Instant::now();
            case();
            times.push(start.elapsed());
        }
    }
    times.map(|mut t| {
        t.sort();
        t[t.len() / 2]
    })
}

/// Interleaved rounds of the `watch` group's cases for its summary.
const WATCH_ROUNDS: usize = 40;

fn summary(
    python: Option<&[(String, f64)]>,
    fixed_1: Duration,
    mut shrinks: Vec<Duration>,
    watch: [Duration; 3],
) {
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
    let fixed_8 = median_ns("elastic/fixed_8");
    let elastic = median_ns("elastic/elastic_1_8");
    if let (Some(fixed_8), Some(elastic)) = (fixed_8, elastic) {
        let fixed_1 = fixed_1.as_nanos() as f64;
        println!(
            "burst of {BURST_JOBS} × {BURST_MS} ms: elastic 1..8 {:.0} ms, fixed 8 {:.0} ms: \
             {:.2}× the fixed 8 (target ≤ 1.5×); fixed 1 (one run) {:.0} ms: {:.1}× the fixed 8",
            elastic / 1e6,
            fixed_8 / 1e6,
            elastic / fixed_8,
            fixed_1 / 1e6,
            fixed_1 / fixed_8
        );
    }
    let [plain, watched, with_callback] = watch;
    for (case, time) in [
        ("watched", watched),
        ("watched with a callback", with_callback),
    ] {
        println!(
            "map of {WATCH_N} one-item jobs, {case}: {time:.2?}, plain {plain:.2?}: {:.3}× plain \
             (medians of {WATCH_ROUNDS} interleaved rounds)",
            time.as_secs_f64() / plain.as_secs_f64()
        );
    }
    shrinks.sort();
    if let (Some(median), Some(max)) = (shrinks.get(shrinks.len() / 2), shrinks.last()) {
        println!(
            "back at 1 worker after a burst: median {median:.0?}, slowest {max:.0?} of {} \
             (idle timeout {BURST_IDLE:?}; target ≤ idle timeout + 0.5 s)",
            shrinks.len()
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
    let watched = watch(&mut c);
    let (fixed_1, shrinks) = elastic(&mut c);
    c.final_summary();
    summary(python.as_deref(), fixed_1, shrinks, watched);
    println!("(benchmarks took {:.0?})", started.elapsed());
}
