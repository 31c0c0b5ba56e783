#!/usr/bin/env python3
"""numpy against microbatch's CPU backend, side by side in one run, on this machine.

1. Times numpy's a.sum() and a.var() on N uniform float32 values in memory (median of --runs).
2. Runs `microbatch bench --backends cpu --modes streaming` on N values in memory, which measures
   the host read ceiling (a prefetched SIMD sum over all threads) in the same process, and reports
   the CPU backend's throughput (all statistics in one pass) per batch size.
3. Writes numpy's array to a file and runs `microbatch run FILE --backend cpu --json` on it to
   compare the sums' relative errors against an f64 sum of the same values.
Prints medians and ratios.

Usage: numpy_reference.py [--n 1e8] [--runs 5] [--batch-sizes 4194304,16777216]
                          [--bin target/release/microbatch]
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
    ap.add_argument("--batch-sizes", default="4194304,16777216")
    ap.add_argument("--bin", default="target/release/microbatch")
    a = ap.parse_args()
    n = int(float(a.n))
    a32 = np.random.default_rng(1).random(n, dtype=np.float32)
    nbytes = a32.nbytes
    t_sum = median_time(lambda: a32.sum(), a.runs)
    t_var = median_time(lambda: a32.var(), a.runs)
    exact = float(np.sum(a32, dtype=np.float64))
    err_np = abs(float(a32.sum()) - exact) / exact

    with tempfile.TemporaryDirectory() as tmp:
        bench_json = os.path.join(tmp, "bench.json")
        subprocess.run([a.bin, "bench", "--backends", "cpu", "--modes", "streaming", "--sizes", str(n),
                        "--batch-sizes", a.batch_sizes, "--runs", str(a.runs), "--quiet",
                        "--json", bench_json], check=True, capture_output=True)
        bench = json.load(open(bench_json))
        path = os.path.join(tmp, "data.f32")
        a32.tofile(path)
        out = subprocess.run([a.bin, "run", path, "--backend", "cpu", "--json"], check=True,
                             capture_output=True, text=True).stdout
        err_mb = abs(json.loads(out)["stats"]["sum"] - exact) / exact

    gb = lambda t: nbytes / t / 1e9
    ceiling = bench["ceilings"]["host_read"] / 1e9
    print(f"N = {n} float32 ({nbytes/1e6:.0f} MB) in memory, medians of {a.runs} runs, {bench['cpu_threads']} threads")
    print(f"  numpy a.sum()                 {t_sum*1e3:8.2f} ms  {gb(t_sum):7.2f} GB/s   rel. error {err_np:.1e}")
    print(f"  numpy a.var()                 {t_var*1e3:8.2f} ms  {gb(t_var):7.2f} GB/s")
    print(f"  host read ceiling (bench, once at start) {ceiling:7.2f} GB/s")
    for p in bench["points"]:
        t = p["seconds"]["median"]
        print(f"  microbatch cpu, B={p['batch_size']:<9}  {t*1e3:8.2f} ms  {gb(t):7.2f} GB/s   "
              f"{100*p['fraction_of_ceiling']:.0f}% of the plain read interleaved with its runs "
              f"({p['ceiling_bytes_per_s']/1e9:.2f} GB/s), {t_sum/t:.2f}x numpy sum, {t_var/t:.2f}x numpy var")
    print(f"  microbatch sum rel. error (file, default B)                    {err_mb:.1e}")


if __name__ == "__main__":
    main()
