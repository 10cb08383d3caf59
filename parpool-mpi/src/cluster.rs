//! [`Cluster`]: a communicator and a local pool, and the maps that run across them.

use std::fmt;

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Communicator, SimpleCommunicator};
use parpool::ThreadPool;

use crate::codec::Codec;
use crate::dynamic::{self, Chunks};
use crate::error::{Kind, MapError, Report};
use crate::local;
use crate::scatter;
use crate::tag;
use crate::work::{RangeMap, RangeReduce, SliceMap, Work};

/// Chunks per rank in a dynamic map: enough that a slow rank or the costly end of a skewed
/// input delays the end by a small fraction of the run, few enough that a chunk of a cheap
/// map is still worth a message and a local parallel map. The feasibility run, with ~100
/// chunks over 4 ranks, saw a slow rank take 6 chunks and the others 24–49.
const CHUNKS_PER_RANK: usize = 16;

/// The most chunks a map uses, under the 32767 that MPI guarantees as the largest tag
/// (chunk `k` travels tagged `k`; the few tags above are the protocol's own).
const MAX_CHUNKS: usize = 32_000;

/// How a map divides its items between the ranks.
///
/// # Examples
///
/// ```
/// assert_eq!(parpool_mpi::Schedule::default(), parpool_mpi::Schedule::Dynamic);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Schedule {
    /// Scatter `n / ranks` items to each rank, map, gather: no messages beyond one each
    /// way per rank, but the slowest rank's block sets the time.
    Static,
    /// Rank 0 hands out chunks on demand and runs chunks itself when nobody waits: a rank
    /// that finishes early gets more, so uneven costs and uneven ranks balance.
    #[default]
    Dynamic,
}

/// parpool's map across the ranks of an MPI communicator: each rank runs its share on its
/// own [`ThreadPool`], and rank 0 gets the results in input order.
///
/// Every rank calls the same maps in the same order with the same item count; each map is
/// a collective operation. Inputs of [`map`](Cluster::map) are read on rank 0 only; on the
/// others pass anything (`&[]`). Results are `Some` on rank 0 and `None` elsewhere, or
/// `Some` on every rank after
/// [`results_on_every_rank(true)`](Cluster::results_on_every_rank).
///
/// A panic in the mapped function on any rank ends the map with a [`MapError`] on every
/// rank, naming the rank and the item. A rank that dies is MPI's business: by default MPI
/// aborts the whole job (`mpirun` reports the dead rank), and no map returns.
///
/// # Examples
///
/// ```
/// use parpool::ThreadPool;
/// use parpool_mpi::{Cluster, Plain, Postcard, Schedule};
///
/// let universe = mpi::initialize().unwrap(); // once per process
/// let cluster = Cluster::new(&universe.world(), ThreadPool::new(2)?);
///
/// let input: Vec<u64> = (0..1000).collect();
/// let squares = cluster.map(Plain, &input, |x| x * x)?;
/// if cluster.is_root() {
///     assert_eq!(squares.unwrap()[999], 999 * 999);
/// }
///
/// let cluster = cluster.schedule(Schedule::Static).results_on_every_rank(true);
/// let names = cluster.map_range(Postcard, 3, |i| format!("item {i}"))?.unwrap();
/// assert_eq!(names, ["item 0", "item 1", "item 2"]);
/// let total = cluster.reduce_range(Plain, 101, |i| i as u64, || 0, |a, b| a + b)?;
/// assert_eq!(total, Some(5050));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Cluster {
    comm: SimpleCommunicator,
    pool: ThreadPool,
    schedule: Schedule,
    everywhere: bool,
    chunk_size: Option<usize>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("rank", &self.rank())
            .field("size", &self.size())
            .field("threads", &self.pool.current_num_threads())
            .field("schedule", &self.schedule)
            .field("results_on_every_rank", &self.everywhere)
            .field("chunk_size", &self.chunk_size)
            .finish()
    }
}

impl Cluster {
    /// A cluster over the ranks of `comm`, each mapping on its `pool`.
    ///
    /// Collective: every rank of `comm` calls it. The cluster works on its own duplicate of
    /// `comm`, so its messages never mix with the caller's.
    ///
    /// # Examples
    ///
    /// ```
    /// let universe = mpi::initialize().unwrap();
    /// let pool = parpool::ThreadPool::new(1).unwrap();
    /// let cluster = parpool_mpi::Cluster::new(&universe.world(), pool);
    /// assert!(cluster.rank() < cluster.size());
    /// ```
    pub fn new(comm: &impl Communicator, pool: ThreadPool) -> Self {
        Cluster {
            comm: comm.duplicate(),
            pool,
            schedule: Schedule::default(),
            everywhere: false,
            chunk_size: None,
        }
    }

