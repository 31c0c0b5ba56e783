#!/usr/bin/env bash
# One prepared call on a GPU machine (about 6 minutes on an H100/H200): check the adapter; run
# `microbatch bench` in both modes with both stagings; compare the kernel variants side by side
# at the target size in one run; run the references (cupy.sum, torch, torch pinned H2D + sum)
# timed by CUDA events and by the wall clock; profile the kernel with nsys/ncu where they exist;
# write JSON/CSV/SVG to $OUT (default ./bench-out) and print the comparison and the verdict on
# issue 13's targets last.
#
#   scripts/gpu-bench.sh [path/to/microbatch]
# Environment: SIZES (default 1e7,1e8,1e9), BATCHES (4194304,16777216), WORKGROUPS (the
# adapter's default when empty), STAGING (bar,pinned), RUNS (5), ADAPTER (name substring), OUT,
# VARIANT_N (1e9), VARIANT_WORKGROUPS (1024,4096), VPT (4,8), LOADS (loop,unrolled),
# SLOW (inline,deferred): the kernel variants measured at VARIANT_N; VARIANTS=0 skips them;
# QUANTILES=0 skips the quantile and axis runs (issue 16).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/microbatch}
out=${OUT:-bench-out}
mkdir -p "$out"
sizes=${SIZES:-1e7,1e8,1e9}

echo "== adapters"
"$bin" devices | tee "$out/devices.txt"
"$bin" devices --json > "$out/devices.json"

common=(--runs "${RUNS:-5}" --quiet)
if [ -n "${ADAPTER:-}" ]; then common+=(--adapter "$ADAPTER"); fi
wg=()
if [ -n "${WORKGROUPS:-}" ]; then wg=(--workgroups "$WORKGROUPS"); fi

echo "== microbatch bench (both modes; streaming with each staging)"
"$bin" bench --backends cpu,gpu --modes streaming,resident --sizes "$sizes" \
  --batch-sizes "${BATCHES:-4194304,16777216}" --staging "${STAGING:-bar,pinned}" \
  "${wg[@]}" "${common[@]}" \
  --json "$out/bench.json" --csv "$out/bench.csv" --plot "$out/bench.svg" | tee "$out/bench.txt"

variants=()
if [ "${VARIANTS:-1}" != 0 ]; then
  echo "== kernel variants side by side (resident, N=${VARIANT_N:-1e9})"
  "$bin" bench --backends gpu --modes resident --sizes "${VARIANT_N:-1e9}" \
    --workgroups "${VARIANT_WORKGROUPS:-1024,4096}" --vec-per-thread "${VPT:-4,8}" \
    --loads "${LOADS:-loop,unrolled}" --slow-path "${SLOW:-inline,deferred}" "${common[@]}" \
    --json "$out/variants.json" --csv "$out/variants.csv" | tee "$out/variants.txt"
  variants=(--variants "$out/variants.json")
fi

echo "== references"
python3 "$here/gpu_reference.py" --sizes "$sizes" --json "$out/reference.json" || echo "references failed"

# One profile of the default kernel at the target size: DRAM throughput and occupancy.
prof=("$bin" bench --backends gpu --modes resident --sizes "${VARIANT_N:-1e9}" --runs 3 --warmup 1 --quiet)
if command -v nsys > /dev/null; then
  echo "== nsys"
  timeout 120 nsys profile --force-overwrite true --trace vulkan --gpu-metrics-devices all \
    -o "$out/kernel" "${prof[@]}" > "$out/nsys.txt" 2>&1 || echo "nsys failed (see $out/nsys.txt)"
  timeout 60 nsys stats "$out/kernel.nsys-rep" >> "$out/nsys.txt" 2>&1 || true
fi
if command -v ncu > /dev/null; then
  echo "== ncu"
  timeout 120 ncu --target-processes all --section SpeedOfLight --section Occupancy \
    --section MemoryWorkloadAnalysis -k regex:reduce -c 2 "${prof[@]}" > "$out/ncu.txt" 2>&1 \
    || echo "ncu failed (see $out/ncu.txt)"
  grep -E "DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per Thread" \
    "$out/ncu.txt" | head -20 || true
