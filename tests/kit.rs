//! The rayon-style kit on slices and ranges against sequential code: `par_for_each`,
//! `par_for_each_mut`, `par_chunks` / `par_chunks_mut`, `par_map_reduce` and its sums,
//! minima and maxima, `try_par_map` / `try_par_for_each`, `par_map_init` /
//! `par_for_each_init` and `with_min_len`; plus panics, early stops, destructors, small
//! inputs and bad chunk sizes.

use std::cmp::Ordering as Cmp;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicU8, AtomicUsize, Ordering};

#[path = "common/inputs.rs"]
mod inputs;
use inputs::{Tracked, pool, work};
mod common;
use common::panic_message;
use parpool::prelude::*;
use proptest::prelude::*;

/// Ordered by `key` only, so that ties show which of several equal values was kept.
#[derive(Debug, Clone, Copy)]
struct Keyed {
    key: u64,
    index: usize,
}

impl PartialEq for Keyed {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Keyed {}
impl PartialOrd for Keyed {
    fn partial_cmp(&self, other: &Self) -> Option<Cmp> {
        Some(self.cmp(other))
    }
}
impl Ord for Keyed {
    fn cmp(&self, other: &Self) -> Cmp {
        self.key.cmp(&other.key)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn for_each_visits_every_item_once(len in 0usize..5000, threads in 1usize..=8) {
        let visits: Vec<AtomicU8> = (0..len).map(|_| AtomicU8::new(0)).collect();
        pool(threads).install(|| {
            visits.par_for_each(|v| {
                v.fetch_add(1, Ordering::Relaxed);
            });
        });
        prop_assert!(visits.iter().all(|v| v.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn for_each_mut_and_chunks_match_sequential(
        data in prop::collection::vec(any::<u64>(), 0..5000),
        size in 1usize..100,
        threads in 1usize..=8,
    ) {
        let pool = pool(threads);
        let mut got = data.clone();
        pool.install(|| got.par_for_each_mut(|x| *x = work(*x)));
        let expected: Vec<u64> = data.iter().map(|&x| work(x)).collect();
        prop_assert_eq!(&got, &expected);

        let sums = pool.install(|| data.par_chunks(size).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))));
        let expected_sums: Vec<u64> =
            data.chunks(size).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).collect();
        prop_assert_eq!(sums, expected_sums);

        let mut got = data.clone();
        pool.install(|| got.par_chunks_mut(size).for_each(|c| c.reverse()));
        let mut expected = data.clone();
        expected.chunks_mut(size).for_each(<[u64]>::reverse);
        prop_assert_eq!(&got, &expected);

        let mut got = data.clone();
        let lens = pool.install(|| got.par_chunks_mut(size).map(|c| { c.sort(); c.len() }));
        let mut expected = data.clone();
        expected.chunks_mut(size).for_each(<[u64]>::sort);
        prop_assert_eq!(got, expected);
        prop_assert_eq!(lens, data.chunks(size).map(<[u64]>::len).collect::<Vec<_>>());
    }

    #[test]
    fn reductions_match_sequential(
        data in prop::collection::vec(0u64..1000, 0..5000),
        threads in 1usize..=8,
        min_len in 0usize..3000,
    ) {
        let pool = pool(threads);
        // Concatenation is associative but not commutative: the order must be kept.
        let concat = pool.install(|| {
            data.par_map_reduce(|&x| vec![x], Vec::new, |mut a, b| { a.extend(b); a })
        });
        prop_assert_eq!(&concat, &data);
        let concat = pool.install(|| {
            data.with_min_len(min_len)
                .par_map_reduce(|&x| vec![x], Vec::new, |mut a, b| { a.extend(b); a })
        });
        prop_assert_eq!(&concat, &data);

        prop_assert_eq!(pool.install(|| data.par_sum(|&x| work(x))), data.iter().map(|&x| work(x)).sum::<u64>());
        prop_assert_eq!(pool.install(|| data.par_min(|&x| x % 100)), data.iter().map(|&x| x % 100).min());
        prop_assert_eq!(pool.install(|| data.par_max(|&x| x % 100)), data.iter().map(|&x| x % 100).max());

        // Ties: the first smallest and the last largest, as `Iterator::min` / `max`.
        let keyed = |i: usize| Keyed { key: data[i] % 10, index: i };
        let min = pool.install(|| (0..data.len()).par_min(keyed)).map(|k| k.index);
        let max = pool.install(|| (0..data.len()).par_max(keyed)).map(|k| k.index);
        prop_assert_eq!(min, (0..data.len()).map(keyed).min().map(|k| k.index));
        prop_assert_eq!(max, (0..data.len()).map(keyed).max().map(|k| k.index));
    }

