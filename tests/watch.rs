//! Watches on the thread side: cancellation, deadlines and progress for the kit, the
//! iterator maps, `imap` and tasks.
//!
//! Every scenario could hang if a stop were lost, so each runs in a child process (this test
//! binary re-executed on the ignored `child` test) under a time bound: a broken stop fails
//! its own test instead of stalling the suite.

#[path = "common/child.rs"]
mod child;
#[path = "common/nested.rs"]
mod nested;

use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parpool::prelude::*;
use parpool::{CancelToken, Progress, Stopped, Watch};

/// Declares the scenarios: [`SCENARIOS`] for the child side, and one `#[test]` each (in
/// `bounded`) that runs it in a child process.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        /// The scenarios, by name.
        const SCENARIOS: &[(&str, fn())] = &[$((stringify!($name), $name)),*];

        mod bounded {
            $(
                #[test]
                fn $name() {
                    super::in_child(stringify!($name));
                }
            )*
        }
    };
}

scenarios!(
    cancel_inside_into_par_map,
    cancel_inside_pool_map,
    cancel_inside_imap,
    cancel_every_kit_op,
    cancel_from_another_thread,
    deadline_stops_maps,
    nested_runs,
    nested_maps_are_watched,
    stolen_job_does_not_inherit,
    scope_and_join_carry_the_watch,
    join_half_keeps_its_watch_across_a_nested_run,
    spawn_ends_a_stopped_closure_quietly,
    submit_reports_stops,
    task_run_inline_checks_its_watch,
    imap_until_stopped,
    imap_outside_run_panics_clearly,
    panic_inside_run_is_not_swallowed,
    progress_counts_every_map,
    stress_random_cancels,
    // Found by the adversarial review of the watch (each failed before its fix).
    try_ops_panic_beats_stop,
    deadline_stops_coarse_items_within_a_batch,
    join_and_scope_panic_beats_stop,
    drop_panics_during_a_stop,
    imap_drop_panics_during_a_stop,
    stress_random_cancels_one_and_many_threads,
    panic_handler_sees_no_stops,
    cancel_from_another_thread_stops_within_a_batch,
    // Found by the adversarial review of inline joins.
    join_loser_drop_panics_during_a_stop,
    inline_joins_keep_their_watches,
    scope_value_drop_panics_during_a_stop,
    // Found by the adversarial review of the call-site memory.
    recalled_call_stops_within_a_batch,
);

/// The child side: runs the scenario named in the environment.
#[test]
#[ignore = "runs only as a child process of the tests in `bounded`"]
fn child() {
    let name = std::env::var(child::SCENARIO).expect("a scenario name");
    let (_, scenario) = SCENARIOS
        .iter()
        .find(|(known, _)| *known == name)
        .unwrap_or_else(|| panic!("unknown scenario {name}"));
    scenario();
}

/// Runs `scenario` in a child process, failing if it fails or runs past the bound.
fn in_child(scenario: &str) {
    let outcome = child::run_child(scenario, &[], &[], Duration::from_secs(120));
    assert!(
        outcome.success,
        "scenario {scenario} failed (timed out: {}):\n{}",
        outcome.timed_out, outcome.output
    );
}

/// About `n` × 5 ns of work the optimiser cannot remove.
fn spin(n: u64) -> u64 {
    (0..n).fold(0u64, |acc, i| {
        black_box(acc.wrapping_mul(31).wrapping_add(i))
    })
}

/// What happened to the items and results of one call.
#[derive(Default, Debug)]
struct Counts {
    created: AtomicUsize,
    /// Items passed to the closure.
    mapped: AtomicUsize,
    /// Items the closure started after the token was cancelled.
    mapped_after_stop: AtomicUsize,
    dropped_mapped: AtomicUsize,
    dropped_unmapped: AtomicUsize,
    results_made: AtomicUsize,
    results_dropped: AtomicUsize,
}

impl Counts {
    fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }

    /// Waits (within the child's bound) until every item was mapped or dropped and every
    /// result made was dropped: a stopped `imap` does not wait for its running chunks,
    /// which finish, and drop their items and results, in the background.
    fn settle(&self, total: usize) {
        let get = Self::get;
        while get(&self.mapped) + get(&self.dropped_unmapped) < total
            || get(&self.results_dropped) < get(&self.results_made)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Every item dropped exactly once, mapped or not, and every result made dropped
    /// exactly once (the results of a stopped call are never handed out).
    fn assert_exactly_once(&self, total: usize) {
        let get = Self::get;
        assert_eq!(get(&self.created), total);
        assert_eq!(
            get(&self.mapped) + get(&self.dropped_unmapped),
            total,
            "processed + dropped unprocessed != total: {self:?}"
        );
        assert_eq!(get(&self.dropped_mapped), get(&self.mapped), "{self:?}");
        assert_eq!(
            get(&self.results_dropped),
            get(&self.results_made),
            "{self:?}"
        );
    }
}

/// An owned input item that reports whether it was dropped mapped or not.
struct Item {
    counts: Arc<Counts>,
    mapped: bool,
    value: u64,
}

