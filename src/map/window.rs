//! The engine behind the iterator maps (`map`, `try_map`, `imap`, `imap_unordered`): a
//! bounded window of chunks in flight between one *feeder* (the thread that pulls the
//! input and consumes the results) and *drainer* jobs on the pool.
//!
//! # The window
//!
//! `W` slots, each holding one chunk: its input (`Vec<T>`), its results (`Vec<R>`),
//! and its sequence number. A slot belongs to exactly one thread at a time: the holder of
//! its [`SlotToken`], the only way to reach its data. Ownership moves through two rings of
//! slot indices; a token is consumed where its slot enters a ring and minted again where
//! the slot leaves it:
//!
//! ```text
//!   feeder: fill slot ──▶ submitted ring ──▶ drainer (claims in order): run the chunk
//!   feeder: take results ◀── completed ring ◀──┘
//! ```
//!
//! - **Submitted ring.** The feeder writes the slot index at position `published % W`, then
//!   advances `published` with a release store. A drainer reads the entry at position
//!   `claimed`, then claims the position with a compare-exchange on `claimed` (so each
//!   submission runs once); its acquire load of `published` makes the entry and the slot's
//!   contents visible. A position is rewritten only `W` submissions later, which needs a
//!   free slot, which needs some chunk claimed and consumed; claims happen in order, so no
//!   position is rewritten while it is unclaimed, and the entry read before a successful
//!   claim is the right one. (After the claim it is not: with results taken in completion
//!   order, later chunks can finish and free their slots while this one waits to be read.)
//! - **Completed ring.** A drainer takes a position with `fetch_add` on `completed_tail` and
//!   stores `slot + 1` there with release; the feeder reads positions in order, waits for a
//!   non-zero entry (acquire: the results are visible), and zeroes it. At most `W` chunks
//!   are in flight, so the ring never laps the feeder, and the `fetch_add`s acquire and
//!   release each other so that an entry's next store comes after its zeroing (see
//!   `complete`).
//!
//! Buffers stay in their slots and are reused, so a steady-state map allocates nothing per
//! chunk. The feeder keeps the free list and all counters of its own; it also *helps*:
//! while it waits for a completion it claims and runs submitted chunks itself.
//!
//! # Drainers
//!
//! A drainer is a pool job that claims and runs chunks until none is left, lingers a little
//! ([`DRAINER_LINGER_ROUNDS`]: the feeder refills the window only between its own chunks),
//! then retires. `drainers` counts the live ones (spawned and not yet retired). Retiring is a
//! `fetch_sub` followed by one more look at `published`: a chunk published meanwhile makes
//! the drainer rejoin. When it publishes, the feeder reads `drainers` with a relaxed load and
//! spawns one more if fewer run than there are threads and unclaimed chunks; a stale count
//! only costs parallelism for a moment, never a chunk (see the next paragraph).
//!
//! The feeder never waits for unclaimed work: while it waits for a completion it claims
//! chunks itself, so a chunk that no drainer took still runs. Drainers are for parallelism,
//! not liveness.
//!
//! Each drainer holds an `Arc` of the window and a terminate reference of its pool (like a
//! task), so dropping the pool waits for it; a feeder whose pool has already terminated runs
//! every chunk itself. The blocking maps keep only a raw pointer to their closure in the
//! window (see `iter.rs`): once the feeder has consumed every chunk, a drainer that lingers
//! touches nothing but the window's atomics.
//!
//! # Waking the feeder
//!
//! `signal` counts completions (in steps of 2); bit 0 says the feeder sleeps. The feeder
//! registers its latch, sets bit 0 with `fetch_or`, looks once more, then waits; a drainer's
//! `fetch_add` after each completion returns the old value, so whichever RMW comes second
//! sees the other's effect: the feeder sees the completion, or the drainer sees bit 0 and
//! sets the latch.
//!
//! # Every item is dropped before a blocking map returns
//!
//! Items and results may borrow the caller's frame (the blocking maps), so none may stay in
//! the window once the feeder is gone: a drainer that lingers may hold the last `Arc` and
//! would drop them later, on a worker. Running a chunk drains its input; releasing a slot
//! clears its results; and dropping the feeder (which, for the blocking maps, first waits
//! for every outstanding chunk, so every token is the feeder's again) clears every slot it
//! holds, including one half filled when the input's `next()` panicked.
//!
//! # Stopping
//!
//! `stop_seq` is the lowest sequence number after which chunks are skipped (their input is
//! dropped, not mapped): `usize::MAX` normally, lowered by a failing `try_map` item, and 0
//! after a panic or when the feeder gives up (an `imap` dropped early).
//!
//! # Watches
//!
//! The window carries the watch its call captured (see `watch.rs`): every chunk runs under
//! it, wherever it runs, and first checks it (a chunk is ~50 µs of work, so a token load and
//! a clock read per chunk cost nothing measurable). A chunk that finds the watch stopped
//! records why in `stopped` and is skipped like one past `stop_seq`, its input dropped
//! unmapped. The feeder checks the watch and `stopped` each time it takes a chunk's results
//! ([`Feeder::stopped`]), and counts each chunk's items into the progress as it takes them.

