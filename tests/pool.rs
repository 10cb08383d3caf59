//! The thread pool's public behaviour: building, `install`, `join`, `scope`, panics,
//! nesting across pools, and oversubscription.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

mod common;
use common::panic_message;
#[path = "common/nested.rs"]
mod nested;
use nested::nested;
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

/// The known cost of inline joins ("Inline joins" in `src/pool/registry.rs`), kept as a
/// reproducer: in a spine of `join(recurse, leaf)` every leaf is a `b` half made before any
/// of them runs, and the worker makes no `join` at all while it runs them, so the leaves
/// below its 4 eager and 4 private frames never move to an idle worker. A leaf on the busy
/// worker waits (at most 100 ms) until the other worker has run one more leaf, which gives
/// the other worker every chance to take them; the test asserts that leaves 8 and more
/// levels deep moved, and fails (in about 5 s) while `join` records nothing below a
/// worker's private frames. A design that records every `join` (an intrusive list of
/// frames on the stack, the idle check where a `join` returns) passes it, at 49
/// instructions per `join` against 40 (fib(25) on one thread, callgrind) and about 20 %
/// more time for fib(30) on two threads.
#[test]
#[ignore = "reproduces the known cost of inline joins: deep b halves never move"]
fn a_spines_deep_b_halves_move_to_an_idle_worker() {
    const SPINE: usize = 48;
    /// Deeper than the 4 eager frames and 4 private ones of the design it replaced.
    const DEEP: usize = 8;
    struct Spine {
        owner: AtomicUsize,
        ran_on: [AtomicUsize; SPINE],
        moved: AtomicUsize,
        moved_deep: AtomicUsize,
    }
    fn spine(depth: usize, state: &Spine) {
        if depth == SPINE {
            return;
        }
        join(
            || spine(depth + 1, state),
            || {
                let here = parpool::current_thread_index().unwrap() + 1;
                assert_eq!(state.ran_on[depth].swap(here, Ordering::SeqCst), 0);
                if here == state.owner.load(Ordering::SeqCst) {
                    let moved = state.moved.load(Ordering::SeqCst);
                    let deadline = Instant::now() + Duration::from_millis(100);
                    while state.moved.load(Ordering::SeqCst) == moved && Instant::now() < deadline {
                        std::hint::spin_loop();
                    }
                } else {
                    state.moved.fetch_add(1, Ordering::SeqCst);
                    if depth >= DEEP {
                        state.moved_deep.fetch_add(1, Ordering::SeqCst);
                    }
                }
            },
        );
    }
    let pool = ThreadPool::new(2).unwrap();
    for _ in 0..5 {
        let state = Spine {
            owner: AtomicUsize::new(0),
            ran_on: [const { AtomicUsize::new(0) }; SPINE],
            moved: AtomicUsize::new(0),
            moved_deep: AtomicUsize::new(0),
        };
        pool.install(|| {
            let owner = parpool::current_thread_index().unwrap() + 1;
            state.owner.store(owner, Ordering::SeqCst);
            spine(0, &state);
        });
        assert!(
            state
                .ran_on
                .iter()
                .all(|slot| slot.load(Ordering::SeqCst) > 0),
            "every b half ran"
        );
        let deep = state.moved_deep.load(Ordering::SeqCst);
        assert!(deep > 0, "no b half {DEEP} or more levels deep moved");
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

// The adversarial review of inline joins (a worker keeps at most 4 private `join` frames;
// deeper `join`s run as two plain calls). Scenarios that could hang or abort run in a
// child process under a time bound (this test binary re-executed on the ignored `child`).

#[path = "common/child.rs"]
mod child;
#[path = "common/scale.rs"]
mod scale;

/// The child side: runs the scenario named in the environment.
#[test]
#[ignore = "runs only as a child process of the bounded tests below"]
fn child() {
    let name = std::env::var(child::SCENARIO).expect("a scenario name");
    let (_, scenario) = CHILD_SCENARIOS
        .iter()
        .find(|(known, _)| *known == name)
        .unwrap_or_else(|| panic!("unknown scenario {name}"));
    scenario();
}

/// The scenarios that run in a child process, by name.
const CHILD_SCENARIOS: &[(&str, fn())] = &[
    ("random_join_trees", random_join_trees),
    ("result_of_a_panics_in_drop", result_of_a_panics_in_drop),
    (
        "cross_pool_cycle_deep_in_waits",
        cross_pool_cycle_deep_in_waits,
    ),
    (
        "random_join_trees_deep_in_waits",
        random_join_trees_deep_in_waits,
    ),
    ("cross_pool_cycles_forty_deep", cross_pool_cycles_forty_deep),
    ("cross_pool_cycle_panics_deep", cross_pool_cycle_panics_deep),
    ("relays_stay_within_the_bound", relays_stay_within_the_bound),
    ("relays_end_with_their_pool", relays_end_with_their_pool),
    (
        "pool_dropped_on_a_relay_mid_cycle",
        pool_dropped_on_a_relay_mid_cycle,
    ),
    ("progress_callback_waits_deep", progress_callback_waits_deep),
    ("scope_value_panics_in_drop", scope_value_panics_in_drop),
];

/// Runs `scenario` in a child process, failing if it fails or runs past `bound`.
fn in_child(scenario: &str, bound: std::time::Duration) {
    let outcome = child::run_child(scenario, &[], &[], bound);
    assert!(
        outcome.success,
        "scenario {scenario} failed (timed out: {}):\n{}",
        outcome.timed_out, outcome.output
    );
}

/// xorshift64*, for reproducible random shapes.
struct Rng(u64);

impl Rng {
    /// Seeded from `PARPOOL_TEST_SEED` if set, else from the clock; prints the seed, so
    /// that a failure can be replayed.
    fn from_env_or_clock() -> Rng {
        let seed = std::env::var("PARPOOL_TEST_SEED")
            .ok()
            .map(|seed| seed.parse().expect("PARPOOL_TEST_SEED is a u64"))
            .unwrap_or_else(|| {
                let since_epoch = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                since_epoch.as_nanos() as u64
            });
        println!("PARPOOL_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % n
    }
}

/// What a leaf of a random `join` tree does.
#[derive(Clone, Copy, Debug)]
enum Leaf {
    Value(u64),
    /// `panic_any(LeafPanic(id))`.
    Panic,
    /// Cancels the watch's token and calls a map, which unwinds with the watch's stop.
    Stop,
}

/// A leaf's panic payload: the leaf's id.
#[derive(Debug, PartialEq)]
struct LeafPanic(usize);

enum Tree {
    Leaf { id: usize, leaf: Leaf, spin: u64 },
    Join(Box<Tree>, Box<Tree>),
}

/// How a tree (or a subtree) ends.
#[derive(Debug, PartialEq)]
enum Ends {
    Value(u64),
    Panic(usize),
    Stop,
}

impl Tree {
    /// A random tree of at most `budget` leaves: random splits, left-deep and right-deep
    /// spines. `bad`: the chance (per 1000) that a leaf panics or stops.
    fn random(rng: &mut Rng, budget: usize, bad: u64, next_id: &mut usize) -> Tree {
        if budget <= 1 || rng.below(8) == 0 {
            let id = *next_id;
            *next_id += 1;
            let leaf = match rng.below(1000) {
                roll if roll < bad / 2 => Leaf::Panic,
                roll if roll < bad => Leaf::Stop,
                _ => Leaf::Value(rng.below(1000)),
            };
            let spin = if rng.below(4) == 0 {
                rng.below(2000)
            } else {
                0
            };
            return Tree::Leaf { id, leaf, spin };
        }
        match rng.below(4) {
            // A spine: a long chain of joins whose other halves are single leaves.
            0 | 1 => {
                let left_deep = rng.below(2) == 0;
                let mut spine = Tree::random(rng, budget / 2, bad, next_id);
                for _ in 0..rng.below(40).min(budget as u64 / 2) {
                    let leaf = Tree::random(rng, 1, bad, next_id);
                    spine = if left_deep {
                        Tree::Join(Box::new(spine), Box::new(leaf))
                    } else {
                        Tree::Join(Box::new(leaf), Box::new(spine))
                    };
                }
                spine
            }
            _ => {
                let left = 1 + rng.below(budget as u64 - 1) as usize;
                let a = Tree::random(rng, left, bad, next_id);
                let b = Tree::random(rng, budget - left, bad, next_id);
                Tree::Join(Box::new(a), Box::new(b))
            }
        }
    }

    /// How the tree ends by `join`'s rules: both halves always run; `a`'s panic wins,
    /// unless it is a stop and `b` panicked.
    fn expected(&self) -> Ends {
        match self {
            Tree::Leaf { leaf, id, .. } => match leaf {
                Leaf::Value(value) => Ends::Value(*value),
                Leaf::Panic => Ends::Panic(*id),
                Leaf::Stop => Ends::Stop,
            },
            Tree::Join(a, b) => match (a.expected(), b.expected()) {
                (Ends::Value(x), Ends::Value(y)) => Ends::Value(x + y),
                (Ends::Value(_), ends) | (Ends::Stop, ends @ Ends::Panic(_)) => ends,
                (ends, _) => ends,
            },
        }
    }

    /// Runs the tree with a `join` at every inner node, counting each leaf's runs.
    fn run(&self, runs: &[AtomicUsize], token: &parpool::CancelToken) -> u64 {
        match self {
            Tree::Leaf { id, leaf, spin } => {
                runs[*id].fetch_add(1, Ordering::SeqCst);
                for i in 0..*spin {
                    std::hint::black_box(i);
                }
                match *leaf {
                    Leaf::Value(value) => value,
                    Leaf::Panic => std::panic::panic_any(LeafPanic(*id)),
                    Leaf::Stop => {
                        use parpool::prelude::*;
                        token.cancel();
                        std::hint::black_box((0..100u64).par_map(|x| x + 1));
                        unreachable!("a map in a cancelled watch returned");
                    }
                }
            }
            Tree::Join(a, b) => {
                let (x, y) = join(|| a.run(runs, token), || b.run(runs, token));
                x + y
            }
        }
    }
}

/// Thousands of random trees (unbalanced, left- and right-deep spines, leaves that panic
/// or are stopped by a watch) on pools of 1, 2 and 16 threads: every leaf runs exactly
/// once, and the tree ends as `join`'s rules say, whether a `join` made a frame or ran
/// inline, and whether its `b` half was stolen.
fn random_join_trees() {
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::from_env_or_clock();
    for threads in [1, 2, 16] {
        let pool = ThreadPool::new(threads).unwrap();
        for round in 0..scale::scaled(4000, 40) {
            let bad = [0, 0, 3, 20, 200][round % 5];
            let mut leaves = 0;
            let budget = 1 + rng.below(300) as usize;
            let tree = Tree::random(&mut rng, budget, bad, &mut leaves);
            let runs: Vec<AtomicUsize> = (0..leaves).map(|_| AtomicUsize::new(0)).collect();
            let token = parpool::CancelToken::new();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                parpool::Watch::new()
                    .cancel_token(&token)
                    .run(|| pool.install(|| tree.run(&runs, &token)))
            }));
            let ends = match outcome {
                Ok(Ok(value)) => Ends::Value(value),
                Ok(Err(stopped)) => {
                    assert!(stopped.is_cancelled());
                    Ends::Stop
                }
                Err(payload) => match payload.downcast::<LeafPanic>() {
                    Ok(leaf) => Ends::Panic(leaf.0),
                    Err(other) => panic!("round {round}: a foreign panic {other:?}"),
                },
            };
            assert_eq!(ends, tree.expected(), "{threads} threads, round {round}");
            for (id, count) in runs.iter().enumerate() {
                assert_eq!(
                    count.load(Ordering::SeqCst),
                    1,
                    "{threads} threads, round {round}: leaf {id} ran once"
                );
            }
        }
    }
}

