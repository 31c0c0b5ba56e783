#!/usr/bin/env python3
"""Issue 17's targets, timed in one process: microbatch.stats(a) against numpy's a.sum() and
a.var() on 1e8 float32 in memory, and microbatch.dask.stats against dask's own x.mean() and
x.var() on a distributed LocalCluster of two worker processes (the array persisted on the
workers first, so both time the reduction alone). Medians of --runs, alternated.

Run with the package's environment: target/pyenv/bin/python scripts/python_bench.py
"""

import argparse
import statistics
import time

import numpy as np

import microbatch as mb


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=float, default=1e8)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args()
    n = int(args.n)
    a = np.random.default_rng(1).random(n, dtype=np.float32)
    cases = {
        "numpy a.sum()": lambda: a.sum(),
        "numpy a.var()": lambda: a.var(),
        "microbatch.stats(a) (every statistic)": lambda: mb.stats(a),
    }
    times = {k: [] for k in cases}
    for _ in range(args.runs):
        for k, f in cases.items():
            times[k].append(timed(f))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"in memory, {n:.0e} float32, medians of {args.runs}:")
    for k, v in med.items():
        print(f"  {k:40s} {v * 1e3:8.1f} ms")
    m = med["microbatch.stats(a) (every statistic)"]
    print(f"  vs a.sum(): {med['numpy a.sum()'] / m:.2f}x   vs a.var(): {med['numpy a.var()'] / m:.2f}x")
    m = np.random.default_rng(3).random((n // 100, 100), dtype=np.float32)
    cases = {
        "microbatch.stats(m, axis=0)": lambda: mb.stats(m, axis=0),
        "numpy m.mean(axis=0) + m.var(axis=0)": lambda: (m.mean(axis=0), m.var(axis=0)),
        "microbatch.stats(m, axis=1)": lambda: mb.stats(m, axis=1),
        "numpy m.mean(axis=1) + m.var(axis=1)": lambda: (m.mean(axis=1), m.var(axis=1)),
    }
    times = {k: [] for k in cases}
    for _ in range(args.runs):
        for k, f in cases.items():
            times[k].append(timed(f))
    print(f"along an axis, ({n // 100}, 100) float32, medians of {args.runs}:")
    for k, v in times.items():
        print(f"  {k:40s} {statistics.median(v) * 1e3:8.1f} ms")
    if args.no_dask:
        return
    import dask
    import dask.array as da
    import distributed

    import microbatch.dask as mbd

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster):
        x = da.random.default_rng(2).random(n, chunks=n // 20, dtype=np.float32).persist()
        distributed.wait(x)
        cases = {
            "dask x.mean() + x.var()": lambda: dask.compute(x.mean(), x.var()),
            "microbatch.dask.stats(x) (every statistic)": lambda: mbd.stats(x),
        }
        times = {k: [] for k in cases}
        for _ in range(args.runs):
            for k, f in cases.items():
                times[k].append(timed(f))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"dask, LocalCluster of 2 worker processes, {n:.0e} float32 in 20 chunks, medians of {args.runs}:")
        for k, v in med.items():
            print(f"  {k:45s} {v * 1e3:8.1f} ms")
        r = med["microbatch.dask.stats(x) (every statistic)"] / med["dask x.mean() + x.var()"]
        print(f"  microbatch / dask: {r:.2f} (target at most 1.5)")


if __name__ == "__main__":
    main()
