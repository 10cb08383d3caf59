"""Python baselines for the map benchmarks, run by `cargo bench --bench map`.

Usage: map_baseline.py <case> <items>
Prints the total nanoseconds the timed part took, so criterion's `iter_custom` can put
Python in the same group as parpool and rayon.
"""
import sys
import time
from multiprocessing.pool import ThreadPool


def inc(x):
    return x + 1


def imap_chunksize_1(items):
    with ThreadPool(2) as pool:
        list(pool.imap(inc, range(100), chunksize=1))  # start the workers
        start = time.perf_counter_ns()
        for _ in pool.imap(inc, range(items), chunksize=1):
            pass
        return time.perf_counter_ns() - start


def main():
    case, items = sys.argv[1], int(sys.argv[2])
    print({"imap1": imap_chunksize_1}[case](items))


if __name__ == "__main__":
    main()