    /// Chooses how items are divided between ranks (default [`Schedule::Dynamic`]).
    ///
    /// # Examples
    ///
    /// See [`Cluster`].
    #[must_use]
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// Whether every rank gets the results (rank 0 sends them on), not rank 0 alone.
    ///
    /// # Examples
    ///
    /// See [`Cluster`].
    #[must_use]
    pub fn results_on_every_rank(mut self, everywhere: bool) -> Self {
        self.everywhere = everywhere;
        self
    }

    /// Items per chunk of a dynamic map; by default `n / (16 × ranks)`. Rank 0's setting
    /// is the one that counts.
    ///
    /// # Panics
    ///
    /// If `chunk_size` is 0.
    ///
    /// # Examples
    ///
    /// ```
    /// let universe = mpi::initialize().unwrap();
    /// let pool = parpool::ThreadPool::new(1).unwrap();
    /// let cluster = parpool_mpi::Cluster::new(&universe.world(), pool).chunk_size(7);
    /// let ids = cluster.map_range(parpool_mpi::Plain, 20, |i| i as u32).unwrap();
    /// assert_eq!(ids.map(|v| v.len()), cluster.is_root().then_some(20));
    /// ```
    #[must_use]
    pub fn chunk_size(mut self, chunk_size: usize) -> Self {
        assert!(chunk_size > 0, "a chunk holds at least one item");
        self.chunk_size = Some(chunk_size);
        self
    }

    /// This process's rank.
    ///
    /// # Examples
    ///
    /// See [`Cluster::new`].
    pub fn rank(&self) -> usize {
        self.comm.rank() as usize
    }

    /// The number of ranks.
    ///
    /// # Examples
    ///
    /// See [`Cluster::new`].
    pub fn size(&self) -> usize {
        self.comm.size() as usize
    }

    /// Whether this is rank 0, where the inputs are read and the results arrive.
    ///
    /// # Examples
    ///
    /// See [`Cluster`].
    pub fn is_root(&self) -> bool {
        self.comm.rank() == 0
    }

    /// This rank's local pool.
    ///
    /// # Examples
    ///
    /// ```
    /// let universe = mpi::initialize().unwrap();
    /// let pool = parpool::ThreadPool::new(3).unwrap();
    /// let cluster = parpool_mpi::Cluster::new(&universe.world(), pool);
    /// assert_eq!(cluster.pool().current_num_threads(), 3);
    /// ```
    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    /// `f(item)` for every item of rank 0's `input`, spread over the ranks; the results in
    /// input order on rank 0. `input` is ignored on the other ranks.
    ///
    /// # Errors
    ///
    /// On every rank, when `f` panicked on some rank (the error names the rank and the
    /// item's index) or a batch failed to encode or decode.
    ///
    /// # Examples
    ///
    /// See [`Cluster`].
    pub fn map<T, R, C, F>(&self, codec: C, input: &[T], f: F) -> Result<Option<Vec<R>>, MapError>
    where
        T: Sync,
        R: Send,
        C: Codec<T> + Codec<R>,
        F: Fn(&T) -> R + Sync,
    {
        let n = self.agree_on_n(input.len(), false)?;
        let work = SliceMap {
            pool: &self.pool,
            input,
            codec: &codec,
            f,
        };
        let parts = self.run(&codec, &work, n);
        self.deliver(
            &codec,
            parts.map(|parts| parts.map(|p| p.into_iter().flatten().collect())),
        )
    }

    /// `f(i)` for every `i` in `0..n`, spread over the ranks with nothing scattered; the
    /// results in order on rank 0. Every rank passes the same `n`.
    ///
    /// # Errors
    ///
    /// On every rank, when the ranks passed different `n`s, when `f` panicked on some rank,
    /// or when a batch failed to encode or decode.
    ///
    /// # Examples
    ///
    /// See [`Cluster`].
    pub fn map_range<R, C, F>(&self, codec: C, n: usize, f: F) -> Result<Option<Vec<R>>, MapError>
    where
        R: Send,
        C: Codec<R>,
        F: Fn(usize) -> R + Sync,
    {
        let n = self.agree_on_n(n, true)?;
        let parts = self.run(
            &codec,
            &RangeMap {
                pool: &self.pool,
                f,
            },
            n,
        );
        self.deliver(
            &codec,
            parts.map(|parts| parts.map(|p| p.into_iter().flatten().collect())),
        )
    }

