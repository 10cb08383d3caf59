//! Shared memory from two worker processes, beside in-process floors and Python's
//! `multiprocessing.Value`, measured in the same run:
//!
//! - `locked_increment`: two workers add 1 to a `Value<u64>` under its robust
//!   process-shared lock; beside two threads on a `std::sync::Mutex<u64>` (the in-process
//!   floor) and Python's `with v.get_lock(): v.value += 1` from two processes
//!   (`benches/python/shm_baseline.py`);
//! - `atomic_fetch_add`: two workers `fetch_add(1)` on a `Value<u64>`; beside two threads on
//!   an `AtomicU64` (the hardware floor).
//! - `queue_1p1c`: a `shm::Queue<u64>` from one worker process to the parent; beside
//!   `std::sync::mpsc::sync_channel` between two threads (the in-process floor) and Python's
//!   `multiprocessing.Queue` from one process to the parent;
//! - `queue_4p4c`: four producer processes to four consumer processes, beside Python's;
//! - `queue_round_trip`: the parent puts into one queue, a worker echoes into another
//!   (capacity 1 each, a pipe); beside Python's two queues.
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
use parpool::shm::{Queue, Value};

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
            pool.map_chunked(vec![(v.clone(), LOCKED_N); 2], 1, locked_increments)
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
            pool.map_chunked(vec![(v.clone(), ATOMIC_N); 2], 1, atomic_increments)
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

/// Items through the queue in one iteration of `queue_1p1c` and `queue_4p4c`.
const QUEUE_N: u64 = 200_000;
/// Producers (and consumers) of `queue_4p4c`.
const QUEUE_WORKERS: u64 = 4;
/// Round trips in one iteration of `queue_round_trip`.
const ROUND_TRIPS: u64 = 2_000;
/// Capacity of the throughput benchmarks' queues (Python's is unbounded).
const QUEUE_CAPACITY: usize = 4096;

fn produce((q, start, n): (Queue<u64>, u64, u64)) {
    for i in start..start + n {
        q.put(i).unwrap();
    }
}

fn consume((q, n): (Queue<u64>, u64)) -> u64 {
    (0..n).map(|_| q.get().unwrap()).sum()
}

fn echo((requests, replies): (Queue<u64>, Queue<u64>)) {
    while let Ok(x) = requests.get() {
        replies.put(x).unwrap();
    }
}

fn queue_1p1c(c: &mut Criterion, pool: &ProcessPool) {
    let mut group = c.benchmark_group("queue_1p1c");
    group.sample_size(10);
    group.throughput(Throughput::Elements(QUEUE_N));
    let q = Queue::new(QUEUE_CAPACITY).unwrap();
    group.bench_function(
        BenchmarkId::new("parpool_process_to_parent", QUEUE_N),
        |b| {
            b.iter(|| {
                let job = pool.submit(produce, (q.clone(), 0, QUEUE_N)).unwrap();
                let sum: u64 = (0..QUEUE_N).map(|_| q.get().unwrap()).sum();
                job.get().unwrap();
                assert_eq!(sum, QUEUE_N * (QUEUE_N - 1) / 2);
            })
        },
    );
    group.bench_function(BenchmarkId::new("std_sync_channel_threads", QUEUE_N), |b| {
        b.iter(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
            let producer = std::thread::spawn(move || {
                for i in 0..QUEUE_N {
                    tx.send(i).unwrap();
                }
            });
            let sum: u64 = rx.iter().sum();
            producer.join().unwrap();
            assert_eq!(sum, QUEUE_N * (QUEUE_N - 1) / 2);
        })
    });
    group.finish();
}

