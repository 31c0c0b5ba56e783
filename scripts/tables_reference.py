#!/usr/bin/env python3
"""Issue 16's figures (BENCHMARKS.md, "Tables, axes and quantiles"): writes the data files, then
times whole `microbatch run` processes against polars, duckdb, numpy and datamash on the same
files, alternating tools, and prints medians. Files go to --dir (default /tmp); they are page-
cached by a first read before timing.

  scripts/tables_reference.py [--bin target/release/microbatch] [--dir /tmp] [--runs 3]
        [--only columns,axis,quantiles,groupby,gpuaxis]

Needs numpy; polars, duckdb and datamash are timed where installed (skipped otherwise).
"""
import argparse, os, shutil, statistics, subprocess, sys, time


def timed(cmd, runs):
    """Median wall seconds of `cmd` (a list) run `runs` times, output discarded."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_py(fn, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--bin", default=os.path.join(here, "..", "target", "release", "microbatch"))
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="columns,axis,quantiles,groupby")
    a = ap.parse_args()
    import numpy as np

    only = set(a.only.split(","))
    mb = a.bin
    rng = np.random.default_rng(1)
    try:
        import polars as pl
    except ImportError:
        pl = None
    try:
        import duckdb
    except ImportError:
        duckdb = None

    if "columns" in only:
        path = os.path.join(a.dir, "t10.csv")
        if not os.path.exists(path):
            n = 2_000_000
            cols = [rng.normal(0, 1, n), rng.uniform(-1e6, 1e6, n), rng.integers(-10**9, 10**9, n),
                    rng.normal(1e6, 1e-3, n), rng.exponential(1, n), rng.normal(5, 2, n),
                    rng.integers(0, 100, n), rng.uniform(0, 1, n), rng.normal(-3, 0.1, n),
                    rng.standard_cauchy(n)]
            with open(path, "w") as f:
                f.write(",".join(f"c{i}" for i in range(10)) + "\n")
                np.savetxt(f, np.column_stack([c.astype(np.float64) for c in cols]), delimiter=",", fmt="%.17g")
        warm(path)
        print(f"== every column of {path} ({os.path.getsize(path) / 1e6:.0f} MB)")
        print(f"microbatch --columns all     {timed([mb, 'run', path, '--columns', 'all', '--csv'], a.runs):.2f} s")
        print(f"microbatch --column c9       {timed([mb, 'run', path, '--column', 'c9', '--csv'], a.runs):.2f} s")
        if pl is not None:
            print(f"polars read_csv              {timed_py(lambda: pl.read_csv(path), a.runs):.2f} s")
        if duckdb is not None:
            q = f"select count(*), sum(c0), avg(c1), var_pop(c3) from read_csv('{path}')"
            print(f"duckdb one aggregate query   {timed_py(lambda: duckdb.sql(q).fetchall(), a.runs):.2f} s")

    if "axis" in only:
        path = os.path.join(a.dir, "m.npy")
        if not os.path.exists(path):
            np.save(path, rng.normal(5, 2, (1_000_000, 100)).astype(np.float32))
        warm(path)
        arr = np.load(path)
        print(f"== {path} (1e6, 100) f32 along an axis")
        for ax in (0, 1):
            print(f"microbatch --axis {ax}          {timed([mb, 'run', path, '--axis', str(ax), '--csv', '--backend', 'cpu'], a.runs):.2f} s")
            five = lambda: (arr.sum(axis=ax), arr.mean(axis=ax), arr.var(axis=ax), arr.min(axis=ax), arr.max(axis=ax))
            print(f"numpy five statistics axis {ax} {timed_py(five, a.runs):.2f} s (in memory)")

    if "gpuaxis" in only:
        # Several series per GPU dispatch (the segmented reduction): --axis 0 over 100 and 1000
        # lanes, each backend (lavapipe where there is no GPU). Not in the default set: slow on
        # lavapipe.
        path = os.path.join(a.dir, "w.npy")
        if not os.path.exists(path):
            np.save(path, rng.normal(5, 2, (200_000, 1000)).astype(np.float32))
        for f in (os.path.join(a.dir, "m.npy"), path):
            if not os.path.exists(f):
                continue
            warm(f)
            for backend in ("gpu", "cpu"):
                t = timed([mb, "run", f, "--axis", "0", "--backend", backend, "--csv"], a.runs)
                print(f"== {f} --axis 0 --backend {backend}: {t:.2f} s")

    if "quantiles" in only:
        path = os.path.join(a.dir, "q.f32")
        if not os.path.exists(path):
            v = rng.uniform(0, 1, 100_000_000).astype(np.float32)
            v[::1000] = 0.0
            v.tofile(path)
        warm(path)
        arr = np.fromfile(path, dtype=np.float32)
        print(f"== {path}: 1e8 f32 (0.1 % zeros)")
        print(f"microbatch moments only      {timed([mb, 'run', path, '--backend', 'cpu'], a.runs):.3f} s")
        print(f"microbatch + quantiles       {timed([mb, 'run', path, '--backend', 'cpu', '--quantiles', '0.5,0.99'], a.runs):.3f} s")
        q = lambda: np.quantile(arr, [0.5, 0.99], method="inverted_cdf")
        print(f"numpy quantile               {timed_py(q, a.runs):.2f} s (in memory)")
        print(f"numpy sum + var              {timed_py(lambda: (arr.sum(), arr.var()), a.runs):.2f} s (in memory)")
        txt = os.path.join(a.dir, "col.txt")
        if not os.path.exists(txt):
            np.savetxt(txt, arr[:10_000_000], fmt="%.9g")
        warm(txt)
        print(f"microbatch 1e7 lines, quantiles {timed([mb, 'run', txt, '--quantiles', '0.5,0.99', '--csv'], a.runs):.2f} s")
        if shutil.which("datamash"):
            t = timed(["sh", "-c", f"datamash median 1 perc:99 1 < {txt}"], a.runs)
            print(f"datamash median perc:99      {t:.2f} s")

    if "groupby" in only:
        path = os.path.join(a.dir, "grp.csv")
        if not os.path.exists(path):
            n = 5_000_000
            with open(path, "w") as f:
                f.write("k,v\n")
                np.savetxt(f, np.column_stack([rng.integers(0, 1000, n), rng.normal(10, 3, n)]),
                           delimiter=",", fmt=["%d", "%.10g"])
        warm(path)
        print(f"== group-by {path}: 5e6 rows, 1000 keys")
        print(f"microbatch --group-by k      {timed([mb, 'run', path, '--group-by', 'k', '--column', 'v', '--csv'], a.runs):.2f} s")
        if pl is not None:
            def polars_gb():
                df = pl.read_csv(path)
                c = pl.col("v")
                df.group_by("k").agg([c.count().alias("n"), c.sum().alias("s"), c.mean().alias("m"),
                                      c.min().alias("lo"), c.max().alias("hi"), c.var(ddof=0).alias("var")])
            print(f"polars read_csv + group_by   {timed_py(polars_gb, a.runs):.2f} s")
        if duckdb is not None:
            q = f"select k, count(v), sum(v), avg(v), min(v), max(v), var_pop(v) from read_csv('{path}') group by k"
            print(f"duckdb group by              {timed_py(lambda: duckdb.sql(q).fetchall(), a.runs):.2f} s")
        if shutil.which("datamash"):
            cmd = f"tail -n +2 {path} | sort -t, -k1,1n | datamash -t, groupby 1 count 2 sum 2 mean 2 min 2 max 2 pvar 2"
            print(f"sort | datamash groupby      {timed(['sh', '-c', cmd], 1):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
