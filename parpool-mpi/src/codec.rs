//! How items travel between ranks: as plain MPI data, or encoded with postcard.
//!
//! A [`Codec`] turns a batch of items into a buffer of MPI *units* and back. The receiving
//! side always learns the message's length from a matched probe and receives straight into
//! a `Vec` of exactly that many units, so no codec needs `Default` or zero-filled buffers.

use std::ops::Deref;

use mpi::datatype::Equivalence;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;

/// How a batch of `T` crosses between ranks.
///
/// Two codecs come with the crate: [`Plain`] for types with an MPI datatype (numbers, arrays
/// of them, `#[derive(Equivalence)]` structs), sent from and received into the `Vec<T>`
/// itself; and [`Postcard`] for any serde type, encoded as parpool's process pool encodes
/// its jobs. A map takes one codec value for both its inputs and its results.
///
/// # Examples
///
/// ```
/// use parpool_mpi::{Codec, Plain, Postcard};
///
/// let numbers = [1u64, 2, 3];
/// assert_eq!(&*Plain.encode_slice(&numbers).unwrap(), &numbers); // the same memory
/// let words = vec!["a".to_string(), "bc".to_string()];
/// let bytes = Postcard.encode_vec(words.clone()).unwrap();
/// assert_eq!(Codec::<String>::decode(&Postcard, bytes).unwrap(), words);
/// ```
pub trait Codec<T> {
    /// The element type of the MPI message.
    type Unit: Equivalence;

    /// The message for a borrowed batch (a chunk of the root's input).
    ///
    /// # Errors
    ///
    /// When an item cannot be encoded (a serde `Serialize` that fails).
    fn encode_slice<'a>(&self, items: &'a [T]) -> Result<Payload<'a, Self::Unit>, CodecError>;

    /// The message for an owned batch (results).
    ///
    /// # Errors
    ///
    /// When an item cannot be encoded.
    fn encode_vec(&self, items: Vec<T>) -> Result<Vec<Self::Unit>, CodecError>;

    /// The batch a received message holds.
    ///
    /// # Errors
    ///
    /// When the message does not decode to a batch of `T`.
    fn decode(&self, units: Vec<Self::Unit>) -> Result<Vec<T>, CodecError>;
}

/// A message buffer: borrowed from the caller's data when the codec needs no encoding.
///
/// # Examples
///
/// ```
/// use parpool_mpi::Payload;
///
/// let owned = Payload::Owned(vec![1u8, 2]);
/// assert_eq!(&*owned, &[1, 2]);
/// ```
#[derive(Debug)]
pub enum Payload<'a, U> {
    /// The caller's own memory, sent as it is.
    Borrowed(&'a [U]),
    /// An encoded copy.
    Owned(Vec<U>),
}

impl<U> Deref for Payload<'_, U> {
    type Target = [U];

    fn deref(&self) -> &[U] {
        match self {
            Payload::Borrowed(units) => units,
            Payload::Owned(units) => units,
        }
    }
}

/// Items with an MPI datatype, sent as they lie in memory: no encoding, no copy.
///
/// # Examples
///
/// ```
/// use parpool_mpi::{Codec, Plain};
///
/// let units = Plain.encode_vec(vec![1.5f64, 2.5]).unwrap();
/// assert_eq!(Plain.decode(units).unwrap(), [1.5, 2.5]);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl<T: Equivalence> Codec<T> for Plain {
    type Unit = T;

    fn encode_slice<'a>(&self, items: &'a [T]) -> Result<Payload<'a, T>, CodecError> {
        Ok(Payload::Borrowed(items))
    }

    fn encode_vec(&self, items: Vec<T>) -> Result<Vec<T>, CodecError> {
        Ok(items)
    }

    fn decode(&self, units: Vec<T>) -> Result<Vec<T>, CodecError> {
        Ok(units)
    }
}

/// Any serde type, encoded with postcard (the process pool's encoding) into bytes.
///
/// # Examples
///
/// ```
/// use parpool_mpi::{Codec, Postcard};
///
/// let rows = vec![vec![1u8, 2], vec![]];
/// let bytes = Postcard.encode_slice(&rows).unwrap();
/// let back: Vec<Vec<u8>> = Postcard.decode(bytes.to_vec()).unwrap();
/// assert_eq!(back, rows);
/// assert!(Codec::<String>::decode(&Postcard, vec![5, b'a']).is_err()); // truncated
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl<T: Serialize + DeserializeOwned> Codec<T> for Postcard {
    type Unit = u8;

    fn encode_slice<'a>(&self, items: &'a [T]) -> Result<Payload<'a, u8>, CodecError> {
        postcard::to_allocvec(items)
            .map(Payload::Owned)
            .map_err(|e| CodecError::new(format!("cannot encode a batch: {e}")))
    }

    fn encode_vec(&self, items: Vec<T>) -> Result<Vec<u8>, CodecError> {
        postcard::to_allocvec(&items)
            .map_err(|e| CodecError::new(format!("cannot encode a batch: {e}")))
    }

    fn decode(&self, units: Vec<u8>) -> Result<Vec<T>, CodecError> {
        postcard::from_bytes(&units)
            .map_err(|e| CodecError::new(format!("cannot decode a batch: {e}")))
    }
}
