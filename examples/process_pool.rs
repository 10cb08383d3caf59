//! A process pool whose jobs crash, hang and panic, while the map goes on: each failure is
//! one item's error, and a shared-memory counter counts the jobs that finished.
//!
//! ```text
//! cargo run --release --example process_pool
//! ```

use std::time::{Duration, Instant};

use parpool::ProcessPool;
use parpool::shm::Value;

/// Squares `x`, except for a few items that fail in every way a process can.
fn risky((x, done): (u64, Value<u64>)) -> u64 {
    match x {
        13 => std::process::abort(),
        26 => panic!("item {x} panicked"),
        39 => loop {
            std::thread::sleep(Duration::from_millis(10));
        },
        _ => {}
    }
    done.fetch_add(1);
    x * x
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pool = ProcessPool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(500))
        .build()?;
    let done = Value::new(0u64)?;
    let start = Instant::now();
    let items = (0..50u64).map(|x| (x, done.clone()));
    for (x, result) in (0..).zip(pool.imap(items, risky)) {
        match result {
            Ok(y) => assert_eq!(y, x * x),
            Err(e) => println!("item {x:>2}: {e}"),
        }
    }
    println!(
        "{} of 50 jobs finished in {:.0?}; the pool replaced its crashed workers: {:?}",
        done.load(),
        start.elapsed(),
        pool.pids()
    );
    Ok(())
}
