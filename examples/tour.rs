//! A tour of parpool, measured: `par_map` over 10M items, `imap_unordered` over a plain
//! iterator, fork-join with `join`, tasks with `submit` + `as_completed`, and a process-pool
//! `map` whose jobs count themselves in a shared-memory counter, each beside sequential code
//! (and rayon where it has an equivalent), ending with a table of speed-ups; then a long
//! process map watched by a progress bar (`--features indicatif`; a plain count without),
//! and one stopped by a deadline. Run with `cargo run --release --example tour`;
//! `PARPOOL_TOUR_SCALE=small` makes a quick run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use parpool::prelude::*;
use parpool::shm::Value;
use parpool::{Progress, Watch};
use rayon::prelude::*;

/// Problem sizes: the full tour, or a quick one for CI.
struct Scale {
    process_jobs: u64,
    map_items: u64,
    slow_items: u64,
    fib_n: u64,
    round_trips: u32,
    runs: usize,
}

impl Scale {
    fn from_env() -> Scale {
        match std::env::var("PARPOOL_TOUR_SCALE").as_deref() {
            Ok("small") => Scale {
                process_jobs: 100,
                map_items: 200_000,
                slow_items: 5_000,
                fib_n: 22,
                round_trips: 2_000,
                runs: 3,
            },
            _ => Scale {
                process_jobs: 2_000,
                map_items: 10_000_000,
                slow_items: 200_000,
                fib_n: 32,
                round_trips: 100_000,
                runs: 7,
            },
        }
    }
}

