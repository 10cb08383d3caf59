//! CPU burned by an idle pool: after one operation, how many milliseconds of CPU per second
//! does the process use while the pool has nothing to do? parpool beside rayon, same run.
//!
//! Run with `cargo bench --bench idle_cpu`. A custom harness, not criterion: the quantity is
//! CPU time over a fixed idle second, not the duration of an operation.

use std::time::Duration;

const ROUNDS: usize = 5;
const IDLE: Duration = Duration::from_secs(1);

/// User + system CPU time of the whole process so far.
fn process_cpu_time() -> Duration {
    // SAFETY: `getrusage` only writes the zeroed struct we pass; RUSAGE_SELF is valid.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Median CPU milliseconds per idle second after running `operation` once.
fn idle_cost(mut operation: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            operation();
            let before = process_cpu_time();
            std::thread::sleep(IDLE);
            let used = process_cpu_time() - before;
            used.as_secs_f64() * 1e3 / IDLE.as_secs_f64()
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[ROUNDS / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would run this too, so keep it
    // to the real benchmark invocation.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let parpool = parpool::ThreadPool::new(threads).unwrap();
    let rayon = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let baseline = idle_cost(|| {});
    let parpool_cost = idle_cost(|| {
        parpool.join(|| 1, || 2);
    });
    let rayon_cost = idle_cost(|| {
        rayon.join(|| 1, || 2);
    });
    println!("idle CPU, median of {ROUNDS} idle seconds after one join ({threads} threads):");
    println!("  no pool (measurement floor)  {baseline:8.3} ms/s");
    println!("  parpool                      {parpool_cost:8.3} ms/s");
    println!("  rayon                        {rayon_cost:8.3} ms/s");
}
