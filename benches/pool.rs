//! Thread-pool benchmarks: parpool beside rayon, sequential code and Python's
//! `ThreadPoolExecutor` in the same criterion groups.
//!
//! - `submit_get/warm`: one `submit` + `get` round trip while the pool is busy-warm.
//! - `submit_get/asleep`: the same after a 5 ms pause, so the workers have gone to sleep.
//! - fib(30) with a `join` at every level is in `benches/map.rs`, group `shapes` (`fib_30`).
//!
//! Run with `cargo bench --bench pool`; quote the medians and the ratios within a group.

use std::hint::black_box;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

const THREADS: usize = 2;
const ASLEEP_GAP: Duration = Duration::from_millis(5);

fn parpool_pool() -> parpool::ThreadPool {
    parpool::ThreadPool::new(THREADS).unwrap()
}

fn rayon_pool() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(THREADS)
        .build()
        .unwrap()
}

/// The Python baseline's own timing of `iters` operations, when python3 is installed.
fn python(case: &str, iters: u64) -> Option<Duration> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/python/thread_baseline.py"
    );
    let output = Command::new("python3")
        .args([script, case, &iters.to_string()])
        .output()
        .ok()?;
    let nanos: u64 = String::from_utf8(output.stdout).ok()?.trim().parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

fn has_python() -> bool {
    python("warm", 1).is_some()
}

fn submit_get(c: &mut Criterion) {
    let pool = parpool_pool();
    let rayon = rayon_pool();
    let mut group = c.benchmark_group("submit_get");

    group.bench_function("warm/parpool", |b| {
        b.iter(|| pool.submit(|| black_box(1u64)).get().unwrap());
    });
    group.bench_function("warm/rayon_spawn_channel", |b| {
        let (tx, rx) = mpsc::channel();
        b.iter(|| {
            let tx = tx.clone();
            rayon.spawn(move || tx.send(black_box(1u64)).unwrap());
            rx.recv().unwrap()
        });
    });
    if has_python() {
        group.bench_function("warm/python_thread_pool_executor", |b| {
            b.iter_custom(|iters| python("warm", iters).unwrap());
        });
    }

    group.sample_size(20);
    group.bench_function("asleep/parpool", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(ASLEEP_GAP);
                let start = Instant::now();
                black_box(pool.submit(|| black_box(1u64)).get().unwrap());
                total += start.elapsed();
            }
            total
        });
    });
    group.bench_function("asleep/rayon_spawn_channel", |b| {
        let (tx, rx) = mpsc::channel();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(ASLEEP_GAP);
                let start = Instant::now();
                let tx = tx.clone();
                rayon.spawn(move || tx.send(black_box(1u64)).unwrap());
                black_box(rx.recv().unwrap());
                total += start.elapsed();
            }
            total
        });
    });
    if has_python() {
        group.bench_function("asleep/python_thread_pool_executor", |b| {
            b.iter_custom(|iters| python("asleep", iters).unwrap());
        });
    }
    group.finish();
}

/// Starting and stopping a pool of many threads, beside rayon: startup was quadratic in the
/// thread count (every starting worker searched every deque for 32 rounds).
fn pool_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool_build");
    group.sample_size(10);
    for threads in [64usize, 256] {
        group.bench_function(format!("{threads}/parpool"), |b| {
            b.iter(|| drop(parpool::ThreadPool::new(threads).unwrap()));
        });
        group.bench_function(format!("{threads}/rayon"), |b| {
            b.iter(|| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                drop(pool);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, submit_get, pool_build);
criterion_main!(benches);
