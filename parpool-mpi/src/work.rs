//! What a map computes, as the schedules see it: the message that hands a range of items
//! to a rank, and how a rank runs a range on its local pool.

use std::ops::Range;

use mpi::datatype::Equivalence;
use parpool::ThreadPool;

use crate::codec::{Codec, Payload};
use crate::error::{CodecError, Report};
use crate::local;

/// A map's work, split into ranges of item indices.
pub(crate) trait Work {
    /// The element type of the messages that hand out ranges.
    type Unit: Equivalence;
    /// What running a range yields, element by element.
    type Out: Send;

    /// Whether the items travel (inputs on rank 0) or are made where they run (`0..n`).
    const SCATTERS: bool;

    /// On rank 0: the message that hands `range` to another rank.
    fn payload(&self, range: Range<usize>) -> Result<Payload<'_, Self::Unit>, CodecError>;

    /// Runs `range` on this rank's pool. `received` is the message rank 0 sent for it;
    /// `None` on rank 0, which reads its own input.
    fn run(
        &self,
        rank: u32,
        range: Range<usize>,
        received: Option<Vec<Self::Unit>>,
    ) -> Result<Vec<Self::Out>, Report>;

    /// How many elements running a range of `len` items yields.
    fn out_len(&self, len: usize) -> usize;
}

/// `f(&input[i])` for inputs that live on rank 0.
pub(crate) struct SliceMap<'a, T, C, F> {
    pub(crate) pool: &'a ThreadPool,
    pub(crate) input: &'a [T],
    pub(crate) codec: &'a C,
    pub(crate) f: F,
}

impl<T, R, C, F> Work for SliceMap<'_, T, C, F>
where
    T: Sync,
    R: Send,
    C: Codec<T>,
    F: Fn(&T) -> R + Sync,
{
    type Unit = C::Unit;
    type Out = R;
    const SCATTERS: bool = true;

    fn payload(&self, range: Range<usize>) -> Result<Payload<'_, C::Unit>, CodecError> {
        self.codec.encode_slice(&self.input[range])
    }

    fn run(
        &self,
        rank: u32,
        range: Range<usize>,
        received: Option<Vec<C::Unit>>,
    ) -> Result<Vec<R>, Report> {
        let (f, input) = (&self.f, self.input);
        let Some(units) = received else {
            return local::map(self.pool, rank, range, |i| f(&input[i]));
        };
        let items = self
            .codec
            .decode(units)
            .map_err(|e| Report::codec(rank, &e))?;
        if items.len() != range.len() {
            let e = CodecError::new(format!(
                "a chunk of {} items decoded to {} items",
                range.len(),
                items.len()
            ));
            return Err(Report::codec(rank, &e));
        }
        let start = range.start;
        local::map(self.pool, rank, range, |i| f(&items[i - start]))
    }

    fn out_len(&self, len: usize) -> usize {
        len
    }
}

/// `f(i)` for `i` in `0..n`: nothing travels but the range.
pub(crate) struct RangeMap<'a, F> {
    pub(crate) pool: &'a ThreadPool,
    pub(crate) f: F,
}

impl<R, F> Work for RangeMap<'_, F>
where
    R: Send,
    F: Fn(usize) -> R + Sync,
{
    type Unit = u8;
    type Out = R;
    const SCATTERS: bool = false;

    fn payload(&self, _: Range<usize>) -> Result<Payload<'_, u8>, CodecError> {
        Ok(Payload::Borrowed(&[]))
    }

    fn run(&self, rank: u32, range: Range<usize>, _: Option<Vec<u8>>) -> Result<Vec<R>, Report> {
        local::map(self.pool, rank, range, &self.f)
    }

    fn out_len(&self, len: usize) -> usize {
        len
    }
}

/// The fold of `f(i)` over `0..n`: one partial per range.
pub(crate) struct RangeReduce<'a, F, I, O> {
    pub(crate) pool: &'a ThreadPool,
    pub(crate) f: F,
    pub(crate) identity: I,
    pub(crate) op: O,
}

impl<R, F, I, O> Work for RangeReduce<'_, F, I, O>
where
    R: Send,
    F: Fn(usize) -> R + Sync,
    I: Fn() -> R + Sync,
    O: Fn(R, R) -> R + Sync,
{
    type Unit = u8;
    type Out = R;
    const SCATTERS: bool = false;

    fn payload(&self, _: Range<usize>) -> Result<Payload<'_, u8>, CodecError> {
        Ok(Payload::Borrowed(&[]))
    }

    fn run(&self, rank: u32, range: Range<usize>, _: Option<Vec<u8>>) -> Result<Vec<R>, Report> {
        local::reduce(self.pool, rank, range, &self.f, &self.identity, &self.op).map(|r| vec![r])
    }

    fn out_len(&self, _: usize) -> usize {
        1
    }
}
