//! The sharp edges of the process pool: no hang when workers cannot be spawned (descriptor
//! limits at build and on a running pool), automatic chunks within the per-job segment limit,
//! results naming many segments, process groups killed with their worker, inherited
//! descriptors closed in workers, and protocol violations reported as such. Scenarios that
//! change process-wide limits run in a child process with a time bound.
#![cfg(all(feature = "process", target_os = "linux"))]

#[path = "common/child.rs"]
mod child;

use std::io::Write;
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use parpool::ProcessPool;
use parpool::shm::Value;

fn square(x: u64) -> u64 {
    x * x
}

fn abort(_: ()) {
    std::process::abort();
}

/// Sets the soft `RLIMIT_NOFILE` of this process; returns the old one.
fn set_nofile(soft: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the plain struct above.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let old = limit.rlim_cur;
        limit.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        old
    }
}

/// The lowest descriptor number that is free now.
fn lowest_free_fd() -> u64 {
    let file = std::fs::File::open("/dev/null").unwrap();
    std::os::fd::AsRawFd::as_raw_fd(&file) as u64
}

/// Builds pools under every descriptor limit from "nothing free" to "enough": each build
/// returns (an error, or a working pool) within its startup timeout.
fn nofile_at_build() {
    let base = lowest_free_fd();
    let mut errors = 0;
    for extra in 0..16 {
        let old = set_nofile(base + extra);
        let started = Instant::now();
        let built = ProcessPool::builder()
            .processes(2)
            .startup_timeout(Duration::from_secs(5))
            .build();
        let took = started.elapsed();
        set_nofile(old);
        match built {
            Ok(pool) => assert_eq!(pool.map(0..10u64, square).unwrap()[3], 9),
            Err(e) => {
                assert!(e.is_startup(), "limit {}: {e}", base + extra);
                errors += 1;
            }
        }
        println!("limit {}: built or failed in {took:?}", base + extra);
    }
    assert!(errors > 0, "the low limits must fail");
    // The limits are lifted: the next pool works.
    let pool = ProcessPool::new(2).unwrap();
    assert_eq!(pool.map(0..10u64, square).unwrap()[9], 81);
}

