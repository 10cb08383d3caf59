"""Python baselines for the thread-pool benchmarks, run by `cargo bench --bench pool`.

Usage: thread_baseline.py <case> <iterations>
Prints the total nanoseconds the timed part took, so criterion's `iter_custom` can put
Python in the same group as parpool and rayon.
"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def submit_get_warm(pool, iterations):
    pool.submit(int).result()  # start the worker
    start = time.perf_counter_ns()
    for i in range(iterations):
        pool.submit(int, i).result()
    return time.perf_counter_ns() - start


def submit_get_asleep(pool, iterations):
    pool.submit(int).result()
    total = 0
    for i in range(iterations):
        time.sleep(0.005)
        start = time.perf_counter_ns()
        pool.submit(int, i).result()
        total += time.perf_counter_ns() - start
    return total


def main():
    case, iterations = sys.argv[1], int(sys.argv[2])
    with ThreadPoolExecutor(max_workers=2) as pool:
        elapsed = {"warm": submit_get_warm, "asleep": submit_get_asleep}[case](pool, iterations)
    print(elapsed)


if __name__ == "__main__":
    main()
