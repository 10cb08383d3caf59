//! CPU-bound work on threads and on processes, and I/O-bound (sleeping) work on threads,
//! timed side by side: the comparison Python articles make, and what it means in Rust. Run
//! with `cargo run --release --example cpu_vs_io -- [--jobs N] [--job-ms MS]`.
//!
//! Rust has no GIL: threads run CPU-bound work truly in parallel, so a thread pool scales
//! with the cores. A process pool buys *isolation* (a job that crashes, aborts or hangs
//! fails alone), not speed: it pays for process start-up and for serialising arguments and
//! results. I/O-bound work (here: sleeping, standing in for waiting on a network) scales
//! with the number of threads waiting, not with the cores.

use std::hint::black_box;
use std::time::{Duration, Instant};

use parpool::{ProcessPool, ThreadPool};

/// About `ms` milliseconds of CPU work; a plain `fn` so that process jobs can name it.
fn burn(ms: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut x = ms;
    while Instant::now() < deadline {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
    }
    x
}

/// Waiting, not computing: stands in for a network call.
fn wait(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn parse_options() -> Result<(usize, u64), String> {
    let (mut jobs, mut job_ms) = (16usize, 25u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--jobs" => jobs = value as usize,
            "--job-ms" => job_ms = value,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((jobs, job_ms))
}

fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let start = Instant::now();
    let result = f();
    (result, start.elapsed())
}

fn main() -> Result<(), String> {
    let (jobs, job_ms) = parse_options()?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let inputs = vec![job_ms; jobs];
    println!("{jobs} jobs of {job_ms} ms each, {cores} cores\n");

    let threads = ThreadPool::new(cores).map_err(|e| e.to_string())?;
    let (procs, startup) = timed(|| ProcessPool::new(cores));
    let procs = procs.map_err(|e| e.to_string())?;

    let (cpu_seq, t_cpu_seq) =
        timed(|| inputs.iter().map(|&ms| burn(ms)).collect::<Vec<_>>().len());
    let (cpu_thr, t_cpu_thr) =
        timed(|| threads.map_chunked(inputs.iter(), 1, |&ms| burn(ms)).len());
    let (cpu_proc, t_cpu_proc) =
        timed(|| procs.map_chunked(inputs.clone(), 1, burn).map(|v| v.len()));
    let cpu_proc = cpu_proc.map_err(|e| e.to_string())?;

    let io_threads = ThreadPool::new(jobs.max(1)).map_err(|e| e.to_string())?;
    let (io_seq, t_io_seq) = timed(|| inputs.iter().map(|&ms| wait(ms)).collect::<Vec<_>>().len());
    let (io_few, t_io_few) = timed(|| threads.map_chunked(inputs.iter(), 1, |&ms| wait(ms)).len());
    let (io_many, t_io_many) = timed(|| {
        io_threads
            .map_chunked(inputs.iter(), 1, |&ms| wait(ms))
            .len()
    });
    assert!(
        [cpu_seq, cpu_thr, cpu_proc, io_seq, io_few, io_many]
            .iter()
            .all(|&n| n == jobs)
    );

    let row = |what: &str, time: Duration, base: Duration| {
        println!(
            "  {what:<40} {time:>10.2?}   {:>5.2}x",
            base.as_secs_f64() / time.as_secs_f64()
        );
    };
    println!("CPU-bound (speed-up over sequential):");
    row("sequential", t_cpu_seq, t_cpu_seq);
    row(
        &format!("thread pool, {cores} threads"),
        t_cpu_thr,
        t_cpu_seq,
    );
    row(
        &format!("process pool, {cores} processes"),
        t_cpu_proc,
        t_cpu_seq,
    );
    println!("  (starting the {cores} worker processes took {startup:.2?})\n");
    println!("I/O-bound, sleeping (speed-up over sequential):");
    row("sequential", t_io_seq, t_io_seq);
    row(&format!("thread pool, {cores} threads"), t_io_few, t_io_seq);
    row(&format!("thread pool, {jobs} threads"), t_io_many, t_io_seq);
    println!(
        "\nIn Rust there is no GIL: threads scale on CPU-bound work up to the cores, and a \
         process pool\nadds start-up and serialisation costs in exchange for isolating \
         crashes. Waiting scales with\nthe number of threads that wait, not with the cores."
    );
    Ok(())
}
