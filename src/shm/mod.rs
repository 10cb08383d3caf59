//! Shared memory between the processes of a process pool.

pub(crate) mod segment;
