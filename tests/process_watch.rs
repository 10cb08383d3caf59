//! The process pool under a [`Watch`]: a cancel or a deadline stops `map`, `imap`,
//! `imap_unordered` and `submit` (the items not sent never run, none runs twice, every item
//! is dropped once in the parent, nothing of the call runs after it returns), `kill_on_stop`
//! kills the running job's worker and the pool serves on, a stopped `imap` yields its error
//! once and then ends, and progress counts every item, through a callback at a bounded rate.
//!
//! Each scenario runs in a child process with a time bound: one that hangs fails its own
//! test instead of stalling the suite.
#![cfg(all(feature = "process", target_os = "linux"))]

#[path = "common/child.rs"]
mod child;
#[path = "common/cpu.rs"]
mod cpu;

use cpu::thread_cpu;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parpool::shm::{Array, Value};
use parpool::{CancelToken, ProcessError, ProcessPool, Progress, ProgressUpdate, Watch};
use serde::{Deserialize, Serialize};

/// Items dropped in this process (the parent): each exactly once, sent or not.
static DROPS: AtomicUsize = AtomicUsize::new(0);

/// One item of a counted map: its index, the run counters, and how long its job takes.
#[derive(Serialize, Deserialize)]
struct Item {
    i: usize,
    runs: Array<u32>,
    ms: u64,
}

impl Drop for Item {
    fn drop(&mut self) {
        DROPS.fetch_add(1, Ordering::Relaxed);
    }
}

/// The job: counts its run in shared memory, then takes its time.
fn counted(item: Item) -> usize {
    item.runs.lock().unwrap()[item.i] += 1;
    std::thread::sleep(Duration::from_millis(item.ms));
    item.i
}

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Marks `started`, then sleeps `ms` and marks `finished`.
fn marked((started, finished, ms): (Value<u32>, Value<u32>, u64)) -> u64 {
    started.store(1);
    std::thread::sleep(Duration::from_millis(ms));
    finished.store(1);
    ms
}

/// `n` items of `ms` each, counting into `runs`: made up front, so that the ones a stopped
/// call never pulls exist, and must be dropped, too.
fn items(n: usize, runs: &Array<u32>, ms: u64) -> Vec<Item> {
    (0..n)
        .map(|i| Item {
            i,
            runs: runs.clone(),
            ms,
        })
        .collect()
}

/// How many items ran, after checking that none ran twice and that none runs any more.
fn ran_once_and_settled(runs: &Array<u32>) -> usize {
    let at_return = runs.to_vec().unwrap();
    assert!(at_return.iter().all(|&r| r <= 1), "an item ran twice");
    // Nothing of a stopped call runs after it returned: the counts stay as they are.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        runs.to_vec().unwrap(),
        at_return,
        "an item ran after the call returned"
    );
    at_return.iter().filter(|&&r| r == 1).count()
}

/// Cancels `token` from another thread once `at_least` items ran.
fn cancel_after(
    token: &CancelToken,
    runs: &Array<u32>,
    at_least: u32,
) -> std::thread::JoinHandle<()> {
    let (token, runs) = (token.clone(), runs.clone());
    std::thread::spawn(move || {
        while runs.to_vec().unwrap().iter().sum::<u32>() < at_least {
            std::thread::sleep(Duration::from_millis(1));
        }
        token.cancel();
    })
}

