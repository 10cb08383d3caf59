//! The shared lock survives a dying holder: a worker SIGKILLed (or panicking) while it holds
//! the lock poisons it, and the next locker, in the parent or another worker, gets the
//! poison instead of a deadlock, and can recover.
#![cfg(all(feature = "process", target_os = "linux"))]

use std::time::Duration;

use parpool::ProcessPool;
use parpool::shm::{Array, Value};

fn sigkill_self() -> ! {
    // SAFETY: kill(2) with our own pid and a valid signal number has no memory effects.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL cannot be caught")
}

/// Negates the first half of the array, then dies holding the lock.
fn die_holding_array(a: Array<i32>) {
    let mut data = a.lock().unwrap();
    let half = data.len() / 2;
    for x in &mut data[..half] {
        *x = -*x;
    }
    sigkill_self();
}

fn die_holding_value(v: Value<u64>) {
    let mut guard = v.lock().unwrap();
    *guard = 999;
    sigkill_self();
}

/// Takes the lock, says so through `flag`, waits, dies holding it.
fn die_later((v, flag): (Value<u64>, Value<u32>)) {
    let _guard = v.lock().unwrap();
    flag.store(1);
    std::thread::sleep(Duration::from_millis(200));
    sigkill_self();
}

fn panic_holding(v: Value<u64>) {
    let _guard = v.lock().unwrap();
    panic!("panicking with the lock held");
}

/// Whether the lock looks poisoned from a worker.
fn sees_poison(a: Array<i32>) -> bool {
    a.lock().is_err()
}

#[test]
fn sigkilled_holder_poisons_the_lock() {
    let pool = ProcessPool::new(2).unwrap();
    let a = Array::from_slice(&(1..=10).collect::<Vec<i32>>()).unwrap();
    let err = pool
        .submit(die_holding_array, a.clone())
        .unwrap()
        .get()
        .unwrap_err();
    assert_eq!(err.signal(), Some(libc::SIGKILL), "{err}");

    assert!(a.is_poisoned());
    assert!(a.get(0).unwrap_err().is_poisoned());
    assert!(
        pool.submit(sees_poison, a.clone()).unwrap().get().unwrap(),
        "workers see it too"
    );
    // The poisoned data is there to take, half-written as the holder left it.
    let data = a
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .to_vec();
    assert_eq!(data, [-1, -2, -3, -4, -5, 6, 7, 8, 9, 10]);
    a.clear_poison();
    assert!(!pool.submit(sees_poison, a.clone()).unwrap().get().unwrap());
    a.set(0, 1).unwrap();
    assert_eq!(a.get(0).unwrap(), 1);
}

#[test]
fn sigkilled_value_holder_leaves_the_old_value_whole() {
    let pool = ProcessPool::new(1).unwrap();
    let v = Value::new(7u64).unwrap();
    let err = pool
        .submit(die_holding_value, v.clone())
        .unwrap()
        .get()
        .unwrap_err();
    assert!(err.is_crash());
    let poisoned = v.lock().unwrap_err();
    assert_eq!(
        *poisoned.into_inner(),
        7,
        "the guard's copy died with the process"
    );
    v.clear_poison();
    assert_eq!(v.update(|x| *x + 1).unwrap(), 8);
}

#[test]
fn waiting_locker_is_released_by_the_holders_death() {
    let pool = ProcessPool::new(1).unwrap();
    let v = Value::new(0u64).unwrap();
    let flag = Value::new(0u32).unwrap();
    let task = pool.submit(die_later, (v.clone(), flag.clone())).unwrap();
    while flag.load() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // The worker holds the lock now; this blocks until it dies, then reports the poison.
    let result = v.lock().map(|_| ());
    assert!(result.is_err(), "the lock was handed over poisoned");
    assert!(task.get().unwrap_err().is_crash());
}

#[test]
fn panicking_holder_poisons_and_the_worker_lives_on() {
    let pool = ProcessPool::new(1).unwrap();
    let before = pool.pids();
    let v = Value::new(1u64).unwrap();
    let err = pool
        .submit(panic_holding, v.clone())
        .unwrap()
        .get()
        .unwrap_err();
    assert!(err.is_panic());
    assert!(v.get().unwrap_err().is_poisoned());
    assert_eq!(pool.pids(), before);
    v.clear_poison();
    assert_eq!(v.get().unwrap(), 1);
}

#[test]
fn locking_twice_on_one_thread_panics_instead_of_deadlocking() {
    let v = Value::new(0u8).unwrap();
    let _held = v.lock().unwrap();
    let v2 = v.clone();
    let second = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _again = v2.lock();
    }));
    assert!(second.is_err());
}
