//! `map`, `map_chunked`, `imap` and `imap_unordered`: a stream of chunks through the pool.
//!
//! # Chunks
//!
//! Items travel in chunks, one job per chunk: a `Vec<A>` encoded in one frame, answered by a
//! `Vec<R>`. `imap` and `imap_unordered` send one item per job unless told otherwise
//! ([`Imap::chunk_size`]). `map` picks the chunk size like Python's `Pool.map`: for an input
//! of known length `len` (an exact `size_hint`), `ceil(len / (4 × processes))`, so each
//! worker gets about four chunks; for an input of unknown length, each chunk is
//! `items so far / (4 × processes)` (at least 1), which grows geometrically and ends with
//! chunks of the same order as Python's, after a logarithmic number of small ones. An
//! automatic chunk also ends early rather than name more shared-memory segments than one job
//! may carry (`wire::MAX_FDS`), so a `map` over thousands of `shm::Value`s just makes more
//! chunks; a chunk size the caller fixed is taken as given, and such a chunk fails.
//!
//! # Window
//!
//! At most [`WINDOW_PER_PROCESS`] × processes chunks are in flight (pulled from the input and
//! not yet handed to the caller), so an `imap` over an endless iterator runs in bounded
//! memory, and so does the input side of `map`.
//!
//! # Failures
//!
//! A failure (panic, crash, timeout, (de)serialisation) fails the chunk it happened in; every
//! other chunk still runs. `imap` and `imap_unordered` yield one `Result` per item (a failed
//! chunk of `k` items yields its error `k` times), so the results of the other items are
//! there to take. `map` runs every item and then returns either all results or the first
//! error in input order.
//!
//! # Under a watch
//!
//! A call captures the [`Watch`](crate::Watch) in force when it is made. Its items count
//! into the watch's progress as their chunks come back (the total, where the input's
//! `size_hint` is exact, when the first item is pulled). Once the watch stops, the call
//! pulls nothing more, the chunks not sent are never sent, the chunks sent are waited for
//! (finished, or killed under `kill_on_stop`) with their results discarded, and the call
//! ends with the stop as its error: `map` returns it (before any item's own failure), an
//! `imap` yields it once and then ends. See [`Stream::stop`] and `supervisor/stop.rs`.

use std::any::type_name;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::supervisor::{Call, JobSpec};
use super::task::{Batch, Outcome, Reply, Sink};
use super::wire;
use super::worker::{self, Trampoline};
use super::{ProcessPool, call_for, encode_argument};
use crate::map::ZERO_CHUNK_SIZE;
use crate::shm::segment::{self, Segment};
use crate::watch::Active;
use crate::{ProcessError, Stopped};

/// Chunks in flight per worker process. A worker may hold up to 64 one-item jobs (the credit
/// window) and the caller decodes results while more wait; 128 per process keeps both
/// workers' windows full in the one-item `map` benchmark, and bounds memory at 128 chunks
/// per process.
pub(crate) const WINDOW_PER_PROCESS: usize = 128;

/// How items are grouped into jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunking {
    /// One item per job; the job is `call_one`.
    One,
    /// `n` items per job.
    Fixed(usize),
    /// Python's `map` chunk size (see the module documentation).
    Auto,
}

/// One encoded chunk.
struct Encoded {
    items: usize,
    bytes: Vec<u8>,
    /// The shared-memory segments the chunk's items name.
    segments: Vec<Arc<Segment>>,
}

/// Encoded chunks, or (item count, error) for a chunk that did not encode.
type Chunks<'a> = Box<dyn Iterator<Item = Result<Encoded, (usize, ProcessError)>> + 'a>;

