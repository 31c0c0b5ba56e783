#!/usr/bin/env python3
"""Short comparison table: microbatch bench JSON against gpu_reference.py JSON, same sizes.
Usage: compare.py bench.json reference.json"""
import json, sys

bench = json.load(open(sys.argv[1]))
ref = json.load(open(sys.argv[2])) if len(sys.argv) > 2 else {"points": []}
refs = {r["n"]: r for r in ref.get("points", [])}
c = bench["ceilings"]


def best(backend, mode, n):
    pts = [p for p in bench["points"] if p["backend"] == backend and p["mode"] == mode and p["n"] == n]
    return max(pts, key=lambda p: p["bytes_per_s"]["median"]) if pts else None


print(f"\nadapter: {bench.get('adapter')}   host read {c['host_read']/1e9:.1f} GB/s   "
      f"device copy {(c.get('gpu_copy') or 0)/1e9:.1f} GB/s (read+write)   upload {(c.get('gpu_upload') or 0)/1e9:.1f} GB/s")
hdr = f"{'N':>11} {'mb gpu resident':>16} {'cupy.sum':>9} {'ratio':>6} {'torch.sum':>9} {'mb gpu stream':>14} {'torch h2d+sum':>14} {'ratio':>6} {'mb cpu stream':>14}"
print(hdr)
for n in sorted({p["n"] for p in bench["points"]}):
    r = refs.get(n, {})
    gr, gs, cs = best("gpu", "resident", n), best("gpu", "streaming", n), best("cpu", "streaming", n)
    g = lambda p: p["bytes_per_s"]["median"] / 1e9 if p else float("nan")
    cupy = r.get("cupy_sum_gbs", float("nan"))
    h2d = max(r.get("torch_h2d_sum_pageable_gbs", float("nan")), r.get("torch_h2d_sum_pinned_gbs", float("nan")))
    print(f"{n:>11} {g(gr):>16.1f} {cupy:>9.1f} {g(gr)/cupy:>6.2f} {r.get('torch_sum_gbs', float('nan')):>9.1f} "
          f"{g(gs):>14.1f} {h2d:>14.1f} {g(gs)/h2d:>6.2f} {g(cs):>14.1f}")
print("(GB/s of f32 input, medians; ratio = microbatch / reference)")
