#!/usr/bin/env python3
"""numpy on the same float32 data as `microbatch run --random N --seed S` would not be the same
numbers, so this writes its own data, times numpy on it, and times `microbatch` on the very same
file, in the same run. Prints medians and ratios.

Usage: numpy_reference.py [--n 1e8] [--runs 5] [--bin target/release/microbatch]
Needs numpy (pip install numpy).
"""
import argparse, json, os, statistics, subprocess, tempfile, time

import numpy as np


def median_time(fn, runs):
    fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="1e8")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bin", default="target/release/microbatch")
    a = ap.parse_args()
    n = int(float(a.n))
    a32 = np.random.default_rng(1).random(n, dtype=np.float32)
    nbytes = a32.nbytes
    t_sum = median_time(lambda: a32.sum(), a.runs)
    t_var = median_time(lambda: a32.var(), a.runs)
    exact = float(np.sum(a32, dtype=np.float64))
    err_np = abs(float(a32.sum()) - exact) / exact

    with tempfile.NamedTemporaryFile(suffix=".f32", delete=False) as f:
        a32.tofile(f)
        path = f.name
    try:
        # microbatch reading the file (page-cached after the first run): whole process, and the
        # compute stage it reports.
        totals, computes, sums = [], [], []
        for i in range(a.runs + 1):
            t = time.perf_counter()
            out = subprocess.run([a.bin, "run", path, "--backend", "cpu", "--json"], check=True,
                                 capture_output=True, text=True).stdout
            dt = time.perf_counter() - t
            r = json.loads(out)
            if i:
                totals.append(dt)
                computes.append(r["timings_s"]["compute"])
                sums.append(r["stats"]["sum"])
        err_mb = abs(sums[0] - exact) / exact
    finally:
        os.unlink(path)
    t_mb_proc, t_mb_compute = statistics.median(totals), statistics.median(computes)
    gb = lambda t: nbytes / t / 1e9
    print(f"N = {n} float32 ({nbytes/1e6:.0f} MB), medians of {a.runs} runs")
    print(f"  numpy a.sum()                    {t_sum*1e3:9.2f} ms  {gb(t_sum):7.2f} GB/s   rel. error {err_np:.1e}")
    print(f"  numpy a.var()                    {t_var*1e3:9.2f} ms  {gb(t_var):7.2f} GB/s")
    print(f"  microbatch cpu, compute stage    {t_mb_compute*1e3:9.2f} ms  {gb(t_mb_compute):7.2f} GB/s   rel. error {err_mb:.1e}  (all statistics in one pass)")
    print(f"  microbatch cpu, whole process    {t_mb_proc*1e3:9.2f} ms  {gb(t_mb_proc):7.2f} GB/s   (reads the file)")
    print(f"  ratio compute vs numpy sum {t_sum/t_mb_compute:.2f}x, vs numpy var {t_var/t_mb_compute:.2f}x")


if __name__ == "__main__":
    main()
