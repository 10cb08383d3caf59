//! `ThreadPoolBuilder::start_handler` / `exit_handler`: each runs once per worker, on that
//! worker, with its index, before its first job and after its last; a panicking handler
//! aborts the process (checked in a child process, this test binary re-executed on the
//! ignored `child` test with `PARPOOL_TEST_SCENARIO` set).

#[path = "common/child.rs"]
mod child;

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parpool::ThreadPool;
use parpool::prelude::*;

thread_local! {
    /// Set by the start handler, read by jobs: per-thread setup is visible to the work.
    static SETUP: Cell<Option<usize>> = const { Cell::new(None) };
}

#[test]
fn handlers_run_once_per_worker_around_its_work() {
    for round in 0..5 {
        let events = Arc::new(Mutex::new(Vec::new()));
        let (on_start, on_exit) = (Arc::clone(&events), Arc::clone(&events));
        let threads = 1 + round % 4;
        let pool = ThreadPool::builder()
            .num_threads(threads)
            .start_handler(move |i| {
                assert_eq!(parpool::current_thread_index(), Some(i));
                SETUP.with(|s| s.set(Some(i)));
                on_start.lock().unwrap().push(("start", i));
            })
            .exit_handler(move |i| {
                assert_eq!(parpool::current_thread_index(), Some(i));
                on_exit.lock().unwrap().push(("exit", i));
            })
            .build()
            .unwrap();
        // Every job sees its worker's setup.
        let seen = pool.install(|| {
            (0..10_000u32).par_map(|_| SETUP.with(Cell::get) == parpool::current_thread_index())
        });
        assert!(seen.iter().all(|&ok| ok));
        let tasks: Vec<_> = (0..8)
            .map(|_| pool.submit(|| SETUP.with(Cell::get).is_some()))
            .collect();
        assert!(tasks.into_iter().all(|t| t.get().unwrap()));
        drop(pool);

        let events = events.lock().unwrap().clone();
        assert_eq!(events.len(), 2 * threads, "{events:?}");
        for i in 0..threads {
            let start = events.iter().position(|&e| e == ("start", i));
            let exit = events.iter().position(|&e| e == ("exit", i));
            assert!(start.is_some() && exit.is_some(), "{events:?}");
            assert!(start < exit, "{events:?}");
        }
    }
}

#[test]
fn a_pool_that_fails_to_build_runs_no_handler() {
    let started = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&started);
    let error = ThreadPool::builder()
        .num_threads(0)
        .start_handler(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .build()
        .unwrap_err();
    assert!(error.is_zero_threads());
    assert_eq!(started.load(Ordering::SeqCst), 0);
}

/// Runs `scenario` in a child process under a time bound; returns (success, stdout +
/// stderr). A child that outlives the bound is killed and reported as a failure.
fn run_child(scenario: &str) -> (bool, String) {
    let outcome = child::run_child(scenario, &[], &[], Duration::from_secs(120));
    let mut text = outcome.output;
    if outcome.timed_out {
        text.push_str("\n[killed: the scenario hung]");
    }
    (outcome.success, text)
}

/// The child side: one scenario per process.
#[test]
#[ignore = "runs only as a child process of the tests below"]
fn child() {
    let builder = ThreadPool::builder().num_threads(2);
    let builder = match std::env::var(child::SCENARIO).as_deref() {
        Ok("start-panics") => builder.start_handler(|_| panic!("start handler failed")),
        Ok("exit-panics") => builder.exit_handler(|_| panic!("exit handler failed")),
        other => panic!("unknown scenario {other:?}"),
    };
    let pool = builder.build().unwrap();
    assert_eq!(pool.install(|| 2 + 2), 4);
    drop(pool);
    println!("CHILD SURVIVED");
}

#[test]
fn a_panicking_handler_aborts_the_process() {
    for (scenario, message) in [
        ("start-panics", "start handler failed"),
        ("exit-panics", "exit handler failed"),
    ] {
        let (ok, out) = run_child(scenario);
        assert!(!ok, "{scenario}: {out}");
        assert!(out.contains(message), "{scenario}: {out}");
        assert!(!out.contains("CHILD SURVIVED"), "{scenario}: {out}");
    }
}
