//! parpool-mpi's tests: one program that every rank runs, under `mpirun -np 1`, `2` and `4`
//! (`.ci/run`), or alone as a one-rank job (`cargo test -p parpool-mpi`). Every check
//! compares with sequential code on every rank; any failed check panics, and `mpirun` then
//! ends the whole job with a failure.
//!
//! `ranks --die` is the dead-rank check: the last rank exits in the middle of a map, and
//! the job must end with a failure (never hang); `.ci/run` runs it under a timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mpi::collective::Root;
use mpi::topology::Communicator;
use mpi::traits::Equivalence;
use parpool::ThreadPool;
use parpool_mpi::{Cluster, MapError, Plain, Postcard, Schedule};
use serde::{Serialize, Serializer};

/// A plain-data struct that travels as an MPI datatype.
#[derive(Equivalence, Debug, Clone, Copy, PartialEq, Default)]
struct Particle {
    position: [f64; 3],
    id: u64,
}

/// A value whose serialisation fails for 13.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Unlucky(u32);

impl Serialize for Unlucky {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("13 does not encode"));
        }
        s.serialize_u32(self.0)
    }
}

fn cost(i: usize) -> u64 {
    (0..i % 97).fold(i as u64, |acc, k| {
        acc.wrapping_mul(31).wrapping_add(k as u64)
    })
}

struct Checks<'a> {
    cluster: &'a Cluster,
    world: &'a mpi::topology::SimpleCommunicator,
    passed: usize,
}

impl Checks<'_> {
    /// Results must be `Some(expected)` where they are delivered, `None` elsewhere.
    fn expect<R: PartialEq + std::fmt::Debug>(
        &mut self,
        everywhere: bool,
        name: &str,
        got: Result<Option<R>, MapError>,
        expected: impl FnOnce() -> R,
    ) {
        let got = got.unwrap_or_else(|e| panic!("{name}: rank {}: {e}", self.cluster.rank()));
        if everywhere || self.cluster.is_root() {
            assert_eq!(
                got,
                Some(expected()),
                "{name} on rank {}",
                self.cluster.rank()
            );
        } else {
            assert!(
                got.is_none(),
                "{name}: rank {} got results",
                self.cluster.rank()
            );
        }
        self.passed += 1;
    }

    /// The map must fail the same way on every rank.
    fn expect_err<R: std::fmt::Debug>(
        &mut self,
        name: &str,
        got: Result<Option<R>, MapError>,
        check: impl FnOnce(&MapError),
    ) -> MapError {
        let error = got.expect_err(name);
        check(&error);
        // Every rank holds the same error: compare with rank 0's.
        let mine = [
            error.rank() as u64,
            error.item().map_or(u64::MAX, |i| i as u64),
        ];
        let mut roots = mine;
        self.world.process_at_rank(0).broadcast_into(&mut roots[..]);
        assert_eq!(
            mine,
            roots,
            "{name}: rank {} has another error",
            self.cluster.rank()
        );
        self.passed += 1;
        error
    }
}

fn smoke(c: &mut Checks<'_>, everywhere: bool) {
    let cluster = c.cluster;
    let input: Vec<u64> = (0..10_000).collect();
    let got = cluster.map(Plain, &input, |&x| x * 3 + 1);
    c.expect(everywhere, "map u64", got, || {
        input.iter().map(|&x| x * 3 + 1).collect::<Vec<_>>()
    });

    let got = cluster.map_range(Postcard, 1000, |i| format!("<{i}>"));
    c.expect(everywhere, "map_range String", got, || {
        (0..1000).map(|i| format!("<{i}>")).collect::<Vec<_>>()
    });

    let particles: Vec<Particle> = (0..3000)
        .map(|i| Particle {
            position: [i as f64, 0.5, -1.0],
            id: i,
        })
        .collect();
    let moved = |p: &Particle| Particle {
        position: [p.position[0] * 2.0, 1.0, 0.0],
        id: p.id,
    };
    let got = cluster.map(Plain, &particles, moved);
    c.expect(everywhere, "map Equivalence struct", got, || {
        particles.iter().map(moved).collect::<Vec<_>>()
    });

    let got = cluster.map_range(Plain, 50_000, cost);
    c.expect(everywhere, "map_range uneven cost", got, || {
        (0..50_000).map(cost).collect::<Vec<_>>()
    });
}

