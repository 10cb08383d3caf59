//! Model checks of the scheduler's own primitives with loom.
//!
//! Run with `RUSTFLAGS="--cfg parpool_loom" cargo test --release --lib loom` (`.ci/run`
//! does). Each model explores every interleaving (bounded by `LOOM_MAX_PREEMPTIONS`) of a
//! small scenario and fails on a deadlock (a lost wake-up), a data race, or a failed
//! assertion.

use std::sync::Arc;

use loom::sync::atomic::AtomicBool;
use loom::thread;

use super::completion::{Completion, Taken};
use super::latch::{CoreLatch, Latch, Wait, WaitLatch};
use super::sleep::Sleep;
use crate::sync::Ordering;

/// A latch set by one thread while another spins, then parks: the waiter always wakes and
/// sees what the setter wrote before setting.
#[test]
fn loom_wait_latch_hand_off() {
    loom::model(|| {
        let latch = Arc::new(WaitLatch::for_current_thread(Wait::Unrelated));
        let data = Arc::new(AtomicBool::new(false));
        let setter = {
            let (latch, data) = (Arc::clone(&latch), Arc::clone(&data));
            thread::spawn(move || {
                data.store(true, Ordering::Relaxed);
                // SAFETY: the Arc keeps the latch alive.
                unsafe { WaitLatch::set(&*latch) };
            })
        };
        latch.wait();
        assert!(
            data.load(Ordering::Relaxed),
            "latch set before the data was visible"
        );
        setter.join().unwrap();
    });
}

/// A publisher pushes one job while a worker runs its idle loop (search, sleepy, sleep):
/// the worker always ends up running the job, whichever way the two interleave.
#[test]
fn loom_sleep_no_lost_wake_up() {
    loom::model(|| {
        let sleep = Arc::new(Sleep::new(1));
        let queue = Arc::new(AtomicBool::new(false));
        let worker = {
            let (sleep, queue) = (Arc::clone(&sleep), Arc::clone(&queue));
            thread::spawn(move || {
                let never_set = CoreLatch::new();
                let mut idle = sleep.start_looking(0);
                loop {
                    if queue.swap(false, Ordering::AcqRel) {
                        sleep.work_found();
                        return;
                    }
                    // The job stands for a push onto another worker's deque, which the
                    // last-chance injector check does not see.
                    sleep.no_work_found(&mut idle, &never_set, || false);
                }
            })
        };
        // The stand-in for a deque push is an RMW: loom orders a plain store against another
        // thread's RMW only by causality, and then explores executions that break RMW
        // atomicity (a load after one's own store returning an older value).
        queue.swap(true, Ordering::AcqRel);
        sleep.new_jobs(1, true);
        worker.join().unwrap();
    });
}

/// A worker starting while its pool is built skips its first search (see
/// `Sleep::start_asleep`); the builder ends the build, then publishes a job the injector
/// check does not see (a push onto another worker's deque). The worker always ends up
/// running it: asleep, it is woken; not yet registered, its registration fails; or it sees
/// the build ended and searches.
#[test]
fn loom_start_asleep_misses_no_job() {
    loom::model(|| {
        let sleep = Arc::new(Sleep::new(1));
        let building = Arc::new(AtomicBool::new(true));
        let queue = Arc::new(AtomicBool::new(false));
        let worker = {
            let (sleep, building, queue) = (
                Arc::clone(&sleep),
                Arc::clone(&building),
                Arc::clone(&queue),
            );
            thread::spawn(move || {
                let never_set = CoreLatch::new();
                sleep.start_asleep(0, &never_set, || building.load(Ordering::Acquire), || false);
                let mut idle = sleep.start_looking(0);
                loop {
                    if queue.swap(false, Ordering::AcqRel) {
                        sleep.work_found();
                        return;
                    }
                    sleep.no_work_found(&mut idle, &never_set, || false);
                }
            })
        };
        building.store(false, Ordering::Release);
        queue.swap(true, Ordering::AcqRel);
        sleep.new_jobs(1, true);
        worker.join().unwrap();
    });
}

/// A worker waiting for a latch (a stolen `join` half) that goes to sleep while another
/// thread sets the latch: the setter's swap sees SLEEPING and wakes it, or the worker sees
/// the latch set before blocking.
#[test]
fn loom_latch_wakes_sleeping_worker() {
    loom::model(|| {
        let sleep = Arc::new(Sleep::new(1));
        let latch = Arc::new(CoreLatch::new());
        let worker = {
            let (sleep, latch) = (Arc::clone(&sleep), Arc::clone(&latch));
            thread::spawn(move || {
                let mut idle = sleep.start_looking(0);
                while !latch.probe() {
                    sleep.no_work_found(&mut idle, &latch, || false);
                }
                sleep.work_found();
            })
        };
        // SAFETY: the Arc keeps the latch alive across the call.
        if unsafe { CoreLatch::set(&*latch) } {
            sleep.notify_worker_latch_is_set(0);
        }
        worker.join().unwrap();
    });
}