use std::cell::UnsafeCell;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use super::sample::Stopwatch;
use crate::pool::{Panic, Registry, SPIN_HINT_ROUNDS, Wait, WaitLatch, catch, snooze};
use crate::sync::{AtomicUsize, Mutex, Ordering, lock};
use crate::watch::{Active, StopCell, Stopped};

/// What a window applies to each item.
pub(crate) trait ChunkOp<T>: Send + Sync {
    /// The result of one item.
    type Output: Send;
    fn call(&self, item: T) -> Self::Output;
    /// Whether [`stops`](ChunkOp::stops) can ever return true; if not, chunks are mapped
    /// with one bulk `extend`.
    const CAN_STOP: bool = false;

    /// Whether the rest of the input after this result must not be mapped (`try_map`'s
    /// first `Err`).
    fn stops(&self, _output: &Self::Output) -> bool {
        false
    }
}

/// Plain `map`: every item through `f`.
pub(crate) struct MapOp<F>(pub(crate) F);

impl<T, R: Send, F: Fn(T) -> R + Send + Sync> ChunkOp<T> for MapOp<F> {
    type Output = R;
    #[inline]
    fn call(&self, item: T) -> R {
        (self.0)(item)
    }
}

/// How a chunk ended.
#[derive(Debug, Default)]
pub(crate) enum Outcome {
    /// Every item was mapped (or mapping stopped at an item for which `stops` is true).
    #[default]
    Done,
    /// Skipped because of `stop_seq`: its input was dropped unmapped.
    Skipped,
    /// The op panicked; the results of the chunk were dropped.
    Panicked(Panic),
}

/// Ownership of one slot of one window: the only way to reach the slot's data.
///
/// Not `Copy` or `Clone`, and minted only by the window: one per slot at creation (the
/// feeder's free slots), and afterwards only where a ring hands a slot over ([`Window::claim`]
/// to a drainer, [`Window::take_completed`] back to the feeder), each time for a slot whose
/// previous token was consumed when it entered that ring ([`Window::publish`],
/// [`Window::run`]). So at most one token per slot exists at any time, and holding it is
/// holding the slot.
#[derive(Debug)]
pub(crate) struct SlotToken {
    index: usize,
    /// The address of the window that minted it (checked on every access).
    window: usize,
}

/// One chunk's buffers. Owned by the holder of its [`SlotToken`].
pub(crate) struct SlotData<T, R> {
    pub(crate) seq: usize,
    pub(crate) input: Vec<T>,
    pub(crate) output: Vec<R>,
    pub(crate) outcome: Outcome,
    /// How long running the chunk took, for the feeder's chunk sizing.
    run_ns: f64,
}

struct Slot<T, R> {
    data: UnsafeCell<SlotData<T, R>>,
}

/// The state shared by a feeder and its drainers.
pub(crate) struct Window<T, Op: ChunkOp<T>> {
    op: Op,
    slots: Box<[Slot<T, Op::Output>]>,
    submitted: Box<[AtomicUsize]>,
    published: CachePadded<AtomicUsize>,
    claimed: CachePadded<AtomicUsize>,
    completed: Box<[AtomicUsize]>,
    completed_tail: CachePadded<AtomicUsize>,
    drainers: CachePadded<AtomicUsize>,
    signal: CachePadded<AtomicUsize>,
    stop_seq: AtomicUsize,
    /// The feeder's latch while it sleeps waiting for a completion.
    feeder_latch: Mutex<Option<Arc<WaitLatch>>>,
    /// The watch the call captured: every chunk runs under it (see "Watches").
    watch: Option<Active>,
    /// Why a chunk found the watch stopped, if one did.
    stopped: StopCell,
}

