//! Adversarial review of the process pool under a [`Watch`]: promises of
//! `process_watch.rs` attacked from the side of the calls that share the pool.
//!
//! Each scenario runs in a child process with a time bound: one that hangs fails its own
//! test instead of stalling the suite.
#![cfg(all(feature = "process", target_os = "linux"))]

#[path = "common/child.rs"]
mod child;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parpool::shm::{Array, Value};
use parpool::{CancelToken, ProcessPool, Progress, ProgressUpdate, Watch};

/// A job that counts its run in shared memory, then sleeps `us` microseconds.
fn counted((runs, i, us): (Array<u32>, usize, u64)) -> usize {
    runs.lock().unwrap()[i] += 1;
    std::thread::sleep(Duration::from_micros(us));
    i
}

fn tiny(x: u64) -> u64 {
    x + 1
}

/// Under `kill_on_stop`, watched maps are cancelled over and over on a one-worker pool (or
/// an elastic pool of 1 to 2 that grows and retires as it goes) while another thread's
/// unwatched jobs share the workers' pipelines. A kill for a stop
/// must never fail, lose or rerun a bystander's job: every bystander job returns `Ok` and
/// ran exactly once.
fn bystanders_survive_kills(elastic: bool) {
    let builder = ProcessPool::builder().kill_on_stop(true);
    let builder = if elastic {
        builder.elastic(1, 2).idle_timeout(Duration::from_millis(5))
    } else {
        builder.processes(1)
    };
    let pool = Arc::new(builder.build().unwrap());
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

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// CPU time this thread used so far.
fn thread_cpu() -> Duration {
    // SAFETY: `getrusage` writes into the zeroed `rusage` it is given, nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut usage), 0);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// A thread that waits under a watch (token and a far deadline) for a 1 s process job,
/// through `map` and through `submit` + `get`, sleeps: it uses a small part of the CPU
/// time a busy loop would (the 10 ms token poll costs about a thousandth of a core).
fn waiting_under_a_watch_does_not_spin() {
    let pool = ProcessPool::new(1).unwrap();
    let token = CancelToken::new();
    let watch = Watch::new()
        .cancel_token(&token)
        .timeout(Duration::from_secs(60));
    for kind in ["map", "submit"] {
        let cpu = thread_cpu();
        let start = std::time::Instant::now();
        let value = watch
            .run(|| match kind {
                "map" => pool.map([1000u64], nap).unwrap()[0],
                _ => pool.submit(nap, 1000).unwrap().get().unwrap(),
            })
            .unwrap();
        assert_eq!(value, 1000);
        let (wall, cpu) = (start.elapsed(), thread_cpu() - cpu);
        assert!(
            cpu < wall / 5,
            "{kind}: the waiting thread used {cpu:?} of CPU over {wall:?}"
        );
    }
}

/// Aborts its worker after `ms`, once `started` is set.
fn abort_after((started, ms): (Value<u32>, u64)) -> usize {
    started.store(1);
    std::thread::sleep(Duration::from_millis(ms));
    std::process::abort()
}

/// A cancelled call's jobs that wait in a worker behind its running job go back to the
/// queue when that job crashes the worker after the cancel: they must complete with the
/// stop there, never be sent to the replacement.
fn jobs_requeued_after_a_crash_after_the_stop_never_run() {
    let pool = ProcessPool::new(1).unwrap();
    // Short jobs deepen the worker's credit, so the call's jobs all go to the worker.
    assert_eq!(pool.map_chunked(0..2000u64, 1, tiny).unwrap().len(), 2000);
    let runs = Array::<u32>::zeroed(8).unwrap();
    let started = Value::new(0u32).unwrap();
    let token = CancelToken::new();
    let canceller = {
        let (token, started) = (token.clone(), started.clone());
        std::thread::spawn(move || {
            while started.load() == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            token.cancel();
        })
    };
    let result = Watch::new()
        .cancel_token(&token)
        .run(|| {
            let crashing = pool.submit(abort_after, (started.clone(), 300)).unwrap();
            let rest: Vec<_> = (0..8)
                .map(|i| pool.submit(counted, (runs.clone(), i, 1)).unwrap())
                .collect();
            let errors: Vec<_> = rest.into_iter().map(|task| task.get()).collect();
            (crashing.get(), errors)
        })
        .unwrap();
    canceller.join().unwrap();
    assert!(result.0.is_err());
    for error in &result.1 {
        assert!(error.as_ref().is_err_and(|e| e.is_cancelled()), "{error:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        runs.to_vec().unwrap(),
        vec![0; 8],
        "a stopped call's job ran"
    );
    assert_eq!(pool.map(0..4u64, tiny).unwrap(), vec![1, 2, 3, 4]);
}

fn slow_start() {
    std::thread::sleep(Duration::from_millis(400));
}

/// Under `kill_on_stop`, a call stopped (by cancel, then by deadline) while the pool's only
/// worker is still starting (the replacement of a worker killed for a stop, in its 400 ms
/// initializer) returns its stop without waiting for the worker, none of its jobs ever
/// runs, and the pool then serves.
fn stop_while_the_worker_starts() {
    let pool = ProcessPool::builder()
        .processes(1)
        .kill_on_stop(true)
        .initializer(slow_start)
        .build()
        .unwrap();
    for by_deadline in [false, true] {
        let token = CancelToken::new();
        let canceller = {
            let token = token.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                token.cancel();
            })
        };
        let first = Watch::new()
            .cancel_token(&token)
            .run(|| pool.map([60_000u64], nap))
            .unwrap();
        canceller.join().unwrap();
        assert!(first.unwrap_err().is_cancelled());
        // The replacement is in its initializer now.
        let runs = Array::<u32>::zeroed(16).unwrap();
        let jobs: Vec<_> = (0..16).map(|i| (runs.clone(), i, 1)).collect();
        let token = CancelToken::new();
        let mut watch = Watch::new().cancel_token(&token);
        if by_deadline {
            watch = watch.timeout(Duration::from_millis(50));
        } else {
            let token = token.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                token.cancel();
            });
        }
        let start = std::time::Instant::now();
        let err = watch
            .run(|| pool.map_chunked(jobs, 1, counted))
            .unwrap()
            .unwrap_err();
        assert!(err.is_cancelled() || err.is_deadline(), "{err}");
        assert!(
            start.elapsed() < Duration::from_millis(350),
            "the stopped call waited {:?} for the starting worker",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(
            runs.to_vec().unwrap(),
            vec![0; 16],
            "a stopped call's job ran"
        );
        assert_eq!(pool.map(0..4u64, tiny).unwrap(), vec![1, 2, 3, 4]);
    }
    assert_eq!(pool.counters().crashed, 0);
}

