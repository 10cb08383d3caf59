//! The dynamically balanced map: rank 0 hands out chunks on demand.
//!
//! # Protocol
//!
//! Every rank agrees on `n` and the chunk size (rank 0 broadcast them); chunk `k` is items
//! `k·chunk .. min(n, (k+1)·chunk)` and travels in messages tagged `k`.
//!
//! - **Rank 0** starts by sending every other rank [`PREFETCH`] chunks. Then it loops:
//!   it answers every message that is waiting (a result or a failure report from rank `r`
//!   earns `r` its next chunk), and when nobody waits it takes the next chunk itself and
//!   runs it on its own pool in [`ROOT_SLICES`] slices, answering waiting ranks between
//!   slices, so it computes whenever it is not needed as a dispatcher and never keeps a
//!   rank waiting longer than a slice. Once every chunk is out it blocks in a probe until
//!   the last results are in, then sends each rank an empty [`tag::STOP`]. Results are
//!   stored by chunk index, so the caller gets them in input order whatever order they
//!   came in.
//! - **Any other rank** loops: probe rank 0, stop on [`tag::STOP`], else run chunk `tag`
//!   on its pool and send back its results tagged `tag`, or its failure report tagged
//!   [`tag::FAILED`].
//! - After a failure rank 0 hands out nothing more, but still collects every chunk it has
//!   handed out before it sends STOP, so no message of this map is left to confuse the next.
//!
//! # Why non-blocking sends
//!
//! A message above the eager limit (~128 KB with Open MPI's shared-memory transport) is
//! delivered only once the receiver posts its receive. With blocking sends, rank 0 sending
//! the next chunk and a rank sending its result to rank 0 wait on each other forever. So
//! every send here is an `MPI_Isend` inside an `mpi::request::scope`, and each side keeps
//! receiving while its sends are in flight. The buffers of those sends must outlive the
//! scope: they live in one `OnceCell` per chunk made before it, filled when the chunk is
//! handed out or finished, and dropped when the map returns.

use std::cell::OnceCell;
use std::ops::Range;

use mpi::Tag;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Message, Source, Status};
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::codec::{Codec, Payload};
use crate::error::{CodecError, Report};
use crate::tag;
use crate::work::Work;

/// Chunks a rank holds at once: one to run and one waiting, so it goes straight on to the
/// next chunk while its result travels and rank 0 finishes a slice of its own. More would
/// leave more work queued at a slow rank at the end.
const PREFETCH: usize = 2;

/// Slices of a chunk that rank 0 runs itself, answering other ranks between slices. With
/// whole chunks (1), a rank holding one spare chunk may wait for rank 0 as long as rank 0
/// takes to run a chunk: on the loaded 2-core machine, 2 one-thread ranks split 500k
/// uniform items 297k (rank 0) to 203k (rank 1, starved). A deeper [`PREFETCH`] (4) evened
/// the split but leaves more work queued at a slow rank at the end; slices bound the wait
/// to a quarter of a chunk instead, at the cost of three more local map launches a chunk.
/// The number is reasoned, not swept on a quiet machine.
const ROOT_SLICES: usize = 4;

/// The chunks of `0..n`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chunks {
    pub(crate) n: usize,
    pub(crate) size: usize,
}

impl Chunks {
    pub(crate) fn count(self) -> usize {
        self.n.div_ceil(self.size)
    }

    fn range(self, k: usize) -> Range<usize> {
        k * self.size..self.n.min((k + 1) * self.size)
    }
}

/// A rank's answer for one chunk, kept until its send completes.
enum Reply<U> {
    Results(Vec<U>),
    Failed(Vec<u8>),
}

/// Runs `work` over `chunks`: on rank 0 the results piece by piece in input order (a chunk
/// that rank 0 ran itself comes in slices), `None` on the other ranks.
pub(crate) fn run<W, C>(
    comm: &SimpleCommunicator,
    codec: &C,
    work: &W,
    chunks: Chunks,
) -> Result<Option<Vec<Vec<W::Out>>>, Report>
where
    W: Work,
    C: Codec<W::Out>,
{
    if comm.rank() == 0 {
        root(comm, codec, work, chunks).map(Some)
    } else {
        worker(comm, codec, work, chunks);
        Ok(None)
    }
}

/// Rank 0's bookkeeping, outside the request scope.
struct Dispatch<O> {
    parts: Vec<Option<Vec<Vec<O>>>>,
    outstanding: Vec<usize>,
    next: usize,
    failure: Option<Report>,
}

impl<O> Dispatch<O> {
    /// The chunk to hand out next, if the map is still going.
    fn take_next(&mut self) -> Option<usize> {
        let k = self.next;
        (self.failure.is_none() && k < self.parts.len()).then(|| {
            self.next += 1;
            k
        })
    }

    fn fail(&mut self, report: Report) {
        self.failure.get_or_insert(report);
    }

    /// Takes in the message `status` announces: a result or a failure from another rank.
    fn receive<C, W>(
        &mut self,
        message: Message,
        status: Status,
        codec: &C,
        work: &W,
        chunks: Chunks,
    ) where
        W: Work<Out = O>,
        C: Codec<O>,
    {
        let from = status.source_rank();
        self.outstanding[from as usize] -= 1;
        if status.tag() == tag::FAILED {
            let (bytes, _) = (message, status).matched_receive_vec::<u8>();
            return self.fail(Report::decode(&bytes, from as u32));
        }
        let k = status.tag() as usize;
        let (units, _) = (message, status).matched_receive_vec::<C::Unit>();
        match codec.decode(units) {
            Ok(out) if out.len() == work.out_len(chunks.range(k).len()) => {
                self.parts[k] = Some(vec![out])
            }
            Ok(out) => {
                let e = CodecError::new(format!("chunk {k} came back with {} results", out.len()));
                self.fail(Report::codec(from as u32, &e));
            }
            Err(e) => self.fail(Report::codec(from as u32, &e)),
        }
    }
}