// SAFETY: slot data is only touched through the slot's token, which one thread holds at a
// time, and the rings' release/acquire pairs order each hand-over (module docs). Items and results move
// between threads, hence `T: Send` and `Output: Send`; `Op` is shared, hence `Sync`.
unsafe impl<T: Send, Op: ChunkOp<T>> Sync for Window<T, Op> {}
// SAFETY: as above; the window owns its items and results.
unsafe impl<T: Send, Op: ChunkOp<T>> Send for Window<T, Op> {}

const SLEEPING: usize = 1;
const ONE_COMPLETION: usize = 2;

impl<T, Op: ChunkOp<T>> Window<T, Op> {
    /// A window of `window` empty slots whose chunks run under `watch`, and the tokens of
    /// all of them (they start free, with the feeder).
    pub(crate) fn new(op: Op, window: usize, watch: Option<Active>) -> (Arc<Self>, Vec<SlotToken>) {
        assert!(window > 0);
        let slots = (0..window)
            .map(|seq| Slot {
                data: UnsafeCell::new(SlotData {
                    seq,
                    input: Vec::new(),
                    output: Vec::new(),
                    outcome: Outcome::Done,
                    run_ns: 0.0,
                }),
            })
            .collect();
        let ring = || (0..window).map(|_| AtomicUsize::new(0)).collect();
        let this = Arc::new(Window {
            op,
            slots,
            submitted: ring(),
            published: CachePadded::new(AtomicUsize::new(0)),
            claimed: CachePadded::new(AtomicUsize::new(0)),
            completed: ring(),
            completed_tail: CachePadded::new(AtomicUsize::new(0)),
            drainers: CachePadded::new(AtomicUsize::new(0)),
            signal: CachePadded::new(AtomicUsize::new(0)),
            stop_seq: AtomicUsize::new(usize::MAX),
            feeder_latch: Mutex::new(None),
            watch,
            stopped: StopCell::default(),
        });
        let tokens = (0..window).rev().map(|index| this.mint(index)).collect();
        (this, tokens)
    }

    /// The token of slot `index`; called only where ownership of the slot arrives (see
    /// [`SlotToken`]).
    fn mint(&self, index: usize) -> SlotToken {
        SlotToken {
            index,
            window: self.address(),
        }
    }

