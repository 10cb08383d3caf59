//! A tour of parpool, measured: fork-join with `join`, tasks with `submit` and
//! `as_completed`, and the cost of a task round trip. Run with
//! `cargo run --release --example tour` (set `PARPOOL_TOUR_SCALE=small` for a quick run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use parpool::{ThreadPool, as_completed};

/// Problem sizes: the full tour, or a quick one for CI.
struct Scale {
    fib_n: u64,
    round_trips: u32,
}

impl Scale {
    fn from_env() -> Scale {
        match std::env::var("PARPOOL_TOUR_SCALE").as_deref() {
            Ok("small") => Scale {
                fib_n: 24,
                round_trips: 2_000,
            },
            _ => Scale {
                fib_n: 32,
                round_trips: 100_000,
            },
        }
    }
}

fn fib_sequential(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib_sequential(n - 1) + fib_sequential(n - 2)
    }
}

fn fib_join(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = parpool::join(|| fib_join(n - 1), || fib_join(n - 2));
    a + b
}

/// The median of `runs` timings of `f`.
fn median_time<R>(runs: usize, mut f: impl FnMut() -> R) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

/// CPU work of about `micros` microseconds, returning something that depends on it.
fn spin_for(micros: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_micros(micros);
    let mut x = 0u64;
    while Instant::now() < deadline {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    x
}

fn main() {
    let scale = Scale::from_env();
    let pool = ThreadPool::global();
    let threads = pool.current_num_threads();
    println!("parpool tour: {threads} worker threads\n");

    // 1. join: divide and conquer with a join at every level.
    let n = scale.fib_n;
    let sequential = median_time(5, || fib_sequential(black_box(n)));
    let parallel = median_time(5, || fib_join(black_box(n)));
    assert_eq!(fib_join(n), fib_sequential(n));
    println!("join: fib({n}) with a join at every level");
    println!("  sequential recursion  {:>10.2?}", sequential);
    println!(
        "  parpool::join         {:>10.2?}   ({:.2}x the sequential time)",
        parallel,
        parallel.as_secs_f64() / sequential.as_secs_f64()
    );

    // 2. submit + as_completed: results arrive in completion order.
    println!("\nsubmit + as_completed: 6 tasks of different lengths");
    let start = Instant::now();
    let lengths_ms = [40u64, 10, 30, 5, 20, 15];
    let tasks = lengths_ms.map(|ms| pool.submit(move || (ms, spin_for(ms * 1000))));
    let mut order = Vec::new();
    for task in as_completed(tasks) {
        let (ms, _) = task.get().expect("task does not panic");
        order.push(ms);
        println!("  task of {ms:>2} ms finished at {:>8.2?}", start.elapsed());
    }
    let sequential_ms: u64 = lengths_ms.iter().sum();
    println!(
        "  all done in {:.2?} (sequentially: ~{sequential_ms} ms)",
        start.elapsed()
    );
    assert_eq!(order.len(), lengths_ms.len());

    // 3. The cost of one submit + get round trip.
    let trips = scale.round_trips;
    let start = Instant::now();
    for i in 0..trips {
        black_box(pool.submit(move || black_box(i)).get().unwrap());
    }
    let per_trip = start.elapsed() / trips;
    println!("\nsubmit + get round trip, pool warm: {per_trip:.2?} (mean of {trips})");

    let mut asleep = Vec::new();
    for i in 0..20 {
        std::thread::sleep(Duration::from_millis(5));
        let start = Instant::now();
        black_box(pool.submit(move || black_box(i)).get().unwrap());
        asleep.push(start.elapsed());
    }
    asleep.sort();
    println!(
        "submit + get round trip after 5 ms idle (workers asleep): {:.2?} (median of 20)",
        asleep[10]
    );
}
