//! No process or descriptor outlives what it belongs to: workers, and what their jobs forked,
//! die with a SIGKILLed parent, and a dropped pool leaves no worker, zombie or open descriptor behind.
//!
//! These tests count process-wide things (children, descriptors), so they run one at a time.
#![cfg(all(feature = "process", target_os = "linux"))]

#[path = "common/procs.rs"]
mod procs;
use procs::children;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use parpool::ProcessPool;

/// Serialises the tests of this file: each counts children and descriptors of the process.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Set in the environment of the child test process of `workers_die_with_their_parent`.
const HELPER_ENV: &str = "PARPOOL_TEST_ORPHAN_HELPER";

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Forks a grandchild that sleeps (in the worker's process group), then sleeps forever.
fn fork_then_sleep_forever(_: ()) {
    // SAFETY: the forked child only calls async-signal-safe functions (sleep, _exit).
    unsafe {
        if libc::fork() == 0 {
            loop {
                libc::sleep(1);
            }
        }
    }
    sleep_forever(());
}

fn abort(_: ()) {
    std::process::abort();
}

fn square(x: u64) -> u64 {
    x * x
}

/// Whether a process is gone: no `/proc` entry, or a zombie (dead, not yet reaped by its new
/// parent).
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The live (not zombie) processes in process group `group`.
fn group_members(group: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields[0] != "Z" && fields[2].parse() == Ok(group) {
            found.push(pid);
        }
    }
    found
}

/// The open descriptors of this process.
fn open_fds() -> Vec<String> {
    let listing = format!("/proc/{}/fd", std::process::id());
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        // The directory handle of this very listing: its number depends on which
        // descriptors happen to be free at the moment, so it is not part of the state.
        .filter(|e| std::fs::read_link(e.path()).map_or(true, |t| t.to_string_lossy() != listing))
        .map(|e| {
            let target = std::fs::read_link(e.path()).map(|t| t.display().to_string());
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.unwrap_or_default()
            )
        })
        .collect();
    fds.sort();
    fds
}

/// Asserts that the open descriptors come back to `before`. A descriptor that another thread
/// of the test harness opens for a moment can show up in one listing, so a difference must
/// persist for a while (bounded) to count; a leaked descriptor persists for ever.
fn assert_fds_return_to(before: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_fds() != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(open_fds(), before, "descriptors after drop");
}

