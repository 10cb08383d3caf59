//! The map family against sequential code: `par_map`, `par_map_into`, `into_par_map`,
//! ranges, `map`, `map_chunked`, `try_map`, `imap`, `imap_unordered`; plus panics, early
//! drops, infinite input, destructors and bad settings.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[path = "common/inputs.rs"]
mod inputs;
use inputs::{Tracked, pool, work};
mod common;
use common::panic_message;
use parpool::prelude::*;
use proptest::prelude::*;

/// Lengths the issue asks for besides random ones: empty, one, primes.
const EDGE_LENGTHS: [usize; 6] = [0, 1, 2, 7, 997, 7919];

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn par_map_matches_sequential(
        data in prop::collection::vec(any::<u64>(), 0..3000),
        threads in 1usize..=16,
    ) {
        let pool = pool(threads);
        let expected: Vec<u64> = data.iter().map(|&x| work(x)).collect();
        prop_assert_eq!(pool.install(|| data.par_map(|&x| work(x))), expected.clone());
        let mut out = vec![7u64; data.len() % 13];
        pool.install(|| data.par_map_into(|&x| work(x), &mut out));
        prop_assert_eq!(out, expected);
    }

    #[test]
    fn into_par_map_matches_sequential(
        data in prop::collection::vec(".{0,8}", 0..500),
        threads in 1usize..=16,
    ) {
        let expected: Vec<usize> = data.iter().map(|s| s.len() * 3).collect();
        let got = pool(threads).install(|| data.clone().into_par_map(|s| s.len() * 3));
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn ranges_match_sequential(start in -2000i64..2000, len in 0i64..3000, threads in 1usize..=16) {
        let pool = pool(threads);
        let end = start + len;
        let expected: Vec<i64> = (start..end).map(|x| x * 3).collect();
        prop_assert_eq!(pool.install(|| (start..end).par_map(|x| x * 3)), expected);
        let expected: Vec<i64> = (start..=end).map(|x| x - 1).collect();
        prop_assert_eq!(pool.install(|| (start..=end).par_map(|x| x - 1)), expected);
    }

    #[test]
    fn map_matches_sequential(
        data in prop::collection::vec(any::<u64>(), 0..3000),
        threads in 1usize..=16,
    ) {
        // A filter has no exact size hint.
        let expected: Vec<u64> = data.iter().filter(|&&x| x % 5 != 0).map(|&x| work(x)).collect();
        let got = pool(threads).map(data.iter().filter(|&&x| x % 5 != 0), |&x| work(x));
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn map_chunked_matches_sequential(
        data in prop::collection::vec(any::<u64>(), 0..1000),
        chunk_seed in any::<usize>(),
        threads in 1usize..=16,
    ) {
        let chunk = 1 + chunk_seed % (data.len() + 1);
        let expected: Vec<u64> = data.iter().map(|&x| work(x)).collect();
        prop_assert_eq!(pool(threads).map_chunked(data.iter(), chunk, |&x| work(x)), expected);
    }

    #[test]
    fn try_map_matches_sequential(
        data in prop::collection::vec(0u64..1000, 0..3000),
        threads in 1usize..=16,
    ) {
        // Items above 990 fail: some inputs have no failure, some several.
        let f = |x: &u64| if *x > 990 { Err(*x) } else { Ok(work(*x)) };
        let expected: Result<Vec<u64>, u64> = data.iter().map(f).collect();
        prop_assert_eq!(pool(threads).try_map(data.iter(), f), expected);
    }

    #[test]
    fn imap_matches_sequential(
        data in prop::collection::vec(any::<u64>(), 0..3000),
        threads in 1usize..=16,
        chunk in proptest::option::of(1usize..64),
        window in proptest::option::of(1usize..8),
    ) {
        let pool = pool(threads);
        let expected: Vec<u64> = data.iter().map(|&x| work(x)).collect();
        let mut lazy = pool.imap(data.clone(), work);
        if let Some(chunk) = chunk {
            lazy = lazy.chunk_size(chunk);
        }
        if let Some(window) = window {
            lazy = lazy.window(window);
        }
        prop_assert_eq!(lazy.collect::<Vec<_>>(), expected);
    }

    #[test]
    fn imap_unordered_yields_each_item_once(
        data in prop::collection::vec(any::<u64>(), 0..3000),
        threads in 1usize..=16,
        chunk in proptest::option::of(1usize..64),
    ) {
        let pool = pool(threads);
        let mut expected: Vec<(u64, u64)> = data.iter().map(|&x| (x, work(x))).collect();
        let mut lazy = pool.imap_unordered(data.clone(), |x| (x, work(x)));
        if let Some(chunk) = chunk {
            lazy = lazy.chunk_size(chunk);
        }
        let mut got: Vec<(u64, u64)> = lazy.collect();
        expected.sort_unstable();
        got.sort_unstable();
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn edge_lengths_for_every_variant() {
    let pool = pool(3);
    for len in EDGE_LENGTHS {
        let data: Vec<u64> = (0..len as u64).collect();
        let expected: Vec<u64> = data.iter().map(|&x| work(x)).collect();
        assert_eq!(
            pool.install(|| data.par_map(|&x| work(x))),
            expected,
            "par_map {len}"
        );
        assert_eq!(
            pool.install(|| data.clone().into_par_map(work)),
            expected,
            "into {len}"
        );
        assert_eq!(pool.map(data.iter(), |&x| work(x)), expected, "map {len}");
        assert_eq!(
            pool.map_chunked(data.iter(), 3, |&x| work(x)),
            expected,
            "chunked {len}"
        );
        assert_eq!(
            pool.try_map(data.iter(), |&x| Ok::<_, ()>(work(x))),
            Ok(expected.clone())
        );
        assert_eq!(
            pool.imap(data.clone(), work).collect::<Vec<_>>(),
            expected,
            "imap {len}"
        );
        let mut unordered: Vec<u64> = pool.imap_unordered(data.clone(), work).collect();
        unordered.sort_unstable();
        let mut sorted = expected.clone();
        sorted.sort_unstable();
        assert_eq!(unordered, sorted, "imap_unordered {len}");
    }
}

#[path = "common/scale.rs"]
mod scale;
use scale::scaled;

#[test]
fn about_a_million_items_for_every_variant() {
    let n = scaled(1 << 20, 1 << 14);
    let pool = pool(2);
    let data: Vec<u64> = (0..n).collect();
    let expected: Vec<u64> = data.iter().map(|&x| x * 2 + 1).collect();
    assert_eq!(pool.install(|| data.par_map(|x| x * 2 + 1)), expected);
    assert_eq!(pool.install(|| (0..n).par_map(|x| x * 2 + 1)), expected);
    assert_eq!(
        pool.install(|| data.clone().into_par_map(|x| x * 2 + 1)),
        expected
    );
    assert_eq!(
        pool.map(data.iter().filter(|_| true), |x| x * 2 + 1),
        expected
    );
    assert_eq!(pool.map_chunked(0..n, 1000, |x| x * 2 + 1), expected);
    assert_eq!(pool.imap(0..n, |x| x * 2 + 1).collect::<Vec<_>>(), expected);
    assert_eq!(
        pool.imap_unordered(0..n, |x| x * 2 + 1)
            .map(|x| x as u128)
            .sum::<u128>(),
        { expected.iter().map(|&x| x as u128).sum() }
    );
}

#[test]
fn slow_items_take_the_parallel_paths() {
    // Items expensive enough that every variant hands work to the pool; each result must
    // still be in place. Items record the thread they ran on.
    let pool = pool(4);
    let slow = |x: u64| {
        std::thread::sleep(std::time::Duration::from_micros(50));
        x + 1
    };
    let data: Vec<u64> = (0..400).collect();
    let expected: Vec<u64> = data.iter().map(|x| x + 1).collect();
    assert_eq!(pool.install(|| data.par_map(|&x| slow(x))), expected);
    assert_eq!(pool.map(data.iter(), |&x| slow(x)), expected);
    assert_eq!(pool.imap(data.clone(), slow).collect::<Vec<_>>(), expected);
    // Whether the work spreads depends on the workers waking within the map's 20 ms, which
    // a loaded machine can delay: the pool must spread it in one of a few rounds.
    let spread = (0..20).any(|_| {
        let threads = Mutex::new(std::collections::HashSet::new());
        pool.install(|| {
            data.par_map(|&x| {
                threads.lock().unwrap().insert(std::thread::current().id());
                slow(x)
            })
        });
        threads.into_inner().unwrap().len() > 1
    });
    assert!(spread, "the work never spread over threads in 20 rounds");
}

/// An input of `slow` items of 50 µs (far over a sample window: the map hands over at
/// once) followed by `cheap` trivial ones, which pulls on after its end as a non-fused
/// iterator may (`next()` gives `None` once, then items again).
fn slow_then_cheap(slow: u64, cheap: u64, nones: &AtomicUsize) -> impl Iterator<Item = u64> {
    let (end, mut next) = (slow + cheap, 0);
    std::iter::from_fn(move || {
        next += 1;
        if next - 1 == end {
            nones.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        Some(next - 1)
    })
}

fn slow_prefix(slow: u64) -> impl Fn(u64) -> u64 + Sync {
    move |x| {
        if x < slow {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        x * 2 + 1
    }
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "trivial items cost less than the hand-back threshold only when optimised: run with --release"
)]
fn map_hands_cheap_items_back_to_the_calling_thread() {
    // After the slow prefix is handed to the pool, the first chunk of trivial items
    // measures them cheap, and the calling thread maps the rest by itself again: it maps
    // each item as soon as it pulls it, never a chunk ahead. (Handed over, the feeder pulls
    // whole chunks before anyone maps them.) Every 1024th item looks, so that the looking
    // keeps the items trivial; the pull count is a plain store, only the caller pulls.
    let pool = pool(2);
    let (slow, cheap) = (40u64, scaled(1_000_000, 200_000));
    let caller = std::thread::current().id();
    let (pulled, looked, in_step) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let nones = AtomicUsize::new(0);
    let input = slow_then_cheap(slow, cheap, &nones).inspect(|_| {
        pulled.store(pulled.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    });
    let f = slow_prefix(slow);
    let out = pool.map(input, |x| {
        if x >= slow && x % 1024 == 0 {
            looked.fetch_add(1, Ordering::Relaxed);
            let as_pulled = pulled.load(Ordering::Relaxed) == x as usize + 1;
            if as_pulled && std::thread::current().id() == caller {
                in_step.fetch_add(1, Ordering::Relaxed);
            }
        }
        f(x)
    });
    let expected: Vec<u64> = (0..slow + cheap).map(&f).collect();
    assert_eq!(out, expected);
    assert_eq!(nones.load(Ordering::SeqCst), 1, "pulled past the end");
    let (looked, in_step) = (looked.into_inner(), in_step.into_inner());
    assert!(
        in_step > looked / 2,
        "only {in_step} of {looked} trivial items looked at were mapped as they were pulled"
    );
}

#[test]
fn handing_back_never_pulls_past_the_end_and_keeps_order() {
    // The input ends at every stage: before the hand-over, among the chunks in flight
    // when the feeder pauses, and while the calling thread maps alone again.
    let pool = pool(3);
    for cheap in [0, 1, 100, 5_000, 60_000, scaled(300_000, 30_000)] {
        let f = slow_prefix(20);
        let nones = AtomicUsize::new(0);
        let out = pool.map(slow_then_cheap(20, cheap, &nones), &f);
        let expected: Vec<u64> = (0..20 + cheap).map(&f).collect();
        assert_eq!(out, expected, "{cheap} trivial items");
        assert_eq!(
            nones.load(Ordering::SeqCst),
            1,
            "{cheap}: pulled past the end"
        );
        let nones = AtomicUsize::new(0);
        let fail_at = 20 + cheap * 3 / 4;
        let result = pool.try_map(slow_then_cheap(20, cheap, &nones), |x| {
            if x == fail_at { Err(x) } else { Ok(f(x)) }
        });
        let expected: Result<Vec<u64>, u64> = (0..20 + cheap)
            .map(|x| if x == fail_at { Err(x) } else { Ok(f(x)) })
            .collect();
        assert_eq!(result, expected, "try_map, {cheap} trivial items");
        assert!(
            nones.load(Ordering::SeqCst) <= 1,
            "{cheap}: pulled past the end"
        );
    }
}

#[test]
fn par_map_uses_the_installed_pool_and_nests() {
    let outer = pool(3);
    let sizes = outer.install(|| (0..50u32).par_map(|_| parpool::current_num_threads()));
    assert!(sizes.iter().all(|&n| n == 3));
    let nested: Vec<u64> = outer.install(|| {
        (0..100u64).par_map(|i| (0..i).collect::<Vec<_>>().par_map(|x| x * 2).iter().sum())
    });
    let expected: Vec<u64> = (0..100u64).map(|i| (0..i).map(|x| x * 2).sum()).collect();
    assert_eq!(nested, expected);
    // Iterator maps nested inside a parallel map, and the other way round.
    let mixed: Vec<usize> =
        outer.install(|| (0..20usize).par_map(|i| parpool::map(0..i, |x| x + 1).len()));
    assert_eq!(mixed, (0..20).collect::<Vec<_>>());
}

#[test]
fn imap_takes_infinite_input_lazily() {
    let pool = pool(2);
    let first: Vec<u64> = pool.imap(0u64.., |x| x * x).take(1000).collect();
    assert_eq!(first, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool.imap_unordered(0u64.., work).take(1000).collect();
    unordered.sort_unstable();
    unordered.dedup();
    assert_eq!(
        unordered.len(),
        1000,
        "each infinite-input item yielded once"
    );
}

#[test]
fn lazy_iterators_pull_only_a_window_ahead() {
    let pool = pool(2);
    for ordered in [true, false] {
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&pulled);
        let input = (0u64..).inspect(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let (chunk, window) = (16, 4);
        let taken = if ordered {
            pool.imap(input, work)
                .chunk_size(chunk)
                .window(window)
                .take(100)
                .count()
        } else {
            pool.imap_unordered(input, work)
                .chunk_size(chunk)
                .window(window)
                .take(100)
                .count()
        };
        assert_eq!(taken, 100);
        let pulled = pulled.load(Ordering::SeqCst);
        // At most the window (plus the chunk being filled) beyond what was consumed.
        assert!(
            pulled <= 100 + (window + 1) * chunk,
            "pulled {pulled} items for 100"
        );
    }
}

#[test]
fn dropping_lazy_iterators_early_never_waits_for_running_chunks() {
    let pool = pool(2);
    for ordered in [true, false] {
        // Items from 200 on block until released: when the iterator is dropped, chunks are
        // blocked on the pool. If `drop` waited for them, this test would hang.
        let hold = Arc::new(AtomicBool::new(true));
        let for_items = Arc::clone(&hold);
        let f = move |x: u64| {
            while x >= 200 && for_items.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            x
        };
        let taken: Vec<u64> = if ordered {
            let mut lazy = pool.imap(0u64.., f).chunk_size(8).window(8);
            let taken = lazy.by_ref().take(150).collect();
            drop(lazy);
            taken
        } else {
            let mut lazy = pool.imap_unordered(0u64.., f).chunk_size(8).window(8);
            let taken = lazy.by_ref().take(150).collect();
            drop(lazy);
            taken
        };
        assert_eq!(taken.len(), 150);
        hold.store(false, Ordering::SeqCst);
    }
    // The pool still serves.
    assert_eq!(pool.map(0..10u64, |x| x + 1), (1..11).collect::<Vec<_>>());
}

#[test]
fn panic_at_item_k_is_reraised_and_the_pool_keeps_serving() {
    let pool = pool(2);
    let data: Vec<u64> = (0..5000).collect();
    let boom = |x: u64| {
        assert!(x != 3210, "boom at {x}");
        x
    };
    for _ in 0..3 {
        let message = "boom at 3210";
        assert_eq!(
            panic_message(|| drop(pool.install(|| data.par_map(|&x| boom(x))))),
            message
        );
        assert_eq!(
            panic_message(|| drop(pool.install(|| data.clone().into_par_map(boom)))),
            message
        );
        assert_eq!(
            panic_message(|| drop(pool.map(data.iter(), |&x| boom(x)))),
            message
        );
        assert_eq!(
            panic_message(|| drop(pool.map_chunked(0..5000u64, 7, boom))),
            message
        );
        assert_eq!(
            panic_message(|| drop(pool.try_map(0..5000u64, |x| Ok::<_, ()>(boom(x))))),
            message
        );
        assert_eq!(
            panic_message(|| {
                pool.imap(0..5000u64, boom).count();
            }),
            message
        );
        assert_eq!(
            panic_message(|| {
                pool.imap_unordered(0..5000u64, boom).count();
            }),
            message
        );
    }
    assert_eq!(pool.install(|| data.par_map(|&x| x + 1)).len(), 5000);
    assert_eq!(pool.imap(0..10u64, |x| x).count(), 10);
}

#[test]
fn panic_in_next_is_reraised_and_every_item_and_result_is_dropped() {
    // The input's `next()` panics at item k, while the calling thread maps alone (trivial
    // items) or while it feeds the pool (the first 40 items sleep 50 µs: handed over at
    // once), in the middle of a batch or a chunk: items pulled and results made so far are
    // all dropped, once, and the pool keeps serving.
    let live = Arc::new(AtomicIsize::new(0));
    let pool = pool(2);
    for (slow, k) in [
        (0, 0),
        (0, 1),
        (0, 777),
        (0, 20_000),
        (40, 3),
        (40, 100),
        (40, 2_000),
    ] {
        let source = live.clone();
        let mut next = 0;
        let input = std::iter::from_fn(move || {
            assert!(next != k, "boom in next at {k}");
            next += 1;
            Some(Tracked::new(&source, next - 1))
        });
        let message = panic_message(|| {
            drop(pool.map(input, |t| {
                if t.value < slow {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                Tracked::new(&t.live, t.value * 2)
            }))
        });
        assert_eq!(message, format!("boom in next at {k}"));
        assert_eq!(
            live.load(Ordering::SeqCst),
            0,
            "{slow} slow items, panic at {k}"
        );
    }
    assert_eq!(pool.map(0..3u64, |x| x + 1), [1, 2, 3]);
}

#[test]
fn try_map_stops_pulling_after_the_first_error() {
    let pool = pool(2);
    let pulled = AtomicUsize::new(0);
    let input = (0u64..).inspect(|_| {
        pulled.fetch_add(1, Ordering::SeqCst);
    });
    let result = pool.try_map(input, |x| if x == 5000 { Err(x) } else { Ok(x) });
    assert_eq!(result, Err(5000));
    // Infinite input: returning at all proves that pulling stopped.
    assert!(pulled.load(Ordering::SeqCst) >= 5001);
    // The earliest failure in input order wins, as sequentially.
    let result = pool.try_map(
        0..10_000u64,
        |x| if x % 1000 == 999 { Err(x) } else { Ok(x) },
    );
    assert_eq!(result, Err(999));
}

#[test]
fn destructors_run_exactly_once() {
    let live = Arc::new(AtomicIsize::new(0));
    let pool = pool(3);
    {
        let inputs: Vec<Tracked> = (0..4000).map(|i| Tracked::new(&live, i)).collect();
        let outputs = pool.install(|| inputs.into_par_map(|t| Tracked::new(&t.live, t.value * 2)));
        assert_eq!(outputs.len(), 4000);
        assert!(
            outputs
                .iter()
                .enumerate()
                .all(|(i, t)| t.value == 2 * i as u64)
        );
        let outputs = pool.install(|| outputs.par_map(|t| Tracked::new(&t.live, t.value)));
        drop(outputs);
    }
    assert_eq!(live.load(Ordering::SeqCst), 0, "after the normal paths");

    // Panics: inputs not yet mapped and outputs already made are all dropped, once.
    for k in [0u64, 1, 1999, 3999] {
        let inputs: Vec<Tracked> = (0..4000).map(|i| Tracked::new(&live, i)).collect();
        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                inputs.into_par_map(|t| {
                    assert!(t.value != k, "boom");
                    Tracked::new(&t.live, t.value)
                })
            })
        }));
        assert_eq!(live.load(Ordering::SeqCst), 0, "into_par_map panic at {k}");

        let source = live.clone();
        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.map((0..4000u64).map(|i| Tracked::new(&source, i)), |t| {
                assert!(t.value != k, "boom");
                Tracked::new(&t.live, t.value)
            })
        }));
        assert_eq!(live.load(Ordering::SeqCst), 0, "map panic at {k}");

        let source = live.clone();
        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
            let made: Vec<Tracked> = pool
                .imap(
                    (0..4000u64).map(move |i| Tracked::new(&source, i)),
                    move |t| {
                        assert!(t.value != k, "boom");
                        t
                    },
                )
                .collect();
            drop(made);
        }));
        assert_eq!(live.load(Ordering::SeqCst), 0, "imap panic at {k}");
    }

    // Early drop of the lazy iterators, with results still in flight.
    for ordered in [true, false] {
        let source = live.clone();
        let input = (0u64..).map(move |i| Tracked::new(&source, i));
        let taken: Vec<Tracked> = if ordered {
            pool.imap(input, |t| t).chunk_size(32).take(500).collect()
        } else {
            pool.imap_unordered(input, |t| t)
                .chunk_size(32)
                .take(500)
                .collect()
        };
        drop(taken);
    }
    // Chunks that were running when the iterators were dropped finish on the pool; the
    // pool's drop waits for them.
    drop(pool);
    assert_eq!(live.load(Ordering::SeqCst), 0, "after early drops");
}