#[test]
fn random_join_trees_end_as_join_says() {
    in_child("random_join_trees", std::time::Duration::from_secs(300));
}

/// A result whose `Drop` panics.
struct PanicsInDrop;

impl Drop for PanicsInDrop {
    fn drop(&mut self) {
        panic!("drop of a's result");
    }
}

/// `b` panics after `a` returned a value whose `Drop` panics: `b`'s panic reaches the
/// caller, and the process does not abort (dropping `a`'s result while `b`'s panic
/// unwinds would), whether `b` ran as a private frame, inline below the private frames,
/// or on another worker.
fn result_of_a_panics_in_drop() {
    std::panic::set_hook(Box::new(|_| {}));
    let pool = ThreadPool::new(1).unwrap();
    for levels in [0, 16] {
        let message = panic_message(|| {
            pool.install(|| nested(levels, || join(|| PanicsInDrop, || panic!("b"))));
        });
        assert_eq!(message, "b", "{levels} levels");
    }
    // `b` stolen: `a` returns only once `b` runs on the other worker.
    let pool = ThreadPool::new(2).unwrap();
    for _ in 0..20 {
        let b_started = std::sync::atomic::AtomicBool::new(false);
        let message = panic_message(|| {
            pool.install(|| {
                join(
                    || {
                        while !b_started.load(Ordering::SeqCst) {
                            std::hint::spin_loop();
                        }
                        PanicsInDrop
                    },
                    || {
                        b_started.store(true, Ordering::SeqCst);
                        panic!("stolen b")
                    },
                )
            });
        });
        assert_eq!(message, "stolen b");
    }
    assert_all_workers_serve(&pool);
}