    fn address(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Skips every chunk after `seq` from now on.
    pub(crate) fn stop_after(&self, seq: usize) {
        self.stop_seq.fetch_min(seq, Ordering::Relaxed);
    }

    /// The buffers of the slot `token` holds, for as long as the token is borrowed.
    ///
    /// # Panics
    ///
    /// If the token belongs to another window.
    pub(crate) fn data<'a>(&'a self, token: &'a mut SlotToken) -> &'a mut SlotData<T, Op::Output> {
        assert_eq!(
            token.window,
            self.address(),
            "a slot token of another window"
        );
        // SAFETY: the token is the only one of its slot (see `SlotToken`), and it is borrowed
        // mutably for the lifetime of the returned reference, so nothing else reaches the
        // slot's data meanwhile; the ring that handed the token over ordered the previous
        // owner's accesses before this one (module docs).
        unsafe { &mut *self.slots[token.index].data.get() }
    }

    /// The feeder hands a filled slot to the drainers (appends it to the submitted ring).
    /// Only the feeder calls this.
    pub(crate) fn publish(&self, token: SlotToken) {
        debug_assert_eq!(token.window, self.address());
        // Relaxed: only the feeder writes `published`.
        let position = self.published.load(Ordering::Relaxed);
        self.submitted[position % self.len()].store(token.index, Ordering::Relaxed);
        // Release: hands the slot (and its entry in the ring) to the drainers.
        self.published.store(position + 1, Ordering::Release);
    }

    /// The feeder takes completion number `head` if it has been published: the slot is
    /// the feeder's again. Only the feeder calls this, with consecutive `head`s.
    pub(crate) fn take_completed(&self, head: usize) -> Option<SlotToken> {
        let entry = &self.completed[head % self.len()];
        // Acquire: pairs with the drainer's release; the slot's results are visible.
        let value = entry.load(Ordering::Acquire);
        if value == 0 {
            return None;
        }
        entry.store(0, Ordering::Relaxed);
        // The drainer's token was consumed by `complete`; the slot is the feeder's now.
        Some(self.mint(value - 1))
    }

    /// Claims the next submitted chunk, if any.
    pub(crate) fn claim(&self) -> Option<SlotToken> {
        // Acquire (here and on the exchange's failure): a claimed count was written by a
        // claimer that had seen the position published; acquiring it makes that publication
        // visible here too, so the load of `published` below never looks older than the
        // claims already made (with relaxed claims it could, on a weakly ordered machine,
        // and the entry read below could then be stale).
        let mut claimed = self.claimed.load(Ordering::Acquire);
        loop {
            // Acquire: pairs with the feeder's release of `published`; the entry and the
            // slot's contents are visible after it.
            if claimed == self.published.load(Ordering::Acquire) {
                return None;
            }
            // Read the slot index *before* claiming: while position `claimed` is unclaimed its
            // entry cannot be rewritten (see "Submitted ring"), and the exchange below only
            // succeeds if it still is. Read after the exchange, the entry could already hold
            // a later chunk's slot: once this thread has claimed the position, later chunks
            // may complete and free their slots (in completion order), and the feeder may
            // publish `W` positions further on.
            let slot = self.submitted[claimed % self.len()].load(Ordering::Relaxed);
            // AcqRel: releases what this claimer saw to the next one (see above).
            match self.claimed.compare_exchange_weak(
                claimed,
                claimed + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                // The feeder's token was consumed by `publish`, and this position is
                // claimed once.
                Ok(_) => return Some(self.mint(slot)),
                Err(actual) => claimed = actual,
            }
        }
    }

    /// Runs a claimed chunk and publishes its completion. User code (the op, and the items'
    /// and results' `Drop`) runs under `catch`: a panic becomes the chunk's outcome.
    pub(crate) fn run(&self, mut token: SlotToken) {
        let _entered = Active::enter(self.watch.clone());
        let data = self.data(&mut token);
        if data.seq > self.stop_seq.load(Ordering::Relaxed) || self.watch_stops() {
            data.outcome = match drop_all_caught(&mut data.input) {
                None => Outcome::Skipped,
                Some(payload) => Outcome::Panicked(payload),
            };
        } else {
            let watch = Stopwatch::start();
            let (input, output) = (&mut data.input, &mut data.output);
            let result = catch(|| {
                if Op::CAN_STOP {
                    for item in input.drain(..) {
                        let out = self.op.call(item);
                        let stops = self.op.stops(&out);
                        output.push(out);
                        if stops {
                            break;
                        }
                    }
                } else {
                    output.extend(input.drain(..).map(|item| self.op.call(item)));
                }
            });
            // Items after a stopping result (or after a panic) were dropped by `drain`.
            data.outcome = match result {
                Ok(()) => {
                    if Op::CAN_STOP && output.last().is_some_and(|out| self.op.stops(out)) {
                        self.stop_after(data.seq);
                    }
                    Outcome::Done
                }
                Err(payload) => {
                    // A result's `Drop` may panic too; the first panic is the one reported.
                    drop(drop_all_caught(output));
                    self.stop_after(0);
                    Outcome::Panicked(payload)
                }
            };
            data.run_ns = watch.elapsed_ns();
        }
        self.complete(token);
    }

    /// Whether the watch stopped the call (recorded for the feeder): a chunk about to run
    /// is skipped then.
    fn watch_stops(&self) -> bool {
        let Some(watch) = &self.watch else {
            return false;
        };
        match watch.check() {
            Ok(()) => false,
            Err(stopped) => {
                self.stopped.record(stopped);
                self.stop_after(0);
                true
            }
        }
    }

    fn complete(&self, token: SlotToken) {
        // AcqRel: the feeder zeroes entry `p` when it takes completion `p`, and the store of
        // completion `p + W` to the same entry must come after that zero. At least one of the
        // completions `p + 1 ..= p + W` is of a chunk published after the zeroing (at most
        // `W` chunks are outstanding), so its claim acquired the zeroing; acquiring and
        // releasing along the positions carries that to whoever takes `p + W`. (Loom found
        // the lost completion that relaxed positions allow.)
        let position = self.completed_tail.fetch_add(1, Ordering::AcqRel);
        // Release: hands the slot's results to the feeder.
        // HAZARD: from this store on the slot is the feeder's.
        self.completed[position % self.len()].store(token.index + 1, Ordering::Release);
        if self.signal.fetch_add(ONE_COMPLETION, Ordering::AcqRel) & SLEEPING != 0 {
            self.wake_feeder();
        }
    }

    fn wake_feeder(&self) {
        if let Some(latch) = lock(&self.feeder_latch).take() {
            WaitLatch::set_shared(&latch);
        }
    }
}

impl<T, Op: ChunkOp<T>> Window<T, Op> {
    /// The feeder's wait for its next completion, which `poll` takes (the feeder's next
    /// position in the completed ring): meanwhile it runs submitted chunks itself, then
    /// spins a little, then sleeps on its latch (see "Waking the feeder"). Only the feeder
    /// calls this, and only with a chunk outstanding.
    pub(crate) fn wait_completed(&self, mut poll: impl FnMut() -> Option<SlotToken>) -> SlotToken {
        let mut round = 0;
        loop {
            if let Some(token) = poll() {
                return token;
            }
            if let Some(token) = self.claim() {
                self.run(token);
                continue;
            }
            // Every submitted chunk is claimed and running elsewhere.
            if round < FEEDER_SPIN_ROUNDS {
                snooze(round);
                round += 1;
                continue;
            }
            return self.sleep_until_completed(&mut poll);
        }
    }