#[test]
fn par_map_into_reuses_a_large_enough_buffer_and_replaces_a_small_one() {
    let live = Arc::new(AtomicIsize::new(0));
    let pool = pool(2);
    let data: Vec<u64> = (0..3000).collect();
    // Too small: the old results are dropped, once, and every new one is in place.
    let mut out: Vec<Tracked> = (0..10).map(|i| Tracked::new(&live, 100 + i)).collect();
    pool.install(|| data.par_map_into(|&x| Tracked::new(&live, 2 * x), &mut out));
    assert_eq!(live.load(Ordering::SeqCst), 3000);
    assert!(out.iter().enumerate().all(|(i, t)| t.value == 2 * i as u64));
    // Large enough: the same allocation, its old results dropped once.
    let buffer = out.as_ptr();
    pool.install(|| data[..1000].par_map_into(|&x| Tracked::new(&live, x + 1), &mut out));
    assert_eq!(out.as_ptr(), buffer, "the buffer was reused");
    assert_eq!(live.load(Ordering::SeqCst), 1000);
    assert!(out.iter().enumerate().all(|(i, t)| t.value == i as u64 + 1));
    drop(out);
    assert_eq!(live.load(Ordering::SeqCst), 0);
}

#[test]
#[should_panic(expected = "chunk size must be at least 1")]
fn map_chunked_rejects_zero() {
    pool(1).map_chunked(0..10, 0, |x| x);
}

