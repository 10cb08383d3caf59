//! Shared memory between process-pool jobs: a `Value` and an `Array` written by workers and
//! read by the parent (Python's `multiprocessing.Value('d', 0.0)` / `Array('i', range(10))`),
//! and a counter incremented from every worker under the lock and with lock-free atomics,
//! with the exact total checked and the rate measured. Run with
//! `cargo run --release --example shm_counter -- [--increments N]`.

use std::time::Instant;

use parpool::ProcessPool;
use parpool::shm::{Array, Value};

/// The number of the Python documentation's `multiprocessing.Value` example.
#[expect(
    clippy::approx_constant,
    reason = "the documentation example's literal, not π"
)]
const DOCS_NUMBER: f64 = 3.1415927;

/// The classic: a worker sets a number and negates an array the parent made.
fn fill((number, array): (Value<f64>, Array<i32>)) {
    number.set(DOCS_NUMBER).expect("lock");
    array
        .lock()
        .expect("lock")
        .iter_mut()
        .for_each(|x| *x = -*x);
}

/// `n` increments, each with the lock held across the read-modify-write.
fn add_locked((counter, n): (Value<u64>, u64)) {
    for _ in 0..n {
        counter.update(|x| *x += 1).expect("lock");
    }
}

/// `n` increments with the atomic `fetch_add`, no lock.
fn add_atomic((counter, n): (Value<u64>, u64)) {
    for _ in 0..n {
        counter.fetch_add(1);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut increments = 100_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--increments" => {
                increments = args.next().ok_or("--increments needs a value")?.parse()?;
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let workers = 2;
    let pool = ProcessPool::new(workers)?;

    // Made after the workers started: the handles carry their memory to them.
    let number = Value::new(0.0f64)?;
    let array = Array::from_slice(&(0..10).collect::<Vec<i32>>())?;
    pool.submit(fill, (number.clone(), array.clone()))?.get()?;
    println!(
        "a worker wrote: number = {}, array = {:?}",
        number.get()?,
        array.to_vec()?
    );
    assert_eq!(number.get()?, DOCS_NUMBER);
    assert_eq!(
        array.to_vec()?,
        (0..10).map(|x: i32| -x).collect::<Vec<_>>()
    );

    for (name, job) in [
        ("locked", add_locked as fn((Value<u64>, u64))),
        ("atomic", add_atomic),
    ] {
        let counter = Value::new(0u64)?;
        let start = Instant::now();
        let jobs: Vec<_> = (0..workers)
            .map(|_| pool.submit(job, (counter.clone(), increments)))
            .collect::<Result<_, _>>()?;
        for job in jobs {
            job.get()?;
        }
        let elapsed = start.elapsed();
        let total = counter.get()?;
        let expected = workers as u64 * increments;
        println!(
            "{name:>6}: {workers} workers x {increments} increments = {total} \
             (expected {expected}) in {elapsed:.2?}, {:.1}M increments/s",
            total as f64 / elapsed.as_secs_f64() / 1e6
        );
        if total != expected {
            return Err(format!("{name} counter lost updates: {total} != {expected}").into());
        }
    }
    println!("every total exact");
    Ok(())
}
