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

#[path = "common/child.rs"]
mod child;
#[path = "common/cpu.rs"]
mod cpu;

use cpu::thread_cpu;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use parpool::ThreadPool;

/// How long a scenario may run before it counts as hung (generous: under valgrind every
/// scenario runs tens of times slower, and the slowest takes seconds natively).
const CHILD_LIMIT: Duration = Duration::from_secs(120);

/// Runs `scenario` in a child process under a time bound; returns (success, stdout +
/// stderr). A child that outlives the bound is killed and reported as a failure.
fn run_child(scenario: &str) -> (bool, String) {
    let outcome = child::run_child(scenario, &[("RUST_BACKTRACE", "0")], &[], CHILD_LIMIT);
    let mut text = outcome.output;
    if outcome.timed_out {
        text.push_str("\n[killed: the scenario hung]");
    }
    (outcome.success, text)
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
    let Ok(scenario) = std::env::var(child::SCENARIO) else {
        return;
    };
    match scenario.as_str() {
        "iterator-panic-drops-items" => iterator_panic_drops_items(),
        "no-job-runs-while-unwinding" => no_job_runs_while_unwinding(),
        "drop-panic-task-result" => drop_panic_task_result(),
        "drop-panic-cancelled-capture" => drop_panic_cancelled_capture(),
        "drop-panic-chunk-results" => drop_panic_chunk_results(),
        "cross-pool-drop" => cross_pool_drop(),
        "failed-build-leaves-no-thread" => failed_build_leaves_no_thread(),
        "nested-waits-get" => nested_waits(false),
        "nested-waits-install" => nested_waits(true),
        "timed-wait-on-worker" => timed_wait_on_worker(),
        "timed-out-waiters-removed" => timed_out_waiters_removed(),
        "forked-waits-join" => forked_waits(false),
        "forked-waits-scope" => forked_waits(true),
        "deep-scope-off-pool-spawn" => deep_scope_off_pool_spawn(),
        "deep-scope-woken-by-off-pool-spawn" => deep_scope_woken_by_off_pool_spawn(),
        "recursive-get-1" => recursive_get(1),
        "recursive-get-2" => recursive_get(2),
        other => panic!("unknown scenario {other:?}"),
    }
    println!("SCENARIO_OK");
}

/// Counts the bytes this process has allocated and not freed.
struct CountingAlloc;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// An item borrowing the caller's stack, counting its drops there.
struct Item<'a>(&'a AtomicUsize);

impl Drop for Item<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[path = "common/scale.rs"]
mod scale;

/// Scale of the soak loops: `PARPOOL_TEST_SCALE=small` (under valgrind) runs fewer rounds.
fn rounds(normal: usize) -> usize {
    scale::scaled(normal, (normal / 10).max(1))
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

/// Defect 5: `join`'s `a` panics while `b` runs on another worker; the waiting worker runs
/// the tasks queued on its deque meanwhile. None of them may run inside the unwind: each
/// records `thread::panicking()`, and each panics while holding a mutex of its own, which
/// must come out poisoned.
fn no_job_runs_while_unwinding() {
    let pool = ThreadPool::new(2).unwrap();
    let saw_panicking = Arc::new(AtomicUsize::new(0));
    let unpoisoned = Arc::new(AtomicUsize::new(0));
    let total = rounds(200) * 20;
    pool.install(|| {
        for _ in 0..rounds(200) {
            let tasks = Mutex::new(Vec::new());
            // `b` is published first, so the idle worker steals it (thieves take the oldest
            // job); `a` queues the tasks behind it on this worker's deque, then panics.
            let joined = panic::catch_unwind(AssertUnwindSafe(|| {
                parpool::join(
                    || {
                        for _ in 0..20 {
                            let saw = Arc::clone(&saw_panicking);
                            let unpoisoned = Arc::clone(&unpoisoned);
                            let task = parpool::submit(move || {
                                if thread::panicking() {
                                    saw.fetch_add(1, Ordering::SeqCst);
                                }
                                let mutex = Mutex::new(0);
                                let _ = panic::catch_unwind(AssertUnwindSafe(|| {
                                    let _guard = mutex.lock().unwrap();
                                    panic!("task panics holding the lock");
                                }));
                                if !mutex.is_poisoned() {
                                    unpoisoned.fetch_add(1, Ordering::SeqCst);
                                }
                            });
                            tasks.lock().unwrap().push(task);
                        }
                        panic!("a fails");
                    },
                    || thread::sleep(Duration::from_micros(300)),
                )
            }));
            assert!(joined.is_err());
            for task in tasks.into_inner().unwrap() {
                task.get().unwrap();
            }
        }
    });
    println!("panicking={saw_panicking:?} unpoisoned={unpoisoned:?} of {total}");
    assert_eq!(saw_panicking.load(Ordering::SeqCst), 0);
    assert_eq!(unpoisoned.load(Ordering::SeqCst), 0);
}

#[test]
fn no_unrelated_job_runs_while_a_worker_unwinds() {
    assert_child_passes("no-job-runs-while-unwinding");
}

/// Counts its drops, then panics in `Drop` if armed.
#[derive(Debug)]
struct PanicOnDrop(Arc<AtomicUsize>, bool);

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        if self.1 {
            panic!("user Drop panics");
        }
    }
}