#[test]
#[should_panic(expected = "chunk size must be at least 1")]
fn imap_rejects_zero_chunk_size() {
    let _ = pool(1).imap(0..10, |x| x).chunk_size(0);
}

#[test]
#[should_panic(expected = "window must hold at least one chunk")]
fn imap_rejects_zero_window() {
    let _ = pool(1).imap_unordered(0..10, |x| x).window(0);
}

#[test]
#[should_panic(expected = "must be set before the first call to next()")]
fn imap_settings_are_fixed_once_started() {
    let mut lazy = pool(1).imap(0..10, |x| x);
    lazy.next();
    let _ = lazy.chunk_size(4);
}

#[test]
fn free_functions_use_the_current_pool() {
    let pool = pool(3);
    let sizes = pool.install(|| parpool::map(0..10, |_| parpool::current_num_threads()));
    assert!(sizes.iter().all(|&n| n == 3));
    let collected: Vec<u32> = pool.install(|| parpool::imap(0..10u32, |x| x).collect());
    assert_eq!(collected, (0..10).collect::<Vec<_>>());
    assert_eq!(parpool::map_chunked(0..4, 1, |x| x * 3), [0, 3, 6, 9]);
    assert_eq!(parpool::try_map(0..4, Ok::<_, ()>), Ok(vec![0, 1, 2, 3]));
    assert_eq!(parpool::imap_unordered(0..4u8, |x| x).count(), 4);
}