/// Makes the call, the chunk source and the number of items (where the input's `size_hint`
/// is exact) once the chunking is known.
type Start<'a> =
    Box<dyn FnOnce(Chunking, usize) -> Result<(Call, Chunks<'a>, Option<u64>), ProcessError> + 'a>;

/// What [`Stream::next_chunk`] found.
enum Next {
    /// A chunk finished: its index, its item count and its outcome.
    Chunk(usize, usize, Outcome),
    /// The call's watch stopped it; every job of the call is settled (see
    /// [`Stream::stop`]).
    Stopped(ProcessError),
}

/// A stream of chunk outcomes: the part `Imap` and `ImapUnordered` share.
struct Stream<'a> {
    pool: &'a ProcessPool,
    chunking: Chunking,
    start: Option<Start<'a>>,
    call: Option<Call>,
    chunks: Option<Chunks<'a>>,
    batch: Arc<Batch>,
    window: usize,
    /// Chunks pulled from the input so far (the next chunk's index).
    pulled: usize,
    /// Chunks submitted to the pool whose outcome was not taken yet.
    in_flight: usize,
    /// Completed chunks taken from the batch.
    taken: usize,
    /// Item counts of chunks in flight, by index.
    counts: HashMap<usize, usize>,
    /// Chunks that failed before they reached the pool.
    failed: VecDeque<(usize, usize, Outcome)>,
    exhausted: bool,
    /// The watch in force when the call was made: it counts the call's progress and may
    /// stop it.
    watch: Option<Active>,
    /// The watch stopped the call, which then yielded its error: nothing more comes.
    ended: bool,
}

impl<'a> Stream<'a> {
    fn new(pool: &'a ProcessPool, chunking: Chunking, start: Start<'a>) -> Self {
        let watch = Active::current();
        Self {
            pool,
            chunking,
            start: Some(start),
            call: None,
            chunks: None,
            batch: Arc::new(Batch::new(watch.clone())),
            window: WINDOW_PER_PROCESS * pool.processes(),
            pulled: 0,
            in_flight: 0,
            taken: 0,
            counts: HashMap::new(),
            failed: VecDeque::new(),
            exhausted: false,
            watch,
            ended: false,
        }
    }

    fn set_chunk_size(&mut self, size: usize) {
        assert!(size > 0, "{ZERO_CHUNK_SIZE}");
        assert!(
            self.start.is_some(),
            "chunk_size must be called before the iteration starts"
        );
        self.chunking = if size == 1 {
            Chunking::One
        } else {
            Chunking::Fixed(size)
        };
    }

    /// Whether results come as one `R` per job (else `Vec<R>`).
    fn one_per_job(&self) -> bool {
        self.chunking == Chunking::One
    }

    /// Pulls and submits chunks until the window is full or the input ends. Returns the
    /// stop instead, pulling nothing, when the call's watch stopped (looked at once per
    /// round of pulls).
    fn refill(&mut self) -> Result<(), Stopped> {
        if self.start.is_some() {
            self.check()?;
        }
        if let Some(start) = self.start.take() {
            let (expected, failure) = match start(self.chunking, self.pool.processes()) {
                Ok((call, chunks, items)) => {
                    self.call = Some(call);
                    self.chunks = Some(chunks);
                    (items, None)
                }
                // The call fails as one item.
                Err(e) => (Some(1), Some(e)),
            };
            if let Some(watch) = &self.watch {
                watch.expect(expected);
            }
            if let Some(e) = failure {
                self.failed.push_back((0, 1, Err(e)));
                self.exhausted = true;
            }
        }
        // Top up once half the window is free, so chunks go to the pool in batches (one
        // lock and one round of sends per batch).
        if self.in_flight > 0 && self.in_flight + self.failed.len() > self.window / 2 {
            return Ok(());
        }
        while !self.exhausted && self.in_flight + self.failed.len() < self.window {
            self.check()?;
            let (Some(call), Some(chunks)) = (self.call, self.chunks.as_mut()) else {
                return Ok(());
            };
            let room = self.window - self.in_flight - self.failed.len();
            let mut specs = Vec::new();
            let mut indices = Vec::new();
            for _ in 0..room {
                let index = self.pulled;
                match chunks.next() {
                    None => {
                        self.exhausted = true;
                        break;
                    }
                    Some(Err((items, e))) => {
                        self.pulled += 1;
                        self.failed.push_back((index, items, Err(e)));
                    }
                    Some(Ok(encoded)) => {
                        self.pulled += 1;
                        indices.push((index, encoded.items));
                        specs.push(JobSpec {
                            call,
                            payload: encoded.bytes,
                            segments: encoded.segments,
                            sink: Sink::Batch(Arc::clone(&self.batch), index),
                        });
                    }
                }
            }
            if specs.is_empty() {
                continue;
            }
            match self.pool.shared().submit(specs) {
                Ok(()) => {
                    self.in_flight += indices.len();
                    self.counts.extend(indices);
                }
                Err(e) => {
                    for (index, items) in indices {
                        self.failed.push_back((index, items, Err(e.duplicate())));
                    }
                    self.exhausted = true;
                }
            }
        }
        Ok(())
    }

