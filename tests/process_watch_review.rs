//! Adversarial review of the process pool under a [`Watch`]: promises of
//! `process_watch.rs` attacked from the side of the calls that share the pool.
//!
//! Each scenario runs in a child process with a time bound: one that hangs fails its own
//! test instead of stalling the suite.
#![cfg(all(feature = "process", target_os = "linux"))]

#[path = "common/child.rs"]
mod child;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parpool::shm::Array;
use parpool::{CancelToken, ProcessPool, Watch};

/// A job that counts its run in shared memory, then sleeps `us` microseconds.
fn counted((runs, i, us): (Array<u32>, usize, u64)) -> usize {
    runs.lock().unwrap()[i] += 1;
    std::thread::sleep(Duration::from_micros(us));
    i
}

fn tiny(x: u64) -> u64 {
    x + 1
}

/// Under `kill_on_stop`, watched maps are cancelled over and over on a one-worker pool
/// while another thread's unwatched jobs share the worker's pipeline. A kill for a stop
/// must never fail, lose or rerun a bystander's job: every bystander job returns `Ok` and
/// ran exactly once.
fn bystanders_survive_kills() {
    let pool = Arc::new(
        ProcessPool::builder()
            .processes(1)
            .kill_on_stop(true)
            .build()
            .unwrap(),
    );
    const BYSTANDERS: usize = 3000;
    let runs = Array::<u32>::zeroed(BYSTANDERS).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let bystander = {
        let (pool, runs, done) = (Arc::clone(&pool), runs.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            for i in 0..BYSTANDERS {
                // A few in flight at once, so they sit in the worker behind watched jobs.
                let task = pool.submit(counted, (runs.clone(), i, 150)).unwrap();
                if let Err(e) = task.get() {
                    failures.push(format!("job {i}: {e}"));
                }
            }
            done.store(true, Ordering::Relaxed);
            failures
        })
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rounds = 0;
    while !done.load(Ordering::Relaxed) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let token = CancelToken::new();
        let canceller = {
            let token = token.clone();
            let after = Duration::from_micros(200 + seed % 2000);
            std::thread::spawn(move || {
                std::thread::sleep(after);
                token.cancel();
            })
        };
        let wruns = Array::<u32>::zeroed(64).unwrap();
        let jobs: Vec<_> = (0..64).map(|i| (wruns.clone(), i, 100)).collect();
        let _ = Watch::new()
            .cancel_token(&token)
            .run(|| pool.map_chunked(jobs, 1, counted));
        canceller.join().unwrap();
        rounds += 1;
    }
    let failures = bystander.join().unwrap();
    let counts = runs.to_vec().unwrap();
    let twice = counts.iter().filter(|&&r| r > 1).count();
    assert!(
        failures.is_empty() && twice == 0,
        "{} of {BYSTANDERS} bystander jobs failed ({twice} ran twice) over {rounds} stopped \
         rounds; first: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(pool.map(0..4u64, tiny).unwrap(), vec![1, 2, 3, 4]);
}

#[test]
#[ignore = "runs only as a child of the tests below"]
fn child() {
    match std::env::var(child::SCENARIO).as_deref() {
        Ok("bystanders") => bystanders_survive_kills(),
        other => panic!("unknown scenario {other:?}"),
    }
}

fn run(scenario: &str) {
    let outcome = child::run_child(scenario, &[], &[], Duration::from_secs(120));
    assert!(
        outcome.success,
        "{scenario} failed (timed out: {}):\n{}",
        outcome.timed_out, outcome.output
    );
}

#[test]
fn a_kill_on_stop_never_fails_another_calls_job() {
    run("bystanders");
}
