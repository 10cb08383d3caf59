//! The CPU time of the calling thread, for tests that check a waiting thread sleeps.

use std::time::Duration;

/// The CPU time this thread has run, from the kernel's scheduler statistics.
pub(crate) fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    let nanos = stat.split_whitespace().next().unwrap().parse().unwrap();
    Duration::from_nanos(nanos)
}