#[test]
fn a_result_that_panics_in_drop_does_not_abort_a_join_whose_b_panicked() {
    in_child(
        "result_of_a_panics_in_drop",
        std::time::Duration::from_secs(120),
    );
}

/// Runs `f` on `pool`'s worker under `levels` nested waits: each level is a `scope`
/// whose wait runs the next level's spawn.
fn under_waits<R: Send>(pool: &ThreadPool, levels: u32, f: impl FnOnce() -> R + Send) -> R {
    if levels == 0 {
        return f();
    }
    let mut result = None;
    pool.scope(|s| {
        s.spawn(|_| result = Some(under_waits(pool, levels - 1, f)));
    });
    result.unwrap()
}

/// A worker of `pool` installs a job into `other` that waits for a task of `pool`:
/// shallow, the installing worker runs `pool`'s jobs while it waits, the task among
/// them. Beyond the nesting limit (16 waits) the installing worker blocks instead, and
/// on a one-thread `pool` nobody is left to run the task.
fn cross_pool_cycle_deep_in_waits() {
    let pool = ThreadPool::new(1).unwrap();
    let other = ThreadPool::new(1).unwrap();
    for levels in [0, 8, 20] {
        let value = pool.install(|| {
            under_waits(&pool, levels, || {
                other.install(|| pool.submit(|| 7).get().unwrap())
            })
        });
        assert_eq!(value, 7, "{levels} levels");
        println!("{levels} levels: done");
    }
}