/// Defect 6, first place: a task's result whose handle is gone is dropped on the worker.
fn drop_panic_task_result() {
    let pool = ThreadPool::new(1).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    for _ in 0..10 {
        let drops = Arc::clone(&drops);
        drop(pool.submit(move || PanicOnDrop(drops, true)));
    }
    // The worker survives and serves.
    assert_eq!(pool.submit(|| 7).get().unwrap(), 7);
    drop(pool);
    assert_eq!(drops.load(Ordering::SeqCst), 10);
}

/// Defect 6, second place: a cancelled task's closure is dropped unrun on the worker.
fn drop_panic_cancelled_capture() {
    let pool = ThreadPool::new(1).unwrap();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel();
    let blocker = pool.submit(move || {
        started_tx.send(()).unwrap();
        let _ = gate.recv();
    });
    started.recv().unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    let captured = PanicOnDrop(Arc::clone(&drops), true);
    let queued = pool.submit(move || drop(captured));
    assert!(queued.cancel());
    release.send(()).unwrap();
    blocker.get().unwrap();
    assert!(queued.get().unwrap_err().is_cancelled());
    assert_eq!(pool.submit(|| 7).get().unwrap(), 7);
    drop(pool);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

/// Defect 6, third place: a chunk's earlier results are dropped on the worker after a later
/// item panicked; each of them panics in `Drop`. (Only that chunk's: results that reach the
/// caller are dropped there while the map unwinds, and a panicking `Drop` during an unwind
/// aborts in any Rust code.)
fn drop_panic_chunk_results() {
    let pool = ThreadPool::new(2).unwrap();
    let drops = Arc::new(AtomicUsize::new(0));
    for _ in 0..rounds(20) {
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.map_chunked(0..400, 100, |i| {
                if i == 250 {
                    panic!("item 250 fails");
                }
                PanicOnDrop(Arc::clone(&drops), (200..250).contains(&i))
            })
        }));
        let payload = caught.expect_err("the map must re-raise a panic");
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .unwrap_or("a Drop panic");
        assert!(
            message == "item 250 fails" || message == "user Drop panics",
            "{message}"
        );
    }
    assert_eq!(pool.map(0..10, |x| x + 1).len(), 10);
}

#[test]
fn user_drop_panics_on_workers_are_caught() {
    for scenario in [
        "drop-panic-task-result",
        "drop-panic-cancelled-capture",
        "drop-panic-chunk-results",
    ] {
        assert_child_passes(scenario);
    }
}

