//! Map-family benchmarks: parpool beside sequential code and rayon (and Python's
//! `ThreadPool.imap` where it applies) in the same criterion groups.
//!
//! | group | what |
//! |---|---|
//! | `fresh_10m` | 10M `u64`, `x * 2 + 1`, into a new `Vec` |
//! | `reuse_10m` | the same into a reused buffer |
//! | `imap_200k_1us` | 200k items of ~1 µs from a plain iterator, lazily |
//! | `imap_chunk1` | cost per item of `imap` with chunk size 1 (100k trivial items) |
//! | `kit_for_each_mut_10m` | 10M `u64` updated in place, `x = x * 2 + 1` |
//! | `kit_sum_10m` | the sum of `x * 2 + 1` over 10M `u64` |
//! | `kit_1us_1m` | the same two over 1M items of ~1 µs each |
//! | `kit_chunks_mut_10m` | 10M `u64` updated in place in chunks of 4096 |
//! | `kit_tiny_1k` | every operation of the kit over 1k trivial items, beside its loop |
//! | `shapes` | the commonest shapes (uniform, ramp, skewed, random, coarse, 1k trivial items, a plain iterator, fib and unbalanced `join` trees), each as `case/sequential`, `case/parpool`, `case/rayon` |
//! | `watch_1us_1m` | 1M items of ~1 µs, `par_map` and `pool.map`, with and without a watch (token + progress, and + deadline) |
//!
//! Run with `cargo bench --bench map`; quote the medians and the ratios within a group
//! (for `shapes`, within a case: `cargo bench --bench map -- shapes/uniform_1m_1us`).

use std::hint::black_box;
use std::process::Command;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use parpool::prelude::*;
use rayon::prelude::*;

const THREADS: usize = 2;

/// Spins for about `units` × 4.2 ns of CPU on the reference machine (a dependent multiply
/// chain, so it cannot be vectorised away).
fn spin(units: u64) -> u64 {
    let mut x = units;
    for _ in 0..units * 4 {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    x
}

/// ~1 µs of work.
fn one_micro(x: u64) -> u64 {
    spin(240) ^ x
}

/// An iterator over `0..n` with no size hint.
fn plain(n: u64) -> impl Iterator<Item = u64> {
    let mut i = 0;
    std::iter::from_fn(move || {
        i += 1;
        (i <= n).then_some(i - 1)
    })
}

fn python(case: &str, items: u64) -> Option<Duration> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/python/map_baseline.py"
    );
    let output = Command::new("python3")
        .args([script, case, &items.to_string()])
        .output()
        .ok()?;
    let nanos: u64 = String::from_utf8(output.stdout).ok()?.trim().parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

fn pools() -> (parpool::ThreadPool, rayon::ThreadPool) {
    (
        parpool::ThreadPool::new(THREADS).unwrap(),
        rayon::ThreadPoolBuilder::new()
            .num_threads(THREADS)
            .build()
            .unwrap(),
    )
}

fn slices(c: &mut Criterion) {
    let (pool, rayon) = pools();
    let data: Vec<u64> = (0..10_000_000).collect();

    let mut group = c.benchmark_group("fresh_10m");
    group.sample_size(20);
    group.bench_function("sequential", |b| {
        b.iter(|| data.iter().map(|x| x * 2 + 1).collect::<Vec<u64>>())
    });
    group.bench_function("parpool", |b| {
        b.iter(|| pool.install(|| data.par_map(|x| x * 2 + 1)))
    });
    group.bench_function("rayon", |b| {
        b.iter(|| rayon.install(|| data.par_iter().map(|x| x * 2 + 1).collect::<Vec<u64>>()))
    });
    group.finish();

    let mut group = c.benchmark_group("reuse_10m");
    group.sample_size(20);
    let mut out = Vec::new();
    group.bench_function("sequential_fresh", |b| {
        b.iter(|| data.iter().map(|x| x * 2 + 1).collect::<Vec<u64>>())
    });
    group.bench_function("sequential", |b| {
        b.iter(|| {
            out.clear();
            out.extend(data.iter().map(|x| x * 2 + 1));
        })
    });
    group.bench_function("parpool", |b| {
        b.iter(|| pool.install(|| data.par_map_into(|x| x * 2 + 1, &mut out)))
    });
    group.bench_function("rayon", |b| {
        b.iter(|| {
            rayon.install(|| {
                data.par_iter()
                    .map(|x| x * 2 + 1)
                    .collect_into_vec(&mut out)
            })
        })
    });
    group.finish();
}

