//! Jobs that kill their worker, for real: abort, a write through a null pointer, SIGKILL,
//! `exit`, and a job that never ends under a task timeout. Each time only that job fails,
//! with what happened and the worker's pid, the other jobs of the same map complete with the
//! right results, and the pool replaces the worker.
#![cfg(all(feature = "process", target_os = "linux"))]

use std::time::{Duration, Instant};

use parpool::{ProcessError, ProcessPool};

/// The item that fails in every map below.
const BAD: u64 = 13;

fn square(x: u64) -> u64 {
    x * x
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn abort_on_bad(x: u64) -> u64 {
    if x == BAD {
        std::process::abort();
    }
    square(x)
}

fn segfault_on_bad(x: u64) -> u64 {
    if x == BAD {
        // SAFETY: not safe at all, deliberately: this write through a null pointer is the
        // segmentation fault the test is about; it kills the worker process.
        unsafe { std::ptr::write_volatile(std::ptr::null_mut::<u8>(), 1) };
    }
    square(x)
}

fn sigkill_on_bad(x: u64) -> u64 {
    if x == BAD {
        // SAFETY: kill(2) with our own pid and a valid signal number has no memory effects.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    square(x)
}

fn exit_on_bad(x: u64) -> u64 {
    if x == BAD {
        std::process::exit(42);
    }
    square(x)
}

fn hang_on_bad(x: u64) -> u64 {
    if x == BAD {
        loop {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    square(x)
}

fn panic_on_bad(x: u64) -> u64 {
    assert_ne!(x, BAD, "bad item");
    square(x)
}

/// Runs `f` over 0..40 on a fresh pool with `map` (one item per job) and `imap`, and checks
/// that exactly the bad item failed, as `check` expects, and every other item is right.
/// Returns the pids of the pool's workers before and after.
fn only_the_bad_item_fails(
    f: fn(u64) -> u64,
    pool: ProcessPool,
    check: impl Fn(&ProcessError),
) -> (Vec<u32>, Vec<u32>) {
    let before = pool.pids();
    let err = pool.map_chunked(0..40u64, 1, f).unwrap_err();
    check(&err);
    assert!(before.contains(&err.pid().expect("the error names the worker")) || err.is_panic());

    let results: Vec<Result<u64, ProcessError>> = pool.imap(0..40u64, f).collect();
    assert_eq!(results.len(), 40);
    for (x, result) in (0..40u64).zip(&results) {
        match result {
            Ok(y) => assert_eq!(*y, square(x)),
            Err(e) if x == BAD => check(e),
            Err(e) => panic!("item {x} failed too: {e}"),
        }
    }
    assert!(results[BAD as usize].is_err());

    // The same with automatic chunks: the chunk holding the bad item fails, the map reports it.
    check(&pool.map(0..40u64, f).unwrap_err());

    // The pool goes on with a full set of workers.
    assert_eq!(pool.map(0..100u64, square).unwrap()[99], 99 * 99);
    let after = wait_for_workers(&pool);
    (before, after)
}

/// Waits until the pool has all its workers again, and returns their pids.
fn wait_for_workers(pool: &ProcessPool) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pids = pool.pids();
        if pids.len() == pool.processes() {
            return pids;
        }
        assert!(Instant::now() < deadline, "workers were not replaced");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn abort_fails_only_its_job() {
    let (before, after) =
        only_the_bad_item_fails(abort_on_bad, ProcessPool::new(2).unwrap(), |e| {
            assert!(e.is_crash(), "{e}");
            assert_eq!(e.signal(), Some(libc::SIGABRT));
            assert_eq!(e.exit_code(), None);
        });
    assert_ne!(before, after, "crashed workers were replaced");
}

#[test]
fn null_pointer_write_fails_only_its_job() {
    only_the_bad_item_fails(segfault_on_bad, ProcessPool::new(2).unwrap(), |e| {
        assert!(e.is_crash(), "{e}");
        assert_eq!(e.signal(), Some(libc::SIGSEGV), "{e}");
    });
}

#[test]
fn sigkill_fails_only_its_job() {
    only_the_bad_item_fails(sigkill_on_bad, ProcessPool::new(2).unwrap(), |e| {
        assert!(e.is_crash(), "{e}");
        assert_eq!(e.signal(), Some(libc::SIGKILL));
    });
}

#[test]
fn exit_fails_only_its_job() {
    only_the_bad_item_fails(exit_on_bad, ProcessPool::new(2).unwrap(), |e| {
        assert!(e.is_crash(), "{e}");
        assert_eq!(e.exit_code(), Some(42));
        assert_eq!(e.signal(), None);
    });
}

#[test]
fn endless_job_times_out_and_only_it_fails() {
    let pool = ProcessPool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    only_the_bad_item_fails(hang_on_bad, pool, |e| {
        assert!(e.is_task_timeout(), "{e}");
        assert!(!e.is_timeout());
        assert!(!e.is_crash());
    });
}

#[test]
fn panic_fails_only_its_job_and_keeps_the_workers() {
    let (before, after) =
        only_the_bad_item_fails(panic_on_bad, ProcessPool::new(2).unwrap(), |e| {
            assert!(e.is_panic(), "{e}");
            assert!(e.panic_message().unwrap().contains("bad item"));
        });
    assert_eq!(before, after, "a panic does not cost a worker");
}

#[test]
fn jobs_waiting_behind_a_crash_are_requeued() {
    // One worker: the jobs submitted after the crashing one wait in its queue or socket, and
    // must run on the replacement, exactly once each.
    let pool = ProcessPool::new(1).unwrap();
    let first = pool.submit(pid, ()).unwrap().get().unwrap();
    let crash = pool.submit(abort_on_bad, BAD).unwrap();
    let behind: Vec<_> = (0..10u64)
        .map(|x| pool.submit(square, x).unwrap())
        .collect();
    let err = crash.get().unwrap_err();
    assert_eq!(err.signal(), Some(libc::SIGABRT));
    assert_eq!(err.pid(), Some(first));
    for (x, task) in (0..10u64).zip(behind) {
        assert_eq!(task.get().unwrap(), square(x));
    }
    let replacement = pool.submit(pid, ()).unwrap().get().unwrap();
    assert_ne!(replacement, first);
}

#[test]
fn submit_crash_reports_the_pid() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.pids()[0];
    let err = pool.submit(sigkill_on_bad, BAD).unwrap().get().unwrap_err();
    assert_eq!(err.pid(), Some(worker));
    assert_eq!(err.signal(), Some(9), "{err}");
}

#[test]
fn timeout_with_get_timeout_and_task_timeout_together() {
    let pool = ProcessPool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let task = pool.submit(hang_on_bad, BAD).unwrap();
    let err = task.get_timeout(Duration::from_millis(1)).unwrap_err();
    assert!(err.is_timeout(), "still running: {err}");
    let err = task.get_timeout(Duration::from_secs(60)).unwrap_err();
    assert!(err.is_task_timeout(), "{err}");
    assert_eq!(pool.submit(square, 5).unwrap().get().unwrap(), 25);
}

#[test]
fn stress_repeated_crashes() {
    let pool = ProcessPool::new(2).unwrap();
    for round in 0..5 {
        let results: Vec<_> = pool
            .imap((0..30u64).chain([BAD, BAD]), abort_on_bad)
            .collect();
        let failed = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(
            failed, 3,
            "round {round}: the three bad items and nothing else"
        );
        for (x, r) in (0..30u64).zip(&results) {
            if x != BAD {
                assert_eq!(*r.as_ref().unwrap(), square(x));
            }
        }
    }
    wait_for_workers(&pool);
}
