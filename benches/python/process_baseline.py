"""Python multiprocessing baselines for benches/process.rs.

Measures, on a Pool(2) with the fork start method (CPython's default on Linux):
  - one apply_async().get() round trip (median, microseconds)
  - Pool.map with one item per task (chunksize=1), items per second
  - Pool.map with its default chunking, items per second

Prints one `key value` line per measurement, so the Rust benchmark can read them.
Run directly: python3 benches/python/process_baseline.py
"""

import multiprocessing as mp
import statistics
import time

ONE_ITEM_N = 20_000
AUTO_N = 2_000_000
ROUNDS = 5


def square(x):
    return x * x


def median_round_trip_us(pool, n=2000):
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        pool.apply_async(square, (7,)).get()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def items_per_second(pool, n, chunksize):
    rates = []
    data = range(n)
    for _ in range(ROUNDS):
        t = time.perf_counter()
        if chunksize is None:
            out = pool.map(square, data)
        else:
            out = pool.map(square, data, chunksize)
        elapsed = time.perf_counter() - t
        assert out[-1] == (n - 1) ** 2
        rates.append(n / elapsed)
    return statistics.median(rates)


def main():
    with mp.Pool(2) as pool:
        pool.map(square, range(1000))  # warm up: workers started and imported
        print(f"round_trip_us {median_round_trip_us(pool):.1f}")
        print(f"map_one_item_per_job_items_per_s {items_per_second(pool, ONE_ITEM_N, 1):.0f}")
        print(f"map_auto_chunks_items_per_s {items_per_second(pool, AUTO_N, None):.0f}")


if __name__ == "__main__":
    main()