    #[cold]
    fn sleep_until_completed(&self, poll: &mut impl FnMut() -> Option<SlotToken>) -> SlotToken {
        loop {
            let latch = Arc::new(WaitLatch::for_current_thread(Wait::Unrelated));
            *lock(&self.feeder_latch) = Some(Arc::clone(&latch));
            self.signal.fetch_or(SLEEPING, Ordering::AcqRel);
            let found = poll();
            if found.is_none() {
                latch.wait();
            }
            self.signal.fetch_and(!SLEEPING, Ordering::AcqRel);
            lock(&self.feeder_latch).take();
            if let Some(token) = found.or_else(&mut *poll) {
                return token;
            }
        }
    }

    /// Counts one more live drainer; the count is taken before the drainer's job exists.
    pub(super) fn drainer_spawned(&self) {
        self.drainers.fetch_add(1, Ordering::AcqRel);
    }

    /// The live drainers (spawned and not retired), for the model checks.
    #[cfg(all(test, parpool_loom))]
    pub(super) fn live_drainers(&self) -> usize {
        self.drainers.load(Ordering::Acquire)
    }
}

/// Rounds the feeder spins, with nothing to claim, before it sleeps.
#[cfg(not(parpool_loom))]
const FEEDER_SPIN_ROUNDS: u32 = SPIN_HINT_ROUNDS;
/// Under loom every round is a yield point; one keeps the state space small.
#[cfg(parpool_loom)]
const FEEDER_SPIN_ROUNDS: u32 = 1;

/// Drops every element of `values`, one at a time under `catch` (dropping them in bulk,
/// a second panicking `Drop` would abort the process); returns the first panic.
fn drop_all_caught<V>(values: &mut Vec<V>) -> Option<Panic> {
    let mut first = None;
    while let Some(value) = values.pop() {
        if let Err(payload) = catch(move || drop(value)) {
            first.get_or_insert(payload);
        }
    }
    first
}

/// The drainer job's body: claim and run chunks until none is left, then retire (see
/// "Drainers" in the module docs). The caller counted it with
/// [`Window::drainer_spawned`].
pub(super) fn drain<T, Op: ChunkOp<T>>(window: &Window<T, Op>) {
    loop {
        let mut idle_rounds = 0;
        while idle_rounds < DRAINER_LINGER_ROUNDS {
            match window.claim() {
                Some(token) => {
                    window.run(token);
                    idle_rounds = 0;
                }
                None => {
                    // The feeder may be busy running a chunk itself before it refills.
                    snooze(idle_rounds);
                    idle_rounds += 1;
                }
            }
        }
        window.drainers.fetch_sub(1, Ordering::AcqRel);
        if window.claimed.load(Ordering::Relaxed) == window.published.load(Ordering::Acquire) {
            return;
        }
        // A chunk arrived after our last claim, and the feeder may have counted on us.
        window.drainers.fetch_add(1, Ordering::AcqRel);
    }
}

/// Backoff rounds a drainer waits for new chunks before it retires (spin-loop hints, then
/// `yield_now`: ~20–50 µs). The feeder refills the window only between its own chunks, so a
/// drainer that retired at once would often leave while the feeder was busy and be spawned
/// again (a job, an injection, often a worker's wake-up) a chunk later: measured on
/// `imap` over 200k items of 1 µs, 24–54 drainer spawns per run and 1.0–1.6× instead of
/// 2 spawns and 2.0× with lingering.
#[cfg(not(parpool_loom))]
const DRAINER_LINGER_ROUNDS: u32 = 40;
/// Under loom every round is a yield point; one keeps the state space small.
#[cfg(parpool_loom)]
const DRAINER_LINGER_ROUNDS: u32 = 1;

/// How big the chunks are.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChunkSize {
    /// Set by the caller.
    Fixed(usize),
    /// Chosen so that a chunk takes about [`CHUNK_NS`], from the measured cost per item.
    Auto { per_item_ns: f64 },
}

