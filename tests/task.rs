//! Task handles: `submit`, `get`, `get_timeout`, `is_ready`, `wait`, `cancel`, `on_done`,
//! `as_completed`, drop counting, stress, and shutdown with pending work.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use parpool::{ThreadPool, as_completed};

/// Counts its drops in a shared counter.
#[derive(Debug)]
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A pool of one worker, held busy until the returned sender is used (or dropped).
fn blocked_pool() -> (ThreadPool, mpsc::Sender<()>, parpool::Task<()>) {
    let pool = ThreadPool::new(1).unwrap();
    let (release, gate) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel();
    let blocker = pool.submit(move || {
        started_tx.send(()).unwrap();
        let _ = gate.recv();
    });
    started.recv().unwrap();
    (pool, release, blocker)
}

#[test]
fn smoke() {
    let pool = ThreadPool::new(2).unwrap();
    let task = pool.submit(|| 6 * 7);
    task.wait();
    assert!(task.is_ready());
    assert_eq!(task.get().unwrap(), 42);
    assert_eq!(parpool::submit(|| "global").get().unwrap(), "global");
}

#[test]
fn get_timeout_times_out_then_succeeds() {
    let (pool, release, blocker) = blocked_pool();
    let task = pool.submit(|| 5);
    let error = task.get_timeout(Duration::from_millis(20)).unwrap_err();
    assert!(error.is_timeout());
    assert!(!error.is_panic() && !error.is_cancelled());
    assert!(!task.is_ready());
    assert!(!task.wait_timeout(Duration::from_millis(1)));
    release.send(()).unwrap();
    assert_eq!(task.get_timeout(Duration::from_secs(60)).unwrap(), 5);
    blocker.get().unwrap();
}

#[test]
fn get_after_a_successful_get_timeout_says_taken() {
    let pool = ThreadPool::new(1).unwrap();
    let task = pool.submit(|| 1);
    assert_eq!(task.get_timeout(Duration::from_secs(60)).unwrap(), 1);
    assert!(task.get_timeout(Duration::ZERO).unwrap_err().is_taken());
    let error = task.get().unwrap_err();
    assert!(error.is_taken());
    assert!(!error.is_panic() && !error.is_cancelled() && !error.is_timeout());
}

#[test]
fn panic_becomes_a_task_error() {
    let pool = ThreadPool::new(2).unwrap();
    let id = std::hint::black_box(7);
    let error = pool
        .submit(move || -> u32 { panic!("task {id} failed") })
        .get()
        .unwrap_err();
    assert!(error.is_panic());
    assert_eq!(error.panic_message(), Some("task 7 failed"));
    assert_eq!(error.to_string(), "task panicked: task 7 failed");
    let payload = error.into_panic();
    assert_eq!(payload.downcast_ref::<String>().unwrap(), "task 7 failed");
    // The pool still serves.
    assert_eq!(pool.submit(|| 1).get().unwrap(), 1);
}

#[test]
fn cancel_before_start_and_after() {
    let (pool, release, blocker) = blocked_pool();
    let ran = Arc::new(AtomicUsize::new(0));
    let queued = {
        let ran = Arc::clone(&ran);
        pool.submit(move || ran.fetch_add(1, Ordering::SeqCst))
    };
    assert!(queued.cancel());
    assert!(queued.is_ready(), "a cancelled task is finished");
    assert!(!queued.cancel(), "cancelling twice reports false");
    assert!(!blocker.cancel(), "a running task cannot be cancelled");
    release.send(()).unwrap();
    blocker.get().unwrap();
    let error = queued.get().unwrap_err();
    assert!(error.is_cancelled());
    assert_eq!(error.to_string(), "task was cancelled before it started");
    drop(pool);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "a cancelled closure never runs"
    );
}