    /// The fold of `f(i)` over `0..n` with `op`, spread over the ranks; the total on
    /// rank 0. Each rank folds runs of consecutive items from `identity()`, and the partials
    /// are combined in index order, so `op` need only be associative; `identity()` must be
    /// its neutral element (0 for `+`, 1 for `*`), as it is folded in once per run.
    ///
    /// # Errors
    ///
    /// As [`map_range`](Cluster::map_range); a panic in `identity` or `op` names the rank
    /// but no item.
    ///
    /// # Examples
    ///
    /// See [`Cluster`].
    pub fn reduce_range<R, C, F, I, O>(
        &self,
        codec: C,
        n: usize,
        f: F,
        identity: I,
        op: O,
    ) -> Result<Option<R>, MapError>
    where
        R: Send,
        C: Codec<R>,
        F: Fn(usize) -> R + Sync,
        I: Fn() -> R + Sync,
        O: Fn(R, R) -> R + Sync,
    {
        let n = self.agree_on_n(n, true)?;
        let work = RangeReduce {
            pool: &self.pool,
            f,
            identity,
            op,
        };
        let parts = self.run(&codec, &work, n);
        // Rank 0 folds the partials in order; a panic in `op` here is an error as well.
        let fold = |partials: Vec<Vec<R>>| {
            let total = || {
                partials
                    .into_iter()
                    .flatten()
                    .fold((work.identity)(), &work.op)
            };
            local::guarded(0, total).map(|total| vec![total])
        };
        let total = parts.and_then(|parts| parts.map(fold).transpose());
        Ok(self.deliver(&codec, total)?.map(|mut v| v.remove(0)))
    }

    /// Rank 0's `n`; with `check`, an error on every rank unless every rank passed it.
    fn agree_on_n(&self, n: usize, check: bool) -> Result<usize, MapError> {
        let mut agreed = n as u64;
        self.comm.process_at_rank(0).broadcast_into(&mut agreed);
        if !check {
            return Ok(agreed as usize);
        }
        let mine = if agreed == n as u64 {
            u32::MAX
        } else {
            self.comm.rank() as u32
        };
        let mut lowest = u32::MAX;
        self.comm
            .all_reduce_into(&mine, &mut lowest, SystemOperation::min());
        if lowest == u32::MAX {
            return Ok(n);
        }
        Err(MapError::new(Report {
            rank: lowest,
            kind: Kind::Mismatch,
            message: format!("this rank's item count differs from rank 0's {agreed}"),
        }))
    }

    /// Runs `work` over `0..n` with the chosen schedule.
    fn run<W, C>(&self, codec: &C, work: &W, n: usize) -> Result<Option<Vec<Vec<W::Out>>>, Report>
    where
        W: Work,
        C: Codec<W::Out>,
    {
        match self.schedule {
            Schedule::Static => scatter::run(&self.comm, codec, work, n),
            Schedule::Dynamic => {
                let mut size = self
                    .chunk_size
                    .unwrap_or_else(|| n.div_ceil(self.size() * CHUNKS_PER_RANK));
                size = size.max(n.div_ceil(MAX_CHUNKS)).max(1);
                let mut agreed = size as u64;
                self.comm.process_at_rank(0).broadcast_into(&mut agreed);
                dynamic::run(
                    &self.comm,
                    codec,
                    work,
                    Chunks {
                        n,
                        size: agreed as usize,
                    },
                )
            }
        }
    }

    /// Makes rank 0's outcome every rank's: rank 0 broadcasts its failure report (or an
    /// empty one), then, when asked, sends its results on to every rank.
    fn deliver<R, C>(
        &self,
        codec: &C,
        outcome: Result<Option<Vec<R>>, Report>,
    ) -> Result<Option<Vec<R>>, MapError>
    where
        C: Codec<R>,
    {
        let root = self.comm.process_at_rank(0);
        let send_on = self.everywhere && self.size() > 1;
        if !self.is_root() {
            let mut len = 0u64;
            root.broadcast_into(&mut len);
            if len > 0 {
                let mut bytes = vec![0u8; len as usize];
                root.broadcast_into(&mut bytes[..]);
                return Err(MapError::new(Report::decode(&bytes, 0)));
            }
            if !send_on {
                return Ok(None);
            }
            let rank = self.comm.rank() as u32;
            let (message, status) = root.matched_probe_with_tag(tag::DELIVER);
            let (units, _) = (message, status).matched_receive_vec::<C::Unit>();
            return codec
                .decode(units)
                .map(Some)
                .map_err(|e| MapError::new(Report::codec(rank, &e)));
        }
        let (mut failure, results) = match outcome {
            Ok(results) => (None, results),
            Err(report) => (Some(report), None),
        };
        // Encoded before the outcome is told, so that a failure to encode is the outcome.
        let payload = match &results {
            Some(results) if send_on => codec
                .encode_slice(results)
                .map_err(|e| failure = Some(Report::codec(0, &e)))
                .ok(),
            _ => None,
        };
        let mut bytes = failure.as_ref().map(Report::encode).unwrap_or_default();
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        if let Some(report) = failure {
            root.broadcast_into(&mut bytes[..]);
            return Err(MapError::new(report));
        }
        if let Some(units) = &payload {
            mpi::request::scope(|scope| {
                let sends: Vec<_> = (1..self.comm.size())
                    .map(|r| {
                        let dest = self.comm.process_at_rank(r);
                        dest.immediate_send_with_tag(scope, &units[..], tag::DELIVER)
                    })
                    .collect();
                sends.into_iter().for_each(|s| s.wait_without_status());
            });
        }
        drop(payload);
        Ok(results)
    }
}
