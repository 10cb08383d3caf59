//! `shm::Queue` and `shm::Lock` from threads and process jobs: the seed scenarios (a job
//! puts `(42, None, "hello")` and the parent gets it; ten jobs print under one lock),
//! ordering, bounds, close, timeouts, and many producers and consumers at once.
//!
//! The kill storm is in `shm_queue_kill.rs`.
#![cfg(all(feature = "process", target_os = "linux"))]

#[path = "common/child.rs"]
mod child;
#[path = "common/cpu.rs"]
mod cpu;

use cpu::thread_cpu;

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use parpool::ProcessPool;
use parpool::shm::{Lock, Queue, Value};

type Seed = (i32, Option<u8>, String);

fn put_seed(q: Queue<Seed>) {
    q.put((42, None, "hello".to_owned())).unwrap();
}

#[test]
fn seed_a_job_puts_the_parent_gets() {
    let pool = ProcessPool::new(1).unwrap();
    let q = Queue::new(4).unwrap();
    let job = pool.submit(put_seed, q.clone()).unwrap();
    assert_eq!(q.get().unwrap(), (42, None, "hello".to_owned()));
    job.get().unwrap();
    assert!(q.is_empty());
}

/// Under the lock: says hello, and checks that nobody else is inside (`inside` counts the
/// holders; a non-atomic read-modify-write of `total` would lose updates without the lock).
fn greet((lock, inside, total, i): (Lock, Value<u32>, Value<u64>, u32)) -> bool {
    let _guard = lock.lock().unwrap();
    let alone = inside.fetch_add(1) == 0;
    println!("hello world {i}");
    let t = total.load();
    std::thread::sleep(Duration::from_millis(2));
    total.store(t + 1);
    inside.fetch_add(u32::MAX); // - 1
    alone
}

#[test]
fn seed_ten_jobs_print_under_one_lock() {
    let pool = ProcessPool::new(4).unwrap();
    let lock = Lock::new().unwrap();
    let inside = Value::new(0u32).unwrap();
    let total = Value::new(0u64).unwrap();
    let alone = pool
        .map_chunked(
            (0..10).map(|i| (lock.clone(), inside.clone(), total.clone(), i)),
            1,
            greet,
        )
        .unwrap();
    assert!(alone.iter().all(|&a| a), "two holders at once: {alone:?}");
    assert_eq!(
        total.load(),
        10,
        "an update was lost: the lock did not exclude"
    );
}