    /// Whether the call's watch stopped it.
    fn check(&self) -> Result<(), Stopped> {
        self.watch.as_ref().map_or(Ok(()), Active::check)
    }

    /// The next finished chunk, or the stop of the call's watch. `None` when the input is
    /// done and every chunk was taken, or after the stop.
    ///
    /// The watch is looked at once per chunk taken (and while waiting for one) and once per
    /// round of pulls: a stop takes effect within about one chunk's time.
    fn next_chunk(&mut self) -> Option<Next> {
        if self.ended {
            return None;
        }
        if let Err(stopped) = self.refill() {
            return Some(self.stop(stopped));
        }
        if let Some((index, items, outcome)) = self.failed.pop_front() {
            self.count(items);
            return Some(Next::Chunk(index, items, outcome));
        }
        if self.in_flight == 0 {
            return None;
        }
        let (index, outcome) = match self.batch.take(&mut self.taken, true) {
            Ok(taken) => taken,
            Err(stopped) => return Some(self.stop(stopped)),
        };
        self.in_flight -= 1;
        let items = self.counts.remove(&index).unwrap_or(1);
        if let Some(stopped) = outcome.as_ref().err().and_then(ProcessError::stop) {
            // The pool saw the stop first and dropped this chunk.
            return Some(self.stop(stopped));
        }
        self.count(items);
        Some(Next::Chunk(index, items, outcome))
    }

    /// Counts `items` done in the watch's progress.
    fn count(&self, items: usize) {
        if let Some(watch) = &self.watch {
            watch.add(items as u64);
        }
    }

    /// Ends the call for `stopped`: the input is dropped with the items not pulled yet (each
    /// once, here), the chunks not sent are dropped by the pool and never run, and the
    /// chunks already sent are waited for, as they finish or as their workers are killed
    /// (`kill_on_stop`), their results discarded; so when the call returns its error,
    /// nothing of it runs any more. See `supervisor/stop.rs` for the pool's side.
    fn stop(&mut self, stopped: Stopped) -> Next {
        self.ended = true;
        self.exhausted = true;
        self.start = None;
        self.chunks = None;
        self.failed.clear();
        if self.in_flight > 0 {
            self.pool.shared().stop_watched();
            while self.in_flight > 0 {
                // Every submitted chunk completes exactly once: with its outcome, or with
                // the stop when it was dropped or its worker killed.
                let _ = self.batch.take(&mut self.taken, false);
                self.in_flight -= 1;
            }
            self.counts.clear();
        }
        Next::Stopped(ProcessError::stopped(stopped))
    }

    /// Turns a chunk outcome into one result per item.
    fn unpack<R: DeserializeOwned>(
        &self,
        items: usize,
        outcome: Outcome,
        out: &mut VecDeque<Result<R, ProcessError>>,
    ) {
        let decoded = outcome.and_then(|reply| {
            if self.one_per_job() {
                reply.decode::<R>().map(|r| vec![r])
            } else {
                decode_chunk::<R>(&reply)
            }
        });
        match decoded {
            Ok(results) => out.extend(results.into_iter().map(Ok)),
            Err(e) => {
                for _ in 1..items {
                    out.push_back(Err(e.duplicate()));
                }
                out.push_back(Err(e));
            }
        }
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            // Nobody will take the outcomes: drop the queued chunks; the running ones finish
            // and their results are discarded.
            self.batch.abandon();
            self.pool.shared().purge();
        }
    }
}

/// Decodes a chunk's `Vec<R>`, naming `R` (not `Vec<R>`) when it fails.
fn decode_chunk<R: DeserializeOwned>(reply: &Reply) -> Result<Vec<R>, ProcessError> {
    wire::decode::<Vec<R>>(&reply.bytes).map_err(|e| {
        ProcessError::serialization(type_name::<R>(), super::SerdeStage::DecodeResult, e, None)
    })
}

