"""Python multiprocessing.Value baseline for benches/shm.rs.

Two processes each add 1 to a multiprocessing.Value('q', 0) N times, under the value's lock
(`with v.get_lock(): v.value += 1`), which is how Python makes the increment exact.
Prints `locked_increment_ops_per_s <rate>` (the median of a few rounds).
Run directly: python3 benches/python/shm_baseline.py
"""

import multiprocessing as mp
import statistics
import time

N = 200_000
ROUNDS = 3


def add(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def one_round():
    v = mp.Value("q", 0)
    procs = [mp.Process(target=add, args=(v, N)) for _ in range(2)]
    t = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - t
    assert v.value == 2 * N, v.value
    return 2 * N / elapsed


def main():
    rates = [one_round() for _ in range(ROUNDS)]
    print(f"locked_increment_ops_per_s {statistics.median(rates):.0f}")


if __name__ == "__main__":
    main()