fn hold_lock_until_told((lock, held, release): (Lock, Value<u32>, Value<u32>)) {
    let _guard = lock.lock().unwrap();
    held.store(1);
    while release.load() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn lock_excludes_across_processes_with_try_and_timeout() {
    let pool = ProcessPool::new(1).unwrap();
    let lock = Lock::new().unwrap();
    let (held, release) = (Value::new(0u32).unwrap(), Value::new(0u32).unwrap());
    let job = pool
        .submit(
            hold_lock_until_told,
            (lock.clone(), held.clone(), release.clone()),
        )
        .unwrap();
    while held.load() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(lock.try_lock().is_err());
    let start = Instant::now();
    assert!(lock.lock_timeout(Duration::from_millis(30)).is_err());
    assert!(start.elapsed() >= Duration::from_millis(30));
    release.store(1);
    let guard = lock.lock_timeout(Duration::from_secs(30)).unwrap();
    drop(guard);
    job.get().unwrap();
    assert!(!lock.is_poisoned());
}

fn die_holding(lock: Lock) {
    let _guard = lock.lock().unwrap();
    // SAFETY: kill(2) on our own pid has no memory effects.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

#[test]
fn lock_poisoned_by_a_killed_holder_recovers() {
    let pool = ProcessPool::new(1).unwrap();
    let lock = Lock::new().unwrap();
    assert!(
        pool.submit(die_holding, lock.clone())
            .unwrap()
            .get()
            .unwrap_err()
            .is_crash()
    );
    let poisoned = lock.lock().unwrap_err();
    drop(poisoned.into_inner());
    lock.clear_poison();
    assert!(lock.lock().is_ok());
    assert!(lock.lock_timeout(Duration::from_millis(1)).is_ok());
}

/// `clear_poison` ends the poisoned state even when a holder died on a lock that was
/// already poisoned (the death, noticed by nobody yet, used to poison the next `lock`).
#[test]
fn clear_poison_notices_a_death_behind_an_earlier_poison() {
    let lock = Lock::new().unwrap();
    let l = lock.clone();
    std::thread::spawn(move || {
        let _guard = l.lock().unwrap();
        panic!("poisons the lock");
    })
    .join()
    .unwrap_err();
    // A thread that ends holding the robust mutex is a dead holder for the kernel, as a
    // killed process is.
    let l = lock.clone();
    std::thread::spawn(move || std::mem::forget(l.lock().unwrap_err().into_inner()))
        .join()
        .unwrap();
    lock.clear_poison();
    assert!(!lock.is_poisoned());
    assert!(lock.lock().is_ok());
}

/// Takes and releases its lock when dropped.
struct LocksWhenDropped(Lock);

impl Drop for LocksWhenDropped {
    fn drop(&mut self) {
        let _guard = self.0.lock().unwrap();
    }
}

/// A destructor that takes and releases the lock while a panic unwinds through it finished
/// normally: no poison (as with `std::sync::Mutex`); a holder the panic stops still poisons.
#[test]
fn lock_used_by_a_destructor_during_unwinding_is_not_poisoned() {
    let lock = Lock::new().unwrap();
    let user = LocksWhenDropped(lock.clone());
    std::thread::spawn(move || {
        let _user = user;
        panic!("unwinds through a destructor that uses the lock");
    })
    .join()
    .unwrap_err();
    assert!(!lock.is_poisoned());
    let held = lock.clone();
    std::thread::spawn(move || {
        let _guard = held.lock().unwrap();
        panic!("stops a holder");
    })
    .join()
    .unwrap_err();
    assert!(lock.is_poisoned());
}

/// A timeout that the monotonic clock holds but the realtime one (which
/// `pthread_mutex_timedlock` takes) does not: still a wait, not a give-up at once.
#[test]
fn lock_timeout_past_the_realtime_clock_range_still_waits() {
    let lock = Lock::new().unwrap();
    let guard = lock.lock().unwrap();
    let waiter = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            // Realtime now (~1.8e9 s) plus this is past i64::MAX seconds; uptime plus it is not.
            let timeout = Duration::from_secs(i64::MAX as u64 - 1_000_000_000);
            lock.lock_timeout(timeout).is_ok()
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    drop(guard);
    assert!(waiter.join().unwrap(), "gave up while the lock was held");
}

#[test]
fn smoke_fifo_len_and_close() {
    let q = Queue::new(8).unwrap();
    for i in 0..5u32 {
        q.put(format!("item {i}")).unwrap();
    }
    assert_eq!(q.len(), 5);
    q.close();
    assert!(q.put("late".to_owned()).unwrap_err().is_closed());
    let drained: Vec<String> = std::iter::from_fn(|| q.get().ok()).collect();
    assert_eq!(
        drained,
        (0..5).map(|i| format!("item {i}")).collect::<Vec<_>>()
    );
    assert!(q.get().unwrap_err().is_closed());
    assert!(q.try_get().unwrap_err().is_closed());
    assert!(
        q.get_timeout(Duration::from_millis(1))
            .unwrap_err()
            .is_closed()
    );
}

#[test]
fn items_wrap_around_the_ring_end() {
    // 64-byte ring, records of 4 + 1 + len bytes: positions wrap many times, and records
    // straddle the end.
    let q = Queue::with_ring_bytes(1000, 64).unwrap();
    for round in 0..500usize {
        let item: Vec<u8> = (0..round % 40).map(|i| (i + round) as u8).collect();
        q.put(item.clone()).unwrap();
        if round % 3 == 0 {
            q.put(vec![7; 5]).unwrap();
            assert_eq!(q.get().unwrap(), item);
            assert_eq!(q.get().unwrap(), vec![7; 5]);
        } else {
            assert_eq!(q.get().unwrap(), item);
        }
    }
    assert!(q.is_empty());
}

#[test]
fn too_large_and_zero_capacity_are_errors() {
    let q = Queue::with_ring_bytes(4, 64).unwrap();
    let err = q.put(vec![1u8; 60]).unwrap_err();
    assert!(err.is_too_large());
    assert_eq!(err.into_inner(), vec![1u8; 60]);
    q.put(vec![1u8; 59]).unwrap(); // 1 byte of length + 59 + 4 of prefix = 64
    assert_eq!(q.get().unwrap().len(), 59);
    assert!(Queue::<u8>::new(0).unwrap_err().is_invalid());
    assert!(
        Queue::<u8>::with_ring_bytes(1, usize::MAX)
            .unwrap_err()
            .is_invalid()
    );
}

#[test]
fn close_wakes_sleeping_getters_and_putters() {
    let q = Queue::<u64>::new(1).unwrap();
    q.put(0).unwrap();
    std::thread::scope(|s| {
        let putter = s.spawn(|| q.put(1).unwrap_err().is_closed());
        let empty = Queue::<u64>::new(1).unwrap();
        let getter = {
            let empty = empty.clone();
            s.spawn(move || empty.get().unwrap_err().is_closed())
        };
        std::thread::sleep(Duration::from_millis(50));
        q.close();
        empty.close();
        assert!(putter.join().unwrap());
        assert!(getter.join().unwrap());
    });
    assert_eq!(q.get().unwrap(), 0);
}

#[test]
fn timeouts_are_honoured() {
    let q = Queue::<u8>::new(1).unwrap();
    let start = Instant::now();
    assert!(
        q.get_timeout(Duration::from_millis(30))
            .unwrap_err()
            .is_timeout()
    );
    assert!(start.elapsed() >= Duration::from_millis(30));
    q.put(1).unwrap();
    let start = Instant::now();
    assert!(
        q.put_timeout(2, Duration::from_millis(30))
            .unwrap_err()
            .is_timeout()
    );
    assert!(start.elapsed() >= Duration::from_millis(30));
    // A huge timeout is "forever", not an overflow.
    assert_eq!(q.get_timeout(Duration::MAX).unwrap(), 1);
}

/// A getter waiting on an empty queue and a putter waiting on a full one sleep in the
/// kernel: over a second of waiting each uses a sliver of CPU (20 lost-wake re-checks), far
/// below the whole second that spinning would burn.
#[test]
fn blocked_getters_and_putters_sleep_instead_of_spinning() {
    let wait = Duration::from_secs(1);
    let empty = Queue::<u8>::new(1).unwrap();
    let full = Queue::<u8>::new(1).unwrap();
    full.put(0).unwrap();
    let getter = std::thread::spawn(move || {
        let start = thread_cpu();
        assert!(empty.get_timeout(wait).unwrap_err().is_timeout());
        thread_cpu() - start
    });
    let putter = std::thread::spawn(move || {
        let start = thread_cpu();
        assert!(full.put_timeout(1, wait).unwrap_err().is_timeout());
        thread_cpu() - start
    });
    for (who, cpu) in [("getter", getter), ("putter", putter)] {
        let cpu = cpu.join().unwrap();
        assert!(
            cpu < wait / 4,
            "a blocked {who} used {cpu:?} of CPU in {wait:?}"
        );
    }
}

/// Many threads putting and getting at once: every item got exactly once, each producer's
/// items in the order it put them.
#[test]
fn stress_threads_mpmc_exactly_once_in_order() {
    const PRODUCERS: u64 = 4;
    const PER_PRODUCER: u64 = 20_000;
    let q = Queue::<(u64, u64)>::new(16).unwrap();
    let got = std::thread::scope(|s| {
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let q = q.clone();
                s.spawn(move || {
                    for i in 0..PER_PRODUCER {
                        q.put((p, i)).unwrap();
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                s.spawn(move || {
                    let mut got = Vec::new();
                    let mut last = [None::<u64>; PRODUCERS as usize];
                    while let Ok((p, i)) = q.get() {
                        let last = &mut last[p as usize];
                        assert!(last.is_none_or(|l| l < i), "out of order");
                        *last = Some(i);
                        got.push((p, i));
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        q.close();
        consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    let unique: HashSet<_> = got.iter().copied().collect();
    assert_eq!(got.len() as u64, PRODUCERS * PER_PRODUCER);
    assert_eq!(unique.len(), got.len(), "an item was got twice");
}

fn produce_range((q, from, to): (Queue<u64>, u64, u64)) {
    for i in from..to {
        q.put(i).unwrap();
    }
}

fn consume_sum(q: Queue<u64>) -> (u64, u64) {
    let (mut n, mut sum) = (0, 0);
    while let Ok(x) = q.get() {
        n += 1;
        sum += x;
    }
    (n, sum)
}

/// Two producer processes, two consumer processes and the parent, through one small
/// queue.
#[test]
fn processes_mpmc_exactly_once() {
    const N: u64 = 50_000;
    let pool = ProcessPool::new(4).unwrap();
    let q = Queue::new(8).unwrap();
    let consumers: Vec<_> = (0..2)
        .map(|_| pool.submit(consume_sum, q.clone()).unwrap())
        .collect();
    let producers: Vec<_> = [(0, N / 2), (N / 2, N)]
        .into_iter()
        .map(|(a, b)| pool.submit(produce_range, (q.clone(), a, b)).unwrap())
        .collect();
    for p in producers {
        p.get().unwrap();
    }
    q.close();
    let (n, sum) = consumers
        .into_iter()
        .map(|c| c.get().unwrap())
        .fold((0, 0), |(n, s), (m, t)| (n + m, s + t));
    assert_eq!(n, N);
    assert_eq!(sum, N * (N - 1) / 2);
}

/// A capacity-1 queue as a pipe: a job echoes what the parent sends, many round trips.
fn echo((requests, replies): (Queue<u64>, Queue<u64>)) {
    while let Ok(x) = requests.get() {
        replies.put(x * 2).unwrap();
    }
}

#[test]
fn capacity_one_round_trips_as_a_pipe() {
    let pool = ProcessPool::new(1).unwrap();
    let (requests, replies) = (Queue::new(1).unwrap(), Queue::new(1).unwrap());
    let job = pool
        .submit(echo, (requests.clone(), replies.clone()))
        .unwrap();
    for i in 0..2000 {
        requests.put(i).unwrap();
        assert_eq!(replies.get().unwrap(), 2 * i);
    }
    requests.close();
    job.get().unwrap();
}

fn get_forever(q: Queue<u64>) {
    while q.get().is_ok() {}
}

/// Consumers killed by the pool's task timeout, wherever they are (asleep in `get`, or in
/// the middle of one): the queue goes on, and every item is got once, by a later consumer
/// or by the parent, or was taken by a killed one (at most one each).
#[test]
fn consumers_killed_by_task_timeout() {
    let pool = ProcessPool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    let q = Queue::new(4).unwrap();
    let mut next = 0u64;
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let job = pool.submit(get_forever, q.clone()).unwrap();
        // Feed the job until it is killed.
        while !job.is_ready() {
            if q.put_timeout(next, Duration::from_millis(1)).is_ok() {
                next += 1;
            }
        }
        assert!(job.get().unwrap_err().is_task_timeout());
        while let Ok(x) = q.try_get() {
            assert!(seen.insert(x), "item {x} got twice");
        }
    }
    // The queue still works for everyone.
    q.put(u64::MAX).unwrap();
    assert_eq!(q.get().unwrap(), u64::MAX);
    assert!(next > 0);
}

/// A handle names its segment and what it holds: a queue of one type, or a lock, never
/// opens as something else.
#[test]
fn handles_open_only_as_what_they_are() {
    let q = Queue::<u32>::new(4).unwrap();
    q.put(5).unwrap();
    let json = serde_json::to_string(&q).unwrap();
    let same: Queue<u32> = serde_json::from_str(&json).unwrap();
    assert_eq!(same.get().unwrap(), 5);
    let err = serde_json::from_str::<Queue<u64>>(&json).unwrap_err();
    assert!(
        err.to_string()
            .contains("not a `parpool::shm::queue::Queue<u64>`"),
        "{err}"
    );
    assert!(serde_json::from_str::<Lock>(&json).is_err());

    let lock = Lock::new().unwrap();
    let json = serde_json::to_string(&lock).unwrap();
    assert!(serde_json::from_str::<Lock>(&json).is_ok());
    assert!(serde_json::from_str::<Value<u8>>(&json).is_err());
    assert!(serde_json::from_str::<Queue<u8>>(&json).is_err());
}

/// Runs `scenario` in a child process under a time bound; returns (success, stdout +
/// stderr). A child that outlives the bound is killed and reported as a failure.
fn run_child(scenario: &str) -> (bool, String) {
    let outcome = child::run_child(scenario, &[], &[], Duration::from_secs(120));
    let mut text = outcome.output;
    if outcome.timed_out {
        text.push_str("\n[killed: the scenario hung]");
    }
    (outcome.success, text)
}

/// Puts into its queue when dropped.
struct PutOnDrop(Queue<u64>);

impl Drop for PutOnDrop {
    fn drop(&mut self) {
        self.0.put(7).unwrap();
    }
}

thread_local! {
    static PUT_AT_EXIT: RefCell<Option<PutOnDrop>> = const { RefCell::new(None) };
}

/// The child side: one scenario per process (a crash there fails the test, not the suite).
#[test]
#[ignore = "runs only as a child process of the tests below"]
fn child() {
    match std::env::var(child::SCENARIO).as_deref() {
        Ok("put-from-thread-local-drop") => {
            let q = Queue::<u64>::new(4).unwrap();
            let q2 = q.clone();
            std::thread::spawn(move || {
                PUT_AT_EXIT.with(|slot| *slot.borrow_mut() = Some(PutOnDrop(q2.clone())));
                // The queue's own thread-local buffer is made after `PUT_AT_EXIT`, so it
                // is destroyed first.
                q2.put(1).unwrap();
            })
            .join()
            .unwrap();
            assert_eq!(q.try_get().unwrap(), 1);
            assert_eq!(q.try_get().unwrap(), 7);
        }
        other => panic!("unknown scenario {other:?}"),
    }
}

/// A put from a thread-local's destructor, after the queue's own thread-local buffer is
/// gone, works (it used to abort the process).
#[test]
fn put_from_a_thread_local_destructor() {
    let (ok, text) = run_child("put-from-thread-local-drop");
    assert!(ok, "{text}");
}