fi

if [ "${QUANTILES:-1}" != 0 ]; then
  # Issue 16 on a card: quantiles at what share of the moments-only throughput, with the sketch
  # counted on the device (shaders/histogram.wgsl) or on the host; --axis 0 (segmented
  # dispatch) against the CPU backend. Medians of 5 runs of the whole command.
  echo "== quantiles and axis lanes (1e8 f32; (1e6, 100) f32 along axis 0)"
  python3 -c "
import numpy as np
r = np.random.default_rng(1)
r.random(100_000_000, dtype=np.float32).tofile('$out/q.f32')
np.save('$out/w.npy', r.standard_normal((1_000_000, 100), dtype=np.float32))
" && {
    time_med() {
      python3 - "$@" <<'PY'
import json, os, subprocess, sys, time
env = dict(os.environ)
label, args = sys.argv[1], sys.argv[2:]
if label.endswith("(device)"):
    env["MICROBATCH_GPU_SKETCH"] = "device"
if label.endswith("(host)"):
    env["MICROBATCH_GPU_SKETCH"] = "host"
walls, computes = [], []
for _ in range(5):
    t = time.perf_counter()
    out = subprocess.run(args + ["--json"], env=env, capture_output=True, text=True, check=True)
    walls.append(time.perf_counter() - t)
    computes.append(json.loads(out.stdout)["timings_s"]["compute"])
walls.sort(); computes.sort()
print(f"{label:<34} wall {walls[2]*1e3:8.1f} ms   compute {computes[2]*1e3:8.1f} ms")
PY
    }
    q=(run "$out/q.f32" --backend gpu)
    time_med "moments only" "$bin" "${q[@]}"
    time_med "quantiles (device)" "$bin" "${q[@]}" --quantiles 0.5,0.99
    time_med "quantiles (host)" "$bin" "${q[@]}" --quantiles 0.5,0.99
    time_med "cpu moments only" "$bin" run "$out/q.f32" --backend cpu
    time_med "cpu quantiles" "$bin" run "$out/q.f32" --backend cpu --quantiles 0.5,0.99
    time_med "axis 0 gpu" "$bin" run "$out/w.npy" --axis 0 --backend gpu
    time_med "axis 0 cpu" "$bin" run "$out/w.npy" --axis 0 --backend cpu
    python3 -c "
import numpy as np, time
a = np.fromfile('$out/q.f32', dtype=np.float32)
ts = []
for _ in range(3):
    t = time.perf_counter(); np.quantile(a, [0.5, 0.99], method='inverted_cdf'); ts.append(time.perf_counter() - t)
print(f'{\"np.quantile (in memory)\":<34} {sorted(ts)[1]*1e3:8.1f} ms')
try:
    import cupy as cp
    d = cp.asarray(a); cp.quantile(d, cp.asarray([0.5, 0.99]), method='inverted_cdf'); cp.cuda.Device().synchronize()
    ts = []
    for _ in range(3):
        t = time.perf_counter(); cp.quantile(d, cp.asarray([0.5, 0.99]), method='inverted_cdf'); cp.cuda.Device().synchronize(); ts.append(time.perf_counter() - t)
    print(f'{\"cupy.quantile (on device)\":<34} {sorted(ts)[1]*1e3:8.1f} ms')
except Exception as e:
    print('cupy.quantile skipped:', e)
"
    rm -f "$out/q.f32" "$out/w.npy"
  } | tee "$out/quantiles.txt" || echo "quantile runs failed"
fi

echo "== comparison"
if [ -f "$out/reference.json" ]; then
  python3 "$here/compare.py" "$out/bench.json" "$out/reference.json" "${variants[@]}"
else
  python3 "$here/compare.py" "$out/bench.json" "${variants[@]}"
fi