fn queue_4p4c(c: &mut Criterion, pool: &ProcessPool) {
    let mut group = c.benchmark_group("queue_4p4c");
    group.sample_size(10);
    group.throughput(Throughput::Elements(QUEUE_N));
    let q = Queue::new(QUEUE_CAPACITY).unwrap();
    let per = QUEUE_N / QUEUE_WORKERS;
    group.bench_function(BenchmarkId::new("parpool_processes", QUEUE_N), |b| {
        b.iter(|| {
            let consumers: Vec<_> = (0..QUEUE_WORKERS)
                .map(|_| pool.submit(consume, (q.clone(), per)).unwrap())
                .collect();
            let producers: Vec<_> = (0..QUEUE_WORKERS)
                .map(|w| pool.submit(produce, (q.clone(), w * per, per)).unwrap())
                .collect();
            producers.into_iter().for_each(|p| p.get().unwrap());
            let sum: u64 = consumers.into_iter().map(|c| c.get().unwrap()).sum();
            assert_eq!(sum, QUEUE_N * (QUEUE_N - 1) / 2);
        })
    });
    group.finish();
}

fn queue_round_trip(c: &mut Criterion, pool: &ProcessPool) {
    let mut group = c.benchmark_group("queue_round_trip");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROUND_TRIPS));
    let (requests, replies) = (Queue::new(1).unwrap(), Queue::new(1).unwrap());
    let job = pool
        .submit(echo, (requests.clone(), replies.clone()))
        .unwrap();
    group.bench_function(BenchmarkId::new("parpool_process", ROUND_TRIPS), |b| {
        b.iter(|| {
            for i in 0..ROUND_TRIPS {
                requests.put(i).unwrap();
                assert_eq!(replies.get().unwrap(), i);
            }
        })
    });
    group.finish();
    requests.close();
    job.get().unwrap();
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

fn queue_summary(python: Option<&[(String, f64)]>) {
    println!("\n== shm::Queue summary (medians of this run) ==");
    let floor = rate(
        &format!("queue_1p1c/std_sync_channel_threads/{QUEUE_N}"),
        QUEUE_N,
    );
    if let Some(ours) = rate(
        &format!("queue_1p1c/parpool_process_to_parent/{QUEUE_N}"),
        QUEUE_N,
    ) {
        println!("1 producer process -> parent: {:.2}M items/s", ours / 1e6);
        if let Some(floor) = floor {
            println!(
                "  std sync_channel, 2 threads: {:.2}M items/s: parpool at {:.2}× of it",
                floor / 1e6,
                ours / floor
            );
        }
        if let Some(py) = baseline_value(python, "queue_1p1c_items_per_s") {
            println!(
                "  Python multiprocessing.Queue: {:.0}k items/s: parpool {:.1}× faster (goal ≥ 30×)",
                py / 1e3,
                ours / py
            );
        }
    }
    if let Some(ours) = rate(&format!("queue_4p4c/parpool_processes/{QUEUE_N}"), QUEUE_N) {
        println!(
            "4 producer -> 4 consumer processes: {:.2}M items/s",
            ours / 1e6
        );
        if let Some(py) = baseline_value(python, "queue_4p4c_items_per_s") {
            println!(
                "  Python multiprocessing.Queue: {:.0}k items/s: parpool {:.1}× faster",
                py / 1e3,
                ours / py
            );
        }
    }
    if let Some(ns) = median_ns(&format!("queue_round_trip/parpool_process/{ROUND_TRIPS}")) {
        let us = ns / ROUND_TRIPS as f64 / 1e3;
        println!("round trip parent -> process -> parent: {us:.1} µs");
        if let Some(py) = baseline_value(python, "queue_round_trip_us") {
            println!(
                "  Python, two Queues: {py:.1} µs: parpool {:.1}× faster",
                py / us
            );
        }
    }
}

fn main() {
    let python = python_baseline("shm_baseline.py");
    let pool = ProcessPool::new(2).unwrap();
    let wide = ProcessPool::new(2 * QUEUE_WORKERS as usize).unwrap();
    let mut c = Criterion::default().configure_from_args();
    locked_increment(&mut c, &pool);
    atomic_fetch_add(&mut c, &pool);
    queue_1p1c(&mut c, &pool);
    queue_4p4c(&mut c, &wide);
    queue_round_trip(&mut c, &pool);
    c.final_summary();
    summary(python.as_deref());
    queue_summary(python.as_deref());
}
