//! I/O-bound fan-out: many requests against a slow local server (started by the example
//! itself, no internet needed), issued with `submit` and collected with `as_completed`, each
//! with its own timeout and its own error. Run with
//! `cargo run --release --example fanout -- [--requests N] [--timeout-ms T]`.
//!
//! The server answers `GET <n>` after `n` milliseconds with `OK <n>`; some requests ask for
//! more than the timeout (they time out), some for a path the server refuses (an error
//! reply). Threads that wait on sockets cost almost nothing, so the pool is sized for the
//! number of requests in flight, not for the number of cores.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use parpool::{ThreadPool, as_completed};

struct Options {
    requests: usize,
    timeout: Duration,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        requests: 40,
        timeout: Duration::from_millis(150),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: u64 = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--requests" => options.requests = value as usize,
            "--timeout-ms" => options.timeout = Duration::from_millis(value),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

/// The slow server: one thread per connection (it only sleeps and writes).
fn start_slow_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = answer(stream);
            });
        }
    });
    Ok(addr)
}

fn answer(stream: TcpStream) -> std::io::Result<()> {
    let mut request = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut request)?;
    let mut stream = stream;
    match request
        .trim()
        .strip_prefix("GET ")
        .and_then(|n| n.parse::<u64>().ok())
    {
        Some(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            writeln!(stream, "OK {ms}")
        }
        None => writeln!(stream, "ERR bad request {:?}", request.trim()),
    }
}

/// What happened to one request.
#[derive(Debug)]
enum Failure {
    Timeout,
    Refused(String),
    Io(std::io::Error),
}

/// One request with its own deadline: connect, send, read the reply line.
fn fetch(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, Failure> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(Failure::Io)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(Failure::Io)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(Failure::Io)?;
    writeln!(&stream, "GET {path}").map_err(Failure::Io)?;
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(Failure::Timeout);
        }
        Err(e) => return Err(Failure::Io(e)),
    }
    match reply.trim().strip_prefix("OK ") {
        Some(body) => Ok(body.to_owned()),
        None => Err(Failure::Refused(reply.trim().to_owned())),
    }
}

fn main() -> Result<(), String> {
    let options = parse_options()?;
    let addr = start_slow_server().map_err(|e| e.to_string())?;
    let timeout_ms = options.timeout.as_millis() as u64;
    // Request i asks for a delay that cycles through fast ones (at most half the timeout)
    // and too slow ones (at least twice the timeout), and every seventh for a bad path.
    let paths: Vec<String> = (0..options.requests)
        .map(|i| match i % 7 {
            0 | 5 => "10".to_owned(),
            1 => (timeout_ms / 4).to_string(),
            2 => (timeout_ms / 2).to_string(),
            3 => (timeout_ms * 2).to_string(),
            4 => (timeout_ms * 3).to_string(),
            _ => "nonsense".to_owned(),
        })
        .collect();
    let expected_timeouts = paths
        .iter()
        .filter(|p| p.parse::<u64>().is_ok_and(|ms| ms > timeout_ms))
        .count();

    let pool = ThreadPool::new(options.requests.clamp(1, 64)).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let tasks: Vec<_> = paths
        .iter()
        .map(|path| {
            let (path, timeout) = (path.clone(), options.timeout);
            pool.submit(move || fetch(addr, &path, timeout))
        })
        .collect();
    let (mut ok, mut timeouts, mut refused, mut other) = (0, 0, 0, 0);
    // `as_completed` tells which request finished: its index in `tasks`.
    for (i, task) in as_completed(tasks) {
        let outcome = task
            .get()
            .map_err(|e| format!("request task failed: {e}"))?;
        let at = start.elapsed();
        match outcome {
            Ok(body) => {
                ok += 1;
                println!("{at:>9.2?}  request {i:>3}: ok, waited {body} ms");
            }
            Err(Failure::Timeout) => {
                timeouts += 1;
                println!("{at:>9.2?}  request {i:>3}: timed out after {timeout_ms} ms");
            }
            Err(Failure::Refused(reply)) => {
                refused += 1;
                println!("{at:>9.2?}  request {i:>3}: refused: {reply}");
            }
            Err(Failure::Io(error)) => {
                other += 1;
                println!("{at:>9.2?}  request {i:>3}: I/O error: {error}");
            }
        }
    }
    let elapsed = start.elapsed();
    let sequential_ms: u64 = paths
        .iter()
        .map(|p| p.parse::<u64>().map_or(0, |ms| ms.min(timeout_ms)))
        .sum();
    println!(
        "{} requests in {elapsed:.2?} (one after another: ~{sequential_ms} ms): \
         {ok} ok, {timeouts} timed out, {refused} refused, {other} other errors",
        options.requests
    );
    if timeouts != expected_timeouts || other != 0 || ok + timeouts + refused != options.requests {
        return Err(format!(
            "expected {expected_timeouts} timeouts and no other errors"
        ));
    }
    println!("every request accounted for");
    Ok(())
}