#[test]
fn a_cross_pool_cycle_deep_in_waits_finishes() {
    in_child(
        "cross_pool_cycle_deep_in_waits",
        std::time::Duration::from_secs(30),
    );
}

// The attack on relays (`src/pool/relay.rs`): an unrelated wait more than 16 waits deep
// hands its worker to a relay thread with a fresh stack instead of blocking.

/// One level of a cycle between two pools, called on a worker of `here`: wait in
/// `there` for a task of `here` that goes one level deeper. Each level nests one wait on
/// a worker of each pool (the `install` on `here`'s, the `get` on `there`'s); every
/// third level also nests a `scope` (a forked wait). The deepest level runs `leaf`.
/// Returns the names and ids of the threads that ran the levels on `here`.
fn cycle(
    here: &Arc<ThreadPool>,
    there: &Arc<ThreadPool>,
    levels: u32,
    leaf: fn() -> u32,
) -> (u32, Vec<(Option<String>, std::thread::ThreadId)>) {
    let current = std::thread::current();
    let me = (current.name().map(str::to_owned), current.id());
    if levels == 0 {
        return (leaf(), vec![me]);
    }
    let (for_task, other) = (Arc::clone(here), Arc::clone(there));
    let deeper = move || {
        let task = for_task.submit({
            let (here, there) = (Arc::clone(&for_task), Arc::clone(&other));
            move || cycle(&here, &there, levels - 1, leaf)
        });
        match task.get() {
            Ok(result) => result,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    };
    let (value, mut threads) = if levels % 3 == 0 {
        let mut result = None;
        here.scope(|s| {
            s.spawn(|_| result = Some(there.install(deeper)));
        });
        result.unwrap()
    } else {
        there.install(deeper)
    };
    threads.push(me);
    (value + 1, threads)
}

/// Two pools named `a` and `b` with the given sizes.
fn two_pools(a: usize, b: usize) -> (Arc<ThreadPool>, Arc<ThreadPool>) {
    let named = |name: &'static str, n| {
        Arc::new(
            ThreadPool::builder()
                .num_threads(n)
                .thread_name(move |i| format!("{name}-{i}"))
                .build()
                .unwrap(),
        )
    };
    (named("a", a), named("b", b))
}

