//! The kill storm: four producer and four consumer processes move items through one small
//! `shm::Queue` while the parent SIGKILLs pool workers at random moments (so a producer
//! or consumer dies at whatever instruction it is at: inside `put` or `get`, holding a
//! lock, asleep, or between items), and replaces the jobs that died. Producers also abort
//! now and then right after a put.
//!
//! At the end: no item was got twice; none was torn (each item's payload is a function of
//! its id, checked by the consumer); every item whose `put` returned (acknowledged in
//! shared memory) was got, except at most one per killed consumer (one that died after
//! taking an item and before recording it: "wholly gone", as documented); and nothing hung:
//! the storm runs in a child process (this test binary re-executed) with a time bound.
//!
//! `PARPOOL_KILL_STORM_ITEMS` sets the number of items (default 100 000; the full
//! run is 1 000 000).
#![cfg(all(feature = "process", target_os = "linux"))]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use parpool::ProcessPool;
use parpool::process::ProcessTask;
use parpool::shm::{Array, Queue, Value};

const SCENARIO: &str = "PARPOOL_TEST_SCENARIO";
const ITEMS_ENV: &str = "PARPOOL_KILL_STORM_ITEMS";
const DEFAULT_ITEMS: u64 = 100_000;
const PRODUCERS: usize = 4;
const CONSUMERS: usize = 4;
/// A producer aborts itself after putting every this many-th id (besides the SIGKILLs).
const ABORT_EVERY: u64 = 25_000;
/// The most milliseconds between two kills (each pause is random below it).
const MAX_KILL_PAUSE_MS: u64 = 5;

type Item = (u64, Vec<u8>);

