#!/usr/bin/env python3
"""The whole path measured like a user would: the same values as raw f32, .npy, CSV and Parquet,
each through `cat`, numpy, Polars, DuckDB and `microbatch run`, in one run on one machine.

    pip install numpy polars duckdb
    cargo build --release
    python3 scripts/e2e_reference.py [--n 1e8] [--csv-rows 5e6] [--runs 5] [--dir /tmp/mb-e2e]

Prints a Markdown table of medians (ms) and rates. microbatch and `cat` are timed as whole
processes (start-up included); numpy, Polars and DuckDB inside this Python process (their
start-up and import excluded: the comparison favours them). Every tool computes what it is
asked: numpy `memmap(...).sum()` one statistic; Polars and DuckDB count, sum, mean, min, max and
variance; microbatch all of those plus std and NaN counts. Not part of the test suite (it needs
the packages above and a release build).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def median_ms(fn, runs):
    fn()  # warm-up: the page cache holds the file after it
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times), max(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=float, default=1e8, help="values in the binary files and Parquet")
    ap.add_argument("--csv-rows", type=float, default=5e6, help="rows of the CSV file")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/microbatch-e2e")
    ap.add_argument("--bin", default="target/release/microbatch")
    args = ap.parse_args()

    import duckdb
    import numpy as np
    import polars as pl

    n, rows = int(args.n), int(args.csv_rows)
    os.makedirs(args.dir, exist_ok=True)
    rng = np.random.default_rng(12345)
    paths = {
        "raw f32": os.path.join(args.dir, "x.f32"),
        ".npy f32": os.path.join(args.dir, "x.npy"),
        "CSV": os.path.join(args.dir, "x.csv"),
        "Parquet f64 (snappy)": os.path.join(args.dir, "x.parquet"),
    }
    if not all(os.path.exists(p) for p in paths.values()):
        print(f"writing the inputs to {args.dir} ...", file=sys.stderr)
        x = rng.normal(100.0, 15.0, n)
        x.astype(np.float32).tofile(paths["raw f32"])
        np.save(paths[".npy f32"], x.astype(np.float32))
        pl.DataFrame({"price": x[:rows]}).write_csv(paths["CSV"], float_precision=6)
        pl.DataFrame({"price": x}).write_parquet(paths["Parquet f64 (snappy)"], compression="snappy")
        del x

    def cat(path):
        return lambda: subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)

    def microbatch(path):
        def go():
            out = subprocess.run([args.bin, "run", path, "--json", "--quiet", "--backend", "cpu"],
                                 stdout=subprocess.PIPE, check=True)
            json.loads(out.stdout)
        return go

    def stats_pl(lf):
        c = pl.col("price")
        return lf.select(pl.len(), c.sum().alias("s"), c.mean().alias("m"), c.min().alias("lo"),
                         c.max().alias("hi"), c.var(ddof=0).alias("v")).collect()

    duck = duckdb.connect()
    agg = "count(price), sum(price), avg(price), min(price), max(price), var_pop(price)"

    tools = {
        "raw f32": {
            "numpy memmap sum": lambda p: lambda: np.memmap(p, dtype=np.float32, mode="r").sum(),
        },
        ".npy f32": {
            "numpy memmap sum": lambda p: lambda: np.load(p, mmap_mode="r").sum(),
        },
        "CSV": {
            "Polars": lambda p: lambda: stats_pl(pl.scan_csv(p)),
            "DuckDB": lambda p: lambda: duck.execute(f"select {agg} from read_csv('{p}')").fetchall(),
        },
        "Parquet f64 (snappy)": {
            "Polars": lambda p: lambda: stats_pl(pl.scan_parquet(p)),
            "DuckDB": lambda p: lambda: duck.execute(f"select {agg} from read_parquet('{p}')").fetchall(),
        },
    }

    print(f"machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; runs {args.runs} (medians, ms)")
    print()
    print("| input | MB | cat | numpy | Polars | DuckDB | microbatch | microbatch GB/s | vs best other |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, path in paths.items():
        mb = os.path.getsize(path) / 1e6
        cells = {"cat": median_ms(cat(path), args.runs)}
        for tool, make in tools[name].items():
            cells[tool] = median_ms(make(path), args.runs)
        try:
            ours = median_ms(microbatch(path), args.runs)
        except subprocess.CalledProcessError:
            ours = None  # this build cannot read the format
        others = [v[0] for k, v in cells.items() if k != "cat"]
        best = min(others) if others else None

        def cell(key):
            for k, v in cells.items():
                if k.startswith(key):
                    return f"{v[0]:.1f} ({v[1]:.0f}–{v[2]:.0f})"
            return "—"

        if ours is None:
            print(f"| {name} | {mb:.1f} | {cell('cat')} | {cell('numpy')} | {cell('Polars')} | "
                  f"{cell('DuckDB')} | not read | — | — |")
            continue
        ratio = f"{best / ours[0]:.2f}×" if best else "—"
        print(f"| {name} | {mb:.1f} | {cell('cat')} | {cell('numpy')} | {cell('Polars')} | "
              f"{cell('DuckDB')} | {ours[0]:.1f} ({ours[1]:.0f}–{ours[2]:.0f}) | "
              f"{mb / 1e3 / (ours[0] / 1e3):.2f} | {ratio} |")


if __name__ == "__main__":
    main()