/// The `Start` of a stream of `f` over `items`.
fn starter<'a, A, R, I>(f: fn(A) -> R, items: I) -> Start<'a>
where
    I: IntoIterator<Item = A>,
    I::IntoIter: 'a,
    A: Serialize + DeserializeOwned + 'a,
    R: Serialize + DeserializeOwned,
{
    let one = worker::call_one::<A, R> as Trampoline;
    let chunk = worker::call_chunk::<A, R> as Trampoline;
    start_with(f as usize, one, chunk, items.into_iter())
}

/// The body of [`starter`], outside the generic context of `R` (a closure made there would
/// have to outlive `'a` together with `R`).
fn start_with<'a, A, I>(f: usize, one: Trampoline, chunk: Trampoline, items: I) -> Start<'a>
where
    I: Iterator<Item = A> + 'a,
    A: Serialize + 'a,
{
    Box::new(move |chunking, processes| {
        let trampoline = if chunking == Chunking::One {
            one
        } else {
            chunk
        };
        let call = call_for(f, trampoline)?;
        let len = match items.size_hint() {
            (low, Some(high)) if low == high => u64::try_from(low).ok(),
            _ => None,
        };
        Ok((call, chunk_source(items, chunking, processes), len))
    })
}

/// Groups and encodes items.
fn chunk_source<'a, A, I>(mut items: I, chunking: Chunking, processes: usize) -> Chunks<'a>
where
    I: Iterator<Item = A> + 'a,
    A: Serialize + 'a,
{
    if chunking == Chunking::One {
        return Box::new(items.map(|item| {
            encode_argument(&item)
                .map(|(bytes, segments)| Encoded {
                    items: 1,
                    bytes,
                    segments,
                })
                .map_err(|e| (1, e))
        }));
    }
    let per = 4 * processes;
    let exact = match items.size_hint() {
        (low, Some(high)) if low == high => Some(low),
        _ => None,
    };
    let mut seen = 0usize;
    let mut held: Option<A> = None;
    Box::new(std::iter::from_fn(move || {
        let size = match (chunking, exact) {
            (Chunking::Fixed(n), _) => n,
            (_, Some(len)) => len.div_ceil(per).max(1),
            (_, None) => (seen / per).max(1),
        };
        let chunk = encode_chunk(&mut items, &mut held, size, chunking == Chunking::Auto)?;
        seen += match &chunk {
            Ok(encoded) => encoded.items,
            Err((items, _)) => *items,
        };
        Some(chunk)
    }))
}

/// Encodes the next chunk of at most `size` items as a postcard `Vec<A>` (its length, then
/// the items), one item at a time. An automatic chunk (`auto`) also ends before the item
/// that would make it name more than [`wire::MAX_FDS`] shared-memory segments, which waits
/// in `held` for the next chunk; a chunk of a size the caller fixed fails instead. `None`
/// when the input is done.
fn encode_chunk<A: Serialize>(
    items: &mut impl Iterator<Item = A>,
    held: &mut Option<A>,
    size: usize,
    auto: bool,
) -> Option<Result<Encoded, (usize, ProcessError)>> {
    let fail = |items: usize, message: &dyn fmt::Display| {
        let error = ProcessError::serialization(
            type_name::<A>(),
            super::SerdeStage::EncodeArgument,
            message,
            None,
        );
        (items, error)
    };
    let mut body = Vec::new();
    let mut segments: Vec<Arc<Segment>> = Vec::new();
    let mut count = 0;
    while count < size {
        let Some(item) = held.take().or_else(|| items.next()) else {
            break;
        };
        let (encoded, named) = segment::collect(|| postcard::to_extend(&item, Vec::new()));
        let encoded = match encoded {
            Ok(bytes) => bytes,
            Err(e) => return Some(Err(fail(count + 1, &e))),
        };
        let new: Vec<Arc<Segment>> = named
            .into_iter()
            .filter(|seg| !segments.iter().any(|s| s.id() == seg.id()))
            .collect();
        if segments.len() + new.len() > wire::MAX_FDS {
            if auto && count > 0 {
                *held = Some(item);
                break;
            }
            let message = format_args!(
                "the chunk names {} shared-memory segments; a job may name at most {}",
                segments.len() + new.len(),
                wire::MAX_FDS
            );
            return Some(Err(fail(count + 1, &message)));
        }
        segments.extend(new);
        body.extend_from_slice(&encoded);
        count += 1;
    }
    if count == 0 {
        return None;
    }
    let mut bytes = postcard::to_allocvec(&count).expect("a length serialises");
    bytes.extend_from_slice(&body);
    if bytes.len() + wire::JOB_PREFIX_LEN > wire::MAX_BODY {
        return Some(Err(fail(count, &"the encoded chunk is larger than 4 GiB")));
    }
    Some(Ok(Encoded {
        items: count,
        bytes,
        segments,
    }))
}