#[test]
fn on_done_runs_once_before_and_after_completion() {
    let (pool, release, blocker) = blocked_pool();
    let calls = Arc::new(AtomicUsize::new(0));
    let (done_tx, done) = mpsc::channel();
    {
        let calls = Arc::clone(&calls);
        pool.submit(|| 3).on_done(move |outcome| {
            calls.fetch_add(1, Ordering::SeqCst);
            done_tx.send(outcome.unwrap()).unwrap();
        });
    }
    release.send(()).unwrap();
    assert_eq!(done.recv().unwrap(), 3);
    // Registered after completion: runs right away, on this thread.
    let here = thread::current().id();
    let task = pool.submit(|| 4);
    task.wait();
    {
        let calls = Arc::clone(&calls);
        task.on_done(move |outcome| {
            assert_eq!(thread::current().id(), here);
            assert_eq!(outcome.unwrap(), 4);
            calls.fetch_add(1, Ordering::SeqCst);
        });
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // A panicking callback does not affect the worker.
    pool.submit(|| 5).on_done(|_| panic!("callback"));
    blocker.get().unwrap();
    assert_eq!(pool.submit(|| 9).get().unwrap(), 9);
}

#[test]
fn on_done_fires_for_cancelled_tasks() {
    let (pool, release, blocker) = blocked_pool();
    let task = pool.submit(|| 1);
    assert!(task.cancel());
    let (done_tx, done) = mpsc::channel();
    task.on_done(move |outcome| done_tx.send(outcome.unwrap_err().is_cancelled()).unwrap());
    assert!(done.recv().unwrap());
    release.send(()).unwrap();
    blocker.get().unwrap();
    drop(pool);
}

#[test]
fn as_completed_yields_in_completion_order() {
    let pool = ThreadPool::new(3).unwrap();
    // Each task waits for its own gate; opening the gates in a chosen order fixes the
    // completion order.
    let (gates, tasks): (Vec<_>, Vec<_>) = (0..3usize)
        .map(|i| {
            let (open, gate) = mpsc::channel::<()>();
            (open, pool.submit(move || gate.recv().map(|()| i).unwrap()))
        })
        .unzip();
    let mut completed = as_completed(tasks);
    assert_eq!(completed.size_hint(), (3, Some(3)));
    for i in [2, 0, 1] {
        gates[i].send(()).unwrap();
        let (index, task) = completed.next().unwrap();
        assert_eq!(index, i);
        assert!(task.is_ready());
        assert_eq!(task.get().unwrap(), i);
    }
    assert!(completed.next().is_none());
    assert!(
        as_completed(Vec::<parpool::Task<u8>>::new())
            .next()
            .is_none()
    );
}

#[test]
fn as_completed_with_panics_and_cancellations() {
    let (pool, release, blocker) = blocked_pool();
    let ok = pool.submit(|| 1);
    let bad = pool.submit(|| -> i32 { panic!("bad") });
    let cancelled = pool.submit(|| 3);
    assert!(cancelled.cancel());
    release.send(()).unwrap();
    let mut outcomes: Vec<String> = as_completed([ok, bad, cancelled])
        .map(|(_, task)| match task.get() {
            Ok(v) => format!("ok {v}"),
            Err(e) if e.is_panic() => "panic".to_owned(),
            Err(e) if e.is_cancelled() => "cancelled".to_owned(),
            Err(e) => panic!("unexpected {e}"),
        })
        .collect();
    outcomes.sort();
    assert_eq!(outcomes, ["cancelled", "ok 1", "panic"]);
    blocker.get().unwrap();
}

#[test]
fn get_inside_a_worker_runs_other_work_instead_of_deadlocking() {
    // One worker: the inner task can only run if the outer one, waiting in `get`, runs it.
    let pool = ThreadPool::new(1).unwrap();
    let outer = pool.submit(|| {
        let inner = parpool::submit(|| 21);
        inner.get().unwrap() * 2
    });
    assert_eq!(outer.get().unwrap(), 42);
    let outer = pool.submit(|| {
        let tasks: Vec<_> = (0..10).map(|i| parpool::submit(move || i)).collect();
        as_completed(tasks)
            .map(|(_, t)| t.get().unwrap())
            .sum::<i32>()
    });
    assert_eq!(outer.get().unwrap(), 45);
}

#[path = "common/scale.rs"]
mod scale;

/// `PARPOOL_TEST_SCALE=small` (CI's valgrind run) shrinks the stress tests by 100.
fn scaled(normal: u64) -> u64 {
    scale::scaled(normal, normal / 100)
}

#[test]
fn stress_a_million_tasks_from_four_threads() {
    const THREADS: u64 = 4;
    let per_thread = scaled(250_000);
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let start = Arc::new(Barrier::new(THREADS as usize));
    let submitters: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, start) = (Arc::clone(&pool), Arc::clone(&start));
            thread::spawn(move || {
                start.wait();
                let base = t * per_thread;
                let tasks: Vec<_> = (base..base + per_thread)
                    .map(|i| pool.submit(move || i * 3))
                    .collect();
                let mut wrong = 0u64;
                for (i, task) in (base..).zip(tasks) {
                    if task.get().unwrap() != i * 3 {
                        wrong += 1;
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: u64 = submitters.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(wrong, 0);
}

#[test]
fn destructors_run_exactly_once() {
    let closures = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(AtomicUsize::new(0));
    let (pool, release, blocker) = blocked_pool();
    let make = |i: usize| {
        let in_closure = DropCounter(Arc::clone(&closures));
        let results = Arc::clone(&results);
        pool.submit(move || {
            let _keep = &in_closure;
            if i % 7 == 3 {
                panic!("task {i}");
            }
            DropCounter(results)
        })
    };
    let tasks: Vec<_> = (0..300).map(make).collect();
    let mut kept = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match i % 3 {
            0 => {
                assert!(task.cancel());
                kept.push(task);
            }
            1 => kept.push(task),
            // The handle goes before the task has even started.
            _ => drop(task),
        }
    }
    release.send(()).unwrap();
    blocker.get().unwrap();
    // Half the kept handles are consumed with `get`, the rest dropped unread.
    for (i, task) in kept.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = task.get();
        }
    }
    drop(pool);
    assert_eq!(
        closures.load(Ordering::SeqCst),
        300,
        "every closure dropped exactly once"
    );
    // Tasks that ran and did not panic produced a result; each was dropped exactly once.
    let produced = (0..300).filter(|i| i % 3 != 0 && i % 7 != 3).count();
    assert_eq!(results.load(Ordering::SeqCst), produced);
}

#[test]
fn dropping_the_pool_runs_queued_tasks_first() {
    let (pool, release, blocker) = blocked_pool();
    let ran = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let ran = Arc::clone(&ran);
            pool.submit(move || ran.fetch_add(1, Ordering::SeqCst))
        })
        .collect();
    // Release the blocker from another thread once `drop` is under way; `drop` must wait
    // for all 100 queued tasks (Python's close + join).
    let releaser = thread::spawn(move || release.send(()).unwrap());
    drop(pool);
    releaser.join().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 100);
    blocker.get().unwrap();
    let mut seen: Vec<usize> = tasks.into_iter().map(|t| t.get().unwrap()).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
}