fn root<W, C>(
    comm: &SimpleCommunicator,
    codec: &C,
    work: &W,
    chunks: Chunks,
) -> Result<Vec<Vec<W::Out>>, Report>
where
    W: Work,
    C: Codec<W::Out>,
{
    let count = chunks.count();
    let size = comm.size() as usize;
    let payloads: Vec<OnceCell<Result<Payload<'_, W::Unit>, CodecError>>> =
        (0..count).map(|_| OnceCell::new()).collect();
    let mut state = Dispatch {
        parts: (0..count).map(|_| None).collect(),
        outstanding: vec![0; size],
        next: 0,
        failure: None,
    };
    mpi::request::scope(|scope| {
        let mut sends = Vec::new();
        let mut stops = Vec::with_capacity(size);
        // Hands the next chunk, if any, to rank `to`.
        let mut hand_out = |state: &mut Dispatch<W::Out>, to: usize| {
            let Some(k) = state.take_next() else { return };
            match payloads[k].get_or_init(|| work.payload(chunks.range(k))) {
                Ok(units) => {
                    let dest = comm.process_at_rank(to as i32);
                    sends.push(dest.immediate_send_with_tag(scope, &units[..], k as Tag));
                    state.outstanding[to] += 1;
                }
                Err(e) => state.fail(Report::codec(0, e)),
            }
            sends = std::mem::take(&mut sends)
                .into_iter()
                .filter_map(|s| s.test().err())
                .collect();
        };
        for to in 1..size {
            (0..PREFETCH).for_each(|_| hand_out(&mut state, to));
        }
        // Takes in every waiting message; with `block`, waits for one first.
        let mut serve = |state: &mut Dispatch<W::Out>, block: bool| {
            let any = comm.any_process();
            let mut waiting = if block {
                Some(any.matched_probe())
            } else {
                any.immediate_matched_probe()
            };
            while let Some((message, status)) = waiting {
                state.receive(message, status, codec, work, chunks);
                hand_out(state, status.source_rank() as usize);
                waiting = any.immediate_matched_probe();
            }
        };
        loop {
            serve(&mut state, false);
            if let Some(k) = state.take_next() {
                // Nobody waits: a chunk of our own, in slices.
                let range = chunks.range(k);
                let mut pieces = Vec::with_capacity(ROOT_SLICES);
                for s in 0..ROOT_SLICES {
                    let slice = range.start + s * range.len() / ROOT_SLICES
                        ..range.start + (s + 1) * range.len() / ROOT_SLICES;
                    match work.run(0, slice, None) {
                        Ok(out) => pieces.push(out),
                        Err(report) => state.fail(report),
                    }
                    if state.failure.is_some() {
                        break;
                    }
                    serve(&mut state, false);
                }
                state.parts[k] = Some(pieces);
            } else if state.outstanding.iter().any(|&n| n > 0) {
                serve(&mut state, true);
            } else {
                break;
            }
        }
        for to in 1..size {
            let dest = comm.process_at_rank(to as i32);
            stops.push(dest.immediate_send_with_tag(scope, &[0u8; 0][..], tag::STOP));
        }
        sends.into_iter().for_each(|s| s.wait_without_status());
        stops.into_iter().for_each(|s| s.wait_without_status());
    });
    match state.failure {
        Some(report) => Err(report),
        None => Ok(state
            .parts
            .into_iter()
            .flat_map(|part| part.expect("every chunk came back"))
            .collect()),
    }
}

fn worker<W, C>(comm: &SimpleCommunicator, codec: &C, work: &W, chunks: Chunks)
where
    W: Work,
    C: Codec<W::Out>,
{
    let rank = comm.rank() as u32;
    let root = comm.process_at_rank(0);
    let replies: Vec<OnceCell<Reply<C::Unit>>> =
        (0..chunks.count()).map(|_| OnceCell::new()).collect();
    mpi::request::scope(|scope| {
        let mut results = Vec::new();
        let mut failures = Vec::new();
        loop {
            let (message, status) = root.matched_probe();
            if status.tag() == tag::STOP {
                let _ = (message, status).matched_receive_vec::<u8>();
                break;
            }
            let k = status.tag() as usize;
            let (units, _) = (message, status).matched_receive_vec::<W::Unit>();
            let reply = match work
                .run(rank, chunks.range(k), Some(units))
                .and_then(|out| codec.encode_vec(out).map_err(|e| Report::codec(rank, &e)))
            {
                Ok(units) => Reply::Results(units),
                Err(report) => Reply::Failed(report.encode()),
            };
            match replies[k].get_or_init(|| reply) {
                Reply::Results(units) => {
                    results.push(root.immediate_send_with_tag(scope, &units[..], k as Tag));
                }
                Reply::Failed(bytes) => {
                    failures.push(root.immediate_send_with_tag(scope, &bytes[..], tag::FAILED));
                }
            }
            results = results.into_iter().filter_map(|s| s.test().err()).collect();
        }
        results.into_iter().for_each(|s| s.wait_without_status());
        failures.into_iter().for_each(|s| s.wait_without_status());
    });
}