/// A lazy, ordered `map` over a process pool: yields `f(item)` for each item, in input
/// order, as a `Result` per item. Made by [`ProcessPool::imap`].
///
/// Nothing is sent before the first call to `next`; then at most a bounded window of items is
/// in flight. Dropping the iterator discards the items not yet sent.
///
/// # Examples
///
/// ```
/// use parpool::ProcessPool;
///
/// fn half(x: u32) -> u32 {
///     assert!(x % 2 == 0, "odd");
///     x / 2
/// }
///
/// let procs = ProcessPool::new(2)?;
/// let results: Vec<_> = procs.imap([2, 3, 4], half).collect();
/// assert_eq!(results[0].as_ref().ok(), Some(&1));
/// assert!(results[1].as_ref().unwrap_err().is_panic());
/// assert_eq!(results[2].as_ref().ok(), Some(&2));
/// # Ok::<(), parpool::ProcessError>(())
/// ```
#[must_use = "an Imap does nothing unless iterated"]
pub struct Imap<'a, R> {
    stream: Stream<'a>,
    /// Chunks that finished ahead of their turn.
    early: BTreeMap<usize, (usize, Outcome)>,
    next_index: usize,
    ready: VecDeque<Result<R, ProcessError>>,
    _result: PhantomData<fn() -> R>,
}

impl<'a, R: DeserializeOwned> Imap<'a, R> {
    /// Sends `size` items per job instead of one (Python's `chunksize`): fewer, larger
    /// messages for short jobs. A failure fails the whole chunk.
    ///
    /// # Panics
    ///
    /// If `size` is 0, or the iteration already started.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn inc(x: u64) -> u64 {
    ///     x + 1
    /// }
    ///
    /// let procs = ProcessPool::new(2)?;
    /// let v: Vec<u64> = procs.imap(0..1000, inc).chunk_size(50).collect::<Result<_, _>>()?;
    /// assert_eq!(v, (1..=1000).collect::<Vec<u64>>());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn chunk_size(mut self, size: usize) -> Self {
        self.stream.set_chunk_size(size);
        self
    }
}

impl<R: DeserializeOwned> Iterator for Imap<'_, R> {
    type Item = Result<R, ProcessError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(result) = self.ready.pop_front() {
                return Some(result);
            }
            if let Some((items, outcome)) = self.early.remove(&self.next_index) {
                self.next_index += 1;
                self.stream.unpack(items, outcome, &mut self.ready);
                continue;
            }
            match self.stream.next_chunk() {
                Some(Next::Chunk(index, items, outcome)) => {
                    self.early.insert(index, (items, outcome));
                }
                Some(Next::Stopped(e)) => {
                    // The error once, then the end: nothing is left to yield.
                    self.early.clear();
                    return Some(Err(e));
                }
                None => {
                    // Every chunk arrived; take any left in order (none are missing unless a
                    // chunk failed to submit, which ended the input).
                    let (&index, _) = self.early.iter().next()?;
                    self.next_index = index;
                }
            }
        }
    }
}

impl<R> fmt::Debug for Imap<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imap")
            .field("in_flight", &self.stream.in_flight)
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

