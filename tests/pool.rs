//! The thread pool's public behaviour: building, `install`, `join`, `scope`, panics,
//! nesting across pools, and oversubscription.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

mod common;
use common::panic_message;
use parpool::{ThreadPool, join, scope};

fn fib(n: u64) -> u64 {
    if n < 2 {
        return n;
    }
    let (a, b) = join(|| fib(n - 1), || fib(n - 2));
    a + b
}

fn fib_sequential(n: u64) -> u64 {
    if n < 2 {
        n
    } else {
        fib_sequential(n - 1) + fib_sequential(n - 2)
    }
}

/// Proves that every one of the pool's `n` workers is alive and serving: `n` jobs that can
/// only finish together, because each waits at a barrier for all the others.
fn assert_all_workers_serve(pool: &ThreadPool) {
    let n = pool.current_num_threads();
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            pool.submit(move || {
                barrier.wait();
                parpool::current_thread_index().expect("runs on a worker")
            })
        })
        .collect();
    let mut indices: Vec<usize> = tasks.into_iter().map(|t| t.get().unwrap()).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..n).collect::<Vec<_>>());
}

#[test]
fn smoke() {
    let pool = ThreadPool::new(2).unwrap();
    assert_eq!(pool.current_num_threads(), 2);
    assert_eq!(pool.install(|| 40 + 2), 42);
    assert_eq!(pool.join(|| 1, || 2), (1, 2));
    assert_eq!(pool.install(|| fib(20)), fib_sequential(20));
    assert_eq!(pool.submit(|| "done").get().unwrap(), "done");
    assert_all_workers_serve(&pool);
}

#[test]
fn zero_threads_is_an_error() {
    let error = ThreadPool::new(0).unwrap_err();
    assert!(error.is_zero_threads());
    let error = ThreadPool::builder().num_threads(0).build().unwrap_err();
    assert!(error.is_zero_threads());
    assert!(!error.is_too_many_threads() && error.max_threads().is_none());
}

#[test]
fn too_many_threads_is_an_error() {
    let error = ThreadPool::new(1 << 20).unwrap_err();
    assert!(!error.is_zero_threads());
    assert!(error.is_too_many_threads(), "{error}");
    assert!(
        error.max_threads().is_some_and(|max| max < 1 << 20),
        "{error}"
    );
}

#[test]
fn thread_names_and_indices() {
    let pool = ThreadPool::builder()
        .num_threads(3)
        .thread_name(|i| format!("pp-test-{i}"))
        .stack_size(1 << 20)
        .build()
        .unwrap();
    let seen: Vec<(usize, String)> = (0..3)
        .map(|_| {
            pool.install(|| {
                let index = pool.current_thread_index().unwrap();
                (index, std::thread::current().name().unwrap().to_owned())
            })
        })
        .collect();
    for (index, name) in seen {
        assert_eq!(name, format!("pp-test-{index}"));
    }
    assert_eq!(pool.current_thread_index(), None);
    assert_eq!(parpool::current_thread_index(), None);
}

#[test]
fn install_runs_on_the_pool_and_sees_its_size() {
    let pool = ThreadPool::new(3).unwrap();
    assert_eq!(pool.install(parpool::current_num_threads), 3);
    let other = ThreadPool::new(1).unwrap();
    // Inside `pool`, free functions refer to `pool`, even when called through `other`'s
    // install inside it.
    let sizes = pool.install(|| {
        (
            parpool::current_num_threads(),
            other.install(parpool::current_num_threads),
        )
    });
    assert_eq!(sizes, (3, 1));
}

#[test]
fn join_runs_both_halves_in_parallel_when_possible() {
    // Each half waits for the other at a barrier: only a parallel join completes.
    let pool = ThreadPool::new(2).unwrap();
    let barrier = Barrier::new(2);
    let (a, b) = pool.join(
        || {
            barrier.wait();
            parpool::current_thread_index().unwrap()
        },
        || {
            barrier.wait();
            parpool::current_thread_index().unwrap()
        },
    );
    assert_ne!(a, b);
}

#[test]
fn nested_join_inside_join() {
    let pool = ThreadPool::new(2).unwrap();
    let ((a, b), (c, d)) = pool.join(
        || join(|| fib(15), || fib(14)),
        || join(|| fib(13), || fib(12)),
    );
    assert_eq!([a, b, c, d], [610, 377, 233, 144]);
    assert_eq!(pool.install(|| fib(24)), fib_sequential(24));
}

#[test]
fn join_from_outside_any_pool_uses_the_global_pool() {
    assert_eq!(
        join(|| fib(18), || parpool::current_thread_index().is_some()),
        (2584, true)
    );
}

#[test]
fn install_inside_another_pools_job_does_not_deadlock() {
    // One thread each: a blocked worker would deadlock, a worker that keeps serving its own
    // pool while it waits does not.
    let a = ThreadPool::new(1).unwrap();
    let b = ThreadPool::new(1).unwrap();
    let result = a.install(|| b.install(|| a.install(|| b.install(|| fib(15)))));
    assert_eq!(result, 610);
    let result = a.install(|| join(|| b.install(|| a.install(|| 1)), || b.install(|| 2)));
    assert_eq!(result, (1, 2));
}

