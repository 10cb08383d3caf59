//! A cheap stopwatch for sampling the cost of the first items of a map.
//!
//! Sampling reads the clock a few times per call, and for a small map those reads are most
//! of the overhead: `Instant::now` costs ~24 ns on the reference machine, the x86-64
//! time-stamp counter ~10 ns. On x86-64 the stopwatch reads the TSC, converted with a
//! rate calibrated once per process against `Instant` over [`CALIBRATION`] (~1% accurate,
//! plenty for choosing batch and leaf sizes). Elsewhere, or if the calibration looks wrong
//! (a TSC that is not constant-rate), it falls back to `Instant`. A wrong reading can only
//! make a split decision worse, never a result wrong.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the one-time calibration spins against `Instant`.
const CALIBRATION: Duration = Duration::from_micros(5);

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
    let (instant, tsc) = (Instant::now(), ticks());
    while instant.elapsed() < CALIBRATION {
        std::hint::spin_loop();
    }
    let (ns, ticks) = (
        instant.elapsed().as_nanos() as f64,
        ticks().wrapping_sub(tsc) as f64,
    );
    let rate = ns / ticks;
    // A constant-rate TSC runs between 0.5 and 10 GHz; anything else is not usable.
    (0.1..=2.0).contains(&rate).then_some(rate)
}

#[cfg(not(target_arch = "x86_64"))]
fn calibrate() -> Option<f64> {
    None
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn stopwatch_agrees_with_instant() {
        let watch = Stopwatch::start();
        let instant = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let (ours, reference) = (watch.elapsed_ns(), instant.elapsed().as_nanos() as f64);
        // Within 20%: a calibration error, not a timing assertion on the code under test.
        assert!(
            (ours / reference - 1.0).abs() < 0.2,
            "stopwatch {ours} ns vs Instant {reference} ns"
        );
    }
}