fn iterators(c: &mut Criterion) {
    let (pool, rayon) = pools();

    let mut group = c.benchmark_group("imap_200k_1us");
    group.sample_size(10);
    group.bench_function("sequential", |b| {
        b.iter(|| plain(200_000).map(one_micro).collect::<Vec<u64>>())
    });
    group.bench_function("parpool_imap", |b| {
        b.iter(|| pool.imap(plain(200_000), one_micro).collect::<Vec<u64>>())
    });
    group.bench_function("rayon_par_bridge", |b| {
        b.iter(|| {
            rayon.install(|| {
                plain(200_000)
                    .par_bridge()
                    .map(one_micro)
                    .collect::<Vec<u64>>()
            })
        })
    });
    group.finish();

    const ITEMS: u64 = 100_000;
    let mut group = c.benchmark_group("imap_chunk1");
    group.sample_size(10);
    group.bench_with_input(BenchmarkId::new("parpool", ITEMS), &ITEMS, |b, &n| {
        b.iter(|| pool.imap(plain(n), |x| x + 1).chunk_size(1).count())
    });
    if python("imap1", 10).is_some() {
        group.bench_with_input(
            BenchmarkId::new("python_thread_pool", ITEMS),
            &ITEMS,
            |b, &n| b.iter_custom(|iters| (0..iters).map(|_| python("imap1", n).unwrap()).sum()),
        );
    }
    group.finish();
}

