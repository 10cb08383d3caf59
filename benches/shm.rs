//! Shared memory from two worker processes, beside in-process floors and Python's
//! `multiprocessing.Value`, measured in the same run:
//!
//! - `locked_increment`: two workers add 1 to a `Value<u64>` under its robust
//!   process-shared lock; beside two threads on a `std::sync::Mutex<u64>` (the in-process
//!   floor) and Python's `with v.get_lock(): v.value += 1` from two processes
//!   (`benches/python/shm_baseline.py`);
//! - `atomic_fetch_add`: two workers `fetch_add(1)` on a `Value<u64>`; beside two threads on
//!   an `AtomicU64` (the hardware floor).
//!
//! The summary at the end prints ops/s and ratios.
//!
//! ```text
//! cargo bench --bench shm -- --warm-up-time 1 --measurement-time 3
//! ```

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput};
use parpool::ProcessPool;
use parpool::shm::Value;

use common::{baseline_value, median_ns, python_baseline};

/// Increments per process (or thread) in one iteration of the locked benchmarks.
const LOCKED_N: u64 = 500_000;
/// Increments per process (or thread) in one iteration of the atomic benchmarks.
const ATOMIC_N: u64 = 2_000_000;

fn locked_increments((v, n): (Value<u64>, u64)) {
    for _ in 0..n {
        *v.lock().unwrap() += 1;
    }
}

fn atomic_increments((v, n): (Value<u64>, u64)) {
    for _ in 0..n {
        v.fetch_add(1);
    }
}

fn locked_increment(c: &mut Criterion, pool: &ProcessPool) {
    let mut group = c.benchmark_group("locked_increment");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * LOCKED_N));
    let v = Value::new(0u64).unwrap();
    group.bench_function(BenchmarkId::new("parpool_2_processes", LOCKED_N), |b| {
        b.iter(|| {
            pool.map_chunked(locked_increments, vec![(v.clone(), LOCKED_N); 2], 1)
                .unwrap()
        })
    });
    let m = Mutex::new(0u64);
    group.bench_function(BenchmarkId::new("std_mutex_2_threads", LOCKED_N), |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..LOCKED_N {
                            *m.lock().unwrap() += 1;
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

fn atomic_fetch_add(c: &mut Criterion, pool: &ProcessPool) {
    let mut group = c.benchmark_group("atomic_fetch_add");
    group.sample_size(10);
    group.throughput(Throughput::Elements(2 * ATOMIC_N));
    let v = Value::new(0u64).unwrap();
    group.bench_function(BenchmarkId::new("parpool_2_processes", ATOMIC_N), |b| {
        b.iter(|| {
            pool.map_chunked(atomic_increments, vec![(v.clone(), ATOMIC_N); 2], 1)
                .unwrap()
        })
    });
    let a = AtomicU64::new(0);
    group.bench_function(BenchmarkId::new("atomic_u64_2_threads", ATOMIC_N), |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..ATOMIC_N {
                            a.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                }
            })
        })
    });
    group.finish();
}

fn rate(path: &str, ops: u64) -> Option<f64> {
    median_ns(path).map(|ns| ops as f64 / (ns / 1e9))
}

fn summary(python: Option<&[(String, f64)]>) {
    println!("\n== shared memory summary (medians of this run) ==");
    let ours = rate(
        &format!("locked_increment/parpool_2_processes/{LOCKED_N}"),
        2 * LOCKED_N,
    );
    let floor = rate(
        &format!("locked_increment/std_mutex_2_threads/{LOCKED_N}"),
        2 * LOCKED_N,
    );
    if let Some(ours) = ours {
        println!(
            "locked increment, 2 processes: {:.1}M ops/s (target ≥ 10M)",
            ours / 1e6
        );
        if let Some(floor) = floor {
            println!(
                "  std::sync::Mutex, 2 threads: {:.1}M ops/s: parpool at {:.2}× of it",
                floor / 1e6,
                ours / floor
            );
        }
        if let Some(py) = baseline_value(python, "locked_increment_ops_per_s") {
            println!(
                "  Python Value under its lock, 2 processes: {:.2}M ops/s: parpool {:.1}× faster",
                py / 1e6,
                ours / py
            );
        }
    }
    let ours = rate(
        &format!("atomic_fetch_add/parpool_2_processes/{ATOMIC_N}"),
        2 * ATOMIC_N,
    );
    let floor = rate(
        &format!("atomic_fetch_add/atomic_u64_2_threads/{ATOMIC_N}"),
        2 * ATOMIC_N,
    );
    if let Some(ours) = ours {
        println!(
            "atomic fetch_add, 2 processes: {:.1}M ops/s (target ≥ 40M)",
            ours / 1e6
        );
        if let Some(floor) = floor {
            println!(
                "  AtomicU64, 2 threads: {:.1}M ops/s: parpool at {:.2}× of it",
                floor / 1e6,
                ours / floor
            );
        }
    }
}

fn main() {
    let python = python_baseline("shm_baseline.py");
    let pool = ProcessPool::new(2).unwrap();
    let mut c = Criterion::default().configure_from_args();
    locked_increment(&mut c, &pool);
    atomic_fetch_add(&mut c, &pool);
    c.final_summary();
    summary(python.as_deref());
}
