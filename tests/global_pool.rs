//! The global pool: its size from `PARPOOL_NUM_THREADS` or the CPU count, invalid values,
//! and `build_global`. The global pool can be set up only once per process, so each
//! scenario runs in a child process (this test binary re-executed on the ignored `child`
//! test with `PARPOOL_TEST_SCENARIO` set).

#[path = "common/child.rs"]
mod child;

use std::time::Duration;

use parpool::{ThreadPool, ThreadPoolBuilder};

/// Runs `scenario` in a child process with `env` set and `clear` removed, under a time
/// bound; returns (success, stdout + stderr).
fn run_child(scenario: &str, env: &[(&str, &str)], clear: &[&str]) -> (bool, String) {
    let outcome = child::run_child(scenario, env, clear, Duration::from_secs(60));
    assert!(!outcome.timed_out, "{scenario} hung:\n{}", outcome.output);
    (outcome.success, outcome.output)
}

/// The child side: one scenario per process.
#[test]
#[ignore = "runs only as a child process of the tests below"]
fn child() {
    match std::env::var(child::SCENARIO).as_deref() {
        Ok("report-size") => {
            println!("SIZE={}", ThreadPool::global().current_num_threads());
            println!("FREE={}", parpool::current_num_threads());
        }
        Ok("invalid-env") => {
            let error = ThreadPoolBuilder::new().build().unwrap_err();
            assert!(error.is_invalid_env());
            println!("ERROR={error}");
            // The global pool cannot return an error: it panics with the same message.
            ThreadPool::global();
        }
        Ok("build-global") => {
            ThreadPoolBuilder::new()
                .num_threads(3)
                .build_global()
                .unwrap();
            let again = ThreadPoolBuilder::new()
                .num_threads(2)
                .build_global()
                .unwrap_err();
            assert!(again.is_global_already_initialized());
            println!("SIZE={}", ThreadPool::global().current_num_threads());
            let (a, b) = parpool::join(parpool::current_num_threads, || 0);
            println!("IN_JOIN={a},{b}");
        }
        Ok("build-global-too-late") => {
            let _ = parpool::join(|| 1, || 2);
            let error = ThreadPoolBuilder::new()
                .num_threads(2)
                .build_global()
                .unwrap_err();
            assert!(error.is_global_already_initialized());
            println!("TOO_LATE_OK");
        }
        other => panic!("unknown scenario {other:?}"),
    }
}

#[test]
fn global_size_comes_from_the_environment() {
    let (ok, out) = run_child("report-size", &[("PARPOOL_NUM_THREADS", "3")], &[]);
    assert!(ok, "{out}");
    assert!(out.contains("SIZE=3") && out.contains("FREE=3"), "{out}");
}

#[test]
fn global_size_defaults_to_available_parallelism() {
    let (ok, out) = run_child("report-size", &[], &["PARPOOL_NUM_THREADS"]);
    assert!(ok, "{out}");
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(out.contains(&format!("SIZE={cpus}")), "{out}");
}

#[test]
fn invalid_environment_values_are_clear_errors() {
    for value in ["0", "lots", "-2"] {
        let (ok, out) = run_child("invalid-env", &[("PARPOOL_NUM_THREADS", value)], &[]);
        assert!(!ok, "the global pool must refuse {value:?}: {out}");
        assert!(
            out.contains("PARPOOL_NUM_THREADS must be a positive integer"),
            "{out}"
        );
        assert!(out.contains(&format!("{value:?}")), "{out}");
    }
}

#[test]
fn build_global_sets_the_pool_once() {
    let (ok, out) = run_child("build-global", &[], &["PARPOOL_NUM_THREADS"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("SIZE=3") && out.contains("IN_JOIN=3,0"),
        "{out}"
    );
    let (ok, out) = run_child("build-global-too-late", &[], &[]);
    assert!(ok && out.contains("TOO_LATE_OK"), "{out}");
}
