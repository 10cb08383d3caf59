//! Crash storms: thousands of jobs of which about 30 % abort, segfault, SIGKILL their worker,
//! exit or panic. Each job counts its runs in shared memory; the test asserts that every job
//! ran exactly once and that every outcome is the right one (the value, or the error naming
//! what that very job did). Each storm runs in a child process with a time bound, so a hang
//! fails the test instead of stalling the suite.
#![cfg(all(feature = "process", target_os = "linux"))]

#[path = "common/child.rs"]
mod child;

use std::time::Duration;

use parpool::process::ProcessTask;
use parpool::shm::Array;
use parpool::{ProcessError, ProcessPool};

/// What a storm job does, by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ok,
    Abort,
    Segfault,
    Kill,
    Exit,
    Panic,
}

/// The exit code of an exiting storm job.
const EXIT_CODE: i32 = 42;

/// Spreads the failures over the indices (a multiplicative hash), 6 in 20: 30 %.
fn fate(i: u64) -> Fate {
    match i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 59 {
        0..=1 => Fate::Abort,
        2 => Fate::Segfault,
        3 => Fate::Kill,
        4 => Fate::Exit,
        5 => Fate::Panic,
        _ => Fate::Ok,
    }
}

/// A storm job: counts its run in `runs[i]`, then does what [`fate`] says.
fn storm_job((i, runs): (u64, Array<u64>)) -> u64 {
    runs.lock().unwrap()[i as usize] += 1;
    match fate(i) {
        Fate::Ok => i * 3,
        Fate::Abort => std::process::abort(),
        Fate::Segfault => {
            // SAFETY: not safe at all, deliberately: the segmentation fault is the test.
            unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
            unreachable!()
        }
        Fate::Kill => {
            // SAFETY: kill(2) with our own pid and a valid signal has no memory effects.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!()
        }
        Fate::Exit => std::process::exit(EXIT_CODE),
        // `resume_unwind` skips the panic hook: no message per job on stderr.
        Fate::Panic => std::panic::resume_unwind(Box::new("storm panic")),
    }
}

/// Whether `outcome` is the right one for job `i`.
fn is_right(i: u64, outcome: &Result<u64, ProcessError>) -> bool {
    match (fate(i), outcome) {
        (Fate::Ok, Ok(v)) => *v == i * 3,
        (Fate::Abort, Err(e)) => e.is_crash() && e.signal() == Some(libc::SIGABRT),
        (Fate::Segfault, Err(e)) => e.is_crash() && e.signal() == Some(libc::SIGSEGV),
        (Fate::Kill, Err(e)) => e.is_crash() && e.signal() == Some(libc::SIGKILL),
        (Fate::Exit, Err(e)) => e.is_crash() && e.exit_code() == Some(EXIT_CODE),
        (Fate::Panic, Err(e)) => e.is_panic() && e.panic_message() == Some("storm panic"),
        _ => false,
    }
}

/// Submits jobs `0..jobs` in rounds of `round` (each round submitted at once, then awaited)
/// to a pool of `processes`; prints and returns (jobs, total runs, jobs not run exactly
/// once, wrong outcomes).
fn storm(processes: usize, jobs: u64, round: u64) -> (u64, u64, u64, u64) {
    let pool = ProcessPool::new(processes).unwrap();
    storm_on(&pool, jobs, round, Duration::ZERO)
}

/// [`storm`] on an elastic pool of 1 to 4 workers with a 5 ms idle timeout, pausing 20 ms
/// after every round: each round grows the pool (crashes re-queue jobs and leave the queue
/// waiting), each pause shrinks it, and crashes land during both.
fn elastic_storm(jobs: u64, round: u64) -> (u64, u64, u64, u64) {
    let pool = ProcessPool::builder()
        .elastic(1, 4)
        .idle_timeout(Duration::from_millis(5))
        .build()
        .unwrap();
    let outcome = storm_on(&pool, jobs, round, Duration::from_millis(20));
    let counters = pool.counters();
    println!("ELASTIC {counters:?}");
    assert!(counters.retired >= 5, "the pool shrank often: {counters:?}");
    assert!(
        counters.spawned >= counters.crashed + 5,
        "the pool grew often, not only to replace crashed workers: {counters:?}"
    );
    outcome
}