/// The rayon user's everyday kit: in-place updates, reductions and chunks, beside rayon's
/// `par_iter_mut`, `par_iter().map().sum()` and `par_chunks_mut`.
fn kit(c: &mut Criterion) {
    let (pool, rayon) = pools();
    let mut data: Vec<u64> = (0..10_000_000).collect();

    let mut group = c.benchmark_group("kit_for_each_mut_10m");
    group.sample_size(20);
    group.bench_function("sequential", |b| {
        b.iter(|| {
            data.iter_mut()
                .for_each(|x| *x = x.wrapping_mul(2).wrapping_add(1))
        })
    });
    group.bench_function("parpool", |b| {
        b.iter(|| {
            pool.install(|| data.par_for_each_mut(|x| *x = x.wrapping_mul(2).wrapping_add(1)))
        })
    });
    group.bench_function("rayon", |b| {
        b.iter(|| {
            rayon.install(|| {
                data.par_iter_mut()
                    .for_each(|x| *x = x.wrapping_mul(2).wrapping_add(1))
            })
        })
    });
    group.finish();

    let data: Vec<u64> = (0..10_000_000).collect();
    let mut group = c.benchmark_group("kit_sum_10m");
    group.sample_size(20);
    group.bench_function("sequential", |b| {
        b.iter(|| data.iter().map(|x| x * 2 + 1).sum::<u64>())
    });
    group.bench_function("parpool_map_reduce", |b| {
        b.iter(|| pool.install(|| data.par_map_reduce(|x| x * 2 + 1, || 0, |a, b| a + b)))
    });
    group.bench_function("parpool_sum", |b| {
        b.iter(|| pool.install(|| data.par_sum(|x| x * 2 + 1)))
    });
    group.bench_function("rayon", |b| {
        b.iter(|| rayon.install(|| data.par_iter().map(|x| x * 2 + 1).sum::<u64>()))
    });
    group.finish();

    let mut items: Vec<u64> = (0..1_000_000).collect();
    let mut group = c.benchmark_group("kit_1us_1m");
    group.sample_size(10);
    group.bench_function("sequential_for_each_mut", |b| {
        b.iter(|| items.iter_mut().for_each(|x| *x = one_micro(*x)))
    });
    group.bench_function("parpool_for_each_mut", |b| {
        b.iter(|| pool.install(|| items.par_for_each_mut(|x| *x = one_micro(*x))))
    });
    group.bench_function("rayon_for_each_mut", |b| {
        b.iter(|| rayon.install(|| items.par_iter_mut().for_each(|x| *x = one_micro(*x))))
    });
    group.bench_function("sequential_sum", |b| {
        b.iter(|| {
            items
                .iter()
                .map(|&x| one_micro(x))
                .fold(0, u64::wrapping_add)
        })
    });
    group.bench_function("parpool_map_reduce", |b| {
        b.iter(|| pool.install(|| items.par_map_reduce(|&x| one_micro(x), || 0, u64::wrapping_add)))
    });
    group.bench_function("rayon_sum", |b| {
        b.iter(|| {
            rayon.install(|| {
                items
                    .par_iter()
                    .map(|&x| one_micro(x))
                    .reduce(|| 0, u64::wrapping_add)
            })
        })
    });
    group.finish();

    let mut data: Vec<u64> = (0..10_000_000).collect();
    let bump = |chunk: &mut [u64]| {
        chunk
            .iter_mut()
            .for_each(|x| *x = x.wrapping_mul(2).wrapping_add(1))
    };
    let mut group = c.benchmark_group("kit_chunks_mut_10m");
    group.sample_size(20);
    group.bench_function("sequential", |b| {
        b.iter(|| data.chunks_mut(4096).for_each(bump))
    });
    group.bench_function("parpool", |b| {
        b.iter(|| pool.install(|| ParSlice::par_chunks_mut(&mut data[..], 4096).for_each(bump)))
    });
    group.bench_function("rayon", |b| {
        b.iter(|| {
            rayon.install(|| {
                rayon::slice::ParallelSliceMut::par_chunks_mut(&mut data[..], 4096).for_each(bump)
            })
        })
    });
    group.finish();

    // From outside any pool (the global pool), as a program would call them: 1k trivial
    // items must stay near the cost of the loop beside each.
    // The read-only operations get `tiny`, which nothing changes (the `try_` cases never
    // fail on it); the in-place ones get `tiny_mut`.
    let tiny: Vec<u64> = (0..1000).collect();
    let mut tiny_mut = tiny.clone();
    let mut group = c.benchmark_group("kit_tiny_1k");
    group.bench_function("seq_for_each", |b| {
        b.iter(|| {
            black_box(&tiny).iter().for_each(|x| {
                black_box(x);
            })
        })
    });
    group.bench_function("par_for_each", |b| {
        b.iter(|| {
            black_box(&tiny).par_for_each(|x| {
                black_box(x);
            })
        })
    });
    group.bench_function("seq_for_each_mut", |b| {
        b.iter(|| {
            black_box(&mut tiny_mut)
                .iter_mut()
                .for_each(|x| *x = x.wrapping_mul(3))
        })
    });
    group.bench_function("par_for_each_mut", |b| {
        b.iter(|| black_box(&mut tiny_mut).par_for_each_mut(|x| *x = x.wrapping_mul(3)))
    });
    group.bench_function("seq_chunks", |b| {
        b.iter(|| {
            black_box(&tiny)
                .chunks(16)
                .map(|c| c[0])
                .collect::<Vec<u64>>()
        })
    });
    group.bench_function("par_chunks", |b| {
        b.iter(|| ParSlice::par_chunks(&black_box(&tiny)[..], 16).map(|c| c[0]))
    });
    group.bench_function("seq_chunks_mut", |b| {
        b.iter(|| {
            black_box(&mut tiny_mut)
                .chunks_mut(16)
                .for_each(|c| c[0] += 1)
        })
    });
    group.bench_function("par_chunks_mut", |b| {
        b.iter(|| {
            ParSlice::par_chunks_mut(&mut black_box(&mut tiny_mut)[..], 16).for_each(|c| c[0] += 1)
        })
    });
    group.bench_function("seq_sum", |b| {
        b.iter(|| black_box(&tiny).iter().map(|x| x * 2 + 1).sum::<u64>())
    });
    group.bench_function("par_sum", |b| {
        b.iter(|| black_box(&tiny).par_sum(|x| x * 2 + 1))
    });
    group.bench_function("par_map_reduce", |b| {
        b.iter(|| black_box(&tiny).par_map_reduce(|x| x * 2 + 1, || 0, |a, b| a + b))
    });
    group.bench_function("seq_min", |b| {
        b.iter(|| black_box(&tiny).iter().map(|x| x ^ 5).min())
    });
    group.bench_function("par_min", |b| {
        b.iter(|| black_box(&tiny).par_min(|x| x ^ 5))
    });
    group.bench_function("seq_map", |b| {
        b.iter(|| {
            black_box(&tiny)
                .iter()
                .map(|x| x * 2 + 1)
                .collect::<Vec<u64>>()
        })
    });
    group.bench_function("seq_try_map", |b| {
        b.iter(|| {
            black_box(&tiny)
                .iter()
                .map(|x| Ok::<_, ()>(x * 2 + 1))
                .collect::<Result<Vec<u64>, ()>>()
        })
    });
    group.bench_function("try_par_map", |b| {
        b.iter(|| black_box(&tiny).try_par_map(|x| Ok::<_, ()>(x * 2 + 1)))
    });
    group.bench_function("par_map_init", |b| {
        b.iter(|| black_box(&tiny).par_map_init(|| 1u64, |s, x| x * 2 + *s))
    });
    group.bench_function("seq_try_for_each", |b| {
        b.iter(|| {
            black_box(&tiny).iter().try_for_each(|x| {
                if black_box(*x) > 5000 {
                    Err(())
                } else {
                    Ok(())
                }
            })
        })
    });
    group.bench_function("try_par_for_each", |b| {
        b.iter(|| {
            black_box(&tiny).try_par_for_each(|x| {
                if black_box(*x) > 5000 {
                    Err(())
                } else {
                    Ok(())
                }
            })
        })
    });
    group.bench_function("seq_for_each_init", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            black_box(&tiny).iter().for_each(|x| sum += black_box(*x));
            sum
        })
    });
    group.bench_function("par_for_each_init", |b| {
        b.iter(|| black_box(&tiny).par_for_each_init(|| 0u64, |s, x| *s += black_box(*x)))
    });
    group.bench_function("rayon_for_each", |b| {
        b.iter(|| {
            black_box(&tiny).par_iter().for_each(|x| {
                black_box(x);
            })
        })
    });
    group.finish();
}