/// A map cancelled from another thread mid-way: the error says cancelled, the items not
/// sent never ran, none ran twice, nothing runs after the return, every item was dropped
/// once, progress counted no more than ran; the pool serves on. Then the same with each
/// chunking, and a map whose token was cancelled before it started.
fn cancel_mid_map() {
    let pool = ProcessPool::new(2).unwrap();
    for chunk in [1, 3, 0] {
        const N: usize = 400;
        let runs = Array::<u32>::zeroed(N).unwrap();
        let token = CancelToken::new();
        let progress = Progress::new();
        DROPS.store(0, Ordering::Relaxed);
        let canceller = cancel_after(&token, &runs, 10);
        let watch = Watch::new().cancel_token(&token).progress(&progress);
        let result = watch
            .run(|| match chunk {
                0 => pool.map(items(N, &runs, 5), counted),
                n => pool.map_chunked(items(N, &runs, 5), n, counted),
            })
            .unwrap();
        canceller.join().unwrap();
        let err = result.unwrap_err();
        assert!(err.is_cancelled() && !err.is_deadline(), "{err}");
        assert_eq!(
            err.to_string(),
            "the call was stopped: the watch's cancel token was cancelled"
        );
        let ran = ran_once_and_settled(&runs);
        assert!(
            (10..N / 2).contains(&ran),
            "chunk {chunk}: {ran} of {N} ran"
        );
        assert_eq!(DROPS.load(Ordering::Relaxed), N, "every item dropped once");
        assert_eq!(progress.total(), Some(N as u64));
        assert!(progress.done() <= ran as u64);
        assert_eq!(pool.map(0..10u64, square).unwrap()[9], 81);
    }
    // Cancelled before the call: nothing runs, every item is dropped.
    let runs = Array::<u32>::zeroed(50).unwrap();
    let token = CancelToken::new();
    DROPS.store(0, Ordering::Relaxed);
    let err = Watch::new()
        .cancel_token(&token)
        .run(|| {
            token.cancel();
            pool.map(items(50, &runs, 0), counted)
        })
        .unwrap()
        .unwrap_err();
    assert!(err.is_cancelled(), "{err}");
    assert_eq!(ran_once_and_settled(&runs), 0);
    assert_eq!(DROPS.load(Ordering::Relaxed), 50);
}

/// A map stopped by its deadline: the error says deadline, with the same guarantees.
fn deadline_mid_map() {
    let pool = ProcessPool::new(2).unwrap();
    const N: usize = 400;
    let runs = Array::<u32>::zeroed(N).unwrap();
    DROPS.store(0, Ordering::Relaxed);
    let watch = Watch::new().timeout(Duration::from_millis(200));
    let err = watch
        .run(|| pool.map_chunked(items(N, &runs, 5), 1, counted))
        .unwrap()
        .unwrap_err();
    assert!(err.is_deadline() && !err.is_cancelled(), "{err}");
    let ran = ran_once_and_settled(&runs);
    assert!(ran < N / 2, "{ran} of {N} ran");
    assert_eq!(DROPS.load(Ordering::Relaxed), N);
    assert_eq!(pool.map([1u64, 2], square).unwrap(), [1, 4]);
}

/// A running job under the default lets it finish (the call returns after it), and under
/// `kill_on_stop` its worker is killed (the call returns at once) and replaced, not counted
/// as a crash; the pool serves on either way.
fn running_jobs_finish_or_are_killed() {
    for kill in [false, true] {
        let pool = ProcessPool::builder()
            .processes(1)
            .kill_on_stop(kill)
            .build()
            .unwrap();
        let pid = pool.pids()[0];
        let (started, finished) = (Value::new(0u32).unwrap(), Value::new(0u32).unwrap());
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
        let ms = if kill { 60_000 } else { 300 };
        let jobs = vec![(started.clone(), finished.clone(), ms); 3];
        let err = Watch::new()
            .cancel_token(&token)
            .run(|| pool.map_chunked(jobs, 1, marked))
            .unwrap()
            .unwrap_err();
        canceller.join().unwrap();
        assert!(err.is_cancelled(), "{err}");
        if kill {
            assert_eq!(finished.load(), 0, "the job was killed");
            assert_eq!(pool.map([3u64], square).unwrap(), [9]);
            assert_ne!(pool.pids(), [pid], "a new worker took the slot");
            let counters = pool.counters();
            assert_eq!((counters.spawned, counters.crashed), (2, 0), "{counters:?}");
        } else {
            assert_eq!(
                finished.load(),
                1,
                "the running job finished before the return"
            );
            assert_eq!(pool.pids(), [pid]);
            assert_eq!(pool.map([3u64], square).unwrap(), [9]);
        }
    }
}

