//! A TCP echo server whose connections are served by a parpool pool. Run the server with
//! `cargo run --release --example echo_server -- [--port P] [--threads T]` (port 0, the
//! default, picks a free one and prints it), or a self-checking run with
//! `cargo run --release --example echo_server -- --clients 16 --messages 200`: it starts the
//! server in-process, opens that many concurrent connections, verifies every echo, prints
//! what it measured, and exits.
//!
//! Each connection is a task submitted to the pool. Connections block on I/O, so the pool's
//! size caps how many are served at once; further connections wait, accepted, until a
//! worker is free. Every socket has a read and write timeout, so no client or connection can
//! keep the process alive for ever.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use parpool::{ThreadPool, as_completed};

/// How long any socket operation may block.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

struct Options {
    port: u16,
    threads: usize,
    clients: Option<usize>,
    messages: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        port: 0,
        threads: 8,
        clients: None,
        messages: 100,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{flag} needs a value"))?
                .parse::<usize>()
                .map_err(|e| format!("{flag}: {e}"))
        };
        match flag.as_str() {
            "--port" => options.port = u16::try_from(value()?).map_err(|e| e.to_string())?,
            "--threads" => options.threads = value()?,
            "--clients" => options.clients = Some(value()?),
            "--messages" => options.messages = value()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(options)
}

/// Echoes lines back until the client closes the connection.
fn serve_connection(stream: TcpStream) -> std::io::Result<u64> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut echoed = 0;
    while reader.read_line(&mut line)? > 0 {
        writer.write_all(line.as_bytes())?;
        echoed += 1;
        line.clear();
    }
    Ok(echoed)
}

/// Accepts connections for ever, handing each to the pool.
fn run_server(listener: TcpListener, pool: &ThreadPool) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let peer = stream.peer_addr().ok();
                let task = pool.submit(move || serve_connection(stream));
                task.on_done(move |outcome| {
                    let peer = peer.map_or_else(|| "?".to_owned(), |peer| peer.to_string());
                    match outcome {
                        Ok(Ok(echoed)) => {
                            eprintln!("connection from {peer} closed ({echoed} lines)")
                        }
                        Ok(Err(error)) => eprintln!("connection from {peer} failed: {error}"),
                        Err(error) => eprintln!("connection from {peer}: {error}"),
                    }
                });
            }
            Err(error) => eprintln!("accept failed: {error}"),
        }
    }
}

/// One client: sends `messages` lines and checks each echo. Returns the round-trip times.
fn run_client(addr: SocketAddr, id: usize, messages: usize) -> Result<Vec<Duration>, String> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut round_trips = Vec::with_capacity(messages);
    let mut reply = String::new();
    for n in 0..messages {
        let message = format!("client {id} message {n}\n");
        let start = Instant::now();
        writer
            .write_all(message.as_bytes())
            .map_err(|e| e.to_string())?;
        reply.clear();
        reader
            .read_line(&mut reply)
            .map_err(|e| format!("client {id}: {e}"))?;
        round_trips.push(start.elapsed());
        if reply != message {
            return Err(format!("client {id}: sent {message:?}, got back {reply:?}"));
        }
    }
    writer
        .shutdown(Shutdown::Write)
        .map_err(|e| e.to_string())?;
    Ok(round_trips)
}

fn main() -> Result<(), String> {
    let options = parse_options()?;
    let server_pool = ThreadPool::builder()
        .num_threads(options.threads)
        .thread_name(|i| format!("echo-{i}"))
        .build()
        .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(("127.0.0.1", options.port)).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "echo server listening on {addr} ({} pool threads)",
        options.threads
    );

    let Some(clients) = options.clients else {
        run_server(listener, &server_pool);
        return Ok(());
    };

    // Self-checking run: the accept loop on its own thread, the clients as tasks of a
    // second pool (one thread per client: they block on the network).
    std::thread::spawn(move || run_server(listener, &server_pool));
    let client_pool = ThreadPool::new(clients.max(1)).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|id| client_pool.submit(move || run_client(addr, id, options.messages)))
        .collect();
    let mut round_trips = Vec::new();
    let mut failures = 0;
    for (_, task) in as_completed(tasks) {
        match task.get() {
            Ok(Ok(times)) => round_trips.extend(times),
            Ok(Err(error)) => {
                failures += 1;
                eprintln!("client failed: {error}");
            }
            Err(error) => {
                failures += 1;
                eprintln!("client task failed: {error}");
            }
        }
    }
    let elapsed = start.elapsed();
    round_trips.sort();
    let verified = round_trips.len();
    println!(
        "{clients} clients x {} messages: {verified} echoes verified, {failures} clients failed, in {elapsed:.2?}",
        options.messages
    );
    if let (Some(median), Some(worst)) = (round_trips.get(verified / 2), round_trips.last()) {
        println!("round trip: median {median:.2?}, worst {worst:.2?}");
    }
    if failures > 0 || verified != clients * options.messages {
        return Err(format!("{failures} clients failed"));
    }
    println!("all echoes verified");
    Ok(())
}