/// Marks `started`, then sleeps `ms` and marks `finished`.
fn marked((started, finished, ms): (Value<u32>, Value<u32>, u64)) -> u64 {
    started.store(1);
    std::thread::sleep(Duration::from_millis(ms));
    finished.store(1);
    ms
}

/// Under `kill_on_stop`, a submitted job whose watch's token is cancelled while nobody
/// waits on its handle (no `get`) is killed all the same, as `submit` documents ("a job
/// already sent runs to the end [...] unless the pool kills on stop"), and its handle then
/// reports the cancel.
fn cancel_with_nobody_waiting_kills() {
    let pool = ProcessPool::builder()
        .processes(1)
        .kill_on_stop(true)
        .build()
        .unwrap();
    let (started, finished) = (Value::new(0u32).unwrap(), Value::new(0u32).unwrap());
    let pid = pool.pids()[0];
    let token = CancelToken::new();
    let task = Watch::new()
        .cancel_token(&token)
        .run(|| pool.submit(marked, (started.clone(), finished.clone(), 60_000)))
        .unwrap()
        .unwrap();
    while started.load() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    token.cancel();
    let start = std::time::Instant::now();
    while pool.pids().contains(&pid) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the cancelled job's worker still runs 5 s after the cancel"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(task.get().unwrap_err().is_cancelled());
    assert_eq!(finished.load(), 0);
    assert_eq!(pool.map(0..4u64, tiny).unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(pool.counters().crashed, 0);
}

/// A progress callback that runs a map on the same process pool, over a process map that a
/// deadline stops: its own maps work (and are not counted), it gets exactly one final call,
/// the last, and none after `run` returned; the count equals the items that came back.
fn callback_into_the_pool_and_one_final_call() {
    let pool = Arc::new(ProcessPool::new(2).unwrap());
    let updates: Arc<Mutex<Vec<ProgressUpdate>>> = Arc::default();
    let progress = {
        let (pool, updates) = (Arc::clone(&pool), Arc::clone(&updates));
        Progress::with_callback(Duration::ZERO, move |update| {
            if !update.finished {
                assert_eq!(pool.map(0..3u64, tiny).unwrap(), vec![1, 2, 3]);
            }
            updates.lock().unwrap().push(update);
        })
    };
    let runs = Array::<u32>::zeroed(400).unwrap();
    let jobs: Vec<_> = (0..400).map(|i| (runs.clone(), i, 2000)).collect();
    let err = Watch::new()
        .progress(&progress)
        .timeout(Duration::from_millis(300))
        .run(|| pool.map_chunked(jobs, 1, counted))
        .unwrap()
        .unwrap_err();
    assert!(err.is_deadline(), "{err}");
    let seen = updates.lock().unwrap().clone();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        updates.lock().unwrap().len(),
        seen.len(),
        "a call after run returned"
    );
    let finals = seen.iter().filter(|u| u.finished).count();
    assert_eq!(finals, 1, "{seen:?}");
    assert!(seen.last().unwrap().finished);
    assert!(seen.len() > 1, "no periodic call: {seen:?}");
    let ran = runs.to_vec().unwrap().iter().filter(|&&r| r == 1).count() as u64;
    assert!(
        progress.done() <= ran,
        "{} done, {ran} ran",
        progress.done()
    );
    assert_eq!(progress.total(), Some(400));
}

#[test]
#[ignore = "runs only as a child of the tests below"]
fn child() {
    match std::env::var(child::SCENARIO).as_deref() {
        Ok("bystanders") => bystanders_survive_kills(false),
        Ok("bystanders-elastic") => bystanders_survive_kills(true),
        Ok("nobody-waits") => cancel_with_nobody_waiting_kills(),
        Ok("callback-into-pool") => callback_into_the_pool_and_one_final_call(),
        Ok("starting") => stop_while_the_worker_starts(),
        Ok("wait-cpu") => waiting_under_a_watch_does_not_spin(),
        Ok("crash-after-stop") => jobs_requeued_after_a_crash_after_the_stop_never_run(),
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

#[test]
fn a_kill_on_stop_never_fails_another_calls_job_on_an_elastic_pool() {
    run("bystanders-elastic");
}

#[test]
fn a_thread_waiting_under_a_watch_sleeps() {
    run("wait-cpu");
}

#[test]
fn a_stopped_calls_jobs_requeued_after_a_crash_never_run() {
    run("crash-after-stop");
}

#[test]
fn a_call_stopped_while_its_worker_starts_returns_and_nothing_runs() {
    run("starting");
}

#[test]
fn a_cancel_kills_under_kill_on_stop_with_nobody_waiting() {
    run("nobody-waits");
}

#[test]
fn a_progress_callback_may_use_the_pool_and_gets_one_final_call() {
    run("callback-into-pool");
}