/// A lazy `map` over a process pool that yields results in completion order, as a `Result`
/// per item. Made by [`ProcessPool::imap_unordered`].
///
/// Nothing is sent before the first call to `next`; then at most a bounded window of items is
/// in flight. Dropping the iterator discards the items not yet sent.
///
/// # Examples
///
/// ```
/// use parpool::ProcessPool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let procs = ProcessPool::new(2)?;
/// let mut v: Vec<u64> = procs.imap_unordered(0..10u64, square).collect::<Result<_, _>>()?;
/// v.sort();
/// assert_eq!(v, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
/// # Ok::<(), parpool::ProcessError>(())
/// ```
#[must_use = "an ImapUnordered does nothing unless iterated"]
pub struct ImapUnordered<'a, R> {
    stream: Stream<'a>,
    ready: VecDeque<Result<R, ProcessError>>,
    _result: PhantomData<fn() -> R>,
}

impl<'a, R: DeserializeOwned> ImapUnordered<'a, R> {
    /// Sends `size` items per job instead of one. A failure fails the whole chunk.
    ///
    /// # Panics
    ///
    /// If `size` is 0, or the iteration already started.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn inc(x: u64) -> u64 {
    ///     x + 1
    /// }
    ///
    /// let procs = ProcessPool::new(2)?;
    /// let sum: u64 = procs
    ///     .imap_unordered(0..1000, inc)
    ///     .chunk_size(64)
    ///     .sum::<Result<u64, _>>()?;
    /// assert_eq!(sum, 500_500);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn chunk_size(mut self, size: usize) -> Self {
        self.stream.set_chunk_size(size);
        self
    }
}

impl<R: DeserializeOwned> Iterator for ImapUnordered<'_, R> {
    type Item = Result<R, ProcessError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(result) = self.ready.pop_front() {
                return Some(result);
            }
            match self.stream.next_chunk()? {
                Next::Chunk(_, items, outcome) => {
                    self.stream.unpack(items, outcome, &mut self.ready);
                }
                // The error once, then the end.
                Next::Stopped(e) => return Some(Err(e)),
            }
        }
    }
}

impl<R> fmt::Debug for ImapUnordered<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("in_flight", &self.stream.in_flight)
            .finish_non_exhaustive()
    }
}

