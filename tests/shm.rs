//! Shared memory: `Value` and `Array` on their own and as arguments and results of
//! process-pool jobs, exact totals under contention from two processes, and segments that
//! are freed once the last handle is gone.
#![cfg(all(feature = "process", target_os = "linux"))]

use std::os::unix::fs::MetadataExt;
use std::sync::OnceLock;

use parpool::ProcessPool;
use parpool::shm::{Array, Pod, Value};

fn pool() -> &'static ProcessPool {
    static POOL: OnceLock<ProcessPool> = OnceLock::new();
    POOL.get_or_init(|| ProcessPool::new(2).expect("pool starts"))
}

/// The inode of a handle's memory file (from its serialised form).
fn inode_of(handle: &impl serde::Serialize) -> u64 {
    let json = serde_json::to_value(handle).unwrap();
    json["id"]["ino"].as_u64().unwrap()
}

/// How many descriptors of this process are the memory file `ino`.
fn fds_of(ino: u64) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino))
        .count()
}

/// How many mappings of the memory file `ino` process `pid` has (`/proc/<pid>/maps`).
fn maps_of(pid: u32, ino: u64) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("memfd:parpool-shm"))
        .filter(|l| l.split_whitespace().nth(4) == Some(&ino.to_string()))
        .count()
}

fn dev_shm() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn smoke_value() {
    let v = Value::new(1.5f64).unwrap();
    assert_eq!(v.get().unwrap(), 1.5);
    v.set(2.5).unwrap();
    assert_eq!(v.update(|x| *x * 2.0).unwrap(), 5.0);
    *v.lock().unwrap() += 1.0;
    assert_eq!(v.get().unwrap(), 3.5);
    let w = v.clone();
    w.set(-1.0).unwrap();
    assert_eq!(v.get().unwrap(), -1.0, "a clone is the same memory");
}

#[test]
fn smoke_array() {
    let a = Array::from_slice(&[1i32, 2, 3]).unwrap();
    assert_eq!(a.len(), 3);
    assert_eq!(a.get(2).unwrap(), 3);
    a.set(0, 10).unwrap();
    a.lock().unwrap()[1] = 20;
    assert_eq!(a.to_vec().unwrap(), [10, 20, 3]);
    let z = Array::<u64>::zeroed(1000).unwrap();
    assert!(z.to_vec().unwrap().iter().all(|&x| x == 0));
    let empty = Array::<u8>::zeroed(0).unwrap();
    assert!(empty.is_empty() && empty.to_vec().unwrap().is_empty());
}

