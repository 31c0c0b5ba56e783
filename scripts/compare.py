#!/usr/bin/env python3
"""microbatch bench JSON against gpu_reference.py JSON, same sizes, then a verdict on issue 13's
targets, last. Each microbatch figure meets a reference timed the same way: GPU-timestamp
throughput against CUDA events, wall-clock throughput against the wall clock.

Usage: compare.py bench.json [reference.json] [--variants variants.json]
  bench.json     the sweep (both modes, both backends, streaming with each staging)
  variants.json  resident kernel variants at the target size (optional)
"""
import json, math, sys

args = [a for a in sys.argv[1:]]
variants_path = None
if "--variants" in args:
    i = args.index("--variants")
    variants_path = args[i + 1]
    del args[i:i + 2]
bench = json.load(open(args[0]))
ref = json.load(open(args[1])) if len(args) > 1 else {"points": []}
refs = {r["n"]: r for r in ref.get("points", [])}
variants = json.load(open(variants_path)) if variants_path else {"points": []}
c = bench["ceilings"]
nan = float("nan")


def gb(x):
    return x / 1e9 if x is not None else nan


def best(points, backend, mode, n, key="bytes_per_s", batch=None):
    pts = [p for p in points if p["backend"] == backend and p["mode"] == mode and p["n"] == n
           and (batch is None or p["batch_size"] == batch) and p.get(key)]
    return max(pts, key=lambda p: p[key]["median"]) if pts else None


def rate(p, key="bytes_per_s"):
    return p[key]["median"] / 1e9 if p and p.get(key) else nan


print(f"\nadapter: {bench.get('adapter')}   host read {c['host_read']/1e9:.1f} GB/s   "
      f"device copy {(c.get('gpu_copy') or 0)/1e9:.1f} GB/s (read+write)   upload {(c.get('gpu_upload') or 0)/1e9:.1f} GB/s")
hdr = (f"{'N':>11} {'gpu res dev':>12} {'cupy.sum ev':>12} {'ratio':>6} {'gpu res wall':>13} {'cupy.sum wall':>14} "
       f"{'ratio':>6} {'gpu stream':>11} {'torch pin h2d+sum':>18} {'ratio':>6} {'cpu stream':>11}")
print(hdr)
pts = bench["points"]
for n in sorted({p["n"] for p in pts}):
    r = refs.get(n, {})
    dev = rate(best(pts, "gpu", "resident", n, "device_bytes_per_s"), "device_bytes_per_s")
    wall = rate(best(pts, "gpu", "resident", n))
    gs = rate(best(pts, "gpu", "streaming", n))
    cs = rate(best(pts, "cpu", "streaming", n))
    ev, wl = r.get("cupy_sum_gbs", nan), r.get("cupy_sum_wall_gbs", nan)
    h2d = r.get("torch_h2d_sum_pinned_wall_gbs", r.get("torch_h2d_sum_pinned_gbs", nan))
    print(f"{n:>11} {dev:>12.1f} {ev:>12.1f} {dev/ev:>6.2f} {wall:>13.1f} {wl:>14.1f} {wall/wl:>6.2f} "
          f"{gs:>11.1f} {h2d:>18.1f} {gs/h2d:>6.2f} {cs:>11.1f}")
print("(GB/s of f32 input, medians; dev = GPU timestamps, ev = CUDA events; ratio = microbatch / reference)")

# Streaming by staging, at every B.
stream = [p for p in pts if p["backend"] == "gpu" and p["mode"] == "streaming"]
if stream:
    print("\nGPU streaming by staging (GB/s, wall clock):")
    for p in sorted(stream, key=lambda p: (p["n"], p["batch_size"], p.get("staging") or "")):
        print(f"  N={p['n']:<11} B={p['batch_size']:<9} staging={p.get('staging')!s:<7} {rate(p):8.1f}")

vpts = [p for p in variants["points"] if p["backend"] == "gpu" and p["mode"] == "resident"]
if vpts:
    print("\nresident kernel variants (GB/s; fastest first by the GPU's clock):")
    for p in sorted(vpts, key=lambda p: -(p.get("device_bytes_per_s") or p["bytes_per_s"])["median"]):
        print(f"  N={p['n']:<11} P={p['workgroups']:<6} dev {rate(p, 'device_bytes_per_s'):8.1f}  "
              f"wall {rate(p):8.1f}  {p.get('kernel')}")

# ---- the verdict (issue 13's targets), last ----
allpts = pts + vpts
gpu_res = [p for p in allpts if p["backend"] == "gpu" and p["mode"] == "resident"]
target_n = max((p["n"] for p in gpu_res), default=None)
rows = []


def verdict(name, ours, theirs, target, how):
    ratio = ours / theirs if theirs and not math.isnan(theirs) and not math.isnan(ours) else nan
    status = "n/a" if math.isnan(ratio) else ("PASS" if ratio >= target else "FAIL")
    rows.append((name, ours, theirs, ratio, target, status, how))


if target_n is not None:
    r = refs.get(target_n, {})
    d = best(allpts, "gpu", "resident", target_n, "device_bytes_per_s")
    w = best(allpts, "gpu", "resident", target_n)
    verdict(f"resident N={target_n:.0e}, GPU clock", rate(d, "device_bytes_per_s"),
            r.get("cupy_sum_gbs", nan), 0.9,
            f"cupy.sum, CUDA events; ours: {d.get('kernel') if d else '-'} P={d['workgroups'] if d else '-'}")
    verdict(f"resident N={target_n:.0e}, wall clock", rate(w), r.get("cupy_sum_wall_gbs", nan), 0.8,
            f"cupy.sum + synchronize, wall; ours: {w.get('kernel') if w else '-'} P={w['workgroups'] if w else '-'}")
stream_n = max((p["n"] for p in stream), default=None)
if stream_n is not None:
    b = 16 * 1024 * 1024
    s = best(pts, "gpu", "streaming", stream_n, batch=b) or best(pts, "gpu", "streaming", stream_n)
    r = refs.get(stream_n, {})
    verdict(f"streaming N={stream_n:.0e} B={s['batch_size']}", rate(s),
            r.get("torch_h2d_sum_pinned_wall_gbs", nan), 0.85,
            f"torch pinned .to(cuda) + sum, wall; ours: staging={s.get('staging')}")
print("\nverdict (issue 13 targets)")
print(f"  {'target':<34} {'ours GB/s':>10} {'ref GB/s':>10} {'ratio':>7} {'goal':>6} {'':>5}  how")
for name, ours, theirs, ratio, target, status, how in rows:
    print(f"  {name:<34} {ours:>10.1f} {theirs:>10.1f} {ratio:>7.2f} {'≥' + str(target):>6} {status:>5}  {how}")
cross = bench.get("crossover")
print(f"  crossover GPU streaming vs CPU streaming on this machine (from the fits): {cross}")
