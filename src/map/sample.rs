//! Sampling what items cost: a cheap stopwatch, [`CostProbe`], which maps items window by
//! window and measures them, and a per-thread memory of what each call site measured at its
//! last small call (see [`CostProbe::at_site`]).
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
//!
//! # Call-site memory
//!
//! A call that the sampling finished within its first window leaves what it measured (items,
//! nanoseconds, the stopwatch at its last read) in a small thread-local table, keyed by its
//! call site: the address of the sampling function's instance for that closure type. The
//! next call at that site on this thread, if those measurements say that it too fits one
//! window, maps its first item without reading the clock first (a *recalled* call), then
//! reads the clock once. The time since the memory's last read spans the rest of the last
//! call (the items it mapped after that read), whatever ran between the two calls, and this
//! call's first item, so:
//!
//! - within [`SAMPLE_NS`], it confirms that the last call was rightly sequential and that
//!   this call's first item is as cheap: the call maps the rest of its items in one batch,
//!   and if it finishes, its read becomes the site's new memory, for the next call to
//!   confirm. A loop of small calls reads the clock once per call, not three times.
//! - beyond it (the items cost more now, or the caller did other work between the calls),
//!   the call samples from its second item on, in a window that starts at that read, as a
//!   call without a memory would from its first.
//!
//! The read after the first item is what keeps a memory from costing parallelism: a site is
//! not one kind of call. One closure type may be called with cheap and with expensive
//! captured data in turn; a helper that maps through a `&dyn Fn` is one site for all its
//! callers; two closures whose code is the same may be merged into one instance by the
//! compiler; and a recursive map is one site at every depth, where the small calls at the
//! bottom leave memories on the threads that ran them, to be found by the calls above,
//! whose items hold whole subtrees. Each such call maps one item before it samples, not all
//! of them. What no read catches is a call whose first item is cheap and the rest are not:
//! it maps them in one batch, at most [`GROWTH`] times the items the read measured (the
//! same skew bound as a batch within one window), and the next call's read, which spans
//! them, samples again. (An adversarial review found all of these costing whole calls in a
//! first version that read the clock only at the end of a recalled call.)
//!
//! A memory serves one call: a recalled call takes it from the table, and only a recalled
//! call that finishes, or a sample that finishes within its first window, puts one back (a
//! call that fails, panics or is stopped leaves none). A site that never recalls pays
//! nothing for the memory but a table lookup: the first window keeps its last clock read
//! anyway.

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

    /// Nanoseconds since `start`, and a stopwatch started at the same clock reading: one
    /// read.
    #[inline]
    fn split(&self) -> (f64, Stopwatch) {
        let mut now = *self;
        (now.lap_ns(), now)
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
/// a window by a bounded factor instead of being mapped whole on one thread. A probe that
/// [`at_site`](CostProbe::at_site) made also keeps what its first window measured, as the
/// site's memory (see "Call-site memory" in the module docs).
#[derive(Debug)]
pub(crate) struct CostProbe {
    batch: usize,
    memory: Memory,
    /// Where the first window starts, if not at its first batch: a recalled call's read.
    started: Option<Stopwatch>,
}

/// What a probe keeps for its call site's memory.
#[derive(Debug)]
enum Memory {
    /// Nothing: an iterator's probe, a call of fewer than two items, or a call past its
    /// first window.
    Off,
    /// The first window of a call at `site`; `last` is what it measured up to its last
    /// clock read so far, if that read was within the window.
    Sampling { site: usize, last: Option<Measured> },
}

/// How a call at a site starts: [`CostProbe::at_site`].
#[derive(Debug)]
pub(crate) enum CallStart {
    /// The site's memory says the call fits one window: map the first item, then
    /// [`Recall::confirm`].
    Recalled(Recall),
    /// Sample from one item.
    Sampling(CostProbe),
}

/// A recalled call: it took its site's memory when it started, and puts a new one back
/// only if its first item confirms the memory and the call finishes.
#[derive(Debug)]
pub(crate) struct Recall {
    site: usize,
    /// Running from the last clock read of the memory it took.
    since: Stopwatch,
}

impl Recall {
    /// The call's first item is done: the call's one clock read. Within a window of the
    /// memory's last read, the call may map its other items in one batch ([`Confirmed`]);
    /// beyond it, a probe samples them from one item, in a window that starts at this read
    /// (see the module docs).
    #[inline]
    pub(crate) fn confirm(self, len: usize) -> Result<Confirmed, CostProbe> {
        let (ns, now) = self.since.split();
        if ns < SAMPLE_NS {
            Ok(Confirmed {
                site: self.site,
                next: Measured {
                    items: len,
                    ns,
                    since: now,
                },
            })
        } else {
            Err(CostProbe {
                batch: 1,
                memory: Memory::Sampling {
                    site: self.site,
                    last: None,
                },
                started: Some(now),
            })
        }
    }
}

/// A recalled call whose first item confirmed its memory: it maps its other items in one
/// batch, and [`finished`](Confirmed::finished) leaves `next` for the site's next call,
/// whose read spans this call's items.
#[derive(Debug)]
pub(crate) struct Confirmed {
    site: usize,
    next: Measured,
}

impl Confirmed {
    /// The call's items are all done, without a failure: leaves the site's memory, without
    /// a clock read. A call that failed, panicked or was stopped does not get here, and
    /// leaves no memory: the next call samples from one item.
    #[inline]
    pub(crate) fn finished(self) {
        sites::keep(self.site, self.next);
    }
}

impl CostProbe {
    pub(crate) fn new() -> Self {
        CostProbe {
            batch: 1,
            memory: Memory::Off,
            started: None,
        }
    }

    /// A probe for items known to cost about `per_item_ns` each: its first batch is a
    /// quarter of a window, as after a window of its own.
    pub(crate) fn expecting(per_item_ns: f64) -> Self {
        CostProbe {
            batch: quarter_window(per_item_ns),
            memory: Memory::Off,
            started: None,
        }
    }

    /// How a call of `len` items at `site` (any address unique to the call site) starts:
    /// recalled if the site's memory on this thread says that `len` items fit one window,
    /// else sampling from one item, which may leave a memory. A call of fewer than two
    /// items has nothing to split or remember.
    #[inline]
    pub(crate) fn at_site(site: usize, len: usize) -> CallStart {
        if len < 2 {
            return CallStart::Sampling(CostProbe::new());
        }
        match sites::take_if(site, |measured| measured.fits(len)) {
            Some(measured) => CallStart::Recalled(Recall {
                site,
                since: measured.since,
            }),
            None => CallStart::Sampling(CostProbe {
                batch: 1,
                memory: Memory::Sampling { site, last: None },
                started: None,
            }),
        }
    }

    /// Maps one window's worth of items with `run`, which maps up to `n` more items and
    /// returns how many it mapped and whether to go on (false: the input ran out, or a
    /// `try_map` error). Returns the cost per item in ns, or `None` once `run` says stop.
    pub(crate) fn window(&mut self, mut run: impl FnMut(usize) -> (usize, bool)) -> Option<f64> {
        let watch = self.started.take().unwrap_or_else(Stopwatch::start);
        let mut done = 0usize;
        loop {
            let (mapped, go_on) = run(self.batch);
            if !go_on {
                return None;
            }
            done += mapped;
            let (elapsed, now) = watch.split();
            if elapsed >= SAMPLE_NS {
                let per_item_ns = elapsed.max(1.0) / done.max(1) as f64;
                self.batch = quarter_window(per_item_ns);
                // A call past its first window is not small: nothing to remember.
                self.memory = Memory::Off;
                return Some(per_item_ns);
            }
            if let Memory::Sampling { last, .. } = &mut self.memory {
                *last = Some(Measured {
                    items: done,
                    ns: elapsed,
                    since: now,
                });
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

    /// The call's items are all done, without a failure, after a
    /// [`window`](CostProbe::window) that returned `None`: what its first window measured
    /// becomes the site's memory (no clock read: the window's last read serves).
    #[inline]
    pub(crate) fn finished(self) {
        if let Memory::Sampling {
            site,
            last: Some(measured),
        } = self.memory
        {
            sites::keep(site, measured);
        }
    }
}

/// What a call site measured: `items` took at most `ns`, up to the clock read where `since`
/// starts.
#[derive(Debug, Clone, Copy)]
struct Measured {
    items: usize,
    ns: f64,
    since: Stopwatch,
}

impl Measured {
    /// Whether `len` items may run as one batch on this measurement: they would fit one
    /// window at the cost measured, and they are at most [`GROWTH`] times the items
    /// measured (the skew bound of a batch within a window).
    #[inline]
    fn fits(&self, len: usize) -> bool {
        len <= self.items.saturating_mul(GROWTH)
            && len as f64 * self.ns < SAMPLE_NS * self.items as f64
    }
}

/// The per-thread table of call-site memories: direct-mapped, [`SITES`] slots, each holding
/// one site's [`Measured`] (a site that lands on a taken slot replaces it).
mod sites {
    use std::cell::Cell;

    use super::Measured;

    /// Slots in a thread's table: a loop rarely alternates between more small-call sites
    /// than this, and a miss costs only the three reads of sampling from one item.
    pub(super) const SITES: usize = 32;

    thread_local! {
        static TABLE: [Cell<Option<(usize, Measured)>>; SITES] =
            const { [const { Cell::new(None) }; SITES] };
    }

    /// The slot of `site`: a multiplicative hash of its address.
    #[inline]
    pub(super) fn slot(site: usize) -> usize {
        ((site as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59) as usize % SITES
    }

    /// Takes `site`'s memory on this thread, if it has one and `fits` it: a memory serves
    /// one call, which puts back a new one only if it confirms it.
    #[inline]
    pub(super) fn take_if(site: usize, fits: impl FnOnce(&Measured) -> bool) -> Option<Measured> {
        TABLE.with(|table| {
            let cell = &table[slot(site)];
            match cell.get() {
                Some((key, measured)) if key == site && fits(&measured) => {
                    cell.set(None);
                    Some(measured)
                }
                _ => None,
            }
        })
    }

    /// Makes `measured` `site`'s memory on this thread.
    #[inline]
    pub(super) fn keep(site: usize, measured: Measured) {
        TABLE.with(|table| table[slot(site)].set(Some((site, measured))));
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

    /// A measurement of `items` that took `ns`, its last read now.
    fn measured(items: usize, ns: f64) -> Measured {
        Measured {
            items,
            ns,
            since: Stopwatch::start(),
        }
    }

    /// A site of its own for each test (tests run on threads of their own, so the tables
    /// are separate anyway).
    fn site(test: &str) -> usize {
        test.as_ptr() as usize
    }

    #[test]
    fn a_measurement_fits_what_one_window_holds_within_the_growth_bound() {
        // 33 items in 10 ns: up to 1,056 items, which take ~320 ns, fit.
        let cheap = measured(33, 10.0);
        assert!(cheap.fits(33 * GROWTH));
        assert!(
            !cheap.fits(33 * GROWTH + 1),
            "the skew bound holds across calls"
        );
        // 10 items in 1 µs: 40 items would take the whole window.
        let dear = measured(10, 1_000.0);
        assert!(dear.fits(39));
        assert!(
            !dear.fits(40),
            "a call predicted to fill the window samples"
        );
    }

    /// The first batch of a call of `len` at `site`: `len` if recalled (its first item is
    /// mapped without sampling).
    fn first_batch(site: usize, len: usize) -> usize {
        match CostProbe::at_site(site, len) {
            CallStart::Recalled(_) => len,
            CallStart::Sampling(probe) => probe.batch,
        }
    }

    /// Runs `probe`'s first window over a source of `len` items that all succeed: the
    /// batches it asked for, and what it returned.
    fn window_over(probe: &mut CostProbe, len: usize) -> (Vec<usize>, Option<f64>) {
        let mut left = len;
        let mut batches = Vec::new();
        let per_item = probe.window(|batch| {
            batches.push(batch);
            let take = batch.min(left);
            left -= take;
            (take, left > 0)
        });
        (batches, per_item)
    }

    /// A stopwatch whose start lies far ahead of this thread's clock: a TSC that another
    /// core ran ahead, or that went backwards.
    fn ahead() -> Stopwatch {
        Stopwatch {
            start: Start::Ticks(ticks().wrapping_add(1 << 40), 0.3),
        }
    }

    /// A stopwatch on the `Instant` fallback, started a millisecond ago.
    fn instant_a_millisecond_ago() -> Stopwatch {
        let watch = Stopwatch {
            start: Start::Instant(Instant::now()),
        };
        std::thread::sleep(Duration::from_millis(1));
        watch
    }

    #[test]
    fn a_site_is_recalled_only_after_a_small_call() {
        let site = site("recall");
        let CallStart::Sampling(probe) = CostProbe::at_site(site, 1000) else {
            panic!("a new site samples");
        };
        assert_eq!(probe.batch, 1, "from one item");
        assert!(matches!(probe.memory, Memory::Sampling { last: None, .. }));
        // What the first window of a small call leaves.
        CostProbe {
            batch: 1,
            memory: Memory::Sampling {
                site,
                last: Some(measured(33, 10.0)),
            },
            started: None,
        }
        .finished();
        assert!(matches!(
            CostProbe::at_site(site, 1000),
            CallStart::Recalled(_)
        ));
        assert!(
            sites::take_if(site, |_| true).is_none(),
            "a recalled call holds its site's memory"
        );
    }

    #[test]
    fn a_recalled_call_reads_once_after_its_first_item_and_leaves_a_memory() {
        // A preemption between the memory's read and the call's may push the call past a
        // window; one of a few tries is not preempted.
        let site = site("confirm");
        let confirmed = (0..100).any(|_| {
            sites::keep(site, measured(33, 10.0));
            let CallStart::Recalled(recall) = CostProbe::at_site(site, 1000) else {
                panic!("a fitting memory is recalled");
            };
            let Ok(confirmed) = recall.confirm(1000) else {
                return false;
            };
            confirmed.finished();
            let kept = sites::take_if(site, |_| true).expect("a confirmed call leaves a memory");
            assert_eq!(kept.items, 1000);
            assert!(kept.ns < SAMPLE_NS);
            true
        });
        assert!(confirmed, "no try confirmed its memory");
    }

    #[test]
    fn a_recalled_call_whose_first_item_leaves_the_window_samples_from_the_second() {
        let site = site("stale");
        // A memory read a millisecond before the first item ends (expensive items now, or
        // other work between the calls), on either clock, or one read on a TSC ahead of
        // this thread's (wrapping makes it read as centuries, not as a negative time).
        let stale = [
            {
                let stale = measured(33, 10.0);
                std::thread::sleep(Duration::from_millis(1));
                stale
            },
            Measured {
                since: instant_a_millisecond_ago(),
                ..measured(33, 10.0)
            },
            Measured {
                since: ahead(),
                ..measured(33, 10.0)
            },
        ];
        for (case, memory) in stale.into_iter().enumerate() {
            sites::keep(site, memory);
            let CallStart::Recalled(recall) = CostProbe::at_site(site, 1000) else {
                panic!("case {case}: a fitting memory is recalled");
            };
            let Err(mut probe) = recall.confirm(1000) else {
                panic!("case {case}: not confirmed");
            };
            // The 999 items left, sampled from one item, in a window that starts at the
            // confirming read.
            assert!(probe.started.is_some(), "case {case}");
            let (batches, _) = window_over(&mut probe, 999);
            assert_eq!(batches[0], 1, "case {case}: sampled from the second item");
            assert!(
                probe.started.is_none(),
                "case {case}: the read started the window"
            );
        }
    }

    #[test]
    fn a_recalled_call_that_fails_leaves_no_memory() {
        let site = site("fails");
        sites::keep(site, measured(33, 10.0));
        // Recalled, and then a failure: `drive` neither confirms nor finishes it.
        assert!(matches!(
            CostProbe::at_site(site, 100),
            CallStart::Recalled(_)
        ));
        assert_eq!(first_batch(site, 100), 1);
    }

    #[test]
    fn a_memory_that_does_not_fit_stays_for_a_call_it_fits() {
        let site = site("stays");
        sites::keep(site, measured(33, 10.0));
        assert_eq!(first_batch(site, 100_000), 1, "too many items");
        assert_eq!(first_batch(site, 1), 1, "too few items");
        assert_eq!(first_batch(site, 0), 1);
        assert_eq!(first_batch(site, 100), 100);
    }

    #[test]
    fn a_sample_that_leaves_its_first_window_leaves_no_memory() {
        let site = site("long");
        let CallStart::Sampling(mut probe) = CostProbe::at_site(site, 10) else {
            panic!("a new site samples");
        };
        let per_item = probe.window(|batch| {
            std::thread::sleep(Duration::from_millis(1));
            (batch, true)
        });
        assert!(per_item.is_some_and(|ns| ns >= SAMPLE_NS));
        assert!(matches!(probe.memory, Memory::Off));
        probe.finished();
        assert!(sites::take_if(site, |_| true).is_none());
    }

    #[test]
    fn a_measurement_fits_no_overflowing_or_unreadable_call() {
        let huge = measured(usize::MAX / 2, 0.0);
        assert!(huge.fits(usize::MAX), "the growth bound saturates");
        assert!(!measured(1, f64::INFINITY).fits(2));
        assert!(!measured(1, f64::NAN).fits(2));
        assert!(
            !measured(1, 0.0).fits(GROWTH + 1),
            "a zero time keeps the skew bound"
        );
    }

    #[test]
    fn a_memory_is_taken_once_and_only_by_its_own_site() {
        let first = 0x1000usize;
        let second = (1..)
            .map(|k| first + k * 16)
            .find(|&other| sites::slot(other) == sites::slot(first))
            .expect("two addresses share a slot");
        sites::keep(first, measured(1, 1.0));
        assert!(sites::take_if(second, |_| true).is_none());
        assert!(
            sites::take_if(first, |_| false).is_none(),
            "taken only if it fits"
        );
        sites::keep(second, measured(2, 1.0));
        assert!(sites::take_if(first, |_| true).is_none(), "replaced");
        assert_eq!(sites::take_if(second, |_| true).map(|m| m.items), Some(2));
        assert!(sites::take_if(second, |_| true).is_none(), "taken once");
    }

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