/// The storm itself, on `pool`, with a `pause` after each round.
fn storm_on(pool: &ProcessPool, jobs: u64, round: u64, pause: Duration) -> (u64, u64, u64, u64) {
    let processes = pool.processes();
    let runs = Array::<u64>::zeroed(jobs as usize).unwrap();
    let mut wrong = 0;
    let mut start = 0;
    while start < jobs {
        let end = (start + round).min(jobs);
        let tasks: Vec<(u64, ProcessTask<u64>)> = (start..end)
            .map(|i| (i, pool.submit(storm_job, (i, runs.clone())).unwrap()))
            .collect();
        for (i, task) in tasks {
            let outcome = task.get();
            if !is_right(i, &outcome) {
                wrong += 1;
                if wrong <= 5 {
                    eprintln!("job {i} ({:?}): wrong outcome {outcome:?}", fate(i));
                }
            }
        }
        start = end;
        std::thread::sleep(pause);
    }
    let runs = runs.to_vec().unwrap();
    let total: u64 = runs.iter().sum();
    let not_once = runs.iter().filter(|&&r| r != 1).count() as u64;
    println!(
        "STORM processes={processes} jobs={jobs} runs={total} not_once={not_once} wrong={wrong}"
    );
    (jobs, total, not_once, wrong)
}

/// The child side: one storm per process.
#[test]
#[ignore = "runs only as a child process of the tests below"]
fn child() {
    let (jobs, runs, not_once, wrong) = match std::env::var(child::SCENARIO).as_deref() {
        // The reproduction of the issue: one worker, rounds of ten submits.
        Ok("one-worker-rounds") => storm(1, 2_000, 10),
        // Four workers, everything submitted at once: deep pipelines behind every crash.
        Ok("four-workers") => storm(4, 3_000, 3_000),
        // Four workers, rounds of forty: submits race with dying workers.
        Ok("four-workers-rounds") => storm(4, 3_000, 40),
        // Two workers, rounds of a hundred.
        Ok("two-workers-rounds") => storm(2, 2_000, 100),
        // An elastic pool growing and shrinking all along.
        Ok("elastic-rounds") => elastic_storm(2_000, 40),
        other => panic!("unknown scenario {other:?}"),
    };
    assert_eq!(runs, jobs, "every job runs exactly once");
    assert_eq!(not_once, 0, "every job runs exactly once");
    assert_eq!(wrong, 0, "every outcome is the job's own");
}

fn run_storm(scenario: &str) {
    let outcome = child::run_child(scenario, &[], &[], Duration::from_secs(300));
    assert!(!outcome.timed_out, "the storm hung:\n{}", outcome.output);
    assert!(outcome.success, "{}", outcome.output);
    let counts = outcome
        .output
        .lines()
        .find_map(|l| l.find("STORM").map(|at| &l[at..]));
    println!("{}", counts.unwrap_or("no counts"));
    if let Some(elastic) = outcome.output.lines().find(|l| l.starts_with("ELASTIC")) {
        println!("{elastic}");
    }
}

#[test]
fn stress_crash_storm_one_worker_in_rounds() {
    run_storm("one-worker-rounds");
}

#[test]
fn stress_crash_storm_four_workers_at_once() {
    run_storm("four-workers");
}

#[test]
fn stress_crash_storm_four_workers_in_rounds() {
    run_storm("four-workers-rounds");
}

#[test]
fn stress_crash_storm_two_workers_in_rounds() {
    run_storm("two-workers-rounds");
}

#[test]
fn stress_crash_storm_elastic_growing_and_shrinking() {
    run_storm("elastic-rounds");
}
