"""Python multiprocessing baselines for benches/shm.rs.

- Two processes each add 1 to a multiprocessing.Value('q', 0) N times, under the value's
  lock (`with v.get_lock(): v.value += 1`), which is how Python makes the increment exact:
  `locked_increment_ops_per_s`.
- multiprocessing.Queue, small items (ints): one producer process to the parent
  (`queue_1p1c_items_per_s`), four producer processes to four consumer processes
  (`queue_4p4c_items_per_s`), and the round trip parent -> echo process -> parent through
  two queues (`queue_round_trip_us`).

Each prints the median of a few rounds. Run directly: python3 benches/python/shm_baseline.py
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


QUEUE_N = 100_000
QUEUE_WORKERS = 4
ROUND_TRIPS = 2_000


def produce(q, start, n):
    for i in range(start, start + n):
        q.put(i)


def consume(q, n, out):
    total = 0
    for _ in range(n):
        total += q.get()
    out.put(total)


def echo(requests, replies):
    while True:
        x = requests.get()
        if x is None:
            return
        replies.put(x)


def queue_1p1c():
    q = mp.Queue()
    p = mp.Process(target=produce, args=(q, 0, QUEUE_N))
    t = time.perf_counter()
    p.start()
    total = sum(q.get() for _ in range(QUEUE_N))
    elapsed = time.perf_counter() - t
    p.join()
    assert total == QUEUE_N * (QUEUE_N - 1) // 2
    return QUEUE_N / elapsed


def queue_4p4c():
    q, out = mp.Queue(), mp.Queue()
    per = QUEUE_N // QUEUE_WORKERS
    procs = [mp.Process(target=produce, args=(q, w * per, per)) for w in range(QUEUE_WORKERS)]
    procs += [mp.Process(target=consume, args=(q, per, out)) for _ in range(QUEUE_WORKERS)]
    t = time.perf_counter()
    for p in procs:
        p.start()
    total = sum(out.get() for _ in range(QUEUE_WORKERS))
    elapsed = time.perf_counter() - t
    for p in procs:
        p.join()
    n = per * QUEUE_WORKERS
    assert total == n * (n - 1) // 2
    return n / elapsed


def queue_round_trip():
    requests, replies = mp.Queue(), mp.Queue()
    p = mp.Process(target=echo, args=(requests, replies))
    p.start()
    requests.put(0)
    replies.get()
    t = time.perf_counter()
    for i in range(ROUND_TRIPS):
        requests.put(i)
        assert replies.get() == i
    elapsed = time.perf_counter() - t
    requests.put(None)
    p.join()
    return elapsed / ROUND_TRIPS * 1e6


def main():
    rates = [one_round() for _ in range(ROUNDS)]
    print(f"locked_increment_ops_per_s {statistics.median(rates):.0f}")
    rates = [queue_1p1c() for _ in range(ROUNDS)]
    print(f"queue_1p1c_items_per_s {statistics.median(rates):.0f}")
    rates = [queue_4p4c() for _ in range(ROUNDS)]
    print(f"queue_4p4c_items_per_s {statistics.median(rates):.0f}")
    times = [queue_round_trip() for _ in range(ROUNDS)]
    print(f"queue_round_trip_us {statistics.median(times):.1f}")


if __name__ == "__main__":
    main()
