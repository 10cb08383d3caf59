//! The same behavioural suite against both task kinds (`Task` on a thread pool,
//! `ProcessTask` on a process pool): one macro, two instantiations. Plus `as_completed` and
//! `wait` over a mix of the two, with timeouts, and polling without growth.
#![cfg(all(feature = "process", target_os = "linux"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parpool::shm::Value;
use parpool::{Awaitable, ProcessPool, ReturnWhen, ThreadPool, as_completed, wait};

const LONG: Duration = Duration::from_secs(60);

/// A job that blocks until its gate (a shared-memory cell, so both kinds can use it) is
/// opened, then returns `value`.
fn gated((gate, value): (Value<u32>, u64)) -> u64 {
    while gate.load() == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    value
}

fn double(x: u64) -> u64 {
    2 * x
}

fn fails(x: u64) -> u64 {
    panic!("failed on {x}")
}

/// A gate: closed until `open`, or until dropped, so a test that fails before it opens its
/// gate fails instead of leaving the gated job to block the pool's drop.
struct Gate(Value<u32>);

impl Gate {
    fn new() -> Self {
        Gate(Value::new(0).unwrap())
    }
    fn open(&self) {
        self.0.store(1);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.open();
    }
}

/// The system allocator, counting the bytes each thread holds: a leak per poll shows on the
/// polling thread alone, whatever the tests running beside it allocate (the process's
/// resident set, measured before, moved with them).
struct PerThread;