fn reductions(c: &mut Checks<'_>, everywhere: bool) {
    let cluster = c.cluster;
    let got = cluster.reduce_range(Plain, 100_000, |i| i as u64, || 0, |a, b| a + b);
    c.expect(everywhere, "reduce sum", got, || 100_000 * 99_999 / 2);
    // Concatenation is associative but not commutative: the order must hold.
    let got = cluster.reduce_range(
        Postcard,
        700,
        |i| format!("{i},"),
        String::new,
        |a, b| a + &b,
    );
    c.expect(everywhere, "reduce concatenation", got, || {
        (0..700).map(|i| format!("{i},")).collect::<String>()
    });
    let got = cluster.reduce_range(Plain, 0, |i| i as u64, || 1, |a, b| a * b);
    c.expect(everywhere, "reduce empty", got, || 1);
}

fn edges(c: &mut Checks<'_>, everywhere: bool) {
    let cluster = c.cluster;
    for n in [0, 1, 3, 5] {
        let input: Vec<i32> = (0..n).collect();
        let got = cluster.map(Plain, &input, |x| -x);
        c.expect(everywhere, "tiny map", got, || {
            input.iter().map(|x| -x).collect::<Vec<_>>()
        });
        let got = cluster.map_range(Postcard, n as usize, |i| vec![i as u8; i]);
        c.expect(everywhere, "tiny map_range", got, || {
            (0..n as usize)
                .map(|i| vec![i as u8; i])
                .collect::<Vec<_>>()
        });
    }
}

/// Chunks and results far above the eager limit: blocking sends would deadlock here.
fn large_messages(c: &mut Checks<'_>, everywhere: bool) {
    let cluster = c.cluster;
    let input: Vec<u64> = (0..1_000_000).collect();
    let got = cluster.map(Plain, &input, |&x| x ^ 0x5555);
    c.expect(everywhere, "1M items", got, || {
        input.iter().map(|&x| x ^ 0x5555).collect::<Vec<_>>()
    });
    let got = cluster.map_range(Postcard, 64, |i| vec![i as u8; 300_000]);
    c.expect(everywhere, "300 KB results", got, || {
        (0..64).map(|i| vec![i as u8; 300_000]).collect::<Vec<_>>()
    });
}

fn panics(c: &mut Checks<'_>, schedule: Schedule) {
    let cluster = c.cluster;
    let size = cluster.size();
    let n = 2000;
    let got = cluster.map_range(Plain, n, |i| {
        if i == 777 {
            panic!("intended: item {i} is bad")
        } else {
            i as u64
        }
    });
    c.expect_err("one panic", got, |e| {
        assert!(e.is_panic(), "{e}");
        assert_eq!(e.item(), Some(777));
        assert_eq!(e.message(), "intended: item 777 is bad");
        assert!(e.rank() < size);
        if schedule == Schedule::Static {
            assert_eq!(e.rank(), 777 * size / n, "{e}");
        }
        assert!(e.to_string().contains("item 777 panicked"), "{e}");
    });
    // A panic on every rank: the static split reports the lowest rank's.
    let input: Vec<u32> = (0..n as u32).collect();
    let got = cluster.map(Postcard, &input, |&x| -> u32 {
        if x % 500 == 499 {
            panic!("intended: boom")
        } else {
            x
        }
    });
    c.expect_err("panics everywhere", got, |e| {
        assert!(e.is_panic());
        assert_eq!(e.item().map(|i| i % 500), Some(499));
        if schedule == Schedule::Static {
            assert_eq!((e.rank(), e.item()), (0, Some(499)));
        }
    });
    let got = cluster.reduce_range(
        Plain,
        n,
        |i| i as u64,
        || 0,
        |a, b| {
            if b == 1500 {
                panic!("intended: op")
            } else {
                a + b
            }
        },
    );
    c.expect_err("panic in op", got, |e| {
        assert!(e.is_panic() && e.message() == "intended: op")
    });
    // Sum 0..2000 passes 10^6 near the end: inside a rank's fold, or in rank 0's fold of
    // the partials; either way an error, never a crash.
    let got = cluster.reduce_range(
        Plain,
        n,
        |i| i as u64,
        || 0,
        |a, b| {
            if a + b > 1_000_000 {
                panic!("intended: total too large")
            } else {
                a + b
            }
        },
    );
    c.expect_err("panic in the final fold", got, |e| {
        assert!(
            e.is_panic() && e.message() == "intended: total too large",
            "{e}"
        );
    });
}

fn misuse(c: &mut Checks<'_>, schedule: Schedule) {
    let cluster = c.cluster;
    let size = cluster.size();
    if size > 1 {
        let n = if cluster.rank() == size - 1 { 99 } else { 100 };
        let got = cluster.map_range(Plain, n, |i| i as u8);
        c.expect_err("item counts differ", got, |e| {
            assert!(e.is_mismatch(), "{e}");
            assert_eq!(e.rank(), size - 1);
        });
    }
    if size > 1 && schedule == Schedule::Static {
        // Item 99 lies in the last rank's block: rank 0 cannot encode it.
        let input: Vec<Unlucky> = (0..100)
            .map(|i| Unlucky(if i == 99 { 13 } else { i }))
            .collect();
        let got = cluster.map(Postcard, &input, |u| u.0);
        c.expect_err("an input that does not encode", got, |e| {
            assert!(e.is_codec(), "{e}");
            assert!(e.message().contains("cannot encode"), "{e}");
        });
    }
}

