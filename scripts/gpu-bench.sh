#!/usr/bin/env bash
# One prepared call on a GPU machine: check the adapter, run `microbatch bench` in both modes on
# sizes that fill the card, run the references (cupy.sum, torch.sum, torch H2D+sum) in the same
# call, write JSON/CSV/SVG to $OUT (default ./bench-out) and print a short comparison table last.
#
#   scripts/gpu-bench.sh [path/to/microbatch]
# Environment: SIZES (default 1e6,1e7,1e8,5e8), BATCHES (1048576,4194304,16777216),
# WORKGROUPS (1024,4096), RUNS (5), ADAPTER (name substring), OUT,
# SHAPES (default "1 2 4 8": vec4 loads per thread swept in resident mode at SHAPE_N, 1e9, with
# the subgroup and the tree combine, over SHAPE_WORKGROUPS (default: WORKGROUPS); empty to skip).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../target/release/microbatch}
out=${OUT:-bench-out}
mkdir -p "$out"
sizes=${SIZES:-1e6,1e7,1e8,5e8}

echo "== adapters"
"$bin" devices | tee "$out/devices.txt"
"$bin" devices --json > "$out/devices.json"

adapter_args=()
if [ -n "${ADAPTER:-}" ]; then adapter_args=(--adapter "$ADAPTER"); fi

echo "== microbatch bench"
"$bin" bench --backends cpu,gpu --modes streaming,resident --sizes "$sizes" \
  --batch-sizes "${BATCHES:-1048576,4194304,16777216}" --workgroups "${WORKGROUPS:-1024,4096}" \
  --runs "${RUNS:-5}" --quiet "${adapter_args[@]}" \
  --json "$out/bench.json" --csv "$out/bench.csv" --plot "$out/bench.svg" | tee "$out/bench.txt"

if [ -n "${SHAPES-1 2 4 8}" ]; then
  echo "== kernel shapes (resident, N=${SHAPE_N:-1e9})"
  for v in ${SHAPES-1 2 4 8}; do
    for sg in on off; do
      r=$("$bin" bench --backends gpu --modes resident --sizes "${SHAPE_N:-1e9}" \
        --workgroups "${SHAPE_WORKGROUPS:-${WORKGROUPS:-1024,4096}}" --runs "${RUNS:-5}" --quiet "${adapter_args[@]}" \
        --vec-per-thread "$v" --subgroups "$sg") || r="failed"
      printf -- '-- vec_per_thread=%s subgroups=%s\n%s\n' "$v" "$sg" "$r" >> "$out/shapes.txt"
      printf '%s\n' "$r" | grep -E "^gpu|kernel|failed" || true
    done
  done
fi

echo "== references"
python3 "$here/gpu_reference.py" --sizes "$sizes" --json "$out/reference.json" || echo "references failed"

echo "== comparison"
if [ -f "$out/reference.json" ]; then
  python3 "$here/compare.py" "$out/bench.json" "$out/reference.json"
else
  python3 "$here/compare.py" "$out/bench.json"
fi