/// Runs a 40-level cycle from a worker of `a`.
fn cycle_from(a: &Arc<ThreadPool>, b: &Arc<ThreadPool>, levels: u32) -> u32 {
    a.install(|| cycle(a, b, levels, || 0)).0
}

/// 40-level cycles between two pools, each waiting on the other, on pools of 1 and 2
/// threads and on 8 + 8 threads (more than the cores), from three outside threads at once
/// and then one at a time: each ends with its depth. On one-thread pools the levels on
/// `a` ran on the worker and on three relays, each under `a-0`'s name.
fn cross_pool_cycles_forty_deep() {
    for (na, nb) in [(1, 1), (1, 2), (2, 1), (2, 2), (8, 8)] {
        let (a, b) = two_pools(na, nb);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| assert_eq!(cycle_from(&a, &b, 40), 40, "{na} + {nb} threads"));
            }
        });
        let (depth, threads) = a.install(|| cycle(&a, &b, 40, || 0));
        assert_eq!(depth, 40, "{na} + {nb} threads");
        assert!(
            threads
                .iter()
                .all(|(name, _)| name.as_deref().unwrap().starts_with("a-"))
        );
        if na == 1 {
            let ids: std::collections::HashSet<_> = threads.iter().map(|(_, id)| *id).collect();
            // 40 `install`s and 13 `scope`s nest 53 waits on `a`'s only worker: hops at
            // the 17th, 34th and 51st.
            assert_eq!(
                ids.len(),
                4,
                "the worker and three relays ran the levels on `a`"
            );
        }
        println!("{na} + {nb} threads: done");
    }
}

#[test]
fn cross_pool_cycles_forty_deep_finish() {
    in_child(
        "cross_pool_cycles_forty_deep",
        std::time::Duration::from_secs(120),
    );
}

/// The deepest task of a 40-level cycle panics: the panic travels up through every level
/// (each `get` returns it, each `install` re-raises it) and reaches the caller, and both
/// pools, relays included, go on serving: the same cycle then ends with its depth.
fn cross_pool_cycle_panics_deep() {
    std::panic::set_hook(Box::new(|_| {}));
    for (na, nb) in [(1, 1), (2, 2)] {
        let (a, b) = two_pools(na, nb);
        for _ in 0..3 {
            let message = panic_message(|| {
                a.install(|| cycle(&a, &b, 40, || panic!("deep")));
            });
            assert_eq!(message, "deep");
            assert_eq!(cycle_from(&a, &b, 40), 40);
        }
        assert_all_workers_serve(&a);
        assert_all_workers_serve(&b);
    }
}

#[test]
fn a_panic_deep_in_a_cross_pool_cycle_reaches_the_caller() {
    in_child(
        "cross_pool_cycle_panics_deep",
        std::time::Duration::from_secs(120),
    );
}

/// The threads of this process, from `/proc/self/task` (Linux).
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("Linux /proc")
        .count()
}

/// Waits (bounded) for the thread count to reach `expected`: a thread that ended on its
/// own can stay listed for a moment.
fn assert_thread_count_reaches(expected: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while thread_count() != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(thread_count(), expected);
}