/// A running pool whose worker dies while no descriptor can be opened: jobs fail with an
/// error naming the cause, and the pool serves again once the limit is lifted.
fn nofile_on_running_pool() {
    let pool = ProcessPool::new(1).unwrap();
    assert_eq!(pool.submit(square, 3).unwrap().get().unwrap(), 9);
    // Standard input, output and error only: every new descriptor fails with EMFILE.
    let old = set_nofile(3);
    assert!(
        pool.submit(abort, ())
            .unwrap()
            .get()
            .unwrap_err()
            .is_crash()
    );
    // Queued (or refused, once the pool gave up), the job fails after the attempts.
    let error = match pool.submit(square, 4).and_then(|task| task.get()) {
        Err(e) if e.is_startup() => e,
        other => panic!("no worker can start, yet: {other:?}"),
    };
    assert_eq!(error.os_error(), Some(libc::EMFILE), "{error}");
    println!("JOB ERROR: {error}");
    set_nofile(old);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match pool.submit(square, 5).and_then(|task| task.get()) {
            Ok(v) => {
                assert_eq!(v, 25);
                break;
            }
            Err(e) if e.is_startup() => {
                assert!(Instant::now() < deadline, "the pool did not recover: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// An elastic pool that cannot grow (no descriptor can be opened) serves a burst with the
/// workers it has, trying to grow at the backoff's pace; once the limit is lifted it grows.
fn nofile_on_growing_pool() {
    let pool = ProcessPool::builder().elastic(1, 4).build().unwrap();
    let old = set_nofile(3);
    let results = pool.map(vec![20; 40], nap);
    set_nofile(old);
    assert_eq!(
        results.unwrap(),
        vec![20; 40],
        "the ready worker serves every job"
    );
    assert_eq!(pool.counters().spawned, 1, "no worker could be added");
    // Lifted: the next burst grows the pool (after the last backoff, at most 2 s).
    assert_eq!(pool.map(vec![20; 400], nap).unwrap(), vec![20; 400]);
    assert!(pool.counters().spawned > 1, "{:?}", pool.counters());
}

fn slow_initializer() {
    std::thread::sleep(Duration::from_millis(300));
}

/// Kills `pid` with SIGKILL.
fn sigkill(pid: u32) {
    // SAFETY: kill(2) has no memory effects; the pid is a worker of the caller's pool that
    // has not been reaped (its slot still names it).
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// Every replacement of a 4-process pool is killed once while it starts (an outside killer,
/// such as the kill storm of `shm_queue_kill`): a job queued meanwhile is not a job whose
/// worker died, and it waits for the next replacements instead of failing with a startup
/// error. (Before the fix, 3 failed starts anywhere in the pool, with no worker ready,
/// failed the queue.)
fn killed_while_starting() {
    let pool = ProcessPool::builder()
        .processes(4)
        .initializer(slow_initializer)
        .build()
        .unwrap();
    let first = pool.pids();
    assert_eq!(first.len(), 4);
    for &pid in &first {
        sigkill(pid); // idle: nothing fails, the slots respawn
    }
    let task = pool.submit(square, 7).unwrap();
    let mut killed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while killed.len() < 4 {
        assert!(Instant::now() < deadline, "no replacements to kill");
        for pid in pool.pids() {
            if !first.contains(&pid) && !killed.contains(&pid) {
                sigkill(pid); // in its 300 ms initializer
                killed.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(task.get().unwrap(), 49);
}

/// The child side: one scenario per process.
#[test]
#[ignore = "runs only as a child process of the tests below"]
fn child() {
    match std::env::var(child::SCENARIO).as_deref() {
        Ok("nofile-build") => nofile_at_build(),
        Ok("nofile-running") => nofile_on_running_pool(),
        Ok("nofile-growing") => nofile_on_growing_pool(),
        Ok("killed-while-starting") => killed_while_starting(),
        Ok("inherited-descriptors") => inherited_descriptors(),
        other => panic!("unknown scenario {other:?}"),
    }
}

fn run_scenario(scenario: &str) {
    let outcome = child::run_child(scenario, &[], &[], Duration::from_secs(120));
    assert!(!outcome.timed_out, "hung:\n{}", outcome.output);
    assert!(outcome.success, "{}", outcome.output);
}

#[test]
fn spawn_failure_at_build_is_an_error_not_a_hang() {
    run_scenario("nofile-build");
}

#[test]
fn spawn_failure_on_a_running_pool_fails_jobs_then_recovers() {
    run_scenario("nofile-running");
}

#[test]
fn spawn_failure_while_growing_backs_off_and_serves() {
    run_scenario("nofile-growing");
}

#[test]
fn workers_killed_while_starting_do_not_fail_queued_jobs() {
    run_scenario("killed-while-starting");
}

fn read_value(v: Value<u64>) -> u64 {
    v.load()
}

fn make_value(x: u64) -> Value<u64> {
    Value::new(x).unwrap()
}

#[test]
fn stress_automatic_chunks_respect_the_segment_limit() {
    let pool = ProcessPool::new(2).unwrap();
    let values: Vec<Value<u64>> = (0..5_000u64).map(|i| Value::new(i).unwrap()).collect();
    let read = pool.map(values, read_value).unwrap();
    assert_eq!(read, (0..5_000u64).collect::<Vec<_>>());
    // Results naming a segment each, in automatic chunks of 250.
    let made = pool.map(0..2_000u64, make_value).unwrap();
    assert!(made.iter().enumerate().all(|(i, v)| v.load() == i as u64));
}

#[test]
fn a_fixed_chunk_over_the_segment_limit_names_the_type() {
    let pool = ProcessPool::new(1).unwrap();
    let values: Vec<Value<u64>> = (0..100u64).map(|i| Value::new(i).unwrap()).collect();
    let err = pool.map_chunked(values, 100, read_value).unwrap_err();
    assert!(err.is_serialization(), "{err}");
    assert!(err.type_name().unwrap().contains("Value<u64>"), "{err}");
}

/// Spawns a long sleep (in the worker's process group) and returns its pid.
fn fork_sleeper(_: ()) -> u32 {
    std::process::Command::new("sleep")
        .arg("1000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
        .id()
}

fn fork_sleeper_then_abort(_: ()) -> u32 {
    fork_sleeper(());
    std::process::abort();
}

/// Whether a process is gone (no `/proc` entry, or a zombie).
fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "grandchild {pid} outlived its worker"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn grandchildren_die_with_the_pool() {
    let pool = ProcessPool::new(1).unwrap();
    let grandchild = pool.submit(fork_sleeper, ()).unwrap().get().unwrap();
    assert!(!is_gone(grandchild));
    drop(pool);
    wait_gone(grandchild);
}

#[test]
fn grandchildren_die_with_a_timed_out_or_terminated_worker() {
    let pool = ProcessPool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let grandchild = pool.submit(fork_sleeper, ()).unwrap().get().unwrap();
    let hang = |_: ()| std::thread::sleep(Duration::from_secs(100));
    assert!(
        pool.submit(hang, ())
            .unwrap()
            .get()
            .unwrap_err()
            .is_task_timeout()
    );
    wait_gone(grandchild);
    let grandchild = pool.submit(fork_sleeper, ()).unwrap().get().unwrap();
    pool.terminate();
    wait_gone(grandchild);
}

#[test]
fn grandchildren_die_with_a_crashed_worker() {
    let pool = ProcessPool::new(1).unwrap();
    let err = pool
        .submit(fork_sleeper_then_abort, ())
        .unwrap()
        .get()
        .unwrap_err();
    assert!(err.is_crash(), "{err}");
    // The grandchild's pid is not known here; its group is the dead worker's pid.
    let group = err.pid().unwrap() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    // SAFETY: kill with signal 0 only checks whether the group has a process.
    while unsafe { libc::kill(-group, 0) } == 0 {
        assert!(
            Instant::now() < deadline,
            "the worker's process group outlived it"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether descriptor `fd` is open in this process.
fn is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Runs in a child process: `dup2` onto fixed numbers would close whatever another test of
/// this binary, running at the same time, holds there (the automatic-chunks test opens
/// thousands of segments), and the standard library aborts on that descriptor's next use.
fn inherited_descriptors() {
    // Descriptors without close-on-exec, as an MPI launcher leaves them, at numbers a
    // worker does not use for itself.
    let mut pipe = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    let fds = [200, 201];
    for (from, to) in pipe.into_iter().zip(fds) {
        // SAFETY: dup2 onto a free high number (it clears close-on-exec), then close the
        // original; plain descriptor-table calls.
        unsafe {
            assert_eq!(libc::dup2(from, to), to);
            libc::close(from);
        }
    }
    let pool = ProcessPool::new(1).unwrap();
    for fd in fds {
        assert!(is_open(fd));
        assert!(!pool.submit(is_open, fd).unwrap().get().unwrap(), "fd {fd}");
    }
    // SAFETY: closing the pipe made above.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
}

#[test]
fn workers_do_not_inherit_descriptors() {
    run_scenario("inherited-descriptors");
}

fn scribble(_: ()) {
    // Descriptor 3 of a worker is its socket to the parent.
    // SAFETY: the File is never dropped, so descriptor 3 is not closed here.
    let socket = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(3) });
    let _ = (&*socket).write_all(b"garbage, garbage, garbage");
    std::thread::sleep(Duration::from_secs(5));
}

#[test]
fn garbage_on_the_socket_is_a_protocol_violation() {
    let pool = ProcessPool::new(1).unwrap();
    let started = Instant::now();
    let err = pool.submit(scribble, ()).unwrap().get().unwrap_err();
    assert!(err.is_protocol_violation(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "killed at once");
    assert_eq!(pool.submit(square, 6).unwrap().get().unwrap(), 36);
}