#[test]
fn panic_in_join_propagates_after_both_halves_ran() {
    let pool = ThreadPool::new(2).unwrap();
    let b_ran = AtomicUsize::new(0);
    let message = panic_message(|| {
        pool.join(
            || panic!("left half"),
            || {
                b_ran.fetch_add(1, Ordering::SeqCst);
            },
        );
    });
    assert_eq!(message, "left half");
    assert_eq!(
        b_ran.load(Ordering::SeqCst),
        1,
        "b must run even though a panicked"
    );
    let message = panic_message(|| {
        pool.join(|| 1, || -> u32 { panic!("right half") });
    });
    assert_eq!(message, "right half");
    let message = panic_message(|| {
        pool.join(
            || -> u32 { panic!("first") },
            || -> u32 { panic!("second") },
        );
    });
    assert_eq!(message, "first", "a's panic wins when both panic");
}

#[test]
fn panic_deep_inside_nested_joins() {
    fn explode(n: u32) -> u32 {
        if n == 0 {
            panic!("leaf");
        }
        let (a, b) = join(|| explode(n - 1), || n);
        a + b
    }
    let pool = ThreadPool::new(2).unwrap();
    for _ in 0..20 {
        assert_eq!(
            panic_message(|| {
                pool.install(|| explode(12));
            }),
            "leaf"
        );
    }
    assert_all_workers_serve(&pool);
}

/// Runs `f` as the `a` half of `levels` nested `join`s. A worker keeps only a few of its
/// `join` halves as frames that others may take; deeper `join`s (as `f`'s, under 16 levels
/// on a one-thread pool) run their halves as plain calls.
fn nested<R: Send>(levels: u32, f: impl FnOnce() -> R + Send) -> R {
    if levels == 0 {
        f()
    } else {
        join(|| nested(levels - 1, f), || ()).0
    }
}

#[test]
fn panic_in_a_deep_join_propagates_after_both_halves_ran() {
    let pool = ThreadPool::new(1).unwrap();
    for levels in [0, 16] {
        let b_ran = AtomicUsize::new(0);
        let message = panic_message(|| {
            pool.install(|| {
                nested(levels, || {
                    join(
                        || panic!("left half"),
                        || b_ran.fetch_add(1, Ordering::SeqCst),
                    )
                })
            });
        });
        assert_eq!(message, "left half", "{levels} levels");
        assert_eq!(
            b_ran.load(Ordering::SeqCst),
            1,
            "{levels} levels: b ran once"
        );
        let message = panic_message(|| {
            pool.install(|| nested(levels, || join(|| 1, || -> u32 { panic!("right half") })));
        });
        assert_eq!(message, "right half", "{levels} levels");
        let message = panic_message(|| {
            pool.install(|| {
                nested(levels, || {
                    join(
                        || -> u32 { panic!("first") },
                        || -> u32 { panic!("second") },
                    )
                })
            });
        });
        assert_eq!(message, "first", "{levels} levels: a's panic wins");
        assert_eq!(pool.install(|| nested(levels, || fib(20))), 6765);
    }
}

/// A worker deep in a recursion, whose `join`s run as plain calls because it already holds
/// its few private frames, still serves an idle worker: at its next `join` it publishes
/// its oldest private frame. Here the worker loops on tiny `join`s at the bottom of a
/// spine of 32 levels until another worker has run one of the spine's `b` halves that were
/// kept private (the first 4 joins of a job are published at once and do not count).
#[test]
fn a_deep_worker_hands_its_oldest_private_frame_to_an_idle_one() {
    const SPINE: usize = 32;
    const EAGER: usize = 4;
    fn spine(depth: usize, ran_on: &[AtomicUsize; SPINE], taken: &AtomicUsize) {
        if depth == SPINE {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while taken.load(Ordering::SeqCst) == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no private frame was handed to the idle worker in 60 s"
                );
                join(|| (), || ());
            }
            return;
        }
        let me = parpool::current_thread_index().unwrap();
        join(
            || spine(depth + 1, ran_on, taken),
            || {
                let here = parpool::current_thread_index().unwrap();
                ran_on[depth].store(here + 1, Ordering::SeqCst);
                if here != me && depth >= EAGER {
                    taken.fetch_add(1, Ordering::SeqCst);
                }
            },
        );
    }
    let pool = ThreadPool::new(2).unwrap();
    for _ in 0..20 {
        let ran_on = [const { AtomicUsize::new(0) }; SPINE];
        let taken = AtomicUsize::new(0);
        pool.install(|| spine(0, &ran_on, &taken));
        assert!(taken.load(Ordering::SeqCst) > 0);
        assert!(
            ran_on.iter().all(|slot| slot.load(Ordering::SeqCst) > 0),
            "every b half ran"
        );
    }
}