/// Defect 7: the last handle of pool A is dropped inside `b.install(..)` called from one of
/// A's own tasks. Before the fix, B's worker joined A's worker, which waited for that very
/// `install`: a deadlock.
fn cross_pool_drop() {
    let a = ThreadPool::new(1).unwrap();
    let b = Arc::new(ThreadPool::new(1).unwrap());
    let slot: Arc<Mutex<Option<ThreadPool>>> = Arc::new(Mutex::new(None));
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let task = {
        let slot = Arc::clone(&slot);
        let b = Arc::clone(&b);
        a.submit(move || {
            gate.recv().unwrap();
            b.install(|| drop(slot.lock().unwrap().take()));
            "dropped"
        })
    };
    *slot.lock().unwrap() = Some(a);
    go.send(()).unwrap();
    assert_eq!(task.get().unwrap(), "dropped");
    assert_eq!(b.install(|| 5), 5);
}

#[test]
fn dropping_a_pool_never_waits_on_a_thread_waiting_on_the_dropper() {
    assert_child_passes("cross-pool-drop");
}

/// The number of threads of this process.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Defect 8: a `thread_name` callback that panics, or returns a name with a NUL byte, at
/// index 2 of a 4-thread build: `build()` returns an error and no thread is left behind.
fn failed_build_leaves_no_thread() {
    let before = thread_count();
    for round in 0..10 {
        let builder = ThreadPool::builder().num_threads(4);
        let builder = if round % 2 == 0 {
            builder.thread_name(|i| {
                assert!(i < 2, "no name for {i}");
                format!("named-{i}")
            })
        } else {
            builder.thread_name(|i| format!("named-{i}{}", if i == 2 { "\0" } else { "" }))
        };
        let built = panic::catch_unwind(AssertUnwindSafe(|| builder.build()));
        let error = built
            .expect("build() must not unwind")
            .expect_err("the build must fail");
        assert!(error.is_thread_name(), "{error}");
        assert_eq!(error.thread_index(), Some(2), "{error}");
    }
    let after = thread_count();
    println!("threads before={before} after={after}");
    assert_eq!(before, after, "a failed build left threads behind");
}

#[test]
fn a_failed_build_returns_an_error_and_leaves_no_thread() {
    assert_child_passes("failed-build-leaves-no-thread");
}

thread_local! {
    /// How many tasks are waiting on this thread's stack.
    static WAITING: Cell<usize> = const { Cell::new(0) };
}

/// Defect 2: `n` tasks queued on 1-thread pool A each wait for pool B (`get` of a task, or
/// an `install`). Before the fix the waiting worker ran the next queued task on top of the
/// waiting one, so the stack held all `n` (a stack overflow at n = 6,000). The tasks
/// record how many of them were waiting on one stack at once: bounded now.
fn nested_waits(install: bool) {
    let a = ThreadPool::new(1).unwrap();
    let b = Arc::new(ThreadPool::new(1).unwrap());
    let deepest = Arc::new(AtomicUsize::new(0));
    let n = rounds(6000);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let b = Arc::clone(&b);
            let deepest = Arc::clone(&deepest);
            a.submit(move || {
                let depth = WAITING.with(|w| {
                    w.set(w.get() + 1);
                    w.get()
                });
                deepest.fetch_max(depth, Ordering::SeqCst);
                let sleep = || thread::sleep(Duration::from_micros(200));
                if install {
                    b.install(sleep);
                } else {
                    b.submit(sleep).get().unwrap();
                }
                WAITING.with(|w| w.set(w.get() - 1));
                i
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.get().unwrap(), i);
    }
    assert_bounded_stacking(n, &deepest);
}

#[test]
fn waiting_inside_a_worker_uses_a_bounded_stack() {
    assert_child_passes("nested-waits-get");
    assert_child_passes("nested-waits-install");
}