/// Cost of item `i` of the `random` shape: 0–2 µs, from a fixed hash of the index, so every
/// run maps the same input.
fn random_units(i: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 480
}

/// How a shape's `join`s run: one after the other, or on parpool or rayon. The shapes are
/// written once, generic over this.
trait Fork {
    fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send;
}

/// Sequential code: `a`, then `b`.
struct Sequential;
/// `parpool::join`.
struct Parpool;
/// `rayon::join`.
struct Rayon;

impl Fork for Sequential {
    #[inline(always)]
    fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        (a(), b())
    }
}

impl Fork for Parpool {
    #[inline(always)]
    fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        parpool::join(a, b)
    }
}

impl Fork for Rayon {
    #[inline(always)]
    fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        rayon::join(a, b)
    }
}

fn fib<J: Fork>(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = J::join(|| fib::<J>(n - 1), || fib::<J>(n - 2));
    a + b
}

/// fib with an uneven split, T(n) = T(n-4) + T(n-1): the large half is `b`.
fn fib_uneven<J: Fork>(n: u64) -> u64 {
    if n < 4 {
        return n;
    }
    let (a, b) = J::join(|| fib_uneven::<J>(n - 4), || fib_uneven::<J>(n - 1));
    a + b
}

/// A spine of `n` joins whose `a` recurses and whose `b` is a ~10 µs leaf: every leaf is a
/// `b` half, the deep ones made below a worker's first few `join`s.
fn spine_a<J: Fork>(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let (a, b) = J::join(|| spine_a::<J>(n - 1), || spin(2_400));
    a ^ b
}

/// The reverse spine: `a` is the leaf, `b` recurses (the large half is `b` at every level).
fn spine_b<J: Fork>(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let (a, b) = J::join(|| spin(2_400), || spine_b::<J>(n - 1));
    a ^ b
}

/// A balanced tree of `2^k` leaves of ~1 µs.
fn tree<J: Fork>(k: u64) -> u64 {
    if k == 0 {
        return spin(240);
    }
    let (a, b) = J::join(|| tree::<J>(k - 1), || tree::<J>(k - 1));
    a ^ b
}

/// Six levels of cheap `b` leaves (~0.1 µs) above one expensive balanced subtree (4096 ×
/// ~1 µs): the worker holds cheap frames while the expensive halves are made below them.
fn deep_6<J: Fork>(depth: u64) -> u64 {
    if depth == 6 {
        return tree::<J>(12);
    }
    let (a, b) = J::join(|| deep_6::<J>(depth + 1), || spin(24));
    a ^ b
}