#[test]
fn stress_imap_unordered_small_window_many_threads() {
    // A window of two slots on an oversubscribed pool reuses every slot and ring position
    // as fast as possible while drainers get preempted between claiming a chunk and reading
    // which slot it is in: each item must still come back exactly once.
    let pool = pool(8);
    for round in 0..scaled(40, 4) {
        let n = 5_000 + round;
        let mut got: Vec<u64> = pool
            .imap_unordered(0..n, |x| x)
            .chunk_size(1 + (round % 3) as usize)
            .window(2)
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "round {round}");
    }
}

/// Calls at one site remember what their items cost (see "Call-site memory" in
/// `src/map/sample.rs`): after a loop of small calls, the next call maps its first item
/// without sampling (in optimised builds: unoptimised code is too slow for these calls to
/// count as small). When the items turn expensive, that memory costs one item: the call
/// samples from its second item and shares the rest with the pool's other worker.
#[test]
fn a_call_site_whose_items_turn_expensive_splits_its_first_expensive_call() {
    use std::collections::HashSet;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    let pool = pool(2);
    let data: Vec<u64> = (0..64).collect();
    let sleep_us = AtomicU64::new(0);
    pool.install(|| {
        // Every call runs on this worker, so they share its memory.
        let threads_used = || {
            let ran = data.par_map(|&x| {
                let us = sleep_us.load(Ordering::Relaxed);
                if us > 0 {
                    std::thread::sleep(Duration::from_micros(us));
                }
                (x, std::thread::current().id())
            });
            assert!(ran.iter().enumerate().all(|(i, &(x, _))| x == i as u64));
            ran.iter().map(|&(_, id)| id).collect::<HashSet<_>>().len()
        };
        for _ in 0..scaled(1000, 50) {
            threads_used();
        }
        sleep_us.store(1000, Ordering::Relaxed);
        assert_eq!(
            threads_used(),
            2,
            "the first expensive call splits its 64 ms of items"
        );
        assert_eq!(threads_used(), 2, "and the next one");
    });
}