/// A job finishing while its owner registers a wake-up hook: the hook runs exactly once,
/// and after it the outcome is there to take.
#[test]
fn loom_completion_hook_races_completion() {
    loom::model(|| {
        let shared = Arc::new(Completion::<Result<u32, ()>>::new());
        let runner = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                if shared.start() {
                    shared.complete(Ok(7));
                }
            })
        };
        let ran = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let for_hook = Arc::clone(&ran);
        shared.add_hook(Box::new(move || {
            for_hook.fetch_add(1, Ordering::Relaxed);
        }));
        runner.join().unwrap();
        assert_eq!(ran.load(Ordering::Relaxed), 1, "hook lost or run twice");
        assert!(shared.is_finished());
        assert!(matches!(shared.take(), Taken::Outcome(Ok(7))));
        assert!(matches!(shared.take(), Taken::Gone));
    });
}

/// `cancel` racing the runner's `start`: exactly one wins, and a cancelled job reports
/// cancellation.
#[test]
fn loom_completion_cancel_races_start() {
    loom::model(|| {
        let shared = Arc::new(Completion::<Result<u32, ()>>::new());
        let runner = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let started = shared.start();
                if started {
                    shared.complete(Ok(1));
                }
                started
            })
        };
        let cancelled = shared.cancel();
        let started = runner.join().unwrap();
        assert!(
            cancelled != started,
            "cancel and start both won or both lost"
        );
        assert_eq!(matches!(shared.take(), Taken::Cancelled), cancelled);
    });
}

/// A delivery without a claim (a process pool failing a job it never sent) racing
/// `cancel`, with a waiter's hook registered: exactly one finishes the job, the hook runs
/// once, and the outcome is there exactly when the delivery won.
#[test]
fn loom_completion_delivery_races_cancel() {
    loom::model(|| {
        let shared = Arc::new(Completion::<Result<u32, ()>>::new());
        let ran = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let for_hook = Arc::clone(&ran);
        shared.add_hook(Box::new(move || {
            for_hook.fetch_add(1, Ordering::Relaxed);
        }));
        let deliverer = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || shared.complete(Err(())))
        };
        let cancelled = shared.cancel();
        let delivered = deliverer.join().unwrap();
        assert!(cancelled != delivered, "both or neither finished the job");
        assert_eq!(ran.load(Ordering::Relaxed), 1, "hook lost or run twice");
        assert_eq!(matches!(shared.take(), Taken::Outcome(Err(()))), delivered);
    });
}

/// A timed waiter that gives up removes its hook while the job finishes: the hook is
/// either removed, and never runs, or runs exactly once.
#[test]
fn loom_completion_hook_removal_races_completion() {
    loom::model(|| {
        let shared = Arc::new(Completion::<Result<u32, ()>>::new());
        let ran = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let for_hook = Arc::clone(&ran);
        let hook = shared.add_hook(Box::new(move || {
            for_hook.fetch_add(1, Ordering::Relaxed);
        }));
        let runner = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                assert!(shared.start());
                shared.complete(Ok(3));
            })
        };
        let removed = shared.remove_hook(hook);
        runner.join().unwrap();
        let expected = if removed { 0 } else { 1 };
        assert_eq!(ran.load(Ordering::Relaxed), expected, "removed hook ran");
    });
}

/// A worker waiting beyond the nesting limit blocks on its scope's latch without
/// registering as an idle sleeper (`Sleep::block_on_latch`), while a thread outside the
/// pool queues a job for it and pokes the latch: the worker always runs the job, because it
/// sees the job before blocking, or its block fails, or the poke wakes it.
#[test]
fn loom_poke_wakes_worker_blocked_on_latch() {
    loom::model(|| {
        let sleep = Arc::new(Sleep::new(1));
        let latch = Arc::new(CoreLatch::new());
        let queue = Arc::new(AtomicBool::new(false));
        let worker = {
            let (sleep, latch, queue) =
                (Arc::clone(&sleep), Arc::clone(&latch), Arc::clone(&queue));
            thread::spawn(move || {
                while !queue.swap(false, Ordering::AcqRel) {
                    sleep.block_on_latch(0, &latch, || queue.load(Ordering::Relaxed));
                }
            })
        };
        // The spawn: push (an RMW, as in the models above), then poke.
        queue.swap(true, Ordering::AcqRel);
        if latch.poke() {
            sleep.notify_worker_latch_is_set(0);
        }
        worker.join().unwrap();
    });
}

/// The same worker, with nothing to run, while another thread sets its latch (a stolen
/// `join` half finishing): the setter's swap sees SLEEPING and wakes it, though it is not
/// counted as a sleeper, or the worker sees the latch set before blocking.
#[test]
fn loom_latch_wakes_worker_blocked_on_latch() {
    loom::model(|| {
        let sleep = Arc::new(Sleep::new(1));
        let latch = Arc::new(CoreLatch::new());
        let worker = {
            let (sleep, latch) = (Arc::clone(&sleep), Arc::clone(&latch));
            thread::spawn(move || {
                while !latch.probe() {
                    sleep.block_on_latch(0, &latch, || false);
                }
            })
        };
        // SAFETY: the Arc keeps the latch alive across the call.
        if unsafe { CoreLatch::set(&*latch) } {
            sleep.notify_worker_latch_is_set(0);
        }
        worker.join().unwrap();
        assert_eq!(sleep.sleeping_workers(), 0);
    });
}