/// A stopped `imap` or `imap_unordered` yields its error once and then ends; the items
/// not sent never run.
fn imap_error_once_then_end() {
    let pool = ProcessPool::new(2).unwrap();
    for unordered in [false, true] {
        for deadline in [false, true] {
            const N: usize = 1000;
            let runs = Array::<u32>::zeroed(N).unwrap();
            let token = CancelToken::new();
            let mut watch = Watch::new().cancel_token(&token);
            if deadline {
                watch = watch.timeout(Duration::from_millis(200));
            }
            let results: Vec<Result<usize, ProcessError>> = watch
                .run(|| {
                    let iter: Box<dyn Iterator<Item = _>> = if unordered {
                        Box::new(pool.imap_unordered(items(N, &runs, 2), counted))
                    } else {
                        Box::new(pool.imap(items(N, &runs, 2), counted))
                    };
                    let mut iter = iter;
                    let mut results = Vec::new();
                    for result in iter.by_ref() {
                        let ok = result.is_ok();
                        results.push(result);
                        if ok && results.len() == 20 && !deadline {
                            token.cancel();
                        }
                    }
                    // Not fused, and still ended.
                    for _ in 0..3 {
                        assert!(iter.next().is_none());
                    }
                    results
                })
                .unwrap();
            let errors: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
            assert_eq!(errors.len(), 1, "one error ({unordered}, {deadline})");
            assert!(results.last().unwrap().is_err(), "the error comes last");
            let err = errors[0];
            assert_eq!(err.is_deadline(), deadline, "{err}");
            assert_eq!(err.is_cancelled(), !deadline, "{err}");
            let ran = ran_once_and_settled(&runs);
            assert!(ran >= results.len() - 1 && ran < N / 2, "{ran} ran");
        }
    }
}

/// A submitted job queued behind a running one is dropped by a cancel (its `get` says so,
/// within about the poll period, and it never runs); the running one finishes; a submit
/// under a stopped watch fails; a deadline does the same to a waiting `get`.
fn submit_under_a_watch() {
    for deadline in [false, true] {
        let pool = ProcessPool::new(1).unwrap();
        let runs = Array::<u32>::zeroed(2).unwrap();
        let token = CancelToken::new();
        let mut watch = Watch::new().cancel_token(&token);
        if deadline {
            watch = watch.timeout(Duration::from_millis(100));
        }
        let (long, queued) = watch
            .run(|| {
                let long = pool
                    .submit(
                        counted,
                        Item {
                            i: 0,
                            runs: runs.clone(),
                            ms: 400,
                        },
                    )
                    .unwrap();
                let queued = pool
                    .submit(
                        counted,
                        Item {
                            i: 1,
                            runs: runs.clone(),
                            ms: 0,
                        },
                    )
                    .unwrap();
                if !deadline {
                    let token = token.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(50));
                        token.cancel();
                    });
                }
                (long, queued.get())
            })
            .unwrap();
        let err = queued.unwrap_err();
        assert_eq!(
            (err.is_cancelled(), err.is_deadline()),
            (!deadline, deadline),
            "{err}"
        );
        assert_eq!(long.get().unwrap(), 0, "the running job finished");
        assert_eq!(ran_once_and_settled(&runs), 1, "the queued job never ran");
        let again = watch.run(|| pool.submit(square, 2).map(|_| ()));
        match again {
            Ok(result) => {
                let err = result.unwrap_err();
                assert!(err.is_cancelled() || err.is_deadline());
            }
            Err(stopped) => assert!(stopped.is_cancelled() || stopped.is_deadline()),
        }
        assert_eq!(pool.submit(square, 5).unwrap().get().unwrap(), 25);
    }
}