/// A loop of calls at one site (where later calls recall what earlier ones measured, in
/// optimised builds) fails, panics and drops exactly as single calls do: the first error or
/// panic in input order wins, and every result is dropped once. The calls are small enough
/// to be recalled: 100 items, a few ns each.
#[test]
fn a_loop_of_calls_at_one_site_fails_and_panics_as_single_calls_do() {
    let live = Arc::new(AtomicIsize::new(0));
    let pool = pool(2);
    let data: Vec<u64> = (0..100).collect();
    pool.install(|| {
        for round in 0..scaled(3000, 60) as u64 {
            // Every third round or so has no failure.
            let fail_at = round * 7 % 150;
            let tried = data.try_par_map(|&x| if x == fail_at { Err(x) } else { Ok(x * 3) });
            match tried {
                Ok(results) => {
                    assert!(fail_at >= 100, "round {round}");
                    assert!(results.iter().enumerate().all(|(i, &r)| r == 3 * i as u64));
                }
                Err(at) => assert_eq!(at, fail_at, "round {round}"),
            }
            let mapped = panic::catch_unwind(AssertUnwindSafe(|| {
                data.par_map(|&x| {
                    assert!(x != fail_at, "boom at {x}");
                    Tracked::new(&live, x)
                })
            }));
            match mapped {
                Ok(results) => {
                    assert!(fail_at >= 100, "round {round}");
                    assert!(results.iter().enumerate().all(|(i, t)| t.value == i as u64));
                }
                Err(payload) => assert_eq!(
                    payload.downcast_ref::<String>().map(String::as_str),
                    Some(format!("boom at {fail_at}").as_str()),
                    "round {round}"
                ),
            }
            assert_eq!(
                live.load(Ordering::SeqCst),
                0,
                "round {round}: every result dropped once"
            );
        }
    });
}