#[test]
fn terminate_cancels_queued_tasks_and_lets_running_ones_finish() {
    let (pool, release, blocker) = blocked_pool();
    let ran = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let ran = Arc::clone(&ran);
            let guard = DropCounter(Arc::clone(&dropped));
            pool.submit(move || {
                let _guard = guard;
                ran.fetch_add(1, Ordering::SeqCst)
            })
        })
        .collect();
    pool.terminate();
    release.send(()).unwrap();
    blocker.get().expect("the running task finishes normally");
    for task in tasks {
        assert!(task.get().unwrap_err().is_cancelled());
    }
    assert!(pool.submit(|| 1).get().unwrap_err().is_cancelled());
    // `install` and `join` still work after terminate.
    assert_eq!(pool.join(|| 1, || 2), (1, 2));
    drop(pool);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        50,
        "cancelled closures are dropped once"
    );
}

#[test]
fn pool_dropped_inside_its_own_task_does_not_deadlock() {
    let pool = ThreadPool::new(2).unwrap();
    let owner = Arc::new(std::sync::Mutex::new(Some(pool)));
    let for_task = Arc::clone(&owner);
    let task = owner.lock().unwrap().as_ref().unwrap().submit(move || {
        // The last handle is dropped on one of the pool's own workers.
        drop(for_task.lock().unwrap().take());
        7
    });
    assert_eq!(task.get().unwrap(), 7);
}

/// Every error type is `Send + Sync + 'static`: `?` takes it into `Box<dyn Error + Send +
/// Sync>` and `anyhow`.
#[test]
fn errors_are_send_sync() {
    fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<parpool::TaskError>();
    assert_error::<parpool::ThreadPoolBuildError>();
    #[cfg(all(feature = "process", target_os = "linux"))]
    {
        assert_error::<parpool::ProcessError>();
        assert_error::<parpool::ShmError>();
        assert_error::<parpool::shm::GetError>();
    }
}