/// Under `kill_on_stop`, a submitted job that runs is killed when a waiting `get` sees the
/// cancel, and, with nobody waiting, when its watch's deadline passes (the supervisor wakes
/// for it); the pool serves on, with no crash counted.
fn submit_kill_on_stop() {
    let pool = ProcessPool::builder()
        .processes(1)
        .kill_on_stop(true)
        .build()
        .unwrap();
    let wait_for = |flag: &Value<u32>| {
        while flag.load() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // A waiting `get` sees the cancel.
    let (started, finished) = (Value::new(0u32).unwrap(), Value::new(0u32).unwrap());
    let token = CancelToken::new();
    let job = (started.clone(), finished.clone(), 60_000);
    let result = Watch::new()
        .cancel_token(&token)
        .run(|| {
            let task = pool.submit(marked, job).unwrap();
            wait_for(&started);
            let canceller = token.clone();
            std::thread::spawn(move || canceller.cancel());
            task.get()
        })
        .unwrap();
    assert!(result.unwrap_err().is_cancelled());
    assert_eq!(pool.submit(square, 4).unwrap().get().unwrap(), 16);
    assert_eq!(finished.load(), 0);
    // Nobody waits: the deadline alone kills it.
    let (started, finished) = (Value::new(0u32).unwrap(), Value::new(0u32).unwrap());
    let pid = pool.pids()[0];
    let task = Watch::new()
        .timeout(Duration::from_millis(100))
        .run(|| pool.submit(marked, (started.clone(), finished.clone(), 60_000)))
        .unwrap()
        .unwrap();
    wait_for(&started);
    while pool.pids().contains(&pid) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(task.get().unwrap_err().is_deadline());
    assert_eq!(pool.submit(square, 5).unwrap().get().unwrap(), 25);
    assert_eq!(finished.load(), 0);
    let counters = pool.counters();
    assert_eq!((counters.spawned, counters.crashed), (3, 0), "{counters:?}");
}

/// Progress counts every item of `map`, `map_chunked`, `imap` and `imap_unordered`, with a
/// known total (an exact `size_hint`) or an unknown one, into nested watches too.
fn progress_counts_every_item() {
    let pool = ProcessPool::new(2).unwrap();
    const N: u64 = 1000;
    let progress = Progress::new();
    let watch = Watch::new().progress(&progress);
    let check = |progress: &Progress, total: Option<u64>| {
        assert_eq!((progress.done(), progress.total()), (N, total));
    };
    let squares = watch.run(|| pool.map(0..N, square)).unwrap().unwrap();
    assert_eq!(squares.len() as u64, N);
    check(&progress, Some(N));

    let progress = Progress::new();
    let watch = Watch::new().progress(&progress);
    watch
        .run(|| pool.map_chunked(0..N, 7, square))
        .unwrap()
        .unwrap();
    check(&progress, Some(N));

    let progress = Progress::new();
    let watch = Watch::new().progress(&progress);
    let n = watch
        .run(|| pool.imap(0..N, square).chunk_size(10).count())
        .unwrap();
    assert_eq!(n as u64, N);
    check(&progress, Some(N));

    let progress = Progress::new();
    let watch = Watch::new().progress(&progress);
    let unknown = (0..2 * N).filter(|x| x % 2 == 0);
    let n = watch
        .run(|| pool.imap_unordered(unknown, square).count())
        .unwrap();
    assert_eq!(n as u64, N);
    check(&progress, None);

    // Nested: the inner block counts into both.
    let (outer, inner) = (Progress::new(), Progress::new());
    Watch::new()
        .progress(&outer)
        .run(|| {
            pool.map(0..N, square).unwrap();
            Watch::new()
                .progress(&inner)
                .run(|| pool.map(0..N, square))
                .unwrap()
        })
        .unwrap()
        .unwrap();
    assert_eq!((outer.done(), outer.total()), (2 * N, Some(2 * N)));
    check(&inner, Some(N));
}

/// The callback of a progress over a process map is called at most once per interval
/// (plus the final call), sees counts that only grow, and ends with the totals; one that
/// panics is dropped and the map is unharmed.
fn callback_rate_is_bounded() {
    let pool = ProcessPool::new(2).unwrap();
    let every = Duration::from_millis(20);
    let seen: Arc<Mutex<Vec<ProgressUpdate>>> = Arc::default();
    let log = Arc::clone(&seen);
    let progress = Progress::with_callback(every, move |update| log.lock().unwrap().push(update));
    let start = Instant::now();
    let v = Watch::new()
        .progress(&progress)
        .run(|| pool.map_chunked(vec![2u64; 300], 1, nap))
        .unwrap()
        .unwrap();
    let elapsed = start.elapsed();
    assert_eq!(v.len(), 300);
    let seen = seen.lock().unwrap();
    let (last, periodic) = seen.split_last().unwrap();
    assert!(last.finished && periodic.iter().all(|u| !u.finished));
    assert_eq!((last.done, last.total), (300, Some(300)));
    let bound = 1 + elapsed.as_nanos() / every.as_nanos();
    assert!(
        (periodic.len() as u128) <= bound,
        "{} calls in {elapsed:?}",
        periodic.len()
    );
    assert!(periodic.len() >= 2, "it reported during the map: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));

    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let progress = Progress::with_callback(Duration::ZERO, move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
        panic!("the callback fails");
    });
    let v = Watch::new()
        .progress(&progress)
        .run(|| pool.map(0..100u64, square))
        .unwrap()
        .unwrap();
    assert_eq!(v[99], 99 * 99);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(progress.done(), 100);
}

/// The job of the storm: counts its run, then fails as its index says (1 in 16 aborts its
/// worker, 1 in 16 panics) or takes its time.
fn stormy(item: Item) -> usize {
    item.runs.lock().unwrap()[item.i] += 1;
    match item.i % 16 {
        3 => std::process::abort(),
        7 => panic!("job {} fails", item.i),
        _ => std::thread::sleep(Duration::from_millis(item.ms)),
    }
    item.i
}

/// Many rounds of a map (of each kind) cancelled or stopped by a deadline at scattered
/// moments, with crashing and panicking jobs, on pools that let running jobs finish and
/// pools that kill them: every round no item ran twice, nothing ran after the return, every
/// item was dropped once, and the pool served the next round.
fn stop_storm() {
    let pools = [
        ProcessPool::new(3).unwrap(),
        ProcessPool::builder()
            .processes(3)
            .kill_on_stop(true)
            .build()
            .unwrap(),
        ProcessPool::builder()
            .elastic(1, 3)
            .kill_on_stop(true)
            .idle_timeout(Duration::from_millis(20))
            .build()
            .unwrap(),
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut stops = 0;
    for round in 0..24 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pool = &pools[round % pools.len()];
        const N: usize = 120;
        let runs = Array::<u32>::zeroed(N).unwrap();
        let token = CancelToken::new();
        let after = Duration::from_millis(seed % 40);
        let mut watch = Watch::new().cancel_token(&token);
        if round % 2 == 0 {
            watch = watch.timeout(after);
        } else {
            let token = token.clone();
            std::thread::spawn(move || {
                std::thread::sleep(after);
                token.cancel();
            });
        }
        DROPS.store(0, Ordering::Relaxed);
        let kind = (seed >> 8) % 4;
        let stopped = watch
            .run(|| match kind {
                0 => pool.map_chunked(items(N, &runs, 2), 1, stormy).map(|_| ()),
                1 => pool.map_chunked(items(N, &runs, 2), 4, stormy).map(|_| ()),
                2 => {
                    let mut iter = pool.imap(items(N, &runs, 2), stormy);
                    let last = iter.by_ref().last();
                    assert!(iter.next().is_none());
                    last.map_or(Ok(()), |r| r.map(|_| ()))
                }
                _ => {
                    let mut errors = pool
                        .imap_unordered(items(N, &runs, 2), stormy)
                        .filter_map(Result::err)
                        .filter(|e| e.is_cancelled() || e.is_deadline());
                    let first = errors.next();
                    assert!(errors.next().is_none(), "one stop error");
                    first.map_or(Ok(()), Err)
                }
            })
            .unwrap();
        if let Err(e) = &stopped {
            assert!(
                e.is_cancelled() || e.is_deadline() || e.is_panic() || e.is_crash(),
                "round {round}: {e}"
            );
            stops += usize::from(e.is_cancelled() || e.is_deadline());
        }
        ran_once_and_settled(&runs);
        assert_eq!(DROPS.load(Ordering::Relaxed), N, "round {round}");
        assert_eq!(pool.map(0..6u64, square).unwrap()[5], 25, "round {round}");
    }
    // Every round takes 80 ms or more of sleeping jobs and stops within 40 ms.
    assert!(stops >= 20, "{stops} of 24 rounds were stopped");
}

// The adversarial review's scenarios: other calls' jobs beside a kill on stop, a cancel with
// nobody waiting, a stop while the worker starts, the waiting thread's CPU, requeued jobs,
// a progress callback that uses the pool.

/// A job that counts its run in shared memory, then sleeps `us` microseconds.
fn counted_us((runs, i, us): (Array<u32>, usize, u64)) -> usize {
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
                let task = pool.submit(counted_us, (runs.clone(), i, 150)).unwrap();
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
            .run(|| pool.map_chunked(jobs, 1, counted_us));
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
    // Cancelled once the crashing job runs and every job is submitted (a submit under a
    // cancelled watch fails at once instead of queueing).
    let submitted = Arc::new(AtomicBool::new(false));
    let canceller = {
        let (token, started, submitted) = (token.clone(), started.clone(), submitted.clone());
        std::thread::spawn(move || {
            while started.load() == 0 || !submitted.load(Ordering::SeqCst) {
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
                .map(|i| pool.submit(counted_us, (runs.clone(), i, 1)).unwrap())
                .collect();
            submitted.store(true, Ordering::SeqCst);
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
            .run(|| pool.map_chunked(jobs, 1, counted_us))
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
/// deadline stops: its own maps work (and are not counted_us), it gets exactly one final call,
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
        .run(|| pool.map_chunked(jobs, 1, counted_us))
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
        Ok("cancel-mid-map") => cancel_mid_map(),
        Ok("deadline-mid-map") => deadline_mid_map(),
        Ok("finish-or-kill") => running_jobs_finish_or_are_killed(),
        Ok("imap-error-once") => imap_error_once_then_end(),
        Ok("submit") => submit_under_a_watch(),
        Ok("submit-kill") => submit_kill_on_stop(),
        Ok("progress-counts") => progress_counts_every_item(),
        Ok("callback-rate") => callback_rate_is_bounded(),
        Ok("stop-storm") => stop_storm(),
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
fn cancel_mid_map_drops_the_unsent_items_once_and_the_pool_serves_on() {
    run("cancel-mid-map");
}

#[test]
fn deadline_mid_map_stops_it() {
    run("deadline-mid-map");
}

#[test]
fn running_jobs_finish_by_default_and_are_killed_with_kill_on_stop() {
    run("finish-or-kill");
}

#[test]
fn stopped_imap_yields_the_error_once_then_ends() {
    run("imap-error-once");
}

#[test]
fn submit_under_a_watch_drops_queued_jobs() {
    run("submit");
}

#[test]
fn submit_under_kill_on_stop_kills_on_cancel_and_on_a_deadline_nobody_waits_for() {
    run("submit-kill");
}

#[test]
fn progress_counts_every_item_of_every_process_map() {
    run("progress-counts");
}

#[test]
fn progress_callback_rate_is_bounded_and_a_panicking_one_is_dropped() {
    run("callback-rate");
}

#[test]
fn stop_storm_with_crashes_runs_nothing_twice_and_nothing_after_the_return() {
    run("stop-storm");
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
