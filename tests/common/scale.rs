//! How big the soak loops of a test are.

/// `normal`, or `small` under `PARPOOL_TEST_SCALE=small` (CI's valgrind run, whose
/// emulation is ~50× slower).
pub(crate) fn scaled<T>(normal: T, small: T) -> T {
    match std::env::var("PARPOOL_TEST_SCALE").as_deref() {
        Ok("small") => small,
        _ => normal,
    }
}