    #[test]
    fn try_ops_return_the_first_error_in_input_order(
        data in prop::collection::vec(0u64..500, 0..5000),
        bad in 0u64..600,
        threads in 1usize..=8,
    ) {
        let pool = pool(threads);
        let f = |x: u64| if x == bad { Err(x * 1000) } else { Ok(work(x)) };
        let expected: Result<Vec<u64>, u64> = data.iter().map(|&x| f(x)).collect();
        prop_assert_eq!(pool.install(|| data.try_par_map(|&x| f(x))), expected.clone());
        let expected_unit = expected.map(drop);
        prop_assert_eq!(pool.install(|| data.try_par_for_each(|&x| f(x).map(drop))), expected_unit);
        // Several failures: still the first in input order.
        let every = bad.max(1);
        let g = |i: usize| if i as u64 % (every + 7) == every { Err(i) } else { Ok(i) };
        let expected: Result<Vec<usize>, usize> = (0..data.len()).map(g).collect();
        prop_assert_eq!(pool.install(|| (0..data.len()).try_par_map(g)), expected);
    }

    #[test]
    fn init_variants_match_sequential(
        data in prop::collection::vec(any::<u64>(), 0..5000),
        threads in 1usize..=8,
        min_len in 0usize..2000,
    ) {
        let pool = pool(threads);
        let made = AtomicUsize::new(0);
        let init = || {
            made.fetch_add(1, Ordering::Relaxed);
            Vec::<u64>::new()
        };
        let got = pool.install(|| {
            data.with_min_len(min_len).par_map_init(init, |scratch, &x| {
                scratch.push(x);
                work(x)
            })
        });
        prop_assert_eq!(got, data.iter().map(|&x| work(x)).collect::<Vec<_>>());
        prop_assert!(made.load(Ordering::Relaxed) <= data.len().max(1));

        let visits: Vec<AtomicU8> = (0..data.len()).map(|_| AtomicU8::new(0)).collect();
        pool.install(|| {
            (0..data.len()).par_for_each_init(|| 0usize, |calls, i| {
                *calls += 1;
                visits[i].fetch_add(1, Ordering::Relaxed);
            });
        });
        prop_assert!(visits.iter().all(|v| v.load(Ordering::Relaxed) == 1));
    }
}

#[test]
fn small_inputs_for_every_operation() {
    let pool = pool(4);
    for len in [0usize, 1, 2, 3] {
        let data: Vec<u64> = (1..=len as u64).collect();
        pool.install(|| {
            let visits = AtomicUsize::new(0);
            data.par_for_each(|_| {
                visits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(visits.into_inner(), len);
            let mut doubled = data.clone();
            doubled.par_for_each_mut(|x| *x *= 2);
            assert_eq!(doubled, data.iter().map(|x| x * 2).collect::<Vec<_>>());
            assert_eq!(data.par_chunks(2).map(<[u64]>::len).len(), len.div_ceil(2));
            let mut copy = data.clone();
            copy.par_chunks_mut(1).for_each(|c| c[0] += 1);
            assert_eq!(
                copy.iter().sum::<u64>(),
                data.iter().sum::<u64>() + len as u64
            );
            assert_eq!(data.par_sum(|&x| x), data.iter().sum::<u64>());
            assert_eq!(data.par_min(|&x| x), data.iter().copied().min());
            assert_eq!(data.par_max(|&x| x), data.iter().copied().max());
            assert_eq!(
                data.par_map_reduce(|&x| x, || 100, |a, b| a.min(b)),
                data.iter().copied().fold(100, u64::min)
            );
            assert_eq!(data.try_par_map(|&x| Ok::<_, ()>(x)), Ok(data.clone()));
            assert_eq!(
                data.try_par_for_each(|_| Err::<(), _>(7)),
                if len == 0 { Ok(()) } else { Err(7) }
            );
            assert_eq!(
                data.par_map_init(|| 1, |s, &x| x + *s),
                data.iter().map(|x| x + 1).collect::<Vec<_>>()
            );
        });
    }
}

#[test]
fn try_stops_at_the_first_error_and_starts_nothing_after_it() {
    // One thread: the caller and the single worker never run at once, so the items tried
    // are exactly those up to the failure. Failures inside the caller's sampling too (its
    // first batches are 1 and 32 items, which look at the stop index once each), at and
    // around their edges.
    let one = pool(1);
    for k in [0usize, 1, 2, 32, 33, 34, 999, 50_000] {
        let calls = AtomicUsize::new(0);
        let result = one.install(|| {
            (0..100_000usize).try_par_for_each(|i| {
                calls.fetch_add(1, Ordering::Relaxed);
                if i == k { Err(i) } else { Ok(()) }
            })
        });
        assert_eq!(result, Err(k));
        assert_eq!(calls.into_inner(), k + 1, "failure at {k}");
    }
    // Several threads: items right of the failure that were not yet running when it was
    // seen are never started.
    let pool = pool(4);
    for _ in 0..20 {
        let calls = AtomicUsize::new(0);
        let result = pool.install(|| {
            (0..2_000_000u64).try_par_map(|i| {
                calls.fetch_add(1, Ordering::Relaxed);
                if i == 3000 { Err("bad") } else { Ok(i) }
            })
        });
        assert_eq!(result, Err("bad"));
        assert!(calls.into_inner() < 2_000_000, "stopped early");
    }
}

#[test]
fn try_returns_the_first_error_even_if_items_right_of_it_panic() {
    // Sequentially the `Err` at 3000 ends the call before any later item runs. In
    // parallel, items right of it may already be running when it is found; their panics
    // used to stop the call (stop index 0) and were re-raised instead of the error: 20 of
    // 20 rounds panicked.
    let pool = pool(4);
    for round in 0..20 {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                (0..20_000u64).try_par_map(|x| {
                    std::hint::black_box((0..2000u64).fold(x, |a, i| a.wrapping_mul(31) ^ i));
                    match x {
                        3000 => Err(x),
                        3001.. => panic!("item {x} runs only after the first error"),
                        _ => Ok(x),
                    }
                })
            })
        }));
        let result = outcome.unwrap_or_else(|_| panic!("round {round}: a later panic won"));
        assert_eq!(result, Err(3000), "round {round}");
    }
    // A panic left of the first error is still the first failure, and is re-raised.
    let message = panic_message(|| {
        let result = pool.install(|| {
            (0..20_000u64).try_par_map(|x| match x {
                100 => panic!("boom at {x}"),
                5000.. => Err(x),
                _ => Ok(x),
            })
        });
        drop(result);
    });
    assert_eq!(message, "boom at 100");
}