/// Defect 3: a task on 1-thread pool A waits for a slow task of pool B with a 10 ms
/// timeout while another job is queued on A. Before the fix the waiting worker ran that job
/// meanwhile and returned only when it ended; here the job ends only once the timed wait
/// has returned, so the old behaviour hangs (and the child is killed).
fn timed_wait_on_worker() {
    let a = ThreadPool::new(1).unwrap();
    let b = Arc::new(ThreadPool::new(1).unwrap());
    let (release_b, b_gate) = std::sync::mpsc::channel::<()>();
    let (queued, is_queued) = std::sync::mpsc::channel::<()>();
    let waiter = {
        let b = Arc::clone(&b);
        a.submit(move || {
            is_queued.recv().unwrap();
            let slow = b.submit(move || b_gate.recv().unwrap());
            let outcome = slow.get_timeout(Duration::from_millis(10));
            let timed_out = outcome.is_err_and(|e| e.is_timeout());
            let not_ready = !slow.wait_timeout(Duration::from_millis(1));
            (timed_out, not_ready)
        })
    };
    let (release_long, long_gate) = std::sync::mpsc::channel::<()>();
    let long = a.submit(move || long_gate.recv().unwrap());
    queued.send(()).unwrap();
    assert_eq!(waiter.get().unwrap(), (true, true));
    release_long.send(()).unwrap();
    long.get().unwrap();
    release_b.send(()).unwrap();
}

#[test]
fn a_timed_wait_on_a_worker_runs_no_other_job() {
    assert_child_passes("timed-wait-on-worker");
}

/// Defect 4: polling an unfinished task with `get_timeout(ZERO)` must not leave a waiter
/// behind per poll (before the fix: ~96 bytes each, for as long as the task ran).
fn timed_out_waiters_removed() {
    let pool = ThreadPool::new(1).unwrap();
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let task = pool.submit(move || gate.recv().unwrap());
    for _ in 0..100 {
        assert!(task.get_timeout(Duration::ZERO).unwrap_err().is_timeout());
    }
    let polls = rounds(100_000);
    let before = LIVE_BYTES.load(Ordering::SeqCst);
    for _ in 0..polls {
        assert!(task.get_timeout(Duration::ZERO).unwrap_err().is_timeout());
        assert!(!task.wait_timeout(Duration::ZERO));
    }
    let grown = LIVE_BYTES.load(Ordering::SeqCst).saturating_sub(before);
    println!("polls={polls} grown={grown} bytes");
    assert!(
        grown < 64 << 10,
        "{grown} bytes kept by {polls} timed-out polls"
    );
    release.send(()).unwrap();
    task.get_timeout(Duration::from_secs(60)).unwrap();
}

#[test]
fn timed_out_waits_leave_nothing_behind() {
    assert_child_passes("timed-out-waiters-removed");
}

/// `rec(d)` submits `rec(d - 1)` to its own pool and gets it: a recursion through tasks.
fn rec(pool: &Arc<ThreadPool>, d: usize) -> usize {
    if d == 0 {
        return 0;
    }
    let inner = Arc::clone(pool);
    pool.submit(move || rec(&inner, d - 1) + 1).get().unwrap()
}

/// Review R4: a recursion through `submit(..).get()` deeper than the nesting limit (16
/// waits) deadlocked a 1-thread pool at d = 17 (2 threads: d = 40), because a wait beyond
/// the limit blocked its worker while the task it waited for sat queued behind it. A wait
/// beyond the limit now claims that task and runs it inline, so the stack grows with the
/// program's recursion (as it did before issue 9) and the recursion completes.
fn recursive_get(threads: usize) {
    let pool = Arc::new(ThreadPool::new(threads).unwrap());
    for d in [17, 40, 1000] {
        assert_eq!(rec(&pool, d), d);
        // The same recursion started on a worker (the outermost wait runs jobs too).
        let inner = Arc::clone(&pool);
        assert_eq!(pool.install(move || rec(&inner, d)), d);
    }
    if threads == 1 {
        // 30 waits deep on the only worker: a timed wait for a queued task still runs no job
        // (it times out), and an untimed one then runs the task inline.
        let inner = Arc::clone(&pool);
        let (timed_out, value) = pool.install(move || bottom_of(&inner, 30));
        assert!(timed_out);
        assert_eq!(value, 5);
    }
    println!("threads={threads} depth=1000 ok");
}