thread_local! {
    /// Bytes allocated on this thread and not yet freed on it.
    static HELD: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: usize, sign: isize) {
    // Unavailable only while the thread's locals are torn down: nothing to measure then.
    let _ = HELD.try_with(|held| held.set(held.get() + sign * bytes as isize));
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counting touches no allocation.
unsafe impl GlobalAlloc for PerThread {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        // SAFETY: `ptr` came from `System.alloc` with `layout` (every allocation goes
        // through `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: PerThread = PerThread;

/// The bytes this thread holds from the allocator.
fn held_bytes() -> isize {
    HELD.with(Cell::get)
}

/// Thread tasks: a one-worker pool per test, so a gated task occupies it.
mod thread_kind {
    use super::*;

    pub(super) struct Kind(ThreadPool);

    impl Kind {
        pub(super) fn new() -> Self {
            Kind(ThreadPool::new(1).unwrap())
        }
        pub(super) fn run(&self, f: fn(u64) -> u64, x: u64) -> parpool::Task<u64> {
            self.0.submit(move || f(x))
        }
        pub(super) fn gated(&self, gate: &Gate, value: u64) -> parpool::Task<u64> {
            let cell = gate.0.clone();
            self.0.submit(move || gated((cell, value)))
        }
        /// Tasks that keep the only worker busy, so the next one stays queued.
        pub(super) fn occupy(&self, gate: &Gate) -> Vec<parpool::Task<u64>> {
            vec![self.gated(gate, 0)]
        }
    }
}

/// Process tasks: a one-process pool per test.
mod process_kind {
    use super::*;

    pub(super) struct Kind(ProcessPool);

    impl Kind {
        pub(super) fn new() -> Self {
            Kind(ProcessPool::new(1).unwrap())
        }
        pub(super) fn run(&self, f: fn(u64) -> u64, x: u64) -> parpool::process::ProcessTask<u64> {
            self.0.submit(f, x).unwrap()
        }
        pub(super) fn gated(&self, gate: &Gate, value: u64) -> parpool::process::ProcessTask<u64> {
            self.0.submit(gated, (gate.0.clone(), value)).unwrap()
        }
        /// A job counts as started once its worker has it, even behind another: two gated
        /// jobs keep the only worker and its queue slot busy.
        pub(super) fn occupy(&self, gate: &Gate) -> Vec<parpool::process::ProcessTask<u64>> {
            vec![self.gated(gate, 0), self.gated(gate, 0)]
        }
    }
}

macro_rules! task_suite {
    ($suite:ident, $kind:ident) => {
        mod $suite {
            use super::$kind::Kind;
            use super::*;

            #[test]
            fn get_wait_is_ready() {
                let kind = Kind::new();
                let task = kind.run(double, 21);
                task.wait();
                assert!(task.is_ready());
                assert_eq!(task.get().unwrap(), 42);
                let task = kind.run(double, 4);
                assert!(task.wait_timeout(LONG));
                assert_eq!(task.get().unwrap(), 8);
            }

            #[test]
            fn get_timeout_times_out_then_takes_once() {
                let kind = Kind::new();
                let gate = Gate::new();
                let task = kind.gated(&gate, 5);
                assert!(task.get_timeout(Duration::ZERO).unwrap_err().is_timeout());
                assert!(!task.wait_timeout(Duration::from_millis(5)));
                assert!(!task.is_ready());
                gate.open();
                assert_eq!(task.get_timeout(LONG).unwrap(), 5);
                assert!(task.get_timeout(Duration::ZERO).unwrap_err().is_taken());
                assert!(task.get().unwrap_err().is_taken());
            }

            #[test]
            fn a_panic_is_an_error() {
                let kind = Kind::new();
                let error = kind.run(fails, 3).get().unwrap_err();
                assert!(error.is_panic());
                assert_eq!(error.panic_message(), Some("failed on 3"));
                assert_eq!(kind.run(double, 1).get().unwrap(), 2);
            }

            #[test]
            fn cancel_only_before_start() {
                let kind = Kind::new();
                let gate = Gate::new();
                let busy = kind.occupy(&gate);
                let queued = kind.run(double, 1);
                assert!(queued.cancel());
                assert!(!queued.cancel());
                assert!(queued.is_ready());
                gate.open();
                for task in busy {
                    task.get().unwrap();
                }
                assert!(queued.get().unwrap_err().is_cancelled());
            }

            #[test]
            fn on_done_sees_the_value_the_panic_and_the_cancellation() {
                let kind = Kind::new();
                let gate = Gate::new();
                let busy = kind.occupy(&gate);
                let (sender, outcomes) = mpsc::channel();
                let (value, panic, cancelled) =
                    (kind.run(double, 5), kind.run(fails, 6), kind.run(double, 7));
                assert!(cancelled.cancel());
                for (name, task) in [("value", value), ("panic", panic), ("cancelled", cancelled)] {
                    let sender = sender.clone();
                    task.on_done(move |outcome| {
                        let seen = match outcome {
                            Ok(v) => format!("ok {v}"),
                            Err(e) if e.is_panic() => "panic".to_owned(),
                            Err(e) if e.is_cancelled() => "cancelled".to_owned(),
                            Err(e) => format!("unexpected {e}"),
                        };
                        sender.send((name, seen)).unwrap();
                    });
                }
                // The cancellation is delivered at once, before the gate opens.
                assert_eq!(
                    outcomes.recv().unwrap(),
                    ("cancelled", "cancelled".to_owned())
                );
                gate.open();
                let mut rest: Vec<_> = outcomes.iter().take(2).collect();
                rest.sort();
                assert_eq!(
                    rest,
                    [("panic", "panic".to_owned()), ("value", "ok 10".to_owned())]
                );
                for task in busy {
                    task.get().unwrap();
                }
            }

            #[test]
            fn as_completed_names_the_task_and_times_out() {
                let kind = Kind::new();
                let gate = Gate::new();
                let tasks = vec![kind.gated(&gate, 1), kind.gated(&gate, 2)];
                let mut done = as_completed(&tasks).timeout(Duration::from_millis(30));
                assert!(done.next().is_none());
                assert!(done.timed_out());
                assert_eq!(done.into_pending().len(), 2);
                gate.open();
                let order: Vec<usize> = as_completed(&tasks).map(|(i, _)| i).collect();
                assert_eq!(order, [0, 1]);
            }

            #[test]
            fn wait_with_each_condition() {
                let kind = Kind::new();
                let gate = Gate::new();
                let tasks = vec![kind.run(fails, 0), kind.gated(&gate, 1)];
                let (done, pending) = wait(&tasks, ReturnWhen::FirstException, Some(LONG));
                assert_eq!(done.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0]);
                assert_eq!(pending.len(), 1);
                let (done, pending) = wait(&tasks, ReturnWhen::FirstCompleted, Some(LONG));
                assert_eq!((done.len(), pending.len()), (1, 1));
                let quick = Some(Duration::from_millis(20));
                let (done, pending) = wait(&tasks, ReturnWhen::AllCompleted, quick);
                assert_eq!((done.len(), pending.len()), (1, 1));
                gate.open();
                let (done, pending) = wait(&tasks, ReturnWhen::AllCompleted, None);
                assert_eq!((done.len(), pending.len()), (2, 0));
            }

            #[test]
            fn polling_with_a_zero_timeout_does_not_grow_memory() {
                let kind = Kind::new();
                let gate = Gate::new();
                let task = kind.gated(&gate, 9);
                // Warm up allocator caches, then count.
                for _ in 0..1_000 {
                    assert!(task.get_timeout(Duration::ZERO).unwrap_err().is_timeout());
                }
                let before = held_bytes();
                for _ in 0..100_000 {
                    assert!(task.get_timeout(Duration::ZERO).unwrap_err().is_timeout());
                }
                let grown = held_bytes() - before;
                // A waiter left behind per poll would be >= 100 bytes each: >= 10 MB.
                assert!(
                    grown < 2 << 20,
                    "this thread's memory grew by {grown} bytes"
                );
                gate.open();
                assert_eq!(task.get().unwrap(), 9);
            }
        }
    };
}

task_suite!(thread_tasks, thread_kind);
task_suite!(process_tasks, process_kind);

fn process_pool() -> &'static ProcessPool {
    static POOL: OnceLock<ProcessPool> = OnceLock::new();
    POOL.get_or_init(|| ProcessPool::new(1).unwrap())
}

#[test]
fn as_completed_and_wait_over_a_mix_of_kinds() {
    let threads = ThreadPool::new(1).unwrap();
    let gate = Arc::new(Gate::new());
    let cell = gate.0.clone();
    let thread_task = threads.submit(move || gated((cell, 1)));
    let process_task = process_pool().submit(double, 21).unwrap();
    let mixed: [&dyn Awaitable; 2] = [&thread_task, &process_task];
    let mut done = as_completed(mixed).timeout(LONG);
    assert_eq!(done.next().map(|(i, _)| i), Some(1));
    drop(done);
    let (done, pending) = wait(
        mixed,
        ReturnWhen::AllCompleted,
        Some(Duration::from_millis(20)),
    );
    assert_eq!((done.len(), pending.len()), (1, 1));
    gate.open();
    let (done, pending) = wait(mixed, ReturnWhen::AllCompleted, None);
    assert_eq!((done.len(), pending.len()), (2, 0));
    assert_eq!(thread_task.get().unwrap(), 1);
    assert_eq!(process_task.get().unwrap(), 42);
}
