//! Public behaviour of the process pool: results, ordering, handles, errors that are not
//! crashes, the builder, and shutdown.
#![cfg(all(feature = "process", target_os = "linux"))]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parpool::ProcessPool;
use proptest::prelude::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

fn square(x: u64) -> u64 {
    x * x
}

fn affine(x: i64) -> i64 {
    x.wrapping_mul(3).wrapping_sub(7)
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn boom(message: String) -> u32 {
    panic!("{message}")
}

/// One pool shared by the tests that only need a working pool.
fn shared_pool() -> &'static ProcessPool {
    static POOL: OnceLock<ProcessPool> = OnceLock::new();
    POOL.get_or_init(|| ProcessPool::new(2).expect("pool starts"))
}

#[test]
fn smoke() {
    let pool = ProcessPool::new(2).unwrap();
    assert_eq!(pool.processes(), 2);
    assert_eq!(pool.pids().len(), 2);
    assert_eq!(pool.submit(square, 7).unwrap().get().unwrap(), 49);
    let v = pool.map(0..100u64, square).unwrap();
    assert_eq!(v, (0..100u64).map(square).collect::<Vec<_>>());
    let ordered: Vec<u64> = pool.imap(0..50u64, square).map(Result::unwrap).collect();
    assert_eq!(ordered, (0..50u64).map(square).collect::<Vec<_>>());
    let mut unordered: Vec<u64> = pool
        .imap_unordered(0..50u64, square)
        .map(Result::unwrap)
        .collect();
    unordered.sort_unstable();
    assert_eq!(unordered, ordered);
}

#[test]
fn closures_that_capture_nothing_are_jobs() {
    let pool = shared_pool();
    let v = pool
        .map(["a", "bc"].map(String::from), |s: String| s.to_uppercase())
        .unwrap();
    assert_eq!(v, ["A", "BC"]);
    let t = pool
        .submit(|(a, b): (u8, u8)| u16::from(a) * u16::from(b), (200, 3))
        .unwrap();
    assert_eq!(t.get().unwrap(), 600);
}