/// A cycle of `levels` on two pools of `n` threads; returns the most threads the process
/// had at any level's deepest point.
fn most_threads_in_cycle(a: &Arc<ThreadPool>, b: &Arc<ThreadPool>, levels: u32) -> usize {
    static MOST: AtomicUsize = AtomicUsize::new(0);
    MOST.store(0, Ordering::SeqCst);
    let depth = cycle_from(a, b, levels);
    assert_eq!(depth, levels);
    a.install(|| {
        cycle(a, b, levels, || {
            MOST.fetch_max(thread_count(), Ordering::SeqCst);
            0
        })
    });
    MOST.load(Ordering::SeqCst)
}

/// The documented bound (`relay.rs`, "Depth, and how many threads"): a pool of `n`
/// workers whose waits nest at most `D` deep runs on at most `n × (1 + ⌊D / 17⌋)` threads.
/// A cycle of `L` levels nests at most `L` waits of its own (plus a `scope` every third
/// level, and the `install` that starts it) on a worker of each pool. On one-thread pools
/// the count is exact: every hop is needed, and running more cycles of the same depth
/// starts no more threads (relays are reused). On bigger pools the levels spread over the
/// workers differently each time, so later cycles may start a few more relays, within the
/// same bound.
fn relays_stay_within_the_bound() {
    let baseline = thread_count();
    for (n, levels) in [(1, 40), (1, 200), (2, 120), (4, 60)] {
        let (a, b) = two_pools(n, n);
        let nested = levels + levels / 3 + 1;
        let bound = baseline + 2 * n * (1 + nested as usize / 17);
        let most = most_threads_in_cycle(&a, &b, levels);
        println!("{n} threads, {levels} levels: {most} threads (bound {bound})");
        assert!(most <= bound, "{most} threads, bound {bound}");
        if n == 1 {
            assert!(most > baseline + 2, "the cycle used relays");
        }
        for _ in 0..5 {
            let again = most_threads_in_cycle(&a, &b, levels);
            if n == 1 {
                assert_eq!(again, most, "relays are reused");
            }
            assert!(again <= bound, "{again} threads, bound {bound}");
        }
        drop((a, b));
        assert_thread_count_reaches(baseline);
    }
}

#[test]
fn relays_stay_within_the_documented_thread_bound() {
    in_child(
        "relays_stay_within_the_bound",
        std::time::Duration::from_secs(120),
    );
}

/// Relays end with their pool: dropping the pools joins every relay, each of which ran
/// its worker's start handler (with the worker's index) when it first took the worker,
/// and its exit handler as it ended; `drop` returns with the threads gone.
fn relays_end_with_their_pool() {
    let baseline = thread_count();
    let started = Arc::new(AtomicUsize::new(0));
    let exited = Arc::new(AtomicUsize::new(0));
    let pool = |name: &'static str| {
        let (started, exited) = (Arc::clone(&started), Arc::clone(&exited));
        Arc::new(
            ThreadPool::builder()
                .num_threads(1)
                .thread_name(move |i| format!("{name}-{i}"))
                .start_handler(move |i| {
                    assert_eq!(i, 0);
                    assert_eq!(parpool::current_thread_index(), Some(0));
                    started.fetch_add(1, Ordering::SeqCst);
                })
                .exit_handler(move |i| {
                    assert_eq!(parpool::current_thread_index(), Some(i));
                    exited.fetch_add(1, Ordering::SeqCst);
                })
                .build()
                .unwrap(),
        )
    };
    let (a, b) = (pool("a"), pool("b"));
    assert_eq!(cycle_from(&a, &b, 60), 60);
    let threads = thread_count() - baseline;
    assert!(threads > 2, "relays were started");
    assert_eq!(started.load(Ordering::SeqCst), threads);
    drop((a, b));
    // Every exit handler ran before `drop` returned: the threads were joined (a joined
    // thread may stay listed in /proc for a moment).
    assert_eq!(exited.load(Ordering::SeqCst), threads);
    assert_thread_count_reaches(baseline);
}