/// At the bottom of a `depth`-deep recursion through tasks: whether a timed wait for a
/// queued task timed out, and that task's value from an untimed `get`.
fn bottom_of(pool: &Arc<ThreadPool>, depth: usize) -> (bool, u32) {
    if depth > 0 {
        let inner = Arc::clone(pool);
        return pool
            .submit(move || bottom_of(&inner, depth - 1))
            .get()
            .unwrap();
    }
    let queued = pool.submit(|| 5);
    let timed_out = queued
        .get_timeout(Duration::from_millis(20))
        .is_err_and(|e| e.is_timeout());
    (timed_out, queued.get().unwrap())
}

#[test]
fn recursive_get_deeper_than_the_nesting_limit_completes() {
    assert_child_passes("recursive-get-1");
    assert_child_passes("recursive-get-2");
}

/// Review R3: the waits for forked work — `join`'s wait for its stolen half and a
/// `scope`'s wait for its spawns — ran *any* job while waiting (stealing, the injector) at
/// any depth, so `n` queued tasks that each `join` or `scope` two naps stacked on one
/// worker in proportion to the queue (50 to 149 of 20,000 in the review), and with 32 KiB
/// of stack per task the process died of a stack overflow (here, with 2 threads: every
/// run, both kinds; with 4 to 16 threads this machine stacked only 8 to 14). Beyond the
/// nesting limit such a wait now runs only its own jobs and otherwise sleeps. Each task
/// here holds 32 KiB on its stack across its wait.
fn forked_waits(scope: bool) {
    let pool = ThreadPool::new(2).unwrap();
    let deepest = Arc::new(AtomicUsize::new(0));
    let n = rounds(20_000);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let deepest = Arc::clone(&deepest);
            pool.submit(move || {
                let ballast = std::hint::black_box([i as u8; 32 << 10]);
                let depth = WAITING.with(|w| {
                    w.set(w.get() + 1);
                    w.get()
                });
                deepest.fetch_max(depth, Ordering::SeqCst);
                let nap = || thread::sleep(Duration::from_micros(100));
                if scope {
                    parpool::scope(|s| {
                        s.spawn(|_| nap());
                        s.spawn(|_| nap());
                    });
                } else {
                    parpool::join(nap, nap);
                }
                WAITING.with(|w| w.set(w.get() - 1));
                std::hint::black_box(&ballast)[i % ballast.len()] as usize + i
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.get().unwrap(), i + i % 256);
    }
    assert_bounded_stacking(n, &deepest);
}

#[test]
fn waiting_for_forked_work_uses_a_bounded_stack() {
    assert_child_passes("forked-waits-join");
    assert_child_passes("forked-waits-scope");
}

/// `depth` scopes nested on the current worker (each level's job runs the next level),
/// then `bottom` in the innermost scope's body.
fn nest_scopes<'s>(depth: usize, bottom: &'s (dyn Fn(&parpool::Scope<'s>) + Sync)) {
    parpool::scope(|s: &parpool::Scope<'s>| {
        if depth == 0 {
            bottom(s);
        } else {
            s.spawn(move |_| nest_scopes(depth - 1, bottom));
        }
    });
}

/// Review R3, the reviewer's own fix: beyond the nesting limit a scope's wait no longer
/// takes injected jobs, and a job spawned into the scope from a thread outside the pool
/// used to be injected, so a 1-thread pool 30 scopes deep waited for ever for a job only
/// its one (waiting) worker could run. Such spawns now go to the scope's own queue, which
/// its waiter runs at any depth.
fn deep_scope_off_pool_spawn() {
    let pool = ThreadPool::new(1).unwrap();
    let ran = AtomicUsize::new(0);
    for _ in 0..rounds(20) {
        pool.install(|| {
            nest_scopes(30, &|s| {
                thread::scope(|t| {
                    t.spawn(|| {
                        s.spawn(|_| {
                            ran.fetch_add(1, Ordering::SeqCst);
                        });
                    });
                });
            });
        });
    }
    assert_eq!(ran.load(Ordering::SeqCst), rounds(20));
}