impl ProcessPool {
    /// Runs `f` on every item in the workers and returns the results in input order
    /// (Python's `Pool.map`). Items travel in chunks, one job per chunk, sized as Python
    /// sizes them: `ceil(len / (4 × processes))` items for an input of known length (an exact
    /// `size_hint`), so each worker gets about four chunks; for an input of unknown length,
    /// `items so far / (4 × processes)` (at least 1), which grows as items arrive.
    /// [`map_chunked`](Self::map_chunked) sets the size.
    ///
    /// Every item runs even when some fail: a failure fails its chunk, the other chunks
    /// complete, and `map` then returns the first error in input order. To see the result of
    /// each item, iterate [`imap`](Self::imap) instead.
    ///
    /// **Under a [`Watch`](crate::Watch)** (inside [`Watch::run`](crate::Watch::run)), the
    /// items count into its progress as their chunks come back, and a cancel or a deadline
    /// stops the map within about one chunk's time (a waiting caller looks at the token
    /// every 10 ms): no more items are pulled, the chunks not yet sent to a worker are never
    /// sent, and every item not sent is dropped once, here; the chunks already sent finish
    /// (or their workers are killed, if the pool
    /// [kills on stop](crate::ProcessPoolBuilder::kill_on_stop)) before `map` returns, so
    /// nothing of the map runs after it returned. The pool serves on.
    ///
    /// # Errors
    ///
    /// The first failed item's error (see [`ProcessError`]); the pool is closed. Under a
    /// watch that stopped, the stop ([`is_cancelled`](ProcessError::is_cancelled),
    /// [`is_deadline`](ProcessError::is_deadline)), whatever else failed.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let procs = ProcessPool::new(2)?;
    /// let v = procs.map(0..1000u64, square)?;
    /// assert_eq!(v, (0..1000u64).map(square).collect::<Vec<_>>());
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn map<A, R, I>(&self, items: I, f: fn(A) -> R) -> Result<Vec<R>, ProcessError>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.collect(Imap::new(self, f, items, Chunking::Auto))
    }

    /// [`map`](Self::map) with `chunk_size` items per job (Python's `chunksize`).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    ///
    /// # Panics
    ///
    /// If `chunk_size` is 0, like every chunked call of this crate.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let procs = ProcessPool::new(2)?;
    /// assert_eq!(procs.map_chunked(0..5u64, 2, square)?, [0, 1, 4, 9, 16]);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn map_chunked<A, R, I>(
        &self,
        items: I,
        chunk_size: usize,
        f: fn(A) -> R,
    ) -> Result<Vec<R>, ProcessError>
    where
        I: IntoIterator<Item = A>,
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let chunking = match chunk_size {
            0 => panic!("{ZERO_CHUNK_SIZE}"),
            1 => Chunking::One,
            n => Chunking::Fixed(n),
        };
        self.collect(Imap::new(self, f, items, chunking))
    }

    fn collect<R: DeserializeOwned>(&self, results: Imap<'_, R>) -> Result<Vec<R>, ProcessError> {
        let mut out = Vec::new();
        let mut first_error = None;
        for result in results {
            match result {
                Ok(value) if first_error.is_none() => out.push(value),
                Ok(_) => {}
                // A stop ends the call: its error wins over an earlier item's failure.
                Err(e) if e.stop().is_some() => return Err(e),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            None => Ok(out),
            Some(e) => Err(e),
        }
    }

    /// A lazy, ordered [`map`](Self::map): yields a `Result` per item, in input order, with a
    /// bounded number of items in flight. One item per job unless
    /// [`chunk_size`](Imap::chunk_size) says otherwise. Errors (a closed pool, a function
    /// outside the executable) come as items too. Under a [`Watch`](crate::Watch) it counts
    /// progress and stops as [`map`](Self::map) does, and then yields the stop's error once
    /// and ends.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn double(x: u32) -> u32 {
    ///     2 * x
    /// }
    ///
    /// let procs = ProcessPool::new(2)?;
    /// let mut results = procs.imap(1..=3, double);
    /// assert_eq!(results.next().transpose()?, Some(2));
    /// assert_eq!(results.collect::<Result<Vec<_>, _>>()?, [4, 6]);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn imap<'a, A, R, I>(&'a self, items: I, f: fn(A) -> R) -> Imap<'a, R>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
        A: Serialize + DeserializeOwned + 'a,
        R: Serialize + DeserializeOwned,
    {
        Imap::new(self, f, items, Chunking::One)
    }

    /// A lazy `map` that yields a `Result` per item in completion order, with a bounded
    /// number of items in flight (Python's `imap_unordered`). One item per job unless
    /// [`chunk_size`](ImapUnordered::chunk_size) says otherwise. Under a
    /// [`Watch`](crate::Watch) it behaves as [`imap`](Self::imap) does.
    ///
    /// # Examples
    ///
    /// ```
    /// use parpool::ProcessPool;
    ///
    /// fn double(x: u32) -> u32 {
    ///     2 * x
    /// }
    ///
    /// let procs = ProcessPool::new(2)?;
    /// let mut v = procs.imap_unordered(1..=3, double).collect::<Result<Vec<_>, _>>()?;
    /// v.sort_unstable(); // completion order, not input order
    /// assert_eq!(v, [2, 4, 6]);
    /// # Ok::<(), parpool::ProcessError>(())
    /// ```
    pub fn imap_unordered<'a, A, R, I>(&'a self, items: I, f: fn(A) -> R) -> ImapUnordered<'a, R>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
        A: Serialize + DeserializeOwned + 'a,
        R: Serialize + DeserializeOwned,
    {
        ImapUnordered {
            stream: Stream::new(self, Chunking::One, starter(f, items)),
            ready: VecDeque::new(),
            _result: PhantomData,
        }
    }
}

impl<'a, R: DeserializeOwned> Imap<'a, R> {
    fn new<A, I>(pool: &'a ProcessPool, f: fn(A) -> R, items: I, chunking: Chunking) -> Self
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: 'a,
        A: Serialize + DeserializeOwned + 'a,
        R: Serialize,
    {
        Self {
            stream: Stream::new(pool, chunking, starter(f, items)),
            early: BTreeMap::new(),
            next_index: 0,
            ready: VecDeque::new(),
            _result: PhantomData,
        }
    }
}