impl Drop for Item {
    fn drop(&mut self) {
        let counter = if self.mapped {
            &self.counts.dropped_mapped
        } else {
            &self.counts.dropped_unmapped
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// A result that counts its drop.
struct Out {
    counts: Arc<Counts>,
    value: u64,
}

impl Drop for Out {
    fn drop(&mut self) {
        self.counts.results_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn items(counts: &Arc<Counts>, n: usize) -> Vec<Item> {
    (0..n as u64)
        .map(|value| {
            counts.created.fetch_add(1, Ordering::SeqCst);
            Item {
                counts: Arc::clone(counts),
                mapped: false,
                value,
            }
        })
        .collect()
}

/// The closure under test: maps `item` (about 1 µs), cancelling `token` at the
/// `cancel_at`-th item.
fn map_item(mut item: Item, token: &CancelToken, cancel_at: usize) -> Out {
    let counts = Arc::clone(&item.counts);
    if token.is_cancelled() {
        counts.mapped_after_stop.fetch_add(1, Ordering::SeqCst);
    }
    item.mapped = true;
    if counts.mapped.fetch_add(1, Ordering::SeqCst) == cancel_at {
        token.cancel();
    }
    counts.results_made.fetch_add(1, Ordering::SeqCst);
    Out {
        counts,
        value: spin(200) ^ item.value,
    }
}

/// `map` run on `n` items with a cancel at item `cancel_at`, from inside: stopped,
/// every item and result dropped exactly once, and few items mapped after the stop.
fn cancel_inside(n: usize, map: impl FnOnce(Vec<Item>, &CancelToken) -> Vec<Out>) {
    cancel_inside_then(n, map, false);
}

/// [`cancel_inside`], for a map that leaves its running chunks to finish in the
/// `background` (`imap`) or one that waits for them.
fn cancel_inside_then(
    n: usize,
    map: impl FnOnce(Vec<Item>, &CancelToken) -> Vec<Out>,
    background: bool,
) {
    let counts = Arc::new(Counts::default());
    let input = items(&counts, n);
    let token = CancelToken::new();
    let outcome = Watch::new().cancel_token(&token).run(|| map(input, &token));
    let stopped = outcome.map(|out| out.len()).unwrap_err();
    assert!(stopped.is_cancelled() && !stopped.is_deadline());
    if background {
        counts.settle(n);
    }
    counts.assert_exactly_once(n);
    let mapped = Counts::get(&counts.mapped);
    assert!(mapped < n, "the map ran to the end: {counts:?}");
    // A stop takes effect between batches: what runs after it is at most a few batches
    // per thread (a batch is at most 4096 items), never the rest of the input.
    assert!(
        Counts::get(&counts.mapped_after_stop) <= 4 * 4096,
        "{counts:?}"
    );
}

const ITEMS: usize = 200_000;

fn cancel_inside_into_par_map() {
    cancel_inside(ITEMS, |input, token| {
        input.into_par_map(|item| map_item(item, token, 1000))
    });
    // Cancelled while the caller still samples: the same guarantees.
    cancel_inside(ITEMS, |input, token| {
        input.into_par_map(|item| map_item(item, token, 0))
    });
}

fn cancel_inside_pool_map() {
    let pool = ThreadPool::new(2).unwrap();
    cancel_inside(ITEMS, |input, token| {
        pool.map(input, |item| map_item(item, token, 1000))
    });
    cancel_inside(ITEMS, |input, token| {
        pool.map_chunked(input, 64, |item| map_item(item, token, 1000))
    });
    cancel_inside(ITEMS, |input, token| {
        pool.try_map(input, |item| Ok::<_, ()>(map_item(item, token, 1000)))
            .unwrap()
    });
    // The pool goes on serving after the stops.
    assert_eq!(pool.map(0..1000u32, |x| x + 1)[999], 1000);
}

fn cancel_inside_imap() {
    let pool = ThreadPool::new(2).unwrap();
    for ordered in [true, false] {
        let map = |input, token: &CancelToken| {
            let token = token.clone();
            let f = move |item| map_item(item, &token, 1000);
            if ordered {
                pool.imap(input, f).collect()
            } else {
                pool.imap_unordered(input, f).collect()
            }
        };
        cancel_inside_then(ITEMS, map, true);
    }
    assert_eq!(pool.imap(0..100u32, |x| x).count(), 100);
}

/// The closure a kit operation is given in [`cancel_every_kit_op`].
type ItemFn<'a> = &'a (dyn Fn(&u64) -> u64 + Sync);

/// A kit operation run over the data with the closure.
type KitOp = fn(&[u64], ItemFn<'_>);

/// Every operation of the kit stops on a cancel from inside and reports it.
fn cancel_every_kit_op() {
    let data: Vec<u64> = (0..ITEMS as u64).collect();
    let ops: &[(&str, KitOp)] = &[
        ("par_map", |d, f| {
            black_box(d.par_map(f));
        }),
        ("par_map_into", |d, f| d.par_map_into(f, &mut Vec::new())),
        ("par_for_each", |d, f| {
            d.par_for_each(|x| {
                black_box(f(x));
            })
        }),
        ("par_map_init", |d, f| {
            black_box(d.par_map_init(|| 1u64, |k, x| f(x) + *k));
        }),
        ("par_for_each_init", |d, f| {
            d.par_for_each_init(|| 0u64, |k, x| *k ^= f(x))
        }),
        ("par_sum", |d, f| {
            black_box(d.par_sum::<u64, _>(|x| f(x) & 1));
        }),
        ("par_min", |d, f| {
            black_box(d.par_min(f));
        }),
        ("par_max", |d, f| {
            black_box(d.par_max(f));
        }),
        ("par_map_reduce", |d, f| {
            black_box(d.par_map_reduce(f, || 0, |a, b| a ^ b));
        }),
        ("try_par_map", |d, f| {
            let _ = black_box(d.try_par_map(|x| Ok::<_, ()>(f(x))));
        }),
        ("try_par_for_each", |d, f| {
            let _ = black_box(d.try_par_for_each(|x| {
                black_box(f(x));
                Ok::<_, ()>(())
            }));
        }),
        ("par_chunks", |d, f| {
            black_box(d.par_chunks(4).map(|c| f(&c[0])));
        }),
        ("par_for_each_mut", |d, f| {
            d.to_vec().par_for_each_mut(|x| *x = f(x))
        }),
        ("into_par_map", |d, f| {
            black_box(d.to_vec().into_par_map(|x| f(&x)));
        }),
        ("range par_map", |d, f| {
            drop((0..d.len() as u64).par_map(|x| f(&x)))
        }),
        ("map", |d, f| {
            black_box(parpool::map(d, f));
        }),
        ("map_chunked", |d, f| {
            black_box(parpool::map_chunked(d, 8, f));
        }),
        ("try_map", |d, f| {
            let _ = black_box(parpool::try_map(d, |x| Ok::<_, ()>(f(x))));
        }),
    ];
    for (name, op) in ops {
        let token = CancelToken::new();
        let seen = AtomicUsize::new(0);
        let f = |x: &u64| {
            if seen.fetch_add(1, Ordering::Relaxed) == 1000 {
                token.cancel();
            }
            spin(100) ^ x
        };
        let stopped = Watch::new()
            .cancel_token(&token)
            .run(|| op(&data, &f))
            .expect_err(name);
        assert!(stopped.is_cancelled(), "{name}");
        assert!(
            seen.load(Ordering::Relaxed) < ITEMS,
            "{name} ran to the end"
        );
    }
}

/// A token cancelled by another thread stops a map that is running.
fn cancel_from_another_thread() {
    let pool = ThreadPool::new(2).unwrap();
    let counts = Arc::new(Counts::default());
    let input = items(&counts, ITEMS);
    let token = CancelToken::new();
    let canceller = {
        let (token, counts) = (token.clone(), Arc::clone(&counts));
        std::thread::spawn(move || {
            while counts.mapped.load(Ordering::SeqCst) < 5000 {
                std::thread::yield_now();
            }
            token.cancel();
        })
    };
    let never = CancelToken::new();
    let stopped = Watch::new()
        .cancel_token(&token)
        .run(|| pool.install(|| input.into_par_map(|item| map_item(item, &never, usize::MAX))))
        .map(|out| out.len())
        .unwrap_err();
    canceller.join().unwrap();
    assert!(stopped.is_cancelled());
    counts.assert_exactly_once(ITEMS);
    assert!(Counts::get(&counts.mapped) < ITEMS);
}

/// A deadline stops every kind of map, and says so.
fn deadline_stops_maps() {
    let pool = ThreadPool::new(2).unwrap();
    // Each map would take seconds; the deadline is 20 ms away.
    let slow = |x: u64| spin(2000) ^ x;
    let runs: [(&str, &dyn Fn()); 4] = [
        ("par_map", &|| drop((0..2_000_000u64).par_map(slow))),
        ("pool.map", &|| {
            black_box(pool.map(0..2_000_000u64, slow));
        }),
        ("imap", &|| {
            black_box(pool.imap(0..2_000_000u64, slow).count());
        }),
        ("one-thread par_map", &|| {
            let one = ThreadPool::new(1).unwrap();
            {
                black_box(one.install(|| (0..2_000_000u64).par_map(slow)));
            }
        }),
    ];
    for (name, run) in runs {
        let stopped = Watch::new()
            .timeout(Duration::from_millis(20))
            .run(run)
            .expect_err(name);
        assert!(stopped.is_deadline() && !stopped.is_cancelled(), "{name}");
    }
    // A deadline in the past stops the block before it starts.
    let ran = AtomicUsize::new(0);
    let stopped = Watch::new()
        .deadline(Instant::now())
        .run(|| ran.fetch_add(1, Ordering::SeqCst))
        .unwrap_err();
    assert!(stopped.is_deadline());
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

/// A run inside a run: stopped by either's token, the innermost run reports the stop, and
/// progress goes to both.
fn nested_runs() {
    let (outer_token, inner_token) = (CancelToken::new(), CancelToken::new());
    let (outer_progress, inner_progress) = (Progress::new(), Progress::new());
    let outer = Watch::new()
        .cancel_token(&outer_token)
        .progress(&outer_progress);
    let inner = Watch::new()
        .cancel_token(&inner_token)
        .progress(&inner_progress);
    let result = outer.run(|| {
        let first = inner.run(|| (0..1000u64).par_map(|x| x + 1)).unwrap();
        assert_eq!(first.len(), 1000);
        // The inner token stops the inner block only.
        inner_token.cancel();
        assert!(
            inner
                .run(|| (0..1000u64).par_map(|x| x))
                .unwrap_err()
                .is_cancelled()
        );
        // The outer block goes on.
        let second = (0..500u64).par_map(|x| x * 2);
        // The outer token stops a map inside a fresh inner run, which reports it first.
        let fresh = Watch::new();
        let stopped = fresh
            .run(|| {
                (0..ITEMS as u64).par_map(|x| {
                    if x == 100 {
                        outer_token.cancel();
                    }
                    spin(100) ^ x
                })
            })
            .unwrap_err();
        assert!(stopped.is_cancelled());
        second.len()
    });
    assert_eq!(result.unwrap(), 500);
    assert_eq!(inner_progress.done(), 1000);
    assert_eq!(inner_progress.total(), Some(1000));
    assert_eq!(outer_progress.total(), Some(1000 + 500 + ITEMS as u64));
    assert!(outer_progress.done() >= 1500 && outer_progress.done() < 1500 + ITEMS as u64);
}

/// Maps started inside a map's closure, on workers, are watched too: a cancel stops them,
/// and their items count into the progress.
fn nested_maps_are_watched() {
    let progress = Progress::new();
    let sums = Watch::new()
        .progress(&progress)
        .run(|| (0..20u64).par_map(|i| (0..1000u64).par_map(|j| spin(50) ^ (i + j)).len()))
        .unwrap();
    assert_eq!(sums, vec![1000; 20]);
    assert_eq!(progress.total(), Some(20 + 20 * 1000));
    assert_eq!(progress.done(), 20 + 20 * 1000);

    let token = CancelToken::new();
    let inner_started = AtomicUsize::new(0);
    let stopped = Watch::new()
        .cancel_token(&token)
        .run(|| {
            (0..64u64).par_map(|i| {
                inner_started.fetch_add(1, Ordering::SeqCst);
                (0..100_000u64)
                    .par_map(|j| {
                        if i == 0 && j == 10 {
                            token.cancel();
                        }
                        spin(20) ^ j
                    })
                    .len()
            })
        })
        .unwrap_err();
    assert!(stopped.is_cancelled());
    assert!(inner_started.load(Ordering::SeqCst) < 64);
}

/// A worker that waits inside a watched call and runs an unrelated job meanwhile runs it
/// under that job's watch (none), not the waiting frame's.
fn stolen_job_does_not_inherit() {
    let pool = ThreadPool::new(1).unwrap();
    let token = CancelToken::new();
    let progress = Progress::new();
    let unrelated_len = pool.install(|| {
        // Submitted outside the run: no watch. It waits on this worker's own deque.
        let unrelated = pool.submit(|| (0..100_000u64).par_map(|x| spin(5) ^ x).len());
        Watch::new()
            .cancel_token(&token)
            .progress(&progress)
            .run(|| {
                token.cancel();
                // The worker waits here by running its other jobs: `unrelated` among them.
                unrelated.get()
            })
            .unwrap()
    });
    assert_eq!(unrelated_len.unwrap(), 100_000);
    assert_eq!(progress.done(), 0);
    assert_eq!(progress.total(), Some(0));
}

/// `scope` spawns and `join` halves run under the watch of their caller: a stop in them
/// reaches the run.
fn scope_and_join_carry_the_watch() {
    let pool = ThreadPool::new(2).unwrap();
    let token = CancelToken::new();
    let watch = Watch::new().cancel_token(&token);
    let stopped = watch
        .run(|| {
            pool.scope(|s| {
                for _ in 0..4 {
                    s.spawn(|_| {
                        token.cancel();
                        drop((0..ITEMS as u64).par_map(|x| spin(50) ^ x));
                    });
                }
            })
        })
        .unwrap_err();
    assert!(stopped.is_cancelled());

    let token = CancelToken::new();
    let stopped = Watch::new()
        .cancel_token(&token)
        .run(|| {
            pool.join(
                || drop((0..1000u64).par_map(|x| x)),
                || {
                    token.cancel();
                    drop((0..ITEMS as u64).par_map(|x| spin(50) ^ x));
                },
            )
        })
        .unwrap_err();
    assert!(stopped.is_cancelled());
    assert_eq!(pool.join(|| 1, || 2), (1, 2));
}

/// A `join`'s `b` half takes its watch when it is published, not when it is made: one
/// made while no worker is idle and published from inside a nested run in `a` (by a wait
/// there, while the other worker is idle) still runs under the `join`'s own watch, so its
/// items count there and not in the nested run's progress.
fn join_half_keeps_its_watch_across_a_nested_run() {
    const B_ITEMS: usize = 1000;
    const A_ITEMS: u64 = 100;
    let pool = ThreadPool::new(2).unwrap();
    for _ in 0..50 {
        let outer = Progress::new();
        let inner = Progress::new();
        let go = AtomicBool::new(false);
        let b_started = AtomicBool::new(false);
        pool.join(
            // Keeps the other worker busy while `b` is made, then lets it go idle.
            || {
                while !go.load(Ordering::SeqCst) {
                    std::hint::spin_loop();
                }
            },
            || {
                // A worker publishes its first few joins after a steal: use them up, so
                // that `b` stays private when made (the other worker is busy).
                for _ in 0..16 {
                    pool.join(|| (), || ());
                }
                let (_, b_len) = Watch::new()
                    .progress(&outer)
                    .run(|| {
                        pool.join(
                            || {
                                Watch::new()
                                    .progress(&inner)
                                    .run(|| {
                                        go.store(true, Ordering::SeqCst);
                                        // The scope's wait publishes `b`; the other worker
                                        // steals it while this one runs the spawn.
                                        pool.scope(|s| {
                                            s.spawn(|_| {
                                                while !b_started.load(Ordering::SeqCst) {
                                                    std::hint::spin_loop();
                                                }
                                            });
                                        });
                                        drop((0..A_ITEMS).par_map(|x| x));
                                    })
                                    .unwrap()
                            },
                            || {
                                b_started.store(true, Ordering::SeqCst);
                                (0..B_ITEMS as u64).par_map(|x| x).len()
                            },
                        )
                    })
                    .unwrap();
                assert_eq!(b_len, B_ITEMS);
            },
        );
        assert_eq!(inner.done(), A_ITEMS, "b ran under a's nested watch");
        assert_eq!(outer.done(), A_ITEMS + B_ITEMS as u64);
    }
}

/// A closure given to `spawn` inside a run runs under its watch; a stop ends it without
/// reaching the panic handler.
fn spawn_ends_a_stopped_closure_quietly() {
    let (report, handled) = std::sync::mpsc::channel();
    let report = std::sync::Mutex::new(report);
    // One worker: the handler calls happen in the order the closures end.
    let pool = ThreadPool::builder()
        .num_threads(1)
        .panic_handler(move |payload| {
            let message = payload.downcast_ref::<&str>().map(|s| s.to_string());
            report.lock().unwrap().send(message).unwrap();
        })
        .build()
        .unwrap();
    let token = CancelToken::new();
    Watch::new()
        .cancel_token(&token)
        .run(|| {
            let token = token.clone();
            pool.spawn(move || {
                let mapped = (0..ITEMS as u64).par_map(|x| {
                    if x == 10 {
                        token.cancel();
                    }
                    spin(50) ^ x
                });
                unreachable!("the map was stopped, yet returned {} results", mapped.len());
            });
        })
        .unwrap();
    pool.spawn(|| panic!("a real panic"));
    // Had the stop reached the handler, its report would come first.
    assert_eq!(handled.recv().unwrap().as_deref(), Some("a real panic"));
    assert!(token.is_cancelled());
}

/// Drops its counter once.
struct Capture(Arc<AtomicUsize>);

impl Drop for Capture {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A task carries its watch: stopped before it starts, it is dropped unrun; its stopped
/// map is an error, not a panic.
fn submit_reports_stops() {
    let pool = ThreadPool::new(1).unwrap();
    for deadline in [false, true] {
        let token = CancelToken::new();
        let watch = if deadline {
            Watch::new().timeout(Duration::from_millis(10))
        } else {
            Watch::new().cancel_token(&token)
        };
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let blocker = pool.submit(move || gate.recv().unwrap());
        let (ran, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let capture = Capture(Arc::clone(&dropped));
        let ran_in_task = Arc::clone(&ran);
        let task = watch
            .run(|| {
                pool.submit(move || {
                    let _capture = capture;
                    ran_in_task.fetch_add(1, Ordering::SeqCst);
                })
            })
            .unwrap();
        token.cancel();
        std::thread::sleep(Duration::from_millis(20));
        release.send(()).unwrap();
        blocker.get().unwrap();
        let error = task.get().unwrap_err();
        assert_eq!(error.is_deadline(), deadline, "{error}");
        assert_eq!(error.is_cancelled(), !deadline, "{error}");
        assert!(!error.is_panic());
        assert_eq!(ran.load(Ordering::SeqCst), 0, "a stopped task ran");
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "its closure dropped once"
        );
    }

    // Stopped while it runs: the map in it stops, and the task reports the stop.
    let token = CancelToken::new();
    let task = Watch::new()
        .cancel_token(&token)
        .run(|| {
            let token = token.clone();
            pool.submit(move || {
                (0..ITEMS as u64)
                    .par_map(|x| {
                        if x == 10 {
                            token.cancel();
                        }
                        spin(50) ^ x
                    })
                    .len()
            })
        })
        .unwrap();
    let error = task.get().unwrap_err();
    assert!(error.is_cancelled() && !error.is_panic(), "{error}");
    assert!(error.to_string().contains("stopped"), "{error}");
    assert_eq!(pool.submit(|| 3).get().unwrap(), 3);
}

/// A task that a waiter beyond the nesting limit (16 waits deep) claims and runs inline is
/// checked against its watch first, as a worker checks it: once the watch is cancelled, the
/// next task down the recursion is dropped unrun and its `get` reports the stop.
fn task_run_inline_checks_its_watch() {
    /// Level `level` of a recursion of tasks, each waiting for the next; cancels the watch at
    /// `CANCEL_AT`. Returns the deepest level reached, or where the recursion was stopped.
    fn descend(level: u32, ran: Arc<AtomicUsize>, token: CancelToken) -> Result<u32, String> {
        const CANCEL_AT: u32 = 20;
        ran.fetch_add(1, Ordering::SeqCst);
        if level == CANCEL_AT {
            token.cancel();
        }
        if level == 30 {
            return Ok(level);
        }
        let (ran, next_token) = (Arc::clone(&ran), token.clone());
        match parpool::submit(move || descend(level + 1, ran, next_token)).get() {
            Ok(inner) => inner,
            Err(error) if error.is_cancelled() && !error.is_panic() => {
                Err(format!("stopped below {level}"))
            }
            Err(error) => Err(error.to_string()),
        }
    }

    let pool = ThreadPool::new(1).unwrap();
    let (ran, token) = (Arc::new(AtomicUsize::new(0)), CancelToken::new());
    let reached = Watch::new()
        .cancel_token(&token)
        .run(|| pool.install(|| descend(0, Arc::clone(&ran), token.clone())))
        .unwrap();
    assert_eq!(reached, Err("stopped below 20".to_owned()));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        21,
        "levels 0 to 20 ran, none below"
    );
    assert_eq!(pool.submit(|| 3).get().unwrap(), 3);
}

/// `until_stopped` yields the stop once, then ends; plain `next()` inside the run unwinds
/// to it.
fn imap_until_stopped() {
    let pool = ThreadPool::new(2).unwrap();
    for ordered in [true, false] {
        let token = CancelToken::new();
        let counts = Arc::new(Counts::default());
        let input = items(&counts, ITEMS);
        let never = CancelToken::new();
        let f = move |item| map_item(item, &never, usize::MAX);
        let results: Vec<Result<Out, Stopped>> = Watch::new()
            .cancel_token(&token)
            .run(|| {
                let mut yielded = 0;
                let inner: Box<dyn Iterator<Item = Result<Out, Stopped>>> = if ordered {
                    Box::new(pool.imap(input, f).until_stopped())
                } else {
                    Box::new(pool.imap_unordered(input, f).until_stopped())
                };
                inner
                    .inspect(|_| {
                        yielded += 1;
                        if yielded == 5000 {
                            token.cancel();
                        }
                    })
                    .collect()
            })
            .unwrap();
        let stops = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(stops, 1);
        assert!(
            results.last().unwrap().as_ref().is_err(),
            "the stop ends it"
        );
        assert!(results.len() < ITEMS);
        if ordered {
            for (i, result) in results.iter().enumerate().filter(|(_, r)| r.is_ok()) {
                assert_eq!(result.as_ref().ok().unwrap().value, spin(200) ^ i as u64);
            }
        }
        drop(results);
        counts.settle(ITEMS);
        counts.assert_exactly_once(ITEMS);
    }
    // Consumed outside its run, after the deadline: the stop once, then the end.
    let mut late = Watch::new()
        .timeout(Duration::from_millis(10))
        .run(|| pool.imap(0..ITEMS as u64, |x| x).until_stopped())
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(late.next().unwrap().unwrap_err().is_deadline());
    assert!(late.next().is_none());
    assert!(late.next().is_none());
}

/// Plain `next()` on a stopped imap outside any run panics with a message saying what to
/// do instead.
fn imap_outside_run_panics_clearly() {
    let pool = ThreadPool::new(2).unwrap();
    let mut escaped = Watch::new()
        .timeout(Duration::from_millis(10))
        .run(|| pool.imap(0..ITEMS as u64, |x| x))
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let payload = panic::catch_unwind(AssertUnwindSafe(|| escaped.next())).unwrap_err();
    let message = payload
        .downcast_ref::<String>()
        .expect("a formatted message");
    assert!(message.contains("until_stopped"), "{message}");
    assert!(message.contains("deadline"), "{message}");
    // An imap made outside any run is never stopped.
    assert_eq!(pool.imap(0..10u8, |x| x).count(), 10);
}

/// A user panic inside a run unwinds past it unchanged, and the pool keeps serving.
fn panic_inside_run_is_not_swallowed() {
    let pool = ThreadPool::new(2).unwrap();
    let token = CancelToken::new();
    let payload = panic::catch_unwind(AssertUnwindSafe(|| {
        Watch::new().cancel_token(&token).run(|| {
            pool.install(|| {
                (0..ITEMS as u64).par_map(|x| {
                    if x == 500 {
                        panic!("boom at {x}");
                    }
                    x
                })
            })
        })
    }))
    .unwrap_err();
    assert_eq!(payload.downcast_ref::<String>().unwrap(), "boom at 500");
    // A panic after a cancel is still a panic, not a stop.
    let payload = panic::catch_unwind(AssertUnwindSafe(|| {
        Watch::new().cancel_token(&token).run(|| {
            token.cancel();
            panic!("after cancel");
        })
    }))
    .unwrap_err();
    assert_eq!(*payload.downcast_ref::<&str>().unwrap(), "after cancel");
    assert_eq!(pool.install(|| (0..100u32).par_map(|x| x).len()), 100);
}

/// Every map counts its items once, out of its length where known.
fn progress_counts_every_map() {
    let pool = ThreadPool::new(2).unwrap();
    let progress = Progress::new();
    let watch = Watch::new().progress(&progress);
    let n = 100_000u64;
    let expect = |done: u64, total: Option<u64>| {
        assert_eq!((progress.done(), progress.total()), (done, total));
    };
    watch.run(|| (0..n).par_map(|x| spin(20) ^ x)).unwrap();
    expect(n, Some(n));
    watch
        .run(|| {
            (0..n).par_for_each(|x| {
                black_box(spin(20) ^ x);
            })
        })
        .unwrap();
    expect(2 * n, Some(2 * n));
    watch.run(|| pool.map(0..n, |x| spin(20) ^ x)).unwrap();
    expect(3 * n, Some(3 * n));
    watch
        .run(|| pool.imap(0..n, |x| spin(20) ^ x).count())
        .unwrap();
    expect(4 * n, Some(4 * n));
    // Cheap items that stay on the caller count too.
    watch.run(|| pool.map(0..n, |x| x)).unwrap();
    expect(5 * n, Some(5 * n));
    // An input of unknown length makes the total unknown.
    let text = "1\n2\n3\n".repeat(1000);
    watch
        .run(|| pool.map(text.lines(), |s| s.parse::<u8>().unwrap()))
        .unwrap();
    assert_eq!(progress.done(), 5 * n + 3000);
    assert_eq!(progress.total(), None);
}

/// Hundreds of rounds of cancels at random moments, from another thread, on each kind of
/// map: every round either finishes whole or stops, and every item and result is dropped
/// exactly once either way.
fn stress_random_cancels() {
    let pool = ThreadPool::new(2).unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let n = 5000;
    // Cancel anywhere from before the start to well after the end of a round.
    let whole = {
        let counts = Arc::new(Counts::default());
        let input = items(&counts, n);
        let never = CancelToken::new();
        let start = Instant::now();
        drop(pool.map(input, |item| map_item(item, &never, usize::MAX)));
        start.elapsed().as_micros().max(1) as u64
    };
    let (mut stopped_rounds, mut whole_rounds) = (0, 0);
    for round in 0..300 {
        let counts = Arc::new(Counts::default());
        let input = items(&counts, n);
        let token = CancelToken::new();
        let delay = Duration::from_micros(next() % (2 * whole));
        let canceller = {
            let token = token.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                token.cancel();
            })
        };
        let never = CancelToken::new();
        let f = |item| map_item(item, &never, usize::MAX);
        let outcome = Watch::new().cancel_token(&token).run(|| match round % 4 {
            0 => pool.install(|| input.into_par_map(f)),
            1 => pool.map(input, f),
            2 => {
                let never = never.clone();
                pool.imap(input, move |item| map_item(item, &never, usize::MAX))
                    .collect()
            }
            _ => parpool::map_chunked(input, 16, f),
        });
        match outcome {
            Ok(results) => {
                assert_eq!(results.len(), n);
                whole_rounds += 1;
            }
            Err(stopped) => {
                assert!(stopped.is_cancelled());
                stopped_rounds += 1;
            }
        }
        canceller.join().unwrap();
        if round % 4 == 2 {
            counts.settle(n);
        }
        counts.assert_exactly_once(n);
    }
    assert!(stopped_rounds > 0, "no round was stopped");
    eprintln!("{stopped_rounds} rounds stopped, {whole_rounds} whole");
    assert_eq!(pool.map(0..10u8, |x| x).len(), 10);
}

// The adversarial review's scenarios: a panic and a stop in the same call, deadlines over
// coarse items, panics in `Drop` during a stop, the panic handler, stops from another thread.

/// The panic payload of `f`, which must panic (a stop is not a panic: `run` returns it).
fn panic_of(name: &str, f: impl FnOnce() -> Result<(), parpool::Stopped>) -> String {
    let payload = match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => panic!("{name}: neither stopped nor panicked"),
        Ok(Err(stopped)) => panic!("{name}: the panic was turned into {stopped:?}"),
        Err(payload) => payload,
    };
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// A closure that cancels the watch's token and then panics, on the same item: the panic
/// is the user's bug and must reach the caller, as it does for `par_map`, not be replaced
/// by the stop the same closure asked for.
fn try_ops_panic_beats_stop() {
    let data: Vec<u64> = (0..100_000).collect();
    type Op = fn(&[u64], &(dyn Fn(u64) + Sync));
    let ops: &[(&str, Op)] = &[
        ("par_map", |d, f| {
            black_box(d.par_map(|x| f(*x)));
        }),
        ("try_par_map", |d, f| {
            let _ = black_box(d.try_par_map(|x| {
                f(*x);
                Ok::<_, ()>(*x)
            }));
        }),
        ("try_par_for_each", |d, f| {
            let _ = d.try_par_for_each(|x| {
                f(*x);
                Ok::<_, ()>(())
            });
        }),
        ("map", |d, f| {
            black_box(parpool::map(d, |x| f(*x)));
        }),
        ("try_map", |d, f| {
            let _ = black_box(parpool::try_map(d, |x| {
                f(*x);
                Ok::<_, ()>(*x)
            }));
        }),
    ];
    // At item 0 (the caller's sampling) and deep in the input (a piece on the pool).
    for at in [0, 50_000, 50_000, 50_000, 50_000, 50_000] {
        for (name, op) in ops {
            let token = CancelToken::new();
            let f = |x: u64| {
                if x == at {
                    token.cancel();
                    panic!("boom at {at}");
                }
                black_box(spin(50));
            };
            let message = panic_of(name, || {
                Watch::new().cancel_token(&token).run(|| op(&data, &f))
            });
            assert_eq!(message, format!("boom at {at}"), "{name}");
        }
    }
}

/// A deadline over coarse items (1 ms each) stops each thread within about one item of
/// its passing, not after a fixed count of batches.
fn deadline_stops_coarse_items_within_a_batch() {
    const ITEM: Duration = Duration::from_millis(1);
    let pool = ThreadPool::new(2).unwrap();
    for round in 0..3 {
        let started_late = AtomicUsize::new(0);
        let deadline = Instant::now() + Duration::from_millis(30);
        let coarse = |x: &u64| {
            if Instant::now() >= deadline {
                started_late.fetch_add(1, Ordering::SeqCst);
            }
            let until = Instant::now() + ITEM;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            *x
        };
        let data: Vec<u64> = (0..5_000).collect();
        let stopped = Watch::new()
            .deadline(deadline)
            .run(|| pool.install(|| drop(data.par_map(coarse))))
            .unwrap_err();
        assert!(stopped.is_deadline());
        let late = started_late.load(Ordering::SeqCst);
        // Each of the 3 threads that may hold a piece (2 workers, and the caller's check
        // point) starts at most one item after the deadline, plus slack for a preemption.
        assert!(
            late <= 6,
            "round {round}: {late} items started after the deadline"
        );
    }
}

/// One half of a `join` (or the body of a `scope`) is stopped while the other half (a
/// spawned job) panics: the panic reaches the caller, whichever ends first. On a
/// one-thread pool nothing is stolen, so the stop always comes first.
fn join_and_scope_panic_beats_stop() {
    let pool = ThreadPool::new(1).unwrap();
    let stop_here = |token: &CancelToken| {
        token.cancel();
        black_box((0..1000u64).par_map(|x| x + 1));
    };
    let token = CancelToken::new();
    let message = panic_of("join", || {
        Watch::new().cancel_token(&token).run(|| {
            pool.install(|| {
                parpool::join(|| stop_here(&token), || panic!("the other half"));
            })
        })
    });
    assert_eq!(message, "the other half", "join");
    let token = CancelToken::new();
    let message = panic_of("scope", || {
        Watch::new().cancel_token(&token).run(|| {
            pool.install(|| {
                parpool::scope(|s| {
                    s.spawn(|_| panic!("a spawned job"));
                    stop_here(&token);
                });
            })
        })
    });
    assert_eq!(message, "a spawned job", "scope");
    // The pool goes on serving.
    assert_eq!(pool.map(0..100u32, |x| x * 2)[99], 198);
}

/// BombCounts of one call's items.
#[derive(Default, Debug)]
struct BombCounts {
    created: AtomicUsize,
    mapped: AtomicUsize,
    dropped: AtomicUsize,
}

/// An item whose `Drop` panics if it is item `bad` (dropped unmapped, during a stop).
struct Bomb {
    counts: Arc<BombCounts>,
    index: usize,
    bad: usize,
}

impl Drop for Bomb {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
        if self.index == self.bad {
            panic!("drop of item {}", self.index);
        }
    }
}

fn bombs(counts: &Arc<BombCounts>, n: usize, bad: usize) -> Vec<Bomb> {
    counts.created.fetch_add(n, Ordering::SeqCst);
    (0..n)
        .map(|index| Bomb {
            counts: Arc::clone(counts),
            index,
            bad,
        })
        .collect()
}

/// An item's `Drop` panics while a stopped call drops its unprocessed items: the panic
/// reaches the caller (it is a panic, not a stop), the process does not abort (a panic
/// while unwinding would), and every item is dropped exactly once.
fn drop_panics_during_a_stop() {
    const N: usize = 50_000;
    let pool = ThreadPool::new(2).unwrap();
    type Op<'a> = &'a dyn Fn(Vec<Bomb>, &(dyn Fn(Bomb) -> usize + Sync));
    let ops: [(&str, Op<'_>); 4] = [
        ("into_par_map", &|v, f| {
            drop(pool.install(|| v.into_par_map(f)))
        }),
        ("pool.map", &|v, f| drop(pool.map(v, f))),
        ("pool.map_chunked", &|v, f| drop(pool.map_chunked(v, 16, f))),
        ("pool.try_map", &|v, f| {
            drop(pool.try_map(v, |b| Ok::<_, ()>(f(b))));
        }),
    ];
    // Cancelled before the call (the input is dropped whole), at its first item, and deep in.
    for cancel_at in [None, Some(0), Some(1000)] {
        for (name, op) in &ops {
            let counts = Arc::new(BombCounts::default());
            let token = CancelToken::new();
            let f = |bomb: Bomb| {
                let index = bomb.index;
                if Some(counts.mapped.fetch_add(1, Ordering::SeqCst)) == cancel_at {
                    token.cancel();
                }
                index
            };
            let input = bombs(&counts, N, N - 1);
            let message = panic_of(name, || {
                Watch::new().cancel_token(&token).run(|| {
                    if cancel_at.is_none() {
                        token.cancel();
                    }
                    op(input, &f)
                })
            });
            assert_eq!(
                message,
                format!("drop of item {}", N - 1),
                "{name} {cancel_at:?}"
            );
            assert_eq!(
                counts.dropped.load(Ordering::SeqCst),
                N,
                "{name} {cancel_at:?}: {counts:?}"
            );
        }
    }
}

/// [`drop_panics_during_a_stop`] for `imap` and `imap_unordered`, whose closure is
/// `'static`; their running chunks finish in the background, so the drops are awaited.
fn imap_drop_panics_during_a_stop() {
    const N: usize = 50_000;
    let pool = ThreadPool::new(2).unwrap();
    for ordered in [true, false] {
        for cancel_at in [0, 1000] {
            let counts = Arc::new(BombCounts::default());
            let token = CancelToken::new();
            let f = {
                let (counts, token) = (Arc::clone(&counts), token.clone());
                move |bomb: Bomb| {
                    if counts.mapped.fetch_add(1, Ordering::SeqCst) == cancel_at {
                        token.cancel();
                    }
                    bomb.index
                }
            };
            let input = bombs(&counts, N, N - 1);
            let name = format!("imap ordered={ordered} cancel_at={cancel_at}");
            let message = panic_of(&name, || {
                Watch::new().cancel_token(&token).run(|| {
                    let out: Vec<usize> = if ordered {
                        pool.imap(input, f).collect()
                    } else {
                        pool.imap_unordered(input, f).collect()
                    };
                    drop(out);
                })
            });
            assert_eq!(message, format!("drop of item {}", N - 1), "{name}");
            while counts.dropped.load(Ordering::SeqCst) < N {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(20));
            assert_eq!(
                counts.dropped.load(Ordering::SeqCst),
                N,
                "{name}: {counts:?}"
            );
        }
    }
}

/// A small xorshift generator (deterministic rounds).
fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Hundreds of rounds on a one-thread pool and on one with more threads than cores: each
/// cancelled at a random item from inside, or at a random time from another thread, over
/// the kit, the iterator maps, `imap` and a map nested in a map. Every item is dropped
/// exactly once, nothing is mapped after a stop is seen by its closure's thread beyond a
/// few batches, and the pool serves normally after every round.
fn stress_random_cancels_one_and_many_threads() {
    const N: usize = 3000;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for threads in [1, 8] {
        let pool = ThreadPool::new(threads).unwrap();
        let mut stopped_rounds = 0;
        for round in 0..240 {
            let counts = Arc::new(BombCounts::default());
            let token = CancelToken::new();
            let cancel_at = (xorshift(&mut seed) % (2 * N as u64)) as usize;
            let from_outside = round % 2 == 1;
            let canceller = from_outside.then(|| {
                let token = token.clone();
                let delay = Duration::from_micros(xorshift(&mut seed) % 3000);
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    token.cancel();
                })
            });
            let f = |bomb: Bomb| {
                let n = counts.mapped.fetch_add(1, Ordering::SeqCst);
                if !from_outside && n == cancel_at {
                    token.cancel();
                }
                black_box(spin(100));
                bomb.index
            };
            // No `Drop` panics here: `bad` is out of range.
            let input = bombs(&counts, N, usize::MAX);
            let outcome = Watch::new().cancel_token(&token).run(|| match round % 6 {
                0 => pool.install(|| input.into_par_map(f)).len(),
                1 => pool.map(input, f).len(),
                2 => pool.try_map(input, |b| Ok::<_, ()>(f(b))).unwrap().len(),
                3 => pool.install(|| {
                    let input: Vec<_> = input.into_iter().map(Some).collect();
                    let _ = input.par_map(|_| 0);
                    // A map nested in each item's closure.
                    (0..30u64)
                        .par_map(|_| (0..100u64).par_map(|x| black_box(spin(20) ^ x)).len())
                        .len()
                }),
                4 => pool.map_chunked(input, 7, f).len(),
                _ => pool.install(|| input.par_chunks(5).map(|c| c.len()).len()),
            });
            if let Some(canceller) = canceller {
                canceller.join().unwrap();
            }
            match outcome {
                Ok(_) => {}
                Err(stopped) => {
                    assert!(stopped.is_cancelled());
                    stopped_rounds += 1;
                }
            }
            assert_eq!(
                counts.dropped.load(Ordering::SeqCst),
                N,
                "threads {threads} round {round}: {counts:?}"
            );
            assert_eq!(pool.map(0..64u32, |x| x + 1)[63], 64);
            assert_eq!(pool.install(|| (0..64u32).par_map(|x| x * 2))[63], 126);
        }
        assert!(
            stopped_rounds > 0,
            "threads {threads}: no round was stopped"
        );
    }
}

/// Stops inside `spawn`ed closures and tasks never reach the pool's panic handler; a real
/// panic in a spawned closure still does.
fn panic_handler_sees_no_stops() {
    let seen = Arc::new(AtomicUsize::new(0));
    let pool = {
        let seen = Arc::clone(&seen);
        parpool::ThreadPoolBuilder::new()
            .num_threads(2)
            .panic_handler(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
            })
            .build()
            .unwrap()
    };
    let token = CancelToken::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    Watch::new()
        .cancel_token(&token)
        .run(|| {
            for _ in 0..8 {
                let (token, done) = (token.clone(), done_tx.clone());
                pool.spawn(move || {
                    let _signal = Signal(done);
                    token.cancel();
                    black_box((0..10_000u64).par_map(|x| spin(10) ^ x));
                });
            }
            let task = pool.submit({
                let token = token.clone();
                move || {
                    token.cancel();
                    (0..10_000u64).par_map(|x| x).len()
                }
            });
            assert!(task.get().unwrap_err().is_cancelled());
        })
        .unwrap();
    for _ in 0..8 {
        done_rx.recv().unwrap();
    }
    pool.spawn(|| panic!("a real panic"));
    while seen.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(pool);
    assert_eq!(seen.load(Ordering::SeqCst), 1, "the handler saw a stop");
}

/// Sends on drop: tells the test a spawned closure has ended, however it ended.
struct Signal(std::sync::mpsc::Sender<()>);

impl Drop for Signal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A cancel from another thread, counted at the instant it happens: the items started
/// after it are at most a batch or a running chunk per thread, for every kind of map.
fn cancel_from_another_thread_stops_within_a_batch() {
    const N: usize = 400_000;
    let pool = ThreadPool::new(2).unwrap();
    type Op<'a> = &'a dyn Fn(&(dyn Fn(u64) -> u64 + Sync));
    let data: Vec<u64> = (0..N as u64).collect();
    let ops: [(&str, usize, Op<'_>); 5] = [
        // (name, the most items allowed to start after the cancel, the call)
        ("par_map", 64, &|f| {
            drop(pool.install(|| data.par_map(|x| f(*x))))
        }),
        ("try_par_map", 64, &|f| {
            drop(pool.install(|| data.try_par_map(|x| Ok::<_, ()>(f(*x)))))
        }),
        ("par_for_each", 64, &|f| {
            pool.install(|| {
                data.par_for_each(|x| {
                    black_box(f(*x));
                })
            })
        }),
        // A chunk is ~50 µs (~50 items here); 2 threads and the caller may each be in one.
        ("pool.map", 400, &|f| drop(pool.map(&data, |x| f(*x)))),
        ("pool.map_chunked", 400, &|f| {
            drop(pool.map_chunked(&data, 16, |x| f(*x)))
        }),
    ];
    for (name, bound, op) in ops {
        let mut worst = 0;
        for _ in 0..5 {
            let started = AtomicUsize::new(0);
            let at_cancel = AtomicUsize::new(usize::MAX);
            let token = CancelToken::new();
            let f = |x: u64| {
                started.fetch_add(1, Ordering::SeqCst);
                spin(200) ^ x
            };
            let stopped = std::thread::scope(|s| {
                s.spawn(|| {
                    while started.load(Ordering::SeqCst) < 20_000 {
                        std::hint::spin_loop();
                    }
                    token.cancel();
                    at_cancel.store(started.load(Ordering::SeqCst), Ordering::SeqCst);
                });
                Watch::new().cancel_token(&token).run(|| op(&f))
            });
            assert!(stopped.unwrap_err().is_cancelled(), "{name}");
            let after = started.load(Ordering::SeqCst) - at_cancel.load(Ordering::SeqCst);
            worst = worst.max(after);
        }
        eprintln!("{name}: at most {worst} items started after the cancel");
        assert!(
            worst <= bound,
            "{name}: {worst} items started after the cancel"
        );
    }
}

/// A `join` result whose `Drop` panics.
struct PanicsInDrop(&'static str);

impl Drop for PanicsInDrop {
    fn drop(&mut self) {
        panic!("{}", self.0);
    }
}

/// One half of a `join` is stopped while the other returned a value whose `Drop` panics
/// (the loser, dropped by the `join`): that panic reaches the caller (a panic is never
/// hidden behind a stop), and the process does not abort (dropping `a`'s result while
/// `b`'s stop unwinds would). Whether the `join` made a frame (0 levels deep) or ran as
/// two plain calls (16 levels deep, on one thread).
fn join_loser_drop_panics_during_a_stop() {
    let pool = ThreadPool::new(1).unwrap();
    let stop_here = |token: &CancelToken| {
        token.cancel();
        black_box((0..1000u64).par_map(|x| x + 1));
    };
    for levels in [0, 16] {
        let token = CancelToken::new();
        let message = panic_of("b stopped", || {
            Watch::new().cancel_token(&token).run(|| {
                pool.install(|| {
                    nested::nested(levels, || {
                        drop(parpool::join(
                            || PanicsInDrop("drop of a's result"),
                            || stop_here(&token),
                        ));
                    });
                })
            })
        });
        assert_eq!(message, "drop of a's result", "{levels} levels, b stopped");
        let token = CancelToken::new();
        let message = panic_of("a stopped", || {
            Watch::new().cancel_token(&token).run(|| {
                pool.install(|| {
                    nested::nested(levels, || {
                        drop(parpool::join(
                            || stop_here(&token),
                            || PanicsInDrop("drop of b's result"),
                        ));
                    });
                })
            })
        });
        assert_eq!(message, "drop of b's result", "{levels} levels, a stopped");
    }
    assert_eq!(pool.map(0..100u32, |x| x * 2)[99], 198);
}

/// A `join` run as two plain calls (16 levels deep) whose `a` enters a nested run (which
/// publishes the worker's private frames under the outer watch): `a`'s maps count in both
/// watches, `b`'s only in the outer one, and a stop of the nested run's token ends that run
/// alone, while one of the outer token inside the nested run stops `b` too. Whether the
/// `join` ran inline or made a frame, on one thread and on two.
fn inline_joins_keep_their_watches() {
    const A: u64 = 300;
    const B: u64 = 500;
    for threads in [1, 2] {
        let pool = ThreadPool::new(threads).unwrap();
        for levels in [0, 16] {
            for round in 0..20 {
                let context = format!("{threads} threads, {levels} levels, round {round}");
                let (outer, inner) = (Progress::new(), Progress::new());
                let (outer_token, inner_token) = (CancelToken::new(), CancelToken::new());
                // 0: nothing stopped; 1: the nested run's token; 2: the outer token.
                let cancel = round % 3;
                let mut nested_run = None;
                let outcome = Watch::new()
                    .progress(&outer)
                    .cancel_token(&outer_token)
                    .run(|| {
                        pool.install(|| {
                            nested::nested(levels, || {
                                parpool::join(
                                    || {
                                        let ran = Watch::new()
                                            .progress(&inner)
                                            .cancel_token(&inner_token)
                                            .run(|| {
                                                let (x, y) = parpool::join(
                                                    || (0..A).par_map(|x| x).len(),
                                                    || (0..A).par_map(|x| x).len(),
                                                );
                                                match cancel {
                                                    1 => inner_token.cancel(),
                                                    2 => outer_token.cancel(),
                                                    _ => {}
                                                }
                                                black_box((0..A).par_map(|x| x));
                                                x + y
                                            });
                                        nested_run = Some(ran);
                                    },
                                    || (0..B).par_map(|x| x).len(),
                                )
                            })
                        })
                    });
                let nested_run = nested_run.expect("a ran");
                match cancel {
                    0 => {
                        assert_eq!(nested_run, Ok(2 * A as usize), "{context}");
                        assert_eq!(outcome.map(|(_, b)| b), Ok(B as usize), "{context}");
                        assert_eq!(inner.done(), 3 * A, "{context}");
                        assert_eq!(outer.done(), 3 * A + B, "{context}");
                    }
                    1 => {
                        assert!(nested_run.unwrap_err().is_cancelled(), "{context}");
                        assert_eq!(outcome.map(|(_, b)| b), Ok(B as usize), "{context}");
                        assert_eq!(inner.done(), 2 * A, "{context}");
                        assert_eq!(outer.done(), 2 * A + B, "{context}");
                    }
                    _ => {
                        assert!(nested_run.unwrap_err().is_cancelled(), "{context}");
                        assert_eq!(inner.done(), 2 * A, "{context}");
                        // `b` runs after `a` on one thread, so it is stopped before it
                        // counts anything; on two it may have run (even to its end)
                        // before the cancel.
                        let done = outer.done();
                        match outcome {
                            Err(stopped) => {
                                assert!(stopped.is_cancelled(), "{context}");
                                assert!((2 * A..=2 * A + B).contains(&done), "{context}: {done}");
                            }
                            Ok((_, b)) => {
                                assert!(threads > 1, "{context}: b was not stopped");
                                assert_eq!((b, done), (B as usize, 2 * A + B), "{context}");
                            }
                        }
                        if threads == 1 {
                            assert_eq!(done, 2 * A, "{context}");
                        }
                    }
                }
            }
        }
    }
}

/// A `scope`'s spawned job is stopped after the body returned a value whose `Drop`
/// panics: that panic reaches the caller (a panic is never hidden behind a stop), and the
/// process does not abort (dropping the value while the stop unwinds would).
fn scope_value_drop_panics_during_a_stop() {
    for threads in [1, 2] {
        let pool = ThreadPool::new(threads).unwrap();
        let token = CancelToken::new();
        let message = panic_of("scope", || {
            Watch::new().cancel_token(&token).run(|| {
                drop(pool.scope(|s| {
                    s.spawn(|_| {
                        token.cancel();
                        black_box((0..1000u64).par_map(|x| x + 1));
                    });
                    PanicsInDrop("drop of the body's value")
                }));
            })
        });
        assert_eq!(message, "drop of the body's value", "{threads} threads");
    }
}

/// A call site that remembers cheap calls (a loop of them, unwatched) is then called under a
/// watch with items of 1 ms, and stopped during its first item, by the token or by a
/// deadline: the call stops within a batch, as a call without a memory does, instead of
/// mapping its 64 items in one blind batch (64 ms) before its first check. The stop is
/// attributed to what caused it, and the progress holds every item mapped.
fn recalled_call_stops_within_a_batch() {
    const ITEM: Duration = Duration::from_millis(1);
    let pool = ThreadPool::new(2).unwrap();
    let data: Vec<u64> = (0..64).collect();
    for by_deadline in [false, true] {
        for round in 0..3 {
            let token = CancelToken::new();
            let dear = AtomicBool::new(false);
            let mapped = AtomicUsize::new(0);
            let call = || {
                drop(data.par_map(|&x| {
                    if dear.load(Ordering::Relaxed) {
                        mapped.fetch_add(1, Ordering::SeqCst);
                        if x == 0 {
                            token.cancel();
                        }
                        std::thread::sleep(ITEM);
                    }
                    x
                }))
            };
            let progress = Progress::new();
            let stopped = pool.install(|| {
                for _ in 0..200 {
                    call();
                }
                dear.store(true, Ordering::Relaxed);
                let watch = Watch::new().progress(&progress);
                let watch = if by_deadline {
                    // Passed during the first item, which sleeps 1 ms.
                    watch.deadline(Instant::now() + ITEM / 2)
                } else {
                    watch.cancel_token(&token)
                };
                watch.run(call).unwrap_err()
            });
            assert_eq!(
                (stopped.is_cancelled(), stopped.is_deadline()),
                (!by_deadline, by_deadline),
                "round {round}"
            );
            let mapped = mapped.load(Ordering::SeqCst);
            // The first item, a sample, and one item on each thread that took a piece
            // meanwhile (before the fix: all 64, on the caller).
            assert!(
                mapped <= 4,
                "deadline {by_deadline}, round {round}: {mapped} items mapped after the stop"
            );
            assert_eq!(progress.done(), mapped as u64, "round {round}");
        }
    }
}