#[test]
fn out_of_bounds_is_an_error_not_an_access() {
    let a = Array::from_slice(&[0u8; 4]).unwrap();
    for index in [4, 5, usize::MAX] {
        assert!(a.get(index).unwrap_err().is_out_of_bounds());
        assert!(a.set(index, 1).unwrap_err().is_out_of_bounds());
    }
    assert_eq!(a.to_vec().unwrap(), [0; 4]);
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
struct Particle {
    pos: [f32; 3],
    id: u32,
}

// SAFETY: f32s and a u32: every bit pattern is valid, no pointers.
unsafe impl Pod for Particle {}

fn nudge(p: Value<Particle>) -> u32 {
    p.update(|p| p.pos[0] += 1.0).unwrap();
    p.get().unwrap().id
}

#[test]
fn user_pod_types_cross_processes() {
    let p = Value::new(Particle {
        pos: [0.0, 1.0, 2.0],
        id: 7,
    })
    .unwrap();
    assert_eq!(pool().submit(nudge, p.clone()).unwrap().get().unwrap(), 7);
    assert_eq!(p.get().unwrap().pos, [1.0, 1.0, 2.0]);
}

/// The number of the Python docs' `multiprocessing.Value` example.
#[expect(clippy::approx_constant, reason = "the literal of the example, not π")]
const PI_ISH: f64 = 3.1415927;

fn pi_and_negate((num, arr): (Value<f64>, Array<i32>)) {
    num.set(PI_ISH).unwrap();
    for x in arr.lock().unwrap().iter_mut() {
        *x = -*x;
    }
}

#[test]
fn worker_writes_parent_sees() {
    // The example of the Python docs: Value('d', 0.0) and Array('i', range(10)).
    let num = Value::new(0.0f64).unwrap();
    let arr = Array::from_slice(&(0..10).collect::<Vec<i32>>()).unwrap();
    pool()
        .submit(pi_and_negate, (num.clone(), arr.clone()))
        .unwrap()
        .get()
        .unwrap();
    assert_eq!(num.get().unwrap(), PI_ISH);
    assert_eq!(
        arr.to_vec().unwrap(),
        (0..10).map(|x| -x).collect::<Vec<i32>>()
    );
}

fn locked_increments((counter, n): (Value<u64>, u64)) {
    for _ in 0..n {
        *counter.lock().unwrap() += 1;
    }
}

#[test]
fn stress_locked_increments_from_two_workers_are_exact() {
    let counter = Value::new(0u64).unwrap();
    pool()
        .map_chunked(vec![(counter.clone(), 100_000); 2], 1, locked_increments)
        .unwrap();
    assert_eq!(counter.get().unwrap(), 200_000);
}

fn atomic_increments((counter, n): (Value<u64>, u64)) {
    for _ in 0..n {
        counter.fetch_add(1);
    }
}

#[test]
fn stress_fetch_add_from_two_workers_is_exact() {
    let counter = Value::new(0u64).unwrap();
    pool()
        .map_chunked(vec![(counter.clone(), 1_000_000); 2], 1, atomic_increments)
        .unwrap();
    assert_eq!(counter.load(), 2_000_000);
}

fn cas_loop((v, n): (Value<i32>, i32)) {
    for _ in 0..n {
        let mut current = v.load();
        while let Err(actual) = v.compare_exchange(current, current - 1) {
            current = actual;
        }
    }
}

#[test]
fn compare_exchange_from_two_workers_is_exact() {
    let v = Value::new(0i32).unwrap();
    pool()
        .map_chunked(vec![(v.clone(), 50_000); 2], 1, cas_loop)
        .unwrap();
    assert_eq!(v.load(), -100_000);
    v.store(5);
    assert_eq!(v.get().unwrap(), 5);
}

fn read_value(v: Value<i64>) -> i64 {
    v.get().unwrap()
}

#[test]
fn values_made_after_the_workers_started_reach_them() {
    let pool = ProcessPool::new(2).unwrap();
    assert_eq!(pool.map([1u8, 2], |x: u8| x).unwrap(), [1, 2]); // the workers run
    for i in 0..5 {
        let v = Value::new(i * 11).unwrap();
        // Every worker gets it (one item per job, more jobs than workers).
        let seen = pool.map_chunked(vec![v.clone(); 6], 1, read_value).unwrap();
        assert_eq!(seen, vec![i * 11; 6]);
        v.set(-i).unwrap();
        assert_eq!(pool.submit(read_value, v).unwrap().get().unwrap(), -i);
    }
}

fn make_in_worker(n: i32) -> (Value<i32>, Array<i32>) {
    let v = Value::new(n).unwrap();
    let a = Array::from_slice(&[n, n + 1, n + 2]).unwrap();
    (v, a)
}

fn bump((v, a): (Value<i32>, Array<i32>)) -> i32 {
    a.set(0, 0).unwrap();
    v.fetch_add(1)
}

#[test]
fn handles_made_in_a_worker_work_in_the_parent() {
    let (v, a) = pool().submit(make_in_worker, 40).unwrap().get().unwrap();
    assert_eq!(v.get().unwrap(), 40);
    assert_eq!(a.to_vec().unwrap(), [40, 41, 42]);
    v.set(100).unwrap();
    // ... and go back to a worker.
    assert_eq!(
        pool()
            .submit(bump, (v.clone(), a.clone()))
            .unwrap()
            .get()
            .unwrap(),
        100
    );
    assert_eq!(v.get().unwrap(), 101);
    assert_eq!(a.to_vec().unwrap(), [0, 41, 42]);
    // Through map too.
    let made = pool().map([1, 2, 3], make_in_worker).unwrap();
    for (i, (v, a)) in made.into_iter().enumerate() {
        assert_eq!(v.get().unwrap(), i as i32 + 1);
        assert_eq!(a.len(), 3);
    }
}

#[test]
fn unknown_segments_are_a_clear_error() {
    // Serialised outside a pool message, then the memory is freed: the bytes name nothing.
    let json = serde_json::to_string(&Value::new(1u32).unwrap()).unwrap();
    let err = serde_json::from_str::<Value<u32>>(&json).unwrap_err();
    assert!(err.to_string().contains("is not known in process"), "{err}");
    let bytes = postcard::to_allocvec(&Array::from_slice(&[1u8]).unwrap()).unwrap();
    assert!(postcard::from_bytes::<Array<u8>>(&bytes).is_err());

    // While the memory lives, this process finds it; as another type, it does not.
    let v = Value::new(7u32).unwrap();
    let json = serde_json::to_string(&v).unwrap();
    assert_eq!(
        serde_json::from_str::<Value<u32>>(&json)
            .unwrap()
            .get()
            .unwrap(),
        7
    );
    let err = serde_json::from_str::<Value<f32>>(&json).unwrap_err();
    assert!(
        err.to_string().contains("not values of type `f32`"),
        "{err}"
    );
    let err = serde_json::from_str::<Array<u32>>(&json);
    assert!(err.is_ok(), "a Value is an Array of one");
    assert!(
        serde_json::from_str::<Value<u32>>(
            &serde_json::to_string(&Array::from_slice(&[1u32, 2]).unwrap()).unwrap()
        )
        .is_err()
    );
}

fn decode_foreign(json: String) -> String {
    match serde_json::from_str::<Value<u32>>(&json) {
        Ok(_) => "found".to_owned(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn handles_sent_outside_a_pool_message_are_unknown_in_a_worker() {
    let v = Value::new(3u32).unwrap();
    // The JSON travels as a plain string: no descriptor goes with it.
    let json = serde_json::to_string(&v).unwrap();
    let message = pool().submit(decode_foreign, json).unwrap().get().unwrap();
    assert!(message.contains("is not known in process"), "{message}");
}

#[test]
fn segments_are_freed_after_the_last_handle() {
    let pool = ProcessPool::new(1).unwrap();
    let worker = pool.pids()[0];
    let shm_before = dev_shm();
    let (v_ino, a_ino) = {
        let v = Value::new(1u64).unwrap();
        let a = Array::<u8>::zeroed(1 << 20).unwrap();
        let inodes = (inode_of(&v), inode_of(&a));
        assert_eq!((fds_of(inodes.0), fds_of(inodes.1)), (1, 1));
        pool.submit(bump_both, (v.clone(), a.clone()))
            .unwrap()
            .get()
            .unwrap();
        pool.submit(bump_both, (v.clone(), a.clone()))
            .unwrap()
            .get()
            .unwrap();
        assert_eq!(v.load(), 3);
        assert_eq!(
            maps_of(worker, inodes.0),
            1,
            "the worker maps each segment once"
        );
        assert_eq!(maps_of(worker, inodes.1), 1);
        inodes
    };
    assert_eq!(
        (fds_of(v_ino), fds_of(a_ino)),
        (0, 0),
        "no memfd left in the parent"
    );
    // The worker lets go once told; the release travels like a job, so wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while maps_of(worker, v_ino) + maps_of(worker, a_ino) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker kept the segments"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(dev_shm(), shm_before, "nothing was named in /dev/shm");
}

fn bump_both((v, a): (Value<u64>, Array<u8>)) {
    v.fetch_add(1);
    a.set(0, 1).unwrap();
}

/// Locks a `Value` and an `Array` in its destructor (logging under the lock, say).
struct LocksWhenDropped(Value<u64>, Array<u8>);

impl Drop for LocksWhenDropped {
    fn drop(&mut self) {
        *self.0.lock().unwrap() += 1;
        self.1.lock().unwrap()[0] += 1;
    }
}

/// A guard taken while a panic already unwinds (in a destructor) finished its update: the
/// lock is not poisoned, as with `std::sync::Mutex`; a panic that stops a holder still
/// poisons it.
#[test]
fn guards_taken_during_unwinding_do_not_poison() {
    let value = Value::new(0u64).unwrap();
    let array = Array::from_slice(&[0u8]).unwrap();
    let user = LocksWhenDropped(value.clone(), array.clone());
    std::thread::spawn(move || {
        let _user = user;
        panic!("unwinds through a destructor that locks");
    })
    .join()
    .unwrap_err();
    assert!(!value.is_poisoned());
    assert!(!array.is_poisoned());
    assert_eq!(value.get().unwrap(), 1);
    assert_eq!(array.to_vec().unwrap(), [1]);

    let (v, a) = (value.clone(), array.clone());
    std::thread::spawn(move || {
        let _value = v.lock().unwrap();
        let _array = a.lock().unwrap();
        panic!("stops a holder");
    })
    .join()
    .unwrap_err();
    assert!(value.is_poisoned());
    assert!(array.is_poisoned());
}
