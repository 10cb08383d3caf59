//! Sampling what items cost: a cheap stopwatch, and [`CostProbe`], which maps items window
//! by window and measures them.
//!
//! Sampling reads the clock a few times per call, and for a small map those reads are most
//! of the overhead: `Instant::now` costs ~24 ns on the reference machine, the x86-64
//! time-stamp counter ~10 ns there but 20–30 ns on the 2-core VM of issue 11, where the
//! three reads of a 1k-item `par_map` were 60–90 ns of the ~130 ns it added to a ~450 ns
//! loop (the same build with the reads stubbed out: 1.10–1.15× the loop). On x86-64 the
//! stopwatch reads the TSC, converted with a rate calibrated once per process against
//! `Instant` over [`CALIBRATION`] (~1% accurate, plenty for choosing batch and leaf sizes).
//! Elsewhere, or if the calibration looks wrong (a TSC that is not constant-rate), it falls
//! back to `Instant`. A wrong reading can only make a split decision worse, never a result
//! wrong.

use std::sync::OnceLock;
use std::time::Instant;

/// How long the one-time calibration spins against `Instant`, per try.
#[cfg(target_arch = "x86_64")]
const CALIBRATION: std::time::Duration = std::time::Duration::from_micros(20);

/// A calibration try whose two TSC reads were each bracketed by `Instant`s at most this far
/// apart in all (ns) is kept at once: an error of at most ~1% of [`CALIBRATION`]. Two clean
/// brackets cost ~50 ns here; wider ones mean the thread was interrupted between the clocks.
#[cfg(target_arch = "x86_64")]
const CALIBRATION_BRACKET_NS: f64 = 200.0;

/// Calibration tries at most, keeping the tightest: 8 × [`CALIBRATION`] = 160 µs, once per
/// process, only when every try was interrupted.
#[cfg(target_arch = "x86_64")]
const CALIBRATION_TRIES: usize = 8;

/// A running stopwatch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch {
    start: Start,
}

#[derive(Debug, Clone, Copy)]
enum Start {
    /// TSC ticks, with the calibrated nanoseconds per tick.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Ticks(u64, f64),
    Instant(Instant),
}

impl Stopwatch {
    /// Starts timing.
    #[inline]
    pub(crate) fn start() -> Self {
        let start = match ns_per_tick() {
            Some(rate) => Start::Ticks(ticks(), rate),
            None => Start::Instant(Instant::now()),
        };
        Stopwatch { start }
    }

    /// Nanoseconds since `start`.
    #[inline]
    pub(crate) fn elapsed_ns(&self) -> f64 {
        match self.start {
            Start::Ticks(start, rate) => ticks().wrapping_sub(start) as f64 * rate,
            Start::Instant(start) => start.elapsed().as_nanos() as f64,
        }
    }

    /// Nanoseconds since `start` (or the last lap), restarting from the same clock reading:
    /// one read per lap.
    #[inline]
    pub(crate) fn lap_ns(&mut self) -> f64 {
        match &mut self.start {
            Start::Ticks(start, rate) => {
                let now = ticks();
                let ns = now.wrapping_sub(*start) as f64 * *rate;
                *start = now;
                ns
            }
            Start::Instant(start) => {
                let now = Instant::now();
                let ns = now.duration_since(*start).as_nanos() as f64;
                *start = now;
                ns
            }
        }
    }
}

