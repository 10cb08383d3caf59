//! Adversarial checks of the thread-side watch's promises (review of issue 14): a panic and
//! a stop in the same call, deadlines over coarse items, panics in `Drop` during a stop.
//!
//! Each scenario runs in a child process under a time bound (see `tests/common/child.rs`):
//! a lost stop fails its own test instead of stalling the suite.

#[path = "common/child.rs"]
mod child;

use std::hint::black_box;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parpool::prelude::*;
use parpool::{CancelToken, Watch};

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
    try_ops_panic_beats_stop,
    deadline_stops_coarse_items_within_a_batch,
    join_and_scope_panic_beats_stop,
    drop_panics_during_a_stop,
    imap_drop_panics_during_a_stop,
    stress_random_cancels_one_and_many_threads,
    panic_handler_sees_no_stops,
    cancel_from_another_thread_stops_within_a_batch,
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
    let outcome = child::run_child(
        scenario,
        &[("RUST_BACKTRACE", "0")],
        &[],
        Duration::from_secs(120),
    );
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

/// Counts of one call's items.
#[derive(Default, Debug)]
struct Counts {
    created: AtomicUsize,
    mapped: AtomicUsize,
    dropped: AtomicUsize,
}

/// An item whose `Drop` panics if it is item `bad` (dropped unmapped, during a stop).
struct Bomb {
    counts: Arc<Counts>,
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

fn bombs(counts: &Arc<Counts>, n: usize, bad: usize) -> Vec<Bomb> {
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
            let counts = Arc::new(Counts::default());
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
            let counts = Arc::new(Counts::default());
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
            let counts = Arc::new(Counts::default());
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