#[test]
fn panics_are_reraised_and_the_pool_keeps_serving() {
    let pool = pool(3);
    let data: Vec<u64> = (0..20_000).collect();
    let boom = |x: u64| {
        assert!(x != 12_345, "boom at {x}");
        x
    };
    let message = "boom at 12345";
    for _ in 0..3 {
        pool.install(|| {
            assert_eq!(
                panic_message(|| data.par_for_each(|&x| {
                    boom(x);
                })),
                message
            );
            let mut copy = data.clone();
            assert_eq!(
                panic_message(|| copy.par_for_each_mut(|x| {
                    boom(*x);
                })),
                message
            );
            assert_eq!(
                panic_message(|| drop(
                    data.par_chunks(7)
                        .map(|c| c.iter().map(|&x| boom(x)).sum::<u64>())
                )),
                message
            );
            assert_eq!(
                panic_message(
                    || copy.par_chunks_mut(7).for_each(|c| c.iter().for_each(|&x| {
                        boom(x);
                    }))
                ),
                message
            );
            assert_eq!(
                panic_message(|| {
                    data.par_sum(|&x| boom(x));
                }),
                message
            );
            assert_eq!(
                panic_message(|| {
                    data.par_max(|&x| boom(x));
                }),
                message
            );
            assert_eq!(
                panic_message(|| drop(data.try_par_map(|&x| Ok::<_, ()>(boom(x))))),
                message
            );
            assert_eq!(
                panic_message(|| drop(data.par_map_init(|| (), |(), &x| boom(x)))),
                message
            );
            assert_eq!(
                panic_message(|| (0..20_000u64).par_for_each_init(
                    || (),
                    |(), x| {
                        boom(x);
                    }
                )),
                message
            );
        });
    }
    assert_eq!(
        pool.install(|| data.par_sum(|&x| x)),
        (0..20_000u64).sum::<u64>()
    );
}