#[test]
fn relays_end_with_their_pool_and_run_the_handlers() {
    in_child(
        "relays_end_with_their_pool",
        std::time::Duration::from_secs(60),
    );
}

/// The only handle of pool `a` in [`pool_dropped_on_a_relay_mid_cycle`].
static ONLY_A: std::sync::Mutex<Option<ThreadPool>> = std::sync::Mutex::new(None);

/// A cycle in which `a` is only reached through [`ONLY_A`] (`get` needs no handle, and
/// nothing borrows `a` across a wait), so its deepest level can drop it: on a worker of
/// `a` at level `levels`, wait in `b` for a task of `a` one level deeper. Returns the
/// depth and the id of the thread that ran the deepest level.
fn cycle_without_a_handle(
    b: Arc<ThreadPool>,
    levels: u32,
) -> (u32, std::thread::ThreadId, Option<String>) {
    if levels == 0 {
        // The deepest level drops the last handle to its own pool, as a worker of it.
        assert_eq!(parpool::current_thread_index(), Some(0));
        drop(ONLY_A.lock().unwrap().take().expect("a is still there"));
        let current = std::thread::current();
        return (0, current.id(), current.name().map(str::to_owned));
    }
    let for_task = Arc::clone(&b);
    let (depth, id, name) = b.install(move || {
        let task = ONLY_A
            .lock()
            .unwrap()
            .as_ref()
            .expect("a is still there")
            .submit(move || cycle_without_a_handle(for_task, levels - 1));
        task.get().unwrap()
    });
    (depth + 1, id, name)
}

/// The last handle to pool `a` is dropped 40 waits deep in a cycle, on a relay of `a`'s
/// worker (so `drop` does not join, as on any worker: it would wait for the worker's own
/// thread, parked under the relay): the cycle still ends, `a` runs nothing more, and then
/// every thread of `a`, relays included, ends on its own.
fn pool_dropped_on_a_relay_mid_cycle() {
    let baseline = thread_count();
    for _ in 0..3 {
        let (a, b) = two_pools(1, 1);
        let a = Arc::into_inner(a).unwrap();
        let worker = a.install(|| std::thread::current().id());
        *ONLY_A.lock().unwrap() = Some(a);
        let task = ONLY_A
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .submit(move || cycle_without_a_handle(b, 40));
        let (depth, deepest, name) = task.get().unwrap();
        assert_eq!(depth, 40);
        assert_ne!(deepest, worker, "the deepest level ran on a relay");
        assert_eq!(name.as_deref(), Some("a-0"));
        assert!(ONLY_A.lock().unwrap().is_none());
        assert_thread_count_reaches(baseline);
    }
}

#[test]
fn a_pool_dropped_on_a_relay_ends_all_its_threads() {
    in_child(
        "pool_dropped_on_a_relay_mid_cycle",
        std::time::Duration::from_secs(60),
    );
}

/// The pools and the progress of `progress_callback_waits_deep`, for its cycle's leaf.
static CALLBACK_SETUP: std::sync::OnceLock<(Arc<ThreadPool>, Arc<ThreadPool>, parpool::Progress)> =
    std::sync::OnceLock::new();