/// Not a test on its own: the child process of `workers_die_with_their_parent`. It builds a
/// pool, keeps one worker busy, prints the worker pids and waits to be killed.
#[test]
#[ignore = "helper: run by workers_die_with_their_parent in a child process"]
fn orphan_helper() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    let pool = ProcessPool::new(2).unwrap();
    let _busy = pool.submit(fork_then_sleep_forever, ()).unwrap();
    // The grandchild is forked: the busy worker's process group has two members.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pool.pids().iter().any(|&w| group_members(w).len() >= 2) {
        assert!(Instant::now() < deadline, "the job did not fork");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids: Vec<String> = pool.pids().iter().map(u32::to_string).collect();
    println!("PIDS {}", pids.join(" "));
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn workers_die_with_their_parent() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "orphan_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(helper.stdout.take().unwrap()).lines();
    let workers: Vec<u32> = loop {
        let line = lines
            .next()
            .expect("the helper prints its workers")
            .unwrap();
        // The harness may print "test orphan_helper ... " on the same line first.
        if let Some((_, pids)) = line.split_once("PIDS ") {
            break pids.split(' ').map(|p| p.parse().unwrap()).collect();
        }
    };
    assert_eq!(workers.len(), 2);
    assert!(workers.iter().all(|&w| !is_gone(w)));

    helper.kill().unwrap(); // SIGKILL: no destructor, no cleanup code runs in the parent
    helper.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    while !workers.iter().all(|&w| is_gone(w)) {
        assert!(
            Instant::now() < deadline,
            "workers outlived their parent: {:?}",
            workers.iter().filter(|&&w| !is_gone(w)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The grandchild the busy job forked goes too: the worker's process group empties
    // (a worker is the leader of its group, so the group's id is the worker's pid).
    while let Some(&w) = workers.iter().find(|&&w| !group_members(w).is_empty()) {
        if Instant::now() >= deadline {
            let left = group_members(w);
            // SAFETY: kill(2) has no memory effects; the group is the one the dead worker
            // led, which only the job's grandchild still holds.
            unsafe { libc::kill(-(w as libc::pid_t), libc::SIGKILL) };
            panic!("a grandchild outlived the pool's parent: group {w} holds {left:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn dropped_pool_leaves_no_worker_zombie_or_fd() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fds_before = open_fds();
    assert!(children().is_empty(), "{:?}", children());
    let mut workers = Vec::new();
    {
        let pool = ProcessPool::new(2).unwrap();
        workers.extend(pool.pids());
        assert_eq!(children().len(), 2);
        assert_eq!(pool.map(0..1000u64, square).unwrap()[10], 100);
        // Crashes and replacements along the way must not leak either.
        for _ in 0..3 {
            assert!(
                pool.submit(abort, ())
                    .unwrap()
                    .get()
                    .unwrap_err()
                    .is_crash()
            );
        }
        workers.push(pool.submit(pid, ()).unwrap().get().unwrap());
    }
    assert!(
        children().is_empty(),
        "children after drop: {:?}",
        children()
    );
    assert!(workers.iter().all(|&w| is_gone(w)));
    assert_fds_return_to(&fds_before);
}

#[test]
fn terminated_and_recycling_pools_leave_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fds_before = open_fds();
    {
        let pool = ProcessPool::builder()
            .processes(2)
            .max_tasks_per_child(2)
            .task_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        assert_eq!(pool.map_chunked(0..20u64, 1, square).unwrap()[3], 9);
        assert!(
            pool.submit(sleep_forever, ())
                .unwrap()
                .get()
                .unwrap_err()
                .is_task_timeout()
        );
        let hung = pool.submit(sleep_forever, ()).unwrap();
        pool.terminate();
        assert!(hung.get().unwrap_err().is_closed());
        assert!(
            children().is_empty(),
            "children after terminate: {:?}",
            children()
        );
    }
    assert!(children().is_empty());
    assert_fds_return_to(&fds_before);
}

#[test]
fn a_worker_whose_parent_is_gone_exits_at_once() {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The worker bootstrap checks that its parent is the pid in PARPOOL_WORKER (a parent that
    // died before the worker set its parent-death signal would never signal it). Here the
    // "parent" is pid 1, with a valid proof of origin (the nonce on standard input), so the
    // test binary must exit at once, silently, without running any test.
    let nonce = [7u8; 16];
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    std::io::Write::write_all(&mut ours, &nonce).unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .env("PARPOOL_WORKER", format!("1:{hex}"))
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Runs this test binary with `--list` and `PARPOOL_WORKER=value` (stdin as given); returns
/// whether `main` ran (it lists the tests).
fn main_runs_with_stray_variable(value: &str, stdin: Stdio) -> bool {
    let output = Command::new(std::env::current_exe().unwrap())
        .arg("--list")
        .env("PARPOOL_WORKER", value)
        .stdin(stdin)
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout).contains("stray_worker_variable_is_ignored")
}

#[test]
fn stray_worker_variable_is_ignored() {
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The old format, a pid only: an ordinary program must run its `main`.
    assert!(main_runs_with_stray_variable("123", Stdio::null()));
    // A well-formed value, but nothing on standard input proves it.
    let hex = "00112233445566778899aabbccddeeff";
    let value = format!("{}:{hex}", std::process::id());
    assert!(main_runs_with_stray_variable(&value, Stdio::null()));
    // A socket on standard input with the wrong bytes on it.
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    std::io::Write::write_all(&mut ours, &[9u8; 16]).unwrap();
    assert!(main_runs_with_stray_variable(
        &value,
        Stdio::from(OwnedFd::from(theirs))
    ));
    // A socket with nothing on it yet.
    let (_ours, theirs) = UnixStream::pair().unwrap();
    assert!(main_runs_with_stray_variable(
        &value,
        Stdio::from(OwnedFd::from(theirs))
    ));
    // Garbage.
    assert!(main_runs_with_stray_variable(
        "worker please",
        Stdio::null()
    ));
}
