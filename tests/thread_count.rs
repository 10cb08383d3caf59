//! After a pool drops, its threads are gone: the process's thread count (read from
//! `/proc/self/task`) returns to the baseline. Alone in its binary so no other test starts
//! threads meanwhile.

use std::time::{Duration, Instant};

use parpool::ThreadPool;

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("Linux /proc")
        .count()
}

/// Waits (bounded) for the thread count to reach `expected`: a joined thread can stay
/// listed in /proc for a moment after `pthread_join` returns.
fn assert_thread_count_reaches(expected: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while thread_count() != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(thread_count(), expected);
}

#[test]
fn thread_count_returns_to_baseline_after_drop() {
    let baseline = thread_count();
    for n in [1, 2, 4, 16] {
        let pool = ThreadPool::new(n).unwrap();
        assert_eq!(pool.install(|| parpool::join(|| 1, || 2)), (1, 2));
        let tasks: Vec<_> = (0..100).map(|i| pool.submit(move || i)).collect();
        assert_eq!(parpool::as_completed(tasks).count(), 100);
        assert_thread_count_reaches(baseline + n);
        drop(pool);
        assert_thread_count_reaches(baseline);
    }
    // Also when the pool is dropped with work still queued.
    let pool = ThreadPool::new(2).unwrap();
    let tasks: Vec<_> = (0..1000u64).map(|i| pool.submit(move || i * i)).collect();
    drop(pool);
    assert_thread_count_reaches(baseline);
    assert!(tasks.into_iter().all(|t| t.is_ready()));
}