#[test]
fn workers_are_other_processes_in_their_own_process_group() {
    let pool = shared_pool();
    let worker = pool.submit(pid, ()).unwrap().get().unwrap();
    assert_ne!(worker, std::process::id());
    assert!(pool.pids().contains(&worker));
    // /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."
    let stat = std::fs::read_to_string(format!("/proc/{worker}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let (ppid, pgrp): (u32, u32) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    assert_eq!(ppid, std::process::id());
    assert_eq!(
        pgrp, worker,
        "a worker leads its own process group (Ctrl-C spares it)"
    );
}

#[test]
fn map_of_nothing_is_empty() {
    let pool = shared_pool();
    assert!(pool.map(Vec::<u64>::new(), square).unwrap().is_empty());
    assert_eq!(pool.imap(Vec::<u64>::new(), square).count(), 0);
    assert_eq!(pool.imap_unordered(Vec::<u64>::new(), square).count(), 0);
}

#[test]
fn map_of_unknown_length_is_ordered() {
    let pool = shared_pool();
    // `filter` hides the length: the chunk size grows as items arrive.
    let input = (0..5000u64).filter(|x| x % 3 != 0);
    let expected: Vec<u64> = input.clone().map(square).collect();
    assert_eq!(pool.map(input, square).unwrap(), expected);
}

#[test]
fn map_chunked_sizes_agree() {
    let pool = shared_pool();
    let expected: Vec<u64> = (0..333u64).map(square).collect();
    for chunk in [1, 2, 7, 64, 1000] {
        assert_eq!(
            pool.map_chunked(0..333u64, chunk, square).unwrap(),
            expected
        );
    }
}

#[test]
#[should_panic(expected = "the chunk size must be at least 1")]
fn map_chunked_with_chunk_size_zero_panics_like_the_thread_pool() {
    let _ = shared_pool().map_chunked(0..3u64, 0, square);
}

#[test]
fn imap_chunked_is_ordered() {
    let pool = shared_pool();
    let got: Vec<u64> = pool
        .imap(0..1000u64, square)
        .chunk_size(33)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, (0..1000u64).map(square).collect::<Vec<_>>());
}

#[test]
fn imap_is_lazy_and_bounded() {
    let pool = shared_pool();
    let pulled = AtomicU32::new(0);
    let items = (0..u64::MAX).inspect(|_| {
        pulled.fetch_add(1, Ordering::Relaxed);
    });
    let mut results = pool.imap(items, square);
    assert_eq!(
        pulled.load(Ordering::Relaxed),
        0,
        "nothing is pulled before `next`"
    );
    let first: Vec<u64> = results.by_ref().take(10).map(Result::unwrap).collect();
    assert_eq!(first, (0..10u64).map(square).collect::<Vec<_>>());
    let in_flight = pulled.load(Ordering::Relaxed);
    assert!(
        in_flight < 10_000,
        "an endless input is read a window at a time ({in_flight})"
    );
    drop(results);
    // The pool goes on after an abandoned imap.
    assert_eq!(pool.submit(square, 3).unwrap().get().unwrap(), 9);
}

#[test]
fn imap_unordered_yields_fast_jobs_first() {
    let pool = ProcessPool::new(2).unwrap();
    let order: Vec<u64> = pool
        .imap_unordered([600, 1, 1, 1], nap)
        .map(Result::unwrap)
        .collect();
    assert_eq!(order.len(), 4);
    assert_eq!(order[3], 600, "the slow job finishes last: {order:?}");
}

#[test]
fn get_timeout_keeps_the_handle_working() {
    let pool = shared_pool();
    let task = pool.submit(nap, 300).unwrap();
    let err = task.get_timeout(Duration::from_millis(1)).unwrap_err();
    assert!(err.is_timeout());
    assert!(!err.is_task_timeout());
    assert!(!task.is_ready());
    assert_eq!(task.get_timeout(Duration::from_secs(60)).unwrap(), 300);
}

#[test]
fn wait_and_is_ready() {
    let pool = shared_pool();
    let task = pool.submit(nap, 20).unwrap();
    task.wait();
    assert!(task.is_ready());
    assert_eq!(task.get().unwrap(), 20);
}

#[test]
fn second_get_timeout_after_result_says_taken() {
    let pool = shared_pool();
    let task = pool.submit(square, 2).unwrap();
    assert_eq!(task.get_timeout(Duration::from_secs(60)).unwrap(), 4);
    assert!(
        task.get_timeout(Duration::from_secs(60))
            .unwrap_err()
            .is_taken()
    );
    assert!(task.get().unwrap_err().is_taken());
}

#[test]
fn cancel_only_before_start() {
    let pool = ProcessPool::new(1).unwrap();
    let running = pool.submit(nap, 300).unwrap();
    // The credit window may hand a second job to the busy worker; the rest stay queued.
    let behind: Vec<_> = (0..4).map(|_| pool.submit(nap, 1).unwrap()).collect();
    running.wait();
    assert!(!running.cancel(), "a finished job cannot be cancelled");
    let cancelled = behind.iter().filter(|t| t.cancel()).count();
    assert!(cancelled >= 1, "some jobs were still queued");
    let mut ran = 0;
    for task in behind {
        match task.get() {
            Ok(1) => ran += 1,
            Err(e) => assert!(e.is_cancelled(), "{e}"),
            Ok(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ran + cancelled, 4);
}

#[test]
fn panic_is_an_error_and_the_worker_lives_on() {
    let pool = ProcessPool::new(1).unwrap();
    let before = pool.pids();
    let err = pool
        .submit(boom, "the answer is 42".to_string())
        .unwrap()
        .get()
        .unwrap_err();
    assert!(err.is_panic());
    assert!(!err.is_crash());
    assert_eq!(err.panic_message(), Some("the answer is 42"));
    assert_eq!(err.pid(), Some(before[0]));
    assert_eq!(pool.submit(pid, ()).unwrap().get().unwrap(), before[0]);
    assert_eq!(pool.pids(), before);
}

#[test]
fn panic_in_map_fails_its_item_only() {
    fn odd_panics(x: u64) -> u64 {
        assert!(x % 2 == 0, "odd {x}");
        x / 2
    }
    let pool = shared_pool();
    let err = pool.map([0, 2, 5, 6, 7], odd_panics).unwrap_err();
    assert_eq!(
        err.panic_message(),
        Some("odd 5"),
        "the first error in input order"
    );
    let results: Vec<_> = pool.imap([0, 2, 5, 6, 7], odd_panics).collect();
    assert_eq!(results[0].as_ref().unwrap(), &0);
    assert_eq!(results[1].as_ref().unwrap(), &1);
    assert!(results[2].as_ref().unwrap_err().is_panic());
    assert_eq!(results[3].as_ref().unwrap(), &3);
    assert_eq!(
        results[4].as_ref().unwrap_err().panic_message(),
        Some("odd 7")
    );
}

/// Serialises except for the value 0; deserialises except for values above 100.
#[derive(Debug, PartialEq)]
struct Picky(u8);

impl Serialize for Picky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 0 {
            return Err(serde::ser::Error::custom("zero does not serialise"));
        }
        s.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Picky {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u8::deserialize(d)?;
        if v > 100 {
            return Err(serde::de::Error::custom("too big to deserialise"));
        }
        Ok(Picky(v))
    }
}

fn picky_id(p: Picky) -> Picky {
    p
}

fn make_picky(v: u8) -> Picky {
    Picky(v)
}

#[test]
fn serialization_errors_name_the_type() {
    let pool = shared_pool();
    // The argument does not serialise: `submit` fails at once.
    let err = pool.submit(picky_id, Picky(0)).unwrap_err();
    assert!(err.is_serialization());
    assert!(err.type_name().unwrap().ends_with("Picky"), "{err}");
    assert_eq!(err.pid(), None);
    // The argument does not deserialise in the worker.
    let err = pool
        .submit(picky_id, Picky(200))
        .unwrap()
        .get()
        .unwrap_err();
    assert!(err.is_serialization() && err.type_name().unwrap().ends_with("Picky"));
    assert!(err.pid().is_some(), "{err}");
    // The result does not serialise in the worker.
    let err = pool.submit(make_picky, 0).unwrap().get().unwrap_err();
    assert!(
        err.is_serialization() && err.type_name().unwrap().ends_with("Picky"),
        "{err}"
    );
    // The result does not deserialise in the parent.
    let err = pool.submit(make_picky, 200).unwrap().get().unwrap_err();
    assert!(
        err.is_serialization() && err.type_name().unwrap().ends_with("Picky"),
        "{err}"
    );
    // In a map, the type is named too, and the good items are fine.
    let results: Vec<_> = pool.imap([1, 200, 3], make_picky).collect();
    assert_eq!(results[0].as_ref().unwrap(), &Picky(1));
    assert!(
        results[1]
            .as_ref()
            .unwrap_err()
            .type_name()
            .unwrap()
            .ends_with("Picky")
    );
    assert_eq!(results[2].as_ref().unwrap(), &Picky(3));
    let err = pool.map_chunked([1, 200, 3], 3, make_picky).unwrap_err();
    assert!(err.type_name().unwrap().ends_with("Picky"), "{err}");
}

#[test]
fn zero_processes_is_an_error() {
    let err = ProcessPool::new(0).unwrap_err();
    assert!(err.is_invalid_argument());
    let err = ProcessPool::builder().processes(0).build().unwrap_err();
    assert!(err.is_invalid_argument());
}

#[test]
fn default_size_is_the_available_parallelism() {
    let pool = ProcessPool::builder().build().unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(pool.processes(), cores);
}

static INITIALIZED: AtomicU32 = AtomicU32::new(0);

fn initialize() {
    INITIALIZED.store(1234, Ordering::SeqCst);
}

fn read_initialized(_: ()) -> u32 {
    INITIALIZED.load(Ordering::SeqCst)
}

#[test]
fn initializer_runs_in_each_worker() {
    let pool = ProcessPool::builder()
        .processes(2)
        .initializer(initialize)
        .build()
        .unwrap();
    let seen = pool.map_chunked(vec![(); 20], 1, read_initialized).unwrap();
    assert!(seen.iter().all(|&v| v == 1234), "{seen:?}");
    assert_eq!(INITIALIZED.load(Ordering::SeqCst), 0, "not in the parent");
}

fn failing_initializer() {
    panic!("cannot initialise");
}

#[test]
fn initializer_panic_fails_the_build() {
    let err = ProcessPool::builder()
        .processes(2)
        .initializer(failing_initializer)
        .build()
        .unwrap_err();
    assert!(err.is_startup() && err.is_initializer_failure(), "{err}");
    assert_eq!(err.panic_message(), Some("cannot initialise"), "{err}");
}

fn hanging_initializer() {
    std::thread::sleep(Duration::from_secs(3600));
}

#[test]
fn startup_timeout_bounds_the_build() {
    let err = ProcessPool::builder()
        .processes(1)
        .initializer(hanging_initializer)
        .startup_timeout(Duration::from_millis(300))
        .build()
        .unwrap_err();
    assert!(err.is_startup() && err.is_initializer_failure(), "{err}");
    // It hung: no panic message.
    assert_eq!(err.panic_message(), None, "{err}");
}

#[test]
fn max_tasks_per_child_recycles_workers() {
    let pool = ProcessPool::builder()
        .processes(1)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    let pids: Vec<u32> = (0..4)
        .map(|_| pool.submit(pid, ()).unwrap().get().unwrap())
        .collect();
    for pair in pids.windows(2) {
        assert_ne!(pair[0], pair[1], "each job ran in a fresh worker: {pids:?}");
    }
    // A map through recycling workers is still complete and ordered.
    let v = pool.map_chunked(0..20u64, 3, square).unwrap();
    assert_eq!(v, (0..20u64).map(square).collect::<Vec<_>>());
}

#[test]
fn use_after_close_is_an_error() {
    let pool = ProcessPool::new(1).unwrap();
    let task = pool.submit(nap, 50).unwrap();
    pool.close();
    assert!(pool.submit(square, 1).unwrap_err().is_closed());
    assert!(pool.map(0..3u64, square).unwrap_err().is_closed());
    let results: Vec<_> = pool.imap(0..3u64, square).collect();
    assert!(results[0].as_ref().unwrap_err().is_closed());
    assert_eq!(
        task.get().unwrap(),
        50,
        "queued work still finishes after close"
    );
    pool.join();
    assert!(pool.pids().is_empty());
    assert!(pool.submit(square, 1).unwrap_err().is_closed());
}

#[test]
fn terminate_fails_unfinished_jobs() {
    let pool = ProcessPool::new(1).unwrap();
    let tasks: Vec<_> = (0..4).map(|_| pool.submit(nap, 10_000).unwrap()).collect();
    pool.terminate();
    assert!(pool.pids().is_empty());
    for task in tasks {
        assert!(task.get().unwrap_err().is_closed());
    }
    assert!(pool.submit(square, 1).unwrap_err().is_closed());
}

#[test]
fn drop_waits_for_submitted_jobs() {
    let pool = ProcessPool::new(2).unwrap();
    let tasks: Vec<_> = (0..6).map(|i| pool.submit(nap, 20 + i).unwrap()).collect();
    drop(pool);
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.get().unwrap(), 20 + i as u64);
    }
}

