//! Runs a scenario of the current test binary in a child process, with a time bound: a
//! scenario that hangs or crashes fails its own test instead of stalling or killing the suite.
//!
//! The test binary is re-executed on an ignored test named `child`, with the scenario's name
//! in [`SCENARIO`]; that test dispatches on it.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that names the scenario a child runs.
pub(crate) const SCENARIO: &str = "PARPOOL_TEST_SCENARIO";

/// How a child scenario ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// It exited with status 0 within the bound.
    pub(crate) success: bool,
    /// It was killed for running past the bound.
    pub(crate) timed_out: bool,
    /// Its standard output and standard error, in that order.
    pub(crate) output: String,
}

/// Runs `scenario` in a child process (with `env` added and the variables in `clear`
/// removed), killing it after `bound`.
pub(crate) fn run_child(
    scenario: &str,
    env: &[(&str, &str)],
    clear: &[&str],
    bound: Duration,
) -> Outcome {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO, scenario)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    for key in clear {
        command.env_remove(key);
    }
    let mut child = command.spawn().expect("re-execute the test binary");
    // Drain both pipes on threads, so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + bound;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = out.join().unwrap() + &err.join().unwrap();
    Outcome {
        success: status.success() && !timed_out,
        timed_out,
        output,
    }
}