// Found by the adversarial review of the call-site memory (each failed before its fix).

/// How many threads mapped the items of a call, from a value each item recorded.
fn threads_of<T: Eq + std::hash::Hash>(ids: &[T]) -> usize {
    ids.iter().collect::<std::collections::HashSet<_>>().len()
}

/// One site alternating between cheap calls and expensive ones (one closure whose captured
/// cost changes; the same holds for a helper that maps through a `&dyn Fn`, or for two
/// closures whose code the compiler merged into one instance): the memory of the cheap
/// calls must not take an expensive call's parallelism, however often the site alternates.
/// A site whose last call was cheap may map one expensive item before it samples.
#[test]
fn a_site_alternating_cheap_and_expensive_calls_splits_every_expensive_call() {
    use std::time::Duration;

    let data: Vec<u64> = (0..32).collect();
    for threads in [2, 16] {
        let pool = pool(threads);
        let rounds = scaled(20, 4);
        let split = pool.install(|| {
            let call = |sleep: Duration| {
                let ran = data.par_map(|&x| {
                    if !sleep.is_zero() {
                        std::thread::sleep(sleep);
                    }
                    (x, std::thread::current().id())
                });
                assert!(ran.iter().enumerate().all(|(i, &(x, _))| x == i as u64));
                threads_of(&ran.iter().map(|&(_, id)| id).collect::<Vec<_>>())
            };
            (0..rounds)
                .filter(|_| {
                    for _ in 0..100 {
                        call(Duration::ZERO);
                    }
                    // 32 ms of items: any idle worker has time to take half.
                    call(Duration::from_millis(1)) > 1
                })
                .count()
        });
        // Before the fix, every expensive call after a cheap one ran on the caller alone.
        assert!(
            split * 4 >= rounds * 3,
            "{threads} threads: only {split} of {rounds} expensive calls were split"
        );
    }
}