/// A progress callback that waits 40 levels deep in a cross-pool cycle (so its worker hops
/// to relays), and at the deepest level, on a relay, runs a task that ends a block of the
/// same progress. Inside a callback a thread makes no nested call of it; the relay
/// continues the callback's wait, so it makes none either: before relays carried that, the
/// task's final call waited for the callback's lock, held by the thread parked below the
/// relay, which waited for the relay: a deadlock. Both blocks end, and the outer block's
/// final call reports all its items.
fn progress_callback_waits_deep() {
    use parpool::prelude::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicBool;

    fn leaf() -> u32 {
        let (a, _, progress) = CALLBACK_SETUP.get().unwrap();
        let progress = progress.clone();
        let task = a.submit(move || {
            parpool::Watch::new()
                .progress(&progress)
                .run(|| progress.done())
                .unwrap()
        });
        task.get().unwrap();
        0
    }

    let (a, b) = two_pools(1, 1);
    let cycled = Arc::new(AtomicBool::new(false));
    let finals = Arc::new(Mutex::new(Vec::new()));
    let progress = parpool::Progress::with_callback(Duration::ZERO, {
        let (cycled, finals) = (Arc::clone(&cycled), Arc::clone(&finals));
        move |update| {
            if update.finished {
                finals.lock().unwrap().push(update.done);
            } else if parpool::current_thread_index().is_some()
                && !cycled.swap(true, Ordering::SeqCst)
            {
                let (a, b, _) = CALLBACK_SETUP.get().unwrap();
                assert_eq!(cycle(a, b, 40, leaf).0, 40);
            }
        }
    });
    assert!(
        CALLBACK_SETUP
            .set((Arc::clone(&a), Arc::clone(&b), progress.clone()))
            .is_ok()
    );
    let mapped = a.install(|| {
        parpool::Watch::new()
            .progress(&progress)
            .run(|| (0..1000u64).par_map(|x| x + 1))
            .unwrap()
    });
    assert_eq!(mapped.len(), 1000);
    assert!(
        cycled.load(Ordering::SeqCst),
        "the callback ran on a's worker"
    );
    // The inner block's final call was skipped (it ended inside the callback); the outer
    // block's was made, with every item counted.
    assert_eq!(*finals.lock().unwrap(), [1000]);
}

#[test]
fn a_progress_callback_may_wait_deep() {
    in_child(
        "progress_callback_waits_deep",
        std::time::Duration::from_secs(60),
    );
}

/// Random `join` trees (with panics) run under 20 nested `scope` waits, where a wait for
/// a stolen `b` half runs only its own deque and then sleeps on its latch: every leaf runs
/// once and the tree ends as `join`'s rules say, on one thread and on two.
fn random_join_trees_deep_in_waits() {
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng::from_env_or_clock();
    for threads in [1, 2] {
        let pool = ThreadPool::new(threads).unwrap();
        for round in 0..scale::scaled(1500, 20) {
            let mut leaves = 0;
            let budget = 1 + rng.below(300) as usize;
            let tree = Tree::random(&mut rng, budget, [0, 20][round % 2], &mut leaves);
            let runs: Vec<AtomicUsize> = (0..leaves).map(|_| AtomicUsize::new(0)).collect();
            let token = parpool::CancelToken::new();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                parpool::Watch::new()
                    .cancel_token(&token)
                    .run(|| pool.install(|| under_waits(&pool, 20, || tree.run(&runs, &token))))
            }));
            let ends = match outcome {
                Ok(Ok(value)) => Ends::Value(value),
                Ok(Err(_)) => Ends::Stop,
                Err(payload) => Ends::Panic(payload.downcast::<LeafPanic>().unwrap().0),
            };
            assert_eq!(ends, tree.expected(), "{threads} threads, round {round}");
            assert!(
                runs.iter().all(|count| count.load(Ordering::SeqCst) == 1),
                "{threads} threads, round {round}: every leaf ran once"
            );
        }
    }
}

#[test]
fn random_join_trees_deep_in_waits_end_as_join_says() {
    in_child(
        "random_join_trees_deep_in_waits",
        std::time::Duration::from_secs(300),
    );
}

/// A `scope`'s spawned job panics after the body returned a value whose `Drop` panics:
/// the spawn's panic reaches the caller, and the process does not abort (dropping the
/// value while that panic unwinds would).
fn scope_value_panics_in_drop() {
    std::panic::set_hook(Box::new(|_| {}));
    for threads in [1, 2] {
        let pool = ThreadPool::new(threads).unwrap();
        let message = panic_message(|| {
            pool.scope(|s| {
                s.spawn(|_| panic!("spawned job"));
                PanicsInDrop
            });
        });
        assert_eq!(message, "spawned job", "{threads} threads");
        assert_all_workers_serve(&pool);
    }
}

#[test]
fn a_scope_value_that_panics_in_drop_does_not_abort_a_scope_whose_spawn_panicked() {
    in_child(
        "scope_value_panics_in_drop",
        std::time::Duration::from_secs(60),
    );
}
