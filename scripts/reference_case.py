#!/usr/bin/env python3
"""The reference case, whole processes: `microbatch run --random 1000000 --batch-size 1000` with
the default `auto` and with `--backend cpu`, against a numpy program doing the same in batches of
1000 (sum, min, max and sum of squares per batch, merged), medians of --runs.

    cargo build --release && python3 scripts/reference_case.py [--runs 15] [--bin PATH]
"""
import argparse
import statistics
import subprocess
import sys
import time

NUMPY_PROGRAM = """
import numpy as np
x = np.random.rand(1_000_000)
s = 0.0; n = 0; lo = 1.0; hi = 0.0; q = 0.0
for b in x.reshape(-1, 1000):
    s += b.sum(); n += b.size; lo = min(lo, b.min()); hi = max(hi, b.max()); q += (b * b).sum()
print(n, s / n, lo, hi, q / n - (s / n) ** 2)
"""


def median_ms(cmd, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times), max(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--bin", default="target/release/microbatch")
    args = ap.parse_args()
    case = [args.bin, "run", "--random", "1000000", "--batch-size", "1000", "--quiet"]
    rows = {
        "microbatch (auto)": median_ms(case, args.runs),
        "microbatch --backend cpu": median_ms(case + ["--backend", "cpu"], args.runs),
        "numpy, batches of 1000": median_ms([sys.executable, "-c", NUMPY_PROGRAM], args.runs),
    }
    numpy = rows["numpy, batches of 1000"][0]
    for name, (med, lo, hi) in rows.items():
        print(f"{name:28} {med:8.1f} ms ({lo:.1f}–{hi:.1f})   numpy / this {numpy / med:5.1f}×")


if __name__ == "__main__":
    main()