#[test]
fn destructors_run_exactly_once() {
    let live = Arc::new(AtomicIsize::new(0));
    let pool = pool(3);
    let data: Vec<u64> = (0..20_000).collect();
    for k in [0u64, 1, 9_999, 19_999, u64::MAX] {
        // Results of a failed `try_par_map` are all dropped.
        let result = pool.install(|| {
            data.try_par_map(|&x| {
                if x == k {
                    Err(x)
                } else {
                    Ok(Tracked::new(&live, x))
                }
            })
        });
        assert_eq!(result.is_err(), k != u64::MAX);
        drop(result);
        assert_eq!(live.load(Ordering::SeqCst), 0, "try_par_map failing at {k}");

        // Panics: results already made, partial reductions and per-piece states.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                data.par_map_init(
                    || Tracked::new(&live, 0),
                    |_, &x| {
                        assert!(x != k, "boom");
                        Tracked::new(&live, x)
                    },
                )
            })
        }));
        assert_eq!(live.load(Ordering::SeqCst), 0, "par_map_init panic at {k}");
        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                data.par_map_reduce(
                    |&x| {
                        assert!(x != k, "boom");
                        Tracked::new(&live, x)
                    },
                    || Tracked::new(&live, 0),
                    |a, b| Tracked::new(&live, a.value.max(b.value)),
                )
            })
        }));
        assert_eq!(
            live.load(Ordering::SeqCst),
            0,
            "par_map_reduce panic at {k}"
        );
        let mut copy = data.clone();
        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.install(|| {
                copy.par_chunks_mut(64).map(|c| {
                    assert!(!c.contains(&k), "boom");
                    Tracked::new(&live, c[0])
                })
            })
        }));
        assert_eq!(
            live.load(Ordering::SeqCst),
            0,
            "par_chunks_mut panic at {k}"
        );
    }
    // Every state that `init` made is dropped, once.
    let states = pool.install(|| {
        data.par_map_init(
            || Tracked::new(&live, 0),
            |state, &x| {
                state.value += 1;
                x
            },
        )
    });
    assert_eq!(states, data);
    assert_eq!(live.load(Ordering::SeqCst), 0, "states after par_map_init");
}

#[test]
fn state_is_made_per_piece_and_survives_nested_calls() {
    let pool = pool(4);
    let made = AtomicUsize::new(0);
    let out = pool.install(|| {
        (0..200_000u64).par_map_init(
            || {
                made.fetch_add(1, Ordering::Relaxed);
                0u64
            },
            |count, x| {
                *count += 1;
                // A closure that itself uses the pool: while it waits, this worker may
                // run another piece of the outer call, which makes its own state.
                if x % 50_000 == 0 {
                    assert_eq!((0..1000u64).par_sum(|i| i), 499_500);
                }
                x + 1
            },
        )
    });
    assert_eq!(out.len(), 200_000);
    assert_eq!(out[199_999], 200_000);
    assert!(
        made.into_inner() < 10_000,
        "one state per piece, not per item"
    );
}

#[test]
#[should_panic(expected = "chunk size must be at least 1")]
fn par_chunks_rejects_zero() {
    let _ = [1, 2, 3].par_chunks(0);
}

#[test]
#[should_panic(expected = "chunk size must be at least 1")]
fn par_chunks_mut_rejects_zero() {
    let _ = [1, 2, 3].par_chunks_mut(0);
}