#[test]
fn a_deep_scope_runs_jobs_spawned_from_outside_the_pool() {
    assert_child_passes("deep-scope-off-pool-spawn");
}

/// Review R3, the other half: a scope's wait beyond the nesting limit that has nothing of
/// its own to run sleeps (it must not spin: the reviewer's fix yielded in a loop), and a
/// job spawned into the scope from outside the pool while it sleeps wakes it. Worker W0 is
/// 30 scopes deep; the innermost scope's job X runs on W1 and starts a thread that, after
/// 300 ms, spawns job Y into the scope; X then waits for Y without running anything (a
/// channel), so only W0 can run Y, and only if the spawn woke it. Y reads W0's CPU time:
/// from the innermost scope's body to Y, W0 mostly waited.
fn deep_scope_woken_by_off_pool_spawn() {
    let pool = ThreadPool::new(2).unwrap();
    // Occupy one worker while the other nests, so that nothing is stolen on the way down.
    let (release, gate) = std::sync::mpsc::channel::<()>();
    let (busy_tx, busy) = std::sync::mpsc::channel::<()>();
    let blocker = pool.submit(move || {
        busy_tx.send(()).unwrap();
        // Released when the sender is dropped.
        let _ = gate.recv();
    });
    busy.recv().unwrap();
    let release = Mutex::new(Some(release));
    let waited = Mutex::new(None);
    pool.install(|| {
        nest_scopes(30, &|s| {
            let waiter = thread::current().id();
            let before = thread_cpu();
            let waited = &waited;
            let (started_tx, started) = std::sync::mpsc::channel::<()>();
            let (done_tx, done) = std::sync::mpsc::channel::<()>();
            s.spawn(move |s| {
                started_tx.send(()).unwrap();
                thread::scope(|t| {
                    t.spawn(|| {
                        thread::sleep(Duration::from_millis(300));
                        s.spawn(move |_| {
                            let cpu = thread_cpu() - before;
                            let on_waiter = thread::current().id() == waiter;
                            *waited.lock().unwrap() = Some((cpu, on_waiter));
                            done_tx.send(()).unwrap();
                        });
                    });
                    done.recv().unwrap();
                });
            });
            // Free the other worker to steal X, and go on only once it has.
            drop(release.lock().unwrap().take());
            started.recv().unwrap();
        });
    });
    blocker.get().unwrap();
    let (cpu, on_waiter) = waited.into_inner().unwrap().expect("Y ran");
    println!("deep waiter cpu={cpu:?} over a 300 ms wait");
    assert!(on_waiter, "Y ran on another thread than the deep waiter");
    // Natively 0.2-0.3 ms, and a spinning waiter burnt 106 ms on a loaded machine. Under
    // valgrind (`PARPOOL_TEST_SCALE=small`), whose emulation slows the waiter's own few
    // steps ~100 times, 27 ms: half the wait is the bound there.
    let bound = scale::scaled(Duration::from_millis(30), Duration::from_millis(150));
    assert!(
        cpu < bound,
        "the deep waiter burned {cpu:?} of CPU while it waited 300 ms"
    );
}

#[test]
fn a_deep_scope_sleeps_and_is_woken_by_an_off_pool_spawn() {
    assert_child_passes("deep-scope-woken-by-off-pool-spawn");
}

/// The waits beyond the nesting limit (16) stack no more tasks on one worker: at most 17
/// were ever waiting on one thread's stack, whatever the queue held (`n` tasks).
fn assert_bounded_stacking(n: usize, deepest: &AtomicUsize) {
    let deepest = deepest.load(Ordering::SeqCst);
    println!("tasks={n} deepest={deepest}");
    assert!(
        deepest <= 17,
        "{deepest} waiting tasks stacked on one worker"
    );
}