/// Target run time of an automatically sized chunk (ns). Handing a chunk over costs a few
/// hundred nanoseconds (two ring entries, a claim, a wake-up check), so 50 µs chunks keep
/// that under 1%, while a window of `4 × threads` of them still balances the load.
pub(crate) const CHUNK_NS: f64 = 50_000.0;

/// Upper bound on an automatic chunk, which bounds the memory in flight for cheap items:
/// `window × MAX_CHUNK` items.
pub(crate) const MAX_CHUNK: usize = 8192;

/// Default window: chunks in flight per pool thread.
pub(crate) const WINDOW_PER_THREAD: usize = 4;

impl ChunkSize {
    fn items(self) -> usize {
        match self {
            ChunkSize::Fixed(n) => n,
            ChunkSize::Auto { per_item_ns } => {
                (CHUNK_NS / per_item_ns.max(0.01)).clamp(1.0, MAX_CHUNK as f64) as usize
            }
        }
    }

    /// Folds a finished chunk's measured cost into the estimate (automatic sizes only).
    fn observe(&mut self, items: usize, run_ns: f64) {
        if let ChunkSize::Auto { per_item_ns } = self {
            if items > 0 {
                let sample = run_ns / items as f64;
                *per_item_ns = 0.75 * *per_item_ns + 0.25 * sample;
            }
        }
    }
}

/// Whether the feeder pulls more input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pulling {
    /// While slots are free.
    Open,
    /// No more, at the consumer's request ([`Feeder::pause`]): the input has more items,
    /// which are the consumer's again once the outstanding chunks are in.
    Paused,
    /// No more, ever: the input ended (it is not pulled past its first `None`), or the map
    /// stopped.
    Closed,
}

/// The feeder's side of a window: the input iterator, the free slots, and the counters
/// only it touches.
pub(crate) struct Feeder<I: Iterator, Op: ChunkOp<I::Item>> {
    window: Arc<Window<I::Item, Op>>,
    /// The pool the drainers run on.
    registry: Arc<Registry>,
    input: I,
    pulling: Pulling,
    /// The tokens of the free slots; the last one is the slot being filled.
    free: Vec<SlotToken>,
    /// Submitted chunks whose completion the feeder has not received yet.
    outstanding: usize,
    next_seq: usize,
    /// Completed chunks waiting for their turn in input order, by sequence number modulo
    /// the window.
    pending: Vec<Option<SlotToken>>,
    /// The sequence number the ordered consumer takes next.
    next_out: usize,
    completed_head: usize,
    chunk: ChunkSize,
    max_drainers: usize,
    /// Whether dropping the feeder waits for the outstanding chunks (the blocking maps,
    /// whose op borrows the caller's frame) or only stops them (`imap`, whose op is owned).
    wait_on_drop: bool,
}

impl<I: Iterator, Op: ChunkOp<I::Item>> Drop for Feeder<I, Op> {
    /// Stops the map, waits for the outstanding chunks (blocking maps only), and drops
    /// every item and result the feeder's slots still hold, here: with a panicking `next()`
    /// the slot being filled holds the items pulled so far, and they may borrow the
    /// caller's frame, so they must not wait in the window for whichever thread drops its
    /// last `Arc` (a lingering drainer, later, on a worker).
    fn drop(&mut self) {
        self.release_pending();
        if self.outstanding > 0 {
            self.window.stop_after(0);
            if self.wait_on_drop {
                // Reached only by unwinding (the normal path consumes every chunk): wait
                // until no chunk runs any more, so nothing the op borrows is used after this
                // frame. Every slot is the feeder's again afterwards.
                while self.outstanding > 0 {
                    let token = self.wait_completed_raw();
                    self.release(token);
                }
            }
        }
        for token in &mut self.free {
            let data = self.window.data(token);
            data.input.clear();
            data.output.clear();
        }
    }
}

