#![doc = include_str!("../README.md")]

mod error;
pub mod process;
mod shm;

pub use error::ProcessError;
pub use process::ProcessPool;
