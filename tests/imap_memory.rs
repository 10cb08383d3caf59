//! `imap` keeps memory bounded: the peak RSS of a run over 10M items is within 8 MB of a
//! run over 1M items. Each run is a child process (this test binary re-executed on the
//! ignored `child` test), so the peaks do not mix.

use std::process::Command;

const ITEMS_ENV: &str = "PARPOOL_TEST_IMAP_ITEMS";

/// Peak resident set size of this process, in KiB (`VmHWM` in /proc/self/status).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
#[ignore = "runs only as a child process of the test below"]
fn child() {
    let items: u64 = std::env::var(ITEMS_ENV).unwrap().parse().unwrap();
    let pool = parpool::ThreadPool::new(2).unwrap();
    let mut checksum = 0u64;
    for (i, value) in pool
        .imap(0..items, |x| x.wrapping_mul(3))
        .chunk_size(1024)
        .enumerate()
    {
        assert_eq!(value, (i as u64).wrapping_mul(3));
        checksum = checksum.wrapping_add(value);
    }
    let unordered: u64 = pool
        .imap_unordered(0..items, |x| x & 1)
        .chunk_size(1024)
        .sum();
    assert_eq!(unordered, items / 2);
    println!("CHECKSUM={checksum}");
    println!("PEAK_KIB={}", peak_rss_kib());
}

fn peak_for(items: u64) -> u64 {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ITEMS_ENV, items.to_string())
        .output()
        .expect("re-execute the test binary");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("PEAK_KIB="))
        .expect("peak line")
        .parse()
        .unwrap()
}

#[test]
fn peak_memory_does_not_grow_with_input_length() {
    let small = peak_for(1_000_000);
    let large = peak_for(10_000_000);
    let growth_kib = large.saturating_sub(small);
    assert!(
        growth_kib <= 8 * 1024,
        "peak RSS grew by {growth_kib} KiB (1M: {small}, 10M: {large})"
    );
}