/// The shapes users run most, each beside sequential code and rayon in the same group (issue
/// 11). A case is `shapes/<case>/<who>`; quote parpool's time over rayon's and over
/// sequential's within one case.
///
/// | case | what |
/// |---|---|
/// | `uniform_1m_1us` | `par_map`, 1M items × ~1 µs |
/// | `uniform_100k_1us` | `par_map`, 100k × ~1 µs |
/// | `uniform_1m_100ns` | `par_map`, 1M × ~0.1 µs |
/// | `ramp_100k` | `par_map`, 100k items, cost ∝ index (0–17 µs) |
/// | `skewed_tail_100k` | `par_map`, 100k items, the last 10% cost 10 µs, the rest 0.1 µs |
/// | `random_100k` | `par_map`, 100k items of 0–2 µs in a fixed random order |
/// | `coarse_1k_100us` | `par_map`, 1k items × ~100 µs |
/// | `tiny_1k` | `par_map`, 1k trivial items (from outside any pool) |
/// | `plain_iter_1m` | ordered `map` over an iterator without a size hint, 1M trivial |
/// | `lines_1m` | ordered `map` over `str::lines()`, 1M short lines, `str::len` |
/// | `fib_30` | fib(30) with a `join` at every level |
/// | `fib_uneven_45` | T(n) = T(n-4) + T(n-1) with a `join` at every level, the large half `b` |
/// | `spine_a_400` | 400 nested `join(recurse, ~10 µs leaf)` |
/// | `spine_b_400` | 400 nested `join(~10 µs leaf, recurse)` |
/// | `deep_6` | 6 levels of `join(recurse, ~0.1 µs leaf)` above a balanced tree of 4096 × ~1 µs |
fn shapes(c: &mut Criterion) {
    fn case<T: Send + Sync, R: Send>(
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        input: &[T],
        f: impl Fn(&T) -> R + Sync + Send,
        pools: &(parpool::ThreadPool, rayon::ThreadPool),
    ) {
        let (pool, rayon) = pools;
        group.bench_function(format!("{name}/sequential"), |b| {
            b.iter(|| input.iter().map(&f).collect::<Vec<R>>())
        });
        group.bench_function(format!("{name}/parpool"), |b| {
            b.iter(|| pool.install(|| input.par_map(&f)))
        });
        group.bench_function(format!("{name}/rayon"), |b| {
            b.iter(|| rayon.install(|| input.par_iter().map(&f).collect::<Vec<R>>()))
        });
    }

    let pools = pools();
    let mut group = c.benchmark_group("shapes");
    group.sample_size(10);
    let m1: Vec<u64> = (0..1_000_000).collect();
    let k100: Vec<u64> = (0..100_000).collect();
    case(&mut group, "uniform_1m_1us", &m1, |&x| one_micro(x), &pools);
    case(
        &mut group,
        "uniform_100k_1us",
        &k100,
        |&x| one_micro(x),
        &pools,
    );
    case(
        &mut group,
        "uniform_1m_100ns",
        &m1,
        |&x| spin(24) ^ x,
        &pools,
    );
    case(&mut group, "ramp_100k", &k100, |&i| spin(i / 25), &pools);
    case(
        &mut group,
        "skewed_tail_100k",
        &k100,
        |&i| spin(if i >= 90_000 { 2_400 } else { 24 }),
        &pools,
    );
    case(
        &mut group,
        "random_100k",
        &k100,
        |&i| spin(random_units(i)),
        &pools,
    );
    let k1: Vec<u64> = (0..1_000).collect();
    case(
        &mut group,
        "coarse_1k_100us",
        &k1,
        |&x| spin(24_000) ^ x,
        &pools,
    );

    let (pool, rayon) = &pools;
    group.sample_size(20);
    group.bench_function("tiny_1k/sequential", |b| {
        b.iter(|| {
            black_box(&k1)
                .iter()
                .map(|x| x * 2 + 1)
                .collect::<Vec<u64>>()
        })
    });
    group.bench_function("tiny_1k/parpool", |b| {
        b.iter(|| black_box(&k1).par_map(|x| x * 2 + 1))
    });
    group.bench_function("tiny_1k/rayon", |b| {
        b.iter(|| {
            black_box(&k1)
                .par_iter()
                .map(|x| x * 2 + 1)
                .collect::<Vec<u64>>()
        })
    });
    group.bench_function("plain_iter_1m/sequential", |b| {
        b.iter(|| plain(1_000_000).map(|x| x * 2 + 1).collect::<Vec<u64>>())
    });
    group.bench_function("plain_iter_1m/parpool", |b| {
        b.iter(|| pool.map(plain(1_000_000), |x| x * 2 + 1))
    });
    group.bench_function("plain_iter_1m/rayon", |b| {
        b.iter(|| {
            rayon.install(|| {
                plain(1_000_000)
                    .par_bridge()
                    .map(|x| x * 2 + 1)
                    .collect::<Vec<u64>>()
            })
        })
    });
    // The optimiser sees through `plain`, and the calling thread's bounded batches
    // vectorise it; `lines()` it cannot, and pulling a line costs more than mapping it.
    let text: String = (0..1_000_000u64)
        .map(|i| format!("{}\n", i * 7919 % 100_003))
        .collect();
    group.bench_function("lines_1m/sequential", |b| {
        b.iter(|| text.lines().map(str::len).collect::<Vec<usize>>())
    });
    group.bench_function("lines_1m/parpool", |b| {
        b.iter(|| pool.map(text.lines(), str::len))
    });
    group.bench_function("lines_1m/rayon", |b| {
        b.iter(|| {
            rayon.install(|| {
                text.lines()
                    .par_bridge()
                    .map(str::len)
                    .collect::<Vec<usize>>()
            })
        })
    });
    // Join trees: each case runs one function, generic over how it forks.
    fn tree_case(
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        arg: u64,
        run: [fn(u64) -> u64; 3],
        pools: &(parpool::ThreadPool, rayon::ThreadPool),
    ) {
        let (pool, rayon) = pools;
        let [sequential, parpool, rayon_run] = run;
        group.bench_function(format!("{name}/sequential"), |b| {
            b.iter(|| sequential(black_box(arg)))
        });
        group.bench_function(format!("{name}/parpool"), |b| {
            b.iter(|| pool.install(|| parpool(black_box(arg))))
        });
        group.bench_function(format!("{name}/rayon"), |b| {
            b.iter(|| rayon.install(|| rayon_run(black_box(arg))))
        });
    }
    tree_case(
        &mut group,
        "fib_30",
        30,
        [fib::<Sequential>, fib::<Parpool>, fib::<Rayon>],
        &pools,
    );
    group.sample_size(10);
    tree_case(
        &mut group,
        "fib_uneven_45",
        45,
        [
            fib_uneven::<Sequential>,
            fib_uneven::<Parpool>,
            fib_uneven::<Rayon>,
        ],
        &pools,
    );
    tree_case(
        &mut group,
        "spine_a_400",
        400,
        [spine_a::<Sequential>, spine_a::<Parpool>, spine_a::<Rayon>],
        &pools,
    );
    tree_case(
        &mut group,
        "spine_b_400",
        400,
        [spine_b::<Sequential>, spine_b::<Parpool>, spine_b::<Rayon>],
        &pools,
    );
    tree_case(
        &mut group,
        "deep_6",
        0,
        [deep_6::<Sequential>, deep_6::<Parpool>, deep_6::<Rayon>],
        &pools,
    );
    group.finish();
}