/// The calibrated rate, if the TSC is usable.
#[inline]
fn ns_per_tick() -> Option<f64> {
    static RATE: OnceLock<Option<f64>> = OnceLock::new();
    *RATE.get_or_init(calibrate)
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn ticks() -> u64 {
    // SAFETY: RDTSC has no preconditions; every x86-64 CPU implements it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn ticks() -> u64 {
    0
}

#[cfg(target_arch = "x86_64")]
fn calibrate() -> Option<f64> {
    // Each end of the span reads the TSC between two `Instant`s, so a preemption or an
    // interrupt between the clocks (a loaded machine, a VM exit) shows as a wide bracket
    // instead of skewing the rate for the rest of the process: the tightest of a few tries
    // is kept. With brackets of ~50 ns over `CALIBRATION`, the rate is within ~0.5%.
    let bracket = || {
        let before = Instant::now();
        let tsc = ticks();
        (before, tsc, before.elapsed().as_nanos() as f64)
    };
    let mut best: Option<(f64, f64)> = None;
    for _ in 0..CALIBRATION_TRIES {
        let (start, start_tsc, start_width) = bracket();
        while start.elapsed() < CALIBRATION {
            std::hint::spin_loop();
        }
        let (end, end_tsc, end_width) = bracket();
        let ns = end.duration_since(start).as_nanos() as f64 + (end_width - start_width) / 2.0;
        let rate = ns / end_tsc.wrapping_sub(start_tsc) as f64;
        let width = start_width + end_width;
        if best.is_none_or(|(_, best_width)| width < best_width) {
            best = Some((rate, width));
        }
        if width <= CALIBRATION_BRACKET_NS {
            break;
        }
    }
    let (rate, _) = best?;
    // A constant-rate TSC runs between 0.5 and 10 GHz; anything else is not usable.
    (0.1..=2.0).contains(&rate).then_some(rate)
}

#[cfg(not(target_arch = "x86_64"))]
fn calibrate() -> Option<f64> {
    None
}

/// How long one sample window maps items on the calling thread (ns). Long enough to
/// estimate a per-item cost across a few clock reads, short against any input worth
/// parallelising: 1k trivial items (~0.2–2 µs) finish inside one window.
pub(crate) const SAMPLE_NS: f64 = 4_000.0;

/// How much a window's next batch may grow: to at most this many times the items the window
/// has done (see [`CostProbe`]).
const GROWTH: usize = 32;

/// Maps items on the calling thread one sample window ([`SAMPLE_NS`]) at a time, measuring
/// what they cost.
///
/// Within a window, each batch is sized to fill what is left of the window at the cost
/// measured so far, but to at most [`GROWTH`] times the items done: cheap items need only a
/// few clock reads, and a skewed input (cheap items first, expensive ones later) overshoots
/// a window by a bounded factor instead of being mapped whole on one thread.
#[derive(Debug)]
pub(crate) struct CostProbe {
    batch: usize,
}

impl CostProbe {
    pub(crate) fn new() -> Self {
        CostProbe { batch: 1 }
    }

    /// A probe for items known to cost about `per_item_ns` each: its first batch is a
    /// quarter of a window, as after a window of its own.
    pub(crate) fn expecting(per_item_ns: f64) -> Self {
        CostProbe {
            batch: quarter_window(per_item_ns),
        }
    }

    /// Maps one window's worth of items with `run`, which maps up to `n` more items and
    /// returns how many it mapped and whether to go on (false: the input ran out, or a
    /// `try_map` error). Returns the cost per item in ns, or `None` once `run` says stop.
    pub(crate) fn window(&mut self, mut run: impl FnMut(usize) -> (usize, bool)) -> Option<f64> {
        let watch = Stopwatch::start();
        let mut done = 0usize;
        loop {
            let (mapped, go_on) = run(self.batch);
            if !go_on {
                return None;
            }
            done += mapped;
            let elapsed = watch.elapsed_ns();
            if elapsed >= SAMPLE_NS {
                let per_item_ns = elapsed.max(1.0) / done.max(1) as f64;
                self.batch = quarter_window(per_item_ns);
                return Some(per_item_ns);
            }
            // What is left of the window at the cost so far, `left / (elapsed / done)` items,
            // but at most `GROWTH` times the items done. Cheap items reach that bound with
            // room to spare, which a comparison tells without the two divisions (~30
            // cycles on the path to the next batch).
            let most = done.max(1).saturating_mul(GROWTH);
            let left = SAMPLE_NS - elapsed;
            self.batch = if left >= elapsed.max(1.0) * GROWTH as f64 {
                most
            } else {
                ((left * done.max(1) as f64 / elapsed.max(1.0)) as usize).clamp(1, most)
            };
        }
    }
}

/// The batch a window starts with, for items of `per_item_ns`: a quarter of a window.
fn quarter_window(per_item_ns: f64) -> usize {
    (SAMPLE_NS / 4.0 / per_item_ns).max(1.0) as usize
}

#[cfg(test)]
mod test {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stopwatch_agrees_with_instant() {
        // Two `Instant`s bracket the stopwatch's span, so a preemption between the reads
        // (a loaded machine) widens the bracket instead of failing the test.
        let outer = Instant::now();
        let watch = Stopwatch::start();
        let inner = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let shortest = inner.elapsed().as_nanos() as f64;
        let ours = watch.elapsed_ns();
        let longest = outer.elapsed().as_nanos() as f64;
        // Within 20%: a calibration error, not a timing assertion on the code under test.
        assert!(
            ours > shortest * 0.8 && ours < longest * 1.2,
            "stopwatch {ours} ns vs Instant {shortest}..{longest} ns"
        );
    }
}
