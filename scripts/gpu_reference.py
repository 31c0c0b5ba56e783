#!/usr/bin/env python3
"""References the card's owners would pick, on the same sizes as `microbatch bench`:

- resident: cupy.sum and torch.sum (and torch.var) on float32 data already on the device,
- streaming: torch host-to-device copy plus sum, from pageable and from pinned host memory,
- the device-to-device copy bandwidth as torch measures it (clone).

Timed two ways, warm-up first, median of --runs: CUDA events around the work (the GPU's own
clock: `*_s`), and the host's wall clock around the call plus a synchronize (`*_wall_s`), so
that microbatch's GPU-timestamp figures and wall-clock figures each meet a reference timed the
same way. Writes JSON; prints a table.
Usage: gpu_reference.py --sizes 1e6,1e7,1e8 --json out.json
"""
import argparse, json, statistics, sys, time


def cuda_time(fn, runs, torch):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def wall_time(fn, runs, torch):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1e6,1e7,1e8")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sizes = [int(float(s)) for s in a.sizes.split(",")]
    try:
        import torch
    except ImportError:
        print("torch not installed: no references", file=sys.stderr)
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device: no references", file=sys.stderr)
        return 0
    try:
        import cupy
    except ImportError:
        cupy = None
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "cupy": getattr(cupy, "__version__", None), "points": []}
    for n in sizes:
        nbytes = 4 * n
        x = torch.rand(n, device="cuda", dtype=torch.float32)
        row = {"n": n}
        row["torch_sum_s"] = cuda_time(lambda: x.sum(), a.runs, torch)
        row["torch_var_s"] = cuda_time(lambda: x.var(), a.runs, torch)
        row["torch_clone_s"] = cuda_time(lambda: x.clone(), a.runs, torch)
        if cupy is not None:
            xc = cupy.asarray(x)
            row["cupy_sum_s"] = cuda_time(lambda: cupy.sum(xc), a.runs, torch)
            row["cupy_sum_wall_s"] = wall_time(lambda: cupy.sum(xc), a.runs, torch)
            # All of microbatch's statistics the way a cupy user gets them (five passes).
            row["cupy_stats_s"] = cuda_time(
                lambda: (cupy.sum(xc), cupy.min(xc), cupy.max(xc), cupy.var(xc),
                         cupy.count_nonzero(cupy.isnan(xc))), max(3, a.runs // 4), torch)
        host = torch.rand(n, dtype=torch.float32)
        pinned = host.pin_memory()
        runs = max(3, a.runs // 4)
        row["torch_h2d_sum_pageable_s"] = cuda_time(lambda: host.to("cuda").sum(), runs, torch)
        row["torch_h2d_sum_pinned_s"] = cuda_time(lambda: pinned.to("cuda", non_blocking=True).sum(), runs, torch)
        row["torch_h2d_sum_pinned_wall_s"] = wall_time(lambda: pinned.to("cuda", non_blocking=True).sum(), runs, torch)
        for k in list(row):
            if k.endswith("_s"):
                moved = 2 * nbytes if "clone" in k else nbytes
                row[k[:-2] + "_gbs"] = moved / row[k] / 1e9
        out["points"].append(row)
        del x, host, pinned
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    print(f"references on {out['device']} (torch {out['torch']}, cupy {out['cupy']}), GB/s of input:")
    cols = ["cupy_sum_gbs", "cupy_sum_wall_gbs", "cupy_stats_gbs", "torch_sum_gbs", "torch_var_gbs",
            "torch_clone_gbs", "torch_h2d_sum_pageable_gbs", "torch_h2d_sum_pinned_gbs",
            "torch_h2d_sum_pinned_wall_gbs"]
    print(f"{'N':>12} " + " ".join(f"{c[:-4]:>29}" for c in cols))
    for r in out["points"]:
        print(f"{r['n']:>12} " + " ".join(f"{r.get(c, float('nan')):>29.1f}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