impl<I, Op> Feeder<I, Op>
where
    I: Iterator,
    I::Item: Send,
    Op: ChunkOp<I::Item>,
{
    /// How many threads run chunks: the drainers at most, and the feeder.
    pub(crate) fn threads(&self) -> usize {
        self.max_drainers + 1
    }

    /// A feeder of a new window of `slots` chunks applying `op`.
    pub(crate) fn new(
        op: Op,
        slots: usize,
        registry: Arc<Registry>,
        input: I,
        chunk: ChunkSize,
        wait_on_drop: bool,
        watch: Option<Active>,
    ) -> Self {
        let (window, free) = Window::new(op, slots, watch);
        // The feeder runs chunks too (while it waits): with it, as many threads as the pool
        // has work on chunks.
        let max_drainers = registry.num_threads().saturating_sub(1).max(1);
        Feeder {
            free,
            window,
            registry,
            input,
            pulling: Pulling::Open,
            outstanding: 0,
            next_seq: 0,
            pending: (0..slots).map(|_| None).collect(),
            next_out: 0,
            completed_head: 0,
            chunk,
            max_drainers,
            wait_on_drop,
        }
    }

    /// Submits chunks while slots are free and input remains. Stops pulling input for good
    /// once a chunk stopped the map (`try_map`'s first error, a panic).
    pub(crate) fn fill(&mut self) {
        self.fill_up_to(usize::MAX);
    }

    /// [`fill`](Feeder::fill), leaving at most `limit` chunks outstanding.
    #[inline]
    pub(crate) fn fill_up_to(&mut self, limit: usize) {
        if self.window.stop_seq.load(Ordering::Relaxed) != usize::MAX {
            self.pulling = Pulling::Closed;
        }
        while self.pulling == Pulling::Open && self.outstanding < limit {
            let Some(token) = self.free.last_mut() else {
                return;
            };
            let size = self.chunk.items();
            let data = self.window.data(token);
            // If `next()` panics here, the items pulled so far stay in this free slot until
            // `Drop` clears it.
            data.input.extend(self.input.by_ref().take(size));
            if data.input.len() < size {
                self.pulling = Pulling::Closed;
                if data.input.is_empty() {
                    return;
                }
            }
            data.seq = self.next_seq;
            data.outcome = Outcome::Done;
            self.next_seq += 1;
            self.outstanding += 1;
            let token = self.free.pop().expect("the slot filled above");
            self.window.publish(token);
            self.spawn_drainer_if_needed();
        }
    }

    /// Starts one more drainer if fewer are running than threads and unclaimed chunks.
    fn spawn_drainer_if_needed(&self) {
        let window = &self.window;
        let unclaimed =
            window.published.load(Ordering::Relaxed) - window.claimed.load(Ordering::Relaxed);
        let drainers = window.drainers.load(Ordering::Relaxed);
        if drainers >= self.max_drainers.min(unclaimed) {
            return;
        }
        // Counted before the job exists: the feeder's relaxed read above must not see a
        // drainer go missing between the spawn and its first claim.
        window.drainer_spawned();
        let for_job = Arc::clone(&self.window);
        let job = move |_: &Registry| {
            drain(&for_job);
            // The last `Arc` drops the op (an `imap` closure's captures): user code.
            let _ = catch(move || drop(for_job));
        };
        // SAFETY: the job owns an `Arc` of the window; what the window's op borrows is
        // only used while a chunk runs, and every chunk completes before the feeder (which
        // holds that borrow) is done (see `iter.rs`, and `'static` ops for `imap`).
        if !unsafe { self.registry.spawn_counted_unchecked(job) } {
            // The pool is shutting down: the feeder runs the chunks itself.
            window.drainers.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<I: Iterator, Op: ChunkOp<I::Item>> Feeder<I, Op> {
    /// Blocks until a chunk completes and returns its slot (now owned by the feeder; give it
    /// back with [`Feeder::release`]); `None` if nothing is outstanding. While it waits, the
    /// feeder runs submitted chunks itself.
    pub(crate) fn next_completed(&mut self) -> Option<SlotToken> {
        if self.outstanding == 0 {
            return None;
        }
        Some(self.wait_completed_raw())
    }

    /// Waits for the next completion (at least one chunk is outstanding); see
    /// [`Feeder::next_completed`].
    fn wait_completed_raw(&mut self) -> SlotToken {
        let Feeder {
            window,
            completed_head,
            outstanding,
            chunk,
            ..
        } = self;
        window.wait_completed(|| {
            let mut token = window.take_completed(*completed_head)?;
            *completed_head += 1;
            *outstanding -= 1;
            let data = window.data(&mut token);
            chunk.observe(data.output.len(), data.run_ns);
            if let Some(watch) = &window.watch {
                watch.add(data.output.len() as u64);
            }
            Some(token)
        })
    }

    /// The results, outcome and sequence number of a completed slot.
    pub(crate) fn slot<'a>(
        &'a self,
        token: &'a mut SlotToken,
    ) -> (&'a mut Vec<Op::Output>, &'a mut Outcome, usize) {
        let data = self.window.data(token);
        (&mut data.output, &mut data.outcome, data.seq)
    }

    /// Gives a completed slot back (its buffers stay for reuse). Its results are dropped
    /// here, on the consumer's thread; if one's `Drop` panics, the slot is left out of
    /// the free list (already empty: `clear` shortens the vector before dropping).
    pub(crate) fn release(&mut self, mut token: SlotToken) {
        let (output, outcome, _) = self.slot(&mut token);
        *outcome = Outcome::Done;
        output.clear();
        self.free.push(token);
    }

    /// What a completed chunk cost per item where it ran (ns): the op alone, without the
    /// pulling and reassembly on the feeder. `None` for a chunk that mapped nothing.
    pub(crate) fn cost_per_item(&self, token: &mut SlotToken) -> Option<f64> {
        let data = self.window.data(token);
        let items = data.output.len();
        (items > 0).then(|| data.run_ns / items as f64)
    }

    /// Stops pulling input: the chunks already submitted still come back (in order, for an
    /// ordered consumer), then [`next_results`](Feeder::next_results) returns `None`, and
    /// [`paused`](Feeder::paused) says whether the input has more. No effect once the input
    /// has ended.
    pub(crate) fn pause(&mut self) {
        if self.pulling == Pulling::Open {
            self.pulling = Pulling::Paused;
        }
    }

    /// Whether [`pause`](Feeder::pause) stopped the pulling before the input ended or the
    /// map stopped.
    pub(crate) fn paused(&self) -> bool {
        self.pulling == Pulling::Paused
    }

    /// The next chunk whose results the consumer takes: in input order if `ordered`, else
    /// in completion order; `None` once nothing is outstanding. A chunk that panicked is not
    /// returned: the map is stopped (see [`Feeder::cancel_and_wait`]) and its panic is
    /// re-raised here, whatever the chunk's place in the order.
    pub(crate) fn next_results(&mut self, ordered: bool) -> Option<SlotToken> {
        loop {
            let window = self.pending.len();
            if ordered {
                if let Some(token) = self.pending[self.next_out % window].take() {
                    self.next_out += 1;
                    return Some(token);
                }
            }
            let mut token = self.next_completed()?;
            let (_, outcome, seq) = self.slot(&mut token);
            if let Outcome::Panicked(_) = outcome {
                let Outcome::Panicked(payload) = std::mem::take(outcome) else {
                    unreachable!("matched just above")
                };
                self.release(token);
                self.cancel_and_wait();
                std::panic::resume_unwind(payload);
            }
            if !ordered {
                return Some(token);
            }
            if seq == self.next_out {
                self.next_out += 1;
                return Some(token);
            }
            self.pending[seq % window] = Some(token);
        }
    }

    /// Whether the call's watch stopped it: a chunk found it so, or the feeder does now
    /// (a token load, and a clock read if there is a deadline). Once stopped, later chunks
    /// are skipped; the caller then [cancels](Feeder::cancel_and_wait) or drops the feeder.
    pub(crate) fn stopped(&self) -> Option<Stopped> {
        let watch = self.window.watch.as_ref()?;
        if let Some(stopped) = self.window.stopped.get() {
            return Some(stopped);
        }
        let stopped = watch.check().err()?;
        self.window.stopped.record(stopped);
        self.window.stop_after(0);
        Some(stopped)
    }

    /// Gives back the completed chunks waiting for their turn, dropping their results.
    fn release_pending(&mut self) {
        for index in 0..self.pending.len() {
            if let Some(token) = self.pending[index].take() {
                self.release(token);
            }
        }
    }

    /// Stops the map: later chunks are skipped, and this returns once every outstanding chunk
    /// has come back (running chunks cannot be interrupted), with its results dropped, and
    /// the completed chunks waiting for their turn dropped too.
    pub(crate) fn cancel_and_wait(&mut self) {
        drop(self.cancel_and_take_panic());
    }

    /// [`cancel_and_wait`](Feeder::cancel_and_wait), returning the panic of the first chunk
    /// that came back panicked meanwhile: a call its watch stopped re-raises it, as a panic
    /// wins over a stop.
    pub(crate) fn cancel_and_take_panic(&mut self) -> Option<Panic> {
        self.window.stop_after(0);
        self.pulling = Pulling::Closed;
        self.release_pending();
        let mut panic = None;
        while let Some(mut token) = self.next_completed() {
            let (_, outcome, _) = self.slot(&mut token);
            if panic.is_none() && matches!(outcome, Outcome::Panicked(_)) {
                let Outcome::Panicked(payload) = std::mem::take(outcome) else {
                    unreachable!("matched just above")
                };
                panic = Some(payload);
            }
            self.release(token);
        }
        panic
    }
}
