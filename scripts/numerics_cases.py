#!/usr/bin/env python3
"""The cases that once gave wrong answers with exit status 0 (issue 10), run through the CLI on
both backends, against exact references (math.fsum / fractions over the values in their own
dtype). Prints each statistic's error: sum relative to sum|x|, var relative (or absolute against
mean^2 where mean^2/var > 1e12, as the README's bound says).

Usage: python3 scripts/numerics_cases.py [--bin target/release/microbatch] [--backends cpu,gpu]
Needs numpy (pip install numpy). Not part of the test suite (tests/it/numerics.rs asserts the bounds).
"""
import argparse, json, math, os, subprocess, tempfile
from fractions import Fraction

import numpy as np


def exact(values):
    vals = [v for v in values if math.isfinite(v)]
    n = len(vals)
    s = sum(Fraction(v) for v in vals)
    mean = s / n
    m2 = sum((Fraction(v) - mean) ** 2 for v in vals)
    return n, s, mean, m2, sum(abs(Fraction(v)) for v in vals)


def cases():
    rng = np.random.default_rng(20261127)
    tiny = (1e-30 * (1 + np.arange(10000) * 1e-4)).astype(np.float32)
    tiny[5000] = 1e9
    yield "1e-30 x 10000 + one 1e9 (f32)", tiny, "f32", {}
    z = np.zeros(100000, np.float32)
    z[77777] = 1e20
    yield "zeros + one 1e20 (f32)", z, "f32", {}
    flags = rng.integers(0, 2, 100000).astype(np.uint64)
    flags[31] = np.iinfo(np.uint64).max
    yield "0/1 flags + u64::MAX (u64)", flags, "u64", {}
    i = np.arange(2000000)
    spikes = np.where(i % 2048 == 0, 1e6, np.where(i % 2 == 0, 1001.0, 999.0)).astype(np.float32)
    yield "1000±1, 1e6 every 2048th (f32, B=63488)", spikes, "f32", {"--batch-size": "63488"}
    yield "1000 N(0,1) (f32)", rng.standard_normal(1000).astype(np.float32), "f32", {}
    steps = np.concatenate([np.tile(np.arange(1000), 200), np.arange(10) + 0.5]).astype(np.float32)
    yield "0..999 repeated, then 0.5..9.5 (f32)", steps, "f32", {}
    big = np.where(np.arange(20000) % 2 == 0, 4.6e18, -4.6e18).astype(">i8") + np.arange(20000) * 1000003
    yield "big-endian i64 around ±4.6e18", big.astype(">i8"), "i64be", {}
    yield "f64 1e8 + U[0,1)", 1e8 + rng.random(200001), "f64", {}
    yield "i64 2^40 + 0..999", (2**40 + np.arange(100000) % 1000).astype(np.int64), "i64", {}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/microbatch")
    ap.add_argument("--backends", default="cpu,gpu")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    print(f"{'case':44} {'backend':8} {'sum err/sum|x|':>15} {'var err':>12} {'min/max':>8}")
    for name, arr, kind, extra in cases():
        ext = {"f32": "f32", "f64": "f64", "u64": "u64", "i64": "i64", "i64be": "bin"}[kind]
        path = os.path.join(tmp, f"case.{ext}")
        arr.tofile(path)
        vals = [float(v) if kind in ("f32", "f64") else int(v) for v in arr.tolist()]
        n, s, mean, m2, abs_sum = exact(vals)
        var = m2 / n
        for be in a.backends.split(","):
            args = [a.bin, "run", path, "--json", "--backend", be]
            if kind == "i64be":
                args += ["--dtype", "i64", "--endian", "big"]
            for k, v in extra.items():
                args += [k, v]
            out = subprocess.run(args, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{name:44} {be:8} failed: {out.stderr.strip()}")
                continue
            st = json.loads(out.stdout)["stats"]
            # json gives floats as the exact doubles printed, integers as exact ints.
            got_sum = Fraction(st["sum"])
            sum_err = float(abs(got_sum - s) / abs_sum) if abs_sum else 0.0
            got_var = st["var"]
            if got_var in ("NaN", "inf", None):
                var_err = float("inf")
            else:
                ratio = float(mean * mean / var) if var else math.inf
                denom = var if ratio <= 1e12 else mean * mean
                var_err = float(abs(Fraction(got_var) - var) / denom)
            mm = "exact" if (Fraction(st["min"]) == min(Fraction(v) for v in vals)
                             and Fraction(st["max"]) == max(Fraction(v) for v in vals)) else "WRONG"
            print(f"{name:44} {be:8} {sum_err:15.2e} {var_err:12.2e} {mm:>8}")


if __name__ == "__main__":
    main()
