//! The cost of spreading a map over ranks, run once per rank count:
//!
//! ```text
//! cargo bench -p parpool-mpi --no-run
//! mpirun -np 1 --bind-to core target/release/deps/ranks-<hash> --bench
//! mpirun -np 2 --bind-to core target/release/deps/ranks-<hash> --bench
//! ```
//!
//! (`cargo bench` prints the binary's path; on a machine shared with other work add
//! `--mca mpi_yield_when_idle 1`, or waiting ranks spin). Each rank maps on a one-thread
//! pool, so the ranks are the only parallelism. Two loads of 2M items (`--items N` to change):
//!
//! - `uniform`: every item spins ~0.7 µs (calibrated on rank 0 at start). The figure is
//!   the 1-rank time over the 2-rank time.
//! - `ramp`: item `i` costs ∝ `i` (0.7 µs on average), so the static split's second half
//!   holds three quarters of the work. The figure is static over dynamic, in one run.
//!
//! Each case runs `REPEATS` times, alternating; the fastest run counts. Not criterion:
//! every rank must run the same maps the same number of times.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mpi::collective::Root;
use mpi::topology::Communicator;
use parpool::ThreadPool;
use parpool_mpi::{Cluster, Plain, Schedule};

const REPEATS: usize = 3;
const ITEM_NS: f64 = 700.0;

/// One step of an LCG: a multiply-add chain the compiler cannot shorten.
fn spin(seed: u64, steps: u64) -> u64 {
    let mut x = seed;
    for _ in 0..steps {
        x = black_box(
            x.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
    x
}

/// Spin steps per nanosecond on this rank, measured over ~50 ms.
fn calibrate() -> f64 {
    let steps = 1_000_000;
    let mut best = Duration::MAX;
    for _ in 0..10 {
        let start = Instant::now();
        black_box(spin(1, steps));
        best = best.min(start.elapsed());
    }
    steps as f64 / best.as_nanos() as f64
}

fn time(run: impl FnOnce()) -> Duration {
    let start = Instant::now();
    run();
    start.elapsed()
}

fn main() {
    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    let mut args = std::env::args().skip(1);
    let mut items = 2_000_000usize;
    while let Some(arg) = args.next() {
        if arg == "--items" {
            items = args.next().and_then(|n| n.parse().ok()).expect("--items N");
        }
    }
    let mut steps_per_ns = calibrate();
    world.process_at_rank(0).broadcast_into(&mut steps_per_ns);
    let uniform_steps = (ITEM_NS * steps_per_ns) as u64;
    let ramp_steps = |i: usize| (2.0 * ITEM_NS * steps_per_ns * i as f64 / items as f64) as u64;

    let dynamic = Cluster::new(&world, ThreadPool::new(1).unwrap());
    let fixed = Cluster::new(&world, ThreadPool::new(1).unwrap()).schedule(Schedule::Static);
    let mut best = [Duration::MAX; 3];
    for _ in 0..REPEATS {
        let runs = [
            time(|| {
                drop(
                    dynamic
                        .map_range(Plain, items, |i| spin(i as u64, uniform_steps))
                        .unwrap(),
                )
            }),
            time(|| {
                drop(
                    dynamic
                        .map_range(Plain, items, |i| spin(i as u64, ramp_steps(i)))
                        .unwrap(),
                )
            }),
            time(|| {
                drop(
                    fixed
                        .map_range(Plain, items, |i| spin(i as u64, ramp_steps(i)))
                        .unwrap(),
                )
            }),
        ];
        for (best, run) in best.iter_mut().zip(runs) {
            *best = (*best).min(run);
        }
    }
    if world.rank() == 0 {
        let ranks = world.size();
        let [uniform, ramp_dynamic, ramp_static] = best.map(|d| d.as_secs_f64() * 1e3);
        let per_item = uniform * 1e6 / items as f64 * ranks as f64;
        println!(
            "bench ranks={ranks} items={items} uniform_ms={uniform:.1} ({per_item:.0} ns per item per rank)"
        );
        println!(
            "bench ranks={ranks} ramp_dynamic_ms={ramp_dynamic:.1} ramp_static_ms={ramp_static:.1}"
        );
        println!(
            "bench ranks={ranks} ramp: dynamic {:.2}x faster than static",
            ramp_static / ramp_dynamic
        );
    }
}