/// A recursive map is one closure type, so one site at every depth: the small calls at the
/// bottom leave memories on the threads that ran them, and the calls above them, whose
/// items hold whole subtrees, must not recall those memories and map their subtrees one
/// after the other on one thread.
#[test]
fn a_recursive_site_splits_its_expensive_calls_in_every_round() {
    use std::time::Duration;

    thread_local! {
        /// A mark of the thread, whose address tells threads apart in a few ns: the
        /// leaves stay cheap (`thread::current` costs ~0.5 µs on this machine).
        static MARK: u8 = const { 0 };
    }

    /// The threads that mapped the items of this call (each as the address of its
    /// [`MARK`]); at depth 1 the items are trivial, above it each sleeps 2 ms besides its
    /// subtrees.
    fn node(depth: u32) -> Vec<usize> {
        (0..4u64).par_map(|_| {
            if depth > 1 {
                std::thread::sleep(Duration::from_millis(2));
                // Calls in a row, as the leaves of a recursion run: the first samples and
                // the second recalls it.
                for _ in 0..2 {
                    node(depth - 1);
                }
            }
            MARK.with(|mark| std::ptr::from_ref(mark) as usize)
        })
    }

    let pool = pool(2);
    let rounds = scaled(30, 5);
    let split = pool.install(|| (0..rounds).filter(|_| threads_of(&node(3)) > 1).count());
    // Before the fix, only the first round split: every later top call recalled the memory
    // of a bottom call and mapped its four subtrees (~24 ms) on the caller alone.
    assert!(
        split * 4 >= rounds * 3,
        "only {split} of {rounds} top calls were split"
    );
}

/// Calls of 0, 1 and 2 items at a site that remembers cheap calls of 2 (the smallest call
/// with something to split): each maps exactly its items, and a panic in a recalled call
/// of 2 drops the result made before it once.
#[test]
fn calls_of_zero_one_and_two_items_at_a_remembered_site() {
    let live = Arc::new(AtomicIsize::new(0));
    let pool = pool(2);
    pool.install(|| {
        let call = |data: &[u64], bad: u64| {
            data.par_map(|&x| {
                assert!(x != bad, "boom at {x}");
                Tracked::new(&live, x * 2)
            })
        };
        for round in 0..scaled(2000, 50) {
            for len in [2, 2, 1, 0, 2] {
                let data: Vec<u64> = (0..len).collect();
                let got: Vec<u64> = call(&data, u64::MAX).iter().map(|t| t.value).collect();
                assert_eq!(got, (0..len).map(|x| x * 2).collect::<Vec<_>>(), "{round}");
            }
            let message = panic_message(|| drop(call(&[0, 1], 1)));
            assert_eq!(message, "boom at 1", "round {round}");
            assert_eq!(live.load(Ordering::SeqCst), 0, "round {round}");
        }
    });
}
