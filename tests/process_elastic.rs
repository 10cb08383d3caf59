//! Elastic process pools: a burst grows the pool to its maximum one worker at a time,
//! idling shrinks it to its minimum, retirement racing with submissions runs every job
//! exactly once, bad bounds are errors, and `terminate` or drop in the middle of growth
//! leave no process behind. (The crash storm during growth and shrinking is
//! in `process_storm.rs`, beside the other storms.)
//!
//! Each scenario runs in a child process with a time bound: one that hangs fails its own
//! test, and the children a scenario counts are its own.
#![cfg(all(feature = "process", target_os = "linux"))]

#[path = "common/child.rs"]
mod child;

#[path = "common/procs.rs"]
mod procs;
use procs::children;

use std::time::{Duration, Instant};

use parpool::ProcessPool;
use parpool::process::ProcessTask;
use parpool::shm::Array;

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Waits until `pool` has `workers` workers; panics after `bound`.
fn wait_for_workers(pool: &ProcessPool, workers: usize, bound: Duration) {
    let give_up = Instant::now() + bound;
    while pool.workers() != workers {
        assert!(
            Instant::now() < give_up,
            "the pool has {} workers, not {workers}, after {bound:?} ({:?})",
            pool.workers(),
            pool.counters()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A burst of 40 jobs of 50 ms on `elastic(1, 4)`: the pool grows to 4 workers, never more,
/// spawning exactly 4 (no storm), and every job runs; 3 jobs grow `elastic(1, 8)` to 3.
fn burst_grows_to_the_maximum() {
    let pool = ProcessPool::builder()
        .elastic(1, 4)
        .idle_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    assert_eq!(pool.workers(), 1);
    let tasks: Vec<_> = (0..40)
        .map(|_| pool.submit(nap, 50).unwrap())
        .collect::<Vec<_>>();
    let mut most = 0;
    for task in tasks {
        most = most.max(pool.workers());
        assert_eq!(task.get().unwrap(), 50);
    }
    assert_eq!(most, 4, "the pool grew to its maximum");
    assert_eq!(pool.workers(), 4);
    let counters = pool.counters();
    assert_eq!(
        counters.spawned, 4,
        "one spawn per added worker: {counters:?}"
    );
    assert_eq!((counters.retired, counters.crashed), (0, 0));
    // Growth follows the jobs that wait, one worker at a time: 3 long jobs on
    // `elastic(1, 8)` add 2 workers, not 7.
    let pool = ProcessPool::builder().elastic(1, 8).build().unwrap();
    let tasks: Vec<_> = (0..3).map(|_| pool.submit(nap, 300).unwrap()).collect();
    for task in tasks {
        assert_eq!(task.get().unwrap(), 300);
    }
    assert_eq!((pool.workers(), pool.counters().spawned), (3, 3));
    // A map grows it the same way.
    let pool = ProcessPool::builder().elastic(1, 3).build().unwrap();
    assert_eq!(pool.map(vec![30; 30], nap).unwrap(), vec![30; 30]);
    assert_eq!(pool.workers(), 3);
    assert_eq!(pool.counters().spawned, 3);
}

/// After a burst, `elastic(2, 4)` with a 100 ms idle timeout shrinks back to 2 workers,
/// never fewer, and still serves; shrinking and growing again repeat.
fn idling_shrinks_to_the_minimum() {
    let pool = ProcessPool::builder()
        .elastic(2, 4)
        .idle_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    for round in 1..=3u64 {
        assert_eq!(pool.map(vec![40; 40], nap).unwrap(), vec![40; 40]);
        assert_eq!(pool.counters().spawned, 2 + 2 * round, "grew to 4 again");
        wait_for_workers(&pool, 2, Duration::from_secs(20));
        // Idle far past the timeout: it stays at its minimum.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(pool.workers(), 2);
        let counters = pool.counters();
        assert_eq!((counters.retired, counters.crashed), (2 * round, 0));
    }
    assert_eq!(pool.submit(nap, 1).unwrap().get().unwrap(), 1);
    // A minimum of 0: the pool empties, and the next job brings a worker back.
    let pool = ProcessPool::builder()
        .elastic(0, 2)
        .idle_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    assert_eq!(pool.workers(), 0);
    for _ in 0..3 {
        assert_eq!(pool.submit(nap, 1).unwrap().get().unwrap(), 1);
        wait_for_workers(&pool, 0, Duration::from_secs(20));
    }
    assert_eq!(pool.counters().retired, pool.counters().spawned);
}

/// `terminate` and drop at moments spread over a burst's growth: no worker, starting or
/// ready, outlives the call, and no job is left waiting.
fn terminate_and_drop_during_growth() {
    for round in 0..24u64 {
        let pool = ProcessPool::builder()
            .elastic(1, 8)
            .idle_timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let tasks: Vec<_> = (0..64).map(|_| pool.submit(nap, 5).unwrap()).collect();
        // 0 to 11 ms: before the first spawn, in the middle of the ramp, after it.
        std::thread::sleep(Duration::from_micros(500 * (round % 23)));
        if round % 2 == 0 {
            pool.terminate();
            assert_eq!(pool.workers(), 0);
            for task in tasks {
                match task.get() {
                    Ok(v) => assert_eq!(v, 5),
                    Err(e) => assert!(e.is_closed(), "{e}"),
                }
            }
        } else {
            drop(pool);
            for task in tasks {
                assert_eq!(task.get().unwrap(), 5, "drop lets queued jobs finish");
            }
        }
        assert_eq!(
            children(),
            Vec::<u32>::new(),
            "round {round}: no process is left"
        );
    }
}

/// Counts its run in `runs[i]`, then naps `us` microseconds.
fn counted_nap((i, us, runs): (usize, u64, Array<u64>)) -> usize {
    runs.lock().unwrap()[i] += 1;
    std::thread::sleep(Duration::from_micros(us));
    i
}

/// Retirement racing with submissions: a 1 ms idle timeout and a minimum of 0, with gaps
/// between submissions around the idle timeout, so workers retire just as jobs arrive and
/// the pool empties and grows again all along. Every job runs exactly once and answers.
fn retirement_races_submissions() {
    let pool = ProcessPool::builder()
        .elastic(0, 3)
        .idle_timeout(Duration::from_millis(1))
        .build()
        .unwrap();
    const JOBS: usize = 1_500;
    let runs = Array::<u64>::zeroed(JOBS).unwrap();
    let mut tasks: Vec<ProcessTask<usize>> = Vec::new();
    while tasks.len() < JOBS {
        // A burst of 1 to 5 jobs of 0 to 400 µs, then a gap of 0 to 2.4 ms.
        let burst = (1 + tasks.len() % 5).min(JOBS - tasks.len());
        for _ in 0..burst {
            let i = tasks.len();
            let us = (i as u64 * 37) % 400;
            tasks.push(pool.submit(counted_nap, (i, us, runs.clone())).unwrap());
        }
        std::thread::sleep(Duration::from_micros((tasks.len() as u64 * 53) % 2_400));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.get().unwrap(), i);
    }
    let runs = runs.to_vec().unwrap();
    let not_once = runs.iter().filter(|&&r| r != 1).count();
    let counters = pool.counters();
    println!("RACE jobs={JOBS} not_once={not_once} {counters:?}");
    assert_eq!(not_once, 0, "every job runs exactly once");
    assert_eq!(counters.crashed, 0);
    assert!(
        counters.retired >= 20,
        "workers retired all along: {counters:?}"
    );
}

/// The child side: one scenario per process.
#[test]
#[ignore = "runs only as a child process of the tests below"]
fn child() {
    match std::env::var(child::SCENARIO).as_deref() {
        Ok("burst") => burst_grows_to_the_maximum(),
        Ok("shrink") => idling_shrinks_to_the_minimum(),
        Ok("terminate-drop") => terminate_and_drop_during_growth(),
        Ok("retire-race") => retirement_races_submissions(),
        other => panic!("unknown scenario {other:?}"),
    }
}

fn run(scenario: &str) {
    let outcome = child::run_child(scenario, &[], &[], Duration::from_secs(120));
    assert!(!outcome.timed_out, "the scenario hung:\n{}", outcome.output);
    assert!(outcome.success, "{}", outcome.output);
    for line in outcome.output.lines() {
        if let Some(at) = line.find("RACE") {
            println!("{}", &line[at..]);
        }
    }
}

#[test]
fn stress_burst_grows_to_the_maximum() {
    run("burst");
}

#[test]
fn stress_idling_shrinks_to_the_minimum() {
    run("shrink");
}

#[test]
fn stress_terminate_and_drop_during_growth_leave_no_process() {
    run("terminate-drop");
}

#[test]
fn stress_retirement_races_submissions() {
    run("retire-race");
}

#[test]
fn bad_bounds_are_errors() {
    let err = ProcessPool::builder().elastic(3, 2).build().unwrap_err();
    assert!(err.is_invalid_argument());
    assert_eq!(err.argument(), Some("elastic"), "{err}");
    let err = ProcessPool::builder().elastic(0, 0).build().unwrap_err();
    assert!(err.is_invalid_argument());
    assert_eq!(err.argument(), Some("processes"), "{err}");
    let err = ProcessPool::builder().processes(0).build().unwrap_err();
    assert!(err.is_invalid_argument());
    assert_eq!(err.argument(), Some("processes"), "{err}");
    // The last of `processes` and `elastic` wins.
    let pool = ProcessPool::builder().elastic(3, 2).processes(1).build();
    assert_eq!(pool.unwrap().processes(), 1);
}
