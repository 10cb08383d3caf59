//! The `Progress` callback through the crate-internal `Active` calls the maps make: its rate
//! bound, its final call, a panicking callback, calls that never overlap, and a callback
//! that counts into its own progress.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Active, Progress, ProgressUpdate, Watch};

/// A progress whose callback records every update, and the record.
fn recording(every: Duration) -> (Progress, Arc<Mutex<Vec<ProgressUpdate>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let progress = Progress::with_callback(every, move |update| log.lock().unwrap().push(update));
    (progress, seen)
}

/// The active watch of a block watched by `progress` alone.
fn active_for(progress: &Progress) -> Active {
    Active::nested_in(None, &Watch::new().progress(progress))
}

#[test]
fn periodic_calls_are_bounded_by_the_interval() {
    let every = Duration::from_millis(10);
    let (progress, seen) = recording(every);
    let active = active_for(&progress);
    active.expect(Some(100_000));
    let start = Instant::now();
    for _ in 0..100_000 {
        active.add(1);
    }
    while start.elapsed() < Duration::from_millis(50) {
        active.add(0);
        std::thread::sleep(Duration::from_micros(200));
    }
    let elapsed = start.elapsed();
    let seen = seen.lock().unwrap();
    // One call at the first count, then at most one per interval.
    let bound = 1 + elapsed.as_nanos() / every.as_nanos();
    assert!(
        seen.len() as u128 <= bound,
        "{} calls in {elapsed:?}",
        seen.len()
    );
    assert!(seen.len() >= 2, "it was called while counting: {seen:?}");
    assert!(seen.iter().all(|u| !u.finished && u.total == Some(100_000)));
    assert!(seen.windows(2).all(|w| w[0].done <= w[1].done));
}

#[test]
fn every_block_ends_with_a_final_call_carrying_its_counts() {
    let (progress, seen) = recording(Duration::from_secs(3600));
    let watch = Watch::new().progress(&progress);
    watch
        .run(|| {
            let active = Active::current().unwrap();
            active.expect(Some(7));
            active.add(3);
            active.add(4);
        })
        .unwrap();
    {
        let seen = seen.lock().unwrap();
        // The first count calls; the second falls in the same hour; the end calls again.
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!((seen[0].done, seen[0].finished), (3, false));
        let last = seen[1];
        assert_eq!((last.done, last.total, last.finished), (7, Some(7), true));
    }
    // A stopped block and an unwinding one end with a final call too.
    let token = crate::CancelToken::new();
    token.cancel();
    let stopped = watch.clone().cancel_token(&token).run(|| ());
    assert!(stopped.unwrap_err().is_cancelled());
    let unwound = std::panic::catch_unwind(|| watch.run(|| panic!("the block fails")));
    assert!(unwound.is_err());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen[2].finished && seen[3].finished);
}

#[test]
fn a_panicking_callback_is_dropped_and_counting_goes_on() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let progress = Progress::with_callback(Duration::ZERO, move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
        panic!("the callback fails");
    });
    let active = active_for(&progress);
    active.expect(Some(10));
    for _ in 0..10 {
        active.add(1);
    }
    progress.finish();
    assert_eq!(calls.load(Ordering::Relaxed), 1, "called once, then never");
    assert_eq!((progress.done(), progress.total()), (10, Some(10)));
}

#[test]
fn calls_never_overlap_while_threads_count() {
    let inside = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let (i, o, c) = (
        Arc::clone(&inside),
        Arc::clone(&overlaps),
        Arc::clone(&calls),
    );
    let progress = Progress::with_callback(Duration::ZERO, move |_| {
        if i.swap(true, Ordering::AcqRel) {
            o.fetch_add(1, Ordering::Relaxed);
        }
        c.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(50));
        i.store(false, Ordering::Release);
    });
    let active = active_for(&progress);
    std::thread::scope(|s| {
        for _ in 0..4 {
            let active = active.clone();
            s.spawn(move || {
                for _ in 0..2000 {
                    active.add(1);
                }
            });
        }
    });
    assert_eq!(progress.done(), 8000);
    assert_eq!(overlaps.load(Ordering::Relaxed), 0);
    assert!(calls.load(Ordering::Relaxed) >= 1);
}

#[test]
fn a_callback_that_counts_into_its_own_progress_neither_recurses_nor_deadlocks() {
    let slot: Arc<Mutex<Option<Progress>>> = Arc::new(Mutex::new(None));
    let inner = Arc::clone(&slot);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let progress = Progress::with_callback(Duration::ZERO, move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
        let same = inner.lock().unwrap().clone().unwrap();
        // A watched block inside the callback, counting into the same progress.
        Watch::new()
            .progress(&same)
            .run(|| Active::current().unwrap().add(1))
            .unwrap();
    });
    *slot.lock().unwrap() = Some(progress.clone());
    Watch::new()
        .progress(&progress)
        .run(|| Active::current().unwrap().add(1))
        .unwrap();
    // The outer count and its final call each ran the callback once; each counted 1.
    assert_eq!(calls.load(Ordering::Relaxed), 2);
    assert_eq!(progress.done(), 3);
    slot.lock().unwrap().take();
}

#[cfg(feature = "indicatif")]
#[test]
fn a_bar_follows_the_counts_and_finishes_with_the_block() {
    let bar = indicatif::ProgressBar::hidden();
    let progress = Progress::with_bar(bar.clone());
    Watch::new()
        .progress(&progress)
        .run(|| {
            let active = Active::current().unwrap();
            active.expect(Some(500));
            active.add(200);
            assert_eq!((bar.position(), bar.length()), (200, Some(500)));
            active.add(300);
        })
        .unwrap();
    assert_eq!((bar.position(), bar.length()), (500, Some(500)));
    assert!(bar.is_finished());
    // An unknown total leaves the bar without a length.
    let bar = indicatif::ProgressBar::hidden();
    let progress = Progress::with_bar(bar.clone());
    Watch::new()
        .progress(&progress)
        .run(|| Active::current().unwrap().expect(None))
        .unwrap();
    assert_eq!(bar.length(), None);
    // The ready-made bar draws nowhere here (the test's stderr is not a terminal).
    let progress = Progress::bar();
    Watch::new()
        .progress(&progress)
        .run(|| Active::current().unwrap().add(1))
        .unwrap();
    assert_eq!(progress.done(), 1);
}