/// What a watch costs a long map: the same map bare and inside `Watch::run` with a token
/// and a progress count (and a deadline, which adds a clock read per check), in one group.
/// The ratio to quote is `watched / bare` (issue 14: at most 1%).
fn watched(c: &mut Criterion) {
    use parpool::{CancelToken, Progress, Watch};

    let (pool, _) = pools();
    let items: Vec<u64> = (0..1_000_000).collect();
    let token = CancelToken::new();
    let progress = Progress::new();
    let watch = Watch::new().cancel_token(&token).progress(&progress);
    let with_deadline = watch.clone().timeout(Duration::from_secs(3600));
    // The watch timed below must count what it watches. Checked once before the group, not
    // after it: a filtered run skips the group's functions.
    let small = watch.run(|| pool.install(|| items[..1000].par_map(|&x| x + 1)));
    assert_eq!(small.map(|v| v.len()), Ok(1000));
    assert_eq!(progress.done(), 1000);
    let mut group = c.benchmark_group("watch_1us_1m");
    group.sample_size(10);
    group.bench_function("par_map/bare", |b| {
        b.iter(|| pool.install(|| items.par_map(|&x| one_micro(x))))
    });
    group.bench_function("par_map/watched", |b| {
        b.iter(|| watch.run(|| pool.install(|| items.par_map(|&x| one_micro(x)))))
    });
    group.bench_function("par_map/watched_deadline", |b| {
        b.iter(|| with_deadline.run(|| pool.install(|| items.par_map(|&x| one_micro(x)))))
    });
    group.bench_function("pool_map/bare", |b| {
        b.iter(|| pool.map(items.iter(), |&x| one_micro(x)))
    });
    group.bench_function("pool_map/watched", |b| {
        b.iter(|| watch.run(|| pool.map(items.iter(), |&x| one_micro(x))))
    });
    group.finish();
}

criterion_group!(benches, slices, iterators, kit, shapes, watched);
criterion_main!(benches);