#[test]
fn min_len_bounds_how_fine_the_pool_cuts() {
    let pool = pool(4);
    for min_len in [1usize, 100, 10_000, 1 << 20] {
        // Each piece's state counts its items, reported when the piece ends.
        let pieces = std::sync::Mutex::new(Vec::new());
        struct Piece<'a>(usize, &'a std::sync::Mutex<Vec<usize>>);
        impl Drop for Piece<'_> {
            fn drop(&mut self) {
                if self.0 > 0 {
                    self.1.lock().unwrap().push(self.0);
                }
            }
        }
        let sum = pool.install(|| {
            (0..100_000u64)
                .with_min_len(min_len)
                .par_map_reduce(work, || 0, u64::wrapping_add)
        });
        assert_eq!(sum, (0..100_000u64).map(work).fold(0, u64::wrapping_add));
        pool.install(|| {
            (0..100_000u64)
                .with_min_len(min_len)
                .par_for_each_init(|| Piece(0, &pieces), |piece, _| piece.0 += 1);
        });
        let pieces = pieces.into_inner().unwrap();
        assert_eq!(pieces.iter().sum::<usize>(), 100_000);
        // Only the caller's sampling may end up shorter than `min_len` (it stops when
        // the rest is worth handing over); the pool's pieces never are, except what is left
        // of a piece after its batches, which is a piece that was itself long enough.
        assert!(
            pieces.len() <= 1 + 2 * 100_000 / min_len.max(1) + 1,
            "{} pieces with min_len {min_len}",
            pieces.len()
        );
    }
}

#[test]
fn min_len_near_usize_max_keeps_the_input_on_the_caller() {
    // `2 * min_len` overflowed: a debug build panicked with "attempt to multiply with
    // overflow" once the sample said the rest was worth parallel work, and a release build
    // wrapped to a bound of 0 (or usize::MAX - 1), cutting pieces far shorter than
    // `min_len`.
    let pool = pool(4);
    for min_len in [usize::MAX / 2 + 1, usize::MAX] {
        let threads = std::sync::Mutex::new(Vec::new());
        let out = pool.install(|| {
            (0..20_000u64).with_min_len(min_len).par_map_init(
                || {
                    threads
                        .lock()
                        .unwrap()
                        .push(parpool::current_thread_index())
                },
                |(), x| {
                    std::hint::black_box((0..200u64).fold(x, |a, i| a.wrapping_mul(31) ^ i));
                    x + 1
                },
            )
        });
        assert!(out.iter().copied().eq(1..20_001), "min_len {min_len}");
        let threads = threads.into_inner().unwrap();
        assert!(
            threads.windows(2).all(|pair| pair[0] == pair[1]),
            "min_len {min_len}: states made on {threads:?}"
        );
    }
}

#[test]
fn stress_failures_and_panics_over_many_rounds() {
    // Failures and panics at moving positions, on more threads than cores, with items of
    // uneven cost: every round returns the first error (or re-raises the panic) and drops
    // every result exactly once.
    let live = Arc::new(AtomicIsize::new(0));
    let pool = pool(6);
    let n = 30_000u64;
    for round in 0..150u64 {
        let k = (round * 7919) % n;
        let result = pool.install(|| {
            (0..n).try_par_map(|x| {
                if x >= k && x % 997 == k % 997 {
                    Err(x)
                } else {
                    Ok(Tracked::new(&live, work(x)))
                }
            })
        });
        assert_eq!(result.map(|v| v.len()), Err(k), "round {round}");
        assert_eq!(live.load(Ordering::SeqCst), 0, "round {round}");

        let message = panic_message(|| {
            pool.install(|| {
                (0..n).par_for_each_init(
                    || Tracked::new(&live, 0),
                    |_, x| assert!(x != k, "boom at {x}"),
                );
            });
        });
        assert_eq!(message, format!("boom at {k}"));
        assert_eq!(live.load(Ordering::SeqCst), 0, "round {round}");
    }
    assert_eq!(pool.install(|| (0..n).par_sum(|x| x)), n * (n - 1) / 2);
}