/// A slow rank gets less work from the dynamic map; the results stay in order.
fn slow_rank(c: &mut Checks<'_>, everywhere: bool) {
    let cluster = c.cluster;
    let size = cluster.size();
    let slow = size - 1;
    let ran = AtomicUsize::new(0);
    let n = 4000;
    let is_slow = cluster.rank() == slow && slow != 0;
    let got = cluster.map_range(Plain, n, |i| {
        ran.fetch_add(1, Ordering::Relaxed);
        if is_slow {
            std::thread::sleep(Duration::from_micros(300));
        }
        i as u32 * 2
    });
    c.expect(everywhere, "slow rank", got, || {
        (0..n as u32).map(|i| i * 2).collect::<Vec<_>>()
    });
    let mut counts = vec![0usize; size];
    let root = c.world.process_at_rank(0);
    let ran = ran.load(Ordering::Relaxed);
    if cluster.is_root() {
        root.gather_into_root(&ran, &mut counts[..]);
        assert_eq!(counts.iter().sum::<usize>(), n, "{counts:?}");
        if size > 1 {
            assert!(counts[slow] < n / size, "the slow rank ran {counts:?}");
        }
    } else {
        root.gather_into(&ran);
    }
}

/// Many maps in a row: no message of one map is taken by the next.
fn stampede(c: &mut Checks<'_>) {
    let cluster = c.cluster;
    for round in 0..200usize {
        let n = round * 7 % 300;
        let got = cluster.map_range(Plain, n, |i| (i + round) as u64);
        c.expect(false, "stampede", got, || {
            (0..n).map(|i| (i + round) as u64).collect::<Vec<_>>()
        });
    }
}

fn die(cluster: &Cluster) {
    let dies = cluster.rank() == cluster.size() - 1;
    let _ = cluster.map_range(Plain, 10_000, |i| {
        if dies && i % 100 == 50 {
            std::process::exit(3);
        }
        std::thread::sleep(Duration::from_micros(50));
        i as u64
    });
    // Reached only if the job failed to end: say so loudly.
    eprintln!(
        "rank {}: the map returned after a rank died",
        cluster.rank()
    );
    std::process::exit(0);
}

/// Keeps the intended panics quiet; any other panic prints as usual.
fn quiet_intended_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload().downcast_ref::<String>().map(String::as_str);
        let message = message.or_else(|| info.payload().downcast_ref::<&str>().copied());
        if !message.is_some_and(|m| m.starts_with("intended: ")) {
            default(info);
        }
    }));
}

fn main() {
    quiet_intended_panics();
    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    let threads = std::env::var("PARPOOL_MPI_TEST_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    if std::env::args().any(|a| a == "--die") {
        die(&Cluster::new(&world, ThreadPool::new(threads).unwrap()));
        return;
    }
    let mut passed = 0;
    for schedule in [Schedule::Static, Schedule::Dynamic] {
        for everywhere in [false, true] {
            let cluster = Cluster::new(&world, ThreadPool::new(threads).unwrap())
                .schedule(schedule)
                .results_on_every_rank(everywhere);
            let mut checks = Checks {
                cluster: &cluster,
                world: &world,
                passed: 0,
            };
            smoke(&mut checks, everywhere);
            reductions(&mut checks, everywhere);
            edges(&mut checks, everywhere);
            large_messages(&mut checks, everywhere);
            panics(&mut checks, schedule);
            misuse(&mut checks, schedule);
            if schedule == Schedule::Dynamic {
                slow_rank(&mut checks, everywhere);
            }
            if !everywhere {
                stampede(&mut checks);
            }
            // Still usable after every failure above.
            let got = cluster.map_range(Plain, 10, |i| i as u16);
            checks.expect(everywhere, "after the failures", got, || {
                (0..10).collect::<Vec<u16>>()
            });
            passed += checks.passed;
        }
    }
    // A small chunk size gives many chunks and many rounds of the dispatcher.
    let cluster = Cluster::new(&world, ThreadPool::new(threads).unwrap()).chunk_size(3);
    let mut checks = Checks {
        cluster: &cluster,
        world: &world,
        passed: 0,
    };
    smoke(&mut checks, false);
    passed += checks.passed;
    if world.rank() == 0 {
        println!(
            "parpool-mpi: {passed} checks passed on {} ranks",
            world.size()
        );
    }
}