/// One line of the final table.
struct Row {
    case: String,
    sequential: Duration,
    parpool: Duration,
    rayon: Option<Duration>,
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

/// About one microsecond of CPU work (a dependent multiply chain).
fn one_micro(x: u64) -> u64 {
    let mut v = x;
    for _ in 0..960 {
        v = black_box(v.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
    v
}

/// `0..n` from an iterator that gives no size hint (as a reader or a generator would).
fn plain(n: u64) -> impl Iterator<Item = u64> {
    let mut i = 0;
    std::iter::from_fn(move || {
        i += 1;
        (i <= n).then_some(i - 1)
    })
}

/// A process job: the longest Collatz chain among 200 starting points (~50 µs of work),
/// counted in a counter shared by every worker.
fn longest_chain((block, jobs_done): (u64, Value<u64>)) -> u32 {
    jobs_done.fetch_add(1);
    longest_chain_in(block)
}

fn longest_chain_in(block: u64) -> u32 {
    (block * 200 + 1..=block * 200 + 200)
        .map(|mut n| {
            let mut steps = 0;
            while n != 1 {
                n = if n % 2 == 0 { n / 2 } else { 3 * n + 1 };
                steps += 1;
            }
            steps
        })
        .max()
        .unwrap_or(0)
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

fn fib_rayon(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = rayon::join(|| fib_rayon(n - 1), || fib_rayon(n - 2));
    a + b
}

/// A progress bar on standard error with the `indicatif` feature (drawn only when standard
/// error is a terminal), a plain count without.
fn progress() -> Progress {
    #[cfg(feature = "indicatif")]
    let progress = Progress::bar();
    #[cfg(not(feature = "indicatif"))]
    let progress = Progress::new();
    progress
}

fn main() {
    let scale = Scale::from_env();
    let pool = ThreadPool::global();
    let threads = pool.current_num_threads();
    let runs = scale.runs;
    println!(
        "parpool tour: {threads} worker threads (rayon beside it: {})\n",
        rayon::current_num_threads()
    );
    let mut rows = Vec::new();

    // 1. par_map over a large vector, into a fresh Vec.
    let n = scale.map_items;
    let data: Vec<u64> = (0..n).collect();
    let expected: Vec<u64> = data.iter().map(|x| x * 2 + 1).collect();
    assert_eq!(data.par_map(|x| x * 2 + 1), expected);
    rows.push(Row {
        case: format!("par_map, {n} u64, x*2+1, fresh Vec"),
        sequential: median_time(runs, || {
            data.iter().map(|x| x * 2 + 1).collect::<Vec<u64>>()
        }),
        parpool: median_time(runs, || data.par_map(|x| x * 2 + 1)),
        rayon: Some(median_time(runs, || {
            data.par_iter().map(|x| x * 2 + 1).collect::<Vec<u64>>()
        })),
    });

    // 2. par_map with items of ~1 µs.
    let m = scale.slow_items;
    let slow: Vec<u64> = (0..m).collect();
    assert_eq!(
        slow.par_map(|&x| one_micro(x)),
        slow.iter().map(|&x| one_micro(x)).collect::<Vec<_>>()
    );
    rows.push(Row {
        case: format!("par_map, {m} items of ~1 us"),
        sequential: median_time(runs, || {
            slow.iter().map(|&x| one_micro(x)).collect::<Vec<_>>()
        }),
        parpool: median_time(runs, || slow.par_map(|&x| one_micro(x))),
        rayon: Some(median_time(runs, || {
            slow.par_iter().map(|&x| one_micro(x)).collect::<Vec<_>>()
        })),
    });

    // 3. imap_unordered over a plain iterator (no size hint), consumed lazily.
    let mut unordered: Vec<u64> = pool.imap_unordered(plain(m), one_micro).collect();
    unordered.sort_unstable();
    let mut reference: Vec<u64> = plain(m).map(one_micro).collect();
    reference.sort_unstable();
    assert_eq!(unordered, reference);
    rows.push(Row {
        case: format!("imap_unordered, plain iterator, {m} x ~1 us"),
        sequential: median_time(runs, || plain(m).map(one_micro).fold(0, u64::wrapping_add)),
        parpool: median_time(runs, || {
            pool.imap_unordered(plain(m), one_micro)
                .fold(0, u64::wrapping_add)
        }),
        rayon: Some(median_time(runs, || {
            plain(m)
                .par_bridge()
                .map(one_micro)
                .reduce(|| 0, u64::wrapping_add)
        })),
    });

    // 4. join: divide and conquer with a join at every level.
    let f = scale.fib_n;
    assert_eq!(fib_join(f), fib_sequential(f));
    rows.push(Row {
        case: format!("join, fib({f}) with a join at every level"),
        sequential: median_time(runs, || fib_sequential(black_box(f))),
        parpool: median_time(runs, || fib_join(black_box(f))),
        rayon: Some(median_time(runs, || fib_rayon(black_box(f)))),
    });

    // 5. A process pool: crash-isolated jobs, counted in shared memory.
    let procs = ProcessPool::new(threads).expect("start the worker processes");
    let jobs = scale.process_jobs;
    let counter = Value::new(0u64).expect("shared counter");
    let expected: Vec<u32> = (0..jobs).map(longest_chain_in).collect();
    let inputs = || (0..jobs).map(|block| (block, counter.clone()));
    assert_eq!(
        procs.map(inputs(), longest_chain).expect("process map"),
        expected
    );
    assert_eq!(counter.load(), jobs, "every job counted itself");
    rows.push(Row {
        case: format!("process pool map, {jobs} jobs, shared counter"),
        sequential: median_time(runs, || (0..jobs).map(longest_chain_in).collect::<Vec<_>>()),
        parpool: median_time(runs, || {
            procs.map(inputs(), longest_chain).expect("process map")
        }),
        rayon: None,
    });
    assert_eq!(counter.load(), jobs * (1 + runs as u64));
    println!(
        "process pool: {} workers (pids {:?}); the shared counter saw {} jobs\n",
        procs.processes(),
        procs.pids(),
        counter.load()
    );

    // 5b. A long process map, watched: a progress bar; then a deadline stops one part-way
    // (chunks of 10 jobs: it returns once the chunks already sent are done), the chunks not
    // sent are dropped, and the pool serves on.
    let long = jobs * 10;
    let progress = progress();
    let watch = Watch::new().progress(&progress);
    let chains = watch
        .run(|| {
            procs.map(
                (0..long).map(|block| (block, counter.clone())),
                longest_chain,
            )
        })
        .expect("nothing stops this block")
        .expect("process map");
    assert_eq!(chains.len() as u64, long);
    assert_eq!((progress.done(), progress.total()), (long, Some(long)));
    let progress = Progress::new();
    let deadline = Duration::from_millis(20);
    let watch = Watch::new().progress(&progress).timeout(deadline);
    let stopped = watch
        .run(|| {
            let inputs = (0..long * 100).map(|block| (block, counter.clone()));
            procs.map_chunked(inputs, 10, longest_chain)
        })
        .expect("the process map reports the stop itself")
        .expect_err("the deadline stops the map");
    assert!(stopped.is_deadline());
    let again = procs.map([(7, counter.clone())], longest_chain);
    assert_eq!(again.expect("the pool serves on"), [longest_chain_in(7)]);
    println!(
        "watched process map: {long} jobs counted by a progress bar; a deadline of {deadline:?} \
         stopped a map of {} jobs after {} ({stopped})\n",
        long * 100,
        progress.done()
    );

    // 6. submit + as_completed: results arrive in completion order.
    println!("submit + as_completed: 6 tasks of different lengths");
    let start = Instant::now();
    let lengths_ms = [40u64, 10, 30, 5, 20, 15];
    let tasks = lengths_ms.map(|ms| {
        pool.submit(move || {
            let deadline = Instant::now() + Duration::from_millis(ms);
            while Instant::now() < deadline {
                black_box(one_micro(ms));
            }
            ms
        })
    });
    let mut order = Vec::new();
    for (_, task) in as_completed(tasks) {
        let ms = task.get().expect("task does not panic");
        order.push(ms);
        println!("  task of {ms:>2} ms finished at {:>8.2?}", start.elapsed());
    }
    assert_eq!(order.len(), lengths_ms.len());
    println!(
        "  all done in {:.2?} ({} ms of work)\n",
        start.elapsed(),
        lengths_ms.iter().sum::<u64>()
    );

    // 7. The cost of one submit + get round trip.
    let trips = scale.round_trips;
    let warm = {
        let start = Instant::now();
        for i in 0..trips {
            black_box(pool.submit(move || black_box(i)).get().unwrap());
        }
        start.elapsed() / trips
    };
    let mut asleep: Vec<Duration> = (0..20)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(5));
            let start = Instant::now();
            black_box(pool.submit(move || black_box(i)).get().unwrap());
            start.elapsed()
        })
        .collect();
    asleep.sort();
    println!(
        "submit + get round trip: {warm:.2?} warm (mean of {trips}), {:.2?} after 5 ms idle (median of 20)\n",
        asleep[10]
    );

    println!(
        "{:<48} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "case", "sequential", "parpool", "rayon", "speed-up", "vs rayon"
    );
    for row in &rows {
        let speedup = row.sequential.as_secs_f64() / row.parpool.as_secs_f64();
        let (rayon, versus) = match row.rayon {
            Some(r) => (
                format!("{r:.2?}"),
                format!("{:.2}x", r.as_secs_f64() / row.parpool.as_secs_f64()),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<48} {:>12} {:>12} {:>12} {:>8.2}x {:>9}",
            row.case,
            format!("{:.2?}", row.sequential),
            format!("{:.2?}", row.parpool),
            rayon,
            speedup,
            versus
        );
    }
    println!(
        "\nspeed-up: sequential time / parpool time; vs rayon: rayon time / parpool time (>1: parpool faster)"
    );
}