#[test]
fn large_payloads_both_ways() {
    fn reverse(mut v: Vec<u8>) -> Vec<u8> {
        v.reverse();
        v
    }
    let pool = shared_pool();
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut expected = big.clone();
    expected.reverse();
    let got = pool.submit(reverse, big.clone()).unwrap().get().unwrap();
    assert!(got == expected);
    let got = pool.map(vec![big.clone(), big], reverse).unwrap();
    assert!(got.iter().all(|v| *v == expected));
}

#[test]
fn stress_submit_from_many_threads() {
    let pool = shared_pool();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let tasks: Vec<_> = (0..200u64)
                    .map(|i| pool.submit(square, t * 1000 + i).unwrap())
                    .collect();
                for (i, task) in tasks.into_iter().enumerate() {
                    let x = t * 1000 + i as u64;
                    assert_eq!(task.get().unwrap(), x * x);
                }
            });
        }
        s.spawn(|| {
            let v = pool.map_chunked(0..5000u64, 1, square).unwrap();
            assert_eq!(v, (0..5000u64).map(square).collect::<Vec<_>>());
        });
    });
}

#[test]
fn pool_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ProcessPool>();
    assert_send_sync::<parpool::process::ProcessTask<u64>>();
    assert_send_sync::<parpool::ProcessError>();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn map_matches_sequential(input in prop::collection::vec(any::<i64>(), 0..400), chunk in 1usize..40) {
        let pool = shared_pool();
        let expected: Vec<i64> = input.iter().copied().map(affine).collect();
        prop_assert_eq!(&pool.map(input.clone(), affine).unwrap(), &expected);
        prop_assert_eq!(&pool.map_chunked(input.clone(), chunk, affine).unwrap(), &expected);
        let lazy: Vec<i64> = pool.imap(input.clone(), affine).chunk_size(chunk).map(Result::unwrap).collect();
        prop_assert_eq!(&lazy, &expected);
        let mut unordered: Vec<i64> = pool.imap_unordered(input, affine).map(Result::unwrap).collect();
        let mut sorted = expected;
        unordered.sort_unstable();
        sorted.sort_unstable();
        prop_assert_eq!(unordered, sorted);
    }
}