#[test]
fn panicking_jobs_leave_a_pool_of_two_serving() {
    let pool = ThreadPool::new(2).unwrap();
    for _ in 0..10 {
        assert_eq!(
            panic_message(|| pool.install(|| panic!("install"))),
            "install"
        );
        let error = pool.submit(|| -> u8 { panic!("task") }).get().unwrap_err();
        assert_eq!(error.panic_message(), Some("task"));
        assert_eq!(
            panic_message(|| pool.scope(|s| s.spawn(|_| panic!("spawned")))),
            "spawned"
        );
    }
    assert_all_workers_serve(&pool);
    assert_eq!(pool.install(|| fib(20)), 6765);
}

#[test]
fn scope_borrows_and_waits_for_every_job() {
    let pool = ThreadPool::new(2).unwrap();
    let mut slots = vec![0usize; 1000];
    let total = AtomicUsize::new(0);
    pool.scope(|s| {
        for (i, slot) in slots.iter_mut().enumerate() {
            let total = &total;
            s.spawn(move |_| {
                *slot = i * 2;
                total.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    assert_eq!(total.load(Ordering::Relaxed), 1000);
    assert!(slots.iter().enumerate().all(|(i, &v)| v == i * 2));
}

#[test]
fn scope_nested_spawns_and_result() {
    let counter = AtomicUsize::new(0);
    let result = scope(|s| {
        fn spread<'a>(s: &parpool::Scope<'a>, depth: u32, counter: &'a AtomicUsize) {
            counter.fetch_add(1, Ordering::Relaxed);
            if depth > 0 {
                s.spawn(move |s| spread(s, depth - 1, counter));
                s.spawn(move |s| spread(s, depth - 1, counter));
            }
        }
        spread(s, 10, &counter);
        "body result"
    });
    assert_eq!(result, "body result");
    assert_eq!(counter.load(Ordering::Relaxed), (1 << 11) - 1);
}

#[test]
fn scope_panic_waits_for_the_other_jobs() {
    let pool = ThreadPool::new(2).unwrap();
    let finished = AtomicUsize::new(0);
    let message = panic_message(|| {
        pool.scope(|s| {
            s.spawn(|_| panic!("first job"));
            for _ in 0..100 {
                s.spawn(|_| {
                    finished.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
    });
    assert_eq!(message, "first job");
    assert_eq!(finished.load(Ordering::Relaxed), 100);
}

#[test]
fn oversubscription_sixteen_threads_on_two_cores() {
    let pool = ThreadPool::new(16).unwrap();
    assert_eq!(pool.install(|| fib(24)), fib_sequential(24));
    let hits = AtomicUsize::new(0);
    pool.scope(|s| {
        for _ in 0..10_000 {
            s.spawn(|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    assert_eq!(hits.load(Ordering::Relaxed), 10_000);
    let tasks: Vec<_> = (0..10_000u64).map(|i| pool.submit(move || i)).collect();
    let sum: u64 = parpool::as_completed(tasks)
        .map(|(_, t)| t.get().unwrap())
        .sum();
    assert_eq!(sum, (0..10_000u64).sum());
    assert_all_workers_serve(&pool);
}

#[test]
fn stress_many_pools_created_and_dropped() {
    for i in 0..50 {
        let pool = ThreadPool::new(1 + i % 4).unwrap();
        assert_eq!(pool.install(|| fib(12)), 144);
        drop(pool);
    }
}

#[test]
fn spawn_runs_every_closure_and_panics_reach_the_handler() {
    let (panic_tx, panics) = std::sync::mpsc::channel::<String>();
    let panic_tx = std::sync::Mutex::new(panic_tx);
    let pool = ThreadPool::builder()
        .num_threads(2)
        .panic_handler(move |payload| {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default();
            panic_tx.lock().unwrap().send(message).unwrap();
        })
        .build()
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..100 {
        let ran = Arc::clone(&ran);
        pool.spawn(move || {
            ran.fetch_add(1, Ordering::SeqCst);
            if i % 10 == 0 {
                panic!("spawned {i}");
            }
        });
    }
    drop(pool); // runs every spawned closure first
    assert_eq!(ran.load(Ordering::SeqCst), 100);
    let mut seen: Vec<String> = panics.iter().collect();
    seen.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("spawned {}", i * 10)).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn spawn_without_a_handler_keeps_the_worker_serving() {
    let pool = ThreadPool::new(1).unwrap();
    pool.spawn(|| panic!("reported by the panic hook"));
    assert_eq!(pool.submit(|| 7).get().unwrap(), 7);
}

#[test]
fn terminate_drops_queued_spawned_closures_unrun() {
    let pool = ThreadPool::new(1).unwrap();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    pool.spawn(move || {
        started_tx.send(()).unwrap();
        gate.recv().unwrap();
    });
    started.recv().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ran);
    pool.spawn(move || {
        counted.fetch_add(1, Ordering::SeqCst);
    });
    pool.terminate();
    release.send(()).unwrap();
    drop(pool);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}
