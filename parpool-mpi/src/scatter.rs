//! The static split: scatter, local map, gather.
//!
//! Rank `r` of `p` owns items `r·n/p .. (r+1)·n/p`.
//!
//! 1. **Scatter** (inputs on rank 0 only; a `map_range` skips it): rank 0 sends each other
//!    rank its block in one message tagged [`tag::BLOCK`], straight from the caller's slice
//!    with [`Plain`](crate::Plain). A block that fails to encode is sent as an empty
//!    [`tag::SKIP`] message: that rank runs nothing, and rank 0 keeps the error.
//! 2. **Map**: every rank runs its block on its own pool (rank 0 reads its block in place).
//! 3. **Gather**: every other rank sends rank 0 one message: its results ([`tag::RESULT`])
//!    or its failure report ([`tag::FAILED`], empty after a skip). Rank 0 receives them in
//!    rank order, so the failure it keeps is the lowest rank's.
//!
//! Rank 0 sends the blocks without blocking and only then waits for them, and it receives
//! the results one rank at a time while each other rank sends exactly one message: no two
//! ranks ever wait on each other's sends.

use std::ops::Range;

use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Communicator, SimpleCommunicator};

use crate::codec::Codec;
use crate::error::Report;
use crate::tag;
use crate::work::Work;

/// Rank `r`'s block of `n` items over `size` ranks.
fn block(r: usize, n: usize, size: usize) -> Range<usize> {
    r * n / size..(r + 1) * n / size
}

/// Runs `work` over `0..n` split evenly: on rank 0 the results, block by block in rank
/// order; `None` on the other ranks (their failures travel to rank 0).
pub(crate) fn run<W, C>(
    comm: &SimpleCommunicator,
    codec: &C,
    work: &W,
    n: usize,
) -> Result<Option<Vec<Vec<W::Out>>>, Report>
where
    W: Work,
    C: Codec<W::Out>,
{
    let size = comm.size() as usize;
    let rank = comm.rank() as usize;
    if rank == 0 {
        return root(comm, codec, work, n);
    }
    let range = block(rank, n, size);
    let received = if W::SCATTERS {
        let (message, status) = comm.process_at_rank(0).matched_probe();
        if status.tag() == tag::SKIP {
            let _ = (message, status).matched_receive_vec::<u8>();
            comm.process_at_rank(0)
                .send_with_tag(&[0u8; 0][..], tag::FAILED);
            return Ok(None);
        }
        Some((message, status).matched_receive_vec::<W::Unit>().0)
    } else {
        Some(Vec::new())
    };
    let rank32 = rank as u32;
    let outcome = work
        .run(rank32, range, received)
        .and_then(|out| codec.encode_vec(out).map_err(|e| Report::codec(rank32, &e)));
    let root = comm.process_at_rank(0);
    match outcome {
        Ok(units) => root.send_with_tag(&units[..], tag::RESULT),
        Err(report) => root.send_with_tag(&report.encode()[..], tag::FAILED),
    }
    Ok(None)
}

fn root<W, C>(
    comm: &SimpleCommunicator,
    codec: &C,
    work: &W,
    n: usize,
) -> Result<Option<Vec<Vec<W::Out>>>, Report>
where
    W: Work,
    C: Codec<W::Out>,
{
    let size = comm.size() as usize;
    let mut failure: Option<Report> = None;
    if W::SCATTERS {
        let payloads: Vec<_> = (1..size).map(|r| work.payload(block(r, n, size))).collect();
        mpi::request::scope(|scope| {
            let mut sends = Vec::with_capacity(size);
            let mut skips = Vec::new();
            for (r, payload) in (1..).zip(&payloads) {
                let to = comm.process_at_rank(r);
                match payload {
                    Ok(units) => {
                        sends.push(to.immediate_send_with_tag(scope, &units[..], tag::BLOCK))
                    }
                    Err(e) => {
                        failure.get_or_insert_with(|| Report::codec(0, e));
                        skips.push(to.immediate_send_with_tag(scope, &[0u8; 0][..], tag::SKIP));
                    }
                }
            }
            sends
                .into_iter()
                .for_each(|send| send.wait_without_status());
            skips
                .into_iter()
                .for_each(|send| send.wait_without_status());
        });
    }
    let mut parts = Vec::with_capacity(size);
    match work.run(0, block(0, n, size), None) {
        Ok(out) => parts.push(out),
        Err(report) => failure = failure.or(Some(report)),
    }
    for r in 1..size {
        let (message, status) = comm.process_at_rank(r as i32).matched_probe();
        if status.tag() == tag::FAILED {
            let (bytes, _) = (message, status).matched_receive_vec::<u8>();
            if failure.is_none() && !bytes.is_empty() {
                failure = Some(Report::decode(&bytes, r as u32));
            }
            continue;
        }
        let (units, _) = (message, status).matched_receive_vec::<C::Unit>();
        match codec.decode(units) {
            Ok(out) if out.len() == work.out_len(block(r, n, size).len()) => parts.push(out),
            Ok(out) => {
                let e = crate::CodecError::new(format!("rank {r} sent {} results", out.len()));
                failure.get_or_insert_with(|| Report::codec(r as u32, &e));
            }
            Err(e) => {
                failure.get_or_insert_with(|| Report::codec(r as u32, &e));
            }
        }
    }
    match failure {
        Some(report) => Err(report),
        None => Ok(Some(parts)),
    }
}