fn payload(id: u64) -> Vec<u8> {
    (0..id % 29)
        .map(|i| (id as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

/// Shared state of one storm.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Storm {
    queue: Queue<Item>,
    /// The next id to put (each id is claimed once, so put at most once).
    next: Value<u64>,
    /// 1 once the put of that id returned.
    acked: Array<u8>,
    /// How many times that id was got.
    got: Array<u8>,
    /// Items whose payload did not match their id.
    torn: Value<u64>,
    items: u64,
}

fn produce(storm: Storm) {
    loop {
        let id = storm.next.fetch_add(1);
        if id >= storm.items {
            return;
        }
        storm.queue.put((id, payload(id))).unwrap();
        if id % ABORT_EVERY == ABORT_EVERY - 1 {
            // Between the put and its acknowledgement: an item in the queue, never acked.
            std::process::abort();
        }
        let mut acked = storm.acked.lock().unwrap_or_else(|e| e.into_inner());
        acked[id as usize] = 1;
    }
}

fn consume(storm: Storm) {
    loop {
        match storm.queue.get() {
            Ok((id, bytes)) => {
                if id >= storm.items || bytes != payload(id) {
                    storm.torn.fetch_add(1);
                    continue;
                }
                let mut got = storm.got.lock().unwrap_or_else(|e| e.into_inner());
                got[id as usize] = got[id as usize].saturating_add(1);
            }
            Err(e) if e.is_closed() => return,
            Err(e) => panic!("get failed: {e}"),
        }
    }
}

/// A xorshift generator: enough randomness for kill timing, and a seed to print.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Replaces each finished job of `tasks`: keeps it running while `again` says so. Returns
/// how many had been killed.
fn reap(
    tasks: &mut Vec<ProcessTask<()>>,
    resubmit: impl Fn() -> ProcessTask<()>,
    again: impl Fn() -> bool,
) -> u64 {
    let mut killed = 0;
    let mut i = 0;
    while i < tasks.len() {
        if !tasks[i].is_ready() {
            i += 1;
            continue;
        }
        let task = tasks.swap_remove(i);
        match task.get() {
            Ok(()) => {}
            Err(e) if e.is_crash() => {
                killed += 1;
                if again() {
                    tasks.push(resubmit());
                }
            }
            Err(e) => panic!("a storm job failed otherwise: {e}"),
        }
    }
    killed
}

fn storm(items: u64) {
    let pool = ProcessPool::new(PRODUCERS + CONSUMERS).unwrap();
    let storm = Storm {
        queue: Queue::new(64).unwrap(),
        next: Value::new(0).unwrap(),
        acked: Array::zeroed(items as usize).unwrap(),
        got: Array::zeroed(items as usize).unwrap(),
        torn: Value::new(0).unwrap(),
        items,
    };
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let start = Instant::now();
    let submit_producer = || pool.submit(produce, storm.clone()).unwrap();
    let submit_consumer = || pool.submit(consume, storm.clone()).unwrap();
    let mut producers: Vec<_> = (0..PRODUCERS).map(|_| submit_producer()).collect();
    let mut consumers: Vec<_> = (0..CONSUMERS).map(|_| submit_consumer()).collect();
    let (mut kills, mut producers_died, mut consumers_died) = (0u64, 0u64, 0u64);
    let mut closed = false;
    loop {
        std::thread::sleep(Duration::from_millis(rng.next() % MAX_KILL_PAUSE_MS));
        let pids = pool.pids();
        if !pids.is_empty() {
            let pid = pids[(rng.next() % pids.len() as u64) as usize];
            // SAFETY: kill(2) has no memory effects; the pid is a live worker of our pool
            // (or one that just exited, which the pool has not reaped yet).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            kills += 1;
        }
        producers_died += reap(&mut producers, submit_producer, || {
            storm.next.load() < items
        });
        consumers_died += reap(&mut consumers, submit_consumer, || true);
        if !closed && producers.is_empty() {
            storm.queue.close();
            closed = true;
        }
        if closed && consumers.is_empty() {
            break;
        }
    }
    let elapsed = start.elapsed();
    // A worker killed while holding these locks poisoned them; the bytes are whole.
    let acked = storm
        .acked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .to_vec();
    let got = storm.got.lock().unwrap_or_else(|e| e.into_inner()).to_vec();
    let twice = got.iter().filter(|&&g| g > 1).count() as u64;
    let missing = (0..items as usize)
        .filter(|&i| acked[i] == 1 && got[i] == 0)
        .count() as u64;
    let got_unacked = (0..items as usize)
        .filter(|&i| acked[i] == 0 && got[i] == 1)
        .count() as u64;
    let got_total = got.iter().map(|&g| u64::from(g)).sum::<u64>();
    let torn = storm.torn.load();
    println!(
        "STORM seed={seed} items={items} got={got_total} kills={kills} producers_died={producers_died} \
         consumers_died={consumers_died} got_twice={twice} torn={torn} \
         acked_but_missing={missing} got_unacked={got_unacked} seconds={:.1}",
        elapsed.as_secs_f64()
    );
    assert_eq!(torn, 0, "torn items");
    assert_eq!(twice, 0, "items got twice");
    assert!(
        missing <= consumers_died,
        "{missing} acknowledged items never got, more than the {consumers_died} consumers killed"
    );
    // Each id is claimed once: it is got, or its producer died before the commit (one per
    // killed producer), or a consumer died with it (one per killed consumer).
    assert!(
        got_total + producers_died + consumers_died >= items,
        "items lost beyond what the killed users explain"
    );
}

/// The child side.
#[test]
#[ignore = "runs only as a child process of the tests below"]
fn child() {
    match std::env::var(SCENARIO).as_deref() {
        Ok("storm") => {
            let items = std::env::var(ITEMS_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_ITEMS);
            storm(items);
        }
        other => panic!("unknown scenario {other:?}"),
    }
}

#[test]
fn kill_storm_every_acknowledged_item_got_once_nothing_torn_nothing_hangs() {
    let items: u64 = std::env::var(ITEMS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ITEMS);
    // Generous for a loaded 2-core machine: ~40 µs per item plus a minute.
    let limit = Duration::from_secs(60 + items / 25_000);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCENARIO, "storm")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("re-execute the test binary");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let summary = text
        .lines()
        .filter(|l| l.contains("STORM"))
        .collect::<Vec<_>>()
        .join("\n");
    println!("{summary}");
    let status = status.unwrap_or_else(|| panic!("the storm hung (over {limit:?}):\n{text}"));
    assert!(status.success(), "the storm failed:\n{text}");
}
