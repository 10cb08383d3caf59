#![doc = include_str!("../README.md")]

mod error;
pub mod process;
pub mod shm;

pub use error::{ProcessError, ShmError};
pub use process::ProcessPool;
